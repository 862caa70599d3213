//! Validation of tool parameters against the Host's contract schema (specification §3.2: all
//! parameter validation happens against the Host's trusted schema, never the runtime's).
//!
//! A contract's [`ParameterSchema`]s are compiled once, when the contract is loaded:
//! [`ParameterValidator::compile`] checks the schema itself (known constraints that apply to
//! the type, patterns that compile within the cost limits, `enum` lists that are JSON arrays
//! of values of the right type, `min` ≤ `max`, defaults that satisfy their own schema) and
//! refuses a bad one with [`Violations`] naming each problem. The compiled validator then
//! checks each call's `map<string, Value>` and returns it with defaults applied.
//!
//! # Semantics
//! - A parameter that is absent or null takes its default; with no default it is an error if
//!   `required` (or listed in `required_properties` for an object property) and otherwise left
//!   out.
//! - Parameters and object properties that the schema does not name are refused.
//! - `INTEGER` accepts integers only; `FLOAT` accepts floats and integers (widened to float in
//!   the output) and refuses non-finite numbers.
//! - `min`/`max` bound numbers (inclusive); `min_length`/`max_length` count characters of a
//!   string and bytes of a binary; `pattern` is a regular expression in the `regex` crate's
//!   syntax that must match somewhere in the string (anchor it with `^…$` to match the whole);
//!   `enum` is a JSON array of the allowed values; `min_items`/`max_items` bound arrays.
//!
//! # Hostile input
//! Everything is bounded by [`ValidationLimits`]: value nesting depth, the number of nodes and
//! bytes in a call, schema nesting depth, pattern length and compiled size (the `regex` crate
//! matches in linear time, so a pattern's cost is bounded by its size and the input's), and the
//! number of violations reported. Validation never panics and never recurses deeper than the
//! depth limit.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use crate::{
    error::{Error, ErrorCode},
    proto::v1::{AltarType, ParameterSchema, PrimitiveType, Value, altar_type, value::Kind},
};

/// Bounds on schemas and on the values checked against them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationLimits {
    /// The deepest nesting of a value (a top-level scalar has depth 1).
    pub max_depth: usize,
    /// The most values (scalars, arrays, objects and their elements) in one call.
    pub max_nodes: usize,
    /// The most bytes of strings and binaries in one call.
    pub max_bytes: usize,
    /// The deepest nesting of a schema's types.
    pub max_schema_depth: usize,
    /// The longest `pattern`, in bytes.
    pub max_pattern_len: usize,
    /// The largest compiled pattern, in bytes (the `regex` crate's size limit).
    pub max_pattern_size: usize,
    /// The most entries in one `enum` constraint.
    pub max_enum_values: usize,
    /// The most violations reported before validation stops.
    pub max_violations: usize,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_nodes: 100_000,
            max_bytes: 16 << 20,
            max_schema_depth: 16,
            max_pattern_len: 1024,
            max_pattern_size: 256 << 10,
            max_enum_values: 1024,
            max_violations: 32,
        }
    }
}

/// One broken rule: where, which rule, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Where, as `items[3].name`; empty for the parameter map as a whole.
    pub path: String,
    /// The rule that was broken: a constraint name (`min`, `pattern`, ...) or one of `type`,
    /// `required`, `unknown`, `depth`, `size`, `constraint`, `duplicate`, `default`.
    pub rule: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.rule, self.message)
        } else {
            write!(f, "`{}`: {}: {}", self.path, self.rule, self.message)
        }
    }
}

/// What was validated: a contract's schema (when it is loaded) or a call's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// The schema itself is invalid: a load error.
    Schema,
    /// The parameters do not satisfy the schema.
    Parameters,
}

/// The violations found, at least one, in the order found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.summary())]
pub struct Violations {
    subject: Subject,
    list: Vec<Violation>,
    truncated: bool,
}

impl Violations {
    /// What was validated.
    pub fn subject(&self) -> Subject {
        self.subject
    }

    /// The violations, in the order found.
    pub fn list(&self) -> &[Violation] {
        &self.list
    }

    /// Whether validation stopped at [`ValidationLimits::max_violations`].
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    fn summary(&self) -> String {
        let what = match self.subject {
            Subject::Schema => "invalid schema",
            Subject::Parameters => "invalid parameters",
        };
        let all: Vec<String> = self.list.iter().map(ToString::to_string).collect();
        let more = if self.truncated { "; and more" } else { "" };
        format!("{what}: {}{more}", all.join("; "))
    }
}

impl From<Violations> for Error {
    /// `VALIDATION_FAILED` for parameters, `INVALID_ARGUMENT` for a schema; the details hold
    /// `violation.N.path`, `violation.N.rule` and `violation.N.message` for each violation.
    fn from(v: Violations) -> Self {
        let code = match v.subject {
            Subject::Schema => ErrorCode::InvalidArgument,
            Subject::Parameters => ErrorCode::ValidationFailed,
        };
        let mut error = Error::new(code, v.summary());
        for (i, violation) in v.list.iter().enumerate() {
            error = error
                .with_detail(format!("violation.{i}.path"), violation.path.clone())
                .with_detail(format!("violation.{i}.rule"), violation.rule)
                .with_detail(format!("violation.{i}.message"), violation.message.clone());
        }
        error.with_remediation("correct the listed fields and retry")
    }
}

/// How many segments a [`Path`] holds without allocating (deeper paths spill to the heap).
const INLINE_SEGMENTS: usize = 8;

/// A path under construction: segments are pushed and popped as validation descends. The
/// names are borrowed from the schema or the value walked, and the first
/// [`INLINE_SEGMENTS`] segments live in place, so descending allocates nothing for the
/// parameters of almost every call.
struct Path<'a> {
    inline: [Segment<'a>; INLINE_SEGMENTS],
    /// The segments beyond the inline ones.
    spilled: Vec<Segment<'a>>,
    len: usize,
}

impl Default for Path<'_> {
    fn default() -> Self {
        Self { inline: [Segment::Index(0); INLINE_SEGMENTS], spilled: Vec::new(), len: 0 }
    }
}

#[derive(Clone, Copy)]
enum Segment<'a> {
    Field(&'a str),
    Index(usize),
}

/// Longest field name shown in a path; longer (hostile) names are cut.
const MAX_SHOWN_NAME: usize = 64;

impl<'a> Path<'a> {
    fn push(&mut self, segment: Segment<'a>) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = segment,
            None => self.spilled.push(segment),
        }
        self.len += 1;
    }

    fn pop(&mut self) {
        if self.len > INLINE_SEGMENTS {
            self.spilled.pop();
        }
        self.len = self.len.saturating_sub(1);
    }

    fn segments(&self) -> impl Iterator<Item = &Segment<'a>> {
        self.inline.iter().take(self.len).chain(&self.spilled)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for segment in self.segments() {
            match segment {
                Segment::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    let mut cut: String = name.chars().take(MAX_SHOWN_NAME).collect();
                    if cut.len() < name.len() {
                        cut.push('…');
                    }
                    out.push_str(&cut);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

/// Collects violations up to the limit.
struct Report {
    list: Vec<Violation>,
    max: usize,
    truncated: bool,
}

impl Report {
    fn new(max: usize) -> Self {
        Self { list: Vec::new(), max: max.max(1), truncated: false }
    }

    fn add(&mut self, path: &Path<'_>, rule: &'static str, message: impl Into<String>) {
        if self.list.len() < self.max {
            self.list.push(Violation { path: path.render(), rule, message: message.into() });
        } else {
            self.truncated = true;
        }
    }

    fn full(&self) -> bool {
        self.truncated
    }

    fn finish(self, subject: Subject) -> Result<(), Violations> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(Violations { subject, list: self.list, truncated: self.truncated })
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Primitive {
    String,
    Integer,
    Float,
    Boolean,
    Binary,
}

impl Primitive {
    fn name(self) -> &'static str {
        match self {
            Primitive::String => "string",
            Primitive::Integer => "integer",
            Primitive::Float => "float",
            Primitive::Boolean => "boolean",
            Primitive::Binary => "binary",
        }
    }
}

#[derive(Debug)]
enum Type {
    Primitive(Primitive),
    Array(Box<Type>),
    Object(Object),
}

impl Type {
    fn name(&self) -> &'static str {
        match self {
            Type::Primitive(p) => p.name(),
            Type::Array(_) => "array",
            Type::Object(_) => "object",
        }
    }
}

#[derive(Debug)]
struct Object {
    properties: BTreeMap<String, Param>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    Integer(i64),
    Float(f64),
}

#[derive(Debug, Default)]
struct Constraints {
    min: Option<Bound>,
    max: Option<Bound>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<regex::Regex>,
    one_of: Option<Vec<Value>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
}

#[derive(Debug)]
struct Param {
    ty: Type,
    required: bool,
    default: Option<Value>,
    constraints: Constraints,
}

/// The constraint names a schema may use.
pub const CONSTRAINTS: &[&str] =
    &["min", "max", "min_length", "max_length", "pattern", "enum", "min_items", "max_items"];

/// A contract's parameter schemas, compiled and checked; validates each call's parameters.
#[derive(Debug)]
pub struct ParameterValidator {
    params: BTreeMap<String, Param>,
    limits: ValidationLimits,
}

impl ParameterValidator {
    /// Compiles `schemas` with the default [`ValidationLimits`].
    pub fn compile(schemas: &[ParameterSchema]) -> Result<Self, Violations> {
        Self::compile_with_limits(schemas, ValidationLimits::default())
    }

    /// Compiles `schemas`, refusing a schema that is itself invalid (a load error).
    pub fn compile_with_limits(
        schemas: &[ParameterSchema],
        limits: ValidationLimits,
    ) -> Result<Self, Violations> {
        let mut report = Report::new(limits.max_violations);
        let mut path = Path::default();
        let mut params = BTreeMap::new();
        let compiler = Compiler { limits: &limits };
        for schema in schemas {
            path.push(Segment::Field(&schema.name));
            if schema.name.is_empty() {
                report.add(&path, "constraint", "a parameter needs a name");
            } else if params.contains_key(&schema.name) {
                report.add(&path, "duplicate", "the parameter is declared twice");
            } else if let Some(param) = compiler.param(schema, schema.required, 1, &mut path, &mut report) {
                params.insert(schema.name.clone(), param);
            }
            path.pop();
        }
        report.finish(Subject::Schema)?;
        Ok(Self { params, limits })
    }

    /// Validates a call's parameters; returns them with defaults applied, integers given
    /// to `FLOAT` parameters widened and null values left out.
    pub fn validate(
        &self,
        parameters: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Value>, Violations> {
        let mut walk = Walk::new(&self.limits);
        let out = walk.fields(&self.params, parameters, 0);
        walk.report.finish(Subject::Parameters)?;
        Ok(out.unwrap_or_else(|| parameters.clone()))
    }

    /// [`validate`](Self::validate) in place: `parameters` become what `validate` returns.
    /// Parameters that are already normal (the common case) are neither copied nor moved. On
    /// violations, `parameters` are left as they were.
    pub fn validate_in_place(&self, parameters: &mut BTreeMap<String, Value>) -> Result<(), Violations> {
        let mut walk = Walk::new(&self.limits);
        let out = walk.fields(&self.params, parameters, 0);
        walk.report.finish(Subject::Parameters)?;
        if let Some(out) = out {
            *parameters = out;
        }
        Ok(())
    }

    /// The names of the declared parameters.
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        self.params.keys().map(String::as_str)
    }
}

/// A compiled `AltarType` (a contract's `return_type`, for example); validates single values.
#[derive(Debug)]
pub struct TypeValidator {
    ty: Type,
    limits: ValidationLimits,
}

impl TypeValidator {
    /// Compiles `ty` with the default [`ValidationLimits`].
    pub fn compile(ty: &AltarType) -> Result<Self, Violations> {
        Self::compile_with_limits(ty, ValidationLimits::default())
    }

    /// Compiles `ty`, refusing an invalid type.
    pub fn compile_with_limits(ty: &AltarType, limits: ValidationLimits) -> Result<Self, Violations> {
        let mut report = Report::new(limits.max_violations);
        let compiled = Compiler { limits: &limits }.ty(Some(ty), 1, &mut Path::default(), &mut report);
        report.finish(Subject::Schema)?;
        match compiled {
            Some(ty) => Ok(Self { ty, limits }),
            None => Err(Violations {
                subject: Subject::Schema,
                list: vec![Violation { path: String::new(), rule: "type", message: "invalid type".into() }],
                truncated: false,
            }),
        }
    }

    /// Validates one value; returns it normalised (defaults of object properties applied,
    /// integers widened where a float is expected).
    pub fn validate(&self, value: &Value) -> Result<Value, Violations> {
        let mut walk = Walk::new(&self.limits);
        let no_constraints = Constraints::default();
        let out = walk.value(&self.ty, &no_constraints, value, 1);
        walk.report.finish(Subject::Parameters)?;
        Ok(out.into_owned())
    }

    /// Whether `value` is valid, without building its normalised form (no copy of it).
    pub fn check(&self, value: &Value) -> Result<(), Violations> {
        let mut walk = Walk::new(&self.limits);
        let no_constraints = Constraints::default();
        walk.value(&self.ty, &no_constraints, value, 1);
        walk.report.finish(Subject::Parameters)
    }
}

struct Compiler<'l> {
    limits: &'l ValidationLimits,
}

impl Compiler<'_> {
    fn param<'s>(
        &self,
        schema: &'s ParameterSchema,
        required: bool,
        depth: usize,
        path: &mut Path<'s>,
        report: &mut Report,
    ) -> Option<Param> {
        let ty = self.ty(schema.r#type.as_ref(), depth, path, report)?;
        let constraints = self.constraints(&ty, &schema.constraints, path, report);
        let mut param = Param { ty, required, default: None, constraints };
        if let Some(default) = &schema.default_value
            && !default.is_null()
        {
            // A default must satisfy its own schema; a bad one is a load error.
            let mut walk = Walk::new(self.limits);
            let normalised = walk.value(&param.ty, &param.constraints, default, 1).into_owned();
            for v in walk.report.list {
                report.add(path, "default", format!("the default is invalid: {v}"));
            }
            param.default = Some(normalised);
        }
        Some(param)
    }

    fn ty<'s>(
        &self,
        ty: Option<&'s AltarType>,
        depth: usize,
        path: &mut Path<'s>,
        report: &mut Report,
    ) -> Option<Type> {
        if depth > self.limits.max_schema_depth {
            report.add(
                path,
                "depth",
                format!("types are nested deeper than {}", self.limits.max_schema_depth),
            );
            return None;
        }
        match ty.and_then(|t| t.kind.as_ref()) {
            None => {
                report.add(path, "type", "no type is given");
                None
            }
            Some(altar_type::Kind::Primitive(p)) => {
                let primitive = match PrimitiveType::try_from(*p) {
                    Ok(PrimitiveType::String) => Primitive::String,
                    Ok(PrimitiveType::Integer) => Primitive::Integer,
                    Ok(PrimitiveType::Float) => Primitive::Float,
                    Ok(PrimitiveType::Boolean) => Primitive::Boolean,
                    Ok(PrimitiveType::Binary) => Primitive::Binary,
                    Ok(PrimitiveType::Unspecified) | Err(_) => {
                        report.add(path, "type", format!("`{p}` is not a primitive type"));
                        return None;
                    }
                };
                Some(Type::Primitive(primitive))
            }
            Some(altar_type::Kind::Array(array)) => {
                path.push(Segment::Index(0));
                let element = self.ty(array.element_type.as_deref(), depth + 1, path, report);
                path.pop();
                Some(Type::Array(Box::new(element?)))
            }
            Some(altar_type::Kind::Object(object)) => {
                let mut properties = BTreeMap::new();
                for name in &object.required_properties {
                    if !object.properties.contains_key(name) {
                        path.push(Segment::Field(name));
                        report.add(path, "required", "a required property that is not declared");
                        path.pop();
                    }
                }
                for (name, schema) in &object.properties {
                    path.push(Segment::Field(name));
                    if name.is_empty() {
                        report.add(path, "constraint", "a property needs a name");
                    } else if !schema.name.is_empty() && schema.name != *name {
                        report.add(
                            path,
                            "constraint",
                            format!("the property's schema is named `{}`", schema.name),
                        );
                    } else {
                        let required = schema.required || object.required_properties.contains(name);
                        if let Some(param) = self.param(schema, required, depth + 1, path, report) {
                            properties.insert(name.clone(), param);
                        }
                    }
                    path.pop();
                }
                Some(Type::Object(Object { properties }))
            }
        }
    }

    fn constraints(
        &self,
        ty: &Type,
        raw: &BTreeMap<String, String>,
        path: &Path,
        report: &mut Report,
    ) -> Constraints {
        let mut c = Constraints::default();
        let primitive = match ty {
            Type::Primitive(p) => Some(*p),
            _ => None,
        };
        for (name, text) in raw {
            let applies = match name.as_str() {
                "min" | "max" => matches!(primitive, Some(Primitive::Integer | Primitive::Float)),
                "min_length" | "max_length" => {
                    matches!(primitive, Some(Primitive::String | Primitive::Binary))
                }
                "pattern" => primitive == Some(Primitive::String),
                "enum" => primitive.is_some_and(|p| p != Primitive::Binary),
                "min_items" | "max_items" => matches!(ty, Type::Array(_)),
                _ => {
                    report.add(path, "constraint", format!("unknown constraint `{name}`"));
                    continue;
                }
            };
            if !applies {
                report.add(path, "constraint", format!("`{name}` does not apply to type {}", ty.name()));
                continue;
            }
            let bad = |report: &mut Report, why: &str| {
                report.add(path, "constraint", format!("`{name}` = `{}`: {why}", shorten(text)));
            };
            match name.as_str() {
                "min" | "max" => {
                    let bound = match primitive {
                        Some(Primitive::Integer) => text.trim().parse::<i64>().ok().map(Bound::Integer),
                        _ => text.trim().parse::<f64>().ok().filter(|f| f.is_finite()).map(Bound::Float),
                    };
                    match bound {
                        None => bad(report, "not a number of the parameter's type"),
                        Some(b) if name == "min" => c.min = Some(b),
                        Some(b) => c.max = Some(b),
                    }
                }
                "min_length" | "max_length" | "min_items" | "max_items" => match text.trim().parse::<u64>() {
                    Err(_) => bad(report, "not a non-negative integer"),
                    Ok(n) => match name.as_str() {
                        "min_length" => c.min_length = Some(n),
                        "max_length" => c.max_length = Some(n),
                        "min_items" => c.min_items = Some(n),
                        _ => c.max_items = Some(n),
                    },
                },
                "pattern" => {
                    if text.len() > self.limits.max_pattern_len {
                        bad(report, &format!("longer than {} bytes", self.limits.max_pattern_len));
                        continue;
                    }
                    match regex::RegexBuilder::new(text)
                        .size_limit(self.limits.max_pattern_size)
                        .dfa_size_limit(self.limits.max_pattern_size)
                        .nest_limit(64)
                        .build()
                    {
                        Ok(re) => c.pattern = Some(re),
                        Err(e) => {
                            bad(report, &format!("not a valid pattern: {}", first_line(&e.to_string())))
                        }
                    }
                }
                _ => match self.enum_values(ty, text) {
                    Ok(values) => c.one_of = Some(values),
                    Err(why) => bad(report, &why),
                },
            }
        }
        let ordered = |lo: Option<Bound>, hi: Option<Bound>| match (lo, hi) {
            (Some(Bound::Integer(a)), Some(Bound::Integer(b))) => a <= b,
            (Some(Bound::Float(a)), Some(Bound::Float(b))) => a <= b,
            _ => true,
        };
        if !ordered(c.min, c.max) {
            report.add(path, "constraint", "`min` is greater than `max`");
        }
        for (lo, hi, lo_name, hi_name) in [
            (c.min_length, c.max_length, "min_length", "max_length"),
            (c.min_items, c.max_items, "min_items", "max_items"),
        ] {
            if let (Some(lo), Some(hi)) = (lo, hi)
                && lo > hi
            {
                report.add(path, "constraint", format!("`{lo_name}` is greater than `{hi_name}`"));
            }
        }
        c
    }

    /// Parses an `enum` constraint: a JSON array whose entries are values of the type.
    fn enum_values(&self, ty: &Type, text: &str) -> Result<Vec<Value>, String> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let serde_json::Value::Array(entries) = json else {
            return Err("not a JSON array".into());
        };
        if entries.is_empty() {
            return Err("an empty list allows nothing".into());
        }
        if entries.len() > self.limits.max_enum_values {
            return Err(format!("more than {} entries", self.limits.max_enum_values));
        }
        let no_constraints = Constraints::default();
        entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let value = Value::from_json(entry).map_err(|e| format!("entry {i}: {}", e.message()))?;
                let mut walk = Walk::new(self.limits);
                let normalised = walk.value(ty, &no_constraints, &value, 1).into_owned();
                match walk.report.list.first() {
                    Some(v) => Err(format!("entry {i} is not of the parameter's type: {}", v.message)),
                    None => Ok(normalised),
                }
            })
            .collect()
    }
}

fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text)
}

fn shorten(text: &str) -> String {
    let cut: String = text.chars().take(MAX_SHOWN_NAME).collect();
    if cut.len() < text.len() { format!("{cut}…") } else { cut }
}

/// One validation pass over a value: the path, the budget of nodes and bytes, the report.
struct Walk<'l, 'v> {
    limits: &'l ValidationLimits,
    /// Borrows the names of the schema and of the value walked.
    path: Path<'v>,
    report: Report,
    nodes: usize,
    bytes: usize,
    over_budget: bool,
}

impl<'l, 'v> Walk<'l, 'v> {
    fn new(limits: &'l ValidationLimits) -> Self {
        Self {
            limits,
            path: Path::default(),
            report: Report::new(limits.max_violations),
            nodes: 0,
            bytes: 0,
            over_budget: false,
        }
    }

    /// Counts a node and its bytes; false once the call is over budget (reported once).
    fn spend(&mut self, bytes: usize) -> bool {
        self.nodes += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.over_budget {
            return false;
        }
        if self.nodes > self.limits.max_nodes || self.bytes > self.limits.max_bytes {
            self.over_budget = true;
            let message = format!(
                "the call holds more than {} values or {} bytes",
                self.limits.max_nodes, self.limits.max_bytes
            );
            self.report.add(&self.path, "size", message);
            return false;
        }
        true
    }

    fn stop(&self) -> bool {
        self.over_budget || self.report.full()
    }

    /// Validates the fields of an object (or the top-level parameter map); returns them with
    /// defaults applied and nulls left out, or `None` when that is exactly `given` (nothing
    /// copied).
    fn fields(
        &mut self,
        declared: &'v BTreeMap<String, Param>,
        given: &'v BTreeMap<String, Value>,
        depth: usize,
    ) -> Option<BTreeMap<String, Value>> {
        for name in given.keys() {
            if !declared.contains_key(name) {
                self.path.push(Segment::Field(name));
                self.report.add(&self.path, "unknown", "not declared by the contract");
                self.path.pop();
            }
        }
        // Built only once the output differs from `given`; until then every field checked was
        // given as it is.
        let mut out: Option<BTreeMap<String, Value>> = given.values().any(Value::is_null).then(BTreeMap::new);
        for (name, param) in declared {
            if self.stop() {
                break;
            }
            self.path.push(Segment::Field(name));
            let normal = match given.get(name).filter(|v| !v.is_null()) {
                Some(value) => Some(self.value(&param.ty, &param.constraints, value, depth + 1)),
                None => match &param.default {
                    Some(default) => Some(Cow::Owned(default.clone())),
                    None if param.required => {
                        self.report.add(&self.path, "required", "is required");
                        None
                    }
                    None => None,
                },
            };
            self.path.pop();
            let Some(normal) = normal else { continue };
            match (&mut out, normal) {
                (None, Cow::Borrowed(_)) => {}
                (None, Cow::Owned(value)) => {
                    let mut copy: BTreeMap<String, Value> = given
                        .range::<String, _>(..name)
                        .filter(|(n, v)| declared.contains_key(*n) && !v.is_null())
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect();
                    copy.insert(name.clone(), value);
                    out = Some(copy);
                }
                (Some(out), normal) => {
                    out.insert(name.clone(), normal.into_owned());
                }
            }
        }
        out
    }

    /// Validates one value against a type and its constraints; returns it normalised
    /// (borrowed when that is the value itself).
    fn value(&mut self, ty: &'v Type, c: &Constraints, value: &'v Value, depth: usize) -> Cow<'v, Value> {
        if depth > self.limits.max_depth {
            self.report.add(
                &self.path,
                "depth",
                format!("nested deeper than {} levels", self.limits.max_depth),
            );
            return Cow::Owned(Value::null());
        }
        let own_bytes = match &value.kind {
            Some(Kind::StringValue(s)) => s.len(),
            Some(Kind::BinaryValue(b)) => b.len(),
            _ => 0,
        };
        if !self.spend(own_bytes) {
            return Cow::Owned(Value::null());
        }
        let out = match (ty, &value.kind) {
            (Type::Primitive(Primitive::String), Some(Kind::StringValue(s))) => {
                self.length(c, s.chars().count());
                if let Some(re) = &c.pattern
                    && !re.is_match(s)
                {
                    self.report.add(
                        &self.path,
                        "pattern",
                        format!("does not match `{}`", shorten(re.as_str())),
                    );
                }
                Cow::Borrowed(value)
            }
            (Type::Primitive(Primitive::Binary), Some(Kind::BinaryValue(b))) => {
                self.length(c, b.len());
                Cow::Borrowed(value)
            }
            (Type::Primitive(Primitive::Integer), Some(Kind::IntegerValue(i))) => {
                self.bounds(c, Bound::Integer(*i));
                Cow::Borrowed(value)
            }
            (Type::Primitive(Primitive::Float), Some(Kind::FloatValue(f))) => {
                if f.is_finite() {
                    self.bounds(c, Bound::Float(*f));
                } else {
                    self.report.add(&self.path, "type", "expected a finite float");
                }
                Cow::Borrowed(value)
            }
            (Type::Primitive(Primitive::Float), Some(Kind::IntegerValue(i))) => {
                #[expect(clippy::cast_precision_loss, reason = "FLOAT parameters accept integers as floats")]
                let widened = *i as f64;
                self.bounds(c, Bound::Float(widened));
                Cow::Owned(Value::float(widened))
            }
            (Type::Primitive(Primitive::Boolean), Some(Kind::BooleanValue(_))) => Cow::Borrowed(value),
            (Type::Array(element), Some(Kind::ArrayValue(array))) => {
                let n = array.values.len() as u64;
                if let Some(min) = c.min_items
                    && n < min
                {
                    self.report.add(&self.path, "min_items", format!("has {n} items, fewer than {min}"));
                }
                if let Some(max) = c.max_items
                    && n > max
                {
                    self.report.add(&self.path, "max_items", format!("has {n} items, more than {max}"));
                }
                let no_constraints = Constraints::default();
                // Built only once an item differs from the one given.
                let mut items: Option<Vec<Value>> = None;
                for (i, item) in array.values.iter().enumerate() {
                    if self.stop() {
                        break;
                    }
                    self.path.push(Segment::Index(i));
                    let normal = self.value(element, &no_constraints, item, depth + 1);
                    self.path.pop();
                    match (&mut items, normal) {
                        (None, Cow::Borrowed(_)) => {}
                        (None, Cow::Owned(normal)) => {
                            let mut copy = Vec::with_capacity(array.values.len().min(1024));
                            copy.extend(array.values.iter().take(i).cloned());
                            copy.push(normal);
                            items = Some(copy);
                        }
                        (Some(items), normal) => items.push(normal.into_owned()),
                    }
                }
                items.map_or(Cow::Borrowed(value), |items| Cow::Owned(Value::array(items)))
            }
            (Type::Object(object), Some(Kind::ObjectValue(fields))) => {
                match self.fields(&object.properties, &fields.fields, depth) {
                    Some(fields) => Cow::Owned(Value::from(fields)),
                    None => Cow::Borrowed(value),
                }
            }
            (ty, _) => {
                let message = format!("expected {}, got {}", ty.name(), value.kind_name());
                self.report.add(&self.path, "type", message);
                return Cow::Borrowed(value);
            }
        };
        if let Some(allowed) = &c.one_of
            && !allowed.contains(&*out)
        {
            self.report.add(&self.path, "enum", "is not one of the allowed values");
        }
        out
    }

    fn length(&mut self, c: &Constraints, len: usize) {
        let len = len as u64;
        if let Some(min) = c.min_length
            && len < min
        {
            self.report.add(&self.path, "min_length", format!("has length {len}, shorter than {min}"));
        }
        if let Some(max) = c.max_length
            && len > max
        {
            self.report.add(&self.path, "max_length", format!("has length {len}, longer than {max}"));
        }
    }

    fn bounds(&mut self, c: &Constraints, n: Bound) {
        let below = |bound: Bound| match (n, bound) {
            (Bound::Integer(v), Bound::Integer(b)) => v < b,
            (Bound::Float(v), Bound::Float(b)) => v < b,
            _ => false,
        };
        let above = |bound: Bound| match (n, bound) {
            (Bound::Integer(v), Bound::Integer(b)) => v > b,
            (Bound::Float(v), Bound::Float(b)) => v > b,
            _ => false,
        };
        let show = |b: Bound| match b {
            Bound::Integer(i) => i.to_string(),
            Bound::Float(f) => f.to_string(),
        };
        if let Some(min) = c.min
            && below(min)
        {
            self.report.add(&self.path, "min", format!("{} is less than the minimum {}", show(n), show(min)));
        }
        if let Some(max) = c.max
            && above(max)
        {
            self.report.add(
                &self.path,
                "max",
                format!("{} is greater than the maximum {}", show(n), show(max)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_renders_the_same_across_its_inline_and_spilled_segments() {
        let names: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
        let mut path = Path::default();
        let mut expected: Vec<String> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if i % 3 == 2 {
                path.push(Segment::Index(i));
                expected.push(format!("[{i}]"));
            } else {
                path.push(Segment::Field(name));
                expected.push(name.clone());
            }
            let mut rendered = String::new();
            for (j, part) in expected.iter().enumerate() {
                if j > 0 && !part.starts_with('[') {
                    rendered.push('.');
                }
                rendered.push_str(part);
            }
            assert_eq!(path.render(), rendered, "after {} pushes", i + 1);
        }
        // Back down across the boundary, then up again: the spilled segments go first.
        for _ in 0..6 {
            path.pop();
        }
        assert_eq!(path.render(), "f0.f1[2].f3.f4[5]");
        path.push(Segment::Field("x"));
        assert_eq!(path.render(), "f0.f1[2].f3.f4[5].x");
        for _ in 0..20 {
            path.pop();
        }
        assert_eq!(path.render(), "");
    }
}
