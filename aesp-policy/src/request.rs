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

/// The name of a principal type, as [`Principal::principal_type`] holds it.
fn type_name(context: &EnterpriseSecurityContext) -> &'static str {
    match context.principal_type() {
        PrincipalType::User => "user",
        PrincipalType::ServiceAccount => "service_account",
        PrincipalType::SystemAccount => "system_account",
        PrincipalType::Unspecified => "",
    }
}

/// Makes `target` equal to `source`, reusing its keys and values when the keys are the same.
fn assign_map<V: Clone>(target: &mut BTreeMap<String, V>, source: &BTreeMap<String, V>) {
    if target.len() == source.len() && target.keys().eq(source.keys()) {
        for (to, from) in target.values_mut().zip(source.values()) {
            to.clone_from(from);
        }
    } else {
        target.clone_from(source);
    }
}

impl Principal {
    /// Makes this principal the one of `context` ([`Principal::from_security_context`]) with
    /// `attributes`, overwriting every field in place and reusing the buffers it already
    /// holds: for a caller that decides many requests, one after the other.
    pub fn assign_security_context(
        &mut self,
        context: &EnterpriseSecurityContext,
        attributes: &BTreeMap<String, Value>,
    ) {
        let Self {
            id,
            principal_type,
            tenant_id,
            business_unit,
            roles,
            permissions,
            clearance,
            mfa_verified,
            claims,
            attributes: own_attributes,
        } = self;
        id.clone_from(&context.principal_id);
        principal_type.clear();
        principal_type.push_str(type_name(context));
        tenant_id.clone_from(&context.tenant_id);
        business_unit.clone_from(&context.business_unit);
        roles.clone_from(&context.roles);
        permissions.clone_from(&context.permissions);
        clearance.clone_from(&context.security_clearance);
        *mfa_verified = context.mfa_verified;
        assign_map(claims, &context.claims);
        assign_map(own_attributes, attributes);
    }

    /// The principal of an authenticated security context.
    pub fn from_security_context(context: &EnterpriseSecurityContext) -> Self {
        let principal_type = type_name(context);
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

    /// Makes this resource the one of `contract` ([`Resource::from_contract`]), overwriting
    /// every field in place and reusing the buffers it already holds.
    pub fn assign_contract(&mut self, tenant_id: &str, contract: &EnterpriseToolContract) {
        let Self {
            name,
            tenant_id: own_tenant,
            classification,
            required_roles,
            required_permissions,
            metadata,
        } = self;
        name.clear();
        name.push_str("tool:");
        name.push_str(&contract.name);
        own_tenant.clear();
        own_tenant.push_str(tenant_id);
        classification.clone_from(&contract.security_classification);
        required_roles.clone_from(&contract.required_roles);
        required_permissions.clone_from(&contract.required_permissions);
        assign_map(metadata, &contract.governance_metadata);
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

impl Session {
    /// Makes this the session `id` with `metadata`, overwriting both in place and reusing the
    /// buffers they already hold.
    pub fn assign(&mut self, id: &str, metadata: &BTreeMap<String, String>) {
        self.id.clear();
        self.id.push_str(id);
        assign_map(&mut self.metadata, metadata);
    }
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

#[cfg(test)]
mod tests {
    use aesp_core::proto::v1::{EnterpriseSecurityContext, EnterpriseToolContract, PrincipalType, Value};

    use super::*;

    #[test]
    fn assigning_in_place_equals_building_afresh() {
        let contexts = [
            EnterpriseSecurityContext {
                principal_id: "alice".into(),
                tenant_id: "acme".into(),
                principal_type: PrincipalType::ServiceAccount as i32,
                business_unit: "finance".into(),
                roles: vec!["a".into(), "b".into()],
                permissions: vec!["tool:x:read".into()],
                security_clearance: "secret".into(),
                mfa_verified: true,
                claims: [("iss".to_owned(), "idp".to_owned())].into(),
                ..Default::default()
            },
            EnterpriseSecurityContext {
                principal_id: "bob".into(),
                tenant_id: "other".into(),
                claims: [("iss".to_owned(), "other".to_owned()), ("sub".to_owned(), "b".to_owned())].into(),
                roles: vec!["c".into()],
                ..Default::default()
            },
            EnterpriseSecurityContext::default(),
        ];
        let attributes: [BTreeMap<String, Value>; 3] = [
            [("limit".to_owned(), Value::float(1.0))].into(),
            [("limit".to_owned(), Value::string("x"))].into(),
            BTreeMap::new(),
        ];
        let mut principal = Principal::default();
        for (context, attributes) in contexts.iter().zip(&attributes).chain(contexts.iter().zip(&attributes))
        {
            principal.assign_security_context(context, attributes);
            let mut expected = Principal::from_security_context(context);
            expected.attributes.clone_from(attributes);
            assert_eq!(principal, expected);
        }
        let contracts = [
            EnterpriseToolContract {
                name: "sql.query".into(),
                security_classification: "internal".into(),
                required_roles: vec!["r".into()],
                required_permissions: vec!["p:x".into()],
                governance_metadata: [("owner".to_owned(), "fin".to_owned())].into(),
                ..Default::default()
            },
            EnterpriseToolContract { name: "x".into(), ..Default::default() },
        ];
        let mut resource = Resource::default();
        for (contract, tenant) in contracts.iter().zip(["acme", ""]).chain(contracts.iter().zip(["b", "c"])) {
            resource.assign_contract(tenant, contract);
            assert_eq!(resource, Resource::from_contract(tenant, contract));
        }
        let mut session = Session::default();
        let metadata: [BTreeMap<String, String>; 3] = [
            [("a".to_owned(), "1".to_owned())].into(),
            BTreeMap::new(),
            [("b".to_owned(), String::new())].into(),
        ];
        for (id, metadata) in ["s-1", "", "s-2"].iter().zip(&metadata).chain(["s-3"].iter().zip(&metadata)) {
            session.assign(id, metadata);
            assert_eq!(session, Session { id: (*id).to_owned(), metadata: metadata.clone() });
        }
    }
}
