//! The Session Manager: sessions of authenticated principals, each in its principal's tenant
//! for its whole life.
//!
//! Sessions are written to the state store when created and destroyed; their last-access
//! time lives in memory (it changes on every call) and is checkpointed by
//! [`Sessions::checkpoint`], not written per call.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use aesp_core::{
    Clock, Error, ErrorCode, Result, StateStore, StateStoreExt as _, new_id,
    proto::v1::{AuditLevel, EnterpriseSession},
};
use tokio::sync::Notify;

use crate::{
    caller::Caller,
    records::{self, check_name, session_key, shorten},
};

const SHARDS: usize = 32;

/// A live session.
#[derive(Debug)]
pub struct SessionEntry {
    session: EnterpriseSession,
    ttl_ms: u64,
    /// The hard limit from the security context (0 = none).
    hard_expiry_ms: u64,
    last_access_ms: AtomicU64,
    checkpointed_access_ms: AtomicU64,
    active: AtomicU32,
    closing: AtomicBool,
    idle: Notify,
}

impl SessionEntry {
    /// The session as created.
    pub fn session(&self) -> &EnterpriseSession {
        &self.session
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.session.session_id
    }

    /// Its tenant.
    pub fn tenant_id(&self) -> &str {
        &self.session.tenant_id
    }

    /// Its principal.
    pub fn principal_id(&self) -> &str {
        &self.session.principal_id
    }

    /// When it expires unless used before (Unix ms).
    pub fn expires_at_ms(&self) -> u64 {
        let sliding = self.last_access_ms.load(Ordering::Relaxed).saturating_add(self.ttl_ms);
        if self.hard_expiry_ms > 0 { sliding.min(self.hard_expiry_ms) } else { sliding }
    }

    /// Invocations running in it now.
    pub fn active_invocations(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// The session as it stands now (with the current access time and usage).
    pub fn to_proto(&self) -> EnterpriseSession {
        let mut s = self.session.clone();
        s.last_accessed_at = self.last_access_ms.load(Ordering::Relaxed);
        s.expires_at = self.expires_at_ms();
        s.resource_usage.get_or_insert_default().active_invocations = self.active_invocations();
        s
    }
}

/// Counts an invocation as active in its session until dropped.
#[derive(Debug)]
pub struct ActiveInvocation {
    entry: Arc<SessionEntry>,
}

impl ActiveInvocation {
    /// The session the invocation runs in.
    pub fn session(&self) -> &Arc<SessionEntry> {
        &self.entry
    }
}

impl Drop for ActiveInvocation {
    fn drop(&mut self) {
        if self.entry.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.entry.idle.notify_waiters();
        }
    }
}

/// Options of the Session Manager.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The time to live of a session whose request names none.
    pub default_ttl: Duration,
    /// The longest time to live a request may ask for.
    pub max_ttl: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { default_ttl: Duration::from_secs(30 * 60), max_ttl: Duration::from_secs(24 * 3600) }
    }
}

/// What a session creation asks for.
#[derive(Clone, Debug, Default)]
pub struct NewSession {
    /// A suggested id (used if free and well-formed); empty for a new UUID v7.
    pub session_id: String,
    /// Attributes of the session.
    pub metadata: BTreeMap<String, String>,
    /// Its time to live; zero for the default.
    pub ttl: Duration,
}

/// The sessions of a Host.
#[derive(Debug)]
pub(crate) struct Sessions {
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    options: SessionOptions,
    shards: [RwLock<HashMap<String, Arc<SessionEntry>>>; SHARDS],
    per_tenant: Mutex<HashMap<String, u32>>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Sessions {
    /// Loads the sessions of `tenants` from the store, dropping (and deleting) expired ones.
    pub(crate) async fn load(
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
        options: SessionOptions,
        tenants: impl IntoIterator<Item = String>,
    ) -> Result<Self> {
        let sessions = Self {
            store,
            clock,
            options,
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            per_tenant: Mutex::new(HashMap::new()),
        };
        let now = sessions.clock.now_ms();
        for tenant in tenants {
            let prefix = format!("t/{tenant}/sessions/");
            for (key, stored) in
                records::read_all::<EnterpriseSession>(sessions.store.as_ref(), &prefix).await?
            {
                let entry = Arc::new(entry_from(stored.value));
                if entry.expires_at_ms() <= now {
                    sessions.store.delete(key.as_bytes()).await?;
                    continue;
                }
                sessions.insert(entry);
            }
        }
        Ok(sessions)
    }

    fn shard(&self, id: &str) -> &RwLock<HashMap<String, Arc<SessionEntry>>> {
        let hash = id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        #[expect(clippy::indexing_slicing, reason = "the index is taken modulo the number of shards")]
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    fn insert(&self, entry: Arc<SessionEntry>) {
        *self
            .per_tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(entry.tenant_id().to_owned())
            .or_default() += 1;
        self.shard(entry.id())
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(entry.id().to_owned(), entry);
    }

    fn remove(&self, id: &str) -> Option<Arc<SessionEntry>> {
        let removed = self.shard(id).write().unwrap_or_else(PoisonError::into_inner).remove(id)?;
        let mut counts = self.per_tenant.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(removed.tenant_id()) {
            *n = n.saturating_sub(1);
        }
        Some(removed)
    }

    /// Sessions open in `tenant`.
    #[cfg(test)]
    pub(crate) fn count(&self, tenant: &str) -> u32 {
        self.per_tenant.lock().unwrap_or_else(PoisonError::into_inner).get(tenant).copied().unwrap_or(0)
    }

    /// Creates a session for `caller` in the caller's tenant; `max_sessions` is the tenant's
    /// quota (0 = none).
    pub(crate) async fn create(
        &self,
        caller: &Caller,
        request: NewSession,
        max_sessions: u32,
    ) -> Result<Arc<SessionEntry>> {
        let tenant = caller.tenant_id();
        let ttl = if request.ttl.is_zero() { self.options.default_ttl } else { request.ttl };
        if ttl > self.options.max_ttl {
            return Err(Error::invalid_argument(format!(
                "a session may live at most {} s, not {} s",
                self.options.max_ttl.as_secs(),
                ttl.as_secs()
            )));
        }
        let id = if request.session_id.is_empty() {
            new_id(self.clock.as_ref())
        } else {
            check_name("session id", &request.session_id)?;
            request.session_id
        };
        // Reserve a place in the quota before writing, so concurrent creations cannot overshoot.
        {
            let mut counts = self.per_tenant.lock().unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(tenant.to_owned()).or_default();
            if max_sessions > 0 && *count >= max_sessions {
                return Err(Error::new(
                    ErrorCode::QuotaExceeded,
                    format!("tenant `{tenant}` has its quota of {max_sessions} sessions open"),
                )
                .with_tenant(tenant)
                .with_remediation("destroy idle sessions, or ask for a larger quota"));
            }
            *count += 1;
        }
        let release = || {
            let mut counts = self.per_tenant.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = counts.get_mut(tenant) {
                *n = n.saturating_sub(1);
            }
        };
        if self.find(&id).is_some() {
            release();
            return Err(Error::new(ErrorCode::AlreadyExists, format!("session `{}` exists", shorten(&id))));
        }
        let now = self.clock.now_ms();
        let context = caller.context();
        let session = EnterpriseSession {
            session_id: id.clone(),
            created_at: now,
            last_accessed_at: now,
            ttl_seconds: ttl.as_secs(),
            metadata: request.metadata,
            tenant_id: tenant.to_owned(),
            organization_id: context.organization_id.clone(),
            business_unit: context.business_unit.clone(),
            security_context: Some(context.clone()),
            principal_id: caller.principal_id().to_owned(),
            roles: context.roles.clone(),
            permissions: context.permissions.clone(),
            security_clearance: context.security_clearance.clone(),
            data_classification: context.data_classification.clone(),
            audit_level: AuditLevel::Standard as i32,
            ..EnterpriseSession::default()
        };
        let mut entry = entry_from(session);
        entry.ttl_ms = ms(ttl);
        entry.session.expires_at = entry.expires_at_ms();
        if let Err(e) =
            records::write(self.store.as_ref(), &session_key(tenant, &id), None, &entry.session).await
        {
            release();
            return Err(e);
        }
        let entry = Arc::new(entry);
        // The quota place was reserved above; insert without counting again.
        self.shard(&id).write().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::clone(&entry));
        Ok(entry)
    }

    fn find(&self, id: &str) -> Option<Arc<SessionEntry>> {
        self.shard(id).read().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    /// The session `id` as `caller` may see it: in the caller's tenant (another tenant's
    /// session is `TENANT_ACCESS_DENIED`), not expired (`SESSION_EXPIRED`).
    pub(crate) fn get(&self, caller: &Caller, id: &str) -> Result<Arc<SessionEntry>> {
        self.get_at(caller, id, self.clock.now_ms())
    }

    /// [`get`](Self::get) at `now` (milliseconds since the epoch).
    fn get_at(&self, caller: &Caller, id: &str, now: u64) -> Result<Arc<SessionEntry>> {
        let entry = self
            .find(id)
            .ok_or_else(|| Error::not_found(format!("session `{}` does not exist", shorten(id))))?;
        if entry.tenant_id() != caller.tenant_id() {
            return Err(Error::new(ErrorCode::TenantAccessDenied, "the session belongs to another tenant")
                .with_tenant(caller.tenant_id())
                .with_principal(caller.principal_id())
                .with_security_implication("a cross-tenant session access was attempted")
                .escalate());
        }
        if entry.expires_at_ms() <= now {
            return Err(Error::new(
                ErrorCode::SessionExpired,
                format!("session `{}` has expired", shorten(id)),
            )
            .with_remediation("create a new session"));
        }
        Ok(entry)
    }

    /// The session for an invocation by `caller` at `now` (the pipeline's one reading of the
    /// clock for its checks): [`get`](Self::get), plus the same principal, not closing; counts
    /// the invocation active and refreshes the session's last access.
    pub(crate) fn begin_invocation(&self, caller: &Caller, id: &str, now: u64) -> Result<ActiveInvocation> {
        let entry = self.get_at(caller, id, now)?;
        if entry.principal_id() != caller.principal_id() {
            return Err(Error::new(
                ErrorCode::AuthorizationDenied,
                "the session belongs to another principal",
            )
            .with_tenant(caller.tenant_id())
            .with_principal(caller.principal_id()));
        }
        entry.active.fetch_add(1, Ordering::AcqRel);
        let guard = ActiveInvocation { entry };
        let entry = &guard.entry;
        if entry.closing.load(Ordering::Acquire) {
            return Err(Error::new(ErrorCode::FailedPrecondition, "the session is being destroyed"));
        }
        // Written only when it moves on: the calls of one millisecond share the cache line.
        if entry.last_access_ms.load(Ordering::Relaxed) < now {
            entry.last_access_ms.fetch_max(now, Ordering::Relaxed);
        }
        Ok(guard)
    }

    /// Destroys a session of the caller's tenant. Without `force`, waits up to `wait` for its
    /// active invocations to finish (new ones are refused meanwhile) and fails if they do not.
    pub(crate) async fn destroy(
        &self,
        caller: &Caller,
        id: &str,
        force: bool,
        wait: Duration,
    ) -> Result<EnterpriseSession> {
        let entry = self.get(caller, id).or_else(|e| match e.code() {
            ErrorCode::SessionExpired => self.find(id).ok_or(e),
            _ => Err(e),
        })?;
        entry.closing.store(true, Ordering::Release);
        if !force {
            let idle = async {
                loop {
                    let notified = entry.idle.notified();
                    if entry.active_invocations() == 0 {
                        return;
                    }
                    notified.await;
                }
            };
            if tokio::time::timeout(wait, idle).await.is_err() {
                entry.closing.store(false, Ordering::Release);
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!("session `{id}` still has {} active invocations", entry.active_invocations()),
                )
                .with_remediation("retry later, or destroy with force"));
            }
        }
        self.store.delete(session_key(entry.tenant_id(), id).as_bytes()).await?;
        self.remove(id);
        Ok(entry.to_proto())
    }

    /// The sessions of `tenant`.
    pub(crate) fn list(&self, tenant: &str) -> Vec<Arc<SessionEntry>> {
        let mut all: Vec<Arc<SessionEntry>> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .filter(|e| e.tenant_id() == tenant)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Writes the last-access time of every session used since the last checkpoint, and
    /// removes expired sessions; returns how many sessions were written and removed.
    pub(crate) async fn checkpoint(&self) -> Result<(usize, usize)> {
        let now = self.clock.now_ms();
        let all: Vec<Arc<SessionEntry>> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect::<Vec<_>>()
            })
            .collect();
        let (mut written, mut removed) = (0, 0);
        for entry in all {
            let key = session_key(entry.tenant_id(), entry.id());
            if entry.expires_at_ms() <= now && entry.active_invocations() == 0 {
                self.store.delete(key.as_bytes()).await?;
                self.remove(entry.id());
                removed += 1;
                continue;
            }
            let access = entry.last_access_ms.load(Ordering::Relaxed);
            if access != entry.checkpointed_access_ms.load(Ordering::Relaxed) {
                self.store.put(key.as_bytes(), &prost::Message::encode_to_vec(&entry.to_proto())).await?;
                entry.checkpointed_access_ms.store(access, Ordering::Relaxed);
                written += 1;
            }
        }
        Ok((written, removed))
    }
}

fn entry_from(session: EnterpriseSession) -> SessionEntry {
    let hard = session.security_context.as_ref().map_or(0, |c| c.session_expires_at);
    SessionEntry {
        ttl_ms: session.ttl_seconds.saturating_mul(1000),
        hard_expiry_ms: hard,
        last_access_ms: AtomicU64::new(session.last_accessed_at),
        checkpointed_access_ms: AtomicU64::new(session.last_accessed_at),
        active: AtomicU32::new(0),
        closing: AtomicBool::new(false),
        idle: Notify::new(),
        session,
    }
}

#[cfg(test)]
mod tests {
    use aesp_core::{ManualClock, MemoryStore, proto::v1::PrincipalType};

    use super::*;

    fn caller(tenant: &str, who: &str) -> Caller {
        Caller::principal(tenant, who, PrincipalType::User, &["analyst"]).unwrap()
    }

    async fn sessions(clock: &ManualClock, store: Arc<dyn StateStore>) -> Sessions {
        Sessions::load(
            store,
            Arc::new(clock.clone()),
            SessionOptions::default(),
            ["acme".to_owned(), "globex".to_owned()],
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn tenant_boundary_expiry_and_quota() {
        let clock = ManualClock::new(1_000_000);
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
        let s = sessions(&clock, Arc::clone(&store)).await;
        let alice = caller("acme", "alice");
        let request = NewSession { ttl: Duration::from_secs(60), ..NewSession::default() };
        let entry = s.create(&alice, request.clone(), 2).await.unwrap();
        assert_eq!(entry.tenant_id(), "acme");
        let id = entry.id().to_owned();

        // Another tenant cannot see it, even knowing its id.
        let mallory = caller("globex", "mallory");
        assert_eq!(s.get(&mallory, &id).unwrap_err().code(), ErrorCode::TenantAccessDenied);
        // Another principal of the same tenant cannot invoke in it.
        assert_eq!(
            s.begin_invocation(&caller("acme", "bob"), &id, clock.now_ms()).unwrap_err().code(),
            ErrorCode::AuthorizationDenied
        );

        // Quota: two sessions at most.
        s.create(&alice, request.clone(), 2).await.unwrap();
        assert_eq!(s.create(&alice, request.clone(), 2).await.unwrap_err().code(), ErrorCode::QuotaExceeded);
        assert_eq!(s.count("acme"), 2);

        // Sliding expiry: use keeps it alive; idleness expires it.
        clock.advance(Duration::from_secs(50));
        drop(s.begin_invocation(&alice, &id, clock.now_ms()).unwrap());
        clock.advance(Duration::from_secs(50));
        assert!(s.get(&alice, &id).is_ok());
        clock.advance(Duration::from_secs(11));
        assert_eq!(s.get(&alice, &id).unwrap_err().code(), ErrorCode::SessionExpired);
        let (_, removed) = s.checkpoint().await.unwrap();
        assert_eq!(removed, 2);
        assert_eq!(s.count("acme"), 0);
    }

    #[tokio::test]
    async fn destroy_waits_for_active_invocations_unless_forced() {
        let clock = ManualClock::new(1_000_000);
        let s = sessions(&clock, Arc::new(MemoryStore::default())).await;
        let alice = caller("acme", "alice");
        let id = s.create(&alice, NewSession::default(), 0).await.unwrap().id().to_owned();
        let active = s.begin_invocation(&alice, &id, clock.now_ms()).unwrap();
        let error = s.destroy(&alice, &id, false, Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::FailedPrecondition);
        // Once the invocation ends, destroy goes through.
        let s = Arc::new(s);
        let waiter = {
            let s = Arc::clone(&s);
            let (alice, id) = (alice.clone(), id.clone());
            tokio::spawn(async move { s.destroy(&alice, &id, false, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(active);
        waiter.await.unwrap().unwrap();
        assert_eq!(s.get(&alice, &id).unwrap_err().code(), ErrorCode::NotFound);

        let id = s.create(&alice, NewSession::default(), 0).await.unwrap().id().to_owned();
        let _active = s.begin_invocation(&alice, &id, clock.now_ms()).unwrap();
        s.destroy(&alice, &id, true, Duration::ZERO).await.unwrap();
        assert!(s.get(&alice, &id).is_err());
    }

    #[tokio::test]
    async fn sessions_survive_a_restart_with_their_last_access() {
        let clock = ManualClock::new(1_000_000);
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
        let s = sessions(&clock, Arc::clone(&store)).await;
        let alice = caller("acme", "alice");
        let id = s
            .create(&alice, NewSession { ttl: Duration::from_secs(60), ..NewSession::default() }, 0)
            .await
            .unwrap()
            .id()
            .to_owned();
        clock.advance(Duration::from_secs(40));
        drop(s.begin_invocation(&alice, &id, clock.now_ms()).unwrap());
        assert_eq!(s.checkpoint().await.unwrap(), (1, 0));
        clock.advance(Duration::from_secs(40));
        let again = sessions(&clock, store).await;
        assert!(again.get(&alice, &id).is_ok(), "the checkpointed access kept it alive");
        assert_eq!(again.list("acme").len(), 1);
        assert!(again.list("globex").is_empty());
    }
}
