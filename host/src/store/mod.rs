//! The secret store: encrypted rows in SQLite (embedded default) behind one interface that a
//! PostgreSQL backend joins without touching callers (the backend is chosen by URL scheme).
//!
//! Rows hold what the seed's `attune.key` holds: owner type, owner ref, name, encrypted flag,
//! key hash, value (ciphertext, or the value itself for `--plain` secrets), created/updated.
//! The store never decrypts: it moves stored text only.

mod sqlite;

use std::fmt;

use secrecy::SecretString;

use crate::names::{ActionRef, NameError, Owner, OwnerType, SecretName};

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
    #[error("unsupported database URL {url}: expected sqlite:PATH or sqlite://PATH")]
    UnsupportedUrl {
        /// Database URL with any password replaced by `***`.
        url: String,
    },
    /// Applying migrations failed.
    #[error("migrating secret store failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("secret store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored row does not parse (hand-edited or foreign data).
    #[error("stored secret {secret_ref} is malformed: {reason}")]
    Corrupt {
        /// Ref of the offending row.
        secret_ref: String,
        /// What is wrong with it.
        reason: String,
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

/// One stored secret.
///
/// `Debug` is written by hand and never shows `value` (which is plaintext for plain rows).
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
}

impl SecretRow {
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

/// How [`Store::open`] treats a database that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create it (and its directory) and run migrations: for writes.
    CreateIfMissing,
    /// Fail with [`Error::Missing`]: for `run`, which then goes on without secrets.
    MustExist,
}

/// A handle on the secret store. Cheap to clone (a connection pool).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Sqlite(s) => f.debug_tuple("Store::Sqlite").field(&s.path()).finish(),
        }
    }
}

impl Store {
    /// Opens the store at `url` and applies pending migrations.
    ///
    /// Accepted URLs: `sqlite:PATH`, `sqlite://PATH` (a relative or absolute file path).
    ///
    /// # Errors
    /// [`Error::UnsupportedUrl`], [`Error::Missing`] (with [`OpenMode::MustExist`]),
    /// [`Error::Open`] or [`Error::Migrate`].
    pub async fn open(url: &str, mode: OpenMode) -> Result<Self> {
        if url.starts_with("sqlite:") {
            let store = sqlite::SqliteStore::open(url, mode).await?;
            return Ok(Self {
                backend: Backend::Sqlite(store),
            });
        }
        Err(Error::UnsupportedUrl {
            url: redact_url(url),
        })
    }

    /// Inserts or replaces the secret (`owner`, `name`) atomically.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn put(&self, secret: &NewSecret) -> Result<Written> {
        match &self.backend {
            Backend::Sqlite(s) => s.put(secret).await,
        }
    }

    /// The secret (`owner`, `name`), if stored.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn get(&self, owner: &Owner, name: &SecretName) -> Result<Option<SecretRow>> {
        match &self.backend {
            Backend::Sqlite(s) => s.get(owner, name).await,
        }
    }

    /// All secrets of `owner` (all owners when `None`), ordered by owner type, owner, name.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn list(&self, owner: Option<&Owner>) -> Result<Vec<SecretRow>> {
        match &self.backend {
            Backend::Sqlite(s) => s.list(owner).await,
        }
    }

    /// Deletes the secret (`owner`, `name`); `true` when a row was removed.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn delete(&self, owner: &Owner, name: &SecretName) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(s) => s.delete(owner, name).await,
        }
    }

    /// Every row `action` may see (system, its pack, itself) in one query: the input of
    /// resolution ([`crate::resolve`]). Other packs' and actions' rows are never returned.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`].
    pub async fn visible_to(&self, action: &ActionRef) -> Result<Vec<SecretRow>> {
        match &self.backend {
            Backend::Sqlite(s) => s.visible_to(action).await,
        }
    }
}

/// Replaces the password of a URL (`scheme://user:password@host`) by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
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
        let corrupt = |reason: String| Error::Corrupt {
            secret_ref: format!(
                "{}:{}:{}",
                self.owner_type,
                self.owner,
                self.name.escape_default()
            ),
            reason,
        };
        let owner_type = OwnerType::parse(&self.owner_type)
            .ok_or_else(|| corrupt(format!("unknown owner type {:?}", self.owner_type)))?;
        let owner = Owner::from_parts(owner_type, &self.owner)
            .map_err(|e: NameError| corrupt(e.to_string()))?;
        let name = SecretName::new(&self.name).map_err(|e| corrupt(e.to_string()))?;
        Ok(SecretRow {
            owner,
            name,
            encrypted: self.encrypted,
            key_hash: self.key_hash,
            value: SecretString::from(self.value),
            created: self.created,
            updated: self.updated,
        })
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use secrecy::ExposeSecret;

    use crate::names::{ActionRef, PackRef};

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
        (dir, store)
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
        let (_d, store) = temp_store().await;
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
        assert_eq!(row.value.expose_secret(), "v2");
        assert_eq!(row.secret_ref(), "mypack.k");
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

    #[tokio::test]
    async fn visible_to_returns_only_the_three_levels() {
        let (_d, store) = temp_store().await;
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
        store
            .put(&secret(
                Owner::Action(ActionRef::new("p1.b").unwrap()),
                "sibling",
                "x",
            ))
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
        assert_eq!(names, ["a", "p", "s"]);
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

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@127.0.0.1:5432/test"),
            "postgres://u:***@127.0.0.1:5432/test"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
