//! Parameter validation against the Host's contract schema: each constraint, each error path,
//! schema load errors, limits on hostile input, and properties over arbitrary input.
#![expect(clippy::expect_used, clippy::panic, reason = "test helpers fail by panicking")]

use std::collections::BTreeMap;

use aesp_core::{
    ErrorCode, ParameterValidator, Subject, TypeValidator, ValidationLimits, Violations,
    proto::v1::{AltarType, ArrayType, ObjectType, ParameterSchema, PrimitiveType, Value, altar_type::Kind},
};
use proptest::prelude::*;

fn primitive(p: PrimitiveType) -> AltarType {
    AltarType { kind: Some(Kind::Primitive(p as i32)) }
}

fn array_of(t: AltarType) -> AltarType {
    AltarType { kind: Some(Kind::Array(Box::new(ArrayType { element_type: Some(Box::new(t)) }))) }
}

fn object_of(properties: Vec<ParameterSchema>, required: &[&str]) -> AltarType {
    AltarType {
        kind: Some(Kind::Object(ObjectType {
            properties: properties.into_iter().map(|p| (p.name.clone(), p)).collect(),
            required_properties: required.iter().map(|s| (*s).to_owned()).collect(),
        })),
    }
}

fn param(name: &str, ty: AltarType, constraints: &[(&str, &str)]) -> ParameterSchema {
    ParameterSchema {
        name: name.into(),
        r#type: Some(ty),
        constraints: constraints.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..Default::default()
    }
}

fn required(mut p: ParameterSchema) -> ParameterSchema {
    p.required = true;
    p
}

fn with_default(mut p: ParameterSchema, v: Value) -> ParameterSchema {
    p.default_value = Some(v);
    p
}

fn params<const N: usize>(items: [(&str, Value); N]) -> BTreeMap<String, Value> {
    items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn compile(schemas: Vec<ParameterSchema>) -> ParameterValidator {
    ParameterValidator::compile(&schemas).unwrap_or_else(|e| panic!("schema should compile: {e}"))
}

fn schema_error(schemas: Vec<ParameterSchema>) -> Violations {
    let error = ParameterValidator::compile(&schemas).expect_err("schema should be refused");
    assert_eq!(error.subject(), Subject::Schema);
    error
}

/// The (path, rule) pairs of the violations.
fn broken(v: &Violations) -> Vec<(String, &'static str)> {
    v.list().iter().map(|v| (v.path.clone(), v.rule)).collect()
}

fn one(path: &str, rule: &'static str) -> Vec<(String, &'static str)> {
    vec![(path.to_owned(), rule)]
}

#[test]
fn types_are_checked() {
    let v = compile(vec![
        param("s", primitive(PrimitiveType::String), &[]),
        param("i", primitive(PrimitiveType::Integer), &[]),
        param("f", primitive(PrimitiveType::Float), &[]),
        param("b", primitive(PrimitiveType::Boolean), &[]),
        param("bin", primitive(PrimitiveType::Binary), &[]),
    ]);
    let ok = params([
        ("s", Value::string("x")),
        ("i", Value::integer(3)),
        ("f", Value::float(0.5)),
        ("b", Value::boolean(false)),
        ("bin", Value::binary(vec![1, 2])),
    ]);
    assert_eq!(v.validate(&ok).unwrap(), ok);

    let cases = [
        ("s", Value::integer(1)),
        ("i", Value::float(1.0)),
        ("i", Value::string("1")),
        ("f", Value::string("0.5")),
        ("f", Value::float(f64::NAN)),
        ("f", Value::float(f64::INFINITY)),
        ("b", Value::integer(1)),
        ("bin", Value::string("AAEC")),
        ("s", Value::array([])),
    ];
    for (name, value) in cases {
        let error = v.validate(&params([(name, value.clone())])).unwrap_err();
        assert_eq!(broken(&error), one(name, "type"), "{name} = {value:?}");
        assert_eq!(error.subject(), Subject::Parameters);
    }
}

#[test]
fn normalising_copies_only_what_changes_and_keeps_the_rest() {
    let v = compile(vec![
        param("a", primitive(PrimitiveType::String), &[]),
        param("b", array_of(primitive(PrimitiveType::Float)), &[]),
        with_default(param("c", primitive(PrimitiveType::Integer), &[]), Value::integer(7)),
        param("d", primitive(PrimitiveType::Boolean), &[]),
    ]);
    // Already normal: in place, nothing changes.
    let normal = params([
        ("a", Value::string("x")),
        ("b", Value::array(vec![Value::float(1.5)])),
        ("c", Value::integer(1)),
        ("d", Value::boolean(true)),
    ]);
    let mut same = normal.clone();
    v.validate_in_place(&mut same).unwrap();
    assert_eq!(same, normal);
    // Only a null: it is left out all the same, and `c` takes its default.
    let mut null = params([("a", Value::string("x")), ("c", Value::integer(1)), ("d", Value::null())]);
    v.validate_in_place(&mut null).unwrap();
    assert_eq!(null, params([("a", Value::string("x")), ("c", Value::integer(1))]));
    // The third item widens, `c` takes its default, `d`'s null is left out; `a` (before the
    // first change) and the first items are kept.
    let mut given = params([
        ("a", Value::string("x")),
        ("b", Value::array(vec![Value::float(1.5), Value::float(2.5), Value::integer(3)])),
        ("d", Value::null()),
    ]);
    v.validate_in_place(&mut given).unwrap();
    let expected = params([
        ("a", Value::string("x")),
        ("b", Value::array(vec![Value::float(1.5), Value::float(2.5), Value::float(3.0)])),
        ("c", Value::integer(7)),
    ]);
    assert_eq!(given, expected);
    // A refusal leaves the parameters as they were.
    let mut bad = params([("a", Value::integer(1)), ("b", Value::array(vec![Value::integer(2)]))]);
    let before = bad.clone();
    assert_eq!(broken(&v.validate_in_place(&mut bad).unwrap_err()), one("a", "type"));
    assert_eq!(bad, before);
}

#[test]
fn integers_widen_to_floats() {
    let v = compile(vec![param("f", primitive(PrimitiveType::Float), &[("max", "10.5")])]);
    assert_eq!(v.validate(&params([("f", Value::integer(10))])).unwrap()["f"], Value::float(10.0));
    assert_eq!(broken(&v.validate(&params([("f", Value::integer(11))])).unwrap_err()), one("f", "max"));
}

#[test]
fn required_defaults_and_unknown_parameters() {
    let v = compile(vec![
        required(param("query", primitive(PrimitiveType::String), &[])),
        with_default(param("limit", primitive(PrimitiveType::Integer), &[]), Value::integer(10)),
        param("verbose", primitive(PrimitiveType::Boolean), &[]),
    ]);
    // Defaults applied; absent optional left out.
    let out = v.validate(&params([("query", Value::string("q"))])).unwrap();
    assert_eq!(out, params([("query", Value::string("q")), ("limit", Value::integer(10))]));
    // Null counts as absent.
    let out = v.validate(&params([("query", Value::string("q")), ("limit", Value::null())])).unwrap();
    assert_eq!(out["limit"], Value::integer(10));
    // Missing required.
    assert_eq!(broken(&v.validate(&BTreeMap::new()).unwrap_err()), one("query", "required"));
    assert_eq!(
        broken(&v.validate(&params([("query", Value::null())])).unwrap_err()),
        one("query", "required")
    );
    // Unknown parameters are refused, all of them.
    let error = v
        .validate(&params([
            ("query", Value::string("q")),
            ("drop_table", Value::boolean(true)),
            ("x", Value::null()),
        ]))
        .unwrap_err();
    assert_eq!(broken(&error), vec![("drop_table".to_owned(), "unknown"), ("x".to_owned(), "unknown")]);
}

#[test]
fn numeric_bounds() {
    let v = compile(vec![param("n", primitive(PrimitiveType::Integer), &[("min", "-5"), ("max", "5")])]);
    for ok in [-5, 0, 5] {
        assert!(v.validate(&params([("n", Value::integer(ok))])).is_ok());
    }
    assert_eq!(broken(&v.validate(&params([("n", Value::integer(-6))])).unwrap_err()), one("n", "min"));
    assert_eq!(broken(&v.validate(&params([("n", Value::integer(6))])).unwrap_err()), one("n", "max"));
    let v = compile(vec![param("x", primitive(PrimitiveType::Float), &[("min", "0.25")])]);
    assert_eq!(broken(&v.validate(&params([("x", Value::float(0.2))])).unwrap_err()), one("x", "min"));
}

#[test]
fn lengths_count_characters_of_strings_and_bytes_of_binaries() {
    let v = compile(vec![
        param("s", primitive(PrimitiveType::String), &[("min_length", "2"), ("max_length", "5")]),
        param("b", primitive(PrimitiveType::Binary), &[("max_length", "3")]),
    ]);
    assert!(v.validate(&params([("s", Value::string("héllo"))])).is_ok(), "5 characters, 6 bytes");
    assert_eq!(
        broken(&v.validate(&params([("s", Value::string("x"))])).unwrap_err()),
        one("s", "min_length")
    );
    assert_eq!(
        broken(&v.validate(&params([("s", Value::string("héllo!"))])).unwrap_err()),
        one("s", "max_length")
    );
    assert!(v.validate(&params([("b", Value::binary(vec![0; 3]))])).is_ok());
    assert_eq!(
        broken(&v.validate(&params([("b", Value::binary(vec![0; 4]))])).unwrap_err()),
        one("b", "max_length")
    );
}

#[test]
fn patterns_search_unless_anchored() {
    let v = compile(vec![
        param("loose", primitive(PrimitiveType::String), &[("pattern", "[0-9]+")]),
        param("strict", primitive(PrimitiveType::String), &[("pattern", "^[a-z]{2,4}$")]),
    ]);
    assert!(v.validate(&params([("loose", Value::string("abc123"))])).is_ok());
    assert_eq!(
        broken(&v.validate(&params([("loose", Value::string("abc"))])).unwrap_err()),
        one("loose", "pattern")
    );
    assert!(v.validate(&params([("strict", Value::string("abcd"))])).is_ok());
    assert_eq!(
        broken(&v.validate(&params([("strict", Value::string("abcde"))])).unwrap_err()),
        one("strict", "pattern")
    );
}

#[test]
fn enums_are_json_arrays_of_the_type() {
    let v = compile(vec![
        param("env", primitive(PrimitiveType::String), &[("enum", r#"["dev", "prod"]"#)]),
        param("level", primitive(PrimitiveType::Integer), &[("enum", "[1, 2, 3]")]),
        param("ratio", primitive(PrimitiveType::Float), &[("enum", "[0.5, 1]")]),
    ]);
    assert!(v.validate(&params([("env", Value::string("prod")), ("level", Value::integer(2))])).is_ok());
    assert_eq!(
        broken(&v.validate(&params([("env", Value::string("staging"))])).unwrap_err()),
        one("env", "enum")
    );
    assert_eq!(
        broken(&v.validate(&params([("level", Value::integer(4))])).unwrap_err()),
        one("level", "enum")
    );
    // The integer 1 in a float enum is the float 1.0, and an integer argument widens to it.
    assert!(v.validate(&params([("ratio", Value::integer(1))])).is_ok());
    assert!(v.validate(&params([("ratio", Value::float(1.0))])).is_ok());
}

#[test]
fn array_item_counts() {
    let v = compile(vec![param(
        "tags",
        array_of(primitive(PrimitiveType::String)),
        &[("min_items", "1"), ("max_items", "2")],
    )]);
    assert!(v.validate(&params([("tags", Value::array([Value::string("a")]))])).is_ok());
    assert_eq!(
        broken(&v.validate(&params([("tags", Value::array([]))])).unwrap_err()),
        one("tags", "min_items")
    );
    let three = Value::array(["a", "b", "c"].map(Value::string));
    assert_eq!(broken(&v.validate(&params([("tags", three)])).unwrap_err()), one("tags", "max_items"));
    let mixed = Value::array([Value::string("a"), Value::integer(1)]);
    assert_eq!(broken(&v.validate(&params([("tags", mixed)])).unwrap_err()), one("tags[1]", "type"));
}

fn items_schema() -> ParameterValidator {
    let item = object_of(
        vec![
            param("name", primitive(PrimitiveType::String), &[("max_length", "3")]),
            with_default(param("qty", primitive(PrimitiveType::Integer), &[("min", "1")]), Value::integer(1)),
        ],
        &["name"],
    );
    compile(vec![required(param("items", array_of(item), &[("max_items", "10")]))])
}

#[test]
fn nested_errors_name_their_path() {
    let v = items_schema();
    let item = |name: &str| Value::object([("name", Value::string(name))]);
    let list = Value::array([item("ab"), item("cd"), item("ef"), item("toolong")]);
    let error = v.validate(&params([("items", list)])).unwrap_err();
    assert_eq!(broken(&error), one("items[3].name", "max_length"));
    assert!(error.to_string().contains("`items[3].name`: max_length"), "{error}");

    // Defaults apply inside nested objects; required properties are enforced there.
    let out = v.validate(&params([("items", Value::array([item("ab")]))])).unwrap();
    let first = &out["items"].as_array().unwrap()[0];
    assert_eq!(first.as_object().unwrap()["qty"], Value::integer(1));
    let nameless = Value::array([Value::object([("qty", Value::integer(2))])]);
    assert_eq!(
        broken(&v.validate(&params([("items", nameless)])).unwrap_err()),
        one("items[0].name", "required")
    );
    let extra = Value::array([Value::object([("name", Value::string("a")), ("price", Value::integer(0))])]);
    assert_eq!(
        broken(&v.validate(&params([("items", extra)])).unwrap_err()),
        one("items[0].price", "unknown")
    );
}

#[test]
fn violations_become_a_validation_failed_error() {
    let v = items_schema();
    let error: aesp_core::Error = v.validate(&BTreeMap::new()).unwrap_err().into();
    assert_eq!(error.code(), ErrorCode::ValidationFailed);
    assert_eq!(error.detail("violation.0.path"), Some("items"));
    assert_eq!(error.detail("violation.0.rule"), Some("required"));
    assert!(!error.remediation_steps().is_empty());
}

#[test]
fn bad_schemas_are_load_errors() {
    let s = || primitive(PrimitiveType::String);
    let i = || primitive(PrimitiveType::Integer);
    let cases: Vec<(ParameterSchema, &str)> = vec![
        (param("p", s(), &[("pattern", "([a-z]")]), "not a valid pattern"),
        (param("p", s(), &[("pattern", &"a".repeat(2000))]), "longer than"),
        (param("p", s(), &[("pattern", "(a{1000}){1000}")]), "not a valid pattern"),
        (param("p", s(), &[("enum", "[\"a\", ")]), "not JSON"),
        (param("p", s(), &[("enum", "{\"a\": 1}")]), "not a JSON array"),
        (param("p", s(), &[("enum", "[]")]), "allows nothing"),
        (param("p", s(), &[("enum", "[\"a\", 1]")]), "entry 1 is not of the parameter's type"),
        (param("p", i(), &[("min", "5"), ("max", "1")]), "`min` is greater than `max`"),
        (param("p", i(), &[("min", "1.5")]), "not a number of the parameter's type"),
        (param("p", s(), &[("min_length", "5"), ("max_length", "1")]), "`min_length` is greater"),
        (param("p", s(), &[("max_length", "-1")]), "non-negative"),
        (param("p", s(), &[("min", "1")]), "does not apply to type string"),
        (param("p", i(), &[("pattern", "x")]), "does not apply to type integer"),
        (param("p", s(), &[("max_lenght", "3")]), "unknown constraint `max_lenght`"),
        (param("p", array_of(s()), &[("min_items", "3"), ("max_items", "2")]), "`min_items` is greater"),
        (param("p", primitive(PrimitiveType::Binary), &[("enum", "[\"a\"]")]), "does not apply"),
        (ParameterSchema { name: "p".into(), ..Default::default() }, "no type"),
        (param("p", primitive(PrimitiveType::Unspecified), &[]), "not a primitive type"),
        (param("p", object_of(vec![], &["ghost"]), &[]), "not declared"),
        (
            with_default(param("p", s(), &[("max_length", "2")]), Value::string("toolong")),
            "the default is invalid",
        ),
        (with_default(param("p", i(), &[]), Value::string("1")), "the default is invalid"),
        (param("", s(), &[]), "needs a name"),
    ];
    for (schema, expected) in cases {
        let error = schema_error(vec![schema.clone()]);
        assert!(error.to_string().contains(expected), "{schema:?}: expected `{expected}` in `{error}`");
        let as_error: aesp_core::Error = error.into();
        assert_eq!(as_error.code(), ErrorCode::InvalidArgument);
    }
    let duplicate = schema_error(vec![param("p", s(), &[]), param("p", s(), &[])]);
    assert_eq!(broken(&duplicate), one("p", "duplicate"));
    // Deeply nested types are refused, not recursed into.
    let mut deep = s();
    for _ in 0..100 {
        deep = array_of(deep);
    }
    assert!(schema_error(vec![param("p", deep, &[])]).list().iter().any(|v| v.rule == "depth"));
}

#[test]
fn hostile_values_are_bounded() {
    let limits =
        ValidationLimits { max_depth: 8, max_nodes: 1000, max_violations: 5, ..ValidationLimits::default() };
    let mut deep_type = primitive(PrimitiveType::Integer);
    for _ in 0..12 {
        deep_type = array_of(deep_type);
    }
    let v = ParameterValidator::compile_with_limits(&[param("d", deep_type, &[])], limits.clone()).unwrap();
    let mut deep = Value::integer(1);
    for _ in 0..12 {
        deep = Value::array([deep]);
    }
    let error = v.validate(&params([("d", deep)])).unwrap_err();
    assert_eq!(error.list()[0].rule, "depth");

    let v = ParameterValidator::compile_with_limits(
        &[param("a", array_of(primitive(PrimitiveType::String)), &[])],
        limits,
    )
    .unwrap();
    let wide = Value::array((0..5000).map(|_| Value::string("x")));
    let error = v.validate(&params([("a", wide)])).unwrap_err();
    assert_eq!(broken(&error), one("a[999]", "size"));
    // Violations are capped and say so.
    let wrong = Value::array((0..500).map(Value::integer));
    let error = v.validate(&params([("a", wrong)])).unwrap_err();
    assert_eq!(error.list().len(), 5);
    assert!(error.truncated());
    assert!(error.to_string().ends_with("and more"));
}

#[test]
fn return_types_validate_single_values() {
    let t = TypeValidator::compile(&object_of(
        vec![required(param("rows", primitive(PrimitiveType::Integer), &[]))],
        &[],
    ))
    .unwrap();
    assert!(t.validate(&Value::object([("rows", Value::integer(3))])).is_ok());
    let error = t.validate(&Value::object([("rows", Value::string("3"))])).unwrap_err();
    assert_eq!(broken(&error), one("rows", "type"));
    assert_eq!(broken(&t.validate(&Value::string("x")).unwrap_err()), one("", "type"));
    assert!(TypeValidator::compile(&AltarType::default()).is_err());
}

// Property tests: arbitrary schemas and values never panic; a validated output validates again
// to itself (validation is idempotent).

fn arb_primitive() -> impl Strategy<Value = i32> {
    prop_oneof![Just(1), Just(2), Just(3), Just(4), Just(5), -1i32..8]
}

fn arb_constraint() -> impl Strategy<Value = (String, String)> {
    let names = prop::sample::select(vec![
        "min",
        "max",
        "min_length",
        "max_length",
        "pattern",
        "enum",
        "min_items",
        "max_items",
        "bogus",
    ]);
    let values = prop_oneof![
        (-10i64..10).prop_map(|n| n.to_string()),
        Just("1.5".to_owned()),
        Just(r#"["a","b"]"#.to_owned()),
        Just("[1, 2.5, true]".to_owned()),
        Just("^[a-z]+$".to_owned()),
        Just("(".to_owned()),
        ".{0,12}",
    ];
    (names, values).prop_map(|(n, v)| (n.to_owned(), v))
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::null()),
        Just(Value::default()),
        ".{0,8}".prop_map(Value::string),
        any::<i64>().prop_map(Value::integer),
        any::<f64>().prop_map(Value::float),
        any::<bool>().prop_map(Value::boolean),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::binary),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::array),
            prop::collection::btree_map(prop::sample::select(vec!["a", "b", "name", "x"]), inner, 0..4)
                .prop_map(Value::object),
        ]
    })
}

fn arb_type() -> impl Strategy<Value = AltarType> {
    let leaf = arb_primitive().prop_map(|p| AltarType { kind: Some(Kind::Primitive(p)) });
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(array_of),
            Just(AltarType::default()),
            prop::collection::vec((prop::sample::select(vec!["a", "b", "name"]), inner, any::<bool>()), 0..3)
                .prop_map(|props| {
                    let schemas = props
                        .into_iter()
                        .map(|(n, t, r)| ParameterSchema {
                            name: n.into(),
                            r#type: Some(t),
                            required: r,
                            ..Default::default()
                        })
                        .collect();
                    object_of(schemas, &[])
                }),
        ]
    })
}

fn arb_schema() -> impl Strategy<Value = ParameterSchema> {
    (
        prop::sample::select(vec!["a", "b", "name", "x", ""]),
        arb_type(),
        any::<bool>(),
        prop::option::of(arb_value()),
        prop::collection::vec(arb_constraint(), 0..3),
    )
        .prop_map(|(name, ty, required, default_value, constraints)| ParameterSchema {
            name: name.into(),
            r#type: Some(ty),
            required,
            default_value,
            constraints: constraints.into_iter().collect(),
            ..Default::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn validation_never_panics_and_is_idempotent(
        schemas in prop::collection::vec(arb_schema(), 0..4),
        values in prop::collection::btree_map(prop::sample::select(vec!["a", "b", "name", "x", "y"]), arb_value(), 0..5),
    ) {
        let values: BTreeMap<String, Value> = values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if let Ok(validator) = ParameterValidator::compile(&schemas)
            && let Ok(out) = validator.validate(&values)
        {
            let again = validator.validate(&out);
            prop_assert_eq!(again.as_ref().ok(), Some(&out), "validating the output again changes it");
        }
    }

    #[test]
    fn validating_in_place_gives_what_validate_returns(
        schemas in prop::collection::vec(arb_schema(), 0..4),
        values in prop::collection::btree_map(prop::sample::select(vec!["a", "b", "name", "x", "y"]), arb_value(), 0..5),
    ) {
        let values: BTreeMap<String, Value> = values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if let Ok(validator) = ParameterValidator::compile(&schemas) {
            let mut in_place = values.clone();
            match (validator.validate(&values), validator.validate_in_place(&mut in_place)) {
                (Ok(out), Ok(())) => prop_assert_eq!(in_place, out),
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a.to_string(), b.to_string());
                    prop_assert_eq!(in_place, values, "refused parameters are left as they were");
                }
                (a, b) => prop_assert!(false, "validate gave {:?}, in place {:?}", a.map(drop), b),
            }
        }
    }

    #[test]
    fn type_validation_never_panics(ty in arb_type(), value in arb_value()) {
        if let Ok(validator) = TypeValidator::compile(&ty) {
            let checked = validator.check(&value).map_err(|e| e.to_string());
            prop_assert_eq!(checked, validator.validate(&value).map(drop).map_err(|e| e.to_string()));
        }
    }

    #[test]
    fn json_conversion_round_trips(value in arb_value()) {
        if let Ok(json) = value.to_json() {
            let back = Value::from_json(&json).unwrap();
            // Binary becomes a string and a kind-less value becomes null; otherwise exact.
            prop_assert_eq!(back.to_json().unwrap(), json);
        }
    }
}
