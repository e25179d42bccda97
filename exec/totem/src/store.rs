//! The messages of one ring, indexed by sequence number: what is held, what every member
//! is known to hold (`aru`), what has been delivered, and what may be released.
//!
//! Sequence numbers of a ring start at 1 and are dense, so a `VecDeque` window starting at
//! the lowest unreleased number is all the index needed: inserting, looking up and
//! releasing are O(1) and nothing is allocated per message once the window has grown.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::types::NodeId;

/// How far above the lowest unreleased message a sequence number may be and still be
/// accepted. Flow control keeps a sane ring far below this; it bounds what a buggy or
/// hostile peer can make us allocate.
pub(crate) const MAX_WINDOW: u64 = 1 << 16;

/// One message of the ring as held for delivery and retransmission.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    /// The member that assigned its sequence number (for a message recovered from an
    /// older ring: the origin in that older ring).
    pub origin: NodeId,
    /// The frame as it went on the wire, resent as-is on a retransmit request. Empty for
    /// messages recovered into an old ring's store, which is never retransmitted into.
    pub frame: Bytes,
    /// The packed application messages (a slice of `frame`).
    pub payload: Bytes,
    /// True for a frame that carried an older ring's message through this ring's recovery:
    /// it was (or will be) delivered from that older ring's store, never from this one.
    pub carries_recovered: bool,
}

#[derive(Debug)]
pub(crate) struct RingStore {
    /// Sequence number of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<Held>>,
    /// Every message up to here is held (or was held and released).
    aru: u64,
    /// Highest sequence number held.
    high_seq: u64,
    /// Highest sequence number handed to delivery.
    delivered: u64,
}

impl Default for RingStore {
    fn default() -> Self {
        RingStore {
            base: 1,
            slots: VecDeque::new(),
            aru: 0,
            high_seq: 0,
            delivered: 0,
        }
    }
}

impl RingStore {
    pub fn aru(&self) -> u64 {
        self.aru
    }

    pub fn high_seq(&self) -> u64 {
        self.high_seq
    }

    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Whether `seq` could be stored: above what was released and within the window.
    pub fn in_window(&self, seq: u64) -> bool {
        seq >= self.base && seq - self.base < MAX_WINDOW
    }

    /// Stores `held` at `seq`; false if it was already held, released or out of window.
    pub fn insert(&mut self, seq: u64, held: Held) -> bool {
        if seq == 0 || !self.in_window(seq) {
            return false;
        }
        let idx = (seq - self.base) as usize;
        if idx >= self.slots.len() {
            self.slots.resize_with(idx + 1, || None);
        }
        if self.slots[idx].is_some() {
            return false;
        }
        self.slots[idx] = Some(held);
        self.high_seq = self.high_seq.max(seq);
        while self.get(self.aru + 1).is_some() {
            self.aru += 1;
        }
        true
    }

    pub fn get(&self, seq: u64) -> Option<&Held> {
        if seq < self.base {
            return None;
        }
        self.slots.get((seq - self.base) as usize)?.as_ref()
    }

    /// Whether `seq` is held or was released (released implies every member had it).
    pub fn has(&self, seq: u64) -> bool {
        seq < self.base || self.get(seq).is_some()
    }

    /// Marks everything up to `seq` delivered.
    pub fn set_delivered(&mut self, seq: u64) {
        self.delivered = self.delivered.max(seq);
    }

    /// Frees delivered messages up to `upto`, which every member is known to hold.
    pub fn release(&mut self, upto: u64) {
        let upto = upto.min(self.delivered).min(self.aru);
        while self.base <= upto {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Sequence numbers in `from..=to` that are neither held nor released, lowest first.
    pub fn missing(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        let from = from.max(self.base);
        (from..=to).filter(move |&s| self.get(s).is_none())
    }

    /// Held messages with sequence numbers in `from..=to`, lowest first.
    pub fn held_range(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, &Held)> + '_ {
        let from = from.max(self.base);
        (from..=to).filter_map(move |s| self.get(s).map(|h| (s, h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(n: u32) -> Held {
        Held {
            origin: NodeId(n),
            frame: Bytes::new(),
            payload: Bytes::new(),
            carries_recovered: false,
        }
    }

    #[test]
    fn aru_follows_the_contiguous_prefix() {
        let mut s = RingStore::default();
        assert!(s.insert(2, held(1)));
        assert_eq!(s.aru(), 0);
        assert!(s.insert(1, held(1)));
        assert_eq!(s.aru(), 2);
        assert!(!s.insert(2, held(1)), "duplicate");
        assert!(s.insert(5, held(1)));
        assert_eq!(s.high_seq(), 5);
        assert_eq!(s.missing(1, 6).collect::<Vec<_>>(), vec![3, 4, 6]);
    }

    #[test]
    fn release_stops_at_delivered_and_aru() {
        let mut s = RingStore::default();
        for i in 1..=4 {
            s.insert(i, held(1));
        }
        s.release(4);
        assert!(s.get(1).is_some(), "nothing delivered yet");
        s.set_delivered(2);
        s.release(4);
        assert!(s.get(2).is_none() && s.has(2));
        assert!(s.get(3).is_some());
        assert!(
            !s.insert(1, held(1)),
            "released numbers are not stored again"
        );
    }

    #[test]
    fn out_of_window_is_refused() {
        let mut s = RingStore::default();
        assert!(!s.insert(MAX_WINDOW + 1, held(1)));
        assert!(!s.insert(0, held(1)));
    }
}
