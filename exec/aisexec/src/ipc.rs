//! The IPC server: a unix stream socket in the runtime directory, one connection per
//! library handle.
//!
//! A connection's first frame binds it to one service and SA Forum version; every later
//! frame is a request routed to that service's library handler table by the registry.
//! What the registry answers (responses, callbacks) is queued on the connection and
//! written as the socket accepts it. Bad input costs the sender its connection, never the
//! executive: a malformed or oversized frame, a refused handshake (answered first, with
//! the version the executive supports), credentials not on the allowed lists (answered
//! `Access`), a connection over [`IpcServer`]'s connection limit (answered
//! `NoResources`), or an output queue over its bound
//! (a client that stopped reading) each close that one connection with a `warn!`
//! (refusals at accept time rate-limited, see [`LogLimit`]). Every bound connection that
//! closes, for whatever reason, has its service's `lib_exit` run.
//!
//! A client that reads, only slower than the ring delivers, is not closed for it: once
//! its unwritten output passes [`BEHIND_BYTES`] the daemon has the token wait at this
//! node until it is back under [`CAUGHT_UP_BYTES`], which slows the whole ring to what
//! that client takes (as corosync's flow control slows every sender). The ring never
//! stops for it (a wait is bounded per visit), and a client that has taken nothing for
//! [`STUCK_AFTER`] is not waited for: one that does not read at all slows the ring for
//! a second at most, and reaches [`MAX_OUTPUT_BYTES`] and is closed if output for it
//! keeps coming.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::path::Path;

use ais_exec::{ConnId, ConnInfo, Registry};
use ais_proto::ipc::{self, Connect, ConnectReply, CONNECT_ID};
use ais_proto::{Decode, Encode, SaError, SaVersion, ServiceId};
use bytes::{Bytes, BytesMut};
use log::{debug, info, warn};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry as MioRegistry, Token};
use slab::Slab;
use totem::Instant;

use crate::outq::OutQueue;

/// Bytes a connection may have waiting to be written before it is judged stuck: its
/// output queue never holds more (a frame that would pass it closes the connection).
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Unwritten output over which a connection's client counts as behind on its
/// deliveries: while any is, Totem's token waits at this node (see
/// `totem::Srp::set_receivers_behind`), so a client that reads, if slower than the
/// ring, slows the ring instead of reaching [`MAX_OUTPUT_BYTES`] and being closed.
pub const BEHIND_BYTES: usize = 4 << 20;
/// ... and under which it has caught up again.
pub const CAUGHT_UP_BYTES: usize = 1 << 20;
/// A client behind that has not taken a byte for this long is not reading at all: the
/// ring stops waiting for it (it is closed at [`MAX_OUTPUT_BYTES`] if output keeps
/// coming), so a stopped client cannot slow the cluster for longer than this.
pub const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// Most effects (answers, callbacks) the registry may hold when a request is served;
/// beyond it the connection waits, parked, until the daemon has carried them out.
const MAX_PENDING_EFFECTS: usize = 4096;
/// Most connections open at once (corosync bounds them too); the daemon lowers it to
/// what its descriptor limit allows. Over it, a new connection is accepted and closed.
pub const MAX_CONNECTIONS: usize = 4096;
/// Refusals at accept time logged per [`LOG_WINDOW`] at most; the rest are counted and
/// the count logged with the next line allowed.
const LOG_BURST: u32 = 5;
const LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// Bytes read from one connection per readiness event, so one busy client cannot starve
/// the others or Totem (a pipelining client keeps its socket full).
const READ_BUDGET: usize = 256 << 10;
/// What one read asks the kernel for.
const READ_CHUNK: usize = 64 << 10;

/// Who may connect, besides root and the executive's own user.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub uids: BTreeSet<u32>,
    pub gids: BTreeSet<u32>,
}

impl Access {
    /// Whether a peer with `cred` may connect to an executive running as `own_uid`:
    /// root, that user, a listed uid or a listed (primary) gid.
    pub fn allows(&self, cred: &ConnInfo, own_uid: u32) -> bool {
        cred.uid == 0
            || cred.uid == own_uid
            || self.uids.contains(&cred.uid)
            || self.gids.contains(&cred.gid)
    }
}

/// Counters for operators and tests; they only grow (`peak_output` is a high-water
/// mark).
#[derive(Clone, Debug, Default)]
pub struct IpcStats {
    pub accepted: u64,
    /// Connections refused at accept: credentials not allowed (or unreadable).
    pub refused: u64,
    /// Connections over the connection limit, closed at accept.
    pub refused_limit: u64,
    /// Handshakes refused (unknown service, version, the service's `lib_init`): answered,
    /// then closed.
    pub refused_handshake: u64,
    pub closed_bad_frame: u64,
    pub closed_slow: u64,
    /// Times a connection's output went over [`BEHIND_BYTES`].
    pub behind: u64,
    pub requests: u64,
    /// The most bytes one connection's output queue has held.
    pub peak_output: u64,
}

/// A rate limit for one kind of log line: at most [`LOG_BURST`] lines per
/// [`LOG_WINDOW`], so that a local client opening connections in a loop cannot flood
/// the log.
#[derive(Debug, Default)]
pub struct LogLimit {
    window_start: Option<std::time::Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimit {
    /// Whether a line may be logged at `now`: `Some(n)` with the `n` lines suppressed
    /// since the last one logged, or `None` (this line is suppressed and counted).
    pub fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= LOG_WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= LOG_BURST {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Answers a connection refused at accept with `error` before its handshake is even
/// read, so that the library reports why instead of a lost connection; best effort (a
/// fresh socket takes these few bytes at once), the caller then closes it.
fn turn_away(stream: &mut UnixStream, error: SaError) {
    let mut out = BytesMut::new();
    let reply = ConnectReply {
        version: SaVersion::B_01_01,
    };
    ipc::put_response(&mut out, CONNECT_ID, error, &reply.to_bytes());
    if let Err(e) = stream.write_all(&out) {
        debug!(target: "ipc", "could not tell a refused connection why: {e}");
    }
}

/// Why [`IpcServer::process_frames`] stopped serving a connection.
enum Stop {
    /// A frame that cannot be (or a request before the handshake): close at once.
    BadFrame(String),
    /// The handshake was refused and answered: send the answer, then close.
    Refused(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitConnect,
    Bound(ServiceId),
}

struct Conn {
    stream: UnixStream,
    id: ConnId,
    cred: ConnInfo,
    state: State,
    inbuf: BytesMut,
    /// A request taken off `inbuf` that the registry said must wait; it is served first
    /// when the connection resumes.
    held: Option<(u32, Bytes)>,
    /// Whether the connection is in `IpcServer::parked`: neither read nor served until
    /// resumed, so its requests stay in order behind `held`.
    parked: bool,
    /// Encoded frames not yet written, oldest first.
    out: OutQueue,
    /// Whether the connection is in `IpcServer::dirty` (output to flush this turn).
    dirty: bool,
    /// Whether WRITABLE interest is registered (only while output waits).
    want_write: bool,
    /// When the client last took output (or connected).
    last_progress: std::time::Instant,
}

/// When [`IpcServer::readable`] takes a connection's socket for empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadUntil {
    /// When a read says it would block.
    WouldBlock,
    /// Also when a read returns less than it asked for: the socket held no more at
    /// that moment, and data arriving later makes a new (edge-triggered) event, so the
    /// read that would only report "empty" is saved: one system call per request at
    /// the latency. Not for an event that reported a hang-up: the end of file behind
    /// the data would go unread.
    ShortRead,
}

pub struct IpcServer {
    listener: UnixListener,
    conns: Slab<Conn>,
    by_id: BTreeMap<ConnId, usize>,
    next_id: u64,
    token_base: usize,
    access: Access,
    /// The executive's effective uid, always allowed.
    own_uid: u32,
    max_connections: usize,
    refusals_logged: LogLimit,
    stats: IpcStats,
    /// Connections with output queued since the last [`IpcServer::flush_dirty`].
    dirty: Vec<usize>,
    /// Connections holding a request that must wait, in the order they stopped.
    parked: VecDeque<usize>,
    /// Connections whose output went over [`BEHIND_BYTES`] and is not yet back under
    /// [`CAUGHT_UP_BYTES`].
    behind: BTreeSet<usize>,
    /// The buffer reads go into (zeroed once, reused).
    scratch: Vec<u8>,
}

impl IpcServer {
    /// Binds the socket at `path` (removing a stale one: the caller holds the runtime
    /// directory's lock, so no live executive owns it). Connection tokens are
    /// `token_base + slot`. At most `max_connections` are open at once.
    pub fn bind(
        path: &Path,
        token_base: usize,
        access: Access,
        max_connections: usize,
    ) -> io::Result<IpcServer> {
        match std::fs::remove_file(path) {
            Ok(()) => debug!(target: "ipc", "removed stale socket {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        info!(target: "ipc", "listening on {}", path.display());
        Ok(IpcServer {
            listener,
            conns: Slab::new(),
            by_id: BTreeMap::new(),
            next_id: 1,
            token_base,
            access,
            own_uid: rustix::process::geteuid().as_raw(),
            max_connections,
            refusals_logged: LogLimit::default(),
            stats: IpcStats::default(),
            dirty: Vec::new(),
            parked: VecDeque::new(),
            behind: BTreeSet::new(),
            scratch: vec![0; READ_CHUNK],
        })
    }

    pub fn listener(&mut self) -> &mut UnixListener {
        &mut self.listener
    }

    pub fn stats(&self) -> &IpcStats {
        &self.stats
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accepts every pending connection.
    pub fn accept(&mut self, poll: &MioRegistry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.refusal(format_args!("accept: {e}"));
                    return;
                }
            };
            if self.conns.len() >= self.max_connections {
                self.stats.refused_limit += 1;
                let open = self.conns.len();
                self.refusal(format_args!(
                    "refusing a connection: {open} open, the most allowed"
                ));
                turn_away(&mut stream, SaError::NoResources);
                continue; // dropping the stream closes it
            }
            let cred = match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(c) => ConnInfo {
                    pid: c.pid.as_raw_nonzero().get() as u32,
                    uid: c.uid.as_raw(),
                    gid: c.gid.as_raw(),
                },
                Err(e) => {
                    self.stats.refused += 1;
                    self.refusal(format_args!(
                        "cannot read peer credentials: {e}; refusing connection"
                    ));
                    continue;
                }
            };
            if !self.access.allows(&cred, self.own_uid) {
                self.stats.refused += 1;
                self.refusal(format_args!(
                    "refusing connection from pid {} uid {} gid {}: not allowed by uidgid",
                    cred.pid, cred.uid, cred.gid
                ));
                turn_away(&mut stream, SaError::Access);
                continue;
            }
            let entry = self.conns.vacant_entry();
            let token = Token(self.token_base + entry.key());
            if let Err(e) = poll.register(&mut stream, token, Interest::READABLE) {
                warn!(target: "ipc", "register connection: {e}");
                continue;
            }
            let id = ConnId(self.next_id);
            self.next_id += 1;
            self.by_id.insert(id, entry.key());
            debug!(target: "ipc", "connection {} from pid {} uid {}", id.0, cred.pid, cred.uid);
            entry.insert(Conn {
                stream,
                id,
                cred,
                state: State::AwaitConnect,
                inbuf: BytesMut::with_capacity(4096),
                held: None,
                parked: false,
                out: OutQueue::default(),
                dirty: false,
                want_write: false,
                last_progress: std::time::Instant::now(),
            });
            self.stats.accepted += 1;
        }
    }

    /// Logs a refusal at accept time, within [`LogLimit`].
    fn refusal(&mut self, what: std::fmt::Arguments<'_>) {
        match self.refusals_logged.admit(std::time::Instant::now()) {
            Some(0) => warn!(target: "ipc", "{what}"),
            Some(n) => warn!(target: "ipc", "{what} ({n} more refusals not logged)"),
            None => {}
        }
    }

    /// The slot a token names, if it is one of ours.
    pub fn slot_of(&self, token: Token) -> Option<usize> {
        token
            .0
            .checked_sub(self.token_base)
            .filter(|k| self.conns.contains(*k))
    }

    /// Whether some connection holds a request that must wait.
    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Serves what the connection in `slot` sent: whole frames already buffered first,
    /// then reads until the socket is empty, the read budget is spent, or a request must
    /// wait (then the connection is parked and not read until [`IpcServer::resume`]).
    /// `room` is how many more multicasts Totem takes now; each request served counts
    /// against it. `until` says when the socket counts as empty. Returns how many
    /// requests were served.
    pub fn readable(
        &mut self,
        slot: usize,
        poll: &MioRegistry,
        reg: &mut Registry,
        now: Instant,
        room: &mut usize,
        until: ReadUntil,
    ) -> usize {
        let mut served = 0;
        let mut budget = READ_BUDGET;
        let mut short = false;
        loop {
            match self.process_frames(slot, reg, now, room) {
                Ok(n) => served += n,
                Err(Stop::BadFrame(why)) => {
                    self.stats.closed_bad_frame += 1;
                    self.close(slot, poll, reg, &why, true);
                    return served;
                }
                Err(Stop::Refused(why)) => {
                    self.stats.refused_handshake += 1;
                    // The answer is a few bytes on a fresh socket: one write takes it.
                    self.flush(slot, poll, reg);
                    self.close(slot, poll, reg, &why, true);
                    return served;
                }
            }
            let Some(conn) = self.conns.get_mut(slot) else {
                return served;
            };
            if conn.parked || short {
                return served;
            }
            if budget == 0 {
                // More may be waiting: mio is edge-triggered, so ask to be woken again.
                let token = Token(self.token_base + slot);
                let interest = if conn.want_write {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                let _ = poll.reregister(&mut conn.stream, token, interest);
                return served;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    // Frames already complete were served above.
                    self.close(slot, poll, reg, "closed by peer", false);
                    return served;
                }
                Ok(n) => {
                    conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    budget = budget.saturating_sub(n);
                    if until == ReadUntil::ShortRead && n < self.scratch.len() {
                        // Drained: serve what came, and save the read that would only
                        // say so.
                        short = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return served,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(slot, poll, reg, &format!("read error: {e}"), false);
                    return served;
                }
            }
        }
    }

    /// Gives every parked connection another go, oldest first, while `room` lasts
    /// (one that must still wait goes to the back). Returns how many requests were
    /// served.
    pub fn resume(
        &mut self,
        poll: &MioRegistry,
        reg: &mut Registry,
        now: Instant,
        room: &mut usize,
    ) -> usize {
        let mut served = 0;
        for _ in 0..self.parked.len() {
            let Some(slot) = self.parked.pop_front() else {
                break;
            };
            match self.conns.get_mut(slot) {
                Some(c) if c.parked => c.parked = false,
                _ => continue,
            }
            served += self.readable(slot, poll, reg, now, room, ReadUntil::WouldBlock);
        }
        served
    }

    fn process_frames(
        &mut self,
        slot: usize,
        reg: &mut Registry,
        now: Instant,
        room: &mut usize,
    ) -> Result<usize, Stop> {
        let mut served = 0;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return Ok(served);
            };
            let (id, body) = match conn.held.take() {
                Some(f) => f,
                None => match ipc::take_request(&mut conn.inbuf) {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(served),
                    Err(e) => return Err(Stop::BadFrame(format!("bad frame: {e}"))),
                },
            };
            match conn.state {
                State::AwaitConnect => {
                    self.stats.requests += 1;
                    if id != CONNECT_ID {
                        return Err(Stop::BadFrame(format!(
                            "request {id} before the connect handshake"
                        )));
                    }
                    let connect = Connect::decode_exact(body)
                        .map_err(|e| Stop::BadFrame(format!("bad connect: {e}")))?;
                    let conn_id = conn.id;
                    let cred = conn.cred;
                    // An unknown service has no version: the reply names the lowest one
                    // of the release the executive implements.
                    let (error, version) = match reg.service_version(connect.service) {
                        None => (SaError::NotExist, SaVersion::B_01_01),
                        Some(supported) => SaVersion::negotiate(connect.version, supported),
                    };
                    let error = if error == SaError::Ok {
                        match reg.lib_connect(conn_id, connect.service, cred) {
                            Ok(()) => SaError::Ok,
                            Err(e) => e,
                        }
                    } else {
                        error
                    };
                    let reply = ConnectReply { version }.to_bytes();
                    debug!(target: "ipc", "connection {} asks service {} version {}: {error}", conn_id.0, connect.service, connect.version);
                    // A fresh connection's buffer is far below the bound.
                    self.queue(slot, CONNECT_ID, error, &reply, &Bytes::new());
                    if error != SaError::Ok {
                        return Err(Stop::Refused(format!(
                            "handshake for service {} version {} refused: {error} (supported {version})",
                            connect.service, connect.version
                        )));
                    }
                    if let Some(c) = self.conns.get_mut(slot) {
                        c.state = State::Bound(connect.service);
                    }
                }
                State::Bound(_) => {
                    let conn_id = conn.id;
                    // Answers wait in the registry until the daemon pumps them to the
                    // connections (where their bound applies): a client whose requests
                    // are answered with more than they cost must not pile up more than
                    // this in one turn. Its connection waits for the next go, as below.
                    if reg.lib_request_must_wait(conn_id, id, *room)
                        || reg.pending_effects() >= MAX_PENDING_EFFECTS
                    {
                        conn.held = Some((id, body));
                        conn.parked = true;
                        self.parked.push_back(slot);
                        return Ok(served);
                    }
                    self.stats.requests += 1;
                    reg.lib_request(now, conn_id, id, body, *room);
                    *room = room.saturating_sub(1);
                    served += 1;
                }
            }
        }
    }

    /// Queues a response or callback frame for the connection `conn`, to be written by
    /// [`IpcServer::flush_dirty`]; a connection whose output is over its bound (a client
    /// that stopped reading) is closed and the registry told.
    pub fn send(
        &mut self,
        conn: ConnId,
        id: u32,
        error: SaError,
        body: &Bytes,
        poll: &MioRegistry,
        reg: &mut Registry,
    ) {
        self.send_parts(conn, id, error, (body, &Bytes::new()), poll, reg);
    }

    /// As [`IpcServer::send`], for a frame whose body is `parts.0` followed by
    /// `parts.1` (a callback with a tail: see `ais_exec::Effect::Dispatch`).
    pub fn send_parts(
        &mut self,
        conn: ConnId,
        id: u32,
        error: SaError,
        parts: (&Bytes, &Bytes),
        poll: &MioRegistry,
        reg: &mut Registry,
    ) {
        let Some(&slot) = self.by_id.get(&conn) else {
            return; // closed meanwhile: the registry was told then
        };
        if !self.queue(slot, id, error, parts.0, parts.1) {
            self.stats.closed_slow += 1;
            self.close(
                slot,
                poll,
                reg,
                "output queue over its bound (client not reading)",
                true,
            );
        }
    }

    /// Encodes a frame onto the connection in `slot`'s output; false if that would
    /// pass [`MAX_OUTPUT_BYTES`].
    fn queue(&mut self, slot: usize, id: u32, error: SaError, body: &Bytes, tail: &Bytes) -> bool {
        let Some(c) = self.conns.get_mut(slot) else {
            return true;
        };
        if c.out.len() + ipc::RESPONSE_HEADER_LEN + body.len() + tail.len() > MAX_OUTPUT_BYTES {
            return false;
        }
        c.out.push_frame_parts(id, error, body, tail);
        self.stats.peak_output = self.stats.peak_output.max(c.out.len() as u64);
        if c.out.len() > BEHIND_BYTES && self.behind.insert(slot) {
            self.stats.behind += 1;
            debug!(target: "ipc", "connection {} (pid {}) is {} bytes behind: the ring waits for it",
                c.id.0, c.cred.pid, c.out.len());
        }
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(slot);
        }
        true
    }

    /// Whether some client is behind on its deliveries: its unwritten output went over
    /// [`BEHIND_BYTES`] and has not come back under [`CAUGHT_UP_BYTES`], and it took
    /// output within [`STUCK_AFTER`] (one that stopped reading is not waited for).
    pub fn receivers_behind(&self) -> bool {
        if self.behind.is_empty() {
            return false;
        }
        let now = std::time::Instant::now();
        self.behind.iter().any(|&slot| {
            self.conns
                .get(slot)
                .is_some_and(|c| now.duration_since(c.last_progress) < STUCK_AFTER)
        })
    }

    /// Whether the output queued since the last [`IpcServer::flush_dirty`], over all
    /// connections, is below `limit` bytes.
    pub fn dirty_output_below(&self, limit: usize) -> bool {
        let mut total = 0;
        for &slot in &self.dirty {
            total += self.conns.get(slot).map_or(0, |c| c.out.len());
            if total >= limit {
                return false;
            }
        }
        true
    }

    /// Writes the output queued since the last call, one write per connection (as much
    /// as each socket takes; the rest when it is writable again).
    pub fn flush_dirty(&mut self, poll: &MioRegistry, reg: &mut Registry) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            if let Some(c) = self.conns.get_mut(slot) {
                c.dirty = false;
                self.flush(slot, poll, reg);
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// Writes as much queued output as the socket takes.
    pub fn flush(&mut self, slot: usize, poll: &MioRegistry, reg: &mut Registry) {
        let mut failed = None;
        if let Some(c) = self.conns.get_mut(slot) {
            while !c.out.is_empty() {
                match c.out.write_to(&mut c.stream) {
                    Ok(0) => {
                        failed = Some("write returned 0".to_string());
                        break;
                    }
                    Ok(_) => c.last_progress = std::time::Instant::now(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failed = Some(format!("write error: {e}"));
                        break;
                    }
                }
            }
            if c.out.len() <= CAUGHT_UP_BYTES {
                self.behind.remove(&slot);
            }
            let want = !c.out.is_empty();
            if want != c.want_write && failed.is_none() {
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if poll
                    .reregister(&mut c.stream, Token(self.token_base + slot), interest)
                    .is_ok()
                {
                    c.want_write = want;
                }
            }
        }
        if let Some(why) = failed {
            self.close(slot, poll, reg, &why, false);
        }
    }

    /// Closes one connection; the registry runs its service's `lib_exit`.
    pub fn close_conn(&mut self, conn: ConnId, poll: &MioRegistry, reg: &mut Registry, why: &str) {
        if let Some(&slot) = self.by_id.get(&conn) {
            self.close(slot, poll, reg, why, true);
        }
    }

    fn close(
        &mut self,
        slot: usize,
        poll: &MioRegistry,
        reg: &mut Registry,
        why: &str,
        loud: bool,
    ) {
        if !self.conns.contains(slot) {
            return;
        }
        let mut c = self.conns.remove(slot);
        self.behind.remove(&slot);
        let _ = poll.deregister(&mut c.stream);
        self.by_id.remove(&c.id);
        if loud {
            warn!(target: "ipc", "closing connection {} (pid {}): {why}", c.id.0, c.cred.pid);
        } else {
            debug!(target: "ipc", "connection {} (pid {}) {why}", c.id.0, c.cred.pid);
        }
        if let State::Bound(_) = c.state {
            reg.lib_disconnect(c.id);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The server driven as the daemon drives it (accept, read, effects, flush) against
    //! real unix sockets, with two test services: `Echo` answers request 0 with as many
    //! bytes as the request's body asks for, `Picky` refuses every `lib_init`.

    use super::*;
    use ais_exec::{Api, ExecHandler, LibHandler, Service};
    use ais_proto::ipc::ResponseFrame;
    use mio::{Events, Poll};
    use std::os::unix::net::UnixStream as StdStream;
    use std::path::PathBuf;
    use std::time::Duration;

    const LISTENER: Token = Token(0);
    /// Every wait of these tests gives up after this.
    const WAIT: Duration = Duration::from_secs(10);

    #[derive(Default)]
    struct Echo {
        exits: Vec<ConnId>,
    }

    impl Echo {
        fn answer(&mut self, api: &mut Api, conn: ConnId, body: Bytes) {
            let len = <[u8; 4]>::try_from(&body[..]).map_or(0, u32::from_be_bytes) as usize;
            api.response(conn, 0, SaError::Ok, Bytes::from(vec![0x5a; len]));
        }
    }

    impl Service for Echo {
        const ID: ServiceId = ServiceId(0x7e01);
        const NAME: &'static str = "echo";
        const VERSION: SaVersion = SaVersion::B_01_01;
        const LIB: &'static [LibHandler<Self>] = &[LibHandler {
            id: 0,
            flow_control: false,
            needs_sync: false,
            handler: Echo::answer,
        }];
        const EXEC: &'static [ExecHandler<Self>] = &[];
        const SYNC: bool = false;

        fn lib_exit(&mut self, _api: &mut Api, conn: ConnId) {
            self.exits.push(conn);
        }
    }

    #[derive(Default)]
    struct Picky {
        exits: usize,
    }

    impl Service for Picky {
        const ID: ServiceId = ServiceId(0x7e02);
        const NAME: &'static str = "picky";
        const VERSION: SaVersion = SaVersion::B_01_01;
        const LIB: &'static [LibHandler<Self>] = &[];
        const EXEC: &'static [ExecHandler<Self>] = &[];
        const SYNC: bool = false;

        fn lib_init(&mut self, _: &mut Api, _: ConnId, _: ConnInfo) -> Result<(), SaError> {
            Err(SaError::NoResources)
        }

        fn lib_exit(&mut self, _api: &mut Api, _conn: ConnId) {
            self.exits += 1;
        }
    }

    /// A server, its registry and poll, in a directory of its own (removed on drop).
    struct Rig {
        poll: Poll,
        events: Events,
        server: IpcServer,
        reg: Registry,
        dir: PathBuf,
        /// The most effects the registry held when drained.
        peak_effects: usize,
    }

    impl Rig {
        fn new(name: &str, max_connections: usize) -> Rig {
            let dir =
                std::env::temp_dir().join(format!("aisexec-ipc-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut server = IpcServer::bind(
                &dir.join("aisexec.sock"),
                1,
                Access::default(),
                max_connections,
            )
            .unwrap();
            let poll = Poll::new().unwrap();
            poll.registry()
                .register(server.listener(), LISTENER, Interest::READABLE)
                .unwrap();
            let mut reg = Registry::new(totem::NodeId(1));
            reg.register(Echo::default());
            reg.register(Picky::default());
            Rig {
                poll,
                events: Events::with_capacity(64),
                server,
                reg,
                dir,
                peak_effects: 0,
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.join("aisexec.sock")
        }

        /// One turn of the daemon's loop: events, then effects, then the flush.
        fn turn(&mut self) {
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(5)))
                .unwrap();
            let mut room = usize::MAX;
            for ev in self.events.iter() {
                if ev.token() == LISTENER {
                    self.server.accept(self.poll.registry());
                    continue;
                }
                let Some(slot) = self.server.slot_of(ev.token()) else {
                    continue;
                };
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.server.readable(
                        slot,
                        self.poll.registry(),
                        &mut self.reg,
                        Instant(0),
                        &mut room,
                        ReadUntil::WouldBlock,
                    );
                }
                if ev.is_writable() {
                    self.server.flush(slot, self.poll.registry(), &mut self.reg);
                }
            }
            self.drain_effects();
            // Connections that waited go on, as in the daemon.
            while self.server.has_parked() {
                let mut room = usize::MAX;
                let poll = self.poll.registry();
                if self
                    .server
                    .resume(poll, &mut self.reg, Instant(0), &mut room)
                    == 0
                {
                    break;
                }
                self.drain_effects();
            }
            self.server.flush_dirty(self.poll.registry(), &mut self.reg);
        }

        /// Carries out the registry's effects, as the daemon's pump does.
        fn drain_effects(&mut self) {
            self.peak_effects = self.peak_effects.max(self.reg.pending_effects());
            while let Some(effect) = self.reg.poll_effect() {
                let reg = self.poll.registry();
                match effect {
                    ais_exec::Effect::Response {
                        conn,
                        id,
                        error,
                        body,
                    } => self.server.send(conn, id, error, &body, reg, &mut self.reg),
                    ais_exec::Effect::Dispatch {
                        conn,
                        id,
                        body,
                        tail,
                    } => self.server.send_parts(
                        conn,
                        id | ipc::CALLBACK_FLAG,
                        SaError::Ok,
                        (&body, &tail),
                        reg,
                        &mut self.reg,
                    ),
                    ais_exec::Effect::Disconnect { conn } => {
                        self.server.close_conn(conn, reg, &mut self.reg, "test")
                    }
                    ais_exec::Effect::Mcast { .. } => {}
                }
            }
        }

        /// Turns until `done` holds; fails the test after [`WAIT`].
        fn turn_until(&mut self, what: &str, mut done: impl FnMut(&mut Rig) -> bool) {
            let deadline = std::time::Instant::now() + WAIT;
            while !done(self) {
                assert!(std::time::Instant::now() < deadline, "never: {what}");
                self.turn();
            }
        }

        /// A client connected and accepted.
        fn connect(&mut self) -> Client {
            let before = self.server.stats().accepted + self.server.stats().refused_limit;
            let stream = StdStream::connect(self.path()).unwrap();
            stream.set_nonblocking(true).unwrap();
            self.turn_until("the connection is accepted", |r| {
                r.server.stats().accepted + r.server.stats().refused_limit > before
            });
            Client {
                stream,
                buf: BytesMut::new(),
            }
        }

        /// A client bound to the echo service, its handshake answered `Ok`.
        fn echo_client(&mut self) -> Client {
            let mut c = self.connect();
            let reply = self.handshake(&mut c, Echo::ID, SaVersion::B_01_01);
            assert_eq!(reply.sa_error(), SaError::Ok, "echo handshake");
            c
        }

        /// A client bound to `service` at `version`: the handshake's answer.
        fn handshake(
            &mut self,
            c: &mut Client,
            service: ServiceId,
            version: SaVersion,
        ) -> ResponseFrame {
            c.send(CONNECT_ID, &Connect { service, version }.to_bytes());
            let reply = self.response(c);
            assert_eq!(reply.id, CONNECT_ID);
            reply
        }

        /// The next frame the server sends `c`.
        fn response(&mut self, c: &mut Client) -> ResponseFrame {
            let mut got = None;
            self.turn_until("a response", |_| {
                got = c.poll_frame();
                got.is_some()
            });
            got.unwrap()
        }

        /// Turns until the server has closed `c` (it reads end of file, every frame
        /// before it dropped).
        fn wait_closed(&mut self, c: &mut Client) {
            self.turn_until("the server closes the connection", |_| c.at_eof());
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    struct Client {
        stream: StdStream,
        buf: BytesMut,
    }

    impl Client {
        fn send(&mut self, id: u32, body: &[u8]) {
            let mut out = BytesMut::new();
            ipc::put_request(&mut out, id, body);
            self.send_raw(&out);
        }

        fn send_raw(&mut self, bytes: &[u8]) {
            self.stream.set_nonblocking(false).unwrap();
            self.stream.write_all(bytes).unwrap();
            self.stream.set_nonblocking(true).unwrap();
        }

        /// Reads what is there; Ok(true) at end of file (or reset).
        fn read_some(&mut self) -> bool {
            let mut chunk = [0u8; 65536];
            loop {
                match self.stream.read(&mut chunk) {
                    Ok(0) => return true,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }

        fn poll_frame(&mut self) -> Option<ResponseFrame> {
            if let Some(f) = ipc::take_response(&mut self.buf).unwrap() {
                return Some(f);
            }
            self.read_some();
            ipc::take_response(&mut self.buf).unwrap()
        }

        fn at_eof(&mut self) -> bool {
            let eof = self.read_some();
            while ipc::take_response(&mut self.buf).unwrap().is_some() {}
            eof
        }
    }

    fn echo_request(len: u32) -> [u8; 4] {
        len.to_be_bytes()
    }

    #[test]
    fn access_allows_root_its_own_user_and_the_listed_ids_only() {
        let access = Access {
            uids: [1000].into(),
            gids: [50].into(),
        };
        let cred = |uid, gid| ConnInfo { pid: 1, uid, gid };
        let me = 4242;
        assert!(access.allows(&cred(0, 0), me), "root");
        assert!(access.allows(&cred(0, 999), me), "root in any group");
        assert!(access.allows(&cred(me, 7), me), "the executive's own user");
        assert!(access.allows(&cred(1000, 7), me), "a listed uid");
        assert!(access.allows(&cred(77, 50), me), "a listed gid");
        assert!(!access.allows(&cred(77, 7), me), "neither");
        assert!(
            !access.allows(&cred(50, 1000), me),
            "uid and gid lists are apart"
        );
        assert!(
            !Access::default().allows(&cred(1000, 50), me),
            "empty lists"
        );
        assert!(Access::default().allows(&cred(me, 50), me));
    }

    #[test]
    fn refusals_are_logged_a_few_per_window_and_the_rest_counted() {
        let mut l = LogLimit::default();
        let t0 = std::time::Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(l.admit(t0), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(l.admit(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.admit(t0 + LOG_WINDOW), Some(7));
        assert_eq!(l.admit(t0 + LOG_WINDOW), Some(0));
    }

    #[test]
    fn a_bound_connection_is_served_and_its_close_runs_lib_exit() {
        let mut rig = Rig::new("served", 8);
        let mut c = rig.echo_client();
        c.send(0, &echo_request(3));
        let r = rig.response(&mut c);
        assert_eq!(
            (r.id, r.sa_error(), &r.body[..]),
            (0, SaError::Ok, &b"ZZZ"[..])
        );
        drop(c);
        rig.turn_until("lib_exit", |r| {
            r.reg.service::<Echo>().unwrap().exits.len() == 1
        });
        assert_eq!(rig.server.connections(), 0);
    }

    /// Every refused handshake is answered with the version supported, then closed, and
    /// counted; the service's `lib_exit` is not run for a connection never bound.
    #[test]
    fn a_refused_handshake_is_answered_then_closed() {
        let mut rig = Rig::new("refused", 8);
        let release_a = SaVersion {
            release_code: b'A',
            major: 1,
            minor: 1,
        };
        let cases = [
            (ServiceId(0x7e7e), SaVersion::B_01_01, SaError::NotExist),
            (Echo::ID, release_a, SaError::Version),
            (
                Echo::ID,
                SaVersion {
                    release_code: b'B',
                    major: 9,
                    minor: 1,
                },
                SaError::Version,
            ),
            (Picky::ID, SaVersion::B_01_01, SaError::NoResources),
        ];
        for (n, (service, version, error)) in cases.into_iter().enumerate() {
            let mut c = rig.connect();
            let reply = rig.handshake(&mut c, service, version);
            assert_eq!(
                reply.sa_error(),
                error,
                "service {service} version {version}"
            );
            let v = ConnectReply::decode_exact(reply.body).unwrap().version;
            assert_eq!(v, SaVersion::B_01_01);
            // Whatever the client sends next is not served: the connection is closed.
            let _ = c.stream.write_all(&{
                let mut b = BytesMut::new();
                ipc::put_request(&mut b, 0, &echo_request(1));
                b
            });
            rig.wait_closed(&mut c);
            assert_eq!(rig.server.stats().refused_handshake, n as u64 + 1);
            rig.turn_until("the refused connection is gone", |r| {
                r.server.connections() == 0
            });
        }
        assert!(rig.reg.service::<Echo>().unwrap().exits.is_empty());
        assert_eq!(rig.reg.service::<Picky>().unwrap().exits, 0);
        assert_eq!(
            rig.reg.stats().lib_requests.len(),
            0,
            "a request was served"
        );
    }

    /// Through the client library: the refusal reaches the caller as its SaError, with
    /// the supported version, not as a lost connection.
    #[test]
    fn libais_reports_a_refused_handshake_as_its_error() {
        let mut rig = Rig::new("libais", 8);
        let cases = [
            (ServiceId(0x7e7e), SaVersion::B_01_01, SaError::NotExist),
            (
                Echo::ID,
                SaVersion {
                    release_code: b'C',
                    major: 1,
                    minor: 1,
                },
                SaError::Version,
            ),
            (Picky::ID, SaVersion::B_01_01, SaError::NoResources),
            (Echo::ID, SaVersion::B_01_01, SaError::Ok),
        ];
        for (service, asked, want) in cases {
            let path = rig.path();
            let t = std::thread::spawn(move || {
                let mut v = asked;
                let r = libais::conn::Connection::connect_at(path, service, &mut v);
                (r.map(|c| c.version()), v)
            });
            rig.turn_until("libais's connect returns", |_| t.is_finished());
            let (r, v) = t.join().unwrap();
            assert_eq!(v, SaVersion::B_01_01, "service {service} asked {asked}");
            match want {
                SaError::Ok => assert_eq!(r, Ok(SaVersion::B_01_01)),
                e => assert_eq!(r, Err(e), "service {service} asked {asked}"),
            }
        }
    }

    #[test]
    fn connections_over_the_limit_are_closed_at_once_and_counted() {
        let mut rig = Rig::new("limit", 2);
        let mut a = rig.connect();
        let mut b = rig.connect();
        for c in [&mut a, &mut b] {
            assert_eq!(
                rig.handshake(c, Echo::ID, SaVersion::B_01_01).sa_error(),
                SaError::Ok
            );
        }
        let mut over = rig.connect();
        let why = rig.response(&mut over);
        assert_eq!((why.id, why.sa_error()), (CONNECT_ID, SaError::NoResources));
        rig.wait_closed(&mut over);
        // Through libais: the caller learns why.
        let path = rig.path();
        let t = std::thread::spawn(move || {
            let mut v = SaVersion::B_01_01;
            libais::conn::Connection::connect_at(path, Echo::ID, &mut v).map(|_| ())
        });
        rig.turn_until("libais's connect returns", |_| t.is_finished());
        assert_eq!(t.join().unwrap(), Err(SaError::NoResources));
        assert_eq!(rig.server.stats().refused_limit, 2);
        assert_eq!(rig.server.stats().accepted, 2);
        assert_eq!(rig.server.connections(), 2);
        // Those open are served all the same; one closing makes room for another.
        a.send(0, &echo_request(1));
        assert_eq!(rig.response(&mut a).body.len(), 1);
        drop(b);
        rig.turn_until("the closed one is gone", |r| r.server.connections() == 1);
        let _c = rig.echo_client();
        assert_eq!(rig.server.stats().accepted, 3);
    }

    #[test]
    fn malformed_and_oversized_frames_close_only_their_connection() {
        let mut rig = Rig::new("garbage", 8);
        let mut good = rig.echo_client();
        let oversized = |id: u32| {
            let mut b = Vec::new();
            b.extend_from_slice(&(ipc::MAX_FRAME_LEN as u32 + 1).to_be_bytes());
            b.extend_from_slice(&id.to_be_bytes());
            b
        };
        let mut bad: Vec<Vec<u8>> = vec![
            oversized(CONNECT_ID),
            u32::MAX.to_be_bytes().to_vec(),
            vec![0, 0, 0, 3, 0, 0, 0, 0],
        ];
        let mut bad_connect = Vec::new();
        bad_connect.extend_from_slice(&10u32.to_be_bytes());
        bad_connect.extend_from_slice(&CONNECT_ID.to_be_bytes());
        bad_connect.extend_from_slice(&[1, 2]);
        bad.push(bad_connect);
        let mut early = Vec::new();
        early.extend_from_slice(&8u32.to_be_bytes());
        early.extend_from_slice(&0u32.to_be_bytes());
        bad.push(early);
        for (n, bytes) in bad.iter().enumerate() {
            let mut c = rig.connect();
            c.send_raw(bytes);
            rig.wait_closed(&mut c);
            assert_eq!(rig.server.stats().closed_bad_frame, n as u64 + 1);
        }
        // A bound connection sending an oversized frame: closed, and its lib_exit runs.
        let mut bound = rig.echo_client();
        bound.send_raw(&oversized(0));
        rig.wait_closed(&mut bound);
        rig.turn_until("lib_exit of the oversized one", |r| {
            r.reg.service::<Echo>().unwrap().exits.len() == 1
        });
        assert_eq!(rig.server.stats().closed_bad_frame, bad.len() as u64 + 1);
        // The first client never noticed.
        good.send(0, &echo_request(2));
        assert_eq!(rig.response(&mut good).body.len(), 2);
        assert_eq!(rig.server.connections(), 1);
    }

    /// A client that asks for far more than it reads is closed once its output would
    /// pass the bound; the queue never holds more than the bound, its service's
    /// `lib_exit` runs, and another client goes on being served.
    #[test]
    fn a_client_that_stops_reading_is_closed_and_its_output_stays_bounded() {
        let mut rig = Rig::new("slow", 8);
        let mut other = rig.echo_client();
        let mut slow = rig.echo_client();
        // 1 MiB answers, twice the bound's worth; the client reads none of them.
        let answer = 1u32 << 20;
        let asks = 2 * MAX_OUTPUT_BYTES / answer as usize;
        let mut out = BytesMut::new();
        for _ in 0..asks {
            ipc::put_request(&mut out, 0, &echo_request(answer));
        }
        slow.send_raw(&out);
        rig.turn_until("the slow client is closed", |r| {
            r.server.stats().closed_slow == 1
        });
        let peak = rig.server.stats().peak_output as usize;
        assert!(
            peak <= MAX_OUTPUT_BYTES,
            "output queue reached {peak} bytes"
        );
        let frame = ipc::RESPONSE_HEADER_LEN + answer as usize;
        assert!(
            peak + frame > MAX_OUTPUT_BYTES,
            "closed at {peak} bytes queued, well before the bound"
        );
        assert_eq!(rig.reg.service::<Echo>().unwrap().exits.len(), 1);
        assert_eq!(rig.server.connections(), 1);
        // What it had not read was dropped with the connection.
        rig.wait_closed(&mut slow);
        other.send(0, &echo_request(5));
        assert_eq!(rig.response(&mut other).body.len(), 5);
    }

    /// A client far behind on its output counts as behind (the ring waits for it) while
    /// it takes output, not once it has taken nothing for STUCK_AFTER, again when it
    /// reads again, and no more once it has caught up.
    #[test]
    fn a_client_behind_is_waited_for_while_it_reads_and_not_once_it_stops() {
        let mut rig = Rig::new("behind", 8);
        let mut c = rig.echo_client();
        assert!(!rig.server.receivers_behind());
        // Eight 1 MiB answers, unread: past BEHIND_BYTES, within the bound.
        let answer = 1u32 << 20;
        let asks = 8;
        let mut out = BytesMut::new();
        for _ in 0..asks {
            ipc::put_request(&mut out, 0, &echo_request(answer));
        }
        c.send_raw(&out);
        rig.turn_until("the client is behind", |r| r.server.receivers_behind());
        assert_eq!(rig.server.stats().behind, 1);
        // It takes nothing for longer than STUCK_AFTER: not waited for any more.
        std::thread::sleep(STUCK_AFTER + Duration::from_millis(100));
        rig.turn();
        assert!(
            !rig.server.receivers_behind(),
            "a stopped client is still waited for"
        );
        // It reads some (not all): output moves again, and it is behind again.
        rig.turn_until("a mebibyte read", |_| {
            c.read_some();
            c.buf.len() >= 1 << 20
        });
        assert!(
            rig.server.receivers_behind(),
            "a reading client is not waited for"
        );
        // It reads everything: caught up, and every answer arrived.
        let mut got = 0;
        rig.turn_until("every answer read", |_| {
            while c.poll_frame().is_some() {
                got += 1;
            }
            got == asks
        });
        rig.turn_until("caught up", |r| !r.server.receivers_behind());
    }

    /// Requests answered with more than they cost: however many a client sends at once,
    /// the registry holds no more than the bound of answers before they go to the
    /// connections (where the output bound applies), and every request is answered, in
    /// order.
    #[test]
    fn answers_waiting_in_the_registry_stay_bounded() {
        let mut rig = Rig::new("effects", 8);
        let mut c = rig.echo_client();
        // Small requests (about 100 KB: one write the socket takes whole), in one go.
        let asks = 2 * MAX_PENDING_EFFECTS + 100;
        let mut out = BytesMut::new();
        for i in 0..asks {
            ipc::put_request(&mut out, 0, &echo_request((i % 7) as u32));
        }
        c.send_raw(&out);
        for i in 0..asks {
            let r = rig.response(&mut c);
            assert_eq!((r.id, r.body.len()), (0, i % 7), "answer {i}");
        }
        assert!(
            rig.peak_effects <= MAX_PENDING_EFFECTS,
            "{} answers waited in the registry",
            rig.peak_effects
        );
        assert_eq!(rig.server.stats().closed_slow, 0);
    }
}
