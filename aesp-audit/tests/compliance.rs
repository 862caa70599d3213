//! Compliance reports against a random log: every evidence count equals a direct query and a
//! brute-force scan of the log, the samples are real evidence events that prove against the
//! report's checkpoint, other tenants never count, and the HTML page escapes what the log holds.
#![expect(clippy::unwrap_used, reason = "test helpers fail by panicking")]

mod common;

use std::sync::Arc;

use aesp_audit::{
    AuditFilter, AuditLog, AuditLogOptions, AuditQuery, IndexedEvent, Leaf, MemoryStorage, PruneRule,
    ReportRequest, SignedCheckpoint, TlogProof, framework_controls, render_html,
};
use aesp_core::{
    ErrorCode,
    proto::v1::{AuditEvent, ComplianceFramework, ComplianceReport, ControlStatus},
};
use bytes::Bytes;
use common::{ORIGIN, Rng, open_log, signer};
use prost::Message as _;

const FRAMEWORKS: [ComplianceFramework; 6] = [
    ComplianceFramework::Soc2,
    ComplianceFramework::Iso27001,
    ComplianceFramework::Gdpr,
    ComplianceFramework::Hipaa,
    ComplianceFramework::PciDss,
    ComplianceFramework::Fedramp,
];

const TYPES: [&str; 23] = [
    "TOOL_INVOCATION_START",
    "TOOL_INVOCATION_COMPLETE",
    "AUTHORIZATION_DENIED",
    "TENANT_ACCESS_DENIED",
    "SESSION_CREATE",
    "SESSION_DESTROY",
    "TENANT_CREATE",
    "TENANT_UPDATE",
    "RUNTIME_ANNOUNCE",
    "RUNTIME_FULFILL",
    "RUNTIME_UNREGISTER",
    "IDENTITY_ASSIGN_ROLE",
    "GOVERNANCE_APPROVAL_REQUEST",
    "GOVERNANCE_APPROVAL_DECISION",
    "HOST_SHUTDOWN",
    "AUTHENTICATION_SUCCESS",
    "AUTHENTICATION_FAILURE",
    "AUTHORIZATION_SUCCESS",
    "POLICY_CREATE",
    "POLICY_UPDATE",
    "POLICY_VIOLATION",
    "IDENTITY_CREATE_SERVICE_ACCOUNT",
    "CONFIGURATION_UPDATE",
];
const TENANTS: [&str; 3] = ["acme", "globex", "acme-2"];
const OUTCOMES: [&str; 4] = ["SUCCESS", "FAILURE", "DENIED", "ERROR"];
const BASE_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const DAY_MS: u64 = 86_400_000;
const HOSTILE: &str = "<script>alert('x')</script>\"&";

/// Random events over ten days, three tenants, every event type and outcome.
fn random_events(seed: u64, count: u64) -> Vec<AuditEvent> {
    let mut rng = Rng(seed | 1);
    (0..count)
        .map(|i| {
            let violated = rng.below(7) == 0;
            AuditEvent {
                event_id: format!("e-{seed}-{i:05}"),
                timestamp_ms: BASE_MS + rng.below(10 * DAY_MS),
                event_type: rng.pick(&TYPES).to_owned(),
                principal_id: format!("agent-{}", rng.below(6)),
                tenant_id: rng.pick(&TENANTS).to_owned(),
                resource: format!("tool:t{}", rng.below(8)),
                action: "invoke".into(),
                outcome: rng.pick(&OUTCOMES).to_owned(),
                policy_violations: if violated { vec!["p-1".into()] } else { Vec::new() },
                ..AuditEvent::default()
            }
        })
        .collect()
}

/// Every event stored below `size`, with its index and leaf bytes (pruned leaves left out).
async fn scan(log: &AuditLog, size: u64) -> Vec<(u64, Bytes, AuditEvent)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let leaves = log.storage().read_leaves(at, size).await.unwrap();
        assert!(!leaves.is_empty());
        for leaf in leaves {
            if let Leaf::Entry(bytes) = leaf {
                out.push((at, bytes.clone(), AuditEvent::decode(bytes).unwrap()));
            }
            at += 1;
        }
    }
    out
}

/// Every event a query selects, paging through all pages.
async fn query_all(log: &AuditLog, filter: &AuditFilter) -> Vec<IndexedEvent> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = log
            .query(&AuditQuery { filter: filter.clone(), limit: 37, cursor: cursor.take() })
            .await
            .unwrap();
        out.extend(page.events);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

fn request(framework: ComplianceFramework, tenant: &str, start_ms: u64, end_ms: u64) -> ReportRequest {
    ReportRequest {
        framework,
        tenant: tenant.to_owned(),
        start_ms,
        end_ms,
        generated_by: "auditor@example.com".into(),
        now_ms: BASE_MS + 20 * DAY_MS,
        ..ReportRequest::default()
    }
}

async fn populated_log() -> AuditLog {
    populated_log_with(common::options()).await
}

async fn populated_log_with(options: AuditLogOptions) -> AuditLog {
    let log = AuditLog::open(Arc::new(MemoryStorage::default()), signer(7, ORIGIN), options).await.unwrap();
    let events = random_events(0x5eed, 3000);
    for chunk in events.chunks(500) {
        log.append_batch(chunk).await.unwrap();
    }
    // An erasure and a retention pruning: audited events of their own, and pruned leaves
    // that no longer count.
    let erasure =
        PruneRule::Erasure { tenant: "acme".into(), principal: "agent-3".into(), request: "T-1".into() };
    assert!(log.prune(&erasure, "dpo", BASE_MS + 5 * DAY_MS).await.unwrap().pruned > 0);
    let retention = PruneRule::Retention { tenant: "globex".into(), before_ms: BASE_MS + DAY_MS };
    assert!(log.prune(&retention, "retention", BASE_MS + 6 * DAY_MS).await.unwrap().pruned > 0);
    log.append_batch(&random_events(0xbeef, 500)).await.unwrap();
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_agree_with_queries_statistics_and_a_brute_force_scan() {
    reports_agree(&populated_log().await).await;
}

/// The same with an index of the latest 1,024 entries: the rest is read from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_agree_when_most_entries_are_older_than_the_index() {
    reports_agree(&populated_log_with(common::small_index()).await).await;
}

#[expect(clippy::indexing_slicing, reason = "the body of tests: a bad index fails the test")]
async fn reports_agree(log: &AuditLog) {
    let verifier = log.verifier().clone();
    let periods = [(BASE_MS + 2 * DAY_MS, BASE_MS + 8 * DAY_MS), (0, BASE_MS + 30 * DAY_MS)];
    for framework in FRAMEWORKS {
        let table = framework_controls(framework).unwrap();
        for tenant in TENANTS {
            for (start, end) in periods {
                let report = log.compliance_report(&request(framework, tenant, start, end)).await.unwrap();
                assert_eq!(report.framework, i32::from(framework));
                assert_eq!(
                    (report.tenant_id.as_str(), report.start_time, report.end_time),
                    (tenant, start, end)
                );
                assert_eq!(report.generated_by, "auditor@example.com");
                assert_eq!(report.generated_at, BASE_MS + 20 * DAY_MS);
                assert_eq!(aesp_core::id_time_ms(&report.report_id), Some(BASE_MS + 20 * DAY_MS));
                assert!(!report.summary.is_empty());

                // The checkpoint verifies with the log's key; evidence is counted below it.
                let checkpoint = SignedCheckpoint::parse_verified(
                    report.checkpoint.as_bytes(),
                    std::slice::from_ref(&verifier),
                )
                .unwrap();
                let size = checkpoint.checkpoint().size;
                let stored = scan(log, size).await;

                let period =
                    AuditFilter { end_ms: Some(end), start_ms: start, ..AuditFilter::tenant(tenant) };
                let stats = log.statistics(&period).await.unwrap();
                assert_eq!(report.total_events, stats.total);
                assert_eq!(report.policy_violation_count, stats.policy_violations);
                let in_period: Vec<_> = stored
                    .iter()
                    .filter(|(_, _, e)| {
                        e.tenant_id == tenant && e.timestamp_ms >= start && e.timestamp_ms < end
                    })
                    .collect();
                assert_eq!(report.total_events, in_period.len() as u64);
                assert_eq!(
                    report.policy_violation_count,
                    in_period.iter().filter(|(_, _, e)| !e.policy_violations.is_empty()).count() as u64
                );

                assert_eq!(report.controls.len(), table.controls.len() + table.not_covered.len());
                for (spec, control) in table.controls.iter().zip(&report.controls) {
                    assert_eq!(control.control_id, spec.id);
                    assert_ne!(control.status, i32::from(ControlStatus::NotApplicable));
                    // Brute force over the stored events.
                    let evidence: Vec<&(u64, Bytes, AuditEvent)> = in_period
                        .iter()
                        .copied()
                        .filter(|(_, _, e)| {
                            (spec.event_types.is_empty() || spec.event_types.contains(&e.event_type.as_str()))
                                && spec.outcome.is_none_or(|o| o == e.outcome)
                        })
                        .collect();
                    assert_eq!(control.evidence_count, evidence.len() as u64, "{} {tenant}", spec.id);
                    // A direct query over the same selection.
                    let filter = AuditFilter {
                        event_types: spec.event_types.iter().map(|t| (*t).to_owned()).collect(),
                        outcome: spec.outcome.map(str::to_owned),
                        ..period.clone()
                    };
                    let queried = query_all(log, &filter).await;
                    assert_eq!(control.evidence_count, queried.len() as u64, "{} {tenant}", spec.id);
                    assert_eq!(spec.filter(tenant, start, end), filter);
                    // The samples are the first evidence events, in log order.
                    let expected: Vec<&str> =
                        evidence.iter().take(5).map(|(_, _, e)| e.event_id.as_str()).collect();
                    assert_eq!(control.evidence_event_ids, expected, "{} {tenant}", spec.id);
                    // Each sample proves against the report's checkpoint.
                    for (index, bytes, _) in evidence.iter().take(5) {
                        assert!(*index < size);
                        let hashes = log.inclusion_proof(*index, size).await.unwrap();
                        let proof =
                            TlogProof { extra: None, index: *index, hashes, checkpoint: checkpoint.clone() };
                        let proved = proof.verify(bytes, std::slice::from_ref(&verifier)).unwrap();
                        assert_eq!(proved.size, size);
                    }
                    // No evidence: a finding says so.
                    if control.evidence_count == 0 {
                        assert!(
                            control.findings.iter().any(|f| f.starts_with("no ")),
                            "{}: {:?}",
                            spec.id,
                            control.findings
                        );
                    }
                }
                for (other, control) in table.not_covered.iter().zip(&report.controls[table.controls.len()..])
                {
                    assert_eq!(control.control_id, other.id);
                    assert_eq!(control.status, i32::from(ControlStatus::NotApplicable));
                    assert_eq!(control.evidence_count, 0);
                    assert!(control.findings[0].starts_with("not evidenced by AESP: "));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erasure_and_the_monitoring_controls_see_what_happened() {
    let log = populated_log().await;
    let gdpr = log
        .compliance_report(&request(ComplianceFramework::Gdpr, "acme", BASE_MS, BASE_MS + 30 * DAY_MS))
        .await
        .unwrap();
    let erasure = gdpr.controls.iter().find(|c| c.control_id == "Art. 17").unwrap();
    assert_eq!(erasure.evidence_count, 1);
    assert_eq!(erasure.status, i32::from(ControlStatus::Satisfied));
    let records = gdpr.controls.iter().find(|c| c.control_id == "Art. 30").unwrap();
    assert!(
        records.findings.iter().any(|f| f.starts_with("processing by tool: tool:t")),
        "{:?}",
        records.findings
    );
    // Only globex had a retention pruning.
    let retention = gdpr.controls.iter().find(|c| c.control_id == "Art. 5(1)(e)").unwrap();
    assert_eq!(retention.evidence_count, 0);
    assert_eq!(retention.status, i32::from(ControlStatus::PartiallySatisfied));

    let soc2 = log
        .compliance_report(&request(ComplianceFramework::Soc2, "acme", BASE_MS, BASE_MS + 30 * DAY_MS))
        .await
        .unwrap();
    let monitoring = soc2.controls.iter().find(|c| c.control_id == "CC7.2").unwrap();
    assert!(monitoring.evidence_count > 0);
    assert!(monitoring.findings.iter().any(|f| f.contains("were denied")), "{:?}", monitoring.findings);
    assert!(monitoring.findings.iter().any(|f| f.contains("policy violations")), "{:?}", monitoring.findings);

    let pci = log
        .compliance_report(&request(ComplianceFramework::PciDss, "acme", BASE_MS, BASE_MS + 30 * DAY_MS))
        .await
        .unwrap();
    let failures = pci.controls.iter().find(|c| c.control_id == "10.7").unwrap();
    assert!(failures.evidence_count > 0);
    assert_eq!(failures.status, i32::from(ControlStatus::PartiallySatisfied));
    let protected = pci.controls.iter().find(|c| c.control_id == "10.3").unwrap();
    assert_eq!(protected.status, i32::from(ControlStatus::Satisfied));
    assert_eq!(protected.evidence_count, pci.total_events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_tenants_never_count_and_an_empty_period_is_reported_as_such() {
    let log = populated_log().await;
    // A tenant with no events at all: nothing counts, continuous controls are not satisfied.
    for framework in FRAMEWORKS {
        let report =
            log.compliance_report(&request(framework, "nobody", 0, BASE_MS + 30 * DAY_MS)).await.unwrap();
        assert_eq!((report.total_events, report.policy_violation_count), (0, 0));
        for control in &report.controls {
            assert_eq!(control.evidence_count, 0);
            assert!(control.evidence_event_ids.is_empty());
            assert!(!control.findings.is_empty());
        }
        assert!(report.controls.iter().any(|c| c.status == i32::from(ControlStatus::NotSatisfied)));
    }
    // A period before any event.
    let report =
        log.compliance_report(&request(ComplianceFramework::Fedramp, "acme", 0, BASE_MS)).await.unwrap();
    assert_eq!(report.total_events, 0);
    // Samples of one tenant belong to it.
    let report = log
        .compliance_report(&ReportRequest {
            samples_per_control: 50,
            ..request(ComplianceFramework::Hipaa, "acme-2", 0, BASE_MS + 30 * DAY_MS)
        })
        .await
        .unwrap();
    let size = SignedCheckpoint::parse(report.checkpoint.as_bytes()).unwrap().checkpoint().size;
    let stored = scan(&log, size).await;
    for control in &report.controls {
        assert!(control.evidence_event_ids.len() <= 50);
        for id in &control.evidence_event_ids {
            let (_, _, event) = stored.iter().find(|(_, _, e)| &e.event_id == id).unwrap();
            assert_eq!(event.tenant_id, "acme-2");
        }
    }
    let audit = report.controls.iter().find(|c| c.control_id == "§164.312(b)").unwrap();
    assert_eq!(audit.evidence_event_ids.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused() {
    let log = open_log(Arc::new(MemoryStorage::default()), &signer(7, ORIGIN)).await;
    log.append_batch(&random_events(1, 20)).await.unwrap();
    let refused = |r: aesp_core::Result<ComplianceReport>| r.unwrap_err().code();
    let unspecified = request(ComplianceFramework::Unspecified, "acme", 0, 0);
    assert_eq!(refused(log.compliance_report(&unspecified).await), ErrorCode::InvalidArgument);
    let no_tenant = request(ComplianceFramework::Soc2, "", 0, 0);
    assert_eq!(refused(log.compliance_report(&no_tenant).await), ErrorCode::InvalidArgument);
    let backwards = request(ComplianceFramework::Soc2, "acme", BASE_MS, BASE_MS - 1);
    assert_eq!(refused(log.compliance_report(&backwards).await), ErrorCode::InvalidArgument);
    // An end of 0 means now.
    let open = log.compliance_report(&request(ComplianceFramework::Soc2, "acme", 0, 0)).await.unwrap();
    assert_eq!(open.end_time, BASE_MS + 20 * DAY_MS);
    // From the protocol request.
    let proto = aesp_core::proto::v1::GetComplianceReportRequest {
        framework: 42,
        tenant_id: "acme".into(),
        start_time: 0,
        end_time: 0,
    };
    let from_proto = ReportRequest::from_proto(&proto, "someone", BASE_MS);
    assert_eq!(from_proto.framework, ComplianceFramework::Unspecified);
    assert_eq!(refused(log.compliance_report(&from_proto).await), ErrorCode::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_page_is_self_contained_and_escapes_the_log() {
    let log = open_log(Arc::new(MemoryStorage::default()), &signer(7, ORIGIN)).await;
    let mut events = random_events(3, 200);
    for (i, e) in events.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
        e.tenant_id = HOSTILE.into();
        e.event_type = if i % 2 == 0 { "TOOL_INVOCATION_START".into() } else { "<script>".into() };
        e.event_id = format!("<script>id-{i}</script>");
        e.resource = format!("tool:<img src=x onerror='{i}'>");
        e.timestamp_ms = BASE_MS + 1;
    }
    log.append_batch(&events).await.unwrap();
    for framework in FRAMEWORKS {
        let mut req = request(framework, HOSTILE, 0, BASE_MS + 30 * DAY_MS);
        req.generated_by = "<b>mallory</b>".into();
        let report = log.compliance_report(&req).await.unwrap();
        assert!(report.total_events > 0);
        let html = render_html(&report);
        assert!(html.starts_with("<!DOCTYPE html>"));
        let lower = html.to_ascii_lowercase();
        for banned in ["<script", "<img", "<b>", "<link", "src=\"", "href=", "@import", "url("] {
            assert!(!lower.contains(banned), "{framework:?}: `{banned}` in the page");
        }
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"));
        assert!(html.contains("&lt;b&gt;mallory&lt;/b&gt;"));
        for control in &report.controls {
            let id = control.control_id.replace('\'', "&#39;");
            assert!(html.contains(&format!("<strong>{id}</strong>")), "{id}");
        }
        let first_line = report.checkpoint.lines().next().unwrap();
        assert!(html.contains(&format!("<pre>{first_line}\n")));
        assert!(html.contains("Not covered by AESP evidence"));
        assert!(html.contains("2026-01-31T00:00:00Z"));
        if framework == ComplianceFramework::Gdpr {
            assert!(html.contains("&lt;script&gt;id-0&lt;/script&gt;"));
            assert!(html.contains("tool:&lt;img src=x onerror=&#39;"));
        }
    }
}
