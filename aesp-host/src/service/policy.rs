//! The EnterprisePolicyService: the policy lifecycle's service behind the catalogue, with
//! every change's audit events appended before the response is returned.

use aesp_audit::{AuditFilter, AuditQuery, MAX_PAGE_SIZE};
use aesp_core::proto::v1::{
    CreatePolicyRequest, CreatePolicyResponse, DeletePolicyRequest, DeletePolicyResponse,
    EvaluatePolicyRequest, EvaluatePolicyResponse, GetPolicyRequest, GetPolicyResponse, ListPoliciesRequest,
    ListPoliciesResponse, TestPolicyRequest, TestPolicyResponse, UpdatePolicyRequest, UpdatePolicyResponse,
    ValidatePolicyRequest, ValidatePolicyResponse,
};
use aesp_core::proto::v1::{DecisionInput, PolicyReplayWindow};
use aesp_policy::{Audited, PolicyService};

/// The most recorded decisions one TestPolicy replays, and the default.
const MAX_REPLAY: usize = 10_000;
const DEFAULT_REPLAY: usize = 1000;

use super::{ErrorResponse, Services, catalogue::Rpc};
use crate::Caller;

impl Services {
    fn policy_service(&self) -> PolicyService {
        PolicyService::new(std::sync::Arc::clone(self.host.policy_lifecycle()))
    }

    /// Authorizes `rpc`, runs `f` on the lifecycle's service acting in the resolved tenant,
    /// and appends the change's audit events; if the audit log cannot record them, the caller
    /// gets that error instead of the response.
    async fn with_policy_service<T: ErrorResponse>(
        &self,
        caller: &Caller,
        rpc: Rpc,
        requested: &str,
        f: impl AsyncFnOnce(PolicyService, aesp_policy::Caller) -> Audited<T>,
    ) -> T {
        let acting = match self.acting(caller, rpc, requested).await {
            Ok(acting) => acting,
            Err(e) => return T::error(e),
        };
        let audited = f(self.policy_service(), acting).await;
        for event in &audited.events {
            if let Err(e) = self.host.record(event).await {
                return T::error(e);
            }
        }
        audited.response
    }
}

impl Services {
    /// CreatePolicy: a draft version (it applies once approved and promoted).
    pub async fn create_policy(&self, caller: &Caller, request: CreatePolicyRequest) -> CreatePolicyResponse {
        let tenant = request.tenant_id.clone();
        self.with_policy_service(caller, Rpc::CreatePolicy, &tenant, async move |service, acting| {
            service.create_policy(&acting, request).await
        })
        .await
    }

    /// UpdatePolicy: a new draft version of a policy.
    pub async fn update_policy(&self, caller: &Caller, request: UpdatePolicyRequest) -> UpdatePolicyResponse {
        let tenant = request.tenant_id.clone();
        self.with_policy_service(caller, Rpc::UpdatePolicy, &tenant, async move |service, acting| {
            service.update_policy(&acting, request).await
        })
        .await
    }

    /// DeletePolicy.
    pub async fn delete_policy(&self, caller: &Caller, request: DeletePolicyRequest) -> DeletePolicyResponse {
        let tenant = request.tenant_id.clone();
        self.with_policy_service(caller, Rpc::DeletePolicy, &tenant, async move |service, acting| {
            service.delete_policy(&acting, request).await
        })
        .await
    }

    /// GetPolicy: a policy of the tenant, with its versions.
    pub async fn get_policy(&self, caller: &Caller, request: GetPolicyRequest) -> GetPolicyResponse {
        let tenant = request.tenant_id.clone();
        self.with_policy_service(caller, Rpc::GetPolicy, &tenant, async move |service, acting| {
            service.get_policy(&acting, request).await
        })
        .await
    }

    /// ListPolicies: the tenant's policies, a page at a time.
    pub async fn list_policies(&self, caller: &Caller, request: ListPoliciesRequest) -> ListPoliciesResponse {
        let tenant = request.tenant_id.clone();
        self.with_policy_service(caller, Rpc::ListPolicies, &tenant, async move |service, acting| {
            service.list_policies(&acting, request).await
        })
        .await
    }

    /// EvaluatePolicy: one policy against a request, without acting on it.
    pub async fn evaluate_policy(
        &self,
        caller: &Caller,
        request: EvaluatePolicyRequest,
    ) -> EvaluatePolicyResponse {
        self.evaluate(caller, Rpc::EvaluatePolicy, request).await
    }

    /// The authorization service's EvaluatePolicy: the same as the policy service's.
    pub async fn authz_evaluate_policy(
        &self,
        caller: &Caller,
        request: EvaluatePolicyRequest,
    ) -> EvaluatePolicyResponse {
        self.evaluate(caller, Rpc::AuthzEvaluatePolicy, request).await
    }

    async fn evaluate(
        &self,
        caller: &Caller,
        rpc: Rpc,
        request: EvaluatePolicyRequest,
    ) -> EvaluatePolicyResponse {
        let tenant = request.tenant_id.clone();
        self.with_policy_service(caller, rpc, &tenant, async move |service, acting| {
            service.evaluate_policy(&acting, request).await
        })
        .await
    }

    /// TestPolicy: a candidate policy against synthetic cases and against the tenant's
    /// recorded decisions in the replay window (read from the audit log's index), before and
    /// after.
    pub async fn test_policy(&self, caller: &Caller, request: TestPolicyRequest) -> TestPolicyResponse {
        let tenant = request.tenant_id.clone();
        self.with_policy_service(caller, Rpc::TestPolicy, &tenant, async move |service, acting| {
            match self.recorded_decisions(&acting.tenant_id, request.replay.as_ref()).await {
                Ok(recorded) => service.test_policy(&acting, request, &recorded).await,
                Err(e) => Audited { response: TestPolicyResponse::error(e), events: Vec::new() },
            }
        })
        .await
    }

    /// The recorded decision inputs of `tenant` in `window`, as `(event id, input)`.
    async fn recorded_decisions(
        &self,
        tenant: &str,
        window: Option<&PolicyReplayWindow>,
    ) -> aesp_core::Result<Vec<(String, DecisionInput)>> {
        let Some(window) = window else { return Ok(Vec::new()) };
        let limit = match window.limit {
            0 => DEFAULT_REPLAY,
            n => (n as usize).min(MAX_REPLAY),
        };
        let filter = AuditFilter {
            tenant: Some(tenant.to_owned()),
            start_ms: window.start_time,
            end_ms: (window.end_time != 0).then_some(window.end_time),
            event_types: vec!["TOOL_INVOCATION_START".into(), "AUTHORIZATION_DENIED".into()],
            ..AuditFilter::default()
        };
        let mut out = Vec::new();
        let mut cursor = None;
        while out.len() < limit {
            let query = AuditQuery { filter: filter.clone(), limit: MAX_PAGE_SIZE, cursor };
            let page = self.host.audit_log().query(&query).await?;
            for e in page.events {
                if let Some(input) = aesp_policy::input_from_audit_event(&e.event)? {
                    out.push((e.event.event_id, input));
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// ValidatePolicy: syntax and type errors with positions.
    pub async fn validate_policy(
        &self,
        caller: &Caller,
        request: ValidatePolicyRequest,
    ) -> ValidatePolicyResponse {
        let tenant = request.tenant_id.clone();
        self.with_policy_service(caller, Rpc::ValidatePolicy, &tenant, async move |service, acting| {
            service.validate_policy(&acting, request)
        })
        .await
    }

    /// The caller as the policy service sees it, acting in the tenant `requested` resolves to.
    async fn acting(
        &self,
        caller: &Caller,
        rpc: Rpc,
        requested: &str,
    ) -> aesp_core::Result<aesp_policy::Caller> {
        let tenant = self.host.authorize_rpc(caller, rpc, requested).await?;
        Ok(aesp_policy::Caller {
            principal_id: caller.principal_id().to_owned(),
            tenant_id: tenant,
            platform_admin: false,
        })
    }
}
