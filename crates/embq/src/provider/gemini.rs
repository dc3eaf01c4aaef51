//! Google Gemini: `models/{model}:batchEmbedContents`, at most 100 texts per call,
//! `taskType` and `outputDimensionality` per text, 2,048 tokens per input.
//!
//! Gemini reports no token usage, so the limiter keeps its estimate. Vectors shorter than
//! the model's native size come back unnormalised; they are L2-normalised here, as
//! Google's documentation recommends, so that cosine and dot product agree.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::message::Secrets;
use super::remote;
use super::signals::{SignalSink, SinkSlot};
use super::ProviderKind;
use super::{Embedded, Provider, ProviderError, RequestCaps};
use crate::redact::Secret;

/// Gemini's per-call caps.
pub const GEMINI_CAPS: RequestCaps =
    RequestCaps { max_inputs: 100, max_tokens_per_request: 100 * 2048, max_tokens_per_input: 2048 };

/// Everything needed to build the client.
#[derive(Debug, Clone)]
pub struct GeminiSettings {
    /// Base URL, e.g. `https://generativelanguage.googleapis.com`.
    pub base_url: String,
    /// API key, sent as `x-goog-api-key` (never in the URL, which errors may print).
    pub api_key: Secret,
    /// Model, with or without the `models/` prefix.
    pub model: String,
    /// `outputDimensionality`.
    pub dimensions: usize,
    /// `taskType`.
    pub task_type: String,
    /// Whole-request timeout.
    pub timeout: Duration,
}

/// A Gemini embeddings client.
#[derive(Debug)]
pub struct GeminiProvider {
    client: reqwest::Client,
    endpoint: String,
    resource: String,
    api_key: Secret,
    /// What is scrubbed from every error message made from a response.
    secrets: Secrets,
    model: String,
    dims: usize,
    task_type: String,
    sink: SinkSlot,
}

impl GeminiProvider {
    /// Builds the client.
    pub fn new(s: GeminiSettings) -> Result<Self, String> {
        let model = s.model.trim_start_matches("models/").to_string();
        let base = s.base_url.trim_end_matches('/');
        Ok(Self {
            client: remote::client(s.timeout)?,
            endpoint: format!("{base}/v1beta/models/{model}:batchEmbedContents"),
            resource: format!("models/{model}"),
            secrets: Secrets::new(Some(s.api_key.expose())),
            api_key: s.api_key,
            model,
            dims: s.dimensions,
            task_type: s.task_type,
            sink: SinkSlot::default(),
        })
    }
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    embeddings: Vec<Values>,
}

#[derive(Deserialize)]
struct Values {
    values: Vec<f32>,
}

/// Decodes a 2xx `batchEmbedContents` body: one L2-normalised vector per input, in order.
pub fn parse_response(body: &str, inputs: usize, dims: usize) -> Result<Embedded, ProviderError> {
    let bad = ProviderError::InvalidResponse;
    let resp: Response = serde_json::from_str(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let mut vectors: Vec<Vec<f32>> = resp.embeddings.into_iter().map(|e| e.values).collect();
    crate::vector::validate(&vectors, inputs, dims).map_err(bad)?;
    for v in &mut vectors {
        crate::vector::l2_normalize(v);
    }
    Ok(Embedded { vectors, tokens: None })
}

#[async_trait]
impl Provider for GeminiProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gemini
    }
    fn model(&self) -> &str {
        &self.model
    }
    fn dimensions(&self) -> usize {
        self.dims
    }
    fn max_inputs(&self) -> usize {
        GEMINI_CAPS.max_inputs
    }
    fn caps(&self) -> RequestCaps {
        GEMINI_CAPS
    }
    fn metered(&self) -> bool {
        true
    }
    fn set_signal_sink(&self, sink: Arc<dyn SignalSink>) {
        self.sink.set(sink);
    }

    async fn embed(&self, texts: &[&str]) -> Result<Embedded, ProviderError> {
        let requests: Vec<serde_json::Value> = texts
            .iter()
            .map(|t| {
                serde_json::json!({
                    "model": self.resource,
                    "content": {"parts": [{"text": t}]},
                    "taskType": self.task_type,
                    "outputDimensionality": self.dims,
                })
            })
            .collect();
        let resp = self
            .client
            .post(&self.endpoint)
            .header("x-goog-api-key", self.api_key.expose())
            .json(&serde_json::json!({ "requests": requests }))
            .send()
            .await
            .map_err(remote::transport_error)?;
        // Google's delay sits in the body, not the headers: `answer` reports triage's.
        let limit = remote::body_limit(texts.len(), self.dims);
        let parse = |b: &str| parse_response(b, texts.len(), self.dims);
        remote::answer(resp, limit, texts.len(), &self.secrets, &self.sink, parse).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_checked_and_normalised() {
        let e = parse_response(r#"{"embeddings":[{"values":[3.0,4.0]},{"values":[0.0,2.0]}]}"#, 2, 2).unwrap();
        assert_eq!(e.vectors, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
        assert_eq!(e.tokens, None);
        for (body, want) in [
            ("{", "malformed JSON"),
            (r#"{"embeddings":[{"values":[3.0,4.0]}]}"#, "expected 2 vectors"),
            (r#"{"embeddings":[{"values":[3.0]},{"values":[1.0]}]}"#, "dimensions"),
        ] {
            match parse_response(body, 2, 2) {
                Err(ProviderError::InvalidResponse(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
