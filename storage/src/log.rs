//! The log as replication reads and writes it: a resumable [`LogCursor`], the retention pin that
//! keeps compaction away from the part of the log a backup still needs, and
//! [`Store::apply_replicated`], which writes a primary's record with the primary's LSN.
//!
//! # Why a cursor
//!
//! A primary streams its log to a backup over many event-loop iterations while writes go on, so
//! the reader cannot borrow the store between calls. The cursor is plain data: the next LSN
//! wanted and where that record should be (segment id, its position in the segment table as a
//! hint, byte offset). Reading the next record checks that the hint still names that segment and
//! that the record there carries the wanted LSN, which is the common case and costs one header
//! read. Anything else (a new cursor, the end of a sealed segment, a new log segment, a segment
//! compaction removed) falls back to locating the LSN: find the log segment whose LSN range holds
//! it (a walk of the segment table) and scan that segment's record headers from its start.

use crate::format::{self, RecordKind, SegmentKind, SEGMENT_HEADER_LEN};
use crate::{Lsn, Record, StorageError, Store, WriteMeta};

#[cfg(test)]
thread_local! {
    /// Test hook: how often `read_log` took the slow path on this thread.
    pub(crate) static LOCATES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A position in the log that survives writes, segment rolls and compaction: see
/// [`Store::read_log`]. It holds no borrow of the store, so a server keeps one per backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCursor {
    /// The LSN of the next record to return.
    next: u64,
    /// Id of the segment where that record is expected; 0 if unknown.
    seg_id: u64,
    /// Position of that segment in the store's segment table (checked against `seg_id`).
    slot: u32,
    /// Offset of the record there.
    off: u32,
}

impl LogCursor {
    /// A cursor whose first record will be the one with LSN `from` (`Lsn(0)` means 1).
    pub fn new(from: Lsn) -> LogCursor {
        LogCursor { next: from.0.max(1), seg_id: 0, slot: 0, off: 0 }
    }

    /// The LSN of the record the next [`Store::read_log`] returns.
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.next)
    }
}

/// A record written by a primary, to be applied unchanged by a backup
/// ([`Store::apply_replicated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicatedWrite<'a> {
    /// Its LSN in the primary's log; must be the backup's `last_lsn + 1`.
    pub lsn: Lsn,
    /// Whether it deletes the key (then `value` must be empty).
    pub tombstone: bool,
    /// The key.
    pub key: &'a [u8],
    /// The value (empty for a tombstone).
    pub value: &'a [u8],
    /// The value's version as the primary recorded it.
    pub timestamp: u64,
    /// Client and request id of the write that produced it; and, if the backup verified the
    /// frame that carried it, the CRC of key ‖ value ([`WriteMeta::payload_crc`]).
    pub meta: WriteMeta,
}

impl Store {
    /// The record with LSN `cursor.next_lsn()` (tombstones included), advancing the cursor past
    /// it; `Ok(None)` when the cursor is past [`Store::last_lsn`] (caught up: a later call, after
    /// more writes, continues from there).
    ///
    /// O(1) in the common case (the next record follows the previous one in the same segment);
    /// moving to the next log segment walks the segment table, and a cursor that does not know
    /// where its record is (new, or its segment was removed) scans the headers of one segment.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] if compaction removed that part of the log (see
    /// [`Store::log_start`] and [`Store::retain_log_from`]); the cursor is unchanged.
    pub fn read_log(&self, cursor: &mut LogCursor) -> Result<Option<Record<'_>>, StorageError> {
        let want = cursor.next.max(1);
        if want > self.last_lsn {
            return Ok(None);
        }
        if want < self.log_start {
            return Err(StorageError::Compacted { oldest: Lsn(self.log_start) });
        }
        if cursor.seg_id != 0 {
            if let Some(Some(seg)) = self.segments.get(cursor.slot as usize) {
                if seg.id == cursor.seg_id && seg.kind == SegmentKind::Log && cursor.off < seg.write_off {
                    if let Some(v) = format::view_record_unchecked(seg.from(cursor.off)) {
                        if v.meta.lsn == want {
                            cursor.off += v.len as u32;
                            cursor.next = want + 1;
                            return Ok(Some(Record::from_view(&v)));
                        }
                    }
                }
            }
        }
        self.locate(cursor, want)
    }

    /// The slow path of [`Store::read_log`]: finds record `want` from scratch.
    fn locate(&self, cursor: &mut LogCursor, want: u64) -> Result<Option<Record<'_>>, StorageError> {
        #[cfg(test)]
        LOCATES.set(LOCATES.get() + 1);
        let holder = self.segments.iter().enumerate().find_map(|(i, s)| {
            s.as_ref()
                .filter(|s| s.kind == SegmentKind::Log && s.min_lsn <= want && want <= s.max_lsn)
                .map(|s| (i as u32, s))
        });
        if let Some((slot, seg)) = holder {
            let mut off = SEGMENT_HEADER_LEN as u32;
            while off < seg.write_off {
                let Some(v) = format::view_record_unchecked(seg.from(off)) else { break };
                if v.meta.lsn == want {
                    *cursor = LogCursor { next: want + 1, seg_id: seg.id, slot, off: off + v.len as u32 };
                    return Ok(Some(Record::from_view(&v)));
                }
                if v.meta.lsn > want {
                    break;
                }
                off += v.len as u32;
            }
        }
        // Every LSN from log_start to last_lsn is in a log segment; not finding one is a bug.
        ::log::error!(
            "log record {want} not found although log_start={} last_lsn={}",
            self.log_start,
            self.last_lsn
        );
        Err(StorageError::Compacted { oldest: Lsn(self.log_start) })
    }

    /// The oldest LSN [`Store::read_log`] can serve: every record from here to
    /// [`Store::last_lsn`] is in the log. `last_lsn + 1` when the log holds nothing (after a
    /// compaction took every log segment, or right after [`Store::finish_install`]).
    pub fn log_start(&self) -> Lsn {
        Lsn(self.log_start)
    }

    /// Pins the log from `lsn` on: while set, compaction never takes a log segment that holds
    /// any record with an LSN at or above it, so [`Store::read_log`] from `lsn` keeps working
    /// (a primary sets it to its slowest backup's position). `None` removes the pin. Cheap:
    /// call it as often as the position moves.
    ///
    /// Reclaimable bytes in pinned segments do not count toward starting a compaction, so a pin
    /// covering everything reclaimable leaves compaction idle rather than busy. A compaction
    /// already copying when the pin is set finishes its copy, and if the pin then covers one of
    /// its inputs it commits its outputs but deletes none of its inputs (copies are harmless;
    /// the next compaction reclaims them). Records already gone (below [`Store::log_start`])
    /// cannot be brought back: a backup that needs them needs a snapshot.
    pub fn retain_log_from(&mut self, lsn: Option<Lsn>) {
        self.log_pin = lsn.map(|l| l.0);
    }

    /// Whether the retention pin protects `seg` from compaction.
    pub(crate) fn pinned(&self, seg: &crate::segment::Segment) -> bool {
        seg.kind == SegmentKind::Log
            && seg.min_lsn <= seg.max_lsn
            && self.log_pin.is_some_and(|pin| seg.max_lsn >= pin)
    }

    /// Applies a record written by a primary: exactly that record (LSN, tombstone or value,
    /// timestamp, client and request id) through the same write path as [`Store::put`], so the
    /// backup's log stays identical to the primary's. A tombstone for an absent key is written
    /// all the same: the log must have no gaps. The at-most-once table is updated as for a
    /// local write. Returns the LSN.
    ///
    /// # Errors
    /// - [`StorageError::OutOfOrder`] unless `w.lsn == last_lsn + 1`; nothing is written.
    /// - As for [`Store::put`]: the key and value limits (a tombstone with a value is
    ///   [`StorageError::ValueTooLong`] with `max: 0`), `NoSpace`, `Poisoned`; and
    ///   [`StorageError::Install`] during a snapshot install.
    pub fn apply_replicated(&mut self, w: &ReplicatedWrite<'_>) -> Result<Lsn, StorageError> {
        let expected = self.last_lsn + 1;
        if w.lsn.0 != expected {
            return Err(StorageError::OutOfOrder { expected: Lsn(expected), got: w.lsn });
        }
        self.check_limits(w.key, w.value.len())?;
        let kind = if w.tombstone {
            if !w.value.is_empty() {
                return Err(StorageError::ValueTooLong { len: w.value.len(), max: 0 });
            }
            RecordKind::Tombstone
        } else {
            RecordKind::Put
        };
        self.apply(kind, w.key, &[w.value], w.lsn.0, w.timestamp, w.meta)?;
        Ok(w.lsn)
    }
}
