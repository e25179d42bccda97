//! The typed configuration, and its construction from a [`Section`] tree: every known
//! key parsed and checked, unknown ones turned into warnings.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ais_services::section::{self, SectionSpec};
use ais_services::{ServiceSection, ServiceSections};
use totem::{Params, TotemConfig};

use super::syntax::{Item, Pair, Section};
use super::value::{parse_bool, parse_ip, parse_text, parse_u32, parse_uint, parse_word, quote};
use crate::logging::SUBSYSTEMS;

use super::{ConfigError, ConfigWarning, DEFAULT_KEYFILE, DEFAULT_MCASTPORT, MAX_MEMBERS};

/// How Totem reaches the other nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// `udp`: one datagram to a multicast group (`mcastaddr`) reaches every node.
    #[default]
    Udp,
    /// `udpu`: a datagram to each configured member, for networks without multicast.
    Udpu,
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `totem { }`: the ring.
    pub totem: TotemSection,
    /// `logging { }`.
    pub logging: Logging,
    /// `aisexec { }`: how the daemon itself runs.
    pub aisexec: AisexecSection,
    /// Each `uidgid { }` section: who may connect to the daemon besides root.
    pub uidgid: Vec<UidGid>,
    /// `nodelist { node { } ... }`: the cluster's nodes with names and votes, in file
    /// order (empty when there is no nodelist).
    pub nodelist: Vec<NodeEntry>,
    /// `quorum { }`.
    pub quorum: QuorumSection,
    /// Service sections (`cpg { }`, `clm { }`, `amf { }`, ...; see
    /// [`ais_services::section::SECTIONS`]) by name, with the keys their service reads,
    /// checked, for the services. A section written twice is one section with the keys
    /// of both (the later setting of a key wins). Sections of services this executive
    /// does not offer are not here.
    pub services: ServiceSections,
    /// Where each key and section was written, for errors found after parsing.
    pub origin: Origin,
}

/// `totem { }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotemSection {
    /// `version`: the Totem configuration version; required, must be 2.
    pub version: u32,
    /// `nodeid`: this node's id; non-zero. Unset, it is derived from the IPv4 address
    /// (see [`Config::local_nodeid`]); required with IPv6.
    pub nodeid: Option<u32>,
    /// `secauth`: authenticate and encrypt every frame with the shared key (default off).
    pub secauth: bool,
    /// `keyfile`: the shared key; when unset, [`DEFAULT_KEYFILE`] if `secauth` is on and
    /// `None` if it is off.
    pub keyfile: Option<PathBuf>,
    /// `transport`: `udp` (default) or `udpu`.
    pub transport: Transport,
    /// `cluster_name`: a name for the cluster, for humans and logs.
    pub cluster_name: Option<String>,
    /// Each `interface { }`; exactly one today, ring 0.
    pub interfaces: Vec<Interface>,
    /// The timer and flow-control keys (`token`, `consensus`, `window_size`, ...).
    pub timers: TotemConfig,
}

/// `totem { interface { } }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// `ringnumber`: which ring this interface carries (default 0, the only one supported).
    pub ringnumber: u8,
    /// `bindnetaddr`: the address, or the network address, of the local interface.
    pub bindnetaddr: IpAddr,
    /// `mcastaddr`: the multicast group; required with `udp`.
    pub mcastaddr: Option<IpAddr>,
    /// `mcastport`: the UDP port Totem receives on (default 5405).
    pub mcastport: u16,
    /// `ttl`: multicast time to live (default 1: the local network only).
    pub ttl: u8,
    /// `member { memberaddr }`: every node's address, this one included; required with
    /// `udpu`.
    pub members: Vec<IpAddr>,
}

/// `logging { }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logging {
    /// `to_stderr` (default on).
    pub to_stderr: bool,
    /// `to_file`, or corosync's `to_logfile` (default off).
    pub to_file: bool,
    /// `logfile`: required when `to_file` is on.
    pub logfile: Option<PathBuf>,
    /// `debug`: debug messages from every subsystem (default off).
    pub debug: bool,
    /// `timestamp`: prefix messages with the time (default off).
    pub timestamp: bool,
    /// Each `logger_subsys { }` that names a subsystem of this executive
    /// ([`SUBSYSTEMS`]); one naming another is warned about and left out.
    pub subsys: Vec<LoggerSubsys>,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            to_stderr: true,
            to_file: false,
            logfile: None,
            debug: false,
            timestamp: false,
            subsys: Vec::new(),
        }
    }
}

/// `logging { logger_subsys { subsys: CLM  debug: on } }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggerSubsys {
    /// `subsys`: the subsystem's name as written (`CLM`, `TOTEM`, ...); required.
    pub subsys: String,
    /// `debug`: debug messages from this subsystem (default off).
    pub debug: bool,
}

/// `aisexec { }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AisexecSection {
    /// `user`: the user the daemon runs as.
    pub user: Option<String>,
    /// `group`: the group the daemon runs as.
    pub group: Option<String>,
    /// `runtime_dir`: where the IPC socket lives; unset, the daemon picks one per user.
    pub runtime_dir: Option<PathBuf>,
}

/// `uidgid { uid: name  gid: name }`: a user and/or group allowed to connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UidGid {
    pub uid: Option<String>,
    pub gid: Option<String>,
}

/// `nodelist { node { nodeid; name; ring0_addr; quorum_votes } }`: one cluster node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    /// `nodeid`: non-zero, unique. Unset, derived from an IPv4 `ring0_addr` the way
    /// `totem.nodeid` is derived from `bindnetaddr`.
    pub nodeid: u32,
    /// `name`: a name for humans (aisctl, logs), unique; unset, none.
    pub name: Option<String>,
    /// `ring0_addr`: the node's ring 0 address, unique; shown when the transport has not
    /// heard from the node yet, and used to find this node's entry.
    pub ring0_addr: Option<IpAddr>,
    /// `quorum_votes`: its votes, 1 to [`MAX_VOTES`] (default 1).
    pub quorum_votes: u32,
}

/// `quorum { expected_votes; two_node; votes }`; see [`Config::quorum_policy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumSection {
    /// `expected_votes`: the votes of the whole cluster; unset, the nodelist's sum.
    pub expected_votes: Option<u32>,
    /// `two_node`: in a cluster of exactly two votes, one is enough (default off).
    pub two_node: bool,
    /// `votes`: the votes of a node that is not in the nodelist (default 1).
    pub votes: u32,
}

impl Default for QuorumSection {
    fn default() -> Self {
        QuorumSection {
            expected_votes: None,
            two_node: false,
            votes: 1,
        }
    }
}

/// Most votes one node may hold: small enough that no nodelist's sum overflows.
pub const MAX_VOTES: u32 = 65_535;

/// Where a configuration came from: the file, and the line of every key and section
/// read, by dotted path (`totem`, `totem.consensus`, `totem.interface.mcastport`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub lines: BTreeMap<String, u32>,
}

impl Origin {
    /// The line of `key`, else of the nearest enclosing section written, else 0.
    pub fn line_of(&self, key: &str) -> u32 {
        let mut path = key;
        loop {
            if let Some(line) = self.lines.get(path) {
                return *line;
            }
            match path.rsplit_once('.') {
                Some((parent, _)) => path = parent,
                None => return 0,
            }
        }
    }
}

impl Config {
    /// The ring's configured size, which scales Totem's token timeout: with `udpu` the
    /// number of members, with `udp` 1 (the members are not known in advance).
    pub fn node_count(&self) -> usize {
        match self.totem.transport {
            Transport::Udpu => self.totem.interfaces.first().map_or(0, |i| i.members.len()),
            Transport::Udp => 1,
        }
    }

    /// This node's id: `totem.nodeid` if set, else the `nodeid` of the nodelist entry
    /// whose `ring0_addr` is `local_addr` (as corosync 2 finds itself), else the IPv4
    /// address it binds to read as a big-endian number (127.0.0.1 is 0x7f000001), as
    /// corosync 1.x does. An IPv6 address, or 0.0.0.0, needs one of the first two.
    pub fn local_nodeid(&self, local_addr: IpAddr) -> Result<u32, ConfigError> {
        if let Some(id) = self.totem.nodeid {
            return Ok(id);
        }
        if let Some(entry) = self
            .nodelist
            .iter()
            .find(|n| n.ring0_addr == Some(local_addr))
        {
            return Ok(entry.nodeid);
        }
        match local_addr {
            IpAddr::V4(v4) if u32::from(v4) != 0 => Ok(u32::from(v4)),
            IpAddr::V4(v4) => Err(self.error_at(
                "totem.nodeid",
                format!("cannot be derived from the address {v4}: set a non-zero nodeid"),
            )),
            IpAddr::V6(v6) => Err(self.error_at(
                "totem.nodeid",
                format!(
                    "is required with the IPv6 address {v6}: a node id is derived only from \
                     an IPv4 address"
                ),
            )),
        }
    }

    /// Totem's parameters for this ring ([`TotemConfig::resolve`] with
    /// [`Config::node_count`]). An error names `totem.<key>` and the line the key was
    /// written on, or the `totem` section's line when the value was derived.
    pub fn resolve_totem(&self) -> Result<Params, ConfigError> {
        self.totem.timers.resolve(self.node_count()).map_err(|e| {
            let key = match e.key() {
                "node_count" => "totem.interface.member".to_owned(),
                key => format!("totem.{key}"),
            };
            // Totem's message starts with `totem.<key> = `, which ours says already.
            let text = e.to_string();
            let value = [format!("totem.{} = ", e.key()), format!("{} = ", e.key())]
                .iter()
                .find_map(|prefix| text.strip_prefix(prefix.as_str()))
                .unwrap_or(&text)
                .to_owned();
            self.error_at(&key, value)
        })
    }

    /// How votes are counted (see `ais_exec::quorum`): votes from the nodelist,
    /// `quorum.votes` for any other node, and expected votes from, in order:
    /// `quorum.expected_votes`; the sum of the nodelist's votes; with `udpu`, the member
    /// count times `quorum.votes`; else none, and quorum is not enforced (every
    /// partition is quorate; the registry logs it).
    pub fn quorum_policy(&self) -> ais_exec::QuorumPolicy {
        ais_exec::QuorumPolicy {
            votes: self
                .nodelist
                .iter()
                .map(|n| (totem::NodeId(n.nodeid), n.quorum_votes))
                .collect(),
            default_votes: self.quorum.votes,
            expected_votes: self.expected_votes(),
            two_node: self.quorum.two_node,
        }
    }

    /// The expected votes [`Config::quorum_policy`] uses.
    pub fn expected_votes(&self) -> Option<u32> {
        if let Some(e) = self.quorum.expected_votes {
            return Some(e);
        }
        if !self.nodelist.is_empty() {
            return Some(
                self.nodelist
                    .iter()
                    .fold(0u32, |sum, n| sum.saturating_add(n.quorum_votes)),
            );
        }
        match self.totem.transport {
            Transport::Udpu => Some((self.node_count() as u32).saturating_mul(self.quorum.votes)),
            Transport::Udp => None,
        }
    }

    /// Node names by id: the nodelist's, for the admin service and logs.
    pub fn node_names(&self) -> BTreeMap<u32, String> {
        self.nodelist
            .iter()
            .filter_map(|n| Some((n.nodeid, n.name.clone()?)))
            .collect()
    }

    /// An error about `key` (a dotted path), placed on the line where it, or the nearest
    /// section around it, was written. For problems found after parsing, such as a
    /// `bindnetaddr` that matches no local interface.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.origin.file, self.origin.line_of(key), key, message)
    }
}

/// Stores a `totem { }` timer or constant in its [`TotemConfig`] field.
type SetTimer = fn(&mut TotemConfig, u32);

/// Every timer and constant of `totem { }`, with where it goes in [`TotemConfig`].
const TIMERS: &[(&str, SetTimer)] = &[
    ("token", |c, v| c.token_ms = v),
    ("token_coefficient", |c, v| c.token_coefficient_ms = v),
    ("token_retransmit", |c, v| c.token_retransmit_ms = Some(v)),
    ("hold", |c, v| c.hold_ms = Some(v)),
    ("join", |c, v| c.join_ms = v),
    ("consensus", |c, v| c.consensus_ms = Some(v)),
    ("merge", |c, v| c.merge_ms = v),
    ("downcheck", |c, v| c.downcheck_ms = v),
    ("fail_recv_const", |c, v| c.fail_recv_const = v),
    ("seqno_unchanged_const", |c, v| c.seqno_unchanged_const = v),
    ("window_size", |c, v| c.window_size = v),
    ("max_messages", |c, v| c.max_messages = v),
    ("miss_count_const", |c, v| c.miss_count_const = v),
    ("token_retransmits_before_loss_const", |c, v| {
        c.token_retransmits_before_loss_const = v
    }),
    ("netmtu", |c, v| c.netmtu = v),
    ("accelerated_window", |c, v| c.accelerated_window = v),
    ("linger_us", |c, v| c.linger_us = v),
    ("send_queue_max_msgs", |c, v| c.send_queue_max_msgs = v),
    ("send_queue_max_bytes", |c, v| c.send_queue_max_bytes = v),
];

const TOTEM_KEYS: &[&str] = &[
    "version",
    "nodeid",
    "secauth",
    "keyfile",
    "transport",
    "cluster_name",
];

/// `totem.interface { }`.
const INTERFACE: Spec = Spec {
    keys: &["ringnumber", "bindnetaddr", "mcastaddr", "mcastport", "ttl"],
    aliases: &[],
    sections: &["member"],
};

/// `totem.interface.member { }`.
const MEMBER: Spec = Spec {
    keys: &["memberaddr"],
    aliases: &[],
    sections: &[],
};

/// `logging { }`.
const LOGGING: Spec = Spec {
    keys: &["to_stderr", "to_file", "logfile", "debug", "timestamp"],
    aliases: &[("to_logfile", "to_file")],
    sections: &["logger_subsys"],
};

/// `logging.logger_subsys { }`.
const LOGGER_SUBSYS: Spec = Spec {
    keys: &["subsys", "debug"],
    aliases: &[],
    sections: &[],
};

/// `aisexec { }`.
const AISEXEC: Spec = Spec {
    keys: &["user", "group", "runtime_dir"],
    aliases: &[],
    sections: &[],
};

/// `uidgid { }`.
const UIDGID: Spec = Spec {
    keys: &["uid", "gid"],
    aliases: &[],
    sections: &[],
};

/// `nodelist { }`.
const NODELIST: Spec = Spec {
    keys: &[],
    aliases: &[],
    sections: &["node"],
};

/// `nodelist.node { }`.
const NODE: Spec = Spec {
    keys: &["nodeid", "name", "ring0_addr", "quorum_votes"],
    aliases: &[],
    sections: &[],
};

/// `quorum { }`.
const QUORUM: Spec = Spec {
    keys: &["expected_votes", "two_node", "votes"],
    aliases: &[],
    sections: &[],
};

/// Every section the model reads other than `totem` and the service sections, by
/// dotted path, with what it may hold (for the test that the example documents them).
#[cfg(test)]
const SPECS: &[(&str, &Spec)] = &[
    ("totem.interface", &INTERFACE),
    ("totem.interface.member", &MEMBER),
    ("logging", &LOGGING),
    ("logging.logger_subsys", &LOGGER_SUBSYS),
    ("aisexec", &AISEXEC),
    ("uidgid", &UIDGID),
    ("nodelist", &NODELIST),
    ("nodelist.node", &NODE),
    ("quorum", &QUORUM),
];

/// Every key the parser accepts, as a dotted path (`totem.interface.mcastport`,
/// `logging.to_logfile`, `amf.mode`), aliases included: what the example must document.
#[cfg(test)]
pub(super) fn known_keys() -> Vec<String> {
    let totem = TOTEM_KEYS
        .iter()
        .copied()
        .chain(TIMERS.iter().map(|(k, _)| *k))
        .map(|k| format!("totem.{k}"));
    let others = SPECS.iter().flat_map(|(path, spec)| {
        spec.keys
            .iter()
            .chain(spec.aliases.iter().map(|(alias, _)| alias))
            .map(move |k| format!("{path}.{k}"))
    });
    let services = section::SECTIONS
        .iter()
        .flat_map(|s| s.keys.iter().map(move |k| format!("{}.{}", s.name, k.key)));
    totem.chain(others).chain(services).collect()
}

/// Every section the parser reads, as a dotted path (`totem.interface.member`, `cpg`):
/// what the example must show.
#[cfg(test)]
pub(super) fn known_sections() -> Vec<String> {
    let top = [
        "totem", "logging", "aisexec", "uidgid", "nodelist", "quorum",
    ];
    let nested = std::iter::once(("totem", "interface"))
        .chain(
            SPECS
                .iter()
                .flat_map(|(path, spec)| spec.sections.iter().map(move |s| (*path, *s))),
        )
        .map(|(path, s)| format!("{path}.{s}"));
    let services = section::SECTIONS.iter().map(|s| s.name.to_owned());
    top.iter()
        .map(|s| (*s).to_owned())
        .chain(nested)
        .chain(services)
        .collect()
}

/// Builds the typed configuration from a parsed file, then checks that Totem can run
/// with it.
pub(super) fn build(
    root: &Section,
    file: &str,
    last_line: u32,
) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    let mut cx = Builder {
        file,
        warnings: Vec::new(),
        lines: BTreeMap::new(),
    };
    let mut totem = None;
    let mut logging = None;
    let mut aisexec = None;
    let mut uidgid = Vec::new();
    let mut nodelist = None;
    let mut quorum = None;
    let mut services = ServiceSections::new();
    for item in &root.items {
        let section = match item {
            Item::Pair(p) if p.key == "compatibility" => {
                cx.warn(
                    p.line,
                    &p.key,
                    "ignored: there is only one wire and configuration format",
                );
                continue;
            }
            Item::Pair(p) => {
                return Err(cx.error(
                    p.line,
                    &p.key,
                    "a key outside any section: keys belong in `totem { }`, `logging { }`, ...",
                ))
            }
            Item::Section(s) => s,
        };
        match section.name.as_str() {
            "totem" => {
                cx.once(&totem, section)?;
                totem = Some((cx.totem(section)?, section.line));
            }
            "logging" => {
                cx.once(&logging, section)?;
                logging = Some((cx.logging(section)?, section.line));
            }
            "aisexec" => {
                cx.once(&aisexec, section)?;
                aisexec = Some((cx.aisexec(section)?, section.line));
            }
            "uidgid" => uidgid.push(cx.uidgid(section)?),
            "nodelist" => {
                cx.once(&nodelist, section)?;
                nodelist = Some((cx.nodelist(section)?, section.line));
            }
            "quorum" => {
                cx.once(&quorum, section)?;
                quorum = Some((cx.quorum(section)?, section.line));
            }
            name => match section::spec(name) {
                Some(spec) => cx.service(section, spec, &mut services)?,
                None => {
                    let names: Vec<&str> = section::SECTIONS.iter().map(|s| s.name).collect();
                    return Err(cx.error(
                        section.line,
                        name,
                        format!(
                            "unknown section: expected totem, logging, aisexec, uidgid, \
                             nodelist, quorum or a service section ({})",
                            names.join(", ")
                        ),
                    ));
                }
            },
        }
    }
    let Some((totem, _)) = totem else {
        return Err(cx.error(
            last_line,
            "totem",
            "missing section: every configuration needs `totem { version: 2 interface { ... } }`",
        ));
    };
    let nodelist = nodelist.map(|(n, _)| n).unwrap_or_default();
    let quorum = quorum.map(|(q, _)| q).unwrap_or_default();
    cx.check_quorum(&totem, &nodelist, &quorum)?;
    let config = Config {
        totem,
        logging: logging.map(|(l, _)| l).unwrap_or_default(),
        aisexec: aisexec.map(|(a, _)| a).unwrap_or_default(),
        uidgid,
        nodelist,
        quorum,
        services,
        origin: Origin {
            file: file.to_owned(),
            lines: cx.lines,
        },
    };
    config.resolve_totem()?;
    Ok((config, cx.warnings))
}

/// What a known section may hold; anything else is warned about and skipped.
struct Spec<'a> {
    keys: &'a [&'a str],
    /// Other spellings accepted for a key: `(alias, key)`.
    aliases: &'a [(&'a str, &'a str)],
    sections: &'a [&'a str],
}

/// A known section's pairs (the last of each key) and known nested sections.
struct Fields<'s> {
    path: String,
    line: u32,
    pairs: BTreeMap<String, &'s Pair>,
    sections: Vec<&'s Section>,
}

struct Builder<'f> {
    file: &'f str,
    warnings: Vec<ConfigWarning>,
    lines: BTreeMap<String, u32>,
}

impl Builder<'_> {
    fn error(&self, line: u32, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, line, key, message)
    }

    fn warn(&mut self, line: u32, key: &str, message: impl Into<String>) {
        let warning = ConfigWarning::new(self.file, line, key, message);
        log::debug!(target: "config", "{warning}");
        self.warnings.push(warning);
    }

    /// Refuses a second `totem`, `logging`, `aisexec`, `nodelist` or `quorum` section.
    fn once<T>(&self, first: &Option<(T, u32)>, section: &Section) -> Result<(), ConfigError> {
        match first {
            Some((_, line)) => Err(self.error(
                section.line,
                &section.name,
                format!("section written twice (first on line {line}): merge them"),
            )),
            None => Ok(()),
        }
    }

    fn fields<'s>(&mut self, section: &'s Section, path: &str, spec: &Spec) -> Fields<'s> {
        self.lines.insert(path.to_owned(), section.line);
        let mut pairs: BTreeMap<String, &Pair> = BTreeMap::new();
        let mut sections = Vec::new();
        for item in &section.items {
            match item {
                Item::Pair(p) => {
                    let key = spec.keys.iter().find(|k| **k == p.key).or_else(|| {
                        spec.aliases
                            .iter()
                            .find(|(alias, _)| *alias == p.key)
                            .map(|(_, key)| key)
                    });
                    let Some(key) = key else {
                        self.warn(p.line, &format!("{path}.{}", p.key), "unknown key, ignored");
                        continue;
                    };
                    if let Some(earlier) = pairs.insert((*key).to_owned(), p) {
                        self.warn(
                            earlier.line,
                            &format!("{path}.{}", earlier.key),
                            format!("set again on line {}, which wins", p.line),
                        );
                    }
                }
                Item::Section(s) if spec.sections.contains(&s.name.as_str()) => sections.push(s),
                Item::Section(s) => {
                    self.warn(
                        s.line,
                        &format!("{path}.{}", s.name),
                        "unknown section, ignored",
                    );
                }
            }
        }
        Fields {
            path: path.to_owned(),
            line: section.line,
            pairs,
            sections,
        }
    }

    /// The value of `key` in `fields`, parsed, or `None` when it is not set.
    fn get<T>(
        &mut self,
        fields: &Fields,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(pair) = fields.pairs.get(key) else {
            return Ok(None);
        };
        self.lines
            .insert(format!("{}.{key}", fields.path), pair.line);
        parse(&pair.value)
            .map(Some)
            .map_err(|m| self.error(pair.line, &format!("{}.{}", fields.path, pair.key), m))
    }

    fn require<T>(
        &mut self,
        fields: &Fields,
        key: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(fields, key, parse)? {
            Some(v) => Ok(v),
            None => Err(self.error(
                fields.line,
                &format!("{}.{key}", fields.path),
                format!("missing: {what}"),
            )),
        }
    }

    fn flag(&mut self, fields: &Fields, key: &str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.get(fields, key, parse_bool)?.unwrap_or(default))
    }

    /// A service section: its keys checked into `services` (merged with an earlier
    /// section of the same name), or one warning for a service this executive lacks.
    fn service(
        &mut self,
        section: &Section,
        spec: &SectionSpec,
        services: &mut ServiceSections,
    ) -> Result<(), ConfigError> {
        let path = spec.name;
        let first_line = *self.lines.entry(path.to_owned()).or_insert(section.line);
        if spec.ignored() {
            self.warn(
                section.line,
                path,
                format!("this executive offers no {path} service: section ignored"),
            );
            return Ok(());
        }
        let keys: Vec<&str> = spec.keys.iter().map(|k| k.key).collect();
        let service_spec = Spec {
            keys: &keys,
            aliases: &[],
            sections: &[],
        };
        let f = self.fields(section, path, &service_spec);
        // `fields` noted this section's line; the first section's is the one to name.
        self.lines.insert(path.to_owned(), first_line);
        let entry = services
            .entry(path.to_owned())
            .or_insert_with(|| ServiceSection {
                line: first_line,
                ..ServiceSection::default()
            });
        for key in spec.keys {
            let Some(line) = f.pairs.get(key.key).map(|p| p.line) else {
                continue;
            };
            let Some(value) = self.get(&f, key.key, |v| (key.check)(v).map(|()| v.to_owned()))?
            else {
                continue;
            };
            if let Some((_, earlier)) = entry.values.insert(key.key.to_owned(), (value, line)) {
                self.warn(
                    earlier,
                    &format!("{path}.{}", key.key),
                    format!("set again on line {line}, which wins"),
                );
            }
        }
        Ok(())
    }

    fn totem(&mut self, section: &Section) -> Result<TotemSection, ConfigError> {
        let keys: Vec<&str> = TOTEM_KEYS
            .iter()
            .copied()
            .chain(TIMERS.iter().map(|(k, _)| *k))
            .collect();
        let spec = Spec {
            keys: &keys,
            aliases: &[],
            sections: &["interface"],
        };
        let f = self.fields(section, "totem", &spec);

        let version = self.require(&f, "version", "write `version: 2`", |v| {
            match parse_u32(v, 0)? {
                2 => Ok(2),
                n => Err(format!(
                    "version {n} is not supported: this is the version 2 configuration format"
                )),
            }
        })?;
        let nodeid = self.get(&f, "nodeid", |v| {
            parse_u32(v, 0)?;
            parse_u32(v, 1).map_err(|_| "must not be 0: node id 0 is reserved".to_owned())
        })?;
        let secauth = self.flag(&f, "secauth", false)?;
        let keyfile = self.get(&f, "keyfile", |v| parse_text(v).map(PathBuf::from))?;
        let keyfile = keyfile.or_else(|| secauth.then(|| PathBuf::from(DEFAULT_KEYFILE)));
        let transport = self
            .get(&f, "transport", |v| match v {
                "udp" => Ok(Transport::Udp),
                "udpu" => Ok(Transport::Udpu),
                other => Err(format!(
                    "transport {} is not supported: use udp (multicast) or udpu (unicast to \
                     each member)",
                    quote(other)
                )),
            })?
            .unwrap_or_default();
        let cluster_name = self.get(&f, "cluster_name", parse_text)?;

        let mut timers = TotemConfig::default();
        for (key, set) in TIMERS {
            if let Some(v) = self.get(&f, key, |v| parse_u32(v, 0))? {
                set(&mut timers, v);
            }
        }

        let mut interfaces: Vec<(Interface, u32)> = Vec::new();
        for s in &f.sections {
            let interface = self.interface(s)?;
            if let Some((_, first)) = interfaces
                .iter()
                .find(|(i, _)| i.ringnumber == interface.ringnumber)
            {
                return Err(self.error(
                    s.line,
                    "totem.interface",
                    format!(
                        "ring {} has a second interface section (the first is on line {first})",
                        interface.ringnumber
                    ),
                ));
            }
            interfaces.push((interface, s.line));
        }
        let Some((ring0, ring0_line)) = interfaces.first() else {
            return Err(self.error(
                f.line,
                "totem.interface",
                "missing: write an `interface { bindnetaddr: ... }` section",
            ));
        };
        match transport {
            Transport::Udp if ring0.mcastaddr.is_none() => {
                return Err(self.error(
                    *ring0_line,
                    "totem.interface.mcastaddr",
                    "missing: transport udp sends to a multicast group (or set transport: udpu \
                     and list the members)",
                ))
            }
            Transport::Udp if !ring0.members.is_empty() => {
                self.warn(
                    *ring0_line,
                    "totem.interface.member",
                    "member addresses are ignored with transport udp",
                );
            }
            Transport::Udpu if ring0.members.is_empty() => {
                return Err(self.error(
                    *ring0_line,
                    "totem.interface.member",
                    "missing: transport udpu needs a `member { memberaddr: ... }` section for \
                     every node, this one included",
                ))
            }
            _ => {}
        }
        if ring0.bindnetaddr.is_ipv6() && nodeid.is_none() {
            return Err(self.error(
                f.line,
                "totem.nodeid",
                "missing: required when bindnetaddr is IPv6 (a node id is derived only from \
                 an IPv4 address)",
            ));
        }

        Ok(TotemSection {
            version,
            nodeid,
            secauth,
            keyfile,
            transport,
            cluster_name,
            interfaces: interfaces.into_iter().map(|(i, _)| i).collect(),
            timers,
        })
    }

    fn interface(&mut self, section: &Section) -> Result<Interface, ConfigError> {
        let f = self.fields(section, "totem.interface", &INTERFACE);
        let ringnumber = self
            .get(&f, "ringnumber", |v| match parse_uint(v, 0, 255)? {
                0 => Ok(0),
                n => Err(format!(
                    "ring {n} is not supported: only ring 0 (redundant rings are not \
                     implemented)"
                )),
            })?
            .unwrap_or(0);
        let bindnetaddr = self.require(
            &f,
            "bindnetaddr",
            "the address, or network address, of the interface Totem uses",
            parse_ip,
        )?;
        let family = |a: IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
        let same_family = |a: IpAddr| -> Result<IpAddr, String> {
            if a.is_ipv4() == bindnetaddr.is_ipv4() {
                Ok(a)
            } else {
                Err(format!(
                    "{a} is {} but bindnetaddr {bindnetaddr} is {}",
                    family(a),
                    family(bindnetaddr)
                ))
            }
        };
        let mcastaddr = self.get(&f, "mcastaddr", |v| {
            let a = parse_ip(v)?;
            if !a.is_multicast() {
                return Err(format!(
                    "{a} is not a multicast address (IPv4 224.0.0.0/4, IPv6 ff00::/8)"
                ));
            }
            same_family(a)
        })?;
        let mcastport = self
            .get(&f, "mcastport", |v| {
                let n = parse_uint(v, 1, u64::from(u16::MAX))?;
                u16::try_from(n).map_err(|_| format!("{v} is not a UDP port"))
            })?
            .unwrap_or(DEFAULT_MCASTPORT);
        let ttl = self
            .get(&f, "ttl", |v| {
                let n = parse_uint(v, 0, 255)?;
                u8::try_from(n).map_err(|_| format!("{v} is not a TTL"))
            })?
            .unwrap_or(1);

        let mut members: Vec<(IpAddr, u32)> = Vec::new();
        for s in &f.sections {
            if members.len() == MAX_MEMBERS {
                return Err(self.error(
                    s.line,
                    "totem.interface.member",
                    format!("more than {MAX_MEMBERS} members: a ring holds at most {MAX_MEMBERS}"),
                ));
            }
            let m = self.fields(s, "totem.interface.member", &MEMBER);
            let addr = self.require(&m, "memberaddr", "the member's address", |v| {
                let a = same_family(parse_ip(v)?)?;
                match members.iter().find(|(b, _)| *b == a) {
                    Some((_, line)) => Err(format!("{a} is already a member (line {line})")),
                    None => Ok(a),
                }
            })?;
            members.push((addr, s.line));
        }

        Ok(Interface {
            ringnumber,
            bindnetaddr,
            mcastaddr,
            mcastport,
            ttl,
            members: members.into_iter().map(|(a, _)| a).collect(),
        })
    }

    fn logging(&mut self, section: &Section) -> Result<Logging, ConfigError> {
        let f = self.fields(section, "logging", &LOGGING);
        let defaults = Logging::default();
        let to_stderr = self.flag(&f, "to_stderr", defaults.to_stderr)?;
        let to_file = self.flag(&f, "to_file", defaults.to_file)?;
        let logfile = self.get(&f, "logfile", |v| parse_text(v).map(PathBuf::from))?;
        if to_file && logfile.is_none() {
            return Err(self.error(
                f.line,
                "logging.logfile",
                "missing: required when to_file is on",
            ));
        }
        let debug = self.flag(&f, "debug", defaults.debug)?;
        let timestamp = self.flag(&f, "timestamp", defaults.timestamp)?;

        // With each, its line and whether it is one of SUBSYSTEMS.
        let mut subsys: Vec<(LoggerSubsys, u32, bool)> = Vec::new();
        for s in &f.sections {
            let g = self.fields(s, "logging.logger_subsys", &LOGGER_SUBSYS);
            let name = self.require(&g, "subsys", "the subsystem's name", |v| {
                let name = parse_word(v)?;
                match subsys.iter().find(|(x, _, _)| x.subsys == name) {
                    Some((_, line, _)) => {
                        Err(format!("{name} is already configured on line {line}"))
                    }
                    None => Ok(name),
                }
            })?;
            let debug = self.flag(&g, "debug", false)?;
            let known = SUBSYSTEMS.contains(&name.to_ascii_lowercase().as_str());
            if !known {
                let line = g.pairs.get("subsys").map_or(g.line, |p| p.line);
                self.warn(
                    line,
                    "logging.logger_subsys.subsys",
                    format!(
                        "no subsystem {name} logs in this executive, ignored: the subsystems \
                         are {}",
                        SUBSYSTEMS.join(", ")
                    ),
                );
            }
            subsys.push((
                LoggerSubsys {
                    subsys: name,
                    debug,
                },
                s.line,
                known,
            ));
        }

        Ok(Logging {
            to_stderr,
            to_file,
            logfile,
            debug,
            timestamp,
            subsys: subsys
                .into_iter()
                .filter_map(|(s, _, known)| known.then_some(s))
                .collect(),
        })
    }

    fn aisexec(&mut self, section: &Section) -> Result<AisexecSection, ConfigError> {
        let f = self.fields(section, "aisexec", &AISEXEC);
        Ok(AisexecSection {
            user: self.get(&f, "user", parse_word)?,
            group: self.get(&f, "group", parse_word)?,
            runtime_dir: self.get(&f, "runtime_dir", |v| parse_text(v).map(PathBuf::from))?,
        })
    }

    fn uidgid(&mut self, section: &Section) -> Result<UidGid, ConfigError> {
        let f = self.fields(section, "uidgid", &UIDGID);
        let entry = UidGid {
            uid: self.get(&f, "uid", parse_word)?,
            gid: self.get(&f, "gid", parse_word)?,
        };
        if entry.uid.is_none() && entry.gid.is_none() {
            return Err(self.error(
                f.line,
                "uidgid",
                "names neither a uid nor a gid: write `uid: name` and/or `gid: name`",
            ));
        }
        Ok(entry)
    }

    fn nodelist(&mut self, section: &Section) -> Result<Vec<NodeEntry>, ConfigError> {
        let f = self.fields(section, "nodelist", &NODELIST);
        let mut nodes: Vec<(NodeEntry, u32)> = Vec::new();
        for s in &f.sections {
            if nodes.len() == MAX_MEMBERS {
                return Err(self.error(
                    s.line,
                    "nodelist.node",
                    format!("more than {MAX_MEMBERS} nodes: a ring holds at most {MAX_MEMBERS}"),
                ));
            }
            let g = self.fields(s, "nodelist.node", &NODE);
            let ring0_addr = self.get(&g, "ring0_addr", |v| {
                let a = parse_ip(v)?;
                match nodes.iter().find(|(n, _)| n.ring0_addr == Some(a)) {
                    Some((_, line)) => Err(format!(
                        "{a} is already the address of the node on line {line}"
                    )),
                    None => Ok(a),
                }
            })?;
            let unique_id = |id: u32| match nodes.iter().find(|(n, _)| n.nodeid == id) {
                Some((_, line)) => Err(format!("node id {id} is already the node on line {line}")),
                None => Ok(id),
            };
            let nodeid = match self.get(&g, "nodeid", |v| {
                parse_u32(v, 0)?;
                let id = parse_u32(v, 1)
                    .map_err(|_| "must not be 0: node id 0 is reserved".to_owned())?;
                unique_id(id)
            })? {
                Some(id) => id,
                None => match ring0_addr {
                    Some(IpAddr::V4(v4)) if u32::from(v4) != 0 => unique_id(u32::from(v4))
                        .map_err(|m| {
                            self.error(
                                g.line,
                                "nodelist.node.nodeid",
                                format!("derived from ring0_addr {v4}: {m}"),
                            )
                        })?,
                    _ => {
                        return Err(self.error(
                            g.line,
                            "nodelist.node.nodeid",
                            "missing: every node needs a nodeid (it is derived only from an \
                             IPv4 ring0_addr)",
                        ))
                    }
                },
            };
            let name = self.get(&g, "name", |v| {
                let name = parse_word(v)?;
                match nodes
                    .iter()
                    .find(|(n, _)| n.name.as_deref() == Some(name.as_str()))
                {
                    Some((_, line)) => Err(format!(
                        "{name} is already the name of the node on line {line}"
                    )),
                    None => Ok(name),
                }
            })?;
            let quorum_votes = self.get(&g, "quorum_votes", parse_votes)?.unwrap_or(1);
            nodes.push((
                NodeEntry {
                    nodeid,
                    name,
                    ring0_addr,
                    quorum_votes,
                },
                s.line,
            ));
        }
        if nodes.is_empty() {
            return Err(self.error(
                f.line,
                "nodelist.node",
                "missing: a nodelist lists each node in a `node { nodeid: ... }` section \
                 (or leave the nodelist out)",
            ));
        }
        Ok(nodes.into_iter().map(|(n, _)| n).collect())
    }

    fn quorum(&mut self, section: &Section) -> Result<QuorumSection, ConfigError> {
        let f = self.fields(section, "quorum", &QUORUM);
        let defaults = QuorumSection::default();
        Ok(QuorumSection {
            expected_votes: self.get(&f, "expected_votes", |v| {
                parse_u32(v, 0)?;
                parse_u32(v, 1).map_err(|_| {
                    "must be at least 1 (leave it out to use the nodelist's votes)".to_owned()
                })
            })?,
            two_node: self.flag(&f, "two_node", defaults.two_node)?,
            votes: self
                .get(&f, "votes", parse_votes)?
                .unwrap_or(defaults.votes),
        })
    }

    /// Checks that hold across `nodelist`, `quorum` and `totem`.
    fn check_quorum(
        &mut self,
        totem: &TotemSection,
        nodelist: &[NodeEntry],
        quorum: &QuorumSection,
    ) -> Result<(), ConfigError> {
        let listed: u32 = nodelist
            .iter()
            .fold(0u32, |sum, n| sum.saturating_add(n.quorum_votes));
        let line = |cx: &Self, key: &str| cx.lines.get(key).copied().unwrap_or(0);
        if let Some(expected) = quorum.expected_votes {
            if !nodelist.is_empty() && expected < listed {
                let l = line(self, "quorum.expected_votes");
                self.warn(
                    l,
                    "quorum.expected_votes",
                    format!(
                        "{expected} is below the nodelist's {listed} votes: expected votes \
                         rise to the votes present when more are present"
                    ),
                );
            }
        }
        if quorum.two_node {
            let expected = quorum
                .expected_votes
                .or((!nodelist.is_empty()).then_some(listed));
            match expected {
                Some(2) => {}
                Some(n) => {
                    return Err(self.error(
                        line(self, "quorum.two_node"),
                        "quorum.two_node",
                        format!(
                            "needs exactly 2 expected votes, but there are {n}: two_node is \
                             for clusters of two one-vote nodes"
                        ),
                    ))
                }
                None => {
                    return Err(self.error(
                        line(self, "quorum.two_node"),
                        "quorum.two_node",
                        "needs the cluster's votes: set expected_votes: 2 or list the two \
                         nodes in a nodelist",
                    ))
                }
            }
        }
        if let (false, Some(ring0)) = (nodelist.is_empty(), totem.interfaces.first()) {
            for m in &ring0.members {
                if !nodelist.iter().any(|n| n.ring0_addr == Some(*m)) {
                    let l = line(self, "nodelist");
                    self.warn(
                        l,
                        "nodelist.node.ring0_addr",
                        format!(
                            "member {m} of totem.interface has no nodelist entry: it counts \
                             quorum.votes and has no name"
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

/// A node's votes: 1 to [`MAX_VOTES`]; zero is refused (a node without a vote would make
/// partitions quorate or not in ways nobody expects).
fn parse_votes(value: &str) -> Result<u32, String> {
    let n = parse_uint(value, 0, u64::from(MAX_VOTES))?;
    match u32::try_from(n) {
        Ok(0) => Err("must be at least 1: a node without votes is not supported".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{value} is too large")),
    }
}
