//! What a service is: two dense handler tables (library requests, executive messages) and
//! a handful of hooks, as openais's `struct service_handler` and corosync's
//! `corosync_service_engine` describe it.

use std::fmt;

use ais_proto::{SaError, SaVersion, ServiceId};
use bytes::Bytes;
use totem::{ConfChange, NodeId};

use crate::api::Api;

/// A library connection, as the daemon numbers them: unique for the daemon's lifetime,
/// never reused, so an effect for a connection that has gone can never reach a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn{}", self.0)
    }
}

/// Who is at the other end of a connection (the daemon reads it with `SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnInfo {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What [`Service::sync_process`] says about its share of the synchronisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncProgress {
    /// Everything this node had to multicast for this round is multicast.
    Done,
    /// More to send: call again after the next delivered message. A service that answers
    /// `Continue` must have multicast something in this call, or nothing may ever be
    /// delivered to call it again.
    Continue,
}

/// One library request handler: entry `id` of [`Service::LIB`], called for requests with
/// that id from connections bound to the service.
///
/// Library handlers do no thinking: they validate, repackage and multicast (or answer
/// from local state). They may read the time ([`Api::now`] is `Some`).
pub struct LibHandler<S: ?Sized> {
    /// Must equal the entry's index in the table.
    pub id: u32,
    /// The handler multicasts (at most one message): when Totem's send queue is full the
    /// registry answers [`SaError::TryAgain`] itself and does not call it.
    pub flow_control: bool,
    /// The handler reads or changes replicated state: while the sync framework runs the
    /// registry answers [`SaError::TryAgain`] itself and does not call it.
    pub needs_sync: bool,
    pub handler: fn(&mut S, &mut Api, ConnId, Bytes),
}

/// One executive message handler: entry `id` of [`Service::EXEC`], called for every
/// message with `MsgId { service: S::ID, func: id }` Totem delivers, on every node, in
/// the same order. `NodeId` is the sender; the body follows the 4-byte `MsgId`.
///
/// Executive handlers are replicated state transitions: they may read only the service's
/// state, the message and its sender (no clock: [`Api::now`] is `None`; no randomness;
/// no iteration over a `HashMap`).
pub struct ExecHandler<S: ?Sized> {
    /// Must equal the entry's index in the table.
    pub id: u16,
    pub handler: fn(&mut S, &mut Api, NodeId, Bytes),
}

/// A service of the executive. Every hook has a default that does nothing, so a service
/// implements only what it needs. Hooks and handlers act through the [`Api`] they are
/// given: what they ask for is recorded as effects the daemon carries out afterwards.
///
/// Which hooks may read the time: library handlers and [`Service::timer`] (local events
/// with a time). Everything driven by Totem (executive handlers, `confchg`, the `sync_*`
/// hooks) sees `Api::now() == None`, because it must decide the same on every node.
pub trait Service: 'static {
    const ID: ServiceId;
    const NAME: &'static str;
    /// The version this service implements; the daemon negotiates with
    /// [`SaVersion::negotiate`] when a library connects.
    const VERSION: SaVersion;
    /// Library handlers, dense: `LIB[i].id == i`.
    const LIB: &'static [LibHandler<Self>];
    /// Executive handlers, dense: `EXEC[i].id == i`.
    const EXEC: &'static [ExecHandler<Self>];
    /// Whether the service takes part in the sync framework after each regular
    /// configuration. A service without replicated state sets it to false and saves
    /// every configuration change a barrier round; its `sync_*` hooks are never called.
    const SYNC: bool = true;

    /// Once, when the service is registered.
    fn exec_init(&mut self, api: &mut Api) {
        let _ = api;
    }

    /// A library connected to this service. An error refuses the connection (the daemon
    /// sends it to the library and closes).
    fn lib_init(&mut self, api: &mut Api, conn: ConnId, info: ConnInfo) -> Result<(), SaError> {
        let _ = (api, conn, info);
        Ok(())
    }

    /// A connection of this service closed (the library went away or the daemon closed
    /// it). Effects for `conn` made from here on are dropped.
    fn lib_exit(&mut self, api: &mut Api, conn: ConnId) {
        let _ = (api, conn);
    }

    /// A configuration change, transitional or regular, in Totem's agreed order.
    fn confchg(&mut self, api: &mut Api, change: &ConfChange) {
        let _ = (api, change);
    }

    /// The sync framework starts this service's round in a new regular configuration.
    fn sync_init(&mut self, api: &mut Api) {
        let _ = api;
    }

    /// Multicast this node's share of the state (through [`Api::mcast`]).
    fn sync_process(&mut self, api: &mut Api) -> SyncProgress {
        let _ = api;
        SyncProgress::Done
    }

    /// Every member has finished `sync_process`; every member calls this at the same
    /// point in the agreed order. Switch to the merged state.
    fn sync_activate(&mut self, api: &mut Api) {
        let _ = api;
    }

    /// The configuration changed before the round finished: drop what the round
    /// gathered. A new round starts after the next regular configuration.
    fn sync_abort(&mut self, api: &mut Api) {
        let _ = api;
    }

    /// A timer this service added with [`Api::timer_add`] expired.
    fn timer(&mut self, api: &mut Api, data: u64) {
        let _ = (api, data);
    }

    /// The fresh [`crate::HostStatus`] this service asked for with
    /// [`Api::want_host_status`] is in [`Api::host_status`]. Local, like a library
    /// handler: [`Api::now`] is `None` but nothing here may be replicated.
    fn host_status(&mut self, api: &mut Api) {
        let _ = api;
    }
}

/// Panics unless `S`'s handler tables are dense (`LIB[i].id == i`, `EXEC[i].id == i`)
/// and its id is not the executive's own [`ServiceId::SYNC`]. Every service has a unit
/// test calling it; [`crate::Registry::register`] calls it too.
pub fn check_tables<S: Service>() {
    assert!(
        S::ID != ServiceId::SYNC,
        "service {} uses ServiceId::SYNC, which the executive keeps for itself",
        S::NAME
    );
    for (i, h) in S::LIB.iter().enumerate() {
        assert_eq!(
            h.id as usize,
            i,
            "service {}: LIB[{i}] has id {}, tables must be dense",
            S::NAME,
            h.id
        );
    }
    for (i, h) in S::EXEC.iter().enumerate() {
        assert_eq!(
            h.id as usize,
            i,
            "service {}: EXEC[{i}] has id {}, tables must be dense",
            S::NAME,
            h.id
        );
    }
    assert!(
        S::EXEC.len() <= usize::from(u16::MAX) + 1,
        "service {}: too many executive handlers",
        S::NAME
    );
}
