//! Compact framing negotiated per connection with HELLO, beside fixed-frame connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use harness::{temp_dir, ServerProcess};
use wire::{Command, CompactReader, Frame, Framing, Request, Status, FRAME_LEN, HELLO_COMPACT, HELLO_FIXED};

/// A reply, owned.
#[derive(Debug)]
struct Owned {
    id: u64,
    command: Command,
    status: Status,
    version: u64,
    value: Vec<u8>,
}

impl From<Frame<'_>> for Owned {
    fn from(f: Frame<'_>) -> Self {
        Owned {
            id: f.id,
            command: f.command,
            status: f.status(),
            version: f.timestamp,
            value: f.value.to_vec(),
        }
    }
}

/// A connection that reads fixed replies until told the framing changed, then compact ones.
struct Conn {
    stream: TcpStream,
    framing: Framing,
    fixed: wire::FrameReader,
    compact: CompactReader,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            framing: Framing::Fixed,
            fixed: wire::FrameReader::new(),
            compact: CompactReader::new(),
        }
    }

    /// Reads one reply in the current framing; `None` when the server closed the connection.
    fn recv(&mut self) -> Option<Owned> {
        loop {
            match self.framing {
                Framing::Fixed => {
                    if let Some(bytes) = self.fixed.next_frame() {
                        return Some(Owned::from(Frame::decode(bytes).expect("a valid fixed reply")));
                    }
                }
                Framing::Compact => {
                    if let Some(f) = self.compact.next_frame().expect("a valid compact reply") {
                        return Some(Owned::from(f));
                    }
                }
            }
            let mut buf = [0u8; 8192];
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading a reply: {e}"),
            };
            match self.framing {
                Framing::Fixed => self.fixed.push(&buf[..n]),
                Framing::Compact => self.compact.push(&buf[..n]),
            }
        }
    }

    /// Switches how replies are read after the HELLO reply: anything already buffered past
    /// it moves to the compact reader.
    fn switch_to_compact(&mut self) {
        self.framing = Framing::Compact;
        let rest = self.fixed.pending().to_vec();
        self.fixed = wire::FrameReader::new();
        self.compact.push(&rest);
    }
}

fn encode(frame: Frame<'_>, framing: Framing, out: &mut Vec<u8>) {
    match framing {
        Framing::Fixed => frame.encode_to(out).unwrap(),
        Framing::Compact => frame.encode_compact_to(out).unwrap(),
    }
}

fn hello(framing: u8) -> Frame<'static> {
    Request::Hello { framing }.to_frame(1)
}

/// HELLO pipelined with the first batch: the frames after it in the same write are already
/// compact, and the server must switch in the middle of one read.
#[test]
fn fixed_and_compact_connections_pipeline_side_by_side() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let addr = server.addr;
    const N: u64 = 3000;
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                let framing = if w % 2 == 0 { Framing::Fixed } else { Framing::Compact };
                let mut conn = Conn::connect(addr);
                let mut writer = conn.stream.try_clone().unwrap();
                let mut bytes = Vec::new();
                if framing == Framing::Compact {
                    encode(hello(HELLO_COMPACT), Framing::Fixed, &mut bytes);
                }
                let value = |i: u64| format!("w{w}-value-{i}").repeat(1 + (i % 7) as usize);
                for i in 0..N {
                    let key = format!("w{w}-k{}", i / 2);
                    let v = value(i / 2);
                    let frame = if i % 2 == 0 {
                        Frame::request(i + 2, Command::PUT, key.as_bytes(), v.as_bytes())
                    } else {
                        Frame::request(i + 2, Command::GET, key.as_bytes(), b"")
                    };
                    encode(frame, framing, &mut bytes);
                }
                // Send in odd-sized pieces so compact frames straddle reads.
                let sender = std::thread::spawn(move || {
                    for piece in bytes.chunks(7919) {
                        writer.write_all(piece).unwrap();
                    }
                });
                if framing == Framing::Compact {
                    let reply = conn.recv().expect("HELLO answered");
                    assert_eq!((reply.id, reply.command, reply.status), (1, Command::HELLO, Status::OK));
                    assert_eq!(reply.value, [HELLO_COMPACT], "the server agrees to compact framing");
                    conn.switch_to_compact();
                }
                for i in 0..N {
                    let reply = conn.recv().unwrap_or_else(|| panic!("worker {w}: closed after {i} replies"));
                    assert_eq!(reply.id, i + 2, "worker {w}: replies in request order");
                    assert_eq!(reply.status, Status::OK, "worker {w} request {i}: {:?}", reply);
                    if i % 2 == 1 {
                        assert_eq!(reply.value, value(i / 2).as_bytes(), "worker {w} GET {i}");
                        assert!(reply.version > 0);
                    }
                }
                sender.join().unwrap();
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    // What compact connections wrote, a fixed one reads, and the other way round.
    let mut client = server.client();
    for w in 0..4 {
        let key = format!("w{w}-k7");
        assert_eq!(client.get(key.as_bytes()).unwrap().unwrap().data, format!("w{w}-value-7").as_bytes());
    }
}

#[test]
fn compact_replies_are_header_key_and_value_only() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::connect(server.addr);
    let mut bytes = Vec::new();
    encode(hello(HELLO_COMPACT), Framing::Fixed, &mut bytes);
    encode(Frame::request(2, Command::PUT, b"fruit", b"apple"), Framing::Compact, &mut bytes);
    encode(Frame::request(3, Command::GET, b"fruit", b""), Framing::Compact, &mut bytes);
    conn.stream.write_all(&bytes).unwrap();
    // Exactly: one fixed frame, then a 48-byte PUT reply and a 53-byte GET reply.
    let mut got = vec![0u8; FRAME_LEN + wire::HEADER_LEN + wire::HEADER_LEN + 5];
    conn.stream.read_exact(&mut got).unwrap();
    let hello_reply = Frame::decode(got[..FRAME_LEN].try_into().unwrap()).unwrap();
    assert_eq!(hello_reply.value, [HELLO_COMPACT]);
    let (put, used) = Frame::decode_compact(&got[FRAME_LEN..]).unwrap().unwrap();
    assert_eq!((put.id, put.status(), used), (2, Status::OK, wire::HEADER_LEN));
    let (get, used) = Frame::decode_compact(&got[FRAME_LEN + wire::HEADER_LEN..]).unwrap().unwrap();
    assert_eq!((get.id, get.value, used), (3, &b"apple"[..], wire::HEADER_LEN + 5));
    // And nothing more: no padding follows.
    conn.stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut extra = [0u8; 1];
    assert!(conn.stream.read(&mut extra).is_err(), "no bytes after the last reply");
}

#[test]
fn a_framing_the_server_does_not_know_is_answered_with_fixed() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::connect(server.addr);
    let mut bytes = Vec::new();
    encode(hello(7), Framing::Fixed, &mut bytes);
    encode(Frame::request(2, Command::PING, b"", b"still fixed"), Framing::Fixed, &mut bytes);
    conn.stream.write_all(&bytes).unwrap();
    let reply = conn.recv().unwrap();
    assert_eq!((reply.status, reply.value.as_slice()), (Status::OK, &[HELLO_FIXED][..]));
    let ping = conn.recv().unwrap();
    assert_eq!((ping.id, ping.value.as_slice()), (2, &b"still fixed"[..]));
    // An empty HELLO is a bad request, and changes nothing.
    conn.stream
        .write_all(&{
            let mut b = Vec::new();
            encode(Frame::request(3, Command::HELLO, b"", b""), Framing::Fixed, &mut b);
            b
        })
        .unwrap();
    assert_eq!(conn.recv().unwrap().status, Status::BAD_REQUEST);
}

#[test]
fn hello_comes_before_auth_and_a_compact_connection_can_go_back_to_fixed() {
    let dir = temp_dir();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &["--auth-token", token.to_str().unwrap()]);
    let mut conn = Conn::connect(server.addr);
    let mut bytes = Vec::new();
    encode(hello(HELLO_COMPACT), Framing::Fixed, &mut bytes);
    encode(Frame::request(2, Command::PUT, b"k", b"v"), Framing::Compact, &mut bytes);
    encode(Frame::request(3, Command::AUTH, b"", b"s3cret"), Framing::Compact, &mut bytes);
    encode(Frame::request(4, Command::PUT, b"k", b"v"), Framing::Compact, &mut bytes);
    encode(Request::Hello { framing: HELLO_FIXED }.to_frame(5), Framing::Compact, &mut bytes);
    encode(Frame::request(6, Command::GET, b"k", b""), Framing::Fixed, &mut bytes);
    conn.stream.write_all(&bytes).unwrap();
    assert_eq!(conn.recv().unwrap().value, [HELLO_COMPACT]);
    conn.switch_to_compact();
    let statuses: Vec<_> = (0..4).map(|_| conn.recv().unwrap()).map(|r| (r.id, r.status)).collect();
    assert_eq!(
        statuses,
        [(2, Status::UNAUTHORIZED), (3, Status::OK), (4, Status::OK), (5, Status::OK)],
        "HELLO needs no AUTH, everything else does"
    );
    conn.framing = Framing::Fixed;
    let rest = conn.compact.pending().to_vec();
    conn.fixed.push(&rest);
    let get = conn.recv().unwrap();
    assert_eq!((get.id, get.value.as_slice()), (6, &b"v"[..]), "fixed again after HELLO fixed");
}

/// In compact framing the length says where the next frame starts: a bad one (or a bad
/// checksum, which may be a damaged length) loses the stream, so it is answered and closed.
#[test]
fn a_lost_boundary_on_a_compact_connection_is_answered_then_closed() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    // (what, where, the bytes written there, the answer)
    let damaged = [
        (
            "key length past the limit",
            wire::header::KEY_LEN_OFFSET,
            5000u32.to_le_bytes().to_vec(),
            Status::BAD_FRAME,
        ),
        (
            "value length past the frame",
            wire::header::VALUE_LEN_OFFSET,
            4090u32.to_le_bytes().to_vec(),
            Status::BAD_FRAME,
        ),
        ("a changed key byte", wire::HEADER_LEN + 1, b"x".to_vec(), Status::BAD_CHECKSUM),
    ];
    for (what, at, patch, status) in damaged {
        let mut conn = Conn::connect(server.addr);
        let mut bytes = Vec::new();
        encode(hello(HELLO_COMPACT), Framing::Fixed, &mut bytes);
        encode(Frame::request(2, Command::PUT, b"before", b"1"), Framing::Compact, &mut bytes);
        let mut bad = Vec::new();
        encode(Frame::request(3, Command::PUT, b"bad", b"2"), Framing::Compact, &mut bad);
        bad[at..at + patch.len()].copy_from_slice(&patch);
        bytes.extend_from_slice(&bad);
        encode(Frame::request(4, Command::PUT, b"after", b"3"), Framing::Compact, &mut bytes);
        conn.stream.write_all(&bytes).unwrap();
        assert_eq!(conn.recv().unwrap().value, [HELLO_COMPACT]);
        conn.switch_to_compact();
        let first = conn.recv().unwrap();
        assert_eq!((first.id, first.status), (2, Status::OK), "{what}: the frame before is executed");
        let refusal = conn.recv().unwrap();
        assert_eq!((refusal.id, refusal.status), (0, status), "{what}: answered with id 0");
        assert!(conn.recv().is_none(), "{what}: then the connection is closed");
    }
    let mut client = server.client();
    assert!(client.get(b"bad").unwrap().is_none(), "the damaged frame was not executed");
    assert!(client.get(b"after").unwrap().is_none(), "nothing after it was either");
    assert!(client.get(b"before").unwrap().is_some());
}

#[test]
fn reserved_flags_spoil_only_their_compact_frame() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::connect(server.addr);
    let mut bytes = Vec::new();
    encode(hello(HELLO_COMPACT), Framing::Fixed, &mut bytes);
    // A sender's encoder refuses reserved flags: set one by hand, with a checksum to match.
    let mut flagged = Vec::new();
    encode(Frame::request(2, Command::PUT, b"k", b"v"), Framing::Compact, &mut flagged);
    flagged[wire::header::FLAGS_OFFSET..][..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let crc = crc32fast::hash(&flagged[wire::header::CRC_START..]);
    flagged[wire::header::CRC_OFFSET..][..4].copy_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&flagged);
    encode(Frame::request(3, Command::PUT, b"k", b"w"), Framing::Compact, &mut bytes);
    conn.stream.write_all(&bytes).unwrap();
    assert_eq!(conn.recv().unwrap().value, [HELLO_COMPACT]);
    conn.switch_to_compact();
    let refused = conn.recv().unwrap();
    assert_eq!((refused.id, refused.status), (2, Status::BAD_FRAME));
    let next = conn.recv().unwrap();
    assert_eq!((next.id, next.status), (3, Status::OK), "the stream goes on");
}

/// A compact frame trickling in a byte at a time is executed once whole, and only then.
#[test]
fn a_compact_frame_split_across_many_reads_is_executed_once_whole() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::connect(server.addr);
    let mut bytes = Vec::new();
    encode(hello(HELLO_COMPACT), Framing::Fixed, &mut bytes);
    conn.stream.write_all(&bytes).unwrap();
    assert_eq!(conn.recv().unwrap().value, [HELLO_COMPACT]);
    conn.switch_to_compact();
    let value = vec![b'x'; 4000];
    let mut frame = Vec::new();
    encode(Frame::request(2, Command::PUT, b"slow", &value), Framing::Compact, &mut frame);
    for piece in frame.chunks(997) {
        conn.stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let reply = conn.recv().unwrap();
    assert_eq!((reply.id, reply.status), (2, Status::OK));
    assert_eq!(server.client().get(b"slow").unwrap().unwrap().data, value);
}
