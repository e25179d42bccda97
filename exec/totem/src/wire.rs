//! Totem frames on the wire: the one place that turns bytes into typed frames and back.
//!
//! Every frame starts with the same 8-byte header, all integers in network byte order:
//!
//! ```text
//! magic: u16 = MAGIC | version: u8 = PROTOCOL_VERSION | kind: u8 | sender: u32 (NodeId, non-zero)
//! ```
//!
//! The body depends on `kind` (see each struct). Decoding is total: any byte string gives
//! `Ok(frame)` or `Err(DecodeError)`, never a panic, and every count is checked against a
//! constant bound before anything is allocated. Payloads are `Bytes` slices of the input,
//! so a message is never copied between the socket and delivery.

use bytes::{Bytes, BytesMut};

use crate::types::{NodeId, NodeSet, RingId};

/// First two bytes of every frame.
pub const MAGIC: u16 = 0xA15E;
/// Bumped on any incompatible change of a frame's layout.
pub const PROTOCOL_VERSION: u8 = 1;
/// Size of the common header.
pub const HEADER_LEN: usize = 8;
/// Most nodes a ring, a join set or a commit token may hold.
pub const MAX_MEMBERS: usize = 384;
/// Most retransmit requests one token carries.
pub const MAX_RTR: usize = 256;
/// Largest frame we ever build or accept (a UDP datagram over IPv4).
pub const MAX_FRAME_LEN: usize = 65_507;
/// Bytes an mcast frame adds around its payload in the worst case (header, fixed fields
/// and the recovery encapsulation). The packer keeps payloads below
/// `frame_len - MCAST_OVERHEAD_MAX` so that a recovered message still fits in a frame.
pub const MCAST_OVERHEAD_MAX: usize = HEADER_LEN + 12 + 8 + 1 + 24 + 4;

/// Frame kinds, the header's `kind` byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum FrameKind {
    Token = 1,
    Mcast = 2,
    Join = 3,
    Commit = 4,
    MergeDetect = 5,
    TokenHoldCancel = 6,
}

/// A decoded frame. `sender` in each variant is the header's sender: the node that built
/// the frame (for an mcast, its origin, even when another member retransmits it).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Frame {
    Token(Token),
    Mcast(Mcast),
    Join(Join),
    Commit(CommitToken),
    MergeDetect(MergeDetect),
    TokenHoldCancel(TokenHoldCancel),
}

/// The ordering, reliability and flow control token (totemsrp's ORF token).
///
/// Body: `ring_id` (rep u32, seq u64), `token_seq` u64, `seq` u64, `aru` u64,
/// `aru_addr` u32 (0 = none), `fcc` u32, `backlog` u32, `recovery_backlog` u32,
/// `rtr_count` u16 (≤ MAX_RTR), then `rtr_count` × u64.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Token {
    pub sender: NodeId,
    pub ring_id: RingId,
    /// Grows by one at every hop; a copy not newer than the last one seen is a duplicate.
    pub token_seq: u64,
    /// Highest message sequence number assigned on this ring.
    pub seq: u64,
    /// All-received-up-to: every member holds every message up to here (see `order`).
    pub aru: u64,
    /// The member that last lowered `aru`, the only one allowed to raise it again.
    pub aru_addr: Option<NodeId>,
    /// Messages multicast during the last rotation (flow control count).
    pub fcc: u32,
    /// Messages waiting in every member's send queue (for fair sharing of the window).
    pub backlog: u32,
    /// Old-ring messages still waiting to be resent, summed over the members (each replaces
    /// its own share at every visit); recovery ends once this has been zero for a rotation.
    pub recovery_backlog: u32,
    /// Sequence numbers some member misses; a holder of one retransmits it.
    pub rtr: Vec<u64>,
}

/// A multicast message of the ring: one sequence number, one frame.
///
/// The header's sender is the member that assigned `seq` (its origin); a retransmission
/// resends the same bytes, whoever sends it.
///
/// Body: `ring_id` (u32, u64), `seq` u64, `flags` u8 (bit 0 = recovered; other bits
/// zero), when recovered: `old_ring_id` (u32, u64), `old_seq` u64,
/// `old_origin` u32 (non-zero); then `payload_len` u32 and exactly that many bytes, which
/// must end the frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Mcast {
    pub sender: NodeId,
    pub ring_id: RingId,
    pub seq: u64,
    /// Set when this frame carries a message of an old ring through recovery.
    pub recovered: Option<Recovered>,
    /// Packed application messages (see `pack`), or the old frame's payload when recovered.
    pub payload: Bytes,
}

/// Where a recovered message came from: its place in the old ring's order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Recovered {
    pub ring_id: RingId,
    pub seq: u64,
    pub origin: NodeId,
}

/// A membership join: what the sender believes the new ring should be.
///
/// Body: `ring_seq` u64, `proc_count` u16 (≤ MAX_MEMBERS) × u32, `fail_count` u16
/// (≤ MAX_MEMBERS) × u32. Both sets strictly increasing and free of 0.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Join {
    pub sender: NodeId,
    /// Highest ring sequence number the sender has seen.
    pub ring_seq: u64,
    pub proc_set: NodeSet,
    pub fail_set: NodeSet,
}

/// The commit token that installs a new ring; it circulates twice (fill, then recover).
///
/// Body: `ring_id` (u32, u64), `memb_index` u16 (< member count), `count` u16
/// (1..=MAX_MEMBERS), then per member: `node` u32 (strictly increasing, non-zero),
/// `filled` u8 (0 or 1); when filled: `old_ring_id` (u32, u64), `aru` u64,
/// `high_delivered` u64, `received_flg` u8 (0 or 1).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommitToken {
    pub sender: NodeId,
    /// The ring this token forms.
    pub ring_id: RingId,
    /// Index of the member the token was last sent to.
    pub memb_index: u16,
    /// Members in ring order (ascending node id).
    pub members: Vec<CommitMember>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommitMember {
    pub node: NodeId,
    /// Filled in by the member itself on the token's first rotation.
    pub entry: Option<CommitEntry>,
}

/// What a member brings from its old ring into the new one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommitEntry {
    pub old_ring_id: RingId,
    pub aru: u64,
    pub high_delivered: u64,
    pub received_flg: bool,
}

/// Sent by a ring's representative now and then so that a partition that can hear it
/// learns there is another ring and starts a merge. Body: `ring_id` (u32, u64).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MergeDetect {
    pub sender: NodeId,
    pub ring_id: RingId,
}

/// Asks whoever holds the token on an idle ring to pass it on now, because the sender has
/// something to multicast. Body: `ring_id` (u32, u64).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TokenHoldCancel {
    pub sender: NodeId,
    pub ring_id: RingId,
}

/// Why a frame was refused. Each is counted by the caller and the frame dropped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// Fewer bytes than the header or a field needs.
    Truncated,
    BadMagic,
    BadVersion(u8),
    BadKind(u8),
    /// A node id of zero where a node is required.
    ZeroNode,
    /// A count above its bound, or a set not strictly increasing.
    BadCount,
    /// Flag bits that are not defined, or a bool that is not 0 or 1.
    BadFlags,
    /// Bytes left over after the frame's last field.
    TrailingBytes,
    /// Frame longer than MAX_FRAME_LEN.
    TooLong,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("frame truncated"),
            DecodeError::BadMagic => f.write_str("bad magic"),
            DecodeError::BadVersion(v) => write!(f, "unsupported protocol version {v}"),
            DecodeError::BadKind(k) => write!(f, "unknown frame kind {k}"),
            DecodeError::ZeroNode => f.write_str("node id 0"),
            DecodeError::BadCount => f.write_str("count out of bounds or set not sorted"),
            DecodeError::BadFlags => f.write_str("undefined flag bits"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes"),
            DecodeError::TooLong => f.write_str("frame too long"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Token(_) => FrameKind::Token,
            Frame::Mcast(_) => FrameKind::Mcast,
            Frame::Join(_) => FrameKind::Join,
            Frame::Commit(_) => FrameKind::Commit,
            Frame::MergeDetect(_) => FrameKind::MergeDetect,
            Frame::TokenHoldCancel(_) => FrameKind::TokenHoldCancel,
        }
    }

    pub fn sender(&self) -> NodeId {
        match self {
            Frame::Token(t) => t.sender,
            Frame::Mcast(m) => m.sender,
            Frame::Join(j) => j.sender,
            Frame::Commit(c) => c.sender,
            Frame::MergeDetect(m) => m.sender,
            Frame::TokenHoldCancel(t) => t.sender,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        codec::encode(self, out)
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.freeze()
    }

    /// Exact length `encode` will append.
    pub fn encoded_len(&self) -> usize {
        codec::encoded_len(self)
    }

    /// Decodes one frame; payloads are slices of `data` (no copy).
    pub fn decode(data: &Bytes) -> Result<Frame, DecodeError> {
        codec::decode(data)
    }
}

/// Builds a (not recovered) mcast frame with its payload written in place by `fill`, so
/// packing messages costs one buffer per frame. Returns the frame and its payload length
/// (the payload is the frame's tail), or `None` when `fill` wrote nothing.
pub fn build_mcast(
    sender: NodeId,
    ring_id: RingId,
    seq: u64,
    capacity: usize,
    fill: impl FnOnce(&mut BytesMut) -> bool,
) -> Option<(Bytes, usize)> {
    codec::encode_mcast_with(sender, ring_id, seq, capacity, fill)
}

/// Most retransmit requests a token may carry and still fit in a frame of `frame_len`
/// bytes: [`MAX_RTR`], or fewer when the frame is smaller than a token of that many.
pub fn token_rtr_capacity(frame_len: usize) -> usize {
    codec::token_rtr_capacity(frame_len)
}

/// The sender of a frame from its header alone, without decoding the body; lets the daemon
/// learn a peer's address. `None` when the header is not ours.
pub fn peek_sender(data: &[u8]) -> Option<NodeId> {
    if data.len() < HEADER_LEN {
        return None;
    }
    let magic = u16::from_be_bytes([data[0], data[1]]);
    let sender = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    (magic == MAGIC && data[2] == PROTOCOL_VERSION && sender != 0).then_some(NodeId(sender))
}

mod codec;
