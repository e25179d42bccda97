//! The executive's services, each a [`ais_exec::Service`] in a module of its own:
//!
//! - [`cpg`]: closed process groups (corosync's CPG): group membership with reasons,
//!   agreed-order multicast to a group, kept identical on every node across
//!   configuration changes by the sync framework.
//! - [`clm`]: cluster membership (SA Forum CLM B.01.01): numbered views, node records,
//!   track callbacks, node get.
//!
//! The daemon registers them all on its registry: [`register_all`].

pub mod clm;
pub mod cpg;

pub use clm::{Clm, LocalNode};
pub use cpg::Cpg;

/// What the services need to know about the node they run on, built by the daemon.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    /// This node's record for CLM.
    pub local: LocalNode,
}

/// Registers every service of this crate on `registry`.
pub fn register_all(registry: &mut ais_exec::Registry, config: &ServicesConfig) {
    registry.register(Cpg::new());
    registry.register(Clm::new(config.local.clone()));
}
