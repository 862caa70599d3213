//! Runs the official CEL conformance cases (`shared/cel-spec/*.json`) through the engine's
//! own evaluator. Every case must pass except those in `tests/cel_known_failures.txt`; a
//! known failure that passes fails the test too, so the list stays honest.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::PathBuf,
    sync::Arc,
};

use base64::Engine as _;
use cel::{
    Value as CelValue,
    objects::{Key, Map},
};
use serde_json::Value as Json;

use crate::Engine;

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/cel-spec")
}

fn known_failures_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cel_known_failures.txt")
}

fn double(json: &Json) -> f64 {
    match json {
        Json::Number(n) => n.as_f64().unwrap(),
        Json::String(s) => match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            other => other.parse().unwrap(),
        },
        other => panic!("not a double: {other}"),
    }
}

/// What a `cel.expr.Value` stands for: a value, a type, or something this harness cannot
/// build (a protobuf message).
enum Expected {
    Value(CelValue),
    Type(String),
    Unsupported(String),
}

fn key(value: CelValue) -> Option<Key> {
    Some(match value {
        CelValue::Int(i) => Key::Int(i),
        CelValue::UInt(u) => Key::Uint(u),
        CelValue::Bool(b) => Key::Bool(b),
        CelValue::String(s) => Key::String(s),
        _ => return None,
    })
}

fn expected(json: &Json) -> Expected {
    let Some((kind, inner)) = json.as_object().and_then(|o| o.iter().next()) else {
        return Expected::Unsupported(format!("empty value {json}"));
    };
    let value = match kind.as_str() {
        "nullValue" => CelValue::Null,
        "boolValue" => CelValue::Bool(inner.as_bool().unwrap()),
        "int64Value" => CelValue::Int(inner.as_str().map(|s| s.parse().unwrap()).or(inner.as_i64()).unwrap()),
        "uint64Value" => {
            CelValue::UInt(inner.as_str().map(|s| s.parse().unwrap()).or(inner.as_u64()).unwrap())
        }
        "doubleValue" => CelValue::Float(double(inner)),
        "stringValue" => CelValue::String(Arc::new(inner.as_str().unwrap().to_owned())),
        "bytesValue" => CelValue::Bytes(Arc::new(
            base64::engine::general_purpose::STANDARD.decode(inner.as_str().unwrap()).unwrap(),
        )),
        "listValue" => {
            let mut items = Vec::new();
            for item in inner.get("values").and_then(Json::as_array).into_iter().flatten() {
                match expected(item) {
                    Expected::Value(v) => items.push(v),
                    _ => return Expected::Unsupported("a list of types or messages".to_owned()),
                }
            }
            CelValue::List(Arc::new(items))
        }
        "mapValue" => {
            let mut map = HashMap::new();
            for entry in inner.get("entries").and_then(Json::as_array).into_iter().flatten() {
                let (Expected::Value(k), Expected::Value(v)) =
                    (expected(&entry["key"]), expected(&entry["value"]))
                else {
                    return Expected::Unsupported("a map of types or messages".to_owned());
                };
                let Some(k) = key(k) else {
                    return Expected::Unsupported("a map key of another type".to_owned());
                };
                map.insert(k, v);
            }
            CelValue::Map(Map { map: Arc::new(map) })
        }
        "typeValue" => return Expected::Type(inner.as_str().unwrap().to_owned()),
        other => return Expected::Unsupported(format!("`{other}` values")),
    };
    Expected::Value(value)
}

/// Strict equality: same kind and same value (NaN equals NaN here).
fn same(a: &CelValue, b: &CelValue) -> bool {
    match (a, b) {
        (CelValue::Float(x), CelValue::Float(y)) => (x.is_nan() && y.is_nan()) || x == y,
        (CelValue::List(x), CelValue::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(a, b)| same(a, b))
        }
        (CelValue::Map(x), CelValue::Map(y)) => {
            x.map.len() == y.map.len() && x.map.iter().all(|(k, v)| y.map.get(k).is_some_and(|w| same(v, w)))
        }
        (CelValue::Int(_), CelValue::Int(_))
        | (CelValue::UInt(_), CelValue::UInt(_))
        | (CelValue::String(_), CelValue::String(_))
        | (CelValue::Bytes(_), CelValue::Bytes(_))
        | (CelValue::Bool(_), CelValue::Bool(_))
        | (CelValue::Null, CelValue::Null)
        | (CelValue::Timestamp(_), CelValue::Timestamp(_))
        | (CelValue::Duration(_), CelValue::Duration(_)) => a == b,
        _ => false,
    }
}

/// Runs one case; `Err` says why it failed.
fn run_case(engine: &Engine, case: &Json) -> Result<(), String> {
    if case.get("checkOnly").and_then(Json::as_bool) == Some(true) {
        return Err("check-only case: needs a type checker".to_owned());
    }
    let source = case["expr"].as_str().unwrap();
    let mut variables = Vec::new();
    if let Some(bindings) = case.get("bindings").and_then(Json::as_object) {
        for (name, binding) in bindings {
            match expected(&binding["value"]) {
                Expected::Value(value) => variables.push((name.clone(), value)),
                Expected::Type(_) => return Err("binds a type value".to_owned()),
                Expected::Unsupported(what) => return Err(format!("binds {what}")),
            }
        }
    }
    let container = case.get("container").and_then(Json::as_str);
    let outcome = engine.evaluate_expression(source, variables, container);
    if case.get("evalError").is_some() {
        return match outcome {
            Err(Err(_)) => Ok(()),
            Ok(value) => Err(format!("expected an error, got {value:?}")),
            Err(Ok(ty)) => Err(format!("expected an error, got the type {ty}")),
        };
    }
    let want = match case.get("value") {
        Some(value) => expected(value),
        None if case.get("typedResult").is_some() => expected(&case["typedResult"]["result"]),
        None => Expected::Value(CelValue::Bool(true)),
    };
    match (want, outcome) {
        (Expected::Unsupported(what), _) => Err(format!("expects {what}")),
        (Expected::Value(want), Ok(got)) if same(&want, &got) => Ok(()),
        (Expected::Type(want), Err(Ok(got))) if want == got => Ok(()),
        (Expected::Value(want), got) => Err(format!("expected {want:?}, got {got:?}")),
        (Expected::Type(want), got) => Err(format!("expected the type {want}, got {got:?}")),
    }
}

#[test]
fn official_cel_conformance_cases() {
    let engine = Engine::default();
    let known_text = fs::read_to_string(known_failures_file()).unwrap();
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    for line in known_text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let (id, reason) = line.split_once('\t').unwrap_or_else(|| panic!("no tab-separated reason: {line}"));
        assert!(!reason.trim().is_empty(), "no reason for {id}");
        assert!(known.insert(id.to_owned(), reason.to_owned()).is_none(), "listed twice: {id}");
    }

    let mut files: Vec<PathBuf> = fs::read_dir(spec_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 14, "the conformance files are missing from {}", spec_dir().display());

    let (mut passed, mut seen) = (0, Vec::new());
    let (mut new_failures, mut now_passing) = (Vec::new(), Vec::new());
    for path in &files {
        let file: Json = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        let file_name = path.file_stem().unwrap().to_string_lossy().into_owned();
        for section in file["section"].as_array().unwrap() {
            for case in section["test"].as_array().unwrap() {
                let id = format!(
                    "{file_name}/{}/{}",
                    section["name"].as_str().unwrap(),
                    case["name"].as_str().unwrap()
                );
                let result = run_case(&engine, case);
                match (&result, known.contains_key(&id)) {
                    (Ok(()), false) => passed += 1,
                    (Ok(()), true) => now_passing.push(id.clone()),
                    (Err(why), false) => {
                        new_failures.push(format!("{id}\t{why}\t`{}`", case["expr"].as_str().unwrap()))
                    }
                    (Err(_), true) => {}
                }
                seen.push(id);
            }
        }
    }
    let stale: Vec<&String> = known.keys().filter(|k| !seen.contains(k)).collect();
    println!("CEL conformance: {passed} passed, {} known failures, {} cases", known.len(), seen.len());
    if std::env::var_os("AESP_PRINT_CEL_FAILURES").is_some() {
        for line in &new_failures {
            println!("{line}");
        }
    }
    assert!(new_failures.is_empty(), "{} new failures:\n{}", new_failures.len(), new_failures.join("\n"));
    assert!(
        now_passing.is_empty(),
        "known failures that now pass (remove them from the list):\n{}",
        now_passing.join("\n")
    );
    assert!(stale.is_empty(), "known failures that are no cases: {stale:?}");
}
