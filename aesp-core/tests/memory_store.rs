//! The in-memory state store passes the state-store conformance suite.

use std::sync::Arc;

use aesp_core::{MemoryStore, StateStore, StateStoreOptions};

aesp_core::state_store_conformance!(|options: StateStoreOptions| async move {
    Arc::new(MemoryStore::new(options)) as Arc<dyn StateStore>
});
