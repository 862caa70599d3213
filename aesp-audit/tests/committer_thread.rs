//! The committer's own thread: a log on storage that appends by blocking (segment files)
//! commits on a thread, which ends when the log is dropped; a log on other storage (memory)
//! commits as a task and starts no thread. Alone in its binary: it counts this process's
//! threads by name.
#![expect(clippy::unwrap_used, reason = "test helpers fail by panicking")]

mod common;

use std::{sync::Arc, time::Duration};

use aesp_audit::{FaultyFileSystem, LogStorage, MemoryStorage, SegmentOptions, SegmentStorage};
use bytes::Bytes;
use common::{open_log, signer};

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
