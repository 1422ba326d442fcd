//! The protocols the load tool speaks: requests encoded into caller buffers, replies parsed
//! in place and classified as success, miss or error. No I/O here.
//!
//! - `tandem`: one [`wire::Frame`] per request and reply, matched by id: 4096 bytes each
//!   ([`Framing::Fixed`]), or header, key and value only ([`Framing::Compact`], negotiated
//!   per connection with a HELLO first: [`classify_hello`]).
//! - `echo`: Tandem frames sent to a server that returns them unchanged (the ceiling
//!   baseline); any frame that decodes with the right id counts as success.
//! - `resp`: Redis's protocol, `SET`/`GET`/`APPEND` as arrays of bulk strings; replies are
//!   matched by order, as RESP has no ids. With `--wait N` every write is followed by
//!   `WAIT N 0`, and the pair is one operation (see [`encode_wait`]).

use std::fmt;
use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;
use wire::{
    Command, DecodeError, EncodeError, Frame, Status, FRAME_LEN, HEADER_LEN, HELLO_COMPACT, HELLO_FIXED,
};

use crate::stats::ErrorKind;
use crate::workload::Cmd;

/// Which protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Tandem's fixed 4096-byte frames.
    Tandem,
    /// Redis's RESP (SET/GET/APPEND).
    Resp,
    /// Tandem frames to an echo server (`tandem-echo`): the machine's ceiling.
    Echo,
}

impl Protocol {
    /// Whether requests and replies are Tandem frames.
    pub const fn uses_frames(self) -> bool {
        !matches!(self, Protocol::Resp)
    }
}

/// How Tandem frames are laid out on a connection (`--framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Every frame is 4096 bytes, zero-padded: what every connection starts with.
    #[default]
    Fixed,
    /// Header, key and value with no padding, asked for with a HELLO at connect.
    Compact,
}

impl Framing {
    /// The framing as the `wire` crate names it.
    pub const fn wire(self) -> wire::Framing {
        match self {
            Framing::Fixed => wire::Framing::Fixed,
            Framing::Compact => wire::Framing::Compact,
        }
    }

    /// `fixed` or `compact`, as the flag spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Framing::Fixed => "fixed",
            Framing::Compact => "compact",
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes of RESP framing around a SET's key and value, rounded up generously.
const RESP_OVERHEAD: usize = 64;
/// The longest RESP bulk reply accepted; longer is treated as garbage.
const RESP_MAX_BULK: usize = 512 * 1024 * 1024;

/// The most bytes one request can take on the wire (`framing` applies to Tandem frames).
pub fn max_request_len(protocol: Protocol, framing: Framing, key_len: usize, value_len: usize) -> usize {
    match (protocol, framing) {
        (Protocol::Tandem | Protocol::Echo, Framing::Fixed) => FRAME_LEN,
        (Protocol::Tandem | Protocol::Echo, Framing::Compact) => HEADER_LEN + key_len + value_len,
        (Protocol::Resp, _) => RESP_OVERHEAD + key_len + value_len,
    }
}

/// The Tandem opcode of a command.
pub const fn command_of(cmd: Cmd) -> Command {
    match cmd {
        Cmd::Put => Command::PUT,
        Cmd::Get => Command::GET,
        Cmd::Append => Command::APPEND,
    }
}

/// Writes `WAIT replicas 0` (block until `replicas` replicas acknowledged the connection's
/// writes so far, with no timeout), the second half of a write under `--wait`; `None` if
/// `out` is too short.
///
/// Sent right behind the write, in the same batch, so that Redis's synchronous replication
/// costs one round trip as Tandem's does, and is measured by the same client. Connections
/// encode it once and copy it, so nothing is formatted per request.
pub fn encode_wait(replicas: u32, out: &mut [u8]) -> Option<usize> {
    let mut digits = [0u8; 10];
    let len = {
        let mut cursor: &mut [u8] = &mut digits;
        write!(cursor, "{replicas}").ok()?;
        10 - cursor.len()
    };
    encode_resp_array(&[b"WAIT", &digits[..len], b"0"], out)
}

/// The most bytes [`encode_wait`] writes.
pub const RESP_WAIT_MAX_LEN: usize = 40;

/// Encodes one request into the front of `out` and returns its length. `value` is ignored
/// for GET; `id` and `framing` are ignored by RESP.
///
/// # Errors
/// When `out` is too short or the key and value break the frame's limits.
pub fn encode_request(
    protocol: Protocol,
    framing: Framing,
    id: u64,
    cmd: Cmd,
    key: &[u8],
    value: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let value = if cmd.carries_value() { value } else { &[] };
    match protocol {
        Protocol::Tandem | Protocol::Echo => {
            let frame = Frame::request(id, command_of(cmd), key, value);
            match framing {
                Framing::Fixed => frame.encode(out),
                Framing::Compact => frame.encode_compact(out),
            }
        }
        Protocol::Resp => {
            let name: &[u8] = match cmd {
                Cmd::Put => b"SET",
                Cmd::Get => b"GET",
                Cmd::Append => b"APPEND",
            };
            let args: &[&[u8]] = if cmd.carries_value() { &[name, key, value] } else { &[name, key] };
            encode_resp_array(args, out).ok_or(EncodeError::BufferTooSmall { len: out.len() })
        }
    }
}

/// Writes `args` as a RESP array of bulk strings; `None` if `out` is too short.
pub fn encode_resp_array(args: &[&[u8]], out: &mut [u8]) -> Option<usize> {
    let total = out.len();
    let mut cursor: &mut [u8] = out;
    write!(cursor, "*{}\r\n", args.len()).ok()?;
    for arg in args {
        write!(cursor, "${}\r\n", arg.len()).ok()?;
        cursor.write_all(arg).ok()?;
        cursor.write_all(b"\r\n").ok()?;
    }
    Some(total - cursor.len())
}

/// One RESP reply, borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespValue<'a> {
    /// `+OK`
    Simple(&'a [u8]),
    /// `-ERR message`
    Error(&'a [u8]),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(&'a [u8]),
    /// `$-1` (or `*-1`, `_`): no value.
    Nil,
}

/// Bytes that cannot be RESP; the connection is beyond repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespError(pub &'static str);

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], end + 2))
}

fn parse_int(digits: &[u8]) -> Result<i64, RespError> {
    let text = std::str::from_utf8(digits).map_err(|_| RespError("a number is not ASCII"))?;
    text.parse().map_err(|_| RespError("a number does not parse"))
}

/// Parses the first reply in `buf`: `Ok(None)` until it is complete, then the reply and the
/// bytes it took. Arrays other than a nil array are refused (SET/GET/APPEND never return one).
///
/// # Errors
/// [`RespError`] for bytes that are not a RESP reply.
pub fn parse_resp(buf: &[u8]) -> Result<Option<(RespValue<'_>, usize)>, RespError> {
    let Some(&kind) = buf.first() else { return Ok(None) };
    let Some((body, used)) = line(&buf[1..]) else {
        // Guard against a peer that never ends its line.
        return if buf.len() > 64 * 1024 { Err(RespError("a reply line never ends")) } else { Ok(None) };
    };
    let used = used + 1;
    let value = match kind {
        b'+' => RespValue::Simple(body),
        b'-' => RespValue::Error(body),
        b':' => RespValue::Integer(parse_int(body)?),
        b'_' => RespValue::Nil,
        b'*' if parse_int(body)? == -1 => RespValue::Nil,
        b'*' => return Err(RespError("an array reply")),
        b'$' => {
            let len = parse_int(body)?;
            if len == -1 {
                RespValue::Nil
            } else {
                let len = usize::try_from(len).map_err(|_| RespError("a negative bulk length"))?;
                if len > RESP_MAX_BULK {
                    return Err(RespError("a bulk reply longer than 512 MiB"));
                }
                let Some(rest) = buf.get(used..used + len + 2) else { return Ok(None) };
                if &rest[len..] != b"\r\n" {
                    return Err(RespError("a bulk reply not ended by CRLF"));
                }
                return Ok(Some((RespValue::Bulk(&rest[..len]), used + len + 2)));
            }
        }
        _ => return Err(RespError("an unknown reply type")),
    };
    Ok(Some((value, used)))
}

/// What a reply means for the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Done; for GET, the value read.
    Ok(&'a [u8]),
    /// GET of a key that does not exist.
    Miss,
    /// Counted as an error of this kind.
    Error(ErrorKind),
}

/// Classifies a RESP reply to `cmd`.
pub fn classify_resp<'a>(cmd: Cmd, reply: RespValue<'a>) -> Outcome<'a> {
    match (cmd, reply) {
        (_, RespValue::Error(_)) => Outcome::Error(ErrorKind::RespError),
        (Cmd::Put, RespValue::Simple(b"OK")) => Outcome::Ok(&[]),
        (Cmd::Get, RespValue::Bulk(value)) => Outcome::Ok(value),
        (Cmd::Get, RespValue::Nil) => Outcome::Miss,
        (Cmd::Append, RespValue::Integer(_)) => Outcome::Ok(&[]),
        _ => Outcome::Error(ErrorKind::Unexpected),
    }
}

/// Classifies the reply to the `WAIT replicas 0` that followed a write: an integer of at
/// least `replicas` is success, fewer is [`ErrorKind::WaitShort`] (the write is not known to
/// be on enough replicas, so it must not count as a synchronous write).
pub fn classify_wait(replicas: u32, reply: RespValue<'_>) -> Outcome<'static> {
    match reply {
        RespValue::Integer(acked) if acked >= i64::from(replicas) => Outcome::Ok(&[]),
        RespValue::Integer(_) => Outcome::Error(ErrorKind::WaitShort),
        RespValue::Error(_) => Outcome::Error(ErrorKind::RespError),
        _ => Outcome::Error(ErrorKind::Unexpected),
    }
}

/// Classifies a decoded frame answering the request `(id, cmd)`. An id mismatch is
/// reported as such: the caller must then give up on the connection, as the replies are
/// out of step with the requests. An error reply with id 0 answers the request at the head
/// all the same (PROTOCOL.md: the server could not trust the frame's header, or refuses the
/// connection, as with BUSY), and counts as that status.
pub fn classify_frame<'a>(protocol: Protocol, id: u64, cmd: Cmd, reply: &Frame<'a>) -> Outcome<'a> {
    if reply.id != id {
        if reply.id == 0 && reply.is_reply() && reply.status() != Status::OK {
            return Outcome::Error(ErrorKind::Status(reply.status()));
        }
        return Outcome::Error(ErrorKind::IdMismatch);
    }
    if protocol == Protocol::Echo {
        return Outcome::Ok(reply.value);
    }
    if !reply.is_reply() || reply.command != command_of(cmd) {
        return Outcome::Error(ErrorKind::Unexpected);
    }
    match reply.status() {
        Status::OK => Outcome::Ok(reply.value),
        Status::NOT_FOUND if cmd == Cmd::Get => Outcome::Miss,
        status => Outcome::Error(ErrorKind::Status(status)),
    }
}

/// The HELLO asking for compact framing, as a fixed frame (every connection starts fixed).
///
/// # Errors
/// Only when `out` is shorter than [`FRAME_LEN`].
pub fn encode_hello(id: u64, out: &mut [u8]) -> Result<usize, EncodeError> {
    wire::Request::Hello { framing: HELLO_COMPACT }.to_frame(id).encode(out)
}

/// Why a server did not agree to compact framing when asked with a HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloRefusal {
    /// It answered UNKNOWN_COMMAND: a server from before HELLO.
    UnknownCommand,
    /// It answered OK but chose another framing: this byte ([`HELLO_FIXED`], or one this
    /// tool does not know).
    Chose(u8),
    /// It answered with another error status (BUSY at its connection limit, ...).
    Status(Status),
    /// It returned the HELLO itself, not a reply: an echo server, loaded as `tandem`.
    Unchanged,
    /// Its answer is not a reply to this HELLO (another id or command, no value).
    NotAnAnswer,
    /// Its answer is not a frame.
    Undecodable(DecodeError),
}

impl HelloRefusal {
    /// How a refusal on a connection opened during the run is counted.
    pub const fn error_kind(self) -> ErrorKind {
        match self {
            HelloRefusal::UnknownCommand | HelloRefusal::Chose(_) => ErrorKind::HelloRefused,
            HelloRefusal::Status(status) => ErrorKind::Status(status),
            HelloRefusal::Unchanged | HelloRefusal::NotAnAnswer => ErrorKind::Unexpected,
            HelloRefusal::Undecodable(_) => ErrorKind::Decode,
        }
    }
}

impl fmt::Display for HelloRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloRefusal::UnknownCommand => f.write_str(
                "it answered HELLO with UNKNOWN_COMMAND (a server from before HELLO); use --framing fixed",
            ),
            HelloRefusal::Chose(HELLO_FIXED) => f.write_str("it chose fixed framing; use --framing fixed"),
            HelloRefusal::Chose(other) => {
                write!(f, "it chose framing {other}, which this tool does not know")
            }
            HelloRefusal::Status(status) => write!(f, "it answered HELLO with {status}"),
            HelloRefusal::Unchanged => {
                f.write_str("it returned the HELLO unchanged: an echo server? (use --protocol echo)")
            }
            HelloRefusal::NotAnAnswer => f.write_str("its answer to HELLO is not a HELLO reply"),
            HelloRefusal::Undecodable(e) => write!(f, "its answer to HELLO does not decode ({e})"),
        }
    }
}

impl std::error::Error for HelloRefusal {}

/// Checks the answer to the HELLO `id` that asked for compact framing: `Ok` when the server
/// chose compact. An echo server agrees by returning the HELLO itself, whose value asks for
/// compact (`tandem-echo` switches framing as it passes a HELLO on).
///
/// # Errors
/// [`HelloRefusal`] saying what the server answered instead.
pub fn classify_hello(protocol: Protocol, id: u64, reply: &Frame<'_>) -> Result<(), HelloRefusal> {
    if reply.id != id {
        if reply.id == 0 && reply.is_reply() && reply.status() != Status::OK {
            return Err(HelloRefusal::Status(reply.status()));
        }
        return Err(HelloRefusal::NotAnAnswer);
    }
    if reply.command != Command::HELLO {
        return Err(HelloRefusal::NotAnAnswer);
    }
    if protocol == Protocol::Tandem {
        if !reply.is_reply() {
            return Err(HelloRefusal::Unchanged);
        }
        match reply.status() {
            Status::OK => {}
            Status::UNKNOWN_COMMAND => return Err(HelloRefusal::UnknownCommand),
            status => return Err(HelloRefusal::Status(status)),
        }
    }
    match reply.value.first() {
        Some(&HELLO_COMPACT) => Ok(()),
        Some(&other) => Err(HelloRefusal::Chose(other)),
        None => Err(HelloRefusal::NotAnAnswer),
    }
}

/// [`classify_hello`] of a fixed frame's bytes, decoding it first.
///
/// # Errors
/// As [`classify_hello`]; [`HelloRefusal::Undecodable`] when the bytes are not a frame.
pub fn check_hello_reply(protocol: Protocol, id: u64, bytes: &[u8; FRAME_LEN]) -> Result<(), HelloRefusal> {
    let reply = Frame::decode(bytes).map_err(HelloRefusal::Undecodable)?;
    classify_hello(protocol, id, &reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_requests_are_arrays_of_bulk_strings() {
        let mut out = [0u8; 128];
        let n = encode_request(Protocol::Resp, Framing::Fixed, 9, Cmd::Put, b"key:1", b"abc", &mut out)
            .expect("fits");
        assert_eq!(&out[..n], b"*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$3\r\nabc\r\n");
        let n = encode_request(Protocol::Resp, Framing::Fixed, 9, Cmd::Get, b"key:1", b"ignored", &mut out)
            .expect("fits");
        assert_eq!(&out[..n], b"*2\r\n$3\r\nGET\r\n$5\r\nkey:1\r\n");
        let n = encode_request(Protocol::Resp, Framing::Fixed, 9, Cmd::Append, b"k", b"", &mut out)
            .expect("fits");
        assert_eq!(&out[..n], b"*3\r\n$6\r\nAPPEND\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert!(
            encode_request(Protocol::Resp, Framing::Fixed, 1, Cmd::Put, b"k", &[0; 200], &mut out).is_err()
        );
        let longest = max_request_len(Protocol::Resp, Framing::Fixed, 16, 4000);
        let mut big = vec![0u8; longest];
        assert!(encode_request(
            Protocol::Resp,
            Framing::Fixed,
            1,
            Cmd::Put,
            &[b'k'; 16],
            &[b'v'; 4000],
            &mut big
        )
        .is_ok());
    }

    #[test]
    fn tandem_requests_are_frames() {
        let mut out = [0u8; FRAME_LEN];
        let t = Protocol::Tandem;
        assert_eq!(
            encode_request(t, Framing::Fixed, 77, Cmd::Get, b"k", b"dropped", &mut out),
            Ok(FRAME_LEN)
        );
        let frame = Frame::decode(&out).expect("valid");
        assert_eq!(
            (frame.id, frame.command, frame.key, frame.value),
            (77, Command::GET, &b"k"[..], &b""[..])
        );
    }

    #[test]
    fn compact_requests_are_frames_without_padding() {
        let key = [b'k'; 16];
        let value = [b'v'; 100];
        let longest = max_request_len(Protocol::Tandem, Framing::Compact, key.len(), value.len());
        assert_eq!(longest, HEADER_LEN + 116);
        assert_eq!(max_request_len(Protocol::Echo, Framing::Fixed, 16, 100), FRAME_LEN);
        let mut out = vec![0u8; longest];
        let t = Protocol::Tandem;
        let n = encode_request(t, Framing::Compact, 5, Cmd::Put, &key, &value, &mut out).expect("fits");
        assert_eq!(n, longest);
        let (frame, used) = Frame::decode_compact(&out).expect("valid").expect("whole");
        assert_eq!((used, frame.id, frame.command, frame.value), (n, 5, Command::PUT, &value[..]));
        let n = encode_request(t, Framing::Compact, 6, Cmd::Get, &key, &value, &mut out).expect("fits");
        assert_eq!(n, HEADER_LEN + 16, "a GET carries no value");
        let short = encode_request(t, Framing::Compact, 7, Cmd::Put, &key, &value, &mut out[..longest - 1]);
        assert!(short.is_err());
    }

    #[test]
    fn hello_answers_classify() {
        let mut out = [0u8; FRAME_LEN];
        assert_eq!(encode_hello(9, &mut out), Ok(FRAME_LEN));
        let hello = Frame::decode(&out).expect("valid");
        assert_eq!((hello.id, hello.command, hello.value), (9, Command::HELLO, &[HELLO_COMPACT][..]));
        let t = Protocol::Tandem;
        let agreed = Frame::reply(&hello, Status::OK, &[HELLO_COMPACT]);
        assert_eq!(classify_hello(t, 9, &agreed), Ok(()));
        let mut bytes = [0u8; FRAME_LEN];
        agreed.encode(&mut bytes).expect("encodes");
        assert_eq!(check_hello_reply(t, 9, &bytes), Ok(()));
        bytes[HEADER_LEN] ^= 1; // the value byte, under the checksum
        assert!(matches!(check_hello_reply(t, 9, &bytes), Err(HelloRefusal::Undecodable(_))));
        let old = Frame::reply(&hello, Status::UNKNOWN_COMMAND, b"unknown command 0x8");
        assert_eq!(classify_hello(t, 9, &old), Err(HelloRefusal::UnknownCommand));
        assert_eq!(HelloRefusal::UnknownCommand.error_kind(), ErrorKind::HelloRefused);
        assert!(HelloRefusal::UnknownCommand.to_string().contains("UNKNOWN_COMMAND"));
        let fixed = Frame::reply(&hello, Status::OK, &[HELLO_FIXED]);
        assert_eq!(classify_hello(t, 9, &fixed), Err(HelloRefusal::Chose(HELLO_FIXED)));
        assert!(HelloRefusal::Chose(HELLO_FIXED).to_string().contains("chose fixed framing"));
        let empty = Frame::reply(&hello, Status::OK, b"");
        assert_eq!(classify_hello(t, 9, &empty), Err(HelloRefusal::NotAnAnswer));
        let busy = Frame::reply_to(0, Command(0), Status::BUSY, b"too many connections");
        assert_eq!(classify_hello(t, 9, &busy), Err(HelloRefusal::Status(Status::BUSY)));
        assert_eq!(classify_hello(t, 8, &agreed), Err(HelloRefusal::NotAnAnswer));
        // An echo server returns the HELLO itself: agreement for echo, a mistake for tandem.
        assert_eq!(classify_hello(Protocol::Echo, 9, &hello), Ok(()));
        assert_eq!(classify_hello(t, 9, &hello), Err(HelloRefusal::Unchanged));
        let ping = Frame::request(9, Command::PING, b"", &[HELLO_COMPACT]);
        assert_eq!(classify_hello(Protocol::Echo, 9, &ping), Err(HelloRefusal::NotAnAnswer));
    }

    #[test]
    fn resp_replies_parse() {
        let cases: [(&[u8], RespValue<'_>, usize); 7] = [
            (b"+OK\r\n", RespValue::Simple(b"OK"), 5),
            (b"-ERR wrong\r\nrest", RespValue::Error(b"ERR wrong"), 12),
            (b":12\r\n", RespValue::Integer(12), 5),
            (b"$3\r\nabc\r\n+OK", RespValue::Bulk(b"abc"), 9),
            (b"$0\r\n\r\n", RespValue::Bulk(b""), 6),
            (b"$-1\r\n", RespValue::Nil, 5),
            (b"_\r\n", RespValue::Nil, 3),
        ];
        for (bytes, want, used) in cases {
            assert_eq!(parse_resp(bytes), Ok(Some((want, used))), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn partial_resp_replies_wait_for_more() {
        let whole = b"$5\r\nhello\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse_resp(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_resp(whole), Ok(Some((RespValue::Bulk(b"hello"), whole.len()))));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b"?what\r\n"[..], b"$x\r\n", b"$-5\r\n", b"$3\r\nabcXY", b"*2\r\n", b":1.5\r\n"] {
            assert!(parse_resp(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_resp(&[b'+'; 70_000]).is_err());
    }

    #[test]
    fn resp_replies_classify_by_command() {
        assert_eq!(classify_resp(Cmd::Put, RespValue::Simple(b"OK")), Outcome::Ok(b""));
        assert_eq!(classify_resp(Cmd::Get, RespValue::Bulk(b"v")), Outcome::Ok(b"v"));
        assert_eq!(classify_resp(Cmd::Get, RespValue::Nil), Outcome::Miss);
        assert_eq!(classify_resp(Cmd::Append, RespValue::Integer(5)), Outcome::Ok(b""));
        assert_eq!(classify_resp(Cmd::Put, RespValue::Error(b"OOM")), Outcome::Error(ErrorKind::RespError));
        assert_eq!(classify_resp(Cmd::Put, RespValue::Nil), Outcome::Error(ErrorKind::Unexpected));
        assert_eq!(classify_resp(Cmd::Get, RespValue::Simple(b"OK")), Outcome::Error(ErrorKind::Unexpected));
    }

    #[test]
    fn wait_requests_and_replies() {
        let mut out = [0u8; RESP_WAIT_MAX_LEN];
        let n = encode_wait(2, &mut out).expect("fits");
        assert_eq!(&out[..n], b"*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$1\r\n0\r\n");
        assert!(encode_wait(u32::MAX, &mut out).is_some(), "the longest fits in RESP_WAIT_MAX_LEN");
        assert_eq!(classify_wait(2, RespValue::Integer(2)), Outcome::Ok(b""));
        assert_eq!(classify_wait(2, RespValue::Integer(3)), Outcome::Ok(b""));
        assert_eq!(classify_wait(2, RespValue::Integer(1)), Outcome::Error(ErrorKind::WaitShort));
        assert_eq!(classify_wait(1, RespValue::Error(b"ERR")), Outcome::Error(ErrorKind::RespError));
        assert_eq!(classify_wait(1, RespValue::Simple(b"OK")), Outcome::Error(ErrorKind::Unexpected));
    }

    #[test]
    fn frames_classify_by_id_command_and_status() {
        let request = Frame::request(5, Command::GET, b"k", b"");
        let ok = Frame::reply(&request, Status::OK, b"val");
        let missing = Frame::reply(&request, Status::NOT_FOUND, b"");
        let busy = Frame::reply(&request, Status::UNAVAILABLE, b"");
        let t = Protocol::Tandem;
        assert_eq!(classify_frame(t, 5, Cmd::Get, &ok), Outcome::Ok(b"val"));
        assert_eq!(classify_frame(t, 5, Cmd::Get, &missing), Outcome::Miss);
        assert_eq!(
            classify_frame(t, 5, Cmd::Get, &busy),
            Outcome::Error(ErrorKind::Status(Status::UNAVAILABLE))
        );
        assert_eq!(classify_frame(t, 6, Cmd::Get, &ok), Outcome::Error(ErrorKind::IdMismatch));
        assert_eq!(classify_frame(t, 5, Cmd::Put, &ok), Outcome::Error(ErrorKind::Unexpected));
        assert_eq!(classify_frame(t, 5, Cmd::Get, &request), Outcome::Error(ErrorKind::Unexpected));
        let put = Frame::request(5, Command::PUT, b"k", b"");
        let put_missing = Frame::reply(&put, Status::NOT_FOUND, b"");
        assert_eq!(
            classify_frame(t, 5, Cmd::Put, &put_missing),
            Outcome::Error(ErrorKind::Status(Status::NOT_FOUND))
        );
        // Id 0: the server's answer to a frame it could not trust, or a refusal (BUSY).
        let refused = Frame::reply_to(0, Command(0), Status::BUSY, b"too many connections");
        assert_eq!(classify_frame(t, 5, Cmd::Get, &refused), Outcome::Error(ErrorKind::Status(Status::BUSY)));
        let untrusted = Frame::reply_to(0, Command(0), Status::BAD_CHECKSUM, b"");
        assert_eq!(
            classify_frame(t, 5, Cmd::Put, &untrusted),
            Outcome::Error(ErrorKind::Status(Status::BAD_CHECKSUM))
        );
        let ok_with_id_0 = Frame::reply_to(0, Command::GET, Status::OK, b"val");
        assert_eq!(classify_frame(t, 5, Cmd::Get, &ok_with_id_0), Outcome::Error(ErrorKind::IdMismatch));
        // The echo server returns the request itself.
        assert_eq!(classify_frame(Protocol::Echo, 5, Cmd::Get, &request), Outcome::Ok(b""));
        assert_eq!(
            classify_frame(Protocol::Echo, 4, Cmd::Get, &request),
            Outcome::Error(ErrorKind::IdMismatch)
        );
    }
}
