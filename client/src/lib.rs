//! A small blocking client for Tandem: one TCP connection, request ids managed for you.
//!
//! It is the one client that `tandem-cli` and the integration tests share. Every call sends
//! one or more 4096-byte frames and waits for the replies; [`Client::pipeline`] sends many
//! requests before reading their replies.
//!
//! ```no_run
//! use std::time::Duration;
//! let mut client = client::Client::connect("127.0.0.1:7070", Duration::from_secs(1))?;
//! client.put(b"fruit", b"apple")?;
//! assert_eq!(client.get(b"fruit")?.map(|v| v.data), Some(b"apple".to_vec()));
//! # Ok::<(), client::ClientError>(())
//! ```
//!
//! After an I/O error, a timeout or a protocol error the connection's state is unknown
//! (a reply may still be in flight): the client refuses further calls with
//! [`ClientError::Broken`]; connect again.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use wire::{Command, DecodeError, EncodeError, Frame, FrameReader, Request, Status, FRAME_LEN};

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
    /// How long to wait for the TCP connection.
    pub connect_timeout: Duration,
    /// How long to wait for any read or write; `None` waits forever.
    pub io_timeout: Option<Duration>,
    /// Most requests a pipeline keeps unanswered at once, so neither side's buffers fill up.
    pub window: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(2),
            io_timeout: Some(Duration::from_secs(10)),
            window: 64,
        }
    }
}

/// A blocking connection to one server.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    client_id: u64,
    next_id: u64,
    window: usize,
    reader: FrameReader,
    out: Vec<u8>,
    /// Ids sent and not yet answered, oldest first.
    outstanding: VecDeque<u64>,
    broken: bool,
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl Client {
    /// Connects with default options and the given connect timeout.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if no resolved address accepts the connection in time.
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Display, timeout: Duration) -> Result<Client> {
        Client::connect_with(addr, Options { connect_timeout: timeout, ..Options::default() })
    }

    /// Connects with explicit options.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if no resolved address accepts the connection in time.
    pub fn connect_with(addr: impl ToSocketAddrs + std::fmt::Display, options: Options) -> Result<Client> {
        let name = addr.to_string();
        let failed = |source| ClientError::Connect { addr: name.clone(), source };
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "the address resolved to nothing");
        for peer in addr.to_socket_addrs().map_err(failed)? {
            match TcpStream::connect_timeout(&peer, options.connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true).map_err(failed)?;
                    stream.set_read_timeout(options.io_timeout).map_err(failed)?;
                    stream.set_write_timeout(options.io_timeout).map_err(failed)?;
                    return Ok(Client {
                        stream,
                        peer,
                        client_id: random_u64() | 1,
                        next_id: 1,
                        window: options.window.max(1),
                        reader: FrameReader::with_capacity(1),
                        out: Vec::with_capacity(FRAME_LEN),
                        outstanding: VecDeque::new(),
                        broken: false,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(failed(last))
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// This client's id, sent with every write for at-most-once execution of retries.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Presents the server's token; required first when the server has one.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `UNAUTHORIZED` for a wrong token (the server then
    /// closes the connection).
    pub fn auth(&mut self, token: &[u8]) -> Result<()> {
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
        self.call(self.put_request(key, value, 0)).map(|r| r.version)
    }

    /// Writes a key only if its current version is `expected` (0 never matches).
    ///
    /// # Errors
    /// [`ClientError::Conflict`] with the current version if it differs.
    pub fn put_if(&mut self, key: &[u8], value: &[u8], expected: u64) -> Result<u64> {
        self.call(self.put_request(key, value, expected)).map(|r| r.version)
    }

    /// Removes a key; returns whether it existed.
    ///
    /// # Errors
    /// Connection, protocol or server failures.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let request = Request::Delete { key, client_id: self.client_id, expected_version: 0 };
        Ok(self.call(request)?.status == Status::OK)
    }

    /// Appends to a key's value, creating it if absent; returns the new version.
    ///
    /// # Errors
    /// `TOO_LARGE` if the result would not fit in a frame; connection or protocol failures.
    pub fn append(&mut self, key: &[u8], value: &[u8]) -> Result<u64> {
        let request = Request::Append { key, value, client_id: self.client_id, expected_version: 0 };
        self.call(request).map(|r| r.version)
    }

    /// The server's counters, in the order it sent them.
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
    /// # Errors
    /// Connection or protocol failures, or an op too large to encode (nothing is sent then).
    pub fn pipeline(&mut self, ops: &[Op<'_>]) -> Result<Vec<Reply>> {
        self.check()?;
        for op in ops {
            self.request_for(*op).to_frame(0).validate().map_err(ClientError::Encode)?;
        }
        let mut replies = Vec::with_capacity(ops.len());
        let mut sent = 0;
        while replies.len() < ops.len() {
            // Fill the window, in one write per batch.
            self.out.clear();
            while sent < ops.len() && self.outstanding.len() < self.window {
                let id = self.take_id();
                let request = self.request_for(ops[sent]);
                request.to_frame(id).encode_to(&mut self.out).map_err(ClientError::Encode)?;
                self.outstanding.push_back(id);
                sent += 1;
            }
            if !self.out.is_empty() {
                let out = std::mem::take(&mut self.out);
                let written = self.stream.write_all(&out);
                self.out = out;
                written.map_err(|e| self.fail(e))?;
            }
            // Drain half the window (or everything at the end) before sending more.
            let target = if sent == ops.len() { 0 } else { self.window / 2 };
            while self.outstanding.len() > target {
                replies.push(self.read_reply()?);
            }
        }
        Ok(replies)
    }

    fn put_request<'a>(&self, key: &'a [u8], value: &'a [u8], expected_version: u64) -> Request<'a> {
        Request::Put { key, value, client_id: self.client_id, expected_version }
    }

    fn request_for<'a>(&self, op: Op<'a>) -> Request<'a> {
        let client_id = self.client_id;
        match op {
            Op::Get(key) => Request::Get { key },
            Op::Put(key, value) => Request::Put { key, value, client_id, expected_version: 0 },
            Op::Delete(key) => Request::Delete { key, client_id, expected_version: 0 },
            Op::Append(key, value) => Request::Append { key, value, client_id, expected_version: 0 },
            Op::Ping => Request::Ping { payload: b"" },
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
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

    /// One request, one reply; error statuses become `Err`.
    fn call(&mut self, request: Request<'_>) -> Result<Reply> {
        self.check()?;
        let id = self.take_id();
        self.out.clear();
        request.to_frame(id).encode_to(&mut self.out).map_err(ClientError::Encode)?;
        let out = std::mem::take(&mut self.out);
        let written = self.stream.write_all(&out);
        self.out = out;
        written.map_err(|e| self.fail(e))?;
        self.outstanding.push_back(id);
        let reply = self.read_reply()?;
        match reply.status {
            Status::OK | Status::NOT_FOUND => Ok(reply),
            Status::CONFLICT => Err(ClientError::Conflict { current: reply.version }),
            status => Err(ClientError::Server {
                status,
                message: String::from_utf8_lossy(&reply.value).into_owned(),
            }),
        }
    }

    /// Reads the reply to the oldest outstanding request.
    fn read_reply(&mut self) -> Result<Reply> {
        let expected = self.outstanding.front().copied().unwrap_or(0);
        while !self.reader.has_frame() {
            match self.stream.read(self.reader.spare(FRAME_LEN)) {
                Ok(0) => {
                    self.broken = true;
                    return Err(ClientError::Closed);
                }
                Ok(n) => self.reader.commit(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        let Some(bytes) = self.reader.next_frame() else { return Err(ClientError::Closed) };
        let frame = match Frame::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                self.broken = true;
                return Err(ClientError::Protocol(e));
            }
        };
        let reply = Reply { status: frame.status(), value: frame.value.to_vec(), version: frame.timestamp };
        let untrusted = frame.id == 0 && frame.command == Command(0);
        if !frame.is_reply() || (frame.id != expected && !untrusted) {
            self.broken = true;
            return Err(ClientError::UnexpectedReply { expected, got: frame.id });
        }
        self.outstanding.pop_front();
        if untrusted && reply.status == Status::BUSY {
            self.broken = true;
            return Err(ClientError::Server {
                status: reply.status,
                message: String::from_utf8_lossy(&reply.value).into_owned(),
            });
        }
        Ok(reply)
    }
}
