//! Fault injection for the worker's own tests; compiled in only with the cargo feature
//! `fault-injection` (which the integration tests enable through a dev-dependency on this
//! package; a plain `cargo build` or `cargo install` has none of it).
//!
//! `ATTUNE_WASM_FAULT_PAUSE_BEFORE_ACK_MS=N`: after a dispatch's terminal status is
//! committed (and `ExecutionCompleted` published), wait `N` milliseconds before acknowledging
//! it, so that a test can close the broker connection in exactly that window (fault K1). Only
//! first deliveries pause (a redelivery is answered at once). The pause is logged as
//! `fault injection: pausing {N} ms between the terminal commit and the ack`.
//!
//! `ATTUNE_WASM_FAULT_EXIT_BEFORE_COMPLETED=1`: the process exits (status 86, no cleanup)
//! right after an execution's terminal status is committed, before its `ExecutionCompleted`
//! is published: a worker dying in that window. Logged as `fault injection: exiting between
//! the terminal commit and ExecutionCompleted`.
//!
//! `ATTUNE_WASM_FAULT_FAIL_COMPLETED=N`: the first `N` publications of `ExecutionCompleted`
//! by this process fail at once (as if the broker had refused them). Logged as `fault
//! injection: ExecutionCompleted not sent`.
//!
//! `ATTUNE_WASM_FAULT_PANIC_IN_EXECUTION=N`: the first `N` executions this process runs panic
//! once they are `running`, before their guest starts (a bug in the worker). Logged as
//! `fault injection: panicking while the execution runs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Error;

/// The environment variable that sets the pause, in milliseconds.
pub const PAUSE_BEFORE_ACK: &str = "ATTUNE_WASM_FAULT_PAUSE_BEFORE_ACK_MS";

/// Waits the configured pause (none when the variable is unset or not a number).
pub async fn pause_before_ack(execution: i64) {
    let Some(ms) = std::env::var(PAUSE_BEFORE_ACK)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return;
    };
    tracing::warn!(
        execution,
        "fault injection: pausing {ms} ms between the terminal commit and the ack"
    );
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The environment variable that makes the process exit between commit and publication.
pub const EXIT_BEFORE_COMPLETED: &str = "ATTUNE_WASM_FAULT_EXIT_BEFORE_COMPLETED";

/// The environment variable that makes the first `N` `ExecutionCompleted` publications fail.
pub const FAIL_COMPLETED: &str = "ATTUNE_WASM_FAULT_FAIL_COMPLETED";

/// Exits the process when [`EXIT_BEFORE_COMPLETED`] is set (called after the terminal commit).
pub fn exit_before_completed(execution: i64) {
    if std::env::var(EXIT_BEFORE_COMPLETED).is_ok_and(|v| v.trim() == "1") {
        tracing::warn!(
            execution,
            "fault injection: exiting between the terminal commit and ExecutionCompleted"
        );
        std::process::exit(86);
    }
}

/// Fails one of the first [`FAIL_COMPLETED`] `ExecutionCompleted` publications.
///
/// # Errors
/// [`Error::Broker`] while the configured count lasts.
pub fn fail_completed(execution: i64) -> Result<(), Error> {
    static FAILED: AtomicU64 = AtomicU64::new(0);
    let Some(n) = std::env::var(FAIL_COMPLETED)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return Ok(());
    };
    if FAILED.fetch_add(1, Ordering::SeqCst) < n {
        tracing::warn!(execution, "fault injection: ExecutionCompleted not sent");
        return Err(Error::Broker("fault injection".into()));
    }
    Ok(())
}

/// The environment variable that makes the first `N` executions panic while running.
pub const PANIC_IN_EXECUTION: &str = "ATTUNE_WASM_FAULT_PANIC_IN_EXECUTION";

/// Panics in one of the first [`PANIC_IN_EXECUTION`] executions (called once the execution
/// is `running`).
///
/// # Panics
/// While the configured count lasts: that is its purpose.
pub fn panic_in_execution(execution: i64) {
    static PANICKED: AtomicU64 = AtomicU64::new(0);
    let Some(n) = std::env::var(PANIC_IN_EXECUTION)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return;
    };
    if PANICKED.fetch_add(1, Ordering::SeqCst) < n {
        tracing::warn!(
            execution,
            "fault injection: panicking while the execution runs"
        );
        panic!("fault injection: a panic while execution {execution} runs");
    }
}
