//! Tandem's wire codec: every message, request or reply, is one frame, 4096 bytes by default
//! or, between servers, compact (the same frame without its padding).
//!
//! The crate does no I/O, reads no clock and allocates nothing on decode. Decoding borrows
//! the key and value from the caller's bytes; encoding writes into memory the caller owns
//! and reuses. Any Rust tool can depend on this crate alone to speak the protocol; other
//! languages follow `PROTOCOL.md` and check themselves against `wire/tests/vectors.txt`.
//!
//! # Layout
//!
//! ```text
//!  offset  size  field       (all integers little-endian)
//!       0     3  magic       "TDM"
//!       3     1  version     1
//!       4     4  crc         CRC-32 (IEEE) of bytes 8 .. 48 + key_len + value_len
//!       8     8  id          chosen by the sender of a request; a reply echoes it
//!      16     4  command     opcode, see [`Command`]
//!      20     4  flags       see [`Flags`]
//!      24     8  param       per command: client id in requests, [`Status`] in replies
//!      32     4  key_len     bytes of key   (at most MAX_KEY_LEN)
//!      36     4  value_len   bytes of value (key_len + value_len at most MAX_PAYLOAD_LEN)
//!      40     8  timestamp   the value's version
//!      48   ...  payload     key, then value, then zeros up to 4096
//! ```
//!
//! - [`header`]: the offsets and sizes above as constants.
//! - [`Frame`]: a validated view of one frame; [`Frame::decode`] and [`Frame::encode`].
//! - [`Command`], [`Flags`], [`Status`]: the codes that fill the header.
//! - [`Request`]: a decoded frame checked against the rules of its command.
//! - [`FrameReader`]: turns whatever a socket read delivered into whole frames.
//! - [`Framing`], [`Frame::decode_compact`], [`CompactReader`]: the same frames without the
//!   padding, for links between servers and coordinator datagrams.
//! - [`DecodeError`], [`EncodeError`]: every way a frame can be bad.
//! - [`crc`]: CRC-32 arithmetic, so that [`Frame::payload_crc`] can give a receiver the CRC of a
//!   verified frame's key and value (from the [`FrameCrc`] a decoder returns) without a second
//!   pass over them.
//!
//! # Example
//!
//! ```
//! use wire::{Command, Frame, Request, Status, FRAME_LEN};
//!
//! // A client encodes a PUT into a buffer it owns...
//! let mut buf = [0u8; FRAME_LEN];
//! Frame::request(7, Command::PUT, b"fruit", b"apple").encode(&mut buf)?;
//!
//! // ...a server decodes it without copying the payload...
//! let frame = Frame::decode(&buf)?;
//! let Request::Put { key, value, .. } = Request::parse(&frame)? else { unreachable!() };
//! assert_eq!((key, value), (&b"fruit"[..], &b"apple"[..]));
//!
//! // ...and answers with the same id.
//! let mut reply = [0u8; FRAME_LEN];
//! Frame::reply(&frame, Status::OK, b"").encode(&mut reply)?;
//! let answer = Frame::decode(&reply)?;
//! assert_eq!((answer.id, answer.status()), (7, Status::OK));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod cluster;
mod codes;
mod compact;
pub mod crc;
mod error;
mod frame;
pub mod header;
mod request;
mod stream;

pub use codes::{Command, Flags, Status};
pub use compact::{CompactReader, Framing};
pub use error::{DecodeError, EncodeError};
pub use frame::{Frame, FrameCrc};
pub use header::{FRAME_LEN, HEADER_LEN, MAX_KEY_LEN, MAX_PAYLOAD_LEN, VERSION};
pub use request::{Request, HELLO_COMPACT, HELLO_FIXED};
pub use stream::FrameReader;

/// The largest value that fits in one frame beside a key of `key_len` bytes.
///
/// Returns 0 when the key alone is longer than the payload area.
pub const fn max_value_len(key_len: usize) -> usize {
    MAX_PAYLOAD_LEN.saturating_sub(key_len)
}
