//! Idempotent invocations: a call repeated with the same `invocation_id` (per tenant and
//! principal) within the window returns the first call's outcome without running the tool
//! again; a repeat that arrives while the first runs waits for it; a repeat with different
//! parameters is refused. The table lives in memory (hot-path state), sharded and bounded.
//!
//! Bounded means the window is kept as long as memory allows: once the table is full, a new
//! call makes room by forgetting the finished call whose window would end first (its window is
//! cut short, and [`IdempotencyStats::evicted`] counts it). Only a table full of calls still
//! running refuses a new one (`QUOTA_EXCEEDED`): their outcomes are not known yet, so
//! forgetting them would let a repeat run the tool twice at once. Refusing every new call
//! whenever more than `capacity / window` calls a second arrive would turn a memory bound
//! into an outage, and a burst of one tenant into one of every tenant.
//!
//! Laid out for a table that is full and turning over (a busy Host forgets a call for every
//! new one): each shard keeps its records in a vector whose freed places are reused at once,
//! and finds them through a hash index of their places only (a few bytes each, so the index of
//! a large table stays in cache where records would not). The first call and its repeats hold
//! the place of their record, so finishing a call looks nothing up.

use std::{
    cell::RefCell,
    collections::VecDeque,
    hash::BuildHasher,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aesp_core::{
    Clock, Error, ErrorCode, Result,
    proto::v1::{EnterpriseError, ToolCall},
};
use hashbrown::HashTable;
use prost::bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

const SHARDS: usize = 16;

thread_local! {
    /// The buffer a key's text is put together in, reused.
    static KEY_BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f` on the key of (`tenant`, `principal`, `invocation_id`): the three joined by NUL
/// bytes (unambiguous: neither a tenant id nor an invocation id can hold one), put together in
/// a reused buffer.
fn with_key<R>(tenant: &str, principal: &str, invocation_id: &str, f: impl FnOnce(&str) -> R) -> R {
    KEY_BUFFER.with_borrow_mut(|text| {
        text.clear();
        text.push_str(tenant);
        text.push('\0');
        text.push_str(principal);
        text.push('\0');
        text.push_str(invocation_id);
        let result = f(text);
        if text.capacity() > 4096 {
            // Do not keep a huge id's buffer around.
            *text = String::new();
        }
        result
    })
}

/// The recorded outcome of a call: its result's encoding (one allocation, where a copy of the
/// result would take one per string and value), or its error.
pub(crate) type Outcome = std::result::Result<Bytes, Box<EnterpriseError>>;

thread_local! {
    /// The buffer [`call_digest`] encodes into, reused.
    static DIGEST_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The digest of what a call asks for, to tell a true repeat from a reused id: the SHA-256 of
/// the encoding of a `ToolCall` holding only the call's tool name, contract version, session
/// and parameters (encoded in place, without copying the call).
pub(crate) fn call_digest(call: &ToolCall) -> [u8; 32] {
    use prost::encoding::{btree_map, message, string};
    DIGEST_BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        // The fields in tag order, proto3 defaults left out, as `ToolCall::encode` writes them.
        if !call.session_id.is_empty() {
            string::encode(3, &call.session_id, buf);
        }
        if !call.tool_name.is_empty() {
            string::encode(4, &call.tool_name, buf);
        }
        btree_map::encode(
            string::encode,
            string::encoded_len,
            message::encode,
            message::encoded_len,
            5,
            &call.parameters,
            buf,
        );
        if !call.contract_version.is_empty() {
            string::encode(8, &call.contract_version, buf);
        }
        let digest: [u8; 32] = Sha256::digest(buf.as_slice()).into();
        if buf.capacity() > 64 * 1024 {
            // Do not keep a huge call's buffer around.
            *buf = Vec::new();
        }
        digest
    })
}

/// The keyed hash of the keys: SipHash with a random key, so that callers cannot aim their
/// ids at one bucket. Unit tests use a fixed key, so that a failing property test replays.
#[cfg(not(test))]
type KeyHasher = std::hash::RandomState;
#[cfg(test)]
type KeyHasher = std::hash::BuildHasherDefault<std::hash::DefaultHasher>;

/// Where a call stands.
enum Slot {
    /// The first call is running; `waiters` says whether a repeat waits for it.
    Running { waiters: bool },
    /// The call finished with this outcome.
    Done(Outcome),
}

/// What the table remembers of one key.
struct Record {
    /// The key's keyed hash, which picked its shard and finds it in the index.
    hash: u64,
    /// The key's text, to tell it from another key of the same hash.
    text: Box<str>,
    /// The digest of what the call asked for ([`call_digest`]).
    digest: [u8; 32],
    /// Tells this attempt from any other under the same key or in the same place, so that a
    /// stale reference (a queued expiry, a repeat waiting) never acts on a later one.
    attempt: u64,
    /// When its window ends (Unix ms); for a running call, when it would end had it finished
    /// when it began (running calls never expire).
    expires: u64,
    slot: Slot,
}

/// One shard of the table.
struct Shard {
    /// The places of the records in `records`, found by their key's hash.
    index: HashTable<u32>,
    /// The records; `None` where a record was removed, a place `free` lists for reuse.
    records: Vec<Option<Record>>,
    /// The places free in `records`, the last freed first (its memory is the one in cache).
    free: Vec<u32>,
    /// Finished calls in the order their windows end: (that end, the place, the attempt).
    order: VecDeque<(u64, u32, u64)>,
    /// Counts the attempts begun in this shard.
    attempts: u64,
    /// Counts the finished calls forgotten before their window ended, to make room.
    evicted: u64,
}

impl Shard {
    fn record(&self, place: u32) -> Option<&Record> {
        self.records.get(place as usize)?.as_ref()
    }

    fn record_mut(&mut self, place: u32) -> Option<&mut Record> {
        self.records.get_mut(place as usize)?.as_mut()
    }

    /// The place of the record of the key `text` of hash `hash`, if there is one.
    fn find(&self, hash: u64, text: &str) -> Option<u32> {
        let records = &self.records;
        self.index
            .find(hash, |&place| {
                records
                    .get(place as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|r| r.hash == hash && *r.text == *text)
            })
            .copied()
    }

    /// Puts `record` in a free place (or a new one) and indexes it; its place.
    fn insert(&mut self, record: Record) -> u32 {
        let hash = record.hash;
        let place = match self.free.pop() {
            Some(place) => {
                if let Some(free) = self.records.get_mut(place as usize) {
                    *free = Some(record);
                }
                place
            }
            None => {
                // The capacity of a shard is below `u32::MAX` ([`Idempotency::new`]).
                let place = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
                self.records.push(Some(record));
                place
            }
        };
        let records = &self.records;
        self.index.insert_unique(hash, place, |&p| {
            records.get(p as usize).and_then(Option::as_ref).map_or(0, |r| r.hash)
        });
        place
    }

    /// Removes the record at `place` if `condition` holds for it; whether it did.
    fn remove_if(&mut self, place: u32, condition: impl FnOnce(&Record) -> bool) -> bool {
        let Some(hash) = self.record(place).filter(|record| condition(record)).map(|r| r.hash) else {
            return false;
        };
        if let Ok(entry) = self.index.find_entry(hash, |&p| p == place) {
            entry.remove();
        }
        // The record (its key and outcome) is dropped after the index no longer names it.
        if let Some(record) = self.records.get_mut(place as usize) {
            *record = None;
        }
        self.free.push(place);
        true
    }

    /// Whether `record` is attempt `attempt`, finished.
    fn is_done(record: &Record, attempt: u64) -> bool {
        record.attempt == attempt && matches!(record.slot, Slot::Done(_))
    }

    /// Forgets the finished calls whose window ended by `now`, oldest first.
    fn expire(&mut self, now: u64) {
        while let Some(&(expires, place, attempt)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            // Queued entries whose call was since replaced (expired, then begun again; or its
            // place reused) are skipped: the later call queues its own when it finishes.
            self.remove_if(place, |r| Self::is_done(r, attempt) && r.expires <= now);
        }
    }

    /// Forgets the finished call whose window ends first, to make room for a new one; `false`
    /// if no call has finished (every entry is a call still running).
    fn evict_oldest(&mut self) -> bool {
        while let Some((_, place, attempt)) = self.order.pop_front() {
            if self.remove_if(place, |r| Self::is_done(r, attempt)) {
                self.evicted = self.evicted.wrapping_add(1);
                return true;
            }
        }
        false
    }

    /// A new attempt's number.
    fn next_attempt(&mut self) -> u64 {
        let attempt = self.attempts;
        self.attempts = attempt.wrapping_add(1);
        attempt
    }
}

/// What the idempotency table holds and has had to forget early
/// ([`Host::idempotency_stats`](crate::Host::idempotency_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdempotencyStats {
    /// The invocation ids remembered now (running and finished calls).
    pub entries: usize,
    /// The finished calls forgotten before their window ended because the table was full,
    /// since the Host started. A repeat of such a call runs the tool again; if this grows,
    /// raise [`HostOptions::idempotency_capacity`](crate::HostOptions::idempotency_capacity)
    /// (the window holds fully up to `capacity / window` calls a second).
    pub evicted: u64,
}

/// A shard and the signal its running calls give their waiting repeats when they end.
struct Guarded {
    shard: Mutex<Shard>,
    ended: Notify,
}

/// The idempotency table.
pub(crate) struct Idempotency {
    clock: Arc<dyn Clock>,
    /// The keyed hash of the keys.
    hasher: KeyHasher,
    window_ms: u64,
    capacity_per_shard: usize,
    shards: [Guarded; SHARDS],
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").field("window_ms", &self.window_ms).finish_non_exhaustive()
    }
}

/// What [`Idempotency::begin`] found.
pub(crate) enum Claim<'t> {
    /// This is the first call: run it and [`Completer::finish`] with the outcome.
    First(Completer<'t>),
    /// The same call is running: [`Idempotency::wait`] for its outcome.
    Running(Waiter<'t>),
    /// The same call completed: its outcome.
    Done(Outcome),
}

/// An attempt's record: its shard, its place there and its number.
#[derive(Clone, Copy)]
struct Held {
    shard: usize,
    place: u32,
    attempt: u64,
}

/// A repeat waiting for the first attempt of its call.
pub(crate) struct Waiter<'t> {
    table: &'t Idempotency,
    first: Held,
}

/// The obligation of the first call to record its outcome; dropping it unfinished (the call
/// was cancelled) forgets the entry so a retry runs afresh.
pub(crate) struct Completer<'t> {
    table: &'t Idempotency,
    held: Option<Held>,
}

impl Completer<'_> {
    /// Records the outcome and wakes the waiting repeats.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        let Some(held) = self.held.take() else { return };
        let expires = self.table.clock.now_ms().saturating_add(self.table.window_ms);
        let guarded = self.table.guarded(held.shard);
        let mut shard = lock(&guarded.shard);
        // A running call's record is never expired nor evicted: it is there.
        let Some(record) = shard.record_mut(held.place).filter(|r| r.attempt == held.attempt) else { return };
        let waited = matches!(record.slot, Slot::Running { waiters: true });
        record.slot = Slot::Done(outcome);
        // The window of a finished call starts when it finishes.
        record.expires = expires;
        shard.order.push_back((expires, held.place, held.attempt));
        drop(shard);
        if waited {
            guarded.ended.notify_waiters();
        }
    }
}

impl Drop for Completer<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            let guarded = self.table.guarded(held.shard);
            let mut waited = false;
            lock(&guarded.shard).remove_if(held.place, |r| {
                let ours = r.attempt == held.attempt;
                waited = ours && matches!(r.slot, Slot::Running { waiters: true });
                ours
            });
            if waited {
                guarded.ended.notify_waiters();
            }
        }
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Idempotency {
    pub(crate) fn new(clock: Arc<dyn Clock>, window: Duration, capacity: usize) -> Arc<Self> {
        // Places are `u32`s.
        let capacity_per_shard = capacity.div_ceil(SHARDS).clamp(1, u32::MAX as usize);
        Arc::new(Self {
            clock,
            hasher: KeyHasher::default(),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            capacity_per_shard,
            shards: std::array::from_fn(|_| Guarded {
                shard: Mutex::new(Shard {
                    index: HashTable::new(),
                    records: Vec::new(),
                    free: Vec::new(),
                    order: VecDeque::new(),
                    attempts: 0,
                    evicted: 0,
                }),
                ended: Notify::new(),
            }),
        })
    }

    /// The shard of a key's hash.
    fn shard_of(hash: u64) -> usize {
        // Bits the index does not use: it takes the low ones for the bucket and the top seven.
        (hash >> 40) as usize % SHARDS
    }

    fn guarded(&self, shard: usize) -> &Guarded {
        #[expect(clippy::indexing_slicing, reason = "shard numbers are taken modulo the number of shards")]
        &self.shards[shard % SHARDS]
    }

    /// Claims `invocation_id` for (`tenant`, `principal`) with the call's `digest`.
    pub(crate) fn begin(
        &self,
        tenant: &str,
        principal: &str,
        invocation_id: &str,
        digest: [u8; 32],
    ) -> Result<Claim<'_>> {
        with_key(tenant, principal, invocation_id, |text| {
            let hash = self.hasher.hash_one(text);
            let at = Self::shard_of(hash);
            let now = self.clock.now_ms();
            let mut shard = lock(&self.guarded(at).shard);
            shard.expire(now);
            let held = |place, attempt| Held { shard: at, place, attempt };
            if let Some(place) = shard.find(hash, text) {
                let Some(record) = shard.record_mut(place) else {
                    return Err(Error::new(
                        ErrorCode::InternalError,
                        "the idempotency index is inconsistent",
                    ));
                };
                // A running call holds its id however long it runs (its window starts when it
                // finishes): a repeat waits for it, never runs the tool a second time.
                if matches!(record.slot, Slot::Running { .. }) || record.expires > now {
                    if record.digest != digest {
                        return Err(Error::new(
                            ErrorCode::Conflict,
                            format!("invocation id `{invocation_id}` was used for a different call"),
                        )
                        .with_remediation("use a new invocation id for a new call"));
                    }
                    return Ok(match &mut record.slot {
                        Slot::Running { waiters } => {
                            *waiters = true;
                            Claim::Running(Waiter { table: self, first: held(place, record.attempt) })
                        }
                        Slot::Done(outcome) => Claim::Done(outcome.clone()),
                    });
                }
                // Finished and its window over, but not forgotten yet: begun again in its own
                // place, keeping its key (its queued expiry no longer matches the attempt).
                let attempt = shard.next_attempt();
                if let Some(record) = shard.record_mut(place) {
                    record.digest = digest;
                    record.attempt = attempt;
                    record.expires = now.saturating_add(self.window_ms);
                    record.slot = Slot::Running { waiters: false };
                }
                return Ok(Claim::First(Completer { table: self, held: Some(held(place, attempt)) }));
            }
            // A new key needs a place: when the table is full, the finished call whose window
            // ends first gives up its place.
            if shard.index.len() >= self.capacity_per_shard && !shard.evict_oldest() {
                return Err(Error::new(
                    ErrorCode::QuotaExceeded,
                    "the idempotency table is full of calls still running",
                )
                .with_retry_after(Duration::from_millis(self.window_ms.min(1000))));
            }
            let attempt = shard.next_attempt();
            // A running call is kept for the whole window even if it runs long: it is only
            // queued for expiry once it finishes.
            let place = shard.insert(Record {
                hash,
                text: Box::from(text),
                digest,
                attempt,
                expires: now.saturating_add(self.window_ms),
                slot: Slot::Running { waiters: false },
            });
            Ok(Claim::First(Completer { table: self, held: Some(held(place, attempt)) }))
        })
    }

    /// What the table holds now and has forgotten early.
    pub(crate) fn stats(&self) -> IdempotencyStats {
        self.shards.iter().fold(IdempotencyStats::default(), |stats, guarded| {
            let shard = lock(&guarded.shard);
            IdempotencyStats {
                entries: stats.entries + shard.index.len(),
                evicted: stats.evicted.wrapping_add(shard.evicted),
            }
        })
    }

    /// Waits for a running call's outcome; `None` if it was cancelled.
    pub(crate) async fn wait(waiter: Waiter<'_>) -> Option<Outcome> {
        let first = waiter.first;
        let guarded = waiter.table.guarded(first.shard);
        loop {
            // Registered before the record is looked at, so that an end in between is not
            // missed.
            let ended = guarded.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            match lock(&guarded.shard).record(first.place) {
                Some(r) if r.attempt == first.attempt => match &r.slot {
                    Slot::Running { .. } => {}
                    Slot::Done(outcome) => return Some(outcome.clone()),
                },
                // Removed (cancelled), or the place holds a later attempt: the first one was
                // cancelled.
                _ => return None,
            }
            ended.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use aesp_core::{ManualClock, proto::v1::ToolResult};

    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_digest_is_that_of_the_call_essence() {
        use aesp_core::proto::v1::Value;
        use prost::Message as _;
        let essence = |call: &ToolCall| -> [u8; 32] {
            let essence = ToolCall {
                tool_name: call.tool_name.clone(),
                contract_version: call.contract_version.clone(),
                session_id: call.session_id.clone(),
                parameters: call.parameters.clone(),
                ..ToolCall::default()
            };
            Sha256::digest(essence.encode_to_vec()).into()
        };
        let mut call = ToolCall::default();
        assert_eq!(call_digest(&call), essence(&call));
        call = ToolCall {
            invocation_id: "i-1".into(),
            correlation_id: "c-1".into(),
            session_id: "s-1".into(),
            tool_name: "sql.query".into(),
            parameters: [
                ("query".to_owned(), Value::string("SELECT 1")),
                ("".to_owned(), Value::default()),
                ("limit".to_owned(), Value::float(10.0)),
            ]
            .into(),
            metadata: [("k".to_owned(), "v".to_owned())].into(),
            timeout_ms: 5,
            contract_version: "^1".into(),
        };
        assert_eq!(call_digest(&call), essence(&call));
        let mut other = call.clone();
        other.parameters.insert("query".into(), Value::string("SELECT 2"));
        assert_ne!(call_digest(&other), call_digest(&call));
        assert_eq!(call_digest(&other), essence(&other));
    }

    fn result(id: &str) -> Outcome {
        use prost::Message as _;
        Ok(ToolResult { invocation_id: id.into(), ..ToolResult::default() }.encode_to_vec().into())
    }

    fn invocation_id(outcome: &Outcome) -> String {
        use prost::Message as _;
        ToolResult::decode(outcome.as_ref().unwrap().as_ref()).unwrap().invocation_id
    }

    #[tokio::test]
    async fn repeats_replay_wait_or_conflict() {
        let clock = ManualClock::new(0);
        let table = Idempotency::new(Arc::new(clock.clone()), Duration::from_secs(300), 1000);
        let Claim::First(first) = table.begin("acme", "alice", "i-1", [1; 32]).unwrap() else {
            panic!("first")
        };
        // A concurrent repeat waits; a different call under the same id is refused.
        let Claim::Running(waiting) = table.begin("acme", "alice", "i-1", [1; 32]).unwrap() else {
            panic!("running")
        };
        let Err(error) = table.begin("acme", "alice", "i-1", [2; 32]) else { panic!("conflict") };
        assert_eq!(error.code(), ErrorCode::Conflict);
        // Other principals and tenants have their own ids.
        assert!(matches!(table.begin("acme", "bob", "i-1", [2; 32]).unwrap(), Claim::First(_)));
        assert!(matches!(table.begin("globex", "alice", "i-1", [2; 32]).unwrap(), Claim::First(_)));

        // The waiter waits first; the first attempt finishes while it does.
        let (waited, ()) = tokio::join!(Idempotency::wait(waiting), async {
            tokio::task::yield_now().await;
            first.finish(result("i-1"));
        });
        assert_eq!(invocation_id(&waited.unwrap()), "i-1");
        assert!(matches!(table.begin("acme", "alice", "i-1", [1; 32]).unwrap(), Claim::Done(_)));

        // After the window, the id is free again.
        clock.advance(Duration::from_secs(301));
        assert!(matches!(table.begin("acme", "alice", "i-1", [1; 32]).unwrap(), Claim::First(_)));
    }

    #[tokio::test]
    async fn a_cancelled_first_call_frees_the_id_and_the_table_is_bounded() {
        let table = Idempotency::new(Arc::new(ManualClock::new(0)), Duration::from_secs(300), SHARDS);
        let Claim::First(first) = table.begin("acme", "alice", "i-1", [1; 32]).unwrap() else {
            panic!("first")
        };
        let Claim::Running(waiting) = table.begin("acme", "alice", "i-1", [1; 32]).unwrap() else {
            panic!("running")
        };
        drop(first);
        assert!(Idempotency::wait(waiting).await.is_none());
        assert!(matches!(table.begin("acme", "alice", "i-1", [1; 32]).unwrap(), Claim::First(_)));
        // One entry per shard at most: some new id soon finds its shard full.
        let mut held = Vec::new();
        let mut refused = None;
        for i in 0..100 {
            match table.begin("acme", "alice", &format!("x-{i}"), [0; 32]) {
                Ok(claim) => held.push(claim),
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        assert_eq!(refused.map(|e| e.code()), Some(ErrorCode::QuotaExceeded));
    }

    /// The shard of alice's `id` in acme.
    fn shard_of(table: &Idempotency, id: &str) -> usize {
        with_key("acme", "alice", id, |text| Idempotency::shard_of(table.hasher.hash_one(text)))
    }

    #[test]
    fn keys_spread_over_every_shard_and_equal_keys_meet() {
        let table = Idempotency::new(Arc::new(ManualClock::new(0)), Duration::from_secs(1), 1000);
        let mut per_shard = [0usize; SHARDS];
        for i in 0..1600 {
            per_shard[shard_of(&table, &format!("id-{i}"))] += 1;
        }
        assert!(per_shard.iter().all(|&n| n > 40), "{per_shard:?}");
        // The same parts meet; parts that would join to the same text without separators,
        // and other principals, do not.
        let _first = first(table.begin("acme", "alice", "x", [1; 32]));
        assert!(matches!(table.begin("acme", "alice", "x", [1; 32]), Ok(Claim::Running(_))));
        for (tenant, principal, id) in [("acme", "alicex", ""), ("acme", "bob", "x"), ("acmealice", "", "x")]
        {
            assert!(matches!(table.begin(tenant, principal, id, [2; 32]), Ok(Claim::First(_))));
        }
    }

    /// Ids that land in the same shard as `first`, in the order they are found.
    fn same_shard(table: &Idempotency, first: &str, n: usize) -> Vec<String> {
        (0..100_000)
            .map(|i| format!("id-{i}"))
            .filter(|id| shard_of(table, id) == shard_of(table, first))
            .take(n)
            .collect()
    }

    #[tokio::test]
    async fn a_repeat_never_gets_the_outcome_of_another_key_that_took_its_place() {
        // One place per shard: a cancelled call's place goes to the next new key there.
        let table = Idempotency::new(Arc::new(ManualClock::new(0)), Duration::from_secs(300), SHARDS);
        let other = &same_shard(&table, "a", 1)[0];
        let a = first(table.begin("acme", "alice", "a", [1; 32]));
        let Ok(Claim::Running(waiting)) = table.begin("acme", "alice", "a", [1; 32]) else {
            panic!("running")
        };
        drop(a);
        first(table.begin("acme", "alice", other, [2; 32])).finish(result(other));
        // The place of `a` now holds `other`, finished: the repeat of `a` learns that its
        // first call was cancelled, not `other`'s outcome.
        assert!(Idempotency::wait(waiting).await.is_none());
        assert!(matches!(table.begin("acme", "alice", other, [2; 32]), Ok(Claim::Done(_))));
        assert_eq!(table.stats(), IdempotencyStats { entries: 1, evicted: 0 });
    }

    #[test]
    fn a_key_in_a_reused_place_keeps_its_own_window() {
        let clock = ManualClock::new(0);
        let table = Idempotency::new(Arc::new(clock.clone()), Duration::from_secs(1), SHARDS);
        let other = &same_shard(&table, "a", 1)[0];
        // `a` finishes at 0 (window to 1 s); it is forgotten to make room for `other` at
        // 500 ms, which takes its place and finishes there (window to 1.5 s).
        first(table.begin("acme", "alice", "a", [1; 32])).finish(result("a"));
        clock.set(500);
        first(table.begin("acme", "alice", other, [2; 32])).finish(result(other));
        assert_eq!(table.stats(), IdempotencyStats { entries: 1, evicted: 1 });
        // At 1.2 s the window `a` had is over, not that of `other`, which is still replayed.
        clock.set(1200);
        assert!(matches!(table.begin("acme", "alice", other, [2; 32]), Ok(Claim::Done(_))));
        clock.set(1600);
        assert!(matches!(table.begin("acme", "alice", other, [2; 32]), Ok(Claim::First(_))));
    }

    fn first(claim: Result<Claim<'_>>) -> Completer<'_> {
        match claim {
            Ok(Claim::First(completer)) => completer,
            Ok(_) => panic!("not a first call"),
            Err(e) => panic!("refused: {e}"),
        }
    }

    #[tokio::test]
    async fn finished_entries_expire_and_a_full_table_forgets_the_oldest_finished_call() {
        let clock = ManualClock::new(0);
        // Two places per shard.
        let table = Idempotency::new(Arc::new(clock.clone()), Duration::from_secs(1), 2 * SHARDS);
        let ids = same_shard(&table, "a", 4);
        // `a` finishes at 0: remembered until 1 s; `b` finishes at 600 ms: until 1.6 s.
        first(table.begin("acme", "alice", "a", [1; 32])).finish(result("a"));
        let b = &ids[0];
        clock.set(600);
        first(table.begin("acme", "alice", b, [2; 32])).finish(result(b));
        assert_eq!(table.stats(), IdempotencyStats { entries: 2, evicted: 0 });

        // The shard is full: a new id takes the place of `a`, whose window ends first.
        clock.set(700);
        let c = first(table.begin("acme", "alice", &ids[1], [3; 32]));
        assert_eq!(table.stats(), IdempotencyStats { entries: 2, evicted: 1 });
        // `b` is still remembered and replayed; `a` was forgotten, so a repeat runs afresh,
        // taking the place of `b` (the only finished call left).
        assert!(matches!(table.begin("acme", "alice", b, [2; 32]), Ok(Claim::Done(_))));
        let a = first(table.begin("acme", "alice", "a", [1; 32]));
        assert_eq!(table.stats(), IdempotencyStats { entries: 2, evicted: 2 });

        // Both places hold running calls: neither `b` nor a new id is let in.
        for id in [b, &ids[2]] {
            let Err(full) = table.begin("acme", "alice", id, [4; 32]) else { panic!("full") };
            assert_eq!(full.code(), ErrorCode::QuotaExceeded);
        }
        // A repeat of a running call still waits for it rather than being refused.
        assert!(matches!(table.begin("acme", "alice", "a", [1; 32]), Ok(Claim::Running(_))));

        // Once a call finishes and its window is over, its place is free without eviction.
        c.finish(result(&ids[1]));
        a.finish(result("a"));
        clock.set(5_000);
        let _d = first(table.begin("acme", "alice", &ids[2], [4; 32]));
        assert_eq!(table.stats(), IdempotencyStats { entries: 1, evicted: 2 });
    }

    #[test]
    fn a_call_running_longer_than_the_window_still_holds_its_id() {
        let clock = ManualClock::new(0);
        let table = Idempotency::new(Arc::new(clock.clone()), Duration::from_secs(1), 1000);
        let running = first(table.begin("acme", "alice", "slow", [1; 32]));
        clock.set(5_000);
        // Still running long after the window: a repeat waits, it does not run the tool again.
        assert!(matches!(table.begin("acme", "alice", "slow", [1; 32]), Ok(Claim::Running(_))));
        running.finish(result("slow"));
        // The window starts when it finishes.
        clock.set(5_900);
        assert!(matches!(table.begin("acme", "alice", "slow", [1; 32]), Ok(Claim::Done(_))));
    }

    #[tokio::test]
    async fn an_expired_key_begun_again_keeps_its_place_when_the_table_is_full() {
        let clock = ManualClock::new(0);
        // One place per shard.
        let table = Idempotency::new(Arc::new(clock.clone()), Duration::from_secs(1), SHARDS);
        first(table.begin("acme", "alice", "a", [1; 32])).finish(result("a"));
        // Its window is over but nothing has removed it yet: the same key begins again in its
        // own place, without forgetting anything else.
        clock.set(1500);
        let again = first(table.begin("acme", "alice", "a", [1; 32]));
        assert_eq!(table.stats(), IdempotencyStats { entries: 1, evicted: 0 });
        // The first attempt's queue entry is stale: it does not make room by forgetting the
        // second attempt, which is running, so a new id in that shard is refused.
        let other = &same_shard(&table, "a", 1)[0];
        assert!(
            table.begin("acme", "alice", other, [2; 32]).is_err_and(|e| e.code() == ErrorCode::QuotaExceeded)
        );
        again.finish(result("a"));
        assert!(matches!(table.begin("acme", "alice", "a", [1; 32]), Ok(Claim::Done(_))));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Begin { id: u8, digest: u8 },
        Finish(usize),
        Cancel(usize),
        Advance(u16),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0..24u8, 0..2u8).prop_map(|(id, digest)| Op::Begin { id, digest }),
            2 => any::<usize>().prop_map(Op::Finish),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => (0..700u16).prop_map(Op::Advance),
        ]
    }

    proptest::proptest! {
        /// Random begins, finishes, cancellations and waits against a table of one place per
        /// shard (so that eviction is frequent), checked against what was run: a running call
        /// is never forgotten (a repeat waits, or is refused as a conflict, but never runs
        /// again), a replay is the outcome of that id within its window, a conflict is a
        /// remembered call with other parameters, the table is refused only when a shard is
        /// full of running calls, and it never holds more than its capacity.
        #[test]
        fn the_table_never_forgets_a_running_call_and_replays_only_what_it_remembers(
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let clock = ManualClock::new(0);
            let window_ms = 1000;
            let table = Idempotency::new(Arc::new(clock.clone()), Duration::from_millis(window_ms), SHARDS);
            let name = |id: u8| format!("id-{id}");
            let shard_of = |id: u8| shard_of(&table, &name(id));
            // Running calls: (id, digest, completer); finished: id → (digest, when).
            let mut running: Vec<(u8, u8, Completer<'_>)> = Vec::new();
            let mut finished: HashMap<u8, (u8, u64)> = HashMap::new();
            for op in ops {
                let now = clock.now_ms();
                match op {
                    Op::Begin { id, digest } => {
                        let remembered = finished.get(&id).filter(|(_, at)| now < at + window_ms);
                        let claim = table.begin("acme", "alice", &name(id), [digest; 32]);
                        let runs = running.iter().find(|(r, _, _)| *r == id).map(|(_, d, _)| *d);
                        match (runs, claim) {
                            (Some(d), Ok(Claim::Running(_))) => proptest::prop_assert_eq!(d, digest),
                            (Some(d), Err(e)) => {
                                proptest::prop_assert_eq!(e.code(), ErrorCode::Conflict);
                                proptest::prop_assert_ne!(d, digest);
                            }
                            (Some(_), Ok(_)) => proptest::prop_assert!(false, "a running call was begun again or replayed"),
                            (None, Ok(Claim::Running(_))) => proptest::prop_assert!(false, "no call of this id runs"),
                            (None, Ok(Claim::Done(outcome))) => {
                                proptest::prop_assert_eq!(remembered.map(|(d, _)| *d), Some(digest));
                                proptest::prop_assert_eq!(invocation_id(&outcome), name(id));
                            }
                            (None, Ok(Claim::First(completer))) => {
                                if remembered.is_some() {
                                    proptest::prop_assert!(table.stats().evicted > 0, "forgotten without eviction");
                                }
                                running.push((id, digest, completer));
                            }
                            (None, Err(e)) if e.code() == ErrorCode::Conflict => {
                                proptest::prop_assert!(remembered.is_some_and(|(d, _)| *d != digest));
                            }
                            (None, Err(e)) => {
                                proptest::prop_assert_eq!(e.code(), ErrorCode::QuotaExceeded);
                                let here = shard_of(id);
                                let full = running.iter().filter(|(r, _, _)| shard_of(*r) == here).count();
                                proptest::prop_assert!(full >= 1, "refused with no call running in its shard");
                            }
                        }
                    }
                    Op::Finish(i) if !running.is_empty() => {
                        let (id, digest, completer) = running.swap_remove(i % running.len());
                        completer.finish(result(&name(id)));
                        finished.insert(id, (digest, now));
                    }
                    Op::Cancel(i) if !running.is_empty() => {
                        let (id, _, completer) = running.swap_remove(i % running.len());
                        drop(completer);
                        // A cancelled attempt took the place of any earlier outcome.
                        finished.remove(&id);
                    }
                    Op::Advance(ms) => clock.advance(Duration::from_millis(u64::from(ms))),
                    Op::Finish(_) | Op::Cancel(_) => {}
                }
                proptest::prop_assert!(table.stats().entries <= SHARDS);
            }
        }
    }
}
