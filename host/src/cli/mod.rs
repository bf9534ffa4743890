//! The `attune-wasm` command line (clap), owned by the binary: it is no part of the library's
//! API and uses only that API. One file per command:
//!
//! ```text
//! mod.rs     arguments, start-up (hardening, panic hook, logging), dispatch, last line
//! exit.rs    the exit statuses, in one place
//! run.rs     run: one action with its secrets
//! secret.rs  secret set / get / list / delete
//! import.rs  secret import: Attune attune.key rows
//! key.rs     key hash / rotate
//! audit.rs   audit list
//! db.rs      db migrate
//! worker.rs  worker, execute
//! ```
//!
//! Errors are one line on stderr: `error: …`; exit statuses are listed in [`exit`].

mod audit;
mod db;
mod exit;
mod import;
mod key;
mod run;
mod secret;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use attune_wasm::config::Settings;
use attune_wasm::secrets::crypto::EncryptionKey;
use attune_wasm::store::{self, KeyHash, OpenMode, Replace, Store};

/// Run Attune actions compiled to WebAssembly, with the secrets their pack and action may see.
#[derive(Parser)]
#[command(name = "attune-wasm", version, about)]
pub struct Cli {
    /// YAML configuration file; `ATTUNE__…` environment variables override it
    /// (e.g. ATTUNE__SECURITY__ENCRYPTION_KEY, ATTUNE__DATABASE__URL, ATTUNE__DATA_DIR).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store, inspect and delete secrets.
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Run an action (a WASI p2 component or a WASI p1 core module).
    Run(run::RunArgs),
    /// Encryption key utilities.
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// Database maintenance.
    #[command(subcommand)]
    Db(db::DbCmd),
    /// The audit trail of secret deliveries (never values).
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Run as an Attune worker: executions from RabbitMQ, secrets from Attune's attune.key.
    Worker(worker::WorkerArgs),
    /// Dispatch an execution to a worker (a stand-in for Attune's scheduler).
    Execute(worker::ExecuteArgs),
}

/// Entry point of the binary: parses arguments, sets up logging (`RUST_LOG`, default `warn`,
/// to stderr), runs the command on a tokio runtime and maps the outcome to an exit status
/// ([`exit`]).
pub fn main() -> ExitCode {
    // First, before a key or a value is in memory: no core file, no ptrace by other processes.
    let hardened = attune_wasm::runtime::process::harden();
    install_panic_hook();
    // Test-only, debug builds only: panics with the variable's value as the payload, so that
    // the integration tests check the real hook in the real binary (tests/all/hardening.rs).
    #[cfg(debug_assertions)]
    if let Some(payload) = std::env::var_os("ATTUNE_TEST_PANIC") {
        panic!("{}", payload.to_string_lossy());
    }
    let cli = Cli::parse();
    // The guest-data cap holds whatever RUST_LOG says (see attune_wasm::runtime::logging).
    attune_wasm::runtime::logging::install();
    if let Err(e) = hardened {
        tracing::warn!("process hardening incomplete: {e}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::HOST);
        }
    };
    let is_run = matches!(cli.command, Command::Run(_));
    let outcome = rt.block_on(dispatch(cli));
    // Do not wait for a compiler thread abandoned by --compile-timeout.
    rt.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(e) => {
            last_line(format!("error: {}", one_line(&e)));
            ExitCode::from(if is_run {
                exit::run_error(&e)
            } else {
                exit::FAILURE
            })
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    tracing::debug!(?settings, "configuration loaded");
    let done = |()| ExitCode::from(exit::SUCCESS);
    match cli.command {
        Command::Secret(cmd) => secret::secret(&settings, cmd).await.map(done),
        Command::Key(cmd) => key::key(&settings, cmd).await.map(done),
        Command::Run(args) => run::run(&settings, cli.config.as_deref(), args).await,
        Command::Worker(args) => worker::worker(&settings, args).await,
        Command::Execute(args) => worker::execute(&settings, args).await,
        Command::Audit(cmd) => audit::audit(&settings, cmd).await.map(done),
        Command::Db(cmd) => db::db(&settings, cmd).await.map(done),
    }
}

/// Longest the host waits to print its last line (see [`last_line`]).
const LAST_LINE_WAIT: Duration = Duration::from_secs(1);

/// Prints the host's last line on stderr from a thread of its own, waiting at most
/// [`LAST_LINE_WAIT`]: when a guest filled a stderr pipe that nobody reads, the line cannot
/// be written, and the process must still end (the thread is left behind).
fn last_line(line: String) {
    let (done, written) = std::sync::mpsc::channel();
    let printer = std::thread::Builder::new().spawn(move || {
        eprintln!("{line}");
        let _ = done.send(());
    });
    if printer.is_ok() {
        let _ = written.recv_timeout(LAST_LINE_WAIT);
    }
}

/// Replaces the default panic hook: a panic payload could hold data the host was handling
/// (a secret), so only the location is printed.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{}", panic_line(info.location()));
    }));
}

/// The one line printed for a panic: where, never what.
fn panic_line(location: Option<&std::panic::Location<'_>>) -> String {
    match location {
        Some(l) => format!(
            "error: internal error at {}:{} (details withheld: they could contain secret data); please report it",
            l.file(),
            l.line()
        ),
        None => "error: internal error (details withheld); please report it".to_owned(),
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// The configured key (`security.encryption_key`), if any.
fn key(settings: &Settings) -> anyhow::Result<Option<EncryptionKey>> {
    settings
        .security
        .encryption_key
        .as_ref()
        .map(EncryptionKey::from_password)
        .transpose()
        .context("security.encryption_key")
}

/// The configured key; an error naming the setting when there is none.
fn require_key(settings: &Settings) -> anyhow::Result<EncryptionKey> {
    key(settings)?.context(
        "no encryption key configured: set security.encryption_key in the config file or \
         ATTUNE__SECURITY__ENCRYPTION_KEY",
    )
}

/// Which stored rows a write may replace: with `--replace-foreign-key` any, else plain rows
/// and rows under the written row's key or `writer` (the configured key).
fn replace(writer: Option<&KeyHash>, replace_foreign_key: bool) -> Replace<'_> {
    if replace_foreign_key {
        Replace::Any
    } else {
        Replace::Readable(writer)
    }
}

async fn open_store(settings: &Settings, mode: OpenMode) -> anyhow::Result<Store> {
    Ok(Store::open_with(&settings.store_options()?, mode).await?)
}

/// Whether `e` is the store's "no database yet".
fn is_missing(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<store::Error>(),
        Some(store::Error::Missing { .. })
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn panics_print_where_never_what() {
        let caught = std::panic::catch_unwind(|| {
            let secret = "planted-panic-secret-0a1b";
            panic!("{secret}");
        });
        assert!(caught.is_err());
        let line = panic_line(Some(std::panic::Location::caller()));
        assert!(
            line.contains(file!()) && !line.contains("planted"),
            "{line}"
        );
        assert!(!panic_line(None).contains("planted"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
