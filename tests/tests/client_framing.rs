//! `client::Client` and `tandem-cli` with compact framing against real servers: compact and
//! fixed connections side by side on one server, with a token, from the command line, and
//! in a cluster across a failover.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use client::{Client, ClientError, Framing, Op, Options};
use harness::cluster::Cluster;
use harness::{bin, temp_dir, ServerProcess};
use wire::{Status, MAX_PAYLOAD_LEN};

fn options(framing: Framing) -> Options {
    Options { connect_timeout: Duration::from_secs(5), ..Options::default() }.with_framing(framing)
}

fn connect(addr: SocketAddr, framing: Framing) -> Client {
    Client::connect_with(addr, options(framing)).expect("connect")
}

/// One counter of a server's STATS.
fn stat(client: &mut Client, name: &str) -> u64 {
    let stats = client.stats().expect("STATS");
    let value = stats.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no {name} in {stats:?}"));
    value.1.trim().parse().unwrap_or_else(|_| panic!("{name} is not a number: {value:?}"))
}

fn value_of(client: &mut Client, key: &[u8]) -> Option<Vec<u8>> {
    client.get(key).expect("GET").map(|v| v.data)
}

#[test]
fn compact_and_fixed_clients_share_a_server_and_see_each_others_writes() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut compact = connect(server.addr, Framing::Compact);
    let mut fixed = connect(server.addr, Framing::Fixed);
    assert_eq!(compact.framing(), Framing::Compact, "the server agreed");
    assert_eq!(fixed.framing(), Framing::Fixed);

    // Single operations, interleaved.
    let v1 = compact.put(b"a", b"from compact").unwrap();
    assert_eq!(fixed.get(b"a").unwrap().map(|v| (v.data, v.version)), Some((b"from compact".to_vec(), v1)));
    fixed.put(b"b", b"from fixed").unwrap();
    assert_eq!(value_of(&mut compact, b"b").as_deref(), Some(&b"from fixed"[..]));
    compact.append(b"b", b", appended compact").unwrap();
    fixed.append(b"b", b", appended fixed").unwrap();
    let expected = &b"from fixed, appended compact, appended fixed"[..];
    assert_eq!(value_of(&mut compact, b"b").as_deref(), Some(expected));
    let current = fixed.get(b"a").unwrap().unwrap().version;
    assert!(
        matches!(compact.put_if(b"a", b"x", current + 1), Err(ClientError::Conflict { current: c }) if c == current)
    );
    compact.put_if(b"a", b"conditional", current).unwrap();
    assert_eq!(value_of(&mut fixed, b"a").as_deref(), Some(&b"conditional"[..]));
    assert!(fixed.delete(b"a").unwrap());
    assert_eq!(value_of(&mut compact, b"a"), None);
    assert!(!compact.delete(b"a").unwrap());

    // The largest value a frame holds, both ways.
    let big = vec![b'z'; MAX_PAYLOAD_LEN - 4];
    compact.put(b"big1", &big).unwrap();
    assert_eq!(value_of(&mut fixed, b"big1"), Some(big.clone()));
    fixed.put(b"big2", &big).unwrap();
    assert_eq!(value_of(&mut compact, b"big2"), Some(big));

    // Pipelines (more than a window) written by one, read by the other.
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("p{i}").into_bytes()).collect();
    let values: Vec<Vec<u8>> =
        (0..300).map(|i| format!("value {i} ").repeat(i % 7 + 1).into_bytes()).collect();
    let round = |writer: &mut Client, reader: &mut Client| {
        let puts: Vec<Op<'_>> = keys.iter().zip(&values).map(|(k, v)| Op::Put(k, v)).collect();
        assert!(writer.pipeline(&puts).unwrap().iter().all(|r| r.status == Status::OK));
        let gets: Vec<Op<'_>> = keys.iter().map(|k| Op::Get(k)).collect();
        let replies = reader.pipeline(&gets).unwrap();
        for (i, reply) in replies.iter().enumerate() {
            assert_eq!((reply.status, &reply.value), (Status::OK, &values[i]), "key {i}");
        }
        let appends: Vec<Op<'_>> = keys.iter().map(|k| Op::Append(k, b"+")).collect();
        writer.pipeline(&appends).unwrap();
        assert!(value_of(reader, &keys[299]).unwrap().ends_with(b"+"));
    };
    round(&mut compact, &mut fixed);
    round(&mut fixed, &mut compact);

    // The compact connection really sends small frames: 200 small PUTs cost the server far
    // less than 200 fixed frames (the fixed STATS request adds one 4096-byte frame).
    let before = stat(&mut fixed, "bytes_in");
    for i in 0..200 {
        compact.put(format!("s{i}").as_bytes(), b"tiny").unwrap();
    }
    let read = stat(&mut fixed, "bytes_in") - before;
    assert!(read < 200 * 100 + 4096, "{read} bytes for 200 compact PUTs");
    assert_eq!(stat(&mut compact, "ops_hello"), 1, "one HELLO, from the compact client");
    assert_eq!(compact.framing(), Framing::Compact);

    // A reconnect negotiates again.
    compact.reconnect().unwrap();
    assert_eq!(compact.framing(), Framing::Compact);
    assert_eq!(value_of(&mut compact, b"s199").as_deref(), Some(&b"tiny"[..]));
    assert_eq!(stat(&mut fixed, "ops_hello"), 2);
    assert!(compact.ping().is_ok() && fixed.ping().is_ok());
}

#[test]
fn compact_framing_with_an_auth_token() {
    let dir = temp_dir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let server =
        ServerProcess::start(&dir.path().join("data"), &["--auth-token", token_file.to_str().unwrap()]);

    // HELLO needs no AUTH: the connection is compact before the token is presented.
    let mut stranger = connect(server.addr, Framing::Compact);
    assert_eq!(stranger.framing(), Framing::Compact);
    let refused = stranger.put(b"k", b"v").unwrap_err();
    assert!(matches!(refused, ClientError::Server { status: Status::UNAUTHORIZED, .. }), "{refused:?}");

    let mut compact = connect(server.addr, Framing::Compact);
    compact.auth(b"s3cret-token").unwrap();
    assert_eq!(compact.framing(), Framing::Compact);
    compact.put(b"k", b"v").unwrap();
    let ops = [Op::Put(b"p", b"1"), Op::Append(b"p", b"2"), Op::Get(b"p")];
    let replies = compact.pipeline(&ops).unwrap();
    assert_eq!(replies[2].value, b"12");

    let mut fixed = connect(server.addr, Framing::Fixed);
    fixed.auth(b"s3cret-token").unwrap();
    assert_eq!(value_of(&mut fixed, b"k").as_deref(), Some(&b"v"[..]));
    fixed.put(b"k", b"w").unwrap();

    // After a reconnect: HELLO, then AUTH again in compact framing.
    compact.reconnect().unwrap();
    assert_eq!(compact.framing(), Framing::Compact);
    compact.auth(b"s3cret-token").unwrap();
    assert_eq!(value_of(&mut compact, b"k").as_deref(), Some(&b"w"[..]));

    // A wrong token on a compact connection is refused and closes it, as on a fixed one.
    let mut wrong = connect(server.addr, Framing::Compact);
    let err = wrong.auth(b"guess").unwrap_err();
    assert!(matches!(err, ClientError::Server { status: Status::UNAUTHORIZED, .. }), "{err:?}");
}

fn cli(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin("tandem-cli"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem-cli");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_cli_speaks_compact_frames_in_every_mode() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let addr = server.addr.to_string();
    let run = |args: &[&str], stdin: &[u8]| {
        let full: Vec<&str> = ["--server", addr.as_str(), "--framing", "compact"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        cli(&full, stdin)
    };
    let mut fixed = connect(server.addr, Framing::Fixed);

    let put = run(&["put", "greeting", "hello world"], b"");
    assert!(put.status.success(), "{put:?}");
    assert!(text(&put).starts_with("OK (version "), "{put:?}");
    let get = run(&["get", "greeting"], b"");
    assert_eq!((get.status.code(), text(&get).as_str()), (Some(0), "hello world\n"), "{get:?}");
    assert_eq!(value_of(&mut fixed, b"greeting").as_deref(), Some(&b"hello world"[..]));
    let missing = run(&["get", "nothing"], b"");
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stat(&mut fixed, "ops_hello"), 3, "each invocation said HELLO");

    // --pipe, commands from stdin, session: one connection each, compact.
    let pipe = run(&["--pipe"], b"put p1 one\nput p2 two\nappend p1 +\ndel p2\n");
    assert_eq!((pipe.status.code(), text(&pipe).trim()), (Some(0), "sent 4, ok 4, errors 0, bad lines 0"));
    let lines = run(&[], b"get p1\nput q 9\nget q\n");
    let out = text(&lines);
    let out: Vec<&str> = out.lines().collect();
    assert_eq!(lines.status.code(), Some(0), "{lines:?}");
    assert!(
        out.len() == 3 && out[0] == "one+" && out[1].starts_with("OK (version ") && out[2] == "9",
        "{lines:?}"
    );
    let session = run(&["session"], b"{\"op\":\"get\",\"key\":\"q\"}\n");
    assert!(text(&session).starts_with("{\"outcome\":\"ok\",\"value\":\"9\""), "{session:?}");
    assert_eq!(stat(&mut fixed, "ops_hello"), 6);

    // status says which framing the connection got; without --framing nothing changes.
    let status = run(&["status"], b"");
    assert!(text(&status).contains("\nframing: compact\n"), "{status:?}");
    let json = run(&["--json", "status"], b"");
    assert!(text(&json).trim_end().ends_with(",\"framing\":\"compact\"}"), "{json:?}");
    let plain = cli(&["--server", &addr, "status"], b"");
    assert!(plain.status.success() && !text(&plain).contains("framing"), "{plain:?}");
    let ping = cli(&["--server", &addr, "--framing", "fixed", "ping"], b"");
    assert!(ping.status.success(), "{ping:?}");
    assert_eq!(stat(&mut fixed, "ops_hello"), 8, "fixed sends no HELLO");

    // A bad value is a usage error, before connecting.
    let bad = cli(&["--server", &addr, "--framing", "tiny", "ping"], b"");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.lines().next().is_some_and(|l| l.contains("--framing") && l.contains("compact")), "{err}");
    assert!(bad.stdout.is_empty());
}

#[test]
fn a_compact_cluster_client_follows_a_failover() {
    let mut cluster = Cluster::start(3);
    let coordinator = cluster.coordinator.addr;
    let options = Options { op_timeout: Duration::from_secs(8), ..options(Framing::Compact) };
    let mut client = Client::connect_cluster(&[coordinator], options).unwrap();
    assert_eq!(client.framing(), Framing::Compact);
    for i in 0..20 {
        client.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).unwrap();
    }
    let keys: Vec<Vec<u8>> = (20..60).map(|i| format!("k{i}").into_bytes()).collect();
    let puts: Vec<Op<'_>> = keys.iter().map(|k| Op::Put(k, b"piped")).collect();
    assert!(client.pipeline(&puts).unwrap().iter().all(|r| r.status == Status::OK));

    let (p, _) = cluster.primary();
    let old_primary = client.peer();
    cluster.kill(p);
    // The next operations find the new primary by themselves, and negotiate there.
    for i in 0..20 {
        let got = value_of(&mut client, format!("k{i}").as_bytes());
        assert_eq!(got, Some(format!("v{i}").into_bytes()), "k{i} after the failover");
    }
    assert_ne!(client.peer(), old_primary);
    assert_eq!(client.framing(), Framing::Compact);
    assert_eq!(value_of(&mut client, b"k59").as_deref(), Some(&b"piped"[..]));
    client.put(b"after", b"failover").unwrap();

    // The CLI too, through the coordinator: it says HELLO to the new primary.
    let (q, _) = cluster.primary();
    let hellos = cluster.stat(q, "ops_hello").expect("the new primary's STATS");
    assert!(hellos >= 1, "the client negotiated with the new primary");
    let coordinator = coordinator.to_string();
    let get = cli(&["--coordinator", &coordinator, "--framing", "compact", "get", "after"], b"");
    assert_eq!((get.status.code(), text(&get).as_str()), (Some(0), "failover\n"), "{get:?}");
    assert_eq!(cluster.stat(q, "ops_hello"), Some(hellos + 1), "the CLI negotiated with the primary");
}
