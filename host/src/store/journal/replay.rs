//! Replay: the journal files of processes that are gone, read back as executions to store.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{dir_of, make_private, open_file, SEGMENT_BYTES, SUFFIX};
use crate::secrets::names::ActionRef;
use crate::store::audit::{Batch, Door, ExecutionRecord, Outcome, Request, RunState};
use crate::store::Timestamp;

/// One journal line as read back.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Entered(
        String,
        String,
        String,
        String,
        Vec<(String, String, String, u64)>,
    ),
    Delivered(String, String, String, String, String, String),
}

/// Journal files left by processes that are gone, locked by this one until [`Orphans::done`].
pub(crate) struct Orphans {
    files: Vec<(PathBuf, File)>,
    /// Their executions, `started`, each with every request journalled.
    pub(crate) batch: Batch,
}

impl Orphans {
    /// Removes the files once their executions are stored.
    pub(crate) fn done(self) {
        for (path, _file) in self.files {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot remove the audit journal {}: {e}", path.display());
            }
        }
    }
}

/// Reads the journal files of `db` that no live process holds (see the module docs); `None`
/// when there is none. A line that does not parse (cut by a full disk, edited by hand) is
/// skipped and named by file and line number.
///
/// Only files this host's user could have written are trusted: in a directory of ours (never
/// through a symbolic link), a regular file (a FIFO or device is never read: it could block
/// every opening of the store) owned by this user, readable and writable by it alone, with no
/// other link; anything else is named in a warning and left alone. A directory found open to
/// other users is made 0700 again and named (files planted in it meanwhile fail the checks).
pub(crate) fn orphans(db: &Path) -> Option<Orphans> {
    let dir = dir_of(db);
    // Only a directory of ours, never through a symbolic link (the next journal line names
    // such a directory as unusable).
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return None;
    }
    match make_private(&dir, &meta) {
        Ok(false) => {}
        Ok(true) => tracing::warn!(
            "the audit journal directory {} was open to other users: made 0700",
            dir.display()
        ),
        Err(e) => tracing::warn!(
            "cannot make the audit journal directory {} 0700: {e}",
            dir.display()
        ),
    }
    let entries = std::fs::read_dir(&dir).ok()?;
    let mut files = Vec::new();
    let mut executions: HashMap<String, ExecutionRecord> = HashMap::new();
    let mut order = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let journal = name.ends_with(SUFFIX);
        if !journal && !name.ends_with(".new") {
            continue;
        }
        // A file being created is locked a moment after it appears: one is taken only when
        // its creator is surely gone.
        if !journal && !stale(&entry) {
            continue;
        }
        // Never through a symbolic link, never blocking (a FIFO).
        let Ok(file) = open_file(&path, false, true) else {
            continue;
        };
        if let Err(why) = trusted(&file) {
            tracing::warn!(
                "audit journal {}: {why}; not replayed, left alone",
                path.display()
            );
            continue;
        }
        // Held by a live process: not an orphan.
        if file.try_lock().is_err() {
            continue;
        }
        if journal {
            read_lines(&path, &file, &mut executions, &mut order);
        }
        files.push((path, file));
    }
    if files.is_empty() {
        return None;
    }
    let batch = Batch {
        executions: order
            .into_iter()
            .filter_map(|id| executions.remove(&id))
            .collect(),
    };
    Some(Orphans { files, batch })
}

/// Whether `file` is one this host's user wrote (see [`orphans`]); else why not.
fn trusted(file: &File) -> Result<(), &'static str> {
    let meta = file.metadata().map_err(|_| "cannot be examined")?;
    if !meta.file_type().is_file() {
        Err("not a regular file")
    } else if meta.uid() != rustix::process::geteuid().as_raw() {
        Err("owned by another user")
    } else if meta.mode() & 0o077 != 0 {
        Err("open to other users (journal files are 0600)")
    } else if meta.nlink() != 1 {
        Err("it has other links")
    } else if meta.len() > MAX_FILE_BYTES {
        Err("larger than a journal file grows")
    } else {
        Ok(())
    }
}

/// The largest journal file replay reads: 64 segments' worth (a host retires its file at the
/// first line past [`SEGMENT_BYTES`]).
const MAX_FILE_BYTES: u64 = 64 * SEGMENT_BYTES;

/// How old a file being created (`.new`) must be to be taken for its creator's leftover.
const STALE: std::time::Duration = std::time::Duration::from_secs(60);

fn stale(entry: &std::fs::DirEntry) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE)
}

fn read_lines(
    path: &Path,
    file: &File,
    executions: &mut HashMap<String, ExecutionRecord>,
    order: &mut Vec<String>,
) {
    let bad = |number: usize, what: &str| {
        tracing::warn!(
            "audit journal {} line {number}: {what}; the line is skipped",
            path.display()
        );
    };
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let Ok(line) = line else {
            bad(number, "not UTF-8 text");
            continue;
        };
        let (id, action, started, requests) = match serde_json::from_str::<Line>(&line) {
            Ok(Line::Entered(kind, id, action, started, requests)) if kind == "e" => {
                (id, action, started, requests)
            }
            Ok(Line::Delivered(kind, id, action, started, secret_ref, door)) if kind == "d" => (
                id,
                action,
                started,
                vec![(secret_ref, door, "delivered".to_owned(), 1)],
            ),
            _ => {
                bad(number, "not a journal line");
                continue;
            }
        };
        let (Ok(action_ref), Ok(started)) = (ActionRef::new(&action), started.parse::<Timestamp>())
        else {
            bad(number, "its action ref or time does not parse");
            continue;
        };
        let mut parsed = Vec::with_capacity(requests.len());
        for (secret_ref, door, outcome, count) in requests {
            let (Some(door), Some(outcome)) = (parse_door(&door), parse_outcome(&outcome)) else {
                bad(number, "a door or outcome is unknown");
                continue;
            };
            parsed.push(Request {
                secret_ref,
                door,
                outcome,
                // The trail's counts are SQL bigints: a count past that (never written by
                // a host, whose counts are bounded by its request budget) is clamped.
                count: count.min(i64::MAX.unsigned_abs()),
            });
        }
        if parsed.is_empty() {
            continue;
        }
        let record = executions.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            ExecutionRecord {
                execution_id: id,
                action_ref,
                started,
                ended: None,
                state: RunState::Started,
                requests: Vec::new(),
            }
        });
        for request in parsed {
            // An entry's requests and each journalled delivery are recorded once.
            if !record.requests.iter().any(|r| {
                r.secret_ref == request.secret_ref
                    && r.door == request.door
                    && r.outcome == request.outcome
            }) {
                record.requests.push(request);
            }
        }
    }
}

fn parse_door(text: &str) -> Option<Door> {
    [Door::Env, Door::GetSecret, Door::WasiConfig]
        .into_iter()
        .find(|d| d.as_str() == text)
}

fn parse_outcome(text: &str) -> Option<Outcome> {
    [
        Outcome::Delivered,
        Outcome::NotFound,
        Outcome::AccessDenied,
        Outcome::InvalidName,
        Outcome::Unavailable,
    ]
    .into_iter()
    .find(|o| o.as_str() == text)
}
