//! The aisexec daemon: configuration, the event loop and everything that touches the
//! outside world (UDP, the IPC socket, files, signals). The protocol and the services are
//! sans-IO crates (`totem`, `ais-exec`, `ais-services`); this crate only drives them.

pub mod app;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod ipc;
pub mod logging;
pub mod outq;
pub mod runtime;
pub mod status;
pub mod timer;
pub mod transport;
