//! The policy lifecycle (specification §5.1): immutable semver versions of each policy
//! moving `draft` → `approved` → `shadow` → `canary(percent)` → `active` → `retired`, kept in
//! a [`StateStore`]; atomic promotion and rollback; content-addressed snapshots of everything
//! ever enforced; shadow evaluation and canary enforcement on the request path; replay of
//! recorded decisions; YAML test suites; and the EnterprisePolicyService over all of it.
//!
//! The request path ([`PolicyLifecycle::decide`]) never touches the store: the active,
//! canary and shadow snapshots are compiled when the rollout changes, counters are atomics
//! and divergences go to a bounded in-memory ring.

mod convert;
mod records;
mod replay;
mod rollout;
mod service;
mod source;
mod suite;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use aesp_core::{
    Clock, Error, ErrorCode, Result, Revision, StateStore, StateStoreExt as _, Txn, TxnOutcome, new_id,
    proto::v1::{AuditEvent, PolicyDefinition, RoleDefinition, Value},
};
use arc_swap::ArcSwap;

pub use convert::{
    DECISION_INPUT_METADATA, encode_input, from_input, input_digest_hex, input_from_audit_event, to_input,
};
pub use records::VersionState;
pub use replay::{ReplayOutcome, ReplayReport, replay};
pub use rollout::{CandidateKind, Divergence, LifecycleDecision, VersionCounters, VersionRef};
pub use service::{Audited, Caller, PolicyService};
pub use suite::{CaseFailure, SuiteReport, TestSuite, run_suite, run_suite_with};

use records::{
    SnapshotRecord, StoredRollout, StoredVersion, assignment_key, decode, encode, organization_key, role_key,
    snapshot_key, state_key, tenant_key, version_key,
};
use rollout::{Candidate, CounterTable, DivergenceRing, Rollout, bucket};
use source::{PolicySource, Source};

use crate::{Engine, Request, Schema, Snapshot, SnapshotBuilder};

/// The most roles one principal may be assigned in a tenant (a bound on a listing).
const MAX_ASSIGNMENTS_PER_PRINCIPAL: usize = 10_000;

/// How a [`PolicyLifecycle`] is set up.
#[derive(Clone)]
pub struct LifecycleConfig {
    /// The attribute declarations every snapshot is built with.
    pub schema: Schema,
    /// The secret key of the canary choice (keyed hash of the Host-assigned request id).
    pub canary_key: [u8; 32],
    /// How many divergences are kept in memory (the most recent).
    pub divergence_capacity: usize,
}

impl LifecycleConfig {
    /// A configuration with `schema`, `canary_key` and room for 4,096 divergences.
    pub fn new(schema: Schema, canary_key: [u8; 32]) -> Self {
        Self { schema, canary_key, divergence_capacity: 4096 }
    }
}

impl fmt::Debug for LifecycleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleConfig")
            .field("schema", &self.schema)
            .field("canary_key", &"<secret>")
            .field("divergence_capacity", &self.divergence_capacity)
            .finish()
    }
}

/// A stage a version can be promoted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Evaluated beside the active version, never enforced.
    Shadow,
    /// Enforced for this percent (0 to 100) of requests.
    Canary(u32),
    /// Enforced for every request.
    Active,
}

/// A policy version with its lifecycle state.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionInfo {
    /// The definition (its `version` is the semver version).
    pub policy: PolicyDefinition,
    /// The lifecycle state.
    pub state: VersionState,
    /// Who approved it (empty while draft).
    pub approved_by: String,
    /// When it was approved (Unix milliseconds; 0 while draft).
    pub approved_at: u64,
    /// The canary share, while a canary.
    pub canary_percent: u32,
    /// When the state last changed.
    pub state_changed_at: u64,
    /// Who last changed the state.
    pub state_changed_by: String,
}

impl VersionInfo {
    fn from_stored(stored: &StoredVersion) -> Result<Self> {
        Ok(Self {
            policy: stored.policy.clone().unwrap_or_default(),
            state: stored.state()?,
            approved_by: stored.approved_by.clone(),
            approved_at: stored.approved_at,
            canary_percent: stored.canary_percent,
            state_changed_at: stored.state_changed_at,
            state_changed_by: stored.state_changed_by.clone(),
        })
    }
}

/// Which versions of a policy are rolled out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyStatus {
    /// The active version (empty: none).
    pub active: String,
    /// The shadow version (empty: none).
    pub shadow: String,
    /// The canary version (empty: none).
    pub canary: String,
    /// The canary's share.
    pub canary_percent: u32,
    /// Earlier active versions, most recent last (what rollback restores).
    pub previous_active: Vec<String>,
    /// The highest version written.
    pub latest: String,
    /// Whether the policy was deleted.
    pub deleted: bool,
}

impl From<&StoredRollout> for PolicyStatus {
    fn from(r: &StoredRollout) -> Self {
        Self {
            active: r.active.clone(),
            shadow: r.shadow.clone(),
            canary: r.canary.clone(),
            canary_percent: r.canary_percent,
            previous_active: r.previous_active.clone(),
            latest: r.latest.clone(),
            deleted: r.deleted,
        }
    }
}

/// One version's change of state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// The version.
    pub version: String,
    /// Its state before.
    pub from: VersionState,
    /// Its state after.
    pub to: VersionState,
}

/// What a lifecycle change did.
#[derive(Clone, Debug)]
pub struct Change {
    /// The policy's rollout after the change.
    pub status: PolicyStatus,
    /// Every version whose state changed.
    pub changes: Vec<StateChange>,
    /// The store revision of the commit.
    pub revision: Revision,
    /// The active snapshot's digest before the change (hex).
    pub digest_before: String,
    /// The active snapshot's digest after the change (hex).
    pub digest_after: String,
    /// The audit event for the caller to append.
    pub audit: AuditEvent,
}

/// The policy lifecycle: the store of versions and rollouts, and the request-path view of
/// what is enforced.
pub struct PolicyLifecycle {
    engine: Arc<Engine>,
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    schema: Schema,
    canary_key: [u8; 32],
    rollout: ArcSwap<Rollout>,
    install_lock: Mutex<()>,
    counters: CounterTable,
    divergences: DivergenceRing,
    snapshots: Mutex<HashMap<String, Snapshot>>,
}

impl fmt::Debug for PolicyLifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rollout = self.rollout.load();
        f.debug_struct("PolicyLifecycle")
            .field("store", &self.store)
            .field("revision", &rollout.revision)
            .field("active", &rollout.active.digest_hex())
            .finish_non_exhaustive()
    }
}

/// The most snapshots kept in the in-memory cache of [`PolicyLifecycle::snapshot_by_digest`].
const SNAPSHOT_CACHE: usize = 256;

fn conflict(what: &str) -> Error {
    Error::new(ErrorCode::Conflict, format!("{what} changed concurrently; read it again and retry"))
}

fn policy_not_found(tenant: &str, policy_id: &str) -> Error {
    Error::new(ErrorCode::PolicyNotFound, format!("policy `{policy_id}` not found"))
        .with_tenant(tenant)
        .with_detail("policy_id", policy_id)
}

fn version_not_found(tenant: &str, policy_id: &str, version: &str) -> Error {
    Error::new(ErrorCode::PolicyNotFound, format!("version `{version}` of policy `{policy_id}` not found"))
        .with_tenant(tenant)
        .with_detail("policy_id", policy_id)
        .with_detail("version", version)
}

fn illegal(policy_id: &str, version: &str, from: VersionState, to: VersionState) -> Error {
    Error::new(
        ErrorCode::FailedPrecondition,
        format!("version `{version}` of policy `{policy_id}` is `{from}` and cannot become `{to}`"),
    )
    .with_detail("from", from.as_str())
    .with_detail("to", to.as_str())
}

/// Parses a semver version.
pub(crate) fn parse_version(version: &str) -> Result<semver::Version> {
    semver::Version::parse(version).map_err(|e| {
        Error::invalid_argument(format!("version `{version}` is not a semantic version (`1.2.3`)"))
            .with_source(e)
    })
}

/// A policy's state record and the revision it was read at.
struct ReadPolicy {
    rollout: StoredRollout,
    revision: Revision,
}

/// A version record and the revision it was read at.
struct ReadVersion {
    stored: StoredVersion,
    revision: Revision,
}

impl PolicyLifecycle {
    /// A lifecycle over `store`, deciding with `engine`. Call [`load`](Self::load) before
    /// deciding: until then every request is decided by an empty snapshot (denied).
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
        config: LifecycleConfig,
    ) -> Self {
        let empty = SnapshotBuilder::new(0, config.schema.clone());
        let active = engine.build(&empty).unwrap_or_else(|_| engine.snapshot());
        Self {
            engine,
            store,
            clock,
            schema: config.schema,
            canary_key: config.canary_key,
            rollout: ArcSwap::from_pointee(Rollout { revision: 0, active, candidates: HashMap::new() }),
            install_lock: Mutex::new(()),
            counters: CounterTable::default(),
            divergences: DivergenceRing::new(config.divergence_capacity),
            snapshots: Mutex::new(HashMap::new()),
        }
    }

    /// The engine that decides.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The attribute declarations snapshots are built with.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Rebuilds the active, canary and shadow snapshots from the store (at startup, and after
    /// another Host changed the rollout), records them content-addressed, and installs them.
    /// Returns the active snapshot.
    ///
    /// # Errors
    ///
    /// A store error, or a stored policy or role that no longer builds.
    pub async fn load(&self) -> Result<Snapshot> {
        let source = source::read_all(self.store.as_ref()).await?;
        self.install(&source).await
    }

    async fn install(&self, source: &Source) -> Result<Snapshot> {
        let active_record = source.record(&self.schema, None);
        let active = self.record_snapshot(&active_record).await?;
        let mut candidates: HashMap<String, Vec<Candidate>> = HashMap::new();
        for (tenant_id, tenant) in &source.tenants {
            let mut list = Vec::new();
            for (policy_id, policy) in &tenant.policies {
                let Some(rollout) = policy.rollout.as_ref().filter(|r| !r.deleted) else { continue };
                let wanted = [
                    (&rollout.canary, CandidateKind::Canary { percent: rollout.canary_percent }),
                    (&rollout.shadow, CandidateKind::Shadow),
                ];
                for (version, kind) in wanted {
                    if version.is_empty() {
                        continue;
                    }
                    let record = source.record(&self.schema, Some((tenant_id, policy_id, version)));
                    let snapshot = self.record_snapshot(&record).await?;
                    let version = VersionRef {
                        tenant_id: tenant_id.clone(),
                        policy_id: policy_id.clone(),
                        version: version.clone(),
                    };
                    let counters = self.counters.get(&version, kind);
                    list.push(Candidate { version, kind, snapshot, counters });
                }
            }
            list.sort_by_key(|c| matches!(c.kind, CandidateKind::Shadow));
            if !list.is_empty() {
                candidates.insert(tenant_id.clone(), list);
            }
        }
        let _guard = self.install_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.rollout.load();
        if source.revision < current.revision {
            // A newer rollout was installed meanwhile; keep it.
            return Ok(current.active.clone());
        }
        self.engine.install(active.clone());
        self.rollout.store(Arc::new(Rollout {
            revision: source.revision,
            active: active.clone(),
            candidates,
        }));
        Ok(active)
    }

    /// Builds the snapshot of a record and keeps the record under its digest (if absent).
    async fn record_snapshot(&self, record: &SnapshotRecord) -> Result<Snapshot> {
        let snapshot = source::build(&self.engine, &self.schema, record)?;
        let digest = snapshot.digest_hex();
        let cached = self.snapshots.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&digest);
        if !cached {
            let key = snapshot_key(&digest);
            // Content-addressed: an existing record has the same content.
            let _outcome = self.store.txn(Txn::new().if_absent(key.clone()).put(key, encode(record))).await?;
            self.cache(&snapshot);
        }
        Ok(snapshot)
    }

    fn cache(&self, snapshot: &Snapshot) {
        let mut cache = self.snapshots.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= SNAPSHOT_CACHE {
            cache.clear();
        }
        cache.insert(snapshot.digest_hex(), snapshot.clone());
    }

    /// The active snapshot.
    pub fn active(&self) -> Snapshot {
        self.rollout.load().active.clone()
    }

    /// The snapshot with this hex digest, from memory or rebuilt from its stored record
    /// (every snapshot ever enforced, canary and shadow ones included, is stored).
    ///
    /// # Errors
    ///
    /// A store error, or `DATA_CORRUPTED` when the record does not rebuild to its digest.
    pub async fn snapshot_by_digest(&self, digest_hex: &str) -> Result<Option<Snapshot>> {
        let well_formed =
            digest_hex.len() == 64 && digest_hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Ok(None);
        }
        if let Some(snapshot) = self.snapshots.lock().unwrap_or_else(PoisonError::into_inner).get(digest_hex)
        {
            return Ok(Some(snapshot.clone()));
        }
        let key = snapshot_key(digest_hex);
        let Some(kv) = self.store.get(key.as_bytes()).await? else { return Ok(None) };
        let record: SnapshotRecord = decode(&kv.key, &kv.value)?;
        let snapshot = source::build(&self.engine, &self.schema, &record)?;
        if snapshot.digest_hex() != digest_hex {
            return Err(Error::corrupted(format!("snapshot `{digest_hex}` rebuilds to another digest")));
        }
        self.cache(&snapshot);
        Ok(Some(snapshot))
    }

    /// The enforced decision for `request`: the active snapshot's, or a canary's when the keyed
    /// hash of `request_id` falls in its share. Every shadow and canary version of the
    /// request's tenant is evaluated too, and each divergence from the active outcome is
    /// counted and recorded. `request_id` must be assigned by the Host, never taken from the
    /// caller, so no caller can steer around a canary.
    pub fn decide(&self, request: &Request, request_id: &str) -> LifecycleDecision {
        let rollout = self.rollout.load();
        let active = self.engine.decide_with(&rollout.active, request);
        let Some(candidates) = rollout.candidates.get(&request.tenant_id) else {
            return LifecycleDecision {
                decision: active,
                snapshot: rollout.active.clone(),
                canary: None,
                divergences: Vec::new(),
            };
        };
        let chosen = bucket(&self.canary_key, request_id);
        let mut enforced: Option<(crate::Decision, &Candidate)> = None;
        let mut divergences = Vec::new();
        let mut request_digest: Option<String> = None;
        for candidate in candidates {
            let decision = self.engine.decide_with(&candidate.snapshot, request);
            candidate.counters.evaluated();
            let mut is_enforced = false;
            if let CandidateKind::Canary { percent } = candidate.kind
                && enforced.is_none()
                && chosen < u64::from(percent) * (rollout::BUCKETS / 100)
            {
                candidate.counters.enforced();
                is_enforced = true;
            }
            if decision.allowed() != active.allowed() {
                candidate.counters.diverged();
                let digest = request_digest
                    .get_or_insert_with(|| {
                        let mut input = to_input(request.clone(), &rollout.active);
                        input.snapshot_digest.clear();
                        input_digest_hex(&input)
                    })
                    .clone();
                let divergence = Divergence {
                    at_ms: self.clock.now_ms(),
                    request_id: request_id.to_owned(),
                    request_digest: digest,
                    version: candidate.version.clone(),
                    kind: candidate.kind,
                    active_allowed: active.allowed(),
                    active_reason: active.reason().to_owned(),
                    candidate_allowed: decision.allowed(),
                    candidate_reason: decision.reason().to_owned(),
                    enforced: is_enforced,
                    active_digest: rollout.active.digest_hex(),
                    candidate_digest: candidate.snapshot.digest_hex(),
                };
                self.divergences.push(divergence.clone());
                divergences.push(divergence);
            }
            if is_enforced {
                enforced = Some((decision, candidate));
            }
        }
        match enforced {
            Some((decision, candidate)) => LifecycleDecision {
                decision,
                snapshot: candidate.snapshot.clone(),
                canary: Some(candidate.version.clone()),
                divergences,
            },
            None => LifecycleDecision {
                decision: active,
                snapshot: rollout.active.clone(),
                canary: None,
                divergences,
            },
        }
    }

    /// The most recent divergences (bounded), oldest first.
    pub fn divergences(&self) -> Vec<Divergence> {
        self.divergences.read()
    }

    /// The counters of every shadow and canary version seen since this process started.
    pub fn counters(&self) -> Vec<VersionCounters> {
        self.counters.read()
    }

    /// The counters of one version, if it was ever a shadow or canary here (summed over both).
    pub fn counters_of(&self, tenant_id: &str, policy_id: &str, version: &str) -> Option<VersionCounters> {
        let mut found: Option<VersionCounters> = None;
        for c in self.counters.read() {
            if c.version.tenant_id == tenant_id
                && c.version.policy_id == policy_id
                && c.version.version == version
            {
                match &mut found {
                    Some(sum) => {
                        sum.evaluated += c.evaluated;
                        sum.enforced += c.enforced;
                        sum.diverged += c.diverged;
                    }
                    None => found = Some(c),
                }
            }
        }
        found
    }

    fn audit(
        &self,
        event_type: &str,
        actor: &str,
        tenant: &str,
        resource: String,
        action: &str,
    ) -> AuditEvent {
        AuditEvent {
            event_id: new_id(self.clock.as_ref()),
            timestamp_ms: self.clock.now_ms(),
            event_type: event_type.to_owned(),
            principal_id: actor.to_owned(),
            tenant_id: tenant.to_owned(),
            resource,
            action: action.to_owned(),
            outcome: "SUCCESS".to_owned(),
            ..Default::default()
        }
    }

    async fn read_policy(&self, tenant: &str, policy_id: &str) -> Result<Option<ReadPolicy>> {
        let key = state_key(tenant, policy_id);
        let Some(kv) = self.store.get(key.as_bytes()).await? else { return Ok(None) };
        Ok(Some(ReadPolicy { rollout: decode(&kv.key, &kv.value)?, revision: kv.mod_revision }))
    }

    async fn read_version(
        &self,
        tenant: &str,
        policy_id: &str,
        version: &str,
    ) -> Result<Option<ReadVersion>> {
        let key = version_key(tenant, policy_id, version);
        let Some(kv) = self.store.get(key.as_bytes()).await? else { return Ok(None) };
        Ok(Some(ReadVersion { stored: decode(&kv.key, &kv.value)?, revision: kv.mod_revision }))
    }

    async fn require_version(&self, tenant: &str, policy_id: &str, version: &str) -> Result<ReadVersion> {
        self.read_version(tenant, policy_id, version)
            .await?
            .ok_or_else(|| version_not_found(tenant, policy_id, version))
    }

    /// The rollout of a policy.
    ///
    /// # Errors
    ///
    /// `POLICY_NOT_FOUND` when the policy has no version.
    pub async fn status(&self, tenant: &str, policy_id: &str) -> Result<PolicyStatus> {
        let read =
            self.read_policy(tenant, policy_id).await?.ok_or_else(|| policy_not_found(tenant, policy_id))?;
        Ok(PolicyStatus::from(&read.rollout))
    }

    /// One version of a policy.
    ///
    /// # Errors
    ///
    /// `POLICY_NOT_FOUND` when there is no such version.
    pub async fn version(&self, tenant: &str, policy_id: &str, version: &str) -> Result<VersionInfo> {
        VersionInfo::from_stored(&self.require_version(tenant, policy_id, version).await?.stored)
    }

    /// Every version of a policy, newest (highest semver) first.
    ///
    /// # Errors
    ///
    /// `POLICY_NOT_FOUND` when the policy has no version.
    pub async fn versions(&self, tenant: &str, policy_id: &str) -> Result<Vec<VersionInfo>> {
        let source = self.read_policy_source(tenant, policy_id).await?;
        if source.rollout.is_none() {
            return Err(policy_not_found(tenant, policy_id));
        }
        let mut out: Vec<(semver::Version, VersionInfo)> = Vec::with_capacity(source.versions.len());
        for (version, stored) in &source.versions {
            out.push((parse_version(version)?, VersionInfo::from_stored(stored)?));
        }
        out.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(out.into_iter().map(|(_, info)| info).collect())
    }

    async fn read_policy_source(&self, tenant: &str, policy_id: &str) -> Result<PolicySource> {
        let revision = self.store.current_revision().await?;
        let tenant_source = source::read_tenant(self.store.as_ref(), tenant, revision).await?;
        Ok(tenant_source.policies.get(policy_id).cloned().unwrap_or_default())
    }

    /// The ids and rollouts of a tenant's policies (deleted ones included), by id.
    ///
    /// # Errors
    ///
    /// A store error.
    pub async fn policies(&self, tenant: &str) -> Result<Vec<(String, PolicyStatus)>> {
        let revision = self.store.current_revision().await?;
        let tenant_source = source::read_tenant(self.store.as_ref(), tenant, revision).await?;
        Ok(tenant_source
            .policies
            .iter()
            .filter_map(|(id, p)| p.rollout.as_ref().map(|r| (id.clone(), PolicyStatus::from(r))))
            .collect())
    }

    /// Checks a policy against the lifecycle's schema and the engine's functions.
    ///
    /// # Errors
    ///
    /// `VALIDATION_FAILED` with every problem in the details.
    pub fn check(&self, policy: &PolicyDefinition) -> Result<()> {
        let mut builder = SnapshotBuilder::new(0, self.schema.clone());
        builder.add_policy("_check", policy.clone())?;
        self.engine.build(&builder)?;
        Ok(())
    }

    /// Writes a new, immutable version of a policy in `draft`. An empty `policy.version`
    /// takes the next major version (`1.0.0` for a new policy); a given one must be a semver
    /// version above every existing one. Returns the stored version and its audit event
    /// (`POLICY_CREATE` for a policy's first version, `POLICY_UPDATE` after).
    ///
    /// # Errors
    ///
    /// `INVALID_ARGUMENT` (no id, bad version), `VALIDATION_FAILED`, `FAILED_PRECONDITION`
    /// (the policy was deleted), `CONFLICT` (written concurrently).
    pub async fn create_version(
        &self,
        actor: &str,
        tenant: &str,
        mut policy: PolicyDefinition,
    ) -> Result<(VersionInfo, AuditEvent)> {
        if policy.policy_id.is_empty() {
            return Err(Error::invalid_argument("a policy needs a `policy_id`"));
        }
        let existing = self.read_policy(tenant, &policy.policy_id).await?;
        if existing.as_ref().is_some_and(|e| e.rollout.deleted) {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("policy `{}` was deleted", policy.policy_id),
            ));
        }
        let latest = match &existing {
            Some(e) if !e.rollout.latest.is_empty() => Some(parse_version(&e.rollout.latest)?),
            _ => None,
        };
        let version = if policy.version.is_empty() {
            semver::Version::new(latest.as_ref().map_or(1, |l| l.major + 1), 0, 0)
        } else {
            let wanted = parse_version(&policy.version)?;
            if let Some(latest) = &latest
                && wanted <= *latest
            {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "version `{wanted}` is not above the latest version `{latest}`; versions are immutable"
                    ),
                ));
            }
            wanted
        };
        let now = self.clock.now_ms();
        policy.version = version.to_string();
        policy.created_at = existing.as_ref().map_or(now, |e| e.rollout.created_at);
        policy.updated_at = now;
        policy.created_by = actor.to_owned();
        self.check(&policy)?;
        let stored = StoredVersion {
            policy: Some(policy.clone()),
            state: VersionState::Draft.as_str().to_owned(),
            state_changed_at: now,
            state_changed_by: actor.to_owned(),
            ..Default::default()
        };
        let mut rollout = existing.as_ref().map(|e| e.rollout.clone()).unwrap_or_default();
        if existing.is_none() {
            rollout.created_at = now;
        }
        rollout.latest = policy.version.clone();
        let state = state_key(tenant, &policy.policy_id);
        let vkey = version_key(tenant, &policy.policy_id, &policy.version);
        let txn = match &existing {
            Some(e) => Txn::new().if_revision(state.clone(), e.revision),
            None => Txn::new().if_absent(state.clone()),
        };
        let txn = txn
            .if_absent(vkey.clone())
            .put(vkey, encode(&stored))
            .put(state, encode(&rollout))
            .put(tenant_key(tenant), Vec::new());
        self.commit(txn, "the policy").await?;
        let event_type = if existing.is_none() { "POLICY_CREATE" } else { "POLICY_UPDATE" };
        let mut audit =
            self.audit(event_type, actor, tenant, format!("policy:{}", policy.policy_id), "create_version");
        audit.metadata.insert("version".into(), policy.version.clone());
        audit.metadata.insert("state".into(), VersionState::Draft.as_str().into());
        Ok((VersionInfo::from_stored(&stored)?, audit))
    }

    async fn commit(&self, txn: Txn, what: &str) -> Result<Revision> {
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision } => Ok(revision),
            TxnOutcome::CompareFailed { .. } => Err(conflict(what)),
        }
    }

    /// Approves a draft version: the approval hook that governance will drive. `permitted` is
    /// the caller's permission to approve policies (checked by the Host); the approver and
    /// time are recorded. Returns a `GOVERNANCE_APPROVAL_DECISION` audit event.
    ///
    /// # Errors
    ///
    /// `INSUFFICIENT_PERMISSIONS`, `POLICY_NOT_FOUND`, `FAILED_PRECONDITION` (not a draft),
    /// `CONFLICT`.
    pub async fn approve(
        &self,
        approver: &str,
        permitted: bool,
        tenant: &str,
        policy_id: &str,
        version: &str,
    ) -> Result<Change> {
        if !permitted || approver.is_empty() {
            return Err(Error::new(
                ErrorCode::InsufficientPermissions,
                format!("`{approver}` may not approve policies"),
            )
            .with_principal(approver)
            .with_tenant(tenant));
        }
        let read = self.require_version(tenant, policy_id, version).await?;
        let from = read.stored.state()?;
        if !from.can_become(VersionState::Approved) {
            return Err(illegal(policy_id, version, from, VersionState::Approved));
        }
        let now = self.clock.now_ms();
        let mut stored = read.stored;
        stored.state = VersionState::Approved.as_str().to_owned();
        stored.approved_by = approver.to_owned();
        stored.approved_at = now;
        stored.state_changed_at = now;
        stored.state_changed_by = approver.to_owned();
        let key = version_key(tenant, policy_id, version);
        let revision = self
            .commit(
                Txn::new().if_revision(key.clone(), read.revision).put(key, encode(&stored)),
                "the version",
            )
            .await?;
        let digest = self.active().digest_hex();
        let status = self.status(tenant, policy_id).await?;
        let mut audit = self.audit(
            "GOVERNANCE_APPROVAL_DECISION",
            approver,
            tenant,
            format!("policy:{policy_id}"),
            "approve",
        );
        audit.metadata.insert("artifact_type".into(), "POLICY_V1".into());
        audit.metadata.insert("version".into(), version.to_owned());
        audit.metadata.insert("decision".into(), "APPROVE".into());
        Ok(Change {
            status,
            changes: vec![StateChange { version: version.to_owned(), from, to: VersionState::Approved }],
            revision,
            digest_before: digest.clone(),
            digest_after: digest,
            audit,
        })
    }

    /// Promotes an approved (or shadow, or canary) version to `stage`, in one transaction
    /// that checks every record it read: the version replaced in that stage is retired, the
    /// version leaves any other stage, and a replaced active version is remembered for
    /// [`rollback`](Self::rollback). Then the snapshots are rebuilt and installed.
    ///
    /// # Errors
    ///
    /// `POLICY_NOT_FOUND`, `FAILED_PRECONDITION` (illegal transition, deleted policy),
    /// `INVALID_ARGUMENT` (a canary share above 100), `CONFLICT` (a concurrent change).
    pub async fn promote(
        &self,
        actor: &str,
        tenant: &str,
        policy_id: &str,
        version: &str,
        stage: Stage,
    ) -> Result<Change> {
        let to = match stage {
            Stage::Shadow => VersionState::Shadow,
            Stage::Canary(percent) if percent > 100 => {
                return Err(Error::invalid_argument(format!("a canary share is 0 to 100 %, not {percent}")));
            }
            Stage::Canary(_) => VersionState::Canary,
            Stage::Active => VersionState::Active,
        };
        let mut plan = self.plan(tenant, policy_id, Some(version)).await?;
        let from = plan.state_of(version)?;
        if !from.can_become(to) {
            return Err(illegal(policy_id, version, from, to));
        }
        plan.leave_stages(version);
        match stage {
            Stage::Active => {
                let old = std::mem::take(&mut plan.rollout.active);
                if !old.is_empty() && old != version {
                    plan.set(&old, VersionState::Retired, 0)?;
                    plan.rollout.previous_active.push(old);
                }
                plan.rollout.active = version.to_owned();
                plan.set(version, VersionState::Active, 0)?;
            }
            Stage::Shadow => {
                let old = std::mem::take(&mut plan.rollout.shadow);
                if !old.is_empty() && old != version {
                    plan.set(&old, VersionState::Retired, 0)?;
                }
                plan.rollout.shadow = version.to_owned();
                plan.set(version, VersionState::Shadow, 0)?;
            }
            Stage::Canary(percent) => {
                let old = std::mem::take(&mut plan.rollout.canary);
                if !old.is_empty() && old != version {
                    plan.set(&old, VersionState::Retired, 0)?;
                }
                plan.rollout.canary = version.to_owned();
                plan.rollout.canary_percent = percent;
                plan.set(version, VersionState::Canary, percent)?;
            }
        }
        let action = match stage {
            Stage::Shadow => "promote_shadow".to_owned(),
            Stage::Canary(p) => format!("promote_canary_{p}"),
            Stage::Active => "promote_active".to_owned(),
        };
        self.apply(actor, tenant, policy_id, plan, &action).await
    }

    /// Retires a version: it stops applying in any stage. Retiring the active version leaves
    /// the policy without an active version (rollback can restore it).
    ///
    /// # Errors
    ///
    /// As [`promote`](Self::promote).
    pub async fn retire(&self, actor: &str, tenant: &str, policy_id: &str, version: &str) -> Result<Change> {
        let mut plan = self.plan(tenant, policy_id, Some(version)).await?;
        let from = plan.state_of(version)?;
        if !from.can_become(VersionState::Retired) {
            return Err(illegal(policy_id, version, from, VersionState::Retired));
        }
        if plan.rollout.active == version {
            plan.rollout.active.clear();
            plan.rollout.previous_active.push(version.to_owned());
        }
        plan.leave_stages(version);
        plan.set(version, VersionState::Retired, 0)?;
        self.apply(actor, tenant, policy_id, plan, "retire").await
    }

    /// Restores the previous active version of a policy (the active one, if any, is
    /// retired), in one transaction; a policy whose first active version is rolled back stops
    /// applying. With nothing else changed since, the active snapshot's digest is exactly the
    /// one before the promotion undone.
    ///
    /// # Errors
    ///
    /// `FAILED_PRECONDITION` when there is nothing to roll back (no active version and no
    /// earlier one); otherwise as [`promote`](Self::promote).
    pub async fn rollback(&self, actor: &str, tenant: &str, policy_id: &str) -> Result<Change> {
        let mut plan = self.plan(tenant, policy_id, None).await?;
        let previous = plan.rollout.previous_active.pop();
        if previous.is_none() && plan.rollout.active.is_empty() {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("policy `{policy_id}` has no active version to roll back"),
            ));
        }
        if let Some(previous) = &previous {
            plan.state_of(previous)?;
        }
        let current = std::mem::take(&mut plan.rollout.active);
        if !current.is_empty() {
            plan.set(&current, VersionState::Retired, 0)?;
        }
        if let Some(previous) = previous {
            plan.leave_stages(&previous);
            plan.rollout.active = previous.clone();
            plan.set(&previous, VersionState::Active, 0)?;
        }
        self.apply(actor, tenant, policy_id, plan, "rollback").await
    }

    /// Deletes a policy: it stops applying at once (its active, shadow and canary versions
    /// are retired); its versions stay readable. `expected_version`, when not empty, must be
    /// the latest version.
    ///
    /// # Errors
    ///
    /// `POLICY_NOT_FOUND`, `CONFLICT` (another latest version, or a concurrent change).
    pub async fn delete(
        &self,
        actor: &str,
        tenant: &str,
        policy_id: &str,
        expected_version: &str,
    ) -> Result<Change> {
        let mut plan = self.plan(tenant, policy_id, None).await?;
        if !expected_version.is_empty() && plan.rollout.latest != expected_version {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "policy `{policy_id}` is at version `{}`, not `{expected_version}`",
                    plan.rollout.latest
                ),
            ));
        }
        for version in [plan.rollout.active.clone(), plan.rollout.shadow.clone(), plan.rollout.canary.clone()]
        {
            if !version.is_empty() {
                plan.set(&version, VersionState::Retired, 0)?;
            }
        }
        if !plan.rollout.active.is_empty() {
            let active = std::mem::take(&mut plan.rollout.active);
            plan.rollout.previous_active.push(active);
        }
        plan.rollout.shadow.clear();
        plan.rollout.canary.clear();
        plan.rollout.canary_percent = 0;
        plan.rollout.deleted = true;
        self.apply(actor, tenant, policy_id, plan, "delete").await
    }

    async fn plan(&self, tenant: &str, policy_id: &str, extra: Option<&str>) -> Result<Plan> {
        let read =
            self.read_policy(tenant, policy_id).await?.ok_or_else(|| policy_not_found(tenant, policy_id))?;
        if read.rollout.deleted {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("policy `{policy_id}` was deleted"),
            ));
        }
        let mut versions = HashMap::new();
        let wanted: Vec<String> = [&read.rollout.active, &read.rollout.shadow, &read.rollout.canary]
            .into_iter()
            .chain(read.rollout.previous_active.last())
            .filter(|v| !v.is_empty())
            .cloned()
            .collect();
        for version in wanted {
            if let Some(v) = self.read_version(tenant, policy_id, &version).await? {
                versions.insert(version, v);
            }
        }
        if let Some(version) = extra
            && !versions.contains_key(version)
        {
            versions.insert(version.to_owned(), self.require_version(tenant, policy_id, version).await?);
        }
        Ok(Plan {
            tenant: tenant.to_owned(),
            policy_id: policy_id.to_owned(),
            state_revision: read.revision,
            rollout: read.rollout,
            versions,
            changes: Vec::new(),
            now: self.clock.now_ms(),
        })
    }

    async fn apply(
        &self,
        actor: &str,
        tenant: &str,
        policy_id: &str,
        mut plan: Plan,
        action: &str,
    ) -> Result<Change> {
        plan.resolve(actor);
        let digest_before = self.active().digest_hex();
        let state = state_key(tenant, policy_id);
        let mut txn =
            Txn::new().if_revision(state.clone(), plan.state_revision).put(state, encode(&plan.rollout));
        for (version, read) in &plan.versions {
            if plan.changes.iter().any(|c| &c.version == version) {
                let key = version_key(tenant, policy_id, version);
                txn = txn.if_revision(key.clone(), read.revision).put(key, encode(&read.stored));
            }
        }
        let revision = self.commit(txn, "the policy's rollout").await?;
        let active = self.load().await?;
        let mut audit = self.audit("POLICY_UPDATE", actor, tenant, format!("policy:{policy_id}"), action);
        for change in &plan.changes {
            audit
                .metadata
                .insert(format!("version.{}", change.version), format!("{} -> {}", change.from, change.to));
        }
        audit.metadata.insert("snapshot_digest_before".into(), digest_before.clone());
        audit.metadata.insert("snapshot_digest".into(), active.digest_hex());
        Ok(Change {
            status: PolicyStatus::from(&plan.rollout),
            changes: plan.changes,
            revision,
            digest_before,
            digest_after: active.digest_hex(),
            audit,
        })
    }

    /// Stores a role of a tenant (replacing one of the same id) and reinstalls the snapshots.
    /// The tenant's role graph must still resolve (no cycle, known parents).
    ///
    /// # Errors
    ///
    /// `INVALID_ARGUMENT` or `VALIDATION_FAILED` for a bad role, a store error.
    pub async fn put_role(&self, actor: &str, tenant: &str, mut role: RoleDefinition) -> Result<AuditEvent> {
        if role.role_id.is_empty() {
            return Err(Error::invalid_argument("a role needs a `role_id`"));
        }
        let revision = self.store.current_revision().await?;
        let mut content = source::read_tenant(self.store.as_ref(), tenant, revision).await?;
        let now = self.clock.now_ms();
        role.tenant_id = tenant.to_owned();
        role.updated_at = now;
        if let Some(old) = content.roles.get(&role.role_id) {
            role.created_at = old.created_at;
            role.created_by.clone_from(&old.created_by);
        } else {
            role.created_at = now;
            role.created_by = actor.to_owned();
        }
        content.roles.insert(role.role_id.clone(), role.clone());
        self.check_roles(tenant, &content)?;
        let key = role_key(tenant, &role.role_id);
        self.commit(Txn::new().put(key, encode(&role)).put(tenant_key(tenant), Vec::new()), "the role")
            .await?;
        self.load().await?;
        Ok(self.audit("POLICY_UPDATE", actor, tenant, format!("role:{}", role.role_id), "put_role"))
    }

    /// Assigns a role to a principal in a tenant and reinstalls the snapshots.
    ///
    /// # Errors
    ///
    /// `NOT_FOUND` when the role is not defined, a store error.
    pub async fn assign_role(
        &self,
        actor: &str,
        tenant: &str,
        principal_id: &str,
        role_id: &str,
    ) -> Result<AuditEvent> {
        let role = role_key(tenant, role_id);
        let Some(kv) = self.store.get(role.as_bytes()).await? else {
            return Err(Error::not_found(format!("role `{role_id}` not found")).with_tenant(tenant));
        };
        let key = assignment_key(tenant, principal_id, role_id);
        let txn = Txn::new().if_revision(role, kv.mod_revision).put(key, Vec::new());
        self.commit(txn, "the role").await?;
        self.load().await?;
        let mut audit = self.audit("POLICY_UPDATE", actor, tenant, format!("role:{role_id}"), "assign_role");
        audit.metadata.insert("assignee".into(), principal_id.to_owned());
        Ok(audit)
    }

    /// The roles assigned to a principal in a tenant (directly, without the roles they
    /// inherit), sorted, as stored.
    ///
    /// # Errors
    ///
    /// A store error.
    pub async fn assigned_roles(&self, tenant: &str, principal_id: &str) -> Result<Vec<String>> {
        let prefix =
            format!("{}assignments/{}/", records::roles_prefix(tenant), records::escape(principal_id));
        let page = self.store.scan_all(prefix.as_bytes(), MAX_ASSIGNMENTS_PER_PRINCIPAL).await?;
        let mut roles: Vec<String> = page
            .kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(prefix.as_bytes()))
            .filter_map(|rest| std::str::from_utf8(rest).ok())
            .map(records::unescape)
            .collect();
        roles.sort();
        Ok(roles)
    }

    /// Removes a role from a principal in a tenant and reinstalls the snapshots.
    ///
    /// # Errors
    ///
    /// A store error.
    pub async fn unassign_role(
        &self,
        actor: &str,
        tenant: &str,
        principal_id: &str,
        role_id: &str,
    ) -> Result<AuditEvent> {
        self.commit(Txn::new().delete(assignment_key(tenant, principal_id, role_id)), "the assignment")
            .await?;
        self.load().await?;
        let mut audit =
            self.audit("POLICY_UPDATE", actor, tenant, format!("role:{role_id}"), "unassign_role");
        audit.metadata.insert("assignee".into(), principal_id.to_owned());
        Ok(audit)
    }

    /// Sets an organization-wide attribute (declared in the schema) and reinstalls.
    ///
    /// # Errors
    ///
    /// `CONFIGURATION_ERROR` when it is not declared or has another type, a store error.
    pub async fn set_organization_attribute(
        &self,
        actor: &str,
        name: &str,
        value: Value,
    ) -> Result<AuditEvent> {
        let mut builder = SnapshotBuilder::new(0, self.schema.clone());
        builder.set_organization_attribute(name, value.clone())?;
        self.commit(Txn::new().put(organization_key(name), encode(&value)), "the attribute").await?;
        self.load().await?;
        Ok(self.audit("POLICY_UPDATE", actor, records::SYSTEM_TENANT, format!("organization:{name}"), "set"))
    }

    /// The problems of a policy under the lifecycle's schema (empty: valid).
    ///
    /// # Errors
    ///
    /// A problem other than the policy's own (none today).
    pub fn validation_errors(&self, policy: &PolicyDefinition) -> Result<Vec<crate::ValidationError>> {
        let mut builder = SnapshotBuilder::new(0, self.schema.clone());
        builder.add_policy("_check", policy.clone())?;
        match self.engine.build(&builder) {
            Ok(_) => Ok(Vec::new()),
            Err(crate::PolicyError::InvalidPolicy { errors, .. }) => Ok(errors),
            Err(other) => Err(other.into()),
        }
    }

    /// The active snapshot as it would be with `policy` in place of the tenant's policy of
    /// the same id (or added, when the tenant has none): a candidate for tests and replay.
    /// It is not recorded and not installed.
    ///
    /// # Errors
    ///
    /// `VALIDATION_FAILED` when the policy does not build, a store error.
    pub async fn candidate_snapshot(&self, tenant: &str, policy: &PolicyDefinition) -> Result<Snapshot> {
        let source = source::read_all(self.store.as_ref()).await?;
        let mut record = source.record(&self.schema, None);
        match record.tenants.iter_mut().find(|t| t.tenant_id == tenant) {
            Some(content) => {
                content.policies.retain(|p| p.policy_id != policy.policy_id);
                content.policies.push(policy.clone());
            }
            None => record.tenants.push(records::StoredTenant {
                tenant_id: tenant.to_owned(),
                policies: vec![policy.clone()],
                ..Default::default()
            }),
        }
        source::build(&self.engine, &self.schema, &record)
    }

    fn check_roles(&self, tenant: &str, content: &source::TenantSource) -> Result<()> {
        let mut builder = SnapshotBuilder::new(0, self.schema.clone());
        for role in content.roles.values() {
            builder.add_role(tenant, role.clone())?;
        }
        for a in &content.assignments {
            builder.assign_role(tenant, &a.principal_id, &a.role_id);
        }
        self.engine.build(&builder)?;
        Ok(())
    }
}

/// A change of one policy's rollout being prepared.
struct Plan {
    tenant: String,
    policy_id: String,
    state_revision: Revision,
    rollout: StoredRollout,
    versions: HashMap<String, ReadVersion>,
    changes: Vec<StateChange>,
    now: u64,
}

impl Plan {
    /// The state of a version the plan read.
    fn state_of(&self, version: &str) -> Result<VersionState> {
        match self.versions.get(version) {
            Some(read) => read.stored.state(),
            None => Err(version_not_found(&self.tenant, &self.policy_id, version)),
        }
    }

    /// The version leaves the shadow and canary stages it holds.
    fn leave_stages(&mut self, version: &str) {
        if self.rollout.shadow == version {
            self.rollout.shadow.clear();
        }
        if self.rollout.canary == version {
            self.rollout.canary.clear();
            self.rollout.canary_percent = 0;
        }
    }

    fn set(&mut self, version: &str, to: VersionState, percent: u32) -> Result<()> {
        let read = self
            .versions
            .get_mut(version)
            .ok_or_else(|| version_not_found(&self.tenant, &self.policy_id, version))?;
        let from = read.stored.state()?;
        read.stored.state = to.as_str().to_owned();
        read.stored.canary_percent = percent;
        read.stored.state_changed_at = self.now;
        match self.changes.iter_mut().find(|c| c.version == version) {
            Some(change) => change.to = to,
            None => self.changes.push(StateChange { version: version.to_owned(), from, to }),
        }
        Ok(())
    }

    fn resolve(&mut self, actor: &str) {
        self.changes.retain(|c| c.from != c.to || c.to == VersionState::Canary);
        for change in &self.changes {
            if let Some(read) = self.versions.get_mut(&change.version) {
                read.stored.state_changed_by = actor.to_owned();
            }
        }
    }
}
