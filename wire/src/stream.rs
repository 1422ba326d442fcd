//! [`FrameReader`]: whole frames out of a byte stream that arrives in arbitrary pieces.

use crate::FRAME_LEN;

/// Buffers bytes as a connection delivers them and hands out complete frames in order,
/// keeping any partial frame for the next read. Frames are fixed-size, so this never looks
/// inside them: decode what it yields with [`crate::Frame::decode`].
///
/// Either copy bytes in with [`FrameReader::push`], or read straight into
/// [`FrameReader::spare`] and report the count with [`FrameReader::commit`]. A new reader
/// allocates nothing until it is first used, and [`FrameReader::release`] gives memory
/// back, so idle connections cost nothing.
///
/// ```
/// use wire::{Command, Frame, FrameReader, FRAME_LEN};
///
/// let mut bytes = vec![0u8; 2 * FRAME_LEN];
/// Frame::request(1, Command::PING, b"", b"").encode(&mut bytes[..FRAME_LEN])?;
/// Frame::request(2, Command::PING, b"", b"").encode(&mut bytes[FRAME_LEN..])?;
///
/// let mut reader = FrameReader::new();
/// reader.push(&bytes[..5000]); // a read that ended mid-frame
/// let mut ids = Vec::new();
/// while let Some(frame) = reader.next_frame() {
///     ids.push(Frame::decode(frame)?.id);
/// }
/// reader.push(&bytes[5000..]);
/// while let Some(frame) = reader.next_frame() {
///     ids.push(Frame::decode(frame)?.id);
/// }
/// assert_eq!(ids, [1, 2]);
/// assert_eq!(reader.buffered(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// First byte not yet handed out.
    start: usize,
    /// End of the bytes received.
    end: usize,
}

impl FrameReader {
    /// An empty reader; allocates on first use.
    pub const fn new() -> Self {
        FrameReader { buf: Vec::new(), start: 0, end: 0 }
    }

    /// An empty reader with room for `frames` whole frames.
    pub fn with_capacity(frames: usize) -> Self {
        FrameReader { buf: vec![0; frames * FRAME_LEN], start: 0, end: 0 }
    }

    /// Bytes received but not yet handed out as frames (always less than one frame after
    /// [`FrameReader::next_frame`] returned `None`).
    pub const fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The bytes received and not yet handed out as frames. After a HELLO reply switches the
    /// connection to compact framing, whatever arrived behind it is the start of the
    /// compact stream: move these to a [`crate::CompactReader`].
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Whether a whole frame is waiting.
    pub const fn has_frame(&self) -> bool {
        self.buffered() >= FRAME_LEN
    }

    /// Bytes of memory held.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Copies bytes in.
    pub fn push(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// Room to read into, at least `min` bytes long: pass it to `read`, then call
    /// [`FrameReader::commit`] with the count read. Moves a partial frame to the front or
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

    /// Records that `n` bytes were written at the start of the last [`FrameReader::spare`].
    ///
    /// # Panics
    /// If `n` is more than the spare room: that is a bug in the caller, not bad input.
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.end, "committed more bytes than the spare room");
        self.end += n;
    }

    /// The next whole frame, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Option<&[u8; FRAME_LEN]> {
        let frame = self.buf[self.start..self.end].first_chunk::<FRAME_LEN>()?;
        self.start += FRAME_LEN;
        if self.start == self.end {
            // Nothing partial is left: the next read starts at the front, no copy needed.
            self.start = 0;
            self.end = 0;
        }
        Some(frame)
    }

    /// Forgets everything buffered.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
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

    fn numbered_frames(n: usize) -> Vec<u8> {
        (0..n * FRAME_LEN).map(|i| (i / FRAME_LEN) as u8).collect()
    }

    #[test]
    fn frames_come_out_whole_and_in_order_for_any_split() {
        let bytes = numbered_frames(5);
        for chunk in [1, 7, 100, 4095, 4096, 4097, 9000, 5 * FRAME_LEN] {
            let mut reader = FrameReader::new();
            let mut seen = Vec::new();
            for piece in bytes.chunks(chunk) {
                reader.push(piece);
                while let Some(frame) = reader.next_frame() {
                    assert!(frame.iter().all(|&b| b == frame[0]), "frame mixed bytes at chunk {chunk}");
                    seen.push(frame[0]);
                }
            }
            assert_eq!(seen, [0, 1, 2, 3, 4], "chunk size {chunk}");
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn spare_and_commit_read_in_place_without_growing() {
        let bytes = numbered_frames(3);
        let mut reader = FrameReader::with_capacity(2);
        let mut fed = 0;
        let mut seen = Vec::new();
        while fed < bytes.len() {
            let room = reader.spare(1);
            let n = room.len().min(bytes.len() - fed).min(3000);
            room[..n].copy_from_slice(&bytes[fed..fed + n]);
            reader.commit(n);
            fed += n;
            while let Some(frame) = reader.next_frame() {
                seen.push(frame[0]);
            }
        }
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(reader.capacity(), 2 * FRAME_LEN, "a partial frame is moved, not grown around");
    }

    #[test]
    fn release_frees_only_when_empty() {
        let mut reader = FrameReader::new();
        assert_eq!(reader.capacity(), 0);
        reader.push(&[1, 2, 3]);
        assert!(!reader.release());
        reader.clear();
        assert!(reader.release());
        assert_eq!(reader.capacity(), 0);
    }
}
