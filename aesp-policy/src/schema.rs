//! Declared attributes: the names and types of the principal's, the tenant's and the
//! organization's attributes that policies may read, so policies that use them can be checked.

use std::collections::BTreeMap;

use aesp_core::proto::v1::{Value, value::Kind};

use crate::error::PolicyError;

/// The type of a declared attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttributeType {
    /// `bool`.
    Bool,
    /// `int` (64-bit signed).
    Int,
    /// `double`; integer values are accepted and converted.
    Double,
    /// `string`.
    String,
    /// `bytes`.
    Bytes,
    /// A list whose elements have the given type.
    List(Box<AttributeType>),
    /// A map from strings to values of the given type.
    Map(Box<AttributeType>),
    /// Any value; a policy reading it is checked only at run time.
    Dyn,
}

impl AttributeType {
    /// Whether `value` has this type (null is accepted for every type: an absent value).
    pub fn accepts(&self, value: &Value) -> bool {
        match (self, &value.kind) {
            (AttributeType::Dyn, _) | (_, None | Some(Kind::NullValue(_))) => true,
            (AttributeType::Bool, Some(Kind::BooleanValue(_)))
            | (AttributeType::Int, Some(Kind::IntegerValue(_)))
            | (AttributeType::Double, Some(Kind::FloatValue(_) | Kind::IntegerValue(_)))
            | (AttributeType::String, Some(Kind::StringValue(_)))
            | (AttributeType::Bytes, Some(Kind::BinaryValue(_))) => true,
            (AttributeType::List(element), Some(Kind::ArrayValue(array))) => {
                array.values.iter().all(|v| element.accepts(v))
            }
            (AttributeType::Map(element), Some(Kind::ObjectValue(object))) => {
                object.fields.values().all(|v| element.accepts(v))
            }
            _ => false,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            AttributeType::Bool => "bool".to_owned(),
            AttributeType::Int => "int".to_owned(),
            AttributeType::Double => "double".to_owned(),
            AttributeType::String => "string".to_owned(),
            AttributeType::Bytes => "bytes".to_owned(),
            AttributeType::List(element) => format!("list({})", element.describe()),
            AttributeType::Map(element) => format!("map(string, {})", element.describe()),
            AttributeType::Dyn => "dyn".to_owned(),
        }
    }
}

/// The fields of `request.user` that are not attributes.
pub(crate) const USER_FIELDS: &[&str] =
    &["id", "type", "roles", "permissions", "clearance", "mfa_verified", "claims", "tenant", "business_unit"];
/// The fields of `request.tenant` that are not attributes.
pub(crate) const TENANT_FIELDS: &[&str] = &["id"];

/// Where an attribute belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Owner {
    Principal,
    Tenant,
    Organization,
}

/// The declared attributes policies may read: `request.user.<name>` for the principal's,
/// `request.tenant.<name>` for the tenant's and `organization.<name>` for the organization's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema {
    principal: BTreeMap<String, AttributeType>,
    tenant: BTreeMap<String, AttributeType>,
    organization: BTreeMap<String, AttributeType>,
}

impl Schema {
    /// A schema that declares no attribute.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares an attribute of principals, read as `request.user.<name>`.
    ///
    /// # Errors
    ///
    /// Fails when `name` is not an identifier, is a built-in field of `request.user` or is
    /// declared already.
    pub fn with_principal_attribute(self, name: &str, ty: AttributeType) -> Result<Self, PolicyError> {
        self.declare(Owner::Principal, name, ty)
    }

    /// The declared type of the principal attribute `name`, if it is declared.
    pub fn principal_attribute(&self, name: &str) -> Option<&AttributeType> {
        self.attributes(Owner::Principal).get(name)
    }

    /// Declares an attribute of tenants, read as `request.tenant.<name>`.
    ///
    /// # Errors
    ///
    /// As [`Schema::with_principal_attribute`].
    pub fn with_tenant_attribute(self, name: &str, ty: AttributeType) -> Result<Self, PolicyError> {
        self.declare(Owner::Tenant, name, ty)
    }

    /// Declares an organization-wide attribute, read as `organization.<name>`; its value is
    /// set on the snapshot.
    ///
    /// # Errors
    ///
    /// As [`Schema::with_principal_attribute`].
    pub fn with_organization_attribute(self, name: &str, ty: AttributeType) -> Result<Self, PolicyError> {
        self.declare(Owner::Organization, name, ty)
    }

    fn declare(mut self, owner: Owner, name: &str, ty: AttributeType) -> Result<Self, PolicyError> {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(PolicyError::Configuration(format!("invalid attribute name `{name}`")));
        }
        let (map, reserved) = match owner {
            Owner::Principal => (&mut self.principal, USER_FIELDS),
            Owner::Tenant => (&mut self.tenant, TENANT_FIELDS),
            Owner::Organization => (&mut self.organization, &[][..]),
        };
        if reserved.contains(&name) {
            return Err(PolicyError::Configuration(format!(
                "attribute `{name}` would hide a built-in field"
            )));
        }
        if map.insert(name.to_owned(), ty).is_some() {
            return Err(PolicyError::Configuration(format!("attribute `{name}` is declared twice")));
        }
        Ok(self)
    }

    pub(crate) fn attributes(&self, owner: Owner) -> &BTreeMap<String, AttributeType> {
        match owner {
            Owner::Principal => &self.principal,
            Owner::Tenant => &self.tenant,
            Owner::Organization => &self.organization,
        }
    }

    pub(crate) fn digest_text(&self) -> String {
        let mut out = String::new();
        for (owner, map) in
            [("principal", &self.principal), ("tenant", &self.tenant), ("organization", &self.organization)]
        {
            for (name, ty) in map {
                out.push_str(&format!("{owner}.{name}:{};", ty.describe()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_checked() {
        let schema = Schema::new().with_principal_attribute("spending_limit", AttributeType::Double).unwrap();
        assert!(schema.clone().with_principal_attribute("spending_limit", AttributeType::Int).is_err());
        assert!(schema.clone().with_principal_attribute("roles", AttributeType::Int).is_err());
        assert!(schema.clone().with_tenant_attribute("1x", AttributeType::Int).is_err());
        assert!(schema.with_organization_attribute("id", AttributeType::Int).is_ok());
    }

    #[test]
    fn values_are_checked_against_types() {
        let list = AttributeType::List(Box::new(AttributeType::String));
        assert!(list.accepts(&Value::array([Value::string("a")])));
        assert!(!list.accepts(&Value::array([Value::integer(1)])));
        assert!(AttributeType::Double.accepts(&Value::integer(3)));
        assert!(!AttributeType::Int.accepts(&Value::float(3.0)));
        assert!(AttributeType::Int.accepts(&Value::null()));
    }
}
