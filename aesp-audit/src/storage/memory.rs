//! The in-memory log storage: for tests and for embedding without durability.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use aesp_core::{Clock, Error, Result, SystemClock};
use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Leaf, Lease, LeaseTable, LogStorage, PruneRequest, StorageState, StoredCheckpoint, Tombstone,
    check_checkpoint, check_hash_append, check_prune, check_range,
};
use crate::merkle::Hash;

#[derive(Debug)]
struct Inner {
    entries: Vec<Leaf>,
    hashes: Vec<Hash>,
    integrated: u64,
    checkpoints: Vec<StoredCheckpoint>,
    leases: LeaseTable,
}

/// A log kept in memory (nothing survives the process).
#[derive(Debug)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl MemoryStorage {
    /// An empty log whose leases expire by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: Vec::new(),
                hashes: Vec::new(),
                integrated: 0,
                checkpoints: Vec::new(),
                leases: LeaseTable::new(clock),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn state(&self) -> StorageState {
        StorageState { size: self.entries.len() as u64, integrated_size: self.integrated }
    }
}

fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::invalid_argument("index too large"))
}

#[async_trait]
impl LogStorage for MemoryStorage {
    async fn append(&self, entries: &[Bytes]) -> Result<u64> {
        let mut inner = self.lock();
        let first = inner.entries.len() as u64;
        inner.entries.extend(entries.iter().cloned().map(Leaf::Entry));
        Ok(first)
    }

    async fn state(&self) -> Result<StorageState> {
        Ok(self.lock().state())
    }

    async fn read_leaves(&self, start: u64, end: u64) -> Result<Vec<Leaf>> {
        let inner = self.lock();
        check_range(start, end, inner.entries.len() as u64)?;
        Ok(inner.entries.get(to_usize(start)?..to_usize(end)?).unwrap_or_default().to_vec())
    }

    async fn prune(&self, request: PruneRequest<'_>) -> Result<u64> {
        let mut inner = self.lock();
        check_prune(inner.checkpoints.last(), &request)?;
        let mut pruned = 0u64;
        for &index in request.indexes {
            let leaf = inner
                .entries
                .get_mut(to_usize(index)?)
                .ok_or_else(|| Error::internal("a checkpointed entry is missing"))?;
            if let Leaf::Entry(bytes) = leaf {
                *leaf = Leaf::Pruned(Tombstone {
                    leaf_hash: crate::merkle::leaf_hash(bytes),
                    pruned_at_ms: request.pruned_at_ms,
                    rule: request.rule.to_owned(),
                    event_index: request.event_index,
                });
                pruned = pruned.saturating_add(1);
            }
        }
        Ok(pruned)
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Lease> {
        self.lock().leases.acquire(holder, ttl)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.lock().leases.release(lease);
        Ok(())
    }

    async fn append_hashes(&self, lease: &Lease, from: u64, to: u64, hashes: &[Hash]) -> Result<()> {
        let mut inner = self.lock();
        inner.leases.check(lease)?;
        check_hash_append(inner.state(), from, to, hashes.len())?;
        inner.hashes.extend_from_slice(hashes);
        inner.integrated = to;
        Ok(())
    }

    async fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>> {
        let inner = self.lock();
        indexes
            .iter()
            .map(|&i| {
                inner.hashes.get(to_usize(i)?).copied().ok_or_else(|| {
                    Error::invalid_argument(format!("stored hash {i} is beyond the integrated tree"))
                })
            })
            .collect()
    }

    async fn store_checkpoint(&self, lease: &Lease, size: u64, note: &[u8]) -> Result<()> {
        let mut inner = self.lock();
        inner.leases.check(lease)?;
        check_checkpoint(inner.state(), inner.checkpoints.last(), size)?;
        inner.checkpoints.push(StoredCheckpoint { size, note: Bytes::copy_from_slice(note) });
        Ok(())
    }

    async fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<StoredCheckpoint>> {
        let inner = self.lock();
        Ok(inner.checkpoints.iter().filter(|c| c.size >= from_size).take(limit).cloned().collect())
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        Ok(self.lock().checkpoints.last().cloned())
    }
}
