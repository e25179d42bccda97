//! MEMB, the membership event stream of the OCF cluster event draft: subscribers are told
//! of every new primary membership (`m_sequence`, members oldest first, who came and
//! went), of the loss of quorum, of the exact last primary membership coming back, and
//! of their node's eviction.
//!
//! # Replicated state
//!
//! Each node keeps a [`History`]: the last primary membership it took part in (its
//! sequence, its Totem ring, and members with `born_on`) and whether it is in it now. After every regular
//! configuration each member announces its history in the sync round; at activation
//! every member runs [`history::decide`] on the same announcements with the same quorum
//! verdict ([`Api::is_quorate`]), so all reach the same history and their subscribers
//! hear the same events in the same order. The rules are in [`history`].
//!
//! A round's outcome is fixed once every member's announcement is in; a member applies
//! it at activation, or when the round is aborted after that point (see
//! [`Memb::decide_if_complete`]). The stream needs no messages outside sync: nothing but
//! configurations changes it.

mod history;

use std::collections::{BTreeMap, BTreeSet};

use ais_exec::{Api, ConnId, ExecHandler, LibHandler, Service, SyncProgress};
use ais_proto::codec::{get_bool, get_u32, get_u64};
use ais_proto::memb::{
    cb, get_members, put_members, req, EventKind, MembEvent, Member, Snapshot, MEMB_VERSION,
};
use ais_proto::{Decode, DecodeError, Encode, SaError, SaVersion, ServiceId};
use bytes::{BufMut, Bytes, BytesMut};
use log::{info, warn};
use totem::{ConfChange, ConfKind, NodeId, RingId};

pub use history::{Born, Event, History};

/// Executive message ids.
pub mod exec {
    /// Sync: the sender's [`super::History`], tagged with the ring.
    pub const ANNOUNCE: u16 = 0;
}

/// `ANNOUNCE`: a member's history, in the ring whose sync round it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Announce {
    ring: RingId,
    history: History,
}

fn to_wire(b: &[Born]) -> Vec<Member> {
    b.iter()
        .map(|b| Member {
            node_id: b.node.0,
            born_on: b.born_on,
        })
        .collect()
}

fn from_wire(m: &[Member]) -> Vec<Born> {
    m.iter()
        .map(|m| Born {
            node: NodeId(m.node_id),
            born_on: m.born_on,
        })
        .collect()
}

impl Encode for Announce {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.ring.rep.0);
        out.put_u64(self.ring.seq);
        out.put_u32(self.history.seq);
        let primary_ring = self.history.ring.unwrap_or(RingId {
            rep: NodeId(0),
            seq: 0,
        });
        out.put_u32(primary_ring.rep.0);
        out.put_u64(primary_ring.seq);
        out.put_u8(u8::from(self.history.primary));
        put_members(out, &to_wire(&self.history.members));
    }
}

impl Decode for Announce {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let rep = NodeId(get_u32(buf)?);
        let seq = get_u64(buf)?;
        Ok(Announce {
            ring: RingId { rep, seq },
            history: History {
                seq: get_u32(buf)?,
                ring: {
                    let rep = NodeId(get_u32(buf)?);
                    let seq = get_u64(buf)?;
                    // Node id 0 is never a node: no primary membership yet.
                    (rep.0 != 0).then_some(RingId { rep, seq })
                },
                primary: get_bool(buf)?,
                members: from_wire(&get_members(buf)?),
            },
        })
    }
}

/// A round's outcome, waiting to be applied.
#[derive(Debug)]
struct Decided {
    ring: RingId,
    history: History,
    events: Vec<Event>,
}

/// The service: see the module documentation.
#[derive(Debug, Default)]
pub struct Memb {
    history: History,
    /// The regular configuration whose sync round is running, and its members.
    round: Option<(RingId, BTreeSet<NodeId>)>,
    /// Announcements of the running round.
    announced: BTreeMap<NodeId, History>,
    /// Whether this node's announcement of the running round is out.
    sent: bool,
    /// The round's outcome, fixed once every member's announcement is in: see
    /// [`Memb::decide_if_complete`].
    decided: Option<Decided>,
    /// Local connections that subscribed.
    subscribers: BTreeSet<ConnId>,
}

impl Memb {
    pub fn new() -> Memb {
        Memb::default()
    }

    /// This node's history (for tests and status tools).
    pub fn history(&self) -> &History {
        &self.history
    }

    fn lib_start(&mut self, api: &mut Api, conn: ConnId, _body: Bytes) {
        self.subscribers.insert(conn);
        let snapshot = Snapshot {
            local_node_id: api.node_id().0,
            sequence: self.history.seq,
            primary: self.history.primary,
            members: to_wire(&self.history.members),
        };
        api.response(conn, req::START, SaError::Ok, snapshot.to_bytes());
    }

    fn lib_stop(&mut self, api: &mut Api, conn: ConnId, _body: Bytes) {
        let error = if self.subscribers.remove(&conn) {
            SaError::Ok
        } else {
            SaError::NotExist
        };
        api.response(conn, req::STOP, error, Bytes::new());
    }

    fn exec_announce(&mut self, api: &mut Api, from: NodeId, body: Bytes) {
        let msg = match Announce::decode_exact(body) {
            Ok(m) => m,
            Err(e) => {
                warn!(target: "memb", "announcement from node {from} dropped: {e}");
                return;
            }
        };
        // A round's announcements are delivered in its ring; anything else is stale.
        if self
            .round
            .as_ref()
            .is_some_and(|(ring, _)| *ring == msg.ring)
        {
            self.announced.entry(from).or_insert(msg.history);
            self.decide_if_complete(api);
        }
    }

    /// Once every member's announcement is in, the outcome is fixed: every member that
    /// holds them all computes the same one. A node sends its sync barrier only then, so
    /// if any member activates the round, every member holds the outcome; one whose
    /// round is aborted before activation (the ring broke while the last barriers were
    /// in flight) applies it anyway, so that no member skips a primary membership that
    /// others announced to their subscribers (and none numbers another one the same).
    fn decide_if_complete(&mut self, api: &mut Api) {
        let Some((ring, members)) = &self.round else {
            return;
        };
        if self.decided.is_some() || !members.iter().all(|m| self.announced.contains_key(m)) {
            return;
        }
        let quorate = api.is_quorate();
        let (history, events) =
            history::decide(api.node_id(), *ring, members, &self.announced, quorate);
        self.decided = Some(Decided {
            ring: *ring,
            history,
            events,
        });
    }

    /// Makes a round's outcome this node's history and tells the subscribers.
    fn apply(&mut self, api: &mut Api, decided: Decided, how: &str) {
        let ring = decided.ring;
        for ev in &decided.events {
            match ev {
                Event::NewMembership { seq, .. } => {
                    info!(target: "memb", "ring {ring}: new primary membership {seq}{how}")
                }
                Event::NotPrimary { seq, .. } => {
                    info!(target: "memb", "ring {ring}: not primary (last primary membership {seq}){how}")
                }
                Event::PrimaryRestored { seq, .. } => {
                    info!(target: "memb", "ring {ring}: primary membership {seq} restored{how}")
                }
                Event::Evicted { seq } => {
                    warn!(target: "memb", "ring {ring}: primary membership {seq} formed without this node: evicted{how}")
                }
            }
        }
        self.history = decided.history;
        self.tell(api, &decided.events);
    }

    /// Tells every subscriber; an eviction ends their streams.
    fn tell(&mut self, api: &mut Api, events: &[Event]) {
        for ev in events {
            let wire = match ev {
                Event::NewMembership {
                    seq,
                    members,
                    joined,
                    left,
                } => MembEvent {
                    kind: EventKind::NewMembership,
                    sequence: *seq,
                    members: to_wire(members),
                    joined: to_wire(joined),
                    left: to_wire(left),
                },
                Event::NotPrimary { seq, members } => MembEvent {
                    kind: EventKind::NotPrimary,
                    sequence: *seq,
                    members: to_wire(members),
                    joined: Vec::new(),
                    left: Vec::new(),
                },
                Event::PrimaryRestored { seq, members } => MembEvent {
                    kind: EventKind::PrimaryRestored,
                    sequence: *seq,
                    members: to_wire(members),
                    joined: Vec::new(),
                    left: Vec::new(),
                },
                Event::Evicted { seq } => MembEvent {
                    kind: EventKind::Evicted,
                    sequence: *seq,
                    members: Vec::new(),
                    joined: Vec::new(),
                    left: Vec::new(),
                },
            };
            let body = wire.to_bytes();
            for &conn in &self.subscribers {
                api.dispatch(conn, cb::EVENT, body.clone());
            }
            if wire.kind == EventKind::Evicted {
                self.subscribers.clear();
            }
        }
    }
}

impl Service for Memb {
    const ID: ServiceId = ServiceId::MEMB;
    const NAME: &'static str = "memb";
    const VERSION: SaVersion = MEMB_VERSION;
    const LIB: &'static [LibHandler<Self>] = &[
        LibHandler {
            id: req::START,
            flow_control: false,
            // The snapshot is this node's state as of the last activation; events that
            // follow carry on from it, so a subscription need not wait for sync.
            needs_sync: false,
            handler: Memb::lib_start,
        },
        LibHandler {
            id: req::STOP,
            flow_control: false,
            needs_sync: false,
            handler: Memb::lib_stop,
        },
    ];
    const EXEC: &'static [ExecHandler<Self>] = &[ExecHandler {
        id: exec::ANNOUNCE,
        handler: Memb::exec_announce,
    }];

    fn lib_exit(&mut self, _api: &mut Api, conn: ConnId) {
        self.subscribers.remove(&conn);
    }

    fn confchg(&mut self, _api: &mut Api, change: &ConfChange) {
        if change.kind == ConfKind::Regular {
            self.round = Some((change.ring_id, change.members.iter().collect()));
            self.announced.clear();
            self.sent = false;
            self.decided = None;
        }
    }

    /// Announces this node's history, then holds the barrier until every member's
    /// announcement is in (see [`Memb::decide_if_complete`]).
    fn sync_process(&mut self, api: &mut Api) -> SyncProgress {
        let Some((ring, _)) = &self.round else {
            return SyncProgress::Done;
        };
        if !self.sent {
            self.sent = true;
            let msg = Announce {
                ring: *ring,
                history: self.history.clone(),
            };
            if let Err(e) = api.mcast_msg(exec::ANNOUNCE, &msg) {
                warn!(target: "memb", "announcement not sent: {e}");
                return SyncProgress::Done;
            }
            return SyncProgress::Continue;
        }
        if self.decided.is_some() {
            SyncProgress::Done
        } else {
            SyncProgress::Continue
        }
    }

    fn sync_activate(&mut self, api: &mut Api) {
        self.decide_if_complete(api);
        self.round = None;
        self.announced.clear();
        if let Some(decided) = self.decided.take() {
            self.apply(api, decided, "");
        }
    }

    fn sync_abort(&mut self, api: &mut Api) {
        self.round = None;
        self.announced.clear();
        if let Some(decided) = self.decided.take() {
            self.apply(
                api,
                decided,
                " (sync aborted after every announcement was in)",
            );
        }
    }
}

#[cfg(test)]
mod tests;
