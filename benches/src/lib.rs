//! Fixtures shared by the benchmarks in `benches/` (the benchmarks themselves are there).

use std::{collections::BTreeMap, path::Path, sync::Arc};

use aesp_audit::{
    AuditLog, AuditLogOptions, LogStorage, NoteSigner, OsFileSystem, SegmentOptions, SegmentStorage,
};
use aesp_core::{
    Ed25519Signer,
    proto::v1::{PolicyDefinition, PolicyRule, PrincipalType, RoleDefinition, Value},
};
use aesp_host::{Caller, Host};
use aesp_policy::{AttributeType, Schema, SnapshotBuilder, Stage};

/// The tenant of the benchmark requests.
pub const TENANT: &str = "acme";

/// The role hierarchy, most senior first: each role inherits the one after it.
pub const ROLES: [(&str, &str); 5] = [
    ("director", "tool:hr.*:read"),
    ("manager", "files/**:read"),
    ("lead", "tool:crm.*:read"),
    ("senior", "tool:reports.*:read"),
    ("analyst", "tool:sql.*:invoke"),
];

/// A policy: (id, effect, applies_to, actions, condition).
pub type PolicySpec =
    (&'static str, &'static str, &'static [&'static str], &'static [&'static str], &'static str);

/// Ten policies, of which three apply to an `invoke` of `tool:sql.query` (an ALLOW whose
/// condition holds, an AUDIT whose condition holds for a request of estimated cost above 10,
/// a DENY whose condition does not hold for a caller in 10.0.0.0/8) and seven concern other
/// resources or actions.
pub const POLICIES: [PolicySpec; 10] = [
    (
        "sql-analysts",
        "ALLOW",
        &["tool:sql.*"],
        &["invoke"],
        "'analyst' in request.user.roles && request.estimated_cost <= request.user.spending_limit",
    ),
    ("expensive", "AUDIT", &["tool:**"], &[], "request.estimated_cost > 10.0"),
    (
        "outside-network",
        "DENY",
        &["tool:sql.*"],
        &["invoke"],
        "!cidr('10.0.0.0/8').containsIP(request.source_ip)",
    ),
    ("refund-limit", "DENY", &["tool:payments.refund"], &["invoke"], "request.params.amount > 1000"),
    ("crm-read", "ALLOW", &["tool:crm.*"], &["read"], "request.user.mfa_verified"),
    ("files-delete", "DENY", &["files/**"], &["delete"], "!('admin' in request.user.roles)"),
    ("hr-access", "AUDIT", &["tool:hr.*"], &[], "true"),
    ("reports", "ALLOW", &["tool:reports.*"], &["read"], "request.time.getHours() >= 9"),
    ("sql-admin", "DENY", &["tool:sql.admin"], &[], "request.user.clearance != 'top_secret'"),
    ("sql-write", "ALLOW", &["tool:sql.*"], &["write"], "'lead' in request.user.roles"),
];

/// The attribute declarations the ten policies need.
///
/// # Panics
/// Never for the fixed declaration (a bug in the fixture otherwise).
#[expect(clippy::expect_used, reason = "a fixed fixture; failing to build it is a bug")]
pub fn schema() -> Schema {
    Schema::new().with_principal_attribute("spending_limit", AttributeType::Double).expect("schema")
}

fn role_definition(index: usize) -> Option<RoleDefinition> {
    let (role, permission) = ROLES.get(index)?;
    let parents = ROLES.get(index + 1).map(|(parent, _)| vec![(*parent).to_owned()]).unwrap_or_default();
    Some(RoleDefinition {
        role_id: (*role).to_owned(),
        parent_roles: parents,
        permissions: vec![(*permission).to_owned()],
        ..Default::default()
    })
}

fn policy_definition((id, effect, applies_to, actions, condition): PolicySpec) -> PolicyDefinition {
    PolicyDefinition {
        policy_id: id.to_owned(),
        version: "1.0.0".to_owned(),
        enabled: true,
        applies_to: applies_to.iter().map(|s| (*s).to_owned()).collect(),
        rule: Some(PolicyRule {
            condition: condition.to_owned(),
            effect: effect.to_owned(),
            actions: actions.iter().map(|s| (*s).to_owned()).collect(),
            parameters: BTreeMap::new(),
        }),
        ..Default::default()
    }
}

/// Installs the 5-level hierarchy (`alice` holds `director`) and the ten policies, active,
/// in [`TENANT`] of `host`, through the policy lifecycle, acting as the platform administrator
/// `root` (bootstrapping the Host).
///
/// # Panics
/// If the Host refuses the fixed fixture (a bug).
#[expect(clippy::expect_used, reason = "a fixed fixture; failing to install it is a bug")]
pub async fn install_ten_policies(host: &Host) {
    host.bootstrap("root").await.expect("bootstrap");
    let root = Caller::principal("_system", "root", PrincipalType::User, &[]).expect("root");
    for index in (0..ROLES.len()).rev() {
        let role = role_definition(index).expect("role");
        host.put_role(&root, TENANT, role).await.expect("role");
    }
    host.assign_role(&root, TENANT, "alice", "director").await.expect("assign");
    let admin = RoleDefinition {
        role_id: "tenant-admin".into(),
        permissions: vec!["aesp.**:*".into()],
        ..Default::default()
    };
    host.put_role(&root, TENANT, admin).await.expect("role");
    for spec in POLICIES {
        let policy = policy_definition(spec);
        let id = policy.policy_id.clone();
        host.create_policy(&root, TENANT, policy).await.expect("policy");
        host.approve_policy(&root, TENANT, &id, "1.0.0").await.expect("approve");
        host.promote_policy(&root, TENANT, &id, "1.0.0", Stage::Active).await.expect("promote");
    }
}

/// A snapshot builder with the 5-level hierarchy (principal `alice` holds `director`) and the
/// ten policies, in [`TENANT`].
///
/// # Panics
/// If the fixed fixture does not compile (a bug in the fixture).
#[expect(clippy::expect_used, reason = "a fixed fixture; failing to build it is a bug")]
pub fn ten_policy_snapshot() -> SnapshotBuilder {
    let mut builder = SnapshotBuilder::new(1, schema());
    for index in 0..ROLES.len() {
        builder.add_role(TENANT, role_definition(index).expect("role")).expect("role");
    }
    builder.assign_role(TENANT, "alice", "director");
    for spec in POLICIES {
        builder.add_policy(TENANT, policy_definition(spec)).expect("policy");
    }
    builder
}

/// The benchmark caller: `alice` of [`TENANT`], clearance `secret`, MFA verified, a spending
/// limit of 100, calling from 10.1.2.3.
///
/// # Panics
/// Never for the fixed values (a bug in the fixture otherwise).
#[expect(clippy::expect_used, reason = "a fixed fixture; failing to build it is a bug")]
pub fn bench_caller() -> Caller {
    let context = aesp_core::proto::v1::EnterpriseSecurityContext {
        principal_id: "alice".into(),
        tenant_id: TENANT.into(),
        principal_type: PrincipalType::User as i32,
        security_clearance: "secret".into(),
        mfa_verified: true,
        ..Default::default()
    };
    Caller::new(context)
        .expect("caller")
        .with_attribute("spending_limit", Value::float(100.0))
        .with_source_ip("10.1.2.3")
}

/// The contract the pipeline benchmarks call: `sql.query` 1.0.0, one required string
/// parameter `query` of at most 200 characters.
pub fn sql_query_contract() -> aesp_core::proto::v1::EnterpriseToolContract {
    use aesp_core::proto::v1::{AltarType, ParameterSchema, PrimitiveType, altar_type};
    aesp_core::proto::v1::EnterpriseToolContract {
        name: "sql.query".into(),
        contract_version: "1.0.0".into(),
        parameters: vec![ParameterSchema {
            name: "query".into(),
            r#type: Some(AltarType { kind: Some(altar_type::Kind::Primitive(PrimitiveType::String as i32)) }),
            required: true,
            constraints: [("max_length".to_owned(), "200".to_owned())].into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Prepares `host` for the pipeline benchmarks: the ten policies ([`install_ten_policies`]),
/// the tenant [`TENANT`], the approved [`sql_query_contract`], an in-process runtime `echo`
/// that returns the `query` parameter, and a session of [`bench_caller`], whose id it returns.
///
/// # Panics
/// If the Host refuses the fixed fixture (a bug).
#[expect(clippy::expect_used, reason = "a fixed fixture; failing to install it is a bug")]
pub async fn prepare_pipeline(host: &Host) -> String {
    use aesp_core::proto::v1::{
        EnterpriseRuntimeAnnouncement, Tenant, ToolCall, ToolResult, ToolResultStatus,
    };
    install_ten_policies(host).await;
    let root = Caller::principal("_system", "root", PrincipalType::User, &[]).expect("root");
    let admin = Caller::principal(TENANT, "ada", PrincipalType::User, &["tenant-admin"]).expect("admin");
    host.create_tenant(&root, Tenant { tenant_id: TENANT.into(), ..Default::default() })
        .await
        .expect("tenant");
    host.load_contracts(&admin, vec![sql_query_contract()]).await.expect("load");
    host.approve_contract(&admin, "sql.query", "1.0.0").await.expect("approve");
    let echo = aesp_host::handler_fn(|call: ToolCall| async move {
        Ok(ToolResult {
            invocation_id: call.invocation_id,
            status: ToolResultStatus::Success as i32,
            payload: call.parameters.get("query").cloned(),
            ..Default::default()
        })
    });
    let announcement = EnterpriseRuntimeAnnouncement { runtime_id: "echo".into(), ..Default::default() };
    host.register_in_process_runtime(&admin, announcement, echo).await.expect("runtime");
    host.fulfill(&admin, "echo", vec![("sql.query".into(), "^1".into())]).await.expect("fulfil");
    let alice = bench_caller();
    host.create_session(&alice, aesp_host::NewSession::default()).await.expect("session").id().to_owned()
}

/// The `n`th benchmark call of the pipeline benchmarks, in `session`.
pub fn pipeline_call(session: &str, n: u64) -> aesp_core::proto::v1::ToolCall {
    aesp_core::proto::v1::ToolCall {
        invocation_id: format!("bench-{n}"),
        session_id: session.to_owned(),
        tool_name: "sql.query".into(),
        parameters: [("query".to_owned(), Value::string("SELECT region, sum(sales) FROM orders"))].into(),
        ..Default::default()
    }
}

/// The origin of the audit benchmarks' logs.
pub const AUDIT_ORIGIN: &str = "bench.example/log";

/// Opens (or creates) the audit log of the audit benchmarks on segment files in `path`: a fixed
/// signing key, group commits of up to 64 Ki entries and 30 MiB.
///
/// # Panics
/// If the directory or the log cannot be opened (a benchmark fails by panicking).
pub async fn open_segment_log(path: &Path) -> (Arc<dyn LogStorage>, AuditLog) {
    open_segment_log_indexing(path, AuditLogOptions::new(AUDIT_ORIGIN).index_entries).await
}

/// [`open_segment_log`] with a query index of the latest `index_entries` entries.
///
/// # Panics
/// If the directory or the log cannot be opened (a benchmark fails by panicking).
#[expect(clippy::expect_used, reason = "benchmark setup fails by panicking")]
pub async fn open_segment_log_indexing(path: &Path, index_entries: u64) -> (Arc<dyn LogStorage>, AuditLog) {
    let fs = OsFileSystem::new(path).expect("log directory");
    let storage: Arc<dyn LogStorage> =
        Arc::new(SegmentStorage::open(Arc::new(fs), SegmentOptions::default()).await.expect("segments"));
    let signer = NoteSigner::new(AUDIT_ORIGIN, Arc::new(Ed25519Signer::from_seed(&[5; 32]))).expect("signer");
    let mut options = AuditLogOptions::new(AUDIT_ORIGIN);
    options.max_batch_entries = 64 * 1024;
    options.max_batch_bytes = 30 << 20;
    options.index_entries = index_entries;
    let log = AuditLog::open(Arc::clone(&storage), signer, options).await.expect("audit log");
    (storage, log)
}
