//! A connection's output: encoded response and callback frames not yet written.
//!
//! Small frames are copied into one growing buffer, so that many of them go out in one
//! write. A large body (a delivered message of [`ZERO_COPY_MIN`] bytes or more) is not
//! copied: its frame header goes into the buffer and the body itself, a `Bytes` shared
//! with whoever made it, is queued as its own chunk; `write_to` hands the kernel all
//! chunks in one vectored write. A 64 KiB message was otherwise copied once more per
//! client at every node (test/bench/RESULTS.md).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use ais_proto::ipc::RESPONSE_HEADER_LEN;
use ais_proto::SaError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bodies at least this long are queued without a copy.
pub const ZERO_COPY_MIN: usize = 8 << 10;
/// Most chunks handed to one vectored write (well below any IOV_MAX).
const MAX_IOV: usize = 64;
/// A buffer this large is given back to the allocator once it is empty, so a burst does
/// not keep its memory resident.
const SHRINK: usize = 1 << 20;

/// Frames waiting to be written, oldest first: `chunks`, then `tail`.
#[derive(Default)]
pub struct OutQueue {
    /// Frozen parts: earlier small frames and large bodies, in order.
    chunks: VecDeque<Bytes>,
    /// Where small frames (and large bodies' headers) are appended.
    tail: BytesMut,
    /// Bytes in `chunks` and `tail` together.
    len: usize,
}

impl OutQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one frame: header (length, id, error) and `body`.
    pub fn push_frame(&mut self, id: u32, error: SaError, body: &Bytes) {
        self.push_frame_parts(id, error, body, &Bytes::new());
    }

    /// Appends one frame whose body is `body` followed by `tail`.
    pub fn push_frame_parts(&mut self, id: u32, error: SaError, body: &Bytes, tail: &Bytes) {
        let total = RESPONSE_HEADER_LEN + body.len() + tail.len();
        if total < ZERO_COPY_MIN {
            self.tail.reserve(total);
        }
        // The header's length field counts both parts.
        self.tail.put_u32(total as u32);
        self.tail.put_u32(id);
        self.tail.put_u32(error.as_u32());
        self.put_part(body);
        self.put_part(tail);
        self.len += total;
    }

    /// Copies a small part into the buffer; queues a large one as it is.
    fn put_part(&mut self, part: &Bytes) {
        if part.len() < ZERO_COPY_MIN {
            self.tail.extend_from_slice(part);
        } else {
            if !self.tail.is_empty() {
                self.chunks.push_back(self.tail.split().freeze());
            }
            self.chunks.push_back(part.clone());
        }
    }

    /// Writes as much as `w` takes in one vectored write; returns how many bytes.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        // On the stack: this runs for every write to every client.
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut used = 0;
        for c in self.chunks.iter().take(MAX_IOV - 1) {
            slices[used] = IoSlice::new(c);
            used += 1;
        }
        if self.chunks.len() < MAX_IOV && !self.tail.is_empty() {
            slices[used] = IoSlice::new(&self.tail);
            used += 1;
        }
        let n = w.write_vectored(&slices[..used])?;
        self.consume(n);
        Ok(n)
    }

    /// Drops the first `n` bytes, which were written.
    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                self.tail.advance(n);
                break;
            };
            if n < front.len() {
                front.advance(n);
                break;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
        if self.len == 0 && self.tail.capacity() > SHRINK {
            self.tail = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ais_proto::ipc;

    /// A writer taking at most `max` bytes per call, recording everything.
    struct Trickle {
        max: usize,
        got: Vec<u8>,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.max {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn encoded(frames: &[(u32, Bytes)]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (id, body) in frames {
            ipc::put_response(&mut out, *id, SaError::Ok, body);
        }
        out.to_vec()
    }

    #[test]
    fn small_and_large_frames_come_out_in_order_whatever_the_writes_take() {
        let large = Bytes::from((0..70_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let frames: Vec<(u32, Bytes)> = vec![
            (1, Bytes::from_static(b"one")),
            (2, large.clone()),
            (3, Bytes::from_static(b"three")),
            (4, large.slice(..ZERO_COPY_MIN)),
            (5, Bytes::new()),
        ];
        let want = encoded(&frames);
        for max in [1, 7, 12, 4096, 1 << 20] {
            let mut q = OutQueue::default();
            for (id, body) in &frames {
                q.push_frame(*id, SaError::Ok, body);
            }
            assert_eq!(q.len(), want.len());
            let mut w = Trickle {
                max,
                got: Vec::new(),
                calls: 0,
            };
            let mut rounds = 0;
            while !q.is_empty() {
                let before = q.len();
                let n = q.write_to(&mut w).unwrap();
                assert_eq!(q.len(), before - n);
                rounds += 1;
                assert!(rounds <= want.len(), "no progress at max {max}");
            }
            assert_eq!(w.got, want, "max {max}");
        }
    }

    #[test]
    fn a_frame_in_two_parts_is_the_frame_of_their_concatenation() {
        let large = Bytes::from(vec![3u8; ZERO_COPY_MIN + 5]);
        let head = Bytes::from_static(b"head");
        for tail in [Bytes::new(), Bytes::from_static(b"tail"), large.clone()] {
            let mut whole = BytesMut::new();
            whole.extend_from_slice(&head);
            whole.extend_from_slice(&tail);
            let want = encoded(&[(6, whole.freeze())]);
            let mut q = OutQueue::default();
            q.push_frame_parts(6, SaError::Ok, &head, &tail);
            assert_eq!(q.len(), want.len());
            let mut w = Trickle {
                max: 1000,
                got: Vec::new(),
                calls: 0,
            };
            while !q.is_empty() {
                q.write_to(&mut w).unwrap();
            }
            assert_eq!(w.got, want);
        }
        let mut q = OutQueue::default();
        q.push_frame_parts(6, SaError::Ok, &head, &large);
        assert_eq!(q.chunks.back().map(|c| c.as_ptr()), Some(large.as_ptr()));
    }

    #[test]
    fn a_large_body_is_queued_without_a_copy_and_a_small_one_is_copied() {
        let large = Bytes::from(vec![7u8; ZERO_COPY_MIN]);
        let mut q = OutQueue::default();
        q.push_frame(9, SaError::Ok, &large);
        // The body chunk is the caller's buffer itself.
        assert_eq!(q.chunks.len(), 2);
        assert_eq!(q.chunks[1].as_ptr(), large.as_ptr());
        let small = Bytes::from(vec![1u8; ZERO_COPY_MIN - 1]);
        q.push_frame(10, SaError::Ok, &small);
        assert_eq!(q.chunks.len(), 2, "a small frame goes into the tail");
        assert_eq!(q.tail.len(), RESPONSE_HEADER_LEN + small.len());
    }
}
