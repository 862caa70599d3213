//! The committer's own thread: a log on storage that appends by blocking (segment files)
//! commits on a thread, which ends when the log is dropped; a log on other storage (memory)
//! commits as a task and starts no thread. Alone in its binary: it counts this process's
//! threads by name, so its tests take turns.
#![expect(clippy::unwrap_used, reason = "test helpers fail by panicking")]

mod common;

use std::{sync::Arc, time::Duration};

use aesp_audit::{FaultyFileSystem, LogStorage, MemoryStorage, SegmentOptions, SegmentStorage};
use bytes::Bytes;
use common::{open_log, signer};

/// Held by each test for its whole run: they count the process's committer threads.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The threads of this process named like the committer's (names are cut to 15 bytes).
fn committer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "aesp-audit-comm")
        .count()
}

/// Whether the count of committer threads comes to `n` within five seconds (a thread names
/// itself once it runs, and ends some time after its log is dropped).
async fn eventually_committer_threads(n: usize) -> bool {
    for _ in 0..200 {
        if committer_threads() == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_storage_commits_on_a_thread_that_ends_with_the_log() {
    let _serial = SERIAL.lock().await;
    let key = signer(1, "k");
    assert_eq!(committer_threads(), 0);

    let fs = FaultyFileSystem::new();
    let storage: Arc<dyn LogStorage> =
        Arc::new(SegmentStorage::open(Arc::new(fs.clone()), SegmentOptions::default()).await.unwrap());
    assert!(storage.blocking_appender().is_some());
    let log = open_log(Arc::clone(&storage), &key).await;
    assert!(eventually_committer_threads(1).await, "no committer thread");
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for s in 0..20u8 {
                log.append_encoded(vec![Bytes::from(vec![t, s])]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = log.commit_stats();
    assert_eq!((stats.entries, stats.failed), (160, 0));
    assert_eq!(log.checkpoint().await.unwrap().checkpoint().size, 160);
    drop(log);
    assert!(eventually_committer_threads(0).await, "the committer's thread outlived its log");

    // Memory storage has no blocking appends: its log commits as a task.
    let memory: Arc<dyn LogStorage> = Arc::new(MemoryStorage::default());
    assert!(memory.blocking_appender().is_none());
    let log = open_log(memory, &key).await;
    assert_eq!(log.append_encoded(vec![Bytes::from_static(b"m")]).await.unwrap(), 0..1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(committer_threads(), 0);
}

/// Memory storage offering blocking appends that panic: its log's committer thread dies at its
/// first group.
#[derive(Debug, Default)]
struct DyingStorage(MemoryStorage);

#[derive(Debug)]
struct Dying;

impl aesp_audit::BlockingAppend for Dying {
    #[expect(clippy::panic, reason = "the failure under test: a committer that dies")]
    fn append_blocking(&self, _: &[Bytes]) -> aesp_core::Result<u64> {
        panic!("the committer's storage gave way");
    }
}

#[async_trait::async_trait]
impl LogStorage for DyingStorage {
    async fn append(&self, entries: &[Bytes]) -> aesp_core::Result<u64> {
        self.0.append(entries).await
    }
    fn blocking_appender(&self) -> Option<Arc<dyn aesp_audit::BlockingAppend>> {
        Some(Arc::new(Dying))
    }
    async fn state(&self) -> aesp_core::Result<aesp_audit::StorageState> {
        self.0.state().await
    }
    async fn read_leaves(&self, start: u64, end: u64) -> aesp_core::Result<Vec<aesp_audit::Leaf>> {
        self.0.read_leaves(start, end).await
    }
    async fn prune(&self, request: aesp_audit::PruneRequest<'_>) -> aesp_core::Result<u64> {
        self.0.prune(request).await
    }
    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> aesp_core::Result<aesp_audit::Lease> {
        self.0.acquire_lease(holder, ttl).await
    }
    async fn release_lease(&self, lease: &aesp_audit::Lease) -> aesp_core::Result<()> {
        self.0.release_lease(lease).await
    }
    async fn append_hashes(
        &self,
        lease: &aesp_audit::Lease,
        from: u64,
        to: u64,
        hashes: &[aesp_audit::Hash],
    ) -> aesp_core::Result<()> {
        self.0.append_hashes(lease, from, to, hashes).await
    }
    async fn read_hashes(&self, indexes: &[u64]) -> aesp_core::Result<Vec<aesp_audit::Hash>> {
        self.0.read_hashes(indexes).await
    }
    async fn store_checkpoint(
        &self,
        lease: &aesp_audit::Lease,
        size: u64,
        note: &[u8],
    ) -> aesp_core::Result<()> {
        self.0.store_checkpoint(lease, size, note).await
    }
    async fn checkpoints(
        &self,
        from_size: u64,
        limit: usize,
    ) -> aesp_core::Result<Vec<aesp_audit::StoredCheckpoint>> {
        self.0.checkpoints(from_size, limit).await
    }
    async fn latest_checkpoint(&self) -> aesp_core::Result<Option<aesp_audit::StoredCheckpoint>> {
        self.0.latest_checkpoint().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_rather_than_wait_when_the_committer_dies() {
    let _serial = SERIAL.lock().await;
    let log = open_log(Arc::new(DyingStorage::default()), &signer(1, "k")).await;
    let appends: Vec<_> = (0..4u8)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.append_encoded(vec![Bytes::from(vec![n])]).await })
        })
        .collect();
    for append in appends {
        let outcome = tokio::time::timeout(Duration::from_secs(10), append).await;
        let error = outcome.expect("an append waited on a dead committer").unwrap().unwrap_err();
        assert_eq!(error.code(), aesp_core::ErrorCode::ServiceUnavailable, "{error}");
    }
    // And so does every append after it, at once.
    let later =
        tokio::time::timeout(Duration::from_secs(10), log.append_encoded(vec![Bytes::from_static(b"x")]));
    let error = later.await.expect("an append waited on a dead committer").unwrap_err();
    assert_eq!(error.code(), aesp_core::ErrorCode::ServiceUnavailable, "{error}");
    assert!(eventually_committer_threads(0).await);
}
