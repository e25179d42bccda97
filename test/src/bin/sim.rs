//! `sim`: runs seeds of the deterministic Totem simulator and reports EVS violations.
//!
//! ```text
//! cargo run --release -p ais-test --bin sim -- --seeds N [--seed S] [--nodes K] [--threads T] [--verbose]
//! ```
//!
//! Runs seeds `S..S+N` (S defaults to 0; `--seed S` alone runs just that seed) over T
//! threads (default: all cores). Every seed's result depends on the seed (and `--nodes`)
//! only. Each violation is printed with its seed and the command that replays it; the
//! last line is a summary, and the exit status is non-zero if anything was violated.
//! `--verbose` prints the plan and every event of the run (one thread), and sets up
//! `env_logger` so that `RUST_LOG=totem=debug` shows the protocol's own log, stamped
//! with virtual time and node.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant as WallClock;

use ais_test::checker::fmt_time;
use ais_test::cluster::log_context;
use ais_test::{run_seed, SeedResult, SwarmOptions};

struct Args {
    first: u64,
    count: u64,
    nodes: Option<u32>,
    threads: usize,
    verbose: bool,
}

const USAGE: &str = "usage: sim [--seeds N] [--seed S] [--nodes K] [--threads T] [--verbose]";

fn parse_args() -> Result<Args, String> {
    let mut seeds = None;
    let mut seed = None;
    let mut nodes = None;
    let mut threads = None;
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--seeds" => seeds = Some(parse_num::<u64>("--seeds", &value("--seeds")?)?),
            "--seed" => seed = Some(parse_num::<u64>("--seed", &value("--seed")?)?),
            "--nodes" => {
                let k = parse_num::<u32>("--nodes", &value("--nodes")?)?;
                if !(1..=64).contains(&k) {
                    return Err(format!("--nodes must be in 1..=64, got {k}"));
                }
                nodes = Some(k);
            }
            "--threads" => {
                let t = parse_num::<usize>("--threads", &value("--threads")?)?;
                threads = Some(t.max(1));
            }
            "--verbose" | "-v" => verbose = true,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let count = match (seeds, seed) {
        (Some(n), _) => n,
        (None, Some(_)) => 1,
        (None, None) => 1,
    };
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(Args {
        first: seed.unwrap_or(0),
        count,
        nodes,
        threads,
        verbose,
    })
}

fn parse_num<T: std::str::FromStr>(name: &str, s: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{name}: not a number: {s:?}"))
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            let place = match log_context() {
                Some((t, node, inc)) => format!("{} n{node}#{inc}", fmt_time(t)),
                None => "-".to_string(),
            };
            writeln!(
                buf,
                "{place} {} {}: {}",
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.verbose {
        init_logging();
    }
    let opts = SwarmOptions {
        nodes: args.nodes,
        verbose: args.verbose,
    };
    let threads = if args.verbose {
        1
    } else {
        args.threads.min(args.count.max(1) as usize)
    };
    let started = WallClock::now();

    let next = AtomicU64::new(0);
    let results: Mutex<Vec<SeedResult>> = Mutex::new(Vec::with_capacity(args.count as usize));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.count {
                    break;
                }
                let seed = args.first + i;
                let r = run_seed(seed, &opts);
                if let Some(v) = &r.violation {
                    // Say so at once (details follow in seed order at the end).
                    eprintln!("seed {seed}: {} ({} nodes)", v.property.label(), r.nodes);
                }
                results
                    .lock()
                    .expect("no thread panics holding the lock")
                    .push(r);
            });
        }
    });
    let mut results = results
        .into_inner()
        .expect("no thread panics holding the lock");
    results.sort_by_key(|r| r.seed);

    let mut violations = 0u64;
    let mut delivered = 0u64;
    let mut configurations = 0u64;
    for r in &results {
        delivered += r.delivered;
        configurations += r.configurations;
        if args.verbose || args.count == 1 {
            println!(
                "seed {}: {} nodes, {}; {} accepted, {} delivered, {} configurations, {} steps, {} ms virtual, trace {:016x}",
                r.seed,
                r.nodes,
                r.profile,
                r.accepted,
                r.delivered,
                r.configurations,
                r.steps,
                r.virtual_ms,
                r.trace_hash
            );
        }
        if let Some(v) = &r.violation {
            violations += 1;
            println!(
                "seed {} FAILED: {v}\n  replay: {}",
                r.seed,
                r.replay_command()
            );
        }
    }
    eprintln!(
        "({:.1} s wall, {threads} threads)",
        started.elapsed().as_secs_f64()
    );
    println!("sim: {} seeds, {violations} violations, {delivered} messages delivered, {configurations} configurations", results.len());
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
