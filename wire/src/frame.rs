//! [`Frame`]: one decoded frame, borrowing its key and value from the bytes it came from.

use bytes::BufMut;

use crate::header::*;
use crate::{Command, DecodeError, EncodeError, Flags, Framing, Status};

/// One frame: the header's fields and the payload's key and value.
///
/// A decoded frame borrows `key` and `value` from the buffer it was decoded from; a frame
/// to encode borrows them from wherever the caller keeps them. Building one costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Chosen by the sender of a request, echoed by the reply.
    pub id: u64,
    /// The opcode.
    pub command: Command,
    /// Reply / error / continuation bits.
    pub flags: Flags,
    /// Per command: the client id in write requests, the [`Status`] in replies.
    pub param: u64,
    /// The value's version: in write requests the version expected (0 = any), in replies
    /// the version read or written.
    pub timestamp: u64,
    /// The key, at most [`MAX_KEY_LEN`] bytes.
    pub key: &'a [u8],
    /// The value; `key.len() + value.len()` is at most [`MAX_PAYLOAD_LEN`].
    pub value: &'a [u8],
}

/// The checksum of a frame that decoded: the CRC-32 its sender wrote in the header, which the
/// decoder recomputed and found equal. Only the decoders ([`Frame::decode_with_crc`],
/// [`Frame::decode_compact_with_crc`], [`crate::CompactReader::next_frame_with_crc`]) make one,
/// so holding one means the frame it came with was verified; [`Frame::payload_crc`] turns it into
/// the CRC of that frame's key and value without reading them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameCrc(u32);

impl FrameCrc {
    /// The checksum's value: CRC-32 (IEEE) of the frame's bytes from [`CRC_START`] to the end
    /// of its value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

// Generic over the array length so the same readers serve a whole fixed frame and the bare
// header of a compact one; the offsets are constants inside the header, so they never fail.
#[inline]
fn read_u32<const N: usize>(frame: &[u8; N], offset: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&frame[offset..offset + 4]);
    u32::from_le_bytes(field)
}

#[inline]
fn read_u64<const N: usize>(frame: &[u8; N], offset: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&frame[offset..offset + 8]);
    u64::from_le_bytes(field)
}

/// End of the checksummed range for the declared lengths, clamped to the frame so that a
/// frame with impossible lengths can still be checksummed (and its id trusted).
#[inline]
fn crc_end(key_len: u32, value_len: u32) -> usize {
    let end = HEADER_LEN as u64 + u64::from(key_len) + u64::from(value_len);
    end.min(FRAME_LEN as u64) as usize
}

/// The length of the compact frame whose lengths are `key_len` and `value_len`, or `None`
/// when they break a limit. Computed in `u64` so that no declared length can overflow.
#[inline]
const fn compact_len(key_len: u32, value_len: u32) -> Option<usize> {
    let payload = key_len as u64 + value_len as u64;
    if key_len as u64 > MAX_KEY_LEN as u64 || payload > MAX_PAYLOAD_LEN as u64 {
        None
    } else {
        Some(HEADER_LEN + payload as usize)
    }
}

/// The declared key and value lengths at the front of `buf`, once the bytes holding them have
/// arrived: they come before the timestamp, so a bad length is seen before the header is whole.
#[inline]
fn declared_lengths(buf: &[u8]) -> Option<(u32, u32)> {
    let field = |at: usize| buf.get(at..)?.first_chunk::<4>().map(|b| u32::from_le_bytes(*b));
    Some((field(KEY_LEN_OFFSET)?, field(VALUE_LEN_OFFSET)?))
}

/// The length of the compact frame at the front of `buf` as its header declares it, when the
/// lengths have arrived and are within the limits. [`crate::CompactReader`] uses it to step
/// over a frame that failed a check made after the checksum, whose lengths are thus trusted.
pub(crate) fn declared_compact_len(buf: &[u8]) -> Option<usize> {
    let (key_len, value_len) = declared_lengths(buf)?;
    compact_len(key_len, value_len)
}

impl<'a> Frame<'a> {
    /// A request with no flags, no param and no expected version.
    pub const fn request(id: u64, command: Command, key: &'a [u8], value: &'a [u8]) -> Self {
        Frame { id, command, flags: Flags::NONE, param: 0, timestamp: 0, key, value }
    }

    /// The reply to `request`: same id and command, `status` in `param`, `value` as payload.
    pub fn reply(request: &Frame<'_>, status: Status, value: &'a [u8]) -> Self {
        Self::reply_to(request.id, request.command, status, value)
    }

    /// A reply built from an id and command, for when no decoded request is at hand
    /// (e.g. answering a frame that failed to decode, with id 0 if it was untrusted).
    pub const fn reply_to(id: u64, command: Command, status: Status, value: &'a [u8]) -> Self {
        let flags = if status.is_error() { Flags(Flags::REPLY.0 | Flags::ERROR.0) } else { Flags::REPLY };
        Frame { id, command, flags, param: status.0, timestamp: 0, key: &[], value }
    }

    /// The same frame with `param` set.
    pub const fn with_param(mut self, param: u64) -> Self {
        self.param = param;
        self
    }

    /// The same frame with `timestamp` set.
    pub const fn with_timestamp(mut self, timestamp: u64) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// Whether the frame is a reply.
    pub const fn is_reply(&self) -> bool {
        self.flags.contains(Flags::REPLY)
    }

    /// The status of a reply (its `param`). Meaningless for requests.
    pub const fn status(&self) -> Status {
        Status(self.param)
    }

    /// Decodes and verifies one frame without copying its payload.
    ///
    /// Checks, in order: magic, version, checksum, lengths, flags. The command is not
    /// checked here, so a frame with an unknown command still decodes and can be answered;
    /// [`crate::Request::parse`] checks commands.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the first check that failed. No input makes this panic.
    #[inline]
    pub fn decode(frame: &'a [u8; FRAME_LEN]) -> Result<Frame<'a>, DecodeError> {
        Frame::decode_with_crc(frame).map(|(frame, _)| frame)
    }

    /// [`Frame::decode`], also returning the checksum it verified: for a receiver that will
    /// checksum the key and value again (a server storing them), see [`Frame::payload_crc`].
    ///
    /// # Errors
    /// As [`Frame::decode`].
    pub fn decode_with_crc(frame: &'a [u8; FRAME_LEN]) -> Result<(Frame<'a>, FrameCrc), DecodeError> {
        let magic = [frame[MAGIC_OFFSET], frame[MAGIC_OFFSET + 1], frame[MAGIC_OFFSET + 2]];
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        if frame[VERSION_OFFSET] != VERSION {
            return Err(DecodeError::UnsupportedVersion { found: frame[VERSION_OFFSET] });
        }
        let key_len = read_u32(frame, KEY_LEN_OFFSET);
        let value_len = read_u32(frame, VALUE_LEN_OFFSET);
        let stored = read_u32(frame, CRC_OFFSET);
        let computed = crc32fast::hash(&frame[CRC_START..crc_end(key_len, value_len)]);
        if stored != computed {
            return Err(DecodeError::BadChecksum { stored, computed });
        }
        let id = read_u64(frame, ID_OFFSET);
        if key_len as usize > MAX_KEY_LEN {
            return Err(DecodeError::KeyTooLong { id, len: key_len });
        }
        // In u64: on a 32-bit target two declared u32 lengths could overflow `usize`.
        if u64::from(key_len) + u64::from(value_len) > MAX_PAYLOAD_LEN as u64 {
            return Err(DecodeError::PayloadTooLong { id, key_len, value_len });
        }
        let flags = Flags(read_u32(frame, FLAGS_OFFSET));
        if flags.0 & Flags::RESERVED.0 != 0 {
            return Err(DecodeError::ReservedFlags { id, flags: flags.0 });
        }
        let key_end = PAYLOAD_OFFSET + key_len as usize;
        let decoded = Frame {
            id,
            command: Command(read_u32(frame, COMMAND_OFFSET)),
            flags,
            param: read_u64(frame, PARAM_OFFSET),
            timestamp: read_u64(frame, TIMESTAMP_OFFSET),
            key: &frame[PAYLOAD_OFFSET..key_end],
            value: &frame[key_end..key_end + value_len as usize],
        };
        Ok((decoded, FrameCrc(stored)))
    }

    /// [`Frame::decode`] for a slice, which must be exactly [`FRAME_LEN`] bytes.
    ///
    /// # Errors
    /// [`DecodeError::WrongLength`] for any other length, then as [`Frame::decode`].
    pub fn decode_slice(bytes: &'a [u8]) -> Result<Frame<'a>, DecodeError> {
        match <&[u8; FRAME_LEN]>::try_from(bytes) {
            Ok(frame) => Frame::decode(frame),
            Err(_) => Err(DecodeError::WrongLength { len: bytes.len() }),
        }
    }

    /// Decodes the compact frame at the front of `buf` (header, key, value, no padding)
    /// without copying its payload, and returns it with the number of bytes it used.
    ///
    /// Returns `Ok(None)` while `buf` holds less than a whole frame: read more and call again
    /// with the same bytes at the front. Bytes after the frame are left alone, so `buf` may
    /// hold several frames back to back.
    ///
    /// Checks, in order, each as soon as the bytes it reads are in `buf`: magic (3 bytes),
    /// version (4), key and value lengths (40), then, once the whole frame is there, checksum
    /// and flags. The lengths come before the checksum because they say where the frame (and
    /// so the checksummed range) ends; an impossible length cannot wait for a frame that would
    /// never end, so it is [`DecodeError::BadCompactLength`] with no trusted id. As with
    /// [`Frame::decode`], the command is left to [`crate::Request::parse`].
    ///
    /// A datagram carries exactly one frame: its receiver must also refuse `Ok(None)` (the
    /// datagram was cut short) and a returned length other than the datagram's.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the first check that failed; whether the stream survives it
    /// is [`DecodeError::is_fatal_for`] with [`Framing::Compact`]. No input makes this panic.
    #[inline]
    pub fn decode_compact(buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, DecodeError> {
        Frame::decode_compact_with_crc(buf).map(|decoded| decoded.map(|(frame, len, _)| (frame, len)))
    }

    /// [`Frame::decode_compact`], also returning the checksum it verified (see
    /// [`Frame::payload_crc`]).
    ///
    /// # Errors
    /// As [`Frame::decode_compact`].
    pub fn decode_compact_with_crc(
        buf: &'a [u8],
    ) -> Result<Option<(Frame<'a>, usize, FrameCrc)>, DecodeError> {
        let Some(&magic) = buf.first_chunk::<3>() else {
            return Ok(None);
        };
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        let Some(&version) = buf.get(VERSION_OFFSET) else {
            return Ok(None);
        };
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion { found: version });
        }
        let Some((key_len, value_len)) = declared_lengths(buf) else {
            return Ok(None);
        };
        let Some(len) = compact_len(key_len, value_len) else {
            return Err(DecodeError::BadCompactLength { key_len, value_len });
        };
        let Some(frame) = buf.get(..len) else {
            return Ok(None);
        };
        // `len` is at least HEADER_LEN, so the split always succeeds.
        let Some((header, payload)) = frame.split_first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let stored = read_u32(header, CRC_OFFSET);
        let computed = crc32fast::hash(&frame[CRC_START..]);
        if stored != computed {
            return Err(DecodeError::BadChecksum { stored, computed });
        }
        let id = read_u64(header, ID_OFFSET);
        let flags = Flags(read_u32(header, FLAGS_OFFSET));
        if flags.0 & Flags::RESERVED.0 != 0 {
            return Err(DecodeError::ReservedFlags { id, flags: flags.0 });
        }
        // compact_len checked key_len + value_len == payload.len(), so key_len is in range.
        let (key, value) = payload.split_at(key_len as usize);
        let frame = Frame {
            id,
            command: Command(read_u32(header, COMMAND_OFFSET)),
            flags,
            param: read_u64(header, PARAM_OFFSET),
            timestamp: read_u64(header, TIMESTAMP_OFFSET),
            key,
            value,
        };
        Ok(Some((frame, len, FrameCrc(stored))))
    }

    /// The CRC-32 (IEEE) of `key ‖ value`, derived from `crc`, the checksum this frame was
    /// decoded with, instead of reading key and value again: the checksum covers the header from
    /// [`CRC_START`] and then key and value, so taking the header's CRC off it leaves theirs
    /// (see [`crate::crc`]). Costs a CRC of the 40 header bytes and one [`crate::crc::shift`],
    /// whatever the payload's length.
    ///
    /// `crc` must come from decoding this frame, as the decoders return them together; with
    /// another frame's checksum the result is meaningless (a frame built for encoding has no
    /// checksum yet: [`crc32fast::hash`] its key and value instead).
    ///
    /// ```
    /// use wire::{Command, Frame, FRAME_LEN};
    ///
    /// let mut buf = [0u8; FRAME_LEN];
    /// Frame::request(7, Command::PUT, b"fruit", b"apple").encode(&mut buf)?;
    /// let (frame, crc) = Frame::decode_with_crc(&buf)?;
    /// assert_eq!(frame.payload_crc(crc), crc32fast::hash(b"fruitapple"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn payload_crc(&self, crc: FrameCrc) -> u32 {
        let header = self.header();
        let payload_len = self.key.len() as u64 + self.value.len() as u64;
        crate::crc::strip_prefix(crc.0, crc32fast::hash(&header[CRC_START..]), payload_len)
    }

    /// Bytes the frame takes on the wire with `framing`: always [`FRAME_LEN`] for
    /// [`Framing::Fixed`], header plus key plus value for [`Framing::Compact`]. Meaningful
    /// for frames within the limits ([`Frame::validate`]), which are all a sender may send.
    pub const fn encoded_len(&self, framing: Framing) -> usize {
        match framing {
            Framing::Fixed => FRAME_LEN,
            // Saturating: a frame over the limits must not overflow before validate refuses it.
            Framing::Compact => HEADER_LEN.saturating_add(self.key.len()).saturating_add(self.value.len()),
        }
    }

    /// Checks the limits that [`Frame::encode`] enforces.
    ///
    /// # Errors
    /// The first limit the frame breaks.
    pub fn validate(&self) -> Result<(), EncodeError> {
        if self.key.len() > MAX_KEY_LEN {
            return Err(EncodeError::KeyTooLong { len: self.key.len() });
        }
        if self.key.len() + self.value.len() > MAX_PAYLOAD_LEN {
            return Err(EncodeError::PayloadTooLong { key_len: self.key.len(), value_len: self.value.len() });
        }
        if self.flags.0 & Flags::RESERVED.0 != 0 {
            return Err(EncodeError::ReservedFlags { flags: self.flags.0 });
        }
        Ok(())
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&MAGIC);
        h[VERSION_OFFSET] = VERSION;
        h[ID_OFFSET..COMMAND_OFFSET].copy_from_slice(&self.id.to_le_bytes());
        h[COMMAND_OFFSET..FLAGS_OFFSET].copy_from_slice(&self.command.0.to_le_bytes());
        h[FLAGS_OFFSET..PARAM_OFFSET].copy_from_slice(&self.flags.0.to_le_bytes());
        h[PARAM_OFFSET..KEY_LEN_OFFSET].copy_from_slice(&self.param.to_le_bytes());
        h[KEY_LEN_OFFSET..VALUE_LEN_OFFSET].copy_from_slice(&(self.key.len() as u32).to_le_bytes());
        h[VALUE_LEN_OFFSET..TIMESTAMP_OFFSET].copy_from_slice(&(self.value.len() as u32).to_le_bytes());
        h[TIMESTAMP_OFFSET..PAYLOAD_OFFSET].copy_from_slice(&self.timestamp.to_le_bytes());
        h
    }

    /// The header with its checksum filled in, computed piecewise over header, key and value
    /// so that appending to a [`BufMut`] needs no temporary frame.
    fn checksummed_header(&self) -> [u8; HEADER_LEN] {
        let mut header = self.header();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[CRC_START..]);
        crc.update(self.key);
        crc.update(self.value);
        header[CRC_OFFSET..ID_OFFSET].copy_from_slice(&crc.finalize().to_le_bytes());
        header
    }

    /// Writes header, key and value (the compact frame, which is also the fixed frame before
    /// its padding) into `out`, which must be exactly that long; the frame must be valid.
    fn write_unpadded(&self, out: &mut [u8]) {
        out[..HEADER_LEN].copy_from_slice(&self.header());
        let key_end = PAYLOAD_OFFSET + self.key.len();
        out[PAYLOAD_OFFSET..key_end].copy_from_slice(self.key);
        out[key_end..].copy_from_slice(self.value);
        let crc = crc32fast::hash(&out[CRC_START..]);
        out[CRC_OFFSET..ID_OFFSET].copy_from_slice(&crc.to_le_bytes());
    }

    /// Encodes the frame into the first [`FRAME_LEN`] bytes of `out`, padding with zeros,
    /// and returns [`FRAME_LEN`]. `out` can be reused from frame to frame.
    ///
    /// # Errors
    /// When `out` is too short or the frame breaks a limit ([`Frame::validate`]); `out` is
    /// then left untouched.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.validate()?;
        let Some(out) = out.first_chunk_mut::<FRAME_LEN>() else {
            return Err(EncodeError::BufferTooSmall { len: out.len() });
        };
        let (frame, padding) = out.split_at_mut(self.encoded_len(Framing::Compact));
        self.write_unpadded(frame);
        padding.fill(0);
        Ok(FRAME_LEN)
    }

    /// Encodes the frame compactly (header, key, value, no padding) into the front of `out`
    /// and returns the length written, [`Frame::encoded_len`] with [`Framing::Compact`].
    /// The bytes are those of [`Frame::encode`] up to the end of the value.
    ///
    /// # Errors
    /// When `out` is shorter than the frame or the frame breaks a limit
    /// ([`Frame::validate`]); `out` is then left untouched.
    pub fn encode_compact(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.validate()?;
        let len = self.encoded_len(Framing::Compact);
        let out_len = out.len();
        let Some(frame) = out.get_mut(..len) else {
            return Err(EncodeError::BufferTooSmall { len: out_len });
        };
        self.write_unpadded(frame);
        Ok(len)
    }

    /// Appends the encoded frame to a [`BufMut`] (a `Vec<u8>`, a `BytesMut`, ...).
    ///
    /// # Errors
    /// When the frame breaks a limit, or `buf` has less than [`FRAME_LEN`] bytes of room;
    /// nothing is written then.
    pub fn encode_to<B: BufMut>(&self, buf: &mut B) -> Result<(), EncodeError> {
        self.validate()?;
        if buf.remaining_mut() < FRAME_LEN {
            return Err(EncodeError::BufferTooSmall { len: buf.remaining_mut() });
        }
        buf.put_slice(&self.checksummed_header());
        buf.put_slice(self.key);
        buf.put_slice(self.value);
        buf.put_bytes(0, MAX_PAYLOAD_LEN - self.key.len() - self.value.len());
        Ok(())
    }

    /// Appends the compact frame to a [`BufMut`]: the bytes of [`Frame::encode_compact`].
    ///
    /// # Errors
    /// When the frame breaks a limit, or `buf` has less room than the frame's length;
    /// nothing is written then.
    pub fn encode_compact_to<B: BufMut>(&self, buf: &mut B) -> Result<(), EncodeError> {
        self.validate()?;
        if buf.remaining_mut() < self.encoded_len(Framing::Compact) {
            return Err(EncodeError::BufferTooSmall { len: buf.remaining_mut() });
        }
        buf.put_slice(&self.checksummed_header());
        buf.put_slice(self.key);
        buf.put_slice(self.value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frame: &Frame<'_>) -> [u8; FRAME_LEN] {
        let mut out = [0xAAu8; FRAME_LEN];
        assert_eq!(frame.encode(&mut out), Ok(FRAME_LEN));
        out
    }

    #[test]
    fn header_fields_land_at_their_offsets() {
        let frame = Frame {
            id: 0x0102030405060708,
            command: Command::PUT,
            flags: Flags::NONE,
            param: 0x1112131415161718,
            timestamp: 0x2122232425262728,
            key: b"k",
            value: b"vv",
        };
        let out = encoded(&frame);
        assert_eq!(&out[..4], b"TDM\x01");
        assert_eq!(out[ID_OFFSET], 0x08, "little-endian id");
        assert_eq!(&out[COMMAND_OFFSET..FLAGS_OFFSET], &[3, 0, 0, 0]);
        assert_eq!(&out[KEY_LEN_OFFSET..VALUE_LEN_OFFSET], &[1, 0, 0, 0]);
        assert_eq!(&out[VALUE_LEN_OFFSET..TIMESTAMP_OFFSET], &[2, 0, 0, 0]);
        assert_eq!(&out[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 3], b"kvv");
        assert!(out[PAYLOAD_OFFSET + 3..].iter().all(|&b| b == 0), "padding is zeroed");
        assert_eq!(Frame::decode(&out), Ok(frame));
    }

    #[test]
    fn encode_to_bufmut_matches_encode() {
        let frame = Frame::request(9, Command::APPEND, b"key", &[7u8; 100]).with_param(42);
        let mut v = Vec::new();
        frame.encode_to(&mut v).unwrap();
        assert_eq!(v.as_slice(), &encoded(&frame)[..]);
    }

    #[test]
    fn limits_are_inclusive() {
        let key = [b'k'; MAX_KEY_LEN];
        let value = [b'v'; MAX_PAYLOAD_LEN - MAX_KEY_LEN];
        let frame = Frame::request(1, Command::PUT, &key, &value);
        assert_eq!(Frame::decode(&encoded(&frame)), Ok(frame));
        let long_key = [b'k'; MAX_KEY_LEN + 1];
        let mut out = [0u8; FRAME_LEN];
        assert_eq!(
            Frame::request(1, Command::PUT, &long_key, b"").encode(&mut out),
            Err(EncodeError::KeyTooLong { len: MAX_KEY_LEN + 1 })
        );
        let big = [0u8; MAX_PAYLOAD_LEN];
        assert_eq!(
            Frame::request(1, Command::PUT, b"k", &big).encode(&mut out),
            Err(EncodeError::PayloadTooLong { key_len: 1, value_len: MAX_PAYLOAD_LEN })
        );
        assert_eq!(out, [0u8; FRAME_LEN], "failed encodes write nothing");
        assert_eq!(
            Frame::request(1, Command::PUT, b"k", b"").encode(&mut out[..FRAME_LEN - 1]),
            Err(EncodeError::BufferTooSmall { len: FRAME_LEN - 1 })
        );
    }

    #[test]
    fn oversized_lengths_are_checksummed_clamped_and_trusted() {
        // A buggy sender declares lengths that overflow the frame but checksums what it sent.
        let mut out = encoded(&Frame::request(77, Command::GET, b"k", b""));
        out[VALUE_LEN_OFFSET..TIMESTAMP_OFFSET].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&out[CRC_START..]);
        out[CRC_OFFSET..ID_OFFSET].copy_from_slice(&crc.to_le_bytes());
        let err = Frame::decode(&out).unwrap_err();
        assert_eq!(err, DecodeError::PayloadTooLong { id: 77, key_len: 1, value_len: u32::MAX });
        assert_eq!(err.trusted_id(), Some(77));
        assert_eq!(err.status(), Status::BAD_FRAME);
        assert!(!err.is_fatal());
    }

    #[test]
    fn any_flipped_bit_in_the_checked_range_is_caught() {
        let frame = Frame::request(5, Command::PUT, b"key", b"value").with_timestamp(3);
        let good = encoded(&frame);
        for byte in 0..HEADER_LEN + 8 {
            for bit in 0..8 {
                let mut bad = good;
                bad[byte] ^= 1 << bit;
                assert!(Frame::decode(&bad).is_err(), "flip of byte {byte} bit {bit} went unseen");
            }
        }
    }

    #[test]
    fn decode_slice_demands_exact_length() {
        let good = encoded(&Frame::request(1, Command::PING, b"", b""));
        assert!(Frame::decode_slice(&good).is_ok());
        assert_eq!(Frame::decode_slice(&good[..100]), Err(DecodeError::WrongLength { len: 100 }));
    }

    #[test]
    fn reply_sets_flags_from_status() {
        let req = Frame::request(3, Command::GET, b"k", b"");
        let ok = Frame::reply(&req, Status::OK, b"v");
        assert_eq!((ok.id, ok.command, ok.flags), (3, Command::GET, Flags::REPLY));
        let miss = Frame::reply(&req, Status::NOT_FOUND, b"");
        assert_eq!(miss.flags, Flags::REPLY);
        let bad = Frame::reply(&req, Status::BAD_REQUEST, b"why");
        assert_eq!(bad.flags, Flags::REPLY | Flags::ERROR);
        assert_eq!(bad.status(), Status::BAD_REQUEST);
    }

    #[test]
    fn compact_is_the_fixed_frame_without_its_padding() {
        let frame = Frame::request(9, Command::APPEND, b"key", &[7u8; 100]).with_param(42);
        let len = frame.encoded_len(Framing::Compact);
        assert_eq!(len, HEADER_LEN + 103);
        assert_eq!(frame.encoded_len(Framing::Fixed), FRAME_LEN);
        let mut out = [0xAAu8; FRAME_LEN];
        assert_eq!(frame.encode_compact(&mut out), Ok(len));
        assert_eq!(&out[..len], &encoded(&frame)[..len]);
        assert!(out[len..].iter().all(|&b| b == 0xAA), "nothing written past the frame");
        let mut v = Vec::new();
        frame.encode_compact_to(&mut v).unwrap();
        assert_eq!(v, &out[..len]);
        assert_eq!(Frame::decode_compact(&out), Ok(Some((frame, len))), "trailing bytes are not read");
    }

    #[test]
    fn compact_encode_refuses_without_writing() {
        let frame = Frame::request(1, Command::PUT, b"k", b"v");
        let mut out = [0u8; HEADER_LEN + 1];
        assert_eq!(frame.encode_compact(&mut out), Err(EncodeError::BufferTooSmall { len: HEADER_LEN + 1 }));
        assert_eq!(out, [0u8; HEADER_LEN + 1]);
        let mut room = [0u8; HEADER_LEN + 1];
        let mut slice = &mut room[..];
        assert_eq!(
            frame.encode_compact_to(&mut slice),
            Err(EncodeError::BufferTooSmall { len: HEADER_LEN + 1 })
        );
        assert_eq!(room, [0u8; HEADER_LEN + 1]);
        let long_key = [b'k'; MAX_KEY_LEN + 1];
        let mut big = [0u8; 2 * FRAME_LEN];
        let bad = Frame::request(1, Command::PUT, &long_key, b"");
        assert_eq!(bad.encode_compact(&mut big), Err(EncodeError::KeyTooLong { len: MAX_KEY_LEN + 1 }));
        assert_eq!(
            bad.encode_compact_to(&mut Vec::new()),
            Err(EncodeError::KeyTooLong { len: MAX_KEY_LEN + 1 })
        );
        assert!(big.iter().all(|&b| b == 0));
    }

    #[test]
    fn compact_checks_run_as_soon_as_their_bytes_arrive() {
        let frame = Frame::request(3, Command::PUT, b"key", b"value");
        let mut good = [0u8; HEADER_LEN + 8];
        frame.encode_compact(&mut good).unwrap();
        assert_eq!(Frame::decode_compact(b"XD"), Ok(None));
        assert_eq!(Frame::decode_compact(b"XDM"), Err(DecodeError::BadMagic { found: *b"XDM" }));
        assert_eq!(Frame::decode_compact(b"TDM"), Ok(None));
        assert_eq!(Frame::decode_compact(b"TDM\x02"), Err(DecodeError::UnsupportedVersion { found: 2 }));
        let mut bad = good;
        bad[KEY_LEN_OFFSET..VALUE_LEN_OFFSET].copy_from_slice(&1025u32.to_le_bytes());
        assert_eq!(Frame::decode_compact(&bad[..TIMESTAMP_OFFSET - 1]), Ok(None));
        let err = DecodeError::BadCompactLength { key_len: 1025, value_len: 5 };
        assert_eq!(Frame::decode_compact(&bad[..TIMESTAMP_OFFSET]), Err(err));
        assert_eq!(
            (err.status(), err.trusted_id(), err.is_fatal_for(Framing::Compact)),
            (Status::BAD_FRAME, None, true)
        );
        bad = good;
        bad[VALUE_LEN_OFFSET..TIMESTAMP_OFFSET].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Frame::decode_compact(&bad[..TIMESTAMP_OFFSET]),
            Err(DecodeError::BadCompactLength { key_len: 3, value_len: u32::MAX })
        );
        for len in 0..good.len() {
            assert_eq!(Frame::decode_compact(&good[..len]), Ok(None), "prefix of {len} bytes");
        }
    }

    #[test]
    fn compact_limits_are_inclusive() {
        let key = [b'k'; MAX_KEY_LEN];
        let value = [b'v'; MAX_PAYLOAD_LEN - MAX_KEY_LEN];
        let frame = Frame::request(1, Command::PUT, &key, &value);
        let mut out = [0u8; FRAME_LEN];
        assert_eq!(frame.encode_compact(&mut out), Ok(FRAME_LEN));
        assert_eq!(Frame::decode_compact(&out), Ok(Some((frame, FRAME_LEN))));
    }
}
