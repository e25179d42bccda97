//! A fake executive for libais tests, until the real one runs: a unix socket listener in
//! a fresh temporary directory that speaks the IPC protocol (handshake, frames) and
//! answers CPG requests like a one-node CPG. Every connection shares one group table,
//! and callbacks are written under its lock, so all members see one order.
//!
//! [`Mode`] makes it misbehave in the ways the library must survive. Dropping a
//! [`FakeExec`] stops its threads (each notices within [`POLL`]) and removes the socket
//! and its directory.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ais_proto::cpg::{
    cb, req, Address, ConfchgCb, DeliverCb, GroupName, GroupReq, LocalGetRes, McastReq,
    MembershipGetReq, MembershipGetRes, Reason,
};
use ais_proto::ipc::{
    self, Connect, ConnectReply, CALLBACK_FLAG, CONNECT_ID, MAX_FRAME_LEN, RESPONSE_HEADER_LEN,
};
use ais_proto::{Decode, Encode, SaError, SaVersion, ServiceId};
use bytes::{BufMut, BytesMut};

/// The node id the fake reports.
pub const NODEID: u32 = 0x0a00_0001;
/// How often idle threads look at the stop flag.
pub const POLL: Duration = Duration::from_millis(20);
/// How long `McastTryAgain` leaves pipelined multicasts unanswered.
pub const HOLD: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A one-node CPG: a response first, then the callbacks its request causes (as the
    /// real executive: the response comes from the library handler, the callbacks
    /// from delivery).
    Normal,
    /// The callbacks a request causes are sent before its response, so they are
    /// already queued in the library when the request returns.
    CallbacksFirst,
    /// `MCAST` is answered `TryAgain` when it waits for its answer (not joined); while
    /// joined (pipelined), it is not answered for [`HOLD`], as when the executive lets
    /// requests wait because Totem's send queue is full; then the waiting ones are
    /// answered `Ok` (accepted, not delivered).
    McastTryAgain,
    /// After the handshake, every request is answered by a frame whose size field is
    /// above `MAX_FRAME_LEN`.
    OversizedFrame,
    /// After the handshake, every request is answered by a frame whose size field is
    /// below the response header.
    ShortFrame,
    /// Every request after the handshake is preceded by a `DELIVER` callback whose
    /// body does not decode, then handled as in `Normal`.
    GarbageCallback,
    /// The connection is closed on the first request after the handshake.
    HangUp,
}

pub struct FakeExec {
    dir: PathBuf,
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    mode: Mode,
    stop: AtomicBool,
    state: Mutex<CpgState>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    accepted: AtomicU64,
}

#[derive(Default)]
struct CpgState {
    /// Write halves of the live connections.
    conns: BTreeMap<u64, UnixStream>,
    /// Each group's members in join order, with the connection each joined through.
    groups: BTreeMap<GroupName, Vec<(u64, Address)>>,
    /// `McastTryAgain`: unanswered multicasts per connection, since when.
    held: BTreeMap<u64, (u32, Instant)>,
}

impl FakeExec {
    pub fn start(mode: Mode) -> FakeExec {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "libais-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("aisexec.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            mode,
            stop: AtomicBool::new(false),
            state: Mutex::new(CpgState::default()),
            workers: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let acceptor = thread::spawn(move || accept_loop(s, listener));
        FakeExec {
            dir,
            path,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The socket to connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FakeExec {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let workers = std::mem::take(&mut *self.shared.workers.lock().unwrap());
        for w in workers {
            let _ = w.join();
        }
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let mut next_conn = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                next_conn += 1;
                let s = Arc::clone(&shared);
                let id = next_conn;
                let worker = thread::spawn(move || serve(s, stream, id));
                shared.workers.lock().unwrap().push(worker);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2))
            }
            Err(_) => return,
        }
    }
}

fn send(stream: &UnixStream, id: u32, error: SaError, body: &[u8]) {
    let mut out = BytesMut::new();
    ipc::put_response(&mut out, id, error, body);
    let _ = (&*stream).write_all(&out);
}

fn serve(shared: Arc<Shared>, stream: UnixStream, conn: u64) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(POLL)).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = BytesMut::new();
    let mut bound = false;
    'serve: while !shared.stop.load(Ordering::SeqCst) {
        loop {
            match ipc::take_request(&mut buf) {
                Ok(Some((id, body))) => {
                    let keep = if bound {
                        shared.request(&stream, conn, id, body)
                    } else {
                        bound = shared.handshake(&stream, conn, id, body);
                        bound
                    };
                    if !keep {
                        break 'serve;
                    }
                }
                Ok(None) => break,
                Err(_) => break 'serve,
            }
        }
        shared.release_held(&stream, conn);
        let mut chunk = vec![0u8; 64 * 1024];
        match (&stream).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    shared.disconnect(conn);
    let _ = stream.shutdown(Shutdown::Both);
}

impl Shared {
    /// Answers the first request; whether the connection is now bound.
    fn handshake(&self, stream: &UnixStream, conn: u64, id: u32, body: bytes::Bytes) -> bool {
        let Ok(connect) = Connect::decode_exact(body) else {
            return false;
        };
        if id != CONNECT_ID {
            return false;
        }
        let (mut error, version) = SaVersion::negotiate(connect.version, SaVersion::B_01_01);
        if connect.service != ServiceId::CPG {
            error = SaError::NotExist;
        }
        send(
            stream,
            CONNECT_ID,
            error,
            &ConnectReply { version }.to_bytes(),
        );
        if error != SaError::Ok {
            return false;
        }
        let writer = stream.try_clone().unwrap();
        self.state.lock().unwrap().conns.insert(conn, writer);
        true
    }

    /// `McastTryAgain`: answers the multicasts of `conn` held for [`HOLD`].
    fn release_held(&self, stream: &UnixStream, conn: u64) {
        let mut st = self.state.lock().unwrap();
        if let Some(&(n, since)) = st.held.get(&conn) {
            if since.elapsed() >= HOLD {
                st.held.remove(&conn);
                for _ in 0..n {
                    send(stream, req::MCAST, SaError::Ok, &[]);
                }
            }
        }
    }

    /// Answers one CPG request; whether to keep the connection.
    fn request(&self, stream: &UnixStream, conn: u64, id: u32, body: bytes::Bytes) -> bool {
        match self.mode {
            Mode::HangUp => return false,
            Mode::OversizedFrame | Mode::ShortFrame => {
                let size = if self.mode == Mode::OversizedFrame {
                    MAX_FRAME_LEN as u32 + 1
                } else {
                    RESPONSE_HEADER_LEN as u32 - 1
                };
                let mut out = BytesMut::new();
                out.put_u32(size);
                out.put_u32(id);
                out.put_u32(SaError::Ok.as_u32());
                out.put_slice(&[0u8; 64]);
                let _ = (&*stream).write_all(&out);
                return true;
            }
            Mode::GarbageCallback => {
                send(stream, cb::DELIVER | CALLBACK_FLAG, SaError::Ok, b"\xff")
            }
            _ => {}
        }
        let mut st = self.state.lock().unwrap();
        if self.mode == Mode::McastTryAgain {
            let joined = st.groups.values().flatten().any(|(c, _)| *c == conn);
            if id == req::MCAST && joined {
                st.held.entry(conn).or_insert((0, Instant::now())).0 += 1;
                return true;
            }
        }
        // Callbacks are collected, then written before or after the response as the
        // mode says; all under the lock, so every member sees one order.
        let mut callbacks: Vec<(u64, u32, bytes::Bytes)> = Vec::new();
        let (error, response) = match id {
            req::JOIN => {
                let Ok(r) = GroupReq::decode_exact(body) else {
                    return false;
                };
                if st.groups.values().flatten().any(|(c, _)| *c == conn) {
                    (SaError::Exist, Vec::new())
                } else {
                    let me = Address {
                        nodeid: NODEID,
                        pid: r.pid,
                        reason: Reason::Join,
                    };
                    let members = st.groups.entry(r.group.clone()).or_default();
                    members.push((conn, me));
                    let cb = ConfchgCb {
                        group: r.group,
                        members: members.iter().map(|(_, a)| *a).collect(),
                        left: vec![],
                        joined: vec![me],
                    };
                    for (c, _) in members.iter() {
                        callbacks.push((*c, cb::CONFCHG, cb.to_bytes()));
                    }
                    (SaError::Ok, Vec::new())
                }
            }
            req::LEAVE => {
                let Ok(r) = GroupReq::decode_exact(body) else {
                    return false;
                };
                let members = st.groups.entry(r.group.clone()).or_default();
                match members.iter().position(|(c, _)| *c == conn) {
                    None => (SaError::NotExist, Vec::new()),
                    Some(i) => {
                        let (_, mut gone) = members.remove(i);
                        gone.reason = Reason::Leave;
                        let cb = ConfchgCb {
                            group: r.group.clone(),
                            members: members.iter().map(|(_, a)| *a).collect(),
                            left: vec![gone],
                            joined: vec![],
                        };
                        callbacks.push((conn, cb::CONFCHG, cb.to_bytes()));
                        for (c, _) in members.iter() {
                            callbacks.push((*c, cb::CONFCHG, cb.to_bytes()));
                        }
                        if members.is_empty() {
                            st.groups.remove(&r.group);
                        }
                        (SaError::Ok, Vec::new())
                    }
                }
            }
            req::MCAST => {
                let Ok(r) = McastReq::decode_exact(body) else {
                    return false;
                };
                let joined = st.groups.iter().find_map(|(g, m)| {
                    m.iter()
                        .find(|(c, _)| *c == conn)
                        .map(|(_, a)| (g.clone(), *a, m.clone()))
                });
                match (self.mode, joined) {
                    (Mode::McastTryAgain, _) => (SaError::TryAgain, Vec::new()),
                    (_, None) => (SaError::NotExist, Vec::new()),
                    (_, Some((group, me, members))) => {
                        let cb = DeliverCb {
                            group,
                            nodeid: me.nodeid,
                            pid: me.pid,
                            data: r.data,
                        }
                        .to_bytes();
                        for (c, _) in &members {
                            callbacks.push((*c, cb::DELIVER, cb.clone()));
                        }
                        (SaError::Ok, Vec::new())
                    }
                }
            }
            req::MEMBERSHIP_GET => {
                let Ok(r) = MembershipGetReq::decode_exact(body) else {
                    return false;
                };
                let members = st
                    .groups
                    .get(&r.group)
                    .map(|m| m.iter().map(|(_, a)| *a).collect())
                    .unwrap_or_default();
                (
                    SaError::Ok,
                    MembershipGetRes { members }.to_bytes().to_vec(),
                )
            }
            req::LOCAL_GET => (
                SaError::Ok,
                LocalGetRes { nodeid: NODEID }.to_bytes().to_vec(),
            ),
            _ => (SaError::NotSupported, Vec::new()),
        };
        let callbacks_first = self.mode == Mode::CallbacksFirst;
        if !callbacks_first {
            send(stream, id, error, &response);
        }
        for (c, cb_id, body) in &callbacks {
            if let Some(w) = st.conns.get(c) {
                send(w, cb_id | CALLBACK_FLAG, SaError::Ok, body);
            }
        }
        if callbacks_first {
            send(stream, id, error, &response);
        }
        true
    }

    /// The connection went away: it leaves its group with reason `ProcDown`.
    fn disconnect(&self, conn: u64) {
        let mut st = self.state.lock().unwrap();
        st.conns.remove(&conn);
        let mut notes = Vec::new();
        for (group, members) in st.groups.iter_mut() {
            if let Some(i) = members.iter().position(|(c, _)| *c == conn) {
                let (_, mut gone) = members.remove(i);
                gone.reason = Reason::ProcDown;
                let cb = ConfchgCb {
                    group: group.clone(),
                    members: members.iter().map(|(_, a)| *a).collect(),
                    left: vec![gone],
                    joined: vec![],
                };
                for (c, _) in members.iter() {
                    notes.push((*c, cb.to_bytes()));
                }
            }
        }
        st.groups.retain(|_, m| !m.is_empty());
        for (c, body) in notes {
            if let Some(w) = st.conns.get(&c) {
                send(w, cb::CONFCHG | CALLBACK_FLAG, SaError::Ok, &body);
            }
        }
    }
}
