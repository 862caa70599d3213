//! The EnterpriseAuditService: logging, queries, statistics, compliance reports, exports,
//! live subscriptions, retention and erasure, and provable decisions.

use aesp_audit::{
    AuditExport, AuditFilter, AuditQuery, ExportFormat, ExportOptions, Leaf, PruneReport, PruneRule,
    ReportRequest, Subscription,
};
use aesp_core::{
    Error, ErrorCode, Result,
    proto::v1::{
        ApplyRetentionRequest, ApplyRetentionResponse, ApplyRetentionResult, AuditEvent, AuditLeaf,
        AuditLeafBatch, DecisionProof, EraseAuditEventsRequest, EraseAuditEventsResponse,
        ExportAuditLogsRequest, GetAuditStatisticsRequest, GetAuditStatisticsResponse,
        GetAuditStatisticsResult, GetComplianceReportRequest, GetComplianceReportResponse,
        GetComplianceReportResult, LogEventRequest, LogEventResponse, LogEventResult, ProveDecisionRequest,
        ProveDecisionResponse, PruneResult, QueryEventsRequest, QueryEventsResponse, QueryEventsResult,
        SubscribeEventsRequest, apply_retention_response, erase_audit_events_response,
        get_audit_statistics_response, get_compliance_report_response, log_event_response,
        prove_decision_response, query_events_response,
    },
};
use prost::{Message as _, bytes::Bytes};

use super::{Services, catalogue::Rpc, respond};
use crate::{Caller, Host};

/// Event types the Host writes itself: LogEvent refuses them, so that no caller can forge a
/// decision, an authentication or a pruning in the log.
const RESERVED_EVENT_PREFIXES: [&str; 11] = [
    "TOOL_INVOCATION_",
    "AUTHORIZATION_",
    "AUTHENTICATION_",
    "AUDIT_",
    "IDENTITY_",
    "POLICY_",
    "TENANT_",
    "SESSION_",
    "RUNTIME_",
    "GOVERNANCE_",
    "TOKEN_",
];

/// The most principals `GetAuditStatistics` counts when the request names no number.
const DEFAULT_TOP_PRINCIPALS: usize = 10;
const MILLIS_PER_DAY: u64 = 86_400_000;

/// A filter from the fields QueryEvents and ExportAuditLogs share. `end_time` 0 means no end
/// (now and later), so that the cursor of every page names the same filter.
fn filter_of(
    tenant: String,
    start_time: u64,
    end_time: u64,
    event_types: &[String],
    principal_id: &str,
    filters: &std::collections::BTreeMap<String, String>,
) -> AuditFilter {
    let mut filter = AuditFilter {
        tenant: Some(tenant),
        start_ms: start_time,
        end_ms: (end_time != 0).then_some(end_time),
        event_types: event_types.to_vec(),
        principal: (!principal_id.is_empty()).then(|| principal_id.to_owned()),
        ..AuditFilter::default()
    };
    for (key, value) in filters {
        match key.as_str() {
            "outcome" => filter.outcome = Some(value.clone()),
            "resource" => filter.resource = Some(value.clone()),
            _ => {
                filter.fields.insert(key.clone(), value.clone());
            }
        }
    }
    filter
}

fn prune_result(tenant: &str, report: &PruneReport) -> PruneResult {
    PruneResult {
        tenant_id: tenant.to_owned(),
        rule: report.rule.clone(),
        pruned: report.pruned,
        recorded: report.event_index.is_some(),
        event_index: report.event_index.unwrap_or(0),
        through_index: report.through,
    }
}

impl Services {
    /// LogEvent: appends an event of the caller's tenant, durably. The Host fills `event_id`
    /// and `timestamp_ms` when empty, sets the tenant from the context when empty, refuses
    /// another tenant's and the event types the Host writes itself (decisions,
    /// authentications, identity, policy, tenant, session, runtime, governance and audit
    /// events), and records who logged it in `metadata.logged_by`.
    pub async fn log_event(&self, caller: &Caller, request: LogEventRequest) -> LogEventResponse {
        let result: Result<_> = async {
            let mut event = request.event.ok_or_else(|| Error::invalid_argument("`event` is required"))?;
            let tenant = self.host.authorize_rpc(caller, Rpc::LogEvent, &event.tenant_id).await?;
            let clock = self.host.clock().as_ref();
            if event.event_id.is_empty() {
                event.event_id = aesp_core::new_id(clock);
            }
            if event.timestamp_ms == 0 {
                event.timestamp_ms = clock.now_ms();
            }
            if event.event_type.is_empty() {
                return Err(Error::invalid_argument("`event.event_type` is required"));
            }
            if let Some(prefix) = RESERVED_EVENT_PREFIXES.iter().find(|p| event.event_type.starts_with(**p)) {
                return Err(Error::invalid_argument(format!(
                    "event types starting with `{prefix}` are written by the Host only"
                ))
                .with_detail("field", "event.event_type"));
            }
            event.tenant_id = tenant;
            event.metadata.insert("logged_by".into(), caller.principal_id().to_owned());
            let log_index = self.host.record(&event).await?;
            Ok(LogEventResult { event_id: event.event_id, log_index })
        }
        .await;
        respond!(LogEventResponse, log_event_response, result)
    }

    /// QueryEvents: a page of the tenant's events, in log order, from the audit index.
    pub async fn query_events(&self, caller: &Caller, request: QueryEventsRequest) -> QueryEventsResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::QueryEvents, &request.tenant_id).await?;
            let filter = filter_of(
                tenant,
                request.start_time,
                request.end_time,
                &request.event_types,
                &request.principal_id,
                &request.filters,
            );
            let query = AuditQuery {
                filter,
                limit: request.limit as usize,
                cursor: (!request.cursor.is_empty()).then_some(request.cursor),
            };
            let page = self.host.audit_log().query(&query).await?;
            Ok(QueryEventsResult {
                log_indexes: page.events.iter().map(|e| e.index).collect(),
                events: page.events.into_iter().map(|e| e.event).collect(),
                next_cursor: page.next_cursor.unwrap_or_default(),
            })
        }
        .await;
        respond!(QueryEventsResponse, query_events_response, result)
    }

    /// GetAuditStatistics: counts of the tenant's events in a period.
    pub async fn get_audit_statistics(
        &self,
        caller: &Caller,
        request: GetAuditStatisticsRequest,
    ) -> GetAuditStatisticsResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::GetAuditStatistics, &request.tenant_id).await?;
            let filter =
                filter_of(tenant, request.start_time, request.end_time, &[], "", &Default::default());
            let stats = self.host.audit_log().statistics(&filter).await?;
            let top = match request.top_principals {
                0 => DEFAULT_TOP_PRINCIPALS,
                n => n as usize,
            };
            Ok(GetAuditStatisticsResult {
                total_events: stats.total,
                counts_by_principal: stats
                    .top_principals(top)
                    .into_iter()
                    .map(|(p, n)| (p.to_owned(), n))
                    .collect(),
                counts_by_event_type: stats.by_event_type,
                counts_by_outcome: stats.by_outcome,
                policy_violation_count: stats.policy_violations,
                first_event_at: stats.first_at_ms.unwrap_or(0),
                last_event_at: stats.last_at_ms.unwrap_or(0),
            })
        }
        .await;
        respond!(GetAuditStatisticsResponse, get_audit_statistics_response, result)
    }

    /// GetComplianceReport: a framework's controls with evidence from the tenant's log,
    /// against a signed checkpoint (see [`aesp_audit::render_html`] for a readable page).
    pub async fn get_compliance_report(
        &self,
        caller: &Caller,
        request: GetComplianceReportRequest,
    ) -> GetComplianceReportResponse {
        let result: Result<_> = async {
            let tenant =
                self.host.authorize_rpc(caller, Rpc::GetComplianceReport, &request.tenant_id).await?;
            let mut report_request =
                ReportRequest::from_proto(&request, caller.principal_id(), self.host.clock().now_ms());
            report_request.tenant = tenant;
            let report = self.host.audit_log().compliance_report(&report_request).await?;
            Ok(GetComplianceReportResult { report: Some(report) })
        }
        .await;
        respond!(GetComplianceReportResponse, get_compliance_report_response, result)
    }

    /// ExportAuditLogs: the tenant's matching events as a stream of file chunks, provable
    /// against the checkpoint on the final chunk. An error before the first chunk is returned
    /// here; the gateway ends the stream with it.
    pub async fn export_audit_logs(
        &self,
        caller: &Caller,
        request: ExportAuditLogsRequest,
    ) -> Result<AuditExport> {
        let tenant = self.host.authorize_rpc(caller, Rpc::ExportAuditLogs, &request.tenant_id).await?;
        let format = ExportFormat::try_from(request.format)?;
        let filter = filter_of(
            tenant,
            request.start_time,
            request.end_time,
            &request.event_types,
            &request.principal_id,
            &request.filters,
        );
        let mut event = self.host.event("AUDIT_EXPORT", Some(caller), "audit:log", "export", "SUCCESS");
        event.metadata.insert("format".into(), format!("{format:?}"));
        self.host.record(&event).await?;
        self.host.audit_log().export(ExportOptions::new(filter, format)).await
    }

    /// SubscribeEvents: a live feed of the tenant's audit leaves from an index onward (for a
    /// platform administrator naming no tenant, every tenant's, pruned leaves included).
    pub async fn subscribe_events(
        &self,
        caller: &Caller,
        request: SubscribeEventsRequest,
    ) -> Result<TenantSubscription> {
        let every_tenant = caller.is_platform() && request.tenant_id.is_empty();
        let tenant = self.host.authorize_rpc(caller, Rpc::SubscribeEvents, &request.tenant_id).await?;
        let inner = self.host.audit_log().subscribe(request.from_index)?;
        Ok(TenantSubscription { inner, tenant: (!every_tenant).then_some(tenant) })
    }

    /// ApplyRetention: prunes the bodies of events older than their tenant's retention period
    /// (`Tenant.audit_retention_days`; 0 keeps them). A platform administrator naming no
    /// tenant applies every tenant's.
    pub async fn apply_retention(
        &self,
        caller: &Caller,
        request: ApplyRetentionRequest,
    ) -> ApplyRetentionResponse {
        let result: Result<_> = async {
            let every_tenant = caller.is_platform() && request.tenant_id.is_empty();
            let tenant = self.host.authorize_rpc(caller, Rpc::ApplyRetention, &request.tenant_id).await?;
            let tenants = if every_tenant { self.host.tenant_ids() } else { vec![tenant] };
            let now = self.host.clock().now_ms();
            let mut results = Vec::new();
            for tenant in tenants {
                let Ok(record) = self.host.tenant_record(&tenant) else { continue };
                let days = u64::from(record.audit_retention_days);
                if days == 0 {
                    continue;
                }
                let rule = PruneRule::Retention {
                    tenant: tenant.clone(),
                    before_ms: now.saturating_sub(days.saturating_mul(MILLIS_PER_DAY)),
                };
                let report = self.host.audit_log().prune(&rule, caller.principal_id(), now).await?;
                results.push(prune_result(&tenant, &report));
            }
            Ok(ApplyRetentionResult { results })
        }
        .await;
        respond!(ApplyRetentionResponse, apply_retention_response, result)
    }

    /// EraseAuditEvents: erases the bodies of one principal's events in the tenant (a data
    /// subject's request); the tree keeps their hashes and the erasure is itself audited,
    /// naming the principal only by a pseudonym.
    pub async fn erase_audit_events(
        &self,
        caller: &Caller,
        request: EraseAuditEventsRequest,
    ) -> EraseAuditEventsResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::EraseAuditEvents, &request.tenant_id).await?;
            if request.principal_id.is_empty() || request.request_reference.is_empty() {
                return Err(Error::invalid_argument("`principal_id` and `request_reference` are required"));
            }
            let rule = PruneRule::Erasure {
                tenant: tenant.clone(),
                principal: request.principal_id,
                request: request.request_reference,
            };
            let now = self.host.clock().now_ms();
            let report = self.host.audit_log().prune(&rule, caller.principal_id(), now).await?;
            Ok(prune_result(&tenant, &report))
        }
        .await;
        respond!(EraseAuditEventsResponse, erase_audit_events_response, result)
    }

    /// ProveDecision: re-runs an audited policy decision of the tenant from its recorded
    /// input under its recorded snapshot, says whether it comes out the same, and proves the
    /// event against the current signed checkpoint.
    pub async fn prove_decision(
        &self,
        caller: &Caller,
        request: ProveDecisionRequest,
    ) -> ProveDecisionResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::ProveDecision, "").await?;
            let (leaf, event) = self.host.audited_event(request.log_index).await?;
            // The tenant first: whether another tenant's entry is a decision is not told.
            if event.tenant_id != tenant && !caller.is_platform() {
                return Err(self
                    .host
                    .cross_tenant_refusal(caller, &format!("audit:{}", request.log_index))
                    .await);
            }
            self.host.decision_proof(request.log_index, leaf, event).await
        }
        .await;
        respond!(ProveDecisionResponse, prove_decision_response, result)
    }
}

impl Host {
    /// Re-runs the audited decision at `log_index` under the snapshot it records and proves
    /// the event against a checkpoint signed now. The event must carry `snapshot_digest` and
    /// `decision_input` (a policy decision of the invocation pipeline).
    pub async fn prove_decision(&self, log_index: u64) -> Result<DecisionProof> {
        let (leaf, event) = self.audited_event(log_index).await?;
        self.decision_proof(log_index, leaf, event).await
    }

    /// The entry at `log_index`: its leaf bytes and the event they encode.
    async fn audited_event(&self, log_index: u64) -> Result<(Bytes, AuditEvent)> {
        let leaf = self.audit_log().entry(log_index).await?;
        let event = AuditEvent::decode(leaf.clone())
            .map_err(|e| Error::corrupted(format!("audit entry {log_index} is not an event: {e}")))?;
        Ok((leaf, event))
    }

    /// [`Host::prove_decision`] of the entry `log_index`, already read.
    async fn decision_proof(&self, log_index: u64, leaf: Bytes, event: AuditEvent) -> Result<DecisionProof> {
        let log = self.audit_log();
        let not_a_decision = || {
            Error::new(
                ErrorCode::FailedPrecondition,
                format!("audit entry {log_index} records no policy decision"),
            )
        };
        // Only the Host's own decision events (LogEvent can never write these types).
        let host_decision =
            matches!(event.event_type.as_str(), "TOOL_INVOCATION_START" | "AUTHORIZATION_DENIED")
                && !event.metadata.contains_key("logged_by");
        if !host_decision {
            return Err(not_a_decision());
        }
        let digest = event.metadata.get("snapshot_digest").ok_or_else(not_a_decision)?.clone();
        let recorded_allowed = event.metadata.get("decision").ok_or_else(not_a_decision)? == "ALLOW";
        let recorded_reason = event.metadata.get("decision_reason").cloned().unwrap_or_default();
        let input = aesp_policy::input_from_audit_event(&event)?.ok_or_else(not_a_decision)?;
        let lifecycle = self.policy_lifecycle();
        let snapshot = lifecycle.snapshot_by_digest(&digest).await?.ok_or_else(|| {
            Error::new(ErrorCode::NotFound, format!("the policy snapshot {digest} is no longer stored"))
        })?;
        let replay_request = aesp_policy::from_input(&input)?;
        let replayed = lifecycle.engine().decide_with(&snapshot, &replay_request);
        let checkpoint = log.checkpoint().await?;
        let proof = log.prove(log_index).await?;
        proof.verify(&leaf, std::slice::from_ref(log.verifier()))?;
        Ok(DecisionProof {
            log_index,
            snapshot_digest: digest,
            matches: replayed.allowed() == recorded_allowed && replayed.reason() == recorded_reason,
            recorded_allowed,
            recorded_reason,
            replayed_allowed: replayed.allowed(),
            replayed_reason: replayed.reason().to_owned(),
            replayed_policies: replayed.matched().iter().map(|m| m.policy_id().to_owned()).collect(),
            inclusion_proof: proof.to_text(),
            checkpoint: checkpoint.to_text(),
            event: Some(event),
        })
    }
}

/// A live feed of one tenant's audit leaves (see [`Services::subscribe_events`]).
#[derive(Debug)]
pub struct TenantSubscription {
    inner: Subscription,
    tenant: Option<String>,
}

impl TenantSubscription {
    /// The next batch: the tenant's leaves in the next stretch of the log (possibly none, when
    /// the stretch held only other tenants' events; `next_index` still moves on), waiting
    /// until the log grows.
    pub async fn next_batch(&mut self) -> Result<AuditLeafBatch> {
        let batch = self.inner.next_batch().await?;
        let mut leaves = Vec::new();
        for (index, leaf) in (batch.first..).zip(&batch.leaves) {
            match leaf {
                Leaf::Entry(bytes) => {
                    let event = AuditEvent::decode(bytes.clone()).ok();
                    let tenant_ok = match (&self.tenant, &event) {
                        (None, _) => true,
                        (Some(t), Some(e)) => *t == e.tenant_id,
                        (Some(_), None) => false,
                    };
                    if tenant_ok {
                        leaves.push(AuditLeaf { index, leaf: bytes.to_vec(), event, ..AuditLeaf::default() });
                    }
                }
                Leaf::Pruned(t) if self.tenant.is_none() => leaves.push(AuditLeaf {
                    index,
                    pruned: true,
                    prune_rule: t.rule.clone(),
                    ..AuditLeaf::default()
                }),
                Leaf::Pruned(_) => {}
            }
        }
        Ok(AuditLeafBatch {
            leaves,
            next_index: batch.next_index(),
            log_size: batch.log_size,
            behind: batch.behind(),
        })
    }

    /// Where a new subscription resumes.
    pub fn position(&self) -> u64 {
        self.inner.position()
    }
}
