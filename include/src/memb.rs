//! The membership event stream (the OCF cluster event draft's membership class): a
//! subscriber is told of every new primary membership with its sequence number, its
//! members oldest first and who came and went; of the loss of quorum; of the return of
//! the exact previous primary membership; and of its node's eviction, which ends the
//! stream.
//!
//! Request ids are the indexes of the executive's library handler table for the
//! service ([`crate::ServiceId::MEMB`]).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{get_bool, get_count, get_u32, get_u8, put_count, Decode, DecodeError, Encode};
use crate::SaVersion;

/// The version of the stream's contract.
pub const MEMB_VERSION: SaVersion = SaVersion {
    release_code: b'A',
    major: 1,
    minor: 1,
};

/// Most nodes one list carries (Totem rings hold far fewer).
pub const MEMB_MEMBERS_MAX: usize = 1024;

/// Library request ids.
pub mod req {
    /// Subscribe: the answer is a [`super::Snapshot`] of the current state; events
    /// follow as callbacks.
    pub const START: u32 = 0;
    /// Unsubscribe; no more events.
    pub const STOP: u32 = 1;
}

/// Callback ids.
pub mod cb {
    /// A [`super::MembEvent`].
    pub const EVENT: u32 = 0;
}

/// A member of a primary membership and the sequence number of the primary membership
/// in which it became a member (the draft's `oc_node_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub node_id: u32,
    pub born_on: u32,
}

impl Encode for Member {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.node_id);
        out.put_u32(self.born_on);
    }
}

impl Decode for Member {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Member {
            node_id: get_u32(buf)?,
            born_on: get_u32(buf)?,
        })
    }
}

/// A list of members, bounded by [`MEMB_MEMBERS_MAX`].
pub fn put_members(out: &mut BytesMut, members: &[Member]) {
    let n = members.len().min(MEMB_MEMBERS_MAX);
    put_count(out, n);
    for m in &members[..n] {
        m.encode(out);
    }
}

pub fn get_members(buf: &mut Bytes) -> Result<Vec<Member>, DecodeError> {
    let n = get_count(buf, MEMB_MEMBERS_MAX, 8)?;
    (0..n).map(|_| Member::decode(buf)).collect()
}

/// What an event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    /// A new primary membership: `sequence` is new, `members`, `joined`, `left` hold.
    NewMembership = 1,
    /// This node's partition lost quorum; `sequence` and `members` are the last primary
    /// membership's.
    NotPrimary = 2,
    /// The exact last primary membership is back, with its `sequence`.
    PrimaryRestored = 3,
    /// A primary membership formed without this node (`sequence` names it): the stream
    /// ends.
    Evicted = 4,
}

impl EventKind {
    fn from_u8(v: u8) -> Result<EventKind, DecodeError> {
        Ok(match v {
            1 => EventKind::NewMembership,
            2 => EventKind::NotPrimary,
            3 => EventKind::PrimaryRestored,
            4 => EventKind::Evicted,
            _ => return Err(DecodeError::BadValue),
        })
    }

    /// The draft's name for it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::NewMembership => "NEW_MEMBERSHIP",
            EventKind::NotPrimary => "NOT_PRIMARY",
            EventKind::PrimaryRestored => "PRIMARY_RESTORED",
            EventKind::Evicted => "EVICTED",
        }
    }
}

/// One event of the stream (callback [`cb::EVENT`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembEvent {
    pub kind: EventKind,
    /// `m_sequence`: 1 for the first primary membership, one more for each new one,
    /// the same on every member.
    pub sequence: u32,
    /// Oldest first, the same order on every member (empty for `Evicted`).
    pub members: Vec<Member>,
    /// New members (`NewMembership` only), oldest first.
    pub joined: Vec<Member>,
    /// Members of the previous primary membership that are gone (`NewMembership` only).
    pub left: Vec<Member>,
}

impl Encode for MembEvent {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.kind as u8);
        out.put_u32(self.sequence);
        put_members(out, &self.members);
        put_members(out, &self.joined);
        put_members(out, &self.left);
    }
}

impl Decode for MembEvent {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(MembEvent {
            kind: EventKind::from_u8(get_u8(buf)?)?,
            sequence: get_u32(buf)?,
            members: get_members(buf)?,
            joined: get_members(buf)?,
            left: get_members(buf)?,
        })
    }
}

/// The answer to [`req::START`]: where the stream stands now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// This node's id.
    pub local_node_id: u32,
    /// The last primary membership this node took part in (0: none yet).
    pub sequence: u32,
    /// Whether this node is in that primary membership now.
    pub primary: bool,
    /// That membership, oldest first.
    pub members: Vec<Member>,
}

impl Encode for Snapshot {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.local_node_id);
        out.put_u32(self.sequence);
        out.put_u8(u8::from(self.primary));
        put_members(out, &self.members);
    }
}

impl Decode for Snapshot {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Snapshot {
            local_node_id: get_u32(buf)?,
            sequence: get_u32(buf)?,
            primary: get_bool(buf)?,
            members: get_members(buf)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u32, b: u32) -> Member {
        Member {
            node_id: n,
            born_on: b,
        }
    }

    #[test]
    fn event_and_snapshot_round_trip() {
        let ev = MembEvent {
            kind: EventKind::NewMembership,
            sequence: 7,
            members: vec![m(2, 1), m(1, 7)],
            joined: vec![m(1, 7)],
            left: vec![m(3, 1)],
        };
        assert_eq!(MembEvent::decode_exact(ev.to_bytes()), Ok(ev));
        let s = Snapshot {
            local_node_id: 4,
            sequence: 3,
            primary: true,
            members: vec![m(4, 2)],
        };
        assert_eq!(Snapshot::decode_exact(s.to_bytes()), Ok(s));
    }

    #[test]
    fn bad_kind_count_and_truncation_are_refused() {
        let ev = MembEvent {
            kind: EventKind::Evicted,
            sequence: 1,
            members: vec![],
            joined: vec![],
            left: vec![],
        };
        let mut raw = ev.to_bytes().to_vec();
        raw[0] = 9;
        assert_eq!(
            MembEvent::decode_exact(Bytes::from(raw.clone())),
            Err(DecodeError::BadValue)
        );
        raw[0] = 4;
        raw[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            MembEvent::decode_exact(Bytes::from(raw.clone())),
            Err(DecodeError::TooLong)
        );
        for cut in 0..ev.to_bytes().len() {
            assert!(MembEvent::decode_exact(ev.to_bytes().slice(..cut)).is_err());
        }
    }
}
