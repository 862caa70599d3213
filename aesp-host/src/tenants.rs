//! The Tenant Manager: tenants, their status, quotas and attributes.
//!
//! Tenants are stored under the system tenant and cached in memory (the pipeline reads them on
//! every call); writes go to the store first, with compare-and-set, then to the cache.

use std::{collections::BTreeMap, sync::Arc};

use aesp_core::{
    Clock, Error, ErrorCode, Result, StateStore,
    proto::v1::{Tenant, TenantQuotas, TenantStatus},
};
use arc_swap::{ArcSwap, Guard};

use crate::records::{self, check_tenant_id, shorten, tenant_key, tenants_prefix};

/// How often a compare-and-set update is retried when a concurrent writer wins.
const CAS_RETRIES: usize = 8;

/// The tenants of a Host.
#[derive(Debug)]
pub(crate) struct Tenants {
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    /// Every tenant by id, replaced whole on a change: a reader (every call) takes no lock and
    /// no reference count, so the cores do not trade the cache lines of shared counters.
    cache: ArcSwap<BTreeMap<String, Arc<Tenant>>>,
}

/// The tenants as they were when [`Tenants::current`] was called.
pub(crate) type TenantsNow = Guard<Arc<BTreeMap<String, Arc<Tenant>>>>;

impl Tenants {
    /// Loads every tenant from the store.
    pub(crate) async fn load(store: Arc<dyn StateStore>, clock: Arc<dyn Clock>) -> Result<Self> {
        let all = records::read_all::<Tenant>(store.as_ref(), &tenants_prefix()).await?;
        let cache = all.into_iter().map(|(_, t)| (t.value.tenant_id.clone(), Arc::new(t.value))).collect();
        Ok(Self { store, clock, cache: ArcSwap::from_pointee(cache) })
    }

    /// The tenants now, to read while no await intervenes.
    pub(crate) fn current(&self) -> TenantsNow {
        self.cache.load()
    }

    fn remember(&self, tenant: Tenant) -> Arc<Tenant> {
        let tenant = Arc::new(tenant);
        self.cache.rcu(|cache| {
            let mut next = BTreeMap::clone(cache);
            next.insert(tenant.tenant_id.clone(), Arc::clone(&tenant));
            next
        });
        tenant
    }

    /// The tenant, from memory.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.current().get(id).cloned()
    }

    /// Every tenant, by id.
    pub(crate) fn list(&self) -> Vec<Arc<Tenant>> {
        self.current().values().cloned().collect()
    }

    /// The tenant if it exists and is active: `NOT_FOUND` or `TENANT_SUSPENDED` otherwise.
    pub(crate) fn active(&self, id: &str) -> Result<Arc<Tenant>> {
        Self::active_in(&self.current(), id).cloned()
    }

    /// [`active`](Self::active), borrowed from `tenants` ([`current`](Self::current)).
    pub(crate) fn active_in<'a>(
        tenants: &'a BTreeMap<String, Arc<Tenant>>,
        id: &str,
    ) -> Result<&'a Arc<Tenant>> {
        let tenant = tenants.get(id).ok_or_else(|| {
            Error::not_found(format!("tenant `{}` does not exist", shorten(id))).with_tenant(id)
        })?;
        if tenant.status() == TenantStatus::Suspended {
            return Err(Error::new(ErrorCode::TenantSuspended, format!("tenant `{id}` is suspended"))
                .with_tenant(id)
                .with_remediation("ask a platform administrator to resume the tenant"));
        }
        Ok(tenant)
    }

    /// Creates a tenant.
    pub(crate) async fn create(&self, mut tenant: Tenant, created_by: &str) -> Result<Arc<Tenant>> {
        check_tenant_id(&tenant.tenant_id)?;
        let now = self.clock.now_ms();
        tenant.status = TenantStatus::Active as i32;
        tenant.created_at = now;
        tenant.updated_at = now;
        created_by.clone_into(&mut tenant.created_by);
        tenant.suspension_reason.clear();
        if tenant.quotas.is_none() {
            tenant.quotas = Some(TenantQuotas::default());
        }
        records::write(self.store.as_ref(), &tenant_key(&tenant.tenant_id), None, &tenant).await.map_err(
            |e| {
                if e.code() == ErrorCode::AlreadyExists {
                    Error::new(
                        ErrorCode::AlreadyExists,
                        format!("tenant `{}` exists already", tenant.tenant_id),
                    )
                } else {
                    e
                }
            },
        )?;
        Ok(self.remember(tenant))
    }

    /// Changes a tenant with compare-and-set, retrying when a concurrent writer wins.
    pub(crate) async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Tenant) -> Result<()>,
    ) -> Result<Arc<Tenant>> {
        let key = tenant_key(id);
        for _ in 0..CAS_RETRIES {
            let Some(stored) = records::read::<Tenant>(self.store.as_ref(), &key).await? else {
                return Err(Error::not_found(format!("tenant `{}` does not exist", shorten(id))));
            };
            let mut tenant = stored.value;
            change(&mut tenant)?;
            tenant.updated_at = self.clock.now_ms();
            match records::write(self.store.as_ref(), &key, Some(stored.revision), &tenant).await {
                Ok(_) => return Ok(self.remember(tenant)),
                Err(e) if e.code() == ErrorCode::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(ErrorCode::Conflict, format!("tenant `{id}` kept changing; retry")))
    }
}

#[cfg(test)]
mod tests {
    use aesp_core::{ManualClock, MemoryStore};

    use super::*;

    async fn tenants() -> Tenants {
        Tenants::load(Arc::new(MemoryStore::default()), Arc::new(ManualClock::new(1000))).await.unwrap()
    }

    #[tokio::test]
    async fn create_suspend_resume_and_reload() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
        let t = Tenants::load(Arc::clone(&store), Arc::new(ManualClock::new(1000))).await.unwrap();
        let acme = Tenant { tenant_id: "acme".into(), ..Default::default() };
        let created = t.create(acme.clone(), "root").await.unwrap();
        assert_eq!(created.status(), TenantStatus::Active);
        assert_eq!(created.created_by, "root");
        assert_eq!(t.create(acme, "root").await.unwrap_err().code(), ErrorCode::AlreadyExists);
        assert!(t.active("acme").is_ok());

        t.update("acme", |t| {
            t.status = TenantStatus::Suspended as i32;
            t.suspension_reason = "unpaid".into();
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(t.active("acme").unwrap_err().code(), ErrorCode::TenantSuspended);
        assert_eq!(t.active("nobody").unwrap_err().code(), ErrorCode::NotFound);

        // A new manager over the same store sees the same state.
        let again = Tenants::load(store, Arc::new(ManualClock::new(2000))).await.unwrap();
        assert_eq!(again.get("acme").unwrap().suspension_reason, "unpaid");
        assert_eq!(again.list().len(), 1);
    }

    #[tokio::test]
    async fn invalid_ids_are_refused() {
        let t = tenants().await;
        for bad in ["", "_system", "UPPER", "a/b"] {
            let tenant = Tenant { tenant_id: bad.into(), ..Default::default() };
            assert_eq!(t.create(tenant, "root").await.unwrap_err().code(), ErrorCode::InvalidArgument);
        }
        assert_eq!(t.update("ghost", |_| Ok(())).await.unwrap_err().code(), ErrorCode::NotFound);
    }
}
