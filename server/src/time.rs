//! [`Time`]: the monotonic clock the sans-IO state machines are driven with.
//!
//! The state machines never read a clock: every input carries the current time, so tests and
//! the simulation start at zero, jump ahead and drift clocks at will. The drivers pass
//! microseconds since their own start ([`Clock`]).

use std::fmt;
use std::ops::{Add, Sub};
use std::time::{Duration, Instant};

/// Microseconds on one process's monotonic clock. Only differences between two readings of
/// the same clock mean anything; times are never sent to another process except to be echoed
/// back (lease beacons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d.as_micros().min(u64::MAX as u128) as u64))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(d.as_micros().min(u64::MAX as u128) as u64))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// The drivers' clock: [`Time`] since the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock reading zero now.
    pub fn new() -> Clock {
        Clock { origin: Instant::now() }
    }

    /// The current time.
    pub fn now(&self) -> Time {
        self.at(Instant::now())
    }

    /// `instant` on this clock (zero before the origin).
    pub fn at(&self, instant: Instant) -> Time {
        Time(instant.saturating_duration_since(self.origin).as_micros() as u64)
    }

    /// The instant of `time` on this clock.
    pub fn instant(&self, time: Time) -> Instant {
        self.origin + Duration::from_micros(time.0)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
