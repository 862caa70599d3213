//! Audit export throughput: a log of 100,000 realistic AuditEvents (about 300 bytes each,
//! four tenants) on segment files, built once; then a whole-tenant JSON Lines export (about a
//! quarter of the log), drained chunk by chunk, in records per second, without and with an
//! inclusion proof in every record.
#![expect(clippy::unwrap_used, reason = "benchmark setup fails by panicking")]
#![expect(clippy::indexing_slicing, reason = "event fields are picked modulo the table length")]

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::Duration,
};

use aesp_audit::{AuditFilter, AuditLog, ExportFormat, ExportOptions};
use aesp_core::proto::v1::AuditEvent;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: u64 = 100_000;
const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
const TYPES: [&str; 4] =
    ["TOOL_INVOCATION_START", "TOOL_INVOCATION_COMPLETE", "AUTHORIZATION_DENIED", "SESSION_CREATED"];
const OUTCOMES: [&str; 4] = ["SUCCESS", "SUCCESS", "DENIED", "FAILURE"];

/// An event like the Host writes for a tool call: about 300 bytes encoded.
fn event(i: u64) -> AuditEvent {
    let pick = |items: &[&str; 4], n: u64| items[(n % 4) as usize].to_owned();
    AuditEvent {
        event_id: format!("0192f3a4-7b1c-7d2e-9f00-{i:012x}"),
        timestamp_ms: 1_760_000_000_000 + i * 37,
        event_type: pick(&TYPES, i / 4),
        principal_id: format!("agent-{}", i % 97),
        tenant_id: pick(&TENANTS, i),
        session_id: format!("sess-{:08x}", i / 20),
        resource: format!("tool:payments.refund.v{}", i % 3),
        action: "invoke".into(),
        outcome: pick(&OUTCOMES, i / 7),
        source_ip: format!("10.{}.{}.{}", i % 256, (i / 256) % 256, i % 13),
        user_agent: "aesp-client-rust/0.3.0 (linux; x86_64)".into(),
        metadata: [
            ("correlation_id".to_owned(), format!("corr-{i:016x}")),
            ("invocation_id".to_owned(), format!("inv-{i:016x}")),
            ("contract_version".to_owned(), "1.4.2".to_owned()),
        ]
        .into(),
        risk_score: "0.15".into(),
        policy_violations: Vec::new(),
    }
}

fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn build(path: &Path) -> AuditLog {
    let (_, log) = aesp_benches::open_segment_log(path).await;
    let mut next = 0u64;
    while next < EVENTS {
        let end = (next + 10_000).min(EVENTS);
        let batch: Vec<AuditEvent> = (next..end).map(event).collect();
        log.append_batch(&batch).await.unwrap();
        next = end;
    }
    log
}

/// Drains an export; returns its event count.
async fn run(log: &AuditLog, include_proofs: bool) -> u64 {
    let mut options = ExportOptions::new(AuditFilter::tenant("acme"), ExportFormat::JsonLines);
    options.include_proofs = include_proofs;
    let mut export = log.export(options).await.unwrap();
    loop {
        let chunk = export.next_chunk().await.unwrap().unwrap();
        black_box(&chunk.data);
        if chunk.is_final {
            return chunk.total_events;
        }
    }
}

fn export(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let path = dir("audit-export");
    let log = rt.block_on(build(&path));
    let sizes: Vec<usize> = (0..1000).map(|i| rt.block_on(log.entry(i)).unwrap().len()).collect();
    let tenant_events = rt.block_on(run(&log, false));
    assert_eq!(tenant_events, EVENTS / 4);
    eprintln!(
        "log of {EVENTS} events, {:.0} bytes each on average; a whole-tenant export holds {tenant_events}",
        sizes.iter().sum::<usize>() as f64 / sizes.len() as f64
    );

    let mut group = c.benchmark_group("audit/export_jsonl_100k");
    group.throughput(Throughput::Elements(tenant_events));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for (name, proofs) in [("tenant_25k_records", false), ("tenant_25k_records_with_proofs", true)] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let log = log.clone();
                async move { assert_eq!(run(&log, proofs).await, tenant_events) }
            });
        });
    }
    group.finish();
    drop(log);
    let _ = std::fs::remove_dir_all(&path);
}

criterion_group!(benches, export);
criterion_main!(benches);
