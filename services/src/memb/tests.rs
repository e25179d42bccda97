//! The membership event stream over real Totem (`ais_exec::testkit`): what subscribers
//! on every node hear through starts, partitions, merges, crashes and restarts.

use ais_exec::testkit::TestCluster;
use ais_exec::{check_tables, ConnInfo, Effect, QuorumPolicy, Registry};
use ais_proto::memb::{cb, req, EventKind, MembEvent, Member, Snapshot};
use ais_proto::{Decode, SaError, ServiceId};
use bytes::Bytes;

use super::*;

const SETTLE_MS: u64 = 20_000;

fn setup(expected: u32) -> impl Fn(&mut Registry) + 'static {
    move |r: &mut Registry| {
        r.register(Memb::new());
        r.set_quorum_policy(QuorumPolicy {
            votes: Default::default(),
            default_votes: 1,
            expected_votes: Some(expected),
            two_node: false,
        });
    }
}

fn m(node_id: u32, born_on: u32) -> Member {
    Member { node_id, born_on }
}

/// Subscribes on node `n`; returns the connection and the snapshot.
fn subscribe(c: &mut TestCluster, n: u32) -> (ConnId, Snapshot) {
    let conn = c
        .connect(n, ServiceId::MEMB, ConnInfo::default())
        .expect("memb connects");
    c.request(n, conn, req::START, Bytes::new());
    let outs = c.take_outputs(n);
    let body = outs
        .iter()
        .find_map(|e| match e {
            Effect::Response {
                conn: k,
                id,
                error,
                body,
            } if *k == conn && *id == req::START => {
                assert_eq!(*error, SaError::Ok);
                Some(body.clone())
            }
            _ => None,
        })
        .expect("START answered");
    (
        conn,
        Snapshot::decode_exact(body).expect("snapshot decodes"),
    )
}

/// The events node `n` dispatched to `conn` since the last call.
fn events(c: &mut TestCluster, n: u32, conn: ConnId) -> Vec<MembEvent> {
    c.take_outputs(n)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Dispatch {
                conn: k, id, body, ..
            } if k == conn => {
                assert_eq!(id, cb::EVENT);
                Some(MembEvent::decode_exact(body).expect("event decodes"))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn tables_are_dense() {
    check_tables::<Memb>();
}

#[test]
fn partition_gives_not_primary_to_the_minority_and_eviction_on_healing() {
    let mut c = TestCluster::new(3, setup(3));
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    let mut subs = Vec::new();
    for n in 1..=3 {
        let (conn, snap) = subscribe(&mut c, n);
        assert_eq!(snap.local_node_id, n);
        assert!(snap.primary);
        assert_eq!(snap.sequence, 1, "one primary membership so far");
        assert_eq!(snap.members, vec![m(1, 1), m(2, 1), m(3, 1)]);
        subs.push(conn);
    }

    c.partition(&[&[1], &[2, 3]]);
    assert!(c.settle(&[1], SETTLE_MS) && c.settle(&[2, 3], SETTLE_MS));
    let one = events(&mut c, 1, subs[0]);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0].kind, EventKind::NotPrimary);
    assert_eq!(one[0].sequence, 1, "NOT_PRIMARY keeps the sequence");
    let two = events(&mut c, 2, subs[1]);
    let three = events(&mut c, 3, subs[2]);
    assert_eq!(two, three, "both members of the primary hear the same");
    assert_eq!(two.len(), 1, "{two:?}");
    assert_eq!(
        two[0],
        MembEvent {
            kind: EventKind::NewMembership,
            sequence: 2,
            members: vec![m(2, 1), m(3, 1)],
            joined: vec![],
            left: vec![m(1, 1)],
        }
    );

    c.heal();
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    let one = events(&mut c, 1, subs[0]);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0].kind, EventKind::Evicted);
    let two = events(&mut c, 2, subs[1]);
    assert_eq!(two, events(&mut c, 3, subs[2]));
    assert_eq!(
        two,
        vec![MembEvent {
            kind: EventKind::NewMembership,
            sequence: 3,
            members: vec![m(2, 1), m(3, 1), m(1, 3)],
            joined: vec![m(1, 3)],
            left: vec![],
        }]
    );
    // The evicted subscriber's stream is over; a new one on node 1 starts from the
    // cluster's state.
    c.partition(&[&[1, 2], &[3]]);
    assert!(c.settle(&[1, 2], SETTLE_MS));
    assert!(
        events(&mut c, 1, subs[0]).is_empty(),
        "events after EVICTED"
    );
    let (_, snap) = subscribe(&mut c, 1);
    assert_eq!(snap.sequence, 4);
    assert_eq!(snap.members, vec![m(2, 1), m(1, 3)]);
}

#[test]
fn crash_and_restart_are_left_then_joined_with_a_new_birth() {
    let mut c = TestCluster::new(3, setup(3));
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    let (conn, _) = subscribe(&mut c, 1);
    c.crash(3);
    assert!(c.settle(&[1, 2], SETTLE_MS));
    let ev = events(&mut c, 1, conn);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].left, vec![m(3, 1)]);
    assert_eq!(ev[0].sequence, 2);
    c.restart(3);
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    let ev = events(&mut c, 1, conn);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, EventKind::NewMembership);
    assert_eq!(ev[0].sequence, 3);
    assert_eq!(ev[0].joined, vec![m(3, 3)]);
    assert_eq!(ev[0].members, vec![m(1, 1), m(2, 1), m(3, 3)]);
    let (_, snap) = subscribe(&mut c, 3);
    assert_eq!((snap.sequence, snap.members), (3, ev[0].members.clone()));
}

#[test]
fn all_partitions_losing_quorum_then_healing_restores_the_primary() {
    let mut c = TestCluster::new(3, setup(3));
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    let subs: Vec<ConnId> = (1..=3).map(|n| subscribe(&mut c, n).0).collect();
    c.partition(&[&[1], &[2], &[3]]);
    for n in 1..=3 {
        assert!(c.settle(&[n], SETTLE_MS));
    }
    for n in 1..=3u32 {
        let ev = events(&mut c, n, subs[n as usize - 1]);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].kind, EventKind::NotPrimary);
    }
    c.heal();
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    for n in 1..=3u32 {
        let ev = events(&mut c, n, subs[n as usize - 1]);
        assert_eq!(
            ev,
            vec![MembEvent {
                kind: EventKind::PrimaryRestored,
                sequence: 1,
                members: vec![m(1, 1), m(2, 1), m(3, 1)],
                joined: vec![],
                left: vec![],
            }]
        );
    }
}

#[test]
fn stop_ends_the_subscription_and_a_second_stop_is_refused() {
    let mut c = TestCluster::new(2, setup(2));
    assert!(c.settle(&[1, 2], SETTLE_MS));
    let (conn, _) = subscribe(&mut c, 1);
    c.request(1, conn, req::STOP, Bytes::new());
    c.request(1, conn, req::STOP, Bytes::new());
    let errors: Vec<SaError> = c
        .take_outputs(1)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Response { id, error, .. } if id == req::STOP => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(errors, vec![SaError::Ok, SaError::NotExist]);
    c.crash(2);
    assert!(c.settle(&[1], SETTLE_MS));
    assert!(events(&mut c, 1, conn).is_empty());
}
