//! CPG (closed process groups), as openais and corosync offer it: processes join named
//! groups, multicast to the group they joined in agreed order, and are told of every
//! change of the group's membership with its reason.
//!
//! One connection joins at most one group at a time (as a corosync CPG handle does).
//! Request ids are the indexes of the executive's library handler table for CPG.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{
    get_bytes, get_count, get_u16, get_u32, put_bytes, put_count, Decode, DecodeError, Encode,
};

/// Longest group name (corosync's `CPG_MAX_NAME_LENGTH`).
pub const CPG_NAME_MAX: usize = 128;
/// Most members one group membership report carries.
pub const CPG_MEMBERS_MAX: usize = 16_384;
/// Largest message one `mcast` carries: Totem's 1 MiB less room for the executive's
/// headers and the group name.
pub const CPG_MSG_MAX: usize = (1 << 20) - 1024;

/// Library request ids (the CPG library handler table's indexes).
pub mod req {
    pub const JOIN: u32 = 0;
    pub const LEAVE: u32 = 1;
    pub const MCAST: u32 = 2;
    pub const MEMBERSHIP_GET: u32 = 3;
    pub const LOCAL_GET: u32 = 4;
}

/// Callback ids (sent with [`crate::ipc::CALLBACK_FLAG`]).
pub mod cb {
    pub const DELIVER: u32 = 0;
    pub const CONFCHG: u32 = 1;
}

/// A group's name: up to [`CPG_NAME_MAX`] bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(Bytes);

impl GroupName {
    pub fn new(name: impl Into<Bytes>) -> Option<GroupName> {
        let name = name.into();
        (name.len() <= CPG_NAME_MAX).then_some(GroupName(name))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Display for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl Encode for GroupName {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.0.len() as u16);
        out.put_slice(&self.0);
    }

    fn size_hint(&self) -> usize {
        2 + self.0.len()
    }
}

impl Decode for GroupName {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let len = get_u16(buf)? as usize;
        if len > CPG_NAME_MAX {
            return Err(DecodeError::TooLong);
        }
        if buf.len() < len {
            return Err(DecodeError::Truncated);
        }
        Ok(GroupName(buf.split_to(len)))
    }
}

/// Why a process is in a membership change (corosync's `CPG_REASON_*` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Reason {
    Join = 1,
    Leave = 2,
    NodeDown = 3,
    NodeUp = 4,
    ProcDown = 5,
}

impl Reason {
    pub fn from_u32(v: u32) -> Option<Reason> {
        Some(match v {
            1 => Reason::Join,
            2 => Reason::Leave,
            3 => Reason::NodeDown,
            4 => Reason::NodeUp,
            5 => Reason::ProcDown,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::Join => "join",
            Reason::Leave => "leave",
            Reason::NodeDown => "nodedown",
            Reason::NodeUp => "nodeup",
            Reason::ProcDown => "procdown",
        }
    }
}

/// One process of a group: where it runs, its pid, and why it is listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub nodeid: u32,
    pub pid: u32,
    pub reason: Reason,
}

impl Encode for Address {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.nodeid);
        out.put_u32(self.pid);
        out.put_u32(self.reason as u32);
    }
}

impl Decode for Address {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Address {
            nodeid: get_u32(buf)?,
            pid: get_u32(buf)?,
            reason: Reason::from_u32(get_u32(buf)?).ok_or(DecodeError::BadValue)?,
        })
    }
}

fn put_addresses(out: &mut BytesMut, list: &[Address]) {
    put_count(out, list.len());
    for a in list {
        a.encode(out);
    }
}

fn get_addresses(buf: &mut Bytes) -> Result<Vec<Address>, DecodeError> {
    let n = get_count(buf, CPG_MEMBERS_MAX, 12)?;
    (0..n).map(|_| Address::decode(buf)).collect()
}

/// `JOIN` and `LEAVE`: the group, and the calling process's pid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupReq {
    pub group: GroupName,
    pub pid: u32,
}

impl Encode for GroupReq {
    fn encode(&self, out: &mut BytesMut) {
        self.group.encode(out);
        out.put_u32(self.pid);
    }
}

impl Decode for GroupReq {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(GroupReq {
            group: GroupName::decode(buf)?,
            pid: get_u32(buf)?,
        })
    }
}

/// `MCAST`: a message to the group this connection joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McastReq {
    /// Requested ordering guarantee (corosync's `CPG_TYPE_*`); all are delivered agreed.
    pub guarantee: u32,
    pub data: Bytes,
}

impl Encode for McastReq {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.guarantee);
        put_bytes(out, &self.data);
    }

    fn size_hint(&self) -> usize {
        8 + self.data.len()
    }
}

impl Decode for McastReq {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(McastReq {
            guarantee: get_u32(buf)?,
            data: get_bytes(buf, CPG_MSG_MAX)?,
        })
    }
}

/// `MEMBERSHIP_GET` request: which group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipGetReq {
    pub group: GroupName,
}

impl Encode for MembershipGetReq {
    fn encode(&self, out: &mut BytesMut) {
        self.group.encode(out);
    }
}

impl Decode for MembershipGetReq {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(MembershipGetReq {
            group: GroupName::decode(buf)?,
        })
    }
}

/// `MEMBERSHIP_GET` response: the group's members, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipGetRes {
    pub members: Vec<Address>,
}

impl Encode for MembershipGetRes {
    fn encode(&self, out: &mut BytesMut) {
        put_addresses(out, &self.members);
    }
}

impl Decode for MembershipGetRes {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(MembershipGetRes {
            members: get_addresses(buf)?,
        })
    }
}

/// `LOCAL_GET` response: this node's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalGetRes {
    pub nodeid: u32,
}

impl Encode for LocalGetRes {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.nodeid);
    }
}

impl Decode for LocalGetRes {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(LocalGetRes {
            nodeid: get_u32(buf)?,
        })
    }
}

/// `DELIVER` callback: a message of the group, in agreed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverCb {
    pub group: GroupName,
    pub nodeid: u32,
    pub pid: u32,
    pub data: Bytes,
}

impl Encode for DeliverCb {
    fn encode(&self, out: &mut BytesMut) {
        self.group.encode(out);
        out.put_u32(self.nodeid);
        out.put_u32(self.pid);
        put_bytes(out, &self.data);
    }

    fn size_hint(&self) -> usize {
        self.group.size_hint() + 12 + self.data.len()
    }
}

impl DeliverCb {
    /// The encoding in two parts: everything up to the message's length, then the
    /// message itself (the same bytes as `to_bytes`, without copying `data`).
    pub fn split_encode(self) -> (Bytes, Bytes) {
        let mut head = BytesMut::with_capacity(self.group.size_hint() + 12);
        self.group.encode(&mut head);
        head.put_u32(self.nodeid);
        head.put_u32(self.pid);
        head.put_u32(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
        (head.freeze(), self.data)
    }
}

impl Decode for DeliverCb {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(DeliverCb {
            group: GroupName::decode(buf)?,
            nodeid: get_u32(buf)?,
            pid: get_u32(buf)?,
            data: get_bytes(buf, CPG_MSG_MAX)?,
        })
    }
}

/// `CONFCHG` callback: the group's members after the change, who left and who joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfchgCb {
    pub group: GroupName,
    pub members: Vec<Address>,
    pub left: Vec<Address>,
    pub joined: Vec<Address>,
}

impl Encode for ConfchgCb {
    fn encode(&self, out: &mut BytesMut) {
        self.group.encode(out);
        put_addresses(out, &self.members);
        put_addresses(out, &self.left);
        put_addresses(out, &self.joined);
    }
}

impl Decode for ConfchgCb {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ConfchgCb {
            group: GroupName::decode(buf)?,
            members: get_addresses(buf)?,
            left: get_addresses(buf)?,
            joined: get_addresses(buf)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &'static str) -> GroupName {
        GroupName::new(s.as_bytes()).unwrap()
    }

    fn round_trip<T: Encode + Decode + PartialEq + std::fmt::Debug>(v: T) {
        let bytes = v.to_bytes();
        assert_eq!(T::decode_exact(bytes.clone()).as_ref(), Ok(&v));
        for cut in 0..bytes.len() {
            assert!(
                T::decode_exact(bytes.slice(..cut)).is_err(),
                "truncated at {cut}"
            );
        }
    }

    #[test]
    fn a_split_deliver_callback_is_its_whole_encoding() {
        for len in [0, 5, 70_000] {
            let cb = DeliverCb {
                group: g("grp"),
                nodeid: 7,
                pid: 99,
                data: Bytes::from(vec![0x5A; len]),
            };
            let whole = cb.to_bytes();
            let data = cb.data.clone();
            let (head, tail) = cb.split_encode();
            assert_eq!(tail.as_ptr(), data.as_ptr(), "the message is not copied");
            let mut joined = head.to_vec();
            joined.extend_from_slice(&tail);
            assert_eq!(joined, whole.to_vec(), "{len} bytes");
        }
    }

    #[test]
    fn every_message_round_trips_and_refuses_truncation() {
        let a = Address {
            nodeid: 1,
            pid: 42,
            reason: Reason::Join,
        };
        let b = Address {
            nodeid: 2,
            pid: 7,
            reason: Reason::ProcDown,
        };
        round_trip(GroupReq {
            group: g("grp"),
            pid: 9,
        });
        round_trip(McastReq {
            guarantee: 1,
            data: Bytes::from_static(b"payload"),
        });
        round_trip(MembershipGetReq { group: g("x") });
        round_trip(MembershipGetRes {
            members: vec![a, b],
        });
        round_trip(LocalGetRes { nodeid: 3 });
        round_trip(DeliverCb {
            group: g("grp"),
            nodeid: 1,
            pid: 2,
            data: Bytes::from_static(b"m"),
        });
        round_trip(ConfchgCb {
            group: g("grp"),
            members: vec![a],
            left: vec![b],
            joined: vec![],
        });
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(GroupName::new(vec![0u8; 129]).is_none());
        let mut bad = BytesMut::new();
        bad.put_u16(200);
        bad.put_slice(&[0; 200]);
        assert_eq!(
            GroupName::decode_exact(bad.freeze()),
            Err(DecodeError::TooLong)
        );
        let mut bad = BytesMut::new();
        bad.put_u32(1);
        bad.put_u32(2);
        bad.put_u32(99);
        assert_eq!(
            Address::decode_exact(bad.freeze()),
            Err(DecodeError::BadValue)
        );
    }
}
