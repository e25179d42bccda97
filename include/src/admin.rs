//! The admin service's contract: operator queries (`aisctl`) answered by the node the
//! tool is connected to, from what that node knows. Nothing here is multicast.
//!
//! Both requests have an empty body. Text fields (names, addresses, counter names) are
//! UTF-8 of at most [`ADMIN_TEXT_MAX`] bytes, an empty string meaning "not known".

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{
    get_bool, get_count, get_u16, get_u32, get_u64, put_count, Decode, DecodeError, Encode,
};

/// Longest name, address or counter name.
pub const ADMIN_TEXT_MAX: usize = 255;
/// Most members a reply lists (above any ring's size).
pub const ADMIN_MEMBERS_MAX: usize = 4096;
/// Most counters a status reply carries.
pub const ADMIN_COUNTERS_MAX: usize = 256;

/// Library request ids (the admin library handler table's indexes).
pub mod req {
    /// Everything: [`super::StatusRes`].
    pub const STATUS: u32 = 0;
    /// The membership only: [`super::MembersRes`].
    pub const MEMBERS: u32 = 1;
}

fn put_text(out: &mut BytesMut, text: &str) {
    // Longer text is cut at a character boundary rather than refused: it is for humans.
    let mut end = text.len().min(ADMIN_TEXT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&text.as_bytes()[..end]);
}

fn get_text(buf: &mut Bytes) -> Result<String, DecodeError> {
    let len = usize::from(get_u16(buf)?);
    if len > ADMIN_TEXT_MAX {
        return Err(DecodeError::TooLong);
    }
    if buf.len() < len {
        return Err(DecodeError::Truncated);
    }
    String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| DecodeError::BadValue)
}

/// A ring id: representative node and sequence number (`rep.seq` in logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingId {
    pub rep: u32,
    pub seq: u64,
}

/// One member of the current configuration as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub node_id: u32,
    /// Its votes under this node's quorum policy.
    pub votes: u32,
    /// From the nodelist (this node: its nodelist name, else its host name); "" unknown.
    pub name: String,
    /// `ip:port` the transport reaches it at; "" unknown.
    pub address: String,
}

impl Encode for Member {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.node_id);
        out.put_u32(self.votes);
        put_text(out, &self.name);
        put_text(out, &self.address);
    }
}

impl Decode for Member {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Member {
            node_id: get_u32(buf)?,
            votes: get_u32(buf)?,
            name: get_text(buf)?,
            address: get_text(buf)?,
        })
    }
}

/// `MEMBERS` response, and the first part of `STATUS`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembersRes {
    pub node_id: u32,
    pub node_name: String,
    /// `None` before the first configuration.
    pub ring_id: Option<RingId>,
    pub quorate: bool,
    /// In node id order.
    pub members: Vec<Member>,
}

impl Encode for MembersRes {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.node_id);
        put_text(out, &self.node_name);
        match self.ring_id {
            Some(r) => {
                out.put_u8(1);
                out.put_u32(r.rep);
                out.put_u64(r.seq);
            }
            None => out.put_u8(0),
        }
        out.put_u8(u8::from(self.quorate));
        put_count(out, self.members.len());
        for m in &self.members {
            m.encode(out);
        }
    }
}

impl Decode for MembersRes {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let node_id = get_u32(buf)?;
        let node_name = get_text(buf)?;
        let ring_id = if get_bool(buf)? {
            Some(RingId {
                rep: get_u32(buf)?,
                seq: get_u64(buf)?,
            })
        } else {
            None
        };
        let quorate = get_bool(buf)?;
        // A member is at least 12 bytes (two ids and two empty texts).
        let n = get_count(buf, ADMIN_MEMBERS_MAX, 12)?;
        let members = (0..n)
            .map(|_| Member::decode(buf))
            .collect::<Result<_, _>>()?;
        Ok(MembersRes {
            node_id,
            node_name,
            ring_id,
            quorate,
            members,
        })
    }
}

/// The quorum of the current configuration (see the executive's `quorum` module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumInfo {
    pub quorate: bool,
    /// False when no expected votes are configured: every partition is quorate.
    pub enforced: bool,
    pub two_node: bool,
    pub expected_votes: u32,
    pub total_votes: u32,
    pub needed: u32,
}

impl Encode for QuorumInfo {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(u8::from(self.quorate));
        out.put_u8(u8::from(self.enforced));
        out.put_u8(u8::from(self.two_node));
        out.put_u32(self.expected_votes);
        out.put_u32(self.total_votes);
        out.put_u32(self.needed);
    }
}

impl Decode for QuorumInfo {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(QuorumInfo {
            quorate: get_bool(buf)?,
            enforced: get_bool(buf)?,
            two_node: get_bool(buf)?,
            expected_votes: get_u32(buf)?,
            total_votes: get_u32(buf)?,
            needed: get_u32(buf)?,
        })
    }
}

/// A named counter (`totem.frames_sent`, `transport.bad_auth`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterValue {
    pub name: String,
    pub value: u64,
}

/// `STATUS` response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRes {
    pub members: MembersRes,
    pub quorum: QuorumInfo,
    /// Totem's and the transport's counters as of this request, in a fixed order.
    pub counters: Vec<CounterValue>,
}

impl Encode for StatusRes {
    fn encode(&self, out: &mut BytesMut) {
        self.members.encode(out);
        self.quorum.encode(out);
        put_count(out, self.counters.len());
        for c in &self.counters {
            put_text(out, &c.name);
            out.put_u64(c.value);
        }
    }
}

impl Decode for StatusRes {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let members = MembersRes::decode(buf)?;
        let quorum = QuorumInfo::decode(buf)?;
        let n = get_count(buf, ADMIN_COUNTERS_MAX, 10)?;
        let counters = (0..n)
            .map(|_| {
                Ok(CounterValue {
                    name: get_text(buf)?,
                    value: get_u64(buf)?,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(StatusRes {
            members,
            quorum,
            counters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusRes {
        StatusRes {
            members: MembersRes {
                node_id: 1,
                node_name: "node1".into(),
                ring_id: Some(RingId { rep: 1, seq: 8 }),
                quorate: true,
                members: vec![
                    Member {
                        node_id: 1,
                        votes: 1,
                        name: "node1".into(),
                        address: "127.0.0.1:5405".into(),
                    },
                    Member {
                        node_id: 2,
                        votes: 2,
                        name: String::new(),
                        address: "[fd00::2]:5405".into(),
                    },
                ],
            },
            quorum: QuorumInfo {
                quorate: true,
                enforced: true,
                two_node: false,
                expected_votes: 3,
                total_votes: 3,
                needed: 2,
            },
            counters: vec![CounterValue {
                name: "totem.frames_sent".into(),
                value: u64::MAX,
            }],
        }
    }

    #[test]
    fn status_round_trips() {
        let s = sample();
        assert_eq!(StatusRes::decode_exact(s.to_bytes()), Ok(s.clone()));
        let mut m = s.members;
        m.ring_id = None;
        assert_eq!(MembersRes::decode_exact(m.to_bytes()), Ok(m));
    }

    #[test]
    fn every_truncation_and_bad_flag_is_refused() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                StatusRes::decode_exact(bytes.slice(..cut)).is_err(),
                "cut {cut}"
            );
        }
        // The ring id's presence flag is byte 4 + 2 + 5 ("node1").
        let mut bad = bytes.to_vec();
        bad[11] = 2;
        assert_eq!(
            StatusRes::decode_exact(Bytes::from(bad)),
            Err(DecodeError::BadValue)
        );
    }

    #[test]
    fn text_must_be_utf8_and_bounded() {
        let mut out = BytesMut::new();
        out.put_u16(2);
        out.put_slice(&[0xff, 0xfe]);
        assert_eq!(get_text(&mut out.freeze()), Err(DecodeError::BadValue));
        let mut out = BytesMut::new();
        out.put_u16(ADMIN_TEXT_MAX as u16 + 1);
        assert_eq!(get_text(&mut out.freeze()), Err(DecodeError::TooLong));
        // Long text is cut at a character boundary when encoded.
        let mut out = BytesMut::new();
        put_text(&mut out, &"é".repeat(200));
        let text = get_text(&mut out.freeze()).expect("decodes");
        assert_eq!(text.len(), 254);
    }

    #[test]
    fn a_huge_member_count_is_refused_before_allocating() {
        let mut out = BytesMut::new();
        out.put_u32(1);
        put_text(&mut out, "");
        out.put_u8(0);
        out.put_u8(1);
        out.put_u32(u32::MAX);
        assert_eq!(
            MembersRes::decode_exact(out.freeze()),
            Err(DecodeError::TooLong)
        );
    }
}
