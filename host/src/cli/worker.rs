//! `attune-wasm worker` and `attune-wasm execute` (their arguments and what they print), over
//! [`attune_wasm::worker`].

use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::watch;

use attune_wasm::config::Settings;
use attune_wasm::worker::config::WorkerConfig;
use attune_wasm::worker::{scheduler, service, Error};

use super::exit;

/// `attune-wasm worker`: everything comes from the configuration.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {}

/// `attune-wasm execute`.
#[derive(clap::Args, Debug)]
pub struct ExecuteArgs {
    /// The action to run, as registered in attune.action.
    #[arg(long, value_name = "PACK.ACTION")]
    action: String,
    /// Parameters: a JSON object (the action reads it as one line on stdin).
    #[arg(long, value_name = "JSON", default_value = "{}")]
    params: String,
    /// Wait for the execution to end and print its status and result as one JSON line; exit 0
    /// when it completed, 1 otherwise.
    #[arg(long)]
    wait: bool,
    /// Longest wait, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    wait_timeout: u64,
}

/// Runs the worker until SIGTERM or SIGINT.
///
/// # Errors
/// The worker's start-up errors (configuration, database, queue declaration).
pub async fn worker(settings: &Settings, _args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let cfg = WorkerConfig::from_settings(settings)?;
    tracing::info!(?cfg, "starting worker");
    let (stop, shutdown) = watch::channel(false);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("attune-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(
                    signal,
                    "stopping: no new executions, running ones may finish"
                );
                let _ = stop.send(true);
            }
        })?;
    let outcome = service::run(cfg, shutdown).await;
    handle.close();
    outcome?;
    Ok(ExitCode::from(exit::SUCCESS))
}

/// Dispatches one execution; with `--wait`, prints how it ended.
///
/// # Errors
/// [`Error`]s of [`scheduler::dispatch`] and [`scheduler::wait`].
pub async fn execute(settings: &Settings, args: ExecuteArgs) -> anyhow::Result<ExitCode> {
    let params: serde_json::Value = serde_json::from_str(&args.params).map_err(|e| {
        Error::Params(format!(
            "not JSON ({:?} error at column {})",
            e.classify(),
            e.column()
        ))
    })?;
    let dispatched = scheduler::dispatch(settings, &args.action, &params).await?;
    if !args.wait {
        println!(
            "execution {} dispatched to worker {} (id {})",
            dispatched.execution_id, dispatched.worker_name, dispatched.worker_id
        );
        return Ok(ExitCode::from(exit::SUCCESS));
    }
    let ended = scheduler::wait(
        settings,
        dispatched.execution_id,
        Duration::from_secs(args.wait_timeout),
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({
            "execution_id": dispatched.execution_id,
            "worker": dispatched.worker_name,
            "status": ended.status,
            "result": ended.result,
        })
    );
    Ok(ExitCode::from(if ended.status == "completed" {
        exit::SUCCESS
    } else {
        exit::FAILURE
    }))
}
