//! State-store throughput: single-key compare-and-set transactions and point reads, on the
//! durable embedded store (every commit fsynced) with the in-memory store beside it in the
//! same run, and the ratio between them.
//!
//! `cargo bench -p aesp-benches --bench state_store`
#![expect(clippy::expect_used, reason = "a benchmark fails by panicking")]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aesp_core::{MemoryStore, StateStore, StateStoreExt as _, StateStoreOptions, Txn, TxnOutcome};
use aesp_store::EmbeddedStore;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Concurrent writers in the group-commit benchmark.
const WRITERS: usize = 64;

/// Mean time per operation of each benchmark's last sample, for the summary.
static MEASURED: Mutex<BTreeMap<String, f64>> = Mutex::new(BTreeMap::new());

fn record(name: &str, elapsed: Duration, ops: u64) {
    let per_op = elapsed.as_secs_f64() / ops.max(1) as f64;
    MEASURED.lock().expect("lock").insert(name.to_owned(), per_op);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

struct Stores {
    memory: Arc<dyn StateStore>,
    embedded: Arc<dyn StateStore>,
    _dir: tempfile::TempDir,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = EmbeddedStore::open(dir.path(), StateStoreOptions::default()).expect("opens");
    Stores { memory: Arc::new(MemoryStore::default()), embedded: Arc::new(embedded), _dir: dir }
}

/// One compare-and-set on `key`, retried on conflict; returns when it committed.
async fn cas(store: &dyn StateStore, key: &[u8], value: &[u8]) {
    loop {
        let current = store.get(key).await.expect("get");
        let txn = match &current {
            Some(kv) => Txn::new().if_revision(key, kv.mod_revision),
            None => Txn::new().if_absent(key),
        };
        if let TxnOutcome::Committed { .. } = store.txn(txn.put(key, value)).await.expect("txn") {
            return;
        }
    }
}

fn transactions(c: &mut Criterion) {
    let rt = runtime();
    let stores = stores();
    let mut group = c.benchmark_group("state_store/cas_one_writer");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    for (name, store) in [("memory", &stores.memory), ("embedded", &stores.embedded)] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let store = Arc::clone(store);
                async move {
                    let start = Instant::now();
                    for i in 0..iters {
                        cas(store.as_ref(), b"bench/cas", &i.to_le_bytes()).await;
                    }
                    let elapsed = start.elapsed();
                    record(&format!("cas_one_writer/{name}"), elapsed, iters);
                    elapsed
                }
            });
        });
    }
    group.finish();

    // Many writers on their own keys: group commit shares each fsync among them.
    let mut group = c.benchmark_group(format!("state_store/cas_{WRITERS}_writers"));
    group.throughput(Throughput::Elements(WRITERS as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    for (name, store) in [("memory", &stores.memory), ("embedded", &stores.embedded)] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let store = Arc::clone(store);
                async move {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..WRITERS)
                        .map(|w| {
                            let store = Arc::clone(&store);
                            tokio::spawn(async move {
                                let key = format!("bench/writer/{w}");
                                for i in 0..iters {
                                    cas(store.as_ref(), key.as_bytes(), &i.to_le_bytes()).await;
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("writer");
                    }
                    let elapsed = start.elapsed();
                    record(&format!("cas_{WRITERS}_writers/{name}"), elapsed, iters * WRITERS as u64);
                    elapsed
                }
            });
        });
    }
    group.finish();
}

fn point_reads(c: &mut Criterion) {
    let rt = runtime();
    let stores = stores();
    rt.block_on(async {
        for store in [&stores.memory, &stores.embedded] {
            let mut txn = Txn::new();
            for i in 0..1000 {
                txn = txn.put(format!("bench/read/{i:04}"), vec![7u8; 200]);
            }
            assert!(store.txn(txn).await.expect("loads").committed());
            store.put(b"bench/read/hot", b"x").await.expect("put");
        }
    });
    let mut group = c.benchmark_group("state_store/point_get");
    group.throughput(Throughput::Elements(1));
    for (name, store) in [("memory", &stores.memory), ("embedded", &stores.embedded)] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let store = Arc::clone(store);
                async move {
                    let keys: Vec<String> = (0..1000).map(|i| format!("bench/read/{i:04}")).collect();
                    let start = Instant::now();
                    for key in keys.iter().cycle().take(usize::try_from(iters).expect("fits")) {
                        std::hint::black_box(store.get(key.as_bytes()).await.expect("get"));
                    }
                    let elapsed = start.elapsed();
                    record(&format!("point_get/{name}"), elapsed, iters);
                    elapsed
                }
            });
        });
    }
    group.finish();
}

fn summary(_: &mut Criterion) {
    static PRINTED: std::sync::Once = std::sync::Once::new();
    let mut first = false;
    PRINTED.call_once(|| first = true);
    if !first {
        return;
    }
    let measured = MEASURED.lock().expect("lock");
    println!("\nstate store summary (last sample of each benchmark):");
    for kind in ["cas_one_writer".to_owned(), format!("cas_{WRITERS}_writers"), "point_get".to_owned()] {
        let memory = measured.get(&format!("{kind}/memory"));
        let embedded = measured.get(&format!("{kind}/embedded"));
        if let (Some(&m), Some(&e)) = (memory, embedded) {
            println!(
                "  {kind:<18} memory {:>12.0}/s   embedded {:>12.0}/s   memory/embedded {:>8.1}x",
                1.0 / m,
                1.0 / e,
                e / m
            );
        }
    }
}

criterion_group!(benches, transactions, point_reads, summary);
criterion_main!(benches);
