//! Bootstrap: the explicit step that creates the first platform administrator.

use aesp_core::{Result, Secret, proto::v1::Principal};

use super::{
    IdentityManager, NewPrincipal, NewServiceAccount, NewUser, Outcome, events, secrets,
    service_accounts::ServiceAccountCredential, store,
};
use crate::{PLATFORM_ADMIN_ROLE, records::SYSTEM_TENANT};

/// Who the first platform administrator is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootstrapAdmin {
    /// A service account with this name (for automation and the CLI).
    ServiceAccount {
        /// Its name.
        name: String,
    },
    /// A local user with this username and a generated password.
    User {
        /// Its username.
        username: String,
    },
}

/// The first administrator's credential, shown once. `Debug` does not show the secret.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum BootstrapCredential {
    /// A service account and its API key.
    ServiceAccount(ServiceAccountCredential),
    /// A user and its generated password (32 random characters; change it after the first
    /// sign-in).
    User {
        /// The user's principal.
        principal: Principal,
        /// Its username.
        username: String,
        /// Its password.
        password: Secret,
    },
}

impl BootstrapCredential {
    /// The administrator's principal.
    pub fn principal(&self) -> &Principal {
        match self {
            BootstrapCredential::ServiceAccount(credential) => &credential.principal,
            BootstrapCredential::User { principal, .. } => principal,
        }
    }
}

impl IdentityManager {
    /// Creates the first platform administrator in the system tenant, with the
    /// `platform-admin` role, and returns its credential: the only time it is shown. There
    /// are no default credentials: until this runs, nobody can authenticate as an
    /// administrator. It runs once; a second call is `FAILED_PRECONDITION` (the marker and
    /// the principal are written in one transaction). Audited as `IDENTITY_BOOTSTRAP`.
    ///
    /// Granting the role's permissions in the policy engine is the Host's bootstrap step
    /// (`Host::bootstrap` with the returned principal id).
    pub async fn bootstrap_admin(&self, admin: BootstrapAdmin) -> Result<BootstrapCredential> {
        let marker = store::bootstrap_key();
        let details =
            |name: &str| NewPrincipal::new(name).with_role(PLATFORM_ADMIN_ROLE).with_clearance("top_secret");
        let credential = match admin {
            BootstrapAdmin::ServiceAccount { name } => {
                let new = NewServiceAccount::new(name.clone())
                    .with_description("the first platform administrator, created by bootstrap")
                    .with_principal(details(&name));
                BootstrapCredential::ServiceAccount(
                    self.create_service_account_in(SYSTEM_TENANT, new, "bootstrap", Some(&marker)).await?,
                )
            }
            BootstrapAdmin::User { username } => {
                let password = Secret::new(secrets::random_text::<24>()?);
                let new = NewUser::new(username.clone(), password.clone()).with_principal(details(&username));
                let principal = self.create_user_in(SYSTEM_TENANT, new, "bootstrap", Some(&marker)).await?;
                BootstrapCredential::User { principal, username: username.to_ascii_lowercase(), password }
            }
        };
        let principal = credential.principal();
        let event = self.event(
            events::IDENTITY_BOOTSTRAP,
            SYSTEM_TENANT,
            &principal.principal_id,
            &format!("principal:{}", principal.principal_id),
            "bootstrap",
            Outcome::Success("first platform administrator"),
        );
        self.record(&event).await?;
        Ok(credential)
    }
}
