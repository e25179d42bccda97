//! The IPC socket of real `aisexec` processes as clients outside the executive's control
//! meet it: a user the `uidgid` sections do not allow is refused (told `Access`, logged,
//! counted) while an allowed one is served; a CPG client that multicasts but never reads
//! is disconnected once its output queue passes its bound, and the others see it leave
//! with reason process down and go on; one that reads, but slower than a flood arrives,
//! holds the ring back instead and is not disconnected.
//!
//! Needs the workspace's binaries next to this test (`cargo test --workspace --release`
//! builds them). The credentials test runs clients as other users, so it needs root and
//! prints SKIPPED without it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use ais_proto::cpg::{req, GroupName, GroupReq, McastReq};
use ais_proto::ipc::{self, Connect, ResponseFrame, CONNECT_ID};
use ais_proto::{Encode, SaError, SaVersion, ServiceId};
use ais_test::procs::{
    binary, field, is_root, run_as, unprivileged_ids, Client, Options, ProcCluster,
};
use bytes::{Bytes, BytesMut};

/// How long a client waits for what it expects before the test gives up.
const CLIENT_WAIT: Duration = Duration::from_secs(10);
/// The executive's bound on one connection's output queue (`aisexec::ipc`).
const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// testcpg in `group` on node `i` of `c`, as `uid:gid`.
fn testcpg_as(c: &ProcCluster, i: usize, group: &str, (uid, gid): (u32, u32)) -> Client {
    let mut cmd = Command::new(binary("testcpg"));
    cmd.args(["--group", group]).env("AIS_SOCKET", c.socket(i));
    run_as(&mut cmd, uid, gid);
    Client::from_command(&format!("testcpg --group {group} as {uid}:{gid}"), cmd)
}

#[test]
fn a_user_the_uidgid_sections_do_not_allow_is_refused_with_access_and_counted() {
    if !is_root() {
        eprintln!("SKIPPED: running clients as other users needs root");
        return;
    }
    let allowed = unprivileged_ids();
    // Not root, not the executive's user (root), not listed.
    let stranger = (allowed.0 - 1, allowed.1 - 1);
    let c = ProcCluster::start(Options::new("uidgid", 1).allow_uid(allowed.0));
    let from = c.log_len(1);

    let mut ok = testcpg_as(&c, 1, "creds", allowed);
    assert!(
        ok.wait_line(|l| l.starts_with("CONFCHG"), CLIENT_WAIT)
            .is_some(),
        "the allowed user {allowed:?} was not served:\n{}{}",
        ok.stdout_text(),
        ok.stderr_text()
    );
    let refused = testcpg_as(&c, 1, "creds", stranger).finish(CLIENT_WAIT);
    assert!(
        !refused.success() && refused.stderr.contains(&SaError::Access.to_string()),
        "the stranger {stranger:?} was not told access denied: {refused}"
    );
    let line = c
        .wait_log_line(
            1,
            from,
            |l| l.contains("not allowed by uidgid") && l.contains(&format!("uid {}", stranger.0)),
            CLIENT_WAIT,
        )
        .unwrap();
    assert!(line.contains("WARN"), "not a warning: {line}");
    assert_eq!(c.counter(1, "ipc.refused"), 1);
    // The allowed client was not disturbed.
    assert!(ok.is_running(), "{}", ok.stderr_text());
}

/// The executive's end of a raw CPG connection, as far as this test needs it.
struct RawCpg {
    stream: UnixStream,
    buf: BytesMut,
}

impl RawCpg {
    fn connect(c: &ProcCluster, i: usize) -> RawCpg {
        let stream = UnixStream::connect(c.socket(i)).expect("connect to the IPC socket");
        stream.set_read_timeout(Some(CLIENT_WAIT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_WAIT)).unwrap();
        let mut raw = RawCpg {
            stream,
            buf: BytesMut::new(),
        };
        let connect = Connect {
            service: ServiceId::CPG,
            version: SaVersion::B_01_01,
        };
        let reply = raw.request(CONNECT_ID, &connect.to_bytes());
        assert_eq!(reply.sa_error(), SaError::Ok, "handshake");
        raw
    }

    fn send(&mut self, id: u32, body: &[u8]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        ipc::put_request(&mut out, id, body);
        self.stream.write_all(&out)
    }

    /// Sends a request and reads up to its answer (callbacks before it skipped).
    fn request(&mut self, id: u32, body: &[u8]) -> ResponseFrame {
        self.send(id, body).expect("send a request");
        loop {
            while let Some(f) = ipc::take_response(&mut self.buf).unwrap() {
                if !f.is_callback() {
                    assert_eq!(f.id, id, "answer to another request");
                    return f;
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read an answer");
            assert!(n > 0, "the executive closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Joins `group` as process `pid` and checks the executive said Ok.
    fn join(&mut self, group: &str, pid: u32) {
        let join = GroupReq {
            group: GroupName::new(group.as_bytes().to_vec()).unwrap(),
            pid,
        };
        assert_eq!(
            self.request(req::JOIN, &join.to_bytes()).sa_error(),
            SaError::Ok,
            "join {group}"
        );
    }
}

#[test]
fn a_cpg_client_that_stops_reading_is_disconnected_and_leaves_with_procdown() {
    let c = ProcCluster::start(Options::new("slowread", 2));
    let group = "slow";
    let mut watchers: Vec<Client> = [1, 2]
        .iter()
        .map(|&i| c.client(i, "testcpg", &["--group", group]))
        .collect();
    for w in &watchers {
        assert!(w
            .wait_line(|l| l.starts_with("CONFCHG"), CLIENT_WAIT)
            .is_some());
    }
    let from = c.log_len(1);

    let mut slow = RawCpg::connect(&c, 1);
    // A pid of its own, so the others can tell it from this test's other clients.
    let pid = 4_000_000 + std::process::id() % 100_000;
    let me = format!("1:{pid}");
    slow.join(group, pid);
    for w in &watchers {
        assert!(
            w.wait_line(
                |l| l.starts_with("CONFCHG") && field(l, "joined") == Some(me.as_str()),
                CLIENT_WAIT
            )
            .is_some(),
            "{} never saw {me} join:\n{}",
            w.name(),
            w.stdout_text()
        );
    }
    // Twice the output bound's worth of deliveries to itself, none of them read. The
    // executive closes the connection on the way: writing then fails, which ends this.
    let msg = McastReq {
        guarantee: 0,
        data: Bytes::from(vec![0x33; 60 * 1024]),
    }
    .to_bytes();
    let started = Instant::now();
    let mut sent = 0;
    while sent < 2 * MAX_OUTPUT_BYTES / msg.len() && slow.send(req::MCAST, &msg).is_ok() {
        sent += 1;
    }
    let line = c
        .wait_log_line(
            1,
            from,
            |l| l.contains("output queue over its bound"),
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(line.contains("WARN"), "not a warning: {line}");
    // Its service's lib_exit ran: the group sees it leave, process down, everywhere.
    for w in &watchers {
        assert!(
            w.wait_line(
                |l| l.starts_with("CONFCHG")
                    && field(l, "left") == Some(me.as_str())
                    && field(l, "reasons") == Some("procdown"),
                CLIENT_WAIT
            )
            .is_some(),
            "{} never saw {me} leave with procdown:\n{}",
            w.name(),
            w.stdout_text()
        );
    }
    eprintln!(
        "the client that stopped reading was closed after {sent} multicasts, {:?}",
        started.elapsed()
    );
    assert_eq!(c.counter(1, "ipc.closed_slow"), 1);
    let peak = c.counter(1, "ipc.peak_output");
    assert!(
        peak <= MAX_OUTPUT_BYTES as u64,
        "an output queue reached {peak} bytes, over the bound"
    );
    drop(slow);
    // The others were served all along and still are.
    for w in &mut watchers {
        assert!(w.is_running(), "{}: {}", w.name(), w.stderr_text());
    }
    c.cpgverify_everywhere(&[1, 2], "after-slow", 200);
}

#[test]
fn a_cpg_client_that_reads_slower_than_a_flood_holds_the_ring_back_and_stays_connected() {
    let c = ProcCluster::start(Options::new("slowreader", 2));
    let group = "slowish";
    let mut reader = RawCpg::connect(&c, 1);
    let pid = 4_100_000 + std::process::id() % 100_000;
    reader.join(group, pid);
    // Node 2 multicasts 60 KB messages as fast as the ring takes them for 3 s; node 1's
    // reader takes at most 64 KiB per 2 ms (32 MB/s), a fraction of that. Without the
    // ring waiting for it, its output would pass the 16 MiB bound within a second.
    let flood = c.client(
        2,
        "aisbench",
        &[
            "--mode",
            "tput",
            "--size",
            "60000",
            "--seconds",
            "3",
            "--group",
            group,
        ],
    );
    reader
        .stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    let (mut bytes, mut callbacks) = (0usize, 0u64);
    let mut chunk = vec![0u8; 65536];
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the flood never ended"
        );
        match reader.stream.read(&mut chunk) {
            Ok(0) => panic!(
                "the executive closed the slow reader after {bytes} bytes, {:?}:\n{}",
                started.elapsed(),
                c.log_tails(20)
            ),
            Ok(n) => {
                bytes += n;
                reader.buf.extend_from_slice(&chunk[..n]);
                while let Some(f) = ipc::take_response(&mut reader.buf).unwrap() {
                    callbacks += u64::from(f.is_callback());
                }
            }
            // Two seconds without a byte: the flood is over and everything was read.
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(e) => panic!("read: {e}"),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = flood.finish(Duration::from_secs(30));
    assert!(out.success(), "aisbench: {out}");
    let delivered_at_2: f64 = out
        .stdout
        .lines()
        .last()
        .and_then(|l| field(l, "msgs_per_s"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no RESULT line: {out}"));
    eprintln!(
        "slow reader: {callbacks} deliveries, {bytes} bytes in {:?}; the flood's sender saw {delivered_at_2} msgs/s; \
         node 1 waited for its receivers {} times, peak output {} bytes",
        started.elapsed(),
        c.counter(1, "totem.token_waits_for_receivers"),
        c.counter(1, "ipc.peak_output")
    );
    assert_eq!(c.counter(1, "ipc.closed_slow"), 0);
    assert!(
        c.counter(1, "ipc.behind") >= 1,
        "the reader never fell behind"
    );
    assert!(c.counter(1, "totem.token_waits_for_receivers") >= 1);
    let peak = c.counter(1, "ipc.peak_output");
    assert!(
        peak < MAX_OUTPUT_BYTES as u64 / 2,
        "the reader's output reached {peak} bytes"
    );
    // Every message of the flood reached the reader (the sender delivered its own at
    // the same rate, over the same 3 s).
    let expected = (delivered_at_2 * 3.0) as u64;
    assert!(
        callbacks + callbacks / 20 >= expected,
        "the reader got {callbacks} deliveries, the sender about {expected}"
    );
    assert!(callbacks > 10, "hardly a flood: {callbacks} deliveries");
    c.cpgverify_everywhere(&[1, 2], "after-slowish", 200);
}
