//! From the command line to a running executive: arguments, configuration, logging, the
//! runtime directory, the transport, Totem, the services and the IPC server, in that
//! order; any failure is one line naming what to fix.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ais_exec::Registry;
use log::{info, warn};
use totem::{Instant, NodeId, Srp};

use crate::config::{self, Config, Transport as TransportKind};
use crate::crypto::{self, FrameCrypto};
use crate::daemon::{Daemon, CONN_BASE};
use crate::ipc::{Access, IpcServer};
use crate::logging;
use crate::runtime::{self, RuntimeDir};
use crate::status;
use crate::transport::{Mode, Transport, TransportConfig};

/// Socket buffers asked of the kernel, each direction.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

pub const USAGE: &str = "\
usage: aisexec [--config FILE] [--debug]

  -c, --config FILE   read FILE (openais.conf format) instead of the embedded
                      one-node default (a cluster of one on 127.0.0.1)
  -d, --debug         log at debug level (RUST_LOG overrides the levels)
  -f, --foreground    accepted for compatibility: aisexec always runs in the
                      foreground (use your service manager to background it)
  -h, --help          this text
  -V, --version       print the version";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub debug: bool,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
    Version,
}

pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut opts = Options::default();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" | "--config" => {
                let file = args.next().ok_or("--config needs a file")?;
                opts.config = Some(PathBuf::from(file));
            }
            "-d" | "--debug" => opts.debug = true,
            "-f" | "--foreground" => {}
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(Command::Run(opts))
}

/// Builds everything and runs until a signal asks us to stop.
pub fn run(opts: Options) -> Result<(), String> {
    let (mut cfg, warnings) = match &opts.config {
        Some(path) => config::load(path).map_err(|e| e.to_string())?,
        None => (Config::embedded_default(), Vec::new()),
    };
    logging::init(&cfg.logging, opts.debug)?;
    for w in &warnings {
        warn!(target: "main", "{w}");
    }
    check_user(&cfg)?;

    let iface = cfg
        .totem
        .interfaces
        .first()
        .cloned()
        .ok_or("totem: no interface section")?;
    let nodeid = cfg
        .local_nodeid(iface.bindnetaddr)
        .map_err(|e| e.to_string())?;
    let me = NodeId(nodeid);

    let crypto = if cfg.totem.secauth {
        let path = cfg
            .totem
            .keyfile
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_KEYFILE));
        let c = FrameCrypto::load(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Sealing adds to every frame; Totem must build smaller ones to stay in the MTU.
        cfg.totem.timers.netmtu = cfg
            .totem
            .timers
            .netmtu
            .saturating_sub(crypto::OVERHEAD as u32);
        info!(target: "main", "secauth on: frames are authenticated and encrypted with {}", path.display());
        Some(c)
    } else {
        None
    };
    let params = cfg.resolve_totem().map_err(|e| e.to_string())?;
    let send_queue_max = params.send_queue_max_msgs as usize;

    let dir = cfg
        .aisexec
        .runtime_dir
        .clone()
        .unwrap_or_else(runtime::default_dir);
    let runtime = RuntimeDir::open(&dir).map_err(|e| e.to_string())?;

    let mode = match cfg.totem.transport {
        TransportKind::Udp => Mode::Multicast {
            group: iface
                .mcastaddr
                .ok_or("totem.interface.mcastaddr is required with transport udp")?,
            ttl: iface.ttl,
        },
        TransportKind::Udpu => Mode::Unicast {
            members: iface.members.clone(),
        },
    };
    let transport = Transport::bind(
        TransportConfig {
            nodeid: me,
            bind: iface.bindnetaddr,
            port: iface.mcastport,
            mode,
            buffer_bytes: SOCKET_BUFFER_BYTES,
        },
        crypto,
    )
    .map_err(|e| {
        format!(
            "cannot bind {}:{} (totem.interface.bindnetaddr must be an address of this host): {e}",
            iface.bindnetaddr, iface.mcastport
        )
    })?;

    let srp = Srp::new(params, me, runtime.load_ring_seq(), Instant(0));
    let mut registry = Registry::new(me);
    let policy = cfg.quorum_policy();
    // The registry logs the case of no expected votes (quorum not enforced).
    if let Some(e) = policy.expected_votes {
        info!(target: "quorum", "expected votes {e}, this node's votes {}{}",
            policy.votes_of(me), if policy.two_node { ", two_node" } else { "" });
    }
    registry.set_quorum_policy(policy);
    let names = status::node_names(&cfg, me);
    let name = names.get(&me).cloned();
    registry.set_node_names(names);
    ais_services::register_all(&mut registry, &services_config(me, name, iface.bindnetaddr));

    let access = resolve_access(&cfg);
    let grant_others = !access.uids.is_empty() || !access.gids.is_empty();
    let ipc = IpcServer::bind(&runtime.socket_path(), CONN_BASE, access)
        .map_err(|e| format!("{}: {e}", runtime.socket_path().display()))?;
    if grant_others {
        runtime
            .open_socket_permissions()
            .map_err(|e| format!("{}: {e}", runtime.path().display()))?;
    }
    info!(target: "main", "aisexec {} node {me}, runtime directory {}",
        env!("CARGO_PKG_VERSION"), runtime.path().display());

    Daemon {
        me,
        srp,
        registry,
        transport,
        ipc,
        runtime,
        send_queue_max,
    }
    .run()
    .map_err(|e| format!("event loop: {e}"))
}

/// CLM's record of this node: the host name (`node<id>` when it cannot be read), the
/// Totem bind address, and the wall clock now as the boot time.
/// The local node's CLM record: its name from the nodelist, else the host name (both in
/// `name`), else `node<id>`.
fn services_config(
    me: NodeId,
    name: Option<String>,
    address: std::net::IpAddr,
) -> ais_services::ServicesConfig {
    let name = name.unwrap_or_else(|| format!("node{}", me.0));
    let boot_time_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    ais_services::ServicesConfig {
        local: ais_services::LocalNode::new(&name, address, boot_time_ns),
    }
}

/// `aisexec { user; group }` name the account the executive runs as. It does not switch
/// users itself (a service manager does that better); it refuses to run as anyone else.
fn check_user(cfg: &Config) -> Result<(), String> {
    let uid = rustix::process::geteuid().as_raw();
    if let Some(user) = &cfg.aisexec.user {
        match lookup_id("/etc/passwd", user) {
            Some(want) if want == uid => {}
            Some(want) => {
                return Err(format!(
                    "aisexec.user is {user} (uid {want}) but aisexec runs as uid {uid}; start it as {user}"
                ))
            }
            None => return Err(format!("aisexec.user: no such user '{user}'")),
        }
    }
    if let Some(group) = &cfg.aisexec.group {
        let gid = rustix::process::getegid().as_raw();
        match lookup_id("/etc/group", group) {
            Some(want) if want == gid => {}
            Some(want) => {
                return Err(format!(
                    "aisexec.group is {group} (gid {want}) but aisexec runs as gid {gid}"
                ))
            }
            None => return Err(format!("aisexec.group: no such group '{group}'")),
        }
    }
    Ok(())
}

/// The uids and gids of the `uidgid { }` sections; a name that does not resolve is
/// warned about and skipped.
fn resolve_access(cfg: &Config) -> Access {
    let mut uids = BTreeSet::new();
    let mut gids = BTreeSet::new();
    for entry in &cfg.uidgid {
        if let Some(u) = &entry.uid {
            match lookup_id("/etc/passwd", u) {
                Some(id) => {
                    uids.insert(id);
                }
                None => warn!(target: "main", "uidgid.uid: unknown user '{u}'"),
            }
        }
        if let Some(g) = &entry.gid {
            match lookup_id("/etc/group", g) {
                Some(id) => {
                    gids.insert(id);
                }
                None => warn!(target: "main", "uidgid.gid: unknown group '{g}'"),
            }
        }
    }
    Access { uids, gids }
}

/// A numeric id as is, else the id of `name` in a passwd- or group-format file.
fn lookup_id(file: &str, name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let n = fields.next()?;
        let _password = fields.next()?;
        let id = fields.next()?;
        (n == name).then(|| id.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Command, String> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn command_line() {
        assert_eq!(args(&[]), Ok(Command::Run(Options::default())));
        assert_eq!(
            args(&["--config", "/x.conf", "-d", "-f"]),
            Ok(Command::Run(Options {
                config: Some(PathBuf::from("/x.conf")),
                debug: true
            }))
        );
        assert_eq!(args(&["-h"]), Ok(Command::Help));
        assert!(args(&["--config"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }

    #[test]
    fn ids_resolve_from_numbers_and_names() {
        assert_eq!(lookup_id("/etc/passwd", "0"), Some(0));
        assert_eq!(lookup_id("/etc/passwd", "root"), Some(0));
        assert_eq!(lookup_id("/etc/passwd", "no-such-user-here"), None);
    }
}
