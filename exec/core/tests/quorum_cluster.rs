//! Quorum over real Totem: every node of a partition reaches the same quorum state, the
//! majority side is quorate and the minority is not, and healing restores quorum
//! everywhere.

use std::collections::BTreeMap;

use ais_exec::testkit::TestCluster;
use ais_exec::{QuorumPolicy, QuorumState};
use totem::NodeId;

const SETTLE_MS: u64 = 20_000;

fn policy(votes: &[(u32, u32)], expected: u32, two_node: bool) -> QuorumPolicy {
    QuorumPolicy {
        votes: votes.iter().map(|&(n, v)| (NodeId(n), v)).collect(),
        default_votes: 1,
        expected_votes: Some(expected),
        two_node,
    }
}

fn cluster(size: u32, p: QuorumPolicy) -> TestCluster {
    TestCluster::new(size, move |r| r.set_quorum_policy(p.clone()))
}

/// The one quorum state every node of `nodes` holds; panics if they differ.
fn agreed(c: &TestCluster, nodes: &[u32]) -> QuorumState {
    let states: BTreeMap<u32, QuorumState> = nodes
        .iter()
        .map(|&n| (n, *c.registry(n).quorum()))
        .collect();
    let first = states[&nodes[0]];
    assert!(
        states.values().all(|s| *s == first),
        "nodes of one partition disagree on quorum: {states:?}"
    );
    first
}

#[test]
fn majority_partition_is_quorate_and_minority_is_not_on_every_node() {
    let mut c = cluster(5, policy(&[], 5, false));
    assert!(c.settle(&[1, 2, 3, 4, 5], SETTLE_MS));
    let all = agreed(&c, &[1, 2, 3, 4, 5]);
    assert!(all.quorate);
    assert_eq!((all.total_votes, all.expected_votes, all.needed), (5, 5, 3));

    c.partition(&[&[1, 2, 3], &[4, 5]]);
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    assert!(c.settle(&[4, 5], SETTLE_MS));
    let major = agreed(&c, &[1, 2, 3]);
    let minor = agreed(&c, &[4, 5]);
    assert!(major.quorate, "{major:?}");
    assert!(!minor.quorate, "{minor:?}");
    assert_eq!(minor.total_votes, 2);

    c.heal();
    assert!(c.settle(&[1, 2, 3, 4, 5], SETTLE_MS));
    assert!(agreed(&c, &[1, 2, 3, 4, 5]).quorate);
}

#[test]
fn weighted_votes_decide_which_side_is_primary() {
    // Node 1 holds 3 of 5 votes: it alone is the primary side.
    let mut c = cluster(3, policy(&[(1, 3), (2, 1), (3, 1)], 5, false));
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    c.partition(&[&[1], &[2, 3]]);
    assert!(c.settle(&[1], SETTLE_MS));
    assert!(c.settle(&[2, 3], SETTLE_MS));
    assert!(c.registry(1).quorum().quorate);
    assert!(!agreed(&c, &[2, 3]).quorate);
}

#[test]
fn a_crash_then_restart_loses_then_regains_quorum() {
    let mut c = cluster(3, policy(&[], 3, false));
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    c.crash(2);
    c.crash(3);
    assert!(c.settle(&[1], SETTLE_MS));
    let alone = *c.registry(1).quorum();
    assert!(!alone.quorate);
    assert_eq!((alone.total_votes, alone.needed), (1, 2));
    c.restart(2);
    assert!(c.settle(&[1, 2], SETTLE_MS));
    assert!(agreed(&c, &[1, 2]).quorate);
}

#[test]
fn two_node_cluster_survives_the_loss_of_either_node() {
    let mut c = cluster(2, policy(&[], 2, true));
    assert!(c.settle(&[1, 2], SETTLE_MS));
    c.crash(1);
    assert!(c.settle(&[2], SETTLE_MS));
    let s = *c.registry(2).quorum();
    assert!(s.quorate && s.two_node, "{s:?}");
}

#[test]
fn before_the_first_configuration_nobody_is_quorate() {
    let c = cluster(3, policy(&[], 3, false));
    for n in 1..=3 {
        assert_eq!(*c.registry(n).quorum(), QuorumState::NONE);
    }
}
