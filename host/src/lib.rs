//! # attune-wasm
//!
//! The secret-injection host of the Attune automation worker: it runs each Attune *action*
//! (`pack.action`) as a WebAssembly guest under wasmtime and gives it exactly the secrets its
//! pack and action may see (design: `phase-5.5-secrets-management.md`, the "seed").
//!
//! Data flow, one module per step:
//!
//! ```text
//! config ─► crypto ─► store (SQLite) ─► resolve (system → pack → action, env names)
//!        ─► runtime (engine, linker, per-execution store, limits) ─► executor ─► cli
//! ```
//!
//! Secrets are decrypted on the host only and reach a guest through two doors: the WIT import
//! `attune:action/secrets.get-secret` (components, `wit/action.wit`) and `SECRET_*` variables
//! of a WASI environment built from an explicit list (never the host's own environment).
//! Plaintexts are [`secrecy::SecretString`]s held by the execution's store and zeroized when it
//! is dropped.

#![deny(missing_docs)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod executor;
pub mod import;
pub mod names;
pub mod redact;
pub mod resolve;
pub mod rotate;
pub mod runtime;
pub mod store;
