//! The conformance suite of the [`StateStore`] contract.
//!
//! Every backend runs the same checks in its own tests, with a factory that opens a fresh,
//! empty store with the given [`StateStoreOptions`]:
//!
//! ```text
//! aesp_core::state_store_conformance!(|options| async move {
//!     std::sync::Arc::new(aesp_core::MemoryStore::new(options)) as std::sync::Arc<dyn aesp_core::StateStore>
//! });
//! ```
//!
//! The macro expands to one `#[tokio::test]` per check (so a failure names the check); each
//! check is also a public function taking a [`StoreFactory`]. Checks panic on failure, as
//! tests do.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test suite"
)]

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use futures_util::StreamExt as _;

use super::{
    EventKind, RangeRequest, Revision, StateStore, StateStoreExt as _, StateStoreOptions, Txn, TxnOutcome,
    WatchEvent, WatchStream,
};
use crate::error::ErrorCode;

/// Opens a fresh, empty store.
pub trait StoreFactory: Send + Sync {
    /// Opens a fresh, empty store with `options`.
    fn open(
        &self,
        options: StateStoreOptions,
    ) -> Pin<Box<dyn Future<Output = Arc<dyn StateStore>> + Send + '_>>;
}

impl<F, Fut> StoreFactory for F
where
    F: Fn(StateStoreOptions) -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn StateStore>> + Send + 'static,
{
    fn open(
        &self,
        options: StateStoreOptions,
    ) -> Pin<Box<dyn Future<Output = Arc<dyn StateStore>> + Send + '_>> {
        Box::pin(self(options))
    }
}

/// How long a check waits for a watch event that must arrive.
const WAIT: Duration = Duration::from_secs(10);

async fn open(factory: &dyn StoreFactory) -> Arc<dyn StateStore> {
    factory.open(StateStoreOptions::default()).await
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a watch event within the wait")
        .expect("the watch stream to go on")
        .expect("a watch event, not an error")
}

async fn assert_no_event(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(50), stream.next()).await {
        panic!("no watch event was expected, got {item:?}");
    }
}

/// Puts, gets and deletes: revisions advance by one per commit; `create_revision`,
/// `mod_revision` and `version` follow the key's life.
pub async fn basic_reads_and_writes(factory: &dyn StoreFactory) {
    let store = open(factory).await;
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.get(b"t/a").await.unwrap(), None);

    let r1 = store.put(b"t/a", b"one").await.unwrap();
    assert_eq!(r1, 1);
    let kv = store.get(b"t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision, kv.version),
        (&b"one"[..], 1, 1, 1)
    );

    let r2 = store.put(b"t/a", b"two").await.unwrap();
    assert_eq!(r2, 2);
    let kv = store.get(b"t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision, kv.version),
        (&b"two"[..], 1, 2, 2)
    );

    assert_eq!(store.delete(b"t/a").await.unwrap(), 3);
    assert_eq!(store.get(b"t/a").await.unwrap(), None);
    // Deleting what does not exist changes nothing and does not advance the revision.
    assert_eq!(store.delete(b"t/a").await.unwrap(), 3);
    assert_eq!(store.delete(b"t/never").await.unwrap(), 3);
    assert_eq!(store.current_revision().await.unwrap(), 3);

    // Re-created: a new life.
    assert_eq!(store.put(b"t/a", b"three").await.unwrap(), 4);
    let kv = store.get(b"t/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (4, 4, 1));

    // Empty values and binary keys are fine.
    store.put(b"t/\x00\xff", b"").await.unwrap();
    assert_eq!(store.get(b"t/\x00\xff").await.unwrap().unwrap().value, b"");
}

/// Transactions: compares that hold apply every operation at one revision; a compare that
/// fails applies nothing, says which compare failed, and does not advance the revision.
pub async fn transactions_are_atomic(factory: &dyn StoreFactory) {
    let store = open(factory).await;
    let r1 = store.put(b"t/x", b"1").await.unwrap();

    // Passing compares: absent and at-revision; all ops at one new revision.
    let outcome = store
        .txn(
            Txn::new()
                .if_absent(b"t/y")
                .if_revision(b"t/x", r1)
                .put(b"t/y", b"y")
                .put(b"t/x", b"2")
                .delete(b"t/z"),
        )
        .await
        .unwrap();
    assert_eq!(outcome, TxnOutcome::Committed { revision: 2 });
    for key in [&b"t/x"[..], b"t/y"] {
        assert_eq!(store.get(key).await.unwrap().unwrap().mod_revision, 2);
    }

    // The second compare fails: nothing is applied.
    let outcome = store
        .txn(Txn::new().if_revision(b"t/x", 2).if_absent(b"t/y").put(b"t/x", b"3").put(b"t/w", b"w"))
        .await
        .unwrap();
    assert_eq!(outcome, TxnOutcome::CompareFailed { index: 1, actual: Some(2), revision: 2 });
    assert_eq!(store.get(b"t/x").await.unwrap().unwrap().value, b"2");
    assert_eq!(store.get(b"t/w").await.unwrap(), None);
    assert_eq!(store.current_revision().await.unwrap(), 2);

    // A stale revision fails; a compare on an absent key reports it absent.
    let outcome = store.compare_and_set(b"t/x", Some(r1), b"stale").await.unwrap();
    assert_eq!(outcome, TxnOutcome::CompareFailed { index: 0, actual: Some(2), revision: 2 });
    let outcome = store.compare_and_set(b"t/nope", Some(1), b"v").await.unwrap();
    assert_eq!(outcome, TxnOutcome::CompareFailed { index: 0, actual: None, revision: 2 });
    let outcome = store.compare_and_set(b"t/x", None, b"v").await.unwrap();
    assert!(!outcome.committed());
    let outcome = store.compare_and_set(b"t/x", Some(2), b"3").await.unwrap();
    assert_eq!(outcome.revision(), Some(3));

    // A deleted key is absent for compares.
    store.delete(b"t/y").await.unwrap();
    assert!(store.compare_and_set(b"t/y", None, b"again").await.unwrap().committed());

    // Compares only: committed without a new revision.
    let now = store.current_revision().await.unwrap();
    let outcome = store.txn(Txn::new().if_absent(b"t/q")).await.unwrap();
    assert_eq!(outcome, TxnOutcome::Committed { revision: now });
}

/// Invalid transactions and reads are refused with `INVALID_ARGUMENT` and change nothing.
pub async fn limits_are_enforced(factory: &dyn StoreFactory) {
    let store = open(factory).await;
    let invalid = [
        Txn::new().put(b"".to_vec(), b"v".to_vec()),
        Txn::new().put(vec![b'k'; super::MAX_KEY_LEN + 1], b"v".to_vec()),
        Txn::new().put(b"t/k".to_vec(), vec![0; super::MAX_VALUE_LEN + 1]),
        Txn::new().put(b"t/k".to_vec(), b"1".to_vec()).put(b"t/k".to_vec(), b"2".to_vec()),
        Txn::new().if_absent(b"".to_vec()).put(b"t/k".to_vec(), b"1".to_vec()),
        (0..=super::MAX_TXN_OPS).fold(Txn::new(), |t, i| t.put(format!("t/{i}"), "v")),
    ];
    for txn in invalid {
        let error = store.txn(txn).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
    }
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.get(b"t/k").await.unwrap(), None);
    assert_eq!(store.get(b"").await.unwrap_err().code(), ErrorCode::InvalidArgument);
    let error = store.range(RangeRequest::prefix("t/").limit(super::MAX_RANGE_LIMIT + 1)).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidArgument);
    let error = store.range(RangeRequest::prefix("t/").at(5)).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidArgument, "a future revision");
    let error = store.compact(5).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidArgument, "compacting past the current revision");
}

/// Prefix scans: byte order, exact prefix boundaries, paging with a cursor at a fixed
/// revision that later writes do not disturb.
pub async fn scans_page_at_a_fixed_revision(factory: &dyn StoreFactory) {
    let store = open(factory).await;
    let mut txn = Txn::new();
    for i in 0..25 {
        txn = txn.put(format!("t/a/{i:02}"), format!("v{i}"));
    }
    // Neighbours that a prefix scan of `t/a/` must not include.
    txn = txn.put("t/a", "parent").put("t/a0", "sibling").put("t/b/00", "other").put("s/a/00", "before");
    let r = store.txn(txn).await.unwrap().revision().unwrap();

    let first = store.range(RangeRequest::prefix("t/a/").limit(10)).await.unwrap();
    assert_eq!(first.revision, r);
    assert_eq!(first.kvs.len(), 10);
    assert_eq!(first.kvs[0].key, b"t/a/00");
    assert_eq!(first.next_cursor.as_deref(), Some(&b"t/a/09"[..]));

    // Writes after the first page: the rest of the scan still sees revision `r`.
    store
        .txn(Txn::new().delete("t/a/15").put("t/a/10", "changed").put("t/a/100", "new").put("t/a/05x", "new"))
        .await
        .unwrap()
        .revision()
        .expect("an unconditional transaction commits");

    let mut keys: Vec<Vec<u8>> = first.kvs.iter().map(|kv| kv.key.clone()).collect();
    let request = RangeRequest::prefix("t/a/").limit(10);
    let mut page = first;
    while let Some(next) = request.after(&page) {
        page = store.range(next).await.unwrap();
        assert_eq!(page.revision, r);
        assert!(page.kvs.len() <= 10);
        for kv in &page.kvs {
            assert_eq!(kv.mod_revision, r, "a value from after the scan's revision");
        }
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
    }
    let expected: Vec<Vec<u8>> = (0..25).map(|i| format!("t/a/{i:02}").into_bytes()).collect();
    assert_eq!(keys, expected, "every key once, in order, as of revision {r}");

    // The current revision sees the changes.
    let now = store.scan_all(b"t/a/", 1000).await.unwrap();
    assert_eq!(now.kvs.len(), 26);
    assert!(now.kvs.iter().any(|kv| kv.key == b"t/a/100"));
    assert!(!now.kvs.iter().any(|kv| kv.key == b"t/a/15"));
    assert_eq!(now.kvs.iter().find(|kv| kv.key == b"t/a/10").unwrap().value, b"changed");

    // An exact page boundary: no empty extra page is promised, but none may hold keys twice.
    let all = store.range(RangeRequest::prefix("t/a/").limit(26)).await.unwrap();
    assert_eq!(all.kvs.len(), 26);
    if let Some(next) = RangeRequest::prefix("t/a/").limit(26).after(&all) {
        assert!(store.range(next).await.unwrap().kvs.is_empty());
    }

    // The empty prefix is every key; a prefix with no keys is an empty last page.
    let everything = store.scan_all(b"", 1000).await.unwrap();
    assert_eq!(everything.kvs.first().unwrap().key, b"s/a/00");
    let none = store.range(RangeRequest::prefix("zzz/")).await.unwrap();
    assert!(none.kvs.is_empty() && none.next_cursor.is_none());
}

/// Watches deliver history from the requested revision and then live changes, in revision
/// order, filtered by prefix, with the operations of one transaction in order.
pub async fn watch_delivers_in_order(factory: &dyn StoreFactory) {
    let store = open(factory).await;
    store.put(b"t/a", b"1").await.unwrap(); // 1
    store.put(b"u/a", b"other prefix").await.unwrap(); // 2
    let r3 = store.txn(Txn::new().put("t/b", "2").put("t/a", "3").delete("t/none")).await.unwrap();
    assert_eq!(r3.revision(), Some(3));
    store.delete(b"t/b").await.unwrap(); // 4

    let mut stream = store.watch(b"t/", 1).await.unwrap();
    let seen: Vec<(EventKind, Vec<u8>, Revision)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let e = next_event(&mut stream).await;
            v.push((e.kind, e.kv.key.clone(), e.revision()));
        }
        v
    };
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, b"t/a".to_vec(), 1),
            (EventKind::Put, b"t/b".to_vec(), 3),
            (EventKind::Put, b"t/a".to_vec(), 3),
            (EventKind::Delete, b"t/b".to_vec(), 4),
        ]
    );
    assert_no_event(&mut stream).await;

    // Live changes, including values and versions.
    let r = store.put(b"t/c", b"live").await.unwrap();
    store.put(b"u/c", b"not mine").await.unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!(
        (e.kind, e.kv.key.as_slice(), e.kv.value.as_slice(), e.revision()),
        (EventKind::Put, &b"t/c"[..], &b"live"[..], r)
    );
    assert_eq!((e.kv.create_revision, e.kv.version), (r, 1));
    assert_no_event(&mut stream).await;

    // A watch from the future waits for it.
    let now = store.current_revision().await.unwrap();
    let mut future = store.watch(b"t/", now + 2).await.unwrap();
    store.put(b"t/d", b"skipped").await.unwrap();
    store.put(b"t/e", b"seen").await.unwrap();
    assert_eq!(next_event(&mut future).await.kv.key, b"t/e");
}

/// A watcher that stops and resumes from the revision after the last event it saw misses
/// nothing and sees nothing twice; a watcher that follows a read sees every later change.
pub async fn watch_resumes_without_gaps(factory: &dyn StoreFactory) {
    let store = open(factory).await;
    for i in 0..10 {
        store.put(format!("t/{i}").as_bytes(), b"v").await.unwrap();
    }
    let mut stream = store.watch(b"t/", 1).await.unwrap();
    let mut last = 0;
    for _ in 0..4 {
        last = next_event(&mut stream).await.revision();
    }
    drop(stream);
    for i in 10..15 {
        store.put(format!("t/{i}").as_bytes(), b"v").await.unwrap();
    }
    let mut resumed = store.watch(b"t/", last + 1).await.unwrap();
    let mut revisions = vec![];
    for _ in 0..11 {
        revisions.push(next_event(&mut resumed).await.revision());
    }
    assert_eq!(revisions, (5..=15).collect::<Vec<_>>());

    // Read, then watch from the read's revision + 1.
    let page = store.range(RangeRequest::prefix("t/")).await.unwrap();
    let mut follow = store.watch(b"t/", page.revision + 1).await.unwrap();
    store.put(b"t/new", b"v").await.unwrap();
    assert_eq!(next_event(&mut follow).await.kv.key, b"t/new");
}

/// A watch of a quiet prefix in a busy store still delivers its changes at once: history of
/// other prefixes, however long, is skipped without waiting for another commit.
pub async fn watch_skips_unrelated_history(factory: &dyn StoreFactory) {
    let store = factory.open(StateStoreOptions::with_history_revisions(100_000)).await;
    let mut txn_count = 0;
    for i in 0..600 {
        store.put(format!("u/{i}").as_bytes(), b"noise").await.unwrap();
        txn_count += 1;
    }
    store.put(b"t/signal", b"x").await.unwrap();
    let mut stream = store.watch(b"t/", 1).await.unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!((event.kv.key.as_slice(), event.revision()), (&b"t/signal"[..], txn_count + 1));
}

/// Compaction: reads and watches before the compacted revision fail with
/// `REVISION_COMPACTED` naming the oldest revision kept; from it on, they work.
pub async fn compaction_is_a_distinct_error(factory: &dyn StoreFactory) {
    let store = open(factory).await;
    for i in 0..10u8 {
        store.put(b"t/k", &[i]).await.unwrap();
    }
    store.put(b"t/gone", b"x").await.unwrap(); // 11
    store.delete(b"t/gone").await.unwrap(); // 12
    store.compact(8).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 8);

    let error = store.range(RangeRequest::prefix("t/").at(7)).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::RevisionCompacted);
    assert_eq!(error.compacted_revision(), Some(8));
    let error = store.watch(b"t/", 7).await.err().expect("watching from a compacted revision fails");
    assert_eq!(error.code(), ErrorCode::RevisionCompacted);
    assert_eq!(error.compacted_revision(), Some(8));

    // The state at the compacted revision itself is intact.
    let page = store.range(RangeRequest::prefix("t/").at(8)).await.unwrap();
    assert_eq!(page.kvs.len(), 1);
    assert_eq!(page.kvs[0].value, [7]);
    assert_eq!(page.kvs[0].version, 8);
    let page = store.range(RangeRequest::prefix("t/").at(11)).await.unwrap();
    assert_eq!(page.kvs.len(), 2);
    let mut stream = store.watch(b"t/", 8).await.unwrap();
    assert_eq!(next_event(&mut stream).await.revision(), 8);

    // Compacting backwards or to the same revision does nothing.
    store.compact(3).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 8);
    // The latest state never depends on history.
    store.compact(12).await.unwrap();
    assert_eq!(store.get(b"t/k").await.unwrap().unwrap().value, [9]);
    assert_eq!(store.get(b"t/gone").await.unwrap(), None);
    assert_eq!(store.scan_all(b"t/", 10).await.unwrap().kvs.len(), 1);
}

/// The history window: at least `history_revisions` recent revisions stay readable; older
/// ones are compacted automatically; a watcher that falls behind the window gets
/// `REVISION_COMPACTED` and never a gap.
pub async fn history_window_compacts(factory: &dyn StoreFactory) {
    let store = factory.open(StateStoreOptions::with_history_revisions(5)).await;
    let mut lagging = store.watch(b"t/", 1).await.unwrap();
    for i in 0..100u32 {
        store.put(b"t/k", &i.to_be_bytes()).await.unwrap();
        let now = store.current_revision().await.unwrap();
        // The last five revisions are always readable.
        let oldest_needed = now.saturating_sub(4).max(1);
        store.range(RangeRequest::prefix("t/").at(oldest_needed)).await.unwrap();
    }
    let compacted = store.compacted_revision().await.unwrap();
    assert!(compacted > 1 && compacted <= 96, "history was compacted to {compacted}");
    let error = store.range(RangeRequest::prefix("t/").at(1)).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::RevisionCompacted);

    // The lagging watcher: contiguous revisions from 1, then the compaction error, then the end.
    let mut expected = 1;
    loop {
        match tokio::time::timeout(WAIT, lagging.next()).await.expect("the lagging watcher to answer") {
            Some(Ok(event)) => {
                assert_eq!(event.revision(), expected, "a gap in the watch");
                expected += 1;
            }
            Some(Err(error)) => {
                assert_eq!(error.code(), ErrorCode::RevisionCompacted);
                assert!(error.compacted_revision().unwrap() > expected);
                break;
            }
            None => panic!("the stream ended without saying it lost history"),
        }
    }
    assert!(lagging.next().await.is_none(), "the stream ends after the compaction error");
}

/// Concurrent writers doing compare-and-set on one counter never lose an update; every
/// commit has its own revision and a watcher sees each exactly once.
pub async fn concurrent_writers_serialise(factory: &dyn StoreFactory) {
    const WRITERS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let store = open(factory).await;
    store.put(b"t/counter", b"0").await.unwrap();
    let mut watch = store.watch(b"t/", 2).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..INCREMENTS {
                loop {
                    let kv = store.get(b"t/counter").await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    let txn = Txn::new()
                        .if_revision(b"t/counter", kv.mod_revision)
                        .put(b"t/counter", (n + 1).to_string())
                        .put(format!("t/log/{w}/{i}"), n.to_string());
                    if let TxnOutcome::Committed { revision } = store.txn(txn).await.unwrap() {
                        committed.push(revision);
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            committed
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.extend(task.await.unwrap());
    }
    let total = WRITERS * INCREMENTS;
    let counter = store.get(b"t/counter").await.unwrap().unwrap();
    assert_eq!(counter.value, total.to_string().as_bytes());
    revisions.sort_unstable();
    assert_eq!(revisions, (2..2 + total).collect::<Vec<_>>(), "one revision per commit, no gaps");
    // Each increment observed a distinct counter value.
    let log = store.scan_all(b"t/log/", 10_000).await.unwrap();
    let mut observed: Vec<u64> =
        log.kvs.iter().map(|kv| std::str::from_utf8(&kv.value).unwrap().parse().unwrap()).collect();
    observed.sort_unstable();
    assert_eq!(observed, (0..total).collect::<Vec<_>>());
    // The watcher sees 2 events per commit, in revision order.
    let mut per_revision: BTreeMap<Revision, usize> = BTreeMap::new();
    let mut last = 0;
    for _ in 0..total * 2 {
        let e = next_event(&mut watch).await;
        assert!(e.revision() >= last);
        last = e.revision();
        *per_revision.entry(e.revision()).or_default() += 1;
    }
    assert!(per_revision.values().all(|&n| n == 2));
    assert_eq!(per_revision.len() as u64, total);
}

/// Runs every check, each on a fresh store.
pub async fn run_all(factory: &dyn StoreFactory) {
    basic_reads_and_writes(factory).await;
    transactions_are_atomic(factory).await;
    limits_are_enforced(factory).await;
    scans_page_at_a_fixed_revision(factory).await;
    watch_delivers_in_order(factory).await;
    watch_resumes_without_gaps(factory).await;
    watch_skips_unrelated_history(factory).await;
    compaction_is_a_distinct_error(factory).await;
    history_window_compacts(factory).await;
    concurrent_writers_serialise(factory).await;
}

/// Expands to one `#[tokio::test]` per conformance check, each calling `$factory` (an
/// expression of a type implementing [`StoreFactory`], such as an async closure taking
/// [`StateStoreOptions`]) for fresh stores. The calling crate needs `tokio` with the
/// `macros` and `rt-multi-thread` features among its dev-dependencies.
#[macro_export]
macro_rules! state_store_conformance {
    ($factory:expr) => {
        $crate::state_store_conformance!(@tests $factory;
            basic_reads_and_writes, transactions_are_atomic, limits_are_enforced,
            scans_page_at_a_fixed_revision, watch_delivers_in_order, watch_resumes_without_gaps,
            watch_skips_unrelated_history, compaction_is_a_distinct_error, history_window_compacts, concurrent_writers_serialise);
    };
    (@tests $factory:expr; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let factory = $factory;
                $crate::state::conformance::$check(&factory).await;
            }
        )*
    };
}
