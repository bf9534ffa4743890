//! The sandbox: one wasmtime [`Engine`] per process, and one [`Store`] per execution with its
//! own WASI context, limits and secret door.
//!
//! Guests are either WASI preview 2 *command components* (export `wasi:cli/run`, may import
//! `attune:action/secrets` from `wit/action.wit`) or WASI preview 1 *core modules* (export
//! `_start`), detected from the binary's header. A guest gets exactly what [`GuestSetup`] lists:
//! no host environment, no network, no filesystem unless a directory is mounted.

mod cache;
mod cancel;
mod output;
mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store, Trap};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, ResourceTable, WasiCtxBuilder};

pub use self::cancel::Cancel;
pub use self::state::SecretDoor;
use self::state::{ComponentState, Limiter, ModuleState};

pub(crate) mod bindings {
    //! Host bindings for `wit/action.wit` (world `action`).
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "action",
    });
}

pub use bindings::attune::action::secrets::SecretError;

/// The WIT interface of the `get-secret` door (`wit/action.wit`).
pub const SECRETS_INTERFACE: &str = "attune:action/secrets@0.1.0";

/// Epoch tick used for deadlines.
const TICK: Duration = Duration::from_millis(10);

/// Runtime failures. None carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not a WebAssembly binary.
    #[error("{0} is not a WebAssembly binary (no \\0asm header)")]
    NotWasm(String),
    /// A WebAssembly binary of a version or layer this host does not run.
    #[error("{0} is a WebAssembly binary of an unsupported version/layer")]
    UnsupportedBinary(String),
    /// Compilation or validation failed.
    #[error("cannot compile {name}: {reason}")]
    Compile {
        /// Guest name.
        name: String,
        /// wasmtime's message.
        reason: String,
    },
    /// The guest imports something this host does not provide, or lacks its entry point.
    #[error("cannot link {name}: {reason}")]
    Link {
        /// Guest name.
        name: String,
        /// What is missing (wasmtime names the import).
        reason: String,
    },
    /// A `--dir` mount could not be opened.
    #[error("cannot mount directory {host}: {reason}")]
    Dir {
        /// Host path.
        host: PathBuf,
        /// Why.
        reason: String,
    },
    /// The wall-clock deadline passed.
    #[error("guest timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The guest ended, but what it wrote could not be passed on to the host's stdout or
    /// stderr before the deadline: nobody reads that pipe.
    #[error(
        "guest output could not be written within the timeout of {}: nobody is reading the host's stdout or stderr",
        humantime::format_duration(*.0)
    )]
    OutputBlocked(Duration),
    /// The caller cancelled the execution ([`Cancel::cancel`]).
    #[error("execution cancelled")]
    Cancelled,
    /// The guest tried to grow its memory past the limit.
    #[error("guest exceeded the memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The fuel budget ran out.
    #[error("guest ran out of fuel ({0} units)")]
    OutOfFuel(u64),
    /// The guest held more WASI resource handles at once than [`Limits::max_resources`].
    #[error(
        "guest exceeded the limit of {0} open handles (files, directories, streams, pollables)"
    )]
    ResourceLimit(usize),
    /// A WASI p1 guest called `proc_exit` with a status WASI does not allow (126 and up).
    #[error("guest exited with status {0}, outside the range 0-125 that WASI allows")]
    ExitStatus(u32),
    /// The guest trapped.
    #[error("guest trapped: {0}")]
    Trap(String),
    /// Every pooled slot of some kind is in use ([`Pooling::executions`] executions running).
    #[error("too many executions at once: {0}; retry when one has finished")]
    PoolExhausted(String),
    /// An engine or host failure.
    #[error("runtime failure: {0}")]
    Host(String),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of guest a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// WASI preview 2 command component.
    Component,
    /// WASI preview 1 core module.
    Module,
}

impl GuestKind {
    /// Detects the kind from the binary header (magic `\0asm`, then version 1 for a core
    /// module or version `0x0d` layer 1 for a component).
    ///
    /// # Errors
    /// [`Error::NotWasm`] or [`Error::UnsupportedBinary`], naming `name`.
    pub fn detect(name: &str, bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(Error::NotWasm(name.to_owned()));
        }
        match bytes[4..8] {
            [1, 0, 0, 0] => Ok(Self::Module),
            [0x0d, 0, 1, 0] => Ok(Self::Component),
            _ => Err(Error::UnsupportedBinary(name.to_owned())),
        }
    }
}

/// Resource limits of one execution.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock deadline (default 30 s).
    pub timeout: Duration,
    /// Linear memory cap in bytes, all memories together (default 256 MiB).
    pub max_memory: usize,
    /// Fuel budget (roughly one unit per wasm instruction); `None` = unmetered. Needs a
    /// runtime built with [`RuntimeConfig::fuel`].
    pub fuel: Option<u64>,
    /// Most `get-secret` calls per execution (default 10,000).
    pub secret_calls: u64,
    /// Most WASI resource handles (open files and directories, streams, pollables) a guest
    /// holds at once (default 10,000); each costs host memory the memory limit does not count.
    pub max_resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_memory: 256 * 1024 * 1024,
            fuel: None,
            secret_calls: 10_000,
            max_resources: 10_000,
        }
    }
}

/// Engine-wide settings.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Enable fuel metering (needed for [`Limits::fuel`]; costs some speed).
    pub fuel: bool,
    /// Directory of the host's compilation cache (compiled code keyed by the SHA-256 of the
    /// wasm and the engine settings, each entry authenticated with a key kept beside it:
    /// see `docs/secrets-management.md`, "Compilation cache"); `None` compiles every time.
    /// Holds no secret, but the host runs the code it holds: never mount it into a guest
    /// ([`crate::mounts`] refuses it).
    pub cache_dir: Option<PathBuf>,
    /// Use wasmtime's pooling instance allocator (pre-reserved slots reused across
    /// executions, memory zeroed on reuse): the worker setting for many short executions.
    /// `None` allocates on demand (the CLI's setting: one execution per process).
    pub pooling: Option<Pooling>,
}

/// Sizes of the pooling allocator ([`RuntimeConfig::pooling`]).
#[derive(Debug, Clone, Copy)]
pub struct Pooling {
    /// Most executions alive at once; one more fails with [`Error::PoolExhausted`] until one
    /// ends. Default 200. Each execution may use up to 16 core instances, 4 linear memories
    /// and 16 tables; a core module may define one memory and one table (wasmtime's pooling
    /// defaults): a guest needing more is refused at [`Runtime::load`] under pooling only.
    pub executions: u32,
    /// Largest size of one linear memory in bytes (default 256 MiB, the default
    /// [`Limits::max_memory`]). A guest whose initial memory is larger cannot run; a
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

/// A directory mounted into the guest (`--dir HOST::GUEST`).
#[derive(Debug, Clone)]
pub struct DirMount {
    /// Path on the host.
    pub host: PathBuf,
    /// Path the guest sees.
    pub guest: String,
    /// Mounted read-only (`--dir-ro`): the guest can read but not create, change or delete.
    pub read_only: bool,
}

/// Where guest stdin comes from.
pub enum Stdin {
    /// Nothing (immediate end of file).
    Empty,
    /// These bytes.
    Bytes(Bytes),
    /// The host process's stdin (CLI use).
    Inherit,
}

/// Where guest stdout/stderr go. Either way the output is masked and capped at
/// [`GuestSetup::max_output`] bytes per stream: writes past the cap fail in the guest and
/// [`GuestExit::output_capped`] is set; nothing traps.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// The host process's stream (CLI use), written by a thread of its own: a host stream
    /// nobody reads makes the guest wait (backpressure), never the deadline.
    Inherit,
    /// Captured in memory, up to this many bytes (and [`GuestSetup::max_output`], whichever
    /// is smaller); past it, writes fail.
    Capture(usize),
}

/// Everything one execution's guest gets.
pub struct GuestSetup {
    /// `argv`, including `argv[0]`.
    pub args: Vec<String>,
    /// Plain environment variables (metadata and `--env`).
    pub env: Vec<(String, String)>,
    /// Secret environment variables (the env door).
    pub secret_env: Vec<(String, SecretString)>,
    /// Directory mounts.
    pub dirs: Vec<DirMount>,
    /// Stdin source.
    pub stdin: Stdin,
    /// Stdout sink.
    pub stdout: Output,
    /// Stderr sink.
    pub stderr: Output,
    /// Limits.
    pub limits: Limits,
    /// The `get-secret` door.
    pub secrets: SecretDoor,
    /// Values masked in stdout/stderr (empty: no masking).
    pub redact: crate::redact::Patterns,
    /// Most bytes of stdout, and separately of stderr, passed through or captured; further
    /// writes fail.
    pub max_output: u64,
    /// Ends the execution at once when cancelled ([`Error::Cancelled`]).
    pub cancel: Cancel,
}

/// How an execution ended.
#[derive(Debug)]
pub struct GuestExit {
    /// Exit status: 0 for success, the guest's own code for `exit(n)`.
    pub code: i32,
    /// Captured stdout (with [`Output::Capture`]).
    pub stdout: Option<Bytes>,
    /// Captured stderr (with [`Output::Capture`]).
    pub stderr: Option<Bytes>,
    /// `get-secret` calls made.
    pub secret_calls: u64,
    /// The guest wrote more than [`GuestSetup::max_output`] bytes to a stream.
    pub output_capped: bool,
}

/// A compiled and linked guest, ready to instantiate any number of times.
#[derive(Clone)]
pub struct Guest(Compiled);

#[derive(Clone)]
enum Compiled {
    Component(CommandPre<ComponentState>),
    Module(InstancePre<ModuleState>),
}

impl Guest {
    /// Whether this is a component or a core module.
    pub fn kind(&self) -> GuestKind {
        match self.0 {
            Compiled::Component(_) => GuestKind::Component,
            Compiled::Module(_) => GuestKind::Module,
        }
    }
}

/// Most guests [`Runtime::load`] keeps compiled in memory; past it the least recently loaded
/// is dropped (it stays in the on-disk cache, if one is configured).
pub const MAX_CACHED_GUESTS: usize = 64;

/// The wasmtime engine and linkers, shared by all executions of a process.
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

/// Compiled guests by SHA-256 of their bytes, most recently loaded last.
#[derive(Default)]
struct GuestCache {
    entries: Vec<([u8; 32], Guest)>,
}

impl GuestCache {
    fn get(&mut self, hash: &[u8; 32]) -> Option<Guest> {
        let at = self.entries.iter().position(|(h, _)| h == hash)?;
        let entry = self.entries.remove(at);
        let guest = entry.1.clone();
        self.entries.push(entry);
        Some(guest)
    }

    fn insert(&mut self, hash: [u8; 32], guest: Guest) {
        self.entries.retain(|(h, _)| *h != hash);
        if self.entries.len() >= MAX_CACHED_GUESTS {
            self.entries.remove(0);
        }
        self.entries.push((hash, guest));
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

        let mut components = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut components).map_err(host)?;
        // `get-secret` by hand rather than through the bindgen `Host` trait: the name arrives as
        // a `WasmStr` (a view of guest memory), so an oversized name is refused before it is
        // copied into the host.
        components
            .instance(SECRETS_INTERFACE)
            .and_then(|mut secrets| {
                secrets.func_wrap(
                    "get-secret",
                    |mut store: wasmtime::StoreContextMut<'_, ComponentState>,
                     (name,): (wasmtime::component::WasmStr,)| {
                        let name = {
                            let text = name.to_str(&store)?;
                            (text.len() <= crate::names::MAX_NAME_BYTES).then(|| text.into_owned())
                        };
                        let answer = store.data_mut().get_secret(name);
                        // The one place a plaintext leaves the host through this door: copied
                        // for wasmtime to lower into guest memory (that copy is freed, not
                        // zeroized: docs/secrets-management.md, "Limits").
                        Ok((answer.map(|v| v.expose_secret().to_owned()),))
                    },
                )
            })
            .map_err(host)?;

        let mut modules = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut modules, |s: &mut ModuleState| &mut s.wasi)
            .map_err(host)?;
        // `proc_exit` replaced so that a status WASI does not allow is a typed error
        // (wasmtime-wasi reports it as an untyped message).
        modules.allow_shadowing(true);
        modules
            .func_wrap(
                "wasi_snapshot_preview1",
                "proc_exit",
                |status: i32| -> wasmtime::Result<()> {
                    // The WASI `exitcode` is a u32 passed as an i32.
                    let status = status.cast_unsigned();
                    match i32::try_from(status) {
                        Ok(code) if status < 126 => Err(wasmtime::Error::new(I32Exit(code))),
                        _ => Err(wasmtime::Error::new(ExitOutOfRange(status))),
                    }
                },
            )
            .map_err(host)?;
        modules.allow_shadowing(false);

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

    /// As [`Runtime::compile`], but returns the guest already compiled from the same bytes
    /// (same SHA-256) by this runtime when there is one: the worker's path, where the same
    /// action runs many times. Keeps up to [`MAX_CACHED_GUESTS`] guests; failures are not
    /// kept.
    ///
    /// # Errors
    /// As [`Runtime::compile`].
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Guest> {
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::digest(bytes).into();
        if let Some(guest) = self.cached(&hash) {
            return Ok(guest);
        }
        let guest = self.compile(name, bytes)?;
        self.guests().insert(hash, guest.clone());
        Ok(guest)
    }

    /// Number of guests [`Runtime::load`] holds compiled.
    pub fn cached_guests(&self) -> usize {
        self.guests().entries.len()
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<Guest> {
        self.guests().get(hash)
    }

    fn guests(&self) -> std::sync::MutexGuard<'_, GuestCache> {
        // A poisoned lock only means another thread panicked while moving entries: the
        // cache is still a valid list, so it is used as is.
        self.guests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compiles and links `bytes` (named `name` in errors), every time (the on-disk cache of
    /// [`RuntimeConfig::cache_dir`] still spares the compiler when it holds the code).
    ///
    /// # Errors
    /// [`Error::NotWasm`], [`Error::UnsupportedBinary`], [`Error::Compile`], or
    /// [`Error::Link`] when an import is not provided (wasmtime names it) or the entry point
    /// (`wasi:cli/run` / `_start`) is missing.
    pub fn compile(&self, name: &str, bytes: &[u8]) -> Result<Guest> {
        let compile = |e: wasmtime::Error| Error::Compile {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let link = |e: wasmtime::Error| Error::Link {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let kind = GuestKind::detect(name, bytes)?;
        match kind {
            GuestKind::Component => {
                let component = self
                    .cached_or_compiled(kind, bytes, |bytes| Component::new(&self.engine, bytes))
                    .map_err(compile)?;
                let pre = self.components.instantiate_pre(&component).map_err(link)?;
                let pre = CommandPre::new(pre).map_err(|e| Error::Link {
                    name: name.to_owned(),
                    reason: format!(
                        "a component action must export wasi:cli/run (a WASI p2 command): {e:#}"
                    ),
                })?;
                Ok(Guest(Compiled::Component(pre)))
            }
            GuestKind::Module => {
                let module = self
                    .cached_or_compiled(kind, bytes, |bytes| Module::new(&self.engine, bytes))
                    .map_err(compile)?;
                let is_command = matches!(
                    module.get_export("_start"),
                    Some(wasmtime::ExternType::Func(f))
                        if f.params().len() == 0 && f.results().len() == 0
                );
                if !is_command {
                    return Err(Error::Link {
                        name: name.to_owned(),
                        reason: "a core module action must export a function _start: [] -> [] (a WASI p1 command)"
                            .into(),
                    });
                }
                let pre = self.modules.instantiate_pre(&module).map_err(link)?;
                Ok(Guest(Compiled::Module(pre)))
            }
        }
    }

    /// The compiled `bytes`: from the disk cache when it holds a verified entry for them,
    /// else compiled by `compile` and stored there.
    fn cached_or_compiled<T: cache::Artifact>(
        &self,
        kind: GuestKind,
        bytes: &[u8],
        compile: impl FnOnce(&[u8]) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<T> {
        let Some(cache) = &self.cache else {
            return compile(bytes);
        };
        use sha2::Digest;
        let entry = cache.entry(kind, &sha2::Sha256::digest(bytes).into());
        if let Some(artifact) = cache.load(&entry) {
            match T::from_verified(&self.engine, &artifact) {
                Ok(compiled) => return Ok(compiled),
                Err(e) => cache.reject(&entry, &format!("wasmtime refused it: {e}")),
            }
        }
        let compiled = compile(bytes)?;
        match compiled.to_bytes() {
            Ok(artifact) => cache.store(&entry, &artifact),
            Err(e) => tracing::warn!(
                "cannot write compilation cache entry {}: {e}",
                entry.display()
            ),
        }
        Ok(compiled)
    }

    /// Runs `guest` once in a fresh store built from `setup`. The store, and with it every
    /// plaintext of the execution, is dropped before this returns.
    ///
    /// The run ends when the guest ends, at the deadline ([`Limits::timeout`], also while
    /// the guest waits in a host call: stdin, a full output pipe), or when
    /// [`GuestSetup::cancel`] is cancelled. Output passed through ([`Output::Inherit`]) is
    /// then written out, waiting at most until the deadline.
    ///
    /// # Errors
    /// [`Error::Dir`], [`Error::Timeout`], [`Error::Cancelled`], [`Error::OutputBlocked`],
    /// [`Error::MemoryLimit`], [`Error::OutOfFuel`], [`Error::Trap`], [`Error::Host`]. A
    /// guest's own non-zero exit is not an error.
    pub async fn run(&self, guest: &Guest, setup: GuestSetup) -> Result<GuestExit> {
        let limits = setup.limits;
        let cancel = setup.cancel.clone();
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let deadline = Instant::now() + limits.timeout.min(MAX_TIMEOUT);
        let (builder, outputs) = wasi_builder(&setup)?;
        let limiter = Limiter::new(limits.max_memory);
        // Deadline and cancellation: the epoch callback stops guests running wasm; the outer
        // timeout and `select!` also cover a guest waiting in a host call (e.g. reading stdin
        // or writing to a full pipe).
        let run = async {
            match &guest.0 {
                Compiled::Component(pre) => {
                    let mut builder = builder;
                    let mut table = ResourceTable::new();
                    table.set_max_capacity(limits.max_resources);
                    let state = ComponentState {
                        ctx: builder.build(),
                        table,
                        limiter,
                        secrets: setup.secrets,
                    };
                    let mut store = Store::new(&self.engine, state);
                    self.prepare(&mut store, limits, deadline, &cancel, |s| &mut s.limiter)?;
                    let result = async {
                        let command = pre.instantiate_async(&mut store).await?;
                        command.wasi_cli_run().call_run(&mut store).await
                    }
                    .await;
                    let calls = store.data().secrets.calls();
                    let code = match result {
                        Ok(Ok(())) => Ok(0),
                        Ok(Err(())) => Ok(1),
                        Err(e) => classify(e, store.data().limiter.hit, limits),
                    };
                    Ok::<_, Error>((code?, calls))
                }
                Compiled::Module(pre) => {
                    let mut builder = builder;
                    let mut wasi = builder.build_p1();
                    wasmtime_wasi::WasiView::ctx(&mut wasi)
                        .table
                        .set_max_capacity(limits.max_resources);
                    let state = ModuleState {
                        wasi,
                        limiter,
                        _secrets: setup.secrets,
                    };
                    let mut store = Store::new(&self.engine, state);
                    self.prepare(&mut store, limits, deadline, &cancel, |s| &mut s.limiter)?;
                    let result = async {
                        let instance = pre.instantiate_async(&mut store).await?;
                        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                        start.call_async(&mut store, ()).await
                    }
                    .await;
                    let code = match result {
                        Ok(()) => Ok(0),
                        Err(e) => classify(e, store.data().limiter.hit, limits),
                    };
                    Ok((code?, 0))
                }
            }
        };
        let grace = limits.timeout.saturating_add(TICK * 10);
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Error::Cancelled),
            ended = tokio::time::timeout(grace, run) => {
                ended.map_err(|_| Error::Timeout(limits.timeout)).and_then(|r| r)
            }
        };
        // Whatever the outcome, what the masker held back is handed over (masked), and what
        // the guest wrote is passed on: until the deadline, or briefly after a timeout (what
        // the guest wrote before it, when someone reads it). Cancelled runs end at once.
        let output_capped = outputs.finish();
        if !matches!(result, Err(Error::Cancelled)) {
            let until = deadline.max(Instant::now() + DRAIN_AFTER_DEADLINE);
            let drained = tokio::select! {
                biased;
                () = cancel.cancelled() => Err(Error::Cancelled),
                drained = tokio::time::timeout_at(until.into(), outputs.drained()) => {
                    drained.map_err(|_| Error::OutputBlocked(limits.timeout))
                }
            };
            // A guest error (the timeout first of all) is the outcome to report.
            if result.is_ok() {
                drained?;
            }
        }
        let (code, secret_calls) = result?;
        Ok(GuestExit {
            code,
            stdout: outputs.stdout.as_ref().map(output::GuestOutput::contents),
            stderr: outputs.stderr.as_ref().map(output::GuestOutput::contents),
            secret_calls,
            output_capped,
        })
    }

    /// Installs the memory limiter, the deadline and the cancellation check (an epoch
    /// callback every [`TICK`]: the guest traps with [`Trap::Interrupt`] past `deadline`, or
    /// with [`cancel::Cancelled`] once `cancel` is cancelled, and otherwise yields to the
    /// async executor), and the fuel budget.
    fn prepare<T: 'static>(
        &self,
        store: &mut Store<T>,
        limits: Limits,
        deadline: Instant,
        cancel: &Cancel,
        limiter: fn(&mut T) -> &mut Limiter,
    ) -> Result<()> {
        store.limiter(move |s| limiter(s) as &mut dyn wasmtime::ResourceLimiter);
        let cancel = cancel.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if cancel.is_cancelled() {
                return Err(wasmtime::Error::new(cancel::Cancelled));
            }
            if Instant::now() >= deadline {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            // Yield to the executor at every tick: a guest that computes without calling
            // the host would otherwise hold its executor thread until it ends, starving every
            // other task there (other guests' completions, database and broker I/O). tokio's
            // `yield_now` lets the scheduler run the other ready tasks first (wasmtime's
            // recommendation for tokio).
            Ok(wasmtime::UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        if self.config.fuel {
            store
                .set_fuel(limits.fuel.unwrap_or(u64::MAX / 2))
                .map_err(|e| Error::Host(format!("{e:#}")))?;
        }
        Ok(())
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

/// Longest deadline [`Runtime::run`] computes with (a year): a longer [`Limits::timeout`]
/// runs as long as this, and an `Instant` this far ahead never overflows.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long pass-through output is still written out after the deadline passed (a timed-out
/// guest's last lines, when someone reads them).
const DRAIN_AFTER_DEADLINE: Duration = Duration::from_millis(200);

/// The guest's output streams: captured or passed through (masked and capped either way).
struct Outputs {
    stdout: Option<output::GuestOutput>,
    stderr: Option<output::GuestOutput>,
    passthrough: Vec<output::GuestOutput>,
}

impl Outputs {
    /// Ends every stream (what the masker held back is handed over); `true` if one hit its
    /// cap.
    fn finish(&self) -> bool {
        // Every stream is finished, even after one reports its cap.
        let mut capped = false;
        for output in self
            .stdout
            .iter()
            .chain(&self.stderr)
            .chain(&self.passthrough)
        {
            capped |= output.finish();
        }
        capped
    }

    /// Waits until the pass-through streams have written everything out.
    async fn drained(&self) {
        for output in &self.passthrough {
            output.drained().await;
        }
    }
}

impl Drop for Outputs {
    /// A run dropped midway (its future cancelled) still ends its streams, so that their
    /// writer threads end.
    fn drop(&mut self) {
        self.finish();
    }
}

/// Builds the WASI context: explicit env (never inherited), args, stdio, mounts. Sockets stay
/// denied (wasmtime-wasi's default).
fn wasi_builder(setup: &GuestSetup) -> Result<(WasiCtxBuilder, Outputs)> {
    let mut b = WasiCtxBuilder::new();
    b.args(&setup.args);
    // WasiCtxBuilder::env does not deduplicate; the executor hands over unique names.
    for (k, v) in &setup.env {
        b.env(k, v);
    }
    for (k, v) in &setup.secret_env {
        // The one place a plaintext leaves the host through the env door.
        b.env(k, v.expose_secret());
    }
    match &setup.stdin {
        Stdin::Empty => {}
        Stdin::Bytes(bytes) => {
            b.stdin(MemoryInputPipe::new(bytes.clone()));
        }
        Stdin::Inherit => {
            b.inherit_stdin();
        }
    }
    let mut passthrough = Vec::new();
    let mut sink = |output: Output, fd: output::Fd| -> Result<Option<output::GuestOutput>> {
        match output {
            Output::Inherit => {
                let out = output::GuestOutput::host(fd, setup.redact.clone(), setup.max_output)
                    .map_err(|e| Error::Host(format!("cannot pass guest output on: {e}")))?;
                passthrough.push(out.clone());
                Ok(Some(out))
            }
            Output::Capture(cap) => {
                let cap = setup.max_output.min(u64::try_from(cap).unwrap_or(u64::MAX));
                Ok(Some(output::GuestOutput::memory(setup.redact.clone(), cap)))
            }
        }
    };
    let stdout = sink(setup.stdout, output::Fd::Stdout)?;
    let stderr = sink(setup.stderr, output::Fd::Stderr)?;
    if let Some(out) = &stdout {
        b.stdout(out.clone());
    }
    if let Some(out) = &stderr {
        b.stderr(out.clone());
    }
    let captured = |out: Option<output::GuestOutput>, output: Output| {
        out.filter(|_| matches!(output, Output::Capture(_)))
    };
    let outputs = Outputs {
        stdout: captured(stdout, setup.stdout),
        stderr: captured(stderr, setup.stderr),
        passthrough,
    };
    for dir in &setup.dirs {
        let perms = if dir.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| Error::Dir {
                host: dir.host.clone(),
                reason: format!("{e:#}"),
            })?;
    }
    Ok((b, outputs))
}

/// A WASI p1 `proc_exit` status of 126 or more (the shadowed `proc_exit`); [`classify`]
/// turns it into [`Error::ExitStatus`], so its own text is never shown.
#[derive(Debug)]
struct ExitOutOfRange(u32);

impl std::fmt::Display for ExitOutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proc_exit({})", self.0)
    }
}

impl std::error::Error for ExitOutOfRange {}

/// Maps a wasmtime error at run time to an exit code or a typed error. Errors are matched by
/// type; what matches none is reported by its root cause (the innermost error: what the guest
/// or the host call did), never by the outermost context, which for a trap is wasmtime's
/// "error while executing at wasm backtrace:" heading.
fn classify(e: wasmtime::Error, memory_hit: bool, limits: Limits) -> Result<i32> {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return Ok(exit.0);
    }
    if let Some(ExitOutOfRange(status)) = e.downcast_ref::<ExitOutOfRange>() {
        return Err(Error::ExitStatus(*status));
    }
    if e.downcast_ref::<cancel::Cancelled>().is_some() {
        return Err(Error::Cancelled);
    }
    if memory_hit {
        return Err(Error::MemoryLimit(limits.max_memory));
    }
    if let Some(pool) = e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return Err(Error::PoolExhausted(pool.to_string()));
    }
    if let Some(wasmtime::component::ResourceTableError::Full) =
        e.downcast_ref::<wasmtime::component::ResourceTableError>()
    {
        return Err(Error::ResourceLimit(limits.max_resources));
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Err(Error::Timeout(limits.timeout)),
        Some(Trap::OutOfFuel) => Err(Error::OutOfFuel(limits.fuel.unwrap_or(0))),
        Some(trap) => Err(Error::Trap(trap.to_string())),
        None => {
            let text = format!("{e:#}");
            if text.contains("unknown import") || text.contains("matching implementation") {
                Err(Error::Link {
                    name: "guest".into(),
                    reason: text,
                })
            } else {
                Err(Error::Trap(root_cause_line(&e)))
            }
        }
    }
}

/// The first line of `e`'s root cause (one line of what went wrong, without wasmtime's
/// backtrace). The root cause of a failed host call can hold guest-chosen text (a path, a
/// name), and host error output is not masked: only its first line, at most 200 bytes, is
/// kept.
fn root_cause_line(e: &wasmtime::Error) -> String {
    let cause = e.root_cause().to_string();
    let line = cause.lines().next().unwrap_or_default();
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn detects_kinds() {
        let module = wat::parse_str("(module)").unwrap();
        assert_eq!(GuestKind::detect("m", &module).unwrap(), GuestKind::Module);
        let component = wat::parse_str("(component)").unwrap();
        assert_eq!(
            GuestKind::detect("c", &component).unwrap(),
            GuestKind::Component
        );
        assert!(matches!(
            GuestKind::detect("t", b"\0as"),
            Err(Error::NotWasm(_))
        ));
        assert!(matches!(
            GuestKind::detect("t", b"#!/bin/sh\n"),
            Err(Error::NotWasm(_))
        ));
    }

    #[test]
    fn missing_imports_are_named_before_running() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let wasm = wat::parse_str(
            r#"(module (import "evil" "steal" (func)) (func (export "_start")) (memory (export "memory") 1))"#,
        )
        .unwrap();
        let Err(err) = rt.compile("m.wasm", &wasm) else {
            panic!("must not link")
        };
        let text = err.to_string();
        assert!(text.contains("evil") && text.contains("steal"), "{text}");
    }

    #[test]
    fn load_reuses_compiled_guests_by_content() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let a = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
        let b = wat::parse_str(r#"(module (func (export "_start") nop))"#).unwrap();
        let module = |g: &Guest| match &g.0 {
            Compiled::Module(pre) => pre.module().clone(),
            Compiled::Component(_) => panic!("a module"),
        };
        let first = rt.load("a.wasm", &a).unwrap();
        let again = rt.load("renamed.wasm", &a).unwrap();
        assert!(Module::same(&module(&first), &module(&again)));
        assert_eq!(rt.cached_guests(), 1);
        let other = rt.load("b.wasm", &b).unwrap();
        assert!(!Module::same(&module(&first), &module(&other)));
        assert_eq!(rt.cached_guests(), 2);
        assert!(rt.load("bad.wasm", b"\0asm\x01\0\0\0junk").is_err());
        assert_eq!(rt.cached_guests(), 2, "failures are not kept");
        let fresh = rt.compile("a.wasm", &a).unwrap();
        assert!(
            !Module::same(&module(&first), &module(&fresh)),
            "compile always compiles"
        );
    }

    #[test]
    fn pooled_runtime_runs_and_reuses_slots() {
        let rt = Runtime::new(RuntimeConfig {
            pooling: Some(Pooling {
                executions: 2,
                ..Pooling::default()
            }),
            ..RuntimeConfig::default()
        })
        .unwrap();
        let wasm = wat::parse_str(
            r#"(module (memory (export "memory") 1)
                 (func (export "_start")
                   (if (i32.ne (i32.load (i32.const 16)) (i32.const 0)) (then unreachable))
                   (i32.store (i32.const 16) (i32.const 7))))"#,
        )
        .unwrap();
        let guest = rt.load("m.wasm", &wasm).unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // More executions than slots, one after another: each slot is reused, zeroed.
        for _ in 0..10 {
            let setup = setup(Limits::default(), Cancel::new());
            let exit = tokio.block_on(rt.run(&guest, setup)).unwrap();
            assert_eq!(exit.code, 0);
        }
    }

    /// A setup with no secrets, output captured (1 KiB).
    fn setup(limits: Limits, cancel: Cancel) -> GuestSetup {
        GuestSetup {
            args: vec!["m.wasm".into()],
            env: Vec::new(),
            secret_env: Vec::new(),
            dirs: Vec::new(),
            stdin: Stdin::Empty,
            stdout: Output::Capture(1024),
            stderr: Output::Capture(1024),
            limits,
            secrets: SecretDoor::new(
                crate::resolve::Resolution::resolve(Vec::new(), None, None).unwrap(),
                None,
                10,
                crate::audit::Log::default(),
            ),
            redact: crate::redact::Patterns::new(std::iter::empty()),
            max_output: 1024,
            cancel,
        }
    }

    #[test]
    fn cancel_ends_a_running_guest_with_its_own_outcome() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let wasm = wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#,
        )
        .unwrap();
        let guest = rt.load("spin.wasm", &wasm).unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cancel = Cancel::new();
        let canceller = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                cancel.cancel();
            })
        };
        let start = Instant::now();
        let err = tokio
            .block_on(rt.run(&guest, setup(Limits::default(), cancel.clone())))
            .unwrap_err();
        canceller.join().unwrap();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5), "at once");
        // Cancelled before the run: the guest does not start.
        let err = tokio
            .block_on(rt.run(&guest, setup(Limits::default(), cancel)))
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        // Not cancelled, the same guest meets its deadline: a different outcome.
        let limits = Limits {
            timeout: Duration::from_millis(100),
            ..Limits::default()
        };
        let err = tokio
            .block_on(rt.run(&guest, setup(limits, Cancel::new())))
            .unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
    }

    #[test]
    fn module_without_start_is_refused() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let wasm = wat::parse_str("(module)").unwrap();
        assert!(matches!(rt.compile("m", &wasm), Err(Error::Link { .. })));
    }

    #[test]
    fn component_without_run_is_refused() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let wasm = wat::parse_str("(component)").unwrap();
        let Err(err) = rt.compile("c", &wasm) else {
            panic!("must not link")
        };
        assert!(err.to_string().contains("wasi:cli/run"), "{err}");
    }
}
