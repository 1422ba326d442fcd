//! A/B of a 4000-byte put with and without `WriteMeta::payload_crc` (issue #11), interleaved in
//! one store so that both sides see the same page faults, compactions and neighbours: the
//! difference (~200 ns) is well below the run-to-run noise of the criterion `put/4000/*`
//! figures (~2 us, +-25 % on the shared VM).
//!
//! Puts as the storage benchmark does (10,000 keys in a fixed scattered order, tick every 64
//! puts, an untimed `compact_now` whenever dead bytes pass 384 MiB), in chunks of 1000: each
//! round times one chunk with the CRC handed over and one without, in alternating order. The
//! CRCs are computed before the clock starts (a server derives them from the request frame,
//! ~25 ns: `record_crc/*/derived_from_frame` in benches/store.rs). Reports the median over rounds
//! of each side's ns/put and of the per-round difference.
//!
//! `cargo run --release -p tandem-storage --example put_crc_ab -- 200`

use std::time::Instant;

use storage::{Options, Store, WriteMeta};

const CHUNK: usize = 1000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options { compact_min_dead_bytes: Some(u64::MAX), ..Options::default() };
    let mut store = Store::open(dir.path(), opts).expect("open");
    let keys: Vec<Vec<u8>> = (0..10_000).map(|i| format!("key-{i:012}").into_bytes()).collect();
    let value = vec![0xabu8; 4000];
    let crcs: Vec<u32> = keys.iter().map(|k| crc32fast::hash(&[k.as_slice(), &value].concat())).collect();
    let mut i = 0usize;
    let mut chunk = |store: &mut Store, with_crc: bool| -> f64 {
        if store.stats().dead_bytes > 384 << 20 {
            store.compact_now().expect("compact");
        }
        let start = Instant::now();
        for _ in 0..CHUNK {
            let k = (i * 7919) % keys.len();
            let meta = WriteMeta { payload_crc: with_crc.then(|| crcs[k]), ..WriteMeta::default() };
            store.put(&keys[k], &value, meta).expect("put");
            i += 1;
            if i % 64 == 0 {
                store.tick(Instant::now()).expect("tick");
            }
        }
        start.elapsed().as_secs_f64() * 1e9 / CHUNK as f64
    };
    // Warm up: the first segments, the index, the CPU's caches and clock.
    for _ in 0..20 {
        chunk(&mut store, false);
    }
    let (mut computed, mut derived, mut saved) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = chunk(&mut store, false);
            (a, chunk(&mut store, true))
        } else {
            let b = chunk(&mut store, true);
            (chunk(&mut store, false), b)
        };
        computed.push(a);
        derived.push(b);
        saved.push(a - b);
    }
    println!(
        "{rounds} rounds of {CHUNK} + {CHUNK} puts of 4000 B, medians: computed CRC {:.0} ns/put, \
         payload_crc {:.0} ns/put, per-round difference {:.0} ns/put",
        median(&mut computed),
        median(&mut derived),
        median(&mut saved)
    );
}
