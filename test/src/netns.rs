//! Test hosts in network namespaces: N namespaces, each with one veth leg on a bridge in
//! the root namespace, addressed 198.18.<net>.1..N/24 (a benchmarking range no real
//! network uses). Partitions take a node's bridge port down or up; loss is `tc netem` on
//! the node's own leg. Everything is named after this process and removed on drop.
//!
//! Creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN). [`Topology::create`]
//! says [`Unavailable`] when that is not allowed here, so a test can print a loud
//! SKIPPED line instead of failing.

use std::process::{Command, Stdio};

/// Why namespaces cannot be used on this machine.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// N test hosts on one bridge.
#[derive(Debug)]
pub struct Topology {
    tag: String,
    net: u8,
    nodes: u32,
    bridge: String,
}

impl Topology {
    /// Creates `nodes` namespaces on subnet 198.18.`net`.0/24 (give each concurrently
    /// running test its own `net`).
    pub fn create(nodes: u32, net: u8) -> Result<Topology, Unavailable> {
        let tag = format!("a{}n{net}", std::process::id() % 100_000);
        let probe = format!("{tag}probe");
        ip(&["netns", "add", &probe])
            .map_err(|e| Unavailable(format!("cannot create network namespaces: {e}")))?;
        let _ = ip(&["netns", "del", &probe]);
        let t = Topology {
            bridge: format!("{tag}br"),
            tag,
            net,
            nodes,
        };
        t.build().map_err(Unavailable)?;
        Ok(t)
    }

    fn build(&self) -> Result<(), String> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        // Multicast must reach every port whether or not IGMP reports were seen.
        let _ = ip(&[
            "link",
            "set",
            &self.bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["link", "set", &self.bridge, "up"])?;
        for i in 1..=self.nodes {
            let ns = self.ns(i);
            let (inner, outer) = (self.inner_if(i), self.outer_if(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &self.bridge])?;
            ip(&["link", "set", &outer, "up"])?;
            let addr = format!("{}/24", self.addr(i));
            self.exec(i, "ip", &["addr", "add", &addr, "dev", &inner])?;
            self.exec(i, "ip", &["link", "set", &inner, "up"])?;
            self.exec(i, "ip", &["link", "set", "lo", "up"])?;
            // Multicast leaves through our one interface.
            self.exec(i, "ip", &["route", "add", "224.0.0.0/4", "dev", &inner])?;
        }
        Ok(())
    }

    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// Node `i`'s namespace name (for `ip netns exec`).
    pub fn ns(&self, i: u32) -> String {
        format!("{}h{i}", self.tag)
    }

    /// The multicast group of this topology's cluster.
    pub fn mcast_group(&self) -> String {
        format!("239.192.{}.1", self.net)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: u32) -> String {
        format!("198.18.{}.{i}", self.net)
    }

    fn inner_if(&self, i: u32) -> String {
        format!("{}i{i}", self.tag)
    }

    fn outer_if(&self, i: u32) -> String {
        format!("{}o{i}", self.tag)
    }

    /// Runs a command inside node `i`'s namespace and waits for it.
    pub fn exec(&self, i: u32, cmd: &str, args: &[&str]) -> Result<(), String> {
        let ns = self.ns(i);
        let mut full = vec!["netns", "exec", ns.as_str(), cmd];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// The prefix that runs a program in node `i`'s namespace: `ip netns exec <ns>`.
    pub fn prefix(&self, i: u32) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }

    /// Cuts the listed nodes off from the bridge (their ports down): each cut node is
    /// alone, the others stay together.
    pub fn isolate(&self, nodes: &[u32]) -> Result<(), String> {
        for &i in nodes {
            ip(&["link", "set", &self.outer_if(i), "down"])?;
        }
        Ok(())
    }

    /// Every node back on the bridge.
    pub fn heal(&self) -> Result<(), String> {
        for i in 1..=self.nodes {
            ip(&["link", "set", &self.outer_if(i), "up"])?;
        }
        Ok(())
    }

    /// Random loss of `percent` on every frame node `i` sends: `tc netem` where the
    /// kernel has it, else an nftables rule dropping that share of its outgoing UDP
    /// (`numgen random`), which loses frames the same way. Says which it used.
    pub fn set_loss(&self, i: u32, percent: u32) -> Result<LossMethod, String> {
        let dev = self.inner_if(i);
        let loss = format!("{percent}%");
        let netem = self.exec(
            i,
            "tc",
            &[
                "qdisc", "replace", "dev", &dev, "root", "netem", "loss", &loss,
            ],
        );
        let Err(netem) = netem else {
            return Ok(LossMethod::Netem);
        };
        let below = format!("{percent}");
        let nft = self
            .exec(i, "nft", &["add", "table", "inet", "aisloss"])
            .and_then(|()| {
                self.exec(
                    i,
                    "nft",
                    &[
                        "add",
                        "chain",
                        "inet",
                        "aisloss",
                        "out",
                        "{ type filter hook output priority 0 ; }",
                    ],
                )
            })
            .and_then(|()| {
                self.exec(
                    i,
                    "nft",
                    &[
                        "add", "rule", "inet", "aisloss", "out", "meta", "l4proto", "udp",
                        "numgen", "random", "mod", "100", "<", &below, "counter", "drop",
                    ],
                )
            });
        match nft {
            Ok(()) => Ok(LossMethod::Nftables),
            Err(nft) => Err(format!("{netem}; and nftables: {nft}")),
        }
    }

    /// How many frames node `i`'s nftables loss rule dropped so far (`None` under netem
    /// or without a rule).
    pub fn dropped(&self, i: u32) -> Option<u64> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(i),
                "nft",
                "list",
                "table",
                "inet",
                "aisloss",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        words.find(|w| *w == "packets")?;
        words.next()?.parse().ok()
    }

    /// Removes what [`set_loss`](Self::set_loss) added.
    pub fn clear_loss(&self, i: u32) -> Result<(), String> {
        let dev = self.inner_if(i);
        let tc = self.exec(i, "tc", &["qdisc", "del", "dev", &dev, "root"]);
        let nft = self.exec(i, "nft", &["delete", "table", "inet", "aisloss"]);
        tc.or(nft)
    }
}

/// How [`Topology::set_loss`] makes a link lossy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossMethod {
    Netem,
    Nftables,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &self.outer_if(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
