//! Every case of `tests/data/attune-ciphertexts.json` (made with Python `cryptography`, an
//! independent AES-GCM implementation) gives its `expect`ed result.

use attune_wasm::secrets::crypto::{Binding, EncryptionKey, Error, Generation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

const ANY_ROW: Binding<'static> = Binding {
    owner_type: "pack",
    owner: "mypack",
    name: "api_key",
};

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
        // The unbound generations ignore the row.
        let got = key.decrypt(stored, hash, &ANY_ROW);
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
                let generation = attune_wasm::secrets::crypto::Generation::of(stored);
                let kept = attune_wasm::secrets::crypto::stored_key_hash(generation, hash.unwrap())
                    .unwrap();
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
    let err = key.decrypt(blob, Some(raw_key_hex), &ANY_ROW).unwrap_err();
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

/// Every case of `tests/data/bound-ciphertexts.json` (made with Python `cryptography` by
/// `tests/data/gen_bound_vectors.py`, from the format as documented) gives its `expect`ed
/// result, read from the row the case names; the floor record is authentic.
#[test]
fn every_bound_vector_gives_its_expected_result() {
    let raw = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/bound-ciphertexts.json"
    ))
    .expect("vector file");
    let doc: Value = serde_json::from_str(&raw).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 40, "the file has all its cases");
    let mut expectations = std::collections::BTreeSet::new();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let key =
            EncryptionKey::from_password(&SecretString::from(case["password"].as_str().unwrap()))
                .unwrap();
        let stored = case["stored"].as_str().unwrap();
        assert_eq!(Generation::of(stored), Generation::Bound, "{id}");
        let row = Binding {
            owner_type: case["row"]["owner_type"].as_str().unwrap(),
            owner: case["row"]["owner"].as_str().unwrap(),
            name: case["row"]["name"].as_str().unwrap(),
        };
        let got = key.decrypt(stored, case["encryption_key_hash"].as_str(), &row);
        let expect = case["expect"].as_str().unwrap();
        expectations.insert(expect);
        match expect {
            "ok" => {
                let plain = got.unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(
                    plain.expose_secret(),
                    case["plaintext"].as_str().unwrap(),
                    "{id}"
                );
                // What the host writes for the same row decrypts in Python's terms too: same
                // format, same associated data (checked by reading it back here, and by the
                // format's documented layout).
                let again = key.encrypt(&plain, &row);
                assert!(again.starts_with("v2:"), "{id}");
                assert_eq!(
                    key.decrypt(&again, Some(key.key_hash()), &row)
                        .unwrap()
                        .expose_secret(),
                    plain.expose_secret(),
                    "{id}"
                );
            }
            "decrypt-failed" => assert_eq!(got.err(), Some(Error::DecryptFailed), "{id}"),
            "key-mismatch" => assert!(matches!(got, Err(Error::KeyMismatch { .. })), "{id}"),
            "invalid-format" => assert!(matches!(got, Err(Error::InvalidFormat(_))), "{id}"),
            "invalid-utf8" => assert_eq!(got.err(), Some(Error::InvalidUtf8), "{id}"),
            other => panic!("{id}: unknown expectation {other}"),
        }
    }
    assert_eq!(expectations.len(), 5, "every kind of case is present");
    let floor = &doc["floor"];
    let key =
        EncryptionKey::from_password(&SecretString::from(floor["password"].as_str().unwrap()))
            .unwrap();
    assert_eq!(
        key.floor(floor["stored"].as_str()),
        Some(Generation::Bound),
        "the floor record made by Python is authentic"
    );
}
