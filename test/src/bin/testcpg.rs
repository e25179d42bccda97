//! `testcpg [--group G]`: joins a CPG group, prints every configuration change and every
//! message, and multicasts each line typed on stdin. Lines are stable for scripts:
//!
//! ```text
//! CONFCHG group=<g> members=<node:pid,..> left=<node:pid,..> joined=<node:pid,..> reasons=<..>
//! DELIVER group=<g> from=<node>:<pid> len=<n>
//! ```
//!
//! The executive is reached through `$AIS_SOCKET` or the default socket path.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;

use libais::cpg::{Address, Cpg, CpgCallbacks, GroupName, Guarantee};
use libais::{DispatchFlags, SaError};

fn list(a: &[Address]) -> String {
    a.iter()
        .map(|m| format!("{}:{}", m.nodeid, m.pid))
        .collect::<Vec<_>>()
        .join(",")
}

fn main() -> ExitCode {
    let mut group = "testcpg".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--group" | "-g", Some(g)) => group = g,
            _ => {
                eprintln!("usage: testcpg [--group G]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(name) = GroupName::new(group.clone().into_bytes()) else {
        eprintln!(
            "testcpg: group name longer than {} bytes",
            libais::cpg::CPG_NAME_MAX
        );
        return ExitCode::from(2);
    };
    let callbacks = CpgCallbacks::default()
        .on_confchg(|g, members, left, joined| {
            let reasons: Vec<&str> = left.iter().chain(joined).map(|a| a.reason.name()).collect();
            println!(
                "CONFCHG group={g} members={} left={} joined={} reasons={}",
                list(members),
                list(left),
                list(joined),
                reasons.join(",")
            );
            let _ = std::io::stdout().flush();
        })
        .on_deliver(|g, nodeid, pid, msg| {
            println!("DELIVER group={g} from={nodeid}:{pid} len={}", msg.len());
            let _ = std::io::stdout().flush();
        });
    let cpg = match Cpg::initialize(callbacks) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("testcpg: cannot reach the executive: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = cpg.join(&name) {
        eprintln!("testcpg: join {group}: {e}");
        return ExitCode::FAILURE;
    }
    let dispatcher = {
        let cpg = Arc::clone(&cpg);
        std::thread::spawn(move || cpg.dispatch(DispatchFlags::Blocking))
    };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        loop {
            match cpg.mcast_joined(Guarantee::Agreed, line.as_bytes()) {
                Err(SaError::TryAgain) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => {
                    eprintln!("testcpg: mcast: {e}");
                    break;
                }
                Ok(()) => break,
            }
        }
    }
    // stdin closed: keep printing until the executive goes away or we are killed.
    match dispatcher.join() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("testcpg: dispatch: {e}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}
