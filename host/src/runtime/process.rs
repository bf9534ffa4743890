//! Process hardening: nothing the host holds in memory (the encryption key, decrypted values)
//! is written to a core file or readable through `/proc/<pid>/mem` or `ptrace` by other
//! processes of the same user.
//!
//! [`harden`] sets the core file size limit (`RLIMIT_CORE`) to 0, soft and hard, and marks the
//! process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`, Linux): the kernel then writes no core
//! file, even to a `core_pattern` pipe handler, and only root may attach to the process or
//! read its memory. The `attune-wasm` binary calls it first thing; an embedder (the worker)
//! should call it at start-up too, before it reads a key.

/// Hardening failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `setrlimit(RLIMIT_CORE, 0)` failed.
    #[error("cannot disable core files: {0}")]
    CoreLimit(std::io::Error),
    /// `prctl(PR_SET_DUMPABLE, 0)` failed.
    #[error("cannot mark the process non-dumpable: {0}")]
    Dumpable(std::io::Error),
}

/// Disables core files and marks the process non-dumpable (see the module documentation).
/// Both steps are tried; the first failure is returned. Child processes inherit the core
/// limit, not the dumpable flag (it is reset by `execve`).
///
/// # Errors
/// [`Error::CoreLimit`] or [`Error::Dumpable`] with the system's reason.
pub fn harden() -> Result<(), Error> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let core = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| Error::CoreLimit(e.into()));
    #[cfg(target_os = "linux")]
    let dumpable =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
            .map_err(|e| Error::Dumpable(e.into()));
    #[cfg(not(target_os = "linux"))]
    let dumpable = Ok(());
    core.and(dumpable)
}

/// Whether this process is marked non-dumpable (Linux; `false` elsewhere).
pub fn is_non_dumpable() -> bool {
    #[cfg(target_os = "linux")]
    {
        matches!(
            rustix::process::dumpable_behavior(),
            Ok(rustix::process::DumpableBehavior::NotDumpable)
        )
    }
    #[cfg(not(target_os = "linux"))]
    false
}
