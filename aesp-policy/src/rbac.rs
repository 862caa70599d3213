//! Roles with inheritance, their effective permissions, and assignments, per tenant.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use aesp_core::proto::v1::RoleDefinition;
use cel::common::{
    types::{CelList, CelString},
    value::Val,
};

use crate::{
    error::PolicyError,
    pattern::{Name, Permission},
};

/// One role after inheritance: the roles it stands for (itself and its ancestors) and every
/// permission it grants.
#[derive(Debug)]
pub(crate) struct EffectiveRole {
    pub(crate) roles: Vec<String>,
    pub(crate) permissions: Vec<Permission>,
}

/// The roles and assignments of one tenant, with effective permissions computed once.
#[derive(Debug, Default)]
pub(crate) struct TenantRbac {
    pub(crate) roles: HashMap<String, EffectiveRole>,
    /// What each assigned principal holds, computed once per snapshot.
    principals: HashMap<String, Grants>,
}

/// What a principal holds through its assigned roles.
#[derive(Debug, Default)]
struct Grants {
    /// The roles with the ones they inherit, sorted.
    roles: Vec<String>,
    /// Every permission of those roles, without duplicates.
    permissions: Vec<Permission>,
    /// The roles as a CEL list, for `request.user.roles`.
    roles_val: CelList<'static>,
}

/// Role definitions as given, before inheritance is resolved.
#[derive(Clone, Debug, Default)]
pub(crate) struct RoleSource {
    pub(crate) roles: BTreeMap<String, RoleDefinition>,
    pub(crate) assignments: BTreeMap<String, BTreeSet<String>>,
}

impl RoleSource {
    pub(crate) fn add_role(&mut self, role: RoleDefinition) -> Result<(), PolicyError> {
        if role.role_id.is_empty() {
            return Err(PolicyError::InvalidRole {
                role_id: String::new(),
                message: "empty role id".to_owned(),
            });
        }
        if self.roles.contains_key(&role.role_id) {
            return Err(PolicyError::Duplicate { kind: "role", id: role.role_id });
        }
        for permission in &role.permissions {
            Permission::parse(permission).map_err(|e| PolicyError::InvalidRole {
                role_id: role.role_id.clone(),
                message: e.to_string(),
            })?;
        }
        self.roles.insert(role.role_id.clone(), role);
        Ok(())
    }

    pub(crate) fn assign(&mut self, principal_id: &str, role_id: &str) {
        self.assignments.entry(principal_id.to_owned()).or_default().insert(role_id.to_owned());
    }

    /// Resolves inheritance: refuses unknown parents, unknown assigned roles and cycles.
    pub(crate) fn resolve(&self) -> Result<TenantRbac, PolicyError> {
        let mut resolved: HashMap<String, EffectiveRole> = HashMap::with_capacity(self.roles.len());
        for role_id in self.roles.keys() {
            let mut on_path = Vec::new();
            self.resolve_role(role_id, &mut on_path, &mut resolved)?;
        }
        let mut principals = HashMap::with_capacity(self.assignments.len());
        for (principal, roles) in &self.assignments {
            for role in roles {
                if !self.roles.contains_key(role) {
                    return Err(PolicyError::InvalidRole {
                        role_id: role.clone(),
                        message: format!("assigned to `{principal}` but not defined"),
                    });
                }
            }
            let mut effective: BTreeSet<&str> = BTreeSet::new();
            let mut texts: BTreeSet<&str> = BTreeSet::new();
            let mut permissions = Vec::new();
            for role in roles.iter().filter_map(|role| resolved.get(role)) {
                effective.extend(role.roles.iter().map(String::as_str));
                for permission in &role.permissions {
                    if texts.insert(permission.as_str()) {
                        permissions.push(permission.clone());
                    }
                }
            }
            let roles: Vec<String> = effective.into_iter().map(str::to_owned).collect();
            let roles_val = CelList::from(
                roles
                    .iter()
                    .map(|r| Box::new(CelString::from(r.clone())) as Box<dyn Val>)
                    .collect::<Vec<_>>(),
            );
            principals.insert(principal.clone(), Grants { roles, permissions, roles_val });
        }
        Ok(TenantRbac { roles: resolved, principals })
    }

    fn resolve_role(
        &self,
        role_id: &str,
        on_path: &mut Vec<String>,
        resolved: &mut HashMap<String, EffectiveRole>,
    ) -> Result<(), PolicyError> {
        if resolved.contains_key(role_id) {
            return Ok(());
        }
        if on_path.iter().any(|r| r == role_id) {
            return Err(PolicyError::RoleCycle { role_id: role_id.to_owned() });
        }
        let Some(definition) = self.roles.get(role_id) else {
            return Err(PolicyError::InvalidRole {
                role_id: on_path.last().cloned().unwrap_or_default(),
                message: format!("parent role `{role_id}` is not defined"),
            });
        };
        on_path.push(role_id.to_owned());
        let mut roles = BTreeSet::from([role_id.to_owned()]);
        let mut texts: BTreeSet<String> = BTreeSet::new();
        let mut permissions: Vec<Permission> = Vec::new();
        let mut add = |permission: &Permission, texts: &mut BTreeSet<String>| {
            if texts.insert(permission.as_str().to_owned()) {
                permissions.push(permission.clone());
            }
        };
        for text in &definition.permissions {
            add(&Permission::parse(text)?, &mut texts);
        }
        for parent in &definition.parent_roles {
            self.resolve_role(parent, on_path, resolved)?;
            if let Some(parent) = resolved.get(parent) {
                roles.extend(parent.roles.iter().cloned());
                for permission in &parent.permissions {
                    add(permission, &mut texts);
                }
            }
        }
        on_path.pop();
        resolved
            .insert(role_id.to_owned(), EffectiveRole { roles: roles.into_iter().collect(), permissions });
        Ok(())
    }
}

/// One principal in a tenant's RBAC, looked up once: for a decision, which reads its roles and
/// permissions several times.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Holder<'s> {
    rbac: &'s TenantRbac,
    grants: Option<&'s Grants>,
}

impl<'s> Holder<'s> {
    /// The roles the principal holds: those assigned in this tenant and those its security
    /// context asserts, each with its ancestors, sorted and without duplicates.
    pub(crate) fn effective_roles<'a>(self, asserted: &'a [String]) -> Cow<'a, [String]>
    where
        's: 'a,
    {
        let assigned = self.grants.map(|g| g.roles.as_slice()).unwrap_or_default();
        if asserted.is_empty() {
            return Cow::Borrowed(assigned);
        }
        let mut out: BTreeSet<&str> = assigned.iter().map(String::as_str).collect();
        for role in asserted {
            match self.rbac.roles.get(role) {
                Some(effective) => out.extend(effective.roles.iter().map(String::as_str)),
                None => {
                    out.insert(role);
                }
            }
        }
        Cow::Owned(out.into_iter().map(str::to_owned).collect())
    }

    /// The roles of an assigned principal as a CEL list, computed once per snapshot.
    pub(crate) fn roles_val(self) -> Option<&'s dyn Val> {
        self.grants.map(|g| &g.roles_val as &dyn Val)
    }

    /// Every permission granted through the principal's roles (assigned and asserted).
    pub(crate) fn permissions<'a>(self, asserted: &'a [String]) -> impl Iterator<Item = &'a Permission> + 'a
    where
        's: 'a,
    {
        let assigned = self.grants.map(|g| g.permissions.as_slice()).unwrap_or_default();
        let roles = &self.rbac.roles;
        assigned.iter().chain(
            asserted.iter().filter_map(|role| roles.get(role)).flat_map(|role| role.permissions.iter()),
        )
    }
}

impl TenantRbac {
    /// The principal `principal_id` in this tenant.
    pub(crate) fn holder(&self, principal_id: &str) -> Holder<'_> {
        Holder { rbac: self, grants: self.principals.get(principal_id) }
    }

    /// The roles a principal holds ([`Holder::effective_roles`]).
    pub(crate) fn effective_roles<'s>(
        &'s self,
        principal_id: &str,
        asserted: &'s [String],
    ) -> Cow<'s, [String]> {
        self.holder(principal_id).effective_roles(asserted)
    }

    /// Every permission granted through the principal's roles (assigned and asserted).
    pub(crate) fn permissions<'s>(
        &'s self,
        principal_id: &str,
        asserted: &'s [String],
    ) -> impl Iterator<Item = &'s Permission> + 's {
        self.holder(principal_id).permissions(asserted)
    }

    /// Whether one of the principal's roles grants (`resource`, `action`).
    pub(crate) fn grants(
        &self,
        principal_id: &str,
        asserted: &[String],
        resource: &Name<'_>,
        action: &Name<'_>,
    ) -> bool {
        self.permissions(principal_id, asserted).any(|p| p.matches(resource, action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(id: &str, parents: &[&str], permissions: &[&str]) -> RoleDefinition {
        RoleDefinition {
            role_id: id.to_owned(),
            parent_roles: parents.iter().map(|s| s.to_string()).collect(),
            permissions: permissions.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn inheritance_accumulates_parent_permissions() {
        let mut source = RoleSource::default();
        source.add_role(role("viewer", &[], &["tools/**:read"])).unwrap();
        source.add_role(role("analyst", &["viewer"], &["tools/sql.*:invoke"])).unwrap();
        source.add_role(role("lead", &["analyst"], &[])).unwrap();
        source.assign("alice", "lead");
        let rbac = source.resolve().unwrap();
        let grants = |resource: &str, action: &str| {
            rbac.grants("alice", &[], &Name::new(resource), &Name::new(action))
        };
        assert!(grants("tools/sql.query", "invoke"));
        assert!(grants("tools/crm/x", "read"));
        assert!(!grants("tools/crm/x", "invoke"));
        assert_eq!(*rbac.effective_roles("alice", &[]), ["analyst", "lead", "viewer"]);
        assert_eq!(
            *rbac.effective_roles("alice", &["ghost".to_owned()]),
            ["analyst", "ghost", "lead", "viewer"]
        );
        assert!(!rbac.grants("bob", &[], &Name::new("tools/sql.query"), &Name::new("invoke")));
        assert!(rbac.grants(
            "bob",
            &["analyst".to_owned()],
            &Name::new("tools/sql.query"),
            &Name::new("invoke")
        ));
    }

    #[test]
    fn cycles_and_unknown_parents_are_refused() {
        let mut source = RoleSource::default();
        source.add_role(role("a", &["b"], &[])).unwrap();
        source.add_role(role("b", &["c"], &[])).unwrap();
        source.add_role(role("c", &["a"], &[])).unwrap();
        assert!(matches!(source.resolve(), Err(PolicyError::RoleCycle { .. })));

        let mut source = RoleSource::default();
        source.add_role(role("self", &["self"], &[])).unwrap();
        assert!(matches!(source.resolve(), Err(PolicyError::RoleCycle { .. })));

        let mut source = RoleSource::default();
        source.add_role(role("a", &["ghost"], &[])).unwrap();
        assert!(matches!(source.resolve(), Err(PolicyError::InvalidRole { .. })));

        let mut source = RoleSource::default();
        source.assign("p", "ghost");
        assert!(source.resolve().is_err());

        let mut source = RoleSource::default();
        assert!(source.add_role(role("bad", &[], &["sql*:read"])).is_err());
        source.add_role(role("a", &[], &[])).unwrap();
        assert!(matches!(source.add_role(role("a", &[], &[])), Err(PolicyError::Duplicate { .. })));
    }
}
