//! `tandem-bench`: the load tool. Parses the flags, finds the primary (`--coordinator`), runs
//! the phases, prints each test's results as it ends, and exits 0 (all good), 1 (errors or
//! timeouts during the run), 2 (usage error, unreachable server, no primary, a server that
//! does not agree to `--framing compact`, a histogram file that could not be written) or 130
//! (interrupted: the test under way is reported as partial, later ones are skipped; a second
//! Ctrl-C exits at once).

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use benches::config::{Baseline, Output};
use benches::coordinator::{self, LOOKUP_BUDGET};
use benches::echo::EchoServer;
use benches::proto::Protocol;
use benches::report::{self, TestReport};
use benches::server_stats::{self, StorageReport};
use benches::{Args, Config, RunEvent, Runner};
use clap::Parser;

const TICK: Duration = Duration::from_millis(500);
/// How long a STATS read before the run or after a test may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let mut config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tandem-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if !config.coordinator_addrs.is_empty() {
        let found = match coordinator::find_primary(&config.coordinator_addrs, LOOKUP_BUDGET) {
            Ok(found) => found,
            Err(e) => {
                eprintln!("tandem-bench: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = config.set_primary(&found.primary.id, found.view, &found.primary.addr) {
            eprintln!("tandem-bench: {e}");
            return ExitCode::from(2);
        }
    }
    // Kept alive until the end of main; dropping it stops the built-in server.
    let _echo = match config.baseline {
        Some(Baseline::Echo) => match EchoServer::spawn(([127, 0, 0, 1], 0).into()) {
            Ok(server) => {
                config.set_target(server.addr());
                Some(server)
            }
            Err(e) => {
                eprintln!("tandem-bench: cannot start the built-in echo server: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    // `--server-stats`: a Tandem server's STATS before the run and after each test; its
    // storage's share of the work (write amplification) goes into each report.
    // Read once the run is sure to start (connections open, framing agreed), so that a run
    // that does not start sends nothing more.
    let stats_addr = (config.server_stats && config.protocol == Protocol::Tandem).then_some(config.addr);
    let mut counters = None;
    let started = Runner::start_with(&config, || {
        counters = stats_addr.and_then(|addr| server_stats::fetch(addr, STATS_TIMEOUT));
    });
    let mut runner = match started {
        Ok(runner) => runner,
        Err(e) => {
            eprintln!("tandem-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let interrupted = runner.interrupt_flag();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal stops the run gracefully; a second one, with the flag already
        // set, exits at once.
        let registered = signal_hook::flag::register_conditional_shutdown(signal, 130, interrupted.clone())
            .and_then(|_| signal_hook::flag::register(signal, interrupted.clone()));
        if let Err(e) = registered {
            log::warn!("cannot handle signal {signal}: {e}");
        }
    }

    let mut out = io::stdout().lock();
    // Output errors (a closed pipe) must not stop the run nor change its verdict.
    match config.output {
        Output::Human => _ = writeln!(out, "{}", report::describe(&config)),
        Output::Csv => _ = writeln!(out, "{}", report::CSV_HEADER),
        Output::Json => {}
    }
    let _ = out.flush();
    let show_progress = config.progress && io::stderr().is_terminal();
    let mut errors = 0;
    let mut not_sent = 0;
    // A histogram file that could not be written: the run's output is incomplete.
    let mut unwritten = false;
    let mut phase_start = Instant::now();
    let mut phase_base_ops = 0;
    let mut last_tick = (Instant::now(), 0u64);
    loop {
        match runner.next_event(TICK) {
            RunEvent::Tick { ops, errors: failed, latency } => {
                if show_progress {
                    let now = Instant::now();
                    let rate = (ops - last_tick.1) as f64 / now.duration_since(last_tick.0).as_secs_f64();
                    last_tick = (now, ops);
                    let name = runner.phases().get(runner.current_phase()).map_or("", |p| p.name.as_str());
                    let line = report::progress_line(
                        name,
                        phase_start.elapsed().as_secs_f64(),
                        ops - phase_base_ops,
                        rate,
                        &latency,
                        failed,
                    );
                    eprint!("\r\x1b[2K{line}");
                }
            }
            RunEvent::Phase(result) if result.stats.skipped => {}
            RunEvent::Phase(result) => {
                if show_progress {
                    eprint!("\r\x1b[2K");
                }
                let mut report = TestReport::new(&result, &config);
                let now = stats_addr.and_then(|addr| server_stats::fetch(addr, STATS_TIMEOUT));
                report.storage =
                    counters.as_ref().zip(now.as_ref()).and_then(|(a, b)| StorageReport::between(a, b));
                counters = now;
                errors += report.errors;
                not_sent += report.not_sent;
                // CSV and JSON carry one row / object per test: the prefill is not one, so its
                // summary goes to stderr there.
                let _ = match config.output {
                    Output::Human => report::write_human(&mut out, &report),
                    _ if result.phase.is_prefill() => writeln!(
                        io::stderr(),
                        "tandem-bench: prefill: {} ops in {:.2} s, errors {}",
                        report.ops,
                        report.elapsed_s,
                        report.errors
                    ),
                    Output::Csv => report::write_csv(&mut out, &report),
                    Output::Json => report::write_json(&mut out, &report),
                };
                let _ = out.flush();
                if let Some(base) = config.hdr_out.as_ref().filter(|_| !result.phase.is_prefill()) {
                    let path = report::hdr_path(base, &report.test, config.tests.len());
                    let written = std::fs::File::create(&path)
                        .and_then(|mut file| report::write_hgrm(&mut file, &report.histogram));
                    if let Err(e) = written {
                        eprintln!("tandem-bench: cannot write {}: {e}", path.display());
                        unwritten = true;
                    }
                }
                phase_start = Instant::now();
                phase_base_ops = last_tick.1.max(phase_base_ops) + report.ops;
                last_tick = (Instant::now(), phase_base_ops);
            }
            RunEvent::Done => break,
        }
    }
    if not_sent > 0 {
        eprintln!("tandem-bench: {not_sent} requests could not be sent on schedule: the target rate was not reached");
    }
    if errors > 0 {
        eprintln!("tandem-bench: {errors} errors during the run");
    }
    if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("tandem-bench: interrupted; the last test's results are partial");
        return ExitCode::from(130);
    }
    if unwritten {
        return ExitCode::from(2);
    }
    if errors > 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
