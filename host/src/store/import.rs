//! `secret import`: Attune `attune.key` rows as JSON lines (what `psql` exports with
//! `SELECT row_to_json(k) FROM attune.key k`), stored with their ciphertext as is (except in a
//! store whose ciphertext floor is bound: see [`Plan::bind_unbound`]).
//!
//! Every ciphertext generation is accepted (see [`crate::secrets::crypto`]): the seed format
//! `base64(nonce):base64(ciphertext||tag)`, the later blob format
//! `base64(nonce||ciphertext||tag)` and this host's bound format; the row's
//! `encryption_key_hash` is kept with it. Rows of the owner types Attune has and this host
//! does not run (`identity`, `sensor`) are reported and skipped; any other owner type (`Pack`,
//! `""`, `team`) refuses the file (bad-inputs N23). The whole file is validated before
//! anything is written, and written in one transaction.

use secrecy::SecretString;
use serde::Deserialize;

use crate::secrets::crypto;
use crate::secrets::names::{ActionRef, Owner, PackRef, SecretName};
use crate::store::{KeyHash, NewSecret, StoredValue, MAX_VALUE_BYTES};

/// Why an import was refused. Names the row (its `ref`, else its line), never its value.
#[derive(Debug, thiserror::Error)]
#[error("line {line} (ref {secret_ref}): {reason}")]
pub struct Error {
    /// 1-based line number in the input.
    pub line: usize,
    /// The row's `ref`, or `?` when it has none.
    pub secret_ref: String,
    /// What is wrong.
    pub reason: String,
}

/// One Attune `attune.key` row. Unknown fields are ignored.
#[derive(Deserialize)]
struct KeyRow {
    #[serde(rename = "ref")]
    secret_ref: Option<String>,
    owner_type: String,
    owner: Option<serde_json::Value>,
    owner_pack_ref: Option<String>,
    owner_action_ref: Option<String>,
    name: String,
    encrypted: bool,
    encryption_key_hash: Option<String>,
    value: serde_json::Value,
}

/// A parsed import file.
pub struct Plan {
    /// Rows to write, in file order.
    pub secrets: Vec<NewSecret>,
    /// Skipped rows: `(line, ref, owner type)`.
    pub skipped: Vec<(usize, String, String)>,
    /// The input line of each of `secrets`.
    lines: Vec<usize>,
}

impl Plan {
    /// Re-encrypts the plan's unbound encrypted rows (seed or blob format) into the bound
    /// format with `key`, for a store whose ciphertext floor is bound (after `key rotate`),
    /// which refuses unbound rows. Returns how many rows were upgraded.
    ///
    /// # Errors
    /// The first unbound row that cannot be upgraded: no key configured, or a row the key does
    /// not open (named by line and ref, with the reason); nothing is changed in the store.
    pub fn bind_unbound(&mut self, key: Option<&crypto::EncryptionKey>) -> Result<usize, Error> {
        use secrecy::ExposeSecret;
        let mut upgraded = 0;
        for (secret, line) in self.secrets.iter_mut().zip(&self.lines) {
            let StoredValue::Encrypted {
                ciphertext,
                key_hash,
            } = &secret.value
            else {
                continue;
            };
            if !crypto::Generation::of(ciphertext.expose_secret()).is_unbound() {
                continue;
            }
            let fail = |reason: String| Error {
                line: *line,
                secret_ref: secret.owner.secret_ref(&secret.name),
                reason,
            };
            let Some(key) = key else {
                return Err(fail("the store accepts only bound ciphertexts since its last key rotate, and an unbound row can be upgraded only with the encryption key configured".into()));
            };
            let binding = crate::store::binding(&secret.owner, &secret.name);
            let plain = key
                .decrypt(
                    ciphertext.expose_secret(),
                    key_hash.as_ref().map(KeyHash::as_str),
                    &binding,
                )
                .map_err(|e| {
                    fail(format!(
                        "the store accepts only bound ciphertexts since its last key rotate, and this unbound row cannot be upgraded: {e}"
                    ))
                })?;
            secret.value =
                StoredValue::encrypted(key.encrypt(&plain, &binding), Some(KeyHash::of(key)));
            upgraded += 1;
        }
        Ok(upgraded)
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("secrets", &self.secrets.len())
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// Parses and validates every line of `input` (blank lines are ignored).
///
/// # Errors
/// The first bad row: malformed JSON, unknown shape, invalid name or owner ref, an encrypted
/// value that is not a string in either ciphertext format, a duplicate (owner, name).
pub fn plan(input: &str) -> Result<Plan, Error> {
    let mut secrets: Vec<NewSecret> = Vec::new();
    let mut lines = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, text) in input.lines().enumerate() {
        let line = i + 1;
        if text.trim().is_empty() {
            continue;
        }
        let fail = |secret_ref: &str, reason: String| Error {
            line,
            secret_ref: secret_ref.to_owned(),
            reason,
        };
        let row: KeyRow = serde_json::from_str(text).map_err(|e| {
            // serde_json's message names a position, never the content.
            fail(
                "?",
                format!("not an attune.key JSON row: {}", e.classify_str()),
            )
        })?;
        let secret_ref = row.secret_ref.clone().unwrap_or_else(|| row.name.clone());
        let owner = match owner(&row) {
            Ok(Some(owner)) => owner,
            Ok(None) => {
                skipped.push((line, secret_ref, row.owner_type.clone()));
                continue;
            }
            Err(reason) => return Err(fail(&secret_ref, reason)),
        };
        let name = SecretName::new(&row.name).map_err(|e| fail(&secret_ref, e.to_string()))?;
        if !seen.insert((owner.clone(), name.clone())) {
            return Err(fail(
                &secret_ref,
                format!("duplicate of an earlier row ({owner}, {name})"),
            ));
        }
        let mut key_hash = None;
        let value = match (row.encrypted, row.value) {
            (true, serde_json::Value::String(stored)) => {
                let generation =
                    crypto::check_format(&stored).map_err(|e| fail(&secret_ref, e.to_string()))?;
                if let Some(hash) = row.encryption_key_hash.as_deref().filter(|h| !h.is_empty()) {
                    key_hash = Some(
                        crypto::stored_key_hash(generation, hash)
                            .map_err(|e| fail(&secret_ref, e.to_string()))?,
                    );
                }
                stored
            }
            (true, _) => {
                return Err(fail(
                    &secret_ref,
                    "an encrypted value must be a JSON string".into(),
                ))
            }
            (false, serde_json::Value::String(plain)) => plain,
            // Later Attune stores values as JSON; a non-string plain value is kept as JSON text.
            (false, other) => other.to_string(),
        };
        // The write rules of `secret set`, for what a plain value can carry; a ciphertext may
        // be a third longer (base64) plus nonce and tag.
        let limit = if row.encrypted {
            MAX_VALUE_BYTES * 4 / 3 + 64
        } else {
            MAX_VALUE_BYTES
        };
        if value.len() > limit {
            return Err(fail(
                &secret_ref,
                format!("the value is longer than {limit} bytes"),
            ));
        }
        if value.contains('\0') {
            return Err(fail(&secret_ref, "the value contains a NUL byte".into()));
        }
        lines.push(line);
        let value = SecretString::from(value);
        secrets.push(NewSecret {
            owner,
            name,
            value: if row.encrypted {
                StoredValue::encrypted(value, key_hash.map(KeyHash::new))
            } else {
                StoredValue::Plain(value)
            },
        });
    }
    Ok(Plan {
        secrets,
        skipped,
        lines,
    })
}

trait ClassifyStr {
    fn classify_str(&self) -> String;
}

impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> String {
        format!("{:?} error at column {}", self.classify(), self.column())
    }
}

/// Attune's owner types that hold no action secrets: reported and skipped.
pub const SKIPPED_OWNER_TYPES: [&str; 2] = ["identity", "sensor"];

/// Maps Attune's owner columns to an [`Owner`]; `Ok(None)` for [`SKIPPED_OWNER_TYPES`], an
/// error for an owner type Attune does not have (spelled exactly, lowercase).
fn owner(row: &KeyRow) -> Result<Option<Owner>, String> {
    let text = |v: &Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    // `owner` and the specific ref column must agree when both are given.
    let specific = match row.owner_type.as_str() {
        "pack" => row.owner_pack_ref.as_ref(),
        "action" => row.owner_action_ref.as_ref(),
        _ => None,
    };
    if let (Some(specific), Some(owner)) = (specific, text(&row.owner)) {
        if *specific != owner {
            return Err(format!(
                "owner {:?} and owner_{}_ref {:?} disagree",
                owner.escape_default().to_string(),
                row.owner_type,
                specific.escape_default().to_string()
            ));
        }
    }
    let given = |v: Option<&String>| v.is_some_and(|s| !s.is_empty());
    // Attune's `validate_key_owner` trigger sets `owner` to `system` on system rows (Attune's
    // migrations; tests/data/attune/schema.sql): that names no other owner.
    let system_owner = |v: Option<&String>| given(v) && v.is_some_and(|s| s != "system");
    match row.owner_type.as_str() {
        // A system row names no owner: one that does was meant for that owner, and importing
        // it as system would give it to every action.
        "system"
            if system_owner(text(&row.owner).as_ref())
                || given(row.owner_pack_ref.as_ref())
                || given(row.owner_action_ref.as_ref()) =>
        {
            Err("a system row names an owner (owner, owner_pack_ref or owner_action_ref): it would be given to every action".into())
        }
        "pack" if given(row.owner_action_ref.as_ref()) => {
            Err("a pack row names an action (owner_action_ref)".into())
        }
        "system" => Ok(Some(Owner::System)),
        "pack" => {
            let pack = row
                .owner_pack_ref
                .clone()
                .or_else(|| text(&row.owner))
                .ok_or("pack row without owner_pack_ref")?;
            Ok(Some(Owner::Pack(
                PackRef::new(&pack).map_err(|e| e.to_string())?,
            )))
        }
        "action" => {
            let action = row
                .owner_action_ref
                .clone()
                .or_else(|| text(&row.owner))
                .ok_or("action row without owner_action_ref")?;
            Ok(Some(Owner::Action(
                ActionRef::new(&action).map_err(|e| e.to_string())?,
            )))
        }
        other if SKIPPED_OWNER_TYPES.contains(&other) => Ok(None),
        other => Err(format!(
            "unknown owner type \"{}\" (Attune's are system, pack, action, identity and sensor)",
            other.escape_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SEED: &str = "uM06l/Ea5lEHBQam:rOzrsGIg2b8EzNsSlNQRxSSFPxDKkNAkygyX+1ricOmIaM6n";

    #[test]
    fn rows_map_to_owners_and_skip_unknown_types() {
        let pack_row = format!(
            r#"{{"ref":"mypack.api_key","owner_type":"pack","owner":"mypack","owner_pack_ref":"mypack","name":"api_key","encrypted":true,"encryption_key_hash":"ed67d24278bad326343c5eb43f04e97cef84cf1ade13831d99dcfd990847c4af","value":"{SEED}"}}"#
        );
        let input = format!(
            "{}\n\n{}\n{}\n{}\n",
            r#"{"ref":"core.token","owner_type":"system","owner":null,"name":"token","encrypted":false,"value":"abc"}"#,
            pack_row,
            r#"{"ref":"u.x","owner_type":"identity","owner":"alice","name":"x","encrypted":false,"value":"v"}"#,
            r#"{"ref":"p.a.n","owner_type":"action","owner_action_ref":"p.a","name":"n","encrypted":false,"value":{"k":1}}"#,
        );
        let plan = plan(&input).unwrap();
        assert_eq!(plan.secrets.len(), 3);
        assert_eq!(
            plan.skipped,
            vec![(4, "u.x".to_owned(), "identity".to_owned())]
        );
        assert_eq!(
            plan.secrets[1].owner.secret_ref(&plan.secrets[1].name),
            "mypack.api_key"
        );
        assert_eq!(
            plan.secrets[1].value.key_hash().map(KeyHash::as_str),
            Some("ed67d24278bad326343c5eb43f04e97cef84cf1ade13831d99dcfd990847c4af")
        );
        use secrecy::ExposeSecret;
        assert_eq!(
            plan.secrets[1].value.text().expose_secret(),
            SEED,
            "ciphertext kept as is"
        );
        assert_eq!(plan.secrets[2].value.text().expose_secret(), r#"{"k":1}"#);
    }

    #[test]
    fn bad_rows_name_the_ref_and_never_the_value() {
        for (row, why) in [
            (
                r#"{"ref":"p.bad","owner_type":"pack","owner_pack_ref":"p","name":"bad","encrypted":true,"value":"sekrit-value:::"}"#,
                "invalid ciphertext format",
            ),
            (
                r#"{"ref":"p.n","owner_type":"pack","owner_pack_ref":"p","name":"has space","encrypted":false,"value":"sekrit-value"}"#,
                "invalid secret name",
            ),
            (
                r#"{"ref":"p.n","owner_type":"action","owner_action_ref":"nodot","name":"n","encrypted":false,"value":"sekrit-value"}"#,
                "invalid action ref",
            ),
            (
                r#"{"ref":"p.n","owner_type":"pack","owner_pack_ref":"p","name":"n","encrypted":true,"value":42}"#,
                "JSON string",
            ),
        ] {
            let err = plan(row).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("line 1"), "{err}");
            assert!(!err.contains("sekrit"), "{err}");
        }
        for owner_type in ["Pack", "", "team", "sensors"] {
            let row = format!(
                r#"{{"ref":"p.n","owner_type":"{owner_type}","owner":"p","name":"n","encrypted":false,"value":"sekrit-value"}}"#
            );
            let err = plan(&row).unwrap_err().to_string();
            assert!(
                err.contains("line 1 (ref p.n): unknown owner type"),
                "{err}"
            );
            assert!(!err.contains("sekrit"), "{err}");
        }
        let err = plan(r#"{"broken": "sekrit-value"#).unwrap_err().to_string();
        assert!(!err.contains("sekrit"), "{err}");
        let dup = r#"{"ref":"t","owner_type":"system","name":"t","encrypted":false,"value":"1"}"#;
        let err = plan(&format!("{dup}\n{dup}")).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("duplicate"), "{err}");
    }
}
