//! A durable Host (the embedded defaults in a data directory) restarts with its state intact:
//! tenants, approved contracts, sessions, and an audit log that continues and verifies.

mod common;

use aesp_audit::{VerifyOptions, verify_log};
use aesp_core::ManualClock;
use aesp_host::Host;
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
