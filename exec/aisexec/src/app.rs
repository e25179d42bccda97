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
use crate::ipc::{self, Access, IpcServer};
use crate::logging;
use crate::runtime::{self, RuntimeDir};
use crate::status;
use crate::transport::{Mode, Transport, TransportConfig};

/// Socket buffers asked of the kernel, each direction, at least.
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
            // A whole window of frames must fit (the kernel doubles what is asked).
            buffer_bytes: SOCKET_BUFFER_BYTES.max(
                cfg.totem.timers.window_size as usize * datagram_cost(cfg.totem.timers.netmtu),
            ),
        },
        crypto,
    )
    .map_err(|e| {
        format!(
            "cannot bind {}:{} (totem.interface.bindnetaddr must be an address of this host): {e}",
            iface.bindnetaddr, iface.mcastport
        )
    })?;

    fit_window_to_buffer(&mut cfg.totem.timers, transport.recv_buffer_bytes());
    let params = cfg.resolve_totem().map_err(|e| e.to_string())?;
    let send_queue_max = params.send_queue_max_msgs as usize;
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
    ais_services::register_all(
        &mut registry,
        &services_config(me, name, iface.bindnetaddr, &cfg.services),
    );

    let access = resolve_access(&cfg);
    let grant_others = !access.uids.is_empty() || !access.gids.is_empty();
    let max_connections = connection_limit();
    let ipc = IpcServer::bind(&runtime.socket_path(), CONN_BASE, access, max_connections)
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

/// Descriptors the executive keeps for itself (sockets, log file, runtime files) beyond
/// its IPC connections.
const RESERVED_FDS: u64 = 64;

/// How many IPC connections may be open at once: [`ipc::MAX_CONNECTIONS`], or fewer when
/// the descriptor limit (raised to its hard limit first, best effort) would run out
/// before that.
fn connection_limit() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            lim = getrlimit(Resource::Nofile);
        }
    }
    let limit = connections_within(lim.current);
    if limit < ipc::MAX_CONNECTIONS {
        let nofile = lim.current.unwrap_or(u64::MAX);
        warn!(target: "main", "at most {limit} IPC connections: the descriptor limit is {nofile} \
            (raise it to {} for {})", ipc::MAX_CONNECTIONS as u64 + RESERVED_FDS, ipc::MAX_CONNECTIONS);
    }
    limit
}

/// [`ipc::MAX_CONNECTIONS`] within a descriptor limit (`None`: unlimited), at least one.
fn connections_within(nofile: Option<u64>) -> usize {
    let fit = nofile
        .map_or(u64::MAX, |n| n.saturating_sub(RESERVED_FDS))
        .max(1);
    usize::try_from(fit).map_or(ipc::MAX_CONNECTIONS, |f| f.min(ipc::MAX_CONNECTIONS))
}

/// The local node's CLM record (its name from the nodelist, else the host name, both in
/// `name`, else `node<id>`) and the service sections of the configuration.
fn services_config(
    me: NodeId,
    name: Option<String>,
    address: std::net::IpAddr,
    sections: &ais_services::ServiceSections,
) -> ais_services::ServicesConfig {
    let name = name.unwrap_or_else(|| format!("node{}", me.0));
    let boot_time_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    ais_services::ServicesConfig {
        local: ais_services::LocalNode::new(&name, address, boot_time_ns),
        sections: sections.clone(),
    }
}

/// What one datagram of `netmtu` bytes costs a receive buffer in the kernel's
/// accounting, at most (the data rounded up to its allocation, plus the socket buffer
/// bookkeeping).
fn datagram_cost(netmtu: u32) -> usize {
    (netmtu as usize).next_power_of_two() + 1024
}

/// Lowers `window_size` (and `max_messages` with it) to the frames the granted receive
/// buffer holds: a rotation's frames may all arrive before this node reads one, and
/// frames that do not fit are dropped and must be retransmitted.
fn fit_window_to_buffer(t: &mut totem::TotemConfig, recv_buffer: usize) {
    let fits = u32::try_from(recv_buffer / datagram_cost(t.netmtu)).unwrap_or(u32::MAX);
    if recv_buffer == 0 || fits >= t.window_size {
        return;
    }
    let window = fits.max(1);
    warn!(target: "main", "totem.window_size {} does not fit the {recv_buffer}-byte receive buffer \
        the kernel granted; using {window} (raise net.core.rmem_max, or run as root)", t.window_size);
    t.window_size = window;
    t.max_messages = t.max_messages.min(window);
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
    fn the_window_is_lowered_to_what_the_receive_buffer_holds() {
        let mut t = totem::TotemConfig {
            netmtu: 9000,
            ..totem::TotemConfig::default()
        };
        let cost = datagram_cost(t.netmtu);
        assert_eq!(cost, 16384 + 1024);
        // Room for the whole window: unchanged.
        let (w, m) = (t.window_size, t.max_messages);
        fit_window_to_buffer(&mut t, w as usize * cost);
        assert_eq!((t.window_size, t.max_messages), (w, m));
        // Unknown (0): unchanged.
        fit_window_to_buffer(&mut t, 0);
        assert_eq!(t.window_size, w);
        // Linux's usual default (212 992, reported doubled): 24 frames of 9000 bytes.
        fit_window_to_buffer(&mut t, 425_984);
        assert_eq!(t.window_size, 24);
        assert_eq!(t.max_messages, m.min(24));
        assert!(t.resolve(3).is_ok());
        // Never below one frame.
        fit_window_to_buffer(&mut t, 100);
        assert_eq!((t.window_size, t.max_messages), (1, 1));
        assert!(t.resolve(3).is_ok());
    }

    #[test]
    fn the_connection_limit_fits_the_descriptor_limit() {
        assert_eq!(connections_within(None), ipc::MAX_CONNECTIONS);
        assert_eq!(connections_within(Some(1 << 20)), ipc::MAX_CONNECTIONS);
        assert_eq!(connections_within(Some(1024)), 1024 - RESERVED_FDS as usize);
        assert_eq!(connections_within(Some(10)), 1);
    }

    fn with_user(user: Option<String>, group: Option<String>) -> Config {
        let mut cfg = Config::embedded_default();
        cfg.aisexec.user = user;
        cfg.aisexec.group = group;
        cfg
    }

    fn ids() -> (u32, u32) {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }

    #[test]
    fn the_user_and_group_the_executive_runs_as_are_accepted() {
        let (uid, gid) = ids();
        assert_eq!(check_user(&with_user(None, None)), Ok(()));
        assert_eq!(
            check_user(&with_user(Some(uid.to_string()), Some(gid.to_string()))),
            Ok(())
        );
        assert_eq!(check_user(&with_user(Some(uid.to_string()), None)), Ok(()));
        assert_eq!(check_user(&with_user(None, Some(gid.to_string()))), Ok(()));
        // By name too, when this account has one.
        let name = std::fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            });
        if let Some(name) = name {
            assert_eq!(check_user(&with_user(Some(name), None)), Ok(()));
        }
    }

    #[test]
    fn another_or_unknown_user_or_group_is_refused_naming_the_key() {
        let (uid, gid) = ids();
        let refused = |user: Option<String>, group: Option<String>, key: &str| {
            let e = check_user(&with_user(user.clone(), group.clone()))
                .expect_err(&format!("user {user:?} group {group:?} accepted"));
            assert!(e.contains(key), "{e:?} does not name {key}");
        };
        let no_such = "no-such-account-here".to_string();
        refused(Some(no_such.clone()), None, "aisexec.user");
        refused(Some(uid.wrapping_add(1).to_string()), None, "aisexec.user");
        refused(None, Some(no_such.clone()), "aisexec.group");
        refused(None, Some(gid.wrapping_add(1).to_string()), "aisexec.group");
        // The right user does not excuse a wrong group.
        refused(Some(uid.to_string()), Some(no_such), "aisexec.group");
    }

    #[test]
    fn ids_resolve_from_numbers_and_names() {
        assert_eq!(lookup_id("/etc/passwd", "0"), Some(0));
        assert_eq!(lookup_id("/etc/passwd", "root"), Some(0));
        assert_eq!(lookup_id("/etc/passwd", "no-such-user-here"), None);
    }
}
