//! The in-process invocation pipeline end to end: a principal already authenticated →
//! session → contract → parameter validation → authorization against a snapshot of a 5-level
//! role hierarchy and 10 CEL policies → quota → route → durable audit START (group commit,
//! fsync on) → an in-process runtime that echoes → durable audit COMPLETE → result.
//!
//! `cargo bench -p aesp-benches --bench host` (set `AESP_BENCH_CONCURRENCY`, default 512, for
//! the number of concurrent callers). Prints throughput, p50 and p99 latency.
#![expect(clippy::expect_used, reason = "a benchmark fails by panicking")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aesp_core::proto::v1::{
    AltarType, EnterpriseRuntimeAnnouncement, EnterpriseToolContract, ParameterSchema, PrimitiveType,
    PrincipalType, Tenant, ToolCall, ToolResult, ToolResultStatus, Value, altar_type,
};
use aesp_host::{Caller, Host, HostOptions, NewSession, handler_fn};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

struct Setup {
    host: Host,
    alice: Caller,
    session: String,
    next: AtomicU64,
    _dir: tempfile::TempDir,
}

fn concurrency() -> usize {
    std::env::var("AESP_BENCH_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = HostOptions {
        idempotency_capacity: 16_000_000,
        policy_schema: aesp_benches::schema(),
        ..HostOptions::default()
    };
    let host = Host::builder().data_dir(dir.path()).options(options).build().await.expect("host");
    aesp_benches::install_ten_policies(&host).await;

    let root = Caller::principal("_system", "root", PrincipalType::User, &[]).expect("root");
    let admin = Caller::principal(aesp_benches::TENANT, "ada", PrincipalType::User, &["tenant-admin"])
        .expect("admin");
    host.create_tenant(&root, Tenant { tenant_id: aesp_benches::TENANT.into(), ..Default::default() })
        .await
        .expect("tenant");
    let contract = EnterpriseToolContract {
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
    };
    host.load_contracts(&admin, vec![contract]).await.expect("load");
    host.approve_contract(&admin, "sql.query", "1.0.0").await.expect("approve");
    let echo = handler_fn(|call: ToolCall| async move {
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
    let alice = aesp_benches::bench_caller();
    let session = host.create_session(&alice, NewSession::default()).await.expect("session").id().to_owned();
    Setup { host, alice, session, next: AtomicU64::new(0), _dir: dir }
}

impl Setup {
    fn call(&self) -> ToolCall {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        ToolCall {
            invocation_id: format!("bench-{n}"),
            session_id: self.session.clone(),
            tool_name: "sql.query".into(),
            parameters: [("query".to_owned(), Value::string("SELECT region, sum(sales) FROM orders"))].into(),
            ..Default::default()
        }
    }

    /// Runs `total` calls from `callers` concurrent tasks; returns the elapsed time and every
    /// call's latency.
    async fn run(self: &Arc<Self>, total: u64, callers: usize) -> (Duration, Vec<Duration>) {
        let remaining = Arc::new(AtomicU64::new(total));
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let setup = Arc::clone(self);
                let remaining = Arc::clone(&remaining);
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while remaining
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        let call = setup.call();
                        let began = Instant::now();
                        let result = setup.host.invoke(&setup.alice, call).await.expect("the call succeeds");
                        latencies.push(began.elapsed());
                        assert_eq!(result.status(), ToolResultStatus::Success);
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for task in tasks {
            latencies.extend(task.await.expect("caller"));
        }
        (start.elapsed(), latencies)
    }
}

fn pipeline(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let setup = Arc::new(rt.block_on(setup()));
    let callers = concurrency();

    // A fixed run for the latency distribution.
    let (elapsed, mut latencies) = rt.block_on(setup.run(100_000, callers));
    latencies.sort();
    let pick = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into the sorted sample"
        )]
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).copied().unwrap_or_default()
    };
    println!(
        "\nhost pipeline: 100000 calls from {callers} concurrent callers in {:.2} s = {:.0} invocations/s; \
         latency p50 {:.2} ms, p99 {:.2} ms",
        elapsed.as_secs_f64(),
        100_000.0 / elapsed.as_secs_f64(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
    );

    let mut group = c.benchmark_group("host");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.bench_function(format!("invoke_pipeline_{callers}_callers"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let setup = Arc::clone(&setup);
            async move { setup.run(iters, callers).await.0 }
        });
    });
    group.finish();
    rt.block_on(async { setup.host.shutdown().await.expect("shutdown") });
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
