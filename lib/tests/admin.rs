//! The admin API against a one-connection fake executive speaking the IPC protocol:
//! requests carry the right ids and empty bodies, answers decode, and an undecodable or
//! refused answer becomes the right `SaError`.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ais_proto::admin::{req, Member, MembersRes, QuorumInfo, RingId, StatusRes};
use ais_proto::ipc::{self, Connect, ConnectReply, CONNECT_ID};
use ais_proto::{Decode, Encode, SaError, SaVersion, ServiceId};
use bytes::{Bytes, BytesMut};
use libais::admin::Admin;

fn members() -> MembersRes {
    MembersRes {
        node_id: 1,
        node_name: "node1".into(),
        ring_id: Some(RingId { rep: 1, seq: 4 }),
        quorate: false,
        members: vec![Member {
            node_id: 1,
            votes: 1,
            name: "node1".into(),
            address: "127.0.0.1:5405".into(),
        }],
    }
}

fn status() -> StatusRes {
    StatusRes {
        members: members(),
        quorum: QuorumInfo {
            quorate: false,
            enforced: true,
            two_node: false,
            expected_votes: 3,
            total_votes: 1,
            needed: 2,
        },
        counters: Vec::new(),
    }
}

/// Serves one connection: the handshake for ADMIN, then each request answered by
/// `answer(id, body)`. Returns the socket path and the thread (which returns the ids
/// it saw).
fn fake(
    name: &str,
    answer: impl Fn(u32, Bytes) -> (SaError, Bytes) + Send + 'static,
) -> (PathBuf, JoinHandle<Vec<u32>>) {
    let dir = std::env::temp_dir().join(format!("libais-admin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("aisexec.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        let mut bound = false;
        loop {
            while let Ok(Some((id, body))) = ipc::take_request(&mut buf) {
                let mut out = BytesMut::new();
                if !bound {
                    let c = Connect::decode_exact(body).unwrap();
                    assert_eq!((id, c.service), (CONNECT_ID, ServiceId::ADMIN));
                    let reply = ConnectReply {
                        version: SaVersion::B_01_01,
                    };
                    ipc::put_response(&mut out, CONNECT_ID, SaError::Ok, &reply.to_bytes());
                    bound = true;
                } else {
                    assert!(body.is_empty(), "admin requests have no body");
                    seen.push(id);
                    let (error, answer) = answer(id, body);
                    ipc::put_response(&mut out, id, error, &answer);
                }
                stream.write_all(&out).unwrap();
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        seen
    });
    (path, t)
}

#[test]
fn status_and_members_decode_what_the_executive_sends() {
    let (path, t) = fake("ok", |id, _| match id {
        req::STATUS => (SaError::Ok, status().to_bytes()),
        req::MEMBERS => (SaError::Ok, members().to_bytes()),
        _ => (SaError::InvalidParam, Bytes::new()),
    });
    let admin = Admin::initialize_at(&path).expect("connects");
    assert_eq!(admin.status(), Ok(status()));
    assert_eq!(admin.members(), Ok(members()));
    admin.finalize();
    assert_eq!(t.join().unwrap(), vec![req::STATUS, req::MEMBERS]);
}

#[test]
fn garbage_and_refusals_become_errors() {
    let (path, t) = fake("bad", |id, _| match id {
        req::STATUS => (SaError::Ok, Bytes::from_static(b"\x00\x00")),
        _ => (SaError::TryAgain, Bytes::new()),
    });
    let admin = Admin::initialize_at(&path).expect("connects");
    assert_eq!(admin.status(), Err(SaError::MessageError));
    assert_eq!(admin.members(), Err(SaError::TryAgain));
    drop(admin);
    assert_eq!(t.join().unwrap(), vec![req::STATUS, req::MEMBERS]);
}

#[test]
fn no_executive_is_try_again() {
    let path = std::env::temp_dir().join("libais-admin-nobody/aisexec.sock");
    assert_eq!(Admin::initialize_at(path).err(), Some(SaError::TryAgain));
}
