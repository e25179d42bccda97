//! Byte layout of the frames declared in `wire`: the encoder and the total decoder.
//!
//! The layout is canonical: the decoder accepts exactly the byte strings the encoder
//! produces (no slack in bools, flags, zero ids, counts or trailing bytes), so a frame
//! that decodes re-encodes to the very same bytes and no two members can read one frame
//! two ways. The property tests in `tests/wire_props.rs` hold it to that.

use bytes::BufMut;

use super::*;

/// `ring_id` on the wire: rep u32, seq u64.
const RING_ID_LEN: usize = 4 + 8;
/// Token fixed fields after the header, up to and including `rtr_count`.
const TOKEN_FIXED_LEN: usize = RING_ID_LEN + 8 + 8 + 8 + 4 + 4 + 4 + 4 + 2;
/// Mcast fields after the header up to and including `flags`.
const MCAST_FIXED_LEN: usize = RING_ID_LEN + 8 + 1;
/// The recovery encapsulation: old ring id, old seq, old origin.
const MCAST_RECOVERED_LEN: usize = RING_ID_LEN + 8 + 4;
/// Mcast flag bit: the frame carries an old ring's message through recovery.
const MCAST_FLAG_RECOVERED: u8 = 0x01;
/// A commit member's node id and `filled` byte, present for every member.
const COMMIT_MEMBER_MIN_LEN: usize = 4 + 1;
/// What a filled commit member adds: old ring id, aru, high_delivered, received_flg.
const COMMIT_ENTRY_LEN: usize = RING_ID_LEN + 8 + 8 + 1;

// The packer relies on this bound; keep it honest if a field is added.
const _: () = assert!(HEADER_LEN + MCAST_FIXED_LEN + MCAST_RECOVERED_LEN + 4 == MCAST_OVERHEAD_MAX);

pub(super) fn encoded_len(frame: &Frame) -> usize {
    HEADER_LEN
        + match frame {
            Frame::Token(t) => TOKEN_FIXED_LEN + 8 * t.rtr.len(),
            Frame::Mcast(m) => {
                let recovered = if m.recovered.is_some() {
                    MCAST_RECOVERED_LEN
                } else {
                    0
                };
                MCAST_FIXED_LEN + recovered + 4 + m.payload.len()
            }
            Frame::Join(j) => 8 + 2 + 4 * j.proc_set.len() + 2 + 4 * j.fail_set.len(),
            Frame::Commit(c) => {
                let filled = c.members.iter().filter(|m| m.entry.is_some()).count();
                RING_ID_LEN
                    + 2
                    + 2
                    + COMMIT_MEMBER_MIN_LEN * c.members.len()
                    + COMMIT_ENTRY_LEN * filled
            }
            Frame::MergeDetect(_) | Frame::TokenHoldCancel(_) => RING_ID_LEN,
        }
}

pub(super) fn token_rtr_capacity(frame_len: usize) -> usize {
    (frame_len.saturating_sub(HEADER_LEN + TOKEN_FIXED_LEN) / 8).min(MAX_RTR)
}

/// Appends `frame` to `out`, growing it at most once.
///
/// The frame must be valid (counts within bounds, ids non-zero, sets sorted): the
/// encoder is fed by our own state machine, and checking there is cheaper than here.
/// An invalid frame trips a debug assertion and otherwise yields bytes the peer refuses
/// or reads differently.
pub(super) fn encode(frame: &Frame, out: &mut BytesMut) {
    let len = encoded_len(frame);
    debug_assert!(len <= MAX_FRAME_LEN, "frame of {len} bytes");
    out.reserve(len);
    let mut w = Writer(out);
    w.header(frame.kind(), frame.sender());
    match frame {
        Frame::Token(t) => {
            debug_assert!(t.rtr.len() <= MAX_RTR);
            debug_assert!(t.aru_addr != Some(NodeId(0)));
            w.ring_id(t.ring_id);
            w.u64(t.token_seq);
            w.u64(t.seq);
            w.u64(t.aru);
            w.u32(t.aru_addr.map_or(0, |n| n.0));
            w.u32(t.fcc);
            w.u32(t.backlog);
            w.u32(t.recovery_backlog);
            w.count(t.rtr.len());
            for &seq in &t.rtr {
                w.u64(seq);
            }
        }
        Frame::Mcast(m) => {
            w.ring_id(m.ring_id);
            w.u64(m.seq);
            match &m.recovered {
                None => w.u8(0),
                Some(r) => {
                    w.u8(MCAST_FLAG_RECOVERED);
                    w.ring_id(r.ring_id);
                    w.u64(r.seq);
                    w.node(r.origin);
                }
            }
            w.u32(u32::try_from(m.payload.len()).unwrap_or(u32::MAX));
            w.bytes(&m.payload);
        }
        Frame::Join(j) => {
            w.u64(j.ring_seq);
            w.node_set(&j.proc_set);
            w.node_set(&j.fail_set);
        }
        Frame::Commit(c) => {
            debug_assert!((1..=MAX_MEMBERS).contains(&c.members.len()));
            debug_assert!(usize::from(c.memb_index) < c.members.len());
            debug_assert!(c.members.windows(2).all(|p| p[0].node < p[1].node));
            w.ring_id(c.ring_id);
            w.u16(c.memb_index);
            w.count(c.members.len());
            for m in &c.members {
                w.node(m.node);
                match &m.entry {
                    None => w.bool(false),
                    Some(e) => {
                        w.bool(true);
                        w.ring_id(e.old_ring_id);
                        w.u64(e.aru);
                        w.u64(e.high_delivered);
                        w.bool(e.received_flg);
                    }
                }
            }
        }
        Frame::MergeDetect(MergeDetect { ring_id, .. })
        | Frame::TokenHoldCancel(TokenHoldCancel { ring_id, .. }) => w.ring_id(*ring_id),
    }
}

/// Encodes an mcast frame whose payload `fill` writes straight into the frame buffer,
/// then patches the payload length in. Nothing is built when `fill` writes nothing.
pub(super) fn encode_mcast_with(
    sender: NodeId,
    ring_id: RingId,
    seq: u64,
    capacity: usize,
    fill: impl FnOnce(&mut BytesMut) -> bool,
) -> Option<(Bytes, usize)> {
    let mut out = BytesMut::with_capacity(capacity);
    let mut w = Writer(&mut out);
    w.header(FrameKind::Mcast, sender);
    w.ring_id(ring_id);
    w.u64(seq);
    w.u8(0);
    let len_at = out.len();
    out.put_u32(0);
    let start = out.len();
    if !fill(&mut out) {
        return None;
    }
    let payload_len = out.len() - start;
    debug_assert!(
        out.len() <= MAX_FRAME_LEN,
        "mcast frame of {} bytes",
        out.len()
    );
    let len = u32::try_from(payload_len).unwrap_or(u32::MAX).to_be_bytes();
    out[len_at..start].copy_from_slice(&len);
    Some((out.freeze(), payload_len))
}

/// Decodes one whole frame. Total: every read is bounds-checked, every count is checked
/// against its constant bound and against the bytes left before anything is allocated.
pub(super) fn decode(data: &Bytes) -> Result<Frame, DecodeError> {
    if data.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLong);
    }
    let mut r = Reader { data, pos: 0 };
    if r.u16()? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u8()?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let kind = r.u8()?;
    // Kind before sender: a frame of a kind we do not know says so, whatever its body.
    let kind = frame_kind(kind).ok_or(DecodeError::BadKind(kind))?;
    let sender = r.node()?;
    let frame = match kind {
        FrameKind::Token => Frame::Token(decode_token(&mut r, sender)?),
        FrameKind::Mcast => Frame::Mcast(decode_mcast(&mut r, sender)?),
        FrameKind::Join => Frame::Join(Join {
            sender,
            ring_seq: r.u64()?,
            proc_set: r.node_set()?,
            fail_set: r.node_set()?,
        }),
        FrameKind::Commit => Frame::Commit(decode_commit(&mut r, sender)?),
        FrameKind::MergeDetect => Frame::MergeDetect(MergeDetect {
            sender,
            ring_id: r.ring_id()?,
        }),
        FrameKind::TokenHoldCancel => Frame::TokenHoldCancel(TokenHoldCancel {
            sender,
            ring_id: r.ring_id()?,
        }),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(frame)
}

fn frame_kind(byte: u8) -> Option<FrameKind> {
    Some(match byte {
        1 => FrameKind::Token,
        2 => FrameKind::Mcast,
        3 => FrameKind::Join,
        4 => FrameKind::Commit,
        5 => FrameKind::MergeDetect,
        6 => FrameKind::TokenHoldCancel,
        _ => return None,
    })
}

fn decode_token(r: &mut Reader<'_>, sender: NodeId) -> Result<Token, DecodeError> {
    let ring_id = r.ring_id()?;
    let token_seq = r.u64()?;
    let seq = r.u64()?;
    let aru = r.u64()?;
    let aru_addr = match r.u32()? {
        0 => None,
        n => Some(NodeId(n)),
    };
    let fcc = r.u32()?;
    let backlog = r.u32()?;
    let recovery_backlog = r.u32()?;
    let count = r.count(MAX_RTR, 8)?;
    let mut rtr = Vec::with_capacity(count);
    for _ in 0..count {
        rtr.push(r.u64()?);
    }
    Ok(Token {
        sender,
        ring_id,
        token_seq,
        seq,
        aru,
        aru_addr,
        fcc,
        backlog,
        recovery_backlog,
        rtr,
    })
}

fn decode_mcast(r: &mut Reader<'_>, sender: NodeId) -> Result<Mcast, DecodeError> {
    let ring_id = r.ring_id()?;
    let seq = r.u64()?;
    let flags = r.u8()?;
    if flags & !MCAST_FLAG_RECOVERED != 0 {
        return Err(DecodeError::BadFlags);
    }
    let recovered = if flags & MCAST_FLAG_RECOVERED != 0 {
        Some(Recovered {
            ring_id: r.ring_id()?,
            seq: r.u64()?,
            origin: r.node()?,
        })
    } else {
        None
    };
    let len = usize::try_from(r.u32()?).map_err(|_| DecodeError::TooLong)?;
    // The payload must end the frame: a short one would leave bytes nobody vouches for.
    match len.cmp(&r.remaining()) {
        std::cmp::Ordering::Greater => return Err(DecodeError::Truncated),
        std::cmp::Ordering::Less => return Err(DecodeError::TrailingBytes),
        std::cmp::Ordering::Equal => {}
    }
    let payload = r.slice(len)?;
    Ok(Mcast {
        sender,
        ring_id,
        seq,
        recovered,
        payload,
    })
}

fn decode_commit(r: &mut Reader<'_>, sender: NodeId) -> Result<CommitToken, DecodeError> {
    let ring_id = r.ring_id()?;
    let memb_index = r.u16()?;
    let count = r.count(MAX_MEMBERS, COMMIT_MEMBER_MIN_LEN)?;
    if count == 0 || usize::from(memb_index) >= count {
        return Err(DecodeError::BadCount);
    }
    let mut members: Vec<CommitMember> = Vec::with_capacity(count);
    for _ in 0..count {
        let node = r.node()?;
        // Checked as we go rather than through a NodeSet, which would cost a second Vec.
        if members.last().is_some_and(|prev| prev.node >= node) {
            return Err(DecodeError::BadCount);
        }
        let entry = if r.bool()? {
            Some(CommitEntry {
                old_ring_id: r.ring_id()?,
                aru: r.u64()?,
                high_delivered: r.u64()?,
                received_flg: r.bool()?,
            })
        } else {
            None
        };
        members.push(CommitMember { node, entry });
    }
    Ok(CommitToken {
        sender,
        ring_id,
        memb_index,
        members,
    })
}

/// Appends big-endian fields to the output buffer; the caller has reserved the room.
struct Writer<'a>(&'a mut BytesMut);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.put_u64(v);
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.put_slice(v);
    }
    fn node(&mut self, n: NodeId) {
        debug_assert!(n.0 != 0, "node id 0 on the wire");
        self.u32(n.0);
    }
    fn ring_id(&mut self, id: RingId) {
        self.u32(id.rep.0);
        self.u64(id.seq);
    }
    /// A u16 count; valid frames never come near u16::MAX, so saturating only guards
    /// against a bug producing something the decoder would misread as another frame.
    fn count(&mut self, n: usize) {
        self.u16(u16::try_from(n).unwrap_or(u16::MAX));
    }
    fn node_set(&mut self, set: &NodeSet) {
        debug_assert!(set.len() <= MAX_MEMBERS);
        self.count(set.len());
        for n in set.iter() {
            self.node(n);
        }
    }
    fn header(&mut self, kind: FrameKind, sender: NodeId) {
        self.u16(MAGIC);
        self.u8(PROTOCOL_VERSION);
        self.u8(kind as u8);
        self.node(sender);
    }
}

/// A read position in the frame being decoded; every short read is `Truncated`.
struct Reader<'a> {
    data: &'a Bytes,
    /// Never beyond `data.len()`.
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let bytes = *rest.first_chunk::<N>().ok_or(DecodeError::Truncated)?;
        self.pos += N;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadFlags),
        }
    }

    /// A node id where a node is required.
    fn node(&mut self) -> Result<NodeId, DecodeError> {
        match self.u32()? {
            0 => Err(DecodeError::ZeroNode),
            n => Ok(NodeId(n)),
        }
    }

    /// The ring's representative is not checked for zero: the layout does not require it,
    /// and a ring id is only ever compared, never addressed.
    fn ring_id(&mut self) -> Result<RingId, DecodeError> {
        Ok(RingId {
            rep: NodeId(self.u32()?),
            seq: self.u64()?,
        })
    }

    /// A u16 count of items at least `item_len` bytes each: above `max` is `BadCount`,
    /// more than the bytes left could hold is `Truncated`. Either way nothing is allocated.
    fn count(&mut self, max: usize, item_len: usize) -> Result<usize, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(DecodeError::BadCount);
        }
        if n * item_len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    /// A join set: bounded, free of 0 and strictly increasing (the canonical form).
    fn node_set(&mut self) -> Result<NodeSet, DecodeError> {
        let n = self.count(MAX_MEMBERS, 4)?;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(self.node()?);
        }
        NodeSet::from_sorted(ids).ok_or(DecodeError::BadCount)
    }

    /// The next `len` bytes as a slice of the input, sharing its buffer.
    fn slice(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.data.slice(start..self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(rep: u32, seq: u64) -> RingId {
        RingId {
            rep: NodeId(rep),
            seq,
        }
    }

    fn nodes(ids: impl IntoIterator<Item = u32>) -> NodeSet {
        ids.into_iter().map(NodeId).collect()
    }

    fn token_min() -> Frame {
        Frame::Token(Token {
            sender: NodeId(1),
            ring_id: ring(0, 0),
            token_seq: 0,
            seq: 0,
            aru: 0,
            aru_addr: None,
            fcc: 0,
            backlog: 0,
            recovery_backlog: 0,
            rtr: vec![],
        })
    }

    fn token_max() -> Frame {
        Frame::Token(Token {
            sender: NodeId(u32::MAX),
            ring_id: ring(u32::MAX, u64::MAX),
            token_seq: u64::MAX,
            seq: u64::MAX,
            aru: u64::MAX,
            aru_addr: Some(NodeId(u32::MAX)),
            fcc: u32::MAX,
            backlog: u32::MAX,
            recovery_backlog: u32::MAX,
            rtr: (0..MAX_RTR as u64).map(|i| u64::MAX - i).collect(),
        })
    }

    fn mcast(recovered: bool, payload: &'static [u8]) -> Frame {
        Frame::Mcast(Mcast {
            sender: NodeId(7),
            ring_id: ring(3, u64::MAX),
            seq: u64::MAX,
            recovered: recovered.then_some(Recovered {
                ring_id: ring(2, 41),
                seq: u64::MAX - 1,
                origin: NodeId(u32::MAX),
            }),
            payload: Bytes::from_static(payload),
        })
    }

    fn join(proc_set: NodeSet, fail_set: NodeSet) -> Frame {
        Frame::Join(Join {
            sender: NodeId(2),
            ring_seq: u64::MAX,
            proc_set,
            fail_set,
        })
    }

    fn entry(aru: u64, received_flg: bool) -> CommitEntry {
        CommitEntry {
            old_ring_id: ring(1, 8),
            aru,
            high_delivered: u64::MAX,
            received_flg,
        }
    }

    /// Members 1, 5 and 9: filled, unfilled, filled.
    fn commit_mixed() -> Frame {
        Frame::Commit(CommitToken {
            sender: NodeId(1),
            ring_id: ring(1, 12),
            memb_index: 2,
            members: vec![
                CommitMember {
                    node: NodeId(1),
                    entry: Some(entry(4, true)),
                },
                CommitMember {
                    node: NodeId(5),
                    entry: None,
                },
                CommitMember {
                    node: NodeId(9),
                    entry: Some(entry(u64::MAX, false)),
                },
            ],
        })
    }

    fn commit_full(filled: bool) -> Frame {
        Frame::Commit(CommitToken {
            sender: NodeId(1),
            ring_id: ring(1, u64::MAX),
            memb_index: (MAX_MEMBERS - 1) as u16,
            members: (1..=MAX_MEMBERS as u32)
                .map(|n| CommitMember {
                    node: NodeId(n * 1000),
                    entry: filled.then(|| entry(u64::from(n), n % 2 == 0)),
                })
                .collect(),
        })
    }

    fn samples() -> Vec<Frame> {
        vec![
            token_min(),
            token_max(),
            mcast(false, b""),
            mcast(false, b"hello"),
            mcast(true, b""),
            mcast(true, b"recovered payload"),
            join(NodeSet::new(), NodeSet::new()),
            join(nodes([1, 2, 3]), nodes([u32::MAX])),
            join(nodes(1..=MAX_MEMBERS as u32), nodes(1..=MAX_MEMBERS as u32)),
            Frame::Commit(CommitToken {
                sender: NodeId(4),
                ring_id: ring(4, 1),
                memb_index: 0,
                members: vec![CommitMember {
                    node: NodeId(4),
                    entry: None,
                }],
            }),
            commit_mixed(),
            commit_full(false),
            commit_full(true),
            Frame::MergeDetect(MergeDetect {
                sender: NodeId(3),
                ring_id: ring(3, 99),
            }),
            Frame::TokenHoldCancel(TokenHoldCancel {
                sender: NodeId(u32::MAX),
                ring_id: ring(0, u64::MAX),
            }),
        ]
    }

    fn encoded(frame: &Frame) -> Vec<u8> {
        frame.to_bytes().to_vec()
    }

    fn decode_vec(bytes: Vec<u8>) -> Result<Frame, DecodeError> {
        decode(&Bytes::from(bytes))
    }

    /// `bytes` with `new` written over it from `at`.
    fn patched(frame: &Frame, at: usize, new: &[u8]) -> Vec<u8> {
        let mut bytes = encoded(frame);
        bytes[at..at + new.len()].copy_from_slice(new);
        bytes
    }

    #[test]
    fn every_sample_round_trips_with_exact_length() {
        for frame in samples() {
            let bytes = frame.to_bytes();
            assert_eq!(bytes.len(), encoded_len(&frame), "{frame:?}");
            assert_eq!(decode(&bytes), Ok(frame.clone()));
        }
    }

    #[test]
    fn encode_appends_after_existing_bytes() {
        let mut out = BytesMut::from(&b"prefix"[..]);
        let frame = commit_mixed();
        encode(&frame, &mut out);
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(decode(&out.freeze().slice(6..)), Ok(frame));
    }

    #[test]
    fn token_layout_is_as_documented() {
        let frame = Frame::Token(Token {
            sender: NodeId(0x0102_0304),
            ring_id: ring(5, 6),
            token_seq: 7,
            seq: 8,
            aru: 9,
            aru_addr: Some(NodeId(10)),
            fcc: 11,
            backlog: 12,
            recovery_backlog: 13,
            rtr: vec![14, 15],
        });
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[0xA1, 0x5E, 1, 1, 1, 2, 3, 4][..],
            &[0, 0, 0, 5], &[0, 0, 0, 0, 0, 0, 0, 6],
            &[0, 0, 0, 0, 0, 0, 0, 7],
            &[0, 0, 0, 0, 0, 0, 0, 8],
            &[0, 0, 0, 0, 0, 0, 0, 9],
            &[0, 0, 0, 10], &[0, 0, 0, 11], &[0, 0, 0, 12], &[0, 0, 0, 13],
            &[0, 2], &[0, 0, 0, 0, 0, 0, 0, 14], &[0, 0, 0, 0, 0, 0, 0, 15],
        ]
        .concat();
        assert_eq!(encoded(&frame), expected);
    }

    #[test]
    fn recovered_mcast_layout_is_as_documented() {
        let frame = Frame::Mcast(Mcast {
            sender: NodeId(2),
            ring_id: ring(1, 3),
            seq: 4,
            recovered: Some(Recovered {
                ring_id: ring(5, 6),
                seq: 7,
                origin: NodeId(8),
            }),
            payload: Bytes::from_static(b"xy"),
        });
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[0xA1, 0x5E, 1, 2, 0, 0, 0, 2][..],
            &[0, 0, 0, 1], &[0, 0, 0, 0, 0, 0, 0, 3],
            &[0, 0, 0, 0, 0, 0, 0, 4],
            &[1],
            &[0, 0, 0, 5], &[0, 0, 0, 0, 0, 0, 0, 6],
            &[0, 0, 0, 0, 0, 0, 0, 7],
            &[0, 0, 0, 8],
            &[0, 0, 0, 2], b"xy",
        ]
        .concat();
        assert_eq!(encoded(&frame), expected);
        assert_eq!(expected.len() - 2, MCAST_OVERHEAD_MAX);
    }

    #[test]
    fn commit_layout_is_as_documented() {
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[0xA1, 0x5E, 1, 4, 0, 0, 0, 1][..],
            &[0, 0, 0, 1], &[0, 0, 0, 0, 0, 0, 0, 12],
            &[0, 2], &[0, 3],
            &[0, 0, 0, 1], &[1],
            &[0, 0, 0, 1], &[0, 0, 0, 0, 0, 0, 0, 8],
            &[0, 0, 0, 0, 0, 0, 0, 4], &[0xFF; 8], &[1],
            &[0, 0, 0, 5], &[0],
            &[0, 0, 0, 9], &[1],
            &[0, 0, 0, 1], &[0, 0, 0, 0, 0, 0, 0, 8],
            &[0xFF; 8], &[0xFF; 8], &[0],
        ]
        .concat();
        assert_eq!(encoded(&commit_mixed()), expected);
    }

    #[test]
    fn join_layout_is_as_documented() {
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[0xA1, 0x5E, 1, 3, 0, 0, 0, 2][..],
            &[0xFF; 8],
            &[0, 2], &[0, 0, 0, 1], &[0, 0, 1, 0],
            &[0, 1], &[0, 0, 0, 3],
        ]
        .concat();
        assert_eq!(encoded(&join(nodes([1, 256]), nodes([3]))), expected);
    }

    #[test]
    fn mcast_built_in_place_equals_the_encoded_frame() {
        let (bytes, len) = encode_mcast_with(NodeId(3), ring(1, 8), 42, 64, |out| {
            out.put_slice(b"in place");
            true
        })
        .unwrap();
        assert_eq!(len, 8);
        let expected = Frame::Mcast(Mcast {
            sender: NodeId(3),
            ring_id: ring(1, 8),
            seq: 42,
            recovered: None,
            payload: Bytes::from_static(b"in place"),
        });
        assert_eq!(bytes, expected.to_bytes());
        assert!(encode_mcast_with(NodeId(3), ring(1, 8), 42, 64, |_| false).is_none());
    }

    #[test]
    fn mcast_payload_shares_the_input_buffer() {
        let bytes = mcast(true, b"zero copy").to_bytes();
        let Ok(Frame::Mcast(m)) = decode(&bytes) else {
            panic!("mcast did not decode");
        };
        assert_eq!(&m.payload[..], b"zero copy");
        let offset = bytes.len() - m.payload.len();
        assert_eq!(m.payload.as_ptr(), bytes[offset..].as_ptr());
    }

    #[test]
    fn largest_mcast_is_accepted_and_one_more_byte_is_too_long() {
        let payload = Bytes::from(vec![0xAB; MAX_FRAME_LEN - MCAST_OVERHEAD_MAX]);
        let frame = Frame::Mcast(Mcast {
            payload,
            ..match mcast(true, b"") {
                Frame::Mcast(m) => m,
                _ => unreachable!(),
            }
        });
        let mut bytes = encoded(&frame);
        assert_eq!(bytes.len(), MAX_FRAME_LEN);
        assert_eq!(decode_vec(bytes.clone()), Ok(frame));
        bytes.push(0);
        assert_eq!(decode_vec(bytes), Err(DecodeError::TooLong));
        assert_eq!(
            decode_vec(vec![0; MAX_FRAME_LEN + 1]),
            Err(DecodeError::TooLong)
        );
    }

    #[test]
    fn every_truncation_of_every_sample_is_truncated() {
        for frame in samples() {
            let bytes = frame.to_bytes();
            for len in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes.slice(..len)),
                    Err(DecodeError::Truncated),
                    "{frame:?} cut to {len}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_after_every_sample_are_refused() {
        for frame in samples() {
            let mut bytes = encoded(&frame);
            bytes.push(0);
            assert_eq!(
                decode_vec(bytes),
                Err(DecodeError::TrailingBytes),
                "{frame:?}"
            );
        }
    }

    #[test]
    fn header_fields_are_checked() {
        let frame = token_min();
        assert_eq!(
            decode_vec(patched(&frame, 0, &[0x5E, 0xA1])),
            Err(DecodeError::BadMagic)
        );
        for version in [0, 2, 255] {
            assert_eq!(
                decode_vec(patched(&frame, 2, &[version])),
                Err(DecodeError::BadVersion(version))
            );
        }
        for kind in [0, 7, 255] {
            assert_eq!(
                decode_vec(patched(&frame, 3, &[kind])),
                Err(DecodeError::BadKind(kind))
            );
        }
        assert_eq!(
            decode_vec(patched(&frame, 4, &[0, 0, 0, 0])),
            Err(DecodeError::ZeroNode)
        );
    }

    #[test]
    fn a_token_of_rtr_capacity_fits_its_frame_and_one_more_does_not() {
        let with = |n: usize| {
            let Frame::Token(mut t) = token_max() else {
                unreachable!()
            };
            t.rtr.truncate(n);
            Frame::Token(t).encoded_len()
        };
        // Frames of netmtu 1500 and 1200 less IPv4 and UDP headers, and about the
        // smallest a configuration allows (MIN_NETMTU's).
        for frame_len in [1472, 1172, 600, 569] {
            let cap = token_rtr_capacity(frame_len);
            assert!(cap > 0 && cap < MAX_RTR, "{frame_len}: {cap}");
            assert!(with(cap) <= frame_len, "{frame_len}: {cap}");
            assert!(with(cap + 1) > frame_len, "{frame_len}: {cap}");
        }
        // Large frames (netmtu 9000) hold a token of MAX_RTR requests.
        for frame_len in [8972, MAX_FRAME_LEN] {
            assert_eq!(token_rtr_capacity(frame_len), MAX_RTR);
            assert!(with(MAX_RTR) <= frame_len);
        }
    }

    #[test]
    fn token_rtr_count_is_bounded_before_allocation() {
        let frame = token_min();
        // With the entries present, and with none: the bound is checked first.
        let over = (MAX_RTR as u16 + 1).to_be_bytes();
        let mut bytes = patched(&frame, 60, &over);
        bytes.resize(bytes.len() + 8 * (MAX_RTR + 1), 0);
        assert_eq!(decode_vec(bytes), Err(DecodeError::BadCount));
        for count in [over, u16::MAX.to_be_bytes()] {
            assert_eq!(
                decode_vec(patched(&frame, 60, &count)),
                Err(DecodeError::BadCount)
            );
        }
        // Within the bound but more than the bytes left.
        let mut bytes = patched(&frame, 60, &(MAX_RTR as u16).to_be_bytes());
        bytes.resize(bytes.len() + 8 * (MAX_RTR - 1), 0);
        assert_eq!(decode_vec(bytes), Err(DecodeError::Truncated));
    }

    #[test]
    fn token_aru_addr_zero_is_none() {
        let bytes = patched(&token_max(), 44, &[0, 0, 0, 0]);
        let Ok(Frame::Token(t)) = decode_vec(bytes) else {
            panic!("token did not decode");
        };
        assert_eq!(t.aru_addr, None);
    }

    #[test]
    fn mcast_flags_and_origin_are_checked() {
        for flags in [0x02, 0x03, 0x80, 0xFF] {
            assert_eq!(
                decode_vec(patched(&mcast(false, b"abc"), 28, &[flags])),
                Err(DecodeError::BadFlags),
                "flags {flags:#x}"
            );
        }
        assert_eq!(
            decode_vec(patched(&mcast(true, b"abc"), 49, &[0, 0, 0, 0])),
            Err(DecodeError::ZeroNode)
        );
    }

    #[test]
    fn mcast_payload_len_must_match_the_frame_exactly() {
        let frame = mcast(false, b"abc");
        assert_eq!(
            decode_vec(patched(&frame, 29, &2u32.to_be_bytes())),
            Err(DecodeError::TrailingBytes)
        );
        assert_eq!(
            decode_vec(patched(&frame, 29, &4u32.to_be_bytes())),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_vec(patched(&frame, 29, &u32::MAX.to_be_bytes())),
            Err(DecodeError::Truncated)
        );
    }

    /// A join frame built by hand, so that its sets may break any rule.
    fn raw_join(proc_ids: &[u32], fail_ids: &[u32]) -> Vec<u8> {
        let mut bytes = encoded(&join(NodeSet::new(), NodeSet::new()));
        bytes.truncate(16);
        for ids in [proc_ids, fail_ids] {
            bytes.extend_from_slice(&(ids.len() as u16).to_be_bytes());
            for id in ids {
                bytes.extend_from_slice(&id.to_be_bytes());
            }
        }
        bytes
    }

    #[test]
    fn join_sets_are_bounded_sorted_and_free_of_zero() {
        let full: Vec<u32> = (1..=MAX_MEMBERS as u32).collect();
        let over: Vec<u32> = (1..=MAX_MEMBERS as u32 + 1).collect();
        assert!(decode_vec(raw_join(&full, &full)).is_ok());
        assert_eq!(decode_vec(raw_join(&over, &[])), Err(DecodeError::BadCount));
        assert_eq!(decode_vec(raw_join(&[], &over)), Err(DecodeError::BadCount));
        // proc_count at 16, ids from 18; fail_count follows the proc ids.
        let frame = join(nodes([1, 2]), nodes([3]));
        // Unsorted, duplicated, zero.
        assert_eq!(
            decode_vec(patched(&frame, 18, &[0, 0, 0, 2, 0, 0, 0, 1])),
            Err(DecodeError::BadCount)
        );
        assert_eq!(
            decode_vec(patched(&frame, 18, &[0, 0, 0, 2, 0, 0, 0, 2])),
            Err(DecodeError::BadCount)
        );
        assert_eq!(
            decode_vec(patched(&frame, 18, &[0, 0, 0, 0])),
            Err(DecodeError::ZeroNode)
        );
        assert_eq!(
            decode_vec(patched(&frame, 28, &[0, 0, 0, 0])),
            Err(DecodeError::ZeroNode)
        );
        // The fail set is checked as strictly as the proc set.
        let frame = join(NodeSet::new(), nodes([4, 5]));
        assert_eq!(
            decode_vec(patched(&frame, 20, &[0, 0, 0, 5, 0, 0, 0, 4])),
            Err(DecodeError::BadCount)
        );
    }

    #[test]
    fn commit_counts_and_index_are_checked() {
        // memb_index at 20, count at 22, members from 24.
        let frame = commit_mixed();
        assert_eq!(
            decode_vec(patched(&frame, 22, &[0, 0])),
            Err(DecodeError::BadCount)
        );
        // MAX_MEMBERS valid unfilled members pass, one more is refused.
        let mut bytes = encoded(&frame);
        bytes.truncate(22);
        let mut full = bytes.clone();
        full.extend_from_slice(&(MAX_MEMBERS as u16).to_be_bytes());
        for id in 1..=MAX_MEMBERS as u32 {
            full.extend_from_slice(&id.to_be_bytes());
            full.push(0);
        }
        assert!(decode_vec(full).is_ok());
        bytes.extend_from_slice(&(MAX_MEMBERS as u16 + 1).to_be_bytes());
        for id in 1..=MAX_MEMBERS as u32 + 1 {
            bytes.extend_from_slice(&id.to_be_bytes());
            bytes.push(0);
        }
        assert_eq!(decode_vec(bytes), Err(DecodeError::BadCount));
        assert_eq!(
            decode_vec(patched(&frame, 22, &u16::MAX.to_be_bytes())),
            Err(DecodeError::BadCount)
        );
        for index in [3, u16::MAX] {
            assert_eq!(
                decode_vec(patched(&frame, 20, &index.to_be_bytes())),
                Err(DecodeError::BadCount),
                "index {index}"
            );
        }
        // A count the bytes left cannot hold even if no member were filled.
        assert_eq!(
            decode_vec(patched(&frame, 22, &(MAX_MEMBERS as u16).to_be_bytes())),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn commit_members_are_sorted_non_zero_with_strict_bools() {
        // Members of commit_mixed: node 1 at 24 (filled, 34 bytes), node 5 at 58 (5
        // bytes), node 9 at 63.
        let frame = commit_mixed();
        assert_eq!(
            decode_vec(patched(&frame, 58, &[0, 0, 0, 1])),
            Err(DecodeError::BadCount)
        );
        assert_eq!(
            decode_vec(patched(&frame, 63, &[0, 0, 0, 4])),
            Err(DecodeError::BadCount)
        );
        assert_eq!(
            decode_vec(patched(&frame, 24, &[0, 0, 0, 0])),
            Err(DecodeError::ZeroNode)
        );
        assert_eq!(
            decode_vec(patched(&frame, 62, &[2])),
            Err(DecodeError::BadFlags)
        );
        assert_eq!(
            decode_vec(patched(&frame, 57, &[2])),
            Err(DecodeError::BadFlags)
        );
    }
}
