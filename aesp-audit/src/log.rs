//! The audit log: group-committed durable appends, an integrator that hashes the tree and
//! signs checkpoints, and proofs.

use std::{
    future::Future,
    ops::Range,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use aesp_core::{Error, ErrorCode, Result, proto::v1::AuditEvent};
use bytes::Bytes;
use prost::Message as _;
use tokio::sync::{AcquireError, Semaphore, SemaphorePermit, TryAcquireError, mpsc, oneshot, watch};

use crate::{
    checkpoint::{Checkpoint, ConsistencyProof, SignedCheckpoint, TlogProof},
    index::AuditIndex,
    intake::{Entries, Group, Intake, Limits, Taker, Ticket},
    merkle::{
        Hash, RightEdge, consistency_ranges, fold_range, inclusion_ranges, leaf_hash, range_subtrees,
        stored_hash_index,
    },
    note::{NoteSigner, NoteVerifier},
    storage::{BlockingAppend, Lease, LogStorage},
};

/// Options of an [`AuditLog`].
#[derive(Clone, Debug)]
pub struct AuditLogOptions {
    /// The checkpoint origin: the log's unique name, such as `audit.example.com/acme`.
    pub origin: String,
    /// The most entries one group commit writes.
    pub max_batch_entries: usize,
    /// The most bytes one group commit writes.
    pub max_batch_bytes: usize,
    /// How long the committer waits for more appends before writing a group that is not full
    /// (zero: write as soon as the previous write is done; groups still form while it runs).
    pub max_delay: Duration,
    /// Under load, the least time between the starts of two group commits, for storage that
    /// commits on a thread of its own (segment files): a group commits as soon as the one
    /// before is durable, unless the runtime's workers are all busy (tasks wait in its global
    /// queue), when it waits until this long after the one before started, to gather more
    /// appends. Zero turns the pacing off; at most one second. The default, 1.5 ms, suits disks
    /// whose sync costs tens of µs of CPU (system calls, interrupts, a virtual machine's
    /// exits): without it, small groups spend more CPU on syncs than their wait saves
    /// (measured on segment files, docs/PERFORMANCE.md).
    pub commit_interval: Duration,
    /// The most entries waiting to be written; appends wait beyond it (backpressure).
    pub max_pending_entries: usize,
    /// A checkpoint is signed at least this often while entries arrive.
    pub checkpoint_interval: Duration,
    /// A checkpoint is signed after this many new entries.
    pub checkpoint_every: u64,
    /// The name under which this process holds the integrator lease.
    pub integrator: String,
    /// How long a lease lasts; it is renewed once a third of it has passed.
    pub lease_ttl: Duration,
    /// How many of the latest entries the in-memory query index covers (at least 1,024). It
    /// costs about 60 bytes an entry; queries, statistics, exports and reports that reach
    /// older entries read them from storage and index them on the way, a chunk at a time, so
    /// they are slower there but see the same events. Opening reads only this many entries
    /// back to build the index.
    pub index_entries: u64,
}

impl AuditLogOptions {
    /// Defaults for a log of `origin`.
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            max_batch_entries: 16 * 1024,
            max_batch_bytes: 16 << 20,
            max_delay: Duration::ZERO,
            commit_interval: Duration::from_micros(1500),
            max_pending_entries: 256 * 1024,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_every: 100_000,
            integrator: aesp_core::new_id(&aesp_core::SystemClock),
            lease_ttl: Duration::from_secs(30),
            index_entries: 2 << 20,
        }
    }
}

/// A durable group of entries, with their leaf hashes, as the committer hands it to the
/// index and the integrator.
struct Batch {
    entries: Vec<Bytes>,
    leaves: Vec<Hash>,
}

enum Command {
    Checkpoint(oneshot::Sender<Result<SignedCheckpoint>>),
}

/// What the committer has done since the log opened ([`AuditLog::commit_stats`]): counters
/// that only grow, so that the difference of two readings describes what happened between
/// them (the group size and commit time under a given load, say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitStats {
    /// Group commits made durable: one storage append each, holding every append that queued
    /// while the one before was being written.
    pub groups: u64,
    /// Entries those group commits made durable.
    pub entries: u64,
    /// Group commits that failed (each of their appends got the storage's error).
    pub failed: u64,
    /// The time from handing each durable group to the storage until the committer went on
    /// with it, summed: the storage's write and sync, and the time the committer then waited
    /// for the runtime to run it again. Its mean over `groups` is how long an append waits, at
    /// least, once its group has been handed to the storage.
    pub commit_time: Duration,
    /// The most entries one group commit made durable.
    pub largest_group: u64,
}

/// The committer's counters, written by it alone and read by [`AuditLog::commit_stats`].
#[derive(Debug, Default)]
struct CommitCounters {
    groups: AtomicU64,
    entries: AtomicU64,
    failed: AtomicU64,
    commit_nanos: AtomicU64,
    largest_group: AtomicU64,
}

impl CommitCounters {
    /// Counts a durable group of `entries` that took `took`.
    fn committed(&self, entries: u64, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.commit_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.largest_group.fetch_max(entries, Ordering::Relaxed);
    }

    fn read(&self) -> CommitStats {
        CommitStats {
            groups: self.groups.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            commit_time: Duration::from_nanos(self.commit_nanos.load(Ordering::Relaxed)),
            largest_group: self.largest_group.load(Ordering::Relaxed),
        }
    }
}

/// The verifiable, durable, signed audit log.
///
/// Appends resolve once durable; a background integrator keeps the tree's stored hashes and
/// signs a checkpoint every [`AuditLogOptions::checkpoint_interval`] or
/// [`AuditLogOptions::checkpoint_every`] entries. Proofs are served for checkpointed sizes.
#[derive(Debug, Clone)]
pub struct AuditLog {
    storage: Arc<dyn LogStorage>,
    appends: Arc<Appends>,
    commands: mpsc::Sender<Command>,
    permits: Arc<Semaphore>,
    options: Arc<AuditLogOptions>,
    verifier: NoteVerifier,
    counters: Arc<CommitCounters>,
    pub(crate) index: Arc<AuditIndex>,
    /// The number of durable entries this process knows of.
    pub(crate) durable: watch::Receiver<u64>,
}

/// The handle through which a log's clones append; the last one dropped closes the intake, so
/// that the committer writes what is queued and stops.
struct Appends(Arc<Intake>);

impl Drop for Appends {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl std::fmt::Debug for Appends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Appends")
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checkpoint")
    }
}

impl AuditLog {
    /// Opens the log on `storage`, signing checkpoints with `signer`. Must be called within a
    /// Tokio runtime; the committer and integrator run as tasks of it.
    pub async fn open(
        storage: Arc<dyn LogStorage>,
        signer: NoteSigner,
        options: AuditLogOptions,
    ) -> Result<Self> {
        if options.max_batch_entries == 0 || options.max_pending_entries < options.max_batch_entries {
            return Err(Error::invalid_argument(
                "max_pending_entries must be at least max_batch_entries > 0",
            ));
        }
        if options.commit_interval > MAX_COMMIT_INTERVAL {
            return Err(Error::invalid_argument(format!(
                "commit_interval is {:?}, over the most, {MAX_COMMIT_INTERVAL:?}",
                options.commit_interval
            )));
        }
        let integrator = Integrator::start(Arc::clone(&storage), signer.clone(), options.clone()).await?;
        let limits = Limits { entries: options.max_batch_entries, bytes: options.max_batch_bytes };
        // Storage that can append by blocking gets a committer on a thread of its own.
        let appender = storage.blocking_appender();
        let taker = if appender.is_some() { Taker::Thread } else { Taker::Task };
        let intake = Arc::new(Intake::new(limits, taker));
        let (batches_tx, batches_rx) = mpsc::channel(64);
        let (index_tx, index_rx) = mpsc::channel(64);
        let (commands, command_rx) = mpsc::channel(16);
        let (durable_tx, durable) = watch::channel(storage.state().await?.size);
        let options = Arc::new(options);
        let index = Arc::new(AuditIndex::new(options.index_entries));
        let permits = Arc::new(Semaphore::new(options.max_pending_entries));
        let counters = Arc::new(CommitCounters::default());
        let committer = Committer {
            options: Arc::clone(&options),
            permits: Arc::clone(&permits),
            counters: Arc::clone(&counters),
        };
        let publisher = Publisher { batches: batches_tx, index: index_tx, durable: durable_tx };
        committer.start(Arc::clone(&storage), appender, Arc::clone(&intake), publisher);
        tokio::spawn(integrator.run(batches_rx, command_rx));
        tokio::spawn(follow(Arc::clone(&storage), Arc::clone(&index), durable.clone(), index_rx));
        Ok(Self {
            index,
            durable,
            storage,
            appends: Arc::new(Appends(intake)),
            commands,
            permits,
            verifier: signer.verifier().clone(),
            options,
            counters,
        })
    }

    /// What the committer has done since the log opened: group commits, their entries, the
    /// time they took. Each counter is read on its own, so a reading taken while a group
    /// commit completes may count it in some counters and not yet in others.
    pub fn commit_stats(&self) -> CommitStats {
        self.counters.read()
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &AuditLogOptions {
        &self.options
    }

    /// The key that verifies this log's checkpoints.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn LogStorage> {
        &self.storage
    }

    /// Appends one event; resolves with its index once it is durable.
    pub async fn append(&self, event: &AuditEvent) -> Result<u64> {
        self.append_one(Bytes::from(event.encode_to_vec())).await
    }

    /// Appends one entry given as its exact bytes (for an event, its canonical encoding);
    /// resolves with its index once it is durable.
    ///
    /// The entry is checked against the limits of one append and hashed now; it is queued for
    /// the next group commit when the returned future is first polled.
    pub fn append_one(&self, entry: Bytes) -> Append<'_> {
        match self.check_batch(std::slice::from_ref(&entry)) {
            Ok(count) => Append::new(self, Entries::one(entry), count),
            Err(e) => Append { log: self, count: 0, state: AppendState::Refused(Some(e)) },
        }
    }

    /// Appends events as one batch with consecutive indices; resolves once all are durable.
    pub async fn append_batch(&self, events: &[AuditEvent]) -> Result<Range<u64>> {
        self.append_encoded(events.iter().map(|e| Bytes::from(e.encode_to_vec())).collect()).await
    }

    /// Appends entries given as their exact bytes (for events, the canonical encoding).
    pub async fn append_encoded(&self, entries: Vec<Bytes>) -> Result<Range<u64>> {
        let count = self.check_batch(&entries)?;
        let first = Append::new(self, Entries::many(entries), count).await?;
        Ok(first..first.saturating_add(u64::from(count)))
    }

    /// The number of `entries`, if they are within the limits of one append (checked before
    /// anything is hashed).
    fn check_batch(&self, all: &[Bytes]) -> Result<u32> {
        let count = all.len();
        if count == 0 {
            return Err(Error::invalid_argument("nothing to append"));
        }
        let bytes: usize = all.iter().map(Bytes::len).sum();
        if count > self.options.max_batch_entries || bytes > self.options.max_batch_bytes {
            return Err(Error::invalid_argument(format!(
                "a batch of {count} entries and {bytes} bytes is over the limit of {} entries and {} bytes",
                self.options.max_batch_entries, self.options.max_batch_bytes
            )));
        }
        u32::try_from(count).map_err(|_| Error::invalid_argument("batch too large"))
    }

    /// Integrates every durable entry and signs a checkpoint of it now.
    pub async fn checkpoint(&self) -> Result<SignedCheckpoint> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Checkpoint(tx))
            .await
            .map_err(|_| Error::unavailable("the audit log stopped"))?;
        rx.await.map_err(|_| Error::unavailable("the audit log stopped"))?
    }

    /// Signs a final checkpoint of everything durable (the log keeps working for other clones).
    pub async fn close(self) -> Result<SignedCheckpoint> {
        self.checkpoint().await
    }

    /// The latest signed checkpoint, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>> {
        match self.storage.latest_checkpoint().await? {
            Some(stored) => Ok(Some(SignedCheckpoint::parse(&stored.note)?)),
            None => Ok(None),
        }
    }

    /// The entry at `index`, as stored.
    pub async fn entry(&self, index: u64) -> Result<Bytes> {
        let mut entries = self.storage.read_entries(index, index.saturating_add(1)).await?;
        entries.pop().ok_or_else(|| Error::not_found(format!("no entry {index}")))
    }

    /// The inclusion proof of entry `index` in the tree of `size` leaves (`size` must be
    /// integrated, which a checkpoint of it guarantees).
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        hashes_of_ranges(self.storage.as_ref(), &inclusion_ranges(index, size)?).await
    }

    /// The consistency proof between the trees of `old_size` and `new_size` leaves.
    pub async fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<ConsistencyProof> {
        let hashes =
            hashes_of_ranges(self.storage.as_ref(), &consistency_ranges(old_size, new_size)?).await?;
        Ok(ConsistencyProof { old_size, new_size, hashes })
    }

    /// A C2SP `tlog-proof` of entry `index` against the latest checkpoint.
    pub async fn prove(&self, index: u64) -> Result<TlogProof> {
        let checkpoint =
            self.latest_checkpoint().await?.filter(|c| index < c.checkpoint().size).ok_or_else(|| {
                Error::new(ErrorCode::FailedPrecondition, format!("no checkpoint covers entry {index} yet"))
            })?;
        let hashes = self.inclusion_proof(index, checkpoint.checkpoint().size).await?;
        Ok(TlogProof { extra: None, index, hashes, checkpoint })
    }
}

/// The hashes of `ranges`, read from the stored hashes in one call.
pub(crate) async fn hashes_of_ranges(storage: &dyn LogStorage, ranges: &[(u64, u64)]) -> Result<Vec<Hash>> {
    let plans: Vec<Vec<(u32, u64)>> = ranges.iter().map(|&(lo, hi)| range_subtrees(lo, hi)).collect();
    let indexes: Vec<u64> = plans.iter().flatten().map(|&(level, n)| stored_hash_index(level, n)).collect();
    let hashes = storage.read_hashes(&indexes).await?;
    let mut at = 0usize;
    let mut out = Vec::with_capacity(plans.len());
    for plan in &plans {
        let part = hashes
            .get(at..at.saturating_add(plan.len()))
            .ok_or_else(|| Error::internal("short hash read"))?;
        out.push(fold_range(part));
        at = at.saturating_add(plan.len());
    }
    Ok(out)
}

/// An append to an [`AuditLog`] ([`AuditLog::append_one`]); resolves with the entry's index
/// once it is durable.
///
/// A named future rather than an `async fn`: it sits in the future of every audited operation
/// (twice in a tool invocation's), and its few words are cheaper to build and to move than the
/// nested states of async functions, each built and then copied into the one above it.
#[must_use = "an append does nothing unless awaited"]
pub struct Append<'a> {
    log: &'a AuditLog,
    /// The entries, and so the pending-entry permits, it takes.
    count: u32,
    state: AppendState<'a>,
}

/// A permit future of the pending-entry semaphore, built only when an append has to wait.
type Acquiring<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<SemaphorePermit<'a>, AcquireError>> + Send + 'a>>;

enum AppendState<'a> {
    /// Refused before anything was queued (taken when polled).
    Refused(Option<Error>),
    /// Checked and hashed, taking its permits: at once when there are enough, or through
    /// `waiting` (the committer gives them back once the entries are written, or failed).
    Permits { entries: Option<Entries>, waiting: Option<Acquiring<'a>> },
    /// Holding its permits: queued, or to be queued when polled.
    Queued(Ticket),
}

impl<'a> Append<'a> {
    fn new(log: &'a AuditLog, entries: Entries, count: u32) -> Self {
        Append { log, count, state: AppendState::Permits { entries: Some(entries), waiting: None } }
    }
}

impl Future for Append<'_> {
    type Output = Result<u64>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<u64>> {
        let this = self.get_mut();
        let (log, count) = (this.log, this.count);
        loop {
            match &mut this.state {
                AppendState::Refused(error) => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| Error::internal("an append was polled after it resolved"))));
                }
                AppendState::Permits { entries, waiting } => {
                    // Taken at once when there are enough (as `acquire_many` would: in tokio
                    // both take free permits first, and released ones go to queued waiters
                    // first), without building the future that waits.
                    let permit = match waiting {
                        Some(acquire) => match acquire.as_mut().poll(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(permit) => permit.map_err(drop),
                        },
                        None => match log.permits.try_acquire_many(count) {
                            Ok(permit) => Ok(permit),
                            Err(TryAcquireError::NoPermits) => {
                                *waiting = Some(Box::pin(log.permits.acquire_many(count)));
                                continue;
                            }
                            Err(TryAcquireError::Closed) => Err(()),
                        },
                    };
                    let next = match (permit, entries.take()) {
                        (Ok(permit), Some(entries)) => {
                            permit.forget();
                            AppendState::Queued(Ticket::Unqueued(entries))
                        }
                        (Ok(_), None) => AppendState::Refused(None),
                        (Err(()), _) => {
                            AppendState::Refused(Some(Error::unavailable("the audit log is closed")))
                        }
                    };
                    this.state = next;
                }
                // Entries never queued (the committer has stopped) are not written, so their
                // permits come back here.
                AppendState::Queued(ticket) => {
                    return log.appends.0.poll_append(ticket, cx, || log.permits.add_permits(count as usize));
                }
            }
        }
    }
}

impl std::fmt::Debug for Append<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            AppendState::Refused(_) => "refused",
            AppendState::Permits { .. } => "taking permits",
            AppendState::Queued(Ticket::Unqueued(_)) => "to be queued",
            AppendState::Queued(Ticket::Queued(..)) => "queued",
            AppendState::Queued(Ticket::Spent) => "resolved",
        };
        f.debug_struct("Append").field("entries", &self.count).field("state", &state).finish()
    }
}

/// Keeps the index up with the log: it indexes the batches the committer hands over, and
/// first catches up with what the storage held at open (a rebuild).
async fn follow(
    storage: Arc<dyn LogStorage>,
    index: Arc<AuditIndex>,
    durable: watch::Receiver<u64>,
    mut batches: mpsc::Receiver<(u64, Arc<Batch>)>,
) {
    let at_open = *durable.borrow();
    // An error here leaves the rest to the next query's catch-up, which reports it.
    let _ = index.catch_up(storage.as_ref(), at_open).await;
    while let Some((first, batch)) = batches.recv().await {
        let _ = index.ingest(storage.as_ref(), first, &batch.entries).await;
    }
}

/// The most [`AuditLogOptions::commit_interval`]: under load, every append may wait that long.
const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How many tasks waiting in the runtime's global queue mean that its workers are all busy
/// (the load under which [`AuditLogOptions::commit_interval`] applies); with fewer, a group
/// commits at once.
const SATURATED_QUEUE: usize = 16;

/// Makes durable groups visible: to `durable`, the index and the integrator.
struct Publisher {
    batches: mpsc::Sender<(u64, Arc<Batch>)>,
    index: mpsc::Sender<(u64, Arc<Batch>)>,
    durable: watch::Sender<u64>,
}

impl Publisher {
    /// Publishes a durable group, then acknowledges its appends: once an append returns,
    /// readers see it.
    fn publish(&self, first: u64, mut group: Group) {
        let (entries, leaves) = group.take_entries();
        // One batch, shared by the index and the integrator.
        let all = Arc::new(Batch { entries, leaves });
        let end = first.saturating_add(all.entries.len() as u64);
        self.durable.send_if_modified(|size| {
            let grew = end > *size;
            *size = (*size).max(end);
            grew
        });
        // Hints: when a channel is full, its reader reads the entries back instead.
        let _ = self.index.try_send((first, Arc::clone(&all)));
        let _ = self.batches.try_send((first, all));
        group.acknowledge(first);
    }
}

/// The committer's state, whichever way it runs.
struct Committer {
    options: Arc<AuditLogOptions>,
    /// The pending-entry permits, given back as each group is written.
    permits: Arc<Semaphore>,
    counters: Arc<CommitCounters>,
}

/// Held by the running committer: when it ends, however it ends, the intake stops taking
/// appends and fails those queued, rather than leave them waiting for a committer.
struct Taking(Arc<Intake>);

impl Drop for Taking {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Committer {
    /// Starts committing the groups of `intake` to `storage`: on a thread of its own when the
    /// storage can append by blocking, otherwise as a task of the current runtime.
    fn start(
        self,
        storage: Arc<dyn LogStorage>,
        appender: Option<Arc<dyn BlockingAppend>>,
        intake: Arc<Intake>,
        publisher: Publisher,
    ) {
        let intake = Taking(intake);
        let Some(appender) = appender else {
            tokio::spawn(self.run(storage, intake, publisher));
            return;
        };
        // The thread hands each durable group to a task of the runtime, which publishes it and
        // wakes its appenders from a worker: one wakeup crosses threads per group, not one per
        // append and reader.
        let (durable, durable_rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_durable(durable_rx, publisher));
        let runtime = tokio::runtime::Handle::current();
        let slot = Arc::new(std::sync::Mutex::new(Some((self, intake, durable))));
        let taken = Arc::clone(&slot);
        let spawned = std::thread::Builder::new().name("aesp-audit-commit".into()).spawn(move || {
            let taken = taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some((committer, intake, durable)) = taken {
                committer.run_on_thread(appender.as_ref(), &intake, &durable, &runtime);
            }
        });
        if spawned.is_err() {
            // No thread to be had: commit as a task, as for any other storage, publishing
            // through the task already started.
            let taken = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some((committer, intake, durable)) = taken {
                intake.0.set_taker(Taker::Task);
                tokio::spawn(committer.run_forwarding(storage, intake, durable));
            }
        }
    }

    /// After a group's write that began at `started`: counts it and hands it to `durable`, or
    /// fails each of its appends with the storage's error; gives its permits back either way.
    fn finish(
        &self,
        group: Group,
        appended: Result<u64>,
        started: Instant,
        durable: impl FnOnce(u64, Group),
    ) {
        let written = group.entries.len();
        match appended {
            Ok(first) => {
                self.counters.committed(written as u64, started.elapsed());
                durable(first, group);
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                group.fail(e);
            }
        }
        self.permits.add_permits(written);
    }

    /// The committer as a task: groups form while the previous one is written.
    async fn run(self, storage: Arc<dyn LogStorage>, intake: Taking, publisher: Publisher) {
        self.run_with(storage, intake, |first, group| publisher.publish(first, group)).await;
    }

    /// [`run`](Self::run), handing durable groups to [`publish_durable`].
    async fn run_forwarding(
        self,
        storage: Arc<dyn LogStorage>,
        intake: Taking,
        durable: mpsc::UnboundedSender<(u64, Group)>,
    ) {
        self.run_with(storage, intake, |first, group| forward(&durable, first, group)).await;
    }

    async fn run_with(self, storage: Arc<dyn LogStorage>, intake: Taking, durable: impl Fn(u64, Group)) {
        let intake = &intake.0;
        loop {
            if !intake.wait().await {
                return;
            }
            if !self.options.max_delay.is_zero() && !intake.has_full_group() {
                tokio::time::sleep(self.options.max_delay).await;
            }
            let Some(group) = intake.take() else { continue };
            let started = Instant::now();
            let appended = storage.append(&group.entries).await;
            self.finish(group, appended, started, &durable);
        }
    }

    /// The committer on a thread of its own, appending by blocking: a group commits as soon as
    /// the one before is durable, except under load ([`SATURATED_QUEUE`]), when it commits no
    /// sooner than [`AuditLogOptions::commit_interval`] after the one before started, to
    /// gather more.
    fn run_on_thread(
        self,
        appender: &dyn BlockingAppend,
        intake: &Taking,
        durable: &mpsc::UnboundedSender<(u64, Group)>,
        runtime: &tokio::runtime::Handle,
    ) {
        let intake = &intake.0;
        let mut last_start: Option<Instant> = None;
        while intake.wait_blocking() {
            // The later of the pacing under load and `max_delay` (`None` is before any time).
            let interval = self.options.commit_interval;
            let paced = last_start
                .filter(|_| !interval.is_zero() && runtime.metrics().global_queue_depth() >= SATURATED_QUEUE)
                .map(|last| last + interval);
            let delayed = (!self.options.max_delay.is_zero() && !intake.has_full_group())
                .then(|| Instant::now() + self.options.max_delay);
            if let Some(until) = paced.max(delayed) {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
            let Some(group) = intake.take() else { continue };
            let started = Instant::now();
            last_start = Some(started);
            let appended = appender.append_blocking(&group.entries);
            self.finish(group, appended, started, |first, group| forward(durable, first, group));
            appender.after_append();
        }
    }
}

/// Hands a durable group to [`publish_durable`]; if that task is gone (with its runtime, and
/// the readers with it), acknowledges the group's appends from here.
fn forward(durable: &mpsc::UnboundedSender<(u64, Group)>, first: u64, group: Group) {
    if let Err(mpsc::error::SendError((first, group))) = durable.send((first, group)) {
        group.acknowledge(first);
    }
}

/// Publishes and acknowledges, from a task of the runtime, the groups the committer's thread
/// made durable.
async fn publish_durable(mut groups: mpsc::UnboundedReceiver<(u64, Group)>, publisher: Publisher) {
    while let Some((first, group)) = groups.recv().await {
        publisher.publish(first, group);
    }
}

/// How many stored hashes the integrator gathers before it writes them (they need to be in
/// storage only by the next checkpoint, which writes what is gathered first).
const GATHERED_HASHES: usize = 8192;

struct Integrator {
    storage: Arc<dyn LogStorage>,
    signer: NoteSigner,
    options: AuditLogOptions,
    lease: Option<(Lease, tokio::time::Instant)>,
    /// The tree integrated so far; `stored` and the gathered `hashes` make it up.
    edge: RightEdge,
    /// The tree whose stored hashes are in storage.
    stored: RightEdge,
    checkpointed: u64,
    last_checkpoint: Option<SignedCheckpoint>,
    /// The stored hashes of the leaves `stored.size()..edge.size()`, not written yet.
    hashes: Vec<Hash>,
}

/// The integrated tree as the storage has it: its right edge and latest checkpoint.
async fn load_tree(storage: &dyn LogStorage) -> Result<(RightEdge, Option<SignedCheckpoint>)> {
    let state = storage.state().await?;
    if state.integrated_size > state.size {
        return Err(Error::corrupted(format!(
            "the log holds {} entries but {} were integrated and checkpointed: entries are missing",
            state.size, state.integrated_size
        )));
    }
    let n = state.integrated_size;
    // The perfect subtrees of n's binary decomposition, largest first.
    let mut parts = Vec::new();
    let mut lo = 0u64;
    for level in (0..64u32).rev() {
        if n & (1u64 << level) != 0 {
            parts.push(stored_hash_index(level, lo >> level));
            lo += 1u64 << level;
        }
    }
    let stack = storage.read_hashes(&parts).await?;
    let edge = RightEdge::from_parts(n, stack).ok_or_else(|| Error::internal("bad right edge"))?;
    let last = match storage.latest_checkpoint().await? {
        Some(c) => Some(SignedCheckpoint::parse(&c.note)?),
        None => None,
    };
    if let Some(c) = &last
        && c.checkpoint().size == n
        && c.checkpoint().root_hash != edge.root()
    {
        return Err(Error::corrupted("the stored hashes do not match the latest checkpoint"));
    }
    Ok((edge, last))
}

impl Integrator {
    async fn start(
        storage: Arc<dyn LogStorage>,
        signer: NoteSigner,
        options: AuditLogOptions,
    ) -> Result<Self> {
        let (edge, last_checkpoint) = load_tree(storage.as_ref()).await?;
        let mut integrator = Self {
            storage,
            signer,
            checkpointed: last_checkpoint.as_ref().map_or(0, |c| c.checkpoint().size),
            last_checkpoint,
            options,
            lease: None,
            stored: edge.clone(),
            edge,
            hashes: Vec::new(),
        };
        // Another process may integrate (a shared database): then this one only appends
        // until the lease comes free.
        match integrator.hold().await {
            Ok(_) => {}
            Err(e) if e.code() == ErrorCode::Conflict => {}
            Err(e) => return Err(e),
        }
        Ok(integrator)
    }

    async fn run(
        mut self,
        mut batches: mpsc::Receiver<(u64, Arc<Batch>)>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut tick = tokio::time::interval(self.options.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = batches.recv() => {
                    let Some((first, batch)) = batch else { break };
                    if self.integrate_batch(first, &batch.leaves).await.is_ok()
                        && self.edge.size().saturating_sub(self.checkpointed) >= self.options.checkpoint_every
                    {
                        let _ = self.sign().await;
                    }
                }
                command = commands.recv() => {
                    let Some(Command::Checkpoint(reply)) = command else { break };
                    let result = self.checkpoint_now().await;
                    let _ = reply.send(result);
                }
                _ = tick.tick() => {
                    let _ = self.checkpoint_now().await;
                }
            }
        }
        // The log was dropped: sign what is durable, then give the lease up.
        let _ = self.checkpoint_now().await;
        if let Some((lease, _)) = self.lease.take() {
            let _ = self.storage.release_lease(&lease).await;
        }
    }

    /// The lease, renewed when a third of its time has passed; on a new grant the tree is
    /// reloaded, since another integrator may have moved it on.
    async fn hold(&mut self) -> Result<Lease> {
        if let Some((lease, at)) = &self.lease
            && at.elapsed() < self.options.lease_ttl / 3
        {
            return Ok(lease.clone());
        }
        let previous = self.lease.take().map(|(l, _)| l.token);
        let lease = self.storage.acquire_lease(&self.options.integrator, self.options.lease_ttl).await?;
        if previous != Some(lease.token) {
            let (edge, last) = load_tree(self.storage.as_ref()).await?;
            self.stored = edge.clone();
            self.hashes.clear();
            self.edge = edge;
            self.checkpointed = last.as_ref().map_or(0, |c| c.checkpoint().size);
            self.last_checkpoint = last;
        }
        self.lease = Some((lease.clone(), tokio::time::Instant::now()));
        Ok(lease)
    }

    /// Integrates a durable batch starting at `first`, given by its leaf hashes.
    async fn integrate_batch(&mut self, first: u64, leaves: &[Hash]) -> Result<()> {
        self.hold().await?;
        let size = self.edge.size();
        let end = first.saturating_add(leaves.len() as u64);
        if end <= size {
            return Ok(());
        }
        if first > size {
            self.integrate_to(first).await?;
        }
        let skip = usize::try_from(self.edge.size().saturating_sub(first)).unwrap_or(usize::MAX);
        self.add(leaves.get(skip..).unwrap_or_default()).await
    }

    async fn integrate_to(&mut self, target: u64) -> Result<()> {
        while self.edge.size() < target {
            let entries = self.storage.read_entries(self.edge.size(), target).await?;
            if entries.is_empty() {
                return Err(Error::internal("the storage returned no entries"));
            }
            let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
            self.add(&leaves).await?;
        }
        Ok(())
    }

    /// Adds leaves, given by their hashes, to the tree; its new stored hashes are gathered
    /// and written once there are [`GATHERED_HASHES`] of them (or by the next checkpoint).
    async fn add(&mut self, leaves: &[Hash]) -> Result<()> {
        if leaves.is_empty() {
            return Ok(());
        }
        self.hold().await?;
        let Self { edge, hashes, .. } = self;
        for leaf in leaves {
            edge.push(*leaf, |h| hashes.push(*h));
        }
        if self.hashes.len() >= GATHERED_HASHES { self.write_hashes().await } else { Ok(()) }
    }

    /// Writes the gathered stored hashes. On failure the tree falls back to what storage has,
    /// and the leaves after it are integrated again from storage.
    async fn write_hashes(&mut self) -> Result<()> {
        let lease = self.hold().await?;
        if self.hashes.is_empty() {
            // Nothing gathered (or a new lease reloaded the tree from storage).
            return Ok(());
        }
        let result =
            self.storage.append_hashes(&lease, self.stored.size(), self.edge.size(), &self.hashes).await;
        match result {
            Ok(()) => {
                self.stored = self.edge.clone();
                self.hashes.clear();
                Ok(())
            }
            Err(e) => {
                if e.code() == ErrorCode::Conflict {
                    // Lost the lease, or another integrator moved on: start again from storage.
                    self.lease = None;
                }
                self.edge = self.stored.clone();
                self.hashes.clear();
                Err(e)
            }
        }
    }

    async fn checkpoint_now(&mut self) -> Result<SignedCheckpoint> {
        match self.checkpoint_once().await {
            // The lease lapsed by the storage's clock (a long pause): take it again, once.
            Err(e) if e.code() == ErrorCode::Conflict => {
                self.lease = None;
                self.checkpoint_once().await
            }
            other => other,
        }
    }

    async fn checkpoint_once(&mut self) -> Result<SignedCheckpoint> {
        self.hold().await?;
        let size = self.storage.state().await?.size;
        self.integrate_to(size).await?;
        match &self.last_checkpoint {
            Some(c) if c.checkpoint().size == self.edge.size() => Ok(c.clone()),
            _ => self.sign().await,
        }
    }

    async fn sign(&mut self) -> Result<SignedCheckpoint> {
        self.write_hashes().await?;
        let lease = self.hold().await?;
        let checkpoint = Checkpoint {
            origin: self.options.origin.clone(),
            size: self.edge.size(),
            root_hash: self.edge.root(),
            extensions: Vec::new(),
        };
        let signed = SignedCheckpoint::sign(checkpoint, &self.signer).await?;
        if let Err(e) =
            self.storage.store_checkpoint(&lease, self.edge.size(), signed.to_text().as_bytes()).await
        {
            if e.code() == ErrorCode::Conflict {
                self.lease = None;
            }
            return Err(e);
        }
        self.checkpointed = self.edge.size();
        self.last_checkpoint = Some(signed.clone());
        Ok(signed)
    }
}
