//! Callback dispatch shared by every service's API: the SA Forum dispatch flags and a
//! [`Dispatcher`] that runs a service's callbacks, in the order the executive sent them,
//! on the thread that calls dispatch.

use std::cell::RefCell;

use ais_proto::ipc::ResponseFrame;
use ais_proto::SaError;
use parking_lot::Mutex;

use crate::conn::Connection;

/// How much a dispatch call does (`SaDispatchFlagsT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DispatchFlags {
    /// Run at most one pending callback; return at once when none is pending.
    One,
    /// Run every pending callback, then return; never waits for one.
    All,
    /// Run callbacks as they arrive until the handle is finalized (from another thread
    /// or from a callback), then return `Ok`; or until the connection fails.
    Blocking,
}

/// A service's callbacks (`H`) behind a lock, so that concurrent dispatchers run them
/// one at a time and in order.
pub struct Dispatcher<H> {
    handler: Mutex<H>,
}

thread_local! {
    /// The dispatchers this thread is inside of (by address), to refuse nested
    /// dispatch from a callback instead of deadlocking on the handler lock.
    static ACTIVE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

struct NestGuard(usize);

impl NestGuard {
    fn enter(key: usize) -> Result<NestGuard, SaError> {
        ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            if a.contains(&key) {
                return Err(SaError::BadOperation);
            }
            a.push(key);
            Ok(NestGuard(key))
        })
    }
}

impl Drop for NestGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.borrow_mut().retain(|&k| k != self.0));
    }
}

impl<H> Dispatcher<H> {
    pub fn new(handler: H) -> Dispatcher<H> {
        Dispatcher {
            handler: Mutex::new(handler),
        }
    }

    /// Runs callbacks of `conn` as `flags` says: `deliver` gets the service's handler
    /// and one callback frame (id with `CALLBACK_FLAG`) and decodes and runs it; its
    /// error ends the dispatch and is returned (the frame is consumed, the connection
    /// stays usable).
    ///
    /// Returns `Ok` when the connection is closed locally (finalize) while dispatching;
    /// the connection's error when it fails (`Library`, `MessageError`);
    /// `BadOperation` when called from inside one of this dispatcher's own callbacks.
    /// Callbacks may make requests on the same connection.
    pub fn dispatch<F>(
        &self,
        conn: &Connection,
        flags: DispatchFlags,
        mut deliver: F,
    ) -> Result<(), SaError>
    where
        F: FnMut(&mut H, ResponseFrame) -> Result<(), SaError>,
    {
        let _nest = NestGuard::enter(self as *const Self as usize)?;
        let mut drained = false;
        loop {
            match conn.poll_callbacks_in_round(flags == DispatchFlags::Blocking, &mut drained) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(SaError::BadHandle) => return Ok(()),
                Err(e) => return Err(e),
            }
            // Take the frame under the handler lock so that two dispatching threads
            // still run callbacks in arrival order.
            let mut handler = self.handler.lock();
            let Some(frame) = conn.take_callback() else {
                continue; // another dispatcher took it
            };
            deliver(&mut handler, frame)?;
            drop(handler);
            if flags == DispatchFlags::One {
                return Ok(());
            }
        }
    }
}

impl<H> std::fmt::Debug for Dispatcher<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}
