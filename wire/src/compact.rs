//! Compact framing: the same frames without the padding, and [`CompactReader`] to cut them
//! out of a byte stream.
//!
//! A fixed frame spends 4096 bytes on every message, however small. Between servers
//! (replication), in datagrams to the coordinator, and later on client connections that
//! negotiate it, a frame is sent as header + key + value only. Header, checksum and limits
//! are those of the fixed frame, so a compact frame is exactly a fixed frame cut off after
//! its value; only the receiver's rules change, because the length now comes from the header
//! (see [`crate::Frame::decode_compact`] and [`crate::DecodeError::is_fatal_for`]).

use crate::frame::declared_compact_len;
use crate::{DecodeError, Frame, FrameCrc};

/// How frames are laid out on a connection or in a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Framing {
    /// Every frame is exactly [`crate::FRAME_LEN`] bytes, zero-padded: the default, and what
    /// clients speak, because a fixed size keeps the stream aligned whatever a frame holds.
    #[default]
    Fixed,
    /// Header, key and value with no padding; the header's lengths say where the frame ends.
    /// Used where most frames are small and both ends are Tandem servers or the coordinator.
    Compact,
}

/// Buffers bytes as a connection delivers them and decodes whole compact frames in place,
/// keeping any partial frame for the next read. The counterpart of [`crate::FrameReader`]
/// for [`Framing::Compact`]: frames vary in length, so this one must read each header.
///
/// Either copy bytes in with [`CompactReader::push`], or read straight into
/// [`CompactReader::spare`] and report the count with [`CompactReader::commit`]; then call
/// [`CompactReader::next_frame`] until it returns `Ok(None)`. A new reader allocates nothing
/// until it is first used, and [`CompactReader::release`] gives memory back.
///
/// **Memory.** A caller that drains [`CompactReader::next_frame`] before each read holds
/// less than one frame in between, so the buffer never grows past [`crate::FRAME_LEN`] plus the
/// largest `min` it asked [`CompactReader::spare`] for (or pushed at once).
///
/// **Errors.** An error that [`DecodeError::is_fatal_for`] calls fatal in compact framing
/// (bad magic, version, lengths or checksum) leaves the frame boundary unknown: the reader
/// drops what it buffered, ignores any bytes given to it afterwards and returns the same
/// error from every later call, so the caller answers once and closes the connection. A
/// non-fatal error (reserved flags) has a known boundary: that frame is skipped, and the next
/// call goes on with the following one.
///
/// ```
/// use wire::{Command, CompactReader, Frame, Framing};
///
/// let mut bytes = Vec::new();
/// Frame::request(1, Command::GET, b"fruit", b"").encode_compact_to(&mut bytes)?;
/// Frame::request(2, Command::PUT, b"fruit", b"apple").encode_compact_to(&mut bytes)?;
/// assert_eq!(bytes.len(), 53 + 58);
///
/// let mut reader = CompactReader::new();
/// let mut ids = Vec::new();
/// for piece in bytes.chunks(40) {
///     // a socket read would go to reader.spare(n), then reader.commit(count)
///     reader.push(piece);
///     loop {
///         match reader.next_frame() {
///             Ok(Some(frame)) => ids.push(frame.id),
///             Ok(None) => break,
///             // Answer with e.status() and e.trusted_id().unwrap_or(0); then close if fatal.
///             Err(e) if e.is_fatal_for(Framing::Compact) => return Err(e.into()),
///             Err(_) => continue,
///         }
///     }
/// }
/// assert_eq!(ids, [1, 2]);
/// assert_eq!(reader.buffered(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct CompactReader {
    buf: Vec<u8>,
    /// First byte not yet handed out.
    start: usize,
    /// End of the bytes received.
    end: usize,
    /// The fatal error that ended the stream, returned again by every later call.
    failed: Option<DecodeError>,
}

impl CompactReader {
    /// An empty reader; allocates on first use.
    pub const fn new() -> Self {
        CompactReader { buf: Vec::new(), start: 0, end: 0, failed: None }
    }

    /// An empty reader with room for `bytes` bytes (compact frames vary in length, so the
    /// room is given in bytes, not frames).
    pub fn with_capacity(bytes: usize) -> Self {
        CompactReader { buf: vec![0; bytes], start: 0, end: 0, failed: None }
    }

    /// Bytes received but not yet handed out as frames (after [`CompactReader::next_frame`]
    /// returned `Ok(None)`, less than one frame; after a fatal error, 0).
    pub const fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The bytes received and not yet handed out as frames (nothing after a fatal error): for
    /// a caller that looks ahead, e.g. to prefetch what the next frames will touch. Not
    /// validated: the frames in it are checked only when [`CompactReader::next_frame`] returns
    /// them.
    pub fn pending(&self) -> &[u8] {
        if self.failed.is_some() {
            return &[];
        }
        &self.buf[self.start..self.end]
    }

    /// Bytes of memory held.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Copies bytes in (ignored after a fatal error).
    pub fn push(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// Room to read into, at least `min` bytes long: pass it to `read`, then call
    /// [`CompactReader::commit`] with the count read. Moves a partial frame to the front or
    /// grows the buffer only when needed.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.buf.len() - self.end < min {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < min {
                self.buf.resize(self.end + min, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of the last
    /// [`CompactReader::spare`]. After a fatal error they are dropped instead, so that a
    /// peer that keeps sending cannot make the reader hold more.
    ///
    /// # Panics
    /// If `n` is more than the spare room: that is a bug in the caller, not bad input.
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.end, "committed more bytes than the spare room");
        if self.failed.is_none() {
            self.end += n;
        }
    }

    /// Decodes the next whole compact frame in place, borrowing its key and value from the
    /// reader; `Ok(None)` until more bytes arrive.
    ///
    /// # Errors
    /// As [`Frame::decode_compact`]. After a fatal error (see the type's docs) every later
    /// call returns that error again; after a non-fatal one the bad frame has been skipped.
    #[inline]
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, DecodeError> {
        self.next_frame_with_crc().map(|next| next.map(|(frame, _)| frame))
    }

    /// [`CompactReader::next_frame`], also returning the checksum the frame was verified with
    /// (see [`Frame::payload_crc`]).
    ///
    /// # Errors
    /// As [`CompactReader::next_frame`].
    pub fn next_frame_with_crc(&mut self) -> Result<Option<(Frame<'_>, FrameCrc)>, DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let pending = &self.buf[self.start..self.end];
        let result = Frame::decode_compact_with_crc(pending);
        let used = match result {
            Ok(Some((_, used, _))) => used,
            Ok(None) => return Ok(None),
            Err(e) => match declared_compact_len(pending) {
                // The checksum vouched for the lengths: step over just this frame.
                Some(used) if !e.is_fatal_for(Framing::Compact) => used,
                _ => {
                    self.failed = Some(e);
                    self.start = 0;
                    self.end = 0;
                    return Err(e);
                }
            },
        };
        self.start += used;
        if self.start == self.end {
            // Nothing partial is left: the next read starts at the front, no copy needed.
            self.start = 0;
            self.end = 0;
        }
        result.map(|decoded| decoded.map(|(frame, _, crc)| (frame, crc)))
    }

    /// Forgets everything buffered and any fatal error, so the reader (and its memory) can
    /// serve a new connection.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.failed = None;
    }

    /// Frees the buffer if nothing is buffered (for connections gone idle); returns whether
    /// it did.
    pub fn release(&mut self) -> bool {
        if self.buffered() == 0 {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{FLAGS_OFFSET, HEADER_LEN, KEY_LEN_OFFSET};
    use crate::FRAME_LEN;
    use crate::{Command, Flags, MAX_PAYLOAD_LEN};

    fn compact(frames: &[Frame<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            frame.encode_compact_to(&mut out).unwrap();
        }
        out
    }

    fn ids(reader: &mut CompactReader) -> Result<Vec<u64>, DecodeError> {
        let mut ids = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            ids.push(frame.id);
        }
        Ok(ids)
    }

    #[test]
    fn pending_shows_what_is_left_to_hand_out() {
        let a = Frame::request(1, Command::PUT, b"k", b"v");
        let b = Frame::request(2, Command::GET, b"k", b"");
        let bytes = compact(&[a, b]);
        let mut reader = CompactReader::new();
        reader.push(&bytes[..bytes.len() - 2]);
        assert_eq!(reader.pending(), &bytes[..bytes.len() - 2]);
        assert_eq!(reader.next_frame().unwrap().map(|f| f.id), Some(1));
        assert_eq!(reader.pending(), &bytes[a.encoded_len(Framing::Compact)..bytes.len() - 2]);
        reader.push(b"XX");
        assert!(reader.next_frame().is_err());
        assert!(reader.pending().is_empty(), "nothing after a fatal error");
    }

    #[test]
    fn framing_defaults_to_fixed() {
        assert_eq!(Framing::default(), Framing::Fixed);
    }

    #[test]
    fn spare_and_commit_read_in_place_within_one_frame_plus_min() {
        let big = [7u8; MAX_PAYLOAD_LEN - 1];
        let frames: Vec<Frame<'_>> = (0..20)
            .map(|i| Frame::request(i, Command::PUT, b"k", &big[..(i as usize * 997) % big.len()]))
            .collect();
        let bytes = compact(&frames);
        for min in [1, 100, 1500, FRAME_LEN] {
            let mut reader = CompactReader::new();
            let (mut fed, mut seen) = (0, Vec::new());
            while fed < bytes.len() {
                let room = reader.spare(min);
                let n = room.len().min(bytes.len() - fed).min(min);
                room[..n].copy_from_slice(&bytes[fed..fed + n]);
                reader.commit(n);
                fed += n;
                seen.extend(ids(&mut reader).unwrap());
                assert!(reader.capacity() <= FRAME_LEN + min, "grew to {} for min {min}", reader.capacity());
            }
            assert_eq!(seen, (0..20).collect::<Vec<_>>(), "min {min}");
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn a_fatal_error_poisons_the_reader_until_cleared() {
        let mut bytes = compact(&[
            Frame::request(1, Command::GET, b"a", b""),
            Frame::request(2, Command::GET, b"b", b""),
        ]);
        let second = HEADER_LEN + 1;
        // A damaged but possible length: the reader waits for the longer frame it announces...
        bytes[second + KEY_LEN_OFFSET] = 40;
        let good = compact(&[Frame::request(3, Command::GET, b"c", b"")]);
        let mut reader = CompactReader::new();
        reader.push(&bytes);
        assert_eq!(reader.next_frame().map(|f| f.map(|f| f.id)), Ok(Some(1)));
        assert_eq!(reader.next_frame(), Ok(None));
        // ...and the checksum then refuses it, since the range it covers is not what was sent.
        reader.push(&good);
        let err = reader.next_frame().unwrap_err();
        assert!(matches!(err, DecodeError::BadChecksum { .. }), "{err:?}");
        assert_eq!(reader.buffered(), 0, "the rest of the stream is dropped");
        reader.push(&good);
        assert_eq!(reader.buffered(), 0, "bytes after a fatal error are ignored");
        assert_eq!(reader.next_frame().unwrap_err(), err, "the reader keeps refusing");
        assert!(reader.release());
        reader.clear();
        reader.push(&good);
        assert_eq!(ids(&mut reader), Ok(vec![3]), "clear makes it reusable");
    }

    #[test]
    fn a_non_fatal_error_skips_only_its_frame() {
        let mut bytes = compact(&[
            Frame::request(1, Command::PUT, b"k", b"v"),
            Frame::request(2, Command::PUT, b"k", b"v"),
            Frame::request(3, Command::PUT, b"k", b"v"),
        ]);
        let second = HEADER_LEN + 2;
        bytes[second + FLAGS_OFFSET] = 8; // a reserved flag, with the checksum fixed to match
        let crc = crc32fast::hash(&bytes[second + 8..second + HEADER_LEN + 2]);
        bytes[second + 4..second + 8].copy_from_slice(&crc.to_le_bytes());
        let mut reader = CompactReader::new();
        reader.push(&bytes);
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(reader.next_frame().map(|f| f.map(|f| (f.id, f.flags))));
        }
        assert_eq!(
            outcomes,
            [
                Ok(Some((1, Flags::NONE))),
                Err(DecodeError::ReservedFlags { id: 2, flags: 8 }),
                Ok(Some((3, Flags::NONE))),
                Ok(None)
            ]
        );
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn release_frees_only_when_empty() {
        let mut reader = CompactReader::new();
        assert_eq!(reader.capacity(), 0);
        reader.push(b"TDM");
        assert_eq!(reader.next_frame(), Ok(None));
        assert!(!reader.release());
        reader.clear();
        assert!(reader.release());
        assert_eq!(reader.capacity(), 0);
    }
}
