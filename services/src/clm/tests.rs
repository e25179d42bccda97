//! CLM over real Totem (`ais_exec::testkit`): views and their numbers, track flags,
//! node get, partitions and merges, connections that go away.

use std::cell::Cell;
use std::rc::Rc;

use ais_exec::testkit::TestCluster;
use ais_exec::{check_tables, ConnId, ConnInfo, Effect, Registry};
use ais_proto::clm::{
    cb, req, track, ClusterChange, NodeGetAsyncReq, NodeGetCb, NodeGetReq, NodeGetRes, TrackCb,
    TrackReq, TrackRes,
};
use ais_proto::{Decode, Encode, MsgId, SaError, ServiceId};
use bytes::{BufMut, Bytes, BytesMut};
use totem::Instant;

use super::*;
use crate::ServicesConfig;

/// Boot times handed out to node incarnations, so a restart has a new one.
const FIRST_BOOT: u64 = 1_000_000_000;

/// `n` nodes with every service; node `i` is `node<i>` at 10.0.0.i.
fn cluster(n: u32) -> TestCluster {
    let boots = Rc::new(Cell::new(FIRST_BOOT));
    TestCluster::new(n, move |r| {
        let id = r.node_id().0;
        let boot = boots.get();
        boots.set(boot + 1);
        let local = LocalNode::new(
            &format!("node{id}"),
            std::net::Ipv4Addr::new(10, 0, 0, id as u8).into(),
            boot,
        );
        crate::register_all(r, &ServicesConfig::new(local));
    })
}

fn all(k: u32) -> Vec<u32> {
    (1..=k).collect()
}

fn clm(c: &TestCluster, n: u32) -> &Clm {
    c.registry(n).service::<Clm>().expect("clm registered")
}

fn connect(c: &mut TestCluster, n: u32) -> ConnId {
    c.connect(n, ServiceId::CLM, ConnInfo::default())
        .expect("clm connects")
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Res(u32, SaError, Bytes),
    Track(TrackCb),
    NodeGet(NodeGetCb),
}

fn take(c: &mut TestCluster, n: u32, conn: ConnId) -> Vec<Got> {
    c.take_outputs(n)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Response {
                conn: k,
                id,
                error,
                body,
            } if k == conn => Some(Got::Res(id, error, body)),
            Effect::Dispatch {
                conn: k, id, body, ..
            } if k == conn => Some(match id {
                cb::TRACK => Got::Track(TrackCb::decode_exact(body).expect("track decodes")),
                cb::NODE_GET => {
                    Got::NodeGet(NodeGetCb::decode_exact(body).expect("node get decodes"))
                }
                other => panic!("unknown callback {other}"),
            }),
            _ => None,
        })
        .collect()
}

fn track_req(flags: u8, max_items: Option<u32>) -> Bytes {
    TrackReq { flags, max_items }.to_bytes()
}

fn tracks(got: &[Got]) -> Vec<TrackCb> {
    got.iter()
        .filter_map(|g| match g {
            Got::Track(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// `(node id, change, member)` of every notification.
fn changes(t: &TrackCb) -> Vec<(u32, ClusterChange, bool)> {
    t.view
        .notifications
        .iter()
        .map(|n| (n.node.node_id, n.change, n.node.member))
        .collect()
}

fn settled(k: u32) -> TestCluster {
    let mut c = cluster(k);
    assert!(c.settle(&all(k), 10_000), "{k} nodes never settled");
    c
}

/// Starts tracking on node `n` with `flags`; returns the connection after checking the
/// answer is `Ok`.
fn tracker(c: &mut TestCluster, n: u32, flags: u8) -> ConnId {
    let conn = connect(c, n);
    c.request(n, conn, req::TRACK_START, track_req(flags, None));
    let got = take(c, n, conn);
    assert!(
        matches!(
            got.first(),
            Some(Got::Res(req::TRACK_START, SaError::Ok, _))
        ),
        "{got:?}"
    );
    conn
}

#[test]
fn tables_are_dense() {
    check_tables::<Clm>();
}

#[test]
fn every_node_installs_the_same_view_with_every_record() {
    let c = settled(3);
    let number = clm(&c, 1).view_number();
    assert!(number >= 1);
    for n in 1..=3 {
        let s = clm(&c, n);
        assert_eq!(s.view_number(), number, "node {n}");
        assert_eq!(s.members(), [1, 2, 3], "node {n}");
        for id in 1..=3 {
            let node = s.node(id).unwrap_or_else(|| panic!("node {n} lacks {id}"));
            assert_eq!(node.node_name.as_bytes(), format!("node{id}").as_bytes());
            assert_eq!(node.address.to_string(), format!("10.0.0.{id}"));
            assert!(node.member);
            assert!(node.initial_view_number >= 1 && node.initial_view_number <= number);
        }
        assert_eq!(
            s.node(1),
            clm(&c, 1).node(1),
            "records identical on node {n}"
        );
        assert_eq!(
            s.node(3),
            clm(&c, 1).node(3),
            "records identical on node {n}"
        );
    }
}

#[test]
fn view_number_grows_by_one_per_regular_configuration() {
    let mut c = settled(3);
    let before = clm(&c, 1).view_number();
    c.crash(3);
    assert!(c.settle(&[1, 2], 10_000));
    assert_eq!(clm(&c, 1).view_number(), before + 1);
    assert_eq!(clm(&c, 2).view_number(), before + 1);
    c.restart(3);
    assert!(c.settle(&all(3), 10_000));
    for n in 1..=3 {
        assert_eq!(clm(&c, n).view_number(), before + 2, "node {n}");
    }
    // The restarted incarnation's first view is this one.
    assert_eq!(
        clm(&c, 1).node(3).map(|n| n.initial_view_number),
        Some(before + 2)
    );
    assert_eq!(
        clm(&c, 3).node(1).map(|n| n.initial_view_number),
        clm(&c, 1).node(1).map(|n| n.initial_view_number)
    );
}

#[test]
fn track_current_answers_with_the_whole_view() {
    let mut c = settled(3);
    let conn = connect(&mut c, 2);
    c.request(2, conn, req::TRACK_START, track_req(track::CURRENT, None));
    let got = take(&mut c, 2, conn);
    let [Got::Res(req::TRACK_START, SaError::Ok, body)] = &got[..] else {
        panic!("{got:?}");
    };
    let res = TrackRes::decode_exact(body.clone()).unwrap();
    assert_eq!(res.view.view_number, clm(&c, 2).view_number());
    assert_eq!(res.view.member_ids(), [1, 2, 3]);
    assert_eq!(res.needed, 3);
    assert!(res
        .view
        .notifications
        .iter()
        .all(|n| n.change == ClusterChange::NoChange));
    // CURRENT alone does not track.
    c.crash(3);
    assert!(c.settle(&[1, 2], 10_000));
    assert!(tracks(&take(&mut c, 2, conn)).is_empty());
    assert_eq!(clm(&c, 2).tracking(), 0);
}

#[test]
fn a_buffer_too_small_is_no_space_with_the_needed_count() {
    let mut c = settled(3);
    let conn = connect(&mut c, 1);
    c.request(
        1,
        conn,
        req::TRACK_START,
        track_req(track::CURRENT, Some(2)),
    );
    let got = take(&mut c, 1, conn);
    let [Got::Res(req::TRACK_START, SaError::NoSpace, body)] = &got[..] else {
        panic!("{got:?}");
    };
    let res = TrackRes::decode_exact(body.clone()).unwrap();
    assert_eq!(res.needed, 3);
    assert!(res.view.notifications.is_empty());
    c.request(
        1,
        conn,
        req::TRACK_START,
        track_req(track::CURRENT, Some(3)),
    );
    let got = take(&mut c, 1, conn);
    let [Got::Res(req::TRACK_START, SaError::Ok, body)] = &got[..] else {
        panic!("{got:?}");
    };
    assert_eq!(
        TrackRes::decode_exact(body.clone())
            .unwrap()
            .view
            .member_ids(),
        [1, 2, 3]
    );
    // With a change flag and too small a buffer, tracking does not start either.
    c.request(
        1,
        conn,
        req::TRACK_START,
        track_req(track::CURRENT | track::CHANGES, Some(1)),
    );
    assert!(matches!(
        &take(&mut c, 1, conn)[..],
        [Got::Res(req::TRACK_START, SaError::NoSpace, _)]
    ));
    assert_eq!(clm(&c, 1).tracking(), 0);
}

#[test]
fn bad_flags_are_refused_and_current_before_the_first_view_is_try_again() {
    let mut c = cluster(2);
    let conn = connect(&mut c, 1);
    for flags in [track::CURRENT, track::CURRENT | track::CHANGES] {
        c.request(1, conn, req::TRACK_START, track_req(flags, None));
        assert!(
            matches!(
                &take(&mut c, 1, conn)[..],
                [Got::Res(req::TRACK_START, SaError::TryAgain, _)]
            ),
            "flags {flags:#x}: no current view yet"
        );
    }
    assert_eq!(clm(&c, 1).tracking(), 0);
    assert!(c.settle(&all(2), 10_000));
    for flags in [0, 0x08, track::CHANGES | track::CHANGES_ONLY] {
        c.request(1, conn, req::TRACK_START, track_req(flags, None));
        assert!(
            matches!(
                &take(&mut c, 1, conn)[..],
                [Got::Res(req::TRACK_START, SaError::BadFlags, _)]
            ),
            "flags {flags:#x}"
        );
    }
    c.request(1, conn, req::TRACK_START, Bytes::from_static(b"\x01"));
    assert!(matches!(
        &take(&mut c, 1, conn)[..],
        [Got::Res(req::TRACK_START, SaError::InvalidParam, _)]
    ));
}

#[test]
fn tracking_started_before_the_first_view_gets_it_with_every_member_joined() {
    let mut c = cluster(3);
    let all_changes = connect(&mut c, 1);
    let only = connect(&mut c, 1);
    for (conn, flags) in [(all_changes, track::CHANGES), (only, track::CHANGES_ONLY)] {
        c.request(1, conn, req::TRACK_START, track_req(flags, None));
        let got = take(&mut c, 1, conn);
        let [Got::Res(req::TRACK_START, SaError::Ok, body)] = &got[..] else {
            panic!("flags {flags:#x}: {got:?}");
        };
        assert_eq!(
            TrackRes::decode_exact(body.clone()),
            Ok(TrackRes::default())
        );
    }
    assert_eq!(clm(&c, 1).view_number(), 0, "no view yet");
    assert_eq!(clm(&c, 1).tracking(), 2);
    assert!(c.settle(&all(3), 10_000));
    let number = clm(&c, 1).view_number();
    // Node 1 may have installed a view of its own before the others came: its first
    // view is the first callback, every member joined.
    let outputs = c.take_outputs(1);
    let of = |conn: ConnId| -> Vec<TrackCb> {
        outputs
            .iter()
            .filter_map(|e| match e {
                Effect::Dispatch {
                    conn: k,
                    id: cb::TRACK,
                    body,
                    ..
                } if *k == conn => Some(TrackCb::decode_exact(body.clone()).unwrap()),
                _ => None,
            })
            .collect()
    };
    let got = of(all_changes);
    assert_eq!(got.last().map(|t| t.view.view_number), Some(number));
    assert!(got[0].view.view_number >= 1);
    assert!(
        changes(&got[0])
            .iter()
            .all(|&(_, change, member)| change == ClusterChange::Joined && member),
        "{got:?}"
    );
    assert_eq!(
        of(only).first(),
        got.first(),
        "every node of a first view changed"
    );
}
#[test]
fn track_changes_reports_every_node_with_its_change_at_the_same_view_everywhere() {
    let mut c = settled(3);
    let t1 = tracker(&mut c, 1, track::CHANGES);
    let t2 = tracker(&mut c, 2, track::CHANGES);
    let before = clm(&c, 1).view_number();
    c.crash(3);
    assert!(c.settle(&[1, 2], 10_000));
    let on1 = tracks(&take(&mut c, 1, t1));
    let on2 = tracks(&take(&mut c, 2, t2));
    assert_eq!(on1.len(), 1, "{on1:?}");
    assert_eq!(on1, on2, "both survivors got the same notification");
    let t = &on1[0];
    assert_eq!(t.view.view_number, before + 1);
    assert_eq!(t.number_of_members, 2);
    assert_eq!(
        changes(t),
        [
            (1, ClusterChange::NoChange, true),
            (2, ClusterChange::NoChange, true),
            (3, ClusterChange::Left, false),
        ]
    );
    let old_boot = t.view.notifications[2].node.boot_timestamp;

    c.restart(3);
    assert!(c.settle(&all(3), 10_000));
    let on1 = tracks(&take(&mut c, 1, t1));
    assert_eq!(on1.len(), 1, "{on1:?}");
    let t = &on1[0];
    assert_eq!(t.view.view_number, before + 2);
    assert_eq!(
        changes(t),
        [
            (1, ClusterChange::NoChange, true),
            (2, ClusterChange::NoChange, true),
            (3, ClusterChange::Joined, true),
        ]
    );
    let back = &t.view.notifications[2].node;
    assert!(back.boot_timestamp > old_boot, "a new incarnation");
    assert_eq!(back.initial_view_number, before + 2);
    assert_eq!(tracks(&take(&mut c, 2, t2)), on1);
}

#[test]
fn track_changes_only_lists_just_the_changed_nodes() {
    let mut c = settled(3);
    let t = tracker(&mut c, 1, track::CHANGES_ONLY);
    c.crash(2);
    assert!(c.settle(&[1, 3], 10_000));
    let got = tracks(&take(&mut c, 1, t));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(changes(&got[0]), [(2, ClusterChange::Left, false)]);
    assert_eq!(got[0].number_of_members, 2);
}

#[test]
fn track_current_with_changes_sends_the_view_as_a_callback_then_tracks() {
    let mut c = settled(2);
    let conn = connect(&mut c, 1);
    c.request(
        1,
        conn,
        req::TRACK_START,
        track_req(track::CURRENT | track::CHANGES_ONLY, None),
    );
    let got = take(&mut c, 1, conn);
    assert!(
        matches!(&got[0], Got::Res(req::TRACK_START, SaError::Ok, _)),
        "{got:?}"
    );
    let cbs = tracks(&got);
    assert_eq!(cbs.len(), 1);
    assert_eq!(
        changes(&cbs[0]),
        [
            (1, ClusterChange::NoChange, true),
            (2, ClusterChange::NoChange, true)
        ]
    );
    assert_eq!(clm(&c, 1).tracking(), 1);
}

#[test]
fn track_stop_ends_callbacks_and_a_second_stop_is_not_exist() {
    let mut c = settled(3);
    let t = tracker(&mut c, 1, track::CHANGES);
    c.request(1, t, req::TRACK_STOP, Bytes::new());
    assert!(matches!(
        &take(&mut c, 1, t)[..],
        [Got::Res(req::TRACK_STOP, SaError::Ok, _)]
    ));
    c.crash(3);
    assert!(c.settle(&[1, 2], 10_000));
    assert!(tracks(&take(&mut c, 1, t)).is_empty());
    c.request(1, t, req::TRACK_STOP, Bytes::new());
    assert!(matches!(
        &take(&mut c, 1, t)[..],
        [Got::Res(req::TRACK_STOP, SaError::NotExist, _)]
    ));
}

#[test]
fn a_closed_connection_stops_tracking_and_its_waiting_node_gets() {
    let mut c = cluster(2);
    let waiting = connect(&mut c, 1);
    let get = NodeGetReq {
        node_id: 2,
        timeout_ns: 60_000_000_000,
    };
    c.request(1, waiting, req::NODE_GET, get.to_bytes());
    assert_eq!(clm(&c, 1).parked.len(), 1);
    c.disconnect(1, waiting);
    assert!(clm(&c, 1).parked.is_empty());
    assert!(c.registry(1).poll_timeout().is_none(), "its timer is gone");
    assert!(c.settle(&all(2), 10_000));
    let t = tracker(&mut c, 1, track::CHANGES);
    assert_eq!(clm(&c, 1).tracking(), 1);
    c.disconnect(1, t);
    assert_eq!(clm(&c, 1).tracking(), 0);
    c.crash(2);
    assert!(c.settle(&[1], 10_000));
    assert!(take(&mut c, 1, t).is_empty());
}

#[test]
fn node_get_answers_for_the_local_node_and_members_and_refuses_unknown_ids() {
    let mut c = settled(3);
    let conn = connect(&mut c, 2);
    for (asked, expect) in [(LOCAL_NODE_ID, 2), (2, 2), (3, 3)] {
        c.request(
            2,
            conn,
            req::NODE_GET,
            NodeGetReq {
                node_id: asked,
                timeout_ns: 1_000_000,
            }
            .to_bytes(),
        );
        let got = take(&mut c, 2, conn);
        let [Got::Res(req::NODE_GET, SaError::Ok, body)] = &got[..] else {
            panic!("{got:?}");
        };
        let node = NodeGetRes::decode_exact(body.clone()).unwrap().node;
        assert_eq!(node.node_id, expect);
        assert_eq!(
            node.node_name.as_bytes(),
            format!("node{expect}").as_bytes()
        );
        assert!(node.member);
    }
    c.request(
        2,
        conn,
        req::NODE_GET,
        NodeGetReq {
            node_id: 77,
            timeout_ns: 1_000_000,
        }
        .to_bytes(),
    );
    assert!(matches!(
        &take(&mut c, 2, conn)[..],
        [Got::Res(req::NODE_GET, SaError::InvalidParam, _)]
    ));
    // A node that left is still known, no longer a member.
    c.crash(3);
    assert!(c.settle(&[1, 2], 10_000));
    c.request(
        2,
        conn,
        req::NODE_GET,
        NodeGetReq {
            node_id: 3,
            timeout_ns: 1_000_000,
        }
        .to_bytes(),
    );
    let got = take(&mut c, 2, conn);
    let [Got::Res(req::NODE_GET, SaError::Ok, body)] = &got[..] else {
        panic!("{got:?}");
    };
    assert!(!NodeGetRes::decode_exact(body.clone()).unwrap().node.member);
}

#[test]
fn node_get_async_echoes_the_invocation_and_gives_invalid_param_for_unknown_nodes() {
    let mut c = settled(2);
    let conn = connect(&mut c, 1);
    for (invocation, node_id) in [(41u64, 2u32), (42, 99)] {
        c.request(
            1,
            conn,
            req::NODE_GET_ASYNC,
            NodeGetAsyncReq {
                invocation,
                node_id,
            }
            .to_bytes(),
        );
    }
    let got = take(&mut c, 1, conn);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(matches!(
        got[0],
        Got::Res(req::NODE_GET_ASYNC, SaError::Ok, _)
    ));
    let Got::NodeGet(first) = &got[1] else {
        panic!("{got:?}")
    };
    assert_eq!(first.invocation, 41);
    assert_eq!(first.result.as_ref().map(|n| n.node_id), Ok(2));
    assert_eq!(
        got[3],
        Got::NodeGet(NodeGetCb {
            invocation: 42,
            result: Err(SaError::InvalidParam)
        })
    );
}

#[test]
fn node_get_before_the_first_view_waits_for_it_or_times_out() {
    let mut c = cluster(2);
    let patient = connect(&mut c, 1);
    let hasty = connect(&mut c, 1);
    let ask = |timeout_ns| {
        NodeGetReq {
            node_id: 2,
            timeout_ns,
        }
        .to_bytes()
    };
    c.request(1, patient, req::NODE_GET, ask(30_000_000_000));
    c.request(1, hasty, req::NODE_GET, ask(1_000));
    assert!(c.node(1).outputs.is_empty(), "no view yet");
    assert!(c.settle(&all(2), 10_000));
    // One output list for both connections: the timeout came first, at 1 µs, and the
    // patient request was answered when the first view was installed.
    let outputs = c.take_outputs(1);
    let answers: Vec<(ConnId, SaError, Bytes)> = outputs
        .into_iter()
        .filter_map(|e| match e {
            Effect::Response {
                conn,
                id: req::NODE_GET,
                error,
                body,
            } => Some((conn, error, body)),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0], (hasty, SaError::Timeout, Bytes::new()));
    assert_eq!((answers[1].0, answers[1].1), (patient, SaError::Ok));
    let node = NodeGetRes::decode_exact(answers[1].2.clone()).unwrap().node;
    assert_eq!(node.node_id, 2);
    assert!(node.member);
}

/// One node's registry with every service and no Totem: it never has a view.
fn no_view() -> (Registry, ConnId) {
    let mut r = Registry::new(NodeId(1));
    let local = LocalNode::new("node1", std::net::Ipv4Addr::new(10, 0, 0, 1).into(), 7);
    crate::register_all(&mut r, &ServicesConfig::new(local));
    let conn = ConnId(1);
    r.lib_connect(conn, ServiceId::CLM, ConnInfo::default())
        .expect("clm connects");
    (r, conn)
}

fn effects(r: &mut Registry) -> Vec<Effect> {
    std::iter::from_fn(|| r.poll_effect()).collect()
}

fn node_get(node_id: u32, timeout_ns: u64) -> Bytes {
    NodeGetReq {
        node_id,
        timeout_ns,
    }
    .to_bytes()
}

fn node_get_async(invocation: u64, node_id: u32) -> Bytes {
    NodeGetAsyncReq {
        invocation,
        node_id,
    }
    .to_bytes()
}

fn response_of(effects: &[Effect]) -> Vec<(u32, SaError)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Response { id, error, .. } => Some((*id, *error)),
            _ => None,
        })
        .collect()
}

fn node_get_callbacks(effects: &[Effect]) -> Vec<NodeGetCb> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch {
                id: cb::NODE_GET,
                body,
                ..
            } => Some(NodeGetCb::decode_exact(body.clone()).expect("callback decodes")),
            _ => None,
        })
        .collect()
}

#[test]
fn before_the_first_view_a_zero_timeout_node_get_is_timeout_and_others_wait_their_timeout() {
    let (mut r, conn) = no_view();
    let t0 = Instant::from_millis(1);
    r.lib_request(t0, conn, req::NODE_GET, node_get(2, 0), 0);
    assert_eq!(
        response_of(&effects(&mut r)),
        [(req::NODE_GET, SaError::Timeout)],
        "timeout 0: cannot be answered in time (not InvalidParam: node 2 may exist)"
    );
    r.lib_request(t0, conn, req::NODE_GET, node_get(2, 5_000_000), 0);
    assert!(effects(&mut r).is_empty(), "waits");
    r.handle_timeout(Instant::from_millis(5));
    assert!(
        effects(&mut r).is_empty(),
        "not yet: 5 ms after the request"
    );
    r.handle_timeout(Instant::from_millis(6));
    assert_eq!(
        response_of(&effects(&mut r)),
        [(req::NODE_GET, SaError::Timeout)]
    );
    // The local node is known before any view.
    r.lib_request(t0, conn, req::NODE_GET, node_get(LOCAL_NODE_ID, 0), 0);
    let got = effects(&mut r);
    let [Effect::Response {
        id: req::NODE_GET,
        error: SaError::Ok,
        body,
        ..
    }] = &got[..]
    else {
        panic!("{got:?}")
    };
    let node = NodeGetRes::decode_exact(body.clone()).unwrap().node;
    assert_eq!(
        (node.node_id, node.member, node.boot_timestamp),
        (1, false, 7)
    );
}

#[test]
fn node_get_async_before_the_first_view_waits_then_its_callback_says_timeout() {
    let (mut r, conn) = no_view();
    let t0 = Instant::from_millis(1);
    r.lib_request(t0, conn, req::NODE_GET_ASYNC, node_get_async(9, 2), 0);
    let got = effects(&mut r);
    assert_eq!(response_of(&got), [(req::NODE_GET_ASYNC, SaError::Ok)]);
    assert!(
        node_get_callbacks(&got).is_empty(),
        "no answer before the view"
    );
    r.handle_timeout(t0.plus_micros(NODE_GET_ASYNC_WAIT_US - 1));
    assert!(effects(&mut r).is_empty());
    r.handle_timeout(t0.plus_micros(NODE_GET_ASYNC_WAIT_US));
    assert_eq!(
        node_get_callbacks(&effects(&mut r)),
        [NodeGetCb {
            invocation: 9,
            result: Err(SaError::Timeout)
        }]
    );
    // The local node answers at once.
    r.lib_request(
        t0,
        conn,
        req::NODE_GET_ASYNC,
        node_get_async(10, LOCAL_NODE_ID),
        0,
    );
    let cbs = node_get_callbacks(&effects(&mut r));
    assert_eq!(cbs.len(), 1);
    assert_eq!(cbs[0].invocation, 10);
    assert_eq!(cbs[0].result.as_ref().map(|n| n.node_id), Ok(1));
}

#[test]
fn node_get_async_before_the_first_view_is_answered_by_it() {
    let mut c = cluster(2);
    let conn = connect(&mut c, 1);
    c.request(1, conn, req::NODE_GET_ASYNC, node_get_async(5, 2));
    c.request(1, conn, req::NODE_GET_ASYNC, node_get_async(6, 77));
    let got = take(&mut c, 1, conn);
    assert_eq!(
        got,
        [
            Got::Res(req::NODE_GET_ASYNC, SaError::Ok, Bytes::new()),
            Got::Res(req::NODE_GET_ASYNC, SaError::Ok, Bytes::new())
        ],
        "accepted, answered later"
    );
    // The first view may be node 1 alone; node 2 is known once a view holds it.
    assert!(c.settle(&all(2), 10_000));
    let cbs: Vec<NodeGetCb> = take(&mut c, 1, conn)
        .into_iter()
        .filter_map(|g| match g {
            Got::NodeGet(cb) => Some(cb),
            _ => None,
        })
        .collect();
    assert_eq!(cbs.len(), 2, "{cbs:?}");
    assert_eq!(cbs[1].invocation, 6);
    assert_eq!(cbs[1].result, Err(SaError::InvalidParam), "77 is no node");
    assert_eq!(cbs[0].invocation, 5);
    match &cbs[0].result {
        Ok(node) => assert_eq!(node.node_id, 2),
        // Answered by a lone first view of node 1, which did not know node 2 yet.
        Err(e) => assert_eq!(*e, SaError::InvalidParam),
    }
    assert!(clm(&c, 1).parked.is_empty());
}

#[test]
fn waiting_node_gets_are_bounded_and_past_the_bound_try_again() {
    let (mut r, conn) = no_view();
    let other = ConnId(2);
    r.lib_connect(other, ServiceId::CLM, ConnInfo::default())
        .unwrap();
    let t0 = Instant::from_millis(1);
    for k in 0..PARKED_MAX as u64 {
        // Every waiting request times out at its own moment, the first one first.
        r.lib_request(t0, conn, req::NODE_GET, node_get(2, 1_000_000 * (k + 1)), 0);
    }
    assert!(effects(&mut r).is_empty(), "all wait");
    r.lib_request(t0, other, req::NODE_GET, node_get(2, 1_000_000), 0);
    assert_eq!(
        response_of(&effects(&mut r)),
        [(req::NODE_GET, SaError::TryAgain)]
    );
    r.lib_request(t0, other, req::NODE_GET_ASYNC, node_get_async(3, 2), 0);
    let got = effects(&mut r);
    assert_eq!(
        response_of(&got),
        [(req::NODE_GET_ASYNC, SaError::TryAgain)]
    );
    assert!(node_get_callbacks(&got).is_empty(), "refused: no callback");
    // One times out: room for one more.
    r.handle_timeout(t0.plus_micros(1_000));
    assert_eq!(
        response_of(&effects(&mut r)),
        [(req::NODE_GET, SaError::Timeout)]
    );
    r.lib_request(t0, other, req::NODE_GET_ASYNC, node_get_async(4, 2), 0);
    assert_eq!(
        response_of(&effects(&mut r)),
        [(req::NODE_GET_ASYNC, SaError::Ok)]
    );
    // A connection that closes frees what it parked.
    r.lib_disconnect(conn);
    r.lib_request(t0, other, req::NODE_GET, node_get(2, 1_000_000), 0);
    assert!(effects(&mut r).is_empty(), "waits again");
    assert_eq!(r.service::<Clm>().unwrap().parked.len(), 2);
}

#[test]
fn a_member_restarting_before_the_others_notice_is_reconfigured() {
    let mut c = settled(3);
    let before = clm(&c, 1).view_number();
    let old = clm(&c, 1).node(3).expect("node 3 known");
    let t1 = tracker(&mut c, 1, track::CHANGES);
    let t2 = tracker(&mut c, 2, track::CHANGES_ONLY);
    // Node 3 crashes and is back at once: its new incarnation's join reaches the
    // others before they miss the token, so the next ring has the same members.
    c.crash(3);
    c.restart(3);
    assert!(c.settle(&all(3), 10_000));
    let on1 = tracks(&take(&mut c, 1, t1));
    assert_eq!(on1.len(), 1, "one new view, node 3 never left it: {on1:?}");
    let t = &on1[0];
    assert_eq!(t.view.view_number, before + 1);
    assert_eq!(
        changes(t),
        [
            (1, ClusterChange::NoChange, true),
            (2, ClusterChange::NoChange, true),
            (3, ClusterChange::Reconfigured, true),
        ]
    );
    let new = &t.view.notifications[2].node;
    assert!(new.boot_timestamp > old.boot_timestamp, "a new incarnation");
    assert_eq!(new.node_name, old.node_name);
    assert_eq!(clm(&c, 2).node(3).as_ref(), Some(new));
    let on2 = tracks(&take(&mut c, 2, t2));
    assert_eq!(on2.len(), 1, "{on2:?}");
    assert_eq!(changes(&on2[0]), [(3, ClusterChange::Reconfigured, true)]);
    // The new incarnation's first view holds the others: its initial view.
    assert_eq!(new.initial_view_number, before + 1);
    assert_eq!(
        clm(&c, 3).node(3).map(|n| n.initial_view_number),
        Some(before + 1)
    );
    assert_eq!(
        clm(&c, 3).node(1),
        clm(&c, 1).node(1),
        "one record everywhere"
    );
}

#[test]
fn a_restarted_node_alone_at_first_takes_the_merged_view_as_its_initial_view() {
    let mut c = settled(3);
    let initial_1 = clm(&c, 1).node(1).unwrap().initial_view_number;
    c.crash(3);
    assert!(c.settle(&[1, 2], 10_000));
    let t1 = tracker(&mut c, 1, track::CHANGES_ONLY);
    // Node 3 comes back cut off from the others: it forms views of its own first.
    c.partition(&[&[1, 2]]);
    c.restart(3);
    assert!(c.settle(&[3], 10_000));
    let alone = clm(&c, 3).view_number();
    assert!(alone >= 1);
    assert_eq!(clm(&c, 3).members(), [3]);
    // Alone, its first lone view is the cluster as far as it knows.
    let first_alone = clm(&c, 3).node(3).unwrap().initial_view_number;
    assert!(first_alone >= 1 && first_alone <= alone);
    c.heal();
    assert!(c.settle(&all(3), 20_000));
    let merged = clm(&c, 1).view_number();
    let joined = tracks(&take(&mut c, 1, t1));
    let t = joined.last().expect("node 1 saw node 3 join");
    assert_eq!(t.view.view_number, merged);
    assert_eq!(changes(t), [(3, ClusterChange::Joined, true)]);
    for n in 1..=3 {
        let s = clm(&c, n);
        assert_eq!(s.view_number(), merged, "node {n}");
        assert_eq!(
            s.node(3).map(|r| r.initial_view_number),
            Some(merged),
            "node {n}: node 3 joined the cluster in the merged view"
        );
        assert_eq!(
            s.node(1).map(|r| r.initial_view_number),
            Some(initial_1),
            "node {n}: node 1's initial view does not move"
        );
    }
    assert_eq!(t.view.notifications[0].node.initial_view_number, merged);
}

#[test]
fn partitions_install_their_own_views_and_the_merge_one_above_both() {
    let mut c = settled(4);
    let base = clm(&c, 1).view_number();
    let t1 = tracker(&mut c, 1, track::CHANGES_ONLY);
    let t4 = tracker(&mut c, 4, track::CHANGES_ONLY);
    c.partition(&[&[1, 2, 3], &[4]]);
    assert!(c.settle(&[1, 2, 3], 10_000));
    assert!(c.settle(&[4], 10_000));
    for n in 1..=3 {
        assert_eq!(clm(&c, n).view_number(), base + 1);
        assert_eq!(clm(&c, n).members(), [1, 2, 3]);
    }
    assert_eq!(clm(&c, 4).view_number(), base + 1);
    assert_eq!(clm(&c, 4).members(), [4]);
    // The small side has a second change before the merge: its number runs ahead.
    c.partition(&[&[1, 2], &[3], &[4]]);
    assert!(c.settle(&[1, 2], 10_000) && c.settle(&[3], 10_000));
    assert_eq!(clm(&c, 1).view_number(), base + 2);
    let _ = take(&mut c, 1, t1);
    let _ = take(&mut c, 4, t4);
    c.heal();
    assert!(c.settle(&all(4), 20_000));
    let merged = clm(&c, 1).view_number();
    assert_eq!(merged, base + 3, "one above the highest side");
    for n in 1..=4 {
        assert_eq!(clm(&c, n).view_number(), merged, "node {n}");
        assert_eq!(clm(&c, n).members(), [1, 2, 3, 4], "node {n}");
    }
    let on1 = tracks(&take(&mut c, 1, t1));
    let on4 = tracks(&take(&mut c, 4, t4));
    assert_eq!(
        on1.last().map(changes),
        Some(vec![
            (3, ClusterChange::Joined, true),
            (4, ClusterChange::Joined, true)
        ])
    );
    assert_eq!(
        on4.last().map(changes),
        Some(vec![
            (1, ClusterChange::Joined, true),
            (2, ClusterChange::Joined, true),
            (3, ClusterChange::Joined, true)
        ])
    );
    assert_eq!(on1.last().map(|t| t.view.view_number), Some(merged));
    assert_eq!(on4.last().map(|t| t.view.view_number), Some(merged));
}

#[test]
fn malformed_and_stale_announcements_are_dropped() {
    let mut c = settled(2);
    let ring = c.registry(1).ring_id().expect("a ring");
    let mut bad = BytesMut::new();
    MsgId::new(ServiceId::CLM, exec::ANNOUNCE).encode(&mut bad);
    bad.put_u32(7);
    let stale = AnnounceMsg {
        ring: RingId {
            rep: ring.rep,
            seq: ring.seq + 1000,
        },
        floor: 1_000_000,
        initial_view: 0,
        boot_time_ns: 1,
        address: NodeAddress::from_ip([10, 0, 0, 2].into()),
        name: SaName::new(&b"intruder"[..]).unwrap(),
    };
    let mut stale_msg = BytesMut::new();
    MsgId::new(ServiceId::CLM, exec::ANNOUNCE).encode(&mut stale_msg);
    stale.encode(&mut stale_msg);
    let before = clm(&c, 1).view_number();
    let r = &mut c.node_mut(1).registry;
    r.deliver(NodeId(2), bad.freeze());
    r.deliver(NodeId(2), stale_msg.freeze());
    let s = clm(&c, 1);
    assert_eq!(s.stats().bad_messages, 1);
    assert_eq!(s.stats().stale_announces, 1);
    assert_eq!(s.seen_floor, before, "a stale floor is not taken");
    assert_eq!(s.node(2).unwrap().node_name.as_bytes(), b"node2");
}

#[test]
fn a_peer_floor_of_u64_max_cannot_overflow_the_view_number() {
    let mut c = settled(2);
    let ring = c.registry(1).ring_id().expect("a ring");
    let forged = AnnounceMsg {
        ring,
        floor: u64::MAX,
        initial_view: u64::MAX,
        boot_time_ns: u64::MAX,
        address: NodeAddress::from_ip([10, 0, 0, 2].into()),
        name: SaName::new(&b"node2"[..]).unwrap(),
    };
    let mut msg = BytesMut::new();
    MsgId::new(ServiceId::CLM, exec::ANNOUNCE).encode(&mut msg);
    forged.encode(&mut msg);
    c.node_mut(1).registry.deliver(NodeId(2), msg.freeze());
    assert_eq!(clm(&c, 1).seen_floor, u64::MAX, "saturated, not wrapped");
    // Node 1's next view is numbered from that floor: it stays at the top.
    c.crash(2);
    assert!(c.settle(&[1], 10_000));
    assert_eq!(clm(&c, 1).view_number(), u64::MAX);
    assert_eq!(clm(&c, 1).members(), [1]);
}
