//! The invocation pipeline (ARCHITECTURE.md, "One invocation, end to end"): admission →
//! idempotency → tenant → session → contract → parameters → authorization → quota → route →
//! audit START (durable) → runtime → result against `return_type` → audit COMPLETE (durable)
//! → caller. Every refusal says why in an error whose code a program can act on, and is
//! written to the audit log.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aesp_core::{
    ChunkStream, Error, ErrorCode, Result, new_id,
    proto::v1::{
        AuditEvent, DecisionInput, EnterpriseError, Tenant, ToolCall, ToolResult, ToolResultStatus, Value,
    },
};
use aesp_policy::{Decision, Principal, Request, Resource, Session, Snapshot};
use base64::Engine as _;
use futures_util::StreamExt as _;
use prost::Message as _;

use crate::{
    caller::Caller,
    contracts::CompiledContract,
    host::Host,
    idempotency::{Claim, Idempotency, Outcome, call_digest},
    limits::{Admitted, TenantSlot},
    records::{check_name, shorten},
    runtimes::RuntimePermit,
    sessions::{ActiveInvocation, SessionEntry},
};

/// The action every tool invocation is authorized as.
pub const INVOKE_ACTION: &str = "invoke";

/// Everything an admitted call holds until it completes.
struct InFlight {
    _admitted: Admitted,
    _active: ActiveInvocation,
    _slot: TenantSlot,
    permit: RuntimePermit,
}

/// A call that passed every check, ready to run.
struct Ready {
    call: ToolCall,
    contract: Arc<CompiledContract>,
    start: AuditEvent,
    deadline: Duration,
    held: InFlight,
}

fn outcome_of(result: &Result<ToolResult>) -> &'static str {
    match result {
        Ok(r) if r.status() == ToolResultStatus::Success => "SUCCESS",
        Ok(_) => "FAILURE",
        Err(_) => "ERROR",
    }
}

impl Host {
    /// Invokes a tool for `caller`; see the module documentation for the steps.
    ///
    /// A repeat of a call (same tenant, principal and `invocation_id`) within the idempotency
    /// window returns the first call's outcome without running the tool again; a repeat while
    /// the first is running waits for it; the same id with other parameters is `CONFLICT`.
    /// Refusals before the tool ran are not remembered, so a retry runs afresh.
    pub async fn invoke(&self, caller: &Caller, mut call: ToolCall) -> Result<ToolResult> {
        let admitted = self.inner.admission.admit()?;
        self.prepare_ids(&mut call)?;
        let claim = self.inner.idempotency.begin(
            caller.tenant_id(),
            caller.principal_id(),
            &call.invocation_id,
            call_digest(&call),
        )?;
        let completer = match claim {
            Claim::Done(outcome) => return replay(&outcome),
            Claim::Running(done) => {
                return match Idempotency::wait(done).await {
                    Some(outcome) => replay(&outcome),
                    None => Err(Error::new(
                        ErrorCode::Cancelled,
                        "the first attempt of this invocation was cancelled",
                    )
                    .with_remediation("retry")),
                };
            }
            Claim::First(completer) => completer,
        };
        // Refused before the tool ran: returning drops the completer, which forgets the id so
        // that a retry runs.
        let ready = self.admit_call(caller, call, admitted).await?;
        let result = self.run(ready).await;
        let recorded: Outcome = match &result {
            Ok(r) => Ok(r.clone()),
            Err(e) => Err(Box::new(e.to_enterprise_error())),
        };
        completer.finish(recorded);
        result
    }

    /// Invokes a streaming tool: the chunks arrive in order; the completion is audited
    /// (durably) before the final chunk or error reaches the caller.
    pub async fn invoke_stream(&self, caller: &Caller, mut call: ToolCall) -> Result<ChunkStream> {
        let admitted = self.inner.admission.admit()?;
        self.prepare_ids(&mut call)?;
        let ready = self.admit_call(caller, call, admitted).await?;
        if !ready.contract.contract().supports_streaming {
            return Err(Error::invalid_argument(format!(
                "contract `{}` does not stream; use invoke",
                ready.contract.contract().name
            )));
        }
        self.record(&ready.start).await?;
        let transport = Arc::clone(ready.held.permit.runtime().transport());
        let started = self.clock().now_ms();
        let stream = match transport.invoke_stream(ready.call.clone(), ready.deadline).await {
            Ok(stream) => stream,
            Err(e) => {
                let failed: Result<ToolResult> = Err(Error::new(e.code(), e.message().to_owned()));
                self.complete(&ready, &failed, started, 0).await?;
                return Err(e);
            }
        };
        let host = self.clone();
        let state = (host, ready, stream, started, 0u64, false);
        let out = futures_util::stream::unfold(
            state,
            |(host, ready, mut stream, started, chunks, done)| async move {
                if done {
                    return None;
                }
                let item = stream.next().await;
                let (item, finished) = match item {
                    Some(Ok(chunk)) if !chunk.is_final => (Ok(chunk), false),
                    Some(Ok(chunk)) => {
                        let ok: Result<ToolResult> = Ok(ToolResult {
                            invocation_id: chunk.invocation_id.clone(),
                            status: ToolResultStatus::Success as i32,
                            ..ToolResult::default()
                        });
                        match host.complete(&ready, &ok, started, chunks + 1).await {
                            Ok(()) => (Ok(chunk), true),
                            Err(e) => (Err(e), true),
                        }
                    }
                    Some(Err(e)) => {
                        let failed: Result<ToolResult> = Err(Error::new(e.code(), e.message().to_owned()));
                        match host.complete(&ready, &failed, started, chunks).await {
                            Ok(()) => (Err(e), true),
                            Err(audit) => (Err(audit), true),
                        }
                    }
                    None => {
                        let e = Error::new(
                            ErrorCode::ResourceUnavailable,
                            "the stream ended without a final chunk",
                        );
                        let failed: Result<ToolResult> = Err(Error::new(e.code(), e.message().to_owned()));
                        match host.complete(&ready, &failed, started, chunks).await {
                            Ok(()) => (Err(e), true),
                            Err(audit) => (Err(audit), true),
                        }
                    }
                };
                Some((item, (host, ready, stream, started, chunks + 1, finished)))
            },
        );
        Ok(Box::pin(out) as ChunkStream)
    }

    fn prepare_ids(&self, call: &mut ToolCall) -> Result<()> {
        if call.invocation_id.is_empty() {
            call.invocation_id = new_id(self.clock().as_ref());
        }
        check_name("invocation id", &call.invocation_id)?;
        if call.correlation_id.is_empty() {
            call.correlation_id.clone_from(&call.invocation_id);
        }
        Ok(())
    }

    /// Runs every check; on refusal, audits it and returns the error.
    async fn admit_call(&self, caller: &Caller, call: ToolCall, admitted: Admitted) -> Result<Ready> {
        let resource = format!("tool:{}", call.tool_name);
        let (session_id, invocation_id, correlation_id) =
            (call.session_id.clone(), call.invocation_id.clone(), call.correlation_id.clone());
        match self.checks(caller, call, admitted).await {
            Ok(ready) => Ok(ready),
            Err((error, decision)) => {
                let mut refusal =
                    self.event("AUTHORIZATION_DENIED", Some(caller), &resource, INVOKE_ACTION, "DENIED");
                refusal.session_id = session_id;
                refusal.metadata.insert("invocation_id".into(), invocation_id);
                refusal.metadata.insert("correlation_id".into(), correlation_id.clone());
                refusal.metadata.insert("reason".into(), error.message().to_owned());
                refusal.policy_violations.push(error.code_str().to_owned());
                if let Some((decision, input, snapshot)) = decision {
                    describe_decision(&mut refusal, &decision, &input, &snapshot);
                }
                self.record(&refusal).await?;
                Err(error.with_correlation_id(correlation_id))
            }
        }
    }

    async fn checks(
        &self,
        caller: &Caller,
        mut call: ToolCall,
        admitted: Admitted,
    ) -> std::result::Result<Ready, (Error, Option<(Decision, DecisionInput, Snapshot)>)> {
        let inner = &self.inner;
        let tenant = inner.tenants.active(caller.tenant_id()).map_err(|e| (e, None))?;
        let (session, active) =
            inner.sessions.begin_invocation(caller, &call.session_id).map_err(|e| (e, None))?;
        let contract = self.resolve_contract(caller, &call).map_err(|e| (e, None))?;
        let params = contract
            .parameters()
            .validate(&call.parameters)
            .map_err(|v| (Error::from(v).with_tenant(caller.tenant_id()), None))?;

        // The Host assigns the request id that chooses canaries (never the caller), and uses it
        // as the id of the START event.
        let request_id = new_id(self.clock().as_ref());
        let request =
            policy_request(caller, &tenant, &contract, &session, &params, self.clock().now_ms(), &call);
        let outcome = inner.lifecycle.decide(&request, &request_id);
        let (decision, snapshot) = (outcome.decision, outcome.snapshot);
        let input = aesp_policy::to_input(request, &snapshot);
        if !decision.allowed() {
            let error = decision
                .to_error()
                .unwrap_or_else(|| Error::new(ErrorCode::AuthorizationDenied, decision.reason()));
            return Err((error, Some((decision, input, snapshot))));
        }

        let slot = inner.limits.acquire(caller.tenant_id(), tenant.quotas.as_ref()).map_err(|e| (e, None))?;
        let version = contract.version().clone();
        let permit =
            inner.runtimes.route(caller.tenant_id(), &call.tool_name, &version).map_err(|e| (e, None))?;

        let requested = Duration::from_millis(call.timeout_ms);
        let deadline = if requested.is_zero() { inner.options.default_call_timeout } else { requested }
            .min(inner.options.max_call_timeout);
        call.parameters = params;
        call.contract_version = version.to_string();

        let resource = format!("tool:{}", call.tool_name);
        let mut start =
            self.event("TOOL_INVOCATION_START", Some(caller), &resource, INVOKE_ACTION, "SUCCESS");
        start.event_id = request_id;
        if let Some(canary) = &outcome.canary {
            start.metadata.insert("canary".into(), format!("{canary:?}"));
        }
        start.session_id.clone_from(&call.session_id);
        start.metadata.insert("invocation_id".into(), call.invocation_id.clone());
        start.metadata.insert("correlation_id".into(), call.correlation_id.clone());
        start.metadata.insert("contract_version".into(), version.to_string());
        start.metadata.insert("runtime_id".into(), permit.runtime().id().to_owned());
        describe_decision(&mut start, &decision, &input, &snapshot);
        Ok(Ready {
            call,
            contract,
            start,
            deadline,
            held: InFlight { _admitted: admitted, _active: active, _slot: slot, permit },
        })
    }

    fn resolve_contract(&self, caller: &Caller, call: &ToolCall) -> Result<Arc<CompiledContract>> {
        let requirement = if call.contract_version.is_empty() {
            None
        } else {
            Some(semver::VersionReq::parse(&call.contract_version).map_err(|e| {
                Error::invalid_argument(format!(
                    "`{}` is not a semver requirement: {e}",
                    shorten(&call.contract_version)
                ))
            })?)
        };
        let contracts = &self.inner.contracts;
        contracts.resolve(caller.tenant_id(), &call.tool_name, requirement.as_ref()).ok_or_else(|| {
            if contracts.exists(caller.tenant_id(), &call.tool_name) {
                Error::new(
                    ErrorCode::ContractNotApproved,
                    format!("no approved version of `{}` matches the call", shorten(&call.tool_name)),
                )
            } else {
                Error::not_found(format!(
                    "tenant `{}` has no tool `{}`",
                    caller.tenant_id(),
                    shorten(&call.tool_name)
                ))
            }
        })
    }

    /// Audits START (durably), runs the tool, checks the result, audits COMPLETE (durably).
    async fn run(&self, mut ready: Ready) -> Result<ToolResult> {
        self.record(&ready.start).await?;
        let started = self.clock().now_ms();
        let transport = Arc::clone(ready.held.permit.runtime().transport());
        let correlation_id = ready.call.correlation_id.clone();
        let call = std::mem::take(&mut ready.call);
        let mut result = transport.invoke(call, ready.deadline).await;
        if let Ok(r) = &mut result {
            if r.correlation_id.is_empty() {
                r.correlation_id.clone_from(&correlation_id);
            }
            if r.status() == ToolResultStatus::Success
                && let Some(returns) = ready.contract.returns()
            {
                let payload = r.payload.clone().unwrap_or_default();
                if let Err(violations) = returns.validate(&payload) {
                    result = Err(Error::new(
                        ErrorCode::InternalError,
                        format!(
                            "runtime `{}` returned a result that breaks the contract's return type: {violations}",
                            ready.held.permit.runtime().id()
                        ),
                    )
                    .with_detail("rule", "return_type"));
                }
            }
        }
        self.complete(&ready, &result, started, 0).await?;
        result.map_err(|e| e.with_correlation_id(correlation_id))
    }

    async fn complete(
        &self,
        ready: &Ready,
        result: &Result<ToolResult>,
        started: u64,
        chunks: u64,
    ) -> Result<()> {
        let start = &ready.start;
        let now = self.clock().now_ms();
        let mut metadata = BTreeMap::new();
        for key in ["invocation_id", "correlation_id", "contract_version", "runtime_id", "snapshot_digest"] {
            if let Some(value) = start.metadata.get(key) {
                metadata.insert(key.to_owned(), value.clone());
            }
        }
        metadata.insert("execution_time_ms".into(), now.saturating_sub(started).to_string());
        if chunks > 0 {
            metadata.insert("chunks".into(), chunks.to_string());
        }
        let mut policy_violations = Vec::new();
        if let Err(e) = result {
            metadata.insert("error".into(), e.message().to_owned());
            policy_violations.push(e.code_str().to_owned());
        }
        let event = AuditEvent {
            event_id: new_id(self.clock().as_ref()),
            timestamp_ms: now,
            event_type: "TOOL_INVOCATION_COMPLETE".to_owned(),
            principal_id: start.principal_id.clone(),
            tenant_id: start.tenant_id.clone(),
            session_id: start.session_id.clone(),
            resource: start.resource.clone(),
            action: start.action.clone(),
            outcome: outcome_of(result).to_owned(),
            source_ip: start.source_ip.clone(),
            user_agent: start.user_agent.clone(),
            metadata,
            risk_score: start.risk_score.clone(),
            policy_violations,
        };
        self.record(&event).await.map(drop)
    }
}

fn replay(outcome: &Outcome) -> Result<ToolResult> {
    match outcome {
        Ok(result) => Ok(result.clone()),
        Err(e) => Err(Error::from(EnterpriseError::clone(e))),
    }
}

fn strings_to_values(map: &BTreeMap<String, String>) -> BTreeMap<String, Value> {
    map.iter().map(|(k, v)| (k.clone(), Value::string(v.clone()))).collect()
}

fn policy_request(
    caller: &Caller,
    tenant: &Tenant,
    contract: &CompiledContract,
    session: &SessionEntry,
    params: &BTreeMap<String, Value>,
    now_ms: u64,
    call: &ToolCall,
) -> Request {
    let mut principal = Principal::from_security_context(caller.context());
    principal.attributes = caller.attributes().clone();
    Request {
        tenant_id: caller.tenant_id().to_owned(),
        principal,
        resource: Resource::from_contract(caller.tenant_id(), contract.contract()),
        action: INVOKE_ACTION.to_owned(),
        session: Session { id: session.id().to_owned(), metadata: session.session().metadata.clone() },
        time_ms: now_ms,
        source_ip: caller.source_ip().to_owned(),
        params: params.clone(),
        estimated_cost: 0.0,
        tenant_attributes: strings_to_values(&tenant.attributes),
        break_glass: call.metadata.get("break_glass_justification").cloned(),
    }
}

fn describe_decision(
    event: &mut AuditEvent,
    decision: &Decision,
    input: &DecisionInput,
    snapshot: &Snapshot,
) {
    event.metadata.insert("snapshot_digest".into(), input.snapshot_digest.clone());
    event.metadata.insert("snapshot_version".into(), snapshot.version().to_string());
    event.metadata.insert("decision".into(), if decision.allowed() { "ALLOW" } else { "DENY" }.into());
    event.metadata.insert("decision_reason".into(), decision.reason().to_owned());
    let matched: Vec<String> = decision
        .matched()
        .iter()
        .map(|m| format!("{}@{}:{:?}", m.policy_id(), m.version(), m.effect()))
        .collect();
    event.metadata.insert("matched_policies".into(), matched.join(","));
    event.metadata.insert(
        "decision_input".into(),
        base64::engine::general_purpose::STANDARD.encode(input.encode_to_vec()),
    );
    if decision.break_glass() {
        event.metadata.insert("break_glass".into(), "true".into());
    }
    event.risk_score = format!("{:.3}", decision.risk_score());
}
