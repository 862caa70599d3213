//! Host-managed contracts (specification §3.2): the Host alone holds each tenant's
//! `EnterpriseToolContract`s; runtimes only fulfil them.
//!
//! A contract version is immutable once loaded. Loading a manifest puts new contracts and new
//! versions in `PENDING` (whatever approval the manifest claims); only an explicit approval
//! makes a version `APPROVED`, and only approved versions can be called or fulfilled. Each
//! version's parameter schema and return type are compiled when it is loaded, so a bad schema
//! is a load error and calls never re-parse it.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock},
};

use aesp_core::{
    Clock, Error, ErrorCode, ParameterValidator, Result, StateStore, Txn, TxnOutcome, TypeValidator,
    proto::v1::EnterpriseToolContract,
};
use prost::Message as _;

use crate::records::{self, check_name, contract_key, contracts_prefix, shorten};

/// `approval_status` of a contract version waiting for approval.
pub const PENDING: &str = "PENDING";
/// `approval_status` of a contract version that may be called.
pub const APPROVED: &str = "APPROVED";
/// `approval_status` of a refused contract version.
pub const REJECTED: &str = "REJECTED";

/// A contract version, compiled.
#[derive(Debug)]
pub struct CompiledContract {
    contract: EnterpriseToolContract,
    version: semver::Version,
    /// `version` as text (what the pipeline records), rendered once.
    version_text: String,
    parameters: ParameterValidator,
    returns: Option<TypeValidator>,
}

impl CompiledContract {
    /// Checks and compiles a contract: a valid name, a semver version, a parameter schema and
    /// return type that compile.
    pub(crate) fn compile(contract: EnterpriseToolContract) -> Result<Self> {
        check_name("contract name", &contract.name)?;
        let version = semver::Version::parse(&contract.contract_version).map_err(|e| {
            Error::invalid_argument(format!(
                "contract `{}`: version `{}` is not semver: {e}",
                contract.name,
                shorten(&contract.contract_version)
            ))
        })?;
        let in_contract = |e: Error| {
            Error::new(e.code(), format!("contract `{}` {}: {}", contract.name, version, e.message()))
        };
        let parameters =
            ParameterValidator::compile(&contract.parameters).map_err(|v| in_contract(v.into()))?;
        let returns = match &contract.return_type {
            Some(ty) if ty.kind.is_some() => {
                Some(TypeValidator::compile(ty).map_err(|v| in_contract(v.into()))?)
            }
            _ => None,
        };
        let version_text = version.to_string();
        Ok(Self { contract, version, version_text, parameters, returns })
    }

    /// The contract as stored.
    pub fn contract(&self) -> &EnterpriseToolContract {
        &self.contract
    }

    /// Its version.
    pub fn version(&self) -> &semver::Version {
        &self.version
    }

    /// Its version as text (the semver's canonical rendering).
    pub fn version_text(&self) -> &str {
        &self.version_text
    }

    /// Whether it may be called.
    pub fn is_approved(&self) -> bool {
        self.contract.approval_status == APPROVED
    }

    /// The compiled parameter schema.
    pub fn parameters(&self) -> &ParameterValidator {
        &self.parameters
    }

    /// The compiled return type, if the contract declares one.
    pub fn returns(&self) -> Option<&TypeValidator> {
        self.returns.as_ref()
    }
}

type Versions = BTreeMap<semver::Version, Arc<CompiledContract>>;
/// Tenant → contract name → versions.
type Catalogue = BTreeMap<String, BTreeMap<String, Versions>>;

/// The contracts of every tenant, in memory, backed by the state store.
#[derive(Debug)]
pub(crate) struct Contracts {
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    cache: RwLock<Arc<Catalogue>>,
}

/// What loading one contract of a manifest did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    /// A new version, now pending approval.
    Created,
    /// The same version with the same content existed; nothing changed.
    Unchanged,
}

/// The content of a contract that makes it what it is: everything but the approval fields.
fn content(contract: &EnterpriseToolContract) -> Vec<u8> {
    let mut c = contract.clone();
    c.approval_status.clear();
    c.approved_by.clear();
    c.approved_at = 0;
    c.encode_to_vec()
}

impl Contracts {
    /// Loads the contracts of `tenants` from the store.
    pub(crate) async fn load(
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
        tenants: impl IntoIterator<Item = String>,
    ) -> Result<Self> {
        let mut catalogue = Catalogue::new();
        for tenant in tenants {
            for (key, stored) in
                records::read_all::<EnterpriseToolContract>(store.as_ref(), &contracts_prefix(&tenant))
                    .await?
            {
                let compiled = CompiledContract::compile(stored.value).map_err(|e| {
                    Error::corrupted(format!("stored contract `{key}` no longer compiles: {}", e.message()))
                })?;
                catalogue
                    .entry(tenant.clone())
                    .or_default()
                    .entry(compiled.contract.name.clone())
                    .or_default()
                    .insert(compiled.version.clone(), Arc::new(compiled));
            }
        }
        Ok(Self { store, clock, cache: RwLock::new(Arc::new(catalogue)) })
    }

    fn snapshot(&self) -> Arc<Catalogue> {
        Arc::clone(&self.cache.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn remember(&self, tenant: &str, compiled: Vec<Arc<CompiledContract>>) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Catalogue::clone(&cache);
        for c in compiled {
            next.entry(tenant.to_owned())
                .or_default()
                .entry(c.contract.name.clone())
                .or_default()
                .insert(c.version.clone(), c);
        }
        *cache = Arc::new(next);
    }

    /// Loads a manifest into `tenant`, all or nothing: every contract must compile, and a
    /// version that exists already must have the same content (versions are immutable).
    pub(crate) async fn load_manifest(
        &self,
        tenant: &str,
        manifest: Vec<EnterpriseToolContract>,
    ) -> Result<Vec<(Arc<CompiledContract>, LoadOutcome)>> {
        if manifest.is_empty() {
            return Err(Error::invalid_argument("the manifest holds no contracts"));
        }
        let existing = self.snapshot();
        let mut txn = Txn::new();
        let mut results = Vec::with_capacity(manifest.len());
        let mut seen = std::collections::BTreeSet::new();
        for mut contract in manifest {
            // Approval is the Host's to give, never the manifest's.
            contract.approval_status = PENDING.to_owned();
            contract.approved_by.clear();
            contract.approved_at = 0;
            let compiled = CompiledContract::compile(contract)?;
            let name = compiled.contract.name.clone();
            if !seen.insert((name.clone(), compiled.version.clone())) {
                return Err(Error::invalid_argument(format!(
                    "contract `{name}` {} appears twice in the manifest",
                    compiled.version
                )));
            }
            let current = existing
                .get(tenant)
                .and_then(|t| t.get(&name))
                .and_then(|v| v.get(&compiled.version))
                .cloned();
            match current {
                Some(current) if content(&current.contract) == content(&compiled.contract) => {
                    results.push((current, LoadOutcome::Unchanged));
                }
                Some(_) => {
                    return Err(Error::new(
                        ErrorCode::AlreadyExists,
                        format!(
                            "contract `{name}` {} exists with other content; versions are immutable",
                            compiled.version
                        ),
                    )
                    .with_remediation("load the change as a new version"));
                }
                None => {
                    let key = contract_key(tenant, &name, &compiled.contract.contract_version);
                    txn = txn.if_absent(key.clone()).put(key, compiled.contract.encode_to_vec());
                    results.push((Arc::new(compiled), LoadOutcome::Created));
                }
            }
        }
        if !txn.ops.is_empty() {
            match self.store.txn(txn).await? {
                TxnOutcome::Committed { .. } => {}
                TxnOutcome::CompareFailed { .. } => {
                    return Err(Error::new(
                        ErrorCode::Conflict,
                        "a contract version was loaded concurrently; retry",
                    ));
                }
            }
            let created = results
                .iter()
                .filter(|(_, o)| *o == LoadOutcome::Created)
                .map(|(c, _)| Arc::clone(c))
                .collect();
            self.remember(tenant, created);
        }
        Ok(results)
    }

    /// Sets the approval status of a pending version (`APPROVED` or `REJECTED`).
    pub(crate) async fn adjudicate(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
        status: &str,
        by: &str,
    ) -> Result<Arc<CompiledContract>> {
        let key = contract_key(tenant, name, version);
        let Some(stored) = records::read::<EnterpriseToolContract>(self.store.as_ref(), &key).await? else {
            return Err(Error::not_found(format!(
                "contract `{}` {} does not exist",
                shorten(name),
                shorten(version)
            )));
        };
        let mut contract = stored.value;
        if contract.approval_status != PENDING {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("contract `{name}` {version} is {}, not {PENDING}", contract.approval_status),
            ));
        }
        status.clone_into(&mut contract.approval_status);
        by.clone_into(&mut contract.approved_by);
        contract.approved_at = self.clock.now_ms();
        records::write(self.store.as_ref(), &key, Some(stored.revision), &contract).await?;
        let compiled = Arc::new(CompiledContract::compile(contract)?);
        self.remember(tenant, vec![Arc::clone(&compiled)]);
        Ok(compiled)
    }

    /// One version of a contract of `tenant`, any status.
    pub(crate) fn get(
        &self,
        tenant: &str,
        name: &str,
        version: &semver::Version,
    ) -> Option<Arc<CompiledContract>> {
        self.snapshot().get(tenant)?.get(name)?.get(version).cloned()
    }

    /// The newest approved version of `name` in `tenant` matching `requirement` (any, if
    /// `None`).
    pub(crate) fn resolve(
        &self,
        tenant: &str,
        name: &str,
        requirement: Option<&semver::VersionReq>,
    ) -> Option<Arc<CompiledContract>> {
        let snapshot = self.snapshot();
        let versions = snapshot.get(tenant)?.get(name)?;
        versions
            .iter()
            .rev()
            .find(|(v, c)| c.is_approved() && requirement.is_none_or(|r| r.matches(v)))
            .map(|(_, c)| Arc::clone(c))
    }

    /// Whether `tenant` has a contract called `name`, in any version or status.
    pub(crate) fn exists(&self, tenant: &str, name: &str) -> bool {
        self.snapshot().get(tenant).is_some_and(|t| t.contains_key(name))
    }

    /// Every contract version of `tenant`.
    pub(crate) fn list(&self, tenant: &str) -> Vec<Arc<CompiledContract>> {
        self.snapshot()
            .get(tenant)
            .map(|t| t.values().flat_map(|v| v.values().cloned()).collect())
            .unwrap_or_default()
    }

    /// The prefix under which a tenant's contracts are stored.
    #[cfg(test)]
    fn prefix(tenant: &str) -> String {
        contracts_prefix(tenant)
    }
}

#[cfg(test)]
mod tests {
    use aesp_core::{
        ManualClock, MemoryStore, StateStoreExt as _,
        proto::v1::{AltarType, ParameterSchema, PrimitiveType, altar_type},
    };

    use super::*;

    fn contract(name: &str, version: &str, max_len: &str) -> EnterpriseToolContract {
        EnterpriseToolContract {
            name: name.into(),
            contract_version: version.into(),
            parameters: vec![ParameterSchema {
                name: "q".into(),
                r#type: Some(AltarType {
                    kind: Some(altar_type::Kind::Primitive(PrimitiveType::String as i32)),
                }),
                constraints: [("max_length".to_owned(), max_len.to_owned())].into(),
                ..Default::default()
            }],
            approval_status: APPROVED.into(), // a manifest cannot approve itself
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn manifests_load_pending_and_versions_are_immutable() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
        let contracts = Contracts::load(Arc::clone(&store), Arc::new(ManualClock::new(5)), []).await.unwrap();
        let loaded =
            contracts.load_manifest("acme", vec![contract("sql.query", "1.0.0", "10")]).await.unwrap();
        assert_eq!(loaded[0].1, LoadOutcome::Created);
        assert_eq!(loaded[0].0.contract().approval_status, PENDING);
        assert!(contracts.resolve("acme", "sql.query", None).is_none(), "pending is not callable");

        // The same content again: unchanged. Other content under the same version: refused.
        let again =
            contracts.load_manifest("acme", vec![contract("sql.query", "1.0.0", "10")]).await.unwrap();
        assert_eq!(again[0].1, LoadOutcome::Unchanged);
        let error =
            contracts.load_manifest("acme", vec![contract("sql.query", "1.0.0", "99")]).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::AlreadyExists);

        // All or nothing: one bad contract loads none.
        let error = contracts
            .load_manifest("acme", vec![contract("good", "1.0.0", "1"), contract("bad", "1.0.0", "-1")])
            .await
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        assert!(!contracts.exists("acme", "good"));
        assert!(contracts.load_manifest("acme", vec![contract("x", "one", "1")]).await.is_err());

        contracts.adjudicate("acme", "sql.query", "1.0.0", APPROVED, "bob").await.unwrap();
        let resolved = contracts.resolve("acme", "sql.query", None).unwrap();
        assert_eq!((resolved.contract().approved_by.as_str(), resolved.contract().approved_at), ("bob", 5));
        let error = contracts.adjudicate("acme", "sql.query", "1.0.0", REJECTED, "bob").await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::FailedPrecondition, "only pending versions are adjudicated");

        // Newest approved matching version; other tenants see nothing.
        contracts.load_manifest("acme", vec![contract("sql.query", "1.2.0", "10")]).await.unwrap();
        contracts.load_manifest("acme", vec![contract("sql.query", "2.0.0", "10")]).await.unwrap();
        contracts.adjudicate("acme", "sql.query", "1.2.0", APPROVED, "bob").await.unwrap();
        assert_eq!(contracts.resolve("acme", "sql.query", None).unwrap().version().to_string(), "1.2.0");
        let req = semver::VersionReq::parse("~1.0").unwrap();
        assert_eq!(
            contracts.resolve("acme", "sql.query", Some(&req)).unwrap().version().to_string(),
            "1.0.0"
        );
        assert!(contracts.resolve("other", "sql.query", None).is_none());

        // A restart sees the same catalogue.
        let reloaded =
            Contracts::load(Arc::clone(&store), Arc::new(ManualClock::new(9)), ["acme".to_owned()])
                .await
                .unwrap();
        assert_eq!(reloaded.list("acme").len(), 3);
        assert_eq!(store.scan_all(Contracts::prefix("acme").as_bytes(), 100).await.unwrap().kvs.len(), 3);
    }
}
