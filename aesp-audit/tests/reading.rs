//! Reading the audit log: queries against a brute-force scan, paging while the log grows,
//! statistics, the index rebuilt from the log, live subscriptions that lag and resume, and
//! pruning that keeps every remaining proof and whole-log verification valid; also with an
//! index of the latest entries only, whose readers reach older ones through storage.
#![expect(clippy::unwrap_used, reason = "test helpers fail by panicking")]

mod common;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aesp_audit::{
    AuditFilter, AuditLog, AuditLogOptions, AuditQuery, CrashMode, EVENT_RETENTION_PRUNE, FaultyFileSystem,
    FileSystem, Leaf, LogStorage, MemoryStorage, PruneRequest, PruneRule, SegmentOptions, SegmentStorage,
    VerifyOptions, leaf_hash, verify_inclusion, verify_log,
};
use aesp_core::{ErrorCode, proto::v1::AuditEvent};
use common::{ORIGIN, Rng, open_log, signer};
use prost::Message as _;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const TYPES: [&str; 5] = [
    "TOOL_INVOCATION_START",
    "TOOL_INVOCATION_COMPLETE",
    "AUTHORIZATION_DENIED",
    "SESSION_CREATE",
    "POLICY_UPDATE",
];
const OUTCOMES: [&str; 4] = ["SUCCESS", "FAILURE", "DENIED", "ERROR"];
const RESOURCES: [&str; 4] = ["tool:refund", "tool:search", "policy:p1", "session"];
const BASE_MS: u64 = 1_800_000_000_000;

/// Event `i` of a random log: times rise by 10 ms per event with up to ±2 s of jitter, so
/// time ranges cut across blocks and the zone map has overlaps to cope with.
fn random_event(rng: &mut Rng, i: u64) -> AuditEvent {
    let jitter = rng.below(4000);
    AuditEvent {
        event_id: format!("e-{i:06}"),
        timestamp_ms: BASE_MS + i * 10 + jitter,
        event_type: rng.pick(&TYPES).to_owned(),
        principal_id: format!("p{}", rng.below(8)),
        tenant_id: rng.pick(&TENANTS).to_owned(),
        resource: rng.pick(&RESOURCES).to_owned(),
        action: if rng.below(2) == 0 { "invoke" } else { "update" }.to_owned(),
        outcome: rng.pick(&OUTCOMES).to_owned(),
        metadata: [("region".to_owned(), format!("r{}", rng.below(3)))].into(),
        policy_violations: if rng.below(10) == 0 { vec!["p1".into()] } else { Vec::new() },
        ..AuditEvent::default()
    }
}

/// Appends `n` random events in random batch sizes; returns them in log order.
async fn fill(log: &AuditLog, rng: &mut Rng, n: u64) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    let first = log.size();
    while (events.len() as u64) < n {
        let batch = (1 + rng.below(40)).min(n - events.len() as u64);
        let at = first + events.len() as u64;
        let new: Vec<AuditEvent> = (at..at + batch).map(|i| random_event(rng, i)).collect();
        let range = log.append_batch(&new).await.unwrap();
        assert_eq!(range.start, at);
        events.extend(new);
    }
    events
}

fn random_filter(rng: &mut Rng) -> AuditFilter {
    let mut f = AuditFilter::default();
    if rng.below(3) > 0 {
        f.tenant = Some(if rng.below(20) == 0 { "nobody" } else { rng.pick(&TENANTS) }.to_owned());
    }
    if rng.below(2) == 0 {
        f.start_ms = BASE_MS + rng.below(30_000);
    }
    if rng.below(2) == 0 {
        f.end_ms = Some(f.start_ms.max(BASE_MS) + rng.below(30_000));
    }
    for _ in 0..rng.below(3) {
        f.event_types.push(if rng.below(15) == 0 { "NO_SUCH_TYPE" } else { rng.pick(&TYPES) }.to_owned());
    }
    if rng.below(4) == 0 {
        f.principal = Some(format!("p{}", rng.below(9)));
    }
    if rng.below(4) == 0 {
        f.outcome = Some(rng.pick(&OUTCOMES).to_owned());
    }
    if rng.below(4) == 0 {
        f.resource = Some(rng.pick(&RESOURCES).to_owned());
    }
    if rng.below(6) == 0 {
        f.fields.insert("action".into(), "invoke".into());
    }
    if rng.below(6) == 0 {
        f.fields.insert("metadata.region".into(), format!("r{}", rng.below(3)));
    }
    f
}

/// Every page of `filter`, following cursors; checks each page's size bound.
async fn all_pages(log: &AuditLog, filter: &AuditFilter, limit: usize) -> Vec<(u64, AuditEvent)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = log.query(&AuditQuery { filter: filter.clone(), limit, cursor }).await.unwrap();
        assert!(page.events.len() <= limit.max(1));
        for e in page.events {
            assert_eq!(e.leaf, e.event.encode_to_vec());
            out.push((e.index, e.event));
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

fn brute_force(events: &[AuditEvent], filter: &AuditFilter) -> Vec<(u64, AuditEvent)> {
    (0u64..).zip(events).filter(|(_, e)| filter.matches(e)).map(|(i, e)| (i, e.clone())).collect()
}

async fn memory_log() -> AuditLog {
    open_log(Arc::new(MemoryStorage::default()), &signer(1, ORIGIN)).await
}

/// [`memory_log`] with an index of the latest 1,024 entries only.
async fn small_index_memory_log() -> AuditLog {
    AuditLog::open(Arc::new(MemoryStorage::default()), signer(1, ORIGIN), common::small_index())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_and_combination_matches_a_brute_force_scan() {
    matches_a_brute_force_scan(memory_log().await).await;
}

/// The same with an index of the latest 1,024 entries (of 3,000): most pages, statistics and
/// cursors reach below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_older_than_the_index_match_a_brute_force_scan() {
    let log = small_index_memory_log().await;
    matches_a_brute_force_scan(log).await;
}

#[expect(clippy::indexing_slicing, reason = "the body of tests: a bad index fails the test")]
async fn matches_a_brute_force_scan(log: AuditLog) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let events = fill(&log, &mut rng, 3000).await;
    for round in 0..150 {
        let filter = random_filter(&mut rng);
        let limit = [1, 7, 100, 1000][round % 4];
        let got = all_pages(&log, &filter, limit).await;
        let want = brute_force(&events, &filter);
        assert_eq!(got.len(), want.len(), "round {round}: {filter:?}");
        assert!(got == want, "round {round}: {filter:?}");
        if filter.fields.is_empty() {
            let stats = log.statistics(&filter).await.unwrap();
            assert_eq!(stats.total, want.len() as u64, "{filter:?}");
            let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
            let mut by_principal: BTreeMap<String, u64> = BTreeMap::new();
            for (_, e) in &want {
                *by_type.entry(e.event_type.clone()).or_default() += 1;
                *by_principal.entry(e.principal_id.clone()).or_default() += 1;
            }
            assert_eq!(stats.by_event_type, by_type);
            assert_eq!(stats.by_principal, by_principal);
            let violations = want.iter().filter(|(_, e)| !e.policy_violations.is_empty()).count();
            assert_eq!(stats.policy_violations, violations as u64);
            assert_eq!(stats.first_at_ms, want.iter().map(|(_, e)| e.timestamp_ms).min());
            assert_eq!(stats.last_at_ms, want.iter().map(|(_, e)| e.timestamp_ms).max());
        }
    }
    // Each filter alone, at least once, with results.
    for filter in [
        AuditFilter::tenant("acme"),
        AuditFilter { principal: Some("p3".into()), ..AuditFilter::default() },
        AuditFilter { outcome: Some("DENIED".into()), ..AuditFilter::default() },
        AuditFilter { resource: Some("tool:refund".into()), ..AuditFilter::default() },
        AuditFilter { event_types: vec!["SESSION_CREATE".into()], ..AuditFilter::default() },
        AuditFilter { start_ms: BASE_MS + 10_000, end_ms: Some(BASE_MS + 12_000), ..AuditFilter::default() },
    ] {
        let want = brute_force(&events, &filter);
        assert!(!want.is_empty(), "{filter:?}");
        assert_eq!(all_pages(&log, &filter, 50).await, want, "{filter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_neither_skips_nor_repeats_while_the_log_grows() {
    let log = memory_log().await;
    let mut rng = Rng(7);
    let mut events = fill(&log, &mut rng, 500).await;
    let filter = AuditFilter::tenant("acme");
    let first = log.query(&AuditQuery { filter: filter.clone(), limit: 20, cursor: None }).await.unwrap();
    let as_of = first.as_of;
    let mut got: Vec<u64> = first.events.iter().map(|e| e.index).collect();
    let mut cursor = first.next_cursor;
    while let Some(c) = cursor {
        // Matching events keep arriving between pages.
        events.extend(fill(&log, &mut rng, 30).await);
        let page =
            log.query(&AuditQuery { filter: filter.clone(), limit: 20, cursor: Some(c) }).await.unwrap();
        assert_eq!(page.as_of, as_of);
        got.extend(page.events.iter().map(|e| e.index));
        cursor = page.next_cursor;
    }
    let want: Vec<u64> =
        brute_force(&events[..as_of as usize], &filter).into_iter().map(|(i, _)| i).collect();
    assert_eq!(got, want);
    // A fresh query sees the new events.
    let now = all_pages(&log, &filter, 1000).await;
    assert_eq!(now.len(), brute_force(&events, &filter).len());
}

/// The first `n` events the writer appended, once it has recorded them (an append is durable,
/// and counted in a page's `as_of`, before the writer hears back).
async fn known(events: &std::sync::Mutex<Vec<AuditEvent>>, n: u64) -> Vec<AuditEvent> {
    for _ in 0..500 {
        if let Some(prefix) = events.lock().unwrap().get(..n as usize) {
            return prefix.to_vec();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recorded = events.lock().unwrap().len();
    assert!(recorded as u64 >= n, "the writer recorded {recorded} events of {n}");
    events.lock().unwrap().get(..n as usize).unwrap().to_vec()
}

/// With an index of 1,024 entries and appends arriving all the while, the index drops rows
/// under the pages and statistics reading them; each still answers exactly for its log size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_exact_while_appends_move_a_small_index_on() {
    let log = small_index_memory_log().await;
    let mut rng = Rng(21);
    let events = Arc::new(std::sync::Mutex::new(fill(&log, &mut rng, 2000).await));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (log, events, stop) = (log.clone(), Arc::clone(&events), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut rng = Rng(22);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let more = fill(&log, &mut rng, 50).await;
                events.lock().unwrap().extend(more);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for round in 0..20 {
        let filter = random_filter(&mut rng);
        let mut got = Vec::new();
        let mut cursor = None;
        let as_of = loop {
            let query = AuditQuery { filter: filter.clone(), limit: 50, cursor };
            let page = log.query(&query).await.unwrap();
            got.extend(page.events.into_iter().map(|e| (e.index, e.event)));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break page.as_of,
            }
        };
        let want = brute_force(&known(&events, as_of).await, &filter);
        assert!(got == want, "round {round}: {filter:?}");
        if filter.fields.is_empty() {
            let stats = log.statistics(&filter).await.unwrap();
            let want = brute_force(&known(&events, stats.as_of).await, &filter);
            assert_eq!(stats.total, want.len() as u64, "round {round}: {filter:?}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    assert!(log.size() > 3000, "the appends did not move the index on: {}", log.size());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cursors_and_filters_are_refused_with_clear_codes() {
    let log = memory_log().await;
    fill(&log, &mut Rng(3), 300).await;
    let filter = AuditFilter::tenant("acme");
    let page = log.query(&AuditQuery { filter: filter.clone(), limit: 5, cursor: None }).await.unwrap();
    let cursor = page.next_cursor.unwrap();
    // The cursor of one query is refused by another.
    let other = AuditQuery { filter: AuditFilter::tenant("globex"), limit: 5, cursor: Some(cursor) };
    let error = log.query(&other).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidArgument);
    assert!(error.message().contains("other filters"), "{error}");
    for garbage in ["", "!!!", "AQ", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let q = AuditQuery { filter: filter.clone(), limit: 5, cursor: Some(garbage.into()) };
        assert_eq!(log.query(&q).await.unwrap_err().code(), ErrorCode::InvalidArgument, "{garbage}");
    }
    let mut unknown = filter.clone();
    unknown.fields.insert("password".into(), "x".into());
    let error = log.query(&AuditQuery { filter: unknown, ..AuditQuery::default() }).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidArgument);
    assert_eq!(error.detail("field"), Some("password"));
    let backwards = AuditFilter { start_ms: 10, end_ms: Some(5), ..filter.clone() };
    assert_eq!(
        log.statistics(&backwards).await.unwrap_err().code(),
        ErrorCode::InvalidArgument,
        "an end before the start"
    );
}

fn small_segments() -> SegmentOptions {
    SegmentOptions { max_segment_bytes: 16 * 1024, ..SegmentOptions::default() }
}

async fn segment(fs: &FaultyFileSystem) -> Arc<dyn LogStorage> {
    Arc::new(SegmentStorage::open(Arc::new(fs.clone()), small_segments()).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_is_rebuilt_from_the_log_after_a_restart() {
    let fs = FaultyFileSystem::new();
    let key = signer(1, ORIGIN);
    let log = open_log(segment(&fs).await, &key).await;
    let mut rng = Rng(11);
    let events = fill(&log, &mut rng, 800).await;
    log.close().await.unwrap();
    // A power loss after the acknowledged appends: the index is gone, the log is not.
    let fs = fs.crash(CrashMode::DropUnsynced);
    let log = open_log(segment(&fs).await, &key).await;
    for _ in 0..20 {
        let filter = random_filter(&mut rng);
        assert_eq!(all_pages(&log, &filter, 64).await, brute_force(&events, &filter), "{filter:?}");
    }
}

/// A log reopened with an index of the latest 1,024 entries (of 5,000) indexes only those,
/// reading the rest for queries as they reach it; the log keeps growing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_index_after_a_restart_still_answers_for_the_whole_log() {
    let fs = FaultyFileSystem::new();
    let key = signer(1, ORIGIN);
    let log = open_log(segment(&fs).await, &key).await;
    let mut rng = Rng(12);
    let mut events = fill(&log, &mut rng, 5000).await;
    log.close().await.unwrap();
    let log = AuditLog::open(segment(&fs).await, key.clone(), common::small_index()).await.unwrap();
    for round in 0..20 {
        if round % 5 == 4 {
            // Appends after the reopening move the index on.
            events.extend(fill(&log, &mut rng, 700).await);
        }
        let filter = random_filter(&mut rng);
        assert_eq!(all_pages(&log, &filter, 64).await, brute_force(&events, &filter), "{filter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscriber_resumes_from_its_index_without_loss() {
    let log = memory_log().await;
    let mut rng = Rng(5);
    let mut subscription = log.subscribe(0).unwrap();
    subscription.set_max_batch(50);
    // The subscriber reads nothing while 2000 events are appended: appends do not wait for it.
    let mut events = fill(&log, &mut rng, 2000).await;
    assert_eq!(subscription.lag(), 2000);
    let mut seen: Vec<(u64, Vec<u8>)> = Vec::new();
    let batch = subscription.next_batch().await.unwrap();
    assert_eq!((batch.first, batch.leaves.len(), batch.behind()), (0, 50, 1950));
    seen.extend((batch.first..).zip(batch.leaves.iter().map(|l| l.entry().unwrap().to_vec())));
    let resume_at = subscription.position();
    drop(subscription);

    // More appends while nobody listens; then a new subscription from where the last stopped.
    events.extend(fill(&log, &mut rng, 500).await);
    let mut subscription = log.subscribe(resume_at).unwrap();
    let total = events.len() as u64;
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut rng = Rng(99);
            fill(&log, &mut rng, 300).await
        })
    };
    let mut max_behind = 0;
    while seen.len() < total as usize + 300 {
        let batch = subscription.next_batch().await.unwrap();
        assert_eq!(batch.first, seen.len() as u64, "no gap, no repeat");
        max_behind = max_behind.max(batch.behind());
        seen.extend((batch.first..).zip(batch.leaves.iter().map(|l| l.entry().unwrap().to_vec())));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    events.extend(writer.await.unwrap());
    assert!(max_behind > 0, "the subscriber learnt that it lagged");
    assert_eq!(subscription.lag(), 0);
    for (index, bytes) in &seen {
        assert_eq!(*bytes, events[*index as usize].encode_to_vec(), "entry {index}");
    }
    assert_eq!(log.subscribe(log.size() + 1).unwrap_err().code(), ErrorCode::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_every_proof_and_whole_log_verification() {
    prunes_keeping_every_proof(common::options(), 1200, 6_000, 50).await;
}

/// The same on a log four times longer with an index of 1,024 entries: over 1,024 events go,
/// most of them older than the index, pruned in several chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruning_larger_than_a_chunk_keeps_every_proof() {
    prunes_keeping_every_proof(common::small_index(), 4800, 38_000, 1100).await;
}

/// Fills a log of `n` events, prunes tenant acme's before `cutoff_ms` after the first event
/// (at least `at_least` of them), and checks the tombstones, every proof, verification,
/// queries, a repeat and a power loss.
#[expect(clippy::indexing_slicing, clippy::panic, reason = "the body of tests: a bad value fails the test")]
async fn prunes_keeping_every_proof(options: AuditLogOptions, n: u64, cutoff_ms: u64, at_least: usize) {
    let fs = FaultyFileSystem::new();
    let key = signer(1, ORIGIN);
    let storage = segment(&fs).await;
    let open_log = |storage, key: &aesp_audit::NoteSigner| {
        let (key, options) = (key.clone(), options.clone());
        async move { AuditLog::open(storage, key, options).await.unwrap() }
    };
    let log = open_log(Arc::clone(&storage), &key).await;
    let mut rng = Rng(21);
    let events = fill(&log, &mut rng, n).await;
    let cutoff = BASE_MS + cutoff_ms;
    let rule = PruneRule::Retention { tenant: "acme".into(), before_ms: cutoff };
    let expected: Vec<u64> =
        brute_force(&events, &AuditFilter { end_ms: Some(cutoff), ..AuditFilter::tenant("acme") })
            .into_iter()
            .map(|(i, _)| i)
            .collect();
    assert!(expected.len() > at_least, "{} to prune", expected.len());
    let report = log.prune(&rule, "retention-job", BASE_MS + 99).await.unwrap();
    assert_eq!(report.pruned, expected.len() as u64);
    assert_eq!(report.through, n);
    let event_index = report.event_index.unwrap();
    assert_eq!(event_index, n, "the pruning is itself an audited event, after what it pruned");

    let checkpoint = log.checkpoint().await.unwrap();
    let size = checkpoint.checkpoint().size;
    let root = checkpoint.checkpoint().root_hash;
    // Pruned leaves: a tombstone with the leaf hash, the time, the rule and the event.
    for &i in &expected {
        let leaf = storage.read_leaves(i, i + 1).await.unwrap().remove(0);
        let Leaf::Pruned(t) = leaf else { panic!("entry {i} still stored") };
        assert_eq!(t.leaf_hash, leaf_hash(&events[i as usize].encode_to_vec()));
        assert_eq!(
            (t.pruned_at_ms, t.event_index, t.rule.as_str()),
            (BASE_MS + 99, event_index, report.rule.as_str())
        );
        let error = log.entry(i).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound);
        // Its proof still holds, from the hash the tombstone kept.
        let proof = log.inclusion_proof(i, size).await.unwrap();
        verify_inclusion(i, size, &t.leaf_hash, &proof, &root).unwrap();
    }
    // Every remaining entry proves against the latest signed checkpoint.
    for i in (0..n).filter(|i| expected.binary_search(i).is_err()) {
        let bytes = log.entry(i).await.unwrap();
        log.prove(i).await.unwrap().verify(&bytes, std::slice::from_ref(log.verifier())).unwrap();
    }
    let verify = VerifyOptions { origin: Some(ORIGIN.into()), allow_unsigned_tail: false };
    let verification =
        verify_log(storage.as_ref(), std::slice::from_ref(log.verifier()), &verify).await.unwrap();
    assert!(verification.is_ok(), "{:?}", verification.problems);
    assert_eq!(verification.pruned, expected.len() as u64);

    // Queries and statistics no longer see the pruned events; the pruning event is there.
    let acme = all_pages(&log, &AuditFilter::tenant("acme"), 1000).await;
    assert!(acme.iter().all(|(i, _)| !expected.contains(i)));
    let prunes = all_pages(
        &log,
        &AuditFilter { event_types: vec![EVENT_RETENTION_PRUNE.into()], ..AuditFilter::tenant("acme") },
        10,
    )
    .await;
    assert_eq!(prunes.len(), 1);
    assert_eq!(prunes[0].1.metadata.get("rule"), Some(&report.rule));
    assert_eq!(prunes[0].1.metadata.get("selected"), Some(&expected.len().to_string()));

    // Running the rule again prunes nothing more.
    let again = log.prune(&rule, "retention-job", BASE_MS + 100).await.unwrap();
    assert_eq!((again.pruned, again.event_index), (0, None));

    // After a power loss everything pruned stays pruned and the log still verifies.
    log.close().await.unwrap();
    let fs = fs.crash(CrashMode::DropUnsynced);
    let storage = segment(&fs).await;
    let verification =
        verify_log(storage.as_ref(), std::slice::from_ref(key.verifier()), &verify).await.unwrap();
    assert!(verification.is_ok(), "{:?}", verification.problems);
    assert_eq!(verification.pruned, expected.len() as u64);
    let log = open_log(storage, &key).await;
    assert_eq!(all_pages(&log, &AuditFilter::tenant("acme"), 1000).await, acme);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_removes_a_principals_events_and_records_only_a_pseudonym() {
    let log = memory_log().await;
    let mut rng = Rng(31);
    let events = fill(&log, &mut rng, 600).await;
    let rule =
        PruneRule::Erasure { tenant: "globex".into(), principal: "p2".into(), request: "DSR-7".into() };
    let report = log.prune(&rule, "dpo", BASE_MS).await.unwrap();
    let filter = AuditFilter { principal: Some("p2".into()), ..AuditFilter::tenant("globex") };
    assert_eq!(report.pruned, brute_force(&events, &filter).len() as u64);
    assert!(all_pages(&log, &filter, 100).await.is_empty());
    assert!(!report.rule.contains("p2"), "{}", report.rule);
    assert!(report.rule.contains("DSR-7"));
    // Other tenants' events of a principal with the same id are untouched.
    let other = AuditFilter { principal: Some("p2".into()), ..AuditFilter::tenant("acme") };
    assert_eq!(all_pages(&log, &other, 100).await, brute_force(&events, &other));
    let verification = verify_log(
        log.storage().as_ref(),
        std::slice::from_ref(log.verifier()),
        &VerifyOptions { origin: Some(ORIGIN.into()), allow_unsigned_tail: true },
    )
    .await
    .unwrap();
    assert!(verification.is_ok(), "{:?}", verification.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_is_refused_beyond_the_checkpoint_and_an_interrupted_one_leaves_the_log_whole() {
    let fs = FaultyFileSystem::new();
    let key = signer(1, ORIGIN);
    let storage = segment(&fs).await;
    let log = open_log(Arc::clone(&storage), &key).await;
    let events = fill(&log, &mut Rng(41), 400).await;
    let covered = log.checkpoint().await.unwrap().checkpoint().size;
    log.append(&events[0]).await.unwrap();
    let request =
        |indexes: &'static [u64]| PruneRequest { indexes, pruned_at_ms: 1, rule: "test", event_index: 0 };
    // Not covered by a checkpoint: refused.
    let error = storage.prune(request(&[400])).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::FailedPrecondition, "{error}");
    // Unsorted: refused.
    assert_eq!(storage.prune(request(&[5, 3])).await.unwrap_err().code(), ErrorCode::InvalidArgument);
    assert_eq!(covered, 400);
    // Pruning twice keeps the first tombstone.
    assert_eq!(storage.prune(request(&[1, 2])).await.unwrap(), 2);
    let later = PruneRequest { indexes: &[2, 3], pruned_at_ms: 2, rule: "later", event_index: 0 };
    assert_eq!(storage.prune(later).await.unwrap(), 1);
    let Leaf::Pruned(t) = storage.read_leaves(2, 3).await.unwrap().remove(0) else { panic!() };
    assert_eq!(t.rule, "test");

    // A disk whose syncs fail mid-pruning: the pruning fails and, after a power loss, the
    // segments are as they were (the half-written rewrite is discarded at open).
    fs.fail_syncs(true);
    assert!(storage.prune(request(&[10, 11, 300])).await.is_err());
    drop(log);
    let fs = fs.crash(CrashMode::DropUnsynced);
    fs.fail_syncs(false);
    // A rewrite that reached the disk but was never renamed over its segment.
    fs.write_file("seg-00000000000000000000.log.prune", b"half a segment".to_vec());
    let storage = segment(&fs).await;
    assert!(
        !FileSystem::list(&fs).unwrap().iter().any(|n| n.ends_with(".prune")),
        "the remains of the interrupted pruning are removed"
    );
    for i in [10u64, 11, 300] {
        assert!(matches!(storage.read_leaves(i, i + 1).await.unwrap()[0], Leaf::Entry(_)), "{i}");
    }
    let verification = verify_log(
        storage.as_ref(),
        std::slice::from_ref(key.verifier()),
        &VerifyOptions { origin: Some(ORIGIN.into()), allow_unsigned_tail: true },
    )
    .await
    .unwrap();
    assert!(verification.is_ok(), "{:?}", verification.problems);
    assert_eq!(verification.pruned, 3);
}
