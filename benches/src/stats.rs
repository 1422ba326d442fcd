//! What a phase measured: HDR latency histograms per command, error counts by kind, and a
//! per-second series. Each thread records into its own [`Recorder`]; the threads' results
//! are merged with [`PhaseStats::merge`] at the end of the phase.
//!
//! Times are nanoseconds since the phase's thread clock started; latencies are recorded in
//! nanoseconds with three significant digits.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use wire::Status;

use crate::workload::Cmd;

/// The longest latency a histogram holds (one hour); longer ones are recorded as this.
pub const MAX_LATENCY_NS: u64 = 3_600_000_000_000;
const SIGFIGS: u8 = 3;
/// The per-second series keeps two significant digits: enough for p50/p99 trends.
const SERIES_SIGFIGS: u8 = 2;
const NS_PER_SEC: u64 = 1_000_000_000;

/// A latency histogram in nanoseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGFIGS).expect("constant histogram bounds are valid")
}

/// A histogram at the series' precision (two significant digits), also used for the
/// progress line's latency.
pub fn new_series_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SERIES_SIGFIGS)
        .expect("constant histogram bounds are valid")
}

/// Everything that counts as an error, by kind. Each is counted once per request it cost,
/// except `Connect` and `Closed`, which count events on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// A connection attempt failed.
    Connect,
    /// The server closed or reset a connection, or a read or write on it failed.
    Closed,
    /// A request got no reply within `--timeout-ms` (or was still unanswered that long after
    /// the phase stopped sending). Requests an open-loop schedule could not send in time are
    /// not timeouts: they are counted in [`PhaseStats::not_sent`].
    Timeout,
    /// A request was in flight on a connection that closed.
    Unanswered,
    /// A reply frame failed to decode (bad magic, checksum, lengths).
    Decode,
    /// A reply's id was not the id of the oldest request in flight.
    IdMismatch,
    /// A reply that does not fit the request (not a reply frame, another command, a RESP
    /// type the command never returns, a reply with nothing in flight).
    Unexpected,
    /// A Tandem reply with an error status (or NOT_FOUND to anything but a GET).
    Status(Status),
    /// A RESP error reply (`-ERR ...`).
    RespError,
    /// Bytes that are not RESP.
    Protocol,
    /// `--wait N`: Redis's `WAIT` answered that fewer than N replicas acknowledged the write.
    WaitShort,
    /// `--verify`: a GET returned something other than the last value written.
    Verify,
    /// No reply at all for twice the timeout while requests were due: the phase gave up.
    Stalled,
    /// `--framing compact`: a connection reopened during the run asked for compact framing
    /// and the server did not agree (UNKNOWN_COMMAND, or it chose fixed). The connection is
    /// closed and nothing is sent on it in fixed framing. (Before the run, a refusal stops
    /// the run instead.)
    HelloRefused,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Closed => f.write_str("closed"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Unanswered => f.write_str("unanswered"),
            ErrorKind::Decode => f.write_str("decode"),
            ErrorKind::IdMismatch => f.write_str("id_mismatch"),
            ErrorKind::Unexpected => f.write_str("unexpected_reply"),
            ErrorKind::Status(status) => write!(f, "status:{status}"),
            ErrorKind::RespError => f.write_str("resp_error"),
            ErrorKind::Protocol => f.write_str("protocol"),
            ErrorKind::WaitShort => f.write_str("wait_short"),
            ErrorKind::Verify => f.write_str("verify"),
            ErrorKind::Stalled => f.write_str("stalled"),
            ErrorKind::HelloRefused => f.write_str("hello_refused"),
        }
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorCounts(BTreeMap<ErrorKind, u64>);

impl ErrorCounts {
    /// Counts `n` errors of `kind`.
    pub fn add(&mut self, kind: ErrorKind, n: u64) {
        if n > 0 {
            *self.0.entry(kind).or_default() += n;
        }
    }

    /// All errors of all kinds.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// The count of one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0.get(&kind).copied().unwrap_or(0)
    }

    /// Kinds and counts, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (kind, n) in other.iter() {
            self.add(kind, n);
        }
    }

    /// Kind names to counts, for reports.
    pub fn by_name(&self) -> BTreeMap<String, u64> {
        self.iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// One command's replies.
#[derive(Debug, Clone)]
pub struct CmdStats {
    /// Successful replies (including GET misses).
    pub ops: u64,
    /// GETs answered NOT_FOUND (RESP: nil).
    pub misses: u64,
    /// From the intended send time to the reply. In closed loop the intended time is the
    /// actual send time; in open loop it is the schedule's, so waiting behind a slow reply
    /// counts (no coordinated omission).
    pub latency: Histogram<u64>,
    /// From the actual send to the reply: the uncorrected service time.
    pub service: Histogram<u64>,
}

impl CmdStats {
    fn new() -> CmdStats {
        CmdStats { ops: 0, misses: 0, latency: new_histogram(), service: new_histogram() }
    }

    fn merge(&mut self, other: &CmdStats) {
        self.ops += other.ops;
        self.misses += other.misses;
        // Same bounds on both sides, so adding cannot fail; saturate rather than lose counts.
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
    }
}

/// One second of the series.
#[derive(Debug, Clone)]
pub struct SeriesBucket {
    /// Successful replies completed in this second.
    pub ops: u64,
    /// Errors counted in this second.
    pub errors: u64,
    /// Their latencies (two significant digits).
    pub latency: Histogram<u64>,
}

impl SeriesBucket {
    fn new() -> SeriesBucket {
        SeriesBucket { ops: 0, errors: 0, latency: new_series_histogram() }
    }
}

/// What one thread, or after merging all threads, measured in one phase.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    /// Per command, indexed by [`Cmd::index`].
    pub cmds: [CmdStats; 3],
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Requests sent in the measured part of the phase.
    pub requests: u64,
    /// Bytes of those requests as written to the socket (RESP: with their `WAIT`).
    pub bytes_sent: u64,
    /// Bytes of the replies to those requests as read from the socket, whatever they said.
    pub bytes_received: u64,
    /// Open loop: requests the schedule meant to send in the measured part of the phase
    /// that were never sent (their connection was full or down until the phase stopped
    /// sending). Not errors: the target rate was not reached.
    pub not_sent: u64,
    /// Open loop: the time the schedule had to send in, from the start of measurement to the
    /// end of sending (`--duration`, or the interrupt); without either (`-n`), `elapsed_ns`.
    /// Merged: the longest thread's.
    pub window_ns: u64,
    /// From the start of measurement to the last measured reply (the phase's length when
    /// nothing was measured); for merged stats, the longest thread's.
    pub elapsed_ns: u64,
    /// Second `i` covers `[i, i + 1)` seconds after the start of measurement.
    pub series: Vec<SeriesBucket>,
    /// The run was interrupted while this phase ran: the figures are partial. Merged: any.
    pub interrupted: bool,
    /// The run was interrupted before this phase started: nothing was sent. Not merged:
    /// [`crate::driver::Runner`] sets it when every thread skipped.
    pub skipped: bool,
}

impl PhaseStats {
    /// Nothing measured yet.
    pub fn new() -> PhaseStats {
        PhaseStats {
            cmds: [CmdStats::new(), CmdStats::new(), CmdStats::new()],
            errors: ErrorCounts::default(),
            requests: 0,
            bytes_sent: 0,
            bytes_received: 0,
            not_sent: 0,
            window_ns: 0,
            elapsed_ns: 0,
            series: Vec::new(),
            interrupted: false,
            skipped: false,
        }
    }

    /// Adds another thread's stats for the same phase.
    pub fn merge(&mut self, other: &PhaseStats) {
        self.interrupted |= other.interrupted;
        for (mine, theirs) in self.cmds.iter_mut().zip(&other.cmds) {
            mine.merge(theirs);
        }
        self.errors.merge(&other.errors);
        self.requests += other.requests;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.not_sent += other.not_sent;
        self.window_ns = self.window_ns.max(other.window_ns);
        self.elapsed_ns = self.elapsed_ns.max(other.elapsed_ns);
        if self.series.len() < other.series.len() {
            self.series.resize_with(other.series.len(), SeriesBucket::new);
        }
        for (mine, theirs) in self.series.iter_mut().zip(&other.series) {
            mine.ops += theirs.ops;
            mine.errors += theirs.errors;
            let _ = mine.latency.add(&theirs.latency);
        }
    }

    /// Successful replies of all commands.
    pub fn ops(&self) -> u64 {
        self.cmds.iter().map(|c| c.ops).sum()
    }

    /// GET misses.
    pub fn misses(&self) -> u64 {
        self.cmds.iter().map(|c| c.misses).sum()
    }

    /// All commands' latencies in one histogram.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for cmd in &self.cmds {
            let _ = all.add(&cmd.latency);
        }
        all
    }

    /// All commands' service times in one histogram.
    pub fn service(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for cmd in &self.cmds {
            let _ = all.add(&cmd.service);
        }
        all
    }

    /// Open loop: requests sent per second of the sending window (`requests / window_ns`),
    /// the figure to hold against the target rate.
    pub fn sent_per_sec(&self) -> f64 {
        if self.window_ns == 0 {
            0.0
        } else {
            self.requests as f64 * NS_PER_SEC as f64 / self.window_ns as f64
        }
    }

    /// Bytes sent per successful reply, `None` without any.
    pub fn bytes_sent_per_op(&self) -> Option<f64> {
        let ops = self.ops();
        (ops > 0).then(|| self.bytes_sent as f64 / ops as f64)
    }

    /// Bytes received per successful reply, `None` without any.
    pub fn bytes_received_per_op(&self) -> Option<f64> {
        let ops = self.ops();
        (ops > 0).then(|| self.bytes_received as f64 / ops as f64)
    }

    /// Successful replies per second of `elapsed_ns`.
    pub fn ops_per_sec(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.ops() as f64 * NS_PER_SEC as f64 / self.elapsed_ns as f64
        }
    }
}

impl Default for PhaseStats {
    fn default() -> Self {
        PhaseStats::new()
    }
}

/// Latency percentiles of one histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    /// Number of values.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest value.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// The percentiles of `h` (all zero when empty). Values are the highest value
    /// equivalent to the quantile's bucket, as HdrHistogram reports them.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Records one thread's phase as it happens.
#[derive(Debug)]
pub struct Recorder {
    stats: PhaseStats,
    /// Thread clock time when measurement starts (after warm-up).
    measure_start_ns: u64,
    last_completion_ns: u64,
    current: SeriesBucket,
    current_second: u64,
    /// Totals published to the progress line so far.
    published: (u64, u64),
    /// Latencies recorded since the progress line last took them.
    recent: Histogram<u64>,
}

impl Recorder {
    /// A recorder whose measurement starts at `measure_start_ns` on the thread's clock.
    pub fn new(measure_start_ns: u64) -> Recorder {
        Recorder {
            stats: PhaseStats::new(),
            measure_start_ns,
            last_completion_ns: measure_start_ns,
            current: SeriesBucket::new(),
            current_second: 0,
            published: (0, 0),
            recent: new_series_histogram(),
        }
    }

    fn bucket(&mut self, now_ns: u64) -> &mut SeriesBucket {
        let second = now_ns.saturating_sub(self.measure_start_ns) / NS_PER_SEC;
        while self.current_second < second {
            let done = std::mem::replace(&mut self.current, SeriesBucket::new());
            self.stats.series.push(done);
            self.current_second += 1;
        }
        &mut self.current
    }

    /// Counts a request sent in the measured part of the phase.
    pub fn count_request(&mut self) {
        self.stats.requests += 1;
    }

    /// Counts `bytes` written for a measured request.
    pub fn count_sent(&mut self, bytes: usize) {
        self.stats.bytes_sent += bytes as u64;
    }

    /// Counts `bytes` read for a reply to a measured request.
    pub fn count_received(&mut self, bytes: usize) {
        self.stats.bytes_received += bytes as u64;
    }

    /// Records a successful reply to a measured request: `intended_ns` is when it should
    /// have been sent, `sent_ns` when it was, `now_ns` when the reply was read.
    pub fn record_reply(&mut self, cmd: Cmd, miss: bool, intended_ns: u64, sent_ns: u64, now_ns: u64) {
        let latency = now_ns.saturating_sub(intended_ns).max(1);
        let service = now_ns.saturating_sub(sent_ns).max(1);
        let stats = &mut self.stats.cmds[cmd.index()];
        stats.ops += 1;
        stats.misses += u64::from(miss);
        stats.latency.saturating_record(latency);
        stats.service.saturating_record(service);
        self.last_completion_ns = self.last_completion_ns.max(now_ns);
        self.recent.saturating_record(latency);
        let bucket = self.bucket(now_ns);
        bucket.ops += 1;
        bucket.latency.saturating_record(latency);
    }

    /// Counts `n` requests of the open-loop schedule that were never sent.
    pub fn record_not_sent(&mut self, n: u64) {
        self.stats.not_sent += n;
    }

    /// Counts `n` errors of `kind` at `now_ns`.
    pub fn record_error(&mut self, kind: ErrorKind, n: u64, now_ns: u64) {
        if n == 0 {
            return;
        }
        log::debug!("error kind={kind} count={n}");
        self.stats.errors.add(kind, n);
        self.bucket(now_ns).errors += n;
    }

    /// Successful replies and errors recorded since the last call.
    pub fn take_progress(&mut self) -> (u64, u64) {
        let now = (self.stats.ops(), self.stats.errors.total());
        let delta = (now.0 - self.published.0, now.1 - self.published.1);
        self.published = now;
        delta
    }

    /// Moves the latencies recorded since the last call into `into` (for the progress
    /// line); does nothing when there are none.
    pub fn take_recent_latency(&mut self, into: &mut Histogram<u64>) {
        if !self.recent.is_empty() {
            let _ = into.add(&self.recent);
            self.recent.reset();
        }
    }

    /// Ends the phase at `end_ns` and returns what was measured.
    pub fn finish(mut self, end_ns: u64) -> PhaseStats {
        let measured_end = if self.stats.ops() > 0 { self.last_completion_ns } else { end_ns };
        self.stats.elapsed_ns = measured_end.saturating_sub(self.measure_start_ns);
        // Without an end of sending (`-n`) the window is the measured span; the driver sets
        // it to the duration's (or the interrupt's) otherwise.
        self.stats.window_ns = self.stats.elapsed_ns;
        // Close the series at the last second that saw anything, or the phase's end.
        let last = measured_end.max(self.last_completion_ns);
        let _ = self.bucket(last);
        let current = std::mem::replace(&mut self.current, SeriesBucket::new());
        if current.ops > 0 || current.errors > 0 || self.stats.series.is_empty() {
            self.stats.series.push(current);
        }
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            h.record(us * 1000).expect("in range");
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 10_000);
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001;
        assert!(close(p.p50, 5_000_000), "p50 {}", p.p50);
        assert!(close(p.p90, 9_000_000), "p90 {}", p.p90);
        assert!(close(p.p99, 9_900_000), "p99 {}", p.p99);
        assert!(close(p.p999, 9_990_000), "p99.9 {}", p.p999);
        assert!(close(p.p9999, 9_999_000), "p99.99 {}", p.p9999);
        assert!(close(p.max, 10_000_000), "max {}", p.max);
        assert!((p.mean - 5_000_500.0).abs() < 5_000.0, "mean {}", p.mean);
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn merging_threads_adds_counts_and_histograms() {
        let mut a = Recorder::new(0);
        let mut b = Recorder::new(0);
        for i in 0..100 {
            a.count_request();
            a.record_reply(Cmd::Get, i % 10 == 0, 0, 0, 10_000 + i);
        }
        for i in 0..300 {
            b.count_request();
            b.record_reply(Cmd::Get, false, i * MS, i * MS, i * MS + 1_000_000);
        }
        b.record_error(ErrorKind::Timeout, 2, 5 * MS);
        a.record_error(ErrorKind::Status(Status::UNAVAILABLE), 1, 0);
        let mut merged = a.finish(MS);
        merged.merge(&b.finish(300 * MS));
        assert_eq!(merged.ops(), 400);
        assert_eq!(merged.requests, 400);
        assert_eq!(merged.misses(), 10);
        assert_eq!(merged.errors.total(), 3);
        assert_eq!(merged.errors.get(ErrorKind::Timeout), 2);
        assert_eq!(merged.errors.by_name().get("status:UNAVAILABLE"), Some(&1));
        let latency = merged.latency();
        assert_eq!(latency.len(), 400);
        // 100 fast (~10 us) and 300 at 1 ms: the median is slow, the 20th percentile fast.
        assert!(latency.value_at_quantile(0.2) < 11_000);
        assert!(latency.value_at_quantile(0.5) >= 999_000);
        assert_eq!(merged.elapsed_ns, 299 * MS + 1_000_000, "the longest thread's span");
    }

    #[test]
    fn open_loop_latency_counts_from_the_intended_time() {
        let mut r = Recorder::new(0);
        // Meant for t=0, sent late at 5 ms behind a stall, answered at 5.1 ms.
        r.record_reply(Cmd::Put, false, 0, 5 * MS, 5 * MS + 100_000);
        let stats = r.finish(10 * MS);
        let latency = Percentiles::of(&stats.cmds[Cmd::Put.index()].latency);
        let service = Percentiles::of(&stats.cmds[Cmd::Put.index()].service);
        assert!(latency.p50 >= 5_090_000, "latency {}", latency.p50);
        assert!(service.p50 <= 100_100, "service {}", service.p50);
    }

    #[test]
    fn series_has_one_bucket_per_second_including_quiet_ones() {
        let sec = 1_000_000_000;
        let mut r = Recorder::new(sec / 2);
        r.record_reply(Cmd::Get, false, sec / 2, sec / 2, sec); // second 0 of measurement
        r.record_reply(Cmd::Get, false, sec, sec, sec + sec / 3); // second 0
        r.record_error(ErrorKind::Closed, 1, 3 * sec); // second 2; second 1 is quiet
        r.record_reply(Cmd::Get, false, 3 * sec, 3 * sec, 3 * sec + 1); // second 2
        let stats = r.finish(4 * sec);
        let ops: Vec<u64> = stats.series.iter().map(|b| b.ops).collect();
        let errors: Vec<u64> = stats.series.iter().map(|b| b.errors).collect();
        assert_eq!(ops, [2, 0, 1]);
        assert_eq!(errors, [0, 0, 1]);
        assert_eq!(stats.elapsed_ns, 3 * sec + 1 - sec / 2);
    }

    #[test]
    fn progress_reports_deltas() {
        let mut r = Recorder::new(0);
        r.record_reply(Cmd::Get, false, 0, 0, 1);
        assert_eq!(r.take_progress(), (1, 0));
        r.record_error(ErrorKind::Decode, 2, 1);
        assert_eq!(r.take_progress(), (0, 2));
        assert_eq!(r.take_progress(), (0, 0));
    }

    #[test]
    fn recent_latency_is_handed_over_once() {
        let mut r = Recorder::new(0);
        r.record_reply(Cmd::Get, false, 0, 0, 30_000);
        r.record_reply(Cmd::Put, false, 0, 0, 2 * MS);
        let mut shared = new_series_histogram();
        r.take_recent_latency(&mut shared);
        assert_eq!(shared.len(), 2);
        assert!(shared.value_at_quantile(0.99) >= 1_900_000, "{}", shared.value_at_quantile(0.99));
        r.take_recent_latency(&mut shared);
        assert_eq!(shared.len(), 2, "nothing new");
    }

    #[test]
    fn not_sent_and_the_window_merge_and_give_the_sent_rate() {
        let mut a = Recorder::new(0);
        for _ in 0..300 {
            a.count_request();
        }
        a.record_not_sent(700);
        let mut merged = a.finish(MS);
        merged.window_ns = 1_000 * MS;
        let mut b = PhaseStats::new();
        b.requests = 100;
        b.not_sent = 900;
        b.window_ns = 999 * MS;
        merged.merge(&b);
        assert_eq!(merged.not_sent, 1600);
        assert_eq!(merged.errors.total(), 0, "not sent is no error");
        assert_eq!(merged.window_ns, 1_000 * MS);
        assert_eq!(merged.sent_per_sec(), 400.0);
    }

    #[test]
    fn bytes_merge_and_divide_by_ops() {
        let mut a = Recorder::new(0);
        for _ in 0..3 {
            a.count_request();
            a.count_sent(64);
            a.count_received(148);
            a.record_reply(Cmd::Get, false, 0, 0, 1);
        }
        // A failed request's bytes count too: they were on the wire.
        a.count_request();
        a.count_sent(64);
        a.count_received(70);
        a.record_error(ErrorKind::Status(Status::UNAVAILABLE), 1, 1);
        let mut merged = a.finish(1);
        assert_eq!((merged.bytes_sent, merged.bytes_received), (256, 514));
        let mut b = PhaseStats::new();
        b.bytes_sent = 4096;
        b.bytes_received = 4096;
        b.cmds[Cmd::Put.index()].ops = 1;
        merged.merge(&b);
        assert_eq!((merged.bytes_sent, merged.bytes_received), (4352, 4610));
        assert_eq!(merged.bytes_sent_per_op(), Some(1088.0));
        assert_eq!(merged.bytes_received_per_op(), Some(1152.5));
        assert_eq!(PhaseStats::new().bytes_sent_per_op(), None, "nothing to divide by");
        assert_eq!(ErrorKind::HelloRefused.to_string(), "hello_refused");
    }

    #[test]
    fn huge_latencies_saturate_instead_of_vanishing() {
        let mut r = Recorder::new(0);
        r.record_reply(Cmd::Get, false, 0, 0, MAX_LATENCY_NS * 10);
        let stats = r.finish(0);
        assert_eq!(stats.cmds[Cmd::Get.index()].latency.len(), 1);
    }
}
