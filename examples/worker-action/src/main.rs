//! An Attune action for `attune-wasm worker` (the fleet demo and the worker's tests).
//!
//! Attune's convention: the parameters arrive as one JSON object on stdin, the result is the
//! JSON printed on stdout (its last line), failure is a non-zero exit with the reason on stderr.
//! Secrets come through `get-secret` (component) or `SECRET_*` (core module), via attune-guest.
//!
//! Parameters (`mode` selects what it does, default `greet`):
//! - `greet`: `{"greeting": "hello NAME", "secrets": {"api_key": {"len": …, "sha256": "…"}, …}}`
//!   for the secrets named in `secrets` (default `api_key`, `db_password`, `region`): only a
//!   length and a SHA-256 prefix, never the value.
//! - `show`: prints the secret `secret` raw (to show output masking), then a JSON line.
//! - `spin`: loops forever (timeouts); with `secret`, reads that secret first (so the audit
//!   trail records the run).
//! - `sleep`: sleeps `ms` milliseconds (default 60000) inside a host call (WASI clock poll),
//!   then prints `{"slept": ms}`: a guest that is not running wasm code when cancelled.
//! - `fail`: writes `message` to stderr and exits with `code` (default 3).

use std::io::Read;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

fn describe(name: &str) -> Value {
    match attune_guest::get_secret(name) {
        Ok(v) => {
            let digest = Sha256::digest(v.as_bytes());
            let prefix: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
            json!({ "len": v.len(), "sha256": prefix })
        }
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn main() {
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    let params: Value = serde_json::from_str(input.trim()).unwrap_or_else(|_| json!({}));
    let text = |key: &str, default: &str| {
        params
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    match text("mode", "greet").as_str() {
        "show" => {
            let name = text("secret", "api_key");
            let value = attune_guest::get_secret(&name).unwrap_or_default();
            println!("the secret is {value}");
            println!("{}", json!({ "shown": name }));
        }
        "spin" => {
            if let Some(name) = params.get("secret").and_then(Value::as_str) {
                let _ = std::hint::black_box(describe(name));
            }
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "sleep" => {
            let ms = params.get("ms").and_then(Value::as_u64).unwrap_or(60_000);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            println!("{}", json!({ "slept": ms }));
        }
        "fail" => {
            eprintln!("{}", text("message", "action failed"));
            let code = params.get("code").and_then(Value::as_i64).unwrap_or(3);
            std::process::exit(i32::try_from(code).unwrap_or(3));
        }
        _ => {
            let names: Vec<String> = match params.get("secrets").and_then(Value::as_array) {
                Some(list) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                None => ["api_key", "db_password", "region"]
                    .map(str::to_owned)
                    .to_vec(),
            };
            let secrets: Map<String, Value> =
                names.iter().map(|n| (n.clone(), describe(n))).collect();
            println!(
                "{}",
                json!({
                    "greeting": format!("hello {}", text("name", "world")),
                    "action": std::env::var("ATTUNE_ACTION_REF").unwrap_or_default(),
                    "secrets": secrets,
                })
            );
        }
    }
}
