//! Principals: create, read, list a page at a time, deactivate.

use std::collections::BTreeMap;

use aesp_core::{
    Error, ErrorCode, RangeRequest, Result, Txn,
    proto::v1::{Principal, PrincipalStatus, PrincipalType},
};
use prost::Message as _;

use super::{IdentityManager, Outcome, check_tenant, events, options::ms, shown, store};
use crate::records::{check_name, write};

/// The most attributes a principal may have.
const MAX_ATTRIBUTES: usize = 64;
/// The longest attribute value, role, permission or label.
const MAX_TEXT: usize = 1024;
/// The page size when a request gives none, and the largest.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// What a new principal is: name, roles, permissions, clearance, attributes, expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewPrincipal {
    /// A human-readable name.
    pub display_name: String,
    /// An e-mail address (users).
    pub email: String,
    /// Roles assigned directly (carried in its tokens).
    pub roles: Vec<String>,
    /// Permissions granted directly (carried in its tokens).
    pub permissions: Vec<String>,
    /// Its security clearance label (`public` … `top_secret`), stored in lowercase.
    pub security_clearance: String,
    /// Its organization.
    pub organization_id: String,
    /// Its business unit.
    pub business_unit: String,
    /// Attributes policies can read (for example `spending_limit`).
    pub attributes: BTreeMap<String, String>,
    /// When it stops being able to authenticate (Unix ms); 0 = never.
    pub expires_at_ms: u64,
}

impl NewPrincipal {
    /// A principal named `display_name`, with nothing else.
    pub fn new(display_name: impl Into<String>) -> Self {
        Self { display_name: display_name.into(), ..Self::default() }
    }

    /// Adds a role.
    #[must_use]
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// Adds a directly granted permission.
    #[must_use]
    pub fn with_permission(mut self, permission: impl Into<String>) -> Self {
        self.permissions.push(permission.into());
        self
    }

    /// Sets the clearance label.
    #[must_use]
    pub fn with_clearance(mut self, clearance: impl Into<String>) -> Self {
        self.security_clearance = clearance.into();
        self
    }

    /// Sets an attribute.
    #[must_use]
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Sets the expiry (Unix ms; 0 = never).
    #[must_use]
    pub fn with_expiry(mut self, expires_at_ms: u64) -> Self {
        self.expires_at_ms = expires_at_ms;
        self
    }

    /// Checks the sizes and forms of every field.
    pub(crate) fn check(&self) -> Result<()> {
        let too_long = |what: &str, text: &str| {
            (text.len() > MAX_TEXT)
                .then(|| Error::invalid_argument(format!("{what} is longer than {MAX_TEXT} bytes")))
        };
        for text in [
            &self.display_name,
            &self.email,
            &self.security_clearance,
            &self.organization_id,
            &self.business_unit,
        ] {
            if let Some(e) = too_long("a principal field", text) {
                return Err(e);
            }
        }
        for role in &self.roles {
            check_name("role", role)?;
        }
        for permission in &self.permissions {
            if permission.is_empty()
                || permission.len() > MAX_TEXT
                || permission.chars().any(char::is_control)
            {
                return Err(Error::invalid_argument(format!(
                    "permission `{}` is not valid",
                    shown(permission)
                )));
            }
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(Error::invalid_argument(format!(
                "a principal has at most {MAX_ATTRIBUTES} attributes"
            )));
        }
        for (name, value) in &self.attributes {
            check_name("attribute", name)?;
            if let Some(e) = too_long("an attribute value", value) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The principal record this describes.
    pub(crate) fn into_principal(
        self,
        tenant: &str,
        principal_id: &str,
        principal_type: PrincipalType,
        now: u64,
    ) -> Principal {
        let mut roles = self.roles;
        roles.sort();
        roles.dedup();
        let mut permissions = self.permissions;
        permissions.sort();
        permissions.dedup();
        Principal {
            principal_id: principal_id.to_owned(),
            tenant_id: tenant.to_owned(),
            principal_type: principal_type as i32,
            display_name: self.display_name,
            email: self.email,
            status: PrincipalStatus::Active as i32,
            roles,
            permissions,
            security_clearance: self.security_clearance.to_ascii_lowercase(),
            organization_id: self.organization_id,
            business_unit: self.business_unit,
            created_at: now,
            expires_at: self.expires_at_ms,
            metadata: self.attributes,
            ..Principal::default()
        }
    }
}

/// A page request of [`IdentityManager::list_principals`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListPrincipals {
    /// Only principals of this kind; `None` lists every kind.
    pub principal_type: Option<PrincipalType>,
    /// Also list principals that are not `ACTIVE`.
    pub include_inactive: bool,
    /// The most principals to return (0: 100; at most 1000).
    pub limit: usize,
    /// The `next_cursor` of the previous page; empty for the first page.
    pub cursor: String,
}

impl ListPrincipals {
    /// The first page of every active principal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only principals of `principal_type`.
    #[must_use]
    pub fn of_type(mut self, principal_type: PrincipalType) -> Self {
        self.principal_type = Some(principal_type);
        self
    }

    /// Also inactive principals.
    #[must_use]
    pub fn include_inactive(mut self) -> Self {
        self.include_inactive = true;
        self
    }

    /// At most `limit` principals.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The page after `cursor`.
    #[must_use]
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = cursor.into();
        self
    }
}

/// One page of principals, by id.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct PrincipalPage {
    /// The principals of this page.
    pub principals: Vec<Principal>,
    /// The cursor of the next page; empty when this is the last page.
    pub next_cursor: String,
}

impl IdentityManager {
    /// Creates a principal without credentials of its own in `tenant`: a system account, or
    /// a user that an external identity provider authenticates. `actor` is who asks (for
    /// the audit log). Service accounts and local users have their own methods.
    pub async fn create_principal(
        &self,
        tenant: &str,
        principal_type: PrincipalType,
        new: NewPrincipal,
        actor: &str,
    ) -> Result<Principal> {
        check_tenant(tenant)?;
        if !matches!(principal_type, PrincipalType::SystemAccount | PrincipalType::User) {
            return Err(Error::invalid_argument(
                "create_principal makes system accounts and external users; use create_service_account",
            ));
        }
        new.check()?;
        let now = self.now();
        let id = aesp_core::new_id(self.clock.as_ref());
        let principal = new.into_principal(tenant, &id, principal_type, now);
        write(self.state.as_ref(), &store::principal_key(tenant, &id), None, &principal).await?;
        let event = self.event(
            events::IDENTITY_CREATE_PRINCIPAL,
            tenant,
            actor,
            &format!("principal:{id}"),
            "create",
            Outcome::Success(principal_type.as_str_name()),
        );
        self.record(&event).await?;
        Ok(principal)
    }

    /// The principal `principal_id` of `tenant`; `NOT_FOUND` if there is none (also when it
    /// exists in another tenant).
    pub async fn get_principal(&self, tenant: &str, principal_id: &str) -> Result<Principal> {
        check_tenant(tenant)?;
        check_name("principal id", principal_id)?;
        self.principal_record(tenant, principal_id)
            .await?
            .map(|stored| stored.value)
            .ok_or_else(|| Error::not_found(format!("principal `{}` does not exist", shown(principal_id))))
    }

    /// A page of `tenant`'s principals, by id, filtered by kind and status.
    pub async fn list_principals(&self, tenant: &str, request: &ListPrincipals) -> Result<PrincipalPage> {
        check_tenant(tenant)?;
        let limit = match request.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let prefix = store::principals_prefix(tenant);
        let mut range = RangeRequest::prefix(prefix.as_bytes()).limit(limit);
        if !request.cursor.is_empty() {
            check_name("cursor", &request.cursor)?;
            range.start_after = Some(format!("{prefix}{}", request.cursor).into_bytes());
        }
        let mut principals = Vec::new();
        loop {
            let page = self.state.range(range.clone()).await?;
            for (i, kv) in page.kvs.iter().enumerate() {
                let principal = Principal::decode(kv.value.as_slice()).map_err(|e| {
                    Error::corrupted(format!("a principal record of `{tenant}` does not decode: {e}"))
                })?;
                let kind_matches =
                    request.principal_type.is_none_or(|t| principal.principal_type == t as i32);
                let status_matches =
                    request.include_inactive || principal.status == PrincipalStatus::Active as i32;
                if kind_matches && status_matches {
                    principals.push(principal);
                    if principals.len() == limit {
                        let more = i + 1 < page.kvs.len() || page.next_cursor.is_some();
                        let next_cursor = match principals.last() {
                            Some(last) if more => last.principal_id.clone(),
                            _ => String::new(),
                        };
                        return Ok(PrincipalPage { principals, next_cursor });
                    }
                }
            }
            match range.after(&page) {
                Some(next) => range = next,
                None => return Ok(PrincipalPage { principals, next_cursor: String::new() }),
            }
        }
    }

    /// Deactivates a principal (status `SUSPENDED`): it can no longer authenticate or
    /// refresh, and its access tokens stop validating at once on this Host, cached or not.
    /// Deactivating an inactive principal changes nothing.
    pub async fn deactivate_principal(
        &self,
        tenant: &str,
        principal_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<()> {
        if self.set_inactive(tenant, principal_id, PrincipalStatus::Suspended).await?.is_none() {
            return Ok(());
        }
        let event = self.event(
            events::IDENTITY_DEACTIVATE_PRINCIPAL,
            tenant,
            actor,
            &format!("principal:{principal_id}"),
            "deactivate",
            Outcome::Success(&shown(reason)),
        );
        self.record(&event).await
    }

    /// Sets a principal's status to `status` (inactive) with compare-and-set, and revokes its
    /// tokens in the cache. `Ok(None)` when it was inactive already.
    pub(crate) async fn set_inactive(
        &self,
        tenant: &str,
        principal_id: &str,
        status: PrincipalStatus,
    ) -> Result<Option<Principal>> {
        check_tenant(tenant)?;
        check_name("principal id", principal_id)?;
        let key = store::principal_key(tenant, principal_id);
        for _ in 0..8 {
            let Some(stored) = self.principal_record(tenant, principal_id).await? else {
                return Err(Error::not_found(format!("principal `{}` does not exist", shown(principal_id))));
            };
            let current = stored.value.status;
            if current == status as i32
                || (current != PrincipalStatus::Active as i32 && status != PrincipalStatus::Revoked)
            {
                return Ok(None);
            }
            let mut principal = stored.value;
            principal.status = status as i32;
            let txn = Txn::new()
                .if_revision(key.clone(), stored.revision)
                .put(key.clone(), principal.encode_to_vec());
            if self.state.txn(txn).await?.committed() {
                let now = self.now();
                self.revocations.revoke_principal(
                    tenant,
                    principal_id,
                    now.saturating_add(ms(self.options.access_token_ttl)),
                    now,
                );
                return Ok(Some(principal));
            }
        }
        Err(Error::new(
            ErrorCode::Conflict,
            format!("principal `{}` keeps changing; retry", shown(principal_id)),
        ))
    }
}
