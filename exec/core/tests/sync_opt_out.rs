//! A service with `SYNC = false` takes no part in the sync round: its hooks are not
//! called and no barrier is multicast for it.

use ais_exec::{Api, Effect, ExecHandler, LibHandler, Registry, Service, SyncProgress};
use ais_proto::{SaVersion, ServiceId};
use totem::{ConfChange, ConfKind, NodeId, NodeSet, RingId};

#[derive(Default)]
struct Stateless {
    sync_calls: u32,
}

impl Service for Stateless {
    const ID: ServiceId = ServiceId(40);
    const NAME: &'static str = "stateless";
    const VERSION: SaVersion = SaVersion::B_01_01;
    const LIB: &'static [LibHandler<Self>] = &[];
    const EXEC: &'static [ExecHandler<Self>] = &[];
    const SYNC: bool = false;

    fn sync_init(&mut self, _api: &mut Api) {
        self.sync_calls += 1;
    }
    fn sync_process(&mut self, _api: &mut Api) -> SyncProgress {
        self.sync_calls += 1;
        SyncProgress::Done
    }
}

#[derive(Default)]
struct Stateful;

impl Service for Stateful {
    const ID: ServiceId = ServiceId(41);
    const NAME: &'static str = "stateful";
    const VERSION: SaVersion = SaVersion::B_01_01;
    const LIB: &'static [LibHandler<Self>] = &[];
    const EXEC: &'static [ExecHandler<Self>] = &[];
}

fn regular(members: &[u32]) -> ConfChange {
    let members: NodeSet = members.iter().map(|&n| NodeId(n)).collect();
    ConfChange {
        kind: ConfKind::Regular,
        ring_id: RingId {
            rep: NodeId(1),
            seq: 4,
        },
        members: members.clone(),
        left: NodeSet::new(),
        joined: members,
    }
}

fn mcasts(r: &mut Registry) -> usize {
    std::iter::from_fn(|| r.poll_effect())
        .filter(|e| matches!(e, Effect::Mcast { .. }))
        .count()
}

#[test]
fn a_stateless_service_alone_syncs_at_once_without_barriers() {
    let mut r = Registry::new(NodeId(1));
    r.register(Stateless::default());
    r.confchg(&regular(&[1, 2]));
    assert!(r.is_synced());
    assert_eq!(mcasts(&mut r), 0);
    assert_eq!(r.service::<Stateless>().map(|s| s.sync_calls), Some(0));
}

#[test]
fn only_syncing_services_get_a_barrier_round() {
    let mut r = Registry::new(NodeId(1));
    r.register(Stateless::default());
    r.register(Stateful);
    r.confchg(&regular(&[1, 2]));
    assert!(!r.is_synced());
    // One barrier: the stateful service's.
    assert_eq!(mcasts(&mut r), 1);
    assert_eq!(r.service::<Stateless>().map(|s| s.sync_calls), Some(0));
}
