//! Decoder fuzz target: any bytes, fed whole or in pieces, must decode to an error or to a
//! frame that respects every limit and re-encodes to the same header and payload, in fixed
//! framing and in compact framing alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::header::{KEY_LEN_OFFSET, VALUE_LEN_OFFSET};
use wire::{
    CompactReader, DecodeError, Flags, Frame, FrameReader, Framing, Request, FRAME_LEN, HEADER_LEN,
    MAX_KEY_LEN, MAX_PAYLOAD_LEN,
};

fn check(bytes: &[u8; FRAME_LEN]) {
    match Frame::decode(bytes) {
        Ok(frame) => {
            assert!(frame.key.len() <= MAX_KEY_LEN);
            assert!(frame.key.len() + frame.value.len() <= MAX_PAYLOAD_LEN);
            assert_eq!(frame.flags.0 & Flags::RESERVED.0, 0);
            let mut again = [0u8; FRAME_LEN];
            frame.encode(&mut again).expect("a decoded frame re-encodes");
            let used = HEADER_LEN + frame.key.len() + frame.value.len();
            assert_eq!(&again[..used], &bytes[..used]);
            if let Ok(request) = Request::parse(&frame) {
                assert_eq!(Request::parse(&request.to_frame(frame.id)), Ok(request));
            }
        }
        Err(e) => {
            let _ = (e.trusted_id(), e.status(), e.is_fatal(), e.to_string());
        }
    }
}

fn le32(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)))
}

/// The frame length the header at the front of `bytes` declares, once its lengths are there.
fn declared_len(bytes: &[u8]) -> Option<u64> {
    Some(HEADER_LEN as u64 + le32(bytes, KEY_LEN_OFFSET)? + le32(bytes, VALUE_LEN_OFFSET)?)
}

/// Every frame (as its bytes) or error that `decode_compact` finds from the front of `bytes`,
/// stepping over frames refused after the checksum and stopping at a fatal error or at a
/// partial frame; checks each against the documented semantics.
fn decode_all_compact(bytes: &[u8]) -> Vec<Result<&[u8], DecodeError>> {
    let mut seen = Vec::new();
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        match Frame::decode_compact(rest) {
            Ok(Some((frame, len))) => {
                assert!(frame.key.len() <= MAX_KEY_LEN);
                assert!(frame.key.len() + frame.value.len() <= MAX_PAYLOAD_LEN);
                assert_eq!(frame.flags.0 & Flags::RESERVED.0, 0);
                assert_eq!(len, frame.encoded_len(Framing::Compact));
                let mut again = Vec::new();
                frame.encode_compact_to(&mut again).expect("a decoded frame re-encodes");
                assert_eq!(again, &rest[..len]);
                if let Ok(request) = Request::parse(&frame) {
                    assert_eq!(Request::parse(&request.to_frame(frame.id)), Ok(request));
                }
                seen.push(Ok(&rest[..len]));
                at += len;
            }
            Ok(None) => {
                // Only ever for a prefix of a frame that could still come whole.
                if let Some(len) = declared_len(rest) {
                    assert!(len > rest.len() as u64 && len <= FRAME_LEN as u64);
                }
                return seen;
            }
            Err(e) => {
                let _ = (e.status(), e.is_fatal(), e.to_string());
                seen.push(Err(e));
                if e.is_fatal_for(Framing::Compact) {
                    assert_eq!(e.trusted_id(), None, "fatal compact errors come before the checksum");
                    if let DecodeError::BadCompactLength { key_len, value_len } = e {
                        assert!(
                            key_len as usize > MAX_KEY_LEN
                                || u64::from(key_len) + u64::from(value_len) > MAX_PAYLOAD_LEN as u64
                        );
                    }
                    return seen;
                }
                // Refused after the checksum: the id is trusted and the frame's end known.
                assert!(matches!(e, DecodeError::ReservedFlags { .. }), "{e:?}");
                assert!(e.trusted_id().is_some());
                let len = declared_len(rest).expect("lengths were checked") as usize;
                at += len;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Whole frames, as a connection would see them after FrameReader, in pieces of a size
    // the input chooses.
    let piece = data.first().map_or(1, |&b| usize::from(b).max(1) * 37);
    let mut reader = FrameReader::new();
    for chunk in data.chunks(piece) {
        reader.push(chunk);
        while let Some(frame) = reader.next_frame() {
            check(frame);
        }
    }
    assert!(reader.buffered() < FRAME_LEN);
    // And short inputs padded out, so the fuzzer reaches the checks past the magic quickly.
    let mut padded = [0u8; FRAME_LEN];
    let n = data.len().min(FRAME_LEN);
    padded[..n].copy_from_slice(&data[..n]);
    check(&padded);

    // Compact framing: the same bytes as a stream of variable-length frames, decoded from the
    // front whole, and through a CompactReader in pieces, must give the same frames and errors.
    let whole = decode_all_compact(data);
    let mut reader = CompactReader::new();
    let mut seen = Vec::new();
    'feed: for chunk in data.chunks(piece) {
        reader.push(chunk);
        assert!(reader.capacity() < FRAME_LEN + piece, "the reader holds less than a frame between reads");
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    let mut bytes = Vec::new();
                    frame.encode_compact_to(&mut bytes).expect("a decoded frame re-encodes");
                    seen.push(Ok(bytes));
                }
                Ok(None) => break,
                Err(e) => {
                    seen.push(Err(e));
                    if e.is_fatal_for(Framing::Compact) {
                        assert_eq!(reader.buffered(), 0);
                        assert_eq!(reader.next_frame().err(), Some(e), "a failed reader keeps refusing");
                        break 'feed;
                    }
                }
            }
        }
    }
    let whole: Vec<Result<Vec<u8>, DecodeError>> = whole.into_iter().map(|r| r.map(<[u8]>::to_vec)).collect();
    assert_eq!(seen, whole);
});
