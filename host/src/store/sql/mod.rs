//! The SQL backends' one implementation: every statement is written once, with `$N`
//! placeholders (which both SQLite and PostgreSQL accept), and the few places where the two
//! dialects differ (the database clock, how an upsert tells an insert, time columns as text,
//! what follows a write, change notifications) come from a [`Dialect`]. Opening (files and
//! locks, schemas and migrations) stays with each dialect ([`super::sqlite`],
//! [`super::postgres`]).
//!
//! ```text
//! statements  each statement's text, built once per dialect
//! audit       the audit trail: one row per execution, its records packed; listing
//! forward     the Backend trait for each dialect, over this one implementation
//! ```

use std::future::Future;
use std::path::Path;
use std::sync::Weak;

use secrecy::ExposeSecret;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use self::audit::{AuditStatements, PackedRow};
use self::statements::Statements;
use super::cache::RowCache;
use super::decode::{self, Identity, RawAudit, RawRow};
use super::error::foreign_key;
use super::{Error, KeyHash, NewSecret, Replace, Result, Rotation, SecretRow, Visible, Written};
use crate::secrets::names::{ActionRef, Owner, SecretName};
use crate::store::audit::{Batch, Filter, Listed};

mod audit;
mod forward;
mod statements;

pub(super) use forward::sql_backend;

/// Name of the ciphertext floor record in `store_meta`.
const FLOOR_RECORD: &str = "ciphertext_floor";

/// Where one SQL database differs from the other.
pub(super) trait Dialect: Send + Sync + 'static {
    /// The sqlx driver.
    type Db: Database + sqlx::database::HasStatementCache;
    /// Short name (`sqlite`, `postgres`).
    const KIND: &'static str;
    /// The database clock in the format of the `created` and `updated` columns.
    const NOW: &'static str;
    /// A `RETURNING` expression of the secrets upsert: true when it inserted.
    const INSERTED: &'static str;
    /// What follows a bound RFC 3339 text where a time column takes or compares it.
    const TIME_PARAM: &'static str;
    /// A `FROM` item over the elements of the JSON array bound as `$1`, each as `j.value`.
    const JSON_ROWS: &'static str;
    /// What follows a JSON expression stored in a text column.
    const TEXT_CAST: &'static str;

    /// A time `column` as RFC 3339 UTC text with milliseconds (`2026-11-29T08:22:01.407Z`).
    fn time_text(column: &str) -> String;

    /// Rows a statement changed.
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;

    /// Where the database is, for `Debug` (a path or a schema, never credentials).
    fn location(&self) -> String;

    /// The database file, if the database is one.
    fn database_file(&self) -> Option<&Path> {
        None
    }

    /// Runs after every write of secrets (set, delete, import, rotate).
    fn after_write<'a>(&'a self, pool: &'a Pool<Self::Db>) -> impl Future<Output = ()> + Send + 'a;

    /// See [`super::Backend::watch_changes`].
    fn watch_changes(
        &self,
        pool: &Pool<Self::Db>,
        cache: Weak<RowCache>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let _ = (pool, cache);
        None
    }
}

/// A store backend on an SQL database of dialect `D`.
pub(super) struct SqlBackend<D: Dialect> {
    pool: Pool<D::Db>,
    /// The audit trail's own connection (one): its writes never wait for a connection of
    /// `pool`, and a dialect may set it up for the trail (SQLite: `synchronous = NORMAL`).
    audit: Pool<D::Db>,
    dialect: D,
    sql: Statements,
    audit_sql: AuditStatements,
}

impl<D: Dialect> SqlBackend<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Option<&'q str>: Encode<'q, D::Db>,
    for<'q> bool: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'r> String: Decode<'r, D::Db> + Type<D::Db>,
    for<'a> &'a str: ColumnIndex<<D::Db as Database>::Row>,
{
    /// A backend on `pool` (opened and migrated by the dialect), writing the audit trail
    /// through `audit` (a pool of one connection to the same database).
    pub(super) fn new(pool: Pool<D::Db>, audit: Pool<D::Db>, dialect: D) -> Self {
        Self {
            pool,
            audit,
            dialect,
            sql: Statements::new::<D>(),
            audit_sql: AuditStatements::new::<D>(),
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        D::KIND
    }

    /// The dialect, with what it knows of the database (SQLite: its file).
    pub(super) fn dialect(&self) -> &D {
        &self.dialect
    }

    pub(super) fn location(&self) -> String {
        self.dialect.location()
    }

    pub(super) fn database_file(&self) -> Option<&Path> {
        self.dialect.database_file()
    }

    pub(super) fn watch_changes(
        &self,
        cache: Weak<RowCache>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.dialect.watch_changes(&self.pool, cache)
    }

    pub(super) async fn put(&self, secret: &NewSecret, replace: Replace<'_>) -> Result<Written> {
        let mut conn = self.pool.acquire().await?;
        let written = self.put_on(&mut conn, secret, replace).await;
        drop(conn);
        self.dialect.after_write(&self.pool).await;
        written
    }

    pub(super) async fn put_many(
        &self,
        secrets: &[NewSecret],
        replace: Replace<'_>,
    ) -> Result<Vec<Written>> {
        let mut tx = self.pool.begin().await?;
        let mut written = Vec::with_capacity(secrets.len());
        for secret in secrets {
            written.push(self.put_on(&mut tx, secret, replace).await?);
        }
        tx.commit().await?;
        self.dialect.after_write(&self.pool).await;
        Ok(written)
    }

    /// Writes one secret. An existing row is replaced only as `replace` allows, in the same
    /// statement (bad-inputs N15); a refused write reads the stored row's key hash for the
    /// error.
    async fn put_on(
        &self,
        conn: &mut <D::Db as Database>::Connection,
        s: &NewSecret,
        replace: Replace<'_>,
    ) -> Result<Written> {
        let (writer_hash, any) = replace.binds();
        let secret_ref = s.owner.secret_ref(&s.name);
        let owner_pack = decode::owner_pack(&s.owner);
        let row = sqlx::query(&self.sql.upsert)
            .bind(secret_ref.as_str())
            .bind(s.owner.owner_type().as_str())
            .bind(s.owner.owner_ref())
            .bind(owner_pack.as_str())
            .bind(s.name.as_str())
            .bind(s.value.is_encrypted())
            .bind(s.value.key_hash().map(KeyHash::as_str))
            .bind(s.value.text().expose_secret())
            .bind(writer_hash.as_deref())
            .bind(any)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = row {
            return Ok(if row.try_get::<bool, _>("fresh")? {
                Written::Created
            } else {
                Written::Updated
            });
        }
        let stored = sqlx::query(&self.sql.stored)
            .bind(s.owner.owner_type().as_str())
            .bind(s.owner.owner_ref())
            .bind(s.name.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("encryption_key_hash")?, r.try_get("value")?)))
            .transpose()?;
        Err(foreign_key(
            secret_ref,
            s.value.key_hash(),
            replace.writer(),
            stored,
        ))
    }

    pub(super) async fn replace_values(&self, rotations: &[Rotation], floor: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in rotations {
            let done = sqlx::query(&self.sql.rotate)
                .bind(r.owner.owner_type().as_str())
                .bind(r.owner.owner_ref())
                .bind(r.name.as_str())
                .bind(r.new_value.expose_secret())
                .bind(r.new_key_hash.as_str())
                .bind(r.old_value.expose_secret())
                .execute(&mut *tx)
                .await?;
            if D::rows_affected(&done) != 1 {
                return Err(Error::Changed {
                    secret_ref: r.owner.secret_ref(&r.name),
                });
            }
        }
        sqlx::query(&self.sql.floor_set)
            .bind(FLOOR_RECORD)
            .bind(floor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // The ciphertexts under the retired key must not outlive the rotation.
        self.dialect.after_write(&self.pool).await;
        Ok(())
    }

    pub(super) async fn delete(&self, owner: &Owner, name: &SecretName) -> Result<bool> {
        let done = sqlx::query(&self.sql.delete)
            .bind(owner.owner_type().as_str())
            .bind(owner.owner_ref())
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        self.dialect.after_write(&self.pool).await;
        Ok(D::rows_affected(&done) > 0)
    }

    pub(super) async fn floor_record(&self) -> Result<Option<String>> {
        let row = sqlx::query(&self.sql.floor_get)
            .bind(FLOOR_RECORD)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    pub(super) async fn get(&self, owner: &Owner, name: &SecretName) -> Result<Option<SecretRow>> {
        let row = sqlx::query(&self.sql.get)
            .bind(owner.owner_type().as_str())
            .bind(owner.owner_ref())
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| raw_row(&r).and_then(RawRow::parse)).transpose()
    }

    pub(super) async fn list(&self, owner: Option<&Owner>) -> Result<Vec<Visible>> {
        let rows = match owner {
            None => {
                sqlx::query(&self.sql.list_all)
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(o) => {
                sqlx::query(&self.sql.list_owner)
                    .bind(o.owner_type().as_str())
                    .bind(o.owner_ref())
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows
            .iter()
            .filter_map(|r| decode::visible(raw_row(r), || identity(r)))
            .collect())
    }

    pub(super) async fn unnamed(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(&self.sql.list_all)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                match identity(r).and_then(|(t, o, n)| decode::parse_identity(&t, &o, &n)) {
                    Ok(_) => None,
                    Err(Error::Corrupt { secret_ref, reason }) => Some((secret_ref, reason)),
                    Err(e) => Some((
                        "(a row whose owner or name cannot be read)".to_owned(),
                        e.to_string(),
                    )),
                }
            })
            .collect())
    }

    pub(super) async fn visible_to(&self, action: &ActionRef) -> Result<Vec<Visible>> {
        let pack = action.pack();
        let rows = sqlx::query(&self.sql.visible)
            .bind(pack.as_str())
            .bind(action.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| decode::visible(raw_row(r), || identity(r)))
            .collect())
    }

    /// Stores executions replayed from the audit journal (see [`AuditStatements::replay`]).
    pub(super) async fn replay_audit(&self, batch: &Batch) -> Result<()> {
        let packed = audit::pack(batch);
        sqlx::query(&self.audit_sql.replay)
            .bind(packed.as_str())
            .execute(&self.audit)
            .await?;
        Ok(())
    }

    /// Writes one batch of the audit trail (of one or many executions) in one statement,
    /// on the trail's own connection: each execution upserted by id with its requests.
    ///
    /// # Errors
    /// [`Error::Query`] when the statement fails; the connection is then closed, so that the
    /// writer's next attempt opens a new one rather than reusing one left broken.
    pub(super) async fn record_audit(&self, batch: &Batch) -> Result<()> {
        let packed = audit::pack(batch);
        let mut connection = self.audit.acquire().await?;
        let written = sqlx::query(&self.audit_sql.write)
            .bind(packed.as_str())
            .execute(&mut *connection)
            .await;
        if let Err(e) = written {
            if let Err(closing) = connection.close().await {
                tracing::debug!(
                    "closing the audit trail's connection after a failed write: {closing}"
                );
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Audit records matching `filter`, newest first, with their execution's run state: the
    /// packed records of executions and those of the former table, merged.
    pub(super) async fn list_audit(&self, filter: &Filter) -> Result<Vec<Listed>> {
        let since = filter.since.map(|t| t.to_string());
        let action = filter.action_ref.as_ref().map(ActionRef::as_str);
        let limit = i64::from(filter.limit);
        let records = sqlx::query(&self.audit_sql.list_records)
            .bind(action)
            .bind(since.as_deref())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let records = records.iter().map(|r| {
            RawAudit {
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
        });
        let executions = sqlx::query(&self.audit_sql.list_packed)
            .bind(action)
            .bind(since.as_deref())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut packed = Vec::new();
        for r in &executions {
            let row = (|| {
                Ok::<_, Error>(PackedRow {
                    at: r.try_get("at")?,
                    execution_id: r.try_get("execution_id")?,
                    action_ref: r.try_get("action_ref")?,
                    records: r.try_get("records")?,
                    state: r.try_get("state")?,
                })
            })()
            .and_then(PackedRow::unpack);
            match row {
                Ok(listed) => packed.extend(listed),
                Err(e) => packed.push(Err(e)),
            }
        }
        let (packed, records) = (skip_corrupt(packed)?, skip_corrupt(records)?);
        Ok(audit::merge(packed, records, filter.limit))
    }
}

/// The records that parse: one that does not (edited by hand) is named and left out; it never
/// hides the others. Other errors are returned.
fn skip_corrupt(listed: impl IntoIterator<Item = Result<Listed>>) -> Result<Vec<Listed>> {
    listed
        .into_iter()
        .filter_map(|listed| match listed {
            Ok(listed) => Some(Ok(listed)),
            Err(
                e @ (Error::Corrupt { .. }
                | Error::Query(sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_))),
            ) => {
                tracing::warn!("skipping an audit record: {e}");
                None
            }
            Err(e) => Some(Err(e)),
        })
        .collect()
}

/// The columns of a `secrets` row.
fn raw_row<R: Row>(r: &R) -> Result<RawRow>
where
    for<'q> bool: Decode<'q, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(RawRow {
        owner_type: r.try_get("owner_type")?,
        owner: r.try_get("owner")?,
        name: r.try_get("name")?,
        encrypted: r.try_get("encrypted")?,
        key_hash: r.try_get("encryption_key_hash")?,
        value: r.try_get("value")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

/// The owner and name columns of a `secrets` row.
fn identity<R: Row>(r: &R) -> Result<Identity>
where
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok((
        r.try_get("owner_type")?,
        r.try_get("owner")?,
        r.try_get("name")?,
    ))
}
