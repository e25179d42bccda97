//! The Totem core alone, as fast as it goes: `Srp` instances in one process joined by a
//! lossless in-memory network, every node keeping its send queue full. Shared by the
//! `totem-bench` binary (throughput) and the `core_alloc` test (heap allocations per
//! delivered message), so both measure the same loop.
//!
//! Virtual time moves a microsecond per packet, so timers stay far away on a busy ring;
//! the wall clock is the caller's business.

use std::collections::VecDeque;

use bytes::Bytes;
use totem::{Dest, Event, Instant, MembState, NodeId, Srp, TotemConfig};

/// Messages kept queued per node: enough that the token always finds work.
pub const QUEUE_TARGET: usize = 2_000;

/// Steps between two top-ups of the send queues in [`RingBench::run_until`].
const STEPS_PER_TOP_UP: usize = 100;

pub struct RingBench {
    nodes: Vec<Srp>,
    /// Datagrams in flight, in send order: (destination index, frame).
    wire: VecDeque<(usize, Bytes)>,
    now: Instant,
    /// Frames the nodes put on the wire (a multicast counts once).
    pub frames: u64,
    /// Messages delivered at the first node.
    pub delivered_at_first: u64,
}

impl RingBench {
    /// `n` nodes (ids 1..=n) with the default configuration, not yet formed.
    pub fn new(n: u32) -> RingBench {
        let params = TotemConfig::default()
            .resolve(n as usize)
            .expect("default config is valid");
        let now = Instant(0);
        let nodes = (1..=n)
            .map(|i| Srp::new(params.clone(), NodeId(i), 0, now))
            .collect();
        let mut b = RingBench {
            nodes,
            wire: VecDeque::new(),
            now,
            frames: 0,
            delivered_at_first: 0,
        };
        for i in 0..b.nodes.len() {
            b.drain(i);
        }
        b
    }

    /// `n` nodes on one operational ring of all of them. Panics if it does not form
    /// within a bounded number of steps (a lossless network always forms it).
    pub fn formed(n: u32) -> RingBench {
        let mut b = RingBench::new(n);
        let mut guard = 0u64;
        while !b
            .nodes
            .iter()
            .all(|s| s.state() == MembState::Operational && s.members().len() == b.nodes.len())
        {
            b.step();
            guard += 1;
            assert!(guard < 10_000_000, "ring did not form");
        }
        b
    }

    pub fn nodes(&self) -> &[Srp] {
        &self.nodes
    }

    /// Moves node `i`'s output onto the wire and counts its deliveries. Delivered
    /// messages are dropped here, as an application that has read them would.
    fn drain(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit(self.now) {
            self.frames += 1;
            match t.dest {
                Dest::Unicast(to) => self.wire.push_back((to.0 as usize - 1, t.data)),
                Dest::Multicast => {
                    for j in (0..self.nodes.len()).filter(|&j| j != i) {
                        self.wire.push_back((j, t.data.clone()));
                    }
                }
            }
        }
        while let Some(e) = self.nodes[i].poll_event() {
            if i == 0 && matches!(e, Event::Deliver { .. }) {
                self.delivered_at_first += 1;
            }
        }
    }

    /// One packet, or the earliest timer when the wire is empty.
    pub fn step(&mut self) {
        if let Some((to, data)) = self.wire.pop_front() {
            self.now = self.now.plus_micros(1);
            self.nodes[to].handle_datagram(self.now, data);
            self.drain(to);
            return;
        }
        let next = (0..self.nodes.len())
            .filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t, i)))
            .min();
        if let Some((t, i)) = next {
            self.now = self.now.max(t);
            self.nodes[i].handle_timeout(self.now);
            self.drain(i);
        }
    }

    /// Fills every node's send queue up to [`QUEUE_TARGET`] with clones of `msg`.
    ///
    /// A clone of a shared `Bytes` only bumps a reference count: the application's
    /// payload is made once by the caller, so what is measured is the core's work.
    pub fn top_up(&mut self, msg: &Bytes) {
        for i in 0..self.nodes.len() {
            let mut queued = false;
            while self.nodes[i].send_queue_len() < QUEUE_TARGET {
                if self.nodes[i].mcast(msg.clone()).is_err() {
                    break;
                }
                queued = true;
            }
            if queued {
                self.drain(i);
            }
        }
    }

    /// Keeps the queues full with `msg` and runs until `done` says so; `done` is asked
    /// every [`STEPS_PER_TOP_UP`] steps.
    pub fn run_until(&mut self, msg: &Bytes, mut done: impl FnMut(&RingBench) -> bool) {
        while !done(self) {
            self.top_up(msg);
            for _ in 0..STEPS_PER_TOP_UP {
                self.step();
            }
        }
    }
}
