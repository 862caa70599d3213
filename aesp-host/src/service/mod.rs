//! The Host's typed service layer: every RPC of `proto/` the Host serves, as an async method
//! taking the caller's authenticated context and the protocol's request, and returning the
//! protocol's response. This is what the gRPC gateway, an embedding Rust service and the
//! quickstart all call.
//!
//! Every method first checks the [permission catalogue](catalogue): the tenant it acts in
//! is the caller's own, unless a platform administrator names another (anyone else naming
//! another tenant is refused with `TENANT_ACCESS_DENIED`, audited); then the caller must hold
//! the RPC's permission (`INSUFFICIENT_PERMISSIONS`, audited). Failures are returned in the
//! response's `error` arm as an `EnterpriseError` with a stable code.

mod audit;
mod authz;
pub mod catalogue;
mod hosting;
mod identity;
mod policy;

use aesp_core::{Error, ErrorCode, Result};

pub use audit::TenantSubscription;
use catalogue::{Rpc, Scope};

use crate::{Caller, Host};

/// The service layer of a [`Host`]; see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Services {
    host: Host,
}

impl Host {
    /// The typed service layer over this Host.
    pub fn services(&self) -> Services {
        Services { host: self.clone() }
    }

    /// Checks that `caller` may call `rpc` acting in the tenant `requested` names (empty: the
    /// caller's own); returns that tenant. Refusals are audited.
    pub(crate) async fn authorize_rpc(&self, caller: &Caller, rpc: Rpc, requested: &str) -> Result<String> {
        let entry = rpc.entry();
        let tenant = if requested.is_empty() || requested == caller.tenant_id() {
            caller.tenant_id().to_owned()
        } else if caller.is_platform() {
            crate::check_tenant_id(requested)?;
            requested.to_owned()
        } else {
            return Err(self.cross_tenant_refusal(caller, &format!("tenant:{requested}")).await);
        };
        // A suspended tenant's principals are refused everything (audited).
        if entry.scope != Scope::Public && !caller.is_platform() {
            self.active_tenant(caller).await?;
        }
        let resource = format!("rpc:{}", rpc.path());
        match entry.scope {
            Scope::Public => {}
            Scope::Platform if !caller.is_platform() => {
                let mut event =
                    self.event("AUTHORIZATION_DENIED", Some(caller), &resource, entry.permission, "DENIED");
                event.metadata.insert("reason".into(), "platform administrators only".into());
                self.record(&event).await?;
                return Err(Error::new(
                    ErrorCode::InsufficientPermissions,
                    format!("{} is for platform administrators", entry.rpc),
                )
                .with_tenant(caller.tenant_id())
                .with_principal(caller.principal_id()));
            }
            Scope::Tenant | Scope::Platform => self.require(caller, entry.permission, &resource).await?,
        }
        Ok(tenant)
    }
}

impl Host {
    /// The ids of every tenant.
    pub(crate) fn tenant_ids(&self) -> Vec<String> {
        self.inner.tenants.list().iter().map(|t| t.tenant_id.clone()).collect()
    }

    /// A tenant's record, whatever its status.
    pub(crate) fn tenant_record(&self, tenant: &str) -> Result<std::sync::Arc<aesp_core::proto::v1::Tenant>> {
        self.inner.tenants.get(tenant).ok_or_else(|| Error::not_found(format!("no tenant `{tenant}`")))
    }
}

/// A response whose `oneof response_type` has an `error` arm.
pub(crate) trait ErrorResponse {
    /// The response carrying `error`.
    fn error(error: Error) -> Self;
}

/// Implements [`ErrorResponse`] for response types: `Type => oneof_module`.
macro_rules! error_responses {
    ($($response:ident => $module:ident),* $(,)?) => {
        $(
            impl ErrorResponse for aesp_core::proto::v1::$response {
                fn error(error: Error) -> Self {
                    Self {
                        response_type: Some(aesp_core::proto::v1::$module::ResponseType::Error(
                            error.to_enterprise_error(),
                        )),
                    }
                }
            }
        )*
    };
}

error_responses! {
    CreatePolicyResponse => create_policy_response,
    UpdatePolicyResponse => update_policy_response,
    DeletePolicyResponse => delete_policy_response,
    GetPolicyResponse => get_policy_response,
    ListPoliciesResponse => list_policies_response,
    EvaluatePolicyResponse => evaluate_policy_response,
    TestPolicyResponse => test_policy_response,
    ValidatePolicyResponse => validate_policy_response,
}

/// Builds a `oneof response_type { success; error }` response from a result.
macro_rules! respond {
    ($response:ident, $module:ident, $result:expr) => {
        match $result {
            Ok(success) => $response { response_type: Some($module::ResponseType::Success(success)) },
            Err(error) => {
                $response { response_type: Some($module::ResponseType::Error(error.to_enterprise_error())) }
            }
        }
    };
}
pub(crate) use respond;
