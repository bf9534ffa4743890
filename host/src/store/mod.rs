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
//!             replay of the audit journal               journal: entries before the guest
//!   postgres  open (schema, advisory lock), LISTEN/NOTIFY
//! attune    Attune's attune.key, read only (the worker's source of secrets)
//! cache     rows per action, TTL and invalidation
//! row       SecretRow, Visible, StoredValue, KeyHash, NewSecret, Rotation, Replace, Written
//! decode    stored columns to typed rows
//! time      Timestamp: the one text form of a stored time
//! options   StoreOptions, OpenMode, redact_url
//! error     Error
//!
//! Public submodules, each one capability over a store:
//! resolve   which rows win (system → pack → action) and their values, decrypted
//! audit     the trail: who received which secret, when, through which door (never a value)
//! import    Attune's exported keys into this store (both ciphertext generations)
//! rotate    every ciphertext re-encrypted under a new key, in one transaction
//! ```

pub(crate) mod attune;
pub mod audit;
mod backend;
mod cache;
mod decode;
mod error;
mod files;
mod handle;
pub mod import;
mod journal;
mod options;
mod postgres;
pub mod resolve;
pub mod rotate;
mod row;
mod sql;
mod sqlite;
mod time;

pub use attune::AttuneKeys;
pub(crate) use backend::Backend;
pub use backend::BoxFuture;
pub use error::{Error, Result};
pub use handle::Store;
pub(crate) use journal::{Entry as JournalEntry, Journal};
pub use options::{redact_url, sqlite_file, OpenMode, StoreOptions};
pub use row::{
    binding, KeyHash, NewSecret, Replace, Rotation, SecretRow, StoredValue, Visible, Written,
};
pub use time::{NotATime, Timestamp};

/// Largest secret value accepted on write, in bytes (64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[cfg(test)]
pub(crate) mod tests;
