//! Model-based test: random put/delete/append/reopen/compact/tick sequences against a `HashMap`,
//! checking every key after every step, and the at-most-once table against the newest write of
//! each of three clients (writes are spread over them and over "no client"). A third of the
//! writes hand the store the CRC of their key and value, as a server does from a verified frame,
//! so records with derived checksums go through recovery, compaction and appends too.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use proptest::prelude::*;
use storage::{ClientEntry, Durability, Lsn, Options, StorageError, Store, WriteMeta};

#[derive(Debug, Clone)]
enum Op {
    Put { key: usize, len: usize, fill: u8 },
    Delete { key: usize },
    Append { key: usize, len: usize, fill: u8 },
    Reopen,
    Compact,
    Tick { steps: usize },
}

const KEYS: usize = 12;

fn key(i: usize) -> Vec<u8> {
    // Mostly short keys, some long ones, so both small and near-limit records occur.
    let mut k = format!("key-{i}").into_bytes();
    if i % 4 == 0 {
        k.resize(300 + i, b'#');
    }
    k
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..KEYS, 0usize..800, any::<u8>()).prop_map(|(key, len, fill)| Op::Put { key, len, fill }),
        1 => (0..KEYS, 3000usize..3800, any::<u8>()).prop_map(|(key, len, fill)| Op::Put { key, len, fill }),
        3 => (0..KEYS).prop_map(|key| Op::Delete { key }),
        3 => (0..KEYS, 0usize..400, any::<u8>()).prop_map(|(key, len, fill)| Op::Append { key, len, fill }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
        2 => (1usize..50).prop_map(|steps| Op::Tick { steps }),
    ]
}

fn opts() -> Options {
    Options {
        segment_len: 16 << 10,
        compact_min_dead_bytes: Some(8 << 10),
        compact_dead_ratio: 0.3,
        compact_step_budget: std::time::Duration::from_micros(20),
        durability: Durability::Never,
        ..Options::default()
    }
}

fn value(len: usize, fill: u8, salt: u64) -> Vec<u8> {
    (0..len).map(|i| fill.wrapping_add((i as u64).wrapping_mul(salt | 1) as u8)).collect()
}

type Clients = HashMap<u64, ClientEntry>;

/// `meta` carrying the CRC of `key ‖ value` if `derive` (see `WriteMeta::payload_crc`).
fn with_crc(meta: WriteMeta, derive: bool, key: &[u8], value: &[u8]) -> WriteMeta {
    let payload_crc = derive.then(|| crc32fast::hash(&[key, value].concat()));
    WriteMeta { payload_crc, ..meta }
}

fn check(store: &Store, model: &HashMap<Vec<u8>, Vec<u8>>, clients: &Clients) -> Result<(), TestCaseError> {
    for i in 0..KEYS {
        let k = key(i);
        prop_assert_eq!(store.get(&k).map(|e| e.value.to_vec()), model.get(&k).cloned(), "key {}", i);
    }
    prop_assert_eq!(store.stats().keys as usize, model.len());
    for c in 1..=3u64 {
        prop_assert_eq!(store.client_entry(c), clients.get(&c).copied(), "client {}", c);
    }
    prop_assert_eq!(store.client_count(), clients.len());
    Ok(())
}

/// Notes a write that produced a record at `lsn`.
fn wrote(clients: &mut Clients, meta: WriteMeta, lsn: Lsn) {
    if meta.client_id != 0 {
        clients.insert(meta.client_id, ClientEntry { request_id: meta.request_id, lsn, version: lsn.0 });
    }
}

fn run(dir: &Path, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut store = Store::open(dir, opts()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut clients = Clients::new();
    for (n, op) in ops.into_iter().enumerate() {
        let salt = n as u64;
        let meta = WriteMeta { client_id: salt % 4, request_id: 100 + salt, payload_crc: None };
        let derive = salt % 3 == 1;
        match op {
            Op::Put { key: i, len, fill } => {
                let k = key(i);
                let v = value(len, fill, salt);
                let max = store.options().max_value_len_for(k.len());
                match store.put(&k, &v, with_crc(meta, derive, &k, &v)) {
                    Ok(lsn) => {
                        wrote(&mut clients, meta, lsn);
                        prop_assert!(v.len() <= max);
                        prop_assert_eq!(store.get(&k).map(|e| e.version), Some(lsn.0));
                        model.insert(k, v);
                    }
                    Err(StorageError::ValueTooLong { .. }) => prop_assert!(v.len() > max),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Op::Delete { key: i } => {
                let k = key(i);
                let r = store
                    .delete(&k, with_crc(meta, derive, &k, b""))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(r.is_some(), model.remove(&k).is_some());
                if let Some(lsn) = r {
                    wrote(&mut clients, meta, lsn);
                }
            }
            Op::Append { key: i, len, fill } => {
                let k = key(i);
                let suffix = value(len, fill, salt);
                let mut want = model.get(&k).cloned().unwrap_or_default();
                want.extend_from_slice(&suffix);
                match store.append(&k, &suffix, with_crc(meta, derive, &k, &suffix)) {
                    Ok(lsn) => {
                        wrote(&mut clients, meta, lsn);
                        model.insert(k, want);
                    }
                    Err(StorageError::ValueTooLong { len, max }) => {
                        prop_assert_eq!(len, want.len());
                        prop_assert!(len > max);
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Op::Reopen => {
                let last = store.last_lsn();
                drop(store);
                store = Store::open(dir, opts()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(store.last_lsn(), last);
                prop_assert!(store.recovery_report().torn_tail.is_none());
            }
            Op::Compact => store.compact_now().map_err(|e| TestCaseError::fail(e.to_string()))?,
            Op::Tick { steps } => {
                for _ in 0..steps {
                    store.tick(Instant::now()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
        }
        check(&store, &model, &clients)?;
    }
    // The live iterator and the log agree with the model.
    let mut live: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for r in store.iter_live() {
        prop_assert!(!r.tombstone);
        prop_assert!(live.insert(r.key.to_vec(), r.value.to_vec()).is_none(), "key listed twice");
    }
    prop_assert_eq!(&live, &model);
    let start = store.stats().log_start;
    let lsns: Vec<u64> =
        store.log_from(start).map_err(|e| TestCaseError::fail(e.to_string()))?.map(|r| r.lsn.0).collect();
    let want: Vec<u64> = (start.0..=store.last_lsn().0).collect();
    prop_assert_eq!(lsns, want);
    if start > Lsn(1) {
        let compacted = matches!(store.log_from(Lsn(start.0 - 1)), Err(StorageError::Compacted { .. }));
        prop_assert!(compacted);
    }
    // And a final reopen sees the same.
    drop(store);
    let store = Store::open(dir, opts()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    check(&store, &model, &clients)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_hashmap_model(ops in proptest::collection::vec(op(), 1..160)) {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), ops)?;
    }
}
