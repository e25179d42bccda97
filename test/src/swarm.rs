//! One seed, one run (in the manner of TigerBeetle's VOPR): the seed draws the cluster
//! size, a Totem profile and fault rates, then drives two phases.
//!
//! 1. **Faults** (20-40 s of virtual time): a workload of numbered messages from every
//!    live node (sizes mostly small, some up to 64 KiB, a few 64 KiB - 1 MiB), while the
//!    network's loss (up to 30%), duplication and jitter change, partitions come and go,
//!    nodes crash, leave gracefully and restart. Safety is checked at every step.
//! 2. **Heal**: partitions healed, loss and duplication off (jitter stays: reordering is
//!    not a fault), every stopped node restarted. Within [`heal_bound_ms`] the cluster
//!    must form one ring of all nodes with every message accepted by a live incarnation
//!    delivered back to it; then every node multicasts a few heal-phase messages, which
//!    must reach every node within [`HEAL_DELIVERY_MS`] more. Failing either is a
//!    [`Property::Convergence`] violation.
//!
//! The node count is always drawn (even when fixed by the caller), so `--seed S
//! --nodes K` with the K a run reported replays that run exactly.

use std::panic::{catch_unwind, AssertUnwindSafe};

use totem::{McastError, Params, MAX_MESSAGE_LEN};

use crate::checker::{Property, Violation};
use crate::cluster::{log_context, Cluster, SendError};
use crate::profile;
use crate::rng::Rng;
use crate::workload::HEADER_LEN;

/// After the ring has formed in the heal phase, how long heal-phase messages may take to
/// reach every node (virtual milliseconds).
pub const HEAL_DELIVERY_MS: u64 = 10_000;

/// Inputs after which a seed is declared a runaway (a packet storm).
const MAX_STEPS: u64 = 60_000_000;

/// Salt for the scenario's stream (the network's is derived from the seed separately).
const PLAN_SALT: u64 = 0x7377_6172_6D21_0001;

/// How long the heal phase may take to form one ring of all nodes and deliver every
/// pending message to its sender: `4 × (token + consensus) + 10 s` of virtual time, with
/// the token timeout as resolved for the cluster size. Four rounds of token loss
/// detection plus consensus cover a failed first attempt at forming the ring (a node
/// restarting in the middle of it); the 10 s cover recovery of large backlogs.
pub fn heal_bound_ms(params: &Params) -> u64 {
    4 * (params.token_us + params.consensus_us) / 1000 + 10_000
}

/// What a caller fixes for a seed.
#[derive(Clone, Debug, Default)]
pub struct SwarmOptions {
    /// Overrides the drawn node count.
    pub nodes: Option<u32>,
    /// Print the plan and the event trace.
    pub verbose: bool,
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct SeedResult {
    pub seed: u64,
    pub nodes: u32,
    pub profile: String,
    pub violation: Option<Violation>,
    /// Deliveries, summed over nodes.
    pub delivered: u64,
    /// Regular configurations installed, summed over nodes.
    pub configurations: u64,
    /// Workload messages accepted by mcast.
    pub accepted: usize,
    pub trace_hash: u64,
    pub virtual_ms: u64,
    pub steps: u64,
}

impl SeedResult {
    /// The command that replays this seed.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p ais-test --bin sim -- --seed {} --nodes {}",
            self.seed, self.nodes
        )
    }
}

/// Everything the seed draws before the run starts.
struct Plan {
    nodes: u32,
    cfg: totem::TotemConfig,
    profile: String,
    fault_ms: u64,
    max_loss: f64,
    max_dup: f64,
    max_jitter_us: u64,
    delay_us: u64,
    weather_every_ms: u64,
    partition_every_ms: Option<u64>,
    crash_every_ms: Option<u64>,
    leave_every_ms: Option<u64>,
    max_down_ms: u64,
    msgs_per_node_per_s: f64,
    big_budget: u32,
}

impl Plan {
    fn draw(rng: &mut Rng, opts: &SwarmOptions) -> Plan {
        let drawn_nodes = rng.range(2, 7) as u32;
        let (cfg, profile) = profile::draw(rng);
        let every = |rng: &mut Rng, p: f64, lo: u64, hi: u64| {
            if rng.chance(p) {
                Some(rng.range(lo, hi))
            } else {
                None
            }
        };
        Plan {
            nodes: opts.nodes.unwrap_or(drawn_nodes),
            cfg,
            profile,
            fault_ms: rng.range(20_000, 40_000),
            max_loss: *rng.pick(&[0.0, 0.01, 0.05, 0.1, 0.2, 0.3]),
            max_dup: *rng.pick(&[0.0, 0.0, 0.01, 0.05, 0.1]),
            max_jitter_us: *rng.pick(&[0, 500, 2_000, 5_000]),
            delay_us: rng.range(50, 500),
            weather_every_ms: rng.range(1_000, 5_000),
            partition_every_ms: every(rng, 0.7, 2_000, 10_000),
            crash_every_ms: every(rng, 0.6, 4_000, 15_000),
            leave_every_ms: every(rng, 0.3, 8_000, 20_000),
            max_down_ms: rng.range(1_000, 8_000),
            msgs_per_node_per_s: *rng.pick(&[1.0, 5.0, 20.0, 50.0]),
            big_budget: *rng.pick(&[0, 0, 1, 2]),
        }
    }

    fn describe(&self) -> String {
        let opt = |o: Option<u64>| o.map_or("never".to_string(), |v| format!("~{v} ms"));
        format!(
            "{} nodes; {}; faults for {} ms: loss <= {}, dup <= {}, jitter <= {} us, delay {} us, weather ~{} ms, \
             partitions {}, crashes {}, leaves {}, down <= {} ms; {} msgs/node/s, {} big messages",
            self.nodes,
            self.profile,
            self.fault_ms,
            self.max_loss,
            self.max_dup,
            self.max_jitter_us,
            self.delay_us,
            self.weather_every_ms,
            opt(self.partition_every_ms),
            opt(self.crash_every_ms),
            opt(self.leave_every_ms),
            self.max_down_ms,
            self.msgs_per_node_per_s,
            self.big_budget
        )
    }
}

/// Runs seed `seed`. A panic inside the run (in Totem or the harness) is reported as a
/// violation, not propagated.
pub fn run_seed(seed: u64, opts: &SwarmOptions) -> SeedResult {
    let mut rng = Rng::new(seed ^ PLAN_SALT);
    let plan = Plan::draw(&mut rng, opts);
    let nodes = plan.nodes;
    let profile = plan.profile.clone();
    let outcome = catch_unwind(AssertUnwindSafe(|| run_plan(seed, plan, rng, opts.verbose)));
    match outcome {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".to_string());
            let (at, place) = match log_context() {
                Some((at, node, inc)) => (at, format!("in node {node}#{inc}")),
                None => (totem::Instant(0), "outside any node".to_string()),
            };
            SeedResult {
                seed,
                nodes,
                profile,
                violation: Some(Violation {
                    seed,
                    at,
                    property: Property::Harness,
                    detail: format!("panic {place}: {msg}"),
                }),
                delivered: 0,
                configurations: 0,
                accepted: 0,
                trace_hash: 0,
                virtual_ms: 0,
                steps: 0,
            }
        }
    }
}

/// A message length: 70% up to 256 B, 25% up to 4 KiB, 4.5% up to 64 KiB, and while the
/// seed's budget lasts 0.5% between 64 KiB and 1 MiB.
fn draw_len(rng: &mut Rng, big_budget: &mut u32) -> usize {
    let r = rng.below(1000);
    let (lo, hi) = if r < 700 {
        (HEADER_LEN, 256)
    } else if r < 950 {
        (256, 4096)
    } else if r < 995 || *big_budget == 0 {
        (4096, 65_536)
    } else {
        *big_budget -= 1;
        (65_536, MAX_MESSAGE_LEN)
    };
    rng.range(lo as u64, hi as u64) as usize
}

/// Messages an application lets pile up in its node's send queue before it waits (as a
/// client does on TRY_AGAIN). Without it a partition lets queues grow to tens of
/// megabytes that no heal bound based on timeouts could drain on a slow, jittery ring.
const APP_QUEUE_LIMIT: usize = 128;

/// Sends one workload message; a refusal of a legal message for being too large is a
/// violation, a full queue is not.
fn send(c: &mut Cluster, n: u32, len: usize) -> Result<(), SendError> {
    if c.srp(n)
        .is_some_and(|s| s.send_queue_len() >= APP_QUEUE_LIMIT)
    {
        return Err(SendError::Mcast(McastError::QueueFull));
    }
    let r = c.send_numbered(n, len).map(|_| ());
    if r == Err(SendError::Mcast(McastError::TooLarge)) {
        c.report(
            Property::Harness,
            format!("node {n} refused a {len}-byte message as too large (limit {MAX_MESSAGE_LEN})"),
        );
    }
    r
}

fn run_plan(seed: u64, mut plan: Plan, mut rng: Rng, verbose: bool) -> SeedResult {
    let k = plan.nodes;
    let mut c = Cluster::new(seed, k, plan.cfg.clone());
    c.set_verbose(verbose);
    c.note(format!("seed {seed}: {}", plan.describe()));
    c.set_delay_us(plan.delay_us);

    // Phase 1: faults.
    let mut restart_at: Vec<Option<u64>> = vec![None; k as usize];
    let mut t_ms = 0;
    while t_ms < plan.fault_ms && c.violation().is_none() && c.steps() < MAX_STEPS {
        let slice = rng.range(10, 200);
        let p = |every: u64| slice as f64 / every as f64;
        for n in 1..=k {
            if restart_at[n as usize - 1].is_some_and(|at| at <= t_ms) {
                restart_at[n as usize - 1] = None;
                if !c.is_member_candidate(n) {
                    c.restart(n);
                }
            }
        }
        if rng.chance(p(plan.weather_every_ms)) {
            let loss = rng.unit() * plan.max_loss;
            let dup = rng.unit() * plan.max_dup;
            let jitter = rng.range(0, plan.max_jitter_us);
            c.set_loss(loss);
            c.set_dup(dup);
            c.set_jitter_us(jitter);
        }
        if let Some(every) = plan.partition_every_ms {
            if rng.chance(p(every)) {
                if rng.chance(0.35) {
                    c.heal();
                } else {
                    let groups = rng.range(2, u64::from(k.min(3)));
                    let mut members: Vec<Vec<u32>> = vec![Vec::new(); groups as usize];
                    for n in 1..=k {
                        members[rng.index(groups as usize)].push(n);
                    }
                    let slices: Vec<&[u32]> = members.iter().map(|v| v.as_slice()).collect();
                    c.partition(&slices);
                }
            }
        }
        if let Some(every) = plan.crash_every_ms {
            if rng.chance(p(every)) {
                let up: Vec<u32> = (1..=k).filter(|&n| c.is_up(n)).collect();
                if !up.is_empty() {
                    let n = *rng.pick(&up);
                    c.crash(n);
                    restart_at[n as usize - 1] = Some(t_ms + rng.range(100, plan.max_down_ms));
                }
            }
        }
        if let Some(every) = plan.leave_every_ms {
            if rng.chance(p(every)) {
                let up: Vec<u32> = (1..=k).filter(|&n| c.is_member_candidate(n)).collect();
                if !up.is_empty() {
                    let n = *rng.pick(&up);
                    c.leave(n);
                    restart_at[n as usize - 1] =
                        Some(t_ms + 100 + rng.range(100, plan.max_down_ms));
                }
            }
        }
        // Now and then a node's applications fall behind on their deliveries, and the
        // ring waits for them at that node's visits.
        if rng.chance(0.02) {
            let n = rng.range(1, u64::from(k)) as u32;
            let behind = rng.chance(0.5);
            c.set_receivers_behind(n, behind);
        }
        let expected = plan.msgs_per_node_per_s * slice as f64 / 1000.0;
        for n in 1..=k {
            if !c.is_member_candidate(n) {
                continue;
            }
            let count = expected.floor() as u64 + u64::from(rng.chance(expected.fract()));
            for _ in 0..count {
                let len = draw_len(&mut rng, &mut plan.big_budget);
                let _ = send(&mut c, n, len);
            }
        }
        c.run_for(slice);
        t_ms += slice;
    }

    // Phase 2: heal and converge.
    if c.violation().is_none() && c.steps() < MAX_STEPS {
        heal_phase(&mut c, &mut rng);
    }
    if c.violation().is_none() && c.steps() >= MAX_STEPS {
        let status = c.status();
        c.report(
            Property::Harness,
            format!("runaway: more than {MAX_STEPS} steps\n{status}"),
        );
    }
    let violation = c.check().err();
    SeedResult {
        seed,
        nodes: k,
        profile: plan.profile,
        violation,
        delivered: c.deliveries(),
        configurations: c.configurations(),
        accepted: c.checker().messages_accepted(),
        trace_hash: c.trace_hash(),
        virtual_ms: c.now().0 / 1000,
        steps: c.steps(),
    }
}

fn heal_phase(c: &mut Cluster, rng: &mut Rng) {
    let k = c.size();
    c.note("=== heal phase ===".to_string());
    c.heal();
    c.set_loss(0.0);
    c.set_dup(0.0);
    for n in 1..=k {
        c.set_receivers_behind(n, false);
    }
    for n in 1..=k {
        if !c.is_member_candidate(n) {
            c.restart(n);
        }
    }
    let bound = heal_bound_ms(c.params());
    if !c.run_until(|c| c.converged(), bound) {
        if c.violation().is_none() {
            let status = c.status();
            c.report(
                Property::Convergence,
                format!("no single ring of all nodes with own messages delivered within {bound} ms of healing:\n{status}"),
            );
        }
        return;
    }
    c.note("=== converged; heal-phase messages ===".to_string());
    c.begin_heal_phase();
    for n in 1..=k {
        let count = rng.range(1, 4);
        for _ in 0..count {
            let len = rng.range(HEADER_LEN as u64, 2048) as usize;
            let mut tries = 0;
            while let Err(SendError::Mcast(McastError::QueueFull)) = send(c, n, len) {
                tries += 1;
                if tries > 1000 || c.violation().is_some() {
                    let status = c.status();
                    c.report(
                        Property::Convergence,
                        format!(
                            "node {n}'s send queue stayed full for 10 s after healing:\n{status}"
                        ),
                    );
                    return;
                }
                c.run_for(10);
            }
        }
    }
    if !c.run_until(|c| c.converged(), HEAL_DELIVERY_MS) && c.violation().is_none() {
        let status = c.status();
        c.report(
            Property::Convergence,
            format!("heal-phase messages not delivered everywhere (or the ring changed) within {HEAL_DELIVERY_MS} ms:\n{status}"),
        );
    }
}
