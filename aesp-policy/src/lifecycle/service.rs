//! The EnterprisePolicyService over the lifecycle, as async methods taking and returning the
//! protocol's messages. Each change also returns the audit events for the caller to append.

use std::sync::Arc;

use aesp_core::{
    Error, ErrorCode, Result, new_id,
    proto::v1::{
        AuditEvent, CreatePolicyRequest, CreatePolicyResponse, CreatePolicyResult, DecisionInput,
        DeletePolicyRequest, DeletePolicyResponse, Done, EvaluatePolicyRequest, EvaluatePolicyResponse,
        EvaluatePolicyResult, GetPolicyRequest, GetPolicyResponse, GetPolicyResult, ListPoliciesRequest,
        ListPoliciesResponse, ListPoliciesResult, PolicyDefinition, PolicyEffect, PolicyTestCase,
        PolicyTestCaseResult, PolicyValidationError, TestPolicyRequest, TestPolicyResponse, TestPolicyResult,
        UpdatePolicyRequest, UpdatePolicyResponse, UpdatePolicyResult, ValidatePolicyRequest,
        ValidatePolicyResponse, ValidatePolicyResult, create_policy_response, delete_policy_response,
        evaluate_policy_response, get_policy_response, list_policies_response, test_policy_response,
        update_policy_response, validate_policy_response,
    },
};

use super::{PolicyLifecycle, convert::from_input};
use crate::{Decision, Principal, Request, Resource, Schema, SnapshotBuilder};

/// The authenticated caller of a service method.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The caller's principal id.
    pub principal_id: String,
    /// The caller's tenant (from the authenticated context).
    pub tenant_id: String,
    /// A platform administrator may act in the tenant a request names.
    pub platform_admin: bool,
}

impl Caller {
    /// The tenant a request acts in: the caller's, unless a platform administrator names one.
    pub fn tenant<'a>(&'a self, requested: &'a str) -> &'a str {
        if self.platform_admin && !requested.is_empty() { requested } else { &self.tenant_id }
    }
}

/// A response with the audit events the change produced, for the caller to append.
#[derive(Clone, Debug, PartialEq)]
pub struct Audited<T> {
    /// The response.
    pub response: T,
    /// Audit events of the change (none for reads and refusals).
    pub events: Vec<AuditEvent>,
}

impl<T> Audited<T> {
    fn read(response: T) -> Self {
        Self { response, events: Vec::new() }
    }
}

/// The most policies or versions one ListPolicies page returns.
const MAX_PAGE: usize = 1000;
/// The page size when a request gives none.
const DEFAULT_PAGE: usize = 100;

/// The EnterprisePolicyService over a [`PolicyLifecycle`].
#[derive(Clone, Debug)]
pub struct PolicyService {
    lifecycle: Arc<PolicyLifecycle>,
}

fn effect_of(decision: &Decision) -> PolicyEffect {
    if decision.allowed() { PolicyEffect::Allow } else { PolicyEffect::Deny }
}

impl PolicyService {
    /// The service over `lifecycle`.
    pub fn new(lifecycle: Arc<PolicyLifecycle>) -> Self {
        Self { lifecycle }
    }

    /// CreatePolicy: writes version `1.0.0` (or the semver given) in `draft`; it applies once
    /// approved and promoted. An empty `policy_id` gets a new id.
    pub async fn create_policy(
        &self,
        caller: &Caller,
        request: CreatePolicyRequest,
    ) -> Audited<CreatePolicyResponse> {
        use create_policy_response::ResponseType;
        let tenant = caller.tenant(&request.tenant_id).to_owned();
        let outcome = async {
            let mut policy = request.policy.ok_or_else(|| Error::invalid_argument("`policy` is required"))?;
            if policy.policy_id.is_empty() {
                policy.policy_id = new_id(self.lifecycle.clock.as_ref());
            } else if self.lifecycle.read_policy(&tenant, &policy.policy_id).await?.is_some() {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!("policy `{}` exists; update it instead", policy.policy_id),
                ));
            }
            if request.dry_run {
                return self.stamp_dry_run(caller, policy, None).map(|p| (p, Vec::new()));
            }
            let (info, event) = self.lifecycle.create_version(&caller.principal_id, &tenant, policy).await?;
            Ok((info.policy, vec![event]))
        }
        .await;
        match outcome {
            Ok((policy, events)) => Audited {
                response: CreatePolicyResponse {
                    response_type: Some(ResponseType::Success(CreatePolicyResult { policy: Some(policy) })),
                },
                events,
            },
            Err(e) => Audited::read(CreatePolicyResponse {
                response_type: Some(ResponseType::Error(e.to_enterprise_error())),
            }),
        }
    }

    fn stamp_dry_run(
        &self,
        caller: &Caller,
        mut policy: PolicyDefinition,
        latest: Option<&str>,
    ) -> Result<PolicyDefinition> {
        let now = self.lifecycle.clock.now_ms();
        let next = match latest {
            Some(latest) => semver::Version::new(super::parse_version(latest)?.major + 1, 0, 0),
            None => semver::Version::new(1, 0, 0),
        };
        policy.version = next.to_string();
        policy.created_at = now;
        policy.updated_at = now;
        policy.created_by.clone_from(&caller.principal_id);
        self.lifecycle.check(&policy)?;
        Ok(policy)
    }

    /// UpdatePolicy: writes the next major version in `draft` (the active version keeps
    /// applying until the new one is approved and promoted).
    pub async fn update_policy(
        &self,
        caller: &Caller,
        request: UpdatePolicyRequest,
    ) -> Audited<UpdatePolicyResponse> {
        use update_policy_response::ResponseType;
        let tenant = caller.tenant(&request.tenant_id).to_owned();
        let outcome = async {
            let mut policy = request.policy.ok_or_else(|| Error::invalid_argument("`policy` is required"))?;
            let status = self.lifecycle.status(&tenant, &policy.policy_id).await?;
            if status.deleted {
                return Err(Error::new(
                    ErrorCode::PolicyNotFound,
                    format!("policy `{}` was deleted", policy.policy_id),
                ));
            }
            if !request.expected_version.is_empty() && request.expected_version != status.latest {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "policy `{}` is at version `{}`, not `{}`",
                        policy.policy_id, status.latest, request.expected_version
                    ),
                ));
            }
            if request.dry_run {
                return self.stamp_dry_run(caller, policy, Some(&status.latest)).map(|p| (p, Vec::new()));
            }
            policy.version.clear();
            let (info, event) = self.lifecycle.create_version(&caller.principal_id, &tenant, policy).await?;
            Ok((info.policy, vec![event]))
        }
        .await;
        match outcome {
            Ok((policy, events)) => Audited {
                response: UpdatePolicyResponse {
                    response_type: Some(ResponseType::Success(UpdatePolicyResult { policy: Some(policy) })),
                },
                events,
            },
            Err(e) => Audited::read(UpdatePolicyResponse {
                response_type: Some(ResponseType::Error(e.to_enterprise_error())),
            }),
        }
    }

    /// DeletePolicy: the policy stops applying at once; its versions stay readable.
    pub async fn delete_policy(
        &self,
        caller: &Caller,
        request: DeletePolicyRequest,
    ) -> Audited<DeletePolicyResponse> {
        use delete_policy_response::ResponseType;
        let tenant = caller.tenant(&request.tenant_id);
        match self
            .lifecycle
            .delete(&caller.principal_id, tenant, &request.policy_id, &request.expected_version)
            .await
        {
            Ok(change) => Audited {
                response: DeletePolicyResponse { response_type: Some(ResponseType::Success(Done {})) },
                events: vec![change.audit],
            },
            Err(e) => Audited::read(DeletePolicyResponse {
                response_type: Some(ResponseType::Error(e.to_enterprise_error())),
            }),
        }
    }

    async fn current(&self, tenant: &str, policy_id: &str, version: &str) -> Result<PolicyDefinition> {
        let version = if version.is_empty() {
            let status = self.lifecycle.status(tenant, policy_id).await?;
            if status.active.is_empty() { status.latest } else { status.active }
        } else {
            version.to_owned()
        };
        Ok(self.lifecycle.version(tenant, policy_id, &version).await?.policy)
    }

    /// GetPolicy: a given version, or the current one (the active version, else the latest).
    pub async fn get_policy(&self, caller: &Caller, request: GetPolicyRequest) -> Audited<GetPolicyResponse> {
        use get_policy_response::ResponseType;
        let tenant = caller.tenant(&request.tenant_id);
        let response_type = match self.current(tenant, &request.policy_id, &request.version).await {
            Ok(policy) => ResponseType::Success(GetPolicyResult { policy: Some(policy) }),
            Err(e) => ResponseType::Error(e.to_enterprise_error()),
        };
        Audited::read(GetPolicyResponse { response_type: Some(response_type) })
    }

    /// ListPolicies: every version of one policy, newest first, or the current version of each
    /// policy of the tenant (deleted ones left out), by id; paged with an opaque cursor.
    pub async fn list_policies(
        &self,
        caller: &Caller,
        request: ListPoliciesRequest,
    ) -> Audited<ListPoliciesResponse> {
        use list_policies_response::ResponseType;
        let tenant = caller.tenant(&request.tenant_id).to_owned();
        let outcome = async {
            let limit = match usize::try_from(request.limit).unwrap_or(MAX_PAGE) {
                0 => DEFAULT_PAGE,
                n => n.min(MAX_PAGE),
            };
            let mut all: Vec<(String, PolicyDefinition)> = Vec::new();
            if request.policy_id.is_empty() {
                for (id, status) in self.lifecycle.policies(&tenant).await? {
                    if status.deleted {
                        continue;
                    }
                    let policy = self.current(&tenant, &id, "").await?;
                    if policy.enabled || request.include_disabled {
                        all.push((id, policy));
                    }
                }
            } else {
                for (index, info) in
                    self.lifecycle.versions(&tenant, &request.policy_id).await?.into_iter().enumerate()
                {
                    if info.policy.enabled || request.include_disabled {
                        all.push((format!("{index:010}"), info.policy));
                    }
                }
            }
            let start = if request.cursor.is_empty() {
                0
            } else {
                all.iter().position(|(key, _)| *key > request.cursor).unwrap_or(all.len())
            };
            let page: Vec<(String, PolicyDefinition)> = all.into_iter().skip(start).take(limit + 1).collect();
            let next_cursor = if page.len() > limit {
                page.get(limit.saturating_sub(1)).map(|(k, _)| k.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            let policies = page.into_iter().take(limit).map(|(_, p)| p).collect();
            Ok::<_, Error>(ListPoliciesResult { policies, next_cursor })
        }
        .await;
        let response_type = match outcome {
            Ok(result) => ResponseType::Success(result),
            Err(e) => ResponseType::Error(e.to_enterprise_error()),
        };
        Audited::read(ListPoliciesResponse { response_type: Some(response_type) })
    }

    fn request_for(&self, tenant: &str, principal_id: &str, resource: &str, action: &str) -> Request {
        Request {
            tenant_id: tenant.to_owned(),
            principal: Principal {
                id: principal_id.to_owned(),
                tenant_id: tenant.to_owned(),
                ..Principal::default()
            },
            resource: Resource {
                name: resource.to_owned(),
                tenant_id: tenant.to_owned(),
                ..Resource::default()
            },
            action: action.to_owned(),
            time_ms: self.lifecycle.clock.now_ms(),
            ..Request::default()
        }
    }

    /// EvaluatePolicy: one policy (at its current or a given version) alone, or the tenant's
    /// active policies combined, against a request whose `context` is the request parameters
    /// (`request.params`), at the lifecycle clock's time.
    pub async fn evaluate_policy(
        &self,
        caller: &Caller,
        request: EvaluatePolicyRequest,
    ) -> Audited<EvaluatePolicyResponse> {
        use evaluate_policy_response::ResponseType;
        let tenant = caller.tenant(&request.tenant_id).to_owned();
        let mut decision_request =
            self.request_for(&tenant, &request.principal_id, &request.resource, &request.action);
        decision_request.params = request.context.into_iter().collect();
        let outcome = async {
            if request.policy_id.is_empty() {
                let decision =
                    self.lifecycle.engine().decide_with(&self.lifecycle.active(), &decision_request);
                return Ok(EvaluatePolicyResult {
                    effect: effect_of(&decision).into(),
                    matched: !decision.matched().is_empty(),
                    reason: decision.reason().to_owned(),
                    matched_policies: decision.matched().iter().map(|m| m.policy_id().to_owned()).collect(),
                });
            }
            let mut policy = self.current(&tenant, &request.policy_id, &request.version).await?;
            policy.enabled = true;
            let mut builder = SnapshotBuilder::new(0, self.lifecycle.schema().clone());
            builder.add_policy(&tenant, policy)?;
            let snapshot = self.lifecycle.engine().build(&builder)?;
            let decision = self.lifecycle.engine().decide_with(&snapshot, &decision_request);
            let matched = decision.matched().first();
            Ok::<_, Error>(EvaluatePolicyResult {
                effect: matched.map_or(PolicyEffect::Unspecified, |m| m.effect().into()).into(),
                matched: matched.is_some(),
                reason: decision.reason().to_owned(),
                matched_policies: decision.matched().iter().map(|m| m.policy_id().to_owned()).collect(),
            })
        }
        .await;
        let response_type = match outcome {
            Ok(result) => ResponseType::Success(result),
            Err(e) => ResponseType::Error(e.to_enterprise_error()),
        };
        Audited::read(EvaluatePolicyResponse { response_type: Some(response_type) })
    }

    /// TestPolicy: each synthetic case, and each recorded decision input of the tenant in
    /// `recorded` (the Host reads them from its audit log for the request's replay window, as
    /// `(event id, input)`), decided by the active snapshot and by the active snapshot with the
    /// candidate policy in place.
    pub async fn test_policy(
        &self,
        caller: &Caller,
        request: TestPolicyRequest,
        recorded: &[(String, DecisionInput)],
    ) -> Audited<TestPolicyResponse> {
        use test_policy_response::ResponseType;
        let tenant = caller.tenant(&request.tenant_id).to_owned();
        let outcome = async {
            let mut policy = request.policy.ok_or_else(|| Error::invalid_argument("`policy` is required"))?;
            if policy.version.is_empty() {
                policy.version = "candidate".to_owned();
            }
            let before = self.lifecycle.active();
            let after = self.lifecycle.candidate_snapshot(&tenant, &policy).await?;
            let engine = self.lifecycle.engine();
            let mut result = TestPolicyResult::default();
            let mut push = |case_id: String, expected: PolicyEffect, request: &Request| {
                let b = engine.decide_with(&before, request);
                let a = engine.decide_with(&after, request);
                let changed = b.allowed() != a.allowed();
                let met = expected == PolicyEffect::Unspecified || expected == effect_of(&a);
                result.total_cases += 1;
                result.changed_cases += u32::from(changed);
                result.failed_expectations += u32::from(!met);
                result.results.push(PolicyTestCaseResult {
                    case_id,
                    effect_before: effect_of(&b).into(),
                    effect_after: effect_of(&a).into(),
                    changed,
                    reason_before: b.reason().to_owned(),
                    reason_after: a.reason().to_owned(),
                    expectation_met: met,
                });
            };
            for case in request.cases {
                let PolicyTestCase { case_id, principal_id, resource, action, context, .. } = &case;
                let mut decision_request = self.request_for(&tenant, principal_id, resource, action);
                decision_request.params = context.clone().into_iter().collect();
                push(case_id.clone(), case.expected_effect(), &decision_request);
            }
            if let Some(window) = request.replay {
                let limit = match window.limit {
                    0 => usize::MAX,
                    n => usize::try_from(n).unwrap_or(usize::MAX),
                };
                let in_window = recorded.iter().filter(|(_, input)| {
                    input.tenant_id == tenant
                        && input.time_ms >= window.start_time
                        && (window.end_time == 0 || input.time_ms < window.end_time)
                });
                for (case_id, input) in in_window.take(limit) {
                    push(case_id.clone(), PolicyEffect::Unspecified, &from_input(input)?);
                }
            }
            Ok::<_, Error>(result)
        }
        .await;
        let response_type = match outcome {
            Ok(result) => ResponseType::Success(result),
            Err(e) => ResponseType::Error(e.to_enterprise_error()),
        };
        Audited::read(TestPolicyResponse { response_type: Some(response_type) })
    }

    /// ValidatePolicy: syntax and type errors with positions, under the lifecycle's schema.
    pub fn validate_policy(
        &self,
        _caller: &Caller,
        request: ValidatePolicyRequest,
    ) -> Audited<ValidatePolicyResponse> {
        use validate_policy_response::ResponseType;
        let response_type = match request.policy {
            None => {
                ResponseType::Error(Error::invalid_argument("`policy` is required").to_enterprise_error())
            }
            Some(policy) => match self.lifecycle.validation_errors(&policy) {
                Ok(errors) => ResponseType::Success(ValidatePolicyResult {
                    valid: errors.is_empty(),
                    errors: errors.iter().map(PolicyValidationError::from).collect(),
                }),
                Err(e) => ResponseType::Error(e.to_enterprise_error()),
            },
        };
        Audited::read(ValidatePolicyResponse { response_type: Some(response_type) })
    }

    /// The schema policies are checked against.
    pub fn schema(&self) -> &Schema {
        self.lifecycle.schema()
    }
}
