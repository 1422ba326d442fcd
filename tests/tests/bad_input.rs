//! Garbage, truncated frames, clients that never read, connection floods: the server keeps
//! serving everyone else and loses nothing.

use std::io::Write;
use std::time::{Duration, Instant};

use harness::{temp_dir, ServerProcess};
use wire::{Command, Frame, Status, FRAME_LEN};

fn ping_ok(server: &ServerProcess) {
    let mut c = server.client();
    c.put(b"still", b"here").unwrap();
    assert_eq!(c.get(b"still").unwrap().unwrap().data, b"here");
}

#[test]
fn garbage_bytes_get_one_error_then_the_connection_closes() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut raw = server.raw();
    raw.send(&[0xAB; FRAME_LEN]);
    let reply = raw.recv().expect("an error reply before closing");
    let reply = Frame::decode(&reply).unwrap();
    assert_eq!((reply.id, reply.status()), (0, Status::BAD_FRAME));
    assert!(raw.is_closed_by_server());
    // HTTP by mistake: fewer bytes than a frame, then the client waits: nothing executes,
    // and the server stays healthy.
    let mut http = server.raw();
    http.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    ping_ok(&server);
}

#[test]
fn bad_checksum_is_answered_and_the_stream_goes_on() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut raw = server.raw();
    let mut bytes = [0u8; FRAME_LEN];
    Frame::request(5, Command::PUT, b"k", b"value").encode(&mut bytes).unwrap();
    bytes[50] ^= 0x01; // corrupt the value after checksumming
    raw.send(&bytes);
    raw.send_frame(Frame::request(6, Command::GET, b"k", b""));
    let first = raw.recv().unwrap();
    let first = Frame::decode(&first).unwrap();
    assert_eq!((first.id, first.status()), (0, Status::BAD_CHECKSUM), "untrusted id is 0");
    let second = raw.recv().unwrap();
    let second = Frame::decode(&second).unwrap();
    assert_eq!((second.id, second.status()), (6, Status::NOT_FOUND), "the corrupt PUT was not executed");
}

#[test]
fn wrong_version_is_answered_unsupported_and_closed() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut raw = server.raw();
    let mut bytes = [0u8; FRAME_LEN];
    Frame::request(5, Command::PING, b"", b"").encode(&mut bytes).unwrap();
    bytes[3] = 9;
    raw.send(&bytes);
    let reply = raw.recv().unwrap();
    assert_eq!(Frame::decode(&reply).unwrap().status(), Status::UNSUPPORTED);
    assert!(raw.is_closed_by_server());
}

#[test]
fn truncated_frames_are_never_executed() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut bytes = [0u8; FRAME_LEN];
    Frame::request(1, Command::PUT, b"half", b"written").encode(&mut bytes).unwrap();
    for cut in [1, 47, 48, 100, FRAME_LEN - 1] {
        let mut raw = server.raw();
        raw.send(&bytes[..cut]);
        raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(raw.is_closed_by_server(), "cut at {cut}: closed without a reply");
    }
    assert_eq!(server.client().get(b"half").unwrap(), None);
    // A whole frame followed by a partial one and EOF: the whole one is answered.
    let mut raw = server.raw();
    raw.send(&bytes);
    raw.send(&bytes[..10]);
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(Frame::decode(&raw.recv().unwrap()).unwrap().status(), Status::OK);
    assert!(raw.recv().is_none());
}

#[test]
fn a_client_that_never_reads_is_paused_not_buffered_without_bound() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    server.client().put(b"k", &[1u8; 4000]).unwrap();
    let rss_before = server.rss_kib();
    let mut raw = server.raw();
    raw.stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut get = [0u8; FRAME_LEN];
    Frame::request(1, Command::GET, b"k", b"").encode(&mut get).unwrap();
    let batch: Vec<u8> = get.iter().copied().cycle().take(64 * FRAME_LEN).collect();
    // Write GETs without ever reading replies until the server stops taking them.
    let mut sent = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        match raw.stream.write(&batch) {
            Ok(n) => sent += n,
            Err(_) => break, // the write timed out: the server stopped reading us
        }
    }
    assert!(started.elapsed() < Duration::from_secs(20), "the server kept reading forever");
    // Everyone else is still served, and the stuck client did not cost unbounded memory.
    ping_ok(&server);
    let grown_kib = server.rss_kib().saturating_sub(rss_before);
    assert!(
        grown_kib < 16 * 1024,
        "server grew {grown_kib} KiB for a client that never reads ({sent} bytes sent)"
    );
}

#[test]
fn connections_over_the_limit_are_refused_busy() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &["--max-connections", "3"]);
    let mut held: Vec<_> = (0..3).map(|_| server.client()).collect();
    for c in &mut held {
        c.ping().unwrap(); // all three are accepted and registered
    }
    let mut extra = server.raw();
    let reply = extra.recv().expect("a BUSY frame");
    assert_eq!(Frame::decode(&reply).unwrap().status(), Status::BUSY);
    assert!(extra.is_closed_by_server());
    // Freeing a slot lets a new client in.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = server.client();
        if c.ping().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats: std::collections::HashMap<_, _> = held[0].stats().unwrap().into_iter().collect();
    assert!(stats["connections_refused"].parse::<u64>().unwrap() >= 1);
}

#[test]
fn idle_and_slow_loris_connections_are_closed_after_the_timeout() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &["--idle-timeout", "1"]);
    let mut idle = server.raw();
    let mut loris = server.raw();
    let mut bytes = [0u8; FRAME_LEN];
    Frame::request(1, Command::PING, b"", b"").encode(&mut bytes).unwrap();
    let started = Instant::now();
    // The loris trickles a byte every 100 ms: never a whole frame.
    for i in 0..15 {
        if loris.stream.write_all(&bytes[i..i + 1]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(idle.is_closed_by_server(), "idle connection not closed");
    assert!(loris.is_closed_by_server(), "slow-loris connection not closed");
    assert!(started.elapsed() < Duration::from_secs(8));
    ping_ok(&server);
}
