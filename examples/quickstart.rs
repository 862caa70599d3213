//! # The AESP quickstart
//!
//! `cargo run --example quickstart`, from the repository root.
//!
//! A durable Host in a local data directory; a tenant and a principal with roles; a tool
//! contract loaded and approved; a CEL policy made active; a runtime in this process; then a
//! successful call, a call refused by policy, a call refused for bad parameters and a
//! cross-tenant attempt, each printed with its decision; finally the audit log verified and its
//! signed checkpoint printed. The program exits non-zero if any step does not behave as it
//! says.

use std::process::ExitCode;

use aesp_audit::{VerifyOptions, verify_log};
use aesp_core::{
    Error, ErrorCode,
    proto::v1::{
        AltarType, EnterpriseRuntimeAnnouncement, EnterpriseToolContract, ObjectType, ParameterSchema,
        PolicyDefinition, PolicyRule, PrimitiveType, PrincipalType, RoleDefinition, Tenant, ToolCall,
        ToolResult, ToolResultStatus, Value, altar_type,
    },
};
use aesp_host::{Caller, Host, NewSession, handler_fn};
use aesp_policy::Stage;

/// A step that did not behave as the quickstart says.
fn unexpected(step: &str, what: impl std::fmt::Display) -> Error {
    Error::internal(format!("step `{step}` did not behave as expected: {what}"))
}

fn primitive(p: PrimitiveType) -> AltarType {
    AltarType { kind: Some(altar_type::Kind::Primitive(p as i32)) }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => {
            println!("\nquickstart: every step behaved as described");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("\nquickstart FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> aesp_core::Result<()> {
    // 1. A durable Host: state, audit log and signing key live in this directory.
    let data_dir = std::env::temp_dir().join(format!("aesp-quickstart-{}", std::process::id()));
    let host = Host::builder().data_dir(&data_dir).build().await?;
    println!("1. Host started; data directory {}", data_dir.display());

    // 2. Who is who. The embedding service authenticated these callers; the Host trusts the
    //    tenant in their security context and nothing in request bodies.
    let root = Caller::principal("_system", "root", PrincipalType::User, &["platform-admin"])?;
    let admin = Caller::principal("acme", "ada", PrincipalType::User, &["tenant-admin"])?;
    let alice = Caller::principal("acme", "alice", PrincipalType::User, &["data-scientist"])?
        .with_clearance("confidential");
    let mallory = Caller::principal("globex", "mallory", PrincipalType::User, &["data-scientist"])?;
    println!(
        "2. Callers: root (platform admin), ada (acme admin), alice (acme data scientist), mallory (globex)"
    );

    // 3. Bootstrap: the one explicit step that makes `root` a platform administrator. There
    //    are no default credentials or grants; until this runs nobody may administer the Host.
    host.bootstrap("root").await?;
    println!("3. Bootstrapped: `root` holds `platform-admin` in the system tenant");

    // 4. Tenants, created by the platform administrator, with their roles (RBAC).
    for tenant in ["acme", "globex"] {
        host.create_tenant(&root, Tenant { tenant_id: tenant.into(), ..Default::default() }).await?;
        let role = |id: &str, permissions: &[&str]| RoleDefinition {
            role_id: id.into(),
            name: id.into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        };
        host.put_role(&root, tenant, role("tenant-admin", &["aesp.**:*"])).await?;
        host.put_role(&root, tenant, role("data-scientist", &["tool:analytics.*:invoke"])).await?;
    }
    println!("4. Tenants `acme` and `globex` created, each with roles `tenant-admin` and `data-scientist`");

    // 4b. A CEL policy, through its lifecycle: draft → approved → active. Default deny: only
    //     what a role grants, and no DENY policy forbids, is allowed.
    let limit_policy = PolicyDefinition {
        policy_id: "row-limit".into(),
        name: "No bulk exports".into(),
        description: "Queries may return at most 1000 rows".into(),
        version: "1.0.0".into(),
        rule: Some(PolicyRule {
            condition: "request.params.limit > 1000".into(),
            effect: "DENY".into(),
            actions: vec!["invoke".into()],
            ..Default::default()
        }),
        applies_to: vec!["tool:analytics.*".into()],
        enabled: true,
        ..Default::default()
    };
    host.create_policy(&admin, "acme", limit_policy).await?;
    host.approve_policy(&admin, "acme", "row-limit", "1.0.0").await?;
    let change = host.promote_policy(&admin, "acme", "row-limit", "1.0.0", Stage::Active).await?;
    println!(
        "4b. Policy `row-limit` 1.0.0 approved and promoted to active; snapshot {}",
        change.digest_after
    );

    // 5. The Host's own contract for a tool: runtimes can never define or change it.
    let contract = EnterpriseToolContract {
        name: "analytics.query".into(),
        contract_version: "1.0.0".into(),
        description: "Runs a read-only analytics query".into(),
        parameters: vec![
            ParameterSchema {
                name: "sql".into(),
                r#type: Some(primitive(PrimitiveType::String)),
                required: true,
                constraints: [
                    ("max_length".to_owned(), "200".to_owned()),
                    ("pattern".to_owned(), "^SELECT ".to_owned()),
                ]
                .into(),
                ..Default::default()
            },
            ParameterSchema {
                name: "limit".into(),
                r#type: Some(primitive(PrimitiveType::Integer)),
                default_value: Some(Value::integer(100)),
                constraints: [("min".to_owned(), "1".to_owned())].into(),
                ..Default::default()
            },
        ],
        return_type: Some(AltarType {
            kind: Some(altar_type::Kind::Object(ObjectType {
                properties: [(
                    "rows".to_owned(),
                    ParameterSchema {
                        name: "rows".into(),
                        r#type: Some(primitive(PrimitiveType::Integer)),
                        ..Default::default()
                    },
                )]
                .into(),
                required_properties: vec!["rows".into()],
            })),
        }),
        security_classification: "internal".into(),
        ..Default::default()
    };
    host.load_contracts(&admin, vec![contract]).await?;
    let approved = host.approve_contract(&admin, "analytics.query", "1.0.0").await?;
    println!(
        "5. Contract `analytics.query` 1.0.0 loaded (PENDING) and {} by {}",
        approved.approval_status, approved.approved_by
    );

    // 6. A runtime in this process fulfils the contract.
    let runtime = handler_fn(|call: ToolCall| async move {
        let limit = call.parameters.get("limit").and_then(Value::as_i64).unwrap_or(0);
        Ok(ToolResult {
            invocation_id: call.invocation_id,
            status: ToolResultStatus::Success as i32,
            payload: Some(Value::object([("rows", Value::integer(limit.min(42)))])),
            ..Default::default()
        })
    });
    let announcement = EnterpriseRuntimeAnnouncement {
        runtime_id: "analytics-rt".into(),
        language: "rust".into(),
        ..Default::default()
    };
    host.register_in_process_runtime(&admin, announcement, runtime).await?;
    for (contract, outcome) in
        host.fulfill(&admin, "analytics-rt", vec![("analytics.query".into(), "^1".into())]).await?
    {
        outcome?;
        println!("6. Runtime `analytics-rt` fulfils `{contract}` ^1");
    }

    // 7. Alice opens a session and calls the tool.
    let session = host.create_session(&alice, NewSession::default()).await?.id().to_owned();
    let call = |id: &str, sql: &str, limit: Option<i64>| {
        let mut parameters = std::collections::BTreeMap::from([("sql".to_owned(), Value::string(sql))]);
        if let Some(limit) = limit {
            parameters.insert("limit".into(), Value::integer(limit));
        }
        ToolCall {
            invocation_id: id.into(),
            session_id: session.clone(),
            tool_name: "analytics.query".into(),
            parameters,
            ..Default::default()
        }
    };
    let result = host.invoke(&alice, call("qs-1", "SELECT region, sum(sales) FROM orders", None)).await?;
    if result.status() != ToolResultStatus::Success {
        return Err(unexpected("successful call", format!("{result:?}")));
    }
    println!(
        "7. ALLOWED  alice → analytics.query: {:?}",
        result.payload.as_ref().and_then(|p| p.to_json().ok())
    );

    // 8. Refused by policy: the CEL DENY matches.
    expect_refusal(
        &host,
        &alice,
        call("qs-2", "SELECT * FROM orders", Some(50_000)),
        ErrorCode::PolicyViolation,
        "8. DENIED   by policy",
    )
    .await?;
    // 9. Refused for bad parameters, against the Host's schema.
    expect_refusal(
        &host,
        &alice,
        call("qs-3", "DELETE FROM orders", None),
        ErrorCode::ValidationFailed,
        "9. REFUSED  bad parameters",
    )
    .await?;
    // 10. A cross-tenant attempt: Mallory (globex) uses Alice's (acme) session.
    expect_refusal(
        &host,
        &mallory,
        call("qs-4", "SELECT 1", None),
        ErrorCode::TenantAccessDenied,
        "10. REFUSED cross-tenant",
    )
    .await?;

    // 11. The audit log: every step above is in it; verify it and show the signed checkpoint.
    let checkpoint = host.shutdown().await?;
    let verifier = host.audit_log().verifier().clone();
    let report = verify_log(
        host.audit_log().storage().as_ref(),
        std::slice::from_ref(&verifier),
        &VerifyOptions::default(),
    )
    .await?;
    if !report.is_ok() {
        return Err(unexpected("audit verification", format!("{report:?}")));
    }
    println!("11. Audit log of {} events verified; signed checkpoint:\n", checkpoint.checkpoint().size);
    println!("{}", checkpoint.to_text());
    println!("verifier key: {}", verifier.to_text());
    Ok(())
}

async fn expect_refusal(
    host: &Host,
    caller: &Caller,
    call: ToolCall,
    code: ErrorCode,
    label: &str,
) -> aesp_core::Result<()> {
    match host.invoke(caller, call).await {
        Ok(result) => Err(unexpected(label, format!("the call was allowed: {result:?}"))),
        Err(error) if error.code() == code => {
            println!("{label}: {} — {}", error.code_str(), error.message());
            Ok(())
        }
        Err(error) => Err(unexpected(label, format!("expected {code}, got {error}"))),
    }
}
