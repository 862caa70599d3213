//! The identity records and where they live in the state store. Every key is under its
//! tenant (`t/<tenant>/identity/...`); host-wide records (token keys, the bootstrap marker)
//! are under the system tenant. Records are protobuf messages in their binary encoding, like
//! the rest of the Host's state; the ones below are internal (they hold hashes) and never
//! cross the wire.
//!
//! | key | record |
//! | --- | --- |
//! | `t/<tenant>/identity/principals/<principal id>` | [`Principal`](aesp_core::proto::v1::Principal) |
//! | `t/<tenant>/identity/service-accounts/<name>` | [`ServiceAccountRecord`] (the name is unique) |
//! | `t/<tenant>/identity/api-keys/<key id>` | [`ApiKeyRecord`] (SHA-256 of the secret) |
//! | `t/<tenant>/identity/users/<username>` | [`UserRecord`] (argon2id hash, failure counter) |
//! | `t/<tenant>/identity/refresh/<hex SHA-256 of the token>` | [`RefreshRecord`] |
//! | `t/<tenant>/identity/refresh-families/<family id>` | [`FamilyRecord`] |
//! | `t/<tenant>/identity/revoked-tokens/<jti>` | [`RevokedTokenRecord`] |
//! | `t/_system/identity/token-keys/<kid>` | [`TokenKeyRecord`] (public keys only) |
//! | `t/_system/identity/bootstrap` | the first administrator's principal id |

use crate::records::SYSTEM_TENANT;

/// A service account's details, under its (unique) name.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ServiceAccountRecord {
    /// The principal id.
    #[prost(string, tag = "1")]
    pub(crate) principal_id: String,
    /// The API key id (public).
    #[prost(string, tag = "2")]
    pub(crate) key_id: String,
    /// What it is for.
    #[prost(string, tag = "3")]
    pub(crate) description: String,
    /// Who created it.
    #[prost(string, tag = "4")]
    pub(crate) created_by: String,
    /// When it was revoked (Unix ms); 0 when not.
    #[prost(uint64, tag = "5")]
    pub(crate) revoked_at: u64,
}

/// An API key: the SHA-256 of its secret, never the secret.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ApiKeyRecord {
    /// The service account's principal id.
    #[prost(string, tag = "1")]
    pub(crate) principal_id: String,
    /// The service account's name.
    #[prost(string, tag = "2")]
    pub(crate) name: String,
    /// `SHA-256(domain ‖ tenant ‖ key id ‖ secret)`, 32 bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) secret_hash: Vec<u8>,
}

/// A local user's password and lockout state.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct UserRecord {
    /// The principal id.
    #[prost(string, tag = "1")]
    pub(crate) principal_id: String,
    /// The argon2id hash as a PHC string.
    #[prost(string, tag = "2")]
    pub(crate) password_hash: String,
    /// When the password was set (Unix ms).
    #[prost(uint64, tag = "3")]
    pub(crate) password_set_at: u64,
    /// When the password expires (Unix ms); 0 = never.
    #[prost(uint64, tag = "4")]
    pub(crate) password_expires_at: u64,
    /// Consecutive failed attempts since the last success or lock.
    #[prost(uint32, tag = "5")]
    pub(crate) failed_attempts: u32,
    /// Locked until this time (Unix ms); 0 = not locked.
    #[prost(uint64, tag = "6")]
    pub(crate) locked_until: u64,
}

/// One refresh token, by the hash of the token.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RefreshRecord {
    /// The family it belongs to.
    #[prost(string, tag = "1")]
    pub(crate) family_id: String,
    /// The principal it was issued to.
    #[prost(string, tag = "2")]
    pub(crate) principal_id: String,
    /// When it expires (Unix ms).
    #[prost(uint64, tag = "3")]
    pub(crate) expires_at: u64,
    /// When it was exchanged for its successor (Unix ms); 0 while it is the live one.
    #[prost(uint64, tag = "4")]
    pub(crate) rotated_at: u64,
}

/// A family of refresh tokens: one authentication and all its rotations.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FamilyRecord {
    /// The principal.
    #[prost(string, tag = "1")]
    pub(crate) principal_id: String,
    /// When the authentication that started it happened (Unix ms).
    #[prost(uint64, tag = "2")]
    pub(crate) created_at: u64,
    /// When no token of the family is valid any more (Unix ms).
    #[prost(uint64, tag = "3")]
    pub(crate) expires_at: u64,
    /// When it was revoked (Unix ms); 0 when not.
    #[prost(uint64, tag = "4")]
    pub(crate) revoked_at: u64,
    /// Why it was revoked.
    #[prost(string, tag = "5")]
    pub(crate) revoked_reason: String,
}

/// A revoked access token, kept until the token would have expired.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RevokedTokenRecord {
    /// The token's expiry (Unix ms).
    #[prost(uint64, tag = "1")]
    pub(crate) expires_at: u64,
    /// When it was revoked (Unix ms).
    #[prost(uint64, tag = "2")]
    pub(crate) revoked_at: u64,
}

/// A token-signing public key and its life.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TokenKeyRecord {
    /// The raw ed25519 public key.
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) public_key: Vec<u8>,
    /// When it started signing (Unix ms).
    #[prost(uint64, tag = "2")]
    pub(crate) activated_at: u64,
    /// When it stopped signing (Unix ms); 0 while it is the current key.
    #[prost(uint64, tag = "3")]
    pub(crate) retired_at: u64,
    /// Until when its signatures verify (Unix ms): retirement plus the access-token lifetime.
    #[prost(uint64, tag = "4")]
    pub(crate) verify_until: u64,
}

pub(crate) fn principals_prefix(tenant: &str) -> String {
    format!("t/{tenant}/identity/principals/")
}

pub(crate) fn principal_key(tenant: &str, principal: &str) -> String {
    format!("t/{tenant}/identity/principals/{principal}")
}

pub(crate) fn service_account_key(tenant: &str, name: &str) -> String {
    format!("t/{tenant}/identity/service-accounts/{name}")
}

pub(crate) fn api_key_key(tenant: &str, key_id: &str) -> String {
    format!("t/{tenant}/identity/api-keys/{key_id}")
}

pub(crate) fn user_key(tenant: &str, username: &str) -> String {
    format!("t/{tenant}/identity/users/{username}")
}

pub(crate) fn refresh_key(tenant: &str, token_hash_hex: &str) -> String {
    format!("t/{tenant}/identity/refresh/{token_hash_hex}")
}

pub(crate) fn family_key(tenant: &str, family: &str) -> String {
    format!("t/{tenant}/identity/refresh-families/{family}")
}

pub(crate) fn revoked_token_key(tenant: &str, jti: &str) -> String {
    format!("t/{tenant}/identity/revoked-tokens/{jti}")
}

pub(crate) fn token_keys_prefix() -> String {
    format!("t/{SYSTEM_TENANT}/identity/token-keys/")
}

pub(crate) fn token_key_key(kid: &str) -> String {
    format!("t/{SYSTEM_TENANT}/identity/token-keys/{kid}")
}

pub(crate) fn bootstrap_key() -> String {
    format!("t/{SYSTEM_TENANT}/identity/bootstrap")
}
