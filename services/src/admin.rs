//! The admin service: operator queries (`aisctl status`, `aisctl members`), answered by
//! the node the tool is connected to from what that node knows: the current regular
//! configuration and its quorum (from the registry), and the names, addresses and
//! counters only the daemon has (the [`ais_exec::HostStatus`] snapshot).
//!
//! Nothing is multicast and nothing is replicated, so the service has no executive
//! handlers and answers even while the sync framework runs (an operator wants to see a
//! cluster that is busy changing). Addresses and counters are asked for fresh on each
//! request ([`Api::want_host_status`]); the answer goes out from the
//! [`Service::host_status`] hook once the daemon has supplied them, within the same turn
//! of its event loop.

use ais_exec::{Api, ConnId, ExecHandler, HostStatus, LibHandler, Service};
use ais_proto::admin::{
    req, CounterValue, Member, MembersRes, QuorumInfo, RingId, StatusRes, ADMIN_COUNTERS_MAX,
    ADMIN_MEMBERS_MAX,
};
use ais_proto::{Encode, SaError, SaVersion, ServiceId};
use bytes::Bytes;
use log::{debug, warn};

/// Most requests that may wait for the host status at once; more are answered
/// `TryAgain`. The daemon answers within one turn of its loop, so only a client flooding
/// requests without reading answers could reach it.
const WAITING_MAX: usize = 1024;

/// The admin service; its only state is the requests waiting for the host status.
#[derive(Debug, Default)]
pub struct Admin {
    /// `(connection, request id)`, in arrival order.
    waiting: Vec<(ConnId, u32)>,
}

impl Admin {
    pub fn new() -> Admin {
        Admin::default()
    }

    /// Requests waiting for the daemon's host status.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn lib_status(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
        self.enqueue(api, conn, req::STATUS, body);
    }

    fn lib_members(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
        self.enqueue(api, conn, req::MEMBERS, body);
    }

    fn enqueue(&mut self, api: &mut Api, conn: ConnId, id: u32, body: Bytes) {
        if !body.is_empty() {
            warn!(target: "admin", "{conn}: request {id} with a {}-byte body; it takes none", body.len());
            api.response(conn, id, SaError::InvalidParam, Bytes::new());
            return;
        }
        if self.waiting.len() >= WAITING_MAX {
            api.response(conn, id, SaError::TryAgain, Bytes::new());
            return;
        }
        self.waiting.push((conn, id));
        api.want_host_status();
    }
}

/// The membership part of every answer, from the registry's configuration and quorum and
/// the host's names and addresses.
fn members_res(api: &Api) -> MembersRes {
    let host: &HostStatus = api.host_status();
    let me = api.node_id();
    let members = api
        .members()
        .iter()
        .take(ADMIN_MEMBERS_MAX)
        .map(|n| Member {
            node_id: n.0,
            votes: api.votes_of(n),
            name: host.name_of(n).unwrap_or_default().to_owned(),
            address: host.address_of(n).unwrap_or_default().to_owned(),
        })
        .collect();
    MembersRes {
        node_id: me.0,
        node_name: host.name_of(me).unwrap_or_default().to_owned(),
        ring_id: api.ring_id().map(|r| RingId {
            rep: r.rep.0,
            seq: r.seq,
        }),
        quorate: api.is_quorate(),
        members,
    }
}

impl Service for Admin {
    const ID: ServiceId = ServiceId::ADMIN;
    const NAME: &'static str = "admin";
    const VERSION: SaVersion = SaVersion::B_01_01;
    const LIB: &'static [LibHandler<Self>] = &[
        LibHandler {
            id: req::STATUS,
            flow_control: false,
            needs_sync: false,
            handler: Admin::lib_status,
        },
        LibHandler {
            id: req::MEMBERS,
            flow_control: false,
            needs_sync: false,
            handler: Admin::lib_members,
        },
    ];
    const EXEC: &'static [ExecHandler<Self>] = &[];
    /// Nothing replicated: no sync round for it.
    const SYNC: bool = false;

    fn lib_exit(&mut self, _api: &mut Api, conn: ConnId) {
        self.waiting.retain(|(c, _)| *c != conn);
    }

    fn host_status(&mut self, api: &mut Api) {
        if self.waiting.is_empty() {
            return;
        }
        let q = *api.quorum();
        let members = members_res(api);
        let quorum = QuorumInfo {
            quorate: q.quorate,
            enforced: q.enforced,
            two_node: q.two_node,
            expected_votes: q.expected_votes,
            total_votes: q.total_votes,
            needed: q.needed,
        };
        let counters: Vec<CounterValue> = api
            .host_status()
            .counters
            .iter()
            .take(ADMIN_COUNTERS_MAX)
            .map(|c| CounterValue {
                name: c.name.to_owned(),
                value: c.value,
            })
            .collect();
        for (conn, id) in std::mem::take(&mut self.waiting) {
            let body = if id == req::STATUS {
                StatusRes {
                    members: members.clone(),
                    quorum,
                    counters: counters.clone(),
                }
                .to_bytes()
            } else {
                members.to_bytes()
            };
            debug!(target: "admin", "{conn}: answering request {id} ({} bytes)", body.len());
            api.response(conn, id, SaError::Ok, body);
        }
    }
}

#[cfg(test)]
mod tests;
