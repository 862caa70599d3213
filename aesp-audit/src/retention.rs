//! Retention and erasure: pruning event bodies while the tree, the checkpoints and every
//! remaining proof stay verifiable. A pruned leaf keeps its hash in a [`Tombstone`] that says
//! when and under which rule it was pruned and which audited event recorded it.
//!
//! [`Tombstone`]: crate::Tombstone

use std::fmt;

use aesp_core::{Error, Result, proto::v1::AuditEvent};
use sha2::{Digest as _, Sha256};

use crate::{
    log::AuditLog,
    query::{AuditFilter, select_in},
    storage::PruneRequest,
};

/// The event type of a retention pruning.
pub const EVENT_RETENTION_PRUNE: &str = "AUDIT_RETENTION_PRUNE";
/// The event type of an erasure on request.
pub const EVENT_ERASURE: &str = "AUDIT_ERASURE";

/// What to prune.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PruneRule {
    /// The events of `tenant` older than `before_ms` (its retention period has passed).
    Retention {
        /// The tenant.
        tenant: String,
        /// Events before this time (Unix milliseconds) are pruned.
        before_ms: u64,
    },
    /// Every event of `principal` in `tenant`, on the data subject's request (GDPR Art. 17).
    /// The rule that tombstones and the pruning event record names the principal only by a
    /// SHA-256 pseudonym, so the log does not keep the identifier it erased.
    Erasure {
        /// The tenant.
        tenant: String,
        /// The principal whose events are erased.
        principal: String,
        /// The reference of the request (a ticket id), recorded with the pruning.
        request: String,
    },
}

impl PruneRule {
    fn tenant(&self) -> &str {
        match self {
            Self::Retention { tenant, .. } | Self::Erasure { tenant, .. } => tenant,
        }
    }

    fn event_type(&self) -> &'static str {
        match self {
            Self::Retention { .. } => EVENT_RETENTION_PRUNE,
            Self::Erasure { .. } => EVENT_ERASURE,
        }
    }

    fn filter(&self) -> AuditFilter {
        match self {
            Self::Retention { tenant, before_ms } => {
                AuditFilter { end_ms: Some(*before_ms), ..AuditFilter::tenant(tenant.clone()) }
            }
            Self::Erasure { tenant, principal, .. } => {
                AuditFilter { principal: Some(principal.clone()), ..AuditFilter::tenant(tenant.clone()) }
            }
        }
    }
}

/// The pseudonym under which an erased principal is recorded.
pub fn principal_pseudonym(tenant: &str, principal: &str) -> String {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(principal.as_bytes());
    let digest = h.finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for PruneRule {
    /// The rule as tombstones record it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retention { tenant, before_ms } => {
                write!(f, "retention tenant={tenant} before_ms={before_ms}")
            }
            Self::Erasure { tenant, principal, request } => write!(
                f,
                "erasure tenant={tenant} principal_sha256={} request={request}",
                principal_pseudonym(tenant, principal)
            ),
        }
    }
}

/// What a pruning did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneReport {
    /// The rule, as recorded.
    pub rule: String,
    /// The index of the audit event that records the pruning (none when nothing matched).
    pub event_index: Option<u64>,
    /// How many entries were pruned.
    pub pruned: u64,
    /// The checkpoint size the selection was made under: only entries below it were pruned.
    pub through: u64,
}

impl AuditLog {
    /// Calls `each` on the events `filter` selects in `from..through`, but for pruning and
    /// erasure events (never pruned), in log order, until it returns false; returns where it
    /// stopped (the next index to look at), or `through`.
    async fn walk_prunable(
        &self,
        filter: &AuditFilter,
        from: u64,
        through: u64,
        mut each: impl FnMut(u64) -> bool,
    ) -> Result<u64> {
        self.over_index(from, through, filter.times(), u64::MAX, |state, from, to| {
            let keep = [state.strings.get(EVENT_RETENTION_PRUNE), state.strings.get(EVENT_ERASURE)];
            // An event that is not to be pruned is passed over; the walk goes on.
            select_in(state, filter, from, to, |i| {
                state.row(i).is_none_or(|r| keep.contains(&Some(r.event_type))) || each(i)
            })
        })
        .await
    }

    /// Prunes the events `rule` selects among those a checkpoint covers, recording the
    /// pruning as an audit event by `actor` at `now_ms` before any entry is touched.
    ///
    /// Pruning events themselves are never pruned. The events are counted first, then pruned a
    /// chunk at a time (as many as one chunk of the query index's older entries), so no list
    /// of all of them is held. After a crash between the event and the pruning, or between two
    /// chunks, running the same rule again finishes the job (under a new event).
    pub async fn prune(&self, rule: &PruneRule, actor: &str, now_ms: u64) -> Result<PruneReport> {
        if rule.tenant().is_empty() {
            return Err(Error::invalid_argument("a pruning rule names its tenant"));
        }
        let text = rule.to_string();
        if text.len() > crate::storage::MAX_RULE_LEN {
            return Err(Error::invalid_argument("the pruning rule is too long"));
        }
        let through = self.checkpoint().await?.checkpoint().size;
        self.index.catch_up(self.storage().as_ref(), through).await?;
        let filter = rule.filter();
        // Count the events the rule selects (no list of them: it can be a tenant's history).
        let (mut selected, mut first, mut last) = (0u64, None, 0u64);
        self.walk_prunable(&filter, 0, through, |i| {
            selected += 1;
            first.get_or_insert(i);
            last = i;
            true
        })
        .await?;
        let Some(first) = first else {
            return Ok(PruneReport { rule: text, event_index: None, pruned: 0, through });
        };
        let event = AuditEvent {
            event_id: aesp_core::new_id(&aesp_core::SystemClock),
            timestamp_ms: now_ms,
            event_type: rule.event_type().to_owned(),
            principal_id: actor.to_owned(),
            tenant_id: rule.tenant().to_owned(),
            resource: "audit:log".to_owned(),
            action: "prune".to_owned(),
            outcome: "SUCCESS".to_owned(),
            metadata: [
                ("rule".to_owned(), text.clone()),
                ("through_index".to_owned(), through.to_string()),
                ("selected".to_owned(), selected.to_string()),
                ("first_index".to_owned(), first.to_string()),
                ("last_index".to_owned(), last.to_string()),
            ]
            .into(),
            ..AuditEvent::default()
        };
        let event_index = self.append(&event).await?;
        // Then prune them a chunk at a time.
        let chunk = usize::try_from(self.index.chunk_entries()).unwrap_or(usize::MAX);
        let mut batch: Vec<u64> = Vec::with_capacity(chunk.min(64 * 1024));
        let (mut pruned, mut next) = (0u64, first);
        while next < through {
            batch.clear();
            next = self
                .walk_prunable(&filter, next, through, |i| {
                    batch.push(i);
                    batch.len() < chunk
                })
                .await?;
            if batch.is_empty() {
                break;
            }
            let request = PruneRequest { indexes: &batch, pruned_at_ms: now_ms, rule: &text, event_index };
            pruned = pruned.saturating_add(self.storage().prune(request).await?);
            self.index.mark_pruned(&batch);
        }
        Ok(PruneReport { rule: text, event_index: Some(event_index), pruned, through })
    }
}
