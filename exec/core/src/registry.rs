//! The registry: the services of one node, the connections bound to them, and the routing
//! of every input (library requests, Totem deliveries, configuration changes, timers) to
//! the right handler. What the handlers ask for comes out of [`Registry::poll_effect`].
//!
//! Driving it (the daemon and the simulator do the same):
//!
//! 1. `register` every service once, before anything else;
//! 2. feed inputs: [`Registry::handle_event`] (or `deliver` / `confchg`) for each Totem
//!    event in the order `Srp::poll_event` gives them; `lib_connect`, `lib_request`,
//!    `lib_disconnect` for IPC; `handle_timeout` when [`Registry::poll_timeout`] is due;
//! 3. after each input drain [`Registry::poll_effect`] until `None` and carry the effects
//!    out in order (multicasts to `Srp::mcast`, kept in a queue while it is full).

use std::any::Any;
use std::collections::BTreeMap;

use ais_proto::{Decode, MsgId, SaError, SaVersion, ServiceId};
use bytes::Bytes;
use log::{debug, info, warn};
use totem::{ConfChange, ConfKind, Event, Instant, NodeId, NodeSet, RingId};

use crate::api::{Api, Effect};
use crate::host::{Counter, HostStatus};
use crate::quorum::{QuorumPolicy, QuorumState};
use crate::service::{check_tables, ConnId, ConnInfo, Service, SyncProgress};
use crate::sync::SyncState;

/// Counters for operators and tests; they only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Library requests handed to a handler, per (service, request id).
    pub lib_requests: BTreeMap<(ServiceId, u32), u64>,
    /// Delivered executive messages handed to a handler (or, for `ServiceId::SYNC`, to
    /// the sync framework), per message id.
    pub exec_messages: BTreeMap<MsgId, u64>,
    /// Requests with an id outside the service's table, answered `InvalidParam`.
    pub lib_unknown_id: u64,
    /// Requests answered `TryAgain` because Totem's send queue was full.
    pub lib_try_again_flow: u64,
    /// Requests answered `TryAgain` because the sync framework was running.
    pub lib_try_again_sync: u64,
    /// Requests from a connection the registry does not know, ignored.
    pub lib_unknown_conn: u64,
    /// Delivered messages dropped: shorter than a message id, or naming a service or
    /// function that does not exist here.
    pub dropped_messages: u64,
    /// Effects for connections that had closed, dropped.
    pub dropped_effects: u64,
    /// Multicasts refused by [`Api::mcast`] for being larger than Totem's maximum.
    pub mcast_too_large: u64,
    pub sync_rounds_started: u64,
    pub sync_rounds_completed: u64,
    pub sync_rounds_aborted: u64,
}

/// A [`Service`] with its associated constants turned into methods, so that services of
/// different types can sit in one table.
pub(crate) trait DynService {
    fn id(&self) -> ServiceId;
    fn name(&self) -> &'static str;
    fn version(&self) -> SaVersion;
    fn syncs(&self) -> bool;
    /// `(flow_control, needs_sync)` of library handler `id`, if it exists.
    fn lib_handler(&self, id: u32) -> Option<(bool, bool)>;
    fn call_lib(&mut self, api: &mut Api, id: u32, conn: ConnId, body: Bytes);
    /// False if there is no executive handler `func`.
    fn call_exec(&mut self, api: &mut Api, func: u16, origin: NodeId, body: Bytes) -> bool;
    fn exec_init(&mut self, api: &mut Api);
    fn lib_init(&mut self, api: &mut Api, conn: ConnId, info: ConnInfo) -> Result<(), SaError>;
    fn lib_exit(&mut self, api: &mut Api, conn: ConnId);
    fn confchg(&mut self, api: &mut Api, change: &ConfChange);
    fn sync_init(&mut self, api: &mut Api);
    fn sync_process(&mut self, api: &mut Api) -> SyncProgress;
    fn sync_activate(&mut self, api: &mut Api);
    fn sync_abort(&mut self, api: &mut Api);
    fn timer(&mut self, api: &mut Api, data: u64);
    fn host_status(&mut self, api: &mut Api);
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

struct Holder<S>(S);

impl<S: Service> DynService for Holder<S> {
    fn id(&self) -> ServiceId {
        S::ID
    }
    fn name(&self) -> &'static str {
        S::NAME
    }
    fn version(&self) -> SaVersion {
        S::VERSION
    }
    fn syncs(&self) -> bool {
        S::SYNC
    }
    fn lib_handler(&self, id: u32) -> Option<(bool, bool)> {
        let h = S::LIB.get(usize::try_from(id).ok()?)?;
        Some((h.flow_control, h.needs_sync))
    }
    fn call_lib(&mut self, api: &mut Api, id: u32, conn: ConnId, body: Bytes) {
        if let Some(h) = usize::try_from(id).ok().and_then(|i| S::LIB.get(i)) {
            (h.handler)(&mut self.0, api, conn, body);
        }
    }
    fn call_exec(&mut self, api: &mut Api, func: u16, origin: NodeId, body: Bytes) -> bool {
        match S::EXEC.get(usize::from(func)) {
            Some(h) => {
                (h.handler)(&mut self.0, api, origin, body);
                true
            }
            None => false,
        }
    }
    fn exec_init(&mut self, api: &mut Api) {
        self.0.exec_init(api)
    }
    fn lib_init(&mut self, api: &mut Api, conn: ConnId, info: ConnInfo) -> Result<(), SaError> {
        self.0.lib_init(api, conn, info)
    }
    fn lib_exit(&mut self, api: &mut Api, conn: ConnId) {
        self.0.lib_exit(api, conn)
    }
    fn confchg(&mut self, api: &mut Api, change: &ConfChange) {
        self.0.confchg(api, change)
    }
    fn sync_init(&mut self, api: &mut Api) {
        self.0.sync_init(api)
    }
    fn sync_process(&mut self, api: &mut Api) -> SyncProgress {
        self.0.sync_process(api)
    }
    fn sync_activate(&mut self, api: &mut Api) {
        self.0.sync_activate(api)
    }
    fn sync_abort(&mut self, api: &mut Api) {
        self.0.sync_abort(api)
    }
    fn timer(&mut self, api: &mut Api, data: u64) {
        self.0.timer(api, data)
    }
    fn host_status(&mut self, api: &mut Api) {
        self.0.host_status(api)
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.0
    }
}

/// The services of one node and everything that reaches them; see the module doc.
pub struct Registry {
    pub(crate) api: Api,
    /// Sorted by service id: the sync framework visits them in this order.
    pub(crate) services: Vec<Box<dyn DynService>>,
    conns: BTreeMap<ConnId, ServiceId>,
    pub(crate) sync: SyncState,
}

impl Registry {
    pub fn new(node_id: NodeId) -> Registry {
        Registry {
            api: Api::new(node_id),
            services: Vec::new(),
            conns: BTreeMap::new(),
            sync: SyncState::Waiting,
        }
    }

    /// How votes are counted ([`crate::quorum`]); set it before the first event. Until
    /// then quorum is not enforced. Every node must be given the same policy.
    pub fn set_quorum_policy(&mut self, policy: QuorumPolicy) {
        if policy.expected_votes.is_none() {
            info!(target: "quorum", "no expected votes configured: quorum is not enforced, every partition is quorate");
        }
        self.api.quorum_policy = policy;
    }

    pub fn quorum_policy(&self) -> &QuorumPolicy {
        &self.api.quorum_policy
    }

    /// Adds a service and calls its `exec_init`. Register every service before feeding
    /// any event. Panics (a programming error, not an input) if the tables are not dense
    /// or the id is taken or is [`ServiceId::SYNC`].
    pub fn register<S: Service>(&mut self, service: S) {
        check_tables::<S>();
        let pos = match self.services.binary_search_by_key(&S::ID, |s| s.id()) {
            Ok(_) => panic!("service id {} registered twice ({})", S::ID, S::NAME),
            Err(pos) => pos,
        };
        self.services.insert(pos, Box::new(Holder(service)));
        self.api.enter(S::ID, None);
        self.services[pos].exec_init(&mut self.api);
        self.api.leave();
        debug!(target: "exec", "registered service {} ({}) version {}", S::NAME, S::ID, S::VERSION);
    }

    pub(crate) fn index_of(&self, id: ServiceId) -> Option<usize> {
        self.services.binary_search_by_key(&id, |s| s.id()).ok()
    }

    // ----- queries -----

    pub fn node_id(&self) -> NodeId {
        self.api.node_id()
    }

    /// The current regular configuration's ring, `None` before the first.
    pub fn ring_id(&self) -> Option<RingId> {
        self.api.ring_id()
    }

    /// Members of the current regular configuration.
    pub fn members(&self) -> &NodeSet {
        self.api.members()
    }

    /// The version a registered service implements (for the daemon's negotiation).
    pub fn service_version(&self, id: ServiceId) -> Option<SaVersion> {
        self.index_of(id).map(|i| self.services[i].version())
    }

    /// (id, name, version) of every registered service, in id order.
    pub fn services(&self) -> impl Iterator<Item = (ServiceId, &'static str, SaVersion)> + '_ {
        self.services
            .iter()
            .map(|s| (s.id(), s.name(), s.version()))
    }

    /// The registered service of type `S`, to inspect its state (tests, operator
    /// queries).
    pub fn service<S: Service>(&self) -> Option<&S> {
        let i = self.index_of(S::ID)?;
        self.services[i].as_any().downcast_ref::<S>()
    }

    pub fn service_mut<S: Service>(&mut self) -> Option<&mut S> {
        let i = self.index_of(S::ID)?;
        self.services[i].as_any_mut().downcast_mut::<S>()
    }

    /// The service `conn` is bound to, if it is connected.
    pub fn conn_service(&self, conn: ConnId) -> Option<ServiceId> {
        self.conns.get(&conn).copied()
    }

    /// Whether the sync framework has finished for the current regular configuration
    /// (false before the first one and from a transitional configuration until the
    /// next round completes). Requests with `needs_sync` get `TryAgain` while false.
    pub fn is_synced(&self) -> bool {
        matches!(self.sync, SyncState::Done)
    }

    pub fn stats(&self) -> &Stats {
        &self.api.stats
    }

    /// The quorum of the current regular configuration ([`QuorumState::NONE`] before the
    /// first).
    pub fn quorum(&self) -> &QuorumState {
        &self.api.quorum
    }

    // ----- host facts (see crate::host) -----

    /// Node names from the configuration, this node's included. Static: set once at
    /// start.
    pub fn set_node_names(&mut self, names: BTreeMap<NodeId, String>) {
        self.api.host.names = names;
    }

    /// Whether a service waits for a fresh host status: the daemon then calls
    /// [`Registry::refresh_host_status`].
    pub fn host_status_wanted(&self) -> bool {
        !self.api.host_wanted.is_empty()
    }

    /// A fresh snapshot of addresses and counters; the services that asked for it have
    /// their `host_status` hook called, in id order.
    pub fn refresh_host_status(
        &mut self,
        addresses: BTreeMap<NodeId, String>,
        counters: Vec<Counter>,
    ) {
        self.api.host.addresses = addresses;
        self.api.host.counters = counters;
        for service in std::mem::take(&mut self.api.host_wanted) {
            if let Some(i) = self.index_of(service) {
                self.api.enter(service, None);
                self.services[i].host_status(&mut self.api);
                self.api.leave();
            }
        }
    }

    pub fn host_status(&self) -> &HostStatus {
        &self.api.host
    }

    // ----- library connections -----

    /// Binds `conn` to `service` and calls its `lib_init`. `Err(NotExist)` for a service
    /// not registered, `Err(Exist)` for a connection already bound, or `lib_init`'s error;
    /// the connection is not bound after an error.
    pub fn lib_connect(
        &mut self,
        conn: ConnId,
        service: ServiceId,
        info: ConnInfo,
    ) -> Result<(), SaError> {
        if self.conns.contains_key(&conn) {
            warn!(target: "exec", "{conn} connected twice");
            return Err(SaError::Exist);
        }
        let Some(i) = self.index_of(service) else {
            debug!(target: "exec", "{conn}: no service {service}");
            return Err(SaError::NotExist);
        };
        self.conns.insert(conn, service);
        self.api.enter(service, None);
        let r = self.services[i].lib_init(&mut self.api, conn, info);
        self.api.leave();
        if r.is_err() {
            self.conns.remove(&conn);
        }
        r
    }

    /// Routes request `id` of `conn` into its service's library table.
    ///
    /// `mcast_room` is how many more messages Totem would accept now (0 while the
    /// daemon holds multicasts it could not hand over yet). Unknown id: a `Response`
    /// with `InvalidParam`; `needs_sync` while not synced, or `flow_control` with no
    /// room: a `Response` with `TryAgain`; the handler is not called in these cases.
    pub fn lib_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: u32,
        body: Bytes,
        mcast_room: usize,
    ) {
        self.api.advance_clock(now);
        let Some(&service) = self.conns.get(&conn) else {
            self.api.stats.lib_unknown_conn += 1;
            warn!(target: "exec", "request {id} from {conn}, which is not connected; ignored");
            return;
        };
        let Some(i) = self.index_of(service) else {
            return;
        };
        let synced = self.is_synced();
        let error = match self.services[i].lib_handler(id) {
            None => {
                self.api.stats.lib_unknown_id += 1;
                warn!(target: "exec", "{conn}: service {} has no request {id}", self.services[i].name());
                SaError::InvalidParam
            }
            Some((_, true)) if !synced => {
                self.api.stats.lib_try_again_sync += 1;
                SaError::TryAgain
            }
            Some((true, _)) if mcast_room == 0 => {
                self.api.stats.lib_try_again_flow += 1;
                SaError::TryAgain
            }
            Some(_) => {
                *self
                    .api
                    .stats
                    .lib_requests
                    .entry((service, id))
                    .or_default() += 1;
                self.api.enter(service, Some(now));
                self.services[i].call_lib(&mut self.api, id, conn, body);
                self.api.leave();
                return;
            }
        };
        self.api.response(conn, id, error, Bytes::new());
    }

    /// Whether [`Registry::lib_request`] would refuse request `id` of `conn` with
    /// `TryAgain` for a passing reason (`flow_control` with no `mcast_room`, or
    /// `needs_sync` while sync runs). The daemon asks this first and, when true, leaves
    /// the request (and everything behind it on that connection) waiting in the
    /// connection instead: a client may then send requests without waiting for each
    /// answer, knowing none is refused for a reason that would have passed (DESIGN.md
    /// §5, backpressure). False for unknown connections and ids: those are answered.
    pub fn lib_request_must_wait(&self, conn: ConnId, id: u32, mcast_room: usize) -> bool {
        let Some(&service) = self.conns.get(&conn) else {
            return false;
        };
        let Some(i) = self.index_of(service) else {
            return false;
        };
        match self.services[i].lib_handler(id) {
            Some((flow_control, needs_sync)) => {
                (needs_sync && !self.is_synced()) || (flow_control && mcast_room == 0)
            }
            None => false,
        }
    }

    /// `conn` closed: unbinds it and calls its service's `lib_exit`. Effects for it are
    /// dropped from now on. No-op for a connection that is not bound.
    pub fn lib_disconnect(&mut self, conn: ConnId) {
        let Some(service) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(i) = self.index_of(service) {
            self.api.enter(service, None);
            self.services[i].lib_exit(&mut self.api, conn);
            self.api.leave();
        }
    }

    // ----- Totem -----

    /// One Totem event, in the order `Srp::poll_event` gave it.
    pub fn handle_event(&mut self, event: Event) {
        match event {
            Event::Deliver { origin, msg } => self.deliver(origin, msg),
            Event::ConfChange(change) => self.confchg(&change),
        }
    }

    /// A message Totem delivered: its `MsgId` picks the service and the executive
    /// handler. Short messages and unknown services or functions are dropped, counted and
    /// logged: a newer peer may send what this node does not know.
    pub fn deliver(&mut self, origin: NodeId, msg: Bytes) {
        let mut body = msg;
        let advanced = match MsgId::decode(&mut body) {
            Err(_) => {
                self.api.stats.dropped_messages += 1;
                warn!(target: "exec", "dropping a {}-byte message from node {origin}: shorter than a message id", body.len());
                false
            }
            Ok(id) if id.service == ServiceId::SYNC => {
                *self.api.stats.exec_messages.entry(id).or_default() += 1;
                self.on_sync_message(origin, id.func, body)
            }
            Ok(id) => {
                match self.index_of(id.service) {
                    Some(i) => {
                        self.api.enter(id.service, None);
                        let handled =
                            self.services[i].call_exec(&mut self.api, id.func, origin, body);
                        self.api.leave();
                        if handled {
                            *self.api.stats.exec_messages.entry(id).or_default() += 1;
                        } else {
                            self.api.stats.dropped_messages += 1;
                            warn!(target: "exec", "dropping message {}:{} from node {origin}: service {} has no such function", id.service, id.func, self.services[i].name());
                        }
                    }
                    None => {
                        self.api.stats.dropped_messages += 1;
                        warn!(target: "exec", "dropping message {}:{} from node {origin}: no such service", id.service, id.func);
                    }
                }
                false
            }
        };
        if !advanced {
            self.sync_continue();
        }
    }

    /// A configuration change: every service's `confchg` in id order; a transitional one
    /// first aborts a sync round in progress, a regular one is followed by a new round.
    pub fn confchg(&mut self, change: &ConfChange) {
        match change.kind {
            ConfKind::Transitional => {
                self.sync_abort_round();
                self.confchg_hooks(change);
            }
            ConfKind::Regular => {
                self.sync_abort_round();
                let previous = self.api.members().clone();
                self.api
                    .set_configuration(change.ring_id, change.members.clone());
                self.update_quorum(change, &previous);
                self.confchg_hooks(change);
                self.sync_start();
            }
        }
    }

    /// Re-evaluates quorum for a new regular configuration and logs a change of it with
    /// its cause: who left, who joined, votes against needed.
    fn update_quorum(&mut self, change: &ConfChange, previous: &NodeSet) {
        let before = self.api.quorum;
        let now = self.api.quorum_policy.evaluate(&change.members);
        self.api.quorum = now;
        let left = previous.difference(&change.members);
        let joined = change.members.difference(previous);
        // A regular configuration always has a member, so NONE means "the first".
        let first = before == QuorumState::NONE;
        if first || now.quorate != before.quorate {
            let what = match (now.quorate, first) {
                (true, true) => "quorate",
                (false, true) => "not quorate",
                (true, false) => "quorum gained",
                (false, false) => "quorum lost",
            };
            info!(target: "quorum", "{what} in configuration {}: members {} (left {left}, joined {joined}): {now}", change.ring_id, change.members);
        } else if now != before {
            debug!(target: "quorum", "configuration {}: still {}quorate: {now}", change.ring_id, if now.quorate { "" } else { "not " });
        }
    }

    fn confchg_hooks(&mut self, change: &ConfChange) {
        for s in &mut self.services {
            self.api.enter(s.id(), None);
            s.confchg(&mut self.api, change);
        }
        self.api.leave();
    }

    // ----- timers and effects -----

    /// Runs every service timer due at `now` (those added by these callbacks wait for
    /// the next call). Also moves the registry's clock forward: the daemon may call it
    /// on every turn.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.api.advance_clock(now);
        for (service, data) in self.api.timers.take_due(now) {
            if let Some(i) = self.index_of(service) {
                self.api.enter(service, Some(now));
                self.services[i].timer(&mut self.api, data);
                self.api.leave();
            }
        }
    }

    /// The earliest service timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.api.timers.earliest()
    }

    /// The next effect to carry out, in the order recorded. Effects for connections that
    /// are no longer bound are dropped here.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        loop {
            let effect = self.api.pop_effect()?;
            let conn = match &effect {
                Effect::Mcast { .. } => return Some(effect),
                Effect::Response { conn, .. }
                | Effect::Dispatch { conn, .. }
                | Effect::Disconnect { conn } => *conn,
            };
            if self.conns.contains_key(&conn) {
                return Some(effect);
            }
            self.api.stats.dropped_effects += 1;
            debug!(target: "exec", "dropping an effect for {conn}, which has closed");
        }
    }

    /// Effects recorded and not yet polled.
    pub fn pending_effects(&self) -> usize {
        self.api.pending_effects()
    }
}
