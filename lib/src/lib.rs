//! libais: the client library of the aisexec executive (DESIGN.md §7).
//!
//! An application talks to its node's executive through one unix socket per service
//! handle ([`conn::Connection`]): a connect handshake binds it to one service and
//! version, requests wait for their own response, and callbacks (asynchronous messages
//! from the executive) queue up until the application dispatches them, either from its
//! own poll loop on the handle's fd or from a thread blocked in dispatch
//! ([`dispatch::DispatchFlags`]). Handles ([`handle::Handle`]) are looked up in a
//! thread-safe table on every call, so a finalized handle gives `BadHandle`, never a
//! dangling object. Every error is an SA Forum [`SaError`].
//!
//! Services: [`cpg`] (closed process groups), [`clm`] (cluster membership), [`memb`]
//! (the membership event stream), [`admin`] (operator queries, for `aisctl`). CKPT, EVT
//! and AMF will follow the same shape: a `Connection`, a `Dispatcher` over the
//! service's callbacks, and a `static HandleDb`.
//!
//! The executive's socket is `$AIS_SOCKET` when set, else the default runtime path
//! ([`conn::default_socket_path`]).

pub mod admin;
pub mod clm;
pub mod conn;
pub mod cpg;
pub mod dispatch;
pub mod handle;
pub mod memb;

pub use ais_proto::{SaError, SaVersion, ServiceId};
pub use conn::{default_socket_path, socket_path, Connection};
pub use dispatch::DispatchFlags;
pub use handle::{Handle, HandleDb};
