//! Reading the lifecycle's records from the store at one revision, and turning them into
//! snapshot records and snapshots.

use std::collections::{BTreeMap, HashMap};

use aesp_core::{
    Error, KeyValue, RangeRequest, Result, Revision, StateStore,
    proto::v1::{PolicyDefinition, RoleDefinition, Value},
};

use super::records::{
    ORGANIZATION_PREFIX, SnapshotRecord, StoredAssignment, StoredRollout, StoredTenant, StoredVersion,
    TENANTS_PREFIX, decode, policies_prefix, roles_prefix, unescape,
};
use crate::{Engine, Schema, Snapshot, SnapshotBuilder};

/// The most keys one scan of the refresh reads.
const MAX_SCAN: usize = 1_000_000;

/// Every key with `prefix` at `revision`.
pub(crate) async fn scan_at(
    store: &dyn StateStore,
    prefix: &str,
    revision: Revision,
) -> Result<Vec<KeyValue>> {
    let mut request = RangeRequest::prefix(prefix.as_bytes()).at(revision).limit(1000);
    let mut all = Vec::new();
    loop {
        let page = store.range(request.clone()).await?;
        all.extend(page.kvs.iter().cloned());
        if all.len() > MAX_SCAN {
            return Err(Error::invalid_argument(format!("more than {MAX_SCAN} keys start with `{prefix}`")));
        }
        match request.after(&page) {
            Some(next) => request = next,
            None => return Ok(all),
        }
    }
}

/// One policy's records.
#[derive(Clone, Debug, Default)]
pub(crate) struct PolicySource {
    pub(crate) rollout: Option<StoredRollout>,
    pub(crate) versions: HashMap<String, StoredVersion>,
}

impl PolicySource {
    pub(crate) fn definition(&self, version: &str) -> Option<&PolicyDefinition> {
        if version.is_empty() {
            return None;
        }
        self.versions.get(version).and_then(|v| v.policy.as_ref())
    }
}

/// One tenant's records.
#[derive(Clone, Debug, Default)]
pub(crate) struct TenantSource {
    pub(crate) policies: BTreeMap<String, PolicySource>,
    pub(crate) roles: BTreeMap<String, RoleDefinition>,
    pub(crate) assignments: Vec<StoredAssignment>,
}

/// Everything the lifecycle keeps, at one revision.
#[derive(Clone, Debug, Default)]
pub(crate) struct Source {
    pub(crate) revision: Revision,
    pub(crate) tenants: BTreeMap<String, TenantSource>,
    pub(crate) organization: BTreeMap<String, Value>,
}

/// Reads one tenant's policies and roles at `revision`.
pub(crate) async fn read_tenant(
    store: &dyn StateStore,
    tenant: &str,
    revision: Revision,
) -> Result<TenantSource> {
    let mut out = TenantSource::default();
    let prefix = policies_prefix(tenant);
    for kv in scan_at(store, &prefix, revision).await? {
        let key = String::from_utf8_lossy(&kv.key);
        let Some(rest) = key.strip_prefix(&prefix) else { continue };
        let Some((policy, tail)) = rest.split_once('/') else { continue };
        let entry = out.policies.entry(unescape(policy)).or_default();
        if tail == "state" {
            entry.rollout = Some(decode(&kv.key, &kv.value)?);
        } else if let Some(version) = tail.strip_prefix("versions/") {
            entry.versions.insert(unescape(version), decode(&kv.key, &kv.value)?);
        }
    }
    let prefix = roles_prefix(tenant);
    for kv in scan_at(store, &prefix, revision).await? {
        let key = String::from_utf8_lossy(&kv.key);
        let Some(rest) = key.strip_prefix(&prefix) else { continue };
        if let Some(role) = rest.strip_prefix("defs/") {
            out.roles.insert(unescape(role), decode(&kv.key, &kv.value)?);
        } else if let Some(assignment) = rest.strip_prefix("assignments/")
            && let Some((principal, role)) = assignment.split_once('/')
        {
            out.assignments
                .push(StoredAssignment { principal_id: unescape(principal), role_id: unescape(role) });
        }
    }
    Ok(out)
}

/// Reads everything at the current revision.
pub(crate) async fn read_all(store: &dyn StateStore) -> Result<Source> {
    let revision = store.current_revision().await?;
    let mut source = Source { revision, ..Source::default() };
    for kv in scan_at(store, ORGANIZATION_PREFIX, revision).await? {
        let key = String::from_utf8_lossy(&kv.key);
        if let Some(name) = key.strip_prefix(ORGANIZATION_PREFIX) {
            source.organization.insert(unescape(name), decode(&kv.key, &kv.value)?);
        }
    }
    for kv in scan_at(store, TENANTS_PREFIX, revision).await? {
        let key = String::from_utf8_lossy(&kv.key);
        if let Some(tenant) = key.strip_prefix(TENANTS_PREFIX) {
            let tenant = unescape(tenant);
            let content = read_tenant(store, &tenant, revision).await?;
            source.tenants.insert(tenant, content);
        }
    }
    Ok(source)
}

/// A replacement of one policy's active version: `(tenant, policy, version)`.
pub(crate) type Replacement<'a> = (&'a str, &'a str, &'a str);

impl Source {
    /// The snapshot record of the active versions, with `replace` (if any) in place of that
    /// policy's active version.
    pub(crate) fn record(&self, schema: &Schema, replace: Option<Replacement<'_>>) -> SnapshotRecord {
        let mut tenants = Vec::with_capacity(self.tenants.len());
        for (tenant_id, tenant) in &self.tenants {
            let mut policies = Vec::new();
            for (policy_id, policy) in &tenant.policies {
                let Some(rollout) = &policy.rollout else { continue };
                let version = match replace {
                    Some((t, p, v)) if t == tenant_id && p == policy_id => v,
                    _ if rollout.deleted => continue,
                    _ => rollout.active.as_str(),
                };
                if let Some(definition) = policy.definition(version) {
                    policies.push(definition.clone());
                }
            }
            tenants.push(StoredTenant {
                tenant_id: tenant_id.clone(),
                policies,
                roles: tenant.roles.values().cloned().collect(),
                assignments: tenant.assignments.clone(),
            });
        }
        SnapshotRecord {
            version: self.revision,
            schema: schema.digest_text(),
            tenants,
            organization: self.organization.clone(),
        }
    }
}

/// Builds the snapshot a record describes.
pub(crate) fn build(engine: &Engine, schema: &Schema, record: &SnapshotRecord) -> Result<Snapshot> {
    if record.schema != schema.digest_text() {
        return Err(Error::new(
            aesp_core::ErrorCode::ConfigurationError,
            "the snapshot was made with other attribute declarations than the lifecycle's schema",
        ));
    }
    let mut builder = SnapshotBuilder::new(record.version, schema.clone());
    for (name, value) in &record.organization {
        builder.set_organization_attribute(name, value.clone())?;
    }
    for tenant in &record.tenants {
        for role in &tenant.roles {
            builder.add_role(&tenant.tenant_id, role.clone())?;
        }
        for assignment in &tenant.assignments {
            builder.assign_role(&tenant.tenant_id, &assignment.principal_id, &assignment.role_id);
        }
        for policy in &tenant.policies {
            builder.add_policy(&tenant.tenant_id, policy.clone())?;
        }
    }
    Ok(engine.build(&builder)?)
}
