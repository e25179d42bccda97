//! Real `aisexec` processes in network namespaces, one per node, on a bridge, with the
//! multicast transport: the network can be cut (`ip link set .. down`) and made lossy
//! (`tc netem`) underneath the daemons, as a real LAN breaks.
//!
//! Creating namespaces needs root. Where that is not allowed each test prints a loud
//! SKIPPED line and passes: the loopback tests (cluster_procs.rs) still run everywhere.

use std::sync::Arc;
use std::time::Duration;

use ais_test::netns::Topology;
use ais_test::procs::{field, Client, Options, ProcCluster};

/// How long a partition or a merge may take to show in every node's configuration: token
/// loss (1 s) + consensus (1.2 s) + joins and recovery, on a busy two-core machine.
const RECONFIGURE: Duration = Duration::from_secs(15);

/// The namespaces for a test, or `None` after printing why the test is skipped. Each test
/// passes its own `net` so that tests running in parallel use separate subnets.
fn topology(test: &str, nodes: u32, net: u8) -> Option<Arc<Topology>> {
    match Topology::create(nodes, net) {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            eprintln!("\n**********\n*** SKIPPED {test}: {e}\n**********\n");
            None
        }
    }
}

#[test]
fn partition_gives_two_configurations_and_healing_merges_them() {
    let Some(topo) = topology("partition_gives_two_configurations", 3, 41) else {
        return;
    };
    let mut c = ProcCluster::start(Options::new("nspart", 3).namespaces(topo.clone()));
    let first = c.configuration(1).unwrap();
    eprintln!("formed {} with multicast in namespaces", first.ring());
    c.cpgverify_everywhere(&[1, 2, 3], "before", 300);

    topo.isolate(&[1]).expect("cut node 1 off the bridge");
    let alone = c
        .wait_for_ring(&[1], RECONFIGURE)
        .unwrap_or_else(|e| panic!("node 1 alone: {e}"));
    let pair = c
        .wait_for_ring(&[2, 3], RECONFIGURE)
        .unwrap_or_else(|e| panic!("nodes 2 and 3: {e}"));
    eprintln!(
        "partitioned: {} {:?} | {} {:?}",
        alone.ring(),
        alone.members,
        pair.ring(),
        pair.members
    );
    assert_ne!(alone.ring(), pair.ring(), "two partitions share a ring id");
    // Each side keeps working on its own.
    c.cpgverify_everywhere(&[2, 3], "split", 300);
    c.cpgverify_everywhere(&[1], "alone", 100);

    topo.heal().expect("put node 1 back on the bridge");
    let merged = c
        .wait_for_ring(&[1, 2, 3], RECONFIGURE)
        .unwrap_or_else(|e| panic!("merge: {e}"));
    eprintln!("merged: {} {:?}", merged.ring(), merged.members);
    assert!(merged.seq > alone.seq && merged.seq > pair.seq);
    c.cpgverify_everywhere(&[1, 2, 3], "after", 300);
}

#[test]
fn twenty_percent_loss_still_delivers_everything_in_one_order() {
    let Some(topo) = topology("twenty_percent_loss", 3, 42) else {
        return;
    };
    let mut c = ProcCluster::start(Options::new("nsloss", 3).namespaces(topo.clone()));
    for i in 1..=3 {
        match topo.set_loss(i, 20) {
            Ok(how) => eprintln!("node {i}: 20% loss on every frame it sends ({how:?})"),
            Err(e) => {
                eprintln!("\n**********\n*** SKIPPED twenty_percent_loss: cannot make links lossy: {e}\n**********\n");
                return;
            }
        }
    }
    c.cpgverify_everywhere(&[1, 2, 3], "lossy", 1000);
    let dropped: Vec<Option<u64>> = (1..=3).map(|i| topo.dropped(i)).collect();
    eprintln!("frames dropped by the loss rules: {dropped:?}");
    if dropped.iter().all(Option::is_some) {
        assert!(
            dropped.iter().all(|d| d.unwrap_or(0) > 0),
            "the loss rules dropped nothing: the test did not test loss"
        );
    }
    for i in 1..=3 {
        topo.clear_loss(i).expect("remove netem");
    }
    // The ring survives the loss (or re-forms) and ends whole.
    c.wait_for_ring(&[1, 2, 3], RECONFIGURE)
        .unwrap_or_else(|e| panic!("after loss: {e}"));
}

/// Waits on `t` (from output line `from`) for an `EVENT` line of `kind`.
fn wait_event(t: &Client, who: u32, from: usize, kind: &str) -> String {
    t.wait_line_from(
        from,
        |l| l.starts_with("EVENT") && field(l, "kind") == Some(kind),
        RECONFIGURE,
    )
    .unwrap_or_else(|| panic!("node {who} never said {kind}:\n{}", t.stdout_text()))
    .text
}

/// Starts testmemb on node `i` and waits for a snapshot of a primary membership of all
/// three (the first sync may still run when the ring shows in the log).
fn subscribe(c: &ProcCluster, i: usize) -> (Client, String) {
    for _ in 0..100 {
        let t = c.client(i, "testmemb", &[]);
        let s = t
            .wait_line(|l| l.starts_with("SNAPSHOT"), RECONFIGURE)
            .expect("a snapshot")
            .text;
        if field(&s, "primary") == Some("1")
            && field(&s, "members").is_some_and(|m| m.split(',').count() == 3)
        {
            return (t, s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("node {i} never showed a primary membership of three");
}

fn sequence(line: &str) -> u32 {
    field(line, "sequence")
        .and_then(|s| s.parse().ok())
        .expect("a sequence")
}

#[test]
fn partition_tells_the_minority_not_primary_and_healing_evicts_it() {
    let Some(topo) = topology("partition_tells_the_minority_not_primary", 3, 43) else {
        return;
    };
    let mut c = ProcCluster::start(
        Options::new("nsmemb", 3)
            .namespaces(topo.clone())
            .nodelist(true),
    );
    let subs: Vec<(Client, String)> = (1..=3).map(|i| subscribe(&c, i)).collect();
    let base = sequence(&subs[0].1);
    assert!(subs.iter().all(|(_, s)| sequence(s) == base));

    topo.isolate(&[1]).expect("cut node 1 off");
    let one = wait_event(&subs[0].0, 1, 0, "NOT_PRIMARY");
    let two = wait_event(&subs[1].0, 2, 0, "NEW_MEMBERSHIP");
    let three = wait_event(&subs[2].0, 3, 0, "NEW_MEMBERSHIP");
    eprintln!("partitioned: node 1: {one}\n  nodes 2, 3: {two}");
    assert_eq!(sequence(&one), base, "NOT_PRIMARY keeps the sequence");
    assert_eq!(two, three, "the primary side hears one story");
    assert_eq!(sequence(&two), base + 1);
    assert_eq!(field(&two, "left").map(|l| l.starts_with("1@")), Some(true));

    let from: Vec<usize> = subs.iter().map(|(t, _)| t.stdout_len()).collect();
    topo.heal().expect("heal");
    c.wait_for_ring(&[1, 2, 3], RECONFIGURE)
        .unwrap_or_else(|e| panic!("merge: {e}"));
    let evicted = wait_event(&subs[0].0, 1, from[0], "EVICTED");
    let two = wait_event(&subs[1].0, 2, from[1], "NEW_MEMBERSHIP");
    let three = wait_event(&subs[2].0, 3, from[2], "NEW_MEMBERSHIP");
    eprintln!("healed: node 1: {evicted}\n  nodes 2, 3: {two}");
    assert_eq!(two, three);
    assert_eq!(
        sequence(&evicted),
        base + 1,
        "EVICTED names the primary membership formed without node 1"
    );
    assert_eq!(sequence(&two), base + 2);
    assert_eq!(
        field(&two, "joined").map(|j| j.starts_with("1@")),
        Some(true)
    );
    // The evicted stream is over; a new subscriber on node 1 sees the one membership.
    let (_, again) = subscribe(&c, 1);
    assert_eq!(sequence(&again), base + 2, "{again}");
    assert_eq!(field(&again, "members"), field(&two, "members"));
    let mut subs = subs;
    let first = subs.remove(0).0;
    let out = first.finish(Duration::from_secs(5));
    assert!(out.success(), "testmemb ends cleanly on eviction: {out}");
}
