//! Facts about this node that only the daemon knows: node names from the configuration,
//! where the transport reaches each node, and the protocol's and transport's counters.
//!
//! Services stay sans-IO, so they cannot ask the transport or Totem themselves. Instead
//! the registry keeps a [`HostStatus`] snapshot that services read through
//! [`crate::Api::host_status`]. Names are static: the daemon sets them once at start
//! ([`crate::Registry::set_node_names`]). Addresses and counters change all the time,
//! and copying them on every turn of the event loop would tax the hot path for a query
//! an operator makes now and then; so they are refreshed on demand: a service that needs
//! them fresh calls [`crate::Api::want_host_status`], the daemon sees
//! [`crate::Registry::host_status_wanted`] after its turn, hands a fresh snapshot to
//! [`crate::Registry::refresh_host_status`], and the registry calls the waiting
//! services' [`crate::Service::host_status`] hook, where they answer.
//!
//! One table is not the daemon's: [`HostStatus::announced_names`], the names nodes gave
//! themselves. Every node announces its own name to the others through CLM, so without
//! a nodelist the configuration names this node alone while CLM knows every member's
//! name. CLM fills the table at each view it installs ([`crate::Api::set_announced_names`])
//! and other services read it with the configured names ([`HostStatus::name_of`]): they
//! keep no dependency on CLM (services know only the core), and the core only holds
//! the table.
//!
//! None of this may steer an executive handler: it is this node's snapshot for
//! answering people and tools, not state agreed in the total order.

use std::collections::BTreeMap;

use totem::NodeId;

/// One counter: a stable dotted name (`totem.frames_sent`) and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    pub name: &'static str,
    pub value: u64,
}

/// The snapshot; see the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostStatus {
    /// Node names: the configuration's nodelist, and this node's own name (its nodelist
    /// name, else the host name). Static.
    pub names: BTreeMap<NodeId, String>,
    /// The names nodes announced for themselves, as CLM replicated them (the current
    /// view's members and the nodes it still remembers); replaced at each view.
    pub announced_names: BTreeMap<NodeId, String>,
    /// Where the transport reaches each node it knows (`ip:port`), this one included.
    /// Refreshed on demand.
    pub addresses: BTreeMap<NodeId, String>,
    /// Totem's and the transport's counters, in a fixed order. Refreshed on demand.
    pub counters: Vec<Counter>,
}

impl HostStatus {
    /// The configured name of `node`, else the name it announced.
    pub fn name_of(&self, node: NodeId) -> Option<&str> {
        self.names
            .get(&node)
            .or_else(|| self.announced_names.get(&node))
            .map(String::as_str)
    }

    pub fn address_of(&self, node: NodeId) -> Option<&str> {
        self.addresses.get(&node).map(String::as_str)
    }
}

/// Totem's counters under their stable names, for a [`HostStatus`]. The daemon and the
/// testkit both use it, so the names cannot drift apart.
pub fn totem_counters(s: &totem::Stats) -> Vec<Counter> {
    let c = |name, value| Counter { name, value };
    vec![
        c("totem.frames_sent", s.frames_sent),
        c("totem.frames_received", s.frames_received),
        c("totem.bad_frames", s.bad_frames),
        c("totem.retransmits", s.retransmits),
        // One token per rotation of the ring passes through this node.
        c("totem.token_rotations", s.tokens_received),
        c("totem.token_retransmits", s.token_retransmits),
        c("totem.token_lingers", s.token_lingers),
        c("totem.token_wants", s.token_wants),
        c(
            "totem.token_waits_for_receivers",
            s.token_waits_for_receivers,
        ),
        c("totem.mcast_frames", s.mcast_frames),
        c("totem.messages_delivered", s.messages_delivered),
        c("totem.token_losses", s.token_losses),
        c("totem.configurations", s.configurations),
    ]
}
