//! Failing loudly: unreachable servers, usage errors, error replies, dropped connections and
//! a server that stops answering are all counted and reported, and set the exit status.

mod common;

use std::time::{Duration, Instant};

use common::{bench, describe, fake_busy, fake_tandem, json_lines, Fault};
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
fn usage_errors_exit_2() {
    let out = bench(&["-c", "0"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = bench(&["--no-such-flag"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // A negative number is a bad value, not an unknown flag.
    let out = bench(&["--duration", "-1"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration must be"), "{}", describe(&out));
    // A histogram file that cannot be written is refused before the run, not after it.
    let out = bench(&["-s", "127.0.0.1:1", "--hdr-out", "/nonexistent/dir/h.hgrm"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hdr-out"), "{}", describe(&out));
}

/// Flags of the replication features that do not go together are refused before anything is
/// sent, with one line saying why.
#[test]
fn coordinator_and_wait_misuse_exits_2_at_once() {
    for (args, why) in [
        (&["--wait", "1"][..], "--wait N sends Redis's WAIT: it needs --protocol resp"),
        (&["--protocol", "echo", "--wait", "0"], "needs --protocol resp"),
        (&["--protocol", "resp", "--wait", "1", "-t", "get"], "no test writes"),
        (&["--protocol", "resp", "--wait", "1", "--ycsb", "c"], "no test writes"),
        (&["--coordinator", "127.0.0.1:1", "-s", "127.0.0.1:2"], "cannot be used with"),
        (&["--coordinator", "127.0.0.1:1", "--protocol", "resp"], "--coordinator finds a Tandem primary"),
        (&["--coordinator", "127.0.0.1:1", "--baseline", "echo"], "cannot be used with"),
        (&["--protocol", "resp", "--framing", "compact"], "--framing compact lays out Tandem frames"),
    ] {
        let started = Instant::now();
        let out = bench(args, LIMIT);
        assert!(started.elapsed() < Duration::from_secs(2), "{args:?} took {:?}", started.elapsed());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{args:?}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
        if !why.contains("cannot be used") {
            // Clap's own conflicts come with a usage hint; ours are one line.
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        }
    }
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

/// A server at its connection limit sends BUSY as a connection opens and closes it a little
/// later. The BUSY answers the request in flight, and every other one in flight with it, and
/// ends the connection: nothing more is sent on it (it would be lost, `unanswered`, when the
/// close comes), and it reopens after the usual delay.
#[test]
fn a_busy_refusal_ends_the_connection_at_once() {
    let server = fake_busy(Duration::from_millis(50));
    let addr = server.addr.to_string();
    let out = bench(&["-s", &addr, "-c", "1", "-P", "2", "-n", "6", "-t", "put", "--json"], LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    let kinds = &line["errors_by_kind"];
    assert_eq!(line["ops"], 0, "{line}");
    assert_eq!(line["errors"], 9, "{line}");
    assert_eq!(kinds["status:BUSY"], 6, "every request was refused: {line}");
    assert_eq!(kinds["closed"], 3, "three connections, each refused and closed once: {line}");
}

#[test]
fn an_interrupt_reports_the_partial_test_skips_the_rest_and_exits_130() {
    let echo = common::spawn_echo();
    let addr = echo.addr.to_string();
    let child = std::process::Command::new(common::BENCH)
        .args(["--protocol", "echo", "-s", &addr, "-c", "2", "--duration", "30", "-t", "put,get", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    let status =
        std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("output");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(130), "{}", describe(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "the GET test never started: {}", describe(&out));
    assert_eq!(lines[0]["test"], "PUT");
    assert_eq!(lines[0]["interrupted"], true);
    assert_eq!(lines[0]["errors"], 0);
    assert_eq!(lines[0]["ops"], lines[0]["requests"], "every request sent before the stop was answered");
    let elapsed = lines[0]["elapsed_s"].as_f64().expect("elapsed");
    assert!(elapsed < 5.0, "stopped early: {elapsed}");
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
