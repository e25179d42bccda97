//! `aisctl`: the operator's view of one aisexec node.
//!
//! ```text
//! aisctl [--json] status     ring, this node, members, quorum, Totem/transport counters
//! aisctl [--json] members    ring and members only
//! ```
//!
//! It asks the executive's admin service through libais, at `$AIS_SOCKET` or the default
//! socket path (the same rule as every client). Exit status: 0 on success, 1 when the
//! executive cannot be reached or answers with an error, 2 for a bad command line.

mod json;
mod render;

use std::process::ExitCode;

use libais::admin::Admin;
use libais::SaError;

const USAGE: &str = "\
usage: aisctl [--json] <command>

commands:
  status     this node's ring, members (names, addresses, votes), quorum and the
             Totem and transport counters
  members    this node's ring and members

options:
  -j, --json      print JSON (schema in README.md) instead of text
  -h, --help      this text
  -V, --version   print the version

The executive is reached at $AIS_SOCKET, else the default runtime socket.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Query {
    Status,
    Members,
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run { query: Query, json: bool },
    Help,
    Version,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut json = false;
    let mut query = None;
    for a in args {
        match a.as_str() {
            "-j" | "--json" => json = true,
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "status" | "members" if query.is_some() => {
                return Err(format!("one command at a time ('{a}' after another)"))
            }
            "status" => query = Some(Query::Status),
            "members" => query = Some(Query::Members),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    let query = query.ok_or("a command is required: status or members")?;
    Ok(Command::Run { query, json })
}

fn run(query: Query, json: bool) -> Result<String, SaError> {
    let admin = Admin::initialize()?;
    let text = match (query, json) {
        (Query::Status, true) => render::status_json(&admin.status()?) + "\n",
        (Query::Status, false) => render::status_text(&admin.status()?),
        (Query::Members, true) => render::members_json(&admin.members()?) + "\n",
        (Query::Members, false) => render::members_text(&admin.members()?),
    };
    admin.finalize();
    Ok(text)
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("aisctl {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Run { query, json }) => match run(query, json) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                let hint = if e == SaError::TryAgain {
                    " (is aisexec running? set AIS_SOCKET to its socket)"
                } else {
                    ""
                };
                eprintln!("aisctl: {}: {e}{hint}", libais::socket_path().display());
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("aisctl: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Command, String> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn command_line() {
        assert_eq!(
            args(&["status"]),
            Ok(Command::Run {
                query: Query::Status,
                json: false
            })
        );
        assert_eq!(
            args(&["--json", "members"]),
            Ok(Command::Run {
                query: Query::Members,
                json: true
            })
        );
        assert_eq!(
            args(&["status", "-j"]),
            Ok(Command::Run {
                query: Query::Status,
                json: true
            })
        );
        assert_eq!(args(&["-h"]), Ok(Command::Help));
        assert_eq!(args(&["status", "--version"]), Ok(Command::Version));
        assert!(args(&[]).is_err());
        assert!(args(&["--json"]).is_err());
        assert!(args(&["status", "members"]).is_err());
        assert!(args(&["stats"]).is_err());
    }
}
