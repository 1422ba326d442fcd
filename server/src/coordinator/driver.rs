//! The coordinator's driver: one UDP socket, the [`ViewService`], and the view persisted in its
//! data directory before any reply announces it.
//!
//! One thread, one socket: heartbeats arrive, each is answered to the address it came from
//! with the current view; clients and tools ask for the view with `GET_VIEW`. Between
//! datagrams the service ticks, so deaths are noticed within a ping interval.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::cluster::{Heartbeat, View, GET_VIEW, HEARTBEAT};
use wire::{Flags, Frame, Framing, Status};

use super::datagram;
use super::view_service::{self, ViewService};
use crate::secret::Key;
use crate::time::Clock;

/// Name of the persisted view in the data directory.
pub const VIEW_FILE: &str = "view";
const VIEW_MAGIC: &[u8; 4] = b"TDMV";

/// Everything a coordinator needs to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// UDP address for heartbeats and view requests.
    pub listen: SocketAddr,
    /// Where the view is kept.
    pub data_dir: PathBuf,
    /// The decision rules.
    pub service: view_service::Config,
    /// The cluster secret, if any.
    pub key: Option<Key>,
}

/// Why the coordinator cannot start or go on.
#[derive(Debug)]
pub enum CoordinatorError {
    /// The data directory cannot be used.
    Data {
        /// What was being done.
        context: String,
        /// Why.
        source: io::Error,
    },
    /// Another coordinator has the data directory open.
    Locked(PathBuf),
    /// The persisted view is damaged.
    Corrupt(PathBuf),
    /// The address cannot be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

impl std::fmt::Display for CoordinatorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoordinatorError::Data { context, source } => write!(f, "{context}: {source}"),
            CoordinatorError::Locked(dir) => {
                write!(f, "data directory {} is in use by another coordinator", dir.display())
            }
            CoordinatorError::Corrupt(file) => write!(
                f,
                "the persisted view {} is damaged; restore it from a backup (starting with an empty \
                 directory forgets which servers hold the data)",
                file.display()
            ),
            CoordinatorError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
        }
    }
}

impl std::error::Error for CoordinatorError {}

fn data_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> CoordinatorError {
    let context = context.into();
    move |source| CoordinatorError::Data { context, source }
}

/// The view file: magic, length, the view's body, CRC of the body.
fn encode_view_file(view: &View) -> Vec<u8> {
    let body = view.encode(0).into_vec();
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(VIEW_MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out
}

fn decode_view_file(bytes: &[u8]) -> Option<View> {
    let rest = bytes.strip_prefix(VIEW_MAGIC)?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let body = rest.get(4..4 + len)?;
    let crc = u32::from_le_bytes(rest.get(4 + len..8 + len)?.try_into().ok()?);
    if rest.len() != 8 + len || crc != crc32fast::hash(body) {
        return None;
    }
    View::decode(body).ok()
}

/// Writes `bytes` to `dir/name` atomically and durably: temporary file, fsync, rename, fsync
/// of the directory.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Takes the exclusive lock on `dir/LOCK` for as long as the file stays open.
///
/// # Errors
/// `Ok(None)` if another process holds it.
pub fn lock_dir(dir: &Path) -> io::Result<Option<File>> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("LOCK"))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(f)),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A bound coordinator, ready to run.
pub struct Coordinator {
    socket: UdpSocket,
    local_addr: SocketAddr,
    service: ViewService,
    clock: Clock,
    key: Option<Key>,
    dir: PathBuf,
    _lock: File,
    stop: Arc<AtomicBool>,
    warnings: WarnLimit,
}

/// At most a few warnings a second, so a flood of bad datagrams cannot flood the log.
struct WarnLimit {
    window: Instant,
    count: u32,
}

impl WarnLimit {
    fn allow(&mut self) -> bool {
        if self.window.elapsed() > Duration::from_secs(1) {
            self.window = Instant::now();
            self.count = 0;
        }
        self.count += 1;
        self.count <= 10
    }
}

impl Coordinator {
    /// Opens the data directory (locking it and loading the view, if one was persisted) and
    /// binds the socket.
    ///
    /// # Errors
    /// [`CoordinatorError`].
    pub fn bind(opts: Options) -> Result<Coordinator, CoordinatorError> {
        let dir = opts.data_dir.clone();
        fs::create_dir_all(&dir).map_err(data_err(format!("create {}", dir.display())))?;
        let lock = lock_dir(&dir)
            .map_err(data_err(format!("lock {}", dir.display())))?
            .ok_or_else(|| CoordinatorError::Locked(dir.clone()))?;
        let clock = Clock::new();
        let file = dir.join(VIEW_FILE);
        let service = match fs::read(&file) {
            Ok(bytes) => {
                let mut view =
                    decode_view_file(&bytes).ok_or_else(|| CoordinatorError::Corrupt(file.clone()))?;
                view.group = opts.service.group;
                log::info!(
                    "carrying on from view={} term={} primary={} backups=[{}]",
                    view.num,
                    view.term,
                    view.primary_id().unwrap_or("-"),
                    view.backups.iter().map(|b| b.id.as_str()).collect::<Vec<_>>().join(",")
                );
                ViewService::restore(opts.service.clone(), view, clock.now())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::info!("no view persisted in {}: a new cluster", dir.display());
                ViewService::new(opts.service.clone(), clock.now())
            }
            Err(e) => return Err(data_err(format!("read {}", file.display()))(e)),
        };
        let socket = UdpSocket::bind(opts.listen)
            .map_err(|source| CoordinatorError::Bind { addr: opts.listen, source })?;
        let local_addr =
            socket.local_addr().map_err(|source| CoordinatorError::Bind { addr: opts.listen, source })?;
        log::info!(
            "listening on {local_addr} (udp), replicas={} ping_interval={:?} dead_pings={}, data in {}",
            opts.service.replicas,
            opts.service.ping_interval,
            opts.service.dead_pings,
            dir.display()
        );
        Ok(Coordinator {
            socket,
            local_addr,
            service,
            clock,
            key: opts.key,
            dir,
            _lock: lock,
            stop: Arc::new(AtomicBool::new(false)),
            warnings: WarnLimit { window: Instant::now(), count: 0 },
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Set it to stop [`Coordinator::run`] (within a ping interval).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Serves until the stop flag is set.
    ///
    /// # Errors
    /// Only if the socket itself fails.
    pub fn run(mut self) -> Result<(), CoordinatorError> {
        let mut buf = vec![0u8; 65536];
        let mut out = Vec::with_capacity(2048);
        let tick = self.service.config().ping_interval.min(Duration::from_millis(100));
        while !self.stop.load(Ordering::SeqCst) {
            let now = self.clock.now();
            let wait = self.service.next_deadline().since(now).clamp(Duration::from_millis(1), tick);
            if let Err(e) = self.socket.set_read_timeout(Some(wait)) {
                return Err(data_err("set the socket timeout")(e));
            }
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => self.handle(&buf[..n], from, &mut out),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP errors from earlier sends surface here on some systems: not fatal.
                Err(e) => log::debug!("receive failed: {e}"),
            }
            self.service.handle_tick(self.clock.now());
            self.persist();
        }
        log::info!("stopped");
        Ok(())
    }

    /// Persists the view if it changed. Returns whether replies may announce it.
    fn persist(&mut self) -> bool {
        if !self.service.needs_persist() {
            return true;
        }
        let bytes = encode_view_file(&self.service.persisted());
        match write_durably(&self.dir, VIEW_FILE, &bytes) {
            Ok(()) => {
                self.service.mark_persisted();
                true
            }
            Err(e) => {
                log::error!(
                    "cannot persist view {} to {}: {e}; not announcing it",
                    self.service.view().num,
                    self.dir.display()
                );
                false
            }
        }
    }

    fn handle(&mut self, bytes: &[u8], from: SocketAddr, out: &mut Vec<u8>) {
        let command = match Frame::decode_compact(bytes) {
            Ok(Some((frame, _))) => frame.command,
            _ => {
                if self.warnings.allow() {
                    log::warn!("dropping a datagram from {from} that is not a frame");
                }
                return;
            }
        };
        out.clear();
        match command {
            HEARTBEAT => {
                let (seq, hb) = match datagram::open(bytes, self.key.as_ref())
                    .and_then(|(f, body)| Ok((f.id, f.is_reply(), Heartbeat::decode(f.key, body)?)))
                {
                    Ok((seq, false, hb)) => (seq, hb),
                    Ok((_, true, _)) => return,
                    Err(e) => {
                        if self.warnings.allow() {
                            log::warn!("dropping a heartbeat from {from}: {e}");
                        }
                        return;
                    }
                };
                let now = self.clock.now();
                let id = hb.id.clone();
                let view = match self.service.handle_heartbeat(now, seq, hb) {
                    Ok(view) => view.clone(),
                    Err(e) => {
                        log::debug!("ignoring a heartbeat from {id} at {from}: {e:?}");
                        return;
                    }
                };
                if !self.persist() {
                    return;
                }
                let frame = Frame::reply_to(seq, HEARTBEAT, Status::OK, b"");
                datagram::seal(frame, view.encode(0).into_vec(), self.key.as_ref(), Framing::Compact, out);
            }
            GET_VIEW => {
                let Ok(Some((frame, _))) = Frame::decode_compact(bytes) else { return };
                if frame.is_reply() {
                    return;
                }
                let reply = Frame::reply_to(frame.id, GET_VIEW, Status::OK, b"");
                // Anyone may read the view; it is not sealed, since clients hold no secret.
                datagram::seal(reply, self.service.view().encode(0).into_vec(), None, Framing::Compact, out);
            }
            other => {
                if self.warnings.allow() {
                    log::warn!("dropping a datagram from {from} with command {other}");
                }
                return;
            }
        }
        if !out.is_empty() {
            if let Err(e) = self.socket.send_to(out, from) {
                log::debug!("reply to {from} failed: {e}");
            }
        }
    }
}

/// Decodes a coordinator's reply (to a heartbeat or a `GET_VIEW`): its id and view.
///
/// # Errors
/// [`datagram::SealError`] if it is not a valid reply.
pub fn decode_view_reply(bytes: &[u8], key: Option<&Key>) -> Result<(u64, View), datagram::SealError> {
    let (frame, body) = datagram::open(bytes, key)?;
    if !frame.flags.contains(Flags::REPLY) || frame.status() != Status::OK {
        return Err(datagram::SealError::Frame(format!(
            "not an OK reply: {:?} {}",
            frame.flags,
            frame.status()
        )));
    }
    Ok((frame.id, View::decode(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::cluster::Member;

    #[test]
    fn the_view_file_round_trips_and_damage_is_caught() {
        let view = View {
            num: 4,
            term: 3,
            primary: Some(Member { id: "s1".into(), addr: "127.0.0.1:1".into(), incarnation: 2, data_id: 3 }),
            ..View::default()
        };
        let bytes = encode_view_file(&view);
        assert_eq!(decode_view_file(&bytes), Some(view));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert_eq!(decode_view_file(&bad), None, "damage at {i}");
        }
        assert_eq!(decode_view_file(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn a_coordinator_answers_heartbeats_and_view_requests_and_remembers_its_view() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            service: view_service::Config { replicas: 1, ..view_service::Config::default() },
            key: None,
        };
        let coord = Coordinator::bind(opts.clone()).unwrap();
        let addr = coord.local_addr();
        let stop = coord.stop_flag();
        let thread = std::thread::spawn(move || coord.run());
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let hb = Heartbeat {
            id: "s1".into(),
            addr: "127.0.0.1:9".into(),
            incarnation: 1,
            data_id: 5,
            ..Heartbeat::default()
        };
        let mut view = View::default();
        let mut buf = [0u8; 4096];
        for seq in 1..40u64 {
            let mut out = Vec::new();
            let frame = Frame::request(seq, HEARTBEAT, b"s1", b"");
            datagram::seal(
                frame,
                Heartbeat { view: view.num, ..hb.clone() }.encode(0).into_vec(),
                None,
                Framing::Compact,
                &mut out,
            );
            sock.send_to(&out, addr).unwrap();
            let n = sock.recv(&mut buf).unwrap();
            let (id, v) = decode_view_reply(&buf[..n], None).unwrap();
            assert_eq!(id, seq);
            view = v;
            if view.num > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!((view.num, view.primary_id()), (1, Some("s1")));
        let mut out = Vec::new();
        wire::cluster::encode_get_view(9, 0, &mut out);
        sock.send_to(&out, addr).unwrap();
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(decode_view_reply(&buf[..n], None).unwrap(), (9, view.clone()));
        stop.store(true, Ordering::SeqCst);
        thread.join().unwrap().unwrap();
        // A second coordinator on the same directory carries on from view 1.
        let again = Coordinator::bind(opts).unwrap();
        assert_eq!(again.service.view().num, 1);
        assert!(matches!(
            Coordinator::bind(Options { listen: "127.0.0.1:0".parse().unwrap(), ..again_opts(&dir) }),
            Err(CoordinatorError::Locked(_))
        ));
    }

    fn again_opts(dir: &tempfile::TempDir) -> Options {
        Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            service: view_service::Config::default(),
            key: None,
        }
    }
}
