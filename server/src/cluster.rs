//! The replication driver: carries out the replica state machine's outputs with real sockets
//! and the real store, and feeds it what arrives. Runs inside the server's event loop; never
//! blocks (connects are non-blocking, every socket is drained until `WouldBlock`, and the
//! streams to backups are encoded in bounded chunks per iteration).
//!
//! - **Heartbeats**: one UDP socket; each heartbeat goes to every coordinator, sealed with the
//!   cluster secret when there is one; replies are accepted only from a coordinator, only for a
//!   heartbeat this process sent, newest first.
//! - **Downstream** (this server is primary): one TCP connection per backup or learner, opened
//!   by this server. The handshake (`REPL_HELLO`, preceded by `AUTH` when the peer has an auth
//!   token and there is no cluster secret) goes out as fixed 4096-byte frames, because the
//!   backup receives it on its client port; everything after it is compact. The stream is the
//!   log read back from the store from where the replica said, with a `REPL_POSITION` whenever
//!   the term changes, or a snapshot first.
//! - **Upstream** (this server is a backup): the primary's connection arrives on the client
//!   port; its `REPL_HELLO` turns it into a replication connection. Records are applied to the
//!   store in order; after each batch (and, with `--fsync always`, the group commit) one
//!   `REPL_ACK` goes back, carrying the LSN held, the newest lease grant and the data id.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::path::PathBuf;

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use rand::Rng;
use slab::Slab;
use storage::{LogCursor, Lsn, ReplicatedWrite, SnapshotCursor, StorageError, WriteMeta};
use wire::cluster::{
    self, ClientEntry, Heartbeat, Hello, HelloReply, CLIENT_ENTRIES_PER_FRAME, HEARTBEAT, REPL_ACK,
    REPL_BEACON, REPL_DELETE, REPL_HELLO, REPL_MAC, REPL_POSITION, REPL_PUT, REPL_SNAPSHOT_BEGIN,
    REPL_SNAPSHOT_CLIENTS, REPL_SNAPSHOT_END, REPL_SNAPSHOT_PUT,
};
use wire::{Command, CompactReader, Frame, Framing, Request, Status, FRAME_LEN};

use crate::conn::write_some;
use crate::coordinator::datagram;
use crate::meta::{self, NodeMeta};
use crate::node::Node;
use crate::replica::{ConnId, Output};
use crate::secret::Key;

/// Tokens of peer connections start here (client connections sit below).
pub const PEER_TOKEN_BASE: usize = 1 << 30;
/// The heartbeat socket's token.
pub const HEARTBEAT_TOKEN: Token = Token(3);

/// Above this many queued bytes to a peer, its stream pauses (the socket is not keeping up).
const PEER_HIGH_WATER: usize = 4 << 20;
/// Most bytes encoded into one peer's stream per loop iteration, so a catching-up peer never
/// holds the loop long.
const PUMP_BUDGET: usize = 2 << 20;
/// Most bytes read from one peer per event before the others get their turn.
const PEER_READ_BUDGET: usize = 4 << 20;

/// Which way a replication connection goes.
#[derive(Debug)]
enum Side {
    /// This server is the primary; the connection streams to `peer`.
    Down { peer: String },
    /// This server is a backup or learner; records arrive from its primary.
    Up,
}

/// What a downstream connection is sending.
enum Pump {
    /// Nothing yet (handshake under way).
    Idle,
    /// The log from the cursor on; `term` was last announced.
    Log { cursor: LogCursor, term: Option<u64> },
    /// A snapshot; the log from `upto + 1` follows.
    Snapshot { cursor: SnapshotCursor, begun: bool },
}

/// The MACs of one replication connection, with a cluster secret: each batch of frames a side
/// writes is preceded by a `REPL_MAC` frame (`id` = batch number, `param` = bytes covered,
/// value = HMAC of the number and the bytes) under a key derived from the secret and both
/// handshake nonces, one key per direction. The receiver acts on no frame before its batch
/// verified.
struct StreamMac {
    send: Key,
    recv: Key,
    send_seq: u64,
    recv_seq: u64,
    /// `out` is sealed up to here.
    sealed_upto: usize,
    /// Received bytes not yet verified.
    raw: Vec<u8>,
    /// The MAC header of the batch being received: (bytes covered, tag).
    pending: Option<(usize, [u8; crate::secret::MAC_LEN])>,
}

impl StreamMac {
    fn new(
        key: &Key,
        primary_nonce: u64,
        backup_nonce: u64,
        primary_side: bool,
        sealed_upto: usize,
    ) -> StreamMac {
        let down = key.derive(b"down", primary_nonce, backup_nonce);
        let up = key.derive(b"up", primary_nonce, backup_nonce);
        let (send, recv) = if primary_side { (down, up) } else { (up, down) };
        StreamMac { send, recv, send_seq: 0, recv_seq: 0, sealed_upto, raw: Vec::new(), pending: None }
    }
}

/// Most bytes one MAC may cover: a bound on what a receiver buffers before verifying.
const MAX_MAC_BATCH: usize = 8 << 20;

struct PeerConn {
    /// Unique for the process's life (slab keys are reused).
    id: ConnId,
    stream: TcpStream,
    side: Side,
    /// Down: the connect completed.
    connected: bool,
    /// Down: fixed-frame replies still expected (AUTH's, then the handshake's).
    fixed_replies: usize,
    fixed_in: Vec<u8>,
    reader: CompactReader,
    out: Vec<u8>,
    out_pos: usize,
    pump: Pump,
    /// Up: the newest beacon granted, echoed with the next ack.
    grant: u64,
    /// Up: an ack should go out.
    ack_due: bool,
    /// To be closed at the end of this round.
    dead: bool,
    /// Down: the nonce this side sent in its handshake.
    nonce: u64,
    /// With a cluster secret, once the handshake is done.
    mac: Option<StreamMac>,
}

impl PeerConn {
    fn new(id: ConnId, stream: TcpStream, side: Side, connected: bool) -> PeerConn {
        PeerConn {
            id,
            stream,
            side,
            connected,
            fixed_replies: 0,
            fixed_in: Vec::new(),
            reader: CompactReader::new(),
            out: Vec::new(),
            out_pos: 0,
            pump: Pump::Idle,
            grant: 0,
            ack_due: false,
            dead: false,
            nonce: 0,
            mac: None,
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn flush(&mut self) -> io::Result<()> {
        self.seal();
        let n = write_some(&mut self.stream, &self.out[self.out_pos..])?;
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if let Some(m) = self.mac.as_mut() {
                m.sealed_upto = 0;
            }
        } else if self.out_pos > (1 << 20) && self.out_pos * 2 > self.out.len() {
            self.out.drain(..self.out_pos);
            if let Some(m) = self.mac.as_mut() {
                m.sealed_upto -= self.out_pos;
            }
            self.out_pos = 0;
        }
        Ok(())
    }

    /// With a secret: puts a MAC frame in front of the bytes queued since the last one.
    fn seal(&mut self) {
        let Some(m) = self.mac.as_mut() else { return };
        let mut from = m.sealed_upto;
        while from < self.out.len() {
            let to = (from + MAX_MAC_BATCH).min(self.out.len());
            m.send_seq += 1;
            let tag = m.send.mac(&[&m.send_seq.to_le_bytes(), &self.out[from..to]]);
            let mut header = Vec::with_capacity(wire::HEADER_LEN + tag.len());
            let frame =
                Frame { param: (to - from) as u64, ..Frame::request(m.send_seq, REPL_MAC, b"", &tag) };
            let _ = frame.encode_compact_to(&mut header);
            let added = header.len();
            self.out.splice(from..from, header);
            from = to + added;
        }
        m.sealed_upto = self.out.len();
    }

    /// With a secret: moves every batch whose MAC verifies from `raw` into the frame reader.
    /// Returns an error for a missing or wrong MAC (the connection is then closed).
    fn unseal(&mut self) -> Result<(), String> {
        let Some(m) = self.mac.as_mut() else { return Ok(()) };
        loop {
            if m.pending.is_none() {
                let decoded = Frame::decode_compact(&m.raw).map_err(|e| format!("bad MAC frame: {e}"))?;
                let Some((frame, used)) = decoded else { return Ok(()) };
                if frame.command != REPL_MAC || frame.value.len() != crate::secret::MAC_LEN {
                    return Err(format!("expected a MAC frame, got {}", frame.command));
                }
                if frame.id != m.recv_seq + 1 {
                    return Err(format!(
                        "MAC batch {} out of sequence (expected {})",
                        frame.id,
                        m.recv_seq + 1
                    ));
                }
                let len = frame.param as usize;
                if len > MAX_MAC_BATCH {
                    return Err(format!("a MAC batch of {len} bytes"));
                }
                let mut tag = [0u8; crate::secret::MAC_LEN];
                tag.copy_from_slice(frame.value);
                m.pending = Some((len, tag));
                m.recv_seq += 1;
                m.raw.drain(..used);
            }
            let Some((len, tag)) = m.pending else { return Ok(()) };
            if m.raw.len() < len {
                return Ok(());
            }
            if !m.recv.verify(&[&m.recv_seq.to_le_bytes(), &m.raw[..len]], &tag) {
                return Err("wrong MAC on a replication batch".into());
            }
            self.reader.push(&m.raw[..len]);
            m.raw.drain(..len);
            m.pending = None;
        }
    }

    fn peer_id(&self) -> Option<&str> {
        match &self.side {
            Side::Down { peer } => Some(peer),
            Side::Up => None,
        }
    }
}

/// Configuration of a server in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Coordinator addresses (heartbeats go to each).
    pub coordinators: Vec<SocketAddr>,
    /// The server's id (`--id`); `None` = the one kept in the data directory, or a new one.
    pub id: Option<String>,
    /// The address registered with the coordinator, which peers and clients dial (`None`:
    /// the bound listen address).
    pub advertise: Option<SocketAddr>,
    /// The cluster secret.
    pub key: Option<Key>,
    /// Replica timing.
    pub replica: crate::replica::Config,
}

/// A client connection whose next frame is a replication handshake, handed over by the
/// event loop.
pub struct Handoff {
    /// Its socket.
    pub stream: TcpStream,
    /// Replies to frames before the handshake not yet sent (they go first).
    pub earlier_replies: Vec<u8>,
    /// The `REPL_HELLO` frame.
    pub hello: Box<[u8; FRAME_LEN]>,
    /// Bytes that arrived after it.
    pub rest: Vec<u8>,
}

/// What the event loop must do after the driver ran.
#[derive(Debug, Default)]
pub struct Effects {
    /// The primary stepped down: replies it holds must not be given.
    pub stepped_down: bool,
}

/// The replication side of a server.
pub struct ClusterIo {
    udp: UdpSocket,
    coordinators: Vec<SocketAddr>,
    key: Option<Key>,
    /// Sequence number of the newest heartbeat sent, and of the newest reply accepted.
    hb_seq: u64,
    reply_seq: u64,
    peers: Slab<PeerConn>,
    down: HashMap<String, usize>,
    next_conn: ConnId,
    meta: NodeMeta,
    dir: PathBuf,
    auth_token: Option<Vec<u8>>,
    scratch: Vec<u8>,
    udp_buf: Vec<u8>,
    /// Peers with unread input left after their read budget.
    ready: Vec<usize>,
    warned_at: Option<std::time::Instant>,
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64)
}

/// Why cluster mode cannot start.
#[derive(Debug)]
pub enum ClusterError {
    /// The replica metadata cannot be read or written.
    Meta(meta::MetaError),
    /// The data directory belongs to another server id.
    WrongId {
        /// The id in the directory.
        stored: String,
        /// The id asked for.
        given: String,
    },
    /// An id that is empty, too long or not printable.
    BadId(String),
    /// The heartbeat socket.
    Udp(io::Error),
    /// The store could not be emptied after an interrupted install.
    Storage(StorageError),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::Meta(e) => write!(f, "replica metadata: {e}"),
            ClusterError::WrongId { stored, given } => write!(
                f,
                "this data directory belongs to server {stored:?}, not {given:?} (start it with --id {stored}, \
                 or give the new server an empty directory)"
            ),
            ClusterError::BadId(id) => {
                write!(f, "--id {id:?}: use 1 to {} letters, digits, '-', '_' or '.'", cluster::MAX_ID_LEN)
            }
            ClusterError::Udp(e) => write!(f, "cannot open the heartbeat socket: {e}"),
            ClusterError::Storage(e) => write!(f, "cannot empty the store after an interrupted install: {e}"),
        }
    }
}

impl std::error::Error for ClusterError {}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= cluster::MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ClusterIo {
    /// Loads (or creates) the replica metadata in `dir`, starts a new incarnation, builds the
    /// replica and opens the heartbeat socket.
    ///
    /// # Errors
    /// [`ClusterError`].
    pub fn start(
        settings: ClusterSettings,
        dir: PathBuf,
        node: &mut Node,
        listen: SocketAddr,
        registry: &Registry,
        auth_token: Option<Vec<u8>>,
    ) -> Result<ClusterIo, ClusterError> {
        if let Some(id) = &settings.id {
            if !valid_id(id) {
                return Err(ClusterError::BadId(id.clone()));
            }
        }
        let mut rng = rand::rng();
        let stored = meta::load(&dir).map_err(ClusterError::Meta)?;
        let mut meta = match stored {
            Some(m) => {
                if let Some(given) = &settings.id {
                    if *given != m.id {
                        return Err(ClusterError::WrongId { stored: m.id, given: given.clone() });
                    }
                }
                m
            }
            None => {
                let id = settings.id.clone().unwrap_or_else(|| format!("s-{:08x}", rng.random::<u32>()));
                NodeMeta {
                    id,
                    incarnation: 0,
                    replica: crate::replica::Meta { data_id: rng.random::<u64>() | 1, ..Default::default() },
                }
            }
        };
        if meta.replica.installing {
            // A snapshot install was interrupted: what the store holds is a fragment. Start
            // over empty, as a new copy of the data.
            log::warn!("a snapshot install was interrupted: emptying the store; it will copy the data again");
            node.store.wipe().map_err(ClusterError::Storage)?;
            meta.replica = crate::replica::Meta { data_id: rng.random::<u64>() | 1, ..Default::default() };
        }
        meta.incarnation = (meta.incarnation + 1).max(unix_micros());
        meta::store(&dir, &meta).map_err(ClusterError::Meta)?;
        let mut cfg = settings.replica.clone();
        cfg.id = meta.id.clone();
        let advertise = settings.advertise.unwrap_or(listen);
        cfg.addr = advertise.to_string();
        let now = node.clock.now();
        let replica = crate::replica::Replica::new(
            cfg,
            meta.replica.clone(),
            meta.incarnation,
            node.store.last_lsn().0,
            now,
        );
        node.replica = Some(replica);
        let udp_ip = if listen.ip().is_unspecified() { advertise.ip() } else { listen.ip() };
        let std_udp = StdUdpSocket::bind(SocketAddr::new(udp_ip, 0)).map_err(ClusterError::Udp)?;
        std_udp.set_nonblocking(true).map_err(ClusterError::Udp)?;
        let mut udp = UdpSocket::from_std(std_udp);
        registry.register(&mut udp, HEARTBEAT_TOKEN, Interest::READABLE).map_err(ClusterError::Udp)?;
        log::info!(
            "cluster mode: id={} incarnation={} data_id={:016x} advertise={} coordinators={:?} last_lsn={}",
            meta.id,
            meta.incarnation,
            meta.replica.data_id,
            advertise,
            settings.coordinators,
            node.store.last_lsn()
        );
        Ok(ClusterIo {
            udp,
            coordinators: settings.coordinators,
            key: settings.key,
            hb_seq: unix_micros(),
            reply_seq: 0,
            peers: Slab::new(),
            down: HashMap::new(),
            next_conn: 1,
            meta,
            dir,
            auth_token,
            scratch: Vec::with_capacity(FRAME_LEN),
            udp_buf: vec![0u8; 65536],
            ready: Vec::new(),
            warned_at: None,
        })
    }

    /// Whether the cluster has a secret (handshakes are sealed).
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// The server's id.
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    fn warn_limited(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = std::time::Instant::now();
        if self.warned_at.is_none_or(|t| now.duration_since(t).as_secs() >= 1) {
            self.warned_at = Some(now);
            log::warn!("{msg}");
        }
    }

    /// Carries out everything the replica asked for, in order.
    pub fn drain(&mut self, node: &mut Node, registry: &Registry, effects: &mut Effects) {
        while let Some(out) = node.replica.as_mut().and_then(|r| r.poll_output()) {
            self.execute(out, node, registry, effects);
        }
    }

    fn execute(&mut self, out: Output, node: &mut Node, registry: &Registry, effects: &mut Effects) {
        match out {
            Output::Heartbeat(hb) => self.send_heartbeat(&hb),
            Output::Persist(m) => {
                self.meta.replica = m;
                if let Err(e) = meta::store(&self.dir, &self.meta) {
                    // Going on could break the rules that keep acknowledged writes safe.
                    log::error!("cannot persist replica metadata: {e}; stopping");
                    node.fatal = Some(format!("cannot persist replica metadata: {e}"));
                }
            }
            Output::Connect { peer, addr } => self.connect(&peer, &addr, node, registry),
            Output::Disconnect { peer } => {
                if let Some(&key) = self.down.get(&peer) {
                    self.close(key, node, registry, false);
                }
            }
            Output::Hello { peer, hello } => self.send_hello(&peer, &hello),
            Output::Stream { peer, from } => {
                if let Some(c) = self.down.get(&peer).and_then(|&k| self.peers.get_mut(k)) {
                    end_snapshot(&mut c.pump, node);
                    c.pump = Pump::Log { cursor: LogCursor::new(Lsn(from)), term: None };
                }
            }
            Output::Snapshot { peer } => {
                if let Some(c) = self.down.get(&peer).and_then(|&k| self.peers.get_mut(k)) {
                    end_snapshot(&mut c.pump, node);
                    node.stats.repl_snapshots_out += 1;
                    c.pump = Pump::Snapshot { cursor: node.store.begin_snapshot(), begun: false };
                }
            }
            Output::Beacon { peer, time, commit } => {
                if let Some(c) = self.down.get(&peer).and_then(|&k| self.peers.get_mut(k)) {
                    let frame = Frame { param: commit, ..Frame::request(time.0, REPL_BEACON, b"", b"") };
                    let _ = frame.encode_compact_to(&mut c.out);
                }
            }
            Output::CloseConn(id) => {
                if let Some(key) = self.peers.iter().find(|(_, c)| c.id == id).map(|(k, _)| k) {
                    self.close(key, node, registry, false);
                }
            }
            Output::Wipe => {
                if let Err(e) = node.store.wipe() {
                    log::error!("cannot empty the store for a snapshot: {e}; stopping");
                    node.fatal = Some(format!("cannot empty the store for a snapshot: {e}"));
                }
                node.unsynced_writes = 0;
            }
            Output::StepDown => effects.stepped_down = true,
            Output::RoleChanged(role) => log::info!("role is now {}", role.name()),
        }
    }

    fn send_heartbeat(&mut self, hb: &Heartbeat) {
        self.hb_seq += 1;
        self.scratch.clear();
        let frame = Frame {
            param: u64::from(hb.group),
            ..Frame::request(self.hb_seq, HEARTBEAT, hb.id.as_bytes(), b"")
        };
        datagram::seal(
            frame,
            hb.encode(0).into_vec(),
            self.key.as_ref(),
            Framing::Compact,
            &mut self.scratch,
        );
        for c in &self.coordinators {
            match self.udp.send_to(&self.scratch, *c) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => log::debug!("heartbeat to {c} failed: {e}"),
            }
        }
    }

    /// Reads the coordinators' replies.
    pub fn on_udp_readable(&mut self, node: &mut Node, registry: &Registry, effects: &mut Effects) {
        loop {
            let (n, from) = match self.udp.recv_from(&mut self.udp_buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("heartbeat socket: {e}");
                    return;
                }
            };
            if !self.coordinators.contains(&from) {
                node.stats.auth_rejected += 1;
                self.warn_limited(format_args!(
                    "dropping a datagram from {from}, which is not a coordinator"
                ));
                continue;
            }
            let bytes = self.udp_buf[..n].to_vec();
            let opened = datagram::open(&bytes, self.key.as_ref()).and_then(|(frame, body)| {
                if !frame.is_reply() || frame.command != HEARTBEAT || frame.status() != Status::OK {
                    return Err(datagram::SealError::Frame("not a reply to a heartbeat".into()));
                }
                Ok((frame.id, cluster::View::decode(body)?))
            });
            let (seq, view) = match opened {
                Ok(x) => x,
                Err(e) => {
                    node.stats.auth_rejected += 1;
                    self.warn_limited(format_args!("dropping a datagram from coordinator {from}: {e}"));
                    continue;
                }
            };
            // Only replies to our own heartbeats, and never one older than the newest taken:
            // a recorded reply replayed later cannot take this server back to an old view.
            if seq > self.hb_seq || seq <= self.reply_seq {
                log::debug!(
                    "ignoring a view reply for heartbeat {seq} (newest sent {}, taken {})",
                    self.hb_seq,
                    self.reply_seq
                );
                continue;
            }
            self.reply_seq = seq;
            let now = node.clock.now();
            if let Some(r) = node.replica.as_mut() {
                r.handle_view(now, view);
            }
            self.drain(node, registry, effects);
        }
    }

    fn connect(&mut self, peer: &str, addr: &str, node: &mut Node, registry: &Registry) {
        if let Some(&old) = self.down.get(peer) {
            self.close(old, node, registry, false);
        }
        let now = node.clock.now();
        let target: Option<SocketAddr> = addr.parse().ok();
        let stream = match target.map(TcpStream::connect) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                log::debug!("connecting to {peer} at {addr}: {e}");
                if let Some(r) = node.replica.as_mut() {
                    r.handle_peer_closed(now, peer);
                }
                return;
            }
            None => {
                log::warn!("peer {peer} advertises {addr:?}, which is not an IP address and port");
                if let Some(r) = node.replica.as_mut() {
                    r.handle_peer_closed(now, peer);
                }
                return;
            }
        };
        let id = self.next_conn;
        self.next_conn += 1;
        let entry = self.peers.vacant_entry();
        let key = entry.key();
        let mut conn = PeerConn::new(id, stream, Side::Down { peer: peer.to_string() }, false);
        if let Err(e) = registry.register(
            &mut conn.stream,
            Token(PEER_TOKEN_BASE + key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register the connection to {peer}: {e}");
            if let Some(r) = node.replica.as_mut() {
                r.handle_peer_closed(now, peer);
            }
            return;
        }
        entry.insert(conn);
        self.down.insert(peer.to_string(), key);
        log::debug!("connecting to peer {peer} at {addr}");
    }

    fn send_hello(&mut self, peer: &str, hello: &Hello) {
        let Some(c) = self.down.get(peer).and_then(|&k| self.peers.get_mut(k)) else { return };
        c.fixed_replies = 0;
        if let (Some(token), None) = (&self.auth_token, &self.key) {
            // Without a cluster secret the handshake rides on the client protocol's AUTH: the
            // cluster shares the token.
            let _ = Request::Auth { token }.to_frame(0).encode_to(&mut c.out);
            c.fixed_replies += 1;
        }
        let frame = Frame::request(0, REPL_HELLO, self.meta.id.as_bytes(), b"");
        datagram::seal(frame, hello.encode(0).into_vec(), self.key.as_ref(), Framing::Fixed, &mut c.out);
        c.fixed_replies += 1;
    }

    /// A client connection's first frame is `REPL_HELLO`: decides, and on acceptance turns the
    /// connection into an upstream replication connection. Returns the reply to send on the
    /// client connection if refused (the caller sends it and closes).
    pub fn accept_upstream(
        &mut self,
        handoff: Handoff,
        node: &mut Node,
        registry: &Registry,
        effects: &mut Effects,
    ) -> Result<(), (TcpStream, Vec<u8>)> {
        let Handoff { mut stream, earlier_replies, hello: hello_frame, rest } = handoff;
        let hello_frame = &*hello_frame;
        let rest = &rest[..];
        let mut reply = earlier_replies;
        reply.reserve(FRAME_LEN);
        let refuse = |status: Status, why: &str, reply: &mut Vec<u8>| {
            let _ = Frame::reply_to(0, REPL_HELLO, status, why.as_bytes()).encode_to(reply);
        };
        let frame = match Frame::decode(hello_frame) {
            Ok(f) => f,
            Err(_) => {
                refuse(Status::BAD_FRAME, "bad handshake", &mut reply);
                return Err((stream, reply));
            }
        };
        let hello =
            datagram::open_body(&frame, datagram::compact_prefix(hello_frame, &frame), self.key.as_ref())
                .and_then(|body| Ok(Hello::decode(body)?));
        let hello = match hello {
            Ok(h) => h,
            Err(e) => {
                node.stats.auth_rejected += 1;
                self.warn_limited(format_args!("refusing a replication handshake: {e}"));
                refuse(Status::UNAUTHORIZED, &e.to_string(), &mut reply);
                return Err((stream, reply));
            }
        };
        let Ok(from) = std::str::from_utf8(frame.key) else {
            refuse(Status::BAD_REQUEST, "the primary's id is not UTF-8", &mut reply);
            return Err((stream, reply));
        };
        let id = self.next_conn;
        self.next_conn += 1;
        let now = node.clock.now();
        let nonce = rand::rng().random::<u64>();
        let Some(r) = node.replica.as_mut() else {
            refuse(Status::UNKNOWN_COMMAND, "this server is not in a cluster", &mut reply);
            return Err((stream, reply));
        };
        let verdict = r.handle_hello(now, id, from, &hello, nonce);
        let body = verdict.reply.encode(0).into_vec();
        let reply_frame = Frame::reply_to(0, REPL_HELLO, verdict.status, b"");
        let reply_frame = Frame { key: self.meta.id.as_bytes(), ..reply_frame };
        datagram::seal(reply_frame, body, self.key.as_ref(), Framing::Fixed, &mut reply);
        if verdict.status != Status::OK {
            self.drain(node, registry, effects);
            return Err((stream, reply));
        }
        let entry = self.peers.vacant_entry();
        let key = entry.key();
        if let Err(e) = registry.register(
            &mut stream,
            Token(PEER_TOKEN_BASE + key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register the replication connection from {from}: {e}");
            if let Some(r) = node.replica.as_mut() {
                r.handle_conn_closed(now, id);
            }
            return Ok(());
        }
        let mut conn = PeerConn::new(id, stream, Side::Up, true);
        conn.out = reply;
        match &self.key {
            Some(key) => {
                let mut mac = StreamMac::new(key, hello.nonce, verdict.reply.nonce, false, conn.out.len());
                mac.raw.extend_from_slice(rest);
                conn.mac = Some(mac);
            }
            None => conn.reader.push(rest),
        }
        entry.insert(conn);
        self.drain(node, registry, effects);
        self.ready.push(key);
        Ok(())
    }

    /// A readiness event on a peer connection.
    pub fn on_peer_event(
        &mut self,
        key: usize,
        event: &mio::event::Event,
        node: &mut Node,
        registry: &Registry,
        effects: &mut Effects,
    ) {
        let Some(c) = self.peers.get_mut(key) else { return };
        if !c.connected && (event.is_writable() || event.is_error() || event.is_write_closed()) {
            match (c.stream.take_error(), c.stream.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    c.connected = true;
                    let _ = c.stream.set_nodelay(true);
                    let peer = c.peer_id().unwrap_or_default().to_string();
                    let now = node.clock.now();
                    let nonce = rand::rng().random::<u64>();
                    c.nonce = nonce;
                    if let Some(r) = node.replica.as_mut() {
                        r.handle_peer_connected(now, &peer, nonce);
                    }
                    self.drain(node, registry, effects);
                }
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => return,
                (Err(e), _) | (Ok(Some(e)), _) | (_, Err(e)) => {
                    log::debug!("connect to {} failed: {e}", c.peer_id().unwrap_or("?"));
                    self.close(key, node, registry, true);
                    return;
                }
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            let to_eof = event.is_read_closed() || event.is_error();
            self.read_peer(key, to_eof, node, registry, effects);
        }
        if let Some(c) = self.peers.get_mut(key) {
            if c.connected && c.pending() > 0 {
                if let Err(e) = c.flush() {
                    log::debug!("write to peer failed: {e}");
                    c.dead = true;
                }
            }
        }
        self.reap(node, registry);
    }

    /// Peers whose input was cut short by the read budget.
    pub fn service_ready(&mut self, node: &mut Node, registry: &Registry, effects: &mut Effects) {
        for key in std::mem::take(&mut self.ready) {
            self.read_peer(key, false, node, registry, effects);
        }
        self.reap(node, registry);
    }

    /// Whether there is work the loop must come back for without waiting for an event: peer
    /// input left over after a read budget, or a stream with records not yet encoded whose
    /// socket is not backed up.
    pub fn has_work(&self, last_lsn: u64) -> bool {
        !self.ready.is_empty()
            || self.peers.iter().any(|(_, c)| {
                c.connected
                    && !c.dead
                    && c.fixed_replies == 0
                    && c.pending() < PEER_HIGH_WATER
                    && match &c.pump {
                        Pump::Idle => false,
                        Pump::Log { cursor, .. } => cursor.next_lsn().0 <= last_lsn,
                        Pump::Snapshot { .. } => true,
                    }
            })
    }

    /// Reads a peer's input and handles it. A read shorter than asked means the socket is
    /// drained (mio's readiness is edge-triggered: new data brings a new event), which saves
    /// a syscall per wake-up; `to_eof` (the peer closed its side) reads on to the end instead.
    fn read_peer(
        &mut self,
        key: usize,
        to_eof: bool,
        node: &mut Node,
        registry: &Registry,
        effects: &mut Effects,
    ) {
        let mut budget = PEER_READ_BUDGET;
        loop {
            let Some(c) = self.peers.get_mut(key) else { return };
            if c.dead || !c.connected {
                return;
            }
            // During the handshake the replies are fixed frames; afterwards everything is
            // compact and is read straight into the frame reader.
            let mut asked = 64 << 10;
            let result = if c.fixed_replies > 0 {
                let mut buf = [0u8; 8192];
                asked = buf.len();
                c.stream.read(&mut buf).inspect(|&n| c.fixed_in.extend_from_slice(&buf[..n]))
            } else if let Some(m) = c.mac.as_mut() {
                let mut buf = vec![0u8; asked];
                c.stream.read(&mut buf).inspect(|&n| m.raw.extend_from_slice(&buf[..n]))
            } else {
                let room = c.reader.spare(asked);
                asked = room.len();
                let result = c.stream.read(room);
                if let Ok(n) = result {
                    c.reader.commit(n);
                }
                result
            };
            match result {
                Ok(0) => {
                    c.dead = true;
                    self.process_peer(key, node, registry, effects);
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.process_peer(key, node, registry, effects);
                    if n < asked && !to_eof {
                        return;
                    }
                    if budget == 0 {
                        self.ready.push(key);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read from peer failed: {e}");
                    c.dead = true;
                    return;
                }
            }
        }
    }

    /// Handles every whole frame buffered on a peer connection.
    fn process_peer(&mut self, key: usize, node: &mut Node, registry: &Registry, effects: &mut Effects) {
        // The handshake replies (fixed frames) first.
        loop {
            let Some(c) = self.peers.get_mut(key) else { return };
            if c.fixed_replies == 0 || c.fixed_in.len() < FRAME_LEN {
                break;
            }
            let bytes: Box<[u8; FRAME_LEN]> = match c.fixed_in[..FRAME_LEN].try_into() {
                Ok(b) => Box::new(b),
                Err(_) => return,
            };
            c.fixed_in.drain(..FRAME_LEN);
            c.fixed_replies -= 1;
            let leftover = if c.fixed_replies == 0 { std::mem::take(&mut c.fixed_in) } else { Vec::new() };
            let peer = c.peer_id().unwrap_or_default().to_string();
            let frame = match Frame::decode(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    log::warn!("peer {peer}: bad handshake reply: {e}");
                    c.dead = true;
                    return;
                }
            };
            if frame.command == Command::AUTH {
                c.reader.push(&leftover);
                if frame.status() != Status::OK {
                    log::warn!(
                        "peer {peer} refused our auth token: {}",
                        String::from_utf8_lossy(frame.value)
                    );
                    c.dead = true;
                    return;
                }
                continue;
            }
            if frame.command != REPL_HELLO || !frame.is_reply() {
                log::warn!("peer {peer}: expected the handshake reply, got {}", frame.command);
                c.dead = true;
                return;
            }
            let reply =
                datagram::open_body(&frame, datagram::compact_prefix(&bytes[..], &frame), self.key.as_ref())
                    .and_then(|body| Ok(HelloReply::decode(body)?));
            let status = frame.status();
            match reply {
                Ok(reply) => {
                    match &self.key {
                        Some(key) => {
                            let mut mac = StreamMac::new(key, c.nonce, reply.nonce, true, c.out.len());
                            mac.raw.extend_from_slice(&leftover);
                            c.mac = Some(mac);
                        }
                        None => c.reader.push(&leftover),
                    }
                    let now = node.clock.now();
                    if let Some(r) = node.replica.as_mut() {
                        r.handle_hello_reply(now, &peer, status, &reply);
                    }
                    self.drain(node, registry, effects);
                }
                Err(e) => {
                    node.stats.auth_rejected += 1;
                    log::warn!("peer {peer}: handshake reply refused ({status}): {e}");
                    if let Some(c) = self.peers.get_mut(key) {
                        c.dead = true;
                    }
                    return;
                }
            }
        }
        let Some(c) = self.peers.get_mut(key) else { return };
        if c.fixed_replies > 0 {
            return;
        }
        if let Err(why) = c.unseal() {
            node.stats.auth_rejected += 1;
            log::warn!(
                "replication connection {}: {why}; closing it",
                c.peer_id().unwrap_or("from the primary")
            );
            c.dead = true;
            return;
        }
        match c.side {
            Side::Down { .. } => self.process_acks(key, node),
            Side::Up => self.apply_upstream(key, node, registry, effects),
        }
    }

    fn process_acks(&mut self, key: usize, node: &mut Node) {
        let Some(c) = self.peers.get_mut(key) else { return };
        let Side::Down { peer } = &c.side else { return };
        let now = node.clock.now();
        loop {
            match c.reader.next_frame() {
                Ok(Some(frame)) if frame.command == REPL_ACK => {
                    if let Some(r) = node.replica.as_mut() {
                        r.handle_ack(now, peer, frame.id, frame.timestamp, frame.param);
                    }
                }
                Ok(Some(frame)) => {
                    log::warn!("peer {peer} sent {} on a replication stream; closing", frame.command);
                    c.dead = true;
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    log::warn!("peer {peer}: bad frame on the replication stream: {e}; closing");
                    c.dead = true;
                    return;
                }
            }
        }
    }

    fn apply_upstream(&mut self, key: usize, node: &mut Node, registry: &Registry, effects: &mut Effects) {
        let now = node.clock.now();
        if let Some(c) = self.peers.get(key) {
            // The records this batch overwrites, loaded together rather than one miss at a
            // time (the index compares keys through the mapping).
            crate::handler::prefetch_replicated(&node.store, c.reader.pending());
        }
        loop {
            let Some(c) = self.peers.get_mut(key) else { return };
            if c.dead {
                return;
            }
            let conn = c.id;
            let (frame, crc) = match c.reader.next_frame_with_crc() {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("bad frame from the primary: {e}; closing the replication connection");
                    c.dead = true;
                    return;
                }
            };
            let Some(r) = node.replica.as_mut() else { return };
            let result: Result<bool, String> = match frame.command {
                REPL_PUT | REPL_DELETE => {
                    if !r.accepts_records(conn) {
                        Err("records from a connection that is not this server's primary's".into())
                    } else {
                        let w = ReplicatedWrite {
                            lsn: Lsn(node.store.last_lsn().0 + 1),
                            tombstone: frame.command == REPL_DELETE,
                            key: frame.key,
                            value: frame.value,
                            timestamp: frame.timestamp,
                            meta: WriteMeta {
                                client_id: frame.param,
                                request_id: frame.id,
                                payload_crc: crate::handler::verified_payload_crc(&frame, crc),
                            },
                        };
                        match node.store.apply_replicated(&w) {
                            Ok(_) => {
                                node.unsynced_writes += 1;
                                node.stats.repl_records_in += 1;
                                Ok(true)
                            }
                            Err(e) => Err(format!("cannot apply record {}: {e}", w.lsn)),
                        }
                    }
                }
                REPL_POSITION => {
                    let next = node.store.last_lsn().0 + 1;
                    if !r.accepts_records(conn) {
                        Err("a log position from a connection that is not this server's primary's".into())
                    } else if frame.id != next {
                        Err(format!(
                            "the stream continues at LSN {} but this log ends at {}",
                            frame.id,
                            next - 1
                        ))
                    } else {
                        r.handle_position(conn, frame.id, frame.timestamp)
                            .map(|()| false)
                            .map_err(|e| e.to_string())
                    }
                }
                REPL_BEACON => {
                    if r.handle_beacon(now, conn, frame.id) {
                        c.grant = frame.id;
                        c.ack_due = true;
                    }
                    Ok(false)
                }
                REPL_SNAPSHOT_BEGIN => match cluster::decode_terms(frame.value) {
                    Ok(terms) => {
                        let data_id = rand::rng().random::<u64>() | 1;
                        let upto = frame.id;
                        r.handle_snapshot_begin(conn, upto, &terms, data_id)
                            .map(|()| false)
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(format!("bad term history: {e}")),
                },
                REPL_SNAPSHOT_PUT => {
                    if !r.accepts_snapshot(conn) {
                        Err("a snapshot record outside a snapshot".into())
                    } else {
                        node.store
                            .install_record(frame.key, frame.value, Lsn(frame.id), frame.timestamp)
                            .map(|()| false)
                            .map_err(|e| format!("cannot install a snapshot record: {e}"))
                    }
                }
                REPL_SNAPSHOT_CLIENTS => {
                    if !r.accepts_snapshot(conn) {
                        Err("snapshot clients outside a snapshot".into())
                    } else {
                        match ClientEntry::read_all(frame.value) {
                            Ok(entries) => {
                                for e in entries {
                                    let entry = storage::ClientEntry {
                                        request_id: e.request_id,
                                        lsn: Lsn(e.lsn),
                                        version: e.version,
                                    };
                                    node.store.install_client(e.client_id, entry);
                                }
                                Ok(false)
                            }
                            Err(e) => Err(format!("bad snapshot clients: {e}")),
                        }
                    }
                }
                REPL_SNAPSHOT_END => {
                    if !r.accepts_snapshot(conn) {
                        Err("a snapshot end outside a snapshot".into())
                    } else {
                        let upto = frame.id;
                        match node.store.finish_install(Lsn(upto)) {
                            Ok(()) => {
                                node.stats.repl_snapshots_in += 1;
                                r.handle_snapshot_end(conn, upto).map(|()| true).map_err(|e| e.to_string())
                            }
                            Err(e) => Err(format!("cannot finish the snapshot install: {e}")),
                        }
                    }
                }
                other => Err(format!("unexpected {other} on a replication stream")),
            };
            // Persist a new term or the install marker before anything more is applied.
            self.drain(node, registry, effects);
            let Some(c) = self.peers.get_mut(key) else { return };
            match result {
                Ok(applied) => {
                    if applied {
                        c.ack_due = true;
                    }
                }
                Err(why) => {
                    log::warn!("replication stream refused: {why}; closing it");
                    c.dead = true;
                    return;
                }
            }
            if node.fatal.is_some() {
                return;
            }
        }
        node.log_moved();
    }

    /// Backups: acknowledges what is held (after the group commit, with `--fsync always`).
    pub fn send_acks(&mut self, node: &mut Node) {
        let ready = node.ready_lsn();
        let data_id = self.meta.replica.data_id;
        for (_, c) in self.peers.iter_mut() {
            if matches!(c.side, Side::Up) && c.ack_due && !c.dead {
                let frame =
                    Frame { param: data_id, timestamp: c.grant, ..Frame::request(ready, REPL_ACK, b"", b"") };
                let _ = frame.encode_compact_to(&mut c.out);
                c.ack_due = false;
                c.grant = 0;
            }
        }
    }

    /// Primary: streams new records (or snapshot chunks) to every downstream peer, within
    /// budgets, and keeps compaction from discarding what they still need.
    pub fn pump(&mut self, node: &mut Node, registry: &Registry, effects: &mut Effects) {
        let mut gaps: Vec<String> = Vec::new();
        let no_terms = crate::replica::Terms::default();
        let terms = node.replica.as_ref().map_or(&no_terms, |r| r.terms());
        let mut pin: Option<u64> = None;
        for (_, c) in self.peers.iter_mut() {
            let Side::Down { peer } = &c.side else { continue };
            if !c.connected || c.fixed_replies > 0 || c.dead {
                continue;
            }
            let mut budget = PUMP_BUDGET;
            loop {
                if c.pending() >= PEER_HIGH_WATER || budget == 0 {
                    break;
                }
                match &mut c.pump {
                    Pump::Idle => break,
                    Pump::Log { cursor, term } => {
                        match node.store.read_log(cursor) {
                            Ok(Some(rec)) => {
                                let t = terms.term_at(rec.lsn.0);
                                if *term != Some(t) {
                                    let pos = Frame {
                                        timestamp: t,
                                        ..Frame::request(rec.lsn.0, REPL_POSITION, b"", b"")
                                    };
                                    let _ = pos.encode_compact_to(&mut c.out);
                                    *term = Some(t);
                                }
                                let command = if rec.tombstone { REPL_DELETE } else { REPL_PUT };
                                let frame = Frame {
                                    param: rec.client_id,
                                    timestamp: rec.timestamp,
                                    ..Frame::request(rec.request_id, command, rec.key, rec.value)
                                };
                                let before = c.out.len();
                                if let Err(e) = frame.encode_compact_to(&mut c.out) {
                                    log::error!("record {} cannot be sent to {peer}: {e}", rec.lsn);
                                    c.dead = true;
                                    break;
                                }
                                node.stats.repl_records_out += 1;
                                budget = budget.saturating_sub(c.out.len() - before);
                            }
                            Ok(None) => break,
                            Err(StorageError::Compacted { oldest }) => {
                                log::info!("{peer} needs the log from {} but it starts at {oldest}: sending a snapshot", cursor.next_lsn());
                                gaps.push(peer.clone());
                                c.pump = Pump::Idle;
                                break;
                            }
                            Err(e) => {
                                log::error!("reading the log for {peer}: {e}");
                                c.dead = true;
                                break;
                            }
                        }
                    }
                    Pump::Snapshot { cursor, begun } => {
                        let upto = cursor.upto().0;
                        if !*begun {
                            let mut body = Vec::new();
                            cluster::encode_terms(terms.entries(), &mut body);
                            let _ = Frame::request(upto, REPL_SNAPSHOT_BEGIN, b"", &body)
                                .encode_compact_to(&mut c.out);
                            *begun = true;
                        }
                        let out = &mut c.out;
                        let before = out.len();
                        let done = node.store.read_snapshot(cursor, budget, |r| {
                            let frame = Frame {
                                timestamp: r.version,
                                ..Frame::request(r.lsn.0.min(upto), REPL_SNAPSHOT_PUT, r.key, r.value)
                            };
                            let _ = frame.encode_compact_to(out);
                        });
                        budget = budget.saturating_sub(c.out.len() - before).max(1);
                        if done {
                            let mut chunk =
                                Vec::with_capacity(CLIENT_ENTRIES_PER_FRAME * cluster::CLIENT_ENTRY_LEN);
                            let mut n = 0;
                            for (client_id, e) in node.store.client_entries() {
                                ClientEntry {
                                    client_id,
                                    request_id: e.request_id,
                                    lsn: e.lsn.0,
                                    version: e.version,
                                }
                                .write(&mut chunk);
                                n += 1;
                                if n == CLIENT_ENTRIES_PER_FRAME {
                                    let _ = Frame::request(0, REPL_SNAPSHOT_CLIENTS, b"", &chunk)
                                        .encode_compact_to(&mut c.out);
                                    chunk.clear();
                                    n = 0;
                                }
                            }
                            if n > 0 {
                                let _ = Frame::request(0, REPL_SNAPSHOT_CLIENTS, b"", &chunk)
                                    .encode_compact_to(&mut c.out);
                            }
                            let _ = Frame::request(upto, REPL_SNAPSHOT_END, b"", b"")
                                .encode_compact_to(&mut c.out);
                            let old = std::mem::replace(
                                &mut c.pump,
                                Pump::Log { cursor: LogCursor::new(Lsn(upto + 1)), term: None },
                            );
                            if let Pump::Snapshot { cursor, .. } = old {
                                node.store.end_snapshot(cursor);
                            }
                            log::info!("snapshot to {peer} sent, complete up to LSN {upto}");
                        }
                    }
                }
            }
            let at = match &c.pump {
                Pump::Log { cursor, .. } => cursor.next_lsn().0,
                Pump::Snapshot { cursor, .. } => cursor.upto().0 + 1,
                Pump::Idle => u64::MAX,
            };
            pin = Some(pin.map_or(at, |p| p.min(at)));
        }
        for peer in gaps {
            if let Some(r) = node.replica.as_mut() {
                r.handle_stream_gap(&peer);
            }
        }
        self.drain(node, registry, effects);
        // Peers the replica knows but that are not streaming right now (reconnecting, a backup
        // restarting) will ask for the log from where they acknowledged.
        if let Some(lowest) = node.replica.as_ref().and_then(|r| r.lowest_peer_position()) {
            pin = Some(pin.map_or(lowest, |p| p.min(lowest)));
        }
        let pin = pin.filter(|&p| p != u64::MAX);
        node.store.retain_log_from(pin.map(Lsn));
    }

    /// Writes what is queued to every peer.
    pub fn flush(&mut self, node: &mut Node, registry: &Registry) {
        for (_, c) in self.peers.iter_mut() {
            if c.connected && c.pending() > 0 && !c.dead {
                if let Err(e) = c.flush() {
                    log::debug!("write to peer failed: {e}");
                    c.dead = true;
                }
            }
        }
        self.reap(node, registry);
    }

    /// Closes connections marked dead.
    fn reap(&mut self, node: &mut Node, registry: &Registry) {
        let dead: Vec<usize> = self.peers.iter().filter(|(_, c)| c.dead).map(|(k, _)| k).collect();
        for key in dead {
            self.close(key, node, registry, true);
        }
    }

    fn close(&mut self, key: usize, node: &mut Node, registry: &Registry, tell: bool) {
        let Some(mut c) = self.peers.try_remove(key) else { return };
        let _ = registry.deregister(&mut c.stream);
        end_snapshot(&mut c.pump, node);
        let now = node.clock.now();
        match &c.side {
            Side::Down { peer } => {
                if self.down.get(peer) == Some(&key) {
                    self.down.remove(peer);
                }
                log::debug!("replication connection to {peer} closed");
                if tell {
                    if let Some(r) = node.replica.as_mut() {
                        r.handle_peer_closed(now, peer);
                    }
                }
            }
            Side::Up => {
                log::debug!("replication connection from the primary closed");
                if let Some(r) = node.replica.as_mut() {
                    r.handle_conn_closed(now, c.id);
                }
            }
        }
    }
}

fn end_snapshot(pump: &mut Pump, node: &mut Node) {
    if let Pump::Snapshot { .. } = pump {
        if let Pump::Snapshot { cursor, .. } = std::mem::replace(pump, Pump::Idle) {
            node.store.end_snapshot(cursor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_pair() -> (PeerConn, PeerConn) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        let primary = PeerConn::new(1, TcpStream::from_std(a), Side::Down { peer: "s2".into() }, true);
        let backup = PeerConn::new(2, TcpStream::from_std(b), Side::Up, true);
        (primary, backup)
    }

    fn frames(c: &mut PeerConn) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Ok(Some(f)) = c.reader.next_frame() {
            ids.push(f.id);
        }
        ids
    }

    #[test]
    fn sealed_batches_arrive_only_when_their_mac_verifies() {
        let key = Key::new(b"a-long-enough-cluster-secret");
        let (mut p, mut b) = conn_pair();
        p.mac = Some(StreamMac::new(&key, 7, 9, true, 0));
        b.mac = Some(StreamMac::new(&key, 7, 9, false, 0));
        for id in 1..=3 {
            Frame::request(id, REPL_PUT, b"k", b"v").encode_compact_to(&mut p.out).unwrap();
        }
        p.seal();
        Frame::request(4, REPL_PUT, b"k", b"v").encode_compact_to(&mut p.out).unwrap();
        p.seal();
        let bytes = p.out.clone();
        // Byte by byte: nothing comes out before its batch is complete and verified.
        let mut seen = Vec::new();
        for (i, byte) in bytes.iter().enumerate() {
            b.mac.as_mut().unwrap().raw.push(*byte);
            b.unseal().unwrap();
            seen.extend(frames(&mut b));
            if i + 1 < bytes.len() {
                assert!(seen.len() <= 3, "the second batch came out before its end");
            }
        }
        assert_eq!(seen, [1, 2, 3, 4]);
        // The other direction's key, a flipped byte, or a replayed batch are refused.
        for tamper in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[tamper] ^= 1;
            let (_, mut fresh) = conn_pair();
            fresh.mac = Some(StreamMac::new(&key, 7, 9, false, 0));
            fresh.mac.as_mut().unwrap().raw.extend_from_slice(&bad);
            let ok = fresh.unseal().is_ok() && frames(&mut fresh) == [1, 2, 3, 4];
            assert!(!ok, "a flipped byte at {tamper} went through");
        }
        let (_, mut twice) = conn_pair();
        twice.mac = Some(StreamMac::new(&key, 7, 9, false, 0));
        twice.mac.as_mut().unwrap().raw.extend_from_slice(&bytes);
        twice.mac.as_mut().unwrap().raw.extend_from_slice(&bytes);
        assert!(twice.unseal().is_err(), "a replayed batch is out of sequence");
        let (_, mut wrong_dir) = conn_pair();
        wrong_dir.mac = Some(StreamMac::new(&key, 7, 9, true, 0));
        wrong_dir.mac.as_mut().unwrap().raw.extend_from_slice(&bytes);
        assert!(wrong_dir.unseal().is_err(), "each direction has its own key");
    }
}
