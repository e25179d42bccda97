//! The registry and the sync framework exercised with a toy replicated service: a map
//! from `u32` keys to `u64` values that every node holds, set through Totem, merged by
//! the sync framework after configuration changes.

use std::collections::BTreeMap;

use ais_proto::{MsgId, SaError, SaVersion, ServiceId};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use totem::{ConfChange, ConfKind, Instant, NodeId, NodeSet, RingId};

use crate::testkit::TestCluster;
use crate::*;

const KV: ServiceId = ServiceId(40);

mod req {
    pub const SET: u32 = 0;
    pub const GET: u32 = 1;
    pub const PING: u32 = 2;
    pub const TIMER_ADD: u32 = 3;
    pub const TIMER_DEL: u32 = 4;
}

mod exec {
    pub const SET: u16 = 0;
    pub const STATE: u16 = 1;
}

/// value and stamp; sync merges by the larger (stamp, value).
type Entry = (u64, u64);

#[derive(Default)]
struct Kv {
    map: BTreeMap<u32, Entry>,
    /// From a regular configuration until activation (or abort), SETs wait here, so that
    /// they apply to the merged state, alike on every node.
    syncing: bool,
    deferred: Vec<(NodeId, Bytes)>,
    snapshot: Vec<(u32, Entry)>,
    cursor: usize,
    received: Vec<(u32, Entry)>,
    activations: u32,
    aborts: u32,
    time_seen_in_exec: bool,
    time_seen_in_sync: bool,
    timers: Vec<TimerId>,
    fired: Vec<(u64, Option<Instant>)>,
    lib_inits: u32,
    lib_exits: u32,
}

fn ring_bytes(out: &mut BytesMut, ring: Option<RingId>) {
    let ring = ring.unwrap_or(RingId {
        rep: NodeId(0),
        seq: 0,
    });
    out.put_u32(ring.rep.0);
    out.put_u64(ring.seq);
}

impl Kv {
    fn lib_set(&mut self, api: &mut Api, conn: ConnId, mut body: Bytes) {
        if body.len() != 12 {
            api.response(conn, req::SET, SaError::InvalidParam, Bytes::new());
            return;
        }
        let key = body.get_u32();
        let value = body.get_u64();
        let mut m = BytesMut::new();
        m.put_u64(conn.0);
        m.put_u32(key);
        m.put_u64(value);
        if let Err(e) = api.mcast(exec::SET, &m) {
            api.response(conn, req::SET, e, Bytes::new());
        }
    }

    fn lib_get(&mut self, api: &mut Api, conn: ConnId, mut body: Bytes) {
        if body.len() != 4 {
            api.response(conn, req::GET, SaError::InvalidParam, Bytes::new());
            return;
        }
        match self.map.get(&body.get_u32()) {
            Some(&(v, _)) => api.response(
                conn,
                req::GET,
                SaError::Ok,
                Bytes::copy_from_slice(&v.to_be_bytes()),
            ),
            None => api.response(conn, req::GET, SaError::NotExist, Bytes::new()),
        }
    }

    fn lib_ping(&mut self, api: &mut Api, conn: ConnId, _body: Bytes) {
        let error = if api.now().is_some() {
            SaError::Ok
        } else {
            SaError::Library
        };
        api.response(
            conn,
            req::PING,
            error,
            Bytes::copy_from_slice(&api.node_id().0.to_be_bytes()),
        );
    }

    fn lib_timer_add(&mut self, api: &mut Api, conn: ConnId, mut body: Bytes) {
        if body.len() != 8 {
            api.response(conn, req::TIMER_ADD, SaError::InvalidParam, Bytes::new());
            return;
        }
        let after = body.get_u64();
        let t = api.timer_add(after, after);
        self.timers.push(t);
        api.response(conn, req::TIMER_ADD, SaError::Ok, Bytes::new());
    }

    fn lib_timer_del(&mut self, api: &mut Api, conn: ConnId, _body: Bytes) {
        let ok = self.timers.pop().is_some_and(|t| api.timer_del(t));
        let error = if ok { SaError::Ok } else { SaError::NotExist };
        api.response(conn, req::TIMER_DEL, error, Bytes::new());
    }

    fn exec_set(&mut self, api: &mut Api, origin: NodeId, body: Bytes) {
        self.time_seen_in_exec |= api.now().is_some();
        if self.syncing {
            self.deferred.push((origin, body));
            return;
        }
        self.apply_set(api, origin, body);
    }

    fn apply_set(&mut self, api: &mut Api, origin: NodeId, mut body: Bytes) {
        if body.len() != 20 {
            return;
        }
        let conn = ConnId(body.get_u64());
        let key = body.get_u32();
        let value = body.get_u64();
        let stamp = self.map.get(&key).map_or(0, |e| e.1) + 1;
        self.map.insert(key, (value, stamp));
        if origin == api.node_id() {
            api.response(conn, req::SET, SaError::Ok, Bytes::new());
        }
    }

    fn exec_state(&mut self, api: &mut Api, _origin: NodeId, mut body: Bytes) {
        if body.len() != 12 + 20 || !self.syncing {
            return;
        }
        let rep = NodeId(body.get_u32());
        let seq = body.get_u64();
        if api.ring_id() != Some(RingId { rep, seq }) {
            return;
        }
        let key = body.get_u32();
        let value = body.get_u64();
        let stamp = body.get_u64();
        self.received.push((key, (value, stamp)));
    }

    fn replay(&mut self, api: &mut Api) {
        self.syncing = false;
        for (origin, body) in std::mem::take(&mut self.deferred) {
            self.apply_set(api, origin, body);
        }
    }
}

impl Service for Kv {
    const ID: ServiceId = KV;
    const NAME: &'static str = "kv";
    const VERSION: SaVersion = SaVersion::B_01_01;
    const LIB: &'static [LibHandler<Self>] = &[
        LibHandler {
            id: req::SET,
            flow_control: true,
            needs_sync: true,
            handler: Kv::lib_set,
        },
        LibHandler {
            id: req::GET,
            flow_control: false,
            needs_sync: true,
            handler: Kv::lib_get,
        },
        LibHandler {
            id: req::PING,
            flow_control: false,
            needs_sync: false,
            handler: Kv::lib_ping,
        },
        LibHandler {
            id: req::TIMER_ADD,
            flow_control: false,
            needs_sync: false,
            handler: Kv::lib_timer_add,
        },
        LibHandler {
            id: req::TIMER_DEL,
            flow_control: false,
            needs_sync: false,
            handler: Kv::lib_timer_del,
        },
    ];
    const EXEC: &'static [ExecHandler<Self>] = &[
        ExecHandler {
            id: exec::SET,
            handler: Kv::exec_set,
        },
        ExecHandler {
            id: exec::STATE,
            handler: Kv::exec_state,
        },
    ];

    fn lib_init(&mut self, _api: &mut Api, _conn: ConnId, info: ConnInfo) -> Result<(), SaError> {
        if info.uid == 666 {
            return Err(SaError::Access);
        }
        self.lib_inits += 1;
        Ok(())
    }

    fn lib_exit(&mut self, _api: &mut Api, _conn: ConnId) {
        self.lib_exits += 1;
    }

    fn confchg(&mut self, api: &mut Api, change: &ConfChange) {
        self.time_seen_in_sync |= api.now().is_some();
        if change.kind == ConfKind::Regular {
            self.syncing = true;
            self.received.clear();
        }
    }

    fn sync_init(&mut self, api: &mut Api) {
        self.time_seen_in_sync |= api.now().is_some();
        self.snapshot = self.map.iter().map(|(&k, &e)| (k, e)).collect();
        self.cursor = 0;
    }

    /// One entry per call, to exercise `Continue`.
    fn sync_process(&mut self, api: &mut Api) -> SyncProgress {
        let Some(&(key, (value, stamp))) = self.snapshot.get(self.cursor) else {
            return SyncProgress::Done;
        };
        let mut m = BytesMut::new();
        ring_bytes(&mut m, api.ring_id());
        m.put_u32(key);
        m.put_u64(value);
        m.put_u64(stamp);
        let _ = api.mcast(exec::STATE, &m);
        self.cursor += 1;
        if self.cursor == self.snapshot.len() {
            SyncProgress::Done
        } else {
            SyncProgress::Continue
        }
    }

    fn sync_activate(&mut self, api: &mut Api) {
        for (key, e) in std::mem::take(&mut self.received) {
            let slot = self.map.entry(key).or_insert(e);
            if (e.1, e.0) > (slot.1, slot.0) {
                *slot = e;
            }
        }
        self.activations += 1;
        self.replay(api);
    }

    fn sync_abort(&mut self, api: &mut Api) {
        self.received.clear();
        self.aborts += 1;
        self.replay(api);
    }

    fn timer(&mut self, api: &mut Api, data: u64) {
        self.fired.push((data, api.now()));
    }
}

/// A service whose library table is not dense.
struct Sparse;

impl Sparse {
    fn nop(&mut self, _: &mut Api, _: ConnId, _: Bytes) {}
}

impl Service for Sparse {
    const ID: ServiceId = ServiceId(41);
    const NAME: &'static str = "sparse";
    const VERSION: SaVersion = SaVersion::B_01_01;
    const LIB: &'static [LibHandler<Self>] = &[
        LibHandler {
            id: 0,
            flow_control: false,
            needs_sync: false,
            handler: Sparse::nop,
        },
        LibHandler {
            id: 2,
            flow_control: false,
            needs_sync: false,
            handler: Sparse::nop,
        },
    ];
    const EXEC: &'static [ExecHandler<Self>] = &[];
}

fn set_body(key: u32, value: u64) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(key);
    b.put_u64(value);
    b.freeze()
}

fn responses(outputs: &[Effect], conn: ConnId) -> Vec<(u32, SaError)> {
    outputs
        .iter()
        .filter_map(|e| match e {
            Effect::Response {
                conn: c, id, error, ..
            } if *c == conn => Some((*id, *error)),
            _ => None,
        })
        .collect()
}

fn kv(c: &TestCluster, n: u32) -> &Kv {
    c.registry(n).service::<Kv>().expect("kv registered")
}

fn kv_cluster(n: u32) -> TestCluster {
    TestCluster::new(n, |r| r.register(Kv::default()))
}

fn all(k: u32) -> Vec<u32> {
    (1..=k).collect()
}

// ----- tables -----

#[test]
fn toy_service_tables_are_dense() {
    check_tables::<Kv>();
}

#[test]
#[should_panic(expected = "tables must be dense")]
fn sparse_tables_are_refused() {
    check_tables::<Sparse>();
}

#[test]
#[should_panic(expected = "tables must be dense")]
fn registering_sparse_tables_panics() {
    Registry::new(NodeId(1)).register(Sparse);
}

// ----- the registry alone, fed by hand -----

fn regular(ring_seq: u64, members: &[u32]) -> ConfChange {
    let members: NodeSet = members.iter().map(|&n| NodeId(n)).collect();
    ConfChange {
        kind: ConfKind::Regular,
        ring_id: RingId {
            rep: members.first().unwrap_or(NodeId(1)),
            seq: ring_seq,
        },
        members: members.clone(),
        left: NodeSet::new(),
        joined: members,
    }
}

fn transitional(ring_seq: u64, members: &[u32]) -> ConfChange {
    ConfChange {
        kind: ConfKind::Transitional,
        ..regular(ring_seq, members)
    }
}

/// A perfect total order between hand-fed registries: each round takes every multicast
/// each registry made (node order) and delivers it to all of them, until quiet.
/// Non-multicast effects are appended to `out[i]`.
fn exchange(regs: &mut [Registry], out: &mut [Vec<Effect>]) {
    loop {
        let mut msgs = Vec::new();
        for (i, r) in regs.iter_mut().enumerate() {
            while let Some(e) = r.poll_effect() {
                match e {
                    Effect::Mcast { msg, .. } => msgs.push((r.node_id(), msg)),
                    other => out[i].push(other),
                }
            }
        }
        if msgs.is_empty() {
            return;
        }
        for (origin, msg) in msgs {
            for r in regs.iter_mut() {
                r.deliver(origin, msg.clone());
            }
        }
    }
}

#[test]
fn unknown_service_connects_with_not_exist_and_lib_init_can_refuse() {
    let mut r = Registry::new(NodeId(1));
    r.register(Kv::default());
    assert_eq!(r.service_version(KV), Some(SaVersion::B_01_01));
    assert_eq!(r.service_version(ServiceId::CPG), None);
    let info = ConnInfo {
        pid: 1,
        uid: 0,
        gid: 0,
    };
    assert_eq!(
        r.lib_connect(ConnId(1), ServiceId(99), info),
        Err(SaError::NotExist)
    );
    assert_eq!(
        r.lib_connect(ConnId(2), KV, ConnInfo { uid: 666, ..info }),
        Err(SaError::Access)
    );
    assert_eq!(r.conn_service(ConnId(2)), None);
    assert_eq!(r.lib_connect(ConnId(3), KV, info), Ok(()));
    assert_eq!(r.lib_connect(ConnId(3), KV, info), Err(SaError::Exist));
    assert_eq!(r.conn_service(ConnId(3)), Some(KV));
    r.lib_disconnect(ConnId(3));
    r.lib_disconnect(ConnId(3));
    let k = r.service::<Kv>().unwrap();
    assert_eq!((k.lib_inits, k.lib_exits), (1, 1));
}

#[test]
fn unknown_request_id_answers_invalid_param_without_a_handler() {
    let mut r = Registry::new(NodeId(1));
    r.register(Kv::default());
    r.lib_connect(ConnId(1), KV, ConnInfo::default()).unwrap();
    r.lib_request(Instant(5), ConnId(1), 99, Bytes::new(), 10);
    r.lib_request(Instant(5), ConnId(1), u32::MAX, Bytes::new(), 10);
    let mut effects = Vec::new();
    while let Some(e) = r.poll_effect() {
        effects.push(e);
    }
    assert_eq!(
        responses(&effects, ConnId(1)),
        vec![
            (99, SaError::InvalidParam),
            (u32::MAX, SaError::InvalidParam)
        ]
    );
    assert_eq!(r.stats().lib_unknown_id, 2);
    assert!(r.stats().lib_requests.is_empty());
    // A request from a connection nobody made is ignored.
    r.lib_request(Instant(5), ConnId(7), 0, Bytes::new(), 10);
    assert_eq!(r.poll_effect(), None);
    assert_eq!(r.stats().lib_unknown_conn, 1);
}

#[test]
fn needs_sync_requests_wait_for_the_first_sync_and_lib_handlers_see_the_time() {
    let mut r = Registry::new(NodeId(1));
    r.register(Kv::default());
    r.lib_connect(ConnId(1), KV, ConnInfo::default()).unwrap();
    assert!(!r.is_synced());
    r.lib_request(Instant(10), ConnId(1), req::SET, set_body(1, 1), 10);
    r.lib_request(Instant(10), ConnId(1), req::PING, Bytes::new(), 10);
    let mut out = vec![Vec::new()];
    exchange(std::slice::from_mut(&mut r), &mut out);
    assert_eq!(
        responses(&out[0], ConnId(1)),
        vec![(req::SET, SaError::TryAgain), (req::PING, SaError::Ok)]
    );
    assert_eq!(r.stats().lib_try_again_sync, 1);

    r.confchg(&regular(4, &[1]));
    let mut out = vec![Vec::new()];
    exchange(std::slice::from_mut(&mut r), &mut out);
    assert!(r.is_synced());
    r.lib_request(Instant(20), ConnId(1), req::SET, set_body(1, 1), 10);
    exchange(std::slice::from_mut(&mut r), &mut out);
    assert_eq!(responses(&out[0], ConnId(1)), vec![(req::SET, SaError::Ok)]);
    let k = r.service::<Kv>().unwrap();
    assert_eq!(k.map.get(&1), Some(&(1, 1)));
    assert!(
        !k.time_seen_in_exec && !k.time_seen_in_sync,
        "executive code saw the time"
    );
}

#[test]
fn must_wait_names_exactly_the_requests_try_again_would_refuse() {
    let mut r = Registry::new(NodeId(1));
    r.register(Kv::default());
    r.lib_connect(ConnId(1), KV, ConnInfo::default()).unwrap();
    // Before the first sync: needs_sync requests wait, others do not.
    assert!(r.lib_request_must_wait(ConnId(1), req::SET, 10));
    assert!(!r.lib_request_must_wait(ConnId(1), req::PING, 10));
    r.confchg(&regular(4, &[1]));
    let mut out = vec![Vec::new()];
    exchange(std::slice::from_mut(&mut r), &mut out);
    assert!(r.is_synced());
    // Synced: only flow control with no room.
    assert!(!r.lib_request_must_wait(ConnId(1), req::SET, 1));
    assert!(r.lib_request_must_wait(ConnId(1), req::SET, 0));
    assert!(!r.lib_request_must_wait(ConnId(1), req::GET, 0));
    // Unknown ids and connections are answered, never held.
    assert!(!r.lib_request_must_wait(ConnId(1), 999, 0));
    assert!(!r.lib_request_must_wait(ConnId(9), req::SET, 0));
}

#[test]
fn flow_control_answers_try_again_without_calling_the_handler() {
    let mut r = Registry::new(NodeId(1));
    r.register(Kv::default());
    r.confchg(&regular(4, &[1]));
    let mut out = vec![Vec::new()];
    exchange(std::slice::from_mut(&mut r), &mut out);
    r.lib_connect(ConnId(1), KV, ConnInfo::default()).unwrap();
    r.lib_request(Instant(10), ConnId(1), req::SET, set_body(1, 1), 0);
    // GET does not multicast: no flow control.
    r.lib_request(
        Instant(10),
        ConnId(1),
        req::GET,
        Bytes::from_static(&[0, 0, 0, 1]),
        0,
    );
    assert!(matches!(
        r.poll_effect(),
        Some(Effect::Response {
            error: SaError::TryAgain,
            id: req::SET,
            ..
        })
    ));
    assert!(matches!(
        r.poll_effect(),
        Some(Effect::Response {
            error: SaError::NotExist,
            id: req::GET,
            ..
        })
    ));
    assert_eq!(r.poll_effect(), None, "SET handler must not have multicast");
    assert_eq!(r.stats().lib_try_again_flow, 1);
    assert_eq!(r.stats().lib_requests.get(&(KV, req::SET)), None);
    assert_eq!(r.stats().lib_requests.get(&(KV, req::GET)), Some(&1));
}

#[test]
fn bad_deliveries_are_dropped_and_counted() {
    let mut r = Registry::new(NodeId(1));
    r.register(Kv::default());
    r.deliver(NodeId(2), Bytes::from_static(&[0, 40]));
    r.deliver(NodeId(2), Bytes::from_static(&[0, 99, 0, 0, 1, 2]));
    r.deliver(NodeId(2), Bytes::from_static(&[0, 40, 0, 9]));
    r.deliver(NodeId(2), Bytes::from_static(&[0, 0, 0, 7]));
    r.deliver(NodeId(2), Bytes::from_static(&[0, 0, 0, 0, 1]));
    // A well-formed SET with a bad body reaches the handler, which ignores it.
    r.deliver(NodeId(2), Bytes::from_static(&[0, 40, 0, 0, 1]));
    assert_eq!(r.stats().dropped_messages, 5);
    assert_eq!(
        r.stats().exec_messages.get(&MsgId::new(KV, exec::SET)),
        Some(&1)
    );
    assert_eq!(r.poll_effect(), None);
}

#[test]
fn effects_for_closed_connections_are_dropped() {
    let mut r = Registry::new(NodeId(1));
    r.register(Kv::default());
    r.confchg(&regular(4, &[1]));
    let mut out = vec![Vec::new()];
    exchange(std::slice::from_mut(&mut r), &mut out);
    r.lib_connect(ConnId(1), KV, ConnInfo::default()).unwrap();
    r.lib_request(Instant(10), ConnId(1), req::SET, set_body(3, 9), 10);
    r.lib_disconnect(ConnId(1));
    exchange(std::slice::from_mut(&mut r), &mut out);
    assert!(out[0].is_empty());
    assert_eq!(r.stats().dropped_effects, 1);
    assert_eq!(r.service::<Kv>().unwrap().map.get(&3), Some(&(9, 1)));
}

#[test]
fn timers_fire_in_order_with_the_time_and_can_be_cancelled() {
    let mut r = Registry::new(NodeId(1));
    r.register(Kv::default());
    r.lib_connect(ConnId(1), KV, ConnInfo::default()).unwrap();
    let add = |r: &mut Registry, at: u64, after: u64| {
        r.lib_request(
            Instant(at),
            ConnId(1),
            req::TIMER_ADD,
            Bytes::copy_from_slice(&after.to_be_bytes()),
            1,
        )
    };
    add(&mut r, 1000, 500);
    add(&mut r, 1000, 300);
    add(&mut r, 1000, 900);
    r.lib_request(Instant(1000), ConnId(1), req::TIMER_DEL, Bytes::new(), 1);
    assert_eq!(r.poll_timeout(), Some(Instant(1300)));
    r.handle_timeout(Instant(1299));
    assert!(r.service::<Kv>().unwrap().fired.is_empty());
    r.handle_timeout(Instant(1600));
    assert_eq!(
        r.service::<Kv>().unwrap().fired,
        vec![(300, Some(Instant(1600))), (500, Some(Instant(1600)))]
    );
    assert_eq!(r.poll_timeout(), None, "the 900 us timer was cancelled");
}

#[test]
fn sync_activates_at_the_last_barrier_and_merges_state_identically() {
    let mut regs: Vec<Registry> = (1..=3)
        .map(|n| {
            let mut r = Registry::new(NodeId(n));
            r.register(Kv::default());
            r
        })
        .collect();
    // Different histories: each node alone first, setting its own and a shared key.
    for (i, r) in regs.iter_mut().enumerate() {
        let n = i as u32 + 1;
        r.confchg(&regular(n as u64, &[n]));
        let mut out = vec![Vec::new()];
        exchange(std::slice::from_mut(r), &mut out);
        r.lib_connect(ConnId(1), KV, ConnInfo::default()).unwrap();
        for v in 0..n {
            r.lib_request(
                Instant(0),
                ConnId(1),
                req::SET,
                set_body(100, u64::from(n * 10 + v)),
                1,
            );
            exchange(std::slice::from_mut(r), &mut out);
        }
        r.lib_request(
            Instant(0),
            ConnId(1),
            req::SET,
            set_body(n, u64::from(n)),
            1,
        );
        exchange(std::slice::from_mut(r), &mut out);
    }
    // Merge: transitional (each alone), then the regular configuration of all three.
    for (i, r) in regs.iter_mut().enumerate() {
        r.confchg(&transitional(10, &[i as u32 + 1]));
        r.confchg(&regular(10, &[1, 2, 3]));
        assert!(!r.is_synced());
    }
    let mut out = vec![Vec::new(), Vec::new(), Vec::new()];
    exchange(&mut regs, &mut out);
    let maps: Vec<_> = regs
        .iter()
        .map(|r| r.service::<Kv>().unwrap().map.clone())
        .collect();
    for r in &regs {
        assert!(r.is_synced());
        assert_eq!(r.service::<Kv>().unwrap().activations, 2);
    }
    assert_eq!(maps[0], maps[1]);
    assert_eq!(maps[0], maps[2]);
    // Key 100 was set three times on node 3: its stamp wins.
    assert_eq!(maps[0].get(&100), Some(&(32, 3)));
    assert_eq!(maps[0].len(), 4);
    assert_eq!(
        regs[0]
            .stats()
            .exec_messages
            .get(&MsgId::new(ServiceId::SYNC, 0)),
        Some(&4)
    );
}

#[test]
fn configuration_change_mid_sync_aborts_and_the_next_round_completes() {
    let mut regs: Vec<Registry> = (1..=2)
        .map(|n| {
            let mut r = Registry::new(NodeId(n));
            r.register(Kv::default());
            r
        })
        .collect();
    let mut out = vec![Vec::new(), Vec::new()];
    for r in regs.iter_mut() {
        r.confchg(&regular(1, &[1, 2]));
    }
    exchange(&mut regs, &mut out);
    regs[0]
        .lib_connect(ConnId(1), KV, ConnInfo::default())
        .unwrap();
    for k in 0..5 {
        regs[0].lib_request(Instant(0), ConnId(1), req::SET, set_body(k, 7), 1);
    }
    exchange(&mut regs, &mut out);
    // A new ring: both start syncing (one STATE entry each, then Continue)...
    for r in regs.iter_mut() {
        r.confchg(&transitional(2, &[1, 2]));
        r.confchg(&regular(2, &[1, 2]));
    }
    // ... and a SET from before the change is delivered during the sync: deferred.
    let mut set = BytesMut::new();
    set.put_u16(KV.0);
    set.put_u16(exec::SET);
    set.put_u64(1);
    set.put_u32(77);
    set.put_u64(1);
    for r in regs.iter_mut() {
        r.deliver(NodeId(1), set.clone().freeze());
        assert!(
            !r.service::<Kv>().unwrap().map.contains_key(&77),
            "SET applied mid-sync"
        );
    }
    // Before anything else is delivered, the ring changes again.
    for r in regs.iter_mut() {
        r.confchg(&transitional(3, &[1, 2]));
        let k = r.service::<Kv>().unwrap();
        assert_eq!(k.aborts, 1);
        assert_eq!(
            k.map.get(&77),
            Some(&(1, 1)),
            "deferred SET applied at the abort"
        );
        assert!(!r.is_synced());
        assert_eq!(r.stats().sync_rounds_aborted, 1);
        r.confchg(&regular(3, &[1, 2]));
    }
    // The old round's messages (still queued) are delivered in the new ring: ignored.
    exchange(&mut regs, &mut out);
    for r in &regs {
        assert!(r.is_synced());
        let k = r.service::<Kv>().unwrap();
        assert_eq!(k.activations, 2);
        assert_eq!(k.map.len(), 6);
    }
    assert_eq!(
        regs[0].service::<Kv>().unwrap().map,
        regs[1].service::<Kv>().unwrap().map
    );
}

// ----- over real Totem -----

#[test]
fn replicated_state_is_identical_on_every_node() {
    let mut c = kv_cluster(3);
    assert!(c.settle(&all(3), 5_000), "no stable ring");
    let conns: Vec<ConnId> = (1..=3)
        .map(|n| c.connect(n, KV, ConnInfo::default()).unwrap())
        .collect();
    for i in 0..60u32 {
        let n = 1 + i % 3;
        c.request(
            n,
            conns[n as usize - 1],
            req::SET,
            set_body(i % 7, u64::from(i)),
        );
        if i % 5 == 0 {
            c.run_for(1);
        }
    }
    assert!(c.settle(&all(3), 5_000));
    for n in 1..=3 {
        let r = responses(&c.take_outputs(n), conns[n as usize - 1]);
        assert_eq!(r.len(), 20);
        assert!(
            r.iter().all(|&(id, e)| id == req::SET && e == SaError::Ok),
            "{r:?}"
        );
    }
    assert_eq!(kv(&c, 1).map, kv(&c, 2).map);
    assert_eq!(kv(&c, 1).map, kv(&c, 3).map);
    assert_eq!(kv(&c, 1).map.len(), 7);
    assert_eq!(kv(&c, 1).map.values().map(|e| e.1).sum::<u64>(), 60);
}

#[test]
fn flow_control_over_totem() {
    let mut c = kv_cluster(2);
    assert!(c.settle(&all(2), 5_000));
    let conn = c.connect(1, KV, ConnInfo::default()).unwrap();
    c.node_mut(1).room_override = Some(0);
    c.request(1, conn, req::SET, set_body(1, 1));
    c.node_mut(1).room_override = None;
    c.request(1, conn, req::SET, set_body(1, 2));
    c.request(1, conn, 42, Bytes::new());
    assert!(c.settle(&all(2), 5_000));
    assert_eq!(
        responses(&c.take_outputs(1), conn),
        vec![
            (req::SET, SaError::TryAgain),
            (42, SaError::InvalidParam),
            (req::SET, SaError::Ok)
        ]
    );
    assert_eq!(kv(&c, 2).map.get(&1), Some(&(2, 1)));
}

#[test]
fn partition_and_merge_resync_the_state() {
    let mut c = kv_cluster(3);
    assert!(c.settle(&all(3), 5_000));
    let c1 = c.connect(1, KV, ConnInfo::default()).unwrap();
    let c3 = c.connect(3, KV, ConnInfo::default()).unwrap();
    c.request(1, c1, req::SET, set_body(1, 10));
    assert!(c.settle(&all(3), 5_000));
    c.partition(&[&[1, 2], &[3]]);
    assert!(c.settle(&[1, 2], 10_000), "{{1,2}} did not reform");
    assert!(c.settle(&[3], 10_000), "{{3}} did not reform");
    c.request(1, c1, req::SET, set_body(2, 20));
    c.request(3, c3, req::SET, set_body(3, 30));
    c.request(3, c3, req::SET, set_body(1, 31));
    c.request(3, c3, req::SET, set_body(1, 32));
    assert!(c.settle(&[1, 2], 5_000) && c.settle(&[3], 5_000));
    assert_ne!(kv(&c, 1).map, kv(&c, 3).map);
    let before: Vec<u32> = (1..=3).map(|n| kv(&c, n).activations).collect();
    c.heal();
    assert!(c.settle(&all(3), 10_000), "no merge");
    for n in 1..=3 {
        assert!(
            kv(&c, n).activations > before[n as usize - 1],
            "node {n} did not resync"
        );
        assert_eq!(kv(&c, n).map, kv(&c, 1).map);
    }
    let m = &kv(&c, 1).map;
    assert_eq!(m.get(&1), Some(&(32, 3)));
    assert_eq!(m.get(&2), Some(&(20, 1)));
    assert_eq!(m.get(&3), Some(&(30, 1)));
}

#[test]
fn crash_mid_sync_aborts_and_the_survivors_resync() {
    // Without the linger: the simulated services answer in no time, so a lingering
    // token would carry the whole sync in one visit, with no moment to crash in.
    let totem = totem::TotemConfig {
        token_ms: 200,
        linger_us: 0,
        ..totem::TotemConfig::default()
    };
    let mut c = TestCluster::with_totem(3, totem, |r| r.register(Kv::default()));
    assert!(c.settle(&all(3), 5_000));
    let conn = c.connect(1, KV, ConnInfo::default()).unwrap();
    for k in 0..200 {
        c.request(1, conn, req::SET, set_body(k, u64::from(k)));
        if k % 20 == 0 {
            c.run_for(2);
        }
    }
    assert!(c.settle(&all(3), 5_000));
    // A restart of node 3 makes a new ring; its sync sends 200 entries one at a time.
    c.crash(3);
    c.restart(3);
    let mid_sync = c.run_until(5_000, |c| {
        let k = kv(c, 1);
        !c.registry(1).is_synced() && k.syncing && k.cursor > 5 && k.cursor < k.snapshot.len()
    });
    assert!(mid_sync, "never caught node 1 mid-sync");
    c.crash(2);
    assert!(c.settle(&[1, 3], 10_000), "survivors did not resync");
    for n in [1, 3] {
        assert!(
            c.registry(n).stats().sync_rounds_aborted >= 1,
            "node {n} never aborted"
        );
        assert_eq!(kv(&c, n).map.len(), 200);
    }
    assert!(kv(&c, 1).aborts >= 1);
    assert_eq!(kv(&c, 1).map, kv(&c, 3).map);
}

// ----- the hooks every service gets -----

/// A service with no tables that records its hooks; `N` is its service id, so that
/// several can be registered side by side.
#[derive(Default)]
struct Probe<const N: u16> {
    exec_inits: u32,
    /// Every configuration change, as it came.
    confchgs: Vec<ConfChange>,
}

impl<const N: u16> Service for Probe<N> {
    const ID: ServiceId = ServiceId(N);
    const NAME: &'static str = "probe";
    const VERSION: SaVersion = SaVersion::B_01_01;
    const LIB: &'static [LibHandler<Self>] = &[];
    const EXEC: &'static [ExecHandler<Self>] = &[];
    const SYNC: bool = false;

    fn exec_init(&mut self, _api: &mut Api) {
        self.exec_inits += 1;
    }

    fn confchg(&mut self, _api: &mut Api, change: &ConfChange) {
        self.confchgs.push(change.clone());
    }
}

#[test]
fn exec_init_runs_exactly_once_at_register() {
    let mut r = Registry::new(NodeId(1));
    r.register(Probe::<50>::default());
    let inits = |r: &Registry| r.service::<Probe<50>>().map(|p| p.exec_inits);
    // At register, before any event reaches the registry.
    assert_eq!(inits(&r), Some(1));

    // Nothing that follows runs it again: other services registering, connections,
    // configuration changes, deliveries, timers.
    r.register(Kv::default());
    r.register(Probe::<51>::default());
    let conn = ConnId(7);
    r.lib_connect(conn, ServiceId(50), ConnInfo::default())
        .unwrap();
    r.confchg(&transitional(4, &[1]));
    r.confchg(&regular(4, &[1]));
    let mut out = vec![Vec::new()];
    exchange(std::slice::from_mut(&mut r), &mut out);
    assert!(r.is_synced());
    r.deliver(NodeId(1), Bytes::from_static(&[0, 50, 0, 0]));
    r.handle_timeout(Instant(1_000_000));
    r.lib_disconnect(conn);
    r.confchg(&transitional(8, &[1]));
    r.confchg(&regular(8, &[1]));
    assert_eq!(inits(&r), Some(1));
    assert_eq!(r.service::<Probe<51>>().map(|p| p.exec_inits), Some(1));
}

fn probe_confchgs<const N: u16>(r: &Registry) -> Vec<ConfChange> {
    r.service::<Probe<N>>()
        .map(|p| p.confchgs.clone())
        .unwrap_or_default()
}

#[test]
fn every_service_sees_the_transitional_then_the_regular_configuration() {
    let mut r = Registry::new(NodeId(1));
    r.register(Probe::<50>::default());
    r.register(Kv::default());
    r.register(Probe::<51>::default());
    let changes = [
        transitional(4, &[1]),
        regular(4, &[1, 2, 3]),
        transitional(8, &[1, 3]),
        regular(8, &[1, 3]),
    ];
    for (i, change) in changes.iter().enumerate() {
        r.confchg(change);
        // Each has reached both services before the next is fed.
        assert_eq!(probe_confchgs::<50>(&r), changes[..=i]);
        assert_eq!(probe_confchgs::<51>(&r), changes[..=i]);
    }
}

#[test]
fn every_service_sees_every_configuration_of_real_totem_in_order() {
    let mut c = TestCluster::new(3, |r| {
        r.register(Probe::<50>::default());
        r.register(Probe::<51>::default());
    });
    assert!(c.settle(&all(3), 5_000), "no stable ring");
    c.crash(3);
    assert!(c.settle(&[1, 2], 10_000), "survivors did not reform");
    for n in [1, 2] {
        let seen = probe_confchgs::<50>(c.registry(n));
        assert_eq!(seen, probe_confchgs::<51>(c.registry(n)), "node {n}");
        // Pairs, each a transitional configuration then its regular one: the first
        // ring, then the one without node 3.
        let kinds: Vec<ConfKind> = seen.iter().map(|ch| ch.kind).collect();
        assert!(
            kinds.len() >= 4 && kinds.len().is_multiple_of(2),
            "node {n}: {kinds:?}"
        );
        for pair in kinds.chunks(2) {
            assert_eq!(
                pair,
                [ConfKind::Transitional, ConfKind::Regular],
                "node {n}: {kinds:?}"
            );
        }
        assert_eq!(
            seen[seen.len() - 1].members,
            [NodeId(1), NodeId(2)].into_iter().collect()
        );
    }
}
