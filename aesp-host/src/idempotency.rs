//! Idempotent invocations: a call repeated with the same `invocation_id` (per tenant and
//! principal) within the window returns the first call's outcome without running the tool
//! again; a repeat that arrives while the first runs waits for it; a repeat with different
//! parameters is refused. The table lives in memory (hot-path state), sharded and bounded.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aesp_core::{
    Clock, Error, ErrorCode, Result,
    proto::v1::{EnterpriseError, ToolCall, ToolResult},
};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

const SHARDS: usize = 16;

/// Who asked for what: the key of an idempotency entry, `tenant`, `principal` and
/// `invocation_id` joined by NUL bytes (unambiguous: neither a tenant id nor an invocation id
/// can hold one), in one allocation shared by the table and its eviction queue.
type Key = Arc<str>;

fn key(tenant: &str, principal: &str, invocation_id: &str) -> Key {
    let mut key = String::with_capacity(tenant.len() + principal.len() + invocation_id.len() + 2);
    key.push_str(tenant);
    key.push('\0');
    key.push_str(principal);
    key.push('\0');
    key.push_str(invocation_id);
    Arc::from(key)
}

/// The recorded outcome of a call.
pub(crate) type Outcome = std::result::Result<ToolResult, Box<EnterpriseError>>;

thread_local! {
    /// The buffer [`call_digest`] encodes into, reused.
    static DIGEST_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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

enum Slot {
    Running { digest: [u8; 32], done: watch::Receiver<Option<Arc<Outcome>>> },
    Done { digest: [u8; 32], outcome: Arc<Outcome> },
}

struct Shard {
    slots: HashMap<Key, (Slot, u64)>,
    /// Keys in insertion order with their expiry, for eviction.
    order: VecDeque<(u64, Key)>,
}

/// The idempotency table.
pub(crate) struct Idempotency {
    clock: Arc<dyn Clock>,
    window_ms: u64,
    capacity_per_shard: usize,
    shards: [Mutex<Shard>; SHARDS],
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").field("window_ms", &self.window_ms).finish_non_exhaustive()
    }
}

/// What [`Idempotency::begin`] found.
pub(crate) enum Claim {
    /// This is the first call: run it and [`Completer::finish`] with the outcome.
    First(Completer),
    /// The same call is running: wait for its outcome.
    Running(watch::Receiver<Option<Arc<Outcome>>>),
    /// The same call completed: its outcome.
    Done(Arc<Outcome>),
}

/// The obligation of the first call to record its outcome; dropping it unfinished (the call
/// was cancelled) forgets the entry so a retry runs afresh.
pub(crate) struct Completer {
    table: Arc<Idempotency>,
    key: Option<Key>,
    digest: [u8; 32],
    sender: watch::Sender<Option<Arc<Outcome>>>,
}

impl Completer {
    /// Records the outcome and wakes the waiting repeats.
    pub(crate) fn finish(mut self, outcome: Outcome) -> Arc<Outcome> {
        let outcome = Arc::new(outcome);
        if let Some(key) = self.key.take() {
            let expires = self.table.clock.now_ms().saturating_add(self.table.window_ms);
            let mut shard = self.table.shard(&key).lock().unwrap_or_else(PoisonError::into_inner);
            // The window of a finished call starts when it finishes: queue its eviction then
            // (the entry queued when it began may come due while this one is still valid).
            shard.order.push_back((expires, Arc::clone(&key)));
            shard
                .slots
                .insert(key, (Slot::Done { digest: self.digest, outcome: Arc::clone(&outcome) }, expires));
        }
        let _ = self.sender.send(Some(Arc::clone(&outcome)));
        outcome
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table.shard(&key).lock().unwrap_or_else(PoisonError::into_inner).slots.remove(&key);
        }
    }
}

impl Idempotency {
    pub(crate) fn new(clock: Arc<dyn Clock>, window: Duration, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            clock,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard { slots: HashMap::new(), order: VecDeque::new() })
            }),
        })
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        let hash = key
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        #[expect(clippy::indexing_slicing, reason = "the index is taken modulo the number of shards")]
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    /// Claims `invocation_id` for (`tenant`, `principal`) with the call's `digest`.
    pub(crate) fn begin(
        self: &Arc<Self>,
        tenant: &str,
        principal: &str,
        invocation_id: &str,
        digest: [u8; 32],
    ) -> Result<Claim> {
        let key = key(tenant, principal, invocation_id);
        let now = self.clock.now_ms();
        let mut shard = self.shard(&key).lock().unwrap_or_else(PoisonError::into_inner);
        // Forget what has expired (oldest first).
        while let Some((expires, old)) = shard.order.front() {
            if *expires > now {
                break;
            }
            let old = Arc::clone(old);
            shard.order.pop_front();
            if shard
                .slots
                .get(&old)
                .is_some_and(|(slot, expiry)| *expiry <= now && matches!(slot, Slot::Done { .. }))
            {
                shard.slots.remove(&old);
            }
        }
        if let Some((slot, expires)) = shard.slots.get(&key)
            && *expires > now
        {
            let (Slot::Running { digest: d, .. } | Slot::Done { digest: d, .. }) = slot;
            if *d != digest {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!("invocation id `{invocation_id}` was used for a different call"),
                )
                .with_remediation("use a new invocation id for a new call"));
            }
            return Ok(match slot {
                Slot::Running { done, .. } => Claim::Running(done.clone()),
                Slot::Done { outcome, .. } => Claim::Done(Arc::clone(outcome)),
            });
        }
        if shard.slots.len() >= self.capacity_per_shard {
            return Err(Error::new(ErrorCode::QuotaExceeded, "the idempotency table is full")
                .with_retry_after(Duration::from_millis(self.window_ms.min(1000))));
        }
        let (sender, done) = watch::channel(None);
        // A running call is kept for the whole window even if it runs long.
        let expires = now.saturating_add(self.window_ms);
        shard.slots.insert(Arc::clone(&key), (Slot::Running { digest, done }, expires));
        shard.order.push_back((expires, Arc::clone(&key)));
        Ok(Claim::First(Completer { table: Arc::clone(self), key: Some(key), digest, sender }))
    }

    /// Waits for a running call's outcome; `None` if it was cancelled.
    pub(crate) async fn wait(mut done: watch::Receiver<Option<Arc<Outcome>>>) -> Option<Arc<Outcome>> {
        loop {
            if let Some(outcome) = done.borrow_and_update().clone() {
                return Some(outcome);
            }
            if done.changed().await.is_err() {
                return done.borrow().clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aesp_core::ManualClock;

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
        Ok(ToolResult { invocation_id: id.into(), ..ToolResult::default() })
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

        let waiter = tokio::spawn(Idempotency::wait(waiting));
        first.finish(result("i-1"));
        assert_eq!(waiter.await.unwrap().unwrap().as_ref().as_ref().unwrap().invocation_id, "i-1");
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

    #[tokio::test]
    async fn finished_entries_expire_and_free_their_place() {
        let clock = ManualClock::new(0);
        // One place per shard.
        let table = Idempotency::new(Arc::new(clock.clone()), Duration::from_secs(1), SHARDS);
        let key = |id: &str| key("acme", "alice", id);
        let same_shard: Vec<String> = (0..10_000)
            .map(|i| format!("id-{i}"))
            .filter(|id| std::ptr::eq(table.shard(&key(id)), table.shard(&key("first"))))
            .take(2)
            .collect();
        // A call that begins at 0 and finishes at 500 ms is remembered until 1.5 s.
        let Claim::First(first) = table.begin("acme", "alice", "first", [1; 32]).unwrap() else {
            panic!("first")
        };
        clock.set(500);
        first.finish(result("first"));
        // At 1.2 s its place is still taken.
        clock.set(1200);
        let Err(full) = table.begin("acme", "alice", &same_shard[0], [1; 32]) else {
            panic!("still remembered")
        };
        assert_eq!(full.code(), ErrorCode::QuotaExceeded);
        // Once its window is over, its place is free again.
        clock.set(2000);
        assert!(matches!(table.begin("acme", "alice", &same_shard[1], [1; 32]), Ok(Claim::First(_))));
    }
}
