//! `aisbench --mode tput|lat --size <B> --seconds <S> [--receive-only] [--group G]`
//!
//! CPG benchmark against the local executive.
//!
//! - `tput`: multicast as fast as flow control allows (TRY_AGAIN means wait a little),
//!   for S seconds, counting every delivery at this node (from all senders: run it on
//!   several nodes at once for several senders; `--receive-only` counts without sending).
//!   Latency percentiles are of this node's own messages, send to self-delivery.
//! - `lat`: one message at a time, each sent when the previous one came back.
//!
//! The last line is always
//! `RESULT mode=<tput|lat> size=<B> senders=<n> msgs_per_s=<x> mb_per_s=<x> p50_us=<x> p99_us=<x>`.
//! Standard error has `TRYAGAIN count=<n>`: how many sends flow control refused,
//! followed by `LATENCY p90_us=.. p99_us=.. p999_us=.. max_us=.. hist=<lo>:<n>,..`: the
//! tail of the own messages' latencies, with a histogram in 25 µs buckets up to 500 µs
//! and one bucket for the rest, for reading where a p99 comes from.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libais::cpg::{Cpg, CpgCallbacks, GroupName, Guarantee};
use libais::{DispatchFlags, SaError};

const HEADER: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Throughput,
    Latency,
}

struct Args {
    mode: Mode,
    size: usize,
    seconds: f64,
    receive_only: bool,
    group: String,
}

#[derive(Default)]
struct Stats {
    counting: bool,
    delivered: u64,
    bytes: u64,
    senders: BTreeSet<(u32, u32)>,
    latencies_us: Vec<u64>,
    /// Sequence number of the last own message delivered (latency mode).
    last_own: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        mode: Mode::Throughput,
        size: 1024,
        seconds: 5.0,
        receive_only: false,
        group: "aisbench".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--receive-only" {
            a.receive_only = true;
            continue;
        }
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        match k.as_str() {
            "--mode" => {
                a.mode = match v.as_str() {
                    "tput" => Mode::Throughput,
                    "lat" => Mode::Latency,
                    _ => return Err(format!("--mode: tput or lat, not {v}")),
                }
            }
            "--size" => a.size = v.parse().map_err(|_| format!("--size: {v}"))?,
            "--seconds" => a.seconds = v.parse().map_err(|_| format!("--seconds: {v}"))?,
            "--group" => a.group = v,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.size < HEADER || a.size > libais::cpg::CPG_MSG_MAX {
        return Err(format!(
            "--size must be {HEADER} to {}",
            libais::cpg::CPG_MSG_MAX
        ));
    }
    Ok(a)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs callbacks on this thread until own message `seq` is back (true) or `until`
/// passes (false): poll the connection's socket, dispatch what it brought.
fn wait_own(cpg: &Cpg, stats: &Mutex<Stats>, seq: u64, until: Instant) -> Result<bool, SaError> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use std::os::fd::BorrowedFd;
    let fd = cpg.fd()?;
    loop {
        if stats
            .lock()
            .map(|s| s.last_own == Some(seq))
            .unwrap_or(false)
        {
            return Ok(true);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        if !cpg.callbacks_pending()? {
            // SAFETY: `fd` is the connection's socket, open until `cpg` is finalized,
            // which happens only after this loop.
            let sock = unsafe { BorrowedFd::borrow_raw(fd) };
            let mut fds = [PollFd::new(&sock, PollFlags::IN)];
            let timeout = Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return Err(SaError::Library),
            }
        }
        cpg.dispatch(DispatchFlags::All)?;
    }
}

/// The `LATENCY` line: upper percentiles and a histogram of `sorted`.
fn tail_line(sorted: &[u64]) -> String {
    const BUCKET_US: u64 = 25;
    const BUCKETS: usize = 20;
    let mut hist = [0u64; BUCKETS + 1];
    for &l in sorted {
        hist[((l / BUCKET_US) as usize).min(BUCKETS)] += 1;
    }
    let hist: Vec<String> = hist
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| format!("{}:{n}", i as u64 * BUCKET_US))
        .collect();
    format!(
        "LATENCY p90_us={} p99_us={} p999_us={} max_us={} hist={}",
        percentile(sorted, 0.90),
        percentile(sorted, 0.99),
        percentile(sorted, 0.999),
        sorted.last().copied().unwrap_or(0),
        hist.join(",")
    )
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("aisbench: {e}\nusage: aisbench --mode tput|lat --size B --seconds S [--receive-only] [--group G]");
            return ExitCode::from(2);
        }
    };
    let Some(group) = GroupName::new(args.group.clone().into_bytes()) else {
        eprintln!("aisbench: group name too long");
        return ExitCode::from(2);
    };
    let start = Instant::now();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let my_pid = std::process::id();
    let nodeid_cell = Arc::new(Mutex::new(0u32));
    let (st, me) = (Arc::clone(&stats), Arc::clone(&nodeid_cell));
    let callbacks = CpgCallbacks::default().on_deliver(move |_, nodeid, pid, msg| {
        let now_us = start.elapsed().as_micros() as u64;
        let Ok(mut s) = st.lock() else { return };
        let mine = pid == my_pid && me.lock().map(|n| *n == nodeid).unwrap_or(false);
        if mine && msg.len() >= HEADER {
            let seq = u64::from_be_bytes(msg[0..8].try_into().unwrap_or([0; 8]));
            let sent = u64::from_be_bytes(msg[8..16].try_into().unwrap_or([0; 8]));
            if s.counting {
                s.latencies_us.push(now_us.saturating_sub(sent));
            }
            s.last_own = Some(seq);
        }
        if s.counting {
            s.delivered += 1;
            s.bytes += msg.len() as u64;
            s.senders.insert((nodeid, pid));
        }
    });
    let cpg = match Cpg::initialize(callbacks) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("aisbench: cannot reach the executive: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(n) = cpg.local_get() {
        if let Ok(mut m) = nodeid_cell.lock() {
            *m = n;
        }
    }
    if let Err(e) = cpg.join(&group) {
        eprintln!("aisbench: join: {e}");
        return ExitCode::FAILURE;
    }
    // Latency mode runs its callbacks on the sending thread, as a poll loop (as
    // corosync's cpgload does): a dispatcher thread would add a thread wake-up to every
    // round trip. The other modes send and receive at once, so they dispatch on a thread.
    let single_threaded = args.mode == Mode::Latency && !args.receive_only;
    let dispatcher = (!single_threaded).then(|| {
        let cpg = Arc::clone(&cpg);
        std::thread::spawn(move || cpg.dispatch(DispatchFlags::Blocking))
    });
    let lock = &*stats;
    let set_counting = |on: bool| {
        if let Ok(mut s) = lock.lock() {
            s.counting = on;
        }
    };
    let mut buf = vec![0xA5u8; args.size];
    let mut seq: u64 = 0;
    let send = |seq: u64, buf: &mut Vec<u8>| -> Result<(), SaError> {
        buf[0..8].copy_from_slice(&seq.to_be_bytes());
        let now = start.elapsed().as_micros() as u64;
        buf[8..16].copy_from_slice(&now.to_be_bytes());
        cpg.mcast_joined(Guarantee::Agreed, buf)
    };
    let measure_start = Instant::now();
    let limit = Duration::from_secs_f64(args.seconds);
    set_counting(true);
    let mut failed = None;
    let mut try_again: u64 = 0;
    while measure_start.elapsed() < limit && failed.is_none() {
        if args.receive_only {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match args.mode {
            Mode::Throughput => match send(seq, &mut buf) {
                Ok(()) => seq += 1,
                Err(SaError::TryAgain) => {
                    try_again += 1;
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) => failed = Some(e),
            },
            Mode::Latency => {
                match send(seq, &mut buf) {
                    Ok(()) => {}
                    Err(SaError::TryAgain) => {
                        try_again += 1;
                        std::thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    Err(e) => {
                        failed = Some(e);
                        continue;
                    }
                }
                let wait_until = Instant::now() + Duration::from_secs(5);
                match wait_own(&cpg, lock, seq, wait_until) {
                    Ok(true) => seq += 1,
                    Ok(false) => {
                        eprintln!("aisbench: message {seq} not delivered back within 5 s");
                        return ExitCode::FAILURE;
                    }
                    Err(e) => {
                        eprintln!("aisbench: dispatch: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    let elapsed = measure_start.elapsed().as_secs_f64();
    set_counting(false);
    eprintln!("TRYAGAIN count={try_again}");
    if let Some(e) = failed {
        eprintln!("aisbench: mcast: {e}");
        return ExitCode::FAILURE;
    }
    let _ = cpg.finalize();
    if let Some(d) = dispatcher {
        let _ = d.join();
    }
    let Ok(mut s) = lock.lock() else {
        return ExitCode::FAILURE;
    };
    s.latencies_us.sort_unstable();
    eprintln!("{}", tail_line(&s.latencies_us));
    let mode = match args.mode {
        Mode::Throughput => "tput",
        Mode::Latency => "lat",
    };
    println!(
        "RESULT mode={mode} size={} senders={} msgs_per_s={:.0} mb_per_s={:.2} p50_us={} p99_us={}",
        args.size,
        s.senders.len(),
        s.delivered as f64 / elapsed,
        s.bytes as f64 / elapsed / 1e6,
        percentile(&s.latencies_us, 0.50),
        percentile(&s.latencies_us, 0.99)
    );
    ExitCode::SUCCESS
}
