//! # The AESP quickstart
//!
//! `cargo run --example quickstart`, from the repository root. The Host's data goes to a
//! temporary directory removed at the end; `cargo run --example quickstart -- DIR` keeps it in
//! `DIR` instead, a new directory, to look at afterwards.
//!
//! A durable Host in a local data directory; the bootstrap of its first administrator; tenants
//! and service accounts with roles, each authenticating with its API key and calling with the
//! access token it gets, through the Host's typed service layer; a tool contract loaded and
//! approved; a CEL policy made active; a runtime in this process; then a successful call, a
//! call refused by policy, a call refused for bad parameters and a cross-tenant attempt, each
//! printed with its decision; the denial re-run and proved from the audit log; finally the
//! audit log verified and its signed checkpoint printed. The program exits non-zero if any
//! step does not behave as it says.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use aesp_audit::{VerifyOptions, verify_log};
use aesp_core::{
    Error, ErrorCode,
    proto::v1::{
        AltarType, AuthenticateServiceAccountRequest, ContractFulfillment, CreatePolicyRequest,
        CreatePolicyResult, CreateRoleRequest, CreateRoleResult, CreateServiceAccountRequest,
        CreateServiceAccountResult, CreateSessionRequest, CreateSessionResult, CreateTenantRequest,
        DecisionProof, EnterpriseError, EnterpriseRuntimeAnnouncement, EnterpriseToolContract,
        FulfillToolsRequest, FulfillToolsResult, InvokeToolRequest, LoadContractsRequest,
        LoadContractsResult, ObjectType, ParameterSchema, PolicyDefinition, PolicyRule, PrimitiveType,
        ProveDecisionRequest, QueryEventsRequest, QueryEventsResult, RoleDefinition, SuccessfulAuthDetails,
        Tenant, ToolCall, ToolResult, ToolResultStatus, Value, altar_type,
        authenticate_service_account_response, create_policy_response, create_role_response,
        create_service_account_response, create_session_response, create_tenant_response,
        fulfill_tools_response, invoke_tool_response, load_contracts_response, prove_decision_response,
        query_events_response,
    },
};
use aesp_host::{BootstrapAdmin, BootstrapCredential, Caller, Host, handler_fn, service::Services};
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
    // `cargo run --example quickstart -- DIR` keeps the Host's data in DIR, a new directory, to
    // look at afterwards; without it the data goes to a temporary directory removed at the end.
    let (data_dir, keep) = match std::env::args_os().nth(1) {
        Some(dir) => (PathBuf::from(dir), true),
        None => (std::env::temp_dir().join(format!("aesp-quickstart-{}", std::process::id())), false),
    };
    // The quickstart bootstraps a new Host, so a directory to keep must be new (or empty); one
    // that is not is left as it is.
    if keep && std::fs::read_dir(&data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        eprintln!(
            "quickstart FAILED: {} is not empty: give the quickstart a new directory",
            data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let outcome = run(&data_dir).await;
    if keep {
        println!("\nthe Host's data is kept in {}", data_dir.display());
    } else if let Err(error) = std::fs::remove_dir_all(&data_dir) {
        eprintln!("could not remove the temporary data directory {}: {error}", data_dir.display());
    }
    match outcome {
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

async fn run(data_dir: &Path) -> aesp_core::Result<()> {
    // 1. A durable Host: state, audit log and signing keys live in this directory.
    let host = Host::builder().data_dir(data_dir).build().await?;
    let services = host.services();
    println!("1. Host started; data directory {}", data_dir.display());

    // 2. Bootstrap: the one explicit step that creates the first platform administrator and
    //    shows its credential once. There are no default credentials; until this runs nobody
    //    may administer the Host, and it never runs again.
    let credential = host.bootstrap_admin(BootstrapAdmin::ServiceAccount { name: "root".into() }).await?;
    let BootstrapCredential::ServiceAccount(root_key) = &credential else {
        return Err(unexpected("bootstrap", "expected a service account"));
    };
    println!(
        "2. Bootstrapped the platform administrator; API key `{}` (its secret is shown only now)",
        root_key.key_id
    );

    // 3. Every caller below authenticates with an API key and uses the access token it gets:
    //    the Host takes the tenant and roles from the token, never from a request body.
    let root = login(&host, "_system", &root_key.key_id, root_key.secret.expose()).await?;
    println!("3. root authenticated: token for `{}` in tenant `{}`", root.principal_id(), root.tenant_id());

    // 4. Tenants, created by the platform administrator. Each gets the default roles of the
    //    permission catalogue (tenant-admin, auditor, developer, agent); the quickstart adds
    //    `data-scientist`, which may invoke the analytics tools.
    for tenant in ["acme", "globex"] {
        ok(
            services
                .create_tenant(
                    &root,
                    CreateTenantRequest {
                        tenant: Some(Tenant { tenant_id: tenant.into(), ..Default::default() }),
                    },
                )
                .await
                .response_type,
            "create tenant",
        )?;
        let role = RoleDefinition {
            role_id: "data-scientist".into(),
            name: "Data scientist".into(),
            tenant_id: tenant.into(),
            permissions: vec!["tool:analytics.*:invoke".into()],
            ..Default::default()
        };
        ok(
            services.create_role(&root, CreateRoleRequest { role: Some(role) }).await.response_type,
            "create role",
        )?;
    }
    println!("4. Tenants `acme` and `globex` created, with the default roles and `data-scientist`");

    // 5. Service accounts, each authenticated by its own key: ada administers acme; alice is
    //    an agent of acme with clearance `confidential`; mallory is an agent of globex. Nobody
    //    can grant more than it holds (roles' permissions, direct permissions, clearance), so
    //    the platform administrator creates the agents, whose tool permissions ada lacks.
    let ada = service_account(&services, &root, "acme", "ada", &["tenant-admin"], "confidential").await?;
    let ada = login(&host, "acme", &ada.api_key, &ada.secret).await?;
    let alice =
        service_account(&services, &root, "acme", "alice", &["agent", "data-scientist"], "confidential")
            .await?;
    let alice = login(&host, "acme", &alice.api_key, &alice.secret).await?;
    let mallory =
        service_account(&services, &root, "globex", "mallory", &["agent", "data-scientist"], "").await?;
    let mallory = login(&host, "globex", &mallory.api_key, &mallory.secret).await?;
    println!(
        "5. Service accounts ada (acme admin), alice (acme agent), mallory (globex agent) authenticated"
    );

    // 5b. A CEL policy, through its lifecycle: draft → approved → active. Default deny: only
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
    ok(
        services
            .create_policy(&ada, CreatePolicyRequest { policy: Some(limit_policy), ..Default::default() })
            .await
            .response_type,
        "create policy",
    )?;
    host.approve_policy(&ada, "acme", "row-limit", "1.0.0").await?;
    let change = host.promote_policy(&ada, "acme", "row-limit", "1.0.0", Stage::Active).await?;
    println!(
        "5b. Policy `row-limit` 1.0.0 approved and promoted to active; snapshot {}",
        change.digest_after
    );

    // 6. The Host's own contract for a tool: runtimes can never define or change it.
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
    ok(
        services
            .load_contracts(&ada, LoadContractsRequest { contracts: vec![contract], ..Default::default() })
            .await
            .response_type,
        "load contracts",
    )?;
    let approved = host.approve_contract(&ada, "analytics.query", "1.0.0").await?;
    println!(
        "6. Contract `analytics.query` 1.0.0 loaded (PENDING) and {} by {}",
        approved.approval_status, approved.approved_by
    );

    // 7. A runtime in this process fulfils the contract.
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
    host.register_in_process_runtime(&ada, announcement, runtime).await?;
    let fulfilled = ok(
        services
            .fulfill_tools(
                &ada,
                FulfillToolsRequest {
                    runtime_id: "analytics-rt".into(),
                    fulfillments: vec![ContractFulfillment {
                        contract_name: "analytics.query".into(),
                        version_range: "^1".into(),
                    }],
                    ..Default::default()
                },
            )
            .await
            .response_type,
        "fulfil",
    )?;
    for outcome in fulfilled.outcomes {
        if !outcome.accepted {
            return Err(unexpected("fulfil", outcome.reason));
        }
        println!("7. Runtime `analytics-rt` fulfils `{}` {}", outcome.contract_name, outcome.version_range);
    }

    // 8. Alice opens a session and calls the tool, as an agent would over the network.
    let session =
        ok(services.create_session(&alice, CreateSessionRequest::default()).await.response_type, "session")?
            .session
            .map(|s| s.session_id)
            .unwrap_or_default();
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
    let result = ok(
        services
            .invoke_tool(
                &alice,
                InvokeToolRequest { call: Some(call("qs-1", "SELECT region, sum(sales) FROM orders", None)) },
            )
            .await
            .response_type,
        "invoke",
    )?;
    if result.status() != ToolResultStatus::Success {
        return Err(unexpected("successful call", format!("{result:?}")));
    }
    println!(
        "8. ALLOWED  alice → analytics.query: {:?}",
        result.payload.as_ref().and_then(|p| p.to_json().ok())
    );

    // 9. Refused by policy: the CEL DENY matches.
    expect_refusal(
        &services,
        &alice,
        call("qs-2", "SELECT * FROM orders", Some(50_000)),
        ErrorCode::PolicyViolation,
        "9. DENIED   by policy",
    )
    .await?;
    // 10. Refused for bad parameters, against the Host's schema.
    expect_refusal(
        &services,
        &alice,
        call("qs-3", "DELETE FROM orders", None),
        ErrorCode::ValidationFailed,
        "10. REFUSED bad parameters",
    )
    .await?;
    // 11. A cross-tenant attempt: Mallory (globex) uses Alice's (acme) session.
    expect_refusal(
        &services,
        &mallory,
        call("qs-4", "SELECT 1", None),
        ErrorCode::TenantAccessDenied,
        "11. REFUSED cross-tenant",
    )
    .await?;

    // 12. A provable decision: ada, as acme's administrator, finds the policy denial in the
    //     audit log and has the Host re-run it from its recorded input under its recorded
    //     snapshot, with the event's inclusion proof against a signed checkpoint.
    let denials = ok(
        services
            .query_events(
                &ada,
                QueryEventsRequest {
                    event_types: vec!["AUTHORIZATION_DENIED".into()],
                    filters: [("metadata.invocation_id".to_owned(), "qs-2".to_owned())].into(),
                    ..Default::default()
                },
            )
            .await
            .response_type,
        "query",
    )?;
    let index =
        *denials.log_indexes.first().ok_or_else(|| unexpected("query", "the denial is not in the log"))?;
    let proof = ok(
        services.prove_decision(&ada, ProveDecisionRequest { log_index: index }).await.response_type,
        "prove",
    )?;
    if !proof.matches || proof.replayed_allowed {
        return Err(unexpected("provable decision", format!("{proof:?}")));
    }
    let leaf =
        prost::Message::encode_to_vec(proof.event.as_ref().ok_or_else(|| unexpected("prove", "no event"))?);
    aesp_audit::TlogProof::parse(proof.inclusion_proof.as_bytes())?
        .verify(&leaf, std::slice::from_ref(host.audit_log().verifier()))?;
    println!(
        "12. PROVED  decision at log index {index} re-run under snapshot {}: {} ({}), as recorded; inclusion proof verified",
        &proof.snapshot_digest[..16],
        if proof.replayed_allowed { "ALLOW" } else { "DENY" },
        proof.replayed_reason
    );

    // 13. The audit log: every step above is in it; verify it and show the signed checkpoint,
    //     the audit verifier key and the token verification keys (JWKS).
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
    println!("13. Audit log of {} events verified; signed checkpoint:\n", checkpoint.checkpoint().size);
    println!("{}", checkpoint.to_text());
    println!("audit verifier key: {}", host.audit_verifier_key());
    println!("token keys (JWKS): {}", host.jwks());
    Ok(())
}

/// The success arm of a service response, or its error.
fn ok<T>(response: Option<impl Into<Outcome<T>>>, step: &str) -> aesp_core::Result<T> {
    match response.map(Into::into) {
        Some(Outcome::Success(value)) => Ok(value),
        Some(Outcome::Error(error)) => Err(Error::from(*error)),
        None => Err(unexpected(step, "an empty response")),
    }
}

/// Either arm of a `oneof response_type`.
enum Outcome<T> {
    Success(T),
    Error(Box<EnterpriseError>),
}

macro_rules! outcomes {
    ($($module:ident :: $variant:ident => $result:ty),* $(,)?) => {
        $(
            impl From<$module::ResponseType> for Outcome<$result> {
                fn from(response: $module::ResponseType) -> Self {
                    match response {
                        $module::ResponseType::$variant(value) => Outcome::Success(value),
                        $module::ResponseType::Error(error) => Outcome::Error(Box::new(error)),
                    }
                }
            }
        )*
    };
}

outcomes! {
    create_tenant_response::Success => Tenant,
    create_role_response::Success => CreateRoleResult,
    create_service_account_response::Success => CreateServiceAccountResult,
    authenticate_service_account_response::Success => SuccessfulAuthDetails,
    create_policy_response::Success => CreatePolicyResult,
    load_contracts_response::Success => LoadContractsResult,
    fulfill_tools_response::Success => FulfillToolsResult,
    create_session_response::Success => CreateSessionResult,
    invoke_tool_response::Success => ToolResult,
    query_events_response::Success => QueryEventsResult,
    prove_decision_response::Success => DecisionProof,
}

/// Creates a service account of `tenant` with `roles`; returns its key and secret.
async fn service_account(
    services: &Services,
    creator: &Caller,
    tenant: &str,
    name: &str,
    roles: &[&str],
    clearance: &str,
) -> aesp_core::Result<CreateServiceAccountResult> {
    let request = CreateServiceAccountRequest {
        name: name.into(),
        tenant_id: tenant.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        security_clearance: clearance.into(),
        ..Default::default()
    };
    ok(services.create_service_account(creator, request).await.response_type, "create service account")
}

/// Authenticates an API key and turns the access token into the caller it stands for.
async fn login(host: &Host, tenant: &str, key_id: &str, secret: &str) -> aesp_core::Result<Caller> {
    let request = AuthenticateServiceAccountRequest {
        api_key: key_id.into(),
        secret: secret.into(),
        tenant_id: tenant.into(),
    };
    let tokens =
        ok(host.services().authenticate_service_account(request).await.response_type, "authenticate")?;
    host.authenticate(&tokens.access_token).await
}

async fn expect_refusal(
    services: &Services,
    caller: &Caller,
    call: ToolCall,
    code: ErrorCode,
    label: &str,
) -> aesp_core::Result<()> {
    match ok(services.invoke_tool(caller, InvokeToolRequest { call: Some(call) }).await.response_type, label)
    {
        Ok(result) => Err(unexpected(label, format!("the call was allowed: {result:?}"))),
        Err(error) if error.code() == code => {
            println!("{label}: {} — {}", error.code_str(), error.message());
            Ok(())
        }
        Err(error) => Err(unexpected(label, format!("expected {code}, got {error}"))),
    }
}
