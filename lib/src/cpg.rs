//! The CPG (closed process group) API, as corosync's `cpg_*` calls offer it, Rust first.
//!
//! ```no_run
//! use libais::cpg::{Cpg, CpgCallbacks, GroupName, Guarantee};
//! use libais::DispatchFlags;
//!
//! let callbacks = CpgCallbacks::default()
//!     .on_deliver(|group, nodeid, pid, msg| println!("{group}: {nodeid}/{pid} sent {msg:?}"))
//!     .on_confchg(|group, members, left, joined| {
//!         println!("{group}: {} members, {} left, {} joined", members.len(), left.len(), joined.len())
//!     });
//! let cpg = Cpg::initialize(callbacks)?;
//! let group = GroupName::new(&b"example"[..]).unwrap();
//! cpg.join(&group)?;
//! cpg.mcast_joined(Guarantee::Agreed, b"hello")?;
//! cpg.dispatch(DispatchFlags::Blocking)?; // until finalize from another thread
//! # Ok::<(), libais::SaError>(())
//! ```
//!
//! A [`Cpg`] is `Send + Sync`: requests from several threads are serialized, and
//! callbacks run on whichever thread calls [`Cpg::dispatch`], one at a time, in the
//! order the executive sent them. Callbacks may call the `Cpg`'s requests
//! (`mcast_joined` from `deliver` is fine) but not its `dispatch` (`BadOperation`).
//!
//! The value is a handle into a process-wide table: after [`Cpg::finalize`] every call
//! returns `BadHandle`. Dropping a `Cpg` finalizes it.

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ais_proto::cpg::{
    cb, req, ConfchgCb, DeliverCb, GroupReq, LocalGetRes, MembershipGetReq, MembershipGetRes,
};
use ais_proto::ipc::{ResponseFrame, CALLBACK_FLAG};
use ais_proto::{codec, Decode, Encode, SaError, SaVersion, ServiceId};
use bytes::{BufMut, Bytes, BytesMut};
use log::warn;

pub use ais_proto::cpg::{Address, GroupName, Reason, CPG_MEMBERS_MAX, CPG_MSG_MAX, CPG_NAME_MAX};

use crate::conn::{socket_path, Connection};
use crate::dispatch::{DispatchFlags, Dispatcher};
use crate::handle::{Handle, HandleDb};

/// The ordering a message asks for (corosync's `cpg_guarantee_t`). The executive
/// delivers every message in agreed order, which satisfies all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Guarantee {
    Unordered = 0,
    Fifo = 1,
    Agreed = 2,
    Safe = 3,
}

/// `deliver(group, nodeid, pid, message)`: a message of a joined group, in agreed order.
pub type DeliverFn = Box<dyn FnMut(&GroupName, u32, u32, &[u8]) + Send>;
/// `confchg(group, members, left, joined)`: the group's members after a change, those
/// who left and those who joined, each with its [`Reason`].
pub type ConfchgFn = Box<dyn FnMut(&GroupName, &[Address], &[Address], &[Address]) + Send>;

/// The application's callbacks (`cpg_callbacks_t`); a missing one ignores its callback.
#[derive(Default)]
pub struct CpgCallbacks {
    pub deliver: Option<DeliverFn>,
    pub confchg: Option<ConfchgFn>,
}

impl CpgCallbacks {
    pub fn on_deliver(
        mut self,
        f: impl FnMut(&GroupName, u32, u32, &[u8]) + Send + 'static,
    ) -> CpgCallbacks {
        self.deliver = Some(Box::new(f));
        self
    }

    pub fn on_confchg(
        mut self,
        f: impl FnMut(&GroupName, &[Address], &[Address], &[Address]) + Send + 'static,
    ) -> CpgCallbacks {
        self.confchg = Some(Box::new(f));
        self
    }

    /// Decodes one callback frame and runs the matching callback. An undecodable frame
    /// or an unknown callback id is `MessageError`.
    fn run(&mut self, frame: ResponseFrame) -> Result<(), SaError> {
        let id = frame.id;
        let undecodable = move |e: codec::DecodeError| {
            warn!(target: "libais", "undecodable CPG callback {id:#x}: {e}");
            SaError::MessageError
        };
        match id & !CALLBACK_FLAG {
            cb::DELIVER => {
                let m = DeliverCb::decode_exact(frame.body).map_err(undecodable)?;
                if let Some(f) = &mut self.deliver {
                    f(&m.group, m.nodeid, m.pid, &m.data);
                }
            }
            cb::CONFCHG => {
                let m = ConfchgCb::decode_exact(frame.body).map_err(undecodable)?;
                if let Some(f) = &mut self.confchg {
                    f(&m.group, &m.members, &m.left, &m.joined);
                }
            }
            other => {
                warn!(target: "libais", "unknown CPG callback {other}");
                return Err(SaError::MessageError);
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for CpgCallbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpgCallbacks")
            .field("deliver", &self.deliver.is_some())
            .field("confchg", &self.confchg.is_some())
            .finish()
    }
}

struct CpgInner {
    conn: Connection,
    dispatcher: Dispatcher<CpgCallbacks>,
    /// A join succeeded and no leave was asked since: multicasts are pipelined (the
    /// executive only refuses them for reasons known here), else each waits for its
    /// answer so that `NotExist` reaches its own call.
    joined: AtomicBool,
}

static CPG_HANDLES: HandleDb<CpgInner> = HandleDb::new();

/// `MCAST`'s body, encoded from a borrowed slice (the layout of
/// [`ais_proto::cpg::McastReq`], without copying the message into a `Bytes` first).
struct McastBody<'a> {
    guarantee: Guarantee,
    data: &'a [u8],
}

impl Encode for McastBody<'_> {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.guarantee as u32);
        codec::put_bytes(out, self.data);
    }

    fn size_hint(&self) -> usize {
        8 + self.data.len()
    }
}

/// A CPG handle (`cpg_handle_t`).
#[derive(Debug)]
pub struct Cpg {
    handle: Handle,
}

impl Cpg {
    /// Connects to the executive at [`socket_path`] (`$AIS_SOCKET` or the default
    /// runtime path). `TryAgain` when the executive is not running.
    pub fn initialize(callbacks: CpgCallbacks) -> Result<Cpg, SaError> {
        Cpg::initialize_at(socket_path(), callbacks)
    }

    /// [`Cpg::initialize`] with the executive's socket at `path`.
    pub fn initialize_at(path: impl AsRef<Path>, callbacks: CpgCallbacks) -> Result<Cpg, SaError> {
        let mut version = SaVersion::B_01_01;
        let conn = Connection::connect_at(path, ServiceId::CPG, &mut version)?;
        let handle = CPG_HANDLES.insert(CpgInner {
            conn,
            dispatcher: Dispatcher::new(callbacks),
            joined: AtomicBool::new(false),
        })?;
        Ok(Cpg { handle })
    }

    /// This value's entry in the process-wide CPG handle table.
    pub fn handle(&self) -> Handle {
        self.handle
    }

    fn inner(&self) -> Result<Arc<CpgInner>, SaError> {
        CPG_HANDLES.get(self.handle)
    }

    /// Joins `group` as this process (`std::process::id()`). A connection is in at most
    /// one group at a time. The membership change arrives as a `confchg` callback.
    pub fn join(&self, group: &GroupName) -> Result<(), SaError> {
        let inner = self.inner()?;
        Self::group_request(&inner, req::JOIN, group)?;
        inner.joined.store(true, Ordering::Release);
        Ok(())
    }

    /// Leaves `group`; a last `confchg` reports it.
    pub fn leave(&self, group: &GroupName) -> Result<(), SaError> {
        let inner = self.inner()?;
        inner.joined.store(false, Ordering::Release);
        Self::group_request(&inner, req::LEAVE, group)
    }

    fn group_request(inner: &CpgInner, id: u32, group: &GroupName) -> Result<(), SaError> {
        let body = GroupReq {
            group: group.clone(),
            pid: std::process::id(),
        };
        inner.conn.request_msg(id, &body)?;
        Ok(())
    }

    /// Multicasts `data` to the joined group; every member (this process included)
    /// gets it through `deliver`, in the same order. `TooBig` above [`CPG_MSG_MAX`]
    /// bytes; `TryAgain` when the executive's send queue is full (flow control: retry
    /// later, after dispatching).
    ///
    /// While joined, the call does not wait for the executive's answer: it returns once
    /// the request is written or, while earlier ones are unanswered, queued in the
    /// library to go out with them in one write (at the latest
    /// [`crate::conn::COALESCE_WAIT`] later), with up to [`crate::conn::PIPELINE_MAX`] requests on
    /// their way (see [`crate::conn`]); messages keep their order, and `TryAgain` comes
    /// when that window stays full. An error the executive answered an earlier
    /// multicast with (none is expected while joined) is returned by the next call,
    /// which then sends nothing.
    pub fn mcast_joined(&self, guarantee: Guarantee, data: &[u8]) -> Result<(), SaError> {
        let inner = self.inner()?;
        if data.len() > CPG_MSG_MAX {
            return Err(SaError::TooBig);
        }
        let body = McastBody { guarantee, data };
        if inner.joined.load(Ordering::Acquire) {
            inner.conn.request_msg_pipelined(req::MCAST, &body)
        } else {
            inner.conn.request_msg(req::MCAST, &body)?;
            Ok(())
        }
    }

    /// The current members of `group`, oldest first.
    pub fn membership_get(&self, group: &GroupName) -> Result<Vec<Address>, SaError> {
        let body = MembershipGetReq {
            group: group.clone(),
        };
        let res = self.inner()?.conn.request_msg(req::MEMBERSHIP_GET, &body)?;
        Ok(decode_response::<MembershipGetRes>(res)?.members)
    }

    /// This node's id.
    pub fn local_get(&self) -> Result<u32, SaError> {
        let res = self.inner()?.conn.request(req::LOCAL_GET, &[])?;
        Ok(decode_response::<LocalGetRes>(res)?.nodeid)
    }

    /// Runs callbacks on this thread as `flags` says (see [`DispatchFlags`]).
    /// `BadHandle` after finalize; a `Blocking` dispatch that is running when another
    /// thread finalizes returns `Ok`. `Library` when the executive went away (callbacks
    /// it sent before are delivered first). `MessageError` for an undecodable callback
    /// (dropped; the next dispatch goes on with the next one).
    pub fn dispatch(&self, flags: DispatchFlags) -> Result<(), SaError> {
        let inner = self.inner()?;
        inner
            .dispatcher
            .dispatch(&inner.conn, flags, CpgCallbacks::run)
    }

    /// Whether callbacks already read from the socket wait in the library (a request
    /// reads past them to its response). The fd is not readable for those: a poll loop
    /// dispatches after its requests, or checks this before it polls.
    pub fn callbacks_pending(&self) -> Result<bool, SaError> {
        Ok(self.inner()?.conn.callbacks_pending())
    }

    /// The connection's socket for the application's own poll loop (`cpg_fd_get`):
    /// readable when a callback may be waiting; then call `dispatch(All)` (or `One`).
    ///
    /// Callbacks that a request read on its way to its response wait in the library,
    /// and the socket is not readable for them: dispatch after making requests (or
    /// check [`Cpg::callbacks_pending`]) before going back to poll.
    pub fn fd(&self) -> Result<RawFd, SaError> {
        Ok(self.inner()?.conn.as_raw_fd())
    }

    /// Closes the connection (the executive treats this process as gone from its
    /// group) and invalidates the handle: every later call returns `BadHandle`. Threads
    /// blocked in this handle's requests return `BadHandle`; a `Blocking` dispatch
    /// returns `Ok`. `BadHandle` if already finalized.
    pub fn finalize(&self) -> Result<(), SaError> {
        let inner = CPG_HANDLES.remove(self.handle)?;
        inner.conn.close();
        Ok(())
    }
}

fn decode_response<T: Decode>(body: Bytes) -> Result<T, SaError> {
    T::decode_exact(body).map_err(|e| {
        warn!(target: "libais", "undecodable CPG response: {e}");
        SaError::MessageError
    })
}

impl AsRawFd for Cpg {
    /// [`Cpg::fd`], or -1 once finalized.
    fn as_raw_fd(&self) -> RawFd {
        self.fd().unwrap_or(-1)
    }
}

impl Drop for Cpg {
    fn drop(&mut self) {
        let _ = self.finalize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ais_proto::cpg::McastReq;

    #[test]
    fn the_borrowed_mcast_body_encodes_as_mcast_req() {
        let borrowed = McastBody {
            guarantee: Guarantee::Safe,
            data: b"payload",
        };
        let owned = McastReq {
            guarantee: 3,
            data: Bytes::from_static(b"payload"),
        };
        assert_eq!(borrowed.to_bytes(), owned.to_bytes());
    }

    #[test]
    fn a_cpg_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Cpg>();
        check::<Connection>();
    }
}
