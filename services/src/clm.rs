//! CLM, the SA Forum cluster membership service (AIS B.01.01) as openais 0.80 offered
//! it: the current membership as a numbered view, each node's record (id, address,
//! name, boot time, the view it first joined), and track callbacks at every new view.
//!
//! # Views and their numbers
//!
//! A view is installed once per regular configuration, when the sync framework activates
//! CLM: at the same point of the agreed order on every member, so every member installs
//! the same view (members = the ring's members) with the same number. In its sync round
//! each node multicasts one `ANNOUNCE` (tagged with the ring) carrying its own record
//! and a *view floor*, and lets its barrier go only once it has been delivered every
//! member's announcement. At activation the new view number is `max(floors) + 1`:
//! identical on every member because it is computed from the same messages.
//!
//! A node's floor is the highest of its own view number and of `floor + 1` over every
//! announcement of its current ring it was delivered (kept even when the round is
//! aborted). In a steady cluster the number therefore grows by exactly one per regular
//! configuration. When a round completes on some members only (the ring broke while the
//! last barriers were in flight), the others still hold every announcement, since they
//! sent their barriers after receiving them all, so their floor is at least the number
//! installed and they never install it again for a different membership: two views
//! with the same number and a common member (the same incarnation of a node) are the
//! same view. Two partitions cut at once from one view each install `old + 1`; they
//! cannot talk, so no numbering that grows by one could tell them apart, but no node is
//! in both. A restarted node starts from 0 and takes the cluster's numbers on its first
//! merge.
//!
//! # Node records
//!
//! Records are replicated through the announcements: each member announces itself in
//! every round, so every member knows every member's name, address and boot time.
//! Records of nodes that left stay known, with `member` false, until [`CLM_NODES_MAX`]
//! records are exceeded (the longest gone are forgotten first). At each view CLM also
//! hands every known name to the core ([`Api::set_announced_names`]), where the admin
//! service finds the names of members the configuration does not name.
//!
//! # Initial view numbers
//!
//! A node's initial view (`initialViewNumber`: the view in which it joined the cluster)
//! is the number of the first view its current incarnation installs together with
//! another node: the view in which the others report it `Joined`. A node that is alone
//! (it starts first, or restarts and forms a ring of its own before it hears the
//! others) holds the number of its first lone view meanwhile, since that is the
//! cluster as far as anyone can tell; when it first merges, the merged view's number
//! replaces it. So a restarted node does not keep the number of a lone view the cluster
//! never saw. The value is replicated like the rest of the record: the node announces
//! its initial view, or 0 meaning "this view's number" when it joins others for the
//! first time (or installs its first view), and every installer applies the same
//! announcement, so every member holds the same number.
//!
//! # Track callbacks
//!
//! At each installation every local tracking connection gets one `TRACK` callback
//! relative to the previous view this node installed: with `CHANGES` every member
//! (no change, joined, or reconfigured when its name, address or boot time differs
//! from the previous view's record, as when a node restarts and rejoins before the
//! others noticed it gone) and every node that left; with `CHANGES_ONLY` only the nodes
//! that changed (no callback when none did). A connection that started tracking before
//! the node's first view gets that view as its first callback, every member `Joined`.
//! `CURRENT` alone answers `TRACK_START` with the installed view; with a change flag the
//! current view comes as a callback (or in the answer when the caller gave a size).
//!
//! # Before the first view
//!
//! Library requests read the last installed view, so they are served during a later
//! sync round too. Before the first view there is none: `TRACK_START` with `CURRENT`
//! answers `TryAgain`, with only a change flag it starts tracking; a node get of the
//! local node is answered from [`LocalNode`]; a node get of another node waits for the
//! first view (B.01.01: `SA_AIS_ERR_TIMEOUT` when the call cannot complete in time),
//! `NODE_GET` up to its timeout (0: `Timeout` at once), `NODE_GET_ASYNC` up to
//! [`NODE_GET_ASYNC_WAIT_US`] (then a callback with `Timeout`). At most [`PARKED_MAX`]
//! node gets wait at once; more are answered `TryAgain`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ais_exec::{Api, ConnId, ConnInfo, ExecHandler, LibHandler, Service, SyncProgress, TimerId};
use ais_proto::clm::{
    cb, req, track, ClusterChange, ClusterNode, ClusterNotification, ClusterNotificationBuffer,
    NodeAddress, NodeGetAsyncReq, NodeGetCb, NodeGetReq, NodeGetRes, TrackCb, TrackReq, TrackRes,
    CLM_NODES_MAX, LOCAL_NODE_ID,
};
use ais_proto::codec::{get_u32, get_u64};
use ais_proto::{Decode, DecodeError, Encode, SaError, SaName, SaVersion, ServiceId};
use bytes::{BufMut, Bytes, BytesMut};
use log::{debug, info, warn};
use totem::{NodeId, RingId};

/// Executive message ids (the CLM executive handler table's indexes).
pub mod exec {
    /// Sync: the sender's record and view floor: `AnnounceMsg`.
    pub const ANNOUNCE: u16 = 0;
}

/// Longest a node get waits for the first view (the caller's timeout is capped to it).
const NODE_GET_WAIT_MAX_US: u64 = 3_600_000_000;

/// How long a `NODE_GET_ASYNC` waits for the first view before its callback says
/// `Timeout` (the call has no timeout of its own: B.01.01 leaves it to the
/// implementation). A node forms its first view within a few token timeouts.
pub const NODE_GET_ASYNC_WAIT_US: u64 = 60_000_000;

/// Most node gets that may wait for the first view at once, over all connections;
/// more are answered `TryAgain`. Only a client flooding requests before the first view
/// could reach it.
pub const PARKED_MAX: usize = 1024;

/// What the executive knows about its own node; the daemon builds it at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    /// The node name (`saClmClusterNodeGet`'s `nodeName`): the host name by default.
    pub name: SaName,
    /// The address Totem runs on.
    pub address: NodeAddress,
    /// When the executive started, in nanoseconds since the Unix epoch.
    pub boot_time_ns: u64,
}

impl LocalNode {
    /// A record from a name (cut to `SA_MAX_NAME_LENGTH` bytes), an IP address and a boot
    /// time.
    pub fn new(name: &str, address: IpAddr, boot_time_ns: u64) -> LocalNode {
        let mut bytes = name.as_bytes().to_vec();
        bytes.truncate(ais_proto::SA_MAX_NAME_LENGTH);
        // Cut to SA_MAX_NAME_LENGTH just above, which is all `SaName::new` checks.
        let name = SaName::new(bytes).expect("a name cut to SA_MAX_NAME_LENGTH is valid");
        LocalNode {
            name,
            address: NodeAddress::from_ip(address),
            boot_time_ns,
        }
    }
}

/// One node's record, as replicated by the announcements.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    address: NodeAddress,
    name: SaName,
    boot_time_ns: u64,
    initial_view: u64,
    /// The view that no longer held it, for nodes that left.
    left_in: Option<u64>,
}

impl Record {
    /// Same node incarnation with the same attributes (what `Reconfigured` compares).
    fn same_attributes(&self, other: &Record) -> bool {
        self.address == other.address
            && self.name == other.name
            && self.boot_time_ns == other.boot_time_ns
    }
}

/// `ANNOUNCE`: the sync ring, the sender's view floor and its own record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AnnounceMsg {
    ring: RingId,
    floor: u64,
    /// The sender's initial view, or 0: "the number of the view this round installs"
    /// (its first view, or its first view with another node; see the module doc).
    initial_view: u64,
    boot_time_ns: u64,
    address: NodeAddress,
    name: SaName,
}

impl Encode for AnnounceMsg {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.ring.rep.0);
        out.put_u64(self.ring.seq);
        out.put_u64(self.floor);
        out.put_u64(self.initial_view);
        out.put_u64(self.boot_time_ns);
        self.address.encode(out);
        self.name.encode(out);
    }
}

impl Decode for AnnounceMsg {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(AnnounceMsg {
            ring: RingId {
                rep: NodeId(get_u32(buf)?),
                seq: get_u64(buf)?,
            },
            floor: get_u64(buf)?,
            initial_view: get_u64(buf)?,
            boot_time_ns: get_u64(buf)?,
            address: NodeAddress::decode(buf)?,
            name: SaName::decode(buf)?,
        })
    }
}

/// A node get waiting for the first view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parked {
    conn: ConnId,
    node_id: u32,
    /// `None` for `NODE_GET` (answered with a response), the invocation for
    /// `NODE_GET_ASYNC` (answered with a callback).
    invocation: Option<u64>,
    timer: TimerId,
}

/// Counters for operators and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClmStats {
    /// Executive messages that failed to decode, dropped.
    pub bad_messages: u64,
    /// Announcements of another ring, ignored.
    pub stale_announces: u64,
    /// Views installed.
    pub views_installed: u64,
    /// Members installed without an announcement (never expected: the barrier follows
    /// every member's announcement).
    pub missing_announces: u64,
}

/// The CLM service. Register one per node: `registry.register(Clm::new(local))`.
#[derive(Debug)]
pub struct Clm {
    local: LocalNode,
    /// The installed view's number; 0 before the first.
    view_number: u64,
    /// The installed view's members, ascending.
    members: Vec<u32>,
    /// Records of the members and of nodes that left.
    records: BTreeMap<u32, Record>,
    /// Lowest number this node may announce as its floor; see the module doc.
    seen_floor: u64,
    /// This incarnation's initial view; 0 before its first view. See the module doc.
    my_initial_view: u64,
    /// Whether `my_initial_view` is final: this incarnation installed a view with
    /// another node. Until then it is the number of its first lone view.
    joined_others: bool,
    /// The ring whose round is running.
    round: Option<RingId>,
    /// This round's announcements, per sender.
    announces: BTreeMap<u32, AnnounceMsg>,
    /// This node's announcement of the round is multicast.
    announced: bool,
    /// Local connections, and the change flag each tracking one asked for.
    conns: BTreeSet<ConnId>,
    trackers: BTreeMap<ConnId, u8>,
    /// Node gets waiting for the first view, by timer data.
    parked: BTreeMap<u64, Parked>,
    next_park: u64,
    stats: ClmStats,
}

impl Clm {
    pub fn new(local: LocalNode) -> Clm {
        Clm {
            local,
            view_number: 0,
            members: Vec::new(),
            records: BTreeMap::new(),
            seen_floor: 0,
            my_initial_view: 0,
            joined_others: false,
            round: None,
            announces: BTreeMap::new(),
            announced: false,
            conns: BTreeSet::new(),
            trackers: BTreeMap::new(),
            parked: BTreeMap::new(),
            next_park: 0,
            stats: ClmStats::default(),
        }
    }

    /// The installed view's number (0 before the first).
    pub fn view_number(&self) -> u64 {
        self.view_number
    }

    /// The installed view's members, ascending.
    pub fn members(&self) -> &[u32] {
        &self.members
    }

    /// What `saClmClusterNodeGet` answers for `node_id` (no [`LOCAL_NODE_ID`] here).
    pub fn node(&self, node_id: u32) -> Option<ClusterNode> {
        let r = self.records.get(&node_id)?;
        Some(ClusterNode {
            node_id,
            address: r.address.clone(),
            node_name: r.name.clone(),
            member: self.members.binary_search(&node_id).is_ok(),
            boot_timestamp: r.boot_time_ns,
            initial_view_number: r.initial_view,
        })
    }

    /// The installed view as `CURRENT` reports it: every member, `NoChange`.
    pub fn current_view(&self) -> ClusterNotificationBuffer {
        ClusterNotificationBuffer {
            view_number: self.view_number,
            notifications: self
                .members
                .iter()
                .filter_map(|&id| self.node(id))
                .map(|node| ClusterNotification {
                    node,
                    change: ClusterChange::NoChange,
                })
                .collect(),
        }
    }

    pub fn stats(&self) -> &ClmStats {
        &self.stats
    }

    /// How many local connections track changes.
    pub fn tracking(&self) -> usize {
        self.trackers.len()
    }

    /// The local node's record, known before any view: from `self.local`, not a member.
    fn local_node(&self, me: NodeId) -> ClusterNode {
        self.node(me.0).unwrap_or_else(|| ClusterNode {
            node_id: me.0,
            address: self.local.address.clone(),
            node_name: self.local.name.clone(),
            member: false,
            boot_timestamp: self.local.boot_time_ns,
            initial_view_number: 0,
        })
    }

    fn lookup(&self, api: &Api, node_id: u32) -> Option<ClusterNode> {
        let me = api.node_id();
        if node_id == LOCAL_NODE_ID || node_id == me.0 {
            Some(self.local_node(me))
        } else {
            self.node(node_id)
        }
    }

    // ----- library handlers -----

    fn lib_track_start(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
        let (error, res, current_cb) = self.track_start(conn, body);
        api.response(conn, req::TRACK_START, error, res.to_bytes());
        if current_cb {
            let cb = TrackCb {
                number_of_members: self.members.len() as u32,
                view: self.current_view(),
            };
            api.dispatch(conn, cb::TRACK, cb.to_bytes());
        }
    }

    /// Decides a `TRACK_START`: the answer, and whether the current view follows it as
    /// a callback.
    fn track_start(&mut self, conn: ConnId, body: Bytes) -> (SaError, TrackRes, bool) {
        let Ok(r) = TrackReq::decode_exact(body) else {
            return (SaError::InvalidParam, TrackRes::default(), false);
        };
        let changes = r.flags & (track::CHANGES | track::CHANGES_ONLY);
        if r.flags == 0
            || r.flags & !track::ALL != 0
            || changes == track::CHANGES | track::CHANGES_ONLY
        {
            return (SaError::BadFlags, TrackRes::default(), false);
        }
        let current = r.flags & track::CURRENT != 0;
        if self.view_number == 0 && current {
            // No current view yet; tracking alone may start: its callbacks come with
            // the first view.
            return (SaError::TryAgain, TrackRes::default(), false);
        }
        // The current view goes in the answer for CURRENT alone, or when the caller gave
        // room for it; otherwise it follows as a callback.
        let sync_current = current && (changes == 0 || r.max_items.is_some());
        let mut res = TrackRes::default();
        if sync_current {
            let view = self.current_view();
            let needed = view.notifications.len() as u32;
            if r.max_items.is_some_and(|max| needed > max) {
                let empty = ClusterNotificationBuffer {
                    view_number: self.view_number,
                    notifications: Vec::new(),
                };
                return (
                    SaError::NoSpace,
                    TrackRes {
                        needed,
                        view: empty,
                    },
                    false,
                );
            }
            res = TrackRes { needed, view };
        }
        if changes != 0 {
            self.trackers.insert(conn, changes);
        }
        (SaError::Ok, res, current && !sync_current)
    }

    fn lib_track_stop(&mut self, api: &mut Api, conn: ConnId, _body: Bytes) {
        let error = if self.trackers.remove(&conn).is_some() {
            SaError::Ok
        } else {
            SaError::NotExist
        };
        api.response(conn, req::TRACK_STOP, error, Bytes::new());
    }

    fn lib_node_get(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
        let Ok(r) = NodeGetReq::decode_exact(body) else {
            api.response(conn, req::NODE_GET, SaError::InvalidParam, Bytes::new());
            return;
        };
        if let Some(node) = self.lookup(api, r.node_id) {
            api.response(
                conn,
                req::NODE_GET,
                SaError::Ok,
                NodeGetRes { node }.to_bytes(),
            );
            return;
        }
        let error = if self.view_number > 0 {
            SaError::InvalidParam
        } else if r.timeout_ns == 0 {
            // Nothing is known of the other nodes before the first view, and the caller
            // will not wait for it.
            SaError::Timeout
        } else {
            let wait_us = (r.timeout_ns / 1000).clamp(1, NODE_GET_WAIT_MAX_US);
            match self.park(api, conn, r.node_id, None, wait_us) {
                Ok(()) => return,
                Err(e) => e,
            }
        };
        api.response(conn, req::NODE_GET, error, Bytes::new());
    }

    /// Parks a node get until the first view or `wait_us`; `Err(TryAgain)` when
    /// [`PARKED_MAX`] already wait.
    fn park(
        &mut self,
        api: &mut Api,
        conn: ConnId,
        node_id: u32,
        invocation: Option<u64>,
        wait_us: u64,
    ) -> Result<(), SaError> {
        if self.parked.len() >= PARKED_MAX {
            debug!(target: "clm", "{conn}: node get of {node_id} refused: {PARKED_MAX} already wait for the first view");
            return Err(SaError::TryAgain);
        }
        let key = self.next_park;
        self.next_park += 1;
        let timer = api.timer_add(wait_us, key);
        self.parked.insert(
            key,
            Parked {
                conn,
                node_id,
                invocation,
                timer,
            },
        );
        debug!(target: "clm", "{conn}: node get of {node_id} waits for the first view");
        Ok(())
    }

    /// Answers a parked node get: a response for `NODE_GET`, a callback for
    /// `NODE_GET_ASYNC`.
    fn answer(api: &mut Api, p: &Parked, result: Result<ClusterNode, SaError>) {
        match p.invocation {
            None => match result {
                Ok(node) => api.response(
                    p.conn,
                    req::NODE_GET,
                    SaError::Ok,
                    NodeGetRes { node }.to_bytes(),
                ),
                Err(e) => api.response(p.conn, req::NODE_GET, e, Bytes::new()),
            },
            Some(invocation) => {
                let cb = NodeGetCb { invocation, result };
                api.dispatch(p.conn, cb::NODE_GET, cb.to_bytes());
            }
        }
    }

    fn lib_node_get_async(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
        let Ok(r) = NodeGetAsyncReq::decode_exact(body) else {
            api.response(
                conn,
                req::NODE_GET_ASYNC,
                SaError::InvalidParam,
                Bytes::new(),
            );
            return;
        };
        let result = match self.lookup(api, r.node_id) {
            Some(node) => Ok(node),
            None if self.view_number > 0 => Err(SaError::InvalidParam),
            None => {
                // Before the first view: the callback comes with it, or on timeout.
                let parked = self.park(
                    api,
                    conn,
                    r.node_id,
                    Some(r.invocation),
                    NODE_GET_ASYNC_WAIT_US,
                );
                let error = parked.err().unwrap_or(SaError::Ok);
                api.response(conn, req::NODE_GET_ASYNC, error, Bytes::new());
                return;
            }
        };
        api.response(conn, req::NODE_GET_ASYNC, SaError::Ok, Bytes::new());
        let cb = NodeGetCb {
            invocation: r.invocation,
            result,
        };
        api.dispatch(conn, cb::NODE_GET, cb.to_bytes());
    }

    // ----- executive handlers -----

    fn exec_announce(&mut self, api: &mut Api, origin: NodeId, body: Bytes) {
        let msg = match AnnounceMsg::decode_exact(body) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_messages += 1;
                warn!(target: "clm", "dropping a malformed announcement from node {origin}: {e}");
                return;
            }
        };
        if api.ring_id() != Some(msg.ring) || !api.members().contains(origin) {
            self.stats.stale_announces += 1;
            debug!(target: "clm", "announcement of ring {} from node {origin} ignored", msg.ring);
            return;
        }
        // Whether or not this round completes here, some member may install
        // max(floor) + 1 with it: never announce below that again.
        self.seen_floor = self.seen_floor.max(msg.floor.saturating_add(1));
        if self.round == Some(msg.ring) {
            self.announces.insert(origin.0, msg);
        }
    }

    // ----- installation -----

    /// Installs the view of the current ring from this round's announcements.
    fn install(&mut self, api: &mut Api) {
        let members: Vec<u32> = api.members().iter().map(|n| n.0).collect();
        let announces = std::mem::take(&mut self.announces);
        let number = announces
            .values()
            .map(|a| a.floor)
            .max()
            .unwrap_or(self.view_number)
            .max(self.view_number)
            .saturating_add(1);

        let previous = std::mem::take(&mut self.members);
        let old_records = self.records.clone();
        for &id in &members {
            match announces.get(&id) {
                Some(a) => {
                    let initial_view = if a.initial_view == 0 {
                        number
                    } else {
                        a.initial_view
                    };
                    self.records.insert(
                        id,
                        Record {
                            address: a.address.clone(),
                            name: a.name.clone(),
                            boot_time_ns: a.boot_time_ns,
                            initial_view,
                            left_in: None,
                        },
                    );
                }
                None => {
                    self.stats.missing_announces += 1;
                    warn!(target: "clm", "view {number}: no announcement from member {id}; keeping what is known");
                    if let Some(r) = self.records.get_mut(&id) {
                        r.left_in = None;
                    }
                }
            }
        }
        let left: Vec<u32> = previous
            .iter()
            .copied()
            .filter(|id| members.binary_search(id).is_err())
            .collect();
        for id in &left {
            if let Some(r) = self.records.get_mut(id) {
                r.left_in = Some(number);
            }
        }
        self.view_number = number;
        self.seen_floor = self.seen_floor.max(number);
        self.members = members;
        let me = api.node_id().0;
        if !self.joined_others {
            // What this node announced is in its record now (see the module doc).
            if let Some(r) = self.records.get(&me) {
                self.my_initial_view = r.initial_view;
                self.joined_others = self.members.len() > 1;
            }
        }
        self.forget_old_records();
        self.stats.views_installed += 1;
        info!(target: "clm", "view {number}: members {:?}, left {left:?}", self.members);
        let names = self
            .records
            .iter()
            .map(|(&id, r)| (NodeId(id), r.name.to_string()))
            .filter(|(_, name)| !name.is_empty())
            .collect();
        api.set_announced_names(names);

        self.notify_trackers(api, &previous, &old_records, &left);
        self.answer_parked(api);
    }

    /// Keeps at most `CLM_NODES_MAX` records: the longest gone are dropped first.
    fn forget_old_records(&mut self) {
        let excess = self.records.len().saturating_sub(CLM_NODES_MAX);
        if excess == 0 {
            return;
        }
        let mut gone: Vec<(u64, u32)> = self
            .records
            .iter()
            .filter_map(|(&id, r)| r.left_in.map(|v| (v, id)))
            .collect();
        gone.sort_unstable();
        for (_, id) in gone.into_iter().take(excess) {
            self.records.remove(&id);
        }
    }

    fn notify_trackers(
        &mut self,
        api: &mut Api,
        previous: &[u32],
        old_records: &BTreeMap<u32, Record>,
        left: &[u32],
    ) {
        if self.trackers.is_empty() {
            return;
        }
        let mut all: Vec<ClusterNotification> = Vec::new();
        let mut ids: Vec<u32> = self.members.iter().chain(left).copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(node) = self.node(id) else { continue };
            let change = if !node.member {
                ClusterChange::Left
            } else if previous.binary_search(&id).is_err() {
                ClusterChange::Joined
            } else {
                match (old_records.get(&id), self.records.get(&id)) {
                    (Some(old), Some(new)) if !old.same_attributes(new) => {
                        ClusterChange::Reconfigured
                    }
                    _ => ClusterChange::NoChange,
                }
            };
            all.push(ClusterNotification { node, change });
        }
        all.truncate(CLM_NODES_MAX);
        let number_of_members = self.members.len() as u32;
        let full = TrackCb {
            number_of_members,
            view: ClusterNotificationBuffer {
                view_number: self.view_number,
                notifications: all.clone(),
            },
        }
        .to_bytes();
        let changed: Vec<ClusterNotification> = all
            .into_iter()
            .filter(|n| n.change != ClusterChange::NoChange)
            .collect();
        let only = (!changed.is_empty()).then(|| {
            TrackCb {
                number_of_members,
                view: ClusterNotificationBuffer {
                    view_number: self.view_number,
                    notifications: changed,
                },
            }
            .to_bytes()
        });
        for (&conn, &flags) in &self.trackers {
            if flags & track::CHANGES != 0 {
                api.dispatch(conn, cb::TRACK, full.clone());
            } else if let Some(body) = &only {
                api.dispatch(conn, cb::TRACK, body.clone());
            }
        }
    }

    /// Node gets that waited for the first view: answered from it.
    fn answer_parked(&mut self, api: &mut Api) {
        for (_, p) in std::mem::take(&mut self.parked) {
            api.timer_del(p.timer);
            let result = self.lookup(api, p.node_id).ok_or(SaError::InvalidParam);
            Clm::answer(api, &p, result);
        }
    }
}

impl Service for Clm {
    const ID: ServiceId = ServiceId::CLM;
    const NAME: &'static str = "clm";
    const VERSION: SaVersion = SaVersion::B_01_01;
    const LIB: &'static [LibHandler<Self>] = &[
        LibHandler {
            id: req::TRACK_START,
            flow_control: false,
            needs_sync: false,
            handler: Clm::lib_track_start,
        },
        LibHandler {
            id: req::TRACK_STOP,
            flow_control: false,
            needs_sync: false,
            handler: Clm::lib_track_stop,
        },
        LibHandler {
            id: req::NODE_GET,
            flow_control: false,
            needs_sync: false,
            handler: Clm::lib_node_get,
        },
        LibHandler {
            id: req::NODE_GET_ASYNC,
            flow_control: false,
            needs_sync: false,
            handler: Clm::lib_node_get_async,
        },
    ];
    const EXEC: &'static [ExecHandler<Self>] = &[ExecHandler {
        id: exec::ANNOUNCE,
        handler: Clm::exec_announce,
    }];

    fn lib_init(&mut self, _api: &mut Api, conn: ConnId, _info: ConnInfo) -> Result<(), SaError> {
        self.conns.insert(conn);
        Ok(())
    }

    fn lib_exit(&mut self, api: &mut Api, conn: ConnId) {
        self.conns.remove(&conn);
        self.trackers.remove(&conn);
        let gone: Vec<u64> = self
            .parked
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            if let Some(p) = self.parked.remove(&k) {
                api.timer_del(p.timer);
            }
        }
    }

    fn sync_init(&mut self, api: &mut Api) {
        self.round = api.ring_id();
        self.announced = false;
        self.announces.clear();
    }

    /// Announces this node's record and floor once, then says `Done` (and so lets the
    /// framework send this node's barrier) only when every member's announcement of
    /// this round has been delivered here. A member's barrier thus tells the others that
    /// it knows every floor: whoever installs the view, every member has raised its own
    /// floor to the view's number, and no member reuses that number in a later ring.
    /// Answering `Continue` without multicasting is live: the missing announcements are
    /// on their way, and each delivery calls this again.
    fn sync_process(&mut self, api: &mut Api) -> SyncProgress {
        let Some(ring) = self.round else {
            return SyncProgress::Done;
        };
        if !self.announced {
            self.announced = true;
            // Joining others for the first time: this view's number becomes the
            // initial view (0 says so). Alone, the first lone view's number stands.
            let alone = api.members().len() == 1;
            let initial_view = if self.joined_others || alone {
                self.my_initial_view
            } else {
                0
            };
            let msg = AnnounceMsg {
                ring,
                floor: self.view_number.max(self.seen_floor),
                initial_view,
                boot_time_ns: self.local.boot_time_ns,
                address: self.local.address.clone(),
                name: self.local.name.clone(),
            };
            if let Err(e) = api.mcast_msg(exec::ANNOUNCE, &msg) {
                warn!(target: "clm", "announcement not sent: {e}");
                return SyncProgress::Done;
            }
            return SyncProgress::Continue;
        }
        if api
            .members()
            .iter()
            .all(|m| self.announces.contains_key(&m.0))
        {
            SyncProgress::Done
        } else {
            SyncProgress::Continue
        }
    }

    fn sync_activate(&mut self, api: &mut Api) {
        if self.round.take().is_some() {
            self.install(api);
        }
    }

    fn sync_abort(&mut self, _api: &mut Api) {
        self.round = None;
        self.announces.clear();
    }

    fn timer(&mut self, api: &mut Api, data: u64) {
        if let Some(p) = self.parked.remove(&data) {
            debug!(target: "clm", "{}: node get of {} timed out", p.conn, p.node_id);
            Clm::answer(api, &p, Err(SaError::Timeout));
        }
    }
}

#[cfg(test)]
mod tests;
