//! N16, N18, N25: no secret in any log line, error or output, whatever the configuration's
//! shape or `RUST_LOG`; N19, N20, N21: output masking that matches CI runners' (the encodings
//! they cover; lines of a secret that are not secret on their own; short plain values).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::process::Output;

use base64::Engine as _;

use crate::support::{probe, run_cmd, text, Host, Target};

const ACTION: &str = "mypack.deploy";

/// Asserts that `secret` appears nowhere in `out` (stdout and stderr).
fn assert_absent(out: &Output, secret: &str, what: &str) {
    for (name, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !text(stream).contains(secret),
            "{what}: {secret:?} in {name}:\n{}",
            text(stream)
        );
    }
}

#[test]
fn n16_a_non_utf8_key_in_the_environment_is_refused_without_its_bytes() {
    let host = Host::without_key();
    let mut key = b"n16-first-part-of-the-key-".to_vec();
    key.extend_from_slice(&[0xff, 0xfe]);
    key.extend_from_slice(b"-second-part-of-the-key");
    for args in [
        &["key", "hash"][..],
        &["secret", "list"],
        &["db", "migrate"],
    ] {
        let out = run_cmd(
            host.cmd()
                .env("RUST_LOG", "trace")
                .env("ATTUNE__SECURITY__ENCRYPTION_KEY", OsStr::from_bytes(&key))
                .args(args),
            None,
        );
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("ATTUNE__SECURITY__ENCRYPTION_KEY") && stderr.contains("UTF-8"),
            "{args:?}: a clear error naming the variable: {stderr}"
        );
        for part in ["n16-first", "second-part", "xff", "xFF", "\u{fffd}"] {
            assert_absent(&out, part, "non-UTF-8 key");
        }
    }
}

#[test]
fn n16_a_yaml_number_key_is_refused_without_any_rendering_of_it() {
    let host = Host::without_key();
    let digits = "918273645546372819918273645546372819";
    let config = host.dir.path().join("attune.yaml");
    // Unquoted 36-digit number; also as a misplaced value (a map expected) and in a list.
    for yaml in [
        format!("security:\n  encryption_key: {digits}\n"),
        format!("security: {digits}\n"),
        format!("security:\n  encryption_key: [{digits}]\n"),
        format!("security:\n  encryption_key: {digits}.5e3\n"),
    ] {
        std::fs::write(&config, &yaml).unwrap();
        let out = run_cmd(
            host.cmd()
                .env("RUST_LOG", "trace")
                .arg("--config")
                .arg(&config)
                .args(["key", "hash"]),
            None,
        );
        assert!(!out.status.success(), "{yaml}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("invalid configuration"), "{stderr}");
        // No 4 digits of it in a row, and no float rendering (9.18…e35).
        for window in digits.as_bytes().windows(4) {
            let window = std::str::from_utf8(window).unwrap();
            assert_absent(&out, window, &yaml);
        }
        for float in ["9.18", "e35", "e+35", "E35"] {
            assert_absent(&out, float, &yaml);
        }
    }
    std::fs::write(&config, format!("security:\n  encryption_key: {digits}\n")).unwrap();
    let out = run_cmd(
        host.cmd()
            .arg("--config")
            .arg(&config)
            .args(["key", "hash"]),
        None,
    );
    assert!(
        text(&out.stderr).contains("quote it"),
        "the error says how to fix it: {}",
        text(&out.stderr)
    );
}

/// Every command, with `RUST_LOG=debug` and `trace`.
fn every_command(host: &Host, check: impl Fn(&Output, &str)) {
    let commands: [&[&str]; 6] = [
        &[
            "secret",
            "set",
            "n18",
            "value-of-n18-0123",
            "--pack",
            "mypack",
        ],
        &["secret", "list"],
        &["key", "rotate", "--dry-run"],
        &["audit", "list"],
        &["db", "migrate"],
        &["run", "/nonexistent.wasm", "--action", "mypack.deploy"],
    ];
    for level in ["debug", "trace"] {
        for args in commands {
            let out = run_cmd(host.cmd().env("RUST_LOG", level).args(args), None);
            check(&out, &format!("RUST_LOG={level} {args:?}"));
        }
    }
}

#[test]
fn n18_a_database_password_shows_in_no_output_error_or_log() {
    const PW: &str = "N18pwZq7xK";
    let mut host = Host::new();
    for url in [
        format!("postgres://u@127.0.0.1:5999/test?password={PW}"),
        format!("postgres:/u:{PW}@127.0.0.1:5432/test"),
        format!("postgres://u:{PW}@127.0.0.1:5999/test"),
        format!("postgresql://u:{PW}/x@127.0.0.1:5999/test?sslmode=disable"),
        format!("postgres//u:{PW}@127.0.0.1:5432/test"),
        format!("u:{PW}@127.0.0.1:5432/test"),
    ] {
        host.settings = vec![("ATTUNE__DATABASE__URL".into(), url.clone())];
        every_command(&host, |out, what| {
            assert!(!out.status.success(), "{url} {what}");
            assert_absent(out, PW, &format!("{url} {what}"));
        });
    }
    // A reachable server (trust authentication ignores the password): connection, migration
    // and queries are logged at debug, never with the URL's password.
    let Some(pg) = Host::postgres() else {
        return;
    };
    let base = pg.setting("ATTUNE__DATABASE__URL").unwrap();
    for url in [
        base.replacen("://postgres@", &format!("://postgres:{PW}@"), 1),
        format!("{base}?password={PW}"),
    ] {
        let mut host = Host::postgres().unwrap();
        host.settings[0].1 = url.clone();
        every_command(&host, |out, what| {
            assert_absent(out, PW, &format!("{url} {what}"));
        });
        let migrate = host.exec(&["db", "migrate"], None);
        assert!(migrate.status.success(), "{}", text(&migrate.stderr));
        assert!(
            text(&migrate.stdout).contains("postgres://127.0.0.1:5432/test is up to date"),
            "{}",
            text(&migrate.stdout)
        );
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(host.drop_schema());
    }
}

#[test]
fn n25_a_secret_used_as_a_path_or_dns_name_is_in_no_log_line() {
    const CANARY: &str = "n25-canary-q8v3.example.com";
    let host = Host::new();
    host.set("canary", CANARY, &["--pack", "mypack"]);
    for target in [Target::P1, Target::P2] {
        for level in [
            "trace",
            "wasmtime_wasi=trace,wasmtime_wasi_io=trace,wiggle=trace",
        ] {
            let mut c = host.cmd();
            c.env("RUST_LOG", level)
                .arg("run")
                .arg(probe(target))
                .args(["--action", ACTION, "--", "touch", "canary"]);
            let out = run_cmd(&mut c, None);
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert_eq!(text(&out.stdout), "touched\n");
            if level == "trace" {
                // Logging was on: the host's own events are there.
                assert!(
                    text(&out.stderr).contains("execution starting"),
                    "{}",
                    text(&out.stderr)
                );
            }
            for part in [CANARY, "n25-canary", "q8v3"] {
                assert_absent(&out, part, &format!("{target:?} RUST_LOG={level}"));
            }
        }
    }
}

/// Runs the probe's `forms NAME`, returning stdout's lines.
fn forms(host: &Host, target: Target, name: &str) -> Vec<String> {
    let out = host.run_redacted(&probe(target), ACTION, &[], &["forms", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn n19_every_encoding_ci_maskers_cover_is_masked() {
    let host = Host::new();
    let secrets = [
        ("odd", "my pass+wörd/x1!"),
        ("alnum", "PureLettersAndDigits0123"),
        ("html", "a&b<c>d-go-json"),
    ];
    for (name, value) in secrets {
        host.set(name, value, &["--pack", "mypack"]);
    }
    for target in [Target::P1, Target::P2] {
        for (name, value) in secrets {
            let lines = forms(&host, target, name);
            assert_eq!(lines.len(), 12, "{lines:?}");
            for line in &lines {
                let (label, shown) = line.split_once(": ").unwrap();
                assert!(shown.contains("***"), "{target:?} {name} {line}");
                let visible = shown.replace("***", "");
                // What may stay: the characters of a prefix (`user:` is 6 characters, 1 more
                // mixes its bits with the value's) and, at the end, the character mixing
                // padding bits and the padding.
                let allowed = match label {
                    "python" | "go" => r#"{"v": ""}"#.len(),
                    l if l.starts_with("b64") => 7 + 3,
                    _ => 0,
                };
                assert!(
                    visible.len() <= allowed,
                    "{target:?} {name} {line}: {visible:?} left"
                );
                // No 4 consecutive characters of the value or of its base64 survive.
                let b64 = base64::engine::general_purpose::STANDARD.encode(value);
                for source in [value, b64.as_str()] {
                    for w in source.as_bytes().windows(4) {
                        let w = String::from_utf8_lossy(w);
                        assert!(!visible.contains(&*w), "{target:?} {name} {line}: {w}");
                    }
                }
            }
        }
    }
}

#[test]
fn n20_lines_of_a_secret_that_are_not_secret_on_their_own_are_not_masked() {
    let host = Host::new();
    let multi = "first-line-of-the-secret\n        \nsecond-line-of-the-secret\n}";
    let json =
        "{\n    \"api\": {\n        \"token\": \"tok-n20-0123456789\"\n    },\n    \"n\": 1\n}";
    for (name, value) in [("multi", multi), ("pretty", json)] {
        let out = host.exec(
            &["secret", "set", name, "-", "--pack", "mypack"],
            Some(value.as_bytes()),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let unrelated = "fn main() {\n    if x {\n        \n    },\n    \"n\": 1\n}\n\
                     {\n    \"other\": {\n        \"id\": 7\n    },\n    \"n\": 1\n}\n";
    for target in [Target::P1, Target::P2] {
        let mut c = host.cmd();
        c.arg("run")
            .arg(probe(target))
            .args(["--action", ACTION, "--", "stdin"]);
        let out = run_cmd(&mut c, Some(unrelated.as_bytes()));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            unrelated,
            "{target:?}: unrelated output unchanged"
        );
        // The secrets, and their lines that are secret on their own, are still masked.
        let mut c = host.cmd();
        c.arg("run")
            .arg(probe(target))
            .args(["--action", ACTION, "--", "stdin"]);
        let printed = format!(
            "{multi}\nsecond-line-of-the-secret\n\"token\": \"tok-n20-0123456789\"\n{json}\n"
        );
        let out = run_cmd(&mut c, Some(printed.as_bytes()));
        assert_eq!(text(&out.stdout), "***\n***\n***\n***\n", "{target:?}");
    }
}

#[test]
fn n21_short_plain_values_are_configuration_and_stay_valid_json() {
    let host = Host::new();
    host.set("deployed", "true", &["--plain", "--pack", "mypack"]);
    host.set("target", "prod", &["--plain", "--pack", "mypack"]);
    host.set("region", "eu-west-1-long", &["--plain", "--pack", "mypack"]);
    host.set("pin", "4821", &["--pack", "mypack"]);
    let result = r#"{"deployed":true,"target":"prod"}"#;
    for target in [Target::P1, Target::P2] {
        let mut c = host.cmd();
        c.arg("run")
            .arg(probe(target))
            .args(["--action", ACTION, "--", "stdin"]);
        let out = run_cmd(&mut c, Some(format!("{result}\n").as_bytes()));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{result}\n"));
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(parsed["target"], "prod");
        let stderr = text(&out.stderr);
        for name in ["deployed", "target"] {
            assert!(
                stderr.contains("plain value shorter than 8 bytes is not masked in output")
                    && stderr.contains(&format!("secret=mypack.{name}")),
                "a warning names {name}: {stderr}"
            );
        }
        // A long plain value and a short encrypted one are still masked.
        let mut c = host.cmd();
        c.arg("run")
            .arg(probe(target))
            .args(["--action", ACTION, "--", "stdin"]);
        let out = run_cmd(&mut c, Some(b"eu-west-1-long 4821\n"));
        assert_eq!(text(&out.stdout), "*** ***\n");
    }
}

#[test]
fn n18_debug_of_settings_and_store_options_shows_no_password() {
    const PW: &str = "N18pwZq7xK";
    for url in [
        format!("postgres://u@127.0.0.1:5999/test?password={PW}"),
        format!("postgres:/u:{PW}@127.0.0.1:5432/test"),
        format!("postgres://u:{PW}@db:5432/test"),
        format!("postgres://u:{PW}/x@db/test"),
    ] {
        let settings = attune_wasm::config::Settings {
            database: attune_wasm::config::Database {
                url: Some(url.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let options = settings.store_options().unwrap();
        for shown in [format!("{settings:?}"), format!("{options:?}")] {
            assert!(!shown.contains(PW), "{shown}");
        }
        let shown = attune_wasm::store::redact_url(&url);
        assert!(!shown.contains(PW) && !shown.contains("u@"), "{shown}");
    }
}
