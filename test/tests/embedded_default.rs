//! `aisexec` with no argument (issue 3): the embedded default configuration runs a
//! one-node cluster on 127.0.0.1 with its runtime files in a per-user directory
//! (`$XDG_RUNTIME_DIR/aisexec` here) and needs no root. A client finds it at the default
//! socket path, SIGTERM stops it with exit status 0.
//!
//! When the test runs as root, the daemon and its client run as `nobody`: root's default
//! directory is `/run/aisexec`, and only an unprivileged user shows that nothing needs
//! root.
//!
//! The embedded configuration's port is fixed: UDP 127.0.0.1:5405. No other test on
//! 127.0.0.x uses it (ProcCluster's ports are 20000..32000; the test of test/cluster.sh
//! passes one of those; the namespace tests' 5405 is in their own namespaces), and a
//! machine-wide lock keeps two runs of this test (two worktrees, two `cargo test`) from
//! taking it at once. Something else holding it (test/cluster.sh started by hand with its
//! default port) fails the test with a message saying so.
//!
//! Needs the workspace's binaries (`cargo build --release --workspace`).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ais_test::procs::{
    binary, fresh_dir, is_root, run_as, unprivileged_ids, verify_lines, Client, Configuration,
    MachineLock, Signal,
};

/// The embedded configuration's `mcastport`.
const DEFAULT_PORT: u16 = 5405;
/// How long the test waits for another run of it to release the port.
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// How long a one-node ring may take to form: the default token (1 s) and consensus
/// timeouts of the first gather, with slack for a busy machine.
const RING_WAIT: Duration = Duration::from_secs(15);
/// How long the daemon may take to leave and exit after SIGTERM.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Removes a directory when dropped, also while a failing test unwinds (after the
/// processes declared later, which are dropped first).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The uids of a running process, from `/proc/<pid>/status` (real, effective, saved, fs).
fn process_uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|ids| {
            ids.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A command for `program` as `uid:gid` with `XDG_RUNTIME_DIR` set to `xdg` and none of
/// the variables that would point it elsewhere.
fn command(program: &str, xdg: &Path, uid: u32, gid: u32) -> Command {
    let mut cmd = Command::new(binary(program));
    cmd.env_remove("AIS_SOCKET")
        .env_remove("RUST_LOG")
        .env("XDG_RUNTIME_DIR", xdg)
        .current_dir(xdg);
    run_as(&mut cmd, uid, gid);
    cmd
}

#[test]
fn aisexec_with_no_argument_runs_a_one_node_cluster_without_root() {
    let _port =
        MachineLock::acquire("udp-127.0.0.1-5405", LOCK_WAIT).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_PORT)) {
        panic!(
            "127.0.0.1:{DEFAULT_PORT}, the embedded configuration's port, is taken ({e}): \
             stop what holds it (test/cluster.sh started by hand with its default port?)"
        );
    }
    let (uid, gid) = unprivileged_ids();
    assert_ne!(uid, 0, "no unprivileged user to run as");
    let dir = RemoveOnDrop(fresh_dir("default").expect("a temporary directory"));
    let xdg = dir.0.join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&xdg, Some(uid), Some(gid)).unwrap();
    }
    let runtime = xdg.join("aisexec");

    let daemon = Client::from_command("aisexec", command("aisexec", &xdg, uid, gid));
    let t0 = Instant::now();
    let ring = daemon.wait_stderr_line(|l| Configuration::parse(l).is_some(), RING_WAIT);
    let ring = ring.unwrap_or_else(|| {
        panic!(
            "aisexec formed no ring within {RING_WAIT:?}; stderr:\n{}",
            daemon.stderr_text()
        )
    });
    let conf = Configuration::parse(&ring.text).unwrap();
    eprintln!(
        "aisexec (uid {uid}) installed {} {:?} after start: {}",
        conf.ring(),
        t0.elapsed(),
        ring.text
    );
    assert_eq!(conf.members.len(), 1, "not a one-node ring: {}", ring.text);
    let log = daemon.stderr_text();
    assert!(
        log.contains(&format!("runtime directory {}", runtime.display())),
        "the daemon did not take $XDG_RUNTIME_DIR/aisexec:\n{log}"
    );
    assert!(
        log.contains(&format!("running on 127.0.0.1:{DEFAULT_PORT}")),
        "the daemon does not run on 127.0.0.1:{DEFAULT_PORT}:\n{log}"
    );

    // Unprivileged, with its files in the per-user directory.
    let uids = process_uids(daemon.pid());
    assert!(
        !uids.is_empty() && uids.iter().all(|&u| u == uid),
        "aisexec runs with uids {uids:?}, not {uid}"
    );
    let meta = std::fs::metadata(&runtime).expect("the runtime directory exists");
    assert_eq!(meta.uid(), uid, "{} is not the user's", runtime.display());
    assert_eq!(
        meta.mode() & 0o777,
        0o700,
        "{} is not private to the user",
        runtime.display()
    );
    let socket = std::fs::metadata(runtime.join("aisexec.sock")).expect("the IPC socket exists");
    assert!(socket.file_type().is_socket());
    let pid = std::fs::read_to_string(runtime.join("aisexec.pid")).expect("the pid file exists");
    assert_eq!(pid.trim(), daemon.pid().to_string());

    // A client finds it at the default socket path, as the same user.
    let verify = Client::from_command("cpgverify", {
        let mut cmd = command("cpgverify", &xdg, uid, gid);
        cmd.args(["--messages", "10", "--group", "default", "--timeout", "20"]);
        cmd
    })
    .finish(Duration::from_secs(30));
    let results = verify_lines(std::slice::from_ref(&verify));
    let (node, delivered, _, errors) = &results[0];
    assert_eq!(
        (*node, *delivered, *errors),
        (conf.members[0], 10, 0),
        "cpgverify against the default socket: {verify}"
    );

    // The ring's sequence number is persisted there too.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ringseq = loop {
        match std::fs::read_to_string(runtime.join("ringseq")) {
            Ok(s) if !s.trim().is_empty() => break s,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("no ringseq in {}: {other:?}", runtime.display()),
        }
    };
    let persisted: u64 = ringseq.trim().parse().expect("ringseq holds a number");
    assert!(
        persisted >= conf.seq,
        "persisted ring seq {persisted} is below ring {}",
        conf.ring()
    );

    daemon.signal(Signal::Term).expect("SIGTERM to aisexec");
    let out = daemon.finish(EXIT_WAIT);
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(0),
        "aisexec on SIGTERM: {out}"
    );
    assert!(
        out.stderr.contains("signal 15: leaving the ring") && out.stderr.contains("left the ring"),
        "{out}"
    );
}
