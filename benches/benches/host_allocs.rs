//! Heap allocations per successful `Host::invoke`, counted by a counting global allocator:
//! a figure that, unlike throughput, other work on the machine does not disturb.
//!
//! `cargo bench -p aesp-benches --bench host_allocs` (set `AESP_ALLOC_CALLS`, default 10,000,
//! for the number of counted calls). The calls are built before counting starts, so only the
//! Host's own work is counted: the pipeline, the policy decision, the audit appends (and the
//! audit log's background tasks), the runtime and the idempotency table. Three setups:
//!
//! - `memory, 1 caller`: the in-memory backends, one call at a time (the pipeline alone);
//! - `durable, 1 caller`: the embedded defaults in a data directory, one call at a time (every
//!   audit batch holds one event, so the count is deterministic);
//! - `durable, N callers`: the embedded defaults, `AESP_BENCH_CONCURRENCY` (default 512)
//!   concurrent callers, as the throughput benchmark runs (batches vary, so the figure does a
//!   little too).
#![expect(clippy::expect_used, reason = "a benchmark fails by panicking")]

use std::{
    alloc::System,
    sync::{Arc, Mutex, PoisonError},
};

use aesp_core::{
    SystemClock,
    proto::v1::{ToolCall, ToolResultStatus},
};
use aesp_host::{Backends, Caller, Host, HostOptions};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, Stats, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const WARM_UP: u64 = 2_000;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn options() -> HostOptions {
    HostOptions { policy_schema: aesp_benches::schema(), ..HostOptions::default() }
}

/// Runs `calls` (from `callers` concurrent tasks) and returns what they allocated.
async fn count(host: &Host, caller: &Caller, calls: Vec<ToolCall>, callers: usize) -> Stats {
    let queue = Arc::new(Mutex::new(calls));
    let region = Region::new(GLOBAL);
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (host, caller, queue) = (host.clone(), caller.clone(), Arc::clone(&queue));
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap_or_else(PoisonError::into_inner).pop();
                    let Some(call) = next else { break };
                    let result = host.invoke(&caller, call).await.expect("the call succeeds");
                    assert_eq!(result.status(), ToolResultStatus::Success);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
    region.change()
}

/// Runs one setup: warm-up, then `calls` counted calls; prints the figures per call.
async fn measure(label: &str, host: &Host, session: &str, calls: u64, callers: usize) {
    let caller = aesp_benches::bench_caller();
    let warm_up: Vec<ToolCall> = (0..WARM_UP).map(|n| aesp_benches::pipeline_call(session, n)).collect();
    count(host, &caller, warm_up, callers).await;
    let counted: Vec<ToolCall> =
        (WARM_UP..WARM_UP + calls).rev().map(|n| aesp_benches::pipeline_call(session, n)).collect();
    let stats = count(host, &caller, counted, callers).await;
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let per_call = |n: usize| n as f64 / calls as f64;
    println!(
        "{label}: {calls} calls: {:.1} allocations + {:.1} reallocations per call, {:.0} bytes allocated \
         per call ({:.1} frees per call)",
        per_call(stats.allocations),
        per_call(stats.reallocations),
        per_call(stats.bytes_allocated),
        per_call(stats.deallocations),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; this benchmark takes no other arguments.
    let calls = env_number("AESP_ALLOC_CALLS", 10_000);
    let callers = usize::try_from(env_number("AESP_BENCH_CONCURRENCY", 512)).unwrap_or(512);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let backends = Backends::in_memory(Arc::new(SystemClock)).expect("backends");
        let host = Host::builder().backends(backends).options(options()).build().await.expect("host");
        let session = aesp_benches::prepare_pipeline(&host).await;
        measure("memory, 1 caller", &host, &session, calls, 1).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let host = Host::builder().data_dir(dir.path()).options(options()).build().await.expect("host");
        let session = aesp_benches::prepare_pipeline(&host).await;
        measure("durable, 1 caller", &host, &session, calls, 1).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let host = Host::builder().data_dir(dir.path()).options(options()).build().await.expect("host");
        let session = aesp_benches::prepare_pipeline(&host).await;
        measure(&format!("durable, {callers} callers"), &host, &session, calls, callers).await;
        host.shutdown().await.expect("shutdown");
    });
}
