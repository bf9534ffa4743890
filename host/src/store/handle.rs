//! The [`Store`] handle: a backend chosen by URL scheme (or given), the ciphertext floor
//! record read when it opened, and the optional row cache in front of
//! [`Store::visible_to`].

use std::fmt;
use std::sync::Arc;

use super::backend::{Backend, BoxFuture};
use super::cache::RowCache;
use super::journal::Journal;
use super::{
    postgres, redact_url, sqlite, Error, NewSecret, OpenMode, Replace, Result, Rotation, SecretRow,
    StoreOptions, Visible, Written,
};
use crate::secrets::names::{ActionRef, Owner, SecretName};
use crate::store::audit::{self, Batch, Filter, Listed};

/// A handle on the secret store. Cheap to clone (a connection pool, and the row cache if
/// one is configured, shared by the clones).
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// The ciphertext floor record as read when the store was opened (see
    /// [`Store::floor_record`]).
    floor: Option<Arc<str>>,
    cache: Option<Arc<RowCache>>,
    _listener: Option<Arc<Listener>>,
    /// The audit journal of a SQLite store (see [`super::journal`]).
    journal: Option<Arc<Journal>>,
}

/// The change listener of a cached store; stopped when the last clone of the store is
/// dropped.
struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Store")
            .field(&self.backend.kind())
            .field(&self.backend.location())
            .finish()
    }
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
        let mut journal = None;
        let backend: Arc<dyn Backend> = if url.starts_with("sqlite:") {
            let backend = sqlite::open(url, mode).await?;
            journal = backend.database_file().map(|db| Arc::new(Journal::new(db)));
            Arc::new(backend)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // One more connection for the change listener of a cached store.
            let connections = options
                .max_connections
                .saturating_add(u32::from(options.cache_ttl.is_some()));
            Arc::new(postgres::open(url, &options.schema, connections).await?)
        } else {
            return Err(Error::UnsupportedUrl {
                url: redact_url(url),
            });
        };
        let mut store = Self::on(backend, options.cache_ttl).await?;
        store.journal = journal;
        Ok(store)
    }

    /// A store on `backend`, with a row cache of entries living `cache_ttl` when given; reads
    /// the floor record.
    ///
    /// # Errors
    /// [`Error::Query`] when the floor record cannot be read.
    async fn on(backend: Arc<dyn Backend>, cache_ttl: Option<std::time::Duration>) -> Result<Self> {
        let floor = backend.floor_record().await?.map(Arc::from);
        let Some(ttl) = cache_ttl else {
            return Ok(Self {
                backend,
                floor,
                cache: None,
                _listener: None,
                journal: None,
            });
        };
        // Not live until the backend's change listener runs; live from the start when it has
        // none (only writes through this store invalidate).
        let cache = Arc::new(RowCache::new(ttl, false));
        let listener = backend.watch_changes(Arc::downgrade(&cache));
        if listener.is_none() {
            cache.set_live(true);
        }
        Ok(Self {
            backend,
            floor,
            cache: Some(cache),
            _listener: listener.map(|task| Arc::new(Listener(task))),
            journal: None,
        })
    }

    /// A store on a read-only `backend` (e.g. [`super::AttuneKeys`]): no row cache, no
    /// floor record.
    pub(crate) fn read_only(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            floor: None,
            cache: None,
            _listener: None,
            journal: None,
        }
    }

    /// Empties the row cache (after every write through this store).
    fn invalidate(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate();
        }
    }

    /// The audit journal of this store (SQLite only: see [`super::journal`]).
    pub(crate) fn audit_journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// The SQLite database file of this store (`None` on PostgreSQL): what a guest must never
    /// be given (see [`crate::executor::mounts`]).
    pub fn database_file(&self) -> Option<&std::path::Path> {
        self.backend.database_file()
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
        let result = self.backend.put(secret, replace).await;
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
        let result = self.backend.put_many(secrets, replace).await;
        self.invalidate();
        result
    }

    /// Applies `rotations` in one transaction, each as a compare-and-swap on the old value,
    /// and sets the store's ciphertext floor record to `floor` (made by
    /// [`crate::secrets::crypto::EncryptionKey::seal_floor`]) in the same transaction.
    ///
    /// # Errors
    /// [`Error::Changed`] when a row no longer holds its old value; [`Error::Query`]. Nothing
    /// is changed then.
    pub async fn replace_values(&self, rotations: &[Rotation], floor: &str) -> Result<()> {
        let result = self.backend.replace_values(rotations, floor).await;
        self.invalidate();
        result
    }

    /// The store's ciphertext floor record (table `store_meta`, name `ciphertext_floor`) as
    /// read when this handle was opened: a bound ciphertext that `key rotate` writes once every
    /// encrypted row is bound (verify it with [`crate::secrets::crypto::EncryptionKey::floor`]). A floor
    /// written later by another process is seen by handles opened after it (every CLI command
    /// opens its own).
    pub fn floor_record(&self) -> Option<&str> {
        self.floor.as_deref()
    }

    /// Writes one batch of the audit trail in one statement: its executions upserted by id
    /// (`audit_execution`), each with its records packed in its row.
    ///
    /// # Errors
    /// [`Error::Query`]; nothing of the batch is written then.
    pub async fn record_audit(&self, batch: &Batch) -> Result<()> {
        self.backend.record_audit(batch).await
    }

    /// Audit records matching `filter`, newest first, each with its execution's run state.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn list_audit(&self, filter: &Filter) -> Result<Vec<Listed>> {
        self.backend.list_audit(filter).await
    }

    /// The secret (`owner`, `name`), if stored.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn get(&self, owner: &Owner, name: &SecretName) -> Result<Option<SecretRow>> {
        self.backend.get(owner, name).await
    }

    /// All secrets of `owner` (all owners when `None`), ordered by owner type, owner, name. A
    /// row whose owner and name parse but whose other columns do not is listed as
    /// [`Visible::Corrupt`] with its reason, so it can be found and deleted; one whose name does
    /// not parse is skipped with a warning.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::ReadOnly`].
    pub async fn list(&self, owner: Option<&Owner>) -> Result<Vec<Visible>> {
        self.backend.list(owner).await
    }

    /// Rows whose owner or name does not parse, as (shown ref, reason): [`Store::list`] leaves
    /// them out; `key rotate` refuses to rotate around them.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub(crate) async fn unnamed_rows(&self) -> Result<Vec<(String, String)>> {
        self.backend.unnamed().await
    }

    /// Deletes the secret (`owner`, `name`); `true` when a row was removed.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn delete(&self, owner: &Owner, name: &SecretName) -> Result<bool> {
        let result = self.backend.delete(owner, name).await;
        self.invalidate();
        result
    }

    /// Every row `action` may see (system, its pack, itself) in one query: the input of
    /// resolution ([`crate::store::resolve`]). Other packs' and actions' rows are never returned.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn visible_to(&self, action: &ActionRef) -> Result<Vec<Visible>> {
        let Some(cache) = &self.cache else {
            return self.backend.visible_to(action).await;
        };
        match cache.get(action.as_str()) {
            Ok(rows) => Ok(rows.to_vec()),
            Err(generation) => {
                let rows = self.backend.visible_to(action).await?;
                cache.insert(action.as_str(), Arc::from(rows.clone()), generation);
                Ok(rows)
            }
        }
    }
}

/// The store is where the audit trail goes ([`audit::Writer`] writes its batches here).
impl audit::Sink for Store {
    fn record<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, std::result::Result<(), audit::SinkError>> {
        Box::pin(async move {
            self.record_audit(batch)
                .await
                .map_err(|e| Box::new(e) as audit::SinkError)
        })
    }
}
