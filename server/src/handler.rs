//! Request → storage → reply, as methods of [`Node`]. Knows frames, the store and whether
//! this server may serve; nothing about sockets.

use std::fmt::Write as _;

use storage::{StorageError, WriteMeta};
use wire::{Command, DecodeError, Frame, Request, Status, FRAME_LEN};

pub use crate::node::Node;
use crate::replica::NotServing;
use crate::time::Time;

/// Per-connection protocol state the handler needs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Session {
    /// Whether the connection has presented the right token (always true without a token).
    pub authenticated: bool,
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
    /// Starts loading the records that the keyed requests among `frames` (whole frames, back
    /// to back) will touch, so that their cache misses overlap; see
    /// [`storage::Store::prefetch`]. GETs read the whole record; writes only look up the key
    /// they overwrite (its record's first lines). Frames are not validated here: a damaged one
    /// costs at most a wasted load, and is refused when it is executed.
    pub fn prefetch_gets(&self, frames: &[u8], session: &Session) {
        if !session.authenticated || frames.len() < 2 * FRAME_LEN {
            return;
        }
        for stage in [storage::Prefetch::Header, storage::Prefetch::Value] {
            for frame in frames.chunks_exact(FRAME_LEN) {
                if let Some((key, get)) = data_key(frame) {
                    if get || stage == storage::Prefetch::Header {
                        self.store.prefetch(key, stage);
                    }
                }
            }
        }
    }

    /// A new connection's session.
    pub fn new_session(&self) -> Session {
        Session { authenticated: self.auth_token.is_none() }
    }

    /// Decodes one frame, executes it and appends exactly one reply frame to `out`. `now` is
    /// the replica's clock, for the lease check.
    pub fn handle_frame(
        &mut self,
        bytes: &[u8; FRAME_LEN],
        session: &mut Session,
        out: &mut Vec<u8>,
        now: Time,
    ) -> FrameOutcome {
        let frame = match Frame::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                // The checksum covered the header when the id is trusted: so is the command.
                let command = match e.trusted_id() {
                    Some(_) => Command(u32::from_le_bytes(
                        bytes[wire::header::COMMAND_OFFSET..wire::header::FLAGS_OFFSET]
                            .try_into()
                            .unwrap_or_default(),
                    )),
                    None => Command(0),
                };
                return FrameOutcome::now(self.refuse(&e, command, out));
            }
        };
        let request = match Request::parse(&frame) {
            Ok(request) => request,
            Err(e) => return FrameOutcome::now(self.refuse(&e, frame.command, out)),
        };
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
        let needs = self.execute(&frame, request, out);
        FrameOutcome { disposition: Disposition::Continue, needs }
    }

    /// In a cluster, why this server may not execute a request now.
    fn refusal(&self, now: Time) -> Option<NotServing> {
        self.replica.as_ref().and_then(|r| r.can_serve(now).err())
    }

    fn refuse_here(&mut self, frame: &Frame<'_>, why: NotServing, out: &mut Vec<u8>) {
        match why {
            NotServing::NotPrimary(hint) => {
                self.stats.wrong_server += 1;
                let hint = hint.unwrap_or_default();
                push(out, Frame::reply(frame, Status::WRONG_SERVER, hint.as_bytes()));
            }
            NotServing::Unavailable(reason) => {
                self.stats.unavailable += 1;
                push(out, Frame::reply(frame, Status::UNAVAILABLE, reason.as_bytes()));
            }
        }
    }

    fn authenticate(
        &mut self,
        frame: &Frame<'_>,
        request: Request<'_>,
        session: &mut Session,
        out: &mut Vec<u8>,
    ) -> Disposition {
        self.stats.count_op(request.command());
        let Request::Auth { token } = request else {
            self.stats.auth_failures += 1;
            push(out, Frame::reply(frame, Status::UNAUTHORIZED, b"AUTH first"));
            return Disposition::Continue;
        };
        // A server without a token accepts any: there is nothing to check.
        if self.auth_token.as_deref().is_none_or(|expected| constant_time_eq(token, expected)) {
            session.authenticated = true;
            push(out, Frame::reply(frame, Status::OK, b""));
            Disposition::Continue
        } else {
            self.stats.auth_failures += 1;
            push(out, Frame::reply(frame, Status::UNAUTHORIZED, b"wrong token"));
            Disposition::Close
        }
    }

    /// Answers a frame that failed to decode or parse.
    fn refuse(&mut self, e: &DecodeError, command: Command, out: &mut Vec<u8>) -> Disposition {
        self.stats.bad_frames += 1;
        log::debug!("refusing frame: {e}");
        self.text.clear();
        let _ = write!(self.text, "{e}");
        // An untrusted header gets id 0 and command 0: nothing in it can be believed.
        let (id, command) = match e.trusted_id() {
            Some(id) => (id, command),
            None => (0, Command(0)),
        };
        push(out, Frame::reply_to(id, command, e.status(), self.text.as_bytes()));
        if e.is_fatal() {
            Disposition::Close
        } else {
            Disposition::Continue
        }
    }

    /// Executes a request; returns the LSN its reply waits for (see [`FrameOutcome::needs`]).
    fn execute(&mut self, frame: &Frame<'_>, request: Request<'_>, out: &mut Vec<u8>) -> u64 {
        match request {
            Request::Ping { payload } => {
                push(out, Frame::reply(frame, Status::OK, payload));
                return 0;
            }
            Request::Get { key } => match self.store.get(key) {
                Some(entry) => {
                    self.stats.get_hits += 1;
                    push(out, Frame::reply(frame, Status::OK, entry.value).with_timestamp(entry.version));
                }
                None => {
                    self.stats.get_misses += 1;
                    push(out, Frame::reply(frame, Status::NOT_FOUND, b""));
                }
            },
            Request::Put { key, value, client_id, expected_version } => {
                if self.answered_before(frame, client_id, out)
                    || self.conflicts(frame, key, expected_version, out)
                {
                    return self.store.last_lsn().0;
                }
                let meta = WriteMeta { client_id, request_id: frame.id };
                let result = self.store.put(key, value, meta).map(Some);
                self.write_reply(frame, result, out);
            }
            Request::Delete { key, client_id, expected_version } => {
                if self.answered_before(frame, client_id, out)
                    || self.conflicts(frame, key, expected_version, out)
                {
                    return self.store.last_lsn().0;
                }
                let meta = WriteMeta { client_id, request_id: frame.id };
                let result = self.store.delete(key, meta);
                self.write_reply(frame, result, out);
            }
            Request::Append { key, value, client_id, expected_version } => {
                if self.answered_before(frame, client_id, out)
                    || self.conflicts(frame, key, expected_version, out)
                {
                    return self.store.last_lsn().0;
                }
                let meta = WriteMeta { client_id, request_id: frame.id };
                let result = self.store.append(key, value, meta).map(Some);
                self.write_reply(frame, result, out);
            }
            Request::Stats => {
                let mut text = std::mem::take(&mut self.text);
                self.render_stats(&mut text);
                push(out, Frame::reply(frame, Status::OK, text.as_bytes()));
                self.text = text;
                return 0;
            }
            Request::Auth { .. } => {
                push(out, Frame::reply(frame, Status::OK, b""));
                return 0;
            }
        }
        self.store.last_lsn().0
    }

    /// At-most-once: a write repeated with the client id and request id of the newest write
    /// this server holds for that client gets that write's reply again, without being applied
    /// twice. An older request id is refused: a newer write of that client was executed, and
    /// this one's outcome cannot be told (its reply is long gone). Returns whether it answered.
    fn answered_before(&mut self, frame: &Frame<'_>, client_id: u64, out: &mut Vec<u8>) -> bool {
        if client_id == 0 {
            return false;
        }
        let Some(entry) = self.store.client_entry(client_id) else { return false };
        if frame.id == entry.request_id {
            self.stats.retries_answered += 1;
            push(out, Frame::reply(frame, Status::OK, b"").with_timestamp(entry.version));
            true
        } else if frame.id < entry.request_id {
            self.stats.stale_requests += 1;
            self.text.clear();
            let _ = write!(
                self.text,
                "stale request id {}: client {client_id} already wrote request {}; the outcome of this one is unknown",
                frame.id, entry.request_id
            );
            push(out, Frame::reply(frame, Status::BAD_REQUEST, self.text.as_bytes()));
            true
        } else {
            false
        }
    }

    /// For a conditional write: answers CONFLICT and returns true if the version differs.
    fn conflicts(&mut self, frame: &Frame<'_>, key: &[u8], expected: u64, out: &mut Vec<u8>) -> bool {
        if expected == 0 {
            return false;
        }
        let current = self.store.get(key).map_or(0, |e| e.version);
        if current == expected {
            return false;
        }
        push(out, Frame::reply(frame, Status::CONFLICT, b"").with_timestamp(current));
        true
    }

    /// Replies to a write: OK with the new version, NOT_FOUND (delete of an absent key), or
    /// the storage error.
    fn write_reply(
        &mut self,
        frame: &Frame<'_>,
        result: Result<Option<storage::Lsn>, StorageError>,
        out: &mut Vec<u8>,
    ) {
        match result {
            Ok(Some(lsn)) => {
                self.unsynced_writes += 1;
                push(out, Frame::reply(frame, Status::OK, b"").with_timestamp(lsn.0));
            }
            Ok(None) => push(out, Frame::reply(frame, Status::NOT_FOUND, b"")),
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
                push(out, Frame::reply(frame, status, self.text.as_bytes()));
            }
        }
    }
}

/// Appends one encoded frame. Replies are built from validated parts, so encoding cannot
/// fail; if it ever did, the reply is replaced by an INTERNAL error rather than dropped, so
/// the client's reply count stays right.
fn push(out: &mut Vec<u8>, frame: Frame<'_>) {
    out.reserve(FRAME_LEN);
    if let Err(e) = frame.encode_to(out) {
        log::error!("could not encode reply to frame {}: {e}", frame.id);
        let fallback = Frame::reply_to(frame.id, frame.command, Status::INTERNAL, b"reply encoding failed");
        let _ = fallback.encode_to(out);
    }
}

/// Compares secrets in time that depends only on their lengths, not on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The key of a GET, PUT, DELETE or APPEND frame, and whether it is a GET, read without
/// validating the frame.
#[inline]
fn data_key(frame: &[u8]) -> Option<(&[u8], bool)> {
    let u32_at = |at: usize| frame.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
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
pub fn prefetch_replicated(store: &storage::Store, mut frames: &[u8]) {
    let u32_at =
        |b: &[u8], at: usize| b.get(at..at + 4).and_then(|x| x.try_into().ok()).map(u32::from_le_bytes);
    let mut n = 0;
    while n < 64 {
        let (Some(command), Some(key_len), Some(value_len)) = (
            u32_at(frames, wire::header::COMMAND_OFFSET),
            u32_at(frames, wire::header::KEY_LEN_OFFSET),
            u32_at(frames, wire::header::VALUE_LEN_OFFSET),
        ) else {
            return;
        };
        let (key_len, len) = (key_len as usize, wire::HEADER_LEN + key_len as usize + value_len as usize);
        if key_len > wire::header::MAX_KEY_LEN || len > FRAME_LEN || len > frames.len() {
            return;
        }
        if matches!(Command(command), wire::cluster::REPL_PUT | wire::cluster::REPL_DELETE) && key_len > 0 {
            store.prefetch(
                &frames[wire::header::PAYLOAD_OFFSET..wire::header::PAYLOAD_OFFSET + key_len],
                storage::Prefetch::Header,
            );
        }
        frames = &frames[len..];
        n += 1;
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
}
