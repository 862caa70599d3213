//! The embedded store passes aesp-core's state-store conformance suite unchanged: on a real
//! data directory, and on the fault-injecting in-memory disk (exercising the backend seam).

mod common;

use std::sync::Arc;

use aesp_core::{StateStore, StateStoreOptions};
use aesp_store::EmbeddedStore;

mod on_disk {
    use super::*;

    aesp_core::state_store_conformance!(|options: StateStoreOptions| async move {
        Arc::new(common::TempStore::new(options)) as Arc<dyn StateStore>
    });
}

mod on_backend {
    use super::*;

    aesp_core::state_store_conformance!(|options: StateStoreOptions| async move {
        let store = EmbeddedStore::open_backend(common::FaultyDisk::new(), options).expect("opens");
        Arc::new(store) as Arc<dyn StateStore>
    });
}
