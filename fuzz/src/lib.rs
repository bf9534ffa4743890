//! The host's pure modules, compiled in by path for fuzzing.
#![allow(missing_docs, dead_code)]

#[path = "../../host/src/crypto.rs"]
pub mod crypto;
#[path = "../../host/src/names.rs"]
pub mod names;
#[path = "../../host/src/redact/mod.rs"]
pub mod redact;
