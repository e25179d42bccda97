//! The sync framework (openais's `sync.c`): after every regular configuration, the
//! services bring their replicated state into agreement across the new ring, one service
//! at a time, in service id order.
//!
//! # Message flow
//!
//! For the regular configuration with ring `R` and members `M`, on every member, at the
//! same point in the agreed order (the configuration change itself):
//!
//! ```text
//! for each registered service S with S::SYNC (the default), in ServiceId order:
//!     S.sync_init()
//!     S.sync_process()  ── multicasts S's share of the state (S's own executive messages,
//!         │                tagged with R by the service: Api::ring_id)
//!         │ Continue: called again after each delivered message (any message)
//!         ▼ Done
//!     multicast BARRIER { ring: R, service: S }        (MsgId { SYNC, 0 })
//!     ... deliveries: S's state messages, everyone's barriers ...
//!     when barriers for (R, S) from every member of M have been delivered:
//!         S.sync_activate()       ── same point in the agreed order on every node
//!         next service
//! all services done: is_synced() = true; library requests with needs_sync are served.
//! ```
//!
//! Totem keeps each sender's messages in order, so when a node's barrier is delivered,
//! everything it multicast during `sync_process` has been delivered before it, on every
//! node: at `sync_activate` every member holds the same set of state messages.
//!
//! A transitional configuration while a round runs calls `sync_abort` on the service
//! being synced (services after it were not started; those before it stay activated)
//! and the registry waits for the regular configuration, which starts a new round from
//! the first service. Barriers and state messages of an old round may still be
//! delivered in the new ring (they can sit in a send queue across the change): barriers
//! carry their ring and are ignored when it is not the current one, and services tag
//! their own state messages the same way.
//!
//! Barrier body (network byte order): `ring rep: u32 | ring seq: u64 | service: u16`.

use ais_proto::ServiceId;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use log::{debug, info, warn};
use totem::{NodeId, NodeSet, RingId};

use crate::registry::Registry;
use crate::service::SyncProgress;

/// `MsgId { service: SYNC, func: BARRIER }`.
pub(crate) const BARRIER: u16 = 0;
const BARRIER_LEN: usize = 14;

#[derive(Debug)]
pub(crate) enum SyncState {
    /// No regular configuration yet, or a transitional one since the last.
    Waiting,
    /// Syncing `services[idx]` in `ring`.
    Running {
        ring: RingId,
        idx: usize,
        /// Its `sync_process` has not said `Done` yet.
        processing: bool,
        /// Members whose barrier for this service was delivered.
        barriers: NodeSet,
    },
    /// Every service activated in the current regular configuration.
    Done,
}

pub(crate) fn encode_barrier(ring: RingId, service: ServiceId) -> Bytes {
    let mut b = BytesMut::with_capacity(BARRIER_LEN);
    b.put_u32(ring.rep.0);
    b.put_u64(ring.seq);
    b.put_u16(service.0);
    b.freeze()
}

pub(crate) fn decode_barrier(mut body: Bytes) -> Option<(RingId, ServiceId)> {
    if body.len() != BARRIER_LEN {
        return None;
    }
    let rep = NodeId(body.get_u32());
    let seq = body.get_u64();
    let service = ServiceId(body.get_u16());
    Some((RingId { rep, seq }, service))
}

impl Registry {
    /// A regular configuration was installed: a new round from the first service.
    pub(crate) fn sync_start(&mut self) {
        let Some(ring) = self.api.ring_id() else {
            return;
        };
        self.api.stats.sync_rounds_started += 1;
        debug!(target: "sync", "ring {ring}: sync of {} services starts", self.services.len());
        self.sync_enter(ring, 0);
    }

    /// Starts service `idx` of the round (or finishes the round).
    fn sync_enter(&mut self, ring: RingId, idx: usize) {
        // Services without replicated state (`Service::SYNC == false`) take no part: no
        // hooks, no barrier round. Every node skips the same ones.
        let idx = (idx..self.services.len())
            .find(|&i| self.services[i].syncs())
            .unwrap_or(self.services.len());
        let Some(s) = self.services.get_mut(idx) else {
            self.sync = SyncState::Done;
            self.api.stats.sync_rounds_completed += 1;
            info!(target: "sync", "ring {ring}: sync complete");
            return;
        };
        self.api.enter(s.id(), None);
        s.sync_init(&mut self.api);
        self.api.leave();
        self.sync = SyncState::Running {
            ring,
            idx,
            processing: true,
            barriers: NodeSet::new(),
        };
        self.sync_continue();
    }

    /// Calls the service being synced to send more, if it has more to send; multicasts
    /// its barrier once it is done.
    pub(crate) fn sync_continue(&mut self) {
        let SyncState::Running {
            ring,
            idx,
            processing: true,
            ..
        } = self.sync
        else {
            return;
        };
        let Some(s) = self.services.get_mut(idx) else {
            return;
        };
        let id = s.id();
        self.api.enter(id, None);
        let progress = s.sync_process(&mut self.api);
        self.api.leave();
        if progress == SyncProgress::Done {
            if let SyncState::Running { processing, .. } = &mut self.sync {
                *processing = false;
            }
            self.api
                .mcast_as(ServiceId::SYNC, BARRIER, &encode_barrier(ring, id));
        }
    }

    /// A message on `ServiceId::SYNC`. Returns whether it moved the round on to the next
    /// service (which then already had its first `sync_process`).
    pub(crate) fn on_sync_message(&mut self, origin: NodeId, func: u16, body: Bytes) -> bool {
        if func != BARRIER {
            self.api.stats.dropped_messages += 1;
            warn!(target: "sync", "dropping sync message {func} from node {origin}: unknown function");
            return false;
        }
        let Some((ring, service)) = decode_barrier(body) else {
            self.api.stats.dropped_messages += 1;
            warn!(target: "sync", "dropping a malformed barrier from node {origin}");
            return false;
        };
        let SyncState::Running {
            ring: current,
            idx,
            ref mut barriers,
            ..
        } = self.sync
        else {
            debug!(target: "sync", "barrier {ring}/{service} from node {origin} while no round runs; ignored");
            return false;
        };
        let expected = self.services.get(idx).map(|s| s.id());
        if ring != current || expected != Some(service) {
            debug!(target: "sync", "stale barrier {ring}/{service} from node {origin} (syncing {current}/{expected:?}); ignored");
            return false;
        }
        if !self.api.members().contains(origin) {
            warn!(target: "sync", "barrier from node {origin}, not a member of ring {current}; ignored");
            return false;
        }
        barriers.insert(origin);
        if !self.api.members().is_subset(barriers) {
            return false;
        }
        if let Some(s) = self.services.get_mut(idx) {
            debug!(target: "sync", "ring {current}: activating {}", s.name());
            self.api.enter(s.id(), None);
            s.sync_activate(&mut self.api);
            self.api.leave();
        }
        self.sync_enter(current, idx + 1);
        true
    }

    /// A configuration change: the round in progress, if any, is abandoned.
    pub(crate) fn sync_abort_round(&mut self) {
        if let SyncState::Running { ring, idx, .. } = self.sync {
            if let Some(s) = self.services.get_mut(idx) {
                info!(target: "sync", "ring {ring}: configuration change, sync of {} aborted", s.name());
                self.api.enter(s.id(), None);
                s.sync_abort(&mut self.api);
                self.api.leave();
            }
            self.api.stats.sync_rounds_aborted += 1;
        }
        self.sync = SyncState::Waiting;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_round_trips_and_refuses_other_lengths() {
        let ring = RingId {
            rep: NodeId(3),
            seq: 77,
        };
        let b = encode_barrier(ring, ServiceId::CPG);
        assert_eq!(decode_barrier(b.clone()), Some((ring, ServiceId::CPG)));
        assert_eq!(decode_barrier(b.slice(..13)), None);
        let mut long = BytesMut::from(&b[..]);
        long.put_u8(0);
        assert_eq!(decode_barrier(long.freeze()), None);
    }
}
