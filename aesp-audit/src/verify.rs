//! Whole-log verification: recompute the tree from the stored entries and check the stored
//! hashes and every checkpoint against it.

use std::fmt;

use aesp_core::Result;

use crate::{
    checkpoint::SignedCheckpoint,
    merkle::{Hash, RightEdge, stored_hash_count},
    note::NoteVerifier,
    storage::{Leaf, LogStorage, StoredCheckpoint},
};

/// How many entries are read per storage call.
const CHUNK: u64 = 64 * 1024;
/// The most problems a report lists.
const MAX_PROBLEMS: usize = 1000;

/// Options of [`verify_log`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The origin every checkpoint must name; any origin when `None`.
    pub origin: Option<String>,
    /// Accept entries beyond the latest checkpoint (a live log) instead of reporting them.
    pub allow_unsigned_tail: bool,
}

/// Something wrong with a log, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The entry's bytes changed since it was integrated: its leaf hash differs from the
    /// stored one.
    LeafChanged {
        /// The entry's index.
        index: u64,
    },
    /// A stored interior hash differs from the recomputed one.
    StoredHashChanged {
        /// Its position in stored-hash order.
        position: u64,
    },
    /// A checkpoint's signature does not verify (or it does not parse).
    BadCheckpoint {
        /// The tree size it was stored under.
        size: u64,
        /// Why.
        reason: String,
    },
    /// A checkpoint's root hash differs from the tree recomputed from the entries.
    RootMismatch {
        /// Its tree size.
        size: u64,
    },
    /// Two checkpoints of the same size with different roots, or a checkpoint out of order.
    Inconsistent {
        /// The older checkpoint's size.
        older: u64,
        /// The newer checkpoint's size.
        newer: u64,
    },
    /// A checkpoint covers more entries than the log holds: entries are missing.
    EntriesMissing {
        /// The checkpoint's size.
        checkpoint_size: u64,
        /// The entries found.
        found: u64,
    },
    /// Entries beyond the latest checkpoint (none signed them).
    EntriesAdded {
        /// The latest checkpoint's size (0 without one).
        checkpoint_size: u64,
        /// The entries found.
        found: u64,
    },
    /// The entries could not be read (damaged storage); the message says where.
    Unreadable {
        /// The first entry that could not be read.
        index: u64,
        /// The storage's error.
        error: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LeafChanged { index } => write!(f, "entry {index} changed"),
            Self::StoredHashChanged { position } => write!(f, "stored hash {position} changed"),
            Self::BadCheckpoint { size, reason } => write!(f, "checkpoint of size {size} is bad: {reason}"),
            Self::RootMismatch { size } => write!(f, "checkpoint of size {size} does not match the entries"),
            Self::Inconsistent { older, newer } => {
                write!(f, "checkpoints of sizes {older} and {newer} are not consistent")
            }
            Self::EntriesMissing { checkpoint_size, found } => {
                write!(f, "a checkpoint covers {checkpoint_size} entries but only {found} are stored")
            }
            Self::EntriesAdded { checkpoint_size, found } => {
                write!(f, "{found} entries are stored but the latest checkpoint covers {checkpoint_size}")
            }
            Self::Unreadable { index, error } => write!(f, "entries from {index} cannot be read: {error}"),
        }
    }
}

/// The outcome of [`verify_log`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerificationReport {
    /// The entries read and hashed (pruned ones included).
    pub entries: u64,
    /// How many of them were pruned: their tombstones' leaf hashes were checked instead.
    pub pruned: u64,
    /// The checkpoints checked.
    pub checkpoints: usize,
    /// The latest checkpoint's size, if there is one.
    pub latest_checkpoint: Option<u64>,
    /// What is wrong (empty when the log verifies), at most 1000.
    pub problems: Vec<Problem>,
}

impl VerificationReport {
    /// Whether the log verified.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn push(&mut self, problem: Problem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        }
    }
}

/// Verifies a whole log: every entry is hashed, the stored hashes are compared with the
/// recomputed ones, every checkpoint must be signed by one of `verifiers` and match the tree
/// at its size, and the entries must match the latest checkpoint's size.
pub async fn verify_log(
    storage: &dyn LogStorage,
    verifiers: &[NoteVerifier],
    options: &VerifyOptions,
) -> Result<VerificationReport> {
    let state = storage.state().await?;
    let mut report = VerificationReport::default();
    let checkpoints: Vec<StoredCheckpoint> = storage.checkpoints(0, usize::MAX).await?;
    report.checkpoints = checkpoints.len();
    report.latest_checkpoint = checkpoints.last().map(|c| c.size);

    // Parse and check each checkpoint; keep (size, root) of those that verify.
    let mut roots: Vec<(u64, Hash)> = Vec::new();
    for stored in &checkpoints {
        let parsed = SignedCheckpoint::parse(&stored.note).and_then(|c| c.verify(verifiers).map(|()| c));
        match parsed {
            Err(e) => {
                report.push(Problem::BadCheckpoint { size: stored.size, reason: e.message().to_owned() })
            }
            Ok(c) => {
                let cp = c.checkpoint();
                if cp.size != stored.size {
                    report.push(Problem::BadCheckpoint {
                        size: stored.size,
                        reason: format!("it says size {}", cp.size),
                    });
                } else if options.origin.as_ref().is_some_and(|o| *o != cp.origin) {
                    report.push(Problem::BadCheckpoint {
                        size: stored.size,
                        reason: format!("origin `{}`", cp.origin),
                    });
                } else {
                    if let Some(&(older, root)) = roots.last()
                        && older == cp.size
                        && root != cp.root_hash
                    {
                        report.push(Problem::Inconsistent { older, newer: cp.size });
                    }
                    roots.push((cp.size, cp.root_hash));
                }
            }
        }
    }

    // Recompute the tree.
    let mut edge = RightEdge::default();
    let mut next_root = roots.iter().peekable();
    while let Some(&&(size, root)) = next_root.peek() {
        if size != 0 {
            break;
        }
        if root != edge.root() {
            report.push(Problem::RootMismatch { size });
        }
        next_root.next();
    }
    let stored_limit = stored_hash_count(state.integrated_size.min(state.size));
    let mut position = 0u64;
    let mut recomputed: Vec<Hash> = Vec::new();
    let mut index = 0u64;
    while index < state.size {
        let end = index.saturating_add(CHUNK).min(state.size);
        let entries = match storage.read_leaves(index, end).await {
            Ok(e) if !e.is_empty() => e,
            Ok(_) => break,
            Err(e) => {
                report.push(Problem::Unreadable { index, error: e.message().to_owned() });
                break;
            }
        };
        recomputed.clear();
        let start_position = position;
        for entry in &entries {
            if matches!(entry, Leaf::Pruned(_)) {
                report.pruned = report.pruned.saturating_add(1);
            }
            edge.push(entry.hash(), |h| recomputed.push(*h));
            while let Some(&&(size, root)) = next_root.peek() {
                if size != edge.size() {
                    break;
                }
                if root != edge.root() {
                    report.push(Problem::RootMismatch { size });
                }
                next_root.next();
            }
        }
        position = position.saturating_add(recomputed.len() as u64);
        // Compare with the stored hashes that exist.
        let upto = position.min(stored_limit);
        if upto > start_position {
            let indexes: Vec<u64> = (start_position..upto).collect();
            let stored = storage.read_hashes(&indexes).await?;
            let leaf_positions = leaf_positions(index, entries.len());
            for (offset, (got, want)) in stored.iter().zip(recomputed.iter()).enumerate() {
                if got != want {
                    let p = start_position.saturating_add(offset as u64);
                    match leaf_positions.binary_search_by_key(&p, |&(pos, _)| pos) {
                        Ok(i) => {
                            let idx = leaf_positions.get(i).map_or(0, |&(_, leaf)| leaf);
                            report.push(Problem::LeafChanged { index: idx });
                        }
                        Err(_) => report.push(Problem::StoredHashChanged { position: p }),
                    }
                }
            }
        }
        index = index.saturating_add(entries.len() as u64);
    }
    report.entries = index;
    for &(size, _) in next_root {
        report.push(Problem::EntriesMissing { checkpoint_size: size, found: index });
    }
    let latest = report.latest_checkpoint.unwrap_or(0);
    if index > latest && !options.allow_unsigned_tail {
        report.push(Problem::EntriesAdded { checkpoint_size: latest, found: index });
    }
    Ok(report)
}

/// The stored-hash positions of the leaves `first..first + entries.len()`.
fn leaf_positions(first: u64, count: usize) -> Vec<(u64, u64)> {
    (0..count as u64)
        .map(|i| {
            let leaf = first.saturating_add(i);
            (crate::merkle::stored_hash_index(0, leaf), leaf)
        })
        .collect()
}
