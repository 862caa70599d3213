//! The EnterpriseAuthorizationService: decisions, permission checks and roles, through the
//! policy engine's active snapshot and its RBAC.

use aesp_core::{
    Error, Result,
    proto::v1::{
        AssignRoleRequest, AssignRoleResponse, AssignRoleResult, AuthorizeActionRequest,
        AuthorizeActionResponse, AuthorizeActionResult, CheckPermissionRequest, CheckPermissionResponse,
        CheckPermissionResult, CreateRoleRequest, CreateRoleResponse, CreateRoleResult, Done,
        GetEffectivePermissionsRequest, GetEffectivePermissionsResponse, GetEffectivePermissionsResult,
        RevokeRoleRequest, RevokeRoleResponse, RoleAssignment, assign_role_response,
        authorize_action_response, check_permission_response, create_role_response,
        get_effective_permissions_response, revoke_role_response,
    },
};
use aesp_policy::{Principal, Request, Resource};

use super::{Services, catalogue::Rpc, respond};
use crate::Caller;

impl Services {
    /// AuthorizeAction: the engine's decision for a principal of the tenant on a resource and
    /// action (contract-free: RBAC and the tenant's policies), without acting; audited as
    /// `AUTHORIZATION_SUCCESS` or `AUTHORIZATION_DENIED` (with `evaluation_only`). A denial is a
    /// successful answer with `authorized` false.
    pub async fn authorize_action(
        &self,
        caller: &Caller,
        request: AuthorizeActionRequest,
    ) -> AuthorizeActionResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::AuthorizeAction, &request.tenant_id).await?;
            if request.principal_id.is_empty() || request.resource.is_empty() || request.action.is_empty() {
                return Err(Error::invalid_argument("`principal_id`, `resource` and `action` are required"));
            }
            let lifecycle = self.host.policy_lifecycle();
            let snapshot = lifecycle.active();
            let roles = snapshot.effective_roles(&tenant, &request.principal_id, &[]);
            let principal = Principal {
                id: request.principal_id.clone(),
                tenant_id: tenant.clone(),
                roles,
                ..Principal::default()
            };
            let resource =
                Resource { name: request.resource, tenant_id: tenant.clone(), ..Resource::default() };
            let policy_request = Request {
                tenant_id: tenant,
                principal,
                resource,
                action: request.action,
                time_ms: self.host.clock().now_ms(),
                params: request.context,
                ..Request::default()
            };
            let decision = lifecycle.engine().decide_with(&snapshot, &policy_request);
            let (event_type, outcome) = if decision.allowed() {
                ("AUTHORIZATION_SUCCESS", "SUCCESS")
            } else {
                ("AUTHORIZATION_DENIED", "DENIED")
            };
            let mut event = self.host.event(
                event_type,
                Some(caller),
                &policy_request.resource.name,
                &policy_request.action,
                outcome,
            );
            event.metadata.insert("subject".into(), policy_request.principal.id.clone());
            event.metadata.insert("decision_reason".into(), decision.reason().to_owned());
            event.metadata.insert("snapshot_digest".into(), snapshot.digest_hex());
            event.metadata.insert("evaluation_only".into(), "true".into());
            self.host.record(&event).await?;
            Ok(AuthorizeActionResult {
                authorized: decision.allowed(),
                decision_reason: decision.reason().to_owned(),
                applied_policies: decision.matched().iter().map(|m| m.policy_id().to_owned()).collect(),
                risk_score: decision.risk_score(),
                conditions: decision.conditions().to_vec(),
            })
        }
        .await;
        respond!(AuthorizeActionResponse, authorize_action_response, result)
    }

    /// CheckPermission: whether a principal of the tenant holds a permission through its roles.
    pub async fn check_permission(
        &self,
        caller: &Caller,
        request: CheckPermissionRequest,
    ) -> CheckPermissionResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::CheckPermission, &request.tenant_id).await?;
            let granted = self.host.policy_lifecycle().active().check_permission(
                &tenant,
                &request.principal_id,
                &[],
                &request.permission,
            );
            Ok(CheckPermissionResult { granted })
        }
        .await;
        respond!(CheckPermissionResponse, check_permission_response, result)
    }

    /// GetEffectivePermissions: a principal's roles (with inherited ones) and the permissions
    /// they grant in the tenant.
    pub async fn get_effective_permissions(
        &self,
        caller: &Caller,
        request: GetEffectivePermissionsRequest,
    ) -> GetEffectivePermissionsResponse {
        let result: Result<_> = async {
            let tenant =
                self.host.authorize_rpc(caller, Rpc::GetEffectivePermissions, &request.tenant_id).await?;
            let snapshot = self.host.policy_lifecycle().active();
            Ok(GetEffectivePermissionsResult {
                permissions: snapshot.effective_permissions(&tenant, &request.principal_id, &[]),
                roles: snapshot.effective_roles(&tenant, &request.principal_id, &[]),
            })
        }
        .await;
        respond!(GetEffectivePermissionsResponse, get_effective_permissions_response, result)
    }

    /// CreateRole: defines (or replaces) a role of the tenant.
    pub async fn create_role(&self, caller: &Caller, request: CreateRoleRequest) -> CreateRoleResponse {
        let result: Result<_> = async {
            let mut role = request.role.ok_or_else(|| Error::invalid_argument("`role` is required"))?;
            let tenant = self.host.authorize_rpc(caller, Rpc::CreateRole, &role.tenant_id).await?;
            role.tenant_id.clone_from(&tenant);
            self.host.put_role(caller, &tenant, role.clone()).await?;
            Ok(CreateRoleResult { role: Some(role) })
        }
        .await;
        respond!(CreateRoleResponse, create_role_response, result)
    }

    /// AssignRole: gives a role of the tenant to a principal of the tenant.
    pub async fn assign_role(&self, caller: &Caller, request: AssignRoleRequest) -> AssignRoleResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::AssignRole, &request.tenant_id).await?;
            if request.expires_at != 0 {
                return Err(Error::invalid_argument("role assignments with an expiry are not supported yet"));
            }
            self.host.assign_role(caller, &tenant, &request.principal_id, &request.role_id).await?;
            Ok(AssignRoleResult {
                assignment: Some(RoleAssignment {
                    principal_id: request.principal_id,
                    role_id: request.role_id,
                    tenant_id: tenant,
                    assigned_by: caller.principal_id().to_owned(),
                    assigned_at: self.host.clock().now_ms(),
                    expires_at: 0,
                }),
            })
        }
        .await;
        respond!(AssignRoleResponse, assign_role_response, result)
    }

    /// RevokeRole: takes a role of the tenant from a principal.
    pub async fn revoke_role(&self, caller: &Caller, request: RevokeRoleRequest) -> RevokeRoleResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::RevokeRole, &request.tenant_id).await?;
            self.host.revoke_role(caller, &tenant, &request.principal_id, &request.role_id).await?;
            Ok(Done {})
        }
        .await;
        respond!(RevokeRoleResponse, revoke_role_response, result)
    }
}
