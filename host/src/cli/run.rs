//! `attune-wasm run FILE --action P.A …`: one action, with the secrets it may see, under its
//! limits; exits with the guest's status (see [`super::exit`]).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use attune_wasm::config::Settings;
use attune_wasm::executor::mounts::{Boundary, Kind};
use attune_wasm::executor::{self, Execution, Executor, SecretSource};
use attune_wasm::runtime::{DirMount, GetAll, Output, Runtime, RuntimeConfig, Stdin};
use attune_wasm::secrets::names::{ActionRef, SecretName};
use attune_wasm::store::OpenMode;

use super::{exit, key, open_store};

/// Largest `.wasm` file `run` reads, in bytes (256 MiB).
pub const MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;
/// Longest `--timeout` (7 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Args)]
pub struct RunArgs {
    /// The action's .wasm file.
    file: PathBuf,
    /// Action ref `pack.action`: selects the secrets the guest may see.
    #[arg(long, value_name = "P.A")]
    action: String,
    /// Extra guest environment variable (repeatable). SECRET_* and ATTUNE_* are reserved.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Mount a host directory: HOST::GUEST, or HOST at the same path (repeatable).
    #[arg(long = "dir", value_name = "HOST::GUEST", value_parser = parse_dir)]
    dirs: Vec<DirMount>,
    /// Mount a host directory read-only: HOST::GUEST, or HOST at the same path (repeatable).
    #[arg(long = "dir-ro", value_name = "HOST::GUEST", value_parser = parse_dir_ro)]
    dirs_ro: Vec<DirMount>,
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
    /// Refuse wasi:config/store get-all: components read only the secrets they name (config:
    /// security.refuse_config_get_all).
    #[arg(long)]
    refuse_config_get_all: bool,
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

/// Parses `HOST::GUEST` (wasmtime CLI syntax) or `HOST` (mounted at the same path).
///
/// # Errors
/// A message when either side is empty.
fn parse_dir(spec: &str) -> std::result::Result<DirMount, String> {
    let (host, guest) = match spec.split_once("::") {
        Some((h, g)) => (h, g),
        None => (spec, spec),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("expected HOST::GUEST or HOST, got {spec:?}"));
    }
    Ok(DirMount {
        host: PathBuf::from(host),
        guest: guest.to_owned(),
        read_only: false,
    })
}

/// As `parse_dir`, for a read-only mount (`--dir-ro`).
///
/// # Errors
/// A message when either side is empty.
fn parse_dir_ro(spec: &str) -> std::result::Result<DirMount, String> {
    parse_dir(spec).map(|d| DirMount {
        read_only: true,
        ..d
    })
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

fn parse_secret_name(s: &str) -> Result<SecretName, String> {
    SecretName::new(s).map_err(|e| e.to_string())
}

pub async fn run(
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
    let mut config = RuntimeConfig::default();
    config.fuel = args.fuel.is_some();
    config.cache_dir = (!args.no_cache)
        .then(|| settings.data_dir().map(|d| d.join("cache")))
        .transpose()?;
    let runtime = Arc::new(Runtime::new(config)?);
    // Compilation is bounded too: a module built to be slow to compile must not hold the host.
    let compiling = {
        // Errors name the file as given (`run /etc/passwd` → "/etc/passwd is not …").
        let (runtime, shown) = (Arc::clone(&runtime), args.file.display().to_string());
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
    let executor = Executor::new(runtime, source, key(settings)?, strictness)
        .with_boundary(&boundary)
        .with_config_get_all(
            if args.refuse_config_get_all || settings.security.refuse_config_get_all {
                GetAll::Refused
            } else {
                GetAll::Answered
            },
        );
    if args.no_redact {
        tracing::warn!("--no-redact: secret values the guest prints are shown as they are");
    }
    let allowed = (!args.allow_secret.is_empty())
        .then(|| args.allow_secret.into_iter().collect::<BTreeSet<_>>());
    let mut execution = Execution::new(action, program);
    execution.args = args.args;
    execution.env = args.env;
    execution.dirs = dirs;
    execution.stdin = Stdin::Inherit;
    execution.stdout = Output::Inherit;
    execution.stderr = Output::Inherit;
    execution.limits.timeout = args.timeout;
    execution.limits.max_memory = args.max_memory;
    execution.limits.fuel = args.fuel;
    execution.allowed = allowed;
    execution.redact = !args.no_redact;
    execution.max_output = args.max_output as u64;
    let report = executor.execute(&guest, execution).await;
    // The audit records are written in the background: wait for them, whatever the outcome.
    executor.flush().await;
    let report = report?;
    let code = report.exit.code;
    Ok(exit::guest(code))
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
    if let Some(file) = attune_wasm::store::sqlite_file(&settings.database_url()?) {
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
    fn dir_specs() {
        let d = parse_dir("/tmp/x::/data").unwrap();
        assert_eq!(d.guest, "/data");
        assert_eq!(parse_dir("/tmp").unwrap().guest, "/tmp");
        assert!(parse_dir("::/x").is_err());
    }
}
