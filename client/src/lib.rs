//! A small blocking client for Tandem, for one server or for a replicated cluster.
//!
//! It is the one client that `tandem-cli` and the integration tests share. Every call sends
//! one or more frames (4096 bytes each, unless compact framing is on: see below) and waits for
//! the replies; [`Client::pipeline`] sends many requests before reading their replies.
//!
//! ```no_run
//! use std::time::Duration;
//! let mut client = client::Client::connect("127.0.0.1:7070", Duration::from_secs(1))?;
//! client.put(b"fruit", b"apple")?;
//! assert_eq!(client.get(b"fruit")?.map(|v| v.data), Some(b"apple".to_vec()));
//! # Ok::<(), client::ClientError>(())
//! ```
//!
//! # One server
//!
//! [`Client::connect`] and [`Client::connect_with`] talk to one server over one connection.
//! After an I/O error, a timeout or a protocol error the connection's state is unknown (a reply
//! may still be in flight): the client refuses further calls with [`ClientError::Broken`]
//! until [`Client::reconnect`]. [`Client::is_connected`] tells, without sending anything,
//! whether the server has closed the connection meanwhile (a restart, an idle timeout).
//!
//! # Framing
//!
//! Frames are fixed 4096-byte frames by default, which every server understands.
//! [`Options::framing`] (or [`Options::with_framing`]) set to [`Framing::Compact`] makes the
//! client send HELLO as the first frame of every connection it opens (the first, after
//! [`Client::reconnect`], and in cluster mode each one to any server), alone, and wait for
//! the answer before sending anything else, AUTH included. If the server agrees, requests and
//! replies on that connection, pipelines included, are compact frames: no padding, so a small
//! request moves tens of bytes instead of 4096. A server that predates HELLO (it answers
//! UNKNOWN_COMMAND) or that chooses fixed framing keeps the connection fixed, and the client
//! goes on with fixed frames without complaint. [`Client::framing`] says which framing the
//! current connection got.
//!
//! ```no_run
//! use client::{Client, Framing, Options};
//! let options = Options::default().with_framing(Framing::Compact);
//! let mut client = Client::connect_with("127.0.0.1:7070", options)?;
//! client.put(b"fruit", b"apple")?;
//! println!("talking {:?} frames", client.framing());
//! # Ok::<(), client::ClientError>(())
//! ```
//!
//! # A cluster
//!
//! [`Client::connect_cluster`] asks the coordinators for the view, sends each operation to its
//! primary and retries, within [`Options::op_timeout`], whatever did not certainly complete:
//! a server that is not the primary (WRONG_SERVER: follow its hint or ask for the view again),
//! one that cannot serve now (UNAVAILABLE), lost connections and timeouts. A retry reuses the
//! request id of the first attempt, so a write that did reach a primary is not applied twice:
//! servers remember, per client id, the newest request id and its reply.
//!
//! Every result says which of three things happened ([`Outcome`], from
//! [`ClientError::outcome`] or [`Outcome::of`]): done, failed and certainly not applied, or
//! unknown (a write that may have been applied before the deadline passed).
//!
//! ```no_run
//! use client::{Client, Options, Outcome};
//! let coordinators = ["127.0.0.1:7100".parse().unwrap()];
//! let mut client = Client::connect_cluster(&coordinators, Options::default())?;
//! match client.put(b"fruit", b"apple") {
//!     Ok(version) => println!("stored as version {version}"),
//!     Err(e) if e.outcome() == Outcome::Unknown => println!("may or may not be stored: {e}"),
//!     Err(e) => println!("not stored: {e}"),
//! }
//! # Ok::<(), client::ClientError>(())
//! ```

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use wire::cluster::{Member, View};
pub use wire::Framing;
use wire::{
    Command, CompactReader, DecodeError, EncodeError, Frame, FrameReader, Request, Status, FRAME_LEN,
    HELLO_COMPACT, HELLO_FIXED,
};

/// Everything that can go wrong talking to a server.
#[derive(Debug)]
pub enum ClientError {
    /// No address could be connected to.
    Connect {
        /// The address given.
        addr: String,
        /// The last failure.
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    Io(io::Error),
    /// No reply within the I/O timeout.
    Timeout,
    /// The server closed the connection.
    Closed,
    /// The server's bytes are not a valid frame.
    Protocol(DecodeError),
    /// A reply that does not answer the request at the head of the queue.
    UnexpectedReply {
        /// The id the client waited for.
        expected: u64,
        /// The id that came.
        got: u64,
    },
    /// The request cannot be encoded (key or value too large for a frame).
    Encode(EncodeError),
    /// The server answered with an error status.
    Server {
        /// The status.
        status: Status,
        /// The server's reason, if it gave one.
        message: String,
    },
    /// A conditional write found another version.
    Conflict {
        /// The key's current version (0 = absent).
        current: u64,
    },
    /// An earlier failure left the connection in an unknown state.
    Broken,
    /// Cluster mode: the operation's deadline passed after a write may have reached a server.
    /// It may or may not have been applied; reading the key tells.
    Unknown {
        /// The last failure seen before the deadline.
        last: String,
    },
    /// Cluster mode: the operation could not be completed before its deadline (no primary,
    /// no coordinator answering, servers unreachable), and it was certainly not applied: a
    /// read, or a write no server ever received whole.
    Unavailable {
        /// The last failure seen before the deadline.
        last: String,
    },
}

/// What an operation's result means for its effect, so callers can decide what to do without
/// matching every [`ClientError`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It completed; the result holds its answer (a value, a version, "not found").
    Done,
    /// It did not complete and certainly had no effect: a refusal (CONFLICT, TOO_LARGE,
    /// BAD_REQUEST, UNAUTHORIZED, ...), a request that never left the client, or a read.
    Failed,
    /// A write that may or may not have been applied.
    Unknown,
}

impl Outcome {
    /// The outcome of a client call's result.
    pub fn of<T>(result: &Result<T>) -> Outcome {
        match result {
            Ok(_) => Outcome::Done,
            Err(e) => e.outcome(),
        }
    }
}

/// The start of the reason a server gives when it refuses a request id older than the newest
/// one it saw from the same client id: the older request's fate is unknown to the client.
pub const STALE_REQUEST_ID: &str = "stale request id";

impl ClientError {
    /// Whether the failed operation certainly had no effect ([`Outcome::Failed`]) or may have
    /// had one ([`Outcome::Unknown`]).
    ///
    /// [`ClientError::Unknown`], a "stale request id" refusal and INTERNAL (the server failed
    /// after executing) are unknown. So are the transport failures a one-server client
    /// reports as they are ([`ClientError::Timeout`], [`ClientError::Closed`],
    /// [`ClientError::Io`], [`ClientError::Protocol`], [`ClientError::UnexpectedReply`]): the
    /// request may have reached the server, which matters for a write and not for a read. In
    /// cluster mode reads never end in an unknown outcome: they report
    /// [`ClientError::Unavailable`] instead. Everything else is a refusal or a request that
    /// was never sent whole, hence failed.
    pub fn outcome(&self) -> Outcome {
        match self {
            ClientError::Unknown { .. }
            | ClientError::Timeout
            | ClientError::Closed
            | ClientError::Io(_)
            | ClientError::Protocol(_)
            | ClientError::UnexpectedReply { .. } => Outcome::Unknown,
            ClientError::Server { status: Status::INTERNAL, .. } => Outcome::Unknown,
            ClientError::Server { status: Status::BAD_REQUEST, message }
                if message.starts_with(STALE_REQUEST_ID) =>
            {
                Outcome::Unknown
            }
            ClientError::Connect { .. }
            | ClientError::Encode(_)
            | ClientError::Server { .. }
            | ClientError::Conflict { .. }
            | ClientError::Broken
            | ClientError::Unavailable { .. } => Outcome::Failed,
        }
    }

    /// The reason without the variant's own wording, for building the next `last`.
    fn reason(&self) -> String {
        match self {
            ClientError::Unknown { last } | ClientError::Unavailable { last } => last.clone(),
            e => e.to_string(),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            ClientError::Io(e) => write!(f, "connection failed: {e}"),
            ClientError::Timeout => f.write_str("timed out waiting for the server"),
            ClientError::Closed => f.write_str("the server closed the connection"),
            ClientError::Protocol(e) => write!(f, "bad reply from server: {e}"),
            ClientError::UnexpectedReply { expected, got } => {
                write!(f, "reply for request {got} while waiting for {expected}")
            }
            ClientError::Encode(e) => write!(f, "{e}"),
            ClientError::Server { status, message } if message.is_empty() => {
                write!(f, "server error {status}")
            }
            ClientError::Server { status, message } => write!(f, "server error {status}: {message}"),
            ClientError::Conflict { current } => write!(f, "version conflict: current version is {current}"),
            ClientError::Broken => f.write_str("connection unusable after an earlier error; reconnect"),
            ClientError::Unknown { last } => {
                write!(f, "outcome unknown, the write may or may not have been applied: {last}")
            }
            ClientError::Unavailable { last } => write!(f, "gave up: {last}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } | ClientError::Io(source) => Some(source),
            ClientError::Protocol(e) => Some(e),
            ClientError::Encode(e) => Some(e),
            _ => None,
        }
    }
}

/// Result of client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A value read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The bytes.
    pub data: Vec<u8>,
    /// Its version (use it for conditional writes).
    pub version: u64,
}

/// One request of a [`Client::pipeline`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// GET key.
    Get(&'a [u8]),
    /// PUT key value.
    Put(&'a [u8], &'a [u8]),
    /// DELETE key.
    Delete(&'a [u8]),
    /// APPEND key value.
    Append(&'a [u8], &'a [u8]),
    /// PING.
    Ping,
}

impl Op<'_> {
    /// Checks that the op fits in a frame (key and value within the limits), without
    /// sending anything: [`Client::pipeline`] refuses a whole batch holding one that does
    /// not, so check each op first to set the bad ones aside.
    ///
    /// # Errors
    /// [`ClientError::Encode`] naming the limit it breaks.
    pub fn check(&self) -> Result<()> {
        request_for(*self, 0).to_frame(0).validate().map_err(ClientError::Encode)
    }
}

/// The server's answer to one pipelined request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply's status.
    pub status: Status,
    /// Its value (GET's value, or an error's reason).
    pub value: Vec<u8>,
    /// Its timestamp (the version read or written).
    pub version: u64,
}

/// Connection settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long to wait for the TCP connection (in cluster mode: per attempt, and never past
    /// the operation's deadline).
    pub connect_timeout: Duration,
    /// How long to wait for any read or write; `None` waits forever (in cluster mode: per
    /// attempt, and never past the operation's deadline, so a hung server is given up on and
    /// the view asked again).
    pub io_timeout: Option<Duration>,
    /// Most requests a pipeline keeps unanswered at once, so neither side's buffers fill up.
    pub window: usize,
    /// Cluster mode: the deadline of one whole operation, retries included. Past it a read
    /// or an unsent write fails, and a write that may have arrived is reported unknown.
    pub op_timeout: Duration,
    /// The client id writes carry for at-most-once execution; `None` (or 0) draws a random
    /// one. Give the same id again only to a client whose request ids keep increasing after
    /// the previous one's, e.g. the same program restarted (request ids start at the Unix
    /// time in microseconds).
    pub client_id: Option<u64>,
    /// The framing to ask for on every connection the client opens (see the crate docs):
    /// [`Framing::Fixed`] (the default) sends no HELLO; [`Framing::Compact`] sends HELLO
    /// first and uses compact frames if the server agrees, fixed ones otherwise.
    /// [`Client::framing`] tells what a connection got.
    pub framing: Framing,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(2),
            io_timeout: Some(Duration::from_secs(10)),
            window: 64,
            op_timeout: Duration::from_secs(5),
            client_id: None,
            framing: Framing::Fixed,
        }
    }
}

impl Options {
    /// These options, asking for `framing` on every new connection ([`Options::framing`]).
    #[must_use]
    pub fn with_framing(self, framing: Framing) -> Options {
        Options { framing, ..self }
    }
}

/// Shortest wait handed to a socket: the standard library refuses a zero timeout.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// First pause between cluster attempts; it doubles up to [`BACKOFF_MAX`]. Short, because a
/// failover takes a lease period anyway and a client should notice the new primary quickly.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
/// Longest pause between cluster attempts.
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How long to wait for a coordinator's answer before asking again (doubles up to
/// [`VIEW_RESEND_MAX`]): datagrams get lost, and a coordinator answers in well under this.
const VIEW_RESEND_FIRST: Duration = Duration::from_millis(50);
/// Longest wait before asking the coordinators again.
const VIEW_RESEND_MAX: Duration = Duration::from_millis(500);

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

/// The first request id of a client: the Unix time in microseconds, so that a restarted
/// program reusing its client id still sends ids above the ones servers remember for it
/// (they refuse lower ones as stale).
fn first_request_id() -> u64 {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    u64::try_from(micros).unwrap_or(u64::MAX / 2).max(1)
}

fn take(next: &mut u64) -> u64 {
    let id = *next;
    *next = next.wrapping_add(1).max(1);
    id
}

/// What is left until `deadline`, if enough to start anything.
fn left(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| *d >= MIN_WAIT)
}

/// A `host:port` a view or a hint names, resolved.
fn resolve(addr: &str) -> Option<SocketAddr> {
    addr.trim().to_socket_addrs().ok()?.next()
}

/// The status of a reply as the caller sees it: OK and NOT_FOUND are answers, the rest errors.
fn into_result(reply: Reply) -> Result<Reply> {
    match reply.status {
        Status::OK | Status::NOT_FOUND => Ok(reply),
        Status::CONFLICT => Err(ClientError::Conflict { current: reply.version }),
        status => {
            Err(ClientError::Server { status, message: String::from_utf8_lossy(&reply.value).into_owned() })
        }
    }
}

/// One TCP connection and the ids it waits for.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// How frames are laid out in both directions: fixed until a HELLO reply says otherwise.
    framing: Framing,
    /// Replies while the connection is fixed.
    reader: FrameReader,
    /// Replies once it is compact (allocates nothing until then).
    compact: CompactReader,
    out: Vec<u8>,
    /// Ids sent and not yet answered, oldest first.
    outstanding: VecDeque<u64>,
    broken: bool,
}

/// A reply's header fields and owned contents, taken out of the read buffer.
struct Received {
    id: u64,
    command: Command,
    is_reply: bool,
    reply: Reply,
}

impl Received {
    fn of(frame: &Frame<'_>) -> Received {
        Received {
            id: frame.id,
            command: frame.command,
            is_reply: frame.is_reply(),
            reply: Reply { status: frame.status(), value: frame.value.to_vec(), version: frame.timestamp },
        }
    }
}

impl Conn {
    fn open(peer: SocketAddr, connect_timeout: Duration, io_timeout: Option<Duration>) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&peer, connect_timeout.max(MIN_WAIT))?;
        stream.set_nodelay(true)?;
        let conn = Conn {
            stream,
            peer,
            framing: Framing::Fixed,
            reader: FrameReader::with_capacity(1),
            compact: CompactReader::new(),
            out: Vec::with_capacity(FRAME_LEN),
            outstanding: VecDeque::new(),
            broken: false,
        };
        conn.set_io_timeout(io_timeout)?;
        Ok(conn)
    }

    fn set_io_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = timeout.map(|t| t.max(MIN_WAIT));
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    /// Whether the connection can take a request, as far as can be told without sending
    /// one: not broken, and the server has neither closed it (an idle timeout, a restart)
    /// nor sent anything unasked. Marks it broken if not. With requests outstanding it is
    /// not probed (their replies are what may be waiting).
    fn probe(&mut self) -> bool {
        if self.broken {
            return false;
        }
        if !self.outstanding.is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        let alive = self.reader.buffered() == 0
            && self.compact.buffered() == 0
            && self.stream.set_nonblocking(true).is_ok()
            && match self.stream.peek(&mut byte) {
                Err(e) => matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted),
                // 0: closed by the server; more: bytes nobody asked for, e.g. a last BUSY.
                Ok(_) => false,
            };
        let alive = self.stream.set_nonblocking(false).is_ok() && alive;
        self.broken = !alive;
        alive
    }

    fn check(&self) -> Result<()> {
        if self.broken {
            Err(ClientError::Broken)
        } else {
            Ok(())
        }
    }

    fn fail(&mut self, e: io::Error) -> ClientError {
        self.broken = true;
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                ClientError::Closed
            }
            _ => ClientError::Io(e),
        }
    }

    /// Writes `out` whole. If this fails while sending one request, the server holds at most
    /// part of its frame, which it never executes: the request certainly had no effect.
    fn write_out(&mut self) -> Result<()> {
        let out = std::mem::take(&mut self.out);
        let written = self.stream.write_all(&out);
        self.out = out;
        written.map_err(|e| self.fail(e))
    }

    /// Appends `frame` to `out` in `framing`.
    #[inline]
    fn encode(framing: Framing, frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<()> {
        match framing {
            Framing::Fixed => frame.encode_to(out),
            Framing::Compact => frame.encode_compact_to(out),
        }
        .map_err(ClientError::Encode)
    }

    /// Sends one request.
    fn send(&mut self, request: &Request<'_>, id: u64) -> Result<()> {
        self.check()?;
        self.out.clear();
        Conn::encode(self.framing, &request.to_frame(id), &mut self.out)?;
        self.write_out()?;
        self.outstanding.push_back(id);
        Ok(())
    }

    /// Reads what the socket has into `room`: `Some(count)` (0 after an interrupted read),
    /// `None` when the server closed the connection.
    fn fill(stream: &mut TcpStream, room: &mut [u8]) -> io::Result<Option<usize>> {
        match stream.read(room) {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// The next reply frame in the connection's framing, taken out of the read buffer.
    fn receive(&mut self) -> Result<Received> {
        match self.framing {
            Framing::Fixed => {
                while !self.reader.has_frame() {
                    match Conn::fill(&mut self.stream, self.reader.spare(FRAME_LEN)) {
                        Ok(Some(n)) => self.reader.commit(n),
                        Ok(None) => {
                            self.broken = true;
                            return Err(ClientError::Closed);
                        }
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                let Some(bytes) = self.reader.next_frame() else { return Err(ClientError::Closed) };
                Frame::decode(bytes).map(|frame| Received::of(&frame)).map_err(|e| {
                    self.broken = true;
                    ClientError::Protocol(e)
                })
            }
            Framing::Compact => loop {
                let decoded = match self.compact.next_frame() {
                    Ok(Some(frame)) => Some(Ok(Received::of(&frame))),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                };
                match decoded {
                    Some(Ok(received)) => return Ok(received),
                    // A reply the client cannot read: even when the stream's boundary is
                    // intact (not fatal for compact framing), the request it answers is lost.
                    Some(Err(e)) => {
                        self.broken = true;
                        log::debug!(
                            "bad compact reply from {} ({}): {e}",
                            self.peer,
                            if e.is_fatal_for(Framing::Compact) { "stream lost" } else { "frame lost" }
                        );
                        return Err(ClientError::Protocol(e));
                    }
                    None => match Conn::fill(&mut self.stream, self.compact.spare(FRAME_LEN)) {
                        Ok(Some(n)) => self.compact.commit(n),
                        Ok(None) => {
                            self.broken = true;
                            return Err(ClientError::Closed);
                        }
                        Err(e) => return Err(self.fail(e)),
                    },
                }
            },
        }
    }

    /// Reads the reply to the oldest outstanding request.
    fn read_reply(&mut self) -> Result<Reply> {
        let expected = self.outstanding.front().copied().unwrap_or(0);
        let Received { id, command, is_reply, reply } = self.receive()?;
        let untrusted = id == 0 && command == Command(0);
        if !is_reply || (id != expected && !untrusted) {
            self.broken = true;
            return Err(ClientError::UnexpectedReply { expected, got: id });
        }
        self.outstanding.pop_front();
        // BUSY closes the connection. So does any refusal of a frame whose header could not be
        // trusted on a compact connection: the server lost the frame boundary.
        if untrusted && (reply.status == Status::BUSY || self.framing == Framing::Compact) {
            self.broken = true;
            return Err(ClientError::Server {
                status: reply.status,
                message: String::from_utf8_lossy(&reply.value).into_owned(),
            });
        }
        Ok(reply)
    }

    /// Asks for `wanted` with a HELLO (request id from `next_id`) if it is not the fixed
    /// framing every connection starts in, sent alone, and switches to what the server chose
    /// once its reply is in: the server may predate HELLO, and then anything sent behind it
    /// in compact framing would be refused. A server that answers UNKNOWN_COMMAND (it
    /// predates HELLO) or chooses fixed framing leaves the connection fixed.
    ///
    /// # Errors
    /// Connection failures, a BUSY refusal, or a reply naming a framing this client does not
    /// know (the connection is then unusable).
    fn negotiate(&mut self, wanted: Framing, next_id: &mut u64) -> Result<()> {
        let code = match wanted {
            Framing::Fixed => return Ok(()),
            Framing::Compact => HELLO_COMPACT,
        };
        let id = take(next_id);
        self.send(&Request::Hello { framing: code }, id)?;
        let reply = self.read_reply()?;
        match (reply.status, reply.value.first().copied()) {
            (Status::OK, Some(HELLO_COMPACT)) => {
                // Whatever the server sent behind its reply is already compact.
                self.compact.clear();
                self.compact.push(self.reader.pending());
                self.reader.clear();
                self.reader.release();
                self.framing = Framing::Compact;
                log::debug!("{}: compact framing", self.peer);
            }
            (Status::OK, Some(HELLO_FIXED)) => log::debug!("{}: the server chose fixed framing", self.peer),
            (Status::OK, _) => {
                self.broken = true;
                return Err(ClientError::Protocol(DecodeError::BadRequest {
                    id,
                    command: Command::HELLO,
                    reason: "the HELLO reply names no framing this client knows",
                }));
            }
            (Status::UNKNOWN_COMMAND, _) => {
                log::debug!("{}: the server predates HELLO; fixed framing", self.peer);
            }
            (status, _) => {
                // Only an OK switches the framing: the connection is still fixed and usable.
                log::warn!(
                    "{}: HELLO refused ({status}: {}); fixed framing",
                    self.peer,
                    String::from_utf8_lossy(&reply.value)
                );
            }
        }
        Ok(())
    }

    /// One request, one reply; error statuses become `Err`.
    fn call(&mut self, request: &Request<'_>, id: u64) -> Result<Reply> {
        self.send(request, id)?;
        into_result(self.read_reply()?)
    }
}

/// Sends `GET_VIEW` with request id `id` to every coordinator, again with growing pauses while
/// none answers, and returns the view of the first reply that carries `id`.
fn ask_coordinators(
    sockets: &mut Vec<UdpSocket>,
    coordinators: &[SocketAddr],
    id: u64,
    deadline: Instant,
) -> Result<View> {
    if coordinators.is_empty() {
        return Err(ClientError::Unavailable { last: "no coordinator address given".into() });
    }
    // One socket per address family the coordinators use, bound once and kept.
    for wants_v6 in [false, true] {
        let needed = coordinators.iter().any(|a| a.is_ipv6() == wants_v6);
        let bound = sockets.iter().any(|s| s.local_addr().is_ok_and(|a| a.is_ipv6() == wants_v6));
        if needed && !bound {
            let any: SocketAddr = if wants_v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("literal");
            let socket = UdpSocket::bind(any).map_err(|e| ClientError::Unavailable {
                last: format!("cannot open a UDP socket to ask the coordinator: {e}"),
            })?;
            sockets.push(socket);
        }
    }
    let mut request = Vec::new();
    wire::cluster::encode_get_view(id, 0, &mut request);
    let mut buf = vec![0u8; 2 * FRAME_LEN];
    let mut wait = VIEW_RESEND_FIRST;
    let asked = || coordinators.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ");
    loop {
        for addr in coordinators {
            let socket = sockets.iter().find(|s| s.local_addr().is_ok_and(|a| a.is_ipv6() == addr.is_ipv6()));
            if let Some(Err(e)) = socket.map(|s| s.send_to(&request, addr)) {
                log::debug!("GET_VIEW to {addr} failed: {e}");
            }
        }
        let round_end = (Instant::now() + wait).min(deadline);
        'round: loop {
            for socket in sockets.iter() {
                let Some(remaining) = round_end.checked_duration_since(Instant::now()) else { break 'round };
                // With two sockets, take turns in short slices so neither starves the other.
                let slice =
                    if sockets.len() > 1 { remaining.min(Duration::from_millis(5)) } else { remaining };
                if socket.set_read_timeout(Some(slice.max(MIN_WAIT))).is_err() {
                    continue;
                }
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => match wire::cluster::decode_view_reply(&buf[..n]) {
                        Ok((got, view)) if got == id => return Ok(view),
                        Ok((got, _)) => log::debug!("ignoring a view reply to request {got} from {from}"),
                        Err(e) => log::debug!("ignoring a datagram from {from}: {e}"),
                    },
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                    Err(e) => {
                        // E.g. an ICMP "port unreachable" reported on the socket: nobody there
                        // yet. Keep waiting for the others, without spinning.
                        log::debug!("waiting for a view: {e}");
                        std::thread::sleep(slice.min(Duration::from_millis(5)));
                    }
                }
            }
        }
        if left(deadline).is_none() {
            return Err(ClientError::Unavailable {
                last: format!("no coordinator answered (asked {})", asked()),
            });
        }
        wait = (wait * 2).min(VIEW_RESEND_MAX);
    }
}

/// Asks the coordinators for the current view (the first valid answer), resending while none
/// answers, for at most `timeout`.
///
/// # Errors
/// [`ClientError::Unavailable`] if no coordinator answered in time (or none was given).
pub fn fetch_view(coordinators: &[SocketAddr], timeout: Duration) -> Result<View> {
    ask_coordinators(&mut Vec::new(), coordinators, first_request_id(), Instant::now() + timeout)
}

/// What a cluster-mode client knows about the cluster.
#[derive(Debug)]
struct Cluster {
    coordinators: Vec<SocketAddr>,
    /// UDP sockets for asking coordinators, one per address family, bound on first use.
    sockets: Vec<UdpSocket>,
    /// The newest view received.
    view: Option<View>,
    /// The view is known to be out of date: ask again before trusting it.
    stale: bool,
    next_view_request: u64,
    /// Where a WRONG_SERVER reply pointed: tried once before the view.
    hint: Option<SocketAddr>,
    /// The token to present on every new connection.
    token: Option<Vec<u8>>,
}

impl Cluster {
    fn refresh(&mut self, deadline: Instant) -> Result<()> {
        let id = take(&mut self.next_view_request);
        let view = ask_coordinators(&mut self.sockets, &self.coordinators, id, deadline)?;
        if self.view.as_ref().is_none_or(|old| old.num != view.num) {
            let primary =
                view.primary.as_ref().map_or("none".to_string(), |p| format!("{}@{}", p.id, p.addr));
            log::debug!("view {}: primary {primary}", view.num);
        }
        self.view = Some(view);
        self.stale = false;
        Ok(())
    }

    /// The primary's address in the view held.
    fn primary(&mut self) -> Result<SocketAddr> {
        let view = self.view.as_ref().ok_or(ClientError::Unavailable { last: "no view yet".into() })?;
        let found = match &view.primary {
            None if view.waiting.is_empty() => Err(format!("view {} has no primary", view.num)),
            None => Err(format!("view {} has no primary: {}", view.num, view.waiting)),
            Some(p) => {
                resolve(&p.addr).ok_or_else(|| format!("cannot resolve the primary's address {:?}", p.addr))
            }
        };
        found.map_err(|last| {
            self.stale = true;
            ClientError::Unavailable { last }
        })
    }
}

/// One cluster-mode attempt at a request.
enum Attempt {
    /// A server answered.
    Reply(Reply),
    /// It failed before the server had the whole request: certainly not executed.
    NotSent(ClientError),
    /// It was sent and no valid reply came: it may have been executed.
    Lost(ClientError),
    /// A failure retrying cannot mend (a wrong token); the request was not sent.
    Fatal(ClientError),
}

/// A blocking client: one connection to one server, or to a cluster's current primary.
#[derive(Debug)]
pub struct Client {
    /// The connection; in cluster mode `None` until a primary is found again.
    conn: Option<Conn>,
    /// The server connected to most recently.
    peer: SocketAddr,
    client_id: u64,
    next_id: u64,
    options: Options,
    /// `Some` in cluster mode.
    cluster: Option<Box<Cluster>>,
    /// The framing of the connection opened most recently.
    framing: Framing,
}

impl Client {
    /// Connects with default options and the given connect timeout.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if no resolved address accepts the connection in time.
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Display, timeout: Duration) -> Result<Client> {
        Client::connect_with(addr, Options { connect_timeout: timeout, ..Options::default() })
    }

    /// Connects to one server with explicit options (with [`Framing::Compact`] asked for,
    /// negotiates it before returning).
    ///
    /// # Errors
    /// [`ClientError::Connect`] if no resolved address accepts the connection in time; with
    /// compact framing asked for, the failures of the HELLO exchange.
    pub fn connect_with(addr: impl ToSocketAddrs + std::fmt::Display, options: Options) -> Result<Client> {
        let name = addr.to_string();
        let failed = |source| ClientError::Connect { addr: name.clone(), source };
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "the address resolved to nothing");
        for peer in addr.to_socket_addrs().map_err(failed)? {
            match Conn::open(peer, options.connect_timeout, options.io_timeout) {
                Ok(conn) => {
                    let mut client = Client::new(None, peer, options, None);
                    client.install(conn)?;
                    return Ok(client);
                }
                Err(e) => last = e,
            }
        }
        Err(failed(last))
    }

    /// A cluster client: asks `coordinators` for the view and connects to its primary now,
    /// retrying until [`Options::op_timeout`], so that a cluster that cannot be reached shows
    /// at once. Every operation then follows the primary on its own (see the crate docs).
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] if no primary could be reached in time (or no coordinator
    /// was given).
    pub fn connect_cluster(coordinators: &[SocketAddr], options: Options) -> Result<Client> {
        let Some(&first) = coordinators.first() else {
            return Err(ClientError::Unavailable { last: "no coordinator address given".into() });
        };
        let cluster = Cluster {
            coordinators: coordinators.to_vec(),
            sockets: Vec::new(),
            view: None,
            stale: true,
            next_view_request: first_request_id(),
            hint: None,
            token: None,
        };
        let mut client = Client::new(None, first, options, Some(Box::new(cluster)));
        client.find_primary(Instant::now() + options.op_timeout)?;
        Ok(client)
    }

    fn new(conn: Option<Conn>, peer: SocketAddr, options: Options, cluster: Option<Box<Cluster>>) -> Client {
        Client {
            conn,
            peer,
            client_id: options.client_id.filter(|&id| id != 0).unwrap_or_else(|| random_u64() | 1),
            next_id: first_request_id(),
            options: Options { window: options.window.max(1), ..options },
            cluster,
            framing: Framing::Fixed,
        }
    }

    /// Negotiates the framing asked for on a new connection (see [`Conn::negotiate`]) and
    /// makes it the client's connection.
    fn install(&mut self, mut conn: Conn) -> Result<()> {
        conn.negotiate(self.options.framing, &mut self.next_id)?;
        self.framing = conn.framing;
        self.conn = Some(conn);
        Ok(())
    }

    /// The framing the client's connection uses: [`Framing::Compact`] only if
    /// [`Options::framing`] asked for it and the server agreed. Without a connection (in
    /// cluster mode between two), the framing of the last one; [`Framing::Fixed`] before any.
    pub fn framing(&self) -> Framing {
        self.conn.as_ref().map_or(self.framing, |c| c.framing)
    }

    /// The server's address; in cluster mode, the server connected to most recently (the
    /// primary, as far as the client knows).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// This client's id, sent with every write for at-most-once execution of retries. It is
    /// the same for the client's whole life, reconnections included.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Cluster mode: the newest view received from a coordinator. `None` for one server.
    pub fn view(&self) -> Option<&View> {
        self.cluster.as_ref().and_then(|c| c.view.as_ref())
    }

    /// Whether this client follows a cluster's primary ([`Client::connect_cluster`]).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Whether the client holds a connection that can take a request, as far as can be told
    /// without sending one: there is one, no earlier failure broke it, and the server has
    /// not closed it (after a restart or an idle timeout, say) or sent anything unasked. A
    /// connection found closed becomes broken: [`Client::reconnect`] before the next call
    /// (in cluster mode the next operation connects again by itself).
    pub fn is_connected(&mut self) -> bool {
        self.conn.as_mut().is_some_and(Conn::probe)
    }

    /// Opens a new connection, keeping the client id and the request ids going upward (so
    /// at-most-once keeps working across it), and negotiating [`Options::framing`] on it
    /// again. One server: to the same address, which clears [`ClientError::Broken`]; present
    /// the token again with [`Client::auth`] if the server needs one. Cluster mode: to the
    /// primary of a freshly asked view (the token is presented again by itself).
    ///
    /// # Errors
    /// [`ClientError::Connect`] (one server; or the failures of the HELLO exchange) or
    /// [`ClientError::Unavailable`] (cluster).
    pub fn reconnect(&mut self) -> Result<()> {
        self.conn = None;
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.stale = true;
            return self.find_primary(Instant::now() + self.options.op_timeout);
        }
        let conn = Conn::open(self.peer, self.options.connect_timeout, self.options.io_timeout)
            .map_err(|source| ClientError::Connect { addr: self.peer.to_string(), source })?;
        self.install(conn)
    }

    /// Presents the server's token; required first when the server has one. In cluster mode
    /// the client also keeps it and presents it on every connection it opens later.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `UNAUTHORIZED` for a wrong token (the server then
    /// closes the connection).
    pub fn auth(&mut self, token: &[u8]) -> Result<()> {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.token = Some(token.to_vec());
            let id = take(&mut self.next_id);
            let Some(conn) = self.conn.as_mut() else { return Ok(()) };
            let presented = conn.call(&Request::Auth { token }, id).map(drop);
            if presented.is_err() {
                // A refused token closes the connection: never send a write into it.
                self.conn = None;
            }
            return presented;
        }
        self.call(Request::Auth { token }).map(drop)
    }

    /// Round trip with no effect.
    ///
    /// # Errors
    /// Connection or protocol failures.
    pub fn ping(&mut self) -> Result<()> {
        self.call(Request::Ping { payload: b"" }).map(drop)
    }

    /// Reads a key; `None` if absent.
    ///
    /// # Errors
    /// Connection, protocol or server failures.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        let reply = self.call(Request::Get { key })?;
        Ok((reply.status == Status::OK).then_some(Value { data: reply.value, version: reply.version }))
    }

    /// Writes a key; returns the new version.
    ///
    /// # Errors
    /// Connection, protocol or server failures (`TOO_LARGE`, `STORAGE_ERROR`, ...).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64> {
        self.put_if(key, value, 0)
    }

    /// Writes a key only if its current version is `expected`; 0 writes unconditionally (an
    /// absent key has version 0, so no condition can require absence).
    ///
    /// # Errors
    /// [`ClientError::Conflict`] with the current version if it differs.
    pub fn put_if(&mut self, key: &[u8], value: &[u8], expected: u64) -> Result<u64> {
        let request = Request::Put { key, value, client_id: self.client_id, expected_version: expected };
        self.call(request).map(|r| r.version)
    }

    /// Removes a key; returns whether it existed.
    ///
    /// # Errors
    /// Connection, protocol or server failures.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        self.delete_if(key, 0).map(|deleted| deleted.is_some())
    }

    /// Removes a key only if its current version is `expected` (0 = unconditionally);
    /// returns the version of the delete, or `None` if the key was absent.
    ///
    /// # Errors
    /// [`ClientError::Conflict`] with the current version if it differs.
    pub fn delete_if(&mut self, key: &[u8], expected: u64) -> Result<Option<u64>> {
        let request = Request::Delete { key, client_id: self.client_id, expected_version: expected };
        let reply = self.call(request)?;
        Ok((reply.status == Status::OK).then_some(reply.version))
    }

    /// Appends to a key's value, creating it if absent; returns the new version.
    ///
    /// # Errors
    /// `TOO_LARGE` if the result would not fit in a frame; connection or protocol failures.
    pub fn append(&mut self, key: &[u8], value: &[u8]) -> Result<u64> {
        self.append_if(key, value, 0)
    }

    /// Appends only if the key's current version is `expected` (0 = unconditionally);
    /// returns the new version.
    ///
    /// # Errors
    /// [`ClientError::Conflict`] with the current version if it differs; as [`Client::append`].
    pub fn append_if(&mut self, key: &[u8], value: &[u8], expected: u64) -> Result<u64> {
        let request = Request::Append { key, value, client_id: self.client_id, expected_version: expected };
        self.call(request).map(|r| r.version)
    }

    /// The server's counters, in the order it sent them (cluster mode: the primary's).
    ///
    /// # Errors
    /// Connection, protocol or server failures.
    pub fn stats(&mut self) -> Result<Vec<(String, String)>> {
        let reply = self.call(Request::Stats)?;
        Ok(String::from_utf8_lossy(&reply.value)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Sends every op before waiting for replies (at most [`Options::window`] unanswered
    /// at once) and returns one [`Reply`] per op, in order. Error statuses are returned as
    /// replies, not as `Err`.
    ///
    /// In cluster mode the batch goes to the primary once, without the retries single
    /// operations get (a WRONG_SERVER or UNAVAILABLE reply is returned like any other): a
    /// batch is for loading data fast, and the caller decides what to send again.
    ///
    /// # Errors
    /// Connection or protocol failures, or an op too large to encode (nothing is sent then).
    pub fn pipeline(&mut self, ops: &[Op<'_>]) -> Result<Vec<Reply>> {
        if self.cluster.is_some() {
            self.find_primary(Instant::now() + self.options.op_timeout)?;
        }
        let (client_id, window) = (self.client_id, self.options.window);
        let next_id = &mut self.next_id;
        let conn = self.conn.as_mut().ok_or(ClientError::Broken)?;
        conn.check()?;
        if self.cluster.is_some() {
            // Attempts shorten the timeout to their deadline; a batch has the plain one.
            conn.set_io_timeout(self.options.io_timeout).map_err(|e| conn.fail(e))?;
        }
        for op in ops {
            request_for(*op, client_id).to_frame(0).validate().map_err(ClientError::Encode)?;
        }
        let mut replies = Vec::with_capacity(ops.len());
        let mut sent = 0;
        while replies.len() < ops.len() {
            // Fill the window, in one write per batch.
            conn.out.clear();
            while sent < ops.len() && conn.outstanding.len() < window {
                let id = take(next_id);
                let request = request_for(ops[sent], client_id);
                Conn::encode(conn.framing, &request.to_frame(id), &mut conn.out)?;
                conn.outstanding.push_back(id);
                sent += 1;
            }
            if !conn.out.is_empty() {
                conn.write_out()?;
            }
            // Drain half the window (or everything at the end) before sending more.
            let target = if sent == ops.len() { 0 } else { window / 2 };
            while conn.outstanding.len() > target {
                replies.push(conn.read_reply()?);
            }
        }
        Ok(replies)
    }

    /// One request under a new request id; error statuses become `Err`.
    fn call(&mut self, request: Request<'_>) -> Result<Reply> {
        let id = take(&mut self.next_id);
        if self.cluster.is_some() {
            return self.cluster_call(&request, id);
        }
        self.conn.as_mut().ok_or(ClientError::Broken)?.call(&request, id)
    }

    /// Cluster mode: makes `self.conn` a live connection to the server the last hint names,
    /// or else the view's primary (asking for the view when it is stale), negotiating the
    /// framing and then presenting the token on a new connection. `Err(Attempt::NotSent | Attempt::Fatal)` on failure.
    fn ensure_conn(&mut self, deadline: Instant) -> Result<(), Attempt> {
        let Some(cluster) = self.cluster.as_mut() else {
            return self.conn.as_ref().map_or(Err(Attempt::Fatal(ClientError::Broken)), |_| Ok(()));
        };
        let target = match cluster.hint.take() {
            Some(hint) => hint,
            None => {
                if cluster.stale || cluster.view.is_none() {
                    cluster.refresh(deadline).map_err(Attempt::NotSent)?;
                }
                cluster.primary().map_err(Attempt::NotSent)?
            }
        };
        if self.conn.as_ref().is_some_and(|c| !c.broken && c.peer == target) {
            return Ok(());
        }
        self.conn = None;
        let remaining = left(deadline).ok_or_else(|| {
            Attempt::NotSent(ClientError::Unavailable {
                last: format!("no time left to connect to {target}"),
            })
        })?;
        let mut conn =
            Conn::open(target, self.options.connect_timeout.min(remaining), self.options.io_timeout)
                .map_err(|source| {
                    Attempt::NotSent(ClientError::Connect { addr: target.to_string(), source })
                })?;
        self.peer = target;
        // HELLO first (alone: the server may predate it), then AUTH in the framing chosen.
        conn.negotiate(self.options.framing, &mut self.next_id).map_err(Attempt::NotSent)?;
        if let Some(token) = &cluster.token {
            let id = take(&mut self.next_id);
            match conn.call(&Request::Auth { token }, id) {
                Ok(_) => {}
                Err(e @ ClientError::Server { status: Status::UNAUTHORIZED, .. }) => {
                    return Err(Attempt::Fatal(e))
                }
                Err(e) => return Err(Attempt::NotSent(e)),
            }
        }
        log::debug!("connected to {target} ({:?} framing)", conn.framing);
        self.framing = conn.framing;
        self.conn = Some(conn);
        Ok(())
    }

    /// Cluster mode: finds and connects to the primary, retrying until `deadline`.
    fn find_primary(&mut self, deadline: Instant) -> Result<()> {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let last = match self.ensure_conn(deadline) {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::NotSent(e) | Attempt::Lost(e)) => e.reason(),
                Err(Attempt::Reply(_)) => String::new(),
            };
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.stale = true;
            }
            let Some(remaining) = left(deadline) else { return Err(ClientError::Unavailable { last }) };
            log::debug!("no primary yet ({last}); again in {backoff:?}");
            std::thread::sleep(backoff.min(remaining));
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn cluster_attempt(&mut self, request: &Request<'_>, id: u64, deadline: Instant) -> Attempt {
        if let Err(failure) = self.ensure_conn(deadline) {
            return failure;
        }
        let Some(remaining) = left(deadline) else {
            return Attempt::NotSent(ClientError::Unavailable { last: "the deadline passed".into() });
        };
        let timeout = self.options.io_timeout.map_or(remaining, |t| t.min(remaining));
        let Some(conn) = self.conn.as_mut() else { return Attempt::NotSent(ClientError::Broken) };
        if let Err(e) = conn.set_io_timeout(Some(timeout)) {
            return Attempt::NotSent(conn.fail(e));
        }
        if let Err(e) = conn.send(request, id) {
            return Attempt::NotSent(e);
        }
        match conn.read_reply() {
            Ok(reply) => Attempt::Reply(reply),
            Err(e) => Attempt::Lost(e),
        }
    }

    /// Cluster mode: one operation, retried under the same request id until it completes,
    /// is refused, or the deadline passes.
    fn cluster_call(&mut self, request: &Request<'_>, id: u64) -> Result<Reply> {
        // A request that cannot be encoded never can: fail before trying anything.
        request.to_frame(id).validate().map_err(ClientError::Encode)?;
        let write = request.command().is_write();
        let deadline = Instant::now() + self.options.op_timeout;
        let mut backoff = BACKOFF_FIRST;
        // Some attempt sent the whole write and got no answer: it may have been applied.
        let mut maybe_applied = false;
        // The previous attempt followed a hint: the next WRONG_SERVER asks the view instead, so
        // two servers pointing at each other cannot keep the client busy.
        let mut followed_hint = false;
        loop {
            let peer = self.peer;
            let mut hint = None;
            let last = match self.cluster_attempt(request, id, deadline) {
                Attempt::Reply(reply) if reply.status == Status::WRONG_SERVER => {
                    let named = String::from_utf8_lossy(&reply.value).trim().to_string();
                    hint = resolve(&named).filter(|&a| a != peer && !followed_hint);
                    self.conn = None;
                    if named.is_empty() {
                        format!("{peer} is not the primary")
                    } else {
                        format!("{peer} is not the primary, {named} is")
                    }
                }
                Attempt::Reply(reply) if matches!(reply.status, Status::UNAVAILABLE | Status::BUSY) => {
                    if reply.status == Status::BUSY {
                        self.conn = None; // it closes the connection
                    }
                    let reason = String::from_utf8_lossy(&reply.value).trim().to_string();
                    format!("{peer} cannot serve now: {} {reason}", reply.status)
                }
                Attempt::Reply(reply) => {
                    return into_result(reply).map_err(|e| {
                        // Reads have no effect: whatever went wrong, nothing happened.
                        if !write && e.outcome() == Outcome::Unknown {
                            ClientError::Unavailable { last: e.to_string() }
                        } else {
                            e
                        }
                    });
                }
                Attempt::Fatal(e) | Attempt::NotSent(e @ ClientError::Encode(_)) => return Err(e),
                Attempt::NotSent(e) => e.reason(),
                Attempt::Lost(e) => {
                    maybe_applied |= write;
                    e.reason()
                }
            };
            if self.conn.as_ref().is_some_and(|c| c.broken) {
                self.conn = None;
            }
            if let Some(cluster) = self.cluster.as_mut() {
                // Follow a hint at once; anything else means the view held is no longer
                // to be trusted.
                cluster.stale |= hint.is_none();
                cluster.hint = hint;
            }
            followed_hint = hint.is_some();
            let remaining = left(deadline);
            if let (None, Some(remaining)) = (hint, remaining) {
                log::debug!("request {id}: {last}; again in {backoff:?}");
                std::thread::sleep(backoff.min(remaining));
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            if left(deadline).is_none() {
                log::debug!("request {id} gave up at its deadline: {last}");
                return Err(if maybe_applied {
                    ClientError::Unknown { last }
                } else {
                    ClientError::Unavailable { last }
                });
            }
        }
    }
}

fn request_for(op: Op<'_>, client_id: u64) -> Request<'_> {
    match op {
        Op::Get(key) => Request::Get { key },
        Op::Put(key, value) => Request::Put { key, value, client_id, expected_version: 0 },
        Op::Delete(key) => Request::Delete { key, client_id, expected_version: 0 },
        Op::Append(key, value) => Request::Append { key, value, client_id, expected_version: 0 },
        Op::Ping => Request::Ping { payload: b"" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_tells_whether_it_may_have_had_an_effect() {
        let server = |status, message: &str| ClientError::Server { status, message: message.into() };
        let unknown = [
            ClientError::Unknown { last: "timed out".into() },
            server(Status::BAD_REQUEST, "stale request id 3: client 9 already wrote request 5"),
            server(Status::INTERNAL, "reply encoding failed"),
            ClientError::Timeout,
            ClientError::Closed,
        ];
        for e in unknown {
            assert_eq!(e.outcome(), Outcome::Unknown, "{e}");
        }
        let failed = [
            ClientError::Unavailable { last: "no primary".into() },
            server(Status::BAD_REQUEST, "the key is empty"),
            server(Status::TOO_LARGE, ""),
            server(Status::UNAUTHORIZED, ""),
            server(Status::WRONG_SERVER, "127.0.0.1:7071"),
            ClientError::Conflict { current: 4 },
            ClientError::Broken,
            ClientError::Connect { addr: "x".into(), source: io::ErrorKind::ConnectionRefused.into() },
        ];
        for e in failed {
            assert_eq!(e.outcome(), Outcome::Failed, "{e}");
        }
        assert_eq!(Outcome::of(&Ok::<_, ClientError>(3)), Outcome::Done);
        assert_eq!(Outcome::of(&Err::<(), _>(ClientError::Broken)), Outcome::Failed);
    }

    #[test]
    fn request_ids_start_at_the_unix_time_and_skip_zero() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let first = first_request_id();
        assert!(first >= before && first - before < 60_000_000, "{first} vs {before}");
        let mut next = u64::MAX;
        assert_eq!(take(&mut next), u64::MAX);
        assert_eq!(take(&mut next), 1, "0 is never used");
    }

    #[test]
    fn a_connection_the_server_closed_is_noticed_before_sending() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = Client::connect(listener.local_addr().unwrap(), Duration::from_secs(5)).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        assert!(client.is_connected());
        assert!(client.is_connected(), "probing does not disturb it");
        drop(server_side);
        let deadline = Instant::now() + Duration::from_secs(5);
        while client.is_connected() {
            assert!(Instant::now() < deadline, "the close was never noticed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(client.ping(), Err(ClientError::Broken)), "nothing is sent into it");
        client.reconnect().unwrap();
        let _second = listener.accept().unwrap();
        assert!(client.is_connected());
    }

    #[test]
    fn ops_too_large_for_a_frame_are_found_before_sending() {
        assert!(Op::Put(b"k", b"v").check().is_ok());
        assert!(Op::Delete(b"k").check().is_ok());
        let big = vec![b'x'; FRAME_LEN];
        assert!(matches!(Op::Put(b"k", &big).check(), Err(ClientError::Encode(_))));
        assert!(matches!(Op::Append(b"k", &big).check(), Err(ClientError::Encode(_))));
    }

    #[test]
    fn messages_name_what_is_known() {
        let unknown = ClientError::Unknown { last: "timed out waiting for the server".into() };
        assert!(unknown.to_string().contains("may or may not have been applied"));
        assert_eq!(unknown.reason(), "timed out waiting for the server");
        assert_eq!(ClientError::Unavailable { last: "no primary".into() }.to_string(), "gave up: no primary");
    }
}
