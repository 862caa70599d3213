//! The EnterpriseAuthenticationService and the EnterpriseIdentityService, over the Host's
//! [`IdentityManager`](crate::IdentityManager). Roles are the policy engine's RBAC
//! assignments (so a revoked role stops granting at once); tokens carry only the permissions
//! granted to a principal directly.

use aesp_audit::{AuditFilter, AuditQuery};
use aesp_core::{
    Error, ErrorCode, Result, Secret,
    proto::v1::{
        AuthenticateServiceAccountRequest, AuthenticateServiceAccountResponse, AuthenticateUserRequest,
        AuthenticateUserResponse, CreateServiceAccountRequest, CreateServiceAccountResponse,
        CreateServiceAccountResult, Done, GetPrincipalAuditTrailRequest, GetPrincipalAuditTrailResponse,
        GetPrincipalAuditTrailResult, GetPrincipalDetailsRequest, GetPrincipalDetailsResponse,
        GetPrincipalDetailsResult, GetUserPermissionsRequest, GetUserPermissionsResponse,
        GetUserPermissionsResult, GetUserRolesRequest, GetUserRolesResponse, GetUserRolesResult,
        ListPrincipalsRequest, ListPrincipalsResponse, ListPrincipalsResult, ListServiceAccountsRequest,
        ListServiceAccountsResponse, ListServiceAccountsResult, PrincipalAuditSummary, PrincipalType,
        RefreshTokenRequest, RefreshTokenResponse, RevokeServiceAccountRequest, RevokeServiceAccountResponse,
        RevokeTokenRequest, RevokeTokenResponse, UpdatePrincipalRolesRequest, UpdatePrincipalRolesResponse,
        UpdatePrincipalRolesResult, ValidateTokenRequest, ValidateTokenResponse, ValidateTokenResult,
        authenticate_service_account_response, authenticate_user_request, authenticate_user_response,
        create_service_account_response, get_principal_audit_trail_response, get_principal_details_response,
        get_user_permissions_response, get_user_roles_response, list_principals_response,
        list_service_accounts_response, refresh_token_response, revoke_service_account_response,
        revoke_token_response, update_principal_roles_response, validate_token_response,
    },
};

use aesp_core::proto::v1::Value;
use aesp_policy::AttributeType;

use super::{Services, catalogue::Rpc, respond};
use crate::{Caller, Host, ListPrincipals, NewPrincipal, NewServiceAccount};

impl Host {
    /// The caller a bearer access token stands for: the token is validated (cached until
    /// its expiry; revocation reaches the cache) and its security context becomes the caller.
    ///
    /// The principal's attributes (carried as strings in the token) become typed attributes
    /// policies read as `request.user.<name>`, by the type the policy schema declares; one that
    /// does not parse as its declared type is left out (a policy reading it fails closed).
    pub async fn authenticate(&self, access_token: &str) -> Result<Caller> {
        let validated = self.identity().validate_token(access_token).await?;
        let mut caller = Caller::new(validated.context.clone())?;
        let schema = &self.inner.options.policy_schema;
        for (name, text) in &validated.context.claims {
            let value = match schema.principal_attribute(name) {
                Some(AttributeType::Bool) => text.parse().ok().map(Value::boolean),
                Some(AttributeType::Int) => text.parse().ok().map(Value::integer),
                Some(AttributeType::Double) => text.parse().ok().map(Value::float),
                Some(AttributeType::String | AttributeType::Dyn) | None => Some(Value::string(text.clone())),
                Some(_) => None,
            };
            if let Some(value) = value {
                caller = caller.with_attribute(name, value);
            }
        }
        Ok(caller)
    }
}

impl Services {
    /// AuthenticateUser: a local user's username and password in a tenant → tokens. Other
    /// credentials (SAML, OAuth, certificates) are for identity providers not configured
    /// here: `UNIMPLEMENTED`.
    pub async fn authenticate_user(&self, request: AuthenticateUserRequest) -> AuthenticateUserResponse {
        use authenticate_user_response::ResponseType;
        let result: Result<_> = async {
            match request.credential {
                Some(authenticate_user_request::Credential::UsernamePassword(c)) => {
                    let password = Secret::new(c.password);
                    self.host.identity().authenticate_user(&request.tenant_id, &c.username, &password).await
                }
                Some(_) => Err(Error::new(
                    ErrorCode::Unimplemented,
                    "only username and password are accepted here; SAML, OAuth and certificates need an identity provider",
                )),
                None => Err(Error::invalid_argument("a credential is required")),
            }
        }
        .await;
        AuthenticateUserResponse {
            response_type: Some(match result {
                Ok(tokens) => ResponseType::SuccessDetails(tokens.to_proto()),
                Err(e) => ResponseType::Error(e.to_enterprise_error()),
            }),
        }
    }

    /// AuthenticateServiceAccount: an API key id and secret in a tenant → tokens.
    pub async fn authenticate_service_account(
        &self,
        request: AuthenticateServiceAccountRequest,
    ) -> AuthenticateServiceAccountResponse {
        let secret = Secret::new(request.secret);
        let result = self
            .host
            .identity()
            .authenticate_service_account(&request.tenant_id, &request.api_key, &secret)
            .await
            .map(|tokens| tokens.to_proto());
        respond!(AuthenticateServiceAccountResponse, authenticate_service_account_response, result)
    }

    /// ValidateToken: whether an access token is valid, and its security context. An invalid
    /// token is a successful answer with `valid` false and the reason's code.
    pub async fn validate_token(&self, request: ValidateTokenRequest) -> ValidateTokenResponse {
        let result: Result<_> = Ok(match self.host.identity().validate_token(&request.token).await {
            Ok(v) => ValidateTokenResult {
                valid: true,
                security_context: Some(v.context.clone()),
                expires_at: v.expires_at_ms,
                reason: String::new(),
            },
            Err(e) => {
                ValidateTokenResult { valid: false, reason: e.code_str().to_owned(), ..Default::default() }
            }
        });
        respond!(ValidateTokenResponse, validate_token_response, result)
    }

    /// RefreshToken: a refresh token → new tokens; the refresh token rotates, and presenting
    /// a rotated one revokes its whole family.
    pub async fn refresh_token(&self, request: RefreshTokenRequest) -> RefreshTokenResponse {
        let secret = Secret::new(request.refresh_token);
        let result = self.host.identity().refresh(&secret).await.map(|tokens| tokens.to_proto());
        respond!(RefreshTokenResponse, refresh_token_response, result)
    }

    /// RevokeToken: an access or refresh token revokes itself (holding it is the authority).
    pub async fn revoke_token(&self, request: RevokeTokenRequest) -> RevokeTokenResponse {
        let secret = Secret::new(request.token);
        let result = self.host.identity().revoke_token(&secret, "token-holder").await.map(|()| Done {});
        respond!(RevokeTokenResponse, revoke_token_response, result)
    }

    /// GetUserRoles: a principal's roles in the tenant (with inherited ones when asked).
    pub async fn get_user_roles(
        &self,
        caller: &Caller,
        request: GetUserRolesRequest,
    ) -> GetUserRolesResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::GetUserRoles, &request.tenant_id).await?;
            let principal = self.host.identity().get_principal(&tenant, &request.principal_id).await?;
            let snapshot = self.host.policy_lifecycle().active();
            let roles = if request.include_inherited {
                snapshot.effective_roles(&tenant, &principal.principal_id, &principal.roles)
            } else {
                self.host.assigned_roles(&tenant, &principal.principal_id, &principal.roles).await?
            };
            Ok(GetUserRolesResult { roles })
        }
        .await;
        respond!(GetUserRolesResponse, get_user_roles_response, result)
    }

    /// GetUserPermissions: the permissions a principal's roles grant in the tenant, with the
    /// ones granted to it directly.
    pub async fn get_user_permissions(
        &self,
        caller: &Caller,
        request: GetUserPermissionsRequest,
    ) -> GetUserPermissionsResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::GetUserPermissions, &request.tenant_id).await?;
            let principal = self.host.identity().get_principal(&tenant, &request.principal_id).await?;
            let snapshot = self.host.policy_lifecycle().active();
            let mut permissions =
                snapshot.effective_permissions(&tenant, &principal.principal_id, &principal.roles);
            permissions.extend(principal.permissions);
            permissions.sort();
            permissions.dedup();
            Ok(GetUserPermissionsResult { permissions })
        }
        .await;
        respond!(GetUserPermissionsResponse, get_user_permissions_response, result)
    }

    /// CreateServiceAccount: a service account of the tenant with an API key whose secret is
    /// returned here once. Its roles are assigned through RBAC (`aesp.roles:assign` needed);
    /// the caller cannot grant more than it holds: every permission its roles grant, every
    /// permission granted directly, and its clearance must be the caller's own.
    pub async fn create_service_account(
        &self,
        caller: &Caller,
        request: CreateServiceAccountRequest,
    ) -> CreateServiceAccountResponse {
        let result: Result<_> = async {
            let tenant =
                self.host.authorize_rpc(caller, Rpc::CreateServiceAccount, &request.tenant_id).await?;
            for permission in &request.permissions {
                self.host.require(caller, permission, "identity:service_account").await?;
            }
            if !request.roles.is_empty() {
                self.host
                    .require(caller, crate::permissions::ROLES_ASSIGN, "identity:service_account")
                    .await?;
                // No more than the caller holds: every permission the roles grant.
                let snapshot = self.host.policy_lifecycle().active();
                for permission in snapshot.effective_permissions(&tenant, "", &request.roles) {
                    self.host.require(caller, &permission, "identity:service_account").await?;
                }
            }
            if !request.security_clearance.is_empty() && !caller.is_platform() {
                let labels = self.host.inner.options.engine.labels();
                let own = caller.context().security_clearance.as_str();
                if !labels.dominates(own, &request.security_clearance).unwrap_or(false) {
                    return Err(Error::new(
                        ErrorCode::SecurityClearanceInsufficient,
                        "a service account's clearance cannot exceed its creator's",
                    ));
                }
            }
            let mut principal = NewPrincipal::new(request.name.clone())
                .with_expiry(request.expires_at)
                .with_clearance(request.security_clearance);
            principal.permissions = request.permissions;
            principal.attributes = request.metadata;
            let account = NewServiceAccount::new(request.name)
                .with_description(request.description)
                .with_principal(principal);
            let credential =
                self.host.identity().create_service_account(&tenant, account, caller.principal_id()).await?;
            let id = credential.principal.principal_id.clone();
            for role in &request.roles {
                self.host.assign_role(caller, &tenant, &id, role).await?;
            }
            Ok(CreateServiceAccountResult {
                service_account_id: id,
                api_key: credential.key_id,
                secret: credential.secret.expose().to_owned(),
                created_at: credential.principal.created_at,
                expires_at: credential.principal.expires_at,
            })
        }
        .await;
        respond!(CreateServiceAccountResponse, create_service_account_response, result)
    }

    /// ListServiceAccounts: the tenant's service accounts, a page at a time.
    pub async fn list_service_accounts(
        &self,
        caller: &Caller,
        request: ListServiceAccountsRequest,
    ) -> ListServiceAccountsResponse {
        let result: Result<_> = async {
            let tenant =
                self.host.authorize_rpc(caller, Rpc::ListServiceAccounts, &request.tenant_id).await?;
            let mut list =
                ListPrincipals::new().of_type(PrincipalType::ServiceAccount).limit(request.limit as usize);
            if request.include_inactive {
                list = list.include_inactive();
            }
            if !request.cursor.is_empty() {
                list = list.after(request.cursor);
            }
            let page = self.host.identity().list_principals(&tenant, &list).await?;
            let mut service_accounts = Vec::with_capacity(page.principals.len());
            for p in &page.principals {
                service_accounts
                    .push(self.host.identity().get_service_account(&tenant, &p.principal_id).await?);
            }
            Ok(ListServiceAccountsResult { service_accounts, next_cursor: page.next_cursor })
        }
        .await;
        respond!(ListServiceAccountsResponse, list_service_accounts_response, result)
    }

    /// RevokeServiceAccount: its API key and every token issued to it stop working at once.
    pub async fn revoke_service_account(
        &self,
        caller: &Caller,
        request: RevokeServiceAccountRequest,
    ) -> RevokeServiceAccountResponse {
        let result: Result<_> = async {
            let tenant =
                self.host.authorize_rpc(caller, Rpc::RevokeServiceAccount, &request.tenant_id).await?;
            self.host
                .identity()
                .revoke_service_account(
                    &tenant,
                    &request.service_account_id,
                    &request.reason,
                    caller.principal_id(),
                )
                .await?;
            Ok(Done {})
        }
        .await;
        respond!(RevokeServiceAccountResponse, revoke_service_account_response, result)
    }

    /// ListPrincipals: the tenant's principals, a page at a time.
    pub async fn list_principals(
        &self,
        caller: &Caller,
        request: ListPrincipalsRequest,
    ) -> ListPrincipalsResponse {
        let result: Result<_> = async {
            let tenant = self.host.authorize_rpc(caller, Rpc::ListPrincipals, &request.tenant_id).await?;
            let mut list = ListPrincipals::new().limit(request.limit as usize);
            if let Ok(kind) = PrincipalType::try_from(request.principal_type)
                && kind != PrincipalType::Unspecified
            {
                list = list.of_type(kind);
            }
            if request.include_inactive {
                list = list.include_inactive();
            }
            if !request.cursor.is_empty() {
                list = list.after(request.cursor);
            }
            let page = self.host.identity().list_principals(&tenant, &list).await?;
            Ok(ListPrincipalsResult { principals: page.principals, next_cursor: page.next_cursor })
        }
        .await;
        respond!(ListPrincipalsResponse, list_principals_response, result)
    }

    /// GetPrincipalDetails: a principal of the tenant, with its effective roles and
    /// permissions and a summary of its audit events when asked.
    pub async fn get_principal_details(
        &self,
        caller: &Caller,
        request: GetPrincipalDetailsRequest,
    ) -> GetPrincipalDetailsResponse {
        let result: Result<_> = async {
            let tenant =
                self.host.authorize_rpc(caller, Rpc::GetPrincipalDetails, &request.tenant_id).await?;
            let mut principal = self.host.identity().get_principal(&tenant, &request.principal_id).await?;
            if request.include_permissions {
                let snapshot = self.host.policy_lifecycle().active();
                let roles = snapshot.effective_roles(&tenant, &principal.principal_id, &principal.roles);
                let mut permissions =
                    snapshot.effective_permissions(&tenant, &principal.principal_id, &principal.roles);
                permissions.append(&mut principal.permissions);
                permissions.sort();
                permissions.dedup();
                principal.roles = roles;
                principal.permissions = permissions;
            }
            let audit_summary = if request.include_audit_summary {
                let filter = AuditFilter {
                    principal: Some(principal.principal_id.clone()),
                    ..AuditFilter::tenant(tenant.clone())
                };
                let stats = self.host.audit_log().statistics(&filter).await?;
                let count = |t: &str| stats.by_event_type.get(t).copied().unwrap_or(0);
                Some(PrincipalAuditSummary {
                    start_time: stats.first_at_ms.unwrap_or(0),
                    end_time: stats.last_at_ms.unwrap_or(0),
                    total_events: stats.total,
                    authentication_failures: count("AUTHENTICATION_FAILURE"),
                    authorization_denials: count("AUTHORIZATION_DENIED"),
                    policy_violations: stats.policy_violations,
                    last_event_at: stats.last_at_ms.unwrap_or(0),
                    counts_by_event_type: stats.by_event_type,
                })
            } else {
                None
            };
            Ok(GetPrincipalDetailsResult { principal: Some(principal), audit_summary })
        }
        .await;
        respond!(GetPrincipalDetailsResponse, get_principal_details_response, result)
    }

    /// UpdatePrincipalRoles: adds and removes RBAC role assignments of a principal of the
    /// tenant (each audited); returns its assigned roles afterwards.
    pub async fn update_principal_roles(
        &self,
        caller: &Caller,
        request: UpdatePrincipalRolesRequest,
    ) -> UpdatePrincipalRolesResponse {
        let result: Result<_> = async {
            let tenant =
                self.host.authorize_rpc(caller, Rpc::UpdatePrincipalRoles, &request.tenant_id).await?;
            let principal = self.host.identity().get_principal(&tenant, &request.principal_id).await?;
            for role in &request.roles_to_add {
                self.host.assign_role(caller, &tenant, &principal.principal_id, role).await?;
            }
            for role in &request.roles_to_remove {
                self.host.revoke_role(caller, &tenant, &principal.principal_id, role).await?;
            }
            Ok(UpdatePrincipalRolesResult {
                roles: self.host.assigned_roles(&tenant, &principal.principal_id, &principal.roles).await?,
            })
        }
        .await;
        respond!(UpdatePrincipalRolesResponse, update_principal_roles_response, result)
    }

    /// GetPrincipalAuditTrail: a principal's audit events in the tenant, in log order.
    pub async fn get_principal_audit_trail(
        &self,
        caller: &Caller,
        request: GetPrincipalAuditTrailRequest,
    ) -> GetPrincipalAuditTrailResponse {
        let result: Result<_> = async {
            let tenant =
                self.host.authorize_rpc(caller, Rpc::GetPrincipalAuditTrail, &request.tenant_id).await?;
            if request.principal_id.is_empty() {
                return Err(Error::invalid_argument("`principal_id` is required"));
            }
            let query = AuditQuery {
                filter: AuditFilter {
                    principal: Some(request.principal_id),
                    start_ms: request.start_time,
                    end_ms: (request.end_time != 0).then_some(request.end_time),
                    ..AuditFilter::tenant(tenant)
                },
                limit: request.limit as usize,
                cursor: (!request.cursor.is_empty()).then_some(request.cursor),
            };
            let page = self.host.audit_log().query(&query).await?;
            Ok(GetPrincipalAuditTrailResult {
                events: page.events.into_iter().map(|e| e.event).collect(),
                next_cursor: page.next_cursor.unwrap_or_default(),
            })
        }
        .await;
        respond!(GetPrincipalAuditTrailResponse, get_principal_audit_trail_response, result)
    }
}

impl Host {
    /// The roles assigned to a principal (without inherited ones): its RBAC assignments and
    /// the roles its record carries.
    pub(crate) async fn assigned_roles(
        &self,
        tenant: &str,
        principal_id: &str,
        direct: &[String],
    ) -> Result<Vec<String>> {
        let mut roles = self.policy_lifecycle().assigned_roles(tenant, principal_id).await?;
        roles.extend(direct.iter().cloned());
        roles.sort();
        roles.dedup();
        Ok(roles)
    }
}
