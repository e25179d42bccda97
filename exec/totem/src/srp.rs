//! The Totem single-ring protocol state machine: its state, its public inputs and outputs,
//! and the timers. The protocol itself lives in `order` (an operational ring: token,
//! sequencing, retransmission, flow control, delivery) and `membership` (gather, commit,
//! recovery and the installation of a new configuration), both `impl Srp` blocks.
//!
//! Inputs are processed to completion; outputs wait in queues until the driver drains
//! them, in any order it likes (`poll_transmit`, `poll_event`, `poll_timeout`).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use log::{debug, trace};

use crate::config::Params;
use crate::event::{Dest, Event, McastError, MembState, Stats, Transmit};
use crate::pack::{Packer, Unpacker, MAX_MESSAGE_LEN};
use crate::store::RingStore;
use crate::types::{Instant, NodeId, NodeSet, RingId};
use crate::wire::{CommitToken, Frame, Token};

/// The protocol's timers, one deadline each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// No token (operational, recovery) or commit token (commit) for `token`: the ring is
    /// lost, gather a new one.
    TokenLoss = 0,
    /// Resend the last token or commit token we sent; the successor may not have it.
    TokenRetransmit = 1,
    /// Release the token held on an idle ring.
    Hold = 2,
    /// Resend our join while gathering.
    Join = 3,
    /// Give up waiting for agreement; fail whoever did not agree.
    Consensus = 4,
}

const TIMER_COUNT: usize = 5;
const TIMERS: [Timer; TIMER_COUNT] = [
    Timer::TokenLoss,
    Timer::TokenRetransmit,
    Timer::Hold,
    Timer::Join,
    Timer::Consensus,
];

/// Why a member sits on the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holding {
    /// The ring is idle (the representative, for `hold_us`).
    Idle,
    /// We just sent everything we had and wait for our application's next message
    /// (`linger_us`, within the visit's `linger_deadline`).
    Linger,
    /// Our applications are behind on their deliveries: the ring waits for them
    /// (until the visit's `receivers_deadline`).
    Receivers,
}

/// A member's view while gathering: whom it wants in the ring and whom it has given up.
pub(crate) type View = (NodeSet, NodeSet);

/// A ring being installed: the commit token has come round once, every member has said
/// what it brings, and its messages are being exchanged on the new ring.
#[derive(Debug)]
pub(crate) struct Recovery {
    pub ring_id: RingId,
    pub memb: NodeSet,
    /// Members that come from our old ring, who move with us into the new one.
    pub trans: NodeSet,
    /// The new ring's own messages (recovery frames, and new messages of members that
    /// became operational before us).
    pub store: RingStore,
    /// Old-ring messages we still have to resend: (old seq, origin, payload).
    pub resend: VecDeque<(u64, NodeId, Bytes)>,
    /// Our share of the token's `recovery_backlog` at our last visit.
    pub last_backlog: u32,
    /// Token visits in the new ring.
    pub visits: u32,
    /// Once nobody has old messages left to send: the new ring's seq then; recovery is
    /// complete when we hold everything up to it.
    pub install_seq: Option<u64>,
    /// The representative has started the new ring's token.
    pub token_originated: bool,
}

pub struct Srp {
    pub(crate) p: Params,
    pub(crate) me: NodeId,
    pub(crate) now: Instant,
    pub(crate) state: MembState,
    /// Stops all activity after [`Srp::leave`].
    pub(crate) left: bool,

    /// The installed ring and its members (before the first ring: our own, alone).
    pub(crate) ring_id: RingId,
    pub(crate) memb: NodeSet,
    pub(crate) ring_seq_high: u64,

    // Ordering on the installed ring.
    pub(crate) store: RingStore,
    pub(crate) packer: Packer,
    pub(crate) unpacker: Unpacker,
    /// Highest token_seq processed on the ring we are passing tokens on.
    pub(crate) token_seq_seen: u64,
    /// Last token or commit token we sent, and to whom, for retransmission.
    pub(crate) last_sent: Option<(NodeId, Bytes)>,
    /// The token's aru at our previous visit (release point, stuck-aru detection).
    pub(crate) prev_token_aru: u64,
    /// The token's seq at our previous visit (idle detection).
    pub(crate) prev_token_seq: u64,
    /// For each frame we miss, at how many token visits it was missing.
    pub(crate) miss_counts: BTreeMap<u64, u32>,
    pub(crate) aru_stuck: u32,
    /// Frames we originated at our previous visit (our part of the token's fcc).
    pub(crate) my_last_sent: u32,
    /// Our part of the token's backlog at our previous visit.
    pub(crate) my_last_backlog: u32,
    /// Consecutive visits that found the ring idle.
    pub(crate) idle_visits: u32,
    /// The token we are sitting on, and why; Timer::Hold passes it on.
    pub(crate) held_token: Option<(Token, Holding)>,
    /// Local messages were queued while we hold the token: send them with it at the
    /// next `poll_transmit`.
    pub(crate) pass_held_due: bool,
    /// When the current visit's lingering must end (`linger_visit_us` after the token
    /// arrived with our messages).
    pub(crate) linger_deadline: Instant,
    /// Another member sent a token hold cancel since our last visit: it waits for the
    /// token, so we do not linger with it.
    pub(crate) cancel_seen: bool,
    pub(crate) hold_cancel_sent: bool,
    pub(crate) next_merge_detect: Instant,
    /// The driver said our applications are behind on their deliveries.
    pub(crate) receivers_behind: bool,
    /// When the current visit's wait for them must end: counted from the token's
    /// arrival, so that it shares one budget with the visit's other holds.
    pub(crate) receivers_deadline: Instant,

    // Membership.
    pub(crate) proc_set: NodeSet,
    pub(crate) fail_set: NodeSet,
    /// The latest view each member sent while gathering.
    pub(crate) joins: BTreeMap<NodeId, View>,
    /// The commit token we filled in (state Commit).
    pub(crate) commit: Option<CommitToken>,
    pub(crate) recovery: Option<Recovery>,

    timers: [Option<Instant>; TIMER_COUNT],
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) stats: Stats,
}

impl Srp {
    /// A node that starts gathering at once. `ring_seq` is the highest ring sequence
    /// number this node ever saw (persisted across restarts, 0 for a new node); rings it
    /// forms get higher numbers.
    pub fn new(params: Params, me: NodeId, ring_seq: u64, now: Instant) -> Self {
        let mut srp = Srp {
            p: params,
            me,
            now,
            state: MembState::Gather,
            left: false,
            // Sequence 0 is never a real ring's, so our pre-ring "ring" is ours alone.
            ring_id: RingId::initial(me, 0),
            memb: NodeSet::single(me),
            ring_seq_high: ring_seq,
            store: RingStore::default(),
            packer: Packer::default(),
            unpacker: Unpacker::default(),
            token_seq_seen: 0,
            last_sent: None,
            prev_token_aru: 0,
            prev_token_seq: 0,
            miss_counts: BTreeMap::new(),
            aru_stuck: 0,
            my_last_sent: 0,
            my_last_backlog: 0,
            idle_visits: 0,
            held_token: None,
            pass_held_due: false,
            linger_deadline: now,
            cancel_seen: false,
            receivers_behind: false,
            receivers_deadline: now,
            hold_cancel_sent: false,
            next_merge_detect: now,
            proc_set: NodeSet::single(me),
            fail_set: NodeSet::new(),
            joins: BTreeMap::new(),
            commit: None,
            recovery: None,
            timers: [None; TIMER_COUNT],
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        };
        srp.gather_enter("startup");
        srp
    }

    /// A frame from the network. Frames that fail to decode are counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, data: Bytes) {
        self.now = self.now.max(now);
        if self.left {
            return;
        }
        self.stats.frames_received += 1;
        let frame = match Frame::decode(&data) {
            Ok(f) => f,
            Err(e) => {
                self.stats.bad_frames += 1;
                debug!(target: "totem", "dropping bad frame ({} bytes): {e}", data.len());
                return;
            }
        };
        if frame.sender() == self.me && !matches!(frame, Frame::Token(_) | Frame::Commit(_)) {
            // Our own multicast looped back: we stored it when we sent it.
            return;
        }
        match frame {
            Frame::Token(t) => self.on_token(t),
            Frame::Mcast(m) => self.on_mcast(m, data),
            Frame::Join(j) => self.on_join(j),
            Frame::Commit(c) => self.on_commit_token(c),
            Frame::MergeDetect(m) => self.on_merge_detect(m.sender, m.ring_id),
            Frame::TokenHoldCancel(t) => self.on_token_hold_cancel(t.ring_id),
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.left {
            return;
        }
        for timer in TIMERS {
            if let Some(at) = self.timers[timer as usize] {
                if at <= self.now {
                    self.timers[timer as usize] = None;
                    self.on_timer(timer);
                }
            }
        }
    }

    /// Queues `msg` for multicast to the ring, in agreed order, ourselves included.
    pub fn mcast(&mut self, msg: Bytes) -> Result<(), McastError> {
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(McastError::TooLarge);
        }
        if self.packer.len() >= self.p.send_queue_max_msgs as usize
            || self.packer.queued_bytes() + msg.len() > self.p.send_queue_max_bytes as usize
        {
            return Err(McastError::QueueFull);
        }
        let was_empty = self.packer.is_empty();
        self.packer.push(msg);
        if was_empty && self.state == MembState::Operational && !self.left {
            self.wake_idle_ring();
        }
        Ok(())
    }

    /// Tells Totem whether this node's applications are behind on their deliveries
    /// (the driver's judgement, e.g. a client's unread output over a high-water mark).
    /// While they are, the token waits here after each visit until
    /// [`crate::Params::receivers_visit_us`] (half the token retransmit timeout) after
    /// it arrived, and no longer than the token timeout over twice the members, so
    /// that a ring of members all behind still turns well within the token timeout:
    /// the whole ring slows to what the slowest reader takes, instead of its backlog
    /// growing without bound. When they catch up, a waiting token goes on at the next
    /// `poll_transmit` (or waits on in a linger, if the visit may still linger).
    pub fn set_receivers_behind(&mut self, now: Instant, behind: bool) {
        self.now = self.now.max(now);
        if self.receivers_behind == behind {
            return;
        }
        self.receivers_behind = behind;
        if !behind && matches!(self.held_token, Some((_, Holding::Receivers))) {
            self.pass_held_due = true;
        }
    }

    /// What the driver last told [`Srp::set_receivers_behind`].
    pub fn receivers_behind(&self) -> bool {
        self.receivers_behind
    }

    /// Announces that this node leaves the ring on purpose, so the others reconfigure at
    /// once instead of waiting for the token to be lost. The node is inert afterwards.
    pub fn leave(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.left {
            return;
        }
        debug!(target: "totem", "{}: leaving ring {}", self.me, self.ring_id);
        let mut proc_set = self.memb.clone();
        proc_set.union_with(&self.proc_set);
        let join = Frame::Join(crate::wire::Join {
            sender: self.me,
            ring_seq: self.ring_seq_high,
            proc_set,
            fail_set: NodeSet::single(self.me),
        })
        .to_bytes();
        // Sent a few times: it is the only notice the others get before the token
        // timeout, and a datagram may be lost.
        for _ in 0..3 {
            self.send(Dest::Multicast, join.clone());
        }
        self.left = true;
        self.timers = [None; TIMER_COUNT];
    }

    /// The next frame to put on the wire. A token held here (idle ring, lingering
    /// after our own multicasts, waiting for our receivers) that local messages are
    /// waiting for is used now: they go out in the same visit (the token then goes on,
    /// or is kept again if the visit may still linger or wait).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.pass_held_due {
            self.now = self.now.max(now);
            self.pass_held_token(true);
        }
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest timer deadline; call `handle_timeout` then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The installed ring (before the first one: our own pre-ring identity).
    pub fn ring_id(&self) -> RingId {
        self.ring_id
    }

    /// Members of the installed ring.
    pub fn members(&self) -> &NodeSet {
        &self.memb
    }

    pub fn state(&self) -> MembState {
        self.state
    }

    /// Highest ring sequence number seen: persist it, pass it to `new` after a restart.
    pub fn ring_seq_high(&self) -> u64 {
        self.ring_seq_high
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Messages waiting in the send queue.
    pub fn send_queue_len(&self) -> usize {
        self.packer.len()
    }

    /// Whether `mcast` of a message of `len` bytes would be accepted now.
    pub fn can_mcast(&self, len: usize) -> bool {
        len <= MAX_MESSAGE_LEN
            && self.packer.len() < self.p.send_queue_max_msgs as usize
            && self.packer.queued_bytes() + len <= self.p.send_queue_max_bytes as usize
    }

    pub(crate) fn set_timer(&mut self, timer: Timer, after_us: u64) {
        self.timers[timer as usize] = Some(self.now.plus_micros(after_us));
    }

    pub(crate) fn cancel_timer(&mut self, timer: Timer) {
        self.timers[timer as usize] = None;
    }

    pub(crate) fn send(&mut self, dest: Dest, data: Bytes) {
        self.stats.frames_sent += 1;
        self.transmits.push_back(Transmit { dest, data });
    }

    /// Sends a token or commit token to `to` and remembers it for retransmission.
    pub(crate) fn send_token_frame(&mut self, to: NodeId, data: Bytes) {
        self.send(Dest::Unicast(to), data.clone());
        self.last_sent = Some((to, data));
        self.set_timer(Timer::TokenRetransmit, self.p.token_retransmit_us);
    }

    fn on_timer(&mut self, timer: Timer) {
        trace!(target: "totem", "{}: timer {timer:?} in {:?}", self.me, self.state);
        match timer {
            Timer::TokenLoss => self.on_token_loss(),
            Timer::TokenRetransmit => {
                if let Some((to, data)) = self.last_sent.clone() {
                    self.stats.token_retransmits += 1;
                    self.send(Dest::Unicast(to), data);
                    self.set_timer(Timer::TokenRetransmit, self.p.token_retransmit_us);
                }
            }
            Timer::Hold => self.pass_held_token(true),
            Timer::Join => {
                if self.state == MembState::Gather {
                    self.send_join();
                    self.set_timer(Timer::Join, self.p.join_us);
                    self.check_consensus();
                }
            }
            Timer::Consensus => self.on_consensus_timeout(),
        }
    }
}
