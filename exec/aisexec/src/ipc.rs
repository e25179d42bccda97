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
/// the others or Totem.
const READ_BUDGET: usize = 4 << 20;

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
    out: VecDeque<Bytes>,
    out_bytes: usize,
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
                out: VecDeque::new(),
                out_bytes: 0,
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

    /// Reads what the connection in `slot` sent and hands each whole frame on.
    pub fn readable(
        &mut self,
        slot: usize,
        poll: &MioRegistry,
        reg: &mut Registry,
        now: Instant,
        room: &mut dyn FnMut() -> usize,
    ) {
        let mut budget = READ_BUDGET;
        let mut closed = None;
        if let Some(conn) = self.conns.get_mut(slot) {
            let mut chunk = [0u8; 16 * 1024];
            while budget > 0 {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = Some("closed by peer".to_string());
                        break;
                    }
                    Ok(n) => {
                        conn.inbuf.extend_from_slice(&chunk[..n]);
                        budget = budget.saturating_sub(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        closed = Some(format!("read error: {e}"));
                        break;
                    }
                }
            }
        }
        // Frames already complete are served even if the peer then closed.
        if let Err(why) = self.process_frames(slot, reg, now, room) {
            self.stats.closed_bad_frame += 1;
            self.close(slot, poll, reg, &why, true);
            return;
        }
        // The handshake reply is queued here, not by the registry: write it out.
        self.flush(slot, poll, reg);
        if let Some(why) = closed {
            self.close(slot, poll, reg, &why, false);
        } else if budget == 0 {
            // More may be waiting: mio is edge-triggered, so ask to be woken again.
            if let Some(conn) = self.conns.get_mut(slot) {
                let token = Token(self.token_base + slot);
                let interest = if conn.want_write {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                let _ = poll.reregister(&mut conn.stream, token, interest);
            }
        }
    }

    fn process_frames(
        &mut self,
        slot: usize,
        reg: &mut Registry,
        now: Instant,
        room: &mut dyn FnMut() -> usize,
    ) -> Result<(), String> {
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return Ok(());
            };
            let (id, body) = match ipc::take_request(&mut conn.inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad frame: {e}")),
            };
            self.stats.requests += 1;
            match conn.state {
                State::AwaitConnect => {
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
                    let mut frame = BytesMut::new();
                    ipc::put_response(&mut frame, CONNECT_ID, error, &reply);
                    conn.state = if error == SaError::Ok {
                        State::Bound(connect.service)
                    } else {
                        State::AwaitConnect
                    };
                    debug!(target: "ipc", "connection {} asks service {} version {}: {error}", conn_id.0, connect.service, connect.version);
                    let frame = frame.freeze();
                    self.queue(slot, frame);
                }
                State::Bound(_) => {
                    let conn_id = conn.id;
                    let r = room();
                    reg.lib_request(now, conn_id, id, body, r);
                }
            }
        }
    }

    /// Queues a frame for the connection `conn`; false if it is gone or was closed for
    /// not reading (the caller then tells the registry).
    pub fn send(&mut self, conn: ConnId, frame: Bytes, poll: &MioRegistry, reg: &mut Registry) {
        let Some(&slot) = self.by_id.get(&conn) else {
            return; // closed meanwhile: the registry was told then
        };
        if !self.queue(slot, frame) {
            self.stats.closed_slow += 1;
            self.close(
                slot,
                poll,
                reg,
                "output queue over its bound (client not reading)",
                true,
            );
        } else {
            self.flush(slot, poll, reg);
        }
    }

    fn queue(&mut self, slot: usize, frame: Bytes) -> bool {
        let Some(c) = self.conns.get_mut(slot) else {
            return true;
        };
        if c.out_bytes + frame.len() > MAX_OUTPUT_BYTES {
            return false;
        }
        c.out_bytes += frame.len();
        c.out.push_back(frame);
        true
    }

    /// Writes as much queued output as the socket takes.
    pub fn flush(&mut self, slot: usize, poll: &MioRegistry, reg: &mut Registry) {
        let mut failed = None;
        if let Some(c) = self.conns.get_mut(slot) {
            while let Some(front) = c.out.front_mut() {
                match c.stream.write(front) {
                    Ok(0) => {
                        failed = Some("write returned 0".to_string());
                        break;
                    }
                    Ok(n) => {
                        c.out_bytes -= n;
                        if n == front.len() {
                            c.out.pop_front();
                        } else {
                            front.advance(n);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failed = Some(format!("write error: {e}"));
                        break;
                    }
                }
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
