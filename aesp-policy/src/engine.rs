//! The engine: one shared CEL environment, the current snapshot, and decisions.

use std::{
    borrow::Cow,
    fmt,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

use aesp_core::{ErrorCode, proto::v1::PolicyDefinition};
use arc_swap::ArcSwap;
use cel::{Context, Env, Value as CelValue, common::types::CelBool};

use crate::{
    decision::{Decision, PolicyMatch},
    error::PolicyError,
    labels::Labels,
    lower, network,
    pattern::{Name, Permission},
    policy::{CompiledPolicy, Effect, compile},
    rbac::Holder,
    request::{Principal, Request},
    snapshot::{Snapshot, SnapshotBuilder, SnapshotInner},
    validate::ValidationError,
    values::{
        ClearanceTable, Facts, OrganizationView, PolicyView, RequestView, Variables, explain_missing,
        register_clearance,
    },
};

/// The permission that lets a principal lift a policy DENY with a justification.
pub const DEFAULT_BREAK_GLASS_PERMISSION: &str = "aesp:break_glass:use";

/// How an [`Engine`] is set up.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    labels: Labels,
    break_glass_text: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { labels: Labels::default(), break_glass_text: DEFAULT_BREAK_GLASS_PERMISSION.to_owned() }
    }
}

impl EngineConfig {
    /// The classification and clearance order.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Uses `labels` as the classification and clearance order.
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    /// Uses `permission` (`resource:action`, held through RBAC or the security context) as
    /// the break-glass permission instead of [`DEFAULT_BREAK_GLASS_PERMISSION`].
    ///
    /// # Errors
    ///
    /// Fails when the permission is malformed.
    pub fn with_break_glass_permission(mut self, permission: &str) -> Result<Self, PolicyError> {
        Permission::parse(permission)?;
        self.break_glass_text = permission.to_owned();
        Ok(self)
    }
}

/// The decision engine: it holds an immutable, versioned [`Snapshot`] and decides requests
/// against it. Installing a new snapshot is atomic and never blocks decisions in flight,
/// which finish on the snapshot they started with.
pub struct Engine {
    env: Arc<Env>,
    clearance: ClearanceTable,
    config: EngineConfig,
    current: ArcSwap<SnapshotInner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("snapshot_version", &current.version)
            .finish_non_exhaustive()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(EngineConfig::default())
    }
}

fn build_env() -> Result<Env, cel::DeclarationError> {
    let mut env = Env::stdlib().with_optional_support(false);
    network::register(&mut env)?;
    register_clearance(&mut env)?;
    lower::register(&mut env)?;
    Ok(env)
}

impl Engine {
    /// An engine with an empty snapshot (version 0: every request is denied by default).
    pub fn new(config: EngineConfig) -> Self {
        // The declarations are fixed and distinct; should one ever clash, the engine still
        // works with the standard library, and policies using the missing functions are
        // refused by validation.
        let env = build_env().unwrap_or_else(|_| Env::stdlib());
        Self {
            env: Arc::new(env),
            clearance: ClearanceTable(config.labels.clone()),
            config,
            current: ArcSwap::from_pointee(SnapshotInner::empty()),
        }
    }

    /// Compiles a snapshot: resolves role inheritance (refusing cycles) and validates and
    /// compiles every policy.
    ///
    /// # Errors
    ///
    /// The first invalid role or policy, with every problem found in it.
    pub fn build(&self, builder: &SnapshotBuilder) -> Result<Snapshot, PolicyError> {
        Ok(Snapshot { inner: Arc::new(builder.build(&self.env)?) })
    }

    /// Makes `snapshot` the current one, atomically, and returns the previous one.
    pub fn install(&self, snapshot: Snapshot) -> Snapshot {
        Snapshot { inner: self.current.swap(snapshot.inner) }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { inner: self.current.load_full() }
    }

    /// Validates a policy (the specification's ValidatePolicy) against the declarations of
    /// the current snapshot: syntax errors with line and column, unknown variables, fields
    /// and functions, obvious type errors, and malformed effect, scope and parameters.
    pub fn validate(&self, policy: &PolicyDefinition) -> Vec<ValidationError> {
        let current = self.current.load();
        match compile(&self.env, &current.schema, policy) {
            Ok(_) => Vec::new(),
            Err(errors) => errors,
        }
    }

    /// Decides `request` against the current snapshot.
    pub fn decide(&self, request: &Request) -> Decision {
        let current = self.current.load();
        self.decide_inner(&current, request)
    }

    /// Decides `request` against `snapshot` (for example to compare two snapshots).
    pub fn decide_with(&self, snapshot: &Snapshot, request: &Request) -> Decision {
        self.decide_inner(&snapshot.inner, request)
    }

    fn decide_inner(&self, snapshot: &SnapshotInner, request: &Request) -> Decision {
        let mut decision = Decision {
            allowed: false,
            reason: String::new(),
            code: None,
            matched: Vec::new(),
            risk_score: 0.0,
            conditions: Vec::new(),
            break_glass: false,
            snapshot_version: snapshot.version,
        };
        let deny = |mut decision: Decision, code: ErrorCode, reason: String| {
            decision.allowed = false;
            decision.code = Some(code);
            decision.reason = reason;
            decision
        };
        let principal = &request.principal;
        let resource = &request.resource;

        // 1. The tenant boundary.
        if request.tenant_id.is_empty()
            || principal.tenant_id != request.tenant_id
            || !(resource.tenant_id.is_empty() || resource.tenant_id == request.tenant_id)
        {
            let reason = if principal.tenant_id != request.tenant_id || request.tenant_id.is_empty() {
                format!(
                    "tenant boundary: principal `{}` of tenant `{}` cannot act in tenant `{}`",
                    principal.id, principal.tenant_id, request.tenant_id
                )
            } else {
                format!(
                    "tenant boundary: resource `{}` belongs to tenant `{}`, not `{}`",
                    resource.name, resource.tenant_id, request.tenant_id
                )
            };
            return deny(decision, ErrorCode::TenantAccessDenied, reason);
        }

        let tenant = snapshot.tenants.get(&request.tenant_id);
        let rbac = tenant.map(|t| &t.rbac);
        let holder = rbac.map(|r| r.holder(&principal.id));
        let roles: Cow<'_, [String]> = match holder {
            Some(holder) => holder.effective_roles(&principal.roles),
            None => {
                let mut roles = principal.roles.clone();
                roles.sort();
                roles.dedup();
                Cow::Owned(roles)
            }
        };
        let asserted: Vec<Permission> =
            principal.permissions.iter().filter_map(|p| Permission::parse(p).ok()).collect();
        let granting =
            |resource: &Name<'_>, action: &Name<'_>| granting(holder, principal, &asserted, resource, action);

        // 2. The contract's hard requirements.
        for required in &resource.required_roles {
            if roles.binary_search(required).is_err() {
                return deny(
                    decision,
                    ErrorCode::RoleRequired,
                    format!("hard requirement: role `{required}` is required"),
                );
            }
        }
        for required in &resource.required_permissions {
            let held =
                required.rsplit_once(':').and_then(|(r, a)| granting(&Name::new(r), &Name::new(a))).is_some();
            if !held {
                return deny(
                    decision,
                    ErrorCode::InsufficientPermissions,
                    format!("hard requirement: permission `{required}` is required"),
                );
            }
        }
        match self.config.labels.dominates(&principal.clearance, &resource.classification) {
            Ok(true) => {}
            Ok(false) => {
                let clearance = if principal.clearance.is_empty() { "none" } else { &principal.clearance };
                return deny(
                    decision,
                    ErrorCode::SecurityClearanceInsufficient,
                    format!(
                        "hard requirement: clearance `{clearance}` is below classification `{}`",
                        resource.classification
                    ),
                );
            }
            Err(why) => {
                return deny(
                    decision,
                    ErrorCode::SecurityClearanceInsufficient,
                    format!("hard requirement: {why}"),
                );
            }
        }

        // 3. Policies.
        let resource_name = Name::new(&resource.name);
        let action_name = Name::new(&request.action);
        let granted_by = granting(&resource_name, &action_name);
        let roles_val = if principal.roles.is_empty() { holder.and_then(Holder::roles_val) } else { None };
        let facts = Facts::new(request, roles, roles_val, rbac, &snapshot.schema);
        // The first matching ALLOW is all the outcome needs of them.
        let mut first_allow: Option<&CompiledPolicy> = None;
        let mut denies: Vec<&CompiledPolicy> = Vec::new();
        let mut failure: Option<(&CompiledPolicy, String)> = None;
        let mut conditions: Vec<String> = Vec::new();
        for policy in tenant.map(|t| t.policies.as_slice()).unwrap_or_default() {
            if !policy.applies(&resource_name, &action_name) {
                continue;
            }
            match self.evaluate(snapshot, policy, &facts) {
                Ok(true) => {
                    decision.matched.push(PolicyMatch {
                        policy_id: policy.shared_id(),
                        version: policy.shared_version(),
                        effect: policy.effect(),
                    });
                    if let Some(score) = policy.risk_score() {
                        decision.risk_score = decision.risk_score.max(score);
                    }
                    conditions.extend(policy.obligations().iter().cloned());
                    match policy.effect() {
                        Effect::Allow => {
                            first_allow.get_or_insert(policy);
                        }
                        Effect::Deny => denies.push(policy),
                        Effect::Audit => {}
                    }
                }
                Ok(false) => {}
                Err(error) => {
                    if failure.is_none() {
                        failure = Some((policy, error));
                    }
                }
            }
        }
        conditions.sort();
        conditions.dedup();
        decision.conditions = conditions;

        if let Some((policy, error)) = failure {
            return deny(
                decision,
                ErrorCode::PolicyEvaluationFailed,
                format!(
                    "policy `{}` (version {}) failed to evaluate, so the request is denied: {error}",
                    policy.id(),
                    policy.version()
                ),
            );
        }
        let granted = granted_by.is_some() || first_allow.is_some();
        if !denies.is_empty() {
            let ids = denies.iter().map(|p| format!("`{}`", p.id())).collect::<Vec<_>>().join(", ");
            let Some(justification) = &request.break_glass else {
                return deny(decision, ErrorCode::PolicyViolation, format!("denied by policy {ids}"));
            };
            let refused = if justification.trim().is_empty() {
                Some("break-glass needs a justification".to_owned())
            } else if granting(&Name::new(self.break_glass_resource()), &Name::new(self.break_glass_action()))
                .is_none()
            {
                Some(format!(
                    "break-glass refused: `{}` lacks the permission `{}`",
                    principal.id, self.config.break_glass_text
                ))
            } else if !granted {
                Some(
                    "break-glass lifts a DENY only where a permission or ALLOW policy grants the request"
                        .to_owned(),
                )
            } else {
                None
            };
            if let Some(refused) = refused {
                return deny(
                    decision,
                    ErrorCode::PolicyViolation,
                    format!("denied by policy {ids}; {refused}"),
                );
            }
            decision.allowed = true;
            decision.break_glass = true;
            decision.reason = format!(
                "break-glass by `{}` lifted the DENY of policy {ids} (escalated): {}",
                principal.id,
                justification.trim()
            );
            return decision;
        }
        match (granted_by, first_allow) {
            (Some(permission), _) => {
                decision.allowed = true;
                let mut reason = String::with_capacity(24 + permission.len());
                reason.push_str("allowed by permission `");
                reason.push_str(permission);
                reason.push('`');
                decision.reason = reason;
            }
            (None, Some(policy)) => {
                decision.allowed = true;
                decision.reason = format!("allowed by policy `{}`", policy.id());
            }
            (None, None) => {
                return deny(
                    decision,
                    ErrorCode::AuthorizationDenied,
                    format!(
                        "no permission or ALLOW policy grants `{}` on `{}` (default deny)",
                        request.action, resource.name
                    ),
                );
            }
        }
        decision
    }

    fn break_glass_resource(&self) -> &str {
        self.config.break_glass_text.rsplit_once(':').map(|(r, _)| r).unwrap_or_default()
    }

    fn break_glass_action(&self) -> &str {
        self.config.break_glass_text.rsplit_once(':').map(|(_, a)| a).unwrap_or_default()
    }

    /// Evaluates one policy's condition; any error, or a result that is not a `bool`, is an
    /// error (the caller denies: fail closed). The fast evaluator answers where it can; the
    /// interpreter everywhere else, and always where the condition fails.
    fn evaluate(
        &self,
        snapshot: &SnapshotInner,
        policy: &CompiledPolicy,
        facts: &Facts<'_>,
    ) -> Result<bool, String> {
        let variables = Variables {
            request: RequestView(facts),
            policy: PolicyView(policy),
            organization: OrganizationView(&snapshot.organization),
            clearance: &self.clearance,
        };
        if let Some(fast) = policy.fast()
            && let Ok(Some(value)) = catch_unwind(AssertUnwindSafe(|| fast.evaluate(&variables)))
        {
            return Ok(value);
        }
        self.interpret(policy, &variables)
    }

    /// Evaluates one policy's condition with the `cel` interpreter.
    pub(crate) fn interpret(
        &self,
        policy: &CompiledPolicy,
        variables: &Variables<'_>,
    ) -> Result<bool, String> {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut context = Context::with_env(Arc::clone(&self.env));
            context.set_variable_resolver(variables);
            match CelValue::resolve_val(policy.condition(), &context) {
                Ok(value) => match value.downcast_ref::<CelBool>() {
                    Some(b) => Ok(*b.inner()),
                    None => Err(format!("the condition gave a `{}`, not a `bool`", value.get_type().name())),
                },
                Err(error) => Err(explain_missing(&error).unwrap_or_else(|| error.to_string())),
            }
        }));
        outcome.unwrap_or_else(|_| Err("the evaluator failed".to_owned()))
    }

    /// The engine's CEL environment.
    #[cfg(test)]
    pub(crate) fn env(&self) -> &Env {
        &self.env
    }

    /// Evaluates a CEL expression with this engine's evaluator (standard library, network
    /// extension, `clearance`), binding `variables`; for tests of the evaluator itself. A type
    /// value comes back as `Err(Ok(name))`, any failure as `Err(Err(message))`.
    #[cfg(test)]
    pub(crate) fn evaluate_expression(
        &self,
        source: &str,
        variables: Vec<(String, CelValue)>,
        container: Option<&str>,
    ) -> Result<CelValue, Result<String, String>> {
        use cel::common::types::{CelType, Kind};
        let mut parsed = crate::validate::parse_condition(&self.env, source, None)
            .map_err(|e| Err(e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
        // As policies are: lowered.
        lower::lower(&mut parsed.expr);
        let env = match container {
            Some(container) if !container.is_empty() => {
                let mut env = build_env().map_err(|e| Err(e.to_string()))?;
                env.set_container(container).map_err(|e| Err(e.to_string()))?;
                Arc::new(env)
            }
            _ => Arc::clone(&self.env),
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut context = Context::with_env(env);
            for (name, value) in variables {
                context.add_variable_from_value(name, value);
            }
            let value = CelValue::resolve_val(&parsed.expr, &context).map_err(|e| Err(e.to_string()))?;
            if value.get_type().kind() == Kind::Type {
                return Err(Ok(value
                    .downcast_ref::<CelType>()
                    .map(|t| t.name().to_owned())
                    .unwrap_or_default()));
            }
            CelValue::try_from(value.as_ref()).map_err(|e| Err(format!("{e:?}")))
        }));
        outcome.unwrap_or_else(|_| Err(Err("the evaluator panicked".to_owned())))
    }
}

/// The first permission, of the principal's roles or asserted by its security context, that
/// grants (`resource`, `action`).
fn granting<'a>(
    holder: Option<Holder<'a>>,
    principal: &'a Principal,
    asserted: &'a [Permission],
    resource: &Name<'_>,
    action: &Name<'_>,
) -> Option<&'a str> {
    holder
        .into_iter()
        .flat_map(|h| h.permissions(&principal.roles))
        .chain(asserted.iter())
        .find(|p| p.matches(resource, action))
        .map(Permission::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_declares_without_clashes() {
        assert!(build_env().is_ok());
    }

    /// Folded `ip(...)` and `cidr(...)` constants decide as the calls did; a literal that does
    /// not parse still fails the evaluation (closed).
    #[test]
    fn folded_network_constants_keep_their_meaning() {
        use aesp_core::proto::v1::PolicyRule;

        use crate::{Resource, Schema};

        let decide = |condition: &str, source_ip: &str| {
            let engine = Engine::default();
            let mut builder = SnapshotBuilder::new(1, Schema::new());
            builder
                .add_policy(
                    "acme",
                    PolicyDefinition {
                        policy_id: "net".into(),
                        version: "1".into(),
                        enabled: true,
                        applies_to: vec!["tool:**".into()],
                        rule: Some(PolicyRule {
                            condition: condition.into(),
                            effect: "ALLOW".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
                .unwrap();
            engine.install(engine.build(&builder).unwrap());
            engine.decide(&Request {
                tenant_id: "acme".into(),
                principal: Principal { id: "alice".into(), tenant_id: "acme".into(), ..Default::default() },
                resource: Resource { name: "tool:x".into(), ..Default::default() },
                action: "invoke".into(),
                source_ip: source_ip.into(),
                ..Default::default()
            })
        };
        let inside = "cidr('10.0.0.0/8').containsIP(request.source_ip) && \
                      [ip('10.1.2.3')].exists(a, a == ip(request.source_ip)) && \
                      cidr('10.0.0.0/8') == cidr('10.0.0.0/8') && !cidr('192.168.0.0/16').containsIP(ip('10.1.2.3'))";
        assert!(decide(inside, "10.1.2.3").allowed());
        assert!(!decide(inside, "10.1.2.4").allowed());
        assert!(!decide(inside, "192.168.1.1").allowed());
        let broken = decide("cidr('10.0.0.0/99').containsIP(request.source_ip)", "10.1.2.3");
        assert!(!broken.allowed());
        assert_eq!(broken.code(), Some(ErrorCode::PolicyEvaluationFailed), "{}", broken.reason());
        let broken = decide("ip('not an address') == ip(request.source_ip)", "10.1.2.3");
        assert_eq!(broken.code(), Some(ErrorCode::PolicyEvaluationFailed), "{}", broken.reason());
    }
}
