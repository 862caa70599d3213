//! Constructors for the protocol's dynamic [`Value`] and its conversions to and from
//! [`serde_json::Value`].
//!
//! JSON has no binary type and no non-finite numbers, so the conversion is exact except in
//! two documented places: `binary_value` becomes a base64 string (standard alphabet, padded),
//! and a non-finite float is refused.

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::{
    error::{Error, ErrorCode, Result},
    proto::v1::{ArrayValue, NullValue, ObjectValue, Value, value::Kind},
};

/// The deepest nesting that the JSON conversions accept; deeper input is refused rather than
/// risking the stack.
pub const MAX_JSON_DEPTH: usize = 64;

impl Value {
    /// The null value.
    pub fn null() -> Self {
        Self { kind: Some(Kind::NullValue(NullValue::NullValue as i32)) }
    }

    /// A string value.
    pub fn string(s: impl Into<String>) -> Self {
        Self { kind: Some(Kind::StringValue(s.into())) }
    }

    /// An integer value.
    pub fn integer(i: i64) -> Self {
        Self { kind: Some(Kind::IntegerValue(i)) }
    }

    /// A float value.
    pub fn float(f: f64) -> Self {
        Self { kind: Some(Kind::FloatValue(f)) }
    }

    /// A boolean value.
    pub fn boolean(b: bool) -> Self {
        Self { kind: Some(Kind::BooleanValue(b)) }
    }

    /// A binary value.
    pub fn binary(bytes: impl Into<Vec<u8>>) -> Self {
        Self { kind: Some(Kind::BinaryValue(bytes.into())) }
    }

    /// An array value.
    pub fn array(values: impl IntoIterator<Item = Value>) -> Self {
        Self { kind: Some(Kind::ArrayValue(ArrayValue { values: values.into_iter().collect() })) }
    }

    /// An object value.
    pub fn object<K: Into<String>>(fields: impl IntoIterator<Item = (K, Value)>) -> Self {
        let fields = fields.into_iter().map(|(k, v)| (k.into(), v)).collect();
        Self { kind: Some(Kind::ObjectValue(ObjectValue { fields })) }
    }

    /// Whether this is null; a `Value` with no kind set counts as null.
    pub fn is_null(&self) -> bool {
        matches!(self.kind, None | Some(Kind::NullValue(_)))
    }

    /// The name of the value's kind, for messages: `null`, `string`, `integer`, `float`,
    /// `boolean`, `binary`, `array` or `object`.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            None | Some(Kind::NullValue(_)) => "null",
            Some(Kind::StringValue(_)) => "string",
            Some(Kind::IntegerValue(_)) => "integer",
            Some(Kind::FloatValue(_)) => "float",
            Some(Kind::BooleanValue(_)) => "boolean",
            Some(Kind::BinaryValue(_)) => "binary",
            Some(Kind::ArrayValue(_)) => "array",
            Some(Kind::ObjectValue(_)) => "object",
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Some(Kind::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self.kind {
            Some(Kind::IntegerValue(i)) => Some(i),
            _ => None,
        }
    }

    /// The number as a float, if this is an integer or a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self.kind {
            Some(Kind::FloatValue(f)) => Some(f),
            #[expect(clippy::cast_precision_loss, reason = "widening to a float is what is asked for")]
            Some(Kind::IntegerValue(i)) => Some(i as f64),
            _ => None,
        }
    }

    /// The boolean, if this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self.kind {
            Some(Kind::BooleanValue(b)) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match &self.kind {
            Some(Kind::ArrayValue(a)) => Some(&a.values),
            _ => None,
        }
    }

    /// The fields, if this is an object.
    pub fn as_object(&self) -> Option<&BTreeMap<String, Value>> {
        match &self.kind {
            Some(Kind::ObjectValue(o)) => Some(&o.fields),
            _ => None,
        }
    }

    /// Converts from JSON: integers that fit in `i64` become `integer_value`, every other
    /// number `float_value`. Input nested deeper than [`MAX_JSON_DEPTH`] is refused.
    pub fn from_json(json: &serde_json::Value) -> Result<Self> {
        from_json_at(json, 0)
    }

    /// Converts to JSON. Binary becomes a base64 string; a non-finite float is an error.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        to_json_at(self, 0)
    }
}

fn too_deep() -> Error {
    Error::new(ErrorCode::ValidationFailed, format!("value is nested deeper than {MAX_JSON_DEPTH} levels"))
}

fn from_json_at(json: &serde_json::Value, depth: usize) -> Result<Value> {
    if depth >= MAX_JSON_DEPTH {
        return Err(too_deep());
    }
    Ok(match json {
        serde_json::Value::Null => Value::null(),
        serde_json::Value::Bool(b) => Value::boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::integer(i),
            None => Value::float(n.as_f64().ok_or_else(|| {
                Error::new(ErrorCode::ValidationFailed, format!("number `{n}` is not representable"))
            })?),
        },
        serde_json::Value::String(s) => Value::string(s.clone()),
        serde_json::Value::Array(items) => {
            Value::array(items.iter().map(|v| from_json_at(v, depth + 1)).collect::<Result<Vec<_>>>()?)
        }
        serde_json::Value::Object(map) => Value::object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), from_json_at(v, depth + 1)?)))
                .collect::<Result<Vec<_>>>()?,
        ),
    })
}

fn to_json_at(value: &Value, depth: usize) -> Result<serde_json::Value> {
    if depth >= MAX_JSON_DEPTH {
        return Err(too_deep());
    }
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::IntegerValue(i)) => serde_json::Value::from(*i),
        Some(Kind::FloatValue(f)) => {
            serde_json::Number::from_f64(*f).map(serde_json::Value::Number).ok_or_else(|| {
                Error::new(ErrorCode::ValidationFailed, format!("float `{f}` has no JSON form"))
            })?
        }
        Some(Kind::BooleanValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::BinaryValue(bytes)) => {
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Some(Kind::ArrayValue(a)) => serde_json::Value::Array(
            a.values.iter().map(|v| to_json_at(v, depth + 1)).collect::<Result<Vec<_>>>()?,
        ),
        Some(Kind::ObjectValue(o)) => serde_json::Value::Object(
            o.fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json_at(v, depth + 1)?)))
                .collect::<Result<serde_json::Map<_, _>>>()?,
        ),
    })
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::string(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::string(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::integer(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::float(f)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::boolean(b)
    }
}

impl From<Vec<Value>> for Value {
    fn from(values: Vec<Value>) -> Self {
        Value::array(values)
    }
}

impl From<BTreeMap<String, Value>> for Value {
    fn from(fields: BTreeMap<String, Value>) -> Self {
        Self { kind: Some(Kind::ObjectValue(ObjectValue { fields })) }
    }
}

impl TryFrom<&serde_json::Value> for Value {
    type Error = Error;

    fn try_from(json: &serde_json::Value) -> Result<Self> {
        Value::from_json(json)
    }
}

impl TryFrom<&Value> for serde_json::Value {
    type Error = Error;

    fn try_from(value: &Value) -> Result<Self> {
        value.to_json()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_round_trip_is_exact_for_json_values() {
        let json = json!({
            "name": "report", "limit": 10, "ratio": 0.25, "big": 1.0e300, "ok": true,
            "nothing": null, "tags": ["a", "b"], "nested": {"depth": [1, [2, [3]]]},
            "huge": 18446744073709551615u64
        });
        let value = Value::from_json(&json).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object["limit"].as_i64(), Some(10));
        assert_eq!(object["ratio"].as_f64(), Some(0.25));
        assert!(object["nothing"].is_null());
        // u64 beyond i64 becomes a float.
        assert_eq!(object["huge"].kind_name(), "float");
        let mut expected = json.clone();
        expected["huge"] = json!(18446744073709551615u64 as f64);
        assert_eq!(value.to_json().unwrap(), expected);
    }

    #[test]
    fn binary_becomes_base64_and_non_finite_floats_are_refused() {
        assert_eq!(Value::binary(vec![0xde, 0xad, 0xbe, 0xef]).to_json().unwrap(), json!("3q2+7w=="));
        let error = Value::float(f64::NAN).to_json().unwrap_err();
        assert_eq!(error.code(), ErrorCode::ValidationFailed);
        assert!(Value::array([Value::float(f64::INFINITY)]).to_json().is_err());
    }

    #[test]
    fn a_value_without_kind_is_null() {
        assert!(Value::default().is_null());
        assert_eq!(Value::default().to_json().unwrap(), serde_json::Value::Null);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut value = Value::integer(1);
        for _ in 0..MAX_JSON_DEPTH + 1 {
            value = Value::array([value]);
        }
        assert_eq!(value.to_json().unwrap_err().code(), ErrorCode::ValidationFailed);
        let mut json = json!(1);
        for _ in 0..MAX_JSON_DEPTH + 1 {
            json = json!([json]);
        }
        assert_eq!(Value::from_json(&json).unwrap_err().code(), ErrorCode::ValidationFailed);
    }
}
