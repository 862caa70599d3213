//! The data directory: its format version and its exclusive lock.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use aesp_core::{Error, ErrorCode, Result};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The name of the file that holds the format version.
pub(crate) const FORMAT_FILE: &str = "FORMAT";
/// The name of the lock file.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// The name of the database file.
pub(crate) const DB_FILE: &str = "state.redb";

const FORMAT_PREFIX: &str = "aesp-store format ";

fn io_error(what: String, e: std::io::Error) -> Error {
    Error::unavailable(what).with_source(e)
}

/// Creates `dir` if needed, takes its lock, and checks (or, for a new directory, writes) its
/// format version. The returned file holds the lock until dropped.
pub(crate) fn prepare(dir: &Path) -> Result<File> {
    fs::create_dir_all(dir)
        .map_err(|e| io_error(format!("cannot create data directory `{}`", dir.display()), e))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| io_error(format!("cannot open `{}`", lock_path.display()), e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("data directory `{}` is in use by another process (its LOCK is held)", dir.display()),
            )
            .with_remediation("stop the other process, or give this one its own data directory"));
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(io_error(format!("cannot lock `{}`", lock_path.display()), e));
        }
    }
    check_or_write_format(dir)?;
    Ok(lock)
}

fn check_or_write_format(dir: &Path) -> Result<()> {
    let path = dir.join(FORMAT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => check_format(&path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(DB_FILE).exists() {
                return Err(Error::corrupted(format!(
                    "`{}` is missing but `{}` exists; this is not a data directory this build wrote",
                    path.display(),
                    dir.join(DB_FILE).display()
                )));
            }
            write_format(dir)
        }
        Err(e) => Err(io_error(format!("cannot read `{}`", path.display()), e)),
    }
}

fn check_format(path: &Path, text: &str) -> Result<()> {
    let version =
        text.trim().strip_prefix(FORMAT_PREFIX).and_then(|v| v.parse::<u32>().ok()).ok_or_else(|| {
            Error::corrupted(format!("`{}` does not hold an aesp-store format version", path.display()))
        })?;
    if version > FORMAT_VERSION {
        return Err(Error::new(
            ErrorCode::FailedPrecondition,
            format!(
                "data directory format {version} (in `{}`) was written by a newer version of aesp-store; \
                 this version reads format {FORMAT_VERSION}",
                path.display()
            ),
        )
        .with_remediation("run a newer aesp-store, or restore a backup taken by this version"));
    }
    if version < FORMAT_VERSION {
        return Err(Error::new(
            ErrorCode::FailedPrecondition,
            format!(
                "data directory format {version} (in `{}`) is older than any this version reads",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Writes the format file atomically (temporary file, sync, rename, sync the directory).
pub(crate) fn write_format(dir: &Path) -> Result<()> {
    let path = dir.join(FORMAT_FILE);
    let tmp: PathBuf = dir.join("FORMAT.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(format!("{FORMAT_PREFIX}{FORMAT_VERSION}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| io_error(format!("cannot write `{}`", path.display()), e))
}
