//! Properties of the decision engine: adding a DENY policy never turns a deny into an allow;
//! removing a role never adds a permission; a decision depends only on the snapshot and the
//! request; and, as the fuzz target checks, arbitrary condition text never panics and an
//! accepted DENY never allows.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly on a broken fixture")]

use std::collections::{BTreeMap, BTreeSet};

use aesp_core::proto::v1::{PolicyDefinition, PolicyRule, RoleDefinition, Value};
use aesp_policy::{Decision, Engine, Principal, Request, Resource, Schema, SnapshotBuilder};
use proptest::{collection::vec, prelude::*, sample::subsequence};

const TENANT: &str = "t";
const RESOURCES: &[&str] = &["tool:sql.query", "tool:sql.admin", "tool:crm.lookup", "files/a/b.txt"];
const ACTIONS: &[&str] = &["invoke", "read", "delete"];
const SCOPES: &[&str] = &["tool:sql.*", "tool:**", "files/**", "tool:crm.lookup"];
const ACTION_PATTERNS: &[&str] = &["invoke", "read", "*"];
const CONDITIONS: &[&str] = &[
    "true",
    "false",
    "request.action == 'invoke'",
    "'r1' in request.user.roles",
    "request.estimated_cost > 50.0",
    "request.params.x == 1",
];
const PERMISSIONS: &[&str] = &[
    "tool:sql.*:invoke",
    "tool:**:read",
    "files/**:*",
    "**:*",
    "tool:crm.lookup:invoke",
    "aesp:break_glass:use",
];

#[derive(Clone, Debug)]
struct PolicySpec {
    effect: &'static str,
    scope: Vec<&'static str>,
    actions: Vec<&'static str>,
    condition: &'static str,
    risk: Option<u8>,
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    (
        prop::sample::select(vec!["ALLOW", "DENY", "AUDIT"]),
        subsequence(SCOPES.to_vec(), 0..=2),
        subsequence(ACTION_PATTERNS.to_vec(), 0..=2),
        prop::sample::select(CONDITIONS.to_vec()),
        prop::option::of(0u8..=10),
    )
        .prop_map(|(effect, scope, actions, condition, risk)| PolicySpec {
            effect,
            scope,
            actions,
            condition,
            risk,
        })
}

fn definition(id: &str, spec: &PolicySpec) -> PolicyDefinition {
    let mut parameters = BTreeMap::new();
    if let Some(risk) = spec.risk {
        parameters.insert("risk_score".to_owned(), format!("{}", f64::from(risk) / 10.0));
    }
    PolicyDefinition {
        policy_id: id.to_owned(),
        version: "1".to_owned(),
        enabled: true,
        applies_to: spec.scope.iter().map(|s| (*s).to_owned()).collect(),
        rule: Some(PolicyRule {
            condition: spec.condition.to_owned(),
            effect: spec.effect.to_owned(),
            actions: spec.actions.iter().map(|s| (*s).to_owned()).collect(),
            parameters,
        }),
        ..Default::default()
    }
}

/// Roles `r0..rn`, each with parents among the earlier ones (so the graph is acyclic).
#[derive(Clone, Debug)]
struct RoleSpec {
    parents: Vec<usize>,
    permissions: Vec<&'static str>,
}

fn roles() -> impl Strategy<Value = Vec<RoleSpec>> {
    vec((vec(any::<prop::sample::Index>(), 0..=2), subsequence(PERMISSIONS.to_vec(), 0..=2)), 0..=6).prop_map(
        |raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (parents, permissions))| RoleSpec {
                    parents: if i == 0 { Vec::new() } else { parents.iter().map(|p| p.index(i)).collect() },
                    permissions,
                })
                .collect()
        },
    )
}

#[derive(Clone, Debug)]
struct RequestSpec {
    resource: &'static str,
    action: &'static str,
    cost: f64,
    with_param: bool,
    break_glass: bool,
}

fn request_spec() -> impl Strategy<Value = RequestSpec> {
    (
        prop::sample::select(RESOURCES.to_vec()),
        prop::sample::select(ACTIONS.to_vec()),
        0.0f64..100.0,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(resource, action, cost, with_param, break_glass)| RequestSpec {
            resource,
            action,
            cost,
            with_param,
            break_glass,
        })
}

fn request(spec: &RequestSpec) -> Request {
    let mut params = BTreeMap::new();
    if spec.with_param {
        params.insert("x".to_owned(), Value::integer(1));
    }
    Request {
        tenant_id: TENANT.to_owned(),
        principal: Principal { id: "p".to_owned(), tenant_id: TENANT.to_owned(), ..Default::default() },
        resource: Resource { name: spec.resource.to_owned(), ..Default::default() },
        action: spec.action.to_owned(),
        estimated_cost: spec.cost,
        params,
        break_glass: spec.break_glass.then(|| "incident".to_owned()),
        ..Default::default()
    }
}

/// A builder with the roles (all but `skip`, whose references are dropped too), the
/// principal `p` assigned to `assigned`, and the policies.
fn builder(
    roles: &[RoleSpec],
    assigned: &[usize],
    skip: Option<usize>,
    policies: &[PolicySpec],
) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new(1, Schema::new());
    for (i, spec) in roles.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let role = RoleDefinition {
            role_id: format!("r{i}"),
            parent_roles: spec
                .parents
                .iter()
                .filter(|p| Some(**p) != skip)
                .map(|p| format!("r{p}"))
                .collect(),
            permissions: spec.permissions.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        b.add_role(TENANT, role).unwrap();
    }
    for i in assigned {
        if *i < roles.len() && Some(*i) != skip {
            b.assign_role(TENANT, "p", &format!("r{i}"));
        }
    }
    for (i, spec) in policies.iter().enumerate() {
        b.add_policy(TENANT, definition(&format!("p{i}"), spec)).unwrap();
    }
    b
}

fn decide(b: &SnapshotBuilder, r: &Request) -> Decision {
    let engine = Engine::default();
    let snapshot = engine.build(b).unwrap();
    engine.decide_with(&snapshot, r)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn adding_a_deny_never_turns_a_deny_into_an_allow(
        roles in roles(),
        assigned in vec(0usize..6, 0..3),
        policies in vec(policy_spec(), 0..6),
        extra in policy_spec(),
        r in request_spec(),
    ) {
        let r = request(&r);
        let before = decide(&builder(&roles, &assigned, None, &policies), &r);
        let mut b = builder(&roles, &assigned, None, &policies);
        b.add_policy(TENANT, definition("zz-added", &PolicySpec { effect: "DENY", ..extra })).unwrap();
        let after = decide(&b, &r);
        prop_assert!(before.allowed() || !after.allowed(), "before: {}; after: {}", before.reason(), after.reason());
    }

    #[test]
    fn removing_a_role_never_adds_a_permission(
        roles in roles(),
        assigned in vec(0usize..6, 0..4),
        removed in any::<prop::sample::Index>(),
        requests in vec(request_spec(), 1..6),
    ) {
        prop_assume!(!roles.is_empty());
        let removed = removed.index(roles.len());
        let engine = Engine::default();
        let full = engine.build(&builder(&roles, &assigned, None, &[])).unwrap();
        let less = engine.build(&builder(&roles, &assigned, Some(removed), &[])).unwrap();
        let before: BTreeSet<String> = full.effective_permissions(TENANT, "p", &[]).into_iter().collect();
        let after: BTreeSet<String> = less.effective_permissions(TENANT, "p", &[]).into_iter().collect();
        prop_assert!(after.is_subset(&before), "gained {:?}", after.difference(&before).collect::<Vec<_>>());
        for spec in &requests {
            let r = request(spec);
            let permission = format!("{}:{}", spec.resource, spec.action);
            prop_assert!(!less.check_permission(TENANT, "p", &[], &permission) || full.check_permission(TENANT, "p", &[], &permission));
            prop_assert!(!engine.decide_with(&less, &r).allowed() || engine.decide_with(&full, &r).allowed());
        }
    }

    #[test]
    fn a_decision_depends_only_on_the_snapshot_and_the_request(
        roles in roles(),
        assigned in vec(0usize..6, 0..3),
        policies in vec(policy_spec(), 0..6),
        r in request_spec(),
        others in vec(request_spec(), 0..4),
    ) {
        let b = builder(&roles, &assigned, None, &policies);
        let mut reversed_policies: Vec<(usize, PolicySpec)> = policies.iter().cloned().enumerate().collect();
        reversed_policies.reverse();
        // The same content, built in another order, by another engine.
        let mut other = SnapshotBuilder::new(1, Schema::new());
        for (i, spec) in &reversed_policies {
            other.add_policy(TENANT, definition(&format!("p{i}"), spec)).unwrap();
        }
        for (i, spec) in roles.iter().enumerate().rev() {
            other.add_role(TENANT, RoleDefinition {
                role_id: format!("r{i}"),
                parent_roles: spec.parents.iter().map(|p| format!("r{p}")).collect(),
                permissions: spec.permissions.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            }).unwrap();
        }
        for i in assigned.iter().rev() {
            if *i < roles.len() {
                other.assign_role(TENANT, "p", &format!("r{i}"));
            }
        }
        let first = Engine::default();
        let second = Engine::default();
        let s1 = first.build(&b).unwrap();
        let s2 = second.build(&other).unwrap();
        prop_assert_eq!(s1.digest(), s2.digest());
        let r = request(&r);
        let a = first.decide_with(&s1, &r);
        for o in &others {
            let _ = second.decide_with(&s2, &request(o));
        }
        let b2 = second.decide_with(&s2, &r);
        let again = first.decide_with(&s1, &r);
        prop_assert_eq!(&a, &b2);
        prop_assert_eq!(&a, &again);
    }
}

/// Pieces of conditions, valid and not, to assemble arbitrary text from.
const TOKENS: &[&str] = &[
    "request",
    "request.user",
    ".roles",
    ".id",
    ".params",
    ".x",
    "policy",
    "organization",
    "clearance",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "'a'",
    "\"b\"",
    "1",
    "2.5",
    "3u",
    "true",
    "null",
    " && ",
    " || ",
    "!",
    "-",
    " + ",
    " * ",
    " / ",
    " % ",
    " == ",
    " != ",
    " < ",
    " >= ",
    " in ",
    " ? ",
    " : ",
    ",",
    ".",
    ".exists(v, ",
    ".all(v, ",
    "v",
    "size(",
    "ip(",
    "cidr(",
    ".containsIP(",
    "timestamp(",
    "int(",
    "b'",
    "'",
    "\\",
    "`",
    "has(",
    "@",
    "#",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// What the fuzz target checks, on assembled text: validation never panics, and an
    /// accepted DENY policy never allows.
    #[test]
    fn arbitrary_conditions_never_panic_and_a_deny_never_allows(
        tokens in vec(prop::sample::select(TOKENS.to_vec()), 0..24),
        r in request_spec(),
    ) {
        let condition: String = tokens.concat();
        let engine = Engine::default();
        let mut policy = definition("fuzzed", &PolicySpec {
            effect: "DENY",
            scope: Vec::new(),
            actions: Vec::new(),
            condition: "true",
            risk: None,
        });
        if let Some(rule) = policy.rule.as_mut() {
            rule.condition.clone_from(&condition);
        }
        let errors = engine.validate(&policy);
        let mut alone = SnapshotBuilder::new(1, Schema::new());
        alone.add_policy(TENANT, policy).unwrap();
        match engine.build(&alone) {
            Ok(snapshot) => {
                prop_assert!(errors.is_empty());
                prop_assert!(!engine.decide_with(&snapshot, &request(&r)).allowed(), "{condition}");
            }
            Err(_) => prop_assert!(!errors.is_empty(), "{condition}"),
        }
    }
}
