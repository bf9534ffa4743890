//! SQLite backend (embedded default): one file, WAL journal, migrations from
//! `host/migrations/sqlite`. What differs from PostgreSQL: opening (the directory and files
//! are checked, a file lock serialises creating and migrating), times as text, a WAL
//! checkpoint after every write of secrets, and the audit trail's durability (see [`open`]).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::sql::{Dialect, SqlBackend};
use super::{files, journal, redact_url, Error, OpenMode, Result};

/// The SQLite dialect of the store's statements; the database file it is on.
pub(super) struct SqliteDialect {
    path: PathBuf,
}

super::sql::sql_backend!(SqliteDialect);

impl Dialect for SqliteDialect {
    type Db = sqlx::Sqlite;
    const KIND: &'static str = "sqlite";
    // The store's time format (see `super::Timestamp`), from SQLite's clock; stable within a
    // statement, so `created` and `updated` of an insert are equal.
    const NOW: &'static str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    const INSERTED: &'static str = "created = updated";
    const TIME_PARAM: &'static str = "";
    const JSON_ROWS: &'static str = "json_each($1) AS j";
    const TEXT_CAST: &'static str = "";

    fn time_text(column: &str) -> String {
        column.to_owned()
    }

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn database_file(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn after_write<'a>(
        &'a self,
        pool: &'a SqlitePool,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        self.checkpoint(pool)
    }
}

/// Opens (or creates) the database at `url`: the directory and files are checked
/// ([`files`]), and creating, opening and migrating happen under the store's file lock.
///
/// Durability: secrets are written with SQLite's default `synchronous = FULL` (each commit
/// waits for the WAL to reach the disk). The audit trail has a connection of its own with
/// `synchronous = NORMAL`: in WAL mode a commit is then in the WAL file, written, when it
/// returns, so it survives the host being killed (`kill -9`, a crash: the records entered
/// before a guest starts are there); only a crash of the machine or a power loss can lose the
/// last commits before the next checkpoint syncs the WAL. That saves a disk flush per
/// execution (issue 13).
pub(super) async fn open(url: &str, mode: OpenMode) -> Result<SqlBackend<SqliteDialect>> {
    let open_err = |cause| Error::Open {
        url: redact_url(url),
        cause,
    };
    let options = SqliteConnectOptions::from_str(url).map_err(open_err)?;
    let path = options.get_filename().to_path_buf();
    if !path.exists() && mode == OpenMode::MustExist {
        return Err(Error::Missing {
            url: redact_url(url),
        });
    }
    let dir = files::dir_of(&path);
    if !dir.exists() {
        create_private_dir(&dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
    }
    files::check_dir(&dir)?;
    // Hosts started at once on a fresh directory take turns: one creates and migrates,
    // the others find it done (bad-inputs N27).
    let _lock = files::CreateLock::acquire(&path).await?;
    files::check_files(&path)?;
    if !path.exists() {
        create_private_file(&path).map_err(|e| open_err(sqlx::Error::Io(e)))?;
    }
    let options = options
        .create_if_missing(false)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10))
        // Freed pages and cells are zeroed on every connection: a deleted or overwritten
        // value leaves no trace in the database file (bad-inputs N28).
        .pragma("secure_delete", "ON")
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options.clone())
        .await
        .map_err(open_err)?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    // Opened at the first audit write (a command that keeps no trail never opens it); a local
    // file's connection does not go stale, so it is not pinged before each write.
    let audit = SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_lazy_with(options.synchronous(SqliteSynchronous::Normal));
    let backend = SqlBackend::new(pool, audit, SqliteDialect { path });
    replay_journal(&backend).await;
    Ok(backend)
}

/// Stores what the audit journals of processes that are gone hold (a host killed while its
/// guests ran), then removes them (see [`super::journal`]). A failure is reported and the
/// journals stay for the next opening; the store opens either way.
async fn replay_journal(backend: &SqlBackend<SqliteDialect>) {
    let Some(orphans) = journal::orphans(&backend.dialect().path) else {
        return;
    };
    if !orphans.batch.executions.is_empty() {
        if let Err(e) = backend.replay_audit(&orphans.batch).await {
            tracing::warn!(
                "the audit journal of {} could not be stored ({e}); it is kept for the next \
                 opening",
                backend.dialect().path.display()
            );
            return;
        }
        let count = orphans.batch.executions.len();
        tracing::info!(
            "{count} execution{} of a host that stopped mid-run stored from the audit journal",
            if count == 1 { "" } else { "s" }
        );
    }
    orphans.done();
}

impl SqliteDialect {
    /// Ends every write path (set, delete, import, rotate): copies the WAL back into the
    /// (secure-delete) database file and truncates it, so that an overwritten or deleted
    /// value (a plain value, or a ciphertext under a retired key) does not linger in the WAL
    /// (bad-inputs N28). A checkpoint that cannot finish (a long reader) is reported.
    async fn checkpoint(&self, pool: &SqlitePool) {
        match sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(pool)
            .await
        {
            // Columns: busy (1 when a reader kept the checkpoint from finishing), WAL frames,
            // frames copied.
            Ok(row) if row.try_get::<i64, _>(0).unwrap_or(1) == 0 => {}
            Ok(_) => tracing::warn!(
                "WAL checkpoint of {} could not finish (another connection is reading); \
                 replaced values stay in its -wal file until the next write",
                self.path.display()
            ),
            Err(e) => tracing::warn!(
                "WAL checkpoint of {} failed: {e}; replaced values stay in its -wal file until \
                 the next write",
                self.path.display()
            ),
        }
    }
}

/// Creates the directory of the database (and its parents), readable by the owner only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates the database file readable by the owner only: the file holds ciphertext, and
/// plaintext for `--plain` secrets. Called under the store's lock.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
