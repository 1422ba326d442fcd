//! The mio event loop: accepts clients, reads frames, runs them through the [`Handler`],
//! commits writes as a group when durability demands it, and writes replies back.
//!
//! One thread does everything, so the store needs no locks and replies leave in request
//! order. Per iteration: poll (timeout = next deadline, zero if work is queued); note which
//! connections are readable/writable; read each ready connection up to a budget and execute
//! every whole frame; with `--fsync always`, sync the store once for the whole batch before
//! any reply of it is written (group commit); write replies, one `write` per connection for
//! all of its replies; then run storage ticks and the idle sweep.

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
use wire::{Command, Frame, Status, FRAME_LEN};

use crate::config::{Config, ConfigError};
use crate::conn::{Conn, READ_BUDGET, READ_CHUNK};
use crate::handler::{Disposition, Handler};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
// Tokens 3..16 are kept for the replication listener, heartbeat socket and peers.
const FIRST_CONN: usize = 16;

/// How often idle connections are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// An idle connection's buffers are freed after this long without traffic.
const RELEASE_AFTER: Duration = Duration::from_secs(1);
/// How long shutdown waits for replies to drain to slow clients.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
            ServerError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Config(e) => Some(e),
            ServerError::Storage(e) => Some(e),
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
    /// Connections with replies held back until the group commit.
    held: Vec<usize>,
    /// Where every read lands: a partial frame carried over, then one read's bytes.
    scratch_in: Vec<u8>,
    /// Where replies are encoded before going straight to a socket.
    scratch_out: Vec<u8>,
    handler: Handler,
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
        let store = Store::open(&config.data_dir, options).map_err(ServerError::Storage)?;
        let poll = Poll::new().map_err(io_err("creating the poll"))?;
        let mut listener = bind_listener(config.listen, config.backlog)
            .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let local_addr = listener.local_addr().map_err(io_err("reading the bound address"))?;
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
            scratch_in: vec![0; FRAME_LEN + READ_CHUNK],
            scratch_out: Vec::with_capacity(READ_CHUNK),
            handler: Handler::new(store, config.auth_token.clone()),
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
    /// Only if the loop itself fails (poll errors); client misbehaviour never ends it.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            let now = Instant::now();
            let timeout = self.poll_timeout(now, next_sweep);
            self.poll_events(&mut events, timeout)?;
            let started = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(started),
                    SIGNALS => self.take_signals(),
                    WAKER => {}
                    Token(t) => self.note_event(t.wrapping_sub(FIRST_CONN), event, started),
                }
            }
            self.service_ready(started);
            self.commit_and_flush();
            if let Err(e) = self.handler.store_mut().tick(started) {
                log::error!("storage background work failed: {e}");
            }
            if started >= next_sweep {
                self.sweep(started);
                next_sweep = started + SWEEP_INTERVAL;
            }
            self.handler.stats.loop_busy_us.record(started.elapsed().as_micros() as u64);
            if self.stop.load(Ordering::SeqCst) {
                return self.shut_down(&mut events);
            }
        }
    }

    fn poll_timeout(&self, now: Instant, next_sweep: Instant) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut deadline = next_sweep;
        if let Some(store_deadline) = self.handler.store().next_deadline() {
            deadline = deadline.min(store_deadline);
        }
        Some(deadline.saturating_duration_since(now))
    }

    /// Polls, spinning first for up to `busy_poll` if configured, to skip the wake-up
    /// latency of an idle CPU.
    fn poll_events(&mut self, events: &mut Events, timeout: Option<Duration>) -> Result<(), ServerError> {
        let spin = self.config.busy_poll;
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
                self.handler.stats.connections_refused += 1;
                log::warn!("refusing {peer}: at the limit of {} connections", self.config.max_connections);
                refuse_busy(stream);
                continue;
            }
            configure_socket(&stream, &self.config);
            let entry = self.conns.vacant_entry();
            let token = Token(FIRST_CONN + entry.key());
            let mut conn = Conn::new(stream, peer, self.handler.new_session(), now);
            if let Err(e) = self.poll.registry().register(
                &mut conn.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("cannot register {peer}: {e}");
                continue;
            }
            entry.insert(conn);
            self.handler.stats.connections += 1;
            self.handler.stats.connections_total += 1;
            log::debug!("accepted {peer}");
        }
    }

    fn note_event(&mut self, key: usize, event: &mio::event::Event, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // closed earlier in this iteration
        };
        if event.is_writable() && conn.pending_out() > 0 {
            let was_backpressured = conn.is_backpressured();
            match conn.flush() {
                Ok(n) => {
                    if n > 0 {
                        conn.last_active = now;
                        self.handler.stats.bytes_out += n as u64;
                    }
                }
                Err(e) => {
                    log::debug!("write to {} failed: {e}", conn.peer);
                    self.close(key);
                    return;
                }
            }
            if conn.pending_out() == 0 && conn.read_closed {
                self.close(key);
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
    fn service_ready(&mut self, now: Instant) {
        let ready = std::mem::take(&mut self.ready);
        for &key in &ready {
            self.service(key, now);
        }
        // Reuse the list's allocation next time.
        let mut ready = ready;
        ready.clear();
        if self.ready.is_empty() {
            self.ready = ready;
        }
    }

    /// Reads one connection into the shared scratch buffer, executes every whole frame in
    /// place, and sends the replies: at once, or after the group commit with `always`.
    fn service(&mut self, key: usize, now: Instant) {
        let hold = matches!(self.config.durability, Durability::Always);
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.queued = false;
        let mut budget = READ_BUDGET;
        let mut frames = 0u64;
        let mut failed = false;
        while !conn.read_closed && !conn.is_backpressured() {
            let fill = conn.fill(&mut self.scratch_in);
            self.handler.stats.bytes_in += fill.read as u64;
            let whole = fill.filled - fill.filled % FRAME_LEN;
            // Replies go to the shared buffer and straight to the socket, unless they must
            // wait behind earlier replies or for the group commit.
            let direct = !hold && conn.pending_out() == 0;
            let out = if direct { &mut self.scratch_out } else { &mut conn.out };
            self.handler.prefetch_gets(&self.scratch_in[..whole], &conn.session);
            for chunk in self.scratch_in[..whole].chunks_exact(FRAME_LEN) {
                let Some(bytes) = chunk.first_chunk::<FRAME_LEN>() else { break };
                frames += 1;
                if self.handler.handle_frame(bytes, &mut conn.session, out) == Disposition::Close {
                    conn.read_closed = true;
                    break;
                }
            }
            if !conn.read_closed {
                conn.keep_partial(&self.scratch_in[whole..fill.filled]);
            }
            if direct && !self.scratch_out.is_empty() {
                let sent = conn.send(&self.scratch_out);
                self.scratch_out.clear();
                match sent {
                    Ok(n) => self.handler.stats.bytes_out += n as u64,
                    Err(e) => {
                        log::debug!("write to {} failed: {e}", conn.peer);
                        failed = true;
                        break;
                    }
                }
            }
            if fill.eof {
                // A partial frame left at EOF is never executed.
                conn.read_closed = true;
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
        if failed {
            self.close(key);
        } else if hold && conn.pending_out() > 0 {
            self.held.push(key);
        } else {
            self.flush_or_close(key, now);
        }
    }

    /// Group commit: one sync makes every write of this iteration durable, then the replies
    /// held for it go out. If the sync fails, those replies would promise durability that
    /// does not exist, so their connections are closed unanswered instead.
    fn commit_and_flush(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let synced = match self.handler.sync() {
            Ok(()) => true,
            Err(e) => {
                log::error!("group commit failed, closing {} connections unanswered: {e}", held.len());
                false
            }
        };
        let now = Instant::now();
        for &key in &held {
            if synced {
                self.flush_or_close(key, now);
            } else {
                self.close(key);
            }
        }
        self.held = held;
        self.held.clear();
    }

    fn flush_or_close(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.pending_out() > 0 {
            match conn.flush() {
                Ok(n) => {
                    if n > 0 {
                        conn.last_active = now;
                    }
                    self.handler.stats.bytes_out += n as u64;
                }
                Err(e) => {
                    log::debug!("write to {} failed: {e}", conn.peer);
                    self.close(key);
                    return;
                }
            }
        }
        if conn.read_closed && conn.pending_out() == 0 {
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            if let Err(e) = self.poll.registry().deregister(&mut conn.stream) {
                log::debug!("deregistering {}: {e}", conn.peer);
            }
            self.handler.stats.connections -= 1;
            log::debug!("closed {}", conn.peer);
        }
    }

    /// Closes idle connections and frees the buffers of quiet ones.
    fn sweep(&mut self, now: Instant) {
        let timeout = self.config.idle_timeout;
        let mut expired = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            let quiet = now.saturating_duration_since(conn.last_active);
            if timeout.is_some_and(|t| quiet >= t) {
                expired.push(key);
            } else if quiet >= RELEASE_AFTER {
                conn.release_buffers();
            }
        }
        for key in expired {
            if let Some(conn) = self.conns.get(key) {
                log::debug!("closing idle connection {}", conn.peer);
            }
            self.handler.stats.connections_timed_out += 1;
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
            self.service_ready(now);
            self.commit_and_flush();
            rounds += 1;
        }
        if let Err(e) = self.handler.store_mut().sync() {
            log::error!("final sync failed: {e}");
            return Err(ServerError::Storage(e));
        }
        // Deliver replies still queued for slow readers, for a bounded time.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.conns.iter().any(|(_, c)| c.pending_out() > 0) && Instant::now() < deadline {
            self.poll_once(events, Some(Duration::from_millis(50)))?;
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.flush_or_close(key, Instant::now());
            }
        }
        let undelivered = self.conns.iter().filter(|(_, c)| c.pending_out() > 0).count();
        if undelivered > 0 {
            log::warn!("{undelivered} connections did not take their last replies within {DRAIN_TIMEOUT:?}");
        }
        log::info!("shut down cleanly");
        Ok(())
    }
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

/// Tells a connection over the limit why it is closed, if its socket takes the frame at once.
fn refuse_busy(mut stream: TcpStream) {
    let mut frame = [0u8; FRAME_LEN];
    let reply = Frame::reply_to(0, Command(0), Status::BUSY, b"too many connections");
    if reply.encode(&mut frame).is_ok() {
        let _ = stream.write(&frame);
    }
}
