//! CLM, the SA Forum cluster membership service (AIS B.01.01), as openais 0.80 offered
//! it: who is in the cluster, one node's record, and notifications of every change of
//! the membership, each carrying the view number of the membership it describes.
//!
//! Request ids are the indexes of the executive's library handler table for CLM. Every
//! list is bounded by [`CLM_NODES_MAX`] and every string by its own constant, checked
//! before anything is allocated.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{
    get_bool, get_count, get_u16, get_u32, get_u64, get_u8, put_count, Decode, DecodeError, Encode,
};
use crate::{SaError, SaName};

/// Most nodes a view, a notification or a node table holds. Totem rings are far smaller
/// (a few hundred members); the margin leaves room for the records of nodes that left.
pub const CLM_NODES_MAX: usize = 1024;
/// `SA_CLM_MAX_ADDRESS_LENGTH`: the longest node address value.
pub const CLM_ADDRESS_MAX: usize = 64;
/// The node id that names "the node this library is connected to" in node get requests
/// (no Totem node uses it: node ids are IPv4-derived or configured small numbers).
pub const LOCAL_NODE_ID: u32 = u32::MAX;

/// Library request ids (the CLM library handler table's indexes).
pub mod req {
    /// [`super::TrackReq`] → [`super::TrackRes`] (a view only for `CURRENT` alone).
    pub const TRACK_START: u32 = 0;
    /// Empty → empty; `NotExist` when the connection was not tracking.
    pub const TRACK_STOP: u32 = 1;
    /// [`super::NodeGetReq`] → [`super::NodeGetRes`].
    pub const NODE_GET: u32 = 2;
    /// [`super::NodeGetAsyncReq`] → empty; the answer is a [`super::NodeGetCb`].
    pub const NODE_GET_ASYNC: u32 = 3;
}

/// Callback ids (sent with [`crate::ipc::CALLBACK_FLAG`]).
pub mod cb {
    /// [`super::TrackCb`].
    pub const TRACK: u32 = 0;
    /// [`super::NodeGetCb`].
    pub const NODE_GET: u32 = 1;
}

/// `SaUint8T trackFlags` values (`SA_TRACK_*`).
pub mod track {
    /// Report the current membership now.
    pub const CURRENT: u8 = 0x01;
    /// At every change, report every member and every node that left.
    pub const CHANGES: u8 = 0x02;
    /// At every change, report only the nodes that changed.
    pub const CHANGES_ONLY: u8 = 0x04;
    /// Every flag CLM knows.
    pub const ALL: u8 = CURRENT | CHANGES | CHANGES_ONLY;
}

/// `SaClmClusterChangesT`: what happened to a node since the tracker's previous view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ClusterChange {
    NoChange = 1,
    Joined = 2,
    Left = 3,
    /// Still a member, but its record (name, address or boot time) is not the one the
    /// previous view held.
    Reconfigured = 4,
}

impl ClusterChange {
    pub fn from_u8(v: u8) -> Option<ClusterChange> {
        Some(match v {
            1 => ClusterChange::NoChange,
            2 => ClusterChange::Joined,
            3 => ClusterChange::Left,
            4 => ClusterChange::Reconfigured,
            _ => return None,
        })
    }

    /// The spelling `testclm` prints.
    pub fn name(self) -> &'static str {
        match self {
            ClusterChange::NoChange => "no_change",
            ClusterChange::Joined => "joined",
            ClusterChange::Left => "left",
            ClusterChange::Reconfigured => "reconfigured",
        }
    }
}

/// `SaClmNodeAddressFamilyT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum AddressFamily {
    Inet = 1,
    Inet6 = 2,
}

/// `SaClmNodeAddressT`: an address family and up to [`CLM_ADDRESS_MAX`] bytes of value
/// (4 raw bytes for IPv4, 16 for IPv6).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddress {
    pub family: AddressFamily,
    value: Bytes,
}

impl NodeAddress {
    /// `None` when `value` is longer than [`CLM_ADDRESS_MAX`].
    pub fn new(family: AddressFamily, value: impl Into<Bytes>) -> Option<NodeAddress> {
        let value = value.into();
        (value.len() <= CLM_ADDRESS_MAX).then_some(NodeAddress { family, value })
    }

    pub fn from_ip(ip: std::net::IpAddr) -> NodeAddress {
        match ip {
            std::net::IpAddr::V4(v4) => NodeAddress {
                family: AddressFamily::Inet,
                value: Bytes::copy_from_slice(&v4.octets()),
            },
            std::net::IpAddr::V6(v6) => NodeAddress {
                family: AddressFamily::Inet6,
                value: Bytes::copy_from_slice(&v6.octets()),
            },
        }
    }

    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The address as an IP address, when the family and length make one.
    pub fn to_ip(&self) -> Option<std::net::IpAddr> {
        match self.family {
            AddressFamily::Inet => <[u8; 4]>::try_from(&self.value[..])
                .ok()
                .map(std::net::IpAddr::from),
            AddressFamily::Inet6 => <[u8; 16]>::try_from(&self.value[..])
                .ok()
                .map(std::net::IpAddr::from),
        }
    }
}

impl std::fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_ip() {
            Some(ip) => write!(f, "{ip}"),
            None => {
                for b in self.value.iter() {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl Encode for NodeAddress {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.family as u8);
        out.put_u16(self.value.len() as u16);
        out.put_slice(&self.value);
    }
}

impl Decode for NodeAddress {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let family = match get_u8(buf)? {
            1 => AddressFamily::Inet,
            2 => AddressFamily::Inet6,
            _ => return Err(DecodeError::BadValue),
        };
        let len = usize::from(get_u16(buf)?);
        if len > CLM_ADDRESS_MAX {
            return Err(DecodeError::TooLong);
        }
        if buf.len() < len {
            return Err(DecodeError::Truncated);
        }
        Ok(NodeAddress {
            family,
            value: buf.split_to(len),
        })
    }
}

/// `SaClmClusterNodeT`: one node as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterNode {
    pub node_id: u32,
    pub address: NodeAddress,
    pub node_name: SaName,
    /// In the current view.
    pub member: bool,
    /// When the node's executive started, in nanoseconds since the Unix epoch (its
    /// incarnation: a restarted node has a new one).
    pub boot_timestamp: u64,
    /// The view number of the first view this incarnation of the node was a member of.
    pub initial_view_number: u64,
}

/// The smallest encoded node: empty address value and name.
const NODE_MIN_LEN: usize = 4 + 3 + 2 + 1 + 8 + 8;

impl Encode for ClusterNode {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.node_id);
        self.address.encode(out);
        self.node_name.encode(out);
        out.put_u8(u8::from(self.member));
        out.put_u64(self.boot_timestamp);
        out.put_u64(self.initial_view_number);
    }
}

impl Decode for ClusterNode {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ClusterNode {
            node_id: get_u32(buf)?,
            address: NodeAddress::decode(buf)?,
            node_name: SaName::decode(buf)?,
            member: get_bool(buf)?,
            boot_timestamp: get_u64(buf)?,
            initial_view_number: get_u64(buf)?,
        })
    }
}

/// `SaClmClusterNotificationT`: a node and what happened to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterNotification {
    pub node: ClusterNode,
    pub change: ClusterChange,
}

impl Encode for ClusterNotification {
    fn encode(&self, out: &mut BytesMut) {
        self.node.encode(out);
        out.put_u8(self.change as u8);
    }
}

impl Decode for ClusterNotification {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ClusterNotification {
            node: ClusterNode::decode(buf)?,
            change: ClusterChange::from_u8(get_u8(buf)?).ok_or(DecodeError::BadValue)?,
        })
    }
}

/// `SaClmClusterNotificationBufferT`: a view number and its notifications.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ClusterNotificationBuffer {
    pub view_number: u64,
    pub notifications: Vec<ClusterNotification>,
}

impl ClusterNotificationBuffer {
    /// The node ids of the members it lists (those with `member` set), in list order.
    pub fn member_ids(&self) -> Vec<u32> {
        self.notifications
            .iter()
            .filter(|n| n.node.member)
            .map(|n| n.node.node_id)
            .collect()
    }
}

impl Encode for ClusterNotificationBuffer {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.view_number);
        put_count(out, self.notifications.len());
        for n in &self.notifications {
            n.encode(out);
        }
    }
}

impl Decode for ClusterNotificationBuffer {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let view_number = get_u64(buf)?;
        let n = get_count(buf, CLM_NODES_MAX, NODE_MIN_LEN + 1)?;
        let notifications = (0..n)
            .map(|_| ClusterNotification::decode(buf))
            .collect::<Result<_, _>>()?;
        Ok(ClusterNotificationBuffer {
            view_number,
            notifications,
        })
    }
}

/// `TRACK_START`: the flags, and for `CURRENT` the most notifications the caller takes
/// (`None`: as many as there are, the library allocates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackReq {
    pub flags: u8,
    pub max_items: Option<u32>,
}

impl Encode for TrackReq {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.flags);
        out.put_u8(u8::from(self.max_items.is_some()));
        out.put_u32(self.max_items.unwrap_or(0));
    }
}

impl Decode for TrackReq {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let flags = get_u8(buf)?;
        let limited = get_bool(buf)?;
        let max = get_u32(buf)?;
        Ok(TrackReq {
            flags,
            max_items: limited.then_some(max),
        })
    }
}

/// `TRACK_START`'s answer. With `CURRENT` alone and error `Ok`: the current view (every
/// member, change `NoChange`). With error `NoSpace`: no notifications, `needed` says
/// how many the view has. Otherwise empty, `needed` 0.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TrackRes {
    pub needed: u32,
    pub view: ClusterNotificationBuffer,
}

impl Encode for TrackRes {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.needed);
        self.view.encode(out);
    }
}

impl Decode for TrackRes {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(TrackRes {
            needed: get_u32(buf)?,
            view: ClusterNotificationBuffer::decode(buf)?,
        })
    }
}

/// `TRACK` callback (`saClmClusterTrackCallback`): a view and the current number of
/// members (the notifications may list fewer with `CHANGES_ONLY`, more with the nodes
/// that left).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackCb {
    pub number_of_members: u32,
    pub view: ClusterNotificationBuffer,
}

impl Encode for TrackCb {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.number_of_members);
        self.view.encode(out);
    }
}

impl Decode for TrackCb {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(TrackCb {
            number_of_members: get_u32(buf)?,
            view: ClusterNotificationBuffer::decode(buf)?,
        })
    }
}

/// `NODE_GET`: which node ([`LOCAL_NODE_ID`] for this one), and how long the caller
/// may wait, in nanoseconds (`SaTimeT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeGetReq {
    pub node_id: u32,
    pub timeout_ns: u64,
}

impl Encode for NodeGetReq {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.node_id);
        out.put_u64(self.timeout_ns);
    }
}

impl Decode for NodeGetReq {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(NodeGetReq {
            node_id: get_u32(buf)?,
            timeout_ns: get_u64(buf)?,
        })
    }
}

/// `NODE_GET`'s answer when its error is `Ok`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeGetRes {
    pub node: ClusterNode,
}

impl Encode for NodeGetRes {
    fn encode(&self, out: &mut BytesMut) {
        self.node.encode(out);
    }
}

impl Decode for NodeGetRes {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(NodeGetRes {
            node: ClusterNode::decode(buf)?,
        })
    }
}

/// `NODE_GET_ASYNC`: the caller's invocation id (echoed in the callback) and the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeGetAsyncReq {
    pub invocation: u64,
    pub node_id: u32,
}

impl Encode for NodeGetAsyncReq {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.invocation);
        out.put_u32(self.node_id);
    }
}

impl Decode for NodeGetAsyncReq {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(NodeGetAsyncReq {
            invocation: get_u64(buf)?,
            node_id: get_u32(buf)?,
        })
    }
}

/// `NODE_GET` callback (`saClmClusterNodeGetCallback`): the invocation, the outcome,
/// and the node when the outcome is `Ok`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeGetCb {
    pub invocation: u64,
    pub result: Result<ClusterNode, SaError>,
}

impl Encode for NodeGetCb {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.invocation);
        match &self.result {
            Ok(node) => {
                out.put_u32(SaError::Ok.as_u32());
                node.encode(out);
            }
            Err(e) => out.put_u32(e.as_u32()),
        }
    }
}

impl Decode for NodeGetCb {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let invocation = get_u64(buf)?;
        let error = SaError::from_u32(get_u32(buf)?).ok_or(DecodeError::BadValue)?;
        let result = match error {
            SaError::Ok => Ok(ClusterNode::decode(buf)?),
            e => Err(e),
        };
        Ok(NodeGetCb { invocation, result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn node(id: u32) -> ClusterNode {
        ClusterNode {
            node_id: id,
            address: NodeAddress::from_ip([10, 0, 0, id as u8].into()),
            node_name: SaName::new(format!("node{id}").into_bytes()).unwrap(),
            member: true,
            boot_timestamp: 1_700_000_000_000_000_000 + u64::from(id),
            initial_view_number: 3,
        }
    }

    #[test]
    fn every_message_round_trips_and_refuses_truncation() {
        let view = ClusterNotificationBuffer {
            view_number: 7,
            notifications: vec![
                ClusterNotification {
                    node: node(1),
                    change: ClusterChange::NoChange,
                },
                ClusterNotification {
                    node: ClusterNode {
                        member: false,
                        ..node(2)
                    },
                    change: ClusterChange::Left,
                },
            ],
        };
        round_trip(TrackReq {
            flags: track::CURRENT,
            max_items: Some(3),
        });
        round_trip(TrackReq {
            flags: track::CHANGES,
            max_items: None,
        });
        round_trip(TrackRes {
            needed: 2,
            view: view.clone(),
        });
        round_trip(TrackCb {
            number_of_members: 1,
            view,
        });
        round_trip(NodeGetReq {
            node_id: LOCAL_NODE_ID,
            timeout_ns: 1_000_000_000,
        });
        round_trip(NodeGetRes { node: node(4) });
        round_trip(NodeGetAsyncReq {
            invocation: 99,
            node_id: 4,
        });
        round_trip(NodeGetCb {
            invocation: 99,
            result: Ok(node(4)),
        });
        round_trip(NodeGetCb {
            invocation: 100,
            result: Err(SaError::InvalidParam),
        });
    }

    #[test]
    fn addresses_print_as_ip_and_are_bounded() {
        let a = NodeAddress::from_ip([127, 0, 0, 2].into());
        assert_eq!(a.to_string(), "127.0.0.2");
        let v6 = NodeAddress::from_ip("fe80::1".parse().unwrap());
        assert_eq!(v6.to_string(), "fe80::1");
        assert!(NodeAddress::new(AddressFamily::Inet, vec![0u8; 65]).is_none());
        let mut bad = BytesMut::new();
        bad.put_u8(1);
        bad.put_u16(65);
        bad.put_slice(&[0; 65]);
        assert_eq!(
            NodeAddress::decode_exact(bad.freeze()),
            Err(DecodeError::TooLong)
        );
        let mut bad = BytesMut::new();
        bad.put_u8(9);
        bad.put_u16(0);
        assert_eq!(
            NodeAddress::decode_exact(bad.freeze()),
            Err(DecodeError::BadValue)
        );
    }

    #[test]
    fn counts_and_values_are_checked_before_use() {
        let mut huge = BytesMut::new();
        huge.put_u64(1);
        huge.put_u32(u32::MAX);
        assert_eq!(
            ClusterNotificationBuffer::decode_exact(huge.freeze()),
            Err(DecodeError::TooLong)
        );
        // A count within the bound but more than the bytes left: refused before
        // allocating.
        let mut short = BytesMut::new();
        short.put_u64(1);
        short.put_u32(1000);
        assert_eq!(
            ClusterNotificationBuffer::decode_exact(short.freeze()),
            Err(DecodeError::Truncated)
        );
        let mut bad_change = BytesMut::new();
        node(1).encode(&mut bad_change);
        bad_change.put_u8(5);
        assert_eq!(
            ClusterNotification::decode_exact(bad_change.freeze()),
            Err(DecodeError::BadValue)
        );
        let mut bad_error = BytesMut::new();
        bad_error.put_u64(1);
        bad_error.put_u32(0);
        assert_eq!(
            NodeGetCb::decode_exact(bad_error.freeze()),
            Err(DecodeError::BadValue)
        );
    }
}
