//! The ceiling: a bare single-threaded mio server that returns every whole frame it
//! receives, unchanged. No decoding, no checksums, no storage, no allocation after accept:
//! whatever a real server does on top costs throughput and latency relative to this.
//!
//! Frames are 4096 bytes, until a HELLO asking for compact framing passes through: from the
//! frame after it on, the connection's frames are compact (header, key, value) and the echo
//! finds where each ends from the lengths in its header, as a Tandem server would (a HELLO
//! asking for fixed frames switches back). The HELLO itself is returned unchanged; its value
//! byte, which asked for compact, then reads as the framing chosen, so `tandem-bench
//! --protocol echo --framing compact` measures the ceiling for compact frames. Nothing but
//! the magic, the lengths and a HELLO's command and value byte is looked at; bad magic or
//! impossible lengths in compact framing close the connection, as the frame boundary is lost.
//!
//! Per wake-up it reads all it can, then writes back every whole frame read in one write,
//! keeping any partial frame for the next read. A connection whose write cannot finish stops
//! reading until its socket drains (the client must read replies to send more).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use wire::header::{COMMAND_OFFSET, KEY_LEN_OFFSET, MAGIC, VALUE_LEN_OFFSET};
use wire::{Command, FRAME_LEN, HEADER_LEN, HELLO_COMPACT, MAX_KEY_LEN, MAX_PAYLOAD_LEN};

const LISTENER: Token = Token(usize::MAX);
/// Frames a connection may have buffered: more than any sensible pipeline depth.
const BUFFER_FRAMES: usize = 64;

struct EchoConn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// Bytes received.
    filled: usize,
    /// Bytes of whole frames to return.
    whole: usize,
    /// Bytes of those already written back.
    written: usize,
    /// The frames after `whole` are compact: a HELLO asking for compact framing passed.
    compact: bool,
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut le = [0u8; 4];
    le.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(le)
}

/// If `frame` (a whole frame, either framing) is a HELLO, whether it asks for compact frames.
fn hello_asks_compact(frame: &[u8]) -> Option<bool> {
    let is_hello = read_u32(frame, COMMAND_OFFSET) == Command::HELLO.0
        && read_u32(frame, KEY_LEN_OFFSET) == 0
        && read_u32(frame, VALUE_LEN_OFFSET) >= 1;
    is_hello.then(|| frame.get(HEADER_LEN) == Some(&HELLO_COMPACT))
}

impl EchoConn {
    /// The length of the whole frames at the front of `buf[..filled]`, following HELLOs from
    /// fixed to compact framing and back.
    ///
    /// # Errors
    /// `InvalidData` for a compact header with bad magic or impossible lengths.
    fn whole_frames(&mut self) -> io::Result<usize> {
        let mut at = 0;
        loop {
            let rest = &self.buf[at..self.filled];
            let len = if self.compact {
                if rest.len() < HEADER_LEN {
                    return Ok(at);
                }
                let key_len = read_u32(rest, KEY_LEN_OFFSET) as usize;
                let value_len = read_u32(rest, VALUE_LEN_OFFSET) as usize;
                if rest[..MAGIC.len()] != MAGIC
                    || key_len > MAX_KEY_LEN
                    || key_len + value_len > MAX_PAYLOAD_LEN
                {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "not a compact frame"));
                }
                HEADER_LEN + key_len + value_len
            } else {
                FRAME_LEN
            };
            if rest.len() < len {
                return Ok(at);
            }
            if let Some(compact) = hello_asks_compact(&rest[..len]) {
                self.compact = compact;
            }
            at += len;
        }
    }

    /// Moves bytes until the socket would block either way. `Ok(false)` when the peer is gone.
    fn drive(&mut self) -> io::Result<bool> {
        loop {
            if self.written < self.whole {
                match self.stream.write(&self.buf[self.written..self.whole]) {
                    Ok(0) => return Ok(false),
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            if self.whole > 0 {
                // Everything whole went back: keep only the partial frame, at the front.
                self.buf.copy_within(self.whole..self.filled, 0);
                self.filled -= self.whole;
                self.whole = 0;
                self.written = 0;
            }
            match self.stream.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.filled += n;
                    // `whole` is 0 here: the frames before were written back and dropped.
                    self.whole = self.whole_frames()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Serves echo on `listener` until `stop` is set (checked at least every 100 ms).
///
/// # Errors
/// When the poll itself fails; a failing connection is only closed.
pub fn serve(listener: std::net::TcpListener, stop: &AtomicBool) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Option<EchoConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            let index = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            if let Err(e) = stream.set_nodelay(true) {
                                log::warn!("TCP_NODELAY for {peer}: {e}");
                            }
                            let interest = Interest::READABLE | Interest::WRITABLE;
                            if let Err(e) = poll.registry().register(&mut stream, Token(index), interest) {
                                log::warn!("cannot register {peer}: {e}");
                                free.push(index);
                                continue;
                            }
                            log::debug!("echo: connection {index} from {peer}");
                            conns[index] = Some(EchoConn {
                                stream,
                                buf: vec![0; BUFFER_FRAMES * FRAME_LEN].into_boxed_slice(),
                                filled: 0,
                                whole: 0,
                                written: 0,
                                compact: false,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            log::warn!("accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let index = event.token().0;
            let Some(slot) = conns.get_mut(index) else { continue };
            let Some(conn) = slot.as_mut() else { continue };
            let alive = conn.drive().unwrap_or_else(|e| {
                log::debug!("echo: connection {index}: {e}");
                false
            });
            if !alive {
                if let Some(mut conn) = slot.take() {
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
                free.push(index);
                log::debug!("echo: connection {index} closed");
            }
        }
    }
    Ok(())
}

/// An echo server on its own thread, stopped and joined on drop.
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl EchoServer {
    /// Binds `addr` (port 0 for any) and serves on a new thread.
    ///
    /// # Errors
    /// When the address cannot be bound or the thread cannot start.
    pub fn spawn(addr: SocketAddr) -> io::Result<EchoServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new().name("echo".into()).spawn(move || serve(listener, &flag))?;
        Ok(EchoServer { addr, stop, handle: Some(handle) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            match handle.join() {
                Ok(Err(e)) => log::error!("echo server failed: {e}"),
                Err(_) => log::error!("echo server panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream as StdStream;

    #[test]
    fn returns_whole_frames_only_and_unchanged() {
        let server = EchoServer::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).expect("spawn");
        let mut stream = StdStream::connect(server.addr()).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let frames: Vec<u8> = (0..3 * FRAME_LEN).map(|i| (i % 251) as u8).collect();
        // A frame and a half: only the whole frame comes back...
        stream.write_all(&frames[..FRAME_LEN + 100]).expect("write");
        let mut back = vec![0u8; FRAME_LEN];
        stream.read_exact(&mut back).expect("first frame");
        assert_eq!(back, frames[..FRAME_LEN]);
        stream.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let mut one = [0u8; 1];
        assert!(stream.read(&mut one).is_err(), "half a frame must not be echoed");
        // ...until the rest arrives.
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        stream.write_all(&frames[FRAME_LEN + 100..]).expect("write");
        let mut rest = vec![0u8; 2 * FRAME_LEN];
        stream.read_exact(&mut rest).expect("the other frames");
        assert_eq!(rest, frames[FRAME_LEN..]);
    }

    fn compact(frames: &[wire::Frame<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            frame.encode_compact_to(&mut out).expect("fits");
        }
        out
    }

    #[test]
    fn a_hello_switches_the_connection_to_compact_frames_and_back() {
        use wire::{Frame, Request, HELLO_FIXED};
        let server = EchoServer::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).expect("spawn");
        let mut stream = StdStream::connect(server.addr()).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut sent = vec![0u8; FRAME_LEN];
        Request::Hello { framing: HELLO_COMPACT }.to_frame(1).encode(&mut sent).expect("encodes");
        let value = [7u8; 100];
        let small = compact(&[
            Frame::request(2, Command::PUT, b"key", &value),
            Frame::request(3, Command::GET, b"key", b""),
        ]);
        // The HELLO and the first compact frames in one write, the second cut in two.
        sent.extend_from_slice(&small[..small.len() - 5]);
        stream.write_all(&sent).expect("write");
        let mut back = vec![0u8; FRAME_LEN + HEADER_LEN + 3 + 100];
        stream.read_exact(&mut back).expect("the HELLO and the whole compact frame");
        assert_eq!(back, sent[..FRAME_LEN + HEADER_LEN + 3 + 100]);
        stream.write_all(&small[small.len() - 5..]).expect("write");
        let mut last = vec![0u8; HEADER_LEN + 3];
        stream.read_exact(&mut last).expect("the rest");
        assert_eq!(last, small[HEADER_LEN + 3 + 100..]);
        // A compact HELLO back to fixed: 4096-byte frames again after it.
        let mut back_to_fixed = compact(&[Request::Hello { framing: HELLO_FIXED }.to_frame(4)]);
        let hello_len = back_to_fixed.len();
        let mut ping = vec![0u8; FRAME_LEN];
        Frame::request(5, Command::PING, b"", b"").encode(&mut ping).expect("encodes");
        back_to_fixed.extend_from_slice(&ping);
        stream.write_all(&back_to_fixed).expect("write");
        let mut back = vec![0u8; hello_len + FRAME_LEN];
        stream.read_exact(&mut back).expect("the HELLO and the fixed PING");
        assert_eq!(back, back_to_fixed);
    }

    #[test]
    fn an_impossible_compact_length_closes_the_connection() {
        use wire::Request;
        let server = EchoServer::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).expect("spawn");
        let mut stream = StdStream::connect(server.addr()).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut sent = vec![0u8; FRAME_LEN];
        Request::Hello { framing: HELLO_COMPACT }.to_frame(1).encode(&mut sent).expect("encodes");
        let mut bad = compact(&[wire::Frame::request(2, Command::GET, b"key", b"")]);
        bad[VALUE_LEN_OFFSET..VALUE_LEN_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        stream.write_all(&sent).expect("write");
        let mut back = vec![0u8; FRAME_LEN];
        stream.read_exact(&mut back).expect("the HELLO");
        stream.write_all(&bad).expect("write");
        let mut one = [0u8; 1];
        match stream.read(&mut one) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }
}
