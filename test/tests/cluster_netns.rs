//! Real `aisexec` processes in network namespaces, one per node, on a bridge, with the
//! multicast transport: the network can be cut (`ip link set .. down`) and made lossy
//! (`tc netem`) underneath the daemons, as a real LAN breaks.
//!
//! Creating namespaces needs root. Where that is not allowed each test prints a loud
//! SKIPPED line and passes: the loopback tests (cluster_procs.rs) still run everywhere.

use std::sync::Arc;
use std::time::Duration;

use ais_test::netns::Topology;
use ais_test::procs::{Options, ProcCluster};

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
