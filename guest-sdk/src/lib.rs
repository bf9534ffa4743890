//! # attune-guest
//!
//! Read Attune secrets from inside an action compiled to WebAssembly and run by attune-wasm.
//!
//! attune-wasm gives an action its secrets through three doors, all answered from the same
//! resolved secrets (same names, hierarchy, `--allow-secret`, masking and audit):
//!
//! | door | who can use it | what this crate calls |
//! |---|---|---|
//! | the WIT import `attune:action/secrets.get-secret` (`wit/action.wit`) | components (`wasm32-wasip2`) | [`get_secret`] on `wasm32-wasip2` |
//! | `SECRET_<NAME>` variables in the WASI environment | components and core modules | [`get_secret`] on every other target, [`secrets`] everywhere |
//! | the standard `wasi:config/store` (`get`, `get-all`; `wit/deps/config`) | components | nothing: import it with wit-bindgen (`examples/config-action`) |
//!
//! Which door to use:
//!
//! - this crate's [`get_secret`] (`get-secret`) for Attune actions in Rust: typed errors that
//!   say why a secret was not given ([`Error`]), and the same code runs on `wasm32-wasip1` and in
//!   native tests through the environment;
//! - `wasi:config/store` for a component that should not depend on Attune at all (written for
//!   the WASI standard, or for other hosts too): it runs unchanged under attune-wasm and under
//!   `wasmtime run -S config -S config-var=K=V`. Its `get` answers `none` where `get-secret`
//!   says `not-found` or `invalid-name`, and `upstream("access-denied")` /
//!   `upstream("unavailable")` for the other two errors. This crate has no accessor for it: the
//!   point of that door is to need no Attune crate, and wit-bindgen's own `get` is already
//!   typed;
//! - the environment ([`secrets`], `std::env`) for core modules.
//!
//! - On `wasm32-wasip2` [`get_secret`] calls the host import: exact, case-sensitive names and
//!   all four errors of the WIT enum `secret-error` ([`Error`]).
//! - On every other target (`wasm32-wasip1` core modules, and native builds for `cargo test`)
//!   it reads the variable [`env_var`]`(name)` from the environment, which is how attune-wasm
//!   injects secrets into classic modules. Set `SECRET_API_KEY=…` in a unit test and the action
//!   code runs unchanged. The same typed [`Error`] comes back; see [`get_secret`] for the two
//!   cases the environment cannot tell apart.
//! - [`secrets`] lists the names the environment door delivered, mapped back from the variable
//!   names (lossy: see there).
//!
//! ```no_run
//! fn main() -> Result<(), attune_guest::Error> {
//!     let api_key = attune_guest::get_secret("api_key")?;
//!     // Never print the value: print what is safe, such as its length.
//!     println!("{{\"api_key_len\": {}}}", api_key.len());
//!     Ok(())
//! }
//! ```
//!
//! The doc examples of this crate run natively (`cargo test -p attune-guest`), where the
//! environment door is the one in use.

#![deny(missing_docs)]

mod env;
mod error;

pub use env::{env_var, secrets};
pub use error::Error;

/// Longest secret name, in bytes (the host's naming rule: 1 to 128 bytes of
/// `[A-Za-z0-9][A-Za-z0-9_-]*`).
const MAX_NAME_BYTES: usize = 128;

/// Prefix of every variable the environment door sets (`SECRET_API_KEY` for `api_key`).
const ENV_PREFIX: &str = "SECRET_";

/// Returns the value of secret `name` as resolved for this execution (action over pack over
/// system).
///
/// - `wasm32-wasip2` (component): asks the host through `get-secret`; `name` must match the
///   stored name exactly (case-sensitive, `-` and `_` distinct).
/// - any other target (`wasm32-wasip1` module, native): reads [`env_var`]`(name)`. That mapping
///   is lossy (uppercase, `-` → `_`), so `API_KEY`, `api_key` and `Api-Key` all read
///   `SECRET_API_KEY` there.
///
/// # Errors
/// The four cases of the WIT enum `secret-error`, on every target:
///
/// | error | `wasm32-wasip2` (`get-secret`) | other targets (environment) |
/// |---|---|---|
/// | [`Error::InvalidName`] | the host refused the name | refused here, with the host's rule, before reading anything |
/// | [`Error::NotFound`] | no secret of that name is visible | the variable is not set: not visible, **or** withheld by `--allow-secret`, **or** undeliverable (the host leaves those out of the environment) |
/// | [`Error::AccessDenied`] | withheld by `--allow-secret`, or the call budget is spent | never (indistinguishable from not found) |
/// | [`Error::Unavailable`] | the host could not decrypt it | the variable is set but is not valid UTF-8 |
///
/// # Examples
/// ```
/// use attune_guest::{get_secret, Error};
///
/// // Natively, secrets come from SECRET_* variables, so actions are testable with cargo test.
/// std::env::set_var("SECRET_DB_PASSWORD", "hunter2-but-longer");
/// assert_eq!(get_secret("db-password").as_deref(), Ok("hunter2-but-longer"));
/// assert_eq!(get_secret("missing"), Err(Error::NotFound));
/// assert_eq!(get_secret("bad name"), Err(Error::InvalidName));
/// ```
pub fn get_secret(name: &str) -> Result<String, Error> {
    imp::get_secret(name)
}

#[cfg(all(target_arch = "wasm32", target_env = "p2"))]
mod imp {
    mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "action",
        });
    }

    use bindings::attune::action::secrets::{self, SecretError};

    pub(super) fn get_secret(name: &str) -> Result<String, super::Error> {
        secrets::get_secret(name).map_err(|e| match e {
            SecretError::NotFound => super::Error::NotFound,
            SecretError::AccessDenied => super::Error::AccessDenied,
            SecretError::InvalidName => super::Error::InvalidName,
            SecretError::Unavailable => super::Error::Unavailable,
        })
    }
}

#[cfg(not(all(target_arch = "wasm32", target_env = "p2")))]
mod imp {
    pub(super) fn get_secret(name: &str) -> Result<String, super::Error> {
        super::env::get_secret(name)
    }
}
