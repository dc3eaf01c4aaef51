//! Shared test support: configs, stores, a worker harness, waiting on conditions, the mock
//! embedding API (`mock_provider`), PostgreSQL (`pg`), the local model's fixtures (`minilm`) and
//! the deploy guide's read-only database roles (`deploy_roles`).
#![allow(dead_code)]

pub mod deploy_roles;
pub mod minilm;
pub mod mock_batch_api;
pub mod mock_provider;
pub mod pg;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embq::config::{Config, RawConfig};
use embq::health::Health;
use embq::limiter::Limiter;
use embq::metrics::Metrics;
use embq::provider::Provider;
use embq::queue::{NewJob, Queue};
use embq::worker::{RunSummary, Worker};
use sqlx::Connection;

/// A database of either store (the SQLite file lives as long as this).
pub struct Db {
    /// Its DATABASE_URL.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh, empty PostgreSQL database or SQLite file.
pub async fn fresh_db(sqlite: bool) -> Db {
    if !sqlite {
        return Db { url: pg::fresh_pg_db().await, _dir: None };
    }
    let dir = tempfile::tempdir().expect("tempdir");
    Db { url: format!("sqlite://{}", dir.path().join("q.db").display()), _dir: Some(dir) }
}

/// Rows of `sql` (written for PostgreSQL's `embq.` schema; SQLite's tables have no schema).
pub async fn rows<T>(url: &str, sql: &str) -> Vec<T>
where
    T: Send
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
{
    if url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query_as(&sql.replace("embq.", "")).fetch_all(&mut c).await.expect("query")
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query_as(sql).fetch_all(&mut c).await.expect("query")
    }
}

/// A validated config from (variable, value) pairs; unknown names are a test bug.
pub fn config(pairs: &[(&str, &str)]) -> Config {
    let mut r = RawConfig::default();
    for (k, v) in pairs {
        let v = Some(v.to_string());
        match *k {
            "DATABASE_URL" => r.database_url = v,
            "EMBEDDING_PROVIDER" => r.embedding_provider = v,
            "EMBEDDING_MODEL" => r.embedding_model = v,
            "EMBEDDING_DIMENSIONS" => r.embedding_dimensions = v,
            "OPENAI_API_KEY" => r.openai_api_key = v,
            "OPENAI_BASE_URL" => r.openai_base_url = v,
            "OPENAI_MAX_INPUTS_PER_REQUEST" => r.openai_max_inputs_per_request = v,
            "OPENAI_MAX_TOKENS_PER_REQUEST" => r.openai_max_tokens_per_request = v,
            "OPENAI_MAX_TOKENS_PER_INPUT" => r.openai_max_tokens_per_input = v,
            "GEMINI_API_KEY" => r.gemini_api_key = v,
            "GEMINI_BASE_URL" => r.gemini_base_url = v,
            "GEMINI_TASK_TYPE" => r.gemini_task_type = v,
            "PROVIDER_TIMEOUT" => r.provider_timeout = v,
            "OVERLONG_INPUT" => r.overlong_input = v,
            "VECTOR_TYPE" => r.vector_type = v,
            "LOCAL_BACKEND" => r.local_backend = v,
            "ORT_DYLIB_PATH" => r.ort_dylib_path = v,
            "VECTOR_INDEX" => r.vector_index = v,
            "RATE_LIMIT_SCOPE" => r.rate_limit_scope = v,
            "MAX_REQUESTS_PER_MINUTE" => r.max_requests_per_minute = v,
            "MAX_TOKENS_PER_MINUTE" => r.max_tokens_per_minute = v,
            "BATCH_SIZE" => r.batch_size = v,
            "MAX_CONCURRENT_JOBS" => r.max_concurrent_jobs = v,
            "MAX_ATTEMPTS" => r.max_attempts = v,
            "QUEUE_POLL_INTERVAL" => r.queue_poll_interval = v,
            "RETRY_BASE_DELAY" => r.retry_base_delay = v,
            "ENABLE_BATCH_OPTIMIZATION" => r.enable_batch_optimization = v,
            "DB_MAX_CONNECTIONS" => r.db_max_connections = v,
            "WORKER_ID" => r.worker_id = v,
            "DATABASE_POOL_MODE" => r.database_pool_mode = v,
            "HEARTBEAT_INTERVAL" => r.heartbeat_interval = v,
            "RETRY_MAX_DELAY" => r.retry_max_delay = v,
            "DRAIN_TIMEOUT" => r.drain_timeout = v,
            "MEMORY_LIMIT_MB" => r.memory_limit_mb = v,
            "BATCH_LANE" => r.batch_lane = v,
            "BATCH_LANE_POLL_INTERVAL" => r.batch_lane_poll_interval = v,
            "BATCH_LANE_BACKLOG" => r.batch_lane_backlog = v,
            "BATCH_LANE_MAX_PRIORITY" => r.batch_lane_max_priority = v,
            "BATCH_LANE_MAX_ENQUEUED_TOKENS" => r.batch_lane_max_enqueued_tokens = v,
            "BATCH_LANE_MAX_REQUESTS" => r.batch_lane_max_requests = v,
            other => panic!("support::config does not know {other}"),
        }
    }
    r.validate().expect("test config is valid")
}

/// A validated config for a database URL, with overrides as (variable, value) pairs.
pub fn config_at(url: &str, overrides: &[(&str, &str)]) -> Config {
    let mut pairs = vec![("DATABASE_URL", url)];
    pairs.extend_from_slice(overrides);
    config(&pairs)
}

/// An OpenAI config against a mock, on a fresh SQLite file in `dir`.
pub fn openai_config(dir: &tempfile::TempDir, mock_url: &str, extra: &[(&str, &str)]) -> Config {
    let db = format!("sqlite://{}", dir.path().join("q.db").display());
    let mut pairs: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", db.as_str()),
        ("EMBEDDING_PROVIDER", "openai"),
        ("OPENAI_API_KEY", "sk-test-key"),
        ("OPENAI_BASE_URL", mock_url),
        ("EMBEDDING_DIMENSIONS", "8"),
        ("PROVIDER_TIMEOUT", "2s"),
        ("MAX_REQUESTS_PER_MINUTE", "60000"),
        ("MAX_TOKENS_PER_MINUTE", "10000000"),
        ("QUEUE_POLL_INTERVAL", "50ms"),
        ("RETRY_BASE_DELAY", "10ms"),
    ];
    pairs.extend_from_slice(extra);
    config(&pairs)
}

/// Jobs `0..n` of source type `doc` with texts from `text(i)`.
pub fn jobs(n: usize, text: impl Fn(usize) -> String) -> Vec<NewJob> {
    (0..n)
        .map(|i| NewJob {
            source_type: "doc".into(),
            source_id: i.to_string(),
            content_type: "default".into(),
            text: text(i),
            priority: 0,
            metadata: None,
            lane: embq::queue::Lane::Online,
        })
        .collect()
}

/// Opens and migrates the configured store and enqueues `jobs`.
pub async fn queue_with(cfg: &Config, jobs: &[NewJob]) -> Arc<dyn Queue> {
    let q = embq::queue::connect(&cfg.store()).await.expect("open store");
    q.migrate().await.expect("migrate");
    q.enqueue(jobs, &embq::queue::no_progress).await.expect("enqueue");
    q
}

/// A worker that exits once the queue is drained, and what it shares with the test.
pub struct Harness {
    /// The worker.
    pub worker: Worker,
    /// Its health.
    pub health: Arc<Health>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
}

/// Builds a draining worker over `queue` with the configured provider (or `limiter`).
pub fn harness(cfg: &Config, queue: Arc<dyn Queue>, limiter: Option<Arc<Limiter>>) -> Harness {
    let provider: Arc<dyn Provider> = cfg.provider().expect("provider");
    let metrics = Arc::new(Metrics::new("test", cfg.provider.as_str(), &cfg.model));
    let health = Arc::new(Health::new(cfg.worker_id.clone(), true, Duration::from_secs(30)));
    let mut worker = Worker::new(cfg.clone(), queue, provider, health.clone(), metrics.clone()).drain_when_idle(true);
    if let Some(l) = limiter {
        worker = worker.with_limiter(l);
    }
    Harness { worker, health, metrics }
}

/// Runs a draining worker to the end, failing the test after `timeout`.
pub async fn drain(h: Harness, timeout: Duration) -> RunSummary {
    tokio::time::timeout(timeout, h.worker.run()).await.expect("worker drained in time").expect("worker ran")
}

/// Reads one metric sample's value from the exposition.
pub fn metric(m: &Metrics, sample: &str) -> f64 {
    m.encode()
        .lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or(0.0)
}

/// Opens a store for a URL.
pub async fn store(url: &str, clock: embq::queue::Clock) -> std::sync::Arc<dyn embq::queue::Queue> {
    store_with(url, clock, &[]).await
}

/// A store with settings (`EMBEDDING_DIMENSIONS`, `VECTOR_TYPE`, …) as (variable, value) pairs.
pub async fn store_with(
    url: &str,
    clock: embq::queue::Clock,
    overrides: &[(&str, &str)],
) -> std::sync::Arc<dyn embq::queue::Queue> {
    let mut pairs = vec![("DB_MAX_CONNECTIONS", "20")];
    pairs.extend_from_slice(overrides);
    let cfg = config_at(url, &pairs);
    embq::queue::connect_with_clock(&cfg.store(), clock).await.expect("open store")
}

/// Polls `check` until it returns true or the deadline passes (then panics with `what`).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` jobs keyed `{prefix}{i}`, with distinct texts.
pub fn jobs_named(n: usize, prefix: &str) -> Vec<embq::queue::NewJob> {
    (0..n)
        .map(|i| embq::queue::NewJob {
            source_type: "doc".into(),
            source_id: format!("{prefix}{i}"),
            content_type: "default".into(),
            text: format!("text of {prefix} number {i}"),
            priority: 0,
            metadata: None,
            lane: embq::queue::Lane::Online,
        })
        .collect()
}

/// A free loopback port (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A child process that is killed if the test ends (or panics) while it still runs.
pub struct Reaper(pub std::process::Child);

impl std::ops::Deref for Reaper {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaper {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Queues `n` jobs, drains a worker over them (give `MAX_ATTEMPTS=1` for a failure to
/// dead-letter at once) and returns each dead job's `last_error`.
pub async fn dead_letter_errors(cfg: &Config, n: usize) -> Vec<String> {
    let q = queue_with(cfg, &jobs(n, |i| format!("text {i}"))).await;
    let summary = drain(harness(cfg, q.clone(), None), Duration::from_secs(20)).await;
    assert_eq!(summary.dead, n as u64, "{summary:?}");
    let dead = q.dead_jobs(n as i64 + 1).await.expect("dead jobs");
    dead.into_iter().map(|d| d.last_error.unwrap_or_default()).collect()
}

/// Dead-letters `jobs` with `errors` (in order of source id) through the store's own claim
/// and finish; returns their ids in that order.
pub async fn dead_letter(q: &Arc<dyn Queue>, jobs: &[NewJob], errors: &[&str]) -> Vec<i64> {
    q.enqueue(jobs, &embq::queue::no_progress).await.expect("enqueue");
    let lease = embq::queue::Lease { owner: "test".into(), token: "t-1".into() };
    let claimed = q.claim(jobs.len(), &lease, Duration::from_secs(60), "unused").await.expect("claim");
    let mut ids: Vec<(String, i64)> = claimed.iter().map(|c| (c.source_id.clone(), c.id)).collect();
    ids.sort();
    let outcomes: Vec<(i64, embq::queue::Outcome)> =
        ids.iter().zip(errors).map(|((_, id), e)| (*id, embq::queue::Outcome::Dead(e.to_string()))).collect();
    assert_eq!(q.finish(&lease, "unused", &outcomes).await.expect("finish").dead, errors.len() as u64);
    ids.into_iter().map(|(_, id)| id).collect()
}
