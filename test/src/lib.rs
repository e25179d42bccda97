//! Deterministic simulation and checking for aisexec.
//!
//! - [`rng`]: the seeded generator every random decision comes from;
//! - [`net`]: the simulated network (loss, duplication, delay, jitter, partitions);
//! - [`cluster`]: the harness running real [`totem::Srp`] nodes on it, with the scenario
//!   API ([`Cluster`]);
//! - [`checker`]: the extended virtual synchrony invariants, checked at every step;
//! - [`workload`]: numbered, self-checking messages;
//! - [`trace`]: what a run records, and its hash;
//! - [`profile`]: Totem settings for tests;
//! - [`alloc_count`]: a counting global allocator for allocation-per-message figures;
//! - [`ring_bench`]: the Totem core alone on a lossless in-memory network, as fast as it
//!   goes (the `totem-bench` binary and the `core_alloc` test);
//! - [`swarm`]: one seed = one randomized run (faults, then heal and converge), driven by
//!   the `sim` binary: `cargo run --release -p ais-test --bin sim -- --seeds 100`.

pub mod alloc_count;
pub mod checker;
pub mod cluster;
pub mod net;
pub mod netns;
pub mod procs;
pub mod profile;
pub mod ring_bench;
pub mod rng;
pub mod swarm;
pub mod trace;
pub mod workload;

pub use checker::{Checker, Property, Violation};
pub use cluster::{Cluster, SendError};
pub use rng::Rng;
pub use swarm::{run_seed, SeedResult, SwarmOptions};
pub use workload::MsgId;
