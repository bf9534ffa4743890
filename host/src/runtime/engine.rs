//! The engine shared by every execution of a process: its settings ([`RuntimeConfig`],
//! [`Pooling`]), building it with both linkers and the on-disk cache ([`Runtime::new`]), and
//! the epoch ticker thread that drives deadlines and cancellation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Config, Engine};

use super::{cache, linker, Error, Result, Runtime};

/// Epoch tick used for deadlines.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// Engine-wide settings.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Enable fuel metering (needed for [`super::Limits::fuel`]; costs some speed).
    pub fuel: bool,
    /// Directory of the host's compilation cache (compiled code keyed by the SHA-256 of the
    /// wasm and the engine settings, each entry authenticated with a key kept beside it:
    /// see `docs/secrets-management.md`, "Compilation cache"); `None` compiles every time.
    /// Holds no secret, but the host runs the code it holds: never mount it into a guest
    /// ([`crate::executor::mounts`] refuses it).
    pub cache_dir: Option<PathBuf>,
    /// Use wasmtime's pooling instance allocator (pre-reserved slots reused across
    /// executions, memory zeroed on reuse): the worker setting for many short executions.
    /// `None` allocates on demand (the CLI's setting: one execution per process).
    pub pooling: Option<Pooling>,
}

/// Sizes of the pooling allocator ([`RuntimeConfig::pooling`]).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Pooling {
    /// Most executions alive at once; one more fails with [`Error::PoolExhausted`] until one
    /// ends. Default 200. Each execution may use up to 16 core instances, 4 linear memories
    /// and 16 tables; a core module may define one memory and one table (wasmtime's pooling
    /// defaults): a guest needing more is refused at [`Runtime::load`] under pooling only.
    pub executions: u32,
    /// Largest size of one linear memory in bytes (default 256 MiB, the default
    /// [`super::Limits::max_memory`]). A guest whose initial memory is larger cannot run; a
    /// `memory.grow` past it fails inside the guest.
    pub max_memory_size: usize,
    /// Bytes of each linear memory kept mapped and zeroed with `memset` when a slot is
    /// released, instead of `madvise` (default 64 KiB: fewer page faults on reuse).
    pub keep_resident: usize,
}

impl Default for Pooling {
    fn default() -> Self {
        Self {
            executions: 200,
            max_memory_size: 256 * 1024 * 1024,
            keep_resident: 64 * 1024,
        }
    }
}

impl Pooling {
    /// The wasmtime configuration. A Rust WASI p2 command component holds about five core
    /// instances, two memories and a few tables (the guest, the p1 adapter, shims), so each
    /// execution is given room for 16 core instances, 4 memories and 16 tables.
    fn allocation(&self) -> wasmtime::PoolingAllocationConfig {
        let n = self.executions.max(1);
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        // Per-component caps equal the per-execution share, so one guest cannot take the
        // slots of the others.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n.saturating_mul(4))
            .total_tables(n.saturating_mul(16))
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .total_stacks(n)
            .max_memory_size(self.max_memory_size)
            .linear_memory_keep_resident(self.keep_resident)
            .table_keep_resident(self.keep_resident);
        pool
    }
}

impl Runtime {
    /// Builds the engine (epoch interruption on, fuel per `config`) and both linkers, and
    /// starts the epoch ticker thread (10 ms).
    ///
    /// # Errors
    /// [`Error::Host`] when wasmtime cannot be configured.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let host = |e: wasmtime::Error| Error::Host(format!("{e:#}"));
        let mut wasm = Config::new();
        wasm.epoch_interruption(true);
        wasm.consume_fuel(config.fuel);
        wasm.wasm_component_model(true);
        if let Some(pooling) = &config.pooling {
            wasm.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(
                pooling.allocation(),
            ));
        }
        let engine = Engine::new(&wasm).map_err(host)?;
        let cache =
            config
                .cache_dir
                .as_ref()
                .and_then(|dir| match cache::DiskCache::open(dir, &engine) {
                    Ok(cache) => Some(cache),
                    Err(e) => {
                        tracing::warn!("compilation cache off ({}): {e}", dir.display());
                        None
                    }
                });
        let components = linker::components(&engine)?;
        let modules = linker::modules(&engine)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("attune-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::Host(format!("cannot start epoch ticker: {e}")))?
        };
        Ok(Self {
            engine,
            components,
            modules,
            config,
            cache,
            guests: std::sync::Mutex::default(),
            ticker: Some(ticker),
            stop,
        })
    }

    /// The engine (for callers that precompile or cache).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The directory of the compilation cache in use ([`RuntimeConfig::cache_dir`], `None`
    /// when there is none or it was refused).
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().and(self.config.cache_dir.as_deref())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
