//! The codes that fill a header: commands (opcodes), flags and reply statuses.
//!
//! Commands and statuses are open newtypes rather than closed enums: a frame carrying a code
//! this crate does not know still decodes, so a receiver can answer it with its own id, and
//! a newer peer can add codes without breaking the framing. [`crate::Request::parse`] is
//! where an unknown command becomes an error.

use std::fmt;

/// A command code (the header's `command` field).
///
/// Ranges: `0x01..=0x3F` client API, `0x40..=0x7F` replication between servers,
/// `0x80..=0xBF` coordinator (view service) messages, `0xC0..=0xFF` cluster administration.
/// Zero and everything above `0xFF` are never assigned.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Command(pub u32);

impl Command {
    /// Liveness check; the value, if any, is echoed back.
    pub const PING: Command = Command(0x01);
    /// Read a key.
    pub const GET: Command = Command(0x02);
    /// Write a key.
    pub const PUT: Command = Command(0x03);
    /// Remove a key.
    pub const DELETE: Command = Command(0x04);
    /// Append bytes to a key's value, creating it if absent.
    pub const APPEND: Command = Command(0x05);
    /// Server counters as `name:value` lines.
    pub const STATS: Command = Command(0x06);
    /// Present the connection's token; required first when the server has one.
    pub const AUTH: Command = Command(0x07);
    /// Negotiate how the rest of the connection is framed (see [`crate::Request::Hello`]).
    pub const HELLO: Command = Command(0x08);

    /// First code of the range reserved for primary/backup replication messages.
    pub const REPLICATION_FIRST: u32 = 0x40;
    /// First code of the range reserved for coordinator (view service) messages.
    pub const COORDINATOR_FIRST: u32 = 0x80;
    /// First code of the range reserved for cluster administration.
    pub const ADMIN_FIRST: u32 = 0xC0;

    /// Every client command this version of the protocol defines.
    pub const CLIENT: [Command; 8] = [
        Command::PING,
        Command::GET,
        Command::PUT,
        Command::DELETE,
        Command::APPEND,
        Command::STATS,
        Command::AUTH,
        Command::HELLO,
    ];

    /// The command's name, or `None` for a code this version does not define.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Command::PING => "PING",
            Command::GET => "GET",
            Command::PUT => "PUT",
            Command::DELETE => "DELETE",
            Command::APPEND => "APPEND",
            Command::STATS => "STATS",
            Command::AUTH => "AUTH",
            Command::HELLO => "HELLO",
            _ => return None,
        })
    }

    /// Whether this version of the protocol defines the code.
    pub const fn is_known(self) -> bool {
        self.name().is_some()
    }

    /// Whether the command changes data (and so goes to storage and, later, to backups).
    pub const fn is_write(self) -> bool {
        matches!(self, Command::PUT | Command::DELETE | Command::APPEND)
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name().or_else(|| crate::cluster::command_name(*self)) {
            Some(name) => f.write_str(name),
            None => write!(f, "Command({:#x})", self.0),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The header's `flags` bit set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u32);

impl Flags {
    /// No flags: a request.
    pub const NONE: Flags = Flags(0);
    /// The frame answers a request; `param` holds a [`Status`].
    pub const REPLY: Flags = Flags(1 << 0);
    /// Set on replies whose status is an error (anything but `OK` and `NOT_FOUND`).
    pub const ERROR: Flags = Flags(1 << 1);
    /// Reserved for values continued in following frames. Version 1 receivers answer a
    /// frame carrying it with `UNSUPPORTED`.
    pub const CONTINUED: Flags = Flags(1 << 2);
    /// Bits that must be zero in version 1; a frame with any of them set is refused.
    pub const RESERVED: Flags = Flags(!0b111);

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (bit, name) in [(Flags::REPLY, "REPLY"), (Flags::ERROR, "ERROR"), (Flags::CONTINUED, "CONTINUED")]
        {
            if self.contains(bit) {
                f.write_str(if first { "" } else { "|" })?;
                f.write_str(name)?;
                first = false;
            }
        }
        let rest = self.0 & Flags::RESERVED.0;
        if rest != 0 {
            write!(f, "{}{rest:#x}", if first { "" } else { "|" })?;
        } else if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}

/// A reply's outcome, carried in the `param` field of every reply.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(pub u64);

impl Status {
    /// Done; for GET the value follows, for writes `timestamp` is the new version.
    pub const OK: Status = Status(0);
    /// The key does not exist.
    pub const NOT_FOUND: Status = Status(1);
    /// The request breaks a rule of its command; the value holds the reason (UTF-8).
    pub const BAD_REQUEST: Status = Status(2);
    /// The key or the resulting value would not fit in a frame.
    pub const TOO_LARGE: Status = Status(3);
    /// The command code is not one this server knows.
    pub const UNKNOWN_COMMAND: Status = Status(4);
    /// The frame's checksum did not match; nothing was executed.
    pub const BAD_CHECKSUM: Status = Status(5);
    /// The header's lengths or flags are invalid; nothing was executed.
    pub const BAD_FRAME: Status = Status(6);
    /// AUTH is required first, or the token was wrong.
    pub const UNAUTHORIZED: Status = Status(7);
    /// This server does not serve the key; the value holds the address of one that does
    /// (`host:port`), or is empty when unknown.
    pub const WRONG_SERVER: Status = Status(8);
    /// The server cannot serve the request now (e.g. no backup caught up); retry later.
    pub const UNAVAILABLE: Status = Status(9);
    /// A conditional write's expected version did not match; `timestamp` holds the current one.
    pub const CONFLICT: Status = Status(10);
    /// The server's storage failed (full disk, I/O error); the value holds the reason.
    pub const STORAGE_ERROR: Status = Status(11);
    /// The server has too many connections; it closes this one.
    pub const BUSY: Status = Status(12);
    /// The frame uses a feature this server does not implement (e.g. `CONTINUED`).
    pub const UNSUPPORTED: Status = Status(13);
    /// The server hit an unexpected internal error; the value holds the reason.
    pub const INTERNAL: Status = Status(14);

    /// The status's name, or `None` for a code this version does not define.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Status::OK => "OK",
            Status::NOT_FOUND => "NOT_FOUND",
            Status::BAD_REQUEST => "BAD_REQUEST",
            Status::TOO_LARGE => "TOO_LARGE",
            Status::UNKNOWN_COMMAND => "UNKNOWN_COMMAND",
            Status::BAD_CHECKSUM => "BAD_CHECKSUM",
            Status::BAD_FRAME => "BAD_FRAME",
            Status::UNAUTHORIZED => "UNAUTHORIZED",
            Status::WRONG_SERVER => "WRONG_SERVER",
            Status::UNAVAILABLE => "UNAVAILABLE",
            Status::CONFLICT => "CONFLICT",
            Status::STORAGE_ERROR => "STORAGE_ERROR",
            Status::BUSY => "BUSY",
            Status::UNSUPPORTED => "UNSUPPORTED",
            Status::INTERNAL => "INTERNAL",
            _ => return None,
        })
    }

    /// Whether a reply with this status carries the `ERROR` flag.
    pub const fn is_error(self) -> bool {
        !matches!(self, Status::OK | Status::NOT_FOUND)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Status({})", self.0),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
