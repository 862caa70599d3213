//! The identity seam: an [`IdentityProvider`] turns a [`Credential`] into an [`Identity`]
//! (who the caller is, in which tenant, with which claims).
//!
//! Built-in users and service accounts, OIDC/JWT through JWKS, LDAP bind and client
//! certificates are all implementations of this one trait; the Host tries its providers in
//! order and the first that recognises the credential decides.

use std::{collections::BTreeMap, fmt};

use async_trait::async_trait;

use crate::{error::Result, proto::v1::PrincipalType};

/// A secret string (password, API-key secret, bearer token) whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself; keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// A credential presented by a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// A username and password.
    UsernamePassword {
        /// The username.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A service account's API key id and secret.
    ApiKey {
        /// The API key id (not secret).
        key_id: String,
        /// The secret.
        secret: Secret,
    },
    /// A bearer token: an AESP access token or an OAuth 2.0 / OIDC JWT.
    BearerToken(Secret),
    /// A SAML assertion.
    SamlAssertion(Secret),
    /// A client certificate chain from mutual TLS, leaf first, DER-encoded. The TLS layer has
    /// already verified the chain against its trust roots; the provider maps it to a principal.
    ClientCertificate(Vec<Vec<u8>>),
}

impl Credential {
    /// The credential's kind, for logs and audit events (never the secret).
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::UsernamePassword { .. } => "username_password",
            Credential::ApiKey { .. } => "api_key",
            Credential::BearerToken(_) => "bearer_token",
            Credential::SamlAssertion(_) => "saml_assertion",
            Credential::ClientCertificate(_) => "client_certificate",
        }
    }
}

/// An authenticated principal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The principal's id, unique within its tenant.
    pub principal_id: String,
    /// The one tenant the principal belongs to.
    pub tenant_id: String,
    /// The kind of principal.
    pub principal_type: PrincipalType,
    /// Claims asserted by the provider (`email`, `groups`, `iss`, ...).
    pub claims: BTreeMap<String, String>,
    /// Roles the provider asserts (for example from LDAP groups); the Host maps them.
    pub roles: Vec<String>,
    /// Whether a second factor was verified.
    pub mfa_verified: bool,
    /// When the authentication stops being valid (Unix ms; 0 = the provider sets no limit).
    pub expires_at_ms: u64,
    /// Which provider authenticated the principal.
    pub provider: String,
}

impl Identity {
    /// An identity with id, tenant and type; the rest empty.
    pub fn new(
        principal_id: impl Into<String>,
        tenant_id: impl Into<String>,
        principal_type: PrincipalType,
    ) -> Self {
        Self {
            principal_id: principal_id.into(),
            tenant_id: tenant_id.into(),
            principal_type,
            ..Self::default()
        }
    }
}

/// What a provider concluded about a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authentication {
    /// The credential is valid: this is who presented it.
    Authenticated(Identity),
    /// The credential is not of a kind this provider handles; the next provider is tried.
    NotApplicable,
}

/// Turns credentials into identities.
///
/// # Contract
/// - Returns [`Authentication::NotApplicable`] for credentials it does not handle, so that
///   providers can be chained; it never half-accepts one.
/// - A credential it handles but that is wrong, expired, revoked or locked is an error with
///   the matching authentication code (`INVALID_CREDENTIALS`, `TOKEN_EXPIRED`,
///   `ACCOUNT_LOCKED`, ...). It fails closed: if its backend is unreachable it returns
///   `SERVICE_UNAVAILABLE`, never an identity.
/// - `tenant_hint` is the tenant the caller names (may be empty); an identity is only ever in
///   the tenant the provider itself knows the principal by, and a provider must refuse
///   (`TENANT_ACCESS_DENIED`) rather than move a principal to the hinted tenant.
/// - Secrets are never logged or put in errors.
#[async_trait]
pub trait IdentityProvider: Send + Sync + fmt::Debug + 'static {
    /// The provider's name, recorded in [`Identity::provider`] and audit events.
    fn name(&self) -> &str;

    /// Authenticates `credential`.
    async fn authenticate(&self, credential: &Credential, tenant_hint: &str) -> Result<Authentication>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let credential =
            Credential::UsernamePassword { username: "alice".into(), password: "hunter2".into() };
        let text = format!("{credential:?}");
        assert!(text.contains("alice"));
        assert!(!text.contains("hunter2"));
        assert_eq!(credential.kind(), "username_password");
        let token = Credential::BearerToken(Secret::new("eyJhbGciOi"));
        assert!(!format!("{token:?}").contains("eyJ"));
    }
}
