//! One connection to the local executive, for one service: the unix stream socket, the
//! connect handshake, blocking requests, and the queue of callbacks (DESIGN.md §1, §7).
//!
//! One socket carries both the responses to this connection's requests and its
//! asynchronous callbacks, in the order the executive sent them. A request therefore
//! reads until its own response arrives and queues every callback it reads on the way;
//! dispatch takes callbacks from that queue first and reads the socket only when the
//! queue is empty.
//!
//! Threads share a connection freely. Requests are serialized (one outstanding request
//! per connection, so a response is matched by its id alone), except *pipelined* ones
//! ([`Connection::request_pipelined`]): requests whose answer is only an error, sent
//! without waiting, up to a window of [`PIPELINE_MAX`] requests (and
//! [`PIPELINE_BYTES`] or more, as the socket's send buffer allows). The executive serves a connection's requests in order and never
//! refuses one for a passing reason (it lets it wait instead), so their answers come back
//! in order and are matched against the oldest outstanding one; a blocking request first
//! waits for every pipelined answer. A pipelined request whose answer is an error reports
//! it on the next pipelined call.
//!
//! Pipelined requests made while an earlier one is unanswered are *coalesced*: they wait
//! in the connection's buffer, in order, and go to the socket in one write when an
//! answer is read (by whichever thread reads: a dispatch, a request, a pipelined call
//! finding the window full), when [`COALESCE_BYTES`] wait, before any call waits, at
//! close, and at the latest [`COALESCE_WAIT`] after the first of them (the library's one
//! thread, the [`flusher`], sees to that, so a request never waits for the application
//! to call again). A sender at full speed then writes once per batch instead of once per
//! request, which was most of its cost for small messages (test/bench/RESULTS.md); a
//! request made when nothing is unanswered is written at once, so a request made now
//! and then waits for nothing.
//!
//! A full window that no answer frees within
//! [`PIPELINE_WAIT`] is `TryAgain`: the executive is not taking requests (its send queue
//! is full). At most one thread reads
//! the socket at a time (it holds the *read turn*); it routes each frame it reads (the
//! response into the response slot, callbacks onto the queue) and wakes the others. So
//! a request made while another thread sits in a blocking dispatch gets its response
//! through that thread's read, and a blocking dispatch wakes on callbacks a request read.
//!
//! Errors, as a caller sees them:
//! - socket missing or connection refused at connect: `TryAgain` (the executive is not
//!   running, or not yet: try again later, as corosync's libraries answer);
//!   permission denied: `Access`; a path too long for a socket address: `InvalidParam`;
//! - a handshake the executive refuses: its answer's error (`NotExist` for a service it
//!   does not have, `Version` with the version it supports, the service's own refusal,
//!   `Access` for credentials not allowed, `NoResources` when it has as many
//!   connections as it takes), the executive having closed the connection after it;
//! - a frame larger than [`MAX_FRAME_LEN`], shorter than its header, a response nobody
//!   asked for, or an undecodable handshake reply: `MessageError`; the stream is out of
//!   step, so the connection is shut down and every later call returns `MessageError`;
//! - the executive closed the connection (or any other socket error): `Library`, for this
//!   and every later call: the connection cannot be used any more (SA Forum's meaning of
//!   `SA_AIS_ERR_LIBRARY`); finalize and initialize again;
//! - after [`Connection::close`]: `BadHandle`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use ais_proto::ipc::{
    self, Connect, ConnectReply, ResponseFrame, CALLBACK_FLAG, CONNECT_ID, MAX_FRAME_LEN,
    REQUEST_HEADER_LEN,
};
use ais_proto::{Decode, Encode, SaError, SaVersion, ServiceId};
use bytes::{BufMut, Bytes, BytesMut};
use log::{debug, warn};
use parking_lot::{Condvar, Mutex, MutexGuard};
use rustix::net::RecvFlags;

/// The environment variable that names the executive's socket, overriding the default.
pub const SOCKET_ENV: &str = "AIS_SOCKET";
/// The socket's file name inside the runtime directory.
pub const SOCKET_NAME: &str = "aisexec.sock";

/// How much one read asks the kernel for.
const READ_CHUNK: usize = 64 * 1024;

/// Most pipelined requests outstanding on one connection.
pub const PIPELINE_MAX: usize = 1024;
/// Most bytes of pipelined requests outstanding on one connection, each frame counted
/// with [`SEND_OVERHEAD`] more, when the socket's send buffer is the usual default
/// (about 208 KiB): a full window then fits it, so a pipelined write does not block
/// while the executive lets this connection wait. A single request larger than the
/// window is sent alone. With a larger send buffer ([`SEND_BUFFER`], if the system
/// allows it), the window is three quarters of it, up to [`PIPELINE_BYTES_MAX`].
pub const PIPELINE_BYTES: usize = 160 * 1024;
/// The largest pipelining window in bytes.
pub const PIPELINE_BYTES_MAX: usize = 1536 * 1024;
/// The send buffer asked for each connection (best effort: net.core.wmem_max caps it),
/// so that more requests can be on their way while the executive is busy elsewhere.
const SEND_BUFFER: usize = 1 << 20;
/// What the kernel charges the send buffer beyond the data for one small write (its
/// socket buffer bookkeeping), as counted against [`PIPELINE_BYTES`].
const SEND_OVERHEAD: usize = 1024;
/// Bytes of coalesced requests (see the module doc) written without waiting for an
/// answer: hundreds of small requests in one write, far less than any send buffer.
pub const COALESCE_BYTES: usize = 32 * 1024;
/// Longest a coalesced request waits in the library when no answer comes to send it.
/// Under load an answer comes well before; this only bounds the unusual case (the
/// executive slow to read, or an application that stops calling the library).
pub const COALESCE_WAIT: Duration = Duration::from_micros(200);
/// How long a pipelined request waits for room in a full window before `TryAgain`.
pub const PIPELINE_WAIT: Duration = Duration::from_micros(500);

/// The executive's socket: `$AIS_SOCKET` when set and not empty, else
/// [`default_socket_path`].
pub fn socket_path() -> PathBuf {
    resolve_socket_path(
        std::env::var_os(SOCKET_ENV),
        current_uid(),
        std::env::var_os("XDG_RUNTIME_DIR"),
    )
}

/// Where the executive listens by default (DESIGN.md §5): `/run/aisexec/aisexec.sock`
/// for root; otherwise `$XDG_RUNTIME_DIR/aisexec/aisexec.sock` when that is set, else
/// `/tmp/aisexec-$UID/aisexec.sock`. The uid is the real uid, read from
/// `/proc/self/status`.
pub fn default_socket_path() -> PathBuf {
    resolve_socket_path(None, current_uid(), std::env::var_os("XDG_RUNTIME_DIR"))
}

fn resolve_socket_path(
    explicit: Option<OsString>,
    uid: Option<u32>,
    xdg_runtime_dir: Option<OsString>,
) -> PathBuf {
    if let Some(path) = explicit.filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let dir = match (uid, xdg_runtime_dir.filter(|d| !d.is_empty())) {
        (Some(0), _) => PathBuf::from("/run/aisexec"),
        (_, Some(xdg)) => Path::new(&xdg).join("aisexec"),
        (Some(uid), None) => PathBuf::from(format!("/tmp/aisexec-{uid}")),
        // No /proc: we cannot know the uid; a name no executive uses, so that connect
        // fails (TryAgain) instead of reaching another user's executive.
        (None, None) => PathBuf::from("/tmp/aisexec-unknown"),
    };
    dir.join(SOCKET_NAME)
}

/// The real uid of this process, from `/proc/self/status` (no libc here).
fn current_uid() -> Option<u32> {
    parse_status_uid(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The first (real) uid of the `Uid:` line of a `/proc/<pid>/status` text.
fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn connect_error(e: &io::Error) -> SaError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => SaError::TryAgain,
        io::ErrorKind::PermissionDenied => SaError::Access,
        io::ErrorKind::InvalidInput => SaError::InvalidParam,
        _ => SaError::Library,
    }
}

/// A connection to the executive bound to one service. `Send + Sync`: share it by
/// reference or `Arc`.
pub struct Connection {
    service: ServiceId,
    version: SaVersion,
    /// Serializes requests: one outstanding request per connection.
    request_lock: Mutex<()>,
    /// Bytes of pipelined requests that may be outstanding (see [`PIPELINE_BYTES`]).
    pipeline_bytes: usize,
    /// The socket and the state, shared with the [`flusher`] (which holds them weakly).
    io: Arc<Io>,
    /// [`COALESCE_WAIT`], except in tests that need the flusher out of the way.
    coalesce_wait: Duration,
}

/// What the [`flusher`] thread needs of a connection, besides the connection itself.
struct Io {
    stream: UnixStream,
    service: ServiceId,
    /// Held while writing a frame, so frames from several threads never interleave.
    write_lock: Mutex<()>,
    state: Mutex<State>,
    /// Signalled when the reader has routed frames, gave up its read turn, or the
    /// connection died or was closed.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// A thread holds the read turn (and `rbuf`, taken out while it reads).
    reading: bool,
    /// Bytes read but not yet a whole frame.
    rbuf: BytesMut,
    /// Callbacks read and not yet dispatched, oldest first.
    callbacks: VecDeque<ResponseFrame>,
    /// Scratch space reads go into (taken out with `rbuf` while a thread reads).
    scratch: Vec<u8>,
    /// Pipelined requests sent and not yet answered, oldest first: id and the bytes
    /// counted against [`PIPELINE_BYTES`].
    pipelined: VecDeque<(u32, usize)>,
    /// Sum of the byte counts in `pipelined`.
    pipelined_bytes: usize,
    /// Pipelined request frames not yet written (coalesced; see the module doc): the
    /// newest entries of `pipelined`, behind at least one written and unanswered.
    unsent: BytesMut,
    /// Counts the batches `unsent` has held, so that the flusher, woken for one, leaves
    /// a later one alone.
    batch: u64,
    /// The first error a pipelined request was answered with, for the next pipelined
    /// call to report.
    deferred: Option<SaError>,
    /// The id of the outstanding request, if any, and its response once read.
    awaiting: Option<u32>,
    response: Option<ResponseFrame>,
    /// Why the connection cannot be used any more.
    broken: Option<SaError>,
    /// [`Connection::close`] was called.
    closed: bool,
}

impl State {
    fn dead(&self) -> Option<SaError> {
        if self.closed {
            Some(SaError::BadHandle)
        } else {
            self.broken
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    /// Wait for data.
    Block,
    /// Take what is there now.
    Poll,
    /// Wait for data until then at the latest.
    Until(Instant),
}

#[derive(PartialEq, Eq)]
enum ReadOutcome {
    /// Bytes were read (and routed), or the connection died.
    Progress,
    /// A poll-mode read took less than it asked for: the socket held no more at that
    /// moment (a stream socket's receive hands over everything queued, up to the
    /// length), so reading again now would only meet `EAGAIN`.
    Drained,
    /// Nothing to read right now (poll mode only), or interrupted.
    Idle,
}

impl Connection {
    /// Connects to the executive at [`socket_path`] for `service`. `version` is the
    /// version asked for; on return (`Ok` or `Err(Version)`) it holds the version the
    /// executive implements, as `saXxxInitialize` does.
    pub fn connect(service: ServiceId, version: &mut SaVersion) -> Result<Connection, SaError> {
        Connection::connect_at(socket_path(), service, version)
    }

    /// [`Connection::connect`] to the socket at `path`.
    pub fn connect_at(
        path: impl AsRef<Path>,
        service: ServiceId,
        version: &mut SaVersion,
    ) -> Result<Connection, SaError> {
        let stream = UnixStream::connect(path.as_ref()).map_err(|e| connect_error(&e))?;
        Connection::handshake(stream, service, version)
    }

    /// Binds an already connected stream to `service`: sends the `CONNECT_ID` request
    /// and reads its reply (whose header error is `Ok` or the reason for refusal, and
    /// whose body is a [`ConnectReply`] naming the executive's version).
    pub(crate) fn handshake(
        stream: UnixStream,
        service: ServiceId,
        version: &mut SaVersion,
    ) -> Result<Connection, SaError> {
        let mut out = BytesMut::new();
        ipc::put_request(
            &mut out,
            CONNECT_ID,
            &Connect {
                service,
                version: *version,
            }
            .to_bytes(),
        );
        // The executive may have answered and hung up before reading this (it turns a
        // connection away at once when its credentials are not allowed or it has too
        // many): that answer can still be read, so a failed write only counts if none
        // comes.
        let written = (&stream).write_all(&out);

        let mut rbuf = BytesMut::new();
        let reply = loop {
            match ipc::take_response(&mut rbuf) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(e) => {
                    warn!(target: "libais", "handshake with the executive: {e}");
                    return Err(SaError::MessageError);
                }
            }
            let start = rbuf.len();
            rbuf.resize(start + READ_CHUNK, 0);
            let n = loop {
                match (&stream).read(&mut rbuf[start..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // The executive hung up without answering: the connection cannot
                    // be used.
                    Ok(0) | Err(_) => {
                        if let Err(e) = &written {
                            debug!(target: "libais", "handshake request not sent: {e}");
                        }
                        return Err(SaError::Library);
                    }
                    Ok(n) => break n,
                }
            };
            rbuf.truncate(start + n);
        };
        if reply.id != CONNECT_ID {
            warn!(target: "libais", "handshake answered with frame id {:#x}", reply.id);
            return Err(SaError::MessageError);
        }
        let error = reply.sa_error();
        let accepted = match ConnectReply::decode_exact(reply.body) {
            Ok(r) => r.version,
            Err(e) if error == SaError::Ok => {
                warn!(target: "libais", "handshake reply: {e}");
                return Err(SaError::MessageError);
            }
            // A refusal without a version: report the refusal.
            Err(_) => return Err(error),
        };
        *version = accepted;
        error.into_result()?;
        // The kernel reports (and counts against) twice what was asked, capped.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&stream, SEND_BUFFER);
        let pipeline_bytes = rustix::net::sockopt::socket_send_buffer_size(&stream)
            .map_or(PIPELINE_BYTES, |granted| granted / 4 * 3)
            .clamp(PIPELINE_BYTES, PIPELINE_BYTES_MAX);
        let conn = Connection {
            service,
            version: accepted,
            request_lock: Mutex::new(()),
            pipeline_bytes,
            coalesce_wait: COALESCE_WAIT,
            io: Arc::new(Io {
                stream,
                service,
                write_lock: Mutex::new(()),
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
        };
        // Callbacks sent right behind the reply may have come in the same read: queue
        // them now, or they would wait in the buffer with the socket not readable.
        {
            let mut st = conn.io.state.lock();
            conn.route(&mut st, &mut rbuf);
            if let Some(e) = st.broken {
                return Err(e);
            }
            st.rbuf = rbuf;
        }
        Ok(conn)
    }

    /// The service this connection is bound to.
    pub fn service(&self) -> ServiceId {
        self.service
    }

    /// The version the executive implements for this service.
    pub fn version(&self) -> SaVersion {
        self.version
    }

    /// Sends request `id` with `body` and waits for its response: `Ok(body)` when the
    /// response's error is `Ok`, else that error. Callbacks read meanwhile are queued for
    /// dispatch. `TooBig` if the frame would exceed [`MAX_FRAME_LEN`]; `InvalidParam` for
    /// an id that is [`CONNECT_ID`] or has [`CALLBACK_FLAG`].
    pub fn request(&self, id: u32, body: &[u8]) -> Result<Bytes, SaError> {
        let mut frame = BytesMut::with_capacity(REQUEST_HEADER_LEN + body.len());
        ipc::put_request(&mut frame, id, body);
        Self::response_body(self.exchange(id, frame)?)
    }

    /// [`Connection::request`] with a message encoded straight into the frame.
    pub fn request_msg<M: Encode + ?Sized>(&self, id: u32, msg: &M) -> Result<Bytes, SaError> {
        let mut frame = BytesMut::with_capacity(REQUEST_HEADER_LEN + msg.size_hint());
        frame.put_u32(0);
        frame.put_u32(id);
        msg.encode(&mut frame);
        // The size field counts the whole frame (ipc.rs); an oversized one is caught
        // by `exchange` before this truncation could matter.
        let size = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        frame[..4].copy_from_slice(&size.to_be_bytes());
        Self::response_body(self.exchange(id, frame)?)
    }

    /// Sends a whole request frame and returns its response frame as received, whatever
    /// its error: for services whose error responses carry a body.
    pub fn request_frame(&self, id: u32, body: &[u8]) -> Result<ResponseFrame, SaError> {
        let mut frame = BytesMut::with_capacity(REQUEST_HEADER_LEN + body.len());
        ipc::put_request(&mut frame, id, body);
        self.exchange(id, frame)
    }

    /// Sends request `id` with `msg` encoded as its body without waiting for the
    /// answer (see the module doc): `Ok` once the frame is written. `TryAgain` when the
    /// window stays full for [`PIPELINE_WAIT`]; the error an earlier pipelined request
    /// was answered with, once (this request is then not sent); otherwise as
    /// [`Connection::request`]. Only for requests whose answer carries no body.
    pub fn request_msg_pipelined<M: Encode + ?Sized>(
        &self,
        id: u32,
        msg: &M,
    ) -> Result<(), SaError> {
        let mut frame = BytesMut::with_capacity(REQUEST_HEADER_LEN + msg.size_hint());
        frame.put_u32(0);
        frame.put_u32(id);
        msg.encode(&mut frame);
        let size = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.request_pipelined(id, &frame)
    }

    /// [`Connection::request_msg_pipelined`] of a whole request frame.
    pub fn request_pipelined(&self, id: u32, frame: &[u8]) -> Result<(), SaError> {
        if frame.len() > MAX_FRAME_LEN {
            return Err(SaError::TooBig);
        }
        if id == CONNECT_ID || id & CALLBACK_FLAG != 0 {
            return Err(SaError::InvalidParam);
        }
        let cost = frame.len() + SEND_OVERHEAD;
        let _one_at_a_time = self.request_lock.lock();
        let mut st = self.io.state.lock();
        let mut deadline = None;
        loop {
            if let Some(e) = st.dead() {
                return Err(e);
            }
            if let Some(e) = st.deferred.take() {
                return Err(e);
            }
            let full = !st.pipelined.is_empty()
                && (st.pipelined.len() >= PIPELINE_MAX
                    || st.pipelined_bytes + cost > self.pipeline_bytes);
            if !full {
                break;
            }
            let now = Instant::now();
            let until = *deadline.get_or_insert(now + PIPELINE_WAIT);
            if now >= until {
                return Err(SaError::TryAgain);
            }
            // The answers that would free the window may be for requests still here.
            self.io.flush_unsent(&mut st)?;
            if st.reading {
                // The reader routes the answers; it wakes us when it has.
                self.io.changed.wait_until(&mut st, until);
            } else {
                self.read_turn(&mut st, ReadMode::Until(until));
            }
        }
        st.pipelined.push_back((id, cost));
        st.pipelined_bytes += cost;
        if st.pipelined.len() > 1 && st.unsent.len() + frame.len() < COALESCE_BYTES {
            // An earlier request is unanswered: its answer, when read, sends this one,
            // or the flusher does.
            if st.unsent.is_empty() {
                st.batch += 1;
                if !flusher::watch(&self.io, st.batch, self.coalesce_wait) {
                    // No flusher thread: coalescing would have no bound. Write now.
                    st.unsent.extend_from_slice(frame);
                    return self.io.flush_unsent(&mut st);
                }
            }
            st.unsent.extend_from_slice(frame);
            return Ok(());
        }
        // Nothing unanswered (so nothing waits here either), or enough waits: write it
        // all now, in order. Pipelined calls are serialized by `request_lock`, and other
        // writers of pipelined frames only write what is in `unsent`, which this takes:
        // no frame can get between.
        let mut pending = std::mem::take(&mut st.unsent);
        drop(st);
        let written = {
            let _w = self.io.write_lock.lock();
            if pending.is_empty() {
                (&self.io.stream).write_all(frame)
            } else {
                pending.extend_from_slice(frame);
                (&self.io.stream).write_all(&pending)
            }
        };
        if let Err(e) = written {
            let mut st = self.io.state.lock();
            return Err(self.io.fail(&mut st, SaError::Library, &e));
        }
        Ok(())
    }

    fn response_body(response: ResponseFrame) -> Result<Bytes, SaError> {
        response.sa_error().into_result()?;
        Ok(response.body)
    }

    fn exchange(&self, id: u32, frame: BytesMut) -> Result<ResponseFrame, SaError> {
        if frame.len() > MAX_FRAME_LEN {
            return Err(SaError::TooBig);
        }
        if id == CONNECT_ID || id & CALLBACK_FLAG != 0 {
            return Err(SaError::InvalidParam);
        }
        let _one_at_a_time = self.request_lock.lock();
        {
            let mut st = self.io.state.lock();
            // Answers are matched by id: the pipelined ones come first.
            self.io.flush_unsent(&mut st)?;
            while !st.pipelined.is_empty() {
                if let Some(e) = st.dead() {
                    return Err(e);
                }
                if st.reading {
                    self.io.changed.wait(&mut st);
                } else {
                    self.read_turn(&mut st, ReadMode::Block);
                }
            }
            if let Some(e) = st.dead() {
                return Err(e);
            }
            st.awaiting = Some(id);
            st.response = None;
        }
        let written = {
            let _w = self.io.write_lock.lock();
            (&self.io.stream).write_all(&frame)
        };
        let mut st = self.io.state.lock();
        if let Err(e) = written {
            st.awaiting = None;
            return Err(self.io.fail(&mut st, SaError::Library, &e));
        }
        loop {
            if let Some(response) = st.response.take() {
                st.awaiting = None;
                return Ok(response);
            }
            if let Some(e) = st.dead() {
                st.awaiting = None;
                return Err(e);
            }
            if st.reading {
                self.io.changed.wait(&mut st);
            } else {
                self.read_turn(&mut st, ReadMode::Block);
            }
        }
    }

    /// Whether a callback is ready to be taken with [`Connection::take_callback`].
    /// With `wait`, blocks until one is (or the connection dies or is closed); without,
    /// reads only what the socket holds now. `BadHandle` once closed (even with
    /// callbacks queued: they are dropped); after the connection broke, the callbacks
    /// read before it are still returned, then its error.
    pub fn poll_callbacks(&self, wait: bool) -> Result<bool, SaError> {
        self.poll_callbacks_in_round(wait, &mut false)
    }

    /// [`Connection::poll_callbacks`] for one round of a dispatch loop that calls it
    /// until it returns `false`: `drained` starts false for the round and is set once
    /// a read found the socket emptied. Without `wait`, a round that has drained the
    /// socket reads no more (the next round, after the application's poll, does): it
    /// saves each non-blocking dispatch the read that would only return `EAGAIN`.
    pub fn poll_callbacks_in_round(&self, wait: bool, drained: &mut bool) -> Result<bool, SaError> {
        let mut st = self.io.state.lock();
        if wait && !st.closed {
            // Nothing of ours waits in the library while we sleep. An error breaks the
            // connection: reported below, after the callbacks already read.
            let _ = self.io.flush_unsent(&mut st);
        }
        loop {
            if st.closed {
                return Err(SaError::BadHandle);
            }
            if !st.callbacks.is_empty() {
                return Ok(true);
            }
            if let Some(e) = st.broken {
                return Err(e);
            }
            if st.reading || (*drained && !wait) {
                if !wait {
                    return Ok(false);
                }
                self.io.changed.wait(&mut st);
            } else {
                let mode = if wait {
                    ReadMode::Block
                } else {
                    ReadMode::Poll
                };
                match self.read_turn(&mut st, mode) {
                    ReadOutcome::Idle if !wait => return Ok(!st.callbacks.is_empty()),
                    ReadOutcome::Drained => *drained = true,
                    ReadOutcome::Idle | ReadOutcome::Progress => {}
                }
            }
        }
    }

    /// The oldest queued callback, without reading the socket.
    pub fn take_callback(&self) -> Option<ResponseFrame> {
        let mut st = self.io.state.lock();
        if st.closed {
            return None;
        }
        st.callbacks.pop_front()
    }

    /// Lets coalesced requests wait `wait` for an answer before the flusher writes
    /// them: tests that check what sends them.
    #[cfg(test)]
    fn set_coalesce_wait(&mut self, wait: Duration) {
        self.coalesce_wait = wait;
    }

    /// Whether callbacks have been read from the socket and wait in the library's queue.
    /// The socket is not readable for those: an application that polls the fd calls
    /// dispatch after its requests, or checks this before polling.
    pub fn callbacks_pending(&self) -> bool {
        !self.io.state.lock().callbacks.is_empty()
    }

    /// Closes the connection from this side: later calls return `BadHandle`, queued
    /// callbacks are dropped, and threads blocked in a request or a blocking poll wake
    /// up (the socket is shut down, so a blocked read returns). The executive sees the
    /// connection go away. The descriptor itself is closed when the connection is
    /// dropped.
    pub fn close(&self) {
        let mut st = self.io.state.lock();
        // Requests that returned Ok go to the executive, which serves what it read
        // before it sees the connection close.
        let _ = self.io.flush_unsent(&mut st);
        st.closed = true;
        st.callbacks.clear();
        let _ = self.io.stream.shutdown(Shutdown::Both);
        self.io.changed.notify_all();
    }

    /// Takes the read turn (the caller saw `!st.reading`), reads once with the state
    /// unlocked, routes the frames read, and gives the turn back.
    fn read_turn(&self, st: &mut MutexGuard<'_, State>, mode: ReadMode) -> ReadOutcome {
        debug_assert!(!st.reading);
        st.reading = true;
        let mut buf = std::mem::take(&mut st.rbuf);
        let mut scratch = std::mem::take(&mut st.scratch);
        let result = MutexGuard::unlocked(st, || self.read_some(&mut buf, &mut scratch, mode));
        st.scratch = scratch;
        st.reading = false;
        let outcome = match result {
            Ok(0) => {
                if !st.closed {
                    warn!(target: "libais", "the executive closed the {} connection", self.service);
                }
                st.broken.get_or_insert(SaError::Library);
                ReadOutcome::Progress
            }
            Ok(n) => {
                self.route(st, &mut buf);
                if mode == ReadMode::Poll && n < READ_CHUNK {
                    ReadOutcome::Drained
                } else {
                    ReadOutcome::Progress
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                ReadOutcome::Idle
            }
            Err(e) => {
                self.io.fail(st, SaError::Library, &e);
                ReadOutcome::Progress
            }
        };
        if st.broken.is_none() {
            st.rbuf = buf;
        }
        self.io.changed.notify_all();
        outcome
    }

    /// One read into `scratch` (allocated and zeroed once), appended to `buf`. `Poll`
    /// and `Until` never block past their time and leave the descriptor's flags alone
    /// (a flag shared with writers and other readers).
    fn read_some(
        &self,
        buf: &mut BytesMut,
        scratch: &mut Vec<u8>,
        mode: ReadMode,
    ) -> io::Result<usize> {
        if scratch.len() != READ_CHUNK {
            scratch.resize(READ_CHUNK, 0);
        }
        if let ReadMode::Until(until) = mode {
            let left = until.saturating_duration_since(Instant::now());
            let timeout = rustix::event::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [rustix::event::PollFd::new(
                &self.io.stream,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => return Err(io::ErrorKind::WouldBlock.into()),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let n = match mode {
            ReadMode::Block => (&self.io.stream).read(scratch)?,
            ReadMode::Poll | ReadMode::Until(_) => {
                rustix::net::recv(&self.io.stream, &mut scratch[..], RecvFlags::DONTWAIT)?.0
            }
        };
        buf.extend_from_slice(&scratch[..n]);
        Ok(n)
    }

    /// Moves every whole frame out of `buf`: the awaited response into its slot,
    /// callbacks onto the queue. Anything else means the stream is out of step.
    fn route(&self, st: &mut State, buf: &mut BytesMut) {
        let unanswered = st.pipelined.len();
        self.route_frames(st, buf);
        if st.pipelined.len() < unanswered {
            // The executive answered: send what waited behind those requests. A write
            // error breaks the connection, which every caller then sees.
            let _ = self.io.flush_unsent(st);
        }
    }

    fn route_frames(&self, st: &mut State, buf: &mut BytesMut) {
        loop {
            match ipc::take_response(buf) {
                Ok(None) => return,
                Ok(Some(frame)) if frame.is_callback() => st.callbacks.push_back(frame),
                Ok(Some(frame)) => {
                    if let Some(&(id, cost)) = st.pipelined.front() {
                        if frame.id != id {
                            let e = io::Error::other(format!(
                                "response {:#x} while pipelined request {id:#x} waits",
                                frame.id
                            ));
                            self.io.fail(st, SaError::MessageError, &e);
                            return;
                        }
                        st.pipelined.pop_front();
                        st.pipelined_bytes -= cost;
                        let error = frame.sa_error();
                        if error != SaError::Ok && st.deferred.is_none() {
                            debug!(target: "libais", "pipelined request {id} answered {error}");
                            st.deferred = Some(error);
                        }
                    } else if st.awaiting == Some(frame.id) && st.response.is_none() {
                        st.response = Some(frame);
                    } else {
                        let e = io::Error::other(format!(
                            "response {:#x} to no outstanding request",
                            frame.id
                        ));
                        self.io.fail(st, SaError::MessageError, &e);
                        return;
                    }
                }
                Err(e) => {
                    self.io
                        .fail(st, SaError::MessageError, &io::Error::other(e));
                    return;
                }
            }
        }
    }
}

impl Io {
    /// Marks the connection unusable with `error` (the first error sticks) and shuts
    /// the socket so the executive sees us go; returns what callers get from now on.
    fn fail(&self, st: &mut State, error: SaError, cause: &io::Error) -> SaError {
        if st.broken.is_none() && !st.closed {
            warn!(target: "libais", "{} connection lost ({error}): {cause}", self.service);
        }
        st.broken.get_or_insert(error);
        st.rbuf.clear();
        let _ = self.stream.shutdown(Shutdown::Both);
        self.changed.notify_all();
        st.dead().unwrap_or(error)
    }

    /// Writes the coalesced requests, if any, with the state locked (they must reach
    /// the socket before anything written after this call). Does not block for long:
    /// written and unwritten pipelined requests together stay within the window, which
    /// fits in the socket's send buffer. The connection's error, if it is dead.
    fn flush_unsent(&self, st: &mut State) -> Result<(), SaError> {
        let pending = std::mem::take(&mut st.unsent);
        if let Some(e) = st.dead() {
            return Err(e);
        }
        if pending.is_empty() {
            return Ok(());
        }
        let written = {
            let _w = self.write_lock.lock();
            (&self.stream).write_all(&pending)
        };
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(st, SaError::Library, &e)),
        }
    }
}

impl AsRawFd for Connection {
    /// The socket: readable when a callback (or a response) may be waiting in it.
    fn as_raw_fd(&self) -> RawFd {
        self.io.stream.as_raw_fd()
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("service", &self.service)
            .field("version", &self.version)
            .field("fd", &self.io.stream.as_raw_fd())
            .finish_non_exhaustive()
    }
}

/// The library's one thread: it writes coalesced requests that no answer sent within
/// [`COALESCE_WAIT`] (see the module doc). Connections are held weakly, so a connection
/// dropped meanwhile is simply skipped.
mod flusher {
    use super::*;
    use std::collections::VecDeque;

    struct Watch {
        due: Instant,
        io: Weak<Io>,
        batch: u64,
    }

    #[derive(Default)]
    struct Queue {
        /// Oldest first; `due` grows along it, since every entry waits the same time.
        watches: Mutex<VecDeque<Watch>>,
        wake: Condvar,
    }

    /// The queue, with its thread started on first use; `None` if the thread could not
    /// be started.
    fn queue() -> Option<&'static Queue> {
        static QUEUE: OnceLock<Option<Queue>> = OnceLock::new();
        QUEUE
            .get_or_init(|| {
                std::thread::Builder::new()
                    .name("libais-flush".into())
                    .spawn(run)
                    .map_err(|e| warn!(target: "libais", "no flusher thread ({e}): requests are not coalesced"))
                    .ok()
                    .map(|_| Queue::default())
            })
            .as_ref()
    }

    /// Asks for batch `batch` of `io`'s coalesced requests to be written `wait` from
    /// now at the latest; false when there is no flusher thread.
    pub(super) fn watch(io: &Arc<Io>, batch: u64, wait: Duration) -> bool {
        let Some(q) = queue() else {
            return false;
        };
        let due = Instant::now() + wait;
        let mut watches = q.watches.lock();
        // Every connection but a test's waits the same time: this goes last.
        let at = watches
            .iter()
            .rposition(|w| w.due <= due)
            .map_or(0, |i| i + 1);
        watches.insert(
            at,
            Watch {
                due,
                io: Arc::downgrade(io),
                batch,
            },
        );
        if at == 0 {
            q.wake.notify_one();
        }
        true
    }

    fn run() {
        // Started inside `queue`'s initialization, which this waits for; it succeeded,
        // since this thread runs.
        let Some(q) = queue() else {
            return;
        };
        let mut watches = q.watches.lock();
        loop {
            let Some(due) = watches.front().map(|w| w.due) else {
                q.wake.wait(&mut watches);
                continue;
            };
            if Instant::now() < due {
                q.wake.wait_until(&mut watches, due);
                continue;
            }
            let Some(w) = watches.pop_front() else {
                continue;
            };
            drop(watches);
            if let Some(io) = w.io.upgrade() {
                let mut st = io.state.lock();
                // A later batch has its own watch.
                if st.batch == w.batch {
                    let _ = io.flush_unsent(&mut st);
                }
            }
            watches = q.watches.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// Joins `t`, failing the test if it has not finished within ten seconds.
    /// A CPG handshake asking for `v` on `client`, in a thread: its result and the
    /// version it leaves in `v`.
    fn handshake_in_thread(
        client: UnixStream,
        mut v: SaVersion,
    ) -> JoinHandle<(Result<(), SaError>, SaVersion)> {
        std::thread::spawn(move || {
            let r = Connection::handshake(client, ServiceId::CPG, &mut v);
            (r.map(|_| ()), v)
        })
    }

    fn join_within<T>(t: JoinHandle<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "thread did not finish in time");
            std::thread::sleep(Duration::from_millis(1));
        }
        t.join().unwrap()
    }

    #[test]
    fn socket_path_follows_the_runtime_directory_rule() {
        let p = |explicit: Option<&str>, uid: Option<u32>, xdg: Option<&str>| {
            resolve_socket_path(explicit.map(Into::into), uid, xdg.map(Into::into))
        };
        assert_eq!(
            p(Some("/x/y.sock"), Some(0), Some("/run/user/5")),
            PathBuf::from("/x/y.sock")
        );
        assert_eq!(
            p(Some(""), Some(0), None),
            PathBuf::from("/run/aisexec/aisexec.sock")
        );
        assert_eq!(
            p(None, Some(0), Some("/run/user/0")),
            PathBuf::from("/run/aisexec/aisexec.sock")
        );
        assert_eq!(
            p(None, Some(1000), Some("/run/user/1000")),
            PathBuf::from("/run/user/1000/aisexec/aisexec.sock")
        );
        assert_eq!(
            p(None, Some(1000), Some("")),
            PathBuf::from("/tmp/aisexec-1000/aisexec.sock")
        );
        assert_eq!(
            p(None, Some(1000), None),
            PathBuf::from("/tmp/aisexec-1000/aisexec.sock")
        );
    }

    #[test]
    fn the_real_uid_is_read_from_proc_status() {
        let status = "Name:\tx\nUmask:\t0022\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_status_uid(status), Some(1000));
        assert_eq!(parse_status_uid("Name: x\n"), None);
        assert_eq!(parse_status_uid("Uid:\tabc\n"), None);
        assert!(
            current_uid().is_some(),
            "this process has a /proc/self/status"
        );
    }

    #[test]
    fn connect_errors_map_to_sa_errors() {
        let e = |k: io::ErrorKind| connect_error(&io::Error::from(k));
        assert_eq!(e(io::ErrorKind::NotFound), SaError::TryAgain);
        assert_eq!(e(io::ErrorKind::ConnectionRefused), SaError::TryAgain);
        assert_eq!(e(io::ErrorKind::PermissionDenied), SaError::Access);
        assert_eq!(e(io::ErrorKind::InvalidInput), SaError::InvalidParam);
        assert_eq!(e(io::ErrorKind::Other), SaError::Library);
    }

    /// The executive's end of a socket pair, driven by hand.
    struct Peer {
        stream: UnixStream,
        buf: BytesMut,
    }

    impl Peer {
        fn request(&mut self) -> (u32, Bytes) {
            loop {
                if let Some(r) = ipc::take_request(&mut self.buf).unwrap() {
                    return r;
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).unwrap();
                assert!(n > 0, "client hung up");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        /// Whether nothing the client wrote is waiting to be read, now.
        fn idle(&mut self) -> bool {
            if !self.buf.is_empty() {
                return false;
            }
            let mut byte = [0u8; 1];
            let flags = RecvFlags::DONTWAIT | RecvFlags::PEEK;
            match rustix::net::recv(&self.stream, &mut byte[..], flags) {
                Err(e) if e == rustix::io::Errno::AGAIN => true,
                Ok(_) => false,
                Err(e) => panic!("peek: {e}"),
            }
        }

        /// Reads to the end of the stream: the requests the client wrote before it
        /// closed.
        fn requests_until_eof(&mut self) -> Vec<(u32, Bytes)> {
            let mut all = Vec::new();
            loop {
                while let Some(r) = ipc::take_request(&mut self.buf).unwrap() {
                    all.push(r);
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).unwrap();
                if n == 0 {
                    return all;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        fn send(&mut self, id: u32, error: SaError, body: &[u8]) {
            let mut out = BytesMut::new();
            ipc::put_response(&mut out, id, error, body);
            self.stream.write_all(&out).unwrap();
        }
    }

    fn frame_of(id: u32, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        ipc::put_request(&mut out, id, body);
        out.to_vec()
    }

    /// A connected socket pair: the client's end, and the executive's as a [`Peer`]
    /// whose reads give up after 10 s.
    fn sockets() -> (UnixStream, Peer) {
        let (client, server) = UnixStream::pair().unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let peer = Peer {
            stream: server,
            buf: BytesMut::new(),
        };
        (client, peer)
    }

    fn pair() -> (Connection, Peer) {
        let (client, mut peer) = sockets();
        let t = std::thread::spawn(move || {
            let mut v = SaVersion::B_01_01;
            Connection::handshake(client, ServiceId::CPG, &mut v)
        });
        let (id, body) = peer.request();
        assert_eq!(id, CONNECT_ID);
        let c = Connect::decode_exact(body).unwrap();
        assert_eq!(c.service, ServiceId::CPG);
        let reply = ConnectReply {
            version: SaVersion::B_01_01,
        };
        peer.send(CONNECT_ID, SaError::Ok, &reply.to_bytes());
        (join_within(t).unwrap(), peer)
    }

    #[test]
    fn frames_split_across_reads_are_reassembled_in_order() {
        let (conn, mut peer) = pair();
        let t = std::thread::spawn(move || {
            let r = conn.request(5, b"ping");
            (conn, r)
        });
        assert_eq!(peer.request(), (5, Bytes::from_static(b"ping")));
        let mut out = BytesMut::new();
        ipc::put_response(&mut out, 1 | CALLBACK_FLAG, SaError::Ok, b"first");
        ipc::put_response(&mut out, 2 | CALLBACK_FLAG, SaError::Ok, b"second");
        ipc::put_response(&mut out, 5, SaError::Ok, b"pong");
        for piece in out.chunks(3) {
            peer.stream.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        let (conn, r) = join_within(t);
        assert_eq!(r, Ok(Bytes::from_static(b"pong")));
        assert!(conn.callbacks_pending());
        assert_eq!(conn.poll_callbacks(false), Ok(true));
        assert_eq!(&conn.take_callback().unwrap().body[..], b"first");
        assert_eq!(&conn.take_callback().unwrap().body[..], b"second");
        assert_eq!(conn.take_callback(), None);
        assert_eq!(conn.poll_callbacks(false), Ok(false));
    }

    #[test]
    fn a_dispatch_round_reads_no_more_once_a_read_drained_the_socket() {
        let (conn, mut peer) = pair();
        peer.send(1 | CALLBACK_FLAG, SaError::Ok, b"first");
        let mut drained = false;
        let poll_until_read = |drained: &mut bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if conn.poll_callbacks_in_round(false, drained) == Ok(true) {
                    return;
                }
                assert!(Instant::now() < deadline, "the callback was never read");
                *drained = false;
                std::thread::sleep(Duration::from_micros(100));
            }
        };
        poll_until_read(&mut drained);
        assert!(
            drained,
            "a read shorter than its buffer did not count as drained"
        );
        assert_eq!(&conn.take_callback().unwrap().body[..], b"first");
        // What arrives after the round's short read waits for the next round.
        peer.send(2 | CALLBACK_FLAG, SaError::Ok, b"second");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(conn.poll_callbacks_in_round(false, &mut drained), Ok(false));
        assert_eq!(conn.take_callback(), None);
        let mut next_round = false;
        assert_eq!(
            conn.poll_callbacks_in_round(false, &mut next_round),
            Ok(true)
        );
        assert_eq!(&conn.take_callback().unwrap().body[..], b"second");
        // A blocking round is never cut short: it waits for data.
        peer.send(3 | CALLBACK_FLAG, SaError::Ok, b"third");
        assert_eq!(conn.poll_callbacks_in_round(true, &mut drained), Ok(true));
        assert_eq!(&conn.take_callback().unwrap().body[..], b"third");
    }

    #[test]
    fn pipelined_requests_do_not_wait_and_an_error_answer_is_reported_next() {
        let (mut conn, mut peer) = pair();
        conn.set_coalesce_wait(Duration::from_secs(60));
        conn.request_pipelined(7, &frame_of(7, b"one")).unwrap();
        conn.request_pipelined(7, &frame_of(7, b"two")).unwrap();
        assert_eq!(peer.request(), (7, Bytes::from_static(b"one")));
        // "two" waits in the library behind the unanswered "one"; reading the answer
        // sends it.
        assert!(
            peer.idle(),
            "a request behind an unanswered one was written"
        );
        peer.send(7, SaError::Ok, b"");
        assert_eq!(conn.poll_callbacks(false), Ok(false));
        assert_eq!(peer.request(), (7, Bytes::from_static(b"two")));
        peer.send(7, SaError::NotExist, b"");
        // A blocking request first waits for both answers, then gets its own.
        let t = std::thread::spawn(move || {
            let r = conn.request(3, b"q");
            (conn, r)
        });
        assert_eq!(peer.request(), (3, Bytes::from_static(b"q")));
        peer.send(3, SaError::Ok, b"a");
        let (conn, r) = join_within(t);
        assert_eq!(r, Ok(Bytes::from_static(b"a")));
        // The error answer is reported once, by the next pipelined call.
        assert_eq!(
            conn.request_pipelined(7, &frame_of(7, b"x")),
            Err(SaError::NotExist)
        );
        conn.request_pipelined(7, &frame_of(7, b"three")).unwrap();
        assert_eq!(peer.request(), (7, Bytes::from_static(b"three")));
    }

    #[test]
    fn requests_behind_an_unanswered_one_go_out_together_in_order_when_it_is_answered() {
        let (mut conn, mut peer) = pair();
        conn.set_coalesce_wait(Duration::from_secs(60));
        conn.request_pipelined(7, &frame_of(7, b"first")).unwrap();
        for i in 0..100u32 {
            conn.request_pipelined(7, &frame_of(7, &i.to_be_bytes()))
                .unwrap();
        }
        assert_eq!(peer.request(), (7, Bytes::from_static(b"first")));
        assert!(
            peer.idle(),
            "coalesced requests were written before an answer"
        );
        // A thread in a blocking dispatch reads the answer, which sends the rest.
        let t = std::thread::spawn(move || {
            let r = conn.poll_callbacks(true);
            (conn, r)
        });
        peer.send(7, SaError::Ok, b"");
        for i in 0..100u32 {
            assert_eq!(
                peer.request(),
                (7, Bytes::copy_from_slice(&i.to_be_bytes()))
            );
        }
        let mut answers = BytesMut::new();
        for _ in 0..100 {
            ipc::put_response(&mut answers, 7, SaError::Ok, b"");
        }
        ipc::put_response(&mut answers, 1 | CALLBACK_FLAG, SaError::Ok, b"cb");
        peer.stream.write_all(&answers).unwrap();
        let (conn, r) = join_within(t);
        assert_eq!(r, Ok(true));
        // Every request answered: the next one goes out at once.
        assert!(conn.io.state.lock().pipelined.is_empty());
        conn.request_pipelined(7, &frame_of(7, b"alone")).unwrap();
        assert_eq!(peer.request(), (7, Bytes::from_static(b"alone")));
    }

    #[test]
    fn coalesced_requests_are_written_once_coalesce_bytes_wait() {
        let (mut conn, mut peer) = pair();
        conn.set_coalesce_wait(Duration::from_secs(60));
        conn.request_pipelined(7, &frame_of(7, b"first")).unwrap();
        let body = [0x5a; 1000];
        let mut sent = 0;
        // No answer comes: the buffer alone decides when they go.
        while sent * (body.len() + REQUEST_HEADER_LEN) < COALESCE_BYTES {
            conn.request_pipelined(7, &frame_of(7, &body)).unwrap();
            sent += 1;
        }
        assert_eq!(peer.request(), (7, Bytes::from_static(b"first")));
        for _ in 0..sent {
            assert_eq!(peer.request().1.len(), body.len());
        }
    }

    #[test]
    fn the_flusher_writes_coalesced_requests_that_no_answer_sends() {
        let (conn, mut peer) = pair();
        conn.request_pipelined(7, &frame_of(7, b"one")).unwrap();
        conn.request_pipelined(7, &frame_of(7, b"two")).unwrap();
        // Nobody reads on the client's side, and no answer comes.
        let start = Instant::now();
        assert_eq!(peer.request(), (7, Bytes::from_static(b"one")));
        assert_eq!(peer.request(), (7, Bytes::from_static(b"two")));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the flusher took {:?}",
            start.elapsed()
        );
        drop(conn);
    }

    #[test]
    fn close_sends_the_coalesced_requests_before_the_connection_ends() {
        let (mut conn, mut peer) = pair();
        conn.set_coalesce_wait(Duration::from_secs(60));
        for body in [&b"one"[..], b"two", b"three"] {
            conn.request_pipelined(7, &frame_of(7, body)).unwrap();
        }
        assert_eq!(peer.request(), (7, Bytes::from_static(b"one")));
        assert!(peer.idle());
        conn.close();
        let got: Vec<Bytes> = peer.requests_until_eof().into_iter().map(|r| r.1).collect();
        assert_eq!(got, [&b"two"[..], b"three"]);
    }

    #[test]
    fn a_full_window_that_is_not_answered_is_try_again() {
        let (conn, mut peer) = pair();
        let mut sent = 0;
        let e = loop {
            match conn.request_pipelined(7, &frame_of(7, b"m")) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent <= PIPELINE_MAX);
        };
        assert_eq!(e, SaError::TryAgain);
        // All answers in one write, as the executive writes a loop turn's output (one
        // small write per answer could fill the socket, which nobody reads meanwhile).
        let mut answers = BytesMut::new();
        for _ in 0..sent {
            assert_eq!(peer.request().0, 7);
            ipc::put_response(&mut answers, 7, SaError::Ok, b"");
        }
        peer.stream.write_all(&answers).unwrap();
        // An answer out of order breaks the stream.
        conn.request_pipelined(7, &frame_of(7, b"m")).unwrap();
        peer.send(8, SaError::Ok, b"");
        assert_eq!(conn.poll_callbacks(true), Err(SaError::MessageError));
    }

    #[test]
    fn an_error_response_is_returned_as_the_error() {
        let (conn, mut peer) = pair();
        let t = std::thread::spawn(move || conn.request(2, b""));
        peer.request();
        peer.send(2, SaError::TryAgain, b"");
        assert_eq!(join_within(t), Err(SaError::TryAgain));
    }

    #[test]
    fn a_response_nobody_asked_for_breaks_the_connection() {
        let (conn, mut peer) = pair();
        peer.send(9, SaError::Ok, b"");
        let t = std::thread::spawn(move || (conn.poll_callbacks(true), conn.request(1, b"")));
        let (poll, req) = join_within(t);
        assert_eq!(poll, Err(SaError::MessageError));
        assert_eq!(req, Err(SaError::MessageError));
    }

    #[test]
    fn bad_request_ids_and_oversized_requests_are_refused_locally() {
        let (conn, _peer) = pair();
        assert_eq!(conn.request(CONNECT_ID, b""), Err(SaError::InvalidParam));
        assert_eq!(
            conn.request(CALLBACK_FLAG | 1, b""),
            Err(SaError::InvalidParam)
        );
        let big = vec![0u8; MAX_FRAME_LEN];
        assert_eq!(conn.request(1, &big), Err(SaError::TooBig));
    }

    #[test]
    fn callbacks_read_before_a_hang_up_are_still_delivered() {
        let (conn, mut peer) = pair();
        peer.send(CALLBACK_FLAG, SaError::Ok, b"last words");
        drop(peer);
        assert_eq!(conn.poll_callbacks(true), Ok(true));
        assert_eq!(&conn.take_callback().unwrap().body[..], b"last words");
        assert_eq!(conn.poll_callbacks(true), Err(SaError::Library));
        assert_eq!(conn.request(1, b""), Err(SaError::Library));
    }

    #[test]
    fn close_drops_queued_callbacks_and_gives_bad_handle() {
        let (conn, mut peer) = pair();
        peer.send(CALLBACK_FLAG, SaError::Ok, b"x");
        assert_eq!(conn.poll_callbacks(true), Ok(true));
        conn.close();
        assert!(!conn.callbacks_pending());
        assert_eq!(conn.take_callback(), None);
        assert_eq!(conn.poll_callbacks(true), Err(SaError::BadHandle));
        assert_eq!(conn.request(1, b""), Err(SaError::BadHandle));
    }

    #[test]
    fn a_callback_in_the_same_read_as_the_handshake_reply_is_queued() {
        let (client, mut peer) = sockets();
        let mut out = BytesMut::new();
        let reply = ConnectReply {
            version: SaVersion::B_01_01,
        };
        ipc::put_response(&mut out, CONNECT_ID, SaError::Ok, &reply.to_bytes());
        ipc::put_response(&mut out, CALLBACK_FLAG, SaError::Ok, b"early");
        // Written before the client even asks, so that one read takes both frames.
        peer.stream.write_all(&out).unwrap();
        let mut v = SaVersion::B_01_01;
        let conn = Connection::handshake(client, ServiceId::CPG, &mut v).unwrap();
        assert_eq!(peer.request().0, CONNECT_ID);
        assert!(conn.callbacks_pending());
        assert_eq!(conn.poll_callbacks(false), Ok(true));
        assert_eq!(&conn.take_callback().unwrap().body[..], b"early");
    }

    /// The executive answers a refused handshake and closes at once: the caller gets
    /// the refusal's error and the supported version, never `Library` for the hang-up,
    /// even when the close resets the stream (our request unread on its side).
    #[test]
    fn a_refusal_followed_by_a_hang_up_is_reported_as_the_refusal() {
        for (error, read_first) in [
            (SaError::NotExist, true),
            (SaError::Version, true),
            (SaError::NoResources, false),
        ] {
            let (client, mut peer) = sockets();
            let t = handshake_in_thread(
                client,
                SaVersion {
                    release_code: b'B',
                    major: 3,
                    minor: 0,
                },
            );
            if read_first {
                peer.request();
            }
            let reply = ConnectReply {
                version: SaVersion::B_01_01,
            };
            peer.send(CONNECT_ID, error, &reply.to_bytes());
            drop(peer);
            assert_eq!(
                join_within(t),
                (Err(error), SaVersion::B_01_01),
                "refused with {error}"
            );
        }
    }

    #[test]
    fn version_refusal_reports_the_supported_version() {
        let (client, server) = UnixStream::pair().unwrap();
        let mut peer = Peer {
            stream: server,
            buf: BytesMut::new(),
        };
        let t = handshake_in_thread(
            client,
            SaVersion {
                release_code: b'A',
                major: 1,
                minor: 1,
            },
        );
        let (_, body) = peer.request();
        let asked = Connect::decode_exact(body).unwrap();
        let (err, supported) = SaVersion::negotiate(asked.version, SaVersion::B_01_01);
        peer.send(
            CONNECT_ID,
            err,
            &ConnectReply { version: supported }.to_bytes(),
        );
        assert_eq!(join_within(t), (Err(SaError::Version), SaVersion::B_01_01));
    }
}
