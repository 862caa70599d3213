//! A type checker of the project's own: the `cel` crate has none. It walks the parsed
//! expression and refuses references to unknown variables, fields and functions, and obvious
//! type errors, so that nothing in an accepted policy fails silently at run time for those
//! reasons.

use std::fmt;

use cel::{
    IdedExpr,
    common::ast::{
        CallExpr, ComprehensionExpr, EntryExpr, Expr, LiteralValue, SelectExpr, SourceInfo, operators,
    },
};

use crate::{
    schema::{AttributeType, Owner, Schema},
    validate::ValidationError,
};

/// The objects of the decision context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Obj {
    Request,
    User,
    Resource,
    Tenant,
    Session,
    Policy,
    Organization,
}

impl Obj {
    fn path(self) -> &'static str {
        match self {
            Obj::Request => "request",
            Obj::User => "request.user",
            Obj::Resource => "request.resource",
            Obj::Tenant => "request.tenant",
            Obj::Session => "request.session",
            Obj::Policy => "policy",
            Obj::Organization => "organization",
        }
    }
}

/// A static type, as far as the checker can tell.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Ty {
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Timestamp,
    Duration,
    Type,
    Ip,
    Cidr,
    Clearance,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    Object(Obj),
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Dyn => f.write_str("dyn"),
            Ty::Null => f.write_str("null_type"),
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Timestamp => f.write_str("google.protobuf.Timestamp"),
            Ty::Duration => f.write_str("google.protobuf.Duration"),
            Ty::Type => f.write_str("type"),
            Ty::Ip => f.write_str("net.IP"),
            Ty::Cidr => f.write_str("net.CIDR"),
            Ty::Clearance => f.write_str("aesp.Clearance"),
            Ty::List(element) => write!(f, "list({element})"),
            Ty::Map(key, value) => write!(f, "map({key}, {value})"),
            Ty::Object(obj) => f.write_str(obj.path()),
        }
    }
}

fn string_map() -> Ty {
    Ty::Map(Box::new(Ty::String), Box::new(Ty::String))
}

fn attribute_ty(ty: &AttributeType) -> Ty {
    match ty {
        AttributeType::Bool => Ty::Bool,
        AttributeType::Int => Ty::Int,
        AttributeType::Double => Ty::Double,
        AttributeType::String => Ty::String,
        AttributeType::Bytes => Ty::Bytes,
        AttributeType::List(element) => Ty::List(Box::new(attribute_ty(element))),
        AttributeType::Map(element) => Ty::Map(Box::new(Ty::String), Box::new(attribute_ty(element))),
        AttributeType::Dyn => Ty::Dyn,
    }
}

fn field_type(obj: Obj, field: &str, schema: &Schema) -> Option<Ty> {
    let declared = |owner| schema.attributes(owner).get(field).map(attribute_ty);
    let list_of_strings = || Ty::List(Box::new(Ty::String));
    match (obj, field) {
        (Obj::Request, "user") => Some(Ty::Object(Obj::User)),
        (Obj::Request, "resource") => Some(Ty::Object(Obj::Resource)),
        (Obj::Request, "tenant") => Some(Ty::Object(Obj::Tenant)),
        (Obj::Request, "session") => Some(Ty::Object(Obj::Session)),
        (Obj::Request, "action" | "source_ip") => Some(Ty::String),
        (Obj::Request, "time") => Some(Ty::Timestamp),
        (Obj::Request, "params") => Some(Ty::Map(Box::new(Ty::String), Box::new(Ty::Dyn))),
        (Obj::Request, "estimated_cost") => Some(Ty::Double),
        (Obj::User, "id" | "type" | "clearance" | "tenant" | "business_unit") => Some(Ty::String),
        (Obj::User, "roles" | "permissions") => Some(list_of_strings()),
        (Obj::User, "mfa_verified") => Some(Ty::Bool),
        (Obj::User, "claims") => Some(string_map()),
        (Obj::User, _) => declared(Owner::Principal),
        (Obj::Resource, "name" | "tenant" | "classification") => Some(Ty::String),
        (Obj::Resource, "metadata") => Some(string_map()),
        (Obj::Tenant, "id") => Some(Ty::String),
        (Obj::Tenant, _) => declared(Owner::Tenant),
        (Obj::Session, "id") => Some(Ty::String),
        (Obj::Session, "metadata") => Some(string_map()),
        (Obj::Policy, "id" | "version" | "name") => Some(Ty::String),
        (Obj::Policy, "parameters") => Some(string_map()),
        (Obj::Organization, _) => declared(Owner::Organization),
        _ => None,
    }
}

/// Function signatures: (name, receiver, parameters, result). `list`, `map` and `dyn` as a
/// parameter accept any list, any map and anything.
type Signature = (&'static str, Option<&'static str>, &'static [&'static str], &'static str);

const TIME_PARTS: &[&str] = &[
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

const SIGNATURES: &[Signature] = &[
    ("size", None, &["string"], "int"),
    ("size", None, &["bytes"], "int"),
    ("size", None, &["list"], "int"),
    ("size", None, &["map"], "int"),
    ("size", Some("string"), &[], "int"),
    ("size", Some("bytes"), &[], "int"),
    ("size", Some("list"), &[], "int"),
    ("size", Some("map"), &[], "int"),
    ("contains", Some("string"), &["string"], "bool"),
    ("startsWith", Some("string"), &["string"], "bool"),
    ("endsWith", Some("string"), &["string"], "bool"),
    ("matches", Some("string"), &["string"], "bool"),
    ("matches", None, &["string", "string"], "bool"),
    ("int", None, &["int"], "int"),
    ("int", None, &["uint"], "int"),
    ("int", None, &["double"], "int"),
    ("int", None, &["string"], "int"),
    ("int", None, &["timestamp"], "int"),
    ("uint", None, &["int"], "uint"),
    ("uint", None, &["uint"], "uint"),
    ("uint", None, &["double"], "uint"),
    ("uint", None, &["string"], "uint"),
    ("double", None, &["int"], "double"),
    ("double", None, &["uint"], "double"),
    ("double", None, &["double"], "double"),
    ("double", None, &["string"], "double"),
    ("string", None, &["int"], "string"),
    ("string", None, &["uint"], "string"),
    ("string", None, &["double"], "string"),
    ("string", None, &["bool"], "string"),
    ("string", None, &["bytes"], "string"),
    ("string", None, &["string"], "string"),
    ("string", None, &["timestamp"], "string"),
    ("string", None, &["duration"], "string"),
    ("string", None, &["net.IP"], "string"),
    ("string", None, &["net.CIDR"], "string"),
    ("bytes", None, &["string"], "bytes"),
    ("bytes", None, &["bytes"], "bytes"),
    ("bool", None, &["bool"], "bool"),
    ("bool", None, &["string"], "bool"),
    ("timestamp", None, &["string"], "timestamp"),
    ("timestamp", None, &["int"], "timestamp"),
    ("timestamp", None, &["timestamp"], "timestamp"),
    ("duration", None, &["string"], "duration"),
    ("duration", None, &["duration"], "duration"),
    ("type", None, &["dyn"], "type"),
    ("dyn", None, &["dyn"], "dyn"),
    // The network extension.
    ("isIP", None, &["string"], "bool"),
    ("isCIDR", None, &["string"], "bool"),
    ("ip", None, &["string"], "net.IP"),
    ("cidr", None, &["string"], "net.CIDR"),
    ("ip.isCanonical", None, &["string"], "bool"),
    ("family", Some("net.IP"), &[], "int"),
    ("isUnspecified", Some("net.IP"), &[], "bool"),
    ("isLoopback", Some("net.IP"), &[], "bool"),
    ("isGlobalUnicast", Some("net.IP"), &[], "bool"),
    ("isLinkLocalMulticast", Some("net.IP"), &[], "bool"),
    ("isLinkLocalUnicast", Some("net.IP"), &[], "bool"),
    ("containsIP", Some("net.CIDR"), &["net.IP"], "bool"),
    ("containsIP", Some("net.CIDR"), &["string"], "bool"),
    ("containsCIDR", Some("net.CIDR"), &["net.CIDR"], "bool"),
    ("containsCIDR", Some("net.CIDR"), &["string"], "bool"),
    ("ip", Some("net.CIDR"), &[], "net.IP"),
    ("masked", Some("net.CIDR"), &[], "net.CIDR"),
    ("prefixLength", Some("net.CIDR"), &[], "int"),
    // Clearance by rank.
    ("dominates", Some("aesp.Clearance"), &["string", "string"], "bool"),
    ("rank", Some("aesp.Clearance"), &["string"], "int"),
];

fn named(name: &str) -> Option<Ty> {
    Some(match name {
        "int" => Ty::Int,
        "uint" => Ty::Uint,
        "double" => Ty::Double,
        "string" => Ty::String,
        "bytes" => Ty::Bytes,
        "bool" => Ty::Bool,
        "timestamp" => Ty::Timestamp,
        "duration" => Ty::Duration,
        "type" => Ty::Type,
        "dyn" => Ty::Dyn,
        "list" => Ty::List(Box::new(Ty::Dyn)),
        "map" => Ty::Map(Box::new(Ty::Dyn), Box::new(Ty::Dyn)),
        "net.IP" => Ty::Ip,
        "net.CIDR" => Ty::Cidr,
        "aesp.Clearance" => Ty::Clearance,
        _ => return None,
    })
}

/// Type names an expression may use as values, as in `type(x) == net.IP`.
const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
    "net.IP",
    "net.CIDR",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
];

fn accepts(param: &str, arg: &Ty) -> bool {
    match (param, arg) {
        ("dyn", _) | (_, Ty::Dyn) => true,
        ("list", Ty::List(_)) | ("map", Ty::Map(..)) => true,
        (param, arg) => named(param).is_some_and(|p| &p == arg),
    }
}

fn is_numeric(ty: &Ty) -> bool {
    matches!(ty, Ty::Int | Ty::Uint | Ty::Double)
}

/// Whether two types can be compared for equality without an obvious mistake.
fn comparable(a: &Ty, b: &Ty) -> bool {
    match (a, b) {
        (Ty::Dyn | Ty::Null, _) | (_, Ty::Dyn | Ty::Null) => true,
        (a, b) if is_numeric(a) && is_numeric(b) => true,
        (Ty::List(x), Ty::List(y)) => comparable(x, y),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => comparable(k1, k2) && comparable(v1, v2),
        (a, b) => a == b,
    }
}

fn join(a: Ty, b: &Ty) -> Ty {
    if &a == b { a } else { Ty::Dyn }
}

/// The deepest nesting of comprehensions (`all`, `exists`, `map`, ...) accepted: each level
/// multiplies the work of an evaluation by the size of a list.
pub(crate) const MAX_COMPREHENSION_NESTING: usize = 2;

struct Checker<'a> {
    comprehensions: usize,
    schema: &'a Schema,
    info: &'a SourceInfo,
    source: &'a str,
    scopes: Vec<(String, Ty)>,
    errors: Vec<ValidationError>,
}

/// Checks a parsed condition; returns the errors found, in the order of their positions.
pub(crate) fn check(
    expr: &IdedExpr,
    info: &SourceInfo,
    source: &str,
    schema: &Schema,
) -> Vec<ValidationError> {
    let mut checker =
        Checker { comprehensions: 0, schema, info, source, scopes: Vec::new(), errors: Vec::new() };
    let ty = checker.expr(expr);
    if !matches!(ty, Ty::Bool | Ty::Dyn) {
        checker.error(expr.id, format!("a condition must be a `bool`, found `{ty}`"));
    }
    checker.errors.sort_by_key(|e| (e.line(), e.column()));
    checker.errors.dedup();
    checker.errors
}

impl Checker<'_> {
    fn error(&mut self, id: u64, message: String) {
        let (line, column) = self
            .info
            .offset_for(id)
            .map(|(start, _)| crate::validate::line_column(self.source, start as usize))
            .unwrap_or((0, 0));
        self.errors.push(ValidationError::new("rule.condition", message, line, column));
    }

    fn lookup(&self, name: &str) -> Option<Ty> {
        if let Some((_, ty)) = self.scopes.iter().rev().find(|(n, _)| n == name) {
            return Some(ty.clone());
        }
        match name {
            "request" => Some(Ty::Object(Obj::Request)),
            "policy" => Some(Ty::Object(Obj::Policy)),
            "organization" => Some(Ty::Object(Obj::Organization)),
            "clearance" => Some(Ty::Clearance),
            _ => None,
        }
    }

    fn expr(&mut self, expr: &IdedExpr) -> Ty {
        match &expr.expr {
            Expr::Unspecified => Ty::Dyn,
            Expr::Literal(literal) => match literal {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            },
            Expr::Ident(name) => match self.lookup(name) {
                Some(ty) => ty,
                None if TYPE_NAMES.contains(&name.as_str()) => Ty::Type,
                None => {
                    self.error(expr.id, format!("undeclared reference to `{name}`"));
                    Ty::Dyn
                }
            },
            Expr::Select(select) => self.select(expr, select),
            Expr::Call(call) => self.call(expr, call),
            Expr::List(list) => {
                let mut element: Option<Ty> = None;
                for item in &list.elements {
                    let ty = self.expr(item);
                    element = Some(match element {
                        None => ty,
                        Some(previous) => join(previous, &ty),
                    });
                }
                Ty::List(Box::new(element.unwrap_or(Ty::Dyn)))
            }
            Expr::Map(map) => {
                let mut key: Option<Ty> = None;
                let mut value: Option<Ty> = None;
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        let k = self.expr(&entry.key);
                        if !matches!(k, Ty::Dyn | Ty::Int | Ty::Uint | Ty::Bool | Ty::String) {
                            self.error(entry.key.id, format!("a map key cannot be a `{k}`"));
                        }
                        let v = self.expr(&entry.value);
                        key = Some(match key {
                            None => k,
                            Some(previous) => join(previous, &k),
                        });
                        value = Some(match value {
                            None => v,
                            Some(previous) => join(previous, &v),
                        });
                    }
                }
                Ty::Map(Box::new(key.unwrap_or(Ty::Dyn)), Box::new(value.unwrap_or(Ty::Dyn)))
            }
            Expr::Struct(structure) => {
                self.error(
                    expr.id,
                    format!("message construction `{}{{...}}` is not supported", structure.type_name),
                );
                Ty::Dyn
            }
            Expr::Comprehension(comprehension) => self.comprehension(expr.id, comprehension),
        }
    }

    fn qualified_name(expr: &IdedExpr) -> Option<String> {
        match &expr.expr {
            Expr::Ident(name) => Some(name.clone()),
            Expr::Select(select) if !select.test => {
                Self::qualified_name(&select.operand).map(|prefix| format!("{prefix}.{}", select.field))
            }
            _ => None,
        }
    }

    fn select(&mut self, expr: &IdedExpr, select: &SelectExpr) -> Ty {
        // A qualified type name such as `net.IP`, when its root is not a variable.
        if let Some(name) = Self::qualified_name(expr) {
            let root = name.split('.').next().unwrap_or_default();
            if self.lookup(root).is_none() && TYPE_NAMES.contains(&name.as_str()) {
                return Ty::Type;
            }
        }
        let operand = self.expr(&select.operand);
        let result = match &operand {
            Ty::Dyn => Ty::Dyn,
            Ty::Map(_, value) => (**value).clone(),
            Ty::Object(obj) => match field_type(*obj, &select.field, self.schema) {
                Some(ty) => ty,
                None => {
                    let what = if matches!(obj, Obj::User | Obj::Tenant | Obj::Organization) {
                        "undeclared field or attribute"
                    } else {
                        "undeclared field"
                    };
                    self.error(expr.id, format!("{what} `{}` of `{}`", select.field, obj.path()));
                    Ty::Dyn
                }
            },
            other => {
                self.error(expr.id, format!("type `{other}` has no field `{}`", select.field));
                Ty::Dyn
            }
        };
        if select.test { Ty::Bool } else { result }
    }

    fn comprehension(&mut self, id: u64, comprehension: &ComprehensionExpr) -> Ty {
        if self.comprehensions == MAX_COMPREHENSION_NESTING {
            self.error(id, format!("comprehensions are nested more than {MAX_COMPREHENSION_NESTING} deep"));
            return Ty::Dyn;
        }
        self.comprehensions += 1;
        let ty = self.comprehension_body(comprehension);
        self.comprehensions -= 1;
        ty
    }

    fn comprehension_body(&mut self, comprehension: &ComprehensionExpr) -> Ty {
        let range = self.expr(&comprehension.iter_range);
        let (first, second) = match &range {
            Ty::List(element) => (Ty::Int, (**element).clone()),
            Ty::Map(key, value) => ((**key).clone(), (**value).clone()),
            Ty::Dyn => (Ty::Dyn, Ty::Dyn),
            other => {
                self.error(comprehension.iter_range.id, format!("cannot iterate over a `{other}`"));
                (Ty::Dyn, Ty::Dyn)
            }
        };
        let accumulator = self.expr(&comprehension.accu_init);
        let depth = self.scopes.len();
        match &comprehension.iter_var2 {
            Some(second_var) => {
                self.scopes.push((comprehension.iter_var.clone(), first));
                self.scopes.push((second_var.clone(), second));
            }
            None => {
                // With one variable, a list yields its elements and a map its keys.
                let only = if matches!(range, Ty::List(_)) { second } else { first };
                self.scopes.push((comprehension.iter_var.clone(), only));
            }
        }
        self.scopes.push((comprehension.accu_var.clone(), accumulator));
        self.expr(&comprehension.loop_cond);
        let step = self.expr(&comprehension.loop_step);
        if let Some(slot) = self.scopes.last_mut() {
            slot.1 = join(slot.1.clone(), &step);
        }
        let result = self.expr(&comprehension.result);
        self.scopes.truncate(depth);
        result
    }

    fn call(&mut self, expr: &IdedExpr, call: &CallExpr) -> Ty {
        let name = call.func_name.as_str();
        // `ip.isCanonical(...)`: a namespaced function, not a call on a variable.
        if let Some(target) = &call.target
            && let Expr::Ident(namespace) = &target.expr
            && self.lookup(namespace).is_none()
        {
            let qualified = format!("{namespace}.{name}");
            let args: Vec<Ty> = call.args.iter().map(|a| self.expr(a)).collect();
            return self.function(expr.id, &qualified, None, &args);
        }
        let target = call.target.as_ref().map(|t| self.expr(t));
        let args: Vec<Ty> = call.args.iter().map(|a| self.expr(a)).collect();
        if target.is_none()
            && let Some(ty) = self.operator(expr.id, name, &args)
        {
            return ty;
        }
        self.function(expr.id, name, target, &args)
    }

    fn function(&mut self, id: u64, name: &str, target: Option<Ty>, args: &[Ty]) -> Ty {
        if let Some(target) = &target
            && TIME_PARTS.contains(&name)
        {
            let on_duration = matches!(name, "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds");
            let ok = match (target, args) {
                (Ty::Timestamp | Ty::Dyn, []) => true,
                (Ty::Timestamp | Ty::Dyn, [zone]) => accepts("string", zone),
                (Ty::Duration, []) => on_duration,
                _ => false,
            };
            if !ok {
                let mut types: Vec<String> = args.iter().map(ToString::to_string).collect();
                types.insert(0, target.to_string());
                self.error(
                    id,
                    format!("found no matching overload for `{name}` applied to `({})`", types.join(", ")),
                );
            }
            return Ty::Int;
        }
        let candidates: Vec<&Signature> = SIGNATURES
            .iter()
            .filter(|(n, receiver, params, _)| {
                *n == name && receiver.is_some() == target.is_some() && params.len() == args.len()
            })
            .collect();
        if !SIGNATURES.iter().any(|(n, receiver, ..)| *n == name && receiver.is_some() == target.is_some()) {
            let kind = if target.is_some() { "method" } else { "function" };
            self.error(id, format!("undeclared reference to {kind} `{name}`"));
            return Ty::Dyn;
        }
        let matching: Vec<&&Signature> = candidates
            .iter()
            .filter(|(_, receiver, params, _)| {
                receiver.is_none_or(|r| target.as_ref().is_some_and(|t| accepts(r, t)))
                    && params.iter().zip(args).all(|(p, a)| accepts(p, a))
            })
            .collect();
        match matching.as_slice() {
            [] => {
                let mut types: Vec<String> = args.iter().map(ToString::to_string).collect();
                if let Some(target) = &target {
                    types.insert(0, target.to_string());
                }
                self.error(
                    id,
                    format!("found no matching overload for `{name}` applied to `({})`", types.join(", ")),
                );
                Ty::Dyn
            }
            [(_, _, _, result)] => named(result).unwrap_or(Ty::Dyn),
            several => {
                let first = several.first().and_then(|(_, _, _, r)| named(r)).unwrap_or(Ty::Dyn);
                several
                    .iter()
                    .skip(1)
                    .fold(first, |acc, (_, _, _, r)| join(acc, &named(r).unwrap_or(Ty::Dyn)))
            }
        }
    }

    fn operator(&mut self, id: u64, name: &str, args: &[Ty]) -> Option<Ty> {
        let mismatch = |this: &mut Self, args: &[Ty]| {
            let types: Vec<String> = args.iter().map(ToString::to_string).collect();
            this.error(
                id,
                format!("found no matching overload for `{name}` applied to `({})`", types.join(", ")),
            );
            Ty::Dyn
        };
        let ty = match (name, args) {
            (operators::LOGICAL_AND | operators::LOGICAL_OR, [a, b]) => {
                if accepts("bool", a) && accepts("bool", b) { Ty::Bool } else { mismatch(self, args) }
            }
            (operators::LOGICAL_NOT | operators::NOT_STRICTLY_FALSE, [a]) => {
                if accepts("bool", a) {
                    Ty::Bool
                } else {
                    mismatch(self, args)
                }
            }
            (operators::NEGATE, [a]) => match a {
                Ty::Int | Ty::Double | Ty::Dyn | Ty::Duration => a.clone(),
                _ => mismatch(self, args),
            },
            (operators::CONDITIONAL, [c, a, b]) => {
                if !accepts("bool", c) {
                    mismatch(self, args);
                }
                join(a.clone(), b)
            }
            (operators::EQUALS | operators::NOT_EQUALS, [a, b]) => {
                if comparable(a, b) {
                    Ty::Bool
                } else {
                    mismatch(self, args)
                }
            }
            (
                operators::LESS | operators::LESS_EQUALS | operators::GREATER | operators::GREATER_EQUALS,
                [a, b],
            ) => {
                let ordered = |t: &Ty| {
                    matches!(t, Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Bytes | Ty::Bool)
                        || matches!(t, Ty::Timestamp | Ty::Duration)
                };
                let ok = match (a, b) {
                    (Ty::Dyn, other) | (other, Ty::Dyn) => ordered(other) || other == &Ty::Dyn,
                    (a, b) if is_numeric(a) && is_numeric(b) => true,
                    (a, b) => a == b && ordered(a),
                };
                if ok { Ty::Bool } else { mismatch(self, args) }
            }
            (operators::ADD, [a, b]) => match (a, b) {
                (Ty::Dyn, _) | (_, Ty::Dyn) => Ty::Dyn,
                (Ty::Timestamp, Ty::Duration) | (Ty::Duration, Ty::Timestamp) => Ty::Timestamp,
                (Ty::List(x), Ty::List(y)) => Ty::List(Box::new(join((**x).clone(), y))),
                (a, b)
                    if a == b
                        && matches!(
                            a,
                            Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Bytes | Ty::Duration
                        ) =>
                {
                    a.clone()
                }
                _ => mismatch(self, args),
            },
            (operators::SUBSTRACT, [a, b]) => match (a, b) {
                (Ty::Dyn, _) | (_, Ty::Dyn) => Ty::Dyn,
                (Ty::Timestamp, Ty::Timestamp) => Ty::Duration,
                (Ty::Timestamp, Ty::Duration) => Ty::Timestamp,
                (a, b) if a == b && matches!(a, Ty::Int | Ty::Uint | Ty::Double | Ty::Duration) => a.clone(),
                _ => mismatch(self, args),
            },
            (operators::MULTIPLY | operators::DIVIDE, [a, b]) => match (a, b) {
                (Ty::Dyn, _) | (_, Ty::Dyn) => Ty::Dyn,
                (a, b) if a == b && is_numeric(a) => a.clone(),
                _ => mismatch(self, args),
            },
            (operators::MODULO, [a, b]) => match (a, b) {
                (Ty::Dyn, _) | (_, Ty::Dyn) => Ty::Dyn,
                (a, b) if a == b && matches!(a, Ty::Int | Ty::Uint) => a.clone(),
                _ => mismatch(self, args),
            },
            (operators::IN, [element, container]) => match container {
                Ty::Dyn => Ty::Bool,
                Ty::List(item) | Ty::Map(item, _) => {
                    if comparable(element, item) {
                        Ty::Bool
                    } else {
                        mismatch(self, args)
                    }
                }
                _ => mismatch(self, args),
            },
            (operators::INDEX, [container, index]) => match container {
                Ty::Dyn => Ty::Dyn,
                Ty::List(item) => {
                    if matches!(index, Ty::Int | Ty::Uint | Ty::Double | Ty::Dyn) {
                        (**item).clone()
                    } else {
                        mismatch(self, args)
                    }
                }
                Ty::Map(key, value) => {
                    if comparable(index, key) {
                        (**value).clone()
                    } else {
                        mismatch(self, args)
                    }
                }
                Ty::Object(_) if matches!(index, Ty::String | Ty::Dyn) => Ty::Dyn,
                _ => mismatch(self, args),
            },
            (operators::OPT_INDEX | operators::OPT_SELECT, _) => {
                self.error(id, "optional syntax is not supported".to_owned());
                Ty::Dyn
            }
            _ => return None,
        };
        Some(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::AttributeType;

    fn errors(source: &str) -> Vec<String> {
        let schema = Schema::new()
            .with_principal_attribute("spending_limit", AttributeType::Double)
            .unwrap()
            .with_tenant_attribute("cost_center", AttributeType::String)
            .unwrap()
            .with_organization_attribute(
                "approved_cost_centers",
                AttributeType::List(Box::new(AttributeType::String)),
            )
            .unwrap();
        let env = cel::Env::stdlib();
        let (expr, info) = env.parser().parse_with_source_info(source).unwrap();
        check(&expr, &info, source, &schema).into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn accepts_the_example_conditions() {
        for source in [
            "request.time.getHours() >= 9 && request.time.getHours() <= 17",
            "'data-scientist' in request.user.roles && request.resource.classification in ['public', 'internal']",
            "request.tenant.cost_center in organization.approved_cost_centers && request.estimated_cost <= request.user.spending_limit",
            "request.user.roles.exists(r, r.startsWith('admin'))",
            "cidr('10.0.0.0/8').containsIP(request.source_ip) || ip.isCanonical(request.source_ip)",
            "clearance.dominates(request.user.clearance, 'secret')",
            "has(request.params.amount) && request.params.amount > 100",
            "request.params.all(k, k != 'x') && policy.parameters['limit'] == '5'",
            "type(ip(request.source_ip)) == net.IP",
            "request.user.claims.exists(k, request.user.claims[k] == 'x')",
        ] {
            assert_eq!(errors(source), Vec::<String>::new(), "{source}");
        }
    }

    #[test]
    fn refuses_unknown_names_and_obvious_type_errors() {
        let table = [
            ("requets.user.id == 'a'", "undeclared reference to `requets`"),
            ("request.user.salary > 1", "undeclared field or attribute `salary` of `request.user`"),
            ("request.resource.owner == 'a'", "undeclared field `owner`"),
            ("request.user.id.isAdmin()", "undeclared reference to method `isAdmin`"),
            ("frobnicate(1)", "undeclared reference to function `frobnicate`"),
            ("request.user.id > 3", "no matching overload for `_>_`"),
            ("request.user.mfa_verified + 1 == 2", "no matching overload for `_+_`"),
            ("request.estimated_cost", "must be a `bool`"),
            ("request.user.roles.size() == 'x'", "no matching overload for `_==_`"),
            ("1 in request.user.roles", "no matching overload for `@in`"),
            ("request.time.getHours('UTC', 1) == 1", "no matching overload for `getHours`"),
            ("request.action.size == 1", "type `string` has no field `size`"),
            ("isIP(cidr('10.0.0.0/8'))", "no matching overload for `isIP`"),
            ("request.user.claims.exists(k, v, v == 'x')", "undeclared reference to method `exists`"),
            ("[1].all(a, [2].all(b, [3].all(c, a < b)))", "comprehensions are nested more than 2 deep"),
        ];
        for (source, expected) in table {
            let found = errors(source);
            assert!(found.iter().any(|e| e.contains(expected)), "{source}: {found:?}");
        }
    }

    #[test]
    fn errors_carry_positions() {
        let found = errors("request.user.id == 'a' &&\n  unknown_var");
        assert_eq!(found, ["rule.condition:2:3: undeclared reference to `unknown_var`"]);
    }
}
