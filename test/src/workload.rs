//! Self-checking workload messages: every message the simulator multicasts through
//! [`crate::Cluster::send_numbered`] names itself and carries a checksum, so the checker can
//! tell exactly which message a delivery is and whether it arrived intact.
//!
//! Layout (little-endian; the layout is ours, Totem only sees opaque bytes):
//!
//! ```text
//! magic u32 | origin u32 | incarnation u32 | counter u64 | total length u32 | checksum u64 | filler
//! ```
//!
//! The filler is pseudo-random, drawn from the message id, so a message can be rebuilt
//! from its id and length alone, and the checksum covers the filler.

use std::fmt;

use bytes::Bytes;

use crate::rng::{splitmix64, Rng};

/// Marks a workload message ("AISW").
const MAGIC: u32 = 0x5753_4941;

/// Bytes before the filler; the shortest workload message.
pub const HEADER_LEN: usize = 32;

/// Names one workload message: who sent it, from which incarnation of that node, and
/// the sender incarnation's counter (0, 1, 2, ... over the messages `mcast` accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId {
    pub origin: u32,
    pub incarnation: u32,
    pub counter: u64,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}.{}#{}", self.origin, self.incarnation, self.counter)
    }
}

/// What a delivered byte string turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A workload message that passed its integrity check.
    Intact(MsgId),
    /// Does not start with the workload magic: a message some test sent raw.
    Foreign,
    /// Starts like a workload message but is damaged; says how.
    Corrupt(String),
}

fn filler_seed(id: MsgId) -> u64 {
    let mut s = u64::from(id.origin) << 32 | u64::from(id.incarnation);
    let a = splitmix64(&mut s);
    let mut t = id.counter ^ a;
    splitmix64(&mut t)
}

/// A fast 64-bit checksum over `data` (word at a time); not cryptographic, only meant to
/// catch damage.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ data.len() as u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ v).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    h ^ (h >> 29)
}

/// Builds message `id` of `len` bytes in total (at least [`HEADER_LEN`]; shorter
/// requests are padded up to it).
pub fn build(id: MsgId, len: usize) -> Bytes {
    let len = len.max(HEADER_LEN);
    let mut buf = vec![0u8; len];
    Rng::new(filler_seed(id)).fill(&mut buf[HEADER_LEN..]);
    let sum = checksum(&buf[HEADER_LEN..]);
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&id.origin.to_le_bytes());
    buf[8..12].copy_from_slice(&id.incarnation.to_le_bytes());
    buf[12..20].copy_from_slice(&id.counter.to_le_bytes());
    buf[20..24].copy_from_slice(&(len as u32).to_le_bytes());
    buf[24..32].copy_from_slice(&sum.to_le_bytes());
    Bytes::from(buf)
}

/// Identifies `msg` and checks its integrity.
pub fn parse(msg: &[u8]) -> Parsed {
    if msg.len() < 4 || msg[0..4] != MAGIC.to_le_bytes() {
        return Parsed::Foreign;
    }
    if msg.len() < HEADER_LEN {
        return Parsed::Corrupt(format!(
            "truncated to {} bytes, shorter than the header",
            msg.len()
        ));
    }
    let u32_at = |at: usize| u32::from_le_bytes(msg[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
    let id = MsgId {
        origin: u32_at(4),
        incarnation: u32_at(8),
        counter: u64_at(12),
    };
    let len = u32_at(20) as usize;
    if len != msg.len() {
        return Parsed::Corrupt(format!(
            "{id}: header says {len} bytes, delivered {}",
            msg.len()
        ));
    }
    if checksum(&msg[HEADER_LEN..]) != u64_at(24) {
        return Parsed::Corrupt(format!("{id}: checksum mismatch ({len} bytes)"));
    }
    Parsed::Intact(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_caught() {
        let id = MsgId {
            origin: 3,
            incarnation: 2,
            counter: 41,
        };
        for len in [0, HEADER_LEN, HEADER_LEN + 1, 1000, 65_536] {
            let m = build(id, len);
            assert_eq!(m.len(), len.max(HEADER_LEN));
            assert_eq!(parse(&m), Parsed::Intact(id));
            assert_eq!(build(id, len), m, "rebuilding gives the same bytes");
        }
        let m = build(id, 100);
        let mut bad = m.to_vec();
        bad[77] ^= 1;
        assert!(matches!(parse(&bad), Parsed::Corrupt(_)));
        assert!(matches!(parse(&m[..99]), Parsed::Corrupt(_)));
        assert!(matches!(parse(&m[..10]), Parsed::Corrupt(_)));
        assert_eq!(parse(b"hello"), Parsed::Foreign);
        assert_ne!(build(id, 100), build(MsgId { counter: 42, ..id }, 100));
    }
}
