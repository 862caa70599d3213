//! The audit event types the Identity Manager writes (`AuditEvent.event_type`): the
//! specification's Appendix A names where it has one, and names in the same style for the
//! rest. Each event carries the tenant, the principal (the actor, or the principal that
//! authenticated), the resource, the action, the outcome and a `reason` in its metadata;
//! never a secret.

/// A principal authenticated (API key, password, refresh token); metadata `method`.
pub const AUTHENTICATION_SUCCESS: &str = "AUTHENTICATION_SUCCESS";
/// A credential was refused; metadata `method` and `reason` (`unknown_api_key`,
/// `wrong_secret`, `expired`, `inactive`, `wrong_password`, `locked`, `password_expired`,
/// `unknown_user`, `refresh_token_reused`, ...).
pub const AUTHENTICATION_FAILURE: &str = "AUTHENTICATION_FAILURE";
/// A service account was created.
pub const IDENTITY_CREATE_SERVICE_ACCOUNT: &str = "IDENTITY_CREATE_SERVICE_ACCOUNT";
/// A service account was revoked; its key and tokens stopped working.
pub const IDENTITY_REVOKE_SERVICE_ACCOUNT: &str = "IDENTITY_REVOKE_SERVICE_ACCOUNT";
/// A local user was created.
pub const IDENTITY_CREATE_USER: &str = "IDENTITY_CREATE_USER";
/// A principal without credentials (a system account, an external user) was created.
pub const IDENTITY_CREATE_PRINCIPAL: &str = "IDENTITY_CREATE_PRINCIPAL";
/// A principal was deactivated; its tokens stopped working.
pub const IDENTITY_DEACTIVATE_PRINCIPAL: &str = "IDENTITY_DEACTIVATE_PRINCIPAL";
/// A user changed its password.
pub const IDENTITY_CHANGE_PASSWORD: &str = "IDENTITY_CHANGE_PASSWORD";
/// A user was locked after repeated failures.
pub const IDENTITY_LOCK_USER: &str = "IDENTITY_LOCK_USER";
/// The first platform administrator was created.
pub const IDENTITY_BOOTSTRAP: &str = "IDENTITY_BOOTSTRAP";
/// An access token or a refresh-token family was revoked; metadata `reason`
/// (`requested`, `refresh_token_reused`).
pub const TOKEN_REVOKE: &str = "TOKEN_REVOKE";
/// The token-signing key was rotated; metadata `new_key_id`, `retired_key_id`.
pub const TOKEN_SIGNING_KEY_ROTATE: &str = "TOKEN_SIGNING_KEY_ROTATE";
