//! The library ⇄ executive contract.
//!
//! Everything a client library and the executive must agree on lives here and only here:
//! SA Forum error codes and versions ([`SaError`], [`SaVersion`]), names ([`SaName`]),
//! service and message identifiers, the IPC frame layout ([`ipc`]) and each service's
//! requests, responses and callbacks ([`cpg`], [`clm`], [`admin`], ...). Every message type implements
//! [`Encode`] and [`Decode`]; decoding is total (any bytes give `Ok` or `Err`) and checks
//! every length against a constant bound before allocating.

pub mod admin;
pub mod clm;
pub mod codec;
pub mod cpg;
mod error;
pub mod ipc;
pub mod memb;
mod types;

pub use codec::{Decode, DecodeError, Encode};
pub use error::SaError;
pub use types::{MsgId, SaName, SaVersion, ServiceId, SA_MAX_NAME_LENGTH};
