//! `tandem-server`'s command line: flags → [`crate::Config`] → bind → run.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::{Config, Server};
use clap::Parser;
use storage::Durability;

/// A low-latency key-value server speaking Tandem's fixed 4096-byte frame protocol.
///
/// Without --coordinator it runs standalone: one persistent server. Logging goes to stderr;
/// set RUST_LOG (e.g. RUST_LOG=debug) to change its level.
#[derive(Debug, Parser)]
#[command(name = "tandem-server", version)]
struct Args {
    /// Address to listen on for clients. A non-loopback address requires --auth-token or --insecure.
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: SocketAddr,

    /// Directory for the data files (created if absent; locked while the server runs).
    #[arg(long, default_value = "./tandem-data", value_name = "DIR")]
    data: PathBuf,

    /// Repair the data directory instead of serving: keep every valid record, drop damaged
    /// ranges (each is printed: file, offset, length, reason), then check that the store opens.
    /// Exits 0 if it now opens (or needed nothing), 1 if it cannot be repaired. Run it with the
    /// server stopped, when it refuses to start because of corrupt data.
    #[arg(long)]
    repair: bool,

    /// When writes reach the disk: `always` = msync before replying (one per batch: group
    /// commit), `interval:MS` = msync every MS milliseconds, `never` = leave it to the OS.
    /// Every mode survives a process crash; only `always` survives a machine crash.
    #[arg(long, default_value = "never", value_name = "always|interval:MS|never")]
    fsync: Durability,

    /// Most client connections at once; more are answered BUSY and closed.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_connections: usize,

    /// Close connections that complete no request for this many seconds (0 = never).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    idle_timeout: u64,

    /// File holding the token clients must present with AUTH before any other command.
    #[arg(long, value_name = "FILE")]
    auth_token: Option<PathBuf>,

    /// Allow a non-loopback --listen address without --auth-token.
    #[arg(long)]
    insecure: bool,

    /// Spin this many microseconds on an empty poll before sleeping: lower latency on idle
    /// machines for a busier CPU (0 = off).
    #[arg(long, default_value_t = 0, value_name = "US")]
    busy_poll_us: u64,

    /// Serve every STATS counter in the Prometheus text format at http://ADDR/metrics (off by
    /// default; a non-loopback address needs --insecure). Figures are at most about a second old.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Cluster mode: spin up to this many microseconds for backups' acknowledgements while
    /// replies wait for them, instead of sleeping (0 = never spin).
    #[arg(long, default_value_t = 50, value_name = "US")]
    ack_spin_us: u64,

    /// Size of each storage segment file, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    segment_mib: u64,

    /// SO_SNDBUF for client sockets in bytes (default: the kernel's autotuning).
    #[arg(long, value_name = "BYTES")]
    so_sndbuf: Option<usize>,

    /// SO_RCVBUF for client sockets in bytes (default: the kernel's autotuning).
    #[arg(long, value_name = "BYTES")]
    so_rcvbuf: Option<usize>,

    /// Run as a member of a replicated cluster: the coordinator (view service) address(es),
    /// comma-separated. Heartbeats go to each over UDP.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    coordinator: Vec<SocketAddr>,

    /// Cluster mode: this server's stable id (default: the one kept in the data directory, or
    /// a new one generated on first start). Letters, digits, '-', '_', '.'.
    #[arg(long, value_name = "NAME")]
    id: Option<String>,

    /// Cluster mode: the address registered with the coordinator, which clients and peers
    /// dial (default: the listen address).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<SocketAddr>,

    /// Cluster mode: file holding the cluster secret (at least 16 bytes); heartbeats, replies
    /// and replication connections are authenticated with it.
    #[arg(long, value_name = "FILE")]
    cluster_secret: Option<PathBuf>,

    /// Cluster mode: heartbeat interval in milliseconds (the coordinator's must match).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    ping_interval_ms: u64,

    /// Cluster mode: how long a primary may serve after its backups last confirmed it, in
    /// milliseconds. A new primary waits this long (plus the clock-drift margin) after its
    /// last confirmation of the old one.
    #[arg(long, default_value_t = 400, value_name = "MS")]
    lease_ms: u64,
}

fn read_token(path: &PathBuf) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot read --auth-token {}: {e}", path.display()))?;
    let token = raw.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(format!("--auth-token {} is empty", path.display()));
    }
    Ok(token)
}

/// Raises the open-file limit to the hard limit, as each connection needs a descriptor;
/// warns if even that is below what --max-connections asks for.
fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = Rlimit { current: limit.maximum, maximum: limit.maximum };
    if limit.current != limit.maximum {
        if let Err(e) = setrlimit(Resource::Nofile, wanted) {
            log::warn!("cannot raise the open-file limit: {e}");
        }
    }
    let current = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    // Storage, listener, poll and signals need a few descriptors of their own.
    if current < max_connections as u64 + 64 {
        log::warn!(
            "open-file limit {current} is below --max-connections {max_connections}; \
             accepts will fail past it (raise `ulimit -n`)"
        );
    }
}

/// `--repair`: runs `Store::repair` on `dir` and prints what it dropped and kept, then opens the
/// store to check that it now opens. Does not serve.
fn repair(dir: &std::path::Path, segment_len: u64) -> Result<(), String> {
    let opts = storage::Options { segment_len, ..storage::Options::default() };
    if !dir.is_dir() {
        return Err(format!("--repair: {} is not a directory", dir.display()));
    }
    let report =
        storage::Store::repair(dir, &opts).map_err(|e| format!("cannot repair {}: {e}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    for d in &report.dropped {
        let _ =
            writeln!(out, "dropped {} offset={} length={}: {}", d.file.display(), d.offset, d.len, d.reason);
    }
    for (old, new) in &report.rewritten {
        let _ = writeln!(out, "rewrote {} as {} (its valid records)", old.display(), new.display());
    }
    let bytes: u64 = report.dropped.iter().map(|d| d.len).sum();
    let done = if report.compaction_redone { "; finished an interrupted compaction" } else { "" };
    let _ = if report.dropped.is_empty() {
        writeln!(out, "repair of {}: nothing dropped, every file is intact{done}", dir.display())
    } else {
        writeln!(
            out,
            "repair of {}: dropped {} ranges ({bytes} bytes); kept the {} valid records of the damaged files \
             in {} rewritten files, and every other file as it was{done}",
            dir.display(),
            report.dropped.len(),
            report.records_kept,
            report.rewritten.len(),
        )
    };
    let store = storage::Store::open(dir, opts)
        .map_err(|e| format!("{} still does not open after repair: {e}", dir.display()))?;
    let stats = store.stats();
    let _ = writeln!(out, "the store opens: {} keys, last lsn {}", stats.keys, stats.last_lsn);
    let _ = out.flush();
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    if args.repair {
        return repair(&args.data, args.segment_mib.max(1) * 1024 * 1024);
    }
    let auth_token = args.auth_token.as_ref().map(read_token).transpose()?;
    let cluster = if args.coordinator.is_empty() {
        for (set, flag) in [
            (args.id.is_some(), "--id"),
            (args.advertise.is_some(), "--advertise"),
            (args.cluster_secret.is_some(), "--cluster-secret"),
        ] {
            if set {
                return Err(format!("{flag} only applies in cluster mode (with --coordinator)"));
            }
        }
        None
    } else {
        if args.ping_interval_ms == 0 || args.lease_ms == 0 {
            return Err("--ping-interval-ms and --lease-ms must be at least 1".into());
        }
        let key = match &args.cluster_secret {
            Some(path) => Some(
                crate::secret::Key::load(path)
                    .map_err(|e| format!("--cluster-secret {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let lease = Duration::from_millis(args.lease_ms);
        let replica = crate::replica::Config {
            ping_interval: Duration::from_millis(args.ping_interval_ms),
            lease,
            grace: lease * 2,
            beacon_interval: (lease / 8).max(Duration::from_millis(1)),
            ..crate::replica::Config::default()
        };
        Some(crate::cluster::ClusterSettings {
            coordinators: args.coordinator.clone(),
            id: args.id.clone(),
            advertise: args.advertise,
            key,
            replica,
        })
    };
    raise_fd_limit(args.max_connections);
    let config = Config {
        listen: args.listen,
        data_dir: args.data,
        durability: args.fsync,
        max_connections: args.max_connections,
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        auth_token,
        insecure: args.insecure,
        busy_poll: Duration::from_micros(args.busy_poll_us),
        ack_spin: Duration::from_micros(args.ack_spin_us),
        metrics: args.metrics,
        segment_len: args.segment_mib.max(1) * 1024 * 1024,
        send_buffer: args.so_sndbuf,
        recv_buffer: args.so_rcvbuf,
        cluster,
        ..Config::default()
    };
    let mut server = Server::bind(config).map_err(|e| e.to_string())?;
    server.handle_signals().map_err(|e| e.to_string())?;
    // Scripts and tests wait for this line (and learn the port when --listen ends in :0).
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "tandem-server listening on {}", server.local_addr());
    let _ = stdout.flush();
    server.run().map_err(|e| e.to_string())
}

/// The `tandem-server` command: parses `args` (the first is the program name), runs, and says how it
/// ended.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).try_init();
    match run(Args::parse_from(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-server: {e}");
            ExitCode::FAILURE
        }
    }
}
