//! Immutable, versioned snapshots: policies and role graphs per tenant, declared attributes
//! and organization-wide values, with a digest of their content.

use std::collections::{BTreeMap, HashMap};

use aesp_core::proto::v1::{PolicyDefinition, RoleDefinition, Value};
use cel::common::value::Val;
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::{
    error::PolicyError,
    pattern::Name,
    policy::{CompiledPolicy, compile},
    rbac::{RoleSource, TenantRbac},
    schema::{Owner, Schema},
    values::to_static_val,
};

/// What one tenant has in a snapshot.
#[derive(Debug, Default)]
pub(crate) struct TenantState {
    pub(crate) policies: Vec<CompiledPolicy>,
    pub(crate) rbac: TenantRbac,
}

/// The content of a snapshot.
#[derive(Debug)]
pub(crate) struct SnapshotInner {
    pub(crate) version: u64,
    pub(crate) digest: [u8; 32],
    pub(crate) schema: Schema,
    pub(crate) tenants: HashMap<String, TenantState>,
    pub(crate) organization: HashMap<String, Box<dyn Val>>,
}

impl SnapshotInner {
    pub(crate) fn empty() -> Self {
        let builder = SnapshotBuilder::new(0, Schema::new());
        Self {
            version: 0,
            digest: builder.digest(),
            schema: Schema::new(),
            tenants: HashMap::new(),
            organization: HashMap::new(),
        }
    }
}

/// An immutable, versioned set of policies and role graphs, compiled once; cheap to clone.
///
/// Build one with a [`SnapshotBuilder`] and [`Engine::build`](crate::Engine::build), then
/// [`Engine::install`](crate::Engine::install) it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) inner: std::sync::Arc<SnapshotInner>,
}

impl Snapshot {
    /// The version given to the builder.
    pub fn version(&self) -> u64 {
        self.inner.version
    }

    /// The SHA-256 digest of the content (policies, roles, assignments, declarations and
    /// organization values), independent of the version and of the order things were added.
    pub fn digest(&self) -> [u8; 32] {
        self.inner.digest
    }

    /// The digest in lowercase hexadecimal.
    pub fn digest_hex(&self) -> String {
        let mut hex = String::with_capacity(64);
        for byte in &self.inner.digest {
            hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            hex.push(char::from_digit(u32::from(byte & 0x0f), 16).unwrap_or('0'));
        }
        hex
    }

    /// The declared attributes.
    pub fn schema(&self) -> &Schema {
        &self.inner.schema
    }

    /// The ids of a tenant's enabled policies, in evaluation order.
    pub fn policy_ids(&self, tenant_id: &str) -> Vec<String> {
        self.inner
            .tenants
            .get(tenant_id)
            .map(|t| t.policies.iter().map(|p| p.id().to_owned()).collect())
            .unwrap_or_default()
    }

    /// The roles a principal holds in a tenant (assigned, plus `asserted`, each with the roles
    /// it inherits), sorted.
    pub fn effective_roles(&self, tenant_id: &str, principal_id: &str, asserted: &[String]) -> Vec<String> {
        match self.inner.tenants.get(tenant_id) {
            Some(tenant) => tenant.rbac.effective_roles(principal_id, asserted).into_owned(),
            None => {
                let mut roles = asserted.to_vec();
                roles.sort();
                roles.dedup();
                roles
            }
        }
    }

    /// The permissions a principal's roles grant in a tenant, after inheritance, sorted.
    pub fn effective_permissions(
        &self,
        tenant_id: &str,
        principal_id: &str,
        asserted_roles: &[String],
    ) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .tenants
            .get(tenant_id)
            .map(|t| {
                t.rbac.permissions(principal_id, asserted_roles).map(|p| p.as_str().to_owned()).collect()
            })
            .unwrap_or_default();
        out.sort();
        out.dedup();
        out
    }

    /// Whether a principal's roles grant `permission` (`resource:action`) in a tenant.
    pub fn check_permission(
        &self,
        tenant_id: &str,
        principal_id: &str,
        asserted_roles: &[String],
        permission: &str,
    ) -> bool {
        let Some((resource, action)) = permission.rsplit_once(':') else {
            return false;
        };
        self.inner.tenants.get(tenant_id).is_some_and(|t| {
            t.rbac.grants(principal_id, asserted_roles, &Name::new(resource), &Name::new(action))
        })
    }
}

#[derive(Clone, Debug, Default)]
struct TenantSource {
    policies: BTreeMap<String, PolicyDefinition>,
    roles: RoleSource,
}

/// Collects the content of a snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotBuilder {
    version: u64,
    schema: Schema,
    tenants: BTreeMap<String, TenantSource>,
    organization: BTreeMap<String, Value>,
}

impl SnapshotBuilder {
    /// An empty snapshot of `version` whose policies are checked against `schema`.
    pub fn new(version: u64, schema: Schema) -> Self {
        Self { version, schema, tenants: BTreeMap::new(), organization: BTreeMap::new() }
    }

    /// Adds a tenant's policy. It is validated when the snapshot is built; a disabled policy
    /// is validated too and kept in the digest, but never applies.
    ///
    /// # Errors
    ///
    /// Fails when the tenant has a policy of that id already.
    pub fn add_policy(
        &mut self,
        tenant_id: &str,
        policy: PolicyDefinition,
    ) -> Result<&mut Self, PolicyError> {
        let tenant = self.tenants.entry(tenant_id.to_owned()).or_default();
        if tenant.policies.contains_key(&policy.policy_id) {
            return Err(PolicyError::Duplicate { kind: "policy", id: policy.policy_id });
        }
        tenant.policies.insert(policy.policy_id.clone(), policy);
        Ok(self)
    }

    /// Adds a tenant's role.
    ///
    /// # Errors
    ///
    /// Fails when the role has no id, one of its permissions is malformed, or the tenant has a
    /// role of that id already.
    pub fn add_role(&mut self, tenant_id: &str, role: RoleDefinition) -> Result<&mut Self, PolicyError> {
        self.tenants.entry(tenant_id.to_owned()).or_default().roles.add_role(role)?;
        Ok(self)
    }

    /// Assigns a role to a principal in a tenant (the role must be defined by build time).
    pub fn assign_role(&mut self, tenant_id: &str, principal_id: &str, role_id: &str) -> &mut Self {
        self.tenants.entry(tenant_id.to_owned()).or_default().roles.assign(principal_id, role_id);
        self
    }

    /// Sets the value of a declared organization attribute (`organization.<name>`).
    ///
    /// # Errors
    ///
    /// Fails when the attribute is not declared or the value does not have its type.
    pub fn set_organization_attribute(&mut self, name: &str, value: Value) -> Result<&mut Self, PolicyError> {
        let Some(ty) = self.schema.attributes(Owner::Organization).get(name) else {
            return Err(PolicyError::Configuration(format!(
                "organization attribute `{name}` is not declared"
            )));
        };
        if !ty.accepts(&value) {
            return Err(PolicyError::Configuration(format!(
                "organization attribute `{name}` must be a `{}`",
                ty.describe()
            )));
        }
        self.organization.insert(name.to_owned(), value);
        Ok(self)
    }

    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let mut item = |tag: &str, bytes: &[u8]| {
            hasher.update(tag.as_bytes());
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        item("schema", self.schema.digest_text().as_bytes());
        for (name, value) in &self.organization {
            item("organization", name.as_bytes());
            item("value", &value.encode_to_vec());
        }
        for (tenant_id, tenant) in &self.tenants {
            item("tenant", tenant_id.as_bytes());
            for role in tenant.roles.roles.values() {
                let mut role = role.clone();
                role.parent_roles.sort();
                role.permissions.sort();
                item("role", &role.encode_to_vec());
            }
            for (principal, roles) in &tenant.roles.assignments {
                item("principal", principal.as_bytes());
                for role in roles {
                    item("assigned", role.as_bytes());
                }
            }
            for policy in tenant.policies.values() {
                item("policy", &policy.encode_to_vec());
            }
        }
        hasher.finalize().into()
    }

    /// Compiles the snapshot.
    pub(crate) fn build(&self, env: &cel::Env) -> Result<SnapshotInner, PolicyError> {
        let mut tenants = HashMap::with_capacity(self.tenants.len());
        for (tenant_id, source) in &self.tenants {
            let rbac = source.roles.resolve()?;
            let mut policies = Vec::with_capacity(source.policies.len());
            for definition in source.policies.values() {
                match compile(env, &self.schema, definition) {
                    Ok(policy) if definition.enabled => policies.push(policy),
                    Ok(_) => {}
                    Err(errors) => {
                        return Err(PolicyError::InvalidPolicy {
                            policy_id: definition.policy_id.clone(),
                            errors,
                        });
                    }
                }
            }
            tenants.insert(tenant_id.clone(), TenantState { policies, rbac });
        }
        let organization = self
            .organization
            .iter()
            .map(|(name, value)| {
                let declared = self.schema.attributes(Owner::Organization).get(name);
                (name.clone(), to_static_val(value, declared))
            })
            .collect();
        Ok(SnapshotInner {
            version: self.version,
            digest: self.digest(),
            schema: self.schema.clone(),
            tenants,
            organization,
        })
    }
}
