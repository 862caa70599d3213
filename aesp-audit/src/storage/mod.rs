//! The storage seam of the audit log: a sequencer that appends batches durably, serves leaf
//! ranges, keeps the stored hashes of the tree and its signed checkpoints, and grants the
//! integrator lease.

use std::{fmt, sync::Arc, time::Duration};

use aesp_core::{Clock, Error, ErrorCode, Result};
use async_trait::async_trait;
use bytes::Bytes;

use crate::merkle::Hash;

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
#[async_trait]
pub trait LogStorage: Send + Sync + fmt::Debug + 'static {
    /// Appends a batch durably; returns the index of its first entry.
    async fn append(&self, entries: &[Bytes]) -> Result<u64>;

    /// The current sizes.
    async fn state(&self) -> Result<StorageState>;

    /// The entries `start..end` (or a non-empty prefix of them).
    async fn read_entries(&self, start: u64, end: u64) -> Result<Vec<Bytes>>;

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

pub(crate) fn check_range(start: u64, end: u64, size: u64) -> Result<()> {
    if start >= end || end > size {
        return Err(Error::invalid_argument(format!(
            "entries {start}..{end} are not in a log of size {size}"
        )));
    }
    Ok(())
}
