//! Rows of `bad-inputs.md` (N7–N10) and their kinds: bad names, bad values, bad stored rows.
//! (N1–N6, N11, N13 are in `resolution`, N14 in `sandbox`; N12, output redaction, is not built
//! yet.)

use attune_wasm::secrets::names::{Owner, PackRef};

use crate::support::{assert_no_panic, probe, text, value, Host, Target, OTHER_KEY};

const ACTION: &str = "mypack.deploy";

#[test]
fn n7_bad_names_are_refused_on_write_with_the_rule_and_nothing_is_stored() {
    let host = Host::new();
    let long = "n".repeat(200);
    for bad in [
        "token=x",
        "with space",
        "pässwörd",
        "_underscore-first",
        "a.b",
        "",
        long.as_str(),
    ] {
        let out = host.exec(&["secret", "set", bad, "value-x"], None);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert_no_panic(&out);
        let err = text(&out.stderr);
        assert!(err.contains("[A-Za-z0-9][A-Za-z0-9_-]*"), "{bad:?}: {err}");
        assert!(!err.contains("value-x"));
    }
    // A NUL byte cannot travel in argv; the name rule refuses it in the library.
    assert!(attune_wasm::secrets::names::SecretName::new("nul\0byte").is_err());
    assert!(!host.db_path().exists(), "nothing was stored");
    for bad_owner in [["--pack", "my pack"], ["--action", "nodot"]] {
        let out = host.exec(
            &["secret", "set", "ok", "v", bad_owner[0], bad_owner[1]],
            None,
        );
        assert_eq!(out.status.code(), Some(1));
    }
}

#[test]
fn n8_nul_bytes_invalid_utf8_and_oversized_values_are_refused() {
    let host = Host::new();
    for (input, why) in [
        (&b"before\0after"[..], "NUL"),
        (&b"\xff\xfe not utf-8"[..], "UTF-8"),
        (&vec![b'x'; 64 * 1024 + 1][..], "longer than 65536"),
    ] {
        let out = host.exec(&["secret", "set", "k", "-"], Some(input));
        assert_eq!(out.status.code(), Some(1), "{why}");
        let err = text(&out.stderr);
        assert!(err.contains(why) && err.contains("secret k"), "{err}");
        assert!(!err.contains("before") && !err.contains("xxxxxxxx"));
    }
    assert!(!host.db_path().exists(), "nothing was stored");
    // Exactly 64 KiB is accepted.
    let out = host.exec(&["secret", "set", "k", "-"], Some(&vec![b'y'; 64 * 1024]));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn n9_malformed_ciphertexts_are_typed_errors_and_do_not_block_other_secrets() {
    let host = Host::new();
    host.set("good", "good-value", &["--pack", "mypack"]);
    let twelve_and_five = "AAAAAAAAAAAAAAAA:AAAAAAA=";
    let bad = [
        ("bad1", "AAAA:AAAA"),
        ("bad2", twelve_and_five),
        ("bad3", ""),
        ("bad4", ":"),
        ("bad5", "a:b:c"),
    ];
    for (name, stored) in bad {
        host.put_raw(
            Owner::Pack(PackRef::new("mypack").unwrap()),
            name,
            true,
            None,
            stored,
        )
        .await;
    }
    let names: Vec<&str> = std::iter::once("good")
        .chain(bad.iter().map(|(n, _)| *n))
        .collect();
    let mut args = vec!["get"];
    args.extend(&names);
    let out = host.run(&probe(Target::P2), ACTION, &[], &args);
    assert_no_panic(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value(&report, "good").as_deref(), Ok("good-value"));
    let err = text(&out.stderr);
    for (name, _) in bad {
        assert_eq!(value(&report, name), Err("Unavailable".into()), "{name}");
        assert!(
            err.contains(&format!("mypack.{name}")),
            "warning names {name}: {err}"
        );
    }
    assert!(err.contains("invalid ciphertext format"));
    let env = host.env(Target::P1, ACTION);
    assert_eq!(env["SECRET_GOOD"], "good-value");
    assert!(
        !env.contains_key("SECRET_BAD5"),
        "a bad row is never passed on as if plaintext"
    );

    // Strict mode fails before the guest starts, naming the secret.
    let out = host.run(
        &probe(Target::P2),
        ACTION,
        &["--strict-secrets"],
        &["get", "good"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("mypack.bad"),
        "{}",
        text(&out.stderr)
    );

    // secret get --reveal gives the typed error too.
    let out = host.exec(
        &["secret", "get", "bad5", "--pack", "mypack", "--reveal"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_no_panic(&out);
    assert!(
        text(&out.stderr).contains("mypack.bad5: invalid ciphertext format"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn n10_rows_under_another_key_give_a_key_hash_error_naming_both_hashes() {
    let writer = Host {
        key: Some(OTHER_KEY.into()),
        ..Host::new()
    };
    writer.set("foreign", "foreign-plaintext", &["--pack", "mypack"]);
    writer.set("own", "plain-ok", &["--pack", "mypack", "--plain"]);
    let writer_hash = text(&writer.exec(&["key", "hash"], None).stdout)
        .trim()
        .to_owned();
    // Same data directory, the test key.
    let reader = Host {
        key: Some(crate::support::KEY.into()),
        dir: writer.dir,
        settings: Vec::new(),
    };
    let reader_hash = text(&reader.exec(&["key", "hash"], None).stdout)
        .trim()
        .to_owned();
    assert_ne!(writer_hash, reader_hash);

    let out = reader.run(&probe(Target::P2), ACTION, &[], &["get", "foreign", "own"]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value(&report, "foreign"), Err("Unavailable".into()));
    assert_eq!(value(&report, "own").as_deref(), Ok("plain-ok"));
    let err = text(&out.stderr);
    assert!(
        err.contains("mypack.foreign") && err.contains("key hash mismatch"),
        "{err}"
    );
    assert!(
        err.contains(&writer_hash) && err.contains(&reader_hash),
        "{err}"
    );
    assert!(!err.contains("foreign-plaintext"));

    let env = reader.env(Target::P1, ACTION);
    assert!(
        !env.contains_key("SECRET_FOREIGN"),
        "ciphertext is never delivered as plaintext"
    );

    let out = reader.exec(
        &["secret", "get", "foreign", "--pack", "mypack", "--reveal"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("mypack.foreign") && err.contains(&writer_hash) && err.contains(&reader_hash),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_utf8_plaintext_and_tampering_are_reported_per_secret() {
    // Case `invalid-utf8-plaintext` of the vectors, stored as a row.
    let host = Host {
        key: Some("vector-password-2291d8cdc310411e7ec27378".into()),
        ..Host::new()
    };
    host.put_raw(
        Owner::System,
        "binary",
        true,
        None,
        "zVKooW0PvEwg9zbg:QGML+X1f+ASY9LynUeglwHMSWQ==",
    )
    .await;
    host.put_raw(
        Owner::System,
        "tampered",
        true,
        None,
        "RaW2S3SzUn95HQZP:hnjZZ/o+LnEPpD8BESW+JIZNvFs8sDKKc13VSBEjPwQ=",
    )
    .await;
    host.put_raw(
        Owner::System,
        "fine",
        true,
        None,
        "bfMOe95dkY0z8IFp:3ZXVQIiWwiZH4vE0PFqxb6r6t1XuGW5v/qtJ8/Wl73zr",
    )
    .await;
    let out = host.run(
        &probe(Target::P2),
        ACTION,
        &[],
        &["get", "binary", "tampered", "fine"],
    );
    assert_no_panic(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value(&report, "binary"), Err("Unavailable".into()));
    assert_eq!(value(&report, "tampered"), Err("Unavailable".into()));
    assert_eq!(value(&report, "fine").as_deref(), Ok("with:colon:inside"));
    let err = text(&out.stderr);
    assert!(
        err.contains("binary") && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert!(
        err.contains("tampered") && err.contains("decryption failed"),
        "{err}"
    );
}

#[test]
fn encrypted_rows_without_a_configured_key_are_unavailable_with_a_hint() {
    let writer = Host::new();
    writer.set("enc", "needs-a-key", &[]);
    let reader = Host {
        key: None,
        dir: writer.dir,
        settings: Vec::new(),
    };
    let out = reader.run(&probe(Target::P2), ACTION, &[], &["get", "enc"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value(&report, "enc"), Err("Unavailable".into()));
    assert!(text(&out.stderr).contains("no encryption key is configured"));
}

/// N32: a guest that exits with a status WASI does not allow, one that fills its resource
/// table, and one that passes a 200 MiB name: one line each saying what the guest did and the
/// limit it hit (exit 134), never the heading of wasmtime's multi-line trace.
#[test]
fn n32_guest_failures_are_one_useful_line_each() {
    let host = Host::new();
    host.set("api_key", "n32-value-0f9e", &["--pack", "mypack"]);
    let mounted = tempfile::tempdir().unwrap();
    std::fs::write(mounted.path().join("f"), "x").unwrap();
    let mount = format!("{}::/d", mounted.path().display());
    let cases: [(Target, Vec<&str>, &[&str], &str); 4] = [
        (
            Target::P1,
            vec![],
            &["exit", "300"],
            "error: guest exited with status 300, outside the range 0-125 that WASI allows",
        ),
        (
            Target::P1,
            vec!["--dir", &mount],
            &["handles", "/d/f"],
            "error: guest exceeded the limit of 10000 open handles (files, directories, streams, pollables)",
        ),
        (
            Target::P2,
            vec!["--dir", &mount],
            &["handles", "/d/f"],
            "error: guest exceeded the limit of 10000 open handles (files, directories, streams, pollables)",
        ),
        (
            Target::P2,
            vec!["--max-memory", "1GiB"],
            &["bigname", "200"],
            "error: guest trapped: too much data is being copied between the host and the guest: \
             fuel allocated for hostcalls has been exhausted",
        ),
    ];
    for (target, extra, args, line) in cases {
        let out = host.run_redacted(&probe(target), ACTION, &extra, args);
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(134), "{target:?} {args:?}");
        let err = text(&out.stderr);
        assert_eq!(
            err.trim_end(),
            line,
            "{target:?} {args:?}: one line, exactly"
        );
        assert!(!err.contains("backtrace"), "{err}");
    }
}
