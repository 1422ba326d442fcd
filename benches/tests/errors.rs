//! Failing loudly: unreachable servers, usage errors, error replies, dropped connections and
//! a server that stops answering are all counted and reported, and set the exit status.

mod common;

use std::time::{Duration, Instant};

use common::{bench, describe, fake_tandem, json_lines, Fault};
use wire::Status;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn an_unreachable_server_exits_2_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let started = Instant::now();
    let out = bench(&["-s", &addr, "-n", "10"], LIMIT);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains(&addr) && stderr.contains("cannot connect"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors_and_cluster_mode_exit_2() {
    let out = bench(&["-c", "0"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = bench(&["--coordinator", "127.0.0.1:1"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cluster mode not implemented yet"),
        "{}",
        describe(&out)
    );
    let out = bench(&["--no-such-flag"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn error_replies_are_counted_by_status_and_exit_1() {
    let server = fake_tandem(Fault::Status(Status::UNAVAILABLE));
    let addr = server.addr.to_string();
    let out = bench(&["-s", &addr, "-c", "2", "-P", "4", "-n", "200", "-t", "put", "--json"], LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(line["ops"], 0);
    assert_eq!(line["requests"], 200);
    assert_eq!(line["errors"], 200);
    assert_eq!(line["errors_by_kind"]["status:UNAVAILABLE"], 200, "{line}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("200 errors"), "{}", describe(&out));
}

#[test]
fn dropped_connections_are_counted_and_reopened() {
    let server = fake_tandem(Fault::CloseAfter(50));
    let addr = server.addr.to_string();
    let out = bench(&["-s", &addr, "-c", "2", "-P", "4", "-n", "400", "-t", "put", "--json"], LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    let kinds = &line["errors_by_kind"];
    assert!(kinds["closed"].as_u64().is_some_and(|n| n >= 2), "{line}");
    let ops = line["ops"].as_u64().expect("ops");
    let unanswered = kinds["unanswered"].as_u64().unwrap_or(0);
    assert!(ops >= 100, "reconnected and went on: {line}");
    assert_eq!(ops + unanswered, 400, "every request is answered or counted lost: {line}");
}

#[test]
fn a_silent_server_times_out_and_the_phase_gives_up() {
    let server = fake_tandem(Fault::Silent);
    let addr = server.addr.to_string();
    let started = Instant::now();
    let out =
        bench(&["-s", &addr, "-c", "2", "-n", "1000", "--timeout-ms", "200", "-t", "get", "--json"], LIMIT);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(line["ops"], 0);
    assert!(line["errors_by_kind"]["timeout"].as_u64().is_some_and(|n| n >= 2), "{line}");
    assert_eq!(line["errors_by_kind"]["stalled"], 1, "{line}");
}
