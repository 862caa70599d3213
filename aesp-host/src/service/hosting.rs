//! The tenant administration service and the Host services: sessions, contracts, runtimes
//! and invocation.

use std::{sync::Arc, time::Duration};

use aesp_core::{
    Error, Result, RuntimeTransport,
    proto::v1::{
        AnnounceRuntimeRequest, AnnounceRuntimeResponse, AnnounceRuntimeResult, CreateSessionRequest,
        CreateSessionResponse, CreateSessionResult, CreateTenantRequest, CreateTenantResponse,
        DestroySessionRequest, DestroySessionResponse, Done, FulfillToolsRequest, FulfillToolsResponse,
        FulfillToolsResult, FulfillmentOutcome, GetContractRequest, GetContractResponse, GetContractResult,
        GetSessionRequest, GetSessionResponse, GetSessionResult, GetTenantRequest, GetTenantResponse,
        HeartbeatRequest, HeartbeatResponse, HeartbeatResult, InvokeToolRequest, InvokeToolResponse,
        ListSessionsRequest, ListSessionsResponse, ListSessionsResult, ListTenantsRequest,
        ListTenantsResponse, ListTenantsResult, ListToolsRequest, ListToolsResponse, ListToolsResult,
        LoadContractsRequest, LoadContractsResponse, LoadContractsResult, LoadedContract,
        ResumeTenantRequest, ResumeTenantResponse, SetTenantAttributesRequest, SetTenantAttributesResponse,
        SetTenantQuotasRequest, SetTenantQuotasResponse, SetTenantRetentionRequest,
        SetTenantRetentionResponse, StreamToolRequest, SuspendTenantRequest, SuspendTenantResponse, Tenant,
        UnregisterRuntimeRequest, UnregisterRuntimeResponse, announce_runtime_response,
        create_session_response, create_tenant_response, destroy_session_response, fulfill_tools_response,
        get_contract_response, get_session_response, get_tenant_response, heartbeat_response,
        invoke_tool_response, list_sessions_response, list_tenants_response, list_tools_response,
        load_contracts_response, resume_tenant_response, set_tenant_attributes_response,
        set_tenant_quotas_response, set_tenant_retention_response, suspend_tenant_response,
        unregister_runtime_response,
    },
};

use super::{Services, catalogue::Rpc, respond};
use crate::{Caller, Host, LoadOutcome, NewSession};

/// The most items one list page returns, and the default page size.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
/// The heartbeat interval the Host asks runtimes for.
const HEARTBEAT_INTERVAL_MS: u64 = 10_000;

/// One page of `items` after `cursor` (the last key of the previous page), by `key`.
fn page<T>(mut items: Vec<T>, key: impl Fn(&T) -> String, limit: u32, cursor: &str) -> (Vec<T>, String) {
    items.sort_by_key(|i| key(i));
    let limit = match limit {
        0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    };
    let start = if cursor.is_empty() { 0 } else { items.partition_point(|i| key(i).as_str() <= cursor) };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let next =
        if rest.len() > limit { rest.get(limit - 1).map(&key).unwrap_or_default() } else { String::new() };
    rest.truncate(limit);
    (rest, next)
}

impl Host {
    /// Sets how many days a tenant's audit events are kept (0: forever): a platform
    /// administrator for any tenant, a tenant administrator for its own.
    pub async fn set_tenant_retention(&self, caller: &Caller, tenant_id: &str, days: u32) -> Result<Tenant> {
        let resource = format!("tenant:{tenant_id}");
        self.require_in(caller, tenant_id, Rpc::SetTenantRetention.permission(), &resource).await?;
        let updated = self
            .inner
            .tenants
            .update(tenant_id, |t| {
                t.audit_retention_days = days;
                Ok(())
            })
            .await?;
        let mut event = self.event("TENANT_UPDATE", Some(caller), &resource, "set_retention", "SUCCESS");
        event.metadata.insert("audit_retention_days".into(), days.to_string());
        self.record(&event).await?;
        Ok(Tenant::clone(&updated))
    }
}

impl Services {
    /// CreateTenant (platform administrators).
    pub async fn create_tenant(&self, caller: &Caller, request: CreateTenantRequest) -> CreateTenantResponse {
        let result: Result<_> = async {
            let tenant = request.tenant.ok_or_else(|| Error::invalid_argument("`tenant` is required"))?;
            self.host.authorize_rpc(caller, Rpc::CreateTenant, "").await?;
            self.host.create_tenant(caller, tenant).await
        }
        .await;
        respond!(CreateTenantResponse, create_tenant_response, result)
    }

    /// GetTenant: a tenant administrator reads its own, a platform administrator any.
    pub async fn get_tenant(&self, caller: &Caller, request: GetTenantRequest) -> GetTenantResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::GetTenant, &request.tenant_id).await?;
            self.host.get_tenant(caller, &tenant).await
        }
        .await;
        respond!(GetTenantResponse, get_tenant_response, result)
    }

    /// ListTenants (platform administrators), by id.
    pub async fn list_tenants(&self, caller: &Caller, request: ListTenantsRequest) -> ListTenantsResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::ListTenants, "").await?;
            let all: Vec<Tenant> = self.host.inner.tenants.list().iter().map(|t| Tenant::clone(t)).collect();
            let (tenants, next_cursor) = page(all, |t| t.tenant_id.clone(), request.limit, &request.cursor);
            Ok(ListTenantsResult { tenants, next_cursor })
        }
        .await;
        respond!(ListTenantsResponse, list_tenants_response, result)
    }

    /// SuspendTenant (platform administrators).
    pub async fn suspend_tenant(
        &self,
        caller: &Caller,
        request: SuspendTenantRequest,
    ) -> SuspendTenantResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::SuspendTenant, &request.tenant_id).await?;
            self.host.suspend_tenant(caller, &request.tenant_id, &request.reason).await
        }
        .await;
        respond!(SuspendTenantResponse, suspend_tenant_response, result)
    }

    /// ResumeTenant (platform administrators).
    pub async fn resume_tenant(&self, caller: &Caller, request: ResumeTenantRequest) -> ResumeTenantResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::ResumeTenant, &request.tenant_id).await?;
            self.host.resume_tenant(caller, &request.tenant_id).await
        }
        .await;
        respond!(ResumeTenantResponse, resume_tenant_response, result)
    }

    /// SetTenantQuotas (platform administrators).
    pub async fn set_tenant_quotas(
        &self,
        caller: &Caller,
        request: SetTenantQuotasRequest,
    ) -> SetTenantQuotasResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::SetTenantQuotas, &request.tenant_id).await?;
            let quotas = request.quotas.unwrap_or_default();
            self.host.set_tenant_quotas(caller, &request.tenant_id, quotas).await
        }
        .await;
        respond!(SetTenantQuotasResponse, set_tenant_quotas_response, result)
    }

    /// SetTenantAttributes: the tenant's administrator, or a platform administrator.
    pub async fn set_tenant_attributes(
        &self,
        caller: &Caller,
        request: SetTenantAttributesRequest,
    ) -> SetTenantAttributesResponse {
        let result: Result<_> = async {
            let tenant =
                self.host.authorize_rpc(caller, Rpc::SetTenantAttributes, &request.tenant_id).await?;
            self.host.set_tenant_attributes(caller, &tenant, request.attributes).await
        }
        .await;
        respond!(SetTenantAttributesResponse, set_tenant_attributes_response, result)
    }

    /// SetTenantRetention: the tenant's administrator, or a platform administrator.
    pub async fn set_tenant_retention(
        &self,
        caller: &Caller,
        request: SetTenantRetentionRequest,
    ) -> SetTenantRetentionResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::SetTenantRetention, &request.tenant_id).await?;
            self.host.set_tenant_retention(caller, &tenant, request.audit_retention_days).await
        }
        .await;
        respond!(SetTenantRetentionResponse, set_tenant_retention_response, result)
    }

    /// CreateSession: a session of the caller in the caller's tenant. The request's
    /// `security_context` is ignored: the session belongs to the authenticated caller.
    pub async fn create_session(
        &self,
        caller: &Caller,
        request: CreateSessionRequest,
    ) -> CreateSessionResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::CreateSession, "").await?;
            let session = NewSession {
                session_id: request.session_id,
                metadata: request.metadata,
                ttl: Duration::from_secs(request.ttl_seconds),
            };
            let entry = self.host.create_session(caller, session).await?;
            Ok(CreateSessionResult { session: Some(entry.to_proto()) })
        }
        .await;
        respond!(CreateSessionResponse, create_session_response, result)
    }

    /// GetSession: a session of the caller's tenant.
    pub async fn get_session(&self, caller: &Caller, request: GetSessionRequest) -> GetSessionResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::GetSession, "").await?;
            let entry = self.host.get_session(caller, &request.session_id).await?;
            Ok(GetSessionResult { session: Some(entry.to_proto()) })
        }
        .await;
        respond!(GetSessionResponse, get_session_response, result)
    }

    /// DestroySession: ends a session of the caller's tenant (`force`: without waiting for
    /// its invocations).
    pub async fn destroy_session(
        &self,
        caller: &Caller,
        request: DestroySessionRequest,
    ) -> DestroySessionResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::DestroySession, "").await?;
            self.host.destroy_session(caller, &request.session_id, request.force).await?;
            Ok(Done {})
        }
        .await;
        respond!(DestroySessionResponse, destroy_session_response, result)
    }

    /// ListSessions: the sessions of the caller's tenant, by id (optionally of one principal).
    pub async fn list_sessions(&self, caller: &Caller, request: ListSessionsRequest) -> ListSessionsResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::ListSessions, &request.tenant_id).await?;
            let all: Vec<_> = self
                .host
                .list_sessions(caller)
                .into_iter()
                .map(|s| s.to_proto())
                .filter(|s| request.principal_id.is_empty() || s.principal_id == request.principal_id)
                .collect();
            let (sessions, next_cursor) = page(all, |s| s.session_id.clone(), request.limit, &request.cursor);
            Ok(ListSessionsResult { sessions, next_cursor })
        }
        .await;
        respond!(ListSessionsResponse, list_sessions_response, result)
    }

    /// LoadContracts: a manifest into the caller's tenant, all or nothing; new contracts and
    /// versions are `PENDING` until approved.
    pub async fn load_contracts(
        &self,
        caller: &Caller,
        request: LoadContractsRequest,
    ) -> LoadContractsResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::LoadContracts, &request.tenant_id).await?;
            if request.dry_run {
                return Err(Error::invalid_argument("dry_run is not supported yet; load without it"));
            }
            let loaded = self.host.load_contracts(caller, request.contracts).await?;
            let contracts = loaded
                .into_iter()
                .map(|(c, outcome)| LoadedContract {
                    created: outcome == LoadOutcome::Created,
                    approval_status: c.approval_status.clone(),
                    name: c.name,
                    contract_version: c.contract_version,
                })
                .collect();
            Ok(LoadContractsResult { contracts })
        }
        .await;
        respond!(LoadContractsResponse, load_contracts_response, result)
    }

    /// GetContract: a contract version of the caller's tenant.
    pub async fn get_contract(&self, caller: &Caller, request: GetContractRequest) -> GetContractResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::GetContract, &request.tenant_id).await?;
            let contract = self.host.get_contract(caller, &request.name, &request.contract_version)?;
            Ok(GetContractResult { contract: Some(contract) })
        }
        .await;
        respond!(GetContractResponse, get_contract_response, result)
    }

    /// ListTools: the newest approved version of each contract of the caller's tenant.
    pub async fn list_tools(&self, caller: &Caller, request: ListToolsRequest) -> ListToolsResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::ListTools, "").await?;
            if !request.session_id.is_empty() {
                self.host.get_session(caller, &request.session_id).await?;
            }
            let (tools, next_cursor) =
                page(self.host.list_tools(caller), |c| c.name.clone(), request.limit, &request.cursor);
            Ok(ListToolsResult { tools, next_cursor })
        }
        .await;
        respond!(ListToolsResponse, list_tools_response, result)
    }

    /// AnnounceRuntime: registers a runtime of the caller's tenant, reachable through
    /// `transport` (the connection it opened).
    pub async fn announce_runtime(
        &self,
        caller: &Caller,
        request: AnnounceRuntimeRequest,
        transport: Arc<dyn RuntimeTransport>,
    ) -> AnnounceRuntimeResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::AnnounceRuntime, "").await?;
            let announcement =
                request.announcement.ok_or_else(|| Error::invalid_argument("`announcement` is required"))?;
            let entry = self.host.connect_runtime(caller, announcement, transport).await?;
            Ok(AnnounceRuntimeResult {
                accepted: true,
                runtime_id: entry.id().to_owned(),
                heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            })
        }
        .await;
        respond!(AnnounceRuntimeResponse, announce_runtime_response, result)
    }

    /// FulfillTools: a runtime of the caller's tenant fulfils approved contracts by name and
    /// semver range; each refusal is audited.
    pub async fn fulfill_tools(&self, caller: &Caller, request: FulfillToolsRequest) -> FulfillToolsResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::FulfillTools, "").await?;
            let wanted: Vec<(String, String)> =
                request.fulfillments.into_iter().map(|f| (f.contract_name, f.version_range)).collect();
            let outcomes = self.host.fulfill(caller, &request.runtime_id, wanted.clone()).await?;
            let outcomes = wanted
                .into_iter()
                .zip(outcomes)
                .map(|((name, range), (_, outcome))| FulfillmentOutcome {
                    contract_name: name,
                    version_range: range,
                    accepted: outcome.is_ok(),
                    reason: outcome.err().map(|e| e.message().to_owned()).unwrap_or_default(),
                    ..FulfillmentOutcome::default()
                })
                .collect();
            Ok(FulfillToolsResult { outcomes })
        }
        .await;
        respond!(FulfillToolsResponse, fulfill_tools_response, result)
    }

    /// Heartbeat: a runtime of the caller's tenant is alive.
    pub async fn heartbeat(&self, caller: &Caller, request: HeartbeatRequest) -> HeartbeatResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::Heartbeat, "").await?;
            self.host.heartbeat(caller, &request.runtime_id)?;
            Ok(HeartbeatResult {
                received_at: self.host.clock().now_ms(),
                heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            })
        }
        .await;
        respond!(HeartbeatResponse, heartbeat_response, result)
    }

    /// UnregisterRuntime: a runtime of the caller's tenant leaves.
    pub async fn unregister_runtime(
        &self,
        caller: &Caller,
        request: UnregisterRuntimeRequest,
    ) -> UnregisterRuntimeResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::UnregisterRuntime, "").await?;
            self.host.unregister_runtime(caller, &request.runtime_id).await?;
            Ok(Done {})
        }
        .await;
        respond!(UnregisterRuntimeResponse, unregister_runtime_response, result)
    }

    /// InvokeTool: the invocation pipeline (session, contract, parameters, policies, quota,
    /// route, audit) for the caller.
    pub async fn invoke_tool(&self, caller: &Caller, request: InvokeToolRequest) -> InvokeToolResponse {
        let result: Result<_> = async {
            self.host.authorize_rpc(caller, Rpc::InvokeTool, "").await?;
            let call = request.call.ok_or_else(|| Error::invalid_argument("`call` is required"))?;
            self.host.invoke(caller, call).await
        }
        .await;
        respond!(InvokeToolResponse, invoke_tool_response, result)
    }

    /// StreamTool: the streaming form of InvokeTool; chunks arrive in order and completion is
    /// audited.
    pub async fn stream_tool(
        &self,
        caller: &Caller,
        request: StreamToolRequest,
    ) -> Result<aesp_core::ChunkStream> {
        self.host.authorize_rpc(caller, Rpc::StreamTool, "").await?;
        let call = request.call.ok_or_else(|| Error::invalid_argument("`call` is required"))?;
        self.host.invoke_stream(caller, call).await
    }
}
