//! One execution's request and what it produced.

use std::collections::BTreeSet;

use super::{Error, Result, METADATA_PREFIX};
use crate::runtime::{Cancel, DirMount, GuestExit, Limits, Output, Stdin};
use crate::secrets::names::{ActionRef, SecretName, ENV_PREFIX};
use crate::store::audit;
use crate::store::Visible;

/// One execution's request.
#[non_exhaustive]
pub struct Execution {
    /// The action being run (`pack.action`): selects the visible secrets.
    pub action: ActionRef,
    /// `argv` after `argv[0]`.
    pub args: Vec<String>,
    /// `argv[0]`, usually the file name.
    pub program: String,
    /// Extra environment (`--env K=V`); `SECRET_*` and `ATTUNE_*` are reserved.
    pub env: Vec<(String, String)>,
    /// Directory mounts, checked against the executor's [`Boundary`](super::Boundary) before anything else.
    pub dirs: Vec<DirMount>,
    /// Guest stdin.
    pub stdin: Stdin,
    /// Guest stdout.
    pub stdout: Output,
    /// Guest stderr.
    pub stderr: Output,
    /// Limits.
    pub limits: Limits,
    /// When set, only these names are delivered (all three doors); other visible names
    /// answer `access-denied` to `get-secret` and `wasi:config/store.get`.
    pub allowed: Option<BTreeSet<SecretName>>,
    /// Mask every resolved secret value in stdout/stderr (see [`crate::secrets::redact`]).
    pub redact: bool,
    /// Most bytes of stdout, and separately of stderr, captured or passed through; further
    /// writes fail and [`GuestExit::output_capped`] is set.
    pub max_output: u64,
    /// This execution's id in the audit trail and the guest's `ATTUNE_EXECUTION_ID` (the
    /// worker gives Attune's `execution.id`); `None`: a fresh UUID v4.
    pub execution_id: Option<String>,
    /// Cancelling it ends the execution at once with [`crate::runtime::Error::Cancelled`].
    pub cancel: Cancel,
    /// The rows the action may see when the caller has read them already from the executor's
    /// row store (the worker reads `attune.key` in the statement that claims the execution:
    /// one round trip instead of two); `None` (the default): the executor reads them.
    pub visible: Option<Vec<Visible>>,
}

/// Default [`Execution::max_output`]: 16 MiB per stream.
pub const DEFAULT_MAX_OUTPUT: u64 = 16 * 1024 * 1024;

impl Execution {
    /// An execution of `program` as `action` with the library defaults: no arguments, no
    /// extra environment, no mounts, empty stdin, stdout and stderr captured up to
    /// [`DEFAULT_MAX_OUTPUT`] bytes each, default [`Limits`], every visible secret allowed,
    /// output masked. Change fields after building it (the struct is `#[non_exhaustive]`: it
    /// will grow): `let mut e = Execution::new(action, "a.wasm"); e.redact = false;`.
    pub fn new(action: ActionRef, program: impl Into<String>) -> Self {
        let capture = usize::try_from(DEFAULT_MAX_OUTPUT).unwrap_or(usize::MAX);
        Self {
            action,
            args: Vec::new(),
            program: program.into(),
            env: Vec::new(),
            dirs: Vec::new(),
            stdin: Stdin::Empty,
            stdout: Output::Capture(capture),
            stderr: Output::Capture(capture),
            limits: Limits::default(),
            allowed: None,
            redact: true,
            max_output: DEFAULT_MAX_OUTPUT,
            execution_id: None,
            cancel: Cancel::new(),
            visible: None,
        }
    }
}

/// What an execution produced.
#[derive(Debug)]
pub struct Report {
    /// Execution id (UUID v4), also given to the guest as `ATTUNE_EXECUTION_ID`.
    pub execution_id: String,
    /// How the guest ended.
    pub exit: GuestExit,
    /// Refs of the secrets injected through the env door.
    pub env_secrets: Vec<String>,
    /// Secret requests of the run by (door, outcome), summed over secrets: the audit
    /// trail's counts without names (for metrics).
    pub secret_totals: std::collections::BTreeMap<(audit::Door, audit::Outcome), u64>,
}

/// Checks a `--env` name: non-empty, no `=` or NUL, not in the reserved `SECRET_`/`ATTUNE_`
/// namespaces.
pub(super) fn check_env_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name.contains('=') || name.contains('\0') {
        Some("the name contains '=' or a NUL byte")
    } else if name.to_ascii_uppercase().starts_with(ENV_PREFIX) {
        Some("SECRET_* is reserved for injected secrets; store a secret instead")
    } else if name.to_ascii_uppercase().starts_with(METADATA_PREFIX) {
        Some("ATTUNE_* is reserved for execution metadata")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::Env {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_env_names_are_refused() {
        for bad in [
            "SECRET_API_KEY",
            "secret_x",
            "ATTUNE_ACTION_REF",
            "",
            "A=B",
            "N\0",
        ] {
            assert!(check_env_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_env_name("RUST_LOG").is_ok());
    }
}
