//! `aisbench` against a real one-node `aisexec`: both modes run for a second and end
//! with the `RESULT` line the benchmark scripts parse, every field present and sane.
//!
//! Needs the workspace's binaries next to this test (`cargo test --workspace --release`
//! builds them). Every wait is bounded; the cluster is killed and its directory removed
//! when the test ends, passing or failing.

use std::collections::BTreeMap;
use std::time::Duration;

use ais_test::procs::{Options, ProcCluster};

/// How long the ring may take to form on a busy machine.
const RING: Duration = Duration::from_secs(20);
/// How long one `--seconds 1` run may take: start, join, the second, finalize.
const RUN: Duration = Duration::from_secs(15);

/// The fields of the RESULT line, in the order aisbench documents them.
const FIELDS: [&str; 7] = [
    "mode",
    "size",
    "senders",
    "msgs_per_s",
    "mb_per_s",
    "p50_us",
    "p99_us",
];

/// Parses `RESULT k=v ...` into its fields; `Err` says what is wrong with the line.
fn parse_result(line: &str) -> Result<BTreeMap<String, String>, String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("RESULT") {
        return Err(format!("not a RESULT line: {line:?}"));
    }
    let mut fields = BTreeMap::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("{w:?} is not key=value in {line:?}"))?;
        if fields.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("{k} twice in {line:?}"));
        }
    }
    let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    let mut want = FIELDS.to_vec();
    want.sort_unstable();
    if keys != want {
        return Err(format!("fields {keys:?}, want {want:?}, in {line:?}"));
    }
    Ok(fields)
}

fn number(fields: &BTreeMap<String, String>, key: &str) -> f64 {
    let v = &fields[key];
    v.parse()
        .unwrap_or_else(|_| panic!("{key}={v} is not a number"))
}

/// Runs aisbench in `mode` for a second of 1 KiB messages on node 1 and checks its
/// RESULT line; returns its fields.
fn bench(c: &ProcCluster, mode: &str) -> BTreeMap<String, String> {
    let out = c.run(
        1,
        "aisbench",
        &["--mode", mode, "--size", "1024", "--seconds", "1"],
        RUN,
    );
    assert!(out.success(), "aisbench --mode {mode}: {out}");
    let last = out.stdout.lines().last().unwrap_or("");
    let f = parse_result(last).unwrap_or_else(|e| panic!("aisbench --mode {mode}: {e}\n{out}"));
    assert_eq!(f["mode"], mode, "{last}");
    assert_eq!(f["size"], "1024", "{last}");
    assert_eq!(f["senders"], "1", "{last}");
    assert!(number(&f, "msgs_per_s") > 0.0, "{last}");
    assert!(number(&f, "mb_per_s") > 0.0, "{last}");
    let (p50, p99) = (number(&f, "p50_us"), number(&f, "p99_us"));
    assert!(p50 >= 0.0 && p50 <= p99, "{last}");
    assert!(
        out.stderr.lines().any(|l| l.starts_with("TRYAGAIN count=")),
        "aisbench --mode {mode} did not report its TRYAGAIN count:\n{out}"
    );
    f
}

#[test]
fn aisbench_tput_and_lat_end_with_a_complete_result_line() {
    let mut c = ProcCluster::start(Options::new("aisbench", 1));
    c.wait_for_ring(&[1], RING)
        .unwrap_or_else(|e| panic!("{e}"));
    let tput = bench(&c, "tput");
    let lat = bench(&c, "lat");
    // One message in flight at a time cannot beat a full pipeline by much; it is
    // measured, not asserted, beyond being positive.
    eprintln!(
        "tput: {} msgs/s; lat: {} msgs/s, p50 {} us, p99 {} us",
        tput["msgs_per_s"], lat["msgs_per_s"], lat["p50_us"], lat["p99_us"]
    );
}

#[test]
fn parse_result_refuses_incomplete_lines() {
    let good = "RESULT mode=lat size=1024 senders=1 msgs_per_s=10 mb_per_s=0.01 p50_us=5 p99_us=9";
    assert!(parse_result(good).is_ok());
    assert!(parse_result(&good.replace(" p99_us=9", "")).is_err());
    assert!(parse_result(&good.replace("RESULT", "RESULTS")).is_err());
    assert!(parse_result(&format!("{good} p50_us=5")).is_err());
    assert!(parse_result(&format!("{good} extra")).is_err());
}
