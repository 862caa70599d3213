//! The file seam of the segment store: a flat directory of files, with the operating system's
//! implementation and a fault-injecting one in memory that loses everything not yet synced.

use std::{
    collections::BTreeMap,
    fmt, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

/// One open file.
///
/// # Contract
/// Reads and writes are positional and may run concurrently from several threads. Data written
/// is durable only after `sync_data` returns; a crash may lose any write not yet synced, or keep
/// any prefix of it.
pub trait FileHandle: Send + Sync + fmt::Debug {
    /// The file's length.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`.
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Advises that the `len` bytes from `offset`, already synced, will not be read soon, so
    /// that the operating system may drop them from its cache. Advice only: the data stays
    /// durable and readable. The default does nothing.
    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
}

/// What the offset, the length and the memory address of every write through a handle from
/// [`FileSystem::open_direct`] are multiples of.
pub const DIRECT_IO_ALIGN: usize = 4096;

/// A flat directory of files.
///
/// # Contract
/// A created or removed file survives a crash only after `sync_dir`.
pub trait FileSystem: Send + Sync + fmt::Debug + 'static {
    /// Opens `name`, creating it (empty) when `create` is set and it does not exist.
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileHandle>>;
    /// Opens `name`, which exists, for writes that bypass the operating system's page cache
    /// (direct I/O); `Ok(None)` where this file system does not support them. Only
    /// `write_all_at` and `sync_data` are used on the handle, and every write's offset, length
    /// and memory address are multiples of [`DIRECT_IO_ALIGN`]. A direct write is durable, as
    /// any other, once `sync_data` returns (through either handle of the file), and reads
    /// through a handle from [`open`](Self::open) see it once it returned.
    ///
    /// The default supports none.
    fn open_direct(&self, name: &str) -> io::Result<Option<Arc<dyn FileHandle>>> {
        let _ = name;
        Ok(None)
    }
    /// The names of the files.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Removes `name`.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to` atomically, replacing `to` if it exists: after a crash the
    /// directory holds the old or the new state, and the new one once `sync_dir` returned.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, removals and renames durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Takes the directory's exclusive lock, held until the returned guard is dropped, so that
    /// one writer at a time uses the directory. While another holder has it, this fails with
    /// [`io::ErrorKind::WouldBlock`] at once.
    ///
    /// The default takes none, for file systems no other writer can reach.
    fn lock(&self) -> io::Result<DirLock> {
        Ok(DirLock::none())
    }
}

/// The exclusive lock of a [`FileSystem`]'s directory ([`FileSystem::lock`]): a guard that
/// releases it when dropped.
#[derive(Debug)]
pub struct DirLock(
    #[expect(dead_code, reason = "held for its drop")] Option<Box<dyn fmt::Debug + Send + Sync>>,
);

impl DirLock {
    /// A lock held by `guard` and released when `guard` is dropped.
    pub fn new(guard: impl fmt::Debug + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(guard)))
    }

    /// No lock, for a directory no other writer can reach.
    pub fn none() -> Self {
        Self(None)
    }
}

/// The name of the lock file [`OsFileSystem`] keeps in its directory.
const LOCK_FILE: &str = "LOCK";

/// Files in a directory of the operating system.
#[derive(Debug, Clone)]
pub struct OsFileSystem {
    dir: PathBuf,
}

impl OsFileSystem {
    /// Files under `dir`, which is created if missing.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Self> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(Self { dir: dir.as_ref().to_owned() })
    }
}

#[derive(Debug)]
struct OsFile(std::fs::File);

impl FileHandle for OsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    /// `posix_fadvise(POSIX_FADV_DONTNEED)` on Linux: clean pages in the range leave the page
    /// cache at once. Elsewhere nothing.
    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let Some(len) = std::num::NonZeroU64::new(len) else { return Ok(()) };
            rustix::fs::fadvise(&self.0, offset, Some(len), rustix::fs::Advice::DontNeed)?;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
        Ok(())
    }
}

impl FileSystem for OsFileSystem {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(create).open(self.dir.join(name))?;
        Ok(Arc::new(OsFile(file)))
    }

    /// `O_DIRECT` on Linux, where the file system accepts it and reports (through `statx`,
    /// Linux 6.1 and later) alignments that divide [`DIRECT_IO_ALIGN`]; elsewhere none.
    fn open_direct(&self, name: &str) -> io::Result<Option<Arc<dyn FileHandle>>> {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};
            let flags = OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC;
            let fd = match rustix::fs::open(self.dir.join(name), flags, Mode::empty()) {
                Ok(fd) => fd,
                // The file system does not do direct I/O.
                Err(rustix::io::Errno::INVAL) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let stat = match rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) {
                Ok(stat) => stat,
                // A kernel without `statx` does not tell the alignment either.
                Err(rustix::io::Errno::NOSYS) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let divides = |align: u32| align != 0 && DIRECT_IO_ALIGN.is_multiple_of(align as usize);
            let told = StatxFlags::from_bits_retain(stat.stx_mask).contains(StatxFlags::DIOALIGN);
            if !(told && divides(stat.stx_dio_mem_align) && divides(stat.stx_dio_offset_align)) {
                return Ok(None);
            }
            Ok(Some(Arc::new(OsFile(std::fs::File::from(fd)))))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            Ok(None)
        }
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// An advisory `flock` on the file `LOCK` in the directory. It is held per open
    /// file, so a second lock fails even from the same process, and the operating system
    /// releases it when the process ends however it ends.
    fn lock(&self) -> io::Result<DirLock> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// What a simulated crash keeps of the writes not yet synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write and truncation is lost.
    DropUnsynced,
    /// Of each file's unsynced operations, the first `keep` survive whole and the next one
    /// survives as a prefix of `fraction_per_mille`/1000 of its bytes (a torn write).
    Tear {
        /// Unsynced operations kept whole.
        keep: usize,
        /// How much of the next write is kept, in thousandths.
        fraction_per_mille: u32,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(data: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(offset, bytes) => {
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(bytes.len());
            if data.len() < end {
                data.resize(end, 0);
            }
            if let Some(dst) = data.get_mut(start..end) {
                dst.copy_from_slice(bytes);
            }
        }
        Op::SetLen(len) => data.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
    }
}

#[derive(Debug, Default)]
struct MemFile {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Op>,
    /// The ranges `drop_cache` was given, in order.
    cache_drops: Vec<(u64, u64)>,
    /// How many writes came through handles from `open_direct`.
    direct_writes: u64,
}

#[derive(Debug, Default)]
struct MemState {
    generation: u64,
    files: BTreeMap<String, Arc<Mutex<MemFile>>>,
    durable_names: BTreeMap<String, Arc<Mutex<MemFile>>>,
    fail_syncs: bool,
    syncs: u64,
    /// Refuses [`FileSystem::open_direct`], as a file system without direct I/O does.
    no_direct_io: bool,
}

/// An in-memory file system that keeps, per file, the durable image (as of its last sync) and
/// the live one; [`FaultyFileSystem::crash`] throws away what was not synced. This value, its
/// clones and every file opened through them fail after a crash, like a process that died; the
/// value `crash` returns is the file system after the restart.
#[derive(Debug, Default, Clone)]
pub struct FaultyFileSystem {
    state: Arc<Mutex<MemState>>,
    generation: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FaultyFileSystem {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss: unsynced data and unsynced directory changes are lost (or torn,
    /// per `mode`), and every open handle stops working.
    #[must_use = "the old file system is dead after a crash; use the one returned"]
    pub fn crash(&self, mode: CrashMode) -> Self {
        let mut state = lock(&self.state);
        state.generation = state.generation.saturating_add(1);
        let mut files = BTreeMap::new();
        for (name, file) in &state.durable_names {
            let old = lock(file);
            let mut data = old.durable.clone();
            if let CrashMode::Tear { keep, fraction_per_mille } = mode {
                for (i, op) in old.pending.iter().enumerate() {
                    if i < keep {
                        apply(&mut data, op);
                    } else {
                        if let Op::Write(offset, bytes) = op {
                            let cut =
                                bytes.len().saturating_mul(fraction_per_mille.min(1000) as usize) / 1000;
                            apply(
                                &mut data,
                                &Op::Write(*offset, bytes.get(..cut).unwrap_or_default().to_vec()),
                            );
                        }
                        break;
                    }
                }
            }
            let fresh = MemFile { live: data.clone(), durable: data, ..MemFile::default() };
            files.insert(name.clone(), Arc::new(Mutex::new(fresh)));
        }
        state.durable_names = files.clone();
        state.files = files;
        Self { state: Arc::clone(&self.state), generation: state.generation }
    }

    fn alive(&self) -> io::Result<MutexGuard<'_, MemState>> {
        let state = lock(&self.state);
        if state.generation == self.generation {
            Ok(state)
        } else {
            Err(io::Error::other("the file system crashed; use the one `crash` returned"))
        }
    }

    /// Makes [`FileSystem::open_direct`] answer that this file system has no direct I/O (or
    /// has it again, the default).
    pub fn refuse_direct_io(&self, refuse: bool) {
        lock(&self.state).no_direct_io = refuse;
    }

    /// How many writes went to a file through handles from [`FileSystem::open_direct`].
    pub fn direct_writes(&self, name: &str) -> u64 {
        lock(&self.state).files.get(name).map_or(0, |f| lock(f).direct_writes)
    }

    /// Makes every later `sync_data` and `sync_dir` fail (or succeed again).
    pub fn fail_syncs(&self, fail: bool) {
        lock(&self.state).fail_syncs = fail;
    }

    /// How many syncs succeeded so far.
    pub fn sync_count(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// The ranges (start, end) of a file that were dropped from the cache
    /// ([`FileHandle::drop_cache`]), in order. A range that was not synced when it was dropped
    /// is refused with `InvalidInput`, and not listed.
    pub fn cache_drops(&self, name: &str) -> Vec<(u64, u64)> {
        lock(&self.state).files.get(name).map(|f| lock(f).cache_drops.clone()).unwrap_or_default()
    }

    /// A copy of a file's live contents.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.state).files.get(name).map(|f| lock(f).live.clone())
    }

    /// Replaces a file's contents, durably (to simulate corruption on the medium).
    pub fn write_file(&self, name: &str, data: Vec<u8>) {
        let mut state = lock(&self.state);
        let file = Arc::new(Mutex::new(MemFile { live: data.clone(), durable: data, ..MemFile::default() }));
        state.files.insert(name.to_owned(), Arc::clone(&file));
        state.durable_names.insert(name.to_owned(), file);
    }
}

#[derive(Debug)]
struct MemHandle {
    fs: Arc<Mutex<MemState>>,
    generation: u64,
    file: Arc<Mutex<MemFile>>,
    /// Opened by `open_direct`: writes must be aligned ([`DIRECT_IO_ALIGN`]).
    direct: bool,
}

impl MemHandle {
    fn check(&self) -> io::Result<()> {
        if lock(&self.fs).generation == self.generation {
            Ok(())
        } else {
            Err(io::Error::other("the file system crashed since this file was opened"))
        }
    }
}

impl FileHandle for MemHandle {
    fn size(&self) -> io::Result<u64> {
        self.check()?;
        Ok(lock(&self.file).live.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check()?;
        let file = lock(&self.file);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = file
            .live
            .get(start..start.saturating_add(buf.len()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Through a handle from `open_direct`, a write whose offset, length or address is not
    /// aligned is refused with `InvalidInput`, as Linux refuses it (`EINVAL`).
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.check()?;
        let align = DIRECT_IO_ALIGN as u64;
        if self.direct
            && (!offset.is_multiple_of(align)
                || !(data.len() as u64).is_multiple_of(align)
                || data.as_ptr().align_offset(DIRECT_IO_ALIGN) != 0)
        {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an unaligned direct write"));
        }
        let mut file = lock(&self.file);
        let op = Op::Write(offset, data.to_vec());
        apply(&mut file.live, &op);
        file.pending.push(op);
        if self.direct {
            file.direct_writes = file.direct_writes.saturating_add(1);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        let mut file = lock(&self.file);
        let op = Op::SetLen(len);
        apply(&mut file.live, &op);
        file.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        // Atomic with respect to a crash: the state stays locked until the data is durable.
        let mut state = lock(&self.fs);
        if state.generation != self.generation {
            return Err(io::Error::other("the file system crashed since this file was opened"));
        }
        if state.fail_syncs {
            return Err(io::Error::other("injected sync failure"));
        }
        state.syncs = state.syncs.saturating_add(1);
        let mut file = lock(&self.file);
        let pending = std::mem::take(&mut file.pending);
        for op in &pending {
            apply(&mut file.durable, op);
        }
        Ok(())
    }

    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check()?;
        let mut file = lock(&self.file);
        let end = offset.saturating_add(len);
        let synced = end <= file.durable.len() as u64
            && file.pending.iter().all(|op| match op {
                Op::Write(at, bytes) => at.saturating_add(bytes.len() as u64) <= offset || *at >= end,
                Op::SetLen(len) => *len >= end,
            });
        if !synced {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "dropping bytes not synced yet"));
        }
        file.cache_drops.push((offset, end));
        Ok(())
    }
}

impl FileSystem for FaultyFileSystem {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        let mut state = self.alive()?;
        let file = match state.files.get(name) {
            Some(file) => Arc::clone(file),
            None if create => {
                let file = Arc::new(Mutex::new(MemFile::default()));
                state.files.insert(name.to_owned(), Arc::clone(&file));
                file
            }
            None => return Err(io::Error::new(io::ErrorKind::NotFound, format!("no file `{name}`"))),
        };
        Ok(Arc::new(MemHandle {
            fs: Arc::clone(&self.state),
            generation: state.generation,
            file,
            direct: false,
        }))
    }

    /// Direct handles unless [`refuse_direct_io`](Self::refuse_direct_io) was set: they refuse
    /// unaligned writes, and what they write is lost in a crash unless synced, like any write.
    fn open_direct(&self, name: &str) -> io::Result<Option<Arc<dyn FileHandle>>> {
        let state = self.alive()?;
        if state.no_direct_io {
            return Ok(None);
        }
        let file = state
            .files
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file `{name}`")))?;
        Ok(Some(Arc::new(MemHandle {
            fs: Arc::clone(&self.state),
            generation: state.generation,
            file: Arc::clone(file),
            direct: true,
        })))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.alive()?.files.keys().cloned().collect())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.alive()?
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file `{name}`")))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.alive()?;
        let file = state
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file `{from}`")))?;
        state.files.insert(to.to_owned(), file);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.alive()?;
        if state.fail_syncs {
            return Err(io::Error::other("injected sync failure"));
        }
        state.syncs = state.syncs.saturating_add(1);
        state.durable_names = state.files.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_unsynced_writes_and_files() {
        let fs = FaultyFileSystem::new();
        let a = fs.open("a", true).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        fs.sync_dir().unwrap();
        a.sync_data().unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let b = fs.open("b", true).unwrap();
        b.write_all_at(b"x", 0).unwrap();
        b.sync_data().unwrap();
        let dead = fs.clone();
        let fs = fs.crash(CrashMode::DropUnsynced);
        assert!(a.size().is_err());
        assert!(dead.open("c", true).is_err());
        assert_eq!(fs.read_file("a").unwrap(), b"hello");
        assert!(fs.read_file("b").is_none());

        let a = fs.open("a", false).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let fs = fs.crash(CrashMode::Tear { keep: 0, fraction_per_mille: 500 });
        assert_eq!(fs.read_file("a").unwrap(), b"hello wo");
    }
}
