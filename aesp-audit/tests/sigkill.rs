//! Crash safety against SIGKILL: this test binary re-runs itself as a child that appends in a
//! loop and prints each acknowledged entry; the parent kills it at a random moment, reopens
//! the log and checks that every acknowledged entry is there and the log verifies.
#![expect(clippy::unwrap_used, reason = "test helpers fail by panicking")]

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use aesp_audit::{LogStorage, OsFileSystem, SegmentOptions, SegmentStorage, VerifyOptions, verify_log};
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
