//! CLM on the deterministic simulator: every node runs the real Totem (the `ais-test`
//! [`Cluster`]) and a [`Registry`] with every service (`register_all`), driven the way
//! the daemon drives it, with two tracking clients (`CHANGES`, `CHANGES_ONLY`) per node. The network loses,
//! duplicates and delays frames; nodes crash and restart; the cluster splits and merges,
//! many times in quick succession, so that configurations change in the middle of sync
//! rounds. One seed decides all of it.
//!
//! Checked at every view a node installs:
//!
//! - **one number per ring**: every node that installs a view for a ring installs the
//!   same number, the same member list (the ring's members) and the same node records;
//! - **numbers grow**: each node incarnation's view numbers strictly increase;
//! - **one list per number**: two installed views with the same number that share a
//!   member (the same incarnation of a node) have the same member list. (Two partitions
//!   cut at once from one view each install `old + 1` with disjoint members: they cannot
//!   talk, so no numbering that grows by one could tell them apart; no node is in both.)
//! - **callbacks tell the truth**: the tracking client's callback carries the installed
//!   number and members, every member once, the nodes that left, each with the change
//!   relative to the node's previous view; the `CHANGES_ONLY` tracker gets exactly the
//!   changed nodes of each of those callbacks (none when nothing changed);
//!
//! and after healing: every node in one view with the same number, members and records
//! (names and boot times of the current incarnations), each tracker's last callback
//! being that view. Totem's own EVS checker stays silent.
//!
//! The same run checks MEMB, the membership event stream. Every node's registry counts
//! quorum against the cluster size (`expected_votes`), so minorities lose it and the
//! stream has `NOT_PRIMARY`, `PRIMARY_RESTORED` and `EVICTED` to say. Each node
//! incarnation subscribes at start (and again after `EVICTED` ends its stream); every
//! snapshot and event is recorded and, after the run ([`Sim::check_memb`]):
//!
//! - **oldest first**: a `NEW_MEMBERSHIP` lists its members sorted by `(born_on, node)`,
//!   each node once, none born after the sequence; `joined` is exactly the members born
//!   on this sequence; a node both in `left` and in `members` restarted (a new
//!   `born_on`);
//! - **one story per membership**: every `NEW_MEMBERSHIP` with one sequence, on every
//!   node and incarnation, carries the same members, joined and left; snapshots,
//!   `NOT_PRIMARY` and `PRIMARY_RESTORED` of that sequence carry those members; and
//!   membership `s + 1` is membership `s` less `left` plus `joined`. One exception, since
//!   the stream's history lives in memory only: when a quorum of nodes none of which was
//!   in membership `s` (its members restarted or are cut off) forms a membership, they
//!   number it `s` again. Two stories of `s` are accepted only from different rings and
//!   only if every node incarnation told both was evicted in between (no stream hears one
//!   number name two memberships); each node's history is checked never to go back (by
//!   ring), and for such a sequence the stream checks below compare numbers, not member
//!   lists;
//! - **no gaps**: within a subscription `NEW_MEMBERSHIP` sequences grow by exactly one
//!   from the snapshot's (any first one only for a node that never was in a primary
//!   membership); `NOT_PRIMARY` only from a primary state and about it;
//!   `PRIMARY_RESTORED` only about the membership that was lost; nothing after `EVICTED`;
//! - **members are the ring**: `NEW_MEMBERSHIP` and `PRIMARY_RESTORED` come when the
//!   node's sync round for a quorate regular configuration completes (or is aborted after
//!   every announcement was in), and list exactly its members; `NOT_PRIMARY` comes in a configuration without quorum;
//! - **after healing**: a fresh `START` on every node answers the same primary
//!   membership of all nodes, and every live subscription's stream ends in it.
//!
//! A failure prints the seed; `CLM_SIM_SEED=<seed>` replays just that seed,
//! `CLM_SIM_SEEDS=<n>` runs another number of seeds (default 3000, on up to two threads),
//! `CLM_SIM_VERBOSE=1` prints Totem's trace and every MEMB event.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ais_exec::{ConnId, ConnInfo, Effect, QuorumPolicy, Registry};
use ais_proto::clm::{cb, req, track, ClusterChange, TrackCb, TrackReq};
use ais_proto::memb::{self as memb_wire, EventKind, MembEvent, Member, Snapshot};
use ais_proto::{Decode, Encode, SaError, ServiceId};
use ais_services::{Clm, LocalNode, Memb, ServicesConfig};
use ais_test::trace::{Fnv64, TraceEvent};
use ais_test::{profile, Cluster, Rng};
use bytes::Bytes;
use totem::{ConfKind, Event, Instant, NodeId, RingId};

/// Salt so the scenario's stream differs from the network's.
const SCENARIO_SALT: u64 = 0x636c_6d73_696d_0001;
/// Every node's two tracking clients: connection id and track flag. Index 0 tracks
/// `CHANGES`, index 1 `CHANGES_ONLY`.
const TRACKERS: [(ConnId, u8); 2] = [
    (ConnId(1), track::CHANGES),
    (ConnId(2), track::CHANGES_ONLY),
];

/// MEMB subscriptions use connection ids from here up, one new id per subscription (the
/// CLM trackers use the ones below).
const MEMB_CONN_BASE: u64 = 100;

fn ms(t: u64) -> Instant {
    Instant::from_millis(t)
}

/// A view a node incarnation installed.
#[derive(Clone, Debug)]
struct Install {
    node: u32,
    inc: u32,
    ring: RingId,
    number: u64,
    members: Vec<u32>,
    /// `(member, its incarnation)` when the view was installed.
    member_incs: Vec<(u32, u32)>,
    /// The encoded current view (records included).
    records: Bytes,
}

/// One MEMB subscription: where it was opened, what `START` answered and every event it
/// received, kept after its node crashed so the checks see whole streams.
#[derive(Debug)]
struct MembSub {
    node: u32,
    inc: u32,
    conn: ConnId,
    /// `None` until `START` is answered (it is answered at once: it needs no sync).
    snapshot: Option<Snapshot>,
    events: Vec<MembDelivery>,
}

impl MembSub {
    fn label(&self) -> String {
        format!("node {}#{} subscription {}", self.node, self.inc, self.conn)
    }
}

/// A MEMB event with what the test knew of its node when the registry dispatched it.
#[derive(Debug)]
struct MembDelivery {
    at_ms: u64,
    event: MembEvent,
    /// The last regular configuration fed to the node (from its Totem trace, not from
    /// the registry): ring and members.
    regular: Option<(RingId, Vec<u32>)>,
    /// The registry's ring at that moment.
    registry_ring: Option<RingId>,
    /// Whether the registry's sync round had completed.
    synced: bool,
    /// The incarnation of each member of that configuration, by node id.
    ring_incs: Vec<(u32, u32)>,
}

/// Where a MEMB stream stands, as its subscriber can tell from the snapshot and the
/// events so far.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StreamState {
    /// In primary membership `seq` of `members`.
    Primary { seq: u32, members: Vec<Member> },
    /// Last in primary membership `seq` (0: never), out of it now.
    NotPrimary { seq: u32, members: Vec<Member> },
    /// `EVICTED` ended the stream.
    Ended,
}

/// A node incarnation as the daemon would run it.
struct SimNode {
    inc: u32,
    registry: Registry,
    /// Trace entries already fed to the registry.
    cursor: usize,
    /// Multicasts Totem did not accept yet.
    pending: VecDeque<Bytes>,
    tracking: [bool; 2],
    waiting: [bool; 2],
    views_seen: u64,
    /// Installed (number, members) in order, for the callback checks.
    installs: Vec<(u64, Vec<u32>)>,
    /// Each tracker's callbacks, in order.
    callbacks: [Vec<TrackCb>; 2],
    /// The last regular configuration fed to the registry, for the MEMB "members are
    /// the ring" check.
    regular: Option<(RingId, Vec<u32>)>,
    /// This incarnation's MEMB connections and their index in [`Sim::memb_subs`]. Ended
    /// streams stay connected, so that an event after `EVICTED` would still show.
    memb_conns: BTreeMap<ConnId, usize>,
    /// The stream ended with `EVICTED`: subscribe again once the effects are carried out.
    memb_resubscribe: bool,
    /// The Totem ring of the MEMB history's primary membership after the last input,
    /// as `(ring seq, rep)`. It never goes back within an incarnation: a node only ever
    /// adopts a later primary membership (its sequence number may be lower than the
    /// one it forgets, when restarted nodes numbered theirs from 1 again).
    memb_history_ring: Option<(u64, u32)>,
}

struct Sim {
    c: Cluster,
    rng: Rng,
    nodes: Vec<Option<SimNode>>,
    installs: Vec<Install>,
    /// Boot time of each (node, incarnation).
    boots: BTreeMap<(u32, u32), u64>,
    errors: Vec<String>,
    hash: Fnv64,
    /// Every MEMB subscription of every node incarnation, in the order opened.
    memb_subs: Vec<MembSub>,
}

fn boot_time(n: u32, inc: u32) -> u64 {
    1_700_000_000_000_000_000 + u64::from(n) * 1_000_000 + u64::from(inc)
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed ^ SCENARIO_SALT);
        let size = rng.range(2, 6) as u32;
        let c = Cluster::new(seed, size, profile::fast());
        let mut sim = Sim {
            c,
            rng,
            nodes: (0..size).map(|_| None).collect(),
            installs: Vec::new(),
            boots: BTreeMap::new(),
            errors: Vec::new(),
            hash: Fnv64::default(),
            memb_subs: Vec::new(),
        };
        for n in 1..=size {
            sim.sync_node(n);
        }
        sim
    }

    fn size(&self) -> u32 {
        self.c.size()
    }

    fn fail(&mut self, what: String) {
        if self.errors.len() < 5 {
            self.errors
                .push(format!("at {} ms: {what}", self.c.now().as_micros() / 1000));
        }
    }

    /// Brings node `n`'s simulated daemon up to date with its Totem instance.
    fn sync_node(&mut self, n: u32) {
        let i = n as usize - 1;
        let up = self.c.is_up(n);
        let inc = self.c.incarnation(n);
        if self.nodes[i].as_ref().is_some_and(|s| !up || s.inc != inc) {
            self.nodes[i] = None;
        }
        if !up {
            return;
        }
        if self.nodes[i].is_none() {
            let boot = boot_time(n, inc);
            self.boots.insert((n, inc), boot);
            let mut registry = Registry::new(NodeId(n));
            let local = LocalNode::new(
                &format!("node{n}"),
                std::net::Ipv4Addr::new(10, 0, 0, n as u8).into(),
                boot,
            );
            ais_services::register_all(&mut registry, &ServicesConfig::new(local));
            // Quorum counted against the whole cluster, the same on every node, so that
            // minorities lose it and MEMB has more than new memberships to tell.
            registry.set_quorum_policy(QuorumPolicy {
                expected_votes: Some(self.size()),
                ..QuorumPolicy::default()
            });
            for (conn, _) in TRACKERS {
                if registry
                    .lib_connect(conn, ServiceId::CLM, ConnInfo::default())
                    .is_err()
                {
                    self.fail(format!("node {n}: tracker cannot connect"));
                }
            }
            self.nodes[i] = Some(SimNode {
                inc,
                registry,
                cursor: 0,
                pending: VecDeque::new(),
                tracking: [false; 2],
                waiting: [false; 2],
                views_seen: 0,
                installs: Vec::new(),
                callbacks: [Vec::new(), Vec::new()],
                regular: None,
                memb_conns: BTreeMap::new(),
                memb_resubscribe: false,
                memb_history_ring: None,
            });
            self.memb_subscribe(n);
        }
        let events: Vec<Event> = {
            let node = self.nodes[i].as_ref().expect("up");
            self.c.trace(n, inc)[node.cursor..]
                .iter()
                .filter_map(|e| match &e.event {
                    TraceEvent::Deliver { origin, payload } => Some(Event::Deliver {
                        origin: *origin,
                        msg: payload.bytes(),
                    }),
                    TraceEvent::ConfChange(cc) => Some(Event::ConfChange(cc.clone())),
                    _ => None,
                })
                .collect()
        };
        let len = self.c.trace(n, inc).len();
        self.nodes[i].as_mut().expect("up").cursor = len;
        for ev in events {
            let node = self.nodes[i].as_mut().expect("up");
            if let Event::ConfChange(cc) = &ev {
                if cc.kind == ConfKind::Regular {
                    node.regular = Some((cc.ring_id, cc.members.iter().map(|m| m.0).collect()));
                }
            }
            node.registry.handle_event(ev);
            self.after_input(n);
        }
        self.tracker_act(n);
        self.flush(n);
    }

    /// Records a view if one was installed, then carries out the registry's effects.
    fn after_input(&mut self, n: u32) {
        let i = n as usize - 1;
        let node = self.nodes[i].as_mut().expect("up");
        let clm = node.registry.service::<Clm>().expect("clm registered");
        if clm.stats().views_installed != node.views_seen {
            node.views_seen = clm.stats().views_installed;
            let number = clm.view_number();
            let members = clm.members().to_vec();
            let records = clm.current_view().to_bytes();
            let ring = node.registry.ring_id().expect("a view needs a ring");
            node.installs.push((number, members.clone()));
            let inc = node.inc;
            let member_incs = members
                .iter()
                .map(|&m| (m, self.c.incarnation(m)))
                .collect();
            self.hash.write_u64(u64::from(n));
            self.hash.write_u64(number);
            self.hash.write(&records);
            self.c.note(format!(
                "node {n}#{inc}: view {number} {members:?} ring {ring}"
            ));
            self.installs.push(Install {
                node: n,
                inc,
                ring,
                number,
                members,
                member_incs,
                records,
            });
        }
        let node = self.nodes[i].as_mut().expect("up");
        let mut effects = Vec::new();
        while let Some(e) = node.registry.poll_effect() {
            effects.push(e);
        }
        for e in effects {
            self.effect(n, e);
        }
        let node = self.nodes[i].as_mut().expect("up");
        let ring = node
            .registry
            .service::<Memb>()
            .expect("memb registered")
            .history()
            .ring
            .map(|r| (r.seq, r.rep.0));
        let before = std::mem::replace(&mut node.memb_history_ring, ring);
        if ring < before {
            let inc = node.inc;
            self.fail(format!(
                "node {n}#{inc}: MEMB history went back from ring {before:?} to {ring:?}"
            ));
        }
        if std::mem::take(&mut self.nodes[i].as_mut().expect("up").memb_resubscribe) {
            self.memb_subscribe(n);
        }
    }

    /// Opens a new MEMB subscription on node `n`: a new connection, then `START`.
    fn memb_subscribe(&mut self, n: u32) {
        let now = self.c.now();
        let index = self.memb_subs.len();
        let node = self.nodes[n as usize - 1].as_mut().expect("up");
        let conn = ConnId(MEMB_CONN_BASE + node.memb_conns.len() as u64);
        if let Err(e) = node
            .registry
            .lib_connect(conn, ServiceId::MEMB, ConnInfo::default())
        {
            let what = format!("node {n}: MEMB subscriber cannot connect: {e}");
            self.fail(what);
            return;
        }
        node.memb_conns.insert(conn, index);
        let inc = node.inc;
        node.registry
            .lib_request(now, conn, memb_wire::req::START, Bytes::new(), 1);
        self.memb_subs.push(MembSub {
            node: n,
            inc,
            conn,
            snapshot: None,
            events: Vec::new(),
        });
        self.after_input(n);
    }

    fn effect(&mut self, n: u32, e: Effect) {
        let node = self.nodes[n as usize - 1].as_mut().expect("up");
        match e {
            Effect::Mcast { msg, .. } => node.pending.push_back(msg),
            Effect::Response {
                conn,
                id: req::TRACK_START,
                error,
                ..
            } if TRACKERS.iter().any(|t| t.0 == conn) => {
                let k = usize::from(conn == TRACKERS[1].0);
                node.waiting[k] = false;
                match error {
                    SaError::Ok => node.tracking[k] = true,
                    SaError::TryAgain => {}
                    e => {
                        let what = format!("node {n}: TRACK_START answered {e}");
                        self.fail(what);
                    }
                }
            }
            Effect::Dispatch {
                conn,
                id: cb::TRACK,
                body,
                ..
            } if TRACKERS.iter().any(|t| t.0 == conn) => {
                let k = usize::from(conn == TRACKERS[1].0);
                match TrackCb::decode_exact(body) {
                    Ok(t) => node.callbacks[k].push(t),
                    Err(e) => {
                        let what = format!("node {n}: undecodable track callback: {e}");
                        self.fail(what);
                    }
                }
            }
            Effect::Response {
                conn,
                id: memb_wire::req::START,
                error,
                body,
            } if node.memb_conns.contains_key(&conn) => {
                let sub = &mut self.memb_subs[node.memb_conns[&conn]];
                match (error, Snapshot::decode_exact(body)) {
                    (SaError::Ok, Ok(s)) => sub.snapshot = Some(s),
                    (e, s) => {
                        let what = format!("node {n}: MEMB START answered {e}, {s:?}");
                        self.fail(what);
                    }
                }
            }
            Effect::Dispatch {
                conn,
                id: memb_wire::cb::EVENT,
                body,
                ..
            } if node.memb_conns.contains_key(&conn) => {
                self.hash.write(&body);
                let event = match MembEvent::decode_exact(body) {
                    Ok(ev) => ev,
                    Err(e) => {
                        let what = format!("node {n}: undecodable MEMB event: {e}");
                        self.fail(what);
                        return;
                    }
                };
                // Only the newest subscription is live; an ended one hearing EVICTED
                // again is for the checks to report, not a reason to subscribe again.
                if event.kind == EventKind::Evicted
                    && node.memb_conns.keys().next_back() == Some(&conn)
                {
                    node.memb_resubscribe = true;
                }
                if std::env::var_os("CLM_SIM_VERBOSE").is_some() {
                    eprintln!(
                        "MEMB {} ms node {n}#{} {conn}: {event:?} (registry ring {:?}, synced {})",
                        self.c.now().as_micros() / 1000,
                        node.inc,
                        node.registry.ring_id(),
                        node.registry.is_synced()
                    );
                }
                let ring_incs = node
                    .regular
                    .iter()
                    .flat_map(|(_, m)| m.iter())
                    .map(|&m| (m, self.c.incarnation(m)))
                    .collect();
                self.memb_subs[node.memb_conns[&conn]]
                    .events
                    .push(MembDelivery {
                        ring_incs,
                        at_ms: self.c.now().as_micros() / 1000,
                        event,
                        regular: node.regular.clone(),
                        registry_ring: node.registry.ring_id(),
                        synced: node.registry.is_synced(),
                    });
            }
            other => {
                let what = format!("node {n}: unexpected effect {other:?}");
                self.fail(what);
            }
        }
    }

    /// The tracking clients ask to track until they are tracking. Both ask at the same
    /// moment, so they start at the same view.
    fn tracker_act(&mut self, n: u32) {
        let now = self.c.now();
        for (k, (conn, flags)) in TRACKERS.into_iter().enumerate() {
            let node = self.nodes[n as usize - 1].as_mut().expect("up");
            if node.tracking[k] || node.waiting[k] {
                continue;
            }
            node.waiting[k] = true;
            let body = TrackReq {
                flags,
                max_items: None,
            }
            .to_bytes();
            node.registry
                .lib_request(now, conn, req::TRACK_START, body, 1);
            self.after_input(n);
        }
    }

    /// Hands node `n`'s held multicasts to Totem while it takes them.
    fn flush(&mut self, n: u32) {
        let i = n as usize - 1;
        while let Some(msg) = self.nodes[i]
            .as_ref()
            .and_then(|s| s.pending.front().cloned())
        {
            if !self.c.srp(n).is_some_and(|s| s.can_mcast(msg.len()))
                || self.c.mcast(n, msg).is_err()
            {
                return;
            }
            if let Some(s) = self.nodes[i].as_mut() {
                s.pending.pop_front();
            }
        }
    }

    fn step(&mut self) -> bool {
        if !self.c.step() {
            return false;
        }
        for n in 1..=self.size() {
            self.sync_node(n);
        }
        true
    }

    fn run_until_time(&mut self, t: Instant) {
        while self.c.now() < t && self.c.violation().is_none() && self.errors.is_empty() {
            if !self.step() {
                break;
            }
        }
    }

    fn quiet(&self) -> bool {
        self.c.all_one_ring()
            && (1..=self.size()).all(|n| {
                self.nodes[n as usize - 1].as_ref().is_some_and(|s| {
                    s.registry.is_synced()
                        && s.registry.ring_id() == self.c.srp(n).map(|x| x.ring_id())
                        && s.pending.is_empty()
                        && s.tracking.iter().all(|&t| t)
                })
            })
    }

    fn random_fault(&mut self) {
        let size = self.size();
        let up: Vec<u32> = (1..=size).filter(|&n| self.c.is_up(n)).collect();
        let down: Vec<u32> = (1..=size).filter(|&n| !self.c.is_up(n)).collect();
        match self.rng.below(100) {
            0..=34 => {
                let mut order: Vec<u32> = (1..=size).collect();
                self.rng.shuffle(&mut order);
                let cut = 1 + self.rng.index(size as usize - 1);
                let (a, b) = order.split_at(cut);
                self.c.partition(&[a, b]);
            }
            35..=59 => self.c.heal(),
            60..=79 if up.len() >= 2 => {
                let n = *self.rng.pick(&up);
                self.c.crash(n);
            }
            _ if !down.is_empty() => {
                let n = *self.rng.pick(&down);
                self.c.restart(n);
            }
            _ => self.c.heal(),
        }
    }

    /// Faults, then heal and wait for quiet, then the checks.
    fn run(&mut self) -> Result<String, String> {
        let size = self.size();
        self.c.set_loss(self.rng.unit() * 0.05);
        self.c.set_dup(0.01);
        self.c.set_jitter_us(self.rng.range(0, 300));
        let warm_up = ms(self.rng.range(500, 1_500));
        self.run_until_time(warm_up);
        let faults_end = ms(self.rng.range(6_000, 10_000));
        while self.c.now() < faults_end && self.errors.is_empty() {
            let pause = self.rng.range(30_000, 700_000);
            let t = self.c.now().plus_micros(pause);
            self.run_until_time(t);
            self.random_fault();
        }
        self.c.heal();
        for n in 1..=size {
            if !self.c.is_up(n) {
                self.c.restart(n);
            }
        }
        self.c.set_loss(0.0);
        self.c.set_dup(0.0);
        let deadline = self.c.now().plus_micros(30_000_000);
        while !self.quiet()
            && self.c.now() < deadline
            && self.c.violation().is_none()
            && self.errors.is_empty()
        {
            if !self.step() {
                break;
            }
        }
        if let Some(v) = self.c.violation() {
            return Err(format!("Totem checker: {v:?}"));
        }
        if !self.errors.is_empty() {
            return Err(self.errors.join("\n"));
        }
        if !self.quiet() {
            return Err(format!("never quiet after healing:\n{}", self.c.status()));
        }
        let t = self.c.now().plus_micros(200_000);
        self.run_until_time(t);
        self.c
            .check()
            .map_err(|v| format!("Totem checker: {v:?}"))?;
        let finals = self.final_memb_snapshots()?;
        let clm = self.check()?;
        let memb = self.check_memb(&finals)?;
        Ok(format!("{clm}; MEMB: {memb}"))
    }

    /// A fresh MEMB subscription on every node after healing: their snapshots, by node.
    fn final_memb_snapshots(&mut self) -> Result<Vec<Snapshot>, String> {
        let mut finals = Vec::new();
        for n in 1..=self.size() {
            self.memb_subscribe(n);
            let sub = self.memb_subs.last().ok_or("no MEMB subscription")?;
            let snap = sub
                .snapshot
                .clone()
                .ok_or(format!("node {n}: MEMB START not answered after healing"))?;
            finals.push(snap);
        }
        if !self.errors.is_empty() {
            return Err(self.errors.join("\n"));
        }
        Ok(finals)
    }

    fn check(&self) -> Result<String, String> {
        // One number, member list and record set per ring.
        let mut by_ring: BTreeMap<RingId, &Install> = BTreeMap::new();
        for i in &self.installs {
            let want: Vec<u32> = i.members.clone();
            if !want.contains(&i.node) {
                return Err(format!(
                    "node {}#{} installed view {} without itself: {want:?}",
                    i.node, i.inc, i.number
                ));
            }
            match by_ring.get(&i.ring) {
                None => {
                    by_ring.insert(i.ring, i);
                }
                Some(first) => {
                    if first.number != i.number
                        || first.members != i.members
                        || first.records != i.records
                    {
                        return Err(format!(
                            "ring {}: node {}#{} installed view {} {:?}, node {}#{} view {} {:?} (records equal: {})",
                            i.ring, first.node, first.inc, first.number, first.members, i.node, i.inc, i.number, i.members, first.records == i.records
                        ));
                    }
                }
            }
        }
        // Numbers grow within an incarnation.
        let mut last: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        for i in &self.installs {
            if let Some(&prev) = last.get(&(i.node, i.inc)) {
                if i.number <= prev {
                    return Err(format!(
                        "node {}#{} installed view {} after view {prev}",
                        i.node, i.inc, i.number
                    ));
                }
            }
            last.insert((i.node, i.inc), i.number);
        }
        // One member list per number among views sharing a member incarnation.
        let mut by_number: BTreeMap<u64, Vec<&Install>> = BTreeMap::new();
        for i in by_ring.values() {
            by_number.entry(i.number).or_default().push(i);
        }
        let mut shared_numbers = 0;
        for (number, views) in &by_number {
            for (k, a) in views.iter().enumerate() {
                for b in &views[k + 1..] {
                    let common = a.member_incs.iter().any(|m| b.member_incs.contains(m));
                    if common && a.members != b.members {
                        return Err(format!(
                            "view {number}: rings {} {:?} and {} {:?} share a member incarnation",
                            a.ring, a.member_incs, b.ring, b.member_incs
                        ));
                    }
                    shared_numbers += 1;
                }
            }
        }
        // Callbacks: each one is an install of its node, with the right changes.
        let mut callbacks = 0;
        for (n, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let n = n as u32 + 1;
            // CHANGES_ONLY: the CHANGES callbacks less their unchanged nodes, none when
            // nothing changed.
            let only: Vec<TrackCb> = node.callbacks[0]
                .iter()
                .map(|t| {
                    let mut t = t.clone();
                    t.view
                        .notifications
                        .retain(|x| x.change != ClusterChange::NoChange);
                    t
                })
                .filter(|t| !t.view.notifications.is_empty())
                .collect();
            if only != node.callbacks[1] {
                return Err(format!(
                    "node {n}: CHANGES_ONLY callbacks {:?} are not the changes of the CHANGES callbacks {:?}",
                    node.callbacks[1], node.callbacks[0]
                ));
            }
            for t in &node.callbacks[0] {
                callbacks += 1;
                let pos = node
                    .installs
                    .iter()
                    .position(|(v, _)| *v == t.view.view_number)
                    .ok_or_else(|| {
                        format!(
                            "node {n}: callback for view {} never installed",
                            t.view.view_number
                        )
                    })?;
                let members = &node.installs[pos].1;
                if t.view.member_ids() != *members || t.number_of_members as usize != members.len()
                {
                    return Err(format!(
                        "node {n}: callback of view {} lists {:?}, installed {members:?}",
                        t.view.view_number,
                        t.view.member_ids()
                    ));
                }
                // A tracker that started before the node's first view gets that view
                // as its first callback, relative to no view: every member joined.
                let no_view = Vec::new();
                let prev = pos.checked_sub(1).map_or(&no_view, |p| &node.installs[p].1);
                for note in &t.view.notifications {
                    let id = note.node.node_id;
                    let expect = match (prev.contains(&id), members.contains(&id)) {
                        (true, false) => vec![ClusterChange::Left],
                        (false, true) => vec![ClusterChange::Joined],
                        (true, true) => vec![ClusterChange::NoChange, ClusterChange::Reconfigured],
                        (false, false) => vec![],
                    };
                    if !expect.contains(&note.change) {
                        return Err(format!("node {n}: view {}: node {id} reported {:?}, previous {prev:?}, now {members:?}", t.view.view_number, note.change));
                    }
                }
                let left = prev.iter().filter(|id| !members.contains(id)).count();
                if t.view.notifications.len() != members.len() + left {
                    return Err(format!(
                        "node {n}: view {}: {} notifications for {} members and {left} left",
                        t.view.view_number,
                        t.view.notifications.len(),
                        members.len()
                    ));
                }
            }
        }
        // Convergence: one view, with every current incarnation's record.
        let size = self.size();
        let all: Vec<u32> = (1..=size).collect();
        let first = self.nodes[0].as_ref().ok_or("node 1 down at the end")?;
        let clm1 = first.registry.service::<Clm>().ok_or("no clm")?;
        let view = clm1.current_view();
        for n in 1..=size {
            let node = self.nodes[n as usize - 1]
                .as_ref()
                .ok_or(format!("node {n} down at the end"))?;
            let clm = node.registry.service::<Clm>().ok_or("no clm")?;
            if clm.members() != all || clm.current_view() != view {
                return Err(format!(
                    "node {n} ends in view {} {:?}, node 1 in {} {:?}",
                    clm.view_number(),
                    clm.members(),
                    clm1.view_number(),
                    clm1.members()
                ));
            }
            let rec = clm1.node(n).ok_or(format!("node 1 has no record of {n}"))?;
            let inc = self.c.incarnation(n);
            if rec.boot_timestamp != self.boots[&(n, inc)]
                || rec.node_name.as_bytes() != format!("node{n}").as_bytes()
            {
                return Err(format!("node {n}#{inc}: record {rec:?}"));
            }
            match node.callbacks[0].last() {
                Some(t) if t.view.view_number == view.view_number => {}
                Some(t) if node.installs.first().map(|v| v.0) == Some(view.view_number) => {
                    let _ = t;
                }
                None if node.installs.len() == 1 => {}
                other => {
                    return Err(format!(
                        "node {n}: tracker's last callback is view {:?}, the view is {}",
                        other.map(|t| t.view.view_number),
                        view.view_number
                    ))
                }
            }
        }
        Ok(format!(
            "{size} nodes, {} steps, {} ms virtual, {} configurations, {} views installed over {} rings, {} callbacks, {} same-number view pairs, final view {}",
            self.c.steps(),
            self.c.now().as_micros() / 1000,
            self.c.configurations(),
            self.installs.len(),
            by_ring.len(),
            callbacks,
            shared_numbers,
            view.view_number
        ))
    }

    /// The MEMB stream checks (see the module documentation), given every node's fresh
    /// snapshot after healing (`finals`, by node). Returns a summary.
    fn check_memb(&self, finals: &[Snapshot]) -> Result<String, String> {
        let size = self.size();
        let quorate = |members: &[u32]| members.len() * 2 > size as usize;
        let ids = |members: &[Member]| -> Vec<u32> {
            let mut v: Vec<u32> = members.iter().map(|m| m.node_id).collect();
            v.sort_unstable();
            v
        };
        let at = |sub: &MembSub, d: &MembDelivery| {
            format!("at {} ms: {}: {:?}", d.at_ms, sub.label(), d.event)
        };

        // Oldest first, and joined/left consistent with the members.
        for sub in &self.memb_subs {
            for d in &sub.events {
                let ev = &d.event;
                if ev.kind != EventKind::NewMembership {
                    continue;
                }
                let sorted = ev
                    .members
                    .windows(2)
                    .all(|w| (w[0].born_on, w[0].node_id) < (w[1].born_on, w[1].node_id));
                let once = ids(&ev.members).windows(2).all(|w| w[0] != w[1]);
                if ev.sequence == 0
                    || !sorted
                    || !once
                    || ev.members.iter().any(|m| m.born_on > ev.sequence)
                {
                    return Err(format!(
                        "{}: members not oldest first, once each, born by the sequence",
                        at(sub, d)
                    ));
                }
                let newborn: Vec<Member> = ev
                    .members
                    .iter()
                    .filter(|m| m.born_on == ev.sequence)
                    .copied()
                    .collect();
                if ev.joined != newborn {
                    return Err(format!(
                        "{}: joined is not the members born on the sequence",
                        at(sub, d)
                    ));
                }
                // Still a member after leaving: only as a new incarnation (new born_on).
                if ev.left.iter().any(|l| ev.members.contains(l)) {
                    return Err(format!(
                        "{}: a member that left is still a member",
                        at(sub, d)
                    ));
                }
            }
        }

        // One story per membership: the first NEW_MEMBERSHIP seen of each sequence, with
        // the member incarnations of the ring it formed in.
        let mut story: BTreeMap<u32, (&MembEvent, &MembDelivery, String)> = BTreeMap::new();
        // Sequences formed again by nodes that could not know them (see below).
        let mut reused: BTreeSet<u32> = BTreeSet::new();
        for sub in &self.memb_subs {
            for d in &sub.events {
                let ev = &d.event;
                if ev.kind != EventKind::NewMembership {
                    continue;
                }
                let Some((first, first_d, where_first)) = story.get(&ev.sequence) else {
                    story.insert(ev.sequence, (ev, d, at(sub, d)));
                    continue;
                };
                if (&first.members, &first.joined, &first.left)
                    == (&ev.members, &ev.joined, &ev.left)
                {
                    continue;
                }
                // The stream's history lives in memory only. When every member of a
                // primary membership has restarted (or is cut off) and a quorum of nodes
                // that never knew it forms the next one, they number it afresh: no node
                // of theirs was in it to tell them. A node of the old lineage that meets
                // the new one is evicted (its stream ends) and joins it afresh. So two
                // stories of one number are excused when the rings differ and every node
                // incarnation that was *told* both (a subscription of it received each)
                // was evicted in between: no stream of a node hears one number name two
                // memberships. (Ring members are not the criterion: a member that never
                // completed the round's sync was never told the first story.)
                let told = |node: u32, inc: u32, e: &MembEvent| -> Option<u64> {
                    self.memb_subs
                        .iter()
                        .filter(|s| s.node == node && s.inc == inc)
                        .flat_map(|s| s.events.iter())
                        .find(|x| x.event == *e)
                        .map(|x| x.at_ms)
                };
                let evicted_within = |node: u32, inc: u32, from: u64, to: u64| {
                    self.memb_subs
                        .iter()
                        .filter(|s| s.node == node && s.inc == inc)
                        .flat_map(|s| s.events.iter())
                        .any(|x| {
                            x.event.kind == EventKind::Evicted && x.at_ms >= from && x.at_ms <= to
                        })
                };
                let incs: BTreeSet<(u32, u32)> =
                    self.memb_subs.iter().map(|s| (s.node, s.inc)).collect();
                let excused = incs.iter().all(|&(node, inc)| {
                    match (told(node, inc, first), told(node, inc, ev)) {
                        (Some(t1), Some(t2)) => evicted_within(node, inc, t1.min(t2), t1.max(t2)),
                        _ => true,
                    }
                });
                if d.regular.as_ref().map(|r| r.0) != first_d.regular.as_ref().map(|r| r.0)
                    && excused
                {
                    reused.insert(ev.sequence);
                    continue;
                }
                return Err(format!(
                    "two stories of membership {} (rings of {:?} and {:?}):\n  {where_first}\n  {}",
                    ev.sequence,
                    first_d.ring_incs,
                    d.ring_incs,
                    at(sub, d)
                ));
            }
        }
        // Everything else that names a sequence names its members (unless two stories
        // of it were excused above).
        // A snapshot or event of another story of a number is excused like above: when
        // no subscription of that node incarnation was told the recorded story (the
        // other story was formed by nodes that had forgotten this one, or this one by
        // members that were cut off before anyone else could hear of it).
        let told_first = |sub: &MembSub, first: &MembEvent| {
            self.memb_subs
                .iter()
                .filter(|s| s.node == sub.node && s.inc == sub.inc)
                .flat_map(|s| s.events.iter())
                .any(|x| x.event == *first)
        };
        let story_of = |sub: &MembSub, seq: u32, members: &[Member], what: String| match story
            .get(&seq)
        {
            Some((first, _, where_first))
                if first.members != members && !reused.contains(&seq) && told_first(sub, first) =>
            {
                Err(format!(
                    "{what} names membership {seq} as {members:?}, but\n  {where_first}"
                ))
            }
            _ => Ok(()),
        };
        for sub in &self.memb_subs {
            if let Some(s) = sub.snapshot.as_ref().filter(|s| s.sequence > 0) {
                story_of(
                    sub,
                    s.sequence,
                    &s.members,
                    format!("{}: snapshot", sub.label()),
                )?;
            }
            for d in &sub.events {
                if matches!(
                    d.event.kind,
                    EventKind::NotPrimary | EventKind::PrimaryRestored
                ) {
                    story_of(sub, d.event.sequence, &d.event.members, at(sub, d))?;
                }
            }
        }
        // Membership s + 1 is membership s with left gone and joined added.
        for (&seq, (ev, _, where_ev)) in &story {
            if reused.contains(&seq) || seq.checked_sub(1).is_some_and(|p| reused.contains(&p)) {
                continue;
            }
            let Some((prev, _, _)) = seq.checked_sub(1).and_then(|p| story.get(&p)) else {
                continue;
            };
            let mut expect: Vec<Member> = prev
                .members
                .iter()
                .filter(|m| !ev.left.contains(m))
                .chain(&ev.joined)
                .copied()
                .collect();
            expect.sort_unstable_by_key(|m| (m.born_on, m.node_id));
            if !ev.left.iter().all(|l| prev.members.contains(l)) || expect != ev.members {
                return Err(format!(
                    "membership {seq} is not membership {} {:?} less left plus joined:\n  {where_ev}",
                    seq - 1,
                    prev.members
                ));
            }
        }

        // No gaps: each subscription's stream, from its snapshot. A sequence numbered
        // twice names two member lists, and a node may switch from one to the other
        // without an event (both are "the last primary membership"): for such a
        // sequence only the number is checked.
        let same_membership =
            |seq: u32, a: &[Member], b: &[Member]| a == b || reused.contains(&seq);
        let mut ends: Vec<StreamState> = Vec::with_capacity(self.memb_subs.len());
        for sub in &self.memb_subs {
            let snap = sub
                .snapshot
                .as_ref()
                .ok_or(format!("{}: START never answered", sub.label()))?;
            let mut state = match (snap.primary, snap.sequence) {
                (true, 0) => {
                    return Err(format!(
                        "{}: primary snapshot of no membership",
                        sub.label()
                    ))
                }
                (true, seq) => StreamState::Primary {
                    seq,
                    members: snap.members.clone(),
                },
                (false, seq) => StreamState::NotPrimary {
                    seq,
                    members: snap.members.clone(),
                },
            };
            for d in &sub.events {
                let ev = &d.event;
                let next = match (&state, ev.kind) {
                    (StreamState::Ended, _) => None,
                    // A node that stays in the primary component sees every membership;
                    // one that lost it either gets it back as the next one or hears that
                    // a newer one formed without it (EVICTED). Only a node that never was
                    // a member may start at any sequence.
                    (
                        StreamState::Primary { seq, .. } | StreamState::NotPrimary { seq, .. },
                        EventKind::NewMembership,
                    ) if ev.sequence == seq + 1 || (*seq == 0 && ev.sequence > 0) => {
                        Some(StreamState::Primary {
                            seq: ev.sequence,
                            members: ev.members.clone(),
                        })
                    }
                    (StreamState::Primary { seq, members }, EventKind::NotPrimary)
                        if ev.sequence == *seq && same_membership(*seq, &ev.members, members) =>
                    {
                        Some(StreamState::NotPrimary {
                            seq: *seq,
                            members: ev.members.clone(),
                        })
                    }
                    (StreamState::NotPrimary { seq, members }, EventKind::PrimaryRestored)
                        if *seq > 0
                            && ev.sequence == *seq
                            && same_membership(*seq, &ev.members, members) =>
                    {
                        Some(StreamState::Primary {
                            seq: *seq,
                            members: ev.members.clone(),
                        })
                    }
                    (
                        StreamState::Primary { seq, .. } | StreamState::NotPrimary { seq, .. },
                        EventKind::Evicted,
                        // The membership that formed without it usually has a higher
                        // sequence, but one numbered afresh by restarted nodes may not.
                    ) if *seq > 0 => Some(StreamState::Ended),
                    _ => None,
                };
                state = next.ok_or_else(|| {
                    format!(
                        "{}: not allowed after {state:?} (snapshot {snap:?})",
                        at(sub, d)
                    )
                })?;
            }
            ends.push(state);
        }

        // Members are the ring: each event against the configuration its sync completed.
        for sub in &self.memb_subs {
            for d in &sub.events {
                let ev = &d.event;
                let Some((ring, members)) = &d.regular else {
                    return Err(format!("{}: before any regular configuration", at(sub, d)));
                };
                // At activation (synced), or when the round of this very ring is
                // aborted after every announcement was in (not synced): MEMB applies the
                // fixed outcome then too, so that no member skips a membership others
                // activated.
                if d.registry_ring != Some(*ring) {
                    return Err(format!(
                        "{}: dispatched outside the completed sync of ring {ring} (registry in {:?}, synced {})",
                        at(sub, d),
                        d.registry_ring,
                        d.synced
                    ));
                }
                let mut ring_members = members.clone();
                ring_members.sort_unstable();
                let ok = match ev.kind {
                    EventKind::NewMembership | EventKind::PrimaryRestored => {
                        quorate(&ring_members) && ids(&ev.members) == ring_members
                    }
                    EventKind::NotPrimary => !quorate(&ring_members),
                    EventKind::Evicted => true,
                };
                if !ok {
                    return Err(format!(
                        "{}: does not fit ring {ring} of {ring_members:?} ({} of {size} nodes)",
                        at(sub, d),
                        if quorate(&ring_members) {
                            "quorate"
                        } else {
                            "not quorate"
                        }
                    ));
                }
            }
        }

        // After healing: one primary membership of every node, where every stream ends.
        let all: Vec<u32> = (1..=size).collect();
        let first = finals.first().ok_or("no final MEMB snapshot")?;
        for (n, snap) in (1..=size).zip(finals) {
            if snap.local_node_id != n
                || !snap.primary
                || ids(&snap.members) != all
                || (snap.sequence, &snap.members) != (first.sequence, &first.members)
            {
                return Err(format!(
                    "after healing node {n} answers {snap:?}, node 1 {first:?}"
                ));
            }
        }
        let healed = StreamState::Primary {
            seq: first.sequence,
            members: first.members.clone(),
        };
        for (sub, end) in self.memb_subs.iter().zip(&ends) {
            let live = self.nodes[sub.node as usize - 1]
                .as_ref()
                .is_some_and(|s| s.inc == sub.inc);
            let agrees = match end {
                StreamState::Ended => true,
                StreamState::Primary { seq, members } => {
                    *seq == first.sequence && same_membership(*seq, members, &first.members)
                }
                StreamState::NotPrimary { .. } => false,
            };
            if live && !agrees {
                return Err(format!(
                    "{}: stream ends in {end:?}, the healed cluster is in {healed:?}",
                    sub.label()
                ));
            }
        }

        let events: usize = self.memb_subs.iter().map(|s| s.events.len()).sum();
        let evicted = ends.iter().filter(|e| **e == StreamState::Ended).count();
        Ok(format!(
            "{} subscriptions, {events} events, {} memberships ({} numbered again after restarts), {evicted} evictions, final membership {}",
            self.memb_subs.len(),
            story.len(),
            reused.len(),
            first.sequence
        ))
    }
}

/// Runs one seed: its summary and the hash of every install, or what failed.
fn run_seed(seed: u64) -> Result<(String, u64, u64), String> {
    let mut sim = Sim::new(seed);
    sim.c
        .set_verbose(std::env::var_os("CLM_SIM_VERBOSE").is_some());
    let summary = sim.run()?;
    Ok((summary, sim.hash.finish(), sim.c.trace_hash()))
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("CLM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("CLM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000u64);
    (1..=n).collect()
}

#[test]
fn every_node_of_a_view_reports_the_same_number_and_members_through_faults() {
    let seeds = seeds();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let failures: Vec<(u64, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<u64> = seeds.iter().copied().skip(t).step_by(threads).collect();
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for seed in mine {
                        match run_seed(seed) {
                            Ok((summary, _, _)) => {
                                if seed <= 3 {
                                    println!("seed {seed}: ok: {summary}");
                                }
                            }
                            Err(e) => failed.push((seed, e)),
                        }
                    }
                    failed
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("seed thread"))
            .collect()
    });
    println!("{} seeds, {} failed", seeds.len(), failures.len());
    if let Some((seed, e)) = failures.first() {
        panic!(
            "{} of {} seeds failed; first: seed {seed}: {e}\nreplay: CLM_SIM_SEED={seed} cargo test --release -p ais-test --test clm_sim -- --nocapture\nall failed: {:?}",
            failures.len(),
            seeds.len(),
            failures.iter().map(|f| f.0).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_seed_replays_to_the_same_views() {
    let a = run_seed(7).unwrap_or_else(|e| panic!("seed 7: {e}"));
    let b = run_seed(7).unwrap_or_else(|e| panic!("seed 7: {e}"));
    assert_eq!(a, b, "seed 7 diverged between two runs");
}
