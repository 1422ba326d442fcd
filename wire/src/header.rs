//! The fixed 48-byte frame header: offsets, sizes and limits.
//!
//! Each offset is the previous offset plus the previous field's size, so the table in the
//! crate docs and these constants cannot drift apart. All integers are little-endian.

/// Every frame is exactly this many bytes.
pub const FRAME_LEN: usize = 4096;

/// The three magic bytes that open every frame.
pub const MAGIC: [u8; 3] = *b"TDM";
/// The protocol version this crate speaks; the fourth byte of every frame.
pub const VERSION: u8 = 1;

/// Offset of the magic bytes.
pub const MAGIC_OFFSET: usize = 0;
/// Offset of the version byte.
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + MAGIC.len();
/// Offset of the CRC-32.
pub const CRC_OFFSET: usize = VERSION_OFFSET + 1;
/// Offset of the request id.
pub const ID_OFFSET: usize = CRC_OFFSET + size_of::<u32>();
/// Offset of the command (opcode).
pub const COMMAND_OFFSET: usize = ID_OFFSET + size_of::<u64>();
/// Offset of the flags.
pub const FLAGS_OFFSET: usize = COMMAND_OFFSET + size_of::<u32>();
/// Offset of the per-command parameter.
pub const PARAM_OFFSET: usize = FLAGS_OFFSET + size_of::<u32>();
/// Offset of the key length.
pub const KEY_LEN_OFFSET: usize = PARAM_OFFSET + size_of::<u64>();
/// Offset of the value length.
pub const VALUE_LEN_OFFSET: usize = KEY_LEN_OFFSET + size_of::<u32>();
/// Offset of the timestamp (the value's version).
pub const TIMESTAMP_OFFSET: usize = VALUE_LEN_OFFSET + size_of::<u32>();
/// Offset of the payload: key bytes, then value bytes, then zero padding.
pub const PAYLOAD_OFFSET: usize = TIMESTAMP_OFFSET + size_of::<u64>();

/// Bytes of header before the payload.
pub const HEADER_LEN: usize = PAYLOAD_OFFSET;
/// The checksum covers everything from here to the end of the value.
pub const CRC_START: usize = ID_OFFSET;

/// Bytes available for key plus value.
pub const MAX_PAYLOAD_LEN: usize = FRAME_LEN - HEADER_LEN;
/// The longest key. Longer keys are refused so that a value always has room beside a key.
pub const MAX_KEY_LEN: usize = 1024;

const _: () = assert!(HEADER_LEN == 48);
const _: () = assert!(MAX_PAYLOAD_LEN == 4048);
