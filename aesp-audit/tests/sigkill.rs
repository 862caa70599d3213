//! Crash safety against SIGKILL: this test binary re-runs itself as a child that appends in a
//! loop and prints each acknowledged entry; the parent kills it at a random moment, reopens
//! the log and checks that every acknowledged entry is there and the log verifies. Also the
//! segment directory's lock, which keeps a second writer out.
#![expect(clippy::unwrap_used, reason = "test helpers fail by panicking")]

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use aesp_audit::{
    DirLock, FileHandle, FileSystem, LogStorage, OsFileSystem, SegmentOptions, SegmentStorage, VerifyOptions,
    verify_log,
};
use aesp_core::ErrorCode;
use bytes::Bytes;
use common::{open_log, signer};

const DIR_VAR: &str = "AESP_AUDIT_CRASH_DIR";

fn entry(round: u64, task: u64, seq: u64) -> Bytes {
    Bytes::from(format!("round {round} task {task} seq {seq} {}", "p".repeat((seq % 50) as usize)))
}

async fn storage(dir: &str) -> Arc<dyn LogStorage> {
    let options = SegmentOptions { max_segment_bytes: 64 * 1024, ..SegmentOptions::default() };
    Arc::new(SegmentStorage::open(Arc::new(OsFileSystem::new(dir).unwrap()), options).await.unwrap())
}

/// The child: appends until killed. Runs only when the parent sets the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by `sigkill_loses_nothing_acknowledged` as its child process"]
async fn sigkill_child() {
    let dir = std::env::var(DIR_VAR).expect("the parent sets the directory");
    let round: u64 = std::env::var("AESP_AUDIT_CRASH_ROUND").unwrap().parse().unwrap();
    let log = open_log(storage(&dir).await, &signer(1, "k")).await;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for t in 0..4u64 {
        let (log, tx) = (log.clone(), tx.clone());
        tokio::spawn(async move {
            for s in 0.. {
                let range = log.append_encoded(vec![entry(round, t, s)]).await.unwrap();
                tx.send(format!("ack {} {round} {t} {s}", range.start)).unwrap();
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    for line in rx {
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(u64, Bytes)> = Vec::new();
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    for round in 0..4u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "sigkill_child", "--nocapture", "--test-threads=1"])
            .env(DIR_VAR, &path)
            .env("AESP_AUDIT_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ack ") {
                    let n: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                    lines.push((n[0], entry(n[1], n[2], n[3])));
                }
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(150 + seed % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let got = reader.join().unwrap();
        assert!(!got.is_empty() || round > 0, "the child acknowledged nothing in round {round}");
        acked.extend(got);

        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let storage = storage(&path).await;
            let size = storage.state().await.unwrap().size;
            for (index, bytes) in &acked {
                assert!(*index < size, "acknowledged entry {index} lost (size {size})");
                assert_eq!(storage.read_entries(*index, index + 1).await.unwrap()[0], *bytes);
            }
            let key = signer(1, "k");
            let log = open_log(Arc::clone(&storage), &key).await;
            log.checkpoint().await.unwrap();
            drop(log);
            let report = verify_log(storage.as_ref(), &[key.verifier().clone()], &VerifyOptions::default())
                .await
                .unwrap();
            assert!(report.is_ok(), "round {round}: {report:?}");
        });
    }
    assert!(acked.len() > 10, "only {} entries were acknowledged", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_storage_on_one_directory_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let first = storage(&path).await;
    let options = SegmentOptions { lock_wait: Duration::from_millis(50), ..SegmentOptions::default() };
    let fs = Arc::new(OsFileSystem::new(&path).unwrap());
    let started = std::time::Instant::now();
    let err = SegmentStorage::open(fs.clone(), options.clone()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(50), "it did not wait");

    // A clone keeps the lock; the last one dropped releases it.
    let clone = Arc::clone(&first);
    drop(first);
    assert!(SegmentStorage::open(fs.clone(), options.clone()).await.is_err());
    drop(clone);
    let again = SegmentStorage::open(fs, options).await.unwrap();
    assert_eq!(again.state().await.unwrap().size, 0);
}

/// Files whose every write first waits `.1`: a dropped log's last group then lands after a
/// log reopened at once has written and acknowledged its own.
#[derive(Debug)]
struct SlowWrites(OsFileSystem, Duration);

#[derive(Debug)]
struct SlowFile(Arc<dyn FileHandle>, Duration);

impl FileHandle for SlowFile {
    fn size(&self) -> std::io::Result<u64> {
        self.0.size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        std::thread::sleep(self.1);
        self.0.write_all_at(data, offset)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
}

impl FileSystem for SlowWrites {
    fn open(&self, name: &str, create: bool) -> std::io::Result<Arc<dyn FileHandle>> {
        Ok(Arc::new(SlowFile(self.0.open(name, create)?, self.1)))
    }

    fn list(&self) -> std::io::Result<Vec<String>> {
        self.0.list()
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.0.remove(name)
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.0.rename(from, to)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        self.0.sync_dir()
    }

    fn lock(&self) -> std::io::Result<DirLock> {
        self.0.lock()
    }
}

/// A log dropped with a group commit in flight goes on writing it; a log opened on the same
/// directory right away waits for that (the directory's lock), so the two never write the same
/// place and every acknowledged entry of both is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_right_after_a_drop_with_a_commit_in_flight_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let key = signer(1, "k");
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(u64, Bytes)>::new()));
    // Slow rounds are dropped mid-write; the quick ones after them write at once.
    for (round, write_delay) in [300, 0, 300, 0].into_iter().enumerate() {
        let round = round as u64;
        let fs = SlowWrites(OsFileSystem::new(&path).unwrap(), Duration::from_millis(write_delay));
        // No zeros ahead of the frames: each stretch of them is a write, and slow.
        let options = SegmentOptions { preallocate_bytes: 0, ..SegmentOptions::default() };
        let storage = SegmentStorage::open(Arc::new(fs), options).await.unwrap();
        let log = open_log(Arc::new(storage), &key).await;
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let (log, acked) = (log.clone(), Arc::clone(&acked));
            tasks.push(tokio::spawn(async move {
                for s in 0.. {
                    let bytes = entry(round, t, s);
                    let range = log.append_encoded(vec![bytes.clone()]).await.unwrap();
                    acked.lock().unwrap().push((range.start, bytes));
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Drop every handle on the log while a group is being written, and reopen at once.
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        drop(log);
    }
    let storage = storage(&path).await;
    let size = storage.state().await.unwrap().size;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 30, "only {} entries were acknowledged", acked.len());
    for (index, bytes) in &acked {
        assert!(*index < size, "acknowledged entry {index} lost (size {size})");
        assert_eq!(storage.read_entries(*index, index + 1).await.unwrap()[0], *bytes);
    }
    let log = open_log(Arc::clone(&storage), &key).await;
    log.checkpoint().await.unwrap();
    drop(log);
    let report =
        verify_log(storage.as_ref(), &[key.verifier().clone()], &VerifyOptions::default()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}
