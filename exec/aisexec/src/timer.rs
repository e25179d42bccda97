//! Waking the event loop to the microsecond.
//!
//! mio waits in whole milliseconds, rounding up, which is fine for Totem's timeouts
//! (tens of milliseconds and up) but would stretch a sub-millisecond one, such as the
//! token linger (400 µs by default), to a full millisecond. A deadline nearer than
//! [`FINE_SPAN`] is therefore also armed on a timerfd registered with the loop, which
//! becomes readable on time; mio's own timeout stays as the fallback.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

/// Deadlines nearer than this are armed on the timerfd; farther ones are left to mio,
/// whose rounding up adds at most a fifth to them.
pub const FINE_SPAN: Duration = Duration::from_millis(5);

/// A one-shot monotonic timerfd.
pub struct FineTimer {
    fd: OwnedFd,
    /// Whether a delay is set (so a far deadline disarms it only once).
    armed: bool,
}

impl FineTimer {
    pub fn new() -> io::Result<FineTimer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(FineTimer { fd, armed: false })
    }

    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Arms the timer to fire `after` from now when that is under [`FINE_SPAN`] (a
    /// zero delay needs no timer: the loop does not wait then); disarms it otherwise.
    pub fn arm(&mut self, after: Option<Duration>) -> io::Result<()> {
        let value = match after {
            Some(d) if !d.is_zero() && d < FINE_SPAN => Timespec {
                tv_sec: 0,
                // Below FINE_SPAN, so below one second.
                tv_nsec: i64::from(d.subsec_nanos()),
            },
            _ if !self.armed => return Ok(()),
            // All zero disarms.
            _ => Timespec::default(),
        };
        self.armed = value != Timespec::default();
        let spec = Itimerspec {
            it_interval: Timespec::default(),
            it_value: value,
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Consumes the expiry after the timer became readable (edge-triggered: the next
    /// expiry signals again only once this one is read).
    pub fn fired(&mut self) {
        self.armed = false;
        let mut buf = [0u8; 8];
        // WouldBlock when it fired before a re-arm reset it: nothing to consume.
        let _ = rustix::io::read(&self.fd, &mut buf);
    }
}
