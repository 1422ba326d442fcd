//! The flags for replicated setups: `--coordinator` (find the primary through a fake view
//! service, load a real Tandem server) and `--protocol resp --wait N` (each write followed by
//! Redis's `WAIT`, against a fake RESP server that answers it).

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{
    bench, describe, fake_coordinator, fake_resp_replicated, json_lines, FakeServer, Fault, RunningServer,
};
use wire::cluster::{Member, View};
use wire::{Command, Frame, Status, FRAME_LEN};

const LIMIT: Duration = Duration::from_secs(30);

fn view_with_primary(addr: &str) -> View {
    let primary = Member { id: "s1".into(), addr: addr.into(), incarnation: 1, data_id: 1 };
    View { num: 3, term: 3, primary: Some(primary), ..View::default() }
}

/// Reads `key` straight from a Tandem server: its status and value length.
fn get(addr: &str, key: &[u8]) -> (Status, usize) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    let mut frame = [0u8; FRAME_LEN];
    Frame::request(1, Command::GET, key, b"").encode(&mut frame).expect("encodes");
    stream.write_all(&frame).expect("sent");
    stream.read_exact(&mut frame).expect("answered");
    let reply = Frame::decode(&frame).expect("a frame");
    (reply.status(), reply.value.len())
}

#[test]
fn the_coordinator_names_the_primary_and_the_load_goes_there() {
    let server = RunningServer::start(server::Config::default().max_connections);
    // The first request is lost, and the first coordinator listed never answers: the lookup
    // must retry and take the view from the one that does.
    let coordinator = fake_coordinator(view_with_primary(&server.addr), 1);
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let list = format!("{},{}", silent.local_addr().expect("addr"), coordinator.addr);
    let out = bench(
        &[
            "--coordinator",
            &list,
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
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(coordinator.requests.load(Ordering::Relaxed) >= 2, "retried after the lost request");
    let lines = json_lines(&out);
    let tests: Vec<&str> = lines.iter().map(|l| l["test"].as_str().expect("test")).collect();
    assert_eq!(tests, ["PUT", "GET"]);
    for line in &lines {
        assert_eq!((line["ops"].as_u64(), line["errors"].as_u64()), (Some(200), Some(0)), "{line}");
        let config = &line["config"];
        assert_eq!(config["server"], server.addr.as_str(), "{line}");
        assert_eq!(config["addr"], server.addr.as_str(), "{line}");
        let given: Vec<String> = list.split(',').map(String::from).collect();
        assert_eq!(config["coordinator"], serde_json::json!(given), "{line}");
        assert_eq!(config["primary"], serde_json::json!({"id": "s1", "view": 3}), "{line}");
    }
    assert_eq!(lines[1]["misses"], 0, "the prefill went to the same server as the GETs");
    // The writes are on the real server the view named.
    assert_eq!(get(&server.addr, b"key:000000000000"), (Status::OK, 100));

    // The human header says where the load went and who said so.
    let out =
        bench(&["--coordinator", &coordinator.addr.to_string(), "-c", "1", "-n", "10", "-t", "put"], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout.lines().next().expect("a header");
    let expected =
        format!("to {0} ({0}, primary s1 of view 3 from coordinator {1})", server.addr, coordinator.addr);
    assert!(header.contains(&expected), "{header}");
    server.stop();
}

#[test]
fn a_view_without_a_primary_exits_2_with_the_reason() {
    let waiting = "waiting for s1 to acknowledge view 2";
    let view = View { num: 2, waiting: waiting.into(), ..View::default() };
    let coordinator = fake_coordinator(view, 0);
    let started = Instant::now();
    let out = bench(&["--coordinator", &coordinator.addr.to_string(), "-n", "10"], LIMIT);
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains(": view 2, no primary after ") && stderr.contains(waiting), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    assert!(coordinator.requests.load(Ordering::Relaxed) >= 3, "asked again while waiting");
}

#[test]
fn a_silent_coordinator_exits_2() {
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let started = Instant::now();
    let out = bench(&["--coordinator", &addr, "-n", "10", "--json"], LIMIT);
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains(&format!("no view from coordinator {addr} in ")), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", describe(&out));
}

fn resp_run(server: &FakeServer, extra: &[&str]) -> std::process::Output {
    let addr = server.addr.to_string();
    let mut args = vec!["--protocol", "resp", "-s", &addr, "--json"];
    args.extend_from_slice(extra);
    bench(&args, LIMIT)
}

#[test]
fn wait_pairs_count_as_one_operation() {
    let server = fake_resp_replicated(Fault::None, 2, Duration::ZERO);
    let out = resp_run(
        &server,
        &[
            "--wait",
            "2",
            "-c",
            "2",
            "-P",
            "4",
            "-n",
            "200",
            "-r",
            "50",
            "--prefill",
            "--verify",
            "-t",
            "set,get",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines = json_lines(&out);
    for line in &lines {
        assert_eq!(line["requests"], 200, "{line}");
        assert_eq!(line["ops"], 200, "{line}");
        assert_eq!(line["errors"], 0, "{line}");
        assert_eq!(line["config"]["wait"], 2, "{line}");
    }
    assert_eq!(lines[1]["misses"], 0);
    // 50 prefill SETs and 200 SETs each followed by a WAIT; GETs are not.
    assert_eq!(server.requests.load(Ordering::Relaxed), 450);
    assert_eq!(server.waits.load(Ordering::Relaxed), 250);
}

#[test]
fn the_latency_of_a_write_covers_its_wait() {
    let server = fake_resp_replicated(Fault::None, 1, Duration::from_millis(20));
    let out = resp_run(&server, &["--wait", "1", "-c", "1", "-n", "10", "-t", "set"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(line["ops"], 10, "{line}");
    let p50 = line["p50_us"].as_f64().expect("p50");
    assert!(p50 >= 20_000.0, "p50 {p50} us includes the 20 ms WAIT: {line}");
    // The human header says so too.
    let addr = server.addr.to_string();
    let out =
        bench(&["--protocol", "resp", "-s", &addr, "--wait", "1", "-c", "1", "-n", "1", "-t", "set"], LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().next().is_some_and(|l| l.contains("each write followed by WAIT 1 0")), "{stdout}");
}

#[test]
fn short_waits_and_error_replies_are_one_error_per_write() {
    let short = fake_resp_replicated(Fault::None, 1, Duration::ZERO);
    let out = resp_run(&short, &["--wait", "2", "-c", "2", "-P", "3", "-n", "90", "-t", "set,append"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    for line in json_lines(&out) {
        assert_eq!((line["ops"].as_u64(), line["requests"].as_u64()), (Some(0), Some(90)), "{line}");
        assert_eq!(line["errors"], 90, "{line}");
        assert_eq!(line["errors_by_kind"]["wait_short"], 90, "{line}");
    }
    assert_eq!(short.waits.load(Ordering::Relaxed), 180, "APPEND waits as SET does");

    // SET and WAIT both answer -ERR: the pair is one error, and the replies stay in step.
    let failing = fake_resp_replicated(Fault::Status(Status::INTERNAL), 2, Duration::ZERO);
    let out = resp_run(&failing, &["--wait", "2", "-c", "2", "-P", "3", "-n", "90", "-t", "set"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(line["errors"], 90, "{line}");
    assert_eq!(line["errors_by_kind"]["resp_error"], 90, "{line}");
}

#[test]
fn wait_0_sends_no_wait() {
    let server = fake_resp_replicated(Fault::None, 0, Duration::ZERO);
    let out = resp_run(&server, &["--wait", "0", "-c", "2", "-n", "100", "-t", "set"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let line = &json_lines(&out)[0];
    assert_eq!((line["ops"].as_u64(), line["config"]["wait"].as_u64()), (Some(100), Some(0)), "{line}");
    assert_eq!(server.waits.load(Ordering::Relaxed), 0);
    assert_eq!(server.requests.load(Ordering::Relaxed), 100);
}
