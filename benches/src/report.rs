//! Turns a phase's measurements into the human summary, CSV rows, JSON lines, HdrHistogram
//! percentile files and the progress line. Everything is written to a caller-supplied
//! writer; only the binary decides where output goes.
//!
//! The human summary is stable, for scripts that grep it:
//!
//! ```text
//! PUT: 123456 ops in 5.00 s = 24691 ops/s, errors 0
//!   latency us: p50 31 p90 40 p99 88 p99.9 140 p99.99 300 max 912
//! ```
//!
//! followed, where they apply, by `  service us: ...` and `  rate: ...` (open loop),
//! `  hits N misses M` (tests with GETs), `  PUT latency us: ...` (each command of a mixed
//! test) and `  errors: KIND N, ...`, and always last by
//! `  bytes/op: sent S received R (F framing)` (no framing for RESP).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::Config;
use crate::driver::PhaseResult;
use crate::proto::Framing;
use crate::stats::Percentiles;
use crate::workload::Cmd;

/// Latency percentiles in microseconds, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyUs {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

impl From<Percentiles> for LatencyUs {
    fn from(p: Percentiles) -> LatencyUs {
        LatencyUs {
            p50_us: us(p.p50),
            p90_us: us(p.p90),
            p99_us: us(p.p99),
            p999_us: us(p.p999),
            p9999_us: us(p.p9999),
            max_us: us(p.max),
            mean_us: (p.mean / 100.0).round() / 10.0,
        }
    }
}

/// One command of a test.
#[derive(Debug, Clone, Serialize)]
pub struct CmdReport {
    /// Successful replies.
    pub ops: u64,
    /// GET misses among them.
    pub misses: u64,
    /// Latency (from the intended send time).
    #[serde(flatten)]
    pub latency: LatencyUs,
    /// Service time (from the actual send), open loop only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<LatencyUs>,
}

/// One second of the series.
#[derive(Debug, Clone, Serialize)]
pub struct SecondReport {
    /// Seconds since measurement started, at the end of this one (1, 2, ...).
    pub t_s: u64,
    /// Successful replies in this second.
    pub ops: u64,
    /// Errors in this second.
    pub errors: u64,
    /// Median latency of this second's replies.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// Open-loop figures.
#[derive(Debug, Clone, Serialize)]
pub struct RateReport {
    /// `--rate`.
    pub target_ops_per_sec: f64,
    /// Successful replies per second of `elapsed_s` (the summary's ops/s).
    pub achieved_ops_per_sec: f64,
    /// Service time, from the actual send (without the wait for the schedule).
    pub service: LatencyUs,
    /// `--rate` again, beside `achieved_rate`.
    pub target_rate: f64,
    /// Requests sent per second of the sending window (`requests / window_s`): what the
    /// schedule achieved. Below `target_rate` when requests could not be sent in time
    /// (`not_sent`); `requests + not_sent` is about `target_rate * window_s`.
    pub achieved_rate: f64,
    /// The sending window: `--duration` (or until the interrupt); with `-n`, `elapsed_s`.
    pub window_s: f64,
}

/// Everything reported about one test (or the prefill): one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    /// The test's name: `PUT`, `GET`, `APPEND`, `mixed`, `ycsb-a`.., or `prefill`.
    pub test: String,
    /// The run was interrupted (Ctrl-C) during this test: the figures cover only part of it.
    pub interrupted: bool,
    /// Requests sent while measuring.
    pub requests: u64,
    /// Open loop: requests the schedule meant to send while measuring that could not be
    /// sent before the test stopped sending (connections full or down). Not errors.
    pub not_sent: u64,
    /// Successful replies (GET misses included).
    pub ops: u64,
    /// Seconds from the start of measurement to the last reply.
    pub elapsed_s: f64,
    /// `ops / elapsed_s`.
    pub ops_per_sec: f64,
    /// Latency of all commands (open loop: from the intended send time).
    #[serde(flatten)]
    pub latency: LatencyUs,
    /// Errors of every kind.
    pub errors: u64,
    /// Errors by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// GETs answered "not found".
    pub misses: u64,
    /// The framing of the Tandem frames on the wire (`fixed`, `compact`); `null` for RESP.
    pub framing: Option<Framing>,
    /// Bytes of the measured requests as written to the socket (TCP/IP headers and the
    /// connections' HELLOs not counted; RESP: a write's `WAIT` included).
    pub bytes_sent: u64,
    /// Bytes of the replies to the measured requests as read from the socket.
    pub bytes_received: u64,
    /// `bytes_sent / ops`; `null` without ops.
    pub bytes_sent_per_op: Option<f64>,
    /// `bytes_received / ops`; `null` without ops.
    pub bytes_received_per_op: Option<f64>,
    /// Per command.
    pub commands: BTreeMap<Cmd, CmdReport>,
    /// Open loop only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateReport>,
    /// A Tandem server's storage during the test (warm-up included), from its STATS before
    /// and after; absent for other servers, or when STATS could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::server_stats::StorageReport>,
    /// Per second of measurement.
    pub series: Vec<SecondReport>,
    /// The run's resolved configuration.
    pub config: Config,
    /// The latency histogram, for `--hdr-out`.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl TestReport {
    /// Summarises a phase.
    pub fn new(result: &PhaseResult, config: &Config) -> TestReport {
        let stats = &result.stats;
        let open_loop = config.rate.is_some() && !result.phase.is_prefill();
        let histogram = stats.latency();
        let commands = Cmd::ALL
            .into_iter()
            .filter(|cmd| {
                stats.cmds[cmd.index()].ops > 0
                    || result.phase.test.as_ref().is_some_and(|t| t.mix.weights()[cmd.index()] > 0)
            })
            .map(|cmd| {
                let c = &stats.cmds[cmd.index()];
                let report = CmdReport {
                    ops: c.ops,
                    misses: c.misses,
                    latency: Percentiles::of(&c.latency).into(),
                    service: open_loop.then(|| Percentiles::of(&c.service).into()),
                };
                (cmd, report)
            })
            .collect();
        let ops_per_sec = stats.ops_per_sec();
        let series = stats
            .series
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let p = Percentiles::of(&b.latency);
                SecondReport {
                    t_s: i as u64 + 1,
                    ops: b.ops,
                    errors: b.errors,
                    p50_us: us(p.p50),
                    p99_us: us(p.p99),
                    max_us: us(p.max),
                }
            })
            .collect();
        TestReport {
            test: result.phase.name.clone(),
            interrupted: stats.interrupted,
            requests: stats.requests,
            not_sent: stats.not_sent,
            ops: stats.ops(),
            elapsed_s: stats.elapsed_ns as f64 / 1e9,
            ops_per_sec: (ops_per_sec * 10.0).round() / 10.0,
            latency: Percentiles::of(&histogram).into(),
            errors: stats.errors.total(),
            errors_by_kind: stats.errors.by_name(),
            misses: stats.misses(),
            framing: config.protocol.uses_frames().then_some(config.framing),
            bytes_sent: stats.bytes_sent,
            bytes_received: stats.bytes_received,
            bytes_sent_per_op: stats.bytes_sent_per_op().map(round1),
            bytes_received_per_op: stats.bytes_received_per_op().map(round1),
            commands,
            rate: config.rate.filter(|_| open_loop).map(|target| RateReport {
                target_ops_per_sec: target,
                achieved_ops_per_sec: (ops_per_sec * 10.0).round() / 10.0,
                service: Percentiles::of(&stats.service()).into(),
                target_rate: target,
                achieved_rate: (stats.sent_per_sec() * 10.0).round() / 10.0,
                window_s: stats.window_ns as f64 / 1e9,
            }),
            storage: None,
            series,
            config: config.clone(),
            histogram,
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A bytes-per-op figure for people: whole bytes when it is one (fixed frames), else one
/// decimal; `-` without ops.
fn per_op(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

fn latency_line(l: &LatencyUs) -> String {
    format!(
        "p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} p99.99 {:.0} max {:.0}",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us
    )
}

/// A one-line description of the run, printed before the tests in human output.
pub fn describe(config: &Config) -> String {
    let amount = match (config.requests, config.duration_s) {
        (Some(n), _) => format!("{n} requests per test"),
        (None, Some(s)) => format!("{s} s per test"),
        (None, None) => String::new(),
    };
    let mode = match config.rate {
        Some(rate) => format!("open loop at {rate} ops/s"),
        None => "closed loop".into(),
    };
    let target = match (&config.primary, &config.coordinator) {
        (Some(primary), Some(coordinators)) => format!(
            "{}, primary {} of view {} from coordinator {}",
            config.server,
            primary.id,
            primary.view,
            coordinators.join(",")
        ),
        _ => config.server.clone(),
    };
    format!(
        "tandem-bench: {} protocol to {} ({}); {} connections x {} in flight on {} thread{}; {}, {}; \
         {}-byte values, {} keys ({}); seed {}{}{}{}{}{}",
        format!("{:?}", config.protocol).to_lowercase(),
        config.addr,
        target,
        config.connections,
        config.pipeline,
        config.threads,
        if config.threads == 1 { "" } else { "s" },
        mode,
        amount,
        config.data_size,
        config.keyspace,
        config.key_dist,
        config.seed,
        if config.warmup_s > 0.0 { format!("; {} s warm-up", config.warmup_s) } else { String::new() },
        if config.prefill { "; prefill" } else { "" },
        if config.verify { "; verify" } else { "" },
        match config.wait {
            Some(n) if n > 0 => format!("; each write followed by WAIT {n} 0"),
            _ => String::new(),
        },
        if config.protocol.uses_frames() { format!("; {} framing", config.framing) } else { String::new() },
    )
}

/// Writes the human summary of one test.
///
/// # Errors
/// When `out` fails.
pub fn write_human(out: &mut dyn Write, r: &TestReport) -> io::Result<()> {
    writeln!(
        out,
        "{}: {} ops in {:.2} s = {:.0} ops/s, errors {}",
        r.test, r.ops, r.elapsed_s, r.ops_per_sec, r.errors
    )?;
    writeln!(out, "  latency us: {}", latency_line(&r.latency))?;
    if r.interrupted {
        writeln!(out, "  interrupted: partial results")?;
    }
    if let Some(rate) = &r.rate {
        writeln!(out, "  service us: {}", latency_line(&rate.service))?;
        writeln!(
            out,
            "  rate: target {:.0} ops/s, achieved {:.0} ops/s sent in {:.2} s, not sent {} \
             (latency counts from the intended send time)",
            rate.target_rate, rate.achieved_rate, rate.window_s, r.not_sent
        )?;
    }
    if let Some(get) = r.commands.get(&Cmd::Get) {
        writeln!(out, "  hits {} misses {}", get.ops - get.misses, get.misses)?;
    }
    if let Some(st) = &r.storage {
        let wa = st.write_amplification.map_or("-".to_string(), |wa| format!("{wa:.3}"));
        writeln!(
            out,
            "  server storage: write amplification {wa} ({} bytes copied by {} compactions, {} written)",
            st.compaction_bytes_copied, st.compactions, st.bytes_written
        )?;
    }
    if r.commands.len() > 1 {
        for (cmd, c) in &r.commands {
            writeln!(out, "  {cmd} latency us: {} ({} ops)", latency_line(&c.latency), c.ops)?;
        }
    }
    if r.errors > 0 {
        let kinds: Vec<String> = r.errors_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(out, "  errors: {}", kinds.join(", "))?;
    }
    write!(
        out,
        "  bytes/op: sent {} received {}",
        per_op(r.bytes_sent_per_op),
        per_op(r.bytes_received_per_op)
    )?;
    match r.framing {
        Some(framing) => writeln!(out, " ({framing} framing)"),
        None => writeln!(out),
    }
}

/// The CSV header.
pub const CSV_HEADER: &str = "test,requests,ops,errors,misses,elapsed_s,ops_per_sec,p50_us,p90_us,p99_us,\
p999_us,p9999_us,max_us,mean_us,target_ops_per_sec,service_p50_us,service_p99_us,not_sent,achieved_rate,framing,bytes_sent_per_op,bytes_received_per_op";

/// Writes one CSV row for the test, and one per command (`test/CMD`) for mixed tests (whose
/// bytes per op are left empty: bytes are counted per test).
///
/// # Errors
/// When `out` fails.
pub fn write_csv(out: &mut dyn Write, r: &TestReport) -> io::Result<()> {
    let framing = r.framing.map_or("", Framing::name);
    let row = |out: &mut dyn Write,
               name: &str,
               ops: u64,
               misses: u64,
               l: &LatencyUs,
               s: Option<&LatencyUs>,
               bytes: [Option<f64>; 2]| {
        let ops_per_sec = if r.elapsed_s > 0.0 { ops as f64 / r.elapsed_s } else { 0.0 };
        writeln!(
            out,
            "{name},{},{ops},{},{misses},{:.3},{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{framing},{},{}",
            r.requests,
            r.errors,
            r.elapsed_s,
            ops_per_sec,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.p9999_us,
            l.max_us,
            l.mean_us,
            r.rate.as_ref().map_or(String::new(), |x| x.target_ops_per_sec.to_string()),
            s.map_or(String::new(), |s| s.p50_us.to_string()),
            s.map_or(String::new(), |s| s.p99_us.to_string()),
            r.not_sent,
            r.rate.as_ref().map_or(String::new(), |x| x.achieved_rate.to_string()),
            bytes[0].map_or(String::new(), |b| b.to_string()),
            bytes[1].map_or(String::new(), |b| b.to_string()),
        )
    };
    let bytes = [r.bytes_sent_per_op, r.bytes_received_per_op];
    row(out, &r.test, r.ops, r.misses, &r.latency, r.rate.as_ref().map(|x| &x.service), bytes)?;
    if r.commands.len() > 1 {
        for (cmd, c) in &r.commands {
            let name = format!("{}/{cmd}", r.test);
            row(out, &name, c.ops, c.misses, &c.latency, c.service.as_ref(), [None, None])?;
        }
    }
    Ok(())
}

/// Writes the test as one JSON object on one line.
///
/// # Errors
/// When `out` fails.
pub fn write_json(out: &mut dyn Write, r: &TestReport) -> io::Result<()> {
    serde_json::to_writer(&mut *out, r)?;
    writeln!(out)
}

/// Where `--hdr-out FILE` puts the histogram of `test`: FILE itself when the run has one
/// test, FILE.<test> otherwise.
pub fn hdr_path(base: &Path, test: &str, tests: usize) -> PathBuf {
    if tests <= 1 {
        base.to_path_buf()
    } else {
        let mut name = base.as_os_str().to_owned();
        name.push(".");
        name.push(test);
        PathBuf::from(name)
    }
}

/// Writes `h` (nanoseconds) as an HdrHistogram percentile distribution in microseconds, the
/// text format HdrHistogram's plotter and `HistogramLogProcessor` read.
///
/// # Errors
/// When `out` fails.
pub fn write_hgrm(out: &mut dyn Write, h: &Histogram<u64>) -> io::Result<()> {
    writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    let total = h.len();
    let mut cumulative = 0u64;
    for v in h.iter_quantiles(5) {
        cumulative += v.count_since_last_iteration();
        let quantile = v.quantile_iterated_to();
        let value = h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0;
        if quantile < 1.0 {
            writeln!(
                out,
                "{value:>12.3} {quantile:>2.12} {cumulative:>10} {:>14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value:>12.3} {quantile:>2.12} {cumulative:>10}")?;
        }
    }
    let max = h.max() as f64 / 1000.0;
    writeln!(out, "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]", h.mean() / 1000.0, h.stdev() / 1000.0)?;
    writeln!(out, "#[Max     = {max:>12.3}, Total count    = {total:>12}]")?;
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    writeln!(out, "#[Buckets = {:>12}, SubBuckets     = {sub_buckets:>12}]", h.buckets())
}

/// The live progress line (without a line end; the caller returns the carriage).
/// `latency` is of the last second's replies (nanoseconds; `count` 0 shows dashes).
pub fn progress_line(
    test: &str,
    elapsed_s: f64,
    ops: u64,
    ops_per_sec: f64,
    latency: &Percentiles,
    errors: u64,
) -> String {
    let latency = if latency.count == 0 {
        "p50 - p99 - us".to_string()
    } else {
        format!("p50 {:.0} p99 {:.0} us", us(latency.p50), us(latency.p99))
    };
    format!("{test}: {elapsed_s:.1} s, {ops} ops, {ops_per_sec:.0} ops/s now, {latency}, errors {errors}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use crate::driver::{phases, PhaseResult};
    use crate::stats::{ErrorKind, PhaseStats, Recorder};
    use clap::Parser;

    fn config(flags: &[&str]) -> Config {
        let args = Args::try_parse_from(std::iter::once("tandem-bench").chain(flags.iter().copied()))
            .expect("parses");
        Config::from_args(args).expect("valid")
    }

    fn result(config: &Config, phase: usize, errors: u64) -> PhaseResult {
        let mut r = Recorder::new(0);
        for i in 0..1000u64 {
            r.count_request();
            let cmd = if i % 4 == 0 { Cmd::Put } else { Cmd::Get };
            // Replies complete at 1, 2, .. 1000 ms, after 30 to 40 us.
            let done = (i + 1) * 1_000_000;
            let sent = done - 30_000 - i * 10;
            r.record_reply(cmd, i % 8 == 1, sent, sent, done);
        }
        r.record_error(ErrorKind::Timeout, errors, 1);
        PhaseResult { index: phase, phase: phases(config)[phase].clone(), stats: r.finish(1_000_000_000) }
    }

    #[test]
    fn human_summary_has_the_stable_lines() {
        let config = config(&["-t", "get"]);
        let report = TestReport::new(&result(&config, 0, 0), &config);
        let mut out = Vec::new();
        write_human(&mut out, &report).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        let mut lines = text.lines();
        let first = lines.next().expect("a first line");
        assert!(first.starts_with("GET: 1000 ops in 1.00 s = 1000 ops/s, errors 0"), "{first}");
        let second = lines.next().expect("a latency line");
        assert!(
            second.starts_with("  latency us: p50 35 p90 39 p99 40 p99.9 40 p99.99 40 max 40"),
            "{second}"
        );
        assert!(text.contains("  hits 625 misses 125"), "{text}");
        assert_eq!(report.ops_per_sec, 1000.0);
        assert!(!text.contains("errors:"), "{text}");
    }

    #[test]
    fn mixed_tests_break_down_by_command_and_list_errors() {
        let config = config(&["--ratio", "1:3", "--rate", "1000"]);
        let report = TestReport::new(&result(&config, 0, 3), &config);
        let mut out = Vec::new();
        write_human(&mut out, &report).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("mixed: 1000 ops"), "{text}");
        assert!(text.contains("  service us: p50"), "{text}");
        assert!(
            text.contains("  rate: target 1000 ops/s, achieved 1000 ops/s sent in 1.00 s, not sent 0"),
            "{text}"
        );
        assert!(text.contains("  PUT latency us: p50"), "{text}");
        assert!(text.contains("(250 ops)"), "{text}");
        assert!(text.contains("  GET latency us: p50"), "{text}");
        assert!(text.contains("  errors: timeout 3"), "{text}");
        let mut csv = Vec::new();
        write_csv(&mut csv, &report).expect("writes");
        let csv = String::from_utf8(csv).expect("utf-8");
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 3, "{csv}");
        assert!(rows[0].starts_with("mixed,1000,1000,3,"), "{}", rows[0]);
        assert!(rows[1].starts_with("mixed/PUT,1000,250,3,0,"), "{}", rows[1]);
        assert_eq!(rows[0].split(',').count(), CSV_HEADER.split(',').count());
    }

    #[test]
    fn json_line_carries_the_required_fields() {
        let config = config(&["-t", "put,get", "--duration", "1"]);
        let report = TestReport::new(&result(&config, 1, 2), &config);
        let mut out = Vec::new();
        write_json(&mut out, &report).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["test"], "GET");
        for field in ["ops_per_sec", "p50_us", "p99_us", "p999_us", "max_us", "errors", "requests", "ops"] {
            assert!(v[field].is_number(), "{field} in {text}");
        }
        assert_eq!(v["errors"], 2);
        assert_eq!(v["errors_by_kind"]["timeout"], 2);
        assert_eq!(v["config"]["duration_s"], 1.0);
        assert_eq!(v["commands"]["GET"]["ops"], 750);
        assert!(v["series"].as_array().is_some_and(|s| !s.is_empty()));
        assert!(v.get("rate").is_none());
    }

    /// An open-loop test that could not send everything reports what it did not send beside
    /// what it achieved over its window, in every format, and none of it as errors.
    #[test]
    fn open_loop_reports_not_sent_and_the_achieved_rate() {
        let config = config(&["-t", "get", "--rate", "5000", "--duration", "1", "-c", "4"]);
        let mut phase = result(&config, 0, 0);
        phase.stats.not_sent = 4000;
        phase.stats.window_ns = 1_000_000_000;
        let report = TestReport::new(&phase, &config);
        let mut out = Vec::new();
        write_human(&mut out, &report).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.contains("  rate: target 5000 ops/s, achieved 1000 ops/s sent in 1.00 s, not sent 4000"),
            "{text}"
        );
        assert!(text.contains("errors 0") && !text.contains("timeout"), "{text}");
        let mut json = Vec::new();
        write_json(&mut json, &report).expect("writes");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        assert_eq!(v["not_sent"], 4000);
        assert_eq!(v["errors"], 0);
        assert_eq!(v["rate"]["target_rate"], 5000.0);
        assert_eq!(v["rate"]["achieved_rate"], 1000.0);
        assert_eq!(v["rate"]["window_s"], 1.0);
        assert_eq!(v["rate"]["target_ops_per_sec"], 5000.0, "the old fields stay");
        let mut csv = Vec::new();
        write_csv(&mut csv, &report).expect("writes");
        let csv = String::from_utf8(csv).expect("utf-8");
        let header: Vec<&str> = CSV_HEADER.split(',').collect();
        let row: Vec<&str> = csv.lines().next().expect("a row").split(',').collect();
        assert_eq!(row.len(), header.len(), "{csv}");
        let field = |name: &str| row[header.iter().position(|h| *h == name).expect(name)];
        assert_eq!((field("not_sent"), field("achieved_rate")), ("4000", "1000"));
        assert_eq!(field("target_ops_per_sec"), "5000");
    }

    /// The framing and the bytes per operation each way, in every format, added after what
    /// was there before.
    #[test]
    fn bytes_per_op_and_the_framing_in_every_format() {
        let config = config(&["-t", "get", "--framing", "compact"]);
        let mut phase = result(&config, 0, 0);
        phase.stats.bytes_sent = 64 * 1000;
        phase.stats.bytes_received = 148 * 1000 + 500;
        let report = TestReport::new(&phase, &config);
        let mut out = Vec::new();
        write_human(&mut out, &report).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("GET: 1000 ops in 1.00 s"), "{text}");
        assert_eq!(
            text.lines().last(),
            Some("  bytes/op: sent 64 received 148.5 (compact framing)"),
            "{text}"
        );
        let mut json = Vec::new();
        write_json(&mut json, &report).expect("writes");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        assert_eq!(v["framing"], "compact");
        assert_eq!(v["config"]["framing"], "compact");
        assert_eq!((v["bytes_sent"].as_u64(), v["bytes_received"].as_u64()), (Some(64_000), Some(148_500)));
        assert_eq!(
            (v["bytes_sent_per_op"].as_f64(), v["bytes_received_per_op"].as_f64()),
            (Some(64.0), Some(148.5))
        );
        let mut csv = Vec::new();
        write_csv(&mut csv, &report).expect("writes");
        let csv = String::from_utf8(csv).expect("utf-8");
        let header: Vec<&str> = CSV_HEADER.split(',').collect();
        assert!(CSV_HEADER.contains(",not_sent,achieved_rate,framing,"), "added at the end: {CSV_HEADER}");
        let row: Vec<&str> = csv.lines().next().expect("a row").split(',').collect();
        assert_eq!(row.len(), header.len(), "{csv}");
        let field = |name: &str| row[header.iter().position(|h| *h == name).expect(name)];
        assert_eq!(field("framing"), "compact");
        assert_eq!((field("bytes_sent_per_op"), field("bytes_received_per_op")), ("64", "148.5"));

        // RESP has no framing; a test without ops has no bytes per op.
        let config = self::config(&["--protocol", "resp", "-t", "put"]);
        let mut phase = result(&config, 0, 0);
        phase.stats.cmds = PhaseStats::new().cmds;
        let report = TestReport::new(&phase, &config);
        let mut out = Vec::new();
        write_human(&mut out, &report).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().last(), Some("  bytes/op: sent - received -"), "{text}");
        let v = serde_json::to_value(&report).expect("serializes");
        assert!(v["framing"].is_null() && v["bytes_sent_per_op"].is_null(), "{v}");
        let mut csv = Vec::new();
        write_csv(&mut csv, &report).expect("writes");
        let csv = String::from_utf8(csv).expect("utf-8");
        assert!(csv.trim_end().ends_with(",,,"), "framing and bytes left empty: {csv}");
    }

    #[test]
    fn progress_line_shows_the_recent_latency() {
        let mut h = crate::stats::new_series_histogram();
        for ns in [30_000u64; 99].into_iter().chain([900_000]) {
            h.record(ns).expect("in range");
        }
        let line = progress_line("GET", 2.5, 1000, 400.0, &Percentiles::of(&h), 0);
        assert_eq!(line, "GET: 2.5 s, 1000 ops, 400 ops/s now, p50 30 p99 30 us, errors 0");
        h.record(900_000).expect("in range");
        let line = progress_line("GET", 2.5, 1000, 400.0, &Percentiles::of(&h), 1);
        assert!(line.contains("p50 30 p99 9"), "{line}");
        let quiet = progress_line("PUT", 0.5, 0, 0.0, &Percentiles::default(), 0);
        assert_eq!(quiet, "PUT: 0.5 s, 0 ops, 0 ops/s now, p50 - p99 - us, errors 0");
    }

    #[test]
    fn hgrm_lists_percentiles_in_microseconds() {
        let mut h = crate::stats::new_histogram();
        for ns in [10_000u64, 20_000, 30_000, 1_000_000] {
            h.record(ns).expect("in range");
        }
        let mut out = Vec::new();
        write_hgrm(&mut out, &h).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"), "{text}");
        // Values are the highest equivalent of their bucket: 10 us is 10.007 at 3 digits.
        assert!(text.contains("      10.007 0.000000000000          1           1.00"), "{text}");
        assert!(text.contains("      20.015 0.500000000000          2           2.00"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        assert!(text.contains("#[Max     =     1000.447, Total count    =            4]"), "{text}");
        let last_value = text.lines().rfind(|l| !l.starts_with('#') && !l.trim().is_empty()).expect("rows");
        assert!(last_value.contains("1.000000000000          4"), "{last_value}");
    }

    #[test]
    fn hdr_paths() {
        assert_eq!(hdr_path(Path::new("/tmp/x.hgrm"), "PUT", 1), PathBuf::from("/tmp/x.hgrm"));
        assert_eq!(hdr_path(Path::new("/tmp/x.hgrm"), "PUT", 2), PathBuf::from("/tmp/x.hgrm.PUT"));
    }

    #[test]
    fn describe_mentions_the_shape() {
        let text = describe(&config(&["-c", "1", "-P", "4", "--rate", "500"]));
        assert!(text.contains("1 connections x 4 in flight"), "{text}");
        assert!(text.contains("open loop at 500 ops/s"), "{text}");
        assert!(!text.contains("WAIT"), "{text}");
        assert!(text.ends_with("; fixed framing"), "{text}");
        let text = describe(&config(&["--framing", "compact", "--prefill"]));
        assert!(text.ends_with("; prefill; compact framing"), "{text}");
        assert!(!describe(&config(&["--protocol", "resp"])).contains("framing"));
        let text = describe(&config(&["--protocol", "resp", "--wait", "2"]));
        assert!(text.contains("; each write followed by WAIT 2 0"), "{text}");
        assert!(!describe(&config(&["--protocol", "resp", "--wait", "0"])).contains("WAIT"));
        let mut cluster = config(&["--coordinator", "127.0.0.1:9"]);
        cluster.set_primary("s1", 3, "127.0.0.1:7071").expect("resolves");
        let text = describe(&cluster);
        assert!(
            text.contains(
                "to 127.0.0.1:7071 (127.0.0.1:7071, primary s1 of view 3 from coordinator 127.0.0.1:9)"
            ),
            "{text}"
        );
    }
}
