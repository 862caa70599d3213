//! TestPolicy suites: a YAML file of principals, resources, policies and cases with expected
//! outcomes, and the runner that reports each failing case.
//!
//! ```yaml
//! name: refunds
//! tenant: acme                 # default `test`
//! time_ms: 1700000000000       # the fixed clock of every case that gives none
//! roles:
//!   - id: clerk
//!     permissions: ["tool:payments.*:invoke"]
//!     parents: []
//! principals:
//!   alice: { roles: [clerk], clearance: internal, attributes: { spending_limit: 500 } }
//! resources:
//!   refund: { name: "tool:payments.refund", classification: internal }
//! policies:
//!   - id: big-refunds
//!     effect: DENY
//!     condition: "request.params.amount > 1000"
//!     applies_to: ["tool:payments.*"]
//! cases:
//!   - name: a small refund is allowed
//!     principal: alice
//!     resource: refund
//!     params: { amount: 10 }
//!     expect: ALLOW
//!   - name: a big refund is denied
//!     principal: alice
//!     resource: refund
//!     params: { amount: 5000 }
//!     expect: DENY
//!     expect_policies: [big-refunds]
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use aesp_core::{
    Error, Result,
    proto::v1::{
        ArrayValue, NullValue, ObjectValue, PolicyDefinition, PolicyRule, RoleDefinition, Value, value::Kind,
    },
};
use serde::Deserialize;

use crate::{Engine, Principal, Request, Resource, Schema, Session, Snapshot, SnapshotBuilder};

/// A parsed test suite.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSuite {
    /// The suite's name.
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_tenant")]
    tenant: String,
    #[serde(default)]
    time_ms: u64,
    #[serde(default)]
    roles: Vec<SuiteRole>,
    #[serde(default)]
    principals: BTreeMap<String, SuitePrincipal>,
    #[serde(default)]
    resources: BTreeMap<String, SuiteResource>,
    #[serde(default)]
    policies: Vec<SuitePolicy>,
    cases: Vec<SuiteCase>,
}

fn default_tenant() -> String {
    "test".to_owned()
}

fn default_action() -> String {
    "invoke".to_owned()
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteRole {
    id: String,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    parents: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuitePrincipal {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    clearance: String,
    #[serde(default, rename = "type")]
    principal_type: String,
    #[serde(default)]
    business_unit: String,
    #[serde(default)]
    mfa: bool,
    #[serde(default)]
    claims: BTreeMap<String, String>,
    #[serde(default)]
    attributes: BTreeMap<String, serde_norway::Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteResource {
    name: String,
    #[serde(default)]
    classification: String,
    #[serde(default)]
    required_roles: Vec<String>,
    #[serde(default)]
    required_permissions: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuitePolicy {
    id: String,
    #[serde(default)]
    version: String,
    effect: String,
    condition: String,
    #[serde(default)]
    applies_to: Vec<String>,
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default = "default_true")]
    enabled: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteCase {
    name: String,
    principal: String,
    resource: String,
    #[serde(default = "default_action")]
    action: String,
    #[serde(default)]
    time_ms: Option<u64>,
    #[serde(default)]
    params: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    tenant_attributes: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    source_ip: String,
    #[serde(default)]
    estimated_cost: f64,
    #[serde(default)]
    break_glass: Option<String>,
    expect: String,
    #[serde(default)]
    expect_policies: Option<Vec<String>>,
}

/// A case whose outcome was not the expected one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseFailure {
    /// The case's name.
    pub case: String,
    /// What the suite expected: `ALLOW` or `DENY`, and the policies if it named them.
    pub expected: String,
    /// What happened: `ALLOW` or `DENY`.
    pub actual: String,
    /// The decision's reason.
    pub reason: String,
    /// The policies that matched, as `id@version:EFFECT`.
    pub matched: Vec<String>,
    /// Expected policies that did not match.
    pub missing_policies: Vec<String>,
    /// Policies that matched though not expected.
    pub unexpected_policies: Vec<String>,
}

impl fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FAIL `{}`: expected {}, got {} ({})", self.case, self.expected, self.actual, self.reason)?;
        write!(f, "; matched [{}]", self.matched.join(", "))?;
        if !self.missing_policies.is_empty() {
            write!(f, "; did not match [{}]", self.missing_policies.join(", "))?;
        }
        if !self.unexpected_policies.is_empty() {
            write!(f, "; also matched [{}]", self.unexpected_policies.join(", "))?;
        }
        Ok(())
    }
}

/// The result of running a suite.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuiteReport {
    /// The suite's name.
    pub name: String,
    /// How many cases ran.
    pub total: usize,
    /// How many met their expectations.
    pub passed: usize,
    /// The cases that did not, in file order.
    pub failures: Vec<CaseFailure>,
}

impl SuiteReport {
    /// Whether every case passed.
    pub fn passed_all(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "suite `{}`: {} of {} cases passed", self.name, self.passed, self.total)?;
        for failure in &self.failures {
            writeln!(f, "  {failure}")?;
        }
        Ok(())
    }
}

impl TestSuite {
    /// Parses a suite from YAML.
    ///
    /// # Errors
    ///
    /// `INVALID_ARGUMENT` with the position of the first problem.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let suite: TestSuite = serde_norway::from_str(text)
            .map_err(|e| Error::invalid_argument(format!("test suite does not parse: {e}")))?;
        for case in &suite.cases {
            if !suite.principals.contains_key(&case.principal) {
                return Err(Error::invalid_argument(format!(
                    "case `{}` names unknown principal `{}`",
                    case.name, case.principal
                )));
            }
            if !suite.resources.contains_key(&case.resource) {
                return Err(Error::invalid_argument(format!(
                    "case `{}` names unknown resource `{}`",
                    case.name, case.resource
                )));
            }
            expected_allowed(&case.expect, &case.name)?;
        }
        Ok(suite)
    }

    /// The suite's policies as definitions.
    pub fn policies(&self) -> Vec<PolicyDefinition> {
        self.policies
            .iter()
            .map(|p| PolicyDefinition {
                policy_id: p.id.clone(),
                name: p.id.clone(),
                version: if p.version.is_empty() { "1.0.0".to_owned() } else { p.version.clone() },
                enabled: p.enabled,
                applies_to: p.applies_to.clone(),
                rule: Some(PolicyRule {
                    condition: p.condition.clone(),
                    effect: p.effect.clone(),
                    actions: p.actions.clone(),
                    parameters: p.parameters.clone().into_iter().collect(),
                }),
                ..Default::default()
            })
            .collect()
    }

    /// The tenant the cases run in.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

fn expected_allowed(expect: &str, case: &str) -> Result<bool> {
    match expect.to_ascii_uppercase().as_str() {
        "ALLOW" => Ok(true),
        "DENY" => Ok(false),
        other => Err(Error::invalid_argument(format!("case `{case}` expects `{other}`, not ALLOW or DENY"))),
    }
}

/// A YAML value as a protocol value.
fn to_value(yaml: &serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    let kind = match yaml {
        Y::Null => Kind::NullValue(NullValue::NullValue.into()),
        Y::Bool(b) => Kind::BooleanValue(*b),
        Y::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::FloatValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Y::String(s) => Kind::StringValue(s.clone()),
        Y::Sequence(items) => Kind::ArrayValue(ArrayValue { values: items.iter().map(to_value).collect() }),
        Y::Mapping(map) => Kind::ObjectValue(ObjectValue {
            fields: map
                .iter()
                .map(|(k, v)| (k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned), to_value(v)))
                .collect(),
        }),
        Y::Tagged(tagged) => return to_value(&tagged.value),
    };
    Value { kind: Some(kind) }
}

fn to_values(map: &BTreeMap<String, serde_norway::Value>) -> BTreeMap<String, Value> {
    map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect()
}

/// Runs a suite against a snapshot built from the suite alone (its roles, role assignments
/// and policies) under `schema`.
///
/// # Errors
///
/// A role or policy of the suite that does not build.
pub fn run_suite(engine: &Engine, schema: &Schema, suite: &TestSuite) -> Result<SuiteReport> {
    let mut builder = SnapshotBuilder::new(0, schema.clone());
    for role in &suite.roles {
        builder.add_role(
            &suite.tenant,
            RoleDefinition {
                role_id: role.id.clone(),
                permissions: role.permissions.clone(),
                parent_roles: role.parents.clone(),
                ..Default::default()
            },
        )?;
    }
    for (id, principal) in &suite.principals {
        for role in &principal.roles {
            builder.assign_role(&suite.tenant, id, role);
        }
    }
    for policy in suite.policies() {
        builder.add_policy(&suite.tenant, policy)?;
    }
    let snapshot = engine.build(&builder)?;
    Ok(run_cases(engine, &snapshot, suite, false))
}

/// Runs a suite's cases against `snapshot` (for example a candidate of the lifecycle): the
/// suite's own roles and policies are ignored, and each principal's roles are asserted in
/// its request.
pub fn run_suite_with(engine: &Engine, snapshot: &Snapshot, suite: &TestSuite) -> SuiteReport {
    run_cases(engine, snapshot, suite, true)
}

fn run_cases(engine: &Engine, snapshot: &Snapshot, suite: &TestSuite, assert_roles: bool) -> SuiteReport {
    let mut report = SuiteReport { name: suite.name.clone(), ..SuiteReport::default() };
    for case in &suite.cases {
        report.total += 1;
        let principal = suite.principals.get(&case.principal).cloned().unwrap_or_default();
        let Some(resource) = suite.resources.get(&case.resource) else { continue };
        let request = Request {
            tenant_id: suite.tenant.clone(),
            principal: Principal {
                id: case.principal.clone(),
                principal_type: principal.principal_type.clone(),
                tenant_id: suite.tenant.clone(),
                business_unit: principal.business_unit.clone(),
                roles: if assert_roles { principal.roles.clone() } else { Vec::new() },
                permissions: principal.permissions.clone(),
                clearance: principal.clearance.clone(),
                mfa_verified: principal.mfa,
                claims: principal.claims.clone(),
                attributes: to_values(&principal.attributes),
            },
            resource: Resource {
                name: resource.name.clone(),
                tenant_id: suite.tenant.clone(),
                classification: resource.classification.clone(),
                required_roles: resource.required_roles.clone(),
                required_permissions: resource.required_permissions.clone(),
                metadata: resource.metadata.clone(),
            },
            action: case.action.clone(),
            session: Session::default(),
            time_ms: case.time_ms.unwrap_or(suite.time_ms),
            source_ip: case.source_ip.clone(),
            params: to_values(&case.params),
            estimated_cost: case.estimated_cost,
            tenant_attributes: to_values(&case.tenant_attributes),
            break_glass: case.break_glass.clone(),
        };
        let decision = engine.decide_with(snapshot, &request);
        // Checked when parsing.
        let expected = expected_allowed(&case.expect, &case.name).unwrap_or(false);
        let matched_ids: BTreeSet<String> =
            decision.matched().iter().map(|m| m.policy_id().to_owned()).collect();
        let (missing, unexpected) = match &case.expect_policies {
            Some(wanted) => {
                let wanted: BTreeSet<String> = wanted.iter().cloned().collect();
                (
                    wanted.difference(&matched_ids).cloned().collect::<Vec<_>>(),
                    matched_ids.difference(&wanted).cloned().collect::<Vec<_>>(),
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        if decision.allowed() == expected && missing.is_empty() && unexpected.is_empty() {
            report.passed += 1;
            continue;
        }
        let word = |allowed: bool| if allowed { "ALLOW" } else { "DENY" };
        let mut expected_text = word(expected).to_owned();
        if let Some(wanted) = &case.expect_policies {
            expected_text.push_str(&format!(" by [{}]", wanted.join(", ")));
        }
        report.failures.push(CaseFailure {
            case: case.name.clone(),
            expected: expected_text,
            actual: word(decision.allowed()).to_owned(),
            reason: decision.reason().to_owned(),
            matched: decision
                .matched()
                .iter()
                .map(|m| format!("{}@{}:{}", m.policy_id(), m.version(), m.effect()))
                .collect(),
            missing_policies: missing,
            unexpected_policies: unexpected,
        });
    }
    report
}
