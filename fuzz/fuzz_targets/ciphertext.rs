//! Ciphertext parser and decryptor: any stored text and key hash give a typed result, never a
//! panic; a successful decryption round-trips through `encrypt` (bound to the row, and only
//! there), and the floor check never panics.
#![no_main]

use attune_wasm::secrets::crypto::{check_floor, check_format, Binding, EncryptionKey, Generation};
use libfuzzer_sys::fuzz_target;
use secrecy::{ExposeSecret, SecretString};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (stored, hash) = match text.split_once('\u{1}') {
        Some((s, h)) => (s, Some(h)),
        None => (text.as_ref(), None),
    };
    let key = EncryptionKey::from_password(&SecretString::from("fuzz-password-0123456789abcdefghij"))
        .expect("32+ bytes");
    let _ = check_format(stored);
    let _ = key.check_key_hash(Generation::of(stored), hash);
    let _ = check_floor(stored, key.floor(Some(stored)));
    let row = Binding { owner_type: "pack", owner: "p", name: "n" };
    if let Ok(plain) = key.decrypt(stored, hash, &row) {
        let again = key.encrypt(&plain, &row);
        let back = key.decrypt(&again, Some(key.key_hash()), &row).expect("round trip");
        assert_eq!(back.expose_secret(), plain.expose_secret());
        let other = Binding { name: "m", ..row };
        assert!(key.decrypt(&again, Some(key.key_hash()), &other).is_err());
    }
});
