//! One preallocated, memory-mapped segment file and its write cursor.
//!
//! A segment's blocks are allocated up front with `fallocate`, so writing into the mapping can
//! never hit a full disk (which, through a mapping, would be a `SIGBUS` rather than an error).
//! Records are written into the mapping with plain memory copies; a process that dies right after
//! leaves them in the page cache, from where the kernel writes them back. `flush` (msync) is only
//! needed against losing power or the kernel.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions, MmapRaw};

use crate::error::StorageError;
use crate::format::{self, SegmentHeader, SegmentKind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// File name of segment `id` with the given extension (`seg`, `tmp` or `new`).
pub(crate) fn segment_file_name(id: u64, ext: &str) -> String {
    format!("{id:016x}.{ext}")
}

/// Parses `0000000000000012.seg` into `(0x12, "seg")`.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 16 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((u64::from_str_radix(stem, 16).ok()?, ext))
}

#[cfg(test)]
thread_local! {
    /// Test hook: how many more segment allocations succeed before one fails with `ENOSPC`.
    pub(crate) static ALLOCS_BEFORE_ENOSPC: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
    /// Test hook: the next `flush` on this thread fails with `EIO`.
    pub(crate) static FAIL_NEXT_FLUSH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Test hook: a small disk holding just the segment's directory. [`free_space`] is this
    /// many bytes minus what the files of the directory take (blocks allocated, as `du` counts
    /// them), so allocating a segment fails with `ENOSPC` when it does not fit. Files deleted by
    /// the background thread count as freed as soon as they are gone.
    pub(crate) static DISK_QUOTA: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Bytes allocated to the files of `dir` (the `DISK_QUOTA` hook's idea of a used disk).
#[cfg(test)]
pub(crate) fn dir_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum()
}

/// A mapped segment file.
pub(crate) struct Segment {
    /// The id in the file name.
    pub id: u64,
    /// Log or compacted.
    pub kind: SegmentKind,
    /// Current path (a compaction output moves from `.tmp` to `.seg` when committed).
    pub path: PathBuf,
    /// Shared with the background thread, which fsyncs it.
    pub file: Arc<File>,
    map: MmapMut,
    /// End of the last record: where the next one goes.
    pub write_off: u32,
    /// Everything before this offset has been flushed.
    pub synced_upto: u32,
    /// Bytes of records the index points at.
    pub live_bytes: u64,
    /// Smallest and largest LSN of any record in the segment (`u64::MAX`, 0 when empty).
    pub min_lsn: u64,
    /// See `min_lsn`.
    pub max_lsn: u64,
    /// Dead bytes compaction cannot reclaim: the tombstones a compaction output had to keep.
    pub baseline_dead: u64,
    /// Tombstone records in the segment. A segment without tombstones and without live bytes
    /// holds nothing compaction must look at: it is retired without being read.
    pub tombstones: u32,
    /// No more records will be appended (a newer log segment exists, or compaction finished it).
    pub sealed: bool,
    /// A recycled file: stale bytes may follow the records (`format::SEG_FLAG_RECYCLED`).
    pub recycled: bool,
    /// A second, read-only mapping of the file, made on first use, through which the background
    /// thread msyncs byte ranges ([`Segment::unflushed_range`]): `fdatasync` would write every
    /// dirty page of the file, and a prefaulted segment is all dirty pages (zeros) past its
    /// records. The `Arc` keeps it mapped while a job uses it, whatever becomes of the segment.
    sync_map: std::sync::OnceLock<Arc<MmapRaw>>,
}

/// Bytes of one segment file for the background thread to make durable: msync of
/// `from..to` through [`Segment::unflushed_range`]'s mapping, which writes back those pages and
/// commits what the file system needs to read them back (`vfs_fsync_range`, datasync); or,
/// should that mapping be refused, `fdatasync` of the whole file.
pub(crate) enum SyncRange {
    /// The usual case.
    Range { map: Arc<MmapRaw>, from: usize, to: usize },
    /// Fallback: every dirty page of the file.
    File(Arc<File>),
}

impl SyncRange {
    /// Writes the range back and waits for the device.
    pub fn sync(&self) -> io::Result<()> {
        match self {
            SyncRange::Range { map, from, to } => map.flush_range(*from, to - from),
            SyncRange::File(file) => file.sync_data(),
        }
    }
}

impl Segment {
    /// A segment over `map` with no records accounted yet (recovery fills the counters in).
    fn from_parts(
        id: u64,
        kind: SegmentKind,
        path: &Path,
        file: File,
        map: MmapMut,
        sealed: bool,
        recycled: bool,
    ) -> Segment {
        Segment {
            id,
            kind,
            path: path.to_path_buf(),
            file: Arc::new(file),
            write_off: SEGMENT_HEADER_LEN.min(map.len()) as u32,
            map,
            synced_upto: 0,
            live_bytes: 0,
            min_lsn: u64::MAX,
            max_lsn: 0,
            baseline_dead: 0,
            tombstones: 0,
            sealed,
            recycled,
            sync_map: std::sync::OnceLock::new(),
        }
    }

    /// Creates, preallocates and maps a new segment named `{id}.{ext}` in `dir`, if that leaves
    /// at least `reserve` bytes free on the file system (see [`free_space`]).
    ///
    /// The free space is checked before allocating: a `fallocate` that fails for lack of space
    /// takes the blocks it can get before it fails and gives them back only when the file is
    /// removed, and meanwhile a compaction commit on another thread can fail to write its
    /// small files. The reserve is what those need (`Store::space_reserve`).
    ///
    /// # Errors
    /// [`StorageError::NoSpace`] if the blocks cannot be allocated; the file is removed again.
    pub fn create(
        dir: &Path,
        id: u64,
        kind: SegmentKind,
        len: u64,
        base_lsn: u64,
        ext: &str,
        reserve: u64,
    ) -> Result<Segment, StorageError> {
        if free_space(dir).is_some_and(|free| free < len.saturating_add(reserve)) {
            return Err(StorageError::NoSpace);
        }
        let path = dir.join(segment_file_name(id, ext));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io(format!("create segment {}", path.display()), e))?;
        let result = Self::init_new(
            file,
            &path,
            SegmentHeader { kind, id, segment_len: len, base_lsn, recycled: false },
        );
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    fn init_new(file: File, path: &Path, header: SegmentHeader) -> Result<Segment, StorageError> {
        let SegmentHeader { kind, id, segment_len: len, .. } = header;
        #[cfg(test)]
        if let Some(n) = ALLOCS_BEFORE_ENOSPC.get() {
            if n == 0 {
                return Err(StorageError::NoSpace);
            }
            ALLOCS_BEFORE_ENOSPC.set(Some(n - 1));
        }
        allocate(&file, len)
            .map_err(|e| StorageError::io(format!("allocate segment {}", path.display()), e))?;
        file.write_all_at(&header.encode(), 0)
            .map_err(|e| StorageError::io(format!("write segment header {}", path.display()), e))?;
        let map = map_file(&file, len as usize, path)?;
        Ok(Segment::from_parts(id, kind, path, file, map, false, false))
    }

    /// Reuses a retired segment file (`*.free`, see [`retire`]) as the next log segment `id`:
    /// renames it to `{id}.new`, writes a header flagged RECYCLED and zeroes the first record
    /// slot. The rest keeps the stale bytes of the file's earlier life: they are not zeroed,
    /// because that would cost as much memory bandwidth as the writes themselves. Instead every
    /// record written here carries this segment's tag, `append` keeps an all-zero header after
    /// the last record, and recovery reads a RECYCLED segment only up to that header or to the
    /// first record with another tag (`format::SEG_FLAG_RECYCLED`).
    ///
    /// A retired file's blocks are allocated and its pages are usually still in the page cache,
    /// so preparing it is a prefault of resident memory, where a new file costs a kernel
    /// zero-fill of freshly allocated pages on first touch (several times slower here). The
    /// caller prefaults (after making the header durable: prefaulting dirties every page).
    ///
    /// `Ok(None)` if the file was taken by someone else or is not `len` (a full log segment)
    /// long (it is deleted).
    pub fn recycle(free: &Path, dir: &Path, id: u64, len: u64) -> Result<Option<Segment>, StorageError> {
        let path = dir.join(segment_file_name(id, "new"));
        match fs::rename(free, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(format!("rename {}", free.display()), e)),
        }
        let result = Self::reinit(
            &path,
            SegmentHeader { kind: SegmentKind::Log, id, segment_len: len, base_lsn: 0, recycled: true },
        );
        if !matches!(result, Ok(Some(_))) {
            let _ = fs::remove_file(&path);
        }
        result
    }

    fn reinit(path: &Path, header: SegmentHeader) -> Result<Option<Segment>, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io(format!("open segment {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| StorageError::io(format!("stat {}", path.display()), e))?.len();
        if len != header.segment_len {
            return Ok(None);
        }
        let mut map = map_file(&file, len as usize, path)?;
        map[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + RECORD_HEADER_LEN].fill(0);
        map[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        Ok(Some(Segment::from_parts(header.id, header.kind, path, file, map, false, header.recycled)))
    }

    /// Opens and maps an existing segment file as it is (its length, whatever the header says).
    ///
    /// Returns the segment and its decoded header, or `None` for the header if it is damaged.
    /// Records are not scanned here; see `recovery`.
    pub fn open(path: &Path, id: u64) -> Result<(Segment, Option<SegmentHeader>), StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io(format!("open segment {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| StorageError::io(format!("stat {}", path.display()), e))?.len();
        if len > u32::MAX as u64 {
            return Err(StorageError::Corrupt {
                file: path.to_path_buf(),
                offset: u32::MAX as u64,
                reason: crate::Corruption::BadSegmentHeader,
            });
        }
        let map = if len == 0 {
            MmapMut::map_anon(0).map_err(|e| StorageError::io("map", e))?
        } else {
            map_file(&file, len as usize, path)?
        };
        let header = SegmentHeader::decode(&map).filter(|h| h.id == id);
        let kind = header.map_or(SegmentKind::Compacted, |h| h.kind);
        let seg = Segment::from_parts(id, kind, path, file, map, true, header.is_some_and(|h| h.recycled));
        Ok((seg, header))
    }

    /// The whole mapping.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Length of the mapping (the file).
    #[inline]
    pub fn len(&self) -> u32 {
        self.map.len() as u32
    }

    /// Bytes used by records.
    pub fn used_bytes(&self) -> u64 {
        (self.write_off as u64).saturating_sub(SEGMENT_HEADER_LEN as u64)
    }

    /// Bytes of records nothing points at any more.
    pub fn dead_bytes(&self) -> u64 {
        self.used_bytes().saturating_sub(self.live_bytes)
    }

    /// Dead bytes a compaction of this segment would reclaim (roughly: kept tombstones aside).
    pub fn reclaimable_bytes(&self) -> u64 {
        self.dead_bytes().saturating_sub(self.baseline_dead)
    }

    /// Whether a record of `len` bytes fits after the cursor.
    #[inline]
    pub fn has_room(&self, len: usize) -> bool {
        self.write_off as usize + len <= self.map.len()
    }

    /// The bytes from `off` to the end of the mapping (empty if `off` is out of range).
    #[inline]
    pub fn from(&self, off: u32) -> &[u8] {
        self.map.get(off as usize..).unwrap_or(&[])
    }

    /// Appends a record: header (already checksummed), key and value parts; returns its offset.
    ///
    /// The checksum is stored last, so a record interrupted halfway never looks complete.
    /// The caller checks `has_room` first.
    #[inline]
    pub fn append(&mut self, header: &[u8; RECORD_HEADER_LEN], key: &[u8], value: &[&[u8]], lsn: u64) -> u32 {
        let off = self.write_off as usize;
        let value_len: usize = value.iter().map(|p| p.len()).sum();
        let len = format::record_len(key.len(), value_len);
        if self.recycled {
            // The end marker first: stale bytes follow, so the slot after this record must read
            // as an all-zero header before this record can look complete.
            let next = off + len;
            let end = (next + RECORD_HEADER_LEN).min(self.map.len());
            if next < end {
                self.map[next..end].fill(0);
            }
        }
        let rec = &mut self.map[off..off + len];
        rec[format::REC_CRC_START..RECORD_HEADER_LEN].copy_from_slice(&header[format::REC_CRC_START..]);
        let mut at = RECORD_HEADER_LEN;
        rec[at..at + key.len()].copy_from_slice(key);
        at += key.len();
        for part in value {
            rec[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        rec[at..].fill(0);
        rec[..format::REC_CRC_START].copy_from_slice(&header[..format::REC_CRC_START]);
        self.advance(len, lsn);
        off as u32
    }

    /// Appends an already encoded record (compaction's copy); returns its offset.
    pub fn append_raw(&mut self, record: &[u8], lsn: u64) -> u32 {
        let off = self.write_off as usize;
        let rec = &mut self.map[off..off + record.len()];
        rec[format::REC_CRC_START..].copy_from_slice(&record[format::REC_CRC_START..]);
        rec[..format::REC_CRC_START].copy_from_slice(&record[..format::REC_CRC_START]);
        self.advance(record.len(), lsn);
        off as u32
    }

    fn advance(&mut self, len: usize, lsn: u64) {
        self.write_off += len as u32;
        self.min_lsn = self.min_lsn.min(lsn);
        self.max_lsn = self.max_lsn.max(lsn);
    }

    /// Faults the whole mapping in, writable, so that appends take no page fault per new page.
    /// Runs on the background thread for the next log segment. Best effort: kernels before 5.14
    /// lack `MADV_POPULATE_WRITE`. The pages become dirty zeros; if the segment waits longer than
    /// the kernel's writeback delay (30 s) they are written once as zeros, which only happens to
    /// slow writers, for whom the extra sequential write is cheap.
    pub fn prefault(&self) {
        if let Err(e) = self.map.advise(memmap2::Advice::PopulateWrite) {
            log::debug!("prefaulting {} failed: {e}", self.path.display());
        }
    }

    /// For a segment written on the event loop's thread without being prefaulted (a compaction
    /// output, a log segment that was not prepared in time): turns off fault-around readahead
    /// on its mapping. With it, one fault in a fresh file zero-fills a whole readahead window
    /// (measured: 1-3 ms on these VMs, in one go); without it each page costs a few
    /// microseconds when first written, which a bounded compaction step can account for.
    pub fn advise_random(&self) {
        if let Err(e) = self.map.advise(memmap2::Advice::Random) {
            log::debug!("madvise(RANDOM) of {} failed: {e}", self.path.display());
        }
    }

    /// Takes over a segment prepared in advance as the next log segment: rewrites its header
    /// with the base LSN, which is only known now. Its id and kind were final when it was
    /// prepared and that header is on disk already ([`Segment::sync_header`]), so once the caller
    /// renames the file to `.seg` a crash can never leave it without a valid header; this
    /// rewrite only changes `base_lsn` (losing it leaves 0, which the other segments' LSNs and
    /// base LSNs make up for: see `format::SEG_BASE_LSN_OFFSET`).
    pub fn adopt(&mut self, base_lsn: u64) {
        let header = SegmentHeader {
            kind: SegmentKind::Log,
            id: self.id,
            segment_len: self.map.len() as u64,
            base_lsn,
            recycled: self.recycled,
        };
        self.map[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        self.kind = SegmentKind::Log;
    }

    /// Makes the header durable (msync of the first page). A new segment's header is synced
    /// before the file is renamed to `.seg`, so that a `.seg` file always has its header on
    /// disk: recovery can then treat any `.seg` file without a valid header as damage, never as
    /// an interrupted creation (an interrupted creation leaves a `*.new` or `*.tmp` file, which
    /// recovery deletes).
    ///
    /// One page, not the file: a recycled file's stale pages may still be dirty, and an
    /// `fdatasync` wrote all 64 MiB of them back first (20-70 ms under a heavy write load,
    /// measured, enough for the writer to roll over before the segment was ready).
    pub fn sync_header(&self) -> Result<(), StorageError> {
        let len = 4096.min(self.map.len());
        self.map
            .flush_range(0, len)
            .map_err(|e| StorageError::io(format!("msync header of {}", self.path.display()), e))
    }

    /// Zeroes `from..to` of the mapping (cutting a torn tail).
    pub fn zero(&mut self, from: usize, to: usize) {
        let to = to.min(self.map.len());
        if from < to {
            self.map[from..to].fill(0);
        }
    }

    /// Whether everything written has been flushed.
    pub fn is_synced(&self) -> bool {
        self.synced_upto >= self.write_off
    }

    /// The bytes written since the last flush, for a background flush: up to the end of the last
    /// record, and for a recycled segment its end marker too (see [`Segment::flush`]).
    pub fn unflushed_range(&self) -> SyncRange {
        let map = match self.sync_map.get() {
            Some(map) => Some(Arc::clone(map)),
            None => match MmapOptions::new().len(self.map.len()).map_raw_read_only(&*self.file) {
                Ok(map) => Some(Arc::clone(self.sync_map.get_or_init(|| Arc::new(map)))),
                Err(e) => {
                    log::warn!(
                        "cannot map {} for flushing ranges, flushing the whole file: {e}",
                        self.path.display()
                    );
                    None
                }
            },
        };
        match map {
            Some(map) => SyncRange::Range { map, from: self.synced_upto as usize, to: self.unflushed_end() },
            None => SyncRange::File(Arc::clone(&self.file)),
        }
    }

    /// Where the bytes a flush must cover end.
    fn unflushed_end(&self) -> usize {
        // A recycled segment's end marker (the zeroed header slot after the last record) must be
        // as durable as the records, or a machine crash could leave stale bytes right after them.
        if self.recycled {
            (self.write_off as usize + RECORD_HEADER_LEN).min(self.map.len())
        } else {
            self.write_off as usize
        }
    }

    /// msyncs the bytes written since the last flush.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.is_synced() {
            return Ok(());
        }
        #[cfg(test)]
        if FAIL_NEXT_FLUSH.replace(false) {
            return Err(io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()));
        }
        let (from, to) = (self.synced_upto as usize, self.unflushed_end());
        self.map.flush_range(from, to - from)?;
        self.synced_upto = self.write_off;
        Ok(())
    }
}

/// Most retired segment files kept for reuse (each is one segment long on disk).
pub(crate) const FREE_POOL_MAX: usize = 8;

/// Retires a segment file that compaction made obsolete: renamed to `{id}.free` for
/// [`Segment::recycle`] while the pool holds fewer than [`FREE_POOL_MAX`] files, deleted
/// otherwise. Either way recovery never reads it again (`*.free` files are leftovers to it).
/// Only files of `pool_len` bytes (a full log segment) are kept.
pub(crate) fn retire(dir: &Path, id: u64, path: &Path, pool_len: u64) -> io::Result<()> {
    let full = fs::metadata(path).is_ok_and(|m| m.len() == pool_len);
    let pooled = if full { free_files(dir).map_or(FREE_POOL_MAX, |f| f.len()) } else { FREE_POOL_MAX };
    let result = if pooled < FREE_POOL_MAX {
        fs::rename(path, dir.join(segment_file_name(id, "free")))
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The retired segment files in `dir`.
pub(crate) fn free_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().and_then(parse_segment_file_name).is_some_and(|(_, ext)| ext == "free")
        {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Bytes free for this process on the file system holding `dir` (`statvfs`: available blocks
/// times the fragment size); `None` if unknown. Under the `DISK_QUOTA` test hook: what the quota
/// leaves.
pub(crate) fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(test)]
    if let Some(quota) = DISK_QUOTA.get() {
        return Some(quota.saturating_sub(dir_usage(dir)));
    }
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Allocates real blocks for `len` bytes. `set_len` alone would leave a sparse file, and a write
/// into a hole of a mapped sparse file on a full disk kills the process with `SIGBUS`.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            // No fallocate on this file system: allocate by writing zeros.
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn map_file(file: &File, len: usize, path: &Path) -> Result<MmapMut, StorageError> {
    // SAFETY: the mapping is shared and writable. The data directory is locked (see `Store::open`),
    // so no other process of ours writes or truncates this file while it is mapped, and `len` is at
    // most the file's current length, so every mapped page is backed by the file. Memory handed
    // out from the mapping is only ever read through `&self` borrows of the `Segment`, and writes
    // need `&mut self`, so Rust's aliasing rules hold for everything this process does. A foreign
    // process truncating the file would cause SIGBUS; that is documented as unsupported.
    unsafe { MmapOptions::new().len(len).map_mut(file) }
        .map_err(|e| StorageError::io(format!("map segment {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record_header, parse_record, Parsed, RecordKind, RecordMeta};

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(0x1f, "seg"), "000000000000001f.seg");
        assert_eq!(parse_segment_file_name("000000000000001f.seg"), Some((0x1f, "seg")));
        assert_eq!(parse_segment_file_name("1f.seg"), None);
        assert_eq!(parse_segment_file_name("LOCK"), None);
    }

    #[test]
    fn create_append_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1, SegmentKind::Log, 16384, 0, "seg", 0).unwrap();
        let meta = RecordMeta { kind: RecordKind::Put, lsn: 1, timestamp: 1, client_id: 0, request_id: 0 };
        let h = encode_record_header(&meta, b"k", &[b"v1", b"v2"]);
        let off = seg.append(&h, b"k", &[b"v1", b"v2"], 1);
        assert_eq!(off as usize, SEGMENT_HEADER_LEN);
        seg.flush().unwrap();
        drop(seg);
        let (seg, header) = Segment::open(&dir.path().join(segment_file_name(1, "seg")), 1).unwrap();
        assert_eq!(header.unwrap().kind, SegmentKind::Log);
        let Parsed::Record(r) = parse_record(seg.from(off)) else { panic!() };
        assert_eq!(r.value, b"v1v2");
        assert!(std::fs::metadata(&seg.path).unwrap().len() == 16384);
    }
}
