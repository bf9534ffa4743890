//! The store's files and states (bad-inputs N15, N23, N27, N28, N29, N30): a write never
//! replaces a row under another key unasked, import refuses unknown owner types, hosts
//! started at once share a fresh store, rotation leaves no old ciphertext on disk, unsafe
//! files are refused, and a corrupt row is never skipped in favour of a less specific one.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Output;

use attune_wasm::secrets::names::{Owner, PackRef, SecretName};
use attune_wasm::store::{Error, KeyHash, NewSecret, Replace, StoredValue};
use secrecy::{ExposeSecret, SecretString};

use crate::support::{
    self, assert_no_panic, probe, run_cmd, text, value, Host, Target, KEY, OTHER_KEY,
};

const ACTION: &str = "mypack.deploy";

/// `attune-wasm ARGS` on `host`'s store, under `password` (another host on the same store).
fn exec_as(host: &Host, password: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = host.cmd();
    c.env("ATTUNE__SECURITY__ENCRYPTION_KEY", password)
        .args(args);
    run_cmd(&mut c, stdin)
}

fn reveal_as(host: &Host, password: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["secret", "get"];
    all.extend_from_slice(args);
    all.push("--reveal");
    let out = exec_as(host, password, &all, None);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

// ----- N15 -----------------------------------------------------------------------------------

fn foreign_key_write_is_refused(host: &Host) {
    let hash_a = support::key(KEY).key_hash().to_owned();
    let hash_b = support::key(OTHER_KEY).key_hash().to_owned();
    host.set("api_key", "value-of-host-a", &["--pack", "mypack"]);

    // Host B, another password: encrypted, plain and imported writes are all refused.
    let set = exec_as(
        host,
        OTHER_KEY,
        &[
            "secret",
            "set",
            "api_key",
            "value-of-host-b",
            "--pack",
            "mypack",
        ],
        None,
    );
    assert_no_panic(&set);
    assert!(!set.status.success(), "B replaced A's row silently");
    let err = text(&set.stderr);
    assert!(
        err.contains("secret mypack.api_key is stored encrypted under another key")
            && err.contains(&hash_a)
            && err.contains(&hash_b)
            && err.contains("--replace-foreign-key"),
        "{err}"
    );
    assert!(!err.contains("value-of-host"), "{err}");
    let plain = exec_as(
        host,
        OTHER_KEY,
        &[
            "secret",
            "set",
            "api_key",
            "plain-of-b",
            "--pack",
            "mypack",
            "--plain",
        ],
        None,
    );
    assert!(!plain.status.success(), "{}", text(&plain.stdout));
    let row = format!(
        r#"{{"ref":"mypack.api_key","owner_type":"pack","owner":"mypack","name":"api_key","encrypted":true,"encryption_key_hash":"{hash_b}","value":"{}"}}"#,
        support::key(OTHER_KEY).encrypt(&SecretString::from("imported-by-b"), &MYPACK_API_KEY)
    );
    let import = exec_as(
        host,
        OTHER_KEY,
        &["secret", "import", "-"],
        Some(row.as_bytes()),
    );
    assert!(!import.status.success(), "{}", text(&import.stdout));
    assert!(
        text(&import.stderr).contains("import failed, nothing written")
            && text(&import.stderr).contains(&hash_a),
        "{}",
        text(&import.stderr)
    );
    assert_eq!(
        reveal_as(host, KEY, &["api_key", "--pack", "mypack"]).as_deref(),
        Ok("value-of-host-a"),
        "A's row is intact"
    );

    // The same key (or a plain row) may be replaced as before.
    host.set("api_key", "value-of-host-a-2", &["--pack", "mypack"]);
    assert_eq!(
        reveal_as(host, KEY, &["api_key", "--pack", "mypack"]).as_deref(),
        Ok("value-of-host-a-2")
    );

    // With the flag, B overwrites (set and import).
    let forced = exec_as(
        host,
        OTHER_KEY,
        &[
            "secret",
            "set",
            "api_key",
            "value-of-host-b",
            "--pack",
            "mypack",
            "--replace-foreign-key",
        ],
        None,
    );
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_eq!(
        reveal_as(host, OTHER_KEY, &["api_key", "--pack", "mypack"]).as_deref(),
        Ok("value-of-host-b")
    );
    let back = format!(
        r#"{{"ref":"mypack.api_key","owner_type":"pack","owner":"mypack","name":"api_key","encrypted":true,"encryption_key_hash":"{hash_a}","value":"{}"}}"#,
        support::key(KEY).encrypt(&SecretString::from("imported-by-a"), &MYPACK_API_KEY)
    );
    let import = exec_as(
        host,
        KEY,
        &["secret", "import", "-", "--replace-foreign-key"],
        Some(back.as_bytes()),
    );
    assert!(import.status.success(), "{}", text(&import.stderr));
    assert_eq!(
        reveal_as(host, KEY, &["api_key", "--pack", "mypack"]).as_deref(),
        Ok("imported-by-a")
    );
}

#[test]
fn n15_a_row_under_another_key_is_not_replaced_unasked() {
    for host in Host::all_backends() {
        foreign_key_write_is_refused(&host);
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(host.drop_schema());
    }
}

/// The check is part of the write: many writers under two keys racing on one fresh name
/// leave exactly the first key's row, every other-key write refused (library, both backends).
#[tokio::test]
async fn n15_the_key_check_is_atomic_with_the_write() {
    for host in Host::all_backends() {
        let store = host.store().await;
        let owner = Owner::Pack(PackRef::new("mypack").unwrap());
        let name = SecretName::new("race").unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (store, owner, name) = (store.clone(), owner.clone(), name.clone());
                tokio::spawn(async move {
                    let password = if i % 2 == 0 { KEY } else { OTHER_KEY };
                    let key = support::key(password);
                    let value = key.encrypt(
                        &SecretString::from("v"),
                        &attune_wasm::store::binding(&owner, &name),
                    );
                    let hash = KeyHash::of(&key);
                    let secret = NewSecret {
                        owner,
                        name,
                        value: StoredValue::encrypted(value, Some(hash.clone())),
                    };
                    store
                        .put_with(&secret, Replace::Readable(Some(&hash)))
                        .await
                        .map(|_| key.key_hash().to_owned())
                })
            })
            .collect();
        let mut won = Vec::new();
        let mut refused = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(hash) => won.push(hash),
                Err(Error::ForeignKey { .. }) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        let stored = store.get(&owner, &name).await.unwrap().unwrap();
        let winner = stored.value.key_hash().unwrap().as_str().to_owned();
        assert!(
            won.iter().all(|h| *h == winner),
            "a write replaced a row under another key"
        );
        assert_eq!(won.len() + refused, 16);
        assert_eq!(refused, 8, "every write under the other key is refused");
        host.drop_schema().await;
    }
}

// ----- N23 -----------------------------------------------------------------------------------

#[test]
fn n23_import_aborts_on_an_unknown_owner_type() {
    let good = r#"{"ref":"core.token","owner_type":"system","owner":null,"name":"token","encrypted":false,"value":"abc"}"#;
    for owner_type in ["Pack", "", "team", "SYSTEM", "sensors"] {
        let host = Host::new();
        let bad = format!(
            r#"{{"ref":"mypack.x","owner_type":"{owner_type}","owner":"mypack","owner_pack_ref":"mypack","name":"x","encrypted":false,"value":"sekrit-x"}}"#
        );
        let input = format!("{good}\n{bad}\n");
        let out = host.exec(&["secret", "import", "-"], Some(input.as_bytes()));
        assert_no_panic(&out);
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{owner_type:?}: {}",
            text(&out.stdout)
        );
        assert!(
            err.contains(
                "import refused, nothing written: line 2 (ref mypack.x): unknown owner type"
            ),
            "{err}"
        );
        assert!(!err.contains("sekrit"), "{err}");
        // Nothing written: not even the good first line.
        let list = host.exec(&["secret", "list"], None);
        assert!(
            !text(&list.stdout).contains("token"),
            "{}",
            text(&list.stdout)
        );
    }
    // Attune's owner types that this host does not run are reported and skipped.
    let host = Host::new();
    let skipped = r#"{"ref":"u.x","owner_type":"identity","owner":"u","name":"x","encrypted":false,"value":"v"}
{"ref":"s.y","owner_type":"sensor","owner":"core.timer","name":"y","encrypted":false,"value":"v"}"#;
    let input = format!("{good}\n{skipped}\n");
    let out = host.exec(&["secret", "import", "-"], Some(input.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("imported 1 secret (1 created, 0 updated), skipped 2"),
        "{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("owner type identity is not run by this host")
            && err.contains("owner type sensor is not run by this host"),
        "{err}"
    );
}

// ----- N27 -----------------------------------------------------------------------------------

/// `n` `secret set` processes started at once on `host` (a fresh store); all must succeed.
fn concurrent_sets(host: &Host, n: usize) {
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut c = host.cmd();
            c.args(["secret", "set", &format!("s{i}"), &format!("value-{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().expect("spawn attune-wasm")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_no_panic(&out);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let list = text(&host.exec(&["secret", "list"], None).stdout);
    for i in 0..n {
        assert!(list.contains(&format!(" s{i} ")), "{list}");
    }
}

#[test]
fn n27_sets_at_once_on_a_fresh_store_all_succeed() {
    // A race is not certain to show in one round: several fresh stores each.
    for _ in 0..6 {
        let host = Host::new();
        concurrent_sets(&host, 3);
    }
    for _ in 0..4 {
        let Some(host) = Host::postgres() else {
            break;
        };
        concurrent_sets(&host, 4);
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(host.drop_schema());
    }
}

// ----- N28 -----------------------------------------------------------------------------------

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn n28_no_old_ciphertext_survives_a_rotation_on_disk() {
    let host = Host::new();
    for i in 0..5 {
        host.set(
            &format!("k{i}"),
            &format!("rotated-value-{i}"),
            &["--pack", "mypack"],
        );
    }
    // The store stays open (as in a worker) while rotating and while the files are read.
    let store = host.store().await;
    let old: Vec<String> = store
        .list(None)
        .await
        .unwrap()
        .iter()
        .map(|r| r.row().unwrap().value.text().expose_secret().to_owned())
        .collect();
    assert_eq!(old.len(), 5);
    let summary = attune_wasm::store::rotate::rotate(
        &store,
        &support::key(KEY),
        &support::key(OTHER_KEY),
        false,
    )
    .await
    .unwrap();
    assert_eq!(summary.rotated.len(), 5);
    let db = host.db_path();
    let mut files = vec![db.clone()];
    for suffix in ["-wal", "-shm"] {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        files.push(name.into());
    }
    for file in files {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        for (i, ciphertext) in old.iter().enumerate() {
            // The ciphertext, and its second half alone (a page split could cut it).
            let tail = &ciphertext.as_bytes()[ciphertext.len() / 2..];
            assert!(
                !contains(&bytes, ciphertext.as_bytes()) && !contains(&bytes, tail),
                "the old ciphertext of k{i} is still in {}",
                file.display()
            );
        }
    }
    // Deleting and re-importing end the same way.
    assert!(store
        .delete(
            &Owner::Pack(PackRef::new("mypack").unwrap()),
            &SecretName::new("k0").unwrap()
        )
        .await
        .unwrap());
    let wal = std::fs::metadata(format!("{}-wal", db.display())).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL is truncated after a delete");
}

// ----- N29 -----------------------------------------------------------------------------------

fn refused(host: &Host, what: &str) -> String {
    let out = host.exec(&["secret", "set", "api_key", "sekrit-value"], None);
    assert_no_panic(&out);
    assert!(!out.status.success(), "{what}: the store was used");
    let err = text(&out.stderr);
    assert!(err.contains("refusing to use"), "{what}: {err}");
    if std::fs::symlink_metadata(host.db_path()).is_ok() {
        let run = host.run(&probe(Target::P2), ACTION, &["--strict-secrets"], &["env"]);
        assert!(!run.status.success(), "{what}: run used the store");
        assert!(text(&run.stderr).contains("refusing to use"), "{what}");
    }
    err
}

#[test]
fn n29_unsafe_data_dirs_and_files_are_refused() {
    let chown = |path: &std::path::Path| {
        std::os::unix::fs::chown(path, Some(65534), Some(65534))
            .expect("chown (tests run as root)");
    };
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };

    // A data directory made beforehand, writable by everyone.
    let host = Host::new();
    let data = host.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    mode(&data, 0o777);
    let err = refused(&host, "0777 data dir");
    assert!(
        err.contains("mode 0777") && err.contains("chmod 700"),
        "{err}"
    );
    assert!(!host.db_path().exists(), "nothing created in it");
    // A data directory owned by another user.
    mode(&data, 0o700);
    chown(&data);
    let err = refused(&host, "foreign data dir");
    assert!(err.contains("owned by uid 65534"), "{err}");

    // A database planted by someone else before the first write, mode 0666.
    let host = Host::new();
    let data = host.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    mode(&data, 0o700);
    let planted = host.db_path();
    std::fs::write(&planted, b"").unwrap();
    mode(&planted, 0o666);
    chown(&planted);
    let err = refused(&host, "foreign secrets.db");
    assert!(
        err.contains("secrets.db: the file is owned by uid 65534"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&planted).unwrap().len(),
        0,
        "not used as is"
    );

    // The database, its -wal or -shm, or its lock file owned by another user, mode 0666.
    for file in [
        "secrets.db",
        "secrets.db-wal",
        "secrets.db-shm",
        "secrets.db.lock",
    ] {
        let host = Host::new();
        host.set("token", "t", &[]);
        let path = host.dir.path().join("data").join(file);
        if !path.exists() {
            std::fs::write(&path, b"").unwrap();
        }
        mode(&path, 0o666);
        chown(&path);
        let err = refused(&host, file);
        assert!(
            err.contains(&format!("{file}: the file is owned by uid 65534")),
            "{file}: {err}"
        );
    }

    // A symbolic link in place of the database.
    let host = Host::new();
    host.set("token", "t", &[]);
    let elsewhere = host.dir.path().join("elsewhere.db");
    std::fs::rename(host.db_path(), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, host.db_path()).unwrap();
    let err = refused(&host, "symlink");
    assert!(err.contains("symbolic link"), "{err}");

    // Our own database, too open: narrowed to 0600, then used.
    let host = Host::new();
    host.set("token", "t", &[]);
    mode(&host.db_path(), 0o666);
    let out = host.exec(&["secret", "set", "other", "v"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("narrowed to 0600"),
        "{}",
        text(&out.stderr)
    );
    let meta = std::fs::metadata(host.db_path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), own_uid());
}

fn own_uid() -> u32 {
    // The tests' own files are created by this process: their owner is its effective uid.
    let probe = tempfile::tempfile().unwrap();
    probe.metadata().unwrap().uid()
}

// ----- N30 -----------------------------------------------------------------------------------

/// Makes the stored value of pack `api_key` unreadable (not UTF-8 text, or a BLOB).
async fn corrupt_pack_row(host: &Host, value_sql: &str) {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}", host.db_path().display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let done = sqlx::query(&format!(
        "UPDATE secrets SET value = {value_sql} WHERE owner_type = 'pack' AND name = 'api_key'"
    ))
    .execute(&mut c)
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
    c.close().await.unwrap();
}

#[tokio::test]
async fn n30_a_corrupt_row_shadows_the_system_value() {
    const S: &str = "system-value-S-must-not-show";
    for value_sql in ["CAST(X'C328FFFE' AS TEXT)", "X'00FF10'"] {
        let host = Host::new();
        host.set("api_key", S, &[]);
        host.set("api_key", "pack-value", &["--pack", "mypack"]);
        corrupt_pack_row(&host, value_sql).await;

        // Strict: the run fails before the guest, naming the pack row.
        let out = host.run(&probe(Target::P2), ACTION, &["--strict-secrets"], &["env"]);
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains("secret mypack.api_key cannot be delivered (strict mode)")
                && err.contains("the stored row is malformed"),
            "{err}"
        );
        assert!(!text(&out.stdout).contains(S));

        // Not strict: a warning, and `unavailable` through both doors, never S.
        for target in [Target::P2, Target::P1] {
            let out = host.run(&probe(target), ACTION, &[], &["get", "api_key"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            // wasip2 asks get-secret; wasip1 reads SECRET_API_KEY (absent: NotFound).
            let expected = match target {
                Target::P2 => "Unavailable",
                Target::P1 => "NotFound",
            };
            assert_eq!(
                value(&report, "api_key"),
                Err(expected.into()),
                "{value_sql}"
            );
            let err = text(&out.stderr);
            assert!(
                err.contains("mypack.api_key") && err.contains("not delivered"),
                "{err}"
            );
            let env = host.env(target, ACTION);
            assert!(!env.contains_key("SECRET_API_KEY"), "{env:?}");
            assert!(!serde_json::to_string(&env).unwrap().contains(S));
        }
        // Another action of another pack still sees S: only the pack's own name is shadowed.
        let report = host.get(Target::P2, "otherpack.deploy", &["api_key"]);
        assert_eq!(value(&report, "api_key").as_deref(), Ok(S));
    }
}

#[tokio::test]
async fn n30_a_corrupt_row_is_listed_and_stops_a_rotation_until_it_is_deleted() {
    let host = Host::new();
    host.set("api_key", "system-value-of-the-store", &[]);
    host.set("api_key", "pack-value-of-the-store", &["--pack", "mypack"]);
    corrupt_pack_row(&host, "X'00FF10'").await;

    // Listed, named, with its reason: it can be found (it was only a warning before).
    let out = host.exec(&["secret", "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with("pack") && l.contains("api_key"))
        .unwrap_or_else(|| panic!("the malformed row is listed: {listing}"));
    assert!(
        line.contains("mypack") && line.contains("malformed: "),
        "{line}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("system") && l.contains("api_key") && l.contains("true")),
        "{listing}"
    );

    // A rotation would leave it under a retired key: refused, named, nothing written.
    let rotate = |host: &Host| {
        let mut c = host.cmd();
        c.env("ATTUNE_NEW_ENCRYPTION_KEY", OTHER_KEY)
            .args(["key", "rotate"]);
        run_cmd(&mut c, None)
    };
    let out = rotate(&host);
    assert_no_panic(&out);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("secret mypack.api_key is malformed") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        reveal_as(&host, KEY, &["api_key"]).as_deref(),
        Ok("system-value-of-the-store"),
        "still under the old key"
    );

    let out = host.exec(&["secret", "delete", "api_key", "--pack", "mypack"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = rotate(&host);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        reveal_as(&host, OTHER_KEY, &["api_key"]).as_deref(),
        Ok("system-value-of-the-store")
    );
}

/// The row `mypack.api_key` as a bound ciphertext's associated data names it.
const MYPACK_API_KEY: attune_wasm::secrets::crypto::Binding<'static> =
    attune_wasm::secrets::crypto::Binding {
        owner_type: "pack",
        owner: "mypack",
        name: "api_key",
    };
