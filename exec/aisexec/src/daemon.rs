//! The executive's one thread: a mio event loop that owns Totem, the service registry,
//! the UDP transport and the IPC server, and moves data between them.
//!
//! Each turn: wait for a socket, a signal or the earliest protocol timer; feed what
//! arrived (datagrams to Totem, requests to the registry); run due timers; then pump:
//! Totem's deliveries and configuration changes go to the registry, the registry's
//! effects go to Totem (multicasts) and to the connections (responses, callbacks), and
//! Totem's frames go on the wire; until nothing moves. Nothing here decides anything: the
//! protocol and the services are sans-IO state machines, and this is their driver.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use ais_exec::{Effect, Registry};
use ais_proto::ipc::CALLBACK_FLAG;
use bytes::Bytes;
use log::{debug, error, info, warn};
use mio::{Events, Interest, Poll, Token};
use totem::{ConfKind, Dest, Event, Instant, McastError, NodeId, Srp};

use crate::ipc::{IpcServer, ReadUntil};
use crate::runtime::RuntimeDir;
use crate::timer::FineTimer;
use crate::transport::Transport;

const UDP: Token = Token(0);
const LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const FINE_TIMER: Token = Token(3);
/// Client output, in bytes over all connections, small enough to write before the
/// frames of a token visit.
const SMALL_OUTPUT: usize = 16 << 10;
/// Connection tokens start here (slab slot + CONN_BASE).
pub const CONN_BASE: usize = 16;

/// Everything the loop drives, built by `run` from the configuration.
pub struct Daemon {
    pub me: NodeId,
    pub srp: Srp,
    pub registry: Registry,
    pub transport: Transport,
    pub ipc: IpcServer,
    pub runtime: RuntimeDir,
    /// Most messages Totem's send queue holds (for the registry's flow control).
    pub send_queue_max: usize,
}

/// Monotonic protocol time: microseconds since the executive started.
struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> Instant {
        Instant(self.0.elapsed().as_micros() as u64)
    }
}

impl Daemon {
    /// Runs until SIGTERM or SIGINT, then announces the leave and returns.
    pub fn run(mut self) -> io::Result<()> {
        let clock = Clock(std::time::Instant::now());
        let mut poll = Poll::new()?;
        poll.registry()
            .register(self.transport.socket(), UDP, Interest::READABLE)?;
        poll.registry()
            .register(self.ipc.listener(), LISTENER, Interest::READABLE)?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let mut fine_timer = FineTimer::new()?;
        fine_timer.register(poll.registry(), FINE_TIMER)?;
        let mut fine_timer_failed = false;
        let mut events = Events::with_capacity(256);
        // Registry effects that Totem's queue could not take yet, in order.
        let mut pending: VecDeque<Bytes> = VecDeque::new();
        let mut persisted_seq = self.runtime.load_ring_seq();
        let mut shutdown = false;
        info!(target: "main", "node {} running on {}", self.me, self.transport.local_addr());

        while !shutdown {
            let now = clock.now();
            let deadline = [self.srp.poll_timeout(), self.registry.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let timeout = deadline.map(|d| Duration::from_micros(d.0.saturating_sub(now.0)));
            if let Err(e) = fine_timer.arm(timeout) {
                if !fine_timer_failed {
                    fine_timer_failed = true;
                    warn!(target: "main", "timerfd: {e}; short timers may wait up to 1 ms longer");
                }
            }
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = clock.now();
            for ev in events.iter() {
                match ev.token() {
                    UDP => loop {
                        match self.transport.recv() {
                            Ok(Some(frame)) => self.srp.handle_datagram(now, frame),
                            Ok(None) => break,
                            Err(e) => {
                                warn!(target: "totem", "receive: {e}");
                                break;
                            }
                        }
                    },
                    LISTENER => self.ipc.accept(poll.registry()),
                    FINE_TIMER => fine_timer.fired(),
                    SIGNALS => {
                        for sig in signals.pending() {
                            info!(target: "main", "signal {sig}: leaving the ring and exiting");
                            shutdown = true;
                        }
                    }
                    token => {
                        let Some(slot) = self.ipc.slot_of(token) else {
                            continue;
                        };
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            let mut room = self.mcast_room(&pending);
                            let until = if ev.is_read_closed() || ev.is_error() {
                                ReadUntil::WouldBlock
                            } else {
                                ReadUntil::ShortRead
                            };
                            self.ipc.readable(
                                slot,
                                poll.registry(),
                                &mut self.registry,
                                now,
                                &mut room,
                                until,
                            );
                        }
                        if ev.is_writable() {
                            self.ipc.flush(slot, poll.registry(), &mut self.registry);
                        }
                    }
                }
            }
            if deadline.is_some_and(|d| d <= now) {
                self.srp.handle_timeout(now);
                self.registry.handle_timeout(now);
            }
            self.pump(now, &poll, &mut pending);
            // Requests that had to wait go on as soon as Totem has room again.
            while self.ipc.has_parked() {
                let mut room = self.mcast_room(&pending);
                if room == 0 {
                    break;
                }
                let now = clock.now();
                if self
                    .ipc
                    .resume(poll.registry(), &mut self.registry, now, &mut room)
                    == 0
                {
                    break;
                }
                self.pump(now, &poll, &mut pending);
            }
            // Everything this turn queued for the clients, one write per connection.
            self.ipc.flush_dirty(poll.registry(), &mut self.registry);
            if self.srp.receivers_behind() && !self.ipc.receivers_behind() {
                // Those writes let the clients catch up: the token waits no longer.
                self.pump(now, &poll, &mut pending);
                self.ipc.flush_dirty(poll.registry(), &mut self.registry);
            }
            let seq = self.srp.ring_seq_high();
            if seq != persisted_seq {
                match self.runtime.store_ring_seq(seq) {
                    Ok(()) => persisted_seq = seq,
                    Err(e) => error!(target: "main", "cannot persist ring seq {seq}: {e}"),
                }
            }
        }

        self.srp.leave(clock.now());
        self.pump(clock.now(), &poll, &mut pending);
        self.ipc.flush_dirty(poll.registry(), &mut self.registry);
        info!(target: "main", "node {} left the ring", self.me);
        Ok(())
    }

    /// How many more multicasts Totem's send queue takes now: none while multicasts
    /// the registry made still wait for room.
    fn mcast_room(&self, pending: &VecDeque<Bytes>) -> usize {
        if pending.is_empty() {
            self.send_queue_max
                .saturating_sub(self.srp.send_queue_len())
        } else {
            0
        }
    }

    /// Moves everything that is ready until nothing moves any more.
    fn pump(&mut self, now: Instant, poll: &Poll, pending: &mut VecDeque<Bytes>) {
        let mut to_self: Vec<Bytes> = Vec::new();
        loop {
            // A client far behind on its deliveries holds the token here, and so the
            // ring, until it has read most of them (IpcServer::receivers_behind).
            self.srp
                .set_receivers_behind(now, self.ipc.receivers_behind());
            let mut progress = self.deliver(poll, pending);
            while let Some(msg) = pending.front() {
                match self.srp.mcast(msg.clone()) {
                    Ok(()) => {
                        pending.pop_front();
                        progress = true;
                    }
                    Err(McastError::QueueFull) => break,
                    Err(McastError::TooLarge) => {
                        warn!(target: "main", "dropping a {}-byte executive message: too large for Totem", msg.len());
                        pending.pop_front();
                    }
                }
            }
            let mut token_sent = false;
            while let Some(t) = self.srp.poll_transmit(now) {
                progress = true;
                match t.dest {
                    Dest::Unicast(n) if n == self.me => to_self.push(t.data),
                    dest => {
                        token_sent |= matches!(dest, Dest::Unicast(_));
                        self.transport.send(dest, &t.data);
                    }
                }
            }
            if !token_sent {
                // No token went out (a visit that keeps it, or frames sent while we
                // hold it): its own messages are delivered here already, and the
                // client that waits for them is woken before the frames' system call,
                // which on a loaded host may hand this core to the receivers it wakes.
                // Nothing waits for the frames but the other members, and they get
                // them a few microseconds later.
                progress |= self.deliver(poll, pending);
            }
            // A little output for the clients (a few deliveries: the latency case) goes
            // first, so a client runs while the frames are on their way; a burst goes
            // after them, so that the token is not held up behind it.
            if self.ipc.dirty_output_below(SMALL_OUTPUT) {
                self.ipc.flush_dirty(poll.registry(), &mut self.registry);
            }
            // This visit's frames and the token, in order, in one system call.
            self.transport.flush();
            for frame in to_self.drain(..) {
                progress = true;
                self.srp.handle_datagram(now, frame);
            }
            if !progress {
                break;
            }
        }
        debug_assert!(to_self.is_empty());
        if !pending.is_empty() {
            debug!(target: "main", "{} executive messages wait for room in Totem's queue", pending.len());
        }
    }

    /// Hands Totem's deliveries and configuration changes to the registry and carries
    /// out the registry's effects: multicasts join `pending`, answers and callbacks are
    /// queued on their connections. Returns whether anything moved.
    fn deliver(&mut self, poll: &Poll, pending: &mut VecDeque<Bytes>) -> bool {
        let mut progress = false;
        while let Some(ev) = self.srp.poll_event() {
            progress = true;
            match ev {
                Event::Deliver { origin, msg } => self.registry.deliver(origin, msg),
                Event::ConfChange(c) => {
                    if c.kind == ConfKind::Regular {
                        info!(target: "totem", "configuration {}: members {} joined {}",
                            c.ring_id, c.members, c.joined);
                    } else {
                        info!(target: "totem", "transitional configuration {}: members {} left {}",
                            c.ring_id, c.members, c.left);
                    }
                    self.registry.confchg(&c);
                }
            }
        }
        if self.registry.host_status_wanted() {
            // An operator query (admin service): only then copy counters.
            progress = true;
            crate::status::refresh(
                &mut self.registry,
                &self.srp,
                &self.transport,
                self.ipc.stats(),
            );
        }
        while let Some(effect) = self.registry.poll_effect() {
            progress = true;
            match effect {
                Effect::Mcast { msg, .. } => pending.push_back(msg),
                Effect::Response {
                    conn,
                    id,
                    error,
                    body,
                } => self
                    .ipc
                    .send(conn, id, error, &body, poll.registry(), &mut self.registry),
                Effect::Dispatch {
                    conn,
                    id,
                    body,
                    tail,
                } => self.ipc.send_parts(
                    conn,
                    id | CALLBACK_FLAG,
                    ais_proto::SaError::Ok,
                    (&body, &tail),
                    poll.registry(),
                    &mut self.registry,
                ),
                Effect::Disconnect { conn } => {
                    self.ipc.close_conn(
                        conn,
                        poll.registry(),
                        &mut self.registry,
                        "closed by its service",
                    );
                }
            }
        }
        progress
    }
}
