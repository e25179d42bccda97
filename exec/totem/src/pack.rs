//! Packing many small messages into one frame and cutting large ones into fragments.
//!
//! A frame's payload is a run of chunks. `WHOLE` is a complete message:
//! `kind: u8 | len: u16 | bytes`. `FIRST`, `MIDDLE` and `LAST` are consecutive pieces of
//! one message: `kind | len | frag_id: u32 | total (FIRST) or offset (others): u32 |
//! bytes`. A sender puts the pieces of one message in consecutive frames of its own, so a
//! receiver reassembles per origin, in delivery order; `frag_id` (a per-sender counter)
//! and the offset let it tell that a piece belongs to the message it is assembling, so a
//! piece lost with a frame that recovery had to skip spoils only its own message.
//!
//! A message cut by a configuration change is never delivered in part: receivers drop every
//! unfinished assembly at a configuration change, and a sender whose message was only
//! partly sent when the ring changed sends it again, whole, in the new ring
//! ([`Packer::restart_partial`]), under a new `frag_id`.
//!
//! The sender does not reassemble its own fragmented messages: it keeps each one whole
//! ([`Originals`]) from its first piece until its last comes back for delivery, and
//! delivers that, sparing a copy of every large message it sends.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::types::NodeId;

/// Largest message [`crate::Srp::mcast`] accepts.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

const WHOLE: u8 = 0;
const FIRST: u8 = 1;
const MIDDLE: u8 = 2;
const LAST: u8 = 3;

/// Header of a `WHOLE` chunk.
pub(crate) const CHUNK_HEADER: usize = 3;
/// Header of a `FIRST`, `MIDDLE` or `LAST` chunk.
const FRAGMENT_HEADER: usize = 11;
/// A fragment smaller than this is not started at the end of a frame; the frame is
/// closed instead, so that fragments are few and large.
const MIN_FRAGMENT: usize = 64;

/// The local send queue: messages waiting for the token, and how far the head message has
/// been sent when it is being fragmented.
#[derive(Debug, Default)]
pub(crate) struct Packer {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// Bytes of `queue[0]` already put in frames.
    head_sent: usize,
    /// `frag_id` of the message being fragmented, and the next one to use.
    frag_id: u32,
    /// Every message whose first piece went out, until its delivery here.
    started: Originals,
}

/// Messages this node cut into fragments, by `frag_id`, in the order it sent them.
#[derive(Debug, Default)]
pub(crate) struct Originals {
    queue: VecDeque<(u32, Bytes)>,
}

/// Most started messages kept at once; past it the oldest are forgotten (and
/// reassembled from their pieces when they come, which costs a copy, nothing else).
const MAX_ORIGINALS: usize = 1024;

impl Originals {
    fn push(&mut self, frag_id: u32, msg: Bytes) {
        if self.queue.len() == MAX_ORIGINALS {
            self.queue.pop_front();
        }
        self.queue.push_back((frag_id, msg));
    }

    /// The message started under `frag_id` if it is `total` bytes long. Older entries
    /// go: own pieces are delivered in the order they were sent, so theirs were cut
    /// by a configuration change and sent again under a new id.
    fn take(&mut self, frag_id: u32, total: usize) -> Option<Bytes> {
        let at = self.queue.iter().position(|(id, _)| *id == frag_id)?;
        self.queue.drain(..at);
        let (_, msg) = self.queue.pop_front()?;
        (msg.len() == total).then_some(msg)
    }

    /// Forgets every message (at a configuration change, with the assemblies).
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

impl Packer {
    pub fn push(&mut self, msg: Bytes) {
        self.queued_bytes += msg.len();
        self.queue.push_back(msg);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// About how many frames of `payload_max` bytes the queue still needs: the backlog
    /// this node reports on the token.
    pub fn frames_needed(&self, payload_max: usize) -> u32 {
        if self.queue.is_empty() {
            return 0;
        }
        let bytes = self.queued_bytes - self.head_sent + self.queue.len() * CHUNK_HEADER;
        bytes.div_ceil(payload_max.max(1)).max(1) as u32
    }

    /// Forgets how much of the head message was sent, so that it goes out again whole.
    pub fn restart_partial(&mut self) {
        self.head_sent = 0;
    }

    /// The messages started here and not yet delivered here, for [`Unpacker::unpack`].
    pub fn originals(&mut self) -> &mut Originals {
        &mut self.started
    }

    /// Appends to `out` the chunks of one frame payload of at most `payload_max` bytes.
    /// Returns false (and appends nothing) when the queue is empty.
    pub fn fill(&mut self, payload_max: usize, out: &mut BytesMut) -> bool {
        let start = out.len();
        while let Some(head) = self.queue.front() {
            let used = out.len() - start;
            let space = payload_max.saturating_sub(used);
            if self.head_sent == 0 {
                if CHUNK_HEADER + head.len() <= space {
                    out.put_u8(WHOLE);
                    out.put_u16(head.len() as u16);
                    out.put_slice(head);
                    self.pop_head();
                    continue;
                }
                let fits_in_empty_frame = CHUNK_HEADER + head.len() <= payload_max;
                if (fits_in_empty_frame && used > 0) || space < FRAGMENT_HEADER + MIN_FRAGMENT {
                    break;
                }
                self.frag_id = self.frag_id.wrapping_add(1);
                self.started.push(self.frag_id, head.clone());
                let n = (space - FRAGMENT_HEADER).min(u16::MAX as usize);
                out.put_u8(FIRST);
                out.put_u16(n as u16);
                out.put_u32(self.frag_id);
                out.put_u32(head.len() as u32);
                out.put_slice(&head[..n]);
                self.head_sent = n;
                break;
            }
            let rest = head.len() - self.head_sent;
            if FRAGMENT_HEADER + rest <= space {
                out.put_u8(LAST);
                out.put_u16(rest as u16);
                out.put_u32(self.frag_id);
                out.put_u32(self.head_sent as u32);
                out.put_slice(&head[self.head_sent..]);
                self.pop_head();
                continue;
            }
            if space < FRAGMENT_HEADER + MIN_FRAGMENT {
                break;
            }
            let n = (space - FRAGMENT_HEADER).min(u16::MAX as usize);
            out.put_u8(MIDDLE);
            out.put_u16(n as u16);
            out.put_u32(self.frag_id);
            out.put_u32(self.head_sent as u32);
            out.put_slice(&head[self.head_sent..self.head_sent + n]);
            self.head_sent += n;
            break;
        }
        out.len() > start
    }

    fn pop_head(&mut self) {
        if let Some(m) = self.queue.pop_front() {
            self.queued_bytes -= m.len();
        }
        self.head_sent = 0;
    }
}

/// A frame payload that does not parse as chunks; the rest of that frame is dropped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MalformedPayload;

/// Reassembly of fragmented messages, per origin.
#[derive(Debug, Default)]
pub(crate) struct Unpacker {
    partial: BTreeMap<NodeId, Assembly>,
}

#[derive(Debug)]
struct Assembly {
    frag_id: u32,
    /// Bytes received so far: the offset the next piece must have.
    have: usize,
    total: usize,
    data: Pieces,
}

#[derive(Debug)]
enum Pieces {
    /// Another node's message, copied together piece by piece.
    Copied(BytesMut),
    /// Our own: the message as it was sent; the pieces are only counted.
    Original(Bytes),
}

impl Unpacker {
    /// Drops every unfinished message (at a configuration change).
    pub fn reset(&mut self) {
        self.partial.clear();
    }

    /// Splits `payload` from `origin` into messages, calling `deliver` for each complete
    /// one in order. Whole messages are zero-copy slices of `payload`. `own`: the
    /// messages this node started, when `origin` is this node; a fragmented one found
    /// there is delivered as it was sent instead of reassembled.
    pub fn unpack(
        &mut self,
        origin: NodeId,
        payload: &Bytes,
        mut own: Option<&mut Originals>,
        mut deliver: impl FnMut(Bytes),
    ) -> Result<(), MalformedPayload> {
        let mut rest = payload.clone();
        while rest.has_remaining() {
            if rest.remaining() < CHUNK_HEADER {
                return Err(MalformedPayload);
            }
            let kind = rest.get_u8();
            let len = rest.get_u16() as usize;
            let (frag_id, total_or_offset) = if kind == WHOLE {
                (0, 0)
            } else {
                if rest.remaining() < FRAGMENT_HEADER - CHUNK_HEADER {
                    return Err(MalformedPayload);
                }
                (rest.get_u32(), rest.get_u32() as usize)
            };
            if rest.remaining() < len {
                return Err(MalformedPayload);
            }
            let data = rest.split_to(len);
            match kind {
                WHOLE => {
                    // A whole message interrupts any assembly of the same origin: the
                    // sender restarted it, so the pieces we hold can never complete.
                    self.partial.remove(&origin);
                    deliver(data);
                }
                FIRST => {
                    let total = total_or_offset;
                    if total > MAX_MESSAGE_LEN || total <= len {
                        self.partial.remove(&origin);
                        return Err(MalformedPayload);
                    }
                    let original = own.as_deref_mut().and_then(|o| o.take(frag_id, total));
                    let data = match original {
                        Some(msg) => Pieces::Original(msg),
                        None => {
                            let mut buf = BytesMut::with_capacity(total);
                            buf.put_slice(&data);
                            Pieces::Copied(buf)
                        }
                    };
                    self.partial.insert(
                        origin,
                        Assembly {
                            frag_id,
                            have: len,
                            total,
                            data,
                        },
                    );
                }
                MIDDLE | LAST => {
                    let offset = total_or_offset;
                    let Some(asm) = self.partial.get_mut(&origin) else {
                        // The start of this message was cut off.
                        continue;
                    };
                    if asm.frag_id != frag_id || asm.have != offset {
                        // A piece of this message, or the end of the one we hold, went
                        // with a frame that was never recovered: neither can complete.
                        self.partial.remove(&origin);
                        continue;
                    }
                    let have = asm.have + data.len();
                    let complete = have == asm.total;
                    if have > asm.total || (kind == LAST) != complete {
                        self.partial.remove(&origin);
                        return Err(MalformedPayload);
                    }
                    asm.have = have;
                    if let Pieces::Copied(buf) = &mut asm.data {
                        buf.put_slice(&data);
                    }
                    if complete {
                        if let Some(asm) = self.partial.remove(&origin) {
                            deliver(match asm.data {
                                Pieces::Copied(buf) => buf.freeze(),
                                Pieces::Original(msg) => msg,
                            });
                        }
                    }
                }
                _ => return Err(MalformedPayload),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(p: &mut Packer, max: usize) -> Vec<Bytes> {
        let mut v = Vec::new();
        loop {
            let mut out = BytesMut::new();
            if !p.fill(max, &mut out) {
                return v;
            }
            assert!(out.len() <= max);
            v.push(out.freeze());
        }
    }

    fn msg(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    fn unpack_all(frames: &[Bytes]) -> Vec<Bytes> {
        let mut u = Unpacker::default();
        let mut got = Vec::new();
        for f in frames {
            u.unpack(NodeId(1), f, None, |m| got.push(m)).unwrap();
        }
        got
    }

    #[test]
    fn small_messages_share_frames() {
        let mut p = Packer::default();
        let sent: Vec<Bytes> = (0..100).map(|i| msg(64, i)).collect();
        for m in &sent {
            p.push(m.clone());
        }
        let fs = frames(&mut p, 1400);
        assert_eq!(fs.len(), 5, "20 messages of 64+3 bytes fit in 1400");
        assert_eq!(unpack_all(&fs), sent);
        assert_eq!(p.queued_bytes(), 0);
    }

    #[test]
    fn one_mebibyte_round_trips_through_fragments() {
        let mut p = Packer::default();
        let big = msg(MAX_MESSAGE_LEN, 7);
        p.push(msg(10, 1));
        p.push(big.clone());
        p.push(msg(10, 2));
        let fs = frames(&mut p, 1400);
        assert!(fs.len() > MAX_MESSAGE_LEN / 1400);
        assert_eq!(unpack_all(&fs), vec![msg(10, 1), big, msg(10, 2)]);
    }

    #[test]
    fn restarted_message_is_delivered_once_whole() {
        let mut p = Packer::default();
        let big = msg(5000, 3);
        p.push(big.clone());
        let mut first = BytesMut::new();
        assert!(p.fill(1400, &mut first));
        p.restart_partial();
        let mut u = Unpacker::default();
        let mut got = Vec::new();
        u.unpack(NodeId(1), &first.freeze(), None, |m| got.push(m))
            .unwrap();
        u.reset(); // the configuration changed
        for f in frames(&mut p, 1400) {
            u.unpack(NodeId(1), &f, None, |m| got.push(m)).unwrap();
        }
        assert_eq!(got, vec![big]);
    }

    #[test]
    fn continuation_without_start_is_dropped() {
        let mut p = Packer::default();
        p.push(msg(3000, 9));
        p.push(msg(20, 4));
        let fs = frames(&mut p, 1400);
        let got = unpack_all(&fs[1..]);
        assert_eq!(got, vec![msg(20, 4)]);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let mut u = Unpacker::default();
        let bad: [&[u8]; 4] = [
            &[0, 0],
            &[0, 0, 5, 1],
            &[9, 0, 0],
            &[1, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, 7],
        ];
        for b in bad {
            let r = u.unpack(NodeId(1), &Bytes::copy_from_slice(b), None, |_| {
                panic!("delivered")
            });
            assert_eq!(r, Err(MalformedPayload), "{b:?}");
        }
    }

    #[test]
    fn a_lost_piece_spoils_only_its_own_message() {
        let mut p = Packer::default();
        p.push(msg(5000, 1));
        p.push(msg(5000, 2));
        let fs = frames(&mut p, 1400);
        // Lose the frame that ends the first message and starts the second.
        let cut = fs.iter().position(contains_last).unwrap();
        let mut kept = fs.clone();
        kept.remove(cut);
        assert!(unpack_all(&kept).is_empty());
        assert_eq!(unpack_all(&fs), vec![msg(5000, 1), msg(5000, 2)]);
    }

    /// Whether a frame payload holds a LAST chunk.
    fn contains_last(f: &Bytes) -> bool {
        let mut rest = f.clone();
        while rest.remaining() >= CHUNK_HEADER {
            let kind = rest.get_u8();
            let len = rest.get_u16() as usize;
            if kind != WHOLE {
                rest.advance(FRAGMENT_HEADER - CHUNK_HEADER);
            }
            if kind == LAST {
                return true;
            }
            rest.advance(len);
        }
        false
    }

    /// Unpacks `frames` as this node's own, with `p`'s originals.
    fn unpack_own(p: &mut Packer, u: &mut Unpacker, frames: &[Bytes]) -> Vec<Bytes> {
        let mut got = Vec::new();
        for f in frames {
            u.unpack(NodeId(1), f, Some(p.originals()), |m| got.push(m))
                .unwrap();
        }
        got
    }

    #[test]
    fn own_fragmented_messages_are_delivered_as_sent_not_reassembled() {
        let mut p = Packer::default();
        let sent = [msg(5000, 1), msg(10, 2), msg(70_000, 3)];
        for m in &sent {
            p.push(m.clone());
        }
        let fs = frames(&mut p, 1400);
        assert_eq!(p.originals().len(), 2, "the two large messages are kept");
        let got = unpack_own(&mut p, &mut Unpacker::default(), &fs);
        assert_eq!(got, sent);
        // The very buffers that were sent, not copies.
        assert_eq!(got[0].as_ptr(), sent[0].as_ptr());
        assert_eq!(got[2].as_ptr(), sent[2].as_ptr());
        assert_eq!(p.originals().len(), 0, "delivered: forgotten");
    }

    #[test]
    fn own_message_restarted_after_a_configuration_change_is_delivered_once() {
        let mut p = Packer::default();
        let big = msg(5000, 3);
        p.push(big.clone());
        let mut u = Unpacker::default();
        let mut first = BytesMut::new();
        assert!(p.fill(1400, &mut first));
        assert!(unpack_own(&mut p, &mut u, &[first.freeze()]).is_empty());
        // The ring changed with the message half sent: the pieces here are dropped
        // and the message goes again, whole, under a new id.
        u.reset();
        p.restart_partial();
        let rest = frames(&mut p, 1400);
        let got = unpack_own(&mut p, &mut u, &rest);
        assert_eq!(got, vec![big.clone()]);
        assert_eq!(got[0].as_ptr(), big.as_ptr());
        assert_eq!(p.originals().len(), 0);
    }

    #[test]
    fn own_pieces_without_an_original_are_reassembled() {
        let mut p = Packer::default();
        let big = msg(5000, 4);
        p.push(big.clone());
        let fs = frames(&mut p, 1400);
        p.originals().clear();
        let got = unpack_own(&mut p, &mut Unpacker::default(), &fs);
        assert_eq!(got, vec![big.clone()]);
        assert_ne!(
            got[0].as_ptr(),
            big.as_ptr(),
            "a copy, put together from the pieces"
        );
    }

    #[test]
    fn originals_are_bounded_and_stale_ones_go() {
        let mut o = Originals::default();
        for id in 0..(MAX_ORIGINALS as u32 + 10) {
            o.push(id, msg(1, 0));
        }
        assert_eq!(o.len(), MAX_ORIGINALS);
        assert!(o.take(3, 1).is_none(), "pushed out by newer ones");
        assert!(o.take(20, 1).is_some());
        assert_eq!(
            o.len(),
            MAX_ORIGINALS - (20 - 10 + 1),
            "older than 20 dropped too"
        );
        assert!(o.take(21, 2).is_none(), "wrong length: not ours");
    }

    #[test]
    fn empty_message_is_carried() {
        let mut p = Packer::default();
        p.push(Bytes::new());
        let fs = frames(&mut p, 100);
        assert_eq!(unpack_all(&fs), vec![Bytes::new()]);
    }
}
