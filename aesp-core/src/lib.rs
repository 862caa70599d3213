//! # aesp-core
//!
//! The foundation of AESP, the ALTAR Enterprise Security Protocol: the protocol's generated
//! types ([`proto`]), the shared [`Error`] with its stable [`ErrorCode`]s and lossless wire
//! forms, the dynamic [`Value`](proto::v1::Value) and validation of tool parameters against
//! the Host's contract schema ([`ParameterValidator`]), and the traits that make AESP
//! pluggable:
//!
//! | seam | trait | built in |
//! | --- | --- | --- |
//! | control-plane state | [`StateStore`] | [`MemoryStore`] (durable ones live in `aesp-store`) |
//! | host ↔ runtime transport | [`RuntimeTransport`] | (in-process and gRPC in `aesp-host`) |
//! | identity providers | [`IdentityProvider`] | (in `aesp-host`) |
//! | signing keys | [`Signer`], [`KeyProvider`] | [`Ed25519Signer`], [`KeyRing`] |
//! | clock | [`Clock`] | [`SystemClock`], [`ManualClock`] |
//!
//! Each trait's documentation has a **Contract** section: what every implementation must
//! guarantee. With the `conformance` feature, `state::conformance` is the test suite that
//! every state-store backend runs.

mod clock;
mod error;
mod identity;
mod ids;
pub mod proto;
mod schema;
mod signer;
pub mod state;
mod transport;
mod value;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, Error, ErrorCode, Result};
pub use identity::{Authentication, Credential, Identity, IdentityProvider, Secret};
pub use ids::{id_time_ms, new_id, new_uuid};
pub use schema::{
    CONSTRAINTS, ParameterValidator, Subject, TypeValidator, ValidationLimits, Violation, Violations,
};
pub use signer::{
    Ed25519Signer, KeyProvider, KeyPurpose, KeyRing, PublicKey, SignatureAlgorithm, Signer, key_id,
};
pub use state::{
    Compare, EventKind, KeyValue, MemoryStore, Op, RangePage, RangeRequest, Revision, StateStore,
    StateStoreExt, StateStoreOptions, Txn, TxnOutcome, WatchEvent, WatchStream,
};
pub use transport::{ChunkStream, RuntimeTransport};
pub use value::MAX_JSON_DEPTH;
