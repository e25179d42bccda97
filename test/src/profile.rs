//! Totem settings for simulated runs: a fast profile for scenario tests and the seeded
//! draw the swarm uses (mostly fast profiles, sometimes corosync's defaults).

use totem::TotemConfig;

use crate::rng::Rng;

/// A fast profile for scenario tests: a 300 ms token (everything else derived the way
/// corosync does), so a membership change takes about a second of virtual time.
pub fn fast() -> TotemConfig {
    TotemConfig {
        token_ms: 300,
        token_coefficient_ms: 50,
        downcheck_ms: 500,
        ..TotemConfig::default()
    }
}

/// A profile drawn from `rng`, and a one-line description of it. One in seven is
/// corosync's defaults (3 s token); the others have a 200-400 ms token with derived
/// timeouts and varied flow control, frame size and send queue.
pub fn draw(rng: &mut Rng) -> (TotemConfig, String) {
    if rng.chance(1.0 / 7.0) {
        return (TotemConfig::default(), "corosync defaults".to_string());
    }
    let token_ms = rng.range(200, 400) as u32;
    let token_coefficient_ms = *rng.pick(&[0, 20, 50, 100]);
    let join_ms = *rng.pick(&[30, 50, 80]);
    let merge_ms = rng.range(100, 300) as u32;
    let downcheck_ms = rng.range(300, 1000) as u32;
    let (window_size, max_messages) =
        *rng.pick(&[(50, 17), (50, 17), (20, 5), (100, 30), (10, 10)]);
    let netmtu = *rng.pick(&[1500, 1500, 1500, 1200, 9000]);
    let accelerated_window = *rng.pick(&[0, 0, 1, 4, 1000]);
    let linger_us = *rng.pick(&[0, 150, 150, 1000, 10_000]);
    let send_queue_max_msgs = if rng.chance(0.15) {
        64
    } else {
        TotemConfig::default().send_queue_max_msgs
    };
    let cfg = TotemConfig {
        token_ms,
        token_coefficient_ms,
        join_ms,
        merge_ms,
        downcheck_ms,
        window_size,
        max_messages,
        netmtu,
        accelerated_window,
        linger_us,
        send_queue_max_msgs,
        ..TotemConfig::default()
    };
    let desc = format!(
        "token {token_ms} ms (+{token_coefficient_ms}/node), join {join_ms}, merge {merge_ms}, downcheck {downcheck_ms}, \
         window {window_size}/{max_messages}, accelerated {accelerated_window}, linger {linger_us} us, mtu {netmtu}, \
         send queue {send_queue_max_msgs}"
    );
    (cfg, desc)
}
