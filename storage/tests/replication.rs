//! What replication needs from the store: the resumable log cursor, the retention pin, replicated
//! apply, the at-most-once table, and snapshot transfer (walk on the sender, wipe + install on
//! the receiver), each checked through the public API, with reopens and crash images where
//! durability matters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::time::Instant;

use storage::{
    ClientEntry, Corruption, LogCursor, Lsn, Options, ReplicatedWrite, StorageError, Store, WriteMeta,
};

const NOBODY: WriteMeta = WriteMeta { client_id: 0, request_id: 0, payload_crc: None };

/// Small segments so that a few hundred records span many; automatic compaction off.
fn opts() -> Options {
    Options { segment_len: 16 << 10, compact_min_dead_bytes: Some(u64::MAX), ..Options::default() }
}

fn val(i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{i}:").into_bytes();
    v.resize(len, b'a' + (i % 26) as u8);
    v
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

fn meta(client_id: u64, request_id: u64) -> WriteMeta {
    WriteMeta { client_id, request_id, payload_crc: None }
}

/// Every (key, value, version) with a value.
fn contents(s: &Store) -> BTreeMap<Vec<u8>, (Vec<u8>, u64)> {
    s.iter_live().map(|r| (r.key.to_vec(), (r.value.to_vec(), r.timestamp))).collect()
}

/// Copies the files of a live store's directory (what a killed process leaves: the mappings'
/// contents are in the page cache, which a copy reads).
fn crash_image(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Copies the log from `from` (starting at `cursor`) into `to` with `apply_replicated`. Every
/// other record carries the CRC of its key and value, as a backup passes it from the verified
/// frame that brought it.
fn replicate(from: &Store, cursor: &mut LogCursor, to: &mut Store) -> u64 {
    let mut n = 0;
    while let Some(r) = from.read_log(cursor).unwrap() {
        let payload_crc = (r.lsn.0 % 2 == 0).then(|| crc32fast::hash(&[r.key, r.value].concat()));
        let w = ReplicatedWrite {
            lsn: r.lsn,
            tombstone: r.tombstone,
            key: r.key,
            value: r.value,
            timestamp: r.timestamp,
            meta: WriteMeta { payload_crc, ..meta(r.client_id, r.request_id) },
        };
        assert_eq!(to.apply_replicated(&w).unwrap(), r.lsn);
        n += 1;
    }
    n
}

// ---- 1. The log cursor ----

#[test]
fn log_cursor_follows_writes_across_rolls_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), opts()).unwrap();
    // Created before anything was written: caught up, then it reads what comes.
    let mut c = LogCursor::new(Lsn(0));
    assert_eq!(c.next_lsn(), Lsn(1));
    assert!(s.read_log(&mut c).unwrap().is_none());
    let mut seen = Vec::new();
    for i in 0..400u64 {
        let k = key(i % 30);
        if i % 7 == 3 {
            s.delete(&k, meta(9, i)).unwrap();
        } else {
            s.put(&k, &val(i, 200 + (i as usize % 300)), meta(9, i)).unwrap();
        }
        // Read in bursts, so the cursor is sometimes caught up and sometimes far behind, and its
        // segment is sealed under it.
        if i % 37 == 0 {
            while let Some(r) = s.read_log(&mut c).unwrap() {
                seen.push((r.lsn.0, r.tombstone, r.request_id));
            }
            assert_eq!(c.next_lsn(), Lsn(s.last_lsn().0 + 1));
        }
    }
    assert!(s.stats().segments > 8, "{:?}", s.stats());
    while let Some(r) = s.read_log(&mut c).unwrap() {
        seen.push((r.lsn.0, r.tombstone, r.request_id));
    }
    let want: Vec<(u64, bool, u64)> =
        s.log_from(Lsn(1)).unwrap().map(|r| (r.lsn.0, r.tombstone, r.request_id)).collect();
    assert_eq!(seen, want);
    assert_eq!(seen.len(), s.last_lsn().0 as usize);
    assert!(seen.iter().any(|r| r.1), "tombstones are part of the log");
    // A clone is an independent position; a cursor from the middle starts there.
    let mut mid = LogCursor::new(Lsn(123));
    let mut copy = mid.clone();
    assert_eq!(s.read_log(&mut mid).unwrap().unwrap().lsn, Lsn(123));
    assert_eq!(s.read_log(&mut mid).unwrap().unwrap().lsn, Lsn(124));
    assert_eq!(s.read_log(&mut copy).unwrap().unwrap().lsn, Lsn(123));
    // And one past the end waits for the next write.
    let mut end = LogCursor::new(Lsn(s.last_lsn().0 + 1));
    assert!(s.read_log(&mut end).unwrap().is_none());
    let lsn = s.put(b"late", b"v", NOBODY).unwrap();
    assert_eq!(s.read_log(&mut end).unwrap().map(|r| r.lsn), Some(lsn));
}

#[test]
fn log_cursor_reports_compaction_and_resumes_from_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), opts()).unwrap();
    for i in 0..150u64 {
        s.put(b"same", &val(i, 400), NOBODY).unwrap();
    }
    let mut c = LogCursor::new(Lsn(1));
    assert_eq!(s.read_log(&mut c).unwrap().unwrap().lsn, Lsn(1));
    assert_eq!(s.log_start(), Lsn(1));
    s.compact_now().unwrap();
    let oldest = s.log_start();
    assert!(oldest > Lsn(2));
    let err = s.read_log(&mut c).unwrap_err();
    assert!(matches!(err, StorageError::Compacted { oldest: o } if o == oldest), "{err}");
    assert_eq!(c.next_lsn(), Lsn(2), "a failed read leaves the cursor where it was");
    s.put(b"x", b"y", NOBODY).unwrap();
    let mut c = LogCursor::new(oldest);
    let lsns: Vec<u64> = std::iter::from_fn(|| s.read_log(&mut c).unwrap()).map(|r| r.lsn.0).collect();
    assert_eq!(lsns, (oldest.0..=s.last_lsn().0).collect::<Vec<_>>());
}

// ---- 2. The retention pin ----

/// Many overwrites of few keys, over many log segments: nearly everything is dead.
fn overwritten(dir: &Path) -> Store {
    let mut s = Store::open(dir, opts()).unwrap();
    for i in 0..300u64 {
        s.put(&key(i % 5), &val(i, 500), meta(1 + i % 3, i)).unwrap();
    }
    s
}

#[test]
fn retention_pin_keeps_the_log_from_compaction_until_removed() {
    // Without the pin, compaction takes the log segments and the log restarts late.
    let unpinned = tempfile::tempdir().unwrap();
    let mut s = overwritten(unpinned.path());
    s.compact_now().unwrap();
    assert!(s.log_start() > Lsn(200), "{:?}", s.log_start());

    let dir = tempfile::tempdir().unwrap();
    let mut s = overwritten(dir.path());
    let pin = Lsn(100);
    s.retain_log_from(Some(pin));
    let segments = s.stats().segments;
    s.compact_now().unwrap();
    assert!(s.log_start() <= pin, "{:?}", s.log_start());
    assert!(s.stats().segments < segments, "segments before the pin were still compacted");
    let mut c = LogCursor::new(pin);
    let lsns: Vec<u64> = std::iter::from_fn(|| s.read_log(&mut c).unwrap()).map(|r| r.lsn.0).collect();
    assert_eq!(lsns, (100..=300).collect::<Vec<_>>());
    // The pin moves with the backup; after it is removed, compaction proceeds.
    s.retain_log_from(None);
    s.compact_now().unwrap();
    assert!(s.log_start() > Lsn(200), "{:?}", s.log_start());
    assert!(matches!(s.read_log(&mut LogCursor::new(pin)), Err(StorageError::Compacted { .. })));
    for k in 0..5u64 {
        assert_eq!(s.get(&key(k)).unwrap().value, val(295 + k, 500));
    }
}

#[test]
fn a_pin_over_everything_reclaimable_leaves_automatic_compaction_idle() {
    let dir = tempfile::tempdir().unwrap();
    let auto = Options { compact_min_dead_bytes: Some(1), compact_dead_ratio: 0.1, ..opts() };
    let mut s = Store::open(dir.path(), auto.clone()).unwrap();
    s.retain_log_from(Some(Lsn(1)));
    for i in 0..300u64 {
        s.put(&key(i % 5), &val(i, 500), NOBODY).unwrap();
    }
    assert!(s.stats().dead_bytes > 100_000);
    for _ in 0..50 {
        s.tick(Instant::now()).unwrap();
        let st = s.stats();
        assert!(!st.compacting && st.compactions == 0, "{st:?}");
        // Nothing to do: the event loop must not be woken at once, again and again.
        assert!(s.next_deadline().is_none_or(|d| d > Instant::now()), "compaction would spin");
    }
    s.retain_log_from(None);
    let start = Instant::now();
    while s.stats().compactions == 0 {
        s.tick(Instant::now()).unwrap();
        assert!(start.elapsed().as_secs() < 30, "compaction never ran after unpinning");
    }
}

// ---- 3. Replicated apply ----

#[test]
fn apply_replicated_copies_the_primarys_log_exactly() {
    let (pdir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut p = Store::open(pdir.path(), opts()).unwrap();
    let mut b = Store::open(bdir.path(), opts()).unwrap();
    for i in 0..120u64 {
        let k = key(i % 17);
        match i % 5 {
            0 => drop(p.delete(&k, meta(3, i)).unwrap()),
            1 => drop(p.append(&k, b"+x", meta(4, i)).unwrap()),
            _ => drop(p.put(&k, &val(i, 300), meta(5, i)).unwrap()),
        }
    }
    let mut c = LogCursor::new(Lsn(1));
    replicate(&p, &mut c, &mut b);
    let log = |s: &Store| -> Vec<_> {
        s.log_from(Lsn(1))
            .unwrap()
            .map(|r| {
                (r.lsn, r.tombstone, r.key.to_vec(), r.value.to_vec(), r.timestamp, r.client_id, r.request_id)
            })
            .collect()
    };
    assert_eq!(log(&b), log(&p));
    assert_eq!(contents(&b), contents(&p));
    for client in [3, 4, 5] {
        assert_eq!(b.client_entry(client), p.client_entry(client));
    }

    // Out of order: refused, nothing written.
    let next = Lsn(b.last_lsn().0 + 1);
    let w = ReplicatedWrite {
        lsn: Lsn(next.0 + 1),
        tombstone: false,
        key: b"k",
        value: b"v",
        timestamp: 1,
        meta: NOBODY,
    };
    let err = b.apply_replicated(&w).unwrap_err();
    assert!(matches!(err, StorageError::OutOfOrder { expected, got } if expected == next && got == w.lsn));
    assert!(err.to_string().contains(&format!("expected lsn {next}")), "{err}");
    assert!(b.apply_replicated(&ReplicatedWrite { lsn: Lsn(next.0 - 1), ..w }).is_err());
    assert_eq!(b.last_lsn(), p.last_lsn());
    // A tombstone for an absent key is still written (the log has no gaps), with the
    // primary's timestamp kept as the version of later values.
    let t = ReplicatedWrite {
        lsn: next,
        tombstone: true,
        key: b"never-there",
        value: b"",
        timestamp: 77,
        meta: NOBODY,
    };
    assert_eq!(b.apply_replicated(&t).unwrap(), next);
    assert_eq!(b.read_log(&mut LogCursor::new(next)).unwrap().map(|r| r.tombstone), Some(true));
    // Limits as for put.
    let long = vec![b'k'; 2000];
    let bad = ReplicatedWrite { lsn: Lsn(next.0 + 1), key: &long, ..w };
    assert!(matches!(b.apply_replicated(&bad), Err(StorageError::KeyTooLong { .. })));
    let bad = ReplicatedWrite { lsn: Lsn(next.0 + 1), tombstone: true, ..w };
    assert!(matches!(b.apply_replicated(&bad), Err(StorageError::ValueTooLong { max: 0, .. })));
    let v = ReplicatedWrite { lsn: Lsn(next.0 + 1), timestamp: 12345, ..w };
    b.apply_replicated(&v).unwrap();
    assert_eq!(b.get(b"k").map(|e| e.version), Some(12345));
    drop(b);
    let b = Store::open(bdir.path(), opts()).unwrap();
    assert_eq!(b.last_lsn(), Lsn(next.0 + 1));
    assert_eq!(b.get(b"k").map(|e| e.version), Some(12345));
    assert_eq!(&log(&b)[..p.last_lsn().0 as usize], &log(&p)[..]);
}

// ---- 4. The at-most-once table ----

#[test]
fn client_table_survives_compaction_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), opts()).unwrap();
    // Five clients write (puts, appends, deletes) to their own keys...
    let mut want: HashMap<u64, ClientEntry> = HashMap::new();
    for i in 0..200u64 {
        let client = 1 + i % 5;
        let k = key(client * 100 + i % 3);
        let m = meta(client, 1000 + i);
        let lsn = match i % 4 {
            0 if s.get(&k).is_some() => s.delete(&k, m).unwrap().unwrap(),
            1 => s.append(&k, b"!", m).unwrap(),
            _ => s.put(&k, &val(i, 300), m).unwrap(),
        };
        want.insert(client, ClientEntry { request_id: 1000 + i, lsn, version: lsn.0 });
    }
    // ... then someone without a client id overwrites every one of those keys.
    for client in 1..=5u64 {
        for j in 0..3 {
            s.put(&key(client * 100 + j), b"overwritten", NOBODY).unwrap();
        }
    }
    s.compact_now().unwrap();
    // The records that carried the ids are gone...
    assert!(s.iter_live().all(|r| r.client_id == 0));
    assert!(s.log_from(s.log_start()).unwrap().all(|r| r.client_id == 0));
    // ... and the table still knows each client's newest write, before and after reopening.
    let check = |s: &Store, want: &HashMap<u64, ClientEntry>| {
        assert_eq!(s.client_count(), 5);
        for (&client, e) in want {
            assert_eq!(s.client_entry(client), Some(*e), "client {client}");
        }
        let mut all: Vec<u64> = s.client_entries().map(|(c, _)| c).collect();
        all.sort();
        assert_eq!(all, vec![1, 2, 3, 4, 5]);
    };
    check(&s, &want);
    assert!(dir.path().join("CLIENTS").exists());
    drop(s);
    let mut s = Store::open(dir.path(), opts()).unwrap();
    check(&s, &want);
    // Writes after the file's LSN are replayed from the log on open.
    let lsn = s.put(b"later", b"v", meta(2, 5000)).unwrap();
    want.insert(2, ClientEntry { request_id: 5000, lsn, version: lsn.0 });
    drop(s);
    check(&Store::open(dir.path(), opts()).unwrap(), &want);
}

#[test]
fn client_table_bound_evicts_the_oldest_deterministically() {
    let bounded = Options { max_clients: 3, ..opts() };
    let (pdir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut p = Store::open(pdir.path(), bounded.clone()).unwrap();
    // Clients 1..=6 write in turn; 2 and 4 write again later.
    for (i, client) in [1u64, 2, 3, 4, 5, 6, 2, 4].into_iter().enumerate() {
        p.put(&key(i as u64), b"v", meta(client, 10 + i as u64)).unwrap();
    }
    let ids = |s: &Store| {
        let mut v: Vec<(u64, u64)> = s.client_entries().map(|(c, e)| (c, e.request_id)).collect();
        v.sort();
        v
    };
    // The three whose newest writes are the newest: 6 (lsn 6), 2 (lsn 7), 4 (lsn 8).
    assert_eq!(ids(&p), vec![(2, 16), (4, 17), (6, 15)]);
    // A backup applying the same records holds the same table.
    let mut b = Store::open(bdir.path(), bounded.clone()).unwrap();
    replicate(&p, &mut LogCursor::new(Lsn(1)), &mut b);
    assert_eq!(ids(&b), ids(&p));
    // Recovery rebuilds it: from the records alone (no compaction yet, so no file) ...
    drop(p);
    let mut p = Store::open(pdir.path(), bounded.clone()).unwrap();
    assert_eq!(ids(&p), vec![(2, 16), (4, 17), (6, 15)]);
    // ... and from the file plus newer records, after compaction dropped most of them.
    for i in 0..8u64 {
        p.put(&key(i), b"overwritten", NOBODY).unwrap();
    }
    p.compact_now().unwrap();
    p.put(b"x", b"y", meta(7, 99)).unwrap();
    drop(p);
    let p = Store::open(pdir.path(), bounded).unwrap();
    assert_eq!(ids(&p), vec![(2, 16), (4, 17), (7, 99)]);
    // A smaller bound at open applies at once.
    drop(p);
    let p = Store::open(pdir.path(), Options { max_clients: 1, ..opts() }).unwrap();
    assert_eq!(ids(&p), vec![(7, 99)]);
}

#[test]
fn damaged_client_table_is_refused_and_repair_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = overwritten(dir.path());
    s.compact_now().unwrap();
    drop(s);
    let path = dir.path().join("CLIENTS");
    let mut bytes = fs::read(&path).unwrap();
    bytes[30] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = Store::open(dir.path(), opts()).err().expect("a damaged table must be refused");
    match &err {
        StorageError::Corrupt { file, reason: Corruption::BadClientTable, .. } => assert_eq!(file, &path),
        e => panic!("unexpected error: {e}"),
    }
    assert!(err.to_string().contains("CLIENTS"), "{err}");
    let report = Store::repair(dir.path(), &opts()).unwrap();
    assert_eq!(report.dropped.len(), 1, "{report:?}");
    assert_eq!(
        (report.dropped[0].file.clone(), report.dropped[0].reason),
        (path.clone(), Corruption::BadClientTable)
    );
    assert!(!path.exists());
    let s = Store::open(dir.path(), opts()).unwrap();
    for k in 0..5u64 {
        assert_eq!(s.get(&key(k)).unwrap().value, val(295 + k, 500));
    }
}

// ---- 5. Snapshot walk ----

#[test]
fn snapshot_walk_sees_every_unchanged_key_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let auto = Options { compact_min_dead_bytes: Some(1), compact_dead_ratio: 0.1, ..opts() };
    let mut s = Store::open(dir.path(), auto).unwrap();
    let mut x = 7u64;
    let mut rand = move |n: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    // Keys spread over log segments, some deleted, many overwritten.
    for i in 0..600u64 {
        let k = key(rand(200));
        if rand(6) == 0 {
            s.delete(&k, NOBODY).unwrap();
        } else {
            s.put(&k, &val(i, 100 + rand(300) as usize), NOBODY).unwrap();
        }
    }
    // A compaction is under way (copying) when the snapshot begins: it pauses.
    s.tick(Instant::now()).unwrap();
    assert!(s.stats().compacting);
    let at_upto = contents(&s);
    let mut cur = s.begin_snapshot();
    assert_eq!(cur.upto(), s.last_lsn());
    let mut touched: HashSet<Vec<u8>> = HashSet::new();
    let mut history: HashMap<Vec<u8>, Vec<Vec<u8>>> =
        at_upto.iter().map(|(k, (v, _))| (k.clone(), vec![v.clone()])).collect();
    let mut visits: Vec<(Vec<u8>, Vec<u8>, u64)> = Vec::new();
    let mut calls = 0;
    let compactions = s.stats().compactions;
    loop {
        let done =
            s.read_snapshot(&mut cur, 2000, |r| visits.push((r.key.to_vec(), r.value.to_vec(), r.version)));
        calls += 1;
        if done {
            break;
        }
        // Writes between chunks: overwrites, deletes and new keys, enough to roll segments.
        for j in 0..6u64 {
            let k = key(rand(260));
            touched.insert(k.clone());
            if rand(4) == 0 {
                s.delete(&k, NOBODY).unwrap();
            } else {
                let v = val(10_000 + calls * 10 + j, 300);
                history.entry(k.clone()).or_default().push(v.clone());
                s.put(&k, &v, NOBODY).unwrap();
            }
        }
        s.tick(Instant::now()).unwrap();
        assert!(calls < 10_000);
    }
    assert!(calls > 5, "the walk is bounded per call ({calls} calls)");
    assert_eq!(s.stats().compactions, compactions, "compaction held still during the walk");
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for (k, v, _) in &visits {
        assert!(history.get(k).is_some_and(|h| h.contains(v)), "visited a value the key never had");
        seen.insert(k.clone());
    }
    for (k, (v, version)) in &at_upto {
        if !touched.contains(k) {
            assert!(seen.contains(k), "unchanged key {:?} was not visited", String::from_utf8_lossy(k));
            assert!(visits.iter().any(|(vk, vv, ver)| vk == k && vv == v && ver == version));
        }
    }
    // Ending the walk lets the paused compaction go on.
    s.end_snapshot(cur);
    let start = Instant::now();
    while s.stats().compactions == compactions {
        s.tick(Instant::now()).unwrap();
        assert!(start.elapsed().as_secs() < 30, "compaction did not resume");
    }
}

#[test]
fn snapshot_holds_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = overwritten(dir.path());
    let (a, b) = (s.begin_snapshot(), s.begin_snapshot());
    let segments = s.stats().segments;
    s.compact_now().unwrap(); // held: does nothing
    assert_eq!((s.stats().segments, s.stats().compactions), (segments, 0));
    s.end_snapshot(a);
    s.compact_now().unwrap();
    assert_eq!(s.stats().compactions, 0, "one snapshot still holds compaction");
    s.end_snapshot(b);
    s.compact_now().unwrap();
    assert_eq!(s.stats().compactions, 1);
}

// ---- 6. Installing a snapshot ----

/// Streams a snapshot of `p` into `b` (wipe, install, finish), then the log after it.
fn transfer(p: &mut Store, b: &mut Store, chunk: usize, between: &mut dyn FnMut(&mut Store)) -> Lsn {
    b.wipe().unwrap();
    let mut cur = p.begin_snapshot();
    let upto = cur.upto();
    let mut records = Vec::new();
    while !p.read_snapshot(&mut cur, chunk, |r| {
        records.push((r.key.to_vec(), r.value.to_vec(), r.lsn, r.version))
    }) {
        for (k, v, lsn, version) in records.drain(..) {
            b.install_record(&k, &v, Lsn(lsn.0.min(upto.0)), version).unwrap();
        }
        between(p);
    }
    p.end_snapshot(cur);
    for (k, v, lsn, version) in records.drain(..) {
        b.install_record(&k, &v, Lsn(lsn.0.min(upto.0)), version).unwrap();
    }
    for (client, e) in p.client_entries().collect::<Vec<_>>() {
        b.install_client(client, e);
    }
    b.finish_install(upto).unwrap();
    upto
}

#[test]
fn wipe_install_finish_then_replay_matches_the_primary_and_survives_reopen() {
    let (pdir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut p = Store::open(pdir.path(), opts()).unwrap();
    for i in 0..400u64 {
        p.put(&key(i % 90), &val(i, 200), meta(1 + i % 4, i)).unwrap();
        if i % 9 == 0 {
            p.delete(&key((i * 7) % 90), meta(1 + i % 4, i)).unwrap();
        }
    }
    p.compact_now().unwrap();
    // The backup has diverged: other data, other clients, a higher last LSN.
    let mut b = Store::open(bdir.path(), opts()).unwrap();
    for i in 0..900u64 {
        b.put(&key(1000 + i % 50), b"stale", meta(77, i)).unwrap();
    }
    b.wipe().unwrap();
    assert_eq!((b.last_lsn(), b.log_start(), b.client_count(), b.stats().keys), (Lsn(0), Lsn(1), 0, 0));
    assert!(!bdir.path().join("CLIENTS").exists());
    assert_eq!(b.put(b"usable", b"yes", NOBODY).unwrap(), Lsn(1), "a wiped store is usable");
    // Writes go on at the primary while the snapshot is streamed.
    let mut n = 0u64;
    let upto = transfer(&mut p, &mut b, 1500, &mut |p| {
        n += 1;
        p.put(&key(n % 120), &val(50_000 + n, 150), meta(2, 9000 + n)).unwrap();
        if n % 5 == 0 {
            p.delete(&key((n * 3) % 90), NOBODY).unwrap();
        }
    });
    assert_eq!((b.last_lsn(), b.log_start(), b.durable_lsn()), (upto, Lsn(upto.0 + 1), upto));
    assert!(b.read_log(&mut LogCursor::new(Lsn(upto.0 + 1))).unwrap().is_none());
    // Then the log from upto + 1, and more writes, continue the backup's log.
    let mut c = LogCursor::new(Lsn(upto.0 + 1));
    replicate(&p, &mut c, &mut b);
    for i in 0..30u64 {
        p.put(&key(i), b"after", meta(3, 20_000 + i)).unwrap();
    }
    replicate(&p, &mut c, &mut b);
    assert_eq!(b.last_lsn(), p.last_lsn());
    assert_eq!(contents(&b), contents(&p));
    for (client, e) in p.client_entries() {
        assert_eq!(b.client_entry(client), Some(e));
    }
    assert_eq!(b.client_count(), p.client_count());
    drop(b);
    let b = Store::open(bdir.path(), opts()).unwrap();
    assert_eq!(contents(&b), contents(&p));
    assert_eq!((b.last_lsn(), b.log_start()), (p.last_lsn(), Lsn(upto.0 + 1)));
    for (client, e) in p.client_entries() {
        assert_eq!(b.client_entry(client), Some(e));
    }
    let names: Vec<String> =
        fs::read_dir(bdir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| n.ends_with(".seg") || n == "LOCK" || n == "CLIENTS"), "{names:?}");
}

#[test]
fn finish_install_survives_a_crash_right_after_and_an_empty_snapshot_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Store::open(dir.path(), opts()).unwrap();
    b.put(b"old", b"data", NOBODY).unwrap();
    b.wipe().unwrap();
    for i in 0..100u64 {
        b.install_record(&key(i), &val(i, 400), Lsn(1 + i), 1 + i).unwrap();
    }
    // The same key twice: the later install wins, also after recovery (equal, clamped LSNs).
    b.install_record(&key(5), b"first", Lsn(500), 9).unwrap();
    b.install_record(&key(5), b"second", Lsn(500), 10).unwrap();
    b.install_client(4, ClientEntry { request_id: 8, lsn: Lsn(90), version: 90 });
    b.finish_install(Lsn(500)).unwrap();
    assert_eq!(b.get(&key(5)).map(|e| e.value.to_vec()), Some(b"second".to_vec()));
    let image = tempfile::tempdir().unwrap();
    crash_image(dir.path(), image.path());
    let mut r = Store::open(image.path(), opts()).unwrap();
    assert_eq!((r.last_lsn(), r.log_start()), (Lsn(500), Lsn(501)));
    assert_eq!(r.stats().keys, 100);
    assert_eq!(r.get(&key(5)).map(|e| (e.value.to_vec(), e.version)), Some((b"second".to_vec(), 10)));
    assert_eq!(r.get(&key(7)).map(|e| e.value.to_vec()), Some(val(7, 400)));
    assert_eq!(r.get(b"old"), None);
    assert_eq!(r.client_entry(4), Some(ClientEntry { request_id: 8, lsn: Lsn(90), version: 90 }));
    // A log record of an installed key wins over it after recovery.
    let w = ReplicatedWrite {
        lsn: Lsn(501),
        tombstone: false,
        key: &key(7),
        value: b"newer",
        timestamp: 501,
        meta: NOBODY,
    };
    r.apply_replicated(&w).unwrap();
    drop(r);
    let r = Store::open(image.path(), opts()).unwrap();
    assert_eq!(r.get(&key(7)).map(|e| e.value.to_vec()), Some(b"newer".to_vec()));
    assert_eq!((r.last_lsn(), r.log_start()), (Lsn(501), Lsn(501)));

    // An empty snapshot: nothing installed, LSNs continue after upto all the same.
    b.wipe().unwrap();
    b.finish_install(Lsn(42)).unwrap();
    assert_eq!((b.last_lsn(), b.log_start(), b.stats().keys), (Lsn(42), Lsn(43), 0));
    drop(b);
    let mut b = Store::open(dir.path(), opts()).unwrap();
    assert_eq!((b.last_lsn(), b.log_start()), (Lsn(42), Lsn(43)));
    assert_eq!(b.put(b"k", b"v", NOBODY).unwrap(), Lsn(43));
}

#[test]
fn a_crash_during_an_install_leaves_no_installed_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Store::open(dir.path(), opts()).unwrap();
    for i in 0..50u64 {
        b.put(&key(i), b"old", meta(1, i)).unwrap();
    }
    b.wipe().unwrap();
    for i in 0..200u64 {
        b.install_record(&key(i), &val(i, 300), Lsn(1 + i), 1 + i).unwrap();
    }
    b.install_client(9, ClientEntry { request_id: 1, lsn: Lsn(3), version: 3 });
    b.sync().unwrap(); // even flushed, the install is not kept
    assert_eq!(b.stats().keys, 200, "installed records are readable during the install");
    // A crash image taken mid-install ...
    let image = tempfile::tempdir().unwrap();
    crash_image(dir.path(), image.path());
    let r = Store::open(image.path(), opts()).unwrap();
    assert_eq!((r.stats().keys, r.last_lsn(), r.client_count()), (0, Lsn(0), 0));
    assert!(!r.recovery_report().removed.is_empty());
    drop(r);
    // ... and a store dropped without finishing reopen as the wiped store.
    drop(b);
    let b = Store::open(dir.path(), opts()).unwrap();
    assert_eq!((b.stats().keys, b.last_lsn(), b.log_start(), b.client_count()), (0, Lsn(0), Lsn(1), 0));
}

#[test]
fn installs_are_refused_where_they_would_mix_with_other_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Store::open(dir.path(), opts()).unwrap();
    b.put(b"a", b"1", NOBODY).unwrap();
    assert!(matches!(b.install_record(b"k", b"v", Lsn(1), 1), Err(StorageError::Install(_))));
    assert!(matches!(b.finish_install(Lsn(5)), Err(StorageError::Install(_))));
    b.wipe().unwrap();
    assert!(matches!(b.install_record(b"k", b"v", Lsn(0), 1), Err(StorageError::Install(_))));
    b.install_record(b"k", b"v", Lsn(9), 1).unwrap();
    // During the install, writes are refused (their LSNs would collide with the snapshot's).
    for r in [
        b.put(b"x", b"y", NOBODY).map(drop),
        b.append(b"k", b"y", NOBODY).map(drop),
        b.delete(b"k", NOBODY).map(drop),
        b.apply_replicated(&ReplicatedWrite {
            lsn: Lsn(1),
            tombstone: false,
            key: b"x",
            value: b"y",
            timestamp: 1,
            meta: NOBODY,
        })
        .map(drop),
    ] {
        assert!(matches!(r, Err(StorageError::Install(_))), "{r:?}");
    }
    let err = b.finish_install(Lsn(8)).unwrap_err();
    assert!(matches!(err, StorageError::Install(_)), "a record above upto: {err}");
    b.finish_install(Lsn(9)).unwrap();
    assert_eq!(b.put(b"x", b"y", NOBODY).unwrap(), Lsn(10));
}
