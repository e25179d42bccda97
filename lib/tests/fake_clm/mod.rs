//! A fake executive offering only CLM, for libais's CLM tests: a unix socket in a fresh
//! temporary directory speaking the IPC protocol (handshake with the SA Forum version
//! rule, frames), answering CLM requests from a view the test sets with
//! [`FakeClm::set_view`], which also sends the track callbacks a real executive would.
//!
//! Dropping a [`FakeClm`] stops its threads (each notices within [`POLL`]) and removes
//! the socket and its directory.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ais_proto::clm::{
    cb, req, track, ClusterChange, ClusterNode, ClusterNotification, ClusterNotificationBuffer,
    NodeAddress, NodeGetAsyncReq, NodeGetCb, NodeGetReq, NodeGetRes, TrackCb, TrackReq, TrackRes,
    LOCAL_NODE_ID,
};
use ais_proto::ipc::{self, Connect, ConnectReply, CALLBACK_FLAG, CONNECT_ID};
use ais_proto::{Decode, Encode, SaError, SaName, SaVersion, ServiceId};
use bytes::{Bytes, BytesMut};

/// The node the fake runs on.
pub const LOCAL: u32 = 1;
pub const POLL: Duration = Duration::from_millis(20);

/// Node `id`'s record: `node<id>` at 10.0.0.id, booted at `id` seconds.
pub fn record(id: u32, member: bool, initial_view: u64) -> ClusterNode {
    ClusterNode {
        node_id: id,
        address: NodeAddress::from_ip([10, 0, 0, id as u8].into()),
        node_name: SaName::new(format!("node{id}").into_bytes()).unwrap(),
        member,
        boot_timestamp: u64::from(id) * 1_000_000_000,
        initial_view_number: initial_view,
    }
}

pub struct FakeClm {
    dir: PathBuf,
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    state: Mutex<State>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    conns: BTreeMap<u64, UnixStream>,
    trackers: BTreeMap<u64, u8>,
    view_number: u64,
    /// Every node ever seen, with `member` as of the current view.
    nodes: BTreeMap<u32, ClusterNode>,
}

impl State {
    fn current(&self) -> ClusterNotificationBuffer {
        ClusterNotificationBuffer {
            view_number: self.view_number,
            notifications: self
                .nodes
                .values()
                .filter(|n| n.member)
                .map(|n| ClusterNotification {
                    node: n.clone(),
                    change: ClusterChange::NoChange,
                })
                .collect(),
        }
    }

    fn members(&self) -> u32 {
        self.nodes.values().filter(|n| n.member).count() as u32
    }
}

impl FakeClm {
    /// A fake whose first view (number 1) holds `members`.
    pub fn start(members: &[u32]) -> FakeClm {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "libais-clm-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("aisexec.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut state = State {
            view_number: 1,
            ..State::default()
        };
        for &id in members {
            state.nodes.insert(id, record(id, true, 1));
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            state: Mutex::new(state),
            workers: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let acceptor = thread::spawn(move || accept_loop(s, listener));
        FakeClm {
            dir,
            path,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many connections track changes.
    pub fn trackers(&self) -> usize {
        self.shared.state.lock().unwrap().trackers.len()
    }

    /// Installs the next view with `members` and sends every tracker its callback.
    pub fn set_view(&self, members: &[u32]) {
        let mut st = self.shared.state.lock().unwrap();
        st.view_number += 1;
        let number = st.view_number;
        let mut notes = Vec::new();
        let ids: Vec<u32> = st
            .nodes
            .keys()
            .copied()
            .chain(members.iter().copied())
            .collect();
        let mut ids = ids;
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let was = st.nodes.get(&id).is_some_and(|n| n.member);
            let is = members.contains(&id);
            let change = match (was, is) {
                (false, true) => ClusterChange::Joined,
                (true, false) => ClusterChange::Left,
                (true, true) => ClusterChange::NoChange,
                (false, false) => continue,
            };
            let node = match st.nodes.get(&id) {
                Some(n) if was || !is => ClusterNode {
                    member: is,
                    ..n.clone()
                },
                _ => record(id, true, number),
            };
            st.nodes.insert(id, node.clone());
            notes.push(ClusterNotification { node, change });
        }
        let number_of_members = st.members();
        let full = TrackCb {
            number_of_members,
            view: ClusterNotificationBuffer {
                view_number: number,
                notifications: notes.clone(),
            },
        };
        let only = TrackCb {
            number_of_members,
            view: ClusterNotificationBuffer {
                view_number: number,
                notifications: notes
                    .into_iter()
                    .filter(|n| n.change != ClusterChange::NoChange)
                    .collect(),
            },
        };
        for (conn, flags) in &st.trackers {
            let body = if flags & track::CHANGES != 0 {
                full.to_bytes()
            } else {
                only.to_bytes()
            };
            if let Some(w) = st.conns.get(conn) {
                send(w, cb::TRACK | CALLBACK_FLAG, SaError::Ok, &body);
            }
        }
    }

    /// Sends every connection a track callback whose body does not decode.
    pub fn send_garbage(&self) {
        let st = self.shared.state.lock().unwrap();
        for w in st.conns.values() {
            send(w, cb::TRACK | CALLBACK_FLAG, SaError::Ok, b"\xff");
        }
    }
}

impl Drop for FakeClm {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let workers = std::mem::take(&mut *self.shared.workers.lock().unwrap());
        for w in workers {
            let _ = w.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let mut next = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                next += 1;
                let s = Arc::clone(&shared);
                let id = next;
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
        let mut chunk = vec![0u8; 16 * 1024];
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
    let mut st = shared.state.lock().unwrap();
    st.conns.remove(&conn);
    st.trackers.remove(&conn);
    drop(st);
    let _ = stream.shutdown(Shutdown::Both);
}

impl Shared {
    fn handshake(&self, stream: &UnixStream, conn: u64, id: u32, body: Bytes) -> bool {
        let Ok(connect) = Connect::decode_exact(body) else {
            return false;
        };
        if id != CONNECT_ID {
            return false;
        }
        let (mut error, version) = SaVersion::negotiate(connect.version, SaVersion::B_01_01);
        if connect.service != ServiceId::CLM {
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

    /// Answers one CLM request as the service does; whether to keep the connection.
    fn request(&self, stream: &UnixStream, conn: u64, id: u32, body: Bytes) -> bool {
        let mut st = self.state.lock().unwrap();
        let mut callback: Option<(u32, Bytes)> = None;
        let (error, response) = match id {
            req::TRACK_START => {
                let Ok(r) = TrackReq::decode_exact(body) else {
                    return false;
                };
                let changes = r.flags & (track::CHANGES | track::CHANGES_ONLY);
                if r.flags == 0 || r.flags & !track::ALL != 0 || changes == 0x06 {
                    (SaError::BadFlags, TrackRes::default().to_bytes())
                } else {
                    let current = r.flags & track::CURRENT != 0;
                    let in_answer = current && (changes == 0 || r.max_items.is_some());
                    let view = st.current();
                    let needed = view.notifications.len() as u32;
                    if in_answer && r.max_items.is_some_and(|m| needed > m) {
                        let res = TrackRes {
                            needed,
                            view: ClusterNotificationBuffer {
                                view_number: view.view_number,
                                notifications: vec![],
                            },
                        };
                        (SaError::NoSpace, res.to_bytes())
                    } else {
                        if changes != 0 {
                            st.trackers.insert(conn, changes);
                        }
                        if current && !in_answer {
                            let cb = TrackCb {
                                number_of_members: st.members(),
                                view: view.clone(),
                            };
                            callback = Some((cb::TRACK, cb.to_bytes()));
                        }
                        let res = if in_answer {
                            TrackRes { needed, view }
                        } else {
                            TrackRes::default()
                        };
                        (SaError::Ok, res.to_bytes())
                    }
                }
            }
            req::TRACK_STOP => match st.trackers.remove(&conn) {
                Some(_) => (SaError::Ok, Bytes::new()),
                None => (SaError::NotExist, Bytes::new()),
            },
            req::NODE_GET => {
                let Ok(r) = NodeGetReq::decode_exact(body) else {
                    return false;
                };
                let id = if r.node_id == LOCAL_NODE_ID {
                    LOCAL
                } else {
                    r.node_id
                };
                match st.nodes.get(&id) {
                    Some(n) => (SaError::Ok, NodeGetRes { node: n.clone() }.to_bytes()),
                    None => (SaError::InvalidParam, Bytes::new()),
                }
            }
            req::NODE_GET_ASYNC => {
                let Ok(r) = NodeGetAsyncReq::decode_exact(body) else {
                    return false;
                };
                let result = st
                    .nodes
                    .get(&r.node_id)
                    .cloned()
                    .ok_or(SaError::InvalidParam);
                let cb = NodeGetCb {
                    invocation: r.invocation,
                    result,
                };
                callback = Some((cb::NODE_GET, cb.to_bytes()));
                (SaError::Ok, Bytes::new())
            }
            _ => (SaError::InvalidParam, Bytes::new()),
        };
        send(stream, id, error, &response);
        if let Some((cb_id, body)) = callback {
            send(stream, cb_id | CALLBACK_FLAG, SaError::Ok, &body);
        }
        true
    }
}
