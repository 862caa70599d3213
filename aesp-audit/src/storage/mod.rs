//! The storage seam of the audit log: a sequencer that appends batches durably, serves leaf
//! ranges, keeps the stored hashes of the tree and its signed checkpoints, and grants the
//! integrator lease.

use std::{fmt, sync::Arc, time::Duration};

use aesp_core::{Clock, Error, ErrorCode, Result};
use async_trait::async_trait;
use bytes::Bytes;

use crate::merkle::{Hash, leaf_hash};

mod memory;
mod segment;

pub use memory::MemoryStorage;
pub(crate) use segment::rewrite_entry;
pub use segment::{SEGMENT_FORMAT_VERSION, SegmentOptions, SegmentStorage};

/// The right to integrate (hash and checkpoint) a log, granted by the storage to one holder
/// at a time until it expires. `token` increases with every grant, so a write made under an
/// older lease is refused (a fencing token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it.
    pub holder: String,
    /// The fencing token.
    pub token: u64,
    /// When it expires (Unix milliseconds, by the storage's clock).
    pub expires_ms: u64,
}

/// A checkpoint as stored: its tree size and its signed-note bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The tree size it covers.
    pub size: u64,
    /// The signed note, as stored.
    pub note: Bytes,
}

/// What is left of a pruned entry: its leaf hash (so the tree, the checkpoints and every proof
/// stay verifiable) and when, why and by which audited event it was pruned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// The leaf hash of the entry that was pruned.
    pub leaf_hash: Hash,
    /// When it was pruned (Unix milliseconds).
    pub pruned_at_ms: u64,
    /// The rule under which it was pruned (for example `retention tenant=acme before=...`).
    pub rule: String,
    /// The index of the audit event that recorded the pruning.
    pub event_index: u64,
}

/// The longest [`Tombstone::rule`], in bytes.
pub const MAX_RULE_LEN: usize = 1024;

/// One leaf of the log as stored: the entry's bytes, or the tombstone of a pruned entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// The entry's exact bytes.
    Entry(Bytes),
    /// The entry was pruned.
    Pruned(Tombstone),
}

impl Leaf {
    /// The leaf hash: computed from the entry, or kept by the tombstone.
    pub fn hash(&self) -> Hash {
        match self {
            Self::Entry(bytes) => leaf_hash(bytes),
            Self::Pruned(t) => t.leaf_hash,
        }
    }

    /// The entry's bytes, unless it was pruned.
    pub fn entry(&self) -> Option<&Bytes> {
        match self {
            Self::Entry(bytes) => Some(bytes),
            Self::Pruned(_) => None,
        }
    }
}

/// How a batch of entries is to be pruned: when, under which rule, recorded by which event.
#[derive(Clone, Copy, Debug)]
pub struct PruneRequest<'a> {
    /// The indices to prune, ascending without repeats.
    pub indexes: &'a [u64],
    /// When (Unix milliseconds).
    pub pruned_at_ms: u64,
    /// The rule, at most [`MAX_RULE_LEN`] bytes.
    pub rule: &'a str,
    /// The index of the audit event that records this pruning.
    pub event_index: u64,
}

/// The sizes of a log in storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageState {
    /// The number of durable entries; the next append gets this index.
    pub size: u64,
    /// The number of entries whose stored hashes are kept.
    pub integrated_size: u64,
}

/// The storage of an audit log.
///
/// # Contract
/// - **Sequencing.** `append` gives its batch consecutive indices starting at the returned
///   one, and returns only once the whole batch is durable; an error means none of it is
///   acknowledged. Concurrent appends (from this process or, in a shared database, others) get
///   disjoint ranges; indices have no gaps. `read_entries` returns the exact bytes appended.
/// - **Reads.** `read_entries(start, end)` returns a non-empty prefix of `start..end` (the
///   storage may cap how much one call returns) when `start < end <= size`, and
///   [`ErrorCode::InvalidArgument`] otherwise. Damaged data is [`ErrorCode::DataCorrupted`]
///   with a message that says where.
/// - **Integration.** Only the holder of the current lease may `append_hashes` and
///   `store_checkpoint`; a stale or expired lease is [`ErrorCode::Conflict`].
///   `acquire_lease` grants the lease when it is free or expired, renews it for the same
///   holder, and is [`ErrorCode::Conflict`] while someone else holds it.
/// - **Stored hashes.** `append_hashes(lease, from, to, hashes)` appends the stored hashes of
///   the leaves `from..to` (the leaf hash of each, then the perfect subtree roots it
///   completes); `from` must equal `integrated_size` and `to <= size`. They may become durable
///   only with the next checkpoint.
/// - **Checkpoints.** `store_checkpoint` keeps the note of a tree size `<= integrated_size`
///   and not smaller than the latest one's, durably, together with every stored hash it needs.
///   After a crash, stored hashes beyond the latest checkpoint may be gone (`integrated_size`
///   falls back to it); if entries were lost, `integrated_size` may exceed `size`, and an
///   integrator must then refuse to go on.
/// - **Pruning.** `prune` replaces entries by [`Tombstone`]s holding their leaf hashes, durably
///   before it returns, and the entries' bytes are no longer stored. Only entries covered by
///   the latest checkpoint may be pruned (their hashes are signed); others are
///   [`ErrorCode::FailedPrecondition`]. An entry already pruned keeps its first tombstone.
///   `read_leaves` returns tombstones in place of pruned entries; `read_entries` refuses a
///   range holding one with [`ErrorCode::NotFound`].
#[async_trait]
pub trait LogStorage: Send + Sync + fmt::Debug + 'static {
    /// Appends a batch durably; returns the index of its first entry.
    async fn append(&self, entries: &[Bytes]) -> Result<u64>;

    /// The same appends as [`append`](Self::append), made by blocking the calling thread, where
    /// the storage can (its writes are local system calls, as the segment files' are); `None`,
    /// the default, where appends must be awaited. With one, [`AuditLog`](crate::AuditLog)
    /// commits on a thread of its own rather than handing each group to a runtime's blocking
    /// pool and waiting to be scheduled again when it is durable.
    fn blocking_appender(&self) -> Option<Arc<dyn BlockingAppend>> {
        None
    }

    /// The current sizes.
    async fn state(&self) -> Result<StorageState>;

    /// The leaves `start..end` (or a non-empty prefix of them): entries, or tombstones where
    /// entries were pruned.
    async fn read_leaves(&self, start: u64, end: u64) -> Result<Vec<Leaf>>;

    /// The entries `start..end` (or a non-empty prefix of them); a pruned entry among them is
    /// [`ErrorCode::NotFound`].
    async fn read_entries(&self, start: u64, end: u64) -> Result<Vec<Bytes>> {
        let leaves = self.read_leaves(start, end).await?;
        let mut out = Vec::with_capacity(leaves.len());
        for (index, leaf) in (start..).zip(leaves) {
            match leaf {
                Leaf::Entry(bytes) => out.push(bytes),
                Leaf::Pruned(t) => {
                    return Err(Error::not_found(format!(
                        "entry {index} was pruned at {} under `{}`",
                        t.pruned_at_ms, t.rule
                    ))
                    .with_detail("pruned", index.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// Replaces the entries of `request` by tombstones, durably; returns how many were pruned
    /// now (entries already pruned are left as they are).
    async fn prune(&self, request: PruneRequest<'_>) -> Result<u64>;

    /// Acquires or renews the integrator lease for `ttl`.
    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Lease>;

    /// Gives the lease up.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// Appends the stored hashes of leaves `from..to`.
    async fn append_hashes(&self, lease: &Lease, from: u64, to: u64, hashes: &[Hash]) -> Result<()>;

    /// The stored hashes at `indexes` (stored-hash order).
    async fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>>;

    /// Stores a signed checkpoint of tree size `size`, durably.
    async fn store_checkpoint(&self, lease: &Lease, size: u64, note: &[u8]) -> Result<()>;

    /// Up to `limit` stored checkpoints, oldest first, starting with the first of size
    /// `>= from_size`.
    async fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<StoredCheckpoint>>;

    /// The latest stored checkpoint.
    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>>;
}

/// Appends that block the calling thread until they are durable
/// ([`LogStorage::blocking_appender`]).
pub trait BlockingAppend: Send + Sync + fmt::Debug + 'static {
    /// [`LogStorage::append`], blocking the calling thread: the same contract, and appends
    /// through either are one sequence.
    fn append_blocking(&self, entries: &[Bytes]) -> Result<u64>;

    /// Called by the committer after a group it appended was handed on to be acknowledged, and
    /// before it takes the next: work that need not hold up a group (the segment files write
    /// zeros ahead of directly written frames then). Its failure is the storage's own concern:
    /// it must not lose or damage anything appended. The default does nothing.
    fn after_append(&self) {}
}

/// The lease bookkeeping shared by the built-in storages.
#[derive(Debug)]
pub(crate) struct LeaseTable {
    clock: Arc<dyn Clock>,
    current: Option<Lease>,
    next_token: u64,
}

impl LeaseTable {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, current: None, next_token: 1 }
    }

    pub(crate) fn acquire(&mut self, holder: &str, ttl: Duration) -> Result<Lease> {
        let now = self.clock.now_ms();
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = now.saturating_add(ttl);
        match &mut self.current {
            Some(lease) if lease.holder == holder && lease.expires_ms > now => {
                lease.expires_ms = expires_ms;
                Ok(lease.clone())
            }
            Some(lease) if lease.expires_ms > now => Err(Error::new(
                ErrorCode::Conflict,
                format!("the integrator lease is held by `{}`", lease.holder),
            )),
            _ => {
                let lease = Lease { holder: holder.to_owned(), token: self.next_token, expires_ms };
                self.next_token = self.next_token.saturating_add(1);
                self.current = Some(lease.clone());
                Ok(lease)
            }
        }
    }

    pub(crate) fn release(&mut self, lease: &Lease) {
        if self.current.as_ref().is_some_and(|c| c.token == lease.token) {
            self.current = None;
        }
    }

    pub(crate) fn check(&self, lease: &Lease) -> Result<()> {
        match &self.current {
            Some(c) if c.token == lease.token && c.expires_ms > self.clock.now_ms() => Ok(()),
            _ => Err(Error::new(ErrorCode::Conflict, "the integrator lease is lost or expired")),
        }
    }
}

/// Checks an `append_hashes` call against the state.
pub(crate) fn check_hash_append(state: StorageState, from: u64, to: u64, count: usize) -> Result<()> {
    if from != state.integrated_size || to > state.size || from > to {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "hashes for leaves {from}..{to} do not continue the integrated size {} of a log of size {}",
                state.integrated_size, state.size
            ),
        ));
    }
    let expected = crate::merkle::stored_hash_count(to) - crate::merkle::stored_hash_count(from);
    if u64::try_from(count).ok() != Some(expected) {
        return Err(Error::invalid_argument(format!(
            "leaves {from}..{to} store {expected} hashes, not {count}"
        )));
    }
    Ok(())
}

/// Checks a `store_checkpoint` call against the state and the latest checkpoint.
pub(crate) fn check_checkpoint(
    state: StorageState,
    latest: Option<&StoredCheckpoint>,
    size: u64,
) -> Result<()> {
    if size > state.integrated_size {
        return Err(Error::new(
            ErrorCode::FailedPrecondition,
            format!("checkpoint size {size} is beyond the integrated size {}", state.integrated_size),
        ));
    }
    if let Some(latest) = latest
        && size < latest.size
    {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!("checkpoint size {size} is older than the latest checkpoint's {}", latest.size),
        ));
    }
    Ok(())
}

/// Checks a `prune` call: sorted unique indices, all covered by the latest checkpoint.
pub(crate) fn check_prune(latest: Option<&StoredCheckpoint>, request: &PruneRequest<'_>) -> Result<()> {
    if request.rule.len() > MAX_RULE_LEN {
        return Err(Error::invalid_argument(format!("a pruning rule is at most {MAX_RULE_LEN} bytes")));
    }
    if request.indexes.windows(2).any(|w| w.first() >= w.get(1)) {
        return Err(Error::invalid_argument("indices to prune must ascend without repeats"));
    }
    let covered = latest.map_or(0, |c| c.size);
    if let Some(&last) = request.indexes.last()
        && last >= covered
    {
        return Err(Error::new(
            ErrorCode::FailedPrecondition,
            format!(
                "entry {last} is not covered by a checkpoint yet (covered: {covered}); it cannot be pruned"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_range(start: u64, end: u64, size: u64) -> Result<()> {
    if start >= end || end > size {
        return Err(Error::invalid_argument(format!(
            "entries {start}..{end} are not in a log of size {size}"
        )));
    }
    Ok(())
}
