//! The canonical conversions between a decision [`Request`] and the [`DecisionInput`]
//! recorded in audit events.

use aesp_core::{
    Error, Result,
    proto::v1::{AuditEvent, DecisionInput, EnterpriseSecurityContext},
};
use base64::Engine as _;
use prost::Message as _;

use crate::{Principal, Request, Resource, Session, Snapshot};

/// The key of `EnterpriseSecurityContext.policy_context` that carries the principal's type.
const PRINCIPAL_TYPE: &str = "principal_type";

/// The audit-event metadata entry that holds the base64 of the encoded [`DecisionInput`].
pub const DECISION_INPUT_METADATA: &str = "decision_input";

/// The input the Host records for a decision made under `snapshot`: every field of `request`,
/// plus the snapshot's digest. [`from_input`] is its inverse.
pub fn to_input(request: Request, snapshot: &Snapshot) -> DecisionInput {
    let Request {
        tenant_id,
        principal: p,
        resource,
        action,
        session,
        time_ms,
        source_ip,
        params,
        estimated_cost,
        tenant_attributes,
        break_glass,
    } = request;
    let mut principal = EnterpriseSecurityContext {
        principal_id: p.id,
        tenant_id: p.tenant_id,
        claims: p.claims,
        business_unit: p.business_unit,
        roles: p.roles,
        permissions: p.permissions,
        security_clearance: p.clearance,
        mfa_verified: p.mfa_verified,
        ..Default::default()
    };
    principal.policy_context.insert(PRINCIPAL_TYPE.into(), p.principal_type);
    DecisionInput {
        tenant_id,
        principal: Some(principal),
        principal_attributes: p.attributes,
        resource_name: resource.name,
        resource_tenant_id: resource.tenant_id,
        resource_classification: resource.classification,
        required_roles: resource.required_roles,
        required_permissions: resource.required_permissions,
        resource_metadata: resource.metadata,
        action,
        session_id: session.id,
        session_metadata: session.metadata,
        time_ms,
        source_ip,
        params,
        estimated_cost_micros: cost_micros(estimated_cost),
        estimated_cost,
        tenant_attributes,
        break_glass_justification: break_glass.unwrap_or_default(),
        snapshot_digest: snapshot.digest_hex(),
        currency: String::new(),
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "costs are far below the range of i64 micros; `as` saturates beyond it"
)]
fn cost_micros(cost: f64) -> i64 {
    (cost * 1_000_000.0).round() as i64
}

/// The request a recorded [`DecisionInput`] was made from, for replay. An empty break-glass
/// justification means no break-glass (the Host refuses break-glass without one).
///
/// # Errors
///
/// `INVALID_ARGUMENT` when the input has no principal.
pub fn from_input(input: &DecisionInput) -> Result<Request> {
    let Some(context) = input.principal.as_ref() else {
        return Err(Error::invalid_argument("decision input has no principal"));
    };
    let mut principal = Principal::from_security_context(context);
    principal.principal_type = context.policy_context.get(PRINCIPAL_TYPE).cloned().unwrap_or_default();
    principal.attributes = input.principal_attributes.clone();
    // The double is what the decision saw; the micros are derived from it, so prefer the
    // double unless only the micros were recorded.
    #[expect(clippy::cast_precision_loss, reason = "micros of realistic costs are exact in f64")]
    let estimated_cost = if input.estimated_cost == 0.0 && input.estimated_cost_micros != 0 {
        input.estimated_cost_micros as f64 / 1_000_000.0
    } else {
        input.estimated_cost
    };
    Ok(Request {
        tenant_id: input.tenant_id.clone(),
        principal,
        resource: Resource {
            name: input.resource_name.clone(),
            tenant_id: input.resource_tenant_id.clone(),
            classification: input.resource_classification.clone(),
            required_roles: input.required_roles.clone(),
            required_permissions: input.required_permissions.clone(),
            metadata: input.resource_metadata.clone(),
        },
        action: input.action.clone(),
        session: Session { id: input.session_id.clone(), metadata: input.session_metadata.clone() },
        time_ms: input.time_ms,
        source_ip: input.source_ip.clone(),
        params: input.params.clone(),
        estimated_cost,
        tenant_attributes: input.tenant_attributes.clone(),
        break_glass: (!input.break_glass_justification.is_empty())
            .then(|| input.break_glass_justification.clone()),
    })
}

/// The [`DecisionInput`] recorded in an audit event's `decision_input` metadata (base64 of the
/// protobuf encoding), if it has one.
///
/// # Errors
///
/// `INVALID_ARGUMENT` when the metadata is not base64 of a `DecisionInput`.
pub fn input_from_audit_event(event: &AuditEvent) -> Result<Option<DecisionInput>> {
    let Some(text) = event.metadata.get(DECISION_INPUT_METADATA) else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| {
        Error::invalid_argument(format!("decision input of event `{}` is not base64", event.event_id))
            .with_source(e)
    })?;
    let input = DecisionInput::decode(bytes.as_slice()).map_err(|e| {
        Error::invalid_argument(format!("decision input of event `{}` does not decode", event.event_id))
            .with_source(e)
    })?;
    Ok(Some(input))
}

/// The SHA-256 of the canonical encoding of a decision input, in hex: how divergence records
/// name a request without keeping its content.
pub fn input_digest_hex(input: &DecisionInput) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(input.encode_to_vec()).iter().map(|b| format!("{b:02x}")).collect()
}
