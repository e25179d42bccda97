//! Smoke tests of `Srp` on a tiny lossless in-process network, independent of the
//! simulator in `ais-test` (which does the thorough work): enough to see a ring form,
//! carry messages in one order and reform after a crash.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use totem::{ConfKind, Dest, Event, Instant, MembState, NodeId, Srp, TotemConfig};

/// Nodes and a FIFO network with a fixed one-way delay.
struct Net {
    now: Instant,
    nodes: BTreeMap<u32, Srp>,
    in_flight: VecDeque<(Instant, u32, Bytes)>,
    delivered: BTreeMap<u32, Vec<(NodeId, Bytes)>>,
    regular: BTreeMap<u32, Vec<totem::ConfChange>>,
}

const DELAY_US: u64 = 100;

impl Net {
    fn new(n: u32) -> Net {
        let params = TotemConfig {
            token_ms: 200,
            ..TotemConfig::default()
        }
        .resolve(n as usize)
        .expect("valid config");
        let now = Instant(0);
        let nodes = (1..=n)
            .map(|i| (i, Srp::new(params.clone(), NodeId(i), 0, now)))
            .collect();
        let mut net = Net {
            now,
            nodes,
            in_flight: VecDeque::new(),
            delivered: BTreeMap::new(),
            regular: BTreeMap::new(),
        };
        for i in 1..=n {
            net.drain(i);
        }
        net
    }

    fn drain(&mut self, id: u32) {
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        let Some(srp) = self.nodes.get_mut(&id) else {
            return;
        };
        while let Some(t) = srp.poll_transmit(self.now) {
            let at = self.now.plus_micros(DELAY_US);
            match t.dest {
                Dest::Unicast(to) => self.in_flight.push_back((at, to.0, t.data)),
                Dest::Multicast => {
                    for &to in ids.iter().filter(|&&k| k != id) {
                        self.in_flight.push_back((at, to, t.data.clone()));
                    }
                }
            }
        }
        while let Some(e) = srp.poll_event() {
            match e {
                Event::Deliver { origin, msg } => {
                    self.delivered.entry(id).or_default().push((origin, msg))
                }
                Event::ConfChange(c) if c.kind == ConfKind::Regular => {
                    self.regular.entry(id).or_default().push(c)
                }
                Event::ConfChange(_) => {}
            }
        }
    }

    fn step(&mut self) {
        let next_timer = self
            .nodes
            .iter()
            .filter_map(|(&id, s)| s.poll_timeout().map(|t| (t, id)))
            .min();
        let next_packet = self.in_flight.front().map(|p| p.0);
        match (next_packet, next_timer) {
            (Some(p), t) if t.is_none_or(|(t, _)| p <= t) => {
                let (at, to, data) = self.in_flight.pop_front().unwrap();
                self.now = at;
                if let Some(srp) = self.nodes.get_mut(&to) {
                    srp.handle_datagram(at, data);
                    self.drain(to);
                }
            }
            (_, Some((t, id))) => {
                self.now = t;
                self.nodes.get_mut(&id).unwrap().handle_timeout(t);
                self.drain(id);
            }
            _ => panic!("nothing to do"),
        }
    }

    fn run_until(&mut self, limit_ms: u64, pred: impl Fn(&Net) -> bool) -> bool {
        let end = self.now.plus_micros(limit_ms * 1000);
        while self.now < end {
            if pred(self) {
                return true;
            }
            self.step();
        }
        pred(self)
    }

    fn one_ring(&self) -> bool {
        let mut rings = self
            .nodes
            .values()
            .map(|s| (s.state(), s.ring_id(), s.members().len()));
        let first = rings.next().unwrap();
        first.0 == MembState::Operational
            && first.2 == self.nodes.len()
            && rings.all(|r| r == first)
    }
}

#[test]
fn three_nodes_form_one_ring_and_agree_on_order() {
    let mut net = Net::new(3);
    assert!(net.run_until(5_000, |n| n.one_ring()), "no ring formed");
    for i in 0..300u32 {
        let node = 1 + i % 3;
        let msg = Bytes::from(format!("m{i}").into_bytes());
        net.nodes.get_mut(&node).unwrap().mcast(msg).unwrap();
        net.drain(node);
    }
    let all = |n: &Net| (1..=3).all(|i| n.delivered.get(&i).map_or(0, |d| d.len()) == 300);
    assert!(net.run_until(5_000, all), "not everything delivered");
    assert_eq!(net.delivered[&1], net.delivered[&2]);
    assert_eq!(net.delivered[&1], net.delivered[&3]);
}

#[test]
fn crash_of_one_of_three_leaves_a_ring_of_two() {
    let mut net = Net::new(3);
    assert!(net.run_until(5_000, |n| n.one_ring()));
    net.nodes.remove(&3);
    net.in_flight.retain(|p| p.1 != 3);
    assert!(
        net.run_until(10_000, |n| n.one_ring()),
        "survivors did not reform"
    );
    let last = net.regular[&1].last().unwrap();
    assert_eq!(last.members.len(), 2);
}

#[test]
fn a_single_node_delivers_its_own_messages() {
    let mut net = Net::new(1);
    assert!(net.run_until(1_000, |n| n.one_ring()));
    net.nodes
        .get_mut(&1)
        .unwrap()
        .mcast(Bytes::from_static(b"hello"))
        .unwrap();
    net.drain(1);
    assert!(net.run_until(1_000, |n| n.delivered.get(&1).is_some_and(|d| d.len() == 1)));
}
