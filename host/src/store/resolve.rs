//! Resolution: from the rows visible to an action to the secrets one execution receives
//! (seed "Hierarchical Secret Ownership", "Secret Injection Flow").
//!
//! 1. For each name, the most specific owner wins: action over pack over system.
//! 2. Two winners that map to one environment variable (`db-password`, `db_password`) are an
//!    error naming both, before anything is decrypted or started.
//! 3. Only winners are decrypted; a winner that cannot be decrypted, or whose stored row is
//!    malformed, becomes [`Delivery::Unavailable`] with the reason (a warning, or an error
//!    under strict mode): a less specific row of the name never takes its place.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::secrets::crypto::{self, EncryptionKey, Generation};
use crate::secrets::names::{Owner, SecretName};
use crate::secrets::redact::Stored;
use crate::store::{KeyHash, SecretRow, StoredValue, Visible};

/// Resolution failures that stop an execution before its guest starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two visible secrets map to the same environment variable.
    #[error(
        "secrets {first} and {second} both map to environment variable {env_var}; \
         rename or delete one of them"
    )]
    EnvCollision {
        /// The shared variable name.
        env_var: String,
        /// Ref of one secret (`name`, `pack.name` or `pack.action.name`).
        first: String,
        /// Ref of the other.
        second: String,
    },
}

/// Why a visible secret is not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The row is encrypted and no encryption key is configured.
    #[error("it is encrypted and no encryption key is configured (security.encryption_key or ATTUNE__SECURITY__ENCRYPTION_KEY)")]
    NoKey,
    /// Decryption failed.
    #[error(transparent)]
    Crypto(#[from] crypto::Error),
    /// The stored row is malformed ([`crate::store::Visible::Corrupt`]); it still overrides less
    /// specific rows of its name, which are not delivered in its place.
    #[error("the stored row is malformed: {0}")]
    Corrupt(String),
}

/// What a guest receives for one resolved name.
pub enum Delivery {
    /// The plaintext.
    Value(SecretString),
    /// Visible but not deliverable; the guest sees `unavailable`.
    Unavailable(Unavailable),
}

/// One winning secret.
pub struct Resolved {
    /// Owner of the winning row.
    pub owner: Owner,
    /// Name (exact).
    pub name: SecretName,
    /// Value or the reason there is none.
    pub delivery: Delivery,
    /// How the row was stored (encrypted: a secret; plain: `--plain`, configuration), which
    /// sets the length from which its value is masked in output.
    pub stored: Stored,
}

impl Resolved {
    /// Attune-style ref of the winning row.
    pub fn secret_ref(&self) -> String {
        self.owner.secret_ref(&self.name)
    }
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let delivery = match &self.delivery {
            Delivery::Value(_) => "value",
            Delivery::Unavailable(_) => "unavailable",
        };
        f.debug_struct("Resolved")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("delivery", &delivery)
            .field("stored", &self.stored)
            .finish()
    }
}

/// A resolved, decrypted set of secrets for one execution, keyed by exact name.
///
/// Values are [`SecretString`]s, zeroized when this is dropped.
#[derive(Debug, Default)]
pub struct Resolution {
    secrets: BTreeMap<SecretName, Resolved>,
}

impl Resolution {
    /// Resolves `rows` (everything [`crate::store::Store::visible_to`] returned for the action)
    /// and decrypts the winners with `key`. `floor` is the store's verified ciphertext floor
    /// ([`EncryptionKey::floor`]): with `Some(Bound)`, an unbound encrypted winner is
    /// unavailable ([`crate::secrets::crypto::Error::Downgraded`]).
    ///
    /// # Errors
    /// [`Error::EnvCollision`] when two winners share an environment variable name.
    pub fn resolve(
        rows: impl IntoIterator<Item = impl Into<Visible>>,
        key: Option<&EncryptionKey>,
        floor: Option<Generation>,
    ) -> Result<Self, Error> {
        let mut winners: BTreeMap<SecretName, Visible> = BTreeMap::new();
        for row in rows {
            let row = row.into();
            match winners.entry(row.name().clone()) {
                Entry::Vacant(v) => {
                    v.insert(row);
                }
                Entry::Occupied(mut o) => {
                    if row.owner().owner_type() > o.get().owner().owner_type() {
                        o.insert(row);
                    }
                }
            }
        }
        let mut by_env: BTreeMap<String, &Visible> = BTreeMap::new();
        for row in winners.values() {
            if let Some(other) = by_env.insert(row.name().env_var(), row) {
                let (mut first, mut second) = (other.secret_ref(), row.secret_ref());
                if first > second {
                    std::mem::swap(&mut first, &mut second);
                }
                return Err(Error::EnvCollision {
                    env_var: row.name().env_var(),
                    first,
                    second,
                });
            }
        }
        let secrets = winners
            .into_iter()
            .map(|(name, row)| {
                let resolved = match row {
                    Visible::Row(row) => Resolved {
                        delivery: decrypt(&row, key, floor),
                        stored: if row.value.is_encrypted() {
                            Stored::Encrypted
                        } else {
                            Stored::Plain
                        },
                        owner: row.owner,
                        name: row.name,
                    },
                    Visible::Corrupt {
                        owner,
                        name,
                        reason,
                    } => Resolved {
                        owner,
                        name,
                        delivery: Delivery::Unavailable(Unavailable::Corrupt(reason)),
                        stored: Stored::Plain,
                    },
                };
                (name, resolved)
            })
            .collect();
        Ok(Self { secrets })
    }

    /// The resolved secret `name` (exact match), if visible.
    pub fn get(&self, name: &SecretName) -> Option<&Resolved> {
        self.secrets.get(name)
    }

    /// All resolved secrets, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Resolved> {
        self.secrets.values()
    }

    /// `true` when `text` equals the value of a resolved secret (used to keep values out of
    /// the audit trail when a guest passes one as a name).
    pub fn has_value(&self, text: &str) -> bool {
        self.secrets.values().any(|r| match &r.delivery {
            Delivery::Value(v) => v.expose_secret() == text,
            Delivery::Unavailable(_) => false,
        })
    }

    /// Number of visible names.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// `true` when nothing is visible.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Visible secrets that will not be delivered, with the reason.
    pub fn unavailable(&self) -> impl Iterator<Item = (&Resolved, &Unavailable)> {
        self.secrets.values().filter_map(|r| match &r.delivery {
            Delivery::Unavailable(why) => Some((r, why)),
            Delivery::Value(_) => None,
        })
    }
}

fn decrypt(row: &SecretRow, key: Option<&EncryptionKey>, floor: Option<Generation>) -> Delivery {
    let (ciphertext, key_hash) = match &row.value {
        // Whether to decrypt follows the stored `encrypted` flag, never the shape of the value.
        StoredValue::Plain(value) => return Delivery::Value(value.clone()),
        StoredValue::Encrypted {
            ciphertext,
            key_hash,
        } => (
            ciphertext.expose_secret(),
            key_hash.as_ref().map(KeyHash::as_str),
        ),
    };
    let Some(key) = key else {
        return Delivery::Unavailable(Unavailable::NoKey);
    };
    let decrypted = crypto::check_floor(ciphertext, floor)
        .and_then(|()| key.decrypt(ciphertext, key_hash, &row.binding()));
    match decrypted {
        Ok(v) => Delivery::Value(v),
        Err(e) => Delivery::Unavailable(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::secrets::names::{ActionRef, PackRef};
    use crate::store::Timestamp;

    const PASSWORD: &str = "resolve-test-password-0123456789abcdef";

    fn row(owner: Owner, name: &str, value: &str) -> SecretRow {
        SecretRow {
            owner,
            name: SecretName::new(name).unwrap(),
            value: StoredValue::Plain(SecretString::from(value)),
            created: Timestamp::now(),
            updated: Timestamp::now(),
        }
    }

    fn value(r: &Resolution, name: &str) -> Option<String> {
        match &r.get(&SecretName::new(name).unwrap())?.delivery {
            Delivery::Value(v) => Some(v.expose_secret().to_owned()),
            Delivery::Unavailable(_) => None,
        }
    }

    fn pack() -> Owner {
        Owner::Pack(PackRef::new("mypack").unwrap())
    }

    fn action() -> Owner {
        Owner::Action(ActionRef::new("mypack.deploy").unwrap())
    }

    #[test]
    fn more_specific_wins_whatever_the_row_order() {
        let rows = || {
            vec![
                row(action(), "token", "3"),
                row(Owner::System, "token", "1"),
                row(pack(), "token", "2"),
                row(Owner::System, "only_system", "s"),
                row(pack(), "only_pack", "p"),
            ]
        };
        let r = Resolution::resolve(rows(), None, None).unwrap();
        assert_eq!(value(&r, "token").unwrap(), "3");
        assert_eq!(value(&r, "only_system").unwrap(), "s");
        assert_eq!(value(&r, "only_pack").unwrap(), "p");
        let mut reversed = rows();
        reversed.reverse();
        assert_eq!(
            value(&Resolution::resolve(reversed, None, None).unwrap(), "token").unwrap(),
            "3"
        );
    }

    #[test]
    fn empty_value_overrides() {
        let rows = vec![
            row(Owner::System, "api-token", "xyz"),
            row(action(), "api-token", ""),
        ];
        let r = Resolution::resolve(rows, None, None).unwrap();
        assert_eq!(value(&r, "api-token").unwrap(), "");
    }

    #[test]
    fn env_collision_names_both_secrets_not_values() {
        let rows = vec![
            row(pack(), "db-password", "P1"),
            row(action(), "db_password", "P2"),
        ];
        let err = Resolution::resolve(rows, None, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mypack.db-password"), "{text}");
        assert!(text.contains("mypack.deploy.db_password"), "{text}");
        assert!(text.contains("SECRET_DB_PASSWORD"));
        assert!(!text.contains("P1") && !text.contains("P2"));
    }

    #[test]
    fn overridden_rows_do_not_collide() {
        // Same name at two levels is an override, not a collision.
        let rows = vec![row(pack(), "k", "1"), row(action(), "k", "2")];
        assert!(Resolution::resolve(rows, None, None).is_ok());
    }

    #[test]
    fn encryption_follows_the_flag() {
        let key = EncryptionKey::from_password(&SecretString::from(PASSWORD)).unwrap();
        let mut enc = row(pack(), "enc", "");
        enc.value = StoredValue::encrypted(
            key.encrypt(&SecretString::from("hidden"), &enc.binding()),
            Some(KeyHash::of(&key)),
        );
        let plain_looking_like_ciphertext = row(pack(), "plain", "abc:def");
        let r = Resolution::resolve(vec![enc, plain_looking_like_ciphertext], Some(&key), None)
            .unwrap();
        assert_eq!(value(&r, "enc").unwrap(), "hidden");
        assert_eq!(value(&r, "plain").unwrap(), "abc:def");
    }

    #[test]
    fn bad_rows_become_unavailable_and_others_survive() {
        let key = EncryptionKey::from_password(&SecretString::from(PASSWORD)).unwrap();
        let mut bad = row(pack(), "bad", "");
        bad.value = StoredValue::encrypted("a:b:c", None);
        let good = row(pack(), "good", "ok");
        let r = Resolution::resolve(vec![bad, good], Some(&key), None).unwrap();
        assert_eq!(value(&r, "good").unwrap(), "ok");
        assert_eq!(r.unavailable().count(), 1);
        let mut no_key = row(pack(), "enc", "");
        no_key.value = StoredValue::encrypted("x:y", None);
        let r = Resolution::resolve(vec![no_key], None, None).unwrap();
        assert!(matches!(
            r.unavailable().next().unwrap().1,
            Unavailable::NoKey
        ));
    }

    #[test]
    fn a_corrupt_row_overrides_and_is_unavailable() {
        let corrupt = Visible::Corrupt {
            owner: pack(),
            name: SecretName::new("api_key").unwrap(),
            reason: "value: not UTF-8".into(),
        };
        let rows = vec![row(Owner::System, "api_key", "S").into(), corrupt];
        let r = Resolution::resolve(rows, None, None).unwrap();
        assert_eq!(value(&r, "api_key"), None);
        let (winner, why) = r.unavailable().next().unwrap();
        assert_eq!(winner.secret_ref(), "mypack.api_key");
        assert!(matches!(why, Unavailable::Corrupt(_)));
    }

    #[test]
    fn copied_and_downgraded_ciphertexts_are_unavailable() {
        let key = EncryptionKey::from_password(&SecretString::from(PASSWORD)).unwrap();
        let mut source = row(pack(), "other_secret", "");
        source.value = StoredValue::encrypted(
            key.encrypt(&SecretString::from("other-value"), &source.binding()),
            Some(KeyHash::of(&key)),
        );
        // The same ciphertext copied into the row `api_key`: bound to `other_secret`.
        let mut copied = source.clone();
        copied.name = SecretName::new("api_key").unwrap();
        let r = Resolution::resolve(vec![copied], Some(&key), None).unwrap();
        assert!(matches!(
            r.unavailable().next().unwrap().1,
            Unavailable::Crypto(crypto::Error::DecryptFailed)
        ));
        // An unbound (seed) ciphertext: delivered without a floor, refused with one.
        let mut seed = source.clone();
        seed.value = StoredValue::encrypted(
            key.encrypt_seed(&SecretString::from("old-value")),
            Some(KeyHash::of(&key)),
        );
        let r = Resolution::resolve(vec![seed.clone()], Some(&key), None).unwrap();
        assert_eq!(value(&r, "other_secret").unwrap(), "old-value");
        let r = Resolution::resolve(vec![seed], Some(&key), Some(Generation::Bound)).unwrap();
        assert!(matches!(
            r.unavailable().next().unwrap().1,
            Unavailable::Crypto(crypto::Error::Downgraded { .. })
        ));
    }
}
