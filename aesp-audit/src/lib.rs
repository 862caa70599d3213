//! # aesp-audit
//!
//! The verifiable, durable, signed audit log of AESP: a transparency log in the manner of
//! RFC 6962 / RFC 9162 and Go's `sumdb/tlog`.
//!
//! - Leaves are the exact bytes of each appended entry (for an
//!   [`AuditEvent`](aesp_core::proto::v1::AuditEvent), its canonical protobuf encoding),
//!   hashed with SHA-256 and the `0x00` / `0x01` prefixes.
//! - Checkpoints are C2SP `tlog-checkpoint` texts signed as C2SP `signed-note`s with ed25519
//!   ([`NoteSigner`], [`NoteVerifier`]), so that tools written elsewhere verify them.
//! - Inclusion proofs ([`TlogProof`], the C2SP `tlog-proof` form) and consistency proofs
//!   ([`ConsistencyProof`]) verify with the verifier key and the data alone.
//! - [`AuditLog`] group-commits appends (one write and one sync per batch) and integrates the
//!   tree in the background; [`verify_log`] checks a whole log and says what is wrong where.
//! - Storage is the [`LogStorage`] seam: [`MemoryStorage`] and the embedded
//!   [`SegmentStorage`], whose file I/O goes through [`FileSystem`] (the OS, or the
//!   fault-injecting [`FaultyFileSystem`] that loses unsynced writes). With the `conformance`
//!   feature, `conformance` is the suite every storage runs.

mod checkpoint;
mod compliance;
#[cfg(feature = "conformance")]
pub mod conformance;
mod crc;
mod export;
mod fs;
mod index;
mod intake;
mod log;
mod merkle;
mod note;
mod query;
mod retention;
mod storage;
mod subscribe;
mod verify;

pub use checkpoint::{Checkpoint, ConsistencyProof, SignedCheckpoint, TlogProof};
pub use compliance::*;
pub use export::*;
pub use fs::{CrashMode, DIRECT_IO_ALIGN, DirLock, FaultyFileSystem, FileHandle, FileSystem, OsFileSystem};
pub use log::{Append, AuditLog, AuditLogOptions, CommitStats};
pub use merkle::{
    Hash, MAX_TREE_SIZE, consistency_proof_of, empty_root, inclusion_proof_of, leaf_hash, node_hash, root_of,
    verify_consistency, verify_inclusion,
};
pub use note::{MAX_NOTE_LEN, NoteSignature, NoteSigner, NoteVerifier, SignedNote, note_key_id};
pub use query::{
    AuditFilter, AuditQuery, AuditStatistics, DEFAULT_PAGE_SIZE, IndexedEvent, MAX_PAGE_SIZE, Page,
};
pub use retention::{EVENT_ERASURE, EVENT_RETENTION_PRUNE, PruneReport, PruneRule, principal_pseudonym};
pub use storage::{
    BlockingAppend, Leaf, Lease, LogStorage, MAX_RULE_LEN, MemoryStorage, PruneRequest,
    SEGMENT_FORMAT_VERSION, SegmentOptions, SegmentStorage, StorageState, StoredCheckpoint, Tombstone,
};
pub use subscribe::{DEFAULT_SUBSCRIPTION_BATCH, Subscription, SubscriptionBatch};
pub use verify::{Problem, VerificationReport, VerifyOptions, verify_log};

/// Helpers for this crate's tests that need to reach below the public surface.
#[doc(hidden)]
pub mod testing {
    /// Changes entry `index` in the segment files of `fs` by xoring its first byte with
    /// `byte`, and recomputes the frame checksums, so only the Merkle tree can tell.
    pub fn rewrite_entry(fs: &crate::FaultyFileSystem, index: u64, byte: u8) -> aesp_core::Result<()> {
        crate::storage::rewrite_entry(fs, index, byte)
    }
}
