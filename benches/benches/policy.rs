//! One authorization decision: RBAC over a 5-level role hierarchy and 10 CEL policies, of which
//! 3 apply to the request (an ALLOW whose condition holds, an AUDIT whose condition holds, a
//! DENY whose condition does not) and 7 concern other resources or actions. With the `cedar`
//! feature, the same request and the same policies (and the same role permissions, as Cedar
//! `permit`s over a role hierarchy of entities) run through the `cedar-policy` crate in the
//! same run, and the ratio is printed.
//!
//! `cargo bench -p aesp-benches --bench policy --features cedar`
//!
//! Both sides build their request from the same plain values in every iteration: AESP clones
//! a prepared `Request`, Cedar builds its `Context` and `Request`. Cedar's entities (the
//! principal with its attributes, the roles, the resource groups) are built once, as AESP's
//! snapshot is; Cedar has no AUDIT effect, so AUDIT policies are `permit`s annotated
//! `@audit` (one evaluation, the cheaper choice for Cedar).
#![expect(clippy::expect_used, reason = "a benchmark fails by panicking")]

use std::{
    collections::BTreeMap,
    hint::black_box,
    time::{Duration, Instant},
};

use aesp_benches::TENANT;
use aesp_core::proto::v1::Value;
use aesp_policy::{Engine, Principal, Request, Resource};
use criterion::Criterion;

/// 2023-11-14T10:13:20Z.
const TIME_MS: u64 = 1_699_956_800_000;

/// The engine with the shared fixture: the 5-level role hierarchy and the ten policies
/// (`aesp_benches::POLICIES`), the same as the Host benchmark's.
fn aesp_engine() -> Engine {
    let engine = Engine::default();
    engine.install(engine.build(&aesp_benches::ten_policy_snapshot()).expect("snapshot"));
    engine
}

fn aesp_request() -> Request {
    Request {
        tenant_id: TENANT.to_owned(),
        principal: Principal {
            id: "alice".to_owned(),
            tenant_id: TENANT.to_owned(),
            principal_type: "user".to_owned(),
            clearance: "secret".to_owned(),
            mfa_verified: true,
            attributes: BTreeMap::from([("spending_limit".to_owned(), Value::float(100.0))]),
            ..Default::default()
        },
        resource: Resource {
            name: "tool:sql.query".to_owned(),
            tenant_id: TENANT.to_owned(),
            ..Default::default()
        },
        action: "invoke".to_owned(),
        time_ms: TIME_MS,
        source_ip: "10.1.2.3".to_owned(),
        estimated_cost: 25.0,
        ..Default::default()
    }
}

/// The median time of one call of `f`, over 41 batches.
fn median(mut f: impl FnMut()) -> Duration {
    const BATCH: u32 = 2_000;
    let mut samples: Vec<Duration> = (0..41)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            start.elapsed() / BATCH
        })
        .collect();
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

#[cfg(feature = "cedar")]
mod cedar {
    //! The same decision with the `cedar-policy` crate.

    use std::{collections::HashSet, str::FromStr};

    use cedar_policy::{
        Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicySet, Request, RestrictedExpression,
    };

    use aesp_benches::ROLES;

    const POLICIES: &str = r#"
        // The role permissions (RBAC), one per role.
        @id("rbac-analyst") permit(principal in Role::"analyst", action == Action::"invoke", resource in Group::"tool:sql");
        @id("rbac-senior") permit(principal in Role::"senior", action == Action::"read", resource in Group::"tool:reports");
        @id("rbac-lead") permit(principal in Role::"lead", action == Action::"read", resource in Group::"tool:crm");
        @id("rbac-manager") permit(principal in Role::"manager", action == Action::"read", resource in Group::"files");
        @id("rbac-director") permit(principal in Role::"director", action == Action::"read", resource in Group::"tool:hr");

        @id("sql-analysts") permit(principal, action == Action::"invoke", resource in Group::"tool:sql")
            when { principal in Role::"analyst" && context.estimated_cost <= principal.spending_limit };
        @id("expensive") @audit("true") permit(principal, action, resource in Group::"tool")
            when { context.estimated_cost > 10 };
        @id("outside-network") forbid(principal, action == Action::"invoke", resource in Group::"tool:sql")
            unless { context.source_ip.isInRange(ip("10.0.0.0/8")) };

        @id("refund-limit") forbid(principal, action == Action::"invoke", resource == Tool::"tool:payments.refund")
            when { context.amount > 1000 };
        @id("crm-read") permit(principal, action == Action::"read", resource in Group::"tool:crm")
            when { principal.mfa_verified };
        @id("files-delete") forbid(principal, action == Action::"delete", resource in Group::"files")
            unless { principal in Role::"admin" };
        @id("hr-access") @audit("true") permit(principal, action, resource in Group::"tool:hr") when { true };
        @id("reports") permit(principal, action == Action::"read", resource in Group::"tool:reports")
            when { context.hour >= 9 };
        @id("sql-admin") forbid(principal, action, resource == Tool::"tool:sql.admin")
            when { principal.clearance != "top_secret" };
        @id("sql-write") permit(principal, action == Action::"write", resource in Group::"tool:sql")
            when { principal in Role::"lead" };
    "#;

    fn uid(text: &str) -> EntityUid {
        EntityUid::from_str(text).expect("entity uid")
    }

    /// Cedar's side: policies and entities built once, as AESP's snapshot is.
    pub(crate) struct Peer {
        authorizer: Authorizer,
        policies: PolicySet,
        entities: Entities,
        principal: EntityUid,
        action: EntityUid,
        resource: EntityUid,
    }

    impl Peer {
        pub(crate) fn new() -> Self {
            let mut entities = Vec::new();
            for (index, (role, _)) in ROLES.iter().enumerate() {
                let parents: HashSet<EntityUid> = ROLES
                    .get(index + 1)
                    .map(|(parent, _)| uid(&format!("Role::\"{parent}\"")))
                    .into_iter()
                    .collect();
                entities.push(Entity::new_no_attrs(uid(&format!("Role::\"{role}\"")), parents));
            }
            let attributes = [
                ("spending_limit".to_owned(), RestrictedExpression::new_long(100)),
                ("mfa_verified".to_owned(), RestrictedExpression::new_bool(true)),
                ("clearance".to_owned(), RestrictedExpression::new_string("secret".to_owned())),
            ];
            entities.push(
                Entity::new(
                    uid(r#"User::"alice""#),
                    attributes.into_iter().collect(),
                    HashSet::from([uid(r#"Role::"director""#)]),
                )
                .expect("principal"),
            );
            entities.push(Entity::new_no_attrs(uid(r#"Group::"tool""#), HashSet::new()));
            entities.push(Entity::new_no_attrs(
                uid(r#"Group::"tool:sql""#),
                HashSet::from([uid(r#"Group::"tool""#)]),
            ));
            entities.push(Entity::new_no_attrs(
                uid(r#"Tool::"tool:sql.query""#),
                HashSet::from([uid(r#"Group::"tool:sql""#)]),
            ));
            Self {
                authorizer: Authorizer::new(),
                policies: PolicySet::from_str(POLICIES).expect("policies"),
                entities: Entities::from_entities(entities, None).expect("entities"),
                principal: uid(r#"User::"alice""#),
                action: uid(r#"Action::"invoke""#),
                resource: uid(r#"Tool::"tool:sql.query""#),
            }
        }

        /// One decision, building the request from plain values; returns whether it is
        /// allowed and how many policies were satisfied (the permits, the audit included).
        pub(crate) fn decide(&self, estimated_cost: i64, source_ip: &str, hour: i64) -> (bool, usize) {
            let context = Context::from_pairs([
                ("estimated_cost".to_owned(), RestrictedExpression::new_long(estimated_cost)),
                ("source_ip".to_owned(), RestrictedExpression::new_ip(source_ip)),
                ("hour".to_owned(), RestrictedExpression::new_long(hour)),
            ])
            .expect("context");
            let request = Request::new(
                self.principal.clone(),
                self.action.clone(),
                self.resource.clone(),
                context,
                None,
            )
            .expect("request");
            let response = self.authorizer.is_authorized(&request, &self.policies, &self.entities);
            (response.decision() == Decision::Allow, response.diagnostics().reason().count())
        }
    }
}

fn main() {
    let engine = aesp_engine();
    let prepared = aesp_request();
    let decision = engine.decide(&prepared);
    assert!(decision.allowed(), "{}", decision.reason());
    let matched: Vec<&str> = decision.matched().iter().map(|m| m.policy_id()).collect();
    assert_eq!(matched, ["expensive", "sql-analysts"], "the ALLOW and the AUDIT match, the DENY does not");
    assert!(decision.flagged_for_audit());

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("policy_decision");
    group.bench_function("aesp", |b| b.iter(|| engine.decide(black_box(&prepared)).allowed()));
    group.bench_function("aesp_with_request", |b| {
        b.iter(|| {
            let request = black_box(&prepared).clone();
            engine.decide(&request).allowed()
        });
    });
    #[cfg(feature = "cedar")]
    let peer = {
        let peer = cedar::Peer::new();
        let (allowed, satisfied) = peer.decide(25, "10.1.2.3", 10);
        assert!(allowed && satisfied == 3, "cedar: allowed {allowed}, {satisfied} satisfied");
        group.bench_function("cedar_with_request", |b| {
            b.iter(|| peer.decide(black_box(25), "10.1.2.3", 10).0)
        });
        peer
    };
    group.finish();
    criterion.final_summary();

    let aesp = median(|| {
        black_box(engine.decide(black_box(&prepared)).allowed());
    });
    let aesp_with_request = median(|| {
        let request = black_box(&prepared).clone();
        black_box(engine.decide(&request).allowed());
    });
    println!("median decision: aesp {aesp:.2?} (request prepared), {aesp_with_request:.2?} (request built)");
    #[cfg(feature = "cedar")]
    {
        let cedar = median(|| {
            black_box(peer.decide(black_box(25), "10.1.2.3", 10));
        });
        println!(
            "median decision: cedar {cedar:.2?} (request built); cedar / aesp = {:.2}",
            cedar.as_secs_f64() / aesp_with_request.as_secs_f64()
        );
    }
}
