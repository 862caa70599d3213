//! Every message of `aesp.v1` round-trips through the binary encoding and the canonical
//! proto3 JSON mapping, with every field set (each oneof variant in turn), and its JSON agrees
//! with an independent implementation of the mapping (prost-reflect).
#![expect(
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail by panicking"
)]

use std::collections::HashMap;

use aesp_core::proto::{FILE_DESCRIPTOR_SET, v1};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};

fn pool() -> DescriptorPool {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes")
}

/// A value for a singular field of `kind`, distinct from the default.
fn scalar(kind: &Kind, salt: u32, depth: usize, variant: usize) -> Option<Value> {
    Some(match kind {
        Kind::Double => Value::F64(1.5 + f64::from(salt)),
        Kind::Float => Value::F32(2.5),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(-7 - i32::try_from(salt).unwrap_or(0)),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(-(1 << 40) - i64::from(salt)),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(7 + salt),
        Kind::Uint64 | Kind::Fixed64 => Value::U64((1 << 40) + u64::from(salt)),
        Kind::Bool => Value::Bool(true),
        Kind::String => Value::String(format!("s{salt}-ü")),
        Kind::Bytes => Value::Bytes(vec![0, 0xff, u8::try_from(salt % 251).unwrap_or(0)].into()),
        Kind::Enum(e) => Value::EnumNumber(e.values().map(|v| v.number()).find(|n| *n != 0).unwrap_or(0)),
        Kind::Message(m) => {
            if depth >= 3 {
                return None;
            }
            Value::Message(fill(m, depth + 1, variant))
        }
    })
}

fn map_key(kind: &Kind, i: u32) -> MapKey {
    match kind {
        Kind::String => MapKey::String(format!("k{i}")),
        Kind::Bool => MapKey::Bool(i.is_multiple_of(2)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(i32::try_from(i).unwrap_or(0)),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(i64::from(i)),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(i),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(u64::from(i)),
        other => panic!("{other:?} cannot be a map key"),
    }
}

fn field_value(field: &FieldDescriptor, depth: usize, variant: usize) -> Option<Value> {
    let salt = field.number();
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { unreachable!("a map field is a message") };
        let key_kind = entry.map_entry_key_field().kind();
        let value_kind = entry.map_entry_value_field().kind();
        let mut map = HashMap::new();
        for i in 1..=2 {
            if let Some(v) = scalar(&value_kind, salt + i, depth, variant) {
                map.insert(map_key(&key_kind, i), v);
            }
        }
        return (!map.is_empty()).then_some(Value::Map(map));
    }
    if field.is_list() {
        let items: Vec<Value> = (0..2)
            .filter_map(|i| scalar(&field.kind(), salt + i, depth, variant + usize::try_from(i).unwrap_or(0)))
            .collect();
        return (!items.is_empty()).then_some(Value::List(items));
    }
    scalar(&field.kind(), salt, depth, variant)
}

/// `desc` with every field set; in each oneof only the member chosen by `variant`.
fn fill(desc: &MessageDescriptor, depth: usize, variant: usize) -> DynamicMessage {
    let mut message = DynamicMessage::new(desc.clone());
    for oneof in desc.oneofs() {
        let members: Vec<FieldDescriptor> = oneof.fields().collect();
        let chosen = &members[variant % members.len()];
        if let Some(v) = field_value(chosen, depth, variant) {
            message.set_field(chosen, v);
        }
    }
    for field in desc.fields().filter(|f| f.containing_oneof().is_none()) {
        if let Some(v) = field_value(&field, depth, variant) {
            message.set_field(&field, v);
        }
    }
    message
}

fn round_trip<T>(full_name: &str) -> usize
where
    T: prost::Message + Default + PartialEq + serde::Serialize + serde::de::DeserializeOwned,
{
    let pool = pool();
    let desc = pool
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("`{full_name}` is in the descriptor set"));
    let variants = desc.oneofs().map(|o| o.fields().len()).max().unwrap_or(1).max(1);
    for variant in 0..variants {
        let expected = fill(&desc, 0, variant);
        let bytes = expected.encode_to_vec();

        // Binary: generated code decodes and re-encodes without loss.
        let typed = T::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{full_name}: {e}"));
        let again =
            DynamicMessage::decode(desc.clone(), typed.encode_to_vec().as_slice()).expect("re-decodes");
        assert!(again == expected, "{full_name} (variant {variant}) binary round trip");
        assert!(desc.fields().len() == 0 || typed != T::default(), "{full_name} was filled");

        // JSON: the generated mapping round-trips ...
        let json = serde_json::to_value(&typed).unwrap_or_else(|e| panic!("{full_name} to JSON: {e}"));
        let parsed: T =
            serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{full_name} from {json}: {e}"));
        assert!(parsed == typed, "{full_name} (variant {variant}) JSON round trip");
        // ... and agrees with prost-reflect's canonical mapping, both ways.
        let reference = serde_json::to_value(&expected).expect("prost-reflect serialises");
        assert_eq!(json, reference, "{full_name} (variant {variant}) canonical JSON");
        let from_reference: T = serde_json::from_value(reference).expect("parses the reference JSON");
        assert!(from_reference == typed, "{full_name} parses prost-reflect's JSON");
    }
    1
}

include!(concat!(env!("OUT_DIR"), "/aesp_messages.rs"));

#[test]
fn every_message_round_trips() {
    let mut covered = 0;
    macro_rules! check {
        ($name:ident, $full:literal) => {
            covered += round_trip::<v1::$name>($full);
        };
    }
    for_each_aesp_message!(check);

    // The list is complete: every message of the package was checked.
    let pool = pool();
    let total = pool.all_messages().filter(|m| m.package_name() == "aesp.v1" && !m.is_map_entry()).count();
    assert_eq!(covered, total);
    assert!(total > 100, "the whole protocol is present ({total} messages)");
}

#[test]
fn every_service_of_services_md_is_present() {
    let pool = pool();
    let services: Vec<String> = pool.services().map(|s| s.name().to_owned()).collect();
    for expected in [
        "EnterpriseAuthenticationService",
        "EnterpriseAuthorizationService",
        "EnterpriseAuditService",
        "EnterprisePolicyService",
        "EnterpriseCostManagementService",
        "EnterpriseGovernanceService",
        "EnterpriseIdentityService",
        "EnterpriseConfigurationService",
        "SessionService",
        "ContractService",
        "RuntimeService",
        "InvocationService",
        "RuntimeConnectionService",
    ] {
        assert!(services.iter().any(|s| s == expected), "service `{expected}` is missing");
    }
    let connect = pool
        .get_service_by_name("aesp.v1.RuntimeConnectionService")
        .and_then(|s| s.methods().find(|m| m.name() == "Connect"))
        .expect("RuntimeConnectionService.Connect");
    assert!(
        connect.is_client_streaming() && connect.is_server_streaming(),
        "the runtime connection is bidirectional"
    );
}

#[test]
fn specification_field_numbers_are_kept() {
    let pool = pool();
    let number = |message: &str, field: &str| {
        pool.get_message_by_name(&format!("aesp.v1.{message}"))
            .and_then(|m| m.get_field_by_name(field))
            .map(|f| f.number())
            .unwrap_or_else(|| panic!("{message}.{field}"))
    };
    assert_eq!(number("AuditEvent", "policy_violations"), 14);
    assert_eq!(number("EnterpriseToolContract", "governance_metadata"), 15);
    assert_eq!(number("EnterpriseSecurityContext", "policy_context"), 11);
    assert_eq!(number("EnterpriseError", "escalation_required"), 11);
    assert_eq!(number("AccountingEvent", "metadata"), 13);
    assert_eq!(number("PolicyDefinition", "created_by"), 10);
    assert_eq!(number("ListPrincipalsRequest", "cursor"), 5);
    assert_eq!(number("AuthenticateUserResponse", "error"), 2);
}

#[test]
fn maps_encode_deterministically() {
    // BTreeMap fields: the same content encodes to the same bytes whatever the insertion order.
    let mut a = v1::AuditEvent { event_id: "e".into(), ..Default::default() };
    let mut b = a.clone();
    for k in ["z", "a", "m"] {
        a.metadata.insert(k.into(), k.into());
    }
    for k in ["m", "z", "a"] {
        b.metadata.insert(k.into(), k.into());
    }
    assert_eq!(a.encode_to_vec(), b.encode_to_vec());
}
