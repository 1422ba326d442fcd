//! Tandem's storage: a Bitcask-style log of records in memory-mapped segment files, with an
//! in-memory index from key to the newest record of that key.
//!
//! Writes append a record to the active segment's mapping and point the index at it; reads look
//! the key up and return the value straight from the mapping, without copying. Records are never
//! modified in place: an overwrite or delete appends a newer record (a tombstone for deletes),
//! and compaction later copies the still-live records out of segments full of dead ones.
//!
//! # Layout
//!
//! - [`Store`]: open (recovers), get, put, delete, append, sync, tick, iterate, compact.
//! - [`Options`], [`Durability`]: configuration; [`Stats`]: counters.
//! - `format`: the byte layout of segments and records (diagram there and in `docs/storage.md`).
//! - `segment`: one preallocated, memory-mapped file and its write cursor.
//! - `index`: the 16-byte-per-key hash table.
//! - `recovery`: scanning on open, the torn-tail rule, and [`Store::repair`].
//! - `compaction`: incremental compaction driven by [`Store::tick`].
//! - `worker`: a background thread for fsync, rename and unlink, so `tick` stays short.
//! - For replication: `log` ([`LogCursor`] and [`Store::read_log`], the retention pin
//!   [`Store::retain_log_from`], [`Store::apply_replicated`]); `clients` (the at-most-once table,
//!   [`Store::client_entry`], and its file `CLIENTS`); `snapshot` (the sender's walk,
//!   [`Store::begin_snapshot`]); `install` (the receiver's [`Store::wipe`],
//!   [`Store::install_record`], [`Store::finish_install`]).
//! - [`StorageError`]: every failure.
//!
//! A data directory holds `LOCK` (an exclusive `flock` while a store is open),
//! `<16 hex digits>.seg` segment files, `CLIENTS` (the at-most-once table as of some LSN), and
//! transiently `*.new` (a segment being created), `*.tmp` (compaction or install outputs not yet
//! committed), `*.free` (retired segments kept for reuse), `COMPACT` (a committed compaction or
//! install whose clean-up may be unfinished) and `CLIENTS.tmp`. A segment's header is on disk
//! before its file is renamed to `.seg`, so an interrupted creation is always a `*.new` or
//! `*.tmp` file (deleted on open) and a `.seg` file without a valid header is corruption.
//!
//! # Durability contract
//!
//! - A write call that returned `Ok` has put its record into the shared mapping. It survives the
//!   process being killed at any instant (`SIGKILL`, panic, abort) in every [`Durability`] mode:
//!   the kernel owns those pages and writes them back.
//! - Surviving a machine crash or power loss needs the record flushed. [`Store::durable_lsn`] is
//!   the highest LSN known flushed. [`Store::sync`] flushes (msync) everything written so far;
//!   with [`Durability::Always`] the caller calls it once per batch of writes and acknowledges
//!   the batch afterwards (group commit). With [`Durability::Interval`], [`Store::tick`] flushes in
//!   the background every `ms` milliseconds. With [`Durability::Never`], only the kernel's own
//!   writeback (typically within 30 s) flushes.
//! - Recovery keeps every record whose checksum is valid; only a torn record at the end of the
//!   newest log segment (the write in progress when the process died) is cut, and logged. Any
//!   other damage makes [`Store::open`] fail with [`StorageError::Corrupt`] naming file and
//!   offset (and the command that repairs, `tandem-server --repair --data DIR`);
//!   [`Store::repair`] then keeps every valid record and reports what it drops.
//! - Compaction never loses or resurrects data, whenever the process dies: see `compaction`.
#![deny(missing_docs)]

mod clients;
mod compaction;
mod error;
#[cfg(test)]
mod fault_tests;
pub mod format;
mod index;
mod install;
mod log;
mod recovery;
mod segment;
mod snapshot;
#[cfg(test)]
mod tests;
mod worker;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::log::{LogCursor, ReplicatedWrite};
pub use clients::ClientEntry;
pub use error::{Corruption, StorageError};
pub use recovery::{DroppedRange, RecoveryReport, RepairReport, TornTail};
pub use snapshot::{SnapshotCursor, SnapshotRecord};

use format::{RecordKind, RecordMeta, SegmentKind, SEGMENT_HEADER_LEN};
use index::{Index, Slot};
use segment::{Segment, SyncRange};

/// A log sequence number: the position of a record in the log. 0 means "nothing yet"; the first
/// record written to a new store gets 1, and each later local write the next number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// When writes are flushed to the device. Whatever the mode, a write that returned survives the
/// process being killed; the mode only matters for machine crashes. See the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The caller flushes with [`Store::sync`] before acknowledging writes (once per batch).
    Always,
    /// [`Store::tick`] flushes in the background every `ms` milliseconds.
    Interval {
        /// Milliseconds between flushes, at least 1.
        ms: u64,
    },
    /// Flushing is left to the kernel.
    #[default]
    Never,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Interval { ms } => write!(f, "interval:{ms}"),
            Durability::Never => f.write_str("never"),
        }
    }
}

/// Why a string is not a [`Durability`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDurabilityError(String);

impl fmt::Display for ParseDurabilityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid durability {:?}: expected \"always\", \"never\" or \"interval:MS\" with MS a whole \
             number of milliseconds >= 1",
            self.0
        )
    }
}

impl std::error::Error for ParseDurabilityError {}

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Durability::Always),
            "never" => Ok(Durability::Never),
            _ => match s.strip_prefix("interval:").and_then(|ms| ms.parse::<u64>().ok()) {
                Some(ms) if ms >= 1 => Ok(Durability::Interval { ms }),
                _ => Err(ParseDurabilityError(s.to_string())),
            },
        }
    }
}

/// Store configuration. `Options::default()` suits a server; tests shrink `segment_len`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Bytes per log segment file, preallocated. A multiple of 4096, large enough for the
    /// largest record, at most 4 GiB - 4 KiB. Default 64 MiB. The first log segment of a new
    /// (or wiped) store is smaller ([`FIRST_LOG_SEGMENT_LEN`]) and each next one twice the
    /// previous, up to this, so that a new store takes little disk; compaction outputs are sized
    /// by what they keep.
    pub segment_len: u64,
    /// When writes are flushed. Default [`Durability::Never`].
    pub durability: Durability,
    /// Compaction starts when reclaimable dead bytes are at least this share of all record
    /// bytes (and at least `compact_min_dead_bytes`). In (0, 1]. Default 0.5.
    pub compact_dead_ratio: f64,
    /// ... and at least this many. `None` (the default): half of `segment_len`, so that one
    /// sealed segment whose records are all dead is enough whatever the segment size (a fixed
    /// figure above the segment size could never be reached by one segment, and a disk with
    /// room for one segment and a half then filled up with dead records). `Some(u64::MAX)`
    /// turns automatic compaction off.
    ///
    /// After a segment allocation failed for lack of space, both thresholds are lowered to
    /// "any reclaimable byte" until a compaction commits: on a full disk, reclaiming dead bytes
    /// is the only way writes can go on.
    pub compact_min_dead_bytes: Option<u64>,
    /// Longest key accepted. Default `wire::header::MAX_KEY_LEN` (1024); at most 65535.
    pub max_key_len: usize,
    /// Longest value accepted. Default `wire::header::MAX_PAYLOAD_LEN` (4048).
    pub max_value_len: usize,
    /// Longest key + value accepted, so that a record fits one protocol frame.
    /// Default `wire::header::MAX_PAYLOAD_LEN` (4048).
    pub max_payload_len: usize,
    /// Most time one compaction step in [`Store::tick`] may take, counted from the step's start;
    /// a step also takes no longer than the caller worked since the `now` it passed (but at
    /// least 25 µs), so a lightly loaded loop takes short steps. Default 200 µs: enough for
    /// compaction to keep up with a writer saturating the event loop (4000-byte PUTs at 50x16,
    /// ~1.2 GB/s), small enough not to cost that writer throughput.
    pub compact_step_budget: Duration,
    /// Keys to reserve index room for at open, avoiding growth pauses. Default 0.
    pub index_capacity: usize,
    /// Most entries the at-most-once table keeps ([`Store::client_entry`]); beyond it the entry
    /// with the smallest LSN is evicted. About 60 bytes of memory per entry. Default 100 000.
    pub max_clients: usize,
    /// Test hook: the background thread sleeps this long between the steps of a compaction
    /// commit, so crash tests can kill a process inside each window. Zero outside tests.
    #[doc(hidden)]
    pub debug_commit_step_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_len: 64 << 20,
            durability: Durability::Never,
            compact_dead_ratio: 0.5,
            compact_min_dead_bytes: None,
            max_key_len: wire::header::MAX_KEY_LEN,
            max_value_len: wire::header::MAX_PAYLOAD_LEN,
            max_payload_len: wire::header::MAX_PAYLOAD_LEN,
            compact_step_budget: Duration::from_micros(200),
            index_capacity: 0,
            max_clients: 100_000,
            debug_commit_step_delay: Duration::ZERO,
        }
    }
}

/// Smallest segment accepted.
pub const MIN_SEGMENT_LEN: u64 = 16 << 10;
/// Length of the first log segment of a new store (at most [`Options::segment_len`], at least
/// what the largest record needs); each later one is twice the one before, up to
/// `segment_len`. A new store then takes 1 MiB of disk, not 64, and a writer reaches full-size
/// segments after 127 MiB.
pub const FIRST_LOG_SEGMENT_LEN: u64 = 1 << 20;
/// Largest segment accepted (offsets in the index are 32 bits).
pub const MAX_SEGMENT_LEN: u64 = (u32::MAX as u64) & !4095;

impl Options {
    /// Checks the options for consistency.
    ///
    /// # Errors
    /// [`StorageError::InvalidOptions`] naming the offending field.
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = StorageError::InvalidOptions;
        if self.segment_len % 4096 != 0 || !(MIN_SEGMENT_LEN..=MAX_SEGMENT_LEN).contains(&self.segment_len) {
            return Err(bad("segment_len must be a multiple of 4096 between 16 KiB and 4 GiB - 4 KiB"));
        }
        if self.max_key_len == 0 || self.max_key_len > u16::MAX as usize {
            return Err(bad("max_key_len must be between 1 and 65535"));
        }
        if self.max_value_len > u32::MAX as usize || self.max_payload_len > u32::MAX as usize {
            return Err(bad("max_value_len and max_payload_len must fit in 32 bits"));
        }
        let largest = format::record_len(self.max_key_len, self.max_value_len.min(self.max_payload_len));
        if (largest + SEGMENT_HEADER_LEN) as u64 > self.segment_len {
            return Err(bad("segment_len is too small for the largest record the limits allow"));
        }
        if !(self.compact_dead_ratio > 0.0 && self.compact_dead_ratio <= 1.0) {
            return Err(bad("compact_dead_ratio must be in (0, 1]"));
        }
        if let Durability::Interval { ms: 0 } = self.durability {
            return Err(bad("durability interval must be at least 1 ms"));
        }
        Ok(())
    }

    /// Bytes a segment allocation leaves free on the file system: room for what a compaction
    /// commit writes besides segments (the at-most-once table, 32 bytes per client, and the
    /// marker), so that on a nearly full disk segments cannot take the space that the commit
    /// which frees space needs. 3.3 MB with the default `max_clients`.
    pub(crate) fn space_reserve(&self) -> u64 {
        (self.max_clients as u64 * 32 + (64 << 10)).next_multiple_of(4096)
    }

    /// The longest value allowed beside a key of `key_len` bytes.
    pub fn max_value_len_for(&self, key_len: usize) -> usize {
        self.max_value_len.min(self.max_payload_len.saturating_sub(key_len))
    }
}

/// Who produced a write: stored in its record so a server can rebuild its at-most-once table
/// from the log after a restart. Also what the caller already knows about the write's bytes
/// (`payload_crc`), which is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteMeta {
    /// The client's id.
    pub client_id: u64,
    /// The client's request id.
    pub request_id: u64,
    /// The CRC-32 (IEEE) of the key followed by the value passed with this call (for
    /// [`Store::append`], the suffix; for [`Store::delete`] and tombstones, the key alone), if
    /// the caller already has it from a check it made: a server takes it from the request
    /// frame's verified checksum ([`wire::Frame::payload_crc`]). The record's checksum is then
    /// derived from it ([`format::encode_record_header_with_payload_crc`]) instead of computed
    /// over the value a second time; the bytes written are the same. `None`: computed as usual.
    ///
    /// **Contract:** it must be the CRC of exactly these bytes, taken from a frame whose
    /// checksum was verified (or another source as trustworthy), never from the sender's word
    /// alone. A wrong value writes a record whose checksum does not match, which reads fine
    /// until the next [`Store::open`] refuses it as corrupt (`ChecksumMismatch`, fixed only by
    /// [`Store::repair`] dropping it). Debug builds recompute it on every write and panic on a
    /// mismatch. Set it per call: a `WriteMeta` reused for another key or value must not carry it.
    pub payload_crc: Option<u32>,
}

/// A value read from the store, borrowed from the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The value's bytes.
    pub value: &'a [u8],
    /// The value's version: the timestamp of its record (its LSN for local writes).
    pub version: u64,
}

/// One record of the log, borrowed from the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its log sequence number.
    pub lsn: Lsn,
    /// The key.
    pub key: &'a [u8],
    /// The value (empty for a tombstone).
    pub value: &'a [u8],
    /// Whether this record deletes the key.
    pub tombstone: bool,
    /// The value's version.
    pub timestamp: u64,
    /// Client id of the write that produced the record.
    pub client_id: u64,
    /// Request id of the write that produced the record.
    pub request_id: u64,
}

impl<'a> Record<'a> {
    fn from_view(v: &format::RecordView<'a>) -> Record<'a> {
        Record {
            lsn: Lsn(v.meta.lsn),
            key: v.key,
            value: v.value,
            tombstone: v.meta.kind == RecordKind::Tombstone,
            timestamp: v.meta.timestamp,
            client_id: v.meta.client_id,
            request_id: v.meta.request_id,
        }
    }
}

/// Counters describing a store. Byte counts are of record bytes (headers and padding included).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// Keys with a value.
    pub keys: u64,
    /// Bytes of the records the index points at.
    pub live_bytes: u64,
    /// Bytes of every other record: overwritten values, tombstones, copies left by compaction.
    pub dead_bytes: u64,
    /// Bytes of segment files on disk (preallocated, so mostly independent of the data).
    pub disk_bytes: u64,
    /// Segment files.
    pub segments: u32,
    /// Highest LSN written.
    pub last_lsn: Lsn,
    /// Highest LSN known flushed to the device.
    pub durable_lsn: Lsn,
    /// Compactions completed since open.
    pub compactions: u64,
    /// Whether a compaction is in progress.
    pub compacting: bool,
    /// The oldest LSN from which [`Store::log_from`] can still serve the log.
    pub log_start: Lsn,
    /// Bytes allocated by the index's hash table.
    pub index_bytes: u64,
    /// Background flushes (`Durability::Interval`) completed since open.
    pub background_flushes: u64,
    /// Record bytes appended to the log by writes since open (puts, deletes, appends,
    /// replicated writes; headers and padding included): what clients wrote, as the log
    /// counts it.
    pub bytes_written: u64,
    /// Record bytes compaction copied into its outputs since open. Compaction's write
    /// amplification is this divided by [`Stats::bytes_written`].
    pub compaction_bytes_copied: u64,
}

/// An open data directory. See the crate docs for the durability contract.
///
/// All methods take `&self` or `&mut self`: the store is used from one thread (a server's event
/// loop); it runs its own background thread for slow file-system work.
pub struct Store {
    dir: PathBuf,
    opts: Options,
    /// Held for the store's lifetime: the `flock` on `LOCK`.
    _lock: File,
    /// The directory itself, for fsyncing entries.
    dir_file: Arc<File>,
    /// Segment table; the index refers to segments by position here. `None` = free position.
    segments: Vec<Option<Segment>>,
    free_slots: Vec<u32>,
    /// Position of the log segment receiving writes.
    active: u32,
    next_segment_id: u64,
    index: Index,
    last_lsn: u64,
    durable_lsn: u64,
    /// Counts changes to directory entries (segments created or renamed)...
    dir_gen: u64,
    /// ... and the count the last directory fsync covered.
    dir_synced_gen: u64,
    poisoned: bool,
    /// Reused buffer for `append`.
    scratch: Vec<u8>,
    compaction: compaction::State,
    compactions: u64,
    log_start: u64,
    worker: worker::Worker,
    flush_in_flight: bool,
    /// Background flushes that succeeded.
    background_flushes: u64,
    /// Record bytes appended by writes since open ([`Stats::bytes_written`]).
    bytes_written: u64,
    /// Record bytes copied by compaction since open ([`Stats::compaction_bytes_copied`]).
    compaction_bytes_copied: u64,
    next_flush: Option<Instant>,
    recovery: RecoveryReport,
    /// The next log segment, created and prefaulted ahead of need by the background thread.
    prepared: Option<Segment>,
    /// A `Prepare` job is under way.
    preparing: bool,
    /// The last `Prepare` failed (disk full?), or its segment was given up to make room for a
    /// compaction output: do not prepare again until a roll succeeds.
    prepare_failed: bool,
    /// An id below the one of the segment being prepared and above every log segment's, kept
    /// for a roll that cannot wait for it (see [`Store::prepare_next_segment`]).
    spare_log_id: Option<u64>,
    /// A segment allocation failed for lack of space since the last compaction commit: compaction
    /// thresholds drop to "anything reclaimable" (see [`Options::compact_min_dead_bytes`]).
    space_pressure: bool,
    /// The at-most-once table (see `clients`).
    clients: clients::ClientTable,
    /// A buffer for the table's file image, reused from one compaction commit to the next.
    clients_image: Vec<u8>,
    /// [`Store::retain_log_from`]: compaction leaves log segments with records at or above it.
    log_pin: Option<u64>,
    /// Snapshots begun and not ended: while any is, compaction holds still.
    snapshot_holds: u32,
    /// A snapshot install in progress (see `install`).
    install: Option<Box<install::Install>>,
}

/// Stage of [`Store::prefetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// The record's first two cache lines.
    Header,
    /// The rest of the record; needs the header, so run after `Header` over the whole batch.
    Value,
}

/// Hints that the cache line holding `bytes[0]` will be read soon.
#[inline(always)]
fn prefetch_line(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is only a hint: it never faults, even for an invalid address, and
    // reads nothing into the program's state. The pointer is in bounds of a live slice anyway.
    // Measured: GET of 4000-byte values at 50 x 16 (see BENCHMARKS.md).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

fn lookup_key<'s>(segments: &'s [Option<Segment>], slot: &Slot) -> &'s [u8] {
    match segments.get(slot.seg as usize) {
        Some(Some(seg)) => format::key_unchecked(seg.from(slot.off)),
        _ => &[],
    }
}

fn record_at<'s>(segments: &'s [Option<Segment>], seg: u32, off: u32) -> Option<format::RecordView<'s>> {
    match segments.get(seg as usize) {
        Some(Some(s)) => format::view_record_unchecked(s.from(off)),
        _ => None,
    }
}

impl Store {
    /// Opens (creating if absent) the data directory `dir`: takes its lock, finishes or discards
    /// an interrupted compaction, scans and verifies every segment, rebuilds the index and
    /// flushes. Logs a summary at `info`; see [`Store::recovery_report`].
    ///
    /// # Errors
    /// - [`StorageError::Locked`] if another store has the directory open.
    /// - [`StorageError::Corrupt`] if any record other than a torn tail fails verification;
    ///   nothing is changed on disk, and [`Store::repair`] can then salvage every valid record.
    /// - [`StorageError::InvalidOptions`], [`StorageError::Io`], [`StorageError::NoSpace`].
    pub fn open(dir: &Path, opts: Options) -> Result<Store, StorageError> {
        recovery::open(dir, opts)
    }

    /// What the last [`Store::open`] found and did.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Repairs a data directory that [`Store::open`] refused as corrupt, keeping every record
    /// whose checksum is valid. Run it offline (it takes the directory lock). Afterwards `open`
    /// succeeds. The report lists every byte range dropped, with file, offset, length and reason.
    ///
    /// Dropping a damaged tombstone can bring an older value of its key back; the report is the
    /// record of what was lost.
    ///
    /// # Errors
    /// [`StorageError::Locked`], [`StorageError::Io`], [`StorageError::NoSpace`].
    pub fn repair(dir: &Path, opts: &Options) -> Result<RepairReport, StorageError> {
        recovery::repair(dir, opts)
    }

    /// The value of `key` and its version, borrowed from the mapping; `None` if absent.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<Entry<'_>> {
        let slot = self.find(key)?;
        let r = record_at(&self.segments, slot.seg, slot.off)?;
        Some(Entry { value: r.value, version: r.meta.timestamp })
    }

    /// Asks the CPU to start loading what a [`Store::get`] of `key` will read, without waiting
    /// for it: a server calls this for every GET of a pipelined batch before executing the
    /// first, so that the cache misses of the batch overlap instead of coming one after the
    /// other. Two stages, called over the whole batch in turn: [`Prefetch::Header`] loads the
    /// record's first cache lines (its header, key and the value's start); [`Prefetch::Value`]
    /// then reads the value's length from there and loads the rest. A hint only: it changes
    /// nothing, and a key that is absent or shares a hash with another costs a wasted load.
    #[inline]
    pub fn prefetch(&self, key: &[u8], stage: Prefetch) {
        let hash = self.index.hash(key);
        let Some(slot) = self.index.find(hash, |s| s.hash == hash) else { return };
        let Some(Some(seg)) = self.segments.get(slot.seg as usize) else { return };
        let rec = seg.from(slot.off);
        let (from, to) = match stage {
            Prefetch::Header => (0, 128),
            Prefetch::Value => {
                let Some(r) = format::view_record_unchecked(rec) else { return };
                (128, r.len)
            }
        };
        let rec = rec.get(..to.min(rec.len())).unwrap_or(&[]);
        let mut at = from;
        while at < rec.len() {
            prefetch_line(&rec[at..]);
            at += 64;
        }
    }

    #[inline]
    fn find(&self, key: &[u8]) -> Option<Slot> {
        let hash = self.index.hash(key);
        let segments = &self.segments;
        self.index.find(hash, |s| s.hash == hash && lookup_key(segments, s) == key).copied()
    }

    /// Sets `key` to `value`. Returns the record's LSN.
    ///
    /// The write is in the mapping when this returns (it survives a process kill); it is durable
    /// against machine crashes once [`Store::durable_lsn`] reaches the returned LSN.
    ///
    /// # Errors
    /// [`StorageError::EmptyKey`], [`StorageError::KeyTooLong`], [`StorageError::ValueTooLong`];
    /// [`StorageError::NoSpace`] if a new segment was needed and the disk is full (nothing is
    /// written, the store stays usable); [`StorageError::Poisoned`] after a failed flush.
    pub fn put(&mut self, key: &[u8], value: &[u8], meta: WriteMeta) -> Result<Lsn, StorageError> {
        self.check_limits(key, value.len())?;
        let lsn = self.last_lsn + 1;
        self.apply(RecordKind::Put, key, &[value], lsn, lsn, meta)?;
        Ok(Lsn(lsn))
    }

    /// Deletes `key`, writing a tombstone. Returns `None`, writing nothing, if the key is absent.
    ///
    /// # Errors
    /// As for [`Store::put`].
    pub fn delete(&mut self, key: &[u8], meta: WriteMeta) -> Result<Option<Lsn>, StorageError> {
        self.check_limits(key, 0)?;
        if self.find(key).is_none() {
            return Ok(None);
        }
        let lsn = self.last_lsn + 1;
        self.apply(RecordKind::Tombstone, key, &[], lsn, lsn, meta)?;
        Ok(Some(Lsn(lsn)))
    }

    /// Appends `suffix` to the value of `key` (an absent key counts as empty). Returns the LSN.
    ///
    /// # Errors
    /// [`StorageError::ValueTooLong`] if the result would exceed the limit for this key; otherwise
    /// as for [`Store::put`].
    pub fn append(&mut self, key: &[u8], suffix: &[u8], meta: WriteMeta) -> Result<Lsn, StorageError> {
        self.check_limits(key, 0)?;
        // The old value may live in the segment about to be written, so copy it out first.
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let old = self.find(key).and_then(|slot| match self.segments.get(slot.seg as usize) {
            Some(Some(seg)) => Some(seg.from(slot.off)),
            _ => None,
        });
        let old_view = old.and_then(format::view_record_unchecked);
        scratch.extend_from_slice(old_view.map_or(&[][..], |r| r.value));
        let total = scratch.len() + suffix.len();
        let max = self.opts.max_value_len_for(key.len());
        if total > max {
            self.scratch = scratch;
            return Err(StorageError::ValueTooLong { len: total, max });
        }
        // The caller's CRC covers key ‖ suffix; the record holds key ‖ old ‖ suffix. The old
        // record's own checksum gives crc(key ‖ old) without reading the old value, and then
        //   crc(key ‖ old ‖ suffix) = shift(crc(key ‖ old) ^ crc(key), |suffix|) ^ crc(key ‖ suffix)
        // (combine key ‖ old with the suffix, whose CRC is key ‖ suffix's with the key taken off;
        // shift is linear, so both shifts by |suffix| are one). See `wire::crc`.
        let payload_crc = match (meta.payload_crc, old_view.and(old)) {
            (Some(crc), Some(record)) => format::payload_crc_unchecked(record)
                .map(|key_old| wire::crc::shift(key_old ^ crc32fast::hash(key), suffix.len() as u64) ^ crc),
            // No old value: key ‖ suffix is the whole payload.
            (crc, _) => crc,
        };
        let meta = WriteMeta { payload_crc, ..meta };
        let lsn = self.last_lsn + 1;
        let result = self.apply(RecordKind::Put, key, &[&scratch, suffix], lsn, lsn, meta);
        self.scratch = scratch;
        result.map(|()| Lsn(lsn))
    }

    fn check_limits(&self, key: &[u8], value_len: usize) -> Result<(), StorageError> {
        if key.is_empty() {
            return Err(StorageError::EmptyKey);
        }
        if key.len() > self.opts.max_key_len {
            return Err(StorageError::KeyTooLong { len: key.len(), max: self.opts.max_key_len });
        }
        let max = self.opts.max_value_len_for(key.len());
        if value_len > max {
            return Err(StorageError::ValueTooLong { len: value_len, max });
        }
        Ok(())
    }

    /// The single write path: append a record with the given LSN and timestamp, update the index
    /// and, for a write with a client id, the at-most-once table. [`Store::apply_replicated`]
    /// applies a primary's records through here with the primary's LSN and timestamp.
    fn apply(
        &mut self,
        kind: RecordKind,
        key: &[u8],
        value: &[&[u8]],
        lsn: u64,
        timestamp: u64,
        meta: WriteMeta,
    ) -> Result<(), StorageError> {
        if self.poisoned | self.install.is_some() {
            return Err(self.write_refusal());
        }
        let value_len: usize = value.iter().map(|p| p.len()).sum();
        let len = format::record_len(key.len(), value_len);
        if !self.active_segment().is_some_and(|s| s.has_room(len)) {
            self.roll_for(len)?;
            // A writer filled a segment: start on the next one at once. A heavy writer fills
            // 64 MiB in ~30 ms, about what preparing a recycled segment takes, so waiting until
            // the new one is an eighth full left half the rolls with nothing prepared (their
            // writes then fault page by page). Rolls at open and by `compact_now` wait for the
            // eighth, so an idle store keeps no prefaulted segment in memory.
            if self.prepared.is_none() && !self.preparing {
                self.prepare_next_segment();
            }
        }
        let rmeta =
            RecordMeta { kind, lsn, timestamp, client_id: meta.client_id, request_id: meta.request_id };
        let active = self.active;
        let tag = self.active_segment().map_or(0, |s| format::segment_tag(s.id));
        let header = match meta.payload_crc {
            Some(crc) => format::encode_record_header_with_payload_crc(&rmeta, tag, key, value, crc),
            None => format::encode_record_header_tagged(&rmeta, tag, key, value),
        };
        let Some(Some(seg)) = self.segments.get_mut(active as usize) else {
            return Err(StorageError::Poisoned);
        };
        let off = seg.append(&header, key, value, lsn);
        let seg_len = seg.len();
        self.last_lsn = lsn;
        self.bytes_written += len as u64;
        // Early (an eighth in), so the background thread has time to allocate and prefault the
        // next segment even when a writer fills one in tens of milliseconds.
        if off as u64 * 8 > seg_len as u64 && self.prepared.is_none() && !self.preparing {
            self.prepare_next_segment();
        }
        let hash = self.index.hash(key);
        let old = match kind {
            RecordKind::Put => {
                self.seg_mut(active).live_bytes += len as u64;
                let new = Slot { hash, seg: active, off };
                let Store { index, segments, .. } = self;
                match index.find_mut(hash, |s| s.hash == hash && lookup_key(segments, s) == key) {
                    Some(slot) => Some(std::mem::replace(slot, new)),
                    None => {
                        index.insert_new(new);
                        None
                    }
                }
            }
            RecordKind::Tombstone => {
                self.seg_mut(active).tombstones += 1;
                let Store { index, segments, .. } = self;
                index.remove(hash, |s| s.hash == hash && lookup_key(segments, s) == key)
            }
        };
        if let Some(old) = old {
            self.release(old);
        }
        if meta.client_id != 0 {
            let entry = ClientEntry { request_id: meta.request_id, lsn: Lsn(lsn), version: timestamp };
            self.clients.record(meta.client_id, entry);
        }
        Ok(())
    }

    /// Why `apply` refuses to write (cold path).
    #[cold]
    fn write_refusal(&self) -> StorageError {
        if self.poisoned {
            StorageError::Poisoned
        } else {
            StorageError::Install("writes are refused while a snapshot install is in progress")
        }
    }

    /// Accounts for the record at `old` no longer being pointed at.
    fn release(&mut self, old: Slot) {
        let len = record_at(&self.segments, old.seg, old.off).map_or(0, |r| r.len as u64);
        if let Some(Some(seg)) = self.segments.get_mut(old.seg as usize) {
            seg.live_bytes = seg.live_bytes.saturating_sub(len);
        }
    }

    fn active_segment(&self) -> Option<&Segment> {
        self.segments.get(self.active as usize).and_then(|s| s.as_ref())
    }

    fn seg_mut(&mut self, slot: u32) -> &mut Segment {
        match self.segments.get_mut(slot as usize) {
            Some(Some(s)) => s,
            // Slots handed out by `add_segment` stay occupied while anything refers to them.
            _ => unreachable!("segment slot {slot} is empty"),
        }
    }

    /// Asks the background thread to create, allocate, map and prefault the next log segment, so
    /// that rolling over costs a header write and a rename instead of `fallocate` + `mmap` on the
    /// write path, and writes into the new segment take no page faults (zero-filling fresh
    /// page-cache pages on first touch is most of the cost of a 4 KiB put).
    fn prepare_next_segment(&mut self) {
        #[cfg(test)]
        if segment::ALLOCS_BEFORE_ENOSPC.get().is_some() {
            return; // the allocation-failure tests need every allocation on this thread
        }
        if self.prepare_failed {
            return;
        }
        // Log segments must be in id order (recovery takes the highest id for the newest) and a
        // segment's id is on disk before it can be renamed to `.seg`, so a roll that cannot wait
        // for this one takes the id below it: this one then still follows it in the log. (A
        // prepared segment that lost that order is given up, see `roll_for`; under a heavy
        // writer that made every other roll miss its prepared segment.)
        self.spare_log_id = Some(self.next_segment_id);
        let id = self.next_segment_id + 1;
        self.next_segment_id += 2;
        let len = self.next_log_len();
        #[cfg(test)]
        if segment::DISK_QUOTA.get().is_some() {
            // The small-disk hook is per thread: prepare here, as the background thread would.
            let result = worker::prepare_segment(
                &self.dir,
                id,
                len,
                self.opts.segment_len,
                self.space_reserve(),
                false,
            );
            self.prepared_done(result);
            return;
        }
        self.preparing =
            self.worker.prepare(self.dir.clone(), id, len, self.opts.segment_len, self.space_reserve());
    }

    /// Takes the result of preparing the next log segment.
    fn prepared_done(&mut self, result: Result<Segment, StorageError>) {
        self.preparing = false;
        match result {
            Ok(seg) => self.prepared = Some(seg),
            Err(e) => {
                // Not fatal: the roll tries again (smaller, if need be) and reports the error to a
                // writer.
                if matches!(e, StorageError::NoSpace) {
                    self.space_pressure = true;
                    ::log::info!("could not prepare the next segment: {e}");
                } else {
                    ::log::warn!("could not prepare the next segment: {e}");
                }
                self.prepare_failed = true;
            }
        }
    }

    /// The length of the next log segment: twice the active one, between the first segment's
    /// length and `segment_len` (see [`FIRST_LOG_SEGMENT_LEN`]).
    fn next_log_len(&self) -> u64 {
        let first = self.first_log_len();
        match self.active_segment() {
            Some(seg) => (seg.len() as u64 * 2).clamp(first, self.opts.segment_len),
            None => first,
        }
    }

    fn first_log_len(&self) -> u64 {
        let o = &self.opts;
        let largest = format::record_len(o.max_key_len, o.max_value_len.min(o.max_payload_len));
        let needed = ((SEGMENT_HEADER_LEN + largest) as u64).next_multiple_of(4096);
        FIRST_LOG_SEGMENT_LEN.max(needed).max(MIN_SEGMENT_LEN).min(o.segment_len)
    }

    /// Seals the active log segment and starts a new one.
    fn roll(&mut self) -> Result<(), StorageError> {
        self.roll_for(0)
    }

    /// Seals the active log segment and starts a new one with room for a record of `need`
    /// bytes.
    ///
    /// The new segment is the prepared one if there is one, else a retired file from the pool,
    /// else a new file of [`Store::next_log_len`] bytes, or on a full disk the largest smaller
    /// one that fits (see [`Store::allocate`]). Rolling into a smaller segment keeps writes
    /// going and seals the old one, whose dead bytes compaction can then reclaim; the active
    /// segment is never a compaction input, so a store that could not roll would otherwise
    /// keep its dead bytes for good.
    ///
    /// If not even a segment for this record fits, the active segment is sealed anyway when it
    /// is mostly dead (writes are then refused until a roll succeeds): compaction can reclaim it.
    ///
    /// # Errors
    /// [`StorageError::NoSpace`]; I/O errors. Nothing changes then (but for that sealing).
    fn roll_for(&mut self, need: usize) -> Result<(), StorageError> {
        self.poll_worker()?;
        #[cfg(test)]
        if segment::ALLOCS_BEFORE_ENOSPC.get().is_some() {
            self.discard_prepared();
        }
        // Log segments must be in id order (recovery takes the highest id for the newest). A
        // segment prepared before two rolls that could not wait for it has a lower id than the
        // second one's: not usable.
        let newest_log =
            self.segments.iter().flatten().filter(|s| s.kind == SegmentKind::Log).map(|s| s.id).max();
        if self.prepared.as_ref().is_some_and(|p| newest_log.is_some_and(|n| p.id < n)) {
            self.discard_prepared();
        }
        let mut seg = match self.prepared.take() {
            Some(mut seg) => {
                seg.adopt(self.last_lsn);
                seg
            }
            None => {
                ::log::debug!("rolling over without a prepared segment (preparing={})", self.preparing);
                match self.new_log_segment(need) {
                    Ok(seg) => seg,
                    Err(e) => {
                        if matches!(e, StorageError::NoSpace) {
                            self.seal_active_if_mostly_dead();
                        }
                        return Err(e);
                    }
                }
            }
        };
        let path = self.dir.join(segment::segment_file_name(seg.id, "seg"));
        if let Err(e) = std::fs::rename(&seg.path, &path) {
            let _ = std::fs::remove_file(&seg.path);
            return Err(StorageError::io(format!("rename {} into place", seg.path.display()), e));
        }
        seg.path = path;
        let id = seg.id;
        self.dir_gen += 1;
        if let Some(Some(old)) = self.segments.get_mut(self.active as usize) {
            old.sealed = true;
        }
        self.active = self.add_segment(seg);
        self.prepare_failed = false;
        ::log::debug!("new log segment id={id}");
        Ok(())
    }

    /// A new log segment named `*.new`, made on the caller's thread (nothing was prepared), its
    /// header on disk: see [`Store::roll_for`].
    fn new_log_segment(&mut self, need: usize) -> Result<Segment, StorageError> {
        let newest_log =
            self.segments.iter().flatten().filter(|s| s.kind == SegmentKind::Log).map(|s| s.id).max();
        let spare = self.spare_log_id.take().filter(|&id| newest_log.is_none_or(|n| id > n));
        let id = spare.unwrap_or(self.next_segment_id);
        let len = self.next_log_len();
        let min = ((SEGMENT_HEADER_LEN + need) as u64).next_multiple_of(4096).max(MIN_SEGMENT_LEN).min(len);
        let reserve = self.space_reserve();
        let seg = match worker::prepare_segment(&self.dir, id, len, self.opts.segment_len, reserve, false) {
            Ok(seg) => seg,
            Err(StorageError::NoSpace) => {
                let seg = self.allocate(id, SegmentKind::Log, len, min, self.last_lsn, "new")?;
                if let Err(e) = seg.sync_header() {
                    let path = seg.path.clone();
                    drop(seg);
                    let _ = std::fs::remove_file(path);
                    return Err(e);
                }
                if (seg.len() as u64) < len {
                    ::log::warn!(
                        "disk nearly full: new log segment {} of {} bytes instead of {len}",
                        seg.path.display(),
                        seg.len()
                    );
                }
                seg
            }
            Err(e) => return Err(e),
        };
        if spare.is_none() {
            self.next_segment_id += 1;
        }
        let mut seg = seg;
        seg.adopt(self.last_lsn);
        seg.advise_random();
        Ok(seg)
    }

    /// Creates segment `id` of `len` bytes. On a full disk it first gives back what the store
    /// holds in reserve (retired files in the pool, the prepared next log segment) and then
    /// takes the largest of `len`, `len / 2`, `len / 4`, ... (whole pages, at least `min`) that
    /// fits, and notes the pressure (compaction thresholds drop until a compaction commits).
    ///
    /// # Errors
    /// [`StorageError::NoSpace`] if not even `min` bytes fit; I/O errors.
    pub(crate) fn allocate(
        &mut self,
        id: u64,
        kind: SegmentKind,
        len: u64,
        min: u64,
        base_lsn: u64,
        ext: &str,
    ) -> Result<Segment, StorageError> {
        let reserve = self.space_reserve();
        match Segment::create(&self.dir, id, kind, len, base_lsn, ext, reserve) {
            Err(StorageError::NoSpace) => {}
            other => return other,
        }
        self.space_pressure = true;
        self.release_reserves();
        let mut len = len;
        loop {
            match Segment::create(&self.dir, id, kind, len, base_lsn, ext, reserve) {
                Err(StorageError::NoSpace) => {
                    let next = (len / 2).next_multiple_of(4096).max(min);
                    if next >= len {
                        return Err(StorageError::NoSpace);
                    }
                    len = next;
                }
                other => return other,
            }
        }
    }

    pub(crate) fn space_reserve(&self) -> u64 {
        self.opts.space_reserve()
    }

    /// Deletes the retired files kept for reuse and the prepared next log segment: on a full
    /// disk their blocks are better spent on what cannot wait (a compaction output, the next
    /// log segment). No more segment is prepared until a roll succeeds.
    fn release_reserves(&mut self) {
        for free in segment::free_files(&self.dir).unwrap_or_default() {
            match std::fs::remove_file(&free) {
                Ok(()) => ::log::info!("disk full: deleted the retired segment {}", free.display()),
                Err(e) => ::log::debug!("could not delete {}: {e}", free.display()),
            }
        }
        if self.prepared.is_some() {
            self.discard_prepared();
            self.prepare_failed = true;
        }
    }

    /// After a roll failed for lack of space: seals the active log segment if most of it is
    /// reclaimable and the retention pin does not hold it, so that compaction can take it.
    /// Writes then find no active segment and retry the roll, which succeeds once compaction
    /// has retired this segment (its file is recycled) or freed other space.
    fn seal_active_if_mostly_dead(&mut self) {
        let Some(seg) = self.active_segment() else { return };
        let reclaimable = seg.reclaimable_bytes();
        if reclaimable == 0 || reclaimable * 2 < seg.used_bytes() || self.pinned(seg) {
            return;
        }
        ::log::warn!(
            "disk full: sealing {} ({reclaimable} reclaimable bytes) so that compaction can reclaim it; \
             writes are refused until then",
            seg.path.display()
        );
        self.seg_mut(self.active).sealed = true;
        self.active = u32::MAX;
        self.space_pressure = true;
    }

    /// Deletes a prepared segment that will not be used.
    fn discard_prepared(&mut self) {
        if let Some(seg) = self.prepared.take() {
            let path = seg.path.clone();
            drop(seg);
            let _ = std::fs::remove_file(path);
        }
    }

    fn add_segment(&mut self, seg: Segment) -> u32 {
        match self.free_slots.pop() {
            Some(slot) => {
                self.segments[slot as usize] = Some(seg);
                slot
            }
            None => {
                self.segments.push(Some(seg));
                (self.segments.len() - 1) as u32
            }
        }
    }

    fn take_segment(&mut self, slot: u32) -> Option<Segment> {
        let seg = self.segments.get_mut(slot as usize)?.take();
        if seg.is_some() {
            self.free_slots.push(slot);
        }
        seg
    }

    /// Flushes (msync) everything written since the last flush, and the directory if segments
    /// were created. Afterwards [`Store::durable_lsn`] equals [`Store::last_lsn`]. Call it once per
    /// batch of writes (group commit), then acknowledge the batch.
    ///
    /// # Errors
    /// [`StorageError::Io`]/[`StorageError::NoSpace`] if the flush failed. The store is then
    /// poisoned: the kernel may have dropped the unwritten pages, so later writes fail with
    /// [`StorageError::Poisoned`] until the store is reopened.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        self.poll_worker()?;
        let lsn = self.last_lsn;
        for seg in self.segments.iter_mut().flatten() {
            if let Err(e) = seg.flush() {
                self.poisoned = true;
                ::log::error!("flush of {} failed, refusing writes until reopened: {e}", seg.path.display());
                return Err(StorageError::io(format!("msync {}", seg.path.display()), e));
            }
        }
        if self.dir_gen > self.dir_synced_gen {
            let gen = self.dir_gen;
            if let Err(e) = self.dir_file.sync_all() {
                self.poisoned = true;
                return Err(StorageError::io(format!("fsync directory {}", self.dir.display()), e));
            }
            self.dir_synced_gen = gen;
        }
        self.durable_lsn = self.durable_lsn.max(lsn);
        Ok(())
    }

    /// The highest LSN written.
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.last_lsn)
    }

    /// The highest LSN known to be flushed to the device.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable_lsn)
    }

    /// Does whatever background work is due; call it from the event loop every few milliseconds
    /// (see [`Store::next_deadline`]). It starts an interval flush when one is due (the flush
    /// itself runs on the background thread), picks up finished background work, and runs one
    /// compaction step of at most [`Options::compact_step_budget`]. It returns in about that time.
    ///
    /// # Errors
    /// A background flush or compaction commit failed ([`StorageError::Io`]/`NoSpace`); the store
    /// is then poisoned (writes refused until reopened, reads go on). A compaction that cannot
    /// allocate an output segment on a full disk is not an error here: it pauses, logs a warning
    /// and retries on a later tick; nothing is lost.
    pub fn tick(&mut self, now: Instant) -> Result<(), StorageError> {
        self.poll_worker()?;
        if self.poisoned {
            return Ok(());
        }
        if let Durability::Interval { ms } = self.opts.durability {
            let due = self.next_flush.is_none_or(|t| now >= t);
            if due && !self.flush_in_flight {
                if self.has_unflushed() {
                    self.start_background_flush();
                }
                self.next_flush = Some(now + Duration::from_millis(ms));
            }
        }
        self.compaction_tick(now)
    }

    /// When [`Store::tick`] next has work: an interval flush falling due, a compaction in progress
    /// or waiting to start (then "now"), or background work to pick up. `None` if nothing is
    /// pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.poisoned {
            return None;
        }
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut at = |t: Instant| deadline = Some(deadline.map_or(t, |d| d.min(t)));
        if let Durability::Interval { .. } = self.opts.durability {
            if self.flush_in_flight {
                at(now + Duration::from_millis(1));
            } else if self.has_unflushed() {
                at(self.next_flush.unwrap_or(now));
            }
        }
        match &self.compaction {
            compaction::State::Idle if self.should_compact() => at(now),
            compaction::State::Idle => {}
            // Paused while a snapshot walk or an install holds compaction: nothing to do.
            compaction::State::Copying(_) if self.compaction_held() => {}
            compaction::State::Copying(c) => at(c.retry_at.unwrap_or(now)),
            compaction::State::Committing(_) => at(now + Duration::from_millis(1)),
            compaction::State::Deferred(_, retry) => at(*retry),
        }
        deadline
    }

    fn has_unflushed(&self) -> bool {
        self.dir_gen > self.dir_synced_gen || self.segments.iter().flatten().any(|s| !s.is_synced())
    }

    fn start_background_flush(&mut self) {
        let (ranges, marks) = self.unflushed();
        let dir = if marks.dir_gen > self.dir_synced_gen { Some(Arc::clone(&self.dir_file)) } else { None };
        self.flush_in_flight = true;
        self.worker.submit(worker::Job::Flush { ranges, dir, lsn: self.last_lsn, marks });
    }

    /// The byte ranges with unflushed writes, and what flushing them now will cover.
    pub(crate) fn unflushed(&self) -> (Vec<SyncRange>, worker::FlushMarks) {
        self.unflushed_of(|_| true)
    }

    /// As [`Store::unflushed`], for the segments `which` selects.
    pub(crate) fn unflushed_of(
        &self,
        which: impl Fn(&Segment) -> bool,
    ) -> (Vec<SyncRange>, worker::FlushMarks) {
        let mut ranges = Vec::new();
        let mut marks = worker::FlushMarks { segments: Vec::new(), dir_gen: self.dir_gen };
        for seg in self.segments.iter().flatten().filter(|s| !s.is_synced() && which(s)) {
            ranges.push(seg.unflushed_range());
            marks.segments.push((seg.id, seg.write_off));
        }
        (ranges, marks)
    }

    /// Records what a successful background flush covered.
    pub(crate) fn apply_marks(&mut self, marks: worker::FlushMarks) {
        for (id, upto) in marks.segments {
            if let Some(seg) = self.segments.iter_mut().flatten().find(|s| s.id == id) {
                seg.synced_upto = seg.synced_upto.max(upto);
            }
        }
        self.dir_synced_gen = self.dir_synced_gen.max(marks.dir_gen);
    }

    /// Picks up finished background work.
    fn poll_worker(&mut self) -> Result<(), StorageError> {
        while let Some(done) = self.worker.try_result() {
            self.handle_done(done)?;
        }
        Ok(())
    }

    fn handle_done(&mut self, done: worker::Done) -> Result<(), StorageError> {
        match done {
            worker::Done::Flushed { lsn, marks, result } => {
                self.flush_in_flight = false;
                match result {
                    Ok(()) => {
                        self.apply_marks(marks);
                        self.durable_lsn = self.durable_lsn.max(lsn);
                        self.background_flushes += 1;
                    }
                    Err(e) => {
                        self.poisoned = true;
                        ::log::error!("background flush failed, refusing writes until reopened: {e}");
                        return Err(StorageError::io("background fdatasync", e));
                    }
                }
            }
            worker::Done::Committed { lsn, marks, result, clients } => {
                self.clients_image = clients;
                self.finish_commit(lsn, marks, result)?
            }
            worker::Done::Prepared(result) => self.prepared_done(result),
            worker::Done::CommitDeferred(job) => self.commit_deferred(job),
        }
        Ok(())
    }

    /// Every live record (one per key with a value), in no particular order.
    pub fn iter_live(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        let segments = &self.segments;
        self.index
            .iter()
            .filter_map(move |s| record_at(segments, s.seg, s.off).map(|v| Record::from_view(&v)))
    }

    /// The log from `from` onward: every record with `lsn >= from`, in LSN order, tombstones
    /// included. `Lsn(0)` means from the beginning. It borrows the store; a reader that must
    /// keep its place across writes uses a [`LogCursor`] with [`Store::read_log`] instead.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] if compaction discarded part of that range; `oldest` says from
    /// where the log is still complete.
    pub fn log_from(&self, from: Lsn) -> Result<impl Iterator<Item = Record<'_>> + '_, StorageError> {
        let from = from.0.max(1);
        if from < self.log_start {
            return Err(StorageError::Compacted { oldest: Lsn(self.log_start) });
        }
        let mut cursor = LogCursor::new(Lsn(from));
        Ok(std::iter::from_fn(move || self.read_log(&mut cursor).ok().flatten()))
    }

    /// Recomputes where the complete log starts: the log segments form a chain of consecutive
    /// LSN ranges ending at the newest; anything before the chain was compacted.
    fn recompute_log_start(&mut self) {
        let mut ranges: Vec<(u64, u64)> = self
            .segments
            .iter()
            .flatten()
            .filter(|s| s.kind == SegmentKind::Log && s.min_lsn <= s.max_lsn)
            .map(|s| (s.min_lsn, s.max_lsn))
            .collect();
        ranges.sort_unstable();
        let mut start = self.last_lsn + 1;
        for &(min, max) in ranges.iter().rev() {
            if max + 1 >= start {
                start = start.min(min);
            } else {
                break;
            }
        }
        self.log_start = start;
    }

    /// Counters; cheap enough for a metrics scrape (walks the segment table, not the index).
    pub fn stats(&self) -> Stats {
        let (mut live, mut used, mut disk, mut n) = (0u64, 0u64, 0u64, 0u32);
        for s in self.segments.iter().flatten() {
            live += s.live_bytes;
            used += s.used_bytes();
            disk += s.len() as u64;
            n += 1;
        }
        Stats {
            keys: self.index.len() as u64,
            live_bytes: live,
            dead_bytes: used.saturating_sub(live),
            disk_bytes: disk,
            segments: n,
            last_lsn: Lsn(self.last_lsn),
            durable_lsn: Lsn(self.durable_lsn),
            compactions: self.compactions,
            compacting: !matches!(self.compaction, compaction::State::Idle),
            log_start: Lsn(self.log_start),
            index_bytes: self.index.allocation_bytes() as u64,
            background_flushes: self.background_flushes,
            bytes_written: self.bytes_written,
            compaction_bytes_copied: self.compaction_bytes_copied,
        }
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Let a compaction commit that is under way finish and be accounted for; the worker's own
        // drop would wait for it anyway.
        while let Some(done) = self.worker.wait_result() {
            let _ = self.handle_done(done);
        }
        self.discard_prepared();
        if self.opts.durability != Durability::Never && !self.poisoned {
            if let Err(e) = self.sync() {
                ::log::error!("flush on close of {} failed: {e}", self.dir.display());
            }
        }
    }
}
