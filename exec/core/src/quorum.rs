//! Quorum: whether the partition this node is in may act for the cluster.
//!
//! Each node has a number of votes; the cluster expects a number of votes in all. A
//! partition is *quorate* (primary) when its members hold a strict majority of the
//! expected votes, so that two disjoint partitions can never both be quorate as long as
//! the expected votes are configured truthfully. The decision is a pure function of the
//! [`QuorumPolicy`] and the members of a regular configuration: every node of a
//! partition runs it on the same members (Totem's agreement) with the same policy (the
//! same `nodelist`/`quorum` configuration), so every node of a partition reaches the same
//! answer without exchanging a message. The registry evaluates it at every regular
//! configuration ([`crate::Registry::quorum`], [`crate::Api::is_quorate`]).
//!
//! Rules, in order:
//!
//! - A node's votes: its entry in the policy's vote table (the configuration's
//!   `nodelist`), else the policy's `default_votes` (the configuration's `quorum.votes`,
//!   1 unless set). Every node applies its own `default_votes` to every unlisted member,
//!   so nodes must agree on that value; there is no vote exchange (corosync's votequorum
//!   messages are not implemented).
//! - Expected votes: the configured expected votes, raised to the votes present in the
//!   partition when more are present (a node was added without updating the
//!   configuration: a majority of a number smaller than what is present is meaningless).
//!   With no expected votes at all ([`QuorumPolicy::expected_votes`] `None`, the daemon's
//!   choice for multicast without a nodelist or `expected_votes`) quorum is not
//!   enforced: every partition is quorate, and that is logged.
//! - Needed: `expected / 2 + 1`, a strict majority.
//! - `two_node`: with exactly 2 expected votes, 1 is enough, so that the surviving node
//!   of a two-node cluster keeps running. Both halves of a split two-node cluster are
//!   then quorate: such clusters need fencing to settle which half survives. Corosync's
//!   `wait_for_all` (a node that starts alone is not quorate until it has once seen all
//!   nodes) is not implemented: it depends on history, not only on the current members,
//!   and would break the "same members, same answer" property above.

use std::collections::BTreeMap;
use std::fmt;

use totem::{NodeId, NodeSet};

/// How votes are counted; built once from the configuration, identical on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumPolicy {
    /// Votes of the nodes listed in the configuration's nodelist.
    pub votes: BTreeMap<NodeId, u32>,
    /// Votes of any node not in `votes`.
    pub default_votes: u32,
    /// Votes the whole cluster holds; `None`: unknown, quorum is not enforced.
    pub expected_votes: Option<u32>,
    /// One vote of two is enough (see the module doc).
    pub two_node: bool,
}

impl Default for QuorumPolicy {
    /// No expected votes: every partition is quorate. What a registry starts with until
    /// the daemon configures it, and what services' unit tests run with.
    fn default() -> Self {
        QuorumPolicy {
            votes: BTreeMap::new(),
            default_votes: 1,
            expected_votes: None,
            two_node: false,
        }
    }
}

/// The quorum of one partition, as [`QuorumPolicy::evaluate`] computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumState {
    /// The partition may act for the cluster.
    pub quorate: bool,
    /// Whether quorum is enforced at all (expected votes are known).
    pub enforced: bool,
    /// Expected votes after raising them to the votes present (0 when not enforced).
    pub expected_votes: u32,
    /// Votes of the partition's members.
    pub total_votes: u32,
    /// Votes a partition needs to be quorate (0 when not enforced).
    pub needed: u32,
    /// The two-node rule applied.
    pub two_node: bool,
}

impl QuorumState {
    /// Before the first regular configuration: no partition, so not quorate.
    pub const NONE: QuorumState = QuorumState {
        quorate: false,
        enforced: false,
        expected_votes: 0,
        total_votes: 0,
        needed: 0,
        two_node: false,
    };
}

impl fmt::Display for QuorumState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.enforced {
            return write!(
                f,
                "{} votes, quorum not enforced (no expected votes configured)",
                self.total_votes
            );
        }
        write!(
            f,
            "{} of {} expected votes, {} needed{}",
            self.total_votes,
            self.expected_votes,
            self.needed,
            if self.two_node { " (two_node)" } else { "" }
        )
    }
}

impl QuorumPolicy {
    /// The votes `node` holds.
    pub fn votes_of(&self, node: NodeId) -> u32 {
        self.votes.get(&node).copied().unwrap_or(self.default_votes)
    }

    /// The quorum of a partition of `members`. Saturating arithmetic: no vote table makes
    /// it overflow or panic.
    pub fn evaluate(&self, members: &NodeSet) -> QuorumState {
        let total_votes = members
            .iter()
            .fold(0u32, |sum, n| sum.saturating_add(self.votes_of(n)));
        let Some(configured) = self.expected_votes else {
            return QuorumState {
                quorate: !members.is_empty(),
                enforced: false,
                expected_votes: 0,
                total_votes,
                needed: 0,
                two_node: false,
            };
        };
        let expected_votes = configured.max(total_votes);
        let two_node = self.two_node && expected_votes == 2;
        let needed = if two_node { 1 } else { expected_votes / 2 + 1 };
        QuorumState {
            quorate: total_votes >= needed,
            enforced: true,
            expected_votes,
            total_votes,
            needed,
            two_node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> NodeSet {
        ids.iter().map(|&n| NodeId(n)).collect()
    }

    fn expecting(n: u32) -> QuorumPolicy {
        QuorumPolicy {
            expected_votes: Some(n),
            ..QuorumPolicy::default()
        }
    }

    #[test]
    fn strict_majority_of_expected_votes() {
        let p = expecting(3);
        assert!(p.evaluate(&set(&[1, 2, 3])).quorate);
        assert!(p.evaluate(&set(&[1, 2])).quorate);
        let one = p.evaluate(&set(&[3]));
        assert!(!one.quorate);
        assert_eq!((one.total_votes, one.expected_votes, one.needed), (1, 3, 2));
        // An even split of four is quorate on neither side.
        let p = expecting(4);
        assert!(!p.evaluate(&set(&[1, 2])).quorate);
        assert!(!p.evaluate(&set(&[3, 4])).quorate);
        assert!(p.evaluate(&set(&[1, 2, 3])).quorate);
        assert_eq!(p.evaluate(&set(&[1])).needed, 3);
    }

    #[test]
    fn votes_come_from_the_table_else_the_default() {
        let p = QuorumPolicy {
            votes: [(NodeId(1), 3), (NodeId(2), 1), (NodeId(3), 1)]
                .into_iter()
                .collect(),
            default_votes: 2,
            expected_votes: Some(5),
            two_node: false,
        };
        // Node 1's three votes carry a majority of five alone; nodes 2 and 3 do not.
        assert!(p.evaluate(&set(&[1])).quorate);
        assert!(!p.evaluate(&set(&[2, 3])).quorate);
        // Unlisted node 9 holds the default two.
        let s = p.evaluate(&set(&[2, 9]));
        assert_eq!(s.total_votes, 3);
        assert!(s.quorate);
    }

    #[test]
    fn expected_votes_rise_to_the_votes_present() {
        let s = expecting(3).evaluate(&set(&[1, 2, 3, 4, 5]));
        assert_eq!((s.expected_votes, s.needed), (5, 3));
        assert!(s.quorate);
    }

    #[test]
    fn two_node_makes_one_of_two_quorate() {
        let p = QuorumPolicy {
            two_node: true,
            ..expecting(2)
        };
        let alone = p.evaluate(&set(&[2]));
        assert!(alone.quorate && alone.two_node);
        assert_eq!(alone.needed, 1);
        // A third node joining lifts expected votes to 3: plain majority again.
        let three = p.evaluate(&set(&[1, 2, 3]));
        assert!(!three.two_node);
        assert_eq!(three.needed, 2);
        // Without two_node one of two is not enough.
        assert!(!expecting(2).evaluate(&set(&[2])).quorate);
    }

    #[test]
    fn without_expected_votes_every_partition_is_quorate() {
        let p = QuorumPolicy::default();
        let s = p.evaluate(&set(&[7]));
        assert!(s.quorate && !s.enforced);
        assert_eq!(s.total_votes, 1);
        assert!(!p.evaluate(&NodeSet::new()).quorate);
        assert!(s.to_string().contains("not enforced"));
    }

    #[test]
    fn huge_vote_tables_saturate_instead_of_overflowing() {
        let p = QuorumPolicy {
            default_votes: u32::MAX,
            expected_votes: Some(u32::MAX),
            ..QuorumPolicy::default()
        };
        let s = p.evaluate(&set(&[1, 2, 3]));
        assert_eq!(s.total_votes, u32::MAX);
        assert!(s.quorate);
    }

    #[test]
    fn display_says_votes_and_needed() {
        let s = expecting(3).evaluate(&set(&[1]));
        assert_eq!(s.to_string(), "1 of 3 expected votes, 2 needed");
    }
}
