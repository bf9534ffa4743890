//! Attune's own `attune.key` table as a read-only backend: the worker's source of secrets.
//! Rows are read as Attune's worker selects them; nothing is written, so there is no audit
//! trail here (the worker writes its own, see [`crate::executor::SecretSource`]).

use std::sync::Arc;

use secrecy::SecretString;
use sqlx::postgres::PgPool;

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
        // The same array of arrays as the worker's claim statement reads, parsed the same way.
        let sql = format!("SELECT {KEYS_OF_ACTION_A} FROM action a WHERE a.ref = $1");
        let text: Option<String> = sqlx::query_scalar(&sql)
            .bind(action.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        Self::parse_array(zeroize::Zeroizing::new(text), action)
            .map_err(|why| super::Error::Query(sqlx::Error::Decode(why.into())))
    }

    /// The rows `action` may see from the text [`KEYS_OF_ACTION_A`] selects, as
    /// [`crate::worker`]'s claim statement reads them with the execution (one round trip
    /// instead of two). The text holds plain values: it is wiped here once parsed.
    ///
    /// # Errors
    /// A description (never a value) when the text is not such an array; a malformed row
    /// within it is skipped (with a warning) or made [`Visible::Corrupt`].
    pub(crate) fn parse_array(
        text: zeroize::Zeroizing<String>,
        action: &ActionRef,
    ) -> Result<Vec<Visible>, String> {
        let rows: Vec<KeyColumns> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "the claimed attune.key rows are not an array of key arrays ({:?} error at column {})",
                e.classify(),
                e.column()
            )
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for columns in rows {
            match key_row(columns, action) {
                Ok(secret) => out.push(secret),
                Err(why) => tracing::warn!(action = %action, "attune.key row skipped: {why}"),
            }
        }
        Ok(out)
    }
}

/// A scalar subquery: the `attune.key` rows that action `a` (an `attune.action` row) may see,
/// as Attune's worker selects them (`system` keys, `pack` keys of its pack, `action` keys of
/// it), as the text of a JSON array with one array per row (`[owner_type, name, encrypted,
/// key_hash, value_json_text, created, updated]`; times as ISO 8601 UTC text, `NULL` when not
/// finite), for [`AttuneKeys::parse_array`]. Read by [`AttuneKeys`] and by the worker's claim.
pub(crate) const KEYS_OF_ACTION_A: &str = "(SELECT coalesce(json_agg(json_build_array(
            k.owner_type::text, k.name, k.encrypted, k.encryption_key_hash,
            to_jsonb(k.value)::text,
            CASE WHEN isfinite(k.created) THEN to_char(k.created AT TIME ZONE 'UTC',
                'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') END,
            CASE WHEN isfinite(k.updated) THEN to_char(k.updated AT TIME ZONE 'UTC',
                'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') END)), '[]')::text
      FROM key k
     WHERE k.owner_type = 'system'
        OR (k.owner_type = 'pack' AND k.owner_pack = a.pack)
        OR (k.owner_type = 'action' AND k.owner_action = a.id))";

/// One `attune.key` row as read ([`KEYS_OF_ACTION_A`]): a JSON array, deserialized by position.
/// No `Debug`: the value of a plain key is its plaintext.
#[derive(serde::Deserialize)]
struct KeyColumns {
    owner_type: String,
    name: String,
    encrypted: bool,
    key_hash: Option<String>,
    /// The text of the value's JSON; wiped when dropped.
    #[serde(deserialize_with = "wiped")]
    value: zeroize::Zeroizing<String>,
    created: Option<String>,
    updated: Option<String>,
}

/// A string that is wiped when dropped.
fn wiped<'de, D: serde::Deserializer<'de>>(d: D) -> Result<zeroize::Zeroizing<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(zeroize::Zeroizing::new)
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
fn key_row(columns: KeyColumns, action: &ActionRef) -> Result<Visible, String> {
    let KeyColumns {
        owner_type,
        name,
        encrypted,
        key_hash,
        value,
        created,
        updated,
    } = columns;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use secrecy::ExposeSecret;

    use super::*;

    fn parse(text: &str) -> Result<Vec<Visible>, String> {
        let action = ActionRef::new("mypack.deploy").unwrap();
        AttuneKeys::parse_array(zeroize::Zeroizing::new(text.to_owned()), &action)
    }

    const TIME: &str = "2026-12-01T10:00:00.000Z";

    #[test]
    fn claimed_key_arrays_become_rows_of_their_owner_types() {
        let text = serde_json::json!([
            [
                "system",
                "api_key",
                true,
                "ab12",
                "\"bm9uY2U=:Y2lwaGVy\"",
                TIME,
                TIME
            ],
            ["pack", "region", false, null, "\"eu-west\"", TIME, TIME],
            ["action", "retries", false, null, "3", TIME, TIME],
            ["identity", "token", false, null, "\"x\"", TIME, TIME],
        ])
        .to_string();
        let rows = parse(&text).unwrap();
        // The identity key never reaches an action.
        assert_eq!(rows.len(), 3);
        let Visible::Row(system) = &rows[0] else {
            panic!("corrupt")
        };
        assert_eq!(system.owner, Owner::System);
        assert!(matches!(
            &system.value,
            StoredValue::Encrypted { ciphertext, key_hash: Some(_) }
                if ciphertext.expose_secret() == "bm9uY2U=:Y2lwaGVy"
        ));
        let Visible::Row(pack) = &rows[1] else {
            panic!("corrupt")
        };
        assert_eq!(pack.owner.to_string(), "pack mypack");
        assert!(matches!(&pack.value, StoredValue::Plain(v) if v.expose_secret() == "eu-west"));
        let Visible::Row(action) = &rows[2] else {
            panic!("corrupt")
        };
        assert!(matches!(action.owner, Owner::Action(_)));
        // Other plain JSON: its compact text.
        assert!(matches!(&action.value, StoredValue::Plain(v) if v.expose_secret() == "3"));
    }

    #[test]
    fn a_malformed_claimed_row_is_corrupt_and_malformed_text_an_error_without_values() {
        let text = serde_json::json!([
            [
                "system",
                "api_key",
                true,
                null,
                "{\"not\":\"a string\"}",
                TIME,
                TIME
            ],
            [
                "system",
                "region",
                false,
                null,
                "\"planted-value\"",
                null,
                TIME
            ],
        ])
        .to_string();
        let rows = parse(&text).unwrap();
        assert!(rows.iter().all(|r| matches!(r, Visible::Corrupt { .. })));
        assert_eq!(parse("[]").unwrap().len(), 0);
        let why = parse("[[\"system\", \"planted-value\"]]").unwrap_err();
        assert!(why.contains("attune.key"), "{why}");
        assert!(!why.contains("planted-value"), "{why}");
    }
}
