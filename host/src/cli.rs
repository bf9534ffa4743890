//! The `attune-wasm` command line (clap). `main.rs` only calls [`main`].
//!
//! Exit status: `run` exits with the guest's own status; [`EXIT_TIMEOUT`] when the deadline
//! passed, [`EXIT_TRAP`] when the guest trapped or hit a limit, [`EXIT_HOST`] when the host
//! failed before or around the guest (bad file, store, strict secrets, env collision). Other
//! commands exit 0 on success and 1 on error. Errors are one line on stderr: `error: …`.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::config::Settings;
use crate::crypto::{self, EncryptionKey};
use crate::executor::{self, Execution, Executor, SecretSource};
use crate::mounts::{Boundary, Kind};
use crate::names::{ActionRef, Owner, PackRef, SecretName};
use crate::runtime::{self, Limits, Output, Runtime, RuntimeConfig, Stdin};
use crate::store::{self, KeyHash, NewSecret, OpenMode, Replace, Store, StoredValue, Written};

pub use crate::store::MAX_VALUE_BYTES;
/// Largest `.wasm` file `run` reads, in bytes (256 MiB).
pub const MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;
/// Longest `--timeout` (7 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// `run` exit status when the guest's deadline passed (as `timeout(1)`).
pub const EXIT_TIMEOUT: u8 = 124;
/// `run` exit status when the host failed before or around the guest (as `docker run`).
pub const EXIT_HOST: u8 = 125;
/// `run` exit status when the guest trapped or hit a limit (as the `wasmtime` CLI).
pub const EXIT_TRAP: u8 = 134;

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
    Secret(SecretCmd),
    /// Run an action (a WASI p2 component or a WASI p1 core module).
    Run(RunArgs),
    /// Encryption key utilities.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Database maintenance.
    #[command(subcommand)]
    Db(DbCmd),
    /// The audit trail of secret deliveries (never values).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Run as an Attune worker: executions from RabbitMQ, secrets from Attune's attune.key.
    Worker(crate::worker::cli::WorkerArgs),
    /// Dispatch an execution to a worker (a stand-in for Attune's scheduler).
    Execute(crate::worker::cli::ExecuteArgs),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// List audit records, newest first.
    List {
        /// Only this action (`pack.action`).
        #[arg(long, value_name = "P.A")]
        action: Option<String>,
        /// Only records since this long ago (`1h`, `30m`) or this RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum DbCmd {
    /// Create the database if needed and apply pending migrations (also done on every start).
    Migrate,
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Store a secret (encrypted unless --plain). Without VALUE, or with `-`, the value is read
    /// from stdin (one trailing newline removed) so that it stays out of shell history.
    Set {
        /// Secret name: 1-128 bytes of [A-Za-z0-9][A-Za-z0-9_-]*.
        name: String,
        /// The value, or `-` for stdin.
        value: Option<String>,
        #[command(flatten)]
        owner: OwnerArgs,
        /// Store the value unencrypted (`encrypted: false`, as the seed allows).
        #[arg(long)]
        plain: bool,
        /// Overwrite the secret even if it is stored encrypted under another key (which this
        /// host cannot decrypt); without it such a write is refused.
        #[arg(long)]
        replace_foreign_key: bool,
    },
    /// Show a secret's metadata; with --reveal, print its value (exactly, no newline added).
    Get {
        /// Secret name.
        name: String,
        #[command(flatten)]
        owner: OwnerArgs,
        /// Decrypt and print the value.
        #[arg(long)]
        reveal: bool,
    },
    /// List secrets (metadata only, never values).
    List {
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Import Attune `attune.key` rows from JSON lines (`psql -Atc "SELECT row_to_json(k)
    /// FROM attune.key k"`), keeping each ciphertext and key hash as is. All rows or none.
    Import {
        /// The JSON-lines file, or `-` for stdin.
        file: PathBuf,
        /// Overwrite stored secrets that are encrypted under a key other than the imported
        /// row's and the configured one; without it such a row refuses the import.
        #[arg(long)]
        replace_foreign_key: bool,
    },
    /// Delete a secret.
    Delete {
        /// Secret name.
        name: String,
        #[command(flatten)]
        owner: OwnerArgs,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Print the configured key's hash (lowercase hex SHA-256 of the derived key), to compare
    /// with the key hash stored on each row.
    Hash,
    /// Re-encrypt every encrypted secret under a new password (from ATTUNE_NEW_ENCRYPTION_KEY,
    /// else stdin) in one transaction; run it again after an interruption. Then configure the
    /// new password as security.encryption_key.
    Rotate {
        /// Report what would change without writing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Owner selection: none = system.
#[derive(Args)]
struct OwnerArgs {
    /// Pack-level secret of pack P.
    #[arg(long, value_name = "P", conflicts_with = "action")]
    pack: Option<String>,
    /// Action-level secret of action P.A.
    #[arg(long, value_name = "P.A")]
    action: Option<String>,
}

impl OwnerArgs {
    fn owner(&self) -> anyhow::Result<Option<Owner>> {
        Ok(match (&self.pack, &self.action) {
            (Some(p), _) => Some(Owner::Pack(PackRef::new(p)?)),
            (None, Some(a)) => Some(Owner::Action(ActionRef::new(a)?)),
            (None, None) => None,
        })
    }
}

#[derive(Args)]
struct RunArgs {
    /// The action's .wasm file.
    file: PathBuf,
    /// Action ref `pack.action`: selects the secrets the guest may see.
    #[arg(long, value_name = "P.A")]
    action: String,
    /// Extra guest environment variable (repeatable). SECRET_* and ATTUNE_* are reserved.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Mount a host directory: HOST::GUEST, or HOST at the same path (repeatable).
    #[arg(long = "dir", value_name = "HOST::GUEST", value_parser = executor::parse_dir)]
    dirs: Vec<runtime::DirMount>,
    /// Mount a host directory read-only: HOST::GUEST, or HOST at the same path (repeatable).
    #[arg(long = "dir-ro", value_name = "HOST::GUEST", value_parser = executor::parse_dir_ro)]
    dirs_ro: Vec<runtime::DirMount>,
    /// Wall-clock limit, e.g. 30s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Limit on compiling the guest (before it runs), e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    compile_timeout: Duration,
    /// Linear memory limit, e.g. 256MiB, 64MiB.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    max_memory: usize,
    /// Fuel budget (about one unit per wasm instruction).
    #[arg(long)]
    fuel: Option<u64>,
    /// Fail before the guest starts if a visible secret cannot be delivered or the store is
    /// missing (config: security.strict_secrets).
    #[arg(long)]
    strict_secrets: bool,
    /// Deliver only these secrets (repeatable); other visible names answer access-denied.
    #[arg(long = "allow-secret", value_name = "NAME", value_parser = parse_secret_name)]
    allow_secret: Vec<SecretName>,
    /// Compile without the host's cache (`<data_dir>/cache`, compiled code reused across runs).
    #[arg(long)]
    no_cache: bool,
    /// Do not mask secret values in the guest's output (debugging only).
    #[arg(long)]
    no_redact: bool,
    /// Most bytes of guest stdout, and of stderr, passed through (e.g. 16MiB); writes past it
    /// fail.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    max_output: usize,
    /// Arguments passed to the guest after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected K=V, got {s:?}"))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d > MAX_TIMEOUT {
        return Err(format!("{s:?} is longer than the maximum of 7 days"));
    }
    Ok(d)
}

fn parse_size(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{s:?} is too large"))
}

/// `1h`-style durations ago, or an RFC 3339 time; returned as RFC 3339 UTC with milliseconds
/// (the stored format, so that it compares as text on SQLite).
fn parse_since(s: &str) -> Result<String, String> {
    let at = match humantime::parse_duration(s) {
        Ok(ago) => chrono::Duration::from_std(ago)
            .ok()
            .and_then(|ago| chrono::Utc::now().checked_sub_signed(ago))
            .ok_or_else(|| format!("{s:?} is too long ago"))?,
        Err(_) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| format!("expected a duration like 1h or an RFC 3339 time, got {s:?}"))?
            .with_timezone(&chrono::Utc),
    };
    Ok(crate::store::timestamp(at))
}

fn parse_secret_name(s: &str) -> Result<SecretName, String> {
    SecretName::new(s).map_err(|e| e.to_string())
}

/// Entry point of the binary: parses arguments, sets up logging (`RUST_LOG`, default `warn`,
/// to stderr), runs the command on a tokio runtime and maps the outcome to an exit status.
pub fn main() -> ExitCode {
    // First, before a key or a value is in memory: no core file, no ptrace by other processes.
    let hardened = crate::process::harden();
    install_panic_hook();
    let cli = Cli::parse();
    init_logging();
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
            return ExitCode::from(EXIT_HOST);
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
            if is_run {
                ExitCode::from(run_error_code(&e))
            } else {
                ExitCode::FAILURE
            }
        }
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

fn run_error_code(e: &anyhow::Error) -> u8 {
    let runtime_err = e
        .chain()
        .find_map(|c| c.downcast_ref::<runtime::Error>())
        .or_else(|| match e.downcast_ref::<executor::Error>() {
            Some(executor::Error::Runtime(r)) => Some(r),
            _ => None,
        });
    match runtime_err {
        Some(runtime::Error::Timeout(_) | runtime::Error::OutputBlocked(_)) => EXIT_TIMEOUT,
        Some(
            runtime::Error::Trap(_)
            | runtime::Error::MemoryLimit(_)
            | runtime::Error::OutOfFuel(_)
            | runtime::Error::ResourceLimit(_)
            | runtime::Error::ExitStatus(_),
        ) => EXIT_TRAP,
        _ => EXIT_HOST,
    }
}

fn init_logging() {
    // The guest-data cap holds whatever RUST_LOG says (see crate::logging).
    crate::logging::install();
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    tracing::debug!(?settings, "configuration loaded");
    match cli.command {
        Command::Secret(cmd) => secret(&settings, cmd).await.map(|()| ExitCode::SUCCESS),
        Command::Key(KeyCmd::Hash) => {
            let key = require_key(&settings)?;
            println!("{}", key.key_hash());
            Ok(ExitCode::SUCCESS)
        }
        Command::Key(KeyCmd::Rotate { dry_run }) => {
            rotate(&settings, dry_run).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(&settings, cli.config.as_deref(), args).await,
        Command::Worker(args) => crate::worker::cli::worker(&settings, args).await,
        Command::Execute(args) => crate::worker::cli::execute(&settings, args).await,
        Command::Audit(AuditCmd::List {
            action,
            since,
            limit,
        }) => {
            let action_ref = action.map(|a| ActionRef::new(&a)).transpose()?;
            let store = open_store(&settings, OpenMode::MustExist).await?;
            let records = store
                .list_audit(&crate::audit::Filter {
                    action_ref: action_ref.map(|a| a.to_string()),
                    since,
                    limit,
                })
                .await?;
            println!(
                "{:<24} {:<36} {:<24} {:<32} {:<10} {:<13} {:<5} RUN",
                "TIME", "EXECUTION", "ACTION", "SECRET", "DOOR", "OUTCOME", "COUNT"
            );
            for listed in records {
                let r = &listed.record;
                println!(
                    "{:<24} {:<36} {:<24} {:<32} {:<10} {:<13} {:<5} {}",
                    r.at,
                    r.execution_id,
                    r.action_ref,
                    r.secret_ref,
                    r.door.as_str(),
                    r.outcome.as_str(),
                    r.count,
                    listed.run.map_or("-", crate::audit::RunState::as_str)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Db(DbCmd::Migrate) => {
            let options = settings.store_options()?;
            open_store(&settings, OpenMode::CreateIfMissing).await?;
            println!("{} is up to date", crate::store::redact_url(&options.url));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn key(settings: &Settings) -> anyhow::Result<Option<EncryptionKey>> {
    settings
        .security
        .encryption_key
        .as_ref()
        .map(EncryptionKey::from_password)
        .transpose()
        .context("security.encryption_key")
}

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

async fn secret(settings: &Settings, cmd: SecretCmd) -> anyhow::Result<()> {
    match cmd {
        SecretCmd::Set {
            name,
            value,
            owner,
            plain,
            replace_foreign_key,
        } => {
            let name = SecretName::new(&name)?;
            let owner = owner.owner()?.unwrap_or(Owner::System);
            let secret_ref = owner.secret_ref(&name);
            let value = read_value(value, &secret_ref)?;
            let key = if plain {
                None
            } else {
                Some(require_key(settings)?)
            };
            let store = open_store(settings, OpenMode::CreateIfMissing).await?;
            let stored = match &key {
                Some(k) => StoredValue::encrypted(
                    k.encrypt(&value, &store::binding(&owner, &name)),
                    Some(KeyHash::of(k)),
                ),
                None => StoredValue::Plain(value),
            };
            // A plain write by a host with a key may replace rows under that key.
            let writer = match &key {
                Some(k) => Some(KeyHash::of(k)),
                None => self::key(settings).ok().flatten().map(|k| KeyHash::of(&k)),
            };
            let written = store
                .put_with(
                    &NewSecret {
                        owner: owner.clone(),
                        name: name.clone(),
                        value: stored,
                    },
                    replace(writer.as_ref(), replace_foreign_key),
                )
                .await?;
            let verb = match written {
                Written::Created => "created",
                Written::Updated => "updated",
            };
            let how = if key.is_some() { "encrypted" } else { "plain" };
            println!(
                "{verb} secret {secret_ref} ({owner}, {how}, env {})",
                name.env_var()
            );
        }
        SecretCmd::Get {
            name,
            owner,
            reveal,
        } => {
            let name = SecretName::new(&name)?;
            let owner = owner.owner()?.unwrap_or(Owner::System);
            let store = open_store(settings, OpenMode::MustExist).await?;
            let secret_ref = owner.secret_ref(&name);
            let Some(row) = store.get(&owner, &name).await? else {
                bail!("secret {secret_ref} not found ({owner})");
            };
            if reveal {
                let value = match &row.value {
                    StoredValue::Encrypted {
                        ciphertext,
                        key_hash,
                    } => {
                        let key = require_key(settings)?;
                        let stored = ciphertext.expose_secret();
                        let hash = key_hash.as_ref().map(KeyHash::as_str);
                        crypto::check_floor(stored, key.floor(store.floor_record()))
                            .and_then(|()| key.decrypt(stored, hash, &row.binding()))
                            .with_context(|| format!("secret {secret_ref}"))?
                    }
                    StoredValue::Plain(value) => value.clone(),
                };
                let mut out = std::io::stdout().lock();
                out.write_all(value.expose_secret().as_bytes())?;
                out.flush()?;
            } else {
                println!("ref:       {secret_ref}");
                println!("owner:     {owner}");
                println!("name:      {name}");
                println!("env:       {}", name.env_var());
                println!("encrypted: {}", row.value.is_encrypted());
                println!(
                    "key hash:  {}",
                    row.value.key_hash().map_or("-", KeyHash::as_str)
                );
                println!("created:   {}", row.created);
                println!("updated:   {}", row.updated);
            }
        }
        SecretCmd::List { owner } => {
            let owner = owner.owner()?;
            let store = match open_store(settings, OpenMode::MustExist).await {
                Ok(store) => store,
                Err(e) if is_missing(&e) => {
                    eprintln!("no secrets stored yet ({e:#})");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let rows = store.list(owner.as_ref()).await?;
            println!(
                "{:<7} {:<24} {:<32} {:<9} {:<12} UPDATED",
                "OWNER", "REF", "NAME", "ENCRYPTED", "KEY HASH"
            );
            for row in rows {
                let hash = row.value.key_hash().map_or_else(
                    || "-".to_owned(),
                    |h| {
                        h.as_str()
                            .chars()
                            .take(12)
                            .flat_map(char::escape_default)
                            .collect()
                    },
                );
                println!(
                    "{:<7} {:<24} {:<32} {:<9} {:<12} {}",
                    row.owner.owner_type().as_str(),
                    if row.owner.owner_ref().is_empty() {
                        "-"
                    } else {
                        row.owner.owner_ref()
                    },
                    row.name,
                    row.value.is_encrypted(),
                    hash,
                    row.updated
                );
            }
        }
        SecretCmd::Import {
            file,
            replace_foreign_key,
        } => {
            let input = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading stdin")?;
                text
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let mut plan =
                crate::import::plan(&input).context("import refused, nothing written")?;
            for (line, secret_ref, owner_type) in &plan.skipped {
                eprintln!("skipped line {line} (ref {secret_ref}): owner type {owner_type} is not run by this host");
            }
            let store = open_store(settings, OpenMode::CreateIfMissing).await?;
            let writer = key(settings)?.map(|k| KeyHash::of(&k));
            if store.floor_record().is_some() {
                plan.bind_unbound(key(settings)?.as_ref())
                    .context("import refused, nothing written")?;
            }
            let written = store
                .put_many_with(&plan.secrets, replace(writer.as_ref(), replace_foreign_key))
                .await
                .context("import failed, nothing written")?;
            let created = written.iter().filter(|w| **w == Written::Created).count();
            println!(
                "imported {} secrets ({created} created, {} updated), skipped {}",
                written.len(),
                written.len() - created,
                plan.skipped.len()
            );
        }
        SecretCmd::Delete { name, owner } => {
            let name = SecretName::new(&name)?;
            let owner = owner.owner()?.unwrap_or(Owner::System);
            let secret_ref = owner.secret_ref(&name);
            let store = open_store(settings, OpenMode::MustExist).await?;
            if !store.delete(&owner, &name).await? {
                bail!("secret {secret_ref} not found ({owner})");
            }
            println!("deleted secret {secret_ref} ({owner})");
        }
    }
    Ok(())
}

/// Environment variable holding the new password for `key rotate`.
pub const NEW_KEY_ENV: &str = "ATTUNE_NEW_ENCRYPTION_KEY";

async fn rotate(settings: &Settings, dry_run: bool) -> anyhow::Result<()> {
    let old = require_key(settings)?;
    let new_password = match std::env::var(NEW_KEY_ENV) {
        Ok(v) => SecretString::from(v),
        Err(_) => read_value(Some("-".into()), "new encryption key")?,
    };
    let new = EncryptionKey::from_password(&new_password).context("new encryption key")?;
    let store = open_store(settings, OpenMode::MustExist).await?;
    let summary = crate::rotate::rotate(&store, &old, &new, dry_run).await?;
    let verb = if dry_run {
        "would re-encrypt"
    } else {
        "re-encrypted"
    };
    for secret_ref in &summary.rotated {
        println!("{verb} {secret_ref}");
    }
    println!(
        "{verb} {} secrets; {} already under the new key, {} plain left alone",
        summary.rotated.len(),
        summary.already_new.len(),
        summary.plain
    );
    if !dry_run {
        println!(
            "new key hash {}: configure the new password as security.encryption_key",
            new.key_hash()
        );
    }
    Ok(())
}

fn is_missing(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::store::Error>(),
        Some(crate::store::Error::Missing { .. })
    )
}

/// Reads the value from the argument or stdin and checks it: at most [`MAX_VALUE_BYTES`],
/// valid UTF-8, no NUL byte (a C guest would see its env value truncated).
fn read_value(arg: Option<String>, secret_ref: &str) -> anyhow::Result<SecretString> {
    let mut raw = Zeroizing::new(match arg {
        Some(v) if v != "-" => v.into_bytes(),
        // At a terminal, prompt without echo (one line, like Vault's CLI); multi-line values
        // come from a pipe or file (`- < key.pem`).
        _ if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("{secret_ref} (input hidden, Enter ends): "))
                .context("reading the value from the terminal")?
                .into_bytes()
        }
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(MAX_VALUE_BYTES as u64 + 3)
                .read_to_end(&mut buf)
                .context("reading the value from stdin")?;
            if buf.ends_with(b"\n") {
                buf.pop();
                if buf.ends_with(b"\r") {
                    buf.pop();
                }
            }
            buf
        }
    });
    let problem = if raw.len() > MAX_VALUE_BYTES {
        Some(format!("it is longer than {MAX_VALUE_BYTES} bytes"))
    } else if raw.contains(&0) {
        Some("it contains a NUL byte, which environment variables cannot carry".to_owned())
    } else {
        None
    };
    if let Some(problem) = problem {
        bail!("the value of secret {secret_ref} is refused: {problem}");
    }
    match String::from_utf8(std::mem::take(&mut *raw)) {
        Ok(text) => Ok(SecretString::from(text)),
        Err(e) => {
            Zeroizing::new(e.into_bytes());
            bail!("the value of secret {secret_ref} is refused: it is not valid UTF-8")
        }
    }
}

async fn run(
    settings: &Settings,
    config: Option<&Path>,
    args: RunArgs,
) -> anyhow::Result<ExitCode> {
    let action = ActionRef::new(&args.action)?;
    let program = program_name(&args.file);
    let bytes = read_module(&args.file)?;
    let mut dirs = args.dirs;
    dirs.extend(args.dirs_ro);
    // Checked before anything is created (the data directory, the cache, the store), so that
    // a mount cannot catch them on a first run; the executor checks again.
    let boundary = boundary(settings, config)?;
    boundary.check(&dirs)?;
    let runtime = std::sync::Arc::new(Runtime::new(RuntimeConfig {
        fuel: args.fuel.is_some(),
        cache_dir: (!args.no_cache)
            .then(|| settings.data_dir().map(|d| d.join("cache")))
            .transpose()?,
        pooling: None,
    })?);
    // Compilation is bounded too: a module built to be slow to compile must not hold the host.
    let compiling = {
        // Errors name the file as given (`run /etc/passwd` → "/etc/passwd is not …").
        let (runtime, shown) = (
            std::sync::Arc::clone(&runtime),
            args.file.display().to_string(),
        );
        tokio::task::spawn_blocking(move || runtime.compile(&shown, &bytes))
    };
    let guest = tokio::time::timeout(args.compile_timeout, compiling)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "compiling {program} took longer than {} (--compile-timeout)",
                humantime::format_duration(args.compile_timeout)
            )
        })?
        .context("compiler thread failed")??;
    let strictness = if args.strict_secrets || settings.security.strict_secrets {
        executor::Strictness::Strict
    } else {
        executor::Strictness::Lenient
    };
    let source = match open_store(settings, OpenMode::MustExist).await {
        Ok(store) => SecretSource::Store(store),
        Err(e) => SecretSource::Missing(format!("{e:#}")),
    };
    let executor =
        Executor::new(runtime, source, key(settings)?, strictness).with_boundary(&boundary);
    if args.no_redact {
        tracing::warn!("--no-redact: secret values the guest prints are shown as they are");
    }
    let allowed = (!args.allow_secret.is_empty())
        .then(|| args.allow_secret.into_iter().collect::<BTreeSet<_>>());
    let report = executor
        .execute(
            &guest,
            Execution {
                action,
                program,
                args: args.args,
                env: args.env,
                dirs,
                stdin: Stdin::Inherit,
                stdout: Output::Inherit,
                stderr: Output::Inherit,
                limits: Limits {
                    timeout: args.timeout,
                    max_memory: args.max_memory,
                    fuel: args.fuel,
                    ..Limits::default()
                },
                allowed,
                redact: !args.no_redact,
                max_output: args.max_output as u64,
                cancel: runtime::Cancel::new(),
                execution_id: None,
            },
        )
        .await;
    // The audit records are written in the background: wait for them, whatever the outcome.
    executor.flush().await;
    let report = report?;
    let code = report.exit.code;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Reads a guest file: a regular file of at most [`MAX_MODULE_BYTES`].
fn read_module(file: &Path) -> anyhow::Result<Vec<u8>> {
    let shown = file.display();
    let meta = std::fs::metadata(file).with_context(|| format!("cannot read {shown}"))?;
    if !meta.is_file() {
        bail!("{shown} is not a regular file");
    }
    if meta.len() > MAX_MODULE_BYTES {
        bail!("{shown} is larger than {MAX_MODULE_BYTES} bytes");
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_MODULE_BYTES + 1).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {shown}"))?;
    Ok(bytes)
}

/// What no mount may reach: `/proc`, `/sys`, `/dev`, the data directory (with the cache), the
/// store's database file and directory wherever `database.url` puts them, and the
/// configuration file.
fn boundary(settings: &Settings, config: Option<&Path>) -> anyhow::Result<Boundary> {
    let mut boundary = Boundary::new();
    let data = settings.data_dir()?;
    boundary.protect(Kind::DataDir, &data);
    boundary.protect(Kind::Cache, data.join("cache"));
    if let Some(file) = crate::store::sqlite_file(&settings.database_url()?) {
        boundary.protect_database(&file);
    }
    if let Some(config) = config {
        boundary.protect(Kind::Config, config);
    }
    Ok(boundary)
}

fn program_name(file: &Path) -> String {
    file.file_name().map_or_else(
        || "action.wasm".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 * 1024 * 1024);
        assert_eq!(parse_size("256MiB").unwrap(), 256 * 1024 * 1024);
        assert!(parse_size("lots").is_err());
        assert_eq!(
            humantime::parse_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            humantime::parse_duration("2s").unwrap(),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn panics_print_where_never_what() {
        let caught = std::panic::catch_unwind(|| {
            let secret = "planted-panic-secret-0a1b";
            panic!("{secret}");
        });
        assert!(caught.is_err());
        let line = panic_line(Some(std::panic::Location::caller()));
        assert!(
            line.contains("cli.rs") && !line.contains("planted"),
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
