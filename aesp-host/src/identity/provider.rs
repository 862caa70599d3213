//! The Identity Manager as an [`IdentityProvider`]: API keys, usernames and passwords of
//! local users, and its own bearer tokens. Other credentials (SAML, client certificates,
//! other issuers' JWTs) are `NotApplicable`, for the next provider in the chain.

use aesp_core::{
    Authentication, Credential, Error, ErrorCode, Identity, IdentityProvider, Result,
    proto::v1::{Principal, PrincipalType},
};
use async_trait::async_trait;

use super::{IdentityManager, tokens::ValidatedToken};

/// The name of the built-in provider ([`Identity::provider`]).
pub const BUILTIN_PROVIDER: &str = "aesp";

fn identity_of(principal: Principal) -> Identity {
    let mut identity = Identity::new(
        principal.principal_id,
        principal.tenant_id,
        PrincipalType::try_from(principal.principal_type).unwrap_or_default(),
    );
    identity.claims = principal.metadata;
    identity.roles = principal.roles;
    identity.expires_at_ms = principal.expires_at;
    identity.provider = BUILTIN_PROVIDER.to_owned();
    identity
}

fn identity_of_token(token: &ValidatedToken) -> Identity {
    let context = &token.context;
    let mut identity = Identity::new(
        context.principal_id.clone(),
        context.tenant_id.clone(),
        PrincipalType::try_from(context.principal_type).unwrap_or_default(),
    );
    identity.claims = context.claims.clone();
    identity.roles = context.roles.clone();
    identity.mfa_verified = context.mfa_verified;
    identity.expires_at_ms = token.expires_at_ms;
    identity.provider = BUILTIN_PROVIDER.to_owned();
    identity
}

#[async_trait]
impl IdentityProvider for IdentityManager {
    fn name(&self) -> &str {
        BUILTIN_PROVIDER
    }

    /// - `ApiKey` and `UsernamePassword` are looked up in `tenant_hint` (required: keys
    ///   and usernames are per tenant), with the same checks, lockout and audit events as
    ///   [`authenticate_service_account`](IdentityManager::authenticate_service_account) and
    ///   [`authenticate_user`](IdentityManager::authenticate_user), but no tokens are issued.
    /// - `BearerToken` is validated if this Host issued it (its `iss`); a non-empty
    ///   `tenant_hint` other than the token's tenant is `TENANT_ACCESS_DENIED`. Tokens of
    ///   other issuers are `NotApplicable`.
    async fn authenticate(&self, credential: &Credential, tenant_hint: &str) -> Result<Authentication> {
        match credential {
            Credential::ApiKey { key_id, secret } => {
                let principal = self.check_api_key(tenant_hint, key_id, secret).await?;
                let resource = format!("api_key:{key_id}");
                self.record(&self.success_event(&principal, "api_key", &resource, "authenticate")).await?;
                Ok(Authentication::Authenticated(identity_of(principal)))
            }
            Credential::UsernamePassword { username, password } => {
                let principal = self.check_password(tenant_hint, username, password, false).await?;
                let resource = format!("user:{}", principal.principal_id);
                self.record(&self.success_event(&principal, "password", &resource, "authenticate")).await?;
                Ok(Authentication::Authenticated(identity_of(principal)))
            }
            Credential::BearerToken(token) => match self.validate_token(token.expose()).await {
                Ok(validated) => {
                    if !tenant_hint.is_empty() && tenant_hint != validated.context.tenant_id {
                        return Err(Error::new(
                            ErrorCode::TenantAccessDenied,
                            "the token belongs to another tenant",
                        ));
                    }
                    Ok(Authentication::Authenticated(identity_of_token(&validated)))
                }
                Err(e) if self.issued_here(token.expose()) => Err(e),
                Err(_) => Ok(Authentication::NotApplicable),
            },
            _ => Ok(Authentication::NotApplicable),
        }
    }
}
