//! Golden test vectors: `vectors.txt` holds frames as hex with what a receiver must make of
//! them. Other implementations check themselves against the same file (see PROTOCOL.md).
//!
//! The file is generated from the cases below; to change it deliberately, run
//! `TANDEM_REGEN_VECTORS=1 cargo test -p tandem-wire --test vectors` and review the diff.

use std::fmt::Write as _;

use wire::header::{
    CRC_OFFSET, CRC_START, FLAGS_OFFSET, KEY_LEN_OFFSET, TIMESTAMP_OFFSET, VALUE_LEN_OFFSET, VERSION_OFFSET,
};
use wire::{
    Command, DecodeError, Flags, Frame, Framing, Request, Status, FRAME_LEN, HELLO_COMPACT, MAX_KEY_LEN,
    MAX_PAYLOAD_LEN,
};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors.txt");

struct Case {
    name: &'static str,
    note: &'static str,
    framing: Framing,
    /// A whole fixed frame, or for compact framing exactly the bytes sent.
    bytes: Vec<u8>,
}

fn encode(frame: Frame<'_>) -> [u8; FRAME_LEN] {
    let mut out = [0u8; FRAME_LEN];
    frame.encode(&mut out).expect("case frames are valid");
    out
}

/// Rewrites the checksum as a (buggy) sender would have computed it over the declared lengths.
fn refresh_crc(bytes: &mut [u8; FRAME_LEN]) {
    let len = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
    let end = (48 + len(KEY_LEN_OFFSET) + len(VALUE_LEN_OFFSET)).min(FRAME_LEN as u64) as usize;
    let crc = crc32fast::hash(&bytes[CRC_START..end]);
    bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

fn patched(frame: Frame<'_>, at: usize, patch: &[u8], fix_crc: bool) -> [u8; FRAME_LEN] {
    let mut bytes = encode(frame);
    bytes[at..at + patch.len()].copy_from_slice(patch);
    if fix_crc {
        refresh_crc(&mut bytes);
    }
    bytes
}

fn cases() -> Vec<Case> {
    let long_key = [b'k'; MAX_KEY_LEN];
    let full_value = [b'v'; MAX_PAYLOAD_LEN - 3];
    let put = Frame::request(0x0102030405060708, Command::PUT, b"key", b"value");
    let c = |name, note, bytes: [u8; FRAME_LEN]| Case {
        name,
        note,
        framing: Framing::Fixed,
        bytes: bytes.to_vec(),
    };
    let mut cases = vec![
        c("ping", "PING with no payload", encode(Frame::request(1, Command::PING, b"", b""))),
        c("ping-payload", "PING echoes its value", encode(Frame::request(2, Command::PING, b"", b"hello"))),
        c("get", "GET of key \"fruit\"", encode(Frame::request(3, Command::GET, b"fruit", b""))),
        c("put", "PUT key=value, every id byte distinct to show byte order", encode(put)),
        c(
            "put-client-id",
            "PUT with client id 42 in param (at-most-once retries)",
            encode(Frame::request(5, Command::PUT, b"k", b"v").with_param(42)),
        ),
        c(
            "put-conditional",
            "PUT only if the current version is 17 (timestamp = expected version)",
            encode(Frame::request(6, Command::PUT, b"k", b"v2").with_timestamp(17)),
        ),
        c(
            "put-limits",
            "the largest payload: a 3-byte key and a 4045-byte value",
            encode(Frame::request(7, Command::PUT, b"big", &full_value)),
        ),
        c(
            "put-longest-key",
            "PUT with a 1024-byte key and empty value",
            encode(Frame::request(8, Command::PUT, &long_key, b"")),
        ),
        c("delete", "DELETE of key \"fruit\"", encode(Frame::request(9, Command::DELETE, b"fruit", b""))),
        c(
            "append",
            "APPEND \"-more\" to key \"log\"",
            encode(Frame::request(10, Command::APPEND, b"log", b"-more")),
        ),
        c("stats", "STATS", encode(Frame::request(11, Command::STATS, b"", b""))),
        c("auth", "AUTH with token \"s3cret\"", encode(Frame::request(12, Command::AUTH, b"", b"s3cret"))),
        c(
            "hello-compact",
            "HELLO asking for compact framing (value byte 1)",
            encode(Request::Hello { framing: HELLO_COMPACT }.to_frame(14)),
        ),
        c(
            "reply-hello-compact",
            "reply to HELLO id 14: OK, compact chosen; every later frame both ways is compact",
            encode(Frame::reply_to(14, Command::HELLO, Status::OK, &[HELLO_COMPACT])),
        ),
        c(
            "reply-ok-value",
            "reply to GET id 3: OK, version 99, value \"apple\"",
            encode(Frame::reply_to(3, Command::GET, Status::OK, b"apple").with_timestamp(99)),
        ),
        c(
            "reply-not-found",
            "reply to GET id 3: NOT_FOUND",
            encode(Frame::reply_to(3, Command::GET, Status::NOT_FOUND, b"")),
        ),
        c(
            "reply-wrong-server",
            "reply: WRONG_SERVER with the address of the primary as hint",
            encode(Frame::reply_to(4, Command::PUT, Status::WRONG_SERVER, b"127.0.0.1:7071")),
        ),
        c(
            "reply-bad-request",
            "reply: BAD_REQUEST with the reason as value",
            encode(Frame::reply_to(13, Command::GET, Status::BAD_REQUEST, b"the key is empty")),
        ),
        c(
            "continued-unknown-command",
            "CONTINUED flag on an undefined command: flags are checked before the command, so UNSUPPORTED",
            encode(Frame { flags: Flags::CONTINUED, ..Frame::request(16, Command(0x3f), b"", b"") }),
        ),
        c(
            "reply-untrusted",
            "reply to a frame whose checksum failed: id 0, command 0",
            encode(Frame::reply_to(0, Command(0), Status::BAD_CHECKSUM, b"")),
        ),
        c(
            "bad-magic",
            "first byte changed: not our stream; answer once, close",
            patched(put, 0, b"X", false),
        ),
        c(
            "bad-version",
            "version byte 2: answer UNSUPPORTED once, close",
            patched(put, VERSION_OFFSET, &[2], false),
        ),
        c("bad-checksum", "one value byte changed after checksumming", patched(put, 48 + 3, b"V", false)),
        c(
            "key-too-long",
            "key_len 1025 (checksum valid): TOO_LARGE, the id is trusted",
            patched(put, KEY_LEN_OFFSET, &1025u32.to_le_bytes(), true),
        ),
        c(
            "sizes-overflow",
            "value_len 4046 with a 3-byte key overflows the payload (checksum over the clamped range)",
            patched(put, VALUE_LEN_OFFSET, &4046u32.to_le_bytes(), true),
        ),
        c(
            "sizes-huge",
            "value_len 0xFFFFFFFF: the checksum range is clamped to the frame",
            patched(put, VALUE_LEN_OFFSET, &u32::MAX.to_le_bytes(), true),
        ),
        c("reserved-flag", "flag bit 3 set", patched(put, FLAGS_OFFSET, &8u32.to_le_bytes(), true)),
        c(
            "continued",
            "CONTINUED flag: reserved for multi-frame values, UNSUPPORTED in version 1",
            patched(put, FLAGS_OFFSET, &Flags::CONTINUED.0.to_le_bytes(), true),
        ),
        c(
            "unknown-command",
            "command 0x3f is in the client range but undefined",
            encode(Frame::request(14, Command(0x3f), b"", b"")),
        ),
        c(
            "replication-range",
            "command 0x40 is reserved for replication",
            encode(Frame::request(15, Command(0x40), b"", b"")),
        ),
        c("get-empty-key", "GET without a key", encode(Frame::request(16, Command::GET, b"", b""))),
        c("get-with-value", "GET carrying a value", encode(Frame::request(17, Command::GET, b"k", b"v"))),
        c(
            "request-with-reply-flag",
            "a request that sets REPLY",
            patched(Frame::request(18, Command::GET, b"k", b""), FLAGS_OFFSET, &1u32.to_le_bytes(), true),
        ),
    ];
    cases.extend(compact_cases());
    cases
}

fn encode_compact(frame: Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode_compact_to(&mut out).expect("case frames are valid");
    out
}

/// Rewrites the checksum over the range the declared lengths give, as far as the bytes go.
fn refresh_compact_crc(bytes: &mut [u8]) {
    let len = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
    let end = (48 + len(KEY_LEN_OFFSET) + len(VALUE_LEN_OFFSET)).min(bytes.len() as u64) as usize;
    let crc = crc32fast::hash(&bytes[CRC_START..end]);
    bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

fn patched_compact(frame: Frame<'_>, at: usize, patch: &[u8], fix_crc: bool) -> Vec<u8> {
    let mut bytes = encode_compact(frame);
    bytes[at..at + patch.len()].copy_from_slice(patch);
    if fix_crc {
        refresh_compact_crc(&mut bytes);
    }
    bytes
}

/// Compact framing: `hex` is exactly the bytes sent, and a receiver closes on any error
/// found before the checksum passed.
fn compact_cases() -> Vec<Case> {
    let put = Frame::request(0x0102030405060708, Command::PUT, b"key", b"value");
    let c = |name, note, bytes| Case { name, note, framing: Framing::Compact, bytes };
    let mut short_put = encode_compact(put);
    short_put.pop();
    let mut early_bad_length = patched_compact(put, KEY_LEN_OFFSET, &1025u32.to_le_bytes(), false);
    early_bad_length.truncate(TIMESTAMP_OFFSET);
    vec![
        c(
            "compact-ping",
            "PING with no payload: the 48-byte header alone, trailing zeros included",
            encode_compact(Frame::request(1, Command::PING, b"", b"")),
        ),
        c(
            "compact-get",
            "GET of key \"fruit\": the fixed vector \"get\" without its padding",
            encode_compact(Frame::request(3, Command::GET, b"fruit", b"")),
        ),
        c("compact-put", "PUT key=value: same checksum as the fixed frame", encode_compact(put)),
        c(
            "compact-reply-ok-value",
            "reply to GET id 3: OK, version 99, value \"apple\"",
            encode_compact(Frame::reply_to(3, Command::GET, Status::OK, b"apple").with_timestamp(99)),
        ),
        c(
            "compact-truncated",
            "the PUT without its last byte: wait for more (on a datagram: refuse it)",
            short_put,
        ),
        c(
            "compact-bad-magic",
            "first byte changed: answer once, close",
            patched_compact(put, 0, b"X", false),
        ),
        c(
            "compact-bad-version",
            "version byte 2: answer UNSUPPORTED once, close",
            patched_compact(put, VERSION_OFFSET, &[2], false),
        ),
        c(
            "compact-bad-checksum",
            "one value byte changed: the lengths may be damaged too, so answer once, close",
            patched_compact(put, 48 + 3, b"V", false),
        ),
        c(
            "compact-key-too-long",
            "key_len 1025, checksum valid: the lengths are checked first, the id is not trusted; close",
            patched_compact(put, KEY_LEN_OFFSET, &1025u32.to_le_bytes(), true),
        ),
        c(
            "compact-bad-length-early",
            "key_len 1025 in the first 40 bytes: refused before the rest of the header arrives",
            early_bad_length,
        ),
        c(
            "compact-sizes-overflow",
            "value_len 4046 with a 3-byte key: more than 4048 payload bytes; close",
            patched_compact(put, VALUE_LEN_OFFSET, &4046u32.to_le_bytes(), true),
        ),
        c(
            "compact-sizes-huge",
            "value_len 0xFFFFFFFF: refused at once, never waited for",
            patched_compact(put, VALUE_LEN_OFFSET, &u32::MAX.to_le_bytes(), false),
        ),
        c(
            "compact-reserved-flag",
            "flag bit 3 set, checksum valid: refused after the checksum, so the stream goes on",
            patched_compact(put, FLAGS_OFFSET, &8u32.to_le_bytes(), true),
        ),
        c(
            "compact-continued",
            "CONTINUED flag: UNSUPPORTED, the stream goes on",
            patched_compact(put, FLAGS_OFFSET, &Flags::CONTINUED.0.to_le_bytes(), true),
        ),
        c(
            "compact-unknown-command",
            "command 0x3f: UNKNOWN_COMMAND, the stream goes on",
            encode_compact(Frame::request(14, Command(0x3f), b"", b"")),
        ),
        c(
            "compact-get-with-value",
            "GET carrying a value: BAD_REQUEST, the stream goes on",
            encode_compact(Frame::request(17, Command::GET, b"k", b"v")),
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn error_name(e: &DecodeError) -> String {
    format!("{e:?}").split([' ', '{']).next().unwrap_or_default().to_string()
}

fn answer(out: &mut String, e: &DecodeError, framing: Framing) {
    let id = e.trusted_id().map_or("untrusted".to_string(), |id| id.to_string());
    let close = if e.is_fatal_for(framing) { "yes" } else { "no" };
    let _ = writeln!(out, "answer: {} id={id} close={close}", e.status());
}

/// What a receiver makes of the bytes, in the file's line format.
fn outcome(framing: Framing, bytes: &[u8]) -> String {
    let mut out = String::new();
    let decoded = match framing {
        Framing::Fixed => {
            Frame::decode(bytes.try_into().expect("a fixed vector is one whole frame")).map(Some)
        }
        Framing::Compact => Frame::decode_compact(bytes).map(|decoded| {
            decoded.map(|(frame, len)| {
                // A compact vector holds one frame and nothing else; its fields encode back
                // to exactly its bytes.
                assert_eq!(len, bytes.len(), "a compact vector holds exactly one frame");
                let mut again = Vec::new();
                frame.encode_compact_to(&mut again).unwrap();
                assert_eq!(again, bytes);
                frame
            })
        }),
    };
    match decoded {
        Ok(None) => {
            let _ = writeln!(out, "decode: incomplete");
        }
        Err(e) => {
            let _ = writeln!(out, "decode: {}", error_name(&e));
            answer(&mut out, &e, framing);
        }
        Ok(Some(f)) => {
            let _ = writeln!(out, "decode: ok");
            let _ = writeln!(
                out,
                "fields: id={} command={:#x} flags={:#x} param={} timestamp={} key_len={} value_len={}",
                f.id,
                f.command.0,
                f.flags.0,
                f.param,
                f.timestamp,
                f.key.len(),
                f.value.len()
            );
            let _ = writeln!(out, "key: {}", hex(f.key));
            let _ = writeln!(out, "value: {}", hex(f.value));
            if f.is_reply() {
                let _ = writeln!(out, "reply: {}", f.status());
            } else {
                match Request::parse(&f) {
                    Ok(r) => {
                        let _ = writeln!(out, "request: {:?}", r.command());
                    }
                    Err(e) => {
                        let _ = writeln!(out, "request: {}", error_name(&e));
                        answer(&mut out, &e, framing);
                    }
                }
            }
        }
    }
    out
}

fn render() -> String {
    let mut s = String::from(
        "# Tandem wire protocol, version 1: test vectors.\n\
         # Generated by wire/tests/vectors.rs; see PROTOCOL.md, section \"Test vectors\".\n\
         #\n\
         # Records are separated by blank lines. `hex` is the frame up to its last non-zero byte:\n\
         # pad it with zero bytes to 4096. `decode` is the result of checking magic, version,\n\
         # checksum, lengths and flags (in that order); `request` the result of checking a\n\
         # request against its command's rules; `answer` the status a server replies with,\n\
         # the id it uses, and whether it then closes the connection. key/value are hex.\n\
         #\n\
         # A record with `framing: compact` is a compact frame (PROTOCOL.md, \"Compact framing\"):\n\
         # its `hex` is exactly the bytes received, with no padding to add, and `decode` follows\n\
         # the compact order of checks; `decode: incomplete` means the receiver waits for more.\n",
    );
    for case in cases() {
        let (framing_line, used) = match case.framing {
            Framing::Fixed => ("", case.bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)),
            Framing::Compact => ("framing: compact\n", case.bytes.len()),
        };
        let _ = write!(
            s,
            "\nname: {}\nnote: {}\n{framing_line}hex: {}\n{}",
            case.name,
            case.note,
            hex(&case.bytes[..used]),
            outcome(case.framing, &case.bytes)
        );
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn golden_file_matches_the_codec() {
    let rendered = render();
    if std::env::var_os("TANDEM_REGEN_VECTORS").is_some() {
        std::fs::write(PATH, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(PATH).expect("wire/tests/vectors.txt is checked in");
    // Independently of the generator: every record's bytes, decoded now, give what the file says.
    let mut records = 0;
    for record in golden.split("\n\n").skip(1) {
        let hex_line = record.lines().find_map(|l| l.strip_prefix("hex: ")).expect("hex line");
        let mut bytes = unhex(hex_line);
        let framing = match record.lines().find_map(|l| l.strip_prefix("framing: ")) {
            None => {
                bytes.resize(FRAME_LEN, 0);
                Framing::Fixed
            }
            Some("compact") => Framing::Compact,
            Some(other) => panic!("unknown framing {other}"),
        };
        let expected: String =
            record.lines().skip_while(|l| !l.starts_with("decode:")).map(|l| format!("{l}\n")).collect();
        let name = record.lines().next().unwrap_or_default();
        assert_eq!(outcome(framing, &bytes), expected, "{name}");
        records += 1;
    }
    assert_eq!(records, cases().len());
    assert_eq!(golden, rendered, "vectors.txt differs from the cases; regenerate deliberately");
}

#[test]
fn every_client_command_and_error_class_has_a_vector() {
    let golden = std::fs::read_to_string(PATH).unwrap();
    for command in Command::CLIENT {
        assert!(golden.contains(&format!("request: {command:?}\n")), "no vector for {command:?}");
    }
    for class in [
        "BadMagic",
        "UnsupportedVersion",
        "BadChecksum",
        "KeyTooLong",
        "PayloadTooLong",
        "BadCompactLength",
        "ReservedFlags",
        "Continued",
        "UnknownCommand",
        "BadRequest",
    ] {
        assert!(golden.contains(&format!(": {class}\n")), "no vector for {class}");
    }
    // Compact framing has its own: valid frames, and each way its receiver closes or goes on.
    let compact: String = golden
        .split("\n\n")
        .filter(|r| r.contains("\nframing: compact\n"))
        .map(|r| format!("{r}\n"))
        .collect();
    for line in [
        "request: GET\n",
        "request: PUT\n",
        "decode: incomplete\n",
        "decode: BadMagic\n",
        "decode: UnsupportedVersion\n",
        "answer: BAD_CHECKSUM id=untrusted close=yes\n",
        "answer: BAD_FRAME id=untrusted close=yes\n",
        "decode: ReservedFlags\nanswer: BAD_FRAME id=72623859790382856 close=no\n",
        "request: UnknownCommand\nanswer: UNKNOWN_COMMAND id=14 close=no\n",
        "request: BadRequest\n",
    ] {
        assert!(compact.contains(line), "no compact vector with {line:?}");
    }
}
