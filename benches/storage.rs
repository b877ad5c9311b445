//! Storage engine benchmarks (criterion). Run beside fio with `benches/storage-vs-fio.sh`.
//!
//! - `append/{policy}/{record}B x{batch}`: one append of a batch per iteration.
//! - `group_commit/{appenders}x{batch}`: N threads appending 1 KB records under `always`.
//! - `read/sequential`: reading a page-cached log from the start, touching every record.
//! - `timestamp_lookup`: `offset_for_timestamp` on a 1M-record log.
//!
//! Data lives in a temporary directory under `POTOK_BENCH_DIR` (default: the target dir), on
//! the same disk fio measures. Retention keeps each log under about 2 GiB.

use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use potok::storage::{Durability, Log, LogConfig, Record, Retention};

fn bench_dir() -> tempfile::TempDir {
    let root = std::env::var_os("POTOK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&root).unwrap();
    tempfile::tempdir_in(root).unwrap()
}

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        retention: Retention {
            bytes_max: Some(2 << 30),
            ..Default::default()
        },
        ..LogConfig::default()
    }
}

fn batch(record_bytes: usize, count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| {
            Record::new(
                1_700_000_000_000 + i as i64,
                vec![(i % 251) as u8; record_bytes],
            )
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let policies = [
        ("never", Durability::Never),
        (
            "interval100ms",
            Durability::Interval(Duration::from_millis(100)),
        ),
        ("always", Durability::Always),
    ];
    for (name, durability) in policies {
        let mut group = c.benchmark_group(format!("append/{name}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for record_bytes in [100usize, 1024] {
            for count in [1usize, 16, 256] {
                let dir = bench_dir();
                let log = Log::open(dir.path().join("log"), config(durability)).unwrap();
                let records = batch(record_bytes, count);
                group.throughput(Throughput::Bytes((record_bytes * count) as u64));
                let id = BenchmarkId::from_parameter(format!("{record_bytes}B x{count}"));
                group.bench_function(id, |b| b.iter(|| log.append(&records).unwrap()));
            }
        }
        group.finish();
    }
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_commit");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for count in [1usize, 16] {
        for appenders in [1usize, 8, 64] {
            let dir = bench_dir();
            let log = Log::open(dir.path().join("log"), config(Durability::Always)).unwrap();
            let records = batch(1024, count);
            // Each iteration: every appender appends `rounds` batches.
            let rounds = 4;
            group.throughput(Throughput::Bytes(
                (1024 * count * appenders * rounds) as u64,
            ));
            let id = BenchmarkId::from_parameter(format!("{appenders} appenders x{count}"));
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let barrier = Barrier::new(appenders + 1);
                    std::thread::scope(|s| {
                        for _ in 0..appenders {
                            s.spawn(|| {
                                barrier.wait();
                                for _ in 0..iters * rounds as u64 {
                                    log.append(&records).unwrap();
                                }
                            });
                        }
                        barrier.wait();
                        let start = Instant::now();
                        // The scope joins every appender before returning.
                        start
                    })
                    .elapsed()
                })
            });
        }
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = bench_dir();
    let log = Log::open(dir.path().join("log"), config(Durability::Never)).unwrap();
    let records = batch(1024, 256);
    let total_bytes: u64 = 512 << 20;
    while log.size_bytes() < total_bytes {
        log.append(&records).unwrap();
    }
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path().join("log"), config(Durability::Never)).unwrap();
    let size = log.size_bytes();
    // Warm the page cache, then measure.
    let read_all = |log: &Log| {
        let mut from = 0;
        let mut body_bytes = 0u64;
        loop {
            let result = log.read(from, 1 << 20).unwrap();
            let Some(next) = result.next_offset() else {
                break;
            };
            body_bytes += result.records().map(|r| r.body.len() as u64).sum::<u64>();
            from = next;
        }
        body_bytes
    };
    // Warm-up doubles as a check that every record is read: 256 KiB of bodies per batch.
    let batches = log.next_offset() / 256;
    assert_eq!(
        read_all(&log),
        batches * 256 * 1024,
        "the benchmark reads every body byte"
    );
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(size));
    group.bench_function("sequential 1KB records", |b| b.iter(|| read_all(&log)));
    group.finish();
}

fn timestamp_lookup(c: &mut Criterion) {
    let dir = bench_dir();
    let log = Log::open(dir.path().join("log"), config(Durability::Never)).unwrap();
    // Timestamps rise through the log: record n has timestamp base + n.
    for n in 0..4000i64 {
        let records: Vec<Record> = (0..256)
            .map(|i| Record::new(1_700_000_000_000 + n * 256 + i, vec![7u8; 100]))
            .collect();
        log.append(&records).unwrap();
    }
    let mut rng_state = 1u64;
    let mut group = c.benchmark_group("timestamp_lookup");
    group.sample_size(20);
    group.bench_function("1M records, random target", |b| {
        b.iter(|| {
            rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let target = 1_700_000_000_000 + (rng_state >> 33) as i64 % (4000 * 256);
            log.offset_for_timestamp(target).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, append, group_commit, read, timestamp_lookup);
criterion_main!(benches);
