//! The secret store: encrypted rows in SQLite (embedded default) behind one interface that a
//! PostgreSQL backend joins without touching callers (the backend is chosen by URL scheme).
//!
//! Rows hold what the seed's `attune.key` holds: owner type, owner ref, name, encrypted flag,
//! key hash, value (ciphertext, or the value itself for `--plain` secrets), created/updated.
//! The store never decrypts: it moves stored text only.

mod cache;
mod files;
mod postgres;
mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::names::{ActionRef, NameError, Owner, OwnerType, SecretName};

/// Audit records per `INSERT` statement (7 bound values each: 3,500 per statement, below
/// SQLite's 32,766 and PostgreSQL's 65,535).
const AUDIT_ROWS_PER_INSERT: usize = 500;

/// Largest secret value accepted on write, in bytes (64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Store failures. Messages name the database (password redacted) and the secret ref, never
/// a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or created.
    #[error("cannot open secret store {url}: {source}")]
    Open {
        /// Database URL with any password replaced by `***`.
        url: String,
        /// Underlying driver error.
        #[source]
        source: sqlx::Error,
    },
    /// The database does not exist (and was not to be created).
    #[error("no secret store at {url}")]
    Missing {
        /// Database URL with any password replaced by `***`.
        url: String,
    },
    /// The URL scheme is not one this build supports.
    #[error("unsupported database URL {url}: expected sqlite:PATH, sqlite://PATH or postgres://…")]
    UnsupportedUrl {
        /// Database URL with any password replaced by `***`.
        url: String,
    },
    /// The PostgreSQL schema name is not `[a-z_][a-z0-9_]*` (at most 63 bytes).
    #[error("invalid database schema name \"{0}\": use [a-z_][a-z0-9_]*, at most 63 bytes")]
    BadSchema(String),
    /// Applying migrations failed.
    #[error("migrating secret store failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("secret store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A row changed between reading and rewriting it (e.g. `secret set` during rotation).
    #[error(
        "secret {secret_ref} changed while it was being rewritten; nothing was changed, run again"
    )]
    Changed {
        /// Ref of the row.
        secret_ref: String,
    },
    /// A stored row does not parse (hand-edited or foreign data).
    #[error("stored secret {secret_ref} is malformed: {reason}")]
    Corrupt {
        /// Ref of the offending row.
        secret_ref: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A write would replace a row encrypted under another key (one this writer cannot
    /// decrypt); nothing was written (bad-inputs N15).
    #[error(
        "secret {secret_ref} is stored encrypted under another key (key hash {stored}), not \
         the key of this write (key hash {writing}); nothing was written: use the store's \
         key, or pass --replace-foreign-key to overwrite it"
    )]
    ForeignKey {
        /// Ref of the stored row.
        secret_ref: String,
        /// Key hash of the stored row (`none` when it has none).
        stored: String,
        /// Key hash of the write (`none` for a plain write by a host without a key).
        writing: String,
    },
    /// A file or directory of the SQLite store is not safe to use (owner or mode); nothing
    /// was opened (bad-inputs N29).
    #[error("refusing to use {path}: {reason}")]
    UnsafePath {
        /// The file or directory.
        path: String,
        /// What is wrong with it and how to fix it.
        reason: String,
    },
    /// The lock that serialises creating and migrating the store could not be taken.
    #[error("cannot lock secret store {path}: {source}")]
    Lock {
        /// The lock file (SQLite) or schema (PostgreSQL).
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is written for one secret.
pub struct NewSecret {
    /// Owner.
    pub owner: Owner,
    /// Name.
    pub name: SecretName,
    /// Whether `value` is ciphertext.
    pub encrypted: bool,
    /// Key hash for encrypted values.
    pub key_hash: Option<String>,
    /// Ciphertext (seed format) or, for plain secrets, the value.
    pub value: SecretString,
}

/// A ciphertext replacement for key rotation: applied only if the row still holds
/// `old_value`.
pub struct Rotation {
    /// Owner of the row.
    pub owner: Owner,
    /// Name of the row.
    pub name: SecretName,
    /// The stored text the new one was derived from.
    pub old_value: SecretString,
    /// The new stored text (seed-format ciphertext).
    pub new_value: SecretString,
    /// The new key hash.
    pub new_key_hash: String,
}

/// One stored secret.
///
/// `Debug` is written by hand and never shows `value` (which is plaintext for plain rows).
#[derive(Clone)]
pub struct SecretRow {
    /// Owner.
    pub owner: Owner,
    /// Name.
    pub name: SecretName,
    /// Whether `value` is ciphertext.
    pub encrypted: bool,
    /// Key hash stored with the row.
    pub key_hash: Option<String>,
    /// Stored text: ciphertext when `encrypted`, else the value.
    pub value: SecretString,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Last update time, RFC 3339 UTC.
    pub updated: String,
    /// Why the stored columns after owner and name do not parse, for a row returned by
    /// [`Store::visible_to`] that is corrupt (e.g. a value that is not UTF-8 text); `None`
    /// for a sound row. Such a row holds no value (`value` is empty): it is never delivered,
    /// and it still overrides less specific rows of its name, which resolve as unavailable
    /// (bad-inputs N30).
    pub corrupt: Option<String>,
}

impl SecretRow {
    /// The row a bound ciphertext of this secret is bound to (its owner type, owner and name).
    pub fn binding(&self) -> crate::crypto::Binding<'_> {
        binding(&self.owner, &self.name)
    }

    /// The Attune-style ref (`name`, `pack.name`, `pack.action.name`).
    pub fn secret_ref(&self) -> String {
        self.owner.secret_ref(&self.name)
    }
}

impl fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRow")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("encrypted", &self.encrypted)
            .field("key_hash", &self.key_hash)
            .field("created", &self.created)
            .field("updated", &self.updated)
            .field("corrupt", &self.corrupt)
            .finish_non_exhaustive()
    }
}

/// Whether a write created a row or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new row.
    Created,
    /// An existing row (same owner and name) was overwritten.
    Updated,
}

/// Which existing row a write may replace (bad-inputs N15). The check is part of the write
/// statement itself (a conditional upsert), so no other writer can slip in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace<'a> {
    /// A plain row, or an encrypted row whose key hash is the written row's or the given
    /// one (the writer's own key, when it has one). Any other encrypted row (under a key
    /// this writer may not hold, or with no key hash) is refused with
    /// [`Error::ForeignKey`].
    Readable(Option<&'a str>),
    /// Any row, whatever its key (`--replace-foreign-key`).
    Any,
}

impl Replace<'_> {
    /// The writer's key hash to accept besides the written row's, and whether any row may
    /// be replaced: the two values the write statements bind.
    fn binds(self) -> (Option<String>, bool) {
        match self {
            Self::Readable(hash) => (hash.map(str::to_ascii_lowercase), false),
            Self::Any => (None, true),
        }
    }
}

/// How [`Store::open`] treats a database that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create it (and its directory) and run migrations: for writes.
    CreateIfMissing,
    /// Fail with [`Error::Missing`]: for `run`, which then goes on without secrets.
    MustExist,
}

/// A handle on the secret store. Cheap to clone (a connection pool, and the row cache if
/// one is configured, shared by the clones).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// The ciphertext floor record as read when the store was opened (see
    /// [`Store::floor_record`]).
    floor: Option<Arc<str>>,
    cache: Option<Arc<cache::RowCache>>,
    _listener: Option<Arc<Listener>>,
}

/// The PostgreSQL change listener of a cached store; stopped when the last clone of the store
/// is dropped.
struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Sqlite(s) => f.debug_tuple("Store::Sqlite").field(&s.path()).finish(),
            Backend::Postgres(s) => f.debug_tuple("Store::Postgres").field(&s.schema()).finish(),
        }
    }
}

/// Where and how to open the store. `Debug` shows the URL through [`redact_url`].
#[derive(Clone)]
pub struct StoreOptions {
    /// `sqlite:PATH`, `sqlite://PATH`, or `postgres://user@host:port/db` (`postgresql://`).
    pub url: String,
    /// PostgreSQL schema holding the tables (default `attune`); ignored for SQLite.
    pub schema: String,
    /// Connection pool size (PostgreSQL; SQLite uses 4).
    pub max_connections: u32,
    /// Keep the rows each action may see (ciphertexts and plain rows as stored, never a
    /// decrypted value) in memory for this long; `None` (the default) queries every time.
    /// Every write through this store empties the cache; on PostgreSQL so does every change
    /// to the table by any writer whose statements fire triggers (`LISTEN attune_secrets`;
    /// not `session_replication_role = replica`, e.g. `pg_restore --disable-triggers`), and the
    /// cache is bypassed while the listener is not connected (it uses one extra pool
    /// connection). With SQLite, a change made by another process is seen after at most this
    /// long. A worker setting: a few seconds is typical.
    pub cache_ttl: Option<Duration>,
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

impl StoreOptions {
    /// Options for `url` with the default schema (`attune`) and pool size (5).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "attune".into(),
            max_connections: 5,
            cache_ttl: None,
        }
    }
}

/// The row (`owner`, `name`) as the associated data of a bound ciphertext sees it: the
/// `owner_type`, `owner` and `name` columns of the `secrets` table.
pub fn binding<'a>(owner: &'a Owner, name: &'a SecretName) -> crate::crypto::Binding<'a> {
    crate::crypto::Binding {
        owner_type: owner.owner_type().as_str(),
        owner: owner.owner_ref(),
        name: name.as_str(),
    }
}

/// Name of the ciphertext floor record in `store_meta`.
const FLOOR_RECORD: &str = "ciphertext_floor";

/// Dispatches one call to the open backend.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(s) => s.$method($($arg),*).await,
            Backend::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens the store at `url` and applies pending migrations.
    ///
    /// Accepted URLs: `sqlite:PATH`, `sqlite://PATH` (a relative or absolute file path), and
    /// `postgres://…` / `postgresql://…` with default schema and pool settings
    /// (see [`Store::open_with`]).
    ///
    /// # Errors
    /// [`Error::UnsupportedUrl`], [`Error::Missing`] (SQLite with [`OpenMode::MustExist`]),
    /// [`Error::Open`] or [`Error::Migrate`].
    pub async fn open(url: &str, mode: OpenMode) -> Result<Self> {
        Self::open_with(&StoreOptions::new(url), mode).await
    }

    /// Opens the store described by `options`, the backend chosen by the URL scheme, and
    /// applies pending migrations. On PostgreSQL the schema is created if missing and every
    /// connection uses it (`search_path`).
    ///
    /// # Errors
    /// As [`Store::open`], plus [`Error::BadSchema`].
    pub async fn open_with(options: &StoreOptions, mode: OpenMode) -> Result<Self> {
        let url = options.url.as_str();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite(sqlite::SqliteStore::open(url, mode).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(
                // One more connection for the change listener of a cached store.
                postgres::PgStore::open(
                    url,
                    &options.schema,
                    options
                        .max_connections
                        .saturating_add(u32::from(options.cache_ttl.is_some())),
                )
                .await?,
            )
        } else {
            return Err(Error::UnsupportedUrl {
                url: redact_url(url),
            });
        };
        let floor = match &backend {
            Backend::Sqlite(s) => s.floor_record().await?,
            Backend::Postgres(s) => s.floor_record().await?,
        }
        .map(Arc::from);
        let Some(ttl) = options.cache_ttl else {
            return Ok(Self {
                backend,
                floor,
                cache: None,
                _listener: None,
            });
        };
        let (cache, listener) = match &backend {
            // Only writes through this store invalidate: live from the start.
            Backend::Sqlite(_) => (Arc::new(cache::RowCache::new(ttl, true)), None),
            // Live once the listener runs.
            Backend::Postgres(pg) => {
                let cache = Arc::new(cache::RowCache::new(ttl, false));
                let task = tokio::spawn(pg.clone().invalidate_on_notify(Arc::downgrade(&cache)));
                (cache, Some(Arc::new(Listener(task))))
            }
        };
        Ok(Self {
            backend,
            floor,
            cache: Some(cache),
            _listener: listener,
        })
    }

    /// Empties the row cache (after every write through this store).
    fn invalidate(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate();
        }
    }

    /// The SQLite database file of this store (`None` on PostgreSQL): what a guest must never
    /// be given (see [`crate::mounts`]).
    pub fn database_file(&self) -> Option<&std::path::Path> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// Number of actions whose rows are cached now (0 without a cache).
    pub fn cached_actions(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }

    /// Inserts or replaces the secret (`owner`, `name`) atomically; an existing row is
    /// replaced only as [`Replace::Readable`]`(None)` allows (plain, or under the written
    /// row's key).
    ///
    /// # Errors
    /// [`Error::ForeignKey`], [`Error::Query`].
    pub async fn put(&self, secret: &NewSecret) -> Result<Written> {
        self.put_with(secret, Replace::Readable(None)).await
    }

    /// Inserts or replaces the secret (`owner`, `name`) atomically, replacing an existing
    /// row only as `replace` allows.
    ///
    /// # Errors
    /// [`Error::ForeignKey`] (nothing written), [`Error::Query`].
    pub async fn put_with(&self, secret: &NewSecret, replace: Replace<'_>) -> Result<Written> {
        let result = dispatch!(self.put(secret, replace));
        self.invalidate();
        result
    }

    /// Inserts or replaces every secret in one transaction: all are written or none. An
    /// existing row is replaced only as [`Replace::Readable`]`(None)` allows.
    ///
    /// # Errors
    /// [`Error::ForeignKey`], [`Error::Query`]; nothing is written then.
    pub async fn put_many(&self, secrets: &[NewSecret]) -> Result<Vec<Written>> {
        self.put_many_with(secrets, Replace::Readable(None)).await
    }

    /// As [`Store::put_many`], replacing existing rows only as `replace` allows.
    ///
    /// # Errors
    /// [`Error::ForeignKey`] naming the first refused row, [`Error::Query`]; nothing is
    /// written then.
    pub async fn put_many_with(
        &self,
        secrets: &[NewSecret],
        replace: Replace<'_>,
    ) -> Result<Vec<Written>> {
        let result = dispatch!(self.put_many(secrets, replace));
        self.invalidate();
        result
    }

    /// Applies `rotations` in one transaction, each as a compare-and-swap on the old value,
    /// and sets the store's ciphertext floor record to `floor` (made by
    /// [`crate::crypto::EncryptionKey::seal_floor`]) in the same transaction.
    ///
    /// # Errors
    /// [`Error::Changed`] when a row no longer holds its old value; [`Error::Query`]. Nothing
    /// is changed then.
    pub async fn replace_values(&self, rotations: &[Rotation], floor: &str) -> Result<()> {
        let result = dispatch!(self.replace_values(rotations, floor));
        self.invalidate();
        result
    }

    /// The store's ciphertext floor record (table `store_meta`, name `ciphertext_floor`) as
    /// read when this handle was opened: a bound ciphertext that `key rotate` writes once every
    /// encrypted row is bound (verify it with [`crate::crypto::EncryptionKey::floor`]). A floor
    /// written later by another process is seen by handles opened after it (every CLI command
    /// opens its own).
    pub fn floor_record(&self) -> Option<&str> {
        self.floor.as_deref()
    }

    /// Writes one batch of the audit trail in one transaction: its executions upserted by
    /// id (`audit_execution`), its records inserted (`audit`).
    ///
    /// # Errors
    /// [`Error::Query`]; nothing of the batch is written then.
    pub async fn record_audit(&self, batch: &crate::audit::Batch) -> Result<()> {
        dispatch!(self.record_audit(batch))
    }

    /// Audit records matching `filter`, newest first, each with its execution's run state.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn list_audit(
        &self,
        filter: &crate::audit::Filter,
    ) -> Result<Vec<crate::audit::Listed>> {
        dispatch!(self.list_audit(filter))
    }

    /// The secret (`owner`, `name`), if stored.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn get(&self, owner: &Owner, name: &SecretName) -> Result<Option<SecretRow>> {
        dispatch!(self.get(owner, name))
    }

    /// All secrets of `owner` (all owners when `None`), ordered by owner type, owner, name.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn list(&self, owner: Option<&Owner>) -> Result<Vec<SecretRow>> {
        dispatch!(self.list(owner))
    }

    /// Deletes the secret (`owner`, `name`); `true` when a row was removed.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn delete(&self, owner: &Owner, name: &SecretName) -> Result<bool> {
        let result = dispatch!(self.delete(owner, name));
        self.invalidate();
        result
    }

    /// Every row `action` may see (system, its pack, itself) in one query: the input of
    /// resolution ([`crate::resolve`]). Other packs' and actions' rows are never returned.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn visible_to(&self, action: &ActionRef) -> Result<Vec<SecretRow>> {
        let Some(cache) = &self.cache else {
            return dispatch!(self.visible_to(action));
        };
        match cache.get(action.as_str()) {
            Ok(rows) => Ok(rows.to_vec()),
            Err(generation) => {
                let rows = dispatch!(self.visible_to(action))?;
                cache.insert(action.as_str(), Arc::from(rows.clone()), generation);
                Ok(rows)
            }
        }
    }
}

/// The database file a `sqlite:` URL names, as the store opens it (`%xx` decoded, query
/// dropped); `None` for other schemes and in-memory databases.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    (!file.as_os_str().is_empty() && file.as_os_str() != ":memory:").then(|| file.to_path_buf())
}

/// A database URL as it may be shown (errors, logs, `Debug`): the scheme, host, port and
/// database only, never the user, password or query (`?password=…`), whatever the URL's shape.
///
/// - `postgres://user:pw@host:5432/db?sslmode=require` → `postgres://host:5432/db`. The host
///   is what follows the *last* `@`, so a password holding `@`, `/`, `?` or `:` does not show
///   either.
/// - `sqlite:PATH` / `sqlite://PATH?mode=rwc` → the path without the query.
/// - Anything else (`postgres:/u:pw@host/db`, a typo, an unknown scheme) → the scheme only,
///   as `scheme:…` (or `…` when there is no scheme).
pub fn redact_url(url: &str) -> String {
    let cut = |s: &str| -> usize { s.find(['?', '#']).unwrap_or(s.len()) };
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).filter(|s| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let Some(scheme) = scheme else {
        return "…".to_owned();
    };
    let rest = &url[scheme.len() + 1..];
    if scheme.eq_ignore_ascii_case("sqlite") {
        return format!("{scheme}:{}", &rest[..cut(rest)]);
    }
    let Some(rest) = rest.strip_prefix("//") else {
        return format!("{scheme}:…");
    };
    let after_user = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    let host_end = after_user.find(['/', '?', '#']).unwrap_or(after_user.len());
    let (host, tail) = after_user.split_at(host_end);
    let database = tail
        .strip_prefix('/')
        .map(|path| &path[..cut(path)])
        .unwrap_or_default();
    if database.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{database}")
    }
}

/// The error of a write refused by [`Replace::Readable`]: names the row and both key hashes.
/// `stored` is the stored row's key hash and value as read after the refusal (`None` if it
/// was deleted since). A blob-format row's hash is withheld, as in [`crate::crypto`].
fn foreign_key(
    s: &NewSecret,
    writer_hash: Option<&str>,
    stored: Option<(Option<String>, String)>,
) -> Error {
    use crate::crypto::Generation;
    let stored = match stored {
        Some((Some(hash), value)) if Generation::of(&value) != Generation::Blob => {
            hash.chars().flat_map(char::escape_default).collect()
        }
        Some((Some(_), _)) => "(withheld: a blob-format key hash may be a key)".to_owned(),
        Some((None, _)) | None => "none".to_owned(),
    };
    Error::ForeignKey {
        secret_ref: s.owner.secret_ref(&s.name),
        stored,
        writing: s
            .key_hash
            .as_deref()
            .or(writer_hash)
            .unwrap_or("none")
            .to_owned(),
    }
}

/// Decodes the rows an action may see. A row whose owner and name parse but whose other
/// columns do not is kept, marked [`SecretRow::corrupt`], so that it still overrides less
/// specific rows of its name (bad-inputs N30); a row whose name itself does not parse cannot
/// override anything and is skipped with a warning naming it.
fn decode_visible<R>(
    rows: &[R],
    decode: impl Fn(&R) -> Result<SecretRow>,
    identity: impl Fn(&R) -> Result<(String, String, String)>,
) -> Vec<SecretRow> {
    rows.iter()
        .filter_map(|r| {
            let reason = match decode(r) {
                Ok(row) => return Some(row),
                Err(Error::Corrupt { reason, .. }) => reason,
                Err(e) => e.to_string(),
            };
            match identity(r).and_then(|(t, o, n)| parse_identity(&t, &o, &n)) {
                Ok((owner, name)) => {
                    tracing::warn!(
                        "stored secret {} is malformed ({reason}); it is not delivered",
                        owner.secret_ref(&name)
                    );
                    Some(SecretRow {
                        owner,
                        name,
                        encrypted: false,
                        key_hash: None,
                        value: SecretString::from(String::new()),
                        created: String::new(),
                        updated: String::new(),
                        corrupt: Some(reason),
                    })
                }
                Err(e) => {
                    tracing::warn!("skipping a stored row: {e}");
                    None
                }
            }
        })
        .collect()
}

/// Parses the owner and name columns of a stored row.
fn parse_identity(owner_type: &str, owner: &str, name: &str) -> Result<(Owner, SecretName)> {
    let corrupt = |reason: String| Error::Corrupt {
        secret_ref: format!("{owner_type}:{owner}:{}", name.escape_default()),
        reason,
    };
    let parsed = OwnerType::parse(owner_type)
        .ok_or_else(|| corrupt(format!("unknown owner type {owner_type:?}")))?;
    let owner = Owner::from_parts(parsed, owner).map_err(|e: NameError| corrupt(e.to_string()))?;
    let name = SecretName::new(name).map_err(|e| corrupt(e.to_string()))?;
    Ok((owner, name))
}

/// Decodes rows, skipping (with a warning naming it) any row that does not parse, so one bad
/// row cannot hide every other secret.
fn decode_rows<R>(rows: &[R], decode: impl Fn(&R) -> Result<SecretRow>) -> Vec<SecretRow> {
    rows.iter()
        .filter_map(|r| match decode(r) {
            Ok(row) => Some(row),
            Err(e) => {
                tracing::warn!("skipping a stored row: {e}");
                None
            }
        })
        .collect()
}

/// A row as the database returns it, before its columns are parsed.
struct RawRow {
    owner_type: String,
    owner: String,
    name: String,
    encrypted: bool,
    key_hash: Option<String>,
    value: String,
    created: String,
    updated: String,
}

impl RawRow {
    /// Parses the stored columns into a typed row.
    fn parse(self) -> Result<SecretRow> {
        let (owner, name) = parse_identity(&self.owner_type, &self.owner, &self.name)?;
        Ok(SecretRow {
            owner,
            name,
            encrypted: self.encrypted,
            key_hash: self.key_hash,
            value: SecretString::from(self.value),
            created: self.created,
            updated: self.updated,
            corrupt: None,
        })
    }
}

/// An audit row as the database returns it.
struct RawAudit {
    at: String,
    execution_id: String,
    action_ref: String,
    secret_ref: String,
    door: String,
    outcome: String,
    count: i64,
    /// `audit_execution.state`, absent for records older than that table.
    run: Option<String>,
}

impl RawAudit {
    fn parse(self) -> Result<crate::audit::Listed> {
        use crate::audit::{Door, Outcome, RunState};
        let corrupt = |reason: String| Error::Corrupt {
            secret_ref: self.secret_ref.clone(),
            reason,
        };
        let door = match self.door.as_str() {
            "env" => Door::Env,
            "get-secret" => Door::GetSecret,
            other => return Err(corrupt(format!("unknown audit door {other:?}"))),
        };
        let outcome = match self.outcome.as_str() {
            "delivered" => Outcome::Delivered,
            "not-found" => Outcome::NotFound,
            "access-denied" => Outcome::AccessDenied,
            "invalid-name" => Outcome::InvalidName,
            "unavailable" => Outcome::Unavailable,
            other => return Err(corrupt(format!("unknown audit outcome {other:?}"))),
        };
        let run = match self.run.as_deref() {
            None => None,
            Some(text) => Some(
                RunState::parse(text)
                    .ok_or_else(|| corrupt(format!("unknown run state {text:?}")))?,
            ),
        };
        Ok(crate::audit::Listed {
            record: crate::audit::Record {
                at: self.at,
                execution_id: self.execution_id,
                action_ref: self.action_ref,
                secret_ref: self.secret_ref,
                door,
                outcome,
                count: u64::try_from(self.count).unwrap_or(0),
            },
            run,
        })
    }
}

/// The pack of a pack- or action-owned secret, `""` for system: stored so that resolution is
/// one indexed query.
fn owner_pack(owner: &Owner) -> String {
    match owner {
        Owner::System => String::new(),
        Owner::Pack(p) => p.to_string(),
        Owner::Action(a) => a.pack().to_string(),
    }
}

/// A time as the store keeps it: RFC 3339, UTC, millisecond precision (`2026-11-29T08:22:01.407Z`).
/// One fixed format, so that times compare correctly as text on SQLite (`audit list --since`).
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The current time in the store's format ([`timestamp`]).
pub(crate) fn now() -> String {
    timestamp(chrono::Utc::now())
}

#[cfg(test)]
pub(crate) mod tests {
    //! The store suite, run against SQLite always and against PostgreSQL
    //! (`ATTUNE_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`; each test
    //! in a schema of its own, dropped afterwards). `ATTUNE_TEST_POSTGRES=skip` skips it.
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use secrecy::ExposeSecret;

    use crate::names::{ActionRef, PackRef};

    /// A store and what keeps it alive (a temp dir or a schema to drop).
    pub(crate) struct TestStore {
        pub(crate) store: Store,
        _dir: Option<tempfile::TempDir>,
        schema: Option<(String, String)>,
    }

    impl Drop for TestStore {
        fn drop(&mut self) {
            if let Some((url, schema)) = self.schema.take() {
                // Best effort, on a thread of its own: Drop cannot await.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        use sqlx::Connection as _;
                        let mut c = sqlx::PgConnection::connect(&url).await?;
                        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .execute(&mut c)
                            .await?;
                        Ok::<_, sqlx::Error>(())
                    })
                    .map_err(std::io::Error::other)
                })
                .join();
            }
        }
    }

    pub(crate) fn postgres_url() -> Option<String> {
        if std::env::var("ATTUNE_TEST_POSTGRES").as_deref() == Ok("skip") {
            return None;
        }
        Some(
            std::env::var("ATTUNE_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        )
    }

    /// Every backend this machine has: SQLite always, PostgreSQL unless skipped.
    pub(crate) async fn stores() -> Vec<TestStore> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let sqlite = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
        let mut all = vec![TestStore {
            store: sqlite,
            _dir: Some(dir),
            schema: None,
        }];
        if let Some(url) = postgres_url() {
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            let mut options = StoreOptions::new(url.clone());
            options.schema.clone_from(&schema);
            let pg = Store::open_with(&options, OpenMode::CreateIfMissing)
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL test store: {e} (set ATTUNE_TEST_POSTGRES=skip to skip)")
                });
            all.push(TestStore {
                store: pg,
                _dir: None,
                schema: Some((url, schema)),
            });
        }
        all
    }

    fn secret(owner: Owner, name: &str, value: &str) -> NewSecret {
        NewSecret {
            owner,
            name: SecretName::new(name).unwrap(),
            encrypted: false,
            key_hash: None,
            value: SecretString::from(value),
        }
    }

    #[tokio::test]
    async fn put_get_list_delete() {
        for t in stores().await {
            let store = &t.store;
            let pack = Owner::Pack(PackRef::new("mypack").unwrap());
            assert_eq!(
                store.put(&secret(pack.clone(), "k", "v1")).await.unwrap(),
                Written::Created
            );
            assert_eq!(
                store.put(&secret(pack.clone(), "k", "v2")).await.unwrap(),
                Written::Updated
            );
            let row = store
                .get(&pack, &SecretName::new("k").unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.value.expose_secret(), "v2", "{store:?}");
            assert_eq!(row.secret_ref(), "mypack.k");
            assert!(
                row.created.ends_with('Z') && row.updated >= row.created,
                "{}",
                row.created
            );
            assert!(!format!("{row:?}").contains("v2"));
            assert_eq!(store.list(None).await.unwrap().len(), 1);
            assert_eq!(store.list(Some(&Owner::System)).await.unwrap().len(), 0);
            assert!(store
                .delete(&pack, &SecretName::new("k").unwrap())
                .await
                .unwrap());
            assert!(!store
                .delete(&pack, &SecretName::new("k").unwrap())
                .await
                .unwrap());
        }
    }

    #[tokio::test]
    async fn visible_to_returns_only_the_three_levels() {
        for t in stores().await {
            let store = &t.store;
            let action = ActionRef::new("p1.a").unwrap();
            store.put(&secret(Owner::System, "s", "x")).await.unwrap();
            store
                .put(&secret(Owner::Pack(PackRef::new("p1").unwrap()), "p", "x"))
                .await
                .unwrap();
            store
                .put(&secret(
                    Owner::Pack(PackRef::new("p2").unwrap()),
                    "other",
                    "x",
                ))
                .await
                .unwrap();
            store
                .put(&secret(Owner::Action(action.clone()), "a", "x"))
                .await
                .unwrap();
            let sibling = Owner::Action(ActionRef::new("p1.b").unwrap());
            store.put(&secret(sibling, "sibling", "x")).await.unwrap();
            let other_pack_action = Owner::Action(ActionRef::new("p2.a").unwrap());
            store
                .put(&secret(other_pack_action, "a2", "x"))
                .await
                .unwrap();
            let mut names: Vec<_> = store
                .visible_to(&action)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.name.to_string())
                .collect();
            names.sort();
            assert_eq!(names, ["a", "p", "s"], "{store:?}");
        }
    }

    #[tokio::test]
    async fn same_name_at_each_level_is_three_rows_and_values_round_trip() {
        for t in stores().await {
            let store = &t.store;
            let action = ActionRef::new("mypack.deploy").unwrap();
            store
                .put(&secret(Owner::System, "token", "1"))
                .await
                .unwrap();
            store
                .put(&secret(Owner::Pack(action.pack()), "token", "2"))
                .await
                .unwrap();
            store
                .put(&secret(Owner::Action(action.clone()), "token", ""))
                .await
                .unwrap();
            let odd = "line1\nline2 pässwörd€ a=b=c '; DROP TABLE secrets; --";
            store.put(&secret(Owner::System, "odd", odd)).await.unwrap();
            let rows = store.visible_to(&action).await.unwrap();
            assert_eq!(rows.len(), 4);
            let got = store
                .get(&Owner::System, &SecretName::new("odd").unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.value.expose_secret(), odd);
        }
    }

    #[tokio::test]
    async fn concurrent_sets_of_one_name_leave_one_consistent_row() {
        for t in stores().await {
            let store = t.store.clone();
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        store
                            .put(&secret(Owner::System, "race", &format!("value-{i}")))
                            .await
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            let rows = store.list(None).await.unwrap();
            assert_eq!(rows.len(), 1);
            assert!(rows[0].value.expose_secret().starts_with("value-"));
        }
    }

    #[tokio::test]
    async fn must_exist_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("none.db").display());
        assert!(matches!(
            Store::open(&url, OpenMode::MustExist).await,
            Err(Error::Missing { .. })
        ));
        assert!(!dir.path().join("none.db").exists());
    }

    #[tokio::test]
    async fn bad_urls_and_schemas_are_refused() {
        assert!(matches!(
            Store::open("mysql://x/y", OpenMode::CreateIfMissing).await,
            Err(Error::UnsupportedUrl { .. })
        ));
        let mut options = StoreOptions::new("postgres://u:pw@127.0.0.1:1/none");
        options.schema = "Robert'); DROP".into();
        let err = Store::open_with(&options, OpenMode::CreateIfMissing)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BadSchema(_)), "{err}");
        options.schema = "attune".into();
        let err = Store::open_with(&options, OpenMode::CreateIfMissing)
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn urls_are_shown_as_host_port_and_database_only() {
        for (url, shown) in [
            (
                "postgres://u:pw@127.0.0.1:5432/test",
                "postgres://127.0.0.1:5432/test",
            ),
            ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
            ("sqlite:x.db?mode=rwc", "sqlite:x.db"),
            (
                "postgres://u:PW_pa/ss@127.0.0.1:1/db",
                "postgres://127.0.0.1:1/db",
            ),
            ("postgres://u:p@ss/w@h/db", "postgres://h/db"),
            (
                "postgres://u@127.0.0.1:5999/test?password=PW",
                "postgres://127.0.0.1:5999/test",
            ),
            ("postgresql://h/db#PW", "postgresql://h/db"),
            ("postgres://u:PW?x@h:1/db", "postgres://h:1/db"),
            ("postgres:/u:PW@127.0.0.1:5432/test", "postgres:…"),
            ("postgres:u:PW@h/db", "postgres:…"),
            ("u:PW@h/db", "u:…"),
            ("PW@h/db", "…"),
            ("://PW@h", "…"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let options = StoreOptions::new("postgres://u@h/db?password=PW");
        assert!(!format!("{options:?}").contains("PW"));
    }
}
