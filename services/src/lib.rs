//! The executive's services, each a [`ais_exec::Service`] in a module of its own:
//!
//! - [`cpg`]: closed process groups (corosync's CPG): group membership with reasons,
//!   agreed-order multicast to a group, kept identical on every node across
//!   configuration changes by the sync framework.
//!
//! The daemon registers them all on its registry: [`register_all`].

pub mod cpg;

pub use cpg::Cpg;

/// Registers every service of this crate on `registry`.
pub fn register_all(registry: &mut ais_exec::Registry) {
    registry.register(Cpg::new());
}
