//! tandem-bench for a second against a real Tandem server (the `server` crate, started
//! in-process on a free port with a temporary data directory): the summary's counts must
//! match what was sent, with every GET verified against the last PUT.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{bench, describe, json_lines, spawn_echo, RunningServer};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_second_against_tandem_server_counts_and_verifies_everything() {
    let server = RunningServer::start(server::Config::default().max_connections);
    let addr = server.addr.clone();
    let out = bench(
        &[
            "-s",
            &addr,
            "-c",
            "8",
            "-P",
            "4",
            "-d",
            "200",
            "-r",
            "1000",
            "--duration",
            "0.5",
            "--prefill",
            "--verify",
            "-t",
            "put,get",
            "--json",
        ],
        LIMIT,
    );
    server.stop();

    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines = json_lines(&out);
    let tests: Vec<&str> = lines.iter().map(|l| l["test"].as_str().expect("test")).collect();
    assert_eq!(tests, ["PUT", "GET"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prefill: 1000 ops in "), "{stderr}");
    for line in &lines {
        let ops = line["ops"].as_u64().expect("ops");
        assert!(ops > 100, "{line}");
        assert_eq!(line["requests"].as_u64(), Some(ops), "{line}");
        assert_eq!(line["errors"], 0, "{line}");
        assert_eq!(line["misses"], 0, "{line}");
        let series: u64 =
            line["series"].as_array().expect("series").iter().map(|s| s["ops"].as_u64().unwrap_or(0)).sum();
        assert_eq!(series, ops);
    }
}

#[test]
fn a_server_at_its_connection_limit_is_counted_as_busy() {
    // The server refuses a connection over its limit with one BUSY reply carrying id 0
    // (PROTOCOL.md) and closes it. That reply answers the request in flight: it must be
    // counted as `status:BUSY`, not as a reply out of step (`id_mismatch`).
    let server = RunningServer::start(1);
    let addr = server.addr.clone();
    // Hold the one allowed connection, and wait until the server has registered it.
    let mut holder = std::net::TcpStream::connect(&addr).expect("the one allowed connection");
    let mut frame = [0u8; wire::FRAME_LEN];
    wire::Frame::request(1, wire::Command::PING, b"", b"").encode(&mut frame).expect("encodes");
    holder.write_all(&frame).expect("ping sent");
    holder.read_exact(&mut frame).expect("ping answered");

    let out =
        bench(&["-s", &addr, "-c", "1", "-n", "5", "-t", "put", "--timeout-ms", "2000", "--json"], LIMIT);
    drop(holder);
    server.stop();

    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    let kinds = &line["errors_by_kind"];
    assert_eq!(line["ops"], 0, "{line}");
    assert_eq!(kinds["status:BUSY"], 5, "every request was refused: {line}");
    assert!(kinds.get("id_mismatch").is_none(), "{line}");
}

/// With `--server-stats`, against a Tandem server each test reports what the server's storage
/// did meanwhile, from its STATS before and after: the bytes its log took and compaction's write
/// amplification. GETs write nothing; an echo server has no STATS, so no storage figures; and
/// without the flag nothing is read.
#[test]
fn server_stats_reports_the_storage_work_and_write_amplification_of_each_test() {
    let server = RunningServer::start(server::Config::default().max_connections);
    let addr = server.addr.clone();
    let run = bench(
        &[
            "-s",
            &addr,
            "-c",
            "4",
            "-P",
            "4",
            "-d",
            "4000",
            "-r",
            "100",
            "-n",
            "6000",
            "-t",
            "put",
            "--json",
            "--server-stats",
        ],
        LIMIT,
    );
    let reads = bench(
        &[
            "-s",
            &addr,
            "-c",
            "2",
            "-d",
            "4000",
            "-r",
            "100",
            "-n",
            "500",
            "-t",
            "get",
            "--json",
            "--server-stats",
        ],
        LIMIT,
    );
    let human =
        bench(&["-s", &addr, "-c", "1", "-d", "4000", "-n", "20", "-t", "put", "--server-stats"], LIMIT);
    let without = bench(&["-s", &addr, "-c", "1", "-d", "4000", "-n", "20", "-t", "put", "--json"], LIMIT);
    server.stop();

    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    let put = &json_lines(&run)[0];
    let storage = &put["storage"];
    let written = storage["bytes_written"].as_u64().unwrap_or_else(|| panic!("{put}"));
    assert!(written >= 6000 * 4000, "6000 PUTs of 4000 bytes, {written} bytes written: {put}");
    let copied = storage["compaction_bytes_copied"].as_u64().expect("copied");
    let wa = storage["write_amplification"].as_f64().expect("write amplification");
    assert!((wa - copied as f64 / written as f64).abs() < 1e-9, "{put}");
    assert!(storage["compactions"].as_u64().is_some(), "{put}");

    assert_eq!(reads.status.code(), Some(0), "{}", describe(&reads));
    let get = &json_lines(&reads)[0];
    assert_eq!(get["storage"]["bytes_written"].as_u64(), Some(0), "GETs write nothing: {get}");
    assert!(get["storage"]["write_amplification"].is_null(), "{get}");

    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.lines().any(|l| l.starts_with("  server storage: write amplification ")), "{text}");
    assert!(json_lines(&without)[0].get("storage").is_none(), "only with --server-stats");

    let echo = spawn_echo();
    let baseline = bench(
        &["--protocol", "echo", "-s", &echo.addr.to_string(), "-n", "100", "-t", "put", "--json"],
        LIMIT,
    );
    assert_eq!(baseline.status.code(), Some(0), "{}", describe(&baseline));
    assert!(json_lines(&baseline)[0].get("storage").is_none(), "no STATS from an echo server");
}
