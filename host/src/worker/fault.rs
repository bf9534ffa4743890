//! Fault injection for the worker's own tests; compiled in only with the cargo feature
//! `fault-injection` (which the integration tests enable through a dev-dependency on this
//! package; a plain `cargo build` or `cargo install` has none of it).
//!
//! `ATTUNE_WASM_FAULT_PAUSE_BEFORE_ACK_MS=N`: after a dispatch's terminal status is
//! committed (and `ExecutionCompleted` published), wait `N` milliseconds before acknowledging
//! it, so that a test can close the broker connection in exactly that window (fault K1). Only
//! first deliveries pause (a redelivery is answered at once). The pause is logged as
//! `fault injection: pausing {N} ms between the terminal commit and the ack`.

use std::time::Duration;

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
