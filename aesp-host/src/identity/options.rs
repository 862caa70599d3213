//! [`IdentityOptions`]: token lifetimes, lockout, password rules and the argon2 cost.

use std::time::Duration;

/// The cost of the argon2id password hash.
///
/// The default is the OWASP recommendation for argon2id (password storage cheat sheet):
/// 19 MiB of memory, 2 passes, 1 lane, a 16-byte random salt and a 32-byte output, in the
/// PHC string format (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`). About 20–40 ms of one
/// core per hash on the machines this was measured on. The parameters are stored inside each
/// hash, so raising them later does not break existing passwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PasswordHashing {
    /// Memory in KiB (at least 8).
    pub memory_kib: u32,
    /// Passes over the memory (at least 1).
    pub iterations: u32,
    /// Lanes (at least 1).
    pub parallelism: u32,
}

impl Default for PasswordHashing {
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

impl PasswordHashing {
    /// The cheapest parameters argon2 accepts (8 KiB, 1 pass). **For tests only**: they
    /// offer no resistance to guessing.
    pub fn insecure_for_tests() -> Self {
        Self { memory_kib: 8, iterations: 1, parallelism: 1 }
    }
}

/// How the [`IdentityManager`](super::IdentityManager) issues tokens and treats passwords.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdentityOptions {
    /// The `iss` claim of access tokens (default `aesp`); tokens of another issuer are refused.
    pub issuer: String,
    /// The `aud` claim of access tokens (default `aesp`); tokens for another audience are
    /// refused.
    pub audience: String,
    /// How long an access token is valid (default 15 minutes). It is also how long a retired
    /// signing key keeps verifying after a rotation.
    pub access_token_ttl: Duration,
    /// How long one refresh token is valid (default 24 hours); every refresh gives a new one.
    pub refresh_token_ttl: Duration,
    /// How long a family of refresh tokens lives from the authentication that started it, however
    /// often it is refreshed (default 30 days).
    pub refresh_family_ttl: Duration,
    /// The most verified access tokens kept in memory (default 100 000). When full, expired
    /// entries go first, then an arbitrary eighth of a shard.
    pub token_cache_capacity: usize,
    /// Consecutive wrong passwords that lock a user (default 5; 0 disables lockout).
    pub lockout_threshold: u32,
    /// How long a locked user stays locked (default 15 minutes).
    pub lockout_duration: Duration,
    /// How long a password is valid from when it was set (default 90 days; zero: forever).
    pub password_max_age: Duration,
    /// The shortest password accepted, in characters (default 12).
    pub password_min_length: usize,
    /// The argon2id cost.
    pub password_hashing: PasswordHashing,
    /// How many password hashes may run at once (default 2); each takes
    /// [`PasswordHashing::memory_kib`] of memory and a core for tens of milliseconds.
    pub max_concurrent_password_hashes: usize,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        Self {
            issuer: "aesp".to_owned(),
            audience: "aesp".to_owned(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(24 * 3600),
            refresh_family_ttl: Duration::from_secs(30 * 24 * 3600),
            token_cache_capacity: 100_000,
            lockout_threshold: 5,
            lockout_duration: Duration::from_secs(15 * 60),
            password_max_age: Duration::from_secs(90 * 24 * 3600),
            password_min_length: 12,
            password_hashing: PasswordHashing::default(),
            max_concurrent_password_hashes: 2,
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
