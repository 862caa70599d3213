//! [`Caller`]: who is calling the Host, as the authenticating layer established it.

use std::collections::BTreeMap;

use aesp_core::{
    Error, ErrorCode, Result,
    proto::v1::{EnterpriseSecurityContext, PrincipalType, Value},
};

use crate::records::{SYSTEM_TENANT, check_tenant_id};

/// An authenticated caller: the security context the embedding service (or, later, the
/// Host's own gateway) established, plus what policies may read about the principal.
///
/// The tenant of every operation is the caller's tenant; no request field can change it.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    context: EnterpriseSecurityContext,
    attributes: BTreeMap<String, Value>,
    source_ip: String,
}

impl Caller {
    /// A caller from an authenticated security context. The context must name a principal
    /// and a tenant (the reserved system tenant for platform administrators).
    pub fn new(context: EnterpriseSecurityContext) -> Result<Self> {
        if context.principal_id.is_empty() {
            return Err(Error::new(
                ErrorCode::AuthenticationFailed,
                "the security context names no principal",
            ));
        }
        if context.tenant_id != SYSTEM_TENANT {
            check_tenant_id(&context.tenant_id)
                .map_err(|e| Error::new(ErrorCode::AuthenticationFailed, e.message().to_owned()))?;
        }
        Ok(Self { context, attributes: BTreeMap::new(), source_ip: String::new() })
    }

    /// A caller built from parts, for embedding services and tests.
    pub fn principal(
        tenant: &str,
        principal: &str,
        principal_type: PrincipalType,
        roles: &[&str],
    ) -> Result<Self> {
        Self::new(EnterpriseSecurityContext {
            principal_id: principal.to_owned(),
            tenant_id: tenant.to_owned(),
            principal_type: principal_type as i32,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..EnterpriseSecurityContext::default()
        })
    }

    /// Sets the principal's clearance label.
    #[must_use]
    pub fn with_clearance(mut self, clearance: &str) -> Self {
        self.context.security_clearance = clearance.to_owned();
        self
    }

    /// Adds a principal attribute policies can read (`request.user.<name>`).
    #[must_use]
    pub fn with_attribute(mut self, name: &str, value: Value) -> Self {
        self.attributes.insert(name.to_owned(), value);
        self
    }

    /// Sets the address the call came from.
    #[must_use]
    pub fn with_source_ip(mut self, ip: &str) -> Self {
        ip.clone_into(&mut self.source_ip);
        self
    }

    /// The security context.
    pub fn context(&self) -> &EnterpriseSecurityContext {
        &self.context
    }

    /// The principal's id.
    pub fn principal_id(&self) -> &str {
        &self.context.principal_id
    }

    /// The caller's tenant: the tenant of everything it does.
    pub fn tenant_id(&self) -> &str {
        &self.context.tenant_id
    }

    /// Whether the caller is a platform administrator's principal (system tenant).
    pub fn is_platform(&self) -> bool {
        self.context.tenant_id == SYSTEM_TENANT
    }

    /// The principal's attributes.
    pub fn attributes(&self) -> &BTreeMap<String, Value> {
        &self.attributes
    }

    /// The source address, if known.
    pub fn source_ip(&self) -> &str {
        &self.source_ip
    }
}
