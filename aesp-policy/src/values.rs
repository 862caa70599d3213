//! The decision context as CEL values, built directly from the request and the snapshot.
//!
//! Nothing is converted up front: `request`, `request.user` and the like are small views that
//! resolve a field only when a condition reads it, borrowing the request's strings. The
//! variables are handed to the interpreter through a resolver that lends them, so a decision
//! builds no map and copies no string unless a condition asks for a list or map field.

use std::{any::Any, borrow::Cow, collections::HashMap};

use aesp_core::proto::v1::{Value, value::Kind};
use cel::{
    ExecutionError,
    common::{
        traits::Indexer,
        types::{
            CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
            CelTimestamp, Type,
        },
        value::{CowVal, StaticVal, Val},
    },
    context::VariableResolver,
};

use crate::{
    labels::Labels,
    policy::CompiledPolicy,
    rbac::TenantRbac,
    request::Request,
    schema::{AttributeType, Owner, Schema},
};

/// What one decision knows, computed once and shared by every policy it evaluates.
#[derive(Debug)]
pub(crate) struct Facts<'r> {
    pub(crate) request: &'r Request,
    /// The principal's roles, with inherited ones, sorted.
    pub(crate) roles: Cow<'r, [String]>,
    /// The same as a CEL list, when the snapshot has it ready.
    pub(crate) roles_val: Option<&'r dyn Val>,
    pub(crate) rbac: Option<&'r TenantRbac>,
    pub(crate) schema: &'r Schema,
    /// Scalar fields as CEL values, made once so that every read lends them instead of
    /// boxing a new value.
    scalars: Scalars<'r>,
}

/// The request's scalar fields as CEL values.
#[derive(Debug)]
struct Scalars<'r> {
    action: CelString<'r>,
    source_ip: CelString<'r>,
    estimated_cost: CelDouble,
    user_id: CelString<'r>,
    tenant_id: CelString<'r>,
}

impl<'r> Facts<'r> {
    pub(crate) fn new(
        request: &'r Request,
        roles: Cow<'r, [String]>,
        roles_val: Option<&'r dyn Val>,
        rbac: Option<&'r TenantRbac>,
        schema: &'r Schema,
    ) -> Self {
        let scalars = Scalars {
            action: CelString::from(request.action.as_str()),
            source_ip: CelString::from(request.source_ip.as_str()),
            estimated_cost: CelDouble::from(request.estimated_cost),
            user_id: CelString::from(request.principal.id.as_str()),
            tenant_id: CelString::from(request.tenant_id.as_str()),
        };
        Self { request, roles, roles_val, rbac, schema, scalars }
    }
}

fn timestamp(ms: u64) -> chrono::DateTime<chrono::FixedOffset> {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().fixed_offset()
}

/// Converts a protocol value into a CEL value borrowing its strings and bytes; with
/// `as_double`, integers become doubles (a `double` attribute given as an integer).
pub(crate) fn to_val<'r>(value: &'r Value, declared: Option<&AttributeType>) -> Box<dyn Val + 'r> {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Box::new(CelNull),
        Some(Kind::StringValue(s)) => Box::new(CelString::from(s.as_str())),
        Some(Kind::IntegerValue(i)) if declared == Some(&AttributeType::Double) => {
            #[expect(clippy::cast_precision_loss, reason = "a declared double given as an integer")]
            let d = *i as f64;
            Box::new(CelDouble::from(d))
        }
        Some(Kind::IntegerValue(i)) => Box::new(CelInt::from(*i)),
        Some(Kind::FloatValue(f)) => Box::new(CelDouble::from(*f)),
        Some(Kind::BooleanValue(b)) => Box::new(CelBool::from(*b)),
        Some(Kind::BinaryValue(b)) => Box::new(CelBytes::from(b.as_slice())),
        Some(Kind::ArrayValue(array)) => {
            let element = match declared {
                Some(AttributeType::List(element)) => Some(&**element),
                _ => None,
            };
            Box::new(CelList::from(array.values.iter().map(|v| to_val(v, element)).collect::<Vec<_>>()))
        }
        Some(Kind::ObjectValue(object)) => {
            let element = match declared {
                Some(AttributeType::Map(element)) => Some(&**element),
                _ => None,
            };
            let map: HashMap<CelMapKey<'r>, Box<dyn Val + 'r>> = object
                .fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), to_val(v, element)))
                .collect();
            Box::new(CelMap::from(map))
        }
    }
}

/// As [`to_val`], copying strings and bytes, for values kept in a snapshot.
pub(crate) fn to_static_val(value: &Value, declared: Option<&AttributeType>) -> Box<dyn Val + 'static> {
    match &value.kind {
        Some(Kind::StringValue(s)) => Box::new(CelString::from(s.clone())),
        Some(Kind::BinaryValue(b)) => Box::new(CelBytes::from(b.clone())),
        Some(Kind::ArrayValue(array)) => {
            let element = match declared {
                Some(AttributeType::List(element)) => Some(&**element),
                _ => None,
            };
            Box::new(CelList::from(
                array.values.iter().map(|v| to_static_val(v, element)).collect::<Vec<_>>(),
            ))
        }
        Some(Kind::ObjectValue(object)) => {
            let element = match declared {
                Some(AttributeType::Map(element)) => Some(&**element),
                _ => None,
            };
            let map: HashMap<CelMapKey<'static>, Box<dyn Val + 'static>> = object
                .fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.clone()), to_static_val(v, element)))
                .collect();
            Box::new(CelMap::from(map))
        }
        None
        | Some(Kind::NullValue(_) | Kind::IntegerValue(_) | Kind::FloatValue(_) | Kind::BooleanValue(_)) => {
            // Scalars borrow nothing.
            scalar(value, declared)
        }
    }
}

fn scalar(value: &Value, declared: Option<&AttributeType>) -> Box<dyn Val + 'static> {
    match &value.kind {
        Some(Kind::IntegerValue(i)) if declared == Some(&AttributeType::Double) => {
            #[expect(clippy::cast_precision_loss, reason = "a declared double given as an integer")]
            let d = *i as f64;
            Box::new(CelDouble::from(d))
        }
        Some(Kind::IntegerValue(i)) => Box::new(CelInt::from(*i)),
        Some(Kind::FloatValue(f)) => Box::new(CelDouble::from(*f)),
        Some(Kind::BooleanValue(b)) => Box::new(CelBool::from(*b)),
        _ => Box::new(CelNull),
    }
}

/// A map of strings to CEL values.
pub(crate) fn string_map<'r>(entries: impl Iterator<Item = (&'r String, &'r String)>) -> CelMap<'r> {
    let map: HashMap<CelMapKey<'r>, Box<dyn Val + 'r>> = entries
        .map(|(k, v)| {
            (CelMapKey::from(k.as_str()), Box::new(CelString::from(v.as_str())) as Box<dyn Val + 'r>)
        })
        .collect();
    CelMap::from(map)
}

fn string_list<'r>(items: impl Iterator<Item = &'r str>) -> CelList<'r> {
    CelList::from(items.map(|s| Box::new(CelString::from(s)) as Box<dyn Val + 'r>).collect::<Vec<_>>())
}

fn field_name(index: &dyn Val) -> Result<&str, ExecutionError> {
    index.downcast_ref::<CelString>().map(CelString::inner).ok_or_else(|| ExecutionError::UnexpectedType {
        got: index.get_type().name().to_owned(),
        want: "string".to_owned(),
    })
}

fn string<'b, 'v>(s: &'v str) -> CowVal<'b, 'v> {
    CowVal::owned(CelString::from(s))
}

/// Declares a view type: a `Copy` wrapper that is a CEL value with fields.
macro_rules! view {
    ($name:ident, $type_name:literal, $target:ty) => {
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name<'r>(pub(crate) &'r $target);

        impl<'r> Val for $name<'r> {
            fn get_type(&self) -> &Type {
                static TYPE: Type = Type::new_unspecified_type($type_name);
                &TYPE
            }
            fn cel_type() -> &'static Type {
                static TYPE: Type = Type::new_unspecified_type($type_name);
                &TYPE
            }
            fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
            where
                Self: 'v,
            {
                Some(self)
            }
            fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
            where
                Self: 'v,
            {
                Box::new(*self)
            }
        }
    };
}

view!(RequestView, "aesp.Request", Facts<'r>);
view!(UserView, "aesp.User", Facts<'r>);
view!(ResourceView, "aesp.Resource", Facts<'r>);
view!(TenantView, "aesp.Tenant", Facts<'r>);
view!(SessionView, "aesp.Session", Facts<'r>);
view!(PolicyView, "aesp.Policy", CompiledPolicy);
view!(OrganizationView, "aesp.Organization", HashMap<String, Box<dyn Val>>);

fn no_such_key<'b, 'v>(name: &str) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Err(ExecutionError::no_such_key(name))
}

/// Implements CEL's `Indexer` for views whose fields are read by their own `field` method.
macro_rules! indexed_by_field {
    ($($view:ident),+) => {$(
        impl<'r> Indexer for $view<'r> {
            fn get<'b, 'v>(&'b self, index: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
            where
                Self: 'v,
            {
                self.field(field_name(index)?)
            }

            fn steal<'v>(self: Box<Self>, index: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
            where
                Self: 'v,
            {
                self.get(index).map(CowVal::into_owned)
            }
        }
    )+};
}

indexed_by_field!(RequestView, UserView, ResourceView, TenantView, SessionView);

impl<'r> RequestView<'r> {
    /// The field `name`, borrowing what it can from the request.
    pub(crate) fn field(self, name: &str) -> Result<CowVal<'r, 'r>, ExecutionError> {
        let facts = self.0;
        let request = facts.request;
        Ok(match name {
            "user" => CowVal::owned(UserView(facts)),
            "resource" => CowVal::owned(ResourceView(facts)),
            "tenant" => CowVal::owned(TenantView(facts)),
            "session" => CowVal::owned(SessionView(facts)),
            "action" => CowVal::Borrowed(&facts.scalars.action),
            "time" => CowVal::owned(CelTimestamp::from(timestamp(request.time_ms))),
            "source_ip" => CowVal::Borrowed(&facts.scalars.source_ip),
            "params" => {
                let map: HashMap<CelMapKey<'r>, Box<dyn Val + 'r>> = request
                    .params
                    .iter()
                    .map(|(k, v)| (CelMapKey::from(k.as_str()), to_val(v, None)))
                    .collect();
                CowVal::owned(CelMap::from(map))
            }
            "estimated_cost" => CowVal::Borrowed(&facts.scalars.estimated_cost),
            other => return no_such_key(other),
        })
    }
}

impl<'r> UserView<'r> {
    /// The field `name`, borrowing what it can from the request.
    pub(crate) fn field(self, name: &str) -> Result<CowVal<'r, 'r>, ExecutionError> {
        let facts = self.0;
        let principal = &facts.request.principal;
        Ok(match name {
            "id" => CowVal::Borrowed(&facts.scalars.user_id),
            "type" => string(&principal.principal_type),
            "roles" => match facts.roles_val {
                Some(roles) => CowVal::Borrowed(roles),
                None => CowVal::owned(string_list(facts.roles.iter().map(String::as_str))),
            },
            "permissions" => {
                let mut texts: Vec<String> = principal.permissions.clone();
                if let Some(rbac) = facts.rbac {
                    texts.extend(
                        rbac.permissions(&principal.id, &principal.roles).map(|p| p.as_str().to_owned()),
                    );
                }
                texts.sort();
                texts.dedup();
                CowVal::owned(CelList::from(
                    texts
                        .into_iter()
                        .map(|s| Box::new(CelString::from(s)) as Box<dyn Val + 'r>)
                        .collect::<Vec<_>>(),
                ))
            }
            "clearance" => CowVal::owned(CelString::from(principal.clearance.to_ascii_lowercase())),
            "mfa_verified" => {
                CowVal::Borrowed(if principal.mfa_verified { &CelBool::TRUE } else { &CelBool::FALSE })
            }
            "claims" => CowVal::owned(string_map(principal.claims.iter())),
            "tenant" => string(&principal.tenant_id),
            "business_unit" => string(&principal.business_unit),
            other => match principal.attributes.get(other) {
                Some(value) => {
                    CowVal::from(to_val(value, facts.schema.attributes(Owner::Principal).get(other)))
                }
                None => return no_such_key(other),
            },
        })
    }
}

impl<'r> ResourceView<'r> {
    /// The field `name`, borrowing what it can from the request.
    pub(crate) fn field(self, name: &str) -> Result<CowVal<'r, 'r>, ExecutionError> {
        let resource = &self.0.request.resource;
        Ok(match name {
            "name" => string(&resource.name),
            "tenant" => string(&resource.tenant_id),
            "classification" => CowVal::owned(CelString::from(resource.classification.to_ascii_lowercase())),
            "metadata" => CowVal::owned(string_map(resource.metadata.iter())),
            other => return no_such_key(other),
        })
    }
}

impl<'r> TenantView<'r> {
    /// The field `name`, borrowing what it can from the request.
    pub(crate) fn field(self, name: &str) -> Result<CowVal<'r, 'r>, ExecutionError> {
        let facts = self.0;
        Ok(match name {
            "id" => CowVal::Borrowed(&facts.scalars.tenant_id),
            other => match facts.request.tenant_attributes.get(other) {
                Some(value) => CowVal::from(to_val(value, facts.schema.attributes(Owner::Tenant).get(other))),
                None => return no_such_key(other),
            },
        })
    }
}

impl<'r> SessionView<'r> {
    /// The field `name`, borrowing what it can from the request.
    pub(crate) fn field(self, name: &str) -> Result<CowVal<'r, 'r>, ExecutionError> {
        let session = &self.0.request.session;
        Ok(match name {
            "id" => string(&session.id),
            "metadata" => CowVal::owned(string_map(session.metadata.iter())),
            other => return no_such_key(other),
        })
    }
}

impl<'r> Indexer for PolicyView<'r> {
    fn get<'b, 'v>(&'b self, index: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let policy = self.0;
        Ok(match field_name(index)? {
            "id" => string(policy.id()),
            "version" => string(policy.version()),
            "name" => string(policy.name()),
            "parameters" => CowVal::Borrowed(policy.parameters_val()),
            other => return no_such_key(other),
        })
    }

    fn steal<'v>(self: Box<Self>, index: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(index).map(CowVal::into_owned)
    }
}

impl<'r> Indexer for OrganizationView<'r> {
    fn get<'b, 'v>(&'b self, index: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = field_name(index)?;
        match self.0.get(name) {
            Some(value) => Ok(CowVal::Borrowed(&**value)),
            None => no_such_key(name),
        }
    }

    fn steal<'v>(self: Box<Self>, index: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(index).map(CowVal::into_owned)
    }
}

/// The value of `clearance`: the label order, with `dominates` and `rank` as methods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClearanceTable(pub(crate) Labels);

pub(crate) static CLEARANCE_TYPE: Type = Type::new_unspecified_type("aesp.Clearance");

impl Val for ClearanceTable {
    fn get_type(&self) -> &Type {
        &CLEARANCE_TYPE
    }
    fn cel_type() -> &'static Type {
        &CLEARANCE_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<ClearanceTable>().is_some_and(|o| o == self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for ClearanceTable {}

type Args<'b, 'v> = Vec<CowVal<'b, 'v>>;

fn clearance_args<'a>(
    args: &'a Args<'_, '_>,
    function: &str,
) -> Result<(&'a Labels, Vec<&'a str>), ExecutionError> {
    let (table, rest) = args.split_first().ok_or_else(ExecutionError::missing_argument_or_target)?;
    let table = table
        .downcast_ref::<ClearanceTable>()
        .ok_or_else(|| ExecutionError::function_error(function, "not called on `clearance`"))?;
    let labels = rest
        .iter()
        .map(|a| a.downcast_ref::<CelString>().map(CelString::inner))
        .collect::<Option<Vec<&str>>>()
        .ok_or_else(|| ExecutionError::function_error(function, "labels must be strings"))?;
    Ok((&table.0, labels))
}

fn dominates<'b, 'v>(args: Args<'b, 'v>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (labels, names) = clearance_args(&args, "dominates")?;
    let [held, required] = names.as_slice() else {
        return Err(ExecutionError::invalid_argument_count(2, names.len()));
    };
    labels
        .dominates(held, required)
        .map(|b| CowVal::Borrowed(if b { &CelBool::TRUE } else { &CelBool::FALSE }))
        .map_err(|e| ExecutionError::function_error("dominates", e))
}

fn rank<'b, 'v>(args: Args<'b, 'v>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (labels, names) = clearance_args(&args, "rank")?;
    let [label] = names.as_slice() else {
        return Err(ExecutionError::invalid_argument_count(1, names.len()));
    };
    let rank = labels
        .rank(label)
        .ok_or_else(|| ExecutionError::function_error("rank", format!("unknown label `{label}`")))?;
    Ok(CowVal::owned(CelInt::from(i64::try_from(rank).unwrap_or(i64::MAX))))
}

/// Registers `clearance.dominates(held, required)` and `clearance.rank(label)`.
pub(crate) fn register_clearance(env: &mut cel::Env) -> Result<(), cel::DeclarationError> {
    use cel::common::types::STRING_TYPE;
    env.add_type(CLEARANCE_TYPE.to_owned())?;
    env.add_member_overload(
        "dominates",
        "clearance_dominates",
        CLEARANCE_TYPE.to_owned(),
        vec![STRING_TYPE, STRING_TYPE],
        dominates,
    )?;
    env.add_member_overload("rank", "clearance_rank", CLEARANCE_TYPE.to_owned(), vec![STRING_TYPE], rank)?;
    Ok(())
}

/// Lends the variables of one policy's evaluation to the interpreter.
pub(crate) struct Variables<'a> {
    pub(crate) request: RequestView<'a>,
    pub(crate) policy: PolicyView<'a>,
    pub(crate) organization: OrganizationView<'a>,
    pub(crate) clearance: &'a ClearanceTable,
}

/// The variables of the decision context.
pub(crate) const ROOTS: [&str; 4] = ["request", "policy", "organization", "clearance"];

impl VariableResolver for Variables<'_> {
    /// Resolves a variable, or a whole path of fields on one (`request.user.roles`): policies
    /// are compiled with such paths as single identifiers, which spares the interpreter the
    /// qualified-name resolution it does for each selection chain.
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        if let Some(index) = variable.strip_prefix(crate::lower::CONSTANT_PREFIX) {
            return self.policy.0.constant(index).map(CowVal::Borrowed);
        }
        let (root, path) = match variable.split_once('.') {
            Some((root, path)) => (root, Some(path)),
            None => (variable, None),
        };
        let is_request = root == "request";
        let root: CowVal<'b, 'b> = match (root, path) {
            ("request", _) => CowVal::Borrowed(&self.request),
            ("policy", Some("parameters")) => return Some(CowVal::Borrowed(self.policy.0.parameters_val())),
            ("policy", _) => CowVal::Borrowed(&self.policy),
            ("organization", Some(name)) if !name.contains('.') => {
                return self.organization.0.get(name).map(|v| CowVal::Borrowed(&**v));
            }
            ("organization", _) => CowVal::Borrowed(&self.organization),
            ("clearance", None) => return Some(CowVal::Borrowed(self.clearance)),
            _ => return None,
        };
        let Some(path) = path else {
            return Some(root);
        };
        let mut fields = path.split('.');
        // A field of one of the request's views, read without boxing the view.
        let mut current = match (is_request, fields.clone().next()) {
            (true, Some(view @ ("user" | "resource" | "tenant" | "session"))) => {
                fields.next();
                match fields.next() {
                    Some(field) => {
                        let facts = self.request.0;
                        let value = match view {
                            "user" => UserView(facts).field(field),
                            "resource" => ResourceView(facts).field(field),
                            "tenant" => TenantView(facts).field(field),
                            _ => SessionView(facts).field(field),
                        };
                        value.ok()?
                    }
                    None => return self.request.field(view).ok(),
                }
            }
            // A field of the request itself, lent where it can be rather than cloned.
            (true, Some(field)) => {
                fields.next();
                self.request.field(field).ok()?
            }
            _ => root,
        };
        for field in fields {
            let next = current.as_indexer()?.get(&CelString::from(field)).ok()?.into_owned();
            current = CowVal::Owned(next);
        }
        Some(current)
    }
}

/// Explains an unresolved path (`request.user.spending_limit`) as the missing field it is.
pub(crate) fn explain_missing(error: &ExecutionError) -> Option<String> {
    let ExecutionError::UndeclaredReference(name) = error else {
        return None;
    };
    let (parent, field) = name.rsplit_once('.')?;
    let root = parent.split('.').next().unwrap_or_default();
    ROOTS.contains(&root).then(|| format!("no such key or field `{field}` in `{parent}`"))
}
