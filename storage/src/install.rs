//! Receiving a snapshot for state transfer: [`Store::wipe`], then [`Store::install_record`] and
//! [`Store::install_client`] for everything the primary sends, then [`Store::finish_install`];
//! afterwards the backup continues with [`Store::apply_replicated`] from the snapshot's
//! `upto + 1`.
//!
//! # Crash safety
//!
//! Installed records go into segments of the *compacted* kind named `*.tmp`, as compaction
//! outputs are before their commit, so a crash during the install leaves nothing recovery keeps:
//! it deletes every `*.tmp` and the store reopens as it was after the wipe.
//!
//! `finish_install` commits the same way a compaction does, with a `COMPACT` marker as the single
//! commit point:
//!
//! 1. fdatasync the install segments; create the new log segment as `*.tmp`, its header's
//!    `base_lsn` = `upto` (so that recovery finds last LSN `upto` although no record carries it)
//!    and fdatasync it;
//! 2. write `CLIENTS` tagged `upto` (through `CLIENTS.tmp`), fsync the directory;
//! 3. write the marker (obsolete: the store's old, empty segments; new: the install segments and
//!    the new log segment), fsync the directory: **the commit point**;
//! 4. rename the new segments to `*.seg`, delete the old ones, delete the marker (each step
//!    followed by a directory fsync). Recovery redoes exactly these steps when it finds the
//!    marker.
//!
//! A crash before the commit point leaves the wiped store (with, after step 2, the new client
//! table: a caller that keeps its own "install in progress" marker wipes again); after it, the
//! finished install. A crash during `wipe` itself may leave some of the old segments: `wipe`
//! deletes files one by one. The caller's marker covers that too.

use crate::clients::{self, ClientEntry, CLIENTS_FILE, CLIENTS_TMP};
use crate::compaction::{self, remove_if_exists, MARKER};
use crate::format::{self, RecordKind, RecordMeta, SegmentKind};
use crate::index::{Index, Slot};
use crate::segment::{segment_file_name, Segment};
use crate::{lookup_key, record_at, Lsn, StorageError, Store};

#[cfg(test)]
thread_local! {
    /// Test hook: `finish_install` stops with an error just before (1) or just after (2) its
    /// commit point, leaving the files as a crash there would.
    pub(crate) static STOP_FINISH_AT: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
fn stop_at(point: u8) -> Result<(), StorageError> {
    if STOP_FINISH_AT.get() == point {
        return Err(StorageError::io("test stop", std::io::Error::other("stopped by STOP_FINISH_AT")));
    }
    Ok(())
}

/// A snapshot install in progress.
pub(crate) struct Install {
    /// Segment-table positions of the install segments; the last one is being filled.
    segments: Vec<u32>,
    /// Highest LSN installed.
    max_lsn: u64,
    /// Records installed.
    records: u64,
}

impl Store {
    /// Empties the store: no keys, [`Store::last_lsn`] 0, [`Store::log_start`] 1, an empty
    /// at-most-once table. Waits for background work first, then deletes every segment file
    /// and `CLIENTS` and starts a fresh active log segment; the store stays usable. An install
    /// or a compaction in progress is abandoned (its files deleted). LSNs start again from 1:
    /// this is for a backup about to install a snapshot (its LSNs then continue from the
    /// snapshot's). Snapshot walks and the retention pin are left to their owners.
    ///
    /// Not atomic: a crash in the middle may leave some of the old segments behind, i.e. a
    /// partial store. The caller keeps its own marker ("install in progress") and wipes again
    /// after a restart that finds it.
    ///
    /// # Errors
    /// [`StorageError::Poisoned`]; errors of background work it waited for; I/O errors deleting
    /// files (the store is then poisoned: reopen it); [`StorageError::NoSpace`] if the new log
    /// segment cannot be allocated (the store is empty and usable; the next write retries).
    pub fn wipe(&mut self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        // A compaction commit renames and deletes files, a flush holds them: let them finish.
        while let Some(done) = self.worker.wait_result() {
            self.handle_done(done)?;
        }
        self.discard_prepared();
        let (mut files, mut failed) = (0usize, None);
        if let compaction::State::Deferred(job, _) =
            std::mem::replace(&mut self.compaction, compaction::State::Idle)
        {
            if let Err(e) = job.abandon() {
                failed.get_or_insert(e);
            }
        }
        self.install = None;
        for slot in 0..self.segments.len() as u32 {
            if let Some(seg) = self.take_segment(slot) {
                let path = seg.path.clone();
                drop(seg);
                files += 1;
                if let Err(e) = remove_if_exists(&path) {
                    failed.get_or_insert(e);
                }
            }
        }
        for name in [CLIENTS_FILE, CLIENTS_TMP] {
            if let Err(e) = remove_if_exists(&self.dir.join(name)) {
                failed.get_or_insert(e);
            }
        }
        self.segments.clear();
        self.free_slots.clear();
        self.active = u32::MAX;
        self.index = Index::with_capacity(self.opts.index_capacity);
        self.clients.clear();
        self.last_lsn = 0;
        self.durable_lsn = 0;
        self.log_start = 1;
        self.dir_gen += 1;
        if let Some(e) = failed {
            self.poisoned = true;
            ::log::error!("wipe of {} failed, refusing writes until reopened: {e}", self.dir.display());
            return Err(e);
        }
        self.roll()?;
        self.sync()?;
        ::log::info!("wiped {}: deleted {files} segment files", self.dir.display());
        Ok(())
    }

    /// Installs one record of a snapshot: a put of `key` = `value` with the given LSN and
    /// version, written into compaction-kind segments named `*.tmp` until
    /// [`Store::finish_install`] (a crash before that leaves nothing recovery keeps), and
    /// pointed at by the index, so reads see it at once.
    ///
    /// The first call starts the install; the store must be empty then ([`Store::wipe`] or a new
    /// directory). From then until `finish_install`, writes (`put`, `delete`, `append`,
    /// `apply_replicated`) fail with [`StorageError::Install`] and compaction holds still.
    /// Pass the record's original LSN clamped to the snapshot's `upto` (installed records must
    /// lose to any log record of the key on recovery, which keeps the highest LSN). A later
    /// install of the same key replaces the earlier one unless it carries a lower LSN (ties go
    /// to the later one, as in recovery).
    ///
    /// # Errors
    /// [`StorageError::Install`] if the store is not empty at the first call or `lsn` is 0;
    /// the key and value limits as for [`Store::put`]; [`StorageError::NoSpace`] if a segment
    /// cannot be allocated (nothing written; retry later); [`StorageError::Poisoned`].
    pub fn install_record(
        &mut self,
        key: &[u8],
        value: &[u8],
        lsn: Lsn,
        version: u64,
    ) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        self.check_limits(key, value.len())?;
        if lsn.0 == 0 {
            return Err(StorageError::Install("an installed record needs an LSN of at least 1"));
        }
        if self.install.is_none() {
            if self.last_lsn != 0 || self.index.len() != 0 {
                return Err(StorageError::Install(
                    "a snapshot can only be installed into an empty store: wipe it first",
                ));
            }
            ::log::info!("snapshot install begun in {}", self.dir.display());
            self.install = Some(Box::new(Install { segments: Vec::new(), max_lsn: 0, records: 0 }));
        }
        let len = format::record_len(key.len(), value.len());
        let slot = self.install_segment_with_room(len)?;
        let seg = self.seg_mut(slot);
        let meta =
            RecordMeta { kind: RecordKind::Put, lsn: lsn.0, timestamp: version, client_id: 0, request_id: 0 };
        let header = format::encode_record_header_tagged(&meta, format::segment_tag(seg.id), key, &[value]);
        let off = seg.append(&header, key, &[value], lsn.0);
        let hash = self.index.hash(key);
        let new = Slot { hash, seg: slot, off };
        let Store { index, segments, .. } = self;
        // Some(old slot, if any) when the new record becomes the key's live one.
        let took = match index.find_mut(hash, |s| s.hash == hash && lookup_key(segments, s) == key) {
            Some(s) => {
                let old_lsn = record_at(segments, s.seg, s.off).map_or(0, |r| r.meta.lsn);
                (old_lsn <= lsn.0).then(|| Some(std::mem::replace(s, new)))
            }
            None => {
                index.insert_new(new);
                Some(None)
            }
        };
        if let Some(old) = took {
            self.seg_mut(slot).live_bytes += len as u64;
            if let Some(old) = old {
                self.release(old);
            }
        }
        if let Some(install) = self.install.as_mut() {
            install.max_lsn = install.max_lsn.max(lsn.0);
            install.records += 1;
        }
        Ok(())
    }

    /// Sets the at-most-once table's entry of `client_id` (from the snapshot's table), whatever
    /// it was. Meant for an install: [`Store::finish_install`] applies the bound
    /// ([`Options::max_clients`](crate::Options::max_clients)) and persists the table. Client
    /// id 0 means "no client" and is ignored.
    pub fn install_client(&mut self, client_id: u64, entry: ClientEntry) {
        if client_id != 0 {
            self.clients.set(client_id, entry);
        }
    }

    /// The install segment to write a record of `len` bytes into, creating one if needed.
    fn install_segment_with_room(&mut self, len: usize) -> Result<u32, StorageError> {
        let last = self.install.as_ref().and_then(|i| i.segments.last().copied());
        if let Some(last) = last {
            if self.seg_mut(last).has_room(len) {
                return Ok(last);
            }
            self.seg_mut(last).sealed = true;
        }
        let id = self.next_segment_id;
        let seg = Segment::create(
            &self.dir,
            id,
            SegmentKind::Compacted,
            self.opts.segment_len,
            0,
            "tmp",
            self.space_reserve(),
        )?;
        // Written on the caller's thread without prefaulting: see `Segment::advise_random`.
        seg.advise_random();
        self.next_segment_id += 1;
        let slot = self.add_segment(seg);
        if let Some(install) = self.install.as_mut() {
            install.segments.push(slot);
        }
        Ok(slot)
    }

    /// Makes an install durable and permanent: afterwards [`Store::last_lsn`] is `upto`,
    /// [`Store::log_start`] is `upto + 1`, the at-most-once table is persisted as of `upto`, and
    /// [`Store::apply_replicated`] continues at `upto + 1` into the log. The same holds after a
    /// crash at any point once this returned. One atomic commit (see the module docs): a crash
    /// during it leaves either the wiped store or the finished install. Works with no records
    /// installed too (an empty snapshot), on an empty store.
    ///
    /// # Errors
    /// - [`StorageError::Install`] if no install is in progress and the store is not empty, or
    ///   an installed record's LSN is above `upto`; nothing changes.
    /// - [`StorageError::NoSpace`] if the new log segment cannot be allocated; nothing changes
    ///   (call again later).
    /// - I/O errors of the commit; the store is then poisoned and a reopen finishes or discards
    ///   the install. [`StorageError::Poisoned`].
    pub fn finish_install(&mut self, upto: Lsn) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        let (slots, max_lsn, records) = match &self.install {
            Some(i) => (i.segments.clone(), i.max_lsn, i.records),
            None if self.last_lsn != 0 || self.index.len() != 0 => {
                return Err(StorageError::Install(
                    "a snapshot can only be installed into an empty store: wipe it first",
                ))
            }
            None => (Vec::new(), 0, 0),
        };
        if max_lsn > upto.0 {
            return Err(StorageError::Install("an installed record has an LSN above upto"));
        }
        // The commit rewrites the directory: no background flush or commit may hold its files.
        while let Some(done) = self.worker.wait_result() {
            self.handle_done(done)?;
        }
        let id = self.next_segment_id;
        let log = Segment::create(
            &self.dir,
            id,
            SegmentKind::Log,
            self.opts.segment_len,
            upto.0,
            "tmp",
            self.space_reserve(),
        )?;
        log.advise_random();
        self.next_segment_id += 1;
        match self.commit_install(&slots, log, upto.0) {
            Ok(()) => {
                ::log::info!(
                    "snapshot install finished in {}: records={records} segments={} upto={upto} clients={}",
                    self.dir.display(),
                    slots.len(),
                    self.clients.len()
                );
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                ::log::error!("snapshot install commit failed, refusing writes until reopened: {e}");
                Err(e)
            }
        }
    }

    /// Steps 1-4 of the module docs, then the in-memory switch.
    fn commit_install(&mut self, slots: &[u32], log: Segment, upto: u64) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        let dir_file = std::sync::Arc::clone(&self.dir_file);
        let sync_dir = || {
            dir_file.sync_all().map_err(|e| StorageError::io(format!("fsync directory {}", dir.display()), e))
        };
        for &slot in slots {
            let seg = self.seg_mut(slot);
            seg.file
                .sync_data()
                .map_err(|e| StorageError::io(format!("fdatasync {}", seg.path.display()), e))?;
            seg.synced_upto = seg.write_off;
            seg.sealed = true;
        }
        log.file.sync_data().map_err(|e| StorageError::io(format!("fdatasync {}", log.path.display()), e))?;
        self.clients.enforce_bound();
        clients::write_file(&dir, &self.clients.encode(upto))?;
        sync_dir()?;
        #[cfg(test)]
        stop_at(1)?;
        let old: Vec<u32> = (0..self.segments.len() as u32)
            .filter(|i| !slots.contains(i) && matches!(self.segments.get(*i as usize), Some(Some(_))))
            .collect();
        let old_ids: Vec<u64> = old.iter().map(|&i| self.seg_mut(i).id).collect();
        let mut new_ids: Vec<u64> = slots.iter().map(|&i| self.seg_mut(i).id).collect();
        new_ids.push(log.id);
        compaction::write_marker(&dir, &old_ids, &new_ids)?;
        sync_dir()?;
        #[cfg(test)]
        stop_at(2)?;
        // Committed. The clean-up is what recovery would redo from the marker.
        let rename = |seg: &mut Segment| -> Result<(), StorageError> {
            let to = dir.join(segment_file_name(seg.id, "seg"));
            std::fs::rename(&seg.path, &to)
                .map_err(|e| StorageError::io(format!("rename {}", seg.path.display()), e))?;
            seg.path = to;
            Ok(())
        };
        for &slot in slots {
            rename(self.seg_mut(slot))?;
        }
        let mut log = log;
        rename(&mut log)?;
        sync_dir()?;
        for slot in old {
            if let Some(seg) = self.take_segment(slot) {
                let path = seg.path.clone();
                drop(seg);
                remove_if_exists(&path)?;
            }
        }
        sync_dir()?;
        remove_if_exists(&dir.join(MARKER))?;
        sync_dir()?;
        log.synced_upto = log.write_off;
        self.active = self.add_segment(log);
        self.last_lsn = upto;
        self.durable_lsn = upto;
        self.dir_synced_gen = self.dir_gen;
        self.install = None;
        self.recompute_log_start();
        Ok(())
    }
}
