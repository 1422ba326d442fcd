//! Model-based test with injected I/O failures: random writes, compactions and reopens while the
//! disk fills up and flushes fail, checked against a `HashMap` after every step. It lives inside
//! the crate because the failure hooks are `cfg(test)` internals.

use std::collections::HashMap;
use std::time::Instant;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        len: usize,
    },
    Delete {
        key: u8,
    },
    Append {
        key: u8,
        len: usize,
    },
    /// The next `n` segment allocations succeed, then the disk is full.
    DiskFull {
        n: u32,
    },
    /// A small disk: `extra` bytes free beyond what the directory holds now.
    DiskQuota {
        extra: u64,
    },
    DiskFreed,
    /// The next flush fails with EIO.
    FailSync,
    Sync,
    Compact,
    Tick,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..16, 0usize..1500).prop_map(|(key, len)| Op::Put { key, len }),
        3 => (0u8..16).prop_map(|key| Op::Delete { key }),
        3 => (0u8..16, 0usize..300).prop_map(|(key, len)| Op::Append { key, len }),
        1 => (0u32..3).prop_map(|n| Op::DiskFull { n }),
        1 => (0u64..160).prop_map(|kib| Op::DiskQuota { extra: kib << 10 }),
        2 => Just(Op::DiskFreed),
        1 => Just(Op::FailSync),
        2 => Just(Op::Sync),
        1 => Just(Op::Compact),
        2 => Just(Op::Tick),
        1 => Just(Op::Reopen),
    ]
}

fn opts() -> Options {
    Options {
        segment_len: 16 << 10,
        compact_min_dead_bytes: Some(4 << 10),
        compact_dead_ratio: 0.3,
        // Keeps the room segment allocations leave free (`Options::space_reserve`) at 68 KiB,
        // so that `DiskQuota` can make a disk with room for a few segments.
        max_clients: 64,
        ..Options::default()
    }
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn value(len: usize, salt: usize) -> Vec<u8> {
    (0..len).map(|i| (i + salt) as u8).collect()
}

/// Runs a write; on success applies `change` to the model. Failures must be the injected ones.
fn write(
    result: Result<(), StorageError>,
    poisoned: bool,
    model: &mut HashMap<Vec<u8>, Vec<u8>>,
    change: impl FnOnce(&mut HashMap<Vec<u8>, Vec<u8>>),
) -> Result<(), TestCaseError> {
    match result {
        Ok(()) => {
            prop_assert!(!poisoned, "a poisoned store accepted a write");
            change(model);
        }
        Err(StorageError::Poisoned) => prop_assert!(poisoned),
        Err(StorageError::NoSpace) => {}
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), opts()).unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut poisoned = false;
    let m = WriteMeta::default();
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Put { key: k, len } => {
                let v = value(len, n);
                let r = store.put(&key(k), &v, m).map(drop);
                write(r, poisoned, &mut model, |md| drop(md.insert(key(k), v)))?;
            }
            Op::Delete { key: k } => match store.delete(&key(k), m) {
                // Absent: nothing to write, so no refusal either.
                Ok(None) => prop_assert!(!model.contains_key(&key(k))),
                r => write(r.map(drop), poisoned, &mut model, |md| drop(md.remove(&key(k))))?,
            },
            Op::Append { key: k, len } => {
                let suffix = value(len, n);
                let r = match store.append(&key(k), &suffix, m) {
                    Err(StorageError::ValueTooLong { .. }) => Ok(false),
                    r => r.map(|_| true),
                };
                let applied = matches!(r, Ok(true));
                write(r.map(drop), poisoned, &mut model, |md| {
                    if applied {
                        md.entry(key(k)).or_default().extend_from_slice(&suffix);
                    }
                })?;
            }
            Op::DiskFull { n } => segment::ALLOCS_BEFORE_ENOSPC.set(Some(n)),
            Op::DiskQuota { extra } => segment::DISK_QUOTA.set(Some(segment::dir_usage(dir.path()) + extra)),
            Op::DiskFreed => {
                segment::ALLOCS_BEFORE_ENOSPC.set(None);
                segment::DISK_QUOTA.set(None);
            }
            Op::FailSync => {
                segment::FAIL_NEXT_FLUSH.set(true);
                let r = store.sync();
                // Not consumed if nothing was unflushed or the store was already poisoned.
                segment::FAIL_NEXT_FLUSH.set(false);
                match r {
                    Ok(()) => {}
                    Err(StorageError::Io { .. }) => poisoned = true,
                    Err(StorageError::Poisoned) => prop_assert!(poisoned),
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
                }
            }
            Op::Sync => match store.sync() {
                Ok(()) => prop_assert_eq!(store.durable_lsn(), store.last_lsn()),
                Err(StorageError::Poisoned) => prop_assert!(poisoned),
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
            },
            Op::Compact => match store.compact_now() {
                Ok(()) | Err(StorageError::NoSpace) => {}
                Err(StorageError::Poisoned) => prop_assert!(poisoned),
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
            },
            Op::Tick => store.tick(Instant::now()).map_err(|e| TestCaseError::fail(e.to_string()))?,
            Op::Reopen => {
                // Reopening needs no new segment unless the directory has none.
                drop(store);
                segment::ALLOCS_BEFORE_ENOSPC.set(None);
                segment::DISK_QUOTA.set(None);
                store = Store::open(dir.path(), opts()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                poisoned = false;
            }
        }
        for k in 0..16u8 {
            prop_assert_eq!(
                store.get(&key(k)).map(|e| e.value.to_vec()),
                model.get(&key(k)).cloned(),
                "key {}",
                k
            );
        }
    }
    segment::ALLOCS_BEFORE_ENOSPC.set(None);
    segment::DISK_QUOTA.set(None);
    drop(store);
    let store = Store::open(dir.path(), opts()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for k in 0..16u8 {
        prop_assert_eq!(
            store.get(&key(k)).map(|e| e.value.to_vec()),
            model.get(&key(k)).cloned(),
            "key {}",
            k
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_under_injected_failures(ops in proptest::collection::vec(op(), 1..150)) {
        let result = run(ops);
        // The hooks are per thread; leave this one clean for the next case.
        segment::ALLOCS_BEFORE_ENOSPC.set(None);
        segment::DISK_QUOTA.set(None);
        segment::FAIL_NEXT_FLUSH.set(false);
        result?;
    }
}
