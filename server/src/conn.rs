//! One client connection: its socket, what it has left over between reads, and its session.
//!
//! Connections own almost no memory: reads land in the event loop's shared scratch buffer
//! and replies are written from a shared buffer too. A connection keeps only a partial frame
//! (under 4 KiB) between reads and the replies the kernel would not take yet, so an idle
//! connection costs a few hundred bytes however busy it once was.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use wire::FRAME_LEN;

use crate::handler::Session;

/// Bytes asked of the kernel per read call: 16 frames.
pub const READ_CHUNK: usize = 16 * FRAME_LEN;
/// Most bytes read from one connection per loop iteration, so one busy client cannot starve
/// the others; a connection that still has data is revisited next iteration.
pub const READ_BUDGET: usize = 2 * READ_CHUNK;
/// Above this many unsent reply bytes the connection is not read from (backpressure). A
/// client that stops reading therefore costs at most this plus one read budget of replies
/// (256 KiB in all) plus a partial frame.
pub const OUT_HIGH_WATER: usize = 2 * READ_CHUNK;

/// What one read into the scratch buffer produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// Bytes now at the front of the scratch buffer: the old partial frame plus the read.
    pub filled: usize,
    /// Bytes the read itself returned.
    pub read: usize,
    /// The peer closed its side, or the socket failed: read no more.
    pub eof: bool,
    /// The socket has nothing more for now (a short read or `WouldBlock`): the next
    /// readiness event will say when it does.
    pub drained: bool,
}

/// A client connection owned by the event loop.
#[derive(Debug)]
pub struct Conn {
    /// The socket (non-blocking).
    pub stream: TcpStream,
    /// The peer's address, for logs.
    pub peer: SocketAddr,
    /// The start of a frame whose rest has not arrived (always under one frame).
    pub partial: Vec<u8>,
    /// Replies the kernel has not taken yet, or held until the commit point covers them;
    /// `out[out_pos..]` is pending.
    pub out: Vec<u8>,
    /// Held replies: (offset in `out` where a reply starts, LSN the commit point must reach
    /// before it may leave). Replies leave in order, so nothing after a held one leaves either.
    pub gates: VecDeque<(usize, u64)>,
    /// How much of `out` the kernel has taken.
    pub out_pos: usize,
    /// Protocol state (authentication).
    pub session: Session,
    /// Last time a whole frame arrived or reply bytes left; partial frames do not count, so
    /// a slow-loris trickle still times out.
    pub last_active: Instant,
    /// In the loop's ready list.
    pub queued: bool,
    /// Nothing more will be read: EOF, a read error, or a fatal frame.
    pub read_closed: bool,
    /// The poller reported the peer's half-close: a short read is then not the end, keep
    /// reading to EOF, since no further event will come.
    pub peer_closed: bool,
    /// A read returned end of file (or failed): the peer sends nothing more.
    pub eof: bool,
    /// Closing gracefully since then: our side is shut for writing, and whatever the peer still
    /// sends is read and discarded until it closes too (or the linger runs out). Closing with
    /// unread input would reset the connection and destroy replies the peer has not read yet.
    pub draining: Option<Instant>,
    /// While draining: when input last arrived (a peer quiet for a moment can be closed on:
    /// nothing unread remains to reset the connection).
    pub drained_input_at: Option<Instant>,
}

impl Conn {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream, peer: SocketAddr, session: Session, now: Instant) -> Self {
        Conn {
            stream,
            peer,
            partial: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            gates: VecDeque::new(),
            session,
            last_active: now,
            queued: false,
            read_closed: false,
            peer_closed: false,
            eof: false,
            draining: None,
            drained_input_at: None,
        }
    }

    /// Reply bytes not yet written.
    pub fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Whether the connection is over its write backlog and must not be read from.
    pub fn is_backpressured(&self) -> bool {
        self.pending_out() > OUT_HIGH_WATER
    }

    /// Puts the partial frame at the front of `scratch` and reads once after it.
    ///
    /// `scratch` must be at least `FRAME_LEN + READ_CHUNK` long.
    pub fn fill(&mut self, scratch: &mut [u8]) -> Fill {
        let kept = self.partial.len();
        scratch[..kept].copy_from_slice(&self.partial);
        self.partial.clear();
        let room = &mut scratch[kept..kept + READ_CHUNK];
        let mut fill = Fill { filled: kept, ..Fill::default() };
        loop {
            match self.stream.read(room) {
                Ok(0) => {
                    fill.eof = true;
                    fill.drained = true;
                }
                Ok(n) => {
                    fill.read = n;
                    fill.filled += n;
                    fill.drained = n < READ_CHUNK && !self.peer_closed;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => fill.drained = true,
                Err(e) => {
                    log::debug!("read from {} failed: {e}", self.peer);
                    fill.eof = true;
                    fill.drained = true;
                }
            }
            return fill;
        }
    }

    /// Half-closes: our replies are all sent, so tell the peer no more will come.
    pub fn start_draining(&mut self, now: Instant) {
        if let Err(e) = self.stream.shutdown(std::net::Shutdown::Write) {
            log::debug!("half-close of {} failed: {e}", self.peer);
        }
        self.draining = Some(now);
        self.drained_input_at = Some(now);
        self.partial.clear();
    }

    /// Reads and drops what the peer sends while draining, until it would block. Returns
    /// whether the peer has closed (or the socket failed): then the connection can go.
    pub fn discard_input(&mut self, scratch: &mut [u8]) -> bool {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return true,
                Ok(_) => self.drained_input_at = Some(Instant::now()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    /// Whether a draining connection may be closed now: its peer has been quiet for
    /// `quiet`, or it has been draining for `linger` (a peer that never stops sending).
    pub fn drain_done(&self, now: Instant, quiet: std::time::Duration, linger: std::time::Duration) -> bool {
        match (self.draining, self.drained_input_at) {
            (Some(since), Some(input)) => {
                now.saturating_duration_since(input) >= quiet
                    || now.saturating_duration_since(since) >= linger
            }
            _ => false,
        }
    }

    /// Keeps the bytes of an incomplete frame until the rest arrives.
    pub fn keep_partial(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() < FRAME_LEN);
        self.partial.extend_from_slice(bytes);
    }

    /// Where the replies that may leave now end: at the first one the commit point does not
    /// cover yet.
    pub fn releasable(&mut self, committed: u64) -> usize {
        while self.gates.front().is_some_and(|&(_, lsn)| lsn <= committed) {
            self.gates.pop_front();
        }
        self.gates.front().map_or(self.out.len(), |g| g.0)
    }

    /// Whether some replies wait for the commit point.
    pub fn is_held(&self) -> bool {
        !self.gates.is_empty()
    }

    /// Sends replies: straight to the socket when nothing is queued or held before them, and
    /// whatever the kernel does not take is queued. Returns bytes written now.
    ///
    /// # Errors
    /// A write error other than `WouldBlock`: the connection is dead.
    pub fn send(&mut self, replies: &[u8], committed: u64) -> io::Result<usize> {
        if self.pending_out() > 0 || self.is_held() {
            self.out.extend_from_slice(replies);
            return self.flush(committed);
        }
        let written = write_some(&mut self.stream, replies)?;
        self.out.extend_from_slice(&replies[written..]);
        Ok(written)
    }

    /// Queues replies, some of which wait for the commit point: `gates` holds (offset in
    /// `replies`, LSN needed) in order.
    pub fn queue(&mut self, replies: &[u8], gates: &[(usize, u64)]) {
        let base = self.out.len();
        self.out.extend_from_slice(replies);
        self.gates.extend(gates.iter().map(|&(off, lsn)| (base + off, lsn)));
    }

    /// Writes queued replies the commit point covers, until done or the socket would block;
    /// returns bytes written.
    ///
    /// # Errors
    /// A write error other than `WouldBlock`: the connection is dead.
    pub fn flush(&mut self, committed: u64) -> io::Result<usize> {
        let end = self.releasable(committed);
        let written = write_some(&mut self.stream, &self.out[self.out_pos..end])?;
        self.out_pos += written;
        if self.out_pos == self.out.len() {
            // Everything sent: reuse the buffer from the start, keeping its capacity.
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(written)
    }

    /// Gives buffer memory back while the connection idles.
    pub fn release_buffers(&mut self) {
        if self.pending_out() == 0 && self.out.capacity() > 0 {
            self.out = Vec::new();
            self.out_pos = 0;
        }
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = Vec::new();
        }
    }
}

/// Writes as much of `data` as the socket takes without blocking.
pub(crate) fn write_some(stream: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
