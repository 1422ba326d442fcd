//! How long `tick()` takes while it drives a compaction: the figure behind "a compaction step
//! never stalls the event loop for more than about a millisecond".
//!
//! Writes N keys (100-byte values) twice, so half the record bytes are dead, then calls `tick`
//! in a loop (as an event loop would) until the compaction has committed, recording each call.
//!
//! `cargo run --release -p tandem-storage --example tick_latency -- 400000`

use std::time::{Duration, Instant};

use storage::{Options, Store, WriteMeta};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(400_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options { segment_len: 16 << 20, compact_min_dead_bytes: Some(8 << 20), ..Options::default() };
    let mut store = Store::open(dir.path(), opts).expect("open");
    let value = [7u8; 100];
    for _ in 0..2 {
        for i in 0..n {
            store.put(format!("key-{i:012}").as_bytes(), &value, WriteMeta::default()).expect("put");
        }
    }
    let before = store.stats();
    let mut times: Vec<Duration> = Vec::new();
    let start = Instant::now();
    while store.stats().compactions == 0 || store.stats().compacting {
        let t = Instant::now();
        store.tick(t).expect("tick");
        times.push(t.elapsed());
        assert!(start.elapsed() < Duration::from_secs(120), "compaction did not finish");
    }
    let total = start.elapsed();
    let after = store.stats();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "ticks={} p50={:?} p99={:?} p99.9={:?} max={:?} wall={:?} input_bytes={} segments {} -> {}",
        times.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        times[times.len() - 1],
        total,
        before.live_bytes + before.dead_bytes,
        before.segments,
        after.segments
    );
}
