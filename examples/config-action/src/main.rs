//! A component action written against the standard `wasi:config/store` (the WASI configuration
//! proposal, `wasi:config@0.2.0-rc.1` as wasmtime 48 serves it): `mypack.deploy` again, with no
//! Attune interface and no SDK.
//!
//! The same component runs unchanged
//!
//! - under attune-wasm (`attune-wasm run config-action.wasm --action mypack.deploy`), where
//!   `get` and `get-all` answer from the secret store, exactly as `get-secret` would (same
//!   names, hierarchy, allow-list, budget, masking; audit door `wasi-config`);
//! - under the wasmtime CLI with configuration variables in place of the store:
//!   `wasmtime run -S config -S config-var=api_key=… config-action.wasm`.
//!
//! Parameters arrive as JSON on stdin (`{"target": "staging"}`), the result is the JSON this
//! prints, failure is a non-zero exit. It prints only what is safe to print about the secrets:
//! their length and a SHA-256 prefix, and the names `get-all` lists (sorted: a wasi:config host
//! may list them in any order).

use std::io::Read;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[cfg(all(target_arch = "wasm32", target_env = "p2"))]
mod bindings {
    wit_bindgen::generate!({
        inline: "
            package attune:config-action;
            world config-action {
                import wasi:config/store@0.2.0-rc.1;
            }
        ",
        path: "../../wit",
        // wasi:config is generated here (there is no shared crate for it).
        generate_all,
    });
}

/// `wasi:config/store` on a component; elsewhere (a native `cargo test`, a core module) there
/// is no such import and every key is absent.
mod config {
    #[cfg(all(target_arch = "wasm32", target_env = "p2"))]
    use super::bindings::wasi::config::store::{self, Error};

    /// `get(key)`: the value, `None` when there is no such key, or the host's error.
    pub fn get(key: &str) -> Result<Option<String>, String> {
        #[cfg(all(target_arch = "wasm32", target_env = "p2"))]
        return store::get(key).map_err(|e| describe(&e));
        #[cfg(not(all(target_arch = "wasm32", target_env = "p2")))]
        return {
            let _ = key;
            Ok(None)
        };
    }

    /// `get-all`: every (key, value) the host gives this component.
    pub fn get_all() -> Result<Vec<(String, String)>, String> {
        #[cfg(all(target_arch = "wasm32", target_env = "p2"))]
        return store::get_all().map_err(|e| describe(&e));
        #[cfg(not(all(target_arch = "wasm32", target_env = "p2")))]
        return Ok(Vec::new());
    }

    #[cfg(all(target_arch = "wasm32", target_env = "p2"))]
    fn describe(e: &Error) -> String {
        match e {
            Error::Upstream(text) => format!("upstream: {text}"),
            Error::Io(text) => format!("io: {text}"),
        }
    }
}

fn describe(key: &str) -> Value {
    match config::get(key) {
        Ok(Some(v)) => json!({
            "len": v.len(),
            "sha256_prefix": hex8(&Sha256::digest(v.as_bytes())),
        }),
        Ok(None) => json!({ "error": "not set" }),
        Err(e) => json!({ "error": e }),
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
    // Only the names: never print a value.
    let keys = match config::get_all() {
        Ok(all) => {
            let mut names: Vec<String> = all.into_iter().map(|(k, _)| k).collect();
            names.sort_unstable();
            json!(names)
        }
        Err(e) => json!({ "error": e }),
    };
    println!(
        "{}",
        json!({
            "action": std::env::var("ATTUNE_ACTION_REF").unwrap_or_default(),
            "door": "wasi-config",
            "target": target,
            "deployed": ok,
            "api_key": api_key,
            "db_password": describe("db_password"),
            "keys": keys,
        })
    );
    if !ok {
        eprintln!("deploy failed: api_key is required");
        std::process::exit(1);
    }
}
