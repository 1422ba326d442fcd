//! Compact framing negotiated with HELLO, against fake servers that agree, choose fixed
//! framing, predate HELLO (UNKNOWN_COMMAND) or answer nonsense; and in cluster mode, on every
//! connection the client opens. Each fake server records every frame it received with the
//! framing it arrived in and its length on the wire, so the tests see what was really sent.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::{Client, ClientError, Framing, Op, Options};
use wire::cluster::{Member, View, GET_VIEW};
use wire::{Command, Frame, Status, FRAME_LEN, HEADER_LEN, HELLO_COMPACT, HELLO_FIXED};

/// How a fake server answers HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hello {
    /// Agrees to compact framing.
    Compact,
    /// Chooses fixed framing.
    Fixed,
    /// Predates HELLO: UNKNOWN_COMMAND, and stays fixed.
    Old,
    /// Answers OK naming a framing nobody knows.
    Nonsense,
}

/// One frame as a fake server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    connection: usize,
    command: Command,
    /// The framing it arrived in.
    framing: Framing,
    /// Its length on the wire.
    len: usize,
    /// Whether more bytes had arrived behind a HELLO before it was answered.
    followed: bool,
}

/// A fake server's map: key to value and version.
type Data = HashMap<Vec<u8>, (Vec<u8>, u64)>;

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    data: Mutex<Data>,
}

/// A TCP server speaking just enough of the protocol: HELLO as `hello` says, AUTH, PING,
/// GET, PUT, APPEND and DELETE on a shared map, or WRONG_SERVER pointing at `redirect` for
/// every data request.
struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeServer {
    fn start(hello: Hello) -> FakeServer {
        FakeServer::start_with(hello, None)
    }

    fn start_with(hello: Hello, redirect: Option<SocketAddr>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: Arc<Shared> = Arc::default();
        let s = shared.clone();
        std::thread::spawn(move || {
            for (connection, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let shared = s.clone();
                std::thread::spawn(move || serve(stream, connection, hello, redirect, &shared));
            }
        });
        FakeServer { addr, shared }
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

/// Whether bytes are waiting on `stream`, without taking them.
fn bytes_waiting(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let waiting = matches!(stream.peek(&mut [0u8; 1]), Ok(n) if n > 0);
    stream.set_nonblocking(false).unwrap();
    waiting
}

fn serve(
    mut stream: TcpStream,
    connection: usize,
    hello: Hello,
    redirect: Option<SocketAddr>,
    shared: &Shared,
) {
    let mut framing = Framing::Fixed;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 2 * FRAME_LEN];
    loop {
        // The next whole frame in the current framing, or read more.
        let decoded = match framing {
            Framing::Fixed => {
                buf.first_chunk::<FRAME_LEN>().map(|b| Frame::decode(b).map(|f| (f, FRAME_LEN)))
            }
            Framing::Compact => Frame::decode_compact(&buf).transpose(),
        };
        let Some(decoded) = decoded else {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let Ok((frame, used)) = decoded else { return }; // a frame this server cannot read: hang up
        let mut seen = Seen { connection, command: frame.command, framing, len: used, followed: false };
        let mut next_framing = framing;
        let mut value = Vec::new();
        let (status, version) = match frame.command {
            Command::HELLO => {
                // A client that may meet an old server must wait for this answer.
                std::thread::sleep(Duration::from_millis(50));
                seen.followed = buf.len() > used || bytes_waiting(&stream);
                match hello {
                    Hello::Compact => {
                        value.push(HELLO_COMPACT);
                        next_framing = Framing::Compact;
                        (Status::OK, 0)
                    }
                    Hello::Fixed => {
                        value.push(HELLO_FIXED);
                        (Status::OK, 0)
                    }
                    Hello::Old => {
                        value.extend_from_slice(b"unknown command 8");
                        (Status::UNKNOWN_COMMAND, 0)
                    }
                    Hello::Nonsense => {
                        value.push(0x77);
                        (Status::OK, 0)
                    }
                }
            }
            Command::GET | Command::PUT | Command::APPEND | Command::DELETE if redirect.is_some() => {
                value.extend_from_slice(redirect.unwrap().to_string().as_bytes());
                (Status::WRONG_SERVER, 0)
            }
            Command::GET => match shared.data.lock().unwrap().get(frame.key) {
                Some((v, version)) => {
                    value.clone_from(v);
                    (Status::OK, *version)
                }
                None => (Status::NOT_FOUND, 0),
            },
            Command::PUT | Command::APPEND => {
                let mut data = shared.data.lock().unwrap();
                let version = data.values().map(|(_, v)| *v).max().unwrap_or(0) + 1;
                let entry = data.entry(frame.key.to_vec()).or_default();
                if frame.command == Command::PUT {
                    entry.0.clear();
                }
                entry.0.extend_from_slice(frame.value);
                entry.1 = version;
                (Status::OK, version)
            }
            Command::DELETE => match shared.data.lock().unwrap().remove(frame.key) {
                Some((_, version)) => (Status::OK, version + 1000),
                None => (Status::NOT_FOUND, 0),
            },
            _ => (Status::OK, 0),
        };
        let mut out = Vec::new();
        let reply = Frame::reply_to(frame.id, frame.command, status, &value).with_timestamp(version);
        match framing {
            Framing::Fixed => reply.encode_to(&mut out).unwrap(),
            Framing::Compact => reply.encode_compact_to(&mut out).unwrap(),
        }
        buf.drain(..used);
        shared.seen.lock().unwrap().push(seen);
        framing = next_framing;
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn compact() -> Options {
    Options { op_timeout: Duration::from_secs(3), ..Options::default() }.with_framing(Framing::Compact)
}

/// Runs a little of everything: single operations and a pipeline.
fn exercise(client: &mut Client) {
    client.ping().unwrap();
    let v1 = client.put(b"fruit", b"apple").unwrap();
    assert_eq!(client.get(b"fruit").unwrap().map(|v| (v.data, v.version)), Some((b"apple".to_vec(), v1)));
    client.append(b"fruit", b" pie").unwrap();
    assert_eq!(client.get(b"fruit").unwrap().unwrap().data, b"apple pie");
    assert_eq!(client.get(b"absent").unwrap(), None);
    let values: Vec<Vec<u8>> = (0..200).map(|i| format!("value {i}").into_bytes()).collect();
    let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("k{i}").into_bytes()).collect();
    let mut ops: Vec<Op<'_>> = keys.iter().zip(&values).map(|(k, v)| Op::Put(k, v)).collect();
    ops.extend(keys.iter().map(|k| Op::Get(k)));
    let replies = client.pipeline(&ops).unwrap();
    assert_eq!(replies.len(), 400);
    for (i, reply) in replies[200..].iter().enumerate() {
        assert_eq!((reply.status, &reply.value), (Status::OK, &values[i]), "pipelined GET {i}");
    }
    assert!(client.delete(b"fruit").unwrap());
}

#[test]
fn a_server_that_agrees_gets_compact_frames_after_the_hello() {
    let server = FakeServer::start(Hello::Compact);
    let mut client = Client::connect_with(server.addr, compact()).unwrap();
    assert_eq!(client.framing(), Framing::Compact);
    client.auth(b"secret").unwrap();
    exercise(&mut client);

    let seen = server.seen();
    assert_eq!(seen[0].command, Command::HELLO, "HELLO comes first");
    assert_eq!((seen[0].framing, seen[0].len), (Framing::Fixed, FRAME_LEN), "as a fixed frame");
    assert_eq!(seen[1].command, Command::AUTH, "then AUTH");
    for s in &seen[1..] {
        assert_eq!(s.framing, Framing::Compact, "{s:?}");
        assert!(s.len < 100, "a small request is small on the wire: {s:?}");
    }
    assert_eq!(seen[1].len, HEADER_LEN + b"secret".len(), "AUTH is header + token");

    // A new connection asks again.
    client.reconnect().unwrap();
    assert_eq!(client.framing(), Framing::Compact);
    client.put(b"after", b"reconnect").unwrap();
    let again: Vec<Seen> = server.seen().into_iter().filter(|s| s.connection == 1).collect();
    assert_eq!(
        again.iter().map(|s| (s.command, s.framing)).collect::<Vec<_>>(),
        [(Command::HELLO, Framing::Fixed), (Command::PUT, Framing::Compact)]
    );
    assert_eq!(again[1].len, HEADER_LEN + b"after".len() + b"reconnect".len());
}

#[test]
fn an_old_server_answering_unknown_command_keeps_fixed_frames() {
    let server = FakeServer::start(Hello::Old);
    let mut client = Client::connect_with(server.addr, compact()).unwrap();
    assert_eq!(client.framing(), Framing::Fixed, "fell back without an error");
    client.auth(b"secret").unwrap();
    exercise(&mut client);
    let seen = server.seen();
    assert_eq!(seen[0].command, Command::HELLO);
    assert!(!seen[0].followed, "nothing was sent behind the HELLO before its answer");
    assert_eq!(seen[1].command, Command::AUTH);
    assert!(seen.iter().all(|s| s.framing == Framing::Fixed && s.len == FRAME_LEN), "{seen:?}");
    assert_eq!(seen.iter().filter(|s| s.command == Command::HELLO).count(), 1);

    // And again after a reconnect.
    client.reconnect().unwrap();
    assert_eq!(client.framing(), Framing::Fixed);
    client.ping().unwrap();
    let again: Vec<Seen> = server.seen().into_iter().filter(|s| s.connection == 1).collect();
    assert_eq!(again.iter().map(|s| s.command).collect::<Vec<_>>(), [Command::HELLO, Command::PING]);
    assert!(!again[0].followed);
}

#[test]
fn a_server_choosing_fixed_framing_gets_fixed_frames() {
    let server = FakeServer::start(Hello::Fixed);
    let mut client = Client::connect_with(server.addr, compact()).unwrap();
    assert_eq!(client.framing(), Framing::Fixed);
    exercise(&mut client);
    let seen = server.seen();
    assert_eq!(seen[0].command, Command::HELLO);
    assert!(!seen[0].followed);
    assert!(seen.iter().all(|s| s.framing == Framing::Fixed && s.len == FRAME_LEN), "{seen:?}");
}

#[test]
fn fixed_framing_is_the_default_and_sends_no_hello() {
    assert_eq!(Options::default().framing, Framing::Fixed);
    let server = FakeServer::start(Hello::Compact);
    let mut client = Client::connect_with(server.addr, Options::default()).unwrap();
    assert_eq!(client.framing(), Framing::Fixed);
    exercise(&mut client);
    let seen = server.seen();
    assert!(seen.iter().all(|s| s.command != Command::HELLO && s.len == FRAME_LEN), "{seen:?}");
}

#[test]
fn a_hello_reply_naming_an_unknown_framing_is_an_error() {
    let server = FakeServer::start(Hello::Nonsense);
    let err = Client::connect_with(server.addr, compact()).unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    assert!(err.to_string().contains("HELLO"), "{err}");
}

/// Answers GET_VIEW with a view whose primary is `primary`.
fn fake_coordinator(primary: SocketAddr, stop: Arc<AtomicBool>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let addr = socket.local_addr().unwrap();
    let view = View {
        num: 3,
        term: 3,
        primary: Some(Member { id: "s1".into(), addr: primary.to_string(), ..Member::default() }),
        ..View::default()
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; FRAME_LEN];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
            let Ok(Some((frame, _))) = Frame::decode_compact(&buf[..n]) else { continue };
            if frame.command != GET_VIEW || frame.is_reply() {
                continue;
            }
            let body = view.encode(0).into_vec();
            let mut out = Vec::new();
            Frame::reply_to(frame.id, GET_VIEW, Status::OK, &body).encode_compact_to(&mut out).unwrap();
            let _ = socket.send_to(&out, from);
        }
    });
    addr
}

#[test]
fn cluster_mode_negotiates_on_every_connection_including_after_a_redirect() {
    let real = FakeServer::start(Hello::Compact);
    let old = FakeServer::start_with(Hello::Old, Some(real.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let coordinator = fake_coordinator(old.addr, stop.clone());
    let mut client = Client::connect_cluster(&[coordinator], compact()).unwrap();
    assert_eq!(client.framing(), Framing::Fixed, "the view's primary predates HELLO");
    client.auth(b"secret").unwrap();
    assert_eq!(client.put(b"k", b"v").unwrap(), 1, "followed the hint to the real primary");
    assert_eq!(client.peer(), real.addr);
    assert_eq!(client.framing(), Framing::Compact, "and negotiated there");
    assert_eq!(client.get(b"k").unwrap().unwrap().data, b"v");

    // Every connection to either server (the view keeps naming the old one, so each
    // operation goes there first) started with HELLO alone, then AUTH in the framing chosen.
    for (server, framing) in [(&old, Framing::Fixed), (&real, Framing::Compact)] {
        let seen = server.seen();
        let connections = seen.iter().map(|s| s.connection).max().unwrap() + 1;
        assert!(connections >= 2, "{seen:?}");
        for c in 0..connections {
            let on: Vec<&Seen> = seen.iter().filter(|s| s.connection == c).collect();
            let opening: Vec<(Command, Framing)> =
                on.iter().take(2).map(|s| (s.command, s.framing)).collect();
            assert_eq!(opening, [(Command::HELLO, Framing::Fixed), (Command::AUTH, framing)], "{seen:?}");
            assert!(!on[0].followed, "HELLO alone: {seen:?}");
            assert!(on[1..].iter().all(|s| s.framing == framing), "{seen:?}");
        }
    }
    let data_at_real: Vec<Command> =
        real.seen().iter().map(|s| s.command).filter(|&c| c == Command::PUT || c == Command::GET).collect();
    assert_eq!(data_at_real, [Command::PUT, Command::GET]);
    stop.store(true, Ordering::Relaxed);
}
