//! The membership event stream (the OCF cluster event draft's membership events).
//!
//! ```no_run
//! use libais::memb::{EventKind, MembershipEvents};
//! use libais::DispatchFlags;
//!
//! let events = MembershipEvents::start(|ev| match ev.kind {
//!     EventKind::NewMembership => println!("membership {}: {:?}", ev.sequence, ev.members),
//!     EventKind::NotPrimary => println!("lost quorum: stop writing shared state"),
//!     EventKind::PrimaryRestored => println!("quorum back, same members: carry on"),
//!     EventKind::Evicted => println!("the cluster went on without us: restart"),
//! })?;
//! let now = events.snapshot();
//! println!("now: sequence {} primary {}", now.sequence, now.primary);
//! events.dispatch(DispatchFlags::Blocking)?; // until finalize or eviction
//! # Ok::<(), libais::SaError>(())
//! ```
//!
//! [`MembershipEvents::start`] subscribes and returns where the stream stands (the last
//! primary membership this node took part in, and whether it still is in it); every
//! later change arrives as one callback through [`MembershipEvents::dispatch`], in the
//! same order and with the same contents on every member of a primary membership:
//!
//! - `NewMembership`: `sequence` is one more than the last primary membership's (the
//!   first is 1), `members` are listed oldest first (by the `born_on` sequence in which
//!   each became a member, then node id), `joined` and `left` relative to the previous
//!   primary membership;
//! - `NotPrimary`: this node's partition lost quorum; `sequence` and `members` are the
//!   last primary membership's;
//! - `PrimaryRestored`: exactly that membership is back and nobody formed a newer one;
//! - `Evicted`: a primary membership formed without this node; the stream ends (a
//!   blocking dispatch returns), and a new subscription starts from the cluster's state.

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ais_proto::ipc::{ResponseFrame, CALLBACK_FLAG};
use ais_proto::memb::{cb, req, MEMB_VERSION};
use ais_proto::{Decode, SaError, ServiceId};
use log::warn;

pub use ais_proto::memb::{EventKind, MembEvent, Member, Snapshot};

use crate::conn::{socket_path, Connection};
use crate::dispatch::{DispatchFlags, Dispatcher};

/// The application's event callback.
pub type EventFn = Box<dyn FnMut(&MembEvent) + Send>;

struct Callbacks {
    on_event: EventFn,
    /// Set when `Evicted` was delivered: the stream is over.
    ended: Arc<AtomicBool>,
}

impl Callbacks {
    fn run(&mut self, frame: ResponseFrame) -> Result<(), SaError> {
        match frame.id & !CALLBACK_FLAG {
            cb::EVENT => {
                let ev = MembEvent::decode_exact(frame.body).map_err(|e| {
                    warn!(target: "libais", "undecodable membership event: {e}");
                    SaError::MessageError
                })?;
                if ev.kind == EventKind::Evicted {
                    self.ended.store(true, Ordering::SeqCst);
                }
                (self.on_event)(&ev);
                Ok(())
            }
            other => {
                warn!(target: "libais", "unknown membership callback {other}");
                Err(SaError::MessageError)
            }
        }
    }
}

/// A subscription to the membership event stream. `Send + Sync`; dropping it (or
/// [`finalize`](Self::finalize)) unsubscribes.
pub struct MembershipEvents {
    conn: Connection,
    dispatcher: Dispatcher<Callbacks>,
    snapshot: Snapshot,
    ended: Arc<AtomicBool>,
    closed: AtomicBool,
}

impl std::fmt::Debug for MembershipEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipEvents")
            .field("snapshot", &self.snapshot)
            .field("ended", &self.ended.load(Ordering::SeqCst))
            .finish()
    }
}

impl MembershipEvents {
    /// Subscribes through the executive at [`socket_path`]; `on_event` runs for every
    /// event, on the thread that calls [`dispatch`](Self::dispatch).
    pub fn start(
        on_event: impl FnMut(&MembEvent) + Send + 'static,
    ) -> Result<MembershipEvents, SaError> {
        MembershipEvents::start_at(socket_path(), on_event)
    }

    /// [`MembershipEvents::start`] with the executive's socket at `path`.
    pub fn start_at(
        path: impl AsRef<Path>,
        on_event: impl FnMut(&MembEvent) + Send + 'static,
    ) -> Result<MembershipEvents, SaError> {
        let mut version = MEMB_VERSION;
        let conn = Connection::connect_at(path, ServiceId::MEMB, &mut version)?;
        let ended = Arc::new(AtomicBool::new(false));
        let dispatcher = Dispatcher::new(Callbacks {
            on_event: Box::new(on_event),
            ended: Arc::clone(&ended),
        });
        let body = conn.request(req::START, &[])?;
        let snapshot = Snapshot::decode_exact(body).map_err(|e| {
            warn!(target: "libais", "undecodable membership snapshot: {e}");
            SaError::MessageError
        })?;
        Ok(MembershipEvents {
            conn,
            dispatcher,
            snapshot,
            ended,
            closed: AtomicBool::new(false),
        })
    }

    /// Where the stream stood when it started.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Whether the stream ended (this node was evicted).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Runs the callback for waiting events as `flags` says. Once the stream ended
    /// (after the `Evicted` event) it returns `Ok` at once; `BadHandle` after finalize.
    pub fn dispatch(&self, flags: DispatchFlags) -> Result<(), SaError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SaError::BadHandle);
        }
        if self.ended() {
            return Ok(());
        }
        match flags {
            DispatchFlags::Blocking => {
                // One event at a time, so that eviction ends the loop.
                while !self.ended() {
                    match self.conn.poll_callbacks(true) {
                        Ok(_) => {}
                        Err(SaError::BadHandle) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                    self.dispatcher
                        .dispatch(&self.conn, DispatchFlags::One, Callbacks::run)?;
                }
                Ok(())
            }
            other => self.dispatcher.dispatch(&self.conn, other, Callbacks::run),
        }
    }

    /// The socket, for the application's own poll loop: readable when an event may be
    /// waiting; then `dispatch(All)`.
    pub fn fd(&self) -> RawFd {
        self.conn.as_raw_fd()
    }

    /// Unsubscribes and closes the connection; a blocking dispatch on another thread
    /// returns. `BadHandle` if already finalized.
    pub fn finalize(&self) -> Result<(), SaError> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Err(SaError::BadHandle);
        }
        self.conn.close();
        Ok(())
    }
}

impl AsRawFd for MembershipEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

impl Drop for MembershipEvents {
    fn drop(&mut self) {
        let _ = self.finalize();
    }
}
