//! Properties of the frame codec that hold for every frame and every byte string:
//! valid frames round-trip exactly, and no input, however mangled, makes the decoder panic
//! or accept something it would not produce itself.
//!
//! A failing case is shrunk, printed, and saved to `wire_props.proptest-regressions`
//! next to this file; the next `cargo test -p totem --test wire_props` replays it first.
//! `PROPTEST_RNG_SEED=<u64>` pins the generator for a reproducible run.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use proptest::collection::{btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use totem::wire::{
    CommitEntry, CommitMember, CommitToken, Frame, Join, Mcast, MergeDetect, Recovered, Token,
    TokenHoldCancel, HEADER_LEN, MAGIC, MAX_FRAME_LEN, MAX_MEMBERS, MAX_RTR, MCAST_OVERHEAD_MAX,
    PROTOCOL_VERSION,
};
use totem::{NodeId, NodeSet, RingId};

/// How large generated frames may grow.
#[derive(Clone, Copy)]
struct Limits {
    members: usize,
    rtr: usize,
    payload: usize,
}

/// Every bound of the wire format, reached now and then.
const FULL: Limits = Limits {
    members: MAX_MEMBERS,
    rtr: MAX_RTR,
    payload: MAX_FRAME_LEN - MCAST_OVERHEAD_MAX,
};

/// Small frames, so that a random mutation lands in a header or count field often.
const SMALL: Limits = Limits {
    members: 6,
    rtr: 6,
    payload: 48,
};

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0),
        1 => Just(u64::MAX),
        4 => any::<u64>(),
        2 => 0..16u64,
    ]
}

fn edge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        1 => Just(0),
        1 => Just(u32::MAX),
        4 => any::<u32>(),
        2 => 0..16u32,
    ]
}

fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![
        1 => Just(u32::MAX),
        4 => 1..=u32::MAX,
        2 => 1..32u32,
    ]
    .prop_map(NodeId)
}

fn ring_id() -> impl Strategy<Value = RingId> {
    (edge_u32(), edge_u64()).prop_map(|(rep, seq)| RingId {
        rep: NodeId(rep),
        seq,
    })
}

fn node_ids(max: usize, min: usize) -> impl Strategy<Value = BTreeSet<NodeId>> {
    // Mostly small sets; the full size now and then to reach the bound.
    prop_oneof![
        4 => btree_set(node(), min..=max.min(8).max(min)),
        1 => btree_set(node(), min..=max),
    ]
}

fn node_set(max: usize) -> impl Strategy<Value = NodeSet> {
    node_ids(max, 0).prop_map(|ids| ids.into_iter().collect())
}

/// Payload bytes: random when short, a cheap pattern when long (generating each byte of
/// a 64 KiB payload through proptest would dominate the run time).
fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..=max.min(64)).prop_map(Bytes::from),
        1 => (0..=max, any::<u8>())
            .prop_map(|(len, seed)| (0..len).map(|i| seed ^ i as u8).collect::<Vec<u8>>().into()),
        1 => Just(vec![0x5A; max]).prop_map(Bytes::from),
    ]
}

fn token(l: Limits) -> impl Strategy<Value = Frame> {
    let rtr = prop_oneof![
        4 => vec(edge_u64(), 0..=l.rtr.min(8)),
        1 => vec(edge_u64(), 0..=l.rtr),
        1 => vec(edge_u64(), l.rtr),
    ];
    (
        node(),
        ring_id(),
        (edge_u64(), edge_u64(), edge_u64()),
        option::of(node()),
        (edge_u32(), edge_u32(), edge_u32()),
        rtr,
    )
        .prop_map(
            |(sender, ring_id, (token_seq, seq, aru), aru_addr, (fcc, backlog, rb), rtr)| {
                Frame::Token(Token {
                    sender,
                    ring_id,
                    token_seq,
                    seq,
                    aru,
                    aru_addr,
                    fcc,
                    backlog,
                    recovery_backlog: rb,
                    rtr,
                })
            },
        )
}

fn mcast(l: Limits) -> impl Strategy<Value = Frame> {
    let recovered = (ring_id(), edge_u64(), node()).prop_map(|(ring_id, seq, origin)| Recovered {
        ring_id,
        seq,
        origin,
    });
    (
        node(),
        ring_id(),
        edge_u64(),
        option::of(recovered),
        payload(l.payload),
    )
        .prop_map(|(sender, ring_id, seq, recovered, payload)| {
            Frame::Mcast(Mcast {
                sender,
                ring_id,
                seq,
                recovered,
                payload,
            })
        })
}

fn join(l: Limits) -> impl Strategy<Value = Frame> {
    (node(), edge_u64(), node_set(l.members), node_set(l.members)).prop_map(
        |(sender, ring_seq, proc_set, fail_set)| {
            Frame::Join(Join {
                sender,
                ring_seq,
                proc_set,
                fail_set,
            })
        },
    )
}

fn commit_entry() -> impl Strategy<Value = CommitEntry> {
    (ring_id(), edge_u64(), edge_u64(), any::<bool>()).prop_map(
        |(old_ring_id, aru, high_delivered, received_flg)| CommitEntry {
            old_ring_id,
            aru,
            high_delivered,
            received_flg,
        },
    )
}

fn commit(l: Limits) -> impl Strategy<Value = Frame> {
    (node(), ring_id(), node_ids(l.members, 1))
        .prop_flat_map(|(sender, ring_id, ids)| {
            let n = ids.len();
            (
                Just((sender, ring_id, ids)),
                vec(option::of(commit_entry()), n),
                0..n as u16,
            )
        })
        .prop_map(|((sender, ring_id, ids), entries, memb_index)| {
            Frame::Commit(CommitToken {
                sender,
                ring_id,
                memb_index,
                members: ids
                    .into_iter()
                    .zip(entries)
                    .map(|(node, entry)| CommitMember { node, entry })
                    .collect(),
            })
        })
}

fn short_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (node(), ring_id())
            .prop_map(|(sender, ring_id)| Frame::MergeDetect(MergeDetect { sender, ring_id })),
        (node(), ring_id()).prop_map(|(sender, ring_id)| Frame::TokenHoldCancel(TokenHoldCancel {
            sender,
            ring_id
        })),
    ]
}

/// Any valid frame, every kind equally likely.
fn frame(l: Limits) -> impl Strategy<Value = Frame> {
    prop_oneof![
        2 => token(l),
        2 => mcast(l),
        2 => join(l),
        2 => commit(l),
        2 => short_frame(),
    ]
}

/// One way to damage a frame on its way through the network (or through an attacker).
#[derive(Clone, Debug)]
enum Mutation {
    Xor {
        at: Index,
        mask: u8,
    },
    /// The values counts, bools and flags are most sensitive to.
    Set {
        at: Index,
        value: u8,
    },
    Truncate(Index),
    Remove(Index),
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Extend(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1..=u8::MAX).prop_map(|(at, mask)| Mutation::Xor { at, mask }),
        3 => (any::<Index>(), prop_oneof![Just(0u8), Just(1), Just(2), Just(0xFF), any::<u8>()])
            .prop_map(|(at, value)| Mutation::Set { at, value }),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => (any::<Index>(), vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match m {
        Mutation::Xor { at, mask } if len > 0 => bytes[at.index(len)] ^= mask,
        Mutation::Set { at, value } if len > 0 => bytes[at.index(len)] = *value,
        Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
        Mutation::Remove(at) if len > 0 => {
            bytes.remove(at.index(len));
        }
        Mutation::Insert { at, bytes: new } => {
            let at = at.index(len + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Extend(new) => bytes.extend_from_slice(new),
        Mutation::Xor { .. } | Mutation::Set { .. } | Mutation::Remove(_) => {}
    }
}

/// Decodes `bytes`; whatever it accepts must be exactly what the encoder makes of the
/// result, so the wire form is canonical and accepted frames round-trip.
fn check_decode(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let input = Bytes::from(bytes);
    if let Ok(frame) = Frame::decode(&input) {
        let again = frame.to_bytes();
        prop_assert_eq!(
            &again,
            &input,
            "accepted a non-canonical encoding of {:?}",
            frame
        );
        prop_assert_eq!(Frame::decode(&again), Ok(frame));
    }
    Ok(())
}

/// `cases` runs, failures kept next to this file (proptest's default looks for a `lib.rs`
/// above `tests/`, finds none and warns on every run).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// A valid header of any kind byte in and around the defined ones, so that random
/// bodies reach the per-kind decoders instead of stopping at the magic.
fn header() -> impl Strategy<Value = Vec<u8>> {
    (0..=7u8, prop_oneof![1 => Just(0u32), 15 => 1..=u32::MAX]).prop_map(|(kind, sender)| {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&MAGIC.to_be_bytes());
        h.push(PROTOCOL_VERSION);
        h.push(kind);
        h.extend_from_slice(&sender.to_be_bytes());
        h
    })
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn valid_frames_round_trip_exactly(frame in frame(FULL)) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        prop_assert_eq!(out.len(), frame.encoded_len());
        let bytes = out.freeze();
        prop_assert_eq!(frame.sender(), totem::wire::peek_sender(&bytes).unwrap());
        prop_assert_eq!(Frame::decode(&bytes), Ok(frame));
    }
}

proptest! {
    #![proptest_config(config(100_000))]

    #[test]
    fn decode_of_random_bytes_never_panics(bytes in vec(any::<u8>(), 0..96)) {
        check_decode(bytes)?;
    }

    #[test]
    fn decode_of_random_bodies_never_panics(
        mut bytes in header(),
        body in vec(any::<u8>(), 0..160),
    ) {
        bytes.extend_from_slice(&body);
        check_decode(bytes)?;
    }
}

proptest! {
    #![proptest_config(config(100_000))]

    #[test]
    fn decode_of_mutated_frames_never_panics_and_stays_canonical(
        frame in frame(SMALL),
        mutations in vec(mutation(), 1..=3),
    ) {
        let mut bytes = frame.to_bytes().to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check_decode(bytes)?;
    }
}
