//! `test/cluster.sh up 3`, `status`, `down` (issue 3: "starts and stops a local 3-node
//! cluster by hand; README shows it"), run as README shows them, with the script's own
//! knobs pointing it at a directory and a port of this test (`AIS_CLUSTER_DIR`,
//! `AIS_CLUSTER_PORT`; the default 5405 is the embedded configuration's, which
//! test/tests/embedded_default.rs uses) and at the binaries this test was built with
//! (`AIS_BIN_DIR`).
//!
//! The script starts its daemons with `setsid`, so they are not this test's children and
//! do not die with it: a guard runs `down` and then kills anything still running from the
//! test's directory when the test ends, passing or failing, and every run first kills the
//! daemons a killed earlier run of this test left behind.
//!
//! Needs the workspace's binaries (`cargo build --release --workspace`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ais_test::procs::{
    bin_dir, free_port, fresh_dir, verify_lines, Client, ClientOutput, Configuration,
};

/// What `up` may take: the script waits up to 10 s for the ring itself.
const UP_WAIT: Duration = Duration::from_secs(30);
/// What `status` may take.
const STATUS_WAIT: Duration = Duration::from_secs(10);
/// What `down` may take: up to 5 s of SIGTERM, then SIGKILL.
const DOWN_WAIT: Duration = Duration::from_secs(20);
/// The name of this test's directories: `aisp-clustersh-<pid>-<n>` (see `fresh_dir`).
const DIR_NAME: &str = "clustersh";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.sh")
}

/// Runs `test/cluster.sh args` on the cluster in `state` and port `port`, killing it
/// after `timeout`.
fn cluster_sh(state: &Path, port: u16, args: &[&str], timeout: Duration) -> ClientOutput {
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .args(args)
        .env("AIS_CLUSTER_DIR", state)
        .env("AIS_CLUSTER_PORT", port.to_string())
        .env("AIS_BIN_DIR", bin_dir())
        .env_remove("AIS_CLUSTER_TOKEN")
        .env_remove("AIS_SOCKET")
        .env_remove("RUST_LOG");
    let mut c = Client::from_command(&format!("cluster.sh {}", args.join(" ")), cmd);
    c.close_stdin();
    c.finish(timeout)
}

/// The pids of running processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(pid)
        })
        .filter(|&pid| pid != std::process::id())
        .collect()
}

fn kill9(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Kills the daemons of earlier runs of this test that were killed before their guard
/// ran: those whose `--config` lies in an `aisp-clustersh-<pid>-<n>` directory of a test
/// process that is gone.
fn kill_orphans() {
    let prefix = std::env::temp_dir().join(format!("aisp-{DIR_NAME}-"));
    let prefix = prefix.to_string_lossy().into_owned();
    for pid in processes_mentioning(&format!("--config {prefix}")) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let Some(rest) = cmdline.split(&prefix).nth(1) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(owner) = owner {
            if !Path::new(&format!("/proc/{owner}")).exists() {
                eprintln!("killing pid {pid}, left by test process {owner}: {cmdline}");
                kill9(pid);
            }
        }
    }
}

/// Stops whatever the test started, however it ends: `down`, then SIGKILL to anything
/// still running from the test's directory, then removes the directory.
struct Guard {
    dir: PathBuf,
    state: PathBuf,
    port: u16,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The daemons' logs go with the directory: show them first.
            for i in 1..=3 {
                let log = self.state.join(format!("n{i}.log"));
                if let Ok(text) = std::fs::read_to_string(&log) {
                    eprintln!("--- {}:\n{text}", log.display());
                }
            }
        }
        if self.state.exists() {
            let out = cluster_sh(&self.state, self.port, &["down"], DOWN_WAIT);
            if std::thread::panicking() {
                eprintln!("cleanup: cluster.sh down: {out}");
            }
        }
        for pid in processes_mentioning(&self.dir.to_string_lossy()) {
            eprintln!(
                "cleanup: killing pid {pid}, still running from {}",
                self.dir.display()
            );
            kill9(pid);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether process `pid` is gone (no such process, or a zombie nobody reaped yet; the
/// daemons are not our children).
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn cluster_sh_up_3_status_down_starts_and_stops_a_local_three_node_cluster() {
    kill_orphans();
    let dir = fresh_dir(DIR_NAME).expect("a temporary directory");
    let state = dir.join("state");
    let port = free_port(3).expect("a free UDP port on 127.0.0.1..3");
    let guard = Guard {
        dir: dir.clone(),
        state: state.clone(),
        port,
    };

    // up 3: one ring of all three, and an export line per node.
    let up = cluster_sh(&state, port, &["up", "3"], UP_WAIT);
    assert!(up.success(), "cluster.sh up 3: {up}");
    eprintln!("cluster.sh up 3 ({:?}):\n{}", up.elapsed, up.stdout);
    let first = up.stdout.lines().next().unwrap_or("");
    assert!(
        first.starts_with("# 3 nodes up in one ring: configuration ")
            && first.ends_with(": members {1,2,3}"),
        "{up}"
    );
    let mut sockets = Vec::new();
    let mut pids = Vec::new();
    for i in 1..=3 {
        let socket = state.join(format!("n{i}")).join("aisexec.sock");
        let export = format!("export AIS_SOCKET={}", socket.display());
        let line = up
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{export} ")))
            .unwrap_or_else(|| panic!("no '{export}' line: {up}"));
        assert!(
            line.contains(&format!("node {i}, 127.0.0.{i}:{port}, pid ")),
            "{line}"
        );
        let pid: u32 = line
            .rsplit("pid ")
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in: {line}"));
        assert!(!is_gone(pid), "node {i}'s pid {pid} is not running");
        sockets.push(socket);
        pids.push(pid);
    }

    // status: every node running, all in the same ring.
    let status = cluster_sh(&state, port, &["status"], STATUS_WAIT);
    assert!(status.success(), "cluster.sh status: {status}");
    let mut rings = Vec::new();
    for (i, pid) in (1..=3).zip(&pids) {
        let line = status
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("node {i} ")))
            .unwrap_or_else(|| panic!("no line for node {i}: {status}"));
        assert!(
            line.contains(&format!("pid {pid} ")) && line.contains(" running "),
            "{line}"
        );
        let conf = Configuration::parse(&format!(
            "] {}",
            line.split(" running ").nth(1).unwrap().trim()
        ))
        .unwrap_or_else(|| panic!("no configuration in: {line}"));
        assert_eq!(conf.members, [1, 2, 3], "{line}");
        rings.push(conf.ring());
    }
    assert!(rings.iter().all(|r| *r == rings[0]), "{status}");

    // The exported sockets serve clients: cpgverify agrees on all three.
    let outs: Vec<ClientOutput> = std::thread::scope(|s| {
        let runs: Vec<_> = sockets
            .iter()
            .map(|socket| {
                s.spawn(move || {
                    let args = [
                        "--messages",
                        "50",
                        "--group",
                        "clustersh",
                        "--expect",
                        "3",
                        "--timeout",
                        "20",
                    ];
                    let mut c = Client::spawn("cpgverify", &args, socket);
                    c.close_stdin();
                    c.finish(Duration::from_secs(30))
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let results = verify_lines(&outs);
    for (node, delivered, hash, errors) in &results {
        assert_eq!((*delivered, *errors), (150, 0), "node {node}: {outs:?}");
        assert_eq!(
            hash, &results[0].2,
            "node {node} delivered another sequence"
        );
    }

    // down: every node stopped, nothing left running, the state removed.
    let down = cluster_sh(&state, port, &["down"], DOWN_WAIT);
    assert!(down.success(), "cluster.sh down: {down}");
    assert!(
        down.stdout
            .contains(&format!("stopped 3 node(s); removed {}", state.display())),
        "{down}"
    );
    assert!(
        !down.stderr.contains("ignored SIGTERM"),
        "a node had to be killed: {down}"
    );
    for (i, pid) in (1..=3).zip(&pids) {
        assert!(is_gone(*pid), "node {i} (pid {pid}) still runs after down");
    }
    let left = processes_mentioning(&dir.to_string_lossy());
    assert!(left.is_empty(), "processes left after down: {left:?}");
    assert!(
        !state.exists(),
        "{} still exists after down",
        state.display()
    );
    let after = cluster_sh(&state, port, &["status"], STATUS_WAIT);
    assert!(after.success(), "{after}");
    assert_eq!(
        after.stdout.trim(),
        format!("no cluster in {}", state.display()),
        "{after}"
    );
    drop(guard);
}
