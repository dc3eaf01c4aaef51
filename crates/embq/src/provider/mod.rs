//! Embedding providers behind one trait, and the errors they report.
//!
//! A provider turns a batch of texts into vectors. Its errors are named by what
//! the queue must do next; [`crate::outcome::decide`] turns them into job outcomes.

pub mod gemini;
mod hash;
mod kind;
#[cfg(feature = "local-model")]
pub mod local;
pub mod local_backend;
pub mod local_files;
#[cfg(feature = "local-model")]
mod local_groups;
#[cfg(feature = "onnx")]
pub mod local_onnx;
#[cfg(feature = "local-model")]
mod local_tokens;
pub mod message;
pub mod openai;
pub mod openai_batch;
pub mod openai_batch_lines;
pub mod remote;
pub mod signals;

pub use signals::{RateSignals, SignalSink};

pub use hash::HashProvider;
pub use kind::ProviderKind;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::tokens::TokenCounter;

/// What one request to a provider may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RequestCaps {
    /// Most inputs per request.
    pub max_inputs: usize,
    /// Most tokens per request, all inputs together.
    pub max_tokens_per_request: usize,
    /// Most tokens in one input.
    pub max_tokens_per_input: usize,
}

/// A successful embedding call.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the provider billed, when it says.
    pub tokens: Option<u64>,
}

/// Why an embedding call failed, named by what the caller must do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// Throttled: wait (at least `retry_after` when given) and try again; no attempt is spent.
    #[error("rate limited by the provider")]
    RateLimited {
        /// The provider's own hint.
        retry_after: Option<Duration>,
    },
    /// The account's quota is used up: park the provider; no attempt is spent.
    #[error("provider quota exhausted: {0}")]
    QuotaExhausted(String),
    /// The request was too large: split the batch and retry the halves.
    #[error("request too large: {0}")]
    TooLarge(String),
    /// A passing failure (5xx, timeout, connection): retry with backoff.
    #[error("transient provider error: {0}")]
    Transient(String),
    /// One input can never be embedded: dead-letter that job only.
    #[error("input {index} rejected: {message}")]
    InvalidInput {
        /// Position of the bad input in the batch.
        index: usize,
        /// Why.
        message: String,
    },
    /// The whole request was refused as invalid (bad model, bad parameters).
    #[error("request rejected: {0}")]
    InvalidRequest(String),
    /// The answer could not be used (malformed, wrong count, wrong dimension).
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// Credentials were refused: an operator must act.
    #[error("authentication failed: {0}")]
    Unauthorized(String),
}

impl ProviderError {
    /// The same error with its message passed through `f` (see [`message::Secrets::error`]).
    pub fn map_message(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            Self::RateLimited { .. } => self,
            Self::QuotaExhausted(m) => Self::QuotaExhausted(f(&m)),
            Self::TooLarge(m) => Self::TooLarge(f(&m)),
            Self::Transient(m) => Self::Transient(f(&m)),
            Self::InvalidInput { index, message } => Self::InvalidInput { index, message: f(&message) },
            Self::InvalidRequest(m) => Self::InvalidRequest(f(&m)),
            Self::InvalidResponse(m) => Self::InvalidResponse(f(&m)),
            Self::Unauthorized(m) => Self::Unauthorized(f(&m)),
        }
    }

    /// The same error with a throttle's `retry_after` at most `max` (MAX_PROVIDER_PAUSE): a
    /// provider cannot hold jobs back longer than the operator allows.
    pub fn with_pause_at_most(self, max: Duration) -> Self {
        match self {
            Self::RateLimited { retry_after } => Self::RateLimited { retry_after: retry_after.map(|d| d.min(max)) },
            other => other,
        }
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExhausted(_) => "quota_exhausted",
            Self::TooLarge(_) => "too_large",
            Self::Transient(_) => "transient",
            Self::InvalidInput { .. } => "invalid_input",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidResponse(_) => "invalid_response",
            Self::Unauthorized(_) => "unauthorized",
        }
    }
}

/// An embedding provider.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;
    /// The model name stored with each embedding.
    fn model(&self) -> &str;
    /// Dimensions of every vector it returns.
    fn dimensions(&self) -> usize;
    /// Most inputs one request may carry.
    fn max_inputs(&self) -> usize;
    /// Embeds a batch of texts.
    async fn embed(&self, texts: &[&str]) -> Result<Embedded, ProviderError>;
    /// Per-request caps; by default only the input count is limited.
    fn caps(&self) -> RequestCaps {
        RequestCaps {
            max_inputs: self.max_inputs(),
            max_tokens_per_request: usize::MAX,
            max_tokens_per_input: usize::MAX,
        }
    }
    /// How this provider's model counts tokens.
    fn token_counter(&self) -> TokenCounter {
        TokenCounter::Estimate
    }
    /// Whether calls spend a remote per-minute budget (and so go through the limiter).
    fn metered(&self) -> bool {
        false
    }
    /// Connects the sink that receives the rate-limit signals of every response.
    fn set_signal_sink(&self, _sink: Arc<dyn SignalSink>) {}
}

/// Errors building a provider from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The provider is not available in this build.
    #[error("EMBEDDING_PROVIDER={0} is not available in this build of embq")]
    Unavailable(&'static str),
    /// The provider could not be set up (no model files, a bad client setting).
    #[error("EMBEDDING_PROVIDER={0}: {1}")]
    Setup(&'static str, String),
}

/// Which provider to build, with what it needs (the settings map onto this:
/// `Config::provider_spec`).
#[derive(Debug, Clone)]
pub enum ProviderSpec {
    /// Deterministic feature-hashing vectors.
    Hash {
        /// Model name recorded with the vectors.
        model: String,
        /// Vector size.
        dimensions: usize,
    },
    /// OpenAI or an OpenAI-compatible server.
    OpenAi(openai::OpenAiSettings),
    /// Google Gemini.
    Gemini(gemini::GeminiSettings),
    /// The in-process model, loaded from `cache_dir`.
    Local {
        /// Where the model files are.
        cache_dir: PathBuf,
        /// Vector size.
        dimensions: usize,
        /// Which engine runs it (`LOCAL_BACKEND`).
        backend: local_backend::LocalBackend,
        /// `ORT_DYLIB_PATH`: the ONNX Runtime library, when not on the loader's path.
        ort_dylib: Option<PathBuf>,
    },
}

/// Builds a provider.
pub fn build(spec: ProviderSpec) -> Result<Arc<dyn Provider>, BuildError> {
    match spec {
        ProviderSpec::Hash { model, dimensions } => Ok(Arc::new(HashProvider::new(&model, dimensions))),
        ProviderSpec::OpenAi(settings) => {
            let kind = settings.kind.as_str();
            Ok(Arc::new(openai::OpenAiProvider::new(settings).map_err(|e| BuildError::Setup(kind, e))?))
        }
        ProviderSpec::Gemini(settings) => {
            Ok(Arc::new(gemini::GeminiProvider::new(settings).map_err(|e| BuildError::Setup("gemini", e))?))
        }
        #[cfg(feature = "local-model")]
        ProviderSpec::Local { cache_dir, dimensions, backend, ort_dylib } => Ok(Arc::new(
            local::LocalProvider::load_with(&cache_dir, dimensions, backend, ort_dylib.as_deref())
                .map_err(|e| BuildError::Setup("local", e))?,
        )),
        #[cfg(not(feature = "local-model"))]
        ProviderSpec::Local { .. } => Err(BuildError::Unavailable("local")),
    }
}
