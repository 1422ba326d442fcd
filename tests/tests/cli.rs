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
