//! Access and refresh tokens: issue, validate (cached), refresh with rotation and reuse
//! detection, revoke; the signing keys and their JWKS document.

use std::sync::Arc;

use aesp_core::{
    Error, ErrorCode, PublicKey, Result, Secret, Signer, Txn,
    proto::v1::{EnterpriseSecurityContext, Principal, PrincipalType, SuccessfulAuthDetails},
};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use super::{
    IdentityManager, Outcome,
    cache::Hit,
    check_tenant, events, jwt,
    options::ms,
    secrets, shown,
    store::{self, FamilyRecord, RefreshRecord, RevokedTokenRecord},
    usable,
};
use crate::records::{SYSTEM_TENANT, check_name, read};

/// How far in the future a token's `iat` may be (clock skew between Hosts).
const MAX_FUTURE_IAT_SECS: u64 = 60;

/// A verified access token: the security context it stands for and its registered claims.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ValidatedToken {
    /// The security context: principal, tenant, type, roles, permissions, clearance,
    /// organization, business unit, attributes (as `claims`), MFA, and the token's expiry as
    /// `session_expires_at`.
    pub context: EnterpriseSecurityContext,
    /// The token id (`jti`).
    pub token_id: String,
    /// When it was issued (Unix ms, whole seconds).
    pub issued_at_ms: u64,
    /// When it expires (Unix ms, whole seconds).
    pub expires_at_ms: u64,
    /// The id of the key that signed it (`kid`).
    pub key_id: String,
    /// The refresh-token family it was issued from; empty when none.
    pub family_id: String,
}

/// What a successful authentication or refresh yields. `Debug` never shows the tokens.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Tokens {
    /// The access token (an EdDSA JWT), sent as a bearer token.
    pub access_token: Secret,
    /// When the access token expires (Unix ms).
    pub expires_at_ms: u64,
    /// The refresh token: opaque, usable once.
    pub refresh_token: Secret,
    /// When the refresh token expires (Unix ms).
    pub refresh_expires_at_ms: u64,
    /// The security context the access token stands for.
    pub context: EnterpriseSecurityContext,
}

impl Tokens {
    /// The protocol's form (`AuthenticateUserResponse.success_details` and friends).
    pub fn to_proto(&self) -> SuccessfulAuthDetails {
        SuccessfulAuthDetails {
            access_token: self.access_token.expose().to_owned(),
            refresh_token: self.refresh_token.expose().to_owned(),
            expires_at: self.expires_at_ms,
            security_context: Some(self.context.clone()),
            refresh_expires_at: self.refresh_expires_at_ms,
        }
    }
}

fn expired() -> Error {
    Error::new(ErrorCode::TokenExpired, "the token has expired")
        .with_remediation("refresh the token or authenticate again")
}

fn revoked() -> Error {
    Error::new(ErrorCode::TokenRevoked, "the token has been revoked").with_remediation("authenticate again")
}

fn bad_refresh() -> Error {
    Error::new(ErrorCode::AuthenticationFailed, "the refresh token is not valid")
        .with_remediation("authenticate again")
}

fn context_of(claims: &jwt::Claims, principal_type: PrincipalType) -> EnterpriseSecurityContext {
    EnterpriseSecurityContext {
        principal_id: claims.sub.clone(),
        tenant_id: claims.tenant.clone(),
        claims: claims.attrs.clone(),
        organization_id: claims.org.clone(),
        business_unit: claims.business_unit.clone(),
        roles: claims.roles.clone(),
        permissions: claims.permissions.clone(),
        security_clearance: claims.clearance.clone(),
        session_expires_at: claims.exp.saturating_mul(1000),
        principal_type: principal_type as i32,
        mfa_verified: claims.mfa,
        ..EnterpriseSecurityContext::default()
    }
}

impl IdentityManager {
    // ---- Issuing ---------------------------------------------------------------------

    /// Signs an access token for `principal`, issued from refresh family `family`, and
    /// caches it as verified.
    async fn access_token(
        &self,
        principal: &Principal,
        family: &str,
    ) -> Result<(String, Arc<ValidatedToken>)> {
        let now = self.now();
        let mut exp_ms = now.saturating_add(ms(self.options.access_token_ttl));
        if principal.expires_at != 0 {
            exp_ms = exp_ms.min(principal.expires_at);
        }
        let principal_type = PrincipalType::try_from(principal.principal_type).unwrap_or_default();
        let claims = jwt::Claims {
            iss: self.options.issuer.clone(),
            aud: self.options.audience.clone(),
            sub: principal.principal_id.clone(),
            jti: aesp_core::new_id(self.clock.as_ref()),
            iat: now / 1000,
            exp: exp_ms / 1000,
            tenant: principal.tenant_id.clone(),
            principal_type: principal_type.as_str_name().to_owned(),
            roles: principal.roles.clone(),
            permissions: principal.permissions.clone(),
            clearance: principal.security_clearance.clone(),
            org: principal.organization_id.clone(),
            business_unit: principal.business_unit.clone(),
            attrs: principal.metadata.clone(),
            mfa: false,
            fid: family.to_owned(),
        };
        let epoch = self.revocations.epoch();
        let signer = self.keys.current();
        let input = jwt::signing_input(signer.key_id(), &claims)?;
        let signature = signer.sign(input.as_bytes()).await?;
        let token = jwt::assemble(&input, &signature);
        let validated = Arc::new(ValidatedToken {
            context: context_of(&claims, principal_type),
            token_id: claims.jti.clone(),
            issued_at_ms: claims.iat.saturating_mul(1000),
            expires_at_ms: claims.exp.saturating_mul(1000),
            key_id: signer.key_id().to_owned(),
            family_id: claims.fid,
        });
        self.cache.insert(Sha256::digest(token.as_bytes()).into(), Arc::clone(&validated), epoch, now);
        Ok((token, validated))
    }

    /// Starts a refresh family for `principal` and issues its first refresh token and an
    /// access token; audits `AUTHENTICATION_SUCCESS` with `method` (fail closed).
    pub(crate) async fn issue(&self, principal: &Principal, method: &str, resource: &str) -> Result<Tokens> {
        let now = self.now();
        let tenant = &principal.tenant_id;
        let family_id = aesp_core::new_id(self.clock.as_ref());
        let mut family_expires = now.saturating_add(ms(self.options.refresh_family_ttl));
        if principal.expires_at != 0 {
            family_expires = family_expires.min(principal.expires_at);
        }
        let family = FamilyRecord {
            principal_id: principal.principal_id.clone(),
            created_at: now,
            expires_at: family_expires,
            revoked_at: 0,
            revoked_reason: String::new(),
        };
        let refresh_token = secrets::new_refresh_token(tenant)?;
        let refresh = RefreshRecord {
            family_id: family_id.clone(),
            principal_id: principal.principal_id.clone(),
            expires_at: now.saturating_add(ms(self.options.refresh_token_ttl)).min(family_expires),
            rotated_at: 0,
        };
        let family_key = store::family_key(tenant, &family_id);
        let refresh_key = store::refresh_key(tenant, &secrets::refresh_token_hash(&refresh_token));
        let outcome = self
            .state
            .txn(
                Txn::new()
                    .if_absent(family_key.clone())
                    .if_absent(refresh_key.clone())
                    .put(family_key, family.encode_to_vec())
                    .put(refresh_key, refresh.encode_to_vec()),
            )
            .await?;
        if !outcome.committed() {
            return Err(Error::new(ErrorCode::Conflict, "a token id collided; retry"));
        }
        let (access_token, validated) = self.access_token(principal, &family_id).await?;
        let mut event = self.success_event(principal, method, resource, "authenticate");
        event.metadata.insert("token_id".into(), validated.token_id.clone());
        event.metadata.insert("family_id".into(), family_id);
        self.record(&event).await?;
        Ok(Tokens {
            access_token: Secret::new(access_token),
            expires_at_ms: validated.expires_at_ms,
            refresh_token: Secret::new(refresh_token),
            refresh_expires_at_ms: refresh.expires_at,
            context: validated.context.clone(),
        })
    }

    /// Issues tokens to a principal that was authenticated by other means (an OIDC, LDAP or
    /// client-certificate provider in front of the Host), after checking that it exists in
    /// `tenant` and is active. `method` names how it was authenticated, for the audit log.
    /// Whoever calls this vouches for the authentication.
    pub async fn issue_tokens(&self, tenant: &str, principal_id: &str, method: &str) -> Result<Tokens> {
        check_tenant(tenant)?;
        check_name("principal id", principal_id)?;
        let principal = match self.principal_record(tenant, principal_id).await? {
            Some(stored) if usable(&stored.value, self.now()) => stored.value,
            _ => return Err(super::invalid_credentials()),
        };
        self.issue(&principal, &shown(method), &format!("principal:{principal_id}")).await
    }

    // ---- Validating ------------------------------------------------------------------

    /// Checks an access token and returns what it stands for.
    ///
    /// The first validation of a token on this Host verifies its signature (with the key
    /// its `kid` names, current or retired within the overlap), its issuer, audience and
    /// expiry, and reads the state store: the principal must still be active, and neither
    /// the token nor its refresh family revoked. The result is cached until the token
    /// expires; later validations cost a SHA-256 of the token and a map lookup, plus a check
    /// of the in-memory revocations whenever one was made since (see the module `cache`), so
    /// revoking a token, a refresh family, a service account or a principal on this Host
    /// takes effect at the next call.
    ///
    /// Errors: `TOKEN_EXPIRED`; `TOKEN_REVOKED`; anything else wrong (malformed, unknown
    /// key, bad signature, other issuer or audience) is `AUTHENTICATION_FAILED` without
    /// detail. Never panics, whatever the input.
    pub async fn validate_token(&self, token: &str) -> Result<Arc<ValidatedToken>> {
        if token.len() > jwt::MAX_TOKEN_LEN {
            return Err(jwt::malformed());
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.now();
        let epoch = self.revocations.epoch();
        match self.cache.get(&digest, now, epoch, &self.revocations) {
            Hit::Valid(validated) => return Ok(validated),
            Hit::Expired => return Err(expired()),
            Hit::Revoked => return Err(revoked()),
            Hit::Miss => {}
        }
        let validated = Arc::new(self.verify(token, now).await?);
        if self.revocations.revokes(&validated, now) {
            return Err(revoked());
        }
        self.cache.insert(digest, Arc::clone(&validated), epoch, now);
        Ok(validated)
    }

    /// The uncached path: signature, claims, and the store.
    async fn verify(&self, token: &str, now: u64) -> Result<ValidatedToken> {
        let parsed = jwt::parse(token)?;
        let key = self.keys.verifier(&parsed.kid, now).ok_or_else(jwt::malformed)?;
        key.verify(parsed.signing_input.as_bytes(), &parsed.signature).map_err(|_| jwt::malformed())?;
        let claims = parsed.claims;
        if claims.iss != self.options.issuer || claims.aud != self.options.audience {
            return Err(jwt::malformed());
        }
        let principal_type =
            PrincipalType::from_str_name(&claims.principal_type).ok_or_else(jwt::malformed)?;
        if check_tenant(&claims.tenant).is_err()
            || check_name("principal", &claims.sub).is_err()
            || check_name("token id", &claims.jti).is_err()
            || (!claims.fid.is_empty() && check_name("family", &claims.fid).is_err())
            || claims.iat > (now / 1000).saturating_add(MAX_FUTURE_IAT_SECS)
        {
            return Err(jwt::malformed());
        }
        if now >= claims.exp.saturating_mul(1000) {
            return Err(expired());
        }
        let tenant = &claims.tenant;
        match self.principal_record(tenant, &claims.sub).await? {
            Some(stored) if usable(&stored.value, now) => {}
            _ => return Err(revoked()),
        }
        if self.state.get(store::revoked_token_key(tenant, &claims.jti).as_bytes()).await?.is_some() {
            return Err(revoked());
        }
        if !claims.fid.is_empty() {
            let family =
                read::<FamilyRecord>(self.state.as_ref(), &store::family_key(tenant, &claims.fid)).await?;
            if family.is_none_or(|f| f.value.revoked_at != 0) {
                return Err(revoked());
            }
        }
        Ok(ValidatedToken {
            context: context_of(&claims, principal_type),
            token_id: claims.jti.clone(),
            issued_at_ms: claims.iat.saturating_mul(1000),
            expires_at_ms: claims.exp.saturating_mul(1000),
            key_id: parsed.kid,
            family_id: claims.fid,
        })
    }

    /// Whether `token` claims to come from this issuer (to tell our tokens from other
    /// providers'); nothing is verified.
    pub(crate) fn issued_here(&self, token: &str) -> bool {
        jwt::peek_issuer(token).is_some_and(|iss| iss == self.options.issuer)
    }

    // ---- Refreshing ------------------------------------------------------------------

    /// Exchanges a refresh token for a new access token and a new refresh token; the one
    /// presented is used up.
    ///
    /// Presenting a refresh token that was already used (or losing a race with a concurrent
    /// use of the same token) is taken as theft: the whole family is revoked, with the
    /// access tokens issued from it, and the answer is `TOKEN_REVOKED`; audited. An expired
    /// one is `TOKEN_EXPIRED`; an unknown one `AUTHENTICATION_FAILED`; a principal that is
    /// no longer active gets `TOKEN_REVOKED`.
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<Tokens> {
        let token = refresh_token.expose();
        let Some(tenant) = secrets::refresh_token_tenant(token).filter(|t| check_tenant(t).is_ok()) else {
            return Err(bad_refresh());
        };
        let hash = secrets::refresh_token_hash(token);
        let key = store::refresh_key(tenant, &hash);
        let resource = format!("refresh_token:{}", hash.get(..16).unwrap_or_default());
        let Some(record) = read::<RefreshRecord>(self.state.as_ref(), &key).await? else {
            self.refresh_refused(tenant, "", &resource, "unknown_refresh_token").await;
            return Err(bad_refresh());
        };
        let principal_id = record.value.principal_id.clone();
        let family_key = store::family_key(tenant, &record.value.family_id);
        let Some(family) = read::<FamilyRecord>(self.state.as_ref(), &family_key).await? else {
            return Err(Error::corrupted(format!("refresh family of `{}` is missing", shown(&principal_id))));
        };
        let now = self.now();
        if family.value.revoked_at != 0 {
            self.refresh_refused(tenant, &principal_id, &resource, "family_revoked").await;
            return Err(revoked());
        }
        if record.value.rotated_at != 0 {
            return self.reuse_detected(tenant, &principal_id, &record.value.family_id, &resource).await;
        }
        if now >= record.value.expires_at || now >= family.value.expires_at {
            self.refresh_refused(tenant, &principal_id, &resource, "expired").await;
            return Err(expired());
        }
        let principal = match self.principal_record(tenant, &principal_id).await? {
            Some(stored) if usable(&stored.value, now) => stored.value,
            _ => {
                self.refresh_refused(tenant, &principal_id, &resource, "inactive").await;
                return Err(revoked());
            }
        };
        let next_token = secrets::new_refresh_token(tenant)?;
        let next = RefreshRecord {
            family_id: record.value.family_id.clone(),
            principal_id: principal_id.clone(),
            expires_at: now.saturating_add(ms(self.options.refresh_token_ttl)).min(family.value.expires_at),
            rotated_at: 0,
        };
        let mut used = record.value.clone();
        used.rotated_at = now;
        let next_key = store::refresh_key(tenant, &secrets::refresh_token_hash(&next_token));
        let txn = Txn::new()
            .if_revision(key.clone(), record.revision)
            .if_revision(family_key, family.revision)
            .if_absent(next_key.clone())
            .put(key, used.encode_to_vec())
            .put(next_key, next.encode_to_vec());
        if !self.state.txn(txn).await?.committed() {
            // Someone else used this token (or revoked the family) between our read and now.
            return self.reuse_detected(tenant, &principal_id, &record.value.family_id, &resource).await;
        }
        let (access_token, validated) = self.access_token(&principal, &record.value.family_id).await?;
        let mut event = self.success_event(&principal, "refresh_token", &resource, "refresh");
        event.metadata.insert("token_id".into(), validated.token_id.clone());
        event.metadata.insert("family_id".into(), record.value.family_id.clone());
        self.record(&event).await?;
        Ok(Tokens {
            access_token: Secret::new(access_token),
            expires_at_ms: validated.expires_at_ms,
            refresh_token: Secret::new(next_token),
            refresh_expires_at_ms: next.expires_at,
            context: validated.context.clone(),
        })
    }

    async fn refresh_refused(&self, tenant: &str, principal: &str, resource: &str, reason: &str) {
        let mut event = self.event(
            events::AUTHENTICATION_FAILURE,
            tenant,
            principal,
            resource,
            "refresh",
            Outcome::Failure(reason),
        );
        event.metadata.insert("method".into(), "refresh_token".into());
        // The caller is refused whether or not the refusal could be recorded.
        let _ = self.record(&event).await;
    }

    async fn reuse_detected(
        &self,
        tenant: &str,
        principal: &str,
        family: &str,
        resource: &str,
    ) -> Result<Tokens> {
        self.revoke_family(tenant, family, "refresh_token_reused", principal).await?;
        self.refresh_refused(tenant, principal, resource, "refresh_token_reused").await;
        Err(revoked()
            .with_security_implication("a used refresh token was presented again; its family is revoked"))
    }

    /// Revokes a refresh family (durably, then in the cache) and audits it.
    async fn revoke_family(&self, tenant: &str, family_id: &str, reason: &str, actor: &str) -> Result<()> {
        let key = store::family_key(tenant, family_id);
        let now = self.now();
        let mut changed = false;
        for _ in 0..8 {
            let Some(stored) = read::<FamilyRecord>(self.state.as_ref(), &key).await? else { return Ok(()) };
            if stored.value.revoked_at != 0 {
                // Revoked already (by someone else, possibly on another Host).
                return Ok(());
            }
            let mut family = stored.value;
            family.revoked_at = now;
            family.revoked_reason = reason.to_owned();
            let txn =
                Txn::new().if_revision(key.clone(), stored.revision).put(key.clone(), family.encode_to_vec());
            if self.state.txn(txn).await?.committed() {
                changed = true;
                break;
            }
        }
        if !changed {
            return Err(Error::new(ErrorCode::Conflict, "the refresh family keeps changing; retry"));
        }
        self.revocations.revoke_family(
            tenant,
            family_id,
            now.saturating_add(ms(self.options.access_token_ttl)),
            now,
        );
        let mut event = self.event(
            events::TOKEN_REVOKE,
            tenant,
            actor,
            &format!("refresh_family:{family_id}"),
            "revoke",
            Outcome::Success(reason),
        );
        event.metadata.insert("family_id".into(), family_id.to_owned());
        self.record(&event).await
    }

    // ---- Revoking --------------------------------------------------------------------

    /// Revokes an access token or a refresh token so that it stops working at once on this
    /// Host (cached or not). Revoking a refresh token revokes its family and every access
    /// token issued from it. As in RFC 7009, a token that is unknown, not ours or already
    /// expired is not an error: there is nothing left to revoke. `actor` is who asks.
    pub async fn revoke_token(&self, token: &Secret, actor: &str) -> Result<()> {
        let text = token.expose();
        if let Some(tenant) = secrets::refresh_token_tenant(text).filter(|t| check_tenant(t).is_ok()) {
            let key = store::refresh_key(tenant, &secrets::refresh_token_hash(text));
            if let Some(record) = read::<RefreshRecord>(self.state.as_ref(), &key).await? {
                self.revoke_family(tenant, &record.value.family_id, "requested", actor).await?;
            }
            return Ok(());
        }
        let now = self.now();
        let Ok(parsed) = jwt::parse(text) else { return Ok(()) };
        let Some(key) = self.keys.verifier(&parsed.kid, now) else { return Ok(()) };
        if key.verify(parsed.signing_input.as_bytes(), &parsed.signature).is_err()
            || parsed.claims.iss != self.options.issuer
            || check_tenant(&parsed.claims.tenant).is_err()
            || check_name("token id", &parsed.claims.jti).is_err()
        {
            return Ok(());
        }
        let claims = parsed.claims;
        let expires_at = claims.exp.saturating_mul(1000);
        if now >= expires_at {
            return Ok(());
        }
        let record = RevokedTokenRecord { expires_at, revoked_at: now };
        let _ = self
            .state
            .txn(
                Txn::new().put(store::revoked_token_key(&claims.tenant, &claims.jti), record.encode_to_vec()),
            )
            .await?;
        self.revocations.revoke_token(&claims.jti, expires_at, now);
        let actor = if actor.is_empty() { claims.sub.as_str() } else { actor };
        let mut event = self.event(
            events::TOKEN_REVOKE,
            &claims.tenant,
            actor,
            &format!("token:{}", claims.jti),
            "revoke",
            Outcome::Success("requested"),
        );
        event.metadata.insert("subject".into(), claims.sub.clone());
        self.record(&event).await
    }

    // ---- Signing keys ----------------------------------------------------------------

    /// Makes `signer` (ed25519) the key that signs new access tokens. The previous key keeps
    /// verifying the tokens it signed until they expire ([`access_token_ttl`] after now),
    /// then drops out of [`jwks`](Self::jwks). Recorded in the state store and audited.
    ///
    /// [`access_token_ttl`]: super::IdentityOptions::access_token_ttl
    pub async fn rotate_signing_key(&self, signer: Arc<dyn Signer>, actor: &str) -> Result<()> {
        if signer.public_key().algorithm != aesp_core::SignatureAlgorithm::Ed25519 {
            return Err(Error::invalid_argument("access tokens are signed with ed25519 keys"));
        }
        let now = self.now();
        let new_kid = signer.key_id().to_owned();
        let old_kid =
            self.keys.rotate(self.state.as_ref(), signer, now, ms(self.options.access_token_ttl)).await?;
        let mut event = self.event(
            events::TOKEN_SIGNING_KEY_ROTATE,
            SYSTEM_TENANT,
            actor,
            &format!("token_key:{new_kid}"),
            "rotate",
            Outcome::Success(""),
        );
        event.metadata.insert("new_key_id".into(), new_kid);
        event.metadata.insert("retired_key_id".into(), old_kid);
        self.record(&event).await
    }

    /// The id (`kid`) of the key that signs new access tokens.
    pub fn signing_key_id(&self) -> String {
        self.keys.current().key_id().to_owned()
    }

    /// The public keys that verify access tokens now: the current one first, then retired
    /// ones whose tokens may not have expired yet.
    pub fn verification_keys(&self) -> Vec<PublicKey> {
        self.keys.verification_keys(self.now())
    }

    /// The JWKS document (RFC 7517) of [`verification_keys`](Self::verification_keys): each
    /// an `OKP` key on `Ed25519` with its `kid`, `alg: EdDSA` and `use: sig`. Serve it at the
    /// Host's `/.well-known/jwks.json`.
    pub fn jwks(&self) -> String {
        jwt::jwks(&self.verification_keys())
    }
}
