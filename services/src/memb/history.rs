//! The membership event stream's replicated decision, without IO or service plumbing:
//! given what every member of a new regular configuration announced in its sync round
//! and whether the configuration is quorate, what each node's stream says next.
//!
//! The rules (the OCF cluster event draft's membership semantics):
//!
//! - A *primary* membership is a quorate configuration. Primary memberships are ordered
//!   by their Totem ring (see [`History::ring`]); each gets `m_sequence` one above the
//!   newest one any of its members took part in, so sequences are identical on every
//!   member and a node that stays primary sees them without gaps. Each member carries `born_on`, the
//!   sequence of the primary membership in which it became a member; lists are ordered
//!   oldest first (`born_on`, then node id), the same on every node.
//! - A node whose partition loses quorum is told `NotPrimary` (its sequence unchanged).
//! - If the exact membership of the last primary returns and nobody formed a newer one,
//!   its members are told `PrimaryRestored` with the same sequence (nothing changed).
//! - A member that restarted (it announces an older history than the membership it was
//!   in) is a new member: its old incarnation is listed as left, the new one as joined.
//! - A node that learns of a primary membership that formed without it (a member
//!   announces a newer one than its own, while it had one) is told `Evicted`, and its
//!   stream ends.
//!
//! Histories live in memory. When every member of a primary membership restarts (or is
//! cut off) and restarted nodes form the next one, they number it from 1 again: no
//! member can tell them better. The ring order still evicts a node of the old lineage
//! when it meets the new one, so no subscriber sees one number name two memberships; an
//! evicted node's next subscription may see a number its ended one saw.
//!
//! Every member decides from the same announcements and the same quorum verdict, so they
//! all reach the same state; only what each tells its own subscribers differs.

use std::collections::{BTreeMap, BTreeSet};

use totem::{NodeId, RingId};

/// A member of a primary membership and when it became one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Born {
    pub node: NodeId,
    pub born_on: u32,
}

/// What a node knows of the membership history: its sync announcement, and its state.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct History {
    /// The last primary membership's sequence this node took part in (0: none yet).
    pub seq: u32,
    /// That membership's Totem ring. Ring sequence numbers survive restarts (the daemon
    /// persists them) and any two primary memberships share a node, so a later primary
    /// membership always has a higher ring: this orders primary memberships even when
    /// restarted nodes, which forget `seq`, number one again.
    pub ring: Option<RingId>,
    /// Whether this node is in that primary membership now.
    pub primary: bool,
    /// That membership, oldest first.
    pub members: Vec<Born>,
}

/// What a node's stream says about a new configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    NewMembership {
        seq: u32,
        members: Vec<Born>,
        joined: Vec<Born>,
        left: Vec<Born>,
    },
    NotPrimary {
        seq: u32,
        members: Vec<Born>,
    },
    PrimaryRestored {
        seq: u32,
        members: Vec<Born>,
    },
    /// Primary membership `seq` formed without this node; the stream ends after this.
    Evicted {
        seq: u32,
    },
}

/// Oldest first; ties by node id.
fn sort_oldest_first(v: &mut [Born]) {
    v.sort_by_key(|b| (b.born_on, b.node));
}

/// The decision for `me`, a member of a new regular configuration `ring` of `members`, from
/// every member's announcement (`announced`; a member that announced nothing counts as
/// a node with no history). Returns `me`'s new state and the events for its subscribers,
/// in order.
pub fn decide(
    me: NodeId,
    ring: RingId,
    members: &BTreeSet<NodeId>,
    announced: &BTreeMap<NodeId, History>,
    quorate: bool,
) -> (History, Vec<Event>) {
    let empty = History::default();
    let mine = announced.get(&me).unwrap_or(&empty);
    // The newest primary membership any member took part in (by ring: see
    // `History::ring`); its members all announce the same history for it.
    let order = |h: &History| h.ring.map(|r| (r.seq, r.rep));
    let newest = members
        .iter()
        .filter_map(|n| announced.get(n))
        .filter(|h| h.seq > 0)
        .max_by_key(|h| order(h))
        .unwrap_or(&empty);
    let mut events = Vec::new();
    // A node whose last primary membership is not the newest missed at least one
    // that formed without it.
    let evicted = mine.seq > 0 && mine.ring != newest.ring;
    if evicted {
        events.push(Event::Evicted { seq: newest.seq });
    }
    // Nodes adopt the newest history they heard of, so that an evicted node is not
    // evicted again for the same primary membership, and a new one starts from it.
    let base = if evicted { newest } else { mine };

    if !quorate {
        if base.primary && !evicted {
            events.push(Event::NotPrimary {
                seq: base.seq,
                members: base.members.clone(),
            });
        }
        let state = History {
            seq: base.seq,
            ring: base.ring,
            primary: false,
            members: base.members.clone(),
        };
        return (state, events);
    }

    // A member of the newest primary membership that announces another history lost
    // it: it restarted. Its old incarnation left and a new one joins.
    let restarted: BTreeSet<NodeId> = newest
        .members
        .iter()
        .map(|b| b.node)
        .filter(|n| members.contains(n))
        .filter(|n| announced.get(n).map(|h| h.ring) != Some(newest.ring))
        .collect();
    let last: BTreeSet<NodeId> = newest
        .members
        .iter()
        .map(|b| b.node)
        .filter(|n| !restarted.contains(n))
        .collect();
    if newest.seq > 0 && restarted.is_empty() && &last == members {
        // The last primary membership again, with nobody newer: nothing changed for
        // those who stayed in it; those who had lost it have it back.
        if !mine.primary && !evicted {
            events.push(Event::PrimaryRestored {
                seq: newest.seq,
                members: newest.members.clone(),
            });
        }
        let state = History {
            seq: newest.seq,
            ring: newest.ring,
            primary: true,
            members: newest.members.clone(),
        };
        return (state, events);
    }

    // From a peer's announcement: a wrong peer's u32::MAX must not overflow. Four
    // billion primary memberships never happen, so saturating costs nothing real.
    let seq = newest.seq.saturating_add(1);
    let born: BTreeMap<NodeId, u32> = newest
        .members
        .iter()
        .filter(|b| !restarted.contains(&b.node))
        .map(|b| (b.node, b.born_on))
        .collect();
    let mut now: Vec<Born> = members
        .iter()
        .map(|&node| Born {
            node,
            born_on: born.get(&node).copied().unwrap_or(seq),
        })
        .collect();
    sort_oldest_first(&mut now);
    let joined: Vec<Born> = now
        .iter()
        .filter(|b| !last.contains(&b.node))
        .copied()
        .collect();
    let left: Vec<Born> = newest
        .members
        .iter()
        .filter(|b| !members.contains(&b.node) || restarted.contains(&b.node))
        .copied()
        .collect();
    if !evicted {
        events.push(Event::NewMembership {
            seq,
            members: now.clone(),
            joined,
            left,
        });
    }
    let state = History {
        seq,
        ring: Some(ring),
        primary: true,
        members: now,
    };
    (state, events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> BTreeSet<NodeId> {
        ids.iter().map(|&i| NodeId(i)).collect()
    }

    /// A cluster of nodes, each with its history; `step` runs one configuration per
    /// partition the way every member would, and returns each node's events.
    #[derive(Default)]
    struct Nodes {
        state: BTreeMap<NodeId, History>,
        /// Totem's ring sequence: grows with every configuration, across restarts.
        ring_seq: u64,
    }

    impl Nodes {
        fn step(&mut self, partition: &[u32], quorate: bool) -> BTreeMap<u32, Vec<Event>> {
            self.ring_seq += 4;
            let ring = RingId {
                rep: NodeId(partition[0]),
                seq: self.ring_seq,
            };
            let members = set(partition);
            let announced: BTreeMap<NodeId, History> = members
                .iter()
                .map(|n| (*n, self.state.get(n).cloned().unwrap_or_default()))
                .collect();
            let mut out = BTreeMap::new();
            let mut states = Vec::new();
            for &n in &members {
                let (s, ev) = decide(n, ring, &members, &announced, quorate);
                states.push((n, s));
                out.insert(n.0, ev);
            }
            // Every member of the partition reaches the same state but for nothing.
            for w in states.windows(2) {
                assert_eq!(w[0].1, w[1].1, "members of one partition disagree");
            }
            for (n, s) in states {
                self.state.insert(n, s);
            }
            out
        }
    }

    fn b(node: u32, born_on: u32) -> Born {
        Born {
            node: NodeId(node),
            born_on,
        }
    }

    #[test]
    fn first_membership_has_sequence_one_and_grows_by_one() {
        let mut c = Nodes::default();
        let ev = c.step(&[1, 2, 3], true);
        for e in ev.values() {
            assert_eq!(
                e,
                &vec![Event::NewMembership {
                    seq: 1,
                    members: vec![b(1, 1), b(2, 1), b(3, 1)],
                    joined: vec![b(1, 1), b(2, 1), b(3, 1)],
                    left: vec![],
                }]
            );
        }
        let ev = c.step(&[1, 2, 3, 4], true);
        assert_eq!(
            ev[&4],
            vec![Event::NewMembership {
                seq: 2,
                members: vec![b(1, 1), b(2, 1), b(3, 1), b(4, 2)],
                joined: vec![b(4, 2)],
                left: vec![],
            }]
        );
        assert_eq!(ev[&1], ev[&4], "every member sees the same event");
    }

    #[test]
    fn oldest_first_order_survives_joins_and_leaves() {
        let mut c = Nodes::default();
        c.step(&[5], true);
        c.step(&[2, 5], true);
        c.step(&[1, 2, 5], true);
        let ev = c.step(&[1, 5], true);
        assert_eq!(
            ev[&1],
            vec![Event::NewMembership {
                seq: 4,
                members: vec![b(5, 1), b(1, 3)],
                joined: vec![],
                left: vec![b(2, 2)],
            }]
        );
    }

    #[test]
    fn minority_is_told_not_primary_and_majority_moves_on() {
        let mut c = Nodes::default();
        c.step(&[1, 2, 3], true);
        let alone = c.step(&[1], false);
        let pair = c.step(&[2, 3], true);
        assert_eq!(
            alone[&1],
            vec![Event::NotPrimary {
                seq: 1,
                members: vec![b(1, 1), b(2, 1), b(3, 1)],
            }]
        );
        assert_eq!(
            pair[&2],
            vec![Event::NewMembership {
                seq: 2,
                members: vec![b(2, 1), b(3, 1)],
                joined: vec![],
                left: vec![b(1, 1)],
            }]
        );
        // Healing: node 1 learns that a primary membership formed without it.
        let healed = c.step(&[1, 2, 3], true);
        assert_eq!(healed[&1], vec![Event::Evicted { seq: 2 }]);
        assert_eq!(
            healed[&2],
            vec![Event::NewMembership {
                seq: 3,
                members: vec![b(2, 1), b(3, 1), b(1, 3)],
                joined: vec![b(1, 3)],
                left: vec![],
            }]
        );
        // The evicted node's state follows the cluster's, so a new subscriber there sees
        // the membership everyone else sees.
        assert_eq!(c.state[&NodeId(1)], c.state[&NodeId(2)]);
    }

    #[test]
    fn the_same_membership_returning_restores_the_primary() {
        let mut c = Nodes::default();
        c.step(&[1, 2, 3], true);
        for n in [1, 2, 3] {
            let ev = c.step(&[n], false);
            assert!(matches!(ev[&n][..], [Event::NotPrimary { seq: 1, .. }]));
        }
        let ev = c.step(&[1, 2, 3], true);
        for n in [1, 2, 3] {
            assert_eq!(
                ev[&n],
                vec![Event::PrimaryRestored {
                    seq: 1,
                    members: vec![b(1, 1), b(2, 1), b(3, 1)],
                }]
            );
        }
    }

    #[test]
    fn a_ring_that_reforms_with_the_same_members_says_nothing() {
        let mut c = Nodes::default();
        c.step(&[1, 2], true);
        let ev = c.step(&[1, 2], true);
        assert!(ev.values().all(Vec::is_empty));
    }

    #[test]
    fn not_primary_is_said_once() {
        let mut c = Nodes::default();
        c.step(&[1, 2, 3], true);
        c.step(&[1], false);
        let again = c.step(&[1], false);
        assert!(again[&1].is_empty());
    }

    #[test]
    fn a_restarted_node_is_new_not_evicted() {
        let mut c = Nodes::default();
        c.step(&[1, 2, 3], true);
        c.step(&[1, 2], true);
        c.state.remove(&NodeId(3)); // restarted: no history
        let ev = c.step(&[1, 2, 3], true);
        assert!(matches!(ev[&3][..], [Event::NewMembership { seq: 3, .. }]));
    }

    #[test]
    fn a_member_that_restarted_while_quorum_was_lost_left_and_joined_again() {
        let mut c = Nodes::default();
        c.step(&[1, 2, 3], true);
        c.step(&[1, 2], true); // 3 crashed: seq 2
        c.step(&[1], false); // 2 crashed: quorum lost
        c.state.remove(&NodeId(2)); // 2 restarts with no history
        let ev = c.step(&[1, 2], true);
        assert_eq!(
            ev[&1],
            vec![Event::NewMembership {
                seq: 3,
                members: vec![b(1, 1), b(2, 3)],
                joined: vec![b(2, 3)],
                left: vec![b(2, 1)],
            }]
        );
        assert_eq!(ev[&1], ev[&2]);
    }

    #[test]
    fn a_primary_of_restarted_nodes_reusing_a_number_still_evicts_the_stale_node() {
        let mut c = Nodes::default();
        c.step(&[1, 2, 3], true); // seq 1 = {1, 2, 3}
        c.step(&[1], false);
        c.state.remove(&NodeId(2));
        c.state.remove(&NodeId(3));
        // Nodes 2 and 3 restarted: with no history they number their primary 1 again,
        // but in a later ring.
        let pair = c.step(&[2, 3], true);
        assert!(matches!(
            pair[&2][..],
            [Event::NewMembership { seq: 1, .. }]
        ));
        let healed = c.step(&[1, 2, 3], true);
        assert_eq!(healed[&1], vec![Event::Evicted { seq: 1 }]);
        assert_eq!(
            healed[&2],
            vec![Event::NewMembership {
                seq: 2,
                members: vec![b(2, 1), b(3, 1), b(1, 2)],
                joined: vec![b(1, 2)],
                left: vec![],
            }]
        );
    }

    #[test]
    fn a_peer_announcing_the_highest_sequence_cannot_overflow_it() {
        let ring = RingId {
            rep: NodeId(1),
            seq: 8,
        };
        let members = set(&[1, 2]);
        let peer = History {
            seq: u32::MAX,
            ring: Some(RingId {
                rep: NodeId(2),
                seq: 4,
            }),
            primary: true,
            members: vec![b(2, u32::MAX)],
        };
        let announced: BTreeMap<NodeId, History> =
            [(NodeId(1), History::default()), (NodeId(2), peer)]
                .into_iter()
                .collect();
        let (state, events) = decide(NodeId(1), ring, &members, &announced, true);
        assert_eq!(state.seq, u32::MAX);
        assert_eq!(
            events,
            vec![Event::NewMembership {
                seq: u32::MAX,
                members: vec![b(1, u32::MAX), b(2, u32::MAX)],
                joined: vec![b(1, u32::MAX)],
                left: vec![],
            }]
        );
    }

    #[test]
    fn a_minority_merging_with_a_stale_node_evicts_the_stale_one() {
        let mut c = Nodes::default();
        c.step(&[1, 2, 3], true);
        c.step(&[1], false);
        c.step(&[2, 3], true); // seq 2 without 1
        c.step(&[2], false);
        let ev = c.step(&[1, 2], false);
        assert_eq!(ev[&1], vec![Event::Evicted { seq: 2 }]);
        assert!(ev[&2].is_empty(), "node 2 was already told NotPrimary");
        assert_eq!(c.state[&NodeId(1)].seq, 2);
    }
}
