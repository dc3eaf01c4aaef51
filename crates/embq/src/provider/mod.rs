//! Embedding providers behind one trait, and the errors they report.
//!
//! A provider turns a batch of texts into vectors. Its errors are named by what
//! the queue must do next; [`crate::outcome::classify`] turns them into job outcomes.

mod hash;

pub use hash::HashProvider;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{Config, ProviderKind};

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
}

/// Errors building a provider from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The provider is not available in this build.
    #[error("EMBEDDING_PROVIDER={0} is not available in this build of embq")]
    Unavailable(&'static str),
}

/// Builds the configured provider.
pub fn build(cfg: &Config, hash_delay: Duration) -> Result<Arc<dyn Provider>, BuildError> {
    match cfg.provider {
        ProviderKind::Hash => Ok(Arc::new(
            HashProvider::new(&cfg.model, cfg.dimensions).with_delay(hash_delay),
        )),
        other => Err(BuildError::Unavailable(other.as_str())),
    }
}
