//! Packing and fragmentation (being written).
/// Largest message `mcast` accepts.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;
