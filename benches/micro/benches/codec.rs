//! Wire codec: decode+verify and encode of one frame, beside the CRC alone, so the cost of
//! everything but the checksum can be read off as a difference.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wire::{Command, Frame, Request, FRAME_LEN};

const KEY: &[u8] = b"key:000000001234";

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    for value_len in [100usize, 4000] {
        let value = vec![0x5a; value_len];
        let mut frame = [0u8; FRAME_LEN];
        Frame::request(1, Command::PUT, KEY, &value).encode(&mut frame).unwrap();
        let checked = 48 + KEY.len() + value_len;

        group.bench_with_input(BenchmarkId::new("crc32_only", value_len), &frame, |b, f| {
            b.iter(|| crc32fast::hash(black_box(&f[8..checked])))
        });
        group.bench_with_input(BenchmarkId::new("decode_verify", value_len), &frame, |b, f| {
            b.iter(|| {
                let frame = Frame::decode(black_box(f)).unwrap();
                black_box(Request::parse(&frame).unwrap());
            })
        });
        let mut out = [0u8; FRAME_LEN];
        group.bench_with_input(BenchmarkId::new("encode", value_len), &value, |b, v| {
            b.iter(|| Frame::request(black_box(7), Command::PUT, KEY, black_box(v)).encode(&mut out).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
