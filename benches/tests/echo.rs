//! tandem-bench against the real `tandem-echo` server: counts, JSON fields, the modes.

mod common;

use std::time::Duration;

use common::{bench, describe, json_lines, spawn_echo};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_second_of_closed_loop_counts_every_reply() {
    let echo = spawn_echo();
    let addr = echo.addr.to_string();
    let out = bench(
        &[
            "--protocol",
            "echo",
            "-s",
            &addr,
            "-c",
            "4",
            "-P",
            "4",
            "-d",
            "4000",
            "--duration",
            "1",
            "-t",
            "put,get",
            "--json",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{}", describe(&out));
    for (line, test) in lines.iter().zip(["PUT", "GET"]) {
        assert_eq!(line["test"], test);
        let ops = line["ops"].as_u64().expect("ops");
        assert!(ops > 100, "{line}");
        assert_eq!(line["requests"].as_u64(), Some(ops), "every measured request got its reply: {line}");
        assert_eq!(line["errors"], 0);
        for field in ["ops_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us"] {
            assert!(line[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {line}");
        }
        let elapsed = line["elapsed_s"].as_f64().expect("elapsed");
        assert!((0.95..2.0).contains(&elapsed), "elapsed {elapsed}");
        let series = line["series"].as_array().expect("series");
        assert!((1..=2).contains(&series.len()), "{line}");
        let series_ops: u64 = series.iter().map(|s| s["ops"].as_u64().expect("ops")).sum();
        assert_eq!(series_ops, ops, "the series adds up");
        assert_eq!(line["commands"][test]["ops"].as_u64(), Some(ops));
        assert_eq!(line["config"]["protocol"], "echo");
        assert_eq!(line["config"]["connections"], 4);
        assert_eq!(line["config"]["addr"], addr.as_str());
        assert!(line.get("rate").is_none());
    }
}

#[test]
fn a_request_count_is_exact_across_threads_and_the_summary_says_so() {
    let echo = spawn_echo();
    let addr = echo.addr.to_string();
    let out = bench(
        &["--protocol", "echo", "-s", &addr, "-c", "3", "-P", "5", "--threads", "2", "-n", "1001"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert!(lines.next().is_some_and(|l| l.starts_with("tandem-bench: echo protocol to")), "{text}");
    for test in ["PUT", "GET"] {
        let summary = lines.next().expect("a summary line");
        assert!(summary.starts_with(&format!("{test}: 1001 ops in ")), "{text}");
        assert!(summary.ends_with("ops/s, errors 0"), "{text}");
        assert!(lines.next().is_some_and(|l| l.starts_with("  latency us: p50 ")), "{text}");
        if test == "GET" {
            assert_eq!(lines.next(), Some("  hits 1001 misses 0"), "{text}");
        }
        assert_eq!(lines.next(), Some("  bytes/op: sent 4096 received 4096 (fixed framing)"), "{text}");
    }
}

#[test]
fn open_loop_meets_its_rate_and_reports_service_time() {
    let echo = spawn_echo();
    let addr = echo.addr.to_string();
    let out = bench(
        &[
            "--protocol",
            "echo",
            "-s",
            &addr,
            "-c",
            "2",
            "--rate",
            "2000",
            "--duration",
            "1",
            "-t",
            "get",
            "--json",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    let ops = line["ops"].as_u64().expect("ops");
    assert!((1900..=2001).contains(&ops), "2000/s for 1 s sent {ops}: {line}");
    assert_eq!(line["rate"]["target_ops_per_sec"], 2000.0);
    let achieved = line["rate"]["achieved_ops_per_sec"].as_f64().expect("achieved");
    assert!((1800.0..2200.0).contains(&achieved), "{line}");
    assert!(line["rate"]["service"]["p50_us"].as_f64().is_some_and(|v| v > 0.0), "{line}");
    assert!(line["commands"]["GET"]["service"]["p99_us"].is_number(), "{line}");
}

#[test]
fn warmup_is_left_out() {
    let echo = spawn_echo();
    let addr = echo.addr.to_string();
    let out = bench(
        &[
            "--protocol",
            "echo",
            "-s",
            &addr,
            "-c",
            "2",
            "--warmup",
            "0.5",
            "--duration",
            "0.5",
            "-t",
            "put",
            "--json",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    let elapsed = line["elapsed_s"].as_f64().expect("elapsed");
    assert!((0.45..0.9).contains(&elapsed), "only the measured half counts: {line}");
    assert_eq!(line["requests"], line["ops"]);
    assert_eq!(line["config"]["warmup_s"], 0.5);
}

#[test]
fn builtin_baseline_csv_and_histogram_file() {
    let dir = std::env::temp_dir().join(format!("tandem-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let hgrm = dir.join("echo.hgrm");
    let hgrm_arg = hgrm.to_string_lossy().to_string();
    let out = bench(
        &[
            "--baseline",
            "echo",
            "-c",
            "2",
            "-P",
            "2",
            "-n",
            "500",
            "-t",
            "put",
            "--csv",
            "--hdr-out",
            &hgrm_arg,
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[0].starts_with("test,requests,ops,errors,"), "{text}");
    assert!(rows[1].starts_with("PUT,500,500,0,0,"), "{text}");
    let histogram = std::fs::read_to_string(&hgrm).expect("histogram written");
    assert!(histogram.contains("Percentile"), "{histogram}");
    assert!(histogram.contains("Total count    =          500]"), "{histogram}");
    let _ = std::fs::remove_dir_all(&dir);
}
