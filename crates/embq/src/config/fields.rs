//! Parsing one variable's value (numbers in bounds, booleans, ports, durations with units)
//! and collecting every problem, each naming its variable.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// Every problem found in the configuration, each naming its variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Collects problems while fields are parsed.
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn field<T>(
        &mut self,
        var: &str,
        raw: &Option<String>,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        match raw.as_deref().map(str::trim) {
            None | Some("") => default,
            Some(v) => match parse(v) {
                Ok(t) => t,
                Err(why) => {
                    // Never echo the value of a secret-bearing variable.
                    let shown = if var.contains("KEY") || var.contains("TOKEN") || var.contains("URL") {
                        String::new()
                    } else {
                        format!(" (got {v:?})")
                    };
                    self.0.push(format!("{var}: {why}{shown}"));
                    default
                }
            },
        }
    }
}

/// A whole number in `min..=max` (bounds keep every later conversion and allocation sane).
pub(super) fn bounded(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> {
    move |v| match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// A whole number in `1..=max` as a `NonZeroUsize`.
pub(super) fn count_up_to(max: u64) -> impl Fn(&str) -> Result<NonZeroUsize, String> {
    move |v| {
        let n = bounded(1, max)(v)?;
        usize::try_from(n)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| format!("must be a whole number from 1 to {max}"))
    }
}

/// A whole number of at least 1.
pub(super) fn positive_u32(v: &str) -> Result<NonZeroU32, String> {
    v.parse::<NonZeroU32>().map_err(|_| "must be a whole number of at least 1".to_string())
}

/// A TCP port; 0 asks the system for a free one.
pub(super) fn port(v: &str) -> Result<u16, String> {
    v.parse::<u16>().map_err(|_| "must be a port number from 0 to 65535".to_string())
}

/// `true`/`false`, also `1`/`0`, `yes`/`no`, `on`/`off`, in any case.
pub(super) fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

/// Parses a duration with its unit (`500ms`, `30s`, `5m`; see [`embq_duration`]), at most
/// 10^12 ms so every later conversion stays exact.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let d = embq_duration::parse(v).map_err(|e| e.to_string())?;
    if d > Duration::from_millis(1_000_000_000_000) {
        return Err("out of range (at most 10^12 ms)".into());
    }
    Ok(d)
}

/// A duration with its unit, greater than zero.
pub(super) fn nonzero_duration(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}
