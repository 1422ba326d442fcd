//! The ceiling: a bare single-threaded mio server that returns every whole 4096-byte frame
//! it receives, unchanged. No decoding, no storage, no allocation after accept: whatever a
//! real fixed-frame server does on top costs throughput and latency relative to this.
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
use wire::FRAME_LEN;

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
}

impl EchoConn {
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
                    self.whole = self.filled - self.filled % FRAME_LEN;
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
}
