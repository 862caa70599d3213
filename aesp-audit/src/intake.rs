//! The committer's intake: where appends queue for the next group commit, and how each append
//! learns that its group is durable.
//!
//! An append adds its entries straight to the group being filled, under one lock, with its
//! task's waker; the committer takes whole groups. The appends of a group share one
//! [`Completion`], which its publisher fills once and which wakes them all, so an append costs
//! no allocation and no channel of its own: the cost of the handover is paid per group.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError},
    task::{Context, Poll, Waker},
};

use aesp_core::{Error, Result};
use bytes::Bytes;
use tokio::sync::Notify;

use crate::merkle::Hash;

/// The entries of one append (most carry one, which then needs no vector), each with its
/// leaf hash, computed by the appending task while the entry is still in its cache.
pub(crate) enum Entries {
    One(Bytes, Hash),
    Many(Vec<Bytes>, Vec<Hash>),
}

impl Entries {
    pub(crate) fn one(entry: Bytes) -> Self {
        let leaf = crate::merkle::leaf_hash(&entry);
        Entries::One(entry, leaf)
    }

    pub(crate) fn many(entries: Vec<Bytes>) -> Self {
        let leaves = entries.iter().map(|e| crate::merkle::leaf_hash(e)).collect();
        Entries::Many(entries, leaves)
    }

    fn len(&self) -> usize {
        match self {
            Entries::One(..) => 1,
            Entries::Many(entries, _) => entries.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Entries::One(entry, _) => entry.len(),
            Entries::Many(entries, _) => entries.iter().map(Bytes::len).sum(),
        }
    }
}

/// Where an append stands in the intake ([`Intake::poll_append`]).
pub(crate) enum Ticket {
    /// Its entries, not queued yet.
    Unqueued(Entries),
    /// Queued: its group's completion and its offset in the group.
    Queued(Arc<Completion>, u64),
    /// Resolved or refused.
    Spent,
}

/// How one group commit ended, shared by the appends in it: the index of its first entry, or
/// the storage's error.
pub(crate) struct Completion {
    outcome: OnceLock<std::result::Result<u64, Error>>,
    /// The wakers of appends polled again, by another task or after a spurious wakeup, before
    /// the group completed (the first poll's waker went into the group).
    late: Mutex<Vec<Waker>>,
}

impl Completion {
    /// Records the outcome (the first one recorded stands) and wakes every append of the group.
    fn complete(&self, outcome: std::result::Result<u64, Error>, wakers: Vec<Waker>) {
        let _ = self.outcome.set(outcome);
        // Taken after the outcome is set: an append that registers later sees the outcome.
        let late = std::mem::take(&mut *lock(&self.late));
        for waker in wakers.into_iter().chain(late) {
            waker.wake();
        }
    }

    /// The outcome for the append at `offset` in the group, if the group has completed.
    fn outcome(&self, offset: u64) -> Option<Result<u64>> {
        self.outcome.get().map(|outcome| match outcome {
            Ok(first) => Ok(first.saturating_add(offset)),
            Err(e) => Err(Error::new(e.code(), e.message().to_owned())),
        })
    }

    /// Polls for the outcome of the append at `offset`, registering `waker` if it is not in.
    fn poll(&self, offset: u64, waker: &Waker) -> Poll<Result<u64>> {
        if let Some(outcome) = self.outcome(offset) {
            return Poll::Ready(outcome);
        }
        let mut late = lock(&self.late);
        // Checked again under the lock, which `complete` takes after setting the outcome.
        if let Some(outcome) = self.outcome(offset) {
            return Poll::Ready(outcome);
        }
        if !late.iter().any(|w| w.will_wake(waker)) {
            late.push(waker.clone());
        }
        Poll::Pending
    }
}

/// A group commit being put together, then written, then published.
pub(crate) struct Group {
    pub(crate) entries: Vec<Bytes>,
    pub(crate) leaves: Vec<Hash>,
    bytes: usize,
    /// The waker of each append, as it was when it joined.
    wakers: Vec<Waker>,
    completion: Arc<Completion>,
}

impl Group {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            leaves: Vec::with_capacity(capacity),
            bytes: 0,
            wakers: Vec::with_capacity(capacity),
            completion: Arc::new(Completion { outcome: OnceLock::new(), late: Mutex::new(Vec::new()) }),
        }
    }

    /// Whether `entries` (`count` of them, `bytes` long) fit beside what the group holds; an
    /// empty group takes any append (each is within the limits on its own).
    fn fits(&self, count: usize, bytes: usize, limits: Limits) -> bool {
        self.entries.is_empty()
            || (self.entries.len().saturating_add(count) <= limits.entries
                && self.bytes.saturating_add(bytes) <= limits.bytes)
    }

    fn add(&mut self, entries: Entries, bytes: usize) {
        self.bytes = self.bytes.saturating_add(bytes);
        match entries {
            Entries::One(entry, leaf) => {
                self.entries.push(entry);
                self.leaves.push(leaf);
            }
            Entries::Many(entries, leaves) => {
                self.entries.extend(entries);
                self.leaves.extend(leaves);
            }
        }
    }

    /// The group's entries and their leaf hashes, taken out to be published.
    pub(crate) fn take_entries(&mut self) -> (Vec<Bytes>, Vec<Hash>) {
        (std::mem::take(&mut self.entries), std::mem::take(&mut self.leaves))
    }

    /// Ends the group: each append learns its index, `first` being the group's first.
    pub(crate) fn acknowledge(mut self, first: u64) {
        self.end(Ok(first));
    }

    /// Ends the group: each append gets (a copy of) `error`.
    pub(crate) fn fail(mut self, error: Error) {
        self.end(Err(error));
    }

    /// Records the group's outcome (the first one stands) and wakes its appends.
    fn end(&mut self, outcome: std::result::Result<u64, Error>) {
        let wakers = std::mem::take(&mut self.wakers);
        self.completion.complete(outcome, wakers);
    }
}

impl Drop for Group {
    /// A group dropped before it ended (its committer or publisher is gone) fails its appends
    /// rather than leave them waiting.
    fn drop(&mut self) {
        if self.completion.outcome.get().is_none() {
            self.end(Err(Error::unavailable("the audit log stopped")));
        }
    }
}

/// The limits of one group commit.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) entries: usize,
    pub(crate) bytes: usize,
}

/// Who takes the groups, and so how an append wakes it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taker {
    /// A thread of its own, waiting on a condition variable.
    Thread,
    /// A task of the runtime, waiting on a [`Notify`].
    Task,
}

struct State {
    /// Groups filled to the limits, oldest first, then the one being filled (the last); none
    /// is empty.
    groups: VecDeque<Group>,
    /// No more appends: the last handle of the log is gone.
    closed: bool,
    /// The committer waits for an append.
    waiting: bool,
    /// Who the committer is, to wake it.
    taker: Taker,
    /// The size of the latest group taken, to size the next one.
    last_size: usize,
}

/// The queue of group commits between the appends and the committer.
pub(crate) struct Intake {
    state: Mutex<State>,
    limits: Limits,
    thread_wake: Condvar,
    task_wake: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Intake {
    pub(crate) fn new(limits: Limits, taker: Taker) -> Self {
        Self {
            state: Mutex::new(State {
                groups: VecDeque::new(),
                closed: false,
                waiting: false,
                taker,
                last_size: 0,
            }),
            limits,
            thread_wake: Condvar::new(),
            task_wake: Notify::new(),
        }
    }

    /// Polls an append of `ticket`'s entries (within the limits of one group): the first poll
    /// queues them in the group being filled, with `cx`'s waker; later polls resolve, once their
    /// group is durable, with the index of the first. `UNAVAILABLE` once the log is closed or
    /// its committer stopped, after calling `refused` if the entries were never queued.
    pub(crate) fn poll_append(
        &self,
        ticket: &mut Ticket,
        cx: &mut Context<'_>,
        refused: impl FnOnce(),
    ) -> Poll<Result<u64>> {
        match std::mem::replace(ticket, Ticket::Spent) {
            Ticket::Queued(completion, offset) => {
                let poll = completion.poll(offset, cx.waker());
                if poll.is_pending() {
                    *ticket = Ticket::Queued(completion, offset);
                }
                poll
            }
            Ticket::Unqueued(entries) => match self.join(entries, cx.waker()) {
                Ok((completion, offset)) => {
                    *ticket = Ticket::Queued(completion, offset);
                    // The waker just joined with the entries: nothing to check until it wakes.
                    Poll::Pending
                }
                Err(e) => {
                    refused();
                    Poll::Ready(Err(e))
                }
            },
            Ticket::Spent => Poll::Ready(Err(Error::internal("an append was polled after it resolved"))),
        }
    }

    /// Adds `entries` to the group being filled (or a new one); the group's completion and the
    /// entries' offset in it.
    fn join(&self, entries: Entries, waker: &Waker) -> Result<(Arc<Completion>, u64)> {
        let (count, bytes) = (entries.len(), entries.bytes());
        let waker = waker.clone();
        let mut state = lock(&self.state);
        if state.closed {
            return Err(Error::unavailable("the audit log is closed"));
        }
        let fits = state.groups.back().is_some_and(|g| g.fits(count, bytes, self.limits));
        if !fits {
            // Room for half as much again as the last group took, so that the vectors rarely
            // grow while appends wait on the lock.
            let capacity =
                state.last_size.saturating_add(state.last_size / 2).max(count).min(self.limits.entries);
            state.groups.push_back(Group::with_capacity(capacity));
        }
        let Some(group) = state.groups.back_mut() else {
            return Err(Error::internal("the intake lost the group it added"));
        };
        let offset = group.entries.len() as u64;
        group.add(entries, bytes);
        group.wakers.push(waker);
        let ticket = (Arc::clone(&group.completion), offset);
        let wake = std::mem::replace(&mut state.waiting, false).then_some(state.taker);
        drop(state);
        if let Some(taker) = wake {
            self.wake(taker);
        }
        Ok(ticket)
    }

    fn wake(&self, taker: Taker) {
        match taker {
            Taker::Thread => self.thread_wake.notify_one(),
            Taker::Task => self.task_wake.notify_one(),
        }
    }

    /// Changes who takes the groups (a committer meant for a thread that could not start).
    pub(crate) fn set_taker(&self, taker: Taker) {
        lock(&self.state).taker = taker;
    }

    /// No more appends: the committer takes what is queued, then stops.
    pub(crate) fn close(&self) {
        let taker = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.taker
        };
        self.wake(taker);
    }

    /// The committer has stopped (or died): no more appends, and those queued fail.
    pub(crate) fn stop(&self) {
        let queued = {
            let mut state = lock(&self.state);
            state.closed = true;
            std::mem::take(&mut state.groups)
        };
        // Dropped outside the lock: each wakes its appends with an error.
        drop(queued);
    }

    /// Blocks until a group is queued (`true`), or the intake is closed and empty (`false`).
    pub(crate) fn wait_blocking(&self) -> bool {
        let mut state = lock(&self.state);
        loop {
            if !state.groups.is_empty() {
                return true;
            }
            if state.closed {
                return false;
            }
            state.waiting = true;
            state = self.thread_wake.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until a group is queued (`true`), or the intake is closed and empty (`false`).
    pub(crate) async fn wait(&self) -> bool {
        loop {
            {
                let mut state = lock(&self.state);
                if !state.groups.is_empty() {
                    return true;
                }
                if state.closed {
                    return false;
                }
                state.waiting = true;
            }
            // A wakeup between the unlock and here is kept by the `Notify` as a permit.
            self.task_wake.notified().await;
        }
    }

    /// Whether a group is queued.
    #[cfg(test)]
    fn has_queued(&self) -> bool {
        !lock(&self.state).groups.is_empty()
    }

    /// Whether more than the group being filled is queued (a full one waits).
    pub(crate) fn has_full_group(&self) -> bool {
        lock(&self.state).groups.len() > 1
    }

    /// The oldest queued group, taken whole.
    pub(crate) fn take(&self) -> Option<Group> {
        let mut state = lock(&self.state);
        let group = state.groups.pop_front()?;
        state.last_size = group.entries.len();
        Some(group)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        task::Wake,
    };

    use aesp_core::ErrorCode;

    /// Appends `entries` through `intake` and waits for the outcome.
    async fn append(intake: &Intake, entries: Entries, refused: impl FnOnce()) -> Result<u64> {
        let mut ticket = Ticket::Unqueued(entries);
        let mut refused = Some(refused);
        std::future::poll_fn(|cx| {
            intake.poll_append(&mut ticket, cx, || {
                if let Some(refused) = refused.take() {
                    refused();
                }
            })
        })
        .await
    }

    use super::*;

    /// A waker that counts its wakeups.
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted() -> (Arc<Counted>, Waker) {
        let count = Arc::new(Counted(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        (count, waker)
    }

    fn entry(n: u8) -> Entries {
        Entries::one(Bytes::from(vec![n; 10]))
    }

    fn intake(entries: usize, bytes: usize) -> Intake {
        Intake::new(Limits { entries, bytes }, Taker::Task)
    }

    fn ready(poll: Poll<Result<u64>>) -> Result<u64> {
        match poll {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => Err(Error::internal("still pending")),
        }
    }

    #[test]
    fn groups_split_at_the_limits_and_each_append_learns_its_own_index() {
        let intake = intake(3, 1000);
        let (count, waker) = counted();
        let joined: Vec<_> = (0..4).map(|n| intake.join(entry(n), &waker).unwrap()).collect();
        // The fourth entry starts a second group, which the batch of two joins.
        let batch =
            intake.join(Entries::many(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]), &waker);
        let batch = batch.unwrap();
        let offsets: Vec<u64> = joined.iter().chain([&batch]).map(|(_, offset)| *offset).collect();
        assert_eq!(offsets, [0, 1, 2, 0, 1]);
        assert!(intake.has_full_group());

        let first = intake.take().unwrap();
        assert_eq!(first.entries.len(), 3);
        assert_eq!(first.leaves.len(), 3);
        let second = intake.take().unwrap();
        assert_eq!(second.entries.len(), 3, "the batch stays whole, after the fourth entry");
        assert!(intake.take().is_none());

        // Nothing resolves before its group is acknowledged.
        assert!(joined[0].0.poll(0, &waker).is_pending());
        first.acknowledge(10);
        let indices: Vec<u64> = joined[..3].iter().map(|(c, o)| ready(c.poll(*o, &waker)).unwrap()).collect();
        assert_eq!(indices, [10, 11, 12]);
        assert!(joined[3].0.poll(0, &waker).is_pending(), "the second group is not durable yet");
        second.acknowledge(13);
        assert_eq!(ready(joined[3].0.poll(joined[3].1, &waker)).unwrap(), 13);
        assert_eq!(ready(batch.0.poll(batch.1, &waker)).unwrap(), 14);
        // Each of the five appends woke once, and each group once more for the append polled
        // before it completed (registered late).
        assert_eq!(count.0.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn a_batch_over_a_partly_filled_group_starts_the_next_one() {
        let intake = intake(4, 1000);
        let (_, waker) = counted();
        intake.join(entry(1), &waker).unwrap();
        intake.join(entry(2), &waker).unwrap();
        let many = Entries::many((0..3u8).map(|n| Bytes::from(vec![n])).collect());
        assert_eq!(intake.join(many, &waker).unwrap().1, 0);
        assert_eq!(intake.take().unwrap().entries.len(), 2);
        assert_eq!(intake.take().unwrap().entries.len(), 3);

        // Bytes count too: 10-byte entries under a 25-byte limit go two to a group.
        let intake = intake_bytes(25);
        for n in 0..3 {
            intake.join(entry(n), &waker).unwrap();
        }
        assert_eq!(intake.take().unwrap().entries.len(), 2);
        assert_eq!(intake.take().unwrap().entries.len(), 1);
    }

    fn intake_bytes(bytes: usize) -> Intake {
        intake(100, bytes)
    }

    #[test]
    fn a_waker_registered_late_is_woken_and_a_group_dropped_unfinished_fails_its_appends() {
        let intake = intake(10, 1000);
        let (first_count, first) = counted();
        let (late_count, late) = counted();
        let (completion, offset) = intake.join(entry(1), &first).unwrap();
        assert!(completion.poll(offset, &late).is_pending());
        assert!(completion.poll(offset, &late).is_pending(), "registered once however often polled");
        intake.take().unwrap().acknowledge(7);
        assert_eq!(first_count.0.load(Ordering::SeqCst), 1);
        assert_eq!(late_count.0.load(Ordering::SeqCst), 1);
        assert_eq!(ready(completion.poll(offset, &late)).unwrap(), 7);

        let (completion, offset) = intake.join(entry(2), &first).unwrap();
        drop(intake.take().unwrap());
        let error = ready(completion.poll(offset, &first)).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ServiceUnavailable);
        assert_eq!(first_count.0.load(Ordering::SeqCst), 2);

        let (completion, offset) = intake.join(entry(3), &first).unwrap();
        intake.take().unwrap().fail(Error::new(ErrorCode::InternalError, "the disk is gone"));
        let error = ready(completion.poll(offset, &first)).unwrap_err();
        assert_eq!((error.code(), error.message()), (ErrorCode::InternalError, "the disk is gone"));
    }

    #[tokio::test]
    async fn a_stopped_intake_fails_what_is_queued_and_refuses_the_rest() {
        let intake = Arc::new(intake(10, 1000));
        let queued = tokio::spawn({
            let intake = Arc::clone(&intake);
            async move { append(&intake, entry(1), || {}).await }
        });
        while !intake.has_queued() {
            tokio::task::yield_now().await;
        }
        intake.stop();
        let error = queued.await.map(|r| r.map_err(|e| e.code())).ok();
        assert_eq!(error, Some(Err(ErrorCode::ServiceUnavailable)));

        let refused = AtomicUsize::new(0);
        let error = append(&intake, entry(2), || _ = refused.fetch_add(1, Ordering::SeqCst)).await;
        assert_eq!(error.map_err(|e| e.code()), Err(ErrorCode::ServiceUnavailable));
        assert_eq!(refused.load(Ordering::SeqCst), 1, "an append never queued gives its permits back");
        assert!(!intake.wait().await, "a stopped intake has nothing to take");
    }

    #[tokio::test]
    async fn a_closed_intake_is_drained_before_its_committer_stops() {
        let intake = Arc::new(intake(10, 1000));
        let waiting = tokio::spawn({
            let intake = Arc::clone(&intake);
            async move { intake.wait().await }
        });
        tokio::task::yield_now().await;
        let append = tokio::spawn({
            let intake = Arc::clone(&intake);
            async move { append(&intake, entry(1), || {}).await }
        });
        assert!(waiting.await.unwrap(), "an append wakes the waiting committer");
        intake.close();
        assert!(intake.wait().await, "what was queued before closing is still taken");
        intake.take().unwrap().acknowledge(0);
        assert_eq!(append.await.unwrap().unwrap(), 0);
        assert!(!intake.wait().await);
        let (_, waker) = counted();
        assert_eq!(
            intake.join(entry(2), &waker).map(drop).map_err(|e| e.code()),
            Err(ErrorCode::ServiceUnavailable)
        );
    }
}
