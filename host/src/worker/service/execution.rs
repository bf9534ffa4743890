//! One execution: moved to `running`, its action file loaded and run with the parameters on
//! stdin, its outcome handed to [`Ctx::complete`]; or ended without running (orphaned,
//! cancelled before it started, given up).

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::attune_db::{self, ActionRow, ExecutionRow};
use super::super::protocol::{self, Envelope};
use super::super::{Error, Failure};
use super::delivery::Disposition;
use super::result::{failure_result, outcome_result};
use super::Ctx;
use crate::executor::{self, Execution};
use crate::runtime::{Limits, Output, Stdin};
use crate::secrets::names::ActionRef;

impl Ctx {
    /// Ends an execution that this worker will not run (left `running` by a dead worker, or
    /// `canceling`): status and result committed, `ExecutionCompleted` published.
    pub(super) async fn end_unstarted(
        &self,
        execution: &ExecutionRow,
        expected: &str,
        status: &str,
        why: &Failure,
        correlation: Option<String>,
    ) -> Disposition {
        tracing::warn!(execution = execution.id, action = %execution.action_ref, status, "execution ended without running: {why}");
        self.end_with(execution, expected, status, why, correlation)
            .await
    }

    /// Ends an execution with `status` (from `expected`) and `why` as its error, without
    /// output: status and result committed, `ExecutionCompleted` published.
    pub(super) async fn end_with(
        &self,
        execution: &ExecutionRow,
        expected: &str,
        status: &str,
        why: &Failure,
        correlation: Option<String>,
    ) -> Disposition {
        let action = attune_db::action(&self.pool, execution)
            .await
            .ok()
            .flatten();
        let result = failure_result(why, status == "cancelled", 0);
        self.complete(
            execution,
            action.as_ref(),
            expected,
            status,
            result,
            correlation,
        )
        .await
    }

    pub(super) async fn run_execution(
        &self,
        execution: ExecutionRow,
        correlation: Option<String>,
    ) -> Disposition {
        let id = execution.id;
        let previous = match attune_db::start(&self.pool, id, self.worker_id).await {
            Ok(Some(previous)) => previous,
            Ok(None) => {
                tracing::info!(
                    execution = id,
                    "execution changed state before it started: dispatch acknowledged and skipped"
                );
                return Disposition::Ack;
            }
            Err(Error::Refused(why)) => return Disposition::Refused(why),
            Err(e) => {
                tracing::error!(
                    execution = id,
                    "cannot start the execution, dispatch requeued: {e}"
                );
                return Disposition::Requeue;
            }
        };
        let changed = Envelope::new(
            "ExecutionStatusChanged",
            protocol::StatusChanged {
                execution_id: id,
                action_ref: execution.action_ref.clone(),
                previous_status: previous,
                new_status: "running".into(),
                changed_at: protocol::now_rfc3339(),
            },
            correlation.clone(),
        );
        if let Err(e) = self.publish(protocol::STATUS_CHANGED_KEY, &changed).await {
            tracing::error!(execution = id, "ExecutionStatusChanged not published: {e}");
        }

        let action = match attune_db::action(&self.pool, &execution).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(execution = id, "cannot load the action: {e}");
                None
            }
        };
        let started = Instant::now();
        let outcome = match &action {
            Some(action) => {
                let _running = self.metrics.running();
                #[cfg(feature = "fault-injection")]
                super::super::fault::panic_in_execution(id);
                self.run_guest(&execution, action).await
            }
            None => Err(Failure::ActionMissing(execution.action_ref.clone())),
        };
        self.cancels.forget(id);
        let elapsed = started.elapsed();
        if action.is_some() {
            self.metrics.observe_duration(elapsed);
        }
        if let Ok(report) = &outcome {
            for ((door, outcome), count) in &report.secret_totals {
                self.metrics.secrets(*door, *outcome, *count);
            }
        }
        let (status, result) = outcome_result(outcome, self.max_stdout, self.max_stderr, elapsed);
        self.complete(
            &execution,
            action.as_ref(),
            "running",
            status,
            result,
            correlation,
        )
        .await
    }

    async fn run_guest(
        &self,
        execution: &ExecutionRow,
        action: &ActionRow,
    ) -> Result<executor::Report, Failure> {
        let action_ref = ActionRef::new(&action.action_ref)
            .map_err(|_| Failure::BadRef(action.action_ref.escape_default().to_string()))?;
        let path = action_file(&self.packs_base_dir, &action.pack_ref, &action.entrypoint)?;
        let bytes = tokio::fs::read(&path).await.map_err(|e| Failure::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let name = path.display().to_string();
        // Compiling is CPU-bound; a cached guest (same content) returns at once.
        let guest = tokio::task::block_in_place(|| self.executor.runtime().load(&name, &bytes))
            .map_err(executor::Error::Runtime)?;
        let timeout = [execution.timeout_seconds, action.timeout_seconds]
            .into_iter()
            .flatten()
            .find_map(|t| u64::try_from(t).ok().filter(|t| *t > 0))
            .map_or(self.default_timeout, Duration::from_secs);
        let mut params = match &execution.config {
            Some(v) if !v.is_null() => v.to_string(),
            _ => "{}".to_owned(),
        };
        params.push('\n');
        let cap = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let request = Execution {
            stdin: Stdin::Bytes(params.into()),
            stdout: Output::Capture(cap(self.max_stdout)),
            stderr: Output::Capture(cap(self.max_stderr)),
            limits: Limits {
                timeout,
                ..Limits::default()
            },
            max_output: self.max_stdout.max(self.max_stderr),
            execution_id: Some(execution.id.to_string()),
            cancel: self.cancels.running(execution.id),
            ..Execution::new(action_ref, action.entrypoint.clone())
        };
        Ok(self.executor.execute(&guest, request).await?)
    }
}

/// `{packs_base_dir}/{pack_ref}/actions/{entrypoint}`, refusing a pack ref or entrypoint that
/// would leave that directory (absolute, `..`, empty).
fn action_file(base: &Path, pack: &str, entrypoint: &str) -> Result<PathBuf, Failure> {
    let bad = || Failure::BadEntrypoint {
        pack: pack.escape_default().to_string(),
        entrypoint: entrypoint.escape_default().to_string(),
    };
    let plain = |p: &Path| {
        p.components().count() > 0 && p.components().all(|c| matches!(c, Component::Normal(_)))
    };
    let (pack_path, entry_path) = (Path::new(pack), Path::new(entrypoint));
    if !plain(pack_path) || pack_path.components().count() != 1 || !plain(entry_path) {
        return Err(bad());
    }
    Ok(base.join(pack_path).join("actions").join(entry_path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn action_files_stay_inside_the_pack() {
        let base = Path::new("/packs");
        assert_eq!(
            action_file(base, "p", "a.wasm").unwrap(),
            PathBuf::from("/packs/p/actions/a.wasm")
        );
        assert_eq!(
            action_file(base, "p", "sub/a.wasm").unwrap(),
            PathBuf::from("/packs/p/actions/sub/a.wasm")
        );
        for (pack, entry) in [
            ("p", "../../etc/passwd"),
            ("p", "/etc/passwd"),
            ("..", "a.wasm"),
            ("p/q", "a.wasm"),
            ("p", ""),
            ("", "a.wasm"),
            ("p", "./a.wasm"),
        ] {
            assert!(action_file(base, pack, entry).is_err(), "{pack} {entry}");
        }
    }
}
