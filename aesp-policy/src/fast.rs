//! A small evaluator for the common shapes of conditions, tried before the `cel` interpreter.
//!
//! A lowered condition built only of literals, folded constants, context attributes
//! (`request.user.roles`), `&&`, `||`, `?:` (and so `!`, which lowering turns into one), `==`,
//! `!=`, the comparisons, `in` and `containsIP` is compiled, once per policy, into a [`Fast`]
//! tree. Evaluating it needs no interpreter context, looks no function up by name and lends
//! every value it can.
//!
//! It computes the values with the very operations the interpreter calls (`Val::equals`,
//! [`ordering`], `Container::contains`, the `containsIP` overloads), and it only answers where
//! no error arose and the result is a `bool`. Wherever the interpreter could fail (a missing
//! attribute, a type mismatch, a non-`bool` operand of `&&`, an address that does not parse) it
//! answers nothing, and the caller asks the interpreter, which gives the result, error text
//! included. A failing operand whose error CEL absorbs (`error || true`) is left to the
//! interpreter too. So for every condition it accepts, its answer is the interpreter's.

use std::cmp::Ordering;

use cel::{
    IdedExpr,
    common::{
        ast::{Expr, LiteralValue, operators},
        types::CelBool,
        value::CowVal,
    },
};

use crate::{
    lower::{COMPARISONS, CONSTANT_PREFIX, ordering},
    network,
    values::{ROOTS, ResourceView, SessionView, TenantView, UserView, Variables},
};

/// A condition compiled for the fast evaluator.
#[derive(Debug)]
pub(crate) struct Fast(Node);

#[derive(Debug)]
enum Node {
    Literal(LiteralValue),
    /// A folded constant of the policy, by index.
    Constant(usize),
    Attribute(Attribute),
    And(Box<[Node; 2]>),
    Or(Box<[Node; 2]>),
    Conditional(Box<[Node; 3]>),
    Equals(Box<[Node; 2]>),
    NotEquals(Box<[Node; 2]>),
    Compare(Box<[Node; 2]>, Comparison),
    In(Box<[Node; 2]>),
    /// `x in [a, b, ...]`, without building the list.
    InList(Box<Node>, Vec<Node>),
    /// `cidr.containsIP(ip)`.
    ContainsIp(Box<[Node; 2]>),
}

/// A comparison operator (lowered to an internal function).
#[derive(Clone, Copy, Debug)]
enum Comparison {
    Less,
    LessEquals,
    Greater,
    GreaterEquals,
}

impl Comparison {
    fn of(function: &str) -> Option<Self> {
        let (operator, _) = COMPARISONS.iter().find(|(_, internal)| *internal == function)?;
        Some(match *operator {
            operators::LESS => Comparison::Less,
            operators::LESS_EQUALS => Comparison::LessEquals,
            operators::GREATER => Comparison::Greater,
            operators::GREATER_EQUALS => Comparison::GreaterEquals,
            _ => return None,
        })
    }

    fn operator(self) -> &'static str {
        match self {
            Comparison::Less => operators::LESS,
            Comparison::LessEquals => operators::LESS_EQUALS,
            Comparison::Greater => operators::GREATER,
            Comparison::GreaterEquals => operators::GREATER_EQUALS,
        }
    }

    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Less => ordering.is_lt(),
            Comparison::LessEquals => ordering.is_le(),
            Comparison::Greater => ordering.is_gt(),
            Comparison::GreaterEquals => ordering.is_ge(),
        }
    }
}

/// A context attribute: the lowered identifier of a path, split once.
#[derive(Debug)]
enum Attribute {
    /// `request.<field>`.
    Request(String),
    /// `request.<view>.<field>`.
    View(View, String),
    /// Any other path, read as the variable resolver reads it.
    Path(String),
}

#[derive(Clone, Copy, Debug)]
enum View {
    User,
    Resource,
    Tenant,
    Session,
}

impl Attribute {
    fn of(path: &str) -> Self {
        let mut segments = path.split('.');
        match (segments.next(), segments.next(), segments.next(), segments.next()) {
            (Some("request"), Some(field), None, None) => Attribute::Request(field.to_owned()),
            (Some("request"), Some(view), Some(field), None) => {
                let view = match view {
                    "user" => View::User,
                    "resource" => View::Resource,
                    "tenant" => View::Tenant,
                    "session" => View::Session,
                    _ => return Attribute::Path(path.to_owned()),
                };
                Attribute::View(view, field.to_owned())
            }
            _ => Attribute::Path(path.to_owned()),
        }
    }

    /// The attribute's value, as [`Variables`]' resolver gives it (the same calls, without
    /// splitting the path again).
    fn resolve<'b>(&'b self, variables: &'b Variables<'_>) -> Option<CowVal<'b, 'b>> {
        let facts = variables.request.0;
        match self {
            Attribute::Request(field) => variables.request.field(field).ok(),
            Attribute::View(view, field) => match view {
                View::User => UserView(facts).field(field),
                View::Resource => ResourceView(facts).field(field),
                View::Tenant => TenantView(facts).field(field),
                View::Session => SessionView(facts).field(field),
            }
            .ok(),
            Attribute::Path(path) => cel::context::VariableResolver::resolve(variables, path),
        }
    }
}

impl Fast {
    /// Compiles a lowered condition, if every part of it is of a shape this evaluator knows.
    pub(crate) fn compile(expr: &IdedExpr) -> Option<Self> {
        node(expr).map(Fast)
    }

    /// The condition's value when it evaluates to a `bool` without error; `None` when the
    /// interpreter must decide (it then fails, or absorbs an error).
    pub(crate) fn evaluate(&self, variables: &Variables<'_>) -> Option<bool> {
        boolean(&self.0, variables)
    }
}

fn pair(a: &IdedExpr, b: &IdedExpr) -> Option<Box<[Node; 2]>> {
    Some(Box::new([node(a)?, node(b)?]))
}

fn node(expr: &IdedExpr) -> Option<Node> {
    match &expr.expr {
        Expr::Literal(literal) => Some(Node::Literal(literal.clone())),
        Expr::Ident(name) => ident(name),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                // The target is a constant or an attribute, so never the namespace of a
                // function the interpreter would call instead.
                return match (call.func_name.as_str(), call.args.as_slice()) {
                    ("containsIP", [ip]) => match node(target)? {
                        cidr @ (Node::Constant(_) | Node::Attribute(_)) => {
                            Some(Node::ContainsIp(Box::new([cidr, node(ip)?])))
                        }
                        _ => None,
                    },
                    _ => None,
                };
            }
            match (call.func_name.as_str(), call.args.as_slice()) {
                (operators::LOGICAL_AND, [a, b]) => pair(a, b).map(Node::And),
                (operators::LOGICAL_OR, [a, b]) => pair(a, b).map(Node::Or),
                (operators::CONDITIONAL, [c, t, e]) => {
                    Some(Node::Conditional(Box::new([node(c)?, node(t)?, node(e)?])))
                }
                (operators::EQUALS, [a, b]) => pair(a, b).map(Node::Equals),
                (operators::NOT_EQUALS, [a, b]) => pair(a, b).map(Node::NotEquals),
                (operators::IN, [a, IdedExpr { expr: Expr::List(list), .. }])
                    if list.optional_indices.is_empty() =>
                {
                    let items = list.elements.iter().map(node).collect::<Option<Vec<_>>>()?;
                    Some(Node::InList(Box::new(node(a)?), items))
                }
                (operators::IN, [a, b]) => pair(a, b).map(Node::In),
                (function, [a, b]) => Some(Node::Compare(pair(a, b)?, Comparison::of(function)?)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn ident(name: &str) -> Option<Node> {
    if let Some(index) = name.strip_prefix(CONSTANT_PREFIX) {
        return index.parse().ok().map(Node::Constant);
    }
    let root = name.split('.').next().unwrap_or_default();
    ROOTS.contains(&root).then(|| Node::Attribute(Attribute::of(name)))
}

fn bool_val<'b>(value: bool) -> CowVal<'b, 'b> {
    CowVal::Borrowed(if value { &CelBool::TRUE } else { &CelBool::FALSE })
}

/// The node's value as a `bool`; `None` on any error or a value of another type.
fn boolean(node: &Node, variables: &Variables<'_>) -> Option<bool> {
    match node {
        Node::And(operands) => {
            let [left, right] = &**operands;
            if boolean(left, variables)? { boolean(right, variables) } else { Some(false) }
        }
        Node::Or(operands) => {
            let [left, right] = &**operands;
            if boolean(left, variables)? { Some(true) } else { boolean(right, variables) }
        }
        Node::Conditional(operands) => {
            let [condition, then, otherwise] = &**operands;
            boolean(if boolean(condition, variables)? { then } else { otherwise }, variables)
        }
        Node::Equals(operands) => {
            let [left, right] = &**operands;
            Some(value(left, variables)? == value(right, variables)?)
        }
        Node::NotEquals(operands) => {
            let [left, right] = &**operands;
            Some(value(left, variables)? != value(right, variables)?)
        }
        Node::Compare(operands, comparison) => {
            let [left, right] = &**operands;
            let (left, right) = (value(left, variables)?, value(right, variables)?);
            ordering(left.as_ref(), right.as_ref(), comparison.operator()).ok().map(|o| comparison.accepts(o))
        }
        Node::In(operands) => {
            let [item, container] = &**operands;
            let (item, container) = (value(item, variables)?, value(container, variables)?);
            container.as_container()?.contains(item.as_ref()).ok()
        }
        Node::InList(item, elements) => {
            // Every element is evaluated, as the interpreter builds the whole list.
            let item = value(item, variables)?;
            let mut found = false;
            for element in elements {
                let element = value(element, variables)?;
                found = found || element.as_ref().equals(item.as_ref());
            }
            Some(found)
        }
        Node::ContainsIp(operands) => {
            let [cidr, ip] = &**operands;
            network::contains_ip_of(value(cidr, variables)?.as_ref(), value(ip, variables)?.as_ref())
        }
        Node::Literal(_) | Node::Constant(_) | Node::Attribute(_) => {
            value(node, variables)?.downcast_ref::<CelBool>().map(|b| *b.inner())
        }
    }
}

/// The node's value; `None` on any error.
fn value<'b>(node: &'b Node, variables: &'b Variables<'_>) -> Option<CowVal<'b, 'b>> {
    match node {
        Node::Literal(literal) => Some(literal.to_val()),
        Node::Constant(index) => variables.policy.0.constant_at(*index).map(CowVal::Borrowed),
        Node::Attribute(attribute) => attribute.resolve(variables),
        Node::Conditional(operands) => {
            let [condition, then, otherwise] = &**operands;
            value(if boolean(condition, variables)? { then } else { otherwise }, variables)
        }
        Node::And(_)
        | Node::Or(_)
        | Node::Equals(_)
        | Node::NotEquals(_)
        | Node::Compare(..)
        | Node::In(_)
        | Node::InList(..)
        | Node::ContainsIp(_) => boolean(node, variables).map(bool_val),
    }
}

#[cfg(test)]
mod tests {
    //! The differential test: generated conditions and requests, each condition evaluated by
    //! the fast evaluator and by the interpreter; wherever the fast one answers, the two agree.

    use std::{borrow::Cow, collections::HashMap};

    use aesp_core::proto::v1::{PolicyDefinition, PolicyRule, Value};

    use super::*;
    use crate::{
        engine::Engine,
        labels::Labels,
        policy::{CompiledPolicy, compile},
        request::{Principal, Request},
        schema::{AttributeType, Schema},
        values::{ClearanceTable, Facts, OrganizationView, PolicyView, RequestView},
    };

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const VALUES: &[&str] = &[
        "0",
        "1",
        "-3",
        "10",
        "100",
        "9223372036854775807",
        "0u",
        "10u",
        "100u",
        "18446744073709551615u",
        "0.0",
        "-0.0",
        "10.0",
        "25.0",
        "100.0",
        "1e300",
        "'a'",
        "'analyst'",
        "'10.1.2.3'",
        "''",
        "null",
        "true",
        "false",
        "b'a'",
        "request.estimated_cost",
        "request.user.spending_limit",
        "request.user.score",
        "request.user.id",
        "request.user.mfa_verified",
        "request.user.roles",
        "request.user.type",
        "request.user.clearance",
        "request.action",
        "request.source_ip",
        "request.time",
        "request.tenant.tier",
        "request.tenant.id",
        "request.resource.name",
        "request.session.id",
        "request.params.a",
        "request.params.b",
        "request.params.flag",
        "request.params.list",
        "request.params.m",
        "request.params.m.k",
        "request.params.ip",
        "policy.id",
        "policy.parameters",
        "organization.region",
        "[1, 'a', 2.0]",
        "['analyst', 'admin']",
        "[]",
        "{'k': 1}",
        "double('NaN')",
        "int(request.estimated_cost)",
        "size(request.user.roles)",
    ];

    const BOOLEANS: &[&str] = &[
        "true",
        "false",
        "request.user.mfa_verified",
        "request.params.flag",
        "request.user.score",
        "request.tenant.tier",
        "request.params.a",
        "has(request.params.a)",
        "request.user.roles.exists(r, r == 'analyst')",
    ];

    const ADDRESSES: &[&str] = &[
        "request.source_ip",
        "request.params.ip",
        "request.params.a",
        "ip(request.source_ip)",
        "ip('10.1.2.3')",
        "'10.1.2.3'",
        "'::1'",
    ];

    const RANGES: &[&str] = &[
        "cidr('10.0.0.0/8')",
        "cidr('::/0')",
        "cidr('0.0.0.0/0')",
        "cidr('10.0.0.0/99')",
        "request.params.ip",
    ];

    fn value(rng: &mut Rng, depth: u32) -> String {
        if depth > 0 && rng.chance(15) {
            return format!("({})", condition(rng, depth - 1));
        }
        if depth > 0 && rng.chance(8) {
            let c = condition(rng, depth - 1);
            return format!("({c} ? {} : {})", value(rng, depth - 1), value(rng, depth - 1));
        }
        (*rng.pick(VALUES)).to_owned()
    }

    fn condition(rng: &mut Rng, depth: u32) -> String {
        let choice = if depth == 0 { 6 + rng.below(6) } else { rng.below(12) };
        let d = depth.saturating_sub(1);
        match choice {
            0 => format!("({} && {})", condition(rng, d), condition(rng, d)),
            1 => format!("({} || {})", condition(rng, d), condition(rng, d)),
            2 => format!("!{}", condition(rng, d)),
            3 => format!("({} ? {} : {})", condition(rng, d), condition(rng, d), condition(rng, d)),
            4 => format!("{} in [{}, {}]", value(rng, d), value(rng, d), value(rng, d)),
            5 => format!("({}) == ({})", condition(rng, d), value(rng, d)),
            6 => (*rng.pick(BOOLEANS)).to_owned(),
            7 => {
                let op = *rng.pick(&["<", "<=", ">", ">="]);
                format!("{} {op} {}", value(rng, d), value(rng, d))
            }
            8 => {
                let op = *rng.pick(&["==", "!="]);
                format!("{} {op} {}", value(rng, d), value(rng, d))
            }
            9 => format!("{} in {}", value(rng, d), value(rng, d)),
            10 => format!("{}.containsIP({})", rng.pick(RANGES), rng.pick(ADDRESSES)),
            _ => format!("{} in request.user.roles", value(rng, d)),
        }
    }

    fn schema() -> Schema {
        Schema::new()
            .with_principal_attribute("spending_limit", AttributeType::Double)
            .unwrap()
            .with_principal_attribute("score", AttributeType::Dyn)
            .unwrap()
            .with_tenant_attribute("tier", AttributeType::Dyn)
            .unwrap()
            .with_organization_attribute("region", AttributeType::Dyn)
            .unwrap()
    }

    fn param_value(rng: &mut Rng) -> Option<Value> {
        let values = [
            Value::integer(10),
            Value::integer(-1),
            Value::float(10.0),
            Value::float(f64::NAN),
            Value::string("10"),
            Value::string("10.1.2.3"),
            Value::string("analyst"),
            Value::boolean(true),
            Value::boolean(false),
            Value::null(),
            Value::array([Value::integer(1), Value::string("a"), Value::string("analyst")]),
            Value::object([("k", Value::integer(1)), ("a", Value::string("x"))]),
            Value::binary(b"a".to_vec()),
        ];
        (!rng.chance(15)).then(|| rng.pick(&values).clone())
    }

    fn request(rng: &mut Rng) -> Request {
        let mut principal = Principal {
            id: rng.pick(&["alice", "bob", ""]).to_string(),
            tenant_id: "acme".into(),
            principal_type: "user".into(),
            clearance: rng.pick(&["secret", "", "TOP_SECRET"]).to_string(),
            mfa_verified: rng.chance(50),
            roles: match rng.below(3) {
                0 => vec!["analyst".into()],
                1 => vec![],
                _ => vec!["admin".into(), "analyst".into()],
            },
            ..Default::default()
        };
        for name in ["spending_limit", "score"] {
            let limit = [Value::float(100.0), Value::integer(100), Value::float(f64::NAN)];
            let value =
                if name == "spending_limit" { Some(rng.pick(&limit).clone()) } else { param_value(rng) };
            if let Some(value) = value.filter(|_| !rng.chance(15)) {
                principal.attributes.insert(name.to_owned(), value);
            }
        }
        let mut request = Request {
            tenant_id: "acme".into(),
            principal,
            action: rng.pick(&["invoke", "read", ""]).to_string(),
            source_ip: rng
                .pick(&["10.1.2.3", "192.168.1.1", "::1", "::ffff:10.1.2.3", "bad", ""])
                .to_string(),
            estimated_cost: *rng.pick(&[0.0, -0.0, 10.0, 25.0, 1e300, f64::NAN, f64::INFINITY]),
            time_ms: 1_699_956_800_000,
            ..Default::default()
        };
        request.resource.name = "tool:sql.query".into();
        for name in ["a", "b", "flag", "list", "m", "ip"] {
            if let Some(value) = param_value(rng) {
                request.params.insert(name.to_owned(), value);
            }
        }
        if rng.chance(40) {
            request.params.insert("ip".into(), Value::string(*rng.pick(&["10.1.2.3", "::1", "x"])));
        }
        if let Some(value) = param_value(rng) {
            request.tenant_attributes.insert("tier".into(), value);
        }
        request
    }

    fn definition(condition: &str) -> PolicyDefinition {
        PolicyDefinition {
            policy_id: "p".into(),
            version: "1".into(),
            enabled: true,
            rule: Some(PolicyRule {
                condition: condition.into(),
                effect: "ALLOW".into(),
                parameters: [("k".to_owned(), "v".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Evaluates `policy` on `request` both ways; returns the interpreter's result and whether
    /// the fast evaluator answered.
    fn both(
        engine: &Engine,
        schema: &Schema,
        policy: &CompiledPolicy,
        request: &Request,
    ) -> (Result<bool, String>, bool) {
        let mut roles = request.principal.roles.clone();
        roles.sort();
        roles.dedup();
        let facts = Facts::new(request, Cow::Owned(roles), None, None, schema);
        let organization: HashMap<String, Box<dyn cel::common::value::Val>> =
            [("region".to_owned(), Box::new(cel::common::types::CelString::from("eu".to_owned())) as Box<_>)]
                .into();
        let clearance = ClearanceTable(Labels::default());
        let variables = Variables {
            request: RequestView(&facts),
            policy: PolicyView(policy),
            organization: OrganizationView(&organization),
            clearance: &clearance,
        };
        let interpreted = engine.interpret(policy, &variables);
        let fast = policy.fast().and_then(|fast| fast.evaluate(&variables));
        if let Some(fast) = fast {
            assert_eq!(interpreted, Ok(fast), "fast and interpreted results differ");
        }
        (interpreted, fast.is_some())
    }

    #[test]
    fn the_fast_evaluator_agrees_with_the_interpreter() {
        let engine = Engine::default();
        let schema = schema();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut compiled, mut fast_compiled, mut answered, mut errors, mut evaluations) = (0, 0, 0, 0, 0);
        for _ in 0..4000 {
            let source = condition(&mut rng, 3);
            let Ok(policy) = compile(engine.env(), &schema, &definition(&source)) else {
                continue;
            };
            compiled += 1;
            fast_compiled += usize::from(policy.fast().is_some());
            for _ in 0..6 {
                let request = request(&mut rng);
                let (interpreted, fast) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    both(&engine, &schema, &policy, &request)
                }))
                .unwrap_or_else(|_| panic!("`{source}` on {request:?}"));
                evaluations += 1;
                answered += usize::from(fast);
                errors += usize::from(interpreted.is_err());
            }
        }
        // The generator must exercise both evaluators, and errors.
        assert!(compiled > 1500, "{compiled} compiled");
        assert!(fast_compiled * 2 > compiled, "{fast_compiled} of {compiled} fast");
        assert!(answered * 4 > evaluations, "{answered} of {evaluations} answered");
        assert!(errors * 10 > evaluations, "{errors} of {evaluations} errors");
        println!(
            "{compiled} compiled, {fast_compiled} fast; {evaluations} evaluations, {answered} answered, {errors} errors"
        );
    }

    /// The shapes the benchmark's policies have are all compiled.
    #[test]
    fn common_shapes_compile() {
        let engine = Engine::default();
        let schema = schema();
        for source in [
            "'analyst' in request.user.roles && request.user.spending_limit >= request.estimated_cost",
            "request.estimated_cost > 10.0",
            "!cidr('10.0.0.0/8').containsIP(request.source_ip)",
            "request.params.a > 1000 || request.user.mfa_verified",
            "request.action in ['read', 'invoke'] && request.user.clearance != 'top_secret'",
        ] {
            let policy = compile(engine.env(), &schema, &definition(source)).unwrap();
            assert!(policy.fast().is_some(), "{source}");
        }
        for source in [
            "request.time.getHours() >= 9",
            "request.user.roles.exists(r, r == 'a')",
            "has(request.params.a)",
        ] {
            let policy = compile(engine.env(), &schema, &definition(source)).unwrap();
            assert!(policy.fast().is_none(), "{source}");
        }
    }
}
