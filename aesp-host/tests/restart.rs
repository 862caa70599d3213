//! A durable Host (the embedded defaults in a data directory) restarts with its state intact:
//! tenants, approved contracts, sessions, and an audit log that continues and verifies; and
//! its audit queries reach calls older than its audit index covers.

mod common;

use aesp_audit::{AuditFilter, AuditLog, AuditQuery, VerifyOptions, verify_log};
use aesp_core::{ManualClock, proto::v1::AuditEvent};
use aesp_host::{Host, HostOptions};
use common::{Fixture, T0};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_the_audit_log_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (session, call, size_before) = {
        let host = Host::builder().data_dir(dir.path()).build().await.expect("host");
        let f = Fixture::with_host(host, ManualClock::new(T0)).await;
        f.host.invoke(&f.alice, f.call("before", "SELECT 1")).await.expect("call");
        let checkpoint = f.host.shutdown().await.expect("shutdown");
        (f.session.clone(), f.call("after", "SELECT 1"), checkpoint.checkpoint().size)
    };
    let host = Host::builder().data_dir(dir.path()).build().await.expect("restarts");
    let alice = common::caller("acme", "alice", &["analyst"]);
    let admin = common::caller("acme", "ada", &["tenant-admin"]);
    assert!(host.get_session(&alice, &session).await.is_ok(), "the session survived");
    assert_eq!(host.list_tools(&alice).len(), 1, "the approved contract survived");
    // Policies, roles and their rollout are back from the store; runtimes reconnect.
    assert!(!host.policy_lifecycle().active().digest_hex().is_empty());
    let error = host.bootstrap("root").await.expect_err("bootstrap runs once");
    assert_eq!(error.code(), aesp_core::ErrorCode::FailedPrecondition);
    common::connect_runtime(&host, &admin).await;
    let mut denied = call.clone();
    denied.invocation_id = "after-deny".into();
    denied.parameters.insert("query".into(), aesp_core::proto::v1::Value::string("DROP TABLE x"));
    let error = host.invoke(&alice, denied).await.expect_err("the active DENY survived the restart");
    assert_eq!(error.code(), aesp_core::ErrorCode::PolicyViolation);
    host.invoke(&alice, call).await.expect("a call in the old session after the restart");
    let checkpoint = host.shutdown().await.expect("shutdown");
    assert!(checkpoint.checkpoint().size > size_before, "the log continued");
    let verifier = host.audit_log().verifier().clone();
    let report = verify_log(host.audit_log().storage().as_ref(), &[verifier], &VerifyOptions::default())
        .await
        .expect("verifies");
    assert!(report.is_ok(), "{report:?}");
}

/// The events `filter` selects, every page.
#[expect(clippy::expect_used, reason = "a test helper fails by panicking")]
async fn query_all(log: &AuditLog, filter: &AuditFilter) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let query = AuditQuery { filter: filter.clone(), limit: 100, cursor };
        let page = log.query(&query).await.expect("query");
        out.extend(page.events.into_iter().map(|e| e.event));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_reach_calls_older_than_the_audit_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = || HostOptions { audit_index_entries: 1024, ..HostOptions::default() };
    let first = AuditFilter {
        fields: [("metadata.invocation_id".to_owned(), "call-0".to_owned())].into(),
        ..AuditFilter::tenant("acme")
    };
    let expect = |events: &[AuditEvent]| {
        let mut types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        types.sort_unstable();
        assert_eq!(types, ["TOOL_INVOCATION_COMPLETE", "TOOL_INVOCATION_START"], "{events:?}");
    };
    let (size, acme) = {
        let host = Host::builder().data_dir(dir.path()).options(options()).build().await.expect("host");
        assert_eq!(host.audit_log().options().index_entries, 1024);
        let f = Fixture::with_host(host, ManualClock::new(T0)).await;
        for n in 0..700 {
            f.host.invoke(&f.alice, f.call(&format!("call-{n}"), "SELECT 1")).await.expect("call");
        }
        let all = f.events().await;
        assert!(all.len() > 1400, "{} events", all.len());
        let acme = all.iter().filter(|e| e.tenant_id == "acme").count() as u64;
        // The first call's events are older than the index covers: read from storage.
        expect(&query_all(f.host.audit_log(), &first).await);
        let stats = f.host.audit_log().statistics(&AuditFilter::tenant("acme")).await.expect("statistics");
        assert_eq!(stats.total, acme);
        let checkpoint = f.host.shutdown().await.expect("shutdown");
        (checkpoint.checkpoint().size, acme)
    };
    // Restarted, the Host indexes only the latest entries and still answers for all.
    let host = Host::builder().data_dir(dir.path()).options(options()).build().await.expect("restarts");
    expect(&query_all(host.audit_log(), &first).await);
    let stats = host.audit_log().statistics(&AuditFilter::tenant("acme")).await.expect("statistics");
    assert_eq!(stats.total, acme);
    assert!(stats.as_of >= size);
    host.shutdown().await.expect("shutdown");
}
