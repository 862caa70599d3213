//! Random credentials, their hashes, and password hashing.
//!
//! - API-key secrets and refresh tokens are 256 random bits from the operating system. A
//!   guess is hopeless, so a fast hash is enough to store them: SHA-256 with a domain tag and
//!   the tenant and key id bound in (a stored hash cannot be moved to another key), compared
//!   in constant time. A slow hash would only slow down every authentication.
//! - Passwords are chosen by people, so they get argon2id ([`PasswordHashing`]) with a random
//!   salt, run on the blocking pool and limited in concurrency.

use aesp_core::{Error, ErrorCode, Result};
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::options::PasswordHashing;

/// The prefix of API-key ids (public).
pub(crate) const API_KEY_PREFIX: &str = "aesp_ak_";
/// The prefix of API-key secrets, so that secret scanners recognise a leaked one.
pub(crate) const SECRET_PREFIX: &str = "aesp_sk_";
/// The prefix of refresh tokens: `aesp_rt.<tenant>.<random>`.
pub(crate) const REFRESH_PREFIX: &str = "aesp_rt";

/// `n` random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal("the system random generator failed").with_source(e))?;
    Ok(bytes)
}

/// `N` random bytes as unpadded base64url text.
pub(crate) fn random_text<const N: usize>() -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<N>()?))
}

/// A new API key id: `aesp_ak_` and 128 random bits.
pub(crate) fn new_key_id() -> Result<String> {
    Ok(format!("{API_KEY_PREFIX}{}", random_text::<16>()?))
}

/// A new API-key secret: `aesp_sk_` and 256 random bits.
pub(crate) fn new_secret() -> Result<String> {
    Ok(format!("{SECRET_PREFIX}{}", random_text::<32>()?))
}

/// A new refresh token of `tenant`: `aesp_rt.<tenant>.` and 256 random bits. The tenant is
/// in clear so the token can be found under its tenant; it is not a secret.
pub(crate) fn new_refresh_token(tenant: &str) -> Result<String> {
    Ok(format!("{REFRESH_PREFIX}.{tenant}.{}", random_text::<32>()?))
}

/// The tenant named in a refresh token, if it has the right shape.
pub(crate) fn refresh_token_tenant(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(REFRESH_PREFIX)?.strip_prefix('.')?;
    let (tenant, random) = rest.split_once('.')?;
    let plausible =
        random.len() == 43 && random.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plausible.then_some(tenant)
}

/// The stored hash of an API-key secret: SHA-256 over a domain tag, the tenant, the key id
/// and the secret, each length-prefixed.
pub(crate) fn api_key_hash(tenant: &str, key_id: &str, secret: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"aesp api-key secret v1");
    for part in [tenant, key_id, secret] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// The SHA-256 of a refresh token, in hex (its key in the store).
pub(crate) fn refresh_token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Whether two hashes are equal, in time that does not depend on where they differ.
pub(crate) fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

fn argon2(params: PasswordHashing) -> Result<Argon2<'static>> {
    let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
        .map_err(|e| Error::new(ErrorCode::ConfigurationError, format!("invalid argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password with argon2id and a fresh 16-byte salt, as a PHC string. CPU-bound:
/// call it on the blocking pool.
pub(crate) fn hash_password(params: PasswordHashing, password: &str) -> Result<String> {
    let salt = random_bytes::<16>()?;
    let hash = argon2(params)?
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| Error::internal(format!("password hashing failed: {e}")))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `hash` (with the parameters stored in it; the
/// comparison is constant-time). A malformed stored hash is `DATA_CORRUPTED`. CPU-bound.
pub(crate) fn verify_password(hash: &str, password: &str) -> Result<bool> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| Error::corrupted(format!("a stored password hash does not parse: {e}")))?;
    Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_have_their_shapes() {
        let key = new_key_id().unwrap();
        assert!(key.starts_with(API_KEY_PREFIX) && key.len() == API_KEY_PREFIX.len() + 22);
        let secret = new_secret().unwrap();
        assert_eq!(secret.len(), SECRET_PREFIX.len() + 43);
        let refresh = new_refresh_token("acme").unwrap();
        assert_eq!(refresh_token_tenant(&refresh), Some("acme"));
        for bad in ["", "aesp_rt", "aesp_rt.acme", "aesp_rt.acme.short", "x.acme.aaaa"] {
            assert_eq!(refresh_token_tenant(bad), None, "{bad}");
        }
    }

    #[test]
    fn api_key_hashes_bind_tenant_and_key() {
        let h = api_key_hash("a", "k", "s");
        assert!(same_hash(&h, &api_key_hash("a", "k", "s")));
        assert!(!same_hash(&h, &api_key_hash("b", "k", "s")));
        assert!(!same_hash(&h, &api_key_hash("a", "k2", "s")));
        // Length prefixes: moving a character between parts changes the hash.
        assert!(!same_hash(&api_key_hash("ab", "c", "s"), &api_key_hash("a", "bc", "s")));
        assert!(!same_hash(&h, &h[..31]));
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let params = PasswordHashing::insecure_for_tests();
        let hash = hash_password(params, "correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{hash}");
        assert!(verify_password(&hash, "correct horse battery").unwrap());
        assert!(!verify_password(&hash, "correct horse batterY").unwrap());
        assert_eq!(verify_password("garbage", "x").unwrap_err().code(), ErrorCode::DataCorrupted);
        assert_ne!(hash, hash_password(params, "correct horse battery").unwrap(), "salted");
    }
}
