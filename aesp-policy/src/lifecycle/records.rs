//! Stored records and the key layout of the policy lifecycle.
//!
//! ```text
//! t/<tenant>/policies/<policy>/versions/<semver>   StoredVersion (definition + lifecycle state)
//! t/<tenant>/policies/<policy>/state               StoredRollout (active / shadow / canary)
//! t/<tenant>/roles/defs/<role>                     RoleDefinition
//! t/<tenant>/roles/assignments/<principal>/<role>  empty
//! t/_system/lifecycle/tenants/<tenant>             empty (tenants with policies or roles)
//! t/_system/lifecycle/organization/<name>          Value
//! t/_system/snapshots/<hex digest>                 SnapshotRecord (content-addressed)
//! ```
//!
//! Key components are escaped (`%` → `%25`, `/` → `%2F`) so an id cannot reach another key.

use std::fmt;

use aesp_core::{
    Error, ErrorCode, Result,
    proto::v1::{PolicyDefinition, RoleDefinition, Value},
};

/// The tenant under which the lifecycle keeps platform-wide records.
pub(crate) const SYSTEM_TENANT: &str = "_system";

/// Escapes one key component.
pub(crate) fn escape(component: &str) -> String {
    component.replace('%', "%25").replace('/', "%2F")
}

/// Reverses [`escape`].
pub(crate) fn unescape(component: &str) -> String {
    component.replace("%2F", "/").replace("%25", "%")
}

pub(crate) fn policies_prefix(tenant: &str) -> String {
    format!("t/{}/policies/", escape(tenant))
}

pub(crate) fn policy_prefix(tenant: &str, policy_id: &str) -> String {
    format!("t/{}/policies/{}/", escape(tenant), escape(policy_id))
}

pub(crate) fn version_key(tenant: &str, policy_id: &str, version: &str) -> String {
    format!("{}versions/{}", policy_prefix(tenant, policy_id), escape(version))
}

pub(crate) fn state_key(tenant: &str, policy_id: &str) -> String {
    format!("{}state", policy_prefix(tenant, policy_id))
}

pub(crate) fn roles_prefix(tenant: &str) -> String {
    format!("t/{}/roles/", escape(tenant))
}

pub(crate) fn role_key(tenant: &str, role_id: &str) -> String {
    format!("{}defs/{}", roles_prefix(tenant), escape(role_id))
}

pub(crate) fn assignment_key(tenant: &str, principal_id: &str, role_id: &str) -> String {
    format!("{}assignments/{}/{}", roles_prefix(tenant), escape(principal_id), escape(role_id))
}

pub(crate) const TENANTS_PREFIX: &str = "t/_system/lifecycle/tenants/";

pub(crate) fn tenant_key(tenant: &str) -> String {
    format!("{TENANTS_PREFIX}{}", escape(tenant))
}

pub(crate) const ORGANIZATION_PREFIX: &str = "t/_system/lifecycle/organization/";

pub(crate) fn organization_key(name: &str) -> String {
    format!("{ORGANIZATION_PREFIX}{}", escape(name))
}

pub(crate) fn snapshot_key(digest_hex: &str) -> String {
    format!("t/{SYSTEM_TENANT}/snapshots/{digest_hex}")
}

/// The lifecycle state of one policy version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum VersionState {
    /// Written, not yet approved; never evaluated.
    Draft,
    /// Approved through governance; may be rolled out.
    Approved,
    /// Evaluated beside the active version for every request, never enforced.
    Shadow,
    /// Enforced for a deterministic share of requests.
    Canary,
    /// Enforced for every request.
    Active,
    /// No longer evaluated; kept for history and rollback.
    Retired,
}

impl VersionState {
    /// Every state, in lifecycle order.
    pub const ALL: [VersionState; 6] = [
        VersionState::Draft,
        VersionState::Approved,
        VersionState::Shadow,
        VersionState::Canary,
        VersionState::Active,
        VersionState::Retired,
    ];

    /// The state's name: `draft`, `approved`, `shadow`, `canary`, `active` or `retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Draft => "draft",
            VersionState::Approved => "approved",
            VersionState::Shadow => "shadow",
            VersionState::Canary => "canary",
            VersionState::Active => "active",
            VersionState::Retired => "retired",
        }
    }

    /// The state of a name given by [`as_str`](Self::as_str).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether a version may move from `self` to `to` (a canary may also change its share,
    /// `Canary` → `Canary`). Only an approved version leaves draft, and only through approval;
    /// a retired version comes back only through a rollback, which is not a transition but a
    /// restore (see [`PolicyLifecycle::rollback`](super::PolicyLifecycle::rollback)).
    pub fn can_become(self, to: VersionState) -> bool {
        use VersionState::{Active, Approved, Canary, Draft, Retired, Shadow};
        matches!(
            (self, to),
            (Draft, Approved)
                | (Approved, Shadow | Canary | Active | Retired)
                | (Shadow, Canary | Active | Retired)
                | (Canary, Canary | Active | Retired)
                | (Active, Retired)
        )
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored policy version: the definition and its lifecycle state.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredVersion {
    #[prost(message, optional, tag = "1")]
    pub(crate) policy: Option<PolicyDefinition>,
    #[prost(string, tag = "2")]
    pub(crate) state: String,
    #[prost(string, tag = "3")]
    pub(crate) approved_by: String,
    #[prost(uint64, tag = "4")]
    pub(crate) approved_at: u64,
    #[prost(uint32, tag = "5")]
    pub(crate) canary_percent: u32,
    #[prost(uint64, tag = "6")]
    pub(crate) state_changed_at: u64,
    #[prost(string, tag = "7")]
    pub(crate) state_changed_by: String,
}

impl StoredVersion {
    pub(crate) fn state(&self) -> Result<VersionState> {
        VersionState::parse(&self.state)
            .ok_or_else(|| Error::corrupted(format!("unknown version state `{}`", self.state)))
    }
}

/// Which versions of one policy are rolled out, and the history for rollback.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredRollout {
    #[prost(string, tag = "1")]
    pub(crate) active: String,
    #[prost(string, tag = "2")]
    pub(crate) shadow: String,
    #[prost(string, tag = "3")]
    pub(crate) canary: String,
    #[prost(uint32, tag = "4")]
    pub(crate) canary_percent: u32,
    /// Earlier active versions, most recent last.
    #[prost(string, repeated, tag = "5")]
    pub(crate) previous_active: Vec<String>,
    /// The highest version written.
    #[prost(string, tag = "6")]
    pub(crate) latest: String,
    /// Deleted: no version applies; the versions stay readable.
    #[prost(bool, tag = "7")]
    pub(crate) deleted: bool,
    /// When the policy was created (Unix milliseconds).
    #[prost(uint64, tag = "8")]
    pub(crate) created_at: u64,
}

/// One principal's role in a snapshot record.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredAssignment {
    #[prost(string, tag = "1")]
    pub(crate) principal_id: String,
    #[prost(string, tag = "2")]
    pub(crate) role_id: String,
}

/// One tenant's content in a snapshot record.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredTenant {
    #[prost(string, tag = "1")]
    pub(crate) tenant_id: String,
    #[prost(message, repeated, tag = "2")]
    pub(crate) policies: Vec<PolicyDefinition>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) roles: Vec<RoleDefinition>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) assignments: Vec<StoredAssignment>,
}

/// Everything needed to rebuild a snapshot exactly.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SnapshotRecord {
    #[prost(uint64, tag = "1")]
    pub(crate) version: u64,
    #[prost(string, tag = "2")]
    pub(crate) schema: String,
    #[prost(message, repeated, tag = "3")]
    pub(crate) tenants: Vec<StoredTenant>,
    #[prost(btree_map = "string, message", tag = "4")]
    pub(crate) organization: std::collections::BTreeMap<String, Value>,
}

/// Decodes a stored record, reporting the key on failure.
pub(crate) fn decode<M: prost::Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| {
        Error::new(
            ErrorCode::DataCorrupted,
            format!("record `{}` does not decode", aesp_core::state::show_key(key)),
        )
        .with_source(e)
    })
}

/// Encodes a record.
pub(crate) fn encode<M: prost::Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_components_apart() {
        assert_eq!(escape("a/b%c"), "a%2Fb%25c");
        assert_eq!(unescape(&escape("a/b%2Fc%")), "a/b%2Fc%");
        assert_ne!(version_key("t", "a/versions/1", "2"), version_key("t", "a", "1/2"));
    }

    #[test]
    fn state_names_round_trip() {
        for state in VersionState::ALL {
            assert_eq!(VersionState::parse(state.as_str()), Some(state));
        }
        assert_eq!(VersionState::parse("live"), None);
    }
}
