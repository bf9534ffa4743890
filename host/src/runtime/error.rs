//! Runtime failures ([`Error`]) and how a wasmtime error at run time becomes an exit status or
//! one of them ([`classify`]).

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::Trap;
use wasmtime_wasi::I32Exit;

use super::{cancel, Limits};

/// Runtime failures. None carries a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The caller cancelled the execution ([`Cancel::cancel`](super::Cancel::cancel)).
    #[error("execution cancelled")]
    Cancelled,
    /// The guest tried to grow its memory past the limit.
    #[error("guest exceeded the memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The fuel budget ran out.
    #[error("guest ran out of fuel ({0} units)")]
    OutOfFuel(u64),
    /// The guest held more WASI resource handles at once than
    /// [`Limits::max_resources`].
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
    /// Every pooled slot of some kind is in use ([`Pooling::executions`](super::Pooling::executions)
    /// executions running).
    #[error("too many executions at once: {0}; retry when one has finished")]
    PoolExhausted(String),
    /// An engine or host failure.
    #[error("runtime failure: {0}")]
    Host(String),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A WASI p1 `proc_exit` status of 126 or more (the shadowed `proc_exit`); [`classify`]
/// turns it into [`Error::ExitStatus`], so its own text is never shown.
#[derive(Debug)]
pub(super) struct ExitOutOfRange(pub(super) u32);

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
pub(super) fn classify(e: wasmtime::Error, memory_hit: bool, limits: Limits) -> Result<i32> {
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
        // Imports were resolved when the guest was loaded (`instantiate_pre`, see
        // `Runtime::compile`: a missing one is `Error::Link` there), so nothing here is a link
        // error; what is left is a host call's failure or a trap of another kind.
        None => Err(Error::Trap(root_cause_line(&e))),
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
