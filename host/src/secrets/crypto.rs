//! Encryption of stored secret values (seed "Encryption Flow" / "Decryption Flow").
//!
//! - Key: `SHA-256(password UTF-8 bytes)`, 32 bytes, AES-256-GCM.
//! - Bound format (what this host writes, [`Generation::Bound`]):
//!   `v2:base64(nonce):base64(ciphertext||tag)`, standard alphabet with padding (RFC 4648 §4), a
//!   fresh random 12-byte nonce per encryption, and associated data ([`Binding::aad`]) that binds
//!   the ciphertext to its row (owner type, owner, name) and to the key hash: a ciphertext
//!   copied into another row does not decrypt there. Documented with independent test vectors
//!   in `docs/secrets-management.md` ("Ciphertext formats and key hashes").
//! - Seed format (the Phase 5.5 design, written by this host before the bound format; read
//!   only): `base64(nonce):base64(ciphertext||tag)`, no associated data.
//!   Key hash: lowercase hex `SHA-256(derived key)`.
//! - Blob format (later Attune releases, read only): `base64(nonce||ciphertext||tag)`, whose
//!   plaintext is the JSON encoding of the value. Attune stores `hex(SHA-256(password))` as its
//!   key hash, which **is the key itself**: this host never stores, compares in the open or
//!   prints such a value. [`stored_key_hash`] turns it into the seed key hash
//!   (`SHA-256(key)`) on import.
//!
//! Plaintext leaves this module only as [`SecretString`]; errors never carry key material,
//! ciphertext or plaintext.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, AeadInPlace, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
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
#[non_exhaustive]
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
    /// Authentication failed: wrong key, tampered ciphertext, or (bound format) a ciphertext
    /// that was made for another row.
    #[error("decryption failed (wrong key, tampered ciphertext, or a ciphertext copied from another row)")]
    DecryptFailed,
    /// A row holds an older, unbound format in a store whose floor (written by `key rotate`)
    /// says every encrypted row is bound: someone replaced the row's value.
    #[error("the value is in the unbound {found} format, but this store holds only bound (v2) ciphertexts since its last key rotate: the row was replaced by an older ciphertext")]
    Downgraded {
        /// The generation found (`seed` or `blob`).
        found: Generation,
    },
    /// The plaintext is not UTF-8 (or, in the blob format, not a JSON string).
    #[error("decrypted value is not valid UTF-8 text")]
    InvalidUtf8,
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which ciphertext generation a stored value uses (see the module docs).
///
/// Ordered by age: `Blob < Seed < Bound` only in the sense that [`Generation::Bound`] is the
/// one format whose ciphertexts cannot move between rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Generation {
    /// `base64(nonce):base64(ciphertext||tag)`, the seed design (this host before v2).
    Seed,
    /// `base64(nonce||ciphertext||tag)` with a JSON-encoded plaintext (later Attune).
    Blob,
    /// `v2:base64(nonce):base64(ciphertext||tag)` with the row bound as associated data
    /// ([`Binding::aad`]): what this host writes.
    Bound,
}

/// Prefix of the bound format. A seed value starts with 16 base64 characters (its nonce) and a
/// blob value has no `:`, so neither can start with it.
pub const BOUND_PREFIX: &str = "v2:";

impl Generation {
    /// Detects the generation from the stored text: the bound format starts with
    /// [`BOUND_PREFIX`], the seed format contains `:`, the blob format (pure base64) never does.
    pub fn of(stored: &str) -> Self {
        if stored.starts_with(BOUND_PREFIX) {
            Self::Bound
        } else if stored.contains(':') {
            Self::Seed
        } else {
            Self::Blob
        }
    }

    /// `true` for the formats whose ciphertext is not bound to its row (seed, blob).
    pub fn is_unbound(self) -> bool {
        !matches!(self, Self::Bound)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Seed => "seed",
            Self::Blob => "blob",
            Self::Bound => "bound (v2)",
        })
    }
}

/// The row a bound ciphertext belongs to: its owner type (`system`, `pack`, `action`), owner
/// ref (`""` for system, the pack ref, or the action ref `pack.action`) and name, as stored in
/// the `secrets` table's columns of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    /// `system`, `pack` or `action`.
    pub owner_type: &'a str,
    /// `""` for system, else the pack ref or the action ref.
    pub owner: &'a str,
    /// The secret's name.
    pub name: &'a str,
}

/// Domain-separation label that opens the associated data of the bound format.
const AAD_LABEL: &[u8] = b"attune-wasm secret v2";

/// The floor record's binding (see [`EncryptionKey::seal_floor`]); `store` is no owner type a
/// row can have.
const FLOOR_BINDING: Binding<'static> = Binding {
    owner_type: "store",
    owner: "",
    name: "ciphertext-floor",
};

impl Binding<'_> {
    /// The associated data of a bound ciphertext made under the key with hash `key_hash`:
    ///
    /// `"attune-wasm secret v2" || 0x00 || field(owner_type) || field(owner) || field(name) ||
    /// field(key_hash)`, where `field(x)` is the 4-byte big-endian length of `x`'s UTF-8 bytes
    /// followed by those bytes, and `key_hash` is the 64 lowercase hex digits of
    /// [`EncryptionKey::key_hash`]. Length prefixes make the encoding injective: no two rows
    /// share associated data.
    pub fn aad(&self, key_hash: &str) -> Vec<u8> {
        let fields = [self.owner_type, self.owner, self.name, key_hash];
        let mut aad = Vec::with_capacity(
            AAD_LABEL.len() + 1 + fields.iter().map(|f| 4 + f.len()).sum::<usize>(),
        );
        aad.extend_from_slice(AAD_LABEL);
        aad.push(0);
        for field in fields {
            // A field longer than 4 GiB cannot reach here (values and names are bounded far
            // below); saturate rather than wrap if it ever did.
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            aad.extend_from_slice(&len.to_be_bytes());
            aad.extend_from_slice(field.as_bytes());
        }
        aad
    }
}

/// A 256-bit AES-GCM key derived from the configured password.
///
/// Zeroized on drop; `Debug` shows only the key hash.
pub struct EncryptionKey {
    key: Zeroizing<[u8; 32]>,
    key_hash: String,
    /// `key_hash` as its 32 bytes (`SHA-256(key)`): rows' hashes are compared as bytes, with
    /// no hex text made per row.
    key_hash_bytes: [u8; 32],
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
        let key_hash_bytes: [u8; 32] = Sha256::digest(key.as_slice()).into();
        let key_hash = hex::encode(key_hash_bytes);
        Ok(Self {
            key,
            key_hash,
            key_hash_bytes,
        })
    }

    /// Lowercase hex `SHA-256(derived key)`: the key hash stored with every row this host
    /// encrypts (seed format).
    pub fn key_hash(&self) -> &str {
        &self.key_hash
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_slice()))
    }

    /// Encrypts `plaintext` for the row `binding` into the bound format
    /// `v2:base64(nonce):base64(ciphertext||tag)`, with [`Binding::aad`] as associated data.
    ///
    /// The nonce is 12 fresh random bytes from the OS: it MUST be unique per message under one
    /// key, which random 96-bit nonces give for far more messages than a secret store holds.
    pub fn encrypt(&self, plaintext: &SecretString, binding: &Binding<'_>) -> String {
        let aad = binding.aad(&self.key_hash);
        let (nonce, sealed) = self.seal(plaintext.expose_secret().as_bytes(), &aad);
        format!(
            "{BOUND_PREFIX}{}:{}",
            STANDARD.encode(nonce),
            STANDARD.encode(sealed)
        )
    }

    /// Encrypts `plaintext` into the unbound seed format `base64(nonce):base64(ciphertext||tag)`
    /// of the Phase 5.5 design, as this host wrote before the bound format. The host itself
    /// writes only [`EncryptionKey::encrypt`]; this exists to make rows as an older host or
    /// Attune did (tests, benchmarks, migration tooling).
    pub fn encrypt_seed(&self, plaintext: &SecretString) -> String {
        let (nonce, sealed) = self.seal(plaintext.expose_secret().as_bytes(), b"");
        format!("{}:{}", STANDARD.encode(nonce), STANDARD.encode(sealed))
    }

    /// AES-256-GCM with a fresh random nonce: `(nonce, ciphertext||tag)`.
    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> ([u8; NONCE_BYTES], Vec<u8>) {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a 12-byte nonce and a plaintext below 64 GiB cannot fail in aes-gcm
        // 0.10 (the only error is a length overflow); fall back to an empty body defensively.
        let sealed = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        (nonce.into(), sealed)
    }

    /// The store's ciphertext floor record: a bound ciphertext of `v2` under this key, for a
    /// row no secret can have (owner type `store`). `key rotate` writes it once every encrypted
    /// row is bound; from then on [`EncryptionKey::floor`] of it is [`Generation::Bound`] and
    /// an unbound row is refused as [`Error::Downgraded`]. Only the key's holder can make it.
    pub fn seal_floor(&self) -> String {
        self.encrypt(&SecretString::from("v2"), &FLOOR_BINDING)
    }

    /// Reads a store's floor record (see [`EncryptionKey::seal_floor`]): `Some(Bound)` when it
    /// is authentic under this key, `None` when there is none or it was made under another key
    /// (a store rotated to a key this host does not have: its rows fail their key-hash check
    /// anyway).
    pub fn floor(&self, record: Option<&str>) -> Option<Generation> {
        let record = record?;
        let plain = self
            .decrypt(record, Some(&self.key_hash), &FLOOR_BINDING)
            .ok()?;
        (plain.expose_secret() == "v2").then_some(Generation::Bound)
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
        if bytes == self.key_hash_bytes {
            return Ok(());
        }
        let stored = match generation {
            Generation::Seed | Generation::Bound => hex::encode(bytes),
            Generation::Blob => {
                if <[u8; 32]>::from(Sha256::digest(bytes)) == self.key_hash_bytes {
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

    /// Decrypts a stored value of any generation after checking its key hash (seed
    /// "Decryption Flow": parse, validate key hash, decode, decrypt). `binding` is the row the
    /// value was read from; a bound ciphertext decrypts only there (the unbound generations
    /// ignore it).
    ///
    /// # Errors
    /// [`Error::InvalidFormat`], [`Error::KeyMismatch`], [`Error::DecryptFailed`] (also for a
    /// bound ciphertext copied from another row) or [`Error::InvalidUtf8`].
    pub fn decrypt(
        &self,
        stored: &str,
        row_key_hash: Option<&str>,
        binding: &Binding<'_>,
    ) -> Result<SecretString> {
        let generation = Generation::of(stored);
        let (nonce, mut sealed) = parse(stored, generation)?;
        self.check_key_hash(generation, row_key_hash)?;
        let aad = match generation {
            Generation::Bound => binding.aad(&self.key_hash),
            Generation::Seed | Generation::Blob => Vec::new(),
        };
        // Decrypted in place, in a buffer of exactly the plaintext's size: a plaintext that is
        // text becomes the secret's own buffer without a copy (a copy would leave one more
        // plaintext to wipe; the secret wipes its own on drop). Any other outcome wipes it
        // here. (On a tag mismatch aes-gcm decrypts nothing: the buffer holds ciphertext.)
        let tag_at = sealed.len() - TAG_BYTES; // `parse` checked `sealed` holds a tag.
        let tag = *Tag::from_slice(&sealed[tag_at..]);
        sealed.truncate(tag_at);
        // Still ciphertext: shrinking may move it, nothing secret is left behind.
        sealed.shrink_to_fit();
        let mut plain = Zeroizing::new(sealed);
        self.cipher()
            .decrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut plain, &tag)
            .map_err(|_| Error::DecryptFailed)?;
        match generation {
            Generation::Seed | Generation::Bound => {
                match String::from_utf8(std::mem::take(&mut *plain)) {
                    // Capacity equals length: the secret keeps this allocation.
                    Ok(text) => Ok(SecretString::from(text)),
                    Err(e) => {
                        e.into_bytes().zeroize();
                        Err(Error::InvalidUtf8)
                    }
                }
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

/// Refuses an unbound value (seed or blob) read from a store whose floor (see
/// [`EncryptionKey::floor`]) is [`Generation::Bound`].
///
/// # Errors
/// [`Error::Downgraded`] naming the generation found.
pub fn check_floor(stored: &str, floor: Option<Generation>) -> Result<()> {
    let found = Generation::of(stored);
    match floor {
        Some(Generation::Bound) if found.is_unbound() => Err(Error::Downgraded { found }),
        _ => Ok(()),
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
        Generation::Seed | Generation::Bound => hex::encode(bytes),
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
    // SIMD base64 (RFC 4648 §4, padded, canonical: the same inputs as `base64`'s STANDARD
    // engine are refused); a 64 KiB value is ~87 KB of base64.
    let decode = |part: &str, what: &'static str| {
        base64_simd::STANDARD
            .decode_to_vec(part)
            .map_err(|_| Error::InvalidFormat(what))
    };
    let (nonce, sealed) = match generation {
        Generation::Seed | Generation::Bound => {
            let body = stored.strip_prefix(BOUND_PREFIX).unwrap_or(stored);
            let one_colon =
                || Error::InvalidFormat("expected exactly one ':' between nonce and ciphertext");
            // Only the nonce is searched for the `:`: a second one, in the ciphertext, is not
            // base64 and fails its decoding, which then names it (not scanning the whole
            // ciphertext for it was 7 % of decrypting 64 KiB).
            let (n, c) = body.split_once(':').ok_or_else(one_colon)?;
            if n.is_empty() || c.is_empty() {
                return Err(if c.contains(':') {
                    one_colon()
                } else {
                    Error::InvalidFormat("empty nonce or ciphertext")
                });
            }
            let colon_or = |e| if c.contains(':') { one_colon() } else { e };
            (
                decode(n, "nonce is not standard padded base64").map_err(colon_or)?,
                decode(c, "ciphertext is not standard padded base64").map_err(colon_or)?,
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

    const ROW: Binding<'static> = Binding {
        owner_type: "pack",
        owner: "mypack",
        name: "api_key",
    };

    #[test]
    fn encrypt_decrypt_roundtrip() {
        let k = key();
        let stored = k.encrypt(&SecretString::from("sk_live_abc123"), &ROW);
        assert_eq!(Generation::of(&stored), Generation::Bound);
        let back = k.decrypt(&stored, Some(k.key_hash()), &ROW).unwrap();
        assert_eq!(back.expose_secret(), "sk_live_abc123");
        assert!(!stored.contains("sk_live"));
        let seed = k.encrypt_seed(&SecretString::from("sk_live_abc123"));
        assert_eq!(Generation::of(&seed), Generation::Seed);
        let back = k.decrypt(&seed, Some(k.key_hash()), &ROW).unwrap();
        assert_eq!(back.expose_secret(), "sk_live_abc123");
    }

    #[test]
    fn a_bound_ciphertext_decrypts_only_in_its_own_row() {
        let k = key();
        let stored = k.encrypt(&SecretString::from("sk_live_abc123"), &ROW);
        let others = [
            Binding {
                owner_type: "action",
                ..ROW
            },
            Binding {
                owner: "otherpack",
                ..ROW
            },
            Binding {
                name: "api_key2",
                ..ROW
            },
            // Length prefixes: moving bytes between fields changes the associated data.
            Binding {
                owner: "mypac",
                name: "kapi_key",
                ..ROW
            },
            Binding {
                owner_type: "system",
                owner: "",
                ..ROW
            },
        ];
        for other in others {
            assert_eq!(
                k.decrypt(&stored, Some(k.key_hash()), &other).unwrap_err(),
                Error::DecryptFailed,
                "{other:?}"
            );
        }
    }

    #[test]
    fn the_floor_is_authentic_only_under_its_key_and_refuses_unbound_rows() {
        let k = key();
        let record = k.seal_floor();
        assert_eq!(k.floor(Some(&record)), Some(Generation::Bound));
        assert_eq!(k.floor(None), None);
        let other =
            EncryptionKey::from_password(&SecretString::from("another-password-that-is-32-bytes!"))
                .unwrap();
        assert_eq!(other.floor(Some(&record)), None);
        // A secret's own ciphertext of "v2" is no floor: the binding differs.
        let forged = k.encrypt(&SecretString::from("v2"), &ROW);
        assert_eq!(k.floor(Some(&forged)), None);
        let seed = k.encrypt_seed(&SecretString::from("x"));
        assert_eq!(
            check_floor(&seed, Some(Generation::Bound)),
            Err(Error::Downgraded {
                found: Generation::Seed
            })
        );
        assert_eq!(check_floor(&seed, None), Ok(()));
        let bound = k.encrypt(&SecretString::from("x"), &ROW);
        assert_eq!(check_floor(&bound, Some(Generation::Bound)), Ok(()));
    }

    #[test]
    fn same_value_gives_different_ciphertexts() {
        let k = key();
        let a = k.encrypt(&SecretString::from("same"), &ROW);
        let b = k.encrypt(&SecretString::from("same"), &ROW);
        assert_ne!(a, b, "nonces must be fresh per encryption");
        let nonce = STANDARD.decode(a.split(':').nth(1).unwrap()).unwrap();
        assert_eq!(nonce.len(), NONCE_BYTES);
    }

    #[test]
    fn wrong_key_fails() {
        let stored = key().encrypt(&SecretString::from("v"), &ROW);
        let other =
            EncryptionKey::from_password(&SecretString::from("another-password-that-is-32-bytes!"))
                .unwrap();
        assert_eq!(
            other.decrypt(&stored, None, &ROW).unwrap_err(),
            Error::DecryptFailed
        );
        let err = other
            .decrypt(&stored, Some(key().key_hash()), &ROW)
            .unwrap_err();
        assert!(matches!(err, Error::KeyMismatch { .. }));
        assert!(err.to_string().contains(key().key_hash()));
        assert!(err.to_string().contains(other.key_hash()));
    }

    #[test]
    fn env_name_transformation_lives_in_names() {
        // The seed's fourth test: see `names::tests` for the full table.
        let n = crate::secrets::names::SecretName::new("db-password").unwrap();
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
    fn row_key_hashes_match_by_value_in_either_case() {
        let k = key();
        let other = EncryptionKey::from_password(&SecretString::from(
            "another-password-of-at-least-32-bytes",
        ))
        .unwrap();
        for generation in [Generation::Seed, Generation::Bound, Generation::Blob] {
            k.check_key_hash(generation, Some(k.key_hash())).unwrap();
            k.check_key_hash(generation, Some(&k.key_hash().to_ascii_uppercase()))
                .unwrap();
            assert!(matches!(
                k.check_key_hash(generation, Some(other.key_hash())),
                Err(Error::KeyMismatch { .. })
            ));
        }
        // Attune's blob rows carry hex(SHA-256(password)), the key itself: it names this key.
        let attune_style = hex::encode(k.key.as_slice());
        k.check_key_hash(Generation::Blob, Some(&attune_style))
            .unwrap();
        let err = k
            .check_key_hash(Generation::Blob, Some(&hex::encode(other.key.as_slice())))
            .unwrap_err();
        assert!(!err.to_string().contains(&hex::encode(other.key.as_slice())));
        // In the seed formats that text is just another key's hash: a mismatch.
        assert!(k
            .check_key_hash(Generation::Seed, Some(&attune_style))
            .is_err());
    }

    #[test]
    fn invalid_formats_are_typed_errors() {
        let k = key();
        for bad in [
            "",
            ":",
            "a:b:c",
            "AAAA:AAAA",
            "%%%%:%%%%",
            "not base64!!",
            "v2:",
            "v2:AAAA",
        ] {
            assert!(
                matches!(k.decrypt(bad, None, &ROW), Err(Error::InvalidFormat(_))),
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
            k.decrypt(&short, None, &ROW),
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
        let stored = k.encrypt(&SecretString::from("value"), &ROW);
        let (n, c) = stored
            .strip_prefix(BOUND_PREFIX)
            .unwrap()
            .split_once(':')
            .unwrap();
        let mut raw = STANDARD.decode(c).unwrap();
        raw[0] ^= 1;
        let tampered = format!("{BOUND_PREFIX}{n}:{}", STANDARD.encode(raw));
        assert_eq!(
            k.decrypt(&tampered, None, &ROW).unwrap_err(),
            Error::DecryptFailed
        );
    }
}
