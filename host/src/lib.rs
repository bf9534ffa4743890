//! # attune-wasm
//!
//! The secret-injection host of the Attune automation worker: it runs each Attune *action*
//! (`pack.action`) as a WebAssembly guest under wasmtime and gives it exactly the secrets its
//! pack and action may see (design: `phase-5.5-secrets-management.md`, the "seed").
//!
//! Data flow, one module per step:
//!
//! ```text
//! config ─► crypto ─► store (SQLite, PostgreSQL; import, rotate: bulk writes)
//!        ─► resolve (names; system → pack → action, env names)
//!        ─► runtime (engine, linker, guest loading, WASI context, secrets door, limits, run;
//!                    redact: output masking)
//!        ─► executor (mounts: what no mount may reach; audit: who received which secret)
//!        ─► worker (Attune's queues and tables)
//! process (hardening) and logging (the guest-data cap): before anything else
//! ```
//!
//! The command line (`attune-wasm`, `host/src/cli/`) belongs to the binary: it is built on the
//! API of this library, not part of it.
//!
//! Secrets are decrypted on the host only and reach a guest through two doors: the WIT import
//! `attune:action/secrets.get-secret` (components, `wit/action.wit`) and `SECRET_*` variables
//! of a WASI environment built from an explicit list (never the host's own environment).
//! Plaintexts are [`secrecy::SecretString`]s held by the execution's store and zeroized when it
//! is dropped.
//!
//! ## Embedding: many executions in one process (the worker)
//!
//! Build one [`runtime::Runtime`] (pooled instance slots), one [`store::Store`] (optionally
//! caching the rows each action sees) and one [`executor::Executor`]; compile each action once
//! with [`runtime::Runtime::load`] (reused by content hash); then run executions concurrently,
//! each in its own wasmtime store with its own secrets; mounts are checked against the store,
//! the cache and `/proc`, `/sys`, `/dev` ([`mounts`]; add the data directory and the
//! configuration file with [`executor::Executor::with_boundary`]). Audit records are written
//! in the background: [`executor::Executor::flush`] before shutting down. Call
//! [`process::harden`] first, before any key is in memory.
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//! use attune_wasm::{crypto::EncryptionKey, executor::*, names::ActionRef, runtime::*, store::*};
//!
//! # async fn worker() -> Result<(), Box<dyn std::error::Error>> {
//! attune_wasm::process::harden()?; // no core file, not dumpable: before any key
//! let runtime = Arc::new(Runtime::new(RuntimeConfig {
//!     pooling: Some(Pooling::default()),   // up to 200 executions alive at once
//!     ..RuntimeConfig::default()
//! })?);
//! let mut options = StoreOptions::new("postgres://attune@db/attune");
//! options.cache_ttl = Some(Duration::from_secs(5)); // emptied on change (NOTIFY trigger)
//! let store = Store::open_with(&options, OpenMode::MustExist).await?;
//! let key = EncryptionKey::from_password(&"a-password-of-32-bytes-or-more....".into())?;
//! let executor = Arc::new(Executor::new(runtime, SecretSource::Store(store), Some(key), Strictness::Strict));
//!
//! let guest = executor.runtime().load("deploy.wasm", &std::fs::read("deploy.wasm")?)?;
//! let report = executor
//!     .execute(&guest, Execution {
//!         stdin: Stdin::Bytes(r#"{"target":"prod"}"#.into()),
//!         ..Execution::new(ActionRef::new("mypack.deploy")?, "deploy.wasm")
//!     })
//!     .await?;
//! println!("exit {}", report.exit.code);
//! executor.flush().await;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

#[cfg(feature = "host")]
pub mod audit;
#[cfg(feature = "host")]
pub mod config;
pub mod crypto;
#[cfg(feature = "host")]
pub mod executor;
#[cfg(feature = "host")]
pub mod import;
#[cfg(feature = "host")]
pub mod logging;
#[cfg(feature = "host")]
pub mod mounts;
pub mod names;
#[cfg(feature = "host")]
pub mod process;
pub mod redact;
#[cfg(feature = "host")]
pub mod resolve;
#[cfg(feature = "host")]
pub mod rotate;
#[cfg(feature = "host")]
pub mod runtime;
#[cfg(feature = "host")]
pub mod store;
#[cfg(feature = "host")]
pub mod worker;
