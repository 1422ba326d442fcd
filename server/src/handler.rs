//! Request → storage → reply, as methods of [`Node`]. Knows frames, the store and whether
//! this server may serve; nothing about sockets.

use std::fmt::Write as _;

use storage::{StorageError, WriteMeta};
use wire::{
    Command, DecodeError, Frame, FrameCrc, Framing, Request, Status, FRAME_LEN, HELLO_COMPACT, HELLO_FIXED,
};

pub use crate::node::Node;
use crate::replica::NotServing;
use crate::time::Time;

/// Per-connection protocol state the handler needs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Session {
    /// Whether the connection has presented the right token (always true without a token).
    pub authenticated: bool,
    /// How the connection's frames are laid out, both ways; HELLO changes it from the next
    /// frame on.
    pub framing: Framing,
}

/// Reply frames being built for one connection, back to back, in the framing the connection
/// spoke when each reply's request arrived.
#[derive(Debug, Default)]
pub struct Replies {
    /// The encoded replies.
    pub buf: Vec<u8>,
    /// The framing the next reply is encoded in (the handler sets it per request).
    pub framing: Framing,
}

impl Replies {
    /// Appends one encoded frame. Replies are built from validated parts, so encoding cannot
    /// fail; if it ever did, the reply is replaced by an INTERNAL error rather than dropped,
    /// so the client's reply count stays right.
    #[inline]
    fn push(&mut self, frame: Frame<'_>) {
        let encoded = match self.framing {
            Framing::Fixed => {
                self.buf.reserve(FRAME_LEN);
                frame.encode_to(&mut self.buf)
            }
            Framing::Compact => frame.encode_compact_to(&mut self.buf),
        };
        if let Err(e) = encoded {
            log::error!("could not encode reply to frame {}: {e}", frame.id);
            let fallback =
                Frame::reply_to(frame.id, frame.command, Status::INTERNAL, b"reply encoding failed");
            let _ = match self.framing {
                Framing::Fixed => fallback.encode_to(&mut self.buf),
                Framing::Compact => fallback.encode_compact_to(&mut self.buf),
            };
        }
    }
}

/// What the connection should do after a frame's reply is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Go on with the next frame.
    Continue,
    /// Send what is queued, then close: the stream cannot be trusted, or auth failed.
    Close,
}

/// What the connection should do after a frame, and which LSN its reply waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameOutcome {
    /// Go on, or close after the replies queued so far.
    pub disposition: Disposition,
    /// The reply may leave only once [`Node::committed`] reaches this (0: at once). A reply
    /// that shows data (a read, a write's version, NOT_FOUND, CONFLICT) waits for everything
    /// written before it was executed: otherwise a client could see a write that a failover
    /// (or a crash, with `--fsync always`) then loses.
    pub needs: u64,
}

impl FrameOutcome {
    const fn now(disposition: Disposition) -> Self {
        FrameOutcome { disposition, needs: 0 }
    }
}

impl Node {
    /// Starts loading the records that the keyed requests among the next few frames at the
    /// front of `bytes` (whole frames back to back, in the session's framing) will touch, so
    /// that their cache misses overlap; see [`storage::Store::prefetch`]. GETs read the whole
    /// record; writes only look up the key they overwrite (its record's first lines). Frames
    /// are not validated here: a damaged one costs at most a wasted load, and is refused when
    /// it is executed. Returns how many bytes of `bytes` the window covered: call again when
    /// execution gets there.
    pub fn prefetch(&self, bytes: &[u8], session: &Session) -> usize {
        if !session.authenticated {
            return bytes.len();
        }
        let (covered, count) = match session.framing {
            Framing::Fixed => {
                let n = (bytes.len() / FRAME_LEN).min(PREFETCH_WINDOW);
                (n * FRAME_LEN, n)
            }
            Framing::Compact => {
                compact_frames(bytes).take(PREFETCH_WINDOW).fold((0, 0), |(c, n), f| (c + f.len(), n + 1))
            }
        };
        // A lone frame gains nothing from loading ahead of itself.
        if count < 2 {
            return covered;
        }
        let window = &bytes[..covered];
        for stage in [storage::Prefetch::Header, storage::Prefetch::Value] {
            let mut each = |frame: &[u8]| {
                if let Some((key, get)) = data_key(frame) {
                    if get || stage == storage::Prefetch::Header {
                        self.store.prefetch(key, stage);
                    }
                }
            };
            match session.framing {
                Framing::Fixed => window.chunks_exact(FRAME_LEN).for_each(&mut each),
                Framing::Compact => compact_frames(window).for_each(&mut each),
            }
        }
        covered
    }

    /// A new connection's session.
    pub fn new_session(&self) -> Session {
        Session { authenticated: self.auth_token.is_none(), framing: Framing::Fixed }
    }

    /// Decodes one fixed frame, executes it and appends exactly one reply frame to `out`.
    /// `now` is the replica's clock, for the lease check.
    pub fn handle_frame(
        &mut self,
        bytes: &[u8; FRAME_LEN],
        session: &mut Session,
        out: &mut Replies,
        now: Time,
    ) -> FrameOutcome {
        let decoded = Frame::decode_with_crc(bytes).map_err(|e| (e, header_command(bytes)));
        self.handle(decoded, session, out, now)
    }

    /// Decodes the compact frame at the front of `buf`, executes it and appends exactly one
    /// reply frame to `out`; returns the outcome and the bytes the frame used, or `None`
    /// while `buf` holds less than a whole frame. After a fatal error (the frame boundary is
    /// lost) the whole of `buf` counts as used, and the outcome says to close.
    pub fn handle_compact(
        &mut self,
        buf: &[u8],
        session: &mut Session,
        out: &mut Replies,
        now: Time,
    ) -> Option<(FrameOutcome, usize)> {
        match Frame::decode_compact_with_crc(buf) {
            Ok(None) => None,
            Ok(Some((frame, used, crc))) => Some((self.handle(Ok((frame, crc)), session, out, now), used)),
            Err(e) => {
                // A non-fatal error was found after the checksum vouched for the lengths.
                let used = match e.is_fatal_for(Framing::Compact) {
                    true => buf.len(),
                    false => compact_frames(buf).next().map_or(buf.len(), <[u8]>::len),
                };
                Some((self.handle(Err((e, header_command(buf))), session, out, now), used))
            }
        }
    }

    /// Executes one decoded frame, given with the checksum it was verified with (or answers why
    /// it did not decode: with the error, the command its header names, believed only when the
    /// error has a trusted id).
    fn handle(
        &mut self,
        decoded: Result<(Frame<'_>, FrameCrc), (DecodeError, Command)>,
        session: &mut Session,
        out: &mut Replies,
        now: Time,
    ) -> FrameOutcome {
        out.framing = session.framing;
        let (frame, crc) = match decoded {
            Ok(decoded) => decoded,
            Err((e, command)) => return FrameOutcome::now(self.refuse(&e, command, out)),
        };
        let request = match Request::parse(&frame) {
            Ok(request) => request,
            Err(e) => return FrameOutcome::now(self.refuse(&e, frame.command, out)),
        };
        if let Request::Hello { framing } = request {
            // Before AUTH too: it only says how the bytes that follow are laid out.
            self.hello(&frame, framing, session, out);
            return FrameOutcome::now(Disposition::Continue);
        }
        if !session.authenticated || matches!(request, Request::Auth { .. }) {
            // AUTH is checked on every connection, authenticated or not: a wrong token closes
            // the connection either way.
            return FrameOutcome::now(self.authenticate(&frame, request, session, out));
        }
        self.stats.count_op(request.command());
        if !matches!(request, Request::Ping { .. } | Request::Stats | Request::Auth { .. }) {
            if let Some(refusal) = self.refusal(now) {
                self.refuse_here(&frame, refusal, out);
                return FrameOutcome::now(Disposition::Continue);
            }
        }
        let needs = self.execute(&frame, crc, request, out);
        FrameOutcome { disposition: Disposition::Continue, needs }
    }

    /// HELLO: picks the framing asked for if this server knows it, fixed otherwise, and says
    /// which in the reply (sent in the old framing); the connection's next frame uses it.
    fn hello(&mut self, frame: &Frame<'_>, asked: u8, session: &mut Session, out: &mut Replies) {
        self.stats.count_op(Command::HELLO);
        let (chosen, code) = match asked {
            HELLO_COMPACT => (Framing::Compact, HELLO_COMPACT),
            _ => (Framing::Fixed, HELLO_FIXED),
        };
        out.push(Frame::reply(frame, Status::OK, &[code]));
        session.framing = chosen;
    }

    /// In a cluster, why this server may not execute a request now.
    fn refusal(&self, now: Time) -> Option<NotServing> {
        self.replica.as_ref().and_then(|r| r.can_serve(now).err())
    }

    fn refuse_here(&mut self, frame: &Frame<'_>, why: NotServing, out: &mut Replies) {
        match why {
            NotServing::NotPrimary(hint) => {
                self.stats.wrong_server += 1;
                let hint = hint.unwrap_or_default();
                out.push(Frame::reply(frame, Status::WRONG_SERVER, hint.as_bytes()));
            }
            NotServing::Unavailable(reason) => {
                self.stats.unavailable += 1;
                out.push(Frame::reply(frame, Status::UNAVAILABLE, reason.as_bytes()));
            }
        }
    }

    fn authenticate(
        &mut self,
        frame: &Frame<'_>,
        request: Request<'_>,
        session: &mut Session,
        out: &mut Replies,
    ) -> Disposition {
        self.stats.count_op(request.command());
        let Request::Auth { token } = request else {
            self.stats.auth_failures += 1;
            out.push(Frame::reply(frame, Status::UNAUTHORIZED, b"AUTH first"));
            return Disposition::Continue;
        };
        // A server without a token accepts any: there is nothing to check.
        if self.auth_token.as_deref().is_none_or(|expected| constant_time_eq(token, expected)) {
            session.authenticated = true;
            out.push(Frame::reply(frame, Status::OK, b""));
            Disposition::Continue
        } else {
            self.stats.auth_failures += 1;
            out.push(Frame::reply(frame, Status::UNAUTHORIZED, b"wrong token"));
            Disposition::Close
        }
    }

    /// Answers a frame that failed to decode or parse.
    fn refuse(&mut self, e: &DecodeError, command: Command, out: &mut Replies) -> Disposition {
        self.stats.bad_frames += 1;
        log::debug!("refusing frame: {e}");
        self.text.clear();
        let _ = write!(self.text, "{e}");
        // An untrusted header gets id 0 and command 0: nothing in it can be believed.
        let (id, command) = match e.trusted_id() {
            Some(id) => (id, command),
            None => (0, Command(0)),
        };
        out.push(Frame::reply_to(id, command, e.status(), self.text.as_bytes()));
        if e.is_fatal_for(out.framing) {
            Disposition::Close
        } else {
            Disposition::Continue
        }
    }

    /// Executes a request; returns the LSN its reply waits for (see [`FrameOutcome::needs`]).
    /// `crc` is the checksum `frame` was verified with: writes pass the store the CRC of their
    /// key and value derived from it ([`verified_payload_crc`]).
    fn execute(&mut self, frame: &Frame<'_>, crc: FrameCrc, request: Request<'_>, out: &mut Replies) -> u64 {
        match request {
            Request::Ping { payload } => {
                out.push(Frame::reply(frame, Status::OK, payload));
                return 0;
            }
            Request::Get { key } => match self.store.get(key) {
                Some(entry) => {
                    self.stats.get_hits += 1;
                    out.push(Frame::reply(frame, Status::OK, entry.value).with_timestamp(entry.version));
                }
                None => {
                    self.stats.get_misses += 1;
                    out.push(Frame::reply(frame, Status::NOT_FOUND, b""));
                }
            },
            Request::Put { key, value, client_id, expected_version } => {
                if self.answered_before(frame, client_id, out)
                    || self.conflicts(frame, key, expected_version, out)
                {
                    return self.store.last_lsn().0;
                }
                let payload_crc = verified_payload_crc(frame, crc);
                let meta = WriteMeta { client_id, request_id: frame.id, payload_crc };
                let result = self.store.put(key, value, meta).map(Some);
                self.write_reply(frame, result, out);
            }
            Request::Delete { key, client_id, expected_version } => {
                if self.answered_before(frame, client_id, out)
                    || self.conflicts(frame, key, expected_version, out)
                {
                    return self.store.last_lsn().0;
                }
                let payload_crc = verified_payload_crc(frame, crc);
                let meta = WriteMeta { client_id, request_id: frame.id, payload_crc };
                let result = self.store.delete(key, meta);
                self.write_reply(frame, result, out);
            }
            Request::Append { key, value, client_id, expected_version } => {
                if self.answered_before(frame, client_id, out)
                    || self.conflicts(frame, key, expected_version, out)
                {
                    return self.store.last_lsn().0;
                }
                let payload_crc = verified_payload_crc(frame, crc);
                let meta = WriteMeta { client_id, request_id: frame.id, payload_crc };
                let result = self.store.append(key, value, meta).map(Some);
                self.write_reply(frame, result, out);
            }
            Request::Stats => {
                let mut text = std::mem::take(&mut self.text);
                self.render_stats(&mut text);
                out.push(Frame::reply(frame, Status::OK, text.as_bytes()));
                self.text = text;
                return 0;
            }
            // Both are answered before execution (see `handle`), so they never get here.
            Request::Auth { .. } | Request::Hello { .. } => {
                out.push(Frame::reply(frame, Status::OK, b""));
                return 0;
            }
        }
        self.store.last_lsn().0
    }

    /// At-most-once: a write repeated with the client id and request id of the newest write
    /// this server holds for that client gets that write's reply again, without being applied
    /// twice. An older request id is refused: a newer write of that client was executed, and
    /// this one's outcome cannot be told (its reply is long gone). Returns whether it answered.
    fn answered_before(&mut self, frame: &Frame<'_>, client_id: u64, out: &mut Replies) -> bool {
        if client_id == 0 {
            return false;
        }
        let Some(entry) = self.store.client_entry(client_id) else { return false };
        if frame.id == entry.request_id {
            self.stats.retries_answered += 1;
            out.push(Frame::reply(frame, Status::OK, b"").with_timestamp(entry.version));
            true
        } else if frame.id < entry.request_id {
            self.stats.stale_requests += 1;
            self.text.clear();
            let _ = write!(
                self.text,
                "stale request id {}: client {client_id} already wrote request {}; the outcome of this one is unknown",
                frame.id, entry.request_id
            );
            out.push(Frame::reply(frame, Status::BAD_REQUEST, self.text.as_bytes()));
            true
        } else {
            false
        }
    }

    /// For a conditional write: answers CONFLICT and returns true if the version differs.
    fn conflicts(&mut self, frame: &Frame<'_>, key: &[u8], expected: u64, out: &mut Replies) -> bool {
        if expected == 0 {
            return false;
        }
        let current = self.store.get(key).map_or(0, |e| e.version);
        if current == expected {
            return false;
        }
        out.push(Frame::reply(frame, Status::CONFLICT, b"").with_timestamp(current));
        true
    }

    /// Replies to a write: OK with the new version, NOT_FOUND (delete of an absent key), or
    /// the storage error.
    fn write_reply(
        &mut self,
        frame: &Frame<'_>,
        result: Result<Option<storage::Lsn>, StorageError>,
        out: &mut Replies,
    ) {
        match result {
            Ok(Some(lsn)) => {
                self.unsynced_writes += 1;
                out.push(Frame::reply(frame, Status::OK, b"").with_timestamp(lsn.0));
            }
            Ok(None) => out.push(Frame::reply(frame, Status::NOT_FOUND, b"")),
            Err(e) => {
                self.stats.storage_errors += 1;
                let status = match e {
                    StorageError::KeyTooLong { .. } | StorageError::ValueTooLong { .. } => Status::TOO_LARGE,
                    StorageError::EmptyKey => Status::BAD_REQUEST,
                    _ => {
                        log::warn!("write of frame {} failed: {e}", frame.id);
                        Status::STORAGE_ERROR
                    }
                };
                self.text.clear();
                let _ = write!(self.text, "{e}");
                out.push(Frame::reply(frame, status, self.text.as_bytes()));
            }
        }
    }
}

/// Key plus value bytes from which [`verified_payload_crc`] hands the store a CRC. Deriving costs
/// about the same whatever the length (a CRC of the 40 header bytes and a [`wire::crc::shift`]
/// here, the same for the store's header): 60 ns per write on the development VM, against 70 ns
/// for the store's own pass at 100-256 bytes and 150 ns at 4000 (`record_crc/*` in
/// storage/benches/store.rs). Below this the gain is too small to be worth the work.
const DERIVE_CRC_MIN_PAYLOAD: usize = 256;

/// The CRC of `frame`'s key ‖ value for [`storage::WriteMeta::payload_crc`] (issue #11: the
/// store then skips its own pass over the value), derived from `crc`, the checksum the decoder
/// verified `frame` with, never from bytes it did not check. `None` (the store computes it)
/// when the payload is too short for deriving to pay. The store's record holds this frame's key
/// and value for PUT and replicated records, its key for DELETE (whose frame carries no value)
/// and its key and the suffix for APPEND, which is what `payload_crc` is defined over.
pub(crate) fn verified_payload_crc(frame: &Frame<'_>, crc: FrameCrc) -> Option<u32> {
    let payload_len = frame.key.len() + frame.value.len();
    (payload_len >= DERIVE_CRC_MIN_PAYLOAD).then(|| frame.payload_crc(crc))
}

/// Compares secrets in time that depends only on their lengths, not on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Frames prefetched ahead of execution at a time: a fixed-frame read chunk's worth.
const PREFETCH_WINDOW: usize = 16;

/// The little-endian u32 at `at` in a frame's header, if the bytes are there.
#[inline]
fn u32_field(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
}

/// The command a frame's header names (meaningful only once its checksum passed).
fn header_command(bytes: &[u8]) -> Command {
    Command(u32_field(bytes, wire::header::COMMAND_OFFSET).unwrap_or(0))
}

/// The compact frames at the front of `bytes`, cut by their declared lengths without
/// validating anything; stops at the first that does not fit.
fn compact_frames(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let key_len = u32_field(bytes, wire::header::KEY_LEN_OFFSET)? as usize;
        let value_len = u32_field(bytes, wire::header::VALUE_LEN_OFFSET)? as usize;
        let len = wire::HEADER_LEN.checked_add(key_len)?.checked_add(value_len)?;
        if len > FRAME_LEN || len > bytes.len() {
            return None;
        }
        let (frame, rest) = bytes.split_at(len);
        bytes = rest;
        Some(frame)
    })
}

/// The key of a GET, PUT, DELETE or APPEND frame, and whether it is a GET, read without
/// validating the frame.
#[inline]
fn data_key(frame: &[u8]) -> Option<(&[u8], bool)> {
    let u32_at = |at: usize| u32_field(frame, at);
    let command = Command(u32_at(wire::header::COMMAND_OFFSET)?);
    if !matches!(command, Command::GET | Command::PUT | Command::DELETE | Command::APPEND) {
        return None;
    }
    let key_len = u32_at(wire::header::KEY_LEN_OFFSET)? as usize;
    if key_len == 0 || key_len > wire::header::MAX_KEY_LEN {
        return None;
    }
    let key = frame.get(wire::header::PAYLOAD_OFFSET..wire::header::PAYLOAD_OFFSET + key_len)?;
    Some((key, command == Command::GET))
}

/// Starts loading the records that the replicated writes among `frames` (compact frames, back
/// to back, as a backup receives them) will overwrite. Stops at the first frame that does not
/// fit; nothing is validated.
pub fn prefetch_replicated(store: &storage::Store, frames: &[u8]) {
    for frame in compact_frames(frames).take(64) {
        let command = header_command(frame);
        if matches!(command, wire::cluster::REPL_PUT | wire::cluster::REPL_DELETE) {
            let key_len = u32_field(frame, wire::header::KEY_LEN_OFFSET).unwrap_or(0) as usize;
            if let Some(key) = frame.get(wire::header::PAYLOAD_OFFSET..wire::header::PAYLOAD_OFFSET + key_len)
            {
                if !key.is_empty() {
                    store.prefetch(key, storage::Prefetch::Header);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn data_key_reads_only_well_formed_keyed_requests() {
        let mut buf = [0u8; FRAME_LEN];
        let get = Request::Get { key: b"user:1" };
        get.to_frame(9).encode(&mut buf).unwrap();
        assert_eq!(data_key(&buf), Some((&b"user:1"[..], true)));
        Request::Put { key: b"k", value: b"v", client_id: 0, expected_version: 0 }
            .to_frame(2)
            .encode(&mut buf)
            .unwrap();
        assert_eq!(data_key(&buf), Some((&b"k"[..], false)));
        Request::Ping { payload: b"" }.to_frame(1).encode(&mut buf).unwrap();
        assert_eq!(data_key(&buf), None);
        get.to_frame(9).encode(&mut buf).unwrap();
        buf[wire::header::KEY_LEN_OFFSET..][..4].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(data_key(&buf), None, "a key longer than the limit is not read");
        assert_eq!(data_key(&buf[..20]), None);
    }

    /// Issue #11: writes with a payload long enough hand the store the CRC of their key and
    /// value derived from the frame's verified checksum (debug builds check every one), in both
    /// framings; the records they leave are the ones recovery verifies.
    #[test]
    fn writes_hand_the_store_the_crc_their_frame_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = storage::Store::open(dir.path(), storage::Options::default()).unwrap();
        let mut node = Node::new(store, storage::Durability::Never, None);
        let mut session = node.new_session();
        const _: () = assert!(wire::MAX_KEY_LEN >= DERIVE_CRC_MIN_PAYLOAD);
        let long_key = vec![b'k'; wire::MAX_KEY_LEN];
        let (big, half) = (vec![7u8; 4000], vec![8u8; 1500]);
        let requests = [
            Request::Put { key: b"big", value: &big, client_id: 1, expected_version: 0 },
            Request::Put { key: b"a", value: &half, client_id: 1, expected_version: 0 },
            Request::Append { key: b"a", value: &half, client_id: 1, expected_version: 0 },
            Request::Append { key: b"fresh", value: &half, client_id: 0, expected_version: 0 },
            Request::Put { key: &long_key, value: b"v", client_id: 0, expected_version: 0 },
            // The key alone reaches the threshold: the tombstone's CRC is derived too.
            Request::Delete { key: &long_key, client_id: 0, expected_version: 0 },
        ];
        for (i, request) in requests.iter().enumerate() {
            let mut out = Replies::default();
            let id = i as u64 + 1;
            if i % 2 == 0 {
                session.framing = Framing::Fixed;
                let mut buf = [0u8; FRAME_LEN];
                request.to_frame(id).encode(&mut buf).unwrap();
                node.handle_frame(&buf, &mut session, &mut out, Time::ZERO);
            } else {
                session.framing = Framing::Compact;
                let mut buf = Vec::new();
                request.to_frame(id).encode_compact_to(&mut buf).unwrap();
                let (_, used) = node.handle_compact(&buf, &mut session, &mut out, Time::ZERO).unwrap();
                assert_eq!(used, buf.len());
            }
            let reply = match session.framing {
                Framing::Fixed => Frame::decode_slice(&out.buf).unwrap(),
                Framing::Compact => Frame::decode_compact(&out.buf).unwrap().unwrap().0,
            };
            assert_eq!((reply.id, reply.status()), (id, Status::OK), "request {i}: {:?}", reply.value);
        }
        drop(node);
        let store = storage::Store::open(dir.path(), storage::Options::default()).unwrap();
        assert_eq!(store.recovery_report().records, 6);
        assert_eq!(store.get(b"big").unwrap().value, &big[..]);
        assert_eq!(store.get(b"a").unwrap().value, &[&half[..], &half].concat()[..]);
        assert_eq!(store.get(b"fresh").unwrap().value, &half[..]);
        assert!(store.get(&long_key).is_none());
    }
}
