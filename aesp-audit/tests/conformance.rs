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

    // Small segments, so that reads and appends cross segment boundaries; through the page
    // cache.
    aesp_audit::log_storage_conformance!(|| async {
        let options =
            SegmentOptions { max_segment_bytes: 512, direct_io: false, ..SegmentOptions::default() };
        Arc::new(SegmentStorage::open(Arc::new(FaultyFileSystem::new()), options).await.unwrap())
            as Arc<dyn LogStorage>
    });
}

mod segment_faulty_direct {
    use std::sync::Arc;

    use aesp_audit::{FaultyFileSystem, LogStorage, SegmentOptions, SegmentStorage};

    // Frames written directly, rewriting the block where the log ends.
    aesp_audit::log_storage_conformance!(|| async {
        let options = SegmentOptions { max_segment_bytes: 512, direct_io: true, ..SegmentOptions::default() };
        Arc::new(SegmentStorage::open(Arc::new(FaultyFileSystem::new()), options).await.unwrap())
            as Arc<dyn LogStorage>
    });
}

mod segment_os_direct {
    use std::sync::Arc;

    use aesp_audit::{LogStorage, OsFileSystem, SegmentOptions, SegmentStorage};

    // Direct I/O where the file system of the temporary directory has it.
    aesp_audit::log_storage_conformance!(|| async {
        let dir = tempfile::tempdir().unwrap().keep();
        let fs = Arc::new(OsFileSystem::new(dir).unwrap());
        let options = SegmentOptions { direct_io: true, ..SegmentOptions::default() };
        Arc::new(SegmentStorage::open(fs, options).await.unwrap()) as Arc<dyn LogStorage>
    });
}

mod segment_os {
    use std::sync::Arc;

    use aesp_audit::{LogStorage, OsFileSystem, SegmentOptions, SegmentStorage};

    aesp_audit::log_storage_conformance!(|| async {
        let dir = tempfile::tempdir().unwrap().keep();
        let fs = Arc::new(OsFileSystem::new(dir).unwrap());
        let options = SegmentOptions { direct_io: false, ..SegmentOptions::default() };
        Arc::new(SegmentStorage::open(fs, options).await.unwrap()) as Arc<dyn LogStorage>
    });
}
