//! tandem-bench for a second against a real Tandem server (the `server` crate, started
//! in-process on a free port with a temporary data directory): the summary's counts must
//! match what was sent, with every GET verified against the last PUT.

mod common;

use std::time::Duration;

use common::{bench, describe, json_lines};

#[test]
fn a_second_against_tandem_server_counts_and_verifies_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = server::Config {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.path().join("data"),
        segment_len: 8 * 1024 * 1024,
        ..server::Config::default()
    };
    let server = server::Server::bind(config).expect("the server binds");
    let addr = server.local_addr().to_string();
    let shutdown = server.shutdown_handle();
    let running = std::thread::spawn(move || server.run());

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
        Duration::from_secs(30),
    );
    shutdown.shutdown();
    running.join().expect("the server thread").expect("the server ran cleanly");

    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines = json_lines(&out);
    let tests: Vec<&str> = lines.iter().map(|l| l["test"].as_str().expect("test")).collect();
    assert_eq!(tests, ["prefill", "PUT", "GET"]);
    assert_eq!(lines[0]["ops"], 1000);
    for line in &lines[1..] {
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
