//! Fault-injecting proxies for cluster tests: put one between a server and the coordinator
//! ([`UdpProxy`]) or in front of a server's client port ([`TcpProxy`], registered as the
//! server's `--advertise` address) and cut, delay or drop traffic on demand.
//!
//! Both forward on plain threads (the harness may use threads; the server may not) and bind
//! `127.0.0.1:0`, so parallel tests never collide. Dropping a proxy stops it.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wire::{Frame, FRAME_LEN};

/// How often blocked proxy threads look at their stop flags.
const POLL: Duration = Duration::from_millis(20);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking proxy thread must not take the test's diagnostics down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------------

struct UdpShared {
    cut: AtomicBool,
    stop: AtomicBool,
    target: Mutex<SocketAddr>,
    /// Where the server sends from (replies go back there).
    client: Mutex<Option<SocketAddr>>,
    /// The newest datagram from the server side, as received.
    last_from_client: Mutex<Option<Vec<u8>>>,
    forwarded_up: AtomicU64,
    forwarded_down: AtomicU64,
    dropped: AtomicU64,
}

/// A UDP relay between one server and the coordinator: start the server with
/// `--coordinator <proxy.addr()>`. Datagrams from the server go to the target from the
/// proxy's own socket; the target's answers go back to wherever the server last sent from.
/// [`UdpProxy::cut`] drops everything in both directions until [`UdpProxy::heal`].
pub struct UdpProxy {
    addr: SocketAddr,
    shared: Arc<UdpShared>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpProxy {
    /// Starts relaying to `target` (the coordinator's address).
    ///
    /// # Panics
    /// If the sockets cannot be bound.
    pub fn start(target: SocketAddr) -> UdpProxy {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind udp proxy");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind udp proxy upstream");
        front.set_read_timeout(Some(POLL)).expect("timeout");
        back.set_read_timeout(Some(POLL)).expect("timeout");
        let addr = front.local_addr().expect("local addr");
        let shared = Arc::new(UdpShared {
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            target: Mutex::new(target),
            client: Mutex::new(None),
            last_from_client: Mutex::new(None),
            forwarded_up: AtomicU64::new(0),
            forwarded_down: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (front2, back2) = (front.try_clone().expect("clone"), back.try_clone().expect("clone"));
        let s = shared.clone();
        let up = std::thread::Builder::new()
            .name("udp-proxy-up".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !s.stop.load(Ordering::SeqCst) {
                    let (n, from) = match front.recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(_) => continue,
                    };
                    *lock(&s.client) = Some(from);
                    *lock(&s.last_from_client) = Some(buf[..n].to_vec());
                    if s.cut.load(Ordering::SeqCst) {
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let target = *lock(&s.target);
                    if back.send_to(&buf[..n], target).is_ok() {
                        s.forwarded_up.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .expect("spawn");
        let s = shared.clone();
        let down = std::thread::Builder::new()
            .name("udp-proxy-down".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !s.stop.load(Ordering::SeqCst) {
                    let (n, from) = match back2.recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(_) => continue,
                    };
                    if from != *lock(&s.target) {
                        continue;
                    }
                    if s.cut.load(Ordering::SeqCst) {
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let client = *lock(&s.client);
                    if let Some(client) = client {
                        if front2.send_to(&buf[..n], client).is_ok() {
                            s.forwarded_down.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .expect("spawn");
        UdpProxy { addr, shared, threads: vec![up, down] }
    }

    /// The address the server should send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram, both ways, until [`UdpProxy::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether it is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Relays to another address from now on (e.g. a coordinator restarted on a new port).
    pub fn set_target(&self, target: SocketAddr) {
        *lock(&self.shared.target) = target;
    }

    /// The newest datagram the server sent (forwarded or not), byte for byte.
    pub fn last_from_server(&self) -> Option<Vec<u8>> {
        lock(&self.shared.last_from_client).clone()
    }

    /// Datagrams forwarded to the target, forwarded back, and dropped while cut.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.shared.forwarded_up.load(Ordering::Relaxed),
            self.shared.forwarded_down.load(Ordering::Relaxed),
            self.shared.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------------

/// What a proxied connection is, judged from its first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnKind {
    /// A replication connection from the primary with this id (its first frame is a
    /// `REPL_HELLO` whose key is that id).
    Replication(String),
    /// Anything else (clients start with an ordinary request).
    Client,
}

struct ConnEntry {
    client: TcpStream,
    upstream: Option<TcpStream>,
    client_addr: SocketAddr,
    kind: ConnKind,
    closed: Arc<AtomicBool>,
}

impl ConnEntry {
    fn shutdown(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(u) = &self.upstream {
            let _ = u.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Default)]
struct TcpState {
    target: Option<SocketAddr>,
    cut: bool,
    blocked: HashSet<String>,
    drop_replies: HashSet<SocketAddr>,
    /// Bumped by `reset`: connections of older generations are closed.
    generation: u64,
    conns: Vec<ConnEntry>,
    stop: bool,
    accepted: u64,
}

impl TcpState {
    fn flowing(&self, kind: &ConnKind) -> bool {
        !self.cut
            && match kind {
                ConnKind::Replication(from) => !self.blocked.contains(from),
                ConnKind::Client => true,
            }
    }
}

struct TcpShared {
    state: Mutex<TcpState>,
    changed: Condvar,
}

impl TcpShared {
    /// Waits until `kind` may flow; false if the connection is to be closed meanwhile.
    fn wait_flowing(&self, kind: &ConnKind, generation: u64) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.stop || st.generation != generation {
                return false;
            }
            if st.flowing(kind) {
                return true;
            }
            st = self.changed.wait_timeout(st, POLL).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn alive(&self, generation: u64) -> bool {
        let st = lock(&self.state);
        !st.stop && st.generation == generation
    }
}

/// A TCP relay in front of one server: start the server with `--advertise <proxy.addr()>`
/// and tell the proxy where the server really listens with [`TcpProxy::set_target`].
/// Clients and peers dial the proxy; each accepted connection is relayed to the target.
///
/// The proxy reads the first 4096 bytes of every connection before connecting onwards:
/// a client's first request, or a primary's `REPL_HELLO`, which names the primary
/// ([`ConnKind`]). Faults:
///
/// - [`TcpProxy::cut`]: a partition. Connections stay open but nothing is forwarded either
///   way; new connections are accepted and held. [`TcpProxy::heal`] resumes everything.
/// - [`TcpProxy::block_from`]: the same, but only for replication connections from one
///   primary, so a server can be cut from one peer.
/// - [`TcpProxy::reset`]: closes every connection (both sides see EOF or a reset).
/// - [`TcpProxy::drop_replies_to`]: discards what the server sends on one client connection
///   (named by the client's local address) while still forwarding its requests.
///
/// When the target refuses (the server is down), the client's connection is closed.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<TcpShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts a proxy with no target yet: connections are held until one is set.
    ///
    /// # Panics
    /// If it cannot bind.
    pub fn start() -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp proxy");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(TcpShared { state: Mutex::new(TcpState::default()), changed: Condvar::new() });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("tcp-proxy-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let generation = {
                        let mut st = lock(&s.state);
                        if st.stop {
                            return;
                        }
                        st.accepted += 1;
                        st.generation
                    };
                    let Ok(stream) = stream else { continue };
                    let s = s.clone();
                    let _ = std::thread::Builder::new()
                        .name("tcp-proxy-conn".into())
                        .spawn(move || relay(s, stream, generation));
                }
            })
            .expect("spawn");
        TcpProxy { addr, shared, acceptor: Some(acceptor) }
    }

    /// Starts a proxy relaying to `target`.
    pub fn to(target: SocketAddr) -> TcpProxy {
        let p = TcpProxy::start();
        p.set_target(target);
        p
    }

    /// The address clients and peers should dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn update(&self, f: impl FnOnce(&mut TcpState)) {
        f(&mut lock(&self.shared.state));
        self.shared.changed.notify_all();
    }

    /// Relays new connections to `target` from now on (the server restarted on a new port).
    pub fn set_target(&self, target: SocketAddr) {
        self.update(|st| st.target = Some(target));
    }

    /// Partition: nothing moves either way on any connection until [`TcpProxy::heal`].
    pub fn cut(&self) {
        self.update(|st| st.cut = true);
    }

    /// Ends [`TcpProxy::cut`].
    pub fn heal(&self) {
        self.update(|st| st.cut = false);
    }

    /// Holds the replication connections from primary `id`, existing and new, until
    /// [`TcpProxy::unblock_from`].
    pub fn block_from(&self, id: &str) {
        self.update(|st| {
            st.blocked.insert(id.to_string());
        });
    }

    /// Ends [`TcpProxy::block_from`].
    pub fn unblock_from(&self, id: &str) {
        self.update(|st| {
            st.blocked.remove(id);
        });
    }

    /// Discards everything the server sends on the connection whose client end is `client`
    /// (the client's local address), from now on; requests are still forwarded.
    pub fn drop_replies_to(&self, client: SocketAddr) {
        self.update(|st| {
            st.drop_replies.insert(client);
        });
    }

    /// Closes every connection now open (held ones included).
    pub fn reset(&self) {
        self.update(|st| {
            st.generation += 1;
            for c in st.conns.drain(..) {
                c.shutdown();
            }
        });
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        lock(&self.shared.state).accepted
    }

    /// The open relayed connections: client address and kind.
    pub fn connections(&self) -> Vec<(SocketAddr, ConnKind)> {
        let mut st = lock(&self.shared.state);
        st.conns.retain(|c| !c.closed.load(Ordering::SeqCst));
        st.conns.iter().map(|c| (c.client_addr, c.kind.clone())).collect()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.update(|st| {
            st.stop = true;
            for c in st.conns.drain(..) {
                c.shutdown();
            }
        });
        // Wake the acceptor with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Reads exactly `buf.len()` bytes, giving up if the proxy stops or resets meanwhile.
fn read_first(shared: &TcpShared, stream: &mut TcpStream, buf: &mut [u8], generation: u64) -> bool {
    let mut have = 0;
    while have < buf.len() {
        match stream.read(&mut buf[have..]) {
            Ok(0) => return false,
            Ok(n) => have += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !shared.alive(generation) {
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn classify(first: &[u8]) -> ConnKind {
    match Frame::decode_slice(first) {
        Ok(f) if f.command == wire::cluster::REPL_HELLO && !f.is_reply() => {
            ConnKind::Replication(String::from_utf8_lossy(f.key).into_owned())
        }
        _ => ConnKind::Client,
    }
}

fn relay(shared: Arc<TcpShared>, mut client: TcpStream, generation: u64) {
    let closed = Arc::new(AtomicBool::new(false));
    let _ = client.set_nodelay(true);
    let _ = client.set_read_timeout(Some(POLL));
    let Ok(client_addr) = client.peer_addr() else { return };
    // Register at once so that `reset` closes held connections too.
    {
        let mut st = lock(&shared.state);
        if st.stop || st.generation != generation {
            return;
        }
        let Ok(c) = client.try_clone() else { return };
        st.conns.retain(|c| !c.closed.load(Ordering::SeqCst));
        st.conns.push(ConnEntry {
            client: c,
            upstream: None,
            client_addr,
            kind: ConnKind::Client,
            closed: closed.clone(),
        });
    }
    let finish = |closed: &AtomicBool, client: &TcpStream, upstream: Option<&TcpStream>| {
        closed.store(true, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        if let Some(u) = upstream {
            let _ = u.shutdown(Shutdown::Both);
        }
    };
    let mut first = vec![0u8; FRAME_LEN];
    if !read_first(&shared, &mut client, &mut first, generation) {
        finish(&closed, &client, None);
        return;
    }
    let kind = classify(&first);
    // Held while cut or blocked, and until there is a target.
    let target = loop {
        if !shared.wait_flowing(&kind, generation) {
            finish(&closed, &client, None);
            return;
        }
        let target = lock(&shared.state).target;
        match target {
            Some(t) => break t,
            None => std::thread::sleep(POLL),
        }
    };
    let upstream = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(u) => u,
        Err(_) => {
            finish(&closed, &client, None);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = upstream.set_read_timeout(Some(POLL));
    {
        let mut st = lock(&shared.state);
        if st.stop || st.generation != generation {
            drop(st);
            finish(&closed, &client, Some(&upstream));
            return;
        }
        if let Some(e) = st.conns.iter_mut().find(|c| Arc::ptr_eq(&c.closed, &closed)) {
            e.kind = kind.clone();
            e.upstream = upstream.try_clone().ok();
        }
    }
    let mut up_w = match upstream.try_clone() {
        Ok(u) => u,
        Err(_) => {
            finish(&closed, &client, Some(&upstream));
            return;
        }
    };
    if up_w.write_all(&first).is_err() {
        finish(&closed, &client, Some(&upstream));
        return;
    }
    // Server to client on a second thread; client to server here.
    let (s2, k2, c2) = (shared.clone(), kind.clone(), closed.clone());
    let (Ok(client_w), Ok(up_r)) = (client.try_clone(), upstream.try_clone()) else {
        finish(&closed, &client, Some(&upstream));
        return;
    };
    let back = std::thread::Builder::new().name("tcp-proxy-down".into()).spawn(move || {
        pump(&s2, up_r, client_w, &k2, generation, Some(client_addr), &c2);
    });
    if back.is_err() {
        finish(&closed, &client, Some(&upstream));
        return;
    }
    let (Ok(client_r), Ok(up_w)) = (client.try_clone(), upstream.try_clone()) else {
        finish(&closed, &client, Some(&upstream));
        return;
    };
    pump(&shared, client_r, up_w, &kind, generation, None, &closed);
}

/// Copies `from` to `to` while the connection may flow; on EOF, an error, a reset or a stop,
/// shuts both sockets down (which ends the other direction too). `replies_of` names the
/// client when this is the server-to-client direction (for `drop_replies_to`).
fn pump(
    shared: &TcpShared,
    mut from: TcpStream,
    mut to: TcpStream,
    kind: &ConnKind,
    generation: u64,
    replies_of: Option<SocketAddr>,
    closed: &AtomicBool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let end = |from: &TcpStream, to: &TcpStream| {
        closed.store(true, Ordering::SeqCst);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    };
    loop {
        if closed.load(Ordering::SeqCst) || !shared.wait_flowing(kind, generation) {
            return end(&from, &to);
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return end(&from, &to),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => return end(&from, &to),
        };
        // Read while flowing, but a cut may have come since: hold the bytes until it heals.
        if !shared.wait_flowing(kind, generation) {
            return end(&from, &to);
        }
        if let Some(client) = replies_of {
            if lock(&shared.state).drop_replies.contains(&client) {
                continue;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            return end(&from, &to);
        }
    }
}

/// Waits (polling) until `f` holds, up to `timeout`; whether it did.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port; each connection echoes until EOF.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn frame(command: wire::Command, key: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; FRAME_LEN];
        Frame::request(1, command, key, b"").encode(&mut out).unwrap();
        out
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    }

    /// Reads `n` bytes, or `None` if they do not all come within the read timeout.
    fn read_n(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        let mut have = 0;
        while have < n {
            match s.read(&mut buf[have..]) {
                Ok(0) => return None,
                Ok(k) => have += k,
                Err(_) => return None,
            }
        }
        Some(buf)
    }

    #[test]
    fn tcp_proxy_relays_cuts_blocks_drops_and_resets() {
        let proxy = TcpProxy::to(echo_server());
        let ping = frame(wire::Command::PING, b"");
        let mut c = connect(proxy.addr());
        c.write_all(&ping).unwrap();
        assert_eq!(read_n(&mut c, FRAME_LEN).as_deref(), Some(&ping[..]), "relays");
        let hello = frame(wire::cluster::REPL_HELLO, b"s1");
        let mut r = connect(proxy.addr());
        r.write_all(&hello).unwrap();
        assert_eq!(read_n(&mut r, FRAME_LEN).as_deref(), Some(&hello[..]));
        assert!(poll_until(Duration::from_secs(2), || proxy
            .connections()
            .iter()
            .any(|(_, k)| *k == ConnKind::Replication("s1".into()))));

        // A cut holds both connections, and new ones, until healed.
        proxy.cut();
        c.write_all(&ping).unwrap();
        assert_eq!(read_n(&mut c, FRAME_LEN), None, "nothing moves while cut");
        let mut fresh = connect(proxy.addr());
        fresh.write_all(&ping).unwrap();
        assert_eq!(read_n(&mut fresh, FRAME_LEN), None);
        proxy.heal();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        fresh.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_n(&mut c, FRAME_LEN).as_deref(), Some(&ping[..]), "held bytes resume");
        assert_eq!(read_n(&mut fresh, FRAME_LEN).as_deref(), Some(&ping[..]));

        // Blocking s1 holds only its replication connection.
        proxy.block_from("s1");
        r.write_all(&ping).unwrap();
        c.write_all(&ping).unwrap();
        assert_eq!(read_n(&mut c, FRAME_LEN).as_deref(), Some(&ping[..]), "clients still flow");
        assert_eq!(read_n(&mut r, FRAME_LEN), None, "s1's replication is held");
        proxy.unblock_from("s1");
        r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_n(&mut r, FRAME_LEN).as_deref(), Some(&ping[..]));

        // Replies to one connection are dropped; the request still reaches the server.
        proxy.drop_replies_to(c.local_addr().unwrap());
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        c.write_all(&ping).unwrap();
        assert_eq!(read_n(&mut c, FRAME_LEN), None);
        fresh.write_all(&ping).unwrap();
        assert_eq!(read_n(&mut fresh, FRAME_LEN).as_deref(), Some(&ping[..]), "others unaffected");

        // Reset closes everything.
        proxy.reset();
        let mut buf = [0u8; 16];
        fresh.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(fresh.read(&mut buf), Ok(0) | Err(_)), "reset closes");
    }

    #[test]
    fn udp_proxy_forwards_both_ways_until_cut() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let proxy = UdpProxy::start(server.local_addr().unwrap());
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 64];
        client.send_to(b"ping", proxy.addr()).unwrap();
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], proxy.addr()));
        proxy.cut();
        client.send_to(b"lost", proxy.addr()).unwrap();
        assert!(server.recv_from(&mut buf).is_err(), "cut drops");
        assert_eq!(proxy.last_from_server().as_deref(), Some(&b"lost"[..]));
        proxy.heal();
        client.send_to(b"again", proxy.addr()).unwrap();
        let (n, _) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"again");
    }
}
