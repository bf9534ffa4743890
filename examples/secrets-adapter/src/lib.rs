//! Secrets adapter: a component that **exports** `attune:action/secrets@0.1.0` (`wit/action.wit`)
//! and answers `get-secret(name)` from the WASI environment, the way attune-wasm's env door
//! names variables: `SECRET_` + the name uppercased, `-` → `_` (`db-password` →
//! `SECRET_DB_PASSWORD`).
//!
//! Composed with an unmodified component action,
//!
//! ```text
//! wac plug action.wasm --plug secrets_adapter.wasm -o composed.wasm
//! wasmtime run --env SECRET_API_KEY=… composed.wasm
//! ```
//!
//! runs the action under the plain wasmtime CLI (development, and the differential tests in
//! `tests/all/wasmtime_cli.rs`). All instances of a composition share one WASI context, so the
//! action itself can read the `SECRET_*` variables too: this is a development tool, not a
//! sandbox boundary.
//!
//! Answers: the value; `invalid-name` for a name attune-wasm rejects (1 to 128 bytes of
//! `[A-Za-z0-9][A-Za-z0-9_-]*`); `not-found` when the variable is unset; `unavailable` when
//! it is set but not UTF-8. It never answers `access-denied` (there is no `--allow-secret`
//! here).
//!
//! One difference from attune-wasm: the host matches `get-secret` names exactly, while this
//! adapter answers every name that maps to a set variable (`db-password`, `db_password` and
//! `DB-PASSWORD` all read `SECRET_DB_PASSWORD`). Ask for the stored name and both agree.

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package attune:secrets-adapter;
            world adapter {
                export attune:action/secrets@0.1.0;
            }
        ",
        path: "../../wit",
    });
}

use bindings::exports::attune::action::secrets::{Guest, SecretError};

/// Longest secret name in bytes (attune-wasm's `MAX_NAME_BYTES`).
const MAX_NAME_BYTES: usize = 128;

/// The `get-secret` implementation exported by this component.
struct Adapter;

impl Guest for Adapter {
    fn get_secret(name: String) -> Result<String, SecretError> {
        let var = env_var(&name).ok_or(SecretError::InvalidName)?;
        match std::env::var(var) {
            Ok(value) => Ok(value),
            Err(std::env::VarError::NotPresent) => Err(SecretError::NotFound),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::Unavailable),
        }
    }
}

/// The variable attune-wasm injects secret `name` as, or `None` when the host would reject the
/// name.
fn env_var(name: &str) -> Option<String> {
    let mut bytes = name.bytes();
    let valid = name.len() <= MAX_NAME_BYTES
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return None;
    }
    let mut out = String::from("SECRET_");
    out.extend(name.chars().map(|c| {
        if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
    Some(out)
}

bindings::export!(Adapter with_types_in bindings);
