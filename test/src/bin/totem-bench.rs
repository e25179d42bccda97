//! Throughput of the Totem core alone: three `Srp` instances in one process, joined by a
//! lossless in-memory network ([`ais_test::ring_bench`]), every node keeping its send
//! queue full. Counts messages delivered at node 1 per second of wall-clock time and
//! frames put on the "wire" per delivered message. This measures the protocol code, not
//! the kernel or the daemon.
//!
//! `cargo run --release -p ais-test --bin totem-bench [-- --seconds S --sizes 64,1024]`

use std::time::{Duration, Instant as WallClock};

use ais_test::alloc_count::{allocations, CountingAlloc};
use ais_test::ring_bench::RingBench;
use bytes::Bytes;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const NODES: u32 = 3;

fn run(size: usize, seconds: f64) {
    let mut b = RingBench::formed(NODES);
    // One payload, cloned for every mcast: the application's allocation, not the core's.
    let msg = Bytes::from(vec![0xA5u8; size]);
    // Warm up, then measure.
    let warm = WallClock::now();
    b.run_until(&msg, |_| warm.elapsed() >= Duration::from_millis(200));
    let (frames0, delivered0) = (b.frames, b.delivered_at_first);
    let allocs0 = allocations();
    let start = WallClock::now();
    let limit = Duration::from_secs_f64(seconds);
    b.run_until(&msg, |_| start.elapsed() >= limit);
    let secs = start.elapsed().as_secs_f64();
    let delivered = b.delivered_at_first - delivered0;
    let frames = b.frames - frames0;
    let allocs = allocations() - allocs0;
    println!(
        "RESULT size={size} msgs_per_s={:.0} frames_per_msg={:.4}",
        delivered as f64 / secs,
        frames as f64 / delivered.max(1) as f64
    );
    println!(
        "ALLOCS size={size} allocs_per_msg={:.4} allocs_per_frame={:.2}",
        allocs as f64 / delivered.max(1) as f64,
        allocs as f64 / frames.max(1) as f64
    );
}

fn main() {
    let mut seconds = 3.0;
    let mut sizes = vec![64usize, 1024];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--sizes" => {
                sizes = args
                    .next()
                    .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    for size in sizes {
        run(size, seconds);
    }
}

fn usage() -> ! {
    eprintln!("usage: totem-bench [--seconds S] [--sizes 64,1024]");
    std::process::exit(2)
}
