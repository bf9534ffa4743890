//! A component action: `mypack.deploy`.
//!
//! Parameters arrive as JSON on stdin (`{"target": "staging"}`), the result is the JSON this
//! prints, failure is a non-zero exit (Attune's action convention). It reads `api_key` and
//! `db_password` through the `get-secret` import and prints only what is safe to print about
//! them: their length and a SHA-256 prefix.

use std::io::Read;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn describe(name: &str) -> Value {
    match attune_guest::get_secret(name) {
        Ok(v) => json!({
            "len": v.len(),
            "sha256_prefix": hex8(&Sha256::digest(v.as_bytes())),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn hex8(digest: &[u8]) -> String {
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    let params: Value = serde_json::from_str(&input).unwrap_or_else(|_| json!({}));
    let target = params
        .get("target")
        .and_then(Value::as_str)
        .unwrap_or("staging");
    let api_key = describe("api_key");
    let ok = api_key.get("error").is_none();
    println!(
        "{}",
        json!({
            "action": std::env::var("ATTUNE_ACTION_REF").unwrap_or_default(),
            "door": "get-secret",
            "target": target,
            "deployed": ok,
            "api_key": api_key,
            "db_password": describe("db_password"),
        })
    );
    if !ok {
        eprintln!("deploy failed: api_key is required");
        std::process::exit(1);
    }
}
