//! N12 and its kind: secret values, their base64, multi-line secrets and values split across
//! writes appear as `***` in what `run` passes through; output floods are capped.

use crate::support::{probe, text, Host, Target};

const ACTION: &str = "mypack.deploy";

#[test]
fn n12_printed_secrets_are_masked_in_stdout_and_stderr() {
    let host = Host::new();
    let pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----";
    let out = host.exec(
        &["secret", "set", "pem", "-", "--pack", "mypack"],
        Some(pem.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    host.set("tok", "hunter2-long/+=?&", &["--pack", "mypack"]);
    for target in [Target::P1, Target::P2] {
        for name in ["pem", "tok"] {
            let out = host.run_redacted(&probe(target), ACTION, &[], &["show", name]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(stdout, "raw:***\nb64:***\nsplit:***\n", "{target:?} {name}");
            assert!(stderr.contains("stderr:***"), "{stderr}");
            for leaked in ["hunter2", "MIIBOgIBAAJBAKj34GkxFhD9", "BEGIN KEY"] {
                assert!(
                    !stdout.contains(leaked) && !stderr.contains(leaked),
                    "{leaked}"
                );
            }
        }
        // JSON-escaped forms too: the probe prints values inside JSON.
        let out = host.run_redacted(&probe(target), ACTION, &[], &["get", "pem", "tok"]);
        assert_eq!(
            text(&out.stdout).trim(),
            r#"{"pem":{"value":"***"},"tok":{"value":"***"}}"#
        );
    }
}

#[test]
fn short_values_are_not_masked_and_the_host_warns() {
    let host = Host::new();
    host.set("ab", "xy", &[]);
    let out = host.run_redacted(&probe(Target::P2), ACTION, &[], &["show", "ab"]);
    assert!(text(&out.stdout).contains("raw:xy"));
    assert!(
        text(&out.stderr).contains("shorter than 4 bytes is not masked"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("secret=ab"));
}

#[test]
fn no_redact_shows_values_with_a_warning() {
    let host = Host::new();
    host.set("tok", "visible-when-asked", &[]);
    let out = host.run_redacted(
        &probe(Target::P2),
        ACTION,
        &["--no-redact"],
        &["show", "tok"],
    );
    assert!(text(&out.stdout).contains("raw:visible-when-asked"));
    assert!(text(&out.stderr).contains("--no-redact"));
}

#[test]
fn output_floods_are_capped_and_the_host_stays_healthy() {
    let host = Host::new();
    for target in [Target::P1, Target::P2] {
        let out = host.run_redacted(
            &probe(target),
            ACTION,
            &["--max-output", "1MiB"],
            &["flood", "8"],
        );
        assert_eq!(
            out.stdout.len(),
            1024 * 1024,
            "{target:?}: exactly the cap passes"
        );
        assert_ne!(out.status.code(), Some(0));
        assert!(
            text(&out.stderr).contains("output was cut at 1048576 bytes"),
            "{}",
            text(&out.stderr)
        );
        let out = host.run_redacted(&probe(target), ACTION, &[], &["exit", "0"]);
        assert!(
            out.status.success(),
            "the host runs the next execution normally"
        );
    }
}
