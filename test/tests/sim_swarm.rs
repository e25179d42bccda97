//! A small swarm: every seed must run its faults, heal, converge and pass every EVS check.
//! `cargo run --release -p ais-test --bin sim -- --seeds 1000` runs many more.

use ais_test::{run_seed, SwarmOptions};

const SEEDS: u64 = 30;

#[test]
fn thirty_seeds_pass_every_check() {
    let opts = SwarmOptions::default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let opts = &opts;
                s.spawn(move || {
                    (0..SEEDS)
                        .filter(|seed| seed % threads == t)
                        .map(|seed| run_seed(seed, opts))
                        .filter_map(|r| {
                            r.violation
                                .as_ref()
                                .map(|v| format!("{v}\n  replay: {}", r.replay_command()))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("seed thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {SEEDS} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
