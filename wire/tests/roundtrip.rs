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
