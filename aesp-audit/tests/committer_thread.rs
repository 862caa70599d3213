//! The committer's own thread: a log on storage that appends by blocking (segment files)
//! commits on a thread, which ends when the log is dropped, pacing its group commits under
//! load; a log on other storage (memory) commits as a task and starts no thread. Alone in its binary: it counts this process's
//! threads by name, so its tests take turns.
#![expect(clippy::unwrap_used, reason = "test helpers fail by panicking")]

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aesp_audit::{
    AuditLog, BlockingAppend, FaultyFileSystem, LogStorage, MemoryStorage, SegmentOptions, SegmentStorage,
};
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

/// Storage that appends by blocking through `appender`, and forwards everything else.
#[derive(Debug)]
struct WithAppender {
    storage: Arc<dyn LogStorage>,
    appender: Arc<dyn BlockingAppend>,
}

/// Blocking appends that panic: a log's committer thread dies at its first group.
#[derive(Debug)]
struct Dying;

impl BlockingAppend for Dying {
    #[expect(clippy::panic, reason = "the failure under test: a committer that dies")]
    fn append_blocking(&self, _: &[Bytes]) -> aesp_core::Result<u64> {
        panic!("the committer's storage gave way");
    }
}

/// Blocking appends through `inner`, each one's start noted.
#[derive(Debug)]
struct Timed {
    inner: Arc<dyn BlockingAppend>,
    starts: Mutex<Vec<Instant>>,
}

impl BlockingAppend for Timed {
    fn append_blocking(&self, entries: &[Bytes]) -> aesp_core::Result<u64> {
        self.starts.lock().unwrap().push(Instant::now());
        self.inner.append_blocking(entries)
    }
}

#[async_trait::async_trait]
impl LogStorage for WithAppender {
    async fn append(&self, entries: &[Bytes]) -> aesp_core::Result<u64> {
        self.storage.append(entries).await
    }
    fn blocking_appender(&self) -> Option<Arc<dyn BlockingAppend>> {
        Some(Arc::clone(&self.appender))
    }
    async fn state(&self) -> aesp_core::Result<aesp_audit::StorageState> {
        self.storage.state().await
    }
    async fn read_leaves(&self, start: u64, end: u64) -> aesp_core::Result<Vec<aesp_audit::Leaf>> {
        self.storage.read_leaves(start, end).await
    }
    async fn prune(&self, request: aesp_audit::PruneRequest<'_>) -> aesp_core::Result<u64> {
        self.storage.prune(request).await
    }
    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> aesp_core::Result<aesp_audit::Lease> {
        self.storage.acquire_lease(holder, ttl).await
    }
    async fn release_lease(&self, lease: &aesp_audit::Lease) -> aesp_core::Result<()> {
        self.storage.release_lease(lease).await
    }
    async fn append_hashes(
        &self,
        lease: &aesp_audit::Lease,
        from: u64,
        to: u64,
        hashes: &[aesp_audit::Hash],
    ) -> aesp_core::Result<()> {
        self.storage.append_hashes(lease, from, to, hashes).await
    }
    async fn read_hashes(&self, indexes: &[u64]) -> aesp_core::Result<Vec<aesp_audit::Hash>> {
        self.storage.read_hashes(indexes).await
    }
    async fn store_checkpoint(
        &self,
        lease: &aesp_audit::Lease,
        size: u64,
        note: &[u8],
    ) -> aesp_core::Result<()> {
        self.storage.store_checkpoint(lease, size, note).await
    }
    async fn checkpoints(
        &self,
        from_size: u64,
        limit: usize,
    ) -> aesp_core::Result<Vec<aesp_audit::StoredCheckpoint>> {
        self.storage.checkpoints(from_size, limit).await
    }
    async fn latest_checkpoint(&self) -> aesp_core::Result<Option<aesp_audit::StoredCheckpoint>> {
        self.storage.latest_checkpoint().await
    }
}

/// Under load (tasks waiting in the runtime's global queue, its only worker busy) a group
/// commits no sooner than `commit_interval` after the one before started; with the pacing
/// off, at once. The second append is polled on the test's thread (`Runtime::block_on` runs
/// its future there), so it queues while the worker is held.
#[test]
fn under_load_group_commits_keep_the_commit_interval_apart() {
    for (interval, paced) in [(Duration::from_secs(1), true), (Duration::ZERO, false)] {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let serial = rt.block_on(SERIAL.lock());
        let segments =
            rt.block_on(SegmentStorage::open(Arc::new(FaultyFileSystem::new()), SegmentOptions::default()));
        let storage: Arc<dyn LogStorage> = Arc::new(segments.unwrap());
        let timed = Arc::new(Timed { inner: storage.blocking_appender().unwrap(), starts: Mutex::default() });
        let with_timed = Arc::new(WithAppender { storage, appender: Arc::clone(&timed) as _ });
        let mut options = common::options();
        options.commit_interval = interval;
        let log = rt.block_on(AuditLog::open(with_timed, signer(1, "k"), options)).unwrap();
        rt.block_on(log.append_one(Bytes::from_static(b"first"))).unwrap();

        // The worker held for 2.5 s, and tasks waiting behind it.
        let (started, worker_held) = std::sync::mpsc::channel();
        rt.spawn(async move {
            started.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(2500));
        });
        worker_held.recv().unwrap();
        for _ in 0..32 {
            rt.spawn(async {});
        }
        rt.block_on(log.append_one(Bytes::from_static(b"second"))).unwrap();

        let starts = timed.starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 2, "one group commit per append");
        let gap = starts[1] - starts[0];
        if paced {
            assert!(gap >= interval - Duration::from_millis(5), "paced at {interval:?}, yet {gap:?} apart");
        } else {
            assert!(gap < Duration::from_millis(900), "not paced, yet {gap:?} apart");
        }
        drop(log);
        assert!(rt.block_on(eventually_committer_threads(0)));
        drop(serial);
    }
}

#[test]
fn a_commit_interval_over_a_second_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut options = common::options();
    options.commit_interval = Duration::from_millis(1001);
    let opened = rt.block_on(AuditLog::open(Arc::new(MemoryStorage::default()), signer(1, "k"), options));
    assert_eq!(opened.unwrap_err().code(), aesp_core::ErrorCode::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_rather_than_wait_when_the_committer_dies() {
    let _serial = SERIAL.lock().await;
    let storage = WithAppender { storage: Arc::new(MemoryStorage::default()), appender: Arc::new(Dying) };
    let log = open_log(Arc::new(storage), &signer(1, "k")).await;
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
