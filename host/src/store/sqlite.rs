//! SQLite backend (embedded default): one file, WAL journal, migrations from
//! `host/migrations/sqlite`.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use super::{
    files, now, redact_url, Error, NewSecret, OpenMode, RawRow, Replace, Result, Rotation,
    SecretRow, Written,
};
use crate::audit;
use crate::names::{ActionRef, Owner, SecretName};

const COLUMNS: &str =
    "owner_type, owner, name, encrypted, encryption_key_hash, value, created, updated";

#[derive(Clone)]
pub(super) struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (or creates) the database at `url`: the directory and files are checked
    /// ([`files`]), and creating, opening and migrating happen under the store's file lock.
    pub(super) async fn open(url: &str, mode: OpenMode) -> Result<Self> {
        let open_err = |source| Error::Open {
            url: redact_url(url),
            source,
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
            .connect_with(options)
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool, path })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) async fn put(&self, s: &NewSecret, replace: Replace<'_>) -> Result<Written> {
        let mut conn = self.pool.acquire().await?;
        let written = put_on(&mut conn, s, replace).await;
        drop(conn);
        self.checkpoint().await;
        written
    }

    /// Ends every write path (set, delete, import, rotate): copies the WAL back into the
    /// (secure-delete) database file and truncates it, so that an overwritten or deleted
    /// value (a plain value, or a ciphertext under a retired key) does not linger in the WAL
    /// (bad-inputs N28). A checkpoint that cannot finish (a long reader) is reported.
    async fn checkpoint(&self) {
        match sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
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

    /// Writes every secret in one transaction: all or nothing.
    pub(super) async fn put_many(
        &self,
        secrets: &[NewSecret],
        replace: Replace<'_>,
    ) -> Result<Vec<Written>> {
        let mut tx = self.pool.begin().await?;
        let mut written = Vec::with_capacity(secrets.len());
        for s in secrets {
            written.push(put_on(&mut tx, s, replace).await?);
        }
        tx.commit().await?;
        self.checkpoint().await;
        Ok(written)
    }
}

/// Writes one secret. An existing row is replaced only as `replace` allows, in the same
/// statement (bad-inputs N15); a refused write reads the stored row's key hash for the error.
async fn put_on(
    conn: &mut sqlx::SqliteConnection,
    s: &NewSecret,
    replace: Replace<'_>,
) -> Result<Written> {
    let ts = now();
    let (writer_hash, any) = replace.binds();
    // One statement, atomic under concurrent writers: the row either is inserted or, when
    // the stored row is one this write may replace, its value columns are replaced.
    // `created` survives an update. No row comes back when the replacement is refused.
    let row = sqlx::query(
        "INSERT INTO secrets (ref, owner_type, owner, owner_pack, name, encrypted, \
                 encryption_key_hash, value, created, updated) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
             ON CONFLICT (owner_type, owner, name) DO UPDATE SET \
                 encrypted = excluded.encrypted, \
                 encryption_key_hash = excluded.encryption_key_hash, \
                 value = excluded.value, updated = excluded.updated \
             WHERE ?11 OR secrets.encrypted = 0 \
                OR lower(secrets.encryption_key_hash) = lower(excluded.encryption_key_hash) \
                OR lower(secrets.encryption_key_hash) = ?10 \
             RETURNING created = updated AS fresh",
    )
    .bind(s.owner.secret_ref(&s.name))
    .bind(s.owner.owner_type().as_str())
    .bind(s.owner.owner_ref())
    .bind(super::owner_pack(&s.owner))
    .bind(s.name.as_str())
    .bind(s.encrypted)
    .bind(s.key_hash.as_deref())
    .bind(s.value.expose_secret())
    .bind(&ts)
    .bind(writer_hash.as_deref())
    .bind(any)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        let stored = sqlx::query(
            "SELECT encryption_key_hash, value FROM secrets \
             WHERE owner_type = ?1 AND owner = ?2 AND name = ?3",
        )
        .bind(s.owner.owner_type().as_str())
        .bind(s.owner.owner_ref())
        .bind(s.name.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| {
            Ok::<_, sqlx::Error>((
                r.try_get::<Option<String>, _>(0)?,
                r.try_get::<String, _>(1)?,
            ))
        })
        .transpose()?;
        return Err(super::foreign_key(s, writer_hash.as_deref(), stored));
    };
    let fresh: bool = row.try_get("fresh")?;
    Ok(if fresh {
        Written::Created
    } else {
        Written::Updated
    })
}

impl SqliteStore {
    /// Replaces ciphertexts in one transaction, each only if the row still holds the value it
    /// was read with (compare-and-swap), and writes the store's ciphertext floor record in the
    /// same transaction; any miss rolls everything back.
    pub(super) async fn replace_values(&self, rotations: &[Rotation], floor: &str) -> Result<()> {
        let ts = now();
        let mut tx = self.pool.begin().await?;
        for r in rotations {
            let done = sqlx::query(
                "UPDATE secrets SET value = ?1, encryption_key_hash = ?2, updated = ?3 \
                 WHERE owner_type = ?4 AND owner = ?5 AND name = ?6 AND value = ?7",
            )
            .bind(r.new_value.expose_secret())
            .bind(&r.new_key_hash)
            .bind(&ts)
            .bind(r.owner.owner_type().as_str())
            .bind(r.owner.owner_ref())
            .bind(r.name.as_str())
            .bind(r.old_value.expose_secret())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(Error::Changed {
                    secret_ref: r.owner.secret_ref(&r.name),
                });
            }
        }
        sqlx::query(
            "INSERT INTO store_meta (name, value) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(super::FLOOR_RECORD)
        .bind(floor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // The ciphertexts under the retired key must not outlive the rotation in the WAL.
        self.checkpoint().await;
        Ok(())
    }

    /// The stored value of the store's ciphertext floor record, if any.
    pub(super) async fn floor_record(&self) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM store_meta WHERE name = ?1")
                .bind(super::FLOOR_RECORD)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Writes one batch of the audit trail (of one or many executions) in one transaction:
    /// executions upserted by id, records inserted.
    pub(super) async fn record_audit(&self, batch: &audit::Batch) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Multi-row statements of up to {AUDIT_ROWS_PER_INSERT} rows, not one per row; not kept
        // as prepared statements: the row count, and so the SQL, varies per batch.
        for chunk in batch.executions.chunks(super::AUDIT_ROWS_PER_INSERT) {
            let mut upsert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit_execution (execution_id, action_ref, started, ended, state) ",
            );
            upsert.push_values(chunk, |mut row, e| {
                row.push_bind(&e.execution_id)
                    .push_bind(&e.action_ref)
                    .push_bind(&e.started)
                    .push_bind(e.ended.as_deref())
                    .push_bind(e.state.as_str());
            });
            upsert.push(
                " ON CONFLICT (execution_id) DO UPDATE SET ended = excluded.ended, \
                 state = excluded.state",
            );
            upsert.build().persistent(false).execute(&mut *tx).await?;
        }
        for chunk in batch.records.chunks(super::AUDIT_ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit (at, execution_id, action_ref, secret_ref, door, outcome, count) ",
            );
            insert.push_values(chunk, |mut row, r| {
                row.push_bind(&r.at)
                    .push_bind(&r.execution_id)
                    .push_bind(&r.action_ref)
                    .push_bind(&r.secret_ref)
                    .push_bind(r.door.as_str())
                    .push_bind(r.outcome.as_str())
                    .push_bind(i64::try_from(r.count).unwrap_or(i64::MAX));
            });
            insert.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Audit records matching `filter`, newest first, with their execution's run state.
    pub(super) async fn list_audit(&self, filter: &audit::Filter) -> Result<Vec<audit::Listed>> {
        let sql = String::from(
            "SELECT a.at, a.execution_id, a.action_ref, a.secret_ref, a.door, \
                    a.outcome, a.count, e.state \
             FROM audit a LEFT JOIN audit_execution e ON e.execution_id = a.execution_id \
             WHERE (?1 IS NULL OR a.action_ref = ?1) AND (?2 IS NULL OR a.at >= ?2) \
             ORDER BY a.at DESC, a.id DESC LIMIT ?3",
        );
        let rows = sqlx::query(&sql)
            .bind(filter.action_ref.as_deref())
            .bind(filter.since.as_deref())
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                super::RawAudit {
                    at: r.try_get("at")?,
                    execution_id: r.try_get("execution_id")?,
                    action_ref: r.try_get("action_ref")?,
                    secret_ref: r.try_get("secret_ref")?,
                    door: r.try_get("door")?,
                    outcome: r.try_get("outcome")?,
                    count: r.try_get("count")?,
                    run: r.try_get("state")?,
                }
                .parse()
            })
            .collect()
    }

    pub(super) async fn get(&self, owner: &Owner, name: &SecretName) -> Result<Option<SecretRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM secrets WHERE owner_type = ?1 AND owner = ?2 AND name = ?3"
        );
        let row = sqlx::query(&sql)
            .bind(owner.owner_type().as_str())
            .bind(owner.owner_ref())
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decode(&r)).transpose()
    }

    pub(super) async fn list(&self, owner: Option<&Owner>) -> Result<Vec<SecretRow>> {
        let order = "ORDER BY CASE owner_type WHEN 'system' THEN 0 WHEN 'pack' THEN 1 ELSE 2 END, \
                     owner, name";
        let rows = match owner {
            None => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM secrets {order}"))
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(o) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM secrets WHERE owner_type = ?1 AND owner = ?2 {order}"
                ))
                .bind(o.owner_type().as_str())
                .bind(o.owner_ref())
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(super::decode_rows(&rows, decode))
    }

    pub(super) async fn delete(&self, owner: &Owner, name: &SecretName) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM secrets WHERE owner_type = ?1 AND owner = ?2 AND name = ?3")
                .bind(owner.owner_type().as_str())
                .bind(owner.owner_ref())
                .bind(name.as_str())
                .execute(&self.pool)
                .await?;
        self.checkpoint().await;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn visible_to(&self, action: &ActionRef) -> Result<Vec<SecretRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM secrets WHERE owner_type = 'system' \
               OR (owner_type = 'pack' AND owner = ?1) \
               OR (owner_type = 'action' AND owner = ?2)"
        );
        let rows = sqlx::query(&sql)
            .bind(action.pack().as_str())
            .bind(action.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(super::decode_visible(&rows, decode, identity))
    }
}

/// The owner and name columns of a row.
fn identity(r: &sqlx::sqlite::SqliteRow) -> Result<(String, String, String)> {
    Ok((
        r.try_get("owner_type")?,
        r.try_get("owner")?,
        r.try_get("name")?,
    ))
}

fn decode(r: &sqlx::sqlite::SqliteRow) -> Result<SecretRow> {
    RawRow {
        owner_type: r.try_get("owner_type")?,
        owner: r.try_get("owner")?,
        name: r.try_get("name")?,
        encrypted: r.try_get("encrypted")?,
        key_hash: r.try_get("encryption_key_hash")?,
        value: r.try_get("value")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    }
    .parse()
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
