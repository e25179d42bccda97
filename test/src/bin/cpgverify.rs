//! `cpgverify --messages N [--group G] [--expect K] [--size B] [--timeout S]`
//!
//! Run on every node at once: each instance joins the group, waits until K members
//! (default 1) are in it, multicasts N numbered, checksummed messages, and delivers until
//! it holds N from every member that was in the group when it started sending. It then
//! prints
//!
//! ```text
//! VERIFY node=<id> delivered=<total> hash=<hex> errors=<n>
//! ```
//!
//! where the hash covers the whole delivery sequence (sender, sequence number, content),
//! so every node of one run prints the same hash, and `errors` counts corrupted,
//! duplicated and out-of-sequence messages. Exits non-zero on any error or on timeout.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libais::cpg::{Address, Cpg, CpgCallbacks, GroupName, Guarantee};
use libais::{DispatchFlags, SaError};

const MAGIC: u32 = 0xC0FF_EE01;
const HEADER: usize = 20;

#[derive(Default)]
struct State {
    members: Vec<Address>,
    /// Next expected sequence number per (node, pid).
    next: BTreeMap<(u32, u32), u32>,
    delivered: u64,
    errors: u64,
    hash: u64,
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

fn checksum(data: &[u8]) -> u32 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut h, data);
    (h ^ (h >> 32)) as u32
}

fn message(nodeid: u32, seq: u32, size: usize) -> Vec<u8> {
    let size = size.max(HEADER);
    let mut m = Vec::with_capacity(size);
    m.extend_from_slice(&MAGIC.to_be_bytes());
    m.extend_from_slice(&nodeid.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&[0; 8]);
    for i in HEADER..size {
        m.push(
            (i as u32)
                .wrapping_mul(seq.wrapping_add(7))
                .wrapping_add(nodeid) as u8,
        );
    }
    let sum = checksum(&m[HEADER..]);
    m[12..16].copy_from_slice(&sum.to_be_bytes());
    m[16..20].copy_from_slice(&(size as u32).to_be_bytes());
    m
}

fn check(state: &mut State, nodeid: u32, pid: u32, msg: &[u8]) {
    state.delivered += 1;
    fnv(&mut state.hash, &nodeid.to_be_bytes());
    fnv(&mut state.hash, &pid.to_be_bytes());
    fnv(&mut state.hash, msg);
    let ok = msg.len() >= HEADER
        && msg[0..4] == MAGIC.to_be_bytes()
        && msg[4..8] == nodeid.to_be_bytes()
        && u32::from_be_bytes([msg[16], msg[17], msg[18], msg[19]]) as usize == msg.len()
        && u32::from_be_bytes([msg[12], msg[13], msg[14], msg[15]]) == checksum(&msg[HEADER..]);
    if !ok {
        eprintln!(
            "cpgverify: corrupted message from {nodeid}:{pid} ({} bytes)",
            msg.len()
        );
        state.errors += 1;
        return;
    }
    let seq = u32::from_be_bytes([msg[8], msg[9], msg[10], msg[11]]);
    let next = state.next.entry((nodeid, pid)).or_insert(0);
    if seq != *next {
        eprintln!(
            "cpgverify: from {nodeid}:{pid} expected #{} got #{seq}",
            *next
        );
        state.errors += 1;
    }
    *next = seq.wrapping_add(1);
}

/// The exit status of a finished run: success only when no delivery was in error.
fn verdict(errors: u64) -> ExitCode {
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Args {
    messages: u32,
    group: String,
    expect: usize,
    size: usize,
    timeout: Duration,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        messages: 0,
        group: "cpgverify".into(),
        expect: 1,
        size: 64,
        timeout: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}: not a number: {v}"))
        };
        match k.as_str() {
            "--messages" => a.messages = num(&v)? as u32,
            "--group" => a.group = v,
            "--expect" => a.expect = num(&v)? as usize,
            "--size" => a.size = num(&v)? as usize,
            "--timeout" => a.timeout = Duration::from_secs(num(&v)?),
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.messages == 0 {
        return Err("--messages N is required".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cpgverify: {e}\nusage: cpgverify --messages N [--group G] [--expect K] [--size B] [--timeout S]");
            return ExitCode::from(2);
        }
    };
    let Some(group) = GroupName::new(args.group.clone().into_bytes()) else {
        eprintln!("cpgverify: group name too long");
        return ExitCode::from(2);
    };
    let state = Arc::new(Mutex::new(State {
        hash: 0xcbf2_9ce4_8422_2325,
        ..State::default()
    }));
    let (s1, s2) = (Arc::clone(&state), Arc::clone(&state));
    let callbacks = CpgCallbacks::default()
        .on_confchg(move |_, members, _, _| {
            if let Ok(mut s) = s1.lock() {
                s.members = members.to_vec();
            }
        })
        .on_deliver(move |_, nodeid, pid, msg| {
            if let Ok(mut s) = s2.lock() {
                check(&mut s, nodeid, pid, msg);
            }
        });
    let cpg = match Cpg::initialize(callbacks) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("cpgverify: cannot reach the executive: {e}");
            return ExitCode::FAILURE;
        }
    };
    let nodeid = cpg.local_get().unwrap_or(0);
    if let Err(e) = cpg.join(&group) {
        eprintln!("cpgverify: join: {e}");
        return ExitCode::FAILURE;
    }
    let dispatcher = {
        let cpg = Arc::clone(&cpg);
        std::thread::spawn(move || cpg.dispatch(DispatchFlags::Blocking))
    };
    let deadline = Instant::now() + args.timeout;
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());

    // Wait for the expected members, so that every instance delivers the same sequence.
    while lock().members.len() < args.expect {
        if Instant::now() > deadline {
            eprintln!("cpgverify: timed out waiting for {} members", args.expect);
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let senders: Vec<(u32, u32)> = lock().members.iter().map(|m| (m.nodeid, m.pid)).collect();

    let mut seq = 0;
    while seq < args.messages {
        match cpg.mcast_joined(Guarantee::Agreed, &message(nodeid, seq, args.size)) {
            Ok(()) => seq += 1,
            Err(SaError::TryAgain) => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => {
                eprintln!("cpgverify: mcast: {e}");
                return ExitCode::FAILURE;
            }
        }
        if Instant::now() > deadline {
            eprintln!("cpgverify: timed out sending");
            return ExitCode::FAILURE;
        }
    }
    loop {
        let done = {
            let s = lock();
            senders
                .iter()
                .all(|k| s.next.get(k).copied().unwrap_or(0) >= args.messages)
        };
        if done {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("cpgverify: timed out waiting for deliveries");
            let _ = cpg.finalize();
            let _ = dispatcher.join();
            let s = lock();
            println!(
                "VERIFY node={nodeid} delivered={} hash={:016x} errors={} TIMEOUT",
                s.delivered, s.hash, s.errors
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = cpg.finalize();
    let _ = dispatcher.join();
    let s = lock();
    println!(
        "VERIFY node={nodeid} delivered={} hash={:016x} errors={}",
        s.delivered, s.hash, s.errors
    );
    verdict(s.errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: u32 = 3;
    const PID: u32 = 77;

    fn fresh() -> State {
        State {
            hash: 0xcbf2_9ce4_8422_2325,
            ..State::default()
        }
    }

    /// Feeds the messages of `seqs` from NODE:PID, each built as the senders build them.
    fn feed(state: &mut State, seqs: &[u32], size: usize) {
        for &seq in seqs {
            check(state, NODE, PID, &message(NODE, seq, size));
        }
    }

    #[test]
    fn a_clean_stream_has_no_errors() {
        let mut s = fresh();
        feed(&mut s, &[0, 1, 2, 3, 4], 64);
        // A second sender's stream is numbered on its own.
        check(&mut s, NODE, PID + 1, &message(NODE, 0, 200));
        check(&mut s, NODE, PID + 1, &message(NODE, 1, 200));
        assert_eq!(s.errors, 0);
        assert_eq!(s.delivered, 7);
        assert_eq!(s.next.get(&(NODE, PID)), Some(&5));
        assert_eq!(s.next.get(&(NODE, PID + 1)), Some(&2));
    }

    #[test]
    fn a_bad_checksum_is_an_error() {
        let mut s = fresh();
        feed(&mut s, &[0], 64);
        let mut bad = message(NODE, 1, 64);
        bad[HEADER + 5] ^= 0x40;
        check(&mut s, NODE, PID, &bad);
        assert_eq!(s.errors, 1);
        // A corrupted message does not advance the sequence: the next good one is #1.
        feed(&mut s, &[1], 64);
        assert_eq!(s.errors, 1);
    }

    #[test]
    fn other_corruptions_are_errors() {
        let mut s = fresh();
        // Too short for a header, wrong magic, sent by another node, length field wrong.
        check(&mut s, NODE, PID, &[0; HEADER - 1]);
        let mut magic = message(NODE, 0, 64);
        magic[0] ^= 1;
        check(&mut s, NODE, PID, &magic);
        check(&mut s, NODE, PID, &message(NODE + 1, 0, 64));
        let mut cut = message(NODE, 0, 64);
        cut.pop();
        check(&mut s, NODE, PID, &cut);
        assert_eq!(s.errors, 4);
        assert_eq!(s.delivered, 4);
    }

    #[test]
    fn a_repeated_sequence_number_is_an_error() {
        let mut s = fresh();
        feed(&mut s, &[0, 1, 1, 2], 64);
        assert_eq!(s.errors, 1);
    }

    #[test]
    fn a_skipped_sequence_number_is_an_error() {
        let mut s = fresh();
        feed(&mut s, &[0, 1, 3, 4], 64);
        assert_eq!(s.errors, 1);
        assert_eq!(s.next.get(&(NODE, PID)), Some(&5));
    }

    /// The sequence number comes from the network: u32::MAX must not overflow (a panic
    /// where overflow checks are on, as in debug test builds).
    #[test]
    fn the_last_sequence_number_does_not_overflow() {
        let mut s = fresh();
        feed(&mut s, &[u32::MAX], 64);
        assert_eq!(s.errors, 1);
        assert_eq!(s.next.get(&(NODE, PID)), Some(&0));
    }

    #[test]
    fn errors_make_the_exit_status_a_failure() {
        assert_eq!(verdict(0), ExitCode::SUCCESS);
        assert_eq!(verdict(1), ExitCode::FAILURE);
        assert_eq!(verdict(u64::MAX), ExitCode::FAILURE);
    }
}
