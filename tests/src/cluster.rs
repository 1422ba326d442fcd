//! A replicated cluster of real processes for tests: one `tandem-coordinator` and N
//! `tandem-server`s (ids `s1`..`sN`), each server behind a [`UdpProxy`] on its way to the
//! coordinator (`--coordinator <udp proxy>`) and a [`TcpProxy`] in front of its client port
//! (`--advertise <tcp proxy>`), so any server can be cut from the coordinator, from clients
//! or from one peer, and restarted on a new port while keeping its advertised address.
//!
//! Servers are addressed by index `i` (0-based; server `i` has id `s{i+1}`).
//! [`ClusterClient`] finds the primary from the view and retries across failovers.
//! When a test panics while a [`Cluster`] is alive, its drop prints [`Cluster::diagnostics`]:
//! the view, each server's STATS and the tail of every log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wire::cluster::View;
use wire::{Command, Frame, Status};

use crate::proxy::{TcpProxy, UdpProxy};
use crate::{get_view, temp_dir, CoordinatorProcess, RawConn, Reply, ServerProcess};

/// How a [`Cluster`] is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Servers to start (ids `s1`..).
    pub servers: usize,
    /// The coordinator's `--replicas` (default: `servers`).
    pub replicas: Option<usize>,
    /// Extra flags for every server.
    pub server_args: Vec<String>,
    /// Extra flags for the coordinator.
    pub coordinator_args: Vec<String>,
    /// Run with a cluster secret (`--cluster-secret`, the same file for all).
    pub secret: bool,
    /// Backups the first view must have (default: `min(servers, replicas) - 1`).
    pub backups: Option<usize>,
    /// How long to wait for the first full view.
    pub start_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            servers: 3,
            replicas: None,
            server_args: Vec::new(),
            coordinator_args: Vec::new(),
            secret: false,
            backups: None,
            start_timeout: Duration::from_secs(20),
        }
    }
}

/// One server of a [`Cluster`] with its proxies.
pub struct Node {
    /// `s{i+1}`.
    pub id: String,
    /// The current (or last) process.
    pub process: ServerProcess,
    /// Its relay to the coordinator.
    pub udp: UdpProxy,
    /// Its relay for clients and peers: the advertised address.
    pub tcp: TcpProxy,
    /// Its current data directory.
    pub data_dir: PathBuf,
    /// Data directories used so far (1 + empty restarts).
    dirs: usize,
    running: bool,
}

/// A coordinator and N servers; see the module docs.
pub struct Cluster {
    /// The coordinator.
    pub coordinator: CoordinatorProcess,
    /// The servers, by index.
    pub nodes: Vec<Node>,
    opts: ClusterOptions,
    secret_path: Option<PathBuf>,
    // Last: removed after every process is gone.
    dir: tempfile::TempDir,
}

/// The secret written for clusters started with [`ClusterOptions::secret`].
pub const TEST_SECRET: &str = "tandem-test-cluster-secret-0123456789";

/// One line describing a view.
pub fn describe(view: &View) -> String {
    let m = |m: &wire::cluster::Member| format!("{}@{}", m.id, m.addr);
    format!(
        "view {} term {} primary={} backups=[{}] candidates=[{}]{}",
        view.num,
        view.term,
        view.primary.as_ref().map_or("-".to_string(), m),
        view.backups.iter().map(m).collect::<Vec<_>>().join(","),
        view.candidates.iter().map(m).collect::<Vec<_>>().join(","),
        if view.waiting.is_empty() { String::new() } else { format!(" waiting: {}", view.waiting) }
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Starts a coordinator and `servers` servers and waits for a view with a primary and
    /// `servers - 1` backups whose primary serves.
    pub fn start(servers: usize) -> Cluster {
        Cluster::start_with(ClusterOptions { servers, ..ClusterOptions::default() })
    }

    /// Starts a cluster as `opts` says and waits for a view with a primary and
    /// `opts.backups` backups (default: a full view) whose primary serves.
    ///
    /// # Panics
    /// If that view does not come within `opts.start_timeout`.
    pub fn start_with(opts: ClusterOptions) -> Cluster {
        let dir = temp_dir();
        let secret_path = opts.secret.then(|| {
            let p = dir.path().join("cluster-secret");
            std::fs::write(&p, TEST_SECRET).expect("write secret");
            p
        });
        let mut cargs: Vec<String> =
            vec!["--replicas".into(), opts.replicas.unwrap_or(opts.servers).to_string()];
        if let Some(p) = &secret_path {
            cargs.extend(["--cluster-secret".into(), p.display().to_string()]);
        }
        cargs.extend(opts.coordinator_args.iter().cloned());
        let cargs: Vec<&str> = cargs.iter().map(String::as_str).collect();
        let coordinator = CoordinatorProcess::start(&dir.path().join("coordinator"), &cargs);
        let mut nodes = Vec::with_capacity(opts.servers);
        for i in 0..opts.servers {
            let id = format!("s{}", i + 1);
            let udp = UdpProxy::start(coordinator.addr);
            let tcp = TcpProxy::start();
            let data_dir = dir.path().join(&id);
            let process = spawn_server(&id, &data_dir, &udp, &tcp, secret_path.as_ref(), &opts.server_args);
            nodes.push(Node { id, process, udp, tcp, data_dir, dirs: 1, running: true });
        }
        let cluster = Cluster { coordinator, nodes, opts, secret_path, dir };
        let members = cluster.opts.servers.min(cluster.opts.replicas.unwrap_or(cluster.opts.servers));
        let timeout = cluster.opts.start_timeout;
        cluster.wait_for_shape(cluster.opts.backups.unwrap_or(members - 1), timeout);
        cluster.wait_serving(timeout);
        cluster
    }

    /// The temporary directory holding every data directory and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The cluster secret file, if there is one.
    pub fn secret_path(&self) -> Option<&std::path::Path> {
        self.secret_path.as_deref()
    }

    /// Server `i`'s id.
    pub fn id(&self, i: usize) -> &str {
        &self.nodes[i].id
    }

    /// The index of the server with id `id`.
    ///
    /// # Panics
    /// If there is none.
    pub fn index(&self, id: &str) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap_or_else(|| panic!("no server {id}"))
    }

    /// Server `i`'s advertised address (its [`TcpProxy`]), which clients and peers dial.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].tcp.addr()
    }

    /// Where server `i`'s current process really listens (bypassing its proxy).
    pub fn direct_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].process.addr
    }

    /// Whether server `i` was started and not killed since.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].running
    }

    /// The coordinator's view now.
    ///
    /// # Panics
    /// If the coordinator does not answer within 2 s.
    pub fn view(&self) -> View {
        self.try_view(Duration::from_secs(2)).unwrap_or_else(|e| panic!("no view: {e}"))
    }

    /// The coordinator's view, if it answers within `timeout`.
    ///
    /// # Errors
    /// As [`get_view`].
    pub fn try_view(&self, timeout: Duration) -> std::io::Result<View> {
        get_view(self.coordinator.addr, timeout)
    }

    /// Polls the view until `pred` holds; returns that view.
    ///
    /// # Panics
    /// After `timeout`, with the last view seen (and, through the drop, the diagnostics).
    pub fn wait_for(&self, pred: impl FnMut(&View) -> bool, timeout: Duration) -> View {
        self.try_wait_for(pred, timeout)
            .unwrap_or_else(|last| panic!("the view did not get there within {timeout:?}; last seen: {last}"))
    }

    /// Polls the view until `pred` holds.
    ///
    /// # Errors
    /// When `timeout` passed: the last view seen, described.
    pub fn try_wait_for(
        &self,
        mut pred: impl FnMut(&View) -> bool,
        timeout: Duration,
    ) -> Result<View, String> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(v) = self.try_view(left.clamp(Duration::from_millis(50), Duration::from_millis(500))) {
                if pred(&v) {
                    return Ok(v);
                }
                last = Some(v);
            }
            if Instant::now() >= deadline {
                return Err(last.as_ref().map_or("none".to_string(), describe));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a view with a primary and exactly `backups` backups, the coordinator not
    /// waiting for anything.
    pub fn wait_for_shape(&self, backups: usize, timeout: Duration) -> View {
        self.wait_for(|v| v.primary.is_some() && v.backups.len() == backups && v.waiting.is_empty(), timeout)
    }

    /// Waits until the view's primary says it serves (STATS `serving:1`).
    ///
    /// # Panics
    /// After `timeout`.
    pub fn wait_serving(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(v) = self.try_view(Duration::from_millis(500)) {
                if let Some(p) = v.primary_id().map(|id| self.index(id)) {
                    if self.stat(p, "serving") == Some(1) {
                        return p;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no serving primary within {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The view's primary: its index and advertised address (waits up to 10 s for one).
    pub fn primary(&self) -> (usize, SocketAddr) {
        let v = self.wait_for(|v| v.primary.is_some(), Duration::from_secs(10));
        let i = self.index(v.primary_id().expect("a primary"));
        (i, self.addr(i))
    }

    /// The indexes of the view's backups.
    pub fn backups(&self) -> Vec<usize> {
        self.view().backups.iter().map(|b| self.index(&b.id)).collect()
    }

    /// SIGKILLs server `i` (its proxies stay: its address refuses until it restarts).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].process.kill();
        self.nodes[i].running = false;
    }

    /// Starts server `i` again (SIGKILL first if it runs) on the same data directory, with the
    /// same id, flags and advertised address (its proxy now relays to the new port).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let n = &mut self.nodes[i];
        n.process = spawn_server(
            &n.id,
            &n.data_dir,
            &n.udp,
            &n.tcp,
            self.secret_path.as_ref(),
            &self.opts.server_args,
        );
        n.running = true;
    }

    /// Like [`Cluster::restart`], but on a new, empty data directory (same id).
    pub fn restart_empty(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.dirs += 1;
        n.data_dir = self.dir.path().join(format!("{}-{}", n.id, n.dirs));
        self.restart(i);
    }

    /// SIGKILLs the coordinator.
    pub fn kill_coordinator(&mut self) {
        self.coordinator.kill();
    }

    /// Restarts the coordinator on its data directory (same port if possible; if not, every
    /// server's relay is moved to the new one).
    pub fn restart_coordinator(&mut self) {
        if self.coordinator.restart() {
            for n in &self.nodes {
                n.udp.set_target(self.coordinator.addr);
            }
        }
    }

    /// Server `i`'s STATS (asked directly, bypassing its proxy), if it answers within 1 s.
    pub fn stats(&self, i: usize) -> Option<HashMap<String, String>> {
        stats_of(self.direct_addr(i))
    }

    /// One STATS counter of server `i`, as a number.
    pub fn stat(&self, i: usize, name: &str) -> Option<u64> {
        self.stats(i)?.get(name)?.parse().ok()
    }

    /// A client that finds the primary from the view.
    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(self.coordinator.addr)
    }

    /// The view, each server's replication STATS, and the tail of every log.
    pub fn diagnostics(&self) -> String {
        let mut out = String::from("===== cluster diagnostics =====\n");
        match self.try_view(Duration::from_millis(500)) {
            Ok(v) => out += &format!("coordinator {}: {}\n", self.coordinator.addr, describe(&v)),
            Err(e) => out += &format!("coordinator {}: no view ({e})\n", self.coordinator.addr),
        }
        const KEYS: [&str; 10] = [
            "role",
            "view",
            "term",
            "last_lsn",
            "durable_lsn",
            "committed_lsn",
            "serving",
            "lease_left_ms",
            "peers",
            "coordinator_waiting",
        ];
        for (i, n) in self.nodes.iter().enumerate() {
            out += &format!(
                "{} (pid {}, {}, listens {}, advertises {}, udp relay {}{}): ",
                n.id,
                n.process.pid(),
                if n.running { "started" } else { "killed" },
                n.process.addr,
                n.tcp.addr(),
                n.udp.addr(),
                if n.udp.is_cut() { " CUT" } else { "" },
            );
            match self.stats(i) {
                Some(s) => {
                    let mut parts: Vec<String> =
                        KEYS.iter().filter_map(|k| s.get(*k).map(|v| format!("{k}={v}"))).collect();
                    let mut peers: Vec<String> = s
                        .iter()
                        .filter(|(k, _)| k.starts_with("peer_"))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    peers.sort();
                    parts.extend(peers);
                    out += &parts.join(" ");
                }
                None => out += "no STATS",
            }
            out.push('\n');
        }
        out += &format!("----- coordinator log (tail) -----\n{}\n", tail(&self.coordinator.log(), 40));
        for n in &self.nodes {
            out += &format!("----- {} log (tail) -----\n{}\n", n.id, tail(&n.process.log(), 40));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
    }
}

fn spawn_server(
    id: &str,
    data_dir: &std::path::Path,
    udp: &UdpProxy,
    tcp: &TcpProxy,
    secret: Option<&PathBuf>,
    extra: &[String],
) -> ServerProcess {
    let mut args: Vec<String> = vec![
        "--coordinator".into(),
        udp.addr().to_string(),
        "--id".into(),
        id.into(),
        "--advertise".into(),
        tcp.addr().to_string(),
    ];
    if let Some(p) = secret {
        args.extend(["--cluster-secret".into(), p.display().to_string()]);
    }
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = ServerProcess::start(data_dir, &args);
    tcp.set_target(process.addr);
    process
}

/// STATS of the server at `addr` as name → value, if it answers within 1 s.
pub fn stats_of(addr: SocketAddr) -> Option<HashMap<String, String>> {
    let mut c = RawConn::try_connect(addr, Duration::from_secs(1)).ok()?;
    let r = c.call(Frame::request(1, Command::STATS, b"", b"")).ok()?;
    if !r.is_ok() {
        return None;
    }
    Some(
        r.text()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// A fresh random 64-bit number (std only: `RandomState` is seeded randomly per process, and
/// the counter and clock make every call differ).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// A client of a cluster: asks the coordinator for the primary, sends there, and on
/// WRONG_SERVER, UNAVAILABLE, a refused or broken connection or no reply within
/// [`ClusterClient::attempt_timeout`], tries again (the same frame: a write keeps its client
/// id and request id, so the servers apply it at most once) until
/// [`ClusterClient::op_timeout`]. When the coordinator does not answer it keeps using the
/// primary it knew.
pub struct ClusterClient {
    coordinator: SocketAddr,
    /// The client id carried by writes.
    pub client_id: u64,
    next_request: u64,
    target: Option<SocketAddr>,
    last_known: Option<SocketAddr>,
    conn: Option<(SocketAddr, RawConn)>,
    /// Give up on an operation after this long (default 10 s).
    pub op_timeout: Duration,
    /// Wait this long for one reply before trying again (default 2 s).
    pub attempt_timeout: Duration,
    /// What went wrong on the last operation's failed attempts, oldest first (at most 20).
    pub trail: Vec<String>,
    /// Where the last operation was answered.
    pub answered_by: Option<SocketAddr>,
}

impl ClusterClient {
    /// A client with a random client id.
    pub fn new(coordinator: SocketAddr) -> ClusterClient {
        ClusterClient::with_client_id(coordinator, random_u64())
    }

    /// A client with the given client id (request ids start at 1).
    pub fn with_client_id(coordinator: SocketAddr, client_id: u64) -> ClusterClient {
        ClusterClient {
            coordinator,
            client_id,
            next_request: 1,
            target: None,
            last_known: None,
            conn: None,
            op_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            trail: Vec::new(),
            answered_by: None,
        }
    }

    /// A fresh request id.
    pub fn next_request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Sends one request, retried as the type docs say. Writes get this client's id and a
    /// fresh request id.
    ///
    /// # Errors
    /// After `op_timeout` without an answer: the outcome is unknown (the message says what
    /// the attempts met).
    pub fn request(
        &mut self,
        command: Command,
        key: &[u8],
        value: &[u8],
        expected: u64,
    ) -> Result<Reply, String> {
        let id = self.next_request_id();
        let client_id = if command.is_write() { self.client_id } else { 0 };
        self.request_as(command, key, value, expected, client_id, id)
    }

    /// [`ClusterClient::request`] with an explicit client id and request id (for retries).
    ///
    /// # Errors
    /// As [`ClusterClient::request`].
    pub fn request_as(
        &mut self,
        command: Command,
        key: &[u8],
        value: &[u8],
        expected: u64,
        client_id: u64,
        request_id: u64,
    ) -> Result<Reply, String> {
        let frame =
            Frame::request(request_id, command, key, value).with_param(client_id).with_timestamp(expected);
        let deadline = Instant::now() + self.op_timeout;
        let mut trail: Vec<String> = Vec::new();
        let mut repeats = 0usize;
        let mut note = |trail: &mut Vec<String>, s: String| {
            if trail.last().is_some_and(|l| l.starts_with(&s)) {
                repeats += 1;
                if let Some(l) = trail.last_mut() {
                    *l = format!("{s} (x{})", repeats + 1);
                }
                return;
            }
            repeats = 0;
            if trail.len() == 20 {
                trail.remove(0);
            }
            trail.push(s);
        };
        let pause = |d: u64| std::thread::sleep(Duration::from_millis(d));
        loop {
            let now = Instant::now();
            if now >= deadline {
                let msg = format!(
                    "{} of {:?}: no answer within {:?}; attempts: {}",
                    command.name().unwrap_or("?"),
                    String::from_utf8_lossy(key),
                    self.op_timeout,
                    trail.join("; ")
                );
                self.trail = trail;
                return Err(msg);
            }
            let target = match self.target {
                Some(t) => t,
                None => match self.lookup(deadline) {
                    Some(t) => t,
                    None => {
                        note(&mut trail, "no primary in the view".into());
                        pause(20);
                        continue;
                    }
                },
            };
            self.target = Some(target);
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let conn = match &mut self.conn {
                Some((a, c)) if *a == target => c,
                _ => match RawConn::try_connect(target, left.min(Duration::from_millis(500))) {
                    Ok(c) => &mut self.conn.insert((target, c)).1,
                    Err(e) => {
                        note(&mut trail, format!("{target}: connect: {e}"));
                        self.forget();
                        pause(20);
                        continue;
                    }
                },
            };
            let _ = conn.stream.set_read_timeout(Some(left.min(self.attempt_timeout)));
            match conn.call(frame) {
                Ok(r) if r.status == Status::WRONG_SERVER => {
                    note(&mut trail, format!("{target}: WRONG_SERVER {:?}", r.text()));
                    self.conn = None;
                    self.target = r.text().parse().ok().filter(|a| *a != target);
                    pause(10);
                }
                Ok(r) if r.status == Status::UNAVAILABLE => {
                    note(&mut trail, format!("{target}: UNAVAILABLE {:?}", r.text()));
                    // Ask the view again (the connection is kept if it names the same one).
                    self.target = None;
                    pause(20);
                }
                Ok(r) => {
                    self.trail = trail;
                    self.answered_by = Some(target);
                    self.last_known = Some(target);
                    return Ok(r);
                }
                Err(e) => {
                    note(&mut trail, format!("{target}: {e}"));
                    self.forget();
                    pause(20);
                }
            }
        }
    }

    fn forget(&mut self) {
        self.conn = None;
        self.target = None;
    }

    /// The primary's address from the view; the last known one if the coordinator does not
    /// answer; `None` if the view has no primary.
    fn lookup(&mut self, deadline: Instant) -> Option<SocketAddr> {
        let left = deadline.saturating_duration_since(Instant::now());
        match get_view(self.coordinator, left.clamp(Duration::from_millis(1), Duration::from_millis(300))) {
            Ok(v) => {
                let addr = v.primary.as_ref().and_then(|p| p.addr.parse().ok());
                if addr.is_some() {
                    self.last_known = addr;
                }
                addr
            }
            Err(_) => self.last_known,
        }
    }

    /// GET: `Ok(Some((value, version)))`, `Ok(None)` when not found.
    ///
    /// # Errors
    /// No answer in time, or a status other than OK / NOT_FOUND.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, String> {
        let r = self.request(Command::GET, key, b"", 0)?;
        match r.status {
            Status::OK => Ok(Some((r.value, r.version))),
            Status::NOT_FOUND => Ok(None),
            _ => Err(format!("GET {:?}: {r}", String::from_utf8_lossy(key))),
        }
    }

    /// PUT; the new version.
    ///
    /// # Errors
    /// No answer in time (outcome unknown), or a status other than OK.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, String> {
        self.write(Command::PUT, key, value, 0)
    }

    /// Conditional PUT: the reply, whatever its status (CONFLICT carries the current version).
    ///
    /// # Errors
    /// No answer in time.
    pub fn put_if(&mut self, key: &[u8], value: &[u8], expected: u64) -> Result<Reply, String> {
        self.request(Command::PUT, key, value, expected)
    }

    /// APPEND; the new version.
    ///
    /// # Errors
    /// As [`ClusterClient::put`].
    pub fn append(&mut self, key: &[u8], value: &[u8]) -> Result<u64, String> {
        self.write(Command::APPEND, key, value, 0)
    }

    /// DELETE: `Ok(Some(version))`, `Ok(None)` when the key was absent.
    ///
    /// # Errors
    /// As [`ClusterClient::put`].
    pub fn delete(&mut self, key: &[u8]) -> Result<Option<u64>, String> {
        let r = self.request(Command::DELETE, key, b"", 0)?;
        match r.status {
            Status::OK => Ok(Some(r.version)),
            Status::NOT_FOUND => Ok(None),
            _ => Err(format!("DELETE {:?}: {r}", String::from_utf8_lossy(key))),
        }
    }

    fn write(&mut self, command: Command, key: &[u8], value: &[u8], expected: u64) -> Result<u64, String> {
        let r = self.request(command, key, value, expected)?;
        if r.status != Status::OK {
            return Err(format!("{} {:?}: {r}", command.name().unwrap_or("?"), String::from_utf8_lossy(key)));
        }
        Ok(r.version)
    }
}
