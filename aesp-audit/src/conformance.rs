//! The conformance suite of the [`LogStorage`] contract.
//!
//! Every storage runs the same checks in its own tests, with a factory that opens a fresh,
//! empty storage:
//!
//! ```text
//! aesp_audit::log_storage_conformance!(|| async {
//!     std::sync::Arc::new(aesp_audit::MemoryStorage::default()) as std::sync::Arc<dyn aesp_audit::LogStorage>
//! });
//! ```
//!
//! The macro expands to one `#[tokio::test]` per check; each check is also a public function
//! taking a [`StorageFactory`]. Checks panic on failure, as tests do.
#![expect(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, reason = "a test suite")]

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use aesp_core::ErrorCode;
use bytes::Bytes;

use crate::{
    merkle::{RightEdge, leaf_hash},
    storage::{Leaf, LogStorage, PruneRequest},
};

/// Opens a fresh, empty storage.
pub trait StorageFactory: Send + Sync {
    /// Opens a fresh, empty storage.
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn LogStorage>> + Send + '_>>;
}

impl<F, Fut> StorageFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn LogStorage>> + Send + 'static,
{
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn LogStorage>> + Send + '_>> {
        Box::pin(self())
    }
}

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("entry-{i}-").repeat(usize::try_from(i % 7).unwrap() + 1))
}

/// Batches get consecutive indices; reads return the exact bytes; bad ranges are errors.
pub async fn appends_and_reads(factory: &dyn StorageFactory) {
    let storage = factory.open().await;
    let state = storage.state().await.unwrap();
    assert_eq!((state.size, state.integrated_size), (0, 0));
    let mut next = 0u64;
    for batch in [1u64, 5, 100, 3] {
        let entries: Vec<Bytes> = (next..next + batch).map(entry).collect();
        assert_eq!(storage.append(&entries).await.unwrap(), next);
        next += batch;
    }
    assert_eq!(storage.state().await.unwrap().size, next);
    let mut at = 0;
    while at < next {
        let got = storage.read_entries(at, next).await.unwrap();
        assert!(!got.is_empty());
        for (i, e) in got.iter().enumerate() {
            assert_eq!(*e, entry(at + i as u64));
        }
        at += got.len() as u64;
    }
    assert_eq!(storage.read_entries(3, 4).await.unwrap(), [entry(3)]);
    for (start, end) in [(0, 0), (5, 4), (next, next + 1), (0, next + 1)] {
        let error = storage.read_entries(start, end).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidArgument, "{start}..{end}");
    }
}

/// Concurrent appenders get disjoint, gapless ranges.
pub async fn concurrent_appends_are_sequenced(factory: &dyn StorageFactory) {
    let storage = factory.open().await;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let storage = Arc::clone(&storage);
        tasks.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for i in 0..10u64 {
                let tag = Bytes::from(format!("{t}-{i}"));
                firsts.push((storage.append(&[tag.clone(), tag.clone()]).await.unwrap(), tag));
            }
            firsts
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_by_key(|(first, _)| *first);
    for (k, (first, tag)) in all.iter().enumerate() {
        assert_eq!(*first, 2 * k as u64);
        assert_eq!(storage.read_entries(*first, first + 2).await.unwrap(), [tag.clone(), tag.clone()]);
    }
    assert_eq!(storage.state().await.unwrap().size, 160);
}

/// One lease holder at a time; stale leases are refused; release frees the lease.
pub async fn the_lease_is_exclusive(factory: &dyn StorageFactory) {
    let storage = factory.open().await;
    storage.append(&[entry(0)]).await.unwrap();
    let a = storage.acquire_lease("a", Duration::from_secs(60)).await.unwrap();
    let error = storage.acquire_lease("b", Duration::from_secs(60)).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Conflict);
    let renewed = storage.acquire_lease("a", Duration::from_secs(60)).await.unwrap();
    assert_eq!(renewed.token, a.token);
    storage.release_lease(&a).await.unwrap();
    let b = storage.acquire_lease("b", Duration::from_secs(60)).await.unwrap();
    assert!(b.token > a.token);
    let h = [leaf_hash(&entry(0))];
    assert_eq!(storage.append_hashes(&a, 0, 1, &h).await.unwrap_err().code(), ErrorCode::Conflict);
    assert_eq!(storage.store_checkpoint(&a, 0, b"n\n").await.unwrap_err().code(), ErrorCode::Conflict);
    storage.append_hashes(&b, 0, 1, &h).await.unwrap();
    // An expired lease can be taken over.
    storage.release_lease(&b).await.unwrap();
    let short = storage.acquire_lease("c", Duration::ZERO).await.unwrap();
    let d = storage.acquire_lease("d", Duration::from_secs(60)).await.unwrap();
    assert!(d.token > short.token);
    assert!(storage.append_hashes(&short, 1, 1, &[]).await.is_err());
}

/// Stored hashes continue the integrated size, read back by position; checkpoints are kept
/// in order and never go backwards.
pub async fn hashes_and_checkpoints(factory: &dyn StorageFactory) {
    let storage = factory.open().await;
    let entries: Vec<Bytes> = (0..13).map(entry).collect();
    storage.append(&entries).await.unwrap();
    let lease = storage.acquire_lease("i", Duration::from_secs(60)).await.unwrap();
    let mut edge = RightEdge::default();
    let mut all = Vec::new();
    for (from, to) in [(0u64, 5u64), (5, 6), (6, 13)] {
        let mut hashes = Vec::new();
        for e in &entries[from as usize..to as usize] {
            edge.push(leaf_hash(e), |h| hashes.push(*h));
        }
        assert!(storage.append_hashes(&lease, from + 1, to, &hashes).await.is_err());
        assert!(storage.append_hashes(&lease, from, to, &hashes[1..]).await.is_err());
        storage.append_hashes(&lease, from, to, &hashes).await.unwrap();
        all.extend(hashes);
        assert_eq!(storage.state().await.unwrap().integrated_size, to);
        if to == 6 {
            storage.store_checkpoint(&lease, 6, b"six\n").await.unwrap();
        }
    }
    assert!(storage.append_hashes(&lease, 13, 14, &[leaf_hash(b"x")]).await.is_err());
    let indexes: Vec<u64> = vec![0, 1, 2, all.len() as u64 - 1, 7];
    let got = storage.read_hashes(&indexes).await.unwrap();
    for (i, h) in indexes.iter().zip(got) {
        assert_eq!(all[*i as usize], h);
    }
    assert!(storage.read_hashes(&[all.len() as u64]).await.is_err());
    assert_eq!(
        storage.store_checkpoint(&lease, 14, b"x\n").await.unwrap_err().code(),
        ErrorCode::FailedPrecondition
    );
    assert_eq!(storage.store_checkpoint(&lease, 5, b"x\n").await.unwrap_err().code(), ErrorCode::Conflict);
    storage.store_checkpoint(&lease, 13, b"thirteen\n").await.unwrap();
    let cps = storage.checkpoints(0, 10).await.unwrap();
    assert_eq!(cps.iter().map(|c| c.size).collect::<Vec<_>>(), [6, 13]);
    assert_eq!(cps[1].note, Bytes::from_static(b"thirteen\n"));
    assert_eq!(storage.checkpoints(7, 10).await.unwrap().len(), 1);
    assert_eq!(storage.latest_checkpoint().await.unwrap().unwrap().size, 13);
}

/// Pruning replaces entries by tombstones that keep their leaf hashes, only below the latest
/// checkpoint; the stored hashes do not change; a second pruning keeps the first tombstone;
/// `read_entries` refuses a pruned entry.
pub async fn pruning_keeps_leaf_hashes(factory: &dyn StorageFactory) {
    let storage = factory.open().await;
    let entries: Vec<Bytes> = (0..20).map(entry).collect();
    storage.append(&entries[..10]).await.unwrap();
    storage.append(&entries[10..]).await.unwrap();
    let lease = storage.acquire_lease("i", Duration::from_secs(60)).await.unwrap();
    let mut edge = RightEdge::default();
    let mut hashes = Vec::new();
    for e in &entries[..16] {
        edge.push(leaf_hash(e), |h| hashes.push(*h));
    }
    storage.append_hashes(&lease, 0, 16, &hashes).await.unwrap();
    let request = |indexes: &'static [u64], rule: &'static str| PruneRequest {
        indexes,
        pruned_at_ms: 42,
        rule,
        event_index: 19,
    };
    // Nothing is covered by a checkpoint yet.
    assert_eq!(storage.prune(request(&[1], "r")).await.unwrap_err().code(), ErrorCode::FailedPrecondition);
    storage.store_checkpoint(&lease, 16, b"sixteen\n").await.unwrap();
    assert_eq!(
        storage.prune(request(&[3, 16], "r")).await.unwrap_err().code(),
        ErrorCode::FailedPrecondition
    );
    assert_eq!(storage.prune(request(&[4, 3], "r")).await.unwrap_err().code(), ErrorCode::InvalidArgument);
    assert_eq!(storage.prune(request(&[0, 9, 10, 15], "first")).await.unwrap(), 4);
    assert_eq!(storage.prune(request(&[9, 11], "second")).await.unwrap(), 1);
    let mut leaves = Vec::new();
    while (leaves.len() as u64) < 20 {
        leaves.extend(storage.read_leaves(leaves.len() as u64, 20).await.unwrap());
    }
    for (i, leaf) in leaves.iter().enumerate() {
        assert_eq!(leaf.hash(), leaf_hash(&entries[i]), "leaf {i}");
        match (i, leaf) {
            (0 | 9 | 10 | 15, Leaf::Pruned(t)) => {
                assert_eq!((t.rule.as_str(), t.pruned_at_ms, t.event_index), ("first", 42, 19), "{i}")
            }
            (11, Leaf::Pruned(t)) => assert_eq!(t.rule, "second"),
            (_, Leaf::Entry(bytes)) => assert_eq!(*bytes, entries[i], "{i}"),
            (_, Leaf::Pruned(_)) => panic!("entry {i} was pruned"),
        }
    }
    assert_eq!(storage.read_entries(9, 10).await.unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(storage.read_entries(12, 15).await.unwrap(), entries[12..15]);
    let all: Vec<u64> = (0..hashes.len() as u64).collect();
    assert_eq!(storage.read_hashes(&all).await.unwrap(), hashes);
    // Appends go on after a pruning.
    assert_eq!(storage.append(&[entry(20)]).await.unwrap(), 20);
    assert_eq!(storage.read_entries(20, 21).await.unwrap(), [entry(20)]);
}

/// Expands to one test per check of the suite, each opening storage with `$factory`.
#[macro_export]
macro_rules! log_storage_conformance {
    ($factory:expr) => {
        $crate::log_storage_conformance!(@tests $factory;
            appends_and_reads, concurrent_appends_are_sequenced, the_lease_is_exclusive,
            hashes_and_checkpoints, pruning_keeps_leaf_hashes);
    };
    (@tests $factory:expr; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let factory = $factory;
                $crate::conformance::$check(&factory).await;
            }
        )*
    };
}
