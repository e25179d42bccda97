//! CPG, closed process groups, as corosync's `exec/cpg.c` offers them to clients:
//! processes join named groups, multicast to the group they joined in agreed order, and
//! every member is told of every change of the group's membership, with its reason.
//!
//! # Replicated state
//!
//! Every node holds every group's members, oldest first: `(nodeid, pid)` of the process,
//! the connection it joined through (meaningful only on its own node; it tells one
//! connection's `LEAVE` or `PROCDOWN` from another's with the same pid), and its age.
//! Executive handlers change it in agreed order, so all nodes agree. Only the node that
//! owns a connection answers it and calls it back.
//!
//! # Configuration changes and sync
//!
//! - Transitional configuration: processes of nodes that are not in it are removed
//!   (reason `NodeDown`), and the node forgets it ever agreed with those nodes.
//! - Regular configuration: from here until the sync framework activates CPG, `JOIN`,
//!   `LEAVE`, `MCAST` and `PROCDOWN` messages are held back, because the nodes of the new
//!   ring may not agree yet. In its sync round every node multicasts a `JOINLIST` of its
//!   own processes (tagged with the ring). At activation, each node adds the processes of
//!   every member it did not agree with before (reason `NodeUp`, after dropping whatever
//!   it remembered of that node and that node no longer lists, reason `NodeDown`); then
//!   all nodes hold the same state, in the same order (oldest first by age, which every
//!   join carries), and the held-back messages are applied, in order. If the round is
//!   aborted, the held-back messages are applied at once, before the transitional
//!   configuration's removals, on every node that saw them.
//!
//! A process's age is `(ring, n)`: the ring in which its join was applied and how many
//! joins that ring applied before it, which is the same on every node that applied it.
//! Membership lists order by it, then by `(nodeid, pid)`.
//!
//! Members lists in callbacks and `MEMBERSHIP_GET` answers carry reason `Join` (the
//! contract has no neutral reason).

use std::collections::BTreeMap;

use ais_exec::{Api, ConnId, ConnInfo, ExecHandler, LibHandler, Service, SyncProgress};
use ais_proto::codec::{get_bytes, get_count, get_u32, get_u64, put_bytes, put_count};
use ais_proto::cpg::{
    cb, req, Address, ConfchgCb, DeliverCb, GroupName, GroupReq, LocalGetRes, McastReq,
    MembershipGetReq, MembershipGetRes, Reason, CPG_MEMBERS_MAX, CPG_MSG_MAX,
};
use ais_proto::{Decode, DecodeError, Encode, SaError, SaVersion, ServiceId};
use bytes::{BufMut, Bytes, BytesMut};
use log::{debug, warn};
use totem::{ConfChange, ConfKind, NodeId, NodeSet, RingId};

/// Executive message ids (the CPG executive handler table's indexes).
pub mod exec {
    /// A process joins a group: `ProcMsg`.
    pub const JOIN: u16 = 0;
    /// A process leaves its group: `ProcMsg`.
    pub const LEAVE: u16 = 1;
    /// A message to a group: `McastMsg`.
    pub const MCAST: u16 = 2;
    /// A connection that had joined closed: `ProcMsg`.
    pub const PROCDOWN: u16 = 3;
    /// Sync: the sender's own processes: `JoinListMsg`.
    pub const JOINLIST: u16 = 4;
}

/// Entries per `JOINLIST` message (each at most 162 bytes).
const JOINLIST_CHUNK: usize = 256;
/// Most entries one `JOINLIST` message may carry.
const JOINLIST_MAX: usize = 4096;

/// When a process joined, comparable across nodes: see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Age {
    pub ring_seq: u64,
    pub ring_rep: u32,
    pub n: u64,
}

/// A process in a group.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    nodeid: u32,
    pid: u32,
    conn: u64,
    since: Age,
}

impl Member {
    fn key(&self) -> (Age, u32, u32) {
        (self.since, self.nodeid, self.pid)
    }

    fn address(&self, reason: Reason) -> Address {
        Address {
            nodeid: self.nodeid,
            pid: self.pid,
            reason,
        }
    }
}

/// A local connection's progress through a group (corosync's `cpd_state`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum ConnState {
    Unjoined,
    JoinStarted { group: GroupName, pid: u32 },
    Joined { group: GroupName, pid: u32 },
    LeaveStarted { group: GroupName, pid: u32 },
}

// ----- executive messages -----

/// `JOIN`, `LEAVE`, `PROCDOWN`: which process of the sender, through which connection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProcMsg {
    conn: u64,
    pid: u32,
    group: GroupName,
}

impl Encode for ProcMsg {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.conn);
        out.put_u32(self.pid);
        self.group.encode(out);
    }
}

impl Decode for ProcMsg {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ProcMsg {
            conn: get_u64(buf)?,
            pid: get_u32(buf)?,
            group: GroupName::decode(buf)?,
        })
    }
}

/// `MCAST`: the sending process, its group, the data.
#[derive(Clone, Debug, PartialEq, Eq)]
struct McastMsg {
    pid: u32,
    group: GroupName,
    data: Bytes,
}

impl Encode for McastMsg {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.pid);
        self.group.encode(out);
        put_bytes(out, &self.data);
    }

    fn size_hint(&self) -> usize {
        4 + self.group.size_hint() + 4 + self.data.len()
    }
}

impl Decode for McastMsg {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(McastMsg {
            pid: get_u32(buf)?,
            group: GroupName::decode(buf)?,
            data: get_bytes(buf, CPG_MSG_MAX)?,
        })
    }
}

/// One of the sender's processes, in a `JOINLIST`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct JoinEntry {
    group: GroupName,
    pid: u32,
    conn: u64,
    since: Age,
}

/// `JOINLIST`: the sync ring and (some of) the sender's processes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct JoinListMsg {
    ring: RingId,
    entries: Vec<JoinEntry>,
}

/// The smallest encoded entry: empty group name.
const JOIN_ENTRY_MIN_LEN: usize = 2 + 4 + 8 + 8 + 4 + 8;

impl Encode for JoinListMsg {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.ring.rep.0);
        out.put_u64(self.ring.seq);
        put_count(out, self.entries.len());
        for e in &self.entries {
            e.group.encode(out);
            out.put_u32(e.pid);
            out.put_u64(e.conn);
            out.put_u64(e.since.ring_seq);
            out.put_u32(e.since.ring_rep);
            out.put_u64(e.since.n);
        }
    }
}

impl Decode for JoinListMsg {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let rep = NodeId(get_u32(buf)?);
        let seq = get_u64(buf)?;
        let n = get_count(buf, JOINLIST_MAX, JOIN_ENTRY_MIN_LEN)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(JoinEntry {
                group: GroupName::decode(buf)?,
                pid: get_u32(buf)?,
                conn: get_u64(buf)?,
                since: Age {
                    ring_seq: get_u64(buf)?,
                    ring_rep: get_u32(buf)?,
                    n: get_u64(buf)?,
                },
            });
        }
        Ok(JoinListMsg {
            ring: RingId { rep, seq },
            entries,
        })
    }
}

/// Counters for operators and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpgStats {
    /// Executive messages that failed to decode, dropped.
    pub bad_messages: u64,
    /// Messages held back during a sync round.
    pub deferred: u64,
    /// `JOINLIST`s of another ring or outside a round, ignored.
    pub stale_joinlists: u64,
}

/// The CPG service. Register one per node: `registry.register(Cpg::new())`.
#[derive(Debug, Default)]
pub struct Cpg {
    /// Every group's members, oldest first (by [`Member::key`]); no empty groups.
    groups: BTreeMap<GroupName, Vec<Member>>,
    /// This node's connections.
    conns: BTreeMap<ConnId, ConnState>,
    /// The current regular configuration's ring, for ages.
    ring: Option<RingId>,
    /// Joins applied in `ring` so far.
    joins_in_ring: u64,
    /// Nodes whose processes this node knows the way they know them themselves (itself,
    /// and the members of the last completed sync that have stayed with it since).
    agreed: NodeSet,
    /// From a regular configuration until activation or abort.
    syncing: bool,
    /// Executive messages held back while syncing, in delivery order.
    deferred: Vec<(u16, NodeId, Bytes)>,
    /// `JOINLIST` entries received in this round, per sender.
    joinlists: BTreeMap<NodeId, Vec<JoinEntry>>,
    stats: CpgStats,
}

impl Cpg {
    pub fn new() -> Cpg {
        Cpg::default()
    }

    /// The group's members, oldest first.
    pub fn members(&self, group: &GroupName) -> Vec<Address> {
        self.addresses(group)
    }

    /// Every group with members, by name, with its `(nodeid, pid)`s oldest first: the
    /// replicated state, for tests and operators.
    pub fn view(&self) -> BTreeMap<GroupName, Vec<(u32, u32)>> {
        self.groups
            .iter()
            .map(|(g, ms)| (g.clone(), ms.iter().map(|m| (m.nodeid, m.pid)).collect()))
            .collect()
    }

    /// A sync round is running: membership messages are being held back.
    pub fn is_syncing(&self) -> bool {
        self.syncing
    }

    pub fn stats(&self) -> &CpgStats {
        &self.stats
    }

    fn addresses(&self, group: &GroupName) -> Vec<Address> {
        self.groups
            .get(group)
            .map(|ms| ms.iter().map(|m| m.address(Reason::Join)).collect())
            .unwrap_or_default()
    }

    /// This node's connections that are members of `group`, oldest first.
    fn local_members(&self, me: NodeId, group: &GroupName) -> Vec<ConnId> {
        self.groups
            .get(group)
            .map(|ms| {
                ms.iter()
                    .filter(|m| m.nodeid == me.0 && self.conns.contains_key(&ConnId(m.conn)))
                    .map(|m| ConnId(m.conn))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn find(&self, group: &GroupName, nodeid: u32, pid: u32) -> Option<usize> {
        self.groups
            .get(group)?
            .iter()
            .position(|m| m.nodeid == nodeid && m.pid == pid)
    }

    fn insert(&mut self, group: &GroupName, member: Member) {
        let ms = self.groups.entry(group.clone()).or_default();
        let pos = ms
            .binary_search_by(|m| m.key().cmp(&member.key()))
            .unwrap_or_else(|p| p);
        ms.insert(pos, member);
    }

    /// Removes member `idx` of `group` (dropping the group if it empties).
    fn remove_at(&mut self, group: &GroupName, idx: usize) -> Option<Member> {
        let ms = self.groups.get_mut(group)?;
        let m = (idx < ms.len()).then(|| ms.remove(idx));
        if ms.is_empty() {
            self.groups.remove(group);
        }
        m
    }

    fn confchg_cb(
        &self,
        api: &mut Api,
        group: &GroupName,
        to: &[ConnId],
        left: Vec<Address>,
        joined: Vec<Address>,
    ) {
        if to.is_empty() {
            return;
        }
        // A merge can make a group larger than a callback may list; never send what
        // the library would refuse to decode.
        let mut members = self.addresses(group);
        members.truncate(CPG_MEMBERS_MAX);
        let (mut left, mut joined) = (left, joined);
        left.truncate(CPG_MEMBERS_MAX);
        joined.truncate(CPG_MEMBERS_MAX);
        let body = ConfchgCb {
            group: group.clone(),
            members,
            left,
            joined,
        }
        .to_bytes();
        for &conn in to {
            api.dispatch(conn, cb::CONFCHG, body.clone());
        }
    }

    // ----- library handlers -----

    fn lib_join(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
        let error = self.try_join(api, conn, body).err().unwrap_or(SaError::Ok);
        if error != SaError::Ok {
            api.response(conn, req::JOIN, error, Bytes::new());
        }
        // On success the answer waits for the JOIN to be delivered.
    }

    fn try_join(&mut self, api: &mut Api, conn: ConnId, body: Bytes) -> Result<(), SaError> {
        let r = GroupReq::decode_exact(body).map_err(|_| SaError::InvalidParam)?;
        match self.conns.get(&conn) {
            Some(ConnState::Unjoined) => {}
            Some(ConnState::LeaveStarted { .. }) => return Err(SaError::Busy),
            Some(_) => return Err(SaError::Exist),
            None => return Err(SaError::BadHandle),
        }
        let same = |g: &GroupName, p: u32| *g == r.group && p == r.pid;
        if self.conns.values().any(|s| match s {
            ConnState::JoinStarted { group, pid } | ConnState::Joined { group, pid } => {
                same(group, *pid)
            }
            _ => false,
        }) {
            return Err(SaError::Exist);
        }
        if self.find(&r.group, api.node_id().0, r.pid).is_some() {
            // Its leave or process-down is still on its way.
            return Err(SaError::TryAgain);
        }
        api.mcast_msg(
            exec::JOIN,
            &ProcMsg {
                conn: conn.0,
                pid: r.pid,
                group: r.group.clone(),
            },
        )?;
        self.conns.insert(
            conn,
            ConnState::JoinStarted {
                group: r.group,
                pid: r.pid,
            },
        );
        Ok(())
    }

    fn lib_leave(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
        let error = self.try_leave(api, conn, body).err().unwrap_or(SaError::Ok);
        if error != SaError::Ok {
            api.response(conn, req::LEAVE, error, Bytes::new());
        }
    }

    fn try_leave(&mut self, api: &mut Api, conn: ConnId, body: Bytes) -> Result<(), SaError> {
        let r = GroupReq::decode_exact(body).map_err(|_| SaError::InvalidParam)?;
        let (group, pid) = match self.conns.get(&conn) {
            Some(ConnState::Joined { group, pid }) if *group == r.group => (group.clone(), *pid),
            Some(ConnState::JoinStarted { .. } | ConnState::LeaveStarted { .. }) => {
                return Err(SaError::Busy)
            }
            Some(_) => return Err(SaError::NotExist),
            None => return Err(SaError::BadHandle),
        };
        api.mcast_msg(
            exec::LEAVE,
            &ProcMsg {
                conn: conn.0,
                pid,
                group: group.clone(),
            },
        )?;
        self.conns
            .insert(conn, ConnState::LeaveStarted { group, pid });
        Ok(())
    }

    fn lib_mcast(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
        let error = match McastReq::decode_exact(body) {
            Err(_) => SaError::InvalidParam,
            Ok(r) => match self.conns.get(&conn) {
                Some(ConnState::JoinStarted { group, pid } | ConnState::Joined { group, pid }) => {
                    let msg = McastMsg {
                        pid: *pid,
                        group: group.clone(),
                        data: r.data,
                    };
                    api.mcast_msg(exec::MCAST, &msg)
                        .err()
                        .unwrap_or(SaError::Ok)
                }
                _ => SaError::NotExist,
            },
        };
        api.response(conn, req::MCAST, error, Bytes::new());
    }

    fn lib_membership_get(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
        match MembershipGetReq::decode_exact(body) {
            Err(_) => api.response(
                conn,
                req::MEMBERSHIP_GET,
                SaError::InvalidParam,
                Bytes::new(),
            ),
            Ok(r) => {
                let mut members = self.addresses(&r.group);
                members.truncate(CPG_MEMBERS_MAX);
                let body = MembershipGetRes { members }.to_bytes();
                api.response(conn, req::MEMBERSHIP_GET, SaError::Ok, body);
            }
        }
    }

    fn lib_local_get(&mut self, api: &mut Api, conn: ConnId, _body: Bytes) {
        let body = LocalGetRes {
            nodeid: api.node_id().0,
        }
        .to_bytes();
        api.response(conn, req::LOCAL_GET, SaError::Ok, body);
    }

    // ----- executive handlers -----

    /// Membership messages wait while a sync round runs; see the module doc.
    fn hold_or_apply(&mut self, api: &mut Api, func: u16, origin: NodeId, body: Bytes) {
        if self.syncing {
            self.stats.deferred += 1;
            self.deferred.push((func, origin, body));
        } else {
            self.apply(api, func, origin, body);
        }
    }

    fn apply(&mut self, api: &mut Api, func: u16, origin: NodeId, body: Bytes) {
        let ok = match func {
            exec::MCAST => McastMsg::decode_exact(body).map(|m| self.apply_mcast(api, origin, m)),
            _ => ProcMsg::decode_exact(body).map(|m| match func {
                exec::JOIN => self.apply_join(api, origin, m),
                exec::LEAVE => self.apply_leave(api, origin, m),
                _ => self.apply_procdown(api, origin, m),
            }),
        };
        if ok.is_err() {
            self.stats.bad_messages += 1;
            warn!(target: "cpg", "dropping a malformed message {func} from node {origin}");
        }
    }

    fn exec_join(&mut self, api: &mut Api, origin: NodeId, body: Bytes) {
        self.hold_or_apply(api, exec::JOIN, origin, body)
    }

    fn exec_leave(&mut self, api: &mut Api, origin: NodeId, body: Bytes) {
        self.hold_or_apply(api, exec::LEAVE, origin, body)
    }

    fn exec_mcast(&mut self, api: &mut Api, origin: NodeId, body: Bytes) {
        self.hold_or_apply(api, exec::MCAST, origin, body)
    }

    fn exec_procdown(&mut self, api: &mut Api, origin: NodeId, body: Bytes) {
        self.hold_or_apply(api, exec::PROCDOWN, origin, body)
    }

    fn apply_join(&mut self, api: &mut Api, origin: NodeId, m: ProcMsg) {
        let me = api.node_id();
        let conn = ConnId(m.conn);
        let ours = origin == me
            && matches!(self.conns.get(&conn), Some(ConnState::JoinStarted { group, pid }) if *group == m.group && *pid == m.pid);
        let full = self
            .groups
            .get(&m.group)
            .is_some_and(|ms| ms.len() >= CPG_MEMBERS_MAX);
        if self.find(&m.group, origin.0, m.pid).is_some() || full {
            debug!(target: "cpg", "join of {origin}/{} to {} refused", m.pid, m.group);
            if ours {
                self.conns.insert(conn, ConnState::Unjoined);
                let error = if full {
                    SaError::NoSpace
                } else {
                    SaError::Exist
                };
                api.response(conn, req::JOIN, error, Bytes::new());
            }
            return;
        }
        let ring = self.ring.unwrap_or(RingId {
            rep: NodeId(0),
            seq: 0,
        });
        let member = Member {
            nodeid: origin.0,
            pid: m.pid,
            conn: m.conn,
            since: Age {
                ring_seq: ring.seq,
                ring_rep: ring.rep.0,
                n: self.joins_in_ring,
            },
        };
        self.joins_in_ring += 1;
        let joined = vec![member.address(Reason::Join)];
        self.insert(&m.group, member);
        if ours {
            self.conns.insert(
                conn,
                ConnState::Joined {
                    group: m.group.clone(),
                    pid: m.pid,
                },
            );
            api.response(conn, req::JOIN, SaError::Ok, Bytes::new());
        }
        let to = self.local_members(me, &m.group);
        self.confchg_cb(api, &m.group, &to, Vec::new(), joined);
    }

    /// Where the process `m` names is in its group, if it joined through `m.conn`.
    fn find_proc(&self, origin: NodeId, m: &ProcMsg) -> Option<usize> {
        let idx = self.find(&m.group, origin.0, m.pid)?;
        let member = self.groups.get(&m.group)?.get(idx)?;
        (member.conn == m.conn).then_some(idx)
    }

    /// Removes the process `m` names with `reason` and tells the local members (a
    /// local leaver included: it hears of its own leave).
    fn remove_process(&mut self, api: &mut Api, origin: NodeId, m: &ProcMsg, reason: Reason) {
        let Some(idx) = self.find_proc(origin, m) else {
            return;
        };
        let to = self.local_members(api.node_id(), &m.group);
        if let Some(gone) = self.remove_at(&m.group, idx) {
            self.confchg_cb(api, &m.group, &to, vec![gone.address(reason)], Vec::new());
        }
    }

    fn apply_leave(&mut self, api: &mut Api, origin: NodeId, m: ProcMsg) {
        let conn = ConnId(m.conn);
        let ours = origin == api.node_id()
            && matches!(self.conns.get(&conn), Some(ConnState::LeaveStarted { group, pid }) if *group == m.group && *pid == m.pid);
        if ours {
            // Answer first; the final callback follows.
            let error = if self.find_proc(origin, &m).is_some() {
                SaError::Ok
            } else {
                SaError::NotExist
            };
            self.conns.insert(conn, ConnState::Unjoined);
            api.response(conn, req::LEAVE, error, Bytes::new());
        }
        self.remove_process(api, origin, &m, Reason::Leave);
    }

    fn apply_procdown(&mut self, api: &mut Api, origin: NodeId, m: ProcMsg) {
        self.remove_process(api, origin, &m, Reason::ProcDown);
    }

    fn apply_mcast(&mut self, api: &mut Api, origin: NodeId, m: McastMsg) {
        let to = self.local_members(api.node_id(), &m.group);
        if to.is_empty() {
            return;
        }
        // The callback is DeliverCb's encoding; its last field, the message, goes as the
        // tail so that it is not copied on its way to the clients.
        let (head, data) = DeliverCb {
            group: m.group,
            nodeid: origin.0,
            pid: m.pid,
            data: m.data,
        }
        .split_encode();
        for conn in to {
            api.dispatch_with_tail(conn, cb::DELIVER, head.clone(), data.clone());
        }
    }

    fn exec_joinlist(&mut self, api: &mut Api, origin: NodeId, body: Bytes) {
        let msg = match JoinListMsg::decode_exact(body) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_messages += 1;
                warn!(target: "cpg", "dropping a malformed joinlist from node {origin}: {e}");
                return;
            }
        };
        if !self.syncing || api.ring_id() != Some(msg.ring) || !api.members().contains(origin) {
            self.stats.stale_joinlists += 1;
            debug!(target: "cpg", "joinlist of ring {} from node {origin} ignored", msg.ring);
            return;
        }
        if origin != api.node_id() {
            self.joinlists
                .entry(origin)
                .or_default()
                .extend(msg.entries);
        }
    }

    // ----- sync -----

    /// Applies the held-back messages (activation or abort) and ends the round.
    fn end_round(&mut self, api: &mut Api) {
        self.syncing = false;
        self.joinlists.clear();
        for (func, origin, body) in std::mem::take(&mut self.deferred) {
            self.apply(api, func, origin, body);
        }
    }

    /// Activation: adopt the processes of every member this node did not agree with.
    fn merge_joinlists(&mut self, api: &mut Api) {
        let me = api.node_id();
        let members = api.members().clone();
        let new_nodes = members.difference(&self.agreed);
        let lists = std::mem::take(&mut self.joinlists);
        // What each new node says it has, by group.
        let mut claimed: BTreeMap<GroupName, Vec<(NodeId, &JoinEntry)>> = BTreeMap::new();
        for (&node, entries) in &lists {
            if new_nodes.contains(node) {
                for e in entries {
                    claimed.entry(e.group.clone()).or_default().push((node, e));
                }
            }
        }
        let mut names: Vec<GroupName> = self.groups.keys().cloned().collect();
        names.extend(claimed.keys().cloned());
        names.sort();
        names.dedup();
        for group in names {
            let claims = claimed.get(&group).map(Vec::as_slice).unwrap_or_default();
            let mut left = Vec::new();
            if let Some(ms) = self.groups.get_mut(&group) {
                ms.retain(|m| {
                    let stale = new_nodes.contains(NodeId(m.nodeid))
                        && !claims
                            .iter()
                            .any(|(n, e)| n.0 == m.nodeid && e.pid == m.pid && e.conn == m.conn);
                    if stale {
                        left.push(m.address(Reason::NodeDown));
                    }
                    !stale
                });
                if ms.is_empty() {
                    self.groups.remove(&group);
                }
            }
            let mut joined = Vec::new();
            for &(node, e) in claims {
                if self.find(&group, node.0, e.pid).is_none() {
                    let m = Member {
                        nodeid: node.0,
                        pid: e.pid,
                        conn: e.conn,
                        since: e.since,
                    };
                    joined.push(m.address(Reason::NodeUp));
                    self.insert(&group, m);
                }
            }
            if left.is_empty() && joined.is_empty() {
                continue;
            }
            if !left.is_empty() {
                warn!(target: "cpg", "group {group}: {} processes of rejoining nodes were gone", left.len());
            }
            let to = self.local_members(me, &group);
            self.confchg_cb(api, &group, &to, left, joined);
        }
        self.agreed = members;
    }
}

impl Service for Cpg {
    const ID: ServiceId = ServiceId::CPG;
    const NAME: &'static str = "cpg";
    const VERSION: SaVersion = SaVersion::B_01_01;
    const LIB: &'static [LibHandler<Self>] = &[
        LibHandler {
            id: req::JOIN,
            flow_control: true,
            needs_sync: true,
            handler: Cpg::lib_join,
        },
        LibHandler {
            id: req::LEAVE,
            flow_control: true,
            needs_sync: true,
            handler: Cpg::lib_leave,
        },
        LibHandler {
            id: req::MCAST,
            flow_control: true,
            needs_sync: true,
            handler: Cpg::lib_mcast,
        },
        LibHandler {
            id: req::MEMBERSHIP_GET,
            flow_control: false,
            needs_sync: true,
            handler: Cpg::lib_membership_get,
        },
        LibHandler {
            id: req::LOCAL_GET,
            flow_control: false,
            needs_sync: false,
            handler: Cpg::lib_local_get,
        },
    ];
    const EXEC: &'static [ExecHandler<Self>] = &[
        ExecHandler {
            id: exec::JOIN,
            handler: Cpg::exec_join,
        },
        ExecHandler {
            id: exec::LEAVE,
            handler: Cpg::exec_leave,
        },
        ExecHandler {
            id: exec::MCAST,
            handler: Cpg::exec_mcast,
        },
        ExecHandler {
            id: exec::PROCDOWN,
            handler: Cpg::exec_procdown,
        },
        ExecHandler {
            id: exec::JOINLIST,
            handler: Cpg::exec_joinlist,
        },
    ];

    fn exec_init(&mut self, api: &mut Api) {
        self.agreed = NodeSet::single(api.node_id());
    }

    fn lib_init(&mut self, _api: &mut Api, conn: ConnId, _info: ConnInfo) -> Result<(), SaError> {
        self.conns.insert(conn, ConnState::Unjoined);
        Ok(())
    }

    fn lib_exit(&mut self, api: &mut Api, conn: ConnId) {
        let (group, pid) = match self.conns.remove(&conn) {
            Some(
                ConnState::JoinStarted { group, pid }
                | ConnState::Joined { group, pid }
                | ConnState::LeaveStarted { group, pid },
            ) => (group, pid),
            _ => return,
        };
        let _ = api.mcast_msg(
            exec::PROCDOWN,
            &ProcMsg {
                conn: conn.0,
                pid,
                group,
            },
        );
    }

    fn confchg(&mut self, api: &mut Api, change: &ConfChange) {
        match change.kind {
            ConfKind::Regular => {
                if self.syncing {
                    // A regular configuration without a transitional one before it.
                    self.end_round(api);
                }
                self.ring = Some(change.ring_id);
                self.joins_in_ring = 0;
                self.syncing = true;
                self.joinlists.clear();
            }
            ConfKind::Transitional => {
                if self.syncing {
                    self.end_round(api);
                }
                self.agreed = self.agreed.intersection(&change.members);
                let me = api.node_id();
                let names: Vec<GroupName> = self.groups.keys().cloned().collect();
                for group in names {
                    let mut left = Vec::new();
                    if let Some(ms) = self.groups.get_mut(&group) {
                        ms.retain(|m| {
                            let gone = !change.members.contains(NodeId(m.nodeid));
                            if gone {
                                left.push(m.address(Reason::NodeDown));
                            }
                            !gone
                        });
                        if ms.is_empty() {
                            self.groups.remove(&group);
                        }
                    }
                    if !left.is_empty() {
                        let to = self.local_members(me, &group);
                        self.confchg_cb(api, &group, &to, left, Vec::new());
                    }
                }
            }
        }
    }

    /// Multicasts this node's own processes, in chunks, all at once.
    fn sync_process(&mut self, api: &mut Api) -> SyncProgress {
        let Some(ring) = api.ring_id() else {
            return SyncProgress::Done;
        };
        let me = api.node_id().0;
        let entries: Vec<JoinEntry> = self
            .groups
            .iter()
            .flat_map(|(g, ms)| {
                ms.iter().filter(|m| m.nodeid == me).map(|m| JoinEntry {
                    group: g.clone(),
                    pid: m.pid,
                    conn: m.conn,
                    since: m.since,
                })
            })
            .collect();
        for chunk in entries.chunks(JOINLIST_CHUNK) {
            let msg = JoinListMsg {
                ring,
                entries: chunk.to_vec(),
            };
            if let Err(e) = api.mcast_msg(exec::JOINLIST, &msg) {
                warn!(target: "cpg", "joinlist not sent: {e}");
            }
        }
        SyncProgress::Done
    }

    fn sync_activate(&mut self, api: &mut Api) {
        self.merge_joinlists(api);
        self.end_round(api);
    }

    fn sync_abort(&mut self, api: &mut Api) {
        self.end_round(api);
    }
}

#[cfg(test)]
mod tests;
