//! Measures the resident memory the index costs per key.
//!
//! Inserts N keys (16-byte keys, 100-byte values) into a fresh store and reads `/proc/self/status`
//! before and after. `RssAnon` is the process's anonymous memory (the index's hash table); the
//! records themselves live in file-backed mapped pages (`RssFile`), which the kernel can drop and
//! re-read, so they are reported separately.
//!
//! `cargo run --release -p tandem-storage --example index_rss -- 1000000 10000000`

use std::time::Instant;

use storage::{Options, Store, WriteMeta};

fn status() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

fn main() {
    let counts: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() { vec![1_000_000, 10_000_000] } else { counts };
    println!("| keys | index RssAnon delta | per key | table allocation per key | VmRSS delta per key | RssFile delta | insert time |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for n in counts {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store =
            Store::open(dir.path(), Options { compact_min_dead_bytes: Some(u64::MAX), ..Options::default() })
                .expect("open");
        let value = [0x42u8; 100];
        let (rss0, anon0, file0) = status();
        let t = Instant::now();
        let mut key = [0u8; 16];
        for i in 0..n as u64 {
            key[..4].copy_from_slice(b"key-");
            key[4..].copy_from_slice(format!("{i:012}").as_bytes());
            store.put(&key, &value, WriteMeta::default()).expect("put");
        }
        let elapsed = t.elapsed();
        let (rss1, anon1, file1) = status();
        let stats = store.stats();
        assert_eq!(stats.keys as usize, n);
        let anon = anon1.saturating_sub(anon0);
        println!(
            "| {n} | {:.1} MiB | {:.1} B | {:.1} B | {:.1} B | {:.0} MiB | {:.2} s |",
            anon as f64 / (1 << 20) as f64,
            anon as f64 / n as f64,
            stats.index_bytes as f64 / n as f64,
            rss1.saturating_sub(rss0) as f64 / n as f64,
            file1.saturating_sub(file0) as f64 / (1 << 20) as f64,
            elapsed.as_secs_f64()
        );
    }
}
