//! [`StorageError`]: every way a storage operation can fail.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::Lsn;

/// Why a stored byte range was judged damaged.
///
/// Carried by [`StorageError::Corrupt`] and listed per dropped range in a
/// [`RepairReport`](crate::RepairReport).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The segment header's magic, version, length or checksum is wrong.
    BadSegmentHeader,
    /// The file is shorter than its header says, or than a header (emptied): bytes were cut off
    /// the end.
    Truncated,
    /// A record header holds an unknown kind, non-zero reserved bits or a length that runs past the
    /// end of the segment.
    BadRecordHeader,
    /// The record's CRC-32 does not match its contents.
    ChecksumMismatch,
    /// Non-zero bytes after the end-of-log marker (an all-zero record header).
    GarbageAfterEnd,
    /// The compaction commit marker is unreadable or names a segment that does not exist.
    BadCompactionMarker,
    /// The at-most-once table file (`CLIENTS`) has a bad magic, version, length or checksum.
    BadClientTable,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Corruption::BadSegmentHeader => "bad segment header",
            Corruption::Truncated => "file shorter than its header says, or than a header (truncated)",
            Corruption::BadRecordHeader => "bad record header",
            Corruption::ChecksumMismatch => "record checksum mismatch",
            Corruption::GarbageAfterEnd => "non-zero bytes after the end of the log",
            Corruption::BadCompactionMarker => "bad compaction commit marker",
            Corruption::BadClientTable => "bad client table file",
        })
    }
}

/// Every way a [`Store`](crate::Store) operation can fail.
#[derive(Debug)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O call failed; `context` says which step, and names the file where there is one.
    Io {
        /// The step that failed, e.g. `"open segment /data/0000000000000001.seg"`.
        context: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// The disk is full (`ENOSPC`/`EDQUOT`): the write was not made; reads keep working.
    NoSpace,
    /// Stored data failed verification. Nothing is changed on disk;
    /// [`Store::repair`](crate::Store::repair) keeps every valid record and reports what it drops.
    /// The message names the command that runs it (`tandem-server --repair --data DIR`), since
    /// whoever reads it (in a server's log) has a stopped server and needs the way out.
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damage within `file`.
        offset: u64,
        /// What is wrong there.
        reason: Corruption,
    },
    /// The key is longer than [`Options::max_key_len`](crate::Options::max_key_len).
    KeyTooLong {
        /// Length of the refused key.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value (for `append`: the value after appending) is longer than this key allows.
    ValueTooLong {
        /// Length of the refused value.
        len: usize,
        /// The limit for this key: the smaller of `max_value_len` and `max_payload_len - key_len`.
        max: usize,
    },
    /// Keys must have at least one byte.
    EmptyKey,
    /// The data directory is locked by another live process (or another `Store` in this one).
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// An earlier flush failed, so data the kernel reported as written may be lost: writes are
    /// refused until the store is reopened (which re-verifies the log).
    Poisoned,
    /// `log_from`/`read_log` was asked for records that compaction has already discarded.
    Compacted {
        /// The oldest LSN from which the log is still complete.
        oldest: Lsn,
    },
    /// The [`Options`](crate::Options) are inconsistent; the message says which field.
    InvalidOptions(&'static str),
    /// [`Store::apply_replicated`](crate::Store::apply_replicated) was given a record that does
    /// not directly follow the last one: a backup's log must stay identical to the primary's, so
    /// nothing was written.
    OutOfOrder {
        /// The LSN the store can accept next (`last_lsn + 1`).
        expected: Lsn,
        /// The LSN of the refused record.
        got: Lsn,
    },
    /// A snapshot install ([`Store::install_record`](crate::Store::install_record) ..
    /// [`Store::finish_install`](crate::Store::finish_install)) was misused: the message says
    /// how (writes during an install, an install into a store that is not empty, ...). Nothing
    /// was written.
    Install(&'static str),
}

impl StorageError {
    /// Wraps an I/O error, turning `ENOSPC`/`EDQUOT` into [`StorageError::NoSpace`].
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> StorageError {
        if is_no_space(&source) {
            StorageError::NoSpace
        } else {
            StorageError::Io { context: context.into(), source }
        }
    }
}

/// Whether an I/O error means "out of disk space".
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
        || e.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error())
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { context, source } => write!(f, "{context}: {source}"),
            StorageError::NoSpace => f.write_str("no space left on the storage device"),
            StorageError::Corrupt { file, offset, reason } => {
                // Every file the store verifies lies in the data directory itself.
                let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                write!(
                    f,
                    "corrupt data in {} at offset {offset}: {reason}; the store refuses to open. To keep \
                     every valid record and drop the damaged ranges (listed as it runs), stop the server \
                     and run `tandem-server --repair --data {}`",
                    file.display(),
                    dir.display()
                )
            }
            StorageError::KeyTooLong { len, max } => {
                write!(f, "key of {len} bytes is longer than the limit of {max}")
            }
            StorageError::ValueTooLong { len, max } => {
                write!(f, "value of {len} bytes is longer than the limit of {max} for this key")
            }
            StorageError::EmptyKey => f.write_str("empty key"),
            StorageError::Locked { dir } => {
                write!(f, "data directory {} is in use by another process", dir.display())
            }
            StorageError::Poisoned => {
                f.write_str("an earlier flush failed; writes are refused until the store is reopened")
            }
            StorageError::Compacted { oldest } => {
                write!(f, "log records before lsn {oldest} were discarded by compaction")
            }
            StorageError::InvalidOptions(why) => write!(f, "invalid storage options: {why}"),
            StorageError::OutOfOrder { expected, got } => {
                write!(f, "replicated record out of order: expected lsn {expected}, got lsn {got}")
            }
            StorageError::Install(why) => write!(f, "snapshot install: {why}"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
