//! Totem single-ring protocol, sans IO.
//!
//! [`Srp`] is a state machine: feed it datagrams ([`Srp::handle_datagram`]), expired
//! timers ([`Srp::handle_timeout`]) and local messages ([`Srp::mcast`]); drain what it
//! wants done with [`Srp::poll_transmit`], [`Srp::poll_event`] and [`Srp::poll_timeout`].
//! It never reads a clock or touches a socket, so the daemon and the deterministic
//! simulator drive the very same code.
//!
//! What it gives the layer above is extended virtual synchrony: all members deliver the
//! same configuration changes, and between two of them the same messages in the same
//! (agreed) order, their own included.

pub mod config;
mod event;
mod membership;
mod order;
mod pack;
mod srp;
mod store;
mod types;
pub mod wire;

pub use config::{ConfigError, Params, TotemConfig};
pub use event::{ConfChange, ConfKind, Dest, Event, McastError, MembState, Stats, Transmit};
pub use pack::MAX_MESSAGE_LEN;
pub use srp::Srp;
pub use types::{Instant, NodeId, NodeSet, RingId};
