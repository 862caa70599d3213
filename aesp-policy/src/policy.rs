//! A policy compiled for a snapshot: its scope, effect, parameters and parsed condition.

use std::{collections::HashMap, fmt, str::FromStr, sync::Arc};

use aesp_core::proto::v1::{PolicyDefinition, PolicyEffect};
use cel::{
    Env, IdedExpr,
    common::{
        types::{CelMap, CelMapKey, CelString},
        value::Val,
    },
};

use crate::{
    fast::Fast,
    lower::{fold_constants, lower},
    pattern::{Name, Pattern},
    schema::Schema,
    validate::{ValidationError, parse_condition},
};

/// The well-known parameter that gives a matching policy's risk score, from 0 to 1.
pub const RISK_SCORE_PARAMETER: &str = "risk_score";
/// The prefix of parameters that become obligations (the decision's `conditions`).
pub const OBLIGATION_PREFIX: &str = "obligation.";

/// What a matching policy means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    /// The request is allowed (unless a DENY matches).
    Allow,
    /// The request is denied; only break-glass can lift it.
    Deny,
    /// The request is flagged for audit; the outcome does not change.
    Audit,
}

impl Effect {
    /// The effect's name: `ALLOW`, `DENY` or `AUDIT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "ALLOW",
            Effect::Deny => "DENY",
            Effect::Audit => "AUDIT",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Effect {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        match text.to_ascii_uppercase().as_str() {
            "ALLOW" | "POLICY_EFFECT_ALLOW" => Ok(Effect::Allow),
            "DENY" | "POLICY_EFFECT_DENY" => Ok(Effect::Deny),
            "AUDIT" | "POLICY_EFFECT_AUDIT" => Ok(Effect::Audit),
            _ => Err(()),
        }
    }
}

impl From<Effect> for PolicyEffect {
    fn from(effect: Effect) -> Self {
        match effect {
            Effect::Allow => PolicyEffect::Allow,
            Effect::Deny => PolicyEffect::Deny,
            Effect::Audit => PolicyEffect::Audit,
        }
    }
}

/// A policy ready to evaluate.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    id: Arc<str>,
    version: Arc<str>,
    name: String,
    effect: Effect,
    resources: Vec<Pattern>,
    actions: Vec<Pattern>,
    condition: IdedExpr,
    /// The condition compiled for the fast evaluator, when it is of a shape it knows.
    fast: Option<Fast>,
    /// The values of the condition's folded constants ([`fold_constants`]), by index.
    constants: Vec<Box<dyn Val>>,
    parameters: Box<dyn Val>,
    risk_score: Option<f64>,
    obligations: Vec<String>,
}

impl CompiledPolicy {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
    pub(crate) fn version(&self) -> &str {
        &self.version
    }
    pub(crate) fn shared_id(&self) -> Arc<str> {
        Arc::clone(&self.id)
    }
    pub(crate) fn shared_version(&self) -> Arc<str> {
        Arc::clone(&self.version)
    }
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
    pub(crate) fn effect(&self) -> Effect {
        self.effect
    }
    pub(crate) fn condition(&self) -> &IdedExpr {
        &self.condition
    }
    pub(crate) fn fast(&self) -> Option<&Fast> {
        self.fast.as_ref()
    }
    /// The folded constant at `index`.
    pub(crate) fn constant_at(&self, index: usize) -> Option<&dyn Val> {
        self.constants.get(index).map(|v| &**v)
    }
    /// The folded constant named `index` (the digits after
    /// [`CONSTANT_PREFIX`](crate::lower::CONSTANT_PREFIX)).
    pub(crate) fn constant(&self, index: &str) -> Option<&dyn Val> {
        self.constant_at(index.parse::<usize>().ok()?)
    }
    pub(crate) fn parameters_val(&self) -> &dyn Val {
        &*self.parameters
    }
    pub(crate) fn risk_score(&self) -> Option<f64> {
        self.risk_score
    }
    pub(crate) fn obligations(&self) -> &[String] {
        &self.obligations
    }

    /// Whether the policy's scope covers (`resource`, `action`): both must match; an empty
    /// list matches everything. The actions, usually one short segment, are tried first.
    pub(crate) fn applies(&self, resource: &Name<'_>, action: &Name<'_>) -> bool {
        (self.actions.is_empty() || self.actions.iter().any(|p| p.matches(action)))
            && (self.resources.is_empty() || self.resources.iter().any(|p| p.matches(resource)))
    }
}

/// Validates a policy definition in full and compiles it. Every problem is reported, with
/// the field it is in.
pub(crate) fn compile(
    env: &Env,
    schema: &Schema,
    definition: &PolicyDefinition,
) -> Result<CompiledPolicy, Vec<ValidationError>> {
    let mut errors = Vec::new();
    let field = |name: &str, message: String| ValidationError::new(name, message, 0, 0);
    if definition.policy_id.is_empty() {
        errors.push(field("policy_id", "policy id is empty".to_owned()));
    }
    let Some(rule) = &definition.rule else {
        errors.push(field("rule", "policy has no rule".to_owned()));
        return Err(errors);
    };
    let effect = match rule.effect.parse::<Effect>() {
        Ok(effect) => Some(effect),
        Err(()) => {
            errors.push(field(
                "rule.effect",
                format!("unknown effect `{}`: expected ALLOW, DENY or AUDIT", rule.effect),
            ));
            None
        }
    };
    let mut patterns = |list: &[String], name: &str| -> Vec<Pattern> {
        let mut out = Vec::new();
        for (index, text) in list.iter().enumerate() {
            match Pattern::parse(text) {
                Ok(pattern) => out.push(pattern),
                Err(e) => errors.push(field(&format!("{name}[{index}]"), e.to_string())),
            }
        }
        out
    };
    let resources = patterns(&definition.applies_to, "applies_to");
    let actions = patterns(&rule.actions, "rule.actions");
    let mut risk_score = None;
    let mut obligations = Vec::new();
    for (name, value) in &rule.parameters {
        if name == RISK_SCORE_PARAMETER {
            match value.trim().parse::<f64>() {
                Ok(score) if (0.0..=1.0).contains(&score) => risk_score = Some(score),
                _ => errors.push(field(
                    &format!("rule.parameters.{name}"),
                    format!("risk score `{value}` is not a number from 0 to 1"),
                )),
            }
        } else if let Some(obligation) = name.strip_prefix(OBLIGATION_PREFIX) {
            if obligation.is_empty() {
                errors.push(field(&format!("rule.parameters.{name}"), "obligation has no name".to_owned()));
            } else if value.is_empty() || value == "true" {
                obligations.push(obligation.to_owned());
            } else {
                obligations.push(format!("{obligation}={value}"));
            }
        }
    }
    let mut constants = Vec::new();
    let condition = match parse_condition(env, &rule.condition, Some(schema)) {
        Ok(parsed) => {
            let mut expr = parsed.expr;
            lower(&mut expr);
            fold_constants(&mut expr, &mut constants);
            Some(expr)
        }
        Err(mut found) => {
            errors.append(&mut found);
            None
        }
    };
    match (effect, condition) {
        (Some(effect), Some(condition)) if errors.is_empty() => {
            let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = rule
                .parameters
                .iter()
                .map(|(k, v)| {
                    (CelMapKey::from(k.clone()), Box::new(CelString::from(v.clone())) as Box<dyn Val>)
                })
                .collect();
            let fast = Fast::compile(&condition);
            Ok(CompiledPolicy {
                id: Arc::from(definition.policy_id.as_str()),
                version: Arc::from(definition.version.as_str()),
                name: definition.name.clone(),
                effect,
                resources,
                actions,
                condition,
                fast,
                constants,
                parameters: Box::new(CelMap::from(map)),
                risk_score,
                obligations,
            })
        }
        _ => Err(errors),
    }
}
