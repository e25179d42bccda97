//! The daemon's side of the host status (`ais_exec::host`): what only the daemon knows,
//! handed to the registry when a service asks for it (the admin service, for `aisctl`).
//!
//! Node names are static and set once at start ([`node_names`]); addresses and counters
//! are copied on demand ([`refresh`]), never on the event loop's ordinary turns.

use std::collections::BTreeMap;

use ais_exec::host::totem_counters;
use ais_exec::{Counter, Registry};
use totem::{NodeId, Srp};

use crate::config::Config;
use crate::ipc::IpcStats;
use crate::transport::{Transport, TransportStats};

/// The nodelist's names, plus this node's host name when the nodelist does not name it.
pub fn node_names(cfg: &Config, me: NodeId) -> BTreeMap<NodeId, String> {
    let mut names: BTreeMap<NodeId, String> = cfg
        .node_names()
        .into_iter()
        .map(|(id, name)| (NodeId(id), name))
        .collect();
    if let Some(host) = host_name() {
        names.entry(me).or_insert(host);
    }
    names
}

/// The kernel's host name (`/proc/sys/kernel/hostname`), if it can be read and is not
/// empty.
fn host_name() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = text.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Hands the registry fresh addresses (every node the transport knows, this one
/// included) and counters (Totem's, then the transport's, then the IPC server's).
pub fn refresh(registry: &mut Registry, srp: &Srp, transport: &Transport, ipc: &IpcStats) {
    let addresses = transport
        .peers()
        .iter()
        .map(|(node, addr)| (*node, addr.to_string()))
        .collect();
    let mut counters = totem_counters(srp.stats());
    counters.extend(transport_counters(transport.stats()));
    counters.extend(ipc_counters(ipc));
    registry.refresh_host_status(addresses, counters);
}

fn transport_counters(s: &TransportStats) -> Vec<Counter> {
    let c = |name, value| Counter { name, value };
    vec![
        c("transport.datagrams_sent", s.datagrams_sent),
        c("transport.datagrams_received", s.datagrams_received),
        c("transport.send_errors", s.send_errors),
        c("transport.unknown_destination", s.unknown_destination),
        c("transport.bad_auth", s.bad_auth),
        c("transport.stranger_frames", s.stranger_frames),
    ]
}

fn ipc_counters(s: &IpcStats) -> Vec<Counter> {
    let c = |name, value| Counter { name, value };
    vec![
        c("ipc.accepted", s.accepted),
        c("ipc.refused", s.refused),
        c("ipc.refused_limit", s.refused_limit),
        c("ipc.refused_handshake", s.refused_handshake),
        c("ipc.closed_bad_frame", s.closed_bad_frame),
        c("ipc.closed_slow", s.closed_slow),
        c("ipc.behind", s.behind),
        c("ipc.requests", s.requests),
        c("ipc.peak_output", s.peak_output),
    ]
}
