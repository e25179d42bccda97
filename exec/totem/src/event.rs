//! What the state machine hands back to its driver: frames to send, events to deliver,
//! and the counters an operator reads.

use bytes::Bytes;

use crate::types::{NodeId, NodeSet, RingId};

/// A frame to put on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dest: Dest,
    pub data: Bytes,
}

/// Where a frame goes. `Multicast` reaches every node the transport knows (the group, or
/// with `udpu` every configured member), ourselves included or not: our own frames are
/// recognised and ignored. `Unicast` may name ourselves (a one-node ring passes the
/// token to itself); the driver then hands the frame straight back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Multicast,
    Unicast(NodeId),
}

/// What the layer above receives, in the one order every member agrees on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message, whole, from `origin` (possibly ourselves).
    Deliver { origin: NodeId, msg: Bytes },
    /// A configuration change: a transitional one, then a regular one.
    ConfChange(ConfChange),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfKind {
    /// The members that move together from the old ring to the new one; messages of the
    /// old ring that could not be delivered before are delivered in it.
    Transitional,
    /// The new ring.
    Regular,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChange {
    pub kind: ConfKind,
    pub ring_id: RingId,
    pub members: NodeSet,
    /// Members of the previous configuration that are not in this one.
    pub left: NodeSet,
    /// Members of this configuration that were not in the previous one.
    pub joined: NodeSet,
}

/// Why [`crate::Srp::mcast`] refused a message; nothing was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McastError {
    /// The send queue is full: try again once the ring has carried some of it.
    QueueFull,
    /// Longer than [`crate::MAX_MESSAGE_LEN`].
    TooLarge,
}

impl std::fmt::Display for McastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            McastError::QueueFull => f.write_str("send queue full"),
            McastError::TooLarge => f.write_str("message larger than the maximum"),
        }
    }
}

impl std::error::Error for McastError {}

/// The membership protocol's state (totemsrp's `memb_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembState {
    Operational,
    Gather,
    Commit,
    Recovery,
}

/// Counters for operators and tests; they only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Frames that failed to decode, dropped.
    pub bad_frames: u64,
    /// Mcast frames resent on request.
    pub retransmits: u64,
    /// Tokens this node processed.
    pub tokens_received: u64,
    /// Tokens retransmitted because the successor seemed not to have it.
    pub token_retransmits: u64,
    /// Token visits after which we kept the token for `linger_us` (see
    /// `TotemConfig::linger_us`).
    pub token_lingers: u64,
    /// Token hold cancels we sent on a busy ring, because the token's holder might be
    /// lingering with it while our messages wait, or while we miss frames that only a
    /// token visit can ask to be resent.
    pub token_wants: u64,
    /// Times we kept the token because our own applications were behind on their
    /// deliveries (see [`crate::Srp::set_receivers_behind`]); one visit may count
    /// several, when local messages interrupt a wait.
    pub token_waits_for_receivers: u64,
    /// Mcast frames originated (one per sequence number).
    pub mcast_frames: u64,
    pub messages_delivered: u64,
    /// Times the token was declared lost.
    pub token_losses: u64,
    /// Regular configurations installed.
    pub configurations: u64,
}
