//! The invocation pipeline (ARCHITECTURE.md, "One invocation, end to end"): admission →
//! idempotency → tenant → session → contract → parameters → authorization → quota → route →
//! audit START (durable) → runtime → result against `return_type` → audit COMPLETE (durable)
//! → caller. Every refusal says why in an error whose code a program can act on, and is
//! written to the audit log.
//!
//! The call path's audit events are encoded straight from borrowed parts
//! ([`EventView`](crate::events::EventView)) into the exact bytes of the `AuditEvent` they
//! describe, and its ids come from [`fast_id`](crate::ids::fast_id).

use std::{cell::RefCell, collections::BTreeMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use aesp_core::{
    ChunkStream, Error, ErrorCode, Result,
    proto::v1::{DecisionInput, EnterpriseError, Tenant, ToolCall, ToolResult, ToolResultStatus, Value},
};
use aesp_policy::{Decision, Request, Snapshot, VersionRef};
use futures_util::StreamExt as _;
use prost::{Message as _, bytes::Bytes};

use crate::{
    caller::Caller,
    contracts::CompiledContract,
    events::{AsDebug, EventView, Metadata, Risk, Text},
    host::Host,
    idempotency::{Claim, Idempotency, Outcome, call_digest},
    ids::{IdText, fast_id, fast_id_at},
    limits::{Admitted, TenantSlot},
    records::{check_name, shorten},
    runtimes::RuntimePermit,
    sessions::{ActiveInvocation, SessionEntry},
    tenants::Tenants,
};

/// The action every tool invocation is authorized as.
pub const INVOKE_ACTION: &str = "invoke";

/// The prefix of a tool's resource name (`tool:<name>`).
const TOOL_PREFIX: &str = "tool:";

thread_local! {
    /// The buffer a decision input is encoded into before its base64 goes into an event.
    static INPUT_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The last policy request built on this thread, whose buffers the next one reuses: a
    /// call overwrites every field in place, decides and encodes it there, and takes back
    /// only its parameters.
    static REQUEST: RefCell<Request> = RefCell::new(Request::default());
}

/// Everything an admitted call holds until it completes.
struct InFlight {
    _admitted: Admitted,
    active: ActiveInvocation,
    _slot: TenantSlot,
    permit: RuntimePermit,
}

/// A call that passed every check, ready to run.
struct Ready {
    call: ToolCall,
    contract: Arc<CompiledContract>,
    /// The encoded START event.
    start: Bytes,
    /// What COMPLETE repeats of START's decision: the snapshot's digest.
    snapshot_digest: [u8; 32],
    risk_score: f64,
    deadline: Duration,
    held: InFlight,
}

impl Ready {
    /// The call's correlation id: `call.correlation_id`, or the invocation id where that is
    /// empty (once the call has gone to the runtime, an empty one means the two are the same).
    fn correlation_id(&self) -> &str {
        if self.call.correlation_id.is_empty() { &self.call.invocation_id } else { &self.call.correlation_id }
    }

    /// Takes [`correlation_id`](Self::correlation_id) out, for the answer.
    fn take_correlation_id(&mut self) -> String {
        if self.call.correlation_id.is_empty() {
            std::mem::take(&mut self.call.invocation_id)
        } else {
            std::mem::take(&mut self.call.correlation_id)
        }
    }
}

/// What the checks established for a call they admit.
struct Checked {
    contract: Arc<CompiledContract>,
    request_id: IdText,
    canary: Option<VersionRef>,
    decision: Decision,
    snapshot: Snapshot,
    deadline: Duration,
    held: InFlight,
}

/// Why the checks refused a call: the error, and the decision when authorization refused.
type Refusal = (Error, Option<Box<(Decision, DecisionInput, Snapshot)>>);

/// A call's answer as the COMPLETE event reads it: borrowed, so that an error which goes on to
/// the caller needs no copy for the audit trail.
type Answer<'a> = std::result::Result<&'a ToolResult, &'a Error>;

fn outcome_of(result: Answer<'_>) -> &'static str {
    match result {
        Ok(r) if r.status() == ToolResultStatus::Success => "SUCCESS",
        Ok(_) => "FAILURE",
        Err(_) => "ERROR",
    }
}

/// A decision as audit-event metadata: snapshot, outcome, reason, matched policies, and the
/// canonical decision input (base64 of its encoding) for replay.
struct Described<'a> {
    decision: &'a Decision,
    snapshot_version: u64,
    digest: Text<'a>,
    input: &'a [u8],
}

impl<'a> Described<'a> {
    fn new(decision: &'a Decision, snapshot: &Snapshot, digest: Text<'a>, input: &'a [u8]) -> Self {
        Self { decision, snapshot_version: snapshot.version(), digest, input }
    }

    fn add_to(&'a self, metadata: &mut Metadata<'a>) {
        if self.decision.break_glass() {
            metadata.insert("break_glass", Text::Str("true"));
        }
        metadata.insert("decision", Text::Str(if self.decision.allowed() { "ALLOW" } else { "DENY" }));
        metadata.insert("decision_input", Text::Base64(self.input));
        metadata.insert("decision_reason", Text::Str(self.decision.reason()));
        metadata.insert("matched_policies", Text::Matches(self.decision.matched()));
        metadata.insert("snapshot_digest", self.digest);
        metadata.insert("snapshot_version", Text::Number(self.snapshot_version));
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
            // Boxed: the rare path's state stays out of every call's future.
            Claim::Running(done) => return Box::pin(wait_for_first(done)).await,
            Claim::First(completer) => completer,
        };
        // Refused before the tool ran (by a check, or because START could not be made
        // durable): returning drops the completer, which forgets the id so that a retry runs.
        // The steps are awaited here rather than in helpers: each nested future would be
        // built and then copied into this one, and this one into its caller's.
        let mut ready = match self.prepare(caller, call, admitted) {
            Ok(ready) => ready,
            Err(refused) => return Err(self.refused(caller, refused).await),
        };
        self.record_encoded(std::mem::take(&mut ready.start)).await?;
        let started = self.clock().now_ms();
        // The call goes to the runtime; what COMPLETE repeats of it (its ids) stays: the
        // correlation id only if it is not the invocation id (see `Ready::correlation_id`).
        let call = std::mem::take(&mut ready.call);
        ready.call.invocation_id.clone_from(&call.invocation_id);
        if call.correlation_id != call.invocation_id {
            ready.call.correlation_id.clone_from(&call.correlation_id);
        }
        let mut result = ready.held.permit.runtime().transport().invoke(call, ready.deadline).await;
        check_result(&ready, &mut result);
        // The tool ran: from here on the outcome is remembered, even an audit failure, so that
        // a retry cannot run it twice.
        let event = self.complete_event(caller, &ready, result.as_ref(), started, 0);
        let result = match self.record_encoded(event).await {
            // The ids are not needed any more: the answer takes the correlation id.
            Ok(_) => match result {
                Ok(mut r) => {
                    if r.correlation_id.is_empty() {
                        r.correlation_id = ready.take_correlation_id();
                    }
                    Ok(r)
                }
                Err(e) => Err(e.with_correlation_id(ready.take_correlation_id())),
            },
            Err(audit) => Err(audit),
        };
        let recorded: Outcome = match &result {
            Ok(r) => Ok(Bytes::from(r.encode_to_vec())),
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
        let mut ready = match self.prepare(caller, call, admitted) {
            Ok(ready) => ready,
            Err(refused) => return Err(self.refused(caller, refused).await),
        };
        if !ready.contract.contract().supports_streaming {
            return Err(Error::invalid_argument(format!(
                "contract `{}` does not stream; use invoke",
                ready.contract.contract().name
            )));
        }
        self.record_encoded(std::mem::take(&mut ready.start)).await?;
        let transport = Arc::clone(ready.held.permit.runtime().transport());
        let started = self.clock().now_ms();
        let stream = match transport.invoke_stream(ready.call.clone(), ready.deadline).await {
            Ok(stream) => stream,
            Err(e) => {
                self.complete(caller, &ready, Err(&e), started, 0).await?;
                return Err(e);
            }
        };
        let host = self.clone();
        let state = (host, caller.clone(), ready, stream, started, 0u64, false);
        let out = futures_util::stream::unfold(
            state,
            |(host, caller, ready, mut stream, started, chunks, done)| async move {
                if done {
                    return None;
                }
                let item = stream.next().await;
                let (item, finished) = match item {
                    Some(Ok(chunk)) if !chunk.is_final => (Ok(chunk), false),
                    Some(Ok(chunk)) => {
                        let ok = ToolResult {
                            invocation_id: chunk.invocation_id.clone(),
                            status: ToolResultStatus::Success as i32,
                            ..ToolResult::default()
                        };
                        match host.complete(&caller, &ready, Ok(&ok), started, chunks + 1).await {
                            Ok(()) => (Ok(chunk), true),
                            Err(e) => (Err(e), true),
                        }
                    }
                    Some(Err(e)) => match host.complete(&caller, &ready, Err(&e), started, chunks).await {
                        Ok(()) => (Err(e), true),
                        Err(audit) => (Err(audit), true),
                    },
                    None => {
                        let e = Error::new(
                            ErrorCode::ResourceUnavailable,
                            "the stream ended without a final chunk",
                        );
                        match host.complete(&caller, &ready, Err(&e), started, chunks).await {
                            Ok(()) => (Err(e), true),
                            Err(audit) => (Err(audit), true),
                        }
                    }
                };
                Some((item, (host, caller, ready, stream, started, chunks + 1, finished)))
            },
        );
        Ok(Box::pin(out) as ChunkStream)
    }

    fn prepare_ids(&self, call: &mut ToolCall) -> Result<()> {
        if call.invocation_id.is_empty() {
            call.invocation_id = fast_id(self.clock().as_ref()).as_str().to_owned();
        }
        check_name("invocation id", &call.invocation_id)?;
        if call.correlation_id.is_empty() {
            call.correlation_id.clone_from(&call.invocation_id);
        }
        Ok(())
    }

    /// Audits the refusal [`prepare`](Self::prepare) gave back and returns its error, boxed: the
    /// rare path's state stays out of every call's future, which holds one pointer for it.
    fn refused<'a>(
        &'a self,
        caller: &'a Caller,
        refused: Box<(ToolCall, Refusal)>,
    ) -> Pin<Box<dyn Future<Output = Error> + Send + 'a>> {
        let (call, (error, decision)) = *refused;
        Box::pin(self.refuse(caller, call, error, decision))
    }

    /// Runs every check and encodes the START event, without awaiting anything; a refusal
    /// comes back with the call for its audit event ([`refused`](Self::refused)).
    fn prepare(
        &self,
        caller: &Caller,
        call: ToolCall,
        admitted: Admitted,
    ) -> std::result::Result<Ready, Box<(ToolCall, Refusal)>> {
        // The request is filled, decided and encoded where it lives, never moved: it is large.
        REQUEST.with_borrow_mut(|request| self.prepare_with(caller, call, admitted, request))
    }

    /// [`prepare`](Self::prepare) with this thread's request to fill.
    fn prepare_with(
        &self,
        caller: &Caller,
        mut call: ToolCall,
        admitted: Admitted,
        request: &mut Request,
    ) -> std::result::Result<Ready, Box<(ToolCall, Refusal)>> {
        let checked = match self.checks(caller, &mut call, admitted, request) {
            Ok(checked) => checked,
            Err(refusal) => {
                // Do not keep a refused call's parameters until this thread's next call.
                request.params.clear();
                return Err(Box::new((call, refusal)));
            }
        };
        let Checked { contract, request_id, canary, decision, snapshot, deadline, held } = checked;
        contract.version_text().clone_into(&mut call.contract_version);
        let canary = canary.as_ref().map(AsDebug);
        let digest = snapshot.digest();
        let start = INPUT_BUFFER.with_borrow_mut(|buf| {
            buf.clear();
            aesp_policy::encode_input(request, &snapshot, buf);
            let start = self.start_event(
                caller,
                &call,
                &contract,
                &held,
                &request_id,
                // The time the checks ran and the decision was made at.
                request.time_ms,
                canary.as_ref(),
                &decision,
                &snapshot,
                &digest,
                buf,
            );
            shrink(buf);
            start
        });
        // The validated parameters (with defaults applied) are what the runtime gets.
        call.parameters = std::mem::take(&mut request.params);
        Ok(Ready {
            call,
            contract,
            start,
            snapshot_digest: digest,
            risk_score: decision.risk_score(),
            deadline,
            held,
        })
    }

    /// The START event of an admitted call, encoded; `input` is the encoded decision input.
    #[expect(clippy::too_many_arguments, reason = "the parts of one event, borrowed from where they live")]
    fn start_event(
        &self,
        caller: &Caller,
        call: &ToolCall,
        contract: &CompiledContract,
        held: &InFlight,
        request_id: &IdText,
        now_ms: u64,
        canary: Option<&AsDebug<'_, VersionRef>>,
        decision: &Decision,
        snapshot: &Snapshot,
        digest: &[u8; 32],
        input: &[u8],
    ) -> Bytes {
        let described = Described::new(decision, snapshot, Text::Hex(digest), input);
        let risk = Risk(decision.risk_score());
        // Built in place and encoded by reference: the view is over a kilobyte.
        let mut view = EventView {
            event_id: request_id.as_str(),
            timestamp_ms: now_ms,
            event_type: "TOOL_INVOCATION_START",
            principal_id: caller.principal_id(),
            tenant_id: caller.tenant_id(),
            session_id: &call.session_id,
            resource: Text::Concat(TOOL_PREFIX, &call.tool_name),
            action: INVOKE_ACTION,
            outcome: "SUCCESS",
            source_ip: caller.source_ip(),
            risk_score: risk.text(),
            ..EventView::default()
        };
        let metadata = &mut view.metadata;
        if let Some(canary) = canary {
            metadata.insert("canary", Text::Display(canary));
        }
        metadata.insert("contract_version", Text::Str(contract.version_text()));
        metadata.insert("correlation_id", Text::Str(&call.correlation_id));
        metadata.insert("invocation_id", Text::Str(&call.invocation_id));
        metadata.insert("runtime_id", Text::Str(held.permit.runtime().id()));
        described.add_to(metadata);
        view.encode()
    }

    /// Audits a refusal (with the decision, if authorization refused) and returns the error
    /// for the caller, or the audit log's error if it cannot record it.
    async fn refuse(
        &self,
        caller: &Caller,
        call: ToolCall,
        error: Error,
        decision: Option<Box<(Decision, DecisionInput, Snapshot)>>,
    ) -> Error {
        let event_id = fast_id(self.clock().as_ref());
        let encoded = INPUT_BUFFER.with_borrow_mut(|buf| {
            buf.clear();
            if let Some((_, input, _)) = decision.as_deref() {
                input.encode_raw(buf);
            }
            let encoded = self.refusal_event(caller, &call, &error, &event_id, decision.as_deref(), buf);
            shrink(buf);
            encoded
        });
        match self.record_encoded(encoded).await {
            Ok(_) => error.with_correlation_id(call.correlation_id),
            Err(audit) => audit,
        }
    }

    /// The refusal event of a call, encoded; `input` is the encoded decision input, if any.
    fn refusal_event(
        &self,
        caller: &Caller,
        call: &ToolCall,
        error: &Error,
        event_id: &IdText,
        decision: Option<&(Decision, DecisionInput, Snapshot)>,
        input: &[u8],
    ) -> Bytes {
        let described = decision.map(|(decision, decision_input, snapshot)| {
            (
                Described::new(decision, snapshot, Text::Str(&decision_input.snapshot_digest), input),
                Risk(decision.risk_score()),
            )
        });
        let mut view = EventView {
            event_id: event_id.as_str(),
            timestamp_ms: self.clock().now_ms(),
            event_type: "AUTHORIZATION_DENIED",
            principal_id: caller.principal_id(),
            tenant_id: caller.tenant_id(),
            session_id: &call.session_id,
            resource: Text::Concat(TOOL_PREFIX, &call.tool_name),
            action: INVOKE_ACTION,
            outcome: "DENIED",
            source_ip: caller.source_ip(),
            risk_score: described.as_ref().map_or(Text::Str(""), |(_, risk)| risk.text()),
            policy_violation: Some(error.code_str()),
            ..EventView::default()
        };
        let metadata = &mut view.metadata;
        metadata.insert("invocation_id", Text::Str(&call.invocation_id));
        metadata.insert("correlation_id", Text::Str(&call.correlation_id));
        metadata.insert("reason", Text::Str(error.message()));
        if let Some((described, _)) = &described {
            described.add_to(metadata);
        }
        view.encode()
    }

    /// The checks of a call, in order; the call's parameters, validated, move into the
    /// decision's `request`, filled in place (whose parameters [`prepare`](Self::prepare) gives
    /// back).
    fn checks(
        &self,
        caller: &Caller,
        call: &mut ToolCall,
        admitted: Admitted,
        request: &mut Request,
    ) -> std::result::Result<Checked, Refusal> {
        let inner = &self.inner;
        // One reading of the clock for every check, the decision and the START event.
        let now_ms = self.clock().now_ms();
        // Borrowed, not counted: the tenants are read by every call on every core.
        let tenants = inner.tenants.current();
        let tenant = Tenants::active_in(&tenants, caller.tenant_id()).map_err(|e| (e, None))?;
        let active =
            inner.sessions.begin_invocation(caller, &call.session_id, now_ms).map_err(|e| (e, None))?;
        let session = active.session();
        let contract = self.resolve_contract(caller, call).map_err(|e| (e, None))?;
        contract
            .parameters()
            .validate_in_place(&mut call.parameters)
            .map_err(|v| (Error::from(v).with_tenant(caller.tenant_id()), None))?;
        let params = std::mem::take(&mut call.parameters);

        // The Host assigns the request id that chooses canaries (never the caller), and uses it
        // as the id of the START event.
        let request_id = fast_id_at(now_ms);
        fill_request(request, caller, tenant, &contract, session, params, now_ms, call);
        #[cfg(debug_assertions)]
        {
            let fresh = policy_request(
                caller,
                tenant,
                &contract,
                session,
                request.params.clone(),
                request.time_ms,
                call,
            );
            debug_assert_eq!(*request, fresh, "a request filled in place differs from one built afresh");
        }
        let outcome = inner.lifecycle.decide(request, request_id.as_str());
        let (decision, snapshot) = (outcome.decision, outcome.snapshot);
        if !decision.allowed() {
            let input = aesp_policy::to_input(std::mem::take(request), &snapshot);
            let error = decision
                .to_error()
                .unwrap_or_else(|| Error::new(ErrorCode::AuthorizationDenied, decision.reason()));
            return Err((error, Some(Box::new((decision, input, snapshot)))));
        }

        let slot = inner.limits.acquire(caller.tenant_id(), tenant.quotas.as_ref()).map_err(|e| (e, None))?;
        let permit = inner
            .runtimes
            .route(caller.tenant_id(), &call.tool_name, contract.version(), now_ms)
            .map_err(|e| (e, None))?;

        let requested = Duration::from_millis(call.timeout_ms);
        let deadline = if requested.is_zero() { inner.options.default_call_timeout } else { requested }
            .min(inner.options.max_call_timeout);
        Ok(Checked {
            contract,
            request_id,
            canary: outcome.canary,
            decision,
            snapshot,
            deadline,
            held: InFlight { _admitted: admitted, active, _slot: slot, permit },
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

    /// Audits COMPLETE (durably) for the call of `ready` (whose invocation and correlation ids
    /// `ready.call` keeps once the call has gone to the runtime).
    async fn complete(
        &self,
        caller: &Caller,
        ready: &Ready,
        result: Answer<'_>,
        started: u64,
        chunks: u64,
    ) -> Result<()> {
        let event = self.complete_event(caller, ready, result, started, chunks);
        self.record_encoded(event).await.map(drop)
    }

    /// The COMPLETE event of a call, encoded.
    fn complete_event(
        &self,
        caller: &Caller,
        ready: &Ready,
        result: Answer<'_>,
        started: u64,
        chunks: u64,
    ) -> Bytes {
        let now = self.clock().now_ms();
        let event_id = fast_id_at(now);
        let execution_time_ms = now.saturating_sub(started);
        let risk = Risk(ready.risk_score);
        let mut view = EventView {
            event_id: event_id.as_str(),
            timestamp_ms: now,
            event_type: "TOOL_INVOCATION_COMPLETE",
            principal_id: caller.principal_id(),
            tenant_id: caller.tenant_id(),
            session_id: ready.held.active.session().id(),
            resource: Text::Concat(TOOL_PREFIX, &ready.contract.contract().name),
            action: INVOKE_ACTION,
            outcome: outcome_of(result),
            source_ip: caller.source_ip(),
            risk_score: risk.text(),
            policy_violation: result.err().map(Error::code_str),
            ..EventView::default()
        };
        let metadata = &mut view.metadata;
        if chunks > 0 {
            metadata.insert("chunks", Text::Number(chunks));
        }
        metadata.insert("contract_version", Text::Str(ready.contract.version_text()));
        metadata.insert("correlation_id", Text::Str(ready.correlation_id()));
        if let Err(e) = result {
            metadata.insert("error", Text::Str(e.message()));
        }
        metadata.insert("execution_time_ms", Text::Number(execution_time_ms));
        metadata.insert("invocation_id", Text::Str(&ready.call.invocation_id));
        metadata.insert("runtime_id", Text::Str(ready.held.permit.runtime().id()));
        metadata.insert("snapshot_digest", Text::Hex(&ready.snapshot_digest));
        view.encode()
    }
}

/// Waits for the first attempt of a call that is running and returns its outcome.
async fn wait_for_first(done: crate::idempotency::Waiter<'_>) -> Result<ToolResult> {
    match Idempotency::wait(done).await {
        Some(outcome) => replay(&outcome),
        None => Err(Error::new(ErrorCode::Cancelled, "the first attempt of this invocation was cancelled")
            .with_remediation("retry")),
    }
}

/// Checks a runtime's answer to the call of `ready`: that it answers this invocation (whatever
/// the transport), and that a success matches the contract's return type.
fn check_result(ready: &Ready, result: &mut Result<ToolResult>) {
    if let Ok(r) = &*result
        && r.invocation_id != ready.call.invocation_id
    {
        *result = Err(Error::internal(format!(
            "runtime `{}` answered invocation `{}` with the result of `{}`",
            ready.held.permit.runtime().id(),
            shorten(&ready.call.invocation_id),
            shorten(&r.invocation_id)
        )));
    }
    if let Ok(r) = result
        && r.status() == ToolResultStatus::Success
        && let Some(returns) = ready.contract.returns()
    {
        let checked = match &r.payload {
            Some(payload) => returns.check(payload),
            None => returns.check(&Value::default()),
        };
        if let Err(violations) = checked {
            *result = Err(Error::new(
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

/// Lets go of a thread's buffer after an unusually large decision input.
fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > 64 * 1024 {
        *buf = Vec::new();
    }
}

fn replay(outcome: &Outcome) -> Result<ToolResult> {
    match outcome {
        Ok(encoded) => ToolResult::decode(encoded.as_ref())
            .map_err(|e| Error::internal(format!("a remembered result does not decode: {e}"))),
        Err(e) => Err(Error::from(EnterpriseError::clone(e))),
    }
}

fn strings_to_values(map: &BTreeMap<String, String>) -> BTreeMap<String, Value> {
    map.iter().map(|(k, v)| (k.clone(), Value::string(v.clone()))).collect()
}

/// Makes `target` [`strings_to_values`] of `source`, in place when the keys are the same.
fn assign_strings_as_values(target: &mut BTreeMap<String, Value>, source: &BTreeMap<String, String>) {
    let same_keys = target.len() == source.len() && target.keys().eq(source.keys());
    if !same_keys {
        *target = strings_to_values(source);
        return;
    }
    for (value, text) in target.values_mut().zip(source.values()) {
        match &mut value.kind {
            Some(aesp_core::proto::v1::value::Kind::StringValue(s)) => s.clone_from(text),
            _ => *value = Value::string(text.clone()),
        }
    }
}

/// Overwrites every field of `request` in place with what [`policy_request`] builds, reusing
/// the buffers it holds.
#[expect(clippy::too_many_arguments, reason = "the parts of one request, borrowed from where they live")]
fn fill_request(
    request: &mut Request,
    caller: &Caller,
    tenant: &Tenant,
    contract: &CompiledContract,
    session: &SessionEntry,
    params: BTreeMap<String, Value>,
    now_ms: u64,
    call: &ToolCall,
) {
    // Destructured so that a field added to `Request` cannot be left unset here.
    let Request {
        tenant_id,
        principal,
        resource,
        action,
        session: own_session,
        time_ms,
        source_ip,
        params: own_params,
        estimated_cost,
        tenant_attributes,
        break_glass,
    } = request;
    tenant_id.clear();
    tenant_id.push_str(caller.tenant_id());
    principal.assign_security_context(caller.context(), caller.attributes());
    resource.assign_contract(caller.tenant_id(), contract.contract());
    action.clear();
    action.push_str(INVOKE_ACTION);
    own_session.assign(session.id(), &session.session().metadata);
    *time_ms = now_ms;
    source_ip.clear();
    source_ip.push_str(caller.source_ip());
    *own_params = params;
    *estimated_cost = 0.0;
    assign_strings_as_values(tenant_attributes, &tenant.attributes);
    match (call.metadata.get("break_glass_justification"), break_glass.as_mut()) {
        (Some(justification), Some(kept)) => kept.clone_from(justification),
        (justification, _) => *break_glass = justification.cloned(),
    }
}

#[cfg(debug_assertions)]
fn policy_request(
    caller: &Caller,
    tenant: &Tenant,
    contract: &CompiledContract,
    session: &SessionEntry,
    params: BTreeMap<String, Value>,
    now_ms: u64,
    call: &ToolCall,
) -> Request {
    use aesp_policy::{Principal, Resource, Session};

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
        params,
        estimated_cost: 0.0,
        tenant_attributes: strings_to_values(&tenant.attributes),
        break_glass: call.metadata.get("break_glass_justification").cloned(),
    }
}
