//! Findings of the adversarial review of issue 10, each a test: filesystems mounted inside a
//! mounted directory, a secret cut at the end of a stream, credentials where a URL's host
//! should be, system rows that name an owner, a damaged ciphertext floor.

use std::path::Path;
use std::process::Command;

use crate::support::{probe, text, Host, Target};

const ACTION: &str = "mypack.deploy";

/// Unmounts its path when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `mount ARGS... TARGET`, or `None` when this machine does not let the test mount (not root,
/// no mount(8)): the test then says it skipped.
fn mount(args: &[&str], target: &Path) -> Option<Mounted> {
    let ok = Command::new("mount")
        .args(args)
        .arg(target)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mounted(target.to_path_buf()))
}

#[test]
fn a_filesystem_mounted_inside_a_mounted_directory_is_checked_too() {
    let host = Host::new();
    host.set("api_key", "sk-live-0123456789abcdef", &[]);
    let root = tempfile::tempdir().unwrap();
    // A build root with its own procfs, and the data directory bound in below it.
    let proc_dir = root.path().join("chroot/proc");
    let var = root.path().join("chroot2/var/attune");
    std::fs::create_dir_all(&proc_dir).unwrap();
    std::fs::create_dir_all(&var).unwrap();
    let Some(_proc) = mount(&["-t", "proc", "proc"], &proc_dir) else {
        eprintln!("skipped: this test needs to mount (run as root)");
        return;
    };
    let data = host.dir.path().to_str().unwrap().to_owned();
    let Some(_bind) = mount(&["--bind", &data], &var) else {
        eprintln!("skipped: this test needs to mount (run as root)");
        return;
    };
    let p2 = probe(Target::P2);
    for (dir, want) in [
        (root.path().join("chroot"), "the system directory"),
        (proc_dir.clone(), "the system directory"),
        (root.path().join("chroot2"), "the data directory"),
        (var.clone(), "the data directory"),
    ] {
        let spec = format!("{}::/c", dir.display());
        let out = host.run(&p2, ACTION, &["--dir-ro", &spec], &["env"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{}: {err}", dir.display());
        assert!(
            err.contains("refusing to mount") && err.contains(want),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "the guest ran");
    }
}

#[test]
fn a_secret_cut_at_the_end_of_a_stream_is_not_shown_in_part() {
    let host = Host::new();
    host.set("api_key", "sk-live-SECRETVALUE-0123", &[]);
    // `show` prints `raw:`, `b64:` lines, then the value in two flushed halves: a cap that
    // lets only the first half through must not show it.
    let p2 = probe(Target::P2);
    // Every cap that cuts the output somewhere in the first 120 bytes (the review's was 84,
    // inside the `split:` line).
    for cap in (40..120).step_by(4) {
        let cap = cap.to_string();
        let out = host.run_redacted(&p2, ACTION, &["--max-output", &cap], &["show", "api_key"]);
        let stdout = text(&out.stdout);
        assert!(!stdout.contains("sk-live-S"), "cap {cap}: {stdout}");
        assert!(!stdout.contains("SECRET"), "cap {cap}: {stdout}");
    }
}

#[test]
fn credentials_where_the_host_should_be_are_never_shown() {
    let p2 = probe(Target::P2);
    for url in [
        "postgres://attune:Sup3rS3cret.db.internal:5432/attune",
        "postgres://u:Sup3rS3cret%40host/db",
        "postgres://u:Sup3rS3cret/127.0.0.1:5999/test",
    ] {
        let host = Host {
            settings: vec![("ATTUNE__DATABASE__URL".into(), url.into())],
            ..Host::new()
        };
        let mut cmd = host.cmd();
        cmd.env("RUST_LOG", "debug").args([
            "run",
            p2.to_str().unwrap(),
            "--action",
            ACTION,
            "--",
            "exit",
            "0",
        ]);
        let out = cmd.output().unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains("Sup3rS3cret"), "{url}: {all}");
    }
}

#[test]
fn an_imported_system_row_that_names_an_owner_is_refused() {
    let host = Host::new();
    let row = r#"{"ref":"mypack.dbpass","owner_type":"system","owner":"mypack","owner_pack_ref":"mypack","name":"dbpass","encrypted":false,"value":"mypack-only-db-password"}"#;
    let out = host.exec(&["secret", "import", "-"], Some(row.as_bytes()));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("line 1 (ref mypack.dbpass)") && err.contains("names an owner"),
        "{err}"
    );
    assert!(!err.contains("mypack-only-db-password"));
    let env = host.env(Target::P1, "otherpack.anything");
    assert!(!env.contains_key("SECRET_DBPASS"), "{env:?}");
}

/// Attune's trigger sets `owner = 'system'` on every system row: such a row names no other
/// owner and imports as a system secret (found by the newcomer review: `secret import` of a
/// real export refused every system row).
#[test]
fn an_attune_system_row_whose_owner_is_system_imports() {
    let host = Host::new();
    let row = r#"{"ref":"system.api_key","owner_type":"system","owner":"system","owner_pack_ref":null,"owner_action_ref":null,"name":"api_key","encrypted":false,"value":"system-wide-api-key-0123"}"#;
    let out = host.exec(&["secret", "import", "-"], Some(row.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env = host.env(Target::P1, "otherpack.anything");
    assert_eq!(
        env.get("SECRET_API_KEY").and_then(|v| v.as_str()),
        Some("system-wide-api-key-0123"),
        "{env:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_ciphertext_floor_is_a_warning_and_fails_strict_mode() {
    let host = Host::new();
    host.set("api_key", "sk-live-0123456789abcdef", &[]);
    let out = crate::bound::rotate(&host, crate::support::OTHER_KEY);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let host = Host {
        key: Some(crate::support::OTHER_KEY.to_owned()),
        ..host
    };
    let db = host.db_path();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE store_meta SET value = 'garbage' WHERE name = 'ciphertext_floor'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let p2 = probe(Target::P2);
    let out = host.run(&p2, ACTION, &[], &["exit", "0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("floor record is not authentic"),
        "{}",
        text(&out.stderr)
    );
    let out = host.run(&p2, ACTION, &["--strict-secrets"], &["exit", "0"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("floor record is not authentic"));
}
