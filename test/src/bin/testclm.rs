//! `testclm [--once] [--node-get <id>] [--node-get-async <id>]`: the CLM client of the
//! test suite (like openais's testclm). It prints the local node and the current view,
//! then every new view until interrupted (`--once`: exits after the current view). One
//! line per fact, stable for scripts:
//!
//! ```text
//! LOCAL node=<id> name=<name> address=<addr> boot=<ns> initial_view=<v>
//! VIEW number=<v> members=<id,..>
//! NODE view=<v> id=<id> name=<name> address=<addr> change=<no_change|joined|left|reconfigured> member=<0|1> boot=<ns> initial_view=<v>
//! NODE_GET invocation=<i> error=<SaError> [id=<id> name=<name> address=<addr> member=<0|1>]
//! ```
//!
//! `--node-get <id>` and `--node-get-async <id>` ask for one node (synchronously, or
//! through the callback with invocation 1), print a `NODE_GET` line and exit; the error
//! is the SA Forum code's name (`Ok`, `InvalidParam`, ...). The executive is reached
//! through `$AIS_SOCKET` or the default socket path.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libais::clm::{
    Clm, ClmCallbacks, ClusterNode, ClusterNotificationBuffer, TrackError, TrackFlags,
    CLM_NODES_MAX, LOCAL_NODE_ID,
};
use libais::{DispatchFlags, SaError, SaVersion};

/// How long to keep retrying while the executive is not up or has no view yet.
const START_WAIT: Duration = Duration::from_secs(15);

enum Mode {
    Track { once: bool },
    NodeGet(u32),
    NodeGetAsync(u32),
}

fn usage() -> ExitCode {
    eprintln!("usage: testclm [--once] [--node-get <id>] [--node-get-async <id>]");
    ExitCode::from(2)
}

fn print_view(view: &ClusterNotificationBuffer) {
    let members: Vec<String> = view.member_ids().iter().map(|id| id.to_string()).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "VIEW number={} members={}",
        view.view_number,
        members.join(",")
    );
    for n in &view.notifications {
        let _ = writeln!(
            out,
            "NODE view={} id={} name={} address={} change={} member={} boot={} initial_view={}",
            view.view_number,
            n.node.node_id,
            n.node.node_name,
            n.node.address,
            n.change.name(),
            u8::from(n.node.member),
            n.node.boot_timestamp,
            n.node.initial_view_number
        );
    }
    let _ = out.flush();
}

fn node_get_line(invocation: u64, result: Result<&ClusterNode, SaError>) -> String {
    match result {
        Ok(n) => format!(
            "NODE_GET invocation={invocation} error=Ok id={} name={} address={} member={}",
            n.node_id,
            n.node_name,
            n.address,
            u8::from(n.member)
        ),
        Err(e) => format!("NODE_GET invocation={invocation} error={e:?}"),
    }
}

/// Retries `f` while it answers `TryAgain` (executive starting, no view yet).
fn retry<T, E: Copy + PartialEq>(
    try_again: E,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        match f() {
            Err(e) if e == try_again && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r,
        }
    }
}

fn main() -> ExitCode {
    let mut mode = Mode::Track { once: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let id = |v: Option<String>| v.and_then(|s| s.parse::<u32>().ok());
        mode = match a.as_str() {
            "--once" => Mode::Track { once: true },
            "--node-get" => match id(args.next()) {
                Some(n) => Mode::NodeGet(n),
                None => return usage(),
            },
            "--node-get-async" => match id(args.next()) {
                Some(n) => Mode::NodeGetAsync(n),
                None => return usage(),
            },
            _ => return usage(),
        };
    }

    let async_answer: Arc<Mutex<Option<String>>> = Arc::default();
    let callbacks = || {
        let answer = Arc::clone(&async_answer);
        ClmCallbacks::default()
            .on_track(|view, _members| print_view(view))
            .on_node_get(move |invocation, result| {
                if let Ok(mut a) = answer.lock() {
                    *a = Some(node_get_line(invocation, result));
                }
            })
    };
    let mut version = SaVersion::B_01_01;
    let clm = match retry(SaError::TryAgain, || {
        Clm::initialize(callbacks(), &mut version)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("testclm: cannot reach the executive: {e}");
            return ExitCode::FAILURE;
        }
    };

    match mode {
        Mode::NodeGet(id) => {
            let r = retry(SaError::TryAgain, || {
                clm.node_get(id, Duration::from_secs(5))
            });
            println!("{}", node_get_line(0, r.as_ref().map_err(|e| *e)));
            if r.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Mode::NodeGetAsync(id) => {
            if let Err(e) = clm.node_get_async(1, id) {
                eprintln!("testclm: node get async: {e}");
                return ExitCode::FAILURE;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Err(e) = clm.dispatch(DispatchFlags::All) {
                    eprintln!("testclm: dispatch: {e}");
                    return ExitCode::FAILURE;
                }
                if let Some(line) = async_answer.lock().ok().and_then(|mut a| a.take()) {
                    println!("{line}");
                    return ExitCode::SUCCESS;
                }
                if Instant::now() >= deadline {
                    eprintln!("testclm: no node get callback");
                    return ExitCode::FAILURE;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Mode::Track { once } => {
            let me = match clm.node_get(LOCAL_NODE_ID, Duration::from_secs(5)) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("testclm: local node: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!(
                "LOCAL node={} name={} address={} boot={} initial_view={}",
                me.node_id, me.node_name, me.address, me.boot_timestamp, me.initial_view_number
            );
            // The current view and tracking start in one request, so no view is missed
            // between them.
            let flags = if once {
                TrackFlags::CURRENT
            } else {
                TrackFlags::CURRENT | TrackFlags::CHANGES
            };
            let capacity = CLM_NODES_MAX as u32;
            match retry(TrackError::Sa(SaError::TryAgain), || {
                clm.track_into(flags, capacity)
            }) {
                Ok(view) => print_view(&view),
                Err(e) => {
                    eprintln!("testclm: track: {e}");
                    return ExitCode::FAILURE;
                }
            }
            if once {
                return ExitCode::SUCCESS;
            }
            match clm.dispatch(DispatchFlags::Blocking) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("testclm: dispatch: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
