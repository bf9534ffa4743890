//! The secret types, with no wasmtime and no database: what every other module builds on, and
//! what the fuzz targets reach with the default features off (`default-features = false`).
//!
//! ```text
//! names    SecretName, PackRef, ActionRef, Owner: checked when built; env names (SECRET_*)
//! crypto   EncryptionKey, the three ciphertext generations, key hashes (AES-256-GCM)
//! redact   Patterns, Stream: every delivered value masked out of guest output
//! ```

pub mod crypto;
pub mod names;
pub mod redact;
