//! The memory and segment storages pass the log-storage conformance suite.

mod memory {
    use std::sync::Arc;

    use aesp_audit::{LogStorage, MemoryStorage};

    aesp_audit::log_storage_conformance!(|| async {
        Arc::new(MemoryStorage::default()) as Arc<dyn LogStorage>
    });
}

mod segment_faulty {
    use std::sync::Arc;

    use aesp_audit::{FaultyFileSystem, LogStorage, SegmentOptions, SegmentStorage};

    // Small segments, so that reads and appends cross segment boundaries.
    aesp_audit::log_storage_conformance!(|| async {
        let options = SegmentOptions { max_segment_bytes: 512, ..SegmentOptions::default() };
        Arc::new(SegmentStorage::open(Arc::new(FaultyFileSystem::new()), options).await.unwrap())
            as Arc<dyn LogStorage>
    });
}

mod segment_os {
    use std::sync::Arc;

    use aesp_audit::{LogStorage, OsFileSystem, SegmentOptions, SegmentStorage};

    aesp_audit::log_storage_conformance!(|| async {
        let dir = tempfile::tempdir().unwrap().keep();
        let fs = Arc::new(OsFileSystem::new(dir).unwrap());
        Arc::new(SegmentStorage::open(fs, SegmentOptions::default()).await.unwrap()) as Arc<dyn LogStorage>
    });
}
