//! The extended virtual synchrony checker.
//!
//! It is fed, as they happen, every event every node incarnation emits, every message
//! `mcast` accepted, and every start and end of an incarnation; it checks each event when
//! it arrives (so the first violation is reported at the step that caused it) and
//! [`Checker::finish`] checks what can only be judged at the end of a run. Properties
//! (after Moser, Amir, Melliar-Smith and Agarwal, "Extended Virtual Synchrony", 1994):
//!
//! - (a) a ring id names one membership: equal regular ring ids ⇒ equal members, and a
//!   node's regular ring sequence numbers grow, across its restarts too;
//! - (b) a node is a member of every configuration it installs;
//! - (c) no message is delivered twice to one incarnation, and every workload message
//!   arrives intact and was accepted by `mcast` at its origin;
//! - (d) any two incarnations deliver the messages both delivered in the same order, and
//!   nobody delivers one sender's messages out of the order its `mcast` accepted them;
//! - (e) incarnations that install the same regular configuration C and then the same
//!   next regular configuration C' delivered the same set of messages in between;
//! - (f) a message is delivered only while the deliverer's current configuration holds
//!   its origin, and in the same configuration (same preceding regular ring) everywhere;
//! - (g) a message `mcast` accepted is delivered to its sender, unless that incarnation
//!   crashed or left (judged by [`Checker::finish`]); a sender that delivers one of its
//!   own messages has delivered all its earlier ones;
//! - (h) configuration sequence: a transitional configuration is followed by a regular one
//!   before anything else changes, every regular one is preceded by a transitional one,
//!   transitional members ⊆ old and new regular members, and `left` / `joined` are the
//!   differences from the configuration installed just before;
//! - (i) after healing, one ring of all nodes and every heal-phase message delivered
//!   everywhere (judged by the harness, reported as [`Property::Convergence`]).
//!
//! Order (d) is checked incrementally in O(deliverers of the message) per delivery: for
//! every pair of incarnations we keep the highest position, in the second's delivery
//! sequence, of a message both delivered. When a message becomes common to a pair, it is
//! last in the sequence of the one delivering it now, so it must also come after every
//! earlier common message in the other's sequence.

use std::collections::BTreeMap;
use std::fmt;

use totem::{ConfChange, ConfKind, Event, Instant, NodeId, NodeSet, RingId};

use crate::workload::{self, MsgId, Parsed};

/// The property a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Property {
    /// (a)
    SameRingSameMembers,
    /// (b)
    MemberOfOwnConfig,
    /// (c)
    DeliveredOnceIntact,
    /// (d)
    TotalOrder,
    /// (e)
    VirtualSynchrony,
    /// (f)
    SenderInConfig,
    /// (g)
    SelfDelivery,
    /// (h)
    ConfigSequence,
    /// (i)
    Convergence,
    /// The run itself went wrong: a panic, a livelock, an oversized frame, a frame to an
    /// unknown node, a legal message refused.
    Harness,
}

impl Property {
    pub fn label(self) -> &'static str {
        match self {
            Property::SameRingSameMembers => "(a) one ring id, one membership",
            Property::MemberOfOwnConfig => "(b) member of own configuration",
            Property::DeliveredOnceIntact => "(c) delivered once and intact",
            Property::TotalOrder => "(d) total order",
            Property::VirtualSynchrony => "(e) virtual synchrony",
            Property::SenderInConfig => "(f) delivered in the sender's configuration",
            Property::SelfDelivery => "(g) self-delivery",
            Property::ConfigSequence => "(h) configuration sequence",
            Property::Convergence => "(i) convergence after healing",
            Property::Harness => "harness",
        }
    }
}

/// A broken property, with enough context to find it in the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub at: Instant,
    pub property: Property,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} at {}: {}: {}",
            self.seed,
            fmt_time(self.at),
            self.property.label(),
            self.detail
        )
    }
}

impl std::error::Error for Violation {}

/// `12.345678s`.
pub fn fmt_time(t: Instant) -> String {
    format!("{}.{:06}s", t.0 / 1_000_000, t.0 % 1_000_000)
}

/// How an incarnation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncEnd {
    Crashed,
    /// Stopped after a graceful leave.
    Left,
}

struct Config {
    kind: ConfKind,
    members: NodeSet,
}

/// What the checker knows about one node incarnation.
struct Inc {
    node: u32,
    inc: u32,
    ended: Option<IncEnd>,
    /// The latest configuration installed, of either kind.
    current: Option<Config>,
    /// The latest regular configuration installed.
    regular: Option<(RingId, NodeSet)>,
    /// Members of a transitional configuration not yet followed by its regular one.
    in_transition: Option<NodeSet>,
    /// Workload messages delivered, in order (message indexes).
    seq: Vec<u32>,
    /// Message index → 1 + position in `seq`; 0 (or out of range) = not delivered.
    pos: Vec<u32>,
    /// Other incarnation index → 1 + the highest position, in that incarnation's `seq`,
    /// of a message both delivered; 0 = none yet.
    hi: Vec<u32>,
    /// Messages delivered since the latest regular configuration.
    since_regular: Vec<u32>,
    /// Messages this incarnation's `mcast` accepted.
    accepted: Vec<u32>,
    own_delivered: u32,
    heal_delivered: u32,
    /// Sender incarnation index → 1 + counter of the latest message delivered from it.
    fifo: Vec<u64>,
}

impl Inc {
    fn name(&self) -> String {
        format!("node {}#{}", self.node, self.inc)
    }

    fn delivered(&self, m: u32) -> bool {
        self.pos.get(m as usize).is_some_and(|&p| p != 0)
    }
}

struct Msg {
    id: MsgId,
    len: u32,
    /// Index of the incarnation whose `mcast` accepted it.
    sender: usize,
    heal: bool,
    /// Preceding regular ring of the first delivery (None: before any regular one).
    ring: Option<Option<RingId>>,
    /// (incarnation index, position in its sequence) of every delivery.
    deliveries: Vec<(u32, u32)>,
}

/// Result of [`Checker::record`] for a delivery: the workload message, if it was one and
/// arrived intact.
pub type Identified = Option<MsgId>;

pub struct Checker {
    seed: u64,
    incs: Vec<Inc>,
    inc_index: BTreeMap<(u32, u32), usize>,
    msgs: Vec<Msg>,
    msg_index: BTreeMap<MsgId, u32>,
    /// Regular ring id → its members and the incarnation that installed it first.
    rings: BTreeMap<RingId, (NodeSet, usize)>,
    /// Node → the last regular ring id any of its incarnations installed.
    node_last_ring: BTreeMap<u32, (RingId, usize)>,
    /// (C, C') → the set of messages the first incarnation to go from C to C' delivered.
    vs_sets: BTreeMap<(RingId, RingId), (usize, Vec<u32>)>,
    /// Some test multicast a message that is not a workload message, so foreign
    /// deliveries are expected (and checked only for (f)).
    foreign_sent: bool,
    heal_phase: bool,
    heal_msgs: u32,
    violation: Option<Violation>,
    deliveries: u64,
    configurations: u64,
}

impl Checker {
    pub fn new(seed: u64) -> Checker {
        Checker {
            seed,
            incs: Vec::new(),
            inc_index: BTreeMap::new(),
            msgs: Vec::new(),
            msg_index: BTreeMap::new(),
            rings: BTreeMap::new(),
            node_last_ring: BTreeMap::new(),
            vs_sets: BTreeMap::new(),
            foreign_sent: false,
            heal_phase: false,
            heal_msgs: 0,
            violation: None,
            deliveries: 0,
            configurations: 0,
        }
    }

    /// The first violation found, if any. Later ones are not recorded: they are usually
    /// consequences of the first.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    /// Deliveries seen (all incarnations, workload or not).
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    /// Regular configurations installed (all incarnations).
    pub fn configurations(&self) -> u64 {
        self.configurations
    }

    /// Workload messages accepted by `mcast`.
    pub fn messages_accepted(&self) -> usize {
        self.msgs.len()
    }

    /// Records a violation found by the harness or the checker (only the first is kept).
    pub fn report(&mut self, property: Property, at: Instant, detail: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                seed: self.seed,
                at,
                property,
                detail,
            });
        }
    }

    fn idx(&self, node: u32, inc: u32) -> usize {
        *self
            .inc_index
            .get(&(node, inc))
            .unwrap_or_else(|| panic!("checker: node {node}#{inc} was never started"))
    }

    /// A node incarnation starts (incarnations of a node are numbered 1, 2, ...).
    pub fn start(&mut self, node: u32, inc: u32) {
        let i = self.incs.len();
        let prev = self.inc_index.insert((node, inc), i);
        assert!(prev.is_none(), "checker: node {node}#{inc} started twice");
        self.incs.push(Inc {
            node,
            inc,
            ended: None,
            current: None,
            regular: None,
            in_transition: None,
            seq: Vec::new(),
            pos: Vec::new(),
            hi: Vec::new(),
            since_regular: Vec::new(),
            accepted: Vec::new(),
            own_delivered: 0,
            heal_delivered: 0,
            fifo: Vec::new(),
        });
    }

    pub fn end(&mut self, node: u32, inc: u32, how: IncEnd) {
        let i = self.idx(node, inc);
        self.incs[i].ended = Some(how);
    }

    /// From now on, accepted messages are heal-phase messages that every node must deliver.
    pub fn begin_heal_phase(&mut self) {
        self.heal_phase = true;
    }

    /// `mcast` on `node`#`inc` accepted `msg`. Returns its id if it is a workload message.
    pub fn accepted(&mut self, node: u32, inc: u32, msg: &[u8], now: Instant) -> Option<MsgId> {
        let sender = self.idx(node, inc);
        match workload::parse(msg) {
            Parsed::Intact(id) => {
                if id.origin != node || id.incarnation != inc {
                    panic!("checker: node {node}#{inc} sent workload message {id} built for another sender");
                }
                let m = self.msgs.len() as u32;
                if self.msg_index.insert(id, m).is_some() {
                    self.report(
                        Property::Harness,
                        now,
                        format!("workload message {id} accepted twice (was an earlier mcast refusal ignored?)"),
                    );
                    return Some(id);
                }
                self.msgs.push(Msg {
                    id,
                    len: msg.len() as u32,
                    sender,
                    heal: self.heal_phase,
                    ring: None,
                    deliveries: Vec::new(),
                });
                self.incs[sender].accepted.push(m);
                if self.heal_phase {
                    self.heal_msgs += 1;
                }
                Some(id)
            }
            Parsed::Foreign | Parsed::Corrupt(_) => {
                self.foreign_sent = true;
                None
            }
        }
    }

    /// Checks one event of `node`#`inc`. For a delivery, returns the workload message it
    /// was, if it was one and intact.
    pub fn record(&mut self, node: u32, inc: u32, now: Instant, ev: &Event) -> Identified {
        let a = self.idx(node, inc);
        match ev {
            Event::Deliver { origin, msg } => self.on_deliver(a, now, *origin, msg),
            Event::ConfChange(cc) => {
                self.on_confchg(a, now, cc);
                None
            }
        }
    }

    fn on_deliver(&mut self, a: usize, now: Instant, origin: NodeId, msg: &[u8]) -> Identified {
        self.deliveries += 1;
        let who = self.incs[a].name();
        match &self.incs[a].current {
            None => self.report(
                Property::SenderInConfig,
                now,
                format!("{who} delivered a message from node {origin} before installing any configuration"),
            ),
            Some(c) if !c.members.contains(origin) => {
                let kind = c.kind;
                let members = c.members.clone();
                self.report(
                    Property::SenderInConfig,
                    now,
                    format!(
                        "{who} delivered a message from node {origin} while its current {kind:?} configuration is {members}"
                    ),
                )
            }
            Some(_) => {}
        }
        let id = match workload::parse(msg) {
            Parsed::Intact(id) => id,
            Parsed::Corrupt(why) => {
                self.report(
                    Property::DeliveredOnceIntact,
                    now,
                    format!("{who} delivered a damaged message: {why}"),
                );
                return None;
            }
            Parsed::Foreign => {
                if !self.foreign_sent {
                    self.report(
                        Property::DeliveredOnceIntact,
                        now,
                        format!(
                            "{who} delivered {} bytes from node {origin} that are not a workload message, and none was sent",
                            msg.len()
                        ),
                    );
                }
                return None;
            }
        };
        if id.origin != origin.0 {
            self.report(
                Property::DeliveredOnceIntact,
                now,
                format!("{who} delivered {id} as coming from node {origin}"),
            );
            return None;
        }
        let Some(&m) = self.msg_index.get(&id) else {
            self.report(
                Property::DeliveredOnceIntact,
                now,
                format!("{who} delivered {id}, which no mcast accepted"),
            );
            return None;
        };
        if self.msgs[m as usize].len as usize != msg.len() {
            let sent = self.msgs[m as usize].len;
            self.report(
                Property::DeliveredOnceIntact,
                now,
                format!(
                    "{who} delivered {id} with {} bytes, sent with {sent}",
                    msg.len()
                ),
            );
            return None;
        }
        if self.incs[a].delivered(m) {
            self.report(
                Property::DeliveredOnceIntact,
                now,
                format!("{who} delivered {id} twice"),
            );
            return Some(id);
        }

        // (f) the same configuration everywhere.
        let ring_here = self.incs[a].regular.as_ref().map(|r| r.0);
        match self.msgs[m as usize].ring {
            None => self.msgs[m as usize].ring = Some(ring_here),
            Some(first) if first != ring_here => {
                let (b, _) = self.msgs[m as usize].deliveries[0];
                let other = self.incs[b as usize].name();
                self.report(
                    Property::SenderInConfig,
                    now,
                    format!(
                        "{id} delivered by {other} in the configuration of ring {} but by {who} in ring {}",
                        ring_name(first),
                        ring_name(ring_here)
                    ),
                );
            }
            Some(_) => {}
        }

        // (d) per sender FIFO: Totem sends a node's messages in the order mcast accepted
        // them, so nobody delivers them out of that order (gaps are allowed: a receiver may
        // join late or part early).
        let sender = self.msgs[m as usize].sender;
        let last = self.incs[a].fifo.get(sender).copied().unwrap_or(0);
        if last > id.counter {
            let prev = MsgId {
                counter: last - 1,
                ..id
            };
            self.report(
                Property::TotalOrder,
                now,
                format!("{who} delivered {id} after {prev}: not in the order its sender's mcast accepted them"),
            );
        }
        if self.incs[a].fifo.len() <= sender {
            self.incs[a].fifo.resize(sender + 1, 0);
        }
        self.incs[a].fifo[sender] = id.counter + 1;
        // (g) a sender delivers its own messages without gaps.
        if sender == a && id.counter != u64::from(self.incs[a].own_delivered) {
            let missing = self.describe(
                &self.incs[a].accepted[self.incs[a].own_delivered as usize..id.counter as usize],
            );
            self.report(
                Property::SelfDelivery,
                now,
                format!("{who} delivered its own {id} but not its earlier {missing}"),
            );
        }

        // (d) total order against every incarnation that already delivered it.
        let p = self.incs[a].seq.len() as u32;
        for k in 0..self.msgs[m as usize].deliveries.len() {
            let (b, q) = self.msgs[m as usize].deliveries[k];
            let b = b as usize;
            let hi = self.incs[a].hi.get(b).copied().unwrap_or(0);
            if hi > q {
                let x = self.incs[b].seq[hi as usize - 1];
                let xid = self.msgs[x as usize].id;
                let other = self.incs[b].name();
                self.report(
                    Property::TotalOrder,
                    now,
                    format!(
                        "{who} delivered {xid} before {id}; {other} delivered {id} before {xid}"
                    ),
                );
            }
            set_grow(&mut self.incs[a].hi, b, q + 1);
            set_grow(&mut self.incs[b].hi, a, p + 1);
        }
        self.msgs[m as usize].deliveries.push((a as u32, p));
        let inc = &mut self.incs[a];
        inc.seq.push(m);
        set_grow(&mut inc.pos, m as usize, p + 1);
        inc.since_regular.push(m);
        let msg_info = &self.msgs[m as usize];
        if msg_info.sender == a {
            inc.own_delivered += 1;
        }
        if msg_info.heal {
            inc.heal_delivered += 1;
        }
        Some(id)
    }

    fn on_confchg(&mut self, a: usize, now: Instant, cc: &ConfChange) {
        let who = self.incs[a].name();
        let me = NodeId(self.incs[a].node);
        let kind = cc.kind;
        if !cc.members.contains(me) {
            self.report(
                Property::MemberOfOwnConfig,
                now,
                format!(
                    "{who} installed {kind:?} configuration {} of ring {} without itself",
                    cc.members, cc.ring_id
                ),
            );
        }
        if let Some(prev) = &self.incs[a].current {
            let left = prev.members.difference(&cc.members);
            let joined = cc.members.difference(&prev.members);
            if left != cc.left || joined != cc.joined {
                let prev_members = prev.members.clone();
                self.report(
                    Property::ConfigSequence,
                    now,
                    format!(
                        "{who} installed {kind:?} configuration {} of ring {} with left {} joined {}; \
                         after configuration {prev_members} they should be left {left} joined {joined}",
                        cc.members, cc.ring_id, cc.left, cc.joined
                    ),
                );
            }
        }
        match kind {
            ConfKind::Transitional => self.on_transitional(a, now, cc),
            ConfKind::Regular => self.on_regular(a, now, cc),
        }
        self.incs[a].current = Some(Config {
            kind,
            members: cc.members.clone(),
        });
    }

    fn on_transitional(&mut self, a: usize, now: Instant, cc: &ConfChange) {
        let who = self.incs[a].name();
        if self.incs[a].in_transition.is_some() {
            self.report(
                Property::ConfigSequence,
                now,
                format!("{who} installed two transitional configurations without a regular one between (ring {})", cc.ring_id),
            );
        }
        match &self.incs[a].regular {
            Some((old_ring, old)) if !cc.members.is_subset(old) => {
                let (old_ring, old) = (*old_ring, old.clone());
                self.report(
                    Property::ConfigSequence,
                    now,
                    format!(
                        "{who}: transitional configuration {} is not a subset of the old regular configuration {old} (ring {old_ring})",
                        cc.members
                    ),
                );
            }
            Some(_) => {}
            None => {
                if cc.members != NodeSet::single(NodeId(self.incs[a].node)) {
                    self.report(
                        Property::ConfigSequence,
                        now,
                        format!(
                            "{who}: its first transitional configuration is {}, not just itself",
                            cc.members
                        ),
                    );
                }
            }
        }
        self.incs[a].in_transition = Some(cc.members.clone());
    }

    fn on_regular(&mut self, a: usize, now: Instant, cc: &ConfChange) {
        self.configurations += 1;
        let who = self.incs[a].name();
        let node = self.incs[a].node;
        match self.incs[a].in_transition.take() {
            None => self.report(
                Property::ConfigSequence,
                now,
                format!("{who} installed regular configuration {} of ring {} without a transitional one before it", cc.members, cc.ring_id),
            ),
            Some(trans) if !trans.is_subset(&cc.members) => self.report(
                Property::ConfigSequence,
                now,
                format!(
                    "{who}: transitional configuration {trans} is not a subset of the new regular configuration {} (ring {})",
                    cc.members, cc.ring_id
                ),
            ),
            Some(_) => {}
        }

        // (a) one ring id, one membership; ring sequence numbers grow per node.
        match self.rings.get(&cc.ring_id) {
            Some((members, first)) if *members != cc.members => {
                let (members, first) = (members.clone(), self.incs[*first].name());
                self.report(
                    Property::SameRingSameMembers,
                    now,
                    format!(
                        "ring {}: {first} installed members {members}, {who} installed {}",
                        cc.ring_id, cc.members
                    ),
                );
            }
            Some(_) => {}
            None => {
                self.rings.insert(cc.ring_id, (cc.members.clone(), a));
            }
        }
        if let Some(&(last, by)) = self.node_last_ring.get(&node) {
            if cc.ring_id.seq <= last.seq {
                let by = self.incs[by].name();
                self.report(
                    Property::SameRingSameMembers,
                    now,
                    format!(
                        "{who} installed ring {} after {by} had installed ring {last}: a node's ring sequence must grow, across restarts too",
                        cc.ring_id
                    ),
                );
            }
        }
        self.node_last_ring.insert(node, (cc.ring_id, a));

        // (e) the same set of messages between the same two regular configurations.
        let since = std::mem::take(&mut self.incs[a].since_regular);
        if let Some((prev_ring, _)) = self.incs[a].regular {
            let mut set = since;
            set.sort_unstable();
            let key = (prev_ring, cc.ring_id);
            match self.vs_sets.get(&key) {
                None => {
                    self.vs_sets.insert(key, (a, set));
                }
                Some((b, other)) if *other != set => {
                    let other_name = self.incs[*b].name();
                    let only_here = self.describe(&difference(&set, other));
                    let only_there = self.describe(&difference(other, &set));
                    self.report(
                        Property::VirtualSynchrony,
                        now,
                        format!(
                            "{who} and {other_name} both went from ring {prev_ring} to ring {} but delivered different sets: \
                             only {who}: {only_here}; only {other_name}: {only_there}",
                            cc.ring_id
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        self.incs[a].regular = Some((cc.ring_id, cc.members.clone()));
    }

    fn describe(&self, ms: &[u32]) -> String {
        let mut s: Vec<String> = ms
            .iter()
            .take(5)
            .map(|&m| self.msgs[m as usize].id.to_string())
            .collect();
        if ms.len() > 5 {
            s.push(format!("... ({} in all)", ms.len()));
        }
        if s.is_empty() {
            "none".to_string()
        } else {
            s.join(", ")
        }
    }

    /// Messages accepted by `node`#`inc` that it has not delivered yet.
    pub fn pending_self(&self, node: u32, inc: u32) -> usize {
        let i = &self.incs[self.idx(node, inc)];
        i.accepted.len() - i.own_delivered as usize
    }

    /// Heal-phase messages `node`#`inc` has not delivered yet.
    pub fn pending_heal(&self, node: u32, inc: u32) -> usize {
        (self.heal_msgs - self.incs[self.idx(node, inc)].heal_delivered) as usize
    }

    /// Lists (at most 5 of) the messages `node`#`inc` accepted and has not delivered.
    pub fn missing_self(&self, node: u32, inc: u32) -> String {
        let i = &self.incs[self.idx(node, inc)];
        let missing: Vec<u32> = i
            .accepted
            .iter()
            .copied()
            .filter(|&m| !i.delivered(m))
            .collect();
        self.describe(&missing)
    }

    /// Lists (at most 5 of) the heal-phase messages `node`#`inc` has not delivered.
    pub fn missing_heal(&self, node: u32, inc: u32) -> String {
        let i = &self.incs[self.idx(node, inc)];
        let missing: Vec<u32> = (0..self.msgs.len() as u32)
            .filter(|&m| self.msgs[m as usize].heal && !i.delivered(m))
            .collect();
        self.describe(&missing)
    }

    /// End-of-run checks: the first violation seen during the run, else (g) for every
    /// incarnation still up, else (h) no incarnation still up is stuck in a transitional
    /// configuration.
    pub fn finish(&mut self, now: Instant) -> Result<(), Violation> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        for i in 0..self.incs.len() {
            let inc = &self.incs[i];
            if inc.ended.is_some() {
                continue;
            }
            let missing = inc.accepted.len() - inc.own_delivered as usize;
            if missing > 0 {
                let detail = format!(
                    "{} never delivered {missing} of the {} messages its mcast accepted: {}",
                    inc.name(),
                    inc.accepted.len(),
                    self.missing_self(inc.node, inc.inc)
                );
                self.report(Property::SelfDelivery, now, detail);
                break;
            }
        }
        match &self.violation {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }
}

fn ring_name(r: Option<RingId>) -> String {
    match r {
        Some(r) => r.to_string(),
        None => "(none yet)".to_string(),
    }
}

/// Sets `v[i] = x`, growing `v` with zeros as needed.
fn set_grow(v: &mut Vec<u32>, i: usize, x: u32) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] = x;
}

/// Elements of sorted `a` not in sorted `b`.
fn difference(a: &[u32], b: &[u32]) -> Vec<u32> {
    a.iter()
        .copied()
        .filter(|x| b.binary_search(x).is_err())
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::workload::build;

    fn set(ids: &[u32]) -> NodeSet {
        ids.iter().map(|&i| NodeId(i)).collect()
    }

    fn ring(rep: u32, seq: u64) -> RingId {
        RingId {
            rep: NodeId(rep),
            seq,
        }
    }

    fn conf(kind: ConfKind, r: RingId, members: &[u32], left: &[u32], joined: &[u32]) -> Event {
        Event::ConfChange(ConfChange {
            kind,
            ring_id: r,
            members: set(members),
            left: set(left),
            joined: set(joined),
        })
    }

    /// A small hand-driven trace: events are fed in the order written.
    struct Trace {
        c: Checker,
        t: u64,
    }

    impl Trace {
        fn new() -> Trace {
            Trace {
                c: Checker::new(42),
                t: 0,
            }
        }

        fn now(&mut self) -> Instant {
            self.t += 1;
            Instant(self.t)
        }

        fn start(&mut self, node: u32, inc: u32) {
            self.c.start(node, inc);
        }

        /// The standard start of a new node: transitional {me}, then `members` as ring `r`.
        fn boot(&mut self, node: u32, inc: u32, r: RingId, members: &[u32]) {
            self.start(node, inc);
            self.ev(
                node,
                inc,
                conf(ConfKind::Transitional, ring(node, 0), &[node], &[], &[]),
            );
            let joined: Vec<u32> = members.iter().copied().filter(|&m| m != node).collect();
            self.ev(node, inc, conf(ConfKind::Regular, r, members, &[], &joined));
        }

        fn ev(&mut self, node: u32, inc: u32, e: Event) {
            let now = self.now();
            self.c.record(node, inc, now, &e);
        }

        fn send(&mut self, node: u32, inc: u32, counter: u64, len: usize) -> Bytes {
            let m = build(
                MsgId {
                    origin: node,
                    incarnation: inc,
                    counter,
                },
                len,
            );
            let now = self.now();
            self.c.accepted(node, inc, &m, now);
            m
        }

        fn deliver(&mut self, node: u32, inc: u32, origin: u32, m: &Bytes) {
            self.ev(
                node,
                inc,
                Event::Deliver {
                    origin: NodeId(origin),
                    msg: m.clone(),
                },
            );
        }

        fn violated(&self) -> Option<Property> {
            self.c.violation().map(|v| v.property)
        }

        fn assert_violates(mut self, p: Property) {
            let now = self.now();
            let r = self.c.finish(now);
            match r {
                Err(v) => {
                    assert_eq!(v.property, p, "wrong property: {v}");
                    assert!(v.to_string().contains("seed 42"), "{v}");
                }
                Ok(()) => panic!("expected a {} violation, the trace passed", p.label()),
            }
        }
    }

    /// Two nodes form a ring, exchange messages, split, and each goes on alone.
    fn clean_trace() -> Trace {
        let mut t = Trace::new();
        let r1 = ring(1, 4);
        t.boot(1, 1, r1, &[1, 2]);
        t.boot(2, 1, r1, &[1, 2]);
        let a = t.send(1, 1, 0, 100);
        let b = t.send(2, 1, 0, 40);
        for n in [1, 2] {
            t.deliver(n, 1, 1, &a);
            t.deliver(n, 1, 2, &b);
        }
        let c = t.send(1, 1, 1, 64);
        // Split: node 1 still delivers c in the transitional configuration {1}.
        t.ev(
            1,
            1,
            conf(ConfKind::Transitional, ring(1, 8), &[1], &[2], &[]),
        );
        t.deliver(1, 1, 1, &c);
        t.ev(1, 1, conf(ConfKind::Regular, ring(1, 8), &[1], &[], &[]));
        t.ev(
            2,
            1,
            conf(ConfKind::Transitional, ring(2, 8), &[2], &[1], &[]),
        );
        t.ev(2, 1, conf(ConfKind::Regular, ring(2, 8), &[2], &[], &[]));
        let d = t.send(2, 1, 1, 50);
        t.deliver(2, 1, 2, &d);
        t
    }

    #[test]
    fn a_clean_trace_passes() {
        let mut t = clean_trace();
        assert_eq!(t.violated(), None);
        let now = t.now();
        assert_eq!(t.c.finish(now), Ok(()));
        assert_eq!(t.c.configurations(), 4);
        assert_eq!(t.c.deliveries(), 6);
    }

    #[test]
    fn a_crashed_sender_need_not_deliver_its_own_message() {
        let mut t = clean_trace();
        t.send(1, 1, 2, 64);
        t.c.end(1, 1, IncEnd::Crashed);
        let now = t.now();
        assert_eq!(t.c.finish(now), Ok(()));
    }

    #[test]
    fn a_same_ring_id_different_members() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        t.boot(2, 1, ring(1, 4), &[1, 2, 3]);
        t.assert_violates(Property::SameRingSameMembers);
    }

    #[test]
    fn a_ring_seq_must_grow_across_restarts() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 8), &[1]);
        t.c.end(1, 1, IncEnd::Crashed);
        t.boot(1, 2, ring(1, 4), &[1]);
        t.assert_violates(Property::SameRingSameMembers);
    }

    #[test]
    fn b_node_outside_its_own_configuration() {
        let mut t = Trace::new();
        t.start(1, 1);
        t.ev(
            1,
            1,
            conf(ConfKind::Transitional, ring(1, 0), &[1], &[], &[]),
        );
        t.ev(
            1,
            1,
            conf(ConfKind::Regular, ring(2, 4), &[1, 2], &[], &[2]),
        );
        t.ev(
            1,
            1,
            conf(ConfKind::Transitional, ring(2, 8), &[2], &[1], &[]),
        );
        t.assert_violates(Property::MemberOfOwnConfig);
    }

    #[test]
    fn c_duplicate_delivery() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1]);
        let m = t.send(1, 1, 0, 100);
        t.deliver(1, 1, 1, &m);
        t.deliver(1, 1, 1, &m);
        t.assert_violates(Property::DeliveredOnceIntact);
    }

    #[test]
    fn c_corrupted_message() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1]);
        let m = t.send(1, 1, 0, 100);
        let mut bad = m.to_vec();
        bad[60] ^= 0x40;
        t.deliver(1, 1, 1, &Bytes::from(bad));
        t.assert_violates(Property::DeliveredOnceIntact);
    }

    #[test]
    fn c_message_never_sent_or_with_wrong_origin() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        let ghost = build(
            MsgId {
                origin: 2,
                incarnation: 1,
                counter: 0,
            },
            50,
        );
        t.deliver(1, 1, 2, &ghost);
        t.assert_violates(Property::DeliveredOnceIntact);

        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        t.start(2, 1);
        let m = t.send(2, 1, 0, 50);
        t.deliver(1, 1, 1, &m);
        t.assert_violates(Property::DeliveredOnceIntact);
    }

    #[test]
    fn c_foreign_bytes_without_a_raw_send() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1]);
        t.deliver(1, 1, 1, &Bytes::from_static(b"who sent this?"));
        t.assert_violates(Property::DeliveredOnceIntact);

        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1]);
        let now = t.now();
        t.c.accepted(1, 1, b"raw test message", now);
        t.deliver(1, 1, 1, &Bytes::from_static(b"raw test message"));
        assert_eq!(
            t.violated(),
            None,
            "raw messages are allowed once a test sent one"
        );
    }

    #[test]
    fn d_two_nodes_disagree_on_order() {
        let mut t = Trace::new();
        let r = ring(1, 4);
        t.boot(1, 1, r, &[1, 2]);
        t.boot(2, 1, r, &[1, 2]);
        let a = t.send(1, 1, 0, 40);
        let b = t.send(2, 1, 0, 40);
        t.deliver(1, 1, 1, &a);
        t.deliver(1, 1, 2, &b);
        t.deliver(2, 1, 2, &b);
        t.deliver(2, 1, 1, &a);
        t.assert_violates(Property::TotalOrder);
    }

    #[test]
    fn d_order_violation_across_a_gap() {
        // Node 1: a b c. Node 2: c ... a. Common {a, c} in opposite orders, noticed when
        // node 2 delivers a.
        let mut t = Trace::new();
        let r = ring(1, 4);
        t.boot(1, 1, r, &[1, 2]);
        t.boot(2, 1, r, &[1, 2]);
        let a = t.send(1, 1, 0, 40);
        let b = t.send(1, 1, 1, 40);
        let c = t.send(1, 1, 2, 40);
        t.deliver(1, 1, 1, &a);
        t.deliver(1, 1, 1, &b);
        t.deliver(1, 1, 1, &c);
        t.deliver(2, 1, 1, &c);
        assert_eq!(t.violated(), None);
        t.deliver(2, 1, 1, &a);
        t.assert_violates(Property::TotalOrder);
    }

    #[test]
    fn d_same_order_with_different_subsets_passes() {
        let mut t = Trace::new();
        let r = ring(1, 4);
        t.boot(1, 1, r, &[1, 2, 3]);
        t.boot(2, 1, r, &[1, 2, 3]);
        t.boot(3, 1, r, &[1, 2, 3]);
        let ms: Vec<Bytes> = (0..6).map(|i| t.send(1, 1, i, 40)).collect();
        for (n, pick) in [
            (1, [0, 1, 2, 3, 4, 5].as_slice()),
            (2, &[0, 2, 4]),
            (3, &[1, 2, 5]),
        ] {
            for &i in pick {
                t.deliver(n, 1, 1, &ms[i]);
            }
        }
        assert_eq!(t.violated(), None);
    }

    #[test]
    fn d_one_senders_messages_out_of_order() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        t.boot(2, 1, ring(1, 4), &[1, 2]);
        let a = t.send(1, 1, 0, 40);
        let b = t.send(1, 1, 1, 40);
        t.deliver(2, 1, 1, &b);
        t.deliver(2, 1, 1, &a);
        t.assert_violates(Property::TotalOrder);
    }

    #[test]
    fn g_own_message_skipped() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1]);
        let _a = t.send(1, 1, 0, 40);
        let b = t.send(1, 1, 1, 40);
        t.deliver(1, 1, 1, &b);
        assert_eq!(
            t.violated(),
            Some(Property::SelfDelivery),
            "caught at the delivery, not only at the end"
        );
    }

    #[test]
    fn e_same_transition_different_sets() {
        let mut t = Trace::new();
        let r1 = ring(1, 4);
        let r2 = ring(1, 8);
        t.boot(1, 1, r1, &[1, 2, 3]);
        t.boot(2, 1, r1, &[1, 2, 3]);
        t.boot(3, 1, r1, &[1, 2, 3]);
        let m = t.send(3, 1, 0, 40);
        t.deliver(1, 1, 3, &m);
        for n in [1, 2] {
            t.ev(n, 1, conf(ConfKind::Transitional, r2, &[1, 2], &[3], &[]));
            t.ev(n, 1, conf(ConfKind::Regular, r2, &[1, 2], &[], &[]));
        }
        t.assert_violates(Property::VirtualSynchrony);
    }

    #[test]
    fn f_delivery_outside_the_senders_configuration() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        t.boot(2, 1, ring(1, 4), &[1, 2]);
        let m = t.send(2, 1, 0, 40);
        t.ev(
            1,
            1,
            conf(ConfKind::Transitional, ring(1, 8), &[1], &[2], &[]),
        );
        t.ev(1, 1, conf(ConfKind::Regular, ring(1, 8), &[1], &[], &[]));
        t.deliver(1, 1, 2, &m);
        t.assert_violates(Property::SenderInConfig);
    }

    #[test]
    fn f_delivered_in_different_configurations() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        t.boot(2, 1, ring(1, 4), &[1, 2]);
        let m = t.send(1, 1, 0, 40);
        t.deliver(1, 1, 1, &m);
        t.ev(
            2,
            1,
            conf(ConfKind::Transitional, ring(1, 8), &[1, 2], &[], &[]),
        );
        t.ev(2, 1, conf(ConfKind::Regular, ring(1, 8), &[1, 2], &[], &[]));
        t.deliver(2, 1, 1, &m);
        t.assert_violates(Property::SenderInConfig);
    }

    #[test]
    fn f_delivery_before_any_configuration() {
        let mut t = Trace::new();
        t.start(1, 1);
        let m = t.send(1, 1, 0, 40);
        t.deliver(1, 1, 1, &m);
        t.assert_violates(Property::SenderInConfig);
    }

    #[test]
    fn g_own_message_never_delivered() {
        let mut t = clean_trace();
        t.send(2, 1, 2, 80);
        t.assert_violates(Property::SelfDelivery);
    }

    #[test]
    fn h_transitional_not_within_old_configuration() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        t.ev(
            1,
            1,
            conf(ConfKind::Transitional, ring(1, 8), &[1, 3], &[2], &[3]),
        );
        t.assert_violates(Property::ConfigSequence);
    }

    #[test]
    fn h_transitional_not_within_new_configuration() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        t.ev(
            1,
            1,
            conf(ConfKind::Transitional, ring(1, 8), &[1, 2], &[], &[]),
        );
        t.ev(1, 1, conf(ConfKind::Regular, ring(1, 8), &[1], &[2], &[]));
        t.assert_violates(Property::ConfigSequence);
    }

    #[test]
    fn h_regular_without_transitional() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1]);
        t.ev(
            1,
            1,
            conf(ConfKind::Regular, ring(1, 8), &[1, 2], &[], &[2]),
        );
        t.assert_violates(Property::ConfigSequence);
    }

    #[test]
    fn h_two_transitionals_in_a_row() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        t.ev(
            1,
            1,
            conf(ConfKind::Transitional, ring(1, 8), &[1, 2], &[], &[]),
        );
        t.ev(
            1,
            1,
            conf(ConfKind::Transitional, ring(1, 12), &[1], &[2], &[]),
        );
        t.assert_violates(Property::ConfigSequence);
    }

    #[test]
    fn h_wrong_left_and_joined() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1, 2]);
        t.ev(
            1,
            1,
            conf(ConfKind::Transitional, ring(1, 8), &[1], &[], &[]),
        );
        t.assert_violates(Property::ConfigSequence);
    }

    #[test]
    fn i_heal_phase_message_missing_at_one_node() {
        let mut t = Trace::new();
        let r = ring(1, 4);
        t.boot(1, 1, r, &[1, 2]);
        t.boot(2, 1, r, &[1, 2]);
        let before = t.send(1, 1, 0, 40);
        t.deliver(1, 1, 1, &before);
        t.c.begin_heal_phase();
        let m = t.send(1, 1, 1, 40);
        t.deliver(1, 1, 1, &m);
        assert_eq!(t.c.pending_heal(1, 1), 0);
        assert_eq!(t.c.pending_heal(2, 1), 1, "only heal-phase messages count");
        assert_eq!(t.c.missing_heal(2, 1), "m1.1#1");
        assert_eq!(t.c.pending_self(1, 1), 0);
        t.deliver(2, 1, 1, &before);
        t.deliver(2, 1, 1, &m);
        assert_eq!(t.c.pending_heal(2, 1), 0);
        assert_eq!(t.violated(), None);
    }

    #[test]
    fn first_violation_is_kept() {
        let mut t = Trace::new();
        t.boot(1, 1, ring(1, 4), &[1]);
        let m = t.send(1, 1, 0, 40);
        t.deliver(1, 1, 1, &m);
        t.deliver(1, 1, 1, &m);
        let first = t.c.violation().cloned();
        t.ev(1, 1, conf(ConfKind::Regular, ring(1, 8), &[2], &[], &[]));
        assert_eq!(t.c.violation().cloned(), first);
    }
}
