//! Every setting, parsed and validated once at start.
//!
//! Values arrive as raw strings (from a command-line flag or its environment
//! variable, see [`RawConfig`]) and are turned into typed values here, so that
//! *all* problems are reported together, each naming its variable.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use clap::Args;
use serde::Serialize;

/// A secret string whose `Debug`/`Display` never reveal it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A database URL; its password is redacted whenever it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

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
        crate::redact::redact_url(&self.0)
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
        crate::redact::scrub(text, &crate::redact::url_secrets(&self.0))
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
pub struct HttpUrl(String);

impl HttpUrl {
    /// The full URL, credentials included, for sending requests.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with every credential redacted.
    pub fn redacted(&self) -> String {
        crate::redact::redact_url(&self.0)
    }
}

/// Which embedding provider the worker calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI's public API.
    Openai,
    /// Google Gemini.
    Gemini,
    /// Any server speaking the OpenAI wire format (TEI, Ollama, vLLM, Infinity).
    OpenaiCompatible,
    /// all-MiniLM-L6-v2 in-process.
    Local,
    /// Deterministic vectors derived from a hash of the text, for development and tests.
    Hash,
}

impl ProviderKind {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(Self::Openai),
            "gemini" => Ok(Self::Gemini),
            "openai-compatible" | "openai_compatible" => Ok(Self::OpenaiCompatible),
            "local" => Ok(Self::Local),
            "hash" => Ok(Self::Hash),
            _ => Err("must be one of openai, gemini, openai-compatible, local, hash".into()),
        }
    }
    /// The name used in config, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Gemini => "gemini",
            Self::OpenaiCompatible => "openai-compatible",
            Self::Local => "local",
            Self::Hash => "hash",
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (containers).
    Json,
    /// Human-readable lines.
    Text,
}

/// How the PostgreSQL URL is reached, which decides what session state may be relied on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A direct connection (or a session-mode pooler): prepared statements are cached, LISTEN works.
    Session,
    /// A transaction-mode pooler (PgBouncer, Supavisor on 6543): no cached statements, no LISTEN.
    Transaction,
}

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
    /// Poll interval in ms when no notification arrives (jittered ±10%) [default: 5000]
    #[arg(long, env = "QUEUE_POLL_INTERVAL", global = true)]
    pub queue_poll_interval: Option<String>,
    /// Batches processed at once by one worker [default: 3]
    #[arg(long, env = "MAX_CONCURRENT_JOBS", global = true)]
    pub max_concurrent_jobs: Option<String>,
    /// Jobs per provider request [default: 5]
    #[arg(long, env = "BATCH_SIZE", global = true)]
    pub batch_size: Option<String>,
    /// Heartbeat interval in ms; leases last 1.5 heartbeats [default: 30000]
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
    /// First retry delay (ms, or with a unit: 500ms, 2s, 1m) [default: 1000]
    #[arg(long, env = "RETRY_BASE_DELAY", global = true)]
    pub retry_base_delay: Option<String>,
    /// Longest retry delay [default: 3600000 = 1h]
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
    /// How long in-flight batches may finish after a shutdown request [default: 25000 = 25s]
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
    /// How PostgreSQL stores vectors.
    pub vector_type: crate::queue::VectorStorage,
    /// The index `embq migrate` builds on the stored vectors.
    pub vector_index: crate::queue::VectorIndex,
    /// Loopback callers of POST /shutdown may omit the token.
    pub shutdown_loopback_exempt: bool,
    /// How long one-shot commands retry reaching the database.
    #[serde(serialize_with = "ser_ms")]
    pub database_connect_timeout: Duration,
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

fn http_url(v: &str) -> Result<HttpUrl, String> {
    let u = url::Url::parse(v).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(HttpUrl(v.trim_end_matches('/').to_string()))
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

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// Every problem found in the configuration, each naming its variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Collects problems while fields are parsed.
struct Problems(Vec<String>);

impl Problems {
    fn field<T>(
        &mut self,
        var: &str,
        raw: &Option<String>,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        match raw.as_deref().map(str::trim) {
            None | Some("") => default,
            Some(v) => match parse(v) {
                Ok(t) => t,
                Err(why) => {
                    // Never echo the value of a secret-bearing variable.
                    let shown = if var.contains("KEY") || var.contains("TOKEN") || var.contains("URL") {
                        String::new()
                    } else {
                        format!(" (got {v:?})")
                    };
                    self.0.push(format!("{var}: {why}{shown}"));
                    default
                }
            },
        }
    }
}

/// A whole number in `min..=max` (bounds keep every later conversion and allocation sane).
fn bounded(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> {
    move |v| match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// A whole number in `1..=max` as a `NonZeroUsize`.
fn count_up_to(max: u64) -> impl Fn(&str) -> Result<NonZeroUsize, String> {
    move |v| {
        let n = bounded(1, max)(v)?;
        usize::try_from(n)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| format!("must be a whole number from 1 to {max}"))
    }
}

/// The most batches one worker may run at once.
const MAX_CONCURRENT_JOBS_LIMIT: u64 = 1_024;
/// The most jobs in one batch.
const BATCH_SIZE_LIMIT: u64 = 100_000;
/// The smallest memory limit: an idle worker alone takes about 10 MiB.
const MEMORY_LIMIT_MIN_MB: u64 = 32;
/// The largest memory limit (1 TiB).
const MEMORY_LIMIT_MAX_MB: u64 = 1 << 20;

fn positive_u32(v: &str) -> Result<NonZeroU32, String> {
    v.parse::<NonZeroU32>().map_err(|_| "must be a whole number of at least 1".to_string())
}

fn port(v: &str) -> Result<u16, String> {
    v.parse::<u16>().map_err(|_| "must be a port number from 0 to 65535".to_string())
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

/// Parses a duration: a bare number is milliseconds; `ms`, `s`, `m`, `h` suffixes are accepted.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| "must be milliseconds or a duration such as 500ms, 2s, 1m".to_string())?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3600e3,
        _ => return Err("unknown unit (use ms, s, m or h)".into()),
    };
    if !ms.is_finite() || !(0.0..=1e12).contains(&ms) {
        return Err("out of range".into());
    }
    Ok(Duration::from_micros((ms * 1e3) as u64))
}

fn nonzero_duration(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

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
        let max_provider_pause =
            p.field("MAX_PROVIDER_PAUSE", &self.max_provider_pause, crate::limiter::DEFAULT_MAX_PAUSE, |v| {
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
            vector_type,
            vector_index,
            shutdown_loopback_exempt,
            database_connect_timeout,
        })
    }
}

/// What a worker's pool needs at most: two claims at once, one maintenance statement
/// (heartbeat, lease sweep, stats) and up to three batches recording results; more batches
/// wait their turn for a connection, which takes milliseconds.
fn default_pool_size(max_concurrent_jobs: usize) -> u32 {
    3 + max_concurrent_jobs.min(3) as u32
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawConfig {
        let mut r = RawConfig::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "BATCH_SIZE" => r.batch_size = v,
                "MAX_CONCURRENT_JOBS" => r.max_concurrent_jobs = v,
                "DATABASE_URL" => r.database_url = v,
                "DATABASE_LISTEN_URL" => r.database_listen_url = v,
                "OPENAI_BASE_URL" => r.openai_base_url = v,
                "GEMINI_BASE_URL" => r.gemini_base_url = v,
                "OPENAI_API_KEY" => r.openai_api_key = v,
                "EMBEDDING_PROVIDER" => r.embedding_provider = v,
                "DRAIN_TIMEOUT" => r.drain_timeout = v,
                "BACKOFF_MULTIPLIER" => r.backoff_multiplier = v,
                "ENABLE_QUEUE_PROCESSING" => r.enable_queue_processing = v,
                "SHUTDOWN_TOKEN" => r.shutdown_token = v,
                _ => panic!("test helper lacks {k}"),
            }
        }
        r
    }

    #[test]
    fn defaults_are_the_seeds_values() {
        let c = RawConfig::default().validate().unwrap();
        assert_eq!(c.batch_size.get(), 5);
        assert_eq!(c.max_concurrent_jobs.get(), 3);
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.max_requests_per_minute.get(), 60);
        assert_eq!(c.max_tokens_per_minute.get(), 100_000);
        assert_eq!(c.retry.max_attempts.get(), 5);
        assert_eq!(c.database_url.expose(), "sqlite://embq.db");
        assert_eq!(c.health_port, 8080);
        assert_eq!(c.metrics_port, 9091);
        assert_eq!(c.drain_timeout, Duration::from_secs(25));
        assert_eq!(c.provider, ProviderKind::Hash);
        assert_eq!(c.dimensions, 384);
    }

    #[test]
    fn the_pool_is_sized_by_what_a_worker_needs_not_by_its_concurrency() {
        let pg = "postgres://u@127.0.0.1:5432/db";
        let pool = |jobs: &str| raw(&[("DATABASE_URL", pg), ("MAX_CONCURRENT_JOBS", jobs)]).validate().unwrap();
        assert_eq!(pool("1").db_max_connections, 4);
        assert_eq!(pool("3").db_max_connections, 6);
        // 32 concurrent batches no longer ask for 35 connections each.
        let c = pool("32");
        assert_eq!(c.db_max_connections, 6);
        assert_eq!(c.connections(), Connections { pool: 6, listen: 1, fleet_budget: 0, total: 7 });
        let fleet = raw(&[("DATABASE_URL", pg), ("EMBEDDING_PROVIDER", "openai"), ("OPENAI_API_KEY", "sk-x")]);
        let mut fleet = fleet;
        fleet.rate_limit_scope = Some("fleet".into());
        assert_eq!(fleet.validate().unwrap().connections().total, 9);
        // A transaction pooler gets no LISTEN session; SQLite counts its pool only.
        let pooled = raw(&[("DATABASE_URL", "postgres://u@127.0.0.1:6543/db")]).validate().unwrap();
        assert_eq!(pooled.connections().listen, 0);
        assert_eq!(RawConfig::default().validate().unwrap().connections().listen, 0);
    }

    #[test]
    fn every_problem_is_reported_with_its_variable() {
        let err = raw(&[("BATCH_SIZE", "ten"), ("MAX_CONCURRENT_JOBS", "0"), ("DATABASE_URL", "mysql://x")])
            .validate()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("BATCH_SIZE: must be a whole number"), "{text}");
        assert!(text.contains("\"ten\""), "{text}");
        assert!(text.contains("MAX_CONCURRENT_JOBS"), "{text}");
        assert!(text.contains("DATABASE_URL: must start with"), "{text}");
        assert_eq!(err.0.len(), 3);
    }

    #[test]
    fn durations_accept_ms_and_units() {
        for (input, ms) in
            [("1500", 1500), ("250ms", 250), ("2s", 2000), ("1.5s", 1500), ("1m", 60_000), ("1h", 3_600_000)]
        {
            assert_eq!(parse_duration(input).unwrap(), Duration::from_millis(ms), "{input}");
        }
        for bad in ["", "abc", "5d", "-1", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let c = raw(&[
            ("EMBEDDING_PROVIDER", "openai"),
            ("OPENAI_API_KEY", "sk-very-secret"),
            ("SHUTDOWN_TOKEN", "tok-very-secret"),
            ("DATABASE_URL", "postgres://u:pw-very-secret@127.0.0.1:5432/db?password=q-very-secret"),
            ("DATABASE_LISTEN_URL", "postgres://u@127.0.0.1:5432/db?sslpassword=ssl-very-secret&sslkey=/k.pem"),
            ("OPENAI_BASE_URL", "https://u:base-very-secret@127.0.0.1:8443"),
            ("GEMINI_BASE_URL", "https://u:gem-very-secret@127.0.0.1:8444"),
        ])
        .validate()
        .unwrap();
        let shown = format!("{c:?} {}", serde_json::to_string(&c).unwrap());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("[redacted]"));
        assert!(shown.contains("sslkey=/k.pem"), "a key file path is no secret: {shown}");
    }

    #[test]
    fn bad_secret_values_are_not_echoed() {
        let err = raw(&[("DATABASE_URL", "postgres://u:pw-very-secret@[bad")]).validate().unwrap_err();
        assert!(!err.to_string().contains("very-secret"), "{err}");
    }

    #[test]
    fn provider_requirements_are_checked() {
        let err = raw(&[("EMBEDDING_PROVIDER", "openai")]).validate().unwrap_err();
        assert!(err.to_string().contains("OPENAI_API_KEY: required"), "{err}");
        let err = raw(&[("EMBEDDING_PROVIDER", "magic")]).validate().unwrap_err();
        assert!(err.to_string().contains("EMBEDDING_PROVIDER: must be one of"), "{err}");
    }

    #[test]
    fn pooler_port_selects_transaction_mode() {
        let c = raw(&[("DATABASE_URL", "postgres://u@127.0.0.1:6543/postgres")]).validate().unwrap();
        assert_eq!(c.pool_mode, PoolMode::Transaction);
        let c = raw(&[("DATABASE_URL", "postgres://u@127.0.0.1:5432/postgres")]).validate().unwrap();
        assert_eq!(c.pool_mode, PoolMode::Session);
    }

    #[test]
    fn provider_settings_have_defaults_and_name_their_variable() {
        let c = RawConfig::default().validate().unwrap();
        assert_eq!(c.provider_timeout, Duration::from_secs(60));
        assert_eq!(c.overlong_input, crate::tokens::OverlongInput::Truncate);
        assert_eq!(c.rate_limit_scope, RateLimitScope::Worker, "SQLite budgets per worker");
        assert_eq!(c.request_caps.max_inputs, 2048);
        assert_eq!(c.gemini_task_type, "RETRIEVAL_DOCUMENT");
        let pg = RawConfig { database_url: Some("postgres://u@127.0.0.1/db".into()), ..Default::default() };
        assert_eq!(pg.validate().unwrap().rate_limit_scope, RateLimitScope::Fleet, "PostgreSQL shares the budget");
        let tei = RawConfig {
            embedding_provider: Some("openai-compatible".into()),
            openai_base_url: Some("http://127.0.0.1:8081".into()),
            ..Default::default()
        };
        let caps = tei.validate().unwrap().request_caps;
        assert_eq!((caps.max_inputs, caps.max_tokens_per_request, caps.max_tokens_per_input), (32, 16_384, 512));

        let bad = RawConfig {
            overlong_input: Some("drop".into()),
            rate_limit_scope: Some("fleet".into()),
            gemini_task_type: Some("GUESSING".into()),
            openai_max_inputs_per_request: Some("0".into()),
            provider_timeout: Some("0".into()),
            max_provider_pause: Some("86401s".into()),
            ..Default::default()
        };
        let text = bad.validate().unwrap_err().to_string();
        for var in [
            "OVERLONG_INPUT: must be truncate or reject",
            "RATE_LIMIT_SCOPE: fleet needs a PostgreSQL",
            "GEMINI_TASK_TYPE: must be one of",
            "OPENAI_MAX_INPUTS_PER_REQUEST",
            "PROVIDER_TIMEOUT",
            "MAX_PROVIDER_PAUSE: must be between 1s and 24h",
        ] {
            assert!(text.contains(var), "{var} missing in {text}");
        }
    }

    #[test]
    fn lease_is_one_and_a_half_heartbeats() {
        let c = RawConfig::default().validate().unwrap();
        assert_eq!(c.lease_duration(), Duration::from_secs(45));
        assert_eq!(c.rescue_interval(), Duration::from_secs(15));
    }
}
