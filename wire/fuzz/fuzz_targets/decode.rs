//! Decoder fuzz target: any bytes, fed whole or in pieces, must decode to an error or to a
//! frame that respects every limit and re-encodes to the same header and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{Flags, Frame, FrameReader, Request, FRAME_LEN, HEADER_LEN, MAX_KEY_LEN, MAX_PAYLOAD_LEN};

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
});
