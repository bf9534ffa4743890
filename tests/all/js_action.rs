//! The JavaScript action (`examples/js-action`, built with componentize-js) under
//! `attune-wasm run`: a missing secret takes the error path, a stored one arrives through
//! `get-secret`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::external::{build_example, NPM};
use crate::support::{assert_no_panic, run_cmd, text, Host};

/// Builds the JavaScript action once per test process with its `build.sh` (componentize-js from
/// `examples/js-action/package-lock.json`) into `examples/target/js-action/`; `None` when
/// `ATTUNE_TEST_JS=skip`.
fn js_action() -> Option<&'static Path> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if NPM.skipped() {
        return None;
    }
    Some(BUILT.get_or_init(|| build_example("js-action", "js-action.wasm", &NPM.path())))
}

fn run(host: &Host, wasm: &Path, action: &str, stdin: &[u8]) -> Output {
    let mut c = host.cmd();
    c.arg("run").arg(wasm).args(["--action", action]);
    let out = run_cmd(&mut c, Some(stdin));
    assert_no_panic(&out);
    out
}

fn described(value: &str) -> Value {
    json!({
        "len": value.len(),
        "sha256_prefix": hex::encode(&Sha256::digest(value.as_bytes())[..4]),
    })
}

#[test]
fn js_action_reads_secrets_through_get_secret() {
    let Some(wasm) = js_action() else { return };
    // One host: the component is compiled once, into its cache.
    let host = Host::new();
    let db_password = "pg-password-for-js";
    host.set("db_password", db_password, &["--action", "mypack.deploy"]);
    host.set(
        "api_key",
        "otherpack-key-not-for-mypack",
        &["--pack", "otherpack"],
    );

    // No api_key visible to mypack.deploy: the error path, exit 1.
    let out = run(&host, wasm, "mypack.deploy", b"");
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("deploy failed: api_key is required"),
        "stderr: {}",
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the action prints JSON");
    assert_eq!(report["deployed"], false);
    assert_eq!(report["target"], "staging");
    assert_eq!(report["api_key"], json!({ "error": "not-found" }));
    assert_eq!(report["db_password"], described(db_password));

    // Stored for the pack: delivered; parameters on stdin.
    let api_key = "sk_live_js=pack key ü_0123";
    host.set("api_key", api_key, &["--pack", "mypack"]);
    let out = run(&host, wasm, "mypack.deploy", br#"{"target": "production"}"#);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for value in [api_key, db_password] {
        assert!(!stdout.contains(value), "a value was printed: {stdout}");
    }
    let report: Value = serde_json::from_str(&stdout).expect("the action prints JSON");
    assert_eq!(
        report,
        json!({
            "action": "mypack.deploy",
            "door": "get-secret",
            "language": "javascript",
            "target": "production",
            "deployed": true,
            "api_key": described(api_key),
            "db_password": described(db_password),
        })
    );
}
