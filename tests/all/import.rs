//! `secret import`: every vector case through import + `get --reveal`, transactional import,
//! skipped owner types, imported blob-format secrets reaching a guest.

use serde_json::{json, Value};

use crate::support::{text, value, Host, Target};

const VECTOR_PASSWORD: &str = "vector-password-2291d8cdc310411e7ec27378";

fn vectors() -> Vec<Value> {
    let raw = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/attune-ciphertexts.json"
    ))
    .unwrap();
    let doc: Value = serde_json::from_str(&raw).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

fn row(case: &Value) -> String {
    json!({
        "ref": case["id"],
        "owner_type": "system",
        "owner": null,
        "name": case["id"],
        "encrypted": true,
        "encryption_key_hash": case["encryption_key_hash"],
        "value": case["stored"],
    })
    .to_string()
}

fn import(host: &Host, lines: &str) -> std::process::Output {
    host.exec(&["secret", "import", "-"], Some(lines.as_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_vector_case_gives_its_expected_result_through_import_and_reveal() {
    for mut host in Host::all_backends() {
        host.key = Some(VECTOR_PASSWORD.into());
        tokio::task::block_in_place(|| vector_cases(&host));
        host.drop_schema().await;
    }
}

fn vector_cases(host: &Host) {
    let cases = vectors();
    let (invalid, importable): (Vec<&Value>, Vec<&Value>) =
        cases.iter().partition(|c| c["expect"] == "invalid-format");
    let file: Vec<String> = importable.iter().map(|c| row(c)).collect();
    let out = import(host, &file.join("\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("imported {} secrets", importable.len())));
    for case in importable {
        let id = case["id"].as_str().unwrap();
        let out = host.exec(&["secret", "get", id, "--reveal"], None);
        let err = text(&out.stderr);
        match case["expect"].as_str().unwrap() {
            "ok" => {
                assert!(out.status.success(), "{id}: {err}");
                assert_eq!(
                    text(&out.stdout),
                    case["plaintext"].as_str().unwrap(),
                    "{id}"
                );
            }
            "decrypt-failed" => assert!(
                err.contains(&format!("{id}: decryption failed")),
                "{id}: {err}"
            ),
            "key-mismatch" => assert!(
                err.contains(&format!("{id}: key hash mismatch")),
                "{id}: {err}"
            ),
            "invalid-utf8" => assert!(
                err.contains(&format!("{id}: decrypted value is not valid UTF-8")),
                "{id}: {err}"
            ),
            other => panic!("{id}: {other}"),
        }
    }
    // Invalid formats are refused at import, naming the row, and nothing is written.
    for case in invalid {
        let id = case["id"].as_str().unwrap();
        let fresh = Host {
            key: Some(VECTOR_PASSWORD.into()),
            ..Host::new()
        };
        let out = import(&fresh, &row(case));
        assert_eq!(out.status.code(), Some(1), "{id}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("ref {id}")) && err.contains("invalid ciphertext format"),
            "{id}: {err}"
        );
        assert!(!fresh.db_path().exists());
    }
}

#[test]
fn import_is_all_or_nothing_and_skips_owner_types_not_run_here() {
    let host = Host::new();
    host.set("existing", "keep-me", &[]);
    let good = json!({"ref": "mypack.token", "owner_type": "pack", "owner_pack_ref": "mypack", "name": "token", "encrypted": false, "value": "t"}).to_string();
    let identity = json!({"ref": "alice.pw", "owner_type": "identity", "owner": "alice", "name": "pw", "encrypted": false, "value": "x"}).to_string();
    let bad = json!({"ref": "mypack.broken", "owner_type": "pack", "owner_pack_ref": "mypack", "name": "broken", "encrypted": true, "value": "zz:zz:zz"}).to_string();
    let out = import(&host, &format!("{good}\n{identity}\n{bad}\n"));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("mypack.broken") && err.contains("nothing written"),
        "{err}"
    );
    let list = text(&host.exec(&["secret", "list"], None).stdout);
    assert!(
        !list.contains("token"),
        "nothing of the failed import is stored: {list}"
    );

    let out = import(&host, &format!("{good}\n{identity}\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("skipped line 2 (ref alice.pw): owner type identity"));
    assert!(text(&out.stdout).contains("imported 1 secret (1 created, 0 updated), skipped 1"));
}

#[test]
fn imported_blob_and_seed_secrets_reach_guests() {
    let host = Host {
        key: Some(VECTOR_PASSWORD.into()),
        ..Host::new()
    };
    let cases = vectors();
    let find = |id: &str| cases.iter().find(|c| c["id"] == id).unwrap().clone();
    let blob = find("blob-3");
    let seed = find("seed-7");
    let rows = [
        json!({"ref": "mypack.blob", "owner_type": "pack", "owner_pack_ref": "mypack", "name": "blob", "encrypted": true, "encryption_key_hash": blob["encryption_key_hash"], "value": blob["stored"]}),
        json!({"ref": "mypack.deploy.seed", "owner_type": "action", "owner_action_ref": "mypack.deploy", "name": "seed", "encrypted": true, "encryption_key_hash": seed["encryption_key_hash"], "value": seed["stored"]}),
    ];
    let lines: Vec<String> = rows.iter().map(Value::to_string).collect();
    assert!(import(&host, &lines.join("\n")).status.success());
    let report = host.get(Target::P2, "mypack.deploy", &["blob", "seed"]);
    assert_eq!(value(&report, "blob").as_deref(), Ok("pässwörd€"));
    assert_eq!(value(&report, "seed").as_deref(), Ok("with:colon:inside"));
    assert_eq!(
        host.env(Target::P1, "mypack.deploy")["SECRET_BLOB"],
        "pässwörd€"
    );
    // Attune's blob "key hash" is the key itself: it is never stored or shown.
    let raw = blob["encryption_key_hash"].as_str().unwrap();
    let meta = text(
        &host
            .exec(&["secret", "get", "blob", "--pack", "mypack"], None)
            .stdout,
    );
    assert!(!meta.contains(raw), "{meta}");
    let seed_hash = seed["encryption_key_hash"].as_str().unwrap();
    assert!(
        meta.contains(seed_hash),
        "stored as the key's seed hash: {meta}"
    );
    for path in host.stored_files() {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(raw.len()).any(|w| w == raw.as_bytes()),
            "{}",
            path.display()
        );
    }
}
