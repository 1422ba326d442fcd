//! A timerfd in the mio poll, for open-loop sends: epoll's own timeout has millisecond
//! granularity, far coarser than the spacing of requests at thousands per second.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec,
};

/// A one-shot timer that makes its token readable when it fires.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
    armed_for_ns: Option<u64>,
}

impl Timer {
    /// A disarmed timer registered under `token`.
    ///
    /// # Errors
    /// When the kernel refuses a timerfd or its registration.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Timer> {
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        // Let sleeps end when asked rather than up to 50 us late (the default slack).
        if let Err(e) = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000)) {
            log::debug!("timer slack: {e}");
        }
        Ok(Timer { fd, armed_for_ns: None })
    }

    /// Fires `delay_ns` from now, or at once for 0; replaces any earlier arming. `at_ns` (the
    /// same instant on the caller's clock) avoids re-arming for an unchanged deadline.
    ///
    /// # Errors
    /// When the kernel refuses the setting.
    pub fn arm(&mut self, at_ns: u64, delay_ns: u64) -> io::Result<()> {
        if self.armed_for_ns == Some(at_ns) {
            return Ok(());
        }
        // A zero it_value would disarm the timer, so "now" is one nanosecond.
        let delay_ns = delay_ns.max(1);
        let spec = Itimerspec {
            it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: Timespec {
                tv_sec: (delay_ns / 1_000_000_000) as i64,
                tv_nsec: (delay_ns % 1_000_000_000) as i64,
            },
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        self.armed_for_ns = Some(at_ns);
        Ok(())
    }

    /// Consumes a firing (call on the timer's event).
    pub fn acknowledge(&mut self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut count);
        self.armed_for_ns = None;
    }
}
