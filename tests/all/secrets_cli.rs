//! `attune-wasm secret …` and `key hash` through the real binary.

use crate::support::{text, Host, KEY};

#[test]
fn set_get_list_delete_round_trip() {
    let host = Host::new();
    host.set("api_key", "sys-value-123", &[]);
    host.set("api_key", "pack-value-456", &["--pack", "mypack"]);
    let out = host.exec(
        &["secret", "set", "db-password", "--action", "mypack.deploy"],
        Some(b"from-stdin\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("mypack.deploy.db-password"));

    // --reveal prints exactly the value (one trailing newline of stdin removed).
    let out = host.exec(
        &[
            "secret",
            "get",
            "db-password",
            "--action",
            "mypack.deploy",
            "--reveal",
        ],
        None,
    );
    assert_eq!(text(&out.stdout), "from-stdin");
    let out = host.exec(
        &["secret", "get", "api_key", "--pack", "mypack", "--reveal"],
        None,
    );
    assert_eq!(text(&out.stdout), "pack-value-456");

    // Metadata only without --reveal; list never prints values.
    let out = host.exec(&["secret", "get", "api_key", "--pack", "mypack"], None);
    let meta = text(&out.stdout);
    assert!(
        meta.contains("mypack.api_key") && meta.contains("SECRET_API_KEY"),
        "{meta}"
    );
    assert!(meta.contains("encrypted: true"));
    assert!(!meta.contains("pack-value-456"));
    let out = host.exec(&["secret", "list"], None);
    let list = text(&out.stdout);
    assert_eq!(list.lines().count(), 4, "{list}");
    for v in ["sys-value-123", "pack-value-456", "from-stdin"] {
        assert!(!list.contains(v), "list leaked a value: {list}");
    }
    let out = host.exec(&["secret", "list", "--pack", "mypack"], None);
    assert_eq!(text(&out.stdout).lines().count(), 2);

    // Overwrite reports an update and keeps one row.
    let out = host.exec(&["secret", "set", "api_key", "sys-value-789"], None);
    assert!(text(&out.stdout).starts_with("updated"));
    let out = host.exec(&["secret", "get", "api_key", "--reveal"], None);
    assert_eq!(text(&out.stdout), "sys-value-789");

    let out = host.exec(&["secret", "delete", "api_key", "--pack", "mypack"], None);
    assert!(out.status.success());
    let out = host.exec(&["secret", "get", "api_key", "--pack", "mypack"], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not found"));
    let out = host.exec(&["secret", "delete", "api_key", "--pack", "mypack"], None);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn encrypted_set_needs_a_key_and_plain_does_not() {
    let host = Host::without_key();
    let out = host.exec(&["secret", "set", "k", "value-1"], None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("ATTUNE__SECURITY__ENCRYPTION_KEY"), "{err}");
    assert!(!err.contains("value-1"));
    assert!(!host.db_path().exists(), "nothing is stored");

    host.set("k", "plain-value", &["--plain"]);
    let out = host.exec(&["secret", "get", "k", "--reveal"], None);
    assert_eq!(text(&out.stdout), "plain-value");
    let out = host.exec(&["secret", "get", "k"], None);
    assert!(text(&out.stdout).contains("encrypted: false"));
}

#[test]
fn short_keys_are_refused() {
    let host = Host {
        key: Some("too-short".into()),
        ..Host::new()
    };
    let out = host.exec(&["secret", "set", "k", "v"], None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("too short") && err.contains("32"), "{err}");
    assert!(
        !err.contains("too-short"),
        "the key itself is never printed: {err}"
    );
    let out = host.exec(&["key", "hash"], None);
    assert!(!out.status.success());
}

#[test]
fn key_hash_is_sha256_of_the_derived_key() {
    use sha2::{Digest, Sha256};
    let host = Host::new();
    let out = host.exec(&["key", "hash"], None);
    let expected = hex::encode(Sha256::digest(Sha256::digest(KEY.as_bytes())));
    assert_eq!(text(&out.stdout).trim(), expected);
}

#[test]
fn config_file_and_env_overrides() {
    let host = Host::without_key();
    let dir = host.dir.path();
    let config = dir.join("attune.yaml");
    let from_file = dir.join("file-db.sqlite");
    std::fs::write(
        &config,
        format!(
            "database:\n  url: sqlite://{}\nsecurity:\n  encryption_key: \"{KEY}\"\n",
            from_file.display()
        ),
    )
    .unwrap();
    let mut c = host.cmd();
    c.args([
        "--config",
        config.to_str().unwrap(),
        "secret",
        "set",
        "k",
        "in-file-db",
    ]);
    let out = crate::support::run_cmd(&mut c, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(from_file.exists(), "database.url from the file is used");

    // ATTUNE__DATABASE__URL overrides the file.
    let from_env = dir.join("env-db.sqlite");
    let mut c = host.cmd();
    c.env(
        "ATTUNE__DATABASE__URL",
        format!("sqlite://{}", from_env.display()),
    )
    .args([
        "--config",
        config.to_str().unwrap(),
        "secret",
        "set",
        "k",
        "in-env-db",
    ]);
    let out = crate::support::run_cmd(&mut c, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(from_env.exists());

    // ATTUNE__SECURITY__ENCRYPTION_KEY overrides the file's key: the stored row no longer
    // decrypts, and the error says why.
    let mut c = host.cmd();
    c.env(
        "ATTUNE__SECURITY__ENCRYPTION_KEY",
        crate::support::OTHER_KEY,
    )
    .args([
        "--config",
        config.to_str().unwrap(),
        "secret",
        "get",
        "k",
        "--reveal",
    ]);
    let out = crate::support::run_cmd(&mut c, None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("key hash mismatch"),
        "{}",
        text(&out.stderr)
    );

    let mut c = host.cmd();
    c.args(["--config", "/nonexistent/attune.yaml", "secret", "list"]);
    let out = crate::support::run_cmd(&mut c, None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("configuration"));
}

#[test]
fn database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let host = Host::new();
    host.set("k", "v", &[]);
    let mode = std::fs::metadata(host.db_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "secrets.db must not be readable by others: {mode:o}"
    );
}
