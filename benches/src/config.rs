//! Command-line flags ([`Args`]) and the configuration they resolve to ([`Config`]), which
//! every JSON result carries so that a run can be audited and repeated.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use serde::Serialize;
use wire::MAX_PAYLOAD_LEN;

use crate::proto::{Framing, Protocol};
use crate::workload::{Cmd, KeyDist, Mix, WorkloadSpec, DEFAULT_ZIPF_THETA, KEY_LEN, MAX_KEYSPACE};

/// Requests per test when neither `-n` nor `--duration` is given (as redis-benchmark).
pub const DEFAULT_REQUESTS: u64 = 100_000;
/// Bytes at the start of a `--verify` value that identify its key and write.
pub const VERIFY_HEADER_LEN: usize = 16;

/// `tandem-bench`: load a Tandem server (or Redis, or the echo ceiling) and report honest
/// throughput and latency.
#[derive(Debug, Clone, Parser)]
// Negative numbers are read as values, so that `--duration -1` is refused as a bad value.
#[command(name = "tandem-bench", version, about, long_about = None, allow_negative_numbers = true)]
#[command(after_help = "Exit status: 0 when every request succeeded, 1 when any error or timeout \
occurred during the run (open-loop requests that could not be sent are not errors), 2 for usage errors, an unreachable server, no primary from --coordinator, \
a server that does not agree to --framing compact or a histogram file that could not be written, 130 when interrupted.")]
pub struct Args {
    /// The server to load, HOST:PORT.
    #[arg(short = 's', long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub server: String,

    /// Instead of --server: ask this Tandem coordinator (the view service, over UDP; several
    /// comma-separated addresses are all asked) for the current view and load its primary.
    /// Retries for up to 5 s; exits 2 if no coordinator answers or the view has no primary.
    /// Looked up once, before the run: a failover during the run is not followed, its
    /// failures are counted as errors as usual. Tandem protocol only.
    #[arg(long, value_name = "ADDR[,ADDR...]", conflicts_with_all = ["server", "baseline"])]
    pub coordinator: Option<String>,

    /// The protocol to speak: tandem frames, Redis's RESP (SET/GET/APPEND), or tandem frames to
    /// an echo server.
    #[arg(long, value_enum, default_value_t = Protocol::Tandem)]
    pub protocol: Protocol,

    /// Tandem frames only (tandem, echo): fixed 4096-byte frames, or compact frames (header,
    /// key and value, no padding). With compact, every connection sends a HELLO alone when it
    /// opens and waits for the answer before its first request; a server that does not agree
    /// (UNKNOWN_COMMAND, or it chooses fixed) stops the run before it starts (exit 2).
    #[arg(long, value_enum, default_value_t = Framing::Fixed)]
    pub framing: Framing,

    /// RESP only: follow every write (SET, APPEND) with `WAIT N 0`, so that it completes only
    /// once N replicas acknowledged it (Redis's synchronous replication, to compare with
    /// Tandem's). The pair is one operation: one -P slot, one latency covering both replies;
    /// a WAIT answering fewer than N counts as error `wait_short`. 0 sends no WAIT.
    #[arg(long, value_name = "N")]
    pub wait: Option<u32>,

    /// Measure the machine's ceiling instead: start a built-in mio echo server of 4096-byte
    /// frames on a loopback port and load it with the echo protocol.
    #[arg(long, value_enum, conflicts_with_all = ["server", "protocol", "verify"])]
    pub baseline: Option<Baseline>,

    /// Connections, shared out over the threads.
    #[arg(short = 'c', long, default_value_t = 50)]
    pub connections: usize,

    /// Requests in flight per connection; a connection writes all of its new requests in one write.
    #[arg(short = 'P', long, value_name = "DEPTH", default_value_t = 1)]
    pub pipeline: usize,

    /// Requests per test, all connections together [default: 100000 unless --duration].
    #[arg(short = 'n', long, conflicts_with = "duration")]
    pub requests: Option<u64>,

    /// Run each test for this many seconds instead of a number of requests.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Bytes of each PUT/APPEND value.
    #[arg(short = 'd', long = "data-size", value_name = "BYTES", default_value_t = 100)]
    pub data_size: usize,

    /// Keys are key:000000000000 .. key:(N-1), 16 bytes each.
    #[arg(short = 'r', long = "keyspace", value_name = "N", default_value_t = 10_000)]
    pub keyspace: u64,

    /// Single-command tests to run in order, comma-separated: put (alias set), get, append
    /// [default: put,get].
    #[arg(short = 't', long = "tests", value_enum, value_delimiter = ',', conflicts_with_all = ["ratio", "ycsb"])]
    pub tests: Vec<TestKind>,

    /// One mixed test of PUT and GET in this proportion, e.g. 1:10.
    #[arg(long, value_name = "SET:GET", value_parser = parse_ratio, conflicts_with = "ycsb")]
    pub ratio: Option<(u32, u32)>,

    /// A YCSB core workload: a (50% update, 50% read), b (5% update, 95% read), c (read only);
    /// on zipfian keys (unless --key-dist says otherwise) after a prefill.
    #[arg(long, value_enum, ignore_case = true)]
    pub ycsb: Option<Ycsb>,

    /// How keys are drawn: uniform, sequential or zipf:THETA (THETA > 0; zipf = zipf:0.99)
    /// [default: uniform, or zipf:0.99 with --ycsb].
    #[arg(long = "key-dist", value_name = "DIST", value_parser = clap::value_parser!(KeyDist))]
    pub key_dist: Option<KeyDist>,

    /// Threads driving the connections (one mio event loop each); 1 is usually best on 2 cores.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Seconds of load before each test's measurement starts; excluded from the results.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub warmup: f64,

    /// Seed of every connection's key and command sequence, so that a run can be repeated.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Write every key once before the tests, so that GETs hit.
    #[arg(long)]
    pub prefill: bool,

    /// Open loop: send this many requests per second in total on a fixed schedule, measuring
    /// latency from each request's intended send time (-P caps the requests in flight per
    /// connection). Requests still unsent when a test ends are reported as not sent, beside
    /// the rate achieved. Default: closed loop.
    #[arg(long, value_name = "OPS")]
    pub rate: Option<f64>,

    /// Check every GET against the last value this run wrote to the key (each connection
    /// keeps to its own keys).
    #[arg(long)]
    pub verify: bool,

    /// Read the Tandem server's STATS before the run and after each test (a request on a
    /// connection of its own each time) and report what its storage did meanwhile: bytes
    /// written, bytes compaction copied, write amplification, compactions.
    #[arg(long)]
    pub server_stats: bool,

    /// A request without a reply for this long counts as a timeout and its connection is
    /// reopened.
    #[arg(long = "timeout-ms", value_name = "MS", default_value_t = 5_000)]
    pub timeout_ms: u64,

    /// Print CSV (a header, then one row per test and per command of mixed tests; the
    /// prefill's summary goes to stderr).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,

    /// Print one JSON object per test, one per line, with the configuration and a
    /// per-second series (the prefill's summary goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Write each test's latency histogram as an HdrHistogram percentile distribution
    /// (microseconds) to FILE, or to FILE.<test> when there are several tests.
    #[arg(long = "hdr-out", value_name = "FILE")]
    pub hdr_out: Option<PathBuf>,

    /// No live progress line: ops/s and the last second's p50/p99 latency (it is shown only
    /// when stderr is a terminal anyway).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// A built-in baseline server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// A bare mio echo of 4096-byte frames.
    Echo,
}

/// A single-command test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TestKind {
    /// PUT (SET over RESP).
    #[value(alias = "set")]
    Put,
    /// GET.
    Get,
    /// APPEND.
    Append,
}

impl TestKind {
    const fn cmd(self) -> Cmd {
        match self {
            TestKind::Put => Cmd::Put,
            TestKind::Get => Cmd::Get,
            TestKind::Append => Cmd::Append,
        }
    }
}

/// YCSB's core workloads that a key-value store can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ycsb {
    /// Update heavy: 50% update, 50% read.
    A,
    /// Read mostly: 5% update, 95% read.
    B,
    /// Read only.
    C,
}

fn parse_ratio(s: &str) -> Result<(u32, u32), String> {
    let (set, get) = s.split_once(':').ok_or_else(|| format!("ratio {s:?} is not SET:GET, e.g. 1:10"))?;
    let set: u32 = set.trim().parse().map_err(|_| format!("{set:?} is not a whole number"))?;
    let get: u32 = get.trim().parse().map_err(|_| format!("{get:?} is not a whole number"))?;
    if set == 0 && get == 0 {
        return Err("a ratio of 0:0 sends nothing".into());
    }
    if u64::from(set) + u64::from(get) > u64::from(u32::MAX) {
        return Err("ratio weights too large".into());
    }
    Ok((set, get))
}

/// One test: a name (the JSON `test` field) and its command mix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestSpec {
    /// `PUT`, `GET`, `APPEND`, `mixed` or `ycsb-a` / `ycsb-b` / `ycsb-c`.
    pub name: String,
    /// Weights of the commands.
    pub mix: Mix,
}

/// How the output is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// A block per test for people.
    Human,
    /// `--csv`
    Csv,
    /// `--json`
    Json,
}

/// The primary that `--coordinator` named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Primary {
    /// Its server id.
    pub id: String,
    /// The view that named it (views are numbered upward, so runs can be told apart across
    /// a failover).
    pub view: u64,
}

/// The resolved configuration of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The target as given (`--server`, `builtin-echo` for `--baseline echo`, or with
    /// `--coordinator` the primary's address as the view gives it).
    pub server: String,
    /// The address connected to.
    #[serde(serialize_with = "serialize_display")]
    pub addr: SocketAddr,
    /// `--coordinator`: the coordinators as given; `None` without it.
    pub coordinator: Option<Vec<String>>,
    /// `--coordinator`: the primary loaded, once looked up ([`Config::set_primary`]).
    pub primary: Option<Primary>,
    /// The coordinators' addresses, resolved (empty without `--coordinator`).
    #[serde(skip)]
    pub coordinator_addrs: Vec<SocketAddr>,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// How Tandem frames are laid out (`--framing`; RESP: always `fixed`, meaning nothing).
    pub framing: Framing,
    /// RESP `--wait N`: each write is followed by `WAIT N 0` (0: no WAIT).
    pub wait: Option<u32>,
    /// The built-in baseline server, if any.
    pub baseline: Option<Baseline>,
    /// Connections in total.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Event-loop threads.
    pub threads: usize,
    /// Requests per test (unless `duration_s`).
    pub requests: Option<u64>,
    /// Seconds per test (unless `requests`).
    pub duration_s: Option<f64>,
    /// Seconds of unmeasured load before each test.
    pub warmup_s: f64,
    /// Bytes per value.
    pub data_size: usize,
    /// Bytes per key.
    pub key_len: usize,
    /// Number of keys.
    pub keyspace: u64,
    /// How keys are drawn.
    pub key_dist: KeyDist,
    /// The tests, in order.
    pub tests: Vec<TestSpec>,
    /// Whether every key is written before the tests.
    pub prefill: bool,
    /// Open-loop requests per second in total; `None` for closed loop.
    pub rate: Option<f64>,
    /// Whether GET values are checked.
    pub verify: bool,
    /// Whether the server's STATS are read around each test (`--server-stats`).
    pub server_stats: bool,
    /// The seed.
    pub seed: u64,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// How results are printed.
    pub output: Output,
    /// Where histograms are written.
    pub hdr_out: Option<PathBuf>,
    /// Whether the progress line may be shown.
    #[serde(skip)]
    pub progress: bool,
}

fn serialize_display<T: fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Why the flags do not make a runnable configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Flags that contradict each other or are out of range.
    Usage(String),
    /// A feature that is accepted but not built yet.
    NotImplemented(&'static str),
    /// The server's address does not resolve.
    Resolve(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Usage(msg) | ConfigError::Resolve(msg) => f.write_str(msg),
            ConfigError::NotImplemented(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ConfigError {}

fn usage(msg: impl Into<String>) -> ConfigError {
    ConfigError::Usage(msg.into())
}

impl Config {
    /// Checks the flags and resolves the server's address.
    ///
    /// With `--baseline echo` the address is a placeholder until [`Config::set_target`]
    /// names the built-in server's.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first problem.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let protocol = if args.baseline.is_some() { Protocol::Echo } else { args.protocol };
        let coordinator = match &args.coordinator {
            None => None,
            Some(list) => {
                if protocol != Protocol::Tandem {
                    return Err(usage(
                        "--coordinator finds a Tandem primary: it needs --protocol tandem (the default)",
                    ));
                }
                let list: Vec<String> = list.split(',').map(|a| a.trim().to_string()).collect();
                if list.iter().any(String::is_empty) {
                    return Err(usage("--coordinator needs ADDR[,ADDR...] with no empty address"));
                }
                Some(list)
            }
        };
        if args.framing == Framing::Compact && !protocol.uses_frames() {
            return Err(usage(
                "--framing compact lays out Tandem frames: it needs --protocol tandem or echo",
            ));
        }
        if args.wait.is_some() && protocol != Protocol::Resp {
            return Err(usage("--wait N sends Redis's WAIT: it needs --protocol resp"));
        }
        if args.connections == 0 {
            return Err(usage("-c/--connections must be at least 1"));
        }
        if args.pipeline == 0 {
            return Err(usage("-P/--pipeline must be at least 1"));
        }
        if args.threads == 0 || args.threads > args.connections {
            return Err(usage(format!(
                "--threads must be between 1 and the number of connections ({})",
                args.connections
            )));
        }
        if args.requests == Some(0) {
            return Err(usage("-n/--requests must be at least 1"));
        }
        if let Some(duration) = args.duration {
            if !(duration.is_finite() && duration > 0.0) {
                return Err(usage("--duration must be a positive number of seconds"));
            }
        }
        if !(args.warmup.is_finite() && args.warmup >= 0.0) {
            return Err(usage("--warmup must be zero or more seconds"));
        }
        if let Some(rate) = args.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(usage("--rate must be a positive number of requests per second"));
            }
        }
        if args.keyspace == 0 || args.keyspace > MAX_KEYSPACE {
            return Err(usage(format!("-r/--keyspace must be between 1 and {MAX_KEYSPACE}")));
        }
        if args.timeout_ms == 0 {
            return Err(usage("--timeout-ms must be at least 1"));
        }
        let max_value = if protocol.uses_frames() { MAX_PAYLOAD_LEN - KEY_LEN } else { 64 * 1024 * 1024 };
        if args.data_size > max_value {
            return Err(usage(format!(
                "-d/--data-size {} does not fit: at most {max_value} bytes beside a {KEY_LEN}-byte key",
                args.data_size
            )));
        }
        if args.verify {
            if protocol == Protocol::Echo {
                return Err(usage("--verify needs a key-value server, not an echo"));
            }
            if args.data_size < VERIFY_HEADER_LEN {
                return Err(usage(format!("--verify needs -d/--data-size of at least {VERIFY_HEADER_LEN}")));
            }
            if args.keyspace < args.connections as u64 {
                return Err(usage("--verify needs at least as many keys (-r) as connections (-c)"));
            }
        }

        if let Some(path) = &args.hdr_out {
            // Fail before the run, not after it, when the histogram cannot be written there.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !dir.is_dir() {
                return Err(usage(format!("--hdr-out {}: no directory {}", path.display(), dir.display())));
            }
        }

        let tests = if let Some(ycsb) = args.ycsb {
            let (name, mix) = match ycsb {
                Ycsb::A => ("ycsb-a", Mix { put: 50, get: 50, append: 0 }),
                Ycsb::B => ("ycsb-b", Mix { put: 5, get: 95, append: 0 }),
                Ycsb::C => ("ycsb-c", Mix { put: 0, get: 1, append: 0 }),
            };
            vec![TestSpec { name: name.into(), mix }]
        } else if let Some((put, get)) = args.ratio {
            vec![TestSpec { name: "mixed".into(), mix: Mix { put, get, append: 0 } }]
        } else if args.tests.is_empty() {
            [Cmd::Put, Cmd::Get].map(|cmd| TestSpec { name: cmd.name().into(), mix: Mix::only(cmd) }).to_vec()
        } else {
            args.tests
                .iter()
                .map(|t| TestSpec { name: t.cmd().name().into(), mix: Mix::only(t.cmd()) })
                .collect()
        };
        let key_dist = args.key_dist.unwrap_or(if args.ycsb.is_some() {
            KeyDist::Zipf(DEFAULT_ZIPF_THETA)
        } else {
            KeyDist::Uniform
        });

        if args.wait.is_some() && !tests.iter().any(|t| t.mix.put > 0 || t.mix.append > 0) {
            return Err(usage("--wait N applies to writes (SET, APPEND), and no test writes"));
        }

        let coordinator_addrs = match &coordinator {
            Some(list) => list.iter().map(|a| resolve(a)).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let (server, addr) = if args.baseline.is_some() {
            ("builtin-echo".to_string(), SocketAddr::from(([127, 0, 0, 1], 0)))
        } else if coordinator.is_some() {
            // A placeholder until the coordinator names the primary (set_primary).
            (String::new(), SocketAddr::from(([127, 0, 0, 1], 0)))
        } else {
            let addr = resolve(&args.server)?;
            (args.server, addr)
        };
        let requests = match args.duration {
            Some(_) => None,
            None => Some(args.requests.unwrap_or(DEFAULT_REQUESTS)),
        };
        let output = if args.json {
            Output::Json
        } else if args.csv {
            Output::Csv
        } else {
            Output::Human
        };
        Ok(Config {
            server,
            addr,
            coordinator,
            primary: None,
            coordinator_addrs,
            protocol,
            framing: args.framing,
            wait: args.wait,
            baseline: args.baseline,
            connections: args.connections,
            pipeline: args.pipeline,
            threads: args.threads,
            requests,
            duration_s: args.duration,
            warmup_s: args.warmup,
            data_size: args.data_size,
            key_len: KEY_LEN,
            keyspace: args.keyspace,
            key_dist,
            tests,
            prefill: args.prefill || args.ycsb.is_some(),
            rate: args.rate,
            verify: args.verify,
            server_stats: args.server_stats,
            seed: args.seed,
            timeout_ms: args.timeout_ms,
            output,
            hdr_out: args.hdr_out,
            progress: !args.quiet,
        })
    }

    /// Points the run at `addr` (the built-in baseline server's address).
    pub fn set_target(&mut self, addr: SocketAddr) {
        self.addr = addr;
    }

    /// Points the run at the primary a coordinator named: `server` is its address as the view
    /// gives it, `addr` what that resolves to.
    ///
    /// # Errors
    /// [`ConfigError::Resolve`] when the primary's address does not resolve.
    pub fn set_primary(&mut self, id: &str, view: u64, server: &str) -> Result<(), ConfigError> {
        let addr =
            resolve(server).map_err(|e| ConfigError::Resolve(format!("primary {id} of view {view}: {e}")))?;
        self.server = server.to_string();
        self.addr = addr;
        self.primary = Some(Primary { id: id.to_string(), view });
        Ok(())
    }

    /// The workload of test `test`, or of the prefill when `None`.
    pub fn workload(&self, test: Option<&TestSpec>) -> WorkloadSpec {
        WorkloadSpec {
            keyspace: self.keyspace,
            key_dist: self.key_dist,
            mix: test.map_or(Mix::only(Cmd::Put), |t| t.mix),
            partition: self.verify,
            prefill: test.is_none(),
        }
    }
}

/// Resolves `HOST:PORT` to its first address.
///
/// # Errors
/// [`ConfigError::Resolve`] when it does not resolve.
pub fn resolve(server: &str) -> Result<SocketAddr, ConfigError> {
    server
        .to_socket_addrs()
        .map_err(|e| ConfigError::Resolve(format!("cannot resolve {server}: {e}")))?
        .next()
        .ok_or_else(|| ConfigError::Resolve(format!("{server} resolves to no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Config, String> {
        let args = Args::try_parse_from(line.split_whitespace()).map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    fn ok(line: &str) -> Config {
        parse(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn names(config: &Config) -> Vec<&str> {
        config.tests.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn defaults() {
        let c = ok("tandem-bench");
        assert_eq!(c.addr, SocketAddr::from(([127, 0, 0, 1], 7070)));
        assert_eq!(c.protocol, Protocol::Tandem);
        assert_eq!(c.framing, Framing::Fixed);
        assert_eq!((c.connections, c.pipeline, c.threads), (50, 1, 1));
        assert_eq!((c.requests, c.duration_s), (Some(100_000), None));
        assert_eq!((c.data_size, c.keyspace, c.key_dist), (100, 10_000, KeyDist::Uniform));
        assert_eq!(names(&c), ["PUT", "GET"]);
        assert_eq!((c.prefill, c.rate, c.verify, c.seed, c.timeout_ms), (false, None, false, 1, 5000));
        assert_eq!(c.output, Output::Human);
        assert!(c.progress);
    }

    #[test]
    fn every_flag_parses() {
        let c =
            ok("tandem-bench -s localhost:9000 --protocol resp -c 8 -P 16 --duration 2.5 -d 4000 -r 500 \
                    -t get,set,append --key-dist zipf:0.9 --threads 2 --warmup 1 --seed 42 --prefill \
                    --rate 1000 --verify --timeout-ms 250 --json --hdr-out /tmp/h -q");
        assert_eq!(c.server, "localhost:9000");
        assert_eq!(c.addr.port(), 9000);
        assert_eq!(c.protocol, Protocol::Resp);
        assert_eq!((c.connections, c.pipeline, c.threads), (8, 16, 2));
        assert_eq!((c.requests, c.duration_s, c.warmup_s), (None, Some(2.5), 1.0));
        assert_eq!((c.data_size, c.keyspace, c.key_dist), (4000, 500, KeyDist::Zipf(0.9)));
        assert_eq!(names(&c), ["GET", "PUT", "APPEND"]);
        assert_eq!((c.prefill, c.rate, c.verify, c.seed, c.timeout_ms), (true, Some(1000.0), true, 42, 250));
        assert_eq!(c.output, Output::Json);
        assert_eq!(c.hdr_out, Some(PathBuf::from("/tmp/h")));
        assert!(!c.progress);
        assert_eq!(ok("tandem-bench -n 7 --csv").requests, Some(7));
        assert_eq!(ok("tandem-bench --csv").output, Output::Csv);
        assert_eq!(ok("tandem-bench --server 127.0.0.1:1 --pipeline 3").pipeline, 3);
        assert_eq!(ok("tandem-bench --connections 3 --requests 9 --data-size 1 --keyspace 2").keyspace, 2);
        assert_eq!(ok("tandem-bench --tests put").tests.len(), 1);
    }

    #[test]
    fn ratio_and_ycsb() {
        let c = ok("tandem-bench --ratio 1:10");
        assert_eq!(names(&c), ["mixed"]);
        assert_eq!(c.tests[0].mix, Mix { put: 1, get: 10, append: 0 });
        let c = ok("tandem-bench --ycsb B");
        assert_eq!(names(&c), ["ycsb-b"]);
        assert_eq!(c.tests[0].mix, Mix { put: 5, get: 95, append: 0 });
        assert_eq!(c.key_dist, KeyDist::Zipf(0.99));
        assert!(c.prefill);
        assert_eq!(ok("tandem-bench --ycsb a").tests[0].mix, Mix { put: 50, get: 50, append: 0 });
        assert_eq!(ok("tandem-bench --ycsb c").tests[0].mix, Mix { put: 0, get: 1, append: 0 });
        assert_eq!(ok("tandem-bench --ycsb c --key-dist uniform").key_dist, KeyDist::Uniform);
        for bad in ["--ratio 1", "--ratio 0:0", "--ratio a:b", "--ratio 1:2 --ycsb a", "-t get --ratio 1:1"] {
            assert!(parse(&format!("tandem-bench {bad}")).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn baseline_and_coordinator() {
        let c = ok("tandem-bench --baseline echo -c 1");
        assert_eq!(c.protocol, Protocol::Echo);
        assert_eq!(c.server, "builtin-echo");
        assert!(parse("tandem-bench --baseline echo -s 127.0.0.1:1").is_err());
        assert!(parse("tandem-bench --baseline echo --protocol resp").is_err());
        assert_eq!(ok("tandem-bench --protocol echo").protocol, Protocol::Echo);
    }

    #[test]
    fn coordinator_replaces_server_for_tandem_only() {
        let mut c = ok("tandem-bench --coordinator 127.0.0.1:9,localhost:10");
        assert_eq!(c.coordinator, Some(vec!["127.0.0.1:9".to_string(), "localhost:10".to_string()]));
        assert_eq!(c.coordinator_addrs.len(), 2);
        assert_eq!(c.coordinator_addrs[0], SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(ok("tandem-bench --coordinator 127.0.0.1:9 --protocol tandem").coordinator_addrs.len(), 1);
        c.set_primary("s1", 7, "127.0.0.1:7071").expect("resolves");
        assert_eq!((c.server.as_str(), c.addr.port()), ("127.0.0.1:7071", 7071));
        let json = serde_json::to_value(&c).expect("serializes");
        assert_eq!(json["server"], "127.0.0.1:7071");
        assert_eq!(json["coordinator"], serde_json::json!(["127.0.0.1:9", "localhost:10"]));
        assert_eq!(json["primary"], serde_json::json!({"id": "s1", "view": 7}));
        let err = c.set_primary("s2", 8, "nowhere.invalid:1").expect_err("does not resolve");
        assert!(err.to_string().starts_with("primary s2 of view 8: cannot resolve"), "{err}");
        for (bad, why) in [
            ("--coordinator 127.0.0.1:9 -s 127.0.0.1:1", "cannot be used with"),
            ("--coordinator 127.0.0.1:9 --protocol resp", "needs --protocol tandem"),
            ("--coordinator 127.0.0.1:9 --protocol echo", "needs --protocol tandem"),
            ("--coordinator 127.0.0.1:9 --baseline echo", "cannot be used with"),
            ("--coordinator 127.0.0.1:9,", "no empty address"),
            ("--coordinator nowhere.invalid:1", "cannot resolve"),
        ] {
            let err = parse(&format!("tandem-bench {bad}")).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        let plain = serde_json::to_value(ok("tandem-bench")).expect("serializes");
        assert!(plain["coordinator"].is_null() && plain["primary"].is_null(), "{plain}");
    }

    #[test]
    fn compact_framing_needs_tandem_frames() {
        let c = ok("tandem-bench --framing compact");
        assert_eq!((c.protocol, c.framing), (Protocol::Tandem, Framing::Compact));
        assert_eq!(serde_json::to_value(&c).expect("serializes")["framing"], "compact");
        assert_eq!(serde_json::to_value(ok("tandem-bench")).expect("serializes")["framing"], "fixed");
        assert_eq!(ok("tandem-bench --protocol echo --framing compact").framing, Framing::Compact);
        assert_eq!(ok("tandem-bench --baseline echo --framing compact").framing, Framing::Compact);
        assert_eq!(ok("tandem-bench --coordinator 127.0.0.1:9 --framing compact").framing, Framing::Compact);
        assert_eq!(ok("tandem-bench --protocol resp --framing fixed").framing, Framing::Fixed);
        let err = parse("tandem-bench --protocol resp --framing compact").expect_err("RESP has no frames");
        assert!(err.contains("needs --protocol tandem or echo"), "{err}");
        assert!(parse("tandem-bench --framing padded").is_err());
        // The limits are those of fixed frames.
        assert!(parse("tandem-bench --framing compact -d 4033").is_err());
        assert_eq!(ok("tandem-bench --framing compact -d 4032").data_size, 4032);
    }

    #[test]
    fn wait_needs_resp_and_a_test_that_writes() {
        let c = ok("tandem-bench --protocol resp --wait 2");
        assert_eq!(c.wait, Some(2));
        assert_eq!(serde_json::to_value(&c).expect("serializes")["wait"], 2);
        assert_eq!(ok("tandem-bench --protocol resp --wait 0 -t set").wait, Some(0));
        assert_eq!(ok("tandem-bench --protocol resp --wait 1 -t get,append").wait, Some(1));
        assert_eq!(ok("tandem-bench --protocol resp --wait 1 --ycsb b").wait, Some(1));
        assert_eq!(ok("tandem-bench --protocol resp").wait, None);
        for (bad, why) in [
            ("--wait 1", "needs --protocol resp"),
            ("--protocol echo --wait 1", "needs --protocol resp"),
            ("--baseline echo --wait 1", "needs --protocol resp"),
            ("--protocol resp --wait 1 -t get", "no test writes"),
            ("--protocol resp --wait 1 --ycsb c", "no test writes"),
            ("--protocol resp --wait 1 --ratio 0:1", "no test writes"),
            ("--protocol resp --wait -1", "invalid value"),
        ] {
            let err = parse(&format!("tandem-bench {bad}")).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "-c 0",
            "-P 0",
            "-n 0",
            "-n 5 --duration 1",
            "--duration 0",
            "--duration -1",
            "--warmup -1",
            "--rate 0",
            "-r 0",
            "--threads 0",
            "-c 2 --threads 3",
            "-d 4033",
            "--verify -d 8",
            "--verify -c 10 -r 5",
            "--protocol echo --verify",
            "--timeout-ms 0",
            "--key-dist zipf:0",
            "-t delete",
            "--csv --json",
            "-s nowhere.invalid:1",
            "-s 127.0.0.1",
        ] {
            assert!(parse(&format!("tandem-bench {bad}")).is_err(), "{bad} should fail");
        }
        // The frame limit does not apply to Redis.
        assert_eq!(ok("tandem-bench --protocol resp -d 100000").data_size, 100_000);
        assert_eq!(ok("tandem-bench -d 4032").data_size, 4032);
    }

    #[test]
    fn resolved_config_serializes() {
        let c = ok("tandem-bench --ratio 1:3 --key-dist zipf:0.5 --rate 100");
        let json = serde_json::to_value(&c).expect("serializes");
        assert_eq!(json["addr"], "127.0.0.1:7070");
        assert_eq!(json["protocol"], "tandem");
        assert_eq!(json["key_dist"], "zipf:0.5");
        assert_eq!(json["tests"][0]["name"], "mixed");
        assert_eq!(json["tests"][0]["mix"]["get"], 3);
        assert_eq!(json["rate"], 100.0);
        assert_eq!(json["requests"], 100_000);
        assert!(json.get("progress").is_none());
    }

    #[test]
    fn verify_partitions_keys() {
        let c = ok("tandem-bench --verify -t put,get");
        assert!(c.workload(c.tests.first()).partition);
        assert!(c.workload(None).prefill);
        assert!(!c.workload(c.tests.first()).prefill);
    }
}
