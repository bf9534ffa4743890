//! The action files a worker runs: each compiled once per content ([`Runtime::load`], which
//! keeps compiled guests by the SHA-256 of their bytes) and read once per version of the
//! file. A file is known by its identity, from one `stat`: device, inode, size, modification
//! and change times. While a path keeps its identity, its content hash is taken from here and
//! the guest from the runtime ([`Runtime::loaded`]) without reading or hashing the file again;
//! a new version (replaced by a rename: another inode; rewritten in place: another size,
//! other times) is read again, and so is a file whose guest the runtime no longer holds.
//!
//! File times have the granularity of the kernel's clock tick (a few milliseconds): a file
//! rewritten in place twice within one tick, to the same size, would keep its identity. A file
//! changed less than [`SETTLE`] before it was read is therefore not remembered, and is read
//! again the next time (git's index does the same for "racily clean" entries); neither is a
//! file whose identity changed while it was read.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::Failure;
use crate::executor;
use crate::runtime::{Guest, Runtime};

/// How long a file must have been left unchanged (by its modification and change times) when
/// it is read for its identity to be remembered.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Most action files remembered (a path, an identity and a hash each); past it the whole list
/// is forgotten (and refilled as files run again).
pub const MAX_FILES: usize = 4096;

/// What one `stat` says about a file: equal identities mean the same version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    /// Modification time (seconds, nanoseconds).
    mtime: (i64, i64),
    /// Inode change time (seconds, nanoseconds).
    ctime: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file was last changed at least [`SETTLE`] before `now` (a time in the
    /// future, from a clock that went back, is not settled).
    fn settled(&self, now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let now = i128::try_from(now.as_nanos()).unwrap_or(i128::MAX);
        let settle = i128::try_from(SETTLE.as_nanos()).unwrap_or(i128::MAX);
        let latest = self.mtime.max(self.ctime);
        let changed = i128::from(latest.0) * 1_000_000_000 + i128::from(latest.1);
        now - changed >= settle
    }
}

/// Where [`ActionFiles::lookup`] found a file.
pub enum Lookup {
    /// The same version as last read: its compiled guest.
    Known(Guest),
    /// Not read yet in this version (or its guest is no longer held by the runtime): pass
    /// it to [`ActionFiles::read`].
    Unknown(Identity),
}

/// The content hash of each action file by path, with the identity of the version it was
/// read in (see the module's documentation).
#[derive(Default)]
pub struct ActionFiles {
    known: Mutex<HashMap<PathBuf, (Identity, [u8; 32])>>,
    reads: AtomicU64,
}

impl ActionFiles {
    /// The guest of `path` when the file is the version last read and `runtime` still holds
    /// its guest (one `stat`, no read); else its identity, for [`ActionFiles::read`].
    ///
    /// # Errors
    /// [`Failure::Read`] when the file cannot be examined (missing, no permission).
    pub fn lookup(&self, runtime: &Runtime, path: &Path) -> Result<Lookup, Failure> {
        let identity = Identity::of(&std::fs::metadata(path).map_err(|e| read_error(path, &e))?);
        let hash = match self.known().get(path) {
            Some((known, hash)) if *known == identity => *hash,
            _ => return Ok(Lookup::Unknown(identity)),
        };
        Ok(match runtime.loaded(&hash) {
            Some(guest) => Lookup::Known(guest),
            None => Lookup::Unknown(identity),
        })
    }

    /// Reads `path` (found with `identity` by [`ActionFiles::lookup`]) and loads it through
    /// `runtime` (compiling it unless the runtime holds a guest of the same content), and
    /// remembers its content hash for that identity when the file had settled and did not
    /// change while it was read. Blocking: file I/O, hashing, and compilation of new content.
    ///
    /// # Errors
    /// [`Failure::Read`] when the file cannot be read; [`Failure::Executor`] when it is not a
    /// guest the runtime can load (not wasm, does not compile or link).
    pub fn read(
        &self,
        runtime: &Runtime,
        path: &Path,
        identity: Identity,
    ) -> Result<Guest, Failure> {
        let bytes = std::fs::read(path).map_err(|e| read_error(path, &e))?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let after = std::fs::metadata(path).map_err(|e| read_error(path, &e))?;
        let guest = runtime
            .load(&path.display().to_string(), &bytes)
            .map_err(executor::Error::Runtime)?;
        let unchanged = Identity::of(&after) == identity;
        if unchanged && identity.settled(SystemTime::now()) {
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            let mut known = self.known();
            if known.len() >= MAX_FILES && !known.contains_key(path) {
                known.clear();
            }
            known.insert(path.to_owned(), (identity, hash));
        } else {
            self.known().remove(path);
        }
        Ok(guest)
    }

    /// How many times an action file was read (for tests and diagnostics).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn known(&self) -> MutexGuard<'_, HashMap<PathBuf, (Identity, [u8; 32])>> {
        // A poisoned lock only means a panic while inserting or removing; the map is valid.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn read_error(path: &Path, e: &std::io::Error) -> Failure {
    Failure::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::fs::File;
    use std::io::Write as _;

    use super::*;
    use crate::runtime::{GuestKind, RuntimeConfig};

    const MODULE: &str = r#"(module (func (export "_start")))"#;

    fn set_mtime(path: &Path, ago: Duration) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - ago)
            .unwrap();
    }

    fn load(files: &ActionFiles, rt: &Runtime, path: &Path) -> Guest {
        match files.lookup(rt, path).unwrap() {
            Lookup::Known(guest) => guest,
            Lookup::Unknown(identity) => files.read(rt, path, identity).unwrap(),
        }
    }

    #[test]
    fn an_unchanged_file_is_read_once_and_each_new_version_again() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, wat::parse_str(MODULE).unwrap()).unwrap();
        // The change time cannot be set back: the file settles for real.
        std::thread::sleep(SETTLE + Duration::from_millis(100));
        let files = ActionFiles::default();
        for _ in 0..3 {
            assert_eq!(load(&files, &rt, &path).kind(), GuestKind::Module);
        }
        assert_eq!(files.reads(), 1);

        // Replaced by a rename (another inode): read again, and the new content is loaded.
        let component = dir.path().join("next.wasm");
        std::fs::write(&component, wat::parse_str("(component)").unwrap()).unwrap();
        std::fs::rename(&component, &path).unwrap();
        let Lookup::Unknown(_) = files.lookup(&rt, &path).unwrap() else {
            panic!("a replaced file is not the version last read");
        };
        let loaded = files.lookup(&rt, &path).map(|l| match l {
            Lookup::Known(_) => None,
            Lookup::Unknown(identity) => Some(files.read(&rt, &path, identity)),
        });
        // `(component)` has no wasi:cli/run: refused, which shows its bytes were read.
        assert!(matches!(loaded, Ok(Some(Err(Failure::Executor(_))))));
        assert_eq!(files.reads(), 2);

        // Rewritten in place (same inode): read again while it has not settled.
        let mut f = File::options()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(&wat::parse_str(MODULE).unwrap()).unwrap();
        drop(f);
        set_mtime(&path, Duration::from_secs(3600));
        for n in 3..=4 {
            assert_eq!(load(&files, &rt, &path).kind(), GuestKind::Module);
            assert_eq!(files.reads(), n, "changed just now: not remembered");
        }
    }

    #[test]
    fn a_missing_file_is_a_read_failure_naming_it() {
        let files = ActionFiles::default();
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let Err(Failure::Read { path, .. }) = files.lookup(&rt, Path::new("/nonexistent/a.wasm"))
        else {
            panic!("a missing file must be a read failure");
        };
        assert_eq!(path, "/nonexistent/a.wasm");
    }

    #[test]
    fn settled_means_changed_long_enough_ago() {
        let now = SystemTime::now();
        let at = |t: SystemTime| {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            (
                i64::try_from(d.as_secs()).unwrap(),
                i64::from(d.subsec_nanos()),
            )
        };
        let identity = |mtime, ctime| Identity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime,
            ctime,
        };
        let old = at(now - SETTLE - Duration::from_millis(1));
        let fresh = at(now - Duration::from_millis(100));
        assert!(identity(old, old).settled(now));
        assert!(!identity(old, fresh).settled(now));
        assert!(!identity(fresh, old).settled(now));
        assert!(!identity(old, at(now + Duration::from_secs(60))).settled(now));
    }
}
