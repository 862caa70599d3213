//! The control-plane state seam: a versioned key-value store in the style of etcd.
//!
//! Tenants, principals, roles, contracts, policies, sessions, budgets, approvals and
//! configuration are stored as values under keys that start with their tenant. Every commit
//! gets the next **revision** (one global counter); each key carries the revision that created
//! it and the one that last changed it. Writers use **transactions** (compares, then puts and
//! deletes, atomically) for compare-and-set; readers **scan** a prefix at a fixed revision in
//! pages; followers **watch** a prefix from a revision and see every change in order.
//!
//! Implementations: [`MemoryStore`] here (tests, embedding without durability), the embedded
//! durable store in `aesp-store` (the default), and PostgreSQL. Each proves itself by running
//! the conformance suite (module `conformance`, behind the `conformance` feature).

use std::{fmt, pin::Pin};

use async_trait::async_trait;
use futures_core::Stream;

use crate::error::{Error, Result};

mod lazy_watch;
mod memory;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use lazy_watch::{Progress, lazy_watch};
pub use memory::MemoryStore;

/// A store revision. Revision 0 is the empty store; the first commit is revision 1.
pub type Revision = u64;

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 4 << 20;
/// The most compares, and separately the most operations, in one transaction.
pub const MAX_TXN_OPS: usize = 1024;
/// The most keys one range request returns.
pub const MAX_RANGE_LIMIT: usize = 10_000;
/// The range limit used when a request gives none.
pub const DEFAULT_RANGE_LIMIT: usize = 1000;

/// Options every backend accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateStoreOptions {
    /// How many of the most recent revisions of history (old versions and watch events) are
    /// kept at least. Older history is compacted automatically; reading or watching from a
    /// compacted revision fails with `REVISION_COMPACTED`.
    pub history_revisions: u64,
}

impl Default for StateStoreOptions {
    fn default() -> Self {
        Self { history_revisions: 10_000 }
    }
}

impl StateStoreOptions {
    /// Options that keep at least `history_revisions` revisions of history.
    pub fn with_history_revisions(history_revisions: u64) -> Self {
        Self { history_revisions: history_revisions.max(1) }
    }
}

/// A key with its value and revisions.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty in a delete event).
    pub value: Vec<u8>,
    /// The revision that created the key (since it last did not exist); 0 in a delete event.
    pub create_revision: Revision,
    /// The revision that last changed the key (in a delete event: the deletion's revision).
    pub mod_revision: Revision,
    /// How many times the key was written since it was created (1 after creation); 0 in a
    /// delete event.
    pub version: u64,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .finish()
    }
}

/// A condition a transaction checks before it applies its operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(Vec<u8>),
    /// The key exists and was last changed at exactly this revision.
    ModRevision(Vec<u8>, Revision),
}

impl Compare {
    /// The key the compare looks at.
    pub fn key(&self) -> &[u8] {
        match self {
            Compare::Absent(key) | Compare::ModRevision(key, _) => key,
        }
    }
}

/// A write in a transaction.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// Set the key to the value.
    Put(Vec<u8>, Vec<u8>),
    /// Remove the key (no change if it does not exist).
    Delete(Vec<u8>),
}

impl Op {
    /// The key the operation writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put(key, _) | Op::Delete(key) => key,
        }
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put(key, value) => {
                write!(f, "Put({:?}, {} bytes)", String::from_utf8_lossy(key), value.len())
            }
            Op::Delete(key) => write!(f, "Delete({:?})", String::from_utf8_lossy(key)),
        }
    }
}

/// A transaction: if every compare holds, apply every operation, atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Writes, applied in order at one revision. A key may appear at most once.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` to be absent.
    #[must_use]
    pub fn if_absent(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.compares.push(Compare::Absent(key.into()));
        self
    }

    /// Requires `key` to exist at `revision` (its `mod_revision`).
    #[must_use]
    pub fn if_revision(mut self, key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        self.compares.push(Compare::ModRevision(key.into(), revision));
        self
    }

    /// Adds a put.
    #[must_use]
    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }

    /// Adds a delete.
    #[must_use]
    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }

    /// Checks the limits every backend enforces: non-empty keys of at most
    /// [`MAX_KEY_LEN`] bytes, values of at most [`MAX_VALUE_LEN`], at most [`MAX_TXN_OPS`]
    /// compares and operations, and no key written twice.
    pub fn check(&self) -> Result<()> {
        if self.compares.len() > MAX_TXN_OPS || self.ops.len() > MAX_TXN_OPS {
            return Err(Error::invalid_argument(format!(
                "a transaction holds at most {MAX_TXN_OPS} compares and {MAX_TXN_OPS} operations"
            )));
        }
        for compare in &self.compares {
            check_key(compare.key())?;
        }
        let mut written = std::collections::BTreeSet::new();
        for op in &self.ops {
            check_key(op.key())?;
            if let Op::Put(_, value) = op
                && value.len() > MAX_VALUE_LEN
            {
                return Err(Error::invalid_argument(format!(
                    "value of `{}` is {} bytes, more than {MAX_VALUE_LEN}",
                    show_key(op.key()),
                    value.len()
                )));
            }
            if !written.insert(op.key()) {
                return Err(Error::invalid_argument(format!(
                    "key `{}` is written twice in one transaction",
                    show_key(op.key())
                )));
            }
        }
        Ok(())
    }
}

/// Checks a key: non-empty and at most [`MAX_KEY_LEN`] bytes.
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid_argument("keys may not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid_argument(format!(
            "key `{}` is {} bytes, more than {MAX_KEY_LEN}",
            show_key(key),
            key.len()
        )));
    }
    Ok(())
}

/// A key for messages: lossy UTF-8, cut at 80 characters.
pub fn show_key(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    let cut: String = text.chars().take(80).collect();
    if cut.len() < text.len() { format!("{cut}…") } else { cut }
}

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum TxnOutcome {
    /// Every compare held and every operation was applied. `revision` is the commit's
    /// revision, or the unchanged current revision if no operation changed anything.
    Committed {
        /// The revision after the transaction.
        revision: Revision,
    },
    /// A compare did not hold; nothing was applied.
    CompareFailed {
        /// The index in [`Txn::compares`] of the first compare that failed.
        index: usize,
        /// The key's current `mod_revision`, or `None` if it does not exist.
        actual: Option<Revision>,
        /// The store's revision when the compare was checked.
        revision: Revision,
    },
}

impl TxnOutcome {
    /// Whether the transaction was applied.
    pub fn committed(&self) -> bool {
        matches!(self, TxnOutcome::Committed { .. })
    }

    /// The commit's revision, if applied.
    pub fn revision(&self) -> Option<Revision> {
        match self {
            TxnOutcome::Committed { revision } => Some(*revision),
            TxnOutcome::CompareFailed { .. } => None,
        }
    }
}

/// A request for one page of a prefix scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    /// Keys that start with this (empty: every key).
    pub prefix: Vec<u8>,
    /// Only keys strictly after this one: the previous page's [`RangePage::next_cursor`].
    pub start_after: Option<Vec<u8>>,
    /// The most keys to return: 1 to [`MAX_RANGE_LIMIT`]; 0 means [`DEFAULT_RANGE_LIMIT`].
    pub limit: usize,
    /// The revision to read at (the previous page's [`RangePage::revision`] for a
    /// consistent scan); `None` reads the current revision.
    pub revision: Option<Revision>,
}

impl RangeRequest {
    /// The first page of keys starting with `prefix`, at the current revision.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Self { prefix: prefix.into(), start_after: None, limit: 0, revision: None }
    }

    /// Sets the page size.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Reads at `revision`.
    #[must_use]
    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }

    /// The page after `page` (same prefix, limit and revision); `None` if `page` was the last.
    pub fn after(&self, page: &RangePage) -> Option<Self> {
        let cursor = page.next_cursor.clone()?;
        Some(Self { start_after: Some(cursor), revision: Some(page.revision), ..self.clone() })
    }

    /// The effective limit, or an error if it is above [`MAX_RANGE_LIMIT`].
    pub fn effective_limit(&self) -> Result<usize> {
        match self.limit {
            0 => Ok(DEFAULT_RANGE_LIMIT),
            n if n > MAX_RANGE_LIMIT => {
                Err(Error::invalid_argument(format!("range limit {n} is above {MAX_RANGE_LIMIT}")))
            }
            n => Ok(n),
        }
    }
}

/// One page of a prefix scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangePage {
    /// The keys, in ascending byte order.
    pub kvs: Vec<KeyValue>,
    /// The revision the page was read at.
    pub revision: Revision,
    /// The cursor for the next page, if there are more keys.
    pub next_cursor: Option<Vec<u8>>,
}

/// The kind of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change seen by a watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: the key, an empty value,
    /// `mod_revision` = the deletion's revision, `create_revision` and `version` 0).
    pub kv: KeyValue,
}

impl WatchEvent {
    /// The revision of the commit that made this change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The stream a watch returns.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send + 'static>>;

/// A versioned key-value store: the control plane's state.
///
/// # Contract
/// - **Revisions.** One global revision counts commits: a transaction that changes at least
///   one key gets the next revision, and all its changes carry it. A transaction that changes
///   nothing (failed compares, deletes of absent keys only) does not advance it.
/// - **Atomicity.** [`txn`](Self::txn) checks every compare against the latest state and then
///   applies every operation, all at once or not at all; concurrent transactions are
///   serialisable (as if applied one after another in revision order).
/// - **Reads.** [`get`](Self::get) reads the latest committed state. [`range`](Self::range)
///   returns keys with a prefix in ascending byte order as of one revision: paging with the
///   returned revision and cursor sees one consistent snapshot, whatever is written meanwhile.
/// - **Watch.** [`watch`](Self::watch) delivers every change to keys with the prefix whose
///   revision is at least `from`, in revision order (the changes of one transaction in the
///   order of its operations), then follows new commits. It never skips or repeats a change:
///   if history the watcher still needs is compacted, the stream yields `REVISION_COMPACTED`
///   and ends, and the watcher re-reads and watches again from the revision it read at + 1.
/// - **History.** At least [`StateStoreOptions::history_revisions`] recent revisions are kept;
///   reading or watching from before the compacted revision is `REVISION_COMPACTED`
///   ([`Error::compacted_revision`] says the oldest revision kept). Reading at a revision
///   above the current one is `INVALID_ARGUMENT`.
/// - **Durability.** When `txn` returns `Committed`, the commit is durable as the backend
///   documents: in memory for [`MemoryStore`]; on disk (synced) for the embedded store; in the
///   database for PostgreSQL. An error from `txn` for invalid input, or before the commit was
///   attempted, means nothing was applied. An I/O error during a durable commit leaves the
///   outcome unknown, as with any database whose acknowledgement is lost: the transaction is
///   either wholly applied or not at all, and the caller re-reads to find out (a
///   compare-and-set retried after a re-read is safe).
/// - **Limits.** Every backend enforces [`Txn::check`] and [`RangeRequest::effective_limit`].
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug + 'static {
    /// The key's latest value, or `None`.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>>;

    /// One page of keys with a prefix, at one revision.
    async fn range(&self, request: RangeRequest) -> Result<RangePage>;

    /// Applies a transaction.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome>;

    /// Changes to keys starting with `prefix`, from revision `from` (inclusive) onward. Use the
    /// revision a read returned plus one to follow on from that read; 0 is the same as 1.
    async fn watch(&self, prefix: &[u8], from: Revision) -> Result<WatchStream>;

    /// The current revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// The oldest revision that can still be read or watched from.
    async fn compacted_revision(&self) -> Result<Revision>;

    /// Discards history before `revision` (which must not be above the current revision);
    /// compacting to an already-compacted revision does nothing.
    async fn compact(&self, revision: Revision) -> Result<()>;
}

/// Conveniences on every [`StateStore`].
#[async_trait]
pub trait StateStoreExt: StateStore {
    /// Writes `value` under `key` unconditionally; returns the commit's revision.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<Revision> {
        let outcome = self.txn(Txn::new().put(key, value)).await?;
        outcome.revision().ok_or_else(|| Error::internal("an unconditional put failed a compare"))
    }

    /// Deletes `key`; returns the revision after the delete.
    async fn delete(&self, key: &[u8]) -> Result<Revision> {
        let outcome = self.txn(Txn::new().delete(key)).await?;
        outcome.revision().ok_or_else(|| Error::internal("an unconditional delete failed a compare"))
    }

    /// Writes `value` only if `key` is absent (`expected` = `None`) or at revision
    /// `expected`: compare-and-set.
    async fn compare_and_set(
        &self,
        key: &[u8],
        expected: Option<Revision>,
        value: &[u8],
    ) -> Result<TxnOutcome> {
        let txn = match expected {
            None => Txn::new().if_absent(key),
            Some(revision) => Txn::new().if_revision(key, revision),
        };
        self.txn(txn.put(key, value)).await
    }

    /// Every key with `prefix` at one revision, paging internally; fails if there are more
    /// than `max` keys.
    async fn scan_all(&self, prefix: &[u8], max: usize) -> Result<RangePage> {
        let mut request = RangeRequest::prefix(prefix);
        let mut all = Vec::new();
        loop {
            let page = self.range(request.clone()).await?;
            all.extend(page.kvs.iter().cloned());
            if all.len() > max {
                return Err(Error::invalid_argument(format!(
                    "more than {max} keys start with `{}`",
                    show_key(prefix)
                )));
            }
            match request.after(&page) {
                Some(next) => request = next,
                None => return Ok(RangePage { kvs: all, revision: page.revision, next_cursor: None }),
            }
        }
    }
}

impl<S: StateStore + ?Sized> StateStoreExt for S {}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is
/// none (the prefix is empty or all `0xff`): the exclusive upper bound of a prefix scan.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_exclusive_bound() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn txn_limits_are_checked() {
        assert!(Txn::new().put("k", "v").check().is_ok());
        assert!(Txn::new().put("", "v").check().is_err());
        assert!(Txn::new().put(vec![b'k'; MAX_KEY_LEN + 1], "v").check().is_err());
        assert!(Txn::new().put("k", vec![0; MAX_VALUE_LEN + 1]).check().is_err());
        assert!(Txn::new().put("k", "v").delete("k").check().is_err());
        assert!(Txn::new().if_absent("").check().is_err());
        let many = (0..=MAX_TXN_OPS).fold(Txn::new(), |t, i| t.put(format!("k{i}"), "v"));
        assert!(many.check().is_err());
    }
}
