//! The one place a provider's error messages are made from what a server sent.
//!
//! A server (or a proxy before it) may echo the request's credentials anywhere: in an error
//! body, or in a 2xx body whose wrongly-typed field serde_json then quotes in its error text.
//! So every message derived from a response, whatever its status, is scrubbed of every
//! secret the provider sends and clipped to a short excerpt before it becomes an error,
//! and so before it reaches `last_error`, the dead-letter listing or the logs.

use std::fmt;

use super::ProviderError;
use crate::redact;

/// The longest excerpt of a response an error message keeps.
pub const MAX_EXCERPT: usize = 200;

/// The secrets a provider sends: the key, its `Bearer` form, and the key as JSON and Rust
/// string escaping would quote it (serde_json's errors use the latter).
#[derive(Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The secrets of a provider sending `api_key` (none for a keyless server).
    pub fn new(api_key: Option<&str>) -> Self {
        let Some(key) = api_key.filter(|k| !k.is_empty()) else {
            return Self::default();
        };
        let unquote = |s: String| s.trim_matches('"').to_string();
        let mut all = vec![format!("Bearer {key}"), key.to_string(), unquote(format!("{key:?}"))];
        all.extend(serde_json::to_string(key).ok().map(unquote));
        all.sort();
        all.dedup();
        Self(all)
    }

    /// `text` scrubbed of every secret, not clipped: for text that is parsed further.
    pub fn scrub(&self, text: &str) -> String {
        redact::scrub(text, &self.0)
    }

    /// An error message from response-derived `text`: scrubbed first (a clip could cut a
    /// secret in two and leave half of it), then clipped.
    pub fn message(&self, text: &str) -> String {
        redact::clip(&self.scrub(text), MAX_EXCERPT)
    }

    /// `e` with its message made by [`Secrets::message`].
    pub fn error(&self, e: ProviderError) -> ProviderError {
        e.map_message(|m| self.message(m))
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_every_form_of_the_key_and_are_clipped() {
        let s = Secrets::new(Some("sk-test-key"));
        let serde_text = r#"invalid type: string "Bearer sk-test-key", expected usize at line 1 column 40"#;
        let m = s.message(serde_text);
        assert_eq!(m, r#"invalid type: string "[redacted]", expected usize at line 1 column 40"#);
        let long = format!("{}sk-test-key", "x".repeat(195));
        let m = s.message(&long);
        assert!(!m.contains("sk-"), "{m}");
        assert!(m.len() <= MAX_EXCERPT + '…'.len_utf8(), "{}", m.len());
        assert_eq!(Secrets::new(None).message("plain"), "plain");
        assert!(!format!("{s:?}").contains("sk-test-key"));
    }

    #[test]
    fn escaped_forms_of_a_key_are_scrubbed_too() {
        let s = Secrets::new(Some(r#"k"ey\1"#));
        let m = s.message(r#"json "k\"ey\\1" and raw k"ey\1"#);
        assert!(!m.contains("ey"), "{m}");
    }

    #[test]
    fn errors_of_every_kind_are_scrubbed() {
        let s = Secrets::new(Some("sk-test-key"));
        for e in [
            ProviderError::InvalidResponse("got sk-test-key".into()),
            ProviderError::Transient("got sk-test-key".into()),
            ProviderError::InvalidInput { index: 1, message: "got sk-test-key".into() },
            ProviderError::Unauthorized("got sk-test-key".into()),
        ] {
            let shown = s.error(e).to_string();
            assert!(!shown.contains("sk-test-key") && shown.contains("[redacted]"), "{shown}");
        }
    }
}
