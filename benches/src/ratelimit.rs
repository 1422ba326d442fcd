//! The open-loop schedule (`--rate`): when each request of a connection is meant to be sent.
//!
//! Requests are due at fixed spacing, whatever the replies do. A request that cannot go at
//! its time (its connection has `-P` requests in flight already, or is reconnecting) goes as
//! soon as it can, and its latency still counts from its intended time: a stall shows up in
//! the latency of every request that should have been sent during it, instead of silently
//! lowering the request rate ("coordinated omission"). The service time, from the actual
//! send, is reported beside it. Once the phase stops sending (`--duration`), what is still
//! due is not sent: the phase counts it ([`Schedule::untaken_between`]) as not sent.

/// The send times of one connection: `start + k * interval` for `k = 0, 1, 2, ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    start_ns: u64,
    interval_ns: f64,
    next: u64,
}

impl Schedule {
    /// The schedule of connection `slot` of `slots` sharing a total of `rate` requests per
    /// second, starting at `start_ns`. Connections are staggered evenly over one interval so
    /// the total is smooth rather than arriving in bursts of `slots`.
    ///
    /// # Panics
    /// If `rate` is not positive and finite or `slots` is 0 (configuration checks both).
    pub fn new(rate: f64, slot: u64, slots: u64, start_ns: u64) -> Schedule {
        assert!(rate.is_finite() && rate > 0.0 && slots > 0, "bad rate {rate} over {slots} connections");
        let interval_ns = slots as f64 * 1e9 / rate;
        let offset = (interval_ns * slot as f64 / slots as f64) as u64;
        Schedule { start_ns: start_ns + offset, interval_ns, next: 0 }
    }

    /// Nanoseconds between two sends of this connection.
    pub fn interval_ns(&self) -> f64 {
        self.interval_ns
    }

    /// The intended time of the next request. Computed from its index rather than by
    /// adding intervals, so rounding never drifts.
    pub fn peek(&self) -> u64 {
        self.start_ns + (self.next as f64 * self.interval_ns) as u64
    }

    /// Whether the next request is due at `now_ns`.
    pub fn is_due(&self, now_ns: u64) -> bool {
        self.peek() <= now_ns
    }

    /// Takes the next request's intended time.
    pub fn take(&mut self) -> u64 {
        let at = self.peek();
        self.next += 1;
        at
    }

    /// How many requests have been taken.
    pub fn taken(&self) -> u64 {
        self.next
    }

    /// The intended time of request `k`.
    fn at(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * self.interval_ns) as u64
    }

    /// The index of the first request intended at or after `t_ns`.
    fn first_at_or_after(&self, t_ns: u64) -> u64 {
        if t_ns <= self.start_ns {
            return 0;
        }
        // An estimate from the spacing, corrected by the exact formula of `peek` (float
        // rounding can put it one off either way).
        let mut k = ((t_ns - self.start_ns) as f64 / self.interval_ns).ceil() as u64;
        while k > 0 && self.at(k - 1) >= t_ns {
            k -= 1;
        }
        while self.at(k) < t_ns {
            k += 1;
        }
        k
    }

    /// How many requests not taken yet are intended in `[from_ns, to_ns)`: those a phase
    /// that stops sending at `to_ns` never sent. Counted, not iterated, so a huge backlog
    /// costs nothing.
    pub fn untaken_between(&self, from_ns: u64, to_ns: u64) -> u64 {
        let first = self.next.max(self.first_at_or_after(from_ns));
        self.first_at_or_after(to_ns).saturating_sub(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_and_stagger() {
        // 1000/s over 4 connections: each sends every 4 ms, offset by 1 ms from the previous.
        let mut a = Schedule::new(1000.0, 0, 4, 0);
        let mut b = Schedule::new(1000.0, 1, 4, 0);
        assert_eq!(a.interval_ns(), 4_000_000.0);
        assert_eq!([a.take(), a.take(), a.take()], [0, 4_000_000, 8_000_000]);
        assert_eq!([b.take(), b.take()], [1_000_000, 5_000_000]);
    }

    #[test]
    fn due_only_once_the_time_has_come() {
        let mut s = Schedule::new(10.0, 0, 1, 500);
        assert!(!s.is_due(499));
        assert!(s.is_due(500));
        s.take();
        assert!(!s.is_due(100_000_499));
        assert!(s.is_due(100_000_500));
    }

    /// A connection that could not send for a while finds every missed request due at once,
    /// each keeping its own intended time: nothing is skipped.
    #[test]
    fn a_stall_leaves_a_backlog_with_the_original_times() {
        let mut s = Schedule::new(1000.0, 0, 1, 0);
        let now = 5_500_000;
        let mut backlog = Vec::new();
        while s.is_due(now) {
            backlog.push(s.take());
        }
        assert_eq!(backlog, [0, 1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000]);
        assert_eq!(s.taken(), 6);
    }

    #[test]
    fn no_drift_over_many_intervals() {
        // 3 per second does not divide a second evenly.
        let mut s = Schedule::new(3.0, 0, 1, 0);
        let mut last = 0;
        for _ in 0..=3_000 {
            last = s.take();
        }
        assert!((last as i64 - 1_000_000_000_000).abs() < 1_000, "3000 intervals end at {last}");
    }

    /// The count of what was never sent agrees with taking the backlog one by one, whatever
    /// the spacing, the window and how much was taken already.
    #[test]
    fn untaken_requests_are_counted_exactly() {
        for (rate, slot, slots, start) in
            [(3.0, 0, 1, 0), (7_000.0, 3, 7, 12_345), (1e6, 9, 10, 1), (0.5, 0, 1, 7)]
        {
            for taken in [0u64, 1, 5, 1000] {
                for (from, to) in [(0, 0), (0, 1_000_000_000), (250_000_000, 2_000_000_001), (5, 4), (0, 3)] {
                    let mut s = Schedule::new(rate, slot, slots, start);
                    for _ in 0..taken {
                        s.take();
                    }
                    let counted = s.untaken_between(from, to);
                    let mut brute = 0;
                    let mut walk = s.clone();
                    while walk.peek() < to {
                        if walk.take() >= from {
                            brute += 1;
                        }
                    }
                    assert_eq!(
                        counted, brute,
                        "rate {rate} slot {slot}/{slots} taken {taken} [{from}, {to})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_total_rate_is_spread_over_connections() {
        let slots = 7;
        let mut sends = 0;
        for slot in 0..slots {
            let mut s = Schedule::new(7_000.0, slot, slots, 0);
            while s.peek() < 1_000_000_000 {
                s.take();
                sends += 1;
            }
        }
        assert_eq!(sends, 7_000);
    }
}
