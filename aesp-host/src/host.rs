//! [`Host`]: the assembled control plane, and [`HostBuilder`].

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aesp_audit::{
    AuditLog, AuditLogOptions, LogStorage, NoteSigner, OsFileSystem, SegmentOptions, SegmentStorage,
    SignedCheckpoint,
};
use aesp_core::{
    Clock, Ed25519Signer, Error, ErrorCode, IdentityProvider, Result, Signer, StateStore, StateStoreOptions,
    SystemClock, Txn, TxnOutcome,
    proto::v1::{
        AuditEvent, EnterpriseRuntimeAnnouncement, EnterpriseToolContract, PolicyDefinition, RoleDefinition,
        Tenant, TenantQuotas, TenantStatus,
    },
};
use aesp_policy::{
    Change, Engine, EngineConfig, LifecycleConfig, PolicyLifecycle, Schema, Stage, VersionInfo,
};
use aesp_store::EmbeddedStore;
use futures_util::TryFutureExt as _;
use prost::{Message as _, bytes::Bytes};

use crate::{
    caller::Caller,
    contracts::{APPROVED, CompiledContract, Contracts, LoadOutcome, REJECTED},
    idempotency::{Idempotency, IdempotencyStats},
    identity::{BootstrapAdmin, BootstrapCredential, IdentityManager, IdentityOptions},
    limits::{Admission, TenantLimits},
    records::SYSTEM_TENANT,
    runtimes::{Fulfilment, InProcessRuntime, RuntimeEntry, Runtimes, ToolHandler},
    sessions::{NewSession, SessionEntry, SessionOptions, Sessions},
    tenants::Tenants,
};

/// The backends a Host runs on, chosen together.
#[derive(Clone)]
pub struct Backends {
    /// Control-plane state.
    pub state: Arc<dyn StateStore>,
    /// Audit log storage.
    pub audit: Arc<dyn LogStorage>,
    /// The key that signs audit checkpoints.
    pub audit_signer: Arc<dyn Signer>,
    /// The key that signs access tokens (EdDSA JWTs).
    pub token_signer: Arc<dyn Signer>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Identity providers, tried in order (used by the Host's own authentication).
    pub identity: Vec<Arc<dyn IdentityProvider>>,
    /// The secret key that chooses which requests a canary policy version decides (a keyed
    /// hash of the Host-assigned request id); every Host of a deployment shares it.
    pub canary_key: [u8; 32],
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backends")
            .field("state", &self.state)
            .field("audit", &self.audit)
            .field("audit_signer", &self.audit_signer.key_id())
            .field("token_signer", &self.token_signer.key_id())
            .finish_non_exhaustive()
    }
}

impl Backends {
    /// The durable defaults in `dir`: the embedded state store in `dir/state`, audit segment
    /// files in `dir/audit`, the audit signing key in `dir/keys/audit.pem`, the token signing
    /// key in `dir/keys/token.pem` and the canary key in `dir/keys/canary.key` (all created,
    /// mode 0600, on first start).
    pub async fn embedded(dir: impl AsRef<Path>) -> Result<Self> {
        Self::embedded_with(dir.as_ref(), SegmentOptions::default().direct_io).await
    }

    /// [`embedded`](Self::embedded), the audit segment files written with direct I/O or not
    /// ([`HostOptions::audit_direct_io`]).
    async fn embedded_with(dir: &Path, audit_direct_io: bool) -> Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let state = EmbeddedStore::open(dir.join("state"), StateStoreOptions::default())?;
        let audit_dir = dir.join("audit");
        let fs = OsFileSystem::new(&audit_dir).map_err(|e| {
            Error::unavailable(format!("cannot open audit directory `{}`", audit_dir.display()))
                .with_source(e)
        })?;
        let audit = SegmentStorage::open(
            Arc::new(fs),
            SegmentOptions {
                clock: Arc::clone(&clock),
                direct_io: audit_direct_io,
                ..SegmentOptions::default()
            },
        )
        .await?;
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys)
            .map_err(|e| Error::unavailable(format!("cannot create `{}`", keys.display())).with_source(e))?;
        let signer = read_or_create_signer(&keys.join("audit.pem"))?;
        let token_signer = read_or_create_signer(&keys.join("token.pem"))?;
        let canary_key = read_or_create_key(&keys.join("canary.key"))?;
        Ok(Self {
            state: Arc::new(state),
            audit: Arc::new(audit),
            audit_signer: Arc::new(signer),
            token_signer: Arc::new(token_signer),
            clock,
            identity: Vec::new(),
            canary_key,
        })
    }

    /// Everything in memory (tests and examples that need no durability), with `clock`.
    pub fn in_memory(clock: Arc<dyn Clock>) -> Result<Self> {
        Ok(Self {
            state: Arc::new(aesp_core::MemoryStore::default()),
            audit: Arc::new(aesp_audit::MemoryStorage::new(Arc::clone(&clock))),
            audit_signer: Arc::new(Ed25519Signer::generate()?),
            token_signer: Arc::new(Ed25519Signer::generate()?),
            clock,
            identity: Vec::new(),
            canary_key: random_key()?,
        })
    }
}

/// Reads an ed25519 key (PKCS#8 PEM), or creates it (mode 0600) if the file does not exist.
fn read_or_create_signer(path: &Path) -> Result<Ed25519Signer> {
    if path.exists() {
        Ed25519Signer::from_pkcs8_pem_file(path)
    } else {
        let signer = Ed25519Signer::generate()?;
        signer.write_pkcs8_pem_file(path)?;
        Ok(signer)
    }
}

fn random_key() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| Error::internal("the system random generator failed").with_source(e))?;
    Ok(key)
}

/// Reads a 32-byte secret, or creates it (mode 0600) if the file does not exist.
fn read_or_create_key(path: &Path) -> Result<[u8; 32]> {
    let error = |e: std::io::Error| {
        Error::new(ErrorCode::ConfigurationError, format!("key file `{}`", path.display())).with_source(e)
    };
    match std::fs::read(path) {
        Ok(bytes) => bytes.as_slice().try_into().map_err(|_| {
            Error::new(
                ErrorCode::ConfigurationError,
                format!("key file `{}` does not hold 32 bytes", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            let key = random_key()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).map_err(error)?;
            file.write_all(&key).map_err(error)?;
            file.sync_all().map_err(error)?;
            Ok(key)
        }
        Err(e) => Err(error(e)),
    }
}

/// Tunables of a Host.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// The audit log's origin (its unique name in checkpoints).
    pub audit_origin: String,
    /// The audit signing key's name in signed notes.
    pub audit_key_name: String,
    /// How many of the latest audit entries the audit log's in-memory query index covers
    /// (`AuditLogOptions::index_entries`; about 60 bytes an entry, two entries a call).
    /// Audit queries reaching further back read storage.
    pub audit_index_entries: u64,
    /// Under load, the least time between the starts of two audit group commits
    /// (`AuditLogOptions::commit_interval`: 1.5 ms by default, zero for none, at most 1 s).
    pub audit_commit_interval: Duration,
    /// Whether the embedded audit segment files are written with direct I/O, around the
    /// operating system's page cache, where the file system supports it
    /// (`SegmentOptions::direct_io`, on by default). Used by [`HostBuilder::data_dir`];
    /// backends given whole keep their own.
    pub audit_direct_io: bool,
    /// Session lifetimes.
    pub sessions: SessionOptions,
    /// A runtime that has not sent a heartbeat for this long is unhealthy.
    pub heartbeat_timeout: Duration,
    /// The deadline of a call that names none.
    pub default_call_timeout: Duration,
    /// The longest deadline a call may ask for.
    pub max_call_timeout: Duration,
    /// How long an invocation id is remembered for idempotent retries (at most: see
    /// `idempotency_capacity`).
    pub idempotency_window: Duration,
    /// The most invocation ids remembered at once. A full table forgets the finished call
    /// whose window ends first to make room for a new one, so the whole window holds up to
    /// `idempotency_capacity / idempotency_window` calls a second (the defaults: 333) and is
    /// cut short above that; [`Host::idempotency_stats`] counts the calls forgotten early.
    /// Only a table full of calls still running refuses new ones (`QUOTA_EXCEEDED`).
    pub idempotency_capacity: usize,
    /// How long a graceful shutdown waits for calls in flight.
    pub shutdown_grace: Duration,
    /// The policy engine's configuration (labels, break-glass permission).
    pub engine: EngineConfig,
    /// The attributes policies may read (principal, tenant, organization), declared.
    pub policy_schema: Schema,
    /// Tokens, passwords, lockout and key rotation of the Identity Manager.
    pub identity: IdentityOptions,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            audit_origin: "aesp.local/audit".to_owned(),
            audit_key_name: "aesp.local/audit-key".to_owned(),
            audit_index_entries: AuditLogOptions::new("").index_entries,
            audit_commit_interval: AuditLogOptions::new("").commit_interval,
            audit_direct_io: SegmentOptions::default().direct_io,
            sessions: SessionOptions::default(),
            heartbeat_timeout: Duration::from_secs(30),
            default_call_timeout: Duration::from_secs(30),
            max_call_timeout: Duration::from_secs(300),
            idempotency_window: Duration::from_secs(300),
            idempotency_capacity: 100_000,
            shutdown_grace: Duration::from_secs(10),
            engine: EngineConfig::default(),
            policy_schema: Schema::new(),
            identity: IdentityOptions::default(),
        }
    }
}

/// Builds a [`Host`].
#[derive(Debug, Default)]
pub struct HostBuilder {
    data_dir: Option<PathBuf>,
    backends: Option<Backends>,
    options: HostOptions,
}

impl HostBuilder {
    /// Runs on the durable defaults in `dir` ([`Backends::embedded`]).
    #[must_use]
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Runs on these backends.
    #[must_use]
    pub fn backends(mut self, backends: Backends) -> Self {
        self.backends = Some(backends);
        self
    }

    /// Sets the options.
    #[must_use]
    pub fn options(mut self, options: HostOptions) -> Self {
        self.options = options;
        self
    }

    /// Opens the backends and loads the Host's state. Must run within a Tokio runtime.
    pub async fn build(self) -> Result<Host> {
        let backends = match (self.backends, self.data_dir) {
            (Some(backends), _) => backends,
            (None, Some(dir)) => Backends::embedded_with(&dir, self.options.audit_direct_io).await?,
            (None, None) => {
                return Err(Error::new(
                    ErrorCode::ConfigurationError,
                    "a Host needs a data directory or backends",
                ));
            }
        };
        Host::start(backends, self.options).await
    }
}

/// The AESP Host.
///
/// Every method takes the authenticated [`Caller`]; the caller's tenant is the tenant of
/// everything the method reads or changes. Administrative methods require a permission
/// (granted through the roles of the active policy snapshot) and write an audit event, as does
/// every refusal.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backends: Backends,
    pub(crate) options: HostOptions,
    pub(crate) audit: AuditLog,
    pub(crate) lifecycle: Arc<PolicyLifecycle>,
    pub(crate) tenants: Tenants,
    pub(crate) contracts: Contracts,
    pub(crate) sessions: Sessions,
    pub(crate) runtimes: Runtimes,
    pub(crate) idempotency: Arc<Idempotency>,
    pub(crate) limits: TenantLimits,
    pub(crate) admission: Arc<Admission>,
    pub(crate) identity: Arc<IdentityManager>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").field("backends", &self.inner.backends).finish_non_exhaustive()
    }
}

/// Permissions the Host's own operations require (`resource:action`).
pub mod permissions {
    /// Create tenants (platform).
    pub const TENANTS_CREATE: &str = "aesp.tenants:create";
    /// Suspend and resume tenants (platform).
    pub const TENANTS_SUSPEND: &str = "aesp.tenants:suspend";
    /// Change a tenant's quotas (platform).
    pub const TENANTS_QUOTAS: &str = "aesp.tenants:set_quotas";
    /// Change a tenant's attributes.
    pub const TENANTS_ATTRIBUTES: &str = "aesp.tenants:set_attributes";
    /// Load contract manifests.
    pub const CONTRACTS_LOAD: &str = "aesp.contracts:load";
    /// Approve or reject contract versions.
    pub const CONTRACTS_APPROVE: &str = "aesp.contracts:approve";
    /// Connect runtimes and fulfil contracts.
    pub const RUNTIMES_CONNECT: &str = "aesp.runtimes:connect";
    /// Write draft policy versions.
    pub const POLICIES_WRITE: &str = "aesp.policies:write";
    /// Approve policy versions.
    pub const POLICIES_APPROVE: &str = "aesp.policies:approve";
    /// Promote and roll back policy versions.
    pub const POLICIES_PROMOTE: &str = "aesp.policies:promote";
    /// Define roles.
    pub const ROLES_WRITE: &str = "aesp.roles:write";
    /// Assign roles to principals.
    pub const ROLES_ASSIGN: &str = "aesp.roles:assign";
}

/// The role [`Host::bootstrap`] defines in the system tenant: every permission.
pub const PLATFORM_ADMIN_ROLE: &str = "platform-admin";

impl Host {
    /// A builder.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    async fn start(backends: Backends, options: HostOptions) -> Result<Self> {
        let clock = Arc::clone(&backends.clock);
        let signer = NoteSigner::new(&options.audit_key_name, Arc::clone(&backends.audit_signer))?;
        let audit_options = AuditLogOptions {
            index_entries: options.audit_index_entries,
            commit_interval: options.audit_commit_interval,
            ..AuditLogOptions::new(&options.audit_origin)
        };
        let audit = AuditLog::open(Arc::clone(&backends.audit), signer, audit_options).await?;
        let tenants = Tenants::load(Arc::clone(&backends.state), Arc::clone(&clock)).await?;
        let mut tenant_ids: Vec<String> = tenants.list().iter().map(|t| t.tenant_id.clone()).collect();
        tenant_ids.push(SYSTEM_TENANT.to_owned());
        let contracts =
            Contracts::load(Arc::clone(&backends.state), Arc::clone(&clock), tenant_ids.clone()).await?;
        let sessions = Sessions::load(
            Arc::clone(&backends.state),
            Arc::clone(&clock),
            options.sessions.clone(),
            tenant_ids,
        )
        .await?;
        let runtimes = Runtimes::new(Arc::clone(&clock), options.heartbeat_timeout);
        let idempotency =
            Idempotency::new(Arc::clone(&clock), options.idempotency_window, options.idempotency_capacity);
        let engine = Arc::new(Engine::new(options.engine.clone()));
        let lifecycle = Arc::new(PolicyLifecycle::new(
            engine,
            Arc::clone(&backends.state),
            Arc::clone(&clock),
            LifecycleConfig::new(options.policy_schema.clone(), backends.canary_key),
        ));
        lifecycle.load().await?;
        let identity = Arc::new(
            IdentityManager::new(
                Arc::clone(&backends.state),
                Arc::clone(&clock),
                audit.clone(),
                Arc::clone(&backends.token_signer),
                options.identity.clone(),
            )
            .await?,
        );
        let inner = Inner {
            identity,
            limits: TenantLimits::new(Arc::clone(&clock)),
            admission: Arc::new(Admission::default()),
            backends,
            audit,
            lifecycle,
            tenants,
            contracts,
            sessions,
            runtimes,
            idempotency,
            options,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// What the idempotency table holds, and how many finished calls it has forgotten before
    /// their window ended because it was full (see [`HostOptions::idempotency_capacity`]).
    pub fn idempotency_stats(&self) -> IdempotencyStats {
        self.inner.idempotency.stats()
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// The Identity Manager: principals, service accounts, users, tokens and signing keys.
    pub fn identity(&self) -> &Arc<IdentityManager> {
        &self.inner.identity
    }

    /// The JWKS document (JSON) of the keys that verify this Host's access tokens.
    pub fn jwks(&self) -> String {
        self.inner.identity.jwks()
    }

    /// The key that verifies this Host's audit checkpoints (C2SP `name+id+key` text).
    pub fn audit_verifier_key(&self) -> String {
        self.inner.audit.verifier().to_text()
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.backends.clock
    }

    /// The policy lifecycle: versions, rollouts, the active snapshot, divergences, replay.
    pub fn policy_lifecycle(&self) -> &Arc<PolicyLifecycle> {
        &self.inner.lifecycle
    }

    /// Stops admitting calls, lets calls in flight finish (up to the shutdown grace),
    /// checkpoints sessions, and signs a final audit checkpoint, which it returns.
    pub async fn shutdown(&self) -> Result<SignedCheckpoint> {
        let still_running = self.inner.admission.close(self.inner.options.shutdown_grace).await;
        let mut event = self.event("HOST_SHUTDOWN", None, "host", "shutdown", "SUCCESS");
        event.metadata.insert("calls_still_running".into(), still_running.to_string());
        self.inner.audit.append(&event).await?;
        self.inner.sessions.checkpoint().await?;
        self.inner.audit.checkpoint().await
    }

    /// A new audit event of this Host, with id and time set.
    pub(crate) fn event(
        &self,
        event_type: &str,
        caller: Option<&Caller>,
        resource: &str,
        action: &str,
        outcome: &str,
    ) -> AuditEvent {
        let clock = self.inner.backends.clock.as_ref();
        AuditEvent {
            event_id: aesp_core::new_id(clock),
            timestamp_ms: clock.now_ms(),
            event_type: event_type.to_owned(),
            principal_id: caller.map(|c| c.principal_id().to_owned()).unwrap_or_default(),
            tenant_id: caller.map(|c| c.tenant_id().to_owned()).unwrap_or_default(),
            resource: resource.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            source_ip: caller.map(|c| c.source_ip().to_owned()).unwrap_or_default(),
            ..AuditEvent::default()
        }
    }

    /// Writes an audit event durably; if the audit log cannot take it, the operation it
    /// records is refused (`AUDIT_REQUIREMENT_NOT_MET`).
    pub(crate) async fn record(&self, event: &AuditEvent) -> Result<u64> {
        self.record_encoded(Bytes::from(event.encode_to_vec())).await
    }

    /// Writes an audit event given as its canonical encoding (an `AuditEvent`'s exact bytes)
    /// durably, as [`record`](Self::record) does.
    ///
    /// Not an `async fn`: the log's append future, mapped, is what every audited operation's
    /// future holds while it waits (twice in an invocation's), with no state of its own.
    pub(crate) fn record_encoded(&self, event: Bytes) -> impl Future<Output = Result<u64>> + Send + '_ {
        self.inner.audit.append_one(event).map_err(|e| {
            Error::new(
                ErrorCode::AuditRequirementNotMet,
                "the audit log cannot record this operation, so it was refused",
            )
            .with_source(e)
            .with_remediation("retry once the audit log is available")
        })
    }

    /// Checks that `caller` holds `permission` in its tenant (through the active snapshot's
    /// roles or its security context); a refusal is audited.
    pub(crate) async fn require(&self, caller: &Caller, permission: &str, resource: &str) -> Result<()> {
        let snapshot = self.inner.lifecycle.active();
        let context = caller.context();
        let granted =
            snapshot.check_permission(caller.tenant_id(), caller.principal_id(), &context.roles, permission)
                || context.permissions.iter().any(|p| p == permission);
        if granted {
            return Ok(());
        }
        let mut event = self.event("AUTHORIZATION_DENIED", Some(caller), resource, permission, "DENIED");
        event.metadata.insert("reason".into(), format!("permission `{permission}` is not granted"));
        self.record(&event).await?;
        Err(Error::new(ErrorCode::InsufficientPermissions, format!("permission `{permission}` is required"))
            .with_tenant(caller.tenant_id())
            .with_principal(caller.principal_id()))
    }

    // ---- Policies and roles ------------------------------------------------------------

    /// The explicit bootstrap step of a new Host: defines the `platform-admin` role (every
    /// permission) in the system tenant and gives it to `principal_id`. There are no default
    /// credentials or grants: until this runs, nobody may administer the Host. It runs once;
    /// a second call is `FAILED_PRECONDITION`.
    pub async fn bootstrap(&self, principal_id: &str) -> Result<()> {
        crate::records::check_name("principal id", principal_id)?;
        let marker = format!("t/{SYSTEM_TENANT}/bootstrap");
        let outcome = self
            .inner
            .backends
            .state
            .txn(Txn::new().if_absent(marker.clone()).put(marker, principal_id))
            .await?;
        if let TxnOutcome::CompareFailed { .. } = outcome {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                "the Host is bootstrapped already; bootstrap runs once",
            ));
        }
        let lifecycle = &self.inner.lifecycle;
        let role = RoleDefinition {
            role_id: PLATFORM_ADMIN_ROLE.into(),
            name: "Platform administrator".into(),
            permissions: vec!["**:*".into()],
            ..RoleDefinition::default()
        };
        let put = lifecycle.put_role("bootstrap", SYSTEM_TENANT, role).await?;
        self.record(&put).await?;
        let assigned =
            lifecycle.assign_role("bootstrap", SYSTEM_TENANT, principal_id, PLATFORM_ADMIN_ROLE).await?;
        self.record(&assigned).await?;
        Ok(())
    }

    /// The explicit bootstrap step with a credential: creates the first platform
    /// administrator in the system tenant (a service account or a local user, through the
    /// Identity Manager), grants it the `platform-admin` role ([`Host::bootstrap`]) and
    /// returns its credential, shown this once. There are no default credentials; it runs
    /// once (`FAILED_PRECONDITION` after).
    pub async fn bootstrap_admin(&self, admin: BootstrapAdmin) -> Result<BootstrapCredential> {
        let credential = self.inner.identity.bootstrap_admin(admin).await?;
        self.bootstrap(&credential.principal().principal_id).await?;
        Ok(credential)
    }

    /// Checks that `caller` may administer `tenant`'s policies or roles with `permission`: a
    /// platform administrator for any tenant, anyone else only in its own tenant.
    pub(crate) async fn require_in(
        &self,
        caller: &Caller,
        tenant: &str,
        permission: &str,
        resource: &str,
    ) -> Result<()> {
        if !caller.is_platform() {
            self.same_tenant(caller, tenant, resource).await?;
        }
        self.require(caller, permission, resource).await
    }

    /// Defines (or replaces) a role in `tenant`.
    pub async fn put_role(&self, caller: &Caller, tenant: &str, role: RoleDefinition) -> Result<()> {
        let resource = format!("role:{}", role.role_id);
        self.require_in(caller, tenant, permissions::ROLES_WRITE, &resource).await?;
        let event = self.inner.lifecycle.put_role(caller.principal_id(), tenant, role).await?;
        self.record(&event).await.map(drop)
    }

    /// Assigns a role of `tenant` to a principal of `tenant`.
    pub async fn assign_role(
        &self,
        caller: &Caller,
        tenant: &str,
        principal_id: &str,
        role_id: &str,
    ) -> Result<()> {
        self.change_role(caller, tenant, principal_id, role_id, true).await
    }

    /// Takes a role of `tenant` from a principal of `tenant` (audited as
    /// `IDENTITY_REVOKE_ROLE`).
    pub async fn revoke_role(
        &self,
        caller: &Caller,
        tenant: &str,
        principal_id: &str,
        role_id: &str,
    ) -> Result<()> {
        self.change_role(caller, tenant, principal_id, role_id, false).await
    }

    /// Assigns (`assign`) or takes a role of `tenant` from a principal of `tenant`, with the
    /// `roles.assign` permission, audited as `IDENTITY_ASSIGN_ROLE` or `IDENTITY_REVOKE_ROLE`.
    async fn change_role(
        &self,
        caller: &Caller,
        tenant: &str,
        principal_id: &str,
        role_id: &str,
        assign: bool,
    ) -> Result<()> {
        let resource = format!("role:{role_id}");
        self.require_in(caller, tenant, permissions::ROLES_ASSIGN, &resource).await?;
        let lifecycle = &self.inner.lifecycle;
        let by = caller.principal_id();
        let (mut event, event_type) = if assign {
            (lifecycle.assign_role(by, tenant, principal_id, role_id).await?, "IDENTITY_ASSIGN_ROLE")
        } else {
            (lifecycle.unassign_role(by, tenant, principal_id, role_id).await?, "IDENTITY_REVOKE_ROLE")
        };
        event_type.clone_into(&mut event.event_type);
        self.record(&event).await.map(drop)
    }

    /// Adds a draft version of a policy of `tenant` (validated: syntax, types, references).
    pub async fn create_policy(
        &self,
        caller: &Caller,
        tenant: &str,
        policy: PolicyDefinition,
    ) -> Result<VersionInfo> {
        let resource = format!("policy:{}", policy.policy_id);
        self.require_in(caller, tenant, permissions::POLICIES_WRITE, &resource).await?;
        let (version, event) =
            self.inner.lifecycle.create_version(caller.principal_id(), tenant, policy).await?;
        self.record(&event).await?;
        Ok(version)
    }

    /// Approves a draft policy version (the governance approval hook, until governance drives
    /// it).
    pub async fn approve_policy(
        &self,
        caller: &Caller,
        tenant: &str,
        policy_id: &str,
        version: &str,
    ) -> Result<Change> {
        let resource = format!("policy:{policy_id}@{version}");
        self.require_in(caller, tenant, permissions::POLICIES_APPROVE, &resource).await?;
        let change =
            self.inner.lifecycle.approve(caller.principal_id(), true, tenant, policy_id, version).await?;
        self.record(&change.audit).await?;
        Ok(change)
    }

    /// Promotes a policy version to shadow, canary or active.
    pub async fn promote_policy(
        &self,
        caller: &Caller,
        tenant: &str,
        policy_id: &str,
        version: &str,
        stage: Stage,
    ) -> Result<Change> {
        let resource = format!("policy:{policy_id}@{version}");
        self.require_in(caller, tenant, permissions::POLICIES_PROMOTE, &resource).await?;
        let change =
            self.inner.lifecycle.promote(caller.principal_id(), tenant, policy_id, version, stage).await?;
        self.record(&change.audit).await?;
        Ok(change)
    }

    /// Rolls a policy back to its previous active version.
    pub async fn rollback_policy(&self, caller: &Caller, tenant: &str, policy_id: &str) -> Result<Change> {
        let resource = format!("policy:{policy_id}");
        self.require_in(caller, tenant, permissions::POLICIES_PROMOTE, &resource).await?;
        let change = self.inner.lifecycle.rollback(caller.principal_id(), tenant, policy_id).await?;
        self.record(&change.audit).await?;
        Ok(change)
    }

    async fn require_platform(&self, caller: &Caller, permission: &str, resource: &str) -> Result<()> {
        if !caller.is_platform() {
            let mut event = self.event("AUTHORIZATION_DENIED", Some(caller), resource, permission, "DENIED");
            event.metadata.insert("reason".into(), "only platform administrators may do this".into());
            self.record(&event).await?;
            return Err(Error::new(
                ErrorCode::TenantAccessDenied,
                "only platform administrators may do this",
            )
            .with_tenant(caller.tenant_id()));
        }
        self.require(caller, permission, resource).await
    }

    // ---- Tenants -----------------------------------------------------------------------

    /// Creates a tenant (platform administrators).
    pub async fn create_tenant(&self, caller: &Caller, tenant: Tenant) -> Result<Tenant> {
        let resource = format!("tenant:{}", tenant.tenant_id);
        self.require_platform(caller, permissions::TENANTS_CREATE, &resource).await?;
        let created = self.inner.tenants.create(tenant, caller.principal_id()).await?;
        let mut event = self.event("TENANT_CREATE", Some(caller), &resource, "create", "SUCCESS");
        event.metadata.insert("tenant".into(), created.tenant_id.clone());
        self.record(&event).await?;
        // The default roles of the permission catalogue, least privilege.
        for (role_id, name, permissions) in crate::service::catalogue::DEFAULT_ROLES {
            let role = RoleDefinition {
                role_id: (*role_id).to_owned(),
                name: (*name).to_owned(),
                permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
                ..RoleDefinition::default()
            };
            let put = self.inner.lifecycle.put_role(caller.principal_id(), &created.tenant_id, role).await?;
            self.record(&put).await?;
        }
        Ok(Tenant::clone(&created))
    }

    /// Suspends a tenant: every call in it is refused with `TENANT_SUSPENDED`.
    pub async fn suspend_tenant(&self, caller: &Caller, tenant_id: &str, reason: &str) -> Result<Tenant> {
        self.set_status(caller, tenant_id, TenantStatus::Suspended, reason).await
    }

    /// Resumes a suspended tenant.
    pub async fn resume_tenant(&self, caller: &Caller, tenant_id: &str) -> Result<Tenant> {
        self.set_status(caller, tenant_id, TenantStatus::Active, "").await
    }

    async fn set_status(
        &self,
        caller: &Caller,
        tenant_id: &str,
        status: TenantStatus,
        reason: &str,
    ) -> Result<Tenant> {
        let resource = format!("tenant:{tenant_id}");
        self.require_platform(caller, permissions::TENANTS_SUSPEND, &resource).await?;
        let updated = self
            .inner
            .tenants
            .update(tenant_id, |t| {
                t.status = status as i32;
                reason.clone_into(&mut t.suspension_reason);
                Ok(())
            })
            .await?;
        let action = if status == TenantStatus::Suspended { "suspend" } else { "resume" };
        let mut event = self.event("TENANT_UPDATE", Some(caller), &resource, action, "SUCCESS");
        event.metadata.insert("reason".into(), reason.to_owned());
        self.record(&event).await?;
        Ok(Tenant::clone(&updated))
    }

    /// Replaces a tenant's quotas (platform administrators).
    pub async fn set_tenant_quotas(
        &self,
        caller: &Caller,
        tenant_id: &str,
        quotas: TenantQuotas,
    ) -> Result<Tenant> {
        let resource = format!("tenant:{tenant_id}");
        self.require_platform(caller, permissions::TENANTS_QUOTAS, &resource).await?;
        let updated = self
            .inner
            .tenants
            .update(tenant_id, |t| {
                t.quotas = Some(quotas);
                Ok(())
            })
            .await?;
        self.record(&self.event("TENANT_UPDATE", Some(caller), &resource, "set_quotas", "SUCCESS")).await?;
        Ok(Tenant::clone(&updated))
    }

    /// Replaces a tenant's attributes: a platform administrator for any tenant, a tenant
    /// administrator for its own.
    pub async fn set_tenant_attributes(
        &self,
        caller: &Caller,
        tenant_id: &str,
        attributes: BTreeMap<String, String>,
    ) -> Result<Tenant> {
        let resource = format!("tenant:{tenant_id}");
        if caller.is_platform() {
            self.require_platform(caller, permissions::TENANTS_ATTRIBUTES, &resource).await?;
        } else {
            self.same_tenant(caller, tenant_id, &resource).await?;
            self.require(caller, permissions::TENANTS_ATTRIBUTES, &resource).await?;
        }
        let updated = self
            .inner
            .tenants
            .update(tenant_id, |t| {
                t.attributes = attributes.clone();
                Ok(())
            })
            .await?;
        self.record(&self.event("TENANT_UPDATE", Some(caller), &resource, "set_attributes", "SUCCESS"))
            .await?;
        Ok(Tenant::clone(&updated))
    }

    /// A tenant: platform administrators read any, others their own.
    pub async fn get_tenant(&self, caller: &Caller, tenant_id: &str) -> Result<Tenant> {
        if !caller.is_platform() {
            self.same_tenant(caller, tenant_id, &format!("tenant:{tenant_id}")).await?;
        }
        self.inner
            .tenants
            .get(tenant_id)
            .map(|t| Tenant::clone(&t))
            .ok_or_else(|| Error::not_found(format!("tenant `{tenant_id}` does not exist")))
    }

    /// Refuses (and audits) a caller naming a tenant other than its own.
    pub(crate) async fn same_tenant(&self, caller: &Caller, tenant_id: &str, resource: &str) -> Result<()> {
        if caller.tenant_id() == tenant_id {
            return Ok(());
        }
        Err(self.cross_tenant_refusal(caller, resource).await)
    }

    /// Audits an attempt to reach another tenant's `resource` and returns the refusal for the
    /// caller (or, if the audit log cannot record it, that error).
    pub(crate) async fn cross_tenant_refusal(&self, caller: &Caller, resource: &str) -> Error {
        let mut event = self.event("AUTHORIZATION_DENIED", Some(caller), resource, "access", "DENIED");
        event.metadata.insert("reason".into(), "cross-tenant access".into());
        event.policy_violations.push("TENANT_ACCESS_DENIED".into());
        if let Err(e) = self.record(&event).await {
            return e;
        }
        Error::new(ErrorCode::TenantAccessDenied, "that belongs to another tenant")
            .with_tenant(caller.tenant_id())
            .with_principal(caller.principal_id())
            .escalate()
    }

    /// The caller's tenant if active; a refusal is audited.
    pub(crate) async fn active_tenant(&self, caller: &Caller) -> Result<Arc<Tenant>> {
        match self.inner.tenants.active(caller.tenant_id()) {
            Ok(tenant) => Ok(tenant),
            Err(e) => {
                let mut event = self.event("AUTHORIZATION_DENIED", Some(caller), "tenant", "use", "DENIED");
                event.metadata.insert("reason".into(), e.message().to_owned());
                event.policy_violations.push(e.code_str().to_owned());
                self.record(&event).await?;
                Err(e)
            }
        }
    }

    // ---- Contracts ---------------------------------------------------------------------

    /// Loads a manifest of contracts into the caller's tenant, all or nothing; new contracts
    /// and versions are `PENDING` until approved.
    pub async fn load_contracts(
        &self,
        caller: &Caller,
        manifest: Vec<EnterpriseToolContract>,
    ) -> Result<Vec<(EnterpriseToolContract, LoadOutcome)>> {
        self.active_tenant(caller).await?;
        self.require(caller, permissions::CONTRACTS_LOAD, "contracts").await?;
        let loaded = self.inner.contracts.load_manifest(caller.tenant_id(), manifest).await?;
        for (contract, outcome) in &loaded {
            if *outcome == LoadOutcome::Created {
                let c = contract.contract();
                let resource = format!("contract:{}@{}", c.name, c.contract_version);
                let mut event =
                    self.event("GOVERNANCE_APPROVAL_REQUEST", Some(caller), &resource, "load", "SUCCESS");
                event.metadata.insert("artifact_type".into(), "TOOL_CONTRACT_V1".into());
                self.record(&event).await?;
            }
        }
        Ok(loaded.into_iter().map(|(c, o)| (c.contract().clone(), o)).collect())
    }

    /// Approves a pending contract version of the caller's tenant.
    pub async fn approve_contract(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
    ) -> Result<EnterpriseToolContract> {
        self.adjudicate_contract(caller, name, version, APPROVED).await
    }

    /// Rejects a pending contract version of the caller's tenant.
    pub async fn reject_contract(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
    ) -> Result<EnterpriseToolContract> {
        self.adjudicate_contract(caller, name, version, REJECTED).await
    }

    async fn adjudicate_contract(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
        status: &str,
    ) -> Result<EnterpriseToolContract> {
        self.active_tenant(caller).await?;
        let resource = format!("contract:{name}@{version}");
        self.require(caller, permissions::CONTRACTS_APPROVE, &resource).await?;
        let compiled = self
            .inner
            .contracts
            .adjudicate(caller.tenant_id(), name, version, status, caller.principal_id())
            .await?;
        let mut event =
            self.event("GOVERNANCE_APPROVAL_DECISION", Some(caller), &resource, status, "SUCCESS");
        event.metadata.insert("artifact_type".into(), "TOOL_CONTRACT_V1".into());
        self.record(&event).await?;
        Ok(compiled.contract().clone())
    }

    /// One contract version of the caller's tenant, any status.
    pub fn get_contract(&self, caller: &Caller, name: &str, version: &str) -> Result<EnterpriseToolContract> {
        let version = semver::Version::parse(version)
            .map_err(|e| Error::invalid_argument(format!("version `{version}` is not semver: {e}")))?;
        self.inner
            .contracts
            .get(caller.tenant_id(), name, &version)
            .map(|c| c.contract().clone())
            .ok_or_else(|| Error::not_found(format!("contract `{name}` {version} does not exist")))
    }

    /// The approved contracts (newest approved version of each) the caller's tenant offers.
    pub fn list_tools(&self, caller: &Caller) -> Vec<EnterpriseToolContract> {
        let mut newest: BTreeMap<String, Arc<CompiledContract>> = BTreeMap::new();
        for c in self.inner.contracts.list(caller.tenant_id()).into_iter().filter(|c| c.is_approved()) {
            let name = c.contract().name.clone();
            if newest.get(&name).is_none_or(|n| n.version() < c.version()) {
                newest.insert(name, c);
            }
        }
        newest.into_values().map(|c| c.contract().clone()).collect()
    }

    // ---- Sessions ----------------------------------------------------------------------

    /// Creates a session for the caller in its tenant, within the tenant's session quota.
    pub async fn create_session(&self, caller: &Caller, request: NewSession) -> Result<Arc<SessionEntry>> {
        let tenant = self.active_tenant(caller).await?;
        let max = tenant.quotas.as_ref().map_or(0, |q| q.max_sessions);
        let entry = self.inner.sessions.create(caller, request, max).await?;
        let mut event = self.event(
            "SESSION_CREATE",
            Some(caller),
            &format!("session:{}", entry.id()),
            "create",
            "SUCCESS",
        );
        event.session_id = entry.id().to_owned();
        self.record(&event).await?;
        Ok(entry)
    }

    /// A session of the caller's tenant; another tenant's is refused and audited.
    pub async fn get_session(&self, caller: &Caller, session_id: &str) -> Result<Arc<SessionEntry>> {
        match self.inner.sessions.get(caller, session_id) {
            Err(e) if e.code() == ErrorCode::TenantAccessDenied => {
                Err(self.cross_tenant_refusal(caller, &format!("session:{session_id}")).await)
            }
            other => other,
        }
    }

    /// Destroys a session: waits (up to the shutdown grace) for its invocations unless
    /// `force`.
    pub async fn destroy_session(&self, caller: &Caller, session_id: &str, force: bool) -> Result<()> {
        if let Err(e) = self.get_session(caller, session_id).await
            && e.code() != ErrorCode::SessionExpired
        {
            return Err(e);
        }
        self.inner.sessions.destroy(caller, session_id, force, self.inner.options.shutdown_grace).await?;
        let mut event = self.event(
            "SESSION_DESTROY",
            Some(caller),
            &format!("session:{session_id}"),
            "destroy",
            "SUCCESS",
        );
        event.session_id = session_id.to_owned();
        event.metadata.insert("force".into(), force.to_string());
        self.record(&event).await?;
        Ok(())
    }

    /// The sessions of the caller's tenant.
    pub fn list_sessions(&self, caller: &Caller) -> Vec<Arc<SessionEntry>> {
        self.inner.sessions.list(caller.tenant_id())
    }

    /// Writes session access times and removes expired sessions (run it periodically).
    pub async fn checkpoint_sessions(&self) -> Result<(usize, usize)> {
        self.inner.sessions.checkpoint().await
    }

    // ---- Runtimes ----------------------------------------------------------------------

    /// Connects a runtime of the caller's tenant through `transport` (whose authenticated id
    /// must be the announced one).
    pub async fn connect_runtime(
        &self,
        caller: &Caller,
        announcement: EnterpriseRuntimeAnnouncement,
        transport: Arc<dyn aesp_core::RuntimeTransport>,
    ) -> Result<Arc<RuntimeEntry>> {
        self.connect(caller, announcement, transport, true).await
    }

    /// Registers a Rust handler as an in-process runtime of the caller's tenant.
    pub async fn register_in_process_runtime(
        &self,
        caller: &Caller,
        announcement: EnterpriseRuntimeAnnouncement,
        handler: impl ToolHandler,
    ) -> Result<Arc<RuntimeEntry>> {
        let transport = Arc::new(InProcessRuntime::new(announcement.runtime_id.clone(), handler));
        self.connect(caller, announcement, transport, false).await
    }

    async fn connect(
        &self,
        caller: &Caller,
        announcement: EnterpriseRuntimeAnnouncement,
        transport: Arc<dyn aesp_core::RuntimeTransport>,
        heartbeats: bool,
    ) -> Result<Arc<RuntimeEntry>> {
        self.active_tenant(caller).await?;
        let resource = format!("runtime:{}", announcement.runtime_id);
        self.require(caller, permissions::RUNTIMES_CONNECT, &resource).await?;
        let result = self.inner.runtimes.announce(caller.tenant_id(), announcement, transport, heartbeats);
        let outcome = if result.is_ok() { "SUCCESS" } else { "DENIED" };
        let mut event = self.event("RUNTIME_ANNOUNCE", Some(caller), &resource, "announce", outcome);
        if let Err(e) = &result {
            event.metadata.insert("reason".into(), e.message().to_owned());
            event.policy_violations.push(e.code_str().to_owned());
        }
        self.record(&event).await?;
        result
    }

    /// Declares that a runtime of the caller's tenant serves contracts: each by name and a
    /// semver range that must contain an approved version. Each refused fulfilment is
    /// audited and reported; the others take effect.
    pub async fn fulfill(
        &self,
        caller: &Caller,
        runtime_id: &str,
        fulfilments: Vec<(String, String)>,
    ) -> Result<Vec<(String, Result<()>)>> {
        self.active_tenant(caller).await?;
        let runtime = match self.inner.runtimes.get(caller.tenant_id(), runtime_id) {
            Err(e) if e.code() == ErrorCode::TenantAccessDenied => {
                return Err(self.cross_tenant_refusal(caller, &format!("runtime:{runtime_id}")).await);
            }
            other => other?,
        };
        let mut outcomes = Vec::with_capacity(fulfilments.len());
        for (contract, range) in fulfilments {
            let checked = self.check_fulfilment(caller.tenant_id(), &contract, &range);
            let resource = format!("contract:{contract}");
            let mut event = self.event(
                "RUNTIME_FULFILL",
                Some(caller),
                &resource,
                "fulfill",
                if checked.is_ok() { "SUCCESS" } else { "DENIED" },
            );
            event.metadata.insert("runtime_id".into(), runtime_id.to_owned());
            event.metadata.insert("version_range".into(), range.clone());
            match checked {
                Ok(fulfilment) => {
                    self.record(&event).await?;
                    self.inner.runtimes.add_fulfilment(&runtime, fulfilment);
                    outcomes.push((contract, Ok(())));
                }
                Err(e) => {
                    event.metadata.insert("reason".into(), e.message().to_owned());
                    event.policy_violations.push(e.code_str().to_owned());
                    self.record(&event).await?;
                    outcomes.push((contract, Err(e)));
                }
            }
        }
        Ok(outcomes)
    }

    fn check_fulfilment(&self, tenant: &str, contract: &str, range: &str) -> Result<Fulfilment> {
        let versions = semver::VersionReq::parse(range)
            .map_err(|e| Error::invalid_argument(format!("`{range}` is not a semver range: {e}")))?;
        if !self.inner.contracts.exists(tenant, contract) {
            return Err(Error::not_found(format!(
                "the Host has no contract `{contract}`; runtimes cannot add contracts"
            ))
            .with_security_implication("a runtime offered a tool the Host does not define"));
        }
        if self.inner.contracts.resolve(tenant, contract, Some(&versions)).is_none() {
            return Err(Error::new(
                ErrorCode::ContractNotApproved,
                format!("no approved version of `{contract}` is in `{range}`"),
            ));
        }
        Ok(Fulfilment { contract: contract.to_owned(), versions })
    }

    /// Records a runtime's heartbeat.
    pub fn heartbeat(
        &self,
        caller: &Caller,
        runtime_id: &str,
    ) -> Result<aesp_core::proto::v1::RuntimeHealth> {
        self.inner.runtimes.heartbeat(caller.tenant_id(), runtime_id)
    }

    /// Disconnects a runtime of the caller's tenant.
    pub async fn unregister_runtime(&self, caller: &Caller, runtime_id: &str) -> Result<()> {
        self.inner.runtimes.unregister(caller.tenant_id(), runtime_id)?;
        self.record(&self.event(
            "RUNTIME_UNREGISTER",
            Some(caller),
            &format!("runtime:{runtime_id}"),
            "unregister",
            "SUCCESS",
        ))
        .await?;
        Ok(())
    }

    /// The runtimes of the caller's tenant.
    pub fn list_runtimes(&self, caller: &Caller) -> Vec<Arc<RuntimeEntry>> {
        self.inner.runtimes.list(caller.tenant_id())
    }
}
