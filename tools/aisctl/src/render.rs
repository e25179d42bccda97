//! What aisctl prints: a status or membership answer as text for people, or as JSON for
//! programs. The JSON schema is part of aisctl's interface (README.md documents it):
//! fields are only ever added, never renamed or removed.

use std::fmt::Write as _;

use libais::admin::{MembersRes, StatusRes};

use crate::json::Json;

/// `ring_id` as JSON: `{"rep": n, "seq": n}` or `null` before the first ring.
fn ring_json(m: &MembersRes) -> Json {
    match m.ring_id {
        Some(r) => Json::object([
            ("rep", Json::Uint(u64::from(r.rep))),
            ("seq", Json::Uint(r.seq)),
        ]),
        None => Json::Null,
    }
}

/// The fields `members --json` prints, which `status --json` starts with.
fn members_fields(m: &MembersRes) -> Vec<(String, Json)> {
    let members = m
        .members
        .iter()
        .map(|x| {
            Json::object([
                ("node_id", Json::Uint(u64::from(x.node_id))),
                ("name", Json::str_or_null(&x.name)),
                ("address", Json::str_or_null(&x.address)),
                ("votes", Json::Uint(u64::from(x.votes))),
            ])
        })
        .collect();
    vec![
        ("node_id".into(), Json::Uint(u64::from(m.node_id))),
        ("node_name".into(), Json::str_or_null(&m.node_name)),
        ("ring_id".into(), ring_json(m)),
        ("quorate".into(), Json::Bool(m.quorate)),
        ("members".into(), Json::Array(members)),
    ]
}

pub fn members_json(m: &MembersRes) -> String {
    Json::Object(members_fields(m)).to_text()
}

pub fn status_json(s: &StatusRes) -> String {
    let q = &s.quorum;
    let mut fields = members_fields(&s.members);
    fields.push((
        "quorum".into(),
        Json::object([
            ("quorate", Json::Bool(q.quorate)),
            ("enforced", Json::Bool(q.enforced)),
            ("two_node", Json::Bool(q.two_node)),
            ("expected_votes", Json::Uint(u64::from(q.expected_votes))),
            ("total_votes", Json::Uint(u64::from(q.total_votes))),
            ("needed", Json::Uint(u64::from(q.needed))),
        ]),
    ));
    fields.push((
        "counters".into(),
        Json::object(
            s.counters
                .iter()
                .map(|c| (c.name.clone(), Json::Uint(c.value))),
        ),
    ));
    Json::Object(fields).to_text()
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn ring_text(m: &MembersRes) -> String {
    match m.ring_id {
        Some(r) => format!("{}.{}", r.rep, r.seq),
        None => "none yet".into(),
    }
}

fn members_table(out: &mut String, m: &MembersRes) {
    let name_w = m
        .members
        .iter()
        .map(|x| or_dash(&x.name).chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let _ = writeln!(out, "Members ({}):", m.members.len());
    let _ = writeln!(
        out,
        "  {:>10}  {:>5}  {:<name_w$}  address",
        "nodeid", "votes", "name"
    );
    for x in &m.members {
        let me = if x.node_id == m.node_id {
            " (local)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:>10}  {:>5}  {:<name_w$}  {}{me}",
            x.node_id,
            x.votes,
            or_dash(&x.name),
            or_dash(&x.address)
        );
    }
}

pub fn members_text(m: &MembersRes) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Ring {}  node {} ({})  {}",
        ring_text(m),
        m.node_id,
        or_dash(&m.node_name),
        if m.quorate { "quorate" } else { "NOT quorate" }
    );
    members_table(&mut out, m);
    out
}

pub fn status_text(s: &StatusRes) -> String {
    let m = &s.members;
    let q = &s.quorum;
    let mut out = String::new();
    let _ = writeln!(out, "Ring ID:      {}", ring_text(m));
    let _ = writeln!(
        out,
        "This node:    {} ({})",
        m.node_id,
        or_dash(&m.node_name)
    );
    let quorum = if !q.enforced {
        format!(
            "quorate (not enforced: no expected votes configured), {} votes",
            q.total_votes
        )
    } else {
        format!(
            "{}, {} of {} expected votes, {} needed{}",
            if q.quorate { "quorate" } else { "NOT quorate" },
            q.total_votes,
            q.expected_votes,
            q.needed,
            if q.two_node { " (two_node)" } else { "" }
        )
    };
    let _ = writeln!(out, "Quorum:       {quorum}");
    members_table(&mut out, m);
    let _ = writeln!(out, "Counters:");
    let w = s.counters.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &s.counters {
        let _ = writeln!(out, "  {:<w$}  {}", c.name, c.value);
    }
    out
}

#[cfg(test)]
mod tests {
    use libais::admin::{CounterValue, Member, QuorumInfo, RingId};

    use super::*;

    fn sample() -> StatusRes {
        StatusRes {
            members: MembersRes {
                node_id: 2,
                node_name: "beta".into(),
                ring_id: Some(RingId { rep: 1, seq: 16 }),
                quorate: true,
                members: vec![
                    Member {
                        node_id: 1,
                        votes: 1,
                        name: String::new(),
                        address: "127.0.0.1:5405".into(),
                    },
                    Member {
                        node_id: 2,
                        votes: 2,
                        name: "beta".into(),
                        address: String::new(),
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
            counters: vec![
                CounterValue {
                    name: "totem.frames_sent".into(),
                    value: 10,
                },
                CounterValue {
                    name: "transport.bad_auth".into(),
                    value: 0,
                },
            ],
        }
    }

    #[test]
    fn status_json_follows_the_schema() {
        assert_eq!(
            status_json(&sample()),
            concat!(
                r#"{"node_id":2,"node_name":"beta","ring_id":{"rep":1,"seq":16},"quorate":true,"#,
                r#""members":[{"node_id":1,"name":null,"address":"127.0.0.1:5405","votes":1},"#,
                r#"{"node_id":2,"name":"beta","address":null,"votes":2}],"#,
                r#""quorum":{"quorate":true,"enforced":true,"two_node":false,"expected_votes":3,"total_votes":3,"needed":2},"#,
                r#""counters":{"totem.frames_sent":10,"transport.bad_auth":0}}"#
            )
        );
    }

    #[test]
    fn members_json_is_the_status_prefix_and_ring_may_be_null() {
        let mut s = sample();
        let status = status_json(&s);
        let members = members_json(&s.members);
        let open = members.strip_suffix('}').expect("an object");
        assert!(status.starts_with(open), "{members}\n{status}");
        s.members.ring_id = None;
        assert!(members_json(&s.members).contains(r#""ring_id":null"#));
    }

    #[test]
    fn text_shows_ring_quorum_members_and_counters() {
        let text = status_text(&sample());
        assert!(text.contains("Ring ID:      1.16"), "{text}");
        assert!(text.contains("This node:    2 (beta)"), "{text}");
        assert!(
            text.contains("Quorum:       quorate, 3 of 3 expected votes, 2 needed"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1:5405"), "{text}");
        assert!(text.contains("beta  - (local)"), "{text}");
        assert!(text.contains("totem.frames_sent   10"), "{text}");
        let mut s = sample();
        s.quorum.quorate = false;
        s.quorum.enforced = false;
        assert!(status_text(&s).contains("not enforced"));
        s.members.quorate = false;
        assert!(members_text(&s.members).contains("NOT quorate"));
    }
}
