//! What a store backend does: the one interface the [`super::Store`] handle (its row cache,
//! its floor record) sits on. SQLite and PostgreSQL implement it once, in [`super::sql`], over
//! their [`super::sql::Dialect`]; a read-only source of rows (Attune's `attune.key`,
//! [`super::AttuneKeys`]) implements the read path only and refuses the rest.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Weak;

use super::cache::RowCache;
use super::{Error, NewSecret, Replace, Result, Rotation, SecretRow, Visible, Written};
use crate::secrets::names::{ActionRef, Owner, SecretName};
use crate::store::audit::{Batch, Filter, Listed};

/// A boxed future that may move between threads (what a backend's methods return, so that
/// the store can hold any backend behind one pointer).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A source of secret rows, and for read-write backends their sink. Only
/// [`Backend::visible_to`] is required; every other method answers [`Error::ReadOnly`] unless
/// the backend implements it.
pub trait Backend: Send + Sync + 'static {
    /// Short name for messages and `Debug` (`sqlite`, `postgres`, `attune.key`).
    fn kind(&self) -> &'static str;

    /// Where it is, for `Debug`: a file path or a schema name (never a URL or credential).
    fn location(&self) -> String;

    /// Every row `action` may see (system, its pack, itself) in one query.
    ///
    /// # Errors
    /// [`Error::Query`].
    fn visible_to<'a>(&'a self, action: &'a ActionRef) -> BoxFuture<'a, Result<Vec<Visible>>>;

    /// The SQLite database file (what a guest must never be given); `None` elsewhere.
    fn database_file(&self) -> Option<&Path> {
        None
    }

    /// Starts a task that empties `cache` on every change any writer makes, returning it
    /// (aborted when the store is dropped); `None` when the backend sends no such news, and
    /// then the cache is live from the start (only writes through the store empty it).
    fn watch_changes(&self, cache: Weak<RowCache>) -> Option<tokio::task::JoinHandle<()>> {
        let _ = cache;
        None
    }

    /// The ciphertext floor record (`store_meta.ciphertext_floor`), if any.
    ///
    /// # Errors
    /// [`Error::Query`].
    fn floor_record(&self) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// The secret (`owner`, `name`), if stored.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`], [`Error::ReadOnly`] (not kept by this backend).
    fn get<'a>(
        &'a self,
        owner: &'a Owner,
        name: &'a SecretName,
    ) -> BoxFuture<'a, Result<Option<SecretRow>>> {
        let _ = (owner, name);
        refuse(self.kind(), "read single secrets")
    }

    /// All secrets of `owner` (all owners when `None`), ordered by owner type, owner, name; a
    /// row whose owner and name parse but whose other columns do not is listed as
    /// [`Visible::Corrupt`] (one whose name does not parse is skipped with a warning).
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::ReadOnly`].
    fn list<'a>(&'a self, owner: Option<&'a Owner>) -> BoxFuture<'a, Result<Vec<Visible>>> {
        let _ = owner;
        refuse(self.kind(), "list secrets")
    }

    /// Rows whose owner or name does not parse (left out of [`Backend::list`]), as (shown
    /// ref, reason): what `key rotate` must not rotate around.
    ///
    /// # Errors
    /// [`Error::Query`].
    fn unnamed(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Writes one secret, replacing an existing row only as `replace` allows.
    ///
    /// # Errors
    /// [`Error::ForeignKey`], [`Error::Query`], [`Error::ReadOnly`].
    fn put<'a>(
        &'a self,
        secret: &'a NewSecret,
        replace: Replace<'a>,
    ) -> BoxFuture<'a, Result<Written>> {
        let _ = (secret, replace);
        refuse(self.kind(), "write secrets")
    }

    /// Writes every secret in one transaction: all or nothing.
    ///
    /// # Errors
    /// As [`Backend::put`].
    fn put_many<'a>(
        &'a self,
        secrets: &'a [NewSecret],
        replace: Replace<'a>,
    ) -> BoxFuture<'a, Result<Vec<Written>>> {
        let _ = (secrets, replace);
        refuse(self.kind(), "write secrets")
    }

    /// Deletes the secret (`owner`, `name`); `true` when a row was removed.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::ReadOnly`].
    fn delete<'a>(&'a self, owner: &'a Owner, name: &'a SecretName) -> BoxFuture<'a, Result<bool>> {
        let _ = (owner, name);
        refuse(self.kind(), "delete secrets")
    }

    /// Replaces ciphertexts in one transaction (compare-and-swap on the old value) and writes
    /// the floor record `floor` in it.
    ///
    /// # Errors
    /// [`Error::Changed`], [`Error::Query`], [`Error::ReadOnly`].
    fn replace_values<'a>(
        &'a self,
        rotations: &'a [Rotation],
        floor: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = (rotations, floor);
        refuse(self.kind(), "rotate secrets")
    }

    /// Writes one batch of the audit trail, all or nothing.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::ReadOnly`].
    fn record_audit<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<()>> {
        let _ = batch;
        refuse(self.kind(), "keep an audit trail")
    }

    /// Audit records matching `filter`, newest first.
    ///
    /// # Errors
    /// [`Error::Query`], [`Error::Corrupt`], [`Error::ReadOnly`].
    fn list_audit<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Vec<Listed>>> {
        let _ = filter;
        refuse(self.kind(), "keep an audit trail")
    }
}

/// The answer of an operation a backend of kind `backend` does not do.
fn refuse<T: Send + 'static>(
    backend: &'static str,
    operation: &'static str,
) -> BoxFuture<'static, Result<T>> {
    Box::pin(std::future::ready(Err(Error::ReadOnly {
        backend,
        operation,
    })))
}

#[cfg(test)]
mod tests {
    //! A backend is one file: this one implements the read path only, and the store on it
    //! resolves rows and refuses the rest by type.
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use secrecy::SecretString;

    use super::*;
    use crate::store::{Store, StoredValue, Timestamp};

    struct OneRow;

    impl Backend for OneRow {
        fn kind(&self) -> &'static str {
            "test"
        }

        fn location(&self) -> String {
            "memory".to_owned()
        }

        fn visible_to<'a>(&'a self, _action: &'a ActionRef) -> BoxFuture<'a, Result<Vec<Visible>>> {
            Box::pin(async {
                Ok(vec![Visible::Row(SecretRow {
                    owner: Owner::System,
                    name: SecretName::new("token").unwrap(),
                    value: StoredValue::Plain(SecretString::from("v")),
                    created: Timestamp::now(),
                    updated: Timestamp::now(),
                })])
            })
        }
    }

    #[tokio::test]
    async fn a_read_only_backend_reads_and_refuses_writes_by_type() {
        let store = Store::read_only(Arc::new(OneRow));
        let action = ActionRef::new("p.a").unwrap();
        assert_eq!(store.visible_to(&action).await.unwrap().len(), 1);
        assert_eq!(store.floor_record(), None);
        assert_eq!(store.database_file(), None);
        let name = SecretName::new("token").unwrap();
        let secret = NewSecret {
            owner: Owner::System,
            name: name.clone(),
            value: StoredValue::Plain(SecretString::from("v")),
        };
        assert!(matches!(
            store.put(&secret).await,
            Err(Error::ReadOnly {
                backend: "test",
                operation: "write secrets"
            })
        ));
        assert!(matches!(
            store.delete(&Owner::System, &name).await,
            Err(Error::ReadOnly { .. })
        ));
        assert!(matches!(
            store.record_audit(&Batch::default()).await,
            Err(Error::ReadOnly {
                operation: "keep an audit trail",
                ..
            })
        ));
        assert!(matches!(
            store.list(None).await,
            Err(Error::ReadOnly { .. })
        ));
    }
}
