//! What the store holds and is given: rows, their stored values and key hashes, writes and
//! rotations.

use std::fmt;

use secrecy::SecretString;

use crate::secrets::crypto::{Binding, EncryptionKey};
use crate::secrets::names::{Owner, SecretName};
use crate::store::Timestamp;

/// The key hash stored beside a ciphertext (column `encryption_key_hash`): for rows this host
/// writes, the 64 lowercase hex digits of SHA-256 of the derived key
/// ([`EncryptionKey::key_hash`]); imported and foreign rows keep theirs as given (checked when
/// decrypting, see [`EncryptionKey::check_key_hash`]).
///
/// `Debug` shows a hash of that 64-hex-digit shape only: a blob-format row's hash may be a
/// key, and is withheld.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyHash(String);

impl KeyHash {
    /// The key hash as stored (not checked: foreign rows may hold any text).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The hash of `key` (what this host writes beside its ciphertexts).
    pub fn of(key: &EncryptionKey) -> Self {
        Self(key.key_hash().to_owned())
    }

    /// The stored text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() == 64 && self.0.bytes().all(|b| b.is_ascii_hexdigit()) {
            f.debug_tuple("KeyHash").field(&self.0).finish()
        } else {
            f.write_str("KeyHash(withheld)")
        }
    }
}

/// A stored value: what the `encrypted`, `encryption_key_hash` and `value` columns hold.
///
/// `Debug` never shows the text (plaintext for [`StoredValue::Plain`]).
#[derive(Clone)]
pub enum StoredValue {
    /// A value stored as given (`--plain`: configuration, not a secret).
    Plain(SecretString),
    /// A ciphertext (seed, blob or bound format, see [`crate::secrets::crypto`]) and the key hash stored
    /// with it, if any.
    Encrypted {
        /// The stored ciphertext text.
        ciphertext: SecretString,
        /// The key hash stored beside it.
        key_hash: Option<KeyHash>,
    },
}

impl StoredValue {
    /// A ciphertext stored with the hash of the key that made it.
    pub fn encrypted(ciphertext: impl Into<SecretString>, key_hash: Option<KeyHash>) -> Self {
        Self::Encrypted {
            ciphertext: ciphertext.into(),
            key_hash,
        }
    }

    /// `true` for a ciphertext.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Self::Encrypted { .. })
    }

    /// The key hash stored with a ciphertext (`None` for a plain value, or none stored).
    pub fn key_hash(&self) -> Option<&KeyHash> {
        match self {
            Self::Plain(_) => None,
            Self::Encrypted { key_hash, .. } => key_hash.as_ref(),
        }
    }

    /// The stored text: the ciphertext, or the plain value.
    pub fn text(&self) -> &SecretString {
        match self {
            Self::Plain(text)
            | Self::Encrypted {
                ciphertext: text, ..
            } => text,
        }
    }
}

impl fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("Plain(..)"),
            Self::Encrypted { key_hash, .. } => f
                .debug_struct("Encrypted")
                .field("key_hash", key_hash)
                .finish_non_exhaustive(),
        }
    }
}

/// What is written for one secret.
#[derive(Debug)]
pub struct NewSecret {
    /// Owner.
    pub owner: Owner,
    /// Name.
    pub name: SecretName,
    /// The value to store: ciphertext (with its key hash) or plain.
    pub value: StoredValue,
}

/// A ciphertext replacement for key rotation: applied only if the row still holds
/// `old_value`.
pub struct Rotation {
    /// Owner of the row.
    pub owner: Owner,
    /// Name of the row.
    pub name: SecretName,
    /// The stored text the new one was derived from.
    pub old_value: SecretString,
    /// The new stored text (bound-format ciphertext).
    pub new_value: SecretString,
    /// The new key hash.
    pub new_key_hash: KeyHash,
}

/// One stored secret.
///
/// `Debug` is written by hand and never shows the value (which is plaintext for plain rows).
#[derive(Clone)]
pub struct SecretRow {
    /// Owner.
    pub owner: Owner,
    /// Name.
    pub name: SecretName,
    /// The stored value.
    pub value: StoredValue,
    /// Creation time.
    pub created: Timestamp,
    /// Last update time.
    pub updated: Timestamp,
}

impl SecretRow {
    /// The row a bound ciphertext of this secret is bound to (its owner type, owner and name).
    pub fn binding(&self) -> Binding<'_> {
        binding(&self.owner, &self.name)
    }

    /// The Attune-style ref (`name`, `pack.name`, `pack.action.name`).
    pub fn secret_ref(&self) -> String {
        self.owner.secret_ref(&self.name)
    }
}

/// One stored row as read: a sound row, or a malformed one named by its owner and name
/// ([`super::Store::visible_to`], [`super::Store::list`]).
#[derive(Clone, Debug)]
pub enum Visible {
    /// A sound row.
    Row(SecretRow),
    /// A row whose owner and name parse but whose other columns do not (e.g. a value that is
    /// not UTF-8 text). It holds no value and is never delivered; it still overrides less
    /// specific rows of its name, which resolve as unavailable (bad-inputs N30).
    Corrupt {
        /// Owner.
        owner: Owner,
        /// Name.
        name: SecretName,
        /// Why its columns do not parse (never their content).
        reason: String,
    },
}

impl Visible {
    /// Owner of the row.
    pub fn owner(&self) -> &Owner {
        match self {
            Self::Row(row) => &row.owner,
            Self::Corrupt { owner, .. } => owner,
        }
    }

    /// Name of the row.
    pub fn name(&self) -> &SecretName {
        match self {
            Self::Row(row) => &row.name,
            Self::Corrupt { name, .. } => name,
        }
    }

    /// The Attune-style ref (`name`, `pack.name`, `pack.action.name`).
    pub fn secret_ref(&self) -> String {
        self.owner().secret_ref(self.name())
    }

    /// The sound row, `None` for a malformed one.
    pub fn row(&self) -> Option<&SecretRow> {
        match self {
            Self::Row(row) => Some(row),
            Self::Corrupt { .. } => None,
        }
    }

    /// The sound row, `None` for a malformed one.
    pub fn into_row(self) -> Option<SecretRow> {
        match self {
            Self::Row(row) => Some(row),
            Self::Corrupt { .. } => None,
        }
    }
}

impl From<SecretRow> for Visible {
    fn from(row: SecretRow) -> Self {
        Self::Row(row)
    }
}

impl fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRow")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("value", &self.value)
            .field("created", &self.created)
            .field("updated", &self.updated)
            .finish()
    }
}

/// Whether a write created a row or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new row.
    Created,
    /// An existing row (same owner and name) was overwritten.
    Updated,
}

/// Which existing row a write may replace (bad-inputs N15). The check is part of the write
/// statement itself (a conditional upsert), so no other writer can slip in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replace<'a> {
    /// A plain row, or an encrypted row whose key hash is the written row's or the given
    /// one (the writer's own key, when it has one). Any other encrypted row (under a key
    /// this writer may not hold, or with no key hash) is refused with
    /// [`super::Error::ForeignKey`].
    Readable(Option<&'a KeyHash>),
    /// Any row, whatever its key (`--replace-foreign-key`).
    Any,
}

impl<'a> Replace<'a> {
    /// The writer's key hash to accept besides the written row's (lowercase), and whether any
    /// row may be replaced: the two values the write statements bind.
    pub(super) fn binds(self) -> (Option<String>, bool) {
        match self {
            Self::Readable(hash) => (hash.map(|h| h.as_str().to_ascii_lowercase()), false),
            Self::Any => (None, true),
        }
    }

    /// The writer's key hash, if any.
    pub(super) fn writer(self) -> Option<&'a KeyHash> {
        match self {
            Self::Readable(hash) => hash,
            Self::Any => None,
        }
    }
}

/// The row (`owner`, `name`) as the associated data of a bound ciphertext sees it: the
/// `owner_type`, `owner` and `name` columns of the `secrets` table.
pub fn binding<'a>(owner: &'a Owner, name: &'a SecretName) -> Binding<'a> {
    Binding {
        owner_type: owner.owner_type().as_str(),
        owner: owner.owner_ref(),
        name: name.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_value_and_only_a_hex_key_hash() {
        let hex = "ab".repeat(32);
        let sealed = StoredValue::encrypted("CIPHERTEXT", Some(KeyHash::new(hex.clone())));
        let shown = format!("{sealed:?}");
        assert!(
            shown.contains(&hex) && !shown.contains("CIPHERTEXT"),
            "{shown}"
        );
        let blob = StoredValue::encrypted("CIPHERTEXT", Some(KeyHash::new("a-blob-key-hash")));
        assert!(!format!("{blob:?}").contains("a-blob-key-hash"));
        let plain = StoredValue::Plain(SecretString::from("PLAINTEXT"));
        assert!(!format!("{plain:?}").contains("PLAINTEXT"));
        assert!(!plain.is_encrypted() && plain.key_hash().is_none());
        assert_eq!(sealed.key_hash().map(KeyHash::as_str), Some(hex.as_str()));
    }
}
