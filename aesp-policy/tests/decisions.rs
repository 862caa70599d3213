//! Table tests of the decision engine: combining rules, hard requirements, inheritance,
//! wildcard boundaries, clearance, break-glass, fail-closed errors, the example conditions,
//! validation and snapshots.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly on a broken fixture")]

use std::collections::BTreeMap;

use aesp_core::ErrorCode;
use aesp_core::proto::v1::{PolicyDefinition, PolicyRule, RoleDefinition, Value};
use aesp_policy::{
    AttributeType, Effect, Engine, PolicyError, Principal, Request, Resource, Schema, SnapshotBuilder,
};

const TENANT: &str = "acme";
/// 2023-11-14T22:13:20Z.
const NIGHT_MS: u64 = 1_700_000_000_000;
/// 2023-11-14T10:13:20Z.
const DAY_MS: u64 = NIGHT_MS - 12 * 3_600_000;

fn policy(
    id: &str,
    effect: &str,
    applies_to: &[&str],
    actions: &[&str],
    condition: &str,
) -> PolicyDefinition {
    PolicyDefinition {
        policy_id: id.to_owned(),
        name: id.to_owned(),
        version: "1".to_owned(),
        enabled: true,
        applies_to: applies_to.iter().map(|s| (*s).to_owned()).collect(),
        rule: Some(PolicyRule {
            condition: condition.to_owned(),
            effect: effect.to_owned(),
            actions: actions.iter().map(|s| (*s).to_owned()).collect(),
            parameters: BTreeMap::new(),
        }),
        ..Default::default()
    }
}

fn with_parameters(mut policy: PolicyDefinition, parameters: &[(&str, &str)]) -> PolicyDefinition {
    if let Some(rule) = policy.rule.as_mut() {
        rule.parameters = parameters.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    }
    policy
}

fn role(id: &str, parents: &[&str], permissions: &[&str]) -> RoleDefinition {
    RoleDefinition {
        role_id: id.to_owned(),
        name: id.to_owned(),
        tenant_id: TENANT.to_owned(),
        parent_roles: parents.iter().map(|s| (*s).to_owned()).collect(),
        permissions: permissions.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn schema() -> Schema {
    Schema::new()
        .with_principal_attribute("spending_limit", AttributeType::Double)
        .and_then(|s| s.with_tenant_attribute("cost_center", AttributeType::String))
        .and_then(|s| {
            s.with_organization_attribute(
                "approved_cost_centers",
                AttributeType::List(Box::new(AttributeType::String)),
            )
        })
        .unwrap()
}

fn builder() -> SnapshotBuilder {
    let mut builder = SnapshotBuilder::new(1, schema());
    builder
        .set_organization_attribute(
            "approved_cost_centers",
            Value::array([Value::string("cc-100"), Value::string("cc-200")]),
        )
        .unwrap();
    builder
}

fn request(principal: &str, resource: &str, action: &str) -> Request {
    Request {
        tenant_id: TENANT.to_owned(),
        principal: Principal {
            id: principal.to_owned(),
            tenant_id: TENANT.to_owned(),
            principal_type: "user".to_owned(),
            ..Default::default()
        },
        resource: Resource { name: resource.to_owned(), tenant_id: TENANT.to_owned(), ..Default::default() },
        action: action.to_owned(),
        time_ms: DAY_MS,
        source_ip: "10.1.2.3".to_owned(),
        ..Default::default()
    }
}

/// An engine with `builder` installed.
fn engine_for(builder: &SnapshotBuilder) -> Engine {
    let engine = Engine::default();
    let snapshot = engine.build(builder).unwrap();
    engine.install(snapshot);
    engine
}

fn analyst_builder() -> SnapshotBuilder {
    let mut b = builder();
    b.add_role(TENANT, role("viewer", &[], &["tool:reports.*:read"])).unwrap();
    b.add_role(TENANT, role("analyst", &["viewer"], &["tool:sql.*:invoke"])).unwrap();
    b.assign_role(TENANT, "alice", "analyst");
    b
}

#[test]
fn combining_rules() {
    // (name, policies, principal, resource, action, allowed, code, reason contains)
    type Case = (
        &'static str,
        Vec<PolicyDefinition>,
        &'static str,
        &'static str,
        bool,
        Option<ErrorCode>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "default deny",
            vec![],
            "bob",
            "tool:sql.query",
            false,
            Some(ErrorCode::AuthorizationDenied),
            "default deny",
        ),
        (
            "rbac permission grants",
            vec![],
            "alice",
            "tool:sql.query",
            true,
            None,
            "permission `tool:sql.*:invoke`",
        ),
        (
            "matching allow grants",
            vec![policy("p-allow", "ALLOW", &["tool:crm.*"], &["invoke"], "true")],
            "bob",
            "tool:crm.lookup",
            true,
            None,
            "allowed by policy `p-allow`",
        ),
        (
            "allow whose condition fails grants nothing",
            vec![policy("p-allow", "ALLOW", &["tool:crm.*"], &["invoke"], "false")],
            "bob",
            "tool:crm.lookup",
            false,
            Some(ErrorCode::AuthorizationDenied),
            "default deny",
        ),
        (
            "deny beats an rbac permission",
            vec![policy("p-deny", "DENY", &[], &[], "request.user.id == 'alice'")],
            "alice",
            "tool:sql.query",
            false,
            Some(ErrorCode::PolicyViolation),
            "denied by policy `p-deny`",
        ),
        (
            "deny beats a matching allow",
            vec![
                policy("a-allow", "ALLOW", &["tool:**"], &[], "true"),
                policy("b-deny", "DENY", &["tool:**"], &[], "true"),
            ],
            "bob",
            "tool:crm.lookup",
            false,
            Some(ErrorCode::PolicyViolation),
            "denied by policy `b-deny`",
        ),
        (
            "a deny out of scope does not apply",
            vec![policy("p-deny", "DENY", &["tool:crm.*"], &[], "true")],
            "alice",
            "tool:sql.query",
            true,
            None,
            "permission",
        ),
        (
            "a deny for another action does not apply",
            vec![policy("p-deny", "DENY", &[], &["delete"], "true")],
            "alice",
            "tool:sql.query",
            true,
            None,
            "permission",
        ),
        (
            "audit only flags a denial",
            vec![policy("p-audit", "AUDIT", &[], &[], "true")],
            "bob",
            "tool:sql.query",
            false,
            Some(ErrorCode::AuthorizationDenied),
            "default deny",
        ),
        (
            "audit only flags an allow",
            vec![policy("p-audit", "AUDIT", &[], &[], "true")],
            "alice",
            "tool:sql.query",
            true,
            None,
            "permission",
        ),
        (
            "an evaluation error denies and names the policy",
            vec![
                policy("a-allow", "ALLOW", &[], &[], "true"),
                policy("p-broken", "ALLOW", &[], &[], "request.params.amount > 10"),
            ],
            "alice",
            "tool:sql.query",
            false,
            Some(ErrorCode::PolicyEvaluationFailed),
            "policy `p-broken` (version 1) failed to evaluate",
        ),
        (
            "a condition that is not a bool denies",
            vec![policy("p-dyn", "DENY", &[], &[], "dyn(request.params)")],
            "alice",
            "tool:sql.query",
            false,
            Some(ErrorCode::PolicyEvaluationFailed),
            "not a `bool`",
        ),
        (
            "the error of a non-matching scope is never seen",
            vec![policy("p-broken", "DENY", &["tool:crm.*"], &[], "request.params.amount > 10")],
            "alice",
            "tool:sql.query",
            true,
            None,
            "permission",
        ),
    ];
    for (name, policies, principal, resource, allowed, code, reason) in cases {
        let mut b = analyst_builder();
        for p in policies {
            b.add_policy(TENANT, p).unwrap();
        }
        let engine = engine_for(&b);
        let decision = engine.decide(&request(principal, resource, "invoke"));
        assert_eq!(decision.allowed(), allowed, "{name}: {}", decision.reason());
        assert_eq!(decision.code(), code, "{name}: {}", decision.reason());
        assert!(decision.reason().contains(reason), "{name}: {}", decision.reason());
    }
}

#[test]
fn matches_audit_flags_risk_and_obligations() {
    let mut b = analyst_builder();
    b.add_policy(
        TENANT,
        with_parameters(policy("p-audit", "AUDIT", &[], &[], "true"), &[("risk_score", "0.7")]),
    )
    .unwrap();
    b.add_policy(
        TENANT,
        with_parameters(
            policy("p-allow", "ALLOW", &["tool:sql.*"], &["invoke"], "true"),
            &[("risk_score", "0.2"), ("obligation.mfa_required", "true"), ("obligation.notify", "security")],
        ),
    )
    .unwrap();
    b.add_policy(
        TENANT,
        with_parameters(policy("p-quiet", "AUDIT", &[], &[], "false"), &[("risk_score", "0.9")]),
    )
    .unwrap();
    let engine = engine_for(&b);
    let decision = engine.decide(&request("alice", "tool:sql.query", "invoke"));
    assert!(decision.allowed());
    let matched: Vec<(&str, &str, Effect)> =
        decision.matched().iter().map(|m| (m.policy_id(), m.version(), m.effect())).collect();
    assert_eq!(matched, [("p-allow", "1", Effect::Allow), ("p-audit", "1", Effect::Audit)]);
    assert_eq!(decision.audit_flags().map(|m| m.policy_id()).collect::<Vec<_>>(), ["p-audit"]);
    assert!(decision.flagged_for_audit());
    assert!((decision.risk_score() - 0.7).abs() < f64::EPSILON);
    assert_eq!(decision.conditions(), ["mfa_required", "notify=security"]);
    let result = decision.to_authorize_result();
    assert!(result.authorized);
    assert_eq!(result.applied_policies, ["p-allow", "p-audit"]);
    assert!(decision.to_error().is_none());
}

#[test]
fn tenant_boundary_comes_first() {
    let mut b = analyst_builder();
    b.add_policy(TENANT, policy("p-allow", "ALLOW", &[], &[], "true")).unwrap();
    let engine = engine_for(&b);
    let mut other_tenant = request("alice", "tool:sql.query", "invoke");
    other_tenant.principal.tenant_id = "globex".to_owned();
    let mut foreign_resource = request("alice", "tool:sql.query", "invoke");
    foreign_resource.resource.tenant_id = "globex".to_owned();
    let mut shared_resource = request("alice", "tool:sql.query", "invoke");
    shared_resource.resource.tenant_id.clear();
    for (r, allowed) in [(other_tenant, false), (foreign_resource, false), (shared_resource, true)] {
        let decision = engine.decide(&r);
        assert_eq!(decision.allowed(), allowed, "{}", decision.reason());
        if !allowed {
            assert_eq!(decision.code(), Some(ErrorCode::TenantAccessDenied));
            assert!(decision.reason().starts_with("tenant boundary"));
        }
    }
}

#[test]
fn hard_requirements_beat_allow_policies_and_break_glass() {
    let mut b = analyst_builder();
    b.add_role(TENANT, role("responder", &[], &["aesp:break_glass:use"])).unwrap();
    b.assign_role(TENANT, "alice", "responder");
    b.add_policy(TENANT, policy("p-allow", "ALLOW", &[], &[], "true")).unwrap();
    let engine = engine_for(&b);
    let base = || {
        let mut r = request("alice", "tool:sql.query", "invoke");
        r.break_glass = Some("incident 42".to_owned());
        r
    };
    let mut needs_role = base();
    needs_role.resource.required_roles = vec!["dba".to_owned()];
    let mut inherited_role = base();
    inherited_role.resource.required_roles = vec!["viewer".to_owned()];
    let mut needs_permission = base();
    needs_permission.resource.required_permissions = vec!["tool:payments.refund:invoke".to_owned()];
    let mut held_permission = base();
    held_permission.resource.required_permissions = vec!["tool:reports.daily:read".to_owned()];
    let mut classified = base();
    classified.resource.classification = "secret".to_owned();
    classified.principal.clearance = "confidential".to_owned();
    let mut cleared = base();
    cleared.resource.classification = "Secret".to_owned();
    cleared.principal.clearance = "TOP_SECRET".to_owned();
    let mut no_clearance = base();
    no_clearance.resource.classification = "public".to_owned();
    let mut unknown_label = base();
    unknown_label.resource.classification = "cosmic".to_owned();
    unknown_label.principal.clearance = "top_secret".to_owned();
    let table = [
        ("missing role", needs_role, Some(ErrorCode::RoleRequired)),
        ("inherited role counts", inherited_role, None),
        ("missing permission", needs_permission, Some(ErrorCode::InsufficientPermissions)),
        ("inherited permission counts", held_permission, None),
        ("clearance below classification", classified, Some(ErrorCode::SecurityClearanceInsufficient)),
        ("clearance above classification, any case", cleared, None),
        ("no clearance", no_clearance, Some(ErrorCode::SecurityClearanceInsufficient)),
        ("unknown label", unknown_label, Some(ErrorCode::SecurityClearanceInsufficient)),
    ];
    for (name, r, code) in table {
        let decision = engine.decide(&r);
        assert_eq!(decision.code(), code, "{name}: {}", decision.reason());
        assert_eq!(decision.allowed(), code.is_none(), "{name}: {}", decision.reason());
        assert!(!decision.break_glass(), "{name}");
        if code.is_some() {
            assert!(decision.reason().starts_with("hard requirement"), "{name}: {}", decision.reason());
        }
    }
}

#[test]
fn inheritance_through_five_levels_and_cycles() {
    let mut b = builder();
    b.add_role(TENANT, role("l1", &[], &["tool:l1.*:invoke"])).unwrap();
    b.add_role(TENANT, role("l2", &["l1"], &["tool:l2.*:invoke"])).unwrap();
    b.add_role(TENANT, role("l3", &["l2"], &[])).unwrap();
    b.add_role(TENANT, role("l4", &["l3"], &["tool:l4.*:invoke"])).unwrap();
    b.add_role(TENANT, role("l5", &["l4"], &[])).unwrap();
    b.assign_role(TENANT, "eve", "l5");
    b.assign_role(TENANT, "mid", "l3");
    let engine = engine_for(&b);
    for (principal, resource, allowed) in [
        ("eve", "tool:l1.x", true),
        ("eve", "tool:l4.x", true),
        ("mid", "tool:l1.x", true),
        ("mid", "tool:l4.x", false),
    ] {
        assert_eq!(
            engine.decide(&request(principal, resource, "invoke")).allowed(),
            allowed,
            "{principal} {resource}"
        );
    }
    let snapshot = engine.snapshot();
    assert_eq!(snapshot.effective_roles(TENANT, "eve", &[]), ["l1", "l2", "l3", "l4", "l5"]);
    assert_eq!(snapshot.effective_permissions(TENANT, "mid", &[]), ["tool:l1.*:invoke", "tool:l2.*:invoke"]);
    assert!(snapshot.check_permission(TENANT, "eve", &[], "tool:l2.y:invoke"));
    assert!(!snapshot.check_permission(TENANT, "eve", &[], "tool:l2.y.z:invoke"));

    let mut cyclic = builder();
    cyclic.add_role(TENANT, role("a", &["c"], &[])).unwrap();
    cyclic.add_role(TENANT, role("b", &["a"], &[])).unwrap();
    cyclic.add_role(TENANT, role("c", &["b"], &[])).unwrap();
    let error = Engine::default().build(&cyclic).unwrap_err();
    assert!(matches!(error, PolicyError::RoleCycle { .. }), "{error}");
    assert!(error.to_string().starts_with("role hierarchy has a cycle through"));
}

#[test]
fn wildcard_boundaries_in_permissions_and_scopes() {
    let mut b = builder();
    b.add_role(TENANT, role("sql", &[], &["tools/sql.*:invoke"])).unwrap();
    b.add_role(TENANT, role("root", &[], &["**:*"])).unwrap();
    b.assign_role(TENANT, "s", "sql");
    b.assign_role(TENANT, "r", "root");
    b.add_policy(TENANT, policy("deny-deep", "DENY", &["tools/**"], &["delete"], "true")).unwrap();
    let engine = engine_for(&b);
    let table = [
        ("s", "tools/sql.read", "invoke", true),
        ("s", "tools/sqlx", "invoke", false),
        ("s", "tools/sql.read.all", "invoke", false),
        ("s", "tools/sql.read", "delete", false),
        ("r", "anything/at.all", "whatever", true),
        ("r", "tools/a/b.c", "delete", false),
        ("r", "toolsx/a", "delete", true),
    ];
    for (principal, resource, action, allowed) in table {
        let decision = engine.decide(&request(principal, resource, action));
        assert_eq!(decision.allowed(), allowed, "{principal} {resource} {action}: {}", decision.reason());
    }
}

#[test]
fn clearance_in_conditions_compares_by_rank() {
    let mut b = builder();
    b.add_policy(
        TENANT,
        with_parameters(
            policy(
                "cleared",
                "ALLOW",
                &[],
                &[],
                "clearance.dominates(request.user.clearance, policy.parameters.level) && clearance.rank('secret') == 3",
            ),
            &[("level", "confidential")],
        ),
    )
    .unwrap();
    let engine = engine_for(&b);
    for (clearance, allowed) in
        [("secret", true), ("CONFIDENTIAL", true), ("internal", false), ("public", false)]
    {
        let mut r = request("bob", "tool:x", "invoke");
        r.principal.clearance = clearance.to_owned();
        assert_eq!(engine.decide(&r).allowed(), allowed, "{clearance}");
    }
    // An unknown label is an evaluation error: fail closed.
    let mut r = request("bob", "tool:x", "invoke");
    r.principal.clearance = "cosmic".to_owned();
    let decision = engine.decide(&r);
    assert_eq!(decision.code(), Some(ErrorCode::PolicyEvaluationFailed));
    assert!(decision.reason().contains("unknown clearance `cosmic`"), "{}", decision.reason());
}

#[test]
fn break_glass_lifts_a_policy_deny_only() {
    let mut b = analyst_builder();
    b.add_role(TENANT, role("responder", &[], &["aesp:break_glass:use"])).unwrap();
    b.assign_role(TENANT, "alice", "responder");
    b.assign_role(TENANT, "carol", "responder");
    b.add_policy(TENANT, policy("freeze", "DENY", &["tool:sql.*"], &[], "true")).unwrap();
    let engine = engine_for(&b);
    let ask = |principal: &str, justification: Option<&str>| {
        let mut r = request(principal, "tool:sql.query", "invoke");
        r.break_glass = justification.map(str::to_owned);
        engine.decide(&r)
    };

    let lifted = ask("alice", Some("  prod incident INC-7  "));
    assert!(lifted.allowed(), "{}", lifted.reason());
    assert!(lifted.break_glass() && lifted.escalation_required());
    assert_eq!(
        lifted.reason(),
        "break-glass by `alice` lifted the DENY of policy `freeze` (escalated): prod incident INC-7"
    );
    assert_eq!(lifted.matched().first().map(|m| m.policy_id()), Some("freeze"));

    let table = [
        ("alice", None, "denied by policy `freeze`"),
        ("alice", Some(" "), "break-glass needs a justification"),
        ("bob", Some("incident"), "lacks the permission `aesp:break_glass:use`"),
        ("carol", Some("incident"), "only where a permission or ALLOW policy grants"),
    ];
    for (principal, justification, reason) in table {
        let decision = ask(principal, justification);
        assert!(!decision.allowed(), "{principal}");
        assert!(!decision.break_glass());
        assert_eq!(decision.code(), Some(ErrorCode::PolicyViolation));
        assert!(decision.reason().contains(reason), "{principal}: {}", decision.reason());
    }

    // Never over an evaluation error.
    let mut b = analyst_builder();
    b.add_role(TENANT, role("responder", &[], &["aesp:break_glass:use"])).unwrap();
    b.assign_role(TENANT, "alice", "responder");
    b.add_policy(TENANT, policy("broken", "DENY", &[], &[], "request.params.x == 1")).unwrap();
    let engine = engine_for(&b);
    let mut r = request("alice", "tool:sql.query", "invoke");
    r.break_glass = Some("incident".to_owned());
    let decision = engine.decide(&r);
    assert!(!decision.allowed());
    assert_eq!(decision.code(), Some(ErrorCode::PolicyEvaluationFailed));
}

#[test]
fn the_example_conditions_behave_as_their_words_say() {
    let mut b = builder();
    b.add_policy(
        TENANT,
        policy(
            "office-hours",
            "ALLOW",
            &["tool:hours"],
            &[],
            "request.time.getHours() >= 9 && request.time.getHours() <= 17",
        ),
    )
    .unwrap();
    b.add_policy(
        TENANT,
        policy(
            "data-science",
            "ALLOW",
            &["tool:data"],
            &[],
            "'data-scientist' in request.user.roles && request.resource.classification in ['public', 'internal']",
        ),
    )
    .unwrap();
    b.add_policy(
        TENANT,
        policy(
            "spend",
            "ALLOW",
            &["tool:spend"],
            &[],
            "request.tenant.cost_center in organization.approved_cost_centers && request.estimated_cost <= request.user.spending_limit",
        ),
    )
    .unwrap();
    b.add_role(TENANT, role("data-scientist", &[], &[])).unwrap();
    b.assign_role(TENANT, "dana", "data-scientist");
    let engine = engine_for(&b);

    let at = |ms: u64| {
        let mut r = request("bob", "tool:hours", "invoke");
        r.time_ms = ms;
        engine.decide(&r).allowed()
    };
    assert!(at(DAY_MS)); // 10:13 UTC
    assert!(!at(NIGHT_MS)); // 22:13 UTC
    assert!(at(DAY_MS + 7 * 3_600_000)); // 17:13 UTC: getHours() is 17
    assert!(!at(DAY_MS - 2 * 3_600_000)); // 08:13 UTC

    let data = |principal: &str, classification: &str| {
        let mut r = request(principal, "tool:data", "invoke");
        r.resource.classification = classification.to_owned();
        r.principal.clearance = "top_secret".to_owned();
        engine.decide(&r).allowed()
    };
    assert!(data("dana", "internal"));
    assert!(data("dana", "PUBLIC"));
    assert!(!data("dana", "confidential"));
    assert!(!data("bob", "public"));

    let spend = |cost_center: &str, cost: f64, limit: Value| {
        let mut r = request("bob", "tool:spend", "invoke");
        r.tenant_attributes.insert("cost_center".to_owned(), Value::string(cost_center));
        r.estimated_cost = cost;
        r.principal.attributes.insert("spending_limit".to_owned(), limit);
        engine.decide(&r)
    };
    assert!(spend("cc-100", 250.0, Value::float(500.0)).allowed());
    assert!(spend("cc-200", 500.0, Value::integer(500)).allowed());
    assert!(!spend("cc-300", 10.0, Value::float(500.0)).allowed());
    assert!(!spend("cc-100", 500.5, Value::float(500.0)).allowed());
    // A missing attribute is an evaluation error: fail closed, naming the policy.
    let mut r = request("bob", "tool:spend", "invoke");
    r.tenant_attributes.insert("cost_center".to_owned(), Value::string("cc-100"));
    let decision = engine.decide(&r);
    assert_eq!(decision.code(), Some(ErrorCode::PolicyEvaluationFailed));
    assert!(decision.reason().contains("`spend`"), "{}", decision.reason());
}

#[test]
fn network_functions_in_conditions() {
    let mut b = builder();
    b.add_policy(
        TENANT,
        policy(
            "office-network",
            "ALLOW",
            &[],
            &[],
            "cidr('10.0.0.0/8').containsIP(request.source_ip) && !ip(request.source_ip).isLoopback()",
        ),
    )
    .unwrap();
    let engine = engine_for(&b);
    for (ip, allowed) in [("10.1.2.3", true), ("192.168.0.1", false), ("::1", false)] {
        let mut r = request("bob", "tool:x", "invoke");
        r.source_ip = ip.to_owned();
        assert_eq!(engine.decide(&r).allowed(), allowed, "{ip}");
    }
    let mut r = request("bob", "tool:x", "invoke");
    r.source_ip = "not an ip".to_owned();
    assert_eq!(engine.decide(&r).code(), Some(ErrorCode::PolicyEvaluationFailed));
}

#[test]
fn validation_reports_every_problem_with_its_position() {
    let engine = Engine::default();
    let mut installed = builder();
    installed.add_policy(TENANT, policy("ok", "ALLOW", &[], &[], "true")).unwrap();
    engine.install(engine.build(&installed).unwrap());

    let valid = policy("v", "DENY", &["tool:**"], &["invoke"], "request.user.spending_limit > 10.0");
    assert_eq!(engine.validate(&valid), []);

    let broken = with_parameters(
        policy("b", "PERMIT", &["tool:sql*"], &[], "request.user.id == 'a' &&\n  request.user.salary > 1"),
        &[("risk_score", "7")],
    );
    let errors: Vec<(String, u32, u32)> =
        engine.validate(&broken).iter().map(|e| (e.field().to_owned(), e.line(), e.column())).collect();
    let fields: Vec<&str> = errors.iter().map(|(f, ..)| f.as_str()).collect();
    assert_eq!(fields, ["rule.effect", "applies_to[0]", "rule.parameters.risk_score", "rule.condition"]);
    assert_eq!(errors.last().map(|(_, l, c)| (*l, *c)), Some((2, 15)));

    let syntax = policy("s", "ALLOW", &[], &[], "request.user.id == ");
    let errors = engine.validate(&syntax);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].field(), errors[0].line()), ("rule.condition", 1));
    assert!(errors[0].column() > 0);

    // A snapshot with an invalid policy is refused, with the errors.
    let mut bad = builder();
    bad.add_policy(TENANT, policy("bad", "ALLOW", &[], &[], "nope")).unwrap();
    let error = engine.build(&bad).unwrap_err();
    assert!(matches!(&error, PolicyError::InvalidPolicy { policy_id, .. } if policy_id == "bad"));
    let error = aesp_core::Error::from(error);
    assert_eq!(error.code(), ErrorCode::ValidationFailed);
    assert_eq!(error.detail("policy_id"), Some("bad"));
}

#[test]
fn deepest_accepted_condition_evaluates_on_a_small_stack() {
    let depth = aesp_policy::MAX_EXPRESSION_DEPTH;
    // `1 + 1 + ... + 1 > 0` is a left-leaning tree: one level per `+`.
    let condition = format!("{} > 0", vec!["1"; depth - 2].join(" + "));
    let mut b = builder();
    b.add_policy(TENANT, policy("deep", "ALLOW", &[], &[], &condition)).unwrap();
    let engine = engine_for(&b);
    let allowed = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || engine.decide(&request("bob", "tool:x", "invoke")).allowed())
        .unwrap()
        .join()
        .unwrap();
    assert!(allowed);
}

#[test]
fn snapshots_are_versioned_digested_and_swapped_atomically() {
    let engine = Engine::default();
    assert_eq!(engine.snapshot().version(), 0);
    assert!(!engine.decide(&request("alice", "tool:sql.query", "invoke")).allowed());

    let v1 = engine.build(&analyst_builder()).unwrap();
    let mut with_deny = analyst_builder();
    with_deny.add_policy(TENANT, policy("freeze", "DENY", &[], &[], "true")).unwrap();
    let v2_builder = {
        let mut b = SnapshotBuilder::new(2, schema());
        b.set_organization_attribute(
            "approved_cost_centers",
            Value::array([Value::string("cc-100"), Value::string("cc-200")]),
        )
        .unwrap();
        b.add_policy(TENANT, policy("freeze", "DENY", &[], &[], "true")).unwrap();
        // Same content as `with_deny`, added in another order.
        b.assign_role(TENANT, "alice", "analyst");
        b.add_role(TENANT, role("analyst", &["viewer"], &["tool:sql.*:invoke"])).unwrap();
        b.add_role(TENANT, role("viewer", &[], &["tool:reports.*:read"])).unwrap();
        b
    };
    let v2 = engine.build(&v2_builder).unwrap();
    assert_eq!(v2.digest(), engine.build(&with_deny).unwrap().digest(), "order does not matter");
    assert_ne!(v1.digest(), v2.digest(), "content does");
    assert_eq!(v1.digest_hex().len(), 64);

    let previous = engine.install(v1.clone());
    assert_eq!(previous.version(), 0);
    let in_flight = engine.snapshot();
    engine.install(v2.clone());
    let r = request("alice", "tool:sql.query", "invoke");
    // A decision that started on v1 finishes on v1, whatever is installed meanwhile.
    let old = engine.decide_with(&in_flight, &r);
    assert!(old.allowed());
    assert_eq!(old.snapshot_version(), 1);
    let new = engine.decide(&r);
    assert!(!new.allowed());
    assert_eq!(new.snapshot_version(), 2);
    assert_eq!(engine.snapshot().policy_ids(TENANT), ["freeze"]);
}

#[test]
fn decisions_run_while_snapshots_are_swapped() {
    let engine = std::sync::Arc::new(Engine::default());
    let allow = engine.build(&analyst_builder()).unwrap();
    let mut deny_builder = analyst_builder();
    deny_builder.add_policy(TENANT, policy("freeze", "DENY", &[], &[], "true")).unwrap();
    let deny = engine.build(&deny_builder).unwrap();
    engine.install(allow.clone());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            let engine = &engine;
            scope.spawn(move || {
                let r = request("alice", "tool:sql.query", "invoke");
                for _ in 0..300 {
                    let decision = engine.decide(&r);
                    // Each decision is consistent with one whole snapshot.
                    assert_eq!(decision.allowed(), decision.matched().is_empty(), "{}", decision.reason());
                }
            });
        }
        for i in 0..300 {
            engine.install(if i % 2 == 0 { deny.clone() } else { allow.clone() });
        }
    });
}

#[test]
fn field_paths_negation_and_shadowing_keep_their_meaning() {
    let table = [
        // (condition, params has `amount`, allowed)
        ("has(request.params.amount) && request.params.amount > 10", true, true),
        ("has(request.params.amount)", false, false),
        ("!has(request.params.amount)", false, true),
        ("!(request.user.id == 'bob')", true, false),
        ("!!(request.user.id == 'bob')", true, true),
        // A comprehension variable named like a context variable shadows it.
        ("['bob'].exists(request, request == 'bob')", true, true),
        ("[request.user.id].all(x, x == 'bob') && request.user.claims.size() == 1", true, true),
        ("request.user.claims.dept == 'ops' && request.user.claims['dept'] == 'ops'", true, true),
        ("request.params.`a.b` == 'dotted'", true, true),
        ("policy.parameters.level == 'x' && policy.id == 'p' && policy.version == '1'", true, true),
        (
            "organization.approved_cost_centers.size() == 2 && 'cc-100' in organization.approved_cost_centers",
            true,
            true,
        ),
        (
            "request.tenant.id == 'acme' && request.resource.name == 'tool:x' && request.session.id == 's1'",
            true,
            true,
        ),
    ];
    for (condition, with_amount, allowed) in table {
        let mut b = builder();
        b.add_policy(TENANT, with_parameters(policy("p", "ALLOW", &[], &[], condition), &[("level", "x")]))
            .unwrap();
        let engine = engine_for(&b);
        let mut r = request("bob", "tool:x", "invoke");
        r.session.id = "s1".to_owned();
        r.principal.claims.insert("dept".to_owned(), "ops".to_owned());
        r.params.insert("a.b".to_owned(), Value::string("dotted"));
        if with_amount {
            r.params.insert("amount".to_owned(), Value::integer(42));
        }
        let decision = engine.decide(&r);
        assert_eq!(decision.allowed(), allowed, "{condition}: {}", decision.reason());
        assert_eq!(decision.code().is_none(), allowed, "{condition}: {}", decision.reason());
    }

    // A missing key is an error that names it; `!` of a non-bool is an error too.
    for (condition, reason) in [
        ("request.params.amount > 10", "no such key or field `amount` in `request.params`"),
        ("request.user.spending_limit > 1.0", "no such key or field `spending_limit` in `request.user`"),
        ("!dyn(request.params)", "failed to evaluate"),
    ] {
        let mut b = builder();
        b.add_policy(TENANT, policy("p", "DENY", &[], &[], condition)).unwrap();
        let decision = engine_for(&b).decide(&request("bob", "tool:x", "invoke"));
        assert_eq!(decision.code(), Some(ErrorCode::PolicyEvaluationFailed), "{condition}");
        assert!(decision.reason().contains(reason), "{condition}: {}", decision.reason());
    }
}
