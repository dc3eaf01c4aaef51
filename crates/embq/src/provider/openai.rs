//! The OpenAI embeddings API, and the same wire format against any base URL
//! (`openai-compatible`: text-embeddings-inference, Ollama, vLLM, Infinity).
//!
//! One request carries many inputs; OpenAI answers with base64 little-endian f32 vectors
//! (smaller and faster to parse than JSON floats) and its `usage`, which corrects the
//! limiter's token reservation. Compatible servers are asked for plain floats, which all
//! of them speak; either form is accepted from both.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use serde::Deserialize;

use super::message::Secrets;
use super::remote;
use super::signals::{SignalSink, SinkSlot};
use super::ProviderKind;
use super::{Embedded, Provider, ProviderError, RequestCaps};
use crate::redact::Secret;
use crate::tokens::TokenCounter;

/// OpenAI's published per-request caps.
pub const OPENAI_CAPS: RequestCaps =
    RequestCaps { max_inputs: 2048, max_tokens_per_request: 300_000, max_tokens_per_input: 8192 };

/// Defaults for an OpenAI-compatible server: text-embeddings-inference's own defaults
/// (`--max-client-batch-size 32`, `--max-batch-tokens 16384`, 512-token models).
pub const COMPATIBLE_CAPS: RequestCaps =
    RequestCaps { max_inputs: 32, max_tokens_per_request: 16_384, max_tokens_per_input: 512 };

/// Everything needed to build the client.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// `openai` or `openai-compatible`.
    pub kind: ProviderKind,
    /// Base URL without the `/v1/embeddings` path.
    pub base_url: String,
    /// API key; optional for compatible servers.
    pub api_key: Option<Secret>,
    /// Model name.
    pub model: String,
    /// Expected dimensions.
    pub dimensions: usize,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Per-request caps.
    pub caps: RequestCaps,
}

/// An OpenAI-wire-format embeddings client.
#[derive(Debug)]
pub struct OpenAiProvider {
    kind: ProviderKind,
    client: reqwest::Client,
    endpoint: String,
    api_key: Option<Secret>,
    /// What is scrubbed from every error message made from a response.
    secrets: Secrets,
    model: String,
    dims: usize,
    send_dimensions: bool,
    base64: bool,
    caps: RequestCaps,
    counter: TokenCounter,
    sink: SinkSlot,
}

impl OpenAiProvider {
    /// Builds the client.
    pub fn new(s: OpenAiSettings) -> Result<Self, String> {
        let base = s.base_url.trim_end_matches('/');
        // Accept both `https://host` and the SDKs' `https://host/v1`.
        let endpoint =
            if base.ends_with("/v1") { format!("{base}/embeddings") } else { format!("{base}/v1/embeddings") };
        let openai = s.kind == ProviderKind::Openai;
        let counter = if openai || tiktoken_rs::tokenizer::get_tokenizer(&s.model).is_some() {
            TokenCounter::for_openai_model(&s.model)
        } else {
            TokenCounter::Estimate
        };
        Ok(Self {
            kind: s.kind,
            client: remote::client(s.timeout)?,
            endpoint,
            secrets: Secrets::new(s.api_key.as_ref().map(Secret::expose)),
            api_key: s.api_key,
            // Only the text-embedding-3 family accepts `dimensions` (ada-002 rejects it).
            send_dimensions: openai && s.model.starts_with("text-embedding-3"),
            base64: openai,
            model: s.model,
            dims: s.dimensions,
            caps: s.caps,
            counter,
            sink: SinkSlot::default(),
        })
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vector,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// Decodes one `encoding_format=base64` vector: base64 of little-endian f32 values.
pub fn decode_base64_vector(s: &str) -> Result<Vec<f32>, String> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map_err(|e| format!("not valid base64: {e}"))?;
    crate::vector::from_le_bytes(&bytes)
}

/// Decodes a 2xx body: one vector per input, put in input order by `index`.
pub fn parse_response(body: &str, inputs: usize, dims: usize) -> Result<Embedded, ProviderError> {
    let bad = |m: String| ProviderError::InvalidResponse(m);
    let resp: Response = serde_json::from_str(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    if resp.data.len() != inputs {
        return Err(bad(format!("expected {inputs} vectors, got {}", resp.data.len())));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for (pos, item) in resp.data.into_iter().enumerate() {
        let i = item.index.unwrap_or(pos);
        let v = match item.embedding {
            Vector::Floats(v) => v,
            Vector::Base64(s) => decode_base64_vector(&s).map_err(|e| bad(format!("vector {i}: {e}")))?,
        };
        match slots.get_mut(i) {
            Some(slot @ None) => *slot = Some(v),
            Some(Some(_)) => return Err(bad(format!("index {i} appears twice"))),
            None => return Err(bad(format!("index {i} is out of range for {inputs} inputs"))),
        }
    }
    let vectors: Vec<Vec<f32>> = slots.into_iter().flatten().collect();
    crate::vector::validate(&vectors, inputs, dims).map_err(bad)?;
    let tokens = resp.usage.and_then(|u| u.prompt_tokens.or(u.total_tokens));
    Ok(Embedded { vectors, tokens })
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn kind(&self) -> ProviderKind {
        self.kind
    }
    fn model(&self) -> &str {
        &self.model
    }
    fn dimensions(&self) -> usize {
        self.dims
    }
    fn max_inputs(&self) -> usize {
        self.caps.max_inputs
    }
    fn caps(&self) -> RequestCaps {
        self.caps
    }
    fn token_counter(&self) -> TokenCounter {
        self.counter.clone()
    }
    fn metered(&self) -> bool {
        true
    }
    fn set_signal_sink(&self, sink: std::sync::Arc<dyn SignalSink>) {
        self.sink.set(sink);
    }

    async fn embed(&self, texts: &[&str]) -> Result<Embedded, ProviderError> {
        let mut body = serde_json::json!({
            "model": self.model,
            "input": texts,
            "encoding_format": if self.base64 { "base64" } else { "float" },
        });
        if self.send_dimensions {
            body["dimensions"] = self.dims.into();
        }
        let mut req = self.client.post(&self.endpoint).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key.expose());
        }
        let resp = req.send().await.map_err(remote::transport_error)?;
        let limit = remote::body_limit(texts.len(), self.dims);
        remote::answer(resp, limit, texts.len(), &self.secrets, &self.sink, |b| {
            parse_response(b, texts.len(), self.dims)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &[f32]) -> String {
        base64::engine::general_purpose::STANDARD.encode(crate::vector::to_le_bytes(v))
    }

    #[test]
    fn responses_decode_base64_and_floats_in_index_order() {
        let body = serde_json::json!({
            "data": [
                {"index": 1, "embedding": b64(&[0.5, -0.25])},
                {"index": 0, "embedding": [1.0, 2.0]},
            ],
            "usage": {"prompt_tokens": 9, "total_tokens": 9}
        })
        .to_string();
        let e = parse_response(&body, 2, 2).unwrap();
        assert_eq!(e.vectors, vec![vec![1.0, 2.0], vec![0.5, -0.25]]);
        assert_eq!(e.tokens, Some(9));
    }

    #[test]
    fn unusable_responses_are_invalid() {
        let cases = [
            ("not json", "malformed JSON"),
            (r#"{"data":[{"index":0,"embedding":[1.0,2.0]}]}"#, "expected 2 vectors"),
            (r#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[1.0]}]}"#, "dimensions"),
            (r#"{"data":[{"index":0,"embedding":[1.0,2.0]},{"index":0,"embedding":[1.0,2.0]}]}"#, "twice"),
            (r#"{"data":[{"index":0,"embedding":[1.0,2.0]},{"index":5,"embedding":[1.0,2.0]}]}"#, "out of range"),
            (r#"{"data":[{"index":0,"embedding":"@@@"},{"index":1,"embedding":[1.0,2.0]}]}"#, "base64"),
            (r#"{"data":[{"index":0,"embedding":[1.0,1e39]},{"index":1,"embedding":[1.0,2.0]}]}"#, "non-finite"),
        ];
        for (body, want) in cases {
            match parse_response(body, 2, 2) {
                Err(ProviderError::InvalidResponse(m)) => assert!(m.contains(want), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn endpoint_accepts_a_base_with_or_without_v1() {
        let s = |base: &str| OpenAiSettings {
            kind: ProviderKind::OpenaiCompatible,
            base_url: base.into(),
            api_key: None,
            model: "bge-small".into(),
            dimensions: 384,
            timeout: Duration::from_secs(1),
            caps: COMPATIBLE_CAPS,
        };
        assert_eq!(OpenAiProvider::new(s("http://tei:8080")).unwrap().endpoint(), "http://tei:8080/v1/embeddings");
        assert_eq!(
            OpenAiProvider::new(s("http://ollama:11434/v1/")).unwrap().endpoint(),
            "http://ollama:11434/v1/embeddings"
        );
        assert!(matches!(OpenAiProvider::new(s("http://x")).unwrap().token_counter(), TokenCounter::Estimate));
    }
}
