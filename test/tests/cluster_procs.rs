//! Real `aisexec` processes on 127.0.0.1..N (udpu), driven by the client programs: the
//! daemon, its sockets, its signals and its clients as they run in production.
//!
//! Needs the workspace's binaries next to this test (`cargo test --workspace --release`
//! builds them). Each test starts its own cluster on its own port and directory, so the
//! tests run in parallel; a failing test prints the tail of every daemon's log.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ais_proto::ipc::{CONNECT_ID, MAX_FRAME_LEN};
use ais_test::procs::{
    field, log_timestamp, node_addr, Client, Configuration, Options, ProcCluster, Signal, Timing,
};
use ais_test::Rng;

/// The flood test keeps both cores of a small machine busy; tests that assert a time
/// bound share this lock, the flood takes it alone, so that they never run side by side.
static CPU: RwLock<()> = RwLock::new(());

fn cpu_shared() -> RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(|p| p.into_inner())
}

fn cpu_alone() -> RwLockWriteGuard<'static, ()> {
    CPU.write().unwrap_or_else(|p| p.into_inner())
}

/// How long a client waits for what it expects before the test gives up.
const CLIENT_WAIT: Duration = Duration::from_secs(10);

/// What crash detection may take beyond `token + consensus`: the join round after the
/// consensus timeout (join 50 ms), the commit token's two rotations and recovery, CPG's
/// sync round, the callback's way to the client and its stdout, and scheduling on a busy
/// two-core machine running other clusters' tests at the same time.
const NODEDOWN_SLACK: Duration = Duration::from_millis(750);

/// How soon a graceful leave (SIGTERM) must reconfigure the survivors' clients, with
/// corosync's default timeouts: the leave announcement, not token loss (3650 ms + 4380 ms
/// for three nodes), must drive it. Measured by the test from the signal to testcpg's
/// line, so it includes CPG's sync round and the client's pipe.
const LEAVE_BOUND: Duration = Duration::from_secs(1);

/// How soon after the leaver logs the signal the survivors must log their new regular
/// configuration (issue 3: "within 100 ms instead of waiting for the token timeout"), by
/// the daemons' own log timestamps, so the test's and the clients' scheduling do not
/// count.
const LEAVE_INSTALL_BOUND: Duration = Duration::from_millis(100);

/// Largest resident memory an executive may reach while a client floods it.
const RSS_LIMIT_KIB: u64 = 200 * 1024;

/// `node:pid` entries of a testcpg list field.
fn procs(line: &str, key: &str) -> Vec<String> {
    field(line, key)
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Starts testcpg in `group` on each of `nodes` and waits until every one of them sees
/// all of them in the group.
fn testcpgs(c: &ProcCluster, nodes: &[usize], group: &str) -> Vec<Client> {
    let clients: Vec<Client> = nodes
        .iter()
        .map(|&i| c.client(i, "testcpg", &["--group", group]))
        .collect();
    for (t, i) in clients.iter().zip(nodes) {
        assert!(
            t.wait_line(
                |l| l.starts_with("CONFCHG") && procs(l, "members").len() == nodes.len(),
                CLIENT_WAIT
            )
            .is_some(),
            "testcpg on node {i} never saw {} members in {group}:\n{}{}",
            nodes.len(),
            t.stdout_text(),
            t.stderr_text()
        );
    }
    clients
}

#[test]
fn three_nodes_form_one_ring() {
    let _cpu = cpu_shared();
    let t0 = Instant::now();
    let mut c = ProcCluster::start(Options::new("ring", 3));
    let formed = t0.elapsed();
    let ring = c.configuration(1).unwrap();
    assert_eq!(ring.members, [1, 2, 3]);
    for i in 1..=3 {
        let ci = c.configuration(i).unwrap();
        assert_eq!(
            (ci.rep, ci.seq, &ci.members),
            (ring.rep, ring.seq, &ring.members)
        );
        assert!(c.is_running(i));
        c.wait_for_socket(i, Duration::from_secs(2)).unwrap();
    }
    eprintln!(
        "ring {} of {{1,2,3}} formed {formed:?} after start",
        ring.ring()
    );
}

#[test]
fn cpg_deliveries_agree_on_every_node() {
    let _cpu = cpu_shared();
    let c = ProcCluster::start(Options::new("agree", 3));
    let t0 = Instant::now();
    c.cpgverify_everywhere(&[1, 2, 3], "agree", 2000);
    eprintln!(
        "3 x 2000 messages verified on 3 nodes in {:?}",
        t0.elapsed()
    );
}

#[test]
fn kill_9_of_one_node_gives_survivors_a_nodedown_confchg_within_token_plus_consensus_plus_bound() {
    let _cpu = cpu_shared();
    let mut c = ProcCluster::start(Options::new("kill9", 3));
    let watchers = testcpgs(&c, &[1, 2, 3], "kill9");
    let victim = format!("2:{}", watchers[1].pid());
    let from: Vec<usize> = watchers.iter().map(Client::stdout_len).collect();

    let bound = c.timing().effective_token(3) + c.timing().effective_consensus(3) + NODEDOWN_SLACK;
    let killed = Instant::now();
    c.kill9(2);
    for i in [1, 3] {
        let w = &watchers[i - 1];
        let line = w
            .wait_line_from(
                from[i - 1],
                |l| {
                    l.starts_with("CONFCHG")
                        && procs(l, "left").contains(&victim)
                        && field(l, "reasons") == Some("nodedown")
                },
                bound + Duration::from_secs(5),
            )
            .unwrap_or_else(|| {
                panic!(
                    "node {i}'s testcpg saw no nodedown of {victim}:\n{}",
                    w.stdout_text()
                )
            });
        let took = line.at.duration_since(killed);
        eprintln!("node {i}: nodedown of {victim} {took:?} after kill -9 (bound {bound:?})");
        assert!(
            took <= bound,
            "node {i} saw the nodedown after {took:?}, over token + consensus + {NODEDOWN_SLACK:?} = {bound:?}"
        );
    }
    let ring = c.wait_for_ring(&[1, 3], Duration::from_secs(2)).unwrap();
    assert_eq!(ring.members, [1, 3]);
}

#[test]
fn killed_node_restarts_and_rejoins() {
    let _cpu = cpu_shared();
    let mut c = ProcCluster::start(Options::new("rejoin", 3));
    let mut watchers = testcpgs(&c, &[1, 2, 3], "rejoin");
    // Node 2's testcpg lives until its executive dies under it.
    let on_2 = watchers.remove(1);
    let gone = format!("2:{}", on_2.pid());
    let old = c.configuration(2).unwrap();
    c.kill9(2);
    drop(on_2);
    let survivors = c.wait_for_ring(&[1, 3], Duration::from_secs(10)).unwrap();
    for (w, i) in watchers.iter().zip([1, 3]) {
        assert!(
            w.wait_line(
                |l| l.starts_with("CONFCHG")
                    && procs(l, "left").contains(&gone)
                    && field(l, "reasons") == Some("nodedown"),
                CLIENT_WAIT
            )
            .is_some(),
            "node {i}'s testcpg never saw the nodedown of {gone}:\n{}",
            w.stdout_text()
        );
    }
    let persisted = c
        .persisted_ring_seq(2)
        .expect("node 2 persisted its ring seq");
    assert!(
        persisted >= old.seq,
        "node 2 persisted ring seq {persisted}, below its ring {}",
        old.ring()
    );

    let from: Vec<usize> = watchers.iter().map(Client::stdout_len).collect();
    let restarted = Instant::now();
    c.restart(2);
    let ring = c
        .wait_for_ring(&[1, 2, 3], Duration::from_secs(10))
        .unwrap();
    eprintln!(
        "node 2 back in ring {} {:?} after restart (its first ring {}; old ring {}, survivors' {}, persisted seq {persisted})",
        ring.ring(),
        restarted.elapsed(),
        c.configurations(2)[0].ring(),
        old.ring(),
        survivors.ring()
    );
    // Node up, as the survivors' membership saw it.
    for i in [1, 3] {
        assert_eq!(
            c.configuration(i).unwrap().joined,
            [2],
            "node {i} did not see node 2 join"
        );
    }
    // The restarted node went on from the ring seq it persisted, not from 0.
    let first = c.configurations(2)[0].clone();
    assert!(
        first.seq > persisted && first.seq > old.seq,
        "restarted node 2's first ring {} does not follow its persisted seq {persisted} (old ring {})",
        first.ring(),
        old.ring()
    );
    assert!(ring.seq > survivors.seq);

    // And its processes are back in the survivors' groups.
    let newcomer = c.client(2, "testcpg", &["--group", "rejoin"]);
    let who = format!("2:{}", newcomer.pid());
    for ((w, i), from) in watchers.iter().zip([1, 3]).zip(from) {
        assert!(
            w.wait_line_from(
                from,
                |l| l.starts_with("CONFCHG") && procs(l, "joined").contains(&who),
                CLIENT_WAIT
            )
            .is_some(),
            "node {i}'s testcpg never saw {who} join:\n{}",
            w.stdout_text()
        );
    }
}

/// Stops node 3 of three with `sig` (corosync's default timeouts) and checks what a
/// graceful leave promises: the daemon logs that it leaves and exits 0; the survivors'
/// next regular configuration is {1,2}, installed within [`LEAVE_INSTALL_BOUND`] of the
/// leaver's announcement by the daemons' own log clocks; their testcpg sees the leave
/// within [`LEAVE_BOUND`] of the signal.
fn graceful_leave(sig: Signal, name: &str) {
    let _cpu = cpu_shared();
    let mut c = ProcCluster::start(Options::new(name, 3).timing(Timing::corosync_defaults()));
    let watchers = testcpgs(&c, &[1, 2, 3], name);
    let leaver = format!("3:{}", watchers[2].pid());
    let from: Vec<usize> = watchers.iter().map(Client::stdout_len).collect();
    let log_from: Vec<usize> = (1..=3).map(|i| c.log_len(i)).collect();

    let sent = Instant::now();
    let status = c.stop(3, sig, Duration::from_secs(5)).unwrap();
    let exited = sent.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "aisexec exited with {status} on {sig:?}\n{}",
        c.log_tails(20)
    );
    let log3 = c.log(3);
    let announce = format!("] signal {}: leaving the ring", sig.number());
    let announced = log3
        .lines()
        .skip(log_from[2])
        .find(|l| l.contains(&announce))
        .unwrap_or_else(|| panic!("node 3 never logged '{announce}':\n{log3}"));
    assert!(
        log3.lines().any(|l| l.contains("] node 3 left the ring")),
        "node 3 exited without logging that it left:\n{log3}"
    );
    let t0 = log_timestamp(announced)
        .unwrap_or_else(|| panic!("no timestamp on node 3's line: {announced}"));

    for i in [1, 2] {
        let line = c
            .wait_log_line(
                i,
                log_from[i - 1],
                |l| Configuration::parse(l).is_some(),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("node {i} installed no configuration after the leave: {e}"));
        let conf = Configuration::parse(&line).unwrap();
        assert_eq!(
            conf.members,
            [1, 2],
            "node {i}'s first configuration after the leave: {line}"
        );
        let t1 = log_timestamp(&line)
            .unwrap_or_else(|| panic!("no timestamp on node {i}'s line: {line}"));
        let took = t1.checked_sub(t0).unwrap_or_else(|| {
            panic!(
                "node {i} installed {} before node 3 announced its leave: {line} / {announced}",
                conf.ring()
            )
        });
        eprintln!(
            "node {i}: configuration {} {took:?} after node 3 logged {sig:?} (by the daemons' clocks)",
            conf.ring()
        );
        assert!(
            took <= LEAVE_INSTALL_BOUND,
            "node {i} installed {} {took:?} after node 3 announced its leave, over {LEAVE_INSTALL_BOUND:?}\n{}",
            conf.ring(),
            c.log_tails(20)
        );
    }

    for i in [1, 2] {
        let w = &watchers[i - 1];
        let line = w
            .wait_line_from(
                from[i - 1],
                |l| l.starts_with("CONFCHG") && procs(l, "left").contains(&leaver),
                LEAVE_BOUND + Duration::from_secs(10),
            )
            .unwrap_or_else(|| {
                panic!(
                    "node {i}'s testcpg never saw {leaver} leave:\n{}",
                    w.stdout_text()
                )
            });
        let took = line.at.duration_since(sent);
        eprintln!(
            "node {i}: {} {took:?} after {sig:?} (daemon exited 0 after {exited:?})",
            line.text
        );
        assert!(
            took <= LEAVE_BOUND,
            "node {i}'s testcpg saw the leave {took:?} after {sig:?}, over {LEAVE_BOUND:?}"
        );
    }
    let ring = c.wait_for_ring(&[1, 2], Duration::from_secs(1)).unwrap();
    assert_eq!(ring.members, [1, 2]);
}

#[test]
fn sigterm_announces_the_leave_exits_0_and_survivors_reconfigure_within_100_ms() {
    graceful_leave(Signal::Term, "term");
}

#[test]
fn sigint_announces_the_leave_exits_0_and_survivors_reconfigure_within_100_ms() {
    graceful_leave(Signal::Int, "int");
}

#[test]
fn testcpg_multicasts_each_line_typed_on_its_stdin() {
    let _cpu = cpu_shared();
    let c = ProcCluster::start(Options::new("stdin", 2));
    let mut clients = testcpgs(&c, &[1, 2], "stdin");
    let senders: Vec<String> = clients.iter().map(|t| t.pid().to_string()).collect();
    let from: Vec<usize> = clients.iter().map(Client::stdout_len).collect();
    // Lengths differ, so each DELIVER line (which gives the length, not the text) names
    // one typed line.
    let typed = [
        (0, "a line typed on node 1"),
        (1, "a longer line, typed on node 2 at the same time"),
        (0, "and a third, from node 1 again, longest of the three"),
    ];
    for (k, text) in typed {
        clients[k]
            .send_line(text)
            .unwrap_or_else(|e| panic!("write to testcpg on node {}: {e}", k + 1));
    }
    let expected: Vec<String> = typed
        .iter()
        .map(|(k, text)| {
            format!(
                "DELIVER group=stdin from={}:{} len={}",
                k + 1,
                senders[*k],
                text.len()
            )
        })
        .collect();
    let mut orders = Vec::new();
    for (t, i) in clients.iter().zip([1, 2]) {
        for want in &expected {
            assert!(
                t.wait_line_from(from[i - 1], |l| l == want, CLIENT_WAIT)
                    .is_some(),
                "testcpg on node {i} never printed '{want}':\n{}{}",
                t.stdout_text(),
                t.stderr_text()
            );
        }
        let delivered: Vec<String> = t.stdout_lines()[from[i - 1]..]
            .iter()
            .filter(|l| l.text.starts_with("DELIVER"))
            .map(|l| l.text.clone())
            .collect();
        assert_eq!(
            delivered.len(),
            expected.len(),
            "node {i} delivered other messages too: {delivered:?}"
        );
        // Lines from one sender keep their order.
        let pos = |want: &String| delivered.iter().position(|d| d == want).unwrap();
        assert!(
            pos(&expected[0]) < pos(&expected[2]),
            "node {i}: {delivered:?}"
        );
        orders.push(delivered);
    }
    assert_eq!(
        orders[0], orders[1],
        "the two nodes delivered in different orders"
    );
    eprintln!("typed lines delivered on both nodes as {:?}", orders[0]);
}

#[test]
fn client_killed_mid_stream_gives_procdown() {
    let _cpu = cpu_shared();
    let c = ProcCluster::start(Options::new("procdown", 2));
    let watcher = testcpgs(&c, &[2], "stream").remove(0);
    let mut sender = c.client(
        1,
        "cpgverify",
        &[
            "--messages",
            "100000000",
            "--group",
            "stream",
            "--expect",
            "2",
            "--timeout",
            "60",
        ],
    );
    let streamer = format!("1:{}", sender.pid());
    let from_streamer = format!("from={streamer}");
    assert!(
        watcher
            .wait_line(
                |l| l.starts_with("DELIVER") && l.contains(&from_streamer),
                CLIENT_WAIT
            )
            .is_some(),
        "node 2 never got a message from {streamer}:\n{}{}",
        watcher.stdout_text(),
        sender.stderr_text()
    );
    // Let it stream a little, then kill it in mid-stream.
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    sender.kill9();
    let line = watcher
        .wait_line(
            |l| {
                l.starts_with("CONFCHG")
                    && procs(l, "left").contains(&streamer)
                    && field(l, "reasons") == Some("procdown")
            },
            CLIENT_WAIT,
        )
        .unwrap_or_else(|| {
            panic!(
                "node 2 never saw procdown of {streamer}; last lines:\n{}",
                tail(&watcher.stdout_text(), 20)
            )
        });
    // Nothing of the dead process may be delivered after its procdown.
    std::thread::sleep(Duration::from_millis(300));
    let lines = watcher.stdout_lines();
    let at = lines.iter().position(|l| l.text == line.text).unwrap();
    let delivered = lines[..at]
        .iter()
        .filter(|l| l.text.contains(&from_streamer))
        .count();
    let late = lines[at..]
        .iter()
        .filter(|l| l.text.starts_with("DELIVER") && l.text.contains(&from_streamer))
        .count();
    eprintln!(
        "procdown of {streamer} on node 2 {:?} after kill -9, after {delivered} of its messages",
        line.at.duration_since(killed)
    );
    assert!(delivered > 0);
    assert_eq!(
        late, 0,
        "{late} messages of {streamer} delivered after its procdown"
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn flooding_client_gets_try_again_and_executive_memory_stays_bounded() {
    let _cpu = cpu_alone();
    let mut c = ProcCluster::start(Options::new("flood", 3));
    let before = c.configuration(1).unwrap();
    // A second client takes every message on another node, as fast as it can read.
    let receiver = c.client(
        2,
        "aisbench",
        &[
            "--mode",
            "tput",
            "--size",
            "65536",
            "--seconds",
            "6",
            "--receive-only",
            "--group",
            "flood",
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut bench = c.client(
        1,
        "aisbench",
        &[
            "--mode",
            "tput",
            "--size",
            "65536",
            "--seconds",
            "5",
            "--group",
            "flood",
        ],
    );
    let start = Instant::now();
    let mut peak = [0u64; 3];
    let mut samples = 0;
    while bench.is_running() && start.elapsed() < Duration::from_secs(20) {
        for (i, p) in peak.iter_mut().enumerate() {
            let rss = c
                .rss_kib(i + 1)
                .unwrap_or_else(|| panic!("node {} is gone", i + 1));
            *p = (*p).max(rss);
            assert!(
                rss < RSS_LIMIT_KIB,
                "node {} at {rss} KiB resident while flooded (limit {RSS_LIMIT_KIB} KiB)",
                i + 1
            );
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = bench.finish(Duration::from_secs(5));
    assert!(out.success(), "aisbench: {out}");
    let received = receiver.finish(Duration::from_secs(5));
    assert!(received.success(), "aisbench --receive-only: {received}");
    let try_again: u64 = out
        .stderr
        .lines()
        .find(|l| l.starts_with("TRYAGAIN"))
        .and_then(|l| field(l, "count"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no TRYAGAIN line: {out}"));
    let result = out
        .stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or("");
    let on_2 = received
        .stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or("");
    eprintln!(
        "flood: node 1 {result}; TryAgain {try_again} times; node 2 {on_2}; peak VmRSS {:?} KiB over {samples} samples",
        peak
    );
    assert!(
        try_again > 0,
        "a flooding client was never told to try again"
    );
    for i in 1..=3 {
        assert!(c.is_running(i), "node {i} died under the flood");
    }
    let after = c.configuration(1).unwrap();
    assert_eq!(
        (after.rep, after.seq),
        (before.rep, before.seq),
        "the ring changed under the flood: {} -> {}",
        before.ring(),
        after.ring()
    );
}

/// Connects to a node's IPC socket, writes `bytes`, and says whether the executive
/// closed the connection within `within` (reading until end of file).
fn ipc_garbage(c: &ProcCluster, node: usize, bytes: &[u8], within: Duration) -> bool {
    let mut s = UnixStream::connect(c.socket(node)).expect("connect to the IPC socket");
    // The executive may close while we still write: that is an answer too.
    if s.write_all(bytes).is_err() {
        return true;
    }
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

#[test]
fn garbage_on_the_ipc_socket_and_udp_port_leaves_the_executive_serving() {
    let _cpu = cpu_shared();
    let mut c = ProcCluster::start(Options::new("garbage", 3));
    let before = c.configuration(1).unwrap();
    let mut rng = Rng::new(0x6a72_6261_6765);
    let close = Duration::from_secs(2);

    // The IPC socket: frames that cannot be, and plain noise.
    for i in 1..=3 {
        let mut over = Vec::new();
        over.extend_from_slice(&u32::MAX.to_be_bytes());
        over.extend_from_slice(&CONNECT_ID.to_be_bytes());
        assert!(
            ipc_garbage(&c, i, &over, close),
            "node {i} kept a 4 GiB frame open"
        );
        let mut just_over = Vec::new();
        just_over.extend_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        just_over.extend_from_slice(&0u32.to_be_bytes());
        assert!(
            ipc_garbage(&c, i, &just_over, close),
            "node {i} kept an oversized frame open"
        );
        let short = [0u8, 0, 0, 3, 0, 0, 0, 0];
        assert!(
            ipc_garbage(&c, i, &short, close),
            "node {i} kept a 3-byte frame open"
        );
        let mut bad_connect = Vec::new();
        bad_connect.extend_from_slice(&12u32.to_be_bytes());
        bad_connect.extend_from_slice(&CONNECT_ID.to_be_bytes());
        bad_connect.extend_from_slice(&[0xff; 4]);
        assert!(
            ipc_garbage(&c, i, &bad_connect, close),
            "node {i} accepted a bad handshake"
        );
        let mut before_connect = Vec::new();
        before_connect.extend_from_slice(&8u32.to_be_bytes());
        before_connect.extend_from_slice(&1u32.to_be_bytes());
        assert!(
            ipc_garbage(&c, i, &before_connect, close),
            "node {i} served a request before the handshake"
        );
        for _ in 0..20 {
            let mut noise = vec![0u8; rng.range(1, 100_000) as usize];
            rng.fill(&mut noise);
            // Noise may happen to be an incomplete frame: the executive then waits for
            // the rest; closing our end must free it all the same.
            let _ = ipc_garbage(&c, i, &noise, Duration::from_millis(50));
        }
        // A frame announced but cut short by the client closing.
        let mut cut = Vec::new();
        cut.extend_from_slice(&(MAX_FRAME_LEN as u32).to_be_bytes());
        cut.extend_from_slice(&CONNECT_ID.to_be_bytes());
        cut.extend_from_slice(&[0u8; 1000]);
        let _ = ipc_garbage(&c, i, &cut, Duration::from_millis(50));
        // Each of the five closed with a warning and counted (the noise may add more).
        let log = c.log(i);
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("closing connection")
                && l.contains("above the maximum")),
            "node {i} logged no warning for an oversized frame"
        );
        let closed = c.counter(i, "ipc.closed_bad_frame");
        assert!(closed >= 5, "node {i} counted {closed} bad frames");
    }

    // The Totem port: random datagrams, then datagrams with a valid Totem header (every
    // frame kind, claiming to be each member or a stranger) and a random body, sent from
    // an address outside the cluster.
    let noise = UdpSocket::bind(SocketAddrV4::new(node_addr(200), 0)).unwrap();
    let mut sent = 0;
    let mut ring = before.clone();
    let mut changes = Vec::new();
    for (round, what) in ["random bytes", "a valid Totem header and a random body"]
        .into_iter()
        .enumerate()
    {
        for _ in 0..600 {
            let len = if rng.chance(0.05) {
                rng.range(1400, 65_000)
            } else {
                rng.range(0, 1400)
            } as usize;
            let mut d = vec![0u8; len];
            rng.fill(&mut d);
            if round == 1 && len >= 8 {
                d[0..2].copy_from_slice(&totem::wire::MAGIC.to_be_bytes());
                d[2] = totem::wire::PROTOCOL_VERSION;
                d[3] = rng.range(1, 6) as u8;
                let sender = *rng.pick(&[1u32, 2, 3, 99]);
                d[4..8].copy_from_slice(&sender.to_be_bytes());
            }
            for i in 1..=3 {
                let _ = noise.send_to(&d, c.udp_addr(i));
                sent += 1;
            }
        }
        // Two token timeouts: long enough for a token lost to the noise to show.
        std::thread::sleep(c.timing().effective_token(3) * 2);
        for i in 1..=3 {
            assert!(c.is_running(i), "node {i} died of datagrams of {what}");
        }
        let now = c.configuration(1).unwrap();
        if (now.rep, now.seq) != (ring.rep, ring.seq) {
            changes.push(format!(
                "datagrams of {what} changed the ring {} -> {}",
                ring.ring(),
                now.ring()
            ));
        }
        ring = now;
    }
    eprintln!(
        "{sent} garbage datagrams sent; ring {} -> {}",
        before.ring(),
        ring.ring()
    );
    // Still serving: every node delivers, and the same sequence.
    c.cpgverify_everywhere(&[1, 2, 3], "garbage", 500);
    // And frames Totem drops as undecodable must not disturb the membership.
    assert!(changes.is_empty(), "{}", changes.join("; "));
}

#[test]
fn node_with_the_wrong_key_never_joins() {
    let _cpu = cpu_shared();
    let mut c = ProcCluster::launch(Options::new("key", 3).key_groups(&[1, 1, 2]));
    let pair = c.wait_for_ring(&[1, 2], Duration::from_secs(10)).unwrap();
    assert_eq!(pair.members, [1, 2]);
    let watch = Duration::from_secs(5);
    let until = Instant::now() + watch;
    while Instant::now() < until {
        for i in 1..=3 {
            assert!(c.is_running(i), "node {i} exited");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in [1, 2] {
        for conf in c.configurations(i) {
            assert!(
                !conf.members.contains(&3),
                "node {i} installed ring {} with node 3, whose key differs: {:?}",
                conf.ring(),
                conf.members
            );
        }
        assert_eq!(c.configuration(i).unwrap().members, [1, 2]);
    }
    for conf in c.configurations(3) {
        assert_eq!(
            conf.members,
            [3],
            "node 3 formed a ring with others: {}",
            conf.ring()
        );
    }
    eprintln!(
        "over {watch:?}: nodes 1 and 2 in ring {}; node 3 alone ({} configurations)",
        pair.ring(),
        c.configurations(3).len()
    );
    c.cpgverify_everywhere(&[1, 2], "key", 200);

    // The frames were dropped for failing authentication and counted, on both sides:
    // nodes 1 and 2 drop node 3's, node 3 drops theirs. Each keeps sending (joins, merge
    // detection), so the counters grow while the test watches.
    let first: Vec<u64> = (1..=3)
        .map(|i| c.counter(i, "transport.bad_auth"))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let second: Vec<u64> = (1..=3)
        .map(|i| c.counter(i, "transport.bad_auth"))
        .collect();
    eprintln!("transport.bad_auth on nodes 1..3: {first:?}, 2 s later {second:?}");
    for i in 0..3 {
        assert!(
            first[i] > 0,
            "node {} counted no frame failing authentication",
            i + 1
        );
        assert!(
            second[i] > first[i],
            "node {}'s bad_auth counter did not grow ({} -> {}) while the other key's frames kept coming",
            i + 1,
            first[i],
            second[i]
        );
    }
    // And nothing that failed authentication went on to Totem as a bad frame: it was
    // dropped before decoding.
    for i in 1..=3 {
        assert_eq!(
            c.counter(i, "totem.bad_frames"),
            0,
            "node {i} passed frames of the other key to Totem"
        );
    }
}
