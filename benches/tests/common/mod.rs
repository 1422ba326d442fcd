//! Helpers for the integration tests: run the binaries, a real Tandem server in-process, and
//! tiny in-test servers that speak Tandem's frames, RESP and the coordinator's datagrams over
//! real loopback sockets, one thread per connection.

#![allow(dead_code)] // Each test file uses a different subset.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use wire::cluster::{View, GET_VIEW};
use wire::{Command as Op, Frame, Request, Status, FRAME_LEN, HEADER_LEN, HELLO_COMPACT, HELLO_FIXED};

pub const BENCH: &str = env!("CARGO_BIN_EXE_tandem-bench");
pub const ECHO: &str = env!("CARGO_BIN_EXE_tandem-echo");

/// A `tandem-server` running on its own thread, on a free port, over a temporary directory.
pub struct RunningServer {
    pub addr: String,
    shutdown: server::ShutdownHandle,
    running: thread::JoinHandle<Result<(), server::ServerError>>,
    _dir: tempfile::TempDir,
}

impl RunningServer {
    pub fn start(max_connections: usize) -> RunningServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = server::Config {
            listen: ([127, 0, 0, 1], 0).into(),
            data_dir: dir.path().join("data"),
            segment_len: 8 * 1024 * 1024,
            max_connections,
            ..server::Config::default()
        };
        let server = server::Server::bind(config).expect("the server binds");
        let addr = server.local_addr().to_string();
        let shutdown = server.shutdown_handle();
        let running = thread::spawn(move || server.run());
        RunningServer { addr, shutdown, running, _dir: dir }
    }

    /// Stops the server and checks that it ran cleanly.
    pub fn stop(self) {
        self.shutdown.shutdown();
        self.running.join().expect("the server thread").expect("the server ran cleanly");
    }
}

/// A fake coordinator: a UDP socket on a thread that answers every `GET_VIEW` with `view`,
/// after ignoring the first `drop` requests (datagrams lost on the way).
pub struct FakeCoordinator {
    pub addr: SocketAddr,
    /// `GET_VIEW` requests received, dropped ones included.
    pub requests: Arc<AtomicU64>,
}

pub fn fake_coordinator(view: View, drop: u64) -> FakeCoordinator {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let body = view.encode(0).into_vec();
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            let Ok(Some((frame, _))) = Frame::decode_compact(&buf[..len]) else { continue };
            if frame.command != GET_VIEW || frame.is_reply() {
                continue;
            }
            if counter.fetch_add(1, Ordering::Relaxed) < drop {
                continue;
            }
            let mut out = Vec::new();
            Frame::reply_to(frame.id, GET_VIEW, Status::OK, &body).encode_compact_to(&mut out).expect("fits");
            let _ = socket.send_to(&out, from);
        }
    });
    FakeCoordinator { addr, requests }
}

/// A child process killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tandem-echo` on a free port and waits for its "listening on" line.
pub fn spawn_echo() -> Server {
    let mut child = Command::new(ECHO)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tandem-echo starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("a first line");
    let addr = line
        .trim()
        .strip_prefix("tandem-echo listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    Server { child, addr }
}

/// Runs tandem-bench with `args`, killing it if it takes longer than `limit`. Output is
/// collected while it runs, so a chatty run cannot block on a full pipe.
pub fn bench(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(BENCH)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tandem-bench starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let out = rx.recv().expect("killed").expect("output");
            panic!("tandem-bench {args:?} ran over {limit:?}\n{}", describe(&out));
        }
    }
}

/// The JSON objects tandem-bench printed, one per line.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How a fake server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Behaves.
    None,
    /// Answers every write and read with this error status.
    Status(Status),
    /// Returns a value that is not the one stored.
    CorruptValues,
    /// Closes each connection after this many requests.
    CloseAfter(u64),
    /// Reads requests and never answers (but PING).
    Silent,
}

/// How a fake Tandem server answers HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloMode {
    /// As a server from before HELLO: UNKNOWN_COMMAND, and the connection stays fixed.
    Unknown,
    /// OK, but it chooses fixed framing.
    ChooseFixed,
    /// OK, compact: the connection is compact from the next frame on, both ways.
    Compact,
    /// Agrees to the first N HELLOs (the probe's included), then answers UNKNOWN_COMMAND: a
    /// server replaced by an older one during the run.
    CompactFirst(u64),
}

/// A tiny in-memory Tandem key-value server: PING, GET, PUT, APPEND, in order per
/// connection, replying as the protocol says.
pub struct FakeServer {
    pub addr: SocketAddr,
    /// Requests received (not PING, not HELLO).
    pub requests: Arc<AtomicU64>,
    /// RESP `WAIT` commands received (not counted in `requests`).
    pub waits: Arc<AtomicU64>,
    /// HELLOs received.
    pub hellos: Arc<AtomicU64>,
    /// Frames received on a connection after its HELLO was refused: the client must send
    /// none, as it must not go on in fixed framing.
    pub after_refusal: Arc<AtomicU64>,
}

type Store = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

fn serve_forever(listener: TcpListener, handle: impl Fn(TcpStream) + Send + Sync + 'static) {
    let handle = Arc::new(handle);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let handle = handle.clone();
            thread::spawn(move || handle(stream));
        }
    });
}

/// A fake Tandem server from before HELLO (it answers UNKNOWN_COMMAND).
pub fn fake_tandem(fault: Fault) -> FakeServer {
    fake_tandem_hello(fault, HelloMode::Unknown)
}

/// Reads one frame in the connection's framing into `buf`; `None` at the end of the stream
/// or on bytes that are not a frame.
fn read_frame<'a>(stream: &mut TcpStream, buf: &'a mut [u8; FRAME_LEN], compact: bool) -> Option<Frame<'a>> {
    if !compact {
        stream.read_exact(buf).ok()?;
        return Frame::decode(buf).ok();
    }
    stream.read_exact(&mut buf[..HEADER_LEN]).ok()?;
    let len_at =
        |offset: usize| u32::from_le_bytes(buf[offset..offset + 4].try_into().expect("4 bytes")) as usize;
    let len = HEADER_LEN + len_at(wire::header::KEY_LEN_OFFSET) + len_at(wire::header::VALUE_LEN_OFFSET);
    if len > FRAME_LEN {
        return None;
    }
    stream.read_exact(&mut buf[HEADER_LEN..len]).ok()?;
    match Frame::decode_compact(&buf[..len]) {
        Ok(Some((frame, _))) => Some(frame),
        _ => None,
    }
}

/// A fake Tandem server answering HELLO as `hello` says; with [`HelloMode::Compact`] it
/// reads and answers compact frames after the HELLO.
pub fn fake_tandem_hello(fault: Fault, hello: HelloMode) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store: Store = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let hellos = Arc::new(AtomicU64::new(0));
    let hello_counter = hellos.clone();
    let after_refusal = Arc::new(AtomicU64::new(0));
    let refusal_counter = after_refusal.clone();
    serve_forever(listener, move |mut stream| {
        let _ = stream.set_nodelay(true);
        let mut buf = [0u8; FRAME_LEN];
        let mut out = [0u8; FRAME_LEN];
        let mut served = 0u64;
        let mut compact = false;
        let mut refused = false;
        while let Some(frame) = read_frame(&mut stream, &mut buf, compact) {
            if refused {
                refusal_counter.fetch_add(1, Ordering::Relaxed);
            }
            if let Fault::CloseAfter(n) = fault {
                if served >= n {
                    return;
                }
            }
            served += 1;
            if frame.command == Op::HELLO {
                let earlier = hello_counter.fetch_add(1, Ordering::Relaxed);
                let agree = match hello {
                    HelloMode::Unknown => None,
                    HelloMode::ChooseFixed => Some(false),
                    HelloMode::Compact => Some(true),
                    HelloMode::CompactFirst(n) => (earlier < n).then_some(true),
                };
                let reply = match agree {
                    None => Frame::reply(&frame, Status::UNKNOWN_COMMAND, b"unknown command 0x8"),
                    Some(true) => Frame::reply(&frame, Status::OK, &[HELLO_COMPACT]),
                    Some(false) => Frame::reply(&frame, Status::OK, &[HELLO_FIXED]),
                };
                // In the framing the connection had before the HELLO.
                let len = if compact { reply.encode_compact(&mut out) } else { reply.encode(&mut out) };
                if stream.write_all(&out[..len.expect("fits")]).is_err() {
                    return;
                }
                compact = agree == Some(true);
                refused = !compact;
                continue;
            }
            if fault == Fault::Silent && frame.command != Op::PING {
                continue;
            }
            let is_ping = frame.command == Op::PING;
            if !is_ping {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let mut value = Vec::new();
            let status = match (fault, Request::parse(&frame)) {
                (_, Ok(Request::Ping { payload })) => {
                    value = payload.to_vec();
                    Status::OK
                }
                (Fault::Status(status), _) => status,
                (_, Ok(Request::Put { key, value: v, .. })) => {
                    store.lock().expect("lock").insert(key.to_vec(), v.to_vec());
                    Status::OK
                }
                (_, Ok(Request::Append { key, value: v, .. })) => {
                    store.lock().expect("lock").entry(key.to_vec()).or_default().extend_from_slice(v);
                    Status::OK
                }
                (_, Ok(Request::Get { key })) => match store.lock().expect("lock").get(key) {
                    Some(v) => {
                        value = v.clone();
                        if fault == Fault::CorruptValues {
                            value[VERIFY_OFFSET] ^= 1;
                        }
                        Status::OK
                    }
                    None => Status::NOT_FOUND,
                },
                _ => Status::BAD_REQUEST,
            };
            let reply = Frame::reply(&frame, status, &value);
            let len = if compact { reply.encode_compact(&mut out) } else { reply.encode(&mut out) };
            if stream.write_all(&out[..len.expect("fits")]).is_err() {
                return;
            }
        }
    });
    FakeServer { addr, requests, waits: Arc::default(), hellos, after_refusal }
}

/// Which byte CorruptValues flips: inside the verify header, so only --verify notices.
const VERIFY_OFFSET: usize = 9;

/// A Tandem server always at its connection limit: as each connection opens it sends the
/// BUSY refusal (id 0, command 0), reads nothing for `close_after`, then closes the
/// connection (after reading what came meanwhile, so the close resets nothing). `requests`
/// counts the frames received but PINGs.
pub fn fake_busy(close_after: Duration) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    serve_forever(listener, move |mut stream| {
        let _ = stream.set_nodelay(true);
        let mut out = [0u8; FRAME_LEN];
        let busy = Frame::reply_to(0, Op(0), Status::BUSY, b"too many connections");
        busy.encode(&mut out).expect("fits");
        if stream.write_all(&out).is_err() {
            return;
        }
        thread::sleep(close_after);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; FRAME_LEN];
        while let Some(frame) = read_frame(&mut stream, &mut buf, false) {
            if frame.command != Op::PING {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    FakeServer {
        addr,
        requests,
        waits: Arc::default(),
        hellos: Arc::default(),
        after_refusal: Arc::default(),
    }
}

/// Reads one RESP command (an array of bulk strings); `None` at end of stream.
fn read_command(reader: &mut BufReader<TcpStream>) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let count: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0u8; len + 2];
        reader.read_exact(&mut arg).ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

/// A tiny in-memory RESP server: PING, SET, GET, APPEND.
pub fn fake_resp(fault: Fault) -> FakeServer {
    fake_resp_replicated(fault, 0, Duration::ZERO)
}

/// [`fake_resp`] that also answers `WAIT N 0` with `:replicas` after `wait_delay` (the time
/// replicas take to acknowledge).
pub fn fake_resp_replicated(fault: Fault, replicas: i64, wait_delay: Duration) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store: Store = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let waits = Arc::new(AtomicU64::new(0));
    let wait_counter = waits.clone();
    serve_forever(listener, move |stream| {
        let _ = stream.set_nodelay(true);
        let Ok(mut writer) = stream.try_clone() else { return };
        let mut reader = BufReader::new(stream);
        while let Some(args) = read_command(&mut reader) {
            let reply: Vec<u8> = match args.as_slice() {
                [name] if name.as_slice() == b"PING" => b"+PONG\r\n".to_vec(),
                [name, _, _] if name.as_slice() == b"WAIT" && !matches!(fault, Fault::Status(_)) => {
                    wait_counter.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(wait_delay);
                    format!(":{replicas}\r\n").into_bytes()
                }
                [name, _, _] if name.as_slice() == b"WAIT" => {
                    wait_counter.fetch_add(1, Ordering::Relaxed);
                    b"-ERR injected\r\n".to_vec()
                }
                _ if matches!(fault, Fault::Status(_)) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    b"-ERR injected\r\n".to_vec()
                }
                [name, key, value] if name.as_slice() == b"SET" => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    store.lock().expect("lock").insert(key.clone(), value.clone());
                    b"+OK\r\n".to_vec()
                }
                [name, key, value] if name.as_slice() == b"APPEND" => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut store = store.lock().expect("lock");
                    let entry = store.entry(key.clone()).or_default();
                    entry.extend_from_slice(value);
                    format!(":{}\r\n", entry.len()).into_bytes()
                }
                [name, key] if name.as_slice() == b"GET" => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    match store.lock().expect("lock").get(key) {
                        Some(v) => {
                            let mut v = v.clone();
                            if fault == Fault::CorruptValues {
                                v[VERIFY_OFFSET] ^= 1;
                            }
                            let mut reply = format!("${}\r\n", v.len()).into_bytes();
                            reply.extend_from_slice(&v);
                            reply.extend_from_slice(b"\r\n");
                            reply
                        }
                        None => b"$-1\r\n".to_vec(),
                    }
                }
                _ => b"-ERR unknown command\r\n".to_vec(),
            };
            if writer.write_all(&reply).is_err() {
                return;
            }
        }
    });
    FakeServer { addr, requests, waits, hellos: Arc::default(), after_refusal: Arc::default() }
}
