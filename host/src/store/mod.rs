//! The secret store: encrypted rows in SQLite (embedded default) or PostgreSQL behind one
//! handle, [`Store`] (the backend is chosen by URL scheme), and read-only sources of rows
//! (Attune's own `attune.key`, [`AttuneKeys`]) behind the same handle.
//!
//! Rows hold what the seed's `attune.key` holds: owner type, owner ref, name, the stored value
//! ([`StoredValue`]: plain, or a ciphertext with its [`KeyHash`]), created/updated. The store
//! never decrypts: it moves stored text only.
//!
//! Files, one concern each:
//!
//! ```text
//! handle    Store: open by URL, floor record, row cache ─► Backend (trait, backend)
//! backend   what a backend does; read-only ones answer Error::ReadOnly to the rest
//! sql       the SQL backends' one implementation, over a Dialect:
//!   sqlite    open (files, lock), WAL checkpoint        files: path checks, lock file
//!   postgres  open (schema, advisory lock), LISTEN/NOTIFY
//! attune    Attune's attune.key, read only (the worker's source of secrets)
//! cache     rows per action, TTL and invalidation
//! row       SecretRow, StoredValue, KeyHash, NewSecret, Rotation, Replace, Written
//! decode    stored columns to typed rows
//! options   StoreOptions, OpenMode, redact_url
//! error     Error
//! ```

mod attune;
mod backend;
mod cache;
mod decode;
mod error;
mod files;
mod handle;
mod options;
mod postgres;
mod row;
mod sql;
mod sqlite;

pub use attune::AttuneKeys;
pub(crate) use backend::Backend;
pub use backend::BoxFuture;
pub use error::{Error, Result};
pub use handle::Store;
pub use options::{redact_url, sqlite_file, OpenMode, StoreOptions};
pub use row::{binding, KeyHash, NewSecret, Replace, Rotation, SecretRow, StoredValue, Written};

/// Largest secret value accepted on write, in bytes (64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

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
pub(crate) mod tests;
