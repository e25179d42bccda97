//! The `logging { }` section, on a real daemon: a one-node ring on 127.0.0.1 with
//! `to_stderr` and `to_file` both on, `logger_subsys { subsys: TOTEM  debug: on }` and
//! a `logger_subsys` naming no subsystem of the executive.
//!
//! - Every line goes to both standard error and the log file, the same line in both.
//! - Debug lines are Totem's only (the runtime directory lock and sync, which log at
//!   debug level during start, stay quiet).
//! - The unknown subsystem is warned about, naming the file and line, in both outputs.
//!
//! The daemon's UDP port is one the kernel hands out (ephemeral range, not the process
//! tests' 20000..32000); its files are in a fresh directory under the temporary one.

use std::io::Read;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a one-node ring may take to form (token 300 ms, consensus 360 ms, a busy
/// machine).
const RING_WAIT: Duration = Duration::from_secs(20);

/// The daemon, killed and its files removed when dropped (also while a failing test
/// unwinds).
struct Daemon {
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
    dir: PathBuf,
}

impl Daemon {
    fn start(config: &Path, dir: PathBuf) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aisexec"))
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("AIS_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aisexec");
        // Read standard error as it comes, so that the daemon never blocks on a full pipe.
        let mut pipe = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        });
        Daemon {
            child,
            stderr: Some(stderr),
            dir,
        }
    }

    /// Stops the daemon and returns everything it wrote to standard error.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let out = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aisexec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// A UDP port free on 127.0.0.1 now.
fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    s.local_addr().expect("its address").port()
}

#[test]
fn both_outputs_get_every_line_and_logger_subsys_raises_one_target() {
    let dir = fresh_dir("logging");
    let logfile = dir.join("aisexec.log");
    let config = dir.join("aisexec.conf");
    let text = format!(
        "totem {{
    version: 2
    transport: udpu
    token: 300
    interface {{
        bindnetaddr: 127.0.0.1
        mcastport: {port}
        member {{
            memberaddr: 127.0.0.1
        }}
    }}
}}
logging {{
    to_stderr: on
    to_file: on
    logfile: {logfile}
    timestamp: on
    logger_subsys {{
        subsys: TOTEM
        debug: on
    }}
    logger_subsys {{
        subsys: NOSUCH
    }}
}}
aisexec {{
    runtime_dir: {runtime}
}}
",
        port = free_port(),
        logfile = logfile.display(),
        runtime = dir.join("run").display(),
    );
    std::fs::write(&config, text).expect("write the configuration");
    // The line of `subsys: NOSUCH`.
    let warning = format!("{}:23: logging.logger_subsys.subsys: ", config.display());

    let mut daemon = Daemon::start(&config, dir.clone());
    let deadline = Instant::now() + RING_WAIT;
    let mut file = String::new();
    while Instant::now() < deadline {
        file = std::fs::read_to_string(&logfile).unwrap_or_default();
        if file.contains("] configuration ") {
            break;
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("aisexec exited ({status}):\n{}", daemon.stop());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = daemon.stop();
    // Lines written after the last read of the file.
    let file_now = std::fs::read_to_string(&logfile).unwrap_or_default();
    assert!(
        file.contains("] configuration "),
        "no ring in {RING_WAIT:?}; log file:\n{file_now}\nstandard error:\n{stderr}"
    );

    // The same lines, in the same order; the daemon may have been killed between the
    // two writes of its last line.
    let a: Vec<&str> = stderr.lines().collect();
    let b: Vec<&str> = file_now.lines().collect();
    let n = a.len().min(b.len());
    assert!(
        a.len().abs_diff(b.len()) <= 1,
        "stderr:\n{stderr}\nfile:\n{file_now}"
    );
    assert_eq!(a[..n], b[..n], "stderr:\n{stderr}\nfile:\n{file_now}");
    for log in [&stderr, &file_now] {
        assert!(log.contains("] configuration "), "{log}");
        assert!(log.contains(&warning), "no warning {warning}...:\n{log}");
        assert!(log.contains("no subsystem NOSUCH"), "{log}");
    }

    // Debug from Totem, and from nothing else.
    assert!(stderr.contains("[DEBUG totem] "), "{stderr}");
    let others: Vec<&str> = a
        .iter()
        .filter(|l| l.contains("[DEBUG ") && !l.contains("[DEBUG totem] "))
        .copied()
        .collect();
    assert!(
        others.is_empty(),
        "debug lines of other targets: {others:#?}"
    );
}
