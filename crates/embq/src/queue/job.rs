//! A job as it is enqueued: its fields, the input limits every store enforces alike, and the
//! deduplication of keys within one call.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Lane;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// The kind of record the text belongs to, e.g. `receipt`.
    pub source_type: String,
    /// The record's id.
    #[serde(deserialize_with = "string_or_number")]
    pub source_id: String,
    /// Which text of the record, e.g. `full_text` or `merchant`.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// The text to embed.
    pub text: String,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Free-form JSON kept with the job.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// `online` (the default) or `batch`: the half-price OpenAI Batch API lane.
    #[serde(default)]
    pub lane: Lane,
}

fn default_content_type() -> String {
    "default".to_string()
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(serde_json::Number),
    }
    match Id::deserialize(d)? {
        Id::S(s) => Ok(s),
        // Whole numbers up to 64 bits are exact; anything else went through a float.
        Id::N(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        Id::N(n) => Err(serde::de::Error::custom(format!(
            "source_id {n} is not a whole number that fits 64 bits exactly: write it as a string"
        ))),
    }
}

/// Longest text accepted, in bytes; longer inputs are refused at enqueue.
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// Longest `source_type`, `source_id` or `content_type`, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest metadata, in bytes of its JSON text.
pub const MAX_METADATA_BYTES: usize = 64 << 10;

impl NewJob {
    /// Checks the fields a store cannot fix, naming the bad one.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in
            [("source_type", &self.source_type), ("source_id", &self.source_id), ("content_type", &self.content_type)]
        {
            if value.trim().is_empty() {
                return Err(format!("{name} must not be empty"));
            }
            if value.len() > MAX_KEY_BYTES {
                return Err(format!("{name} must be at most {MAX_KEY_BYTES} bytes"));
            }
            // PostgreSQL text cannot hold NUL; SQLite could. Both stores refuse it alike.
            if value.contains('\0') {
                return Err(format!("{name} must not contain NUL characters"));
            }
        }
        if let Some(m) = &self.metadata {
            let json = m.to_string();
            if json.len() > MAX_METADATA_BYTES {
                return Err(format!(
                    "metadata is {} bytes of JSON; at most {MAX_METADATA_BYTES} are accepted",
                    json.len()
                ));
            }
            // jsonb refuses the \u0000 escape.
            if has_nul(m) {
                return Err("metadata must not contain NUL characters".into());
            }
        }
        if self.text.trim().is_empty() {
            return Err("text must not be empty".into());
        }
        if self.text.len() > MAX_TEXT_BYTES {
            return Err(format!("text is {} bytes; at most {MAX_TEXT_BYTES} are accepted", self.text.len()));
        }
        if self.text.contains('\0') {
            return Err("text must not contain NUL characters".into());
        }
        Ok(())
    }

    /// SHA-256 of the text, which decides whether a stored embedding is still current.
    pub fn text_sha256(&self) -> Vec<u8> {
        text_sha256(&self.text)
    }
}

/// Whether any string or key inside a JSON value holds a NUL character.
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// SHA-256 of a text.
pub fn text_sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// Drops duplicate keys within one enqueue call, keeping the last (newest) text.
pub(crate) fn dedupe_keys(jobs: &[NewJob]) -> Vec<&NewJob> {
    let mut seen = std::collections::HashMap::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        seen.insert((&j.source_type, &j.source_id, &j.content_type), i);
    }
    let mut keep: Vec<usize> = seen.into_values().collect();
    keep.sort_unstable();
    keep.into_iter().map(|i| &jobs[i]).collect()
}

/// What an enqueue call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnqueueReport {
    /// New jobs.
    pub inserted: u64,
    /// Pending jobs whose text was replaced.
    pub replaced: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, text: &str) -> NewJob {
        NewJob {
            source_type: "receipt".into(),
            source_id: id.into(),
            content_type: "default".into(),
            text: text.into(),
            priority: 0,
            metadata: None,
            lane: Lane::Online,
        }
    }

    #[test]
    fn duplicate_keys_keep_the_last_text() {
        let jobs = vec![job("1", "a"), job("2", "b"), job("1", "c")];
        let kept: Vec<_> = dedupe_keys(&jobs).into_iter().map(|j| j.text.clone()).collect();
        assert_eq!(kept, vec!["b", "c"]);
    }

    #[test]
    fn nul_characters_and_oversized_metadata_are_refused_alike_in_every_store() {
        let mut j = job("1", "ok");
        j.source_id = "a\0b".into();
        assert_eq!(j.validate().unwrap_err(), "source_id must not contain NUL characters");
        let mut j = job("1", "ok");
        j.metadata = Some(serde_json::json!({ "k": "a\u{0}b" }));
        assert_eq!(j.validate().unwrap_err(), "metadata must not contain NUL characters");
        let mut j = job("1", "ok");
        j.metadata = Some(serde_json::json!({ "k": "x".repeat(MAX_METADATA_BYTES) }));
        assert!(j.validate().unwrap_err().starts_with("metadata is 65544 bytes"));
    }

    #[test]
    fn numeric_ids_stay_exact_or_are_refused() {
        let id = |raw: &str| {
            serde_json::from_str::<NewJob>(&format!(r#"{{"source_type":"r","source_id":{raw},"text":"x"}}"#))
                .map(|j| j.source_id)
                .map_err(|e| e.to_string())
        };
        assert_eq!(id("9007199254740993").unwrap(), "9007199254740993", "2^53 + 1 is kept exactly");
        assert_eq!(id("18446744073709551615").unwrap(), "18446744073709551615");
        assert_eq!(id("-9223372036854775808").unwrap(), "-9223372036854775808");
        assert!(id("18446744073709551616").unwrap_err().contains("write it as a string"));
        assert!(id("1.5").unwrap_err().contains("write it as a string"));
    }

    #[test]
    fn validation_names_the_bad_field() {
        assert_eq!(job("1", "  ").validate().unwrap_err(), "text must not be empty");
        assert_eq!(job("", "x").validate().unwrap_err(), "source_id must not be empty");
        assert!(job("1", "ok").validate().is_ok());
    }

    #[test]
    fn jsonl_fields_parse_with_defaults_and_reject_unknown() {
        let j: NewJob = serde_json::from_str(r#"{"source_type":"r","source_id":7,"text":"x"}"#).unwrap();
        assert_eq!(j.source_id, "7");
        assert_eq!(j.content_type, "default");
        assert_eq!(j.priority, 0);
        assert_eq!(j.lane, Lane::Online);
        let j: NewJob = serde_json::from_str(r#"{"source_type":"r","source_id":1,"text":"x","lane":"batch"}"#).unwrap();
        assert_eq!(j.lane, Lane::Batch);
        assert!(
            serde_json::from_str::<NewJob>(r#"{"source_type":"r","source_id":1,"text":"x","lane":"slow"}"#).is_err()
        );
        let e =
            serde_json::from_str::<NewJob>(r#"{"source_type":"r","source_id":"1","text":"x","colour":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }
}
