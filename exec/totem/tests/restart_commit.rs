//! A node that restarts in the middle of a ring's formation must not install that ring
//! on its previous incarnation's word.
//!
//! The exact sequence of clm_sim seed 3868 (on the `clm` branch), seen from the
//! restarted node, here node 2 of the ring 1.16 = {1, 2, 3} that node 1 forms:
//!
//! 1. node 2's previous incarnation filled in the first rotation of the commit token of
//!    1.16 (it came from ring 1.12), then crashed; it restarts at once, with the
//!    persisted ring sequence 16, alone in its pre-ring ring 2.0;
//! 2. it hears a join of that formation from node 3 (still gathering: the token has not
//!    reached it yet), so its view becomes {1, 2, 3};
//! 3. node 1 retransmits the token's first rotation, still addressed to node 2, with
//!    node 2's entry empty: node 2 fills it in afresh (old ring 2.0) and enters commit;
//! 4. the rotation that completes is the one the previous incarnation filled in, and it
//!    comes back to node 2 with that entry (old ring 1.12).
//!
//! Entering recovery with it installed ring 1.16 with an empty transitional
//! configuration at node 2 (no entry named its old ring 2.0, not even its own), while
//! nodes 1 and 3 counted it among those bringing ring 1.12's messages.

use bytes::Bytes;
use totem::wire::{CommitEntry, CommitMember, CommitToken, Frame, Join};
use totem::{Dest, Instant, MembState, NodeId, NodeSet, RingId, Srp, TotemConfig};

const ME: NodeId = NodeId(2);
const RING: RingId = RingId {
    rep: NodeId(1),
    seq: 16,
};
const OLD_RING: RingId = RingId {
    rep: NodeId(1),
    seq: 12,
};

fn set(ids: &[u32]) -> NodeSet {
    NodeSet::from_sorted(ids.iter().map(|&i| NodeId(i)).collect()).expect("sorted ids")
}

/// What a member of ring 1.12 that delivered everything up to 18 writes in.
fn from_old_ring() -> CommitEntry {
    CommitEntry {
        old_ring_id: OLD_RING,
        aru: 18,
        high_delivered: 18,
        received_flg: true,
    }
}

fn commit(entries: [Option<CommitEntry>; 3]) -> Bytes {
    Frame::Commit(CommitToken {
        sender: NodeId(1),
        ring_id: RING,
        memb_index: 1,
        members: (1..=3)
            .zip(entries)
            .map(|(n, entry)| CommitMember {
                node: NodeId(n),
                entry,
            })
            .collect(),
    })
    .to_bytes()
}

/// The commit tokens `srp` sent since the last call, with their destination.
fn sent_commits(srp: &mut Srp) -> Vec<(Dest, CommitToken)> {
    let mut out = Vec::new();
    // The time only matters to a token held here, which a commit test never has.
    while let Some(t) = srp.poll_transmit(Instant(0)) {
        if let Ok(Frame::Commit(ct)) = Frame::decode(&t.data) {
            out.push((t.dest, ct));
        }
    }
    out
}

/// Steps 1 to 3: the restarted node 2, in commit for ring 1.16 with the entry it
/// wrote itself; returns that entry.
fn restarted_node_in_commit() -> (Srp, Instant, CommitEntry) {
    let params = TotemConfig::default().resolve(3).expect("valid config");
    let mut now = Instant::from_millis(1000);
    let mut srp = Srp::new(params, ME, RING.seq, now);
    sent_commits(&mut srp);

    now = now.plus_micros(200);
    let join = Join {
        sender: NodeId(3),
        ring_seq: OLD_RING.seq,
        proc_set: set(&[1, 2, 3]),
        fail_set: NodeSet::new(),
    };
    srp.handle_datagram(now, Frame::Join(join).to_bytes());
    assert_eq!(srp.state(), MembState::Gather);

    now = now.plus_micros(200);
    srp.handle_datagram(now, commit([Some(from_old_ring()), None, None]));
    assert_eq!(
        srp.state(),
        MembState::Commit,
        "fills in the first rotation"
    );
    let sent = sent_commits(&mut srp);
    assert_eq!(sent.len(), 1, "forwards the token once: {sent:?}");
    let (dest, ct) = &sent[0];
    assert_eq!(*dest, Dest::Unicast(NodeId(3)));
    let mine = ct.members[1].entry.expect("our entry is filled in");
    assert_eq!(
        mine.old_ring_id,
        RingId::initial(ME, 0),
        "we come from no ring"
    );
    (srp, now, mine)
}

#[test]
fn restarted_node_refuses_the_commit_token_its_previous_incarnation_filled_in() {
    let (mut srp, mut now, mine) = restarted_node_in_commit();
    assert_ne!(mine, from_old_ring());

    // Step 4: the second rotation, with our previous incarnation's entry.
    now = now.plus_micros(200);
    let all = Some(from_old_ring());
    srp.handle_datagram(now, commit([all, all, all]));
    assert_eq!(
        srp.state(),
        MembState::Commit,
        "must not recover into a ring on another incarnation's entry"
    );
    assert!(sent_commits(&mut srp).is_empty(), "must not pass it on");
    if let Some(e) = srp.poll_event() {
        panic!("no configuration may be installed: {e:?}");
    }

    // The formation times out and we gather again, from where we really are.
    while srp.state() == MembState::Commit {
        now = srp.poll_timeout().expect("a timer runs in commit");
        srp.handle_timeout(now);
    }
    assert_eq!(srp.state(), MembState::Gather);
    assert_eq!(srp.ring_id(), RingId::initial(ME, 0));
}

#[test]
fn the_commit_token_carrying_our_own_entry_starts_recovery() {
    let (mut srp, now, mine) = restarted_node_in_commit();
    let old = Some(from_old_ring());
    srp.handle_datagram(now.plus_micros(200), commit([old, Some(mine), old]));
    assert_eq!(srp.state(), MembState::Recovery);
    let sent = sent_commits(&mut srp);
    assert_eq!(sent.len(), 1, "passes the second rotation on: {sent:?}");
    assert_eq!(sent[0].0, Dest::Unicast(NodeId(3)));
}
