//! CPG through the registry: hand-fed for the exact message flow, and over real Totem
//! (`ais_exec::testkit`) for the scenarios clients see.

use ais_exec::testkit::TestCluster;
use ais_exec::{check_tables, ConnId, ConnInfo, Effect, Registry};
use ais_proto::cpg::{
    cb, req, Address, ConfchgCb, DeliverCb, GroupName, GroupReq, LocalGetRes, McastReq,
    MembershipGetReq, MembershipGetRes, Reason,
};
use ais_proto::{Decode, Encode, MsgId, SaError, ServiceId};
use bytes::{BufMut, Bytes, BytesMut};
use totem::{ConfChange, ConfKind, Instant, NodeId, NodeSet, RingId};

use super::*;

/// What a client received, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Res(u32, SaError, Bytes),
    Confchg(ConfchgCb),
    Deliver(DeliverCb),
}

fn decode_for(outputs: &[Effect], conn: ConnId) -> Vec<Got> {
    outputs
        .iter()
        .filter_map(|e| match e {
            Effect::Response {
                conn: c,
                id,
                error,
                body,
            } if *c == conn => Some(Got::Res(*id, *error, body.clone())),
            Effect::Dispatch {
                conn: c,
                id,
                body,
                tail,
            } if *c == conn => Some(match *id {
                cb::CONFCHG => {
                    Got::Confchg(ConfchgCb::decode_exact(body.clone()).expect("confchg decodes"))
                }
                cb::DELIVER => Got::Deliver(
                    DeliverCb::decode_exact(ais_exec::callback_body(body, tail))
                        .expect("deliver decodes"),
                ),
                other => panic!("unknown callback {other}"),
            }),
            _ => None,
        })
        .collect()
}

fn g(name: &'static str) -> GroupName {
    GroupName::new(name.as_bytes()).expect("short name")
}

fn join_body(group: &'static str, pid: u32) -> Bytes {
    GroupReq {
        group: g(group),
        pid,
    }
    .to_bytes()
}

fn mcast_body(data: &'static [u8]) -> Bytes {
    McastReq {
        guarantee: 1,
        data: Bytes::from_static(data),
    }
    .to_bytes()
}

fn addr(nodeid: u32, pid: u32, reason: Reason) -> Address {
    Address {
        nodeid,
        pid,
        reason,
    }
}

fn cluster(n: u32) -> TestCluster {
    TestCluster::new(n, |r| r.register(Cpg::new()))
}

fn all(k: u32) -> Vec<u32> {
    (1..=k).collect()
}

fn connect(c: &mut TestCluster, n: u32) -> ConnId {
    c.connect(
        n,
        ServiceId::CPG,
        ConnInfo {
            pid: 1,
            uid: 0,
            gid: 0,
        },
    )
    .expect("cpg connects")
}

fn cpg(c: &TestCluster, n: u32) -> &Cpg {
    c.registry(n).service::<Cpg>().expect("cpg registered")
}

/// Callbacks (not responses) `conn` of node `n` got, in order.
fn callbacks(c: &TestCluster, n: u32, conn: ConnId) -> Vec<Got> {
    decode_for(&c.node(n).outputs, conn)
        .into_iter()
        .filter(|x| !matches!(x, Got::Res(..)))
        .collect()
}

fn responses(c: &TestCluster, n: u32, conn: ConnId) -> Vec<(u32, SaError)> {
    decode_for(&c.node(n).outputs, conn)
        .into_iter()
        .filter_map(|x| match x {
            Got::Res(id, e, _) => Some((id, e)),
            _ => None,
        })
        .collect()
}

/// On each of `nodes`, an observer joined to `group` (pid 1000 + node), one after the
/// other; returns their connections. Their callbacks are cleared.
fn observers(c: &mut TestCluster, nodes: &[u32], group: &'static str) -> Vec<ConnId> {
    let mut conns = Vec::new();
    for &n in nodes {
        let conn = connect(c, n);
        c.request(n, conn, req::JOIN, join_body(group, 1000 + n));
        assert!(c.settle(nodes, 5_000));
        conns.push(conn);
    }
    for &n in nodes {
        c.take_outputs(n);
    }
    conns
}

#[test]
fn tables_are_dense() {
    check_tables::<Cpg>();
}

#[test]
fn joinlist_round_trips_and_refuses_truncation() {
    let m = JoinListMsg {
        ring: RingId {
            rep: NodeId(2),
            seq: 9,
        },
        entries: vec![
            JoinEntry {
                group: g("a"),
                pid: 7,
                conn: 3,
                since: Age {
                    ring_seq: 4,
                    ring_rep: 1,
                    n: 2,
                },
            },
            JoinEntry {
                group: g(""),
                pid: 8,
                conn: 4,
                since: Age::default(),
            },
        ],
    };
    let b = m.to_bytes();
    assert_eq!(JoinListMsg::decode_exact(b.clone()), Ok(m));
    for cut in 0..b.len() {
        assert!(JoinListMsg::decode_exact(b.slice(..cut)).is_err());
    }
    let mut huge = BytesMut::new();
    huge.put_u32(1);
    huge.put_u64(1);
    huge.put_u32(u32::MAX);
    assert!(JoinListMsg::decode_exact(huge.freeze()).is_err());
}

#[test]
fn join_mcast_leave_give_every_member_the_same_story() {
    let mut c = cluster(3);
    assert!(c.settle(&all(3), 5_000));
    let obs = observers(&mut c, &all(3), "g");
    let a = connect(&mut c, 2);
    c.request(2, a, req::JOIN, join_body("g", 42));
    c.request(2, a, req::MCAST, mcast_body(b"hello"));
    c.request(1, obs[0], req::MCAST, mcast_body(b"from 1"));
    assert!(c.settle(&all(3), 5_000));
    c.request(2, a, req::LEAVE, join_body("g", 42));
    assert!(c.settle(&all(3), 5_000));

    let members = vec![
        addr(1, 1001, Reason::Join),
        addr(2, 1002, Reason::Join),
        addr(3, 1003, Reason::Join),
    ];
    let mut with_a = members.clone();
    with_a.push(addr(2, 42, Reason::Join));
    let story = vec![
        Got::Confchg(ConfchgCb {
            group: g("g"),
            members: with_a.clone(),
            left: vec![],
            joined: vec![addr(2, 42, Reason::Join)],
        }),
        Got::Deliver(DeliverCb {
            group: g("g"),
            nodeid: 2,
            pid: 42,
            data: Bytes::from_static(b"hello"),
        }),
        Got::Deliver(DeliverCb {
            group: g("g"),
            nodeid: 1,
            pid: 1001,
            data: Bytes::from_static(b"from 1"),
        }),
        Got::Confchg(ConfchgCb {
            group: g("g"),
            members: members.clone(),
            left: vec![addr(2, 42, Reason::Leave)],
            joined: vec![],
        }),
    ];
    for n in 1..=3 {
        assert_eq!(
            callbacks(&c, n, obs[n as usize - 1]),
            story,
            "observer on node {n}"
        );
    }
    // The joiner saw its join, its own message and its own leave, each after its answer.
    let mine = decode_for(&c.node(2).outputs, a);
    // (A multicast is accepted while the join is on its way; it is delivered after it.)
    assert_eq!(mine[0], Got::Res(req::MCAST, SaError::Ok, Bytes::new()));
    assert_eq!(mine[1], Got::Res(req::JOIN, SaError::Ok, Bytes::new()));
    assert_eq!(mine[2], story[0]);
    assert_eq!(&mine[3..5], &story[1..3]);
    assert_eq!(mine[5], Got::Res(req::LEAVE, SaError::Ok, Bytes::new()));
    assert_eq!(mine[6], story[3]);
    assert_eq!(mine.len(), 7);
    for n in 1..=3 {
        assert_eq!(cpg(&c, n).members(&g("g")), members);
    }
}

#[test]
fn requests_are_checked_as_corosync_checks_them() {
    let mut c = cluster(2);
    assert!(c.settle(&all(2), 5_000));
    let a = connect(&mut c, 1);
    let b = connect(&mut c, 1);
    c.request(1, a, req::JOIN, Bytes::from_static(b"\x00\x05ab"));
    c.request(1, a, req::MCAST, mcast_body(b"x"));
    c.request(1, a, req::LEAVE, join_body("g", 5));
    c.request(1, a, req::JOIN, join_body("g", 5));
    c.request(1, a, req::JOIN, join_body("h", 5));
    c.request(1, b, req::JOIN, join_body("g", 5));
    assert!(c.settle(&all(2), 5_000));
    c.request(1, a, req::LEAVE, join_body("other", 5));
    c.request(1, a, req::MEMBERSHIP_GET, Bytes::from_static(b"\xff"));
    c.request(1, a, req::LOCAL_GET, Bytes::new());
    c.request(1, a, 9, Bytes::new());
    let conn2 = connect(&mut c, 2);
    c.request(2, conn2, req::JOIN, join_body("g", 6));
    assert!(c.settle(&all(2), 5_000));
    c.request(
        2,
        conn2,
        req::MEMBERSHIP_GET,
        MembershipGetReq { group: g("g") }.to_bytes(),
    );
    c.request(
        2,
        conn2,
        req::MEMBERSHIP_GET,
        MembershipGetReq { group: g("none") }.to_bytes(),
    );
    assert!(c.settle(&all(2), 5_000));
    assert_eq!(
        responses(&c, 1, a),
        vec![
            (req::JOIN, SaError::InvalidParam),
            (req::MCAST, SaError::NotExist),
            (req::LEAVE, SaError::NotExist),
            (req::JOIN, SaError::Exist), // already joining "g": answered before the first
            (req::JOIN, SaError::Ok),
            (req::LEAVE, SaError::NotExist),
            (req::MEMBERSHIP_GET, SaError::InvalidParam),
            (req::LOCAL_GET, SaError::Ok),
            (9, SaError::InvalidParam),
        ]
    );
    assert_eq!(responses(&c, 1, b), vec![(req::JOIN, SaError::Exist)]);
    let local = decode_for(&c.node(1).outputs, a)
        .into_iter()
        .find_map(|x| match x {
            Got::Res(req::LOCAL_GET, _, body) => Some(LocalGetRes::decode_exact(body).unwrap()),
            _ => None,
        });
    assert_eq!(local, Some(LocalGetRes { nodeid: 1 }));
    let gets: Vec<MembershipGetRes> = decode_for(&c.node(2).outputs, conn2)
        .into_iter()
        .filter_map(|x| match x {
            Got::Res(req::MEMBERSHIP_GET, SaError::Ok, body) => {
                MembershipGetRes::decode_exact(body).ok()
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        gets,
        vec![
            MembershipGetRes {
                members: vec![addr(1, 5, Reason::Join), addr(2, 6, Reason::Join)]
            },
            MembershipGetRes { members: vec![] },
        ]
    );
}

#[test]
fn mcast_is_flow_controlled() {
    let mut c = cluster(1);
    assert!(c.settle(&[1], 5_000));
    let a = connect(&mut c, 1);
    c.request(1, a, req::JOIN, join_body("g", 1));
    assert!(c.settle(&[1], 5_000));
    c.node_mut(1).room_override = Some(0);
    c.request(1, a, req::MCAST, mcast_body(b"x"));
    c.request(1, a, req::LOCAL_GET, Bytes::new());
    c.node_mut(1).room_override = None;
    assert!(c.settle(&[1], 5_000));
    assert_eq!(
        responses(&c, 1, a),
        vec![
            (req::JOIN, SaError::Ok),
            (req::MCAST, SaError::TryAgain),
            (req::LOCAL_GET, SaError::Ok)
        ]
    );
    assert!(callbacks(&c, 1, a)
        .iter()
        .all(|x| !matches!(x, Got::Deliver(_))));
}

#[test]
fn a_closed_connection_is_a_process_down_everywhere() {
    let mut c = cluster(3);
    assert!(c.settle(&all(3), 5_000));
    let obs = observers(&mut c, &all(3), "g");
    let a = connect(&mut c, 3);
    c.request(3, a, req::JOIN, join_body("g", 77));
    assert!(c.settle(&all(3), 5_000));
    c.disconnect(3, a);
    assert!(c.settle(&all(3), 5_000));
    // One that closes before its join is even delivered: joins, then goes down.
    let b = connect(&mut c, 2);
    c.request(2, b, req::JOIN, join_body("g", 88));
    c.disconnect(2, b);
    assert!(c.settle(&all(3), 5_000));
    let base = vec![
        addr(1, 1001, Reason::Join),
        addr(2, 1002, Reason::Join),
        addr(3, 1003, Reason::Join),
    ];
    let with = |extra: Address| {
        let mut v = base.clone();
        v.push(extra);
        v
    };
    let story = vec![
        Got::Confchg(ConfchgCb {
            group: g("g"),
            members: with(addr(3, 77, Reason::Join)),
            left: vec![],
            joined: vec![addr(3, 77, Reason::Join)],
        }),
        Got::Confchg(ConfchgCb {
            group: g("g"),
            members: base.clone(),
            left: vec![addr(3, 77, Reason::ProcDown)],
            joined: vec![],
        }),
        Got::Confchg(ConfchgCb {
            group: g("g"),
            members: with(addr(2, 88, Reason::Join)),
            left: vec![],
            joined: vec![addr(2, 88, Reason::Join)],
        }),
        Got::Confchg(ConfchgCb {
            group: g("g"),
            members: base.clone(),
            left: vec![addr(2, 88, Reason::ProcDown)],
            joined: vec![],
        }),
    ];
    for n in 1..=3 {
        assert_eq!(callbacks(&c, n, obs[n as usize - 1]), story, "node {n}");
        assert_eq!(cpg(&c, n).members(&g("g")), base);
    }
}

#[test]
fn a_crashed_node_is_a_node_down_for_its_processes() {
    let mut c = cluster(3);
    assert!(c.settle(&all(3), 5_000));
    let obs = observers(&mut c, &all(3), "g");
    let other = connect(&mut c, 3);
    c.request(3, other, req::JOIN, join_body("h", 5));
    assert!(c.settle(&all(3), 5_000));
    c.take_outputs(1);
    c.take_outputs(2);
    c.crash(3);
    assert!(c.settle(&[1, 2], 10_000));
    let expect = vec![Got::Confchg(ConfchgCb {
        group: g("g"),
        members: vec![addr(1, 1001, Reason::Join), addr(2, 1002, Reason::Join)],
        left: vec![addr(3, 1003, Reason::NodeDown)],
        joined: vec![],
    })];
    for n in 1..=2 {
        assert_eq!(callbacks(&c, n, obs[n as usize - 1]), expect, "node {n}");
        assert_eq!(cpg(&c, n).members(&g("h")), vec![]);
    }
}

#[test]
fn after_a_partition_heals_each_side_sees_the_other_side_come_up() {
    let mut c = cluster(3);
    assert!(c.settle(&all(3), 5_000));
    let obs = observers(&mut c, &all(3), "g");
    c.partition(&[&[1, 2], &[3]]);
    assert!(c.settle(&[1, 2], 10_000) && c.settle(&[3], 10_000));
    // Each side changes the group on its own.
    let x = connect(&mut c, 1);
    c.request(1, x, req::JOIN, join_body("g", 11));
    let y = connect(&mut c, 3);
    c.request(3, y, req::JOIN, join_body("g", 33));
    assert!(c.settle(&[1, 2], 10_000) && c.settle(&[3], 10_000));
    for n in 1..=3 {
        c.take_outputs(n);
    }
    c.heal();
    assert!(c.settle(&all(3), 10_000), "no merge");
    let view = cpg(&c, 1).view();
    for n in 2..=3 {
        assert_eq!(cpg(&c, n).view(), view, "node {n} disagrees");
    }
    let final_members = cpg(&c, 1).members(&g("g"));
    assert_eq!(final_members.len(), 5);
    let last_view = |n: u32| {
        callbacks(&c, n, obs[n as usize - 1])
            .into_iter()
            .filter_map(|x| match x {
                Got::Confchg(cc) => Some(cc),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // Nodes 1 and 2 see node 3's processes come up; node 3 sees theirs.
    for n in 1..=2 {
        let v = last_view(n);
        assert_eq!(v.len(), 1, "node {n}: {v:?}");
        assert_eq!(v[0].members, final_members);
        let mut joined = v[0].joined.clone();
        joined.sort();
        assert_eq!(
            joined,
            vec![addr(3, 33, Reason::NodeUp), addr(3, 1003, Reason::NodeUp)]
        );
    }
    let v = last_view(3);
    assert_eq!(v.len(), 1, "node 3: {v:?}");
    assert_eq!(v[0].members, final_members);
    let mut joined = v[0].joined.clone();
    joined.sort();
    assert_eq!(
        joined,
        vec![
            addr(1, 11, Reason::NodeUp),
            addr(1, 1001, Reason::NodeUp),
            addr(2, 1002, Reason::NodeUp)
        ]
    );
    // Oldest first: the three observers (joined before the partition), then the two.
    let pids: Vec<u32> = final_members.iter().map(|a| a.pid).collect();
    assert_eq!(&pids[..3], &[1001, 1002, 1003]);
}

// ----- hand-fed: the exact sync flow -----

fn regular(seq: u64, members: &[u32]) -> ConfChange {
    let members: NodeSet = members.iter().map(|&n| NodeId(n)).collect();
    ConfChange {
        kind: ConfKind::Regular,
        ring_id: RingId {
            rep: members.first().unwrap_or(NodeId(1)),
            seq,
        },
        members: members.clone(),
        left: NodeSet::new(),
        joined: members,
    }
}

fn transitional(seq: u64, members: &[u32]) -> ConfChange {
    ConfChange {
        kind: ConfKind::Transitional,
        ..regular(seq, members)
    }
}

fn registry(n: u32) -> Registry {
    let mut r = Registry::new(NodeId(n));
    crate::register_all(
        &mut r,
        &crate::ServicesConfig::new(crate::LocalNode::new(
            "test",
            std::net::Ipv4Addr::new(10, 0, 0, n as u8).into(),
            1,
        )),
    );
    r
}

/// Takes every multicast of `regs` (in node order) and their other effects.
fn collect(regs: &mut [Registry], out: &mut [Vec<Effect>]) -> Vec<(NodeId, Bytes)> {
    let mut msgs = Vec::new();
    for (i, r) in regs.iter_mut().enumerate() {
        while let Some(e) = r.poll_effect() {
            match e {
                Effect::Mcast { msg, .. } => msgs.push((r.node_id(), msg)),
                other => out[i].push(other),
            }
        }
    }
    msgs
}

fn deliver_all(regs: &mut [Registry], msgs: &[(NodeId, Bytes)]) {
    for (origin, msg) in msgs {
        for r in regs.iter_mut() {
            r.deliver(*origin, msg.clone());
        }
    }
}

fn exchange(regs: &mut [Registry], out: &mut [Vec<Effect>]) {
    loop {
        let msgs = collect(regs, out);
        if msgs.is_empty() {
            return;
        }
        deliver_all(regs, &msgs);
    }
}

#[test]
fn membership_messages_delivered_during_sync_wait_for_activation() {
    let mut regs = vec![registry(1), registry(2)];
    let mut out = vec![Vec::new(), Vec::new()];
    for r in regs.iter_mut() {
        r.confchg(&regular(1, &[1, 2]));
    }
    exchange(&mut regs, &mut out);
    let info = ConnInfo::default();
    regs[0]
        .lib_connect(ConnId(1), ServiceId::CPG, info)
        .unwrap();
    regs[1]
        .lib_connect(ConnId(1), ServiceId::CPG, info)
        .unwrap();
    regs[0].lib_request(Instant(0), ConnId(1), req::JOIN, join_body("g", 1), 9);
    exchange(&mut regs, &mut out);
    // Node 2's join is multicast in ring 1 but delivered after ring 2 is installed.
    regs[1].lib_request(Instant(0), ConnId(1), req::JOIN, join_body("g", 2), 9);
    let join = collect(&mut regs, &mut out);
    out = vec![Vec::new(), Vec::new()];
    for r in regs.iter_mut() {
        r.confchg(&transitional(2, &[1, 2]));
        r.confchg(&regular(2, &[1, 2]));
    }
    let sync_msgs = collect(&mut regs, &mut out);
    deliver_all(&mut regs, &join);
    for (i, r) in regs.iter().enumerate() {
        assert!(r.service::<Cpg>().unwrap().is_syncing());
        assert!(
            out[i].is_empty(),
            "node {}: nothing before activation: {:?}",
            i + 1,
            out[i]
        );
        assert_eq!(r.service::<Cpg>().unwrap().members(&g("g")).len(), 1);
    }
    deliver_all(&mut regs, &sync_msgs);
    exchange(&mut regs, &mut out);
    for (i, r) in regs.iter().enumerate() {
        assert!(r.is_synced());
        let cpg = r.service::<Cpg>().unwrap();
        assert_eq!(cpg.stats().deferred, 1);
        assert_eq!(
            cpg.members(&g("g")),
            vec![addr(1, 1, Reason::Join), addr(2, 2, Reason::Join)]
        );
        let got = decode_for(&out[i], ConnId(1));
        let joined = Got::Confchg(ConfchgCb {
            group: g("g"),
            members: vec![addr(1, 1, Reason::Join), addr(2, 2, Reason::Join)],
            left: vec![],
            joined: vec![addr(2, 2, Reason::Join)],
        });
        if i == 0 {
            assert_eq!(got, vec![joined]);
        } else {
            assert_eq!(
                got,
                vec![Got::Res(req::JOIN, SaError::Ok, Bytes::new()), joined]
            );
        }
    }
}

#[test]
fn abort_applies_held_back_messages_before_the_node_down() {
    let mut regs = vec![registry(1), registry(2), registry(3)];
    let mut out = vec![Vec::new(), Vec::new(), Vec::new()];
    for r in regs.iter_mut() {
        r.confchg(&regular(1, &[1, 2, 3]));
    }
    exchange(&mut regs, &mut out);
    for (i, r) in regs.iter_mut().enumerate() {
        r.lib_connect(ConnId(1), ServiceId::CPG, ConnInfo::default())
            .unwrap();
        r.lib_request(
            Instant(0),
            ConnId(1),
            req::JOIN,
            join_body("g", 10 + i as u32),
            9,
        );
    }
    exchange(&mut regs, &mut out);
    regs[2].lib_request(Instant(0), ConnId(1), req::MCAST, mcast_body(b"late"), 9);
    let late = collect(&mut regs, &mut out);
    out = vec![Vec::new(), Vec::new(), Vec::new()];
    // Ring 2 of all three starts syncing, the message is held back, then node 3 fails.
    let (survivors, _) = regs.split_at_mut(2);
    for r in survivors.iter_mut() {
        r.confchg(&transitional(2, &[1, 2, 3]));
        r.confchg(&regular(2, &[1, 2, 3]));
    }
    let _stale = collect(survivors, &mut out);
    deliver_all(survivors, &late);
    for r in survivors.iter_mut() {
        r.confchg(&transitional(3, &[1, 2]));
        r.confchg(&regular(3, &[1, 2]));
    }
    exchange(survivors, &mut out);
    let members = vec![addr(1, 10, Reason::Join), addr(2, 11, Reason::Join)];
    for (i, r) in survivors.iter().enumerate() {
        assert!(r.is_synced());
        assert_eq!(r.service::<Cpg>().unwrap().members(&g("g")), members);
        assert_eq!(
            callbacks_of(&out[i]),
            vec![
                Got::Deliver(DeliverCb {
                    group: g("g"),
                    nodeid: 3,
                    pid: 12,
                    data: Bytes::from_static(b"late"),
                }),
                Got::Confchg(ConfchgCb {
                    group: g("g"),
                    members: members.clone(),
                    left: vec![addr(3, 12, Reason::NodeDown)],
                    joined: vec![],
                }),
            ],
            "node {}",
            i + 1
        );
    }
}

fn callbacks_of(out: &[Effect]) -> Vec<Got> {
    decode_for(out, ConnId(1))
        .into_iter()
        .filter(|x| !matches!(x, Got::Res(..)))
        .collect()
}

#[test]
fn malformed_executive_messages_are_dropped() {
    let mut r = registry(1);
    r.confchg(&regular(1, &[1]));
    let mut out = vec![Vec::new()];
    exchange(std::slice::from_mut(&mut r), &mut out);
    for func in 0..=4u16 {
        for junk in [&b""[..], &b"\x01"[..], &[0xff; 40][..]] {
            let mut m = BytesMut::new();
            MsgId::new(ServiceId::CPG, func).encode(&mut m);
            m.put_slice(junk);
            r.deliver(NodeId(1), m.freeze());
        }
    }
    assert_eq!(r.service::<Cpg>().unwrap().stats().bad_messages, 15);
    assert_eq!(r.poll_effect(), None);
}
