//! The mio event loop: accepts clients, reads frames, runs them through the [`Node`], commits
//! writes as a group when durability demands it, replicates them in a cluster, and writes
//! replies back once the commit point covers them.
//!
//! One thread does everything, so the store needs no locks and replies leave in request
//! order. Per iteration: poll (timeout = next deadline, zero if work is queued); note which
//! sockets are readable/writable; read each ready client connection up to a budget and
//! execute every whole frame; stream new records to backups; read acknowledgements (or, on a
//! backup, apply records); with `--fsync always`, sync the store once for the whole batch
//! (group commit); release the replies the commit point now covers, one `write` per
//! connection; then replica ticks (heartbeats, lease beacons), storage ticks and the idle
//! sweep. A reply that shows data waits for the commit point to reach what was written before
//! it: standalone that is immediate (or the group commit); in a cluster it is every backup's
//! acknowledgement.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use storage::{Durability, StorageError, Store};
use wire::{Command, Frame, Framing, Status, FRAME_LEN};

use crate::cluster::{ClusterError, ClusterIo, Effects, Handoff, HEARTBEAT_TOKEN, PEER_TOKEN_BASE};
use crate::config::{Config, ConfigError};
use crate::conn::{Conn, READ_BUDGET, READ_CHUNK};
use crate::handler::{Disposition, Replies};
use crate::node::Node;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
// Token 3 is the heartbeat socket (`cluster::HEARTBEAT_TOKEN`); 4..16 are kept. Client
// connections count up from FIRST_CONN, replication peers from `cluster::PEER_TOKEN_BASE`.
const FIRST_CONN: usize = 16;

/// How often idle connections are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most connections refused with BUSY that are kept open until the next sweep.
const REFUSED_HELD: usize = 64;
/// How long a refused connection stays open at least.
const REFUSED_LINGER: Duration = Duration::from_millis(200);
/// An idle connection's buffers are freed after this long without traffic.
const RELEASE_AFTER: Duration = Duration::from_secs(1);
/// How long shutdown waits for replies to drain to slow clients.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection's input is drained, at most, before it is closed anyway.
const LINGER: Duration = Duration::from_secs(2);
/// A closing connection whose peer sent nothing for this long is closed: nothing unread is
/// left to reset it.
const DRAIN_QUIET: Duration = Duration::from_millis(250);

/// Why the server could not start or had to stop.
#[derive(Debug)]
pub enum ServerError {
    /// The configuration is refused.
    Config(ConfigError),
    /// The storage engine failed to open or failed fatally.
    Storage(StorageError),
    /// The listen address could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Cluster mode could not start.
    Cluster(ClusterError),
    /// Replication state could not be kept safely; the server stopped.
    Fatal(String),
    /// An unexpected I/O failure of the loop itself (poll, registration).
    Io {
        /// What was being done.
        context: &'static str,
        /// Why it failed.
        source: io::Error,
    },
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Config(e) => write!(f, "{e}"),
            ServerError::Storage(e) => write!(f, "storage: {e}"),
            ServerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServerError::Cluster(e) => write!(f, "{e}"),
            ServerError::Fatal(e) => write!(f, "{e}"),
            ServerError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Config(e) => Some(e),
            ServerError::Storage(e) => Some(e),
            ServerError::Cluster(e) => Some(e),
            ServerError::Fatal(_) => None,
            ServerError::Bind { source, .. } | ServerError::Io { source, .. } => Some(source),
        }
    }
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { context, source }
}

/// Stops a running server from another thread (tests, embedding); signals do the same for
/// the binary.
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Asks the server to stop accepting, answer what is in flight, flush and return.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            log::error!("could not wake the event loop for shutdown: {e}");
        }
    }
}

/// A bound, ready-to-run server.
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    conns: Slab<Conn>,
    /// Connections that may have unread data: read them without waiting for an event.
    ready: Vec<usize>,
    /// Connections with replies waiting for the commit point.
    held: Vec<usize>,
    /// Connections refused with BUSY, kept open (unregistered) until the next sweep: closing
    /// one at once while its first request is still unread would reset it, and a reset can
    /// destroy the BUSY reply before the client reads it. At most [`REFUSED_HELD`].
    refused: VecDeque<(TcpStream, Instant)>,
    /// Where every read lands: a partial frame carried over, then one read's bytes.
    scratch_in: Vec<u8>,
    /// Where replies are encoded before going straight to a socket.
    scratch_out: Replies,
    /// Gates of the replies in `scratch_out`: (offset, LSN needed).
    scratch_gates: Vec<(usize, u64)>,
    node: Node,
    /// The replication side, in cluster mode.
    cluster: Option<ClusterIo>,
    /// What `--metrics` serves, refreshed every `metrics::REFRESH`.
    metrics: Option<crate::metrics::Snapshot>,
    config: Config,
}

fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

impl Server {
    /// Validates the configuration, opens (and recovers) the store and binds the listener.
    ///
    /// # Errors
    /// A refused configuration, a store that cannot be opened (locked, corrupt), or an
    /// address that cannot be bound.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let options = storage::Options {
            durability: config.durability,
            segment_len: config.segment_len,
            ..storage::Options::default()
        };
        let mut listener = bind_listener(config.listen, config.backlog)
            .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let metrics_listener = match config.metrics {
            Some(addr) => Some((
                addr,
                std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?,
            )),
            None => None,
        };
        let store = Store::open(&config.data_dir, options).map_err(ServerError::Storage)?;
        let poll = Poll::new().map_err(io_err("creating the poll"))?;
        let local_addr = listener.local_addr().map_err(io_err("reading the bound address"))?;
        let mut node = Node::new(store, config.durability, config.auth_token.clone());
        let cluster = match &config.cluster {
            Some(settings) => Some(
                ClusterIo::start(
                    settings.clone(),
                    config.data_dir.clone(),
                    &mut node,
                    local_addr,
                    poll.registry(),
                    config.auth_token.clone(),
                )
                .map_err(ServerError::Cluster)?,
            ),
            None => None,
        };
        let metrics = match metrics_listener {
            Some((addr, listener)) => {
                // Served from the first request on: a scrape never finds an empty snapshot.
                let snapshot = crate::metrics::Snapshot::default();
                let mut text = String::new();
                node.render_stats(&mut text);
                snapshot.set(&text);
                let bound = crate::metrics::spawn(listener, snapshot.clone())
                    .map_err(|source| ServerError::Bind { addr, source })?;
                log::info!("metrics on http://{bound}/metrics");
                Some(snapshot)
            }
            None => None,
        };
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io_err("registering the listener"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("creating the waker"))?);
        log::info!("listening on {local_addr}, data in {}", config.data_dir.display());
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals: None,
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            conns: Slab::with_capacity(64),
            ready: Vec::new(),
            held: Vec::new(),
            refused: VecDeque::new(),
            scratch_in: vec![0; FRAME_LEN + READ_CHUNK],
            scratch_out: Replies { buf: Vec::with_capacity(READ_CHUNK), framing: Framing::Fixed },
            scratch_gates: Vec::new(),
            node,
            cluster,
            metrics,
            config,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { flag: self.stop.clone(), waker: self.waker.clone() }
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown (for the binary).
    ///
    /// # Errors
    /// If the signal handlers cannot be installed.
    pub fn handle_signals(&mut self) -> Result<(), ServerError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])
            .map_err(io_err("installing signal handlers"))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(io_err("registering signals"))?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Runs until shut down by a signal or a [`ShutdownHandle`]; then stops accepting,
    /// answers what has arrived, syncs the store and returns.
    ///
    /// # Errors
    /// Only if the loop itself fails (poll errors), or in a cluster when the replica's
    /// metadata cannot be persisted; client misbehaviour never ends it.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        let mut next_metrics = Instant::now() + crate::metrics::REFRESH;
        let mut metrics_text = String::new();
        if let Some(m) = &self.metrics {
            // A scrape right after start sees figures, not an empty page.
            self.node.render_stats(&mut metrics_text);
            m.set(&metrics_text);
        }
        if self.cluster.is_some() {
            // The first heartbeat goes out at once.
            self.tick_replica();
        }
        loop {
            let now = Instant::now();
            let timeout = self.poll_timeout(now, next_sweep);
            self.poll_events(&mut events, timeout)?;
            let started = Instant::now();
            let mut effects = Effects::default();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(started),
                    SIGNALS => self.take_signals(),
                    WAKER => {}
                    HEARTBEAT_TOKEN => {
                        if let Some(c) = self.cluster.as_mut() {
                            c.on_udp_readable(&mut self.node, self.poll.registry(), &mut effects);
                        }
                    }
                    Token(t) if t >= PEER_TOKEN_BASE => {
                        if let Some(c) = self.cluster.as_mut() {
                            c.on_peer_event(
                                t - PEER_TOKEN_BASE,
                                event,
                                &mut self.node,
                                self.poll.registry(),
                                &mut effects,
                            );
                        }
                    }
                    Token(t) if t >= FIRST_CONN => self.note_event(t - FIRST_CONN, event, started),
                    Token(t) => log::debug!("event for unknown token {t}"),
                }
            }
            self.service_ready(started, &mut effects);
            self.replicate(&mut effects);
            self.commit_and_flush();
            self.after_effects(effects);
            if self.cluster.is_some() {
                self.tick_replica();
            }
            if let Err(e) = self.node.store.tick(started) {
                log::error!("storage background work failed: {e}");
            }
            if started >= next_sweep {
                self.sweep(started);
                next_sweep = started + SWEEP_INTERVAL;
            }
            if started >= next_metrics {
                if let Some(m) = &self.metrics {
                    self.node.render_stats(&mut metrics_text);
                    m.set(&metrics_text);
                }
                next_metrics = started + crate::metrics::REFRESH;
            }
            self.node.stats.loop_busy_us.record(started.elapsed().as_micros() as u64);
            if let Some(why) = self.node.fatal.take() {
                log::error!("stopping: {why}");
                return Err(ServerError::Fatal(why));
            }
            if self.stop.load(Ordering::SeqCst) {
                return self.shut_down(&mut events);
            }
        }
    }

    /// Cluster work after the client batch: apply what peers sent, stream new records to
    /// backups, and send what is queued.
    fn replicate(&mut self, effects: &mut Effects) {
        let Some(c) = self.cluster.as_mut() else { return };
        let registry = self.poll.registry();
        c.service_ready(&mut self.node, registry, effects);
        self.node.log_moved();
        c.pump(&mut self.node, registry, effects);
        c.flush(&mut self.node, registry);
    }

    /// Heartbeats, beacons and reconnects when due.
    fn tick_replica(&mut self) {
        let Some(c) = self.cluster.as_mut() else { return };
        let now = self.node.clock.now();
        let due = self.node.replica.as_ref().is_some_and(|r| now >= r.next_deadline());
        let mut effects = Effects::default();
        if due {
            if let Some(r) = self.node.replica.as_mut() {
                r.handle_tick(now);
            }
            c.drain(&mut self.node, self.poll.registry(), &mut effects);
            c.flush(&mut self.node, self.poll.registry());
        }
        self.after_effects(effects);
    }

    fn after_effects(&mut self, effects: Effects) {
        if effects.stepped_down && !self.held.is_empty() {
            // Writes behind these replies may or may not survive: the client must not be told
            // either way. A closed connection says "unknown"; it retries elsewhere.
            log::warn!("stepped down: closing {} connections whose replies were waiting", self.held.len());
            for key in std::mem::take(&mut self.held) {
                self.close(key);
            }
        }
    }

    fn poll_timeout(&self, now: Instant, next_sweep: Instant) -> Option<Duration> {
        let last = self.node.store.last_lsn().0;
        if !self.ready.is_empty() || self.cluster.as_ref().is_some_and(|c| c.has_work(last)) {
            return Some(Duration::ZERO);
        }
        let mut deadline = next_sweep;
        if let Some(store_deadline) = self.node.store.next_deadline() {
            deadline = deadline.min(store_deadline);
        }
        if let Some(r) = self.node.replica.as_ref() {
            deadline = deadline.min(self.node.clock.instant(r.next_deadline()));
        }
        Some(deadline.saturating_duration_since(now))
    }

    /// Polls, spinning first for up to `busy_poll` if configured, to skip the wake-up
    /// latency of an idle CPU.
    fn poll_events(&mut self, events: &mut Events, timeout: Option<Duration>) -> Result<(), ServerError> {
        // A primary expects its backups' acknowledgements, and its clients' next requests,
        // within tens of microseconds: spinning for them briefly costs less than sleeping and
        // being woken (on a virtual machine a wake-up is an inter-processor interrupt and a
        // hypervisor exit, ~30 us a hop, and a replicated write takes four hops). Backups do
        // not spin: on a small machine they would take the CPU the primary needs.
        let primary = self.node.replica.as_ref().is_some_and(|r| r.is_primary());
        let spin =
            if primary { self.config.busy_poll.max(self.config.ack_spin) } else { self.config.busy_poll };
        if !spin.is_zero() && timeout != Some(Duration::ZERO) {
            let until = Instant::now() + spin;
            while Instant::now() < until {
                self.poll_once(events, Some(Duration::ZERO))?;
                if !events.is_empty() {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
        }
        self.poll_once(events, timeout)
    }

    fn poll_once(&mut self, events: &mut Events, timeout: Option<Duration>) -> Result<(), ServerError> {
        match self.poll.poll(events, timeout) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                events.clear();
                Ok(())
            }
            Err(e) => Err(ServerError::Io { context: "polling", source: e }),
        }
    }

    fn take_signals(&mut self) {
        if let Some(signals) = self.signals.as_mut() {
            for signal in signals.pending() {
                log::info!("signal {signal} received: shutting down");
                self.stop.store(true, Ordering::SeqCst);
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        let Some(listener) = self.listener.as_ref() else { return };
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the pending connection stays queued in the kernel;
                    // the next readiness event or sweep retries.
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= self.config.max_connections {
                self.node.stats.connections_refused += 1;
                log::warn!("refusing {peer}: at the limit of {} connections", self.config.max_connections);
                if let Some(stream) = refuse_busy(stream) {
                    if self.refused.len() < REFUSED_HELD {
                        self.refused.push_back((stream, now));
                    }
                }
                continue;
            }
            configure_socket(&stream, &self.config);
            let entry = self.conns.vacant_entry();
            let token = Token(FIRST_CONN + entry.key());
            let mut conn = Conn::new(stream, peer, self.node.new_session(), now);
            if let Err(e) = self.poll.registry().register(
                &mut conn.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("cannot register {peer}: {e}");
                continue;
            }
            entry.insert(conn);
            self.node.stats.connections += 1;
            self.node.stats.connections_total += 1;
            log::debug!("accepted {peer}");
        }
    }

    fn note_event(&mut self, key: usize, event: &mio::event::Event, now: Instant) {
        let committed = self.node.committed();
        let Some(conn) = self.conns.get_mut(key) else {
            return; // closed earlier in this iteration
        };
        if event.is_writable() && conn.pending_out() > 0 {
            let was_backpressured = conn.is_backpressured();
            match conn.flush(committed) {
                Ok(n) => {
                    if n > 0 {
                        conn.last_active = now;
                        self.node.stats.bytes_out += n as u64;
                    }
                }
                Err(e) => {
                    log::debug!("write to {} failed: {e}", conn.peer);
                    self.close(key);
                    return;
                }
            }
            if conn.pending_out() == 0 && conn.read_closed && conn.draining.is_none() {
                self.finish(key, now);
                return;
            }
            // Reads paused by backpressure resume now: the socket may hold data that no new
            // edge will announce.
            if was_backpressured && !conn.is_backpressured() && !conn.queued && !conn.read_closed {
                conn.queued = true;
                self.ready.push(key);
            }
        }
        if event.is_read_closed() || event.is_error() {
            conn.peer_closed = true;
        }
        if (event.is_readable() || event.is_read_closed() || event.is_error()) && !conn.queued {
            conn.queued = true;
            self.ready.push(key);
        }
    }

    /// Reads and executes every ready connection, once each, within its budget.
    fn service_ready(&mut self, now: Instant, effects: &mut Effects) {
        let ready = std::mem::take(&mut self.ready);
        for &key in &ready {
            self.service(key, now, effects);
        }
        // Reuse the list's allocation next time.
        let mut ready = ready;
        ready.clear();
        if self.ready.is_empty() {
            self.ready = ready;
        }
    }

    /// Reads one connection into the shared scratch buffer, executes every whole frame in
    /// place, and sends the replies: at once when the commit point covers them, otherwise
    /// they are queued on the connection until it does.
    fn service(&mut self, key: usize, now: Instant, effects: &mut Effects) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.queued = false;
        if conn.draining.is_some() {
            if conn.discard_input(&mut self.scratch_in) {
                self.close(key);
            }
            return;
        }
        let mut budget = READ_BUDGET;
        let mut frames = 0u64;
        let mut failed = false;
        let mut upgrade: Option<(usize, usize)> = None;
        let time = self.node.clock.now();
        while !conn.read_closed && !conn.is_backpressured() {
            let fill = conn.fill(&mut self.scratch_in);
            self.node.stats.bytes_in += fill.read as u64;
            self.scratch_out.buf.clear();
            self.scratch_gates.clear();
            let filled = fill.filled;
            let (mut at, mut prefetched_to) = (0, 0);
            while at < filled {
                if at >= prefetched_to {
                    prefetched_to = at + self.node.prefetch(&self.scratch_in[at..filled], &conn.session);
                }
                let start = self.scratch_out.buf.len();
                let outcome = match conn.session.framing {
                    Framing::Fixed => {
                        let Some(bytes) = self.scratch_in[at..filled].first_chunk::<FRAME_LEN>() else {
                            break;
                        };
                        let sealed = self.cluster.as_ref().map(|c| c.has_key());
                        // A handshake needs AUTH first when the server has a token and the
                        // cluster no secret; with a secret, its MAC is what lets it in.
                        if sealed.is_some_and(|k| k || conn.session.authenticated) && is_repl_hello(bytes) {
                            // A primary's handshake: the rest of this connection is replication.
                            upgrade = Some((at, filled));
                            break;
                        }
                        at += FRAME_LEN;
                        self.node.handle_frame(bytes, &mut conn.session, &mut self.scratch_out, time)
                    }
                    Framing::Compact => {
                        let Some((outcome, used)) = self.node.handle_compact(
                            &self.scratch_in[at..filled],
                            &mut conn.session,
                            &mut self.scratch_out,
                            time,
                        ) else {
                            break;
                        };
                        at += used;
                        outcome
                    }
                };
                frames += 1;
                if outcome.needs > 0 && outcome.needs > self.node.committed() {
                    self.scratch_gates.push((start, outcome.needs));
                }
                if outcome.disposition == Disposition::Close {
                    conn.read_closed = true;
                    break;
                }
            }
            if upgrade.is_some() {
                break;
            }
            if !conn.read_closed {
                conn.keep_partial(&self.scratch_in[at..filled]);
            }
            if !self.scratch_out.buf.is_empty() {
                if self.scratch_gates.is_empty() {
                    let committed = self.node.committed();
                    match conn.send(&self.scratch_out.buf, committed) {
                        Ok(n) => self.node.stats.bytes_out += n as u64,
                        Err(e) => {
                            log::debug!("write to {} failed: {e}", conn.peer);
                            failed = true;
                            break;
                        }
                    }
                } else {
                    conn.queue(&self.scratch_out.buf, &self.scratch_gates);
                }
            }
            if fill.eof {
                // A partial frame left at EOF is never executed.
                conn.read_closed = true;
                conn.eof = true;
            }
            budget = budget.saturating_sub(fill.read);
            if fill.drained {
                break;
            }
            if budget == 0 {
                // More may be waiting that no new edge will announce: come back next time.
                conn.queued = true;
                self.ready.push(key);
                break;
            }
        }
        if frames > 0 {
            conn.last_active = now;
        }
        if let Some((at, end)) = upgrade {
            self.upgrade(key, at, end, effects);
            return;
        }
        if failed {
            self.close(key);
        } else if conn.is_held() {
            if !self.held.contains(&key) {
                self.held.push(key);
            }
            self.flush_or_close(key, now);
        } else {
            self.flush_or_close(key, now);
        }
    }

    /// Hands a client connection whose next frame (at `at` in the scratch buffer, which holds
    /// data up to `end`) is a replication handshake over to the replication driver.
    fn upgrade(&mut self, key: usize, at: usize, end: usize, effects: &mut Effects) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        self.held.retain(|&k| k != key);
        self.node.stats.connections -= 1;
        if let Err(e) = self.poll.registry().deregister(&mut conn.stream) {
            log::debug!("deregistering {}: {e}", conn.peer);
        }
        // Replies to frames before the handshake (its AUTH) go first, on the new stream.
        // (Those of this read are still in the scratch buffer.)
        let mut earlier = conn.out[conn.out_pos..].to_vec();
        earlier.extend_from_slice(&self.scratch_out.buf);
        self.scratch_out.buf.clear();
        let mut hello = Box::new([0u8; FRAME_LEN]);
        hello.copy_from_slice(&self.scratch_in[at..at + FRAME_LEN]);
        let rest = self.scratch_in[at + FRAME_LEN..end].to_vec();
        let Some(cluster) = self.cluster.as_mut() else { return };
        log::debug!("{} opens a replication stream", conn.peer);
        let handoff = Handoff { stream: conn.stream, earlier_replies: earlier, hello, rest };
        if let Err((mut stream, reply)) =
            cluster.accept_upstream(handoff, &mut self.node, self.poll.registry(), effects)
        {
            // Refused: say why, then close.
            let _ = crate::conn::write_some(&mut stream, &reply);
        }
    }

    /// Group commit (`--fsync always`): one sync makes every write of this iteration durable.
    /// Then the replies the commit point covers go out. If the sync fails, the waiting replies
    /// would promise durability that does not exist, so their connections are closed
    /// unanswered instead.
    fn commit_and_flush(&mut self) {
        if matches!(self.config.durability, Durability::Always) && self.node.unsynced_writes() > 0 {
            if let Err(e) = self.node.sync() {
                log::error!("group commit failed, closing {} connections unanswered: {e}", self.held.len());
                for key in std::mem::take(&mut self.held) {
                    self.close(key);
                }
            }
        }
        if let Some(c) = self.cluster.as_mut() {
            c.send_acks(&mut self.node);
            c.flush(&mut self.node, self.poll.registry());
        }
        self.release_held();
    }

    /// Sends held replies the commit point now covers.
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let now = Instant::now();
        let held = std::mem::take(&mut self.held);
        for &key in &held {
            self.flush_or_close(key, now);
            if self.conns.get(key).is_some_and(|c| c.is_held()) {
                self.held.push(key);
            }
        }
    }

    fn flush_or_close(&mut self, key: usize, now: Instant) {
        let committed = self.node.committed();
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.pending_out() > 0 {
            let was_backpressured = conn.is_backpressured();
            match conn.flush(committed) {
                Ok(n) => {
                    if n > 0 {
                        conn.last_active = now;
                    }
                    self.node.stats.bytes_out += n as u64;
                }
                Err(e) => {
                    log::debug!("write to {} failed: {e}", conn.peer);
                    self.close(key);
                    return;
                }
            }
            // Reads paused by backpressure resume now (replies held for the commit point, released
            // after the reads stopped): the socket may hold data that no new edge announces.
            if was_backpressured && !conn.is_backpressured() && !conn.queued && !conn.read_closed {
                conn.queued = true;
                self.ready.push(key);
            }
        }
        if conn.read_closed && conn.pending_out() == 0 {
            self.finish(key, now);
        }
    }

    /// Ends a connection whose replies are all sent: at once if the peer has closed its side,
    /// otherwise by half-closing and draining its input (bounded by the linger).
    fn finish(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.eof {
            self.close(key);
        } else if conn.draining.is_none() {
            conn.start_draining(now);
            if conn.discard_input(&mut self.scratch_in) {
                self.close(key);
            }
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            if let Err(e) = self.poll.registry().deregister(&mut conn.stream) {
                log::debug!("deregistering {}: {e}", conn.peer);
            }
            self.node.stats.connections -= 1;
            log::debug!("closed {}", conn.peer);
        }
    }

    /// Closes idle connections and frees the buffers of quiet ones.
    fn sweep(&mut self, now: Instant) {
        while self.refused.front().is_some_and(|(_, at)| now.saturating_duration_since(*at) >= REFUSED_LINGER)
        {
            if let Some((stream, _)) = self.refused.pop_front() {
                close_refused(stream);
            }
        }
        let timeout = self.config.idle_timeout;
        let mut expired = Vec::new();
        let mut drained = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            if conn.draining.is_some() {
                if conn.drain_done(now, DRAIN_QUIET, LINGER) {
                    drained.push(key);
                }
                continue;
            }
            let quiet = now.saturating_duration_since(conn.last_active);
            if timeout.is_some_and(|t| quiet >= t) && !conn.is_held() {
                expired.push(key);
            } else if quiet >= RELEASE_AFTER {
                conn.release_buffers();
            }
        }
        for key in expired {
            if let Some(conn) = self.conns.get(key) {
                log::debug!("closing idle connection {}", conn.peer);
            }
            self.node.stats.connections_timed_out += 1;
            self.close(key);
        }
        for key in drained {
            self.close(key);
        }
        // A listener that hit EMFILE gets no new edge for the connections still queued.
        self.accept(now);
    }

    /// Graceful stop: no new connections, execute what has already arrived, make it
    /// durable, deliver the replies (bounded wait), close.
    fn shut_down(mut self, events: &mut Events) -> Result<(), ServerError> {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let now = Instant::now();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        log::info!("shutting down: answering what {} connections sent", keys.len());
        for &key in &keys {
            if let Some(conn) = self.conns.get_mut(key) {
                if !conn.queued {
                    conn.queued = true;
                    self.ready.push(key);
                }
            }
        }
        // Answer everything already received (each connection until drained or paused).
        let mut rounds = 0;
        while !self.ready.is_empty() && rounds < 1000 {
            let mut effects = Effects::default();
            self.service_ready(now, &mut effects);
            self.replicate(&mut effects);
            self.commit_and_flush();
            self.after_effects(effects);
            rounds += 1;
        }
        if let Err(e) = self.node.store.sync() {
            log::error!("final sync failed: {e}");
            return Err(ServerError::Storage(e));
        }
        // Nothing more is executed: each connection ends once its replies are delivered (to
        // slow readers too, and in a cluster once backups acknowledged them), half-closed so the
        // client reads them all before it sees the end, within a bounded time.
        for (_, conn) in self.conns.iter_mut() {
            conn.read_closed = true;
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !self.conns.is_empty() && Instant::now() < deadline {
            self.poll_once(events, Some(Duration::from_millis(20)))?;
            let mut effects = Effects::default();
            for event in events.iter() {
                let Token(t) = event.token();
                if t >= PEER_TOKEN_BASE {
                    if let Some(c) = self.cluster.as_mut() {
                        c.on_peer_event(
                            t - PEER_TOKEN_BASE,
                            event,
                            &mut self.node,
                            self.poll.registry(),
                            &mut effects,
                        );
                    }
                }
            }
            self.replicate(&mut effects);
            self.commit_and_flush();
            self.after_effects(effects);
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                let draining = self.conns.get(key).is_some_and(|c| c.draining.is_some());
                if draining {
                    let now = Instant::now();
                    let done = self.conns.get_mut(key).is_some_and(|c| {
                        c.discard_input(&mut self.scratch_in) || c.drain_done(now, DRAIN_QUIET, LINGER)
                    });
                    if done {
                        self.close(key);
                    }
                } else {
                    self.flush_or_close(key, Instant::now());
                }
            }
        }
        let undelivered = self.conns.iter().filter(|(_, c)| c.pending_out() > 0).count();
        if undelivered > 0 {
            log::warn!("{undelivered} connections did not take their last replies within {DRAIN_TIMEOUT:?}");
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key);
        }
        log::info!("shut down cleanly");
        Ok(())
    }
}

/// Whether a fixed frame is a replication handshake (read without validating it; the
/// replication driver does).
fn is_repl_hello(frame: &[u8; FRAME_LEN]) -> bool {
    frame[wire::header::COMMAND_OFFSET..wire::header::FLAGS_OFFSET]
        == wire::cluster::REPL_HELLO.0.to_le_bytes()
        && frame[..3] == wire::header::MAGIC
}

/// Per-connection socket options: no Nagle delay (replies are whole frames already), and
/// the buffer sizes asked for, if any.
fn configure_socket(stream: &TcpStream, config: &Config) {
    let socket = socket2::SockRef::from(stream);
    let result = socket
        .set_tcp_nodelay(true)
        .and_then(|()| config.send_buffer.map_or(Ok(()), |n| socket.set_send_buffer_size(n)))
        .and_then(|()| config.recv_buffer.map_or(Ok(()), |n| socket.set_recv_buffer_size(n)));
    if let Err(e) = result {
        log::debug!("socket options: {e}");
    }
}

/// Tells a connection over the limit why it is closed, if its socket takes the frame at once,
/// and half-closes it; returns it if the frame went out, to be closed a little later.
fn refuse_busy(mut stream: TcpStream) -> Option<TcpStream> {
    let mut frame = [0u8; FRAME_LEN];
    let reply = Frame::reply_to(0, Command(0), Status::BUSY, b"too many connections");
    reply.encode(&mut frame).ok()?;
    match stream.write(&frame) {
        Ok(FRAME_LEN) => {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            Some(stream)
        }
        _ => None,
    }
}

/// Closes a refused connection after reading what its peer sent meanwhile (so that the close
/// does not reset it, if the peer sent nothing more).
fn close_refused(mut stream: TcpStream) {
    let mut sink = [0u8; FRAME_LEN];
    while matches!(std::io::Read::read(&mut stream, &mut sink), Ok(n) if n > 0) {}
}
