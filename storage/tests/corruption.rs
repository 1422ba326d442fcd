//! Corruption tests: flipped bytes and truncations at chosen offsets, checking the torn-tail
//! rule, refusal to open with file and offset, and repair.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use storage::format::{self, Parsed, SEGMENT_HEADER_LEN};
use storage::{Corruption, Options, StorageError, Store, WriteMeta};

fn opts() -> Options {
    Options { segment_len: 16 << 10, compact_min_dead_bytes: Some(u64::MAX), ..Options::default() }
}

fn val(i: usize) -> Vec<u8> {
    format!("value-{i}-").repeat(20 + i % 7).into_bytes()
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

/// Writes `n` distinct keys (several segments' worth) and closes the store.
fn populate(dir: &Path, n: usize) {
    let mut s = Store::open(dir, opts()).unwrap();
    for i in 0..n {
        s.put(&key(i), &val(i), WriteMeta::default()).unwrap();
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// (offset, length, key) of every record in a segment file.
fn records(path: &Path) -> Vec<(u64, u64, Vec<u8>)> {
    let bytes = fs::read(path).unwrap();
    let mut off = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while let Parsed::Record(r) = format::parse_record(&bytes[off..]) {
        out.push((off as u64, r.len as u64, r.key.to_vec()));
        off += r.len;
    }
    out
}

fn flip(path: &Path, offset: u64) {
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
}

fn expect_corrupt(dir: &Path) -> (PathBuf, u64, Corruption) {
    match Store::open(dir, opts()) {
        Err(StorageError::Corrupt { file, offset, reason }) => (file, offset, reason),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, open succeeded"),
    }
}

/// Every key not in `lost` has its value.
fn check_all_but(store: &Store, n: usize, lost: &[Vec<u8>]) {
    for i in 0..n {
        let got = store.get(&key(i)).map(|e| e.value.to_vec());
        if lost.contains(&key(i)) {
            assert_eq!(got, None, "key {i} should be gone");
        } else {
            assert_eq!(got, Some(val(i)), "key {i}");
        }
    }
}

#[test]
fn flipped_byte_in_an_older_segment_is_refused_then_repaired() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 200);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let recs = records(&segs[0]);
    let (off, len, lost_key) = recs[3].clone();
    flip(&segs[0], off + len - 20);
    let before = fs::read(&segs[0]).unwrap();
    let (file, offset, reason) = expect_corrupt(dir.path());
    assert_eq!((file, offset, reason), (segs[0].clone(), off, Corruption::ChecksumMismatch));
    assert_eq!(fs::read(&segs[0]).unwrap(), before, "a refused open must not change anything");

    let report = Store::repair(dir.path(), &opts()).unwrap();
    assert_eq!(report.dropped.len(), 1, "{report:?}");
    let d = &report.dropped[0];
    assert_eq!((&d.file, d.offset, d.len, d.reason), (&segs[0], off, len, Corruption::ChecksumMismatch));
    assert_eq!(report.records_kept as usize, recs.len() - 1);
    let store = Store::open(dir.path(), opts()).unwrap();
    check_all_but(&store, 200, &[lost_key]);
    // Repairing a healthy directory does nothing.
    drop(store);
    assert_eq!(Store::repair(dir.path(), &opts()).unwrap().dropped, vec![]);
}

#[test]
fn torn_last_record_is_cut_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 100);
    let last = segments(dir.path()).pop().unwrap();
    let (off, len, lost_key) = records(&last).pop().unwrap();
    // A write interrupted halfway: the second half of the record never arrived.
    write_at(&last, off + len / 2, &vec![0u8; (len - len / 2) as usize]);
    let mut store = Store::open(dir.path(), opts()).unwrap();
    let torn = store.recovery_report().torn_tail.clone().expect("torn tail reported");
    assert_eq!((torn.file, torn.offset), (last.clone(), off));
    assert!(torn.len > 0 && torn.len <= len);
    check_all_but(&store, 100, std::slice::from_ref(&lost_key));
    // Writing goes on where the torn record was, and the next open is clean.
    store.put(b"after", b"the cut", WriteMeta::default()).unwrap();
    drop(store);
    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(store.recovery_report().torn_tail.is_none());
    assert_eq!(store.get(b"after").unwrap().value, b"the cut");
    check_all_but(&store, 100, &[lost_key]);
}

#[test]
fn flipped_byte_in_the_last_record_counts_as_torn() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 100);
    let last = segments(dir.path()).pop().unwrap();
    let (off, _, lost_key) = records(&last).pop().unwrap();
    flip(&last, off + 60);
    let store = Store::open(dir.path(), opts()).unwrap();
    let torn = store.recovery_report().torn_tail.clone().unwrap();
    assert_eq!((torn.offset, torn.reason), (off, Corruption::ChecksumMismatch));
    check_all_but(&store, 100, &[lost_key]);
}

#[test]
fn garbage_after_the_end_of_the_last_segment_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 50);
    let last = segments(dir.path()).pop().unwrap();
    let (off, len, _) = records(&last).pop().unwrap();
    // A record whose header was not written yet but whose key and value were.
    write_at(&last, off + len + 48, b"half a record's payload");
    let store = Store::open(dir.path(), opts()).unwrap();
    let torn = store.recovery_report().torn_tail.clone().unwrap();
    assert_eq!((torn.offset, torn.reason), (off + len, Corruption::GarbageAfterEnd));
    check_all_but(&store, 50, &[]);
}

#[test]
fn damage_followed_by_a_valid_record_in_the_last_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 100);
    let last = segments(dir.path()).pop().unwrap();
    let recs = records(&last);
    assert!(recs.len() >= 3);
    let (off, _, lost_key) = recs[recs.len() - 3].clone();
    flip(&last, off + 50);
    let (file, offset, reason) = expect_corrupt(dir.path());
    assert_eq!((file, offset, reason), (last.clone(), off, Corruption::ChecksumMismatch));
    let report = Store::repair(dir.path(), &opts()).unwrap();
    assert_eq!(report.dropped.len(), 1);
    assert_eq!(report.dropped[0].offset, off);
    let store = Store::open(dir.path(), opts()).unwrap();
    check_all_but(&store, 100, &[lost_key]);
}

#[test]
fn truncated_segment_is_refused_and_repair_keeps_the_records_before_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 120);
    let segs = segments(dir.path());
    let recs = records(&segs[1]);
    let (off, _, _) = recs[5];
    let cut = off + 30;
    OpenOptions::new().write(true).open(&segs[1]).unwrap().set_len(cut).unwrap();
    let (file, offset, reason) = expect_corrupt(dir.path());
    assert_eq!((file, offset, reason), (segs[1].clone(), cut, Corruption::Truncated));
    let report = Store::repair(dir.path(), &opts()).unwrap();
    assert!(report.dropped.iter().any(|d| d.reason == Corruption::Truncated), "{report:?}");
    assert_eq!(report.records_kept, 5);
    let lost: Vec<Vec<u8>> = recs[5..].iter().map(|r| r.2.clone()).collect();
    let store = Store::open(dir.path(), opts()).unwrap();
    check_all_but(&store, 120, &lost);
}

#[test]
fn damaged_segment_header_is_refused_and_repair_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 120);
    let segs = segments(dir.path());
    flip(&segs[0], 2);
    let (file, offset, reason) = expect_corrupt(dir.path());
    assert_eq!((file, offset, reason), (segs[0].clone(), 0, Corruption::BadSegmentHeader));
    let report = Store::repair(dir.path(), &opts()).unwrap();
    assert_eq!(report.dropped.len(), 1);
    assert_eq!(report.dropped[0].reason, Corruption::BadSegmentHeader);
    let store = Store::open(dir.path(), opts()).unwrap();
    check_all_but(&store, 120, &[]);
}

/// Flip one byte at each of many offsets of an older segment and of the newest one. Open must
/// either refuse, naming that file at or before the flip, or (newest segment, last record only)
/// cut a torn tail; it must never succeed with wrong data. Repair must always make it openable
/// without losing records outside the reported ranges.
#[test]
fn flips_at_chosen_offsets_never_go_unnoticed() {
    let template = tempfile::tempdir().unwrap();
    populate(template.path(), 60);
    let segs = segments(template.path());
    let names: Vec<_> = segs.iter().map(|p| p.file_name().unwrap().to_owned()).collect();
    let first_recs = records(&segs[0]);
    let last_recs = records(segs.last().unwrap());
    let end_of = |recs: &[(u64, u64, Vec<u8>)]| recs.last().map_or(SEGMENT_HEADER_LEN as u64, |r| r.0 + r.1);
    let mut cases = Vec::new();
    for off in (0..end_of(&first_recs)).step_by(37) {
        cases.push((0, off));
    }
    for off in (0..end_of(&last_recs)).step_by(53) {
        cases.push((names.len() - 1, off));
    }
    for (seg, off) in cases {
        let dir = tempfile::tempdir().unwrap();
        for n in &names {
            fs::copy(template.path().join(n), dir.path().join(n)).unwrap();
        }
        let path = dir.path().join(&names[seg]);
        flip(&path, off);
        let recs = if seg == 0 { &first_recs } else { &last_recs };
        let hit = recs.iter().find(|r| r.0 <= off && off < r.0 + r.1).map(|r| r.2.clone());
        match Store::open(dir.path(), opts()) {
            Err(StorageError::Corrupt { file, offset, .. }) => {
                assert_eq!(file, path, "flip at {seg}:{off}");
                assert!(offset <= off, "flip at {seg}:{off} reported at {offset}");
            }
            Ok(store) => {
                let torn = store.recovery_report().torn_tail.clone();
                let last = last_recs.last().unwrap();
                assert!(seg == names.len() - 1 && off >= last.0, "flip at {seg}:{off} went unnoticed");
                assert_eq!(torn.map(|t| t.offset), Some(last.0));
                check_all_but(&store, 60, std::slice::from_ref(&last.2));
                continue;
            }
            Err(e) => panic!("flip at {seg}:{off}: {e}"),
        }
        let report = Store::repair(dir.path(), &opts()).unwrap();
        assert!(!report.dropped.is_empty());
        let store =
            Store::open(dir.path(), opts()).unwrap_or_else(|e| panic!("after repair, flip {seg}:{off}: {e}"));
        // Every record outside the dropped ranges is still there.
        let lost: Vec<Vec<u8>> = hit.into_iter().collect();
        for i in 0..60 {
            let got = store.get(&key(i)).map(|e| e.value.to_vec());
            if !lost.contains(&key(i)) && off >= SEGMENT_HEADER_LEN as u64 {
                assert_eq!(got, Some(val(i)), "flip at {seg}:{off}: key {i} lost");
            }
        }
    }
}

#[test]
fn damaged_compaction_marker_is_refused_and_repair_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 50);
    fs::write(
        dir.path().join("COMPACT"),
        "tandem-compaction 1\nobsolete 0000000000000001.seg\ncrc 00000000\n",
    )
    .unwrap();
    let (file, _, reason) = expect_corrupt(dir.path());
    assert_eq!(
        (file.file_name().unwrap().to_str().unwrap(), reason),
        ("COMPACT", Corruption::BadCompactionMarker)
    );
    let report = Store::repair(dir.path(), &opts()).unwrap();
    assert_eq!(report.dropped[0].reason, Corruption::BadCompactionMarker);
    let store = Store::open(dir.path(), opts()).unwrap();
    check_all_but(&store, 50, &[]);
}

#[test]
fn leftovers_of_interrupted_work_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 50);
    // An uncommitted compaction output, a half-created segment, a half-written marker.
    let seg0 = segments(dir.path())[0].clone();
    fs::copy(&seg0, dir.path().join("00000000000000f0.tmp")).unwrap();
    fs::write(dir.path().join("00000000000000f1.new"), b"").unwrap();
    fs::write(dir.path().join("COMPACT.tmp"), b"tandem-comp").unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(store.recovery_report().removed.len(), 3);
    check_all_but(&store, 50, &[]);
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| n.to_str().unwrap().ends_with(".seg") || n == "LOCK"), "{left:?}");
}

/// The ways a whole segment file can be damaged (issue #10: an emptied segment used to be taken
/// for an interrupted creation and deleted, losing its records).
#[derive(Debug, Clone, Copy)]
enum FileDamage {
    Zeroed,
    TruncatedToZero,
    TruncatedMidFile,
    HeaderDamaged,
}

/// Every kind of whole-file damage, to the oldest, a middle and the newest log segment and to a
/// compaction output: `open` refuses, naming the file and the repair command, and changes
/// nothing; `repair` reports the file and makes the store open, with every key whose newest
/// record was elsewhere intact and no key that is absent in the template present.
#[test]
fn every_damaged_segment_file_is_refused_and_repaired() {
    let template = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(template.path(), opts()).unwrap();
        for i in 0..60 {
            s.put(&key(i), &val(i), WriteMeta::default()).unwrap();
        }
        for i in 0..40 {
            s.put(&key(i), &val(i + 1000), WriteMeta::default()).unwrap();
        }
        for i in 50..55 {
            s.delete(&key(i), WriteMeta::default()).unwrap();
        }
        s.compact_now().unwrap();
        for i in 100..260 {
            s.put(&key(i), &val(i), WriteMeta::default()).unwrap();
        }
    }
    // What each key must read, and the file holding its newest record.
    let expected = |i: usize| match i {
        0..40 => Some(val(i + 1000)),
        50..55 => None,
        40..60 | 100..260 => Some(val(i)),
        _ => None,
    };
    let segs = segments(template.path());
    let kind = |p: &Path| format::SegmentHeader::decode(&fs::read(p).unwrap()).unwrap().kind;
    let logs: Vec<&PathBuf> = segs.iter().filter(|p| kind(p) == format::SegmentKind::Log).collect();
    let output =
        segs.iter().find(|p| kind(p) == format::SegmentKind::Compacted).expect("a compaction output");
    assert!(logs.len() >= 3, "{segs:?}");
    // By LSN: a compaction output may hold older records than a log segment with a lower id.
    let mut newest_in: std::collections::HashMap<Vec<u8>, (u64, PathBuf)> = Default::default();
    for p in &segs {
        let bytes = fs::read(p).unwrap();
        for (off, _, k) in records(p) {
            let Parsed::Record(r) = format::parse_record(&bytes[off as usize..]) else { unreachable!() };
            if newest_in.get(&k).is_none_or(|(lsn, _)| r.meta.lsn >= *lsn) {
                newest_in.insert(k, (r.meta.lsn, p.clone()));
            }
        }
    }
    let targets = [
        ("oldest", logs[0]),
        ("middle", logs[logs.len() / 2]),
        ("newest", *logs.last().unwrap()),
        ("output", output),
    ];
    for (which, target) in targets {
        for damage in [
            FileDamage::Zeroed,
            FileDamage::TruncatedToZero,
            FileDamage::TruncatedMidFile,
            FileDamage::HeaderDamaged,
        ] {
            let case = format!("{damage:?} {which} {}", target.display());
            let dir = tempfile::tempdir().unwrap();
            for p in &segs {
                fs::copy(p, dir.path().join(p.file_name().unwrap())).unwrap();
            }
            fs::copy(template.path().join("CLIENTS"), dir.path().join("CLIENTS")).unwrap();
            let path = dir.path().join(target.file_name().unwrap());
            let len = fs::metadata(&path).unwrap().len();
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            let (offset, reason) = match damage {
                FileDamage::Zeroed => {
                    f.write_all_at(&vec![0u8; len as usize], 0).unwrap();
                    (0, Corruption::BadSegmentHeader)
                }
                FileDamage::TruncatedToZero => {
                    f.set_len(0).unwrap();
                    (0, Corruption::Truncated)
                }
                FileDamage::TruncatedMidFile => {
                    f.set_len(len / 2).unwrap();
                    (len / 2, Corruption::Truncated)
                }
                FileDamage::HeaderDamaged => {
                    flip(&path, 9);
                    (0, Corruption::BadSegmentHeader)
                }
            };
            drop(f);
            let before = fs::read(&path).unwrap();
            let err = Store::open(dir.path(), opts()).err().unwrap_or_else(|| panic!("{case}: opened"));
            let StorageError::Corrupt { file, offset: o, reason: r } = &err else { panic!("{case}: {err}") };
            assert_eq!((file, *o, *r), (&path, offset, reason), "{case}");
            let command = format!("tandem-server --repair --data {}", dir.path().display());
            assert!(err.to_string().contains(&command), "{case}: {err}");
            assert_eq!(fs::read(&path).unwrap(), before, "{case}: a refused open changed the file");
            assert!(matches!(Store::open(dir.path(), opts()), Err(StorageError::Corrupt { .. })), "{case}");

            let report = Store::repair(dir.path(), &opts()).unwrap();
            assert!(
                report.dropped.iter().any(|d| d.file == path && d.reason == reason),
                "{case}: {report:?}"
            );
            let store =
                Store::open(dir.path(), opts()).unwrap_or_else(|e| panic!("{case}: after repair: {e}"));
            for i in 0..300 {
                let got = store.get(&key(i)).map(|e| e.value.to_vec());
                match newest_in.get(&key(i)) {
                    Some((_, p)) if p == target => {} // its newest record may be lost
                    _ => assert_eq!(got, expected(i), "{case}: key {i}"),
                }
            }
        }
    }
}

/// One record as the store writes it: header with `tag`, key, value, zero padding.
fn record(kind: format::RecordKind, lsn: u64, tag: u32, key: &[u8], value: &[u8]) -> Vec<u8> {
    let meta = format::RecordMeta { kind, lsn, timestamp: lsn, client_id: 0, request_id: 0 };
    let mut r = format::encode_record_header_tagged(&meta, tag, key, &[value]).to_vec();
    r.extend_from_slice(key);
    r.extend_from_slice(value);
    r.resize(format::record_len(key.len(), value.len()), 0);
    r
}

/// A segment file of `header.segment_len` bytes: this header, `body`, then zeros.
fn write_segment(dir: &Path, header: format::SegmentHeader, body: &[u8]) -> PathBuf {
    let mut b = header.encode().to_vec();
    b.extend_from_slice(body);
    b.resize(header.segment_len as usize, 0);
    let path = dir.join(format!("{:016x}.seg", header.id));
    fs::write(&path, b).unwrap();
    path
}

/// Repair of a RECYCLED log segment whose header is damaged must not keep the stale records of
/// the file's earlier life: their keys may have been deleted since, with the tombstones compacted
/// away (the newest log segment of `every_damaged_segment_file_is_refused_and_repaired` is
/// recycled in some runs, depending on the background preparation; this builds that case).
#[test]
fn repair_of_a_recycled_segment_with_a_damaged_header_keeps_its_stale_records_out() {
    use format::RecordKind::Put;
    // Segment 1 held "gone" (LSN 2, deleted at LSN 3) and "kept" (LSN 1). Compaction copied
    // "kept" into output 3, dropped "gone" with its tombstone, and retired file 1, which came
    // back as log segment 4: its own records, the end marker, then file 1's stale records.
    let stale: Vec<u8> =
        [record(Put, 2, 1, b"gone", b"deleted value"), record(Put, 1, 1, b"kept", b"old")].concat();
    let own: Vec<u8> = [record(Put, 4, 4, b"new", b"four"), record(Put, 5, 4, b"newer", b"five")].concat();
    let len = 16 << 10;
    let output = format::SegmentHeader {
        kind: format::SegmentKind::Compacted,
        id: 3,
        segment_len: len,
        base_lsn: 3,
        recycled: false,
    };
    let log = format::SegmentHeader { kind: format::SegmentKind::Log, id: 4, recycled: true, ..output };
    let empty_log = format::SegmentHeader { id: 5, base_lsn: 5, ..log };
    let end_marker = [0u8; format::RECORD_HEADER_LEN];
    let expect = |store: &Store, case: &str| {
        for (k, v) in [
            (&b"kept"[..], Some(&b"old"[..])),
            (b"new", Some(b"four")),
            (b"newer", Some(b"five")),
            (b"gone", None),
        ] {
            assert_eq!(
                store.get(k).map(|e| e.value.to_vec()),
                v.map(<[u8]>::to_vec),
                "{case}: {}",
                String::from_utf8_lossy(k)
            );
        }
    };
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 4] = [
        ("id byte flipped", |p| flip(p, 9)),
        ("flags cleared", |p| write_at(p, format::SEG_FLAGS_OFFSET as u64, &[0])),
        ("header zeroed", |p| write_at(p, 0, &[0; SEGMENT_HEADER_LEN])),
        ("crc flipped", |p| flip(p, format::SEG_CRC_OFFSET as u64)),
    ];
    for (target, own_records) in [(4, true), (5, false)] {
        for (what, damage) in damages {
            // "Flags cleared" and "header zeroed" leave nothing to tell an empty recycled log
            // segment from a compaction output whose first record is gone too.
            if !own_records && matches!(what, "flags cleared" | "header zeroed") {
                continue;
            }
            let case = format!("segment {target}, {what}");
            let dir = tempfile::tempdir().unwrap();
            write_segment(dir.path(), output, &record(Put, 1, 1, b"kept", b"old"));
            let body = [&own[..], &end_marker, &stale].concat();
            let path = write_segment(dir.path(), log, &body);
            let empty_path = write_segment(dir.path(), empty_log, &[&end_marker[..], &stale].concat());
            expect(&Store::open(dir.path(), opts()).unwrap(), &format!("{case}: before"));

            let path = if target == 4 { path } else { empty_path };
            damage(&path);
            let (file, _, reason) = expect_corrupt(dir.path());
            assert_eq!((&file, reason), (&path, Corruption::BadSegmentHeader), "{case}");
            let report = Store::repair(dir.path(), &opts()).unwrap();
            expect(&Store::open(dir.path(), opts()).unwrap(), &case);
            let mine: Vec<_> = report.dropped.iter().filter(|d| d.file == path).collect();
            let own_end = if own_records { own.len() } else { 0 } as u64 + SEGMENT_HEADER_LEN as u64;
            // The header, then the stale tail as one range from the end of the log.
            assert_eq!(mine.len(), 2, "{case}: {report:?}");
            assert_eq!(
                (mine[0].offset, mine[0].len, mine[0].reason),
                (0, 40, Corruption::BadSegmentHeader),
                "{case}"
            );
            assert_eq!(
                (mine[1].offset, mine[1].len, mine[1].reason),
                (own_end, (format::RECORD_HEADER_LEN + stale.len()) as u64, Corruption::GarbageAfterEnd),
                "{case}"
            );
            assert_eq!(report.records_kept, if own_records { 2 } else { 0 }, "{case}");
        }
    }
}
