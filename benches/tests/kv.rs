//! tandem-bench against in-test key-value servers speaking Tandem frames and RESP: prefill,
//! --verify (and that it catches a wrong value), mixes, YCSB presets, APPEND.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{bench, describe, fake_resp, fake_tandem, json_lines, FakeServer, Fault};

const LIMIT: Duration = Duration::from_secs(30);

fn verified_run(server: &FakeServer, protocol: &str) -> std::process::Output {
    let addr = server.addr.to_string();
    bench(
        &[
            "--protocol",
            protocol,
            "-s",
            &addr,
            "-c",
            "4",
            "-P",
            "8",
            "-n",
            "2000",
            "-r",
            "200",
            "-d",
            "100",
            "--prefill",
            "--verify",
            "-t",
            "put,get",
            "--json",
        ],
        LIMIT,
    )
}

fn check_verified(server: &FakeServer, out: &std::process::Output) {
    assert_eq!(out.status.code(), Some(0), "{}", describe(out));
    let lines = json_lines(out);
    let tests: Vec<&str> = lines.iter().map(|l| l["test"].as_str().expect("test")).collect();
    // One object per test; the prefill's summary is on stderr.
    assert_eq!(tests, ["PUT", "GET"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prefill: 200 ops in "), "the prefill writes every key once: {stderr}");
    for line in &lines {
        assert_eq!(line["ops"], 2000, "{line}");
        assert_eq!(line["errors"], 0, "{line}");
        assert_eq!(line["config"]["prefill"], true, "{line}");
    }
    assert_eq!(lines[1]["misses"], 0, "after a prefill every GET hits");
    assert_eq!(lines[1]["config"]["verify"], true);
    assert_eq!(server.requests.load(Ordering::Relaxed), 4200, "the server saw exactly what was counted");
}

#[test]
fn tandem_prefill_then_verified_puts_and_gets() {
    let server = fake_tandem(Fault::None);
    let out = verified_run(&server, "tandem");
    check_verified(&server, &out);
}

#[test]
fn resp_prefill_then_verified_sets_and_gets() {
    let server = fake_resp(Fault::None);
    let out = verified_run(&server, "resp");
    check_verified(&server, &out);
}

#[test]
fn verify_catches_a_wrong_value() {
    for (server, protocol) in
        [(fake_tandem(Fault::CorruptValues), "tandem"), (fake_resp(Fault::CorruptValues), "resp")]
    {
        let out = verified_run(&server, protocol);
        assert_eq!(out.status.code(), Some(1), "{protocol}: {}", describe(&out));
        let lines = json_lines(&out);
        let get = lines.iter().find(|l| l["test"] == "GET").expect("a GET line");
        assert_eq!(get["errors_by_kind"]["verify"], 2000, "{protocol}: {get}");
    }
}

#[test]
fn resp_error_replies_are_counted() {
    let server = fake_resp(Fault::Status(wire::Status::INTERNAL));
    let addr = server.addr.to_string();
    let out = bench(
        &["--protocol", "resp", "-s", &addr, "-c", "2", "-P", "3", "-n", "90", "-t", "set", "--json"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(json_lines(&out)[0]["errors_by_kind"]["resp_error"], 90);
}

#[test]
fn gets_without_prefill_are_misses_not_errors() {
    let server = fake_resp(Fault::None);
    let addr = server.addr.to_string();
    let out =
        bench(&["--protocol", "resp", "-s", &addr, "-c", "2", "-n", "50", "-t", "get", "--json"], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(
        (line["ops"].as_u64(), line["misses"].as_u64(), line["errors"].as_u64()),
        (Some(50), Some(50), Some(0))
    );
}

#[test]
fn ycsb_a_mixes_updates_and_reads_on_a_prefilled_key_space() {
    let server = fake_tandem(Fault::None);
    let addr = server.addr.to_string();
    let out = bench(
        &["-s", &addr, "-c", "4", "-P", "4", "-n", "2000", "-r", "100", "--ycsb", "a", "--seed", "9"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("zipf:0.99"), "{text}");
    assert!(text.contains("\nprefill: 100 ops in "), "{text}");
    assert!(text.contains("\nycsb-a: 2000 ops in "), "{text}");
    assert!(text.contains("  hits "), "{text}");
    assert!(text.contains(" misses 0\n"), "{text}");
    assert!(text.contains("  PUT latency us: "), "{text}");
    assert!(text.contains("  GET latency us: "), "{text}");
}

#[test]
fn appends_and_ratio_mixes_run_on_tandem() {
    let server = fake_tandem(Fault::None);
    let addr = server.addr.to_string();
    let out = bench(&["-s", &addr, "-c", "2", "-n", "100", "-d", "10", "-t", "append", "--json"], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json_lines(&out)[0]["commands"]["APPEND"]["ops"], 100);
    let out = bench(&["-s", &addr, "-c", "2", "-n", "400", "--ratio", "1:3", "--json"], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(line["test"], "mixed");
    let puts = line["commands"]["PUT"]["ops"].as_u64().expect("puts");
    let gets = line["commands"]["GET"]["ops"].as_u64().expect("gets");
    assert_eq!(puts + gets, 400);
    assert!((50..150).contains(&puts), "about a quarter PUTs: {line}");
}
