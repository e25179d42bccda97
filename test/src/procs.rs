//! Real clusters of `aisexec` processes on one machine, for tests that need the daemon,
//! its sockets, its signals and its clients as they run in production.
//!
//! [`ProcCluster`] starts N executives on 127.0.0.1 .. 127.0.0.N (`transport: udpu`, one
//! `member` per node, `nodeid: i` for the node on 127.0.0.i), on a UDP port of its own so
//! that clusters of tests running in parallel never hear each other, each with its own
//! runtime directory (socket, pid lock, persisted ring sequence) and its stderr in a log
//! file, all under one fresh temporary directory. It finds out what the daemons do only
//! the way an operator would: by reading their logs (the `configuration <ring>: members
//! {..} joined {..}` line of every regular configuration) and by running the client
//! programs ([`Client`], with `$AIS_SOCKET` pointing at one node).
//!
//! Every wait is bounded. Nothing outlives the harness: dropping a [`ProcCluster`] or a
//! [`Client`] (also while a failing test unwinds) kills its processes, and the cluster then
//! removes its directory after printing the tail of every daemon's log if the test is
//! failing (set `AIS_PROCS_KEEP=1` to keep the directory, `AIS_PROCS_DEBUG=1` to run the
//! daemons with `--debug`). Every process is also started
//! with the parent-death signal set to SIGKILL, so even a test binary killed outright
//! takes its daemons with it (and the next run removes the directories it left).
//!
//! Beyond clusters, the same tools for tests that start daemons some other way: a
//! [`Client`] from any prepared [`Command`] (the daemon on its embedded configuration),
//! [`run_as`] an unprivileged user when the tests run as root, a [`MachineLock`] for
//! something fixed the whole machine shares (the embedded configuration's port),
//! [`free_port`] and [`fresh_dir`], and [`log_timestamp`] to time events by the daemons'
//! own clocks rather than the test's.
//!
//! The binaries are taken from the directory the test executable was built into
//! (`target/<profile>`), so the workspace's binaries must be built first:
//! `cargo test --workspace --release` or `cargo build --release --workspace`
//! (`AIS_BIN_DIR` overrides the directory).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::netns::Topology;

/// Ports clusters are given, below Linux's ephemeral range (32768 and up) so that no
/// client socket the kernel numbers takes one.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;
/// Longest path a unix socket address holds (`sun_path`, less the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How often waits look again.
const POLL: Duration = Duration::from_millis(10);
/// Lines of each log [`ProcCluster::log_tails`] shows when a test fails.
pub const TAIL_LINES: usize = 40;
/// Most output lines a [`Client`] keeps; later ones are counted, not stored.
const MAX_CLIENT_LINES: usize = 500_000;

/// Totem timers a cluster runs with, written into every node's `totem { }` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    pub token_ms: u32,
    pub token_coefficient_ms: u32,
    /// `None`: corosync's default, 1.2 × the effective token.
    pub consensus_ms: Option<u32>,
    pub join_ms: u32,
}

impl Timing {
    /// For fast tests: a 1000 ms token with no per-node coefficient, so a crashed node is
    /// noticed after 1 s + consensus (1.2 s), whatever the cluster's size.
    pub fn fast() -> Timing {
        Timing {
            token_ms: 1000,
            token_coefficient_ms: 0,
            consensus_ms: None,
            join_ms: 50,
        }
    }

    /// corosync's defaults: token 3000 ms, token_coefficient 650 ms, consensus 1.2 ×
    /// token, join 50 ms.
    pub fn corosync_defaults() -> Timing {
        Timing {
            token_ms: 3000,
            token_coefficient_ms: 650,
            consensus_ms: None,
            join_ms: 50,
        }
    }

    /// The token timeout a ring of `members` nodes runs with (corosync.conf(5)).
    pub fn effective_token(&self, members: usize) -> Duration {
        let extra = members.saturating_sub(2) as u64 * u64::from(self.token_coefficient_ms);
        Duration::from_millis(u64::from(self.token_ms) + extra)
    }

    /// The consensus timeout a ring of `members` nodes runs with.
    pub fn effective_consensus(&self, members: usize) -> Duration {
        match self.consensus_ms {
            Some(ms) => Duration::from_millis(u64::from(ms)),
            None => self.effective_token(members).mul_f64(1.2),
        }
    }
}

/// What [`ProcCluster::launch`] starts.
#[derive(Clone, Debug)]
pub struct Options {
    /// Short name for the temporary directory and `cluster_name`.
    pub name: String,
    pub nodes: usize,
    pub timing: Timing,
    /// The UDP port, or `None` to pick a free one.
    pub port: Option<u16>,
    /// `secauth: on` with one key per group: nodes with the same number share a key made
    /// by `ais-keygen`; `None` runs without secauth.
    pub key_groups: Option<Vec<u32>>,
    /// Run the daemons with `--debug` (default: whether `AIS_PROCS_DEBUG` is set).
    pub debug: bool,
    /// How long [`ProcCluster::start`] waits for the first ring of all nodes.
    pub ring_timeout: Duration,
    /// Where the nodes run: on loopback addresses (udpu) or in network namespaces
    /// (multicast).
    pub placement: Placement,
    /// Write a `nodelist { }` naming node `i` `node<i>` (nodeid `i`, ring0_addr its
    /// address, one vote each); default off.
    pub nodelist: bool,
    /// Write `quorum { expected_votes: n }`; default none.
    pub expected_votes: Option<u32>,
    /// Write one `uidgid { uid: n }` per entry: users besides root and the daemon's own
    /// allowed to connect (the runtime directory and socket are then opened to others).
    pub allow_uids: Vec<u32>,
}

/// Where a [`ProcCluster`]'s nodes live and how their frames travel.
#[derive(Clone, Debug, Default)]
pub enum Placement {
    /// 127.0.0.1..N in this network namespace, `transport: udpu`.
    #[default]
    Loopback,
    /// Node `i` in namespace `i` of the topology at its address there, `transport: udp`
    /// (multicast to a group of the topology's own), so links can be cut and made lossy.
    Namespaces(Arc<Topology>),
}

impl Options {
    pub fn new(name: &str, nodes: usize) -> Options {
        Options {
            name: name.to_string(),
            nodes,
            timing: Timing::fast(),
            port: None,
            key_groups: None,
            debug: std::env::var_os("AIS_PROCS_DEBUG").is_some_and(|v| !v.is_empty() && v != "0"),
            ring_timeout: Duration::from_secs(10),
            placement: Placement::Loopback,
            nodelist: false,
            expected_votes: None,
            allow_uids: Vec::new(),
        }
    }

    /// Node `j`'s address where it runs.
    fn addr(&self, j: usize) -> String {
        match &self.placement {
            Placement::Loopback => node_addr(j).to_string(),
            Placement::Namespaces(t) => t.addr(j as u32),
        }
    }

    /// Runs node `i` in namespace `i` of `topology`, with multicast.
    pub fn namespaces(mut self, topology: Arc<Topology>) -> Options {
        assert!(
            topology.nodes() as usize >= self.nodes,
            "the topology has fewer hosts than the cluster has nodes"
        );
        self.placement = Placement::Namespaces(topology);
        self
    }

    pub fn nodelist(mut self, on: bool) -> Options {
        self.nodelist = on;
        self
    }

    pub fn expected_votes(mut self, votes: u32) -> Options {
        self.expected_votes = Some(votes);
        self
    }

    pub fn allow_uid(mut self, uid: u32) -> Options {
        self.allow_uids.push(uid);
        self
    }

    pub fn timing(mut self, timing: Timing) -> Options {
        self.timing = timing;
        self
    }

    pub fn port(mut self, port: u16) -> Options {
        self.port = Some(port);
        self
    }

    pub fn key_groups(mut self, groups: &[u32]) -> Options {
        self.key_groups = Some(groups.to_vec());
        self
    }

    pub fn debug(mut self, on: bool) -> Options {
        self.debug = on;
        self
    }
}

/// A regular configuration as a daemon logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configuration {
    /// The ring id's representative and sequence number (`<rep>.<seq>` in the log).
    pub rep: u32,
    pub seq: u64,
    pub members: Vec<u32>,
    pub joined: Vec<u32>,
}

impl Configuration {
    /// Parses `... configuration <rep>.<seq>: members {a,b} joined {c}` (the regular
    /// configuration line; transitional ones say `transitional configuration`).
    pub fn parse(line: &str) -> Option<Configuration> {
        let rest = &line[line.find("] configuration ")? + "] configuration ".len()..];
        let (ring, rest) = rest.split_once(": members ")?;
        let (rep, seq) = ring.split_once('.')?;
        let (members, rest) = rest.split_once(" joined ")?;
        Some(Configuration {
            rep: rep.parse().ok()?,
            seq: seq.parse().ok()?,
            members: parse_set(members)?,
            joined: parse_set(rest.trim())?,
        })
    }

    pub fn ring(&self) -> String {
        format!("{}.{}", self.rep, self.seq)
    }
}

fn parse_set(s: &str) -> Option<Vec<u32>> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|n| n.trim().parse().ok()).collect()
}

/// Every regular configuration in a log, in order.
pub fn configurations_in(log: &str) -> Vec<Configuration> {
    log.lines().filter_map(Configuration::parse).collect()
}

/// The directory holding the workspace's binaries: `$AIS_BIN_DIR`, else the parent of the
/// directory the running test executable is in (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIS_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable's directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The path of one of the workspace's binaries; panics, saying what to build, if it is
/// not there.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: build the workspace's binaries first (`cargo build --release --workspace`, \
         or run the tests with `cargo test --workspace --release`); AIS_BIN_DIR overrides the directory",
        path.display()
    );
    path
}

/// Process control std does not offer: sending a signal, and dying with the parent.
mod sys {
    use std::io;
    use std::os::raw::{c_int, c_ulong};
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    pub const SIGINT: c_int = 2;
    pub const SIGKILL: c_int = 9;
    pub const SIGTERM: c_int = 15;
    const PR_SET_PDEATHSIG: c_int = 1;
    const ESRCH: i32 = 3;
    const LOCK_EX: c_int = 2;
    const LOCK_NB: c_int = 4;

    extern "C" {
        fn kill(pid: c_int, sig: c_int) -> c_int;
        fn prctl(option: c_int, ...) -> c_int;
        fn getppid() -> c_int;
        fn geteuid() -> u32;
        fn getegid() -> u32;
        fn setgroups(size: usize, list: *const u32) -> c_int;
        fn setgid(gid: u32) -> c_int;
        fn setuid(uid: u32) -> c_int;
        fn flock(fd: c_int, operation: c_int) -> c_int;
    }

    /// The effective user and group ids of this process.
    pub fn effective_ids() -> (u32, u32) {
        // SAFETY: geteuid(2) and getegid(2) take nothing and cannot fail.
        unsafe { (geteuid(), getegid()) }
    }

    /// Makes the child drop its supplementary groups and take `uid` and `gid` before it
    /// execs (it must be started by root for that to succeed). Call it before
    /// [`die_with_parent`]: changing credentials clears the parent-death signal.
    pub fn switch_user(cmd: &mut Command, uid: u32, gid: u32) {
        // SAFETY: between fork and exec the closure calls only setgroups(2), setgid(2)
        // and setuid(2), which are async-signal-safe system calls, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if setgroups(0, std::ptr::null()) != 0 || setgid(gid) != 0 || setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Tries once to take an exclusive `flock` on `fd`; `Ok(false)` if another holds it.
    pub fn try_lock_exclusive(fd: c_int) -> io::Result<bool> {
        // SAFETY: flock(2) takes a descriptor and a flag and touches no memory of ours.
        if unsafe { flock(fd, LOCK_EX | LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(e)
        }
    }

    /// Sends `sig` to process `pid`.
    pub fn signal(pid: u32, sig: c_int) -> io::Result<()> {
        let pid = c_int::try_from(pid).map_err(|_| io::Error::from_raw_os_error(ESRCH))?;
        // SAFETY: kill(2) takes two integers and touches no memory of ours.
        if unsafe { kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Makes the child get SIGKILL when the thread that spawns it ends (Linux's
    /// parent-death signal), so that no daemon outlives a test binary that is killed
    /// before its destructors run. The harness spawns from the thread that owns the
    /// cluster, which ends only after the cluster is dropped.
    pub fn die_with_parent(cmd: &mut Command) {
        let parent = std::process::id() as c_int;
        // SAFETY: between fork and exec the closure calls only prctl(2) and getppid(2),
        // which are async-signal-safe system calls, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl: then nobody would kill us.
                if getppid() != parent {
                    return Err(io::Error::from_raw_os_error(ESRCH));
                }
                Ok(())
            });
        }
    }
}

/// The signals that ask a process to stop, as an operator sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM, what service managers send.
    Term,
    /// SIGINT, what Ctrl-C sends.
    Int,
}

impl Signal {
    /// The signal's number, as the daemon logs it (`signal 15: ...`).
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => sys::SIGTERM,
            Signal::Int => sys::SIGINT,
        }
    }

    fn send(self, pid: u32) -> io::Result<()> {
        sys::signal(pid, self.number())
    }
}

/// A user and group that are not root to run processes as: this process's own when it is
/// not root, else `nobody` (from /etc/passwd, 65534:65534 if it is not listed). Lets a
/// test show that something needs no root even when the test itself runs as root.
pub fn unprivileged_ids() -> (u32, u32) {
    let (uid, gid) = sys::effective_ids();
    if uid != 0 {
        return (uid, gid);
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4 && f[0] == "nobody" {
                Some((f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
        .unwrap_or((65_534, 65_534))
}

/// Whether this process runs as root (a test may then switch a child to
/// [`unprivileged_ids`] with [`run_as`]).
pub fn is_root() -> bool {
    sys::effective_ids().0 == 0
}

/// Makes `cmd` run as `uid:gid` with no supplementary groups; a no-op when those are
/// already this process's ids. Only root can switch to another user.
pub fn run_as(cmd: &mut Command, uid: u32, gid: u32) {
    if sys::effective_ids() != (uid, gid) {
        sys::switch_user(cmd, uid, gid);
    }
}

/// An exclusive lock on one named resource of the whole machine (an `flock` on
/// `<tmp>/ais-test-<name>.lock`), for tests that must use something fixed, like the
/// embedded configuration's port, and would collide with the same test of another test
/// run (another worktree, another `cargo test`) on the same machine. Released on drop,
/// and by the kernel if the process dies.
pub struct MachineLock {
    _file: fs::File,
}

impl MachineLock {
    /// Waits up to `timeout` for the lock.
    pub fn acquire(name: &str, timeout: Duration) -> Result<MachineLock, String> {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("ais-test-{name}.lock"));
        // Read-only when it exists (flock needs no write access), so a lock file another
        // user created serves too.
        let file = match fs::File::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path),
            other => other,
        }
        .map_err(|e| format!("{}: {e}", path.display()))?;
        let deadline = Instant::now() + timeout;
        loop {
            match sys::try_lock_exclusive(file.as_raw_fd()) {
                Ok(true) => return Ok(MachineLock { _file: file }),
                Ok(false) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(false) => {
                    return Err(format!(
                        "{} still held by another test after {timeout:?}",
                        path.display()
                    ))
                }
                Err(e) => return Err(format!("flock {}: {e}", path.display())),
            }
        }
    }
}

/// When the daemon wrote a log line: its leading timestamp (`logging { timestamp: on }`,
/// RFC 3339 in UTC, e.g. `2026-11-22T05:26:00.272Z`) as time since the Unix epoch.
/// Daemons on one machine share its clock, so the difference of two nodes' lines is how
/// long it took from one event to the other, free of the delays of the test's own
/// threads and the client programs' pipes.
pub fn log_timestamp(line: &str) -> Option<Duration> {
    let word = line.split_whitespace().next()?;
    let (date, time) = word.split_once('T')?;
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let mut ymd = date.splitn(3, '-');
    let year: i64 = ymd.next()?.parse().ok()?;
    let month: u32 = ymd.next()?.parse().ok()?;
    let day: u32 = ymd.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':');
    let hour: u64 = hms.next()?.parse().ok()?;
    let minute: u64 = hms.next()?.parse().ok()?;
    let second: u64 = hms.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(Duration::new(
        days * 86_400 + hour * 3600 + minute * 60 + second,
        nanos,
    ))
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One daemon of the cluster.
struct Node {
    id: u32,
    addr: Ipv4Addr,
    config: PathBuf,
    runtime_dir: PathBuf,
    /// The log of the running (or last) incarnation.
    log: PathBuf,
    /// Logs of every incarnation, oldest first.
    logs: Vec<PathBuf>,
    child: Option<Child>,
}

/// N `aisexec` processes on 127.0.0.1..N; see the module documentation.
pub struct ProcCluster {
    dir: PathBuf,
    port: u16,
    timing: Timing,
    debug: bool,
    nodes: Vec<Node>,
    /// Kept to the end: the namespaces must outlive the daemons in them.
    placement: Placement,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// A UDP port that every address 127.0.0.1..=n can bind now. Ports are handed out from a
/// process-wide counter starting at a point drawn from the pid, so clusters of one test
/// binary never share one and those of two binaries rarely try to. Public for tests that
/// start daemons some other way (test/cluster.sh) and need a port no other test takes.
pub fn free_port(n: usize) -> io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let start = (std::process::id().wrapping_mul(7919)) % span;
    let _ = NEXT.compare_exchange(0, start + 1, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..500 {
        let k = NEXT.fetch_add(1, Ordering::SeqCst) - 1;
        let port = PORT_RANGE.start + (k % span) as u16;
        let all_free = (1..=n).all(|i| {
            UdpSocket::bind(SocketAddrV4::new(node_addr(i), port)).is_ok()
                && UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok()
        });
        if all_free {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free UDP port found for the cluster",
    ))
}

/// The address of node `i` (1-based).
pub fn node_addr(i: usize) -> Ipv4Addr {
    assert!((1..=254).contains(&i), "node {i}: nodes are 1..=254");
    Ipv4Addr::new(127, 0, 0, i as u8)
}

/// Cluster directories are `aisp-<name>-<pid>-<n>` in the temporary directory.
const DIR_PREFIX: &str = "aisp-";
/// Marks a directory kept on purpose (`AIS_PROCS_KEEP`): the sweep leaves it alone.
const KEPT: &str = "kept";

/// Removes the directories of clusters whose test process is gone (it was killed before
/// its destructors ran; its daemons died with it).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let mut parts = name.rsplit('-');
        let (Some(n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        if n.parse::<u32>().is_err() {
            continue;
        }
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && !e.path().join(KEPT).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh, empty `aisp-<name>-<pid>-<n>` directory in the temporary directory, swept
/// like the clusters' own once this process is gone; for tests that start daemons some
/// other way and want the same naming and clean-up.
pub fn fresh_dir(name: &str) -> io::Result<PathBuf> {
    unique_dir(name)
}

fn unique_dir(name: &str) -> io::Result<PathBuf> {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(remove_stale_dirs);
    let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{name}-{}-{n}", std::process::id()));
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Node `i`'s openais.conf.
fn config_text(
    opts: &Options,
    i: usize,
    port: u16,
    runtime_dir: &Path,
    key: Option<&Path>,
) -> String {
    let t = &opts.timing;
    let consensus = t
        .consensus_ms
        .map(|c| format!("\n    consensus: {c}"))
        .unwrap_or_default();
    let secauth = match key {
        Some(k) => format!("on\n    keyfile: {}", k.display()),
        None => "off".to_string(),
    };
    let (transport, addr, extra) = match &opts.placement {
        Placement::Loopback => {
            let members: String = (1..=opts.nodes)
                .map(|j| {
                    format!(
                        "\n        member {{\n            memberaddr: {}\n        }}",
                        node_addr(j)
                    )
                })
                .collect();
            ("udpu", opts.addr(i), members)
        }
        Placement::Namespaces(topo) => (
            "udp",
            opts.addr(i),
            format!("\n        mcastaddr: {}", topo.mcast_group()),
        ),
    };
    let nodelist = if opts.nodelist {
        let nodes: String = (1..=opts.nodes)
            .map(|j| {
                format!(
                    "    node {{\n        nodeid: {j}\n        name: node{j}\n        \
                     ring0_addr: {}\n    }}\n",
                    opts.addr(j)
                )
            })
            .collect();
        format!("nodelist {{\n{nodes}}}\n")
    } else {
        String::new()
    };
    let quorum = opts
        .expected_votes
        .map(|v| format!("quorum {{\n    expected_votes: {v}\n}}\n"))
        .unwrap_or_default();
    let uidgid: String = opts
        .allow_uids
        .iter()
        .map(|u| format!("uidgid {{\n    uid: {u}\n}}\n"))
        .collect();
    format!(
        "totem {{
    version: 2
    nodeid: {i}
    transport: {transport}
    cluster_name: {name}
    token: {token}
    token_coefficient: {coefficient}{consensus}
    join: {join}
    secauth: {secauth}
    interface {{
        ringnumber: 0
        bindnetaddr: {addr}
        mcastport: {port}{extra}
    }}
}}
logging {{
    to_stderr: on
    timestamp: on
}}
aisexec {{
    runtime_dir: {runtime_dir}
}}
{nodelist}{quorum}{uidgid}",
        name = opts.name,
        token = t.token_ms,
        coefficient = t.token_coefficient_ms,
        join = t.join_ms,
        runtime_dir = runtime_dir.display(),
    )
}

impl ProcCluster {
    /// Launches the cluster and waits (up to `opts.ring_timeout`) for one ring of all its
    /// nodes; panics with the daemons' log tails if it does not form.
    pub fn start(opts: Options) -> ProcCluster {
        let timeout = opts.ring_timeout;
        let mut c = ProcCluster::launch(opts);
        let all: Vec<usize> = (1..=c.len()).collect();
        if let Err(e) = c.wait_for_ring(&all, timeout) {
            panic!("{e}");
        }
        c
    }

    /// Writes the configurations (and keys) and starts every daemon, without waiting for
    /// a ring.
    pub fn launch(opts: Options) -> ProcCluster {
        assert!(opts.nodes >= 1, "a cluster needs a node");
        if let Some(g) = &opts.key_groups {
            assert_eq!(g.len(), opts.nodes, "one key group per node");
        }
        let aisexec = binary("aisexec");
        let dir = unique_dir(&opts.name).expect("create the cluster's temporary directory");
        let port = match (opts.port, &opts.placement) {
            (Some(p), _) => p,
            // Each namespace has its ports to itself.
            (None, Placement::Namespaces(_)) => 5405,
            (None, Placement::Loopback) => free_port(opts.nodes).expect("a free UDP port"),
        };
        let mut c = ProcCluster {
            dir: dir.clone(),
            port,
            timing: opts.timing.clone(),
            debug: opts.debug,
            nodes: Vec::new(),
            placement: opts.placement.clone(),
        };
        let mut keys: BTreeMap<u32, PathBuf> = BTreeMap::new();
        if let Some(groups) = &opts.key_groups {
            let keygen = binary("ais-keygen");
            for &g in groups {
                if keys.contains_key(&g) {
                    continue;
                }
                let path = dir.join(format!("key{g}"));
                let out = Command::new(&keygen)
                    .arg("-k")
                    .arg(&path)
                    .output()
                    .expect("run ais-keygen");
                assert!(
                    out.status.success(),
                    "ais-keygen -k {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                keys.insert(g, path);
            }
        }
        for i in 1..=opts.nodes {
            let runtime_dir = dir.join(format!("n{i}"));
            let socket = runtime_dir.join("aisexec.sock");
            assert!(
                socket.as_os_str().len() <= MAX_SOCKET_PATH,
                "{}: too long for a unix socket; set TMPDIR to a shorter directory",
                socket.display()
            );
            let key = opts.key_groups.as_ref().map(|g| keys[&g[i - 1]].as_path());
            let config = dir.join(format!("n{i}.conf"));
            fs::write(&config, config_text(&opts, i, port, &runtime_dir, key))
                .expect("write a node's configuration");
            c.nodes.push(Node {
                id: i as u32,
                addr: match &opts.placement {
                    Placement::Loopback => node_addr(i),
                    Placement::Namespaces(t) => t
                        .addr(i as u32)
                        .parse()
                        .expect("a topology address is an IPv4 address"),
                },
                config,
                runtime_dir,
                log: PathBuf::new(),
                logs: Vec::new(),
                child: None,
            });
        }
        for i in 1..=opts.nodes {
            c.spawn_daemon(i, &aisexec);
        }
        c
    }

    fn spawn_daemon(&mut self, i: usize, aisexec: &Path) {
        let debug = self.debug;
        let n = &mut self.nodes[i - 1];
        assert!(n.child.is_none(), "node {i} is already running");
        let log = if n.logs.is_empty() {
            self.dir.join(format!("n{i}.log"))
        } else {
            self.dir.join(format!("n{i}.{}.log", n.logs.len()))
        };
        let file = fs::File::create(&log).expect("create a daemon's log file");
        let mut cmd = match &self.placement {
            Placement::Loopback => Command::new(aisexec),
            Placement::Namespaces(t) => {
                // `ip netns exec` enters the namespace and execs the daemon: the child's
                // pid is the daemon's.
                let prefix = t.prefix(i as u32);
                let mut c = Command::new(&prefix[0]);
                c.args(&prefix[1..]).arg(aisexec);
                c
            }
        };
        cmd.arg("--config").arg(&n.config);
        if debug {
            cmd.arg("--debug");
        }
        cmd.env_remove("RUST_LOG")
            .env_remove("AIS_SOCKET")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone a log file handle"))
            .stderr(file);
        sys::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", aisexec.display()));
        n.log = log.clone();
        n.logs.push(log);
        n.child = Some(child);
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Totem UDP port every node listens on (at its own address).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    fn node(&self, i: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "no node {i} in a cluster of {}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "no node {i} in a cluster of {}",
            self.nodes.len()
        );
        &mut self.nodes[i - 1]
    }

    /// Node `i`'s id (its `nodeid`, equal to `i`).
    pub fn nodeid(&self, i: usize) -> u32 {
        self.node(i).id
    }

    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.node(i).addr
    }

    /// Where node `i`'s Totem socket listens.
    pub fn udp_addr(&self, i: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.node(i).addr, self.port)
    }

    /// Node `i`'s IPC socket: what a client's `$AIS_SOCKET` is set to.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.node(i).runtime_dir.join("aisexec.sock")
    }

    pub fn runtime_dir(&self, i: usize) -> &Path {
        &self.node(i).runtime_dir
    }

    /// The ring sequence number node `i` persisted (its runtime directory's `ringseq`).
    pub fn persisted_ring_seq(&self, i: usize) -> Option<u64> {
        fs::read_to_string(self.node(i).runtime_dir.join("ringseq"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of node `i`'s daemon, if it was started and not yet reaped.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.node(i).child.as_ref().map(Child::id)
    }

    /// Whether node `i`'s daemon is running (reaps it if it exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        let n = self.node_mut(i);
        match n.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => false,
            None => false,
        }
    }

    /// Node `i`'s resident memory (VmRSS) in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        rss_kib(self.pid(i)?)
    }

    /// The log of node `i`'s current (or last) incarnation.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.node(i).log).unwrap_or_default()
    }

    /// The regular configurations node `i`'s current (or last) incarnation installed.
    pub fn configurations(&self, i: usize) -> Vec<Configuration> {
        configurations_in(&self.log(i))
    }

    /// Node `i`'s latest regular configuration.
    pub fn configuration(&self, i: usize) -> Option<Configuration> {
        self.configurations(i).pop()
    }

    /// The first line of node `i`'s current (or last) log from line `from` on that
    /// satisfies `pred`, waiting up to `timeout` for it to be written; the error carries
    /// the log tails.
    pub fn wait_log_line(
        &self,
        i: usize,
        from: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log(i).lines().skip(from).find(|l| pred(l)) {
                return Ok(l.to_string());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {i} logged no such line within {timeout:?}\n{}",
                    self.log_tails(TAIL_LINES)
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// How many lines node `i`'s current log has (an index for
    /// [`wait_log_line`](Self::wait_log_line)).
    pub fn log_len(&self, i: usize) -> usize {
        self.log(i).lines().count()
    }

    /// Waits until each of `nodes` has installed, as its latest regular configuration,
    /// one and the same ring of exactly those nodes; returns it. Fails early, with the
    /// logs, if one of them exits.
    pub fn wait_for_ring(
        &mut self,
        nodes: &[usize],
        timeout: Duration,
    ) -> Result<Configuration, String> {
        let mut want: Vec<u32> = nodes.iter().map(|&i| self.nodeid(i)).collect();
        want.sort_unstable();
        let deadline = Instant::now() + timeout;
        loop {
            let latest: Vec<Option<Configuration>> =
                nodes.iter().map(|&i| self.configuration(i)).collect();
            if let Some(Some(first)) = latest.first() {
                let all_same = latest.iter().all(|c| {
                    c.as_ref().is_some_and(|c| {
                        c.members == want && c.rep == first.rep && c.seq == first.seq
                    })
                });
                if all_same {
                    return Ok(first.clone());
                }
            }
            for &i in nodes {
                if !self.is_running(i) {
                    return Err(format!(
                        "node {i} exited while waiting for a ring of {want:?}\n{}",
                        self.log_tails(TAIL_LINES)
                    ));
                }
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = nodes
                    .iter()
                    .zip(&latest)
                    .map(|(i, c)| match c {
                        Some(c) => format!("node {i}: {} {:?}", c.ring(), c.members),
                        None => format!("node {i}: none"),
                    })
                    .collect();
                return Err(format!(
                    "no ring of {want:?} within {timeout:?} (latest: {})\n{}",
                    seen.join("; "),
                    self.log_tails(TAIL_LINES)
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills node `i`'s daemon with SIGKILL (a crash) and reaps it; returns when it is
    /// gone.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.node_mut(i).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to node `i`'s daemon and waits up to `timeout` for it to exit; a
    /// daemon still running then is killed and reported as an error.
    pub fn sigterm(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, String> {
        self.stop(i, Signal::Term, timeout)
    }

    /// Sends `sig` to node `i`'s daemon and waits up to `timeout` for it to exit; a
    /// daemon still running then is killed and reported as an error.
    pub fn stop(&mut self, i: usize, sig: Signal, timeout: Duration) -> Result<ExitStatus, String> {
        let Some(mut child) = self.node_mut(i).child.take() else {
            return Err(format!("node {i} is not running"));
        };
        sig.send(child.id())
            .map_err(|e| format!("kill -{} node {i}: {e}", sig.number()))?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "node {i} did not exit within {timeout:?} of {sig:?}"
                    ));
                }
            }
        }
    }

    /// Starts node `i` again (after [`kill9`](Self::kill9) or [`sigterm`](Self::sigterm))
    /// with the same configuration and runtime directory, logging to a new file.
    pub fn restart(&mut self, i: usize) {
        if self.is_running(i) {
            panic!("restart: node {i} is still running");
        }
        self.node_mut(i).child = None;
        self.spawn_daemon(i, &binary("aisexec"));
    }

    /// Waits until node `i`'s IPC socket accepts connections.
    pub fn wait_for_socket(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let path = self.socket(i);
        let deadline = Instant::now() + timeout;
        loop {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Ok(());
            }
            if !self.is_running(i) || Instant::now() >= deadline {
                return Err(format!(
                    "node {i}'s socket {} not accepting within {timeout:?}\n{}",
                    path.display(),
                    self.log_tails(TAIL_LINES)
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts the workspace binary `program` with `args` as a client of node `i`.
    pub fn client(&self, i: usize, program: &str, args: &[&str]) -> Client {
        Client::spawn(program, args, &self.socket(i))
    }

    /// Counter `name` from node `i`'s `aisctl status --json`
    /// (`"counters":{"<name>":<n>,..}`); panics if aisctl fails or has no such counter.
    pub fn counter(&self, i: usize, name: &str) -> u64 {
        let out = self.run(i, "aisctl", &["status", "--json"], Duration::from_secs(10));
        assert!(out.success(), "aisctl status --json on node {i}: {out}");
        let key = format!("\"{name}\":");
        let at = out
            .stdout
            .find(&key)
            .unwrap_or_else(|| panic!("node {i}'s status has no counter {name}: {}", out.stdout));
        let digits: String = out.stdout[at + key.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap_or_else(|_| {
            panic!("counter {name} of node {i} is not a number: {}", out.stdout)
        })
    }

    /// Runs `program` with `args` against node `i` to its end, or kills it after
    /// `timeout`.
    pub fn run(&self, i: usize, program: &str, args: &[&str], timeout: Duration) -> ClientOutput {
        let mut c = self.client(i, program, args);
        c.close_stdin();
        c.finish(timeout)
    }

    /// Runs cpgverify on every listed node at once; asserts they all delivered the same
    /// sequence (same hash) of `messages` from each, without error.
    pub fn cpgverify_everywhere(&self, nodes: &[usize], group: &str, messages: u32) {
        let (m, k) = (messages.to_string(), nodes.len().to_string());
        let args = [
            "--messages",
            &m,
            "--group",
            group,
            "--expect",
            &k,
            "--timeout",
            "30",
        ];
        let outs: Vec<ClientOutput> = std::thread::scope(|s| {
            let runs: Vec<_> = nodes
                .iter()
                .map(|&i| s.spawn(move || self.run(i, "cpgverify", &args, Duration::from_secs(40))))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let results = verify_lines(&outs);
        for (node, delivered, hash, errors) in &results {
            eprintln!("  cpgverify node {node}: delivered={delivered} hash={hash} errors={errors}");
            assert_eq!(*errors, 0, "node {node} counted errors");
            assert_eq!(
                *delivered,
                u64::from(messages) * nodes.len() as u64,
                "node {node} delivered a different count"
            );
            assert_eq!(
                hash, &results[0].2,
                "node {node} delivered another sequence"
            );
        }
    }

    /// The last `lines` lines of every daemon log (every incarnation), for a failure
    /// message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            for log in &n.logs {
                let text = fs::read_to_string(log).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                let from = all.len().saturating_sub(lines);
                let _ = writeln!(
                    out,
                    "----- node {} ({}), last {} of {} lines -----",
                    n.id,
                    log.display(),
                    all.len() - from,
                    all.len()
                );
                for l in &all[from..] {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        out
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "\n===== aisexec logs ({}) =====\n{}",
                self.dir.display(),
                self.log_tails(TAIL_LINES)
            );
        }
        if std::env::var_os("AIS_PROCS_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
            let _ = fs::write(self.dir.join(KEPT), "AIS_PROCS_KEEP\n");
            eprintln!("AIS_PROCS_KEEP: leaving {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The value of `key=` in a `KEY=VALUE ...` line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Every node's `VERIFY` result: `(node, delivered, hash, errors)`.
pub fn verify_lines(outs: &[ClientOutput]) -> Vec<(u32, u64, String, u64)> {
    outs.iter()
        .map(|o| {
            assert!(o.success(), "cpgverify failed: {o}");
            let line = o
                .stdout
                .lines()
                .find(|l| l.starts_with("VERIFY"))
                .unwrap_or_else(|| panic!("no VERIFY line: {o}"));
            let num = |k| field(line, k).and_then(|v| v.parse().ok()).unwrap();
            (
                num("node") as u32,
                num("delivered"),
                field(line, "hash").unwrap().to_string(),
                num("errors"),
            )
        })
        .collect()
}

/// VmRSS of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// One line a client printed, and when the harness read it.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

#[derive(Default)]
struct LineLog {
    lines: Vec<Line>,
    dropped: u64,
    closed: bool,
}

/// Lines of one output stream, filled by a reader thread.
#[derive(Default)]
struct Lines {
    log: Mutex<LineLog>,
    changed: Condvar,
}

impl Lines {
    fn read_from(self: Arc<Self>, stream: impl Read + Send + 'static) {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                        let mut log = self.lock();
                        if log.lines.len() < MAX_CLIENT_LINES {
                            log.lines.push(Line {
                                at: Instant::now(),
                                text,
                            });
                        } else {
                            log.dropped += 1;
                        }
                        drop(log);
                        self.changed.notify_all();
                    }
                }
            }
            self.lock().closed = true;
            self.changed.notify_all();
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LineLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first line from index `from` on that satisfies `pred`, waiting up to `timeout`.
    fn wait(&self, from: usize, pred: &dyn Fn(&Line) -> bool, timeout: Duration) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        let mut log = self.lock();
        let mut next = from;
        loop {
            if let Some(l) = log.lines.iter().skip(next).find(|l| pred(l)) {
                return Some(l.clone());
            }
            next = next.max(log.lines.len());
            let now = Instant::now();
            if now >= deadline || log.closed {
                return None;
            }
            log = match self.changed.wait_timeout(log, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut log = self.lock();
        while !log.closed {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            log = match self.changed.wait_timeout(log, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn text(&self) -> String {
        let log = self.lock();
        let mut s = String::new();
        for l in &log.lines {
            s.push_str(&l.text);
            s.push('\n');
        }
        if log.dropped > 0 {
            let _ = writeln!(s, "[{} more lines not kept]", log.dropped);
        }
        s
    }
}

/// A client program running against one node, its output read line by line as it comes.
/// Dropping it kills the process.
pub struct Client {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    started: Instant,
}

/// How a client run ended.
#[derive(Debug)]
pub struct ClientOutput {
    /// `None` if it was still running at the timeout (it was then killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ClientOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl std::fmt::Display for ClientOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "exit {s} after {:?}", self.elapsed)?,
            None => write!(f, "killed at the timeout, after {:?}", self.elapsed)?,
        }
        write!(f, "\nstdout:\n{}stderr:\n{}", self.stdout, self.stderr)
    }
}

impl Client {
    /// Starts the workspace binary `program` with `$AIS_SOCKET` set to `socket`.
    pub fn spawn(program: &str, args: &[&str], socket: &Path) -> Client {
        let mut cmd = Command::new(binary(program));
        cmd.args(args).env("AIS_SOCKET", socket);
        Client::from_command(&format!("{program} {}", args.join(" ")), cmd)
    }

    /// Starts `cmd` as it is set up (environment, user) with its stdin, stdout and stderr
    /// piped to the harness and the parent-death signal set; for processes the other
    /// constructors do not cover, such as a daemon run on its embedded configuration.
    pub fn from_command(name: &str, mut cmd: Command) -> Client {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        if let Some(out) = child.stdout.take() {
            Arc::clone(&stdout).read_from(out);
        }
        if let Some(err) = child.stderr.take() {
            Arc::clone(&stderr).read_from(err);
        }
        Client {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes one line to the client's stdin.
    pub fn send_line(&mut self, line: &str) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Closes the client's stdin (testcpg then only prints).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Everything printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<Line> {
        self.stdout.lock().lines.clone()
    }

    /// How many stdout lines so far (an index for [`wait_line_from`](Self::wait_line_from)).
    pub fn stdout_len(&self) -> usize {
        self.stdout.lock().lines.len()
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.text()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// The first stdout line satisfying `pred`, waiting up to `timeout` for it.
    pub fn wait_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<Line> {
        self.stdout.wait(0, &|l| pred(&l.text), timeout)
    }

    /// The first stdout line from index `from` on satisfying `pred`, waiting up to
    /// `timeout`.
    pub fn wait_line_from(
        &self,
        from: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<Line> {
        self.stdout.wait(from, &|l| pred(&l.text), timeout)
    }

    /// The first stderr line satisfying `pred`, waiting up to `timeout` for it.
    pub fn wait_stderr_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<Line> {
        self.stderr.wait(0, &|l| pred(&l.text), timeout)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `sig` to the process (it may still be running when this returns).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        sig.send(self.child.id())
    }

    /// The first stderr line from index `from` on satisfying `pred`, waiting up to
    /// `timeout`.
    pub fn wait_stderr_line_from(
        &self,
        from: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<Line> {
        self.stderr.wait(from, &|l| pred(&l.text), timeout)
    }

    /// How many stderr lines so far.
    pub fn stderr_len(&self) -> usize {
        self.stderr.lock().lines.len()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit (killing it then), and returns
    /// everything it printed.
    pub fn finish(mut self, timeout: Duration) -> ClientOutput {
        let deadline = self.started.max(Instant::now()) + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    self.kill9();
                    break None;
                }
            }
        };
        let elapsed = self.started.elapsed();
        // The pipes close with the process; give the readers a moment to see the end.
        self.stdout.wait_closed(Duration::from_secs(2));
        self.stderr.wait_closed(Duration::from_secs(2));
        ClientOutput {
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
            elapsed,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stdin = None;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_configuration_lines_parse() {
        let line = "2026-11-22T05:26:00.272Z [INFO  totem] configuration 1.8: members {1,2,3} joined {2,3}";
        assert_eq!(
            Configuration::parse(line),
            Some(Configuration {
                rep: 1,
                seq: 8,
                members: vec![1, 2, 3],
                joined: vec![2, 3]
            })
        );
        let alone = "[INFO  totem] configuration 2.12: members {2} joined {}";
        assert_eq!(
            Configuration::parse(alone).unwrap().joined,
            Vec::<u32>::new()
        );
        let trans = "[INFO  totem] transitional configuration 1.8: members {1} left {}";
        assert_eq!(Configuration::parse(trans), None);
    }

    #[test]
    fn log_timestamps_parse_to_unix_time() {
        let t = log_timestamp("2026-11-22T05:26:00.272Z [INFO  totem] configuration 1.8: ..");
        // 2026-11-22 is day 20779 of the Unix epoch.
        assert_eq!(
            t,
            Some(Duration::new(
                20_779 * 86_400 + 5 * 3600 + 26 * 60,
                272_000_000
            ))
        );
        assert_eq!(
            log_timestamp("1970-01-01T00:00:01Z x"),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            log_timestamp("2000-03-01T00:00:00.000001+00:00"),
            Some(Duration::new(11_017 * 86_400, 1_000))
        );
        assert_eq!(log_timestamp("[INFO  totem] no timestamp"), None);
        assert_eq!(log_timestamp("2026-13-01T00:00:00Z"), None);
        assert_eq!(log_timestamp("2026-11-22T05:26:00.27x2Z"), None);
    }

    #[test]
    fn timing_follows_corosync() {
        let d = Timing::corosync_defaults();
        assert_eq!(d.effective_token(2), Duration::from_millis(3000));
        assert_eq!(d.effective_token(3), Duration::from_millis(3650));
        assert_eq!(d.effective_consensus(3), Duration::from_millis(4380));
        let f = Timing::fast();
        assert_eq!(f.effective_token(5), Duration::from_millis(1000));
        assert_eq!(f.effective_consensus(5), Duration::from_millis(1200));
    }
}
