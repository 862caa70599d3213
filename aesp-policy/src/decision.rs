//! The outcome of a decision.

use std::sync::Arc;

use aesp_core::{ErrorCode, proto::v1::AuthorizeActionResult};

use crate::policy::Effect;

/// A policy that matched a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyMatch {
    pub(crate) policy_id: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) effect: Effect,
}

impl PolicyMatch {
    /// The policy's id.
    pub fn policy_id(&self) -> &str {
        &self.policy_id
    }
    /// The policy's version.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// The policy's effect.
    pub fn effect(&self) -> Effect {
        self.effect
    }
}

/// An authorization decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub(crate) allowed: bool,
    pub(crate) reason: String,
    pub(crate) code: Option<ErrorCode>,
    pub(crate) matched: Vec<PolicyMatch>,
    pub(crate) risk_score: f64,
    pub(crate) conditions: Vec<String>,
    pub(crate) break_glass: bool,
    pub(crate) snapshot_version: u64,
}

impl Decision {
    /// Whether the request is allowed.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Why, in words a person can read.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// For a denial, the stable code of the rule that denied (`TENANT_ACCESS_DENIED`,
    /// `ROLE_REQUIRED`, `INSUFFICIENT_PERMISSIONS`, `SECURITY_CLEARANCE_INSUFFICIENT`,
    /// `POLICY_VIOLATION`, `POLICY_EVALUATION_FAILED` or `AUTHORIZATION_DENIED`).
    pub fn code(&self) -> Option<ErrorCode> {
        self.code
    }

    /// The policies whose condition held, in evaluation order.
    pub fn matched(&self) -> &[PolicyMatch] {
        &self.matched
    }

    /// The AUDIT-effect matches: they flag the request and never change the outcome.
    pub fn audit_flags(&self) -> impl Iterator<Item = &PolicyMatch> {
        self.matched.iter().filter(|m| m.effect == Effect::Audit)
    }

    /// Whether any AUDIT policy matched.
    pub fn flagged_for_audit(&self) -> bool {
        self.audit_flags().next().is_some()
    }

    /// The risk: the highest `risk_score` among matching policies, 0 when none gives one.
    pub fn risk_score(&self) -> f64 {
        self.risk_score
    }

    /// Obligations from the `obligation.*` parameters of matching policies, sorted.
    pub fn conditions(&self) -> &[String] {
        &self.conditions
    }

    /// Whether break-glass lifted a policy DENY; such a decision must be escalated.
    pub fn break_glass(&self) -> bool {
        self.break_glass
    }

    /// Whether the decision must be escalated for review (break-glass was used).
    pub fn escalation_required(&self) -> bool {
        self.break_glass
    }

    /// The version of the snapshot that decided.
    pub fn snapshot_version(&self) -> u64 {
        self.snapshot_version
    }

    /// The protocol's form (AuthorizeAction).
    pub fn to_authorize_result(&self) -> AuthorizeActionResult {
        AuthorizeActionResult {
            authorized: self.allowed,
            decision_reason: self.reason.clone(),
            applied_policies: self.matched.iter().map(|m| m.policy_id.to_string()).collect(),
            risk_score: self.risk_score,
            conditions: self.conditions.clone(),
        }
    }

    /// For a denial, the error to return to the caller, with its stable code.
    pub fn to_error(&self) -> Option<aesp_core::Error> {
        if self.allowed {
            return None;
        }
        let code = self.code.unwrap_or(ErrorCode::AuthorizationDenied);
        let mut error = aesp_core::Error::new(code, self.reason.clone());
        for m in &self.matched {
            error =
                error.with_detail(format!("policy.{}", m.policy_id), format!("{}@{}", m.effect, m.version));
        }
        Some(error)
    }
}
