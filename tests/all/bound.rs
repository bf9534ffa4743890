//! Ciphertexts bound to their row (issue 10, kind 6): the bound (v2) format this host writes,
//! a ciphertext copied into another row, `key rotate` as the upgrade, the store's floor that
//! detects a downgrade, and import into a floored store. Every case on SQLite and PostgreSQL.

use attune_wasm::secrets::names::{ActionRef, Owner, PackRef};
use secrecy::{ExposeSecret, SecretString};

use crate::support::{key, text, value, Host, Target, KEY, OTHER_KEY};

const ACTION: &str = "mypack.deploy";

fn pack() -> Owner {
    Owner::Pack(PackRef::new("mypack").unwrap())
}

/// `key rotate` of `host`'s store to the password `to`.
pub(crate) fn rotate(host: &Host, to: &str) -> std::process::Output {
    host.cmd()
        .env("ATTUNE_NEW_ENCRYPTION_KEY", to)
        .args(["key", "rotate"])
        .output()
        .unwrap()
}

/// `api_key` is delivered to `mypack.deploy` through neither door (no `SECRET_API_KEY`), and
/// `--strict-secrets` fails naming `secret_ref` with `reason`; `planted` (part of the value
/// that must not arrive) is in neither output.
fn assert_withheld(host: &Host, secret_ref: &str, reason: &str, planted: &str) {
    let env = host.env(Target::P1, ACTION);
    assert!(!env.contains_key("SECRET_API_KEY"), "{env:?}");
    let probe = crate::support::probe(Target::P2);
    let out = host.run(&probe, ACTION, &["--strict-secrets"], &["get", "api_key"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(secret_ref) && err.contains(reason), "{err}");
    assert!(
        !err.contains(planted) && !text(&out.stdout).contains(planted),
        "{err}"
    );
}

/// The stored text of (`owner`, `name`).
async fn stored(host: &Host, owner: &Owner, name: &str) -> String {
    let row = host
        .store()
        .await
        .get(
            owner,
            &attune_wasm::secrets::names::SecretName::new(name).unwrap(),
        )
        .await
        .unwrap()
        .expect("row exists");
    row.value.text().expose_secret().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ciphertext_copied_into_another_row_is_not_delivered_there() {
    for host in Host::all_backends() {
        host.set("api_key", "pack-api-key-value-1111", &["--pack", "mypack"]);
        host.set("db_password", "system-db-password-2222", &[]);
        let written = stored(&host, &pack(), "api_key").await;
        assert!(
            written.starts_with("v2:"),
            "the host writes the bound format"
        );
        // Someone with write access to the table copies the system row's ciphertext (same key,
        // valid tag) into the action's own row of another name.
        let copied = stored(&host, &Owner::System, "db_password").await;
        let k = key(KEY);
        host.put_raw(
            Owner::Action(ActionRef::new(ACTION).unwrap()),
            "api_key",
            true,
            Some(k.key_hash()),
            &copied,
        )
        .await;
        let got = host.get(Target::P2, ACTION, &["api_key", "db_password"]);
        assert_eq!(value(&got, "api_key"), Err("Unavailable".into()), "{got}");
        assert_eq!(
            value(&got, "db_password").as_deref(),
            Ok("system-db-password-2222")
        );
        assert_withheld(
            &host,
            "mypack.deploy.api_key",
            "copied from another row",
            "2222",
        );
        host.drop_schema().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rotate_upgrades_unbound_rows_and_then_refuses_a_downgrade() {
    for host in Host::all_backends() {
        let old = key(KEY);
        let new = key(OTHER_KEY);
        // Rows as an older host wrote them: the unbound seed format.
        for (owner, name, plain) in [
            (Owner::System, "token", "system-token-value-3333"),
            (pack(), "api_key", "pack-api-key-value-4444"),
        ] {
            host.put_raw(
                owner,
                name,
                true,
                Some(old.key_hash()),
                &old.encrypt_seed(&SecretString::from(plain)),
            )
            .await;
        }
        // Without a floor, unbound rows are read as before.
        let got = host.get(Target::P2, ACTION, &["token", "api_key"]);
        assert_eq!(
            value(&got, "token").as_deref(),
            Ok("system-token-value-3333")
        );
        assert!(host.store().await.floor_record().is_none());

        let out = rotate(&host, OTHER_KEY);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let host = Host {
            key: Some(OTHER_KEY.to_owned()),
            ..host
        };
        for (owner, name) in [(Owner::System, "token"), (pack(), "api_key")] {
            assert!(
                stored(&host, &owner, name).await.starts_with("v2:"),
                "{name} upgraded"
            );
        }
        let record = host.store().await.floor_record().map(str::to_owned);
        assert_eq!(
            new.floor(record.as_deref()),
            Some(attune_wasm::secrets::crypto::Generation::Bound),
            "rotate wrote an authentic floor"
        );
        let got = host.get(Target::P2, ACTION, &["token", "api_key"]);
        assert_eq!(
            value(&got, "api_key").as_deref(),
            Ok("pack-api-key-value-4444")
        );

        // A downgrade: an unbound ciphertext under the current key (from an old backup, or made
        // by an older host) put back into the row. Detected, never delivered.
        host.put_raw(
            pack(),
            "api_key",
            true,
            Some(new.key_hash()),
            &new.encrypt_seed(&SecretString::from("attacker-chosen-5555")),
        )
        .await;
        let got = host.get(Target::P2, ACTION, &["api_key", "token"]);
        assert_eq!(value(&got, "api_key"), Err("Unavailable".into()), "{got}");
        assert_eq!(
            value(&got, "token").as_deref(),
            Ok("system-token-value-3333")
        );
        assert_withheld(
            &host,
            "mypack.api_key",
            "older ciphertext",
            "attacker-chosen",
        );
        let out = host.exec(
            &["secret", "get", "api_key", "--pack", "mypack", "--reveal"],
            None,
        );
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("older ciphertext"),
            "{}",
            text(&out.stderr)
        );
        assert!(!text(&out.stdout).contains("attacker-chosen"));
        // Rotating again does not launder the downgraded row into a bound one.
        let out = rotate(&host, KEY);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("mypack.api_key"),
            "{}",
            text(&out.stderr)
        );
        host.drop_schema().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn import_into_a_floored_store_binds_unbound_rows_or_refuses() {
    for host in Host::all_backends() {
        host.set("first", "first-value-6666", &[]);
        let out = rotate(&host, OTHER_KEY);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let host = Host {
            key: Some(OTHER_KEY.to_owned()),
            ..host
        };
        let k = key(OTHER_KEY);
        let row = |name: &str, stored: &str, hash: &str| {
            serde_json::json!({
                "ref": format!("mypack.{name}"), "owner_type": "pack", "owner": "mypack",
                "owner_pack_ref": "mypack", "name": name, "encrypted": true,
                "encryption_key_hash": hash, "value": stored,
            })
            .to_string()
        };
        // An Attune (seed-format) row under the configured key: upgraded on import.
        let seed = k.encrypt_seed(&SecretString::from("imported-value-7777"));
        let out = host.exec(
            &["secret", "import", "-"],
            Some(row("imported", &seed, k.key_hash()).as_bytes()),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(stored(&host, &pack(), "imported").await.starts_with("v2:"));
        let got = host.get(Target::P2, ACTION, &["imported"]);
        assert_eq!(
            value(&got, "imported").as_deref(),
            Ok("imported-value-7777")
        );
        // A row under another key cannot be upgraded: the import is refused, nothing written.
        let foreign = key(KEY);
        let lines = [
            row(
                "fine",
                &k.encrypt_seed(&SecretString::from("fine-8888")),
                k.key_hash(),
            ),
            row(
                "foreign",
                &foreign.encrypt_seed(&SecretString::from("foreign-9999")),
                foreign.key_hash(),
            ),
        ]
        .join("\n");
        let out = host.exec(&["secret", "import", "-"], Some(lines.as_bytes()));
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("line 2 (ref mypack.foreign)"), "{err}");
        assert!(err.contains("nothing written"), "{err}");
        let listed = host.store().await.list(None).await.unwrap();
        assert!(
            listed.iter().all(|r| r.name().as_str() != "fine"),
            "nothing written"
        );
        host.drop_schema().await;
    }
}
