//! Logging set-up: `env_logger` once, at start, from the `logging { }` section.
//!
//! Every subsystem logs under its own target ([`SUBSYSTEMS`]: `totem`, `ipc`, `main`,
//! `sync`, `cpg`, ...). The level is `info`, or `debug` with `logging { debug: on }` or
//! `--debug`; `logger_subsys { subsys: TOTEM  debug: on }` raises that one target only;
//! `RUST_LOG`, when set, overrides all of it.
//!
//! Output goes where `to_stderr` and `to_file` say: standard error, `logfile`, both, or
//! nowhere. With both, every line goes to both through a [`Tee`]: a sink that cannot be
//! written to (a full disk, a closed standard error) does not stop the other one, which
//! gets one notice when the failure starts; the failed sink gets one when it works again.

use std::fs::OpenOptions;
use std::io::{self, Write};

use crate::config::Logging;

/// Every log target of the executive, which `logger_subsys { subsys }` may name (in any
/// case: `TOTEM` is `totem`).
pub const SUBSYSTEMS: &[&str] = &[
    "admin", "clm", "config", "cpg", "exec", "ipc", "main", "memb", "quorum", "sync", "totem",
];

pub fn init(cfg: &Logging, debug_flag: bool) -> Result<(), String> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let mut b = builder(cfg, debug_flag, rust_log.as_deref());
    let file = match (&cfg.logfile, cfg.to_file) {
        (Some(path), true) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(|f| (f, path.display().to_string()))
                .map_err(|e| format!("logging.logfile {}: {e}", path.display()))?,
        ),
        (None, true) => {
            return Err("logging.to_file is on but logging.logfile is not set".to_string())
        }
        (_, false) => None,
    };
    let target = match (cfg.to_stderr, file) {
        (true, None) => env_logger::Target::Stderr,
        (false, Some((file, _))) => env_logger::Target::Pipe(Box::new(file)),
        (true, Some((file, path))) => env_logger::Target::Pipe(Box::new(Tee::new(
            (io::stderr(), "standard error".to_string()),
            (file, path),
        ))),
        (false, None) => env_logger::Target::Pipe(Box::new(io::sink())),
    };
    b.target(target);
    b.try_init().map_err(|e| e.to_string())
}

/// The logger's levels and format, without its output: levels from `cfg` and the
/// `--debug` flag, then `rust_log` (`RUST_LOG`) over them.
fn builder(cfg: &Logging, debug_flag: bool, rust_log: Option<&str>) -> env_logger::Builder {
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
    if let Some(spec) = rust_log {
        b.parse_filters(spec);
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
    b
}

/// One output of a [`Tee`]: the writer, its name for notices, and how many writes it
/// has lost since it last worked.
struct Sink<W> {
    out: W,
    name: String,
    lost: u64,
}

impl<W: Write> Sink<W> {
    /// Writes `buf` whole, first telling the sink how many writes it lost if it failed
    /// before. `Ok(true)` if it failed before and works again.
    fn put(&mut self, buf: &[u8]) -> io::Result<bool> {
        let recovered = self.lost > 0;
        let result = if recovered {
            let notice = format!(
                "aisexec: {} log line(s) could not be written to {} before this one\n",
                self.lost, self.name
            );
            self.out
                .write_all(notice.as_bytes())
                .and_then(|()| self.out.write_all(buf))
        } else {
            self.out.write_all(buf)
        };
        match result {
            Ok(()) => {
                self.lost = 0;
                Ok(recovered)
            }
            Err(e) => {
                self.lost = self.lost.saturating_add(1);
                Err(e)
            }
        }
    }
}

/// A writer that writes everything to two writers (the logger hands it one whole line
/// per write). A write succeeds if either writer took it; when one fails, the other is
/// told once, in a line of its own, and keeps getting every line. The failed one is
/// tried again on each line and, once it works, told how many it lost.
pub struct Tee<A, B> {
    a: Sink<A>,
    b: Sink<B>,
}

impl<A: Write, B: Write> Tee<A, B> {
    /// A tee to `a` and `b`, each with the name notices give it.
    pub fn new((a, a_name): (A, String), (b, b_name): (B, String)) -> Tee<A, B> {
        Tee {
            a: Sink {
                out: a,
                name: a_name,
                lost: 0,
            },
            b: Sink {
                out: b,
                name: b_name,
                lost: 0,
            },
        }
    }

    /// The two writers, for tests.
    pub fn into_inner(self) -> (A, B) {
        (self.a.out, self.b.out)
    }
}

/// The notice `to` gets when `failed` starts failing.
fn failure_notice<W: Write>(to: &mut Sink<W>, failed: &str, e: &io::Error) {
    let notice = format!(
        "aisexec: cannot write the log to {failed} ({e}); writing it to {} only until that \
         works again\n",
        to.name
    );
    // Best effort: if this sink fails too, its own write below will count the loss.
    let _ = to.out.write_all(notice.as_bytes());
}

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (a_was_failing, b_was_failing) = (self.a.lost > 0, self.b.lost > 0);
        let ra = self.a.put(buf);
        let rb = self.b.put(buf);
        // The notice follows the line the other sink lost.
        match (&ra, &rb) {
            (Err(e), Ok(_)) if !a_was_failing => failure_notice(&mut self.b, &self.a.name, e),
            (Ok(_), Err(e)) if !b_was_failing => failure_notice(&mut self.a, &self.b.name, e),
            _ => {}
        }
        match (ra, rb) {
            (Err(e), Err(_)) => Err(e),
            _ => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let fa = self.a.out.flush();
        let fb = self.b.out.flush();
        match (fa, fb) {
            (Err(e), Err(_)) => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoggerSubsys;
    use log::{Level, Log, Metadata};

    /// A writer that fails while `fail` is set, and keeps what it was given otherwise.
    #[derive(Default)]
    struct Flaky {
        fail: bool,
        got: Vec<u8>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail {
                return Err(io::Error::other("disk full"));
            }
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            if self.fail {
                Err(io::Error::other("disk full"))
            } else {
                Ok(())
            }
        }
    }

    fn tee() -> Tee<Flaky, Flaky> {
        Tee::new(
            (Flaky::default(), "standard error".into()),
            (Flaky::default(), "/var/log/x.log".into()),
        )
    }

    fn text(w: &Flaky) -> &str {
        std::str::from_utf8(&w.got).expect("UTF-8")
    }

    #[test]
    fn tee_writes_every_line_to_both() {
        let mut t = tee();
        t.write_all(b"one\n").unwrap();
        t.write_all(b"two\n").unwrap();
        t.flush().unwrap();
        let (a, b) = t.into_inner();
        assert_eq!(text(&a), "one\ntwo\n");
        assert_eq!(text(&b), "one\ntwo\n");
    }

    #[test]
    fn a_failing_sink_does_not_stop_the_other() {
        for failing_first in [false, true] {
            let mut t = tee();
            t.write_all(b"one\n").unwrap();
            if failing_first {
                t.a.out.fail = true;
            } else {
                t.b.out.fail = true;
            }
            // One sink working is success, for the logger.
            t.write_all(b"two\n").unwrap();
            t.write_all(b"three\n").unwrap();
            t.flush().unwrap();
            if failing_first {
                t.a.out.fail = false;
            } else {
                t.b.out.fail = false;
            }
            t.write_all(b"four\n").unwrap();
            let (a, b) = t.into_inner();
            let (bad, good, bad_name) = if failing_first {
                (a, b, "standard error")
            } else {
                (b, a, "/var/log/x.log")
            };
            let good = text(&good);
            assert!(
                good.starts_with(&format!(
                    "one\ntwo\naisexec: cannot write the log to {bad_name} (disk full); "
                )),
                "{good}"
            );
            assert!(
                good.ends_with("only until that works again\nthree\nfour\n"),
                "{good}"
            );
            // Told once, not on every line.
            assert_eq!(good.matches("cannot write").count(), 1, "{good}");
            assert_eq!(
                text(&bad),
                format!(
                    "one\naisexec: 2 log line(s) could not be written to {bad_name} before \
                     this one\nfour\n"
                )
            );
        }
    }

    #[test]
    fn both_failing_is_an_error_and_both_recover() {
        let mut t = tee();
        t.a.out.fail = true;
        t.b.out.fail = true;
        assert!(t.write_all(b"lost\n").is_err());
        assert!(t.flush().is_err());
        t.a.out.fail = false;
        t.b.out.fail = false;
        t.write_all(b"back\n").unwrap();
        let (a, b) = t.into_inner();
        for w in [&a, &b] {
            let s = text(w);
            assert!(
                s.starts_with("aisexec: 1 log line(s) could not be written to "),
                "{s}"
            );
            assert!(s.ends_with(" before this one\nback\n"), "{s}");
        }
    }

    fn enabled(logger: &env_logger::Logger, target: &str, level: Level) -> bool {
        logger.enabled(&Metadata::builder().target(target).level(level).build())
    }

    fn logging(debug: bool, subsys: &[(&str, bool)]) -> Logging {
        Logging {
            debug,
            subsys: subsys
                .iter()
                .map(|(s, debug)| LoggerSubsys {
                    subsys: (*s).to_owned(),
                    debug: *debug,
                })
                .collect(),
            ..Logging::default()
        }
    }

    #[test]
    fn logger_subsys_debug_raises_that_target_only() {
        let cfg = logging(false, &[("CLM", true), ("TOTEM", false)]);
        let logger = builder(&cfg, false, None).build();
        assert!(enabled(&logger, "clm", Level::Debug));
        assert!(!enabled(&logger, "clm", Level::Trace));
        for other in SUBSYSTEMS.iter().filter(|s| **s != "clm") {
            assert!(!enabled(&logger, other, Level::Debug), "{other}");
            assert!(enabled(&logger, other, Level::Info), "{other}");
        }
    }

    #[test]
    fn debug_everywhere_from_the_section_or_the_flag() {
        let cfg = logging(true, &[]);
        let logger = builder(&cfg, false, None).build();
        let by_flag = builder(&logging(false, &[]), true, None).build();
        for target in SUBSYSTEMS {
            assert!(enabled(&logger, target, Level::Debug), "{target}");
            assert!(enabled(&by_flag, target, Level::Debug), "{target}");
        }
        let quiet = builder(&logging(false, &[]), false, None).build();
        assert!(SUBSYSTEMS
            .iter()
            .all(|t| !enabled(&quiet, t, Level::Debug) && enabled(&quiet, t, Level::Info)));
    }

    #[test]
    fn rust_log_overrides_the_section() {
        let cfg = logging(false, &[("CLM", true)]);
        let logger = builder(&cfg, false, Some("warn,totem=trace")).build();
        assert!(enabled(&logger, "totem", Level::Trace));
        assert!(!enabled(&logger, "ipc", Level::Info));
        assert!(enabled(&logger, "ipc", Level::Warn));
    }
}
