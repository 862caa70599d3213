//! Runtimes: processes (or in-process handlers) that connect to the Host and fulfil its
//! contracts. The registry knows each runtime's tenant, zone, environment, health and load,
//! and routes each call to the least-loaded healthy runtime of the caller's tenant that
//! fulfils the contract version, within the runtime's concurrency limit.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use aesp_core::{
    ChunkStream, Clock, Error, ErrorCode, Result, RuntimeTransport,
    proto::v1::{EnterpriseRuntimeAnnouncement, RuntimeHealth, StreamChunk, ToolCall, ToolResult},
};
use async_trait::async_trait;
use futures_util::StreamExt as _;

use crate::records::{check_name, shorten};

/// One contract a runtime fulfils: a name and the semver range of versions it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fulfilment {
    /// The contract's name.
    pub contract: String,
    /// The versions served.
    pub versions: semver::VersionReq,
}

/// A connected runtime.
#[derive(Debug)]
pub struct RuntimeEntry {
    announcement: EnterpriseRuntimeAnnouncement,
    transport: Arc<dyn RuntimeTransport>,
    fulfils: RwLock<Vec<Fulfilment>>,
    last_heartbeat_ms: AtomicU64,
    heartbeats_required: bool,
    in_flight: AtomicU32,
    max_concurrent: u32,
}

impl RuntimeEntry {
    /// The runtime's id.
    pub fn id(&self) -> &str {
        &self.announcement.runtime_id
    }

    /// Its tenant.
    pub fn tenant_id(&self) -> &str {
        &self.announcement.tenant_id
    }

    /// What it announced.
    pub fn announcement(&self) -> &EnterpriseRuntimeAnnouncement {
        &self.announcement
    }

    /// Its transport.
    pub fn transport(&self) -> &Arc<dyn RuntimeTransport> {
        &self.transport
    }

    /// Invocations it is running now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// What it fulfils.
    pub fn fulfils(&self) -> Vec<Fulfilment> {
        self.fulfils.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn serves(&self, contract: &str, version: &semver::Version) -> bool {
        self.fulfils
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|f| f.contract == contract && f.versions.matches(version))
    }

    /// Its health at `now_ms` given the heartbeat timeout.
    pub fn health(&self, now_ms: u64, timeout: Duration) -> RuntimeHealth {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let fresh = !self.heartbeats_required
            || now_ms.saturating_sub(self.last_heartbeat_ms.load(Ordering::Relaxed)) <= timeout_ms;
        if self.transport.is_connected() && fresh { RuntimeHealth::Healthy } else { RuntimeHealth::Unhealthy }
    }

    /// Takes a place within the runtime's concurrency limit.
    fn acquire(self: &Arc<Self>) -> Option<RuntimePermit> {
        let max = if self.max_concurrent == 0 { u32::MAX } else { self.max_concurrent };
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| RuntimePermit { runtime: Arc::clone(self) })
    }
}

/// A call's place on a runtime; released when dropped.
#[derive(Debug)]
pub struct RuntimePermit {
    runtime: Arc<RuntimeEntry>,
}

impl RuntimePermit {
    /// The runtime the call goes to.
    pub fn runtime(&self) -> &Arc<RuntimeEntry> {
        &self.runtime
    }
}

impl Drop for RuntimePermit {
    fn drop(&mut self) {
        self.runtime.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The runtimes connected to a Host.
#[derive(Debug)]
pub(crate) struct Runtimes {
    clock: Arc<dyn Clock>,
    heartbeat_timeout: Duration,
    by_id: RwLock<HashMap<String, Arc<RuntimeEntry>>>,
}

impl Runtimes {
    pub(crate) fn new(clock: Arc<dyn Clock>, heartbeat_timeout: Duration) -> Self {
        Self { clock, heartbeat_timeout, by_id: RwLock::new(HashMap::new()) }
    }

    /// Registers a runtime of `tenant`. Its announced id must be the id its transport
    /// authenticated, and its announced tenant (if any) the tenant it connected as.
    pub(crate) fn announce(
        &self,
        tenant: &str,
        mut announcement: EnterpriseRuntimeAnnouncement,
        transport: Arc<dyn RuntimeTransport>,
        heartbeats_required: bool,
    ) -> Result<Arc<RuntimeEntry>> {
        check_name("runtime id", &announcement.runtime_id)?;
        if announcement.runtime_id != transport.runtime_id() {
            return Err(Error::new(
                ErrorCode::CertificateInvalid,
                format!(
                    "runtime announced itself as `{}` but authenticated as `{}`",
                    shorten(&announcement.runtime_id),
                    shorten(transport.runtime_id())
                ),
            )
            .with_security_implication("a runtime tried to impersonate another"));
        }
        if announcement.tenant_id.is_empty() {
            tenant.clone_into(&mut announcement.tenant_id);
        } else if announcement.tenant_id != tenant {
            return Err(Error::new(
                ErrorCode::TenantAccessDenied,
                "a runtime may only serve the tenant it connected as",
            )
            .with_tenant(tenant));
        }
        let max_concurrent =
            announcement.resource_limits.as_ref().map_or(0, |l| l.max_concurrent_invocations);
        let entry = Arc::new(RuntimeEntry {
            announcement,
            transport,
            fulfils: RwLock::new(Vec::new()),
            last_heartbeat_ms: AtomicU64::new(self.clock.now_ms()),
            heartbeats_required,
            in_flight: AtomicU32::new(0),
            max_concurrent,
        });
        let mut by_id = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = by_id.get(entry.id())
            && existing.tenant_id() != tenant
        {
            return Err(Error::new(
                ErrorCode::TenantAccessDenied,
                "that runtime id belongs to another tenant",
            )
            .with_tenant(tenant));
        }
        by_id.insert(entry.id().to_owned(), Arc::clone(&entry));
        Ok(entry)
    }

    /// The runtime `id` of `tenant`; another tenant's runtime is `TENANT_ACCESS_DENIED`.
    pub(crate) fn get(&self, tenant: &str, id: &str) -> Result<Arc<RuntimeEntry>> {
        let entry = self
            .by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("runtime `{}` is not connected", shorten(id))))?;
        if entry.tenant_id() != tenant {
            return Err(Error::new(ErrorCode::TenantAccessDenied, "the runtime belongs to another tenant")
                .with_tenant(tenant)
                .escalate());
        }
        Ok(entry)
    }

    /// Records that the runtime serves `fulfilment` (already checked against the contracts).
    pub(crate) fn add_fulfilment(&self, runtime: &RuntimeEntry, fulfilment: Fulfilment) {
        let mut fulfils = runtime.fulfils.write().unwrap_or_else(PoisonError::into_inner);
        fulfils.retain(|f| f.contract != fulfilment.contract);
        fulfils.push(fulfilment);
    }

    /// Records a heartbeat.
    pub(crate) fn heartbeat(&self, tenant: &str, id: &str) -> Result<RuntimeHealth> {
        let entry = self.get(tenant, id)?;
        let now = self.clock.now_ms();
        entry.last_heartbeat_ms.fetch_max(now, Ordering::Relaxed);
        Ok(entry.health(now, self.heartbeat_timeout))
    }

    /// Removes a runtime.
    pub(crate) fn unregister(&self, tenant: &str, id: &str) -> Result<Arc<RuntimeEntry>> {
        self.get(tenant, id)?;
        self.by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .ok_or_else(|| Error::not_found(format!("runtime `{}` is not connected", shorten(id))))
    }

    /// The runtimes of `tenant`.
    pub(crate) fn list(&self, tenant: &str) -> Vec<Arc<RuntimeEntry>> {
        let mut all: Vec<_> = self
            .by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|r| r.tenant_id() == tenant)
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// A place on the least-loaded runtime of `tenant` that serves `contract` at `version`, is
    /// healthy at `now` and has room: `RESOURCE_UNAVAILABLE` if none does.
    pub(crate) fn route(
        &self,
        tenant: &str,
        contract: &str,
        version: &semver::Version,
        now: u64,
    ) -> Result<RuntimePermit> {
        let by_id = self.by_id.read().unwrap_or_else(PoisonError::into_inner);
        let eligible = |r: &&Arc<RuntimeEntry>| {
            r.tenant_id() == tenant
                && r.serves(contract, version)
                && r.health(now, self.heartbeat_timeout) == RuntimeHealth::Healthy
        };
        // Usually the least-loaded eligible runtime has room: take it without collecting.
        if let Some(permit) =
            by_id.values().filter(eligible).min_by_key(|r| r.in_flight()).and_then(RuntimeEntry::acquire)
        {
            return Ok(permit);
        }
        let mut candidates: Vec<Arc<RuntimeEntry>> = by_id.values().filter(eligible).cloned().collect();
        drop(by_id);
        if candidates.is_empty() {
            return Err(Error::new(
                ErrorCode::ResourceUnavailable,
                format!("no healthy runtime of tenant `{tenant}` serves `{contract}` {version}"),
            )
            .with_tenant(tenant)
            .with_retry_after(Duration::from_secs(1)));
        }
        candidates.sort_by_key(|r| r.in_flight());
        candidates.iter().find_map(RuntimeEntry::acquire).ok_or_else(|| {
            Error::new(
                ErrorCode::ResourceUnavailable,
                format!("every runtime serving `{contract}` is at its limit"),
            )
            .with_tenant(tenant)
            .with_retry_after(Duration::from_millis(100))
        })
    }
}

/// A tool implemented in Rust, served by an [`InProcessRuntime`].
#[async_trait]
pub trait ToolHandler: Send + Sync + 'static {
    /// Runs one call.
    async fn call(&self, call: ToolCall) -> Result<ToolResult>;

    /// Runs one streaming call; the default refuses (`UNIMPLEMENTED`).
    async fn stream(&self, call: ToolCall) -> Result<ChunkStream> {
        let _ = call;
        Err(Error::new(ErrorCode::Unimplemented, "this runtime does not stream"))
    }
}

/// A [`ToolHandler`] from an async function.
pub fn handler_fn<F, Fut>(f: F) -> impl ToolHandler
where
    F: Fn(ToolCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ToolResult>> + Send + 'static,
{
    struct FnHandler<F>(F);
    #[async_trait]
    impl<F, Fut> ToolHandler for FnHandler<F>
    where
        F: Fn(ToolCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ToolResult>> + Send + 'static,
    {
        async fn call(&self, call: ToolCall) -> Result<ToolResult> {
            (self.0)(call).await
        }
    }
    FnHandler(f)
}

/// A runtime in the Host's own process: a [`ToolHandler`] behind the [`RuntimeTransport`]
/// seam, with the same deadline and identity rules as a remote runtime.
pub struct InProcessRuntime {
    id: String,
    handler: Arc<dyn ToolHandler>,
}

impl fmt::Debug for InProcessRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessRuntime").field("id", &self.id).finish_non_exhaustive()
    }
}

impl InProcessRuntime {
    /// A runtime called `id` serving calls with `handler`.
    pub fn new(id: impl Into<String>, handler: impl ToolHandler) -> Self {
        Self { id: id.into(), handler: Arc::new(handler) }
    }
}

fn deadline_exceeded(deadline: Duration) -> Error {
    Error::new(
        ErrorCode::DeadlineExceeded,
        format!("the runtime did not answer within {} ms", deadline.as_millis()),
    )
    .with_retry_after(Duration::from_millis(100))
}

#[async_trait]
impl RuntimeTransport for InProcessRuntime {
    fn runtime_id(&self) -> &str {
        &self.id
    }

    async fn invoke(&self, call: ToolCall, deadline: Duration) -> Result<ToolResult> {
        // The pipeline checks that the result is the call's, as it does for every transport.
        tokio::time::timeout(deadline, self.handler.call(call))
            .await
            .map_err(|_| deadline_exceeded(deadline))?
    }

    async fn invoke_stream(&self, call: ToolCall, deadline: Duration) -> Result<ChunkStream> {
        let invocation_id = call.invocation_id.clone();
        let end = tokio::time::Instant::now() + deadline;
        let stream = tokio::time::timeout_at(end, self.handler.stream(call))
            .await
            .map_err(|_| deadline_exceeded(deadline))??;
        // The whole stream shares the deadline; chunk ids must count from 0 without gaps.
        let checked =
            futures_util::stream::unfold((stream, 0u64, false), move |(mut stream, expected, done)| {
                let invocation_id = invocation_id.clone();
                async move {
                    if done {
                        return None;
                    }
                    let item = match tokio::time::timeout_at(end, stream.next()).await {
                        Err(_) => Some(Err(deadline_exceeded(deadline))),
                        Ok(None) => Some(Err(Error::new(
                            ErrorCode::ResourceUnavailable,
                            "the runtime ended the stream without a final chunk",
                        ))),
                        Ok(Some(item)) => Some(item.and_then(|chunk: StreamChunk| {
                            if chunk.chunk_id != expected || chunk.invocation_id != invocation_id {
                                Err(Error::internal(format!(
                                    "the runtime sent chunk {} of `{}` where chunk {expected} was due",
                                    chunk.chunk_id,
                                    shorten(&chunk.invocation_id)
                                )))
                            } else {
                                Ok(chunk)
                            }
                        })),
                    };
                    let finished = !matches!(&item, Some(Ok(chunk)) if !chunk.is_final);
                    item.map(|item| (item, (stream, expected + 1, finished)))
                }
            });
        Ok(Box::pin(checked))
    }

    fn is_connected(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use aesp_core::{
        ManualClock,
        proto::v1::{ResourceLimits, ToolResultStatus, Value},
    };

    use super::*;

    fn echo() -> impl ToolHandler {
        handler_fn(|call: ToolCall| async move {
            if call.tool_name == "slow" {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok(ToolResult {
                invocation_id: call.invocation_id,
                status: ToolResultStatus::Success as i32,
                payload: Some(Value::string("ok")),
                ..ToolResult::default()
            })
        })
    }

    fn announcement(id: &str, tenant: &str, max: u32) -> EnterpriseRuntimeAnnouncement {
        EnterpriseRuntimeAnnouncement {
            runtime_id: id.into(),
            tenant_id: tenant.into(),
            resource_limits: Some(ResourceLimits { max_concurrent_invocations: max, ..Default::default() }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn routing_respects_tenant_health_versions_and_limits() {
        let clock = ManualClock::new(0);
        let runtimes = Runtimes::new(Arc::new(clock.clone()), Duration::from_secs(30));
        let a = runtimes
            .announce(
                "acme",
                announcement("rt-a", "acme", 1),
                Arc::new(InProcessRuntime::new("rt-a", echo())),
                true,
            )
            .unwrap();
        let b = runtimes
            .announce(
                "acme",
                announcement("rt-b", "", 0),
                Arc::new(InProcessRuntime::new("rt-b", echo())),
                true,
            )
            .unwrap();
        assert_eq!(b.tenant_id(), "acme");
        runtimes.add_fulfilment(
            &a,
            Fulfilment { contract: "sql".into(), versions: semver::VersionReq::parse("^1").unwrap() },
        );
        runtimes.add_fulfilment(
            &b,
            Fulfilment { contract: "sql".into(), versions: semver::VersionReq::parse("^2").unwrap() },
        );
        let v1 = semver::Version::new(1, 4, 0);

        let permit = runtimes.route("acme", "sql", &v1, clock.now_ms()).unwrap();
        assert_eq!(permit.runtime().id(), "rt-a");
        // rt-a is at its limit of 1; rt-b does not serve 1.x.
        assert_eq!(
            runtimes.route("acme", "sql", &v1, clock.now_ms()).unwrap_err().code(),
            ErrorCode::ResourceUnavailable
        );
        drop(permit);
        assert!(runtimes.route("acme", "sql", &v1, clock.now_ms()).is_ok());
        assert_eq!(
            runtimes
                .route("acme", "sql", &semver::Version::new(2, 0, 0), clock.now_ms())
                .unwrap()
                .runtime()
                .id(),
            "rt-b"
        );
        // Another tenant never reaches acme's runtimes.
        assert_eq!(
            runtimes.route("globex", "sql", &v1, clock.now_ms()).unwrap_err().code(),
            ErrorCode::ResourceUnavailable
        );
        assert_eq!(runtimes.get("globex", "rt-a").unwrap_err().code(), ErrorCode::TenantAccessDenied);

        // Missed heartbeats make a runtime unhealthy; a heartbeat brings it back.
        clock.advance(Duration::from_secs(31));
        assert!(runtimes.route("acme", "sql", &v1, clock.now_ms()).is_err());
        assert_eq!(runtimes.heartbeat("acme", "rt-a").unwrap(), RuntimeHealth::Healthy);
        assert!(runtimes.route("acme", "sql", &v1, clock.now_ms()).is_ok());
    }

    #[tokio::test]
    async fn identity_and_tenant_of_announcements_are_checked() {
        let runtimes = Runtimes::new(Arc::new(ManualClock::new(0)), Duration::from_secs(30));
        let transport = Arc::new(InProcessRuntime::new("rt-a", echo()));
        let error =
            runtimes.announce("acme", announcement("rt-z", "acme", 0), transport.clone(), true).unwrap_err();
        assert_eq!(error.code(), ErrorCode::CertificateInvalid);
        let error = runtimes
            .announce("acme", announcement("rt-a", "globex", 0), transport.clone(), true)
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::TenantAccessDenied);
        runtimes.announce("acme", announcement("rt-a", "acme", 0), transport.clone(), true).unwrap();
        let error =
            runtimes.announce("globex", announcement("rt-a", "globex", 0), transport, true).unwrap_err();
        assert_eq!(error.code(), ErrorCode::TenantAccessDenied, "a runtime id cannot move tenant");
    }

    #[tokio::test]
    async fn in_process_calls_have_a_deadline() {
        let runtime = InProcessRuntime::new("rt", echo());
        let call = ToolCall { invocation_id: "i-1".into(), tool_name: "fast".into(), ..Default::default() };
        assert_eq!(runtime.invoke(call, Duration::from_secs(1)).await.unwrap().invocation_id, "i-1");
        let call = ToolCall { invocation_id: "i-2".into(), tool_name: "slow".into(), ..Default::default() };
        let error = runtime.invoke(call, Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::DeadlineExceeded);
        // (A result for another invocation is refused by the pipeline, for every transport:
        // tests/pipeline.rs.)
    }
}
