//! Every client command against a real server, through the client library and raw frames.

use harness::{temp_dir, ServerProcess};
use wire::{Command, Frame, Request, Status, FRAME_LEN, MAX_KEY_LEN, MAX_PAYLOAD_LEN};

/// One request and the reply it must get: table-driven, run in order on one connection.
struct Case {
    what: &'static str,
    request: Frame<'static>,
    status: Status,
    value: Option<&'static [u8]>,
}

fn case(what: &'static str, request: Frame<'static>, status: Status, value: Option<&'static [u8]>) -> Case {
    Case { what, request, status, value }
}

#[test]
fn every_command_gets_the_reply_the_protocol_promises() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut raw = server.raw();
    let put = |id, key: &'static [u8], value: &'static [u8]| Frame::request(id, Command::PUT, key, value);
    let cases = [
        case("ping", Frame::request(1, Command::PING, b"", b""), Status::OK, Some(b"")),
        case("ping echoes", Frame::request(2, Command::PING, b"", b"echo"), Status::OK, Some(b"echo")),
        case("get missing", Frame::request(3, Command::GET, b"fruit", b""), Status::NOT_FOUND, Some(b"")),
        case("put", put(4, b"fruit", b"apple"), Status::OK, Some(b"")),
        case("get hit", Frame::request(5, Command::GET, b"fruit", b""), Status::OK, Some(b"apple")),
        case("overwrite", put(6, b"fruit", b"banana"), Status::OK, None),
        case("get new", Frame::request(7, Command::GET, b"fruit", b""), Status::OK, Some(b"banana")),
        case("append", Frame::request(8, Command::APPEND, b"fruit", b"-split"), Status::OK, None),
        case(
            "get appended",
            Frame::request(9, Command::GET, b"fruit", b""),
            Status::OK,
            Some(b"banana-split"),
        ),
        case("append creates", Frame::request(10, Command::APPEND, b"log", b"a"), Status::OK, None),
        case("get created", Frame::request(11, Command::GET, b"log", b""), Status::OK, Some(b"a")),
        case("delete", Frame::request(12, Command::DELETE, b"fruit", b""), Status::OK, None),
        case("get deleted", Frame::request(13, Command::GET, b"fruit", b""), Status::NOT_FOUND, None),
        case("delete missing", Frame::request(14, Command::DELETE, b"fruit", b""), Status::NOT_FOUND, None),
        case("empty value", put(15, b"empty", b""), Status::OK, None),
        case("get empty value", Frame::request(16, Command::GET, b"empty", b""), Status::OK, Some(b"")),
        case("binary key", put(17, b"\x00\xff\n", b"\x00bin\xff"), Status::OK, None),
        case(
            "get binary",
            Frame::request(18, Command::GET, b"\x00\xff\n", b""),
            Status::OK,
            Some(b"\x00bin\xff"),
        ),
        case("get no key", Frame::request(19, Command::GET, b"", b""), Status::BAD_REQUEST, None),
        case("unknown command", Frame::request(20, Command(0x3e), b"", b""), Status::UNKNOWN_COMMAND, None),
        case("reserved range", Frame::request(21, Command(0x41), b"", b""), Status::UNKNOWN_COMMAND, None),
        case("auth without token configured", Frame::request(22, Command::AUTH, b"", b"x"), Status::OK, None),
    ];
    for c in &cases {
        raw.send_frame(c.request);
        let bytes = raw.recv().unwrap_or_else(|| panic!("{}: connection closed", c.what));
        let reply = Frame::decode(&bytes).unwrap_or_else(|e| panic!("{}: bad reply {e}", c.what));
        assert!(reply.is_reply(), "{}", c.what);
        assert_eq!(reply.id, c.request.id, "{}: id echoed", c.what);
        assert_eq!(reply.command, c.request.command, "{}: command echoed", c.what);
        assert_eq!(reply.status(), c.status, "{}: {}", c.what, String::from_utf8_lossy(reply.value));
        if let Some(value) = c.value {
            assert_eq!(reply.value, value, "{}", c.what);
        }
    }
}

#[test]
fn versions_increase_and_conditional_writes_check_them() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut c = server.client();
    let v1 = c.put(b"k", b"one").unwrap();
    let v2 = c.put(b"k", b"two").unwrap();
    assert!(v2 > v1 && v1 > 0, "versions {v1} then {v2}");
    assert_eq!(c.get(b"k").unwrap().unwrap().version, v2);
    match c.put_if(b"k", b"three", v1) {
        Err(client::ClientError::Conflict { current }) => assert_eq!(current, v2),
        other => panic!("stale conditional put: {other:?}"),
    }
    assert_eq!(c.get(b"k").unwrap().unwrap().data, b"two", "a refused write changes nothing");
    let v3 = c.put_if(b"k", b"three", v2).unwrap();
    assert!(v3 > v2);
    match c.put_if(b"new", b"x", 5) {
        Err(client::ClientError::Conflict { current: 0 }) => {}
        other => panic!("conditional put on a missing key: {other:?}"),
    }
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut c = server.client();
    // The largest value for a key fits exactly.
    let key = b"big";
    let value = vec![7u8; MAX_PAYLOAD_LEN - key.len()];
    c.put(key, &value).unwrap();
    assert_eq!(c.get(key).unwrap().unwrap().data, value);
    // One more byte by APPEND is refused and changes nothing.
    match c.append(key, b"x") {
        Err(client::ClientError::Server { status: Status::TOO_LARGE, .. }) => {}
        other => panic!("oversized append: {other:?}"),
    }
    assert_eq!(c.get(key).unwrap().unwrap().data.len(), value.len());
    // A key over the limit, sent raw with a valid checksum, gets TOO_LARGE with its id.
    let mut raw = server.raw();
    let long_key = vec![b'k'; MAX_KEY_LEN];
    let mut bytes = [0u8; FRAME_LEN];
    Frame::request(99, Command::PUT, &long_key, b"").encode(&mut bytes).unwrap();
    bytes[32..36].copy_from_slice(&(MAX_KEY_LEN as u32 + 1).to_le_bytes());
    let crc = crc(&bytes[8..48 + MAX_KEY_LEN + 1]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    raw.send(&bytes);
    let reply_bytes = raw.recv().expect("reply");
    let reply = Frame::decode(&reply_bytes).unwrap();
    assert_eq!((reply.id, reply.status()), (99, Status::TOO_LARGE));
    // The connection goes on.
    raw.send_frame(Request::Ping { payload: b"" }.to_frame(100));
    assert_eq!(Frame::decode(&raw.recv().expect("reply")).unwrap().id, 100);
}

fn crc(bytes: &[u8]) -> u32 {
    // CRC-32/IEEE, bitwise: independent of the codec's crc32fast, as another client would be.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn stats_counts_what_happened() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut c = server.client();
    c.put(b"a", b"1").unwrap();
    c.put(b"b", b"2").unwrap();
    c.get(b"a").unwrap();
    c.get(b"zzz").unwrap();
    c.delete(b"b").unwrap();
    let stats: std::collections::HashMap<String, String> = c.stats().unwrap().into_iter().collect();
    let n = |k: &str| stats.get(k).unwrap_or_else(|| panic!("no {k} in STATS")).parse::<u64>().unwrap();
    assert_eq!(n("ops_put"), 2);
    assert_eq!(n("ops_get"), 2);
    assert_eq!(n("get_hits"), 1);
    assert_eq!(n("get_misses"), 1);
    assert_eq!(n("ops_delete"), 1);
    assert_eq!(n("keys"), 1);
    assert_eq!(n("connections"), 1);
    assert!(n("bytes_in") >= 6 * FRAME_LEN as u64);
    for key in ["uptime_s", "storage_disk_bytes", "loop_busy_us_p99", "last_lsn"] {
        assert!(stats.contains_key(key), "STATS lacks {key}");
    }
}
