//! The embedded log storage: entries in segment files with group-committed frames, the stored
//! hashes in one flat file, checkpoints in an append-only file; all I/O through the
//! [`FileSystem`] seam.
//!
//! # Format (version 1)
//! - `seg-<first index, 20 digits>.log`: a 32-byte header (`AESPSEG\0`, version `u32`,
//!   reserved `u32`, first index `u64`, CRC-32C of the preceding 24 bytes `u32`, zero `u32`),
//!   then frames, one per appended batch.
//! - A frame, and a checkpoint record: magic `u32`, body length `u32`, key `u64` (a frame's
//!   first index; a checkpoint's tree size), count `u32` (entries in a frame; 0 for a
//!   checkpoint), CRC-32C of the body `u32`, CRC-32C of the preceding 24 header bytes `u32`;
//!   then the body. A frame's body is, per entry, its length `u32` and its bytes; a
//!   checkpoint's body is its signed note. Integers are little-endian.
//! - A pruned entry: its length has the top bit set, and its bytes are a tombstone: the leaf
//!   hash (32 bytes), when it was pruned `u64`, the pruning event's index `u64`, then the rule
//!   (UTF-8). Pruning rewrites a segment into `<name>.prune`, syncs it and renames it over the
//!   segment; a `.prune` file found at open is the remains of an interrupted pruning and is
//!   removed (the segment it would have replaced is intact).
//! - `hashes`: the stored hashes (32 bytes each) in stored-hash order.
//! - `checkpoints`: checkpoint records.
//! - The last segment may end in zeros, written ahead of its frames
//!   ([`SegmentOptions::preallocate_bytes`]) or after them to the end of a block (direct
//!   writes, [`SegmentOptions::direct_io`]); they are not records.
//!
//! Recovery: only the last segment and the end of `checkpoints` may hold a torn record (the
//! one write in flight at a crash) or, in the last segment, the zeros written ahead; a
//! damaged record with a valid record after it, or anywhere else, is corruption, reported with
//! the file and offset. Stored hashes beyond the latest checkpoint are dropped and recomputed
//! by the integrator.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aesp_core::{Clock, Error, ErrorCode, Result, SystemClock};
use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BlockingAppend, Leaf, Lease, LeaseTable, LogStorage, PruneRequest, StorageState, StoredCheckpoint,
    Tombstone, check_checkpoint, check_hash_append, check_prune, check_range,
};
use crate::{
    crc::crc32c,
    fs::{DIRECT_IO_ALIGN, DirLock, FileHandle, FileSystem},
    merkle::{Hash, stored_hash_count},
};

/// The version number in every segment header.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
const SEGMENT_MAGIC: &[u8; 8] = b"AESPSEG\0";
const SEGMENT_HEADER: usize = 32;
const FRAME_MAGIC: u32 = 0x4641_5541; // "AUAF"
const CHECKPOINT_MAGIC: u32 = 0x4b43_5541; // "AUCK"
const RECORD_HEADER: usize = 28;
const HASHES: &str = "hashes";
const CHECKPOINTS: &str = "checkpoints";
/// Marks a pruned entry in its length field.
const PRUNED_FLAG: u32 = 1 << 31;
/// The fixed part of a tombstone: leaf hash, time, event index.
const TOMBSTONE_FIXED: usize = 48;
const PRUNE_SUFFIX: &str = ".prune";
/// The most bytes of decoded frames kept for reads.
const FRAME_CACHE_BYTES: usize = 64 << 20;
/// The most bytes one `read_entries` call reads.
const MAX_READ: u64 = 8 << 20;
/// The least the page cache is told to drop at a time ([`SegmentOptions::cached_tail_bytes`]).
const DROP_STEP: u64 = 1 << 20;

/// Options of a [`SegmentStorage`].
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    /// A new segment starts once the current one reaches this many bytes.
    pub max_segment_bytes: u64,
    /// The largest batch `append` accepts, in encoded bytes.
    pub max_frame_bytes: u32,
    /// How far past its last frame the current segment is filled with zeros ahead of the
    /// frames, a stretch at a time (written and synced together with a frame); 0 turns it off.
    /// A sync that grows the file must also allocate its blocks and write its new size; one
    /// that overwrites blocks the file already has writes only the data. On this project's
    /// machines (ext4) that made a group commit's sync take about 160 µs instead of 290–420 µs
    /// (`host` benchmark, 16 callers). The zeros are not part of the log: recovery reads them
    /// as the unwritten tail of the last segment, and they never reach past
    /// `max_segment_bytes`, so a full segment ends with its last frame. Ahead of direct writes
    /// ([`direct_io`](Self::direct_io)) the zeros are written directly too, between group
    /// commits, once fewer than half of these are left ahead (a direct write waits for the
    /// disk: written within a group commit, they held the group up), and synced with the next.
    pub preallocate_bytes: u64,
    /// How much of the log's tail is left in the operating system's page cache: after each
    /// sync, what lies further behind the end of the current segment is dropped from it
    /// (`posix_fadvise(DONTNEED)` on Linux, [`FileHandle::drop_cache`]), at least 1 MiB at
    /// a time, and a full segment is dropped whole once the next one starts.
    /// Recent entries are read back from a cache of decoded frames, older ones rarely, so the
    /// log need not fill the page cache over days of writing; on a virtual machine, writing
    /// into pages the cache has never held before was seen to cost several times more than
    /// writing into pages it gave back (docs/PERFORMANCE.md). `u64::MAX` leaves the page cache
    /// to the operating system. Frames written directly ([`direct_io`](Self::direct_io)) are
    /// not in the cache to begin with; a full segment is still dropped whole.
    pub cached_tail_bytes: u64,
    /// Whether the last segment's frames are written with direct I/O
    /// ([`FileSystem::open_direct`]), where the file system supports it, rather than through
    /// the operating system's page cache: no copy into the cache, and a sync with no cached
    /// pages to write back. A direct write starts at the block (of [`DIRECT_IO_ALIGN`] bytes)
    /// where the log ends, so it writes that block's frames again, byte for byte, and ends at
    /// a block's end, so the last segment may end in zeros after its last frame; a full
    /// segment is cut back to its frames before the next one starts. The zeros ahead
    /// ([`preallocate_bytes`](Self::preallocate_bytes)) are written between group commits.
    /// On this project's machine (ext4 on a virtual disk, `host` benchmark, 1,024 callers) a
    /// group commit took 0.4 to 0.5 ms from write to acknowledgement instead of 0.9 to 1.0,
    /// and 180 to 190 µs of the committer's CPU instead of 300 to 340 (docs/PERFORMANCE.md).
    /// Where the file system has no direct I/O, frames go through the page cache whatever
    /// this says.
    pub direct_io: bool,
    /// How long opening waits for the directory's lock ([`FileSystem::lock`]) while another
    /// storage holds it. A log dropped in this process without being shut down goes on writing
    /// the groups it had queued, for milliseconds, and holds the lock until it has; a second
    /// process holding it makes the open fail once this has passed.
    pub lock_wait: Duration,
    /// The clock by which leases expire.
    pub clock: Arc<dyn Clock>,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            max_segment_bytes: 64 << 20,
            max_frame_bytes: 32 << 20,
            preallocate_bytes: 1 << 20,
            cached_tail_bytes: 8 << 20,
            direct_io: true,
            lock_wait: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
        }
    }
}

#[derive(Debug, Clone)]
struct FrameRef {
    first: u64,
    count: u32,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    name: String,
    first: u64,
    /// Bumped when pruning rewrites the segment, so cached frames of the old file go unused.
    generation: u64,
    file: Arc<dyn FileHandle>,
    frames: Vec<FrameRef>,
    /// Where the frames end.
    len: u64,
}

#[derive(Debug)]
struct Index {
    segments: Vec<Segment>,
    size: u64,
    /// Where the last segment's file ends: zeros written ahead of its frames fill what lies
    /// past its `len` (the other segments end with their frames).
    prepared: u64,
    /// Where the last segment's file has been dropped from the page cache up to.
    dropped: u64,
}

#[derive(Debug)]
struct Meta {
    hashes: Arc<dyn FileHandle>,
    hash_count: u64,
    integrated: u64,
    checkpoint_file: Arc<dyn FileHandle>,
    checkpoint_len: u64,
    checkpoints: Vec<StoredCheckpoint>,
    leases: LeaseTable,
}

#[derive(Debug)]
struct Shared {
    /// Held for as long as anything (the committer thread too) can write through this storage.
    _lock: DirLock,
    fs: Arc<dyn FileSystem>,
    options: SegmentOptions,
    writer: Mutex<Writer>,
    index: RwLock<Index>,
    meta: Mutex<Meta>,
    failed: AtomicBool,
    /// Recently read frames, decoded: (segment first index, generation, frame offset) → frame.
    frames: Mutex<VecDeque<(FrameKey, Arc<DecodedFrame>)>>,
}

/// What appending keeps from one group commit to the next, under the writer's lock.
#[derive(Debug, Default)]
struct Writer {
    /// The buffer the last group commit's frame was built in, kept for the next one: a group
    /// commit is typically hundreds of kilobytes, and allocating that afresh each time makes
    /// the allocator hand pages back to the kernel and fault them in again.
    buf: Vec<u8>,
    /// The last segment opened for direct writes, once one was.
    direct: Option<DirectTail>,
    /// The file system has no direct I/O: frames go through the page cache.
    no_direct_io: bool,
}

/// The last segment opened for direct writes ([`SegmentOptions::direct_io`]).
#[derive(Debug)]
struct DirectTail {
    /// The segment's first index and generation: a new segment, or the last one rewritten by
    /// pruning, is opened again.
    key: (u64, u64),
    file: Arc<dyn FileHandle>,
    /// The segment's bytes from the last multiple of [`DIRECT_IO_ALIGN`] at or before the end
    /// of its frames to that end: a direct write starts at that multiple, so it writes them
    /// again. Rewriting them is safe in a crash: a torn write leaves each of their bytes as
    /// it was, old and new being the same.
    tail: Vec<u8>,
}

/// The largest frame buffer kept for the next group commit.
const MAX_SPARE_FRAME: usize = 8 << 20;

/// `n` rounded up to a multiple of [`DIRECT_IO_ALIGN`].
fn align_up(n: u64) -> u64 {
    n.next_multiple_of(DIRECT_IO_ALIGN as u64)
}

/// `n` rounded down to a multiple of [`DIRECT_IO_ALIGN`].
fn align_down(n: u64) -> u64 {
    n - n % DIRECT_IO_ALIGN as u64
}

/// A cached frame's key: its segment's first index and generation, and its offset.
type FrameKey = (u64, u64, u64);

/// A segment to rewrite: its position, file, name and frames.
type PruneTarget = (usize, Arc<dyn FileHandle>, String, Vec<FrameRef>);

/// A frame read and checked: its body and where each entry lies in it.
#[derive(Debug)]
struct DecodedFrame {
    body: Bytes,
    /// Per entry: whether it is a tombstone, and its bytes' range in `body`.
    entries: Vec<(bool, std::ops::Range<usize>)>,
}

impl DecodedFrame {
    /// Decodes the record at the start of `record`, which must be frame `f`.
    fn decode(record: Bytes, f: &FrameRef, max_body: u32, name: &str) -> Result<Self> {
        let h = decode_header(&record, FRAME_MAGIC, max_body).map_err(|why| corrupt(name, f.offset, why))?;
        if h.key != f.first || h.count != f.count {
            return Err(corrupt(name, f.offset, "frame header changed"));
        }
        let body_end = RECORD_HEADER.saturating_add(h.body_len as usize);
        let body = record
            .get(RECORD_HEADER..body_end)
            .map(|_| record.slice(RECORD_HEADER..body_end))
            .ok_or_else(|| corrupt(name, f.offset, "short frame"))?;
        if crc32c(&body) != h.body_crc {
            return Err(corrupt(name, f.offset, "record body checksum mismatch"));
        }
        let mut entries = Vec::with_capacity(f.count as usize);
        let mut p = 0usize;
        for _ in 0..f.count {
            let (pruned, entry) = next_entry(&body, p, body.len())
                .ok_or_else(|| corrupt(name, f.offset, "entry past the frame"))?;
            p = entry.end;
            entries.push((pruned, entry));
        }
        if p != body.len() {
            return Err(corrupt(name, f.offset, "frame has trailing bytes"));
        }
        Ok(Self { body, entries })
    }

    /// Appends the leaves of `start..end` this frame holds to `out`.
    fn push_leaves(&self, f: &FrameRef, start: u64, end: u64, name: &str, out: &mut Vec<Leaf>) -> Result<()> {
        let skip = usize::try_from(start.saturating_sub(f.first)).unwrap_or(usize::MAX);
        let take = usize::try_from(end.saturating_sub(f.first.max(start))).unwrap_or(usize::MAX);
        for (pruned, range) in self.entries.iter().skip(skip).take(take) {
            let bytes = self.body.slice(range.clone());
            out.push(if *pruned {
                Leaf::Pruned(
                    decode_tombstone(&bytes).ok_or_else(|| corrupt(name, f.offset, "bad tombstone"))?,
                )
            } else {
                Leaf::Entry(bytes)
            });
        }
        Ok(())
    }
}

/// The embedded audit-log storage: segment files with one write and one sync per batch.
#[derive(Debug, Clone)]
pub struct SegmentStorage {
    shared: Arc<Shared>,
}

/// The segment files' blocking appends ([`LogStorage::blocking_appender`]).
struct SegmentAppender(Arc<Shared>);

impl std::fmt::Debug for SegmentAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentAppender")
    }
}

impl BlockingAppend for SegmentAppender {
    fn append_blocking(&self, entries: &[Bytes]) -> Result<u64> {
        self.0.append(entries)
    }

    /// Writes zeros ahead of directly written frames ([`SegmentOptions::preallocate_bytes`]).
    fn after_append(&self) {
        self.0.zeros_ahead_of_direct_writes();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_error(what: &str, name: &str, e: std::io::Error) -> Error {
    Error::unavailable(format!("audit storage: cannot {what} `{name}`: {e}")).with_source(e)
}

fn corrupt(name: &str, offset: u64, why: &str) -> Error {
    Error::corrupted(format!("audit file `{name}` is corrupt at offset {offset}: {why}"))
        .with_detail("file", name)
        .with_detail("offset", offset.to_string())
}

fn segment_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = buf.get(at..at.saturating_add(4)) {
        b.copy_from_slice(src);
    }
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = buf.get(at..at.saturating_add(8)) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

fn segment_header(first: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(SEGMENT_HEADER);
    h.extend_from_slice(SEGMENT_MAGIC);
    h.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&first.to_le_bytes());
    let crc = crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// Fills the record header at the start of `record`, whose body follows it.
fn seal_record(record: &mut [u8], magic: u32, key: u64, count: u32) -> Result<()> {
    let (header, body) =
        record.split_at_mut_checked(RECORD_HEADER).ok_or_else(|| Error::internal("short record"))?;
    let len = u32::try_from(body.len()).map_err(|_| Error::invalid_argument("record too large"))?;
    let mut h = [0u8; RECORD_HEADER];
    h[..4].copy_from_slice(&magic.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&key.to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    h[20..24].copy_from_slice(&crc32c(body).to_le_bytes());
    let crc = crc32c(&h[..24]);
    h[24..].copy_from_slice(&crc.to_le_bytes());
    header.copy_from_slice(&h);
    Ok(())
}

/// Encodes a record: header then body.
fn encode_record(out: &mut Vec<u8>, magic: u32, key: u64, count: u32, body: &[u8]) -> Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| Error::invalid_argument("record too large"))?;
    let start = out.len();
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&crc32c(body).to_le_bytes());
    let crc = crc32c(out.get(start..).unwrap_or_default());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct RecordHeader {
    body_len: u32,
    key: u64,
    count: u32,
    body_crc: u32,
}

/// Decodes a record header at the start of `buf`, or says why it is not one.
fn decode_header(buf: &[u8], magic: u32, max_body: u32) -> std::result::Result<RecordHeader, &'static str> {
    let header = buf.get(..RECORD_HEADER).ok_or("incomplete record header")?;
    if u32_at(header, 0) != magic {
        return Err("bad record magic");
    }
    if crc32c(header.get(..24).unwrap_or_default()) != u32_at(header, 24) {
        return Err("record header checksum mismatch");
    }
    let h = RecordHeader {
        body_len: u32_at(header, 4),
        key: u64_at(header, 8),
        count: u32_at(header, 16),
        body_crc: u32_at(header, 20),
    };
    if h.body_len > max_body {
        return Err("record longer than the limit");
    }
    Ok(h)
}

/// Whether a valid record header of `magic` with key `>= min_key` starts anywhere in `buf`.
fn any_record_after(buf: &[u8], magic: u32, max_body: u32, min_key: u64) -> bool {
    let m = magic.to_le_bytes();
    (0..buf.len()).any(|i| {
        buf.get(i..i.saturating_add(4)) == Some(&m[..])
            && buf
                .get(i..)
                .and_then(|b| decode_header(b, magic, max_body).ok())
                .is_some_and(|h| h.key >= min_key)
    })
}

struct Scanned {
    records: Vec<(u64, RecordHeader)>,
    valid_end: u64,
}

/// Scans the records of `data` from `start`. `tail` allows a torn last record (cut off);
/// `check_key` checks each record's key in order and returns the next expected one.
#[expect(clippy::too_many_arguments, reason = "one private helper for two record files")]
fn scan(
    name: &str,
    data: &[u8],
    start: usize,
    magic: u32,
    max_body: u32,
    tail: bool,
    verify_bodies: bool,
    mut next_key: impl FnMut(&RecordHeader) -> std::result::Result<u64, &'static str>,
    mut min_key: u64,
) -> Result<Scanned> {
    let mut records = Vec::new();
    let mut at = start;
    while at < data.len() {
        let rest = data.get(at..).unwrap_or_default();
        let problem = match decode_header(rest, magic, max_body) {
            Err(why) => Some(why),
            Ok(h) => {
                let end = RECORD_HEADER.saturating_add(h.body_len as usize);
                match rest.get(RECORD_HEADER..end) {
                    None => Some("record extends past the end of the file"),
                    Some(body) if verify_bodies && crc32c(body) != h.body_crc => {
                        Some("record body checksum mismatch")
                    }
                    Some(_) => match next_key(&h) {
                        Err(why) => Some(why),
                        Ok(next) => {
                            records.push((at as u64, h));
                            min_key = next;
                            at = at.saturating_add(end);
                            None
                        }
                    },
                }
            }
        };
        if let Some(why) = problem {
            let later = data.get(at.saturating_add(1)..).unwrap_or_default();
            if tail && !any_record_after(later, magic, max_body, min_key) {
                return Ok(Scanned { records, valid_end: at as u64 });
            }
            return Err(corrupt(name, at as u64, why));
        }
    }
    Ok(Scanned { records, valid_end: at as u64 })
}

/// The entry whose length field is at `p` in `buf`: whether it is a tombstone, and where its
/// bytes are; `None` when it does not fit before `end`.
fn next_entry(buf: &[u8], p: usize, end: usize) -> Option<(bool, std::ops::Range<usize>)> {
    let raw = u32_at(buf.get(p..p.checked_add(4)?)?, 0);
    let start = p.checked_add(4)?;
    let stop = start.checked_add((raw & !PRUNED_FLAG) as usize)?;
    (stop <= end).then_some((raw & PRUNED_FLAG != 0, start..stop))
}

/// Appends a pruned entry (flagged length, then the tombstone) to `out`.
fn encode_tombstone(out: &mut Vec<u8>, t: &Tombstone) -> Result<()> {
    let len = u32::try_from(TOMBSTONE_FIXED.saturating_add(t.rule.len()))
        .map_err(|_| Error::invalid_argument("pruning rule too long"))?;
    out.extend_from_slice(&(len | PRUNED_FLAG).to_le_bytes());
    out.extend_from_slice(&t.leaf_hash);
    out.extend_from_slice(&t.pruned_at_ms.to_le_bytes());
    out.extend_from_slice(&t.event_index.to_le_bytes());
    out.extend_from_slice(t.rule.as_bytes());
    Ok(())
}

fn decode_tombstone(bytes: &[u8]) -> Option<Tombstone> {
    let mut leaf_hash = [0u8; 32];
    leaf_hash.copy_from_slice(bytes.get(..32)?);
    let rule = std::str::from_utf8(bytes.get(TOMBSTONE_FIXED..)?).ok()?.to_owned();
    Some(Tombstone { leaf_hash, pruned_at_ms: u64_at(bytes, 32), event_index: u64_at(bytes, 40), rule })
}

/// How often opening tries the directory's lock again while it waits.
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// Takes `fs`'s lock, trying again every [`LOCK_RETRY`] for up to `wait`.
fn lock_dir(fs: &dyn FileSystem, wait: Duration) -> Result<DirLock> {
    let deadline = std::time::Instant::now().checked_add(wait);
    loop {
        match fs.lock() {
            Ok(lock) => return Ok(lock),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!("the audit log directory is in use by another writer (waited {wait:?} for its lock)"),
                    )
                    .with_remediation(
                        "stop the other process or shut down the other log, or give this one its own directory",
                    ));
                }
                std::thread::sleep(LOCK_RETRY);
            }
            Err(e) => return Err(io_error("lock", "the log directory", e)),
        }
    }
}

fn read_all(file: &dyn FileHandle, name: &str) -> Result<Vec<u8>> {
    let len = file.size().map_err(|e| io_error("read", name, e))?;
    let len = usize::try_from(len).map_err(|_| corrupt(name, 0, "file too large"))?;
    let mut data = vec![0u8; len];
    file.read_exact_at(&mut data, 0).map_err(|e| io_error("read", name, e))?;
    Ok(data)
}

impl SegmentStorage {
    /// Opens (or creates) the log in `fs`, recovering from a crash: a torn tail is cut, and
    /// damage anywhere else is an [`ErrorCode::DataCorrupted`] error naming the file and
    /// offset.
    ///
    /// The storage holds the directory's lock ([`FileSystem::lock`]) until it and every clone
    /// are dropped. While another holds it, opening waits up to
    /// [`SegmentOptions::lock_wait`] and then fails with [`ErrorCode::FailedPrecondition`]:
    /// two writers of one directory would overwrite each other's frames.
    pub async fn open(fs: Arc<dyn FileSystem>, options: SegmentOptions) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(fs, options))
            .await
            .map_err(|e| Error::internal("the open task failed").with_source(e))?
    }

    /// [`Self::open`] without a runtime.
    pub fn open_blocking(fs: Arc<dyn FileSystem>, options: SegmentOptions) -> Result<Self> {
        let lock = lock_dir(fs.as_ref(), options.lock_wait)?;
        let mut names = fs.list().map_err(|e| io_error("list", "the log directory", e))?;
        let stray: Vec<String> = names.iter().filter(|n| n.ends_with(PRUNE_SUFFIX)).cloned().collect();
        if !stray.is_empty() {
            for name in &stray {
                fs.remove(name).map_err(|e| io_error("remove", name, e))?;
            }
            fs.sync_dir().map_err(|e| io_error("sync", "the log directory", e))?;
            names.retain(|n| !n.ends_with(PRUNE_SUFFIX));
        }
        let mut firsts: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        firsts.sort_unstable();
        let max_body = options.max_frame_bytes;
        let mut segments: Vec<Segment> = Vec::new();
        let mut size = 0u64;
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let name = segment_name(first);
            let last = i + 1 == count;
            let file = fs.open(&name, false).map_err(|e| io_error("open", &name, e))?;
            let data = read_all(file.as_ref(), &name)?;
            let header_ok = data.get(..SEGMENT_HEADER).is_some_and(|h| {
                h.get(..8) == Some(&SEGMENT_MAGIC[..])
                    && crc32c(h.get(..24).unwrap_or_default()) == u32_at(h, 24)
                    && u32_at(h, 28) == 0
            });
            if !header_ok {
                if last && data.len() <= SEGMENT_HEADER && i > 0 {
                    // Torn while being created: it never held an acknowledged entry.
                    fs.remove(&name).map_err(|e| io_error("remove", &name, e))?;
                    fs.sync_dir().map_err(|e| io_error("sync", "the log directory", e))?;
                    continue;
                }
                if !(last && i == 0 && data.len() <= SEGMENT_HEADER) {
                    return Err(corrupt(&name, 0, "bad segment header"));
                }
                // The very first segment, torn at creation: start again.
                file.set_len(0).map_err(|e| io_error("truncate", &name, e))?;
                file.write_all_at(&segment_header(0), 0).map_err(|e| io_error("write", &name, e))?;
                file.sync_data().map_err(|e| io_error("sync", &name, e))?;
                segments.push(Segment {
                    name,
                    first: 0,
                    generation: 0,
                    file,
                    frames: Vec::new(),
                    len: SEGMENT_HEADER as u64,
                });
                continue;
            }
            let version = u32_at(&data, 8);
            if version != SEGMENT_FORMAT_VERSION {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "segment `{name}` has format version {version}; this build reads {SEGMENT_FORMAT_VERSION}"
                    ),
                ));
            }
            if u64_at(&data, 16) != first || first != size {
                return Err(corrupt(
                    &name,
                    16,
                    "the segment's first index does not follow the previous segment",
                ));
            }
            let mut expected = first;
            let scanned = scan(
                &name,
                &data,
                SEGMENT_HEADER,
                FRAME_MAGIC,
                max_body,
                last,
                last,
                |h| {
                    if h.key != expected || h.count == 0 {
                        return Err("frame index out of sequence");
                    }
                    expected = expected.saturating_add(u64::from(h.count));
                    Ok(expected)
                },
                first,
            )?;
            if scanned.valid_end < data.len() as u64 {
                file.set_len(scanned.valid_end).map_err(|e| io_error("truncate", &name, e))?;
                file.sync_data().map_err(|e| io_error("sync", &name, e))?;
            }
            let frames: Vec<FrameRef> = scanned
                .records
                .iter()
                .map(|(offset, h)| FrameRef {
                    first: h.key,
                    count: h.count,
                    offset: *offset,
                    len: h.body_len.saturating_add(RECORD_HEADER as u32),
                })
                .collect();
            size = expected;
            segments.push(Segment { name, first, generation: 0, file, frames, len: scanned.valid_end });
        }
        if segments.is_empty() {
            segments.push(create_segment(fs.as_ref(), 0)?);
        }

        // Checkpoints.
        let checkpoint_file = fs.open(CHECKPOINTS, true).map_err(|e| io_error("open", CHECKPOINTS, e))?;
        let data = read_all(checkpoint_file.as_ref(), CHECKPOINTS)?;
        let mut last_size = 0u64;
        let scanned = scan(
            CHECKPOINTS,
            &data,
            0,
            CHECKPOINT_MAGIC,
            crate::note::MAX_NOTE_LEN as u32,
            true,
            true,
            |h| {
                if h.key < last_size {
                    return Err("checkpoint sizes go backwards");
                }
                last_size = h.key;
                Ok(h.key)
            },
            0,
        )?;
        if scanned.valid_end < data.len() as u64 {
            checkpoint_file.set_len(scanned.valid_end).map_err(|e| io_error("truncate", CHECKPOINTS, e))?;
            checkpoint_file.sync_data().map_err(|e| io_error("sync", CHECKPOINTS, e))?;
        }
        let checkpoints: Vec<StoredCheckpoint> = scanned
            .records
            .iter()
            .map(|(offset, h)| {
                let start = (*offset as usize).saturating_add(RECORD_HEADER);
                let body = data.get(start..start.saturating_add(h.body_len as usize)).unwrap_or_default();
                StoredCheckpoint { size: h.key, note: Bytes::copy_from_slice(body) }
            })
            .collect();

        // Stored hashes: keep those the latest checkpoint made durable.
        let hashes = fs.open(HASHES, true).map_err(|e| io_error("open", HASHES, e))?;
        let integrated = checkpoints.last().map_or(0, |c| c.size);
        let needed = stored_hash_count(integrated);
        let file_len = hashes.size().map_err(|e| io_error("read", HASHES, e))?;
        let have = file_len / 32;
        if have < needed {
            return Err(corrupt(
                HASHES,
                have.saturating_mul(32),
                &format!(
                    "the checkpoint of size {integrated} needs {needed} stored hashes, the file has {have}"
                ),
            ));
        }
        if file_len != needed.saturating_mul(32) {
            hashes.set_len(needed.saturating_mul(32)).map_err(|e| io_error("truncate", HASHES, e))?;
            hashes.sync_data().map_err(|e| io_error("sync", HASHES, e))?;
        }
        fs.sync_dir().map_err(|e| io_error("sync", "the log directory", e))?;

        let clock = Arc::clone(&options.clock);
        Ok(Self {
            shared: Arc::new(Shared {
                _lock: lock,
                fs,
                options,
                writer: Mutex::new(Writer::default()),
                // Opening cut any zeros off the last segment.
                index: RwLock::new(Index {
                    prepared: segments.last().map_or(0, |s| s.len),
                    dropped: 0,
                    segments,
                    size,
                }),
                meta: Mutex::new(Meta {
                    hashes,
                    hash_count: needed,
                    integrated,
                    checkpoint_file,
                    checkpoint_len: scanned.valid_end,
                    checkpoints,
                    leases: LeaseTable::new(clock),
                }),
                failed: AtomicBool::new(false),
                frames: Mutex::new(VecDeque::new()),
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| Error::internal("an audit storage task failed").with_source(e))?
    }
}

/// Zeros at an address aligned for direct writes.
#[repr(C, align(4096))]
struct AlignedZeros([u8; 1 << 20]);

static ZEROS: AlignedZeros = AlignedZeros([0; 1 << 20]);

/// Writes zeros over `from..to` of `file` (nothing when `to <= from`), a megabyte a write; each
/// write is aligned for direct I/O ([`DIRECT_IO_ALIGN`]) when `from` and `to` are.
fn write_zeros(file: &dyn FileHandle, from: u64, to: u64) -> std::io::Result<()> {
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).unwrap_or(usize::MAX).min(ZEROS.0.len());
        file.write_all_at(ZEROS.0.get(..n).unwrap_or_default(), at)?;
        at = at.saturating_add(n as u64);
    }
    Ok(())
}

/// Advises that `file`'s synced bytes from `from` to `to` will not be read soon
/// ([`SegmentOptions::cached_tail_bytes`]). Advice only: where the operating system refuses
/// it, nothing is lost but cache, so the refusal is not an error.
fn drop_cache(file: &dyn FileHandle, from: u64, to: u64) {
    let _ = file.drop_cache(from, to.saturating_sub(from));
}

fn create_segment(fs: &dyn FileSystem, first: u64) -> Result<Segment> {
    let name = segment_name(first);
    let file = fs.open(&name, true).map_err(|e| io_error("create", &name, e))?;
    file.set_len(0).map_err(|e| io_error("truncate", &name, e))?;
    file.write_all_at(&segment_header(first), 0).map_err(|e| io_error("write", &name, e))?;
    file.sync_data().map_err(|e| io_error("sync", &name, e))?;
    fs.sync_dir().map_err(|e| io_error("sync", "the log directory", e))?;
    Ok(Segment { name, first, generation: 0, file, frames: Vec::new(), len: SEGMENT_HEADER as u64 })
}

impl Shared {
    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> StorageState {
        let size = self.index().size;
        StorageState { size, integrated_size: lock(&self.meta).integrated }
    }

    /// Appends `entries` as one frame; the index of the first.
    fn append(&self, entries: &[Bytes]) -> Result<u64> {
        let count = u32::try_from(entries.len()).map_err(|_| Error::invalid_argument("batch too large"))?;
        if count == 0 {
            return Err(Error::invalid_argument("an empty batch"));
        }
        let total: usize = entries.iter().map(|e| e.len().saturating_add(4)).sum();
        if total > self.options.max_frame_bytes as usize {
            return Err(Error::invalid_argument(format!(
                "a batch of {total} bytes is larger than the frame limit {}",
                self.options.max_frame_bytes
            )));
        }
        if entries.iter().any(|e| !u32::try_from(e.len()).is_ok_and(|l| l < PRUNED_FLAG)) {
            return Err(Error::invalid_argument("entry too large"));
        }
        let mut writer = lock(&self.writer);
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::unavailable("audit storage failed to write earlier; reopen it to recover"));
        }
        let result = self.append_locked(&mut writer, entries, count, total);
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        if writer.buf.capacity() > MAX_SPARE_FRAME {
            writer.buf = Vec::new();
        }
        result
    }

    fn append_locked(&self, writer: &mut Writer, entries: &[Bytes], count: u32, total: usize) -> Result<u64> {
        let (first, file, name, offset, prepared, dropped, key) = {
            let index = self.index();
            let seg = index.segments.last().ok_or_else(|| Error::internal("no segment"))?;
            let key = (seg.first, seg.generation);
            (index.size, Arc::clone(&seg.file), seg.name.clone(), seg.len, index.prepared, index.dropped, key)
        };
        // Zeros never reach past `max_segment_bytes`, so a full segment ends with its frames.
        let (file, name, offset, prepared, dropped, key) = if offset >= self.options.max_segment_bytes {
            // Direct writes end at a block's end: cut off the zeros after the last frame.
            if file.size().map_err(|e| io_error("read", &name, e))? > offset {
                file.set_len(offset).map_err(|e| io_error("truncate", &name, e))?;
                file.sync_data().map_err(|e| io_error("sync", &name, e))?;
            }
            let seg = create_segment(self.fs.as_ref(), first)?;
            if self.options.cached_tail_bytes != u64::MAX {
                drop_cache(file.as_ref(), dropped, offset);
            }
            let out =
                (Arc::clone(&seg.file), seg.name.clone(), seg.len, seg.len, 0, (seg.first, seg.generation));
            self.index_mut().segments.push(seg);
            out
        } else {
            (file, name, offset, prepared, dropped, key)
        };
        let Writer { buf, direct: slot, no_direct_io } = writer;
        let direct = self.open_direct(slot, no_direct_io, key, file.as_ref(), &name, offset)?;

        // For a direct write, the frame is built after the bytes of the block where the log
        // ends, at an aligned address: `lead` is where the write starts in `buf`.
        buf.clear();
        let mut lead = None;
        if direct {
            // Room for the padding to an aligned address, the block's bytes before the frame, the
            // frame, and zeros to the block's end: no reallocation moves it.
            buf.reserve(
                DIRECT_IO_ALIGN.saturating_mul(3).saturating_add(RECORD_HEADER).saturating_add(total),
            );
            let pad = buf.as_ptr().align_offset(DIRECT_IO_ALIGN);
            match slot.as_ref() {
                Some(d) if pad < DIRECT_IO_ALIGN => {
                    buf.resize(pad, 0);
                    buf.extend_from_slice(&d.tail);
                    lead = Some(pad);
                }
                // `align_offset` may, in principle, decline to align: this frame goes through
                // the page cache, and the next write opens the file again.
                _ => *slot = None,
            }
        }
        let frame_start = buf.len();
        buf.reserve(total.saturating_add(RECORD_HEADER));
        buf.resize(frame_start.saturating_add(RECORD_HEADER), 0);
        for e in entries {
            // `append` checked every length.
            buf.extend_from_slice(&(e.len() as u32).to_le_bytes());
            buf.extend_from_slice(e);
        }
        let frame_end = buf.len();
        seal_record(buf.get_mut(frame_start..).unwrap_or_default(), FRAME_MAGIC, first, count)?;
        let len = u32::try_from(frame_end - frame_start).map_err(|_| Error::internal("frame too large"))?;
        let end = offset.saturating_add(u64::from(len));

        let (ahead, dropped) = match (slot.as_mut(), lead) {
            (Some(d), Some(lead)) => {
                let from = align_down(offset);
                let written_end = align_up(end);
                buf.resize(lead.saturating_add(usize::try_from(written_end - from).unwrap_or(usize::MAX)), 0);
                // Zeros ahead are written between group commits (`zeros_ahead_of_direct_writes`):
                // written here, directly, each would hold this group up until the disk took it.
                let ahead = prepared.max(written_end);
                let block = buf.get(lead..).unwrap_or_default();
                d.file.write_all_at(block, from).map_err(|e| io_error("write", &name, e))?;
                d.file.sync_data().map_err(|e| io_error("sync", &name, e))?;
                let tail_len = usize::try_from(end - align_down(end)).unwrap_or(0);
                d.tail.clear();
                d.tail.extend_from_slice(
                    buf.get(frame_end.saturating_sub(tail_len)..frame_end).unwrap_or_default(),
                );
                // Nothing written went through the page cache.
                (ahead, dropped)
            }
            _ => {
                let ahead = self.zeros_ahead(file.as_ref(), &name, offset, end, prepared)?;
                let frame = buf.get(frame_start..).unwrap_or_default();
                file.write_all_at(frame, offset).map_err(|e| io_error("write", &name, e))?;
                file.sync_data().map_err(|e| io_error("sync", &name, e))?;
                let dropped = match end.checked_sub(self.options.cached_tail_bytes) {
                    Some(until) if until.saturating_sub(dropped) >= DROP_STEP => {
                        drop_cache(file.as_ref(), dropped, until);
                        until
                    }
                    _ => dropped,
                };
                (ahead, dropped)
            }
        };
        let mut index = self.index_mut();
        if let Some(seg) = index.segments.last_mut() {
            seg.frames.push(FrameRef { first, count, offset, len });
            seg.len = end;
        }
        index.prepared = ahead;
        index.dropped = dropped;
        index.size = first.saturating_add(u64::from(count));
        Ok(first)
    }

    /// Writes zeros ahead of a frame written at `offset` and ending at `end`
    /// ([`SegmentOptions::preallocate_bytes`]) when it reaches past those written before, which
    /// end at `prepared`; where the zeros end now.
    fn zeros_ahead(
        &self,
        file: &dyn FileHandle,
        name: &str,
        offset: u64,
        end: u64,
        prepared: u64,
    ) -> Result<u64> {
        if end <= prepared || self.options.preallocate_bytes == 0 {
            return Ok(prepared.max(end));
        }
        let target =
            offset.saturating_add(self.options.preallocate_bytes).min(self.options.max_segment_bytes);
        write_zeros(file, end, target).map_err(|e| io_error("write", name, e))?;
        Ok(target.max(end))
    }

    /// Writes zeros, directly, ahead of the last segment's frames when they are written directly
    /// and fewer than half of [`SegmentOptions::preallocate_bytes`] are left ahead of them: the
    /// committer calls this between group commits ([`BlockingAppend::after_append`]), so that a
    /// group waits for the disk to take its own frame only. The zeros become durable with the
    /// next group commit's sync. If the write fails, the frames go on extending the file.
    fn zeros_ahead_of_direct_writes(&self) {
        let step = self.options.preallocate_bytes;
        if step == 0 || !self.options.direct_io || self.failed.load(Ordering::Acquire) {
            return;
        }
        let writer = lock(&self.writer);
        let Some(direct) = writer.direct.as_ref() else { return };
        let (end, prepared) = {
            let index = self.index();
            match index.segments.last() {
                Some(seg) if (seg.first, seg.generation) == direct.key => (seg.len, index.prepared),
                _ => return,
            }
        };
        if prepared.saturating_sub(end) >= step / 2 {
            return;
        }
        // From where the frames' last block ends (what lies beyond it is zeros or nothing), to
        // a block's end at most `step` past the frames and within the segment.
        let from = align_up(prepared.max(end));
        let to = align_down(end.saturating_add(step).min(self.options.max_segment_bytes));
        if to <= from || write_zeros(direct.file.as_ref(), from, to).is_err() {
            return;
        }
        // Still the same segment: the writer's lock was held throughout.
        self.index_mut().prepared = to;
    }

    /// Whether the last segment (`key`, ending at `end`) is written directly: its direct handle
    /// is then in `slot` (opened, and the bytes of its last block read, when it is not the
    /// segment opened before). Not when direct writes are off or the file system has none.
    fn open_direct(
        &self,
        slot: &mut Option<DirectTail>,
        no_direct_io: &mut bool,
        key: (u64, u64),
        file: &dyn FileHandle,
        name: &str,
        end: u64,
    ) -> Result<bool> {
        if !self.options.direct_io || *no_direct_io {
            return Ok(false);
        }
        if slot.as_ref().is_none_or(|d| d.key != key) {
            *slot = None;
            let Some(direct) = self.fs.open_direct(name).map_err(|e| io_error("open", name, e))? else {
                *no_direct_io = true;
                return Ok(false);
            };
            let from = align_down(end);
            let mut tail = vec![0; usize::try_from(end - from).unwrap_or(0)];
            file.read_exact_at(&mut tail, from).map_err(|e| io_error("read", name, e))?;
            *slot = Some(DirectTail { key, file: direct, tail });
        }
        Ok(true)
    }

    fn read_leaves(&self, start: u64, end: u64) -> Result<Vec<Leaf>> {
        let (seg_key, name, file, frames) = {
            let index = self.index();
            check_range(start, end, index.size)?;
            let pos = index.segments.partition_point(|s| s.first <= start);
            let seg =
                index.segments.get(pos.saturating_sub(1)).ok_or_else(|| Error::internal("no segment"))?;
            let from = seg.frames.partition_point(|f| f.first.saturating_add(u64::from(f.count)) <= start);
            let mut frames = Vec::new();
            let mut bytes = 0u64;
            for f in seg.frames.get(from..).unwrap_or_default() {
                if f.first >= end || (bytes > 0 && bytes.saturating_add(u64::from(f.len)) > MAX_READ) {
                    break;
                }
                bytes = bytes.saturating_add(u64::from(f.len));
                frames.push(f.clone());
            }
            ((seg.first, seg.generation), seg.name.clone(), Arc::clone(&seg.file), frames)
        };
        let mut out = Vec::new();
        // A frame read in part (a query's page out of a large group commit) is decoded once
        // and kept, so the next page does not read and check it again; whole frames (scans)
        // are read together and not kept. Only the first and last frames can be partial.
        let partial = |f: &FrameRef| start > f.first || end < f.first.saturating_add(u64::from(f.count));
        let mut whole: &[FrameRef] = &frames;
        let mut last_partial = None;
        if let Some((f, rest)) = whole.split_first()
            && partial(f)
        {
            self.cached_frame(seg_key, &name, file.as_ref(), f)?
                .push_leaves(f, start, end, &name, &mut out)?;
            whole = rest;
        }
        if let Some((f, rest)) = whole.split_last()
            && partial(f)
        {
            last_partial = Some(f);
            whole = rest;
        }
        if let (Some(first), Some(last)) = (whole.first(), whole.last()) {
            let base = first.offset;
            let total = last.offset.saturating_add(u64::from(last.len)).saturating_sub(base);
            let mut buf = vec![0u8; usize::try_from(total).map_err(|_| Error::internal("read too large"))?];
            file.read_exact_at(&mut buf, base).map_err(|e| io_error("read", &name, e))?;
            let buf = Bytes::from(buf);
            for f in whole {
                let at = usize::try_from(f.offset - base).unwrap_or(usize::MAX);
                let record = buf.slice(at.min(buf.len())..);
                DecodedFrame::decode(record, f, self.options.max_frame_bytes, &name)?
                    .push_leaves(f, start, end, &name, &mut out)?;
            }
        }
        if let Some(f) = last_partial {
            self.cached_frame(seg_key, &name, file.as_ref(), f)?
                .push_leaves(f, start, end, &name, &mut out)?;
        }
        if out.is_empty() {
            return Err(Error::internal("no frame holds the entries"));
        }
        Ok(out)
    }

    /// Frame `f` of the segment `(first index, generation)`, decoded, from the cache or read now.
    fn cached_frame(
        &self,
        seg_key: (u64, u64),
        name: &str,
        file: &dyn FileHandle,
        f: &FrameRef,
    ) -> Result<Arc<DecodedFrame>> {
        let key = (seg_key.0, seg_key.1, f.offset);
        if let Some((_, hit)) = lock(&self.frames).iter().find(|(k, _)| *k == key) {
            return Ok(Arc::clone(hit));
        }
        let mut buf = vec![0u8; f.len as usize];
        file.read_exact_at(&mut buf, f.offset).map_err(|e| io_error("read", name, e))?;
        let decoded =
            Arc::new(DecodedFrame::decode(Bytes::from(buf), f, self.options.max_frame_bytes, name)?);
        let mut cache = lock(&self.frames);
        let mut bytes: usize = cache.iter().map(|(_, d)| d.body.len()).sum();
        if decoded.body.len() <= FRAME_CACHE_BYTES {
            while bytes.saturating_add(decoded.body.len()) > FRAME_CACHE_BYTES {
                let Some((_, old)) = cache.pop_front() else { break };
                bytes = bytes.saturating_sub(old.body.len());
            }
            cache.push_back((key, Arc::clone(&decoded)));
        }
        Ok(decoded)
    }

    /// Rewrites every segment holding an entry of `request` with those entries pruned.
    fn prune(&self, request: &PruneRequest<'_>) -> Result<u64> {
        let _writer = lock(&self.writer);
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::unavailable("audit storage failed to write earlier; reopen it to recover"));
        }
        check_prune(lock(&self.meta).checkpoints.last(), request)?;
        let targets: Vec<PruneTarget> = {
            let index = self.index();
            let mut out = Vec::new();
            for (pos, seg) in index.segments.iter().enumerate() {
                let end = index.segments.get(pos.saturating_add(1)).map_or(index.size, |s| s.first);
                let from = request.indexes.partition_point(|&i| i < seg.first);
                if request.indexes.get(from).is_some_and(|&i| i < end) {
                    out.push((pos, Arc::clone(&seg.file), seg.name.clone(), seg.frames.clone()));
                }
            }
            out
        };
        let mut pruned = 0u64;
        for (pos, file, name, frames) in targets {
            let data = Bytes::from(read_all(file.as_ref(), &name)?);
            let (rewritten, new_frames, count) = self.rewrite_pruned(&name, data, &frames, request)?;
            if count == 0 {
                continue;
            }
            let tmp = format!("{name}{PRUNE_SUFFIX}");
            let new_file = self.fs.open(&tmp, true).map_err(|e| io_error("create", &tmp, e))?;
            new_file.set_len(0).map_err(|e| io_error("truncate", &tmp, e))?;
            new_file.write_all_at(&rewritten, 0).map_err(|e| io_error("write", &tmp, e))?;
            new_file.sync_data().map_err(|e| io_error("sync", &tmp, e))?;
            // From the rename on, the directory may hold either file until it is synced.
            let swapped = self
                .fs
                .rename(&tmp, &name)
                .and_then(|()| self.fs.sync_dir())
                .map_err(|e| io_error("replace", &name, e));
            if let Err(e) = swapped {
                self.failed.store(true, Ordering::Release);
                return Err(e);
            }
            lock(&self.frames).clear();
            let mut index = self.index_mut();
            let last = pos.saturating_add(1) == index.segments.len();
            if let Some(seg) = index.segments.get_mut(pos) {
                seg.generation = seg.generation.saturating_add(1);
                seg.file = new_file;
                seg.frames = new_frames;
                seg.len = rewritten.len() as u64;
            }
            if last {
                // The rewritten file holds only frames, none of them dropped from the cache.
                index.prepared = rewritten.len() as u64;
                index.dropped = 0;
            }
            pruned = pruned.saturating_add(count);
        }
        Ok(pruned)
    }

    /// The segment `data` with the entries of `request` replaced by tombstones; its frames;
    /// how many entries were pruned.
    fn rewrite_pruned(
        &self,
        name: &str,
        data: Bytes,
        frames: &[FrameRef],
        request: &PruneRequest<'_>,
    ) -> Result<(Vec<u8>, Vec<FrameRef>, u64)> {
        let mut out = Vec::with_capacity(data.len());
        out.extend_from_slice(data.get(..SEGMENT_HEADER).ok_or_else(|| corrupt(name, 0, "short segment"))?);
        let mut new_frames = Vec::with_capacity(frames.len());
        let mut count = 0u64;
        let mut body = Vec::new();
        for f in frames {
            let at = usize::try_from(f.offset).map_err(|_| corrupt(name, f.offset, "offset"))?;
            let frame = DecodedFrame::decode(
                data.slice(at.min(data.len())..),
                f,
                self.options.max_frame_bytes,
                name,
            )?;
            let offset = out.len() as u64;
            let last = f.first.saturating_add(u64::from(f.count));
            let from = request.indexes.partition_point(|&i| i < f.first);
            if request.indexes.get(from).is_none_or(|&i| i >= last) {
                let end = at.saturating_add(f.len as usize);
                out.extend_from_slice(
                    data.get(at..end).ok_or_else(|| corrupt(name, f.offset, "short frame"))?,
                );
                new_frames.push(FrameRef { offset, ..f.clone() });
                continue;
            }
            body.clear();
            let mut targets = request.indexes.get(from..).unwrap_or_default().iter().peekable();
            for (index, (pruned, range)) in (f.first..last).zip(&frame.entries) {
                let bytes = frame.body.get(range.clone()).unwrap_or_default();
                if targets.next_if_eq(&&index).is_some() && !pruned {
                    let tombstone = Tombstone {
                        leaf_hash: crate::merkle::leaf_hash(bytes),
                        pruned_at_ms: request.pruned_at_ms,
                        rule: request.rule.to_owned(),
                        event_index: request.event_index,
                    };
                    encode_tombstone(&mut body, &tombstone)?;
                    count = count.saturating_add(1);
                } else {
                    // The entry as it is: its length field (flag included), then its bytes.
                    let whole = range.start.saturating_sub(4)..range.end;
                    body.extend_from_slice(frame.body.get(whole).unwrap_or_default());
                }
            }
            encode_record(&mut out, FRAME_MAGIC, f.first, f.count, &body)?;
            let len =
                u32::try_from(out.len() as u64 - offset).map_err(|_| Error::internal("frame too large"))?;
            new_frames.push(FrameRef { first: f.first, count: f.count, offset, len });
        }
        Ok((out, new_frames, count))
    }

    fn append_hashes(&self, lease: &Lease, from: u64, to: u64, hashes: &[Hash]) -> Result<()> {
        let size = self.index().size;
        let mut meta = lock(&self.meta);
        meta.leases.check(lease)?;
        check_hash_append(StorageState { size, integrated_size: meta.integrated }, from, to, hashes.len())?;
        meta.hashes
            .write_all_at(hashes.as_flattened(), meta.hash_count.saturating_mul(32))
            .map_err(|e| io_error("write", HASHES, e))?;
        meta.hash_count = meta.hash_count.saturating_add(hashes.len() as u64);
        meta.integrated = to;
        Ok(())
    }

    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>> {
        let (file, count) = {
            let meta = lock(&self.meta);
            (Arc::clone(&meta.hashes), meta.hash_count)
        };
        let mut out = Vec::with_capacity(indexes.len());
        let mut i = 0usize;
        while let Some(&start) = indexes.get(i) {
            let mut run = 1usize;
            while indexes.get(i.saturating_add(run)) == Some(&start.saturating_add(run as u64)) {
                run = run.saturating_add(1);
            }
            let end = start.saturating_add(run as u64);
            if end > count {
                return Err(Error::invalid_argument(format!(
                    "stored hash {} is beyond the integrated tree",
                    end - 1
                )));
            }
            let mut buf = vec![0u8; run.saturating_mul(32)];
            file.read_exact_at(&mut buf, start.saturating_mul(32))
                .map_err(|e| io_error("read", HASHES, e))?;
            for chunk in buf.chunks_exact(32) {
                let mut h = [0u8; 32];
                h.copy_from_slice(chunk);
                out.push(h);
            }
            i = i.saturating_add(run);
        }
        Ok(out)
    }

    fn store_checkpoint(&self, lease: &Lease, size: u64, note: &[u8]) -> Result<()> {
        let entries = self.index().size;
        let mut meta = lock(&self.meta);
        meta.leases.check(lease)?;
        check_checkpoint(
            StorageState { size: entries, integrated_size: meta.integrated },
            meta.checkpoints.last(),
            size,
        )?;
        if note.len() > crate::note::MAX_NOTE_LEN {
            return Err(Error::invalid_argument("checkpoint note too large"));
        }
        meta.hashes.sync_data().map_err(|e| io_error("sync", HASHES, e))?;
        let mut record = Vec::with_capacity(note.len().saturating_add(RECORD_HEADER));
        encode_record(&mut record, CHECKPOINT_MAGIC, size, 0, note)?;
        meta.checkpoint_file
            .write_all_at(&record, meta.checkpoint_len)
            .map_err(|e| io_error("write", CHECKPOINTS, e))?;
        meta.checkpoint_file.sync_data().map_err(|e| io_error("sync", CHECKPOINTS, e))?;
        meta.checkpoint_len = meta.checkpoint_len.saturating_add(record.len() as u64);
        meta.checkpoints.push(StoredCheckpoint { size, note: Bytes::copy_from_slice(note) });
        Ok(())
    }
}

#[async_trait]
impl LogStorage for SegmentStorage {
    async fn append(&self, entries: &[Bytes]) -> Result<u64> {
        let entries = entries.to_vec();
        self.blocking(move |s| s.append(&entries)).await
    }

    fn blocking_appender(&self) -> Option<Arc<dyn BlockingAppend>> {
        Some(Arc::new(SegmentAppender(Arc::clone(&self.shared))))
    }

    async fn state(&self) -> Result<StorageState> {
        Ok(self.shared.state())
    }

    async fn read_leaves(&self, start: u64, end: u64) -> Result<Vec<Leaf>> {
        self.blocking(move |s| s.read_leaves(start, end)).await
    }

    async fn prune(&self, request: PruneRequest<'_>) -> Result<u64> {
        let indexes = request.indexes.to_vec();
        let rule = request.rule.to_owned();
        let (pruned_at_ms, event_index) = (request.pruned_at_ms, request.event_index);
        self.blocking(move |s| {
            s.prune(&PruneRequest { indexes: &indexes, pruned_at_ms, rule: &rule, event_index })
        })
        .await
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Lease> {
        lock(&self.shared.meta).leases.acquire(holder, ttl)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        lock(&self.shared.meta).leases.release(lease);
        Ok(())
    }

    async fn append_hashes(&self, lease: &Lease, from: u64, to: u64, hashes: &[Hash]) -> Result<()> {
        let (lease, hashes) = (lease.clone(), hashes.to_vec());
        self.blocking(move |s| s.append_hashes(&lease, from, to, &hashes)).await
    }

    async fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>> {
        let indexes = indexes.to_vec();
        self.blocking(move |s| s.read_hashes(&indexes)).await
    }

    async fn store_checkpoint(&self, lease: &Lease, size: u64, note: &[u8]) -> Result<()> {
        let (lease, note) = (lease.clone(), note.to_vec());
        self.blocking(move |s| s.store_checkpoint(&lease, size, &note)).await
    }

    async fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<StoredCheckpoint>> {
        let meta = lock(&self.shared.meta);
        Ok(meta.checkpoints.iter().filter(|c| c.size >= from_size).take(limit).cloned().collect())
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        Ok(lock(&self.shared.meta).checkpoints.last().cloned())
    }
}

/// Changes entry `index` in the segment files of `fs` (xors its first byte with `byte`) and
/// recomputes the frame checksums: tampering only the Merkle tree can catch. For tests.
pub(crate) fn rewrite_entry(fs: &crate::fs::FaultyFileSystem, index: u64, byte: u8) -> Result<()> {
    let names = fs.list().map_err(|e| io_error("list", "the log directory", e))?;
    for name in names {
        if parse_segment_name(&name).is_none() {
            continue;
        }
        let Some(mut data) = fs.read_file(&name) else { continue };
        let mut at = SEGMENT_HEADER;
        while at < data.len() {
            let h = decode_header(data.get(at..).unwrap_or_default(), FRAME_MAGIC, u32::MAX)
                .map_err(|why| corrupt(&name, at as u64, why))?;
            let body = at.saturating_add(RECORD_HEADER);
            let body_end = body.saturating_add(h.body_len as usize);
            if index >= h.key && index < h.key.saturating_add(u64::from(h.count)) {
                let mut p = body;
                for _ in h.key..index {
                    p = p.saturating_add(4).saturating_add((u32_at(&data, p) & !PRUNED_FLAG) as usize);
                }
                let target =
                    data.get_mut(p.saturating_add(4)).ok_or_else(|| corrupt(&name, p as u64, "short"))?;
                *target ^= byte;
                let body_bytes = data.get(body..body_end).unwrap_or_default().to_vec();
                let mut record = Vec::new();
                encode_record(&mut record, FRAME_MAGIC, h.key, h.count, &body_bytes)?;
                data.splice(at..body_end, record);
                fs.write_file(&name, data);
                return Ok(());
            }
            at = body_end;
        }
    }
    Err(Error::not_found(format!("no entry {index}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{CrashMode, FaultyFileSystem};

    /// Appends one entry of `size` bytes, filled with `byte`, as a frame of its own; its index.
    fn append_entry(storage: &SegmentStorage, size: usize, byte: u8) -> u64 {
        storage.shared.append(&[Bytes::from(vec![byte; size])]).unwrap()
    }

    fn open(fs: &FaultyFileSystem) -> Result<SegmentStorage> {
        SegmentStorage::open_blocking(Arc::new(fs.clone()), SegmentOptions::default())
    }

    fn open_direct(fs: &FaultyFileSystem) -> Result<SegmentStorage> {
        SegmentStorage::open_blocking(
            Arc::new(fs.clone()),
            SegmentOptions { direct_io: true, ..SegmentOptions::default() },
        )
    }

    #[test]
    fn an_unknown_format_version_is_refused_by_name() {
        let fs = FaultyFileSystem::new();
        open(&fs).unwrap();
        let name = segment_name(0);
        let mut data = fs.read_file(&name).unwrap();
        data[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c(&data[..24]);
        data[24..28].copy_from_slice(&crc.to_le_bytes());
        fs.write_file(&name, data);
        let error = open(&fs).unwrap_err();
        assert_eq!(error.code(), ErrorCode::FailedPrecondition);
        assert!(error.message().contains("version 2") && error.message().contains(&name), "{error}");
    }

    #[test]
    fn damage_before_a_valid_frame_is_corruption_not_a_torn_tail() {
        let fs = FaultyFileSystem::new();
        let storage = open(&fs).unwrap();
        for i in 0..3u8 {
            append_entry(&storage, 1, i);
        }
        drop(storage);
        let name = segment_name(0);
        let clean = fs.read_file(&name).unwrap();
        // The middle frame's body: corruption, reported with the file and offset.
        let mut data = clean.clone();
        let second = SEGMENT_HEADER + RECORD_HEADER + 5;
        data[second + RECORD_HEADER + 4] ^= 1;
        fs.write_file(&name, data);
        let error = open(&fs).unwrap_err();
        assert_eq!(error.code(), ErrorCode::DataCorrupted);
        assert_eq!(error.detail("offset"), Some(second.to_string().as_str()), "{error}");
        assert_eq!(error.detail("file"), Some(name.as_str()));
        // The last frame's body (zeros written ahead follow it): a torn tail, cut.
        let mut data = clean;
        let last = SEGMENT_HEADER + 2 * (RECORD_HEADER + 5) + RECORD_HEADER + 4;
        data[last] ^= 1;
        fs.write_file(&name, data);
        let storage = open(&fs).unwrap();
        assert_eq!(storage.shared.state().size, 2);
    }

    #[test]
    fn zeros_after_the_frames_are_no_entries_and_a_full_segment_ends_with_its_frames() {
        for direct_io in [true, false] {
            let fs = FaultyFileSystem::new();
            let options = SegmentOptions {
                max_segment_bytes: 3 * 4096 + 100,
                preallocate_bytes: 5000,
                direct_io,
                ..SegmentOptions::default()
            };
            let storage = SegmentStorage::open_blocking(Arc::new(fs.clone()), options.clone()).unwrap();
            // As the committer appends: zeros ahead of direct writes are written in between.
            let appender = storage.blocking_appender().unwrap();
            for i in 0..300u32 {
                appender.append_blocking(&[Bytes::from(vec![i as u8; 100])]).unwrap();
                appender.after_append();
            }
            let (ends, prepared): (Vec<(String, u64)>, u64) = {
                let index = storage.shared.index();
                (index.segments.iter().map(|s| (s.name.clone(), s.len)).collect(), index.prepared)
            };
            assert!(ends.len() >= 3, "{ends:?}");
            for (i, (name, len)) in ends.iter().enumerate() {
                assert_eq!(fs.direct_writes(name) > 0, direct_io, "{name}");
                let file = fs.read_file(name).unwrap().len() as u64;
                if i + 1 < ends.len() {
                    assert_eq!(file, *len, "a full segment ends with its frames");
                } else {
                    assert_eq!(file, prepared, "{name}");
                    assert!(file > *len, "the last segment has zeros ahead of its frames");
                    assert!(fs.read_file(name).unwrap()[*len as usize..].iter().all(|&b| b == 0));
                }
            }
            drop(storage);
            // Reopened: the zeros are the unwritten tail, every entry is there, appends go on.
            let storage = SegmentStorage::open_blocking(Arc::new(fs.clone()), options).unwrap();
            assert_eq!(storage.shared.state().size, 300);
            let leaves = storage.shared.read_leaves(297, 300).unwrap();
            assert_eq!(leaves[2].entry().unwrap()[..], [43u8; 100]);
            assert_eq!(append_entry(&storage, 1, 7), 300);
        }
    }

    /// Appends entries of sizes that leave frames ending anywhere in a block; their sizes.
    fn append_uneven(storage: &SegmentStorage, count: usize) -> Vec<usize> {
        (0..count)
            .map(|i| {
                let size = 1 + (i * 977) % 5000;
                append_entry(storage, size, i as u8);
                size
            })
            .collect()
    }

    #[test]
    fn direct_writes_leave_the_same_frames_as_writes_through_the_page_cache() {
        let mut images = Vec::new();
        for direct_io in [true, false] {
            let fs = FaultyFileSystem::new();
            let options =
                SegmentOptions { max_segment_bytes: 256 << 10, direct_io, ..SegmentOptions::default() };
            let storage = SegmentStorage::open_blocking(Arc::new(fs.clone()), options).unwrap();
            append_uneven(&storage, 200);
            let ends = segment_ends(&storage);
            assert!(ends.len() >= 2, "{ends:?}");
            let image: Vec<Vec<u8>> = ends
                .iter()
                .map(|(name, len)| fs.read_file(name).unwrap()[..*len as usize].to_vec())
                .collect();
            assert_eq!(ends.iter().all(|(name, _)| fs.direct_writes(name) > 0), direct_io);
            images.push(image);
        }
        assert!(images[0] == images[1], "the segments' frames differ");
    }

    #[test]
    fn zeros_ahead_of_direct_writes_are_written_between_group_commits() {
        let fs = FaultyFileSystem::new();
        let options =
            SegmentOptions { preallocate_bytes: 64 << 10, direct_io: true, ..SegmentOptions::default() };
        let storage = SegmentStorage::open_blocking(Arc::new(fs.clone()), options.clone()).unwrap();
        let appender = storage.blocking_appender().unwrap();
        let name = segment_name(0);
        let file_len = || fs.read_file(&name).unwrap().len() as u64;
        appender.append_blocking(&[Bytes::from(vec![1u8; 100])]).unwrap();
        // The group commit wrote its block only.
        assert_eq!(file_len(), 4096);
        assert_eq!(fs.direct_writes(&name), 1);
        appender.after_append();
        // Then zeros, directly, to 64 KiB past the frames (rounded down to a block).
        let len = segment_ends(&storage)[0].1;
        assert_eq!(file_len(), align_down(len + (64 << 10)));
        assert_eq!(fs.direct_writes(&name), 2);
        assert!(fs.read_file(&name).unwrap()[len as usize..].iter().all(|&b| b == 0));
        // More than half of them are still ahead: nothing more is written in between.
        appender.append_blocking(&[Bytes::from(vec![2u8; 10_000])]).unwrap();
        appender.after_append();
        assert_eq!(fs.direct_writes(&name), 3);
        // Frames written into the zeros do not move the file's end until few are left.
        appender.append_blocking(&[Bytes::from(vec![3u8; 30_000])]).unwrap();
        let before = file_len();
        appender.after_append();
        let len = segment_ends(&storage)[0].1;
        assert!(file_len() > before && file_len() == align_down(len + (64 << 10)), "{} {len}", file_len());
        // Unsynced zeros lost in a crash are no loss; every acknowledged entry is there.
        let fs = fs.crash(CrashMode::DropUnsynced);
        let storage = SegmentStorage::open_blocking(Arc::new(fs.clone()), options).unwrap();
        let entries = all_entries(&storage);
        assert_eq!(
            entries.iter().map(|e| (e[0], e.len())).collect::<Vec<_>>(),
            [(1, 100), (2, 10_000), (3, 30_000)]
        );
    }

    #[test]
    fn a_direct_write_torn_in_a_crash_keeps_the_frames_of_its_first_block() {
        for fraction_per_mille in [0, 1, 300, 999] {
            let fs = FaultyFileSystem::new();
            let storage = open_direct(&fs).unwrap();
            let sizes = append_uneven(&storage, 30);
            // The next group commit writes, but its sync fails: not acknowledged.
            fs.fail_syncs(true);
            let refused = storage.shared.append(&[Bytes::from(vec![0xee; 3000])]).unwrap_err();
            assert_eq!(refused.code(), ErrorCode::ServiceUnavailable);
            // Its write (from the block where the log ended) is torn in the crash.
            let fs = fs.crash(CrashMode::Tear { keep: 0, fraction_per_mille });
            fs.fail_syncs(false);
            let storage = open_direct(&fs).unwrap();
            let entries = all_entries(&storage);
            for (i, (entry, size)) in entries.iter().zip(&sizes).enumerate() {
                assert!(entry.len() == *size && entry.iter().all(|&b| b == i as u8), "entry {i}");
            }
            // The refused frame is gone, or there whole when the write was torn in its padding.
            match entries.len() {
                30 => assert!(fraction_per_mille < 999),
                31 => assert_eq!(entries[30][..], [0xee; 3000]),
                n => panic!("{n} entries after a tear at {fraction_per_mille}‰"),
            }
            // Appends go on from where the recovered frames end.
            let next = entries.len() as u64;
            assert_eq!(append_entry(&storage, 10, 1), next);
            assert_eq!(all_entries(&storage).len() as u64, next + 1);
        }
    }

    #[test]
    fn without_direct_io_in_the_file_system_frames_go_through_the_page_cache() {
        let fs = FaultyFileSystem::new();
        fs.refuse_direct_io(true);
        let storage = open_direct(&fs).unwrap();
        append_uneven(&storage, 20);
        let ends = segment_ends(&storage);
        assert!(ends.iter().all(|(name, _)| fs.direct_writes(name) == 0));
        drop(storage);
        assert_eq!(all_entries(&open_direct(&fs).unwrap()).len(), 20);
    }

    const MIB: u64 = 1 << 20;

    /// Every entry of `storage`, read back.
    fn all_entries(storage: &SegmentStorage) -> Vec<Bytes> {
        let size = storage.shared.state().size;
        let mut entries = Vec::new();
        while (entries.len() as u64) < size {
            for leaf in storage.shared.read_leaves(entries.len() as u64, size).unwrap() {
                match leaf {
                    Leaf::Entry(entry) => entries.push(entry),
                    Leaf::Pruned(_) => panic!("nothing was pruned"),
                }
            }
        }
        entries
    }

    /// The segments' names and lengths.
    fn segment_ends(storage: &SegmentStorage) -> Vec<(String, u64)> {
        storage.shared.index().segments.iter().map(|s| (s.name.clone(), s.len)).collect()
    }

    #[test]
    fn the_page_cache_keeps_the_tail_and_a_full_segment_leaves_it_whole() {
        let fs = FaultyFileSystem::new();
        let options = SegmentOptions {
            max_segment_bytes: 8 * MIB,
            cached_tail_bytes: 2 * MIB,
            direct_io: false,
            ..SegmentOptions::default()
        };
        let storage = SegmentStorage::open_blocking(Arc::new(fs.clone()), options).unwrap();
        // 56 entries of 256 KiB: about 14 MiB, in two segments.
        for i in 0..56u8 {
            append_entry(&storage, 256 << 10, i);
        }
        let ends = segment_ends(&storage);
        let [(full, full_len), (last, last_len)] = ends.as_slice() else { panic!("two segments: {ends:?}") };
        assert!(*last_len > 5 * MIB, "{ends:?}");

        // The full segment left the cache from its start to its end, with no gap and no
        // overlap, a step of at least 1 MiB at a time (but for its rest, once it was full).
        // A drop of bytes not synced yet would be refused, and missing here.
        let drops = fs.cache_drops(full);
        assert_eq!(drops.first().map(|d| d.0), Some(0), "{drops:?}");
        assert_eq!(drops.last().map(|d| d.1), Some(*full_len), "{drops:?}");
        assert!(drops.windows(2).all(|w| w[0].1 == w[1].0), "{drops:?}");
        assert!(drops[..drops.len() - 1].iter().all(|(from, to)| to - from >= MIB), "{drops:?}");

        // The current segment keeps its last 2 MiB, and less than a step more.
        let drops = fs.cache_drops(last);
        let kept_from = drops.last().map_or(0, |d| d.1);
        assert!(kept_from <= last_len - 2 * MIB && kept_from > last_len - 3 * MIB, "{drops:?} of {last_len}");

        let entries = all_entries(&storage);
        assert_eq!(entries.len(), 56);
        assert!(entries.iter().enumerate().all(|(i, e)| e.len() == 256 << 10 && e[0] == i as u8));
    }

    #[test]
    fn the_page_cache_can_be_left_to_the_operating_system() {
        let fs = FaultyFileSystem::new();
        let options = SegmentOptions {
            max_segment_bytes: 4 * MIB,
            cached_tail_bytes: u64::MAX,
            direct_io: false,
            ..SegmentOptions::default()
        };
        let storage = SegmentStorage::open_blocking(Arc::new(fs.clone()), options).unwrap();
        for i in 0..40u8 {
            append_entry(&storage, 256 << 10, i);
        }
        let ends = segment_ends(&storage);
        assert!(ends.len() >= 2, "{ends:?}");
        assert!(ends.iter().all(|(name, _)| fs.cache_drops(name).is_empty()));
    }

    #[test]
    fn entries_written_to_the_os_file_system_read_back_after_a_reopen() {
        // Direct I/O where the file system of the temporary directory has it.
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let options =
                SegmentOptions { max_segment_bytes: MIB, direct_io: true, ..SegmentOptions::default() };
            let fs = crate::fs::OsFileSystem::new(dir.path()).unwrap();
            SegmentStorage::open_blocking(Arc::new(fs), options).unwrap()
        };
        let storage = open();
        let sizes = append_uneven(&storage, 600);
        assert!(segment_ends(&storage).len() >= 2);
        drop(storage);
        let storage = open();
        let entries = all_entries(&storage);
        assert_eq!(entries.len(), 600);
        for (i, (entry, size)) in entries.iter().zip(&sizes).enumerate() {
            assert!(entry.len() == *size && entry.iter().all(|&b| b == i as u8), "entry {i}");
        }
        assert_eq!(append_entry(&storage, 10, 1), 600);
    }

    #[test]
    fn entries_dropped_from_the_os_page_cache_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let options = SegmentOptions {
                max_segment_bytes: 4 * MIB,
                cached_tail_bytes: MIB,
                direct_io: false,
                ..SegmentOptions::default()
            };
            let fs = crate::fs::OsFileSystem::new(dir.path()).unwrap();
            SegmentStorage::open_blocking(Arc::new(fs), options).unwrap()
        };
        let storage = open();
        for i in 0..40u8 {
            append_entry(&storage, 256 << 10, i);
        }
        assert!(segment_ends(&storage).len() >= 2);
        drop(storage);
        let storage = open();
        let entries = all_entries(&storage);
        assert_eq!(entries.len(), 40);
        assert!(
            entries.iter().enumerate().all(|(i, e)| e.len() == 256 << 10 && e.iter().all(|&b| b == i as u8))
        );
    }
}
