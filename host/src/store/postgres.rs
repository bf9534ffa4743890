//! PostgreSQL backend (production): tables in a schema of their own (`database.schema`,
//! default `attune`), migrations from `host/migrations/postgres`.

use std::str::FromStr;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, Row};

use super::{redact_url, Error, NewSecret, RawRow, Replace, Result, Rotation, SecretRow, Written};
use crate::audit;
use crate::names::{ActionRef, Owner, SecretName};

const COLUMNS: &str = "owner_type, owner, name, encrypted, encryption_key_hash, value, \
     to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created, \
     to_char(updated AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS updated";

/// Channel of the change notifications sent by migration `0003` (payload: the schema).
pub(super) const NOTIFY_CHANNEL: &str = "attune_secrets";

#[derive(Clone)]
pub(super) struct PgStore {
    pool: PgPool,
    schema: String,
}

impl PgStore {
    pub(super) async fn open(url: &str, schema: &str, max_connections: u32) -> Result<Self> {
        let open_err = |source| Error::Open {
            url: redact_url(url),
            source,
        };
        if !valid_schema(schema) {
            return Err(Error::BadSchema(schema.escape_default().to_string()));
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(open_err)?
            .options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .map_err(open_err)?;
        // Hosts started at once on a fresh schema take turns (bad-inputs N27): sqlx's migrator
        // locks only around the migrations, not `CREATE SCHEMA`, which fails with a unique
        // violation when two sessions race. A transaction-scoped advisory lock, keyed by the
        // schema, on a connection of its own (the pool may have one connection only) covers
        // both; ending the transaction (or losing the connection) releases it.
        let mut lock_conn = sqlx::PgConnection::connect_with(&options)
            .await
            .map_err(open_err)?;
        let mut lock = lock_conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(schema))
            .execute(&mut *lock)
            .await?;
        // The schema name is checked above ([a-z_][a-z0-9_]*), so it can be spliced in.
        pool.execute(format!("CREATE SCHEMA IF NOT EXISTS {schema}").as_str())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        lock.commit().await?;
        let _ = lock_conn.close().await;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
        })
    }

    pub(super) fn schema(&self) -> &str {
        &self.schema
    }

    /// Empties `cache` on every change to this schema's `secrets` table (migration `0003`
    /// sends `NOTIFY attune_secrets, '<schema>'`). The cache serves entries only while the
    /// listener is connected; a lost connection marks it not live (and empties it) until
    /// `LISTEN` is re-established, and for good when this task is cancelled. The listener
    /// holds one connection of the pool (which [`super::Store::open_with`] enlarges by one).
    /// Runs until aborted.
    pub(super) async fn invalidate_on_notify(self, cache: std::sync::Weak<super::cache::RowCache>) {
        use sqlx::postgres::PgListener;
        // Tells the cache whether notifications arrive. Dropped with this task (the store
        // dropped, or the tokio runtime that ran it shut down), it marks the cache not live
        // for good: nothing would tell it about changes any more.
        struct Live(std::sync::Weak<super::cache::RowCache>);
        impl Live {
            /// `false` once the cache is gone (the task can end).
            fn set(&self, live: bool) -> bool {
                self.0.upgrade().map(|cache| cache.set_live(live)).is_some()
            }
        }
        impl Drop for Live {
            fn drop(&mut self) {
                self.set(false);
            }
        }
        let live = Live(cache.clone());
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(NOTIFY_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            }
            .await;
            match listener {
                Ok(mut listener) => {
                    if !live.set(true) {
                        return;
                    }
                    backoff = std::time::Duration::from_millis(100);
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(note)) => {
                                if note.payload() == self.schema {
                                    match cache.upgrade() {
                                        Some(cache) => cache.invalidate(),
                                        None => return,
                                    }
                                }
                            }
                            Ok(None) => {
                                tracing::warn!("secret cache: PostgreSQL listener connection lost; reconnecting");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "secret cache: PostgreSQL listener failed: {e}; reconnecting"
                                );
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("secret cache: cannot LISTEN on PostgreSQL: {e}"),
            }
            if !live.set(false) {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
    }

    pub(super) async fn put(&self, s: &NewSecret, replace: Replace<'_>) -> Result<Written> {
        let mut conn = self.pool.acquire().await?;
        put_on(&mut conn, s, replace).await
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
        Ok(written)
    }
}

/// The advisory lock key of `schema`'s creation and migration: the first 8 bytes of
/// SHA-256 of a fixed prefix and the schema name (distinct from sqlx's migration lock, which
/// is keyed by the database name).
fn lock_key(schema: &str) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("attune-wasm store schema {schema}"));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Writes one secret. An existing row is replaced only as `replace` allows, in the same
/// statement (bad-inputs N15); a refused write reads the stored row's key hash for the error.
async fn put_on(
    conn: &mut sqlx::PgConnection,
    s: &NewSecret,
    replace: Replace<'_>,
) -> Result<Written> {
    let (writer_hash, any) = replace.binds();
    // One statement, atomic under concurrent writers; `xmax = 0` is true for an insert. No
    // row comes back when the replacement is refused (the conflicting row stays locked
    // until the transaction ends, so the check cannot race another writer).
    let row = sqlx::query(
        "INSERT INTO secrets (ref, owner_type, owner, owner_pack, name, encrypted, \
                 encryption_key_hash, value) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (owner_type, owner, name) DO UPDATE SET \
                 encrypted = excluded.encrypted, \
                 encryption_key_hash = excluded.encryption_key_hash, \
                 value = excluded.value, updated = now() \
             WHERE $10::boolean OR NOT secrets.encrypted \
                OR lower(secrets.encryption_key_hash) = lower(excluded.encryption_key_hash) \
                OR lower(secrets.encryption_key_hash) = $9::text \
             RETURNING (xmax = 0) AS fresh",
    )
    .bind(s.owner.secret_ref(&s.name))
    .bind(s.owner.owner_type().as_str())
    .bind(s.owner.owner_ref())
    .bind(super::owner_pack(&s.owner))
    .bind(s.name.as_str())
    .bind(s.encrypted)
    .bind(s.key_hash.as_deref())
    .bind(s.value.expose_secret())
    .bind(writer_hash.as_deref())
    .bind(any)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        let stored = sqlx::query(
            "SELECT encryption_key_hash, value FROM secrets \
             WHERE owner_type = $1 AND owner = $2 AND name = $3",
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
    Ok(if row.try_get::<bool, _>("fresh")? {
        Written::Created
    } else {
        Written::Updated
    })
}

impl PgStore {
    /// Replaces ciphertexts in one transaction, each only if the row still holds the value it
    /// was read with (compare-and-swap), and writes the store's ciphertext floor record in the
    /// same transaction; any miss rolls everything back.
    pub(super) async fn replace_values(&self, rotations: &[Rotation], floor: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in rotations {
            let done = sqlx::query(
                "UPDATE secrets SET value = $1, encryption_key_hash = $2, updated = now() \
                 WHERE owner_type = $3 AND owner = $4 AND name = $5 AND value = $6",
            )
            .bind(r.new_value.expose_secret())
            .bind(&r.new_key_hash)
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
            "INSERT INTO store_meta (name, value) VALUES ($1, $2) \
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
            sqlx::query_scalar("SELECT value FROM store_meta WHERE name = $1")
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
            let mut upsert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO audit_execution (execution_id, action_ref, started, ended, state) ",
            );
            upsert.push_values(chunk, |mut row, e| {
                row.push_bind(&e.execution_id)
                    .push_bind(&e.action_ref)
                    .push_bind(&e.started)
                    .push_unseparated("::timestamptz")
                    .push_bind(e.ended.as_deref())
                    .push_unseparated("::timestamptz")
                    .push_bind(e.state.as_str());
            });
            upsert.push(
                " ON CONFLICT (execution_id) DO UPDATE SET ended = excluded.ended, \
                 state = excluded.state",
            );
            upsert.build().persistent(false).execute(&mut *tx).await?;
        }
        for chunk in batch.records.chunks(super::AUDIT_ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO audit (at, execution_id, action_ref, secret_ref, door, outcome, count) ",
            );
            insert.push_values(chunk, |mut row, r| {
                row.push_bind(&r.at)
                    .push_unseparated("::timestamptz")
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
            "SELECT to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS at, a.execution_id, a.action_ref, a.secret_ref, a.door, \
                    a.outcome, a.count, e.state \
             FROM audit a LEFT JOIN audit_execution e ON e.execution_id = a.execution_id \
             WHERE ($1::text IS NULL OR a.action_ref = $1) \
               AND ($2::timestamptz IS NULL OR a.at >= $2::timestamptz) \
             ORDER BY a.at DESC, a.id DESC LIMIT $3",
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
            "SELECT {COLUMNS} FROM secrets WHERE owner_type = $1 AND owner = $2 AND name = $3"
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
                    "SELECT {COLUMNS} FROM secrets WHERE owner_type = $1 AND owner = $2 {order}"
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
            sqlx::query("DELETE FROM secrets WHERE owner_type = $1 AND owner = $2 AND name = $3")
                .bind(owner.owner_type().as_str())
                .bind(owner.owner_ref())
                .bind(name.as_str())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn visible_to(&self, action: &ActionRef) -> Result<Vec<SecretRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM secrets WHERE owner_type = 'system' \
               OR (owner_type = 'pack' AND owner = $1) \
               OR (owner_type = 'action' AND owner = $2)"
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
fn identity(r: &sqlx::postgres::PgRow) -> Result<(String, String, String)> {
    Ok((
        r.try_get("owner_type")?,
        r.try_get("owner")?,
        r.try_get("name")?,
    ))
}

/// Schema names are limited to `[a-z_][a-z0-9_]{0,62}` so they never need quoting.
fn valid_schema(schema: &str) -> bool {
    let mut bytes = schema.bytes();
    schema.len() <= 63
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn decode(r: &sqlx::postgres::PgRow) -> Result<SecretRow> {
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
