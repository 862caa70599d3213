//! How the Host lays out its state in the [`StateStore`](aesp_core::StateStore): every key
//! starts with its tenant (`t/<tenant>/`), values are protocol messages in their binary
//! encoding, and reads of a record remember the revision that compare-and-set needs.

use aesp_core::{Error, ErrorCode, Result, StateStore, Txn, TxnOutcome};
use prost::Message;

/// The reserved tenant of the platform administrators. Its id cannot be created or named by
/// anyone else: tenant ids may not start with `_`.
pub const SYSTEM_TENANT: &str = "_system";

/// Checks a tenant id: 1 to 63 characters of lowercase letters, digits, `-` and `_`,
/// starting with a letter or digit (so the reserved [`SYSTEM_TENANT`] cannot be created).
pub fn check_tenant_id(id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id.len() <= 63
        && id.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "tenant id `{}` is not 1 to 63 lowercase letters, digits, `-` or `_` starting with a letter or digit",
            shorten(id)
        )))
    }
}

/// Checks a name used inside a key (contract names, session ids, ...): 1 to 128 printable
/// ASCII characters without `/`.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    let valid =
        !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "{what} `{}` is not 1 to 128 printable ASCII characters without `/`",
            shorten(name)
        )))
    }
}

/// User input cut for messages.
pub(crate) fn shorten(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    if cut.len() < text.len() { format!("{cut}…") } else { cut }
}

/// Where a tenant's own record lives: under the system tenant, which administers tenants.
pub(crate) fn tenant_key(tenant: &str) -> String {
    format!("t/{SYSTEM_TENANT}/tenants/{tenant}")
}

/// The prefix of every tenant record.
pub(crate) fn tenants_prefix() -> String {
    format!("t/{SYSTEM_TENANT}/tenants/")
}

/// Where a contract version lives.
pub(crate) fn contract_key(tenant: &str, name: &str, version: &str) -> String {
    format!("t/{tenant}/contracts/{name}/{version}")
}

/// The prefix of a tenant's contracts.
pub(crate) fn contracts_prefix(tenant: &str) -> String {
    format!("t/{tenant}/contracts/")
}

/// Where a session lives.
pub(crate) fn session_key(tenant: &str, session: &str) -> String {
    format!("t/{tenant}/sessions/{session}")
}

/// A decoded record and the revision it was read at (for compare-and-set).
#[derive(Debug, Clone)]
pub(crate) struct Stored<T> {
    pub(crate) value: T,
    pub(crate) revision: u64,
}

/// Reads and decodes one record.
pub(crate) async fn read<T: Message + Default>(
    store: &dyn StateStore,
    key: &str,
) -> Result<Option<Stored<T>>> {
    let Some(kv) = store.get(key.as_bytes()).await? else { return Ok(None) };
    let value = T::decode(kv.value.as_slice())
        .map_err(|e| Error::corrupted(format!("record `{key}` does not decode: {e}")))?;
    Ok(Some(Stored { value, revision: kv.mod_revision }))
}

/// Reads every record under `prefix` (at one revision).
pub(crate) async fn read_all<T: Message + Default>(
    store: &dyn StateStore,
    prefix: &str,
) -> Result<Vec<(String, Stored<T>)>> {
    let page = aesp_core::StateStoreExt::scan_all(store, prefix.as_bytes(), 1_000_000).await?;
    page.kvs
        .into_iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let value = T::decode(kv.value.as_slice())
                .map_err(|e| Error::corrupted(format!("record `{key}` does not decode: {e}")))?;
            Ok((key, Stored { value, revision: kv.mod_revision }))
        })
        .collect()
}

/// Writes `value` under `key` if the key is still at `expected` (`None`: absent); returns
/// the new revision, or `CONFLICT` if someone else changed it first.
pub(crate) async fn write<T: Message>(
    store: &dyn StateStore,
    key: &str,
    expected: Option<u64>,
    value: &T,
) -> Result<u64> {
    let txn = match expected {
        None => Txn::new().if_absent(key),
        Some(revision) => Txn::new().if_revision(key, revision),
    };
    match store.txn(txn.put(key, value.encode_to_vec())).await? {
        TxnOutcome::Committed { revision } => Ok(revision),
        TxnOutcome::CompareFailed { actual, .. } => Err(match (expected, actual) {
            (None, Some(_)) => Error::new(ErrorCode::AlreadyExists, format!("`{key}` exists already")),
            _ => Error::new(ErrorCode::Conflict, format!("`{key}` was changed concurrently; retry")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["acme", "a", "team-7", "x_y", &"a".repeat(63)] {
            assert!(check_tenant_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_system", "-a", "Acme", "a/b", "a b", "é", &"a".repeat(64)] {
            assert!(check_tenant_id(bad).is_err(), "{bad}");
        }
        assert!(check_name("contract", "sql.query").is_ok());
        assert!(check_name("contract", "a/b").is_err());
        assert!(check_name("contract", "").is_err());
    }
}
