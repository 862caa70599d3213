//! Fuzzes contract-schema compilation and parameter validation with arbitrary protobuf input:
//! the first two bytes give the length of an encoded `aesp.v1.ObjectType` (the schema: its
//! properties become the contract's parameters); the rest is an encoded `aesp.v1.ObjectValue`
//! (the call's parameters). Nothing may panic, overflow the stack or run unbounded.
//!
//! Run with `cargo +nightly fuzz run parameter_validation` from this folder.
#![no_main]

use aesp_core::{
    ParameterValidator,
    proto::v1::{ObjectType, ObjectValue, ParameterSchema},
};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<2>() else { return };
    let split = usize::from(u16::from_le_bytes(*head)).min(rest.len());
    let (schema_bytes, value_bytes) = rest.split_at(split);
    let Ok(schema) = ObjectType::decode(schema_bytes) else { return };
    let Ok(values) = ObjectValue::decode(value_bytes) else { return };
    let params: Vec<ParameterSchema> = schema
        .properties
        .into_iter()
        .map(|(name, mut p)| {
            p.name = name;
            p
        })
        .collect();
    if let Ok(validator) = ParameterValidator::compile(&params)
        && let Ok(out) = validator.validate(&values.fields)
    {
        // A validated output validates again to itself.
        assert_eq!(validator.validate(&out).ok(), Some(out));
    }
});
