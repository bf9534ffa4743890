//! [`Error`]: the guest-visible failures of `get-secret` (WIT enum `secret-error`).

use std::fmt;

/// Why [`get_secret`](crate::get_secret) returned no value.
///
/// One variant per case of the WIT enum `secret-error` in `wit/action.wit` (same order, names in
/// UpperCamelCase: `not-found` → [`Error::NotFound`]). Host faults reach the guest as
/// [`Error::Unavailable`] without detail; the host logs the reason (never the value).
///
/// `Display` is a short English phrase without the secret's name or value, safe to print.
///
/// # Examples
/// ```
/// use attune_guest::Error;
///
/// // An action that can run without an optional secret, but not with a broken one.
/// fn optional(name: &str) -> Result<Option<String>, Error> {
///     match attune_guest::get_secret(name) {
///         Ok(value) => Ok(Some(value)),
///         Err(Error::NotFound) => Ok(None),
///         Err(e) => Err(e),
///     }
/// }
/// assert_eq!(optional("not_configured_anywhere"), Ok(None));
/// assert_eq!(optional("bad name").unwrap_err().to_string(), "invalid secret name");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// `not-found`: no secret of that name is visible to this action (at any level).
    NotFound,
    /// `access-denied`: the secret is visible but this execution may not read it
    /// (`attune-wasm run --allow-secret` restricts the set; also every call past the
    /// per-execution budget of 10,000 calls).
    AccessDenied,
    /// `invalid-name`: the name breaks the rule: 1 to 128 bytes of
    /// `[A-Za-z0-9][A-Za-z0-9_-]*`.
    InvalidName,
    /// `unavailable`: the secret exists but the host could not deliver it (no key configured,
    /// wrong key, corrupt ciphertext).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The WIT case name of each variant. The match is exhaustive: a new variant must be added
    /// here, and then to the WIT file, or the test below fails.
    fn wit_case(e: Error) -> &'static str {
        match e {
            Error::NotFound => "not-found",
            Error::AccessDenied => "access-denied",
            Error::InvalidName => "invalid-name",
            Error::Unavailable => "unavailable",
        }
    }

    /// The cases of `enum secret-error` in `wit/action.wit`, in order.
    fn wit_cases() -> Vec<String> {
        let wit = include_str!("../../wit/action.wit");
        let body = wit
            .split_once("enum secret-error {")
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(body, _)| body)
            .unwrap_or_else(|| panic!("no `enum secret-error` in wit/action.wit"));
        body.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .map(|l| l.trim_end_matches(',').to_owned())
            .collect()
    }

    #[test]
    fn variants_match_the_wit_enum_in_order() {
        let ours: Vec<&str> = [
            Error::NotFound,
            Error::AccessDenied,
            Error::InvalidName,
            Error::Unavailable,
        ]
        .into_iter()
        .map(wit_case)
        .collect();
        assert_eq!(wit_cases(), ours);
    }

    #[test]
    fn messages_are_distinct_and_name_nothing() {
        let all = [
            Error::NotFound,
            Error::AccessDenied,
            Error::InvalidName,
            Error::Unavailable,
        ];
        let texts: std::collections::BTreeSet<String> =
            all.iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), all.len());
        assert!(texts.iter().all(|t| t.contains("secret")), "{texts:?}");
    }
}
