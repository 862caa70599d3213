//! Audit query latency on a 1,000,000-event log on disk (segment storage, fsync on): a
//! tenant + time-range query answered from the index (first page, and every page of the
//! range), statistics over the same selection, and the index rebuild from the log at open;
//! then the same queries on the log reopened with an index of its latest 100,000 entries only,
//! so that they reach entries older than the index (read from storage, a chunk at a time).
#![expect(clippy::unwrap_used, reason = "benchmark setup fails by panicking")]

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use aesp_audit::{AuditFilter, AuditLog, AuditQuery};
use aesp_core::proto::v1::AuditEvent;
use criterion::{Criterion, criterion_group, criterion_main};

const EVENTS: u64 = 1_000_000;
const TENANTS: u64 = 10;
const BASE_MS: u64 = 1_800_000_000_000;
/// One event every 50 ms: the log spans about 14 hours.
const STEP_MS: u64 = 50;

fn event(i: u64) -> AuditEvent {
    // Producers' clocks differ: up to a second of jitter, so times are not sorted by index.
    let jitter = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) % 1000;
    AuditEvent {
        event_id: format!("0190a1b2-c3d4-7e5f-8a9b-{i:012}"),
        timestamp_ms: BASE_MS + i * STEP_MS + jitter,
        event_type: match i % 3 {
            0 => "TOOL_INVOCATION_START",
            1 => "TOOL_INVOCATION_COMPLETE",
            _ => "AUTHORIZATION_DENIED",
        }
        .to_owned(),
        principal_id: format!("agent-{}", i % 97),
        tenant_id: format!("tenant-{}", i % TENANTS),
        session_id: format!("session-{}", i % 1013),
        resource: format!("tool:payments.refund.v{}", i % 5),
        action: "invoke".to_owned(),
        outcome: if i % 3 == 2 { "DENIED" } else { "SUCCESS" }.to_owned(),
        source_ip: "10.1.2.3".to_owned(),
        metadata: [
            ("correlation_id".to_owned(), format!("corr-{i}")),
            ("invocation_id".to_owned(), format!("inv-{i}")),
        ]
        .into(),
        ..AuditEvent::default()
    }
}

/// A log of [`EVENTS`] events, built once and kept between runs.
async fn million(path: &Path) -> AuditLog {
    let (_, log) = aesp_benches::open_segment_log(path).await;
    let have = log.size();
    if have == EVENTS {
        return log;
    }
    assert_eq!(have, 0, "a partial bench log at {}: remove it", path.display());
    let started = Instant::now();
    for chunk in 0..EVENTS / 10_000 {
        let events: Vec<AuditEvent> = (chunk * 10_000..(chunk + 1) * 10_000).map(event).collect();
        log.append_batch(&events).await.unwrap();
    }
    log.checkpoint().await.unwrap();
    eprintln!("built a {EVENTS}-event log in {:?}", started.elapsed());
    log
}

/// The tenant + ten minutes query: its first page, every page, and its statistics.
fn bench_range(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    log: &AuditLog,
    filter: &AuditFilter,
    count: u64,
) {
    group.bench_function("tenant+10min/first_page_100", |b| {
        b.to_async(runtime).iter(|| async {
            let page =
                log.query(&AuditQuery { filter: filter.clone(), limit: 100, cursor: None }).await.unwrap();
            assert_eq!(page.events.len(), 100);
        });
    });
    group.bench_function("tenant+10min/all_pages_of_1000", |b| {
        b.to_async(runtime).iter(|| async {
            let mut cursor = None;
            let mut n = 0u64;
            loop {
                let page =
                    log.query(&AuditQuery { filter: filter.clone(), limit: 1000, cursor }).await.unwrap();
                n += page.events.len() as u64;
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(n, count);
        });
    });
    group.bench_function("tenant+10min/statistics", |b| {
        b.to_async(runtime).iter(|| async {
            assert_eq!(log.statistics(filter).await.unwrap().total, count);
        });
    });
}

fn query(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("audit-query-1m");
    let log = runtime.block_on(million(&path));
    // Ten minutes in the middle of the log, for one tenant of ten: about 1,200 events.
    let start_ms = BASE_MS + EVENTS / 2 * STEP_MS;
    let filter =
        AuditFilter { start_ms, end_ms: Some(start_ms + 10 * 60 * 1000), ..AuditFilter::tenant("tenant-3") };
    let count = runtime.block_on(log.statistics(&filter)).unwrap().total;
    eprintln!("the filter selects {count} events of {EVENTS}");

    let mut group = c.benchmark_group("audit_query/1M");
    bench_range(&mut group, &runtime, &log, &filter, count);
    let whole_day = AuditFilter::tenant("tenant-3");
    group.sample_size(10);
    group.bench_function("tenant/statistics_100k", |b| {
        b.to_async(&runtime).iter(|| async {
            assert_eq!(log.statistics(&whole_day).await.unwrap().total, EVENTS / TENANTS);
        });
    });
    group.finish();
    drop(log);

    // The index is derived data: at open it is rebuilt from the log.
    let started = Instant::now();
    let reopened = runtime.block_on(async {
        let (_, log) = aesp_benches::open_segment_log(&path).await;
        log.statistics(&AuditFilter::default()).await.unwrap();
        log
    });
    eprintln!("reopened and rebuilt the index of {} events in {:?}", reopened.size(), started.elapsed());
    drop(reopened);

    // An index of the latest 100,000 entries: the ten minutes in the middle are older. The
    // first run of each reads the blocks whose times are not known yet; later ones skip them.
    let started = Instant::now();
    let small = runtime.block_on(async {
        let (_, log) = aesp_benches::open_segment_log_indexing(&path, 100_000).await;
        log.statistics(&AuditFilter::default()).await.unwrap();
        log
    });
    eprintln!("reopened with an index of the latest 100,000 events in {:?}", started.elapsed());
    let mut group = c.benchmark_group("audit_query/1M/index_of_latest_100k");
    group.sample_size(10);
    bench_range(&mut group, &runtime, &small, &filter, count);
    group.bench_function("tenant/statistics_100k", |b| {
        b.to_async(&runtime).iter(|| async {
            assert_eq!(small.statistics(&whole_day).await.unwrap().total, EVENTS / TENANTS);
        });
    });
    group.finish();
}

criterion_group!(benches, query);
criterion_main!(benches);
