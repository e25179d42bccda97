//! Identifiers and time: the small value types every other module speaks in.

use std::fmt;

/// A node's identity on the ring (corosync's `nodeid`). Zero is reserved for "nobody"
/// on the wire, so a `NodeId` is never zero once it has been decoded or configured.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Names one ring: its representative (the lowest member id) and a sequence number that
/// only grows, across restarts too (the daemon persists [`crate::Srp::ring_seq_high`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RingId {
    pub rep: NodeId,
    pub seq: u64,
}

impl RingId {
    /// The ring a node believes in before it has formed any: nobody's, sequence `seq`.
    pub fn initial(me: NodeId, seq: u64) -> Self {
        RingId { rep: me, seq }
    }
}

impl Ord for RingId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.seq, self.rep).cmp(&(other.seq, other.rep))
    }
}

impl PartialOrd for RingId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.rep, self.seq)
    }
}

/// Protocol time in microseconds since an arbitrary origin. Totem never reads a clock:
/// the caller passes the time in, which is what lets a simulator run it on a virtual clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub fn from_millis(ms: u64) -> Self {
        Instant(ms * 1000)
    }
    pub fn as_micros(self) -> u64 {
        self.0
    }
    /// `self + micros`, saturating.
    pub fn plus_micros(self, micros: u64) -> Self {
        Instant(self.0.saturating_add(micros))
    }
    /// Microseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn micros_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A set of nodes kept sorted and free of duplicates: join messages compare such sets
/// for equality, so one canonical form is what makes consensus comparisons cheap and exact.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct NodeSet(Vec<NodeId>);

impl NodeSet {
    pub fn new() -> Self {
        NodeSet(Vec::new())
    }

    /// Accepts `ids` only when strictly increasing (the canonical wire form).
    pub fn from_sorted(ids: Vec<NodeId>) -> Option<Self> {
        if ids.windows(2).all(|w| w[0] < w[1]) {
            Some(NodeSet(ids))
        } else {
            None
        }
    }

    pub fn single(id: NodeId) -> Self {
        NodeSet(vec![id])
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    /// Inserts `id`; returns whether it was new.
    pub fn insert(&mut self, id: NodeId) -> bool {
        match self.0.binary_search(&id) {
            Ok(_) => false,
            Err(pos) => {
                self.0.insert(pos, id);
                true
            }
        }
    }

    pub fn remove(&mut self, id: NodeId) -> bool {
        match self.0.binary_search(&id) {
            Ok(pos) => {
                self.0.remove(pos);
                true
            }
            Err(_) => false,
        }
    }

    /// Adds every member of `other`; returns whether anything was new.
    pub fn union_with(&mut self, other: &NodeSet) -> bool {
        let mut changed = false;
        for &id in &other.0 {
            changed |= self.insert(id);
        }
        changed
    }

    /// The members of `self` that are not in `other`.
    pub fn difference(&self, other: &NodeSet) -> NodeSet {
        NodeSet(
            self.0
                .iter()
                .copied()
                .filter(|id| !other.contains(*id))
                .collect(),
        )
    }

    /// The members of both.
    pub fn intersection(&self, other: &NodeSet) -> NodeSet {
        NodeSet(
            self.0
                .iter()
                .copied()
                .filter(|id| other.contains(*id))
                .collect(),
        )
    }

    pub fn is_subset(&self, other: &NodeSet) -> bool {
        self.0.iter().all(|id| other.contains(*id))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn first(&self) -> Option<NodeId> {
        self.0.first().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.0.iter().copied()
    }

    pub fn as_slice(&self) -> &[NodeId] {
        &self.0
    }

    /// Position of `id` in ring order, if a member.
    pub fn position(&self, id: NodeId) -> Option<usize> {
        self.0.binary_search(&id).ok()
    }

    /// The member after `id` in ring order (wrapping), the token's next hop.
    pub fn successor(&self, id: NodeId) -> Option<NodeId> {
        let pos = self.position(id)?;
        Some(self.0[(pos + 1) % self.0.len()])
    }
}

impl FromIterator<NodeId> for NodeSet {
    fn from_iter<I: IntoIterator<Item = NodeId>>(iter: I) -> Self {
        let mut v: Vec<NodeId> = iter.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        NodeSet(v)
    }
}

impl fmt::Display for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_set_stays_sorted_and_unique() {
        let mut s: NodeSet = [3, 1, 2, 3].into_iter().map(NodeId).collect();
        assert_eq!(s.as_slice(), &[NodeId(1), NodeId(2), NodeId(3)]);
        assert!(!s.insert(NodeId(2)));
        assert!(s.insert(NodeId(0)));
        assert_eq!(s.first(), Some(NodeId(0)));
        assert_eq!(s.successor(NodeId(3)), Some(NodeId(0)));
        assert!(NodeSet::from_sorted(vec![NodeId(2), NodeId(1)]).is_none());
        assert!(NodeSet::from_sorted(vec![NodeId(1), NodeId(1)]).is_none());
    }

    #[test]
    fn ring_ids_order_by_seq_first() {
        let a = RingId {
            rep: NodeId(9),
            seq: 4,
        };
        let b = RingId {
            rep: NodeId(1),
            seq: 8,
        };
        assert!(a < b);
    }
}
