//! Validation of policy text before it is parsed or accepted: bounds on size and nesting (a
//! deeply nested expression would overflow the parser's stack, which aborts the process),
//! syntax errors with their positions, and the type checker.

use std::fmt;

use cel::{
    Env, IdedExpr,
    common::ast::{EntryExpr, Expr, IdedEntryExpr},
};

use crate::{checker, schema::Schema};

/// The longest condition accepted, in bytes.
pub const MAX_CONDITION_BYTES: usize = 16 * 1024;
/// The deepest nesting of parentheses, brackets and braces accepted in a condition.
pub const MAX_CONDITION_NESTING: usize = 32;
/// The deepest expression tree accepted. Evaluation recurses once per level, on the caller's
/// thread, whose stack may be as small as 2 MiB: this keeps it far from overflowing, even in
/// unoptimised builds (where about 100 levels are too many).
pub const MAX_EXPRESSION_DEPTH: usize = 40;
/// The recursion limit handed to the CEL parser (expression levels).
const PARSER_RECURSION_LIMIT: u16 = 64;
/// The stack of the thread that parses and checks: the generated parser recurses deeply (in
/// unoptimised builds, 16 nested parentheses overflow a 2 MiB stack). Only touched pages are
/// committed.
const PARSER_STACK_BYTES: usize = 128 * 1024 * 1024;

/// One problem found in a policy (the specification's `PolicyValidationError`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    field: String,
    message: String,
    line: u32,
    column: u32,
}

impl ValidationError {
    pub(crate) fn new(field: &str, message: impl Into<String>, line: u32, column: u32) -> Self {
        Self { field: field.to_owned(), message: message.into(), line, column }
    }

    /// The field in error, as a path (for example `rule.condition`, `rule.effect`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The line in the field's text, from 1 (0 when not applicable).
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The column in that line, in characters from 1 (0 when not applicable).
    pub fn column(&self) -> u32 {
        self.column
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.field, self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl From<&ValidationError> for aesp_core::proto::v1::PolicyValidationError {
    fn from(error: &ValidationError) -> Self {
        Self {
            field: error.field.clone(),
            message: error.message.clone(),
            line: error.line,
            column: error.column,
        }
    }
}

/// The line and column (both from 1, the column in characters) of the character at
/// `char_offset` in `source`.
pub(crate) fn line_column(source: &str, char_offset: usize) -> (u32, u32) {
    let mut line = 1u32;
    let mut column = 1u32;
    for c in source.chars().take(char_offset) {
        if c == '\n' {
            line = line.saturating_add(1);
            column = 1;
        } else {
            column = column.saturating_add(1);
        }
    }
    (line, column)
}

/// Refuses text too long or too deeply nested to parse safely. Quoted text is skipped.
fn bound(source: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "rule.condition";
    if source.len() > MAX_CONDITION_BYTES {
        return Err(ValidationError::new(
            FIELD,
            format!("condition is {} bytes long, more than the limit of {MAX_CONDITION_BYTES}", source.len()),
            0,
            0,
        ));
    }
    let chars: Vec<char> = source.chars().collect();
    let mut depth = 0usize;
    let mut index = 0usize;
    while let Some(&c) = chars.get(index) {
        match c {
            '\'' | '"' => {
                let raw = index > 0 && chars.get(index - 1).is_some_and(|p| *p == 'r' || *p == 'R');
                let triple = chars.get(index + 1) == Some(&c) && chars.get(index + 2) == Some(&c);
                let quote_len = if triple { 3 } else { 1 };
                index += quote_len;
                loop {
                    match chars.get(index) {
                        None => break,
                        Some('\\') if !raw => index += 2,
                        Some(&q) if q == c => {
                            if !triple {
                                index += 1;
                                break;
                            }
                            if chars.get(index + 1) == Some(&c) && chars.get(index + 2) == Some(&c) {
                                index += 3;
                                break;
                            }
                            index += 1;
                        }
                        Some('\n') if !triple => break,
                        Some(_) => index += 1,
                    }
                }
                continue;
            }
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_CONDITION_NESTING {
                    let (line, column) = line_column(source, index);
                    return Err(ValidationError::new(
                        FIELD,
                        format!("condition is nested more than {MAX_CONDITION_NESTING} levels deep"),
                        line,
                        column,
                    ));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        index += 1;
    }
    Ok(())
}

/// A parsed condition.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) expr: IdedExpr,
}

/// Bounds, parses and checks a condition. Parsing and checking run on a thread with a large
/// stack of their own, so that no text can overflow the caller's.
pub(crate) fn parse_condition(
    env: &Env,
    source: &str,
    schema: Option<&Schema>,
) -> Result<Parsed, Vec<ValidationError>> {
    bound(source).map_err(|e| vec![e])?;
    if source.trim().is_empty() {
        return Err(vec![ValidationError::new("rule.condition", "condition is empty", 0, 0)]);
    }
    let failed = |what: String| vec![ValidationError::new("rule.condition", what, 0, 0)];
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("aesp-policy-parser".to_owned())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, || parse_and_check(env, source, schema))
            .map_err(|e| failed(format!("cannot start the parser: {e}")))?
            .join()
            .map_err(|_| failed("the parser failed".to_owned()))?
    })
}

fn parse_and_check(env: &Env, source: &str, schema: Option<&Schema>) -> Result<Parsed, Vec<ValidationError>> {
    let parser = env.parser().max_recursion_depth(PARSER_RECURSION_LIMIT).enable_ident_escape_syntax(true);
    let (expr, info) = parser.parse_with_source_info(source).map_err(|errors| {
        let mut out: Vec<ValidationError> = errors
            .errors
            .iter()
            .map(|e| {
                let line = u32::try_from(e.pos.0).unwrap_or(0);
                let column = u32::try_from(e.pos.1).unwrap_or(0);
                ValidationError::new("rule.condition", e.msg.clone(), line, column)
            })
            .collect();
        if out.is_empty() {
            out.push(ValidationError::new("rule.condition", "syntax error", 0, 0));
        }
        out
    })?;
    let depth = depth(&expr);
    if depth > MAX_EXPRESSION_DEPTH {
        return Err(vec![ValidationError::new(
            "rule.condition",
            format!("condition is {depth} levels deep, more than the limit of {MAX_EXPRESSION_DEPTH}"),
            0,
            0,
        )]);
    }
    if let Some(schema) = schema {
        let errors = checker::check(&expr, &info, source, schema);
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    Ok(Parsed { expr })
}

/// The depth of an expression tree (a leaf is 1).
fn depth(expr: &IdedExpr) -> usize {
    let children: Vec<&IdedExpr> = match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => Vec::new(),
        Expr::Call(call) => call.target.iter().map(|t| &**t).chain(call.args.iter()).collect(),
        Expr::Select(select) => vec![&*select.operand],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => entries(&map.entries),
        Expr::Struct(structure) => entries(&structure.entries),
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result],
    };
    1 + children.into_iter().map(depth).max().unwrap_or(0)
}

fn entries(entries: &[IdedEntryExpr]) -> Vec<&IdedExpr> {
    entries
        .iter()
        .flat_map(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é", 1), (1, 2));
    }

    #[test]
    fn bounds_skip_quoted_text() {
        assert!(bound(&format!("'{}' == 'a'", "(".repeat(100))).is_ok());
        assert!(bound(&format!("r'\\' == '{}'", "[".repeat(100))).is_ok());
        assert!(bound(&format!("'''{}''' == ''", "{".repeat(100))).is_ok());
        assert!(bound(&"(".repeat(MAX_CONDITION_NESTING + 1)).is_err());
        assert!(bound(&"(".repeat(MAX_CONDITION_NESTING)).is_ok());
        assert!(bound(&"a".repeat(MAX_CONDITION_BYTES + 1)).is_err());
    }

    #[test]
    fn syntax_errors_have_positions() {
        let env = Env::stdlib();
        let errors = parse_condition(&env, "request.user.id ==\n  == 'a'", None).unwrap_err();
        let first = errors.first().unwrap();
        assert_eq!(first.field(), "rule.condition");
        assert_eq!(first.line(), 2);
        assert!(first.column() >= 1, "{first}");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing_on_a_small_stack() {
        // Run where a service would: on a thread with a 2 MiB stack.
        let result = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(|| {
                let env = Env::stdlib();
                let deepest_allowed = format!(
                    "{}{}{}",
                    "(!".repeat(MAX_CONDITION_NESTING),
                    "true",
                    ")".repeat(MAX_CONDITION_NESTING)
                );
                let allowed = parse_condition(&env, &deepest_allowed, None).is_ok();
                let lists =
                    format!("{}1{}", "[".repeat(MAX_CONDITION_NESTING), "]".repeat(MAX_CONDITION_NESTING));
                let lists_parse = parse_condition(&env, &lists, None).is_ok();
                let chain = vec!["1"; 3000].join(" + ");
                // `&&` and `||` chains are balanced by the parser; `+` chains are not.
                let deepest = vec!["1"; MAX_EXPRESSION_DEPTH].join(" + ");
                assert!(parse_condition(&env, &deepest, None).is_ok());
                let too_long = vec!["1"; MAX_EXPRESSION_DEPTH + 1].join(" + ");
                assert!(parse_condition(&env, &too_long, None).is_err());
                let chain_refused = parse_condition(&env, &chain, None).is_err();
                let selects = format!("a{}", ".b".repeat(7000));
                let selects_refused = parse_condition(&env, &selects, None).is_err();
                let indexes = format!("a{}", "[0]".repeat(5000));
                let indexes_refused = parse_condition(&env, &indexes, None).is_err();
                let calls = format!("a{}", ".f()".repeat(3500));
                let calls_refused = parse_condition(&env, &calls, None).is_err();
                let nots = format!("{}true", "!".repeat(15000));
                let _ = parse_condition(&env, &nots, None);
                let negations = format!("{}1", "-".repeat(15000));
                let _ = parse_condition(&env, &negations, None);
                assert!(selects_refused && indexes_refused && calls_refused);
                let too_deep = "(".repeat(100_000);
                let refused = parse_condition(&env, &too_deep, None).is_err();
                (allowed, lists_parse, chain_refused, refused)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(result, (true, true, true, true));
    }
}
