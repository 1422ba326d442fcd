//! Property tests: every valid frame round-trips, and no bytes at all can make decoding panic.

use proptest::prelude::*;
use wire::header::{CRC_OFFSET, KEY_LEN_OFFSET, PAYLOAD_OFFSET, VALUE_LEN_OFFSET};
use wire::{Command, DecodeError, Flags, Frame, Request, FRAME_LEN, MAX_KEY_LEN, MAX_PAYLOAD_LEN};

/// Owned parts of a frame, so proptest can generate them.
#[derive(Debug, Clone)]
struct Parts {
    id: u64,
    command: u32,
    flags: u32,
    param: u64,
    timestamp: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Parts {
    fn frame(&self) -> Frame<'_> {
        Frame {
            id: self.id,
            command: Command(self.command),
            flags: Flags(self.flags),
            param: self.param,
            timestamp: self.timestamp,
            key: &self.key,
            value: &self.value,
        }
    }
}

/// Lengths weighted towards the edges: empty, tiny, and exactly at the limits.
fn key_len() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), Just(MAX_KEY_LEN), 1..=16usize, 0..=MAX_KEY_LEN]
}

fn parts() -> impl Strategy<Value = Parts> {
    (any::<u64>(), any::<u32>(), 0u32..8, any::<u64>(), any::<u64>(), key_len())
        .prop_flat_map(|(id, command, flags, param, timestamp, key_len)| {
            let room = MAX_PAYLOAD_LEN - key_len;
            let value_len = prop_oneof![Just(0), Just(room), 0..=room];
            (
                Just((id, command, flags, param, timestamp)),
                proptest::collection::vec(any::<u8>(), key_len),
                value_len.prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n)),
            )
        })
        .prop_map(|((id, command, flags, param, timestamp), key, value)| Parts {
            id,
            command,
            flags,
            param,
            timestamp,
            key,
            value,
        })
}

fn check_decoded_invariants(bytes: &[u8; FRAME_LEN], frame: &Frame<'_>) {
    assert!(frame.key.len() <= MAX_KEY_LEN);
    assert!(frame.key.len() + frame.value.len() <= MAX_PAYLOAD_LEN);
    assert_eq!(frame.flags.0 & Flags::RESERVED.0, 0);
    // Re-encoding what was decoded gives the same header and payload.
    let mut again = [0u8; FRAME_LEN];
    frame.encode(&mut again).expect("a decoded frame re-encodes");
    let used = PAYLOAD_OFFSET + frame.key.len() + frame.value.len();
    assert_eq!(&again[..used], &bytes[..used]);
    assert_eq!(Frame::decode(&again).as_ref(), Ok(frame));
}

proptest! {
    #[test]
    fn valid_frames_round_trip(parts in parts()) {
        let frame = parts.frame();
        let mut out = [0xFFu8; FRAME_LEN];
        prop_assert_eq!(frame.encode(&mut out), Ok(FRAME_LEN));
        prop_assert_eq!(Frame::decode(&out), Ok(frame));
        let mut via_bufmut = Vec::with_capacity(FRAME_LEN);
        frame.encode_to(&mut via_bufmut).unwrap();
        prop_assert_eq!(&via_bufmut[..], &out[..]);
        // Requests that parse round-trip through their own frame too.
        if let Ok(request) = Request::parse(&frame) {
            prop_assert_eq!(Request::parse(&request.to_frame(frame.id)), Ok(request));
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), FRAME_LEN)) {
        let bytes: [u8; FRAME_LEN] = bytes.try_into().unwrap();
        if let Ok(frame) = Frame::decode(&bytes) {
            check_decoded_invariants(&bytes, &frame);
            let _ = Request::parse(&frame);
        }
    }

    /// Random bytes rarely get past the magic; corrupting valid frames reaches every check.
    #[test]
    fn corrupted_frames_never_panic(
        parts in parts(),
        edits in proptest::collection::vec((0..FRAME_LEN, any::<u8>()), 1..8),
        fix_crc in any::<bool>(),
    ) {
        let mut bytes = [0u8; FRAME_LEN];
        parts.frame().encode(&mut bytes).unwrap();
        for (at, byte) in edits {
            bytes[at] = byte;
        }
        if fix_crc {
            // Recompute the checksum as a buggy sender would, so length checks are reached.
            let mut len = [0u8; 4];
            len.copy_from_slice(&bytes[KEY_LEN_OFFSET..KEY_LEN_OFFSET + 4]);
            let key_len = u32::from_le_bytes(len) as u64;
            len.copy_from_slice(&bytes[VALUE_LEN_OFFSET..VALUE_LEN_OFFSET + 4]);
            let end = (48 + key_len + u32::from_le_bytes(len) as u64).min(FRAME_LEN as u64) as usize;
            let crc = crc32fast::hash(&bytes[8..end]);
            bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        }
        match Frame::decode(&bytes) {
            Ok(frame) => {
                check_decoded_invariants(&bytes, &frame);
                let _ = Request::parse(&frame);
            }
            Err(e) => {
                // Errors before the checksum never claim a trusted id.
                let early = matches!(e, DecodeError::BadMagic { .. }
                    | DecodeError::UnsupportedVersion { .. } | DecodeError::BadChecksum { .. });
                prop_assert_eq!(early, e.trusted_id().is_none());
                let _ = e.to_string();
            }
        }
    }
}

// Compact framing: the same frames without padding, whose length comes from the header.

use wire::header::{CRC_START, FLAGS_OFFSET, HEADER_LEN, ID_OFFSET};
use wire::{CompactReader, Framing};

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// What `decode_compact` must make of `buf`, worked out from PROTOCOL.md's order of checks
/// independently of the decoder: each check as soon as its bytes are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Incomplete,
    Frame { len: usize },
    BadMagic,
    BadVersion,
    BadLength { key_len: u32, value_len: u32 },
    BadChecksum,
    ReservedFlags { id: u64 },
}

fn expected(buf: &[u8]) -> Outcome {
    if buf.len() < 3 {
        return Outcome::Incomplete;
    }
    if buf[..3] != *b"TDM" {
        return Outcome::BadMagic;
    }
    if buf.len() < 4 {
        return Outcome::Incomplete;
    }
    if buf[3] != 1 {
        return Outcome::BadVersion;
    }
    if buf.len() < 40 {
        return Outcome::Incomplete;
    }
    let (key_len, value_len) = (le32(buf, KEY_LEN_OFFSET), le32(buf, VALUE_LEN_OFFSET));
    if key_len > 1024 || u64::from(key_len) + u64::from(value_len) > 4048 {
        return Outcome::BadLength { key_len, value_len };
    }
    let len = 48 + key_len as usize + value_len as usize;
    if buf.len() < len {
        return Outcome::Incomplete;
    }
    if crc32fast::hash(&buf[8..len]) != le32(buf, CRC_OFFSET) {
        return Outcome::BadChecksum;
    }
    if le32(buf, FLAGS_OFFSET) & !0b111 != 0 {
        return Outcome::ReservedFlags { id: u64::from_le_bytes(buf[8..16].try_into().unwrap()) };
    }
    Outcome::Frame { len }
}

/// What `decode_compact` did make of `buf`, after checking the frame or error it gave.
fn actual(buf: &[u8]) -> Outcome {
    match Frame::decode_compact(buf) {
        Ok(None) => Outcome::Incomplete,
        Ok(Some((frame, len))) => {
            assert!(frame.key.len() <= MAX_KEY_LEN);
            assert!(frame.key.len() + frame.value.len() <= MAX_PAYLOAD_LEN);
            assert_eq!(frame.flags.0 & Flags::RESERVED.0, 0);
            assert_eq!(len, frame.encoded_len(Framing::Compact));
            let mut again = Vec::new();
            frame.encode_compact_to(&mut again).expect("a decoded frame re-encodes");
            assert_eq!(again, &buf[..len]);
            let _ = Request::parse(&frame);
            Outcome::Frame { len }
        }
        Err(e) => {
            let _ = e.to_string();
            let fatal = e.is_fatal_for(Framing::Compact);
            match e {
                DecodeError::BadMagic { found } => {
                    assert_eq!(found, buf[..3]);
                    assert!(fatal && e.trusted_id().is_none());
                    Outcome::BadMagic
                }
                DecodeError::UnsupportedVersion { found } => {
                    assert_eq!(found, buf[3]);
                    assert!(fatal && e.trusted_id().is_none());
                    Outcome::BadVersion
                }
                DecodeError::BadCompactLength { key_len, value_len } => {
                    assert!(fatal && e.trusted_id().is_none() && e.status() == wire::Status::BAD_FRAME);
                    Outcome::BadLength { key_len, value_len }
                }
                DecodeError::BadChecksum { stored, computed } => {
                    assert_ne!(stored, computed);
                    assert!(fatal && e.trusted_id().is_none());
                    Outcome::BadChecksum
                }
                DecodeError::ReservedFlags { id, .. } => {
                    assert!(!fatal && e.trusted_id() == Some(id));
                    Outcome::ReservedFlags { id }
                }
                other => panic!("decode_compact gave an undocumented error: {other:?}"),
            }
        }
    }
}

/// Rewrites the checksum over the range the (possibly damaged) lengths declare, as far as the
/// buffer goes, as a buggy sender would: so that the checks after the checksum are reached.
fn refresh_compact_crc(buf: &mut [u8]) {
    if buf.len() < HEADER_LEN {
        return;
    }
    let declared = 48 + u64::from(le32(buf, KEY_LEN_OFFSET)) + u64::from(le32(buf, VALUE_LEN_OFFSET));
    let end = declared.min(buf.len() as u64) as usize;
    let crc = crc32fast::hash(&buf[CRC_START..end]);
    buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

fn compact(frames: &[Parts]) -> Vec<u8> {
    let mut out = Vec::new();
    for parts in frames {
        parts.frame().encode_compact_to(&mut out).unwrap();
    }
    out
}

/// Every frame or error in `bytes`, decoding with `decode_compact` from the front, stepping
/// over frames refused after the checksum and stopping at the first fatal error or at a
/// partial frame. Frames are given as their compact bytes.
fn decode_all(bytes: &[u8]) -> Vec<Result<Vec<u8>, DecodeError>> {
    let mut seen = Vec::new();
    let mut at = 0;
    loop {
        match Frame::decode_compact(&bytes[at..]) {
            Ok(Some((_, len))) => {
                seen.push(Ok(bytes[at..at + len].to_vec()));
                at += len;
            }
            Ok(None) => return seen,
            Err(e) => {
                seen.push(Err(e));
                if e.is_fatal_for(Framing::Compact) {
                    return seen;
                }
                // Not fatal, so the lengths passed their check and the checksum: step over.
                let rest = &bytes[at..];
                at += 48 + le32(rest, KEY_LEN_OFFSET) as usize + le32(rest, VALUE_LEN_OFFSET) as usize;
            }
        }
    }
}

/// The same through a [`CompactReader`] fed `pieces` (byte counts, cycled), alternately by
/// `push` and by `spare`/`commit`; checks the reader's memory bound on the way.
fn read_all(bytes: &[u8], pieces: &[usize]) -> Vec<Result<Vec<u8>, DecodeError>> {
    let mut reader = CompactReader::new();
    let mut seen = Vec::new();
    let (mut fed, mut largest_ask) = (0, 0);
    for (i, &piece) in pieces.iter().cycle().enumerate() {
        if fed == bytes.len() {
            break;
        }
        let n = piece.min(bytes.len() - fed);
        if i % 2 == 0 {
            reader.push(&bytes[fed..fed + n]);
        } else {
            reader.spare(n)[..n].copy_from_slice(&bytes[fed..fed + n]);
            reader.commit(n);
        }
        fed += n;
        // Drained before every read, it holds less than a frame, plus the most asked for.
        largest_ask = largest_ask.max(n);
        assert!(reader.capacity() < FRAME_LEN + largest_ask, "reader grew to {}", reader.capacity());
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    let mut again = Vec::new();
                    frame.encode_compact_to(&mut again).unwrap();
                    seen.push(Ok(again));
                }
                Ok(None) => break,
                Err(e) => {
                    seen.push(Err(e));
                    if e.is_fatal_for(Framing::Compact) {
                        assert_eq!(reader.next_frame(), Err(e), "a failed reader keeps refusing");
                        return seen;
                    }
                }
            }
        }
    }
    assert!(reader.buffered() < FRAME_LEN);
    seen
}

/// Declared lengths weighted towards the limits and far beyond them.
fn declared_len() -> impl Strategy<Value = u32> {
    prop_oneof![0..=16u32, 1000..=1100u32, 4000..=4100u32, Just(u32::MAX), any::<u32>()]
}

proptest! {
    #[test]
    fn compact_frames_round_trip(parts in parts(), trailing in proptest::collection::vec(any::<u8>(), 0..64)) {
        let frame = parts.frame();
        let len = frame.encoded_len(Framing::Compact);
        let mut out = vec![0xA5u8; FRAME_LEN + 64];
        prop_assert_eq!(frame.encode_compact(&mut out), Ok(len));
        let mut via_bufmut = Vec::new();
        frame.encode_compact_to(&mut via_bufmut).unwrap();
        prop_assert_eq!(&via_bufmut[..], &out[..len]);
        // The compact frame is the fixed frame cut off after the value.
        let mut fixed = [0u8; FRAME_LEN];
        frame.encode(&mut fixed).unwrap();
        prop_assert_eq!(&fixed[..len], &out[..len]);
        // Whatever follows the frame is not read.
        via_bufmut.extend_from_slice(&trailing);
        prop_assert_eq!(Frame::decode_compact(&via_bufmut), Ok(Some((frame, len))));
    }

    #[test]
    fn every_truncation_of_a_compact_frame_is_incomplete(parts in parts()) {
        let bytes = compact(std::slice::from_ref(&parts));
        for cut in 0..bytes.len() {
            prop_assert_eq!(Frame::decode_compact(&bytes[..cut]), Ok(None), "cut at {}", cut);
        }
    }

    #[test]
    fn frames_back_to_back_all_decode(frames in proptest::collection::vec(parts(), 1..6)) {
        let bytes = compact(&frames);
        let mut at = 0;
        for parts in &frames {
            let (frame, len) = Frame::decode_compact(&bytes[at..]).unwrap().expect("a whole frame");
            prop_assert_eq!(frame, parts.frame());
            at += len;
        }
        prop_assert_eq!(at, bytes.len());
        prop_assert_eq!(Frame::decode_compact(&bytes[at..]), Ok(None));
    }

    /// Mostly random bytes behind a valid magic and version, so the later checks are reached.
    #[test]
    fn random_bytes_decode_compact_as_documented(
        prefix in prop_oneof![Just(&b""[..]), Just(&b"TDM\x01"[..]), Just(&b"TDM"[..])],
        tail in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let bytes = [prefix, &tail].concat();
        prop_assert_eq!(actual(&bytes), expected(&bytes));
    }

    #[test]
    fn random_lengths_decode_compact_as_documented(
        parts in parts(),
        key_len in declared_len(),
        value_len in declared_len(),
        fix_crc in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut bytes = compact(std::slice::from_ref(&parts));
        bytes.extend_from_slice(&extra);
        bytes[KEY_LEN_OFFSET..KEY_LEN_OFFSET + 4].copy_from_slice(&key_len.to_le_bytes());
        bytes[VALUE_LEN_OFFSET..VALUE_LEN_OFFSET + 4].copy_from_slice(&value_len.to_le_bytes());
        if fix_crc {
            refresh_compact_crc(&mut bytes);
        }
        // Lengths that run past the buffer: any cut of it, including the whole.
        let cut = cut.index(bytes.len() + 1);
        prop_assert_eq!(actual(&bytes[..cut]), expected(&bytes[..cut]));
        prop_assert_eq!(actual(&bytes), expected(&bytes));
    }

    #[test]
    fn corrupted_compact_frames_decode_as_documented(
        frames in proptest::collection::vec(parts(), 1..4),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        header_only in any::<bool>(),
        fix_crc in any::<bool>(),
    ) {
        let mut bytes = compact(&frames);
        for (at, byte) in edits {
            // Most edits in the first header, where they reach the most checks.
            let at = if header_only { at.index(HEADER_LEN) } else { at.index(bytes.len()) };
            bytes[at] = byte;
        }
        if fix_crc {
            refresh_compact_crc(&mut bytes);
        }
        prop_assert_eq!(actual(&bytes), expected(&bytes));
        // Through a reader the stream gives what decoding it from the front gives.
        let whole = decode_all(&bytes);
        prop_assert_eq!(read_all(&bytes, &[bytes.len()]), whole.clone());
        prop_assert_eq!(read_all(&bytes, &[1, 7, 48, 1000]), whole);
    }

    #[test]
    fn compact_reader_in_random_pieces_matches_whole_decoding(
        frames in proptest::collection::vec(parts(), 1..8),
        pieces in proptest::collection::vec(prop_oneof![1..=64usize, 1..=FRAME_LEN, 1..=3 * FRAME_LEN], 1..16),
    ) {
        let bytes = compact(&frames);
        let whole = decode_all(&bytes);
        prop_assert_eq!(whole.len(), frames.len());
        prop_assert!(whole.iter().all(Result::is_ok));
        prop_assert_eq!(read_all(&bytes, &pieces), whole);
    }
}

#[test]
fn reader_steps_over_frames_refused_after_the_checksum() {
    let frames: Vec<Parts> = (1..=3)
        .map(|id| Parts {
            id,
            command: Command::PUT.0,
            flags: 0,
            param: 0,
            timestamp: 0,
            key: b"k".to_vec(),
            value: vec![b'v'; 10 * id as usize],
        })
        .collect();
    let mut bytes = compact(&frames);
    // The first frame sets a reserved flag, with a checksum to match: not fatal.
    bytes[FLAGS_OFFSET] = 0x10;
    let first_len = HEADER_LEN + 11;
    let crc = crc32fast::hash(&bytes[CRC_START..first_len]);
    bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    let seen = read_all(&bytes, &[5]);
    assert_eq!(seen[0], Err(DecodeError::ReservedFlags { id: 1, flags: 0x10 }));
    assert_eq!(seen.len(), 3);
    assert!(seen[1..].iter().all(Result::is_ok));
    assert_eq!(le32(&bytes, ID_OFFSET), 1);
}

proptest! {
    /// Every decoder's checksum gives the CRC of key ‖ value that a second pass would compute,
    /// which is what a server hands its store in place of that pass.
    #[test]
    fn payload_crc_is_the_crc_of_key_and_value(frames in proptest::collection::vec(parts(), 1..4)) {
        for parts in &frames {
            let frame = parts.frame();
            let direct = crc32fast::hash(&[parts.key.as_slice(), parts.value.as_slice()].concat());
            let mut fixed = [0u8; FRAME_LEN];
            frame.encode(&mut fixed).unwrap();
            let (decoded, crc) = Frame::decode_with_crc(&fixed).unwrap();
            prop_assert_eq!(crc.get(), le32(&fixed, CRC_OFFSET));
            prop_assert_eq!(decoded.payload_crc(crc), direct);
            let bytes = compact(std::slice::from_ref(parts));
            let (decoded, len, crc) = Frame::decode_compact_with_crc(&bytes).unwrap().unwrap();
            prop_assert_eq!(len, bytes.len());
            prop_assert_eq!(decoded.payload_crc(crc), direct);
        }
        let mut reader = CompactReader::new();
        reader.push(&compact(&frames));
        for parts in &frames {
            let (frame, crc) = reader.next_frame_with_crc().unwrap().expect("a whole frame");
            let direct = crc32fast::hash(&[parts.key.as_slice(), parts.value.as_slice()].concat());
            prop_assert_eq!(frame.payload_crc(crc), direct);
        }
        prop_assert_eq!(reader.next_frame_with_crc(), Ok(None));
    }
}
