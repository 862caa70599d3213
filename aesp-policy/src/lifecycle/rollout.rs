//! The per-request side of a rollout: precomputed snapshots, the canary choice, divergence
//! records and counters. Nothing here touches the store.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use sha2::{Digest as _, Sha256};

use crate::{Decision, Snapshot};

/// How many buckets a canary share is counted in: a percent is 100 buckets.
pub(crate) const BUCKETS: u64 = 10_000;

/// The bucket (0 to 9,999) of a Host-assigned request id under a secret key:
/// SHA-256(key ‖ request id), first 8 bytes big-endian, modulo [`BUCKETS`].
pub(crate) fn bucket(key: &[u8; 32], request_id: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(key);
    hasher.update(request_id.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0u8; 8]));
    u64::from_be_bytes(first) % BUCKETS
}

/// How a non-active version takes part in decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CandidateKind {
    /// Evaluated beside the active version, never enforced.
    Shadow,
    /// Enforced for `percent` % of requests, chosen by the keyed hash of the request id.
    Canary {
        /// The share of requests, 0 to 100.
        percent: u32,
    },
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CandidateKind::Shadow => f.write_str("shadow"),
            CandidateKind::Canary { percent } => write!(f, "canary({percent}%)"),
        }
    }
}

/// Which version a counter or divergence is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionRef {
    /// The tenant.
    pub tenant_id: String,
    /// The policy.
    pub policy_id: String,
    /// The version.
    pub version: String,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    evaluated: AtomicU64,
    enforced: AtomicU64,
    diverged: AtomicU64,
}

/// The counters of one shadow or canary version since this process started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionCounters {
    /// The version.
    pub version: VersionRef,
    /// Requests it was evaluated for.
    pub evaluated: u64,
    /// Requests whose decision it made (canary only).
    pub enforced: u64,
    /// Requests on which its outcome differed from the active snapshot's.
    pub diverged: u64,
}

/// A request on which a shadow or canary version decided differently from the active set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// When (Unix milliseconds, from the lifecycle's clock).
    pub at_ms: u64,
    /// The Host-assigned request id.
    pub request_id: String,
    /// The hex SHA-256 of the request's [`DecisionInput`](aesp_core::proto::v1::DecisionInput)
    /// (with an empty snapshot digest).
    pub request_digest: String,
    /// The diverging version.
    pub version: VersionRef,
    /// Shadow or canary.
    pub kind: CandidateKind,
    /// Whether the active snapshot allowed the request.
    pub active_allowed: bool,
    /// Why the active snapshot decided as it did.
    pub active_reason: String,
    /// Whether the candidate allowed the request.
    pub candidate_allowed: bool,
    /// Why the candidate decided as it did.
    pub candidate_reason: String,
    /// Whether the candidate's outcome was the one enforced (a canary that was chosen).
    pub enforced: bool,
    /// The digest of the active snapshot.
    pub active_digest: String,
    /// The digest of the candidate snapshot.
    pub candidate_digest: String,
}

/// A shadow or canary version with its precomputed snapshot (the active set with this
/// version in place of the policy's active one).
#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) version: VersionRef,
    pub(crate) kind: CandidateKind,
    pub(crate) snapshot: Snapshot,
    pub(crate) counters: Arc<Counters>,
}

/// What is enforced now.
#[derive(Debug)]
pub(crate) struct Rollout {
    pub(crate) revision: u64,
    pub(crate) active: Snapshot,
    /// Per tenant, its candidates (canaries first, then shadows, each by policy id).
    pub(crate) candidates: HashMap<String, Vec<Candidate>>,
}

/// The enforced decision for one request.
#[derive(Clone, Debug)]
pub struct LifecycleDecision {
    /// The decision to enforce.
    pub decision: Decision,
    /// The snapshot that made it (the active one, or a canary's).
    pub snapshot: Snapshot,
    /// The canary version that decided, if one did.
    pub canary: Option<VersionRef>,
    /// The divergences recorded for this request.
    pub divergences: Vec<Divergence>,
}

/// Per-version counters, kept across rollouts so a version's counts survive other changes.
#[derive(Debug, Default)]
pub(crate) struct CounterTable {
    table: Mutex<HashMap<(VersionRef, bool), Arc<Counters>>>,
}

impl CounterTable {
    pub(crate) fn get(&self, version: &VersionRef, kind: CandidateKind) -> Arc<Counters> {
        let canary = matches!(kind, CandidateKind::Canary { .. });
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        table.entry((version.clone(), canary)).or_default().clone()
    }

    pub(crate) fn read(&self) -> Vec<VersionCounters> {
        let table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<VersionCounters> = table
            .iter()
            .map(|((version, _), c)| VersionCounters {
                version: version.clone(),
                evaluated: c.evaluated.load(Ordering::Relaxed),
                enforced: c.enforced.load(Ordering::Relaxed),
                diverged: c.diverged.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.version.cmp(&b.version));
        out
    }
}

impl Counters {
    pub(crate) fn evaluated(&self) {
        self.evaluated.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn enforced(&self) {
        self.enforced.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn diverged(&self) {
        self.diverged.fetch_add(1, Ordering::Relaxed);
    }
}

/// The most recent divergences, bounded.
#[derive(Debug)]
pub(crate) struct DivergenceRing {
    capacity: usize,
    ring: Mutex<VecDeque<Divergence>>,
}

impl DivergenceRing {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), ring: Mutex::new(VecDeque::new()) }
    }

    pub(crate) fn push(&self, divergence: Divergence) {
        let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(divergence);
    }

    pub(crate) fn read(&self) -> Vec<Divergence> {
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_depends_on_key_and_id() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert!(bucket(&a, "r1") < BUCKETS);
        let same = (0..200).filter(|i| bucket(&a, &format!("r{i}")) == bucket(&b, &format!("r{i}"))).count();
        assert!(same < 5, "different keys choose differently");
        assert_eq!(bucket(&a, "r1"), bucket(&a, "r1"));
    }

    #[test]
    fn ring_is_bounded() {
        let ring = DivergenceRing::new(2);
        for i in 0..3 {
            ring.push(Divergence {
                at_ms: i,
                request_id: format!("r{i}"),
                request_digest: String::new(),
                version: VersionRef { tenant_id: "t".into(), policy_id: "p".into(), version: "1".into() },
                kind: CandidateKind::Shadow,
                active_allowed: true,
                active_reason: String::new(),
                candidate_allowed: false,
                candidate_reason: String::new(),
                enforced: false,
                active_digest: String::new(),
                candidate_digest: String::new(),
            });
        }
        let ids: Vec<String> = ring.read().into_iter().map(|d| d.request_id).collect();
        assert_eq!(ids, ["r1", "r2"]);
    }
}
