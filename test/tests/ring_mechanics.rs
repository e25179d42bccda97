//! The mechanisms of an operational ring, each forced by a filter on the simulated wire
//! and observed in the frames the nodes send: flow control per visit and per rotation,
//! the retransmission of a lost token, the miss count before a frame is requested, the
//! bound on the requests one token carries, the failure of a member that cannot receive
//! a frame, and a fragmented message cut by a ring change (delivered whole to every
//! survivor or to none).
//!
//! Each test records the frames handed to the network ([`watch`]), so what it asserts is
//! what went on the wire, not the protocol's internal state. To see a run in full:
//!
//! ```text
//! RUST_LOG=totem=debug cargo test --release -p ais-test --test ring_mechanics NAME -- --nocapture
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use ais_test::checker::fmt_time;
use ais_test::cluster::log_context;
use ais_test::net::Fate;
use ais_test::{profile, Cluster, MsgId};
use bytes::Bytes;
use totem::wire::{token_rtr_capacity, Frame, Mcast, Token, MAX_RTR, MCAST_OVERHEAD_MAX};
use totem::{ConfKind, Instant, MembState, NodeId, NodeSet, RingId, TotemConfig};

// ----- harness -----

/// One copy of a frame as it was handed to the network, and what the filter did to it.
#[derive(Clone, Debug)]
struct Sent {
    at: Instant,
    from: u32,
    to: u32,
    frame: Frame,
    fate: Fate,
}

/// Everything the nodes sent since [`watch`] was called, in send order.
type Wire = Rc<RefCell<Vec<Sent>>>;

/// Installs a filter that decides each copy's fate with `fate` and records it.
fn watch(c: &mut Cluster, mut fate: impl FnMut(&Sent) -> Fate + 'static) -> Wire {
    let wire = Wire::default();
    let log = wire.clone();
    c.set_filter(move |at, from, to, data: &Bytes| {
        let Ok(frame) = Frame::decode(data) else {
            return Fate::Pass;
        };
        let mut sent = Sent {
            at,
            from,
            to,
            frame,
            fate: Fate::Pass,
        };
        sent.fate = fate(&sent);
        let f = sent.fate;
        log.borrow_mut().push(sent);
        f
    });
    wire
}

/// A new (not resent, not recovered) mcast frame of `ring`.
fn new_mcast(s: &Sent, ring: RingId) -> Option<&Mcast> {
    match &s.frame {
        Frame::Mcast(m) if m.ring_id == ring && m.recovered.is_none() => Some(m),
        _ => None,
    }
}

fn token_of(s: &Sent, ring: RingId) -> Option<&Token> {
    match &s.frame {
        Frame::Token(t) if t.ring_id == ring => Some(t),
        _ => None,
    }
}

/// The tokens of `ring` that `node` passed on, once each (a retransmitted copy has the
/// same `token_seq`), in order.
fn tokens_from(wire: &Wire, ring: RingId, node: u32) -> Vec<(Instant, Token)> {
    let mut seen = BTreeSet::new();
    wire.borrow()
        .iter()
        .filter(|s| s.from == node)
        .filter_map(|s| token_of(s, ring).map(|t| (s.at, t.clone())))
        .filter(|(_, t)| seen.insert(t.token_seq))
        .collect()
}

/// Routes the protocol's log (`RUST_LOG=totem=debug`) to the test output, each line
/// stamped with the virtual time and node it came from.
fn init_log() {
    use std::io::Write;
    let env = env_logger::Env::default().default_filter_or("warn");
    let _ = env_logger::Builder::from_env(env)
        .is_test(true)
        .format(|buf, record| {
            let place = match log_context() {
                Some((t, node, inc)) => format!("{} n{node}#{inc}", fmt_time(t)),
                None => "-".to_string(),
            };
            writeln!(
                buf,
                "{place} {} {}: {}",
                record.level(),
                record.target(),
                record.args()
            )
        })
        .try_init();
}

/// `k` nodes started together, once they have formed one ring (within four join
/// periods, as in the scenarios), and that ring's id.
fn formed(seed: u64, k: u32, cfg: TotemConfig) -> (Cluster, RingId) {
    init_log();
    let mut c = Cluster::new(seed, k, cfg);
    let bound = 4 * c.params().join_us / 1000;
    assert!(
        c.run_until(|c| c.all_one_ring(), bound),
        "{k} nodes formed no ring within {bound} ms:\n{}",
        c.status()
    );
    let ring = c.srp(1).unwrap().ring_id();
    (c, ring)
}

fn check(c: &mut Cluster) {
    if let Err(v) = c.check() {
        panic!("{v}\n{}", c.status());
    }
}

fn set(nodes: &[u32]) -> NodeSet {
    nodes.iter().map(|&n| NodeId(n)).collect()
}

/// Virtual time allowed for queued messages to reach their senders on a healthy ring.
const DRAIN_BOUND_MS: u64 = 10_000;

fn drain(c: &mut Cluster) {
    assert!(
        c.run_until(|c| c.pending_self_delivery() == 0, DRAIN_BOUND_MS),
        "messages still undelivered to their senders after {DRAIN_BOUND_MS} ms:\n{}",
        c.status()
    );
    // A few hundred rotations for the last frames to reach everyone.
    c.run_for(200);
}

fn delivered_everywhere(c: &Cluster, nodes: &[u32], ids: &[MsgId]) -> bool {
    nodes.iter().all(|&n| {
        let got: BTreeSet<MsgId> = c.delivered_ids(n).into_iter().collect();
        ids.iter().all(|id| got.contains(id))
    })
}

/// Length of a message that fills most of a frame: one message, one frame.
fn frame_sized(c: &Cluster) -> usize {
    (c.params().max_frame_len - MCAST_OVERHEAD_MAX) * 3 / 4
}

// ----- flow control -----

/// Per visit of the token, the new frames its holder multicast before passing it on, in
/// visit order: (holder, frames). A visit's frames go out before its token (no
/// accelerated ring), so they are the holder's new frames since the previous token.
fn frames_per_visit(wire: &Wire, ring: RingId) -> Vec<(u32, u32)> {
    let mut visits = Vec::new();
    let mut first_sent = BTreeSet::new();
    let mut tokens_seen = BTreeSet::new();
    let mut this_visit = 0u32;
    for s in wire.borrow().iter() {
        if let Some(m) = new_mcast(s, ring) {
            assert_eq!(
                s.from, m.sender.0,
                "a frame resent on a lossless ring: {s:?}"
            );
            if first_sent.insert(m.seq) {
                this_visit += 1;
            }
        } else if let Some(t) = token_of(s, ring) {
            if tokens_seen.insert(t.token_seq) {
                visits.push((s.from, this_visit));
                this_visit = 0;
            }
        }
    }
    visits
}

#[test]
fn one_visit_sends_at_most_max_messages_and_one_rotation_at_most_window_size() {
    const NODES: u32 = 4;
    let cfg = TotemConfig {
        window_size: 12,
        max_messages: 4,
        ..profile::fast()
    };
    let (mut c, ring) = formed(21, NODES, cfg);
    let (window, max) = (c.params().window_size, c.params().max_messages);
    assert!(
        NODES * max > window,
        "the test needs a ring that could exceed the window"
    );
    let wire = watch(&mut c, |_| Fate::Pass);
    // First every member has the same long queue: more wants to go than a rotation
    // carries, so each gets a quarter of the window (three frames, under max_messages)
    // and the window is what holds them back. Then node 1 alone has a queue: the window
    // is free, and max_messages is what holds it back.
    let len = frame_sized(&c);
    let mut sent = Vec::new();
    for n in 1..=NODES {
        for _ in 0..40 {
            sent.push(c.send_numbered(n, len).unwrap());
        }
    }
    drain(&mut c);
    for _ in 0..40 {
        sent.push(c.send_numbered(1, len).unwrap());
    }
    drain(&mut c);
    assert!(
        delivered_everywhere(&c, &[1, 2, 3, 4], &sent),
        "not every message delivered everywhere\n{}",
        c.status()
    );
    assert!(c.one_ring(&[1, 2, 3, 4]) && c.srp(1).unwrap().ring_id() == ring);

    let visits = frames_per_visit(&wire, ring);
    let total: u32 = visits.iter().map(|v| v.1).sum();
    assert_eq!(total as usize, sent.len(), "one frame per message");
    for (i, &(holder, frames)) in visits.iter().enumerate() {
        assert!(
            frames <= max,
            "visit {i} of node {holder} sent {frames} new frames; max_messages is {max}"
        );
    }
    let rotations: Vec<u32> = visits
        .windows(NODES as usize)
        .map(|w| w.iter().map(|v| v.1).sum())
        .collect();
    for (i, &frames) in rotations.iter().enumerate() {
        assert!(
            frames <= window,
            "visits {i}..{} sent {frames} new frames in one rotation; window_size is \
             {window}: {:?}",
            i + NODES as usize,
            &visits[i..i + NODES as usize]
        );
    }
    // The limits were reached, so they were what held the senders back.
    assert!(
        visits.iter().any(|&(n, f)| n == 1 && f == max),
        "node 1, with the longest queue, never sent max_messages in a visit: {visits:?}"
    );
    assert!(
        rotations.contains(&window),
        "no rotation filled the window although all four members had queues: {visits:?}"
    );
    check(&mut c);
}

// ----- token retransmission -----

#[test]
fn one_lost_token_is_retransmitted_without_token_loss_or_reconfiguration() {
    let (mut c, ring) = formed(22, 3, profile::fast());
    let dropped = Rc::new(Cell::new(0u32));
    let d = dropped.clone();
    let wire = watch(&mut c, move |s| {
        if d.get() == 0 && s.from == 1 && s.to == 2 && token_of(s, ring).is_some() {
            d.set(1);
            return Fate::Drop;
        }
        Fate::Pass
    });
    let before: Vec<_> = (1..=3).map(|n| c.srp(n).unwrap().stats().clone()).collect();
    let configurations_before: Vec<usize> = (1..=3).map(|n| c.confchgs(n).len()).collect();

    // Messages from every node, every 5 ms for half a second: they keep the token
    // moving, and those sent after the loss show that delivery goes on.
    let mut sent = Vec::new();
    let start = c.now();
    while c.now().micros_since(start) < 500_000 {
        for n in 1..=3 {
            sent.push(c.send_numbered(n, 200).unwrap());
        }
        c.run_for(5);
    }
    drain(&mut c);

    assert_eq!(dropped.get(), 1, "the filter dropped no token");
    let lost_at = wire
        .borrow()
        .iter()
        .find(|s| s.fate == Fate::Drop)
        .map(|s| s.at)
        .unwrap();
    let retransmit_us = c.params().token_retransmit_us;
    let after: Vec<_> = (1..=3).map(|n| c.srp(n).unwrap().stats().clone()).collect();
    assert!(
        after[0].token_retransmits > before[0].token_retransmits,
        "node 1 never retransmitted the token it lost at {}\n{}",
        fmt_time(lost_at),
        c.status()
    );
    // The copy that got through is node 1's own retransmission, one timer period later.
    let resent = tokens_from(&wire, ring, 1)
        .into_iter()
        .map(|(at, _)| at)
        .find(|&at| at == lost_at);
    assert!(resent.is_some(), "the lost token was not found in the log");
    let retransmission = wire
        .borrow()
        .iter()
        .find(|s| s.at > lost_at && s.from == 1 && s.to == 2 && token_of(s, ring).is_some())
        .map(|s| (s.at, s.frame.clone()));
    let (resent_at, resent_frame) = retransmission.expect("no token from 1 to 2 after the loss");
    let lost_frame = wire
        .borrow()
        .iter()
        .find(|s| s.fate == Fate::Drop)
        .map(|s| s.frame.clone())
        .unwrap();
    assert_eq!(
        resent_frame, lost_frame,
        "node 1 sent another token, not the lost one"
    );
    assert_eq!(
        resent_at.micros_since(lost_at),
        retransmit_us,
        "the token was resent {} us after its loss; token_retransmit is {retransmit_us} us",
        resent_at.micros_since(lost_at)
    );
    for n in 1..=3usize {
        assert_eq!(
            after[n - 1].token_losses,
            before[n - 1].token_losses,
            "node {n} declared the token lost\n{}",
            c.status()
        );
        assert_eq!(
            c.confchgs(n as u32).len(),
            configurations_before[n - 1],
            "node {n} installed a configuration\n{}",
            c.status()
        );
    }
    assert!(
        c.one_ring(&[1, 2, 3]) && c.srp(1).unwrap().ring_id() == ring,
        "the ring changed\n{}",
        c.status()
    );
    let after_loss: Vec<MsgId> = sent
        .iter()
        .copied()
        .filter(|id| id.counter * 5_000 > lost_at.micros_since(start) + 10_000)
        .collect();
    assert!(
        !after_loss.is_empty(),
        "the token was lost at the very end of the run"
    );
    assert!(
        delivered_everywhere(&c, &[1, 2, 3], &sent),
        "not every message delivered everywhere\n{}",
        c.status()
    );
    check(&mut c);
}

// ----- miss count -----

/// The first new frame of `ring` node 1 multicasts after the filter is installed, and
/// what happens to its first copy to node 3 (`first_copy`); every other copy passes.
fn first_frame_to_3(c: &mut Cluster, ring: RingId, first_copy: Fate) -> (Wire, Rc<Cell<u64>>) {
    let target = Rc::new(Cell::new(0u64));
    let t = target.clone();
    // Whether the first copy to node 3 has had its fate; later copies (retransmissions)
    // pass.
    let mut decided = false;
    let wire = watch(c, move |s| match new_mcast(s, ring) {
        Some(m) if s.from == 1 && t.get() == 0 => {
            // Frame sequence numbers start at 1, so 0 means "not chosen yet".
            t.set(m.seq);
            if s.to == 3 {
                decided = true;
                first_copy
            } else {
                Fate::Pass
            }
        }
        Some(m) if s.to == 3 && m.seq == t.get() && !decided => {
            // The copy to node 2 went first; this is the first copy to node 3.
            decided = true;
            first_copy
        }
        _ => Fate::Pass,
    });
    (wire, target)
}

/// Node 3's token visits at which frame `seq` had been announced (the token's seq
/// reached it) and which it passed on before `until`: (time, token it passed on).
fn visits_of_3_missing(wire: &Wire, ring: RingId, seq: u64, until: Instant) -> Vec<Token> {
    tokens_from(wire, ring, 3)
        .into_iter()
        .filter(|(at, t)| t.seq >= seq && *at < until)
        .map(|(_, t)| t)
        .collect()
}

fn retransmits(c: &Cluster) -> u64 {
    (1..=c.size())
        .filter_map(|n| c.srp(n))
        .map(|s| s.stats().retransmits)
        .sum()
}

/// Copies of frame `seq` of `ring` sent to node 3, first or resent.
fn copies_to_3(wire: &Wire, ring: RingId, seq: u64) -> Vec<Sent> {
    wire.borrow()
        .iter()
        .filter(|s| s.to == 3)
        .filter(|s| matches!(&s.frame, Frame::Mcast(m) if m.ring_id == ring && m.seq == seq))
        .cloned()
        .collect()
}

fn miss_count_profile() -> TotemConfig {
    TotemConfig {
        miss_count_const: 4,
        ..profile::fast()
    }
}

#[test]
fn a_frame_late_for_fewer_than_miss_count_const_visits_is_never_requested() {
    let (mut c, ring) = formed(23, 3, miss_count_profile());
    let miss = c.params().miss_count_const;
    // 1.5 ms late: two or three rotations of a 3-node ring at 200 us a hop.
    const LATE_US: u64 = 1_500;
    let (wire, target) = first_frame_to_3(&mut c, ring, Fate::Delay(LATE_US));
    let retransmits_before = retransmits(&c);
    let id = c.send_numbered(1, 100).unwrap();
    assert!(
        c.run_until(|c| delivered_everywhere(c, &[1, 2, 3], &[id]), 1_000),
        "the late frame was not delivered everywhere\n{}",
        c.status()
    );
    c.run_for(100);

    let seq = target.get();
    let copies = copies_to_3(&wire, ring, seq);
    assert_eq!(
        copies.len(),
        1,
        "frame {seq} went to node 3 more than once: {copies:?}"
    );
    let arrived = copies[0].at.plus_micros(c.delay_us() + LATE_US);
    let missing = visits_of_3_missing(&wire, ring, seq, arrived);
    assert!(
        !missing.is_empty() && (missing.len() as u32) < miss,
        "the frame was missing at {} of node 3's visits; the test needs 1 to {}",
        missing.len(),
        miss - 1
    );
    let all_tokens = tokens_from(&wire, ring, 3);
    for (at, tok) in &all_tokens {
        assert!(
            !tok.rtr.contains(&seq),
            "node 3 asked for frame {seq} at {} although it was missing at only {} visits \
             (miss_count_const {miss})",
            fmt_time(*at),
            missing.len()
        );
    }
    assert_eq!(
        retransmits(&c),
        retransmits_before,
        "a frame was retransmitted\n{}",
        c.status()
    );
    check(&mut c);
}

#[test]
fn a_lost_frame_is_requested_at_the_miss_count_const_th_visit_and_retransmitted() {
    let (mut c, ring) = formed(24, 3, miss_count_profile());
    let miss = c.params().miss_count_const as usize;
    let (wire, target) = first_frame_to_3(&mut c, ring, Fate::Drop);
    let retransmits_before = retransmits(&c);
    let id = c.send_numbered(1, 100).unwrap();
    assert!(
        c.run_until(|c| delivered_everywhere(c, &[1, 2, 3], &[id]), 1_000),
        "the lost frame was not delivered everywhere\n{}",
        c.status()
    );
    c.run_for(100);

    let seq = target.get();
    let copies = copies_to_3(&wire, ring, seq);
    assert!(
        copies.len() == 2 && copies[0].fate == Fate::Drop && copies[1].fate == Fate::Pass,
        "frame {seq} to node 3: expected the lost copy and one retransmission: {copies:?}"
    );
    let resent_at = copies[1].at;
    let visits = visits_of_3_missing(&wire, ring, seq, resent_at);
    let requested: Vec<usize> = visits
        .iter()
        .enumerate()
        .filter(|(_, t)| t.rtr.contains(&seq))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        requested,
        [miss],
        "node 3 asked for frame {seq} at these of its visits that missed it (of {}); \
         miss_count_const is {miss}",
        visits.len()
    );
    assert_eq!(
        visits.len(),
        miss,
        "the frame was resent only {} visits after the request",
        visits.len() - miss
    );
    assert_eq!(
        retransmits(&c),
        retransmits_before + 1,
        "one request, one retransmission\n{}",
        c.status()
    );
    check(&mut c);
}

#[test]
fn retransmit_requests_stop_where_the_token_would_outgrow_a_frame() {
    // netmtu 1500: a token with MAX_RTR requests would not fit in one frame.
    let (mut c, ring) = formed(25, 3, profile::fast());
    let frame_len = c.params().max_frame_len;
    let cap = token_rtr_capacity(frame_len);
    assert!(
        cap < MAX_RTR,
        "the test needs a frame smaller than a full token"
    );
    // Node 3 loses the first copy of every new frame of node 1 (retransmissions pass):
    // it misses more frames at once than one token may ask for.
    let mut dropped = BTreeSet::new();
    let wire = watch(&mut c, move |s| match new_mcast(s, ring) {
        Some(m) if s.from == 1 && s.to == 3 && dropped.insert(m.seq) => Fate::Drop,
        _ => Fate::Pass,
    });
    let len = frame_sized(&c);
    let sent: Vec<MsgId> = (0..2 * cap)
        .map(|_| c.send_numbered(1, len).unwrap())
        .collect();
    drain(&mut c);
    assert!(
        delivered_everywhere(&c, &[1, 2, 3], &sent),
        "not every message delivered everywhere\n{}",
        c.status()
    );
    assert!(
        c.one_ring(&[1, 2, 3]) && c.srp(1).unwrap().ring_id() == ring,
        "the ring changed\n{}",
        c.status()
    );
    let tokens = tokens_from(&wire, ring, 3);
    let longest = tokens.iter().map(|(_, t)| t.rtr.len()).max().unwrap_or(0);
    assert_eq!(
        longest, cap,
        "node 3's longest request list; {cap} is what a token of {frame_len} bytes holds"
    );
    for s in wire.borrow().iter() {
        let n = s.frame.encoded_len();
        assert!(
            n <= frame_len,
            "a {n}-byte frame from node {}: {s:?}",
            s.from
        );
    }
    check(&mut c);
}

// ----- fail_recv_const -----

#[test]
fn a_member_that_never_receives_a_frame_is_failed_after_fail_recv_const_rotations() {
    let cfg = TotemConfig {
        fail_recv_const: 10,
        ..profile::fast()
    };
    let (mut c, ring) = formed(25, 3, cfg);
    let f = c.params().fail_recv_const as usize;
    // Node 3 never gets node 1's next frame, nor any retransmission of it.
    let target = Rc::new(Cell::new(0u64));
    let t = target.clone();
    let wire = watch(&mut c, move |s| {
        let Frame::Mcast(m) = &s.frame else {
            return Fate::Pass;
        };
        if m.ring_id != ring {
            return Fate::Pass;
        }
        if t.get() == 0 && m.recovered.is_none() && s.from == 1 {
            t.set(m.seq);
        }
        if s.to == 3 && m.seq == t.get() {
            Fate::Drop
        } else {
            Fate::Pass
        }
    });
    let skip: Vec<usize> = (1..=3).map(|n| c.confchgs(n).len()).collect();
    let id = c.send_numbered(1, 100).unwrap();
    assert!(
        c.run_until(
            |c| c.srp(1).unwrap().state() != MembState::Operational,
            1_000
        ),
        "node 1 still on ring {ring} after 1 s with node 3 missing a frame\n{}",
        c.status()
    );
    let gave_up = c.now();
    let seq = target.get();

    // Rotations the ring made after the one that carried the frame: node 1, which sent
    // it, passes the token once per rotation. The frame's sender counts a rotation with
    // the aru stuck from its first visit after the frame and gives up at the visit after
    // its count passes fail_recv_const; any other member is at most one rotation behind.
    let rotations = tokens_from(&wire, ring, 1)
        .iter()
        .filter(|(_, t)| t.seq >= seq)
        .count()
        - 1;
    assert!(
        (f..=f + 2).contains(&rotations),
        "the ring gave up on node 3 after {rotations} rotations; fail_recv_const is {f}"
    );
    assert!(
        wire.borrow()
            .iter()
            .any(|s| s.from == 3 && token_of(s, ring).is_some_and(|t| t.rtr.contains(&seq))),
        "node 3 never asked for the frame it missed"
    );

    // Nodes 1 and 2 then install a ring without node 3: one round of joins among the
    // two, the commit token and recovery, within two join periods and 50 ms.
    let bound_ms = 2 * c.params().join_us / 1000 + 50;
    assert!(
        c.run_until(|c| c.one_ring(&[1, 2]), bound_ms),
        "no ring of nodes 1 and 2 within {bound_ms} ms of giving up on node 3\n{}",
        c.status()
    );
    println!(
        "fail_recv_const {f}: gave up after {rotations} rotations, ring of 1 and 2 {:.1} ms later",
        c.now().micros_since(gave_up) as f64 / 1000.0
    );
    for n in [1, 2] {
        let cc: Vec<_> = c
            .confchgs(n)
            .into_iter()
            .skip(skip[n as usize - 1])
            .collect();
        assert!(
            cc.len() == 2
                && cc[0].kind == ConfKind::Transitional
                && cc[0].left == set(&[3])
                && cc[1].members == set(&[1, 2]),
            "node {n} installed {cc:?}"
        );
        assert!(
            c.delivered_ids(n).contains(&id),
            "node {n} did not deliver the frame node 3 missed"
        );
    }
    assert!(
        !c.delivered_ids(3).contains(&id),
        "node 3 delivered a message it never received"
    );

    // Node 3 is alive and merges back; the filter only concerned the old ring.
    assert!(
        c.run_until(|c| c.all_one_ring(), 2_000),
        "node 3 did not merge back\n{}",
        c.status()
    );
    check(&mut c);
}

// ----- a fragmented message cut by a ring change -----

/// Starts on node 1 a message of `visits` times what it may send in one token visit,
/// then runs until the first of its fragments is on the wire, and returns its id.
fn start_big_message(c: &mut Cluster, ring: RingId, wire: &Wire, visits: usize) -> MsgId {
    let payload = c.params().max_frame_len - MCAST_OVERHEAD_MAX;
    let len = visits * c.params().max_messages as usize * payload;
    assert!(len <= totem::MAX_MESSAGE_LEN, "use a smaller max_messages");
    let before = wire.borrow().len();
    let id = c.send_numbered(1, len).unwrap();
    let on_wire = |wire: &Wire| {
        wire.borrow()[before..]
            .iter()
            .any(|s| s.from == 1 && new_mcast(s, ring).is_some())
    };
    let start = c.now();
    while !on_wire(wire) {
        assert!(
            c.step() && c.now().micros_since(start) < 1_000_000,
            "node 1 sent no frame of the message within 1 s\n{}",
            c.status()
        );
    }
    id
}

/// Flow control that spreads a large message over several token visits.
fn cut_profile() -> TotemConfig {
    TotemConfig {
        window_size: 50,
        max_messages: 17,
        ..profile::fast()
    }
}

#[test]
fn a_message_cut_by_a_receivers_crash_is_delivered_whole_by_the_survivors() {
    let (mut c, ring) = formed(26, 3, cut_profile());
    let wire = watch(&mut c, |_| Fate::Pass);
    let id = start_big_message(&mut c, ring, &wire, 8);
    // The rest of the message is still in node 1's queue when node 3 dies.
    c.crash(3);
    assert!(
        !c.delivered_ids(1).contains(&id),
        "the whole message went out at once"
    );
    assert!(
        c.run_until(|c| c.one_ring(&[1, 2]), 2_000),
        "nodes 1 and 2 formed no ring without node 3\n{}",
        c.status()
    );
    drain(&mut c);
    for n in [1, 2] {
        assert!(
            c.delivered_ids(n).contains(&id),
            "node {n} did not deliver the message its sender survived to finish\n{}",
            c.status()
        );
    }
    // The checker compares every delivery's bytes with what was sent, and the order and
    // configuration of each delivery across the survivors.
    check(&mut c);
}

#[test]
fn a_message_cut_by_its_senders_crash_is_delivered_by_no_survivor() {
    let (mut c, ring) = formed(27, 3, cut_profile());
    let wire = watch(&mut c, |_| Fate::Pass);
    let earlier = c.send_numbered(1, 100).unwrap();
    let id = start_big_message(&mut c, ring, &wire, 8);
    c.crash(1);
    assert!(
        c.run_until(|c| c.one_ring(&[2, 3]), 2_000),
        "nodes 2 and 3 formed no ring without node 1\n{}",
        c.status()
    );
    // Whatever the survivors received of the message arrived before the ring changed.
    let fragments_received = wire
        .borrow()
        .iter()
        .filter(|s| s.from == 1 && new_mcast(s, ring).is_some())
        .count();
    assert!(fragments_received > 1, "no fragment reached the survivors");
    c.run_for(500);
    for n in [2, 3] {
        let got = c.delivered_ids(n);
        assert!(
            got.contains(&earlier),
            "node {n} lost node 1's earlier, whole message"
        );
        assert!(
            !got.contains(&id),
            "node {n} delivered a message whose sender died before sending all of it"
        );
    }
    check(&mut c);
}

// ----- linger -----

fn linger_profile(linger_us: u32) -> TotemConfig {
    TotemConfig {
        linger_us,
        ..profile::fast()
    }
}

/// Node 1 sends `rounds` messages one at a time, each as soon as the previous one was
/// delivered to itself (a client with one request outstanding). Returns how many times
/// node 1 passed the token on meanwhile and the virtual time it took, in µs.
fn ping_pong(c: &mut Cluster, ring: RingId, rounds: usize) -> (usize, u64) {
    let wire = watch(c, |_| Fate::Pass);
    let start = c.now();
    for round in 0..rounds {
        let id = c.send_numbered(1, 64).expect("queue has room");
        assert!(
            c.run_until(|c| c.delivered_ids(1).contains(&id), 1000),
            "round {round}: message not delivered to its sender within 1 s:\n{}",
            c.status()
        );
    }
    let took = c.now().micros_since(start);
    let passes = tokens_from(&wire, ring, 1).len();
    c.clear_filter();
    (passes, took)
}

#[test]
fn a_sender_answering_its_own_delivery_sends_in_the_same_visit_when_the_token_lingers() {
    const ROUNDS: usize = 50;
    let (mut c, ring) = formed(71, 3, linger_profile(150));
    let rotation_us = 3 * c.delay_us();
    let (passes, took) = ping_pong(&mut c, ring, ROUNDS);
    check(&mut c);
    // The first message may wait for the token; every later one is sent while the
    // token lingers after its predecessor's visit, so the token leaves node 1 once
    // per message at most (after each second send) and no message waits a rotation.
    assert!(
        passes <= ROUNDS + 1,
        "node 1 passed the token {passes} times for {ROUNDS} messages"
    );
    assert!(
        took < 2 * rotation_us + 1000,
        "{ROUNDS} one-at-a-time messages took {took} µs with a {rotation_us} µs rotation"
    );
    assert!(c.srp(1).unwrap().stats().token_lingers >= 1);

    // Without the linger every message waits one whole rotation for the token.
    let (mut c, ring) = formed(71, 3, linger_profile(0));
    let (_, took) = ping_pong(&mut c, ring, ROUNDS);
    check(&mut c);
    assert!(
        took >= (ROUNDS as u64 - 1) * rotation_us,
        "{ROUNDS} one-at-a-time messages took only {took} µs without linger \
         (rotation {rotation_us} µs)"
    );
    assert_eq!(c.srp(1).unwrap().stats().token_lingers, 0);
}

/// Node 1's client with one request outstanding: sends, waits for its own delivery,
/// then answers 50 µs later. Returns the message's id.
fn answer_from_1(c: &mut Cluster) -> MsgId {
    let id = c.send_numbered(1, 64).unwrap();
    assert!(c.run_until(|c| c.delivered_ids(1).contains(&id), 1000));
    let at = c.now().plus_micros(50);
    c.run_until(|c| c.now() >= at, 1);
    id
}

/// Twenty of node 1's answers, after which node 1 keeps the token between them.
fn node_1_lingering(c: &mut Cluster) {
    for _ in 0..20 {
        answer_from_1(c);
    }
    assert!(c.srp(1).unwrap().stats().token_lingers > 0);
}

#[test]
fn a_lingering_token_moves_on_after_linger_us_and_not_while_others_have_a_backlog() {
    const LINGER_US: u32 = 2000;
    let (mut c, ring) = formed(72, 3, linger_profile(LINGER_US));
    // Wake the ring and let it settle into rotation.
    c.send_numbered(2, 64).unwrap();
    drain(&mut c);
    let wire = watch(&mut c, |_| Fate::Pass);
    let id = c.send_numbered(1, 64).unwrap();
    assert!(c.run_until(|c| c.delivered_ids(1).contains(&id), 1000));
    c.run_for(50);
    // The visit that multicast the message: its frame and the token that followed.
    let log = wire.borrow();
    let sent_at = log
        .iter()
        .find(|s| s.from == 1 && new_mcast(s, ring).is_some())
        .map(|s| s.at)
        .expect("node 1 multicast its message");
    let passed_at = log
        .iter()
        .filter(|s| s.from == 1 && s.at >= sent_at)
        .find_map(|s| token_of(s, ring).map(|_| s.at))
        .expect("node 1 passed the token on");
    let waited = passed_at.micros_since(sent_at);
    assert!(
        (u64::from(LINGER_US)..u64::from(LINGER_US) + 100).contains(&waited),
        "node 1 kept the token {waited} µs after its last send; linger_us is {LINGER_US}"
    );
    drop(log);
    c.clear_filter();
    let lingers = c.srp(1).unwrap().stats().token_lingers;
    assert!(lingers >= 1);

    // Node 2 has a long queue (several visits' worth at max_messages per visit). Once
    // the token has carried that backlog round (after node 1's first message, which
    // may see an older token), node 1 no longer lingers while the queue lasts.
    let burst: Vec<MsgId> = (0..2000)
        .map(|_| c.send_numbered(2, frame_sized(&c)).unwrap())
        .collect();
    // Node 1's client answers each delivery 50 µs later (`answer_from_1`).
    let mut rounds = 0;
    while !delivered_everywhere(&c, &[2], &burst[..100]) {
        assert!(
            rounds < 10_000,
            "node 2 never got the token:\n{}",
            c.status()
        );
        answer_from_1(&mut c);
        rounds += 1;
    }
    let before = c.srp(1).unwrap().stats().token_lingers;
    rounds = 0;
    while !delivered_everywhere(&c, &[2], &burst[..burst.len() / 2]) && rounds < 10_000 {
        answer_from_1(&mut c);
        rounds += 1;
    }
    assert!(
        rounds > 0,
        "node 2's burst was gone before node 1 sent anything"
    );
    assert_eq!(
        c.srp(1).unwrap().stats().token_lingers,
        before,
        "node 1 lingered while node 2 had messages waiting"
    );
    drain(&mut c);
    check(&mut c);
}

#[test]
fn a_member_waiting_for_a_lingering_token_asks_for_it_and_gets_it_within_a_few_hops() {
    const LINGER_US: u32 = 500;
    let (mut c, _ring) = formed(73, 3, linger_profile(LINGER_US));
    let visit_us = c.params().linger_visit_us;
    let hop_us = c.delay_us();
    // Node 1's client answers each delivery 50 µs later, so node 1 keeps the token for
    // up to a whole visit's linger...
    node_1_lingering(&mut c);
    // ... until node 2, which queues a message meanwhile, asks for it.
    let wants = c.srp(2).unwrap().stats().token_wants;
    let queued_at = c.now();
    let id = c.send_numbered(2, 64).unwrap();
    let mut rounds = 0;
    while !c.delivered_ids(2).contains(&id) {
        assert!(
            rounds < 10_000,
            "node 2 never got the token:\n{}",
            c.status()
        );
        // As `answer_from_1`, but stopping as soon as node 2 has its message.
        let mine = c.send_numbered(1, 64).unwrap();
        let done =
            |c: &Cluster| c.delivered_ids(1).contains(&mine) || c.delivered_ids(2).contains(&id);
        assert!(c.run_until(done, 1000));
        if !c.delivered_ids(2).contains(&id) {
            let at = c.now().plus_micros(50);
            c.run_until(|c| c.now() >= at || c.delivered_ids(2).contains(&id), 1);
        }
        rounds += 1;
    }
    let waited = c.now().micros_since(queued_at);
    assert!(
        waited < u64::from(LINGER_US) && waited <= 4 * hop_us + 200,
        "node 2's message waited {waited} µs (linger {LINGER_US} µs, visit cap {visit_us} µs)"
    );
    assert_eq!(c.srp(2).unwrap().stats().token_wants, wants + 1);
    drain(&mut c);
    check(&mut c);
}

#[test]
fn a_member_missing_a_frame_asks_for_a_lingering_token_and_gets_it_resent_within_the_visit() {
    const LINGER_US: u32 = 500;
    let (mut c, ring) = formed(74, 3, linger_profile(LINGER_US));
    let visit_us = c.params().linger_visit_us;
    // Node 1's client answers each delivery 50 µs later: node 1 keeps the token for up
    // to a whole visit's linger budget at a time.
    node_1_lingering(&mut c);
    // The first copy to node 3 of node 1's next frame is lost. Node 3 can ask for it
    // only on the token, which node 1 would keep for the rest of its visit, and then
    // for the next visits too, while its client keeps answering.
    let wants = c.srp(3).unwrap().stats().token_wants;
    let (_wire, _target) = first_frame_to_3(&mut c, ring, Fate::Drop);
    let lost_at = c.now();
    let lost = answer_from_1(&mut c);
    let mut rounds = 0;
    while !c.delivered_ids(3).contains(&lost) {
        assert!(
            rounds < 10_000,
            "node 3 never got the lost frame:\n{}",
            c.status()
        );
        answer_from_1(&mut c);
        rounds += 1;
    }
    let waited = c.now().micros_since(lost_at);
    assert!(
        waited < visit_us / 4,
        "node 3 waited {waited} µs for a lost frame (one visit's linger budget is {visit_us} µs)"
    );
    assert!(
        c.srp(3).unwrap().stats().token_wants > wants,
        "node 3 did not ask for the token"
    );
    c.clear_filter();
    drain(&mut c);
    check(&mut c);
}

// ----- waiting for slow receivers -----

#[test]
fn the_token_waits_at_a_node_whose_receivers_are_behind_and_moves_on_when_they_catch_up() {
    let (mut c, ring) = formed(81, 3, TotemConfig::lan_profile());
    let wait_us = c.params().receivers_visit_us;
    let rotation_us = 3 * c.delay_us();
    assert!(
        wait_us > 20 * rotation_us,
        "the test needs waits longer than rotations"
    );
    // A steady stream from node 1, with node 3's applications behind.
    c.set_receivers_behind(3, true);
    let wire = watch(&mut c, |_| Fate::Pass);
    let mut sent = Vec::new();
    for _ in 0..20 {
        sent.push(c.send_numbered(1, 256).unwrap());
        c.run_for(wait_us / 1000 / 4);
    }
    // Every visit of node 3 held the token for the whole wait: its passes are that
    // far apart (no more than a visit's worth of time apart from one another).
    let passes: Vec<Instant> = wire
        .borrow()
        .iter()
        .filter(|s| s.from == 3 && token_of(s, ring).is_some())
        .map(|s| s.at)
        .collect();
    assert!(
        passes.len() >= 3,
        "node 3 passed the token {} times",
        passes.len()
    );
    for w in passes.windows(2) {
        let gap = w[1].micros_since(w[0]);
        assert!(
            gap >= wait_us,
            "node 3 passed the token {gap} µs after its previous pass; it waits {wait_us} µs"
        );
    }
    let waits = c.srp(3).unwrap().stats().token_waits_for_receivers;
    assert!(waits >= passes.len() as u64 - 1, "{waits} waits");
    // The ring still carries the stream, at one visit per wait.
    assert!(c.run_until(
        |c| delivered_everywhere(c, &[1, 2, 3], &sent),
        10 * wait_us / 1000
    ));

    // Node 3 catches up while it holds the token: the token goes on at once.
    let id = c.send_numbered(1, 256).unwrap();
    let holding = |c: &Cluster| c.srp(3).unwrap().stats().token_waits_for_receivers > waits;
    assert!(c.run_until(holding, 2 * wait_us / 1000));
    let now = c.now();
    let passes_before = wire.borrow().len();
    c.set_receivers_behind(3, false);
    let released_at = wire.borrow()[passes_before..]
        .iter()
        .find(|s| s.from == 3 && token_of(s, ring).is_some())
        .map(|s| s.at)
        .expect("node 3 passed the token when its receivers caught up");
    assert_eq!(
        released_at, now,
        "the waiting token went on when told, not later"
    );
    assert!(c.run_until(|c| delivered_everywhere(c, &[1, 2, 3], &[id]), 100));
    // And it no longer waits: a burst goes round at the ring's own speed.
    let waits = c.srp(3).unwrap().stats().token_waits_for_receivers;
    let burst: Vec<MsgId> = (0..200).map(|_| c.send_numbered(1, 256).unwrap()).collect();
    assert!(c.run_until(
        |c| delivered_everywhere(c, &[1, 2, 3], &burst),
        wait_us / 1000
    ));
    assert_eq!(c.srp(3).unwrap().stats().token_waits_for_receivers, waits);
    c.clear_filter();
    drain(&mut c);
    check(&mut c);
}

#[test]
fn a_node_whose_receivers_stay_behind_slows_the_ring_but_never_stops_it() {
    // Node 1 is the representative, which also sits on the token of an idle ring; the
    // wait for receivers shares that visit's budget.
    for behind in [1, 2] {
        let (mut c, _) = formed(82, 3, TotemConfig::lan_profile());
        c.set_receivers_behind(behind, true);
        let token_us = c.params().token_us;
        let sent: Vec<MsgId> = (0..50)
            .map(|i| c.send_numbered(1 + i % 3, 512).unwrap())
            .collect();
        // No token loss, no new configuration, not even a token retransmission: the
        // waits end within half the retransmit timeout of the token's arrival.
        let confs = c.configurations();
        assert!(c.run_until(
            |c| delivered_everywhere(c, &[1, 2, 3], &sent),
            20 * token_us / 1000
        ));
        // Idle for a while, then a trickle: the representative holds the idle token.
        c.run_for(3 * token_us / 1000);
        for i in 0..5 {
            let id = c.send_numbered(1 + i % 3, 64).unwrap();
            assert!(c.run_until(
                |c| delivered_everywhere(c, &[1, 2, 3], &[id]),
                token_us / 1000
            ));
            c.run_for(token_us / 1000);
        }
        assert_eq!(
            c.configurations(),
            confs,
            "node {behind} behind: the ring reformed:\n{}",
            c.status()
        );
        for n in 1..=3 {
            let st = c.srp(n).unwrap().stats();
            assert_eq!(st.token_losses, 0, "node {behind} behind: node {n}");
            assert_eq!(st.token_retransmits, 0, "node {behind} behind: node {n}");
        }
        assert!(c.srp(behind).unwrap().stats().token_waits_for_receivers > 0);
        drain(&mut c);
        check(&mut c);
    }
}

#[test]
fn a_ring_whose_members_are_all_behind_still_turns_within_the_token_timeout() {
    let (mut c, _) = formed(83, 5, TotemConfig::lan_profile());
    for n in 1..=5 {
        c.set_receivers_behind(n, true);
    }
    let token_us = c.params().token_us;
    let confs = c.configurations();
    let sent: Vec<MsgId> = (0..40)
        .map(|i| c.send_numbered(1 + i % 5, 512).unwrap())
        .collect();
    assert!(c.run_until(
        |c| delivered_everywhere(c, &[1, 2, 3, 4, 5], &sent),
        40 * token_us / 1000
    ));
    c.run_for(3 * token_us / 1000);
    assert_eq!(
        c.configurations(),
        confs,
        "the ring reformed:\n{}",
        c.status()
    );
    for n in 1..=5 {
        assert_eq!(c.srp(n).unwrap().stats().token_losses, 0, "node {n}");
        assert!(
            c.srp(n).unwrap().stats().token_waits_for_receivers > 0,
            "node {n}"
        );
    }
    drain(&mut c);
    check(&mut c);
}
