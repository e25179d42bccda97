//! The executive's services, each a [`ais_exec::Service`] in a module of its own:
//!
//! - [`cpg`]: closed process groups (corosync's CPG): group membership with reasons,
//!   agreed-order multicast to a group, kept identical on every node across
//!   configuration changes by the sync framework.
//! - [`clm`]: cluster membership (SA Forum CLM B.01.01): numbered views, node records,
//!   track callbacks, node get.
//! - [`admin`]: operator queries (`aisctl`): this node's view of the ring, its members
//!   with names and addresses, quorum, and the protocol's counters; answered locally.
//! - [`memb`]: the membership event stream (OCF cluster event draft): new primary
//!   memberships with sequence numbers and members oldest first, loss and return of
//!   quorum, eviction.
//!
//! The daemon registers them all on its registry: [`register_all`], handing them what
//! they need to know of their node and their configuration sections ([`section`]).

pub mod admin;
pub mod clm;
pub mod cpg;
pub mod memb;
pub mod section;

pub use admin::Admin;
pub use clm::{Clm, LocalNode};
pub use cpg::Cpg;
pub use memb::Memb;
pub use section::{ServiceSection, ServiceSections};

/// What the services need to know about the node they run on and from the
/// configuration, built by the daemon.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    /// This node's record for CLM.
    pub local: LocalNode,
    /// The service sections of the configuration file, as accepted (see [`section`]).
    pub sections: ServiceSections,
}

impl ServicesConfig {
    /// A configuration with no service section.
    pub fn new(local: LocalNode) -> ServicesConfig {
        ServicesConfig {
            local,
            sections: ServiceSections::new(),
        }
    }

    /// The section called `name` (`cpg`, `clm`, ...), if the file has one.
    pub fn section(&self, name: &str) -> Option<&ServiceSection> {
        self.sections.get(name)
    }
}

/// Registers every service of this crate on `registry`.
pub fn register_all(registry: &mut ais_exec::Registry, config: &ServicesConfig) {
    registry.register(Cpg::new());
    registry.register(Clm::new(config.local.clone()));
    registry.register(Admin::new());
    registry.register(Memb::new());
}
