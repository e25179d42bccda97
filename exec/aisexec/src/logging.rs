//! Logging set-up: `env_logger` once, at start, from the `logging { }` section.
//!
//! Every subsystem logs under its own target (`totem`, `ipc`, `main`, `sync`, `cpg`, ...).
//! The level is `info`, or `debug` with `logging { debug: on }` or `--debug`;
//! `logger_subsys { subsys: TOTEM  debug: on }` raises one target only; `RUST_LOG`, when
//! set, overrides all of it. Output goes to stderr, or to `logfile` with `to_file: yes`
//! (both is not offered by env_logger: a file wins, and stderr gets a notice).

use std::fs::OpenOptions;
use std::io::Write;

use crate::config::Logging;

pub fn init(cfg: &Logging, debug_flag: bool) -> Result<(), String> {
    let mut b = env_logger::Builder::new();
    let base = if cfg.debug || debug_flag {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    b.filter_level(base);
    for s in &cfg.subsys {
        let level = if s.debug {
            log::LevelFilter::Debug
        } else {
            base
        };
        b.filter_module(&s.subsys.to_ascii_lowercase(), level);
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    let timestamp = cfg.timestamp;
    b.format(move |f, record| {
        if timestamp {
            write!(f, "{} ", f.timestamp_millis())?;
        }
        writeln!(
            f,
            "[{:<5} {}] {}",
            record.level(),
            record.target(),
            record.args()
        )
    });
    if cfg.to_file {
        let path = cfg
            .logfile
            .as_ref()
            .ok_or_else(|| "logging.to_file is on but logging.logfile is not set".to_string())?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if cfg.to_stderr {
            eprintln!("aisexec: logging to {}", path.display());
        }
        b.target(env_logger::Target::Pipe(Box::new(file)));
    } else {
        b.target(env_logger::Target::Stderr);
    }
    b.try_init().map_err(|e| e.to_string())
}
