//! The harness: K nodes running the real [`totem::Srp`] on the simulated [`Net`], driven
//! by a virtual clock, with every event checked as it happens.
//!
//! Time only moves when [`Cluster::step`] takes the earliest thing due: the next packet
//! arrival, the earliest protocol timer, or the end of a leaving node's grace period
//! (at equal times: packets first, then timers in node order). Each input is followed by
//! draining the node's outputs: frames into the network, events into the trace and the
//! checker, and its next timer. Nothing else in a run is random except what the seed
//! draws, so a seed replays exactly.
//!
//! Nodes are numbered `1..=K` and are `NodeId(1)..=NodeId(K)` to Totem. Each node has
//! incarnations `1, 2, ...`: a restart is a new `Srp`, started with the ring sequence
//! number the previous incarnation last reported (the daemon persists it).
//!
//! Scenario tests drive it directly:
//!
//! ```no_run
//! use ais_test::{profile, Cluster};
//! let mut c = Cluster::new(1, 3, profile::fast());
//! assert!(c.run_until(|c| c.one_ring(&[1, 2, 3]), 10_000));
//! c.partition(&[&[1, 2], &[3]]);
//! assert!(c.run_until(|c| c.one_ring(&[1, 2]) && c.one_ring(&[3]), 10_000));
//! c.heal();
//! let id = c.send_numbered(3, 100).unwrap();
//! assert!(c.run_until(|c| c.one_ring(&[1, 2, 3]), 10_000));
//! c.run_for(1000);
//! c.check().unwrap();
//! ```

use std::cell::Cell;
use std::fmt::Write as _;

use bytes::Bytes;
use totem::{
    ConfChange, Dest, Event, Instant, McastError, MembState, NodeId, NodeSet, Params, Srp,
    TotemConfig,
};

use crate::checker::{fmt_time, Checker, IncEnd, Property, Violation};
use crate::net::{Fate, Net, NetStats};
use crate::rng::Rng;
use crate::trace::{Fnv64, Payload, TraceEntry, TraceEvent};
use crate::workload::{self, MsgId};

/// How long a node keeps running after [`Cluster::leave`] before it is stopped: enough
/// for its leave announcement to go out and be retransmitted once or twice.
pub const LEAVE_GRACE_US: u64 = 20_000;

/// Steps at one virtual instant after which the run is declared livelocked (a timer
/// that keeps firing without moving, or a packet storm with no delay).
const LIVELOCK_STEPS: u64 = 1_000_000;

/// Salt so the network's stream differs from streams a scenario draws from the same seed.
const NET_SALT: u64 = 0x6E65_7477_6F72_6B21;

thread_local! {
    static LOG_CONTEXT: Cell<Option<(Instant, u32, u32)>> = const { Cell::new(None) };
}

/// The (virtual time, node, incarnation) the simulator is running on this thread right
/// now, for log formatters: Totem's log lines carry no node or time of their own.
pub fn log_context() -> Option<(Instant, u32, u32)> {
    LOG_CONTEXT.with(|c| c.get())
}

fn enter(now: Instant, node: u32, inc: u32) {
    LOG_CONTEXT.with(|c| c.set(Some((now, node, inc))));
}

/// Why [`Cluster::send_numbered`] sent nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    NodeDown,
    Mcast(McastError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NodeDown => f.write_str("node is down"),
            SendError::Mcast(e) => write!(f, "mcast refused: {e}"),
        }
    }
}

impl std::error::Error for SendError {}

struct Node {
    srp: Option<Srp>,
    /// Current (or, when down, last) incarnation; 0 before the first start.
    incarnation: u32,
    /// What the daemon would have persisted: the latest `ring_seq_high()`.
    ring_seq: u64,
    /// Cached `poll_timeout()`, refreshed after every input.
    timeout: Option<Instant>,
    /// Set after `leave()`: when to stop the node.
    stop_at: Option<Instant>,
    /// Next workload counter of the current incarnation.
    next_counter: u64,
    /// One trace per incarnation (index `incarnation - 1`).
    traces: Vec<Vec<TraceEntry>>,
}

/// Whether `t` comes strictly before the best candidate so far (ties keep the earlier one).
fn earlier(t: Instant, best: Option<(Instant, Action)>) -> bool {
    match best {
        None => true,
        Some((b, _)) => t < b,
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Packet,
    Timeout(usize),
    Stop(usize),
}

/// A simulated cluster; see the module documentation.
pub struct Cluster {
    seed: u64,
    cfg: TotemConfig,
    params: Params,
    now: Instant,
    nodes: Vec<Node>,
    net: Net,
    checker: Checker,
    hash: Fnv64,
    verbose: bool,
    steps: u64,
    last_step_at: Instant,
    steps_at_same_instant: u64,
}

impl Cluster {
    /// `nodes` nodes, all started at time zero, on a network with a 200 µs delay and no
    /// faults. Panics if `cfg` does not resolve for this many nodes.
    pub fn new(seed: u64, nodes: u32, cfg: TotemConfig) -> Cluster {
        let mut c = Cluster::new_down(seed, nodes, cfg);
        for n in 1..=nodes {
            c.start(n);
        }
        c
    }

    /// Like [`Cluster::new`] but with every node down; [`Cluster::restart`] starts one
    /// (as its incarnation 1).
    pub fn new_down(seed: u64, nodes: u32, cfg: TotemConfig) -> Cluster {
        assert!(nodes >= 1, "a cluster needs at least one node");
        let params = match cfg.resolve(nodes as usize) {
            Ok(p) => p,
            Err(e) => panic!("Totem configuration rejected for {nodes} nodes: {e:?}"),
        };
        Cluster {
            seed,
            cfg,
            params,
            now: Instant(0),
            nodes: (0..nodes)
                .map(|_| Node {
                    srp: None,
                    incarnation: 0,
                    ring_seq: 0,
                    timeout: None,
                    stop_at: None,
                    next_counter: 0,
                    traces: Vec::new(),
                })
                .collect(),
            net: Net::new(nodes, Rng::new(seed ^ NET_SALT)),
            checker: Checker::new(seed),
            hash: Fnv64::default(),
            verbose: false,
            steps: 0,
            last_step_at: Instant(0),
            steps_at_same_instant: 0,
        }
    }

    // ----- queries -----

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of nodes (up or down).
    pub fn size(&self) -> u32 {
        self.nodes.len() as u32
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn config(&self) -> &TotemConfig {
        &self.cfg
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    fn node(&self, n: u32) -> &Node {
        assert!(
            n >= 1 && n as usize <= self.nodes.len(),
            "no node {n} in a cluster of {}",
            self.nodes.len()
        );
        &self.nodes[n as usize - 1]
    }

    /// The running protocol instance of node `n`, if it is up.
    pub fn srp(&self, n: u32) -> Option<&Srp> {
        self.node(n).srp.as_ref()
    }

    /// Up: running, including during the grace period after `leave`.
    pub fn is_up(&self, n: u32) -> bool {
        self.node(n).srp.is_some()
    }

    /// Up and not leaving.
    pub fn is_member_candidate(&self, n: u32) -> bool {
        let node = self.node(n);
        node.srp.is_some() && node.stop_at.is_none()
    }

    /// Current incarnation of node `n` (the last one if down; 0 if never started).
    pub fn incarnation(&self, n: u32) -> u32 {
        self.node(n).incarnation
    }

    /// Everything recorded for `n`#`inc`.
    pub fn trace(&self, n: u32, inc: u32) -> &[TraceEntry] {
        match self.node(n).traces.get(inc.wrapping_sub(1) as usize) {
            Some(t) => t,
            None => &[],
        }
    }

    fn current_trace(&self, n: u32) -> &[TraceEntry] {
        self.trace(n, self.incarnation(n))
    }

    /// Messages delivered by the current (or last) incarnation of `n`, in order.
    pub fn delivered(&self, n: u32) -> Vec<(NodeId, Bytes)> {
        self.current_trace(n)
            .iter()
            .filter_map(|e| match &e.event {
                TraceEvent::Deliver { origin, payload } => Some((*origin, payload.bytes())),
                _ => None,
            })
            .collect()
    }

    /// Workload messages delivered by the current (or last) incarnation of `n`, in order.
    pub fn delivered_ids(&self, n: u32) -> Vec<MsgId> {
        self.current_trace(n)
            .iter()
            .filter_map(|e| match &e.event {
                TraceEvent::Deliver {
                    payload: Payload::Workload { id, .. },
                    ..
                } => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Configuration changes of the current (or last) incarnation of `n`, in order.
    pub fn confchgs(&self, n: u32) -> Vec<ConfChange> {
        self.current_trace(n)
            .iter()
            .filter_map(|e| match &e.event {
                TraceEvent::ConfChange(cc) => Some(cc.clone()),
                _ => None,
            })
            .collect()
    }

    /// All of `nodes` are up, Operational, on the same ring, whose members are exactly
    /// `nodes`.
    pub fn one_ring(&self, nodes: &[u32]) -> bool {
        let want: NodeSet = nodes.iter().map(|&n| NodeId(n)).collect();
        let mut ring = None;
        for &n in nodes {
            let Some(srp) = self.srp(n) else { return false };
            if srp.state() != MembState::Operational || *srp.members() != want {
                return false;
            }
            match ring {
                None => ring = Some(srp.ring_id()),
                Some(r) if r != srp.ring_id() => return false,
                Some(_) => {}
            }
        }
        !nodes.is_empty()
    }

    /// Every node is up (not leaving) and they all form one ring.
    pub fn all_one_ring(&self) -> bool {
        let all: Vec<u32> = (1..=self.size()).collect();
        all.iter().all(|&n| self.is_member_candidate(n)) && self.one_ring(&all)
    }

    /// Messages accepted by the current incarnations of up nodes and not yet delivered back
    /// to them.
    pub fn pending_self_delivery(&self) -> usize {
        (1..=self.size())
            .filter(|&n| self.is_up(n))
            .map(|n| self.checker.pending_self(n, self.incarnation(n)))
            .sum()
    }

    /// (heal-phase message, up node) pairs not delivered yet.
    pub fn pending_heal_delivery(&self) -> usize {
        (1..=self.size())
            .filter(|&n| self.is_up(n))
            .map(|n| self.checker.pending_heal(n, self.incarnation(n)))
            .sum()
    }

    /// The end state of a healed run: one ring of all nodes, every accepted message back at
    /// its (live) sender, every heal-phase message at every node.
    pub fn converged(&self) -> bool {
        self.all_one_ring()
            && self.pending_self_delivery() == 0
            && self.pending_heal_delivery() == 0
    }

    /// One line per node: up or down, protocol state, ring, what it still misses.
    pub fn status(&self) -> String {
        let mut s = String::new();
        for n in 1..=self.size() {
            let inc = self.incarnation(n);
            match self.srp(n) {
                None => {
                    let _ = writeln!(s, "  n{n}#{inc}: down");
                }
                Some(srp) => {
                    let _ = write!(
                        s,
                        "  n{n}#{inc}: {:?} ring {} members {}{}",
                        srp.state(),
                        srp.ring_id(),
                        srp.members(),
                        if self.node(n).stop_at.is_some() {
                            " (leaving)"
                        } else {
                            ""
                        }
                    );
                    let own = self.checker.pending_self(n, inc);
                    if own > 0 {
                        let _ = write!(
                            s,
                            "; {own} own messages undelivered: {}",
                            self.checker.missing_self(n, inc)
                        );
                    }
                    let heal = self.checker.pending_heal(n, inc);
                    if heal > 0 {
                        let _ = write!(
                            s,
                            "; {heal} heal-phase messages undelivered: {}",
                            self.checker.missing_heal(n, inc)
                        );
                    }
                    let st = srp.stats();
                    let _ = writeln!(
                        s,
                        "; tokens {} token losses {} retransmits {} configurations {}",
                        st.tokens_received, st.token_losses, st.retransmits, st.configurations
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "  partitions {:?}, {} packets in flight",
            self.net.groups(),
            self.net.in_flight()
        );
        s
    }

    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// The first violation so far, if any.
    pub fn violation(&self) -> Option<&Violation> {
        self.checker.violation()
    }

    /// Ends the run's checking: the first violation seen, else the end-of-run checks
    /// (self-delivery for incarnations still up). Call it once the cluster is quiet.
    pub fn check(&mut self) -> Result<(), Violation> {
        self.checker.finish(self.now)
    }

    /// From now on, messages accepted are heal-phase messages: every node must deliver
    /// them (see [`Cluster::pending_heal_delivery`]).
    pub fn begin_heal_phase(&mut self) {
        self.checker.begin_heal_phase();
        self.note("heal-phase messages from here on".to_string());
    }

    /// Records a violation found by the caller (a scenario or the swarm).
    pub fn report(&mut self, property: Property, detail: String) {
        self.checker.report(property, self.now, detail);
    }

    /// FNV-1a over every recorded event with its time, node and incarnation.
    pub fn trace_hash(&self) -> u64 {
        self.hash.finish()
    }

    /// Deliveries so far, all nodes.
    pub fn deliveries(&self) -> u64 {
        self.checker.deliveries()
    }

    /// Regular configurations installed so far, summed over nodes.
    pub fn configurations(&self) -> u64 {
        self.checker.configurations()
    }

    pub fn net_stats(&self) -> &NetStats {
        &self.net.stats
    }

    /// Inputs fed so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    // ----- network control -----

    /// Splits the nodes into groups (node numbers); nodes not listed are isolated.
    /// Applies to packets already in flight too.
    pub fn partition(&mut self, groups: &[&[u32]]) {
        self.net.partition(groups);
        self.note(format!("partition {:?}", self.net.groups()));
    }

    pub fn heal(&mut self) {
        self.net.heal();
        self.note("heal partitions".to_string());
    }

    /// Probability that one copy of a frame is lost.
    pub fn set_loss(&mut self, p: f64) {
        self.net.set_loss(p);
        self.note(format!("loss {p:.3}"));
    }

    /// Probability that one copy of a frame arrives twice.
    pub fn set_dup(&mut self, p: f64) {
        self.net.set_dup(p);
        self.note(format!("duplication {p:.3}"));
    }

    /// Extra random delay per frame, uniform in `0..=us` (reorders frames).
    pub fn set_jitter_us(&mut self, us: u64) {
        self.net.set_jitter_us(us);
        self.note(format!("jitter {us} us"));
    }

    /// Fixed delay per frame (at least 1 µs).
    pub fn set_delay_us(&mut self, us: u64) {
        self.net.set_delay_us(us);
        self.note(format!("delay {us} us"));
    }

    /// The network's base one-way delay, microseconds (before jitter and any filter delay).
    pub fn delay_us(&self) -> u64 {
        self.net.delay_us()
    }

    /// Gives `filter` the fate of every frame a node sends to another (see
    /// [`crate::net::Filter`]): to drop or delay chosen frames, or to watch the traffic.
    /// Replaces any previous filter.
    pub fn set_filter(&mut self, filter: impl FnMut(Instant, u32, u32, &Bytes) -> Fate + 'static) {
        self.net.set_filter(Some(Box::new(filter)));
        self.note("filter installed".to_string());
    }

    /// Removes the filter [`Cluster::set_filter`] installed.
    pub fn clear_filter(&mut self) {
        self.net.set_filter(None);
        self.note("filter removed".to_string());
    }

    /// Prints every recorded event (and the harness's actions) as it happens.
    pub fn set_verbose(&mut self, on: bool) {
        self.verbose = on;
    }

    /// Prints `what` with the current time when verbose.
    pub fn note(&self, what: String) {
        if self.verbose {
            println!("{} -- {what}", fmt_time(self.now));
        }
    }

    // ----- node control -----

    fn start(&mut self, n: u32) {
        let now = self.now;
        let node = &mut self.nodes[n as usize - 1];
        node.incarnation += 1;
        node.next_counter = 0;
        node.stop_at = None;
        node.traces.push(Vec::new());
        let inc = node.incarnation;
        enter(now, n, inc);
        node.srp = Some(Srp::new(self.params.clone(), NodeId(n), node.ring_seq, now));
        let ring_seq = node.ring_seq;
        self.checker.start(n, inc);
        self.push_entry(n, TraceEvent::Start { ring_seq });
        self.drain(n as usize - 1);
    }

    /// Stops node `n` as if killed: no goodbye, its in-flight frames still arrive. No-op
    /// if it is down.
    pub fn crash(&mut self, n: u32) {
        if !self.is_up(n) {
            return;
        }
        self.stop(n, IncEnd::Crashed);
    }

    fn stop(&mut self, n: u32, how: IncEnd) {
        let node = &mut self.nodes[n as usize - 1];
        let srp = node.srp.take().expect("stop of a node that is down");
        node.ring_seq = srp.ring_seq_high();
        node.timeout = None;
        node.stop_at = None;
        let inc = node.incarnation;
        self.checker.end(n, inc, how);
        let ev = match how {
            IncEnd::Crashed => TraceEvent::Crash,
            IncEnd::Left => TraceEvent::Stop,
        };
        self.push_entry(n, ev);
    }

    /// Starts a new incarnation of node `n` with its persisted ring sequence number. A
    /// node still in its leave grace period is stopped first. Panics if `n` is up.
    pub fn restart(&mut self, n: u32) {
        if self.node(n).stop_at.is_some() {
            self.stop(n, IncEnd::Left);
        }
        assert!(!self.is_up(n), "restart of node {n}, which is up");
        self.start(n);
    }

    /// Graceful leave: `Srp::leave`, then the node keeps running for
    /// [`LEAVE_GRACE_US`] and is stopped. No-op if it is down or already leaving.
    pub fn leave(&mut self, n: u32) {
        if !self.is_member_candidate(n) {
            return;
        }
        let now = self.now;
        let i = n as usize - 1;
        self.push_entry(n, TraceEvent::Leave);
        let node = &mut self.nodes[i];
        enter(now, n, node.incarnation);
        node.srp.as_mut().expect("up").leave(now);
        node.stop_at = Some(now.plus_micros(LEAVE_GRACE_US));
        self.drain(i);
    }

    /// Multicasts `msg` from node `n` as is. The checker cannot identify such messages,
    /// so it only checks (f) for them; prefer [`Cluster::send_numbered`]. Panics if `n`
    /// is down.
    pub fn mcast(&mut self, n: u32, msg: Bytes) -> Result<(), McastError> {
        let now = self.now;
        let i = n as usize - 1;
        let inc = self.incarnation(n);
        let srp = self.nodes[i]
            .srp
            .as_mut()
            .unwrap_or_else(|| panic!("mcast on node {n}, which is down"));
        enter(now, n, inc);
        let r = srp.mcast(msg.clone());
        if r.is_ok() {
            let payload = match self.checker.accepted(n, inc, &msg, now) {
                Some(id) => Payload::Workload {
                    id,
                    len: msg.len() as u32,
                },
                None => Payload::Raw(msg),
            };
            self.push_entry(n, TraceEvent::Mcast { payload });
        }
        self.drain(i);
        r
    }

    /// Tells node `n`'s Totem whether its applications are behind on their deliveries
    /// (`Srp::set_receivers_behind`), as the executive does from its clients' unread
    /// output. Nothing if `n` is down.
    pub fn set_receivers_behind(&mut self, n: u32, behind: bool) {
        let now = self.now;
        let i = n as usize - 1;
        let inc = self.incarnation(n);
        let Some(srp) = self.nodes[i].srp.as_mut() else {
            return;
        };
        enter(now, n, inc);
        srp.set_receivers_behind(now, behind);
        self.drain(i);
    }

    /// Multicasts the next numbered, self-checking workload message of `len` bytes (at
    /// least [`workload::HEADER_LEN`]) from node `n`.
    pub fn send_numbered(&mut self, n: u32, len: usize) -> Result<MsgId, SendError> {
        let now = self.now;
        let i = n as usize - 1;
        let inc = self.incarnation(n);
        let node = &mut self.nodes[i];
        let Some(srp) = node.srp.as_mut() else {
            return Err(SendError::NodeDown);
        };
        let id = MsgId {
            origin: n,
            incarnation: inc,
            counter: node.next_counter,
        };
        let msg = workload::build(id, len);
        enter(now, n, inc);
        match srp.mcast(msg.clone()) {
            Ok(()) => {
                node.next_counter += 1;
                self.checker.accepted(n, inc, &msg, now);
                self.push_entry(
                    n,
                    TraceEvent::Mcast {
                        payload: Payload::Workload {
                            id,
                            len: msg.len() as u32,
                        },
                    },
                );
                self.drain(i);
                Ok(id)
            }
            Err(e) => {
                self.drain(i);
                Err(SendError::Mcast(e))
            }
        }
    }

    // ----- running -----

    fn next_action(&self) -> Option<(Instant, Action)> {
        let mut best = self.net.next_arrival().map(|t| (t, Action::Packet));
        for (i, node) in self.nodes.iter().enumerate() {
            if node.srp.is_none() {
                continue;
            }
            if let Some(t) = node.timeout {
                if earlier(t, best) {
                    best = Some((t, Action::Timeout(i)));
                }
            }
            if let Some(t) = node.stop_at {
                if earlier(t, best) {
                    best = Some((t, Action::Stop(i)));
                }
            }
        }
        best
    }

    /// Performs the earliest pending input; false if nothing is pending at all.
    pub fn step(&mut self) -> bool {
        match self.next_action() {
            Some((t, action)) => {
                self.perform(t, action);
                true
            }
            None => false,
        }
    }

    fn perform(&mut self, t: Instant, action: Action) {
        if t > self.now {
            self.now = t;
        }
        let now = self.now;
        self.steps += 1;
        if now == self.last_step_at {
            self.steps_at_same_instant += 1;
            if self.steps_at_same_instant == LIVELOCK_STEPS {
                let status = self.status();
                self.checker.report(
                    Property::Harness,
                    now,
                    format!("livelock: {LIVELOCK_STEPS} steps without virtual time moving; last action {action:?}\n{status}"),
                );
            }
        } else {
            self.last_step_at = now;
            self.steps_at_same_instant = 0;
        }
        match action {
            Action::Packet => {
                let p = self.net.pop().expect("a packet is due");
                if !self.net.connected(p.from, p.to) {
                    self.net.stats.partitioned += 1;
                    return;
                }
                let i = p.to as usize - 1;
                let node = &mut self.nodes[i];
                let inc = node.incarnation;
                let Some(srp) = node.srp.as_mut() else {
                    self.net.stats.to_down_node += 1;
                    return;
                };
                if p.self_incarnation.is_some_and(|s| s != inc) {
                    self.net.stats.to_down_node += 1;
                    return;
                }
                self.net.stats.delivered += 1;
                enter(now, p.to, inc);
                srp.handle_datagram(now, p.data);
                self.drain(i);
            }
            Action::Timeout(i) => {
                let node = &mut self.nodes[i];
                enter(now, i as u32 + 1, node.incarnation);
                node.srp
                    .as_mut()
                    .expect("timer of a node that is up")
                    .handle_timeout(now);
                self.drain(i);
            }
            Action::Stop(i) => self.stop(i as u32 + 1, IncEnd::Left),
        }
    }

    /// Drains node `i`'s outputs: frames into the network, events into the checker and
    /// the trace; then refreshes its timer and persisted ring sequence number.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        let from = i as u32 + 1;
        let k = self.nodes.len() as u32;
        let node = &mut self.nodes[i];
        let inc = node.incarnation;
        let Some(srp) = node.srp.as_mut() else { return };
        while let Some(tx) = srp.poll_transmit(now) {
            if tx.data.len() > self.params.max_frame_len {
                self.checker.report(
                    Property::Harness,
                    now,
                    format!(
                        "node {from}#{inc} sent a {}-byte frame; max_frame_len is {}",
                        tx.data.len(),
                        self.params.max_frame_len
                    ),
                );
            }
            match tx.dest {
                Dest::Multicast => {
                    for to in (1..=k).filter(|&to| to != from) {
                        self.net.send(now, from, to, &tx.data);
                    }
                }
                Dest::Unicast(NodeId(to)) if to == from => {
                    self.net.send_self(now, from, inc, tx.data)
                }
                Dest::Unicast(NodeId(to)) if (1..=k).contains(&to) => {
                    self.net.send(now, from, to, &tx.data)
                }
                Dest::Unicast(to) => self.checker.report(
                    Property::Harness,
                    now,
                    format!("node {from}#{inc} sent a frame to node {to}, which does not exist"),
                ),
            }
        }
        while let Some(ev) = srp.poll_event() {
            let id = self.checker.record(from, inc, now, &ev);
            let event = match ev {
                Event::Deliver { origin, msg } => TraceEvent::Deliver {
                    origin,
                    payload: match id {
                        Some(id) => Payload::Workload {
                            id,
                            len: msg.len() as u32,
                        },
                        None => Payload::Raw(msg),
                    },
                },
                Event::ConfChange(cc) => TraceEvent::ConfChange(cc),
            };
            let entry = TraceEntry {
                at: now,
                node: from,
                incarnation: inc,
                event,
            };
            self.hash.add_entry(&entry);
            if self.verbose {
                println!("{entry}");
            }
            node.traces
                .last_mut()
                .expect("a started node has a trace")
                .push(entry);
        }
        node.timeout = srp.poll_timeout();
        node.ring_seq = srp.ring_seq_high();
    }

    fn push_entry(&mut self, n: u32, event: TraceEvent) {
        let node = &mut self.nodes[n as usize - 1];
        let entry = TraceEntry {
            at: self.now,
            node: n,
            incarnation: node.incarnation,
            event,
        };
        self.hash.add_entry(&entry);
        if self.verbose {
            println!("{entry}");
        }
        node.traces
            .last_mut()
            .expect("a started node has a trace")
            .push(entry);
    }

    /// Runs `ms` milliseconds of virtual time (stops early at the first violation).
    pub fn run_for(&mut self, ms: u64) {
        let deadline = self.now.plus_micros(ms.saturating_mul(1000));
        self.run_to(deadline, &mut |_| false);
    }

    /// Runs until `done` holds (checked before the first step and after every step) or
    /// `max_ms` of virtual time have passed or a violation was found; returns whether
    /// `done` held.
    pub fn run_until(&mut self, mut done: impl FnMut(&Cluster) -> bool, max_ms: u64) -> bool {
        if done(self) {
            return true;
        }
        let deadline = self.now.plus_micros(max_ms.saturating_mul(1000));
        self.run_to(deadline, &mut done)
    }

    fn run_to(&mut self, deadline: Instant, done: &mut dyn FnMut(&Cluster) -> bool) -> bool {
        while self.checker.violation().is_none() {
            match self.next_action() {
                Some((t, action)) if t <= deadline => {
                    self.perform(t, action);
                    if done(self) {
                        return true;
                    }
                }
                _ => break,
            }
        }
        if self.checker.violation().is_none() && self.now < deadline {
            self.now = deadline;
        }
        false
    }
}
