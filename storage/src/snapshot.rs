//! Sending a snapshot for state transfer: a walk over the live records that a primary streams to
//! a new or diverged backup in bounded chunks, across event-loop iterations, while writes go on.
//!
//! The snapshot is "fuzzy": it is not the state at one LSN. The receiver installs it and then
//! replays the log from [`SnapshotCursor::upto`]` + 1`; records are whole values, so the replay
//! fixes any key the walk saw in the middle of being changed.
//!
//! # How the walk stays complete
//!
//! [`Store::begin_snapshot`] notes `upto = last_lsn` and the ids of every segment in the segment
//! table, and holds compaction until [`Store::end_snapshot`]: no compaction starts, and one in its
//! copy phase pauses. A compaction commit already handed to the background thread may finish:
//! its inputs had left the segment table when the commit began (so they are not in the list) and
//! its outputs are in it, so nothing the walk needs disappears. Writes go on meanwhile into the
//! active log segment (walked up to wherever it has got to) and later ones (not walked).
//!
//! With compaction held, the index only changes by writes. A key not written during the walk
//! keeps its index entry pointing at the same record, in a listed segment, and the walk reports
//! every record the index points at when it reaches it. Hence the guarantee
//! ([`Store::read_snapshot`]): every key that has a value for the whole walk and is not written
//! during it is visited at least once with its value at `upto`; a key written or deleted during
//! the walk may be visited with any of its values, twice, or not at all, and the log replay
//! from `upto + 1` repairs it.

use crate::format::{self, RecordKind, SEGMENT_HEADER_LEN};
use crate::{Lsn, Store};

/// The position of a snapshot walk ([`Store::read_snapshot`]). Not `Clone`: each cursor holds
/// compaction once, and must be handed back to [`Store::end_snapshot`] exactly once.
#[derive(Debug)]
#[must_use = "a snapshot holds compaction until it is passed to Store::end_snapshot"]
pub struct SnapshotCursor {
    upto: u64,
    /// Ids of the segments to walk, ascending.
    segments: Vec<u64>,
    /// Index into `segments` of the segment being walked.
    next: usize,
    /// Position of that segment in the segment table (a hint, checked against its id).
    slot: u32,
    /// Offset of the next record to look at (0: the segment's first record).
    off: u32,
}

impl SnapshotCursor {
    /// The store's last LSN when the snapshot began: the receiver replays the log from
    /// `upto + 1` after installing the snapshot.
    pub fn upto(&self) -> Lsn {
        Lsn(self.upto)
    }
}

/// One live record of a snapshot walk, borrowed from the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRecord<'a> {
    /// The key.
    pub key: &'a [u8],
    /// Its value.
    pub value: &'a [u8],
    /// The LSN of the record (may be above `upto` for a key written during the walk).
    pub lsn: Lsn,
    /// The value's version (the record's timestamp).
    pub version: u64,
}

impl Store {
    /// Begins a snapshot walk: notes `upto` = [`Store::last_lsn`] and the segments that exist
    /// now, and holds compaction until [`Store::end_snapshot`] (no compaction starts; one in
    /// its copy phase pauses; a commit already under way on the background thread may finish,
    /// which the walk tolerates: see the module docs). Holds are counted, so several snapshots
    /// may run at once; [`Store::retain_log_from`] applies independently.
    pub fn begin_snapshot(&mut self) -> SnapshotCursor {
        self.snapshot_holds += 1;
        let mut segments: Vec<u64> = self.segments.iter().flatten().map(|s| s.id).collect();
        segments.sort_unstable();
        ::log::info!(
            "snapshot begun: upto={} segments={} holds={}",
            self.last_lsn,
            segments.len(),
            self.snapshot_holds
        );
        SnapshotCursor { upto: self.last_lsn, segments, next: 0, slot: 0, off: 0 }
    }

    /// Continues a snapshot walk: walks the held segments in id order from the cursor's
    /// position and calls `each` for every put record that is live (the index points at that
    /// very record); tombstones and dead records are skipped, and so are segments with no live
    /// bytes. Stops once about `max_bytes` of records have been looked at (at least one record).
    /// Returns `true` when the walk is done.
    ///
    /// Guarantee: every key that has a value for the whole walk and is not written during it is
    /// visited at least once, with its value at [`SnapshotCursor::upto`] (or newer). A key
    /// written or deleted during the walk may be visited with any of its values, or not at all;
    /// replaying the log from `upto + 1` covers it. A key may be visited twice (a later visit is
    /// never older than an earlier one).
    pub fn read_snapshot(
        &self,
        cursor: &mut SnapshotCursor,
        max_bytes: usize,
        mut each: impl FnMut(SnapshotRecord<'_>),
    ) -> bool {
        let budget = max_bytes.max(1);
        let mut looked = 0usize;
        while let Some(&id) = cursor.segments.get(cursor.next) {
            let hinted = matches!(self.segments.get(cursor.slot as usize), Some(Some(s)) if s.id == id);
            if !hinted {
                match self.segments.iter().position(|s| s.as_ref().is_some_and(|s| s.id == id)) {
                    Some(slot) => cursor.slot = slot as u32,
                    None => {
                        // Gone (only `wipe` removes segments while compaction is held).
                        cursor.next += 1;
                        cursor.off = 0;
                        continue;
                    }
                }
            }
            let Some(Some(seg)) = self.segments.get(cursor.slot as usize) else { break };
            let off = cursor.off.max(SEGMENT_HEADER_LEN as u32);
            let rec = if seg.live_bytes > 0 && off < seg.write_off {
                format::view_record_unchecked(seg.from(off))
            } else {
                None
            };
            let Some(rec) = rec else {
                cursor.next += 1;
                cursor.off = 0;
                continue;
            };
            if looked >= budget {
                return false;
            }
            looked += rec.len;
            cursor.off = off + rec.len as u32;
            if rec.meta.kind == RecordKind::Put {
                let hash = self.index.hash(rec.key);
                let slot = cursor.slot;
                if self.index.find(hash, |s| s.seg == slot && s.off == off).is_some() {
                    each(SnapshotRecord {
                        key: rec.key,
                        value: rec.value,
                        lsn: Lsn(rec.meta.lsn),
                        version: rec.meta.timestamp,
                    });
                }
            }
        }
        true
    }

    /// Ends a snapshot walk (done or abandoned), releasing its hold on compaction.
    pub fn end_snapshot(&mut self, cursor: SnapshotCursor) {
        self.snapshot_holds = self.snapshot_holds.saturating_sub(1);
        ::log::info!("snapshot ended: upto={} holds={}", cursor.upto, self.snapshot_holds);
    }

    /// Whether compaction must hold still: a snapshot walk or an install is in progress.
    pub(crate) fn compaction_held(&self) -> bool {
        self.snapshot_holds > 0 || self.install.is_some()
    }
}
