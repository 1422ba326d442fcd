//! Cluster mode against a scripted fake coordinator (UDP) and fake servers (TCP): following
//! hints, retrying UNAVAILABLE and lost connections under the same request id, and telling
//! done, failed and unknown apart when the deadline passes. The real cluster is tested from
//! `tests/`; these pin down the client's side of the contract without it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client::{Client, ClientError, Options, Outcome};
use wire::cluster::{Member, View, GET_VIEW};
use wire::{Command, Frame, Status, FRAME_LEN};

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// A loopback port nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn view_of(num: u64, primary: Option<SocketAddr>) -> View {
    View {
        num,
        term: num,
        primary: primary.map(|a| Member { id: format!("s{num}"), addr: a.to_string(), ..Member::default() }),
        ..View::default()
    }
}

/// Answers GET_VIEW with whatever view it currently holds; can drop the first datagrams.
struct FakeCoordinator {
    addr: SocketAddr,
    view: Arc<Mutex<View>>,
    asked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeCoordinator {
    fn start(view: View, drop_first: usize) -> FakeCoordinator {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = socket.local_addr().unwrap();
        let view = Arc::new(Mutex::new(view));
        let asked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (v, a, s) = (view.clone(), asked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; FRAME_LEN];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok(Some((frame, _))) = Frame::decode_compact(&buf[..n]) else { continue };
                if frame.command != GET_VIEW || frame.is_reply() {
                    continue;
                }
                if a.fetch_add(1, Ordering::Relaxed) < drop_first {
                    continue; // lost on the way
                }
                let body = v.lock().unwrap().encode(0).into_vec();
                let mut out = Vec::new();
                Frame::reply_to(frame.id, GET_VIEW, Status::OK, &body).encode_compact_to(&mut out).unwrap();
                let _ = socket.send_to(&out, from);
            }
        });
        FakeCoordinator { addr, view, asked, stop }
    }

    fn set(&self, view: View) {
        *self.view.lock().unwrap() = view;
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a fake server does with one request.
#[derive(Clone)]
enum Act {
    Reply(Status, Vec<u8>, u64),
    /// Never answer (the connection stays open).
    Silent,
    /// Close the connection without answering.
    Close,
}

/// One request as a fake server received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    id: u64,
    command: Command,
    client_id: u64,
    connection: usize,
}

type Script = dyn Fn(&Seen, usize) -> Act + Send + Sync;

/// A TCP server that answers each request as its script says (given the request and how many
/// came before it), recording what it received.
struct FakeServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeServer {
    fn start(script: impl Fn(&Seen, usize) -> Act + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let s = seen.clone();
        std::thread::spawn(move || {
            for (connection, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let (seen, script) = (s.clone(), script.clone());
                std::thread::spawn(move || serve(stream, connection, &seen, &*script));
            }
        });
        FakeServer { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests received other than AUTH.
    fn requests(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.command != Command::AUTH).collect()
    }
}

fn serve(mut stream: TcpStream, connection: usize, seen: &Mutex<Vec<Seen>>, script: &Script) {
    let mut buf = [0u8; FRAME_LEN];
    loop {
        if stream.read_exact(&mut buf).is_err() {
            return;
        }
        let Ok(frame) = Frame::decode(&buf) else { return };
        let request = Seen { id: frame.id, command: frame.command, client_id: frame.param, connection };
        let before = {
            let mut seen = seen.lock().unwrap();
            seen.push(request);
            seen.len() - 1
        };
        let act = if frame.command == Command::AUTH {
            Act::Reply(Status::OK, Vec::new(), 0)
        } else {
            script(&request, before)
        };
        match act {
            Act::Reply(status, value, version) => {
                let mut out = [0u8; FRAME_LEN];
                Frame::reply_to(frame.id, frame.command, status, &value)
                    .with_timestamp(version)
                    .encode(&mut out)
                    .unwrap();
                if stream.write_all(&out).is_err() {
                    return;
                }
            }
            Act::Silent => {}
            Act::Close => return,
        }
    }
}

fn ok(version: u64) -> Act {
    Act::Reply(Status::OK, Vec::new(), version)
}

/// Options for quick tests: a short deadline.
fn quick(op_timeout_ms: u64) -> Options {
    Options { op_timeout: Duration::from_millis(op_timeout_ms), ..Options::default() }
}

#[test]
fn a_wrong_server_hint_is_followed_with_the_same_request_id() {
    let real = FakeServer::start(|_, _| ok(7));
    let hint = real.addr.to_string().into_bytes();
    let old = FakeServer::start(move |_, _| Act::Reply(Status::WRONG_SERVER, hint.clone(), 0));
    let coordinator = FakeCoordinator::start(view_of(3, Some(old.addr)), 0);
    let before = unix_micros();
    let mut client = Client::connect_cluster(&[coordinator.addr], quick(2000)).unwrap();
    client.auth(b"secret").unwrap();
    assert_eq!(client.put(b"k", b"v").unwrap(), 7);
    assert_eq!(client.peer(), real.addr, "the client now talks to the server the hint named");
    let (at_old, at_real) = (old.requests(), real.requests());
    assert_eq!((at_old.len(), at_real.len()), (1, 1));
    assert_eq!(at_old[0].id, at_real[0].id, "a retry reuses the request id");
    assert!(at_old[0].id >= before, "request ids start at the Unix time in microseconds");
    assert_eq!(at_real[0].client_id, client.client_id());
    assert_ne!(client.client_id(), 0);
    assert_eq!(real.seen()[0].command, Command::AUTH, "the token is presented on a new connection first");
    // The next operation goes straight to the server that answered.
    assert_eq!(client.put(b"k", b"w").unwrap(), 7);
    let later = real.requests();
    assert_eq!(later.len(), 2);
    assert!(later[1].id > later[0].id, "request ids increase");
    assert_eq!(client.view().map(|v| v.num), Some(3));
}

#[test]
fn a_wrong_server_without_hint_asks_the_coordinator_again() {
    let new = FakeServer::start(|_, _| ok(11));
    let coordinator = Arc::new(Mutex::new(None::<Arc<FakeCoordinator>>));
    let (c, new_addr) = (coordinator.clone(), new.addr);
    let old = FakeServer::start(move |_, _| {
        // The view changes while the request is on its way.
        if let Some(c) = c.lock().unwrap().as_ref() {
            c.set(view_of(5, Some(new_addr)));
        }
        Act::Reply(Status::WRONG_SERVER, Vec::new(), 0)
    });
    let fake = Arc::new(FakeCoordinator::start(view_of(4, Some(old.addr)), 0));
    *coordinator.lock().unwrap() = Some(fake.clone());
    let mut client = Client::connect_cluster(&[fake.addr], quick(2000)).unwrap();
    let asked = fake.asked.load(Ordering::Relaxed);
    assert_eq!(client.append(b"k", b"v").unwrap(), 11);
    assert!(fake.asked.load(Ordering::Relaxed) > asked, "the view was asked again");
    assert_eq!(old.requests()[0].id, new.requests()[0].id);
    assert_eq!(client.view().map(|v| v.num), Some(5));
}

#[test]
fn unavailable_is_retried_until_it_serves() {
    let server = FakeServer::start(|_, before| {
        if before < 2 {
            Act::Reply(Status::UNAVAILABLE, b"taking over".to_vec(), 0)
        } else {
            ok(3)
        }
    });
    let coordinator = FakeCoordinator::start(view_of(1, Some(server.addr)), 0);
    let mut client = Client::connect_cluster(&[coordinator.addr], quick(2000)).unwrap();
    let started = Instant::now();
    assert_eq!(client.put(b"k", b"v").unwrap(), 3);
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.id == seen[0].id), "{seen:?}");
    assert!(started.elapsed() >= Duration::from_millis(50), "20 + 40 ms of backoff");
}

#[test]
fn a_server_that_never_answers_makes_writes_unknown_and_reads_failed() {
    let server = FakeServer::start(|seen, _| if seen.command == Command::PING { ok(0) } else { Act::Silent });
    let coordinator = FakeCoordinator::start(view_of(1, Some(server.addr)), 0);
    let mut client = Client::connect_cluster(&[coordinator.addr], quick(300)).unwrap();
    let started = Instant::now();
    let put = client.put(b"k", b"v");
    let took = started.elapsed();
    assert!(matches!(put, Err(ClientError::Unknown { .. })), "{put:?}");
    assert_eq!(Outcome::of(&put), Outcome::Unknown);
    assert!(took >= Duration::from_millis(280) && took < Duration::from_millis(1500), "{took:?}");
    let get = client.get(b"k");
    assert!(matches!(get, Err(ClientError::Unavailable { .. })), "{get:?}");
    assert_eq!(Outcome::of(&get), Outcome::Failed, "a read that could not complete had no effect");
    assert_eq!(Outcome::of(&client.ping()), Outcome::Done, "the server still answers pings");
}

#[test]
fn a_connection_closed_mid_request_is_retried_on_a_new_one() {
    let server = FakeServer::start(|_, before| if before == 0 { Act::Close } else { ok(9) });
    let coordinator = FakeCoordinator::start(view_of(1, Some(server.addr)), 0);
    let mut client = Client::connect_cluster(&[coordinator.addr], quick(2000)).unwrap();
    assert_eq!(client.put(b"k", b"v").unwrap(), 9);
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].id, seen[1].id);
    assert_ne!(seen[0].connection, seen[1].connection, "the retry went over a new connection");

    let always = FakeServer::start(|_, _| Act::Close);
    let coordinator = FakeCoordinator::start(view_of(1, Some(always.addr)), 0);
    let mut client = Client::connect_cluster(&[coordinator.addr], quick(300)).unwrap();
    let delete = client.delete(b"k");
    assert_eq!(Outcome::of(&delete), Outcome::Unknown, "{delete:?}");
    let get = client.get(b"k");
    assert_eq!(Outcome::of(&get), Outcome::Failed, "{get:?}");
    assert!(always.requests().len() > 2, "it kept trying until the deadline");
}

#[test]
fn a_write_that_never_left_the_client_failed() {
    // The primary refuses once, then the view loses its primary.
    let coordinator = Arc::new(Mutex::new(None::<Arc<FakeCoordinator>>));
    let c = coordinator.clone();
    let server = FakeServer::start(move |_, _| {
        if let Some(c) = c.lock().unwrap().as_ref() {
            let mut view = view_of(8, None);
            view.waiting = "waiting for s2 to catch up".into();
            c.set(view);
        }
        Act::Reply(Status::WRONG_SERVER, Vec::new(), 0)
    });
    let fake = Arc::new(FakeCoordinator::start(view_of(7, Some(server.addr)), 0));
    *coordinator.lock().unwrap() = Some(fake.clone());
    let mut client = Client::connect_cluster(&[fake.addr], quick(300)).unwrap();
    let put = client.put(b"k", b"v");
    assert_eq!(Outcome::of(&put), Outcome::Failed, "{put:?}");
    let message = put.unwrap_err().to_string();
    assert!(message.contains("waiting for s2 to catch up"), "the error says why: {message}");

    // A primary that refuses connections: nothing was sent.
    fake.set(view_of(9, Some(dead_addr())));
    let put = client.put(b"k", b"v");
    assert!(matches!(put, Err(ClientError::Unavailable { .. })), "{put:?}");
    assert!(put.unwrap_err().to_string().contains("cannot connect"));
}

#[test]
fn refusals_fail_at_once_and_stale_request_ids_are_unknown() {
    let server = FakeServer::start(|seen, _| match seen.command {
        Command::PUT => Act::Reply(Status::CONFLICT, Vec::new(), 42),
        Command::APPEND => Act::Reply(Status::TOO_LARGE, b"the value would exceed 4048 bytes".to_vec(), 0),
        Command::DELETE => Act::Reply(Status::BAD_REQUEST, b"stale request id 5 < 9".to_vec(), 0),
        Command::GET => Act::Reply(Status::INTERNAL, b"reply encoding failed".to_vec(), 0),
        _ => ok(0),
    });
    let coordinator = FakeCoordinator::start(view_of(1, Some(server.addr)), 0);
    let mut client = Client::connect_cluster(&[coordinator.addr], quick(2000)).unwrap();
    let put = client.put_if(b"k", b"v", 3);
    assert!(matches!(put, Err(ClientError::Conflict { current: 42 })), "{put:?}");
    assert_eq!(Outcome::of(&put), Outcome::Failed);
    let append = client.append(b"k", b"v");
    assert_eq!(Outcome::of(&append), Outcome::Failed, "{append:?}");
    let delete = client.delete(b"k");
    assert_eq!(Outcome::of(&delete), Outcome::Unknown, "{delete:?}");
    let get = client.get(b"k");
    assert_eq!(Outcome::of(&get), Outcome::Failed, "a read is never unknown: {get:?}");
    assert_eq!(server.requests().len(), 4, "refusals are not retried");
    let too_big = client.put(b"k", &[0u8; 5000]);
    assert!(matches!(too_big, Err(ClientError::Encode(_))), "{too_big:?}");
    assert_eq!(server.requests().len(), 4, "nothing sent");
}

#[test]
fn lost_view_requests_are_sent_again() {
    let server = FakeServer::start(|_, _| ok(1));
    let coordinator = FakeCoordinator::start(view_of(2, Some(server.addr)), 2);
    let mut client = Client::connect_cluster(&[dead_addr(), coordinator.addr], quick(3000)).unwrap();
    assert!(coordinator.asked.load(Ordering::Relaxed) >= 3);
    assert_eq!(client.put(b"k", b"v").unwrap(), 1);
}

#[test]
fn no_coordinator_no_cluster_client() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap(); // receives, never answers
    let started = Instant::now();
    let err = Client::connect_cluster(&[silent.local_addr().unwrap()], quick(200)).unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("no coordinator answered"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = client::fetch_view(&[silent.local_addr().unwrap()], Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.outcome(), Outcome::Failed);
    assert!(Client::connect_cluster(&[], quick(100)).is_err());
}

#[test]
fn fetch_view_returns_the_coordinators_view() {
    let mut view = view_of(6, Some("127.0.0.1:7071".parse().unwrap()));
    view.backups = vec![Member { id: "s2".into(), addr: "127.0.0.1:7072".into(), ..Member::default() }];
    let coordinator = FakeCoordinator::start(view.clone(), 0);
    assert_eq!(client::fetch_view(&[coordinator.addr], Duration::from_secs(2)).unwrap(), view);
}

#[test]
fn one_server_keeps_its_client_id_across_reconnects() {
    let server = FakeServer::start(|_, before| if before == 1 { Act::Close } else { ok(1) });
    let before = unix_micros();
    let options = Options { client_id: Some(77), ..Options::default() };
    let mut client = Client::connect_with(server.addr, options).unwrap();
    client.put(b"a", b"1").unwrap();
    let lost = client.put(b"b", b"2");
    assert!(matches!(lost, Err(ClientError::Closed)), "one server reports what happened: {lost:?}");
    assert_eq!(Outcome::of(&lost), Outcome::Unknown);
    assert!(matches!(client.put(b"c", b"3"), Err(ClientError::Broken)));
    client.reconnect().unwrap();
    client.put(b"c", b"3").unwrap();
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.client_id == 77));
    assert!(seen[0].id >= before && seen[0].id < seen[1].id && seen[1].id < seen[2].id, "{seen:?}");
    assert_ne!(seen[1].connection, seen[2].connection);
}
