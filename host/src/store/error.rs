//! Store failures: one enum for every backend. Messages name the database (password redacted)
//! and the secret ref, never a value.
//!
//! A driver error is shown in the message of the variant that wraps it and is not chained as
//! its `source()` as well, so that an error chain printed with `{:#}` (the CLI's one line)
//! shows it once.

use super::KeyHash;
use crate::secrets::crypto::Generation;

/// Store failures. Messages name the database (password redacted) and the secret ref, never
/// a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database could not be opened or created.
    #[error("cannot open secret store {url}: {cause}")]
    Open {
        /// Database URL with any password replaced by `***`.
        url: String,
        /// Underlying driver error (shown in the message, so not chained as a source).
        cause: sqlx::Error,
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
    /// The PostgreSQL schema holds Attune's own tables (`key`, `action`, `execution`): the
    /// store never creates its tables among Attune's (issue 12: Attune's schema is read only).
    #[error(
        "database schema \"{0}\" holds Attune's own tables (key, action, execution): attune-wasm keeps its tables in a schema of its own; set database.schema (the worker uses attune_wasm)"
    )]
    AttuneSchema(String),
    /// Applying migrations failed.
    #[error("migrating secret store failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("secret store query failed: {0}")]
    Query(sqlx::Error),
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
    #[error("cannot lock secret store {path}: {cause}")]
    Lock {
        /// The lock file (SQLite) or schema (PostgreSQL).
        path: String,
        /// Underlying error (shown in the message, so not chained as a source).
        cause: std::io::Error,
    },
    /// The backend does not do this (a read-only backend asked to write, or to keep an audit
    /// trail).
    #[error("the {backend} secret store cannot {operation}: it is read only")]
    ReadOnly {
        /// Which backend (e.g. `attune.key`).
        backend: &'static str,
        /// What was asked (e.g. `write secrets`).
        operation: &'static str,
    },
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Query(e)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error of a write of `secret_ref` refused by [`super::Replace::Readable`]: names the row
/// and both key hashes. `stored` is the stored row's key hash and value as read after the
/// refusal (`None` if it was deleted since). A blob-format row's hash is withheld, as in
/// [`crate::secrets::crypto`].
pub(super) fn foreign_key(
    secret_ref: String,
    written: Option<&KeyHash>,
    writer: Option<&KeyHash>,
    stored: Option<(Option<String>, String)>,
) -> Error {
    let stored = match stored {
        Some((Some(hash), value)) if Generation::of(&value) != Generation::Blob => {
            hash.chars().flat_map(char::escape_default).collect()
        }
        Some((Some(_), _)) => "(withheld: a blob-format key hash may be a key)".to_owned(),
        Some((None, _)) | None => "none".to_owned(),
    };
    Error::ForeignKey {
        secret_ref,
        stored,
        writing: written
            .or(writer)
            .map_or("none", KeyHash::as_str)
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `{:#}` (the CLI's error line) shows a driver error once: it is in the message and not
    /// chained as a source as well.
    #[test]
    fn a_wrapped_driver_error_is_printed_once_in_the_chain() {
        let io = || std::io::Error::other("disk on fire");
        for error in [
            Error::from(sqlx::Error::Io(io())),
            Error::Open {
                url: "sqlite:x.db".into(),
                cause: sqlx::Error::Io(io()),
            },
            Error::Lock {
                path: "x.db.lock".into(),
                cause: io(),
            },
            Error::from(sqlx::migrate::MigrateError::Execute(sqlx::Error::Io(io()))),
        ] {
            let line = format!("{:#}", anyhow::Error::from(error));
            assert_eq!(line.matches("disk on fire").count(), 1, "{line}");
        }
    }
}
