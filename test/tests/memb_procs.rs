//! The membership event stream on real `aisexec` processes on 127.0.0.1..3 (udpu, three
//! expected votes), seen through `testmemb`: a crash is a new primary membership with
//! the node in `left`, the same on both survivors; losing a second node loses quorum;
//! nodes coming back make a new primary membership that lists the survivor first.
//!
//! Needs the workspace's binaries (`cargo build --release --workspace`). The harness
//! kills every process when the test ends, passing or failing.

use std::time::{Duration, Instant};

use ais_test::procs::{field, Client, Options, ProcCluster};

const CLIENT_WAIT: Duration = Duration::from_secs(15);

/// `id@born` entries of a list field.
fn list(line: &str, key: &str) -> Vec<(u32, u32)> {
    field(line, key)
        .unwrap_or("")
        .split(',')
        .filter_map(|e| {
            let (id, born) = e.split_once('@')?;
            Some((id.parse().ok()?, born.parse().ok()?))
        })
        .collect()
}

fn seq(line: &str) -> u32 {
    field(line, "sequence")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sequence in {line}"))
}

/// Subscribes on node `i` until the snapshot shows a primary membership of `n`
/// members (the first sync may still be running when the ring is in the log).
fn subscribe(c: &ProcCluster, i: usize, n: usize) -> (Client, String) {
    let deadline = Instant::now() + CLIENT_WAIT;
    loop {
        let t = c.client(i, "testmemb", &[]);
        let line = t
            .wait_line(|l| l.starts_with("SNAPSHOT"), CLIENT_WAIT)
            .unwrap_or_else(|| panic!("testmemb on node {i}: no snapshot\n{}", t.stderr_text()))
            .text;
        if field(&line, "primary") == Some("1") && list(&line, "members").len() == n {
            return (t, line);
        }
        assert!(
            Instant::now() < deadline,
            "node {i} never showed a primary membership of {n}: {line}"
        );
        drop(t);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_event(t: &Client, who: usize, from: usize, kind: &str) -> String {
    t.wait_line_from(
        from,
        |l| l.starts_with("EVENT") && field(l, "kind") == Some(kind),
        CLIENT_WAIT,
    )
    .unwrap_or_else(|| panic!("node {who} never said {kind}:\n{}", t.stdout_text()))
    .text
}

#[test]
fn crash_quorum_loss_and_return_are_told_the_same_way_everywhere() {
    let mut c = ProcCluster::start(Options::new("memb", 3).nodelist(true));
    let (t1, s1) = subscribe(&c, 1, 3);
    let (t2, s2) = subscribe(&c, 2, 3);
    let base = seq(&s1);
    assert_eq!(seq(&s2), base, "one sequence on every member: {s1} / {s2}");
    assert_eq!(list(&s1, "members"), list(&s2, "members"));

    c.kill9(3);
    let e1 = wait_event(&t1, 1, 0, "NEW_MEMBERSHIP");
    let e2 = wait_event(&t2, 2, 0, "NEW_MEMBERSHIP");
    eprintln!("after kill -9 of node 3: {e1}");
    assert_eq!(e1, e2, "both survivors hear the same event");
    assert_eq!(seq(&e1), base + 1);
    assert_eq!(
        list(&e1, "left").iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![3]
    );
    let from1 = t1.stdout_len();

    c.kill9(2);
    let e1 = wait_event(&t1, 1, from1, "NOT_PRIMARY");
    eprintln!("after kill -9 of node 2: {e1}");
    assert_eq!(seq(&e1), base + 1, "NOT_PRIMARY keeps the sequence");
    let from1 = t1.stdout_len();

    c.restart(2);
    c.restart(3);
    c.wait_for_ring(&[1, 2, 3], Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + CLIENT_WAIT;
    let whole = loop {
        let line = wait_event(&t1, 1, from1, "NEW_MEMBERSHIP");
        // Nodes 2 and 3 may come back one at a time: wait for the membership of three.
        let now: Vec<String> = t1
            .stdout_lines()
            .into_iter()
            .map(|l| l.text)
            .filter(|l| l.starts_with("EVENT") && list(l, "members").len() == 3)
            .collect();
        if let Some(l) = now.last() {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "no membership of three: {line}");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("after the restarts: {whole}");
    let members = list(&whole, "members");
    assert_eq!(
        members[0].0, 1,
        "the survivor is the oldest member: {whole}"
    );
    assert!(seq(&whole) > base + 1);
    assert!(
        members
            .windows(2)
            .all(|w| (w[0].1, w[0].0) < (w[1].1, w[1].0)),
        "members are listed oldest first: {whole}"
    );
    // A new subscriber on a restarted node starts where node 1 is.
    let (_t3, s3) = subscribe(&c, 3, 3);
    assert_eq!(seq(&s3), seq(&whole));
    assert_eq!(list(&s3, "members"), members);
}
