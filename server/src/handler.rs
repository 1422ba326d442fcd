//! Request → storage → reply. Knows frames and the store, nothing about sockets.

use std::fmt::Write as _;
use std::time::Instant;

use storage::{StorageError, Store, WriteMeta};
use wire::{Command, DecodeError, Frame, Request, Status, FRAME_LEN};

use crate::stats::Stats;

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

/// Executes requests against the store and encodes replies.
pub struct Handler {
    store: Store,
    auth_token: Option<Vec<u8>>,
    started: Instant,
    /// Counters for STATS.
    pub stats: Stats,
    /// Writes applied since the last [`Handler::sync`]: their replies wait for it when the
    /// durability mode is `always`.
    unsynced_writes: u64,
    /// Reused for STATS and error texts, so replies never allocate after warm-up.
    text: String,
}

impl Handler {
    /// A handler over an open store.
    pub fn new(store: Store, auth_token: Option<Vec<u8>>) -> Self {
        Handler {
            store,
            auth_token,
            started: Instant::now(),
            stats: Stats::default(),
            unsynced_writes: 0,
            text: String::new(),
        }
    }

    /// The store, read-only.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, for ticks and shutdown.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Starts loading the records that the GETs among `frames` (whole frames, back to back)
    /// will read, so that their cache misses overlap; see [`storage::Store::prefetch`]. Frames
    /// are not validated here: a damaged one costs at most a wasted load, and is refused when
    /// it is executed.
    pub fn prefetch_gets(&self, frames: &[u8], session: &Session) {
        if !session.authenticated || frames.len() < 2 * FRAME_LEN {
            return;
        }
        for stage in [storage::Prefetch::Header, storage::Prefetch::Value] {
            for frame in frames.chunks_exact(FRAME_LEN) {
                if let Some(key) = get_key(frame) {
                    self.store.prefetch(key, stage);
                }
            }
        }
    }

    /// A new connection's session.
    pub fn new_session(&self) -> Session {
        Session { authenticated: self.auth_token.is_none() }
    }

    /// Writes applied but not yet synced.
    pub fn unsynced_writes(&self) -> u64 {
        self.unsynced_writes
    }

    /// Makes every applied write durable (one msync for the whole batch: group commit).
    ///
    /// # Errors
    /// The storage error; the store then refuses writes until reopened.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.unsynced_writes > 0 {
            self.store.sync()?;
            self.stats.syncs += 1;
            self.unsynced_writes = 0;
        }
        Ok(())
    }

    /// Decodes one frame, executes it and appends exactly one reply frame to `out`.
    pub fn handle_frame(
        &mut self,
        bytes: &[u8; FRAME_LEN],
        session: &mut Session,
        out: &mut Vec<u8>,
    ) -> Disposition {
        let frame = match Frame::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => return self.refuse(&e, Command(0), out),
        };
        let request = match Request::parse(&frame) {
            Ok(request) => request,
            Err(e) => return self.refuse(&e, frame.command, out),
        };
        if !session.authenticated {
            return self.authenticate(&frame, request, session, out);
        }
        self.stats.count_op(request.command());
        self.execute(&frame, request, out);
        Disposition::Continue
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
        let expected = self.auth_token.as_deref().unwrap_or_default();
        if constant_time_eq(token, expected) {
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

    fn execute(&mut self, frame: &Frame<'_>, request: Request<'_>, out: &mut Vec<u8>) {
        match request {
            Request::Ping { payload } => push(out, Frame::reply(frame, Status::OK, payload)),
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
                if self.conflicts(frame, key, expected_version, out) {
                    return;
                }
                let meta = WriteMeta { client_id, request_id: frame.id };
                let result = self.store.put(key, value, meta).map(Some);
                self.write_reply(frame, result, out);
            }
            Request::Delete { key, client_id, expected_version } => {
                if self.conflicts(frame, key, expected_version, out) {
                    return;
                }
                let meta = WriteMeta { client_id, request_id: frame.id };
                let result = self.store.delete(key, meta);
                self.write_reply(frame, result, out);
            }
            Request::Append { key, value, client_id, expected_version } => {
                if self.conflicts(frame, key, expected_version, out) {
                    return;
                }
                let meta = WriteMeta { client_id, request_id: frame.id };
                let result = self.store.append(key, value, meta).map(Some);
                self.write_reply(frame, result, out);
            }
            Request::Stats => {
                let mut text = std::mem::take(&mut self.text);
                self.stats.render(&mut text, self.started.elapsed(), &self.store.stats());
                push(out, Frame::reply(frame, Status::OK, text.as_bytes()));
                self.text = text;
            }
            Request::Auth { .. } => push(out, Frame::reply(frame, Status::OK, b"")),
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

/// The key of a GET frame, read without validating the frame.
#[inline]
fn get_key(frame: &[u8]) -> Option<&[u8]> {
    let u32_at = |at: usize| frame.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if u32_at(wire::header::COMMAND_OFFSET)? != Command::GET.0 {
        return None;
    }
    let key_len = u32_at(wire::header::KEY_LEN_OFFSET)? as usize;
    if key_len == 0 || key_len > wire::header::MAX_KEY_LEN {
        return None;
    }
    frame.get(wire::header::PAYLOAD_OFFSET..wire::header::PAYLOAD_OFFSET + key_len)
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
    fn get_key_reads_only_well_formed_gets() {
        let mut buf = [0u8; FRAME_LEN];
        let get = Request::Get { key: b"user:1" };
        get.to_frame(9).encode(&mut buf).unwrap();
        assert_eq!(get_key(&buf), Some(&b"user:1"[..]));
        Request::Ping { payload: b"" }.to_frame(1).encode(&mut buf).unwrap();
        assert_eq!(get_key(&buf), None);
        get.to_frame(9).encode(&mut buf).unwrap();
        buf[wire::header::KEY_LEN_OFFSET..][..4].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(get_key(&buf), None, "a key longer than the limit is not read");
        assert_eq!(get_key(&buf[..20]), None);
    }
}
