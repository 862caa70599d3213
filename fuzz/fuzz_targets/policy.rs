//! Fuzzes policy validation and evaluation with arbitrary condition text: the text is
//! validated (bounded, parsed, type-checked) as the condition of a policy and, when it is
//! accepted, evaluated as an ALLOW and as a DENY policy against a fixed request. Nothing may
//! panic, overflow the stack or run unbounded, and an accepted DENY must never allow.
//!
//! Run with `cargo +nightly fuzz run policy` from this folder.
#![no_main]

use std::{collections::BTreeMap, sync::OnceLock};

use aesp_core::proto::v1::{PolicyDefinition, PolicyRule, Value};
use aesp_policy::{AttributeType, Engine, Principal, Request, Resource, Schema, SnapshotBuilder};
use libfuzzer_sys::fuzz_target;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(Engine::default)
}

fn schema() -> Schema {
    Schema::new()
        .with_principal_attribute("spending_limit", AttributeType::Double)
        .and_then(|s| s.with_tenant_attribute("cost_center", AttributeType::String))
        .expect("schema")
}

fn policy(effect: &str, condition: &str) -> PolicyDefinition {
    PolicyDefinition {
        policy_id: "fuzzed".to_owned(),
        version: "1".to_owned(),
        enabled: true,
        rule: Some(PolicyRule {
            condition: condition.to_owned(),
            effect: effect.to_owned(),
            actions: Vec::new(),
            parameters: BTreeMap::from([("level".to_owned(), "secret".to_owned())]),
        }),
        ..Default::default()
    }
}

fn request() -> Request {
    Request {
        tenant_id: "t".to_owned(),
        principal: Principal {
            id: "p".to_owned(),
            tenant_id: "t".to_owned(),
            roles: vec!["analyst".to_owned()],
            clearance: "secret".to_owned(),
            attributes: BTreeMap::from([("spending_limit".to_owned(), Value::float(100.0))]),
            ..Default::default()
        },
        resource: Resource { name: "tool:sql.query".to_owned(), ..Default::default() },
        action: "invoke".to_owned(),
        time_ms: 1_700_000_000_000,
        source_ip: "10.1.2.3".to_owned(),
        params: BTreeMap::from([("x".to_owned(), Value::array([Value::integer(1), Value::string("a")]))]),
        estimated_cost: 12.5,
        tenant_attributes: BTreeMap::from([("cost_center".to_owned(), Value::string("cc-1"))]),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(condition) = std::str::from_utf8(data) else { return };
    let engine = engine();
    let mut builder = SnapshotBuilder::new(1, schema());
    builder.add_policy("t", policy("DENY", condition)).expect("one policy");
    let Ok(snapshot) = engine.build(&builder) else {
        // Refused by validation; validating alone (against no declarations) must agree.
        assert!(!engine.validate(&policy("DENY", condition)).is_empty());
        return;
    };
    let denied = engine.decide_with(&snapshot, &request());
    assert!(!denied.allowed(), "a DENY policy alone allowed: {}", denied.reason());

    let mut builder = SnapshotBuilder::new(2, schema());
    builder.add_policy("t", policy("ALLOW", condition)).expect("one policy");
    if let Ok(snapshot) = engine.build(&builder) {
        let _ = engine.decide_with(&snapshot, &request());
    }
});
