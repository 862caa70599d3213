//! [`EmbeddedStore`]: the durable state store in a data directory, on redb.

use std::{
    collections::{BTreeSet, VecDeque},
    fmt,
    fs::File,
    ops::Bound,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
};

use aesp_core::{
    Error, ErrorCode, EventKind, KeyValue, RangePage, RangeRequest, Result, Revision, StateStore,
    StateStoreOptions, Txn, TxnOutcome, WatchEvent, WatchStream,
    state::{Compare, Op, Progress, check_key, lazy_watch},
};
use async_trait::async_trait;
use redb::{
    Database, ReadTransaction, ReadableDatabase as _, ReadableTable, StorageBackend, TableDefinition,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    codec::{Corrupt, Version, decode_keys, encode_keys},
    datadir,
};

/// Every version of every key still in history: `(key, revision)` → version record.
const VERSIONS: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("versions");
/// The keys each commit changed: `revision` → key list.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// `revision` and `compacted`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The most transactions that share one commit (and one fsync).
const MAX_GROUP: usize = 512;
/// Requests queued for the writer before callers wait (backpressure).
const QUEUE: usize = 4096;
/// How many revisions a watcher reads per read transaction.
const WATCH_BATCH: usize = 256;

/// The durable [`StateStore`]: a data directory holding a redb database.
///
/// # Durability
/// A transaction is acknowledged (`txn` returns) only after the redb commit that holds it has
/// completed with [`redb::Durability::Immediate`]: its pages and the commit record are written
/// and `fdatasync`ed. Concurrent transactions are **group-committed**: one writer thread applies
/// every queued transaction in order, each with its own revision and compares, in one redb
/// write transaction with one sync, then acknowledges them all. If that commit fails, each
/// caller gets the error; after an I/O error the outcome of that group is unknown until the
/// store is reopened (each transaction wholly applied or not at all), and the store refuses
/// further writes rather than guess. After a crash (process or power), reopening finds every
/// acknowledged transaction, and no transaction in part.
///
/// # The data directory
/// `FORMAT` (the format version; a directory from a newer version is refused), `LOCK` (held
/// exclusively while open; a second process gets a clear error), `state.redb`.
///
/// # Backup
/// [`backup`](Self::backup) copies a consistent snapshot to a new directory while the store
/// keeps serving reads and writes; the copy is itself a data directory to open.
///
/// Clones share the store. The database closes when the last clone and the last watch stream
/// are dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    name: Arc<str>,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    notify: Arc<watch::Sender<Revision>>,
    _lock: Option<File>,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has answered everything queued.
        drop(self.requests.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(writer) = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = writer.join();
        }
    }
}

enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnOutcome>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

/// Maps a redb error to an AESP error naming the database.
fn db_error(name: &str, e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::Corrupted(message) => Error::corrupted(format!("`{name}` is corrupted: {message}")),
        redb::Error::DatabaseAlreadyOpen => {
            Error::new(ErrorCode::FailedPrecondition, format!("`{name}` is already open in another process"))
        }
        redb::Error::UpgradeRequired(version) => Error::new(
            ErrorCode::FailedPrecondition,
            format!("`{name}` has redb file format {version}, which this version cannot open"),
        ),
        other => Error::unavailable(format!("state store `{name}`: {other}")).with_source(other),
    }
}

fn corrupt(name: &str, e: Corrupt) -> Error {
    Error::corrupted(format!("`{name}`: {}", e.0))
}

impl EmbeddedStore {
    /// Opens the data directory `dir`, creating it if needed.
    pub fn open(dir: impl AsRef<Path>, options: StateStoreOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let lock = datadir::prepare(dir)?;
        let path = dir.join(datadir::DB_FILE);
        let name = path.display().to_string();
        let db = Database::builder().create(&path).map_err(|e| db_error(&name, e))?;
        Self::start(db, name, options, Some(lock))
    }

    /// Opens a store on any redb storage backend (for encryption at rest, or fault injection
    /// in tests). No data directory, format file or lock is involved: the backend is the
    /// caller's to keep exclusive.
    pub fn open_backend(backend: impl StorageBackend, options: StateStoreOptions) -> Result<Self> {
        let name = format!("{backend:?}");
        let db = Database::builder().create_with_backend(backend).map_err(|e| db_error(&name, e))?;
        Self::start(db, name, options, None)
    }

    fn start(db: Database, name: String, options: StateStoreOptions, lock: Option<File>) -> Result<Self> {
        let name: Arc<str> = name.into();
        let db = Arc::new(db);
        let state = {
            let err = |e: redb::Error| db_error(&name, e);
            let wtx = db.begin_write().map_err(|e| err(e.into()))?;
            let state = {
                wtx.open_table(VERSIONS).map_err(|e| err(e.into()))?;
                wtx.open_table(LOG).map_err(|e| err(e.into()))?;
                let meta = wtx.open_table(META).map_err(|e| err(e.into()))?;
                let read = |k: &str| -> Result<u64> {
                    Ok(meta.get(k).map_err(|e| err(e.into()))?.map_or(0, |g| g.value()))
                };
                WriterState {
                    revision: read("revision")?,
                    compacted: read("compacted")?,
                    history: options.history_revisions.max(1),
                }
            };
            wtx.commit().map_err(|e| err(e.into()))?;
            state
        };
        let (notify, _) = watch::channel(state.revision);
        let notify = Arc::new(notify);
        let (requests, queue) = mpsc::channel(QUEUE);
        let writer =
            Writer { db: Arc::clone(&db), name: Arc::clone(&name), notify: Arc::clone(&notify), state };
        let handle = std::thread::Builder::new()
            .name("aesp-store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| Error::internal("cannot start the state-store writer thread").with_source(e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                name,
                requests: Mutex::new(Some(requests)),
                writer: Mutex::new(Some(handle)),
                notify,
                _lock: lock,
            }),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| Error::unavailable(format!("state store `{}` is closed", self.inner.name)))
    }

    async fn send<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::unavailable(format!("the writer of `{}` stopped", self.inner.name));
        self.sender()?.send(make(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn read(&self) -> Result<Snapshot> {
        let tx = self.inner.db.begin_read().map_err(|e| db_error(&self.inner.name, e))?;
        Ok(Snapshot { tx, name: Arc::clone(&self.inner.name) })
    }

    /// Copies a consistent snapshot of the store into the new data directory `dest` (which
    /// must not exist, or be empty) while the store keeps running; returns the revision the
    /// copy holds. Open the copy with [`EmbeddedStore::open`] to restore.
    pub async fn backup(&self, dest: impl AsRef<Path>) -> Result<Revision> {
        let snapshot = self.read()?;
        let dest: PathBuf = dest.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || snapshot.copy_to(&dest))
            .await
            .map_err(|e| Error::internal("the backup task failed").with_source(e))?
    }
}

/// A read snapshot.
struct Snapshot {
    tx: ReadTransaction,
    name: Arc<str>,
}

impl Snapshot {
    fn err(&self, e: impl Into<redb::Error>) -> Error {
        db_error(&self.name, e)
    }

    fn meta(&self) -> Result<(Revision, Revision)> {
        let meta = self.tx.open_table(META).map_err(|e| self.err(e))?;
        let read =
            |k: &str| -> Result<u64> { Ok(meta.get(k).map_err(|e| self.err(e))?.map_or(0, |g| g.value())) };
        Ok((read("revision")?, read("compacted")?))
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let versions = self.tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
        match latest(&versions, key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some((revision, bytes)) => {
                Ok(Version::decode(&bytes).map_err(|e| corrupt(&self.name, e))?.into_kv(key, revision))
            }
        }
    }

    fn range(&self, request: &RangeRequest) -> Result<RangePage> {
        let limit = request.effective_limit()?;
        let (current, compacted) = self.meta()?;
        let revision = request.revision.unwrap_or(current);
        if revision < compacted {
            return Err(Error::compacted(revision, compacted));
        }
        if revision > current {
            return Err(Error::invalid_argument(format!(
                "revision {revision} is in the future; the current revision is {current}"
            )));
        }
        let versions = self.tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
        let start: Bound<(&[u8], u64)> = match &request.start_after {
            Some(after) if after.as_slice() >= request.prefix.as_slice() => {
                Bound::Excluded((after.as_slice(), u64::MAX))
            }
            _ => Bound::Included((request.prefix.as_slice(), 0)),
        };
        let mut kvs: Vec<KeyValue> = Vec::new();
        let mut next_cursor = None;
        // The newest version at or before `revision` of the key being scanned.
        let mut pending: Option<(Vec<u8>, Revision, Vec<u8>)> = None;
        let mut iter = versions.range::<(&[u8], u64)>((start, Bound::Unbounded)).map_err(|e| self.err(e))?;
        loop {
            let entry = iter.next().transpose().map_err(|e| self.err(e))?;
            let (key, rev, bytes) = match &entry {
                Some((k, v)) => {
                    let (key, rev) = k.value();
                    (Some(key), rev, Some(v.value()))
                }
                None => (None, 0, None),
            };
            let in_prefix = key.is_some_and(|k| k.starts_with(&request.prefix));
            // Emit the pending key when the scan moves past it.
            if pending.as_ref().is_some_and(|(pk, _, _)| !in_prefix || key != Some(pk.as_slice()))
                && let Some((pk, prev, pbytes)) = pending.take()
                && let Some(kv) =
                    Version::decode(&pbytes).map_err(|e| corrupt(&self.name, e))?.into_kv(&pk, prev)
            {
                if kvs.len() == limit {
                    next_cursor = kvs.last().map(|kv| kv.key.clone());
                    break;
                }
                kvs.push(kv);
            }
            let (Some(key), Some(bytes), true) = (key, bytes, in_prefix) else { break };
            if rev <= revision {
                pending = Some((key.to_vec(), rev, bytes.to_vec()));
            }
        }
        Ok(RangePage { kvs, revision, next_cursor })
    }

    /// Reads the changes of up to [`WATCH_BATCH`] commits from `next` on; returns the events
    /// for `prefix` and the revision to read next.
    fn changes(&self, prefix: &[u8], next: Revision, out: &mut VecDeque<WatchEvent>) -> Result<Revision> {
        let (_, compacted) = self.meta()?;
        if next < compacted {
            return Err(Error::compacted(next, compacted));
        }
        let log = self.tx.open_table(LOG).map_err(|e| self.err(e))?;
        let versions = self.tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
        let mut after = next;
        for entry in log.range(next..).map_err(|e| self.err(e))?.take(WATCH_BATCH) {
            let (revision, keys) = entry.map_err(|e| self.err(e))?;
            let revision = revision.value();
            for key in decode_keys(keys.value()).map_err(|e| corrupt(&self.name, e))? {
                if !key.starts_with(prefix) {
                    continue;
                }
                let bytes =
                    versions.get((key.as_slice(), revision)).map_err(|e| self.err(e))?.ok_or_else(|| {
                        Error::corrupted(format!("`{}`: the log names a missing version", self.name))
                    })?;
                let event = match Version::decode(bytes.value()).map_err(|e| corrupt(&self.name, e))? {
                    Version::Delete => WatchEvent {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key,
                            value: Vec::new(),
                            create_revision: 0,
                            mod_revision: revision,
                            version: 0,
                        },
                    },
                    put => WatchEvent {
                        kind: EventKind::Put,
                        kv: put
                            .into_kv(&key, revision)
                            .ok_or_else(|| Error::internal("a put without a value"))?,
                    },
                };
                out.push_back(event);
            }
            after = revision + 1;
        }
        Ok(after)
    }

    fn copy_to(&self, dest: &Path) -> Result<Revision> {
        if dest.exists() && std::fs::read_dir(dest).map(|mut d| d.next().is_some()).unwrap_or(true) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("backup destination `{}` exists and is not empty", dest.display()),
            ));
        }
        std::fs::create_dir_all(dest)
            .map_err(|e| Error::unavailable(format!("cannot create `{}`", dest.display())).with_source(e))?;
        datadir::write_format(dest)?;
        let path = dest.join(datadir::DB_FILE);
        let out_name = path.display().to_string();
        let out_err = |e: redb::Error| db_error(&out_name, e);
        let out = Database::builder().create(&path).map_err(|e| out_err(e.into()))?;
        let wtx = out.begin_write().map_err(|e| out_err(e.into()))?;
        let (revision, compacted) = self.meta()?;
        {
            let source = self.tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
            let mut target = wtx.open_table(VERSIONS).map_err(|e| out_err(e.into()))?;
            for entry in source.iter().map_err(|e| self.err(e))? {
                let (k, v) = entry.map_err(|e| self.err(e))?;
                target.insert(k.value(), v.value()).map_err(|e| out_err(e.into()))?;
            }
            let source = self.tx.open_table(LOG).map_err(|e| self.err(e))?;
            let mut target = wtx.open_table(LOG).map_err(|e| out_err(e.into()))?;
            for entry in source.iter().map_err(|e| self.err(e))? {
                let (k, v) = entry.map_err(|e| self.err(e))?;
                target.insert(k.value(), v.value()).map_err(|e| out_err(e.into()))?;
            }
            let mut meta = wtx.open_table(META).map_err(|e| out_err(e.into()))?;
            meta.insert("revision", revision).map_err(|e| out_err(e.into()))?;
            meta.insert("compacted", compacted).map_err(|e| out_err(e.into()))?;
        }
        wtx.commit().map_err(|e| out_err(e.into()))?;
        Ok(revision)
    }
}

/// The newest version of `key`: its revision and record.
fn latest(
    versions: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    key: &[u8],
) -> std::result::Result<Option<(Revision, Vec<u8>)>, redb::StorageError> {
    let last = versions.range::<(&[u8], u64)>((key, 0)..=(key, u64::MAX))?.next_back().transpose()?;
    Ok(last.map(|(k, v)| (k.value().1, v.value().to_vec())))
}

#[derive(Clone, Debug)]
struct WriterState {
    revision: Revision,
    compacted: Revision,
    history: u64,
}

/// The single writer: applies queued requests in groups, one redb commit per group.
struct Writer {
    db: Arc<Database>,
    name: Arc<str>,
    notify: Arc<watch::Sender<Revision>>,
    state: WriterState,
}

enum Reply {
    Txn(oneshot::Sender<Result<TxnOutcome>>, Result<TxnOutcome>),
    Compact(oneshot::Sender<Result<()>>, Result<()>),
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        while let Some(first) = queue.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            let before = self.state.clone();
            match self.commit_group(group) {
                Ok(replies) => {
                    let revision = self.state.revision;
                    self.notify.send_if_modified(|current| {
                        let advanced = revision > *current;
                        *current = revision;
                        advanced
                    });
                    for reply in replies {
                        match reply {
                            Reply::Txn(to, outcome) => drop(to.send(outcome)),
                            Reply::Compact(to, outcome) => drop(to.send(outcome)),
                        }
                    }
                }
                Err((error, senders)) => {
                    self.state = before;
                    for to in senders {
                        let copy = Error::new(error.code(), error.message());
                        match to {
                            Reply::Txn(to, _) => drop(to.send(Err(copy))),
                            Reply::Compact(to, _) => drop(to.send(Err(copy))),
                        }
                    }
                }
            }
        }
    }

    /// Applies a group in one write transaction. On failure nothing is committed and the
    /// replies come back (with placeholder outcomes) so every caller hears of the error.
    fn commit_group(&mut self, group: Vec<Request>) -> std::result::Result<Vec<Reply>, (Error, Vec<Reply>)> {
        let mut replies = Vec::with_capacity(group.len());
        let result = self.apply_group(group, &mut replies);
        match result {
            Ok(()) => Ok(replies),
            Err(error) => Err((error, replies)),
        }
    }

    fn apply_group(&mut self, group: Vec<Request>, replies: &mut Vec<Reply>) -> Result<()> {
        let name = Arc::clone(&self.name);
        let err = |e: redb::Error| db_error(&name, e);
        let wtx = match self.db.begin_write() {
            Ok(wtx) => wtx,
            Err(e) => {
                for request in group {
                    replies.push(placeholder(request));
                }
                return Err(err(e.into()));
            }
        };
        let mut failure = None;
        {
            let tables = (wtx.open_table(VERSIONS), wtx.open_table(LOG), wtx.open_table(META));
            let (mut versions, mut log, mut meta) = match tables {
                (Ok(v), Ok(l), Ok(m)) => (v, l, m),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    for request in group {
                        replies.push(placeholder(request));
                    }
                    return Err(err(e.into()));
                }
            };
            for request in group {
                if failure.is_some() {
                    replies.push(placeholder(request));
                    continue;
                }
                match request {
                    Request::Txn(txn, to) => match self.apply_txn(&mut versions, &mut log, txn) {
                        Ok(outcome) => replies.push(Reply::Txn(to, Ok(outcome))),
                        Err(e) => {
                            failure = Some(e);
                            replies.push(Reply::Txn(to, Err(Error::internal("not applied"))));
                        }
                    },
                    Request::Compact(to_revision, to) => {
                        if to_revision > self.state.revision {
                            let e = Error::invalid_argument(format!(
                                "cannot compact to revision {to_revision}, after the current revision {}",
                                self.state.revision
                            ));
                            replies.push(Reply::Compact(to, Err(e)));
                            continue;
                        }
                        match self.compact(&mut versions, &mut log, to_revision) {
                            Ok(()) => replies.push(Reply::Compact(to, Ok(()))),
                            Err(e) => {
                                failure = Some(e);
                                replies.push(Reply::Compact(to, Err(Error::internal("not applied"))));
                            }
                        }
                    }
                }
            }
            if failure.is_none() {
                let state = &self.state;
                if state.revision.saturating_sub(state.compacted) >= state.history.saturating_mul(2) {
                    let to = state.revision - state.history + 1;
                    if let Err(e) = self.compact(&mut versions, &mut log, to) {
                        failure = Some(e);
                    }
                }
            }
            if failure.is_none() {
                let first = meta.insert("revision", self.state.revision).map(drop);
                let written = first.and_then(|()| meta.insert("compacted", self.state.compacted).map(drop));
                if let Err(e) = written {
                    failure = Some(err(e.into()));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        wtx.commit().map_err(|e| err(e.into()))
    }

    fn apply_txn(
        &mut self,
        versions: &mut redb::Table<(&'static [u8], u64), &'static [u8]>,
        log: &mut redb::Table<u64, &'static [u8]>,
        txn: Txn,
    ) -> Result<TxnOutcome> {
        let name = Arc::clone(&self.name);
        let err = |e: redb::StorageError| db_error(&name, e);
        let live = |versions: &redb::Table<(&'static [u8], u64), &'static [u8]>,
                    key: &[u8]|
         -> Result<Option<(Revision, Version)>> {
            match latest(versions, key).map_err(err)? {
                None => Ok(None),
                Some((revision, bytes)) => match Version::decode(&bytes).map_err(|e| corrupt(&name, e))? {
                    Version::Delete => Ok(None),
                    put => Ok(Some((revision, put))),
                },
            }
        };
        for (index, compare) in txn.compares.iter().enumerate() {
            let actual = live(versions, compare.key())?.map(|(r, _)| r);
            let holds = match compare {
                Compare::Absent(_) => actual.is_none(),
                Compare::ModRevision(_, revision) => actual == Some(*revision),
            };
            if !holds {
                return Ok(TxnOutcome::CompareFailed { index, actual, revision: self.state.revision });
            }
        }
        let revision = self.state.revision + 1;
        let mut changed: Vec<Vec<u8>> = Vec::with_capacity(txn.ops.len());
        for op in txn.ops {
            match op {
                Op::Put(key, value) => {
                    let (create_revision, version) = match live(versions, &key)? {
                        Some((_, Version::Put { create_revision, version, .. })) => {
                            (create_revision, version + 1)
                        }
                        _ => (revision, 1),
                    };
                    let record = Version::Put { create_revision, version, value }.encode();
                    versions.insert((key.as_slice(), revision), record.as_slice()).map_err(err)?;
                    changed.push(key);
                }
                Op::Delete(key) => {
                    if live(versions, &key)?.is_some() {
                        versions
                            .insert((key.as_slice(), revision), Version::Delete.encode().as_slice())
                            .map_err(err)?;
                        changed.push(key);
                    }
                }
            }
        }
        if changed.is_empty() {
            return Ok(TxnOutcome::Committed { revision: self.state.revision });
        }
        let keys = encode_keys(changed.iter().map(Vec::as_slice));
        log.insert(revision, keys.as_slice()).map_err(err)?;
        self.state.revision = revision;
        Ok(TxnOutcome::Committed { revision })
    }

    /// Discards history before `to`: the log entries before it, and every version that a newer
    /// version at or before `to` supersedes. The versions of revision `to` itself stay, so a
    /// watch from `to` still sees its changes.
    fn compact(
        &mut self,
        versions: &mut redb::Table<(&'static [u8], u64), &'static [u8]>,
        log: &mut redb::Table<u64, &'static [u8]>,
        to: Revision,
    ) -> Result<()> {
        if to <= self.state.compacted {
            return Ok(());
        }
        let name = Arc::clone(&self.name);
        let err = |e: redb::StorageError| db_error(&name, e);
        let mut touched = BTreeSet::new();
        let mut revisions = Vec::new();
        for entry in log.range(..to).map_err(err)? {
            let (revision, keys) = entry.map_err(err)?;
            revisions.push(revision.value());
            touched.extend(decode_keys(keys.value()).map_err(|e| corrupt(&name, e))?);
        }
        for revision in revisions {
            log.remove(revision).map_err(err)?;
        }
        for key in touched {
            let mut old: Vec<(Revision, bool)> = Vec::new();
            for entry in
                versions.range::<(&[u8], u64)>((key.as_slice(), 0)..=(key.as_slice(), to)).map_err(err)?
            {
                let (k, v) = entry.map_err(err)?;
                old.push((k.value().1, v.value() == Version::Delete.encode().as_slice()));
            }
            let Some(&(visible, is_delete)) = old.last() else { continue };
            for &(revision, _) in &old {
                // Keep the version visible at `to`, unless it is a deletion from before `to`:
                // with no version left, the key reads as absent, as it is.
                if revision < visible || (is_delete && visible < to) {
                    versions.remove((key.as_slice(), revision)).map_err(err)?;
                }
            }
        }
        self.state.compacted = to;
        Ok(())
    }
}

fn placeholder(request: Request) -> Reply {
    match request {
        Request::Txn(_, to) => Reply::Txn(to, Err(Error::internal("not applied"))),
        Request::Compact(_, to) => Reply::Compact(to, Err(Error::internal("not applied"))),
    }
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        check_key(key)?;
        self.read()?.get(key)
    }

    async fn range(&self, request: RangeRequest) -> Result<RangePage> {
        self.read()?.range(&request)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        txn.check()?;
        self.send(|reply| Request::Txn(txn, reply)).await
    }

    async fn watch(&self, prefix: &[u8], from: Revision) -> Result<WatchStream> {
        let from = from.max(1);
        let (_, compacted) = self.read()?.meta()?;
        if from < compacted {
            return Err(Error::compacted(from, compacted));
        }
        // The stream holds the store (and so the database) open while it lives.
        let store = self.clone();
        let prefix = prefix.to_vec();
        Ok(lazy_watch(from, self.inner.notify.subscribe(), move |next, out| {
            Ok(Progress { next: store.read()?.changes(&prefix, next, out)? })
        }))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.read()?.meta()?.0)
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.read()?.meta()?.1)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.send(|reply| Request::Compact(revision, reply)).await
    }
}
