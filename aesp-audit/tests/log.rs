//! The audit log end to end: appends, checkpoints, proofs, key rotation, whole-log
//! verification and its classification of damage, and crash recovery against dropped writes.
#![expect(clippy::unwrap_used, reason = "test helpers fail by panicking")]

mod common;

use std::sync::Arc;

use aesp_audit::{
    AuditLog, ConsistencyProof, CrashMode, FaultyFileSystem, LogStorage, MemoryStorage, Problem,
    SegmentOptions, SegmentStorage, SignedCheckpoint, TlogProof, VerifyOptions, verify_log,
};
use aesp_core::ErrorCode;
use bytes::Bytes;
use common::{ORIGIN, event, open_log, signer};
use proptest::prelude::*;
use prost::Message as _;

fn small_segments() -> SegmentOptions {
    SegmentOptions { max_segment_bytes: 2048, ..SegmentOptions::default() }
}

async fn segment(fs: &FaultyFileSystem) -> Arc<dyn LogStorage> {
    Arc::new(SegmentStorage::open(Arc::new(fs.clone()), small_segments()).await.unwrap())
}

fn strict() -> VerifyOptions {
    VerifyOptions { origin: Some(ORIGIN.into()), allow_unsigned_tail: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_checkpoints_proofs_and_rotation() {
    let fs = FaultyFileSystem::new();
    let old_key = signer(1, "audit.example.com/test-2026-01");
    let log = open_log(segment(&fs).await, &old_key).await;
    // Concurrent appenders share group commits; indices are unique and gapless.
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for s in 0..25u64 {
                got.push((log.append(&event(t, s)).await.unwrap(), t, s));
            }
            got.push((log.append_batch(&[event(t, 100), event(t, 101)]).await.unwrap().start, t, 100));
            got
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    // 104 appends made 108 entries durable, in at least one group and at most one per append.
    let stats = log.commit_stats();
    assert_eq!((stats.entries, stats.failed), (108, 0));
    assert!((1..=104).contains(&stats.groups), "{stats:?}");
    assert!((2..=108).contains(&stats.largest_group), "{stats:?}");
    assert!(stats.commit_time > std::time::Duration::ZERO, "{stats:?}");
    let first = log.checkpoint().await.unwrap();
    assert_eq!(first.checkpoint().size, 108);
    assert_eq!(first.checkpoint().origin, ORIGIN);
    for &(index, t, s) in &acked {
        let bytes = log.entry(index).await.unwrap();
        assert_eq!(bytes, event(t, s).encode_to_vec());
        let proof = log.prove(index).await.unwrap();
        let parsed = TlogProof::parse(proof.to_text().as_bytes()).unwrap();
        parsed.verify(&bytes, std::slice::from_ref(log.verifier())).unwrap();
        assert!(parsed.verify(b"forged", std::slice::from_ref(log.verifier())).is_err());
    }

    // Rotate: reopen with a new key under a new name.
    drop(log);
    let new_key = signer(2, "audit.example.com/test-2026-02");
    let log = open_log(segment(&fs).await, &new_key).await;
    log.append_batch(&[event(9, 1), event(9, 2), event(9, 3)]).await.unwrap();
    let second = log.close().await.unwrap();
    assert_eq!(second.checkpoint().size, 111);
    // Old checkpoints verify with the old key, new ones with the new key only.
    let old =
        SignedCheckpoint::parse_verified(first.to_text().as_bytes(), &[old_key.verifier().clone()]).unwrap();
    assert!(old.verify(&[new_key.verifier().clone()]).is_err());
    assert!(second.verify(&[old_key.verifier().clone()]).is_err());
    let storage = segment(&fs).await;
    let log = open_log(Arc::clone(&storage), &new_key).await;
    let consistency = log.consistency_proof(108, 111).await.unwrap();
    let consistency = ConsistencyProof::parse(consistency.to_text().as_bytes()).unwrap();
    let both = [old_key.verifier().clone(), new_key.verifier().clone()];
    consistency.verify(&old, &second, &both).unwrap();
    assert!(consistency.verify(&old, &second, &[new_key.verifier().clone()]).is_err());

    let report = verify_log(storage.as_ref(), &both, &strict()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, 111);
    // Without the old key, its checkpoints are reported.
    let report = verify_log(storage.as_ref(), &[new_key.verifier().clone()], &strict()).await.unwrap();
    assert!(
        report.problems.iter().any(|p| matches!(p, Problem::BadCheckpoint { size: 108, .. })),
        "{report:?}"
    );
    // Verifier keys round-trip through their text form.
    assert_eq!(aesp_audit::NoteVerifier::parse(&new_key.verifier().to_text()).unwrap(), *new_key.verifier());
}

/// A larger log on disk, filled by concurrent appenders: proofs of entries across segments
/// verify against the final checkpoint, and the whole log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_on_a_larger_log_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(aesp_audit::OsFileSystem::new(dir.path()).unwrap());
    let options = SegmentOptions { max_segment_bytes: 64 * 1024, ..SegmentOptions::default() };
    let storage: Arc<dyn LogStorage> = Arc::new(SegmentStorage::open(fs, options).await.unwrap());
    let key = signer(1, "k");
    let log = open_log(Arc::clone(&storage), &key).await;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..5u64 {
                let batch: Vec<Bytes> = (0..500u64).map(|i| Bytes::from(format!("{t}/{b}/{i}"))).collect();
                log.append_encoded(batch).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let checkpoint = log.checkpoint().await.unwrap();
    assert_eq!(checkpoint.checkpoint().size, 20_000);
    for index in [0u64, 1, 4242, 10_000, 16_383, 16_384, 19_999] {
        let entry = log.entry(index).await.unwrap();
        let proof = log.prove(index).await.unwrap();
        assert_eq!(proof.checkpoint, checkpoint);
        proof.verify(&entry, &[key.verifier().clone()]).unwrap();
    }
    let report = verify_log(storage.as_ref(), &[key.verifier().clone()], &strict()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, 20_000);
}

#[tokio::test]
async fn leaves_changed_behind_valid_checksums_are_found_by_index() {
    let fs = FaultyFileSystem::new();
    let key = signer(1, "k");
    let log = open_log(segment(&fs).await, &key).await;
    let entries: Vec<Bytes> = (0..40u32).map(|i| Bytes::from(format!("entry {i}"))).collect();
    log.append_encoded(entries).await.unwrap();
    log.close().await.unwrap();
    // Rewrite entry 17 with a recomputed frame checksum: only the tree can tell.
    aesp_audit::testing::rewrite_entry(&fs, 17, 0x20).unwrap();
    let storage = segment(&fs).await;
    let report = verify_log(storage.as_ref(), &[key.verifier().clone()], &strict()).await.unwrap();
    assert!(report.problems.contains(&Problem::LeafChanged { index: 17 }), "{report:?}");
    assert!(report.problems.iter().any(|p| matches!(p, Problem::RootMismatch { .. })), "{report:?}");
}

#[tokio::test]
async fn a_checkpoint_of_another_key_or_inconsistent_history_is_reported() {
    let storage = Arc::new(MemoryStorage::default());
    let key = signer(1, "k");
    let log = open_log(Arc::clone(&storage) as Arc<dyn LogStorage>, &key).await;
    log.append_encoded(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]).await.unwrap();
    log.close().await.unwrap();
    // A second integrator (another key) forges a checkpoint of the same size, other root.
    // Once the log is gone its integrator gives the lease up.
    let mut lease = None;
    for _ in 0..500 {
        if let Ok(l) = storage.acquire_lease("intruder", std::time::Duration::from_secs(10)).await {
            lease = Some(l);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let lease = lease.expect("the lease is released when the log is dropped");
    let forged = SignedCheckpoint::sign(
        aesp_audit::Checkpoint { origin: ORIGIN.into(), size: 2, root_hash: [7; 32], extensions: vec![] },
        &key,
    )
    .await
    .unwrap();
    storage.store_checkpoint(&lease, 2, forged.to_text().as_bytes()).await.unwrap();
    let other = SignedCheckpoint::sign(
        aesp_audit::Checkpoint { origin: ORIGIN.into(), size: 2, root_hash: [7; 32], extensions: vec![] },
        &signer(3, "k"),
    )
    .await
    .unwrap();
    storage.store_checkpoint(&lease, 2, other.to_text().as_bytes()).await.unwrap();
    let report = verify_log(storage.as_ref(), &[key.verifier().clone()], &strict()).await.unwrap();
    assert!(report.problems.contains(&Problem::Inconsistent { older: 2, newer: 2 }), "{report:?}");
    assert!(report.problems.contains(&Problem::RootMismatch { size: 2 }), "{report:?}");
    assert!(
        report.problems.iter().any(|p| matches!(p, Problem::BadCheckpoint { size: 2, .. })),
        "{report:?}"
    );
}

/// Two writers share one storage (as two Hosts share a database): both append, one integrates
/// and signs; when it goes away, the other takes the lease over and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_writers_one_integrator() {
    let storage: Arc<dyn LogStorage> = Arc::new(MemoryStorage::default());
    let key = signer(1, "k");
    let mut options = common::options();
    options.integrator = "host-a".into();
    let a = AuditLog::open(Arc::clone(&storage), key.clone(), options.clone()).await.unwrap();
    options.integrator = "host-b".into();
    let b = AuditLog::open(Arc::clone(&storage), key.clone(), options).await.unwrap();
    let mut indices = Vec::new();
    for i in 0..20u64 {
        indices.push(a.append(&event(1, i)).await.unwrap());
        indices.push(b.append(&event(2, i)).await.unwrap());
    }
    indices.sort_unstable();
    assert_eq!(indices, (0..40).collect::<Vec<_>>());
    assert_eq!(a.checkpoint().await.unwrap().checkpoint().size, 40);
    assert_eq!(b.checkpoint().await.unwrap_err().code(), ErrorCode::Conflict);
    a.close().await.unwrap();
    b.append(&event(2, 99)).await.unwrap();
    let mut signed = None;
    for _ in 0..500 {
        if let Ok(c) = b.checkpoint().await {
            signed = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(signed.expect("b takes the lease over").checkpoint().size, 41);
    let report = verify_log(storage.as_ref(), &[key.verifier().clone()], &strict()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// Many tasks append at once, singly and in batches, through groups of at most three entries
/// and at most five entries pending (so appends wait for room): with the committer as a task
/// (memory) and on its own thread (segment files), every append gets its own consecutive
/// indices, batches stay whole, and each index holds what was appended there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_through_small_groups_get_every_index_once() {
    for storage in
        [Arc::new(MemoryStorage::default()) as Arc<dyn LogStorage>, segment(&FaultyFileSystem::new()).await]
    {
        let mut options = common::options();
        options.max_batch_entries = 3;
        options.max_pending_entries = 5;
        let log = AuditLog::open(Arc::clone(&storage), signer(1, "k"), options).await.unwrap();
        let tasks: Vec<_> = (0..6u8)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut appended = Vec::new();
                    for n in 0..150u8 {
                        let batch: Vec<Bytes> = (0..=n % 3).map(|i| Bytes::from(vec![t, n, i])).collect();
                        let range = log.append_encoded(batch.clone()).await.unwrap();
                        appended.push((range, batch));
                    }
                    appended
                })
            })
            .collect();
        let mut appended = Vec::new();
        for task in tasks {
            appended.extend(task.await.unwrap());
        }
        appended.sort_by_key(|(range, _)| range.start);
        let mut next = 0;
        for (range, batch) in &appended {
            assert_eq!(range.start, next, "indices are given once each, with no gap");
            assert_eq!(range.end - range.start, batch.len() as u64, "a batch stays whole");
            next = range.end;
        }
        // Storage may answer a read with a prefix of the range: read on until the end.
        let mut stored = Vec::new();
        while (stored.len() as u64) < next {
            stored.extend(storage.read_entries(stored.len() as u64, next).await.unwrap());
        }
        let expected: Vec<Bytes> = appended.into_iter().flat_map(|(_, batch)| batch).collect();
        assert_eq!(stored, expected, "each index holds what was appended there");
        let stats = log.commit_stats();
        assert_eq!((stats.entries, stats.failed), (next, 0));
        assert!(stats.largest_group <= 3, "{stats:?}");
        assert_eq!(log.checkpoint().await.unwrap().checkpoint().size, next);
    }
}

/// `append_one` checks its entry when it is made and queues it only when first polled: an
/// entry over the limit is refused without a trace, an append dropped unpolled writes
/// nothing, and single appends waiting for room (one entry pending at most) each get their
/// own index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_appends_are_checked_at_once_and_queued_when_polled() {
    let storage: Arc<dyn LogStorage> = Arc::new(MemoryStorage::default());
    let mut options = common::options();
    options.max_batch_entries = 1;
    options.max_batch_bytes = 8;
    options.max_pending_entries = 1;
    let log = AuditLog::open(Arc::clone(&storage), signer(1, "k"), options).await.unwrap();

    let too_long = log.append_one(Bytes::from_static(b"nine byte"));
    assert_eq!(too_long.await.unwrap_err().code(), ErrorCode::InvalidArgument);
    drop(log.append_one(Bytes::from_static(b"dropped")));
    assert_eq!(log.append_one(Bytes::from_static(b"first")).await.unwrap(), 0);

    let tasks: Vec<_> = (1..=40u8)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { (log.append_one(Bytes::from(vec![n])).await.unwrap(), n) })
        })
        .collect();
    let mut indices = Vec::new();
    for task in tasks {
        let (index, n) = task.await.unwrap();
        assert_eq!(storage.read_entries(index, index + 1).await.unwrap(), vec![Bytes::from(vec![n])]);
        indices.push(index);
    }
    indices.sort_unstable();
    assert_eq!(indices, (1..=40).collect::<Vec<u64>>(), "each append has its own index, none lost");
    let stats = log.commit_stats();
    assert_eq!((stats.entries, stats.largest_group), (41, 1));
}

#[tokio::test]
async fn a_failed_sync_acknowledges_nothing_and_stops_the_writer() {
    let fs = FaultyFileSystem::new();
    let key = signer(1, "k");
    let log = open_log(segment(&fs).await, &key).await;
    log.append_encoded(vec![Bytes::from_static(b"kept")]).await.unwrap();
    fs.fail_syncs(true);
    let error = log.append_encoded(vec![Bytes::from_static(b"lost")]).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::ServiceUnavailable);
    fs.fail_syncs(false);
    assert!(log.append_encoded(vec![Bytes::from_static(b"after")]).await.is_err());
    let stats = log.commit_stats();
    assert_eq!((stats.groups, stats.entries, stats.failed, stats.largest_group), (1, 1, 2, 1));
    drop(log);
    let fs = fs.crash(CrashMode::DropUnsynced);
    let storage = segment(&fs).await;
    assert_eq!(storage.state().await.unwrap().size, 1);
    let log = open_log(storage, &key).await;
    assert_eq!(log.append_encoded(vec![Bytes::from_static(b"again")]).await.unwrap(), 1..2);
}

/// Appenders run while the file system crashes at a random point (dropping or tearing unsynced
/// writes); after reopening, every acknowledged entry is there and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_with_dropped_writes_loses_nothing_acknowledged() {
    let mut fs = FaultyFileSystem::new();
    let key = signer(1, "k");
    let mut acked: Vec<(u64, Bytes)> = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..12u64 {
        let storage = segment(&fs).await;
        let log = open_log(Arc::clone(&storage), &key).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for t in 0..3u64 {
            let (log, tx) = (log.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                for s in 0.. {
                    let entries: Vec<Bytes> =
                        (0..(s % 3 + 1)).map(|k| Bytes::from(format!("r{round} t{t} s{s} k{k}"))).collect();
                    match log.append_encoded(entries.clone()).await {
                        Ok(range) => {
                            for (i, e) in range.zip(entries) {
                                let _ = tx.send((i, e));
                            }
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        drop(tx);
        let wanted = 5 + next() % 60;
        let mut seen = 0;
        while seen < wanted {
            let Some(item) = rx.recv().await else { break };
            acked.push(item);
            seen += 1;
        }
        let mode = if next() % 2 == 0 {
            CrashMode::DropUnsynced
        } else {
            CrashMode::Tear { keep: (next() % 2) as usize, fraction_per_mille: (next() % 1000) as u32 }
        };
        fs = fs.crash(mode);
        for task in tasks {
            task.await.unwrap();
        }
        while let Ok(item) = rx.try_recv() {
            acked.push(item);
        }
        drop(log);
        drop(storage);

        let storage = segment(&fs).await;
        let size = storage.state().await.unwrap().size;
        for (index, bytes) in &acked {
            assert!(*index < size, "round {round}: acknowledged entry {index} lost (size {size})");
            assert_eq!(storage.read_entries(*index, index + 1).await.unwrap()[0], *bytes, "round {round}");
        }
        let log = open_log(Arc::clone(&storage), &key).await;
        log.checkpoint().await.unwrap();
        let report = verify_log(storage.as_ref(), &[key.verifier().clone()], &strict()).await.unwrap();
        assert!(report.is_ok(), "round {round}: {report:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every inclusion and consistency proof the log serves verifies, for random sizes;
    /// proofs against a checkpoint of another key fail; checkpoints round-trip as text.
    #[test]
    fn served_proofs_verify(batches in proptest::collection::vec(1usize..40, 1..8), picks in proptest::collection::vec(any::<u64>(), 8)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let key = signer(1, "k");
            let storage: Arc<dyn LogStorage> = Arc::new(MemoryStorage::default());
            let log: AuditLog = open_log(Arc::clone(&storage), &key).await;
            let mut entries = Vec::new();
            let mut checkpoints = Vec::new();
            for (b, n) in batches.iter().enumerate() {
                let batch: Vec<Bytes> = (0..*n).map(|i| Bytes::from(format!("{b}/{i}"))).collect();
                entries.extend(batch.clone());
                log.append_encoded(batch).await.unwrap();
                checkpoints.push(log.checkpoint().await.unwrap());
            }
            let size = entries.len() as u64;
            let verifiers = [key.verifier().clone()];
            let last = checkpoints.last().unwrap().clone();
            prop_assert_eq!(SignedCheckpoint::parse(last.to_text().as_bytes()).unwrap(), last.clone());
            for pick in &picks {
                let index = pick % size;
                let proof = log.prove(index).await.unwrap();
                proof.verify(&entries[index as usize], &verifiers).unwrap();
                let other = signer(2, "k");
                let forged = SignedCheckpoint::sign(last.checkpoint().clone(), &other).await.unwrap();
                let against_other = TlogProof { checkpoint: forged, ..proof };
                prop_assert!(against_other.verify(&entries[index as usize], &verifiers).is_err());
            }
            for pick in &picks {
                let old = &checkpoints[(*pick as usize) % checkpoints.len()];
                let proof = log.consistency_proof(old.checkpoint().size, size).await.unwrap();
                proof.verify(old, &last, &verifiers).unwrap();
                if old.checkpoint().size < size && old.checkpoint().size > 0 {
                    prop_assert!(proof.verify(&last, old, &verifiers).is_err());
                }
            }
            Ok(())
        })?;
    }

    /// Any single-byte change anywhere in the stored files is detected: the storage refuses
    /// to open with an error naming the file and offset, or the verification reports it. (The
    /// zeros the last segment has ahead of its frames hold nothing; they are left out.)
    #[test]
    fn any_single_byte_change_is_detected(file_pick in any::<usize>(), offset_pick in any::<usize>(), flip in 1u8..=255) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let fs = FaultyFileSystem::new();
            let key = signer(1, "k");
            let log = open_log(segment(&fs).await, &key).await;
            for b in 0..6u32 {
                let batch: Vec<Bytes> = (0..5u32).map(|i| Bytes::from(format!("batch {b} entry {i} {}", "x".repeat(i as usize * 9)))).collect();
                log.append_encoded(batch).await.unwrap();
                if b % 2 == 1 { log.checkpoint().await.unwrap(); }
            }
            drop(log);
            let names: Vec<String> = aesp_audit::FileSystem::list(&fs).unwrap().into_iter().filter(|n| !fs.read_file(n).unwrap().is_empty()).collect();
            let name = &names[file_pick % names.len()];
            let mut data = fs.read_file(name).unwrap();
            let used = data.iter().rposition(|&b| b != 0).map_or(data.len(), |p| p + 1);
            let at = offset_pick % used;
            data[at] ^= flip;
            fs.write_file(name, data);
            match SegmentStorage::open(Arc::new(fs.clone()), small_segments()).await {
                Err(e) => {
                    prop_assert_eq!(e.code(), ErrorCode::DataCorrupted);
                    prop_assert!(e.message().contains(name.as_str()), "{}", e);
                }
                Ok(storage) => {
                    let report = verify_log(&storage, &[key.verifier().clone()], &strict()).await.unwrap();
                    prop_assert!(!report.is_ok(), "{} at {}: undetected", name, at);
                }
            }
            Ok(())
        })?;
    }
}
