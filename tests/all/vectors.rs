//! Every case of `tests/data/attune-ciphertexts.json` (made with Python `cryptography`, an
//! independent AES-GCM implementation) gives its `expect`ed result.

use attune_wasm::crypto::{EncryptionKey, Error};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

#[test]
fn every_vector_gives_its_expected_result() {
    let raw = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/attune-ciphertexts.json"
    ))
    .expect("vector file");
    let doc: Value = serde_json::from_str(&raw).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "the file has all its cases");
    let mut seen_seed = 0;
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let key =
            EncryptionKey::from_password(&SecretString::from(case["password"].as_str().unwrap()))
                .unwrap();
        let stored = case["stored"].as_str().unwrap();
        let hash = case["encryption_key_hash"].as_str();
        let got = key.decrypt(stored, hash);
        match case["expect"].as_str().unwrap() {
            "ok" => {
                let plain = got.unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(
                    plain.expose_secret(),
                    case["plaintext"].as_str().unwrap(),
                    "{id}"
                );
                // The key hash this host stores for the row is the configured key's hash, in both
                // generations (a blob row's hash is the key itself and is hashed once more).
                let generation = attune_wasm::crypto::Generation::of(stored);
                let kept = attune_wasm::crypto::stored_key_hash(generation, hash.unwrap()).unwrap();
                assert_eq!(kept, key.key_hash(), "{id}");
            }
            "decrypt-failed" => assert_eq!(got.err(), Some(Error::DecryptFailed), "{id}"),
            "key-mismatch" => assert!(matches!(got, Err(Error::KeyMismatch { .. })), "{id}"),
            "invalid-format" => assert!(matches!(got, Err(Error::InvalidFormat(_))), "{id}"),
            "invalid-utf8" => assert_eq!(got.err(), Some(Error::InvalidUtf8), "{id}"),
            other => panic!("{id}: unknown expectation {other}"),
        }
        if case["format"] == "seed" {
            seen_seed += 1;
        }
    }
    assert!(seen_seed >= 20);
}

#[test]
fn a_blob_key_hash_is_never_echoed() {
    // Attune's blob "key hash" is hex(SHA-256(password)), i.e. the AES key.
    let key =
        EncryptionKey::from_password(&SecretString::from("another-password-0123456789abcdefghij"))
            .unwrap();
    let blob = "igLw4WGvN/hsuQeHZlBGuPm7DPxZ0s615d3j5yMIbMTW9yCTc761VjEqilMSQNJecuA=";
    let raw_key_hex = "7099416ddef712caa6485debef7539c1180e46e1382c678c120ecfbd704edc91";
    let err = key.decrypt(blob, Some(raw_key_hex)).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }));
    assert!(!err.to_string().contains(raw_key_hex), "{err}");
    use sha2::{Digest, Sha256};
    assert!(!err.to_string().contains(&hex::encode(Sha256::digest(
        b"another-password-0123456789abcdefghij"
    ))));
}

#[test]
fn seed_vectors_key_hash_matches_cli_key_hash() {
    // `attune-wasm key hash` prints the same hash the vectors store for the seed format.
    let host = crate::support::Host {
        key: Some("vector-password-2291d8cdc310411e7ec27378".into()),
        ..crate::support::Host::new()
    };
    let out = host.exec(&["key", "hash"], None);
    assert!(out.status.success());
    assert_eq!(
        crate::support::text(&out.stdout).trim(),
        "ed67d24278bad326343c5eb43f04e97cef84cf1ade13831d99dcfd990847c4af"
    );
}
