//! [`Request`]: a decoded frame checked against the rules of its command.

use crate::{Command, DecodeError, Flags, Frame};

/// A client request, one variant per command, borrowing from the frame it was parsed from.
///
/// Servers get one with [`Request::parse`]; clients build one and turn it into a frame with
/// [`Request::to_frame`], so both sides share one definition of each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Liveness check; the reply echoes `payload`.
    Ping {
        /// Any bytes (the frame's value).
        payload: &'a [u8],
    },
    /// Read `key`.
    Get {
        /// Non-empty.
        key: &'a [u8],
    },
    /// Set `key` to `value`.
    Put {
        /// Non-empty.
        key: &'a [u8],
        /// Any bytes, possibly empty.
        value: &'a [u8],
        /// Identifies the client for at-most-once execution of retries; 0 = anonymous.
        client_id: u64,
        /// Write only if the key's current version is this (0 = unconditional).
        expected_version: u64,
    },
    /// Remove `key`.
    Delete {
        /// Non-empty.
        key: &'a [u8],
        /// As for [`Request::Put`].
        client_id: u64,
        /// As for [`Request::Put`].
        expected_version: u64,
    },
    /// Append `value` to the value of `key`, creating it if absent.
    Append {
        /// Non-empty.
        key: &'a [u8],
        /// The bytes to append.
        value: &'a [u8],
        /// As for [`Request::Put`].
        client_id: u64,
        /// As for [`Request::Put`].
        expected_version: u64,
    },
    /// Ask for the server's counters.
    Stats,
    /// Present the connection's token.
    Auth {
        /// Non-empty.
        token: &'a [u8],
    },
    /// Ask for a framing for the rest of the connection: the value's first byte is
    /// [`HELLO_FIXED`] or [`HELLO_COMPACT`] (later bytes are reserved for more options and
    /// ignored). The reply (OK) carries the framing the server chose in its value's first
    /// byte; from the frame after the reply on, both directions use it.
    Hello {
        /// The framing asked for.
        framing: u8,
    },
}

/// [`Request::Hello`]: keep 4096-byte fixed frames.
pub const HELLO_FIXED: u8 = 0;
/// [`Request::Hello`]: compact frames (header, key and value, no padding).
pub const HELLO_COMPACT: u8 = 1;

impl<'a> Request<'a> {
    /// Checks a decoded frame against its command's rules.
    ///
    /// # Errors
    /// [`DecodeError::UnknownCommand`] for an undefined opcode, [`DecodeError::Continued`]
    /// for a multi-frame value, [`DecodeError::BadRequest`] naming the rule broken.
    pub fn parse(frame: &Frame<'a>) -> Result<Request<'a>, DecodeError> {
        let id = frame.id;
        let command = frame.command;
        let bad = |reason| DecodeError::BadRequest { id, command, reason };
        // Flags before the command, as PROTOCOL.md orders the checks: a CONTINUED frame is
        // UNSUPPORTED whatever its opcode.
        if frame.flags.contains(Flags::CONTINUED) {
            return Err(DecodeError::Continued { id });
        }
        if !command.is_known() {
            return Err(DecodeError::UnknownCommand { id, command: command.0 });
        }
        if frame.flags != Flags::NONE {
            return Err(bad("a request carries no REPLY or ERROR flag"));
        }
        let needs_key = matches!(command, Command::GET | Command::PUT | Command::DELETE | Command::APPEND);
        if needs_key && frame.key.is_empty() {
            return Err(bad("the key is empty"));
        }
        if !needs_key && !frame.key.is_empty() {
            return Err(bad("this command takes no key"));
        }
        if matches!(command, Command::GET | Command::DELETE | Command::STATS) && !frame.value.is_empty() {
            return Err(bad("this command takes no value"));
        }
        if !command.is_write() && frame.timestamp != 0 {
            return Err(bad("only writes take an expected version"));
        }
        let (key, value, client_id, expected_version) =
            (frame.key, frame.value, frame.param, frame.timestamp);
        Ok(match command {
            Command::PING => Request::Ping { payload: value },
            Command::GET => Request::Get { key },
            Command::PUT => Request::Put { key, value, client_id, expected_version },
            Command::DELETE => Request::Delete { key, client_id, expected_version },
            Command::APPEND => Request::Append { key, value, client_id, expected_version },
            Command::STATS => Request::Stats,
            Command::AUTH if value.is_empty() => return Err(bad("the token is empty")),
            Command::AUTH => Request::Auth { token: value },
            Command::HELLO => match value.first() {
                Some(&framing) => Request::Hello { framing },
                None => return Err(bad("HELLO needs the framing asked for")),
            },
            _ => return Err(DecodeError::UnknownCommand { id, command: command.0 }),
        })
    }

    /// The command of this request.
    pub const fn command(&self) -> Command {
        match self {
            Request::Ping { .. } => Command::PING,
            Request::Get { .. } => Command::GET,
            Request::Put { .. } => Command::PUT,
            Request::Delete { .. } => Command::DELETE,
            Request::Append { .. } => Command::APPEND,
            Request::Stats => Command::STATS,
            Request::Auth { .. } => Command::AUTH,
            Request::Hello { .. } => Command::HELLO,
        }
    }

    /// The frame that carries this request under `id`, ready to [`Frame::encode`].
    pub const fn to_frame(&self, id: u64) -> Frame<'a> {
        let (key, value, param, timestamp): (&[u8], &[u8], u64, u64) = match *self {
            Request::Ping { payload } => (&[], payload, 0, 0),
            Request::Get { key } => (key, &[], 0, 0),
            Request::Put { key, value, client_id, expected_version } => {
                (key, value, client_id, expected_version)
            }
            Request::Delete { key, client_id, expected_version } => (key, &[], client_id, expected_version),
            Request::Append { key, value, client_id, expected_version } => {
                (key, value, client_id, expected_version)
            }
            Request::Stats => (&[], &[], 0, 0),
            Request::Auth { token } => (&[], token, 0, 0),
            Request::Hello { framing } => (&[], hello_value(framing), 0, 0),
        };
        Frame { id, command: self.command(), flags: Flags::NONE, param, timestamp, key, value }
    }
}

/// Every byte value, so that [`Request::to_frame`] can stay `const` and lend a HELLO its
/// one-byte value for any framing code, including ones this version does not know.
static BYTES: [u8; 256] = {
    let mut all = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        all[i] = i as u8;
        i += 1;
    }
    all
};

/// The value of a HELLO asking for `framing`.
const fn hello_value(framing: u8) -> &'static [u8] {
    BYTES.split_at(framing as usize).1.split_at(1).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_round_trips_through_its_frame() {
        let requests = [
            Request::Ping { payload: b"hi" },
            Request::Get { key: b"k" },
            Request::Put { key: b"k", value: b"v", client_id: 9, expected_version: 4 },
            Request::Delete { key: b"k", client_id: 1, expected_version: 0 },
            Request::Append { key: b"k", value: b"more", client_id: 0, expected_version: 0 },
            Request::Stats,
            Request::Auth { token: b"secret" },
            Request::Hello { framing: HELLO_COMPACT },
            Request::Hello { framing: HELLO_FIXED },
            Request::Hello { framing: 0xEE },
        ];
        for request in requests {
            assert_eq!(Request::parse(&request.to_frame(12)), Ok(request));
        }
    }

    #[test]
    fn command_rules_are_enforced() {
        let cases: [(Frame<'_>, &str); 6] = [
            (Frame::request(1, Command::GET, b"", b""), "the key is empty"),
            (Frame::request(1, Command::GET, b"k", b"v"), "this command takes no value"),
            (Frame::request(1, Command::STATS, b"k", b""), "this command takes no key"),
            (
                Frame::request(1, Command::GET, b"k", b"").with_timestamp(3),
                "only writes take an expected version",
            ),
            (Frame::request(1, Command::AUTH, b"", b""), "the token is empty"),
            (
                Frame::reply_to(1, Command::PING, crate::Status::OK, b""),
                "a request carries no REPLY or ERROR flag",
            ),
        ];
        for (frame, reason) in cases {
            assert_eq!(
                Request::parse(&frame),
                Err(DecodeError::BadRequest { id: 1, command: frame.command, reason })
            );
        }
        let unknown = Frame::request(2, Command(0x3f), b"", b"");
        assert_eq!(Request::parse(&unknown), Err(DecodeError::UnknownCommand { id: 2, command: 0x3f }));
        let mut continued = Frame::request(3, Command::PUT, b"k", b"v");
        continued.flags = Flags::CONTINUED;
        assert_eq!(Request::parse(&continued), Err(DecodeError::Continued { id: 3 }));
    }
}
