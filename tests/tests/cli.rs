//! `tandem-cli` through its binary: arguments, stdin, output formats and exit codes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{bin, temp_dir, ServerProcess, WaitTimeout};
use wire::{Frame, Status, FRAME_LEN};

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
fn values_from_stdin_are_binary_safe_and_print_raw_when_piped() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let binary: Vec<u8> = (0u8..=255).collect();
    assert_eq!(code(&cli_with_stdin(&server, &["put", "bin", "-"], &binary)), 0);
    let raw = cli(&server, &["--raw", "get", "bin"]);
    assert_eq!(raw.stdout, binary, "--raw writes the bytes exactly");
    // Not a terminal: the bytes as stored, plus a newline (as redis-cli does). On a
    // terminal they are escaped (`prompt_on_a_terminal_...`).
    let piped = cli(&server, &["get", "bin"]);
    assert_eq!(piped.stdout, [&binary[..], b"\n"].concat(), "piped values are raw");
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

/// `tandem-cli` with `args` (no `--server` added), `HOME` at `home`, stdin from `stdin`.
fn cli_at_home(home: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin("tandem-cli"))
        .args(args)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem-cli");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn del_prints_the_version_of_the_delete() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    assert_eq!(code(&cli(&server, &["put", "k", "v"])), 0);
    let del = cli(&server, &["del", "k"]);
    assert_eq!(code(&del), 0, "{del:?}");
    let text = stdout(&del);
    let version: u64 = text
        .strip_prefix("OK (version ")
        .and_then(|rest| rest.strip_suffix(")\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(version > 0, "{text}");
    assert_eq!(code(&cli(&server, &["put", "k", "v"])), 0);
    let json = stdout(&cli(&server, &["--json", "del", "k"]));
    assert!(json.contains(r#""deleted":true"#) && json.contains(r#""version":"#), "{json}");
    assert!(!json.contains(r#""version":0"#), "{json}");
    let missing = cli(&server, &["--json", "del", "k"]);
    assert_eq!((code(&missing), stdout(&missing).trim()), (1, r#"{"deleted":false,"version":0}"#));
}

#[test]
fn json_errors_from_the_server_carry_its_status() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let out = cli(&server, &["--json", "put", "", "v"]);
    assert_eq!(code(&out), 2, "{out:?}");
    let text = stdout(&out);
    assert!(text.starts_with(r#"{"error":"server error BAD_REQUEST"#), "{text}");
    assert!(text.trim_end().ends_with(r#","status":"BAD_REQUEST"}"#), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    // An error the client found itself has no status.
    let out = cli(&server, &["--json", "put", "k", &"x".repeat(5000)]);
    assert_eq!(code(&out), 2);
    assert!(!stdout(&out).contains("status"), "{out:?}");
}

#[test]
fn pipe_skips_an_oversized_line_and_counts_it() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let input = format!("put a 1\nput big {}\nput c 3\ndel nothing\n", "x".repeat(5000));
    let out = cli_with_stdin(&server, &["--pipe"], input.as_bytes());
    assert_eq!(code(&out), 2, "a bad line makes --pipe fail: {out:?}");
    assert_eq!(stdout(&out).trim(), "sent 3, ok 3, errors 0, bad lines 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("line 2: ") && err.lines().count() == 1, "{err}");
    assert_eq!(stdout(&cli(&server, &["get", "a"])), "1\n", "lines before it are written");
    assert_eq!(stdout(&cli(&server, &["get", "c"])), "3\n", "and lines after it");
    assert_eq!(code(&cli(&server, &["get", "big"])), 1);
    let json = cli_with_stdin(&server, &["--pipe", "--json"], input.as_bytes());
    assert_eq!(stdout(&json).trim(), r#"{"bad_lines":1,"errors":0,"ok":3,"sent":3}"#);
}

#[test]
fn commands_from_stdin_answer_every_line_and_exit_with_the_worst() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let addr = server.addr.to_string();
    let input = b"put a 1\nget a\nfrobnicate\nget missing\n\nput \"\" v\ndel a\n";
    let out = cli_at_home(&home, &["--server", &addr, "--json"], input);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "one JSON line per command line: {text}");
    for line in &lines {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    }
    assert!(lines[0].starts_with(r#"{"status":"OK","version":"#), "{}", lines[0]);
    assert!(lines[1].starts_with(r#"{"found":true,"value":"1""#), "{}", lines[1]);
    assert!(lines[2].starts_with(r#"{"error":"unknown command"#), "{}", lines[2]);
    assert_eq!(lines[3], r#"{"found":false}"#);
    assert!(lines[4].contains(r#""status":"BAD_REQUEST""#), "{}", lines[4]);
    assert!(lines[5].starts_with(r#"{"deleted":true,"#), "{}", lines[5]);
    assert_eq!(code(&out), 2, "the worst outcome, not the last: {out:?}");
    // Not found is worse than OK.
    let out = cli_at_home(&home, &["--server", &addr], b"get missing\nput b 2\n");
    assert_eq!(code(&out), 1, "{out:?}");
    let out = cli_at_home(&home, &["--server", &addr], b"get b\nping\n");
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(stdout(&out).starts_with("2\nPONG"), "{out:?}");
    let entries: Vec<_> = std::fs::read_dir(&home).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(entries.is_empty(), "no history from stdin that is not a terminal: {entries:?}");
}

#[test]
fn a_dash_in_commands_from_stdin_is_not_stdin() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let out = cli_with_stdin(&server, &[], b"put k -\nget k\nput d '-'\nget d\n");
    assert_eq!(code(&out), 2, "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdin only on the command line"), "{err}");
    assert!(err.contains("(not found)"), "the next line is a command, not the value: {err}");
    assert!(stdout(&out).ends_with("-\n"), "a quoted dash is a value: {out:?}");
    assert_eq!(code(&cli(&server, &["get", "k"])), 1);
}

/// Reads one line of the child's stdout, failing after 20 s.
fn read_line_within(lines: &std::sync::mpsc::Receiver<String>) -> String {
    lines.recv_timeout(Duration::from_secs(20)).expect("a line from tandem-cli")
}

#[test]
fn commands_from_stdin_reconnect_after_the_idle_timeout() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &["--idle-timeout", "1"]);
    let mut child = Command::new(bin("tandem-cli"))
        .args(["--server", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    stdin.write_all(b"ping\n").unwrap();
    assert!(read_line_within(&lines).starts_with("PONG"));
    // The server closes the idle connection (it sweeps once a second).
    std::thread::sleep(Duration::from_millis(3000));
    stdin.write_all(b"put k v\n").unwrap();
    assert!(read_line_within(&lines).starts_with("OK (version"), "a write on a new connection");
    std::thread::sleep(Duration::from_millis(3000));
    stdin.write_all(b"get k\n").unwrap();
    assert_eq!(read_line_within(&lines), "v");
    drop(stdin);
    let status = child.wait_timeout(Duration::from_secs(20)).expect("tandem-cli exits");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success() && err.is_empty(), "{status}: {err}");
}

/// A fake server: reads each request frame and lets `answer` decide, per connection (from
/// 0) and request, whether to reply (`Some`: status, value) or close the connection. Returns
/// its address and the number of requests it received.
fn fake_server(
    answer: impl Fn(usize, &Frame<'_>) -> Option<(Status, Vec<u8>)> + Send + 'static,
) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for (conn, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; FRAME_LEN];
            while stream.read_exact(&mut buf).is_ok() {
                *counted.lock().unwrap() += 1;
                let Ok(frame) = Frame::decode(&buf) else { break };
                let Some((status, value)) = answer(conn, &frame) else { break };
                let mut out = [0u8; FRAME_LEN];
                Frame::reply_to(frame.id, frame.command, status, &value).encode(&mut out).unwrap();
                if stream.write_all(&out).is_err() {
                    break;
                }
            }
        }
    });
    (addr, requests)
}

#[test]
fn a_read_is_tried_again_once_after_a_broken_connection_and_a_write_is_not() {
    // The first connection closes on its first request; later ones answer.
    let (addr, requests) = fake_server(|conn, _| (conn > 0).then(|| (Status::OK, b"v".to_vec())));
    let out =
        Command::new(bin("tandem-cli")).args(["--server", &addr.to_string(), "get", "k"]).output().unwrap();
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "v\n"), "{out:?}");
    assert_eq!(*requests.lock().unwrap(), 2);

    let (addr, requests) = fake_server(|_, _| None);
    let out = Command::new(bin("tandem-cli"))
        .args(["--server", &addr.to_string(), "put", "k", "v"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may or may not have been applied") && err.lines().count() == 1, "{err}");
    assert_eq!(*requests.lock().unwrap(), 1, "a write is not sent again");
    let out = Command::new(bin("tandem-cli"))
        .args(["--server", &addr.to_string(), "--json", "del", "k"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains(r#""outcome":"unknown""#), "{out:?}");
}

/// `tandem-cli` on a pseudo-terminal (stdin, stdout and stderr), as a person would run it.
struct OnTerminal {
    child: Child,
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl OnTerminal {
    fn start(args: &[&str], home: &Path) -> OnTerminal {
        use std::os::fd::{FromRawFd, OwnedFd};
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize { ws_row: 50, ws_col: 200, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty writes two descriptors it opened into the two integers; the other
        // pointers are null (no name, default settings) or point at a live winsize.
        let rc =
            unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
        let (master, slave) = unsafe { (std::fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let child = Command::new(bin("tandem-cli"))
            .args(args)
            .env("HOME", home)
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("spawn tandem-cli");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), output.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the child has exited and the terminal has no user left.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        OnTerminal { child, master, output }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until `needle` shows after byte `from` of the output; returns where it ends.
    fn wait_for(&self, needle: &str, from: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text();
            if let Some(at) = text.get(from..).and_then(|rest| rest.find(needle)) {
                return from + at + needle.len();
            }
            assert!(Instant::now() < deadline, "no {needle:?} after byte {from} in:\n{text:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free right now (bound, then released), for a server restarted on it.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn prompt_on_a_terminal_completes_shows_disconnection_and_reconnects() {
    let dir = temp_dir();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start(&dir.path().join("data"), &["--listen", &listen]);
    let mut term = OnTerminal::start(&["--server", &listen], &home);
    let prompt = format!("tandem {listen}> ");
    let down = format!("tandem {listen} (disconnected)> ");
    let mut at = term.wait_for(&prompt, 0);

    // Tab completes a command name.
    term.type_line("pi\t\r");
    at = term.wait_for("PONG", at);
    at = term.wait_for(&prompt, at);
    // `-` is not stdin at the prompt: refused at once, the next line is a command.
    term.type_line("put k -\r");
    at = term.wait_for("stdin only on the command line", at);
    at = term.wait_for(&prompt, at);
    // Hints name the arguments still to type.
    term.type_line("put k");
    at = term.wait_for("\u{1b}[2m VALUE", at);
    // Values are escaped on a terminal.
    term.type_line(" \"tandem\\x01value\"\r");
    at = term.wait_for("OK (version", at);
    at = term.wait_for(&prompt, at);
    term.type_line("get k\r");
    at = term.wait_for("tandem\\x01value", at);
    at = term.wait_for(&prompt, at);

    // The server goes away: the next prompt says so.
    let mut server = server;
    server.kill();
    std::thread::sleep(Duration::from_millis(200));
    term.type_line("\r");
    at = term.wait_for(&down, at);
    // Back on the same port: the next command reconnects first, without an error.
    let server = server.restart_after_kill();
    term.type_line("get k\r");
    let got = term.wait_for("tandem\\x01value", at);
    assert!(!term.text()[at..got].contains("error"), "{:?}", &term.text()[at..]);
    at = term.wait_for(&prompt, got);
    term.type_line("quit\r");
    let status = term.child.wait_timeout(Duration::from_secs(20)).expect("tandem-cli exits on quit");
    assert!(status.success(), "{status}: {:?}", &term.text()[at..]);
    let history = std::fs::read_to_string(home.join(".tandem_cli_history")).unwrap_or_default();
    assert!(history.contains("get k"), "the prompt keeps history: {history:?}");
    drop(server);
}
