//! SQLite backend (embedded default): one file, WAL journal, migrations from
//! `host/migrations/sqlite`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use super::{
    now, redact_url, Error, NewSecret, OpenMode, RawRow, Result, Rotation, SecretRow, Written,
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
    pub(super) async fn open(url: &str, mode: OpenMode) -> Result<Self> {
        let open_err = |source| Error::Open {
            url: redact_url(url),
            source,
        };
        let options = SqliteConnectOptions::from_str(url).map_err(open_err)?;
        let path = options.get_filename().to_path_buf();
        let exists = path.exists();
        if !exists {
            match mode {
                OpenMode::MustExist => {
                    return Err(Error::Missing {
                        url: redact_url(url),
                    })
                }
                OpenMode::CreateIfMissing => {
                    create_private_file(&path).map_err(|e| Error::Open {
                        url: redact_url(url),
                        source: sqlx::Error::Io(e),
                    })?
                }
            }
        }
        let options = options
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            // Freed pages are zeroed: a deleted or overwritten plain value leaves no trace.
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

    pub(super) async fn put(&self, s: &NewSecret) -> Result<Written> {
        let written = put_on(&self.pool, s).await?;
        self.checkpoint().await;
        Ok(written)
    }

    /// Copies the WAL back into the (secure-delete) database file and truncates it, so that
    /// an overwritten or deleted plain value does not linger in the WAL.
    async fn checkpoint(&self) {
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::debug!("WAL checkpoint skipped: {e}");
        }
    }

    /// Writes every secret in one transaction: all or nothing.
    pub(super) async fn put_many(&self, secrets: &[NewSecret]) -> Result<Vec<Written>> {
        let mut tx = self.pool.begin().await?;
        let mut written = Vec::with_capacity(secrets.len());
        for s in secrets {
            written.push(put_on(&mut *tx, s).await?);
        }
        tx.commit().await?;
        self.checkpoint().await;
        Ok(written)
    }
}

async fn put_on<'c, E: sqlx::Executor<'c, Database = sqlx::Sqlite>>(
    executor: E,
    s: &NewSecret,
) -> Result<Written> {
    let ts = now();
    // One statement, atomic under concurrent writers: the row either is inserted or its
    // value columns are replaced. `created` survives an update.
    let row = sqlx::query(
        "INSERT INTO secrets (ref, owner_type, owner, owner_pack, name, encrypted, \
                 encryption_key_hash, value, created, updated) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
             ON CONFLICT (owner_type, owner, name) DO UPDATE SET \
                 encrypted = excluded.encrypted, \
                 encryption_key_hash = excluded.encryption_key_hash, \
                 value = excluded.value, updated = excluded.updated \
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
    .fetch_one(executor)
    .await?;
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
        Ok(super::decode_rows(&rows, decode))
    }
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

/// Creates the database file (and its directory) readable by the owner only: the file holds
/// ciphertext, and plaintext for `--plain` secrets.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
