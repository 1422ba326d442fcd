//! Page faults per 4000-byte put with `Durability::Never`: the figure behind the storage
//! benchmark's put/4000 (BENCHMARKS.md, "Storage engine").
//!
//! Writes N puts of 4000-byte values over 10,000 keys, as the benchmark does (tick every 64
//! puts, an untimed `compact_now` whenever dead bytes pass 384 MiB), and reports the time per
//! put and the minor and major page faults per put of this process (all threads, from
//! getrusage), for the timed puts only.
//!
//! `cargo run --release -p tandem-storage --example put_faults -- 200000`

use std::time::{Duration, Instant};

use storage::{Options, Store, WriteMeta};

fn faults() -> (i64, i64) {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        (u.ru_minflt, u.ru_majflt)
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options { compact_min_dead_bytes: Some(u64::MAX), ..Options::default() };
    let mut store = Store::open(dir.path(), opts).expect("open");
    let keys: Vec<Vec<u8>> = (0..10_000).map(|i| format!("key-{i:012}").into_bytes()).collect();
    let value = vec![0xabu8; 4000];
    let (mut timed, mut minor, mut major) = (Duration::ZERO, 0i64, 0i64);
    let mut i = 0usize;
    while i < n {
        if store.stats().dead_bytes > 384 << 20 {
            store.compact_now().expect("compact");
        }
        let (f0, m0) = faults();
        let start = Instant::now();
        for _ in 0..1000 {
            store.put(&keys[(i * 7919) % keys.len()], &value, WriteMeta::default()).expect("put");
            i += 1;
            if i % 64 == 0 {
                store.tick(Instant::now()).expect("tick");
            }
        }
        timed += start.elapsed();
        let (f1, m1) = faults();
        minor += f1 - f0;
        major += m1 - m0;
    }
    println!(
        "{n} puts of 4000 B: {:.2} us/put, {:.3} minor faults/put, {:.3} major faults/put",
        timed.as_secs_f64() * 1e6 / n as f64,
        minor as f64 / n as f64,
        major as f64 / n as f64
    );
}
