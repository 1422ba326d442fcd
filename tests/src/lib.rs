//! Test harness: start real `tandem-server` processes on free ports, talk to them, kill
//! them (SIGKILL) or stop them (SIGTERM), restart them on the same data directory.
//!
//! Binaries are found next to the test executable (`target/<profile>/`), where
//! `cargo test` builds them; set `TANDEM_BIN_DIR` to test other builds (e.g. release).
//! Readiness is learnt from the server's `tandem-server listening on ADDR` line, never
//! from a sleep.
//!
//! Cluster tests: [`CoordinatorProcess`] runs `tandem-coordinator`, [`cluster::Cluster`]
//! a coordinator and N servers behind fault-injecting proxies ([`proxy`]), and
//! [`cluster::ClusterClient`] finds the primary and retries across failovers.

pub mod cluster;
pub mod proxy;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use client::Client;
use wire::cluster::View;
use wire::{Frame, FrameReader, Status, FRAME_LEN};

/// Path of one of the workspace's binaries.
///
/// # Panics
/// If it has not been built: run `cargo test` from the workspace root (it builds them).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("TANDEM_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent().and_then(Path::parent).expect("target directory").to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo test` from the workspace root, or `cargo build --bins` first",
        path.display()
    );
    path
}

/// A running `tandem-server` child process.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// The extra flags it was started with.
    pub args: Vec<String>,
    log_path: PathBuf,
}

/// A temporary directory that outlives server restarts; removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("tandem-test-").tempdir().expect("temp dir")
}

impl ServerProcess {
    /// Starts a server over `data_dir` with extra `args`, on a free loopback port unless
    /// `args` has its own `--listen`.
    ///
    /// # Panics
    /// If it does not report readiness within 20 s (its log is printed).
    pub fn start(data_dir: &Path, args: &[&str]) -> ServerProcess {
        Self::try_start(data_dir, args)
            .unwrap_or_else(|(status, log)| panic!("tandem-server did not start ({status}); its log:\n{log}"))
    }

    /// Like [`ServerProcess::start`], but returns the exit status and log if it fails to
    /// start (for tests of refused configurations).
    ///
    /// # Errors
    /// `(exit status or reason, log)` when no readiness line came.
    pub fn try_start(data_dir: &Path, args: &[&str]) -> Result<ServerProcess, (String, String)> {
        let mut full: Vec<String> = Vec::new();
        if !args.contains(&"--listen") {
            full.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        full.extend(args.iter().map(|s| s.to_string()));
        Self::spawn(data_dir, full)
    }

    fn spawn(data_dir: &Path, args: Vec<String>) -> Result<ServerProcess, (String, String)> {
        let log_path = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
        let mut child = Command::new(bin("tandem-server"))
            .args(&args)
            .arg("--data")
            .arg(data_dir)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn tandem-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let addr = line
                    .strip_prefix("tandem-server listening on ")
                    .and_then(|a| a.trim().parse().ok())
                    .unwrap_or_else(|| panic!("unexpected first line from tandem-server: {line:?}"));
                Ok(ServerProcess { child, addr, data_dir: data_dir.to_path_buf(), args, log_path })
            }
            Err(_) => {
                let status = match child.wait_timeout(Duration::from_secs(5)) {
                    Some(status) => status.to_string(),
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        "no readiness line within 20 s".to_string()
                    }
                };
                Err((status, read_log()))
            }
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A connected client.
    ///
    /// # Panics
    /// If the server does not accept.
    pub fn client(&self) -> Client {
        Client::connect(self.addr, Duration::from_secs(5)).expect("connect to tandem-server")
    }

    /// A raw socket to the server, for byte-level tests.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(self.addr)
    }

    /// Kills the process with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    ///
    /// # Panics
    /// If it has not exited within 20 s.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait_timeout(Duration::from_secs(20)).expect("tandem-server did not exit on SIGTERM")
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}) failed", self.child.id());
    }

    /// Kills (SIGKILL) and starts again on the same data directory and flags; the port
    /// changes.
    pub fn restart_after_kill(mut self) -> ServerProcess {
        self.kill();
        let (dir, args) = (self.data_dir.clone(), std::mem::take(&mut self.args));
        ServerProcess::spawn(&dir, args).unwrap_or_else(|(s, log)| panic!("restart failed ({s}):\n{log}"))
    }

    /// Resident memory of the server process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `Child::wait` with a deadline.
pub trait WaitTimeout {
    /// The exit status, or `None` if still running at the deadline.
    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus>;
}

impl WaitTimeout for Child {
    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A raw TCP connection speaking frames by hand, for malformed-input tests.
pub struct RawConn {
    /// The socket (blocking, with a 5 s read timeout).
    pub stream: TcpStream,
    reader: FrameReader,
}

impl RawConn {
    /// Connects.
    ///
    /// # Panics
    /// If the connection fails.
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawConn { stream, reader: FrameReader::new() }
    }

    /// Sends bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Encodes and sends one frame.
    pub fn send_frame(&mut self, frame: Frame<'_>) {
        let mut buf = [0u8; FRAME_LEN];
        frame.encode(&mut buf).expect("encode");
        self.send(&buf);
    }

    /// Reads one whole reply frame's bytes; `None` if the server closed the connection.
    pub fn recv(&mut self) -> Option<[u8; FRAME_LEN]> {
        loop {
            if let Some(frame) = self.reader.next_frame() {
                return Some(*frame);
            }
            match self.stream.read(self.reader.spare(FRAME_LEN)) {
                Ok(0) => return None,
                Ok(n) => self.reader.commit(n),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading a reply: {e}"),
            }
        }
    }

    /// Connects within `timeout`, with `timeout` as the read timeout too.
    ///
    /// # Errors
    /// The connect error.
    pub fn try_connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<RawConn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RawConn { stream, reader: FrameReader::new() })
    }

    /// The local end's address (what a proxy in front of the server sees as the client).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local addr")
    }

    /// Reads one whole frame's bytes; `Ok(None)` if the server closed the connection, an
    /// error on a timeout or any other failure.
    ///
    /// # Errors
    /// The read error (`WouldBlock`/`TimedOut` when nothing came within the read timeout).
    pub fn try_recv(&mut self) -> std::io::Result<Option<[u8; FRAME_LEN]>> {
        loop {
            if let Some(frame) = self.reader.next_frame() {
                return Ok(Some(*frame));
            }
            match self.stream.read(self.reader.spare(FRAME_LEN)) {
                Ok(0) => return Ok(None),
                Ok(n) => self.reader.commit(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `frame` and reads its reply.
    ///
    /// # Errors
    /// An I/O error, the connection closing (`UnexpectedEof`), or a reply that does not
    /// decode or does not carry the request's id (`InvalidData`).
    pub fn call(&mut self, frame: Frame<'_>) -> std::io::Result<Reply> {
        let mut buf = [0u8; FRAME_LEN];
        frame
            .encode(&mut buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        self.stream.write_all(&buf)?;
        let bytes = self
            .try_recv()?
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"))?;
        let reply = Reply::decode(&bytes)?;
        if reply.id != frame.id {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply id {} for request {}", reply.id, frame.id),
            ));
        }
        Ok(reply)
    }

    /// Whether the server closes the connection (EOF or reset) within the 5 s read
    /// timeout, discarding anything it still sends first.
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; FRAME_LEN];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A decoded reply, owning its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request id it echoes.
    pub id: u64,
    /// Its status.
    pub status: Status,
    /// The version (`timestamp`).
    pub version: u64,
    /// The value.
    pub value: Vec<u8>,
}

impl Reply {
    /// Decodes a reply frame.
    ///
    /// # Errors
    /// `InvalidData` if it is not a valid reply.
    pub fn decode(bytes: &[u8; FRAME_LEN]) -> std::io::Result<Reply> {
        let f = Frame::decode(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        if !f.is_reply() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a reply"));
        }
        Ok(Reply { id: f.id, status: f.status(), version: f.timestamp, value: f.value.to_vec() })
    }

    /// The value as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }

    /// Whether it is OK.
    pub fn is_ok(&self) -> bool {
        self.status == Status::OK
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.status.name().unwrap_or("?");
        write!(f, "{name} (version {}) {:?}", self.version, self.text())
    }
}

/// Starts a binary that announces readiness with `<prefix>ADDR` as its first stdout line;
/// stderr is appended to `log_path`. Returns the child and the address.
fn spawn_announcing(
    binary: &str,
    prefix: &str,
    args: &[String],
    log_path: &Path,
) -> Result<(Child, SocketAddr), (String, String)> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).expect("log file");
    let mut child = Command::new(bin(binary))
        .args(args)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::piped())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let read_log = || std::fs::read_to_string(log_path).unwrap_or_default();
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) => match line.strip_prefix(prefix).and_then(|a| a.trim().parse().ok()) {
            Some(addr) => Ok((child, addr)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err((format!("unexpected first line {line:?}"), read_log()))
            }
        },
        Err(_) => {
            let status = match child.wait_timeout(Duration::from_secs(5)) {
                Some(status) => status.to_string(),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    "no readiness line within 20 s".to_string()
                }
            };
            Err((status, read_log()))
        }
    }
}

/// A running `tandem-coordinator` child process (the view service, over UDP).
pub struct CoordinatorProcess {
    child: Child,
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    /// Its data directory (the persisted view; kept across restarts).
    pub data_dir: PathBuf,
    /// The extra flags it was started with (without `--listen` and `--data`).
    pub args: Vec<String>,
    log_path: PathBuf,
    running: bool,
}

impl CoordinatorProcess {
    /// Starts a coordinator over `data_dir` with extra `args`, on a free loopback port.
    ///
    /// # Panics
    /// If it does not report readiness within 20 s (its log is printed).
    pub fn start(data_dir: &Path, args: &[&str]) -> CoordinatorProcess {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let log_path = data_dir.with_extension("log");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (child, addr) = Self::spawn(data_dir, listen, &args, &log_path)
            .unwrap_or_else(|(s, log)| panic!("tandem-coordinator did not start ({s}); its log:\n{log}"));
        CoordinatorProcess { child, addr, data_dir: data_dir.to_path_buf(), args, log_path, running: true }
    }

    fn spawn(
        data_dir: &Path,
        listen: SocketAddr,
        args: &[String],
        log_path: &Path,
    ) -> Result<(Child, SocketAddr), (String, String)> {
        let mut full = vec![
            "--listen".to_string(),
            listen.to_string(),
            "--data".to_string(),
            data_dir.display().to_string(),
        ];
        full.extend(args.iter().cloned());
        spawn_announcing("tandem-coordinator", "tandem-coordinator listening on ", &full, log_path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.running = false;
    }

    /// Sends SIGTERM and waits for the exit status.
    ///
    /// # Panics
    /// If it has not exited within 20 s.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is involved.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self
            .child
            .wait_timeout(Duration::from_secs(20))
            .expect("tandem-coordinator did not exit on SIGTERM");
        self.running = false;
        status
    }

    /// Starts it again (after [`CoordinatorProcess::kill`] or [`CoordinatorProcess::terminate`];
    /// kills it first if it still runs) on the same data directory and flags, on the same
    /// port if that can be bound again, else on a new free port. Returns whether the address
    /// changed (servers that were given the old address then need a relay moved: see
    /// [`proxy::UdpProxy::set_target`]).
    ///
    /// # Panics
    /// If it does not start.
    pub fn restart(&mut self) -> bool {
        if self.running {
            self.kill();
        }
        let old = self.addr;
        let (child, addr) = match Self::spawn(&self.data_dir, old, &self.args, &self.log_path) {
            Ok(x) => x,
            Err((status, _)) => {
                eprintln!("tandem-coordinator could not listen on {old} again ({status}); taking a new port");
                let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
                Self::spawn(&self.data_dir, any, &self.args, &self.log_path).unwrap_or_else(|(s, log)| {
                    panic!("tandem-coordinator did not restart ({s}); its log:\n{log}")
                })
            }
        };
        self.child = child;
        self.addr = addr;
        self.running = true;
        addr != old
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.running && matches!(self.child.try_wait(), Ok(None))
    }

    /// Its current view (one `GET_VIEW` round trip, retried within `timeout`).
    ///
    /// # Errors
    /// As [`get_view`].
    pub fn view(&self, timeout: Duration) -> std::io::Result<View> {
        get_view(self.addr, timeout)
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the coordinator at `coordinator` for its view: `GET_VIEW` datagrams, resent every
/// 100 ms, until a matching reply arrives or `timeout` passes.
///
/// # Errors
/// `TimedOut` if no reply came.
pub fn get_view(coordinator: SocketAddr, timeout: Duration) -> std::io::Result<View> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut req = Vec::new();
        wire::cluster::encode_get_view(id, 0, &mut req);
        sock.send_to(&req, coordinator)?;
        let resend = (Instant::now() + Duration::from_millis(100)).min(deadline);
        loop {
            let left = resend.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == coordinator => {
                    if let Ok((got, view)) = wire::cluster::decode_view_reply(&buf[..n]) {
                        if got == id {
                            return Ok(view);
                        }
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break
                }
                // ICMP port unreachable (the coordinator is down) shows up as a refusal.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(resend.saturating_duration_since(Instant::now()));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no view from the coordinator at {coordinator} within {timeout:?}"),
            ));
        }
    }
}
