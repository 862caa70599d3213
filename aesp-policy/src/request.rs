//! What a decision is asked about: the principal, the resource, the action and the
//! circumstances of the request.

use std::collections::BTreeMap;

use aesp_core::proto::v1::{EnterpriseSecurityContext, EnterpriseToolContract, PrincipalType, Value};

/// The principal making the request, as its authenticated security context describes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Principal {
    /// The principal's id.
    pub id: String,
    /// Its kind: `user`, `service_account` or `system_account` (empty when unknown).
    pub principal_type: String,
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// Its business unit.
    pub business_unit: String,
    /// Roles its security context asserts, besides those assigned in the snapshot.
    pub roles: Vec<String>,
    /// Permissions its security context asserts (`resource:action` patterns), besides those of
    /// its roles.
    pub permissions: Vec<String>,
    /// Its clearance label (empty: none).
    pub clearance: String,
    /// Whether MFA was verified for this context.
    pub mfa_verified: bool,
    /// The identity provider's claims.
    pub claims: BTreeMap<String, String>,
    /// Attributes such as `spending_limit`, read as `request.user.<name>` where declared.
    pub attributes: BTreeMap<String, Value>,
}

impl Principal {
    /// The principal of an authenticated security context.
    pub fn from_security_context(context: &EnterpriseSecurityContext) -> Self {
        let principal_type = match context.principal_type() {
            PrincipalType::User => "user",
            PrincipalType::ServiceAccount => "service_account",
            PrincipalType::SystemAccount => "system_account",
            PrincipalType::Unspecified => "",
        };
        Self {
            id: context.principal_id.clone(),
            principal_type: principal_type.to_owned(),
            tenant_id: context.tenant_id.clone(),
            business_unit: context.business_unit.clone(),
            roles: context.roles.clone(),
            permissions: context.permissions.clone(),
            clearance: context.security_clearance.clone(),
            mfa_verified: context.mfa_verified,
            claims: context.claims.clone(),
            attributes: BTreeMap::new(),
        }
    }
}

/// The resource acted on, with the contract's hard requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// The resource's name (for example `tool:payments.refund`).
    pub name: String,
    /// The tenant that owns it (empty: shared by every tenant).
    pub tenant_id: String,
    /// Its classification label (empty: none required).
    pub classification: String,
    /// Roles a caller must all hold (inherited roles count).
    pub required_roles: Vec<String>,
    /// Permissions (`resource:action`, without wildcards) a caller must all hold.
    pub required_permissions: Vec<String>,
    /// The contract's metadata, read as `request.resource.metadata`.
    pub metadata: BTreeMap<String, String>,
}

impl Resource {
    /// The resource `tool:<name>` of a tool contract, with its requirements.
    pub fn from_contract(tenant_id: &str, contract: &EnterpriseToolContract) -> Self {
        Self {
            name: format!("tool:{}", contract.name),
            tenant_id: tenant_id.to_owned(),
            classification: contract.security_classification.clone(),
            required_roles: contract.required_roles.clone(),
            required_permissions: contract.required_permissions.clone(),
            metadata: contract.governance_metadata.clone(),
        }
    }
}

/// The session the request belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// The session's id.
    pub id: String,
    /// The session's metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A request for a decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// The tenant the request is made in (from the authenticated context).
    pub tenant_id: String,
    /// Who asks.
    pub principal: Principal,
    /// What is acted on.
    pub resource: Resource,
    /// The action (for example `invoke`).
    pub action: String,
    /// The session.
    pub session: Session,
    /// When (Unix milliseconds, UTC); conditions see it as the timestamp `request.time`.
    pub time_ms: u64,
    /// The caller's address.
    pub source_ip: String,
    /// The validated tool parameters.
    pub params: BTreeMap<String, Value>,
    /// The estimated cost of the request.
    pub estimated_cost: f64,
    /// The tenant's attributes such as `cost_center`, read as `request.tenant.<name>`.
    pub tenant_attributes: BTreeMap<String, Value>,
    /// A break-glass request: the justification for lifting a policy DENY.
    pub break_glass: Option<String>,
}
