//! Criterion micro-benchmarks of the store beside their in-memory floor.
//!
//! - `put/<size>/*`: `hashmap` (std `HashMap<Vec<u8>, Vec<u8>>` insert of an owned copy, the
//!   floor), the store with `never`, `interval:10` (with `tick` every 64 puts, as a loop would),
//!   `always` with one `sync` per batch of 64 puts (group commit) and per put. Every put carries
//!   client id 1, so the at-most-once table is updated each time; `never_100k_clients` spreads
//!   the puts over 100 000 client ids (the table's default bound), its worst case for caches.
//!   `never_payload_crc` is `never` with `WriteMeta::payload_crc` set, as a server sets it from
//!   the request frame's verified checksum (issue #11): the record's CRC is derived instead of
//!   computed over the value. The CRCs are computed before the clock starts; deriving one from a
//!   frame is the `wire/payload_crc_derived` micro-benchmark (benches/micro).
//! - `get/<size>/*`, `delete/<size>/*`: the store against `HashMap` get/remove.
//! - `record_crc/<size>/*`: the record checksum alone: `computed` over header, key and value;
//!   `derived` from the CRC of key and value; `derived_from_frame` from a request frame's
//!   verified checksum (`Frame::payload_crc` then the store's derivation: a server's whole cost).
//! - `msync/one_page`: the cost of one `sync` after one small put: what `always` adds per batch.
//! - `recovery/open`: reopening a store (scan + verify + index rebuild); throughput in bytes.
//! - `compaction/full`: `compact_now` over a store half of whose records are dead; throughput
//!   in input bytes.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-storage cargo bench -p tandem-storage --bench store`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use storage::{Durability, Options, Store, WriteMeta};

const META: WriteMeta = WriteMeta { client_id: 1, request_id: 2, payload_crc: None };

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("key-{i:012}").into_bytes()).collect()
}

/// A fixed pseudo-random visiting order, so lookups are not sequential in memory.
fn order(n: usize) -> Vec<usize> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        })
        .collect()
}

fn keyspace(size: usize) -> usize {
    if size > 1000 {
        10_000
    } else {
        100_000
    }
}

fn opts(durability: Durability) -> Options {
    Options { durability, compact_min_dead_bytes: Some(u64::MAX), ..Options::default() }
}

/// Keeps the disk bounded between measurements (untimed).
fn maybe_compact(store: &mut Store) {
    if store.stats().dead_bytes > 384 << 20 {
        store.compact_now().unwrap();
    }
}

fn bench_put(c: &mut Criterion) {
    for size in [100usize, 4000] {
        let n = keyspace(size);
        let ks = keys(n);
        let ord = order(n);
        let value = vec![0xabu8; size];
        let payload_crcs: Vec<u32> =
            ks.iter().map(|k| crc32fast::hash(&[k.as_slice(), &value].concat())).collect();
        let mut g = c.benchmark_group(format!("put/{size}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("hashmap", |b| {
            let mut m: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            let mut i = 0;
            b.iter(|| {
                let k = &ks[ord[i % n]];
                m.insert(k.clone(), value.clone());
                i += 1;
            })
        });
        for (name, durability, batch) in [
            ("never", Durability::Never, 0usize),
            ("never_100k_clients", Durability::Never, 0),
            ("never_payload_crc", Durability::Never, 0),
            ("interval_10ms", Durability::Interval { ms: 10 }, 0),
            ("always_batch64", Durability::Always, 64),
            ("always_batch1", Durability::Always, 1),
        ] {
            let clients = if name == "never_100k_clients" { 100_000 } else { 1 };
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(dir.path(), opts(durability)).unwrap();
            let mut i = 0usize;
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    maybe_compact(&mut store);
                    let start = Instant::now();
                    for _ in 0..iters {
                        let k = ord[i % n];
                        let payload_crc = (name == "never_payload_crc").then(|| payload_crcs[k]);
                        let meta = WriteMeta {
                            client_id: 1 + (i % clients) as u64,
                            request_id: i as u64,
                            payload_crc,
                        };
                        store.put(&ks[k], &value, meta).unwrap();
                        i += 1;
                        if batch > 0 && i % batch == 0 {
                            store.sync().unwrap();
                        } else if batch == 0 && i % 64 == 0 {
                            store.tick(Instant::now()).unwrap();
                        }
                    }
                    start.elapsed()
                })
            });
        }
        g.finish();
    }
}

/// The record checksum alone, the CPU work `never_payload_crc` saves without the page faults and
/// memory traffic that dominate a 4000-byte put: computed over header, key and value, derived
/// from the CRC of key and value, and derived from a decoded request frame's checksum (what a
/// server does per write in all: `Frame::payload_crc`, then the store's derivation).
fn bench_record_crc(c: &mut Criterion) {
    use storage::format::{encode_record_header_tagged, encode_record_header_with_payload_crc};
    use storage::format::{RecordKind, RecordMeta};
    let key = b"key-000000001234";
    let meta = RecordMeta { kind: RecordKind::Put, lsn: 77, timestamp: 77, client_id: 1, request_id: 9 };
    for size in [100usize, 256, 1000, 4000] {
        let value = vec![0xabu8; size];
        let mut frame = [0u8; wire::FRAME_LEN];
        wire::Frame::request(9, wire::Command::PUT, key, &value).encode(&mut frame).unwrap();
        let (decoded, frame_crc) = wire::Frame::decode_with_crc(&frame).unwrap();
        let payload_crc = decoded.payload_crc(frame_crc);
        let mut g = c.benchmark_group(format!("record_crc/{size}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("computed", |b| {
            b.iter(|| encode_record_header_tagged(black_box(&meta), 1, black_box(key), &[black_box(&value)]))
        });
        g.bench_function("derived", |b| {
            b.iter(|| {
                let crc = black_box(payload_crc);
                encode_record_header_with_payload_crc(
                    black_box(&meta),
                    1,
                    black_box(key),
                    &[black_box(&value)],
                    crc,
                )
            })
        });
        g.bench_function("derived_from_frame", |b| {
            b.iter(|| {
                let crc = black_box(&decoded).payload_crc(black_box(frame_crc));
                encode_record_header_with_payload_crc(
                    black_box(&meta),
                    1,
                    black_box(key),
                    &[black_box(&value)],
                    crc,
                )
            })
        });
        g.finish();
    }
}

fn bench_msync(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), opts(Durability::Always)).unwrap();
    let value = vec![1u8; 100];
    let mut i = 0u64;
    c.bench_function("msync/one_page", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                store.put(&i.to_le_bytes(), &value, META).unwrap();
                i += 1;
                let t = Instant::now();
                store.sync().unwrap();
                total += t.elapsed();
            }
            total
        })
    });
}

fn bench_get(c: &mut Criterion) {
    for size in [100usize, 4000] {
        let n = keyspace(size);
        let ks = keys(n);
        let ord = order(n);
        let value = vec![0xcdu8; size];
        let mut g = c.benchmark_group(format!("get/{size}"));
        g.throughput(Throughput::Elements(1));
        let m: HashMap<Vec<u8>, Vec<u8>> = ks.iter().map(|k| (k.clone(), value.clone())).collect();
        let mut i = 0;
        g.bench_function("hashmap", |b| {
            b.iter(|| {
                let v = m.get(&ks[ord[i % n]]).map(|v| v.len());
                i += 1;
                black_box(v)
            })
        });
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), opts(Durability::Never)).unwrap();
        for k in &ks {
            store.put(k, &value, META).unwrap();
        }
        let mut i = 0;
        g.bench_function("store", |b| {
            b.iter(|| {
                let v = store.get(&ks[ord[i % n]]).map(|e| e.value.len());
                i += 1;
                black_box(v)
            })
        });
        g.finish();
    }
}

fn bench_delete(c: &mut Criterion) {
    for size in [100usize, 4000] {
        let n = keyspace(size);
        let ks = keys(n);
        let value = vec![0xefu8; size];
        let mut g = c.benchmark_group(format!("delete/{size}"));
        g.throughput(Throughput::Elements(1));
        const CHUNK: usize = 4096;
        let mut m: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut at = 0usize;
        g.bench_function("hashmap", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let chunk = left.min(CHUNK);
                    let base = at % (n - CHUNK);
                    for k in &ks[base..base + chunk] {
                        m.insert(k.clone(), value.clone());
                    }
                    let t = Instant::now();
                    for k in &ks[base..base + chunk] {
                        black_box(m.remove(k));
                    }
                    total += t.elapsed();
                    left -= chunk;
                    at += chunk;
                }
                total
            })
        });
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), opts(Durability::Never)).unwrap();
        g.bench_function("never", |b| {
            b.iter_custom(|iters| {
                maybe_compact(&mut store);
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let chunk = left.min(CHUNK);
                    let base = at % (n - CHUNK);
                    for k in &ks[base..base + chunk] {
                        store.put(k, &value, META).unwrap();
                    }
                    let t = Instant::now();
                    for k in &ks[base..base + chunk] {
                        black_box(store.delete(k, META).unwrap());
                    }
                    total += t.elapsed();
                    left -= chunk;
                    at += chunk;
                }
                total
            })
        });
        g.finish();
    }
}

fn bench_recovery(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let n = 1_000_000;
    let value = [7u8; 100];
    let bytes = {
        let mut store = Store::open(dir.path(), opts(Durability::Never)).unwrap();
        for (i, k) in keys(n).iter().enumerate() {
            store.put(k, &value[..50 + i % 51], META).unwrap();
        }
        let s = store.stats();
        s.live_bytes + s.dead_bytes
    };
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("open_1M_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let store = Store::open(dir.path(), opts(Durability::Never)).unwrap();
                total += t.elapsed();
                assert_eq!(store.stats().keys as usize, n);
            }
            total
        })
    });
    g.finish();
}

fn bench_compaction(c: &mut Criterion) {
    let n = 200_000;
    let ks = keys(n);
    let value = vec![9u8; 100];
    let mut g = c.benchmark_group("compaction");
    g.sample_size(10);
    let input_bytes = {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), opts(Durability::Never)).unwrap();
        for _ in 0..2 {
            for k in &ks {
                s.put(k, &value, META).unwrap();
            }
        }
        let st = s.stats();
        st.live_bytes + st.dead_bytes
    };
    g.throughput(Throughput::Bytes(input_bytes));
    g.bench_function("full_half_dead_200k_keys", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let mut s = Store::open(dir.path(), opts(Durability::Never)).unwrap();
                for _ in 0..2 {
                    for k in &ks {
                        s.put(k, &value, META).unwrap();
                    }
                }
                (dir, s)
            },
            |(dir, mut s)| {
                s.compact_now().unwrap();
                (dir, s)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_put, bench_record_crc, bench_msync, bench_get, bench_delete, bench_recovery, bench_compaction
}
criterion_main!(benches);
