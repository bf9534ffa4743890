//! Attune's `result` document of an execution, with Attune's keys (`succeeded`, `exit_code`,
//! `duration_ms`, `stdout`, `data`, `error`, truncation flags, `timed_out`, `cancelled`).

use std::time::Duration;

use serde_json::{json, Value};

use super::super::Failure;
use crate::executor;
use crate::runtime;

/// Attune's `result` document of an execution that ended without output (`why` its error).
pub(super) fn failure_result(why: &Failure, cancelled: bool, duration_ms: u64) -> Value {
    json!({
        "succeeded": false,
        "exit_code": null,
        "duration_ms": duration_ms,
        "stdout": "",
        "data": null,
        "error": why.to_string(),
        "stdout_truncated": false,
        "stderr_truncated": false,
        "timed_out": false,
        "cancelled": cancelled,
    })
}

/// The terminal status and Attune's `result` document of an execution's outcome.
pub(super) fn outcome_result(
    outcome: Result<executor::Report, Failure>,
    max_stdout: u64,
    max_stderr: u64,
    elapsed: Duration,
) -> (&'static str, Value) {
    let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(report) => {
            let exit = report.exit;
            let stdout_bytes = exit.stdout.unwrap_or_default();
            let stderr_bytes = exit.stderr.unwrap_or_default();
            let stdout = String::from_utf8_lossy(&stdout_bytes).into_owned();
            let stderr = String::from_utf8_lossy(&stderr_bytes);
            let succeeded = exit.code == 0;
            let error = (!succeeded).then(|| error_text(&stderr, exit.code));
            let result = json!({
                "succeeded": succeeded,
                "exit_code": exit.code,
                "duration_ms": duration_ms,
                "data": data_of(&stdout),
                "stdout": stdout,
                "error": error,
                "stdout_truncated": stdout_bytes.len() as u64 >= max_stdout,
                "stderr_truncated": stderr_bytes.len() as u64 >= max_stderr,
                "timed_out": false,
            });
            (if succeeded { "completed" } else { "failed" }, result)
        }
        Err(failure) => {
            let timed_out = matches!(
                failure,
                Failure::Executor(executor::Error::Runtime(runtime::Error::Timeout(_)))
            );
            let cancelled = matches!(
                failure,
                Failure::Executor(executor::Error::Runtime(runtime::Error::Cancelled))
            );
            let result = json!({
                "succeeded": false,
                "exit_code": null,
                "duration_ms": duration_ms,
                "data": null,
                "stdout": "",
                "error": failure.to_string(),
                "stdout_truncated": false,
                "stderr_truncated": false,
                "timed_out": timed_out,
                "cancelled": cancelled,
            });
            let status = if timed_out {
                "timeout"
            } else if cancelled {
                "cancelled"
            } else {
                "failed"
            };
            (status, result)
        }
    }
}

/// Attune's `error` of a failed run: stderr when it has at most 5 lines, else its last line,
/// else `Command exited with code N`.
fn error_text(stderr: &str, code: i32) -> String {
    let trimmed = stderr.trim();
    let lines: Vec<&str> = trimmed.lines().collect();
    match lines.len() {
        0 => format!("Command exited with code {code}"),
        1..=5 => trimmed.to_owned(),
        _ => lines.last().map_or_else(String::new, |l| (*l).to_owned()),
    }
}

/// `data`: stdout parsed as JSON (the whole of it, else its last non-empty line), or null.
fn data_of(stdout: &str) -> Value {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(trimmed)
        .ok()
        .or_else(|| {
            trimmed
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .and_then(|l| serde_json::from_str(l.trim()).ok())
        })
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn error_and_data_follow_attune() {
        assert_eq!(error_text("", 3), "Command exited with code 3");
        assert_eq!(error_text("boom\n", 1), "boom");
        assert_eq!(error_text("1\n2\n3\n4\n5\n6\nlast\n", 1), "last");
        assert_eq!(data_of("{\"a\":1}\n"), json!({"a": 1}));
        assert_eq!(data_of("log line\n{\"a\":2}\n"), json!({"a": 2}));
        assert_eq!(data_of("not json"), Value::Null);
    }
}
