//! `aisctl` against real `aisexec` processes on 127.0.0.1..3 with a nodelist: the status
//! names every member with its address, and quorum follows the membership (lost when two
//! of three nodes crash, regained when they come back).
//!
//! Needs the workspace's binaries next to this test (`cargo test --workspace --release`
//! builds them, aisctl included). Every wait is bounded; the cluster is killed and its
//! directory removed when the test ends, passing or failing.

use std::time::{Duration, Instant};

use ais_test::procs::{node_addr, ClientOutput, Configuration, Options, ProcCluster};

/// How long one aisctl run may take.
const RUN: Duration = Duration::from_secs(10);
/// How long a ring change may take (token 1 s + consensus 1.2 s + slack on a busy machine).
const RING: Duration = Duration::from_secs(20);

fn aisctl(c: &ProcCluster, i: usize, args: &[&str]) -> ClientOutput {
    let out = c.run(i, "aisctl", args, RUN);
    assert!(
        out.success(),
        "aisctl {args:?} on node {i}: {out}\n{}",
        c.log_tails(20)
    );
    out
}

/// The member entry `status --json` prints for node `j` of cluster `c`.
fn member_json(c: &ProcCluster, j: usize) -> String {
    format!(
        r#"{{"node_id":{j},"name":"node{j}","address":"{}:{}","votes":1}}"#,
        node_addr(j),
        c.port()
    )
}

fn ring_json(ring: &Configuration) -> String {
    format!(r#""ring_id":{{"rep":{},"seq":{}}}"#, ring.rep, ring.seq)
}

/// Runs `status --json` on node `i` until its output contains every one of `want` (the
/// log may show a ring a moment before aisctl's own turn sees it); panics with the last
/// output after `RING`.
fn status_until(c: &ProcCluster, i: usize, want: &[String]) -> String {
    let deadline = Instant::now() + RING;
    loop {
        let out = aisctl(c, i, &["status", "--json"]).stdout;
        if want.iter().all(|w| out.contains(w.as_str())) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "node {i}'s status never showed {want:?}; last:\n{out}\n{}",
            c.log_tails(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn aisctl_status_shows_names_addresses_and_quorum_through_crash_and_restart() {
    let mut c = ProcCluster::start(Options::new("aisctl", 3).nodelist(true));
    let ring = c
        .wait_for_ring(&[1, 2, 3], RING)
        .unwrap_or_else(|e| panic!("{e}"));

    // All three members, named and addressed, on node 1's view of the ring.
    let all: Vec<String> = (1..=3).map(|j| member_json(&c, j)).collect();
    let members = format!(r#""members":[{}]"#, all.join(","));
    let out = status_until(
        &c,
        1,
        &[
            r#"{"node_id":1,"node_name":"node1","#.to_owned(),
            ring_json(&ring),
            r#""quorate":true"#.to_owned(),
            members.clone(),
            r#""quorum":{"quorate":true,"enforced":true,"two_node":false,"expected_votes":3,"total_votes":3,"needed":2}"#.to_owned(),
        ],
    );
    assert!(out.contains(r#""totem.token_rotations":"#), "{out}");
    assert!(out.contains(r#""transport.datagrams_received":"#), "{out}");
    // The text form says the same for people.
    let text = aisctl(&c, 1, &["status"]).stdout;
    assert!(
        text.contains(&format!("Ring ID:      {}", ring.ring())),
        "{text}"
    );
    assert!(
        text.contains("quorate, 3 of 3 expected votes, 2 needed"),
        "{text}"
    );
    assert!(
        text.contains(&format!("node3  {}:{}", node_addr(3), c.port())),
        "{text}"
    );
    let m = aisctl(&c, 2, &["members", "--json"]).stdout;
    assert!(m.starts_with(r#"{"node_id":2,"node_name":"node2","#), "{m}");
    assert!(m.contains(&members), "{m}");

    // Two of three crash: the survivor is alone, with 1 of 3 votes.
    c.kill9(2);
    c.kill9(3);
    let alone = c
        .wait_for_ring(&[1], RING)
        .unwrap_or_else(|e| panic!("{e}"));
    status_until(
        &c,
        1,
        &[
            ring_json(&alone),
            r#""quorate":false"#.to_owned(),
            format!(r#""members":[{}]"#, member_json(&c, 1)),
            r#""quorum":{"quorate":false,"enforced":true,"two_node":false,"expected_votes":3,"total_votes":1,"needed":2}"#.to_owned(),
        ],
    );
    let log = c.log(1);
    assert!(
        log.lines()
            .any(|l| l.contains("quorum lost") && l.contains("left {2,3}")),
        "node 1's log does not explain the loss:\n{log}"
    );

    // They come back: quorate again, all three listed.
    c.restart(2);
    c.restart(3);
    let back = c
        .wait_for_ring(&[1, 2, 3], RING)
        .unwrap_or_else(|e| panic!("{e}"));
    status_until(
        &c,
        1,
        &[ring_json(&back), r#""quorate":true"#.to_owned(), members],
    );
    assert!(c.log(1).contains("quorum gained"));
    // The restarted nodes agree.
    for i in [2, 3] {
        status_until(&c, i, &[ring_json(&back), r#""quorate":true"#.to_owned()]);
    }
}

#[test]
fn aisctl_without_an_executive_fails_cleanly() {
    let dir = std::env::temp_dir().join(format!("aisctl-nobody-{}", std::process::id()));
    let out = ais_test::procs::Client::spawn("aisctl", &["status"], &dir.join("aisexec.sock"))
        .finish(RUN);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(out.stderr.contains("is aisexec running"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}
