//! The worker's settings: the `message_queue.*`, `worker.*`, `packs_base_dir` and
//! `default_execution_timeout_seconds` keys of Attune's own configuration (read through
//! [`crate::config::Settings`], so the same file and `ATTUNE__…` variables serve both), resolved
//! with Attune's defaults into a [`WorkerConfig`].
//!
//! ```yaml
//! database:
//!   url: postgres://attune@db/attune        # Attune's database (schema `attune`)
//! message_queue:
//!   url: amqp://guest:guest@rabbitmq:5672/%2f
//! security:
//!   encryption_key: "the password Attune's API encrypts keys with"
//! packs_base_dir: /opt/attune/packs
//! default_execution_timeout_seconds: 600
//! worker:
//!   name: wasm-worker-1                      # default worker-{hostname}
//!   max_concurrent_tasks: 10
//!   heartbeat_interval: 30                   # seconds
//!   max_stdout_bytes: 10485760
//!   max_stderr_bytes: 10485760
//!   metrics_address: 127.0.0.1:9464          # opt-in Prometheus /metrics (off by default)
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Error;
use crate::config::Settings;
use crate::secrets::crypto::EncryptionKey;

/// Attune's default broker URL (`message_queue.url`).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@localhost:5672/%2f";
/// Attune's default `packs_base_dir`.
pub const DEFAULT_PACKS_BASE_DIR: &str = "/opt/attune/packs";
/// Attune's default `default_execution_timeout_seconds`.
pub const DEFAULT_EXECUTION_TIMEOUT_SECS: u64 = 600;
/// Attune's default `worker.max_concurrent_tasks`.
pub const DEFAULT_MAX_CONCURRENT_TASKS: u32 = 10;
/// Attune's default `worker.heartbeat_interval`, seconds.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 30;
/// Attune's default `worker.max_stdout_bytes` / `max_stderr_bytes` (10 MiB).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 10 * 1024 * 1024;
/// The runtime name this worker advertises in `capabilities.runtimes`: actions whose runtime
/// has this name are dispatched to it.
pub const RUNTIME_NAME: &str = "wasm";

/// `message_queue.*`. `Debug` hides the URL's password.
#[derive(Deserialize, Default, Clone)]
pub struct MessageQueue {
    /// AMQP URL (`message_queue.url`, `ATTUNE__MESSAGE_QUEUE__URL`), default
    /// [`DEFAULT_AMQP_URL`]. `amqp://`, or `amqps://` for TLS (rustls, the system's trusted
    /// certificates).
    pub url: Option<String>,
}

impl fmt::Debug for MessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageQueue")
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .finish()
    }
}

/// `worker.*` (all optional; defaults are Attune's).
#[derive(Deserialize, Default, Debug, Clone)]
pub struct WorkerSection {
    /// Registration name, unique per worker (`worker.name`), default `worker-{hostname}`.
    pub name: Option<String>,
    /// Executions run at once (`worker.max_concurrent_tasks`, default 10).
    pub max_concurrent_tasks: Option<u32>,
    /// Seconds between heartbeats (`worker.heartbeat_interval`, default 30).
    pub heartbeat_interval: Option<u64>,
    /// Seconds running executions get to finish on SIGTERM (`worker.shutdown_timeout`,
    /// default 30).
    pub shutdown_timeout: Option<u64>,
    /// Bytes of stdout kept per execution (`worker.max_stdout_bytes`, default 10 MiB).
    pub max_stdout_bytes: Option<u64>,
    /// Bytes of stderr kept per execution (`worker.max_stderr_bytes`, default 10 MiB).
    pub max_stderr_bytes: Option<u64>,
    /// `host:port` to serve Prometheus metrics on, at `GET /metrics`
    /// (`worker.metrics_address`, `ATTUNE__WORKER__METRICS_ADDRESS`); none by default (off).
    pub metrics_address: Option<String>,
}

/// Everything a worker process needs, resolved with defaults. `Debug` never prints the
/// encryption key or a password.
pub struct WorkerConfig {
    /// Attune's PostgreSQL database (`database.url`).
    pub database_url: String,
    /// The broker (`message_queue.url`).
    pub amqp_url: String,
    /// Registration name.
    pub name: String,
    /// Executions run at once (also the instance pool's size).
    pub max_concurrent: u32,
    /// Connections of the worker's pool on Attune's database (`database.max_connections`,
    /// default `max_concurrent + 4`); the heartbeat has one connection of its own.
    pub db_max_connections: u32,
    /// Where `/metrics` is served (`worker.metrics_address`); `None`: not served.
    pub metrics_address: Option<SocketAddr>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Grace period for running executions on SIGTERM.
    pub shutdown_timeout: Duration,
    /// Stdout kept per execution, bytes.
    pub max_stdout: u64,
    /// Stderr kept per execution, bytes.
    pub max_stderr: u64,
    /// Root of the packs: the action file is `{packs_base_dir}/{pack_ref}/actions/{entrypoint}`.
    pub packs_base_dir: PathBuf,
    /// Timeout of an execution when neither it nor its action has one.
    pub default_timeout: Duration,
    /// The key Attune's keys are encrypted with (`security.encryption_key`).
    pub key: Option<EncryptionKey>,
    /// `security.strict_secrets`: an undeliverable secret fails the execution.
    pub strict: bool,
    /// `security.refuse_config_get_all`: components' `wasi:config/store.get-all` is refused.
    pub refuse_config_get_all: bool,
}

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field(
                "database_url",
                &crate::store::redact_url(&self.database_url),
            )
            .field("amqp_url", &crate::store::redact_url(&self.amqp_url))
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("db_max_connections", &self.db_max_connections)
            .field("metrics_address", &self.metrics_address)
            .field("heartbeat", &self.heartbeat)
            .field("packs_base_dir", &self.packs_base_dir)
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// `database.url`, which must be the PostgreSQL URL of Attune's database.
///
/// # Errors
/// [`Error::Config`] when it is missing or not a `postgres://`/`postgresql://` URL.
pub(crate) fn database_url(settings: &Settings) -> Result<&str, Error> {
    settings
        .database
        .url
        .as_deref()
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
        .ok_or_else(|| {
            Error::Config(
                "database.url must be the PostgreSQL URL of Attune's database (postgres://…)"
                    .into(),
            )
        })
}

/// `message_queue.url`, or [`DEFAULT_AMQP_URL`], checked before it reaches the AMQP client:
/// the client's error for a URL it cannot read quotes the URL whole, password included
/// (`amqp:user:password@host`, the `//` mistyped).
///
/// # Errors
/// [`Error::Config`] when it is not an `amqp://` or `amqps://` URL that parses; the message
/// names the setting, never its value.
pub(crate) fn amqp_url(settings: &Settings) -> Result<String, Error> {
    let url = settings
        .message_queue
        .url
        .clone()
        .unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
    let amqp = ["amqp://", "amqps://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    });
    if !amqp || url.parse::<lapin::uri::AMQPUri>().is_err() {
        return Err(Error::Config(
            "message_queue.url must be an AMQP URL (amqp://user:password@host:port/vhost, or amqps:// for TLS)".into(),
        ));
    }
    Ok(url)
}

impl WorkerConfig {
    /// Resolves the worker settings of `settings`.
    ///
    /// # Errors
    /// [`Error::Config`] when `database.url` is not a PostgreSQL URL, a number is zero,
    /// `worker.metrics_address` is not an `ip:port` address, or the encryption key is too short.
    pub fn from_settings(settings: &Settings) -> Result<Self, Error> {
        let database_url = database_url(settings)?.to_owned();
        let w = &settings.worker;
        let positive = |v: Option<u64>, default: u64, key: &str| match v {
            Some(0) => Err(Error::Config(format!("{key} must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let max_concurrent = positive(
            w.max_concurrent_tasks.map(u64::from),
            DEFAULT_MAX_CONCURRENT_TASKS.into(),
            "worker.max_concurrent_tasks",
        )?;
        let db_max_connections = positive(
            settings.database.max_connections.map(u64::from),
            max_concurrent.saturating_add(4),
            "database.max_connections",
        )?;
        let metrics_address = match &w.metrics_address {
            Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|_| {
                Error::Config(
                    "worker.metrics_address must be an ip:port address (e.g. 127.0.0.1:9464)"
                        .into(),
                )
            })?),
            None => None,
        };
        let key = match &settings.security.encryption_key {
            Some(password) => Some(
                EncryptionKey::from_password(password)
                    .map_err(|e| Error::Config(format!("security.encryption_key: {e}")))?,
            ),
            None => None,
        };
        Ok(Self {
            database_url,
            amqp_url: amqp_url(settings)?,
            name: w.name.clone().unwrap_or_else(default_name),
            max_concurrent: u32::try_from(max_concurrent).unwrap_or(u32::MAX),
            db_max_connections: u32::try_from(db_max_connections).unwrap_or(u32::MAX),
            metrics_address,
            heartbeat: Duration::from_secs(positive(
                w.heartbeat_interval,
                DEFAULT_HEARTBEAT_SECS,
                "worker.heartbeat_interval",
            )?),
            shutdown_timeout: Duration::from_secs(w.shutdown_timeout.unwrap_or(30)),
            max_stdout: positive(
                w.max_stdout_bytes,
                DEFAULT_MAX_OUTPUT_BYTES,
                "worker.max_stdout_bytes",
            )?,
            max_stderr: positive(
                w.max_stderr_bytes,
                DEFAULT_MAX_OUTPUT_BYTES,
                "worker.max_stderr_bytes",
            )?,
            packs_base_dir: settings
                .packs_base_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PACKS_BASE_DIR)),
            default_timeout: Duration::from_secs(positive(
                settings.default_execution_timeout_seconds,
                DEFAULT_EXECUTION_TIMEOUT_SECS,
                "default_execution_timeout_seconds",
            )?),
            key,
            strict: settings.security.strict_secrets,
            refuse_config_get_all: settings.security.refuse_config_get_all,
        })
    }
}

/// `worker-{hostname}` (Attune's default name).
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("worker-{host}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(url: &str) -> Settings {
        let mut settings = Settings::default();
        settings.message_queue.url = Some(url.to_owned());
        settings
    }

    #[test]
    fn amqp_and_amqps_urls_are_accepted_and_others_named_without_their_value() {
        for url in [
            "amqp://guest:guest@localhost:5672/%2f",
            "amqps://user:pw-0123@broker.example:5671/vhost",
            "AMQPS://user:pw-0123@broker.example/vhost",
        ] {
            assert_eq!(amqp_url(&settings(url)).unwrap(), url);
        }
        for url in [
            "amqps:user:pw-0123@broker.example:5671/vhost",
            "https://user:pw-0123@broker.example/",
            "amqps://user:pw-0123@broker.example:notaport/",
        ] {
            let e = amqp_url(&settings(url)).unwrap_err().to_string();
            assert!(e.contains("message_queue.url"), "{e}");
            assert!(!e.contains("pw-0123"), "{e}");
        }
    }
}
