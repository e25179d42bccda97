//! `aisexec`: the cluster executive. Thin: everything is in the library (`app::run`).

use std::process::ExitCode;

use aisexec::app::{self, Command};

fn main() -> ExitCode {
    match app::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(opts)) => match app::run(opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aisexec: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Help) => {
            println!("{}", app::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("aisexec {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aisexec: {e}\n{}", app::USAGE);
            ExitCode::from(2)
        }
    }
}
