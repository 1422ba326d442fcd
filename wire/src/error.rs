//! Every way a frame can be bad, as values: decoding never panics.

use std::fmt;

use crate::{Command, Framing, Status};

/// Why bytes are not an acceptable frame, or a frame not an acceptable request.
///
/// Errors found before the checksum was verified cannot trust the header, so they carry no
/// id; the others carry the sender's id so that a receiver can answer it
/// ([`DecodeError::trusted_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer is not exactly one frame long.
    WrongLength {
        /// Bytes given.
        len: usize,
    },
    /// The first three bytes are not `TDM`: the stream is not ours, or not aligned on frames.
    BadMagic {
        /// The bytes found.
        found: [u8; 3],
    },
    /// The version byte is not one this crate speaks.
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// The CRC stored in the frame differs from the CRC of its contents.
    BadChecksum {
        /// CRC in the header.
        stored: u32,
        /// CRC computed over the frame.
        computed: u32,
    },
    /// A compact frame declares `key_len` above [`crate::MAX_KEY_LEN`] or `key_len +
    /// value_len` above [`crate::MAX_PAYLOAD_LEN`]. Only [`crate::Frame::decode_compact`]
    /// reports it: the lengths say where a compact frame ends, so they are checked before the
    /// checksum that would vouch for them, and the id is not trusted.
    BadCompactLength {
        /// The declared key length.
        key_len: u32,
        /// The declared value length.
        value_len: u32,
    },
    /// `key_len` is above [`crate::MAX_KEY_LEN`].
    KeyTooLong {
        /// The frame's id.
        id: u64,
        /// The declared key length.
        len: u32,
    },
    /// `key_len + value_len` is above [`crate::MAX_PAYLOAD_LEN`]: the sizes overflow the frame.
    PayloadTooLong {
        /// The frame's id.
        id: u64,
        /// The declared key length.
        key_len: u32,
        /// The declared value length.
        value_len: u32,
    },
    /// A reserved flag bit is set.
    ReservedFlags {
        /// The frame's id.
        id: u64,
        /// The whole flags field.
        flags: u32,
    },
    /// The frame sets `CONTINUED`, which version 1 reserves but does not implement.
    Continued {
        /// The frame's id.
        id: u64,
    },
    /// The command code is not defined (from [`crate::Request::parse`]).
    UnknownCommand {
        /// The frame's id.
        id: u64,
        /// The code found.
        command: u32,
    },
    /// The frame breaks a rule of its command (from [`crate::Request::parse`]).
    BadRequest {
        /// The frame's id.
        id: u64,
        /// The command.
        command: Command,
        /// Which rule.
        reason: &'static str,
    },
}

impl DecodeError {
    /// The sender's id, when the error was found after the checksum proved the header
    /// intact; `None` when the header cannot be trusted (answer with id 0).
    pub const fn trusted_id(&self) -> Option<u64> {
        match *self {
            DecodeError::WrongLength { .. }
            | DecodeError::BadMagic { .. }
            | DecodeError::UnsupportedVersion { .. }
            | DecodeError::BadChecksum { .. }
            | DecodeError::BadCompactLength { .. } => None,
            DecodeError::KeyTooLong { id, .. }
            | DecodeError::PayloadTooLong { id, .. }
            | DecodeError::ReservedFlags { id, .. }
            | DecodeError::Continued { id }
            | DecodeError::UnknownCommand { id, .. }
            | DecodeError::BadRequest { id, .. } => Some(id),
        }
    }

    /// The status a server answers this error with.
    pub const fn status(&self) -> Status {
        match self {
            DecodeError::WrongLength { .. }
            | DecodeError::BadMagic { .. }
            | DecodeError::PayloadTooLong { .. }
            | DecodeError::BadCompactLength { .. }
            | DecodeError::ReservedFlags { .. } => Status::BAD_FRAME,
            DecodeError::UnsupportedVersion { .. } | DecodeError::Continued { .. } => Status::UNSUPPORTED,
            DecodeError::BadChecksum { .. } => Status::BAD_CHECKSUM,
            DecodeError::KeyTooLong { .. } => Status::TOO_LARGE,
            DecodeError::UnknownCommand { .. } => Status::UNKNOWN_COMMAND,
            DecodeError::BadRequest { .. } => Status::BAD_REQUEST,
        }
    }

    /// Whether the byte stream can no longer be trusted to be aligned on our frames, so the
    /// receiver should answer once and close the connection. Every other error spoils only
    /// its own frame: frames are fixed-size, so the next one starts 4096 bytes later.
    ///
    /// This is [`DecodeError::is_fatal_for`] with [`Framing::Fixed`]; a compact stream must
    /// ask that instead, because there a bad checksum is fatal too.
    pub const fn is_fatal(&self) -> bool {
        self.is_fatal_for(Framing::Fixed)
    }

    /// Whether, on a stream framed with `framing`, the receiver should answer once and close
    /// the connection (or, for a datagram, give up on that datagram) because it can no longer
    /// tell where the next frame starts.
    ///
    /// Both framings lose the stream on bad magic or version. A fixed frame keeps its
    /// boundary whatever its contents, so nothing else is fatal there. A compact frame ends
    /// where its lengths say, so an impossible length, and a bad checksum (which may be a
    /// damaged length), lose the boundary as well; errors found once the checksum has
    /// vouched for the lengths (flags, command, command rules) spoil only their frame.
    pub const fn is_fatal_for(&self, framing: Framing) -> bool {
        match self {
            // BadCompactLength never comes from fixed decoding; wherever it is seen, the
            // boundary it should have given is lost.
            DecodeError::WrongLength { .. }
            | DecodeError::BadMagic { .. }
            | DecodeError::UnsupportedVersion { .. }
            | DecodeError::BadCompactLength { .. } => true,
            // Length errors cannot come from compact decoding (it reports BadCompactLength),
            // but they are errors about the boundary, so they are classed with it.
            DecodeError::BadChecksum { .. }
            | DecodeError::KeyTooLong { .. }
            | DecodeError::PayloadTooLong { .. } => matches!(framing, Framing::Compact),
            DecodeError::ReservedFlags { .. }
            | DecodeError::Continued { .. }
            | DecodeError::UnknownCommand { .. }
            | DecodeError::BadRequest { .. } => false,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::WrongLength { len } => {
                write!(f, "frame is {len} bytes, expected {}", crate::FRAME_LEN)
            }
            DecodeError::BadMagic { found } => {
                write!(f, "bad magic {:02x}{:02x}{:02x}, expected \"TDM\"", found[0], found[1], found[2])
            }
            DecodeError::UnsupportedVersion { found } => {
                write!(f, "unsupported protocol version {found}, this side speaks {}", crate::VERSION)
            }
            DecodeError::BadChecksum { stored, computed } => {
                write!(f, "checksum mismatch: frame says {stored:#010x}, contents give {computed:#010x}")
            }
            DecodeError::BadCompactLength { key_len, value_len } => write!(
                f,
                "compact frame declares key {key_len} + value {value_len} bytes, beyond the limits \
                 (key at most {}, key + value at most {})",
                crate::MAX_KEY_LEN,
                crate::MAX_PAYLOAD_LEN
            ),
            DecodeError::KeyTooLong { id, len } => {
                write!(f, "frame {id}: key of {len} bytes exceeds the limit of {}", crate::MAX_KEY_LEN)
            }
            DecodeError::PayloadTooLong { id, key_len, value_len } => write!(
                f,
                "frame {id}: key {key_len} + value {value_len} bytes overflow the {}-byte payload",
                crate::MAX_PAYLOAD_LEN
            ),
            DecodeError::ReservedFlags { id, flags } => {
                write!(f, "frame {id}: reserved flag bits set in {flags:#x}")
            }
            DecodeError::Continued { id } => {
                write!(f, "frame {id}: values continued across frames are not supported")
            }
            DecodeError::UnknownCommand { id, command } => {
                write!(f, "frame {id}: unknown command {command:#x}")
            }
            DecodeError::BadRequest { id, command, reason } => {
                write!(f, "frame {id}: bad {command}: {reason}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a frame could not be encoded. Nothing is written to the output when this is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is shorter than the encoded frame: [`crate::FRAME_LEN`], or for
    /// compact framing [`crate::Frame::encoded_len`].
    BufferTooSmall {
        /// Bytes available.
        len: usize,
    },
    /// The key is longer than [`crate::MAX_KEY_LEN`].
    KeyTooLong {
        /// The key's length.
        len: usize,
    },
    /// Key and value together exceed [`crate::MAX_PAYLOAD_LEN`].
    PayloadTooLong {
        /// The key's length.
        key_len: usize,
        /// The value's length.
        value_len: usize,
    },
    /// A reserved flag bit is set.
    ReservedFlags {
        /// The flags given.
        flags: u32,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::BufferTooSmall { len } => {
                write!(
                    f,
                    "output buffer of {len} bytes cannot hold the frame ({} bytes, or header + key + \
                     value when compact)",
                    crate::FRAME_LEN
                )
            }
            EncodeError::KeyTooLong { len } => {
                write!(f, "key of {len} bytes exceeds the limit of {}", crate::MAX_KEY_LEN)
            }
            EncodeError::PayloadTooLong { key_len, value_len } => write!(
                f,
                "key {key_len} + value {value_len} bytes exceed the {}-byte payload",
                crate::MAX_PAYLOAD_LEN
            ),
            EncodeError::ReservedFlags { flags } => write!(f, "reserved flag bits set in {flags:#x}"),
        }
    }
}

impl std::error::Error for EncodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_closes_the_stream_depends_on_the_framing() {
        let get = Command::GET;
        // (error, status, trusted id, fatal when fixed, fatal when compact)
        let table = [
            (DecodeError::BadMagic { found: *b"XDM" }, Status::BAD_FRAME, None, true, true),
            (DecodeError::UnsupportedVersion { found: 2 }, Status::UNSUPPORTED, None, true, true),
            (
                DecodeError::BadCompactLength { key_len: 1025, value_len: 0 },
                Status::BAD_FRAME,
                None,
                true,
                true,
            ),
            (DecodeError::BadChecksum { stored: 1, computed: 2 }, Status::BAD_CHECKSUM, None, false, true),
            (DecodeError::KeyTooLong { id: 4, len: 1025 }, Status::TOO_LARGE, Some(4), false, true),
            (
                DecodeError::PayloadTooLong { id: 4, key_len: 1, value_len: 4048 },
                Status::BAD_FRAME,
                Some(4),
                false,
                true,
            ),
            (DecodeError::ReservedFlags { id: 4, flags: 8 }, Status::BAD_FRAME, Some(4), false, false),
            (DecodeError::Continued { id: 4 }, Status::UNSUPPORTED, Some(4), false, false),
            (
                DecodeError::UnknownCommand { id: 4, command: 0x3f },
                Status::UNKNOWN_COMMAND,
                Some(4),
                false,
                false,
            ),
            (
                DecodeError::BadRequest { id: 4, command: get, reason: "r" },
                Status::BAD_REQUEST,
                Some(4),
                false,
                false,
            ),
        ];
        for (e, status, id, fixed, compact) in table {
            assert_eq!(
                (
                    e.status(),
                    e.trusted_id(),
                    e.is_fatal(),
                    e.is_fatal_for(Framing::Fixed),
                    e.is_fatal_for(Framing::Compact)
                ),
                (status, id, fixed, fixed, compact),
                "{e:?}"
            );
        }
    }
}
