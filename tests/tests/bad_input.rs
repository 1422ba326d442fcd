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

/// Reads every frame the server sends until it closes, slowly (one frame per `pause`), and
/// says whether the end was a clean EOF (true) or a reset (false).
fn read_all_slowly(stream: &mut std::net::TcpStream, pause: Duration) -> (Vec<Frame<'static>>, bool) {
    use std::io::Read;
    let mut frames = Vec::new();
    let mut buf = vec![0u8; FRAME_LEN];
    loop {
        std::thread::sleep(pause);
        let mut got = 0;
        while got < FRAME_LEN {
            match stream.read(&mut buf[got..]) {
                Ok(0) => return (frames, got == 0),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (frames, false),
                Err(e) => panic!("reading replies: {e}"),
            }
        }
        let bytes: &'static [u8] = Box::leak(buf.clone().into_boxed_slice());
        frames.push(Frame::decode_slice(bytes).expect("a reply frame"));
    }
}

fn small_rcvbuf_conn(server: &ServerProcess) -> std::net::TcpStream {
    let addr = server.addr;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Regression (issue #10): a fatal frame behind a pipeline closed the connection with the
/// client's later frames still unread; the kernel then reset it, destroying the replies the
/// client had not read yet (27-31 of 100 arrived, never the BAD_FRAME). The server now
/// half-closes after its last reply and drains the input.
#[test]
fn replies_before_a_fatal_frame_all_arrive_before_the_close() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut stream = small_rcvbuf_conn(&server);
    let mut bytes = Vec::new();
    for i in 0..100u64 {
        Frame::request(i + 1, Command::PUT, format!("k{i}").as_bytes(), &[7u8; 2000])
            .encode_to(&mut bytes)
            .unwrap();
    }
    bytes.extend_from_slice(&[0xAB; FRAME_LEN]); // bad magic: answered, then the connection ends
    for i in 100..200u64 {
        Frame::request(i + 1, Command::PUT, format!("k{i}").as_bytes(), &[7u8; 2000])
            .encode_to(&mut bytes)
            .unwrap();
    }
    let writer = {
        let mut s = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = s.write_all(&bytes);
        })
    };
    let (frames, clean) = read_all_slowly(&mut stream, Duration::from_millis(2));
    let _ = writer.join();
    assert_eq!(frames.len(), 101, "every PUT's reply and the BAD_FRAME arrive");
    assert!(frames[..100].iter().enumerate().all(|(i, f)| f.id == i as u64 + 1 && f.status() == Status::OK));
    assert_eq!((frames[100].id, frames[100].status()), (0, Status::BAD_FRAME));
    assert!(clean, "the connection ended with EOF, not a reset");
    ping_ok(&server);
}

/// Regression (issue #10): SIGTERM during a pipeline answered some writes, applied more, and
/// reset the connection (23-31 replies for 47-111 applied writes). Now every write applied is
/// answered, and the client sees EOF after the last reply.
#[test]
fn a_sigterm_during_a_pipeline_answers_every_write_it_applied() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    // Small socket buffers on both sides, so the replies back up and the server pauses reading.
    let mut server = ServerProcess::start(&data, &["--so-sndbuf", "65536"]);
    let mut stream = small_rcvbuf_conn(&server);
    let mut bytes = Vec::new();
    for i in 0..300u64 {
        Frame::request(i + 1, Command::PUT, format!("k{i}").as_bytes(), &[7u8; 2000])
            .encode_to(&mut bytes)
            .unwrap();
    }
    let writer = {
        let mut s = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = s.write_all(&bytes);
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    server.signal(libc::SIGTERM);
    // A slow reader: the server's replies back up, it stops reading, and the rest of the
    // pipeline stays unread in its socket when it closes.
    let (frames, clean) = read_all_slowly(&mut stream, Duration::from_millis(5));
    let _ = writer.join();
    assert!(server.terminate().success());
    assert!(clean, "the connection ended with EOF, not a reset");
    assert!(frames.iter().all(|f| f.status() == Status::OK));
    let server = ServerProcess::start(&data, &[]);
    let mut c = server.client();
    let applied = (0..300).filter(|i| c.get(format!("k{i}").as_bytes()).unwrap().is_some()).count();
    assert_eq!(frames.len(), applied, "every applied write was answered, and only those");
    // They are a prefix of the pipeline: requests are executed in order.
    assert!(frames.iter().enumerate().all(|(i, f)| f.id == i as u64 + 1));
}

/// Regression (issue #10): replies to frames refused with a trusted id (too long a key, bad
/// lengths, reserved flags) carried command 0; the checksum vouches for the header, so they
/// now carry the request's command, as PROTOCOL.md says.
#[test]
fn refusals_with_a_trusted_id_carry_the_command() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut raw = server.raw();
    // The checksum covers bytes 8 .. 48 + key_len + value_len, clamped to the frame.
    let fix_crc = |b: &mut [u8; FRAME_LEN]| {
        let len = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let end =
            (48 + len(wire::header::KEY_LEN_OFFSET) + len(wire::header::VALUE_LEN_OFFSET)).min(FRAME_LEN);
        let crc = crc32_of(&b[wire::header::CRC_START..end]);
        b[wire::header::CRC_OFFSET..wire::header::ID_OFFSET].copy_from_slice(&crc.to_le_bytes());
    };
    let mut long_key = [0u8; FRAME_LEN];
    Frame::request(21, Command::GET, b"k", b"").encode(&mut long_key).unwrap();
    long_key[wire::header::KEY_LEN_OFFSET..][..4].copy_from_slice(&2000u32.to_le_bytes());
    fix_crc(&mut long_key);
    let mut flags = [0u8; FRAME_LEN];
    Frame::request(22, Command::PUT, b"k", b"v").encode(&mut flags).unwrap();
    flags[wire::header::FLAGS_OFFSET] = 0x80;
    fix_crc(&mut flags);
    raw.send(&long_key);
    raw.send(&flags);
    for (id, command, status) in
        [(21, Command::GET, Status::TOO_LARGE), (22, Command::PUT, Status::BAD_FRAME)]
    {
        let reply = raw.recv().unwrap();
        let reply = Frame::decode(&reply).unwrap();
        assert_eq!((reply.id, reply.command, reply.status()), (id, command, status));
    }
}

/// CRC-32 (IEEE), as the frame uses (recomputed here so the tests need no extra crate).
fn crc32_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn continued_with_an_unknown_command_is_unsupported_flags_come_first() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut raw = server.raw();
    raw.send_frame(Frame { flags: wire::Flags::CONTINUED, ..Frame::request(31, Command(0x3f), b"", b"") });
    let reply = raw.recv().unwrap();
    let reply = Frame::decode(&reply).unwrap();
    assert_eq!((reply.id, reply.status()), (31, Status::UNSUPPORTED));
}
