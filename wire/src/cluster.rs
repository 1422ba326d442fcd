//! Messages between servers and the coordinator (view service), and between a primary and its
//! backups: their opcodes and the typed bodies they carry in a frame's value.
//!
//! Every message is an ordinary frame (same header, checksum and limits); only its value holds
//! a body laid out as below. Coordinator datagrams travel over UDP, one compact frame (no
//! padding) per datagram; replication messages travel over a server's client port after a
//! `REPL_HELLO` handshake, in compact framing. `PROTOCOL.md` has the byte layouts.
//!
//! Bodies are little-endian. Strings are a `u16` length and UTF-8 bytes; lists are a `u16`
//! count and their items. Decoding is total: a body that is short, has trailing bytes, or
//! breaks a limit is a [`BodyError`], never a panic.
//!
//! # Authentication
//!
//! With a cluster secret every datagram body and handshake body ends in a 32-byte MAC
//! ([`MAC_LEN`]); the body's first byte says whether it is there ([`BODY_MAC`]). This crate
//! computes nothing cryptographic: [`mac_input`] names the bytes a MAC covers and the caller
//! supplies the function (the server uses HMAC-SHA256).

use std::fmt;

use crate::Command;

/// Coordinator: a server's heartbeat; the reply (REPLY flag) carries the view.
pub const HEARTBEAT: Command = Command(0x80);
/// Coordinator: a client or tool asks for the current view; the reply carries it.
pub const GET_VIEW: Command = Command(0x81);

/// Replication handshake, primary to backup (a fixed 4096-byte frame: the connection is still
/// a client connection until the backup accepts); the reply comes back with the REPLY flag.
pub const REPL_HELLO: Command = Command(0x40);
/// The next log record: a value. `id` = request id, `param` = client id, `timestamp` = version.
pub const REPL_PUT: Command = Command(0x41);
/// The next log record: a tombstone. Fields as [`REPL_PUT`], no value.
pub const REPL_DELETE: Command = Command(0x42);
/// The next record has LSN `id` and was written in term `timestamp`.
pub const REPL_POSITION: Command = Command(0x43);
/// Lease beacon: `id` = the primary's clock when sent (µs), `param` = its commit LSN.
pub const REPL_BEACON: Command = Command(0x44);
/// Backup to primary: `id` = LSN applied (and durable, as the durability mode requires),
/// `timestamp` = the newest beacon time granted (0 = none).
pub const REPL_ACK: Command = Command(0x45);
/// A snapshot follows, complete up to LSN `id`; the value is the term history.
pub const REPL_SNAPSHOT_BEGIN: Command = Command(0x46);
/// One live record of the snapshot: `id` = its LSN, `timestamp` = version.
pub const REPL_SNAPSHOT_PUT: Command = Command(0x47);
/// At-most-once table entries of the snapshot (packed, [`ClientEntry`]).
pub const REPL_SNAPSHOT_CLIENTS: Command = Command(0x48);
/// End of the snapshot (complete up to LSN `id`); log records from `id + 1` follow.
pub const REPL_SNAPSHOT_END: Command = Command(0x49);
/// MAC over the frames sent since the previous one (only with a cluster secret).
pub const REPL_MAC: Command = Command(0x4A);

/// The name of a cluster opcode, for logs.
pub const fn command_name(command: Command) -> Option<&'static str> {
    Some(match command {
        HEARTBEAT => "HEARTBEAT",
        GET_VIEW => "GET_VIEW",
        REPL_HELLO => "REPL_HELLO",
        REPL_PUT => "REPL_PUT",
        REPL_DELETE => "REPL_DELETE",
        REPL_POSITION => "REPL_POSITION",
        REPL_BEACON => "REPL_BEACON",
        REPL_ACK => "REPL_ACK",
        REPL_SNAPSHOT_BEGIN => "REPL_SNAPSHOT_BEGIN",
        REPL_SNAPSHOT_PUT => "REPL_SNAPSHOT_PUT",
        REPL_SNAPSHOT_CLIENTS => "REPL_SNAPSHOT_CLIENTS",
        REPL_SNAPSHOT_END => "REPL_SNAPSHOT_END",
        REPL_MAC => "REPL_MAC",
        _ => return None,
    })
}

/// Bytes of a MAC trailer.
pub const MAC_LEN: usize = 32;
/// Body flag (first byte): a MAC trailer ends the body.
pub const BODY_MAC: u8 = 1;
/// Longest server id.
pub const MAX_ID_LEN: usize = 64;
/// Longest address string.
pub const MAX_ADDR_LEN: usize = 255;
/// Longest "waiting" reason.
pub const MAX_REASON_LEN: usize = 1024;
/// Most members listed in a view, learners in a heartbeat, and so on.
pub const MAX_LIST: usize = 16;

/// Why a body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The body ended before a field did.
    Short {
        /// What was being read.
        field: &'static str,
    },
    /// Bytes were left after the last field.
    Trailing {
        /// How many.
        len: usize,
    },
    /// A field broke its limit or is not valid (e.g. a string that is not UTF-8).
    Invalid {
        /// Which field.
        field: &'static str,
    },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Short { field } => write!(f, "body ends inside field {field}"),
            BodyError::Trailing { len } => write!(f, "{len} unexpected bytes after the body"),
            BodyError::Invalid { field } => write!(f, "invalid field {field}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Appends little-endian fields to a body.
#[derive(Debug, Default)]
pub struct BodyWriter {
    buf: Vec<u8>,
}

impl BodyWriter {
    /// An empty body.
    pub fn new() -> Self {
        BodyWriter { buf: Vec::with_capacity(256) }
    }
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a string, cut to `u16::MAX` bytes (callers keep to the documented limits).
    pub fn str(&mut self, s: &str) -> &mut Self {
        let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        self.buf.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// The body so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
    /// The finished body.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads little-endian fields from a body, failing cleanly at its end.
#[derive(Debug, Clone)]
pub struct BodyReader<'a> {
    rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    /// Reads `body` from its start.
    pub fn new(body: &'a [u8]) -> Self {
        BodyReader { rest: body }
    }
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], BodyError> {
        if self.rest.len() < n {
            return Err(BodyError::Short { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    /// Reads a byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, BodyError> {
        Ok(self.take(1, field)?[0])
    }
    /// Reads a `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, BodyError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// Reads a `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, BodyError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_le_bytes(a))
    }
    /// Reads a `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, BodyError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(a))
    }
    /// Reads a string of at most `max` bytes.
    pub fn str(&mut self, field: &'static str, max: usize) -> Result<&'a str, BodyError> {
        let len = self.u16(field)? as usize;
        if len > max {
            return Err(BodyError::Invalid { field });
        }
        std::str::from_utf8(self.take(len, field)?).map_err(|_| BodyError::Invalid { field })
    }
    /// Reads a list count of at most `max`.
    pub fn count(&mut self, field: &'static str, max: usize) -> Result<usize, BodyError> {
        let n = self.u16(field)? as usize;
        if n > max {
            return Err(BodyError::Invalid { field });
        }
        Ok(n)
    }
    /// Reads `n` raw bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], BodyError> {
        self.take(n, field)
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
    /// Fails if anything is left.
    pub fn finish(self) -> Result<(), BodyError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(BodyError::Trailing { len: self.rest.len() })
        }
    }
}

/// Splits a body into its fields and its MAC trailer, as its first byte announces.
///
/// # Errors
/// [`BodyError`] if the body is empty or shorter than the trailer it announces.
pub fn split_mac(body: &[u8]) -> Result<(&[u8], Option<&[u8; MAC_LEN]>), BodyError> {
    let flags = *body.first().ok_or(BodyError::Short { field: "flags" })?;
    if flags & BODY_MAC == 0 {
        return Ok((body, None));
    }
    if body.len() < 1 + MAC_LEN {
        return Err(BodyError::Short { field: "mac" });
    }
    let (fields, mac) = body.split_at(body.len() - MAC_LEN);
    Ok((fields, mac.try_into().ok()))
}

/// The bytes a MAC covers: the encoded frame from its `id` field (offset 8, after magic,
/// version and checksum) to the end of the value, minus the trailer itself. The checksum is
/// left out because it covers the trailer.
pub fn mac_input(encoded_frame: &[u8]) -> &[u8] {
    let start = crate::header::CRC_START.min(encoded_frame.len());
    let end = encoded_frame.len().saturating_sub(MAC_LEN).max(start);
    &encoded_frame[start..end]
}

/// A server as a view lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// Its stable id (`--id`).
    pub id: String,
    /// The address clients and peers dial (`--advertise`).
    pub addr: String,
    /// Which run of the process it was when the coordinator recorded it.
    pub incarnation: u64,
    /// Which copy of the data it held then (changes when its data directory starts over).
    pub data_id: u64,
}

impl Member {
    fn write(&self, w: &mut BodyWriter) {
        w.str(&self.id).str(&self.addr).u64(self.incarnation).u64(self.data_id);
    }
    fn read(r: &mut BodyReader<'_>) -> Result<Member, BodyError> {
        Ok(Member {
            id: r.str("member.id", MAX_ID_LEN)?.to_string(),
            addr: r.str("member.addr", MAX_ADDR_LEN)?.to_string(),
            incarnation: r.u64("member.incarnation")?,
            data_id: r.u64("member.data_id")?,
        })
    }
}

fn write_members(w: &mut BodyWriter, members: &[Member]) {
    let n = members.len().min(MAX_LIST);
    w.bytes(&(n as u16).to_le_bytes());
    for m in &members[..n] {
        m.write(w);
    }
}

fn read_members(r: &mut BodyReader<'_>, field: &'static str) -> Result<Vec<Member>, BodyError> {
    let n = r.count(field, MAX_LIST)?;
    (0..n).map(|_| Member::read(r)).collect()
}

/// One replica group's view, as the coordinator decided it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// The replica group (0 until partitioning arrives).
    pub group: u32,
    /// View number; 0 = no view yet. Views are numbered upward.
    pub num: u64,
    /// The view in which the current primary took office: the term its writes carry.
    pub term: u64,
    /// The primary, if there is one.
    pub primary: Option<Member>,
    /// The backups: each held every acknowledged write when it joined.
    pub backups: Vec<Member>,
    /// Servers the primary should bring up to date so they can join (not members).
    pub candidates: Vec<Member>,
    /// Why the service is waiting, when it is (empty otherwise).
    pub waiting: String,
}

impl View {
    /// Whether `id` is the primary or a backup.
    pub fn is_member(&self, id: &str) -> bool {
        self.primary.as_ref().is_some_and(|p| p.id == id) || self.backups.iter().any(|b| b.id == id)
    }

    /// The primary's id, if any.
    pub fn primary_id(&self) -> Option<&str> {
        self.primary.as_ref().map(|p| p.id.as_str())
    }

    /// Encodes the body (flags byte first; the caller appends a MAC if it sets [`BODY_MAC`]).
    pub fn encode(&self, flags: u8) -> BodyWriter {
        let mut w = BodyWriter::new();
        w.u8(flags).u32(self.group).u64(self.num).u64(self.term);
        match &self.primary {
            Some(p) => {
                w.u8(1);
                p.write(&mut w);
            }
            None => {
                w.u8(0);
            }
        }
        write_members(&mut w, &self.backups);
        write_members(&mut w, &self.candidates);
        let reason = &self.waiting[..floor_char_boundary(&self.waiting, MAX_REASON_LEN)];
        w.str(reason);
        w
    }

    /// Decodes a body (without its MAC trailer; see [`split_mac`]).
    ///
    /// # Errors
    /// [`BodyError`] for a short, long or invalid body.
    pub fn decode(body: &[u8]) -> Result<View, BodyError> {
        let mut r = BodyReader::new(body);
        let _flags = r.u8("flags")?;
        let group = r.u32("group")?;
        let num = r.u64("view")?;
        let term = r.u64("term")?;
        let primary = match r.u8("has_primary")? {
            0 => None,
            1 => Some(Member::read(&mut r)?),
            _ => return Err(BodyError::Invalid { field: "has_primary" }),
        };
        let backups = read_members(&mut r, "backups")?;
        let candidates = read_members(&mut r, "candidates")?;
        let waiting = r.str("waiting", MAX_REASON_LEN)?.to_string();
        r.finish()?;
        Ok(View { group, num, term, primary, backups, candidates, waiting })
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// What a server says it is doing, in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Not in the view and not being brought up to date.
    #[default]
    Idle = 0,
    /// Receiving state from the primary, not yet a member.
    Learner = 1,
    /// A backup of the view.
    Backup = 2,
    /// The primary.
    Primary = 3,
}

impl Role {
    fn from_u8(v: u8) -> Option<Role> {
        Some(match v {
            0 => Role::Idle,
            1 => Role::Learner,
            2 => Role::Backup,
            3 => Role::Primary,
            _ => return None,
        })
    }

    /// Lower-case name, as STATS and the CLI print it.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Idle => "idle",
            Role::Learner => "learner",
            Role::Backup => "backup",
            Role::Primary => "primary",
        }
    }
}

/// Heartbeat flag: a backup has heard nothing from its primary for the grace period.
pub const HB_PRIMARY_SILENT: u8 = 1;
/// Heartbeat flag: the primary holds a valid lease and serves.
pub const HB_SERVING: u8 = 2;
/// Heartbeat flag: the server's data is incomplete (a snapshot install was interrupted or is
/// under way); it holds nothing a view may count on.
pub const HB_INSTALLING: u8 = 4;

/// A learner the primary has brought up to date and now waits for on every write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Synced {
    /// Its id.
    pub id: String,
    /// Its incarnation when it synced.
    pub incarnation: u64,
    /// Its data id when it synced.
    pub data_id: u64,
}

/// A server's heartbeat to the coordinator. The frame's key is the server id and its `id` is a
/// sequence number that increases for every datagram the server sends (it starts from the
/// wall clock in microseconds, so it keeps increasing across restarts): the coordinator drops
/// anything not newer than what it has seen, so a captured heartbeat cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// The replica group.
    pub group: u32,
    /// The server's id (the frame's key).
    pub id: String,
    /// The address clients and peers dial.
    pub addr: String,
    /// Which run of the process this is; a new one means the server restarted.
    pub incarnation: u64,
    /// The view number the server knows (0 = none).
    pub view: u64,
    /// What it is doing.
    pub role: Role,
    /// Which copy of the data it holds.
    pub data_id: u64,
    /// Its last LSN.
    pub last_lsn: u64,
    /// The term of its last record.
    pub last_term: u64,
    /// The primary's commit LSN (0 from others).
    pub committed_lsn: u64,
    /// `HB_*` flags.
    pub flags: u8,
    /// Primary only: learners brought up to date, which it now waits for on every write.
    pub synced: Vec<Synced>,
    /// Primary only: members it has not heard from for the grace period.
    pub unreachable: Vec<String>,
}

impl Heartbeat {
    /// Encodes the body (the id goes in the frame's key).
    pub fn encode(&self, flags: u8) -> BodyWriter {
        let mut w = BodyWriter::new();
        w.u8(flags)
            .u32(self.group)
            .str(&self.addr)
            .u64(self.incarnation)
            .u64(self.view)
            .u8(self.role as u8)
            .u64(self.data_id)
            .u64(self.last_lsn)
            .u64(self.last_term)
            .u64(self.committed_lsn)
            .u8(self.flags);
        let n = self.synced.len().min(MAX_LIST);
        w.bytes(&(n as u16).to_le_bytes());
        for s in &self.synced[..n] {
            w.str(&s.id).u64(s.incarnation).u64(s.data_id);
        }
        let n = self.unreachable.len().min(MAX_LIST);
        w.bytes(&(n as u16).to_le_bytes());
        for id in &self.unreachable[..n] {
            w.str(id);
        }
        w
    }

    /// Decodes a body (without its MAC trailer); `id` is the frame's key.
    ///
    /// # Errors
    /// [`BodyError`] for a short, long or invalid body, or an id that is empty, too long or
    /// not UTF-8.
    pub fn decode(id: &[u8], body: &[u8]) -> Result<Heartbeat, BodyError> {
        let id = std::str::from_utf8(id)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
            .ok_or(BodyError::Invalid { field: "id" })?;
        let mut r = BodyReader::new(body);
        let _flags = r.u8("flags")?;
        let mut hb = Heartbeat {
            group: r.u32("group")?,
            id: id.to_string(),
            addr: r.str("addr", MAX_ADDR_LEN)?.to_string(),
            incarnation: r.u64("incarnation")?,
            view: r.u64("view")?,
            role: Role::from_u8(r.u8("role")?).ok_or(BodyError::Invalid { field: "role" })?,
            data_id: r.u64("data_id")?,
            last_lsn: r.u64("last_lsn")?,
            last_term: r.u64("last_term")?,
            committed_lsn: r.u64("committed_lsn")?,
            flags: r.u8("hb_flags")?,
            synced: Vec::new(),
            unreachable: Vec::new(),
        };
        for _ in 0..r.count("synced", MAX_LIST)? {
            hb.synced.push(Synced {
                id: r.str("synced.id", MAX_ID_LEN)?.to_string(),
                incarnation: r.u64("synced.incarnation")?,
                data_id: r.u64("synced.data_id")?,
            });
        }
        for _ in 0..r.count("unreachable", MAX_LIST)? {
            hb.unreachable.push(r.str("unreachable.id", MAX_ID_LEN)?.to_string());
        }
        r.finish()?;
        Ok(hb)
    }
}

/// The replication handshake a primary sends a backup or learner (`REPL_HELLO`; the frame's
/// key is the primary's id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// The replica group.
    pub group: u32,
    /// The view the primary serves in, as it knows it.
    pub view: View,
    /// The primary's incarnation.
    pub incarnation: u64,
    /// Largest key and value the primary accepts: a backup with smaller limits refuses.
    pub max_key_len: u32,
    /// See `max_key_len`.
    pub max_value_len: u32,
    /// Fresh random number, for the connection's MAC key.
    pub nonce: u64,
}

impl Hello {
    /// Encodes the body.
    pub fn encode(&self, flags: u8) -> BodyWriter {
        let mut w = BodyWriter::new();
        w.u8(flags).u32(self.group).u64(self.incarnation).u32(self.max_key_len).u32(self.max_value_len);
        w.u64(self.nonce);
        let view = self.view.encode(0);
        w.bytes(&(view.as_slice().len() as u16).to_le_bytes()).bytes(view.as_slice());
        w
    }

    /// Decodes a body (without its MAC trailer).
    ///
    /// # Errors
    /// [`BodyError`].
    pub fn decode(body: &[u8]) -> Result<Hello, BodyError> {
        let mut r = BodyReader::new(body);
        let _flags = r.u8("flags")?;
        let group = r.u32("group")?;
        let incarnation = r.u64("incarnation")?;
        let max_key_len = r.u32("max_key_len")?;
        let max_value_len = r.u32("max_value_len")?;
        let nonce = r.u64("nonce")?;
        let len = r.u16("view_len")? as usize;
        let view = View::decode(r.bytes(len, "view")?)?;
        r.finish()?;
        Ok(Hello { group, view, incarnation, max_key_len, max_value_len, nonce })
    }
}

/// A backup's answer to [`Hello`] (the frame's key is the backup's id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HelloReply {
    /// The replica group.
    pub group: u32,
    /// Its incarnation.
    pub incarnation: u64,
    /// Which copy of the data it holds.
    pub data_id: u64,
    /// Its last LSN.
    pub last_lsn: u64,
    /// The term of its last record.
    pub last_term: u64,
    /// Its data is incomplete (an interrupted snapshot install): it needs a snapshot.
    pub installing: bool,
    /// The newest view it knows (on a refusal: why).
    pub view: u64,
    /// Fresh random number, for the connection's MAC key.
    pub nonce: u64,
}

impl HelloReply {
    /// Encodes the body.
    pub fn encode(&self, flags: u8) -> BodyWriter {
        let mut w = BodyWriter::new();
        w.u8(flags)
            .u32(self.group)
            .u64(self.incarnation)
            .u64(self.data_id)
            .u64(self.last_lsn)
            .u64(self.last_term)
            .u8(self.installing as u8)
            .u64(self.view)
            .u64(self.nonce);
        w
    }

    /// Decodes a body (without its MAC trailer).
    ///
    /// # Errors
    /// [`BodyError`].
    pub fn decode(body: &[u8]) -> Result<HelloReply, BodyError> {
        let mut r = BodyReader::new(body);
        let _flags = r.u8("flags")?;
        let reply = HelloReply {
            group: r.u32("group")?,
            incarnation: r.u64("incarnation")?,
            data_id: r.u64("data_id")?,
            last_lsn: r.u64("last_lsn")?,
            last_term: r.u64("last_term")?,
            installing: match r.u8("installing")? {
                0 => false,
                1 => true,
                _ => return Err(BodyError::Invalid { field: "installing" }),
            },
            view: r.u64("view")?,
            nonce: r.u64("nonce")?,
        };
        r.finish()?;
        Ok(reply)
    }
}

/// One entry of the at-most-once table in a snapshot: a client's newest write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientEntry {
    /// The client id.
    pub client_id: u64,
    /// Its newest request id.
    pub request_id: u64,
    /// The LSN of that write's record.
    pub lsn: u64,
    /// The version it produced.
    pub version: u64,
}

/// Bytes of one packed [`ClientEntry`].
pub const CLIENT_ENTRY_LEN: usize = 32;
/// Entries that fit in one `REPL_SNAPSHOT_CLIENTS` frame.
pub const CLIENT_ENTRIES_PER_FRAME: usize = crate::MAX_PAYLOAD_LEN / CLIENT_ENTRY_LEN;

impl ClientEntry {
    /// Appends the packed entry.
    pub fn write(&self, out: &mut Vec<u8>) {
        for v in [self.client_id, self.request_id, self.lsn, self.version] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Unpacks a frame's worth of entries.
    ///
    /// # Errors
    /// [`BodyError::Trailing`] if the length is not a multiple of the entry size.
    pub fn read_all(body: &[u8]) -> Result<Vec<ClientEntry>, BodyError> {
        if body.len() % CLIENT_ENTRY_LEN != 0 {
            return Err(BodyError::Trailing { len: body.len() % CLIENT_ENTRY_LEN });
        }
        let mut out = Vec::with_capacity(body.len() / CLIENT_ENTRY_LEN);
        for chunk in body.chunks_exact(CLIENT_ENTRY_LEN) {
            let mut r = BodyReader::new(chunk);
            out.push(ClientEntry {
                client_id: r.u64("client_id")?,
                request_id: r.u64("request_id")?,
                lsn: r.u64("lsn")?,
                version: r.u64("version")?,
            });
        }
        Ok(out)
    }
}

/// Packs a term history (pairs of term and first LSN) for `REPL_SNAPSHOT_BEGIN`, keeping the
/// newest entries that fit in a frame.
pub fn encode_terms(terms: &[(u64, u64)], out: &mut Vec<u8>) {
    let fit = crate::MAX_PAYLOAD_LEN / 16;
    let skip = terms.len().saturating_sub(fit);
    for &(term, start) in &terms[skip..] {
        out.extend_from_slice(&term.to_le_bytes());
        out.extend_from_slice(&start.to_le_bytes());
    }
}

/// Unpacks a term history; terms and start LSNs must not decrease.
///
/// # Errors
/// [`BodyError`] for a bad length or an out-of-order history.
pub fn decode_terms(body: &[u8]) -> Result<Vec<(u64, u64)>, BodyError> {
    if body.len() % 16 != 0 {
        return Err(BodyError::Trailing { len: body.len() % 16 });
    }
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(body.len() / 16);
    for chunk in body.chunks_exact(16) {
        let mut r = BodyReader::new(chunk);
        let entry = (r.u64("term")?, r.u64("start")?);
        if out.last().is_some_and(|&(t, s)| entry.0 <= t || entry.1 < s) {
            return Err(BodyError::Invalid { field: "terms" });
        }
        out.push(entry);
    }
    Ok(out)
}

/// Appends a `GET_VIEW` request for `group` with request id `id` (one compact frame: send it
/// as one datagram to the coordinator).
pub fn encode_get_view(id: u64, group: u32, out: &mut Vec<u8>) {
    let frame = crate::Frame { param: u64::from(group), ..crate::Frame::request(id, GET_VIEW, b"", b"") };
    // A request with no key and no value is always within the limits.
    let _ = frame.encode_compact_to(out);
}

/// Why a datagram is not a view reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewReplyError {
    /// Not one valid compact frame.
    Frame(crate::DecodeError),
    /// A frame, but not an OK reply to `GET_VIEW` or `HEARTBEAT`.
    NotAReply,
    /// The view in it is malformed.
    Body(BodyError),
}

impl fmt::Display for ViewReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViewReplyError::Frame(e) => write!(f, "not a frame: {e}"),
            ViewReplyError::NotAReply => f.write_str("not an OK view reply"),
            ViewReplyError::Body(e) => write!(f, "bad view: {e}"),
        }
    }
}

impl std::error::Error for ViewReplyError {}

/// Decodes a coordinator's reply datagram: its id and the view. A MAC, if present, is not
/// checked here (clients hold no secret; servers check it themselves).
///
/// # Errors
/// [`ViewReplyError`].
pub fn decode_view_reply(datagram: &[u8]) -> Result<(u64, View), ViewReplyError> {
    let (frame, used) = crate::Frame::decode_compact(datagram)
        .map_err(ViewReplyError::Frame)?
        .ok_or(ViewReplyError::NotAReply)?;
    if used != datagram.len()
        || !frame.is_reply()
        || frame.status() != crate::Status::OK
        || !matches!(frame.command, GET_VIEW | HEARTBEAT)
    {
        return Err(ViewReplyError::NotAReply);
    }
    let (fields, _mac) = split_mac(frame.value).map_err(ViewReplyError::Body)?;
    Ok((frame.id, View::decode(fields).map_err(ViewReplyError::Body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member { id: id.into(), addr: format!("127.0.0.1:70{}", id.len()), incarnation: 7, data_id: 9 }
    }

    #[test]
    fn get_view_replies_decode() {
        let mut req = Vec::new();
        encode_get_view(5, 0, &mut req);
        let (frame, _) = crate::Frame::decode_compact(&req).unwrap().unwrap();
        assert_eq!((frame.id, frame.command), (5, GET_VIEW));
        let view = View { num: 3, primary: Some(member("s1")), ..View::default() };
        let body = view.encode(0).into_vec();
        let mut reply = Vec::new();
        crate::Frame::reply_to(5, GET_VIEW, crate::Status::OK, &body).encode_compact_to(&mut reply).unwrap();
        assert_eq!(decode_view_reply(&reply), Ok((5, view)));
        assert_eq!(decode_view_reply(&req), Err(ViewReplyError::NotAReply));
        assert!(decode_view_reply(&reply[..10]).is_err());
    }

    #[test]
    fn view_round_trips() {
        let view = View {
            group: 0,
            num: 12,
            term: 11,
            primary: Some(member("s1")),
            backups: vec![member("s2"), member("s3")],
            candidates: vec![member("s4")],
            waiting: "waiting for s1 to acknowledge view 12".into(),
        };
        assert_eq!(View::decode(view.encode(0).as_slice()), Ok(view.clone()));
        let empty = View::default();
        assert_eq!(View::decode(empty.encode(0).as_slice()), Ok(empty));
        let body = view.encode(0).into_vec();
        for cut in 0..body.len() {
            assert!(View::decode(&body[..cut]).is_err(), "a cut at {cut} decoded");
        }
        let mut long = body.clone();
        long.push(0);
        assert_eq!(View::decode(&long), Err(BodyError::Trailing { len: 1 }));
    }

    #[test]
    fn heartbeat_round_trips() {
        let hb = Heartbeat {
            group: 0,
            id: "s1".into(),
            addr: "127.0.0.1:7071".into(),
            incarnation: 1_700_000_000_000_000,
            view: 3,
            role: Role::Primary,
            data_id: 42,
            last_lsn: 1000,
            last_term: 3,
            committed_lsn: 998,
            flags: HB_SERVING,
            synced: vec![Synced { id: "s4".into(), incarnation: 5, data_id: 6 }],
            unreachable: vec!["s2".into()],
        };
        let body = hb.encode(0).into_vec();
        assert_eq!(Heartbeat::decode(b"s1", &body), Ok(hb));
        assert!(Heartbeat::decode(b"", &body).is_err());
        assert!(Heartbeat::decode(&[0xff], &body).is_err());
    }

    #[test]
    fn hello_and_reply_round_trip() {
        let hello = Hello {
            group: 0,
            view: View { num: 4, term: 4, primary: Some(member("s1")), ..View::default() },
            incarnation: 3,
            max_key_len: 1024,
            max_value_len: 4048,
            nonce: 77,
        };
        assert_eq!(Hello::decode(hello.encode(0).as_slice()), Ok(hello));
        let reply = HelloReply {
            group: 0,
            incarnation: 1,
            data_id: 2,
            last_lsn: 3,
            last_term: 4,
            installing: true,
            view: 5,
            nonce: 6,
        };
        assert_eq!(HelloReply::decode(reply.encode(0).as_slice()), Ok(reply));
    }

    #[test]
    fn mac_trailer_is_split_off_when_announced() {
        let mut body = View::default().encode(BODY_MAC).into_vec();
        body.extend_from_slice(&[0xAB; MAC_LEN]);
        let (fields, mac) = split_mac(&body).unwrap();
        assert_eq!(mac, Some(&[0xAB; MAC_LEN]));
        assert!(View::decode(fields).is_ok());
        let plain = View::default().encode(0).into_vec();
        assert_eq!(split_mac(&plain).unwrap(), (&plain[..], None));
        assert!(split_mac(&[BODY_MAC, 1, 2]).is_err());
    }

    #[test]
    fn terms_and_client_entries_round_trip() {
        let terms = vec![(1, 1), (4, 100), (9, 100), (12, 250)];
        let mut out = Vec::new();
        encode_terms(&terms, &mut out);
        assert_eq!(decode_terms(&out), Ok(terms));
        assert!(decode_terms(&out[..15]).is_err());
        let mut bad = Vec::new();
        encode_terms(&[(4, 100), (3, 120)], &mut bad);
        assert!(decode_terms(&bad).is_err(), "terms must increase");
        let entries = vec![ClientEntry { client_id: 1, request_id: 2, lsn: 3, version: 3 }; 3];
        let mut packed = Vec::new();
        for e in &entries {
            e.write(&mut packed);
        }
        assert_eq!(ClientEntry::read_all(&packed), Ok(entries));
        assert_eq!(CLIENT_ENTRIES_PER_FRAME, 126);
    }
}
