//! The invocation pipeline end to end, in process: the successful call, every refusal path,
//! tenant boundaries, idempotent retries, runtime failures, audit unavailability, streaming
//! and graceful shutdown.
#![expect(clippy::expect_used, reason = "tests fail by panicking")]

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use aesp_core::{
    ErrorCode,
    proto::v1::{AuditEvent, EnterpriseRuntimeAnnouncement, TenantQuotas, ToolResultStatus, Value},
};
use aesp_host::NewSession;
use common::{Fixture, caller, sql_contract};
use futures_util::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_runs_and_is_audited_start_then_complete() {
    let f = Fixture::new().await;
    let result = f.host.invoke(&f.alice, f.call("i-1", "SELECT 1")).await.expect("the call succeeds");
    assert_eq!(result.status(), ToolResultStatus::Success);
    assert_eq!(result.payload, Some(Value::object([("rows", Value::integer(3))])));
    assert_eq!(
        f.events_of("i-1").await,
        ["TOOL_INVOCATION_START:SUCCESS", "TOOL_INVOCATION_COMPLETE:SUCCESS"]
    );
    let start =
        f.events().await.into_iter().find(|e| e.event_type == "TOOL_INVOCATION_START").expect("start");
    assert_eq!(start.tenant_id, "acme");
    assert_eq!(start.principal_id, "alice");
    assert_eq!(start.session_id, f.session);
    assert!(!start.metadata["snapshot_digest"].is_empty());
    assert!(!start.metadata["decision_input"].is_empty(), "the decision input is recorded for replay");
    assert_eq!(start.metadata["contract_version"], "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_says_why_and_is_audited() {
    let f = Fixture::new().await;
    let cases: Vec<(&str, aesp_core::proto::v1::ToolCall, ErrorCode)> = vec![
        (
            "unknown-tool",
            {
                let mut c = f.call("r-1", "x");
                c.tool_name = "nope".into();
                c
            },
            ErrorCode::NotFound,
        ),
        (
            "bad-params",
            {
                let mut c = f.call("r-2", "x");
                c.parameters.insert("limit".into(), Value::integer(0));
                c
            },
            ErrorCode::ValidationFailed,
        ),
        (
            "unknown-param",
            {
                let mut c = f.call("r-3", "x");
                c.parameters.insert("drop".into(), Value::boolean(true));
                c
            },
            ErrorCode::ValidationFailed,
        ),
        ("policy-deny", f.call("r-4", "DROP TABLE users"), ErrorCode::PolicyViolation),
        (
            "no-session",
            {
                let mut c = f.call("r-5", "x");
                c.session_id = "ghost".into();
                c
            },
            ErrorCode::NotFound,
        ),
        (
            "bad-version",
            {
                let mut c = f.call("r-6", "x");
                c.contract_version = "^9".into();
                c
            },
            ErrorCode::ContractNotApproved,
        ),
    ];
    for (name, call, code) in cases {
        let error = f.host.invoke(&f.alice, call).await.expect_err(name);
        assert_eq!(error.code(), code, "{name}: {error}");
        assert!(!error.correlation_id().is_empty(), "{name}: refusals carry the correlation id");
    }
    let denials = f.events().await.into_iter().filter(|e| e.event_type == "AUTHORIZATION_DENIED").count();
    assert_eq!(denials, 6, "each refusal is in the audit log");
    assert_eq!(f.behaviour.calls.load(Ordering::SeqCst), 0, "no refused call reached the runtime");

    // The policy denial records the policy and the decision input.
    let denial = f
        .events()
        .await
        .into_iter()
        .find(|e| e.metadata.get("invocation_id").map(String::as_str) == Some("r-4"))
        .expect("denial");
    // Each matched policy as `id@version:Effect`, comma-separated.
    assert!(
        denial.metadata["matched_policies"].split(',').any(|m| m == "no-drop@1.0.0:Deny"),
        "{:?}",
        denial.metadata
    );
    assert!(!denial.metadata["decision_input"].is_empty());

    // No role granting the tool: denied by RBAC (default deny).
    let bob = caller("acme", "bob", &[]);
    let session = f.host.create_session(&bob, NewSession::default()).await.expect("session").id().to_owned();
    let mut call = f.call("r-7", "SELECT 1");
    call.session_id = session;
    let error = f.host.invoke(&bob, call).await.expect_err("no permission");
    assert!(
        matches!(error.code(), ErrorCode::AuthorizationDenied | ErrorCode::InsufficientPermissions),
        "{error}"
    );

    // A pending version is not callable.
    f.host.load_contracts(&f.admin, vec![sql_contract("1.1.0")]).await.expect("load");
    let mut call = f.call("r-8", "x");
    call.contract_version = "=1.1.0".into();
    assert_eq!(
        f.host.invoke(&f.alice, call).await.expect_err("pending").code(),
        ErrorCode::ContractNotApproved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_boundaries_hold() {
    let f = Fixture::new().await;
    let mallory = caller("globex", "mallory", &["analyst"]);
    // Another tenant's session, contract, runtime: refused.
    let error = f.host.invoke(&mallory, f.call("x-1", "SELECT 1")).await.expect_err("cross-tenant session");
    assert_eq!(error.code(), ErrorCode::TenantAccessDenied);
    assert!(error.escalation_required());
    assert_eq!(
        f.host.get_session(&mallory, &f.session).await.expect_err("session").code(),
        ErrorCode::TenantAccessDenied
    );
    let globex_session =
        f.host.create_session(&mallory, NewSession::default()).await.expect("own session").id().to_owned();
    let mut call = f.call("x-2", "SELECT 1");
    call.session_id = globex_session;
    assert_eq!(
        f.host.invoke(&mallory, call).await.expect_err("no contract in globex").code(),
        ErrorCode::NotFound
    );
    let globex_admin = caller("globex", "gadmin", &["tenant-admin"]);
    let error = f
        .host
        .fulfill(&globex_admin, "rt-1", vec![("sql.query".into(), "*".into())])
        .await
        .expect_err("runtime");
    assert_eq!(error.code(), ErrorCode::TenantAccessDenied);
    assert!(f.host.list_sessions(&mallory).iter().all(|s| s.tenant_id() == "globex"));
    assert!(f.host.list_tools(&mallory).is_empty());
    // Tenant administration is for platform administrators.
    let error = f.host.suspend_tenant(&f.admin, "globex", "spite").await.expect_err("not platform");
    assert_eq!(error.code(), ErrorCode::TenantAccessDenied);
    let denied = f
        .events()
        .await
        .into_iter()
        .filter(|e| e.event_type == "AUTHORIZATION_DENIED" && e.tenant_id == "globex")
        .count();
    assert!(denied >= 3, "cross-tenant attempts are audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_expiry_and_quotas_refuse_calls() {
    let f = Fixture::new().await;
    f.host.suspend_tenant(&f.root, "acme", "audit finding").await.expect("suspend");
    assert_eq!(
        f.host.invoke(&f.alice, f.call("q-1", "x")).await.expect_err("suspended").code(),
        ErrorCode::TenantSuspended
    );
    f.host.resume_tenant(&f.root, "acme").await.expect("resume");
    f.host.invoke(&f.alice, f.call("q-2", "x")).await.expect("resumed");

    f.host
        .set_tenant_quotas(
            &f.root,
            "acme",
            TenantQuotas { max_invocations_per_second: 1, ..Default::default() },
        )
        .await
        .expect("quotas");
    f.host.invoke(&f.alice, f.call("q-3", "x")).await.expect("first within the rate");
    assert_eq!(
        f.host.invoke(&f.alice, f.call("q-4", "x")).await.expect_err("rate").code(),
        ErrorCode::RateLimitExceeded
    );
    f.clock.advance(Duration::from_secs(1));
    f.host.invoke(&f.alice, f.call("q-5", "x")).await.expect("refilled");
    f.host
        .set_tenant_quotas(&f.root, "acme", TenantQuotas { max_sessions: 1, ..Default::default() })
        .await
        .expect("quotas");
    let error = f.host.create_session(&f.alice, NewSession::default()).await.expect_err("session quota");
    assert_eq!(error.code(), ErrorCode::QuotaExceeded);

    f.clock.advance(Duration::from_secs(3 * 3600));
    assert_eq!(
        f.host.invoke(&f.alice, f.call("q-6", "x")).await.expect_err("expired").code(),
        ErrorCode::SessionExpired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_replay_wait_and_conflict() {
    let f = Fixture::new().await;
    let first = f.host.invoke(&f.alice, f.call("same", "SELECT 1")).await.expect("first");
    let again = f.host.invoke(&f.alice, f.call("same", "SELECT 1")).await.expect("repeat");
    assert_eq!(first, again);
    assert_eq!(f.behaviour.calls.load(Ordering::SeqCst), 1, "the tool ran once");
    let stats = f.host.idempotency_stats();
    assert_eq!((stats.entries, stats.evicted), (1, 0), "one id remembered, nothing forgotten early");
    let error = f.host.invoke(&f.alice, f.call("same", "SELECT 2")).await.expect_err("other parameters");
    assert_eq!(error.code(), ErrorCode::Conflict);

    // A repeat that arrives while the first runs waits for it.
    f.set_mode("slow");
    let (a, b) = tokio::join!(f.host.invoke(&f.alice, f.call("slow", "SELECT 1")), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.host.invoke(&f.alice, f.call("slow", "SELECT 1")).await
    });
    assert_eq!(a.expect("first"), b.expect("waiting repeat"));
    assert_eq!(f.behaviour.calls.load(Ordering::SeqCst), 2, "the slow tool ran once");

    // A refusal before the tool ran is not remembered: the retry runs.
    f.set_mode("ok");
    f.host.suspend_tenant(&f.root, "acme", "briefly").await.expect("suspend");
    assert!(f.host.invoke(&f.alice, f.call("retry", "x")).await.is_err());
    f.host.resume_tenant(&f.root, "acme").await.expect("resume");
    f.host.invoke(&f.alice, f.call("retry", "x")).await.expect("the retry runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_timeouts_failures_and_contract_breaches_are_clear_and_audited() {
    let f = Fixture::new().await;
    f.set_mode("slow");
    let mut call = f.call("t-1", "x");
    call.timeout_ms = 50;
    let error = f.host.invoke(&f.alice, call).await.expect_err("timeout");
    assert_eq!(error.code(), ErrorCode::DeadlineExceeded);
    assert_eq!(f.events_of("t-1").await, ["TOOL_INVOCATION_START:SUCCESS", "TOOL_INVOCATION_COMPLETE:ERROR"]);

    f.set_mode("crash");
    assert_eq!(
        f.host.invoke(&f.alice, f.call("t-2", "x")).await.expect_err("crash").code(),
        ErrorCode::ServiceUnavailable
    );
    assert_eq!(f.events_of("t-2").await[1], "TOOL_INVOCATION_COMPLETE:ERROR");

    f.set_mode("fail");
    let result = f.host.invoke(&f.alice, f.call("t-3", "x")).await.expect("a tool error is a result");
    assert_eq!(result.status(), ToolResultStatus::Error);
    assert_eq!(f.events_of("t-3").await[1], "TOOL_INVOCATION_COMPLETE:FAILURE");

    f.set_mode("bad");
    let error = f.host.invoke(&f.alice, f.call("t-4", "x")).await.expect_err("breaks the return type");
    assert_eq!(error.code(), ErrorCode::InternalError);
    assert!(error.message().contains("return type"), "{error}");

    // A result that answers another invocation is not passed on as this call's.
    f.set_mode("misdirected");
    let error = f.host.invoke(&f.alice, f.call("t-5", "x")).await.expect_err("another call's result");
    assert_eq!(error.code(), ErrorCode::InternalError);
    assert!(error.message().contains("answered invocation `t-5` with the result of `not-t-5`"), "{error}");
    assert_eq!(f.events_of("t-5").await, ["TOOL_INVOCATION_START:SUCCESS", "TOOL_INVOCATION_COMPLETE:ERROR"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_correlation_id_reaches_the_answer_and_both_events() {
    let f = Fixture::new().await;
    let correlation_of = |events: &[AuditEvent], invocation: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.metadata.get("invocation_id").map(String::as_str) == Some(invocation))
            .map(|e| format!("{}={}", e.event_type, e.metadata["correlation_id"]))
            .collect()
    };
    // None given: the invocation id is the correlation id, everywhere.
    let result = f.host.invoke(&f.alice, f.call("c-1", "SELECT 1")).await.expect("c-1");
    assert_eq!(result.correlation_id, "c-1");
    let mut call = f.call("c-2", "SELECT 1");
    call.correlation_id = "trace-9".into();
    let result = f.host.invoke(&f.alice, call.clone()).await.expect("c-2");
    assert_eq!(result.correlation_id, "trace-9");
    // A repeat answers with the first answer, correlation id included.
    assert_eq!(f.host.invoke(&f.alice, call).await.expect("repeat").correlation_id, "trace-9");

    f.set_mode("crash");
    let mut call = f.call("c-3", "x");
    call.correlation_id = "trace-10".into();
    assert_eq!(f.host.invoke(&f.alice, call).await.expect_err("crash").correlation_id(), "trace-10");
    assert_eq!(f.host.invoke(&f.alice, f.call("c-4", "x")).await.expect_err("crash").correlation_id(), "c-4");
    f.set_mode("fail");
    assert_eq!(f.host.invoke(&f.alice, f.call("c-5", "x")).await.expect("tool error").correlation_id, "c-5");

    let events = f.events().await;
    for (invocation, correlation) in
        [("c-1", "c-1"), ("c-2", "trace-9"), ("c-3", "trace-10"), ("c-4", "c-4"), ("c-5", "c-5")]
    {
        assert_eq!(
            correlation_of(&events, invocation),
            [
                format!("TOOL_INVOCATION_START={correlation}"),
                format!("TOOL_INVOCATION_COMPLETE={correlation}")
            ],
            "{invocation}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_cannot_fulfil_what_the_host_does_not_approve() {
    let f = Fixture::new().await;
    let announcement = EnterpriseRuntimeAnnouncement { runtime_id: "rt-2".into(), ..Default::default() };
    f.host
        .register_in_process_runtime(&f.admin, announcement, common::handler(f.behaviour.clone()))
        .await
        .expect("rt-2");
    f.host.load_contracts(&f.admin, vec![sql_contract("2.0.0")]).await.expect("pending 2.0.0");
    let outcomes = f
        .host
        .fulfill(
            &f.admin,
            "rt-2",
            vec![
                ("trojan.horse".into(), "*".into()),
                ("sql.query".into(), "^2".into()),
                ("sql.query".into(), "not semver".into()),
            ],
        )
        .await
        .expect("fulfil");
    let codes: Vec<Option<ErrorCode>> =
        outcomes.iter().map(|(_, r)| r.as_ref().err().map(aesp_core::Error::code)).collect();
    assert_eq!(
        codes,
        [Some(ErrorCode::NotFound), Some(ErrorCode::ContractNotApproved), Some(ErrorCode::InvalidArgument)]
    );
    let refused = f
        .events()
        .await
        .into_iter()
        .filter(|e| e.event_type == "RUNTIME_FULFILL" && e.outcome == "DENIED")
        .count();
    assert_eq!(refused, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_unavailable_refuses_the_call_before_the_tool_runs() {
    let f = Fixture::new().await;
    f.audit.as_ref().expect("flaky audit").failing.store(true, Ordering::SeqCst);
    let error = f.host.invoke(&f.alice, f.call("a-1", "x")).await.expect_err("fail closed");
    assert_eq!(error.code(), ErrorCode::AuditRequirementNotMet);
    assert_eq!(f.behaviour.calls.load(Ordering::SeqCst), 0, "the tool did not run");
    f.audit.as_ref().expect("flaky audit").failing.store(false, Ordering::SeqCst);
    // Refused before the tool ran, so not remembered: a retry of the same invocation runs.
    f.host.invoke(&f.alice, f.call("a-1", "x")).await.expect("the audit log is back");
    assert_eq!(f.behaviour.calls.load(Ordering::SeqCst), 1, "the retry ran the tool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_delivers_chunks_in_order_and_audits_completion() {
    let f = Fixture::new().await;
    // The fixture runtime does not stream: a clear refusal, audited completion.
    let error = match f.host.invoke_stream(&f.alice, f.call("s-1", "x")).await {
        Ok(mut stream) => stream.next().await.expect("an item").expect_err("no streaming"),
        Err(e) => e,
    };
    assert_eq!(error.code(), ErrorCode::Unimplemented);
    assert_eq!(f.events_of("s-1").await, ["TOOL_INVOCATION_START:SUCCESS", "TOOL_INVOCATION_COMPLETE:ERROR"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_calls_in_flight_and_refuses_new_ones() {
    let f = Fixture::new().await;
    f.set_mode("slow");
    let host = f.host.clone();
    let alice = f.alice.clone();
    let call = f.call("g-1", "x");
    let in_flight = tokio::spawn(async move { host.invoke(&alice, call).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let checkpoint = f.host.shutdown().await.expect("shutdown");
    in_flight.await.expect("task").expect("the call in flight finished");
    assert!(checkpoint.checkpoint().size > 0);
    let error = f.host.invoke(&f.alice, f.call("g-2", "x")).await.expect_err("closed");
    assert_eq!(error.code(), ErrorCode::ServiceUnavailable);
    assert_eq!(
        f.events_of("g-1").await,
        ["TOOL_INVOCATION_START:SUCCESS", "TOOL_INVOCATION_COMPLETE:SUCCESS"]
    );
}

/// How a [`Streamer`]'s stream ends after its chunks.
#[derive(Clone, Copy)]
enum Ending {
    /// Five chunks, the last one final.
    Final,
    /// Two chunks, then the runtime's error.
    Fails,
    /// Two chunks, none final, then nothing.
    Stops,
}

/// A runtime that only streams, ending as told.
struct Streamer(Ending);

#[async_trait::async_trait]
impl aesp_host::ToolHandler for Streamer {
    async fn call(
        &self,
        call: aesp_core::proto::v1::ToolCall,
    ) -> aesp_core::Result<aesp_core::proto::v1::ToolResult> {
        Err(aesp_core::Error::invalid_argument(format!("`{}` only streams", call.tool_name)))
    }

    async fn stream(
        &self,
        call: aesp_core::proto::v1::ToolCall,
    ) -> aesp_core::Result<aesp_core::ChunkStream> {
        let count = if matches!(self.0, Ending::Final) { 5u64 } else { 2 };
        let mut chunks: Vec<_> = (0..count)
            .map(|i| {
                Ok(aesp_core::proto::v1::StreamChunk {
                    invocation_id: call.invocation_id.clone(),
                    chunk_id: i,
                    payload: Some(Value::integer(i64::try_from(i).expect("small"))),
                    is_final: matches!(self.0, Ending::Final) && i == count - 1,
                    ..Default::default()
                })
            })
            .collect();
        if matches!(self.0, Ending::Fails) {
            chunks.push(Err(aesp_core::Error::new(ErrorCode::QuotaExceeded, "the cursor ran dry")));
        }
        Ok(Box::pin(futures_util::stream::iter(chunks)))
    }
}

impl Fixture {
    /// Replaces the fixture's runtime with a [`Streamer`] ending as `ending` says.
    async fn stream_from(&self, ending: Ending) {
        self.host.unregister_runtime(&self.admin, "rt-1").await.expect("unregister");
        let announcement =
            EnterpriseRuntimeAnnouncement { runtime_id: "streamer".into(), ..Default::default() };
        self.host
            .register_in_process_runtime(&self.admin, announcement, Streamer(ending))
            .await
            .expect("streamer");
        self.host
            .fulfill(&self.admin, "streamer", vec![("sql.query".into(), "^1".into())])
            .await
            .expect("fulfil");
    }

    /// The COMPLETE event of `invocation`.
    async fn complete_of(&self, invocation: &str) -> AuditEvent {
        self.events()
            .await
            .into_iter()
            .find(|e| {
                e.event_type == "TOOL_INVOCATION_COMPLETE"
                    && e.metadata.get("invocation_id").map(String::as_str) == Some(invocation)
            })
            .expect("complete")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_tool_delivers_every_chunk_in_order() {
    let f = Fixture::new().await;
    f.stream_from(Ending::Final).await;
    let stream = f.host.invoke_stream(&f.alice, f.call("s-2", "x")).await.expect("stream");
    let chunks: Vec<_> = stream.collect().await;
    let ids: Vec<u64> = chunks.iter().map(|c| c.as_ref().expect("chunk").chunk_id).collect();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    assert!(chunks.last().expect("last").as_ref().expect("chunk").is_final);
    assert_eq!(
        f.events_of("s-2").await,
        ["TOOL_INVOCATION_START:SUCCESS", "TOOL_INVOCATION_COMPLETE:SUCCESS"]
    );
    assert_eq!(f.complete_of("s-2").await.metadata["chunks"], "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_or_stops_short_ends_with_its_error_audited() {
    for (ending, id, code, message) in [
        (Ending::Fails, "s-3", ErrorCode::QuotaExceeded, "the cursor ran dry"),
        (
            Ending::Stops,
            "s-4",
            ErrorCode::ResourceUnavailable,
            "the runtime ended the stream without a final chunk",
        ),
    ] {
        let f = Fixture::new().await;
        f.stream_from(ending).await;
        let stream = f.host.invoke_stream(&f.alice, f.call(id, "x")).await.expect("stream");
        let items: Vec<_> = stream.collect().await;
        let ids: Vec<u64> = items.iter().filter_map(|c| c.as_ref().ok()).map(|c| c.chunk_id).collect();
        assert_eq!(ids, [0, 1], "{id}: the chunks before the end arrive");
        let error = items.last().expect("an item").as_ref().expect_err("the stream ends with an error");
        assert_eq!((error.code(), error.message()), (code, message), "{id}");
        assert_eq!(
            f.events_of(id).await,
            ["TOOL_INVOCATION_START:SUCCESS", "TOOL_INVOCATION_COMPLETE:ERROR"]
        );
        let complete = f.complete_of(id).await;
        assert_eq!(complete.metadata["chunks"], "2", "{id}");
        assert_eq!(complete.metadata["error"], message, "{id}");
        assert_eq!(complete.policy_violations, [code.as_str()], "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_and_canary_versions_take_part_in_decisions() {
    let f = Fixture::new().await;
    let strict = aesp_core::proto::v1::PolicyDefinition {
        policy_id: "strict".into(),
        version: "1.0.0".into(),
        rule: Some(aesp_core::proto::v1::PolicyRule {
            condition: "true".into(),
            effect: "DENY".into(),
            actions: vec!["invoke".into()],
            ..Default::default()
        }),
        applies_to: vec!["tool:sql.*".into()],
        enabled: true,
        ..Default::default()
    };
    f.host.create_policy(&f.admin, "acme", strict).await.expect("draft");
    // Only an approved version may leave draft.
    let error = f
        .host
        .promote_policy(&f.admin, "acme", "strict", "1.0.0", aesp_policy::Stage::Shadow)
        .await
        .expect_err("draft cannot be promoted");
    assert_eq!(error.code(), ErrorCode::FailedPrecondition);
    f.host.approve_policy(&f.admin, "acme", "strict", "1.0.0").await.expect("approve");

    // Shadow: evaluated, divergence recorded, not enforced.
    f.host
        .promote_policy(&f.admin, "acme", "strict", "1.0.0", aesp_policy::Stage::Shadow)
        .await
        .expect("shadow");
    f.host.invoke(&f.alice, f.call("sh-1", "SELECT 1")).await.expect("the shadow does not enforce");
    assert!(!f.host.policy_lifecycle().divergences().is_empty(), "the divergence is recorded");

    // Canary at 100 %: enforced for every request.
    f.host
        .promote_policy(&f.admin, "acme", "strict", "1.0.0", aesp_policy::Stage::Canary(100))
        .await
        .expect("canary");
    let error = f.host.invoke(&f.alice, f.call("ca-1", "SELECT 1")).await.expect_err("the canary enforces");
    assert_eq!(error.code(), ErrorCode::PolicyViolation);

    // Active, then rolled back: allowed again, under the previous snapshot's exact digest.
    let before = f.host.policy_lifecycle().active().digest_hex();
    f.host
        .promote_policy(&f.admin, "acme", "strict", "1.0.0", aesp_policy::Stage::Active)
        .await
        .expect("active");
    assert!(f.host.invoke(&f.alice, f.call("ac-1", "SELECT 1")).await.is_err());
    let change = f.host.rollback_policy(&f.admin, "acme", "strict").await.expect("rollback");
    assert_eq!(change.digest_after, before);
    f.host.invoke(&f.alice, f.call("rb-1", "SELECT 1")).await.expect("allowed after the rollback");
    // An analyst may not change policies.
    let error = f.host.rollback_policy(&f.alice, "acme", "strict").await.expect_err("no permission");
    assert_eq!(error.code(), ErrorCode::InsufficientPermissions);
}
