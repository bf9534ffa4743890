//! Host configuration (seed "Configuration"): an optional YAML file overridden by `ATTUNE__…`
//! environment variables (`__` separates levels, e.g. `ATTUNE__SECURITY__ENCRYPTION_KEY` for
//! `security.encryption_key`).
//!
//! ```yaml
//! data_dir: /var/lib/attune-wasm          # default: $XDG_DATA_HOME/attune-wasm
//! database:
//!   url: sqlite:///var/lib/attune-wasm/secrets.db   # default: <data_dir>/secrets.db
//! security:
//!   encryption_key: "at-least-32-bytes-of-password-material"
//!   strict_secrets: false                 # true: a secret that fails to decrypt fails the run
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// Environment prefix of every setting.
pub const ENV_PREFIX: &str = "ATTUNE";

/// Configuration load failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or an `ATTUNE__…` variable could not be read or has the wrong shape. The
    /// message never quotes a configured value (it could be the encryption key).
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// No data directory could be determined.
    #[error("no data directory: set data_dir or ATTUNE__DATA_DIR")]
    NoDataDir,
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// All settings. `Debug` is written by hand and never prints the encryption key.
#[derive(Deserialize, Default)]
pub struct Settings {
    /// Where the embedded database lives (`data_dir`, `ATTUNE__DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    /// `database.*`.
    #[serde(default)]
    pub database: Database,
    /// `security.*`.
    #[serde(default)]
    pub security: Security,
    /// `message_queue.*` (the worker's broker).
    #[serde(default)]
    pub message_queue: crate::worker::config::MessageQueue,
    /// `worker.*` (see [`crate::worker::config`]).
    #[serde(default)]
    pub worker: crate::worker::config::WorkerSection,
    /// Root of Attune's packs (`packs_base_dir`, default `/opt/attune/packs`).
    pub packs_base_dir: Option<PathBuf>,
    /// Timeout of an execution when neither it nor its action has one
    /// (`default_execution_timeout_seconds`, default 600).
    pub default_execution_timeout_seconds: Option<u64>,
}

/// `database.*` settings.
#[derive(Deserialize, Default, Debug, Clone)]
pub struct Database {
    /// Database URL (`database.url`, `ATTUNE__DATABASE__URL`): `sqlite:PATH`,
    /// `sqlite://PATH` or `postgres://user@host:port/db`. Default:
    /// `sqlite://<data_dir>/secrets.db`.
    pub url: Option<String>,
    /// PostgreSQL schema of the tables (`database.schema`, default `attune`).
    pub schema: Option<String>,
    /// PostgreSQL connection pool size (`database.max_connections`, default 5).
    pub max_connections: Option<u32>,
}

/// `security.*` settings.
#[derive(Deserialize, Default)]
pub struct Security {
    /// Password the AES-256 key is derived from (`security.encryption_key`,
    /// `ATTUNE__SECURITY__ENCRYPTION_KEY`); at least 32 bytes. Must be a string (quote an
    /// all-digit password in YAML).
    #[serde(default, deserialize_with = "string_secret")]
    pub encryption_key: Option<SecretString>,
    /// Fail an execution (before its guest starts) when a visible secret cannot be delivered
    /// or the store is missing, instead of warning (`security.strict_secrets`).
    #[serde(default)]
    pub strict_secrets: bool,
}

/// Accepts only a string: a YAML number would reach us already rounded.
fn string_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Option<SecretString>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string (quote the encryption key in YAML)")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(SecretString::from(v.to_owned())))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(SecretString::from(v)))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Visitor)
}

/// Replaces every `"…"`-quoted part of a message (serde quotes the offending value) by `"…"`.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…");
            }
            quoted = !quoted;
            if !quoted {
                out.push('"');
            }
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

impl Settings {
    /// Loads `file` (when given; it must exist) and then the `ATTUNE__…` environment.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the file is missing or malformed or a value has the wrong type.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Yaml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                // Values stay strings: parsing would turn an all-digit password into a float.
                .try_parsing(false),
        );
        builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| {
                let text = e.to_string();
                // serde quotes the offending value in type errors: never echo it.
                if text.contains("invalid type") || text.contains("invalid value") {
                    Error::Invalid(without_quoted(&text))
                } else {
                    Error::Invalid(text)
                }
            })
    }

    /// The data directory: `data_dir`, else `$XDG_DATA_HOME/attune-wasm` (usually
    /// `~/.local/share/attune-wasm`).
    ///
    /// # Errors
    /// [`Error::NoDataDir`] when neither is available (no home directory).
    pub fn data_dir(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        directories::ProjectDirs::from("", "", "attune-wasm")
            .map(|d| d.data_dir().to_path_buf())
            .ok_or(Error::NoDataDir)
    }

    /// The database URL: `database.url`, else the SQLite file `<data_dir>/secrets.db`.
    ///
    /// # Errors
    /// [`Error::NoDataDir`].
    pub fn database_url(&self) -> Result<String> {
        if let Some(url) = &self.database.url {
            return Ok(url.clone());
        }
        // The path is escaped: sqlx decodes `%xx` and splits at `?`/`#` in SQLite URLs.
        let path = self.data_dir()?.join("secrets.db");
        let path = path.to_string_lossy();
        let mut escaped = String::with_capacity(path.len());
        for c in path.chars() {
            match c {
                '%' => escaped.push_str("%25"),
                '?' => escaped.push_str("%3F"),
                '#' => escaped.push_str("%23"),
                c => escaped.push(c),
            }
        }
        Ok(format!("sqlite://{escaped}"))
    }
}

impl Settings {
    /// Store options: [`Settings::database_url`], schema and pool size.
    ///
    /// # Errors
    /// [`Error::NoDataDir`].
    pub fn store_options(&self) -> Result<crate::store::StoreOptions> {
        let mut options = crate::store::StoreOptions::new(self.database_url()?);
        if let Some(schema) = &self.database.schema {
            options.schema.clone_from(schema);
        }
        if let Some(n) = self.database.max_connections {
            options.max_connections = n;
        }
        Ok(options)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("data_dir", &self.data_dir)
            .field(
                "database.url",
                &self.database.url.as_deref().map(crate::store::redact_url),
            )
            .field(
                "security.encryption_key",
                &self.security.encryption_key.as_ref().map(|_| "<set>"),
            )
            .field("security.strict_secrets", &self.security.strict_secrets)
            .field("message_queue", &self.message_queue)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn yaml_file_is_read_and_debug_hides_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "data_dir: /tmp/x\nsecurity:\n  encryption_key: yaml-key-0123456789abcdef0123456789\n  strict_secrets: true\n",
        )
        .unwrap();
        let s = Settings::load(Some(&file)).unwrap();
        assert_eq!(
            s.security.encryption_key.as_ref().unwrap().expose_secret(),
            "yaml-key-0123456789abcdef0123456789"
        );
        assert!(s.security.strict_secrets);
        assert_eq!(s.database_url().unwrap(), "sqlite:///tmp/x/secrets.db");
        assert!(!format!("{s:?}").contains("yaml-key"));
    }

    #[test]
    fn numbers_and_misplaced_values_are_refused_without_echo() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "security:\n  encryption_key: 12345678901234567890123456789012345678\n",
        )
        .unwrap();
        let err = Settings::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("quote"), "{err}");
        std::fs::write(&file, "security: my-password-0123456789abcdef-0123456789\n").unwrap();
        let err = Settings::load(Some(&file)).unwrap_err().to_string();
        assert!(!err.contains("my-password"), "{err}");
    }

    #[test]
    fn data_dir_is_escaped_in_the_default_url() {
        let s = Settings {
            data_dir: Some(PathBuf::from("/x/c%2Fd?mode=memory#f")),
            ..Settings::default()
        };
        assert_eq!(
            s.database_url().unwrap(),
            "sqlite:///x/c%252Fd%3Fmode=memory%23f/secrets.db"
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(Settings::load(Some(Path::new("/nonexistent/attune.yaml"))).is_err());
    }
}
