//! On-disk layout of segments and records.
//!
//! A segment file is a fixed-size, preallocated file: a 40-byte segment header, then records
//! packed back to back at 8-byte aligned offsets, then zeros up to the end of the file. All
//! integers are little-endian. Each offset constant below is the previous offset plus the
//! previous field's size, so the diagrams and the constants cannot drift apart.
//!
//! ```text
//! segment header (40 bytes)
//!  offset  size  field
//!       0     4  magic        "TDMS"
//!       4     2  version      1
//!       6     1  kind         1 = log (written in LSN order), 2 = compacted (copied records)
//!       7     1  flags        bit 0 RECYCLED: the file had an earlier life; bytes after the
//!                             records may be its stale data (see "tag" below); others 0
//!       8     8  id           the number in the file name
//!      16     8  segment_len  the file's length when it was created
//!      24     8  base_lsn     last LSN written anywhere when the segment was created
//!      32     4  crc          CRC-32 (IEEE) of bytes 0 .. 32
//!      36     4  reserved     0
//!
//! record (48-byte header + key + value + zero padding to a multiple of 8)
//!  offset  size  field
//!       0     4  crc          CRC-32 (IEEE) of bytes 4 .. 48 + key_len + value_len
//!       4     1  kind         1 = put, 2 = tombstone; 0 never occurs: an all-zero header ends the log
//!       5     1  flags        0
//!       6     2  key_len      1 ..= 65535
//!       8     4  value_len    0 for a tombstone
//!      12     4  tag          low 32 bits of the id of the log segment the record was first
//!                             written to (0 in older files); in a RECYCLED segment only records
//!                             carrying that segment's own tag belong to it
//!      16     8  lsn          log sequence number, >= 1
//!      24     8  timestamp    the value's version (= lsn for local writes)
//!      32     8  client_id    of the write that produced the record
//!      40     8  request_id   of the write that produced the record
//!      48   ...  key bytes, value bytes, zeros up to the next multiple of 8
//! ```

/// Magic bytes opening every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"TDMS";
/// Format version written into every segment header.
pub const FORMAT_VERSION: u16 = 1;

/// Offset of the segment magic.
pub const SEG_MAGIC_OFFSET: usize = 0;
/// Offset of the format version.
pub const SEG_VERSION_OFFSET: usize = SEG_MAGIC_OFFSET + SEGMENT_MAGIC.len();
/// Offset of the segment kind.
pub const SEG_KIND_OFFSET: usize = SEG_VERSION_OFFSET + size_of::<u16>();
/// Offset of the segment flags.
pub const SEG_FLAGS_OFFSET: usize = SEG_KIND_OFFSET + size_of::<u8>();
/// Offset of the segment id.
pub const SEG_ID_OFFSET: usize = SEG_FLAGS_OFFSET + size_of::<u8>();
/// Offset of the segment length.
pub const SEG_LEN_OFFSET: usize = SEG_ID_OFFSET + size_of::<u64>();
/// Offset of the base LSN: the store's last LSN when the segment was created. Recovery takes
/// the highest LSN from records *and* these, so LSNs never go back even when compaction has
/// discarded every record carrying the highest ones.
pub const SEG_BASE_LSN_OFFSET: usize = SEG_LEN_OFFSET + size_of::<u64>();
/// Offset of the segment header checksum.
pub const SEG_CRC_OFFSET: usize = SEG_BASE_LSN_OFFSET + size_of::<u64>();
/// Offset of the trailing reserved word.
pub const SEG_RESERVED2_OFFSET: usize = SEG_CRC_OFFSET + size_of::<u32>();
/// Length of the segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: usize = SEG_RESERVED2_OFFSET + size_of::<u32>();

/// Offset of the record checksum.
pub const REC_CRC_OFFSET: usize = 0;
/// Offset of the record kind.
pub const REC_KIND_OFFSET: usize = REC_CRC_OFFSET + size_of::<u32>();
/// Offset of the record flags.
pub const REC_FLAGS_OFFSET: usize = REC_KIND_OFFSET + size_of::<u8>();
/// Offset of the key length.
pub const REC_KEY_LEN_OFFSET: usize = REC_FLAGS_OFFSET + size_of::<u8>();
/// Offset of the value length.
pub const REC_VALUE_LEN_OFFSET: usize = REC_KEY_LEN_OFFSET + size_of::<u16>();
/// Offset of the tag: the low 32 bits of the id of the log segment the record was written to.
pub const REC_TAG_OFFSET: usize = REC_VALUE_LEN_OFFSET + size_of::<u32>();
/// Offset of the log sequence number.
pub const REC_LSN_OFFSET: usize = REC_TAG_OFFSET + size_of::<u32>();
/// Offset of the timestamp (the value's version).
pub const REC_TIMESTAMP_OFFSET: usize = REC_LSN_OFFSET + size_of::<u64>();
/// Offset of the client id.
pub const REC_CLIENT_ID_OFFSET: usize = REC_TIMESTAMP_OFFSET + size_of::<u64>();
/// Offset of the request id.
pub const REC_REQUEST_ID_OFFSET: usize = REC_CLIENT_ID_OFFSET + size_of::<u64>();
/// Length of the record header; the key starts here.
pub const RECORD_HEADER_LEN: usize = REC_REQUEST_ID_OFFSET + size_of::<u64>();
/// The checksum covers the record from here to the end of the value.
pub const REC_CRC_START: usize = REC_KIND_OFFSET;

/// Segment header flag: the file is a recycled one, so stale bytes of its earlier life may follow
/// the records. Its own records carry its tag; a clean end is an all-zero header, which the
/// writer keeps in place after the last record.
pub const SEG_FLAG_RECYCLED: u8 = 1;

/// The record tag of segment `id`.
#[inline]
pub const fn segment_tag(id: u64) -> u32 {
    id as u32
}

/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;

const _: () = assert!(SEGMENT_HEADER_LEN == 40);
const _: () = assert!(SEGMENT_HEADER_LEN % RECORD_ALIGN == 0);
const _: () = assert!(RECORD_HEADER_LEN == 48);

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// Written by `put`/`delete`/`append` in increasing LSN order with no gaps.
    Log = 1,
    /// Written by compaction or repair: copies of records, LSNs in no particular order.
    Compacted = 2,
}

/// What a record says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The key has this value.
    Put = 1,
    /// The key was deleted.
    Tombstone = 2,
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Log or compacted.
    pub kind: SegmentKind,
    /// The id in the file name.
    pub id: u64,
    /// The file length at creation.
    pub segment_len: u64,
    /// The store's last LSN when the segment was created.
    pub base_lsn: u64,
    /// The file is recycled ([`SEG_FLAG_RECYCLED`]).
    pub recycled: bool,
}

impl SegmentHeader {
    /// Encodes the header, checksum included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[SEG_MAGIC_OFFSET..SEG_VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
        b[SEG_VERSION_OFFSET..SEG_KIND_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[SEG_KIND_OFFSET] = self.kind as u8;
        b[SEG_FLAGS_OFFSET] = if self.recycled { SEG_FLAG_RECYCLED } else { 0 };
        b[SEG_ID_OFFSET..SEG_LEN_OFFSET].copy_from_slice(&self.id.to_le_bytes());
        b[SEG_LEN_OFFSET..SEG_BASE_LSN_OFFSET].copy_from_slice(&self.segment_len.to_le_bytes());
        b[SEG_BASE_LSN_OFFSET..SEG_CRC_OFFSET].copy_from_slice(&self.base_lsn.to_le_bytes());
        let crc = crc32fast::hash(&b[..SEG_CRC_OFFSET]);
        b[SEG_CRC_OFFSET..SEG_RESERVED2_OFFSET].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and verifies a header; `None` if anything is off.
    pub fn decode(b: &[u8]) -> Option<SegmentHeader> {
        let b: &[u8; SEGMENT_HEADER_LEN] = b.get(..SEGMENT_HEADER_LEN)?.try_into().ok()?;
        if b[SEG_MAGIC_OFFSET..SEG_VERSION_OFFSET] != SEGMENT_MAGIC
            || u16_at(b, SEG_VERSION_OFFSET) != FORMAT_VERSION
            || b[SEG_FLAGS_OFFSET] & !SEG_FLAG_RECYCLED != 0
            || u32_at(b, SEG_RESERVED2_OFFSET) != 0
            || u32_at(b, SEG_CRC_OFFSET) != crc32fast::hash(&b[..SEG_CRC_OFFSET])
        {
            return None;
        }
        let kind = match b[SEG_KIND_OFFSET] {
            1 => SegmentKind::Log,
            2 => SegmentKind::Compacted,
            _ => return None,
        };
        Some(SegmentHeader {
            kind,
            id: u64_at(b, SEG_ID_OFFSET),
            segment_len: u64_at(b, SEG_LEN_OFFSET),
            base_lsn: u64_at(b, SEG_BASE_LSN_OFFSET),
            recycled: b[SEG_FLAGS_OFFSET] & SEG_FLAG_RECYCLED != 0,
        })
    }
}

/// The fields of a record header other than the checksum and lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Put or tombstone.
    pub kind: RecordKind,
    /// Log sequence number.
    pub lsn: u64,
    /// The value's version.
    pub timestamp: u64,
    /// Client id of the producing write.
    pub client_id: u64,
    /// Request id of the producing write.
    pub request_id: u64,
}

/// Bytes a record with these lengths occupies, padding included.
#[inline]
pub const fn record_len(key_len: usize, value_len: usize) -> usize {
    (RECORD_HEADER_LEN + key_len + value_len).next_multiple_of(RECORD_ALIGN)
}

/// Encodes a record header with its checksum over the header, `key` and the value given in parts
/// (so `append` can checksum old value + suffix without first joining them).
pub fn encode_record_header(meta: &RecordMeta, key: &[u8], value: &[&[u8]]) -> [u8; RECORD_HEADER_LEN] {
    encode_record_header_tagged(meta, 0, key, value)
}

/// [`encode_record_header`] with the tag of the segment the record goes to.
pub fn encode_record_header_tagged(
    meta: &RecordMeta,
    tag: u32,
    key: &[u8],
    value: &[&[u8]],
) -> [u8; RECORD_HEADER_LEN] {
    let mut h = record_header_without_crc(meta, tag, key.len(), value.iter().map(|p| p.len()).sum());
    let crc = record_crc(&h, key, value);
    h[REC_CRC_OFFSET..REC_KIND_OFFSET].copy_from_slice(&crc.to_le_bytes());
    h
}

/// [`encode_record_header_tagged`] with the checksum derived from `payload_crc`, the CRC-32
/// (IEEE) of `key` followed by the value's parts, instead of computed over them: one CRC of the
/// 44 header bytes and one [`wire::crc::shift`] instead of a pass over the value. The bytes are
/// exactly those of [`encode_record_header_tagged`] when `payload_crc` is right.
///
/// `payload_crc` must be right: a wrong one writes a record whose checksum does not match its
/// bytes, which recovery then refuses as corrupt (`ChecksumMismatch`). Callers take it from a
/// check already made (a network frame's verified checksum, a valid record's own); debug builds
/// recompute it and panic on a mismatch.
pub fn encode_record_header_with_payload_crc(
    meta: &RecordMeta,
    tag: u32,
    key: &[u8],
    value: &[&[u8]],
    payload_crc: u32,
) -> [u8; RECORD_HEADER_LEN] {
    let payload_len = key.len() + value.iter().map(|p| p.len()).sum::<usize>();
    let mut h = record_header_without_crc(meta, tag, key.len(), payload_len - key.len());
    let crc = wire::crc::combine(crc32fast::hash(&h[REC_CRC_START..]), payload_crc, payload_len as u64);
    debug_assert_eq!(
        crc,
        record_crc(&h, key, value),
        "payload_crc {payload_crc:#010x} is not the CRC of this key and value"
    );
    h[REC_CRC_OFFSET..REC_KIND_OFFSET].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The CRC-32 of `key ‖ value` of a record known to be valid (the index points at it), derived
/// from its stored checksum without reading key and value: the checksum covers the header from
/// [`REC_CRC_START`] and then them, so taking the header's CRC off leaves theirs. `None` if the
/// buffer is too short for a header (a bug; never a panic).
///
/// Only as right as the stored checksum: recovery verified it, or this process wrote it.
pub fn payload_crc_unchecked(buf: &[u8]) -> Option<u32> {
    let h = buf.get(..RECORD_HEADER_LEN)?;
    let payload_len = u64::from(u16_at(h, REC_KEY_LEN_OFFSET)) + u64::from(u32_at(h, REC_VALUE_LEN_OFFSET));
    let header_crc = crc32fast::hash(&h[REC_CRC_START..]);
    Some(wire::crc::strip_prefix(u32_at(h, REC_CRC_OFFSET), header_crc, payload_len))
}

/// The checksum of a record: CRC-32 of header bytes `REC_CRC_START..` (filled in), key, value.
fn record_crc(h: &[u8; RECORD_HEADER_LEN], key: &[u8], value: &[&[u8]]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[REC_CRC_START..]);
    crc.update(key);
    for part in value {
        crc.update(part);
    }
    crc.finalize()
}

/// A record header with every field but the checksum filled in.
fn record_header_without_crc(
    meta: &RecordMeta,
    tag: u32,
    key_len: usize,
    value_len: usize,
) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[REC_TAG_OFFSET..REC_LSN_OFFSET].copy_from_slice(&tag.to_le_bytes());
    h[REC_KIND_OFFSET] = meta.kind as u8;
    // Lengths were checked against the limits (u16 key, u32 value) by the caller.
    h[REC_KEY_LEN_OFFSET..REC_VALUE_LEN_OFFSET].copy_from_slice(&(key_len as u16).to_le_bytes());
    h[REC_VALUE_LEN_OFFSET..REC_TAG_OFFSET].copy_from_slice(&(value_len as u32).to_le_bytes());
    h[REC_LSN_OFFSET..REC_TIMESTAMP_OFFSET].copy_from_slice(&meta.lsn.to_le_bytes());
    h[REC_TIMESTAMP_OFFSET..REC_CLIENT_ID_OFFSET].copy_from_slice(&meta.timestamp.to_le_bytes());
    h[REC_CLIENT_ID_OFFSET..REC_REQUEST_ID_OFFSET].copy_from_slice(&meta.client_id.to_le_bytes());
    h[REC_REQUEST_ID_OFFSET..RECORD_HEADER_LEN].copy_from_slice(&meta.request_id.to_le_bytes());
    h
}

/// A record read from a mapping: every field borrowed or copied out, lengths already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Header fields.
    pub meta: RecordMeta,
    /// The key.
    pub key: &'a [u8],
    /// The value (empty for tombstones).
    pub value: &'a [u8],
    /// Bytes the record occupies, padding included.
    pub len: usize,
    /// The tag of the log segment it was first written to.
    pub tag: u32,
}

/// Outcome of looking at the bytes where a record should start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete record whose checksum matches.
    Record(RecordView<'a>),
    /// An all-zero header: the end of the log in this segment.
    End,
    /// Something else.
    Bad(crate::Corruption),
}

/// Parses the record starting at `buf[0]`, where `buf` runs to the end of the segment.
/// Never panics, whatever the bytes.
pub fn parse_record(buf: &[u8]) -> Parsed<'_> {
    use crate::Corruption;
    let Some(h) = buf.get(..RECORD_HEADER_LEN) else {
        // Fewer than a header's bytes left: the end if they are zeros.
        return if buf.iter().all(|&b| b == 0) {
            Parsed::End
        } else {
            Parsed::Bad(Corruption::BadRecordHeader)
        };
    };
    let kind = match h[REC_KIND_OFFSET] {
        1 => RecordKind::Put,
        2 => RecordKind::Tombstone,
        0 if h.iter().all(|&b| b == 0) => return Parsed::End,
        _ => return Parsed::Bad(Corruption::BadRecordHeader),
    };
    let key_len = u16_at(h, REC_KEY_LEN_OFFSET) as usize;
    let value_len = u32_at(h, REC_VALUE_LEN_OFFSET) as usize;
    if h[REC_FLAGS_OFFSET] != 0 || key_len == 0 || (kind == RecordKind::Tombstone && value_len != 0) {
        return Parsed::Bad(Corruption::BadRecordHeader);
    }
    let end = RECORD_HEADER_LEN + key_len + value_len;
    let Some(body) = buf.get(RECORD_HEADER_LEN..end) else {
        return Parsed::Bad(Corruption::BadRecordHeader);
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[REC_CRC_START..]);
    crc.update(body);
    if crc.finalize() != u32_at(h, REC_CRC_OFFSET) {
        return Parsed::Bad(Corruption::ChecksumMismatch);
    }
    let meta = RecordMeta {
        kind,
        lsn: u64_at(h, REC_LSN_OFFSET),
        timestamp: u64_at(h, REC_TIMESTAMP_OFFSET),
        client_id: u64_at(h, REC_CLIENT_ID_OFFSET),
        request_id: u64_at(h, REC_REQUEST_ID_OFFSET),
    };
    let len = record_len(key_len, value_len);
    // Padding is not covered by the checksum, so insist that it is zero: stray bytes there mean
    // the record was not written by us.
    if !buf.get(end..len).is_none_or(|pad| pad.iter().all(|&b| b == 0)) {
        return Parsed::Bad(Corruption::BadRecordHeader);
    }
    let (key, value) = body.split_at(key_len);
    Parsed::Record(RecordView { meta, key, value, len, tag: u32_at(h, REC_TAG_OFFSET) })
}

/// Reads a record that is known to be valid (the index points at it) without re-checking the CRC.
///
/// Lengths are still bounds-checked so that a bug can only produce an empty view, never a panic
/// or an out-of-bounds read.
#[inline]
pub fn view_record_unchecked(buf: &[u8]) -> Option<RecordView<'_>> {
    let h = buf.get(..RECORD_HEADER_LEN)?;
    let kind = if h[REC_KIND_OFFSET] == RecordKind::Tombstone as u8 {
        RecordKind::Tombstone
    } else {
        RecordKind::Put
    };
    let key_len = u16_at(h, REC_KEY_LEN_OFFSET) as usize;
    let value_len = u32_at(h, REC_VALUE_LEN_OFFSET) as usize;
    let body = buf.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len + value_len)?;
    let (key, value) = body.split_at(key_len);
    let meta = RecordMeta {
        kind,
        lsn: u64_at(h, REC_LSN_OFFSET),
        timestamp: u64_at(h, REC_TIMESTAMP_OFFSET),
        client_id: u64_at(h, REC_CLIENT_ID_OFFSET),
        request_id: u64_at(h, REC_REQUEST_ID_OFFSET),
    };
    Some(RecordView { meta, key, value, len: record_len(key_len, value_len), tag: u32_at(h, REC_TAG_OFFSET) })
}

/// Reads just the key of a record known to be valid.
#[inline]
pub fn key_unchecked(buf: &[u8]) -> &[u8] {
    let key_len =
        buf.get(REC_KEY_LEN_OFFSET..REC_VALUE_LEN_OFFSET).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    buf.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len as usize).unwrap_or(&[])
}

#[inline]
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

#[inline]
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Corruption;

    fn meta(lsn: u64) -> RecordMeta {
        RecordMeta { kind: RecordKind::Put, lsn, timestamp: lsn, client_id: 7, request_id: 9 }
    }

    fn encode(meta: &RecordMeta, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = encode_record_header(meta, key, &[value]).to_vec();
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        out.resize(record_len(key.len(), value.len()), 0);
        out
    }

    #[test]
    fn record_round_trips() {
        let bytes = encode(&meta(5), b"key", b"value");
        assert_eq!(bytes.len(), 56);
        let Parsed::Record(r) = parse_record(&bytes) else { panic!("not a record") };
        assert_eq!((r.key, r.value, r.meta, r.len), (&b"key"[..], &b"value"[..], meta(5), 56));
        assert_eq!(view_record_unchecked(&bytes), Some(r));
        assert_eq!(key_unchecked(&bytes), b"key");
    }

    #[test]
    fn golden_record_bytes() {
        let bytes = encode(&meta(1), b"k", b"v");
        let mut want = vec![0u8; 56];
        want[4] = 1; // kind put
        want[6] = 1; // key_len
        want[8] = 1; // value_len
        want[16] = 1; // lsn
        want[24] = 1; // timestamp
        want[32] = 7; // client id
        want[40] = 9; // request id
        want[48] = b'k';
        want[49] = b'v';
        let crc = crc32fast::hash(&want[4..50]);
        want[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes, want);
    }

    fn crc_of(key: &[u8], value: &[&[u8]]) -> u32 {
        let mut crc = crc32fast::Hasher::new();
        crc.update(key);
        value.iter().for_each(|part| crc.update(part));
        crc.finalize()
    }

    proptest::proptest! {
        /// Issue #11: a record checksum derived from the CRC of key ‖ value is byte for byte the
        /// one computed over them, and a valid record gives that CRC back.
        #[test]
        fn derived_record_checksums_are_the_computed_ones(
            lsn in 1u64.., timestamp: u64, client_id: u64, request_id: u64, tag: u32, tombstone: bool,
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..100),
            parts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), 0..3),
        ) {
            let kind = if tombstone { RecordKind::Tombstone } else { RecordKind::Put };
            let meta = RecordMeta { kind, lsn, timestamp, client_id, request_id };
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let direct = encode_record_header_tagged(&meta, tag, &key, &parts);
            let derived = encode_record_header_with_payload_crc(&meta, tag, &key, &parts, crc_of(&key, &parts));
            proptest::prop_assert_eq!(direct, derived);
            let mut record = direct.to_vec();
            record.extend_from_slice(&key);
            parts.iter().for_each(|part| record.extend_from_slice(part));
            proptest::prop_assert_eq!(payload_crc_unchecked(&record), Some(crc_of(&key, &parts)));
        }
    }

    #[test]
    fn payload_crc_of_a_record_needs_only_its_header() {
        let bytes = encode(&meta(4), b"key", b"value");
        let crc = crc32fast::hash(b"keyvalue");
        assert_eq!(payload_crc_unchecked(&bytes[..RECORD_HEADER_LEN]), Some(crc));
        assert_eq!(payload_crc_unchecked(&bytes[..RECORD_HEADER_LEN - 1]), None);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "is not the CRC of this key and value")]
    fn a_wrong_payload_crc_panics_in_debug_builds() {
        let wrong = crc32fast::hash(b"keyvalue") ^ 1;
        encode_record_header_with_payload_crc(&meta(1), 0, b"key", &[b"value"], wrong);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encode(&meta(3), b"some key", b"some value bytes");
        for i in 0..RECORD_HEADER_LEN + 24 {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(matches!(parse_record(&b), Parsed::Bad(_)), "flip at byte {i} bit {bit} undetected");
            }
        }
    }

    #[test]
    fn zeros_end_the_log_and_short_garbage_is_bad() {
        assert_eq!(parse_record(&[0u8; 100]), Parsed::End);
        assert_eq!(parse_record(&[0u8; 7]), Parsed::End);
        assert_eq!(parse_record(&[1u8; 7]), Parsed::Bad(Corruption::BadRecordHeader));
        let bytes = encode(&meta(3), b"k", b"vvvvvvvvvvvvvvvvvvvv");
        // Cut short: the lengths run past the end of the buffer.
        assert_eq!(parse_record(&bytes[..50]), Parsed::Bad(Corruption::BadRecordHeader));
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            kind: SegmentKind::Compacted,
            id: 42,
            segment_len: 1 << 20,
            base_lsn: 77,
            recycled: false,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Some(h));
        for i in 0..SEGMENT_HEADER_LEN {
            let mut d = b;
            d[i] ^= 0x10;
            assert_eq!(SegmentHeader::decode(&d), None, "damage at {i} undetected");
        }
    }
}
