//! A small in-process cluster for unit tests of services: every node runs a real
//! [`totem::Srp`] and a [`Registry`] on a lossless network with a fixed one-way delay and
//! a virtual clock, and the harness does what the daemon does with their outputs
//! (frames to the network, events to the registry, multicasts to Totem through a queue
//! that holds them while Totem's is full, everything else into [`TestNode::outputs`]).
//! Nodes can crash, restart and be partitioned. A fresh [`crate::HostStatus`] a service
//! asks for is served at once, with addresses `testkit:<n>` and the node's Totem counters.
//!
//! The thorough, seeded, lossy simulation lives in `ais-test`; this is for writing a
//! service's unit tests in a few lines.

use std::collections::{BTreeMap, VecDeque};

use ais_proto::{SaError, ServiceId};
use bytes::Bytes;
use log::warn;
use totem::{
    ConfChange, Dest, Event, Instant, McastError, MembState, NodeId, NodeSet, Params, Srp,
    TotemConfig,
};

use crate::api::Effect;
use crate::registry::Registry;
use crate::service::{ConnId, ConnInfo};

/// One-way delay of every frame.
pub const DELAY_US: u64 = 100;

/// One running node.
pub struct TestNode {
    pub srp: Srp,
    pub registry: Registry,
    /// Multicast effects Totem did not accept yet, in order.
    pending: VecDeque<Bytes>,
    /// Responses, callbacks and disconnects the registry produced, in order.
    pub outputs: Vec<Effect>,
    /// Configuration changes delivered, in order.
    pub confchgs: Vec<ConfChange>,
    /// Replaces the room passed to `lib_request` (to test flow control).
    pub room_override: Option<usize>,
}

/// The cluster; nodes are numbered `1..=size` and are `NodeId(1)..` to Totem.
pub struct TestCluster {
    now: Instant,
    params: Params,
    size: u32,
    setup: Box<dyn Fn(&mut Registry)>,
    nodes: BTreeMap<u32, TestNode>,
    /// Persisted ring sequence numbers, for restarts.
    ring_seq: BTreeMap<u32, u64>,
    /// (arrival, from, to, frame); a fixed delay keeps it sorted by arrival.
    in_flight: VecDeque<(Instant, u32, u32, Bytes)>,
    /// Partition group of each node (index `node - 1`).
    group: Vec<u32>,
    next_conn: u64,
}

impl TestCluster {
    /// `size` nodes started at time zero; `setup` registers the services of a node (it
    /// runs again on every restart).
    pub fn new(size: u32, setup: impl Fn(&mut Registry) + 'static) -> TestCluster {
        let totem = TotemConfig {
            token_ms: 200,
            ..TotemConfig::default()
        };
        TestCluster::with_totem(size, totem, setup)
    }

    /// As [`TestCluster::new`], with these Totem settings.
    pub fn with_totem(
        size: u32,
        totem: TotemConfig,
        setup: impl Fn(&mut Registry) + 'static,
    ) -> TestCluster {
        let params = totem
            .resolve(size as usize)
            .expect("test Totem configuration resolves");
        let mut c = TestCluster {
            now: Instant(0),
            params,
            size,
            setup: Box::new(setup),
            nodes: BTreeMap::new(),
            ring_seq: BTreeMap::new(),
            in_flight: VecDeque::new(),
            group: vec![0; size as usize],
            next_conn: 1,
        };
        for n in 1..=size {
            c.start(n);
        }
        c
    }

    fn start(&mut self, n: u32) {
        let seq = self.ring_seq.get(&n).copied().unwrap_or(0);
        let srp = Srp::new(self.params.clone(), NodeId(n), seq, self.now);
        let mut registry = Registry::new(NodeId(n));
        (self.setup)(&mut registry);
        self.nodes.insert(
            n,
            TestNode {
                srp,
                registry,
                pending: VecDeque::new(),
                outputs: Vec::new(),
                confchgs: Vec::new(),
                room_override: None,
            },
        );
        self.pump(n);
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn is_up(&self, n: u32) -> bool {
        self.nodes.contains_key(&n)
    }

    /// Node `n`; panics if it is down.
    pub fn node(&self, n: u32) -> &TestNode {
        self.nodes
            .get(&n)
            .unwrap_or_else(|| panic!("node {n} is down"))
    }

    pub fn node_mut(&mut self, n: u32) -> &mut TestNode {
        self.nodes
            .get_mut(&n)
            .unwrap_or_else(|| panic!("node {n} is down"))
    }

    pub fn registry(&self, n: u32) -> &Registry {
        &self.node(n).registry
    }

    /// Takes node `n`'s outputs so far.
    pub fn take_outputs(&mut self, n: u32) -> Vec<Effect> {
        std::mem::take(&mut self.node_mut(n).outputs)
    }

    /// Binds a new connection on node `n` to `service`.
    pub fn connect(
        &mut self,
        n: u32,
        service: ServiceId,
        info: ConnInfo,
    ) -> Result<ConnId, SaError> {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let r = self.node_mut(n).registry.lib_connect(conn, service, info);
        self.pump(n);
        r.map(|()| conn)
    }

    /// The room a daemon would pass to `lib_request` on node `n`.
    pub fn mcast_room(&self, n: u32) -> usize {
        let node = self.node(n);
        if let Some(room) = node.room_override {
            return room;
        }
        if !node.pending.is_empty() {
            return 0;
        }
        (self.params.send_queue_max_msgs as usize).saturating_sub(node.srp.send_queue_len())
    }

    /// Library request `id` on `conn` of node `n`, now.
    pub fn request(&mut self, n: u32, conn: ConnId, id: u32, body: Bytes) {
        let room = self.mcast_room(n);
        let now = self.now;
        self.node_mut(n)
            .registry
            .lib_request(now, conn, id, body, room);
        self.pump(n);
    }

    /// The library of `conn` on node `n` went away.
    pub fn disconnect(&mut self, n: u32, conn: ConnId) {
        self.node_mut(n).registry.lib_disconnect(conn);
        self.pump(n);
    }

    /// Node `n` stops at once, without a word; frames to it are lost.
    pub fn crash(&mut self, n: u32) {
        if let Some(node) = self.nodes.remove(&n) {
            self.ring_seq.insert(n, node.srp.ring_seq_high());
        }
    }

    /// A new incarnation of node `n` (fresh Totem and services). Panics if it is up.
    pub fn restart(&mut self, n: u32) {
        assert!(!self.is_up(n), "restart of node {n}, which is up");
        self.start(n);
    }

    /// Splits the nodes into groups; nodes not listed are isolated. Cuts frames in
    /// flight too.
    pub fn partition(&mut self, groups: &[&[u32]]) {
        for (i, g) in self.group.iter_mut().enumerate() {
            *g = self.size + 1 + i as u32;
        }
        for (gi, members) in groups.iter().enumerate() {
            for &n in *members {
                let slot = (n as usize).checked_sub(1);
                if let Some(g) = slot.and_then(|i| self.group.get_mut(i)) {
                    *g = gi as u32;
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    fn connected(&self, a: u32, b: u32) -> bool {
        let group = |n: u32| (n as usize).checked_sub(1).and_then(|i| self.group.get(i));
        a == b || (group(a).is_some() && group(a) == group(b))
    }

    /// Does what the daemon does after an input to node `n`, until nothing moves.
    fn pump(&mut self, n: u32) {
        let size = self.size;
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&n) else {
            return;
        };
        loop {
            let mut moved = false;
            while let Some(tx) = node.srp.poll_transmit(now) {
                moved = true;
                let at = now.plus_micros(DELAY_US);
                match tx.dest {
                    Dest::Unicast(to) => self.in_flight.push_back((at, n, to.0, tx.data)),
                    Dest::Multicast => {
                        for to in (1..=size).filter(|&to| to != n) {
                            self.in_flight.push_back((at, n, to, tx.data.clone()));
                        }
                    }
                }
            }
            while let Some(ev) = node.srp.poll_event() {
                moved = true;
                if let Event::ConfChange(c) = &ev {
                    node.confchgs.push(c.clone());
                }
                node.registry.handle_event(ev);
            }
            if node.registry.host_status_wanted() {
                moved = true;
                // What a daemon's transport would know: every node of the cluster, at
                // an address naming it.
                let addresses = (1..=size)
                    .map(|m| (NodeId(m), format!("testkit:{m}")))
                    .collect();
                let counters = crate::host::totem_counters(node.srp.stats());
                node.registry.refresh_host_status(addresses, counters);
            }
            while let Some(effect) = node.registry.poll_effect() {
                moved = true;
                match effect {
                    Effect::Mcast { msg, .. } => node.pending.push_back(msg),
                    other => node.outputs.push(other),
                }
            }
            while let Some(msg) = node.pending.front() {
                match node.srp.mcast(msg.clone()) {
                    Ok(()) => {}
                    Err(McastError::QueueFull) => break,
                    Err(McastError::TooLarge) => {
                        warn!(target: "exec", "testkit: message too large for Totem, dropped")
                    }
                }
                node.pending.pop_front();
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    /// Performs the earliest pending input; false if there is none.
    pub fn step(&mut self) -> bool {
        let timer = self
            .nodes
            .iter()
            .filter_map(|(&n, node)| {
                let t = match (node.srp.poll_timeout(), node.registry.poll_timeout()) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b)?,
                };
                Some((t, n))
            })
            .min();
        let packet = self.in_flight.front().map(|p| p.0);
        match (packet, timer) {
            (Some(p), t) if !matches!(t, Some((t, _)) if t < p) => {
                let Some((at, from, to, data)) = self.in_flight.pop_front() else {
                    return false;
                };
                self.now = self.now.max(at);
                if self.connected(from, to) {
                    if let Some(node) = self.nodes.get_mut(&to) {
                        node.srp.handle_datagram(at, data);
                        self.pump(to);
                    }
                }
                true
            }
            (_, Some((t, n))) => {
                self.now = self.now.max(t);
                let now = self.now;
                if let Some(node) = self.nodes.get_mut(&n) {
                    node.srp.handle_timeout(now);
                    node.registry.handle_timeout(now);
                }
                self.pump(n);
                true
            }
            _ => false,
        }
    }

    /// Runs until `done` holds (checked before every step) or `max_ms` of virtual time
    /// passed; returns whether `done` held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&TestCluster) -> bool) -> bool {
        let end = self.now.plus_micros(max_ms * 1000);
        while self.now <= end {
            if done(self) {
                return true;
            }
            if !self.step() {
                break;
            }
        }
        done(self)
    }

    /// Runs `ms` milliseconds of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now.plus_micros(ms * 1000);
        self.run_until(ms + 1, |c| c.now >= end);
    }

    /// `nodes` are up, operational on one ring of exactly them, synced, with nothing
    /// left to send.
    pub fn stable(&self, nodes: &[u32]) -> bool {
        let want: NodeSet = nodes.iter().map(|&n| NodeId(n)).collect();
        let mut ring = None;
        for &n in nodes {
            let Some(node) = self.nodes.get(&n) else {
                return false;
            };
            if node.srp.state() != MembState::Operational
                || *node.srp.members() != want
                || !node.registry.is_synced()
                || node.registry.ring_id() != Some(node.srp.ring_id())
                || !node.pending.is_empty()
                || node.srp.send_queue_len() != 0
            {
                return false;
            }
            match ring {
                None => ring = Some(node.srp.ring_id()),
                Some(r) if r != node.srp.ring_id() => return false,
                Some(_) => {}
            }
        }
        !nodes.is_empty()
    }

    /// Runs until [`TestCluster::stable`] for `nodes`, then 50 ms more for the last
    /// deliveries to arrive everywhere; false if not stable within `max_ms`.
    pub fn settle(&mut self, nodes: &[u32], max_ms: u64) -> bool {
        let ok = self.run_until(max_ms, |c| c.stable(nodes));
        self.run_for(50);
        ok && self.stable(nodes)
    }
}
