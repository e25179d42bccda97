//! CLM on real `aisexec` processes on 127.0.0.1..3 (udpu), seen through `testclm`: the
//! view every node reports, kill -9 of a node seen as `left` by both survivors in the
//! same view, its restart seen as `joined`, node get (sync and async) for an unknown id,
//! and the nodelist's names in every node's records.
//!
//! Needs the workspace's binaries next to this test (`cargo build --release
//! --workspace`). Each test starts its own cluster on its own port and directory; the
//! harness kills every process when a test ends, passing or failing.

use std::time::Duration;

use ais_test::procs::{field, Client, Options, ProcCluster};

/// How long a client waits for what it expects before the test gives up.
const CLIENT_WAIT: Duration = Duration::from_secs(15);

fn members(line: &str) -> Vec<u32> {
    field(line, "members")
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Waits, from output line `from` on, for a `NODE` line about `id` with `change`;
/// returns it.
fn wait_change(t: &Client, from: usize, id: u32, change: &str, who: usize) -> String {
    let line = t
        .wait_line_from(
            from,
            |l| {
                l.starts_with("NODE ")
                    && field(l, "id") == Some(&id.to_string())
                    && field(l, "change") == Some(change)
            },
            CLIENT_WAIT,
        )
        .unwrap_or_else(|| {
            panic!(
                "testclm on node {who} never reported node {id} {change}:\n{}{}",
                t.stdout_text(),
                t.stderr_text()
            )
        });
    line.text
}

fn number(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// Starts tracking testclms on `nodes` and waits until each reports a view of every
/// node of the cluster; returns the clients and that view's number.
fn trackers(c: &ProcCluster, nodes: &[usize]) -> (Vec<Client>, u64) {
    let clients: Vec<Client> = nodes.iter().map(|&i| c.client(i, "testclm", &[])).collect();
    let want: Vec<u32> = (1..=c.len()).map(|i| c.nodeid(i)).collect();
    let mut numbers = Vec::new();
    for (t, i) in clients.iter().zip(nodes) {
        let line = t
            .wait_line(
                |l| l.starts_with("VIEW ") && members(l) == want,
                CLIENT_WAIT,
            )
            .unwrap_or_else(|| {
                panic!(
                    "testclm on node {i} never saw members {want:?}:\n{}{}",
                    t.stdout_text(),
                    t.stderr_text()
                )
            });
        numbers.push(field(&line.text, "number").and_then(|v| v.parse::<u64>().ok()));
    }
    assert!(
        numbers.windows(2).all(|w| w[0] == w[1]),
        "nodes report different numbers for one view: {numbers:?}"
    );
    (clients, numbers[0].expect("a view number"))
}

#[test]
fn testclm_once_prints_the_local_node_and_the_same_view_on_every_node() {
    let c = ProcCluster::start(Options::new("clm-once", 3));
    let mut views = Vec::new();
    for i in 1..=3 {
        // The ring of three is in the logs; CLM installs its view of it one round of
        // announcements later, so an early --once may still print the view before.
        let deadline = std::time::Instant::now() + CLIENT_WAIT;
        let out = loop {
            let out = c.run(i, "testclm", &["--once"], CLIENT_WAIT);
            assert!(out.success(), "testclm --once on node {i}: {out}");
            let full = out
                .stdout
                .lines()
                .any(|l| l.starts_with("VIEW ") && members(l) == [1, 2, 3]);
            if full || std::time::Instant::now() >= deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let local = out
            .stdout
            .lines()
            .find(|l| l.starts_with("LOCAL "))
            .unwrap_or_else(|| panic!("no LOCAL line: {out}"));
        assert_eq!(field(local, "node"), Some(i.to_string().as_str()));
        assert_eq!(
            field(local, "address"),
            Some(format!("127.0.0.{i}").as_str())
        );
        assert!(field(local, "name").is_some_and(|n| !n.is_empty()));
        let view = out
            .stdout
            .lines()
            .find(|l| l.starts_with("VIEW "))
            .unwrap_or_else(|| panic!("no VIEW line: {out}"))
            .to_string();
        assert_eq!(members(&view), [1, 2, 3], "{out}");
        let nodes: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("NODE "))
            .collect();
        assert_eq!(nodes.len(), 3, "{out}");
        for (k, l) in nodes.iter().enumerate() {
            assert_eq!(field(l, "id"), Some((k + 1).to_string().as_str()));
            assert_eq!(
                field(l, "address"),
                Some(format!("127.0.0.{}", k + 1).as_str())
            );
            assert_eq!(field(l, "member"), Some("1"));
            assert_eq!(field(l, "change"), Some("no_change"));
        }
        // Everything but the change field is replicated state: identical everywhere.
        views.push(
            out.stdout
                .lines()
                .filter(|l| !l.starts_with("LOCAL "))
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(views[0], views[1]);
    assert_eq!(views[0], views[2]);
}

#[test]
fn kill_9_is_left_on_both_survivors_in_one_view_and_restart_is_joined() {
    let mut c = ProcCluster::start(Options::new("clm-kill9", 3));
    let (watchers, first) = trackers(&c, &[1, 3]);
    let from: Vec<usize> = watchers.iter().map(Client::stdout_len).collect();
    c.kill9(2);
    let left: Vec<u64> = watchers
        .iter()
        .zip([1, 3])
        .zip(&from)
        .map(|((w, i), &f)| number(&wait_change(w, f, 2, "left", i), "view"))
        .collect();
    assert_eq!(
        left[0], left[1],
        "survivors saw node 2 leave in different views"
    );
    assert!(left[0] > first);
    for w in &watchers {
        assert!(w
            .wait_line(
                |l| l.starts_with("VIEW ")
                    && field(l, "number") == Some(&left[0].to_string())
                    && members(l) == [1, 3],
                CLIENT_WAIT
            )
            .is_some());
    }

    let from: Vec<usize> = watchers.iter().map(Client::stdout_len).collect();
    c.restart(2);
    let lines: Vec<String> = watchers
        .iter()
        .zip([1, 3])
        .zip(&from)
        .map(|((w, i), &f)| wait_change(w, f, 2, "joined", i))
        .collect();
    // The whole record, view number included, is the same on both survivors.
    assert_eq!(lines[0], lines[1], "survivors saw node 2 join differently");
    let joined = number(&lines[0], "view");
    assert!(joined > left[0]);
    // The restarted node knows itself as the survivors know it: its boot time and its
    // initial view (the first view of this incarnation: a view of its own if it formed
    // one before the merge, else the merged one).
    let out = c.run(2, "testclm", &["--once"], CLIENT_WAIT);
    assert!(out.success(), "{out}");
    let line = |prefix: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_default()
            .to_string()
    };
    assert!(number(&line("VIEW "), "number") >= joined, "{out}");
    let local = line("LOCAL ");
    assert_eq!(field(&local, "boot"), field(&lines[0], "boot"), "{out}");
    assert_eq!(
        field(&local, "initial_view"),
        field(&lines[0], "initial_view"),
        "{out}"
    );
    assert!(number(&local, "initial_view") <= joined);
}

#[test]
fn node_get_of_an_unknown_node_is_invalid_param_and_of_a_member_its_record() {
    let c = ProcCluster::start(Options::new("clm-nodeget", 2));
    let out = c.run(1, "testclm", &["--node-get-async", "4242"], CLIENT_WAIT);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "NODE_GET invocation=1 error=InvalidParam"),
        "{out}"
    );
    let out = c.run(1, "testclm", &["--node-get-async", "2"], CLIENT_WAIT);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("NODE_GET"))
        .unwrap_or_default()
        .to_string();
    assert_eq!(field(&line, "error"), Some("Ok"), "{out}");
    assert_eq!(field(&line, "address"), Some("127.0.0.2"), "{out}");
    assert_eq!(field(&line, "member"), Some("1"), "{out}");
    let out = c.run(2, "testclm", &["--node-get", "4242"], CLIENT_WAIT);
    assert!(!out.success());
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("NODE_GET") && field(l, "error") == Some("InvalidParam")),
        "{out}"
    );
}

#[test]
fn node_records_carry_the_names_of_the_nodelist_on_every_node() {
    // The harness's nodelist names node i `node<i>`; the processes share one host
    // name, so only the nodelist can tell them apart.
    let c = ProcCluster::start(Options::new("clm-names", 3).nodelist(true));
    // CLM learns a member's record one round of announcements after the ring forms, so
    // each question is asked again (bounded) until the record is there.
    let ask = |node: usize, args: &[&str], done: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + CLIENT_WAIT;
        loop {
            let out = c.run(node, "testclm", args, CLIENT_WAIT);
            if done(&out.stdout) || std::time::Instant::now() >= deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let node_get = |l: &str| l.starts_with("NODE_GET");
    for (asker, about) in [(1, 2), (2, 3), (3, 1), (1, 1)] {
        let id = about.to_string();
        let out = ask(asker, &["--node-get-async", &id], &|o| {
            o.lines()
                .any(|l| node_get(l) && field(l, "error") == Some("Ok"))
        });
        let line = out.stdout.lines().find(|l| node_get(l)).unwrap_or_default();
        assert_eq!(field(line, "error"), Some("Ok"), "node {asker}: {out}");
        let want = format!("node{about}");
        assert_eq!(
            field(line, "name"),
            Some(want.as_str()),
            "node {asker}: {out}"
        );
    }
    // And the local record and the view, as testclm --once prints them.
    let names = |o: &str| -> Vec<String> {
        o.lines()
            .filter(|l| l.starts_with("NODE "))
            .filter_map(|l| field(l, "name").map(str::to_owned))
            .collect()
    };
    let out = ask(2, &["--once"], &|o| names(o).len() == 3);
    assert!(out.success(), "{out}");
    assert_eq!(names(&out.stdout), ["node1", "node2", "node3"], "{out}");
    let local = out
        .stdout
        .lines()
        .find(|l| l.starts_with("LOCAL "))
        .unwrap_or_default();
    assert_eq!(field(local, "name"), Some("node2"), "{out}");
}
