//! Totem's timers and constants, as a user writes them ([`TotemConfig`], the `totem { }`
//! section) and as the protocol uses them ([`Params`], made only by
//! [`TotemConfig::resolve`], so never unchecked).
//!
//! Defaults and derivations follow corosync.conf(5):
//!
//! - `token` grows with the ring: `token + (node_count − 2) × token_coefficient` once the
//!   ring has three or more members (`token_coefficient: 0` turns this off). Every other
//!   derivation uses this effective token.
//! - `token_retransmit = token / (token_retransmits_before_loss_const + 0.2)`, so the
//!   token is retransmitted that many times before it is declared lost.
//! - `hold = 0.8 × token_retransmit − 10 ms`, never below 1 ms. Corosync subtracts one
//!   kernel tick (1000/HZ ms with HZ = 100) so that the hold timer fires before the
//!   retransmit timer even when timers are only as precise as a tick; we keep the 10 ms so
//!   rings behave as corosync's do, and clamp at 1 ms where a short token would push the
//!   result to zero or below.
//! - `consensus = 1.2 × token`.
//!
//! Validation refuses, with the key a user must change, anything the ring cannot run
//! with: a consensus timeout shorter than corosync allows, timers in the wrong order
//! (a hold or retransmit timer that outlasts the token timeout declares a token lost that
//! is only being held), zero constants, a flow-control window the token cannot carry, an
//! MTU too small for a Totem header, a send queue smaller than one message. Where corosync
//! has no limit or a coarser one we chose: `token` at least 10 ms (corosync: 30 ms, three
//! ticks), `token_retransmit` at least 2 ms and `hold` at least 1 ms (so the hold timer
//! always fits below the retransmit timer), every timer at most one hour, `window_size` at
//! most 10 000, and `max_messages` above `window_size` refused rather than warned about.

use std::fmt;

use crate::wire::{MAX_FRAME_LEN, MAX_MEMBERS, MCAST_OVERHEAD_MAX};
use crate::MAX_MESSAGE_LEN;

/// Bytes the IPv4 (20) and UDP (8) headers take from every datagram.
const IP_UDP_HEADERS: usize = 28;
/// Payload a frame must still hold beyond the largest Totem header.
const MIN_FRAME_PAYLOAD: usize = 512;

/// Shortest `token` accepted, in milliseconds.
pub const MIN_TOKEN_MS: u32 = 10;
/// Shortest `token_retransmit` accepted, in milliseconds: `hold` (at least 1 ms) must fit
/// below it.
pub const MIN_TOKEN_RETRANSMIT_MS: u32 = 2;
/// Shortest `hold` accepted, in milliseconds.
pub const MIN_HOLD_MS: u32 = 1;
/// Longest timer accepted (one hour), in milliseconds. A larger value means failures go
/// undetected in practice and is almost always a unit mistake; it also keeps every sum of
/// times far from overflowing.
pub const MAX_TIMEOUT_MS: u32 = 3_600_000;
/// Largest `window_size` accepted.
pub const MAX_WINDOW_SIZE: u32 = 10_000;
/// Longest `linger_us`, in microseconds (10 ms): short against the token timeout (at
/// least MIN_TOKEN_MS); at the shortest token_retransmit the predecessor may resend the
/// token meanwhile, which the lingering member drops as a duplicate.
pub const MAX_LINGER_US: u64 = 10_000;
/// A visit lingers at most this many times `linger_us` in all, so a local application
/// that answers every delivery at once sends many messages per visit, and others wait
/// a bounded time.
pub const LINGER_VISIT_FACTOR: u64 = 64;
/// Smallest `netmtu` accepted: the IPv4 minimum (576), raised if needed so that a frame
/// holds the largest Totem header and 512 bytes of payload.
pub const MIN_NETMTU: u32 = {
    let needed = IP_UDP_HEADERS + MCAST_OVERHEAD_MAX + MIN_FRAME_PAYLOAD;
    if needed > 576 {
        needed as u32
    } else {
        576
    }
};
/// Largest `netmtu` accepted: the largest UDP datagram over IPv4.
pub const MAX_NETMTU: u32 = (MAX_FRAME_LEN + IP_UDP_HEADERS) as u32;
const _: () = assert!(MIN_NETMTU >= 576 && MIN_NETMTU < MAX_NETMTU && MAX_NETMTU <= 65_535);
/// Smallest `send_queue_max_bytes` accepted: a whole largest message (1 MiB) plus room for
/// its packing and fragment headers.
pub const MIN_SEND_QUEUE_BYTES: u32 = (MAX_MESSAGE_LEN + (64 << 10)) as u32;

/// Key [`ConfigError::key`] names when the member count passed to
/// [`TotemConfig::resolve`] is impossible; it is not a `totem { }` key.
const NODE_COUNT: &str = "node_count";

/// Totem settings as written in the `totem { }` section; times in milliseconds. `None`
/// means "derive it the way corosync documents" (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotemConfig {
    /// `token`: time without the token before it is declared lost and a new membership
    /// is formed (default 3000 ms); the base of every derived timer.
    pub token_ms: u32,
    /// `token_coefficient`: added to `token` for every member beyond two, since a longer
    /// ring takes longer to pass the token around (default 650 ms; 0 disables).
    pub token_coefficient_ms: u32,
    /// `token_retransmit`: time without the token before the last holder sends it again
    /// (default token / (token_retransmits_before_loss_const + 0.2)).
    pub token_retransmit_ms: Option<u32>,
    /// `hold`: how long an idle ring's member keeps the token before passing it on, to
    /// save CPU and network (default 0.8 × token_retransmit − 10 ms, at least 1 ms).
    pub hold_ms: Option<u32>,
    /// `join`: time to wait for join messages before sending ours again while forming a
    /// membership (default 50 ms).
    pub join_ms: u32,
    /// `consensus`: time to reach agreement on a new membership before giving up and
    /// starting over (default 1.2 × token; corosync refuses less).
    pub consensus_ms: Option<u32>,
    /// `merge`: period between checks for another ring on the network to merge with
    /// (default 200 ms).
    pub merge_ms: u32,
    /// `downcheck`: period between checks whether a failed network interface is back
    /// (default 1000 ms).
    pub downcheck_ms: u32,
    /// `fail_recv_const`: token rotations in which a missing message is not received
    /// before the ring gives up on it and forms a new membership (default 2500).
    pub fail_recv_const: u32,
    /// `seqno_unchanged_const`: token rotations without new messages before the ring is
    /// idle and the hold timer starts (default 30).
    pub seqno_unchanged_const: u32,
    /// `window_size`: most messages the whole ring may send in one token rotation, to
    /// keep receive buffers from overflowing (default 1000; corosync's 50 halves the
    /// throughput of 1 KiB messages on a LAN, test/bench/RESULTS.md; the daemon lowers
    /// it to what the receive buffer the kernel grants holds).
    pub window_size: u32,
    /// `max_messages`: most messages one member may send per token visit (default 500;
    /// corosync's is 17).
    pub max_messages: u32,
    /// `miss_count_const`: token visits a missing message waits before this member asks
    /// for it again, so a message still in flight is not requested (default 5).
    pub miss_count_const: u32,
    /// `token_retransmits_before_loss_const`: token retransmissions before the token is
    /// declared lost; sets the default token_retransmit (default 4).
    pub token_retransmits_before_loss_const: u32,
    /// `netmtu`: largest IP datagram Totem sends, headers included; frames are sized to
    /// it (default 1500, corosync's). Keep it at the link's MTU: the daemon then sends a
    /// token visit's equal frames to one destination as one segmented packet (UDP GSO),
    /// which costs the kernel about what one datagram does; that carried 1 KiB messages
    /// at 2x and 8 KiB ones at 4x the rate of 9000-byte frames fragmented by IP
    /// (test/bench/RESULTS.md). Above the link's MTU, IP fragments each frame and the
    /// frames go out one datagram each; a lost fragment loses the frame.
    pub netmtu: u32,
    /// `accelerated_window`: the accelerated ring (Babay and Amir, ICDCS 2016): of the
    /// new frames a member sends in a token visit, up to this many go out after the
    /// token instead of before it, so the next member starts its own visit while they
    /// are still on the wire. Order is unchanged (the token already carries their
    /// numbers); off during recovery. 0 (the default) is the classic ring.
    pub accelerated_window: u32,
    /// `linger_us`: microseconds a member that has just multicast everything it had
    /// keeps the token, when the token says no other member has messages waiting, so
    /// that a message its local application sends in answer to what it just received
    /// (the next request of a client that has one outstanding at a time) goes out at
    /// once instead of one whole rotation later. Each message sent re-arms it, up to
    /// `linger_visit_us` per visit. A member that gets nothing in that time passes the
    /// token on; a member that queues messages meanwhile asks for the token with a
    /// hold cancel and gets it at once. 0 turns it off; at most 10,000 (default 400:
    /// above the turnaround of a local client, a few process wake-ups, even on a
    /// loaded machine; 150 missed often enough to double the p99 latency,
    /// test/bench/RESULTS.md).
    pub linger_us: u32,
    /// `send_queue_max_msgs`: most local messages waiting for the token; beyond it
    /// `mcast` refuses, so a fast sender is pushed back (default 16384).
    pub send_queue_max_msgs: u32,
    /// `send_queue_max_bytes`: most bytes of local messages waiting for the token, for
    /// the same reason (default 8 MiB, about two token visits of full frames: more
    /// only adds queueing delay and memory under a flood; at least 1 MiB + 64 KiB so
    /// one largest message fits).
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
            window_size: 1000,
            max_messages: 500,
            miss_count_const: 5,
            token_retransmits_before_loss_const: 4,
            netmtu: 1500,
            accelerated_window: 0,
            linger_us: 400,
            send_queue_max_msgs: 16384,
            send_queue_max_bytes: 8 << 20,
        }
    }
}

/// Resolved, validated parameters; times in microseconds. Made only by
/// [`TotemConfig::resolve`], so holding one means every rule there holds.
// A private field rather than `#[non_exhaustive]`, which would still let the rest of this
// crate build unchecked `Params`.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Effective token timeout (coefficient applied).
    pub token_us: u64,
    /// Below `token_us`.
    pub token_retransmit_us: u64,
    /// Below `token_retransmit_us`, at least 1 ms.
    pub hold_us: u64,
    /// Below `consensus_us`.
    pub join_us: u64,
    /// At least 1.2 × `token_us`.
    pub consensus_us: u64,
    pub merge_us: u64,
    pub downcheck_us: u64,
    pub fail_recv_const: u32,
    pub seqno_unchanged_const: u32,
    pub window_size: u32,
    /// At most `window_size`.
    pub max_messages: u32,
    pub miss_count_const: u32,
    pub token_retransmits_before_loss_const: u32,
    /// Largest Totem frame: netmtu less IPv4 and UDP headers. At least
    /// `wire::MCAST_OVERHEAD_MAX` + 512, at most `wire::MAX_FRAME_LEN`.
    pub max_frame_len: usize,
    /// New frames of a visit sent after the token (0: none).
    pub accelerated_window: u32,
    /// How long a sender that emptied its queue keeps the token waiting for its next
    /// message (0: never); at most [`MAX_LINGER_US`].
    pub linger_us: u64,
    /// How long one visit may keep lingering in all: [`LINGER_VISIT_FACTOR`] ×
    /// `linger_us`, at most half of `token_retransmit_us`. The most another member's
    /// new message waits extra for the token at this member's visit (a wait for
    /// receivers that are behind, `receivers_visit_us`, runs within the same budget).
    pub linger_visit_us: u64,
    /// How long after the token's arrival a visit may keep it while this node's
    /// applications are behind on their deliveries ([`crate::Srp::set_receivers_behind`]):
    /// half of `token_retransmit_us`, so the member before us does not resend the token
    /// (and, on a ring of n members, at most `token_us` / 2n).
    pub receivers_visit_us: u64,
    pub send_queue_max_msgs: u32,
    /// At least one whole largest message with its overhead.
    pub send_queue_max_bytes: u32,
    /// Keeps `Params` from being built anywhere but [`TotemConfig::resolve`].
    _sealed: (),
}

impl TotemConfig {
    /// A faster profile for a switched LAN with low, steady latency: `token` 300 ms (a
    /// lost node is noticed in about a tenth of the default time) and `token_coefficient`
    /// 50 ms (so a 16-node ring still waits only 1 s); token_retransmit, hold and
    /// consensus are derived from them, everything else keeps its default. Not for
    /// WANs or virtual machines that may pause for hundreds of milliseconds.
    pub fn lan_profile() -> Self {
        TotemConfig {
            token_ms: 300,
            token_coefficient_ms: 50,
            ..TotemConfig::default()
        }
    }

    /// Derives what is unset and checks everything, for a ring configured with
    /// `node_count` members (1 for a one-node cluster). The error names the first key
    /// a user must change.
    pub fn resolve(&self, node_count: usize) -> Result<Params, ConfigError> {
        if node_count == 0 {
            return Err(ConfigError::count(
                NODE_COUNT,
                0,
                "must be at least 1: list this node among the ring's members",
            ));
        }
        if node_count > MAX_MEMBERS {
            return Err(ConfigError::count(
                NODE_COUNT,
                node_count as u64,
                format!("must be at most {MAX_MEMBERS}, the most members a ring can hold"),
            ));
        }

        // Constants first: token_retransmits_before_loss_const feeds a derivation.
        for (key, value, counts) in [
            (
                "token_retransmits_before_loss_const",
                self.token_retransmits_before_loss_const,
                "token retransmissions before the token is declared lost",
            ),
            (
                "fail_recv_const",
                self.fail_recv_const,
                "token rotations a missing message may stay missing",
            ),
            (
                "seqno_unchanged_const",
                self.seqno_unchanged_const,
                "idle token rotations before the token is held",
            ),
            (
                "miss_count_const",
                self.miss_count_const,
                "token visits before a missing message is requested again",
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::count(
                    key,
                    0,
                    format!("must be at least 1 (it counts {counts})"),
                ));
            }
        }

        let token = self.resolve_token(node_count)?;
        let token_us = token.us;
        let token_retransmit_us = self.resolve_token_retransmit(&token)?;
        let hold_us = self.resolve_hold(token_retransmit_us)?;
        let consensus_us = self.resolve_consensus(&token)?;
        let join_us = self.resolve_join(consensus_us)?;
        let merge_us = check_period("merge", self.merge_ms)?;
        let downcheck_us = check_period("downcheck", self.downcheck_ms)?;
        self.check_flow_control()?;
        if self.linger_us > MAX_LINGER_US as u32 {
            return Err(ConfigError::count(
                "linger_us",
                self.linger_us.into(),
                format!(
                    "must be at most {MAX_LINGER_US} (microseconds): every other member's \
                     new messages may wait this long"
                ),
            ));
        }
        let max_frame_len = self.resolve_max_frame_len()?;
        self.check_send_queue()?;

        Ok(Params {
            token_us,
            token_retransmit_us,
            hold_us,
            join_us,
            consensus_us,
            merge_us,
            downcheck_us,
            fail_recv_const: self.fail_recv_const,
            seqno_unchanged_const: self.seqno_unchanged_const,
            window_size: self.window_size,
            max_messages: self.max_messages,
            miss_count_const: self.miss_count_const,
            token_retransmits_before_loss_const: self.token_retransmits_before_loss_const,
            max_frame_len,
            accelerated_window: self.accelerated_window,
            linger_us: u64::from(self.linger_us),
            linger_visit_us: (u64::from(self.linger_us) * LINGER_VISIT_FACTOR)
                .min(token_retransmit_us / 2),
            receivers_visit_us: token_retransmit_us / 2,
            send_queue_max_msgs: self.send_queue_max_msgs,
            send_queue_max_bytes: self.send_queue_max_bytes,
            _sealed: (),
        })
    }

    /// The effective token: `token` plus `token_coefficient` for each member beyond two.
    fn resolve_token(&self, node_count: usize) -> Result<EffectiveToken, ConfigError> {
        if self.token_ms < MIN_TOKEN_MS {
            return Err(ConfigError::time(
                "token",
                ms_to_us(self.token_ms),
                false,
                format!(
                    "must be at least {MIN_TOKEN_MS} ms: shorter, ordinary scheduling \
                     delays would be taken for a lost token"
                ),
            ));
        }
        if self.token_ms > MAX_TIMEOUT_MS {
            return Err(too_long("token", self.token_ms));
        }
        let extra_nodes = node_count.saturating_sub(2) as u64;
        let coefficient_us = ms_to_us(self.token_coefficient_ms);
        // Bounded: extra_nodes < MAX_MEMBERS and each term is below 2^32 ms.
        let us = ms_to_us(self.token_ms) + extra_nodes * coefficient_us;
        let token = EffectiveToken {
            us,
            base_ms: self.token_ms,
            coefficient_ms: self.token_coefficient_ms,
            node_count,
        };
        if us > ms_to_us(MAX_TIMEOUT_MS) {
            return Err(ConfigError::time(
                "token_coefficient",
                coefficient_us,
                false,
                format!(
                    "makes the token timeout {}, over the {MAX_TIMEOUT_MS} ms limit: \
                     lower token_coefficient or token",
                    token.describe()
                ),
            ));
        }
        Ok(token)
    }

    fn resolve_token_retransmit(&self, token: &EffectiveToken) -> Result<u64, ConfigError> {
        let key = "token_retransmit";
        let Some(ms) = self.token_retransmit_ms else {
            // token / (c + 0.2), computed as token × 10 / (10c + 2) to stay in integers.
            let c = u64::from(self.token_retransmits_before_loss_const);
            let us = token.us * 10 / (c * 10 + 2);
            if us < ms_to_us(MIN_TOKEN_RETRANSMIT_MS) {
                return Err(ConfigError::time(
                    key,
                    us,
                    true,
                    format!(
                        "must be at least {MIN_TOKEN_RETRANSMIT_MS} ms; it is derived as \
                         token ({}) / (token_retransmits_before_loss_const ({c}) + 0.2): raise \
                         token, lower token_retransmits_before_loss_const or set \
                         token_retransmit",
                        token.describe()
                    ),
                ));
            }
            return Ok(us);
        };
        let us = ms_to_us(ms);
        if ms < MIN_TOKEN_RETRANSMIT_MS {
            return Err(ConfigError::time(
                key,
                us,
                false,
                format!(
                    "must be at least {MIN_TOKEN_RETRANSMIT_MS} ms, so that hold (at least \
                     {MIN_HOLD_MS} ms) fits below it"
                ),
            ));
        }
        if us >= token.us {
            return Err(ConfigError::time(
                key,
                us,
                false,
                format!(
                    "must be less than token ({}): otherwise the token is declared lost \
                     before it is ever retransmitted",
                    token.describe()
                ),
            ));
        }
        Ok(us)
    }

    fn resolve_hold(&self, token_retransmit_us: u64) -> Result<u64, ConfigError> {
        let Some(ms) = self.hold_ms else {
            // 0.8 × token_retransmit − 10 ms, at least 1 ms; below token_retransmit because
            // that is at least MIN_TOKEN_RETRANSMIT_MS > MIN_HOLD_MS.
            let us = (token_retransmit_us * 4 / 5)
                .saturating_sub(10_000)
                .max(ms_to_us(MIN_HOLD_MS));
            debug_assert!(us < token_retransmit_us);
            return Ok(us);
        };
        let us = ms_to_us(ms);
        if ms < MIN_HOLD_MS {
            return Err(ConfigError::time(
                "hold",
                us,
                false,
                format!("must be at least {MIN_HOLD_MS} ms"),
            ));
        }
        if us >= token_retransmit_us {
            let derived = if self.token_retransmit_ms.is_none() {
                ", derived from token"
            } else {
                ""
            };
            return Err(ConfigError::time(
                "hold",
                us,
                false,
                format!(
                    "must be less than token_retransmit ({} ms{derived}): a token held that \
                     long on an idle ring is retransmitted, then declared lost, while it is \
                     only being held",
                    fmt_ms(token_retransmit_us)
                ),
            ));
        }
        Ok(us)
    }

    fn resolve_consensus(&self, token: &EffectiveToken) -> Result<u64, ConfigError> {
        // 1.2 × token, exact in microseconds because token is whole milliseconds.
        let minimum_us = token.us * 6 / 5;
        let Some(ms) = self.consensus_ms else {
            return Ok(minimum_us);
        };
        let us = ms_to_us(ms);
        if us < minimum_us {
            let why = if token.coefficient_applied() {
                format!("{} ms; token is {}", fmt_ms(minimum_us), token.describe())
            } else {
                format!("{} ms", fmt_ms(minimum_us))
            };
            return Err(ConfigError::time(
                "consensus",
                us,
                false,
                format!("must be at least 1.2 × token ({why})"),
            ));
        }
        if ms > MAX_TIMEOUT_MS {
            return Err(too_long("consensus", ms));
        }
        Ok(us)
    }

    fn resolve_join(&self, consensus_us: u64) -> Result<u64, ConfigError> {
        let us = ms_to_us(self.join_ms);
        if self.join_ms == 0 {
            return Err(ConfigError::time(
                "join",
                0,
                false,
                "must be at least 1 ms: it paces the join messages that form a membership",
            ));
        }
        if us >= consensus_us {
            let derived = if self.consensus_ms.is_none() {
                ", derived as 1.2 × token"
            } else {
                ""
            };
            return Err(ConfigError::time(
                "join",
                us,
                false,
                format!(
                    "must be less than consensus ({} ms{derived}): a node must be able to \
                     resend its join message before consensus gives up",
                    fmt_ms(consensus_us)
                ),
            ));
        }
        Ok(us)
    }

    fn check_flow_control(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_WINDOW_SIZE).contains(&self.window_size) {
            return Err(ConfigError::count(
                "window_size",
                self.window_size.into(),
                format!(
                    "must be between 1 and {MAX_WINDOW_SIZE}: it is the most messages the \
                     whole ring sends in one token rotation"
                ),
            ));
        }
        if self.max_messages == 0 {
            return Err(ConfigError::count(
                "max_messages",
                0,
                "must be at least 1: it is the most messages a member sends per token visit",
            ));
        }
        if self.max_messages > self.window_size {
            return Err(ConfigError::count(
                "max_messages",
                self.max_messages.into(),
                format!(
                    "must be at most window_size ({}): one member cannot send more in a \
                     token visit than the whole ring may in a rotation; raise window_size \
                     or lower max_messages",
                    self.window_size
                ),
            ));
        }
        Ok(())
    }

    fn resolve_max_frame_len(&self) -> Result<usize, ConfigError> {
        if self.netmtu < MIN_NETMTU {
            return Err(ConfigError::count(
                "netmtu",
                self.netmtu.into(),
                format!(
                    "must be at least {MIN_NETMTU}: a frame (netmtu less {IP_UDP_HEADERS} \
                     bytes of IPv4 and UDP headers) must hold the largest Totem header \
                     ({MCAST_OVERHEAD_MAX} bytes) and {MIN_FRAME_PAYLOAD} bytes of payload"
                ),
            ));
        }
        if self.netmtu > MAX_NETMTU {
            return Err(ConfigError::count(
                "netmtu",
                self.netmtu.into(),
                format!("must be at most {MAX_NETMTU}, the largest IPv4 datagram"),
            ));
        }
        Ok(self.netmtu as usize - IP_UDP_HEADERS)
    }

    fn check_send_queue(&self) -> Result<(), ConfigError> {
        if self.send_queue_max_msgs == 0 {
            return Err(ConfigError::count(
                "send_queue_max_msgs",
                0,
                "must be at least 1: otherwise no message can ever be sent",
            ));
        }
        if self.send_queue_max_bytes < MIN_SEND_QUEUE_BYTES {
            return Err(ConfigError::count(
                "send_queue_max_bytes",
                self.send_queue_max_bytes.into(),
                format!(
                    "must be at least {MIN_SEND_QUEUE_BYTES} (1 MiB + 64 KiB): the queue \
                     must hold one largest message ({MAX_MESSAGE_LEN} bytes) with its \
                     packing overhead"
                ),
            ));
        }
        Ok(())
    }
}

/// The token timeout after the coefficient, with what it came from for messages.
struct EffectiveToken {
    us: u64,
    base_ms: u32,
    coefficient_ms: u32,
    node_count: usize,
}

impl EffectiveToken {
    fn coefficient_applied(&self) -> bool {
        self.node_count >= 3 && self.coefficient_ms > 0
    }

    /// "3000 ms", or "3650 ms = 3000 + (3 − 2) × token_coefficient 650" when the
    /// coefficient applies, so a user sees where an unexpected value came from.
    fn describe(&self) -> String {
        if self.coefficient_applied() {
            format!(
                "{} ms = {} + ({} − 2) × token_coefficient {}",
                fmt_ms(self.us),
                self.base_ms,
                self.node_count,
                self.coefficient_ms
            )
        } else {
            format!("{} ms", fmt_ms(self.us))
        }
    }
}

/// A period (`merge`, `downcheck`) must be at least 1 ms and at most the limit.
fn check_period(key: &'static str, ms: u32) -> Result<u64, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::time(key, 0, false, "must be at least 1 ms"));
    }
    if ms > MAX_TIMEOUT_MS {
        return Err(too_long(key, ms));
    }
    Ok(ms_to_us(ms))
}

fn too_long(key: &'static str, ms: u32) -> ConfigError {
    ConfigError::time(
        key,
        ms_to_us(ms),
        false,
        format!("must be at most {MAX_TIMEOUT_MS} ms (one hour); values are in milliseconds"),
    )
}

fn ms_to_us(ms: u32) -> u64 {
    u64::from(ms) * 1000
}

/// Microseconds as milliseconds, without a fraction when there is none: "3600", "1.904".
fn fmt_ms(us: u64) -> String {
    let (whole, frac) = (us / 1000, us % 1000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_owned()
    }
}

/// A setting that must change before the ring can run: which key, its value and why.
///
/// Displays as `totem.consensus = 3000 must be at least 1.2 × token (3600 ms)`; a value
/// the user did not write but that was derived says so (`= 1.904 (derived)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    key: &'static str,
    value: Value,
    problem: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// A count, a size or a number of bytes, as written.
    Plain(u64),
    /// A time, kept in microseconds so a derived value shows its fraction of a ms.
    Time { us: u64, derived: bool },
}

impl ConfigError {
    fn count(key: &'static str, value: u64, problem: impl Into<String>) -> Self {
        ConfigError {
            key,
            value: Value::Plain(value),
            problem: problem.into(),
        }
    }

    fn time(key: &'static str, us: u64, derived: bool, problem: impl Into<String>) -> Self {
        ConfigError {
            key,
            value: Value::Time { us, derived },
            problem: problem.into(),
        }
    }

    /// The offending key as written in the `totem { }` section (`token`, `consensus`,
    /// `window_size`, ...), or `node_count` when the member count given to
    /// [`TotemConfig::resolve`] is impossible.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The offending value in the key's own unit: milliseconds for times (rounded down
    /// when derived), else the count or byte size.
    pub fn value(&self) -> u64 {
        match self.value {
            Value::Plain(v) => v,
            Value::Time { us, .. } => us / 1000,
        }
    }

    /// Whether the value was derived rather than written by the user.
    pub fn is_derived(&self) -> bool {
        matches!(self.value, Value::Time { derived: true, .. })
    }

    /// What is wrong and what to do, without the key and value
    /// (e.g. "must be at least 1.2 × token (3600 ms)").
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key != NODE_COUNT {
            f.write_str("totem.")?;
        }
        write!(f, "{} = ", self.key)?;
        match self.value {
            Value::Plain(v) => write!(f, "{v}")?,
            Value::Time { us, derived } => {
                f.write_str(&fmt_ms(us))?;
                if derived {
                    f.write_str(" (derived)")?;
                }
            }
        }
        write!(f, " {}", self.problem)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> u64 {
        v * 1000
    }

    fn resolve_err(cfg: &TotemConfig, nodes: usize) -> ConfigError {
        match cfg.resolve(nodes) {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_on_one_node_are_corosyncs() {
        let p = TotemConfig::default().resolve(1).unwrap();
        assert_eq!(p.token_us, ms(3000));
        // 3000 / 4.2 = 714.2857 ms
        assert_eq!(p.token_retransmit_us, 714_285);
        // 0.8 × 714.285 − 10 ms
        assert_eq!(p.hold_us, 571_428 - 10_000);
        assert_eq!(p.consensus_us, ms(3600));
        assert_eq!(p.join_us, ms(50));
        assert_eq!(p.merge_us, ms(200));
        assert_eq!(p.downcheck_us, ms(1000));
        assert_eq!(p.fail_recv_const, 2500);
        assert_eq!(p.seqno_unchanged_const, 30);
        assert_eq!(p.window_size, 1000);
        assert_eq!(p.max_messages, 500);
        assert_eq!(p.miss_count_const, 5);
        assert_eq!(p.token_retransmits_before_loss_const, 4);
        assert_eq!(p.max_frame_len, 1472);
        assert_eq!(p.send_queue_max_msgs, 16384);
        assert_eq!(p.send_queue_max_bytes, 8 << 20);
    }

    #[test]
    fn two_nodes_get_no_coefficient() {
        let p = TotemConfig::default().resolve(2).unwrap();
        assert_eq!(p.token_us, ms(3000));
        assert_eq!(p.consensus_us, ms(3600));
    }

    #[test]
    fn three_nodes_add_one_coefficient() {
        let p = TotemConfig::default().resolve(3).unwrap();
        assert_eq!(p.token_us, ms(3650));
        assert_eq!(p.consensus_us, ms(4380));
        // 3650 / 4.2 ≈ 869.05 ms
        assert_eq!(p.token_retransmit_us, 869_047);
        assert_eq!(p.hold_us, 695_237 - 10_000);
    }

    #[test]
    fn each_member_beyond_two_adds_a_coefficient() {
        let p = TotemConfig::default().resolve(5).unwrap();
        assert_eq!(p.token_us, ms(3000 + 3 * 650));
        assert_eq!(p.consensus_us, ms(3000 + 3 * 650) * 6 / 5);
    }

    #[test]
    fn zero_coefficient_disables_growth() {
        let cfg = TotemConfig {
            token_coefficient_ms: 0,
            ..TotemConfig::default()
        };
        let p = cfg.resolve(16).unwrap();
        assert_eq!(p.token_us, ms(3000));
        assert_eq!(p.consensus_us, ms(3600));
    }

    #[test]
    fn retransmit_follows_retransmits_before_loss() {
        let cfg = TotemConfig {
            token_ms: 1000,
            token_retransmits_before_loss_const: 9,
            ..TotemConfig::default()
        };
        // 1000 / 9.2 = 108.695 ms
        assert_eq!(cfg.resolve(1).unwrap().token_retransmit_us, 108_695);
    }

    #[test]
    fn derived_hold_never_drops_below_one_ms() {
        let cfg = TotemConfig {
            token_ms: MIN_TOKEN_MS,
            join_ms: 5,
            ..TotemConfig::default()
        };
        let p = cfg.resolve(1).unwrap();
        // 10 / 4.2 = 2.38 ms; 0.8 × 2.38 − 10 < 0, clamped.
        assert_eq!(p.token_retransmit_us, 2380);
        assert_eq!(p.hold_us, ms(1));
        assert!(p.hold_us < p.token_retransmit_us);
    }

    #[test]
    fn explicit_values_win_over_derivation() {
        let cfg = TotemConfig {
            token_retransmit_ms: Some(500),
            hold_ms: Some(200),
            consensus_ms: Some(10_000),
            ..TotemConfig::default()
        };
        let p = cfg.resolve(3).unwrap();
        assert_eq!(p.token_us, ms(3650));
        assert_eq!(p.token_retransmit_us, ms(500));
        assert_eq!(p.hold_us, ms(200));
        assert_eq!(p.consensus_us, ms(10_000));
    }

    #[test]
    fn explicit_retransmit_drives_derived_hold() {
        let cfg = TotemConfig {
            token_retransmit_ms: Some(100),
            ..TotemConfig::default()
        };
        assert_eq!(cfg.resolve(1).unwrap().hold_us, ms(70));
    }

    #[test]
    fn consensus_may_equal_one_point_two_tokens() {
        let cfg = TotemConfig {
            consensus_ms: Some(4380),
            ..TotemConfig::default()
        };
        assert_eq!(cfg.resolve(3).unwrap().consensus_us, ms(4380));
    }

    #[test]
    fn boundaries_that_are_accepted() {
        let cfg = TotemConfig {
            max_messages: 50,
            window_size: 50,
            netmtu: MIN_NETMTU,
            send_queue_max_bytes: MIN_SEND_QUEUE_BYTES,
            send_queue_max_msgs: 1,
            ..TotemConfig::default()
        };
        let p = cfg.resolve(1).unwrap();
        assert!(p.max_frame_len >= MCAST_OVERHEAD_MAX + 512);
        let cfg = TotemConfig {
            netmtu: MAX_NETMTU,
            window_size: MAX_WINDOW_SIZE,
            ..TotemConfig::default()
        };
        assert_eq!(cfg.resolve(1).unwrap().max_frame_len, MAX_FRAME_LEN);
        assert!(TotemConfig::default().resolve(MAX_MEMBERS).is_ok());
    }

    #[test]
    fn largest_netmtu_is_the_largest_ipv4_datagram() {
        assert_eq!(MAX_NETMTU, 65_535);
    }

    /// Every rule, each with the key it must name.
    #[test]
    fn each_rule_rejects_with_its_key() {
        type Edit = fn(&mut TotemConfig);
        let cases: &[(&str, usize, Edit)] = &[
            ("token", 1, |c| c.token_ms = MIN_TOKEN_MS - 1),
            ("token", 1, |c| c.token_ms = MAX_TIMEOUT_MS + 1),
            ("token_coefficient", 100, |c| {
                c.token_coefficient_ms = 100_000
            }),
            ("token_retransmit", 1, |c| {
                c.token_retransmit_ms = Some(3000)
            }),
            ("token_retransmit", 3, |c| {
                c.token_retransmit_ms = Some(3650)
            }),
            ("token_retransmit", 1, |c| c.token_retransmit_ms = Some(1)),
            ("token_retransmit", 1, |c| {
                c.token_ms = 10;
                c.token_retransmits_before_loss_const = 5;
            }),
            ("hold", 1, |c| c.hold_ms = Some(0)),
            ("hold", 1, |c| c.hold_ms = Some(715)),
            ("hold", 1, |c| {
                c.token_retransmit_ms = Some(100);
                c.hold_ms = Some(100);
            }),
            ("consensus", 1, |c| c.consensus_ms = Some(3599)),
            ("consensus", 3, |c| c.consensus_ms = Some(4379)),
            ("consensus", 1, |c| {
                c.consensus_ms = Some(MAX_TIMEOUT_MS + 1)
            }),
            ("join", 1, |c| c.join_ms = 0),
            ("join", 1, |c| c.join_ms = 3600),
            ("join", 1, |c| {
                c.consensus_ms = Some(4000);
                c.join_ms = 4000;
            }),
            ("merge", 1, |c| c.merge_ms = 0),
            ("merge", 1, |c| c.merge_ms = MAX_TIMEOUT_MS + 1),
            ("downcheck", 1, |c| c.downcheck_ms = 0),
            ("downcheck", 1, |c| c.downcheck_ms = MAX_TIMEOUT_MS + 1),
            ("fail_recv_const", 1, |c| c.fail_recv_const = 0),
            ("seqno_unchanged_const", 1, |c| c.seqno_unchanged_const = 0),
            ("miss_count_const", 1, |c| c.miss_count_const = 0),
            ("token_retransmits_before_loss_const", 1, |c| {
                c.token_retransmits_before_loss_const = 0
            }),
            ("window_size", 1, |c| c.window_size = 0),
            ("window_size", 1, |c| c.window_size = MAX_WINDOW_SIZE + 1),
            ("max_messages", 1, |c| c.max_messages = 0),
            ("max_messages", 1, |c| c.max_messages = c.window_size + 1),
            ("netmtu", 1, |c| c.netmtu = MIN_NETMTU - 1),
            ("netmtu", 1, |c| c.netmtu = 575),
            ("netmtu", 1, |c| c.netmtu = MAX_NETMTU + 1),
            ("send_queue_max_msgs", 1, |c| c.send_queue_max_msgs = 0),
            ("send_queue_max_bytes", 1, |c| {
                c.send_queue_max_bytes = MIN_SEND_QUEUE_BYTES - 1
            }),
            ("node_count", 0, |_| {}),
            ("node_count", MAX_MEMBERS + 1, |_| {}),
        ];
        for (key, nodes, edit) in cases {
            let mut cfg = TotemConfig::default();
            edit(&mut cfg);
            let err = resolve_err(&cfg, *nodes);
            assert_eq!(err.key(), *key, "{err}");
        }
    }

    #[test]
    fn message_names_key_value_and_limit() {
        let cfg = TotemConfig {
            consensus_ms: Some(3000),
            ..TotemConfig::default()
        };
        let err = resolve_err(&cfg, 1);
        assert_eq!(err.value(), 3000);
        assert!(!err.is_derived());
        assert_eq!(
            err.to_string(),
            "totem.consensus = 3000 must be at least 1.2 × token (3600 ms)"
        );
    }

    #[test]
    fn message_explains_the_coefficient() {
        let cfg = TotemConfig {
            consensus_ms: Some(3600),
            ..TotemConfig::default()
        };
        let err = resolve_err(&cfg, 3);
        assert_eq!(
            err.to_string(),
            "totem.consensus = 3600 must be at least 1.2 × token \
             (4380 ms; token is 3650 ms = 3000 + (3 − 2) × token_coefficient 650)"
        );
    }

    #[test]
    fn derived_value_is_marked_and_keeps_its_fraction() {
        let cfg = TotemConfig {
            token_ms: 10,
            token_retransmits_before_loss_const: 5,
            ..TotemConfig::default()
        };
        let err = resolve_err(&cfg, 1);
        assert!(err.is_derived());
        assert_eq!(err.value(), 1);
        let text = err.to_string();
        assert!(
            text.starts_with("totem.token_retransmit = 1.923 (derived) must be at least 2 ms"),
            "{text}"
        );
    }

    #[test]
    fn node_count_error_is_not_a_totem_key() {
        let err = resolve_err(&TotemConfig::default(), 0);
        assert!(err.to_string().starts_with("node_count = 0 "), "{err}");
    }

    #[test]
    fn error_is_a_std_error() {
        let err: Box<dyn std::error::Error> = Box::new(resolve_err(
            &TotemConfig {
                window_size: 0,
                ..TotemConfig::default()
            },
            1,
        ));
        assert!(err.to_string().starts_with("totem.window_size = 0 "));
    }

    #[test]
    fn lan_profile_resolves_for_every_ring_size() {
        let cfg = TotemConfig::lan_profile();
        let one = cfg.resolve(1).unwrap();
        assert_eq!(one.token_us, ms(300));
        assert_eq!(one.consensus_us, ms(360));
        // 300 / 4.2 = 71.428 ms; hold 0.8 × that − 10 ms.
        assert_eq!(one.token_retransmit_us, 71_428);
        assert_eq!(one.hold_us, 57_142 - 10_000);
        assert_eq!(cfg.resolve(16).unwrap().token_us, ms(300 + 14 * 50));
        for nodes in 1..=MAX_MEMBERS {
            let p = cfg.resolve(nodes).unwrap();
            assert!(p.hold_us < p.token_retransmit_us);
            assert!(p.token_retransmit_us < p.token_us);
            assert!(p.join_us < p.consensus_us);
            assert!(p.consensus_us * 5 >= p.token_us * 6);
        }
    }

    #[test]
    fn fmt_ms_drops_a_zero_fraction() {
        assert_eq!(fmt_ms(3_600_000), "3600");
        assert_eq!(fmt_ms(1_923), "1.923");
        assert_eq!(fmt_ms(1_500), "1.5");
        assert_eq!(fmt_ms(0), "0");
    }
}
