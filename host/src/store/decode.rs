//! From stored columns to typed rows: owner and name parsed, the value typed by its
//! `encrypted` flag, audit spellings parsed. A row that does not parse is reported (never
//! with its value) and never hides the others.

use secrecy::SecretString;

use super::{Error, KeyHash, Result, SecretRow, StoredValue, Timestamp, Visible};
use crate::secrets::names::{ActionRef, Owner, OwnerType, SecretName};
use crate::store::audit::{Door, Listed, Outcome, Record, RunState};

/// The owner and name columns of a row: `owner_type`, `owner`, `name`.
pub(super) type Identity = (String, String, String);

/// A `secrets` row as the database returns it, before its columns are parsed.
pub(super) struct RawRow {
    pub(super) owner_type: String,
    pub(super) owner: String,
    pub(super) name: String,
    pub(super) encrypted: bool,
    pub(super) key_hash: Option<String>,
    pub(super) value: String,
    pub(super) created: String,
    pub(super) updated: String,
}

impl RawRow {
    /// Parses the stored columns into a typed row.
    pub(super) fn parse(self) -> Result<SecretRow> {
        let (owner, name) = parse_identity(&self.owner_type, &self.owner, &self.name)?;
        let time = |text: &str, column: &str| {
            Timestamp::parse(text).ok_or_else(|| Error::Corrupt {
                secret_ref: owner.secret_ref(&name),
                reason: format!("{column}: not an RFC 3339 time"),
            })
        };
        let created = time(&self.created, "created")?;
        let updated = time(&self.updated, "updated")?;
        let value = SecretString::from(self.value);
        Ok(SecretRow {
            owner,
            name,
            value: if self.encrypted {
                StoredValue::encrypted(value, self.key_hash.map(KeyHash::new))
            } else {
                StoredValue::Plain(value)
            },
            created,
            updated,
        })
    }
}

/// One row an action may see, or of a listing. A row whose owner and name parse (`identity`) but whose other
/// columns do not is kept as [`Visible::Corrupt`], so that it still overrides less
/// specific rows of its name (bad-inputs N30); a row whose name itself does not parse cannot
/// override anything and is skipped with a warning naming it.
pub(super) fn visible(
    raw: Result<RawRow>,
    identity: impl FnOnce() -> Result<Identity>,
) -> Option<Visible> {
    let reason = match raw.and_then(RawRow::parse) {
        Ok(row) => return Some(Visible::Row(row)),
        Err(Error::Corrupt { reason, .. }) => reason,
        Err(e) => e.to_string(),
    };
    match identity().and_then(|(t, o, n)| parse_identity(&t, &o, &n)) {
        Ok((owner, name)) => {
            tracing::warn!(
                "stored secret {} is malformed ({reason}); it is not delivered",
                owner.secret_ref(&name)
            );
            Some(Visible::Corrupt {
                owner,
                name,
                reason,
            })
        }
        Err(e) => {
            tracing::warn!("skipping a stored row: {e}");
            None
        }
    }
}

/// Parses the owner and name columns of a stored row.
pub(super) fn parse_identity(
    owner_type: &str,
    owner: &str,
    name: &str,
) -> Result<(Owner, SecretName)> {
    let corrupt = |reason: String| Error::Corrupt {
        secret_ref: format!("{owner_type}:{owner}:{}", name.escape_default()),
        reason,
    };
    let parsed = OwnerType::parse(owner_type)
        .ok_or_else(|| corrupt(format!("unknown owner type {owner_type:?}")))?;
    let owner = Owner::from_parts(parsed, owner).map_err(|e| corrupt(e.to_string()))?;
    let name = SecretName::new(name).map_err(|e| corrupt(e.to_string()))?;
    Ok((owner, name))
}

/// An audit record as the database returns it (a row of the former table, or one request
/// unpacked from its execution's row).
pub(super) struct RawAudit {
    pub(super) at: String,
    pub(super) execution_id: String,
    pub(super) action_ref: String,
    pub(super) secret_ref: String,
    pub(super) door: String,
    pub(super) outcome: String,
    pub(super) count: i64,
    /// `audit_execution.state`, absent for records older than that table.
    pub(super) run: Option<String>,
}

impl RawAudit {
    /// Parses the stored spellings.
    pub(super) fn parse(self) -> Result<Listed> {
        let corrupt = |reason: String| Error::Corrupt {
            secret_ref: self.secret_ref.clone(),
            reason,
        };
        let door = match self.door.as_str() {
            "env" => Door::Env,
            "get-secret" => Door::GetSecret,
            "wasi-config" => Door::WasiConfig,
            other => return Err(corrupt(format!("unknown audit door {other:?}"))),
        };
        let outcome = match self.outcome.as_str() {
            "delivered" => Outcome::Delivered,
            "not-found" => Outcome::NotFound,
            "access-denied" => Outcome::AccessDenied,
            "invalid-name" => Outcome::InvalidName,
            "unavailable" => Outcome::Unavailable,
            other => return Err(corrupt(format!("unknown audit outcome {other:?}"))),
        };
        let run = match self.run.as_deref() {
            None => None,
            Some(text) => Some(
                RunState::parse(text)
                    .ok_or_else(|| corrupt(format!("unknown run state {text:?}")))?,
            ),
        };
        let at = Timestamp::parse(&self.at)
            .ok_or_else(|| corrupt("its time is not an RFC 3339 time".to_owned()))?;
        let action_ref = ActionRef::new(&self.action_ref).map_err(|e| corrupt(e.to_string()))?;
        Ok(Listed {
            record: Record {
                at,
                execution_id: self.execution_id,
                action_ref,
                secret_ref: self.secret_ref,
                door,
                outcome,
                count: u64::try_from(self.count).unwrap_or(0),
            },
            run,
        })
    }
}

/// The pack of a pack- or action-owned secret, `""` for system: stored so that resolution is
/// one indexed query.
pub(super) fn owner_pack(owner: &Owner) -> String {
    match owner {
        Owner::System => String::new(),
        Owner::Pack(p) => p.to_string(),
        Owner::Action(a) => a.pack().to_string(),
    }
}
