//! What the cluster records of a run: per node incarnation, every event it emitted and
//! every start and stop, each with its virtual time; and one running hash over all of it
//! (the determinism check compares two runs' hashes).

use std::fmt;

use bytes::Bytes;
use totem::{ConfChange, Instant, NodeId};

use crate::checker::fmt_time;
use crate::workload::{self, MsgId};

/// A delivered payload, kept small: a workload message is stored as its id and length
/// and rebuilt on demand; anything else is kept as it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Workload { id: MsgId, len: u32 },
    Raw(Bytes),
}

impl Payload {
    /// The delivered bytes.
    pub fn bytes(&self) -> Bytes {
        match self {
            Payload::Workload { id, len } => workload::build(*id, *len as usize),
            Payload::Raw(b) => b.clone(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Payload::Workload { len, .. } => *len as usize,
            Payload::Raw(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One recorded happening at a node incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    /// The incarnation started (a fresh `Srp`), with the ring seq it was given.
    Start {
        ring_seq: u64,
    },
    /// `mcast` accepted this message (a workload message is recorded by id).
    Mcast {
        payload: Payload,
    },
    Deliver {
        origin: NodeId,
        payload: Payload,
    },
    ConfChange(ConfChange),
    /// `leave()` was called; the node stops shortly after.
    Leave,
    /// Stopped after a leave.
    Stop,
    Crash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    pub at: Instant,
    pub node: u32,
    pub incarnation: u32,
    pub event: TraceEvent,
}

impl fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} n{}#{} ",
            fmt_time(self.at),
            self.node,
            self.incarnation
        )?;
        match &self.event {
            TraceEvent::Start { ring_seq } => write!(f, "start (ring seq {ring_seq})"),
            TraceEvent::Mcast { payload } => match payload {
                Payload::Workload { id, len } => write!(f, "mcast {id} ({len} B)"),
                Payload::Raw(b) => write!(f, "mcast raw {} B", b.len()),
            },
            TraceEvent::Deliver { origin, payload } => match payload {
                Payload::Workload { id, len } => write!(f, "deliver {id} ({len} B) from {origin}"),
                Payload::Raw(b) => write!(f, "deliver raw {} B from {origin}", b.len()),
            },
            TraceEvent::ConfChange(cc) => write!(
                f,
                "{:?} ring {} members {} left {} joined {}",
                cc.kind, cc.ring_id, cc.members, cc.left, cc.joined
            ),
            TraceEvent::Leave => f.write_str("leave"),
            TraceEvent::Stop => f.write_str("stop (after leave)"),
            TraceEvent::Crash => f.write_str("crash"),
        }
    }
}

/// 64-bit FNV-1a.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xCBF2_9CE4_8422_2325)
    }
}

impl Fnv64 {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }

    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }

    pub fn finish(&self) -> u64 {
        self.0
    }

    fn add_payload(&mut self, payload: &Payload) {
        match payload {
            Payload::Workload { id, len } => {
                self.write_u64(u64::from(id.origin) << 32 | u64::from(id.incarnation));
                self.write_u64(id.counter);
                self.write_u64(u64::from(*len));
            }
            Payload::Raw(b) => {
                self.write_u64(b.len() as u64);
                self.write(&b[..b.len().min(64)]);
            }
        }
    }

    /// Folds `e` into the hash: its time, node, incarnation and content (a raw payload by
    /// its length and first bytes, a workload one by its id).
    pub fn add_entry(&mut self, e: &TraceEntry) {
        self.write_u64(e.at.0);
        self.write_u64(u64::from(e.node) << 32 | u64::from(e.incarnation));
        match &e.event {
            TraceEvent::Start { ring_seq } => {
                self.write(&[1]);
                self.write_u64(*ring_seq);
            }
            TraceEvent::Mcast { payload } => {
                self.write(&[7]);
                self.add_payload(payload);
            }
            TraceEvent::Deliver { origin, payload } => {
                self.write(&[2]);
                self.write_u64(u64::from(origin.0));
                self.add_payload(payload);
            }
            TraceEvent::ConfChange(cc) => {
                self.write(&[3, cc.kind as u8]);
                self.write_u64(u64::from(cc.ring_id.rep.0));
                self.write_u64(cc.ring_id.seq);
                for set in [&cc.members, &cc.left, &cc.joined] {
                    self.write_u64(set.len() as u64);
                    for n in set.iter() {
                        self.write(&n.0.to_le_bytes());
                    }
                }
            }
            TraceEvent::Leave => self.write(&[4]),
            TraceEvent::Stop => self.write(&[5]),
            TraceEvent::Crash => self.write(&[6]),
        }
    }
}
