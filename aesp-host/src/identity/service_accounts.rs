//! Service accounts: an API key id and a secret shown once, stored as a hash.

use aesp_core::{
    Error, ErrorCode, Result, Secret, Txn,
    proto::v1::{Principal, PrincipalStatus, PrincipalType, ServiceAccount},
};
use prost::Message as _;

use super::{
    Checked, IdentityManager, NewPrincipal, Outcome, check_tenant, events, invalid_credentials, secrets,
    shown,
    store::{self, ApiKeyRecord, ServiceAccountRecord},
    tokens::Tokens,
};
use crate::records::{check_name, read};

/// What a new service account is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewServiceAccount {
    /// A short name, unique within the tenant (1 to 128 printable ASCII characters, no `/`).
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Roles, permissions, clearance, attributes and expiry (`expires_at_ms`, 0 = never);
    /// `display_name` is set to the name.
    pub principal: NewPrincipal,
}

impl NewServiceAccount {
    /// A service account named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self { principal: NewPrincipal::new(name.clone()), name, description: String::new() }
    }

    /// Sets what it is for.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets its roles, permissions, clearance, attributes and expiry.
    #[must_use]
    pub fn with_principal(mut self, principal: NewPrincipal) -> Self {
        self.principal = principal;
        self
    }
}

/// A new service account and its credential. The secret is shown here once: the Host keeps
/// only a hash. `Debug` does not show it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServiceAccountCredential {
    /// The service account's principal.
    pub principal: Principal,
    /// The API key id (public).
    pub key_id: String,
    /// The secret.
    pub secret: Secret,
}

impl IdentityManager {
    /// Creates a service account in `tenant` and its API key; returns the secret once.
    /// `ALREADY_EXISTS` if the name is taken. `actor` is who asks (for the audit log).
    pub async fn create_service_account(
        &self,
        tenant: &str,
        new: NewServiceAccount,
        actor: &str,
    ) -> Result<ServiceAccountCredential> {
        self.create_service_account_in(tenant, new, actor, None).await
    }

    /// Creates a service account; with `marker`, only if that key is absent (and writes it),
    /// in the same transaction (bootstrap).
    pub(crate) async fn create_service_account_in(
        &self,
        tenant: &str,
        new: NewServiceAccount,
        actor: &str,
        marker: Option<&str>,
    ) -> Result<ServiceAccountCredential> {
        check_tenant(tenant)?;
        check_name("service account name", &new.name)?;
        if new.description.len() > 1024 {
            return Err(Error::invalid_argument("a description is at most 1024 bytes"));
        }
        let mut details = new.principal;
        details.display_name.clone_from(&new.name);
        details.check()?;
        let now = self.now();
        let id = aesp_core::new_id(self.clock.as_ref());
        let key_id = secrets::new_key_id()?;
        let secret = secrets::new_secret()?;
        let principal = details.into_principal(tenant, &id, PrincipalType::ServiceAccount, now);
        let account = ServiceAccountRecord {
            principal_id: id.clone(),
            key_id: key_id.clone(),
            description: new.description,
            created_by: actor.to_owned(),
            revoked_at: 0,
        };
        let api_key = ApiKeyRecord {
            principal_id: id.clone(),
            name: new.name.clone(),
            secret_hash: secrets::api_key_hash(tenant, &key_id, &secret).to_vec(),
        };
        let name_key = store::service_account_key(tenant, &new.name);
        let mut txn = Txn::new()
            .if_absent(name_key.clone())
            .put(name_key, account.encode_to_vec())
            .put(store::principal_key(tenant, &id), principal.encode_to_vec())
            .put(store::api_key_key(tenant, &key_id), api_key.encode_to_vec());
        if let Some(marker) = marker {
            txn = txn.if_absent(marker).put(marker, id.as_bytes().to_vec());
        }
        if let aesp_core::TxnOutcome::CompareFailed { index, .. } = self.state.txn(txn).await? {
            return Err(if index == 0 {
                Error::new(ErrorCode::AlreadyExists, format!("service account `{}` exists already", new.name))
            } else {
                Error::new(
                    ErrorCode::FailedPrecondition,
                    "the Host is bootstrapped already; bootstrap runs once",
                )
            });
        }
        let mut event = self.event(
            events::IDENTITY_CREATE_SERVICE_ACCOUNT,
            tenant,
            actor,
            &format!("service_account:{id}"),
            "create",
            Outcome::Success(""),
        );
        event.metadata.insert("name".into(), new.name);
        event.metadata.insert("key_id".into(), key_id.clone());
        self.record(&event).await?;
        Ok(ServiceAccountCredential { principal, key_id, secret: Secret::new(secret) })
    }

    /// The service account `principal_id` of `tenant`, as listed (never with a secret).
    pub async fn get_service_account(&self, tenant: &str, principal_id: &str) -> Result<ServiceAccount> {
        let principal = self.get_principal(tenant, principal_id).await?;
        if principal.principal_type != PrincipalType::ServiceAccount as i32 {
            return Err(Error::not_found(format!(
                "service account `{}` does not exist",
                shown(principal_id)
            )));
        }
        let key = store::service_account_key(tenant, &principal.display_name);
        let account = read::<ServiceAccountRecord>(self.state.as_ref(), &key)
            .await?
            .ok_or_else(|| {
                Error::corrupted(format!("the record of service account `{principal_id}` is missing"))
            })?
            .value;
        Ok(ServiceAccount {
            service_account_id: principal.principal_id,
            name: principal.display_name,
            description: account.description,
            tenant_id: principal.tenant_id,
            roles: principal.roles,
            permissions: principal.permissions,
            api_key: account.key_id,
            status: principal.status,
            created_at: principal.created_at,
            expires_at: principal.expires_at,
            created_by: account.created_by,
            revoked_at: account.revoked_at,
            metadata: principal.metadata,
        })
    }

    /// Revokes a service account for good: its API key stops authenticating and its access
    /// and refresh tokens stop working at once on this Host (cached or not). Revoking it
    /// again changes nothing. `NOT_FOUND` if `tenant` has no such service account.
    pub async fn revoke_service_account(
        &self,
        tenant: &str,
        principal_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<()> {
        let account = self.get_service_account(tenant, principal_id).await?;
        if account.status == PrincipalStatus::Revoked as i32 {
            return Ok(());
        }
        self.set_inactive(tenant, principal_id, PrincipalStatus::Revoked).await?;
        let key = store::service_account_key(tenant, &account.name);
        if let Some(stored) = read::<ServiceAccountRecord>(self.state.as_ref(), &key).await? {
            let mut record = stored.value;
            record.revoked_at = self.now();
            // The principal's status is what counts; this timestamp is informative.
            let _ = self.state.txn(Txn::new().put(key, record.encode_to_vec())).await?;
        }
        let event = self.event(
            events::IDENTITY_REVOKE_SERVICE_ACCOUNT,
            tenant,
            actor,
            &format!("service_account:{principal_id}"),
            "revoke",
            Outcome::Success(&shown(reason)),
        );
        self.record(&event).await
    }

    /// Checks an API key of `tenant` and audits a refusal; the principal on success.
    /// Every refusal is the same `INVALID_CREDENTIALS`; the audit event says why.
    pub(crate) async fn check_api_key(
        &self,
        tenant: &str,
        key_id: &str,
        secret: &Secret,
    ) -> Result<Principal> {
        match self.api_key_principal(tenant, key_id, secret).await? {
            Checked::Accepted(principal) => Ok(*principal),
            Checked::Refused { reason, principal_id } => {
                let tenant = if check_tenant(tenant).is_ok() { tenant.to_owned() } else { String::new() };
                let mut event = self.event(
                    events::AUTHENTICATION_FAILURE,
                    &tenant,
                    &principal_id,
                    &format!("api_key:{}", shown(key_id)),
                    "authenticate",
                    Outcome::Failure(reason),
                );
                event.metadata.insert("method".into(), "api_key".into());
                // The caller is refused whether or not the refusal could be recorded.
                let _ = self.record(&event).await;
                Err(invalid_credentials())
            }
        }
    }

    async fn api_key_principal(&self, tenant: &str, key_id: &str, secret: &Secret) -> Result<Checked> {
        if check_tenant(tenant).is_err() {
            return Ok(Checked::refused("invalid_tenant", ""));
        }
        if check_name("key id", key_id).is_err() {
            return Ok(Checked::refused("unknown_api_key", ""));
        }
        let Some(record) =
            read::<ApiKeyRecord>(self.state.as_ref(), &store::api_key_key(tenant, key_id)).await?
        else {
            return Ok(Checked::refused("unknown_api_key", ""));
        };
        let record = record.value;
        let presented = secrets::api_key_hash(tenant, key_id, secret.expose());
        if !secrets::same_hash(&presented, &record.secret_hash) {
            return Ok(Checked::refused("wrong_secret", &record.principal_id));
        }
        let Some(principal) = self.principal_record(tenant, &record.principal_id).await? else {
            return Ok(Checked::refused("unknown_principal", &record.principal_id));
        };
        Ok(Checked::of(principal.value, self.now()))
    }

    /// Authenticates a service account of `tenant` with its API key id and secret and issues
    /// an access and a refresh token.
    ///
    /// A wrong tenant, an unknown key, a wrong secret, an expired or revoked account all
    /// answer `INVALID_CREDENTIALS`, without saying which; the audit event
    /// (`AUTHENTICATION_FAILURE`) records the reason for the operators.
    pub async fn authenticate_service_account(
        &self,
        tenant: &str,
        key_id: &str,
        secret: &Secret,
    ) -> Result<Tokens> {
        let principal = self.check_api_key(tenant, key_id, secret).await?;
        self.issue(&principal, "api_key", &format!("api_key:{key_id}")).await
    }
}
