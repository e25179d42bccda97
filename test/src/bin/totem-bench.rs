//! Throughput of the Totem core alone: three `Srp` instances in one process, joined by a
//! lossless in-memory network, every node keeping its send queue full. Counts messages
//! delivered at node 1 per second of wall-clock time and frames put on the "wire" per
//! delivered message. This measures the protocol code, not the kernel or the daemon.
//!
//! `cargo run --release -p ais-test --bin totem-bench [-- --seconds S --sizes 64,1024]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as WallClock};

use bytes::Bytes;
use totem::{Dest, Event, Instant, MembState, NodeId, Srp, TotemConfig};

/// Counts heap allocations, to show that the hot path does not allocate per message.
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const NODES: u32 = 3;
/// Messages kept queued per node: enough that the token always finds work.
const QUEUE_TARGET: usize = 2_000;

struct Bench {
    nodes: Vec<Srp>,
    wire: VecDeque<(usize, Bytes)>,
    now: Instant,
    frames: u64,
    delivered_at_1: u64,
}

impl Bench {
    fn new() -> Bench {
        let params = TotemConfig::default()
            .resolve(NODES as usize)
            .expect("default config is valid");
        let now = Instant(0);
        let nodes = (1..=NODES)
            .map(|i| Srp::new(params.clone(), NodeId(i), 0, now))
            .collect();
        Bench {
            nodes,
            wire: VecDeque::new(),
            now,
            frames: 0,
            delivered_at_1: 0,
        }
    }

    /// Moves node `i`'s output onto the wire and counts its deliveries.
    fn drain(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit(self.now) {
            self.frames += 1;
            match t.dest {
                Dest::Unicast(to) => self.wire.push_back((to.0 as usize - 1, t.data)),
                Dest::Multicast => {
                    for j in (0..self.nodes.len()).filter(|&j| j != i) {
                        self.wire.push_back((j, t.data.clone()));
                    }
                }
            }
        }
        while let Some(e) = self.nodes[i].poll_event() {
            if i == 0 && matches!(e, Event::Deliver { .. }) {
                self.delivered_at_1 += 1;
            }
        }
    }

    /// One packet, or the earliest timer when the wire is empty. Virtual time moves a
    /// microsecond per packet so that timers stay far away on a busy ring.
    fn step(&mut self) {
        if let Some((to, data)) = self.wire.pop_front() {
            self.now = self.now.plus_micros(1);
            self.nodes[to].handle_datagram(self.now, data);
            self.drain(to);
            return;
        }
        let next = (0..self.nodes.len())
            .filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t, i)))
            .min();
        if let Some((t, i)) = next {
            self.now = self.now.max(t);
            self.nodes[i].handle_timeout(self.now);
            self.drain(i);
        }
    }

    fn top_up(&mut self, msg: &Bytes) {
        for i in 0..self.nodes.len() {
            let mut queued = false;
            while self.nodes[i].send_queue_len() < QUEUE_TARGET {
                if self.nodes[i].mcast(msg.clone()).is_err() {
                    break;
                }
                queued = true;
            }
            if queued {
                self.drain(i);
            }
        }
    }
}

fn run(size: usize, seconds: f64) {
    let mut b = Bench::new();
    for i in 0..b.nodes.len() {
        b.drain(i);
    }
    let mut guard = 0u64;
    while !b
        .nodes
        .iter()
        .all(|n| n.state() == MembState::Operational && n.members().len() == NODES as usize)
    {
        b.step();
        guard += 1;
        assert!(guard < 10_000_000, "ring did not form");
    }
    let msg = Bytes::from(vec![0xA5u8; size]);
    // Warm up, then measure.
    let warm = WallClock::now();
    while warm.elapsed() < Duration::from_millis(200) {
        b.top_up(&msg);
        for _ in 0..100 {
            b.step();
        }
    }
    let (frames0, delivered0) = (b.frames, b.delivered_at_1);
    let allocs0 = ALLOCATIONS.load(Ordering::Relaxed);
    let start = WallClock::now();
    let limit = Duration::from_secs_f64(seconds);
    while start.elapsed() < limit {
        b.top_up(&msg);
        for _ in 0..100 {
            b.step();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let delivered = b.delivered_at_1 - delivered0;
    let frames = b.frames - frames0;
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs0;
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
