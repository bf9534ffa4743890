//! Exit statuses of `attune-wasm`, in one place.
//!
//! | status | when |
//! |---|---|
//! | [`SUCCESS`] 0 | the command succeeded (`run`: the guest exited 0) |
//! | [`FAILURE`] 1 | a command other than `run` failed (one line `error: …` on stderr); `execute --wait`: the execution did not complete; `run`: a guest status outside 0-255 |
//! | 2 | usage error (clap prints the usage text) |
//! | 0-255 | `run`: the guest's own status (Rust `wasm32-wasip2` programs report every failure as 1; WASI p1 modules keep theirs, 0-125) |
//! | 101 | the host panicked (Rust's status; the panic hook prints where, never what) |
//! | [`TIMEOUT`] 124 | `run`: the deadline passed, or the guest's output could not be written out in time (as `timeout(1)`) |
//! | [`HOST`] 125 | `run`: the host failed before or around the guest (file, compile/link, store, strict secrets, env collision; as `docker run`) |
//! | [`TRAP`] 134 | `run`: the guest trapped or hit a limit (memory, fuel, handles, a `proc_exit` status past 125; as the `wasmtime` CLI) |

use std::process::ExitCode;

use attune_wasm::{executor, runtime};

/// The command succeeded.
pub const SUCCESS: u8 = 0;
/// A command other than `run` failed; also a guest status that does not fit in 0-255.
pub const FAILURE: u8 = 1;
/// `run`: the guest's deadline passed (as `timeout(1)`).
pub const TIMEOUT: u8 = 124;
/// `run`: the host failed before or around the guest (as `docker run`).
pub const HOST: u8 = 125;
/// `run`: the guest trapped or hit a limit (as the `wasmtime` CLI).
pub const TRAP: u8 = 134;

/// The exit status of `run` for a guest that exited with `code`: the code itself when it fits
/// an exit status, else [`FAILURE`].
pub fn guest(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(FAILURE))
}

/// The exit status of a failed `run`: [`TIMEOUT`], [`TRAP`] or [`HOST`], from the runtime
/// error in `e`'s chain (matched by type).
pub fn run_error(e: &anyhow::Error) -> u8 {
    let runtime_err = e
        .chain()
        .find_map(|c| c.downcast_ref::<runtime::Error>())
        .or_else(|| match e.downcast_ref::<executor::Error>() {
            Some(executor::Error::Runtime(r)) => Some(r),
            _ => None,
        });
    match runtime_err {
        Some(runtime::Error::Timeout(_) | runtime::Error::OutputBlocked(_)) => TIMEOUT,
        Some(
            runtime::Error::Trap(_)
            | runtime::Error::MemoryLimit(_)
            | runtime::Error::OutOfFuel(_)
            | runtime::Error::ResourceLimit(_)
            | runtime::Error::ExitStatus(_),
        ) => TRAP,
        _ => HOST,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn runtime_errors_map_to_their_status_through_any_context() {
        let cases = [
            (runtime::Error::Timeout(Duration::from_secs(1)), TIMEOUT),
            (
                runtime::Error::OutputBlocked(Duration::from_secs(1)),
                TIMEOUT,
            ),
            (runtime::Error::Trap("unreachable".into()), TRAP),
            (runtime::Error::MemoryLimit(1), TRAP),
            (runtime::Error::OutOfFuel(1), TRAP),
            (runtime::Error::ResourceLimit(1), TRAP),
            (runtime::Error::ExitStatus(126), TRAP),
            (runtime::Error::Cancelled, HOST),
            (runtime::Error::Host("engine".into()), HOST),
        ];
        for (error, status) in cases {
            let shown = error.to_string();
            let direct = anyhow::Error::new(executor::Error::Runtime(error));
            assert_eq!(run_error(&direct), status, "{shown}");
            let wrapped = direct.context("around it");
            assert_eq!(run_error(&wrapped), status, "{shown} with context");
        }
        assert_eq!(run_error(&anyhow::anyhow!("cannot read x.wasm")), HOST);
    }

    #[test]
    fn guest_statuses_pass_through_when_they_fit() {
        assert_eq!(guest(0), ExitCode::from(SUCCESS));
        assert_eq!(guest(3), ExitCode::from(3));
        assert_eq!(guest(255), ExitCode::from(255));
        assert_eq!(guest(256), ExitCode::from(FAILURE));
        assert_eq!(guest(-1), ExitCode::from(FAILURE));
    }
}
