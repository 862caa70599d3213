//! Lowering: rewrites of a checked condition, made once when a policy is compiled, that keep
//! its meaning and make it cheaper to evaluate with the `cel` interpreter.
//!
//! - A chain of field selections on a context variable (`request.user.roles`) becomes one
//!   identifier of the whole path, which the variable resolver looks up directly; the
//!   interpreter would otherwise resolve each chain as a qualified name (joining the path,
//!   and looking each prefix up as a variable and as a type).
//! - `!x` becomes `x ? false : true`: the same (an error unless `x` is a `bool`), without the
//!   error the interpreter builds for `!` before it evaluates.
//! - `<`, `<=`, `>` and `>=` become internal functions that compare with the same
//!   [`Comparer`](cel::common::traits::Comparer) the operators use, without the error the
//!   interpreter builds for each comparison before it compares.
//!
//! Separately, [`fold_constants`] turns `ip('...')` and `cidr('...')` of a literal into a
//! constant the policy keeps, so a condition does not parse the same address on every
//! evaluation.

use std::cmp::Ordering;

use cel::{
    Env, ExecutionError, IdedExpr,
    common::{
        ast::{EntryExpr, Expr, LiteralValue, operators},
        types::{CelBool, DYN_TYPE},
        value::CowVal,
    },
};

use cel::common::value::Val;

use crate::{network, values::ROOTS};

/// The prefix of the identifiers that name a policy's folded constants (`@aesp_const_<n>`,
/// the index in the policy's constants); `@` is a character no condition can write.
pub(crate) const CONSTANT_PREFIX: &str = "@aesp_const_";

/// Replaces each call `ip(<string literal>)` or `cidr(<string literal>)` whose literal parses
/// by an identifier of its value, pushed onto `constants`. A literal that does not parse is
/// left alone, so that the call fails at evaluation as it would have.
pub(crate) fn fold_constants(expr: &mut IdedExpr, constants: &mut Vec<Box<dyn Val>>) {
    if let Expr::Call(call) = &expr.expr
        && call.target.is_none()
        && let [IdedExpr { expr: Expr::Literal(LiteralValue::String(text)), .. }] = call.args.as_slice()
        && let Some(value) = network::constant(&call.func_name, text.inner())
    {
        expr.expr = Expr::Ident(format!("{CONSTANT_PREFIX}{}", constants.len()));
        constants.push(value);
        return;
    }
    match &mut expr.expr {
        Expr::Select(select) => fold_constants(&mut select.operand, constants),
        Expr::Call(call) => {
            if let Some(target) = call.target.as_mut() {
                fold_constants(target, constants);
            }
            for arg in &mut call.args {
                fold_constants(arg, constants);
            }
        }
        Expr::List(list) => {
            for element in &mut list.elements {
                fold_constants(element, constants);
            }
        }
        Expr::Map(map) => {
            for entry in &mut map.entries {
                if let EntryExpr::MapEntry(entry) = &mut entry.expr {
                    fold_constants(&mut entry.key, constants);
                    fold_constants(&mut entry.value, constants);
                }
            }
        }
        Expr::Struct(structure) => {
            for entry in &mut structure.entries {
                if let EntryExpr::StructField(field) = &mut entry.expr {
                    fold_constants(&mut field.value, constants);
                }
            }
        }
        Expr::Comprehension(c) => {
            for part in
                [&mut c.iter_range, &mut c.accu_init, &mut c.loop_cond, &mut c.loop_step, &mut c.result]
            {
                fold_constants(part, constants);
            }
        }
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
    }
}

/// Each comparison operator and the internal function it becomes.
pub(crate) const COMPARISONS: [(&str, &str); 4] = [
    (operators::LESS, "@aesp_less"),
    (operators::LESS_EQUALS, "@aesp_less_equals"),
    (operators::GREATER, "@aesp_greater"),
    (operators::GREATER_EQUALS, "@aesp_greater_equals"),
];

/// Lowers a checked condition.
pub(crate) fn lower(expr: &mut IdedExpr) {
    lower_in(expr, &mut Vec::new());
}

/// How `lhs` compares to `rhs` for the comparison operator `operator`: the ordering the
/// internal comparison functions use, with the error they report.
pub(crate) fn ordering(lhs: &dyn Val, rhs: &dyn Val, operator: &str) -> Result<Ordering, ExecutionError> {
    let overload = || {
        ExecutionError::no_such_overload(
            operator,
            vec![lhs.get_type().name().to_owned(), rhs.get_type().name().to_owned()],
        )
    };
    lhs.as_comparer().ok_or_else(overload)?.compare(rhs).map_err(|error| match error {
        ExecutionError::NoSuchOverload(_)
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnsupportedKeyType(_)
        | ExecutionError::UnexpectedType { .. } => overload(),
        other => other,
    })
}

fn compare<'b, 'v>(
    args: &[CowVal<'b, 'v>],
    operator: &str,
    accept: fn(Ordering) -> bool,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [lhs, rhs] = args else {
        return Err(ExecutionError::invalid_argument_count(2, args.len()));
    };
    let ordering = ordering(lhs.as_ref(), rhs.as_ref(), operator)?;
    Ok(CowVal::Borrowed(if accept(ordering) { &CelBool::TRUE } else { &CelBool::FALSE }))
}

fn less<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    compare(&args, operators::LESS, Ordering::is_lt)
}

fn less_equals<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    compare(&args, operators::LESS_EQUALS, Ordering::is_le)
}

fn greater<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    compare(&args, operators::GREATER, Ordering::is_gt)
}

fn greater_equals<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    compare(&args, operators::GREATER_EQUALS, Ordering::is_ge)
}

/// Registers the internal functions lowered conditions call. Their names start with `@`,
/// which no condition can write.
pub(crate) fn register(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_overload("@aesp_less", "aesp_less", vec![DYN_TYPE, DYN_TYPE], less)?;
    env.add_overload("@aesp_less_equals", "aesp_less_equals", vec![DYN_TYPE, DYN_TYPE], less_equals)?;
    env.add_overload("@aesp_greater", "aesp_greater", vec![DYN_TYPE, DYN_TYPE], greater)?;
    env.add_overload(
        "@aesp_greater_equals",
        "aesp_greater_equals",
        vec![DYN_TYPE, DYN_TYPE],
        greater_equals,
    )?;
    Ok(())
}

/// The path `a.b.c` of a chain of field selections on a context variable, if `expr` is one
/// (and no field name has a dot of its own).
fn chain_path(expr: &IdedExpr, bound: &[String]) -> Option<String> {
    let mut fields = Vec::new();
    let mut current = expr;
    loop {
        match &current.expr {
            Expr::Select(select) if !select.test && !select.field.contains('.') => {
                fields.push(select.field.as_str());
                current = &select.operand;
            }
            Expr::Ident(root)
                if !fields.is_empty() && ROOTS.contains(&root.as_str()) && !bound.contains(root) =>
            {
                fields.push(root.as_str());
                fields.reverse();
                return Some(fields.join("."));
            }
            _ => return None,
        }
    }
}

/// Lowers `expr`; names bound by comprehensions (`bound`) shadow the context variables.
fn lower_in(expr: &mut IdedExpr, bound: &mut Vec<String>) {
    if let Some(path) = chain_path(expr, bound) {
        expr.expr = Expr::Ident(path);
        return;
    }
    if let Expr::Call(call) = &mut expr.expr
        && call.target.is_none()
    {
        if call.func_name == operators::LOGICAL_NOT && call.args.len() == 1 {
            call.func_name = operators::CONDITIONAL.to_owned();
            call.args
                .push(IdedExpr { id: expr.id, expr: Expr::Literal(LiteralValue::Boolean(false.into())) });
            call.args.push(IdedExpr { id: expr.id, expr: Expr::Literal(LiteralValue::Boolean(true.into())) });
        } else if let Some((_, internal)) = COMPARISONS.iter().find(|(op, _)| *op == call.func_name)
            && call.args.len() == 2
        {
            call.func_name = (*internal).to_owned();
        }
    }
    match &mut expr.expr {
        Expr::Select(select) => lower_in(&mut select.operand, bound),
        Expr::Call(call) => {
            if let Some(target) = call.target.as_mut() {
                lower_in(target, bound);
            }
            for arg in &mut call.args {
                lower_in(arg, bound);
            }
        }
        Expr::List(list) => {
            for element in &mut list.elements {
                lower_in(element, bound);
            }
        }
        Expr::Map(map) => {
            for entry in &mut map.entries {
                if let EntryExpr::MapEntry(entry) = &mut entry.expr {
                    lower_in(&mut entry.key, bound);
                    lower_in(&mut entry.value, bound);
                }
            }
        }
        Expr::Struct(structure) => {
            for entry in &mut structure.entries {
                if let EntryExpr::StructField(field) = &mut entry.expr {
                    lower_in(&mut field.value, bound);
                }
            }
        }
        Expr::Comprehension(c) => {
            lower_in(&mut c.iter_range, bound);
            lower_in(&mut c.accu_init, bound);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.iter().cloned());
            bound.push(c.accu_var.clone());
            lower_in(&mut c.loop_cond, bound);
            lower_in(&mut c.loop_step, bound);
            lower_in(&mut c.result, bound);
            bound.truncate(depth);
        }
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
    }
}
