//! The environment door: secret names ↔ `SECRET_*` variables (attune-wasm's
//! `host/src/names.rs`, seed "Environment Variable Naming").

use crate::{Error, ENV_PREFIX, MAX_NAME_BYTES};

/// Whether `name` follows the host's naming rule: 1 to [`MAX_NAME_BYTES`] bytes of
/// `[A-Za-z0-9][A-Za-z0-9_-]*` (attune-wasm `SecretName::new`).
pub(crate) fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_NAME_BYTES
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The environment variable the host injects secret `name` as: `SECRET_` + the name in
/// ASCII uppercase with `-` → `_` (the host's mapping, e.g. `db-password` →
/// `SECRET_DB_PASSWORD`).
///
/// # Errors
/// [`Error::InvalidName`] when `name` breaks the naming rule (1 to 128 bytes of
/// `[A-Za-z0-9][A-Za-z0-9_-]*`).
///
/// # Examples
/// ```
/// use attune_guest::{env_var, Error};
///
/// assert_eq!(env_var("api_key").as_deref(), Ok("SECRET_API_KEY"));
/// assert_eq!(env_var("db-password").as_deref(), Ok("SECRET_DB_PASSWORD"));
/// // Several names share one variable; the host refuses to run an action that sees two of them.
/// assert_eq!(env_var("DB_Password"), env_var("db-password"));
/// assert_eq!(env_var("token=x"), Err(Error::InvalidName));
/// ```
pub fn env_var(name: &str) -> Result<String, Error> {
    if !valid_name(name) {
        return Err(Error::InvalidName);
    }
    let mut out = String::with_capacity(ENV_PREFIX.len() + name.len());
    out.push_str(ENV_PREFIX);
    out.extend(name.chars().map(|c| {
        if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
    Ok(out)
}

/// The secret name a `SECRET_*` variable stands for, in lowercase with `_` (the mapping back
/// from [`env_var`]); `None` for a variable the host never produces (no or an empty suffix,
/// lowercase letters, a leading `_`, a `-`, a suffix longer than [`MAX_NAME_BYTES`]).
fn name_of_var(var: &str) -> Option<String> {
    let suffix = var.strip_prefix(ENV_PREFIX)?;
    let mut bytes = suffix.bytes();
    let produced = suffix.len() <= MAX_NAME_BYTES
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    produced.then(|| suffix.to_ascii_lowercase())
}

/// Names of the secrets the environment door delivered to this execution, sorted: one per
/// `SECRET_*` variable, mapped back to a secret name in lowercase with `_`
/// (`SECRET_DB_PASSWORD` → `db_password`).
///
/// Works on every target (components get the same variables as core modules). Only values are
/// secret, so listing names is safe; the values are not read.
///
/// The mapping back is lossy, because [`env_var`] is not one-to-one: case and `-` versus `_`
/// are gone. `SECRET_DB_PASSWORD` may stand for `db_password`, `db-password` or
/// `DB_Password`; the host guarantees only that no two visible secrets share a variable. For
/// every returned name `n`, [`env_var`]`(n)` is the variable it came from, so
/// [`get_secret`](crate::get_secret)`(n)` reads it on `wasm32-wasip1` and natively; on
/// `wasm32-wasip2`, `get-secret` wants the exact stored name, which this list cannot give.
///
/// Not listed: variables the host never produces (e.g. `SECRET_lower`, `SECRET_`, non-UTF-8
/// names) and secrets kept out of the environment: not visible to the action, withheld by
/// `--allow-secret`, undeliverable (wrong key, …), or with a value containing a NUL byte.
///
/// # Examples
/// ```
/// std::env::set_var("SECRET_API_KEY", "k-0123456789");
/// std::env::set_var("SECRET_DB_PASSWORD", "p-0123456789");
/// std::env::set_var("SECRET_lower", "not set by attune-wasm");
///
/// let names = attune_guest::secrets();
/// assert!(names.iter().any(|n| n == "api_key"));
/// assert!(names.iter().any(|n| n == "db_password"));
/// assert!(!names.iter().any(|n| n.eq_ignore_ascii_case("lower")));
/// for n in &names {
///     let var = attune_guest::env_var(n).unwrap();
///     assert!(std::env::var_os(var).is_some());
/// }
/// ```
pub fn secrets() -> Vec<String> {
    let names: std::collections::BTreeSet<String> = std::env::vars_os()
        .filter_map(|(var, _)| var.to_str().and_then(name_of_var))
        .collect();
    names.into_iter().collect()
}

/// [`crate::get_secret`] through the environment (every target but `wasm32-wasip2`).
#[cfg(not(all(target_arch = "wasm32", target_env = "p2")))]
pub(crate) fn get_secret(name: &str) -> Result<String, Error> {
    match std::env::var(env_var(name)?) {
        Ok(value) => Ok(value),
        Err(std::env::VarError::NotPresent) => Err(Error::NotFound),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::Unavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: [&str; 9] = ["", "_a", "-a", "a b", "a=b", "a.b", "ä", "nul\0", "token=x"];

    #[test]
    fn names_follow_the_host_rule() {
        assert!(valid_name("a"));
        assert!(valid_name("9-lives_"));
        assert!(valid_name(&"a".repeat(MAX_NAME_BYTES)));
        assert!(!valid_name(&"a".repeat(MAX_NAME_BYTES + 1)));
        for bad in BAD {
            assert!(!valid_name(bad), "{bad:?}");
            assert_eq!(env_var(bad), Err(Error::InvalidName), "{bad:?}");
        }
    }

    #[test]
    fn env_names_follow_the_seed() {
        for (name, var) in [
            ("api_key", "SECRET_API_KEY"),
            ("db-password", "SECRET_DB_PASSWORD"),
            ("oauth_token", "SECRET_OAUTH_TOKEN"),
            ("Mixed-Case9", "SECRET_MIXED_CASE9"),
        ] {
            assert_eq!(env_var(name).as_deref(), Ok(var));
        }
    }

    #[test]
    fn mapping_back_is_lowercase_and_round_trips_through_env_var() {
        for name in [
            "api_key",
            "db-password",
            "DB_Password",
            "x",
            "9z",
            &"A".repeat(128),
        ] {
            let var = env_var(name).unwrap();
            let back = name_of_var(&var).unwrap();
            assert_eq!(back, name.to_ascii_lowercase().replace('-', "_"));
            assert_eq!(env_var(&back).unwrap(), var);
        }
        let too_long = format!("SECRET_{}", "A".repeat(129));
        for never in [
            "SECRET_",
            "SECRET_lower",
            "SECRET__X",
            "SECRET_A-B",
            "SECRETX",
            "PATH",
            &too_long,
        ] {
            assert_eq!(name_of_var(never), None, "{never}");
        }
    }

    // Each test below uses variable names of its own: tests run in parallel in one process.

    #[test]
    fn fallback_returns_the_typed_errors() {
        std::env::set_var("SECRET_GS_TEST_PRESENT", "value-123");
        std::env::set_var("SECRET_GS_TEST_EMPTY", "");
        assert_eq!(get_secret("gs_test_present").as_deref(), Ok("value-123"));
        // Lossy: case and `-`/`_` do not matter on the environment door.
        assert_eq!(get_secret("GS-Test-Present").as_deref(), Ok("value-123"));
        assert_eq!(get_secret("gs_test_empty").as_deref(), Ok(""));
        assert_eq!(get_secret("gs_test_absent"), Err(Error::NotFound));
        for bad in BAD {
            assert_eq!(get_secret(bad), Err(Error::InvalidName), "{bad:?}");
        }
        assert_eq!(crate::get_secret("gs_test_absent"), Err(Error::NotFound));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_value_is_unavailable() {
        use std::os::unix::ffi::OsStrExt;
        let raw = std::ffi::OsStr::from_bytes(b"bad-\xff-value");
        std::env::set_var("SECRET_GS_TEST_BINARY", raw);
        assert_eq!(get_secret("gs_test_binary"), Err(Error::Unavailable));
        assert!(secrets().iter().any(|n| n == "gs_test_binary"));
    }

    #[test]
    fn secrets_lists_what_the_host_could_have_set() {
        std::env::set_var("SECRET_GS_LIST_ONE", "1111");
        std::env::set_var("SECRET_GS_LIST-TWO", "2222");
        std::env::set_var("SECRET_gs_list_three", "3333");
        let names = secrets();
        assert!(names.iter().any(|n| n == "gs_list_one"), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n.contains("two") || n.contains("three")),
            "{names:?}"
        );
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, names);
        for n in &names {
            assert!(std::env::var_os(env_var(n).unwrap()).is_some(), "{n}");
        }
    }
}
