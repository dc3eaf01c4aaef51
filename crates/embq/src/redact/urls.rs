//! URLs that may carry credentials (the database's, a provider's), printed only redacted.

use std::fmt;

use serde::Serialize;

/// A database URL; its password is redacted whenever it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub(crate) String);

impl DatabaseUrl {
    /// Parses and checks the scheme.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.starts_with("sqlite:") {
            return Ok(Self(raw.to_string()));
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
            // Options (sslmode, ports, …) are checked now, not at the first connection; the
            // driver's messages name the option, never the password.
            <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(raw)
                .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
            return Ok(Self(raw.to_string()));
        }
        Err("must start with postgres://, postgresql:// or sqlite:".to_string())
    }
    /// The full URL, password included, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether this is a SQLite URL.
    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }
    /// The port, if the URL names one.
    pub fn port(&self) -> Option<u16> {
        url::Url::parse(&self.0).ok().and_then(|u| u.port())
    }
    /// The URL with every credential (password, `password=`, `sslpassword=`) redacted.
    pub fn redacted(&self) -> String {
        super::redact_url(&self.0)
    }
    /// The URL to hand to sqlx: without `sslpassword`, which sqlx does not support and
    /// would log, value included, as an unrecognized parameter.
    pub fn for_driver(&self) -> String {
        let Ok(mut u) = url::Url::parse(&self.0) else {
            return self.0.clone();
        };
        let Some(query) = u.query() else {
            return self.0.clone();
        };
        let kept: Vec<&str> =
            query.split('&').filter(|seg| !seg.to_ascii_lowercase().starts_with("sslpassword=")).collect();
        if kept.len() == query.split('&').count() {
            return self.0.clone();
        }
        tracing::warn!("DATABASE_URL: sslpassword is not supported by the PostgreSQL driver and is ignored");
        let kept = kept.join("&");
        u.set_query((!kept.is_empty()).then_some(kept.as_str()));
        u.to_string()
    }
    /// `text` (a driver's error, say) with this URL's credentials scrubbed out.
    pub fn scrub(&self, text: &str) -> String {
        super::scrub(text, &super::url_secrets(&self.0))
    }
}

/// Debug, Display and Serialize print a URL type only through its `redacted()` form.
macro_rules! print_redacted {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.redacted())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.redacted())
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.redacted())
            }
        }
    )*};
}

print_redacted!(DatabaseUrl, HttpUrl);

/// A provider's base URL; any userinfo password is redacted whenever it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl(pub(crate) String);

impl HttpUrl {
    /// The full URL, credentials included, for sending requests.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with every credential redacted.
    pub fn redacted(&self) -> String {
        super::redact_url(&self.0)
    }
}

/// Parses a provider's base URL (http or https).
pub(crate) fn http_url(v: &str) -> Result<HttpUrl, String> {
    let u = url::Url::parse(v).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(HttpUrl(v.trim_end_matches('/').to_string()))
}
