//! The admin service through the registry: hand-fed for the deferred answer, and over
//! real Totem (`ais_exec::testkit`) for what an operator sees across a partition.

use std::collections::BTreeMap;

use ais_exec::testkit::TestCluster;
use ais_exec::ConnInfo;
use ais_exec::{check_tables, Counter, Effect, QuorumPolicy, Registry};
use ais_proto::admin::{req, MembersRes, StatusRes};
use ais_proto::{Decode, SaError, ServiceId};
use bytes::Bytes;
use totem::{ConfChange, ConfKind, Instant, NodeId, NodeSet, RingId};

use super::*;

const SETTLE_MS: u64 = 20_000;

fn names(n: u32) -> BTreeMap<NodeId, String> {
    (1..=n).map(|i| (NodeId(i), format!("node{i}"))).collect()
}

fn setup(size: u32) -> impl Fn(&mut Registry) + 'static {
    move |r: &mut Registry| {
        r.register(Admin::new());
        r.set_quorum_policy(QuorumPolicy {
            votes: [(NodeId(1), 2)].into_iter().collect(),
            default_votes: 1,
            expected_votes: Some(size + 1),
            two_node: false,
        });
        r.set_node_names(names(size));
    }
}

/// The one response for `conn` in `outputs`.
fn response(outputs: &[Effect], conn: ConnId) -> (u32, SaError, Bytes) {
    let found: Vec<_> = outputs
        .iter()
        .filter_map(|e| match e {
            Effect::Response {
                conn: c,
                id,
                error,
                body,
            } if *c == conn => Some((*id, *error, body.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "{outputs:?}");
    found[0].clone()
}

fn status(c: &mut TestCluster, n: u32) -> StatusRes {
    let conn = c
        .connect(n, ServiceId::ADMIN, ConnInfo::default())
        .expect("admin connects");
    c.request(n, conn, req::STATUS, Bytes::new());
    let (id, error, body) = response(&c.take_outputs(n), conn);
    assert_eq!((id, error), (req::STATUS, SaError::Ok));
    c.disconnect(n, conn);
    StatusRes::decode_exact(body).expect("status decodes")
}

#[test]
fn tables_are_dense() {
    check_tables::<Admin>();
}

#[test]
fn status_names_every_member_with_address_votes_and_quorum() {
    let mut c = TestCluster::new(3, setup(3));
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    let s = status(&mut c, 2);
    let m = &s.members;
    assert_eq!((m.node_id, m.node_name.as_str()), (2, "node2"));
    let ring = c.registry(2).ring_id().expect("a ring");
    assert_eq!(
        m.ring_id.map(|r| (r.rep, r.seq)),
        Some((ring.rep.0, ring.seq))
    );
    assert!(m.quorate);
    let listed: Vec<(u32, u32, &str, &str)> = m
        .members
        .iter()
        .map(|x| (x.node_id, x.votes, x.name.as_str(), x.address.as_str()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (1, 2, "node1", "testkit:1"),
            (2, 1, "node2", "testkit:2"),
            (3, 1, "node3", "testkit:3"),
        ]
    );
    // Node 1 holds two votes: 4 of 4 expected, 3 needed.
    let q = s.quorum;
    assert!(q.quorate && q.enforced && !q.two_node);
    assert_eq!((q.total_votes, q.expected_votes, q.needed), (4, 4, 3));
    // Totem's counters, fresh: this node has sent frames and passed tokens.
    let counter = |name: &str| {
        s.counters
            .iter()
            .find(|x| x.name == name)
            .map(|x| x.value)
            .unwrap_or_else(|| panic!("no counter {name}"))
    };
    assert!(counter("totem.frames_sent") > 0);
    assert!(counter("totem.token_rotations") > 0);
    assert_eq!(
        counter("totem.frames_sent"),
        c.node(2).srp.stats().frames_sent
    );
}

#[test]
fn minority_side_reports_not_quorate_and_only_its_members() {
    let mut c = TestCluster::new(3, setup(3));
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    c.partition(&[&[1], &[2, 3]]);
    assert!(c.settle(&[1], SETTLE_MS));
    assert!(c.settle(&[2, 3], SETTLE_MS));
    // Node 1's two votes are not a majority of four; nodes 2 and 3 hold two as well.
    for n in [1, 2, 3] {
        let s = status(&mut c, n);
        assert!(!s.members.quorate, "node {n}: {s:?}");
        assert_eq!(s.quorum.needed, 3);
    }
    let s = status(&mut c, 3);
    let ids: Vec<u32> = s.members.members.iter().map(|m| m.node_id).collect();
    assert_eq!(ids, vec![2, 3]);
    c.heal();
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    assert!(status(&mut c, 3).members.quorate);
}

#[test]
fn members_request_answers_the_membership_only() {
    let mut c = TestCluster::new(2, setup(2));
    assert!(c.settle(&[1, 2], SETTLE_MS));
    let conn = c
        .connect(1, ServiceId::ADMIN, ConnInfo::default())
        .expect("admin connects");
    c.request(1, conn, req::MEMBERS, Bytes::new());
    let (id, error, body) = response(&c.take_outputs(1), conn);
    assert_eq!((id, error), (req::MEMBERS, SaError::Ok));
    let m = MembersRes::decode_exact(body).expect("members decode");
    assert_eq!(m.members.len(), 2);
    assert_eq!(m.members[1].name, "node2");
}

#[test]
fn bad_requests_are_refused_without_waiting() {
    let mut c = TestCluster::new(1, setup(1));
    assert!(c.settle(&[1], SETTLE_MS));
    let conn = c
        .connect(1, ServiceId::ADMIN, ConnInfo::default())
        .expect("admin connects");
    c.request(1, conn, req::STATUS, Bytes::from_static(b"x"));
    let (_, error, _) = response(&c.take_outputs(1), conn);
    assert_eq!(error, SaError::InvalidParam);
    c.request(1, conn, 99, Bytes::new());
    let (_, error, _) = response(&c.take_outputs(1), conn);
    assert_eq!(error, SaError::InvalidParam);
    assert_eq!(
        c.registry(1).service::<Admin>().map(Admin::waiting),
        Some(0)
    );
}

/// Hand-fed: the answer waits for the daemon's refresh, carries what it supplied, and a
/// connection that closes meanwhile is forgotten.
#[test]
fn the_answer_waits_for_the_host_status_and_uses_it() {
    let mut r = Registry::new(NodeId(7));
    r.register(Admin::new());
    r.set_node_names([(NodeId(7), "seven".to_owned())].into_iter().collect());
    let members: NodeSet = [NodeId(7)].into_iter().collect();
    r.confchg(&ConfChange {
        kind: ConfKind::Regular,
        ring_id: RingId {
            rep: NodeId(7),
            seq: 4,
        },
        members: members.clone(),
        left: NodeSet::new(),
        joined: members,
    });
    while r.poll_effect().is_some() {}
    let (a, b) = (ConnId(1), ConnId(2));
    r.lib_connect(a, ServiceId::ADMIN, ConnInfo::default())
        .expect("connects");
    r.lib_connect(b, ServiceId::ADMIN, ConnInfo::default())
        .expect("connects");
    r.lib_request(Instant(5), a, req::STATUS, Bytes::new(), 0);
    r.lib_request(Instant(5), b, req::MEMBERS, Bytes::new(), 0);
    assert!(r.poll_effect().is_none(), "nothing before the refresh");
    assert!(r.host_status_wanted());
    r.lib_disconnect(b);
    r.refresh_host_status(
        [(NodeId(7), "10.0.0.7:5405".to_owned())]
            .into_iter()
            .collect(),
        vec![Counter {
            name: "transport.bad_auth",
            value: 3,
        }],
    );
    assert!(!r.host_status_wanted());
    let mut out = Vec::new();
    while let Some(e) = r.poll_effect() {
        out.push(e);
    }
    let (_, error, body) = response(&out, a);
    assert_eq!(error, SaError::Ok);
    assert_eq!(out.len(), 1, "nothing for the closed connection: {out:?}");
    let s = StatusRes::decode_exact(body).expect("decodes");
    assert_eq!(s.members.node_name, "seven");
    assert_eq!(s.members.members[0].address, "10.0.0.7:5405");
    // Default policy: quorum not enforced, the one node is quorate.
    assert!(s.quorum.quorate && !s.quorum.enforced);
    assert_eq!(s.counters[0].name, "transport.bad_auth");
    assert_eq!(s.counters[0].value, 3);
}

/// Every service, as the daemon runs them, without a nodelist: the configuration names
/// this node only (its host name), CLM replicates every member's own name.
#[test]
fn without_a_nodelist_members_are_named_by_the_names_they_announced() {
    let mut c = TestCluster::new(3, |r: &mut Registry| {
        let id = r.node_id().0;
        let local = crate::LocalNode::new(
            &format!("host{id}"),
            std::net::Ipv4Addr::new(10, 0, 0, id as u8).into(),
            u64::from(id),
        );
        crate::register_all(r, &crate::ServicesConfig::new(local));
        // What the daemon configures without a nodelist: its own host name. Node 3's
        // configuration calls it something else: configured names come first.
        let own = if id == 3 { "configured3" } else { "" };
        if !own.is_empty() {
            r.set_node_names([(NodeId(id), own.to_owned())].into_iter().collect());
        }
    });
    assert!(c.settle(&[1, 2, 3], SETTLE_MS));
    let names = |s: &StatusRes| -> Vec<(u32, String)> {
        s.members
            .members
            .iter()
            .map(|m| (m.node_id, m.name.clone()))
            .collect()
    };
    let s = status(&mut c, 1);
    assert_eq!(s.members.node_name, "host1");
    assert_eq!(
        names(&s),
        [
            (1, "host1".into()),
            (2, "host2".into()),
            (3, "host3".into())
        ]
    );
    let s = status(&mut c, 3);
    assert_eq!(s.members.node_name, "configured3");
    assert_eq!(
        names(&s),
        [
            (1, "host1".into()),
            (2, "host2".into()),
            (3, "configured3".into())
        ]
    );
    // A node that left is no member: it is not listed, whatever CLM remembers of it.
    c.crash(2);
    assert!(c.settle(&[1, 3], SETTLE_MS));
    assert_eq!(
        names(&status(&mut c, 1)),
        [(1, "host1".into()), (3, "host3".into())]
    );
    assert_eq!(
        c.registry(1).host_status().name_of(NodeId(2)),
        Some("host2"),
        "still known by its announced name"
    );
}
