//! Where and how to open the store: its URL (the backend is chosen by the scheme), schema,
//! pool size and row cache; and how a database URL may be shown.

use std::fmt;
use std::time::Duration;

/// How [`super::Store::open`] treats a database that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create it (and its directory) and run migrations: for writes.
    CreateIfMissing,
    /// Fail with [`super::Error::Missing`]: for `run`, which then goes on without secrets.
    MustExist,
}

/// Where and how to open the store. `Debug` shows the URL through [`redact_url`].
#[derive(Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// `sqlite:PATH`, `sqlite://PATH`, or `postgres://user@host:port/db` (`postgresql://`).
    pub url: String,
    /// PostgreSQL schema holding the tables (default `attune`); ignored for SQLite.
    pub schema: String,
    /// Connection pool size (PostgreSQL; SQLite uses 4). The audit trail has one more
    /// connection of its own, opened at its first write.
    pub max_connections: u32,
    /// Keep the rows each action may see (ciphertexts and plain rows as stored, never a
    /// decrypted value) in memory for this long; `None` (the default) queries every time.
    /// Every write through this store empties the cache; on PostgreSQL so does every change
    /// to the table by any writer whose statements fire triggers (`LISTEN attune_secrets`;
    /// not `session_replication_role = replica`, e.g. `pg_restore --disable-triggers`), and the
    /// cache is bypassed while the listener is not connected (it uses one extra pool
    /// connection). With SQLite, a change made by another process is seen after at most this
    /// long. A worker setting: a few seconds is typical.
    pub cache_ttl: Option<Duration>,
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

impl StoreOptions {
    /// Options for `url` with the default schema (`attune`) and pool size (5).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "attune".into(),
            max_connections: 5,
            cache_ttl: None,
        }
    }
}

/// The database file a `sqlite:` URL names, as the store opens it (`%xx` decoded, query
/// dropped); `None` for other schemes and in-memory databases.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    (!file.as_os_str().is_empty() && file.as_os_str() != ":memory:").then(|| file.to_path_buf())
}

/// A database URL as it may be shown (errors, logs, `Debug`): the scheme, host, port and
/// database only, never the user, password or query (`?password=…`), whatever the URL's shape.
///
/// - `postgres://user:pw@host:5432/db?sslmode=require` → `postgres://host:5432/db`. The host
///   is what follows the *last* `@`, so a password holding `@`, `/`, `?` or `:` does not show
///   either.
/// - `sqlite:PATH` / `sqlite://PATH?mode=rwc` → the path without the query.
/// - Anything else (`postgres:/u:pw@host/db`, a typo, an unknown scheme) → the scheme only,
///   as `scheme:…` (or `…` when there is no scheme).
pub fn redact_url(url: &str) -> String {
    let cut = |s: &str| -> usize { s.find(['?', '#']).unwrap_or(s.len()) };
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).filter(|s| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let Some(scheme) = scheme else {
        return "…".to_owned();
    };
    let rest = &url[scheme.len() + 1..];
    if scheme.eq_ignore_ascii_case("sqlite") {
        return format!("{scheme}:{}", &rest[..cut(rest)]);
    }
    let Some(rest) = rest.strip_prefix("//") else {
        return format!("{scheme}:…");
    };
    let after_user = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    let host_end = after_user.find(['/', '?', '#']).unwrap_or(after_user.len());
    let (host, tail) = after_user.split_at(host_end);
    // What stands where the host is must look like one (`name[:port]`, `[v6][:port]`):
    // a URL whose `@` is missing or mistyped (`user:pw.host:5432`, `user:pw%40host`) has
    // credentials there instead.
    if !looks_like_host(host) {
        return format!("{scheme}:…");
    }
    let database = tail
        .strip_prefix('/')
        .map(|path| &path[..cut(path)])
        .unwrap_or_default();
    if database.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{database}")
    }
}

/// `true` for `name[:port]` or `[v6][:port]`: a DNS name or IPv4 address of letters, digits,
/// `.`, `-`, `_`, and a port of digits.
fn looks_like_host(text: &str) -> bool {
    let (name, port) = if let Some(v6) = text.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, rest))
                if addr
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') =>
            {
                (
                    addr,
                    rest.strip_prefix(':')
                        .unwrap_or(if rest.is_empty() { "" } else { "x" }),
                )
            }
            _ => return false,
        }
    } else {
        match text.split_once(':') {
            Some((name, port)) => (name, if port.is_empty() { "x" } else { port }),
            None => (text, ""),
        }
    };
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    name_ok && port.chars().all(|c| c.is_ascii_digit())
}
