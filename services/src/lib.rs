//! The executive's services, each a [`ais_exec::Service`] in a module of its own:
//!
//! - [`cpg`]: closed process groups (corosync's CPG): group membership with reasons,
//!   agreed-order multicast to a group, kept identical on every node across
//!   configuration changes by the sync framework.
//!
//! - [`admin`]: operator queries (`aisctl`): this node's view of the ring, its members
//!   with names and addresses, quorum, and the protocol's counters; answered locally.
//!
//! - [`memb`]: the membership event stream (OCF cluster event draft): new primary
//!   memberships with sequence numbers and members oldest first, loss and return of
//!   quorum, eviction.
//!
//! The daemon registers them all on its registry: [`register_all`].

pub mod admin;
pub mod cpg;
pub mod memb;

pub use admin::Admin;
pub use cpg::Cpg;
pub use memb::Memb;

/// Registers every service of this crate on `registry`.
pub fn register_all(registry: &mut ais_exec::Registry) {
    registry.register(Cpg::new());
    registry.register(Admin::new());
    registry.register(Memb::new());
}
