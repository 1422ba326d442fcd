//! `--framing compact`: every connection asks for compact frames with a HELLO before its
//! first request, and the run measures what it asked for or does not run at all. Against a
//! real Tandem server (directly and through `--coordinator`), the `tandem-echo` ceiling, and
//! fake servers that refuse (from before HELLO, or choosing fixed frames) or drop
//! connections.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{
    bench, describe, fake_coordinator, fake_tandem, fake_tandem_hello, json_lines, spawn_echo, Fault,
    HelloMode, RunningServer,
};
use wire::cluster::{Member, View};

const LIMIT: Duration = Duration::from_secs(30);

/// The bytes each way per PUT and GET of a 100-byte value under a 16-byte key, compact:
/// the request is header + key (+ value); the reply header (+ value).
const PUT_COMPACT: (f64, f64) = (48.0 + 16.0 + 100.0, 48.0);
const GET_COMPACT: (f64, f64) = (48.0 + 16.0, 48.0 + 100.0);

fn bytes_per_op(line: &serde_json::Value) -> (f64, f64) {
    let get = |field: &str| line[field].as_f64().unwrap_or_else(|| panic!("{field} in {line}"));
    (get("bytes_sent_per_op"), get("bytes_received_per_op"))
}

#[test]
fn compact_against_tandem_server_moves_a_fraction_of_the_bytes() {
    let server = RunningServer::start(server::Config::default().max_connections);
    let addr = server.addr.clone();
    let shape = ["-c", "4", "-P", "4", "-d", "100", "-r", "500", "--prefill", "--verify", "-t", "put,get"];
    let mut args = vec!["-s", &addr, "--framing", "compact", "--duration", "0.5", "--json"];
    args.extend_from_slice(&shape);
    let compact = bench(&args, LIMIT);
    let mut args = vec!["-s", &addr, "-n", "2000", "--json"];
    args.extend_from_slice(&shape);
    let fixed = bench(&args, LIMIT);
    let human = bench(&["-s", &addr, "--framing", "compact", "-c", "1", "-n", "10", "-t", "put"], LIMIT);
    server.stop();

    assert_eq!(compact.status.code(), Some(0), "{}", describe(&compact));
    let lines = json_lines(&compact);
    let tests: Vec<&str> = lines.iter().map(|l| l["test"].as_str().expect("test")).collect();
    assert_eq!(tests, ["PUT", "GET"]);
    for (line, expected) in lines.iter().zip([PUT_COMPACT, GET_COMPACT]) {
        let ops = line["ops"].as_u64().expect("ops");
        assert!(ops > 100, "{line}");
        assert_eq!(line["requests"].as_u64(), Some(ops), "{line}");
        assert_eq!(
            (line["errors"].as_u64(), line["misses"].as_u64()),
            (Some(0), Some(0)),
            "verified: {line}"
        );
        assert_eq!(line["framing"], "compact", "{line}");
        assert_eq!(line["config"]["framing"], "compact", "{line}");
        assert_eq!(bytes_per_op(line), expected, "{line}");
        assert_eq!(line["bytes_sent"].as_f64(), Some(expected.0 * ops as f64), "{line}");
    }

    assert_eq!(fixed.status.code(), Some(0), "{}", describe(&fixed));
    for line in json_lines(&fixed) {
        assert_eq!(line["framing"], "fixed", "{line}");
        assert_eq!(bytes_per_op(&line), (4096.0, 4096.0), "{line}");
    }

    assert_eq!(human.status.code(), Some(0), "{}", describe(&human));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.lines().next().is_some_and(|l| l.ends_with("; compact framing")), "{text}");
    assert!(text.lines().any(|l| l == "  bytes/op: sent 164 received 48 (compact framing)"), "{text}");
}

#[test]
fn a_server_that_does_not_agree_stops_the_run_before_it_starts() {
    for (mode, why) in [
        (HelloMode::Unknown, "it answered HELLO with UNKNOWN_COMMAND (a server from before HELLO)"),
        (HelloMode::ChooseFixed, "it chose fixed framing"),
    ] {
        let server = fake_tandem_hello(Fault::None, mode);
        let addr = server.addr.to_string();
        let started = Instant::now();
        let out = bench(&["-s", &addr, "--framing", "compact", "-c", "2", "-n", "100", "--json"], LIMIT);
        assert!(started.elapsed() < Duration::from_secs(2), "{mode:?} took {:?}", started.elapsed());
        assert_eq!(out.status.code(), Some(2), "{mode:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
        let expected = format!("tandem-bench: server {addr} does not agree to compact framing: {why}");
        assert!(stderr.starts_with(&expected), "{mode:?}: {stderr}");
        assert!(stderr.contains("--framing fixed"), "says what to do: {stderr}");
        assert!(out.stdout.is_empty(), "nothing measured: {}", describe(&out));
        assert_eq!(server.requests.load(Ordering::Relaxed), 0, "no request was sent");
        assert_eq!(server.after_refusal.load(Ordering::Relaxed), 0, "nothing after the refused HELLO");
    }
    // The same server is fine with fixed frames, which send no HELLO.
    let server = fake_tandem(Fault::None);
    let addr = server.addr.to_string();
    let out = bench(&["-s", &addr, "-c", "2", "-n", "100", "-t", "put", "--json"], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(server.hellos.load(Ordering::Relaxed), 0);
}

#[test]
fn compact_through_the_coordinator() {
    let server = RunningServer::start(server::Config::default().max_connections);
    let primary = Member { id: "s1".into(), addr: server.addr.clone(), incarnation: 1, data_id: 1 };
    let view = View { num: 3, term: 3, primary: Some(primary), ..View::default() };
    let coordinator = fake_coordinator(view, 0);
    let list = coordinator.addr.to_string();
    let out = bench(
        &[
            "--coordinator",
            &list,
            "--framing",
            "compact",
            "-c",
            "2",
            "-P",
            "4",
            "-n",
            "200",
            "-r",
            "50",
            "--prefill",
            "-t",
            "put,get",
            "--json",
        ],
        LIMIT,
    );
    server.stop();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{}", describe(&out));
    for (line, expected) in lines.iter().zip([PUT_COMPACT, GET_COMPACT]) {
        assert_eq!((line["ops"].as_u64(), line["errors"].as_u64()), (Some(200), Some(0)), "{line}");
        assert_eq!(line["config"]["primary"], serde_json::json!({"id": "s1", "view": 3}), "{line}");
        assert_eq!(line["framing"], "compact", "{line}");
        assert_eq!(bytes_per_op(line), expected, "{line}");
    }
    assert_eq!(lines[1]["misses"], 0, "the prefill went to the same server, compact too");
}

#[test]
fn the_echo_ceiling_for_compact_frames() {
    let echo = spawn_echo();
    let addr = echo.addr.to_string();
    let args = ["--protocol", "echo", "-s", &addr, "-c", "2", "-P", "4", "-n", "1000", "-d", "100", "--json"];
    let out = bench(&[&args[..], &["--framing", "compact"][..]].concat(), LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for (line, sent) in json_lines(&out).iter().zip([PUT_COMPACT.0, GET_COMPACT.0]) {
        assert_eq!((line["ops"].as_u64(), line["errors"].as_u64()), (Some(1000), Some(0)), "{line}");
        assert_eq!(line["framing"], "compact", "{line}");
        assert_eq!(bytes_per_op(line), (sent, sent), "the echo returns each request: {line}");
    }
    // The same echo, on other connections, still serves fixed frames.
    let out = bench(&args, LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for line in json_lines(&out) {
        assert_eq!(bytes_per_op(&line), (4096.0, 4096.0), "{line}");
    }
}

#[test]
fn reopened_connections_ask_again() {
    let server = fake_tandem_hello(Fault::CloseAfter(50), HelloMode::Compact);
    let addr = server.addr.to_string();
    let out = bench(
        &["-s", &addr, "--framing", "compact", "-c", "2", "-P", "4", "-n", "400", "-t", "put", "--json"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    let kinds = &line["errors_by_kind"];
    assert!(kinds["closed"].as_u64().is_some_and(|n| n >= 2), "{line}");
    assert!(kinds.get("hello_refused").is_none(), "{line}");
    let ops = line["ops"].as_u64().expect("ops");
    let unanswered = kinds["unanswered"].as_u64().unwrap_or(0);
    assert!(ops >= 100, "reconnected, agreed again and went on: {line}");
    assert_eq!(ops + unanswered, 400, "{line}");
    // The probe's, the first two connections', and one per reopening.
    assert!(server.hellos.load(Ordering::Relaxed) >= 5, "{}", server.hellos.load(Ordering::Relaxed));
    // Every request went compact, also those lost with a connection (bytes per op divides
    // by the replies that succeeded).
    assert_eq!(
        line["bytes_sent"].as_f64(),
        Some(400.0 * PUT_COMPACT.0),
        "compact after every reopening: {line}"
    );
    assert_eq!(bytes_per_op(line).1, PUT_COMPACT.1, "{line}");
}

#[test]
fn a_refusal_during_the_run_is_counted_and_nothing_goes_fixed() {
    // The probe and the one connection agree; after 20 frames the connection is closed, and
    // the server refuses every HELLO from then on.
    let server = fake_tandem_hello(Fault::CloseAfter(20), HelloMode::CompactFirst(2));
    let addr = server.addr.to_string();
    let started = Instant::now();
    let out = bench(
        &[
            "-s",
            &addr,
            "--framing",
            "compact",
            "-c",
            "1",
            "-n",
            "200",
            "-t",
            "put",
            "--timeout-ms",
            "300",
            "--json",
        ],
        LIMIT,
    );
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(line["ops"], 19, "the frames before the close, less the HELLO: {line}");
    assert!(line["errors_by_kind"]["hello_refused"].as_u64().is_some_and(|n| n >= 1), "{line}");
    assert_eq!(server.after_refusal.load(Ordering::Relaxed), 0, "no request after a refused HELLO");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not agree to compact framing"),
        "{}",
        describe(&out)
    );
}
