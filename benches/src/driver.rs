//! Runs the phases of a run: a [`Runner`] probes the server, starts one worker thread per
//! `--threads`, each with a mio poll and its share of the connections, and merges what the
//! threads measured into one [`PhaseResult`] per phase.
//!
//! Phases are the optional prefill, then the tests in order. All threads start a phase
//! together (a barrier) and each ends it on its own once it has sent what it should and
//! every reply is in, or its requests have timed out.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Poll, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::{Command, Frame, FRAME_LEN};

use crate::config::{Config, TestSpec};
use crate::conn::{Clock, Conn, ConnectError, Ctx, Gate, Verify};
use crate::proto::{self, Framing, Protocol};
use crate::ratelimit::Schedule;
use crate::stats::{new_series_histogram, ErrorKind, Percentiles, PhaseStats, Recorder};
use crate::timer::Timer;
use crate::workload::{stream_seed, Workload};

const TIMER: Token = Token(usize::MAX);
/// How often a thread checks timeouts, reconnects and publishes progress.
const HOUSEKEEPING_NS: u64 = 10_000_000;
/// How long the probe and the first connections may take to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The span of the progress line's latency percentiles.
pub const RECENT: Duration = Duration::from_secs(1);

/// One phase of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// `prefill` or the test's name.
    pub name: String,
    /// The test, `None` for the prefill.
    pub test: Option<TestSpec>,
}

impl Phase {
    /// Whether this is the prefill.
    pub fn is_prefill(&self) -> bool {
        self.test.is_none()
    }
}

/// The phases a configuration runs.
pub fn phases(config: &Config) -> Vec<Phase> {
    let prefill = config.prefill.then(|| Phase { name: "prefill".into(), test: None });
    prefill
        .into_iter()
        .chain(config.tests.iter().map(|t| Phase { name: t.name.clone(), test: Some(t.clone()) }))
        .collect()
}

/// What all threads measured in one phase.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    /// Position among the run's phases.
    pub index: usize,
    /// The phase.
    pub phase: Phase,
    /// The merged measurements.
    pub stats: PhaseStats,
}

/// Totals for the progress line.
#[derive(Debug)]
pub struct Progress {
    /// Successful replies so far, all phases.
    pub ops: AtomicU64,
    /// Errors so far, all phases.
    pub errors: AtomicU64,
    /// Latencies of the replies since the runner last took them (series precision).
    pub latency: Mutex<Histogram<u64>>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Mutex::new(new_series_histogram()),
        }
    }
}

impl Progress {
    /// Adds what `recorder` measured since its last publication.
    fn publish(&self, recorder: &mut Recorder) {
        let (ops, errors) = recorder.take_progress();
        self.ops.fetch_add(ops, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
        if ops > 0 {
            let mut latency = self.latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            recorder.take_recent_latency(&mut latency);
        }
    }

    /// Takes the latencies published since the last call.
    fn take_latency(&self) -> Histogram<u64> {
        let mut latency = self.latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken = latency.clone();
        latency.reset();
        taken
    }
}

/// What [`Runner::next_event`] saw.
#[derive(Debug)]
pub enum RunEvent {
    /// A phase ended.
    Phase(Box<PhaseResult>),
    /// Nothing ended within the tick: totals so far, all phases.
    Tick {
        /// Successful replies.
        ops: u64,
        /// Errors.
        errors: u64,
        /// Latency of the replies of about the last second ([`RECENT`]) of the phase under
        /// way, in nanoseconds (`count` 0 when none arrived).
        latency: Percentiles,
    },
    /// Every phase has ended.
    Done,
}

/// Why a run could not start.
#[derive(Debug)]
pub enum StartError {
    /// The server cannot be reached or does not speak the protocol.
    Unreachable(String),
    /// The server answers but does not agree to what the run asked for: compact framing
    /// (`--framing compact`), refused or not known. Nothing was measured.
    Refused(String),
    /// The machine refused a poll, timer or thread.
    Setup(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Unreachable(msg) | StartError::Refused(msg) => f.write_str(msg),
            StartError::Setup(e) => write!(f, "cannot set up the load threads: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// The message of a server that does not agree to compact framing.
fn refused(addr: SocketAddr, why: impl fmt::Display) -> StartError {
    StartError::Refused(format!("server {addr} does not agree to compact framing: {why}"))
}

/// Checks that `addr` accepts a connection and answers a PING in `protocol` within
/// [`CONNECT_TIMEOUT`], so that a wrong address fails at once with a clear message. With
/// compact `framing` (Tandem frames only) it first sends a HELLO alone, and the PING goes
/// compact once the server agreed.
///
/// # Errors
/// [`StartError::Unreachable`] saying what went wrong; [`StartError::Refused`] when the
/// server does not agree to compact framing.
pub fn probe(addr: SocketAddr, protocol: Protocol, framing: Framing) -> Result<(), StartError> {
    let unreachable = |what: String| StartError::Unreachable(format!("server {addr}: {what}"));
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| unreachable(format!("cannot connect: {e}")))?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(|e| unreachable(e.to_string()))?;
    stream.set_nodelay(true).map_err(|e| unreachable(e.to_string()))?;
    let framing = if protocol.uses_frames() { framing } else { Framing::Fixed };
    let mut request = [0u8; FRAME_LEN];
    if framing == Framing::Compact {
        // Alone, and answered, before anything else (PROTOCOL.md).
        let hello_id = 1;
        proto::encode_hello(hello_id, &mut request)
            .map_err(|e| unreachable(format!("cannot encode a HELLO: {e}")))?;
        stream.write_all(&request).map_err(|e| unreachable(format!("cannot send a HELLO: {e}")))?;
        stream.read_exact(&mut request).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => refused(addr, "it closed the connection after a HELLO"),
            _ => refused(addr, format!("no answer to a HELLO within {} s ({e})", CONNECT_TIMEOUT.as_secs())),
        })?;
        proto::check_hello_reply(protocol, hello_id, &request).map_err(|why| refused(addr, why))?;
    }
    let request_len = match protocol {
        Protocol::Tandem | Protocol::Echo => {
            let ping = Frame::request(0, Command::PING, b"", b"tandem-bench");
            match framing {
                Framing::Fixed => ping.encode(&mut request),
                Framing::Compact => ping.encode_compact(&mut request),
            }
        }
        Protocol::Resp => proto::encode_resp_array(&[b"PING"], &mut request)
            .ok_or(wire::EncodeError::BufferTooSmall { len: FRAME_LEN }),
    }
    .map_err(|e| unreachable(format!("cannot encode a PING: {e}")))?;
    stream.write_all(&request[..request_len]).map_err(|e| unreachable(format!("cannot send a PING: {e}")))?;
    let mut reply = vec![0u8; FRAME_LEN];
    let mut got = 0;
    loop {
        let n = stream.read(&mut reply[got..]).map_err(|e| {
            unreachable(format!(
                "no answer to a PING within {} s ({e}); is it a {protocol:?} server?",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?;
        if n == 0 {
            return Err(unreachable(format!(
                "closed the connection after a PING; is it a {protocol:?} server?"
            )));
        }
        got += n;
        match protocol {
            Protocol::Tandem | Protocol::Echo => {
                let decoded = match framing {
                    Framing::Fixed if got == FRAME_LEN => Some(Frame::decode_slice(&reply)),
                    Framing::Fixed => None,
                    Framing::Compact => {
                        Frame::decode_compact(&reply[..got]).map(|f| f.map(|(frame, _)| frame)).transpose()
                    }
                };
                let Some(decoded) = decoded else { continue };
                return match decoded {
                    Ok(frame) if frame.id == 0 && protocol == Protocol::Tandem && !frame.is_reply() => {
                        Err(unreachable(
                            "returned the PING unchanged: an echo server? (use --protocol echo)".into(),
                        ))
                    }
                    Ok(frame) if frame.id == 0 => Ok(()),
                    Ok(frame) => Err(unreachable(format!("answered a PING with id {}", frame.id))),
                    Err(e) => Err(unreachable(format!("answered a PING with a bad frame ({e})"))),
                };
            }
            Protocol::Resp => match proto::parse_resp(&reply[..got]) {
                Ok(Some((proto::RespValue::Simple(_), _))) => return Ok(()),
                Ok(Some((proto::RespValue::Error(msg), _))) => {
                    return Err(unreachable(format!("answered PING with {}", String::from_utf8_lossy(msg))));
                }
                Ok(Some(_)) | Err(_) => return Err(unreachable("does not answer PING in RESP".into())),
                Ok(None) if got == reply.len() => {
                    return Err(unreachable("does not answer PING in RESP".into()))
                }
                Ok(None) => {}
            },
        }
    }
}

enum Msg {
    Phase { index: usize, stats: Box<PhaseStats> },
}

/// A run in progress.
pub struct Runner {
    phases: Vec<Phase>,
    threads: usize,
    rx: Receiver<Msg>,
    handles: Vec<JoinHandle<()>>,
    partial: BTreeMap<usize, (usize, PhaseStats)>,
    next_phase: usize,
    progress: Arc<Progress>,
    /// The progress line's latencies: one histogram per tick, for the last [`RECENT`].
    recent: VecDeque<(Instant, Histogram<u64>)>,
    stop: Arc<AtomicBool>,
}

impl Runner {
    /// Probes the server, opens every connection and starts the threads on the first phase.
    ///
    /// # Errors
    /// [`StartError`] when the server is unreachable, does not agree to the framing asked
    /// for, or the machine refuses resources.
    pub fn start(config: &Config) -> Result<Runner, StartError> {
        Runner::start_with(config, || {})
    }

    /// [`Runner::start`], calling `ready` once every connection is open and agreed, just before
    /// the threads start sending: the moment to read the server's counters before the load.
    ///
    /// # Errors
    /// As [`Runner::start`]; `ready` is not called then.
    pub fn start_with(config: &Config, ready: impl FnOnce()) -> Result<Runner, StartError> {
        probe(config.addr, config.protocol, config.framing)?;
        let phases = phases(config);
        let shared = Arc::new(Shared::new(config, phases.clone()));
        let (tx, rx) = mpsc::channel();
        let barrier = Arc::new(Barrier::new(config.threads));
        let progress = Arc::new(Progress::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Every connection is open (and has its framing) before any thread starts, so that a
        // refusal stops the run with no thread left waiting for the others.
        let mut workers = Vec::with_capacity(config.threads);
        for thread in 0..config.threads {
            let first = config.connections * thread / config.threads;
            let last = config.connections * (thread + 1) / config.threads;
            let links = Links {
                tx: tx.clone(),
                barrier: barrier.clone(),
                progress: progress.clone(),
                stop: stop.clone(),
            };
            workers.push(Worker::new(shared.clone(), first..last, links)?);
        }
        ready();
        let mut handles = Vec::with_capacity(config.threads);
        for (thread, worker) in workers.into_iter().enumerate() {
            let handle = std::thread::Builder::new()
                .name(format!("load-{thread}"))
                .spawn(move || worker.run())
                .map_err(StartError::Setup)?;
            handles.push(handle);
        }
        Ok(Runner {
            phases,
            threads: config.threads,
            rx,
            handles,
            partial: BTreeMap::new(),
            next_phase: 0,
            progress,
            recent: VecDeque::new(),
            stop,
        })
    }

    /// Ends the run early: the phase under way stops sending, waits for its replies and
    /// reports what it measured (marked interrupted); later phases are skipped.
    pub fn interrupt(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The flag [`Runner::interrupt`] sets, for `signal_hook::flag::register`.
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The phases, in order.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// The phase being run (equal to the number of phases when done).
    pub fn current_phase(&self) -> usize {
        self.next_phase
    }

    /// Waits up to `tick` for the next phase to end.
    pub fn next_event(&mut self, tick: Duration) -> RunEvent {
        if self.next_phase == self.phases.len() {
            for handle in self.handles.drain(..) {
                if handle.join().is_err() {
                    log::error!("a load thread panicked");
                }
            }
            return RunEvent::Done;
        }
        loop {
            if let Some((count, _)) = self.partial.get(&self.next_phase) {
                if *count == self.threads {
                    let index = self.next_phase;
                    let (_, stats) = self.partial.remove(&index).unwrap_or_default();
                    self.next_phase += 1;
                    // The progress line's latency starts afresh with the next phase.
                    self.recent.clear();
                    let _ = self.progress.take_latency();
                    return RunEvent::Phase(Box::new(PhaseResult {
                        index,
                        phase: self.phases[index].clone(),
                        stats,
                    }));
                }
            }
            match self.rx.recv_timeout(tick) {
                Ok(Msg::Phase { index, stats }) => {
                    let entry = self.partial.entry(index).or_insert_with(|| (0, PhaseStats::new()));
                    entry.1.skipped =
                        if entry.0 == 0 { stats.skipped } else { entry.1.skipped && stats.skipped };
                    entry.0 += 1;
                    entry.1.merge(&stats);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return RunEvent::Tick {
                        ops: self.progress.ops.load(Ordering::Relaxed),
                        errors: self.progress.errors.load(Ordering::Relaxed),
                        latency: self.recent_latency(),
                    };
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Every thread is gone without finishing: only a panic does that.
                    log::error!("the load threads stopped before the run ended");
                    self.next_phase = self.phases.len();
                    return RunEvent::Done;
                }
            }
        }
    }

    /// The latency percentiles of about the last [`RECENT`]: what the threads published
    /// since the last tick, with the ticks before it that fall within the span.
    fn recent_latency(&mut self) -> Percentiles {
        let now = Instant::now();
        self.recent.push_back((now, self.progress.take_latency()));
        while self.recent.front().is_some_and(|(at, _)| now.duration_since(*at) >= RECENT) {
            self.recent.pop_front();
        }
        let mut all = new_series_histogram();
        for (_, h) in &self.recent {
            let _ = all.add(h);
        }
        Percentiles::of(&all)
    }
}

/// What all threads share, read-only.
struct Shared {
    config: Config,
    phases: Vec<Phase>,
    base_value: Vec<u8>,
    nonce: u32,
}

impl Shared {
    fn new(config: &Config, phases: Vec<Phase>) -> Shared {
        // Printable bytes, so values read fine in redis-cli; from the seed, so reproducible.
        let mut rng = StdRng::seed_from_u64(stream_seed(config.seed, u64::MAX, u64::MAX));
        let base_value = (0..config.data_size).map(|_| rng.random_range(b'a'..=b'z')).collect();
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(1);
        Shared { config: config.clone(), phases, base_value, nonce }
    }
}

/// How a worker talks to the runner and the other workers.
struct Links {
    tx: Sender<Msg>,
    barrier: Arc<Barrier>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
}

struct Worker {
    shared: Arc<Shared>,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    timer: Option<Timer>,
    verify: Option<Verify>,
    links: Links,
    /// Connections that failed to open before the first phase; counted in it.
    setup_failures: u64,
    /// The run-wide numbers of this thread's connections.
    slots: std::ops::Range<usize>,
}

impl Worker {
    /// Opens this thread's connections.
    ///
    /// # Errors
    /// [`StartError::Setup`] when the machine refuses a poll or timer,
    /// [`StartError::Refused`] when the server does not agree to compact framing on one of
    /// them. A connection that cannot be opened is only counted (`connect`).
    fn new(shared: Arc<Shared>, slots: std::ops::Range<usize>, links: Links) -> Result<Worker, StartError> {
        let config = &shared.config;
        let poll = Poll::new().map_err(StartError::Setup)?;
        let timer = if config.rate.is_some() {
            Some(Timer::new(poll.registry(), TIMER).map_err(StartError::Setup)?)
        } else {
            None
        };
        let mut conns = Vec::with_capacity(slots.len());
        let mut setup_failures = 0;
        for (i, slot) in slots.clone().enumerate() {
            let mut conn = Conn::new(
                slot as u64,
                Token(i),
                config.protocol,
                config.framing,
                config.pipeline,
                &shared.base_value,
            );
            if let Some(replicas) = config.wait {
                conn.set_wait(replicas);
            }
            match conn.connect_now(poll.registry(), config.addr, CONNECT_TIMEOUT) {
                Ok(()) => {}
                Err(ConnectError::Refused(why)) => return Err(refused(config.addr, why)),
                Err(ConnectError::Io(e)) => {
                    log::warn!("connection {slot} to {}: {e}", config.addr);
                    setup_failures += 1;
                }
            }
            conns.push(conn);
        }
        let verify = config.verify.then(|| Verify::new(config.keyspace, shared.nonce));
        Ok(Worker {
            events: Events::with_capacity(1024),
            poll,
            conns,
            timer,
            verify,
            links,
            setup_failures,
            slots,
            shared,
        })
    }

    fn run(mut self) {
        let shared = self.shared.clone();
        for (index, phase) in shared.phases.iter().enumerate() {
            self.links.barrier.wait();
            let stats = self.run_phase(index, phase);
            if self.links.tx.send(Msg::Phase { index, stats: Box::new(stats) }).is_err() {
                return; // The runner is gone.
            }
        }
    }

    fn run_phase(&mut self, index: usize, phase: &Phase) -> PhaseStats {
        let shared = self.shared.clone();
        let config = &shared.config;
        let clock = Clock::start();
        let prefill = phase.is_prefill();
        let open_loop = config.rate.filter(|_| !prefill);
        let measure_start_ns = if prefill { 0 } else { (config.warmup_s * 1e9) as u64 };
        let mut gate = Gate {
            measure_start_ns,
            end_ns: config.duration_s.filter(|_| !prefill).map(|d| measure_start_ns + (d * 1e9) as u64),
            // Each thread sends its connections' share of -n; the shares add up to -n exactly.
            remaining: if prefill {
                None
            } else {
                config.requests.map(|n| {
                    let share =
                        |slot: usize| (u128::from(n) * slot as u128 / config.connections as u128) as u64;
                    share(self.slots.end) - share(self.slots.start)
                })
            },
        };
        let mut recorder = Recorder::new(measure_start_ns);
        recorder.record_error(ErrorKind::Connect, std::mem::take(&mut self.setup_failures), 0);
        let spec = config.workload(phase.test.as_ref());
        let slots = config.connections as u64;
        for conn in &mut self.conns {
            let seed = stream_seed(config.seed, index as u64, conn.slot);
            conn.workload = Some(Workload::new(&spec, seed, conn.slot, slots));
            conn.schedule = open_loop.map(|rate| Schedule::new(rate, conn.slot, slots, 0));
            conn.exhausted = false;
            conn.reset_retry();
        }
        let timeout_ns = config.timeout_ms * 1_000_000;
        let registry = self.poll.registry().try_clone();
        let registry = match registry {
            Ok(registry) => registry,
            Err(e) => {
                log::error!("cannot clone the poll registry: {e}");
                recorder.record_error(ErrorKind::Stalled, 1, 0);
                return recorder.finish(0);
            }
        };
        let mut ctx = Ctx {
            recorder: &mut recorder,
            gate: &mut gate,
            verify: self.verify.as_mut(),
            base_value: &shared.base_value,
            registry: &registry,
            addr: config.addr,
            last_reply_ns: 0,
            clock: &clock,
        };
        // Once interrupted, every phase stops sending at once: later ones send nothing, so
        // all threads still meet at each barrier and the runner hears from each of them.
        let skipped = self.links.stop.load(Ordering::Relaxed);
        let mut interrupted = skipped;
        if skipped {
            ctx.gate.stop(0);
        }
        for conn in &mut self.conns {
            conn.pump(&mut ctx);
        }
        let mut next_housekeeping = 0;
        let mut drain_deadline: Option<u64> = None;
        loop {
            let now = clock.now();
            if !interrupted && self.links.stop.load(Ordering::Relaxed) {
                interrupted = true;
                ctx.gate.stop(now);
            }
            if open_loop.is_some() {
                for conn in &mut self.conns {
                    if conn.next_due().is_some_and(|due| due <= now) {
                        conn.pump(&mut ctx);
                    }
                }
            }
            let sending_done = ctx.gate.closed(now) || self.conns.iter().all(|c| c.exhausted);
            if sending_done {
                if self.conns.iter().all(Conn::is_idle) {
                    break;
                }
                let deadline = *drain_deadline.get_or_insert(now + timeout_ns);
                if now >= deadline {
                    for conn in self.conns.iter_mut().filter(|c| !c.is_idle()) {
                        conn.close(&mut ctx, ErrorKind::Timeout);
                    }
                    break;
                }
            }
            if now >= next_housekeeping {
                for conn in &mut self.conns {
                    conn.housekeeping(&mut ctx, timeout_ns);
                }
                self.links.progress.publish(ctx.recorder);
                // Nothing answered for twice the timeout while there is work to do: the server
                // is gone or wedged. Give up on this phase rather than retry forever.
                let waiting = self.conns.iter().any(|c| !c.is_open() || c.in_flight() > 0);
                if !sending_done && waiting && now.saturating_sub(ctx.last_reply_ns) > 2 * timeout_ns {
                    log::error!("phase {}: no reply for {} ms, giving up", phase.name, 2 * config.timeout_ms);
                    ctx.recorder.record_error(ErrorKind::Stalled, 1, now);
                    for conn in self.conns.iter_mut().filter(|c| c.is_open()) {
                        conn.close(&mut ctx, ErrorKind::Unanswered);
                    }
                    break;
                }
                next_housekeeping = now + HOUSEKEEPING_NS;
            }
            if let Some(timer) = self.timer.as_mut().filter(|_| open_loop.is_some() && !sending_done) {
                if let Some(due) = self.conns.iter().filter_map(Conn::next_due).min() {
                    if let Err(e) = timer.arm(due, due.saturating_sub(clock.now())) {
                        log::error!("cannot arm the send timer: {e}");
                    }
                }
            }
            let wait = Duration::from_nanos(next_housekeeping.saturating_sub(clock.now()).max(1));
            if let Err(e) = self.poll.poll(&mut self.events, Some(wait)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("poll failed: {e}");
                    ctx.recorder.record_error(ErrorKind::Stalled, 1, clock.now());
                    break;
                }
            }
            for event in self.events.iter() {
                if event.token() == TIMER {
                    if let Some(timer) = self.timer.as_mut() {
                        timer.acknowledge();
                    }
                    continue;
                }
                match self.conns.get_mut(event.token().0) {
                    Some(conn) => conn.handle_event(event, &mut ctx),
                    None => log::warn!("event for unknown token {:?}", event.token()),
                }
            }
        }
        let end = clock.now();
        // The end of sending: the duration's or the interrupt's, or the loop's (it gave up).
        let send_end = ctx.gate.end_ns.map(|end_ns| end_ns.min(end));
        if let Some(send_end) = send_end.filter(|_| open_loop.is_some()) {
            // Requests the schedule meant to send in the measured window but never could
            // (connections full or down to the last): not sent, which is not a timeout.
            let unsent: u64 = self
                .conns
                .iter()
                .filter_map(|conn| conn.schedule.as_ref())
                .map(|schedule| schedule.untaken_between(measure_start_ns, send_end))
                .sum();
            ctx.recorder.record_not_sent(unsent);
        }
        self.links.progress.publish(ctx.recorder);
        for conn in &mut self.conns {
            conn.workload = None;
            conn.schedule = None;
        }
        let mut stats = recorder.finish(end);
        if let Some(send_end) = send_end {
            stats.window_ns = send_end.saturating_sub(measure_start_ns);
        }
        stats.interrupted = interrupted;
        stats.skipped = skipped;
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use clap::Parser;

    #[test]
    fn prefill_runs_first() {
        let args = Args::try_parse_from(["tandem-bench", "--prefill", "-t", "get,put"]).expect("parses");
        let config = Config::from_args(args).expect("valid");
        let names: Vec<String> = phases(&config).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["prefill", "GET", "PUT"]);
        assert!(phases(&config)[0].is_prefill());
    }

    #[test]
    fn probe_tells_an_echo_server_from_a_tandem_server() {
        let echo = crate::echo::EchoServer::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).expect("spawn");
        assert!(probe(echo.addr(), Protocol::Echo, Framing::Fixed).is_ok());
        assert!(probe(echo.addr(), Protocol::Echo, Framing::Compact).is_ok(), "the echo passes HELLO on");
        let err =
            probe(echo.addr(), Protocol::Tandem, Framing::Fixed).expect_err("an echo is not a tandem server");
        assert!(err.to_string().contains("--protocol echo"), "{err}");
        let err =
            probe(echo.addr(), Protocol::Tandem, Framing::Compact).expect_err("not with compact either");
        assert!(matches!(err, StartError::Refused(_)), "{err}");
        assert!(err.to_string().contains("--protocol echo"), "{err}");
        let err = probe(echo.addr(), Protocol::Resp, Framing::Fixed).expect_err("nor a Redis");
        assert!(err.to_string().contains("RESP") || err.to_string().contains("PING"), "{err}");
    }

    /// The progress ticks carry the latency of the last second's replies, not only counts.
    #[test]
    fn ticks_carry_the_recent_latency() {
        let echo = crate::echo::EchoServer::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).expect("spawn");
        let addr = echo.addr().to_string();
        let args =
            ["tandem-bench", "--protocol", "echo", "-s", &addr, "-c", "2", "--duration", "1.5", "-t", "get"];
        let config = Config::from_args(Args::try_parse_from(args).expect("parses")).expect("valid");
        let mut runner = Runner::start(&config).expect("starts");
        let mut ticks = Vec::new();
        let mut phases = 0;
        loop {
            match runner.next_event(Duration::from_millis(200)) {
                RunEvent::Tick { ops, latency, .. } => ticks.push((ops, latency)),
                RunEvent::Phase(_) => phases += 1,
                RunEvent::Done => break,
            }
        }
        assert_eq!(phases, 1);
        let measured: Vec<_> = ticks.iter().filter(|(ops, _)| *ops > 0).map(|(_, l)| *l).collect();
        assert!(!measured.is_empty(), "no tick saw a reply: {ticks:?}");
        assert!(
            measured.iter().any(|l| l.count > 0 && l.p50 > 0 && l.p99 >= l.p50),
            "ticks after replies carry their latency: {ticks:?}"
        );
    }

    #[test]
    fn probe_fails_fast_on_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let started = std::time::Instant::now();
        let err = probe(addr, Protocol::Tandem, Framing::Compact).expect_err("nothing listens");
        assert!(err.to_string().contains("cannot connect"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
