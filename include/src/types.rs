//! Identifiers and SA Forum value types shared by the library and the executive.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{get_u16, get_u8, Decode, DecodeError, Encode};
use crate::SaError;

/// Which service a connection or an executive message belongs to. The numbers are part
/// of the wire contract: never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId(pub u16);

impl ServiceId {
    /// The executive's own synchronisation messages (not a library service).
    pub const SYNC: ServiceId = ServiceId(0);
    pub const CPG: ServiceId = ServiceId(1);
    pub const CLM: ServiceId = ServiceId(2);
    pub const AMF: ServiceId = ServiceId(3);
    pub const CKPT: ServiceId = ServiceId(4);
    pub const EVT: ServiceId = ServiceId(5);
    /// Operator queries (`aisctl`).
    pub const ADMIN: ServiceId = ServiceId(6);
    /// The membership event stream (OCF cluster event draft).
    pub const MEMB: ServiceId = ServiceId(7);
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An executive message's identity: the service whose executive handler table receives
/// it, and the index into that table. Carried in front of every Totem payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId {
    pub service: ServiceId,
    pub func: u16,
}

impl MsgId {
    pub const LEN: usize = 4;

    pub fn new(service: ServiceId, func: u16) -> MsgId {
        MsgId { service, func }
    }
}

impl Encode for MsgId {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.service.0);
        out.put_u16(self.func);
    }
}

impl Decode for MsgId {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(MsgId {
            service: ServiceId(get_u16(buf)?),
            func: get_u16(buf)?,
        })
    }
}

/// An SA Forum version: a release code letter and major and minor numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SaVersion {
    pub release_code: u8,
    pub major: u8,
    pub minor: u8,
}

impl SaVersion {
    /// B.01.01, the release every service here implements.
    pub const B_01_01: SaVersion = SaVersion {
        release_code: b'B',
        major: 1,
        minor: 1,
    };

    /// The SA Forum rule: the release code must match and the major version must not be
    /// above ours; then the answer is the version we implement. Otherwise `Version`,
    /// still naming what we support so the caller can retry with it.
    pub fn negotiate(requested: SaVersion, supported: SaVersion) -> (SaError, SaVersion) {
        let ok = requested.release_code == supported.release_code
            && requested.major >= 1
            && requested.major <= supported.major;
        (if ok { SaError::Ok } else { SaError::Version }, supported)
    }
}

impl fmt::Display for SaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:02}.{:02}",
            self.release_code as char, self.major, self.minor
        )
    }
}

impl Encode for SaVersion {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.release_code);
        out.put_u8(self.major);
        out.put_u8(self.minor);
    }
}

impl Decode for SaVersion {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(SaVersion {
            release_code: get_u8(buf)?,
            major: get_u8(buf)?,
            minor: get_u8(buf)?,
        })
    }
}

/// `SA_MAX_NAME_LENGTH`.
pub const SA_MAX_NAME_LENGTH: usize = 256;

/// An SA Forum name (`SaNameT`): up to 256 bytes, not necessarily UTF-8.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SaName(Bytes);

impl SaName {
    /// `Err(NameTooLong)` beyond 256 bytes.
    pub fn new(value: impl Into<Bytes>) -> Result<SaName, SaError> {
        let value = value.into();
        if value.len() > SA_MAX_NAME_LENGTH {
            return Err(SaError::NameTooLong);
        }
        Ok(SaName(value))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for SaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl Encode for SaName {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.0.len() as u16);
        out.put_slice(&self.0);
    }
}

impl Decode for SaName {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let len = get_u16(buf)? as usize;
        if len > SA_MAX_NAME_LENGTH {
            return Err(DecodeError::TooLong);
        }
        if buf.len() < len {
            return Err(DecodeError::Truncated);
        }
        Ok(SaName(buf.split_to(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_negotiation_follows_the_sa_forum_rule() {
        let b = SaVersion::B_01_01;
        let ask = |r, ma, mi| {
            SaVersion::negotiate(
                SaVersion {
                    release_code: r,
                    major: ma,
                    minor: mi,
                },
                b,
            )
        };
        assert_eq!(ask(b'B', 1, 1), (SaError::Ok, b));
        assert_eq!(ask(b'B', 1, 9), (SaError::Ok, b));
        assert_eq!(ask(b'A', 1, 1), (SaError::Version, b));
        assert_eq!(ask(b'B', 2, 1), (SaError::Version, b));
        assert_eq!(ask(b'B', 0, 1), (SaError::Version, b));
    }

    #[test]
    fn names_are_bounded() {
        assert!(SaName::new(vec![b'x'; 256]).is_ok());
        assert_eq!(SaName::new(vec![b'x'; 257]), Err(SaError::NameTooLong));
        let n = SaName::new(&b"grp"[..]).unwrap();
        assert_eq!(SaName::decode_exact(n.to_bytes()), Ok(n));
        let mut long = BytesMut::new();
        long.put_u16(300);
        long.put_slice(&[0; 300]);
        assert_eq!(
            SaName::decode_exact(long.freeze()),
            Err(DecodeError::TooLong)
        );
    }
}
