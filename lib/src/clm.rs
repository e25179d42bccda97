//! The CLM (cluster membership) API of SA Forum AIS B.01.01, Rust first: the
//! `saClm*` calls as methods of a [`Clm`] handle.
//!
//! ```no_run
//! use libais::clm::{Clm, ClmCallbacks, TrackFlags, LOCAL_NODE_ID};
//! use libais::{DispatchFlags, SaVersion};
//!
//! let callbacks = ClmCallbacks::default().on_track(|view, members| {
//!     println!("view {}: {members} members", view.view_number);
//! });
//! let mut version = SaVersion::B_01_01;
//! let clm = Clm::initialize(callbacks, &mut version)?;
//! let me = clm.node_get(LOCAL_NODE_ID, std::time::Duration::from_secs(1))?;
//! println!("this is node {} ({})", me.node_id, me.node_name);
//! if let Some(view) = clm.track(TrackFlags::CURRENT)? {
//!     println!("{} members now", view.member_ids().len());
//! }
//! clm.track(TrackFlags::CHANGES)?;
//! clm.dispatch(DispatchFlags::Blocking)?; // until finalize from another thread
//! # Ok::<(), libais::SaError>(())
//! ```
//!
//! A [`Clm`] is `Send + Sync`: requests from several threads are serialized, callbacks
//! run on the thread that calls [`Clm::dispatch`], one at a time, in the order the
//! executive sent them. After [`Clm::finalize`] every call returns `BadHandle`;
//! dropping a `Clm` finalizes it.

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ais_proto::clm::{
    cb, req, track, NodeGetAsyncReq, NodeGetCb, NodeGetReq, NodeGetRes, TrackCb, TrackReq, TrackRes,
};
use ais_proto::ipc::{ResponseFrame, CALLBACK_FLAG};
use ais_proto::{codec, Decode, Encode, SaError, SaVersion, ServiceId};
use bytes::Bytes;
use log::warn;

pub use ais_proto::clm::{
    AddressFamily, ClusterChange, ClusterNode, ClusterNotification, ClusterNotificationBuffer,
    NodeAddress, CLM_NODES_MAX, LOCAL_NODE_ID,
};

use crate::conn::{socket_path, Connection};
use crate::dispatch::{DispatchFlags, Dispatcher};
use crate::handle::{Handle, HandleDb};

/// `saClmClusterTrackCallback(notificationBuffer, numberOfMembers)`: a new view, with
/// the current number of members.
pub type TrackFn = Box<dyn FnMut(&ClusterNotificationBuffer, u32) + Send>;
/// `saClmClusterNodeGetCallback(invocation, node or error)`.
pub type NodeGetFn = Box<dyn FnMut(u64, Result<&ClusterNode, SaError>) + Send>;

/// The application's callbacks (`SaClmCallbacksT`); a missing one ignores its callback.
#[derive(Default)]
pub struct ClmCallbacks {
    pub track: Option<TrackFn>,
    pub node_get: Option<NodeGetFn>,
}

impl ClmCallbacks {
    pub fn on_track(
        mut self,
        f: impl FnMut(&ClusterNotificationBuffer, u32) + Send + 'static,
    ) -> ClmCallbacks {
        self.track = Some(Box::new(f));
        self
    }

    pub fn on_node_get(
        mut self,
        f: impl FnMut(u64, Result<&ClusterNode, SaError>) + Send + 'static,
    ) -> ClmCallbacks {
        self.node_get = Some(Box::new(f));
        self
    }

    /// Decodes one callback frame and runs the matching callback. An undecodable frame
    /// or an unknown callback id is `MessageError`.
    fn run(&mut self, frame: ResponseFrame) -> Result<(), SaError> {
        let id = frame.id;
        let undecodable = move |e: codec::DecodeError| {
            warn!(target: "libais", "undecodable CLM callback {id:#x}: {e}");
            SaError::MessageError
        };
        match id & !CALLBACK_FLAG {
            cb::TRACK => {
                let m = TrackCb::decode_exact(frame.body).map_err(undecodable)?;
                if let Some(f) = &mut self.track {
                    f(&m.view, m.number_of_members);
                }
            }
            cb::NODE_GET => {
                let m = NodeGetCb::decode_exact(frame.body).map_err(undecodable)?;
                if let Some(f) = &mut self.node_get {
                    f(m.invocation, m.result.as_ref().map_err(|e| *e));
                }
            }
            other => {
                warn!(target: "libais", "unknown CLM callback {other}");
                return Err(SaError::MessageError);
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for ClmCallbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClmCallbacks")
            .field("track", &self.track.is_some())
            .field("node_get", &self.node_get.is_some())
            .finish()
    }
}

/// `SaUint8T trackFlags`: combine with `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrackFlags(pub u8);

impl TrackFlags {
    /// Report the current view now.
    pub const CURRENT: TrackFlags = TrackFlags(track::CURRENT);
    /// At every new view, report every member and every node that left.
    pub const CHANGES: TrackFlags = TrackFlags(track::CHANGES);
    /// At every new view, report only the nodes that changed.
    pub const CHANGES_ONLY: TrackFlags = TrackFlags(track::CHANGES_ONLY);

    pub fn contains(self, other: TrackFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for TrackFlags {
    type Output = TrackFlags;
    fn bitor(self, rhs: TrackFlags) -> TrackFlags {
        TrackFlags(self.0 | rhs.0)
    }
}

/// Why [`Clm::track_into`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackError {
    /// `SA_AIS_ERR_NO_SPACE`: the view has `needed` entries, more than the caller's
    /// capacity. Nothing was started.
    NoSpace { needed: u32 },
    /// Any other error.
    Sa(SaError),
}

impl TrackError {
    /// The SA Forum error code.
    pub fn sa_error(self) -> SaError {
        match self {
            TrackError::NoSpace { .. } => SaError::NoSpace,
            TrackError::Sa(e) => e,
        }
    }
}

impl From<SaError> for TrackError {
    fn from(e: SaError) -> TrackError {
        TrackError::Sa(e)
    }
}

impl std::fmt::Display for TrackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrackError::NoSpace { needed } => write!(f, "no space: {needed} entries needed"),
            TrackError::Sa(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TrackError {}

struct ClmInner {
    conn: Connection,
    dispatcher: Dispatcher<ClmCallbacks>,
}

static CLM_HANDLES: HandleDb<ClmInner> = HandleDb::new();

/// A CLM handle (`SaClmHandleT`).
#[derive(Debug)]
pub struct Clm {
    handle: Handle,
}

impl Clm {
    /// `saClmInitialize`: connects to the executive at [`socket_path`] (`$AIS_SOCKET` or
    /// the default runtime path). `version` is the version asked for; on return (`Ok` or
    /// `Err(Version)`) it holds the version the executive implements. `TryAgain` when
    /// the executive is not running.
    pub fn initialize(callbacks: ClmCallbacks, version: &mut SaVersion) -> Result<Clm, SaError> {
        Clm::initialize_at(socket_path(), callbacks, version)
    }

    /// [`Clm::initialize`] with the executive's socket at `path`.
    pub fn initialize_at(
        path: impl AsRef<Path>,
        callbacks: ClmCallbacks,
        version: &mut SaVersion,
    ) -> Result<Clm, SaError> {
        let conn = Connection::connect_at(path, ServiceId::CLM, version)?;
        let handle = CLM_HANDLES.insert(ClmInner {
            conn,
            dispatcher: Dispatcher::new(callbacks),
        })?;
        Ok(Clm { handle })
    }

    /// This value's entry in the process-wide CLM handle table.
    pub fn handle(&self) -> Handle {
        self.handle
    }

    fn inner(&self) -> Result<Arc<ClmInner>, SaError> {
        CLM_HANDLES.get(self.handle)
    }

    /// `saClmClusterTrack` with no buffer of the caller's. With `CURRENT` alone it
    /// returns the current view (every member, `NoChange`) and tracks nothing. With
    /// `CHANGES` or `CHANGES_ONLY` it starts tracking (`Ok(None)`); `CURRENT` with one
    /// of them also delivers the current view through the track callback. `BadFlags`
    /// for no flag, unknown bits, or both change flags; `TryAgain` before the executive
    /// installed its first view.
    pub fn track(&self, flags: TrackFlags) -> Result<Option<ClusterNotificationBuffer>, SaError> {
        let sync = flags == TrackFlags::CURRENT;
        let res = self
            .track_request(flags, None)
            .map_err(TrackError::sa_error)?;
        Ok(sync.then_some(res.view))
    }

    /// `saClmClusterTrack` with a buffer of `capacity` entries: `flags` must include
    /// `CURRENT`; the current view comes back here (and tracking starts if a change
    /// flag is set). `NoSpace { needed }` when the view has more than `capacity`
    /// entries; then nothing starts.
    pub fn track_into(
        &self,
        flags: TrackFlags,
        capacity: u32,
    ) -> Result<ClusterNotificationBuffer, TrackError> {
        if !flags.contains(TrackFlags::CURRENT) {
            return Err(TrackError::Sa(SaError::BadFlags));
        }
        Ok(self.track_request(flags, Some(capacity))?.view)
    }

    fn track_request(
        &self,
        flags: TrackFlags,
        max_items: Option<u32>,
    ) -> Result<TrackRes, TrackError> {
        let inner = self.inner()?;
        let body = TrackReq {
            flags: flags.0,
            max_items,
        }
        .to_bytes();
        let frame = inner.conn.request_frame(req::TRACK_START, &body)?;
        match frame.sa_error() {
            SaError::Ok => Ok(decode_response::<TrackRes>(frame.body)?),
            SaError::NoSpace => {
                let res = decode_response::<TrackRes>(frame.body)?;
                Err(TrackError::NoSpace { needed: res.needed })
            }
            e => Err(TrackError::Sa(e)),
        }
    }

    /// `saClmClusterTrackStop`: no more track callbacks. `NotExist` if not tracking.
    pub fn track_stop(&self) -> Result<(), SaError> {
        self.inner()?.conn.request(req::TRACK_STOP, &[])?;
        Ok(())
    }

    /// `saClmClusterNodeGet`: the record of `node_id` ([`LOCAL_NODE_ID`] for the node
    /// this process runs on). `InvalidParam` for a node the cluster does not know.
    /// Before the executive's first view it waits for it, up to `timeout` (`Timeout`).
    pub fn node_get(&self, node_id: u32, timeout: Duration) -> Result<ClusterNode, SaError> {
        let body = NodeGetReq {
            node_id,
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
        };
        let res = self.inner()?.conn.request_msg(req::NODE_GET, &body)?;
        Ok(decode_response::<NodeGetRes>(res)?.node)
    }

    /// `saClmClusterNodeGetAsync`: the answer comes through the node get callback with
    /// `invocation`; for an unknown node it carries `InvalidParam`.
    pub fn node_get_async(&self, invocation: u64, node_id: u32) -> Result<(), SaError> {
        let body = NodeGetAsyncReq {
            invocation,
            node_id,
        };
        self.inner()?.conn.request_msg(req::NODE_GET_ASYNC, &body)?;
        Ok(())
    }

    /// `saClmDispatch`: runs callbacks on this thread as `flags` says (see
    /// [`DispatchFlags`]). `BadHandle` after finalize; a `Blocking` dispatch running
    /// when another thread finalizes returns `Ok`. `Library` when the executive went
    /// away. `MessageError` for an undecodable callback (dropped).
    pub fn dispatch(&self, flags: DispatchFlags) -> Result<(), SaError> {
        let inner = self.inner()?;
        inner
            .dispatcher
            .dispatch(&inner.conn, flags, ClmCallbacks::run)
    }

    /// Whether callbacks already read from the socket wait in the library (a request
    /// reads past them to its response): dispatch before going back to poll.
    pub fn callbacks_pending(&self) -> Result<bool, SaError> {
        Ok(self.inner()?.conn.callbacks_pending())
    }

    /// `saClmSelectionObjectGet`: an fd that is readable when a callback may be
    /// waiting; then call `dispatch(All)`. See [`Clm::callbacks_pending`].
    pub fn selection_object(&self) -> Result<RawFd, SaError> {
        Ok(self.inner()?.conn.as_raw_fd())
    }

    /// `saClmFinalize`: closes the connection (tracking ends) and invalidates the
    /// handle. `BadHandle` if already finalized.
    pub fn finalize(&self) -> Result<(), SaError> {
        let inner = CLM_HANDLES.remove(self.handle)?;
        inner.conn.close();
        Ok(())
    }
}

fn decode_response<T: Decode>(body: Bytes) -> Result<T, SaError> {
    T::decode_exact(body).map_err(|e| {
        warn!(target: "libais", "undecodable CLM response: {e}");
        SaError::MessageError
    })
}

impl AsRawFd for Clm {
    /// [`Clm::selection_object`], or -1 once finalized.
    fn as_raw_fd(&self) -> RawFd {
        self.selection_object().unwrap_or(-1)
    }
}

impl Drop for Clm {
    fn drop(&mut self) {
        let _ = self.finalize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_combine_and_a_clm_is_send_and_sync() {
        let f = TrackFlags::CURRENT | TrackFlags::CHANGES_ONLY;
        assert_eq!(f.0, 0x05);
        assert!(f.contains(TrackFlags::CURRENT));
        assert!(!f.contains(TrackFlags::CHANGES));
        fn check<T: Send + Sync>() {}
        check::<Clm>();
    }
}
