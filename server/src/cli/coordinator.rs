//! `tandem-coordinator`'s command line: the view service of a Tandem cluster.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::coordinator::driver::{Coordinator, Options};
use crate::coordinator::view_service;
use crate::secret::Key;
use clap::Parser;

/// The view service of a Tandem cluster: servers heartbeat it over UDP; it decides, view by
/// view, which of them is primary and which are backups, and tells clients where the primary is.
///
/// Its data directory holds the current view; keep it (and back it up): a coordinator started
/// on an empty directory does not know which servers hold the data.
#[derive(Debug, Parser)]
#[command(name = "tandem-coordinator", version)]
struct Args {
    /// UDP address for heartbeats and view requests. A non-loopback address requires
    /// --cluster-secret or --insecure.
    #[arg(long, default_value = "127.0.0.1:7100", value_name = "ADDR")]
    listen: SocketAddr,

    /// Directory for the persisted view (created if absent; locked while running).
    #[arg(long, default_value = "./tandem-coordinator", value_name = "DIR")]
    data: PathBuf,

    /// Servers per view: one primary and R-1 backups.
    #[arg(long, default_value_t = 3, value_name = "R")]
    replicas: usize,

    /// How often servers heartbeat, in milliseconds (servers must use the same value).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    ping_interval_ms: u64,

    /// A server is dead after this many intervals without a heartbeat.
    #[arg(long, default_value_t = 5, value_name = "N")]
    dead_pings: u32,

    /// File holding the cluster secret (at least 16 bytes): heartbeats and replies without its
    /// MAC are dropped.
    #[arg(long, value_name = "FILE")]
    cluster_secret: Option<PathBuf>,

    /// Allow a non-loopback --listen address without --cluster-secret.
    #[arg(long)]
    insecure: bool,
}

fn run(args: Args) -> Result<(), String> {
    if args.replicas == 0 {
        return Err("--replicas must be at least 1".into());
    }
    if args.ping_interval_ms == 0 || args.dead_pings == 0 {
        return Err("--ping-interval-ms and --dead-pings must be at least 1".into());
    }
    let key = match &args.cluster_secret {
        Some(path) => Some(Key::load(path).map_err(|e| format!("--cluster-secret {}: {e}", path.display()))?),
        None => None,
    };
    if !args.listen.ip().is_loopback() && key.is_none() && !args.insecure {
        return Err(format!(
            "refusing to listen on non-loopback address {} without --cluster-secret FILE (or pass --insecure)",
            args.listen
        ));
    }
    let opts = Options {
        listen: args.listen,
        data_dir: args.data,
        service: view_service::Config {
            group: 0,
            replicas: args.replicas,
            ping_interval: Duration::from_millis(args.ping_interval_ms),
            dead_pings: args.dead_pings,
        },
        key,
    };
    let coordinator = Coordinator::bind(opts).map_err(|e| e.to_string())?;
    let stop = coordinator.stop_flag();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("installing signal handlers: {e}"))?;
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "tandem-coordinator listening on {}", coordinator.local_addr());
    let _ = stdout.flush();
    coordinator.run().map_err(|e| e.to_string())
}

/// The `tandem-coordinator` command: parses `args` (the first is the program name), runs, and says how it
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
            eprintln!("tandem-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}
