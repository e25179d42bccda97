//! Totem's timers and constants, as a user writes them (`TotemConfig`) and as the protocol
//! uses them (`Params`, only made by [`TotemConfig::resolve`], so never unchecked).
//! (Being written: validation, derivations, tests.)

/// Totem settings as written in the `totem { }` section. `None` means "derive it the way
/// corosync documents".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotemConfig {
    pub token_ms: u32,
    pub token_coefficient_ms: u32,
    pub token_retransmit_ms: Option<u32>,
    pub hold_ms: Option<u32>,
    pub join_ms: u32,
    pub consensus_ms: Option<u32>,
    pub merge_ms: u32,
    pub downcheck_ms: u32,
    pub fail_recv_const: u32,
    pub seqno_unchanged_const: u32,
    pub window_size: u32,
    pub max_messages: u32,
    pub miss_count_const: u32,
    pub token_retransmits_before_loss_const: u32,
    pub netmtu: u32,
    pub send_queue_max_msgs: u32,
    pub send_queue_max_bytes: u32,
}

impl Default for TotemConfig {
    fn default() -> Self {
        TotemConfig {
            token_ms: 3000,
            token_coefficient_ms: 650,
            token_retransmit_ms: None,
            hold_ms: None,
            join_ms: 50,
            consensus_ms: None,
            merge_ms: 200,
            downcheck_ms: 1000,
            fail_recv_const: 2500,
            seqno_unchanged_const: 30,
            window_size: 50,
            max_messages: 17,
            miss_count_const: 5,
            token_retransmits_before_loss_const: 4,
            netmtu: 1500,
            send_queue_max_msgs: 16384,
            send_queue_max_bytes: 32 << 20,
        }
    }
}

/// Resolved, validated parameters; times in microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub token_us: u64,
    pub token_retransmit_us: u64,
    pub hold_us: u64,
    pub join_us: u64,
    pub consensus_us: u64,
    pub merge_us: u64,
    pub downcheck_us: u64,
    pub fail_recv_const: u32,
    pub seqno_unchanged_const: u32,
    pub window_size: u32,
    pub max_messages: u32,
    pub miss_count_const: u32,
    pub token_retransmits_before_loss_const: u32,
    /// Largest Totem frame: netmtu less IPv4 and UDP headers.
    pub max_frame_len: usize,
    pub send_queue_max_msgs: u32,
    pub send_queue_max_bytes: u32,
}

impl TotemConfig {
    /// Temporary: derive without validation (replaced by the validating version).
    pub fn resolve(&self, node_count: usize) -> Result<Params, String> {
        let token = self.token_ms as u64
            + (node_count.saturating_sub(2) as u64) * self.token_coefficient_ms as u64;
        let rt = self.token_retransmit_ms.map(|v| v as u64).unwrap_or(
            token * 10 / (self.token_retransmits_before_loss_const as u64 * 10 + 2),
        );
        Ok(Params {
            token_us: token * 1000,
            token_retransmit_us: rt * 1000,
            hold_us: self.hold_ms.map(|v| v as u64 * 1000).unwrap_or(rt * 800),
            join_us: self.join_ms as u64 * 1000,
            consensus_us: self.consensus_ms.map(|v| v as u64).unwrap_or(token * 12 / 10) * 1000,
            merge_us: self.merge_ms as u64 * 1000,
            downcheck_us: self.downcheck_ms as u64 * 1000,
            fail_recv_const: self.fail_recv_const,
            seqno_unchanged_const: self.seqno_unchanged_const,
            window_size: self.window_size,
            max_messages: self.max_messages,
            miss_count_const: self.miss_count_const,
            token_retransmits_before_loss_const: self.token_retransmits_before_loss_const,
            max_frame_len: self.netmtu as usize - 28,
            send_queue_max_msgs: self.send_queue_max_msgs,
            send_queue_max_bytes: self.send_queue_max_bytes,
        })
    }
}
