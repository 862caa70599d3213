//! The canonical conversions between a decision [`Request`] and the [`DecisionInput`]
//! recorded in audit events.

use std::collections::BTreeMap;

use aesp_core::{
    Error, Result,
    proto::v1::{AuditEvent, DecisionInput, EnterpriseSecurityContext, Value},
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

/// Appends to `buf` the protobuf encoding of the input the Host records for a decision on
/// `request` made under `snapshot`: exactly the bytes `to_input(request.clone(),
/// snapshot).encode_to_vec()` gives, written straight from the borrowed request, with no
/// intermediate [`DecisionInput`] (the Host's call path records an input per call).
pub fn encode_input(request: &Request, snapshot: &Snapshot, buf: &mut Vec<u8>) {
    use prost::encoding::{
        WireType, bool as pbool, btree_map, double, encode_key, encode_varint, encoded_len_varint, int64,
        key_len, message, string, uint64,
    };
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
    fn put_string(tag: u32, value: &str, buf: &mut Vec<u8>) {
        if !value.is_empty() {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(value.len() as u64, buf);
            buf.extend_from_slice(value.as_bytes());
        }
    }
    fn string_len(tag: u32, value: &str) -> usize {
        if value.is_empty() { 0 } else { key_len(tag) + encoded_len_varint(value.len() as u64) + value.len() }
    }
    fn string_map_len(tag: u32, map: &BTreeMap<String, String>) -> usize {
        btree_map::encoded_len(string::encoded_len, string::encoded_len, tag, map)
    }
    fn put_string_map(tag: u32, map: &BTreeMap<String, String>, buf: &mut Vec<u8>) {
        btree_map::encode(
            string::encode,
            string::encoded_len,
            string::encode,
            string::encoded_len,
            tag,
            map,
            buf,
        );
    }
    fn put_value_map(tag: u32, map: &BTreeMap<String, Value>, buf: &mut Vec<u8>) {
        btree_map::encode(
            string::encode,
            string::encoded_len,
            message::encode,
            message::encoded_len,
            tag,
            map,
            buf,
        );
    }

    // 1: the tenant.
    put_string(1, tenant_id, buf);
    // 2: the principal as its security context; its type is the one `policy_context` entry.
    let type_entry = string_len(1, PRINCIPAL_TYPE) + string_len(2, &p.principal_type);
    let principal_len = string_len(1, &p.id)
        + string_len(2, &p.tenant_id)
        + string_map_len(3, &p.claims)
        + string_len(5, &p.business_unit)
        + string::encoded_len_repeated(6, &p.roles)
        + string::encoded_len_repeated(7, &p.permissions)
        + string_len(8, &p.clearance)
        + key_len(11)
        + encoded_len_varint(type_entry as u64)
        + type_entry
        + if p.mfa_verified { pbool::encoded_len(13, &true) } else { 0 };
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(principal_len as u64, buf);
    put_string(1, &p.id, buf);
    put_string(2, &p.tenant_id, buf);
    put_string_map(3, &p.claims, buf);
    put_string(5, &p.business_unit, buf);
    string::encode_repeated(6, &p.roles, buf);
    string::encode_repeated(7, &p.permissions, buf);
    put_string(8, &p.clearance, buf);
    encode_key(11, WireType::LengthDelimited, buf);
    encode_varint(type_entry as u64, buf);
    put_string(1, PRINCIPAL_TYPE, buf);
    put_string(2, &p.principal_type, buf);
    if p.mfa_verified {
        pbool::encode(13, &true, buf);
    }
    // 3 to 20: the rest of the request, in tag order.
    put_value_map(3, &p.attributes, buf);
    put_string(4, &resource.name, buf);
    put_string(5, &resource.tenant_id, buf);
    put_string(6, &resource.classification, buf);
    string::encode_repeated(7, &resource.required_roles, buf);
    string::encode_repeated(8, &resource.required_permissions, buf);
    put_string_map(9, &resource.metadata, buf);
    put_string(10, action, buf);
    put_string(11, &session.id, buf);
    put_string_map(12, &session.metadata, buf);
    if *time_ms != 0 {
        uint64::encode(13, time_ms, buf);
    }
    put_string(14, source_ip, buf);
    put_value_map(15, params, buf);
    let micros = cost_micros(*estimated_cost);
    if micros != 0 {
        int64::encode(16, &micros, buf);
    }
    if *estimated_cost != 0.0 {
        double::encode(17, estimated_cost, buf);
    }
    put_value_map(18, tenant_attributes, buf);
    if let Some(justification) = break_glass {
        put_string(19, justification, buf);
    }
    // 20: the snapshot's digest, in lowercase hexadecimal.
    encode_key(20, WireType::LengthDelimited, buf);
    encode_varint(64, buf);
    for byte in snapshot.digest() {
        for nibble in [byte >> 4, byte & 0x0f] {
            buf.push(if nibble < 10 { b'0' + nibble } else { b'a' + nibble - 10 });
        }
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

#[cfg(test)]
mod tests {
    use aesp_core::proto::v1::{ArrayValue, ObjectValue, value::Kind};

    use super::*;
    use crate::{Schema, SnapshotBuilder};

    fn snapshot() -> Snapshot {
        crate::Engine::default().build(&SnapshotBuilder::new(3, Schema::new())).unwrap()
    }

    fn rich() -> Request {
        let nested = Value {
            kind: Some(Kind::ObjectValue(ObjectValue {
                fields: [
                    (
                        "list".to_owned(),
                        Value {
                            kind: Some(Kind::ArrayValue(ArrayValue {
                                values: vec![Value::integer(-3), Value::default(), Value::string("")],
                            })),
                        },
                    ),
                    ("f".to_owned(), Value::float(-0.5)),
                ]
                .into(),
            })),
        };
        Request {
            tenant_id: "acme".into(),
            principal: Principal {
                id: "alice".into(),
                principal_type: "service_account".into(),
                tenant_id: "acme".into(),
                business_unit: "finance".into(),
                roles: vec!["clerk".into(), String::new(), "auditor".into()],
                permissions: vec!["tool:x:read".into()],
                clearance: "confidential".into(),
                mfa_verified: true,
                claims: [("iss".to_owned(), "idp".to_owned()), (String::new(), String::new())].into(),
                attributes: [("spending_limit".to_owned(), Value::integer(500)), ("n".to_owned(), nested)]
                    .into(),
            },
            resource: Resource {
                name: "tool:payments.refund".into(),
                tenant_id: "acme".into(),
                classification: "internal".into(),
                required_roles: vec!["clerk".into()],
                required_permissions: vec!["tool:payments.refund:invoke".into()],
                metadata: [("owner".to_owned(), "fin".to_owned())].into(),
            },
            action: "invoke".into(),
            session: Session { id: "s-1".into(), metadata: [("agent".to_owned(), String::new())].into() },
            time_ms: 1_700_000_000_123,
            source_ip: "192.0.2.4".into(),
            params: [
                ("amount".to_owned(), Value::float(12.5)),
                ("q".to_owned(), Value::string("x".repeat(300))),
            ]
            .into(),
            estimated_cost: 1.25,
            tenant_attributes: [("cost_center".to_owned(), Value::string("cc-7"))].into(),
            break_glass: Some("incident 42".into()),
        }
    }

    fn assert_same(request: &Request, snapshot: &Snapshot) {
        let expected = to_input(request.clone(), snapshot).encode_to_vec();
        let mut buf = vec![0xff];
        encode_input(request, snapshot, &mut buf);
        assert_eq!(buf.get(1..), Some(expected.as_slice()), "{request:?}");
    }

    #[test]
    fn encode_input_gives_the_bytes_of_to_input() {
        let snapshot = snapshot();
        assert_same(&Request::default(), &snapshot);
        let rich = rich();
        assert_same(&rich, &snapshot);
        let mut variant = rich.clone();
        variant.principal.mfa_verified = false;
        variant.principal.principal_type.clear();
        variant.break_glass = Some(String::new());
        variant.estimated_cost = -0.000_000_4;
        variant.time_ms = u64::MAX;
        assert_same(&variant, &snapshot);
        variant.estimated_cost = 0.000_000_1;
        variant.break_glass = None;
        variant.principal.roles.clear();
        assert_same(&variant, &snapshot);
        variant.principal.id = "p".repeat(200);
        assert_same(&variant, &snapshot);
    }
}
