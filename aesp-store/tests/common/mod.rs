//! Shared test helpers: a store in a temporary directory, and a fault-injecting disk.
#![allow(dead_code, reason = "each test binary uses a different part of the helpers")]
#![expect(clippy::expect_used, reason = "test helpers fail by panicking")]

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use aesp_core::{
    KeyValue, RangePage, RangeRequest, Result, Revision, StateStore, StateStoreOptions, Txn, TxnOutcome,
    WatchStream,
};
use aesp_store::{EmbeddedStore, StorageBackend};
use async_trait::async_trait;

/// An embedded store that owns its temporary data directory.
#[derive(Debug)]
pub(crate) struct TempStore {
    pub(crate) store: EmbeddedStore,
    pub(crate) dir: tempfile::TempDir,
}

impl TempStore {
    pub(crate) fn new(options: StateStoreOptions) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = EmbeddedStore::open(dir.path(), options).expect("the store opens");
        Self { store, dir }
    }
}

#[async_trait]
impl StateStore for TempStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        self.store.get(key).await
    }
    async fn range(&self, request: RangeRequest) -> Result<RangePage> {
        self.store.range(request).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        self.store.txn(txn).await
    }
    async fn watch(&self, prefix: &[u8], from: Revision) -> Result<WatchStream> {
        self.store.watch(prefix, from).await
    }
    async fn current_revision(&self) -> Result<Revision> {
        self.store.current_revision().await
    }
    async fn compacted_revision(&self) -> Result<Revision> {
        self.store.compacted_revision().await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.store.compact(revision).await
    }
}

/// A disk in memory that loses everything not yet synced when it "crashes".
///
/// `durable` is what survived the last `sync_data`; `volatile` is what the process sees,
/// including writes since then (the page cache). [`FaultyDisk::crash`] returns a new disk
/// holding only the durable image, optionally with some of the unsynced writes torn in.
#[derive(Clone)]
pub(crate) struct FaultyDisk {
    state: Arc<Mutex<DiskState>>,
}

#[derive(Default)]
struct DiskState {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes).
    unsynced: Vec<(u64, Vec<u8>)>,
    /// After this many more writes or syncs, every write and sync fails (a dying disk).
    ops_left: Option<usize>,
    syncs: u64,
}

impl fmt::Debug for FaultyDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultyDisk")
    }
}

fn io(message: &str) -> std::io::Error {
    std::io::Error::other(message.to_owned())
}

impl FaultyDisk {
    pub(crate) fn new() -> Self {
        Self { state: Arc::new(Mutex::new(DiskState::default())) }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the disk fail every write and sync after `ops` more of them.
    pub(crate) fn fail_after(&self, ops: usize) {
        self.lock().ops_left = Some(ops);
    }

    pub(crate) fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// The disk as found after a power loss: the durable image plus those unsynced writes
    /// that `keep(i)` selects (all dropped with `|_| false`).
    pub(crate) fn crash(&self, mut keep: impl FnMut(usize) -> bool) -> FaultyDisk {
        let state = self.lock();
        let mut image = state.durable.clone();
        for (i, (offset, bytes)) in state.unsynced.iter().enumerate() {
            if keep(i) {
                apply(&mut image, *offset, bytes);
            }
        }
        FaultyDisk {
            state: Arc::new(Mutex::new(DiskState {
                durable: image.clone(),
                volatile: image,
                unsynced: Vec::new(),
                ops_left: None,
                syncs: 0,
            })),
        }
    }

    fn spend(state: &mut DiskState) -> std::io::Result<()> {
        match &mut state.ops_left {
            Some(0) => Err(io("injected disk failure")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn apply(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = usize::try_from(offset).expect("offset fits");
    let end = start + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image.get_mut(start..end).expect("resized to fit").copy_from_slice(bytes);
}

impl StorageBackend for FaultyDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.lock().volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let state = self.lock();
        let start = usize::try_from(offset).map_err(|_| io("offset"))?;
        let bytes = state.volatile.get(start..start + out.len()).ok_or_else(|| io("read past the end"))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut state = self.lock();
        Self::spend(&mut state)?;
        let len = usize::try_from(len).map_err(|_| io("length"))?;
        state.volatile.resize(len, 0);
        // A length change reaches the disk with the next sync, like the data.
        state.unsynced.push((len as u64, Vec::new()));
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut state = self.lock();
        Self::spend(&mut state)?;
        state.durable = state.volatile.clone();
        state.unsynced.clear();
        state.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut state = self.lock();
        Self::spend(&mut state)?;
        apply(&mut state.volatile, offset, data);
        state.unsynced.push((offset, data.to_vec()));
        Ok(())
    }
}
