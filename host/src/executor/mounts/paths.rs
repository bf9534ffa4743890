//! Paths as the kernel sees them: the mount table, symlinks resolved component by
//! component, device and inode identities, guest paths normalised.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use super::{Error, Result};

/// Most symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Filesystem types that expose the host's processes, kernel or devices (`/proc/filesystems`
/// names): never reachable by a guest, wherever they are mounted.
pub(super) const KERNEL_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "debugfs",
    "tracefs",
    "securityfs",
    "cgroup",
    "cgroup2",
    "bpf",
    "configfs",
    "fusectl",
    "pstore",
    "efivarfs",
    "mqueue",
    "hugetlbfs",
    "binfmt_misc",
    "autofs",
    "rpc_pipefs",
    "nsfs",
    "selinuxfs",
];

/// `(mount point, filesystem type)` of every line of a `/proc/self/mountinfo` text
/// (proc(5): field 5 is the mount point, octal-escaped; the type follows the ` - ` separator).
pub(super) fn mount_table(table: &str) -> Vec<(PathBuf, String)> {
    table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some((PathBuf::from(unescape_octal(point)), fstype.to_owned()))
        })
        .collect()
}

/// Undoes mountinfo's `\ooo` escapes (space, tab, newline, backslash).
pub(super) fn unescape_octal(text: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|digits| {
            digits
                .iter()
                .try_fold(0u16, |n, &d| {
                    (b'0'..=b'7')
                        .contains(&d)
                        .then(|| n * 8 + u16::from(d - b'0'))
                })
                .and_then(|n| u8::try_from(n).ok())
        });
        if let (b'\\', Some(code)) = (bytes[i], code) {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// Normalises a guest path: `//` and a trailing `/` collapsed, `.` dropped; returns it with
/// its components.
pub(super) fn normalize_guest(guest: &str) -> Result<(String, Vec<String>)> {
    let bad = |reason| Error::GuestPath {
        guest: guest.to_owned(),
        reason,
    };
    if guest.is_empty() {
        return Err(bad("it is empty"));
    }
    if guest.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in guest.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad("it contains `..`")),
            p => parts.push(p.to_owned()),
        }
    }
    let normal = match (guest.starts_with('/'), parts.is_empty()) {
        (true, _) => format!("/{}", parts.join("/")),
        (false, true) => ".".to_owned(),
        (false, false) => parts.join("/"),
    };
    Ok((normal, parts))
}

/// An object's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Id(u64, u64);

impl Id {
    pub(super) fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self(meta.dev(), meta.ino())
    }
}

/// Identities of a resolved path and each of its ancestors up to `/`.
pub(super) fn chain(resolved: &Path) -> Vec<Id> {
    resolved
        .ancestors()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| Id::of(&m))
        .collect()
}

/// A path with every symlink resolved.
#[derive(Debug)]
pub(super) enum Resolved {
    /// The object exists at this canonical path.
    Exists(PathBuf),
    /// It does not exist yet: it would be created at `would_be`, whose nearest existing
    /// ancestor is the canonical `ancestor`.
    Missing {
        would_be: PathBuf,
        ancestor: PathBuf,
    },
}

/// Resolves `path` as the kernel would, component by component, following symlinks (also a
/// dangling one: its target is where the object will be created). A relative path is taken
/// from the current directory.
pub(super) fn resolve(path: &Path) -> std::io::Result<Resolved> {
    let mut queue: VecDeque<OsString> = VecDeque::new();
    let mut base = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir()?.canonicalize()?
    };
    push_front(&mut queue, path);
    let mut hops = 0;
    while let Some(part) = queue.pop_front() {
        if part == "/" {
            base = PathBuf::from("/");
            continue;
        }
        if part == "." {
            continue;
        }
        if part == ".." {
            // `base` is canonical, so its parent is the real parent.
            if let Some(parent) = base.parent() {
                base = parent.to_path_buf();
            }
            continue;
        }
        let candidate = base.join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(std::io::Error::other("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&candidate)?;
                push_front(&mut queue, &target);
            }
            Ok(_) => base = candidate,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut would_be = candidate;
                for rest in queue {
                    if rest == ".." {
                        would_be.pop();
                    } else if rest != "." && rest != "/" {
                        would_be.push(rest);
                    }
                }
                return Ok(Resolved::Missing {
                    would_be,
                    ancestor: base,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Resolved::Exists(base))
}

/// Puts the components of `path` at the front of `queue` (`/` first for an absolute path).
pub(super) fn push_front(queue: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .map(|c| match c {
            Component::RootDir | Component::Prefix(_) => OsString::from("/"),
            Component::CurDir => OsString::from("."),
            Component::ParentDir => OsString::from(".."),
            Component::Normal(n) => n.to_owned(),
        })
        .collect();
    for part in parts.into_iter().rev() {
        queue.push_front(part);
    }
}

/// The nearest ancestor of `path` that exists, canonical (`/` at worst).
pub(super) fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find_map(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_else(|| PathBuf::from("/"))
}
