//! The on-disk compilation cache ([`super::RuntimeConfig::cache_dir`]): native code this host
//! compiled, loaded again only when it proves the host wrote it.
//!
//! wasmtime's own cache (`wasmtime::Cache`, crate `wasmtime-cache`) is not used: it loads any
//! file found under its directory at the expected name (checking only that the bytes
//! decompress and that wasmtime's header names a compatible engine), so whoever can write
//! there chooses the machine code the host runs. This cache owns its format instead:
//!
//! - the directory is created 0700; one owned by another user, or that is not a directory,
//!   is not used (the runtime compiles every time, with a warning); one of ours that others
//!   could write is narrowed to 0700 and emptied (its entries could have been planted);
//! - `key`: 32 random bytes, a 0600 regular file of ours, made on first use (atomically:
//!   written to a temporary file, then linked in place without replacing);
//! - one file per guest, `<SHA-256 of the wasm>-<engine hash>.<kind>.cwasm` (the engine hash
//!   covers wasmtime's version and every setting that changes compiled code): a 32-byte
//!   HMAC-SHA256 tag over the file name and the artifact, then the artifact
//!   (`Component::serialize`/`Module::serialize` output), written to a temporary file and
//!   renamed in place;
//! - before an entry is deserialized it must be a regular file (not a symlink) of ours that
//!   only we can read and write, with one link, and its tag must verify. Anything else is
//!   removed and the guest compiled again, with a warning naming the entry.

use std::hash::Hasher;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::GuestKind;

/// Length of the HMAC-SHA256 tag at the start of an entry.
const TAG: usize = 32;
/// Length of the key file.
const KEY: usize = 32;
/// Name of the key file.
const KEY_FILE: &str = "key";
/// Extension of entries.
const ENTRY_EXT: &str = "cwasm";
/// Largest entry read (a 256 MiB guest compiles to less than this).
const MAX_ENTRY: u64 = 2 << 30;

/// An open cache directory with its key. No `Debug`: it holds the key.
pub(super) struct DiskCache {
    dir: PathBuf,
    key: Zeroizing<[u8; KEY]>,
    engine: String,
}

impl DiskCache {
    /// Opens (creating if needed) the cache at `dir` for `engine`.
    ///
    /// # Errors
    /// When the directory cannot be created or used (another owner, not a directory), or the
    /// key cannot be made; the caller then compiles without a cache.
    pub(super) fn open(dir: &Path, engine: &wasmtime::Engine) -> std::io::Result<Self> {
        let rebuild = private_dir(dir)?;
        if rebuild {
            tracing::warn!(
                "compilation cache {} was writable by other users: its entries are discarded and it is narrowed to 0700",
                dir.display()
            );
            empty(dir);
            // Others could have read or replaced the key too.
            let _ = std::fs::remove_file(dir.join(KEY_FILE));
        }
        let key = match read_key(dir) {
            Ok(Some(key)) => key,
            Ok(None) => make_key(dir)?,
            Err(reason) => {
                tracing::warn!(
                    "compilation cache key {} is not used ({reason}): the cache is emptied and a new key made",
                    dir.join(KEY_FILE).display()
                );
                empty(dir);
                let _ = std::fs::remove_file(dir.join(KEY_FILE));
                make_key(dir)?
            }
        };
        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine = hex::encode(&hasher.0.finalize()[..8]);
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            engine,
        })
    }

    /// Path of the entry for the wasm with SHA-256 `hash`.
    pub(super) fn entry(&self, kind: GuestKind, hash: &[u8; 32]) -> PathBuf {
        let kind = match kind {
            GuestKind::Component => "component",
            GuestKind::Module => "module",
        };
        self.dir.join(format!(
            "{}-{}.{kind}.{ENTRY_EXT}",
            hex::encode(hash),
            self.engine
        ))
    }

    /// The artifact stored at `entry`, when there is one and it passes every check; an entry
    /// that fails one is removed, with a warning naming it.
    pub(super) fn load(&self, entry: &Path) -> Option<Verified> {
        match self.read(entry) {
            Ok(artifact) => artifact,
            Err(reason) => {
                self.reject(entry, &reason);
                None
            }
        }
    }

    /// Removes a refused entry, with a warning naming it (never its content).
    pub(super) fn reject(&self, entry: &Path, reason: &str) {
        tracing::warn!(
            "compilation cache entry {} is not used ({reason}); compiling again",
            entry.display()
        );
        let _ = std::fs::remove_file(entry);
    }

    fn read(&self, entry: &Path) -> Result<Option<Verified>, String> {
        let Some(mut file) = open_ours(entry)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        if bytes.len() < TAG {
            return Err("it is shorter than its tag".into());
        }
        let (tag, artifact) = bytes.split_at(TAG);
        self.mac(entry, artifact)
            .verify_slice(tag)
            .map_err(|_| "it was not written by this host: its tag does not verify".to_owned())?;
        Ok(Some(Verified(artifact.to_vec())))
    }

    /// Stores `artifact` at `entry` (temporary file, then rename); a failure is a warning.
    pub(super) fn store(&self, entry: &Path, artifact: &[u8]) {
        let tag = self.mac(entry, artifact).finalize().into_bytes();
        let written = tempfile::NamedTempFile::new_in(&self.dir).and_then(|mut tmp| {
            tmp.write_all(&tag)?;
            tmp.write_all(artifact)?;
            tmp.as_file().sync_data()?;
            tmp.persist(entry).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = written {
            tracing::warn!(
                "cannot write compilation cache entry {}: {e}",
                entry.display()
            );
        }
    }

    /// HMAC over the entry's file name (binding it to its guest and engine), then the artifact.
    fn mac(&self, entry: &Path, artifact: &[u8]) -> Hmac<Sha256> {
        // The key is 32 bytes, and HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..])
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        let name = entry
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"");
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name);
        mac.update(artifact);
        mac
    }
}

/// An artifact read from an entry whose tag verified under this host's key: bytes that this
/// host's `serialize` produced. Only [`DiskCache::load`] makes one.
pub(super) struct Verified(Vec<u8>);

/// What the cache can hold: a compiled component or core module.
pub(super) trait Artifact: Sized {
    /// Loads a verified artifact into `engine`.
    fn from_verified(engine: &wasmtime::Engine, artifact: &Verified) -> wasmtime::Result<Self>;
    /// The bytes to store.
    fn to_bytes(&self) -> wasmtime::Result<Vec<u8>>;
}

impl Artifact for wasmtime::component::Component {
    #[allow(unsafe_code)]
    fn from_verified(engine: &wasmtime::Engine, artifact: &Verified) -> wasmtime::Result<Self> {
        // SAFETY: `deserialize` runs the machine code in its input, so the input must come from
        // wasmtime's own `serialize`. A `Verified` holds bytes whose HMAC-SHA256 tag verified
        // under this host's key (kept 0600 in a 0700 directory of ours), over the entry name
        // that names the engine's compatibility hash: only this host wrote them, from
        // `Component::serialize` of a component compiled by an engine of the same settings.
        // They are in memory, so the file cannot change under wasmtime; wasmtime still checks
        // its own header (version, target, settings) and refuses a mismatch.
        unsafe { Self::deserialize(engine, &artifact.0) }
    }

    fn to_bytes(&self) -> wasmtime::Result<Vec<u8>> {
        self.serialize()
    }
}

impl Artifact for wasmtime::Module {
    #[allow(unsafe_code)]
    fn from_verified(engine: &wasmtime::Engine, artifact: &Verified) -> wasmtime::Result<Self> {
        // SAFETY: as for components: bytes this host's `Module::serialize` produced, proved by
        // their HMAC tag under the host's key, held in memory.
        unsafe { Self::deserialize(engine, &artifact.0) }
    }

    fn to_bytes(&self) -> wasmtime::Result<Vec<u8>> {
        self.serialize()
    }
}

/// A [`Hasher`] over SHA-256, to turn wasmtime's compatibility hash into stable bytes.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The effective user id.
fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Creates `dir` (and missing parents) 0700 and checks it: a directory (not a symlink) owned
/// by this user. One open to others is narrowed to 0700; returns `true` when others could
/// write it (its entries are then not trusted).
///
/// # Errors
/// When the directory cannot be created, belongs to another user, or cannot be narrowed.
fn private_dir(dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory (or a symlink)"));
    }
    if meta.uid() != me() {
        return Err(std::io::Error::other(format!(
            "owned by uid {}, not by this user (uid {})",
            meta.uid(),
            me()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(meta.mode() & 0o022 != 0)
}

/// Removes every entry (and temporary file) in `dir`; the key is left.
fn empty(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(&format!(".{ENTRY_EXT}")) || name.starts_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Opens `path` for reading if it is a regular file of ours (not a symlink) that only we can
/// read and write, with one link; `None` if it does not exist.
fn open_ours(path: &Path) -> Result<Option<std::fs::File>, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(
            i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
                | i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0),
        )
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err("it is a symlink".into())
        }
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != me() {
        return Err(format!(
            "owned by uid {}, not by this user (uid {})",
            meta.uid(),
            me()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "mode {:o}: group or others can read or write it",
            meta.mode() & 0o777
        ));
    }
    if meta.nlink() != 1 {
        return Err(format!("it has {} hard links", meta.nlink()));
    }
    if meta.len() > MAX_ENTRY {
        return Err(format!("larger than {MAX_ENTRY} bytes"));
    }
    Ok(Some(file))
}

/// The key at `<dir>/key`: `Ok(None)` when there is none yet.
fn read_key(dir: &Path) -> Result<Option<Zeroizing<[u8; KEY]>>, String> {
    let Some(file) = open_ours(&dir.join(KEY_FILE))? else {
        return Ok(None);
    };
    let mut key = Zeroizing::new([0; KEY]);
    let mut extra = [0; 1];
    let mut file = file;
    file.read_exact(&mut key[..])
        .map_err(|_| format!("shorter than {KEY} bytes"))?;
    if file.read(&mut extra).map_err(|e| e.to_string())? != 0 {
        return Err(format!("longer than {KEY} bytes"));
    }
    Ok(Some(key))
}

/// Makes a new random key at `<dir>/key` (0600), or reads the one another process made first.
fn make_key(dir: &Path) -> std::io::Result<Zeroizing<[u8; KEY]>> {
    use aes_gcm::aead::{KeyInit, OsRng};
    let fresh = aes_gcm::Aes256Gcm::generate_key(OsRng);
    let mut key = Zeroizing::new([0; KEY]);
    key.copy_from_slice(&fresh);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&key[..])?;
    tmp.as_file().sync_data()?;
    match tmp.persist_noclobber(dir.join(KEY_FILE)) {
        Ok(_) => Ok(key),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => read_key(dir)
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other("the key vanished while it was made")),
        Err(e) => Err(e.error),
    }
}
