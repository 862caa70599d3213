//! Audit log benchmarks: durable appends per second with group commit (fsync on), proof
//! generation and verification, whole-log verification of 1,000,000 events, and the raw
//! SHA-256 leaf-hashing rate beside them, so the ratio to the hashing limit is visible.
#![expect(clippy::unwrap_used, reason = "benchmark setup fails by panicking")]

use std::{
    hint::black_box,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use aesp_audit::{VerifyOptions, leaf_hash, verify_inclusion, verify_log};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Concurrent appenders in the append benchmark, and the batch each appends per call.
const APPENDERS: usize = 8;
const BATCH: usize = 1000;
const MILLION: u64 = 1_000_000;

fn event_bytes(i: u64) -> Bytes {
    // About 300 bytes, like an encoded AuditEvent with metadata.
    let mut v = format!("{i:020}").into_bytes();
    v.resize(300, b'e');
    Bytes::from(v)
}

fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn hashing(c: &mut Criterion) {
    let entries: Vec<Bytes> = (0..1000).map(event_bytes).collect();
    let mut group = c.benchmark_group("audit/sha256_leaf");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("300B_x1000", |b| {
        b.iter(|| {
            for e in &entries {
                black_box(leaf_hash(e));
            }
        });
    });
    group.finish();
}

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let path = dir("audit-append");
    let (_storage, log) = rt.block_on(aesp_benches::open_segment_log(&path));
    let batch: Vec<Bytes> = (0..BATCH as u64).map(event_bytes).collect();
    let mut group = c.benchmark_group("audit/durable_append");
    group.throughput(Throughput::Elements((APPENDERS * BATCH) as u64));
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    // Sustained: every appender keeps one batch in flight, so while one group is synced the
    // next one gathers.
    group.bench_function(format!("{APPENDERS}_appenders_x_batch_{BATCH}_300B_fsync"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (log, batch) = (log.clone(), batch.clone());
            async move {
                let start = Instant::now();
                let mut tasks = Vec::with_capacity(APPENDERS);
                for _ in 0..APPENDERS {
                    let (log, batch) = (log.clone(), batch.clone());
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..iters {
                            black_box(log.append_encoded(batch.clone()).await.unwrap());
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            }
        });
    });
    group.finish();
    drop(log);
    let _ = std::fs::remove_dir_all(&path);
}

fn million(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let path = dir("audit-million");
    let (storage, log) = rt.block_on(aesp_benches::open_segment_log(&path));
    let start = Instant::now();
    rt.block_on(async {
        let mut next = 0u64;
        while next < MILLION {
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let batch: Vec<Bytes> = (next..next + 12_500).map(event_bytes).collect();
                next += 12_500;
                let log = log.clone();
                tasks.push(tokio::spawn(async move { log.append_encoded(batch).await.unwrap() }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        assert_eq!(log.checkpoint().await.unwrap().checkpoint().size, MILLION);
    });
    eprintln!("built a log of {MILLION} events of 300 bytes in {:?}", start.elapsed());
    let verifier = log.verifier().clone();
    let checkpoint = rt.block_on(log.latest_checkpoint()).unwrap().unwrap();
    let root = checkpoint.checkpoint().root_hash;

    let mut group = c.benchmark_group("audit/proofs_1M");
    let mut i = 0u64;
    group.bench_function("inclusion_generate", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % MILLION;
            let log = log.clone();
            async move { black_box(log.inclusion_proof(i, MILLION).await.unwrap()) }
        });
    });
    let proof = rt.block_on(log.inclusion_proof(4242, MILLION)).unwrap();
    // Appenders ran concurrently, so entry 4242 is whichever event got that index.
    let entry = rt.block_on(log.entry(4242)).unwrap();
    let leaf = leaf_hash(&entry);
    group.bench_function("inclusion_verify", |b| {
        b.iter(|| verify_inclusion(4242, MILLION, black_box(&leaf), &proof, &root).unwrap());
    });
    let tlog = rt.block_on(log.prove(4242)).unwrap();
    group.bench_function("tlog_proof_verify_with_signature", |b| {
        b.iter(|| black_box(tlog.verify(&entry, std::slice::from_ref(&verifier)).unwrap().size));
    });
    group.finish();

    let mut group = c.benchmark_group("audit/verify_log");
    group.throughput(Throughput::Elements(MILLION));
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("1M_events_300B", |b| {
        b.to_async(&rt).iter(|| {
            let (storage, verifier) = (Arc::clone(&storage), verifier.clone());
            async move {
                let report =
                    verify_log(storage.as_ref(), &[verifier], &VerifyOptions::default()).await.unwrap();
                assert!(report.is_ok(), "{report:?}");
                black_box(report.entries)
            }
        });
    });
    group.finish();

    // The limit beside it: hashing the same million leaves with nothing else.
    let entries: Vec<Bytes> = (0..MILLION).map(event_bytes).collect();
    let start = Instant::now();
    for e in &entries {
        black_box(leaf_hash(e));
    }
    let hashing = start.elapsed();
    let start = Instant::now();
    let report = rt.block_on(verify_log(storage.as_ref(), &[verifier], &VerifyOptions::default())).unwrap();
    let verifying = start.elapsed();
    assert!(report.is_ok());
    eprintln!(
        "raw SHA-256 leaf hashing of 1M x 300 B: {hashing:?} ({:.2} M leaves/s); whole-log verification: \
         {verifying:?}, {:.2}x the raw leaf hashing",
        MILLION as f64 / hashing.as_secs_f64() / 1e6,
        verifying.as_secs_f64() / hashing.as_secs_f64()
    );
    drop(log);
    let _ = std::fs::remove_dir_all(&path);
}

criterion_group!(benches, hashing, appends, million);
criterion_main!(benches);
