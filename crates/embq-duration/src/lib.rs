//! Duration settings shared by the worker and the controller: always a number with its unit.
//!
//! A bare number used to mean milliseconds to the worker and seconds to the controller, so
//! `DRAIN_TIMEOUT=30` was two different things. Every duration now names its unit
//! (`500ms`, `30s`, `5m`, `1h`, or combined as `1m 30s`); a bare number is refused with the
//! forms that are accepted. `0` alone is allowed: it means the same in every unit.

use std::time::Duration;

/// The forms a duration may take, quoted in every error.
pub const FORMS: &str = "a number with its unit, such as 500ms, 30s, 5m, 1h or 1m 30s";

/// Why a duration setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// A number without its unit.
    #[error("{0:?} has no unit: write {FORMS}")]
    NoUnit(String),
    /// Not a duration at all.
    #[error("{value:?} is not a duration ({why}): write {FORMS}")]
    Invalid {
        /// The value given.
        value: String,
        /// What the parser found wrong.
        why: String,
    },
}

/// Parses a duration setting: `500ms`, `30s`, `5m`, `1h`, `1m 30s` (humantime's units).
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    let v = value.trim();
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(DurationError::NoUnit(v.to_string()));
    }
    humantime::parse_duration(v).map_err(|e| DurationError::Invalid { value: v.to_string(), why: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_is_read_and_a_bare_number_is_refused() {
        for (v, want) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            (" 5m ", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1m 30s", Duration::from_secs(90)),
            ("2days", Duration::from_secs(172_800)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1.5s", Duration::from_millis(1500)),
        ] {
            assert_eq!(parse(v), Ok(want), "{v}");
        }
        for bare in ["30", "25000", "1.5"] {
            let e = parse(bare).unwrap_err();
            assert_eq!(e, DurationError::NoUnit(bare.to_string()));
            assert!(e.to_string().contains("500ms, 30s, 5m, 1h"), "{e}");
        }
        for bad in ["", "soon", "5 parsecs", "-1s"] {
            assert!(matches!(parse(bad), Err(DurationError::Invalid { .. })), "{bad}");
        }
    }
}
