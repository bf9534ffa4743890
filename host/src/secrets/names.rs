//! Validated names: secret names, pack and action refs, owners (seed "Hierarchical Secret
//! Ownership", "Environment Variable Naming").
//!
//! Names are checked when they are built ("parse, don't validate"), so later code never
//! re-checks them. The rule for every segment is `[A-Za-z0-9][A-Za-z0-9_-]*`, 1 to 128 bytes:
//! exactly what maps cleanly to an environment variable name.

use std::fmt;

/// Longest secret name, pack ref segment or action name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Prefix of every injected environment variable (seed "Environment Variable Naming").
pub const ENV_PREFIX: &str = "SECRET_";

/// A name, pack ref or action ref that breaks the naming rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {shown}: {reason} (rule: 1 to {MAX_NAME_BYTES} bytes of [A-Za-z0-9][A-Za-z0-9_-]*{extra})")]
pub struct NameError {
    what: &'static str,
    /// The offending input, escaped and truncated so that it is safe to print.
    shown: String,
    reason: &'static str,
    extra: &'static str,
}

/// `Result` with [`NameError`] as the default error type.
pub type Result<T, E = NameError> = std::result::Result<T, E>;

/// Escapes and shortens user input for error messages (control bytes, NUL, non-ASCII visible).
fn shown(input: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = input
        .chars()
        .take(MAX)
        .flat_map(char::escape_default)
        .collect();
    if input.chars().count() > MAX {
        out.push_str("...");
    }
    format!("\"{out}\"")
}

fn check_segment(input: &str, what: &'static str, extra: &'static str) -> Result<()> {
    let err = |reason| NameError {
        what,
        shown: shown(input),
        reason,
        extra,
    };
    if input.is_empty() {
        return Err(err("it is empty"));
    }
    if input.len() > MAX_NAME_BYTES {
        return Err(err("it is too long"));
    }
    let mut bytes = input.bytes();
    if !bytes.next().is_some_and(|b| b.is_ascii_alphanumeric()) {
        return Err(err("it must start with an ASCII letter or digit"));
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(err(
            "it may contain only ASCII letters, digits, '_' and '-'",
        ));
    }
    Ok(())
}

/// A secret name, e.g. `api_key` or `db-password`. Case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

impl SecretName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`NameError`] stating the rule, when `name` is empty, longer than [`MAX_NAME_BYTES`] or
    /// has a character outside `[A-Za-z0-9_-]` (or starts with `_`/`-`).
    ///
    /// # Examples
    /// ```
    /// use attune_wasm::secrets::names::SecretName;
    /// assert_eq!(SecretName::new("db-password")?.env_var(), "SECRET_DB_PASSWORD");
    /// assert!(SecretName::new("token=x").is_err());
    /// # Ok::<(), attune_wasm::secrets::names::NameError>(())
    /// ```
    pub fn new(name: &str) -> Result<Self> {
        check_segment(name, "secret name", "")?;
        Ok(Self(name.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The environment variable this secret is injected as: `SECRET_` + uppercase, `-` → `_`
    /// (seed "Environment Variable Naming": `api_key` → `SECRET_API_KEY`).
    pub fn env_var(&self) -> String {
        let mut out = String::with_capacity(ENV_PREFIX.len() + self.0.len());
        out.push_str(ENV_PREFIX);
        out.extend(self.0.chars().map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        }));
        out
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A pack ref, e.g. `mypack`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackRef(String);

impl PackRef {
    /// Validates a pack ref (one segment).
    ///
    /// # Errors
    /// [`NameError`] when `pack` breaks the naming rule.
    pub fn new(pack: &str) -> Result<Self> {
        check_segment(pack, "pack ref", "")?;
        Ok(Self(pack.to_owned()))
    }

    /// The ref as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// An action ref `pack.action`, e.g. `mypack.deploy`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActionRef {
    full: String,
    dot: usize,
}

impl ActionRef {
    /// Parses `pack.action`: exactly one `.`, each side a valid segment.
    ///
    /// # Errors
    /// [`NameError`] when there is not exactly one `.` or a side breaks the naming rule.
    pub fn new(action: &str) -> Result<Self> {
        const EXTRA: &str = ", as pack.action";
        let Some((pack, name)) = action.split_once('.') else {
            return Err(NameError {
                what: "action ref",
                shown: shown(action),
                reason: "it has no '.' between pack and action",
                extra: EXTRA,
            });
        };
        check_segment(pack, "action ref", EXTRA)
            .and_then(|()| check_segment(name, "action ref", EXTRA))
            .map_err(|mut e| {
                e.shown = shown(action);
                e
            })?;
        Ok(Self {
            full: action.to_owned(),
            dot: pack.len(),
        })
    }

    /// The pack part, e.g. `mypack` for `mypack.deploy`.
    pub fn pack(&self) -> PackRef {
        PackRef(self.full[..self.dot].to_owned())
    }

    /// The full ref, e.g. `mypack.deploy`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for ActionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.full)
    }
}

/// Owner type of a secret, from least to most specific (seed "Hierarchical Secret Ownership").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnerType {
    /// Visible to every action.
    System,
    /// Visible to every action of one pack.
    Pack,
    /// Visible to one action.
    Action,
}

impl OwnerType {
    /// The stored spelling: `system`, `pack` or `action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Pack => "pack",
            Self::Action => "action",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "system" => Some(Self::System),
            "pack" => Some(Self::Pack),
            "action" => Some(Self::Action),
            _ => None,
        }
    }
}

/// Who owns a secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// System level (owner ref is empty).
    System,
    /// A pack.
    Pack(PackRef),
    /// An action.
    Action(ActionRef),
}

impl Owner {
    /// The owner type.
    pub fn owner_type(&self) -> OwnerType {
        match self {
            Self::System => OwnerType::System,
            Self::Pack(_) => OwnerType::Pack,
            Self::Action(_) => OwnerType::Action,
        }
    }

    /// The owner ref as stored: `""` for system, `mypack`, `mypack.deploy`.
    pub fn owner_ref(&self) -> &str {
        match self {
            Self::System => "",
            Self::Pack(p) => p.as_str(),
            Self::Action(a) => a.as_str(),
        }
    }

    /// Rebuilds an owner from its stored columns.
    ///
    /// # Errors
    /// [`NameError`] when the owner ref is not valid for the owner type.
    pub fn from_parts(owner_type: OwnerType, owner_ref: &str) -> Result<Self> {
        Ok(match owner_type {
            OwnerType::System => Self::System,
            OwnerType::Pack => Self::Pack(PackRef::new(owner_ref)?),
            OwnerType::Action => Self::Action(ActionRef::new(owner_ref)?),
        })
    }

    /// The Attune-style ref of a secret of this owner: `name`, `pack.name` or
    /// `pack.action.name`.
    pub fn secret_ref(&self, name: &SecretName) -> String {
        match self {
            Self::System => name.to_string(),
            _ => format!("{}.{name}", self.owner_ref()),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system"),
            Self::Pack(p) => write!(f, "pack {p}"),
            Self::Action(a) => write!(f, "action {a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn env_names_follow_the_seed() {
        for (name, env) in [
            ("api_key", "SECRET_API_KEY"),
            ("db-password", "SECRET_DB_PASSWORD"),
            ("oauth_token", "SECRET_OAUTH_TOKEN"),
            ("Mixed-Case9", "SECRET_MIXED_CASE9"),
        ] {
            assert_eq!(SecretName::new(name).unwrap().env_var(), env);
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_rule() {
        let long = "a".repeat(200);
        for bad in [
            "",
            "token=x",
            "with space",
            "nul\0byte",
            "pässwörd",
            "_lead",
            "-lead",
            "a.b",
            &long,
        ] {
            let err = SecretName::new(bad).unwrap_err().to_string();
            assert!(err.contains("[A-Za-z0-9][A-Za-z0-9_-]*"), "{err}");
            assert!(!err.contains('\0'));
        }
        assert!(SecretName::new(&"a".repeat(128)).is_ok());
        assert!(SecretName::new(&"a".repeat(129)).is_err());
    }

    #[test]
    fn action_refs() {
        let a = ActionRef::new("mypack.deploy").unwrap();
        assert_eq!(a.pack().as_str(), "mypack");
        for bad in ["mypack", "a.b.c", ".x", "x.", "my pack.x"] {
            assert!(ActionRef::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_refs() {
        let n = SecretName::new("api_key").unwrap();
        assert_eq!(Owner::System.secret_ref(&n), "api_key");
        let a = Owner::Action(ActionRef::new("p.a").unwrap());
        assert_eq!(a.secret_ref(&n), "p.a.api_key");
    }
}
