//! The mount boundary: which host directories a guest may be given (`--dir`, `--dir-ro`).
//!
//! A mount is refused when it *is*, *contains* or *lies inside* a protected object: the data
//! directory, the store's database file (with its `-wal`, `-shm` and `-journal` siblings) and
//! its directory, the configuration file, the compilation cache, and `/proc`, `/sys`, `/dev`.
//! Objects are compared by device and inode after resolving symlinks, never by path text, so
//! another spelling of a path (a symlink, `..`, a bind mount of the same directory) does not
//! get around the check. A protected object that does not exist yet (the store is created on
//! the first `secret set`, the cache on the first run) is protected through the path it will
//! have: a mount that contains its nearest existing ancestor is refused.
//!
//! Guest paths are normalised (`//` and a trailing `/` collapsed, `.` dropped, `..` refused);
//! two mounts at one guest path, or one inside the other, are refused.
//!
//! `paths` resolves paths as the kernel does (the mount table, symlinks component by component,
//! device and inode identities, guest paths normalised); this file holds the rules.
//!
//! Limits: a hard link to a protected *file* placed elsewhere cannot be found without scanning
//! the mount, and a host path swapped for another between this check and the guest's start is
//! not detected (the check opens the path by its resolved name; only the host can swap it).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::runtime::DirMount;

mod paths;

use self::paths::{
    chain, mount_table, nearest_existing, normalize_guest, resolve, Id, Resolved,
    KERNEL_FILESYSTEMS,
};

/// Mount check failures. They name paths, never file contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host directory of a mount cannot be resolved or is not a directory.
    #[error("cannot mount directory {}: {reason}", host.display())]
    Open {
        /// Host path as given.
        host: PathBuf,
        /// Why.
        reason: String,
    },
    /// The mount would give the guest a protected object.
    #[error(
        "refusing to mount {}: it {relation} {} {} ({})",
        host.display(),
        kind.describe(),
        object.display(),
        kind.why()
    )]
    Protected {
        /// Host path as given.
        host: PathBuf,
        /// How the mount relates to the object.
        relation: Relation,
        /// What the object is.
        kind: Kind,
        /// Where the object is (or will be).
        object: PathBuf,
    },
    /// A guest path that cannot be mounted.
    #[error("invalid guest path {guest}: {reason}")]
    GuestPath {
        /// The guest path as given.
        guest: String,
        /// Why.
        reason: &'static str,
    },
    /// Two mounts at the same guest path (after normalising).
    #[error("two --dir mounts at guest path {0}")]
    SameGuest(String),
    /// One mount's guest path lies inside another's.
    #[error(
        "guest path {inner} lies inside guest path {outer} of another mount: mounts may not nest"
    )]
    Nested {
        /// The enclosing guest path.
        outer: String,
        /// The nested guest path.
        inner: String,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a protected object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// The host's data directory (embedded store, compilation cache).
    DataDir,
    /// The store's database file or one of its `-wal`, `-shm`, `-journal` siblings.
    Database,
    /// The directory holding the store's database file.
    DatabaseDir,
    /// The configuration file (it can hold the encryption key).
    Config,
    /// The compilation cache (native code the host runs).
    Cache,
    /// `/proc`, `/sys` or `/dev`.
    System,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Self::DataDir => "the data directory",
            Self::Database => "the database file",
            Self::DatabaseDir => "the database directory",
            Self::Config => "the configuration file",
            Self::Cache => "the compilation cache",
            Self::System => "the system directory",
        }
    }

    fn why(self) -> &'static str {
        match self {
            Self::DataDir | Self::Database | Self::DatabaseDir => "the secret store",
            Self::Config => "it can hold the encryption key",
            Self::Cache => "compiled code the host runs",
            Self::System => "the host's processes and devices",
        }
    }
}

/// How a mount relates to a protected object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The mount is the object.
    Is,
    /// The mount contains the object (or the path it will be created at).
    Contains,
    /// The mount lies inside the object.
    LiesInside,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Is => "is",
            Self::Contains => "contains",
            Self::LiesInside => "lies inside",
        })
    }
}

/// The protected objects of a host. [`Boundary::new`] starts with `/proc`, `/sys` and `/dev`;
/// add the data directory, database, configuration file and cache with
/// [`Boundary::protect`] and [`Boundary::protect_database`].
///
/// # Examples
/// ```
/// use attune_wasm::executor::mounts::{Boundary, Kind};
/// use attune_wasm::runtime::DirMount;
///
/// let mut boundary = Boundary::new();
/// boundary.protect(Kind::DataDir, "/var/lib/attune-wasm");
/// let proc = DirMount { host: "/proc".into(), guest: "/proc".into(), read_only: true };
/// assert!(boundary.check(&[proc]).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Boundary {
    protected: Vec<(Kind, PathBuf)>,
}

impl Default for Boundary {
    fn default() -> Self {
        Self::new()
    }
}

impl Boundary {
    /// A boundary protecting `/proc`, `/sys` and `/dev`.
    pub fn new() -> Self {
        Self {
            protected: ["/proc", "/sys", "/dev"]
                .into_iter()
                .map(|p| (Kind::System, PathBuf::from(p)))
                .collect(),
        }
    }

    /// Protects `path` (which need not exist yet; a relative path is taken from the current
    /// directory when checked).
    pub fn protect(&mut self, kind: Kind, path: impl Into<PathBuf>) -> &mut Self {
        let path = path.into();
        if !self.protected.iter().any(|(k, p)| *k == kind && *p == path) {
            self.protected.push((kind, path));
        }
        self
    }

    /// Protects the SQLite database at `file`: the file, its `-wal`, `-shm` and `-journal`
    /// siblings, and its directory.
    pub fn protect_database(&mut self, file: &Path) -> &mut Self {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            self.protect(Kind::Database, PathBuf::from(name));
        }
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        self.protect(Kind::DatabaseDir, dir.to_path_buf())
    }

    /// Adds every object `other` protects.
    pub fn extend(&mut self, other: &Boundary) -> &mut Self {
        for (kind, path) in &other.protected {
            self.protect(*kind, path.clone());
        }
        self
    }

    /// Checks `mounts` and returns them with each host path resolved (symlinks followed) and
    /// each guest path normalised, as they should be handed to the runtime.
    ///
    /// # Errors
    /// [`Error::Open`] when a host directory cannot be resolved; [`Error::Protected`] when a
    /// mount is, contains or lies inside a protected object; [`Error::GuestPath`],
    /// [`Error::SameGuest`] or [`Error::Nested`] for guest paths.
    pub fn check(&self, mounts: &[DirMount]) -> Result<Vec<DirMount>> {
        let mut checked: Vec<(Vec<String>, DirMount)> = Vec::with_capacity(mounts.len());
        for mount in mounts {
            let (guest, parts) = normalize_guest(&mount.guest)?;
            for (other, earlier) in &checked {
                // `d` and `/d` are compared as one: a guest's libc resolves both against the
                // same preopens (`ls d` and `ls /d` list the same mount).
                if *other == parts {
                    return Err(Error::SameGuest(guest));
                }
                let (outer, inner) = if other.len() < parts.len() {
                    (other, &parts)
                } else {
                    (&parts, other)
                };
                if inner.starts_with(outer) {
                    let (outer, inner) = if other.len() < parts.len() {
                        (earlier.guest.clone(), guest.clone())
                    } else {
                        (guest.clone(), earlier.guest.clone())
                    };
                    return Err(Error::Nested { outer, inner });
                }
            }
            let host = self.check_host(&mount.host)?;
            checked.push((
                parts,
                DirMount {
                    host,
                    guest,
                    read_only: mount.read_only,
                },
            ));
        }
        Ok(checked.into_iter().map(|(_, m)| m).collect())
    }

    /// Resolves one host directory and compares it with every protected object.
    fn check_host(&self, host: &Path) -> Result<PathBuf> {
        let open = |reason: String| Error::Open {
            host: host.to_path_buf(),
            reason,
        };
        let resolved = match resolve(host).map_err(|e| open(e.to_string()))? {
            Resolved::Exists(path) => path,
            Resolved::Missing { .. } => return Err(open("no such directory".into())),
        };
        let meta = std::fs::metadata(&resolved).map_err(|e| open(e.to_string()))?;
        if !meta.is_dir() {
            return Err(open("not a directory".into()));
        }
        let mount = Id::of(&meta);
        let found = self.protected_reached(mount, &chain(&resolved));
        // What is mounted at or below the directory is reachable through it too: another
        // filesystem mounted inside it (a bind mount of the data directory, a second procfs
        // instance in a build root) is checked as if it were mounted itself.
        let found = match found {
            Some(found) => Some(found),
            None => self.reached_through_submounts(&resolved).map_err(open)?,
        };
        match found {
            Some((relation, kind, object)) => Err(Error::Protected {
                host: host.to_path_buf(),
                relation,
                kind,
                object,
            }),
            None => Ok(resolved),
        }
    }

    /// The protected object a directory with identity `mount` (and ancestors `mount_chain`)
    /// is, contains or lies inside, the closest relation first.
    fn protected_reached(
        &self,
        mount: Id,
        mount_chain: &[Id],
    ) -> Option<(Relation, Kind, PathBuf)> {
        let mut found: Option<(Relation, Kind, PathBuf)> = None;
        for (kind, path) in &self.protected {
            // A protected path that cannot be resolved (a symlink loop, no permission) is
            // compared by what can be: its nearest resolvable ancestor.
            let (object, relation) = match resolve(path) {
                Ok(Resolved::Exists(object)) => {
                    let Ok(id) = std::fs::metadata(&object).map(|m| Id::of(&m)) else {
                        continue;
                    };
                    let relation = if id == mount {
                        Some(Relation::Is)
                    } else if chain(&object).contains(&mount) {
                        Some(Relation::Contains)
                    } else if mount_chain.contains(&id) {
                        Some(Relation::LiesInside)
                    } else {
                        None
                    };
                    (object, relation)
                }
                Ok(Resolved::Missing { would_be, ancestor }) => {
                    // Not there yet: whoever can write its nearest existing ancestor can
                    // create it, or put something in its place.
                    let contains = chain(&ancestor).contains(&mount);
                    (would_be, contains.then_some(Relation::Contains))
                }
                Err(_) => {
                    let ancestor = nearest_existing(path);
                    let contains = chain(&ancestor).contains(&mount);
                    (path.clone(), contains.then_some(Relation::Contains))
                }
            };
            // The closest relation is reported: the mount *is* the database directory rather
            // than *contains* the database file.
            if let Some(relation) = relation {
                let closer = match &found {
                    None => true,
                    Some((earlier, _, _)) => *earlier != Relation::Is && relation == Relation::Is,
                };
                if closer {
                    found = Some((relation, *kind, object));
                }
            }
        }
        found
    }

    /// Checks the filesystems mounted at or below `resolved` (from `/proc/self/mountinfo`):
    /// a kernel filesystem (procfs, sysfs, devtmpfs, …) anywhere in the subtree, or a mount
    /// whose root is, contains or lies inside a protected object, is reached through it.
    ///
    /// # Errors
    /// The reason, when the mount table cannot be read (the check fails closed).
    fn reached_through_submounts(
        &self,
        resolved: &Path,
    ) -> std::result::Result<Option<(Relation, Kind, PathBuf)>, String> {
        let table = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read the mount table /proc/self/mountinfo: {e}"))?;
        // The filesystem holding `resolved` itself: the mount point that is its longest prefix.
        let mut holder: Option<(usize, String)> = None;
        for (point, fstype) in mount_table(&table) {
            let at_or_below = point.starts_with(resolved);
            if resolved.starts_with(&point) {
                let depth = point.components().count();
                if holder.as_ref().is_none_or(|(d, _)| depth >= *d) {
                    holder = Some((depth, fstype.clone()));
                }
            }
            if !at_or_below {
                continue;
            }
            let relation = if point == resolved {
                Relation::Is
            } else {
                Relation::Contains
            };
            if KERNEL_FILESYSTEMS.contains(&fstype.as_str()) {
                return Ok(Some((relation, Kind::System, point)));
            }
            if point == resolved {
                continue;
            }
            // A filesystem mounted below: compared by the identity of its root, as if it
            // were mounted itself (the mount's relation to the object is `contains`).
            let Ok(meta) = std::fs::metadata(&point) else {
                continue;
            };
            if let Some((_, kind, object)) = self.protected_reached(Id::of(&meta), &chain(&point)) {
                return Ok(Some((Relation::Contains, kind, object)));
            }
        }
        match holder {
            Some((_, fstype)) if KERNEL_FILESYSTEMS.contains(&fstype.as_str()) => Ok(Some((
                Relation::LiesInside,
                Kind::System,
                resolved.to_path_buf(),
            ))),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::paths::*;
    use super::*;

    fn mount(host: &Path, guest: &str) -> DirMount {
        DirMount {
            host: host.to_path_buf(),
            guest: guest.to_owned(),
            read_only: false,
        }
    }

    #[test]
    fn guest_paths_are_normalised_and_may_not_nest() {
        let dir = tempfile::tempdir().unwrap();
        let b = Boundary::new();
        let (a, c) = (dir.path().join("a"), dir.path().join("c"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&c).unwrap();
        let ok = b.check(&[mount(&a, "//d/./x/"), mount(&c, "/e")]).unwrap();
        assert_eq!(ok[0].guest, "/d/x");
        for (g1, g2) in [
            ("/d", "/d/"),
            ("/d", "/d/sub"),
            ("/d/sub//", "/d"),
            (".", "x"),
            ("d", "/d"),
            ("/d", "d/sub"),
        ] {
            let err = b.check(&[mount(&a, g1), mount(&c, g2)]).unwrap_err();
            assert!(
                matches!(err, Error::SameGuest(_) | Error::Nested { .. }),
                "{g1} {g2}: {err}"
            );
        }
        assert!(b.check(&[mount(&a, "/d/../etc")]).is_err());
        assert!(b.check(&[mount(&a, "/dx"), mount(&c, "/d")]).is_ok());
    }

    #[test]
    fn objects_are_compared_not_paths() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        let mut b = Boundary::new();
        b.protect(Kind::DataDir, &link);
        for (host, relation) in [
            (data.clone(), Relation::Is),
            (dir.path().to_path_buf(), Relation::Contains),
            (data.join("sub"), Relation::LiesInside),
            (link.join("sub/.."), Relation::Is),
        ] {
            match b.check(&[mount(&host, "/d")]) {
                Err(Error::Protected { relation: r, .. }) => assert_eq!(r, relation, "{host:?}"),
                other => panic!("{host:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn objects_not_created_yet_are_protected_where_they_will_be() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(target.join("data"), &link).unwrap();
        let mut b = Boundary::new();
        b.protect(Kind::DataDir, link.join("cache"));
        let err = b.check(&[mount(&target, "/m")]).unwrap_err();
        assert!(err.to_string().contains("target/data/cache"), "{err}");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        assert!(b.check(&[mount(&other, "/m")]).is_ok());
    }

    #[test]
    fn the_mount_table_is_read_with_its_escapes() {
        let table =
            "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                     40 1 0:21 / /tmp/build/proc rw shared:12 - proc proc rw\n";
        let got = mount_table(table);
        assert_eq!(
            got,
            vec![
                (PathBuf::from("/mnt/with space"), "ext3".to_owned()),
                (PathBuf::from("/tmp/build/proc"), "proc".to_owned()),
            ]
        );
    }
}
