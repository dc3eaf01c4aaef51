//! Keeping credentials out of printed text: [`Secret`] values that never print, URLs with
//! their passwords redacted, and known secrets scrubbed from messages that came from elsewhere
//! (a provider, a driver).
//!
//! A URL carries credentials in two places: the userinfo password and the query parameters
//! `password` and `sslpassword` (libpq's names, which sqlx reads too). `sslkey`/`sslcert`
//! are file paths, not secrets, and are kept.

use std::fmt;

use serde::Serialize;
use url::{Position, Url};

mod urls;

pub(crate) use urls::http_url;
pub use urls::{DatabaseUrl, HttpUrl};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// A secret string whose `Debug`/`Display` never reveal it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Query parameters whose value is a credential, compared case-insensitively after decoding.
const SECRET_PARAMS: [&str; 2] = ["password", "sslpassword"];

/// The URL with every credential replaced by `[redacted]`. A URL that does not parse is never
/// echoed: only its scheme and host survive, as far as they can be found.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut u) = Url::parse(raw.trim()) else {
        return unparseable(raw.trim());
    };
    if let Some(query) = u.query() {
        let cleaned = query.split('&').map(redact_pair).collect::<Vec<_>>().join("&");
        u.set_query(Some(&cleaned));
    }
    if u.password().is_none() {
        return u.to_string();
    }
    // `set_password` would percent-encode the brackets of `[redacted]`: splice it in instead.
    if u.set_password(None).is_err() {
        return unparseable(raw.trim());
    }
    format!("{}:{REDACTED}@{}", &u[..Position::AfterUsername], &u[Position::BeforeHost..])
}

/// Every credential a URL carries, as written and percent-decoded, for scrubbing messages
/// (a driver's error) that might quote one.
pub fn url_secrets(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(u) = Url::parse(raw.trim()) else {
        return out;
    };
    if let Some(pw) = u.password() {
        out.push(pw.to_string());
        out.extend(percent_decode(pw));
    }
    for seg in u.query().unwrap_or_default().split('&') {
        if let Some((key, value)) = seg.split_once('=') {
            if is_secret_param(key) {
                out.push(value.to_string());
                out.extend(url::form_urlencoded::parse(seg.as_bytes()).next().map(|(_, v)| v.into_owned()));
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    out
}

/// `text` with every occurrence of each secret replaced by `[redacted]`. Longer secrets go
/// first, so that one containing another is not left half-replaced.
pub fn scrub<S: AsRef<str>>(text: &str, secrets: &[S]) -> String {
    let mut sorted: Vec<&str> = secrets.iter().map(AsRef::as_ref).filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in sorted {
        if out.contains(s) {
            out = out.replace(s, REDACTED);
        }
    }
    out
}

/// At most `max` bytes of `s`, cut on a character boundary, with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn redact_pair(seg: &str) -> String {
    match seg.split_once('=') {
        Some((key, _)) if is_secret_param(key) => format!("{key}={REDACTED}"),
        _ => seg.to_string(),
    }
}

fn is_secret_param(key: &str) -> bool {
    let decoded = url::form_urlencoded::parse(key.as_bytes()).next().map(|(k, _)| k.into_owned());
    let key = decoded.unwrap_or_else(|| key.to_string());
    SECRET_PARAMS.iter().any(|p| key.eq_ignore_ascii_case(p))
}

fn percent_decode(s: &str) -> Option<String> {
    let decoded = url::form_urlencoded::parse(format!("x={s}").as_bytes()).next()?.1.into_owned();
    (decoded != s).then_some(decoded)
}

/// `scheme://host/[unparseable URL]`. The host follows the last `@` before any query or
/// fragment (which may hold `password=`); when an `@` sits only beyond that point the
/// userinfo cannot be told apart from the host, and no host is printed.
fn unparseable(raw: &str) -> String {
    const MARK: &str = "[unparseable URL]";
    let Some((scheme, rest)) = raw.split_once("://") else {
        return MARK.to_string();
    };
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return MARK.to_string();
    }
    let before_query = rest.split(['?', '#']).next().unwrap_or_default();
    let (userinfo, after) = match before_query.rsplit_once('@') {
        Some((_, after)) => (format!("{REDACTED}@"), after),
        None if rest.contains('@') => return format!("{scheme}://{MARK}"),
        None => (String::new(), before_query),
    };
    let host = after.split('/').next().unwrap_or_default();
    format!("{scheme}://{userinfo}{host}/{MARK}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_form_of_a_url_is_redacted() {
        for (raw, want) in [
            ("postgres://u:hunter2@127.0.0.1:5432/db", "postgres://u:[redacted]@127.0.0.1:5432/db"),
            ("postgresql://u@h/db?password=hunter2", "postgresql://u@h/db?password=[redacted]"),
            (
                "postgres://u@h/db?sslmode=verify-full&sslpassword=hunter2&sslkey=/k.pem&sslcert=/c.pem",
                "postgres://u@h/db?sslmode=verify-full&sslpassword=[redacted]&sslkey=/k.pem&sslcert=/c.pem",
            ),
            (
                "postgres://u:hunter2@h:1/db?password=hunter3&application_name=x",
                "postgres://u:[redacted]@h:1/db?password=[redacted]&application_name=x",
            ),
            ("postgres://u:hun%74er2@h/db?pass%77ord=hun%74er3", "postgres://u:[redacted]@h/db?pass%77ord=[redacted]"),
            ("postgres://u@h/db?PASSWORD=hunter2", "postgres://u@h/db?PASSWORD=[redacted]"),
            ("https://user:hunter2@proxy.local:8443/v1", "https://user:[redacted]@proxy.local:8443/v1"),
            ("http://127.0.0.1:8081", "http://127.0.0.1:8081/"),
            ("sqlite://embq.db", "sqlite://embq.db"),
        ] {
            assert_eq!(redact_url(raw), want, "{raw}");
        }
    }

    #[test]
    fn an_unparseable_url_keeps_only_scheme_and_host() {
        for (raw, want) in [
            ("postgres://u:hunter2@[bad/db?password=hunter3", "postgres://[redacted]@[bad/[unparseable URL]"),
            ("postgres://u:hunter2@h:99999/db", "postgres://[redacted]@h:99999/[unparseable URL]"),
            ("hunter2", "[unparseable URL]"),
            ("postgres://u:pa?ss@h:99999/db", "postgres://[unparseable URL]"),
            ("postgres://h:99999/db?password=a@hunter3", "postgres://[unparseable URL]"),
        ] {
            let got = redact_url(raw);
            assert_eq!(got, want, "{raw}");
            assert!(!got.contains("hunter"), "{got}");
        }
    }

    #[test]
    fn url_secrets_are_found_raw_and_decoded() {
        let s = url_secrets("postgres://u:hun%74er2@h/db?password=hunter%33&sslpassword=x%2By&sslkey=/k");
        assert_eq!(s, vec!["hun%74er2", "hunter%33", "hunter2", "hunter3", "x%2By", "x+y"]);
        assert!(url_secrets("postgres://u@h/db").is_empty());
    }

    #[test]
    fn scrub_replaces_every_secret_longest_first() {
        let got = scrub("key sk-abc, header Bearer sk-abc, sk-abcdef", &["sk-abc", "Bearer sk-abc", "sk-abcdef", ""]);
        assert_eq!(got, "key [redacted], header [redacted], [redacted]");
        assert_eq!(clip("ééé", 3), "é…");
    }
}
