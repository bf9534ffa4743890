//! `key rotate`: re-encrypt every encrypted row under a new password, in one transaction.
//!
//! Every row is decrypted with the old key and encrypted with the new one (fresh nonce, bound
//! format bound to the row, new key hash): rotation is also how rows of the unbound seed and
//! blob formats are upgraded. Rows already bound under the new key are left alone (an unbound
//! one under the new key is upgraded), so a rotation that was interrupted (the transaction
//! rolled back) or finished can simply be run again. A row that cannot be decrypted, or is
//! malformed, stops the rotation, naming it, before anything is written; so does an unbound row in a store whose
//! ciphertext floor is already bound (a downgraded row is never laundered into a bound one).
//! The same transaction writes the store's ciphertext floor under the new key
//! ([`EncryptionKey::seal_floor`]): from then on an unbound row is refused. At every moment
//! each row holds a ciphertext with its matching key hash.

use secrecy::{ExposeSecret, SecretString};

use crate::secrets::crypto::{self, EncryptionKey, Generation};
use crate::store::{self, KeyHash, Rotation, Store, StoredValue, Visible};

/// Rotation failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The new key is the old key.
    #[error("the new encryption key is the same as the current one")]
    SameKey,
    /// A row cannot be decrypted with the old key, or is unbound in a store whose floor is
    /// bound; nothing was changed.
    #[error("secret {secret_ref} cannot be decrypted with the current key ({cause}); nothing was changed")]
    Undecryptable {
        /// Ref of the row.
        secret_ref: String,
        /// Why (shown in the message, so not chained as a source as well).
        cause: crypto::Error,
    },
    /// A row is malformed (its columns do not parse: [`store::Visible::Corrupt`]): rotating
    /// around it would leave it under a retired key; nothing was changed.
    #[error("secret {secret_ref} is malformed ({reason}); delete or rewrite it, then rotate; nothing was changed")]
    Malformed {
        /// Ref of the row.
        secret_ref: String,
        /// Why its columns do not parse (never their content).
        reason: String,
    },
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// What a rotation did (or, in a dry run, would do).
#[derive(Debug, Default)]
pub struct Summary {
    /// Refs re-encrypted (or to be).
    pub rotated: Vec<String>,
    /// Refs already under the new key.
    pub already_new: Vec<String>,
    /// Number of plain (unencrypted) rows, left alone.
    pub plain: usize,
}

/// Rotates every encrypted row of `store` from `old` to `new` (see the module docs).
///
/// # Errors
/// [`Error::SameKey`], [`Error::Undecryptable`], [`Error::Malformed`], [`Error::Store`] (including a row changed
/// concurrently); nothing is written in any of these cases.
pub async fn rotate(
    store: &Store,
    old: &EncryptionKey,
    new: &EncryptionKey,
    dry_run: bool,
) -> Result<Summary, Error> {
    if old.key_hash() == new.key_hash() {
        return Err(Error::SameKey);
    }
    let floor = old
        .floor(store.floor_record())
        .or_else(|| new.floor(store.floor_record()));
    let mut summary = Summary::default();
    let mut rotations = Vec::new();
    // A row whose owner or name does not parse is not listed: it would stay under the old key.
    if let Some((secret_ref, reason)) = store.unnamed_rows().await?.into_iter().next() {
        return Err(Error::Malformed { secret_ref, reason });
    }
    for row in store.list(None).await? {
        let row = match row {
            Visible::Row(row) => row,
            Visible::Corrupt {
                owner,
                name,
                reason,
            } => {
                return Err(Error::Malformed {
                    secret_ref: owner.secret_ref(&name),
                    reason,
                })
            }
        };
        let (stored, key_hash) = match &row.value {
            StoredValue::Plain(_) => {
                summary.plain += 1;
                continue;
            }
            StoredValue::Encrypted {
                ciphertext,
                key_hash,
            } => (ciphertext, key_hash.as_ref().map(KeyHash::as_str)),
        };
        let stored = stored.expose_secret();
        let secret_ref = row.secret_ref();
        let generation = Generation::of(stored);
        if let Err(cause) = crypto::check_floor(stored, floor) {
            return Err(Error::Undecryptable { secret_ref, cause });
        }
        let under_new = key_hash.is_some() && new.check_key_hash(generation, key_hash).is_ok();
        if under_new && !generation.is_unbound() {
            summary.already_new.push(secret_ref);
            continue;
        }
        let binding = row.binding();
        let plain = if under_new {
            // An unbound row under the new key (imported after an interrupted rotation, say):
            // upgraded to the bound format.
            new.decrypt(stored, key_hash, &binding)
        } else {
            old.decrypt(stored, key_hash, &binding)
        };
        let plain = match plain {
            Ok(plain) => plain,
            // A bound row without a key hash that the new key opens was rotated already.
            Err(_)
                if key_hash.is_none()
                    && !generation.is_unbound()
                    && new.decrypt(stored, None, &binding).is_ok() =>
            {
                summary.already_new.push(secret_ref);
                continue;
            }
            Err(cause) => return Err(Error::Undecryptable { secret_ref, cause }),
        };
        summary.rotated.push(secret_ref);
        if !dry_run {
            rotations.push(Rotation {
                new_value: SecretString::from(new.encrypt(&plain, &binding)),
                new_key_hash: KeyHash::of(new),
                old_value: row.value.text().clone(),
                owner: row.owner.clone(),
                name: row.name.clone(),
            });
        }
    }
    if !dry_run {
        // Every encrypted row is bound under the new key now: the floor says so.
        store.replace_values(&rotations, &new.seal_floor()).await?;
    }
    Ok(summary)
}
