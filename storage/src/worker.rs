//! The store's background thread: slow file-system work that must not run on the event loop.
//!
//! `tick()` never waits for it. It hands over a job and later picks up the result with
//! [`Worker::try_result`]. Jobs run in submission order, one at a time.

use std::fs::File;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::StorageError;
use crate::segment::{Segment, SyncRange};

/// Work for the background thread.
pub(crate) enum Job {
    /// Make these ranges durable (then the directory, if given): the interval flush.
    Flush { ranges: Vec<SyncRange>, dir: Option<Arc<File>>, lsn: u64, marks: FlushMarks },
    /// Make a compaction durable and delete what it replaced; see `compaction::commit`.
    Commit(Box<crate::compaction::CommitJob>),
}

/// What a finished job reports.
pub(crate) enum Done {
    /// A `Flush` job finished; on success everything up to `lsn` is durable.
    Flushed { lsn: u64, marks: FlushMarks, result: io::Result<()> },
    /// A `Prepare` job finished.
    Prepared(Result<Segment, StorageError>),
    /// A `Commit` job finished; on success everything up to `lsn` is durable too. `clients` is
    /// the job's client-table buffer, back for reuse.
    Committed { lsn: u64, marks: FlushMarks, result: Result<(), StorageError>, clients: Vec<u8> },
    /// A `Commit` job found no space for its small files before its commit point: nothing is
    /// committed, and the job comes back to be submitted again later.
    CommitDeferred(Box<crate::compaction::CommitJob>),
}

/// What a background flush covers, recorded when it is handed over and applied to the segments
/// only when it has succeeded: until then a foreground `sync` must not count those bytes as
/// flushed.
#[derive(Debug, Default)]
pub(crate) struct FlushMarks {
    /// (segment id, offset flushed up to).
    pub segments: Vec<(u64, u32)>,
    /// The directory generation covered by the directory fsync.
    pub dir_gen: u64,
}

/// Handle to the background thread; dropping it waits for queued jobs to finish.
pub(crate) struct Worker {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    /// For the short-lived threads that prepare segments.
    done_tx: Sender<Done>,
    thread: Option<JoinHandle<()>>,
    /// Jobs submitted whose result has not been picked up yet.
    pub in_flight: usize,
}

impl Worker {
    /// Starts the thread.
    pub fn start() -> Result<Worker, StorageError> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let thread = std::thread::Builder::new()
            .name("storage-bg".into())
            .spawn({
                let done_tx = done_tx.clone();
                move || run(jobs_rx, done_tx)
            })
            .map_err(|e| StorageError::io("start storage background thread", e))?;
        Ok(Worker { jobs: Some(jobs_tx), done: done_rx, done_tx, thread: Some(thread), in_flight: 0 })
    }

    /// Prepares the next log segment, `id`, of `len` bytes (or a recycled one of `pool_len`:
    /// see [`prepare_segment`]) on a thread of its own: prefaulting 64 MiB takes tens of
    /// milliseconds, which must not delay a flush or a compaction commit queued behind it.
    /// Returns whether the thread started.
    pub fn prepare(
        &mut self,
        dir: std::path::PathBuf,
        id: u64,
        len: u64,
        pool_len: u64,
        reserve: u64,
    ) -> bool {
        let tx = self.done_tx.clone();
        let spawned = std::thread::Builder::new().name("storage-prep".into()).spawn(move || {
            let seg = prepare_segment(&dir, id, len, pool_len, reserve, true);
            // If the store is gone, the file is a `*.new` leftover that the next open deletes.
            let _ = tx.send(Done::Prepared(seg));
        });
        if spawned.is_ok() {
            self.in_flight += 1;
        }
        spawned.is_ok()
    }

    /// Queues a job.
    pub fn submit(&mut self, job: Job) {
        if let Some(tx) = &self.jobs {
            if tx.send(job).is_ok() {
                self.in_flight += 1;
            }
        }
    }

    /// A finished job's result, if one is ready.
    pub fn try_result(&mut self) -> Option<Done> {
        match self.done.try_recv() {
            Ok(d) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                Some(d)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Waits for the next result (used by `compact_now` and when closing).
    pub fn wait_result(&mut self) -> Option<Done> {
        if self.in_flight == 0 {
            return None;
        }
        let d = self.done.recv().ok();
        self.in_flight = self.in_flight.saturating_sub(1);
        d
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the queued jobs.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("storage background thread panicked");
            }
        }
    }
}

fn run(jobs: Receiver<Job>, done: Sender<Done>) {
    while let Ok(job) = jobs.recv() {
        let report = match job {
            Job::Flush { ranges, dir, lsn, marks } => {
                Done::Flushed { lsn, marks, result: flush(&ranges, dir.as_deref()) }
            }
            Job::Commit(mut job) => match crate::compaction::commit(&mut job) {
                Err(crate::compaction::CommitError::NoSpace) => Done::CommitDeferred(job),
                result => Done::Committed {
                    lsn: job.lsn,
                    marks: std::mem::take(&mut job.marks),
                    result: result.map_err(|e| match e {
                        crate::compaction::CommitError::Failed(e) => e,
                        crate::compaction::CommitError::NoSpace => StorageError::NoSpace,
                    }),
                    clients: std::mem::take(&mut job.clients),
                },
            },
        };
        // If the store is gone nobody listens; the queue is still finished (a commit must complete).
        let _ = done.send(report);
    }
}

/// A log segment `id` named `{id}.new`, ready to be adopted and renamed into place: a retired
/// file from the pool (`*.free`, `pool_len` bytes: see `Segment::recycle`) if there is one,
/// else a new file of `len` bytes, leaving `reserve` bytes free. Its header is on disk before
/// this returns (see `Segment::sync_header`); with `prefault`, its mapping is then faulted in
/// writable, so that writes into it take no page faults.
pub(crate) fn prepare_segment(
    dir: &std::path::Path,
    id: u64,
    len: u64,
    pool_len: u64,
    reserve: u64,
    prefault: bool,
) -> Result<Segment, StorageError> {
    let seg = match recycled(dir, id, pool_len) {
        Some(seg) => seg,
        None => Segment::create(dir, id, crate::format::SegmentKind::Log, len, 0, "new", reserve)?,
    };
    // Before prefaulting, which dirties every page: this flush is one page, not the whole file.
    if let Err(e) = seg.sync_header() {
        let path = seg.path.clone();
        drop(seg);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    if prefault {
        seg.prefault();
    }
    Ok(seg)
}

/// A retired segment file made ready as segment `id`, if the pool has one.
fn recycled(dir: &std::path::Path, id: u64, len: u64) -> Option<Segment> {
    for free in crate::segment::free_files(dir).ok()? {
        match Segment::recycle(&free, dir, id, len) {
            Ok(Some(seg)) => return Some(seg),
            Ok(None) => {}
            Err(e) => log::debug!("could not recycle {}: {e}", free.display()),
        }
    }
    None
}

fn flush(ranges: &[SyncRange], dir: Option<&File>) -> io::Result<()> {
    for r in ranges {
        r.sync()?;
    }
    if let Some(d) = dir {
        d.sync_all()?;
    }
    Ok(())
}
