//! Live subscriptions for SIEM sinks: every leaf from an index onward, read from storage, so a
//! slow subscriber never slows or loses appends; it sees how far behind it is and resumes
//! from an index.

use std::sync::Arc;

use aesp_core::{Error, Result};
use tokio::sync::watch;

use crate::{
    log::AuditLog,
    storage::{Leaf, LogStorage},
};

/// The most leaves one [`Subscription::next_batch`] returns by default.
pub const DEFAULT_SUBSCRIPTION_BATCH: u64 = 1024;

/// Leaves delivered to a subscriber, in log order without gaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionBatch {
    /// The index of the first leaf.
    pub first: u64,
    /// The leaves (entries, or tombstones of pruned ones).
    pub leaves: Vec<Leaf>,
    /// The log's durable size when the batch was read.
    pub log_size: u64,
}

impl SubscriptionBatch {
    /// The index after the last leaf: where to resume.
    pub fn next_index(&self) -> u64 {
        self.first.saturating_add(self.leaves.len() as u64)
    }

    /// How many durable leaves come after this batch: the subscriber's lag.
    pub fn behind(&self) -> u64 {
        self.log_size.saturating_sub(self.next_index())
    }
}

/// A live feed of the log from an index onward; see [`AuditLog::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    storage: Arc<dyn LogStorage>,
    durable: watch::Receiver<u64>,
    next: u64,
    max_batch: u64,
}

impl Subscription {
    /// The index the next batch starts at: resume a new subscription here.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// How many durable leaves the subscriber has not received yet.
    pub fn lag(&self) -> u64 {
        self.durable.borrow().saturating_sub(self.next)
    }

    /// Sets the most leaves one batch holds (at least 1).
    pub fn set_max_batch(&mut self, max: u64) {
        self.max_batch = max.max(1);
    }

    /// The next leaves, waiting until there are some; an [`aesp_core::ErrorCode::ServiceUnavailable`]
    /// error once the log is closed and everything was delivered.
    pub async fn next_batch(&mut self) -> Result<SubscriptionBatch> {
        let size = *self
            .durable
            .wait_for(|&size| size > self.next)
            .await
            .map_err(|_| Error::unavailable("the audit log is closed"))?;
        let end = size.min(self.next.saturating_add(self.max_batch));
        let leaves = self.storage.read_leaves(self.next, end).await?;
        if leaves.is_empty() {
            return Err(Error::internal("the storage returned no leaves"));
        }
        let batch = SubscriptionBatch { first: self.next, leaves, log_size: *self.durable.borrow() };
        self.next = batch.next_index();
        Ok(batch)
    }
}

impl AuditLog {
    /// The number of durable entries this process knows of.
    pub fn size(&self) -> u64 {
        *self.durable.borrow()
    }

    /// A live feed of every leaf from `from` on (`from` at most the current size).
    pub fn subscribe(&self, from: u64) -> Result<Subscription> {
        let size = self.size();
        if from > size {
            return Err(Error::invalid_argument(format!(
                "cannot subscribe from {from}: the log holds {size} entries"
            )));
        }
        Ok(Subscription {
            storage: Arc::clone(self.storage()),
            durable: self.durable.clone(),
            next: from,
            max_batch: DEFAULT_SUBSCRIPTION_BATCH,
        })
    }
}
