//! The Python action (`examples/python-action`, built with componentize-py) under
//! `attune-wasm run`: the secret arrives through `get-secret`, a missing one takes the error path.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::external::{build_example, COMPONENTIZE_PY};
use crate::support::{assert_no_panic, run_cmd, text, Host};

/// Builds the Python action once per test process with its `build.sh` (componentize-py from
/// `scripts/setup.sh`) into `examples/target/python-action/`; `None` when
/// `ATTUNE_TEST_PYTHON=skip`.
pub fn python_action() -> Option<&'static Path> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if COMPONENTIZE_PY.skipped() {
        return None;
    }
    Some(BUILT.get_or_init(|| {
        build_example(
            "python-action",
            "python-action.wasm",
            &COMPONENTIZE_PY.path(),
        )
    }))
}

/// `attune-wasm run PYTHON_ACTION --action ACTION` with `stdin` as parameters.
fn run(host: &Host, action: &str, stdin: &[u8]) -> Output {
    let wasm = python_action().expect("checked by the caller");
    let mut c = host.cmd();
    c.arg("run").arg(wasm).args(["--action", action]);
    let out = run_cmd(&mut c, Some(stdin));
    assert_no_panic(&out);
    out
}

fn sha256_prefix(value: &str) -> String {
    hex::encode(&Sha256::digest(value.as_bytes())[..4])
}

#[test]
fn python_action_receives_its_secrets_through_get_secret() {
    if python_action().is_none() {
        return;
    }
    let host = Host::new();
    let api_key = "sk_live_python_pack_key_=ü_0123";
    let db_password = "pg-password-for-python";
    host.set("api_key", "system-level-key-overridden", &[]);
    host.set("api_key", api_key, &["--pack", "mypack"]);
    host.set("db_password", db_password, &["--action", "mypack.deploy"]);

    let out = run(&host, "mypack.deploy", br#"{"target": "production"}"#);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for value in [api_key, db_password] {
        assert!(!stdout.contains(value), "a value was printed: {stdout}");
    }
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("the action prints JSON");
    assert_eq!(
        report,
        serde_json::json!({
            "action": "mypack.deploy",
            "door": "get-secret",
            "language": "python",
            "target": "production",
            "deployed": true,
            "api_key": { "len": api_key.len(), "sha256_prefix": sha256_prefix(api_key) },
            "db_password": { "len": db_password.len(), "sha256_prefix": sha256_prefix(db_password) },
        })
    );
}

#[test]
fn python_action_without_its_secret_fails_with_not_found() {
    if python_action().is_none() {
        return;
    }
    let host = Host::new();
    // Only the other pack has an api_key: not visible to mypack.deploy.
    host.set(
        "api_key",
        "otherpack-key-not-for-mypack",
        &["--pack", "otherpack"],
    );
    let db_password = "pg-password-for-python";
    host.set("db_password", db_password, &["--action", "mypack.deploy"]);

    let out = run(&host, "mypack.deploy", b"");
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("deploy failed: api_key is required"),
        "stderr: {}",
        text(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the action prints JSON");
    assert_eq!(report["deployed"], false);
    assert_eq!(report["target"], "staging");
    assert_eq!(
        report["api_key"],
        serde_json::json!({ "error": "not-found" })
    );
    assert_eq!(
        report["db_password"],
        serde_json::json!({ "len": db_password.len(), "sha256_prefix": sha256_prefix(db_password) })
    );

    // --allow-secret restricts the set: the visible db_password now answers access-denied.
    host.set("api_key", "mypack-key-now-visible", &["--pack", "mypack"]);
    let wasm = python_action().expect("checked above");
    let mut c = host.cmd();
    c.arg("run")
        .arg(wasm)
        .args(["--action", "mypack.deploy", "--allow-secret", "api_key"]);
    let out = run_cmd(&mut c, Some(b"{}"));
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the action prints JSON");
    assert_eq!(report["deployed"], true);
    assert_eq!(
        report["db_password"],
        serde_json::json!({ "error": "access-denied" })
    );
}
