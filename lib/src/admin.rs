//! The admin API: an operator's queries to the node it is connected to (what `aisctl`
//! prints). The executive answers from its own view: the current ring, its members with
//! names and addresses, the quorum, and Totem's and the transport's counters.
//!
//! ```no_run
//! use libais::admin::Admin;
//!
//! let admin = Admin::initialize()?;
//! let status = admin.status()?;
//! println!("node {} quorate: {}", status.members.node_id, status.quorum.quorate);
//! # Ok::<(), libais::SaError>(())
//! ```
//!
//! Unlike CPG there are no callbacks and nothing to dispatch, so an [`Admin`] is a plain
//! value owning its connection (`Send + Sync`; requests from several threads are
//! serialized) rather than an entry in a handle table: dropping it closes the
//! connection, and no stale handle can outlive it.

use std::path::Path;

use ais_proto::admin::req;
use ais_proto::{Decode, SaError, SaVersion, ServiceId};
use bytes::Bytes;
use log::warn;

pub use ais_proto::admin::{CounterValue, Member, MembersRes, QuorumInfo, RingId, StatusRes};

use crate::conn::{socket_path, Connection};

/// A connection to the executive's admin service.
pub struct Admin {
    conn: Connection,
}

impl Admin {
    /// Connects to the executive at [`socket_path`] (`$AIS_SOCKET` or the default
    /// runtime path). `TryAgain` when the executive is not running.
    pub fn initialize() -> Result<Admin, SaError> {
        Admin::initialize_at(socket_path())
    }

    /// [`Admin::initialize`] with the executive's socket at `path`.
    pub fn initialize_at(path: impl AsRef<Path>) -> Result<Admin, SaError> {
        let mut version = SaVersion::B_01_01;
        let conn = Connection::connect_at(path, ServiceId::ADMIN, &mut version)?;
        Ok(Admin { conn })
    }

    /// Everything: ring, members, quorum, counters.
    pub fn status(&self) -> Result<StatusRes, SaError> {
        decode(self.conn.request(req::STATUS, &[])?)
    }

    /// The ring and its members only.
    pub fn members(&self) -> Result<MembersRes, SaError> {
        decode(self.conn.request(req::MEMBERS, &[])?)
    }

    /// Closes the connection (as dropping it does).
    pub fn finalize(self) {
        self.conn.close();
    }
}

fn decode<T: Decode>(body: Bytes) -> Result<T, SaError> {
    T::decode_exact(body).map_err(|e| {
        warn!(target: "libais", "undecodable admin response: {e}");
        SaError::MessageError
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Admin>();
    }
}
