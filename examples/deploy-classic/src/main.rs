//! A classic action (WASI p1 core module): `mypack.deploy` as a plain program.
//!
//! Secrets arrive as `SECRET_*` environment variables (seed "Environment Variable Naming":
//! `api_key` → `SECRET_API_KEY`). It prints only their length and a SHA-256 prefix.

use std::io::Read;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn describe(var: &str) -> Value {
    match std::env::var(var) {
        Ok(v) => json!({
            "len": v.len(),
            "sha256_prefix": Sha256::digest(v.as_bytes())
                .iter()
                .take(4)
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        }),
        Err(_) => json!({ "error": "secret not found" }),
    }
}

fn main() {
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    let params: Value = serde_json::from_str(&input).unwrap_or_else(|_| json!({}));
    let target = params
        .get("target")
        .and_then(Value::as_str)
        .unwrap_or("staging");
    let api_key = describe("SECRET_API_KEY");
    let ok = api_key.get("error").is_none();
    let mut names: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("SECRET_"))
        .collect();
    names.sort();
    println!(
        "{}",
        json!({
            "action": std::env::var("ATTUNE_ACTION_REF").unwrap_or_default(),
            "door": "env",
            "target": target,
            "deployed": ok,
            "secret_vars": names,
            "api_key": api_key,
            "db_password": describe("SECRET_DB_PASSWORD"),
        })
    );
    if !ok {
        eprintln!("deploy failed: SECRET_API_KEY is required");
        std::process::exit(1);
    }
}
