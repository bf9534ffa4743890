//! Times as the store keeps them: [`Timestamp`].

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, SubsecRound as _, Utc};

/// A time as the store keeps it: UTC, millisecond precision, written as RFC 3339 text
/// (`2026-11-29T08:22:01.407Z`, RFC 3339 §5.6 with `Z`). One fixed text form, so that times
/// compare correctly as text on SQLite (`audit list --since`), and a time read back equals the
/// time written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// Now, truncated to milliseconds.
    pub fn now() -> Self {
        Self::from(Utc::now())
    }

    /// Parses an RFC 3339 time with any offset (stored text, or `--since`); `None` when `text`
    /// is not one.
    pub fn parse(text: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| Self::from(at.with_timezone(&Utc)))
    }

    /// The time as a chrono UTC time.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }
}

impl From<DateTime<Utc>> for Timestamp {
    /// `at`, truncated to milliseconds.
    fn from(at: DateTime<Utc>) -> Self {
        Self(at.trunc_subsecs(3))
    }
}

impl fmt::Display for Timestamp {
    /// The stored form: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

/// `text` is not an RFC 3339 time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not an RFC 3339 time")]
pub struct NotATime;

impl FromStr for Timestamp {
    type Err = NotATime;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).ok_or(NotATime)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_stored_form_round_trips_and_sorts_as_text() {
        let a = Timestamp::parse("2026-11-29T08:22:01.407Z").unwrap();
        assert_eq!(a.to_string(), "2026-11-29T08:22:01.407Z");
        let b = Timestamp::parse("2026-11-29T09:22:01.4071+01:00").unwrap();
        assert_eq!(b, a, "other offsets become UTC, sub-milliseconds are cut");
        let later = Timestamp::parse("2026-11-29T08:22:10Z").unwrap();
        assert!(later > a && later.to_string() > a.to_string());
        let now = Timestamp::now();
        assert_eq!(Timestamp::parse(&now.to_string()), Some(now));
        assert!(Timestamp::parse("yesterday").is_none());
        assert!("2026-13-01T00:00:00Z".parse::<Timestamp>().is_err());
    }
}
