//! The Totem single-ring protocol state machine (being written).
use bytes::Bytes;

use crate::config::Params;
use crate::event::{Event, McastError, MembState, Stats, Transmit};
use crate::types::{Instant, NodeId, NodeSet, RingId};

pub struct Srp {
    me: NodeId,
    ring_id: RingId,
    members: NodeSet,
    stats: Stats,
    ring_seq_high: u64,
    _params: Params,
}

impl Srp {
    pub fn new(params: Params, me: NodeId, ring_seq: u64, _now: Instant) -> Self {
        Srp { me, ring_id: RingId::initial(me, 0), members: NodeSet::single(me), stats: Stats::default(), ring_seq_high: ring_seq, _params: params }
    }
    pub fn handle_datagram(&mut self, _now: Instant, _data: Bytes) {}
    pub fn handle_timeout(&mut self, _now: Instant) {}
    pub fn mcast(&mut self, _msg: Bytes) -> Result<(), McastError> { Err(McastError::QueueFull) }
    pub fn leave(&mut self, _now: Instant) {}
    pub fn poll_transmit(&mut self) -> Option<Transmit> { None }
    pub fn poll_timeout(&self) -> Option<Instant> { None }
    pub fn poll_event(&mut self) -> Option<Event> { None }
    pub fn node_id(&self) -> NodeId { self.me }
    pub fn ring_id(&self) -> RingId { self.ring_id }
    pub fn members(&self) -> &NodeSet { &self.members }
    pub fn state(&self) -> MembState { MembState::Gather }
    pub fn ring_seq_high(&self) -> u64 { self.ring_seq_high }
    pub fn stats(&self) -> &Stats { &self.stats }
}
