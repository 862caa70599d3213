//! The policy lifecycle: version states and transitions, atomic promotion and rollback,
//! content-addressed snapshots, shadow and canary, replay, YAML suites and the service.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test helpers fail loudly on a broken fixture")]

use std::{collections::BTreeMap, sync::Arc};

use aesp_core::{
    ErrorCode, ManualClock, MemoryStore, StateStore,
    proto::v1::{
        AuditEvent, PolicyDefinition, PolicyRule, RoleDefinition, Value, create_policy_response,
        get_policy_response,
    },
};
use aesp_policy::{
    CandidateKind, Engine, LifecycleConfig, PolicyLifecycle, Principal, Request, Resource, Schema, Session,
    Stage, TestSuite, VersionState, from_input, input_from_audit_event, replay, run_suite, to_input,
};
use base64::Engine as _;
use prost::Message as _;

const TENANT: &str = "acme";
/// 2023-11-14T10:13:20Z.
const DAY_MS: u64 = 1_699_956_800_000;
const KEY: [u8; 32] = [7; 32];

fn policy(id: &str, effect: &str, condition: &str) -> PolicyDefinition {
    PolicyDefinition {
        policy_id: id.to_owned(),
        name: id.to_owned(),
        enabled: true,
        applies_to: vec!["tool:payments.*".to_owned()],
        rule: Some(PolicyRule {
            condition: condition.to_owned(),
            effect: effect.to_owned(),
            actions: Vec::new(),
            parameters: BTreeMap::new(),
        }),
        ..Default::default()
    }
}

const BIG: &str = "has(request.params.amount) && request.params.amount > 1000";
const HUGE: &str = "has(request.params.amount) && request.params.amount > 100000";

struct Fixture {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    lifecycle: Arc<PolicyLifecycle>,
}

fn lifecycle_over(store: &Arc<MemoryStore>, clock: &Arc<ManualClock>, key: [u8; 32]) -> Arc<PolicyLifecycle> {
    Arc::new(PolicyLifecycle::new(
        Arc::new(Engine::default()),
        store.clone(),
        clock.clone(),
        LifecycleConfig::new(Schema::new(), key),
    ))
}

async fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new(aesp_core::StateStoreOptions::default()));
    let clock = Arc::new(ManualClock::new(DAY_MS));
    let lifecycle = lifecycle_over(&store, &clock, KEY);
    lifecycle.load().await.unwrap();
    lifecycle
        .put_role(
            "admin",
            TENANT,
            RoleDefinition {
                role_id: "clerk".into(),
                permissions: vec!["tool:payments.*:invoke".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    lifecycle.assign_role("admin", TENANT, "alice", "clerk").await.unwrap();
    Fixture { store, clock, lifecycle }
}

fn request(amount: i64) -> Request {
    let mut params = BTreeMap::new();
    params.insert("amount".to_owned(), Value::integer(amount));
    Request {
        tenant_id: TENANT.into(),
        principal: Principal { id: "alice".into(), tenant_id: TENANT.into(), ..Default::default() },
        resource: Resource {
            name: "tool:payments.refund".into(),
            tenant_id: TENANT.into(),
            ..Default::default()
        },
        action: "invoke".into(),
        time_ms: DAY_MS,
        params,
        ..Default::default()
    }
}

/// Creates a version and approves it; returns its version.
async fn approved(l: &PolicyLifecycle, definition: PolicyDefinition) -> String {
    let (info, _) = l.create_version("author", TENANT, definition).await.unwrap();
    l.approve("approver", true, TENANT, &info.policy.policy_id, &info.policy.version).await.unwrap();
    info.policy.version
}

fn code(result: Result<impl std::fmt::Debug, aesp_core::Error>) -> ErrorCode {
    result.expect_err("the call must fail").code()
}

#[test]
fn transition_table() {
    use VersionState::{Active, Approved, Canary, Draft, Retired, Shadow};
    let legal = [
        (Draft, Approved),
        (Approved, Shadow),
        (Approved, Canary),
        (Approved, Active),
        (Approved, Retired),
        (Shadow, Canary),
        (Shadow, Active),
        (Shadow, Retired),
        (Canary, Canary),
        (Canary, Active),
        (Canary, Retired),
        (Active, Retired),
    ];
    for from in VersionState::ALL {
        for to in VersionState::ALL {
            assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from} -> {to}");
        }
    }
}

#[tokio::test]
async fn version_states_and_illegal_transitions() {
    let f = fixture().await;
    let l = &f.lifecycle;
    let (info, event) = l.create_version("author", TENANT, policy("big", "DENY", BIG)).await.unwrap();
    assert_eq!(info.policy.version, "1.0.0");
    assert_eq!(info.state, VersionState::Draft);
    assert_eq!(event.event_type, "POLICY_CREATE");
    assert_eq!(info.policy.created_by, "author");

    // A draft cannot leave draft except through approval.
    for stage in [Stage::Shadow, Stage::Canary(10), Stage::Active] {
        assert_eq!(code(l.promote("op", TENANT, "big", "1.0.0", stage).await), ErrorCode::FailedPrecondition);
    }
    assert_eq!(code(l.retire("op", TENANT, "big", "1.0.0").await), ErrorCode::FailedPrecondition);
    // Approval needs the permission.
    assert_eq!(
        code(l.approve("eve", false, TENANT, "big", "1.0.0").await),
        ErrorCode::InsufficientPermissions
    );
    assert_eq!(code(l.approve("bob", true, TENANT, "big", "9.9.9").await), ErrorCode::PolicyNotFound);
    assert_eq!(code(l.approve("bob", true, TENANT, "nope", "1.0.0").await), ErrorCode::PolicyNotFound);
    f.clock.set(DAY_MS + 5);
    let change = l.approve("bob", true, TENANT, "big", "1.0.0").await.unwrap();
    assert_eq!(change.audit.event_type, "GOVERNANCE_APPROVAL_DECISION");
    assert_eq!(change.changes[0].to, VersionState::Approved);
    let info = l.version(TENANT, "big", "1.0.0").await.unwrap();
    assert_eq!(
        (info.state, info.approved_by.as_str(), info.approved_at),
        (VersionState::Approved, "bob", DAY_MS + 5)
    );
    assert_eq!(code(l.approve("bob", true, TENANT, "big", "1.0.0").await), ErrorCode::FailedPrecondition);

    // approved -> shadow -> canary -> canary (new share) -> active -> retired.
    let c = l.promote("op", TENANT, "big", "1.0.0", Stage::Shadow).await.unwrap();
    assert_eq!(c.status.shadow, "1.0.0");
    assert_eq!(
        code(l.promote("op", TENANT, "big", "1.0.0", Stage::Canary(101)).await),
        ErrorCode::InvalidArgument
    );
    let c = l.promote("op", TENANT, "big", "1.0.0", Stage::Canary(10)).await.unwrap();
    assert_eq!(
        (c.status.shadow.as_str(), c.status.canary.as_str(), c.status.canary_percent),
        ("", "1.0.0", 10)
    );
    let c = l.promote("op", TENANT, "big", "1.0.0", Stage::Canary(50)).await.unwrap();
    assert_eq!(c.status.canary_percent, 50);
    assert_eq!(
        code(l.promote("op", TENANT, "big", "1.0.0", Stage::Shadow).await),
        ErrorCode::FailedPrecondition
    );
    let c = l.promote("op", TENANT, "big", "1.0.0", Stage::Active).await.unwrap();
    assert_eq!((c.status.active.as_str(), c.status.canary.as_str()), ("1.0.0", ""));
    assert_eq!(c.changes.len(), 1);
    assert_eq!((c.changes[0].from, c.changes[0].to), (VersionState::Canary, VersionState::Active));
    assert_ne!(c.digest_before, c.digest_after);
    assert_eq!(c.audit.event_type, "POLICY_UPDATE");
    for stage in [Stage::Shadow, Stage::Canary(5), Stage::Active] {
        assert_eq!(code(l.promote("op", TENANT, "big", "1.0.0", stage).await), ErrorCode::FailedPrecondition);
    }
    assert!(!l.decide(&request(5000), "r1").decision.allowed());

    // A second version replaces the first, which is retired and can only come back by rollback.
    let v2 = approved(l, policy("big", "DENY", HUGE)).await;
    assert_eq!(v2, "2.0.0");
    let c = l.promote("op", TENANT, "big", &v2, Stage::Active).await.unwrap();
    assert_eq!(c.changes.len(), 2);
    assert_eq!(l.version(TENANT, "big", "1.0.0").await.unwrap().state, VersionState::Retired);
    for stage in [Stage::Shadow, Stage::Canary(5), Stage::Active] {
        assert_eq!(code(l.promote("op", TENANT, "big", "1.0.0", stage).await), ErrorCode::FailedPrecondition);
    }
    assert!(l.decide(&request(5000), "r2").decision.allowed());
    let c = l.retire("op", TENANT, "big", &v2).await.unwrap();
    assert_eq!(c.status.active, "");
    assert_eq!(code(l.retire("op", TENANT, "big", &v2).await), ErrorCode::FailedPrecondition);

    // Versions are immutable and increasing.
    let mut older = policy("big", "DENY", BIG);
    older.version = "1.5.0".into();
    assert_eq!(code(l.create_version("a", TENANT, older).await), ErrorCode::FailedPrecondition);
    let mut bad = policy("big", "DENY", BIG);
    bad.version = "three".into();
    assert_eq!(code(l.create_version("a", TENANT, bad).await), ErrorCode::InvalidArgument);
    let invalid = policy("broken", "DENY", "request.nope ==");
    assert_eq!(code(l.create_version("a", TENANT, invalid).await), ErrorCode::ValidationFailed);
    let versions = l.versions(TENANT, "big").await.unwrap();
    let listed: Vec<(&str, VersionState)> =
        versions.iter().map(|v| (v.policy.version.as_str(), v.state)).collect();
    assert_eq!(listed, [("2.0.0", VersionState::Retired), ("1.0.0", VersionState::Retired)]);
    assert_eq!(
        code(l.promote("op", TENANT, "ghost", "1.0.0", Stage::Active).await),
        ErrorCode::PolicyNotFound
    );
}

#[tokio::test]
async fn rollback_restores_the_exact_previous_snapshot() {
    let f = fixture().await;
    let l = &f.lifecycle;
    assert_eq!(code(l.rollback("op", TENANT, "big").await), ErrorCode::PolicyNotFound);
    // Rolling back a policy's first active version: it stops applying, and the snapshot is
    // exactly the one before it; then there is nothing left to roll back.
    let empty = l.active().digest_hex();
    let v0 = approved(l, policy("big", "DENY", BIG)).await;
    l.promote("op", TENANT, "big", &v0, Stage::Active).await.unwrap();
    let undone = l.rollback("op", TENANT, "big").await.unwrap();
    assert_eq!(undone.digest_after, empty);
    assert_eq!(undone.status.active, "");
    assert_eq!(code(l.rollback("op", TENANT, "big").await), ErrorCode::FailedPrecondition);

    let v1 = approved(l, policy("big", "DENY", BIG)).await;
    l.promote("op", TENANT, "big", &v1, Stage::Active).await.unwrap();
    let before = l.active().digest_hex();
    let v2 = approved(l, policy("big", "DENY", HUGE)).await;
    let promoted = l.promote("op", TENANT, "big", &v2, Stage::Active).await.unwrap();
    assert_eq!(promoted.digest_before, before);
    let after = promoted.digest_after.clone();
    assert_ne!(after, before);

    let back = l.rollback("op", TENANT, "big").await.unwrap();
    assert_eq!(back.digest_after, before, "rollback restores the exact previous digest");
    assert_eq!(l.active().digest_hex(), before);
    assert_eq!(back.status.active, v1);
    let changes: Vec<(String, VersionState, VersionState)> =
        back.changes.iter().map(|c| (c.version.clone(), c.from, c.to)).collect();
    assert!(changes.contains(&(v2.clone(), VersionState::Active, VersionState::Retired)));
    assert!(changes.contains(&(v1.clone(), VersionState::Retired, VersionState::Active)));
    assert!(!l.decide(&request(5000), "r").decision.allowed());

    // Every enforced snapshot is kept: a fresh lifecycle over the same store rebuilds both,
    // and loads the same active snapshot.
    let fresh = lifecycle_over(&f.store, &f.clock, KEY);
    assert_eq!(fresh.load().await.unwrap().digest_hex(), before);
    for digest in [&before, &after] {
        let rebuilt = fresh.snapshot_by_digest(digest).await.unwrap().expect("recorded");
        assert_eq!(&rebuilt.digest_hex(), digest);
    }
    assert!(fresh.snapshot_by_digest(&"0".repeat(64)).await.unwrap().is_none());
    let under_after = fresh.snapshot_by_digest(&after).await.unwrap().unwrap();
    assert!(fresh.engine().decide_with(&under_after, &request(5000)).allowed());
}

/// A store that yields to the scheduler before every operation, so that concurrent tasks
/// interleave their reads and commits (a `MemoryStore` alone completes without yielding, and
/// tasks would then often run one after another).
#[derive(Debug)]
struct YieldingStore(MemoryStore);

#[async_trait::async_trait]
impl StateStore for YieldingStore {
    async fn get(&self, key: &[u8]) -> aesp_core::Result<Option<aesp_core::KeyValue>> {
        tokio::task::yield_now().await;
        self.0.get(key).await
    }
    async fn range(&self, request: aesp_core::RangeRequest) -> aesp_core::Result<aesp_core::RangePage> {
        tokio::task::yield_now().await;
        self.0.range(request).await
    }
    async fn txn(&self, txn: aesp_core::Txn) -> aesp_core::Result<aesp_core::TxnOutcome> {
        tokio::task::yield_now().await;
        self.0.txn(txn).await
    }
    async fn watch(&self, prefix: &[u8], from: u64) -> aesp_core::Result<aesp_core::WatchStream> {
        self.0.watch(prefix, from).await
    }
    async fn current_revision(&self) -> aesp_core::Result<u64> {
        tokio::task::yield_now().await;
        self.0.current_revision().await
    }
    async fn compacted_revision(&self) -> aesp_core::Result<u64> {
        self.0.compacted_revision().await
    }
    async fn compact(&self, revision: u64) -> aesp_core::Result<()> {
        self.0.compact(revision).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_promotions_never_leave_two_active_versions() {
    let store = Arc::new(YieldingStore(MemoryStore::new(aesp_core::StateStoreOptions::default())));
    let l = Arc::new(PolicyLifecycle::new(
        Arc::new(Engine::default()),
        store,
        Arc::new(ManualClock::new(DAY_MS)),
        LifecycleConfig::new(Schema::new(), KEY),
    ));
    l.load().await.unwrap();
    let mut conflicts = 0;
    for round in 0..4 {
        let mut versions = Vec::new();
        for _ in 0..6 {
            versions.push(approved(&l, policy("big", "DENY", BIG)).await);
        }
        let tasks: Vec<_> = versions
            .iter()
            .cloned()
            .map(|v| {
                let l = l.clone();
                tokio::spawn(async move { l.promote("op", TENANT, "big", &v, Stage::Active).await })
            })
            .collect();
        let mut won = Vec::new();
        for (task, version) in tasks.into_iter().zip(&versions) {
            match task.await.unwrap() {
                Ok(_) => won.push(version.clone()),
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
                    conflicts += 1;
                }
            }
        }
        assert!(!won.is_empty(), "round {round}: some promotion wins");
        let active: Vec<String> = l
            .versions(TENANT, "big")
            .await
            .unwrap()
            .into_iter()
            .filter(|v| v.state == VersionState::Active)
            .map(|v| v.policy.version)
            .collect();
        assert_eq!(active.len(), 1, "round {round}: exactly one active version: {active:?}");
        let status = l.status(TENANT, "big").await.unwrap();
        assert_eq!(status.active, active[0]);
        assert!(won.contains(&active[0]));
        // Every winner but the last one standing was retired by the next winner.
        assert!(status.previous_active.len() >= won.len() - 1);
    }
    assert!(conflicts > 0, "the promotions did race");
}

#[tokio::test]
async fn shadow_divergence_is_recorded_and_not_enforced() {
    let f = fixture().await;
    let l = &f.lifecycle;
    let v1 = approved(l, policy("big", "DENY", HUGE)).await;
    l.promote("op", TENANT, "big", &v1, Stage::Active).await.unwrap();
    let v2 = approved(l, policy("big", "DENY", BIG)).await;
    l.promote("op", TENANT, "big", &v2, Stage::Shadow).await.unwrap();

    let small = l.decide(&request(10), "r-small");
    assert!(small.decision.allowed());
    assert!(small.divergences.is_empty());
    let big = l.decide(&request(5000), "r-big");
    assert!(big.decision.allowed(), "a shadow is never enforced");
    assert_eq!(big.snapshot.digest_hex(), l.active().digest_hex());
    assert!(big.canary.is_none());
    assert_eq!(big.divergences.len(), 1);
    let d = &l.divergences()[0];
    assert_eq!(d, &big.divergences[0]);
    assert_eq!((d.version.policy_id.as_str(), d.version.version.as_str()), ("big", v2.as_str()));
    assert_eq!(d.kind, CandidateKind::Shadow);
    assert_eq!(d.request_id, "r-big");
    assert!(d.active_allowed && !d.candidate_allowed && !d.enforced);
    assert_eq!(d.candidate_reason, "denied by policy `big`");
    assert_eq!(d.request_digest.len(), 64);
    let counters = l.counters_of(TENANT, "big", &v2).unwrap();
    assert_eq!((counters.evaluated, counters.diverged, counters.enforced), (2, 1, 0));
    // The shadow snapshot is recorded too.
    assert!(l.snapshot_by_digest(&d.candidate_digest).await.unwrap().is_some());
    // Another tenant's requests do not evaluate it.
    let mut other = request(5000);
    other.tenant_id = "globex".into();
    assert!(l.decide(&other, "r-other").divergences.is_empty());
    assert_eq!(l.counters_of(TENANT, "big", &v2).unwrap().evaluated, 2);
}

#[tokio::test]
async fn canary_share_is_keyed_and_ignores_caller_input() {
    let f = fixture().await;
    let l = &f.lifecycle;
    let v1 = approved(l, policy("big", "DENY", HUGE)).await;
    l.promote("op", TENANT, "big", &v1, Stage::Active).await.unwrap();
    let v2 = approved(l, policy("big", "DENY", BIG)).await;
    l.promote("op", TENANT, "big", &v2, Stage::Canary(30)).await.unwrap();

    let n = 10_000;
    let ids: Vec<String> = (0..n).map(|i| format!("req-{i:05}")).collect();
    let chosen = |l: &PolicyLifecycle, vary: bool| -> Vec<bool> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let mut r = request(5000);
                if vary {
                    // Everything a caller controls: session, parameters, claims, address.
                    r.session = Session { id: format!("caller-chosen-{i}"), metadata: BTreeMap::new() };
                    r.params.insert("request_id".into(), Value::string(format!("steer-{i}")));
                    r.principal.claims.insert("jti".into(), "fixed".into());
                    r.source_ip = "10.0.0.1".into();
                }
                let d = l.decide(&r, id);
                assert_eq!(d.canary.is_some(), !d.decision.allowed(), "the canary DENY is what is enforced");
                d.canary.is_some()
            })
            .collect()
    };
    let plain = chosen(l, false);
    let hits = plain.iter().filter(|c| **c).count();
    assert!((2800..=3200).contains(&hits), "30 % ± 2 % of 10,000, got {hits}");
    assert_eq!(chosen(l, true), plain, "caller-chosen fields do not move a request in or out of the canary");
    let counters = l.counters_of(TENANT, "big", &v2).unwrap();
    assert_eq!(counters.enforced, 2 * hits as u64);
    assert_eq!(counters.evaluated, 2 * n as u64);
    assert_eq!(counters.diverged, 2 * n as u64, "every request of 5000 diverges");
    assert!(l.divergences().len() <= 4096);
    assert!(l.divergences().iter().any(|d| d.enforced));
    // The choice depends on the secret key: another key chooses other requests.
    let other = lifecycle_over(&f.store, &f.clock, [9; 32]);
    other.load().await.unwrap();
    let keyed = chosen(&other, false);
    let same = keyed.iter().zip(&plain).filter(|(a, b)| a == b).count();
    assert!(same < 9_000, "a different key gives a different choice ({same} equal)");
    // A canary of 0 % is never enforced; 100 % always.
    l.promote("op", TENANT, "big", &v2, Stage::Canary(0)).await.unwrap();
    assert!(ids.iter().take(500).all(|id| l.decide(&request(5000), id).canary.is_none()));
    l.promote("op", TENANT, "big", &v2, Stage::Canary(100)).await.unwrap();
    assert!(ids.iter().take(500).all(|id| l.decide(&request(5000), id).canary.is_some()));
}

fn sample_request() -> Request {
    let mut r = request(42);
    r.principal = Principal {
        id: "alice".into(),
        principal_type: "service_account".into(),
        tenant_id: TENANT.into(),
        business_unit: "finance".into(),
        roles: vec!["clerk".into(), "auditor".into()],
        permissions: vec!["tool:x:read".into()],
        clearance: "confidential".into(),
        mfa_verified: true,
        claims: [("iss".to_owned(), "idp".to_owned())].into(),
        attributes: [("spending_limit".to_owned(), Value::integer(500))].into(),
    };
    r.resource = Resource {
        name: "tool:payments.refund".into(),
        tenant_id: TENANT.into(),
        classification: "internal".into(),
        required_roles: vec!["clerk".into()],
        required_permissions: vec!["tool:payments.refund:invoke".into()],
        metadata: [("owner".to_owned(), "fin".to_owned())].into(),
    };
    r.session = Session { id: "s-1".into(), metadata: [("agent".to_owned(), "a".to_owned())].into() };
    r.source_ip = "192.0.2.4".into();
    r.estimated_cost = 1.25;
    r.tenant_attributes = [("cost_center".to_owned(), Value::string("cc-7"))].into();
    r.break_glass = Some("incident 42".into());
    r
}

#[tokio::test]
async fn decision_input_round_trip_preserves_every_field() {
    let f = fixture().await;
    let snapshot = f.lifecycle.active();
    let original = sample_request();
    let input = to_input(original.clone(), &snapshot);
    assert_eq!(input.snapshot_digest, snapshot.digest_hex());
    assert_eq!(input.estimated_cost_micros, 1_250_000);
    assert_eq!(from_input(&input).unwrap(), original);
    let mut plain = original.clone();
    plain.break_glass = None;
    assert_eq!(from_input(&to_input(plain.clone(), &snapshot)).unwrap(), plain);
    // Through the audit event's metadata, as the Host records it.
    let mut event = AuditEvent::default();
    event.metadata.insert(
        "decision_input".into(),
        base64::engine::general_purpose::STANDARD.encode(input.encode_to_vec()),
    );
    assert_eq!(input_from_audit_event(&event).unwrap().unwrap(), input);
    assert!(input_from_audit_event(&AuditEvent::default()).unwrap().is_none());
    event.metadata.insert("decision_input".into(), "not base64!".into());
    assert_eq!(code(input_from_audit_event(&event)), ErrorCode::InvalidArgument);
    let mut no_principal = input;
    no_principal.principal = None;
    assert_eq!(code(from_input(&no_principal)), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn replay_lists_exactly_the_changed_decisions() {
    let f = fixture().await;
    let l = &f.lifecycle;
    let v1 = approved(l, policy("big", "DENY", HUGE)).await;
    l.promote("op", TENANT, "big", &v1, Stage::Active).await.unwrap();
    let recorded_under = l.active();
    let mut mallory = request(10);
    mallory.principal.id = "mallory".into();
    let cases = [
        ("allowed-small", request(10)),
        ("allowed-big", request(5000)),
        ("denied-huge", request(500_000)),
        ("denied-mallory", mallory),
    ];
    let inputs: Vec<(String, _)> = cases
        .iter()
        .map(|(id, r)| {
            assert_eq!(l.decide(r, id).decision.allowed(), id.starts_with("allowed"));
            ((*id).to_owned(), to_input(r.clone(), &recorded_under))
        })
        .collect();
    // The candidate denies from 1000 on: only the big refund changes.
    let candidate = l.candidate_snapshot(TENANT, &policy("big", "DENY", BIG)).await.unwrap();
    let report =
        replay(l.engine(), &recorded_under, &candidate, inputs.iter().map(|(id, i)| (id.clone(), i)))
            .unwrap();
    let changed: Vec<&str> = report.changed.iter().map(|o| o.case_id.as_str()).collect();
    let unchanged: Vec<&str> = report.unchanged.iter().map(|o| o.case_id.as_str()).collect();
    assert_eq!(changed, ["allowed-big"]);
    assert_eq!(unchanged, ["allowed-small", "denied-huge", "denied-mallory"]);
    assert!(report.changed[0].before.allowed() && !report.changed[0].after.allowed());
    // Against the snapshot each decision was recorded under, after the policy moved on.
    let v2 = approved(l, policy("big", "DENY", BIG)).await;
    l.promote("op", TENANT, "big", &v2, Stage::Active).await.unwrap();
    let report = l.replay_recorded(&l.active(), &inputs).await.unwrap();
    assert_eq!(report.changed.iter().map(|o| o.case_id.as_str()).collect::<Vec<_>>(), ["allowed-big"]);
    let mut unknown = inputs[0].1.clone();
    unknown.snapshot_digest = "ab".repeat(32);
    assert_eq!(code(l.replay_recorded(&candidate, &[("x".into(), unknown)]).await), ErrorCode::NotFound);
}

#[test]
fn yaml_suite_reports_failing_cases() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/suites/refunds.yaml")).unwrap();
    let suite = TestSuite::from_yaml(&text).unwrap();
    let report = run_suite(&Engine::default(), &Schema::new(), &suite).unwrap();
    assert_eq!((report.total, report.passed), (6, 4), "{report}");
    let names: Vec<&str> = report.failures.iter().map(|f| f.case.as_str()).collect();
    assert_eq!(
        names,
        ["(failing) alice reads the daily report", "(failing) the night rule is expected alone"]
    );
    let report_case = &report.failures[0];
    assert_eq!((report_case.expected.as_str(), report_case.actual.as_str()), ("ALLOW", "DENY"));
    assert!(report_case.matched.is_empty());
    let night = &report.failures[1];
    assert_eq!(night.actual, "DENY");
    assert_eq!(night.matched, ["big-refunds-at-night@1.0.0:DENY", "flag-refunds@1.0.0:AUDIT"]);
    assert_eq!(night.unexpected_policies, ["flag-refunds"]);
    assert!(night.missing_policies.is_empty());
    let text = report.to_string();
    assert!(text.contains("4 of 6 cases passed"), "{text}");
    assert!(text.contains("also matched [flag-refunds]"), "{text}");

    assert_eq!(TestSuite::from_yaml("cases: [").unwrap_err().code(), ErrorCode::InvalidArgument);
    let unknown = "cases: [{name: x, principal: nobody, resource: r, expect: ALLOW}]";
    assert_eq!(TestSuite::from_yaml(unknown).unwrap_err().code(), ErrorCode::InvalidArgument);
    let bad_expect = "principals: {a: {}}\nresources: {r: {name: 'tool:x'}}\ncases: [{name: x, principal: a, resource: r, expect: MAYBE}]";
    assert_eq!(TestSuite::from_yaml(bad_expect).unwrap_err().code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn yaml_suite_runs_against_a_lifecycle_snapshot() {
    let f = fixture().await;
    let l = &f.lifecycle;
    let suite = TestSuite::from_yaml(
        "tenant: acme\ntime_ms: 1699956800000\nprincipals: {alice: {roles: [clerk]}}\n\
         resources: {refund: {name: 'tool:payments.refund'}}\n\
         cases:\n  - {name: small, principal: alice, resource: refund, params: {amount: 10}, expect: ALLOW}\n\
         \x20 - {name: big, principal: alice, resource: refund, params: {amount: 5000}, expect: DENY, expect_policies: [big]}\n",
    )
    .unwrap();
    let active = aesp_policy::run_suite_with(l.engine(), &l.active(), &suite);
    assert_eq!(active.failures.iter().map(|f| f.case.as_str()).collect::<Vec<_>>(), ["big"]);
    let candidate = l.candidate_snapshot(TENANT, &policy("big", "DENY", BIG)).await.unwrap();
    assert!(aesp_policy::run_suite_with(l.engine(), &candidate, &suite).passed_all());
}

#[tokio::test]
async fn the_policy_service() {
    use aesp_core::proto::v1::{
        CreatePolicyRequest, DeletePolicyRequest, EvaluatePolicyRequest, GetPolicyRequest,
        ListPoliciesRequest, PolicyEffect, PolicyReplayWindow, PolicyTestCase, TestPolicyRequest,
        UpdatePolicyRequest, ValidatePolicyRequest, delete_policy_response, evaluate_policy_response,
        list_policies_response, test_policy_response, update_policy_response, validate_policy_response,
    };
    use aesp_policy::{Caller, PolicyService};
    let f = fixture().await;
    let service = PolicyService::new(f.lifecycle.clone());
    let caller = Caller { principal_id: "author".into(), tenant_id: TENANT.into(), platform_admin: false };

    // Create: a draft at 1.0.0, with an audit event; a second create of the id is refused.
    let created = service
        .create_policy(
            &caller,
            CreatePolicyRequest {
                policy: Some(policy("big", "DENY", HUGE)),
                tenant_id: "other".into(),
                dry_run: false,
            },
        )
        .await;
    let Some(create_policy_response::ResponseType::Success(result)) = created.response.response_type else {
        panic!("{created:?}")
    };
    assert_eq!(result.policy.unwrap().version, "1.0.0");
    assert_eq!(created.events.len(), 1);
    assert_eq!(created.events[0].tenant_id, TENANT, "the tenant comes from the caller, not the request");
    let again = service
        .create_policy(
            &caller,
            CreatePolicyRequest { policy: Some(policy("big", "DENY", HUGE)), ..Default::default() },
        )
        .await;
    let Some(create_policy_response::ResponseType::Error(e)) = again.response.response_type else { panic!() };
    assert_eq!(e.code, "ALREADY_EXISTS");
    assert!(again.events.is_empty());
    let dry = service
        .create_policy(
            &caller,
            CreatePolicyRequest {
                policy: Some(policy("dry", "DENY", BIG)),
                dry_run: true,
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(dry.response.response_type, Some(create_policy_response::ResponseType::Success(_))));
    assert!(dry.events.is_empty());

    // Update: 2.0.0 in draft; a stale expected version is a conflict.
    let stale = service
        .update_policy(
            &caller,
            UpdatePolicyRequest {
                policy: Some(policy("big", "DENY", BIG)),
                expected_version: "0.1.0".into(),
                ..Default::default()
            },
        )
        .await;
    let Some(update_policy_response::ResponseType::Error(e)) = stale.response.response_type else { panic!() };
    assert_eq!(e.code, "CONFLICT");
    let updated = service
        .update_policy(
            &caller,
            UpdatePolicyRequest {
                policy: Some(policy("big", "DENY", BIG)),
                expected_version: "1.0.0".into(),
                ..Default::default()
            },
        )
        .await;
    let Some(update_policy_response::ResponseType::Success(result)) = updated.response.response_type else {
        panic!()
    };
    assert_eq!(result.policy.unwrap().version, "2.0.0");
    assert_eq!(updated.events[0].event_type, "POLICY_UPDATE");

    // Get: the current version is the latest while none is active, then the active one.
    let get = |version: &str| GetPolicyRequest {
        policy_id: "big".into(),
        version: version.into(),
        tenant_id: String::new(),
    };
    let version_of = |r: aesp_core::proto::v1::GetPolicyResponse| match r.response_type {
        Some(get_policy_response::ResponseType::Success(g)) => g.policy.unwrap().version,
        other => panic!("{other:?}"),
    };
    assert_eq!(version_of(service.get_policy(&caller, get("")).await.response), "2.0.0");
    f.lifecycle.approve("bob", true, TENANT, "big", "1.0.0").await.unwrap();
    f.lifecycle.promote("op", TENANT, "big", "1.0.0", Stage::Active).await.unwrap();
    assert_eq!(version_of(service.get_policy(&caller, get("")).await.response), "1.0.0");
    assert_eq!(version_of(service.get_policy(&caller, get("2.0.0")).await.response), "2.0.0");
    let missing = service.get_policy(&caller, get("7.0.0")).await.response;
    assert!(
        matches!(missing.response_type, Some(get_policy_response::ResponseType::Error(e)) if e.code == "POLICY_NOT_FOUND")
    );

    // List: versions newest first, paged; and the tenant's policies.
    let page = |cursor: &str| ListPoliciesRequest {
        policy_id: "big".into(),
        limit: 1,
        cursor: cursor.into(),
        ..Default::default()
    };
    let Some(list_policies_response::ResponseType::Success(first)) =
        service.list_policies(&caller, page("")).await.response.response_type
    else {
        panic!()
    };
    assert_eq!(first.policies[0].version, "2.0.0");
    assert!(!first.next_cursor.is_empty());
    let Some(list_policies_response::ResponseType::Success(second)) =
        service.list_policies(&caller, page(&first.next_cursor)).await.response.response_type
    else {
        panic!()
    };
    assert_eq!(second.policies[0].version, "1.0.0");
    assert!(second.next_cursor.is_empty());
    let Some(list_policies_response::ResponseType::Success(all)) =
        service.list_policies(&caller, ListPoliciesRequest::default()).await.response.response_type
    else {
        panic!()
    };
    assert_eq!(
        all.policies.iter().map(|p| (p.policy_id.as_str(), p.version.as_str())).collect::<Vec<_>>(),
        [("big", "1.0.0")]
    );

    // Evaluate one policy, and all combined.
    let context: std::collections::HashMap<String, Value> =
        [("amount".to_owned(), Value::integer(500_000))].into();
    let evaluate = EvaluatePolicyRequest {
        policy_id: "big".into(),
        context: context.clone().into_iter().collect(),
        principal_id: "alice".into(),
        resource: "tool:payments.refund".into(),
        action: "invoke".into(),
        ..Default::default()
    };
    let Some(evaluate_policy_response::ResponseType::Success(one)) =
        service.evaluate_policy(&caller, evaluate.clone()).await.response.response_type
    else {
        panic!()
    };
    assert_eq!((one.effect(), one.matched), (PolicyEffect::Deny, true));
    let Some(evaluate_policy_response::ResponseType::Success(all)) = service
        .evaluate_policy(&caller, EvaluatePolicyRequest { policy_id: String::new(), ..evaluate })
        .await
        .response
        .response_type
    else {
        panic!()
    };
    assert_eq!(
        (all.effect(), all.matched_policies.as_slice()),
        (PolicyEffect::Deny, ["big".to_owned()].as_slice())
    );

    // Test: synthetic cases and recorded decisions, before and after the candidate.
    let recorded = vec![
        ("evt-1".to_owned(), to_input(request(5000), &f.lifecycle.active())),
        ("evt-2".to_owned(), to_input(request(5), &f.lifecycle.active())),
    ];
    let test = TestPolicyRequest {
        policy: Some(policy("big", "DENY", BIG)),
        tenant_id: String::new(),
        cases: vec![PolicyTestCase {
            case_id: "c1".into(),
            principal_id: "alice".into(),
            resource: "tool:payments.refund".into(),
            action: "invoke".into(),
            context: [("amount".to_owned(), Value::integer(5000))].into_iter().collect(),
            expected_effect: PolicyEffect::Allow.into(),
        }],
        replay: Some(PolicyReplayWindow { start_time: 0, end_time: 0, limit: 0 }),
    };
    let Some(test_policy_response::ResponseType::Success(tested)) =
        service.test_policy(&caller, test, &recorded).await.response.response_type
    else {
        panic!()
    };
    assert_eq!((tested.total_cases, tested.changed_cases, tested.failed_expectations), (3, 2, 1));
    let changed: Vec<&str> =
        tested.results.iter().filter(|r| r.changed).map(|r| r.case_id.as_str()).collect();
    assert_eq!(changed, ["c1", "evt-1"]);

    // Validate.
    let Some(validate_policy_response::ResponseType::Success(v)) = service
        .validate_policy(
            &caller,
            ValidatePolicyRequest {
                policy: Some(policy("x", "DENY", "request.params.amount >")),
                tenant_id: String::new(),
            },
        )
        .response
        .response_type
    else {
        panic!()
    };
    assert!(!v.valid && !v.errors.is_empty());
    let Some(validate_policy_response::ResponseType::Success(v)) = service
        .validate_policy(
            &caller,
            ValidatePolicyRequest { policy: Some(policy("x", "DENY", BIG)), tenant_id: String::new() },
        )
        .response
        .response_type
    else {
        panic!()
    };
    assert!(v.valid);

    // Delete: stops applying at once; versions stay readable.
    assert!(!f.lifecycle.decide(&request(500_000), "r").decision.allowed());
    let deleted = service
        .delete_policy(&caller, DeletePolicyRequest { policy_id: "big".into(), ..Default::default() })
        .await;
    assert!(matches!(deleted.response.response_type, Some(delete_policy_response::ResponseType::Success(_))));
    assert_eq!(deleted.events.len(), 1);
    assert!(f.lifecycle.decide(&request(500_000), "r").decision.allowed());
    assert_eq!(version_of(service.get_policy(&caller, get("1.0.0")).await.response), "1.0.0");
    let Some(list_policies_response::ResponseType::Success(all)) =
        service.list_policies(&caller, ListPoliciesRequest::default()).await.response.response_type
    else {
        panic!()
    };
    assert!(all.policies.is_empty());
    let gone = service
        .delete_policy(&caller, DeletePolicyRequest { policy_id: "big".into(), ..Default::default() })
        .await;
    assert!(matches!(gone.response.response_type, Some(delete_policy_response::ResponseType::Error(_))));
}

#[tokio::test]
async fn keys_live_under_their_tenant() {
    let f = fixture().await;
    approved(&f.lifecycle, policy("big", "DENY", BIG)).await;
    let page = f.store.range(aesp_core::RangeRequest::prefix("t/")).await.unwrap();
    let keys: Vec<String> = page.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect();
    assert!(keys.contains(&"t/acme/policies/big/versions/1.0.0".to_owned()), "{keys:?}");
    assert!(keys.contains(&"t/acme/policies/big/state".to_owned()));
    assert!(keys.contains(&"t/acme/roles/defs/clerk".to_owned()));
    assert!(keys.contains(&"t/acme/roles/assignments/alice/clerk".to_owned()));
    assert!(keys.iter().any(|k| k.starts_with("t/_system/snapshots/")));
    assert!(keys.iter().all(|k| k.starts_with("t/acme/") || k.starts_with("t/_system/")), "{keys:?}");
}
