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
//!   refuse_config_get_all: false          # true: wasi:config/store get-all is refused
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// Environment prefix of every setting.
pub const ENV_PREFIX: &str = "ATTUNE";

/// Configuration load failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file or an `ATTUNE__…` variable could not be read or has the wrong shape. The
    /// message never quotes a configured value (it could be the encryption key).
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// No data directory could be determined.
    #[error("no data directory: set data_dir or ATTUNE__DATA_DIR")]
    NoDataDir,
    /// An `ATTUNE__…` environment variable (named) holds bytes that are not UTF-8; its value
    /// is never shown (it could be the encryption key).
    #[error("environment variable {0} is not valid UTF-8 (its value is not shown): set it to UTF-8 text")]
    NotUnicode(String),
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
    /// PostgreSQL connection pool size (`database.max_connections`, default 5; for
    /// `attune-wasm worker`, its pool on Attune's database, default
    /// `worker.max_concurrent_tasks + 4`).
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
    /// Refuse `wasi:config/store.get-all` (`security.refuse_config_get_all`): a component then
    /// reads only the secrets it names (`get`, `get-secret`), each recorded by name.
    #[serde(default)]
    pub refuse_config_get_all: bool,
}

/// Why a non-string encryption key is refused (the value is never rendered).
const NOT_A_STRING: &str =
    "the encryption key must be a string (quote it in YAML; its value is not shown)";

/// Accepts only a string: a YAML number would reach us already rounded.
fn string_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
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
        // Any other shape is refused without rendering it: serde's default message quotes
        // the value (`floating point `1.2e35``), and a YAML number is the key, rounded.
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom(NOT_A_STRING))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom(NOT_A_STRING))
        }
    }
    d.deserialize_any(Visitor)
}

/// Replaces every `"…"`- or `` `…` ``-quoted part of a message by `"…"` (serde and `config`
/// quote the offending value: `string "…"`, `floating point `…``, an OS string's bytes).
/// Escapes inside double quotes (`\"`) do not end the quote.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push_str("\"…\"");
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '`' => {
                out.push_str("`…`");
                for q in chars.by_ref() {
                    if q == '`' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A configuration error as one line that renders no configured value: the parts of
/// `config`'s errors that hold one (the unexpected value of a type error, quoted text) are
/// left out; the key and the file are kept.
fn describe(e: &config::ConfigError) -> String {
    use config::ConfigError as C;
    let at = |key: &Option<String>, origin: &Option<String>| {
        let mut s = String::new();
        if let Some(key) = key {
            s.push_str(&format!(" for key {key}"));
        }
        if let Some(origin) = origin {
            s.push_str(&format!(" in {}", without_values(origin)));
        }
        s
    };
    match e {
        C::Type {
            origin,
            expected,
            key,
            ..
        } => format!(
            "invalid type (value not shown), expected {}{}",
            without_values(expected),
            at(key, origin)
        ),
        C::At { error, origin, key } => format!("{}{}", describe(error), at(key, origin)),
        other => without_values(&other.to_string()),
    }
}

/// Refuses an `ATTUNE__…` variable whose value is not UTF-8 (naming it), before `config`
/// reads the environment: its own error would print the value's bytes.
fn check_env_unicode() -> Result<()> {
    let prefix = format!("{ENV_PREFIX}__").to_ascii_lowercase();
    for (name, value) in std::env::vars_os() {
        // `config` skips names that are not UTF-8.
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.to_ascii_lowercase().starts_with(&prefix) && value.to_str().is_none() {
            return Err(Error::NotUnicode(name.to_owned()));
        }
    }
    Ok(())
}

impl Settings {
    /// Loads `file` (when given; it must exist) and then the `ATTUNE__…` environment.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the file is missing or malformed or a value has the wrong type
    /// (the message names the key, never the value); [`Error::NotUnicode`] when an
    /// `ATTUNE__…` variable is not UTF-8.
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
        check_env_unicode()?;
        builder
            .build()
            .and_then(config::Config::try_deserialize)
            // Never the error's own rendering: it can quote a configured value.
            .map_err(|e| Error::Invalid(describe(&e)))
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
            .field(
                "security.refuse_config_get_all",
                &self.security.refuse_config_get_all,
            )
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
