//! Test harness: start real `tandem-server` processes on free ports, talk to them, kill
//! them (SIGKILL) or stop them (SIGTERM), restart them on the same data directory.
//!
//! Binaries are found next to the test executable (`target/<profile>/`), where
//! `cargo test` builds them; set `TANDEM_BIN_DIR` to test other builds (e.g. release).
//! Readiness is learnt from the server's `tandem-server listening on ADDR` line, never
//! from a sleep.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use client::Client;
use wire::{Frame, FrameReader, FRAME_LEN};

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
