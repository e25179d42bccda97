//! A seed is a complete description of a run: running it twice gives the same trace, and
//! another seed gives another trace.

use ais_test::{run_seed, SwarmOptions};

#[test]
fn one_seed_twice_gives_the_same_trace() {
    let opts = SwarmOptions {
        nodes: Some(4),
        verbose: false,
    };
    let a = run_seed(7, &opts);
    let b = run_seed(7, &opts);
    assert_eq!(
        a.trace_hash, b.trace_hash,
        "seed 7 diverged between two runs"
    );
    assert_eq!(
        (a.delivered, a.configurations, a.steps),
        (b.delivered, b.configurations, b.steps)
    );
    assert_eq!(a.violation, b.violation);
    assert!(
        a.configurations > 0,
        "no configuration was installed: the trace is trivially equal"
    );
}

#[test]
fn different_seeds_give_different_traces() {
    let opts = SwarmOptions {
        nodes: Some(4),
        verbose: false,
    };
    let a = run_seed(7, &opts);
    let b = run_seed(8, &opts);
    assert_ne!(a.trace_hash, b.trace_hash);
}
