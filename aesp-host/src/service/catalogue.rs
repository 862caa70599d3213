//! The permission catalogue: the one table naming, for every RPC the Host serves, the
//! permission its caller must hold. Every service method checks it before it acts; the
//! default roles are defined in terms of it.

/// Who may call an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Anyone: the request carries its own credential (a password, an API key secret, a
    /// token). These RPCs are how a caller becomes authenticated.
    Public,
    /// An authenticated caller holding the permission, acting in its own tenant (a platform
    /// administrator may name another tenant).
    Tenant,
    /// A platform administrator (a principal of the system tenant) holding the permission.
    Platform,
}

macro_rules! catalogue {
    (@name $rpc:ident) => { stringify!($rpc) };
    (@name $rpc:ident $name:literal) => { $name };
    ($( $service:literal { $( $rpc:ident $(as $name:literal)? => $scope:ident $permission:literal, )* } )*) => {
        /// Every RPC the Host serves, named as in `proto/`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Rpc {
            $($(
                #[doc = concat!("`", $service, ".", stringify!($rpc), "`: `", $permission, "`.")]
                $rpc,
            )*)*
        }

        impl Rpc {
            /// Every RPC, in catalogue order.
            pub const ALL: &'static [Rpc] = &[$($(Rpc::$rpc,)*)*];

            /// The RPC's entry in the catalogue.
            pub fn entry(self) -> &'static Entry {
                match self {
                    $($(
                        Rpc::$rpc => &Entry {
                            service: $service,
                            rpc: catalogue!(@name $rpc $($name)?),
                            scope: Scope::$scope,
                            permission: $permission,
                        },
                    )*)*
                }
            }
        }
    };
}

/// One row of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The gRPC service (`aesp.v1.<service>`).
    pub service: &'static str,
    /// The RPC's name.
    pub rpc: &'static str,
    /// Who may call it.
    pub scope: Scope,
    /// The permission required (`resource:action`); empty for [`Scope::Public`].
    pub permission: &'static str,
}

impl Rpc {
    /// The permission the RPC requires (empty for public ones).
    pub fn permission(self) -> &'static str {
        self.entry().permission
    }

    /// `service/rpc`, as in logs and audit events.
    pub fn path(self) -> String {
        let e = self.entry();
        format!("{}/{}", e.service, e.rpc)
    }
}

catalogue! {
    "EnterpriseAuthenticationService" {
        AuthenticateUser => Public "",
        AuthenticateServiceAccount => Public "",
        ValidateToken => Public "",
        RefreshToken => Public "",
        RevokeToken => Public "",
        GetUserRoles => Tenant "aesp.identity.principals:read",
        GetUserPermissions => Tenant "aesp.identity.principals:read",
    }
    "EnterpriseAuthorizationService" {
        AuthorizeAction => Tenant "aesp.authz.decisions:evaluate",
        CheckPermission => Tenant "aesp.authz.permissions:check",
        GetEffectivePermissions => Tenant "aesp.authz.permissions:read",
        AuthzEvaluatePolicy as "EvaluatePolicy" => Tenant "aesp.policies:evaluate",
        CreateRole => Tenant "aesp.roles:write",
        AssignRole => Tenant "aesp.roles:assign",
        RevokeRole => Tenant "aesp.roles:assign",
    }
    "EnterpriseIdentityService" {
        CreateServiceAccount => Tenant "aesp.identity.serviceAccounts:create",
        ListServiceAccounts => Tenant "aesp.identity.serviceAccounts:read",
        RevokeServiceAccount => Tenant "aesp.identity.serviceAccounts:revoke",
        ListPrincipals => Tenant "aesp.identity.principals:read",
        GetPrincipalDetails => Tenant "aesp.identity.principals:read",
        UpdatePrincipalRoles => Tenant "aesp.roles:assign",
        GetPrincipalAuditTrail => Tenant "aesp.audit.events:read",
    }
    "EnterpriseAuditService" {
        LogEvent => Tenant "aesp.audit.events:write",
        QueryEvents => Tenant "aesp.audit.events:read",
        GetComplianceReport => Tenant "aesp.audit.reports:read",
        ExportAuditLogs => Tenant "aesp.audit.events:export",
        GetAuditStatistics => Tenant "aesp.audit.events:read",
        ProveDecision => Tenant "aesp.audit.decisions:prove",
        ApplyRetention => Tenant "aesp.audit.retention:apply",
        EraseAuditEvents => Tenant "aesp.audit.events:erase",
        SubscribeEvents => Tenant "aesp.audit.events:subscribe",
    }
    "EnterprisePolicyService" {
        CreatePolicy => Tenant "aesp.policies:write",
        UpdatePolicy => Tenant "aesp.policies:write",
        DeletePolicy => Tenant "aesp.policies:write",
        GetPolicy => Tenant "aesp.policies:read",
        ListPolicies => Tenant "aesp.policies:read",
        EvaluatePolicy => Tenant "aesp.policies:evaluate",
        TestPolicy => Tenant "aesp.policies:test",
        ValidatePolicy => Tenant "aesp.policies:read",
    }
    "SessionService" {
        CreateSession => Tenant "aesp.sessions:create",
        GetSession => Tenant "aesp.sessions:read",
        DestroySession => Tenant "aesp.sessions:destroy",
        ListSessions => Tenant "aesp.sessions:read",
    }
    "ContractService" {
        LoadContracts => Tenant "aesp.contracts:load",
        GetContract => Tenant "aesp.contracts:read",
        ListTools => Tenant "aesp.contracts:read",
    }
    "RuntimeService" {
        AnnounceRuntime => Tenant "aesp.runtimes:connect",
        FulfillTools => Tenant "aesp.runtimes:connect",
        Heartbeat => Tenant "aesp.runtimes:connect",
        UnregisterRuntime => Tenant "aesp.runtimes:connect",
    }
    "InvocationService" {
        InvokeTool => Tenant "aesp.tools:invoke",
        StreamTool => Tenant "aesp.tools:invoke",
    }
    "TenantService" {
        CreateTenant => Platform "aesp.tenants:create",
        GetTenant => Tenant "aesp.tenants:read",
        ListTenants => Platform "aesp.tenants:list",
        SuspendTenant => Platform "aesp.tenants:suspend",
        ResumeTenant => Platform "aesp.tenants:suspend",
        SetTenantQuotas => Platform "aesp.tenants:set_quotas",
        SetTenantAttributes => Tenant "aesp.tenants:set_attributes",
        SetTenantRetention => Tenant "aesp.tenants:set_retention",
    }
}

/// The default roles every tenant gets, least privilege, in terms of the catalogue's
/// permissions (patterns: `*` one segment, `**` any number). The platform administrator
/// (`platform-admin`, every permission) exists only in the system tenant.
pub const DEFAULT_ROLES: &[(&str, &str, &[&str])] = &[
    (
        "tenant-admin",
        "Tenant administrator: identity, roles, policies, contracts, sessions and audit of the tenant",
        &[
            "aesp.identity.**:*",
            "aesp.authz.**:*",
            "aesp.roles:*",
            "aesp.policies:*",
            "aesp.contracts:*",
            "aesp.sessions:*",
            "aesp.runtimes:*",
            "aesp.audit.**:*",
            "aesp.tenants:read",
            "aesp.tenants:set_attributes",
            "aesp.tenants:set_retention",
        ],
    ),
    (
        "auditor",
        "Auditor: reads, exports and proves the tenant's audit log; reads identities and policies",
        &[
            "aesp.audit.events:read",
            "aesp.audit.events:export",
            "aesp.audit.events:subscribe",
            "aesp.audit.reports:read",
            "aesp.audit.decisions:prove",
            "aesp.identity.principals:read",
            "aesp.identity.serviceAccounts:read",
            "aesp.authz.permissions:read",
            "aesp.policies:read",
            "aesp.tenants:read",
        ],
    ),
    (
        "developer",
        "Developer: loads contracts, drafts and tests policies, connects runtimes",
        &[
            "aesp.contracts:load",
            "aesp.contracts:read",
            "aesp.policies:write",
            "aesp.policies:read",
            "aesp.policies:test",
            "aesp.policies:evaluate",
            "aesp.runtimes:connect",
            "aesp.sessions:*",
            "aesp.tools:invoke",
        ],
    ),
    (
        "agent",
        "Agent: opens sessions, lists the tools it may use and invokes them",
        &[
            "aesp.sessions:create",
            "aesp.sessions:read",
            "aesp.sessions:destroy",
            "aesp.contracts:read",
            "aesp.tools:invoke",
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_names_a_well_formed_permission_unless_public() {
        for rpc in Rpc::ALL {
            let e = rpc.entry();
            match e.scope {
                Scope::Public => assert!(e.permission.is_empty(), "{rpc:?}"),
                _ => {
                    let (resource, action) = e.permission.rsplit_once(':').unwrap();
                    assert!(resource.starts_with("aesp.") && !action.is_empty(), "{rpc:?}");
                }
            }
        }
        assert_eq!(Rpc::ALL.len(), 59);
    }

    #[test]
    fn catalogue_doc_matches_the_code() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PERMISSIONS.md")).unwrap();
        for rpc in Rpc::ALL {
            let e = rpc.entry();
            let permission =
                if e.permission.is_empty() { "—".to_owned() } else { format!("`{}`", e.permission) };
            let row = format!("| {} | {} |", e.service, e.rpc);
            let line =
                doc.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("{row} is missing"));
            assert!(line.ends_with(&format!("| {permission} |")), "{line}");
        }
        for (role, _, permissions) in DEFAULT_ROLES {
            let line = doc.lines().find(|l| l.starts_with(&format!("| `{role}` |"))).unwrap();
            for p in *permissions {
                assert!(line.contains(&format!("`{p}`")), "{role}: {p}");
            }
        }
    }
}
