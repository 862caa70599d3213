//! # aesp-policy
//!
//! The decision engine of AESP: the specification's Policy Engine and RBAC Engine, with no
//! network and no storage of its own. It takes roles, policies and requests as values and
//! returns [`Decision`]s.
//!
//! ```
//! use aesp_core::proto::v1::{PolicyDefinition, PolicyRule, RoleDefinition};
//! use aesp_policy::{Engine, Principal, Request, Resource, Schema, SnapshotBuilder};
//!
//! let engine = Engine::default();
//! let mut builder = SnapshotBuilder::new(1, Schema::new());
//! builder.add_role("acme", RoleDefinition {
//!     role_id: "analyst".into(),
//!     permissions: vec!["tool:sql.*:invoke".into()],
//!     ..Default::default()
//! })?;
//! builder.assign_role("acme", "alice", "analyst");
//! builder.add_policy("acme", PolicyDefinition {
//!     policy_id: "office-hours".into(),
//!     version: "1".into(),
//!     enabled: true,
//!     applies_to: vec!["tool:**".into()],
//!     rule: Some(PolicyRule {
//!         condition: "request.time.getHours() < 9 || request.time.getHours() > 17".into(),
//!         effect: "DENY".into(),
//!         ..Default::default()
//!     }),
//!     ..Default::default()
//! })?;
//! engine.install(engine.build(&builder)?);
//!
//! let request = Request {
//!     tenant_id: "acme".into(),
//!     principal: Principal { id: "alice".into(), tenant_id: "acme".into(), ..Default::default() },
//!     resource: Resource { name: "tool:sql.query".into(), ..Default::default() },
//!     action: "invoke".into(),
//!     time_ms: 1_700_000_000_000 + 3_600_000 * 2, // 00:13 UTC
//!     ..Default::default()
//! };
//! let decision = engine.decide(&request);
//! assert!(!decision.allowed());
//! assert_eq!(decision.reason(), "denied by policy `office-hours`");
//! # Ok::<(), aesp_policy::PolicyError>(())
//! ```
//!
//! ## Authorization order
//!
//! 1. The tenant boundary: the principal, the request and the resource (unless shared) must
//!    be in the same tenant.
//! 2. The contract's hard requirements: `required_roles` (inherited roles count),
//!    `required_permissions`, and clearance at least the classification, by rank
//!    ([`Labels`]). A failed requirement denies; no ALLOW policy and no break-glass lifts it.
//! 3. Policies: default deny; granted = an RBAC permission on (resource, action) or a
//!    matching ALLOW; any matching DENY wins; AUDIT only flags; an evaluation error denies and
//!    the reason names the policy and the error. Break-glass can lift a policy DENY only, with
//!    a justification, and the decision is marked for escalation.
//!
//! ## Patterns
//!
//! Permissions are `resource:action` (the action after the last `:`); resource names have
//! segments separated by `/`, `.` and `:`. `*` matches exactly one whole segment and `**`
//! any number of segments: `tools/sql.*` matches `tools/sql.read` but neither `tools/sqlx`
//! nor `tools/sql.read.all`, and `**:*` is every action on everything. A policy's
//! `applies_to` (resources) and `rule.actions` use the same matcher; both must match.
//!
//! ## Conditions
//!
//! Conditions are CEL over `request` (`user`, `resource`, `action`, `tenant`, `session`,
//! `time`, `source_ip`, `params`, `estimated_cost`), `policy` (`id`, `version`, `name`,
//! `parameters`), `organization` (declared organization-wide attributes) and `clearance`
//! (`clearance.dominates(held, required)`, `clearance.rank(label)`), with the CEL standard
//! library and the network extension (`ip(...)`, `cidr(...)`, `.containsIP(...)`, ...).
//! Attributes are declared in a [`Schema`]; validation refuses unknown variables, fields and
//! functions and obvious type errors. Parameter `risk_score` gives the decision's risk (the
//! highest among matching policies); parameters named `obligation.<name>` become the
//! decision's conditions.

mod checker;
#[cfg(test)]
mod conformance_tests;
mod decision;
mod engine;
mod error;
mod fast;
mod labels;
mod lifecycle;
mod lower;
mod network;
mod pattern;
mod policy;
mod rbac;
mod request;
mod schema;
mod snapshot;
mod validate;
mod values;

pub use decision::{Decision, PolicyMatch};
pub use engine::{DEFAULT_BREAK_GLASS_PERMISSION, Engine, EngineConfig};
pub use error::PolicyError;
pub use labels::Labels;
pub use lifecycle::{
    Audited, Caller, CandidateKind, CaseFailure, Change, DECISION_INPUT_METADATA, Divergence,
    LifecycleConfig, LifecycleDecision, PolicyLifecycle, PolicyService, PolicyStatus, ReplayOutcome,
    ReplayReport, Stage, StateChange, SuiteReport, TestSuite, VersionCounters, VersionInfo, VersionRef,
    VersionState, encode_input, from_input, input_digest_hex, input_from_audit_event, replay, run_suite,
    run_suite_with, to_input,
};
pub use policy::{Effect, OBLIGATION_PREFIX, RISK_SCORE_PARAMETER};
pub use request::{Principal, Request, Resource, Session};
pub use schema::{AttributeType, Schema};
pub use snapshot::{Snapshot, SnapshotBuilder};
pub use validate::{MAX_CONDITION_BYTES, MAX_CONDITION_NESTING, MAX_EXPRESSION_DEPTH, ValidationError};
