//! # aesp-host
//!
//! The AESP Host: the Tenant Manager, the Session Manager, Host-managed contracts, the
//! runtime registry and the invocation pipeline, assembled from `aesp-core`, `aesp-policy`,
//! `aesp-audit` and `aesp-store`.

mod caller;
mod contracts;
mod events;
mod host;
mod idempotency;
mod identity;
mod ids;
mod limits;
mod pipeline;
mod records;
mod runtimes;
pub mod service;
mod sessions;
mod tenants;

pub use caller::Caller;
pub use contracts::{APPROVED, CompiledContract, LoadOutcome, PENDING, REJECTED};
pub use host::{Backends, Host, HostBuilder, HostOptions, PLATFORM_ADMIN_ROLE, permissions};
pub use idempotency::IdempotencyStats;
pub use identity::{
    BUILTIN_PROVIDER, BootstrapAdmin, BootstrapCredential, IdentityManager, IdentityOptions, ListPrincipals,
    NewPrincipal, NewServiceAccount, NewUser, PasswordHashing, PrincipalPage, ServiceAccountCredential,
    Tokens, ValidatedToken, events as identity_events,
};
pub use pipeline::INVOKE_ACTION;
pub use records::{SYSTEM_TENANT, check_tenant_id};
pub use runtimes::{Fulfilment, InProcessRuntime, RuntimeEntry, RuntimePermit, ToolHandler, handler_fn};
pub use sessions::{ActiveInvocation, NewSession, SessionEntry, SessionOptions};
