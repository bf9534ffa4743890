//! The files of the SQLite store: who may own them, which modes are accepted, and the lock
//! that serialises creating and migrating the database (bad-inputs N27, N29).
//!
//! - The directory holding the database must belong to this process's user (or root) and
//!   must not be writable by group or others: whoever can write it can swap the database or
//!   plant its `-wal` journal. Such a directory is refused, never changed (it may be shared,
//!   like `/tmp`).
//! - The database, its `-wal` and `-shm` files and the lock file must be regular files (not
//!   symbolic links) owned by this process's user. One that is not is refused; one that is
//!   ours but readable or writable by group or others is narrowed to 0600 (with a warning).
//! - `secrets.db.lock` next to the database is locked exclusively (`flock`) around creating
//!   the file, opening it and applying migrations, so that hosts started at once on a fresh
//!   data directory do not migrate it twice.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Error, Result};

/// Suffixes of the files SQLite keeps beside the database in WAL mode.
const SIDE_FILES: [&str; 2] = ["-wal", "-shm"];

/// The directory holding `db` (`.` for a bare file name).
pub(super) fn dir_of(db: &Path) -> PathBuf {
    match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn unsafe_path(path: &Path, reason: impl Into<String>) -> Error {
    Error::UnsafePath {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> Error {
    unsafe_path(path, format!("cannot inspect it: {e}"))
}

/// The effective user id of this process.
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Checks the directory holding the database (see the module docs).
///
/// # Errors
/// [`Error::UnsafePath`].
pub(super) fn check_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| io_error(dir, &e))?;
    if !meta.is_dir() {
        return Err(unsafe_path(dir, "it is not a directory"));
    }
    let me = euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_path(
            dir,
            format!(
                "the directory is owned by uid {}, not by this user (uid {me}) or root; use a \
                 data directory of your own",
                meta.uid()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_path(
            dir,
            format!(
                "the directory has mode {mode:04o}: other users can replace the files of the \
                 store in it; run chmod 700 on it (or use a data directory of your own)"
            ),
        ));
    }
    Ok(())
}

/// Checks one file of the store if it exists (see the module docs).
///
/// # Errors
/// [`Error::UnsafePath`].
fn check_file(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, &e)),
    };
    check_file_meta(path, &meta)
}

fn check_file_meta(path: &Path, meta: &Metadata) -> Result<()> {
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(
            path,
            "it is a symbolic link; put the database itself there",
        ));
    }
    if !meta.is_file() {
        return Err(unsafe_path(path, "it is not a regular file"));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(unsafe_path(
            path,
            format!(
                "the file is owned by uid {}, not by this user (uid {me}); if it is yours, \
                 chown it to this user, otherwise remove it",
                meta.uid()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            unsafe_path(
                path,
                format!("it has mode {mode:04o} and chmod 600 failed: {e}"),
            )
        })?;
        tracing::warn!(
            "{} had mode {mode:04o}, readable or writable by other users; narrowed to 0600",
            path.display()
        );
    }
    Ok(())
}

/// Checks the database and the files SQLite keeps beside it.
///
/// # Errors
/// [`Error::UnsafePath`].
pub(super) fn check_files(db: &Path) -> Result<()> {
    check_file(db)?;
    for suffix in SIDE_FILES {
        check_file(&side_file(db, suffix))?;
    }
    Ok(())
}

fn side_file(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The exclusive lock on `<database>.lock`, held while the store is created and migrated;
/// released when dropped.
pub(super) struct CreateLock(File);

impl CreateLock {
    /// Opens (creating it 0600 if needed, never through a symbolic link) and locks the lock
    /// file of `db`, waiting for another process that holds it.
    ///
    /// # Errors
    /// [`Error::UnsafePath`] when the lock file is not ours, [`Error::Lock`].
    pub(super) async fn acquire(db: &Path) -> Result<Self> {
        let path = side_file(db, ".lock");
        let lock_err = |cause| Error::Lock {
            path: path.display().to_string(),
            cause,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed())
            .open(&path)
            .map_err(|e| {
                if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                    unsafe_path(&path, "it is a symbolic link")
                } else {
                    lock_err(e)
                }
            })?;
        let meta = file.metadata().map_err(lock_err)?;
        check_file_meta(&path, &meta)?;
        // `flock` blocks: wait on a thread of the blocking pool, not on the runtime.
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| lock_err(std::io::Error::other(e)))?
            .map_err(lock_err)?;
        Ok(Self(file))
    }
}

impl Drop for CreateLock {
    fn drop(&mut self) {
        // Closing the file releases the lock as well; unlocking first only makes it explicit.
        let _ = self.0.unlock();
    }
}
