//! Attune's own `attune.key` table as a read-only backend: the worker's source of secrets.
//! Rows are read as Attune's worker selects them; nothing is written, so there is no audit
//! trail here (the worker writes its own, see [`crate::executor::SecretSource`]).

use std::sync::Arc;

use secrecy::SecretString;
use sqlx::postgres::PgPool;
use sqlx::Row;

use super::backend::{Backend, BoxFuture};
use super::{KeyHash, Result, SecretRow, Store, StoredValue, Timestamp, Visible};
use crate::secrets::names::{ActionRef, Owner, PackRef, SecretName};

/// Reads the `attune.key` rows an action may see, as [`SecretRow`]s for the library's resolver:
/// `system` keys, `pack` keys of the action's pack (`owner_pack`), `action` keys of the action
/// (`owner_action`), as Attune's worker selects them (by id). `identity` and `sensor` keys
/// never reach an action. Read only: every write answers [`super::Error::ReadOnly`].
pub struct AttuneKeys {
    pool: PgPool,
}

impl AttuneKeys {
    /// A store reading keys through `pool` (on Attune's database, `search_path` including
    /// `attune`), without a row cache or floor record.
    pub fn store(pool: PgPool) -> Store {
        Store::read_only(Arc::new(Self { pool }))
    }

    /// The rows `action` may see. Read only, so tried a second time at once when the first
    /// attempt met a connection that had died in the pool (the pool does not check a
    /// recently used connection before handing it out, see [`crate::worker::attune_db::connect`]).
    async fn rows(&self, action: &ActionRef) -> Result<Vec<Visible>> {
        match self.query(action).await {
            Err(e) if connection_lost(&e) => self.query(action).await,
            done => done,
        }
    }

    async fn query(&self, action: &ActionRef) -> Result<Vec<Visible>> {
        let rows = sqlx::query(
            "SELECT k.owner_type::text AS owner_type, k.name, k.encrypted,
                    k.encryption_key_hash, to_jsonb(k.value)::text AS value,
                    CASE WHEN isfinite(k.created) THEN to_char(k.created AT TIME ZONE 'UTC',
                        'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') END AS created,
                    CASE WHEN isfinite(k.updated) THEN to_char(k.updated AT TIME ZONE 'UTC',
                        'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') END AS updated
               FROM key k JOIN action a ON a.ref = $1
              WHERE k.owner_type = 'system'
                 OR (k.owner_type = 'pack' AND k.owner_pack = a.pack)
                 OR (k.owner_type = 'action' AND k.owner_action = a.id)",
        )
        .bind(action.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match key_row(row, action) {
                Ok(secret) => out.push(secret),
                Err(why) => tracing::warn!(action = %action, "attune.key row skipped: {why}"),
            }
        }
        Ok(out)
    }
}

impl Backend for AttuneKeys {
    fn kind(&self) -> &'static str {
        "attune.key"
    }

    fn location(&self) -> String {
        "attune.key".to_owned()
    }

    fn visible_to<'a>(&'a self, action: &'a ActionRef) -> BoxFuture<'a, Result<Vec<Visible>>> {
        Box::pin(self.rows(action))
    }
}

/// Whether `e` is the loss of the connection rather than an answer to the statement: an I/O
/// error, or the server's SQLSTATE class 08 (connection exception) or 57P01–57P03 (the
/// backend terminated, the server shutting down or not yet accepting connections).
fn connection_lost(e: &super::Error) -> bool {
    let super::Error::Query(e) = e else {
        return false;
    };
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || ["57P01", "57P02", "57P03"].contains(&&*c)),
        _ => false,
    }
}

/// One `attune.key` row as a [`Visible`] row: the name must be a valid secret name; an encrypted
/// value must be a JSON string (the ciphertext, either generation); a plain string is the
/// value as is, any other plain JSON its compact text. Errors name the key, never its value.
fn key_row(row: &sqlx::postgres::PgRow, action: &ActionRef) -> Result<Visible, String> {
    let get_err = |e: sqlx::Error| e.to_string();
    let owner_type: String = row.try_get("owner_type").map_err(get_err)?;
    let name: String = row.try_get("name").map_err(get_err)?;
    let encrypted: bool = row.try_get("encrypted").map_err(get_err)?;
    let key_hash: Option<String> = row.try_get("encryption_key_hash").map_err(get_err)?;
    let value: String = row.try_get("value").map_err(get_err)?;
    // As text: an infinite or out-of-range time (a hand-edited row) makes the row corrupt,
    // never a decoding panic (sqlx's chrono decoding of `infinity` overflows).
    let created: Option<String> = row.try_get("created").map_err(get_err)?;
    let updated: Option<String> = row.try_get("updated").map_err(get_err)?;
    let time = |text: Option<String>| text.as_deref().and_then(Timestamp::parse);
    let (created, updated) = (time(created), time(updated));
    let shown = name.escape_default().to_string();
    let name = SecretName::new(&name).map_err(|e| format!("key {shown:?}: {e}"))?;
    let owner = match owner_type.as_str() {
        "system" => Owner::System,
        "pack" => Owner::Pack(PackRef::new(action.pack().as_str()).map_err(|e| e.to_string())?),
        "action" => Owner::Action(action.clone()),
        other => {
            return Err(format!(
                "key {shown:?}: owner type {other} is not given to actions"
            ))
        }
    };
    // A value of the wrong shape keeps its row (it still overrides less specific rows of its
    // name, which then resolve as unavailable: bad-inputs N30), as a corrupt row without value.
    let (value, corrupt) = match (encrypted, serde_json::from_str(&value)) {
        (_, Ok(serde_json::Value::String(text))) => (text, None),
        (false, Ok(other)) => (other.to_string(), None),
        (true, Ok(_)) => (
            String::new(),
            Some("an encrypted value must be a JSON string"),
        ),
        (_, Err(_)) => (String::new(), Some("the value column is not JSON")),
    };
    let (corrupt, created, updated) = match (corrupt, created, updated) {
        (None, Some(created), Some(updated)) => (None, created, updated),
        (None, _, _) => (
            Some("created or updated is not a finite time"),
            Timestamp::now(),
            Timestamp::now(),
        ),
        (why, _, _) => (why, Timestamp::now(), Timestamp::now()),
    };
    if let Some(why) = corrupt {
        tracing::warn!(action = %action, "attune.key row not delivered: key {shown:?}: {why}");
        return Ok(Visible::Corrupt {
            owner,
            name,
            reason: why.to_owned(),
        });
    }
    let value = SecretString::from(value);
    Ok(Visible::Row(SecretRow {
        owner,
        name,
        value: if encrypted {
            StoredValue::encrypted(value, key_hash.filter(|h| !h.is_empty()).map(KeyHash::new))
        } else {
            StoredValue::Plain(value)
        },
        created,
        updated,
    }))
}
