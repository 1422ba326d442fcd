//! Compaction's write amplification in steady state, under the server benchmark's PUT load:
//! uniform overwrites of 10,000 keys with 4000-byte values, default options (automatic
//! compaction, `compact_dead_ratio` from `DEAD_RATIO` if set), `tick` every 16 puts with a whole
//! step budget, as a busy event loop would.
//!
//! Writes `warmup` puts, then `n` more, and reports for the second part: bytes compaction
//! copied per byte written (`Stats::compaction_bytes_copied / Stats::bytes_written`),
//! compactions, and the largest record bytes (live + dead) and disk bytes seen.
//!
//! `cargo run --release -p tandem-storage --example write_amp -- 400000 200000`

use std::time::{Duration, Instant};

use storage::{Options, Store, WriteMeta};

fn main() {
    env_logger::init();
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(400_000);
    let warmup = args.next().unwrap_or(200_000);
    let keyspace = args.next().unwrap_or(10_000);
    let ratio = std::env::var("DEAD_RATIO").ok().map_or(0.5, |r| r.parse().expect("DEAD_RATIO"));
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options { compact_dead_ratio: ratio, ..Options::default() };
    let mut store = Store::open(dir.path(), opts).expect("open");
    let keys: Vec<Vec<u8>> = (0..keyspace).map(|i| format!("key:{i:012}").into_bytes()).collect();
    let value = vec![0xabu8; 4000];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut base, mut start) = (store.stats(), Instant::now());
    let (mut max_used, mut max_disk) = (0u64, 0u64);
    let mut iteration = Instant::now();
    for i in 0..warmup + n {
        if i == warmup {
            base = store.stats();
            start = Instant::now();
        }
        let k = &keys[(next() % keyspace as u64) as usize];
        store.put(k, &value, WriteMeta::default()).expect("put");
        if i % 16 == 15 {
            // As a busy event loop does: `now` is when the iteration began, and a step may take
            // as long as the iteration has worked (here at least the whole step budget, so that
            // compaction keeps up as it does in the server at 50x1).
            store.tick(iteration.min(Instant::now() - Duration::from_micros(200))).expect("tick");
            iteration = Instant::now();
        }
        if i >= warmup && i % 1000 == 0 {
            let s = store.stats();
            max_used = max_used.max(s.live_bytes + s.dead_bytes);
            max_disk = max_disk.max(s.disk_bytes);
        }
    }
    let elapsed = start.elapsed();
    let s = store.stats();
    let written = s.bytes_written - base.bytes_written;
    let copied = s.compaction_bytes_copied - base.compaction_bytes_copied;
    println!(
        "{n} puts after {warmup}: {:.2} us/put, write amplification {:.3} ({copied} copied / {written} written), \
         {} compactions, max record bytes {:.1} MiB (live {:.1} MiB), max disk {:.1} MiB",
        elapsed.as_secs_f64() * 1e6 / n as f64,
        copied as f64 / written as f64,
        s.compactions - base.compactions,
        max_used as f64 / (1 << 20) as f64,
        s.live_bytes as f64 / (1 << 20) as f64,
        max_disk as f64 / (1 << 20) as f64,
    );
}
