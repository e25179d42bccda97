//! The scenario harness itself: each call does what its name says. (The protocol's own
//! scenarios live in their own test files; these only exercise the harness.)

use ais_test::{profile, Cluster, Property};
use bytes::Bytes;
use totem::{ConfKind, NodeId};

fn formed(nodes: u32) -> Cluster {
    let mut c = Cluster::new(11, nodes, profile::fast());
    let all: Vec<u32> = (1..=nodes).collect();
    assert!(
        c.run_until(|c| c.one_ring(&all), 10_000),
        "no ring:\n{}",
        c.status()
    );
    c
}

#[test]
fn nodes_form_one_ring_and_install_transitional_then_regular() {
    let c = formed(3);
    for n in 1..=3 {
        let cc = c.confchgs(n);
        assert_eq!(cc[0].kind, ConfKind::Transitional);
        assert_eq!(cc.last().unwrap().kind, ConfKind::Regular);
        assert_eq!(cc.last().unwrap().members.len(), 3);
        assert!(c.is_up(n));
        assert_eq!(c.incarnation(n), 1);
    }
    assert!(c.all_one_ring());
    assert!(
        !c.one_ring(&[1, 2]),
        "members must be exactly the nodes listed"
    );
}

#[test]
fn numbered_and_raw_messages_reach_everyone_in_one_order() {
    let mut c = formed(3);
    let a = c.send_numbered(1, 100).unwrap();
    let b = c.send_numbered(2, 5000).unwrap();
    c.mcast(3, Bytes::from_static(b"raw")).unwrap();
    assert!(c.run_until(|c| (1..=3).all(|n| c.delivered(n).len() == 3), 5_000));
    let first = c.delivered(1);
    for n in 2..=3 {
        assert_eq!(c.delivered(n), first);
    }
    assert!(first.contains(&(NodeId(3), Bytes::from_static(b"raw"))));
    let ids = c.delivered_ids(1);
    assert!(ids.contains(&a) && ids.contains(&b));
    c.check().unwrap();
}

#[test]
fn partition_heal_crash_restart_and_leave() {
    let mut c = formed(3);
    c.partition(&[&[1, 2]]);
    assert!(
        c.run_until(|c| c.one_ring(&[1, 2]) && c.one_ring(&[3]), 20_000),
        "{}",
        c.status()
    );
    c.heal();
    assert!(
        c.run_until(|c| c.one_ring(&[1, 2, 3]), 20_000),
        "{}",
        c.status()
    );

    c.crash(2);
    assert!(!c.is_up(2));
    assert!(
        c.run_until(|c| c.one_ring(&[1, 3]), 20_000),
        "{}",
        c.status()
    );
    c.restart(2);
    assert_eq!(c.incarnation(2), 2);
    assert!(
        c.run_until(|c| c.one_ring(&[1, 2, 3]), 20_000),
        "{}",
        c.status()
    );

    c.leave(3);
    c.run_for(100);
    assert!(!c.is_up(3));
    assert!(
        c.run_until(|c| c.one_ring(&[1, 2]), 20_000),
        "{}",
        c.status()
    );
    c.restart(3);
    assert!(c.run_until(|c| c.converged(), 20_000), "{}", c.status());
    c.check().unwrap();
}

#[test]
fn lossy_network_still_delivers_and_replays_identically() {
    let run = || {
        let mut c = formed(4);
        c.set_loss(0.1);
        c.set_dup(0.05);
        c.set_jitter_us(2000);
        for i in 0..40 {
            c.send_numbered(1 + i % 4, 50 + 37 * i as usize).unwrap();
        }
        assert!(
            c.run_until(|c| c.pending_self_delivery() == 0, 30_000),
            "{}",
            c.status()
        );
        c.run_for(2000);
        assert!(c.violation().is_none(), "{}", c.violation().unwrap());
        (c.trace_hash(), c.deliveries())
    };
    assert_eq!(run(), run());
}

#[test]
fn a_violation_reported_by_a_scenario_fails_check() {
    let mut c = formed(2);
    c.report(Property::Convergence, "scenario says so".to_string());
    let v = c.check().unwrap_err();
    assert_eq!(v.property, Property::Convergence);
    assert!(v.to_string().contains("seed 11"));
}

#[test]
fn nodes_can_start_late() {
    let mut c = Cluster::new_down(5, 3, profile::fast());
    assert!(!c.is_up(1) && c.delivered(1).is_empty());
    c.restart(1);
    c.restart(2);
    assert!(
        c.run_until(|c| c.one_ring(&[1, 2]), 10_000),
        "{}",
        c.status()
    );
    c.run_for(2_000);
    c.restart(3);
    assert_eq!(c.incarnation(3), 1);
    assert!(c.run_until(|c| c.all_one_ring(), 10_000), "{}", c.status());
    c.check().unwrap();
}
