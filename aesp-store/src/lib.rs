//! # aesp-store
//!
//! Durable backends for AESP's control-plane state: the [`StateStore`](aesp_core::StateStore)
//! trait of `aesp-core`, kept on disk.
//!
//! [`EmbeddedStore`] is the default: a data directory holding a [redb] database (pure Rust,
//! ACID, copy-on-write B-trees with checksums), opened by one Host. It passes the state-store
//! conformance suite of `aesp-core` unchanged, group-commits concurrent transactions (many
//! transactions, one fsync), keeps history for consistent scans and watches that resume after
//! a restart, refuses a data directory written by a newer version or held by another process,
//! and takes online backups.
//!
//! ```no_run
//! # async fn demo() -> aesp_core::Result<()> {
//! use aesp_core::{StateStore as _, StateStoreExt as _, StateStoreOptions};
//! let store = aesp_store::EmbeddedStore::open("./data", StateStoreOptions::default())?;
//! let revision = store.put(b"tenants/acme/config", b"{}").await?;
//! assert!(store.get(b"tenants/acme/config").await?.is_some());
//! store.backup("./backup").await?;
//! # let _ = revision;
//! # Ok(())
//! # }
//! ```

mod codec;
mod datadir;
mod embedded;

pub use datadir::FORMAT_VERSION;
pub use embedded::EmbeddedStore;
/// The redb storage-backend trait, for [`EmbeddedStore::open_backend`].
pub use redb::StorageBackend;
