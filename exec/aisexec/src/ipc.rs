//! The IPC server: a unix stream socket in the runtime directory, one connection per
//! library handle.
//!
//! A connection's first frame binds it to one service and SA Forum version; every later
//! frame is a request routed to that service's library handler table by the registry.
//! What the registry answers (responses, callbacks) is queued on the connection and
//! written as the socket accepts it. Bad input costs the sender its connection, never the
//! executive: a malformed or oversized frame, a refused handshake, credentials not on the
//! allowed lists, or an output queue over its bound (a client that stopped reading) each
//! close that one connection with a `warn!`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::path::Path;

use ais_exec::{ConnId, ConnInfo, Registry};
use ais_proto::ipc::{self, Connect, ConnectReply, CONNECT_ID};
use ais_proto::{Decode, Encode, SaError, SaVersion, ServiceId};
use bytes::{Buf, Bytes, BytesMut};
use log::{debug, info, warn};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry as MioRegistry, Token};
use slab::Slab;
use totem::Instant;

/// Bytes a connection may have waiting to be written before it is judged stuck.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Bytes read from one connection per readiness event, so one busy client cannot starve
/// the others or Totem (a pipelining client keeps its socket full).
const READ_BUDGET: usize = 256 << 10;
/// What one read asks the kernel for.
const READ_CHUNK: usize = 64 << 10;
/// An output buffer this large is given back to the allocator once it is empty, so a
/// burst does not keep its memory resident.
const OUT_SHRINK: usize = 1 << 20;

/// Who may connect, besides root and the executive's own user.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub uids: BTreeSet<u32>,
    pub gids: BTreeSet<u32>,
}

impl Access {
    fn allows(&self, cred: &ConnInfo) -> bool {
        let me = rustix::process::geteuid().as_raw();
        cred.uid == 0
            || cred.uid == me
            || self.uids.contains(&cred.uid)
            || self.gids.contains(&cred.gid)
    }
}

#[derive(Clone, Debug, Default)]
pub struct IpcStats {
    pub accepted: u64,
    pub refused: u64,
    pub closed_bad_frame: u64,
    pub closed_slow: u64,
    pub requests: u64,
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
    out: BytesMut,
    /// Whether the connection is in `IpcServer::dirty` (output to flush this turn).
    dirty: bool,
    /// Whether WRITABLE interest is registered (only while output waits).
    want_write: bool,
}

pub struct IpcServer {
    listener: UnixListener,
    conns: Slab<Conn>,
    by_id: BTreeMap<ConnId, usize>,
    next_id: u64,
    token_base: usize,
    access: Access,
    stats: IpcStats,
    /// Connections with output queued since the last [`IpcServer::flush_dirty`].
    dirty: Vec<usize>,
    /// Connections holding a request that must wait, in the order they stopped.
    parked: VecDeque<usize>,
    /// The buffer reads go into (zeroed once, reused).
    scratch: Vec<u8>,
}

impl IpcServer {
    /// Binds the socket at `path` (removing a stale one: the caller holds the runtime
    /// directory's lock, so no live executive owns it). Connection tokens are
    /// `token_base + slot`.
    pub fn bind(path: &Path, token_base: usize, access: Access) -> io::Result<IpcServer> {
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
            stats: IpcStats::default(),
            dirty: Vec::new(),
            parked: VecDeque::new(),
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
                    warn!(target: "ipc", "accept: {e}");
                    return;
                }
            };
            let cred = match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(c) => ConnInfo {
                    pid: c.pid.as_raw_nonzero().get() as u32,
                    uid: c.uid.as_raw(),
                    gid: c.gid.as_raw(),
                },
                Err(e) => {
                    warn!(target: "ipc", "cannot read peer credentials: {e}; refusing connection");
                    self.stats.refused += 1;
                    continue;
                }
            };
            if !self.access.allows(&cred) {
                warn!(target: "ipc", "refusing connection from pid {} uid {} gid {}: not allowed by uidgid",
                    cred.pid, cred.uid, cred.gid);
                self.stats.refused += 1;
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
                out: BytesMut::new(),
                dirty: false,
                want_write: false,
            });
            self.stats.accepted += 1;
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
    /// against it. Returns how many requests were served.
    pub fn readable(
        &mut self,
        slot: usize,
        poll: &MioRegistry,
        reg: &mut Registry,
        now: Instant,
        room: &mut usize,
    ) -> usize {
        let mut served = 0;
        let mut budget = READ_BUDGET;
        loop {
            match self.process_frames(slot, reg, now, room) {
                Ok(n) => served += n,
                Err(why) => {
                    self.stats.closed_bad_frame += 1;
                    self.close(slot, poll, reg, &why, true);
                    return served;
                }
            }
            let Some(conn) = self.conns.get_mut(slot) else {
                return served;
            };
            if conn.parked {
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
            served += self.readable(slot, poll, reg, now, room);
        }
        served
    }

    fn process_frames(
        &mut self,
        slot: usize,
        reg: &mut Registry,
        now: Instant,
        room: &mut usize,
    ) -> Result<usize, String> {
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
                    Err(e) => return Err(format!("bad frame: {e}")),
                },
            };
            match conn.state {
                State::AwaitConnect => {
                    self.stats.requests += 1;
                    if id != CONNECT_ID {
                        return Err(format!("request {id} before the connect handshake"));
                    }
                    let connect =
                        Connect::decode_exact(body).map_err(|e| format!("bad connect: {e}"))?;
                    let conn_id = conn.id;
                    let cred = conn.cred;
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
                    conn.state = if error == SaError::Ok {
                        State::Bound(connect.service)
                    } else {
                        State::AwaitConnect
                    };
                    debug!(target: "ipc", "connection {} asks service {} version {}: {error}", conn_id.0, connect.service, connect.version);
                    // A fresh connection's buffer is far below the bound.
                    self.queue(slot, CONNECT_ID, error, &reply);
                }
                State::Bound(_) => {
                    let conn_id = conn.id;
                    if reg.lib_request_must_wait(conn_id, id, *room) {
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
        body: &[u8],
        poll: &MioRegistry,
        reg: &mut Registry,
    ) {
        let Some(&slot) = self.by_id.get(&conn) else {
            return; // closed meanwhile: the registry was told then
        };
        if !self.queue(slot, id, error, body) {
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
    fn queue(&mut self, slot: usize, id: u32, error: SaError, body: &[u8]) -> bool {
        let Some(c) = self.conns.get_mut(slot) else {
            return true;
        };
        if c.out.len() + ipc::RESPONSE_HEADER_LEN + body.len() > MAX_OUTPUT_BYTES {
            return false;
        }
        ipc::put_response(&mut c.out, id, error, body);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(slot);
        }
        true
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
                match c.stream.write(&c.out) {
                    Ok(0) => {
                        failed = Some("write returned 0".to_string());
                        break;
                    }
                    Ok(n) => c.out.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failed = Some(format!("write error: {e}"));
                        break;
                    }
                }
            }
            if c.out.is_empty() && c.out.capacity() > OUT_SHRINK {
                c.out = BytesMut::new();
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
