//! The Identity Manager: tokens (issue, validate, expiry, tampering, revocation through the
//! cache, refresh rotation and reuse detection), service accounts, users (lockout, password
//! expiry), key rotation with overlap, bootstrap, tenancy, and the audit trail.
#![expect(clippy::unwrap_used, reason = "test fixtures fail by panicking")]

use std::{sync::Arc, time::Duration};

use aesp_audit::{AuditLog, AuditLogOptions, MemoryStorage, NoteSigner};
use aesp_core::{
    Authentication, Clock, Credential, Ed25519Signer, ErrorCode, IdentityProvider as _, ManualClock,
    MemoryStore, Secret, Signer, StateStore, StateStoreExt as _,
    proto::v1::{AuditEvent, PrincipalStatus, PrincipalType},
};
use aesp_host::{
    BUILTIN_PROVIDER, BootstrapAdmin, BootstrapCredential, IdentityManager, IdentityOptions, ListPrincipals,
    NewPrincipal, NewServiceAccount, NewUser, PasswordHashing, SYSTEM_TENANT, ServiceAccountCredential,
    identity_events as events,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use prost::Message as _;

const T0: u64 = 1_764_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);

struct Fixture {
    state: Arc<MemoryStore>,
    clock: ManualClock,
    audit: AuditLog,
    signer: Arc<dyn Signer>,
    identity: IdentityManager,
}

fn options() -> IdentityOptions {
    let mut options = IdentityOptions::default();
    options.password_hashing = PasswordHashing::insecure_for_tests();
    options.lockout_threshold = 3;
    options
}

async fn fixture_with(options: IdentityOptions) -> Fixture {
    let clock = ManualClock::new(T0);
    let state = Arc::new(MemoryStore::default());
    let storage = Arc::new(MemoryStorage::new(Arc::new(clock.clone())));
    let audit_key: Arc<dyn Signer> = Arc::new(Ed25519Signer::from_seed(&[9; 32]));
    let audit =
        AuditLog::open(storage, NoteSigner::new("test", audit_key).unwrap(), AuditLogOptions::new("test"))
            .await
            .unwrap();
    let signer: Arc<dyn Signer> = Arc::new(Ed25519Signer::from_seed(&[1; 32]));
    let identity = IdentityManager::new(
        Arc::clone(&state) as Arc<dyn StateStore>,
        Arc::new(clock.clone()),
        audit.clone(),
        Arc::clone(&signer),
        options,
    )
    .await
    .unwrap();
    Fixture { state, clock, audit, signer, identity }
}

async fn fixture() -> Fixture {
    fixture_with(options()).await
}

impl Fixture {
    /// A second Identity Manager over the same state and keys: a restarted Host, with an
    /// empty token cache.
    async fn restarted(&self) -> IdentityManager {
        self.restarted_with(Arc::clone(&self.signer)).await
    }

    async fn restarted_with(&self, signer: Arc<dyn Signer>) -> IdentityManager {
        IdentityManager::new(
            Arc::clone(&self.state) as Arc<dyn StateStore>,
            Arc::new(self.clock.clone()),
            self.audit.clone(),
            signer,
            options(),
        )
        .await
        .unwrap()
    }

    async fn service_account(&self, tenant: &str, name: &str) -> ServiceAccountCredential {
        let new = NewServiceAccount::new(name).with_principal(
            NewPrincipal::new(name)
                .with_role("agent")
                .with_permission("tools:invoke")
                .with_clearance("Confidential")
                .with_attribute("spending_limit", "1000"),
        );
        self.identity.create_service_account(tenant, new, "admin-1").await.unwrap()
    }

    async fn events(&self) -> Vec<AuditEvent> {
        let size = self.audit.storage().state().await.unwrap().size;
        let mut events = Vec::new();
        for index in 0..size {
            events.push(AuditEvent::decode(self.audit.entry(index).await.unwrap()).unwrap());
        }
        events
    }

    async fn store_bytes(&self) -> Vec<u8> {
        let page = self.state.scan_all(b"", 1_000_000).await.unwrap();
        page.kvs.into_iter().flat_map(|kv| kv.key.into_iter().chain(kv.value)).collect()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn header(token: &str) -> serde_json::Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn tokens_carry_the_security_context_and_validate_from_the_cache() {
    let f = fixture().await;
    let sa = f.service_account("acme", "billing-agent").await;
    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    assert_eq!(tokens.expires_at_ms, T0 + 15 * 60 * 1000);
    assert!(!format!("{tokens:?}").contains(tokens.access_token.expose()), "Debug hides the tokens");
    let h = header(tokens.access_token.expose());
    assert_eq!(h["alg"], "EdDSA");
    assert_eq!(h["kid"], f.identity.signing_key_id());

    let validated = f.identity.validate_token(tokens.access_token.expose()).await.unwrap();
    let context = &validated.context;
    assert_eq!(context.principal_id, sa.principal.principal_id);
    assert_eq!(context.tenant_id, "acme");
    assert_eq!(context.principal_type, PrincipalType::ServiceAccount as i32);
    assert_eq!(context.roles, ["agent"]);
    assert_eq!(context.permissions, ["tools:invoke"]);
    assert_eq!(context.security_clearance, "confidential");
    assert_eq!(context.claims.get("spending_limit").map(String::as_str), Some("1000"));
    assert_eq!(context.session_expires_at, tokens.expires_at_ms);
    assert_eq!(&tokens.context, context);
    // A second validation is served from the cache: the very same verified token.
    let again = f.identity.validate_token(tokens.access_token.expose()).await.unwrap();
    assert!(Arc::ptr_eq(&validated, &again));

    // A restarted Host (empty cache) verifies the signature and the store once.
    let other = f.restarted().await;
    let uncached = other.validate_token(tokens.access_token.expose()).await.unwrap();
    assert_eq!(uncached.context, *context);
    assert_eq!(uncached.token_id, validated.token_id);
    let proto = tokens.to_proto();
    assert_eq!(proto.access_token, tokens.access_token.expose());
    assert_eq!(proto.expires_at, tokens.expires_at_ms);
}

#[tokio::test]
async fn expired_tokens_are_refused_cached_or_not() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    let token = tokens.access_token.expose();
    f.identity.validate_token(token).await.unwrap();
    f.clock.advance(15 * MINUTE - Duration::from_millis(1));
    f.identity.validate_token(token).await.unwrap();
    f.clock.advance(Duration::from_millis(1));
    assert_eq!(f.identity.validate_token(token).await.unwrap_err().code(), ErrorCode::TokenExpired);
    assert_eq!(f.restarted().await.validate_token(token).await.unwrap_err().code(), ErrorCode::TokenExpired);
}

#[tokio::test]
async fn tampered_foreign_and_garbage_tokens_are_refused_without_panicking() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    let token = tokens.access_token.expose().to_owned();
    let parts: Vec<&str> = token.split('.').collect();

    // Claims changed (another tenant), signature kept.
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["tenant"] = "other".into();
    claims["roles"] = serde_json::json!(["platform-admin"]);
    let forged_claims = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);
    // One signature bit flipped.
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[5] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&signature));
    // `alg: none` with no signature.
    let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"x"}"#), parts[1]);
    // Signed by a foreign key that claims our kid.
    let foreign = Ed25519Signer::from_seed(&[66; 32]);
    let input = format!("{}.{}", parts[0], parts[1]);
    let foreign_signed = format!("{input}.{}", URL_SAFE_NO_PAD.encode(foreign.sign_now(input.as_bytes())));

    let huge = "a".repeat(1 << 20);
    let mut garbage: Vec<String> = vec![
        forged_claims,
        flipped,
        none,
        foreign_signed,
        String::new(),
        ".".into(),
        "..".into(),
        "a.b.c".into(),
        format!("{token}.x"),
        format!("{token}="),
        token.replace('.', ""),
        huge,
        "\u{0}\u{ffff}é.💥.🦀".into(),
    ];
    garbage.extend((0..token.len()).step_by(7).map(|i| format!("{}{}", &token[..i], &token[i + 1..])));
    for bad in &garbage {
        let error = f.identity.validate_token(bad).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::AuthenticationFailed, "{}", &bad[..bad.len().min(80)]);
        assert!(!error.message().contains(&token), "errors do not echo tokens");
    }
    // The genuine token still validates.
    f.identity.validate_token(&token).await.unwrap();
}

#[tokio::test]
async fn revoking_a_service_account_or_a_token_reaches_cached_tokens() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let first = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    let second = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    let (first, second) = (first.access_token.expose().to_owned(), second.access_token.expose().to_owned());
    f.identity.validate_token(&first).await.unwrap();
    f.identity.validate_token(&second).await.unwrap();

    // One token revoked: it stops at once, cached or not; the other one still works.
    f.identity.revoke_token(&Secret::new(first.clone()), "admin-1").await.unwrap();
    assert_eq!(f.identity.validate_token(&first).await.unwrap_err().code(), ErrorCode::TokenRevoked);
    assert_eq!(f.restarted().await.validate_token(&first).await.unwrap_err().code(), ErrorCode::TokenRevoked);
    f.identity.validate_token(&second).await.unwrap();

    // The service account revoked: its cached token, its key and its refresh tokens stop.
    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    f.identity
        .revoke_service_account("acme", &sa.principal.principal_id, "rotated out", "admin-1")
        .await
        .unwrap();
    assert_eq!(f.identity.validate_token(&second).await.unwrap_err().code(), ErrorCode::TokenRevoked);
    assert_eq!(
        f.restarted().await.validate_token(&second).await.unwrap_err().code(),
        ErrorCode::TokenRevoked
    );
    let error = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidCredentials);
    assert_eq!(f.identity.refresh(&tokens.refresh_token).await.unwrap_err().code(), ErrorCode::TokenRevoked);
    let account = f.identity.get_service_account("acme", &sa.principal.principal_id).await.unwrap();
    assert_eq!(account.status, PrincipalStatus::Revoked as i32);
    assert_eq!(account.revoked_at, T0);
    // Revoking again is harmless; revoking garbage is not an error (RFC 7009).
    f.identity.revoke_service_account("acme", &sa.principal.principal_id, "again", "admin-1").await.unwrap();
    f.identity.revoke_token(&Secret::new("garbage"), "admin-1").await.unwrap();

    let events = f.events().await;
    let revoke = events.iter().find(|e| e.event_type == events::IDENTITY_REVOKE_SERVICE_ACCOUNT).unwrap();
    assert_eq!(revoke.tenant_id, "acme");
    assert_eq!(revoke.principal_id, "admin-1");
    assert_eq!(revoke.resource, format!("service_account:{}", sa.principal.principal_id));
    assert_eq!(revoke.metadata["reason"], "rotated out");
    assert_eq!(events.iter().filter(|e| e.event_type == events::IDENTITY_REVOKE_SERVICE_ACCOUNT).count(), 1);
    let failure = events
        .iter()
        .find(|e| e.event_type == events::AUTHENTICATION_FAILURE && e.metadata["method"] == "api_key")
        .unwrap();
    assert_eq!(failure.metadata["reason"], "revoked");
    let refresh = events.iter().rev().find(|e| e.event_type == events::AUTHENTICATION_FAILURE).unwrap();
    assert_eq!(
        (refresh.metadata["method"].as_str(), refresh.metadata["reason"].as_str()),
        ("refresh_token", "inactive")
    );
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let first = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    f.clock.advance(MINUTE);
    let second = f.identity.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.expires_at_ms, T0 + 16 * 60 * 1000);
    let a1 = f.identity.validate_token(first.access_token.expose()).await.unwrap();
    let a2 = f.identity.validate_token(second.access_token.expose()).await.unwrap();
    assert_eq!(a1.family_id, a2.family_id);
    let third = f.identity.refresh(&second.refresh_token).await.unwrap();
    // Refresh tokens are stored only as hashes.
    let bytes = f.store_bytes().await;
    for token in [&first.refresh_token, &second.refresh_token, &third.refresh_token] {
        let random = token.expose().rsplit('.').next().unwrap();
        assert!(!contains(&bytes, random.as_bytes()));
    }

    // The first refresh token again: theft. The family and its access tokens are revoked.
    let error = f.identity.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::TokenRevoked);
    assert_eq!(f.identity.refresh(&third.refresh_token).await.unwrap_err().code(), ErrorCode::TokenRevoked);
    for access in [&first.access_token, &second.access_token, &third.access_token] {
        let error = f.identity.validate_token(access.expose()).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::TokenRevoked);
        let error = f.restarted().await.validate_token(access.expose()).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::TokenRevoked);
    }
    // A new authentication starts a new family.
    let fresh = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    f.identity.refresh(&fresh.refresh_token).await.unwrap();

    let events = f.events().await;
    let revoke = events.iter().find(|e| e.event_type == events::TOKEN_REVOKE).unwrap();
    assert_eq!(revoke.metadata["reason"], "refresh_token_reused");
    assert_eq!(revoke.metadata["family_id"], a1.family_id);
    assert!(events.iter().any(|e| e.event_type == events::AUTHENTICATION_FAILURE
        && e.metadata.get("reason").map(String::as_str) == Some("refresh_token_reused")));

    // Unknown, malformed and expired refresh tokens.
    for bad in ["", "aesp_rt.acme.nope", "aesp_rt.Acme.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "x"] {
        let error = f.identity.refresh(&Secret::new(bad)).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::AuthenticationFailed, "{bad}");
    }
    let later = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    f.clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(f.identity.refresh(&later.refresh_token).await.unwrap_err().code(), ErrorCode::TokenExpired);
}

#[tokio::test]
async fn revoking_a_refresh_token_revokes_its_access_tokens() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    f.identity.validate_token(tokens.access_token.expose()).await.unwrap();
    f.identity.revoke_token(&tokens.refresh_token, "").await.unwrap();
    let error = f.identity.validate_token(tokens.access_token.expose()).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::TokenRevoked);
    assert_eq!(f.identity.refresh(&tokens.refresh_token).await.unwrap_err().code(), ErrorCode::TokenRevoked);
}

#[tokio::test]
async fn service_account_secrets_are_shown_once_and_stored_only_as_hashes() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let secret = sa.secret.expose().to_owned();
    assert!(secret.starts_with("aesp_sk_") && secret.len() > 40);
    assert!(!format!("{sa:?}").contains(&secret));
    let bytes = f.store_bytes().await;
    assert!(contains(&bytes, sa.key_id.as_bytes()), "the key id is stored");
    assert!(!contains(&bytes, secret.as_bytes()), "the secret is not");
    assert!(!contains(&bytes, secret.trim_start_matches("aesp_sk_").as_bytes()));
    let account = f.identity.get_service_account("acme", &sa.principal.principal_id).await.unwrap();
    assert_eq!(account.api_key, sa.key_id);
    assert_eq!(account.name, "agent");
    assert_eq!(account.created_by, "admin-1");
    assert!(!contains(&account.encode_to_vec(), secret.as_bytes()));
    // Names are unique in a tenant, not across tenants.
    let again = f.identity.create_service_account("acme", NewServiceAccount::new("agent"), "admin-1").await;
    assert_eq!(again.unwrap_err().code(), ErrorCode::AlreadyExists);
    f.identity.create_service_account("globex", NewServiceAccount::new("agent"), "admin-1").await.unwrap();
    // A wrong secret of the right shape.
    let wrong = Secret::new(format!("aesp_sk_{}", "A".repeat(43)));
    let error = f.identity.authenticate_service_account("acme", &sa.key_id, &wrong).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidCredentials);
}

#[tokio::test]
async fn service_accounts_expire() {
    let f = fixture().await;
    let new = NewServiceAccount::new("temp")
        .with_principal(NewPrincipal::new("temp").with_expiry(T0 + 10 * 60_000));
    let sa = f.identity.create_service_account("acme", new, "admin-1").await.unwrap();
    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    // The token lives no longer than the account.
    assert_eq!(tokens.expires_at_ms, T0 + 10 * 60_000);
    f.clock.advance(10 * MINUTE);
    let error = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidCredentials);
    assert_eq!(
        f.identity.validate_token(tokens.access_token.expose()).await.unwrap_err().code(),
        ErrorCode::TokenExpired
    );
    let failure =
        f.events().await.into_iter().rev().find(|e| e.event_type == events::AUTHENTICATION_FAILURE).unwrap();
    assert_eq!(failure.metadata["reason"], "expired");
}

#[tokio::test]
async fn users_are_locked_after_repeated_failures_and_a_success_resets_the_count() {
    let f = fixture().await;
    let password = Secret::new("correct horse battery staple");
    let wrong = Secret::new("wrong horse battery staple");
    f.identity.create_user("acme", NewUser::new("Alice", password.clone()), "admin-1").await.unwrap();
    let short = f.identity.create_user("acme", NewUser::new("bob", Secret::new("short")), "admin-1").await;
    assert_eq!(short.unwrap_err().code(), ErrorCode::InvalidArgument);

    // Two failures, then a success: the count starts again.
    for _ in 0..2 {
        let error = f.identity.authenticate_user("acme", "alice", &wrong).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidCredentials);
    }
    let tokens = f.identity.authenticate_user("acme", "ALICE", &password).await.unwrap();
    assert_eq!(tokens.context.principal_type, PrincipalType::User as i32);
    for _ in 0..2 {
        f.identity.authenticate_user("acme", "alice", &wrong).await.unwrap_err();
    }
    // The third consecutive failure locks; then even the right password is refused.
    let error = f.identity.authenticate_user("acme", "alice", &wrong).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::AccountLocked);
    let error = f.identity.authenticate_user("acme", "alice", &password).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::AccountLocked);
    // The lock is in the state store: a restarted Host sees it.
    let restarted = f.restarted().await;
    assert_eq!(
        restarted.authenticate_user("acme", "alice", &password).await.unwrap_err().code(),
        ErrorCode::AccountLocked
    );
    f.clock.advance(15 * MINUTE);
    f.identity.authenticate_user("acme", "alice", &password).await.unwrap();

    // An unknown user looks like a wrong password.
    let error = f.identity.authenticate_user("acme", "mallory", &password).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidCredentials);
    assert_eq!(
        error.message(),
        f.identity.authenticate_user("acme", "alice", &wrong).await.unwrap_err().message()
    );

    let events = f.events().await;
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == events::AUTHENTICATION_FAILURE)
        .map(|e| e.metadata["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "wrong_password",
            "wrong_password",
            "wrong_password",
            "wrong_password",
            "wrong_password",
            "locked",
            "locked",
            "unknown_user",
            "wrong_password"
        ]
    );
    assert_eq!(events.iter().filter(|e| e.event_type == events::IDENTITY_LOCK_USER).count(), 1);
}

#[tokio::test]
async fn expired_passwords_must_be_changed() {
    let f = fixture().await;
    let password = Secret::new("correct horse battery staple");
    f.identity.create_user("acme", NewUser::new("alice", password.clone()), "admin-1").await.unwrap();
    f.clock.advance(Duration::from_secs(90 * 24 * 3600));
    let error = f.identity.authenticate_user("acme", "alice", &password).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::PasswordExpired);
    // A wrong password does not learn that the password expired.
    let error =
        f.identity.authenticate_user("acme", "alice", &Secret::new("not the password!")).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidCredentials);
    let new = Secret::new("a brand new passphrase");
    assert_eq!(
        f.identity.change_password("acme", "alice", &password, &password).await.unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    f.identity.change_password("acme", "alice", &password, &new).await.unwrap();
    f.identity.authenticate_user("acme", "alice", &new).await.unwrap();
    assert_eq!(
        f.identity.authenticate_user("acme", "alice", &password).await.unwrap_err().code(),
        ErrorCode::InvalidCredentials
    );
    let events = f.events().await;
    assert!(events.iter().any(|e| e.event_type == events::IDENTITY_CHANGE_PASSWORD));
    assert!(events.iter().any(|e| e.metadata.get("reason").map(String::as_str) == Some("password_expired")));
}

#[tokio::test]
async fn signing_keys_rotate_with_overlap_and_jwks_follows() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let old_kid = f.identity.signing_key_id();
    let old = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();

    f.clock.advance(5 * MINUTE);
    let new_signer: Arc<dyn Signer> = Arc::new(Ed25519Signer::from_seed(&[2; 32]));
    f.identity.rotate_signing_key(Arc::clone(&new_signer), "admin-1").await.unwrap();
    assert_eq!(f.identity.signing_key_id(), new_signer.key_id());
    let new = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    assert_eq!(header(new.access_token.expose())["kid"], new_signer.key_id());
    assert_eq!(header(old.access_token.expose())["kid"], old_kid.as_str());

    let kids = |jwks: &str| -> Vec<String> {
        let doc: serde_json::Value = serde_json::from_str(jwks).unwrap();
        doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                assert_eq!(k["kty"], "OKP");
                assert_eq!(k["crv"], "Ed25519");
                assert_eq!(k["alg"], "EdDSA");
                assert_eq!(k["use"], "sig");
                k["kid"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(kids(&f.identity.jwks()), [new_signer.key_id().to_owned(), old_kid.clone()]);

    // Both tokens verify, cached or not (the old one with the retired key).
    let restarted = f.restarted_with(Arc::clone(&new_signer)).await;
    for manager in [&f.identity, &restarted] {
        manager.validate_token(old.access_token.expose()).await.unwrap();
        manager.validate_token(new.access_token.expose()).await.unwrap();
    }
    // The old token expires on schedule; the old key leaves the JWKS once every token it
    // signed has expired.
    f.clock.advance(10 * MINUTE);
    let error = f.identity.validate_token(old.access_token.expose()).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::TokenExpired);
    assert_eq!(kids(&f.identity.jwks()).len(), 2);
    f.clock.advance(5 * MINUTE);
    assert_eq!(kids(&f.identity.jwks()), [new_signer.key_id().to_owned()]);
    assert_eq!(f.identity.verification_keys().len(), 1);
    let events = f.events().await;
    let rotate = events.iter().find(|e| e.event_type == events::TOKEN_SIGNING_KEY_ROTATE).unwrap();
    assert_eq!(rotate.metadata["retired_key_id"], old_kid);
    assert_eq!(rotate.tenant_id, SYSTEM_TENANT);
}

#[tokio::test]
async fn a_restart_with_a_new_key_file_retires_the_previous_key_with_overlap() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let old = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    let third: Arc<dyn Signer> = Arc::new(Ed25519Signer::from_seed(&[3; 32]));
    let restarted = f.restarted_with(Arc::clone(&third)).await;
    assert_eq!(restarted.signing_key_id(), third.key_id());
    assert_eq!(restarted.verification_keys().len(), 2);
    restarted.validate_token(old.access_token.expose()).await.unwrap();
    f.clock.advance(15 * MINUTE);
    assert_eq!(restarted.verification_keys().len(), 1);
}

#[tokio::test]
async fn bootstrap_creates_the_first_administrator_once() {
    let f = fixture().await;
    let credential =
        f.identity.bootstrap_admin(BootstrapAdmin::ServiceAccount { name: "root".into() }).await.unwrap();
    let BootstrapCredential::ServiceAccount(sa) = &credential else { panic!("a service account") };
    assert_eq!(sa.principal.tenant_id, SYSTEM_TENANT);
    assert_eq!(sa.principal.roles, [aesp_host::PLATFORM_ADMIN_ROLE]);
    assert!(!format!("{credential:?}").contains(sa.secret.expose()));
    let tokens =
        f.identity.authenticate_service_account(SYSTEM_TENANT, &sa.key_id, &sa.secret).await.unwrap();
    assert_eq!(tokens.context.tenant_id, SYSTEM_TENANT);
    assert_eq!(tokens.context.roles, [aesp_host::PLATFORM_ADMIN_ROLE]);

    for again in [
        BootstrapAdmin::ServiceAccount { name: "root2".into() },
        BootstrapAdmin::User { username: "root".into() },
    ] {
        let error = f.identity.bootstrap_admin(again).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::FailedPrecondition);
    }
    // Nothing half-created by the refused attempts.
    let page =
        f.identity.list_principals(SYSTEM_TENANT, &ListPrincipals::new().include_inactive()).await.unwrap();
    assert_eq!(page.principals.len(), 1);
    assert!(f.events().await.iter().any(|e| e.event_type == events::IDENTITY_BOOTSTRAP));

    // A user administrator gets a generated password, shown once.
    let g = fixture().await;
    let credential =
        g.identity.bootstrap_admin(BootstrapAdmin::User { username: "Root".into() }).await.unwrap();
    let BootstrapCredential::User { username, password, principal } = &credential else { panic!("a user") };
    assert_eq!(username, "root");
    assert!(password.expose().len() >= 32);
    assert!(!contains(&g.store_bytes().await, password.expose().as_bytes()));
    let tokens = g.identity.authenticate_user(SYSTEM_TENANT, "root", password).await.unwrap();
    assert_eq!(tokens.context.principal_id, principal.principal_id);
}

#[tokio::test]
async fn credentials_and_tokens_do_not_cross_tenants() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    f.service_account("globex", "agent").await;
    for tenant in ["globex", "_system", "", "Acme", "acme/../globex"] {
        let error =
            f.identity.authenticate_service_account(tenant, &sa.key_id, &sa.secret).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidCredentials, "{tenant}");
    }
    f.identity
        .create_user("acme", NewUser::new("alice", Secret::new("correct horse battery")), "a")
        .await
        .unwrap();
    let error = f
        .identity
        .authenticate_user("globex", "alice", &Secret::new("correct horse battery"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidCredentials);
    // Principals are read per tenant.
    let error = f.identity.get_principal("globex", &sa.principal.principal_id).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::NotFound);
    let failure =
        f.events().await.into_iter().find(|e| e.event_type == events::AUTHENTICATION_FAILURE).unwrap();
    assert_eq!(failure.tenant_id, "globex");
    assert_eq!(failure.metadata["reason"], "unknown_api_key");

    // Through the provider seam: a token of `acme` is refused for `globex`.
    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    let bearer = Credential::BearerToken(tokens.access_token.clone());
    let error = f.identity.authenticate(&bearer, "globex").await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::TenantAccessDenied);
}

#[tokio::test]
async fn the_manager_is_an_identity_provider() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let api_key = Credential::ApiKey { key_id: sa.key_id.clone(), secret: sa.secret.clone() };
    let Authentication::Authenticated(identity) = f.identity.authenticate(&api_key, "acme").await.unwrap()
    else {
        panic!("authenticated")
    };
    assert_eq!(identity.principal_id, sa.principal.principal_id);
    assert_eq!(identity.tenant_id, "acme");
    assert_eq!(identity.provider, BUILTIN_PROVIDER);
    assert_eq!(identity.claims["spending_limit"], "1000");
    let error = f.identity.authenticate(&api_key, "globex").await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidCredentials);

    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    let bearer = Credential::BearerToken(tokens.access_token.clone());
    let Authentication::Authenticated(identity) = f.identity.authenticate(&bearer, "").await.unwrap() else {
        panic!("authenticated")
    };
    assert_eq!(identity.expires_at_ms, tokens.expires_at_ms);
    assert_eq!(identity.roles, ["agent"]);
    // Another issuer's JWT and other kinds of credentials are for other providers.
    let foreign = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"iss":"https://login.example.com"}"#),
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    for other in [Credential::BearerToken(Secret::new(foreign)), Credential::SamlAssertion(Secret::new("x"))]
    {
        assert_eq!(f.identity.authenticate(&other, "acme").await.unwrap(), Authentication::NotApplicable);
    }
    // Our own token, expired, is ours to refuse.
    f.clock.advance(15 * MINUTE);
    assert_eq!(f.identity.authenticate(&bearer, "").await.unwrap_err().code(), ErrorCode::TokenExpired);
}

#[tokio::test]
async fn principals_are_listed_by_page_filtered_and_deactivated() {
    let f = fixture().await;
    let mut system = Vec::new();
    for i in 0..5 {
        let new = NewPrincipal::new(format!("worker-{i}"));
        system.push(
            f.identity.create_principal("acme", PrincipalType::SystemAccount, new, "admin-1").await.unwrap(),
        );
    }
    let sa = f.service_account("acme", "agent").await;
    let create_sa =
        f.identity.create_principal("acme", PrincipalType::ServiceAccount, NewPrincipal::new("x"), "a").await;
    assert_eq!(create_sa.unwrap_err().code(), ErrorCode::InvalidArgument);

    let mut seen = Vec::new();
    let mut request = ListPrincipals::new().limit(2);
    loop {
        let page = f.identity.list_principals("acme", &request).await.unwrap();
        assert!(page.principals.len() <= 2);
        seen.extend(page.principals.into_iter().map(|p| p.principal_id));
        if page.next_cursor.is_empty() {
            break;
        }
        request = request.after(page.next_cursor);
    }
    assert_eq!(seen.len(), 6);
    let only_sa = f
        .identity
        .list_principals("acme", &ListPrincipals::new().of_type(PrincipalType::ServiceAccount))
        .await
        .unwrap();
    assert_eq!(only_sa.principals.len(), 1);
    assert_eq!(only_sa.principals[0].principal_id, sa.principal.principal_id);
    assert!(
        f.identity.list_principals("globex", &ListPrincipals::new()).await.unwrap().principals.is_empty()
    );

    // Deactivating the service account hides it and stops its cached token.
    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    f.identity.validate_token(tokens.access_token.expose()).await.unwrap();
    f.identity
        .deactivate_principal("acme", &sa.principal.principal_id, "left the team", "admin-1")
        .await
        .unwrap();
    let error = f.identity.validate_token(tokens.access_token.expose()).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::TokenRevoked);
    let active = f.identity.list_principals("acme", &ListPrincipals::new()).await.unwrap();
    assert_eq!(active.principals.len(), 5);
    let all = f.identity.list_principals("acme", &ListPrincipals::new().include_inactive()).await.unwrap();
    assert_eq!(all.principals.len(), 6);
    let got = f.identity.get_principal("acme", &sa.principal.principal_id).await.unwrap();
    assert_eq!(got.status, PrincipalStatus::Suspended as i32);
    assert_eq!(got.metadata["spending_limit"], "1000");
    assert_eq!(f.identity.get_principal("acme", "nobody").await.unwrap_err().code(), ErrorCode::NotFound);
}

#[tokio::test]
async fn audit_events_record_successes_and_failures_without_secrets() {
    let f = fixture().await;
    let sa = f.service_account("acme", "agent").await;
    let password = Secret::new("correct horse battery staple");
    let user =
        f.identity.create_user("acme", NewUser::new("alice", password.clone()), "admin-1").await.unwrap();
    let tokens = f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap();
    let wrong_secret = Secret::new("aesp_sk_wrongwrongwrongwrongwrongwrongwrongwrong");
    f.identity.authenticate_service_account("acme", &sa.key_id, &wrong_secret).await.unwrap_err();
    f.identity.authenticate_user("acme", "alice", &password).await.unwrap();
    let wrong_password = Secret::new("this is not alices password");
    f.identity.authenticate_user("acme", "alice", &wrong_password).await.unwrap_err();

    let events = f.events().await;
    let created = events.iter().find(|e| e.event_type == events::IDENTITY_CREATE_SERVICE_ACCOUNT).unwrap();
    assert_eq!(created.tenant_id, "acme");
    assert_eq!(created.principal_id, "admin-1");
    assert_eq!(created.action, "create");
    assert_eq!(created.outcome, "SUCCESS");
    assert!(events.iter().any(|e| e.event_type == events::IDENTITY_CREATE_USER
        && e.resource == format!("user:{}", user.principal_id)));
    let successes: Vec<&AuditEvent> =
        events.iter().filter(|e| e.event_type == events::AUTHENTICATION_SUCCESS).collect();
    assert_eq!(successes.len(), 2);
    assert_eq!(successes[0].principal_id, sa.principal.principal_id);
    assert_eq!(successes[0].metadata["method"], "api_key");
    assert_eq!(successes[1].metadata["method"], "password");
    let failures: Vec<&AuditEvent> =
        events.iter().filter(|e| e.event_type == events::AUTHENTICATION_FAILURE).collect();
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0].metadata["reason"], "wrong_secret");
    assert_eq!(failures[0].principal_id, sa.principal.principal_id);
    assert_eq!(failures[0].outcome, "FAILURE");
    assert_eq!(failures[1].metadata["reason"], "wrong_password");
    for event in &events {
        assert!(!event.event_id.is_empty() && event.timestamp_ms == T0);
        let bytes = event.encode_to_vec();
        for secret in [
            sa.secret.expose(),
            wrong_secret.expose(),
            password.expose(),
            wrong_password.expose(),
            tokens.access_token.expose(),
            tokens.refresh_token.expose(),
        ] {
            assert!(!contains(&bytes, secret.as_bytes()), "{} holds a secret", event.event_type);
        }
    }
}

#[tokio::test]
async fn many_tokens_stay_within_the_cache_bound() {
    let mut options = options();
    options.token_cache_capacity = 32;
    let f = fixture_with(options).await;
    let sa = f.service_account("acme", "agent").await;
    let mut all = Vec::new();
    for _ in 0..100 {
        all.push(f.identity.authenticate_service_account("acme", &sa.key_id, &sa.secret).await.unwrap());
    }
    // Evicted or not, every token still validates (evicted ones are verified again).
    for tokens in &all {
        f.identity.validate_token(tokens.access_token.expose()).await.unwrap();
    }
    assert!(format!("{:?}", f.identity).contains("cached_tokens"));
    let _ = f.clock.now_ms();
}
