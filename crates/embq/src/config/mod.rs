//! Every setting, parsed and validated once at start.
//!
//! Values arrive as raw strings (from a command-line flag or its environment variable:
//! `raw.rs`), are turned into typed values (`validate.rs`, with one value's parsing in
//! `fields.rs` and the batch lane's settings in `batch_lane.rs`) so that *all* problems are
//! reported together, each naming its variable, and secrets stay wrapped so no output shows
//! them ([`crate::redact`]). This module holds the validated [`Config`] and its small types.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::provider::gemini::GeminiSettings;
use crate::provider::openai::OpenAiSettings;
use crate::provider::{BuildError, Provider, ProviderSpec};
use crate::queue::{StoreSettings, VectorSettings};

mod batch_lane;
mod fields;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

pub use crate::provider::ProviderKind;
pub use crate::queue::PoolMode;
pub use crate::redact::{DatabaseUrl, HttpUrl, Secret};
pub use batch_lane::BatchLaneConfig;
pub use fields::{parse_duration, ConfigError};
pub use raw::RawConfig;
pub use validate::DEFAULT_MAX_PAUSE;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (containers).
    Json,
    /// Human-readable lines.
    Text,
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Queue store URL.
    pub database_url: DatabaseUrl,
    /// Direct connection for LISTEN, if different from `database_url`.
    pub database_listen_url: Option<DatabaseUrl>,
    /// Direct connection or transaction pooler.
    pub pool_mode: PoolMode,
    /// Connections per process.
    pub db_max_connections: u32,
    /// Poll interval when idle.
    #[serde(serialize_with = "ser_ms")]
    pub poll_interval: Duration,
    /// Concurrent batches.
    pub max_concurrent_jobs: NonZeroUsize,
    /// Jobs per batch.
    pub batch_size: NonZeroUsize,
    /// Heartbeat period.
    #[serde(serialize_with = "ser_ms")]
    pub heartbeat_interval: Duration,
    /// Requests per minute budget.
    pub max_requests_per_minute: NonZeroU32,
    /// Tokens per minute budget.
    pub max_tokens_per_minute: NonZeroU32,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Memory limit in bytes.
    pub memory_limit_bytes: u64,
    /// CPU cores for the runtime.
    pub cpu_limit_cores: Option<f64>,
    /// Whether the worker claims jobs.
    pub enable_queue_processing: bool,
    /// Whether batches may grow while there is a backlog.
    pub enable_batch_optimization: bool,
    /// Provider.
    pub provider: ProviderKind,
    /// Model name.
    pub model: String,
    /// Vector dimensions.
    pub dimensions: usize,
    /// OpenAI key.
    pub openai_api_key: Option<Secret>,
    /// OpenAI base URL.
    pub openai_base_url: Option<HttpUrl>,
    /// Gemini key.
    pub gemini_api_key: Option<Secret>,
    /// Health port.
    pub health_port: u16,
    /// Metrics port.
    pub metrics_port: u16,
    /// Shutdown token.
    pub shutdown_token: Option<Secret>,
    /// Drain timeout.
    #[serde(serialize_with = "ser_ms")]
    pub drain_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Worker id.
    pub worker_id: String,
    /// Whole-request timeout of a provider call.
    #[serde(serialize_with = "ser_ms")]
    pub provider_timeout: Duration,
    /// Longest pause a provider may impose on the budget; a longer hint is cut to this.
    #[serde(serialize_with = "ser_ms")]
    pub max_provider_pause: Duration,
    /// Per-request caps of the openai / openai-compatible provider.
    pub request_caps: crate::provider::RequestCaps,
    /// Gemini taskType.
    pub gemini_task_type: String,
    /// Gemini base URL.
    pub gemini_base_url: HttpUrl,
    /// What happens to an overlong input.
    pub overlong_input: crate::tokens::OverlongInput,
    /// Per-process or fleet-wide budgets.
    pub rate_limit_scope: RateLimitScope,
    /// The local model's cache directory.
    pub model_cache_dir: std::path::PathBuf,
    /// The local model's engine (`LOCAL_BACKEND`).
    pub local_backend: crate::provider::local_backend::LocalBackend,
    /// `ORT_DYLIB_PATH`: where ONNX Runtime's library is, when set.
    pub ort_dylib_path: Option<std::path::PathBuf>,
    /// How PostgreSQL stores vectors.
    pub vector_type: crate::queue::VectorStorage,
    /// The index `embq migrate` builds on the stored vectors.
    pub vector_index: crate::queue::VectorIndex,
    /// Loopback callers of POST /shutdown may omit the token.
    pub shutdown_loopback_exempt: bool,
    /// How long one-shot commands retry reaching the database.
    #[serde(serialize_with = "ser_ms")]
    pub database_connect_timeout: Duration,
    /// The OpenAI Batch API lane.
    pub batch_lane: BatchLaneConfig,
}

/// Whether the per-minute budgets hold per process or for every worker sharing the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    /// Each worker process has the whole budget.
    Worker,
    /// All workers on the same database share the budget.
    Fleet,
}

/// When and how often a failed job is tried again.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RetryPolicy {
    /// Attempts before dead-lettering.
    pub max_attempts: NonZeroU32,
    /// Delay before the second attempt.
    #[serde(serialize_with = "ser_ms")]
    pub base_delay: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// Cap on any delay.
    #[serde(serialize_with = "ser_ms")]
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: NonZeroU32::MIN.saturating_add(4),
            base_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(3600),
        }
    }
}

pub(crate) fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// The database connections one worker process opens at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Connections {
    /// The pool (DB_MAX_CONNECTIONS).
    pub pool: u32,
    /// The LISTEN session (PostgreSQL, session mode or DATABASE_LISTEN_URL).
    pub listen: u32,
    /// The fleet rate budget's own pool (RATE_LIMIT_SCOPE=fleet with a remote provider).
    pub fleet_budget: u32,
    /// All of them.
    pub total: u32,
}

impl Config {
    /// How to open the queue store.
    pub fn store(&self) -> StoreSettings {
        StoreSettings {
            url: self.database_url.clone(),
            listen_url: self.database_listen_url.clone(),
            pool_mode: self.pool_mode,
            max_connections: self.db_max_connections,
            connect_timeout: self.database_connect_timeout,
            vectors: VectorSettings {
                storage: self.vector_type,
                index: self.vector_index,
                dims: self.dimensions,
                model: self.model.clone(),
            },
            batch_lane: self.batch_lane.enabled,
        }
    }

    /// What the provider settings ask for.
    pub fn provider_spec(&self) -> Result<ProviderSpec, BuildError> {
        let (model, dimensions, timeout) = (self.model.clone(), self.dimensions, self.provider_timeout);
        Ok(match self.provider {
            ProviderKind::Hash => ProviderSpec::Hash { model, dimensions },
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => ProviderSpec::OpenAi(OpenAiSettings {
                kind: self.provider,
                base_url: self.openai_base_url.as_ref().map_or("https://api.openai.com", |u| u.expose()).to_string(),
                api_key: self.openai_api_key.clone(),
                model,
                dimensions,
                timeout,
                caps: self.request_caps,
            }),
            ProviderKind::Gemini => ProviderSpec::Gemini(GeminiSettings {
                base_url: self.gemini_base_url.expose().to_string(),
                api_key: self
                    .gemini_api_key
                    .clone()
                    .ok_or_else(|| BuildError::Setup("gemini", "GEMINI_API_KEY is not set".into()))?,
                model,
                dimensions,
                task_type: self.gemini_task_type.clone(),
                timeout,
            }),
            ProviderKind::Local => ProviderSpec::Local {
                cache_dir: self.model_cache_dir.clone(),
                dimensions,
                backend: self.local_backend,
                ort_dylib: self.ort_dylib_path.clone(),
            },
        })
    }

    /// Builds the configured provider.
    pub fn provider(&self) -> Result<Arc<dyn Provider>, BuildError> {
        crate::provider::build(self.provider_spec()?)
    }

    /// The database connections one worker opens at most: replicas × `total` must stay below
    /// the server's `max_connections`.
    pub fn connections(&self) -> Connections {
        let postgres = !self.database_url.is_sqlite();
        let listen = u32::from(postgres && (self.pool_mode == PoolMode::Session || self.database_listen_url.is_some()));
        let remote =
            matches!(self.provider, ProviderKind::Openai | ProviderKind::Gemini | ProviderKind::OpenaiCompatible);
        let fleet_budget = if postgres && remote && self.rate_limit_scope == RateLimitScope::Fleet { 2 } else { 0 };
        let pool = self.db_max_connections;
        Connections { pool, listen, fleet_budget, total: pool + listen + fleet_budget }
    }

    /// How long a claim stays valid without a heartbeat: 1.5 heartbeats, so one late
    /// heartbeat does not lose a lease, while a dead worker's jobs return within two.
    pub fn lease_duration(&self) -> Duration {
        self.heartbeat_interval + self.heartbeat_interval / 2
    }

    /// How often each worker sweeps for expired leases.
    pub fn rescue_interval(&self) -> Duration {
        self.heartbeat_interval / 2
    }
}
