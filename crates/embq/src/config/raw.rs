//! The settings as they arrive: one optional string per flag or environment variable.

use clap::Args;

/// The raw settings as flags or environment variables; `--help` lists each with its variable.
#[derive(Args, Debug, Clone, Default)]
pub struct RawConfig {
    /// Queue store: postgres://… or sqlite://path [default: sqlite://embq.db]
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Direct PostgreSQL connection used only for LISTEN (when DATABASE_URL goes through a pooler)
    #[arg(long, env = "DATABASE_LISTEN_URL", global = true, hide_env_values = true)]
    pub database_listen_url: Option<String>,
    /// session | transaction [default: transaction when the port is 6543, else session]
    #[arg(long, env = "DATABASE_POOL_MODE", global = true)]
    pub database_pool_mode: Option<String>,
    /// Maximum pooled database connections per process [default: 3 + min(MAX_CONCURRENT_JOBS, 3)]
    #[arg(long, env = "DB_MAX_CONNECTIONS", global = true)]
    pub db_max_connections: Option<String>,
    /// Poll interval when no notification arrives (jittered ±10%), with its unit [default: 5s]
    #[arg(long, env = "QUEUE_POLL_INTERVAL", global = true)]
    pub queue_poll_interval: Option<String>,
    /// Batches processed at once by one worker [default: 3]
    #[arg(long, env = "MAX_CONCURRENT_JOBS", global = true)]
    pub max_concurrent_jobs: Option<String>,
    /// Jobs per provider request [default: 5]
    #[arg(long, env = "BATCH_SIZE", global = true)]
    pub batch_size: Option<String>,
    /// Heartbeat interval, with its unit; leases last 1.5 heartbeats [default: 30s]
    #[arg(long, env = "HEARTBEAT_INTERVAL", global = true)]
    pub heartbeat_interval: Option<String>,
    /// Provider requests-per-minute budget [default: 60]
    #[arg(long, env = "MAX_REQUESTS_PER_MINUTE", global = true)]
    pub max_requests_per_minute: Option<String>,
    /// Provider tokens-per-minute budget [default: 100000]
    #[arg(long, env = "MAX_TOKENS_PER_MINUTE", global = true)]
    pub max_tokens_per_minute: Option<String>,
    /// Growth factor of the retry delay per attempt [default: 2]
    #[arg(long, env = "BACKOFF_MULTIPLIER", global = true)]
    pub backoff_multiplier: Option<String>,
    /// First retry delay, with its unit (500ms, 2s, 1m) [default: 1s]
    #[arg(long, env = "RETRY_BASE_DELAY", global = true)]
    pub retry_base_delay: Option<String>,
    /// Longest retry delay [default: 1h]
    #[arg(long, env = "RETRY_MAX_DELAY", global = true)]
    pub retry_max_delay: Option<String>,
    /// Attempts before a job is dead-lettered [default: 5]
    #[arg(long, env = "MAX_ATTEMPTS", global = true)]
    pub max_attempts: Option<String>,
    /// Memory limit in MiB; at 90% the worker stops claiming [default: 1024]
    #[arg(long, env = "MEMORY_LIMIT_MB", global = true)]
    pub memory_limit_mb: Option<String>,
    /// CPU cores available; sizes the runtime's threads [default: all cores]
    #[arg(long, env = "CPU_LIMIT_CORES", global = true)]
    pub cpu_limit_cores: Option<String>,
    /// false keeps the worker up but claims nothing [default: true]
    #[arg(long, env = "ENABLE_QUEUE_PROCESSING", global = true)]
    pub enable_queue_processing: Option<String>,
    /// true lets batches grow to the provider's caps while there is a backlog [default: false]
    #[arg(long, env = "ENABLE_BATCH_OPTIMIZATION", global = true)]
    pub enable_batch_optimization: Option<String>,
    /// openai | gemini | openai-compatible | local | hash [default: hash]
    #[arg(long, env = "EMBEDDING_PROVIDER", global = true)]
    pub embedding_provider: Option<String>,
    /// Model name sent to the provider [default: depends on the provider]
    #[arg(long, env = "EMBEDDING_MODEL", global = true)]
    pub embedding_model: Option<String>,
    /// Vector dimensions [default: depends on the provider; 384 for hash]
    #[arg(long, env = "EMBEDDING_DIMENSIONS", global = true)]
    pub embedding_dimensions: Option<String>,
    /// OpenAI API key
    #[arg(long, env = "OPENAI_API_KEY", global = true, hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// Base URL of the OpenAI(-compatible) API [default: https://api.openai.com]
    #[arg(long, env = "OPENAI_BASE_URL", global = true)]
    pub openai_base_url: Option<String>,
    /// Gemini API key
    #[arg(long, env = "GEMINI_API_KEY", global = true, hide_env_values = true)]
    pub gemini_api_key: Option<String>,
    /// Port of /health /ready /startup /shutdown [default: 8080]
    #[arg(long, env = "HEALTH_PORT", global = true)]
    pub health_port: Option<String>,
    /// Port of /metrics [default: 9091]
    #[arg(long, env = "METRICS_PORT", global = true)]
    pub metrics_port: Option<String>,
    /// Bearer token that POST /shutdown requires from non-loopback callers
    #[arg(long, env = "SHUTDOWN_TOKEN", global = true, hide_env_values = true)]
    pub shutdown_token: Option<String>,
    /// How long in-flight batches may finish after a shutdown request [default: 25s]
    #[arg(long, env = "DRAIN_TIMEOUT", global = true)]
    pub drain_timeout: Option<String>,
    /// json | text [default: text]
    #[arg(long, env = "LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// This worker's id in the workers table and leases [default: host-pid-random]
    #[arg(long, env = "WORKER_ID", global = true)]
    pub worker_id: Option<String>,
    /// Whole-request timeout of a provider call [default: 60s]
    #[arg(long, env = "PROVIDER_TIMEOUT", global = true)]
    pub provider_timeout: Option<String>,
    /// Longest pause a provider's Retry-After or rate-limit reset may impose, 1s–24h [default: 5m]
    #[arg(long, env = "MAX_PROVIDER_PAUSE", global = true)]
    pub max_provider_pause: Option<String>,
    /// Most inputs per request [default: 2048 for openai, 32 for openai-compatible (TEI's default)]
    #[arg(long, env = "OPENAI_MAX_INPUTS_PER_REQUEST", global = true)]
    pub openai_max_inputs_per_request: Option<String>,
    /// Most tokens per request [default: 300000 for openai, 16384 for openai-compatible]
    #[arg(long, env = "OPENAI_MAX_TOKENS_PER_REQUEST", global = true)]
    pub openai_max_tokens_per_request: Option<String>,
    /// Most tokens per input [default: 8192 for openai, 512 for openai-compatible]
    #[arg(long, env = "OPENAI_MAX_TOKENS_PER_INPUT", global = true)]
    pub openai_max_tokens_per_input: Option<String>,
    /// Gemini taskType [default: RETRIEVAL_DOCUMENT]
    #[arg(long, env = "GEMINI_TASK_TYPE", global = true)]
    pub gemini_task_type: Option<String>,
    /// Base URL of the Gemini API [default: https://generativelanguage.googleapis.com]
    #[arg(long, env = "GEMINI_BASE_URL", global = true)]
    pub gemini_base_url: Option<String>,
    /// truncate | reject: what happens to an input longer than the model accepts [default: truncate]
    #[arg(long, env = "OVERLONG_INPUT", global = true)]
    pub overlong_input: Option<String>,
    /// worker | fleet: whether the per-minute budgets are per process or shared through PostgreSQL
    /// [default: fleet with PostgreSQL, worker with SQLite]
    #[arg(long, env = "RATE_LIMIT_SCOPE", global = true)]
    pub rate_limit_scope: Option<String>,
    /// Where `embq model fetch` puts the local model [default: $XDG_CACHE_HOME/embq/models or ~/.cache/embq/models]
    #[arg(long, env = "MODEL_CACHE_DIR", global = true)]
    pub model_cache_dir: Option<String>,
    /// auto | candle | onnx: the local model's engine; auto takes ONNX Runtime when its library
    /// and the graph (`embq model export-onnx`) are there, candle otherwise [default: auto]
    #[arg(long, env = "LOCAL_BACKEND", global = true)]
    pub local_backend: Option<String>,
    /// The ONNX Runtime library (libonnxruntime.so*) for LOCAL_BACKEND auto/onnx [default: the
    /// system loader's search path]
    #[arg(long, env = "ORT_DYLIB_PATH", global = true)]
    pub ort_dylib_path: Option<String>,
    /// auto | vector | halfvec | real[]: how PostgreSQL stores vectors; auto picks pgvector's
    /// vector(N) (halfvec(N) above 2000 dimensions) when the extension can be used [default: auto]
    #[arg(long, env = "VECTOR_TYPE", global = true)]
    pub vector_type: Option<String>,
    /// none | hnsw: the index `embq migrate` builds on the stored vectors [default: none]
    #[arg(long, env = "VECTOR_INDEX", global = true)]
    pub vector_index: Option<String>,
    /// How long one-shot commands keep trying to reach the database before exit 69; a worker
    /// keeps trying, not ready, until it is stopped [default: 10s]
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT", global = true)]
    pub database_connect_timeout: Option<String>,
    /// true lets loopback callers of POST /shutdown omit SHUTDOWN_TOKEN [default: false]
    #[arg(long, env = "SHUTDOWN_LOOPBACK_EXEMPT", global = true)]
    pub shutdown_loopback_exempt: Option<String>,
    /// on | off: send `batch`-lane jobs through the OpenAI Batch API (half price, within 24h);
    /// needs EMBEDDING_PROVIDER=openai [default: off]
    #[arg(long, env = "BATCH_LANE", global = true)]
    pub batch_lane: Option<String>,
    /// How often an open provider batch is polled, with its unit [default: 60s]
    #[arg(long, env = "BATCH_LANE_POLL_INTERVAL", global = true)]
    pub batch_lane_poll_interval: Option<String>,
    /// Move ready online jobs of a priority below BATCH_LANE_MAX_PRIORITY to the batch lane once
    /// more than this many are ready [default: unset, no automatic move]
    #[arg(long, env = "BATCH_LANE_BACKLOG", global = true)]
    pub batch_lane_backlog: Option<String>,
    /// Priorities below this count as backlog for BATCH_LANE_BACKLOG [default: 0]
    #[arg(long, env = "BATCH_LANE_MAX_PRIORITY", global = true)]
    pub batch_lane_max_priority: Option<String>,
    /// Estimated tokens open batches may hold per model (OpenAI's batch queue limit)
    /// [default: 3000000, tier 1 for text-embedding-3]
    #[arg(long, env = "BATCH_LANE_MAX_ENQUEUED_TOKENS", global = true)]
    pub batch_lane_max_enqueued_tokens: Option<String>,
    /// Most requests in one batch file, 1–50000 [default: 50000]
    #[arg(long, env = "BATCH_LANE_MAX_REQUESTS", global = true)]
    pub batch_lane_max_requests: Option<String>,
}
