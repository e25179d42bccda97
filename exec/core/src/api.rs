//! What a handler or hook may do, and how it is recorded.
//!
//! A service never performs IO: it asks the [`Api`] to multicast, answer, call back,
//! disconnect or set a timer, and the request is recorded. The daemon (or the simulator)
//! drains the recorded [`Effect`]s with [`crate::Registry::poll_effect`] and carries them
//! out, so the very same service code runs in both.

use std::collections::{BTreeMap, VecDeque};

use ais_proto::{Encode, MsgId, SaError, ServiceId};
use bytes::{BufMut, Bytes, BytesMut};
use log::warn;
use totem::{Instant, NodeId, NodeSet, RingId, MAX_MESSAGE_LEN};

use crate::host::HostStatus;
use crate::quorum::{QuorumPolicy, QuorumState};
use crate::registry::Stats;
use crate::service::ConnId;

/// Something the daemon must do on a service's behalf, in the order recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Multicast to the ring: hand `msg` to `Srp::mcast` as it is. It already starts with
    /// the 4-byte encoding of `id`. Never drop one: if Totem's queue is full, keep it (in
    /// order with later ones) and retry; pass `mcast_room == 0` to
    /// [`crate::Registry::lib_request`] meanwhile.
    Mcast { id: MsgId, msg: Bytes },
    /// The answer to request `id` of connection `conn`.
    Response {
        conn: ConnId,
        id: u32,
        error: SaError,
        body: Bytes,
    },
    /// An asynchronous callback `id` for `conn`'s dispatch. `id` is the service's
    /// callback id without `ais_proto::ipc::CALLBACK_FLAG`: the daemon sets the flag when
    /// it frames it (with error `Ok`).
    ///
    /// The callback's body is `body` followed by `tail`: a service that forwards a large
    /// payload it was given (a delivered message) puts it in `tail`, so that it reaches
    /// the client's socket without being copied into a new buffer first. Code that
    /// decodes callbacks joins the two with [`callback_body`].
    Dispatch {
        conn: ConnId,
        id: u32,
        body: Bytes,
        tail: Bytes,
    },
    /// Close `conn`; the daemon then calls [`crate::Registry::lib_disconnect`].
    Disconnect { conn: ConnId },
}

/// The whole body of a callback effect: `body` followed by `tail` (a copy only when
/// `tail` is not empty).
pub fn callback_body(body: &Bytes, tail: &Bytes) -> Bytes {
    if tail.is_empty() {
        return body.clone();
    }
    let mut whole = bytes::BytesMut::with_capacity(body.len() + tail.len());
    whole.extend_from_slice(body);
    whole.extend_from_slice(tail);
    whole.freeze()
}

/// A service timer, from [`Api::timer_add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(pub u64);

/// Service timers: deadline order for expiry, id lookup for deletion.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    next_id: u64,
    by_deadline: BTreeMap<(Instant, u64), (ServiceId, u64)>,
    deadline_of: BTreeMap<u64, Instant>,
}

impl Timers {
    pub(crate) fn earliest(&self) -> Option<Instant> {
        self.by_deadline.keys().next().map(|&(at, _)| at)
    }

    /// Removes and returns every timer due at `now`, earliest first.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(ServiceId, u64)> {
        let mut due = Vec::new();
        while let Some((&(at, id), _)) = self.by_deadline.first_key_value() {
            if at > now {
                break;
            }
            if let Some(entry) = self.by_deadline.remove(&(at, id)) {
                self.deadline_of.remove(&id);
                due.push(entry);
            }
        }
        due
    }
}

/// The executive as a service sees it. Handed to every handler and hook.
///
/// Besides recording effects it answers a few questions: this node's id, the current
/// regular configuration, and (in library handlers and timer callbacks only) the time.
#[derive(Debug)]
pub struct Api {
    node_id: NodeId,
    ring_id: Option<RingId>,
    members: NodeSet,
    /// `Some` only while a library handler or a timer callback runs.
    now: Option<Instant>,
    /// The latest time the registry was given; timers added where `now` is `None` count
    /// from it.
    clock: Instant,
    /// The service whose code is running: `mcast` and timers belong to it.
    service: ServiceId,
    effects: VecDeque<Effect>,
    pub(crate) timers: Timers,
    pub(crate) stats: Stats,
    /// How votes are counted, and the quorum of the current regular configuration.
    pub(crate) quorum_policy: QuorumPolicy,
    pub(crate) quorum: QuorumState,
    /// The daemon's facts about this host ([`crate::host`]).
    pub(crate) host: HostStatus,
    /// Services that asked for a fresh [`HostStatus`], in id order.
    pub(crate) host_wanted: Vec<ServiceId>,
}

impl Api {
    pub(crate) fn new(node_id: NodeId) -> Api {
        Api {
            node_id,
            ring_id: None,
            members: NodeSet::new(),
            now: None,
            clock: Instant(0),
            service: ServiceId::SYNC,
            effects: VecDeque::new(),
            timers: Timers::default(),
            stats: Stats::default(),
            quorum_policy: QuorumPolicy::default(),
            quorum: QuorumState::NONE,
            host: HostStatus::default(),
            host_wanted: Vec::new(),
        }
    }

    // ----- for services -----

    /// Multicasts executive message `func` of the running service with `body`, to every
    /// node including this one, in agreed order. `Err(TooBig)` (nothing sent) if the
    /// message would exceed Totem's largest message.
    pub fn mcast(&mut self, func: u16, body: &[u8]) -> Result<(), SaError> {
        let id = MsgId::new(self.service, func);
        let mut msg = BytesMut::with_capacity(MsgId::LEN + body.len());
        id.encode(&mut msg);
        msg.put_slice(body);
        self.push_mcast(id, msg)
    }

    /// [`Api::mcast`] of an encodable message, encoded straight behind the header.
    pub fn mcast_msg<T: Encode + ?Sized>(&mut self, func: u16, body: &T) -> Result<(), SaError> {
        let id = MsgId::new(self.service, func);
        let mut msg = BytesMut::with_capacity(MsgId::LEN + body.size_hint());
        id.encode(&mut msg);
        body.encode(&mut msg);
        self.push_mcast(id, msg)
    }

    pub(crate) fn mcast_as(&mut self, service: ServiceId, func: u16, body: &[u8]) {
        let saved = std::mem::replace(&mut self.service, service);
        let _ = self.mcast(func, body);
        self.service = saved;
    }

    fn push_mcast(&mut self, id: MsgId, msg: BytesMut) -> Result<(), SaError> {
        if msg.len() > MAX_MESSAGE_LEN {
            self.stats.mcast_too_large += 1;
            warn!(target: "exec", "service {}: multicast {id:?} of {} bytes is above Totem's maximum {MAX_MESSAGE_LEN}; not sent", self.service, msg.len());
            return Err(SaError::TooBig);
        }
        self.effects.push_back(Effect::Mcast {
            id,
            msg: msg.freeze(),
        });
        Ok(())
    }

    /// Answers request `id` of `conn` (normally the request being handled, or one
    /// whose answer waited for its executive message).
    pub fn response(&mut self, conn: ConnId, id: u32, error: SaError, body: Bytes) {
        self.effects.push_back(Effect::Response {
            conn,
            id,
            error,
            body,
        });
    }

    /// Sends callback `id` (without the IPC callback flag) to `conn`.
    pub fn dispatch(&mut self, conn: ConnId, id: u32, body: Bytes) {
        self.dispatch_with_tail(conn, id, body, Bytes::new());
    }

    /// Sends callback `id` to `conn` with the body `body` followed by `tail`, which is
    /// passed on as it is (see [`Effect::Dispatch`]).
    pub fn dispatch_with_tail(&mut self, conn: ConnId, id: u32, body: Bytes, tail: Bytes) {
        self.effects.push_back(Effect::Dispatch {
            conn,
            id,
            body,
            tail,
        });
    }

    /// Asks the daemon to close `conn` (a misbehaving client).
    pub fn disconnect(&mut self, conn: ConnId) {
        self.effects.push_back(Effect::Disconnect { conn });
    }

    /// Calls [`crate::Service::timer`] with `data` after `after_us` microseconds, counted
    /// from [`Api::now`] where there is one, else from the latest time the registry was
    /// given. Timers are local: never base replicated decisions on them.
    pub fn timer_add(&mut self, after_us: u64, data: u64) -> TimerId {
        let at = self.now.unwrap_or(self.clock).plus_micros(after_us);
        let id = self.timers.next_id;
        self.timers.next_id += 1;
        self.timers
            .by_deadline
            .insert((at, id), (self.service, data));
        self.timers.deadline_of.insert(id, at);
        TimerId(id)
    }

    /// Cancels a timer of the running service; false if it already expired, was
    /// cancelled, or belongs to another service.
    pub fn timer_del(&mut self, timer: TimerId) -> bool {
        let Some(&at) = self.timers.deadline_of.get(&timer.0) else {
            return false;
        };
        match self.timers.by_deadline.get(&(at, timer.0)) {
            Some(&(owner, _)) if owner == self.service => {
                self.timers.by_deadline.remove(&(at, timer.0));
                self.timers.deadline_of.remove(&timer.0);
                true
            }
            _ => false,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Members of the current regular configuration (empty before the first one). It
    /// changes at regular configurations only: between a transitional configuration and
    /// the next regular one it still names the old ring's members.
    pub fn members(&self) -> &NodeSet {
        &self.members
    }

    /// The current regular configuration's ring (`None` before the first one). Tag
    /// synchronisation messages with it: a message multicast in one ring may be delivered
    /// in the next.
    pub fn ring_id(&self) -> Option<RingId> {
        self.ring_id
    }

    /// The time, in library handlers and timer callbacks; `None` everywhere else, because
    /// executive handlers, configuration changes and sync hooks must decide alike on
    /// every node.
    pub fn now(&self) -> Option<Instant> {
        self.now
    }

    /// Whether the current regular configuration holds a quorum (false before the
    /// first). The same on every member of the configuration; see [`crate::quorum`].
    pub fn is_quorate(&self) -> bool {
        self.quorum.quorate
    }

    /// The quorum of the current regular configuration, with its votes.
    pub fn quorum(&self) -> &QuorumState {
        &self.quorum
    }

    /// The votes `node` holds under this node's quorum policy.
    pub fn votes_of(&self, node: NodeId) -> u32 {
        self.quorum_policy.votes_of(node)
    }

    /// The daemon's latest facts about this host (names, addresses, counters): local,
    /// possibly stale, never to be used in a replicated decision. Call
    /// [`Api::want_host_status`] for fresh addresses and counters.
    pub fn host_status(&self) -> &HostStatus {
        &self.host
    }

    /// Asks the daemon for a fresh [`HostStatus`]; the running service's
    /// [`crate::Service::host_status`] hook is called once it is in (soon after the
    /// current input, never from inside this call). Asking twice before then calls it
    /// once.
    pub fn want_host_status(&mut self) {
        if let Err(pos) = self.host_wanted.binary_search(&self.service) {
            self.host_wanted.insert(pos, self.service);
        }
    }

    /// Replaces the table of names nodes announced for themselves
    /// ([`HostStatus::announced_names`]); the membership service calls it when it
    /// installs a view. Local, like the rest of [`HostStatus`].
    pub fn set_announced_names(&mut self, names: BTreeMap<NodeId, String>) {
        self.host.announced_names = names;
    }

    /// The service whose code is running.
    pub fn service(&self) -> ServiceId {
        self.service
    }

    // ----- for the registry -----

    pub(crate) fn enter(&mut self, service: ServiceId, now: Option<Instant>) {
        self.service = service;
        self.now = now;
    }

    pub(crate) fn leave(&mut self) {
        self.now = None;
    }

    pub(crate) fn advance_clock(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    pub(crate) fn set_configuration(&mut self, ring_id: RingId, members: NodeSet) {
        self.ring_id = Some(ring_id);
        self.members = members;
    }

    pub(crate) fn pop_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub(crate) fn pending_effects(&self) -> usize {
        self.effects.len()
    }
}
