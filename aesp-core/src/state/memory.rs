//! [`MemoryStore`]: the in-memory state store, for tests and for embedding without durability.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{
    EventKind, KeyValue, Op, Progress, RangePage, RangeRequest, Revision, StateStore, StateStoreOptions, Txn,
    TxnOutcome, WatchEvent, WatchStream, lazy_watch,
};
use crate::error::{Error, Result};

/// How many log entries a watcher copies per lock acquisition.
const WATCH_BATCH: usize = 256;

/// A [`StateStore`] in memory, with multi-version history for consistent scans and watches.
///
/// Durability: none; the state lives as long as the store. Clones share the same store.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Carries the current revision; watchers wait on it.
    notify: watch::Sender<Revision>,
}

#[derive(Debug)]
struct State {
    revision: Revision,
    compacted: Revision,
    history: u64,
    /// Each key's versions, oldest first; a `None` value is a deletion.
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    /// The changes of each commit, in revision order.
    log: VecDeque<(Revision, Vec<WatchEvent>)>,
}

#[derive(Clone, Debug)]
struct Version {
    mod_revision: Revision,
    create_revision: Revision,
    version: u64,
    value: Option<Arc<Vec<u8>>>,
}

impl Version {
    fn kv(&self, key: &[u8]) -> Option<KeyValue> {
        let value = self.value.as_ref()?;
        Some(KeyValue {
            key: key.to_vec(),
            value: value.as_ref().clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        })
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(StateStoreOptions::default())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new(options: StateStoreOptions) -> Self {
        let state = State {
            revision: 0,
            compacted: 0,
            history: options.history_revisions.max(1),
            keys: BTreeMap::new(),
            log: VecDeque::new(),
        };
        let (notify, _) = watch::channel(0);
        Self { shared: Arc::new(Shared { state: Mutex::new(state), notify }) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock, and every mutation leaves the state
        // consistent before the next fallible step, so a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// The latest version of `key` at or before `revision`.
    fn version_at(versions: &[Version], revision: Revision) -> Option<&Version> {
        let n = versions.partition_point(|v| v.mod_revision <= revision);
        n.checked_sub(1).and_then(|i| versions.get(i))
    }

    fn check_readable(&self, revision: Revision) -> Result<()> {
        if revision < self.compacted {
            return Err(Error::compacted(revision, self.compacted));
        }
        if revision > self.revision {
            return Err(Error::invalid_argument(format!(
                "revision {revision} is in the future; the current revision is {}",
                self.revision
            )));
        }
        Ok(())
    }

    fn apply(&mut self, txn: Txn) -> TxnOutcome {
        for (index, compare) in txn.compares.iter().enumerate() {
            let actual = self.keys.get(compare.key()).and_then(|v| v.last()).filter(|v| v.value.is_some());
            let actual = actual.map(|v| v.mod_revision);
            let holds = match compare {
                super::Compare::Absent(_) => actual.is_none(),
                super::Compare::ModRevision(_, revision) => actual == Some(*revision),
            };
            if !holds {
                return TxnOutcome::CompareFailed { index, actual, revision: self.revision };
            }
        }
        let revision = self.revision + 1;
        let mut events = Vec::new();
        for op in txn.ops {
            match op {
                Op::Put(key, value) => {
                    let versions = self.keys.entry(key.clone()).or_default();
                    let live = versions.last().filter(|v| v.value.is_some());
                    let version = Version {
                        mod_revision: revision,
                        create_revision: live.map_or(revision, |v| v.create_revision),
                        version: live.map_or(1, |v| v.version + 1),
                        value: Some(Arc::new(value)),
                    };
                    if let Some(kv) = version.kv(&key) {
                        events.push(WatchEvent { kind: EventKind::Put, kv });
                    }
                    versions.push(version);
                }
                Op::Delete(key) => {
                    let Some(versions) = self.keys.get_mut(&key) else { continue };
                    if versions.last().is_some_and(|v| v.value.is_some()) {
                        versions.push(Version {
                            mod_revision: revision,
                            create_revision: 0,
                            version: 0,
                            value: None,
                        });
                        let kv = KeyValue {
                            key,
                            value: Vec::new(),
                            create_revision: 0,
                            mod_revision: revision,
                            version: 0,
                        };
                        events.push(WatchEvent { kind: EventKind::Delete, kv });
                    }
                }
            }
        }
        if events.is_empty() {
            return TxnOutcome::Committed { revision: self.revision };
        }
        self.revision = revision;
        self.log.push_back((revision, events));
        // Compact in bulk once twice the window has built up, so the cost is amortised.
        if revision.saturating_sub(self.compacted) >= self.history.saturating_mul(2) {
            self.compact(revision - self.history + 1);
        }
        TxnOutcome::Committed { revision }
    }

    fn compact(&mut self, to: Revision) {
        if to <= self.compacted {
            return;
        }
        self.compacted = to;
        while self.log.front().is_some_and(|(r, _)| *r < to) {
            self.log.pop_front();
        }
        self.keys.retain(|_, versions| {
            // Keep the version visible at `to` and everything after it.
            let visible = versions.partition_point(|v| v.mod_revision <= to);
            let drop = visible.saturating_sub(1);
            versions.drain(..drop);
            // A deletion that is the oldest version left reads the same as no version at all.
            if versions.first().is_some_and(|v| v.value.is_none() && v.mod_revision <= to) {
                versions.remove(0);
            }
            !versions.is_empty()
        });
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        super::check_key(key)?;
        let state = self.lock();
        Ok(state.keys.get(key).and_then(|v| v.last()).and_then(|v| v.kv(key)))
    }

    async fn range(&self, request: RangeRequest) -> Result<RangePage> {
        let limit = request.effective_limit()?;
        let state = self.lock();
        let revision = request.revision.unwrap_or(state.revision);
        state.check_readable(revision)?;
        let start = match &request.start_after {
            Some(after) if after.as_slice() >= request.prefix.as_slice() => {
                std::ops::Bound::Excluded(after.clone())
            }
            _ => std::ops::Bound::Included(request.prefix.clone()),
        };
        let mut kvs = Vec::new();
        let mut next_cursor = None;
        for (key, versions) in state.keys.range((start, std::ops::Bound::Unbounded)) {
            if !key.starts_with(&request.prefix) {
                break;
            }
            let Some(kv) = State::version_at(versions, revision).and_then(|v| v.kv(key)) else {
                continue;
            };
            if kvs.len() == limit {
                next_cursor = kvs.last().map(|kv: &KeyValue| kv.key.clone());
                break;
            }
            kvs.push(kv);
        }
        Ok(RangePage { kvs, revision, next_cursor })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        txn.check()?;
        let outcome = {
            let mut state = self.lock();
            state.apply(txn)
        };
        if let TxnOutcome::Committed { revision } = outcome {
            self.shared.notify.send_if_modified(|current| {
                let advanced = revision > *current;
                *current = (*current).max(revision);
                advanced
            });
        }
        Ok(outcome)
    }

    async fn watch(&self, prefix: &[u8], from: Revision) -> Result<WatchStream> {
        let from = from.max(1);
        {
            let state = self.lock();
            if from < state.compacted {
                return Err(Error::compacted(from, state.compacted));
            }
        }
        let shared = Arc::clone(&self.shared);
        let prefix = prefix.to_vec();
        Ok(lazy_watch(from, self.shared.notify.subscribe(), move |next, out| {
            read_log(&shared, &prefix, next, out)
        }))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.lock().revision)
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.lock().compacted)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut state = self.lock();
        if revision > state.revision {
            return Err(Error::invalid_argument(format!(
                "cannot compact to revision {revision}, after the current revision {}",
                state.revision
            )));
        }
        state.compact(revision);
        Ok(())
    }
}

/// Reads the log from `next` for a watcher of `prefix`: up to [`WATCH_BATCH`] commits.
fn read_log(
    shared: &Shared,
    prefix: &[u8],
    next: Revision,
    out: &mut VecDeque<WatchEvent>,
) -> Result<Progress> {
    let state = shared.lock();
    if next < state.compacted {
        return Err(Error::compacted(next, state.compacted));
    }
    let start = state.log.partition_point(|(r, _)| *r < next);
    let mut after = next;
    for (revision, events) in state.log.iter().skip(start).take(WATCH_BATCH) {
        out.extend(events.iter().filter(|e| e.kv.key.starts_with(prefix)).cloned());
        after = revision + 1;
    }
    Ok(Progress { next: after })
}
