//! The Identity Manager: principals in tenants, service accounts with API keys, local users
//! with passwords, the access and refresh tokens the Host issues, and the keys that sign
//! them.
//!
//! - **Principals** (users, service accounts, system accounts) belong to exactly one tenant;
//!   platform administrators to the reserved system tenant. Each has roles, directly granted
//!   permissions, a clearance, attributes (`spending_limit` and the like, carried into its
//!   tokens for policies to read) and a status; only `ACTIVE` principals authenticate.
//! - **Service accounts** authenticate with an API key id and a secret. The secret is
//!   returned once and stored only as a SHA-256 hash (256 random bits need no slow hash),
//!   compared in constant time.
//! - **Users** authenticate with a username and a password hashed with argon2id
//!   ([`PasswordHashing`]); consecutive failures lock the account for a while
//!   (`ACCOUNT_LOCKED`), passwords expire (`PASSWORD_EXPIRED`), and the counters live in the
//!   state store.
//! - **Access tokens** are EdDSA JWTs carrying the security context, valid for
//!   [`IdentityOptions::access_token_ttl`]. [`IdentityManager::validate_token`] verifies a
//!   token's signature once and then serves it from a bounded cache; revocations on this Host
//!   reach the cache at once (see [`IdentityManager::validate_token`]).
//! - **Refresh tokens** are opaque, stored only as hashes, and rotate on every use;
//!   presenting one that was already used revokes its whole family and the access tokens
//!   issued from it.
//! - **Signing keys** rotate with overlap ([`IdentityManager::rotate_signing_key`]) and are
//!   published as a JWKS document ([`IdentityManager::jwks`]).
//!
//! Every authentication, success or failure, and every change is written to the audit log
//! (event types in [`identity_events`](crate::identity_events)); no event, log line or error
//! ever holds a secret, and a refused credential never says which part was wrong (the audit
//! event does, for the operators).

mod bootstrap;
mod cache;
pub mod events;
mod jwt;
mod keys;
mod options;
mod principals;
mod provider;
mod secrets;
mod service_accounts;
mod store;
mod tokens;
mod users;

use std::{collections::BTreeMap, fmt, sync::Arc};

use aesp_audit::AuditLog;
use aesp_core::{
    Clock, Error, ErrorCode, Result, Signer, StateStore,
    proto::v1::{AuditEvent, Principal},
};
use tokio::sync::Semaphore;

pub use bootstrap::{BootstrapAdmin, BootstrapCredential};
pub use options::{IdentityOptions, PasswordHashing};
pub use principals::{ListPrincipals, NewPrincipal, PrincipalPage};
pub use provider::BUILTIN_PROVIDER;
pub use service_accounts::{NewServiceAccount, ServiceAccountCredential};
pub use tokens::{Tokens, ValidatedToken};
pub use users::NewUser;

use crate::records::{SYSTEM_TENANT, check_tenant_id, shorten};

/// The Identity Manager of a Host. Cheap to share behind an `Arc`; every method takes
/// `&self`.
///
/// It is also an [`IdentityProvider`](aesp_core::IdentityProvider) (named
/// [`BUILTIN_PROVIDER`]) for API keys, usernames and passwords, and its own bearer tokens, so
/// the Host can chain it with OIDC, LDAP or client-certificate providers.
pub struct IdentityManager {
    state: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
    options: IdentityOptions,
    keys: keys::TokenKeys,
    cache: cache::TokenCache,
    revocations: cache::Revocations,
    password_permits: Semaphore,
    /// A hash of a random password, verified against when a username is unknown so that the
    /// answer takes as long as for a known one.
    decoy_password_hash: String,
}

impl fmt::Debug for IdentityManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityManager")
            .field("options", &self.options)
            .field("signing_key", &self.keys.current().key_id())
            .field("cached_tokens", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl IdentityManager {
    /// An Identity Manager over `state`, writing to `audit`, signing access tokens with
    /// `token_signer` (an ed25519 key, kept for [`KeyPurpose::AccessToken`](aesp_core::KeyPurpose)
    /// only).
    ///
    /// The public halves of token keys are recorded in the state store; if a different key
    /// was current before (a restart with a new key file), it is retired now and its tokens
    /// keep verifying until they expire.
    pub async fn new(
        state: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
        audit: AuditLog,
        token_signer: Arc<dyn Signer>,
        options: IdentityOptions,
    ) -> Result<Self> {
        if options.access_token_ttl.is_zero() || options.refresh_token_ttl.is_zero() {
            return Err(Error::new(ErrorCode::ConfigurationError, "token lifetimes must be positive"));
        }
        if token_signer.public_key().algorithm != aesp_core::SignatureAlgorithm::Ed25519 {
            return Err(Error::new(
                ErrorCode::ConfigurationError,
                "access tokens are signed with ed25519 keys",
            ));
        }
        let now = clock.now_ms();
        let keys =
            keys::TokenKeys::load(state.as_ref(), token_signer, now, options::ms(options.access_token_ttl))
                .await?;
        let hashing = options.password_hashing;
        let decoy = secrets::random_text::<24>()?;
        let decoy_password_hash =
            tokio::task::spawn_blocking(move || secrets::hash_password(hashing, &decoy))
                .await
                .map_err(|e| Error::internal("the password hashing task failed").with_source(e))??;
        Ok(Self {
            cache: cache::TokenCache::new(options.token_cache_capacity),
            revocations: cache::Revocations::default(),
            password_permits: Semaphore::new(options.max_concurrent_password_hashes.max(1)),
            state,
            clock,
            audit,
            keys,
            options,
            decoy_password_hash,
        })
    }

    /// The options.
    pub fn options(&self) -> &IdentityOptions {
        &self.options
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A new audit event of identity.
    fn event(
        &self,
        event_type: &str,
        tenant: &str,
        principal: &str,
        resource: &str,
        action: &str,
        outcome: Outcome<'_>,
    ) -> AuditEvent {
        let (outcome, reason) = match outcome {
            Outcome::Success(reason) => ("SUCCESS", reason),
            Outcome::Failure(reason) => ("FAILURE", reason),
        };
        let mut metadata = BTreeMap::new();
        if !reason.is_empty() {
            metadata.insert("reason".to_owned(), reason.to_owned());
        }
        AuditEvent {
            event_id: aesp_core::new_id(self.clock.as_ref()),
            timestamp_ms: self.now(),
            event_type: event_type.to_owned(),
            principal_id: principal.to_owned(),
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            metadata,
            ..AuditEvent::default()
        }
    }

    /// An `AUTHENTICATION_SUCCESS` event for `principal`, authenticated by `method`.
    fn success_event(&self, principal: &Principal, method: &str, resource: &str, action: &str) -> AuditEvent {
        let mut event = self.event(
            events::AUTHENTICATION_SUCCESS,
            &principal.tenant_id,
            &principal.principal_id,
            resource,
            action,
            Outcome::Success(""),
        );
        event.metadata.insert("method".into(), method.to_owned());
        event
    }

    /// Writes an event durably; if the audit log cannot take it, the operation it records is
    /// refused (`AUDIT_REQUIREMENT_NOT_MET`), as on the call path.
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.audit.append(event).await.map(drop).map_err(|e| {
            Error::new(
                ErrorCode::AuditRequirementNotMet,
                "the audit log cannot record this operation, so it was refused",
            )
            .with_source(e)
            .with_remediation("retry once the audit log is available")
        })
    }

    /// Reads a principal record.
    async fn principal_record(
        &self,
        tenant: &str,
        principal: &str,
    ) -> Result<Option<crate::records::Stored<Principal>>> {
        crate::records::read(self.state.as_ref(), &store::principal_key(tenant, principal)).await
    }
}

/// An audit event's outcome and the reason recorded with it (empty: none).
#[derive(Clone, Copy, Debug)]
enum Outcome<'a> {
    Success(&'a str),
    Failure(&'a str),
}

/// Checks a tenant id that may also be the system tenant.
fn check_tenant(tenant: &str) -> Result<()> {
    if tenant == SYSTEM_TENANT { Ok(()) } else { check_tenant_id(tenant) }
}

/// Whether a principal may authenticate at `now`: active and not past its expiry.
fn usable(principal: &Principal, now: u64) -> bool {
    principal.status == aesp_core::proto::v1::PrincipalStatus::Active as i32
        && (principal.expires_at == 0 || now < principal.expires_at)
}

/// The outcome of checking a credential: the principal, or why it was refused (for the
/// audit event only; the caller hears `INVALID_CREDENTIALS`).
#[derive(Debug)]
enum Checked {
    Accepted(Box<Principal>),
    Refused { reason: &'static str, principal_id: String },
}

impl Checked {
    fn refused(reason: &'static str, principal_id: &str) -> Self {
        Self::Refused { reason, principal_id: principal_id.to_owned() }
    }

    /// Accepts `principal` if it may authenticate at `now`.
    fn of(principal: Principal, now: u64) -> Self {
        use aesp_core::proto::v1::PrincipalStatus;
        if principal.status == PrincipalStatus::Revoked as i32 {
            Self::refused("revoked", &principal.principal_id)
        } else if principal.expires_at != 0 && now >= principal.expires_at {
            Self::refused("expired", &principal.principal_id)
        } else if !usable(&principal, now) {
            Self::refused("inactive", &principal.principal_id)
        } else {
            Self::Accepted(Box::new(principal))
        }
    }
}

/// The refusal of a credential: no hint which part was wrong.
fn invalid_credentials() -> Error {
    Error::new(ErrorCode::InvalidCredentials, "the credentials are not valid")
        .with_remediation("check the credentials and the tenant, or ask an administrator for new ones")
}

/// User input for audit events and messages: cut, never trusted.
fn shown(text: &str) -> String {
    shorten(text)
}
