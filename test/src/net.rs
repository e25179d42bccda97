//! The simulated network: datagrams in flight, ordered by (delivery time, send order).
//!
//! Each copy of a frame (one per destination) meets its fate when it is sent, drawn from
//! the network's own generator: lost with probability `loss`, duplicated with
//! probability `dup` (the copies travel independently), delayed by `base_delay +
//! uniform(0..=jitter)` (so jitter reorders). Partitions are applied when a packet
//! arrives, not when it leaves, so a partition also cuts what is already in flight; the
//! cluster drops packets for crashed nodes at arrival as well.
//!
//! A scenario can also decide the fate of chosen frames with a [`Filter`]: it sees every
//! copy sent to another node before the random draws and may drop or delay it (or just
//! watch the traffic). Filters are the scenario's own deterministic code, so a seed
//! still replays exactly.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use bytes::Bytes;
use totem::Instant;

use crate::rng::Rng;

/// One datagram on its way.
#[derive(Debug)]
pub struct Packet {
    pub at: Instant,
    /// Tie-breaker: packets due at the same instant arrive in send order.
    order: u64,
    pub from: u32,
    pub to: u32,
    /// For a node's frame to itself: the incarnation that sent it. A restarted node never
    /// receives what its previous incarnation sent itself (a socket does not outlive its
    /// process); frames from other nodes do reach a restarted node, as on a real network.
    pub self_incarnation: Option<u32>,
    pub data: Bytes,
}

impl PartialEq for Packet {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Packet {}

impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Packet {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest packet.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// What a [`Filter`] decides for one copy of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// On its way, subject to the network's loss, duplication and delay as usual.
    Pass,
    /// Lost, counted in [`NetStats::filtered`].
    Drop,
    /// Like `Pass`, arriving this many microseconds later than it would have.
    Delay(u64),
}

/// A scenario's hook on the wire: called with (send time, sender, receiver, frame) for
/// every copy [`Net::send`] is given, i.e. every frame to another node. A node's frames
/// to itself (a one-node ring's token) are not shown to it.
pub type Filter = Box<dyn FnMut(Instant, u32, u32, &Bytes) -> Fate>;

/// What happened to the frames the network carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Copies handed to the network (one per destination).
    pub sent: u64,
    pub lost: u64,
    /// Dropped by the scenario's [`Filter`].
    pub filtered: u64,
    pub duplicated: u64,
    /// Dropped at arrival because sender and receiver were in different partitions.
    pub partitioned: u64,
    /// Dropped at arrival because the receiver was down (or was a later incarnation of a
    /// node receiving its own frame).
    pub to_down_node: u64,
    pub delivered: u64,
}

/// The network between `nodes` simulated nodes, numbered `1..=nodes`.
pub struct Net {
    rng: Rng,
    queue: BinaryHeap<Packet>,
    next_order: u64,
    /// Partition group of each node (index `node - 1`); equal groups talk.
    group: Vec<u32>,
    loss: f64,
    dup: f64,
    base_delay_us: u64,
    jitter_us: u64,
    filter: Option<Filter>,
    pub stats: NetStats,
}

/// Default one-way delay of a datagram, microseconds (a fast LAN).
pub const DEFAULT_DELAY_US: u64 = 200;

impl Net {
    pub fn new(nodes: u32, rng: Rng) -> Net {
        Net {
            rng,
            queue: BinaryHeap::new(),
            next_order: 0,
            group: vec![0; nodes as usize],
            loss: 0.0,
            dup: 0.0,
            base_delay_us: DEFAULT_DELAY_US,
            jitter_us: 0,
            filter: None,
            stats: NetStats::default(),
        }
    }

    pub fn set_loss(&mut self, p: f64) {
        self.loss = p.clamp(0.0, 1.0);
    }

    pub fn set_dup(&mut self, p: f64) {
        self.dup = p.clamp(0.0, 1.0);
    }

    pub fn set_jitter_us(&mut self, us: u64) {
        self.jitter_us = us;
    }

    /// Fixed part of every datagram's delay; at least 1 µs, so a send never arrives in
    /// the instant it was made.
    pub fn set_delay_us(&mut self, us: u64) {
        self.base_delay_us = us.max(1);
    }

    /// Installs `filter` in place of any previous one; `None` removes it.
    pub fn set_filter(&mut self, filter: Option<Filter>) {
        self.filter = filter;
    }

    pub fn loss(&self) -> f64 {
        self.loss
    }

    pub fn dup(&self) -> f64 {
        self.dup
    }

    pub fn jitter_us(&self) -> u64 {
        self.jitter_us
    }

    pub fn delay_us(&self) -> u64 {
        self.base_delay_us
    }

    /// Splits the nodes into `groups` (node numbers); nodes not listed are each alone.
    /// Packets only pass between nodes of the same group.
    pub fn partition(&mut self, groups: &[&[u32]]) {
        let n = self.group.len() as u32;
        for (i, g) in self.group.iter_mut().enumerate() {
            *g = n + 1 + i as u32;
        }
        for (gi, members) in groups.iter().enumerate() {
            for &node in *members {
                assert!(
                    (1..=n).contains(&node),
                    "partition names node {node}, cluster has 1..={n}"
                );
                self.group[node as usize - 1] = gi as u32;
            }
        }
    }

    /// Everybody talks to everybody again.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    /// Whether a packet from `a` now reaches `b`.
    pub fn connected(&self, a: u32, b: u32) -> bool {
        a == b || self.group[a as usize - 1] == self.group[b as usize - 1]
    }

    /// The partition groups as lists of nodes, for reports.
    pub fn groups(&self) -> Vec<Vec<u32>> {
        let mut out: Vec<(u32, Vec<u32>)> = Vec::new();
        for (i, &g) in self.group.iter().enumerate() {
            match out.iter_mut().find(|(h, _)| *h == g) {
                Some((_, v)) => v.push(i as u32 + 1),
                None => out.push((g, vec![i as u32 + 1])),
            }
        }
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Sends one copy of `data` from `from` to `to` (another node), subject to the
    /// filter, loss, duplication and delay.
    pub fn send(&mut self, now: Instant, from: u32, to: u32, data: &Bytes) {
        self.stats.sent += 1;
        let extra_us = match self.filter.as_mut().map(|f| f(now, from, to, data)) {
            None | Some(Fate::Pass) => 0,
            Some(Fate::Delay(us)) => us,
            Some(Fate::Drop) => {
                self.stats.filtered += 1;
                return;
            }
        };
        if self.loss > 0.0 && self.rng.chance(self.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.dup > 0.0 && self.rng.chance(self.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.base_delay_us
                + extra_us
                + if self.jitter_us > 0 {
                    self.rng.below(self.jitter_us + 1)
                } else {
                    0
                };
            self.push(now.plus_micros(delay), from, to, None, data.clone());
        }
    }

    /// A node's frame to itself (a one-node ring's token): never lost, never duplicated.
    pub fn send_self(&mut self, now: Instant, node: u32, incarnation: u32, data: Bytes) {
        self.stats.sent += 1;
        self.push(
            now.plus_micros(self.base_delay_us),
            node,
            node,
            Some(incarnation),
            data,
        );
    }

    fn push(
        &mut self,
        at: Instant,
        from: u32,
        to: u32,
        self_incarnation: Option<u32>,
        data: Bytes,
    ) {
        let order = self.next_order;
        self.next_order += 1;
        self.queue.push(Packet {
            at,
            order,
            from,
            to,
            self_incarnation,
            data,
        });
    }

    /// When the next packet arrives, if any is in flight.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|p| p.at)
    }

    /// Takes the next packet off the wire (its fate at arrival is the caller's to decide).
    pub fn pop(&mut self) -> Option<Packet> {
        self.queue.pop()
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_arrive_in_time_order_and_jitter_reorders() {
        let mut net = Net::new(3, Rng::new(5));
        net.set_delay_us(100);
        net.set_jitter_us(1000);
        let t0 = Instant(0);
        for i in 0..200u8 {
            net.send(t0, 1, 2, &Bytes::from(vec![i]));
        }
        let mut last = Instant(0);
        let mut order = Vec::new();
        while let Some(p) = net.pop() {
            assert!(p.at >= last);
            assert!(p.at.0 >= 100 && p.at.0 <= 1100);
            last = p.at;
            order.push(p.data[0]);
        }
        assert_eq!(order.len(), 200);
        assert!(
            order.windows(2).any(|w| w[0] > w[1]),
            "jitter should reorder"
        );
    }

    #[test]
    fn loss_duplication_and_partitions() {
        let mut net = Net::new(4, Rng::new(9));
        net.set_loss(1.0);
        net.send(Instant(0), 1, 2, &Bytes::from_static(b"x"));
        assert_eq!(net.in_flight(), 0);
        net.set_loss(0.0);
        net.set_dup(1.0);
        net.send(Instant(0), 1, 2, &Bytes::from_static(b"x"));
        assert_eq!(net.in_flight(), 2);
        net.partition(&[&[1, 2], &[3]]);
        assert!(net.connected(1, 2));
        assert!(!net.connected(1, 3));
        assert!(!net.connected(4, 3), "unlisted nodes are isolated");
        assert!(net.connected(4, 4));
        assert_eq!(net.groups(), vec![vec![1, 2], vec![3], vec![4]]);
        net.heal();
        assert!(net.connected(1, 4));
    }

    #[test]
    fn a_filter_drops_delays_and_passes_chosen_copies() {
        let mut net = Net::new(3, Rng::new(1));
        net.set_delay_us(100);
        net.set_filter(Some(Box::new(|_, from, to, data: &Bytes| {
            match (from, to, data[0]) {
                (1, 2, b'd') => Fate::Drop,
                (1, 3, b'd') => Fate::Delay(50),
                _ => Fate::Pass,
            }
        })));
        for to in [2, 3] {
            net.send(Instant(0), 1, to, &Bytes::from_static(b"d"));
            net.send(Instant(0), 1, to, &Bytes::from_static(b"p"));
        }
        let got: Vec<(u32, u8, u64)> = std::iter::from_fn(|| net.pop())
            .map(|p| (p.to, p.data[0], p.at.0))
            .collect();
        assert_eq!(got, [(2, b'p', 100), (3, b'p', 100), (3, b'd', 150)]);
        assert_eq!(net.stats.filtered, 1);
        net.set_filter(None);
        net.send(Instant(0), 1, 2, &Bytes::from_static(b"d"));
        assert_eq!(net.in_flight(), 1);
    }
}
