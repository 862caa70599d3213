//! Local users: a username and an argon2id-hashed password, lockout after consecutive
//! failures, password expiry.

use aesp_core::{
    Error, ErrorCode, Result, Secret, Txn,
    proto::v1::{Principal, PrincipalType},
};
use prost::Message as _;

use super::{
    Checked, IdentityManager, NewPrincipal, Outcome, check_tenant, events, invalid_credentials,
    options::ms,
    secrets, shown,
    store::{self, UserRecord},
    tokens::Tokens,
};
use crate::records::{Stored, check_name, read};

/// The longest password accepted, in bytes (argon2 takes any length; this bounds the work).
const MAX_PASSWORD_BYTES: usize = 1024;

/// What a new local user is. `Debug` does not show the password.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewUser {
    /// The login name, unique within the tenant; compared in lowercase.
    pub username: String,
    /// The initial password.
    pub password: Secret,
    /// Display name, e-mail, roles, permissions, clearance, attributes, expiry.
    pub principal: NewPrincipal,
}

impl NewUser {
    /// A user `username` with `password`; its display name is the username.
    pub fn new(username: impl Into<String>, password: Secret) -> Self {
        let username = username.into();
        Self { principal: NewPrincipal::new(username.clone()), username, password }
    }

    /// Sets its display name, roles, permissions, clearance, attributes and expiry.
    #[must_use]
    pub fn with_principal(mut self, principal: NewPrincipal) -> Self {
        self.principal = principal;
        self
    }
}

fn normalise(username: &str) -> String {
    username.to_ascii_lowercase()
}

fn locked() -> Error {
    Error::new(ErrorCode::AccountLocked, "the account is locked after repeated failed sign-ins")
        .with_remediation("wait for the lock to expire or ask an administrator")
}

fn password_expired() -> Error {
    Error::new(ErrorCode::PasswordExpired, "the password has expired")
        .with_remediation("change the password, then sign in with the new one")
}

impl IdentityManager {
    fn check_new_password(&self, password: &Secret) -> Result<()> {
        let text = password.expose();
        if text.chars().count() < self.options.password_min_length {
            return Err(Error::invalid_argument(format!(
                "a password has at least {} characters",
                self.options.password_min_length
            )));
        }
        if text.len() > MAX_PASSWORD_BYTES {
            return Err(Error::invalid_argument(format!(
                "a password has at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Runs argon2 on the blocking pool, at most `max_concurrent_password_hashes` at once.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .password_permits
            .acquire()
            .await
            .map_err(|e| Error::unavailable("password hashing is shut down").with_source(e))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::internal("the password hashing task failed").with_source(e))?
    }

    /// A new user record for `password`, set now.
    async fn password_record(&self, principal_id: &str, password: &Secret) -> Result<UserRecord> {
        let hashing = self.options.password_hashing;
        let text = password.expose().to_owned();
        let password_hash = self.blocking(move || secrets::hash_password(hashing, &text)).await?;
        let now = self.now();
        let max_age = ms(self.options.password_max_age);
        Ok(UserRecord {
            principal_id: principal_id.to_owned(),
            password_hash,
            password_set_at: now,
            password_expires_at: if max_age == 0 { 0 } else { now.saturating_add(max_age) },
            failed_attempts: 0,
            locked_until: 0,
        })
    }

    /// Creates a local user in `tenant`. `ALREADY_EXISTS` if the username is taken;
    /// `INVALID_ARGUMENT` if the password is shorter than
    /// [`password_min_length`](super::IdentityOptions::password_min_length).
    pub async fn create_user(&self, tenant: &str, new: NewUser, actor: &str) -> Result<Principal> {
        self.create_user_in(tenant, new, actor, None).await
    }

    /// Creates a user; with `marker`, only if that key is absent (bootstrap).
    pub(crate) async fn create_user_in(
        &self,
        tenant: &str,
        new: NewUser,
        actor: &str,
        marker: Option<&str>,
    ) -> Result<Principal> {
        check_tenant(tenant)?;
        let username = normalise(&new.username);
        check_name("username", &username)?;
        self.check_new_password(&new.password)?;
        new.principal.check()?;
        let id = aesp_core::new_id(self.clock.as_ref());
        let record = self.password_record(&id, &new.password).await?;
        let principal = new.principal.into_principal(tenant, &id, PrincipalType::User, self.now());
        let user_key = store::user_key(tenant, &username);
        let mut txn = Txn::new()
            .if_absent(user_key.clone())
            .put(user_key, record.encode_to_vec())
            .put(store::principal_key(tenant, &id), principal.encode_to_vec());
        if let Some(marker) = marker {
            txn = txn.if_absent(marker).put(marker, id.as_bytes().to_vec());
        }
        if let aesp_core::TxnOutcome::CompareFailed { index, .. } = self.state.txn(txn).await? {
            return Err(if index == 0 {
                Error::new(ErrorCode::AlreadyExists, format!("user `{username}` exists already"))
            } else {
                Error::new(
                    ErrorCode::FailedPrecondition,
                    "the Host is bootstrapped already; bootstrap runs once",
                )
            });
        }
        let mut event = self.event(
            events::IDENTITY_CREATE_USER,
            tenant,
            actor,
            &format!("user:{id}"),
            "create",
            Outcome::Success(""),
        );
        event.metadata.insert("username".into(), username);
        self.record(&event).await?;
        Ok(principal)
    }

    /// Authenticates a local user of `tenant` and issues an access and a refresh token.
    ///
    /// - An unknown user, a wrong password or an inactive or expired account answer
    ///   `INVALID_CREDENTIALS` without saying which (an unknown user costs the same argon2
    ///   time as a known one).
    /// - [`lockout_threshold`](super::IdentityOptions::lockout_threshold) consecutive wrong
    ///   passwords lock the account for
    ///   [`lockout_duration`](super::IdentityOptions::lockout_duration): `ACCOUNT_LOCKED`,
    ///   without checking the password, until then. A success resets the count.
    /// - A right password past its expiry is `PASSWORD_EXPIRED`: change it with
    ///   [`change_password`](Self::change_password).
    ///
    /// Every outcome is audited, with the reason of a refusal.
    pub async fn authenticate_user(&self, tenant: &str, username: &str, password: &Secret) -> Result<Tokens> {
        let principal = self.check_password(tenant, username, password, false).await?;
        self.issue(&principal, "password", &format!("user:{}", principal.principal_id)).await
    }

    /// Changes a user's password, given the current one (also when the current one has
    /// expired, but not while the account is locked; a wrong current password counts
    /// towards the lockout). Existing tokens stay valid until they expire.
    pub async fn change_password(
        &self,
        tenant: &str,
        username: &str,
        current: &Secret,
        new: &Secret,
    ) -> Result<()> {
        self.check_new_password(new)?;
        if new == current {
            return Err(Error::invalid_argument("the new password must differ from the current one"));
        }
        let principal = self.check_password(tenant, username, current, true).await?;
        let username = normalise(username);
        let key = store::user_key(tenant, &username);
        let record = self.password_record(&principal.principal_id, new).await?;
        for _ in 0..8 {
            let Some(stored) = read::<UserRecord>(self.state.as_ref(), &key).await? else {
                return Err(invalid_credentials());
            };
            let txn =
                Txn::new().if_revision(key.clone(), stored.revision).put(key.clone(), record.encode_to_vec());
            if self.state.txn(txn).await?.committed() {
                let event = self.event(
                    events::IDENTITY_CHANGE_PASSWORD,
                    tenant,
                    &principal.principal_id,
                    &format!("user:{}", principal.principal_id),
                    "change_password",
                    Outcome::Success(""),
                );
                return self.record(&event).await;
            }
        }
        Err(Error::new(ErrorCode::Conflict, "the user keeps changing; retry"))
    }

    /// Checks a username and password, keeps the lockout counters, audits refusals.
    pub(crate) async fn check_password(
        &self,
        tenant: &str,
        username: &str,
        password: &Secret,
        allow_expired: bool,
    ) -> Result<Principal> {
        let username = normalise(username);
        let resource = format!("user:{}", shown(&username));
        let refuse = |reason: &'static str, principal: &str, error: Error| {
            let event_tenant = if check_tenant(tenant).is_ok() { tenant.to_owned() } else { String::new() };
            let mut event = self.event(
                events::AUTHENTICATION_FAILURE,
                &event_tenant,
                principal,
                &resource,
                "authenticate",
                Outcome::Failure(reason),
            );
            event.metadata.insert("method".into(), "password".into());
            async move {
                // The caller is refused whether or not the refusal could be recorded.
                let _ = self.record(&event).await;
                Err(error)
            }
        };
        let key = store::user_key(tenant, &username);
        let stored = if check_tenant(tenant).is_ok() && check_name("username", &username).is_ok() {
            read::<UserRecord>(self.state.as_ref(), &key).await?
        } else {
            None
        };
        let Some(stored) = stored else {
            let decoy = self.decoy_password_hash.clone();
            let text = password.expose().to_owned();
            let _ = self.blocking(move || secrets::verify_password(&decoy, &text)).await;
            return refuse("unknown_user", "", invalid_credentials()).await;
        };
        let principal_id = stored.value.principal_id.clone();
        let now = self.now();
        if now < stored.value.locked_until {
            return refuse("locked", &principal_id, locked()).await;
        }
        let hash = stored.value.password_hash.clone();
        let text = password.expose().to_owned();
        if !self.blocking(move || secrets::verify_password(&hash, &text)).await? {
            let locked_now = self.count_failure(&key, stored).await?;
            if locked_now {
                let event = self.event(
                    events::IDENTITY_LOCK_USER,
                    tenant,
                    &principal_id,
                    &resource,
                    "lock",
                    Outcome::Success("too_many_failed_attempts"),
                );
                self.record(&event).await?;
                return refuse("wrong_password", &principal_id, locked()).await;
            }
            return refuse("wrong_password", &principal_id, invalid_credentials()).await;
        }
        let password_expires_at = stored.value.password_expires_at;
        if stored.value.failed_attempts != 0 || stored.value.locked_until != 0 {
            self.reset_failures(&key, stored).await?;
        }
        let principal = match self.principal_record(tenant, &principal_id).await? {
            Some(principal) => Checked::of(principal.value, now),
            None => Checked::refused("unknown_principal", &principal_id),
        };
        let principal = match principal {
            Checked::Accepted(principal) => *principal,
            Checked::Refused { reason, principal_id } => {
                return refuse(reason, &principal_id, invalid_credentials()).await;
            }
        };
        if !allow_expired && password_expires_at != 0 && now >= password_expires_at {
            return refuse("password_expired", &principal_id, password_expired()).await;
        }
        Ok(principal)
    }

    /// Counts a failed attempt (compare-and-set, retried); whether it locked the account.
    async fn count_failure(&self, key: &str, mut stored: Stored<UserRecord>) -> Result<bool> {
        for _ in 0..8 {
            let now = self.now();
            let mut record = stored.value.clone();
            if now < record.locked_until {
                return Ok(false);
            }
            record.failed_attempts = record.failed_attempts.saturating_add(1);
            let threshold = self.options.lockout_threshold;
            let locks = threshold != 0 && record.failed_attempts >= threshold;
            if locks {
                record.failed_attempts = 0;
                record.locked_until = now.saturating_add(ms(self.options.lockout_duration));
            }
            let txn = Txn::new().if_revision(key, stored.revision).put(key, record.encode_to_vec());
            if self.state.txn(txn).await?.committed() {
                return Ok(locks);
            }
            stored = read::<UserRecord>(self.state.as_ref(), key).await?.ok_or_else(invalid_credentials)?;
        }
        Err(Error::new(ErrorCode::Conflict, "the user keeps changing; retry"))
    }

    /// Clears the failure count and an expired lock after a success.
    async fn reset_failures(&self, key: &str, mut stored: Stored<UserRecord>) -> Result<()> {
        for _ in 0..8 {
            let mut record = stored.value.clone();
            record.failed_attempts = 0;
            record.locked_until = 0;
            let txn = Txn::new().if_revision(key, stored.revision).put(key, record.encode_to_vec());
            if self.state.txn(txn).await?.committed() {
                return Ok(());
            }
            stored = read::<UserRecord>(self.state.as_ref(), key).await?.ok_or_else(invalid_credentials)?;
        }
        Err(Error::new(ErrorCode::Conflict, "the user keeps changing; retry"))
    }
}
