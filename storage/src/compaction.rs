//! Compaction: copy the live records out of segments with many dead ones, then delete them.
//!
//! It runs incrementally on the caller's thread, in steps of at most
//! [`Options::compact_step_budget`](crate::Options::compact_step_budget) inside
//! [`Store::tick`](crate::Store::tick); the slow parts of committing (fdatasync, fsync of the
//! directory, rename, unlink, munmap) run on the store's background thread.
//!
//! # Steps, and why a crash at any point is safe
//!
//! 1. **Choose inputs**: sealed segments (never the active log segment), except log segments the
//!    retention pin ([`Store::retain_log_from`](crate::Store::retain_log_from)) protects. Note the
//!    smallest LSN of any segment *not* chosen (`outside_min_lsn`). No compaction starts while a
//!    snapshot walk or an install holds compaction, and a copy in progress pauses then.
//! 2. **Copy**, a few hundred records per step, into new segments named `*.tmp`:
//!    - a put record only if the index still points at this very copy (anything else is dead), and
//!      then the index is pointed at the new copy;
//!    - a tombstone only if its key has no value now *and* some segment outside the inputs could
//!      hold an older record of the key (`lsn > outside_min_lsn`). Otherwise dropping it cannot
//!      bring anything back.
//!
//!    Writes go on meanwhile, to the active log segment. Crash here: recovery deletes every `*.tmp`
//!    file; the inputs are untouched, so the store is as before the compaction.
//! 3. **Commit** (background thread): fdatasync the outputs *and every other segment with
//!    unflushed writes*; write the at-most-once table to `CLIENTS` (through `CLIENTS.tmp`,
//!    fsynced), tagged with the last LSN when the commit began; fsync the directory; write the
//!    marker `COMPACT.tmp` listing the obsolete and new segment ids with a CRC, fsync it, rename
//!    it to `COMPACT` (the commit point), fsync the directory. Flushing the other segments first matters: an input may hold a durable
//!    value whose overwrite has not been flushed yet, and deleting the input must not leave
//!    neither. Crash before the rename: as in 2. After: see 4. No space for the table or the
//!    marker: nothing is committed, and the job runs again later (`CommitError::NoSpace`).
//! 4. **Clean up** (background thread): rename each output to `*.seg`, fsync the directory, unmap
//!    and delete the inputs (or rename them to `*.free` while that pool holds fewer than eight
//!    files: the next log segments are recycled from it; recovery deletes `*.free` like any
//!    leftover), fsync the directory, delete
//!    `COMPACT`. Crash anywhere here: on open,
//!    recovery finds `COMPACT` and redoes these steps (they are idempotent) *before* scanning, so
//!    a half-deleted input set can never be scanned. That matters: with one input deleted and
//!    another not, a dropped tombstone could let an older value resurrect.
//!
//! Copies and originals may coexist (an output and its input; after a crash, before the redo);
//! recovery keeps the record with the highest LSN per key, so duplicates are harmless.
//!
//! What compaction discards: dead values, unneeded tombstones, and with them the
//! `client_id`/`request_id` of those writes. That is why step 3 writes `CLIENTS` before the
//! commit point: every record an input holds has an LSN at most the file's tag, so recovery
//! (file + the records after its tag) still knows each client's newest write.
//!
//! If the retention pin covers one of the inputs by the time the copy is done (it was set or
//! lowered meanwhile), the commit deletes no input at all and only adds the outputs: deleting
//! just the unprotected inputs would be unsafe, since tombstones were dropped on the assumption
//! that every input goes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::StorageError;
use crate::format::{self, RecordKind, SegmentKind, SEGMENT_HEADER_LEN};
use crate::index::Slot;
use crate::segment::{segment_file_name, Segment};
use crate::{lookup_key, Durability, Store};

/// Name of the commit marker.
pub(crate) const MARKER: &str = "COMPACT";
/// Name of the marker while it is being written.
pub(crate) const MARKER_TMP: &str = "COMPACT.tmp";
const MARKER_MAGIC: &str = "tandem-compaction 1";

/// How long compaction waits before retrying a segment allocation that failed for lack of space.
const NO_SPACE_RETRY: Duration = Duration::from_millis(500);
/// Shortest compaction step in `tick` (see `compaction_tick`).
const MIN_STEP: Duration = Duration::from_micros(25);

/// Where compaction is.
pub(crate) enum State {
    /// Nothing in progress.
    Idle,
    /// Copying live records out of the inputs.
    Copying(Box<Copying>),
    /// Waiting for the background thread to commit and clean up the outputs with these ids.
    Committing(Vec<u64>),
    /// The commit found no space for its small files and committed nothing; it is submitted
    /// again at the instant given (see `CommitError::NoSpace`).
    Deferred(Box<CommitJob>, Instant),
}

/// Progress of the copy phase.
pub(crate) struct Copying {
    /// Segment-table positions of the inputs.
    inputs: Vec<u32>,
    /// Index into `inputs` of the segment being copied.
    next: usize,
    /// Offset of the next record to look at in that segment.
    cursor: u32,
    /// Positions of the outputs; the last one is being filled.
    outputs: Vec<u32>,
    /// Smallest LSN in any segment that is not an input.
    outside_min_lsn: u64,
    /// After a failed allocation: not before this.
    pub retry_at: Option<Instant>,
    copied_bytes: u64,
    input_bytes: u64,
    /// Upper bound of the bytes the copy writes: live bytes of the inputs plus their tombstones
    /// at the largest size. Outputs are sized by it, so that a compaction that keeps 1 MiB
    /// leaves a 1 MiB file, not a mostly empty segment-sized one.
    estimate: u64,
    started: Instant,
}

/// Everything the background thread needs to commit a compaction.
pub(crate) struct CommitJob {
    dir: PathBuf,
    dir_file: Arc<File>,
    /// Outputs and every other segment with unflushed writes.
    flush: Vec<crate::segment::SyncRange>,
    /// (id, current `.tmp` path, final `.seg` path) of each output.
    outputs: Vec<(u64, PathBuf, PathBuf)>,
    /// (id, path) of each input.
    obsolete: Vec<(u64, PathBuf)>,
    /// The inputs' mappings, unmapped off the event loop.
    obsolete_segments: Vec<Segment>,
    /// Everything up to here is durable once the job succeeds.
    pub lsn: u64,
    /// What the job's flushes cover.
    pub marks: crate::worker::FlushMarks,
    /// Test hook: pause between steps so crash tests can land in each window.
    step_delay: Duration,
    /// Length of a log segment: only retired files of this length are kept for reuse.
    segment_len: u64,
    /// The at-most-once table's file image (`clients`), written before any input is deleted;
    /// handed back with the result for reuse.
    pub clients: Vec<u8>,
    /// Test hook: this many more runs of the job find no space for the client table.
    #[cfg(test)]
    no_space: u32,
}

#[cfg(test)]
thread_local! {
    /// Test hook: the next compaction commit begun on this thread finds no space for its client
    /// table this many times (the commit runs on the background thread, so the count travels
    /// with the job).
    pub(crate) static COMMIT_NO_SPACE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl Store {
    /// Whether the dead-byte thresholds call for a compaction.
    ///
    /// Only dead bytes compaction can reclaim count: those in sealed segments beyond what the
    /// segment had when written (a compaction output starts with the tombstones it had to keep),
    /// and not in log segments the retention pin protects. Otherwise kept tombstones or pinned
    /// segments could trigger compaction after compaction with nothing to take.
    ///
    /// The minimum defaults to half a segment, so one sealed, fully dead segment is enough at any
    /// segment size. Under space pressure (an allocation failed for lack of space since the last
    /// commit) any reclaimable byte is enough: nothing else can make room on a full disk.
    pub(crate) fn should_compact(&self) -> bool {
        if self.poisoned || !matches!(self.compaction, State::Idle) || self.compaction_held() {
            return false;
        }
        let min_dead = self.opts.compact_min_dead_bytes.unwrap_or(self.opts.segment_len / 2);
        if min_dead == u64::MAX {
            return false; // automatic compaction is off
        }
        let (mut used, mut reclaimable) = (0u64, 0u64);
        for s in self.segments.iter().flatten() {
            used += s.used_bytes();
            if s.sealed && !self.pinned(s) {
                reclaimable += s.reclaimable_bytes();
            }
        }
        if self.space_pressure {
            return reclaimable > 0;
        }
        reclaimable > 0
            && reclaimable >= min_dead
            && reclaimable as f64 >= self.opts.compact_dead_ratio * used as f64
    }

    /// Inputs: sealed segments with reclaimable bytes that the retention pin does not protect;
    /// for an automatic compaction only those that free at least as many bytes as they copy (at
    /// least `compact_dead_ratio` dead), if there are any; with `all` (`compact_now`) every one.
    ///
    /// An LFS-style cost-benefit rule (rank by `(1 - u) * age / (1 + u)`, take the best until
    /// they hold half of what is reclaimable) was tried and measured worse in the server: write
    /// amplification 0.20 vs 0.18 (uniform keys) and 0.35 vs 0.27 (zipfian), with twice the
    /// compactions. Compaction outputs hold old records, so their age ranks them high however
    /// live they are, and cold data was copied again and again (BENCHMARKS.md, issue #11).
    pub(crate) fn choose_inputs(&self, all: bool) -> Vec<u32> {
        let candidates = || {
            self.segments.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i as u32, s))).filter(
                |(i, s)| s.sealed && *i != self.active && s.reclaimable_bytes() > 0 && !self.pinned(s),
            )
        };
        let ratio = self.opts.compact_dead_ratio;
        let picked: Vec<u32> = candidates()
            .filter(|(_, s)| all || s.dead_bytes() as f64 >= ratio * s.used_bytes() as f64)
            .map(|(i, _)| i)
            .collect();
        if picked.is_empty() {
            candidates().map(|(i, _)| i).collect()
        } else {
            picked
        }
    }

    pub(crate) fn start_compaction(&mut self, inputs: Vec<u32>, now: Instant) {
        let outside_min_lsn = self
            .segments
            .iter()
            .enumerate()
            .filter(|(i, _)| !inputs.contains(&(*i as u32)))
            .filter_map(|(_, s)| s.as_ref().map(|s| s.min_lsn))
            .min()
            .unwrap_or(u64::MAX);
        let input_bytes =
            inputs.iter().filter_map(|&i| self.segments[i as usize].as_ref()).map(|s| s.used_bytes()).sum();
        let largest_tombstone = format::record_len(self.opts.max_key_len, 0) as u64;
        let estimate = inputs
            .iter()
            .filter_map(|&i| self.segments[i as usize].as_ref())
            .map(|s| s.live_bytes + s.tombstones as u64 * largest_tombstone)
            .sum();
        log::info!("compaction started: inputs={} input_bytes={input_bytes}", inputs.len());
        self.compaction = State::Copying(Box::new(Copying {
            inputs,
            next: 0,
            cursor: SEGMENT_HEADER_LEN as u32,
            outputs: Vec::new(),
            outside_min_lsn,
            retry_at: None,
            copied_bytes: 0,
            input_bytes,
            estimate,
            started: now,
        }));
    }

    /// The compaction part of `tick`: start one if due, or run one bounded step.
    pub(crate) fn compaction_tick(&mut self, now: Instant) -> Result<(), StorageError> {
        if let State::Deferred(_, at) = &self.compaction {
            if now >= *at {
                self.resubmit_commit();
            }
            return Ok(());
        }
        if matches!(self.compaction, State::Idle) {
            if !self.should_compact() {
                return Ok(());
            }
            let inputs = self.choose_inputs(false);
            if inputs.is_empty() {
                return Ok(());
            }
            self.start_compaction(inputs, now);
        }
        if let State::Copying(c) = &self.compaction {
            // A snapshot walk needs records to stay where they are: the copy pauses.
            if c.retry_at.is_some_and(|t| now < t) || self.compaction_held() {
                return Ok(());
            }
            // Counted from the step's own start: `now` is when the caller's iteration began, and
            // after a busy iteration a budget counted from there would be spent before the step
            // runs, leaving compaction a few records per tick, too slow for a heavy writer. And
            // scaled to the iteration: at most as long as the caller has just worked (at least
            // MIN_STEP), so a lightly loaded loop, which iterates often, takes short steps and a
            // lone client's next request does not wait a whole budget behind one.
            let step_start = Instant::now();
            let worked = step_start.saturating_duration_since(now);
            let budget = worked.clamp(MIN_STEP, self.opts.compact_step_budget.max(MIN_STEP));
            let deadline = step_start + budget;
            match self.copy_step(Some(deadline)) {
                Ok(true) => self.begin_commit(),
                Ok(false) => {}
                // A full disk only pauses compaction (retried after a while, logged by
                // `copy_step`); it must not look like a failure of the store to the event loop.
                Err(StorageError::NoSpace) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Runs a full compaction to completion, waiting for the commit: first any compaction in
    /// progress, then one over every segment with dead bytes that the retention pin does not
    /// protect (the active log segment is sealed first if it has some and would not be
    /// protected). For tests and administration; it blocks. It does nothing while a snapshot
    /// walk or an install holds compaction.
    ///
    /// # Errors
    /// [`StorageError::NoSpace`] if an output segment cannot be allocated (the compaction stays in
    /// progress and `tick` retries it); [`StorageError::Poisoned`]; I/O errors of the commit.
    pub fn compact_now(&mut self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        if self.compaction_held() {
            return Ok(());
        }
        self.finish_compaction()?;
        let pin = self.log_pin;
        if self.active_segment().is_some_and(|s| s.dead_bytes() > 0 && pin.is_none_or(|p| s.max_lsn < p)) {
            self.roll()?;
        }
        let inputs = self.choose_inputs(true);
        if inputs.is_empty() {
            return Ok(());
        }
        self.start_compaction(inputs, Instant::now());
        self.finish_compaction()
    }

    /// Drives a compaction in progress to completion.
    ///
    /// # Errors
    /// [`StorageError::NoSpace`] if an output cannot be allocated or the commit, tried again,
    /// still finds no space (the compaction stays in progress); others as for `tick`.
    pub(crate) fn finish_compaction(&mut self) -> Result<(), StorageError> {
        let mut retried = false;
        loop {
            match self.compaction {
                State::Idle => return Ok(()),
                State::Deferred(..) if retried => return Err(StorageError::NoSpace),
                State::Deferred(..) => {
                    retried = true;
                    self.resubmit_commit();
                }
                State::Copying(_) if self.compaction_held() => return Ok(()),
                State::Copying(_) => {
                    if self.copy_step(None)? {
                        self.begin_commit();
                    }
                }
                State::Committing(_) => match self.worker.wait_result() {
                    Some(done) => self.handle_done(done)?,
                    None => self.compaction = State::Idle,
                },
            }
        }
    }

    /// Copies records until `deadline` (or the end). Returns whether every input is done.
    pub(crate) fn copy_step(&mut self, deadline: Option<Instant>) -> Result<bool, StorageError> {
        let State::Copying(mut c) = std::mem::replace(&mut self.compaction, State::Idle) else {
            return Ok(false);
        };
        let result = self.copy_records(&mut c, deadline);
        if let Err(StorageError::NoSpace) = result {
            log::warn!("compaction paused: no space for an output segment; retrying");
            c.retry_at = Some(Instant::now() + NO_SPACE_RETRY);
        } else {
            c.retry_at = None;
        }
        self.compaction = State::Copying(c);
        result
    }

    fn copy_records(&mut self, c: &mut Copying, deadline: Option<Instant>) -> Result<bool, StorageError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut n = 0u32;
        let result = loop {
            if c.next >= c.inputs.len() {
                break Ok(true);
            }
            n += 1;
            if n % 4 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                break Ok(false);
            }
            let in_slot = c.inputs[c.next];
            let off = c.cursor;
            if off == SEGMENT_HEADER_LEN as u32
                && self
                    .segments
                    .get(in_slot as usize)
                    .and_then(|s| s.as_ref())
                    .is_some_and(|s| s.live_bytes == 0 && s.tombstones == 0)
            {
                // Nothing live and no tombstone: nothing in it to copy or to keep.
                c.next += 1;
                continue;
            }
            // Decide under shared borrows, then copy the record out so the table can be changed.
            let (keep, hash, lsn, kind) = {
                let Some(Some(seg)) = self.segments.get(in_slot as usize) else {
                    c.next += 1;
                    continue;
                };
                let rec =
                    if off < seg.write_off { format::view_record_unchecked(seg.from(off)) } else { None };
                let Some(rec) = rec else {
                    c.next += 1;
                    c.cursor = SEGMENT_HEADER_LEN as u32;
                    continue;
                };
                let hash = self.index.hash(rec.key);
                let keep = match rec.meta.kind {
                    RecordKind::Put => self.index.find(hash, |s| s.seg == in_slot && s.off == off).is_some(),
                    RecordKind::Tombstone => {
                        rec.meta.lsn > c.outside_min_lsn && {
                            let segments = &self.segments;
                            self.index
                                .find(hash, |s| s.hash == hash && lookup_key(segments, s) == rec.key)
                                .is_none()
                        }
                    }
                };
                if keep {
                    scratch.clear();
                    scratch.extend_from_slice(&seg.bytes()[off as usize..off as usize + rec.len]);
                }
                c.cursor += rec.len as u32;
                (keep, hash, rec.meta.lsn, rec.meta.kind)
            };
            if !keep {
                continue;
            }
            let out_slot = match self.output_with_room(c, scratch.len()) {
                Ok(slot) => slot,
                Err(e) => {
                    // Not copied after all: look at this record again on the retry.
                    c.cursor = off;
                    break Err(e);
                }
            };
            let len = scratch.len() as u64;
            self.compaction_bytes_copied += len;
            let out = self.seg_mut(out_slot);
            let new_off = out.append_raw(&scratch, lsn);
            c.copied_bytes += len;
            if kind == RecordKind::Tombstone {
                out.tombstones += 1;
            }
            if kind == RecordKind::Put {
                out.live_bytes += len;
                if let Some(slot) = self.index.find_mut(hash, |s| s.seg == in_slot && s.off == off) {
                    *slot = Slot { hash, seg: out_slot, off: new_off };
                }
                let input = self.seg_mut(in_slot);
                input.live_bytes = input.live_bytes.saturating_sub(len);
            }
        };
        self.scratch = scratch;
        result
    }

    /// The output segment to copy a record of `len` bytes into, creating one if needed.
    fn output_with_room(&mut self, c: &mut Copying, len: usize) -> Result<u32, StorageError> {
        if let Some(&last) = c.outputs.last() {
            if self.seg_mut(last).has_room(len) {
                return Ok(last);
            }
            self.seg_mut(last).sealed = true;
        }
        let id = self.next_segment_id;
        // What is left to copy, with room for one more largest record, in whole pages.
        let largest = format::record_len(self.opts.max_key_len, self.opts.max_value_len) as u64;
        let want = c.estimate.saturating_sub(c.copied_bytes) + (SEGMENT_HEADER_LEN + len) as u64 + largest;
        let seg_len = want.next_multiple_of(4096).clamp(crate::MIN_SEGMENT_LEN, self.opts.segment_len);
        // On a full disk a smaller output (down to this record's size) still makes progress:
        // the copy continues into another output when it is full.
        let min = ((SEGMENT_HEADER_LEN + len) as u64).next_multiple_of(4096).min(seg_len);
        let seg = self.allocate(id, SegmentKind::Compacted, seg_len, min, self.last_lsn, "tmp")?;
        seg.advise_random();
        self.next_segment_id += 1;
        let slot = self.add_segment(seg);
        c.outputs.push(slot);
        Ok(slot)
    }

    /// Hands the finished copy to the background thread for commit and clean-up.
    ///
    /// If the retention pin now protects one of the inputs (it was set or lowered during the
    /// copy), the commit keeps every input: the outputs are committed as extra copies (harmless:
    /// recovery keeps one record per key by LSN) and nothing is deleted. Keeping only the
    /// unprotected inputs would not be safe: tombstones were dropped on the assumption that
    /// every input goes, and a kept input could hold an older value they were hiding.
    pub(crate) fn begin_commit(&mut self) {
        let State::Copying(c) = std::mem::replace(&mut self.compaction, State::Committing(Vec::new())) else {
            return;
        };
        let mut outputs = Vec::new();
        for &o in &c.outputs {
            let seg = self.seg_mut(o);
            seg.sealed = true;
            outputs.push((seg.id, seg.path.clone(), seg.path.with_extension("seg")));
        }
        self.compaction = State::Committing(outputs.iter().map(|o| o.0).collect());
        let keep_inputs = c
            .inputs
            .iter()
            .any(|&i| self.segments.get(i as usize).and_then(|s| s.as_ref()).is_some_and(|s| self.pinned(s)));
        if keep_inputs {
            log::info!("compaction keeps its inputs: the retention pin now covers one of them");
        }
        let mut obsolete = Vec::new();
        let mut obsolete_segments = Vec::new();
        for &i in c.inputs.iter().filter(|_| !keep_inputs) {
            if let Some(seg) = self.take_segment(i) {
                debug_assert_eq!(seg.live_bytes, 0, "compaction input {} still has live records", seg.id);
                obsolete.push((seg.id, seg.path.clone()));
                obsolete_segments.push(seg);
            }
        }
        // Complete up to here: every record this compaction drops has an LSN at most this.
        let mut clients = std::mem::take(&mut self.clients_image);
        self.clients.encode_into(self.last_lsn, &mut clients);
        // Flushed by the commit; counted as flushed only once it has succeeded. With
        // `Durability::Never` only the outputs are: flushing every segment would write out all
        // the page cache holds at each compaction, which is the disk bandwidth that mode leaves
        // to the kernel. The cost, after a machine crash only: a key whose newest value was not
        // yet written back may be missing instead of holding its older value (docs/storage.md).
        let flush_all = !matches!(self.opts.durability, Durability::Never);
        let (flush, marks) = self.unflushed_of(|s| flush_all || outputs.iter().any(|o| o.0 == s.id));
        let durable_after = if flush_all { self.last_lsn } else { self.durable_lsn };
        // The inputs' records are gone from this process's view of the log already.
        self.recompute_log_start();
        log::info!(
            "compaction copied: input_bytes={} copied_bytes={} outputs={} in {:?}; committing",
            c.input_bytes,
            c.copied_bytes,
            outputs.len(),
            c.started.elapsed()
        );
        let job = CommitJob {
            dir: self.dir.clone(),
            dir_file: Arc::clone(&self.dir_file),
            flush,
            outputs,
            obsolete,
            obsolete_segments,
            lsn: durable_after,
            marks,
            step_delay: self.opts.debug_commit_step_delay,
            segment_len: self.opts.segment_len,
            clients,
            #[cfg(test)]
            no_space: COMMIT_NO_SPACE.replace(0),
        };
        self.worker.submit(crate::worker::Job::Commit(Box::new(job)));
    }

    /// Takes back a commit that found no space for its small files (see `CommitError::NoSpace`)
    /// to submit it again later; meanwhile no compaction starts, and compaction thresholds are
    /// those of a full disk.
    pub(crate) fn commit_deferred(&mut self, job: Box<CommitJob>) {
        log::warn!(
            "compaction commit deferred: no space for the client table or the commit marker; retrying in {:?}",
            NO_SPACE_RETRY
        );
        self.space_pressure = true;
        self.compaction = State::Deferred(job, Instant::now() + NO_SPACE_RETRY);
    }

    /// Submits a deferred commit again.
    fn resubmit_commit(&mut self) {
        if let State::Deferred(job, _) = std::mem::replace(&mut self.compaction, State::Idle) {
            self.compaction = State::Committing(job.outputs.iter().map(|o| o.0).collect());
            self.worker.submit(crate::worker::Job::Commit(job));
        }
    }

    /// Applies the background thread's verdict on a commit.
    pub(crate) fn finish_commit(
        &mut self,
        lsn: u64,
        marks: crate::worker::FlushMarks,
        result: Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let outputs = match std::mem::replace(&mut self.compaction, State::Idle) {
            State::Committing(outputs) => outputs,
            _ => Vec::new(),
        };
        if let Err(e) = result {
            self.poisoned = true;
            log::error!("compaction commit failed, refusing writes until reopened: {e}");
            return Err(e);
        }
        for seg in self.segments.iter_mut().flatten().filter(|s| outputs.contains(&s.id)) {
            seg.path.set_extension("seg");
            seg.baseline_dead = seg.dead_bytes();
        }
        self.apply_marks(marks);
        self.compactions += 1;
        // It freed what it could; the next allocation failure, if any, says whether that was
        // enough.
        self.space_pressure = false;
        self.durable_lsn = self.durable_lsn.max(lsn);
        let stats = self.stats();
        self.recompute_log_start();
        log::info!(
            "compaction committed: segments={} live_bytes={} dead_bytes={} bytes_written={} compaction_bytes_copied={}",
            stats.segments,
            stats.live_bytes,
            stats.dead_bytes,
            stats.bytes_written,
            stats.compaction_bytes_copied
        );
        Ok(())
    }
}

impl CommitJob {
    /// Gives up a deferred commit (`Store::wipe`): its inputs, which left the store's table when
    /// the commit began, are deleted (their records are in the outputs, which the caller deletes
    /// with the table).
    pub(crate) fn abandon(mut self: Box<Self>) -> Result<(), StorageError> {
        self.obsolete_segments.clear();
        for (_, path) in &self.obsolete {
            remove_if_exists(path)?;
        }
        Ok(())
    }
}

/// Why a commit did not complete.
pub(crate) enum CommitError {
    /// No space for the client table or the marker: nothing is committed (the directory is as
    /// before the compaction, plus its `*.tmp` outputs), so the job can run again later. Only
    /// space freed elsewhere can help, and poisoning the store for it would stop every write
    /// until a restart.
    NoSpace,
    /// Anything else, or any failure after the commit point: the store must be poisoned.
    Failed(StorageError),
}

/// The commit and clean-up, run on the background thread. Each step is described in the module
/// docs; the order is what makes it crash-safe. The job's input mappings are dropped once the
/// commit point is passed.
pub(crate) fn commit(job: &mut CommitJob) -> Result<(), CommitError> {
    #[cfg(test)]
    if job.no_space > 0 {
        job.no_space -= 1;
        return Err(CommitError::NoSpace);
    }
    let CommitJob {
        dir,
        dir_file,
        flush,
        outputs,
        obsolete,
        obsolete_segments,
        step_delay,
        segment_len,
        clients,
        ..
    } = job;
    let pause = || {
        if !step_delay.is_zero() {
            std::thread::sleep(*step_delay);
        }
    };
    let sync_dir =
        || dir_file.sync_all().map_err(|e| StorageError::io(format!("fsync directory {}", dir.display()), e));
    let failed = CommitError::Failed;
    // A failed flush may have lost data (fsyncgate): never retried, whatever the error.
    for r in flush.iter() {
        r.sync().map_err(|e| failed(StorageError::io("flush before compaction commit", e)))?;
    }
    let no_space_or_failed = |e| match e {
        StorageError::NoSpace => CommitError::NoSpace,
        e => CommitError::Failed(e),
    };
    // Before the commit point: once `COMPACT` exists, recovery deletes the inputs, and the ids
    // of the records they drop must be in the table file by then.
    crate::clients::write_file(dir, clients).map_err(no_space_or_failed)?;
    sync_dir().map_err(failed)?;
    pause();
    let new_ids: Vec<u64> = outputs.iter().map(|o| o.0).collect();
    let old_ids: Vec<u64> = obsolete.iter().map(|o| o.0).collect();
    // Its last step, the rename, is the commit point: any error it returns is from before it.
    write_marker(dir, &old_ids, &new_ids).map_err(no_space_or_failed)?;
    let after = || -> Result<(), StorageError> {
        sync_dir()?;
        pause();
        for (_, tmp, fin) in outputs.iter() {
            fs::rename(tmp, fin).map_err(|e| StorageError::io(format!("rename {}", tmp.display()), e))?;
            pause();
        }
        sync_dir()?;
        Ok(())
    };
    after().map_err(failed)?;
    obsolete_segments.clear();
    let after = || -> Result<(), StorageError> {
        for (id, path) in obsolete.iter() {
            crate::segment::retire(dir, *id, path, *segment_len)
                .map_err(|e| StorageError::io(format!("remove {}", path.display()), e))?;
            pause();
        }
        sync_dir()?;
        remove_if_exists(&dir.join(MARKER))?;
        sync_dir()?;
        Ok(())
    };
    after().map_err(failed)
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(format!("remove {}", path.display()), e)),
    }
}

/// Encodes the marker text: magic line, `obsolete <id>` and `new <id>` lines, `crc <hex>`.
pub(crate) fn encode_marker(obsolete: &[u64], new: &[u64]) -> String {
    let mut body = format!("{MARKER_MAGIC}\n");
    for id in obsolete {
        body.push_str(&format!("obsolete {}\n", segment_file_name(*id, "seg")));
    }
    for id in new {
        body.push_str(&format!("new {}\n", segment_file_name(*id, "seg")));
    }
    let crc = crc32fast::hash(body.as_bytes());
    body.push_str(&format!("crc {crc:08x}\n"));
    body
}

/// Parses marker text into (obsolete ids, new ids); `None` if damaged.
pub(crate) fn parse_marker(text: &str) -> Option<(Vec<u64>, Vec<u64>)> {
    let crc_at = text.rfind("crc ")?;
    let (body, crc_line) = text.split_at(crc_at);
    let crc = u32::from_str_radix(crc_line.strip_prefix("crc ")?.trim_end(), 16).ok()?;
    if crc != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    let mut lines = body.lines();
    if lines.next()? != MARKER_MAGIC {
        return None;
    }
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for line in lines {
        let (what, name) = line.split_once(' ')?;
        let (id, ext) = crate::segment::parse_segment_file_name(name)?;
        if ext != "seg" {
            return None;
        }
        match what {
            "obsolete" => old.push(id),
            "new" => new.push(id),
            _ => return None,
        }
    }
    Some((old, new))
}

pub(crate) fn write_marker(dir: &Path, obsolete: &[u64], new: &[u64]) -> Result<(), StorageError> {
    let tmp = dir.join(MARKER_TMP);
    let text = encode_marker(obsolete, new);
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StorageError::io(ctx("create"), e))?;
    f.write_all(text.as_bytes()).map_err(|e| StorageError::io(ctx("write"), e))?;
    f.sync_all().map_err(|e| StorageError::io(ctx("fsync"), e))?;
    fs::rename(&tmp, dir.join(MARKER)).map_err(|e| StorageError::io(ctx("rename"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_rejects_damage() {
        let text = encode_marker(&[1, 2], &[9]);
        assert_eq!(parse_marker(&text), Some((vec![1, 2], vec![9])));
        assert_eq!(
            parse_marker(&text.replace("obsolete 0000000000000002", "obsolete 0000000000000003")),
            None
        );
        assert_eq!(parse_marker(&text[..text.len() - 3]), None);
        assert_eq!(parse_marker(""), None);
        assert_eq!(parse_marker(&encode_marker(&[], &[])), Some((vec![], vec![])));
    }
}
