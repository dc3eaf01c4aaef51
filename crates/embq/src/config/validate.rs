//! From raw strings to typed settings: every problem collected, each naming its variable.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use super::fields::{boolean, bounded, count_up_to, nonzero_duration, parse_duration, port, positive_u32, Problems};
use super::*;
use crate::redact::http_url;

/// Gemini's documented task types.
const GEMINI_TASK_TYPES: &[&str] = &[
    "RETRIEVAL_DOCUMENT",
    "RETRIEVAL_QUERY",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
];

fn default_model_cache_dir() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::path::PathBuf::from(".cache"));
    base.join("embq").join("models")
}

/// How long a provider may pause the budget at most unless MAX_PROVIDER_PAUSE says otherwise.
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(300);
/// The most batches one worker may run at once.
const MAX_CONCURRENT_JOBS_LIMIT: u64 = 1_024;
/// The most jobs in one batch.
const BATCH_SIZE_LIMIT: u64 = 100_000;
/// The smallest memory limit: an idle worker alone takes about 10 MiB.
const MEMORY_LIMIT_MIN_MB: u64 = 32;
/// The largest memory limit (1 TiB).
const MEMORY_LIMIT_MAX_MB: u64 = 1 << 20;

/// The default worker id: host, process id and a random suffix, unique per start.
fn default_worker_id() -> String {
    let host = hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "host".into());
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}

impl RawConfig {
    /// Validates every field, reporting all problems at once.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let mut p = Problems(Vec::new());
        let default_db = DatabaseUrl("sqlite://embq.db".into());
        let database_url = p.field("DATABASE_URL", &self.database_url, default_db, DatabaseUrl::parse);
        let database_listen_url = p.field("DATABASE_LISTEN_URL", &self.database_listen_url, None, |v| {
            let u = DatabaseUrl::parse(v)?;
            if u.is_sqlite() {
                return Err("must be a postgres:// URL".into());
            }
            Ok(Some(u))
        });
        let default_mode = if database_url.port() == Some(6543) { PoolMode::Transaction } else { PoolMode::Session };
        let pool_mode = p.field("DATABASE_POOL_MODE", &self.database_pool_mode, default_mode, |v| {
            match v.to_ascii_lowercase().as_str() {
                "session" => Ok(PoolMode::Session),
                "transaction" => Ok(PoolMode::Transaction),
                _ => Err("must be session or transaction".into()),
            }
        });
        let max_concurrent_jobs = p.field(
            "MAX_CONCURRENT_JOBS",
            &self.max_concurrent_jobs,
            NonZeroUsize::MIN.saturating_add(2),
            count_up_to(MAX_CONCURRENT_JOBS_LIMIT),
        );
        let db_max_connections = p.field(
            "DB_MAX_CONNECTIONS",
            &self.db_max_connections,
            default_pool_size(max_concurrent_jobs.get()),
            |v| bounded(1, 10_000)(v).map(|n| n as u32),
        );
        let poll_interval =
            p.field("QUEUE_POLL_INTERVAL", &self.queue_poll_interval, Duration::from_secs(5), nonzero_duration);
        let batch_size =
            p.field("BATCH_SIZE", &self.batch_size, NonZeroUsize::MIN.saturating_add(4), count_up_to(BATCH_SIZE_LIMIT));
        let heartbeat_interval =
            p.field("HEARTBEAT_INTERVAL", &self.heartbeat_interval, Duration::from_secs(30), nonzero_duration);
        let max_requests_per_minute = p.field(
            "MAX_REQUESTS_PER_MINUTE",
            &self.max_requests_per_minute,
            NonZeroU32::MIN.saturating_add(59),
            positive_u32,
        );
        let max_tokens_per_minute = p.field(
            "MAX_TOKENS_PER_MINUTE",
            &self.max_tokens_per_minute,
            NonZeroU32::MIN.saturating_add(99_999),
            positive_u32,
        );
        let defaults = RetryPolicy::default();
        let multiplier =
            p.field("BACKOFF_MULTIPLIER", &self.backoff_multiplier, defaults.multiplier, |v| match v.parse::<f64>() {
                Ok(m) if m.is_finite() && (1.0..=100.0).contains(&m) => Ok(m),
                _ => Err("must be a number from 1 to 100".into()),
            });
        let base_delay = p.field("RETRY_BASE_DELAY", &self.retry_base_delay, defaults.base_delay, parse_duration);
        let max_delay = p.field("RETRY_MAX_DELAY", &self.retry_max_delay, defaults.max_delay, parse_duration);
        if max_delay < base_delay {
            p.0.push("RETRY_MAX_DELAY: must not be shorter than RETRY_BASE_DELAY".into());
        }
        let max_attempts = p.field("MAX_ATTEMPTS", &self.max_attempts, defaults.max_attempts, |v| {
            bounded(1, 1_000)(v).and_then(|n| NonZeroU32::new(n as u32).ok_or_else(|| "must be at least 1".into()))
        });
        let memory_limit_mb = p.field(
            "MEMORY_LIMIT_MB",
            &self.memory_limit_mb,
            1024u64,
            bounded(MEMORY_LIMIT_MIN_MB, MEMORY_LIMIT_MAX_MB),
        );
        let cpu_limit_cores = p.field("CPU_LIMIT_CORES", &self.cpu_limit_cores, None, |v| match v.parse::<f64>() {
            Ok(c) if c.is_finite() && c > 0.0 && c <= 1024.0 => Ok(Some(c)),
            _ => Err("must be a positive number of cores such as 0.5 or 2".into()),
        });
        let enable_queue_processing = p.field("ENABLE_QUEUE_PROCESSING", &self.enable_queue_processing, true, boolean);
        let enable_batch_optimization =
            p.field("ENABLE_BATCH_OPTIMIZATION", &self.enable_batch_optimization, false, boolean);
        let provider = p.field("EMBEDDING_PROVIDER", &self.embedding_provider, ProviderKind::Hash, ProviderKind::parse);
        let (default_model, default_dims) = match provider {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => ("text-embedding-3-small", 1536),
            ProviderKind::Gemini => ("gemini-embedding-001", 768),
            ProviderKind::Local => ("all-MiniLM-L6-v2", 384),
            ProviderKind::Hash => ("hash-v1", 384),
        };
        let model = p.field("EMBEDDING_MODEL", &self.embedding_model, default_model.to_string(), |v| Ok(v.to_string()));
        let dimensions =
            p.field("EMBEDDING_DIMENSIONS", &self.embedding_dimensions, default_dims, |v| match v.parse::<usize>() {
                Ok(n) if (1..=16_000).contains(&n) => Ok(n),
                _ => Err("must be a whole number from 1 to 16000".into()),
            });
        let secret = |v: &str| Ok(Some(Secret::new(v)));
        let openai_api_key = p.field("OPENAI_API_KEY", &self.openai_api_key, None, secret);
        let gemini_api_key = p.field("GEMINI_API_KEY", &self.gemini_api_key, None, secret);
        let shutdown_token = p.field("SHUTDOWN_TOKEN", &self.shutdown_token, None, secret);
        let openai_base_url = p.field("OPENAI_BASE_URL", &self.openai_base_url, None, |v| http_url(v).map(Some));
        match provider {
            ProviderKind::Openai if openai_api_key.is_none() => {
                p.0.push("OPENAI_API_KEY: required when EMBEDDING_PROVIDER=openai".into())
            }
            ProviderKind::Gemini if gemini_api_key.is_none() => {
                p.0.push("GEMINI_API_KEY: required when EMBEDDING_PROVIDER=gemini".into())
            }
            ProviderKind::OpenaiCompatible if openai_base_url.is_none() => {
                p.0.push("OPENAI_BASE_URL: required when EMBEDDING_PROVIDER=openai-compatible".into())
            }
            _ => {}
        }
        let health_port = p.field("HEALTH_PORT", &self.health_port, 8080, port);
        let metrics_port = p.field("METRICS_PORT", &self.metrics_port, 9091, port);
        if health_port == metrics_port && health_port != 0 {
            p.0.push("METRICS_PORT: must differ from HEALTH_PORT".into());
        }
        let drain_timeout = p.field("DRAIN_TIMEOUT", &self.drain_timeout, Duration::from_secs(25), parse_duration);
        let log_format =
            p.field("LOG_FORMAT", &self.log_format, LogFormat::Text, |v| match v.to_ascii_lowercase().as_str() {
                "json" => Ok(LogFormat::Json),
                "text" => Ok(LogFormat::Text),
                _ => Err("must be json or text".into()),
            });
        let worker_id = p.field("WORKER_ID", &self.worker_id, String::new(), |v| {
            if v.len() > 200 {
                return Err("must be at most 200 characters".into());
            }
            Ok(v.to_string())
        });
        let worker_id = if worker_id.is_empty() { default_worker_id() } else { worker_id };
        let provider_timeout =
            p.field("PROVIDER_TIMEOUT", &self.provider_timeout, Duration::from_secs(60), nonzero_duration);
        let max_provider_pause = p.field("MAX_PROVIDER_PAUSE", &self.max_provider_pause, DEFAULT_MAX_PAUSE, |v| {
            let d = parse_duration(v)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&d) {
                return Err("must be between 1s and 24h".into());
            }
            Ok(d)
        });
        let base_caps = match provider {
            ProviderKind::OpenaiCompatible => crate::provider::openai::COMPATIBLE_CAPS,
            _ => crate::provider::openai::OPENAI_CAPS,
        };
        let cap = |v: &str| count_up_to(10_000_000)(v).map(NonZeroUsize::get);
        let request_caps = crate::provider::RequestCaps {
            max_inputs: p.field(
                "OPENAI_MAX_INPUTS_PER_REQUEST",
                &self.openai_max_inputs_per_request,
                base_caps.max_inputs,
                cap,
            ),
            max_tokens_per_request: p.field(
                "OPENAI_MAX_TOKENS_PER_REQUEST",
                &self.openai_max_tokens_per_request,
                base_caps.max_tokens_per_request,
                cap,
            ),
            max_tokens_per_input: p.field(
                "OPENAI_MAX_TOKENS_PER_INPUT",
                &self.openai_max_tokens_per_input,
                base_caps.max_tokens_per_input,
                cap,
            ),
        };
        let gemini_task_type =
            p.field("GEMINI_TASK_TYPE", &self.gemini_task_type, "RETRIEVAL_DOCUMENT".to_string(), |v| {
                let t = v.to_ascii_uppercase();
                if GEMINI_TASK_TYPES.contains(&t.as_str()) {
                    Ok(t)
                } else {
                    Err(format!("must be one of {}", GEMINI_TASK_TYPES.join(", ")))
                }
            });
        let gemini_base_url = p.field(
            "GEMINI_BASE_URL",
            &self.gemini_base_url,
            HttpUrl("https://generativelanguage.googleapis.com".to_string()),
            http_url,
        );
        let overlong_input = p.field(
            "OVERLONG_INPUT",
            &self.overlong_input,
            crate::tokens::OverlongInput::Truncate,
            crate::tokens::OverlongInput::parse,
        );
        let default_scope = if database_url.is_sqlite() { RateLimitScope::Worker } else { RateLimitScope::Fleet };
        let rate_limit_scope = p.field("RATE_LIMIT_SCOPE", &self.rate_limit_scope, default_scope, |v| {
            match v.to_ascii_lowercase().as_str() {
                "worker" => Ok(RateLimitScope::Worker),
                "fleet" => Ok(RateLimitScope::Fleet),
                _ => Err("must be worker or fleet".into()),
            }
        });
        if rate_limit_scope == RateLimitScope::Fleet && database_url.is_sqlite() {
            p.0.push("RATE_LIMIT_SCOPE: fleet needs a PostgreSQL DATABASE_URL; use worker with SQLite".into());
        }
        let model_cache_dir = p.field("MODEL_CACHE_DIR", &self.model_cache_dir, default_model_cache_dir(), |v| {
            Ok(std::path::PathBuf::from(v))
        });
        let local_backend = p.field(
            "LOCAL_BACKEND",
            &self.local_backend,
            crate::provider::local_backend::LocalBackend::Auto,
            crate::provider::local_backend::LocalBackend::parse,
        );
        let ort_dylib_path =
            p.field("ORT_DYLIB_PATH", &self.ort_dylib_path, None, |v| Ok(Some(std::path::PathBuf::from(v))));
        let vector_type = p.field(
            "VECTOR_TYPE",
            &self.vector_type,
            crate::queue::VectorStorage::Auto,
            crate::queue::VectorStorage::parse,
        );
        let vector_index = p.field(
            "VECTOR_INDEX",
            &self.vector_index,
            crate::queue::VectorIndex::None,
            crate::queue::VectorIndex::parse,
        );

        let database_connect_timeout = p.field(
            "DATABASE_CONNECT_TIMEOUT",
            &self.database_connect_timeout,
            Duration::from_secs(10),
            parse_duration,
        );
        let shutdown_loopback_exempt =
            p.field("SHUTDOWN_LOOPBACK_EXEMPT", &self.shutdown_loopback_exempt, false, boolean);

        let batch_lane = super::batch_lane::parse(self, &mut p, provider);

        if !p.0.is_empty() {
            return Err(ConfigError(p.0));
        }
        Ok(Config {
            database_url,
            database_listen_url,
            pool_mode,
            db_max_connections,
            poll_interval,
            max_concurrent_jobs,
            batch_size,
            heartbeat_interval,
            max_requests_per_minute,
            max_tokens_per_minute,
            retry: RetryPolicy { max_attempts, base_delay, multiplier, max_delay },
            memory_limit_bytes: memory_limit_mb * 1024 * 1024,
            cpu_limit_cores,
            enable_queue_processing,
            enable_batch_optimization,
            provider,
            model,
            dimensions,
            openai_api_key,
            openai_base_url,
            gemini_api_key,
            health_port,
            metrics_port,
            shutdown_token,
            drain_timeout,
            log_format,
            worker_id,
            provider_timeout,
            max_provider_pause,
            request_caps,
            gemini_task_type,
            gemini_base_url,
            overlong_input,
            rate_limit_scope,
            model_cache_dir,
            local_backend,
            ort_dylib_path,
            vector_type,
            vector_index,
            shutdown_loopback_exempt,
            database_connect_timeout,
            batch_lane,
        })
    }
}

/// What a worker's pool needs at most: two claims at once, one maintenance statement
/// (heartbeat, lease sweep, stats) and up to three batches recording results; more batches
/// wait their turn for a connection, which takes milliseconds.
fn default_pool_size(max_concurrent_jobs: usize) -> u32 {
    3 + max_concurrent_jobs.min(3) as u32
}
