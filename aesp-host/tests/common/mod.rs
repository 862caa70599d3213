//! A Host with a tenant, a contract, policies, a runtime and a session, for the pipeline tests.
#![allow(dead_code, reason = "each test binary uses a different part of the fixture")]
#![expect(clippy::expect_used, reason = "test fixtures fail by panicking")]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use aesp_audit::{
    Hash, Leaf, Lease, LogStorage, MemoryStorage, PruneRequest, StorageState, StoredCheckpoint,
};
use aesp_core::{
    Error, ManualClock, Result,
    proto::v1::{
        AltarType, AuditEvent, EnterpriseRuntimeAnnouncement, EnterpriseToolContract, ObjectType,
        ParameterSchema, PolicyDefinition, PolicyRule, PrimitiveType, ResourceLimits, RoleDefinition, Tenant,
        ToolCall, ToolResult, ToolResultStatus, Value, altar_type,
    },
};
use aesp_host::{Backends, Caller, Host, HostOptions, NewSession, handler_fn};
use async_trait::async_trait;
use bytes::Bytes;
use prost::Message as _;

pub(crate) const T0: u64 = 1_764_000_000_000;

/// An audit storage that can be made to fail appends (the audit log "unavailable").
#[derive(Debug)]
pub(crate) struct FlakyAudit {
    inner: MemoryStorage,
    pub(crate) failing: AtomicBool,
}

#[async_trait]
impl LogStorage for FlakyAudit {
    async fn append(&self, entries: &[Bytes]) -> Result<u64> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::unavailable("injected audit failure"));
        }
        self.inner.append(entries).await
    }
    async fn state(&self) -> Result<StorageState> {
        self.inner.state().await
    }
    async fn read_leaves(&self, start: u64, end: u64) -> Result<Vec<Leaf>> {
        self.inner.read_leaves(start, end).await
    }
    async fn prune(&self, request: PruneRequest<'_>) -> Result<u64> {
        self.inner.prune(request).await
    }
    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Lease> {
        self.inner.acquire_lease(holder, ttl).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.inner.release_lease(lease).await
    }
    async fn append_hashes(&self, lease: &Lease, from: u64, to: u64, hashes: &[Hash]) -> Result<()> {
        self.inner.append_hashes(lease, from, to, hashes).await
    }
    async fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>> {
        self.inner.read_hashes(indexes).await
    }
    async fn store_checkpoint(&self, lease: &Lease, size: u64, note: &[u8]) -> Result<()> {
        self.inner.store_checkpoint(lease, size, note).await
    }
    async fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<StoredCheckpoint>> {
        self.inner.checkpoints(from_size, limit).await
    }
    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        self.inner.latest_checkpoint().await
    }
}

pub(crate) fn string_type() -> AltarType {
    AltarType { kind: Some(altar_type::Kind::Primitive(PrimitiveType::String as i32)) }
}

pub(crate) fn integer_type() -> AltarType {
    AltarType { kind: Some(altar_type::Kind::Primitive(PrimitiveType::Integer as i32)) }
}

/// `sql.query(query: string ≤ 100 chars, limit: integer 1..=1000 = 10) -> {rows: integer}`.
pub(crate) fn sql_contract(version: &str) -> EnterpriseToolContract {
    let rows = ParameterSchema {
        name: "rows".into(),
        r#type: Some(integer_type()),
        required: true,
        ..Default::default()
    };
    EnterpriseToolContract {
        name: "sql.query".into(),
        contract_version: version.into(),
        description: "Runs a read-only SQL query".into(),
        parameters: vec![
            ParameterSchema {
                name: "query".into(),
                r#type: Some(string_type()),
                required: true,
                constraints: [("max_length".to_owned(), "100".to_owned())].into(),
                ..Default::default()
            },
            ParameterSchema {
                name: "limit".into(),
                r#type: Some(integer_type()),
                default_value: Some(Value::integer(10)),
                constraints: [("min".to_owned(), "1".to_owned()), ("max".to_owned(), "1000".to_owned())]
                    .into(),
                ..Default::default()
            },
        ],
        return_type: Some(AltarType {
            kind: Some(altar_type::Kind::Object(ObjectType {
                properties: [("rows".to_owned(), rows)].into(),
                required_properties: vec!["rows".into()],
            })),
        }),
        supports_streaming: true,
        security_classification: "internal".into(),
        ..Default::default()
    }
}

fn role(id: &str, permissions: &[&str]) -> RoleDefinition {
    RoleDefinition {
        role_id: id.into(),
        name: id.into(),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

fn policy(id: &str, effect: &str, condition: &str) -> PolicyDefinition {
    PolicyDefinition {
        policy_id: id.into(),
        name: id.into(),
        version: "1.0.0".into(),
        rule: Some(PolicyRule {
            condition: condition.into(),
            effect: effect.into(),
            actions: vec!["invoke".into()],
            parameters: BTreeMap::new(),
        }),
        applies_to: vec!["tool:sql.*".into()],
        enabled: true,
        ..Default::default()
    }
}

/// The runtime's behaviour, switchable by the tests.
#[derive(Debug, Default)]
pub(crate) struct Behaviour {
    pub(crate) calls: AtomicUsize,
    /// `ok` (valid rows), `slow`, `fail` (a tool error), `crash` (a runtime error), `bad` (breaks the return type).
    pub(crate) mode: Mutex<String>,
}

pub(crate) struct Fixture {
    pub(crate) host: Host,
    pub(crate) clock: ManualClock,
    pub(crate) root: Caller,
    pub(crate) admin: Caller,
    pub(crate) alice: Caller,
    pub(crate) session: String,
    pub(crate) behaviour: Arc<Behaviour>,
    pub(crate) audit: Option<Arc<FlakyAudit>>,
}

pub(crate) fn caller(tenant: &str, who: &str, roles: &[&str]) -> Caller {
    Caller::principal(tenant, who, aesp_core::proto::v1::PrincipalType::User, roles)
        .expect("caller")
        .with_clearance("confidential")
}

pub(crate) fn handler(behaviour: Arc<Behaviour>) -> impl aesp_host::ToolHandler {
    handler_fn(move |call: ToolCall| {
        let behaviour = Arc::clone(&behaviour);
        async move {
            behaviour.calls.fetch_add(1, Ordering::SeqCst);
            let mode = behaviour.mode.lock().expect("lock").clone();
            let payload = match mode.as_str() {
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Value::object([("rows", Value::integer(1))])
                }
                "crash" => return Err(Error::unavailable("the database is down")),
                "bad" => Value::object([("rows", Value::string("many"))]),
                "misdirected" => {
                    return Ok(ToolResult {
                        invocation_id: format!("not-{}", call.invocation_id),
                        status: ToolResultStatus::Success as i32,
                        payload: Some(Value::object([("rows", Value::integer(3))])),
                        ..ToolResult::default()
                    });
                }
                "fail" => {
                    return Ok(ToolResult {
                        invocation_id: call.invocation_id,
                        status: ToolResultStatus::Error as i32,
                        ..ToolResult::default()
                    });
                }
                _ => Value::object([("rows", Value::integer(3))]),
            };
            Ok(ToolResult {
                invocation_id: call.invocation_id,
                status: ToolResultStatus::Success as i32,
                payload: Some(payload),
                ..ToolResult::default()
            })
        }
    })
}

/// Bootstraps `root` as platform administrator and installs the test roles and policies
/// through the policy lifecycle: tenant admins and analysts in acme and globex, and an active
/// DENY of queries containing `DROP` in acme.
pub(crate) async fn install_policies(host: &Host) {
    host.bootstrap("root").await.expect("bootstrap");
    let root = caller("_system", "root", &[]);
    for tenant in ["acme", "globex"] {
        host.put_role(&root, tenant, role("tenant-admin", &["aesp.**:*"])).await.expect("role");
        host.put_role(&root, tenant, role("analyst", &["tool:sql.*:invoke"])).await.expect("role");
    }
    host.create_policy(&root, "acme", policy("no-drop", "DENY", "request.params.query.contains('DROP')"))
        .await
        .expect("policy");
    host.approve_policy(&root, "acme", "no-drop", "1.0.0").await.expect("approve");
    host.promote_policy(&root, "acme", "no-drop", "1.0.0", aesp_policy::Stage::Active)
        .await
        .expect("promote");
}

/// Connects the in-process runtime `rt-1` of acme, fulfilling `sql.query` ^1.
pub(crate) async fn connect_runtime(host: &Host, admin: &Caller) -> Arc<Behaviour> {
    let behaviour = Arc::new(Behaviour::default());
    let announcement = EnterpriseRuntimeAnnouncement {
        runtime_id: "rt-1".into(),
        resource_limits: Some(ResourceLimits { max_concurrent_invocations: 64, ..Default::default() }),
        ..Default::default()
    };
    host.register_in_process_runtime(admin, announcement, handler(Arc::clone(&behaviour)))
        .await
        .expect("runtime");
    let outcomes =
        host.fulfill(admin, "rt-1", vec![("sql.query".into(), "^1".into())]).await.expect("fulfill");
    assert!(outcomes.iter().all(|(_, r)| r.is_ok()));
    behaviour
}

impl Fixture {
    pub(crate) async fn new() -> Self {
        let clock = ManualClock::new(T0);
        let audit = Arc::new(FlakyAudit {
            inner: MemoryStorage::new(Arc::new(clock.clone())),
            failing: AtomicBool::new(false),
        });
        let mut backends = Backends::in_memory(Arc::new(clock.clone())).expect("backends");
        backends.audit = Arc::clone(&audit) as Arc<dyn LogStorage>;
        let host =
            Host::builder().backends(backends).options(HostOptions::default()).build().await.expect("host");
        let mut fixture = Self::with_host(host, clock).await;
        fixture.audit = Some(audit);
        fixture
    }

    pub(crate) async fn with_host(host: Host, clock: ManualClock) -> Self {
        let root = caller("_system", "root", &["platform-admin"]);
        let admin = caller("acme", "ada", &["tenant-admin"]);
        let alice = caller("acme", "alice", &["analyst"]);
        install_policies(&host).await;
        host.create_tenant(&root, Tenant { tenant_id: "acme".into(), ..Default::default() })
            .await
            .expect("tenant");
        host.create_tenant(&root, Tenant { tenant_id: "globex".into(), ..Default::default() })
            .await
            .expect("tenant");
        host.load_contracts(&admin, vec![sql_contract("1.0.0")]).await.expect("load");
        host.approve_contract(&admin, "sql.query", "1.0.0").await.expect("approve");
        let behaviour = connect_runtime(&host, &admin).await;
        let session =
            host.create_session(&alice, NewSession::default()).await.expect("session").id().to_owned();
        Self { host, clock, root, admin, alice, session, behaviour, audit: None }
    }

    pub(crate) fn call(&self, id: &str, query: &str) -> ToolCall {
        ToolCall {
            invocation_id: id.into(),
            session_id: self.session.clone(),
            tool_name: "sql.query".into(),
            parameters: [("query".to_owned(), Value::string(query))].into(),
            ..Default::default()
        }
    }

    pub(crate) fn set_mode(&self, mode: &str) {
        *self.behaviour.mode.lock().expect("lock") = mode.to_owned();
    }

    /// Every audit event so far, decoded.
    pub(crate) async fn events(&self) -> Vec<AuditEvent> {
        let storage = self.host.audit_log().storage();
        let size = storage.state().await.expect("state").size;
        storage
            .read_entries(0, size)
            .await
            .expect("entries")
            .iter()
            .map(|b| AuditEvent::decode(b.as_ref()).expect("decodes"))
            .collect()
    }

    /// The audit events of one invocation, by type.
    pub(crate) async fn events_of(&self, invocation: &str) -> Vec<String> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.metadata.get("invocation_id").map(String::as_str) == Some(invocation))
            .map(|e| format!("{}:{}", e.event_type, e.outcome))
            .collect()
    }
}
