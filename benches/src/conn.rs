//! One load connection: its socket, its requests in flight, and its reusable buffers.
//!
//! A connection keeps up to `-P` requests in flight. New requests are encoded into one
//! write buffer and written together; reads take whatever arrived and parse every complete
//! reply in it. Replies are matched to the oldest request in flight (the server answers a
//! connection's requests in order): by id for Tandem frames, by order for RESP. Nothing is
//! allocated per request once the buffers have their working size.
//!
//! Tandem frames are fixed (4096 bytes) or compact (`--framing compact`). A compact
//! connection starts fixed, as every connection does: it sends a HELLO alone when it opens
//! and sends its first request only once the server agreed (PROTOCOL.md, "Negotiating
//! compact framing"). Requests are then encoded compactly straight into the write buffer and
//! replies cut out of the stream by a [`CompactReader`]; what is measured, and how, is the
//! same as with fixed frames.
//!
//! Under RESP `--wait N` a write is one operation of two commands, the write and `WAIT N 0`,
//! written back to back: it takes one `-P` slot and completes, with one latency and at most
//! one error, when the second reply arrives.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use wire::{CompactReader, Frame, FrameReader, Status, FRAME_LEN};

use crate::config::VERIFY_HEADER_LEN;
use crate::proto::{self, Framing, HelloRefusal, Outcome, Protocol};
use crate::ratelimit::Schedule;
use crate::stats::{ErrorKind, Recorder};
use crate::workload::{write_key, Cmd, Workload, KEY_LEN};

/// How long a closed connection waits before reconnecting.
pub const RECONNECT_DELAY_NS: u64 = 100_000_000;

/// Whether a request may be sent, and whether it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it and measure it.
    Measured,
    /// Send it but leave it out of the results (warm-up).
    Unmeasured,
    /// Do not send: the phase has sent all it should.
    Refused,
}

/// Decides, by a request's intended send time, whether it is sent and measured. Shared by
/// the connections of one thread in one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// Requests intended before this are warm-up.
    pub measure_start_ns: u64,
    /// Nothing is sent from this time on, and no request intended at or after it
    /// (`--duration`, or an interrupt). An open-loop backlog still due at this time is not
    /// sent: the phase counts it as not sent rather than run past its end.
    pub end_ns: Option<u64>,
    /// Measured requests left to send (`-n`), shared by this thread's connections.
    pub remaining: Option<u64>,
}

impl Gate {
    /// Admits (or not) a request intended at `t_ns` and about to be sent at `now_ns`, taking
    /// it from the budget.
    pub fn admit(&mut self, t_ns: u64, now_ns: u64) -> Admit {
        if self.end_ns.is_some_and(|end| t_ns >= end || now_ns >= end) {
            return Admit::Refused;
        }
        if t_ns < self.measure_start_ns {
            return Admit::Unmeasured;
        }
        match &mut self.remaining {
            Some(0) => Admit::Refused,
            Some(left) => {
                *left -= 1;
                Admit::Measured
            }
            None => Admit::Measured,
        }
    }

    /// Admits nothing more from `now_ns` on (the run was interrupted).
    pub fn stop(&mut self, now_ns: u64) {
        self.end_ns = Some(self.end_ns.map_or(now_ns, |end| end.min(now_ns)));
    }

    /// Whether no request intended at `now_ns` or later will be admitted.
    pub fn closed(&self, now_ns: u64) -> bool {
        self.end_ns.is_some_and(|end| now_ns >= end)
            || (self.remaining == Some(0) && now_ns >= self.measure_start_ns)
    }
}

/// `--verify` state of one thread: which write each key last received. Keys are
/// partitioned over connections, so one connection writes and reads each key, in order.
#[derive(Debug)]
pub struct Verify {
    /// Per key: the generation of the last write sent, 0 when unknown (never written by this
    /// run, or the last write failed or was an APPEND).
    generations: Vec<u32>,
    next_generation: u32,
    /// Distinguishes this run's values from an earlier run's.
    nonce: u32,
    /// Mismatches logged so far; only the first few are, the rest are only counted.
    logged: u32,
}

/// Mismatches logged per thread before going quiet.
const VERIFY_LOG_LIMIT: u32 = 5;

impl Verify {
    /// No key known yet.
    pub fn new(keyspace: u64, nonce: u32) -> Verify {
        Verify { generations: vec![0; keyspace as usize], next_generation: 1, nonce, logged: 0 }
    }

    fn slot(&mut self, key: u64) -> &mut u32 {
        &mut self.generations[key as usize]
    }

    /// Records a PUT of `key` and writes the header identifying it into `value`.
    fn write(&mut self, key: u64, value: &mut [u8]) -> u32 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.checked_add(1).unwrap_or(1);
        *self.slot(key) = generation;
        stamp(value, key, generation, self.nonce);
        generation
    }

    fn forget(&mut self, key: u64) {
        *self.slot(key) = 0;
    }

    fn expected(&mut self, key: u64) -> u32 {
        *self.slot(key)
    }

    fn log_mismatch(&mut self, key: u64, generation: u32, what: &str) {
        self.logged += 1;
        if self.logged <= VERIFY_LOG_LIMIT {
            log::warn!("verify: key {key} {what} after write {generation}");
        }
        if self.logged == VERIFY_LOG_LIMIT {
            log::warn!("verify: further mismatches are counted but not logged");
        }
    }
}

/// Writes the `--verify` header (key, generation, nonce) into the first bytes of a value.
fn stamp(value: &mut [u8], key: u64, generation: u32, nonce: u32) {
    value[..8].copy_from_slice(&key.to_le_bytes());
    value[8..12].copy_from_slice(&generation.to_le_bytes());
    value[12..VERIFY_HEADER_LEN].copy_from_slice(&nonce.to_le_bytes());
}

/// Whether `got` is the value a PUT of `(key, generation)` wrote, given the run's base value.
pub fn value_matches(got: &[u8], base: &[u8], key: u64, generation: u32, nonce: u32) -> bool {
    let mut header = [0u8; VERIFY_HEADER_LEN];
    stamp(&mut header, key, generation, nonce);
    got.len() == base.len()
        && got[..VERIFY_HEADER_LEN] == header
        && got[VERIFY_HEADER_LEN..] == base[VERIFY_HEADER_LEN..]
}

/// What a connection's methods need from its thread.
pub struct Ctx<'a> {
    /// Where results go.
    pub recorder: &'a mut Recorder,
    /// Who may send.
    pub gate: &'a mut Gate,
    /// `--verify` state.
    pub verify: Option<&'a mut Verify>,
    /// The value every PUT/APPEND sends (before the verify header).
    pub base_value: &'a [u8],
    /// For (de)registering sockets.
    pub registry: &'a Registry,
    /// The server.
    pub addr: SocketAddr,
    /// When the last reply of any kind arrived.
    pub last_reply_ns: u64,
    /// The thread's clock.
    pub clock: &'a Clock,
}

/// Monotonic nanoseconds since a phase started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(std::time::Instant);

impl Clock {
    /// Starts at zero now.
    pub fn start() -> Clock {
        Clock(std::time::Instant::now())
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: u64,
    cmd: Cmd,
    key: u64,
    intended_ns: u64,
    sent_ns: u64,
    measured: bool,
    /// For a GET under `--verify`: the generation expected, 0 for any value.
    expect: u32,
    /// A `WAIT` follows this write (RESP `--wait`): two replies answer it.
    waits: bool,
    /// The write's own reply has arrived (only with `waits`).
    write_answered: bool,
    /// What the write's own reply said when it was an error: it, not the `WAIT`'s reply,
    /// decides the outcome.
    write_error: Option<ErrorKind>,
}

/// RESP replies as they arrive: a growable buffer with a consumed prefix.
#[derive(Debug)]
struct RespReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RespReader {
    fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.buf.len() - self.end < min {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < min {
                self.buf.resize(self.end + min.max(self.buf.len()), 0);
            }
        }
        &mut self.buf[self.end..]
    }
}

/// Replies as they arrive, per protocol and framing.
#[derive(Debug)]
enum Reader {
    /// Fixed 4096-byte Tandem frames.
    Frames(FrameReader),
    /// Compact Tandem frames (after the HELLO, which [`Hello`] reads).
    Compact(CompactReader),
    /// RESP replies.
    Resp(RespReader),
}

impl Reader {
    fn clear(&mut self) {
        match self {
            Reader::Frames(r) => r.clear(),
            Reader::Compact(r) => r.clear(),
            Reader::Resp(r) => {
                r.start = 0;
                r.end = 0;
            }
        }
    }
}

/// The HELLO of a compact connection: the request, encoded once, and its reply (a fixed
/// frame) as it arrives.
#[derive(Debug)]
struct Hello {
    /// The connection's slot with sequence number 0, which no request uses.
    id: u64,
    /// The HELLO asking for compact framing, a fixed frame.
    request: Box<[u8]>,
    /// Its reply; never a byte past it (what follows is compact).
    reply: FrameReader,
}

/// A refusal of compact framing during the run is logged once per process; each one is
/// counted (`hello_refused`).
static REFUSAL_LOGGED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; reconnect at this time.
    Down { retry_at_ns: u64 },
    /// A non-blocking connect is under way since this time.
    Connecting { since_ns: u64 },
    /// Connected, and the HELLO asking for compact framing sent at this time; nothing else
    /// is sent until its answer agrees.
    Hello { since_ns: u64 },
    /// Connected (and, for compact framing, agreed).
    Open,
}

/// Why [`Conn::connect_now`] could not open its connection.
#[derive(Debug)]
pub enum ConnectError {
    /// Connecting, or exchanging the HELLO, failed or timed out.
    Io(io::Error),
    /// The server answered the HELLO without agreeing to compact framing.
    Refused(HelloRefusal),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Refused(refusal) => write!(f, "no compact framing: {refusal}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> ConnectError {
        ConnectError::Io(e)
    }
}

/// Whether a connection goes on after the replies just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// It stays open.
    Go,
    /// The server refused it (BUSY, at its connection limit) and closes it: nothing more may
    /// be sent on it.
    Refused,
}

/// What sending stopped on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enqueued {
    Sent,
    Refused,
    Exhausted,
}

/// One connection to the server.
#[derive(Debug)]
pub struct Conn {
    /// This connection's number among all connections of the run.
    pub slot: u64,
    token: Token,
    protocol: Protocol,
    framing: Framing,
    pipeline: usize,
    state: State,
    stream: Option<TcpStream>,
    wbuf: Vec<u8>,
    wstart: usize,
    wend: usize,
    max_request_len: usize,
    reader: Reader,
    /// `--framing compact`: the HELLO each opening of the connection starts with.
    hello: Option<Hello>,
    inflight: VecDeque<InFlight>,
    next_seq: u64,
    /// This phase's operations; `None` between phases.
    pub workload: Option<Workload>,
    /// This phase's open-loop schedule; `None` in closed loop.
    pub schedule: Option<Schedule>,
    /// The workload has nothing more to send (end of a prefill).
    pub exhausted: bool,
    /// This connection's copy of the value (`--verify` stamps its header per PUT).
    value: Vec<u8>,
    /// RESP `--wait N`: N, and the `WAIT N 0` request sent after each write (encoded once).
    wait: Option<(u32, Vec<u8>)>,
}

impl Conn {
    /// A connection, not yet connected, with buffers for `pipeline` requests. `framing`
    /// applies to Tandem frames (RESP ignores it).
    pub fn new(
        slot: u64,
        token: Token,
        protocol: Protocol,
        framing: Framing,
        pipeline: usize,
        base_value: &[u8],
    ) -> Conn {
        let framing = if protocol.uses_frames() { framing } else { Framing::Fixed };
        let max_request_len = proto::max_request_len(protocol, framing, KEY_LEN, base_value.len());
        let hello = (framing == Framing::Compact).then(|| {
            let id = slot << 40;
            let mut request = vec![0u8; FRAME_LEN].into_boxed_slice();
            proto::encode_hello(id, &mut request).expect("a HELLO fits in a frame");
            Hello { id, request, reply: FrameReader::with_capacity(1) }
        });
        // Room for the HELLO too, which goes out alone before any request.
        let wbuf_len = (pipeline * max_request_len).max(if hello.is_some() { FRAME_LEN } else { 0 });
        let reader = match (protocol, framing) {
            (Protocol::Tandem | Protocol::Echo, Framing::Fixed) => {
                Reader::Frames(FrameReader::with_capacity(pipeline + 1))
            }
            // Replies are at most a frame long, and usually far shorter.
            (Protocol::Tandem | Protocol::Echo, Framing::Compact) => {
                Reader::Compact(CompactReader::with_capacity((pipeline + 1) * FRAME_LEN))
            }
            (Protocol::Resp, _) => {
                let size = (2 * pipeline * (base_value.len() + 64)).max(64 * 1024);
                Reader::Resp(RespReader { buf: vec![0; size], start: 0, end: 0 })
            }
        };
        Conn {
            slot,
            token,
            protocol,
            framing,
            pipeline,
            state: State::Down { retry_at_ns: 0 },
            stream: None,
            wbuf: vec![0; wbuf_len],
            wstart: 0,
            wend: 0,
            max_request_len,
            reader,
            hello,
            inflight: VecDeque::with_capacity(pipeline),
            next_seq: 0,
            workload: None,
            schedule: None,
            exhausted: false,
            value: base_value.to_vec(),
            wait: None,
        }
    }

    /// RESP only: follows every write (SET, APPEND) with `WAIT replicas 0` from now on, the
    /// pair counting as one request (`--wait`). 0 sends no `WAIT`.
    pub fn set_wait(&mut self, replicas: u32) {
        if replicas == 0 || self.protocol != Protocol::Resp {
            self.wait = None;
            return;
        }
        let mut request = vec![0u8; proto::RESP_WAIT_MAX_LEN];
        let len = proto::encode_wait(replicas, &mut request).expect("RESP_WAIT_MAX_LEN holds any WAIT");
        request.truncate(len);
        if self.wait.is_none() {
            self.max_request_len += proto::RESP_WAIT_MAX_LEN;
            self.wbuf.resize(self.pipeline * self.max_request_len, 0);
        }
        self.wait = Some((replicas, request));
    }

    /// Connects synchronously (before the first phase, so that connecting is not measured).
    /// With compact framing it also sends the HELLO and waits up to `timeout` for the
    /// server's agreement.
    ///
    /// # Errors
    /// [`ConnectError::Io`] when connecting or the HELLO fails (the connection then stays
    /// down and reconnects later); [`ConnectError::Refused`] when the server answers the
    /// HELLO without agreeing.
    pub fn connect_now(
        &mut self,
        registry: &Registry,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(), ConnectError> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        if let Some(hello) = &self.hello {
            // Alone, and answered, before anything else: a server from before HELLO would
            // read compact requests behind it as broken fixed frames.
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.write_all(&hello.request)?;
            let mut reply = [0u8; FRAME_LEN];
            stream.read_exact(&mut reply)?;
            proto::check_hello_reply(self.protocol, hello.id, &reply).map_err(ConnectError::Refused)?;
        }
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream);
        registry.register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE)?;
        self.stream = Some(stream);
        self.state = State::Open;
        Ok(())
    }

    /// Whether the connection is connected.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// No request in flight and nothing waiting to be written.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty() && self.wstart == self.wend
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// When this connection next wants to send in open loop (`None` if it cannot now).
    pub fn next_due(&self) -> Option<u64> {
        if self.state != State::Open || self.exhausted || self.inflight.len() >= self.pipeline {
            return None;
        }
        self.schedule.as_ref().map(Schedule::peek)
    }

    /// Handles a readiness event for this connection.
    pub fn handle_event(&mut self, event: &Event, ctx: &mut Ctx<'_>) {
        if let State::Connecting { .. } = self.state {
            // The event that says the connect finished may also say that the server's first
            // bytes (a BUSY refusal) and its close are in. Readiness is edge-triggered: it
            // will not be told again, so the state the connection is now in reads them below.
            self.finish_connect(ctx);
        }
        let input = event.is_readable() || event.is_read_closed() || event.is_error();
        match self.state {
            State::Down { .. } | State::Connecting { .. } => {}
            State::Hello { .. } => {
                if let Err(kind) = self.flush() {
                    self.fail(ctx, kind);
                    return;
                }
                if input {
                    match self.read_hello() {
                        Ok(false) => {}
                        Ok(true) => {
                            log::debug!("connection {} agreed on compact framing", self.slot);
                            self.state = State::Open;
                            self.pump(ctx);
                        }
                        Err(kind) => self.fail(ctx, kind),
                    }
                }
            }
            State::Open => {
                if input {
                    match self.read(ctx) {
                        Ok(Flow::Go) => {}
                        Ok(Flow::Refused) => {
                            self.refused(ctx);
                            return;
                        }
                        Err(kind) => {
                            self.fail(ctx, kind);
                            return;
                        }
                    }
                }
                self.pump(ctx);
            }
        }
    }

    /// Sends whatever may be sent now (closed loop: up to `-P` in flight; open loop: the
    /// requests that are due) in one write, and flushes.
    pub fn pump(&mut self, ctx: &mut Ctx<'_>) {
        if self.state != State::Open {
            return;
        }
        let now = ctx.clock.now();
        while self.inflight.len() < self.pipeline && !self.exhausted {
            let intended = match &self.schedule {
                Some(schedule) if !schedule.is_due(now) => break,
                Some(schedule) => schedule.peek(),
                None => now,
            };
            match self.enqueue(ctx, intended, now) {
                Enqueued::Sent => {
                    if let Some(schedule) = &mut self.schedule {
                        schedule.take();
                    }
                }
                Enqueued::Refused => break,
                Enqueued::Exhausted => {
                    self.exhausted = true;
                    break;
                }
            }
        }
        if let Err(kind) = self.flush() {
            self.fail(ctx, kind);
        }
    }

    fn enqueue(&mut self, ctx: &mut Ctx<'_>, intended_ns: u64, now: u64) -> Enqueued {
        let measured = match ctx.gate.admit(intended_ns, now) {
            Admit::Refused => return Enqueued::Refused,
            Admit::Measured => true,
            Admit::Unmeasured => false,
        };
        let Some(op) = self.workload.as_mut().and_then(Workload::next_op) else {
            return Enqueued::Exhausted;
        };
        let mut expect = 0;
        if let Some(verify) = ctx.verify.as_deref_mut() {
            match op.cmd {
                Cmd::Put => {
                    verify.write(op.key, &mut self.value);
                }
                Cmd::Get => expect = verify.expected(op.key),
                Cmd::Append => verify.forget(op.key),
            }
        }
        if self.wbuf.len() - self.wend < self.max_request_len {
            self.wbuf.copy_within(self.wstart..self.wend, 0);
            self.wend -= self.wstart;
            self.wstart = 0;
        }
        let mut key = [0u8; KEY_LEN];
        write_key(&mut key, op.key);
        self.next_seq += 1;
        // Sequence number 0 is left to the HELLO.
        let id = (self.slot << 40) | (self.next_seq & ((1 << 40) - 1));
        let start = self.wend;
        let out = &mut self.wbuf[self.wend..];
        match proto::encode_request(self.protocol, self.framing, id, op.cmd, &key, &self.value, out) {
            Ok(len) => self.wend += len,
            Err(e) => {
                // Configuration keeps keys and values within the limits; this is a bug.
                log::error!("cannot encode a request: {e}");
                return Enqueued::Exhausted;
            }
        }
        let waits = op.cmd.carries_value() && self.wait.is_some();
        if let Some((_, request)) = self.wait.as_ref().filter(|_| waits) {
            // max_request_len counts the WAIT, so it fits beside the write.
            self.wbuf[self.wend..self.wend + request.len()].copy_from_slice(request);
            self.wend += request.len();
        }
        if measured {
            ctx.recorder.count_request();
            ctx.recorder.count_sent(self.wend - start);
        }
        self.inflight.push_back(InFlight {
            id,
            cmd: op.cmd,
            key: op.key,
            intended_ns,
            sent_ns: now,
            measured,
            expect,
            waits,
            write_answered: false,
            write_error: None,
        });
        Enqueued::Sent
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        while self.wstart < self.wend {
            match stream.write(&self.wbuf[self.wstart..self.wend]) {
                Ok(0) => return Err(ErrorKind::Closed),
                Ok(n) => self.wstart += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("write to {} failed: {e}", self.slot);
                    return Err(ErrorKind::Closed);
                }
            }
        }
        self.wstart = 0;
        self.wend = 0;
        Ok(())
    }

    /// Reads until the socket has nothing more, handling every complete reply, or until the
    /// server refuses the connection.
    fn read(&mut self, ctx: &mut Ctx<'_>) -> Result<Flow, ErrorKind> {
        let Some(stream) = self.stream.as_mut() else { return Ok(Flow::Go) };
        loop {
            let room = match &mut self.reader {
                Reader::Frames(r) => r.spare(FRAME_LEN),
                Reader::Compact(r) => r.spare(FRAME_LEN),
                Reader::Resp(r) => r.spare(4096),
            };
            match stream.read(room) {
                Ok(0) => {
                    log::debug!("connection {} closed by the server", self.slot);
                    return Err(ErrorKind::Closed);
                }
                Ok(n) => {
                    let now = ctx.clock.now();
                    let flow = match &mut self.reader {
                        Reader::Frames(r) => {
                            r.commit(n);
                            read_frames(r, &mut self.inflight, self.protocol, ctx, &self.value, now)?
                        }
                        Reader::Compact(r) => {
                            r.commit(n);
                            read_compact(r, &mut self.inflight, self.protocol, ctx, &self.value, now)?
                        }
                        Reader::Resp(r) => {
                            r.end += n;
                            let replicas = self.wait.as_ref().map_or(0, |(n, _)| *n);
                            read_resp(r, &mut self.inflight, replicas, ctx, &self.value, now)?;
                            Flow::Go
                        }
                    };
                    if flow == Flow::Refused {
                        return Ok(Flow::Refused);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flow::Go),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read from {} failed: {e}", self.slot);
                    return Err(ErrorKind::Closed);
                }
            }
        }
    }

    /// Reads the answer to the HELLO, never a byte past it: `Ok(true)` once it is in and
    /// agrees to compact framing, `Ok(false)` while it is incomplete.
    fn read_hello(&mut self) -> Result<bool, ErrorKind> {
        let (Some(stream), Some(hello)) = (self.stream.as_mut(), self.hello.as_mut()) else {
            return Ok(false);
        };
        loop {
            let want = FRAME_LEN - hello.reply.buffered();
            match stream.read(&mut hello.reply.spare(want)[..want]) {
                Ok(0) => {
                    log::debug!("connection {} closed by the server before answering HELLO", self.slot);
                    return Err(ErrorKind::Closed);
                }
                Ok(n) => hello.reply.commit(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read from {} failed: {e}", self.slot);
                    return Err(ErrorKind::Closed);
                }
            }
            if let Some(reply) = hello.reply.next_frame() {
                return match proto::check_hello_reply(self.protocol, hello.id, reply) {
                    Ok(()) => Ok(true),
                    Err(refusal) => {
                        if !REFUSAL_LOGGED.swap(true, Ordering::Relaxed) {
                            log::warn!(
                                "connection {}: the server does not agree to compact framing: {refusal}",
                                self.slot
                            );
                        }
                        Err(refusal.error_kind())
                    }
                };
            }
        }
    }

    /// Sends the HELLO alone on a connection that just opened.
    fn start_hello(&mut self, ctx: &mut Ctx<'_>) {
        let Some(hello) = self.hello.as_mut() else { return };
        hello.reply.clear();
        let len = hello.request.len();
        // The connection just opened: the write buffer is empty, and holds a frame.
        self.wbuf[..len].copy_from_slice(&hello.request);
        self.wstart = 0;
        self.wend = len;
        self.state = State::Hello { since_ns: ctx.clock.now() };
        if let Err(kind) = self.flush() {
            self.fail(ctx, kind);
        }
    }

    /// Counts `kind`, loses the requests in flight (each counted as unanswered) and closes.
    pub fn fail(&mut self, ctx: &mut Ctx<'_>, kind: ErrorKind) {
        let now = ctx.clock.now();
        ctx.recorder.record_error(kind, 1, now);
        self.close(ctx, ErrorKind::Unanswered);
    }

    /// Closes a connection the server refused (BUSY): the server closes it (counted as
    /// `closed`, as when it does so first), and every request still in flight was refused
    /// with it (`status:BUSY`). Nothing more is sent on it, nor read: it reconnects after
    /// [`RECONNECT_DELAY_NS`], as any closed connection.
    fn refused(&mut self, ctx: &mut Ctx<'_>) {
        log::debug!("connection {} refused by the server (BUSY)", self.slot);
        ctx.recorder.record_error(ErrorKind::Closed, 1, ctx.clock.now());
        self.close(ctx, ErrorKind::Status(Status::BUSY));
    }

    /// Closes the connection, counting each request in flight as `lost`; it reconnects after
    /// [`RECONNECT_DELAY_NS`].
    pub fn close(&mut self, ctx: &mut Ctx<'_>, lost: ErrorKind) {
        let now = ctx.clock.now();
        if let Some(mut stream) = self.stream.take() {
            let _ = ctx.registry.deregister(&mut stream);
        }
        ctx.recorder.record_error(lost, self.inflight.len() as u64, now);
        if let Some(verify) = ctx.verify.as_deref_mut() {
            // A write that got no answer may or may not have happened.
            for req in self.inflight.iter().filter(|r| r.cmd != Cmd::Get) {
                verify.forget(req.key);
            }
        }
        self.inflight.clear();
        self.reader.clear();
        self.wstart = 0;
        self.wend = 0;
        self.state = State::Down { retry_at_ns: now + RECONNECT_DELAY_NS };
    }

    /// Periodic duties: time out requests, give up slow connects, reconnect when due.
    pub fn housekeeping(&mut self, ctx: &mut Ctx<'_>, timeout_ns: u64) {
        let now = ctx.clock.now();
        match self.state {
            State::Open => {
                if self.inflight.front().is_some_and(|r| now.saturating_sub(r.sent_ns) > timeout_ns) {
                    log::debug!("connection {}: {} requests timed out", self.slot, self.inflight.len());
                    self.close(ctx, ErrorKind::Timeout);
                }
            }
            State::Connecting { since_ns } => {
                if now.saturating_sub(since_ns) > timeout_ns {
                    self.fail(ctx, ErrorKind::Connect);
                }
            }
            State::Hello { since_ns } => {
                if now.saturating_sub(since_ns) > timeout_ns {
                    log::debug!("connection {}: no answer to HELLO", self.slot);
                    self.fail(ctx, ErrorKind::Timeout);
                }
            }
            State::Down { retry_at_ns } if now >= retry_at_ns => self.start_connect(ctx),
            State::Down { .. } => {}
        }
    }

    /// Moves the times of a connection that was down or connecting when the last phase
    /// ended onto the new phase's clock.
    pub fn reset_retry(&mut self) {
        match self.state {
            State::Down { .. } => self.state = State::Down { retry_at_ns: 0 },
            State::Connecting { .. } => self.state = State::Connecting { since_ns: 0 },
            State::Hello { .. } => self.state = State::Hello { since_ns: 0 },
            State::Open => {}
        }
    }

    fn start_connect(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.clock.now();
        let connected = TcpStream::connect(ctx.addr).and_then(|mut stream| {
            ctx.registry.register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match connected {
            Ok(stream) => {
                self.stream = Some(stream);
                self.state = State::Connecting { since_ns: now };
            }
            Err(e) => {
                log::debug!("connect {} failed: {e}", self.slot);
                self.fail(ctx, ErrorKind::Connect);
            }
        }
    }

    fn finish_connect(&mut self, ctx: &mut Ctx<'_>) {
        let Some(stream) = self.stream.as_mut() else { return };
        let failed = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failed {
            log::debug!("connect {} failed: {e}", self.slot);
            self.fail(ctx, ErrorKind::Connect);
            return;
        }
        if let Err(e) = stream.set_nodelay(true) {
            log::warn!("TCP_NODELAY on connection {}: {e}", self.slot);
        }
        log::debug!("connection {} reconnected", self.slot);
        if self.hello.is_some() {
            self.start_hello(ctx);
            return;
        }
        self.state = State::Open;
        self.pump(ctx);
    }
}

fn complete(ctx: &mut Ctx<'_>, req: InFlight, outcome: Outcome<'_>, base_value: &[u8], now: u64) {
    ctx.last_reply_ns = now;
    let miss = match outcome {
        Outcome::Ok(value) => {
            if let Some(verify) = ctx.verify.as_deref_mut() {
                if req.cmd == Cmd::Get
                    && req.expect != 0
                    && !value_matches(value, base_value, req.key, req.expect, verify.nonce)
                {
                    verify.log_mismatch(req.key, req.expect, "held another value");
                    ctx.recorder.record_error(ErrorKind::Verify, 1, now);
                    return;
                }
            }
            false
        }
        Outcome::Miss => {
            if let Some(verify) = ctx.verify.as_deref_mut().filter(|_| req.expect != 0) {
                verify.log_mismatch(req.key, req.expect, "was missing");
                ctx.recorder.record_error(ErrorKind::Verify, 1, now);
                return;
            }
            true
        }
        Outcome::Error(kind) => {
            if let Some(verify) = ctx.verify.as_deref_mut() {
                if req.cmd != Cmd::Get {
                    verify.forget(req.key);
                }
            }
            ctx.recorder.record_error(kind, 1, now);
            return;
        }
    };
    if req.measured {
        ctx.recorder.record_reply(req.cmd, miss, req.intended_ns, req.sent_ns, now);
    }
}

/// Handles every whole fixed frame, up to a refusal.
fn read_frames(
    reader: &mut FrameReader,
    inflight: &mut VecDeque<InFlight>,
    protocol: Protocol,
    ctx: &mut Ctx<'_>,
    base_value: &[u8],
    now: u64,
) -> Result<Flow, ErrorKind> {
    while let Some(bytes) = reader.next_frame() {
        let frame = match Frame::decode(bytes) {
            Ok(frame) => frame,
            Err(_) if inflight.is_empty() => {
                log::warn!("a reply arrived with no request in flight");
                return Err(ErrorKind::Unexpected);
            }
            Err(e) => {
                log::warn!("undecodable reply: {e}");
                return Err(ErrorKind::Decode);
            }
        };
        if handle_frame(&frame, FRAME_LEN, inflight, protocol, ctx, base_value, now)? == Flow::Refused {
            return Ok(Flow::Refused);
        }
    }
    Ok(Flow::Go)
}

/// Handles every whole compact frame, up to a refusal.
fn read_compact(
    reader: &mut CompactReader,
    inflight: &mut VecDeque<InFlight>,
    protocol: Protocol,
    ctx: &mut Ctx<'_>,
    base_value: &[u8],
    now: u64,
) -> Result<Flow, ErrorKind> {
    loop {
        let frame = match reader.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(Flow::Go),
            Err(e) => {
                log::warn!("undecodable reply: {e}");
                return Err(ErrorKind::Decode);
            }
        };
        let len = frame.encoded_len(wire::Framing::Compact);
        if handle_frame(&frame, len, inflight, protocol, ctx, base_value, now)? == Flow::Refused {
            return Ok(Flow::Refused);
        }
    }
}

/// Whether `frame` is the server refusing the connection: BUSY, at its connection limit,
/// which it sends as a connection opens, before reading anything, and then closes the
/// connection (PROTOCOL.md).
fn refuses(frame: &Frame<'_>) -> bool {
    frame.is_reply() && frame.status() == Status::BUSY
}

/// Matches one reply frame, `len` bytes on the wire, to the oldest request in flight. A
/// refusal answers that request, and ends the connection.
fn handle_frame(
    frame: &Frame<'_>,
    len: usize,
    inflight: &mut VecDeque<InFlight>,
    protocol: Protocol,
    ctx: &mut Ctx<'_>,
    base_value: &[u8],
    now: u64,
) -> Result<Flow, ErrorKind> {
    let Some(&req) = inflight.front() else {
        if refuses(frame) {
            // Refused before anything was sent on it: no request to count.
            return Ok(Flow::Refused);
        }
        log::warn!("a reply arrived with no request in flight");
        return Err(ErrorKind::Unexpected);
    };
    if req.measured {
        ctx.recorder.count_received(len);
    }
    let outcome = proto::classify_frame(protocol, req.id, req.cmd, frame);
    if outcome == Outcome::Error(ErrorKind::IdMismatch) {
        log::warn!("reply id {:#x} where {:#x} was expected", frame.id, req.id);
        return Err(ErrorKind::IdMismatch);
    }
    inflight.pop_front();
    complete(ctx, req, outcome, base_value, now);
    Ok(if refuses(frame) { Flow::Refused } else { Flow::Go })
}

/// Handles every complete RESP reply; `replicas` is `--wait`'s N (for the `WAIT` replies).
fn read_resp(
    reader: &mut RespReader,
    inflight: &mut VecDeque<InFlight>,
    replicas: u32,
    ctx: &mut Ctx<'_>,
    base_value: &[u8],
    now: u64,
) -> Result<(), ErrorKind> {
    while reader.start < reader.end {
        let parsed = match proto::parse_resp(&reader.buf[reader.start..reader.end]) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(e) => {
                log::warn!("bad RESP reply: {}", e.0);
                return Err(ErrorKind::Protocol);
            }
        };
        let (reply, used) = parsed;
        reader.start += used;
        let Some(req) = inflight.front_mut() else {
            log::warn!("a reply arrived with no request in flight");
            return Err(ErrorKind::Unexpected);
        };
        if req.measured {
            ctx.recorder.count_received(used);
        }
        if req.waits && !req.write_answered {
            // The write's reply: the operation completes with the WAIT's, which follows.
            req.write_answered = true;
            if let Outcome::Error(kind) = proto::classify_resp(req.cmd, reply) {
                req.write_error = Some(kind);
            }
            continue;
        }
        let req = *req;
        inflight.pop_front();
        let outcome = match (req.waits, req.write_error) {
            (false, _) => proto::classify_resp(req.cmd, reply),
            (true, Some(kind)) => Outcome::Error(kind),
            (true, None) => proto::classify_wait(replicas, reply),
        };
        complete(ctx, req, outcome, base_value, now);
    }
    if reader.start == reader.end {
        reader.start = 0;
        reader.end = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_by_requests_with_warmup() {
        let mut gate = Gate { measure_start_ns: 100, end_ns: None, remaining: Some(2) };
        assert_eq!(gate.admit(50, 50), Admit::Unmeasured);
        assert!(!gate.closed(50));
        assert_eq!(gate.admit(100, 100), Admit::Measured);
        assert_eq!(gate.admit(150, 150), Admit::Measured);
        assert_eq!(gate.admit(160, 160), Admit::Refused);
        assert!(gate.closed(160));
    }

    #[test]
    fn a_stopped_gate_admits_nothing_more() {
        let mut gate = Gate { measure_start_ns: 0, end_ns: None, remaining: Some(100) };
        assert_eq!(gate.admit(10, 10), Admit::Measured);
        gate.stop(20);
        assert!(gate.closed(20));
        assert_eq!(gate.admit(15, 20), Admit::Refused, "intended before the stop, but sending has stopped");
        assert_eq!(gate.admit(20, 20), Admit::Refused);
        let mut timed = Gate { measure_start_ns: 0, end_ns: Some(10), remaining: None };
        timed.stop(50);
        assert_eq!(timed.end_ns, Some(10), "a stop after the end changes nothing");
    }

    #[test]
    fn gate_by_duration() {
        let mut gate = Gate { measure_start_ns: 0, end_ns: Some(1000), remaining: None };
        assert_eq!(gate.admit(999, 999), Admit::Measured);
        assert_eq!(gate.admit(1000, 1000), Admit::Refused);
        assert!(!gate.closed(999));
        assert!(gate.closed(1000));
    }

    /// An open-loop backlog (requests intended before the end, still waiting for a free slot)
    /// is sent late while the phase lasts, and not at all once it has ended: the phase
    /// stops at its duration instead of working the backlog off afterwards.
    #[test]
    fn a_backlog_is_sent_late_but_never_after_the_end() {
        let mut gate = Gate { measure_start_ns: 0, end_ns: Some(1000), remaining: None };
        assert_eq!(gate.admit(100, 900), Admit::Measured, "late, within the phase");
        assert_eq!(gate.admit(100, 1000), Admit::Refused, "due long ago, but the phase is over");
        assert_eq!(gate.admit(999, 5000), Admit::Refused);
        let mut counted = Gate { measure_start_ns: 0, end_ns: None, remaining: Some(1) };
        assert_eq!(counted.admit(100, 1_000_000), Admit::Measured, "-n has no end: all is sent");
    }

    #[test]
    fn verify_values_identify_key_write_and_run() {
        let base = vec![7u8; 40];
        let mut verify = Verify::new(10, 99);
        let mut value = base.clone();
        let first = verify.write(3, &mut value);
        assert!(value_matches(&value, &base, 3, first, 99));
        assert!(!value_matches(&value, &base, 4, first, 99), "other key");
        assert!(!value_matches(&value, &base, 3, first + 1, 99), "other write");
        assert!(!value_matches(&value, &base, 3, first, 98), "other run");
        assert!(!value_matches(&value[..39], &base, 3, first, 99), "truncated");
        let second = verify.write(3, &mut value);
        assert_ne!(first, second);
        assert_eq!(verify.expected(3), second);
        verify.forget(3);
        assert_eq!(verify.expected(3), 0);
    }

    #[test]
    fn resp_reader_grows_for_a_reply_longer_than_its_buffer() {
        let mut r = RespReader { buf: vec![0; 8], start: 0, end: 0 };
        let reply = b"$20\r\n01234567890123456789\r\n";
        let mut fed = 0;
        while fed < reply.len() {
            let room = r.spare(4);
            let n = room.len().min(reply.len() - fed);
            room[..n].copy_from_slice(&reply[fed..fed + n]);
            r.end += n;
            fed += n;
        }
        assert_eq!(
            proto::parse_resp(&r.buf[r.start..r.end]),
            Ok(Some((proto::RespValue::Bulk(b"01234567890123456789"), reply.len())))
        );
    }
}
