//! The audit journal of a SQLite store: what the trail must hold before a guest may have a
//! secret, appended to a file of the host's own with one `write` (no thread hop, no database
//! commit on the execution's path), and stored in the database by the [`super::audit::Writer`]
//! in its batches soon after (issue 13; bad-inputs N31).
//!
//! Two kinds of line, JSON, one per `write`:
//!
//! ```text
//! ["e", execution_id, action_ref, started, [[secret_ref, door, outcome, count], …]]
//!     entered: the environment door's deliveries, before the guest starts
//! ["d", execution_id, action_ref, started, secret_ref, door]
//!     a delivery through `get-secret` or `wasi:config/store` of a secret not yet delivered to
//!     the execution through any door, before the guest has the value
//! ```
//!
//! Durability is the trail connection's (`synchronous = NORMAL`): a line is in the file when
//! `write` returns, so it survives the host being killed (`kill -9`, a crash); a power loss
//! can lose the last lines, as it can lose the last commits.
//!
//! Files: `<database>.audit/<pid>-<random>-<n>.journal` (directory 0700, files 0600, never through
//! a symbolic link), one per process, locked (`flock`) by it for as long as it lives. A line
//! is *settled* once its execution's end is committed; a file whose lines are all settled is
//! emptied (or removed, once a newer file has taken over at [`SEGMENT_BYTES`]), so the journal
//! stays small whatever the number of executions.
//!
//! Replay (`replay`: [`orphans`]): opening the store takes every journal file no live process
//! holds, stores its executions that the database does not have ended (`started`, with every
//! delivery journalled: none is lost, none overwrites an execution's complete record), and
//! removes it.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::audit::{Door, Error, ExecutionRecord};
use crate::secrets::names::ActionRef;
use crate::store::Timestamp;

mod replay;

pub(crate) use replay::orphans;

/// Size past which a journal file is retired and a new one takes the next lines: 1 MiB
/// (about 5,000 entries). The retired file is removed once all its lines are settled.
pub(crate) const SEGMENT_BYTES: u64 = 1024 * 1024;

/// Suffix of journal files; anything else in the directory is left alone.
const SUFFIX: &str = ".journal";

/// The execution a journalled delivery belongs to (the head of its lines).
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) execution_id: String,
    pub(crate) action_ref: ActionRef,
    pub(crate) started: Timestamp,
}

/// One journal file this process appends to.
struct Segment {
    sequence: u64,
    path: PathBuf,
    file: File,
    bytes: u64,
    /// Executions with a line here not yet settled.
    pending: usize,
}

#[derive(Default)]
struct State {
    /// Oldest first; the last one takes new lines.
    segments: VecDeque<Segment>,
    next: u64,
    /// Per unsettled execution, the segments holding its lines.
    pending: HashMap<String, Vec<u64>>,
}

/// The journal of one store in this process (see the module docs). Its file is created at
/// the first line.
pub(crate) struct Journal {
    dir: PathBuf,
    state: Mutex<State>,
}

/// The journal directory of the database file `db`: `<db>.audit`.
pub(crate) fn dir_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".audit");
    PathBuf::from(name)
}

fn failed(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::new(format!("{what} {}: {e}", path.display()))
}

/// Opens a file of the journal directory, never through a symbolic link; `nonblocking` for
/// a file found there (replay), so that a FIFO cannot block the opening.
fn open_file(path: &Path, create: bool, nonblocking: bool) -> std::io::Result<File> {
    let mut flags = rustix::fs::OFlags::NOFOLLOW;
    if nonblocking {
        flags |= rustix::fs::OFlags::NONBLOCK;
    }
    OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(create)
        .mode(0o600)
        .custom_flags(flags.bits().cast_signed())
        .open(path)
}

/// Creates the journal directory (0700) if missing; refuses one that is a symbolic link or
/// not ours, and makes one open to other users 0700 again (replay trusts only this user's
/// files in it).
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            ensure_dir_meta(dir, &std::fs::symlink_metadata(dir)?)
        }
        Err(e) => Err(e),
        Ok(meta) => ensure_dir_meta(dir, &meta),
    }
    .and_then(|()| {
        let meta = std::fs::symlink_metadata(dir)?;
        if meta.uid() == rustix::process::geteuid().as_raw() {
            Ok(())
        } else {
            Err(std::io::Error::other("it is not owned by this user"))
        }
    })
}

fn ensure_dir_meta(dir: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    if !meta.file_type().is_dir() {
        return Err(std::io::Error::other(
            "it is not a directory (a symbolic link is refused)",
        ));
    }
    make_private(dir, meta).map(|_| ())
}

/// Makes the journal directory `dir` (of metadata `meta`) 0700 again when it is open to other
/// users; `true` when it was.
fn make_private(dir: &Path, meta: &std::fs::Metadata) -> std::io::Result<bool> {
    if meta.permissions().mode() & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(true)
}

impl Journal {
    /// The journal of the SQLite database `db`; nothing is created before the first line.
    pub(crate) fn new(db: &Path) -> Self {
        Self {
            dir: dir_of(db),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic while appending; the bookkeeping stays valid
        // (at worst a file is kept longer than needed).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends that `execution` is entered with its requests so far (the environment door's
    /// deliveries), before its guest starts.
    ///
    /// # Errors
    /// [`Error`] naming the journal file when it cannot be created or written: the guest must
    /// not start.
    pub(crate) fn enter(&self, execution: &ExecutionRecord) -> Result<(), Error> {
        let requests: Vec<(&str, &str, &str, u64)> = execution
            .requests
            .iter()
            .map(|r| {
                (
                    r.secret_ref.as_str(),
                    r.door.as_str(),
                    r.outcome.as_str(),
                    r.count,
                )
            })
            .collect();
        let line = serde_json::to_string(&(
            "e",
            &execution.execution_id,
            execution.action_ref.as_str(),
            execution.started.to_string(),
            requests,
        ));
        self.append(&execution.execution_id, line)
    }

    /// Appends that `secret_ref` is delivered to `entry`'s execution through `door`, before
    /// the guest has the value.
    ///
    /// # Errors
    /// As [`Journal::enter`]: the value must not be delivered.
    pub(crate) fn deliver(&self, entry: &Entry, secret_ref: &str, door: Door) -> Result<(), Error> {
        let line = serde_json::to_string(&(
            "d",
            &entry.execution_id,
            entry.action_ref.as_str(),
            entry.started.to_string(),
            secret_ref,
            door.as_str(),
        ));
        self.append(&entry.execution_id, line)
    }

    fn append(&self, execution_id: &str, line: serde_json::Result<String>) -> Result<(), Error> {
        // Strings and numbers only: serializing them cannot fail.
        let mut line = line.map_err(|e| Error::new(format!("journal line: {e}")))?;
        line.push('\n');
        let mut state = self.state();
        if state
            .segments
            .back()
            .is_none_or(|s| s.bytes >= SEGMENT_BYTES)
        {
            let segment = self.new_segment(state.next)?;
            state.next += 1;
            state.segments.push_back(segment);
        }
        let State {
            segments, pending, ..
        } = &mut *state;
        let Some(segment) = segments.back_mut() else {
            // Pushed just above when there was none.
            return Err(Error::new("no journal file".to_owned()));
        };
        // One `write` of the whole line (`write_all` loops only on a short write: a full disk).
        if let Err(e) = segment.file.write_all(line.as_bytes()) {
            // A short write leaves part of the line: cut it off, so that the next line is a
            // line of its own; when that fails too, the next line goes to a new file.
            if segment.file.set_len(segment.bytes).is_err() {
                segment.bytes = segment.bytes.max(SEGMENT_BYTES);
            }
            return Err(failed(
                "cannot append to the audit journal",
                &segment.path,
                &e,
            ));
        }
        segment.bytes += line.len() as u64;
        let held = pending.entry(execution_id.to_owned()).or_default();
        if held.last() != Some(&segment.sequence) {
            held.push(segment.sequence);
            segment.pending += 1;
        }
        Ok(())
    }

    /// Creates and locks a new journal file. It is created under a name replay ignores and
    /// renamed once locked, so that no other process takes it for an orphan in between.
    fn new_segment(&self, sequence: u64) -> Result<Segment, Error> {
        ensure_dir(&self.dir)
            .map_err(|e| failed("cannot use the audit journal directory", &self.dir, &e))?;
        let stem = format!(
            "{}-{}-{sequence}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let temporary = self.dir.join(format!("{stem}.new"));
        let path = self.dir.join(format!("{stem}{SUFFIX}"));
        let file = open_file(&temporary, true, false)
            .and_then(|file| {
                file.try_lock()
                    .map_err(std::io::Error::other)
                    .map(|()| file)
            })
            .and_then(|file| std::fs::rename(&temporary, &path).map(|()| file))
            .map_err(|e| failed("cannot create the audit journal file", &temporary, &e))?;
        Ok(Segment {
            sequence,
            path,
            file,
            bytes: 0,
            pending: 0,
        })
    }

    /// Marks the lines of these executions settled (their end is committed): a file left
    /// with no unsettled line is emptied, or removed if a newer one takes the lines.
    pub(crate) fn settled<'a>(&self, execution_ids: impl IntoIterator<Item = &'a str>) {
        let mut state = self.state();
        let State {
            segments, pending, ..
        } = &mut *state;
        let mut touched = false;
        for id in execution_ids {
            for sequence in pending.remove(id).unwrap_or_default() {
                if let Some(s) = segments.iter_mut().find(|s| s.sequence == sequence) {
                    s.pending = s.pending.saturating_sub(1);
                    touched = true;
                }
            }
        }
        if !touched {
            return;
        }
        let newest = segments.back().map(|s| s.sequence);
        segments.retain_mut(|s| {
            if s.pending > 0 {
                return true;
            }
            if Some(s.sequence) == newest {
                if s.bytes > 0 {
                    match s.file.set_len(0) {
                        Ok(()) => s.bytes = 0,
                        Err(e) => tracing::warn!(
                            "cannot empty the audit journal {}: {e}",
                            s.path.display()
                        ),
                    }
                }
                return true;
            }
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!("cannot remove the audit journal {}: {e}", s.path.display());
            }
            false
        });
    }
}

impl Drop for Journal {
    /// Removes this process's files whose lines are all settled; the others stay for the
    /// next [`replay`].
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for s in &state.segments {
            if s.pending == 0 {
                let _ = std::fs::remove_file(&s.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::audit::{Outcome, Request, RunState};

    fn record(id: &str, state: RunState) -> ExecutionRecord {
        ExecutionRecord {
            execution_id: id.to_owned(),
            action_ref: ActionRef::new("mypack.deploy").unwrap(),
            started: Timestamp::now(),
            ended: None,
            state,
            requests: vec![Request {
                secret_ref: "mypack.api_key".to_owned(),
                door: Door::Env,
                outcome: Outcome::Delivered,
                count: 1,
            }],
        }
    }

    fn entry(id: &str) -> Entry {
        Entry {
            execution_id: id.to_owned(),
            action_ref: ActionRef::new("mypack.deploy").unwrap(),
            started: Timestamp::now(),
        }
    }

    fn files(db: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir_of(db))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    #[test]
    fn a_live_journal_is_not_taken_and_a_dead_one_is_replayed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("secrets.db");
        let journal = Journal::new(&db);
        assert!(files(&db).is_empty(), "nothing before the first line");
        journal.enter(&record("e1", RunState::Started)).unwrap();
        journal
            .deliver(&entry("e1"), "mypack.token", Door::GetSecret)
            .unwrap();
        journal
            .deliver(&entry("e2"), "mypack.token", Door::WasiConfig)
            .unwrap();
        // Held by this journal (flock on its own open file): not an orphan.
        assert!(orphans(&db).is_none());
        let mode = std::fs::metadata(dir_of(&db)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let file = &files(&db)[0];
        assert_eq!(
            std::fs::metadata(file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The process is gone with unsettled lines: the file stays and is replayed.
        drop(journal);
        let orphans = orphans(&db).unwrap();
        let e = &orphans.batch.executions;
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].execution_id, "e1");
        assert_eq!(e[0].state, RunState::Started);
        let doors: Vec<_> = e[0]
            .requests
            .iter()
            .map(|r| (r.secret_ref.as_str(), r.door))
            .collect();
        assert_eq!(
            doors,
            [
                ("mypack.api_key", Door::Env),
                ("mypack.token", Door::GetSecret)
            ]
        );
        assert_eq!(e[1].requests[0].door, Door::WasiConfig);
        assert_eq!(e[1].requests[0].outcome, Outcome::Delivered);
        orphans.done();
        assert!(files(&db).is_empty());
    }

    #[test]
    fn settled_lines_empty_the_file_and_retired_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("secrets.db");
        let journal = Journal::new(&db);
        journal.enter(&record("a", RunState::Started)).unwrap();
        let first = files(&db)[0].clone();
        assert!(std::fs::metadata(&first).unwrap().len() > 0);
        journal.settled(["a"]);
        assert_eq!(std::fs::metadata(&first).unwrap().len(), 0, "emptied");
        // Fill past a segment: a second file takes over; the first goes once settled.
        let mut n = 0;
        while journal.state().segments.len() < 2 {
            journal
                .enter(&record(&format!("x{n}"), RunState::Started))
                .unwrap();
            n += 1;
        }
        assert_eq!(files(&db).len(), 2);
        let ids: Vec<String> = (0..n).map(|i| format!("x{i}")).collect();
        journal.settled(ids.iter().take(n - 1).map(String::as_str));
        assert_eq!(files(&db).len(), 1, "the retired file is removed");
        assert_eq!(journal.state().pending.len(), 1);
        journal.settled([ids[n - 1].as_str()]);
        assert!(journal.state().pending.is_empty());
        drop(journal);
        assert!(files(&db).is_empty(), "a settled journal leaves nothing");
    }

    #[test]
    fn bad_lines_are_skipped_and_the_rest_replayed() {
        let (_dir, db) = db_with_journal_dir();
        let good = serde_json::to_string(&(
            "d",
            "ok",
            "mypack.deploy",
            Timestamp::now().to_string(),
            "mypack.k",
            "get-secret",
        ))
        .unwrap();
        let text = format!(
            "not json\n[\"d\",\"x\",\"bad ref!\",\"2026-01-01T00:00:00.000Z\",\"k\",\"env\"]\n\
             [\"d\",\"y\",\"mypack.deploy\",\"2026-01-01T00:00:00.000Z\",\"k\",\"door\"]\n{good}\n[\"d\",\"cut"
        );
        write_private(&dir_of(&db).join(format!("1-x-0{SUFFIX}")), &text);
        // Not ours to take: another suffix, and a file being created a moment ago.
        std::fs::write(dir_of(&db).join("notes.txt"), "keep").unwrap();
        std::fs::write(dir_of(&db).join("2-y-0.new"), "").unwrap();
        assert_eq!(replayed_ids(&db), ["ok"]);
        let left: Vec<String> = files(&db)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["2-y-0.new", "notes.txt"]);
    }

    /// A database path in a new temporary directory, with its journal directory made (0700) as
    /// a host makes it.
    fn db_with_journal_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("secrets.db");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir_of(&db))
            .unwrap();
        (dir, db)
    }

    /// The executions replayed from `db`'s journal, in order; the replayed files are removed.
    fn replayed_ids(db: &Path) -> Vec<String> {
        let orphans = orphans(db).unwrap();
        let ids = orphans
            .batch
            .executions
            .iter()
            .map(|e| e.execution_id.clone())
            .collect();
        orphans.done();
        ids
    }

    /// Writes `text` to a new file of mode 0600, as a host writes its journal.
    fn write_private(path: &Path, text: &str) {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn delivered_line(id: &str) -> String {
        let line = (
            "d",
            id,
            "mypack.deploy",
            "2026-01-01T00:00:00.000Z",
            "k",
            "env",
        );
        format!("{}\n", serde_json::to_string(&line).unwrap())
    }

    #[test]
    fn only_this_users_private_regular_files_are_replayed_and_a_fifo_never_blocks() {
        let (dir, db) = db_with_journal_dir();
        let journals = dir_of(&db);
        // Ours: replayed.
        write_private(
            &journals.join(format!("1-a-0{SUFFIX}")),
            &delivered_line("ours"),
        );
        // Readable by others: not written by a host.
        let open = journals.join(format!("2-b-0{SUFFIX}"));
        std::fs::write(&open, delivered_line("open")).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A second link to a file: not a journal file of a host.
        let linked = journals.join(format!("3-c-0{SUFFIX}"));
        write_private(&linked, &delivered_line("linked"));
        std::fs::hard_link(&linked, dir.path().join("elsewhere")).unwrap();
        // A FIFO: reading it would block every opening of the store.
        let fifo = journals.join(format!("4-d-0{SUFFIX}"));
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Another user's file (needs root to make).
        let theirs = journals.join(format!("5-e-0{SUFFIX}"));
        write_private(&theirs, &delivered_line("theirs"));
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        } else {
            std::fs::remove_file(&theirs).unwrap();
        }
        // A directory opened to others meanwhile is made private again.
        std::fs::set_permissions(&journals, std::fs::Permissions::from_mode(0o777)).unwrap();

        assert_eq!(replayed_ids(&db), ["ours"]);
        let mode = std::fs::metadata(&journals).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let mut left: Vec<String> = files(&db)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected = vec![
            format!("2-b-0{SUFFIX}"),
            format!("3-c-0{SUFFIX}"),
            format!("4-d-0{SUFFIX}"),
        ];
        if rustix::process::geteuid().is_root() {
            expected.push(format!("5-e-0{SUFFIX}"));
        }
        assert_eq!(left, expected, "what is not trusted is left alone");
    }

    #[test]
    fn a_count_past_sql_bigint_is_clamped() {
        let (_dir, db) = db_with_journal_dir();
        let line = serde_json::to_string(&(
            "e",
            "huge",
            "mypack.deploy",
            "2026-01-01T00:00:00.000Z",
            [("mypack.k", "env", "delivered", u64::MAX)],
        ))
        .unwrap();
        write_private(&dir_of(&db).join(format!("1-x-0{SUFFIX}")), &line);
        let orphans = orphans(&db).unwrap();
        let count = orphans.batch.executions[0].requests[0].count;
        assert_eq!(count, i64::MAX.unsigned_abs());
        orphans.done();
    }

    #[test]
    fn a_journal_directory_that_is_a_symbolic_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("secrets.db");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir_of(&db)).unwrap();
        let journal = Journal::new(&db);
        let err = journal.enter(&record("a", RunState::Started)).unwrap_err();
        assert!(err.to_string().contains("audit journal directory"), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        // Nor is a journal read (and removed) through it.
        std::fs::write(elsewhere.join(format!("1-x-0{SUFFIX}")), "").unwrap();
        assert!(orphans(&db).is_none());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);
    }
}
