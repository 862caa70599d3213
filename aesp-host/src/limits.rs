//! Admission and per-tenant limits on the call path, all in memory and without a global
//! lock: graceful-shutdown admission, concurrent invocations per tenant, invocations per
//! second per tenant (a token bucket per tenant).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use aesp_core::{Clock, Error, ErrorCode, Result, proto::v1::TenantQuotas};
use tokio::sync::Notify;

/// Whether the Host admits calls, and how many are in flight.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    closing: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// A call admitted by [`Admission::admit`]; counted in flight until dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.admission.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.admission.idle.notify_waiters();
        }
    }
}

impl Admission {
    /// Admits a call unless the Host is shutting down.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Admitted> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted { admission: Arc::clone(self) };
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::new(ErrorCode::ServiceUnavailable, "the Host is shutting down")
                .with_retry_after(Duration::from_secs(1)));
        }
        Ok(admitted)
    }

    /// Stops admitting calls and waits up to `grace` for those in flight; returns how many
    /// were still running when the wait ended.
    pub(crate) async fn close(&self, grace: Duration) -> usize {
        self.closing.store(true, Ordering::Release);
        let drained = async {
            loop {
                let notified = self.idle.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, drained).await;
        self.in_flight.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct TenantCounters {
    active: AtomicU32,
    /// Token bucket: (tokens, last refill in ms).
    bucket: Mutex<(f64, u64)>,
}

/// The per-tenant invocation limits.
#[derive(Debug)]
pub(crate) struct TenantLimits {
    clock: Arc<dyn Clock>,
    counters: RwLock<HashMap<String, Arc<TenantCounters>>>,
}

/// A tenant's running invocation; released when dropped.
#[derive(Debug)]
pub(crate) struct TenantSlot {
    counters: Arc<TenantCounters>,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TenantLimits {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, counters: RwLock::new(HashMap::new()) }
    }

    fn counters(&self, tenant: &str) -> Arc<TenantCounters> {
        if let Some(c) = self.counters.read().unwrap_or_else(PoisonError::into_inner).get(tenant) {
            return Arc::clone(c);
        }
        let mut all = self.counters.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(all.entry(tenant.to_owned()).or_insert_with(|| {
            Arc::new(TenantCounters { active: AtomicU32::new(0), bucket: Mutex::new((f64::NAN, 0)) })
        }))
    }

    /// Takes a slot for one invocation of `tenant` within its quotas, or refuses with
    /// `QUOTA_EXCEEDED` (concurrency) or `RATE_LIMIT_EXCEEDED` (rate).
    pub(crate) fn acquire(&self, tenant: &str, quotas: Option<&TenantQuotas>) -> Result<TenantSlot> {
        let counters = self.counters(tenant);
        let quotas = quotas.cloned().unwrap_or_default();
        if quotas.max_invocations_per_second > 0 {
            let rate = f64::from(quotas.max_invocations_per_second);
            let now = self.clock.now_ms();
            let mut bucket = counters.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            let (tokens, last) = *bucket;
            #[expect(clippy::cast_precision_loss, reason = "elapsed milliseconds are small")]
            let refilled = if tokens.is_nan() {
                rate
            } else {
                (tokens + now.saturating_sub(last) as f64 * rate / 1000.0).min(rate)
            };
            if refilled < 1.0 {
                *bucket = (refilled, now);
                return Err(Error::new(
                    ErrorCode::RateLimitExceeded,
                    format!(
                        "tenant `{tenant}` is limited to {} invocations per second",
                        quotas.max_invocations_per_second
                    ),
                )
                .with_tenant(tenant)
                .with_retry_after(Duration::from_millis(
                    1000 / u64::from(quotas.max_invocations_per_second).max(1),
                )));
            }
            *bucket = (refilled - 1.0, now);
        }
        let max =
            if quotas.max_concurrent_invocations == 0 { u32::MAX } else { quotas.max_concurrent_invocations };
        counters
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| {
                Error::new(
                    ErrorCode::QuotaExceeded,
                    format!("tenant `{tenant}` has its quota of {max} invocations running"),
                )
                .with_tenant(tenant)
                .with_retry_after(Duration::from_millis(50))
            })?;
        Ok(TenantSlot { counters })
    }
}

#[cfg(test)]
mod tests {
    use aesp_core::ManualClock;

    use super::*;

    #[test]
    fn concurrency_and_rate_quotas() {
        let clock = ManualClock::new(10_000);
        let limits = TenantLimits::new(Arc::new(clock.clone()));
        let quotas = TenantQuotas {
            max_concurrent_invocations: 2,
            max_invocations_per_second: 0,
            ..Default::default()
        };
        let a = limits.acquire("acme", Some(&quotas)).unwrap();
        let _b = limits.acquire("acme", Some(&quotas)).unwrap();
        assert_eq!(limits.acquire("acme", Some(&quotas)).unwrap_err().code(), ErrorCode::QuotaExceeded);
        assert!(limits.acquire("globex", Some(&quotas)).is_ok(), "tenants have their own counters");
        drop(a);
        assert!(limits.acquire("acme", Some(&quotas)).is_ok());

        let quotas = TenantQuotas { max_invocations_per_second: 3, ..Default::default() };
        for _ in 0..3 {
            drop(limits.acquire("rated", Some(&quotas)).unwrap());
        }
        assert_eq!(limits.acquire("rated", Some(&quotas)).unwrap_err().code(), ErrorCode::RateLimitExceeded);
        clock.advance(Duration::from_millis(400));
        assert!(limits.acquire("rated", Some(&quotas)).is_ok(), "a token refilled");
    }

    #[tokio::test]
    async fn admission_closes_and_drains() {
        let admission = Arc::new(Admission::default());
        let call = admission.admit().unwrap();
        let closer = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.close(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(admission.admit().unwrap_err().code(), ErrorCode::ServiceUnavailable);
        drop(call);
        assert_eq!(closer.await.unwrap(), 0);
    }
}
