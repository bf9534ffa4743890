//! # attune-wasm
//!
//! The secret-injection host of the Attune automation worker: it runs each Attune *action*
//! (`pack.action`) as a WebAssembly guest under wasmtime and gives it exactly the secrets its
//! pack and action may see (design: `phase-5.5-secrets-management.md`, the "seed").
//!
//! Data flow, one module per step, in the order an execution meets them:
//!
//! ```text
//! config ─► secrets::crypto (EncryptionKey) ─► store (SQLite, PostgreSQL, Attune's attune.key)
//!        ─► store::resolve (secrets::names; system → pack → action, env names)
//!        ─► executor (executor::mounts: what no mount may reach; store::audit: who received
//!                     which secret, when, through which door)
//!        ─► runtime (engine, linker, guest loading, WASI context, the secrets door, limits,
//!                    run; secrets::redact: output masking; runtime::logging: the guest-data cap)
//!        ─► worker (Attune's queues and tables: many executions per process)
//! store::import, store::rotate: bulk writes (Attune's exported keys, a new key)
//! runtime::process::harden: before anything else
//! ```
//!
//! Six public modules; the paved path is re-exported here (below). `secrets` builds without the
//! default `host` feature (no wasmtime, no database): the fuzz targets use it so.
//!
//! The command line (`attune-wasm`, `host/src/cli/`) belongs to the binary: it is built on the
//! API of this library, not part of it.
//!
//! Secrets are decrypted on the host only and reach a guest through three doors: the WIT import
//! `attune:action/secrets.get-secret` (components, `wit/action.wit`), the standard
//! `wasi:config/store` (`get`, `get-all`; components, `wit/deps/config/`; `get-all` can be
//! refused with [`Executor::with_config_get_all`]) and `SECRET_*` variables of a WASI
//! environment built from an explicit list (never the host's own environment).
//! Plaintexts are [`secrecy::SecretString`]s held by the execution's store and zeroized when it
//! is dropped.
//!
//! ## Embedding: many executions in one process (the worker)
//!
//! Build one [`Runtime`] (pooled instance slots), one [`Store`] (optionally caching the rows
//! each action sees) and one [`Executor`]; compile each action once with [`Runtime::load`]
//! (reused by content hash); then run executions concurrently, each in its own wasmtime store
//! with its own secrets; mounts are checked against the store, the cache and `/proc`, `/sys`,
//! `/dev` ([`executor::Boundary`]; add the data directory and the configuration file with
//! [`Executor::with_boundary`]). Audit records are written in the background:
//! [`Executor::flush`] before shutting down. Call [`harden`] first, before any key is in
//! memory; add [`GuestDataCap`] to your `tracing` subscriber.
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//! use attune_wasm::{
//!     ActionRef, EncryptionKey, Execution, Executor, OpenMode, Pooling, Runtime, RuntimeConfig,
//!     SecretSource, Stdin, Store, StoreOptions, Strictness,
//! };
//!
//! # async fn worker() -> Result<(), Box<dyn std::error::Error>> {
//! attune_wasm::harden()?; // no core file, not dumpable: before any key
//! let mut config = RuntimeConfig::default();
//! config.pooling = Some(Pooling::default()); // up to 200 executions alive at once
//! let runtime = Arc::new(Runtime::new(config)?);
//! let mut options = StoreOptions::new("postgres://attune@db/attune");
//! options.cache_ttl = Some(Duration::from_secs(5)); // emptied on change (NOTIFY trigger)
//! let store = Store::open_with(&options, OpenMode::MustExist).await?;
//! let key = EncryptionKey::from_password(&"a-password-of-32-bytes-or-more....".into())?;
//! let executor = Arc::new(Executor::new(runtime, SecretSource::Store(store), Some(key), Strictness::Strict));
//!
//! let guest = executor.runtime().load("deploy.wasm", &std::fs::read("deploy.wasm")?)?;
//! let mut execution = Execution::new(ActionRef::new("mypack.deploy")?, "deploy.wasm");
//! execution.stdin = Stdin::Bytes(r#"{"target":"prod"}"#.into());
//! let report = executor.execute(&guest, execution).await?;
//! println!("exit {}", report.exit.code);
//! executor.flush().await;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

#[cfg(feature = "host")]
pub mod config;
#[cfg(feature = "host")]
pub mod executor;
#[cfg(feature = "host")]
pub mod runtime;
pub mod secrets;
#[cfg(feature = "host")]
pub mod store;
#[cfg(feature = "host")]
pub mod worker;

#[cfg(feature = "host")]
pub use executor::{Execution, Executor, Report, SecretSource, Strictness};
#[cfg(feature = "host")]
pub use runtime::logging::GuestDataCap;
#[cfg(feature = "host")]
pub use runtime::process::harden;
#[cfg(feature = "host")]
pub use runtime::{Guest, Limits, Output, Pooling, Runtime, RuntimeConfig, Stdin};
pub use secrets::crypto::EncryptionKey;
pub use secrets::names::{ActionRef, Owner, PackRef, SecretName};
#[cfg(feature = "host")]
pub use store::{OpenMode, Store, StoreOptions};
