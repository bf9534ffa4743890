//! # attune-guest
//!
//! Read Attune secrets from inside an action compiled to WebAssembly.
//!
//! - On `wasm32-wasip2` (component actions) [`get_secret`] calls the host import
//!   `attune:action/secrets.get-secret` (WIT: `wit/action.wit` of attune-wasm).
//! - On every other target (`wasm32-wasip1` core modules, and native builds for `cargo test`)
//!   it reads the variable `SECRET_<NAME>` (uppercase, `-` → `_`) from the environment, which is
//!   how attune-wasm injects secrets into classic modules. Set `SECRET_API_KEY=…` in a unit
//!   test and your action code runs unchanged.
//!
//! ```no_run
//! fn main() -> Result<(), attune_guest::Error> {
//!     let api_key = attune_guest::get_secret("api_key")?;
//!     // Never print the value: print what is safe, such as its length.
//!     println!("{{\"api_key_len\": {}}}", api_key.len());
//!     Ok(())
//! }
//! ```

#![deny(missing_docs)]

use std::fmt;

/// Why [`get_secret`] returned no value. Mirrors `secret-error` in `wit/action.wit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// No secret of that name is visible to this action.
    NotFound,
    /// The secret exists but this execution may not read it.
    AccessDenied,
    /// The name breaks the rule: 1 to 128 bytes of `[A-Za-z0-9][A-Za-z0-9_-]*`.
    InvalidName,
    /// The host could not deliver the secret (e.g. it failed to decrypt).
    Unavailable,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "secret not found",
            Self::AccessDenied => "access to secret denied",
            Self::InvalidName => "invalid secret name",
            Self::Unavailable => "secret unavailable",
        })
    }
}

impl std::error::Error for Error {}

/// Returns the value of secret `name` (exact, case-sensitive) as resolved for this execution
/// (action over pack over system).
///
/// # Errors
/// [`Error::NotFound`], [`Error::AccessDenied`], [`Error::InvalidName`] or
/// [`Error::Unavailable`]; see [`Error`].
///
/// # Examples
/// ```
/// // Natively, secrets come from SECRET_* variables, so actions are testable with cargo test.
/// std::env::set_var("SECRET_DB_PASSWORD", "hunter2-but-longer");
/// assert_eq!(attune_guest::get_secret("db-password").unwrap(), "hunter2-but-longer");
/// assert_eq!(attune_guest::get_secret("missing"), Err(attune_guest::Error::NotFound));
/// assert_eq!(attune_guest::get_secret("bad name"), Err(attune_guest::Error::InvalidName));
/// ```
pub fn get_secret(name: &str) -> Result<String, Error> {
    imp::get_secret(name)
}

/// The environment variable a secret is injected as: `SECRET_` + uppercase, `-` → `_`.
///
/// # Errors
/// [`Error::InvalidName`] when `name` breaks the naming rule.
///
/// # Examples
/// ```
/// assert_eq!(attune_guest::env_var("api_key").unwrap(), "SECRET_API_KEY");
/// assert_eq!(attune_guest::env_var("db-password").unwrap(), "SECRET_DB_PASSWORD");
/// ```
pub fn env_var(name: &str) -> Result<String, Error> {
    if !valid_name(name) {
        return Err(Error::InvalidName);
    }
    let mut out = String::from("SECRET_");
    out.extend(name.chars().map(|c| {
        if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    !name.is_empty()
        && name.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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
        let var = super::env_var(name)?;
        match std::env::var(var) {
            Ok(v) => Ok(v),
            Err(std::env::VarError::NotPresent) => Err(super::Error::NotFound),
            Err(std::env::VarError::NotUnicode(_)) => Err(super::Error::Unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_host_rule() {
        assert!(valid_name("a"));
        assert!(valid_name(&"a".repeat(128)));
        for bad in ["", "_a", "-a", "a b", "a=b", "ä", &"a".repeat(129)] {
            assert!(!valid_name(bad), "{bad:?}");
            assert_eq!(get_secret(bad), Err(Error::InvalidName));
        }
    }
}
