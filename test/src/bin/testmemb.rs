//! `testmemb`: subscribes to the membership event stream of the local executive and
//! prints where it stands, then every event, until the stream ends (eviction) or it is
//! interrupted. One line each, for scripts:
//!
//! `SNAPSHOT node=<id> sequence=<n> primary=<0|1> members=<id>@<born_on>,..`
//! `EVENT kind=<NEW_MEMBERSHIP|NOT_PRIMARY|PRIMARY_RESTORED|EVICTED> sequence=<n>
//!  members=<id>@<born_on>,.. joined=.. left=..`
//!
//! It reaches the executive through `$AIS_SOCKET` or the default path.

use std::io::Write;
use std::process::ExitCode;

use libais::memb::{Member, MembershipEvents};
use libais::DispatchFlags;

fn list(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}@{}", m.node_id, m.born_on))
        .collect::<Vec<_>>()
        .join(",")
}

fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        eprintln!("usage: testmemb   (prints the membership event stream of the local executive)");
        return ExitCode::from(2);
    }
    let events = match MembershipEvents::start(|ev| {
        println!(
            "EVENT kind={} sequence={} members={} joined={} left={}",
            ev.kind.name(),
            ev.sequence,
            list(&ev.members),
            list(&ev.joined),
            list(&ev.left)
        );
        let _ = std::io::stdout().flush();
    }) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("testmemb: cannot subscribe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let s = events.snapshot();
    println!(
        "SNAPSHOT node={} sequence={} primary={} members={}",
        s.local_node_id,
        s.sequence,
        u8::from(s.primary),
        list(&s.members)
    );
    let _ = std::io::stdout().flush();
    match events.dispatch(DispatchFlags::Blocking) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testmemb: dispatch: {e}");
            ExitCode::FAILURE
        }
    }
}
