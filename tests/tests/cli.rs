//! `tandem-cli` through its binary: arguments, stdin, output formats and exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use harness::{bin, temp_dir, ServerProcess};

fn cli(server: &ServerProcess, args: &[&str]) -> Output {
    cli_with_stdin(server, args, b"")
}

fn cli_with_stdin(server: &ServerProcess, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin("tandem-cli"))
        .arg("--server")
        .arg(server.addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem-cli");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_shot_commands_and_exit_codes() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let put = cli(&server, &["put", "fruit", "apple"]);
    assert_eq!(code(&put), 0, "{put:?}");
    assert!(stdout(&put).starts_with("OK"), "{put:?}");
    let get = cli(&server, &["get", "fruit"]);
    assert_eq!((code(&get), stdout(&get).as_str()), (0, "apple\n"));
    let missing = cli(&server, &["get", "nothing"]);
    assert_eq!(code(&missing), 1, "not found exits 1");
    assert_eq!(stdout(&missing), "");
    assert_eq!(code(&cli(&server, &["append", "fruit", "-pie"])), 0);
    assert_eq!(stdout(&cli(&server, &["get", "fruit"])), "apple-pie\n");
    assert_eq!(code(&cli(&server, &["del", "fruit"])), 0);
    assert_eq!(code(&cli(&server, &["del", "fruit"])), 1, "deleting a missing key exits 1");
    let ping = cli(&server, &["ping"]);
    assert_eq!(code(&ping), 0);
    assert!(stdout(&ping).starts_with("PONG"));
    let stats = cli(&server, &["stats"]);
    assert!(stdout(&stats).lines().any(|l| l.starts_with("ops_put:")), "{}", stdout(&stats));
}

#[test]
fn values_from_stdin_are_binary_safe_with_raw_and_escaped_without() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let binary: Vec<u8> = (0u8..=255).collect();
    assert_eq!(code(&cli_with_stdin(&server, &["put", "bin", "-"], &binary)), 0);
    let raw = cli(&server, &["--raw", "get", "bin"]);
    assert_eq!(raw.stdout, binary, "--raw writes the bytes exactly");
    let shown = stdout(&cli(&server, &["get", "bin"]));
    assert!(shown.starts_with("\\x00\\x01"), "{shown}");
    assert!(shown.is_ascii());
}

#[test]
fn json_output_is_one_object_per_result() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let put = stdout(&cli(&server, &["--json", "put", "k", "v"]));
    assert!(put.contains("\"status\":\"OK\"") && put.contains("\"version\":"), "{put}");
    let get = stdout(&cli(&server, &["--json", "get", "k"]));
    assert!(get.contains("\"value\":\"v\"") && get.contains("\"found\":true"), "{get}");
    let missing = cli(&server, &["--json", "get", "nope"]);
    assert_eq!((code(&missing), stdout(&missing).trim()), (1, "{\"found\":false}"));
    let stats = stdout(&cli(&server, &["--json", "stats"]));
    assert!(stats.trim().starts_with('{') && stats.contains("\"ops_put\":1"), "{stats}");
}

#[test]
fn errors_exit_2_with_one_clear_line() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let too_big = "x".repeat(5000);
    let out = cli(&server, &["put", "k", &too_big]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceed"), "{out:?}");
    // Nothing listens on port 1.
    let out = Command::new(bin("tandem-cli")).args(["--server", "127.0.0.1:1", "ping"]).output().unwrap();
    assert_eq!(code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect") && err.lines().count() == 1, "{err}");
}

#[test]
fn options_may_follow_the_command() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let addr = server.addr.to_string();
    let run = |args: &[&str]| Command::new(bin("tandem-cli")).args(args).output().unwrap();
    assert_eq!(code(&run(&["put", "k", "v", "--server", &addr])), 0);
    let out = run(&["get", "k", "-s", &addr, "--json"]);
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(stdout(&out).contains(r#""value":"v""#), "{out:?}");
    assert_eq!(code(&run(&["get", "missing", "--server", &addr])), 1);
    // A value that looks like a negative number is a value.
    assert_eq!(code(&run(&["put", "n", "-5", "--server", &addr])), 0);
    assert_eq!(stdout(&run(&["get", "n", "--server", &addr])), "-5\n");
}

#[test]
fn bad_option_values_exit_2_before_connecting() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    for args in [&["-r", "0", "ping"][..], &["-i", "-1", "ping"], &["--timeout", "inf", "ping"]] {
        let out = cli(&server, args);
        assert_eq!(code(&out), 2, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    let out = cli(&server, &["--auth-token", "/nonexistent/token", "ping"]);
    assert_eq!(code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read --auth-token") && err.lines().count() == 1, "{err}");
}

#[test]
fn repeat_latency_and_pipe_modes() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let repeated = cli(&server, &["-r", "3", "ping"]);
    assert_eq!(stdout(&repeated).lines().filter(|l| l.starts_with("PONG")).count(), 3);

    let latency = cli(&server, &["--latency", "-r", "50", "-i", "0"]);
    assert_eq!(code(&latency), 0, "{latency:?}");
    let line = stdout(&latency);
    for field in ["min", "avg", "max", "p50", "p99", "(50 samples)"] {
        assert!(line.contains(field), "latency summary lacks {field}: {line}");
    }

    let mut input = String::from("# bulk load\n");
    for i in 0..2500 {
        input.push_str(&format!("put key{i} \"value {i}\"\n"));
    }
    input.push_str("del key0\nappend key1 !\n");
    let piped = cli_with_stdin(&server, &["--pipe"], input.as_bytes());
    assert_eq!(code(&piped), 0, "{piped:?}");
    assert_eq!(stdout(&piped).trim(), "sent 2502, ok 2502, errors 0, bad lines 0");
    assert_eq!(stdout(&cli(&server, &["get", "key1"])), "value 1!\n");
    assert_eq!(code(&cli(&server, &["get", "key0"])), 1);
    assert_eq!(stdout(&cli(&server, &["get", "key2499"])), "value 2499\n");

    let bad = cli_with_stdin(&server, &["--pipe"], b"put onlykey\nfrobnicate x\nput ok yes\n");
    assert_eq!(code(&bad), 2, "bad lines make --pipe fail");
    assert!(stdout(&bad).contains("bad lines 2"), "{}", stdout(&bad));
}

#[test]
fn timeouts_are_milliseconds() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    for good in ["1500", "500ms", "2s", "0.5s"] {
        let out = cli(&server, &["--timeout", good, "ping"]);
        assert_eq!(code(&out), 0, "--timeout {good}: {out:?}");
    }
    for bad in ["0", "-5", "0ms", "nan", "-inf", "5min", ""] {
        let out = cli(&server, &["--timeout", bad, "ping"]);
        assert_eq!(code(&out), 2, "--timeout {bad:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{bad:?}: {out:?}");
    }
}

#[test]
fn status_of_a_standalone_server() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    assert_eq!(code(&cli(&server, &["put", "k", "v"])), 0);
    let out = cli(&server, &["status"]);
    assert_eq!(code(&out), 0, "{out:?}");
    let text = stdout(&out);
    assert!(text.contains(&format!("server: {}", server.addr)), "{text}");
    assert!(text.contains("role: standalone") && text.contains("serving: yes"), "{text}");
    let out = cli(&server, &["status", "--json"]);
    assert_eq!(code(&out), 0, "{out:?}");
    let json = stdout(&out);
    let head = format!(
        r#"{{"server":"{}","id":null,"role":"standalone","view":0,"term":0,"last_lsn":"#,
        server.addr
    );
    assert!(json.starts_with(&head) && json.ends_with(",\"serving\":true}\n"), "{json}");
    assert_eq!(json.lines().count(), 1);
    // --coordinator does not matter: status asks the server named.
    let out = cli(&server, &["--coordinator", "127.0.0.1:1", "status", "--json"]);
    assert_eq!(code(&out), 0, "{out:?}");
    // Nothing listens on port 1.
    let out = Command::new(bin("tandem-cli")).args(["--server", "127.0.0.1:1", "status"]).output().unwrap();
    assert_eq!(code(&out), 2);
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{out:?}");
}

#[test]
fn view_without_a_coordinator_exits_2_at_its_timeout() {
    // A bound UDP socket that never answers: the request arrives and nothing comes back.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let out = Command::new(bin("tandem-cli"))
        .args(["--coordinator", &addr, "--timeout", "300ms", "view"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code(&out), 2, "{out:?}");
    assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no coordinator answered") && err.lines().count() == 1, "{err}");
    assert!(out.stdout.is_empty());
    let out = Command::new(bin("tandem-cli"))
        .args(["--coordinator", &addr, "--timeout", "200", "view", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(stdout(&out).starts_with("{\"error\":"), "{out:?}");
    // Data commands through a coordinator that is not there fail the same way.
    let out = Command::new(bin("tandem-cli"))
        .args(["--coordinator", &addr, "--timeout", "200", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
}

#[test]
fn session_mode_answers_each_line_in_order() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let input = [
        r#"{"op":"put","key":"k","value":"v1"}"#,
        r#"{"op":"get","key":"k"}"#,
        r#"{"op":"append","key":"k","value":"+"}"#,
        r#"{"op":"get","key":"missing"}"#,
        r#"{"op":"put","key":"k","value":"v2","version":1}"#,
        "this is not json",
        r#"{"op":"delete","key":"missing"}"#,
        r#"{"op":"frobnicate","key":"k"}"#,
        r#"{"op":"get","key":"k"}"#,
        r#"{"op":"put","key":"big","value":"VALUE"}"#,
    ]
    .join("\n")
    .replace("VALUE", &"x".repeat(5000));
    let out = cli_with_stdin(&server, &["session"], format!("{input}\n").as_bytes());
    assert_eq!(code(&out), 0, "{out:?}");
    let text = stdout(&out);
    let replies: Vec<&str> = text.lines().collect();
    assert_eq!(replies.len(), 10, "one reply per line: {text}");
    let version = |reply: &str| -> u64 {
        let rest = reply.split("\"version\":").nth(1).unwrap_or_else(|| panic!("no version: {reply}"));
        rest.trim_end_matches('}').split(',').next().unwrap().parse().unwrap()
    };
    assert!(replies[0].starts_with(r#"{"outcome":"ok","value":null,"version":"#), "{}", replies[0]);
    let v1 = version(replies[0]);
    assert!(v1 > 0);
    assert_eq!(replies[1], format!(r#"{{"outcome":"ok","value":"v1","version":{v1}}}"#));
    assert!(replies[2].starts_with(r#"{"outcome":"ok","value":null,"#), "{}", replies[2]);
    let v2 = version(replies[2]);
    assert!(v2 > v1);
    assert_eq!(replies[3], r#"{"outcome":"ok","value":null,"version":0}"#, "a missing key is ok");
    // A conditional put on a version that is no longer current: refused, with the current one.
    assert!(replies[4].starts_with(r#"{"outcome":"fail","value":null,"#), "{}", replies[4]);
    assert_eq!(version(replies[4]), v2);
    assert!(replies[4].contains(r#""error":"#), "{}", replies[4]);
    assert!(replies[5].starts_with(r#"{"outcome":"fail","error":"not JSON"#), "{}", replies[5]);
    assert_eq!(replies[6], r#"{"outcome":"ok","value":null,"version":0}"#, "deleting a missing key is ok");
    assert!(replies[7].starts_with(r#"{"outcome":"fail","error":"unknown op"#), "{}", replies[7]);
    assert_eq!(replies[8], format!(r#"{{"outcome":"ok","value":"v1+","version":{v2}}}"#));
    assert!(
        replies[9].starts_with(r#"{"outcome":"fail","value":null,"version":0,"error":"#),
        "{}",
        replies[9]
    );

    // A later session with the same client id keeps going upward: its writes are not
    // refused as stale.
    for _ in 0..2 {
        let out = cli_with_stdin(
            &server,
            &["session", "--client-id", "42"],
            b"{\"op\":\"put\",\"key\":\"c\",\"value\":\"1\"}\n{\"op\":\"delete\",\"key\":\"c\"}\n",
        );
        assert_eq!(code(&out), 0, "{out:?}");
        let text = stdout(&out);
        assert_eq!(text.lines().filter(|l| l.starts_with(r#"{"outcome":"ok""#)).count(), 2, "{text}");
    }
    // Nothing to read: a clean exit with no output.
    let out = cli_with_stdin(&server, &["session"], b"");
    assert_eq!((code(&out), out.stdout.is_empty()), (0, true), "{out:?}");
    let out = cli(&server, &["session", "--client-id", "0"]);
    assert_eq!(code(&out), 2, "client id 0 is anonymous, refused: {out:?}");
}
