//! The executive core, sans IO: services, their handler tables, and everything that
//! routes work to them.
//!
//! The flow every request follows (DESIGN.md §1): a library request reaches a service's
//! **library handler** ([`LibHandler`]), which validates it and multicasts an executive
//! message through the [`Api`]; Totem delivers it in agreed order on every node to the
//! service's **executive handler** ([`ExecHandler`]), which makes the decision and
//! updates the replicated state identically everywhere; the node that owns the
//! connection answers it ([`Api::response`]) or calls it back ([`Api::dispatch`]).
//!
//! - [`Service`]: the trait a service implements (tables and hooks);
//! - [`Api`]: what a handler may do, recorded as [`Effect`]s;
//! - [`Registry`]: one node's services and connections; routes library requests (with
//!   flow control), deliveries, configuration changes and timers, and runs the sync
//!   framework ([`sync`] documents its message flow); computes [`quorum`] at every
//!   regular configuration and keeps the daemon's [`host`] facts for services;
//! - [`testkit`]: an in-process cluster of real Totem instances for services' unit tests.
//!
//! Nothing here reads a clock, touches a socket or iterates a `HashMap`: time comes in
//! as an argument, effects go out through [`Registry::poll_effect`].

mod api;
pub mod host;
pub mod quorum;
mod registry;
mod service;
pub mod sync;
pub mod testkit;

pub use api::{callback_body, Api, Effect, TimerId};
pub use host::{Counter, HostStatus};
pub use quorum::{QuorumPolicy, QuorumState};
pub use registry::{Registry, Stats};
pub use service::{check_tables, ConnId, ConnInfo, ExecHandler, LibHandler, Service, SyncProgress};

#[cfg(test)]
mod tests;
