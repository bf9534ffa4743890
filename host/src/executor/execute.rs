//! [`Executor::resolve`] and [`Executor::execute`]: the secrets an action may see, then one
//! run of its guest with them, on record in the audit trail before and after.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use super::execution::check_env_name;
use super::{Error, Execution, Executor, Report, Result, SecretSource, Strictness};
use crate::runtime::{self, Guest, GuestSetup, SecretDoor};
use crate::secrets::names::ActionRef;
use crate::secrets::redact::{Patterns, Stored};
use crate::store::audit;
use crate::store::resolve::{Delivery, Resolution};
use crate::store::{JournalEntry, Timestamp, Visible};

impl Executor {
    /// Resolves the secrets `action` may see (one store query, winners decrypted).
    ///
    /// # Errors
    /// [`Error::Resolve`] on an env-name collision; [`Error::Store`] and
    /// [`Error::Undeliverable`] under strict mode.
    pub async fn resolve(&self, action: &ActionRef) -> Result<Resolution> {
        self.resolve_rows(action, None).await
    }

    /// [`Executor::resolve`], from `visible` when the caller has read the rows already
    /// ([`Execution::visible`]).
    async fn resolve_rows(
        &self,
        action: &ActionRef,
        visible: Option<Vec<Visible>>,
    ) -> Result<Resolution> {
        let (rows, floor) = match &self.source {
            SecretSource::Missing(why) => (self.missing(why)?, None),
            SecretSource::Store(store) | SecretSource::Separate { rows: store, .. } => {
                let read = match visible {
                    Some(rows) => Ok(rows),
                    None => store.visible_to(action).await,
                };
                match read {
                    // The floor is verified only for a store that has one (after `key rotate`).
                    Ok(rows) => {
                        let floor = match (store.floor_record(), self.key.as_ref()) {
                            (Some(record), Some(key)) => match key.floor(Some(record)) {
                                Some(floor) => Some(floor),
                                None => {
                                    self.floor_not_authentic()?;
                                    None
                                }
                            },
                            _ => None,
                        };
                        (rows, floor)
                    }
                    Err(e) => (self.missing(&e.to_string())?, None),
                }
            }
        };
        let resolution = Resolution::resolve(rows, self.key.as_ref(), floor)?;
        for (secret, why) in resolution.unavailable() {
            if self.strictness == Strictness::Strict {
                return Err(Error::Undeliverable {
                    secret_ref: secret.secret_ref(),
                    reason: why.to_string(),
                });
            }
            tracing::warn!(
                secret = %secret.secret_ref(),
                action = %action,
                "secret not delivered: {why}"
            );
        }
        Ok(resolution)
    }

    /// A floor record that the configured key does not authenticate: tampered with, or made
    /// under another key. Unbound rows are not refused then, so it is worth a warning (and a
    /// failure under strict mode).
    fn floor_not_authentic(&self) -> Result<()> {
        let why = "the store's ciphertext floor record is not authentic under the configured key (tampered with, or written under another key): unbound rows are not refused";
        if self.strictness == Strictness::Strict {
            return Err(Error::Store(why.to_owned()));
        }
        tracing::warn!("{why}");
        Ok(())
    }

    fn missing(&self, why: &str) -> Result<Vec<Visible>> {
        if self.strictness == Strictness::Strict {
            return Err(Error::Store(why.to_owned()));
        }
        tracing::warn!("running without secrets: {why}");
        Ok(Vec::new())
    }

    /// Runs `guest` as `exec.action` with the secrets it may see.
    ///
    /// # Errors
    /// [`Error::Mount`], [`Error::Env`], [`Error::Resolve`], strict-mode errors (all before
    /// the guest starts), and [`Error::Runtime`].
    pub async fn execute(&self, guest: &Guest, exec: Execution) -> Result<Report> {
        let dirs = self.boundary.check(&exec.dirs)?;
        let execution_id = match exec.execution_id {
            Some(id) => id,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut env = vec![
            ("ATTUNE_ACTION_REF".to_owned(), exec.action.to_string()),
            ("ATTUNE_PACK_REF".to_owned(), exec.action.pack().to_string()),
            ("ATTUNE_EXECUTION_ID".to_owned(), execution_id.clone()),
        ];
        for (k, v) in exec.env {
            check_env_name(&k)?;
            if v.contains('\0') {
                return Err(Error::Env {
                    name: k,
                    reason: "its value contains a NUL byte",
                });
            }
            env.retain(|(existing, _)| *existing != k);
            env.push((k, v));
        }

        let resolution = self.resolve_rows(&exec.action, exec.visible).await?;
        let log = audit::Log::default();
        for (secret, _) in resolution.unavailable() {
            log.note(
                &secret.secret_ref(),
                audit::Door::Env,
                audit::Outcome::Unavailable,
            );
        }
        let mut secret_env: Vec<(String, SecretString)> = Vec::new();
        let mut env_secrets = Vec::new();
        for secret in resolution.iter() {
            if exec
                .allowed
                .as_ref()
                .is_some_and(|a| !a.contains(&secret.name))
            {
                continue;
            }
            let Delivery::Value(value) = &secret.delivery else {
                continue;
            };
            if value.expose_secret().contains('\0') {
                // A C guest would see a truncated value; get-secret still delivers it whole.
                tracing::warn!(secret = %secret.secret_ref(), "not injected into the environment: value contains a NUL byte");
                continue;
            }
            secret_env.push((secret.name.env_var(), value.clone()));
            log.note(
                &secret.secret_ref(),
                audit::Door::Env,
                audit::Outcome::Delivered,
            );
            env_secrets.push(secret.secret_ref());
        }
        tracing::info!(
            execution = %execution_id,
            action = %exec.action,
            kind = ?guest.kind(),
            visible = resolution.len(),
            injected = env_secrets.len(),
            "execution starting"
        );

        let redact = if exec.redact {
            patterns(&resolution)
        } else {
            Patterns::new(std::iter::empty())
        };

        let mut args = Vec::with_capacity(exec.args.len() + 1);
        args.push(exec.program);
        args.extend(exec.args);
        let setup = GuestSetup {
            args,
            env,
            secret_env,
            dirs,
            stdin: exec.stdin,
            stdout: exec.stdout,
            stderr: exec.stderr,
            limits: exec.limits,
            redact,
            max_output: exec.max_output,
            cancel: exec.cancel,
            secrets: SecretDoor::new(
                resolution,
                exec.allowed,
                exec.limits.secret_calls,
                log.clone(),
            )
            .with_config_get_all(self.config_get_all),
        };
        // Cancelled before it starts: nothing is delivered, so nothing goes on record.
        if setup.cancel.is_cancelled() {
            return Err(runtime::Error::Cancelled.into());
        }
        let started = Timestamp::now();
        let execution = |state, ended, requests| audit::ExecutionRecord {
            execution_id: execution_id.clone(),
            action_ref: exec.action.clone(),
            started,
            ended,
            state,
            requests,
        };
        // Deliveries through the environment are on record before the guest can read them:
        // a host killed mid-run leaves them in the trail (run `started`, never `ended`).
        let entered = log.requests();
        let writer = self.writer();
        let was_entered = writer.is_some() && !entered.is_empty();
        if let (Some(writer), true) = (&writer, was_entered) {
            writer
                .begin(execution(audit::RunState::Started, None, entered))
                .await?;
        }
        // With a journal, each delivery while the guest runs is on record before the guest
        // has the value, as the environment's are (a killed host loses none of them).
        if let Some(journal) = writer.as_ref().and_then(|w| w.journal()) {
            log.journal_to(
                Arc::clone(journal),
                JournalEntry {
                    execution_id: execution_id.clone(),
                    action_ref: exec.action.clone(),
                    started,
                },
            );
        }
        let exit = self.runtime.run(guest, setup).await;
        // The end is queued once, after the guest, whatever its outcome (see `flush`). A guest
        // that never started (no free pool slot, a mount that failed) is `not-started`: its
        // environment reached no guest code.
        let state = match exit {
            Err(runtime::Error::PoolExhausted(_) | runtime::Error::Dir { .. }) => {
                audit::RunState::NotStarted
            }
            _ => audit::RunState::Ended,
        };
        if let Some(writer) = &writer {
            // All the requests, the environment door's included: they replace those entered.
            let requests = log.requests();
            if was_entered || !requests.is_empty() {
                writer
                    .end(execution(state, Some(Timestamp::now()), requests))
                    .await;
            }
        }
        let exit = exit?;
        if exit.output_capped {
            tracing::warn!(
                execution = %execution_id,
                "guest output was cut at {} bytes per stream",
                exec.max_output
            );
        }
        tracing::info!(
            execution = %execution_id,
            code = exit.code,
            secret_calls = exit.secret_calls,
            "execution finished"
        );
        Ok(Report {
            execution_id,
            exit,
            env_secrets,
            secret_totals: log.totals(),
        })
    }
}

/// The masking patterns of every value `resolution` delivers, warning (by name) about each
/// value too short to be masked.
fn patterns(resolution: &Resolution) -> Patterns {
    let mut values = Vec::new();
    for secret in resolution.iter() {
        if let Delivery::Value(v) = &secret.delivery {
            let v = v.expose_secret();
            let stored = secret.stored;
            if !v.is_empty() && !stored.masks(v) {
                match stored {
                    Stored::Encrypted => tracing::warn!(
                        secret = %secret.secret_ref(),
                        "value shorter than {} bytes is not masked in output",
                        stored.min_masked_len()
                    ),
                    Stored::Plain => tracing::warn!(
                        secret = %secret.secret_ref(),
                        "plain value shorter than {} bytes is not masked in output (stored with --plain: configuration, not a secret)",
                        stored.min_masked_len()
                    ),
                }
            }
            values.push((v, stored));
        }
    }
    Patterns::with_storage(values)
}
