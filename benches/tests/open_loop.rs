//! Open loop beyond what the server (or the client) can do: the test must stop at its
//! duration, count what it could not send as not sent (not as timeouts), and report the rate
//! it achieved below the target. Against a real Tandem server started in-process.

mod common;

use std::time::{Duration, Instant};

use common::{bench, describe, json_lines, RunningServer};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn an_overloaded_open_loop_run_stops_on_time_and_counts_what_it_did_not_send() {
    let server = RunningServer::start(server::Config::default().max_connections);
    let addr = server.addr.clone();
    let (duration, rate, connections) = (2.0, 1_000_000.0, 10.0);
    let started = Instant::now();
    // A long timeout: a run that worked its backlog off after the end, or waited for the
    // timeout to give up on it, would take over 12 s.
    let out = bench(
        &[
            "-s",
            &addr,
            "-c",
            "10",
            "--rate",
            "1000000",
            "--duration",
            "2",
            "-t",
            "get",
            "--timeout-ms",
            "10000",
            "--json",
        ],
        LIMIT,
    );
    let took = started.elapsed();
    server.stop();

    assert_eq!(out.status.code(), Some(0), "not sending everything is no error: {}", describe(&out));
    // Loose: a loaded 2-core machine may be slow to start and to drain what is in flight.
    assert!(took < Duration::from_secs_f64(duration + 3.0), "took {took:?}: {}", describe(&out));
    let line = &json_lines(&out)[0];
    let elapsed = line["elapsed_s"].as_f64().expect("elapsed_s");
    assert!(elapsed < duration + 3.0, "{line}");
    assert_eq!(line["errors"], 0, "nothing timed out: {line}");
    assert!(line["errors_by_kind"].get("timeout").is_none(), "{line}");
    let requests = line["requests"].as_u64().expect("requests");
    let not_sent = line["not_sent"].as_u64().unwrap_or_else(|| panic!("a not_sent count: {line}"));
    assert!(requests > 0 && not_sent > 0, "{line}");
    // Every request of the schedule is either sent or counted as not sent.
    let scheduled = (requests + not_sent) as f64;
    assert!((scheduled - rate * duration).abs() <= connections, "{scheduled} of {}: {line}", rate * duration);
    let rate_report = &line["rate"];
    assert_eq!(rate_report["target_rate"], rate, "{line}");
    assert_eq!(rate_report["window_s"], duration, "{line}");
    let achieved = rate_report["achieved_rate"].as_f64().expect("achieved_rate");
    assert!(achieved > 0.0 && achieved < rate, "{line}");
    assert!((achieved - requests as f64 / duration).abs() < 1.0, "{line}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{not_sent} requests could not be sent on schedule")), "{stderr}");
}
