//! The sandbox: one wasmtime [`Engine`] per process, and one [`Store`](wasmtime::Store) per
//! execution with its own WASI context, limits and secret door.
//!
//! Guests are either WASI preview 2 *command components* (export `wasi:cli/run`, may import
//! `attune:action/secrets` from `wit/action.wit` and the standard `wasi:config/store` from
//! `wit/deps/config`) or WASI preview 1 *core modules* (export
//! `_start`), detected from the binary's header. A guest gets exactly what [`GuestSetup`] lists:
//! no host environment, no network, no filesystem unless a directory is mounted.
//!
//! One file per concern, in the order an execution meets them:
//!
//! ```text
//! engine   RuntimeConfig, Pooling, Runtime::new, the epoch ticker
//!   linker   what a guest may import: WASI p2 + secrets + config (components), WASI p1 (modules)
//!   secrets  the get-secret door: decisions, the one mapping to the WIT error, linker glue
//!   config_store  the wasi:config/store door over the same decisions: its mapping, linker glue
//! guest    GuestKind, Runtime::compile / load (cache.rs: the on-disk compilation cache)
//! run      GuestSetup ─► Runtime::run ─► GuestExit
//!   wasi     the WASI context: env, args, stdio (output.rs: masked, capped), mounts
//!   state    the store's data: WASI context, limiter, secret door
//!   limits   Limits, the memory limiter
//!   cancel   Cancel, ending an execution from outside
//! error    Error, and how a wasmtime error becomes an exit status or an Error
//! logging  GuestDataCap: wasmtime's own debug and trace events (guest data) kept out of logs
//! process  harden: no core file, not dumpable (before any key is in memory)
//! ```

mod cache;
mod cancel;
mod config_store;
mod engine;
mod error;
mod guest;
mod limits;
mod linker;
pub mod logging;
mod output;
pub mod process;
mod run;
mod secrets;
mod state;
mod wasi;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use wasmtime::{Engine, Linker};

pub use self::cancel::Cancel;
pub use self::config_store::{
    ConfigError, CONFIG_ACCESS_DENIED, CONFIG_INTERFACE, CONFIG_UNAVAILABLE,
};
pub use self::engine::{Pooling, RuntimeConfig};
pub use self::error::{Error, Result};
use self::guest::GuestCache;
pub use self::guest::{Guest, GuestKind, MAX_CACHED_GUESTS};
pub use self::limits::Limits;
pub use self::run::{GuestExit, GuestSetup};
pub use self::secrets::{GetAll, SecretDoor, SecretError, SECRETS_INTERFACE};
use self::state::{ComponentState, ModuleState};
pub use self::wasi::{DirMount, Output, Stdin};

pub(crate) mod bindings {
    //! Host bindings for what components may import beyond WASI p2: `attune:action/secrets`
    //! (`wit/action.wit`) and `wasi:config/store` (`wit/deps/config`, as wasmtime 48's
    //! `wasmtime-wasi-config` ships it). Only the types are used: both doors are wrapped by
    //! hand (`secrets.rs`, `config_store.rs`).
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        inline: "
            package attune:host;
            world host {
                import attune:action/secrets@0.1.0;
                import wasi:config/store@0.2.0-rc.1;
            }
        ",
        path: "../wit",
    });
}

/// The wasmtime engine and linkers, shared by all executions of a process (built by
/// [`Runtime::new`]; guests compiled by [`Runtime::load`], run by [`Runtime::run`]).
pub struct Runtime {
    engine: Engine,
    components: wasmtime::component::Linker<ComponentState>,
    modules: Linker<ModuleState>,
    config: RuntimeConfig,
    cache: Option<cache::DiskCache>,
    guests: std::sync::Mutex<GuestCache>,
    ticker: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}
