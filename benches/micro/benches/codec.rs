//! Wire codec: decode+verify and encode of one frame, beside the CRC alone, so the cost of
//! everything but the checksum can be read off as a difference. `payload_crc_derived` is what a
//! server spends to hand its store the CRC of a decoded frame's key and value
//! (`Frame::payload_crc`, issue #11), `payload_crc_rehashed` what computing it again costs.

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
        let (decoded, crc) = Frame::decode_with_crc(&frame).unwrap();
        group.bench_function(BenchmarkId::new("payload_crc_derived", value_len), |b| {
            b.iter(|| black_box(&decoded).payload_crc(black_box(crc)))
        });
        group.bench_function(BenchmarkId::new("payload_crc_rehashed", value_len), |b| {
            b.iter(|| {
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(black_box(decoded.key));
                hasher.update(black_box(decoded.value));
                hasher.finalize()
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
