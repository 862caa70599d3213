//! The in-process invocation pipeline end to end: a principal already authenticated →
//! session → contract → parameter validation → authorization against a snapshot of a 5-level
//! role hierarchy and 10 CEL policies → quota → route → durable audit START (group commit,
//! fsync on) → an in-process runtime that echoes → durable audit COMPLETE → result.
//!
//! A second run puts authentication in the path: every call presents an EdDSA access token,
//! which the Host validates (cached after its first verification) and turns into the caller.
//!
//! `cargo bench -p aesp-benches --bench host` (set `AESP_BENCH_CONCURRENCY`, default 1,024, for
//! the number of concurrent callers, `AESP_BENCH_CALLS` (default 100,000) for the calls of the
//! fixed run, `AESP_BENCH_REPEAT` (default 1) to make the fixed run that many times and print
//! their median, `AESP_BENCH_RUNS=plain` or `token` for one run only, and
//! `AESP_BENCH_INDEX_ENTRIES` for the entries the audit query index covers, default the
//! Host's, `AESP_BENCH_COMMIT_INTERVAL_US` for the audit log's pacing of group commits
//! under load, default the Host's 1,500, and `AESP_BENCH_IDEMPOTENCY_CAPACITY` for the
//! invocation ids the idempotency table holds, default the Host's 100,000, and
//! `AESP_BENCH_DIRECT_IO=true` to write the audit log's segment files with direct I/O).
//! Prints throughput, p50 and p99 latency, and the CPU time per call (all threads, from
//! `/proc/self/stat`): the figure that tells the pipeline's cost apart from fsync waits. It also
//! prints how much of the machine's CPU time was idle (or waiting for I/O) and how much the
//! hypervisor stole during the run (`/proc/stat`): on a shared virtual machine, a run with much
//! stolen time measured less machine than it seems to. A second line gives the audit log's
//! group commits during the run: how many, their mean size, the mean time from a group's
//! write to its acknowledgement (write, sync and the wait for the committer to run again),
//! which with the idle time tells waiting on the log apart from computing, and the CPU time
//! the committer's thread took per group commit (from `/proc/self/task/*/schedstat`): the cost
//! of building, writing and syncing a frame, which the neighbours' load moves less. For a
//! figure the machine's other load does not move, `benches/instructions.sh` counts the
//! instructions per call under valgrind.
//!
//! With `--features mimalloc` the benchmark's binary allocates with mimalloc rather than the
//! system allocator (glibc's), as a service embedding the Host may choose to; the fixed run
//! prints which.
#![expect(clippy::expect_used, reason = "a benchmark fails by panicking")]

/// The allocator of a binary that chose mimalloc (`--features mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The global allocator this benchmark runs with, for its report.
const ALLOCATOR_NAME: &str = if cfg!(feature = "mimalloc") { "mimalloc" } else { "system" };

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aesp_core::proto::v1::{PrincipalType, ToolCall, ToolResultStatus};
use aesp_host::{Caller, Host, HostOptions, NewPrincipal, NewSession};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

struct Setup {
    host: Host,
    alice: Caller,
    /// When set, each call authenticates this access token instead of using `alice`.
    token: Option<String>,
    session: String,
    next: AtomicU64,
    _dir: tempfile::TempDir,
}

fn concurrency() -> usize {
    // 1,024: on the 2-vCPU machine the pipeline was measured on, fewer callers left the cores
    // idle between group commits and more cost more CPU per call (docs/PERFORMANCE.md).
    std::env::var("AESP_BENCH_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(1024)
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    // The default idempotency table (100,000 ids): past 333 calls a second it forgets the
    // oldest finished calls early, as a Host under this load does.
    let mut options = HostOptions { policy_schema: aesp_benches::schema(), ..HostOptions::default() };
    if let Some(entries) = std::env::var("AESP_BENCH_INDEX_ENTRIES").ok().and_then(|v| v.parse().ok()) {
        options.audit_index_entries = entries;
    }
    if let Some(direct) = std::env::var("AESP_BENCH_DIRECT_IO").ok().and_then(|v| v.parse().ok()) {
        options.audit_direct_io = direct;
    }
    if let Some(ids) = std::env::var("AESP_BENCH_IDEMPOTENCY_CAPACITY").ok().and_then(|v| v.parse().ok()) {
        options.idempotency_capacity = ids;
    }
    if let Some(micros) = std::env::var("AESP_BENCH_COMMIT_INTERVAL_US").ok().and_then(|v| v.parse().ok()) {
        options.audit_commit_interval = Duration::from_micros(micros);
    }
    let host = Host::builder().data_dir(dir.path()).options(options).build().await.expect("host");
    let session = aesp_benches::prepare_pipeline(&host).await;
    let alice = aesp_benches::bench_caller();
    Setup { host, alice, token: None, session, next: AtomicU64::new(0), _dir: dir }
}

/// The same Host, with a principal of the identity manager holding alice's role, clearance
/// and attributes; its calls carry its access token.
async fn with_token(setup: Setup) -> Setup {
    let host = &setup.host;
    let new =
        NewPrincipal::new("token-alice").with_clearance("secret").with_attribute("spending_limit", "100.0");
    let principal = host
        .identity()
        .create_principal(aesp_benches::TENANT, PrincipalType::User, new, "bench")
        .await
        .expect("principal");
    let root = Caller::principal("_system", "root", PrincipalType::User, &[]).expect("root");
    host.assign_role(&root, aesp_benches::TENANT, &principal.principal_id, "director").await.expect("assign");
    let tokens = host
        .identity()
        .issue_tokens(aesp_benches::TENANT, &principal.principal_id, "bench")
        .await
        .expect("token");
    let caller = authenticate(host, tokens.access_token.expose()).await;
    let session = host.create_session(&caller, NewSession::default()).await.expect("session").id().to_owned();
    Setup { token: Some(tokens.access_token.expose().to_owned()), session, ..setup }
}

/// What a gateway does per call: the token's caller, with the peer's address.
async fn authenticate(host: &Host, token: &str) -> Caller {
    host.authenticate(token).await.expect("the token is valid").with_source_ip("10.1.2.3")
}

impl Setup {
    fn call(&self) -> ToolCall {
        aesp_benches::pipeline_call(&self.session, self.next.fetch_add(1, Ordering::Relaxed))
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
                        let result = match &setup.token {
                            Some(token) => {
                                let caller = authenticate(&setup.host, token).await;
                                setup.host.invoke(&caller, call).await
                            }
                            None => setup.host.invoke(&setup.alice, call).await,
                        }
                        .expect("the call succeeds");
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

/// The CPU time this process has used so far (user and system, all threads), from
/// `/proc/self/stat`; `None` where that file is not there.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')?.saturating_add(2)..)?;
    let mut fields = rest.split(' ').skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    // Clock ticks of 10 ms (USER_HZ is 100 on Linux).
    Some(Duration::from_millis(user.saturating_add(system).saturating_mul(10)))
}

/// The CPU time the audit log's committer thread (`aesp-audit-commit`, which writes and syncs
/// each group commit) has used so far, from `/proc/self/task/*/schedstat` (nanoseconds);
/// `None` where those files are not there.
fn committer_cpu_time() -> Option<Duration> {
    std::fs::read_dir("/proc/self/task").ok()?.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if !comm.starts_with("aesp-audit-comm") {
            return None;
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        Some(Duration::from_nanos(schedstat.split_whitespace().next()?.parse().ok()?))
    })
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`, in clock ticks: (all,
/// idle and I/O wait, stolen by the hypervisor); `None` where that file is not there.
fn machine_time() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let ticks: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    let idle = ticks.get(3)?.saturating_add(*ticks.get(4)?);
    Some((ticks.iter().sum(), idle, *ticks.get(7)?))
}

/// The share of the machine's CPU time between `before` and `after` that was idle and that
/// was stolen, in percent: a run with much of either measured a machine it did not have.
fn idle_and_steal(before: (u64, u64, u64), after: (u64, u64, u64)) -> (f64, f64) {
    let all = after.0.saturating_sub(before.0).max(1) as f64;
    let idle = after.1.saturating_sub(before.1) as f64;
    let steal = after.2.saturating_sub(before.2) as f64;
    (100.0 * idle / all, 100.0 * steal / all)
}

/// The fixed run: throughput, the latency distribution and the CPU time per call, printed;
/// returns the throughput and the CPU time per call in core-µs (NaN where not known).
fn fixed_run(rt: &tokio::runtime::Runtime, setup: &Arc<Setup>, callers: usize, label: &str) -> (f64, f64) {
    let calls = std::env::var("AESP_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000u64);
    let (cpu_before, machine_before) = (cpu_time(), machine_time());
    let (commits_before, committer_before) = (setup.host.audit_log().commit_stats(), committer_cpu_time());
    let (elapsed, mut latencies) = rt.block_on(setup.run(calls, callers));
    let (commits_after, committer_after) = (setup.host.audit_log().commit_stats(), committer_cpu_time());
    let cpu = cpu_time().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    let machine = machine_before.zip(machine_time()).map(|(before, after)| idle_and_steal(before, after));
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
    let throughput = calls as f64 / elapsed.as_secs_f64();
    let cpu_per_call = cpu.map_or(f64::NAN, |cpu| cpu.as_secs_f64() * 1e6 / calls as f64);
    println!(
        "\nhost pipeline{label}: {calls} calls from {callers} concurrent callers in {:.2} s = {:.0} invocations/s; \
         latency p50 {:.2} ms, p99 {:.2} ms; CPU {:.1} core-µs per call; machine idle {:.0}%, stolen {:.0}%",
        elapsed.as_secs_f64(),
        throughput,
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        cpu_per_call,
        machine.map_or(f64::NAN, |m| m.0),
        machine.map_or(f64::NAN, |m| m.1),
    );
    let groups = commits_after.groups.saturating_sub(commits_before.groups).max(1) as f64;
    let committer = committer_after.zip(committer_before).map(|(after, before)| after.saturating_sub(before));
    println!(
        "  audit: {:.0} group commits, {:.0} entries each, {:.2} ms each from write to acknowledgement, \
         {:.0} µs of the committer thread's CPU each; {ALLOCATOR_NAME} allocator",
        groups,
        commits_after.entries.saturating_sub(commits_before.entries) as f64 / groups,
        commits_after.commit_time.saturating_sub(commits_before.commit_time).as_secs_f64() * 1e3 / groups,
        committer.map_or(f64::NAN, |c| c.as_secs_f64() * 1e6 / groups),
    );
    (throughput, cpu_per_call)
}

/// The fixed run `AESP_BENCH_REPEAT` times (default once) on the same Host, then, for more than
/// one, the median and range of the throughput and the median CPU time per call: on a shared
/// machine one run says little, and a change is only real if it moves the median.
fn fixed_runs(rt: &tokio::runtime::Runtime, setup: &Arc<Setup>, callers: usize, label: &str) {
    let repeat =
        std::env::var("AESP_BENCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(1usize).max(1);
    let (mut throughputs, mut cpus): (Vec<f64>, Vec<f64>) =
        (0..repeat).map(|_| fixed_run(rt, setup, callers, label)).unzip();
    if repeat > 1 {
        throughputs.sort_by(f64::total_cmp);
        cpus.sort_by(f64::total_cmp);
        let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        println!(
            "\nhost pipeline{label}, {repeat} runs: median {:.0} invocations/s ({:.0} to {:.0}); median CPU {:.1} core-µs per call",
            median(&throughputs),
            throughputs.first().copied().unwrap_or(f64::NAN),
            throughputs.last().copied().unwrap_or(f64::NAN),
            median(&cpus),
        );
    }
}

fn pipeline(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let callers = concurrency();
    let mut group = c.benchmark_group("host");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    // `AESP_BENCH_RUNS=plain` (or `token`) runs only that one.
    let runs = std::env::var("AESP_BENCH_RUNS").unwrap_or_default();
    for authenticated in [false, true] {
        if (runs == "plain" && authenticated) || (runs == "token" && !authenticated) {
            continue;
        }
        let mut setup = rt.block_on(setup());
        if authenticated {
            setup = rt.block_on(with_token(setup));
        }
        let setup = Arc::new(setup);
        let label = if authenticated { " (token authenticated)" } else { "" };
        fixed_runs(&rt, &setup, callers, label);
        let name = if authenticated { "invoke_pipeline_token" } else { "invoke_pipeline" };
        group.bench_function(format!("{name}_{callers}_callers"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let setup = Arc::clone(&setup);
                async move { setup.run(iters, callers).await.0 }
            });
        });
        rt.block_on(async { setup.host.shutdown().await.expect("shutdown") });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
