//! No plaintext in the database file, in logs at any level, or in error output.

use attune_wasm::secrets::names::{ActionRef, Owner, SecretName};
use attune_wasm::store::resolve::Resolution;
use attune_wasm::store::SecretRow;
use secrecy::SecretString;

use crate::support::{probe, run_cmd, text, Host, Target, KEY};

const PLANTED: [&str; 3] = [
    "planted-sys-5f0c1e",
    "planted-pack-9a7b2d",
    "planted-action-31c4e8",
];

#[test]
fn no_plaintext_in_the_database_logs_or_errors() {
    let host = Host::new();
    let mut stderr_all = String::new();
    let mut trace = |args: &[&str], stdin: Option<&[u8]>| {
        let mut c = host.cmd();
        c.env("RUST_LOG", "trace").args(args);
        let out = run_cmd(&mut c, stdin);
        stderr_all.push_str(&text(&out.stderr));
        out
    };
    trace(&["secret", "set", "sys"], Some(PLANTED[0].as_bytes()));
    trace(
        &["secret", "set", "p", PLANTED[1], "--pack", "mypack"],
        None,
    );
    trace(
        &["secret", "set", "a", "--action", "mypack.deploy"],
        Some(PLANTED[2].as_bytes()),
    );
    trace(&["secret", "list"], None);
    trace(&["secret", "get", "p", "--pack", "mypack"], None);
    let out = trace(
        &[
            "run",
            probe(Target::P2).to_str().unwrap(),
            "--action",
            "mypack.deploy",
            "--",
            "get",
            "sys",
            "p",
            "a",
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains(PLANTED[2]),
        "values the guest prints are masked: {stdout}"
    );
    assert!(
        stdout.contains(r#""a":{"value":"***"}"#),
        "the guest did get its secrets: {stdout}"
    );
    trace(
        &[
            "run",
            probe(Target::P1).to_str().unwrap(),
            "--action",
            "mypack.deploy",
            "--",
            "env",
        ],
        None,
    );
    trace(
        &[
            "run",
            probe(Target::P2).to_str().unwrap(),
            "--action",
            "mypack.deploy",
            "--timeout",
            "200ms",
            "--",
            "spin",
        ],
        None,
    );
    trace(
        &[
            "run",
            probe(Target::P2).to_str().unwrap(),
            "--action",
            "mypack.deploy",
            "--max-memory",
            "16MiB",
            "--",
            "alloc",
            "64",
        ],
        None,
    );
    assert!(
        stderr_all.contains("TRACE") || stderr_all.contains("DEBUG"),
        "trace logging was on"
    );
    assert!(
        stderr_all.contains("get-secret"),
        "get-secret calls are logged (by name)"
    );

    // Wrong key: error paths.
    let mut c = host.cmd();
    c.env("RUST_LOG", "trace").env(
        "ATTUNE__SECURITY__ENCRYPTION_KEY",
        crate::support::OTHER_KEY,
    );
    c.args(["secret", "get", "p", "--pack", "mypack", "--reveal"]);
    stderr_all.push_str(&text(&run_cmd(&mut c, None).stderr));
    let mut c = host.cmd();
    c.env("RUST_LOG", "trace").env(
        "ATTUNE__SECURITY__ENCRYPTION_KEY",
        crate::support::OTHER_KEY,
    );
    c.arg("run")
        .arg(probe(Target::P2))
        .args(["--action", "mypack.deploy", "--strict-secrets"]);
    stderr_all.push_str(&text(&run_cmd(&mut c, None).stderr));

    for planted in PLANTED {
        assert!(
            !stderr_all.contains(planted),
            "{planted} leaked into stderr/logs"
        );
    }
    assert!(!stderr_all.contains(KEY), "the encryption key leaked");

    // The database and its WAL/SHM side files.
    for path in host.stored_files() {
        let bytes = std::fs::read(&path).unwrap();
        for planted in PLANTED {
            assert!(
                !bytes
                    .windows(planted.len())
                    .any(|w| w == planted.as_bytes()),
                "{planted} stored in plaintext in {}",
                path.display()
            );
        }
    }
}

#[test]
fn debug_of_public_types_shows_no_secret() {
    let key = crate::support::key(KEY);
    let row = SecretRow {
        owner: Owner::System,
        name: SecretName::new("k").unwrap(),
        value: attune_wasm::store::StoredValue::Plain(SecretString::from(PLANTED[0])),
        created: attune_wasm::store::Timestamp::now(),
        updated: attune_wasm::store::Timestamp::now(),
    };
    let row_debug = format!("{row:?}");
    let resolution = Resolution::resolve(vec![row], Some(&key), None).unwrap();
    let settings = attune_wasm::config::Settings {
        security: attune_wasm::config::Security {
            encryption_key: Some(SecretString::from(KEY)),
            strict_secrets: false,
            refuse_config_get_all: false,
        },
        ..Default::default()
    };
    for shown in [
        row_debug,
        format!("{resolution:?}"),
        format!("{key:?}"),
        format!("{settings:?}"),
        format!("{:?}", ActionRef::new("p.a").unwrap()),
    ] {
        assert!(
            !shown.contains(PLANTED[0]) && !shown.contains(KEY),
            "{shown}"
        );
    }
}

#[test]
fn the_host_process_environment_never_holds_a_secret() {
    // While a guest runs with its secrets, the host's own /proc/PID/environ is searched.
    let host = Host::new();
    host.set("sys", PLANTED[0], &[]);
    host.set("p", PLANTED[1], &["--pack", "mypack"]);
    let mut c = host.cmd();
    c.arg("run")
        .arg(probe(Target::P1))
        .args(["--action", "mypack.deploy", "--timeout", "3s", "--", "spin"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!environ.is_empty());
    for planted in &PLANTED[..2] {
        assert!(
            !environ
                .windows(planted.len())
                .any(|w| w == planted.as_bytes()),
            "{planted} in the host environment"
        );
    }
}
