//! Encryption of stored secret values (seed "Encryption Flow" / "Decryption Flow").
//!
//! - Key: `SHA-256(password UTF-8 bytes)`, 32 bytes, AES-256-GCM.
//! - Seed format (what this host writes): `base64(nonce):base64(ciphertext||tag)`, standard
//!   alphabet with padding (RFC 4648 §4), a fresh random 12-byte nonce per encryption.
//!   Key hash: lowercase hex `SHA-256(derived key)`.
//! - Blob format (later Attune releases, read only): `base64(nonce||ciphertext||tag)`, whose
//!   plaintext is the JSON encoding of the value. Attune stores `hex(SHA-256(password))` as its
//!   key hash, which **is the key itself**: this host never stores, compares in the open or
//!   prints such a value. [`normalize_key_hash`] turns it into the seed key hash
//!   (`SHA-256(key)`) on import.
//!
//! Plaintext leaves this module only as [`SecretString`]; errors never carry key material,
//! ciphertext or plaintext.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, AeadInPlace, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Minimum password length in bytes (seed "Security Considerations": 32+ characters).
pub const MIN_PASSWORD_BYTES: usize = 32;
/// AES-GCM nonce length in bytes.
pub const NONCE_BYTES: usize = 12;
/// AES-GCM authentication tag length in bytes.
pub const TAG_BYTES: usize = 16;

/// Why a stored value could not be turned back into plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The password is shorter than [`MIN_PASSWORD_BYTES`].
    #[error(
        "encryption key is too short: {len} bytes, at least {MIN_PASSWORD_BYTES} are required"
    )]
    KeyTooShort {
        /// Length of the refused password in bytes.
        len: usize,
    },
    /// The stored text is not in either ciphertext format.
    #[error("invalid ciphertext format: {0}")]
    InvalidFormat(&'static str),
    /// The row was encrypted under another key (its key hash differs from ours).
    #[error("key hash mismatch: the value was encrypted with key {stored}, the configured key is {configured}")]
    KeyMismatch {
        /// Key hash stored with the row.
        stored: String,
        /// Hash of the configured key in the same generation.
        configured: String,
    },
    /// Authentication failed: wrong key or tampered ciphertext.
    #[error("decryption failed (wrong key or tampered ciphertext)")]
    DecryptFailed,
    /// The plaintext is not UTF-8 (or, in the blob format, not a JSON string).
    #[error("decrypted value is not valid UTF-8 text")]
    InvalidUtf8,
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which ciphertext generation a stored value uses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// `base64(nonce):base64(ciphertext||tag)`, written by this host and the seed design.
    Seed,
    /// `base64(nonce||ciphertext||tag)` with a JSON-encoded plaintext (later Attune).
    Blob,
}

impl Generation {
    /// Detects the generation from the stored text: the seed format always contains `:`, the
    /// blob format (pure base64) never does.
    pub fn of(stored: &str) -> Self {
        if stored.contains(':') {
            Self::Seed
        } else {
            Self::Blob
        }
    }
}

/// A 256-bit AES-GCM key derived from the configured password.
///
/// Zeroized on drop; `Debug` shows only the key hash.
pub struct EncryptionKey {
    key: Zeroizing<[u8; 32]>,
    key_hash: String,
}

impl EncryptionKey {
    /// Derives the key as `SHA-256(password)`.
    ///
    /// # Errors
    /// [`Error::KeyTooShort`] when the password has fewer than [`MIN_PASSWORD_BYTES`] bytes.
    pub fn from_password(password: &SecretString) -> Result<Self> {
        let bytes = password.expose_secret().as_bytes();
        if bytes.len() < MIN_PASSWORD_BYTES {
            return Err(Error::KeyTooShort { len: bytes.len() });
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&Sha256::digest(bytes));
        let key_hash = hex::encode(Sha256::digest(key.as_slice()));
        Ok(Self { key, key_hash })
    }

    /// Lowercase hex `SHA-256(derived key)`: the key hash stored with every row this host
    /// encrypts (seed format).
    pub fn key_hash(&self) -> &str {
        &self.key_hash
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_slice()))
    }

    /// Encrypts `plaintext` into the seed format `base64(nonce):base64(ciphertext||tag)`.
    ///
    /// The nonce is 12 fresh random bytes from the OS: it MUST be unique per message under one
    /// key, which random 96-bit nonces give for far more messages than a secret store holds.
    pub fn encrypt(&self, plaintext: &SecretString) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a 12-byte nonce and a plaintext below 64 GiB cannot fail in aes-gcm
        // 0.10 (the only error is a length overflow); fall back to an empty body defensively.
        let sealed = self
            .cipher()
            .encrypt(&nonce, plaintext.expose_secret().as_bytes())
            .unwrap_or_default();
        format!("{}:{}", STANDARD.encode(nonce), STANDARD.encode(sealed))
    }

    /// Checks a row's stored key hash against this key.
    ///
    /// A missing hash passes (the GCM tag still authenticates the ciphertext). Seed rows, and
    /// blob rows imported by this host, carry `SHA-256(key)`. A blob row still carrying
    /// Attune's `hex(SHA-256(password))` (the key itself) passes when it names this key; a
    /// blob row's hash is never echoed in an error, since it may be a key.
    ///
    /// # Errors
    /// [`Error::InvalidFormat`] when the hash is not 64 hex digits; [`Error::KeyMismatch`]
    /// naming both hashes.
    pub fn check_key_hash(&self, generation: Generation, row_key_hash: Option<&str>) -> Result<()> {
        let Some(row) = row_key_hash.filter(|h| !h.is_empty()) else {
            return Ok(());
        };
        let bytes = hex_hash(row)?;
        if hex::encode(bytes) == self.key_hash {
            return Ok(());
        }
        let stored = match generation {
            Generation::Seed => hex::encode(bytes),
            Generation::Blob => {
                if hex::encode(Sha256::digest(bytes)) == self.key_hash {
                    return Ok(());
                }
                "(withheld: a blob-format key hash may be a key)".to_owned()
            }
        };
        Err(Error::KeyMismatch {
            stored,
            configured: self.key_hash.clone(),
        })
    }

    /// Decrypts a stored value of either generation after checking its key hash
    /// (seed "Decryption Flow": parse, validate key hash, decode, decrypt).
    ///
    /// # Errors
    /// [`Error::InvalidFormat`], [`Error::KeyMismatch`], [`Error::DecryptFailed`] or
    /// [`Error::InvalidUtf8`].
    pub fn decrypt(&self, stored: &str, row_key_hash: Option<&str>) -> Result<SecretString> {
        let generation = Generation::of(stored);
        let (nonce, sealed) = parse(stored, generation)?;
        self.check_key_hash(generation, row_key_hash)?;
        // Decrypted in place: the buffer holds plaintext from here on, and is wiped on drop
        // (on failure it still holds only ciphertext).
        let mut plain = Zeroizing::new(sealed);
        self.cipher()
            .decrypt_in_place(Nonce::from_slice(&nonce), b"", &mut *plain)
            .map_err(|_| Error::DecryptFailed)?;
        match generation {
            Generation::Seed => {
                let text = std::str::from_utf8(&plain).map_err(|_| Error::InvalidUtf8)?;
                Ok(SecretString::from(text.to_owned()))
            }
            Generation::Blob => {
                let value: serde_json::Value =
                    serde_json::from_slice(&plain).map_err(|_| Error::InvalidUtf8)?;
                let mut text = match value {
                    serde_json::Value::String(s) => s,
                    // Attune stores JSON values; a non-string value is delivered as its JSON text.
                    other => other.to_string(),
                };
                let secret = SecretString::from(text.clone());
                text.zeroize();
                Ok(secret)
            }
        }
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("key_hash", &self.key_hash)
            .finish_non_exhaustive()
    }
}

/// Decodes a stored key hash: 64 hex digits.
fn hex_hash(hash: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    if hash.len() != 64 || hex::decode_to_slice(hash, &mut out).is_err() {
        return Err(Error::InvalidFormat("key hash must be 64 hex digits"));
    }
    Ok(out)
}

/// The key hash this host stores for a row of `generation` imported with `hash`: seed hashes
/// (`SHA-256(key)`) are kept, lowercased; Attune's blob-format hash `hex(SHA-256(password))`
/// is the key itself, so it is hashed once more, giving `SHA-256(key)`, the seed key hash of
/// the same key. The key is never stored.
///
/// # Errors
/// [`Error::InvalidFormat`] when `hash` is not 64 hex digits.
pub fn stored_key_hash(generation: Generation, hash: &str) -> Result<String> {
    let bytes = hex_hash(hash)?;
    Ok(match generation {
        Generation::Seed => hex::encode(bytes),
        Generation::Blob => hex::encode(Sha256::digest(bytes)),
    })
}

/// Checks that `stored` is a well-formed ciphertext of either generation, without decrypting
/// it (used by import, which keeps ciphertexts as they are).
///
/// # Errors
/// [`Error::InvalidFormat`].
pub fn check_format(stored: &str) -> Result<Generation> {
    let generation = Generation::of(stored);
    parse(stored, generation)?;
    Ok(generation)
}

/// Splits and decodes a stored value into `(nonce, ciphertext||tag)`.
fn parse(stored: &str, generation: Generation) -> Result<([u8; NONCE_BYTES], Vec<u8>)> {
    let decode = |part: &str, what: &'static str| {
        STANDARD
            .decode(part)
            .map_err(|_| Error::InvalidFormat(what))
    };
    let (nonce, sealed) = match generation {
        Generation::Seed => {
            let mut parts = stored.split(':');
            let (Some(n), Some(c), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Error::InvalidFormat(
                    "expected exactly one ':' between nonce and ciphertext",
                ));
            };
            if n.is_empty() || c.is_empty() {
                return Err(Error::InvalidFormat("empty nonce or ciphertext"));
            }
            (
                decode(n, "nonce is not standard padded base64")?,
                decode(c, "ciphertext is not standard padded base64")?,
            )
        }
        Generation::Blob => {
            if stored.is_empty() {
                return Err(Error::InvalidFormat("empty value"));
            }
            let mut raw = decode(stored, "value is not standard padded base64")?;
            if raw.len() < NONCE_BYTES {
                return Err(Error::InvalidFormat("shorter than a nonce"));
            }
            let sealed = raw.split_off(NONCE_BYTES);
            (raw, sealed)
        }
    };
    let nonce: [u8; NONCE_BYTES] = nonce
        .try_into()
        .map_err(|_| Error::InvalidFormat("nonce must be 12 bytes"))?;
    if sealed.len() < TAG_BYTES {
        return Err(Error::InvalidFormat(
            "ciphertext is shorter than the 16-byte authentication tag",
        ));
    }
    Ok((nonce, sealed))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const PASSWORD: &str = "test-encryption-key-0123456789abcdef";

    fn key() -> EncryptionKey {
        EncryptionKey::from_password(&SecretString::from(PASSWORD)).unwrap()
    }

    #[test]
    fn encrypt_decrypt_roundtrip() {
        let k = key();
        let stored = k.encrypt(&SecretString::from("sk_live_abc123"));
        let back = k.decrypt(&stored, Some(k.key_hash())).unwrap();
        assert_eq!(back.expose_secret(), "sk_live_abc123");
        assert!(!stored.contains("sk_live"));
    }

    #[test]
    fn same_value_gives_different_ciphertexts() {
        let k = key();
        let a = k.encrypt(&SecretString::from("same"));
        let b = k.encrypt(&SecretString::from("same"));
        assert_ne!(a, b, "nonces must be fresh per encryption");
        let nonce = STANDARD.decode(a.split(':').next().unwrap()).unwrap();
        assert_eq!(nonce.len(), NONCE_BYTES);
    }

    #[test]
    fn wrong_key_fails() {
        let stored = key().encrypt(&SecretString::from("v"));
        let other =
            EncryptionKey::from_password(&SecretString::from("another-password-that-is-32-bytes!"))
                .unwrap();
        assert_eq!(
            other.decrypt(&stored, None).unwrap_err(),
            Error::DecryptFailed
        );
        let err = other.decrypt(&stored, Some(key().key_hash())).unwrap_err();
        assert!(matches!(err, Error::KeyMismatch { .. }));
        assert!(err.to_string().contains(key().key_hash()));
        assert!(err.to_string().contains(other.key_hash()));
    }

    #[test]
    fn env_name_transformation_lives_in_names() {
        // The seed's fourth test: see `names::tests` for the full table.
        let n = crate::names::SecretName::new("db-password").unwrap();
        assert_eq!(n.env_var(), "SECRET_DB_PASSWORD");
    }

    #[test]
    fn key_hash_is_sha256_of_derived_key() {
        let k = key();
        let derived = Sha256::digest(PASSWORD.as_bytes());
        assert_eq!(k.key_hash(), hex::encode(Sha256::digest(derived)));
        assert_eq!(k.key_hash().len(), 64);
        assert!(k
            .key_hash()
            .chars()
            .all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    }

    #[test]
    fn invalid_formats_are_typed_errors() {
        let k = key();
        for bad in ["", ":", "a:b:c", "AAAA:AAAA", "%%%%:%%%%", "not base64!!"] {
            assert!(
                matches!(k.decrypt(bad, None), Err(Error::InvalidFormat(_))),
                "{bad:?}"
            );
        }
        // 12-byte nonce with a 5-byte ciphertext (shorter than the tag).
        let short = format!(
            "{}:{}",
            STANDARD.encode([0u8; 12]),
            STANDARD.encode([0u8; 5])
        );
        assert!(matches!(
            k.decrypt(&short, None),
            Err(Error::InvalidFormat(_))
        ));
    }

    #[test]
    fn short_password_is_refused() {
        let err = EncryptionKey::from_password(&SecretString::from("short")).unwrap_err();
        assert_eq!(err, Error::KeyTooShort { len: 5 });
    }

    #[test]
    fn debug_shows_no_key_material() {
        let k = key();
        let shown = format!("{k:?}");
        assert!(!shown.contains(PASSWORD));
        assert!(!shown.contains(&hex::encode(k.key.as_slice())));
    }

    #[test]
    fn tampering_is_detected() {
        let k = key();
        let stored = k.encrypt(&SecretString::from("value"));
        let (n, c) = stored.split_once(':').unwrap();
        let mut raw = STANDARD.decode(c).unwrap();
        raw[0] ^= 1;
        let tampered = format!("{n}:{}", STANDARD.encode(raw));
        assert_eq!(
            k.decrypt(&tampered, None).unwrap_err(),
            Error::DecryptFailed
        );
    }
}
