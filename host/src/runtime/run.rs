//! One execution: what its guest gets ([`GuestSetup`]), running it in a fresh store under
//! its limits, deadline and cancellation ([`Runtime::run`]), and how it ended
//! ([`GuestExit`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use secrecy::SecretString;
use wasmtime::component::ResourceTable;
use wasmtime::Store;

use super::engine::TICK;
use super::error::classify;
use super::guest::Compiled;
use super::limits::Limiter;
use super::state::{ComponentState, ModuleState};
use super::wasi::wasi_builder;
use super::{
    cancel, output, Cancel, DirMount, Error, Guest, Limits, Output, Result, Runtime, SecretDoor,
    Stdin,
};

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
    /// The `get-secret` and `wasi:config/store` doors.
    pub secrets: SecretDoor,
    /// Values masked in stdout/stderr (empty: no masking).
    pub redact: crate::secrets::redact::Patterns,
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
    /// Secret requests made (`get-secret` and `wasi:config/store`).
    pub secret_calls: u64,
    /// The guest wrote more than [`GuestSetup::max_output`] bytes to a stream.
    pub output_capped: bool,
}

/// Longest deadline [`Runtime::run`] computes with (a year): a longer [`Limits::timeout`]
/// runs as long as this, and an `Instant` this far ahead never overflows.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long pass-through output is still written out after the deadline passed (a timed-out
/// guest's last lines, when someone reads them).
const DRAIN_AFTER_DEADLINE: Duration = Duration::from_millis(200);

impl Runtime {
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
    /// callback every [`TICK`]: the guest traps with [`Trap::Interrupt`](wasmtime::Trap::Interrupt) past `deadline`, or
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::{Pooling, RuntimeConfig};

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
                crate::store::resolve::Resolution::default(),
                None,
                10,
                crate::store::audit::Log::default(),
            ),
            redact: crate::secrets::redact::Patterns::new(std::iter::empty()),
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
}
