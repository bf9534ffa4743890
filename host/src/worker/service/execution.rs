//! One execution: moved to `running`, its action file loaded and run with the parameters on
//! stdin, its outcome handed to [`Ctx::complete`]; or ended without running (orphaned,
//! cancelled before it started, given up).

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::action_files::Lookup;
use super::super::attune_db::{self, ActionRow, ExecutionRow, KeyRows};
use super::super::protocol::{self, Envelope};
use super::super::Failure;
use super::delivery::Disposition;
use super::result::{failure_result, outcome_result};
use super::Ctx;
use crate::executor::{self, Execution};
use crate::runtime::{Limits, Output, Stdin};
use crate::secrets::names::ActionRef;
use crate::store::AttuneKeys;

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

    /// Runs an execution [`attune_db::claim`] moved to `running` (`execution.status` is the
    /// status it had) with its `action` and the `keys` the claim read for it.
    pub(super) async fn run_execution(
        &self,
        execution: ExecutionRow,
        action: Option<ActionRow>,
        keys: Option<KeyRows>,
        correlation: Option<String>,
    ) -> Disposition {
        let id = execution.id;
        let changed = Envelope::new(
            "ExecutionStatusChanged",
            protocol::StatusChanged {
                execution_id: id,
                action_ref: execution.action_ref.clone(),
                previous_status: execution.status.clone(),
                new_status: "running".into(),
                changed_at: protocol::now_rfc3339(),
            },
            correlation.clone(),
        );
        // Sent now, its confirmation awaited once the guest has run (see `status_confirmed`).
        let sent = self.send(protocol::STATUS_CHANGED_KEY, &changed).await;

        let started = Instant::now();
        let outcome = match &action {
            Some(action) => {
                let _running = self.metrics.running();
                #[cfg(feature = "fault-injection")]
                super::super::fault::panic_in_execution(id);
                self.run_guest(&execution, action, keys).await
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
        self.status_confirmed(sent, &changed).await;
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

    /// Waits for the broker's confirmation of the `ExecutionStatusChanged` sent before the run
    /// (before the terminal status, so before `ExecutionCompleted` and the ack); publishes it
    /// again (waiting for a reconnection, as [`Ctx::publish`]) when it was not sent or not
    /// confirmed.
    async fn status_confirmed(
        &self,
        sent: Option<lapin::PublisherConfirm>,
        changed: &Envelope<protocol::StatusChanged>,
    ) {
        let key = protocol::STATUS_CHANGED_KEY;
        if let Some(confirm) = sent {
            if protocol::confirmed(key, confirm).await.is_ok() {
                return;
            }
        }
        if let Err(e) = self.publish(key, changed).await {
            tracing::error!(
                execution = changed.payload.execution_id,
                "ExecutionStatusChanged not published: {e}"
            );
        }
    }

    async fn run_guest(
        &self,
        execution: &ExecutionRow,
        action: &ActionRow,
        keys: Option<KeyRows>,
    ) -> Result<executor::Report, Failure> {
        let action_ref = ActionRef::new(&action.action_ref)
            .map_err(|_| Failure::BadRef(action.action_ref.escape_default().to_string()))?;
        // Read with the claim; should they not parse (they always do: our own statement), the
        // executor reads them itself.
        let visible = keys.and_then(|keys| {
            AttuneKeys::parse_array(keys.0, &action_ref)
                .map_err(|why| {
                    tracing::warn!(
                        execution = execution.id,
                        "attune.key rows read with the claim do not parse ({why}); the executor reads them again"
                    );
                })
                .ok()
        });
        let path = action_file(&self.packs_base_dir, &action.pack_ref, &action.entrypoint)?;
        // One `stat` (the file is on local disk) when the file is the version last read;
        // else read, and compiled unless its content was (blocking).
        let guest = match self.action_files.lookup(self.executor.runtime(), &path)? {
            Lookup::Known(guest) => guest,
            Lookup::Unknown(identity) => tokio::task::block_in_place(|| {
                self.action_files
                    .read(self.executor.runtime(), &path, identity)
            })?,
        };
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
            visible,
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
