//! Opening a data directory: finish or discard an interrupted compaction, scan and verify every
//! segment, apply the torn-tail rule, rebuild the index. And the offline [`repair`].
//!
//! # Torn tail or corruption
//!
//! A process killed while writing a record leaves that record incomplete: its checksum fails, or
//! its header is partly zero. It can only be the last record of the newest log segment, with
//! nothing valid after it. So, scanning each segment from its start:
//!
//! - the first record that fails verification in the newest log segment, with no valid record
//!   anywhere after it, is a **torn tail**: its bytes (up to the last non-zero byte) are zeroed,
//!   a warning names file, offset and length, and [`RecoveryReport::torn_tail`] records it;
//! - any other failure (in an older segment, in a compaction output, or followed by a record whose
//!   checksum is valid) is **corruption**: `open` fails with [`StorageError::Corrupt`] naming file
//!   and offset, and changes nothing. [`repair`] then keeps every valid record.
//!
//! After the scan, of all records of a key the one with the highest LSN wins, tombstones
//! included; keys whose winner is a tombstone are then dropped from the index. Segment order
//! therefore does not matter, and duplicate copies (from an interrupted compaction) are harmless.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clients::{self, ClientEntry, ClientTable, CLIENTS_FILE, CLIENTS_TMP};
use crate::compaction::{self, MARKER, MARKER_TMP};
use crate::error::{Corruption, StorageError};
use crate::format::{self, Parsed, RecordKind, RecordView, SegmentHeader, SegmentKind, SEGMENT_HEADER_LEN};
use crate::index::{Index, Slot};
use crate::segment::{parse_segment_file_name, segment_file_name, Segment};
use crate::{lookup_key, record_at, Lsn, Options, Store};

/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";

/// What [`Store::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments: u32,
    /// Valid records found (live or not).
    pub records: u64,
    /// Bytes of records scanned and verified.
    pub bytes_scanned: u64,
    /// The torn record cut off the end of the newest log segment, if any.
    pub torn_tail: Option<TornTail>,
    /// A committed compaction's clean-up was finished.
    pub compaction_redone: bool,
    /// Leftover files deleted: uncommitted compaction or install outputs (`*.tmp`), segments
    /// whose creation was interrupted (`*.new`), retired segments (`*.free`), half-written
    /// markers and client tables.
    pub removed: Vec<PathBuf>,
    /// Highest LSN found.
    pub last_lsn: Lsn,
    /// Time the whole open took.
    pub duration: Duration,
}

/// A torn record cut off at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub file: PathBuf,
    /// Where the torn record started.
    pub offset: u64,
    /// Bytes zeroed.
    pub len: u64,
    /// What was wrong with it.
    pub reason: Corruption,
}

/// A byte range that [`Store::repair`] dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedRange {
    /// The file it was in.
    pub file: PathBuf,
    /// Where it started.
    pub offset: u64,
    /// How long it was.
    pub len: u64,
    /// Why it was dropped.
    pub reason: Corruption,
}

/// What [`Store::repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Every byte range dropped. Empty if there was nothing to repair.
    pub dropped: Vec<DroppedRange>,
    /// Damaged segment files replaced by a copy of their valid records: (old, new).
    pub rewritten: Vec<(PathBuf, PathBuf)>,
    /// Valid records kept in the rewritten files.
    pub records_kept: u64,
    /// A committed compaction's clean-up was finished first.
    pub compaction_redone: bool,
}

/// Takes the exclusive lock on `dir/LOCK`, held as long as the returned file is open.
fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io(format!("open lock file {}", path.display()), e))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            return Err(StorageError::Locked { dir: dir.to_path_buf() })
        }
        Err(e) => return Err(StorageError::io(format!("lock {}", path.display()), e.into())),
    }
    // For people: who holds it.
    let pid = format!("{}\n", std::process::id());
    let _ = f.set_len(0).and_then(|()| f.write_all_at(pid.as_bytes(), 0));
    Ok(f)
}

fn open_dir(dir: &Path) -> Result<File, StorageError> {
    File::open(dir).map_err(|e| StorageError::io(format!("open directory {}", dir.display()), e))
}

fn sync_dir(dir_file: &File, dir: &Path) -> Result<(), StorageError> {
    dir_file.sync_all().map_err(|e| StorageError::io(format!("fsync directory {}", dir.display()), e))
}

/// Segment files by id: (id, extension, path).
fn list_files(dir: &Path) -> Result<Vec<(u64, String, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| StorageError::io(format!("list {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| StorageError::io(format!("list {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((id, ext)) = parse_segment_file_name(name) {
            out.push((id, ext.to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// If a committed compaction's marker exists, finishes its clean-up: rename the listed outputs
/// into place, delete the listed inputs, delete the marker. Idempotent. Returns whether it ran.
///
/// With `salvage`, a damaged marker does not stop the open: every `*.tmp` output is kept (renamed
/// to `*.seg`) instead, and the marker is reported as dropped.
fn redo_compaction(
    dir: &Path,
    dir_file: &File,
    salvage: Option<&mut RepairReport>,
) -> Result<bool, StorageError> {
    let marker = dir.join(MARKER);
    let text = match fs::read(&marker) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StorageError::io(format!("read {}", marker.display()), e)),
    };
    let rename = |id: u64| -> Result<(), StorageError> {
        let tmp = dir.join(segment_file_name(id, "tmp"));
        match fs::rename(&tmp, dir.join(segment_file_name(id, "seg"))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(format!("rename {}", tmp.display()), e)),
        }
    };
    match std::str::from_utf8(&text).ok().and_then(compaction::parse_marker) {
        Some((obsolete, new)) => {
            for &id in &new {
                rename(id)?;
                if !dir.join(segment_file_name(id, "seg")).exists() {
                    return Err(StorageError::Corrupt {
                        file: marker,
                        offset: 0,
                        reason: Corruption::BadCompactionMarker,
                    });
                }
            }
            sync_dir(dir_file, dir)?;
            for &id in &obsolete {
                remove_if_exists(&dir.join(segment_file_name(id, "seg")))?;
            }
            log::info!(
                "finished an interrupted compaction: removed {} segments, kept {}",
                obsolete.len(),
                new.len()
            );
        }
        None => {
            let Some(report) = salvage else {
                return Err(StorageError::Corrupt {
                    file: marker,
                    offset: 0,
                    reason: Corruption::BadCompactionMarker,
                });
            };
            // Keep everything: outputs and inputs may both exist; duplicates are harmless.
            for (id, ext, _) in list_files(dir)? {
                if ext == "tmp" {
                    rename(id)?;
                }
            }
            report.dropped.push(DroppedRange {
                file: marker.clone(),
                offset: 0,
                len: text.len() as u64,
                reason: Corruption::BadCompactionMarker,
            });
        }
    }
    sync_dir(dir_file, dir)?;
    remove_if_exists(&marker)?;
    sync_dir(dir_file, dir)?;
    Ok(true)
}

fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(format!("remove {}", path.display()), e)),
    }
}

/// Deletes uncommitted compaction or install outputs (`*.tmp`), half-created segments (`*.new`),
/// retired segments (`*.free`), a half-written marker and a half-written client table. None of
/// them can hold the only copy of anything.
fn remove_leftovers(dir: &Path, dir_file: &File) -> Result<Vec<PathBuf>, StorageError> {
    let mut removed = Vec::new();
    for (_, ext, path) in list_files(dir)? {
        if ext == "tmp" || ext == "new" || ext == "free" {
            remove_if_exists(&path)?;
            removed.push(path);
        }
    }
    for name in [MARKER_TMP, CLIENTS_TMP] {
        let path = dir.join(name);
        if path.exists() {
            remove_if_exists(&path)?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        log::info!("removed {} leftover files of interrupted work", removed.len());
        sync_dir(dir_file, dir)?;
    }
    Ok(removed)
}

/// Where a segment's scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScanEnd {
    /// End of the last valid record before the first damage (or the end of the log).
    end: u32,
    /// The first damage, if any.
    damage: Option<Damage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Damage {
    offset: u32,
    reason: Corruption,
    /// Offset of the first valid record after the damage.
    next_valid: Option<u32>,
    /// End of the non-zero bytes from `offset` (rounded up to a multiple of 8).
    dirty_end: u32,
}

/// Scans records from `from`, calling `on_record` for each valid one, until the end of the log
/// or the first damage.
///
/// `recycled` is the tag of a RECYCLED segment (`format::SEG_FLAG_RECYCLED`): stale bytes of the
/// file's earlier life follow its records, so an all-zero header, a record with another tag or
/// a remainder too short for a header is its clean end, and only records with its tag count
/// when looking for valid records after damage.
fn scan(
    bytes: &[u8],
    from: u32,
    recycled: Option<u32>,
    mut on_record: impl FnMut(u32, &RecordView<'_>),
) -> ScanEnd {
    let mut off = from as usize;
    loop {
        let rest = bytes.get(off..).unwrap_or(&[]);
        let clean_end = ScanEnd { end: off as u32, damage: None };
        let reason = match format::parse_record(rest) {
            Parsed::Record(r) if recycled.is_some_and(|t| t != r.tag) => return clean_end,
            Parsed::Record(r) => {
                on_record(off as u32, &r);
                off += r.len;
                continue;
            }
            Parsed::End if recycled.is_some() => return clean_end,
            Parsed::Bad(_) if recycled.is_some() && rest.len() < format::RECORD_HEADER_LEN => {
                return clean_end
            }
            Parsed::End => match first_nonzero(rest) {
                None => return clean_end,
                Some(_) => Corruption::GarbageAfterEnd,
            },
            Parsed::Bad(reason) => reason,
        };
        let dirty_end = off + last_nonzero_end(rest);
        let dirty_end = dirty_end.next_multiple_of(format::RECORD_ALIGN).min(bytes.len());
        let next_valid = find_valid_record(bytes, off + format::RECORD_ALIGN, dirty_end, recycled);
        // In a RECYCLED segment the non-zero bytes run on into the stale tail; zeroing the damaged
        // record's header is enough to end the log there.
        let dirty_end =
            if recycled.is_some() { (off + format::RECORD_HEADER_LEN).min(bytes.len()) } else { dirty_end };
        return ScanEnd {
            end: off as u32,
            damage: Some(Damage { offset: off as u32, reason, next_valid, dirty_end: dirty_end as u32 }),
        };
    }
}

/// Offset of the first valid record at an aligned offset in `from..to` (with the tag `recycled`,
/// in a RECYCLED segment).
fn find_valid_record(bytes: &[u8], from: usize, to: usize, recycled: Option<u32>) -> Option<u32> {
    let mut off = from.next_multiple_of(format::RECORD_ALIGN);
    while off < to {
        let rest = &bytes[off..];
        // Cheap filter before the checksum: a valid kind byte and zero flags.
        if matches!(rest.get(format::REC_KIND_OFFSET), Some(1 | 2))
            && rest.get(format::REC_FLAGS_OFFSET) == Some(&0)
        {
            if let Parsed::Record(r) = format::parse_record(rest) {
                if recycled.is_none_or(|t| t == r.tag) {
                    return Some(off as u32);
                }
            }
        }
        off += format::RECORD_ALIGN;
    }
    None
}

fn first_nonzero(b: &[u8]) -> Option<usize> {
    let mut chunks = b.chunks_exact(64);
    let mut base = 0;
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &x| a | x) != 0 {
            return c.iter().position(|&x| x != 0).map(|p| base + p);
        }
        base += 64;
    }
    chunks.remainder().iter().position(|&x| x != 0).map(|p| base + p)
}

/// One past the last non-zero byte (0 if all zero).
fn last_nonzero_end(b: &[u8]) -> usize {
    let mut end = b.len();
    while end >= 64 {
        if b[end - 64..end].iter().fold(0u8, |a, &x| a | x) != 0 {
            break;
        }
        end -= 64;
    }
    b[..end].iter().rposition(|&x| x != 0).map_or(0, |p| p + 1)
}

/// Opens segment `id` and checks its header and length against the file.
///
/// Every `.seg` file had its header on disk before it was renamed to `.seg` (see
/// `Segment::sync_header`); a segment whose creation was interrupted is still a `*.new` or `*.tmp`
/// file, which `remove_leftovers` deletes. So a `.seg` file that is too short for a header, has
/// a bad header or is shorter than its header says is damage, whichever segment it is and even
/// if it holds nothing but zeros: it may have held acknowledged records (an emptied older
/// segment loses its keys, an emptied newest one brings deleted keys back and older versions).
fn open_checked(path: &Path, id: u64) -> Result<(Segment, SegmentHeader), StorageError> {
    let (seg, header) = Segment::open(path, id)?;
    let corrupt = |offset: u64, reason| StorageError::Corrupt { file: path.to_path_buf(), offset, reason };
    if (seg.len() as usize) < SEGMENT_HEADER_LEN {
        return Err(corrupt(seg.len() as u64, Corruption::Truncated));
    }
    let Some(header) = header else {
        return Err(corrupt(0, Corruption::BadSegmentHeader));
    };
    if header.segment_len != seg.len() as u64 {
        return Err(corrupt(seg.len() as u64, Corruption::Truncated));
    }
    Ok((seg, header))
}

pub(crate) fn open(dir: &Path, opts: Options) -> Result<Store, StorageError> {
    let started = Instant::now();
    opts.validate()?;
    fs::create_dir_all(dir)
        .map_err(|e| StorageError::io(format!("create directory {}", dir.display()), e))?;
    let lock = lock_dir(dir)?;
    let dir_file = open_dir(dir)?;
    let mut report =
        RecoveryReport { compaction_redone: redo_compaction(dir, &dir_file, None)?, ..Default::default() };
    report.removed = remove_leftovers(dir, &dir_file)?;
    // The at-most-once table as of its file's LSN; the scan replays the records after it.
    let (mut client_table, clients_lsn) = match clients::load(dir, opts.max_clients)? {
        clients::Loaded::Absent => (ClientTable::new(opts.max_clients), 0),
        clients::Loaded::Table(t, lsn) => (t, lsn),
        clients::Loaded::Damaged(_) => return Err(clients::damaged(dir)),
    };

    let mut segments: Vec<Option<Segment>> = Vec::new();
    // LSNs never go back: segment headers remember the last LSN at their creation.
    let mut last_lsn = 0u64;
    for (id, ext, path) in list_files(dir)? {
        if ext != "seg" {
            continue;
        }
        let (seg, header) = open_checked(&path, id)?;
        last_lsn = last_lsn.max(header.base_lsn);
        segments.push(Some(seg));
    }
    let last_log = segments.iter().rposition(|s| s.as_ref().is_some_and(|s| s.kind == SegmentKind::Log));

    // Scan. Per-segment results are gathered here and applied after, since the index compares
    // keys by reading them from every segment's mapping.
    let mut index = Index::with_capacity(opts.index_capacity);
    let n = segments.len();
    let mut live = vec![0u64; n];
    let mut baseline = vec![0u64; n];
    let mut tombstone_count = vec![0u32; n];
    let mut ends = vec![SEGMENT_HEADER_LEN as u32; n];
    let mut lsn_range = vec![(u64::MAX, 0u64); n];
    let mut tombstones: Vec<Slot> = Vec::new();
    let mut torn: Option<(usize, Damage)> = None;
    for i in 0..n {
        let Some(seg) = segments[i].as_ref() else { continue };
        let segs = &segments;
        let recycled = seg.recycled.then(|| format::segment_tag(seg.id));
        let end = scan(seg.bytes(), SEGMENT_HEADER_LEN as u32, recycled, |off, r| {
            report.records += 1;
            let lsn = r.meta.lsn;
            last_lsn = last_lsn.max(lsn);
            if r.meta.client_id != 0 && lsn > clients_lsn {
                let entry =
                    ClientEntry { request_id: r.meta.request_id, lsn: Lsn(lsn), version: r.meta.timestamp };
                client_table.observe(r.meta.client_id, entry);
            }
            let range = &mut lsn_range[i];
            *range = (range.0.min(lsn), range.1.max(lsn));
            let hash = index.hash(r.key);
            let new = Slot { hash, seg: i as u32, off };
            let won = match index.find_mut(hash, |s| s.hash == hash && lookup_key(segs, s) == r.key) {
                Some(slot) => {
                    let old = record_at(segs, slot.seg, slot.off);
                    // Highest LSN wins. On a tie the later record (in segment id order) wins:
                    // a compaction copy is as good as its original, and of two installed
                    // records of a key with the same (clamped) LSN the later install is newer.
                    if old.is_none_or(|o| o.meta.lsn <= lsn) {
                        if let Some(o) = old {
                            live[slot.seg as usize] -= o.len as u64;
                        }
                        *slot = new;
                        true
                    } else {
                        false
                    }
                }
                None => {
                    index.insert_new(new);
                    true
                }
            };
            if r.meta.kind == RecordKind::Tombstone {
                tombstone_count[i] += 1;
            }
            if r.meta.kind == RecordKind::Tombstone && seg.kind == SegmentKind::Compacted {
                // Kept by a compaction: not reclaimable by the next one (see `should_compact`).
                baseline[i] += r.len as u64;
            }
            if won {
                live[i] += r.len as u64;
                if r.meta.kind == RecordKind::Tombstone {
                    tombstones.push(new);
                }
            }
        });
        ends[i] = end.end;
        report.bytes_scanned += (end.end as usize - SEGMENT_HEADER_LEN) as u64;
        if let Some(d) = end.damage {
            if Some(i) == last_log && d.next_valid.is_none() {
                torn = Some((i, d));
            } else {
                return Err(StorageError::Corrupt {
                    file: seg.path.clone(),
                    offset: d.offset as u64,
                    reason: d.reason,
                });
            }
        }
    }
    // Keys whose newest record is a tombstone have no value.
    for t in tombstones {
        if let Some(s) = index.remove(t.hash, |s| *s == t) {
            if let Some(r) = record_at(&segments, s.seg, s.off) {
                live[s.seg as usize] -= r.len as u64;
            }
        }
    }
    let mut next_segment_id = 1;
    for (i, slot) in segments.iter_mut().enumerate() {
        let Some(seg) = slot.as_mut() else { continue };
        seg.write_off = ends[i];
        seg.live_bytes = live[i];
        seg.baseline_dead = baseline[i];
        seg.tombstones = tombstone_count[i];
        (seg.min_lsn, seg.max_lsn) = lsn_range[i];
        next_segment_id = next_segment_id.max(seg.id + 1);
    }
    if let Some((i, d)) = torn {
        if let Some(seg) = segments[i].as_mut() {
            let len = (d.dirty_end - d.offset) as u64;
            log::warn!(
                "cut torn record at the end of {} offset={} bytes={len}: {} (a write interrupted by a crash)",
                seg.path.display(),
                d.offset,
                d.reason
            );
            seg.zero(d.offset as usize, d.dirty_end as usize);
            report.torn_tail =
                Some(TornTail { file: seg.path.clone(), offset: d.offset as u64, len, reason: d.reason });
        }
    }
    // Make what the scan saw (possibly still only in the page cache after a process crash) and
    // the torn-tail cut durable, so that durable_lsn = last_lsn is true from the start.
    for seg in segments.iter().flatten() {
        seg.file.sync_data().map_err(|e| StorageError::io(format!("fdatasync {}", seg.path.display()), e))?;
    }
    for seg in segments.iter_mut().flatten() {
        seg.synced_upto = seg.write_off;
    }
    report.segments = n as u32;
    report.last_lsn = Lsn(last_lsn);
    client_table.enforce_bound();

    // Keep writing into the newest log segment if it holds the newest record (or none); otherwise
    // (only after a repair rewrote it) start a new one, so the log's LSN ranges stay honest.
    let active =
        last_log.filter(|&i| segments[i].as_ref().is_some_and(|s| s.max_lsn == last_lsn || s.max_lsn == 0));
    if let Some(i) = active {
        if let Some(seg) = segments[i].as_mut() {
            seg.sealed = false;
        }
    }
    let mut store = Store {
        dir: dir.to_path_buf(),
        opts,
        _lock: lock,
        dir_file: Arc::new(dir_file),
        segments,
        free_slots: Vec::new(),
        active: active.map_or(u32::MAX, |i| i as u32),
        next_segment_id,
        index,
        last_lsn,
        durable_lsn: last_lsn,
        dir_gen: 0,
        dir_synced_gen: 0,
        poisoned: false,
        scratch: Vec::new(),
        compaction: compaction::State::Idle,
        compactions: 0,
        log_start: 1,
        worker: crate::worker::Worker::start()?,
        flush_in_flight: false,
        background_flushes: 0,
        bytes_written: 0,
        compaction_bytes_copied: 0,
        next_flush: None,
        recovery: RecoveryReport::default(),
        prepared: None,
        preparing: false,
        prepare_failed: false,
        spare_log_id: None,
        space_pressure: false,
        clients: client_table,
        clients_image: Vec::new(),
        log_pin: None,
        snapshot_holds: 0,
        install: None,
    };
    if active.is_none() {
        store.roll()?;
        store.sync()?;
    }
    store.recompute_log_start();
    report.duration = started.elapsed();
    let stats = store.stats();
    log::info!(
        "opened {}: segments={} records={} keys={} bytes_scanned={} last_lsn={} torn_tail={} in {:?}",
        dir.display(),
        stats.segments,
        report.records,
        stats.keys,
        report.bytes_scanned,
        last_lsn,
        report.torn_tail.is_some(),
        report.duration
    );
    store.recovery = report;
    Ok(store)
}

/// Every valid record of a segment and every damaged range, resynchronising after damage by
/// looking for the next valid record at each aligned offset.
fn scan_all(
    bytes: &[u8],
    path: &Path,
    recycled: Option<u32>,
    dropped: &mut Vec<DroppedRange>,
) -> Vec<(u32, u32)> {
    let mut kept = Vec::new();
    let mut off = SEGMENT_HEADER_LEN as u32;
    if bytes.len() < SEGMENT_HEADER_LEN {
        return kept;
    }
    loop {
        let end = scan(bytes, off, recycled, |o, r| kept.push((o, r.len as u32)));
        let Some(d) = end.damage else { break };
        let resume = d.next_valid.unwrap_or(d.dirty_end);
        dropped.push(DroppedRange {
            file: path.to_path_buf(),
            offset: d.offset as u64,
            len: (resume - d.offset) as u64,
            reason: d.reason,
        });
        match d.next_valid {
            Some(v) => off = v,
            None => break,
        }
    }
    kept
}

/// Whether, of a segment whose header is damaged (so its RECYCLED flag is unknown), only the
/// records with its own `tag` belong to it.
///
/// Ids are never reused and copies keep their tag, so a record with a file's own tag was written
/// into that file in its current life, and the files that hold such records (log segments,
/// install segments) hold nothing else, save a log segment written before tags existed (tag 0).
/// Only log segments are recycled, and a recycled one's first record slot is zeroed (in the
/// page of its header, made durable before the file became a `.seg`), so a valid record with
/// another tag at the first slot means the file was not recycled and every valid record in it
/// is its own (a compaction output, a repair copy, a log segment from before tags). Otherwise:
/// any valid record with its own tag makes it a file of its own records. With none at all (an
/// empty log segment, or the first record damaged too), the unverified flag and kind bytes
/// decide.
fn only_own_records(bytes: &[u8], tag: u32) -> bool {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return false;
    }
    if matches!(format::parse_record(&bytes[SEGMENT_HEADER_LEN..]), Parsed::Record(r) if r.tag != tag) {
        return false;
    }
    find_valid_record(bytes, SEGMENT_HEADER_LEN, bytes.len(), Some(tag)).is_some()
        || (bytes[format::SEG_KIND_OFFSET] == SegmentKind::Log as u8
            && bytes[format::SEG_FLAGS_OFFSET] & format::SEG_FLAG_RECYCLED != 0)
}

/// Takes the records with another tag than `tag` out of `kept` (see [`only_own_records`]) and
/// reports their bytes as dropped, merged with the damaged ranges they adjoin: a stale tail is
/// one range from the end of the log. The header's range stays apart.
fn drop_other_lives(
    bytes: &[u8],
    path: &Path,
    tag: u32,
    kept: &mut Vec<(u32, u32)>,
    dropped: &mut Vec<DroppedRange>,
) {
    let mut ranges = Vec::new();
    kept.retain(|&(off, len)| {
        let own = format::view_record_unchecked(&bytes[off as usize..]).is_some_and(|r| r.tag == tag);
        if !own {
            ranges.push(DroppedRange {
                file: path.to_path_buf(),
                offset: off as u64,
                len: len as u64,
                reason: Corruption::GarbageAfterEnd,
            });
        }
        own
    });
    if ranges.is_empty() {
        return;
    }
    let first_body =
        dropped.iter().position(|d| d.offset >= SEGMENT_HEADER_LEN as u64).unwrap_or(dropped.len());
    ranges.extend(dropped.drain(first_body..));
    ranges.sort_by_key(|d| d.offset);
    for d in ranges {
        match dropped.last_mut() {
            Some(last) if last.offset >= SEGMENT_HEADER_LEN as u64 && last.offset + last.len == d.offset => {
                last.len += d.len;
            }
            _ => dropped.push(d),
        }
    }
}

pub(crate) fn repair(dir: &Path, opts: &Options) -> Result<RepairReport, StorageError> {
    opts.validate()?;
    let _lock = lock_dir(dir)?;
    let dir_file = open_dir(dir)?;
    let mut report = RepairReport::default();
    report.compaction_redone = redo_compaction(dir, &dir_file, Some(&mut report))?;
    remove_leftovers(dir, &dir_file)?;
    // A damaged client table is dropped: the table is then rebuilt from the records that
    // survive, which misses the ids of writes whose records compaction discarded.
    if let clients::Loaded::Damaged(len) = clients::load(dir, opts.max_clients)? {
        let path = dir.join(CLIENTS_FILE);
        remove_if_exists(&path)?;
        sync_dir(&dir_file, dir)?;
        log::warn!("repair: dropped the damaged client table {}", path.display());
        report.dropped.push(DroppedRange { file: path, offset: 0, len, reason: Corruption::BadClientTable });
    }
    let files: Vec<_> = list_files(dir)?.into_iter().filter(|f| f.1 == "seg").collect();
    let mut next_id = files.iter().map(|f| f.0 + 1).max().unwrap_or(1);
    // The newest log segment may keep a torn tail in place (zeroed), as open would.
    let mut headers = Vec::new();
    for (id, _, path) in &files {
        let (seg, header) = Segment::open(path, *id)?;
        headers.push((seg, header));
    }
    let last_log = headers.iter().rposition(|(_, h)| h.is_some_and(|h| h.kind == SegmentKind::Log));
    for (i, (mut seg, header)) in headers.into_iter().enumerate() {
        let path = seg.path.clone();
        let mut dropped = Vec::new();
        let header_ok = header.is_some_and(|h| h.segment_len == seg.len() as u64);
        if (seg.len() as usize) < SEGMENT_HEADER_LEN {
            // Emptied or cut inside the header: whatever it held is gone.
            dropped.push(DroppedRange {
                file: path.clone(),
                offset: 0,
                len: seg.len() as u64,
                reason: Corruption::Truncated,
            });
        } else if header.is_none() {
            dropped.push(DroppedRange {
                file: path.clone(),
                offset: 0,
                len: SEGMENT_HEADER_LEN as u64,
                reason: Corruption::BadSegmentHeader,
            });
        } else if let Some(h) = header.filter(|_| !header_ok) {
            // The bytes between the cut and the length the header gives are gone.
            dropped.push(DroppedRange {
                file: path.clone(),
                offset: seg.len() as u64,
                len: h.segment_len.saturating_sub(seg.len() as u64),
                reason: Corruption::Truncated,
            });
        }
        let recycled = header.is_some_and(|h| h.recycled).then(|| format::segment_tag(seg.id));
        let mut kept = scan_all(seg.bytes(), &path, recycled, &mut dropped);
        // Without a header the RECYCLED flag is unknown, so the scan above kept every valid
        // record, stale ones of a recycled file's earlier life included: those would bring back
        // keys deleted since (their tombstones compacted away). Tell from the records themselves.
        if header.is_none() && only_own_records(seg.bytes(), format::segment_tag(seg.id)) {
            drop_other_lives(seg.bytes(), &path, format::segment_tag(seg.id), &mut kept, &mut dropped);
        }
        if dropped.is_empty() {
            continue;
        }
        let tail_only = header_ok && Some(i) == last_log && dropped.len() == 1 && {
            let d = &dropped[0];
            find_valid_record(
                seg.bytes(),
                d.offset as usize + format::RECORD_ALIGN,
                seg.len() as usize,
                recycled,
            )
            .is_none()
        };
        if tail_only {
            let d = &dropped[0];
            seg.zero(d.offset as usize, (d.offset + d.len) as usize);
            seg.file.sync_data().map_err(|e| StorageError::io(format!("fdatasync {}", path.display()), e))?;
            log::warn!("repair: zeroed torn tail of {} offset={} bytes={}", path.display(), d.offset, d.len);
            report.dropped.append(&mut dropped);
            continue;
        }
        // Copy the valid records into a new segment, then replace the damaged file. A crash in
        // between leaves both, which is harmless (same LSNs) and repairable again.
        let len =
            (seg.len() as u64).next_multiple_of(4096).clamp(crate::MIN_SEGMENT_LEN, crate::MAX_SEGMENT_LEN);
        let mut out = Segment::create(
            dir,
            next_id,
            SegmentKind::Compacted,
            len,
            header.map_or(0, |h| h.base_lsn),
            "new",
            0, // offline: nothing else needs the space
        )?;
        for &(off, rlen) in &kept {
            let rec = &seg.bytes()[off as usize..(off + rlen) as usize];
            let lsn = format::view_record_unchecked(rec).map_or(0, |r| r.meta.lsn);
            out.append_raw(rec, lsn);
        }
        out.flush().map_err(|e| StorageError::io(format!("msync {}", out.path.display()), e))?;
        let new_path = dir.join(segment_file_name(next_id, "seg"));
        fs::rename(&out.path, &new_path)
            .map_err(|e| StorageError::io(format!("rename {}", out.path.display()), e))?;
        sync_dir(&dir_file, dir)?;
        drop(seg);
        remove_if_exists(&path)?;
        sync_dir(&dir_file, dir)?;
        next_id += 1;
        for d in &dropped {
            log::warn!(
                "repair: dropped {} offset={} bytes={}: {}",
                d.file.display(),
                d.offset,
                d.len,
                d.reason
            );
        }
        report.records_kept += kept.len() as u64;
        report.dropped.append(&mut dropped);
        report.rewritten.push((path, new_path));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonzero_helpers() {
        let mut b = vec![0u8; 300];
        assert_eq!(first_nonzero(&b), None);
        assert_eq!(last_nonzero_end(&b), 0);
        b[130] = 1;
        b[250] = 2;
        assert_eq!(first_nonzero(&b), Some(130));
        assert_eq!(last_nonzero_end(&b), 251);
        b[299] = 3;
        assert_eq!(last_nonzero_end(&b), 300);
    }

    /// A buffer of records with these tags, back to back after a segment header's worth of bytes.
    fn tagged(tags: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; SEGMENT_HEADER_LEN];
        for (i, &tag) in tags.iter().enumerate() {
            let meta = format::RecordMeta {
                kind: RecordKind::Put,
                lsn: i as u64 + 1,
                timestamp: i as u64 + 1,
                client_id: 0,
                request_id: 0,
            };
            let h = format::encode_record_header_tagged(&meta, tag, b"key", &[b"value"]);
            b.extend_from_slice(&h);
            b.extend_from_slice(b"keyvalue");
            b.resize(b.len().next_multiple_of(format::RECORD_ALIGN), 0);
        }
        b.resize(b.len() + 256, 0);
        b
    }

    fn scanned(b: &[u8], recycled: Option<u32>) -> (Vec<u64>, ScanEnd) {
        let mut lsns = Vec::new();
        let end = scan(b, SEGMENT_HEADER_LEN as u32, recycled, |_, r| lsns.push(r.meta.lsn));
        (lsns, end)
    }

    #[test]
    fn a_recycled_segment_ends_at_the_first_record_of_another_life() {
        let b = tagged(&[5, 5, 7, 7]);
        let (lsns, end) = scanned(&b, Some(5));
        assert_eq!(lsns, vec![1, 2]);
        assert_eq!(end.damage, None);
        // Without the RECYCLED flag, tags mean nothing: every valid record counts.
        assert_eq!(scanned(&b, None).0, vec![1, 2, 3, 4]);
    }

    #[test]
    fn in_a_recycled_segment_stale_bytes_after_the_end_marker_are_not_damage() {
        let mut b = tagged(&[5, 5]);
        let end_marker = scanned(&b, Some(5)).1.end as usize;
        let tail = b.len();
        b[end_marker + format::RECORD_HEADER_LEN..tail].fill(0xAB);
        let (lsns, end) = scanned(&b, Some(5));
        assert_eq!((lsns, end.damage), (vec![1, 2], None));
        // An ordinary segment calls the same bytes damage.
        assert!(scanned(&b, None).1.damage.is_some());
        // Damage before the end marker is still damage; a valid record of this life after it
        // makes it corruption, not a torn tail.
        let mut c = tagged(&[5, 5, 5]);
        c[SEGMENT_HEADER_LEN + 60] ^= 1;
        let end = scanned(&c, Some(5)).1;
        assert!(end.damage.is_some_and(|d| d.next_valid.is_some()), "{end:?}");
        let mut d = tagged(&[5, 7, 7]);
        d[SEGMENT_HEADER_LEN + 60] ^= 1;
        let end = scanned(&d, Some(5)).1;
        assert!(
            end.damage.is_some_and(|d| d.next_valid.is_none()),
            "records of another life are not this one's: {end:?}"
        );
    }
}
