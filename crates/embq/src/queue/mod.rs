//! The job queue: one small trait with a PostgreSQL and a SQLite implementation
//! that behave identically (one conformance suite, `tests/queue_conformance.rs`).
//!
//! Lifecycle of a job: `ready` (run_at in the future = scheduled) -> `running`
//! (leased to one worker with a token and an expiry) -> `done` | `dead`, or back to
//! `ready` on retry, release or lease expiry. A `ready` job that was overtaken by a
//! newer enqueue of the same key ends as `superseded`; one whose record was deleted (or whose
//! write-back row is gone) ends as `cancelled`.
//!
//! Where things are: this file holds the trait, the job and report types, and `connect`;
//! `state.rs` the [`JobState`]/[`WorkerState`] enums; `rows.rs` and `stats.rs` the rows both
//! stores decode and the stats folding; `postgres/` and `sqlite/` one file per operation
//! (`claim.rs`, `finish.rs`, `enqueue.rs`, `maintenance.rs`, `dead_letters.rs`, `search.rs`,
//! `migrate.rs`); `schema.rs` the embedded migrations; `search.rs` the client-side scan;
//! `errors.rs` how database errors are sorted.

mod errors;
mod postgres;
mod rows;
mod schema;
mod search;
mod settings;
mod sqlite;
mod state;
mod stats;

pub use postgres::{ColumnType, IndexOutcome, PgQueue, VectorIndex, VectorStorage, HNSW_INDEX};
pub use schema::SCHEMA_VERSION;
pub use search::{scan, Search, SearchHit, SearchMethod};
pub use settings::{PoolMode, StoreSettings, VectorSettings};
pub use sqlite::SqliteQueue;
pub use state::{JobState, UnknownState, WorkerState};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors from the queue store, named by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database could not be reached or failed; try again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The schema is missing or from another version; an operator must act.
    #[error("{0}")]
    Schema(String),
    /// The request itself was invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The database answered and refused this write for good (a constraint, a trigger, bad
    /// data); repeating it unchanged fails the same way. Holds the database's message.
    #[error("the database refused this write: {0}")]
    Rejected(String),
}

impl QueueError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "database",
            Self::Schema(_) => "schema",
            Self::Invalid(_) => "invalid",
            Self::Rejected(_) => "rejected",
        }
    }
}

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        errors::classify_sqlx(e)
    }
}

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

/// What an enqueue call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnqueueReport {
    /// New jobs.
    pub inserted: u64,
    /// Pending jobs whose text was replaced.
    pub replaced: u64,
}

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Job id.
    pub id: i64,
    /// Source type.
    pub source_type: String,
    /// Source id.
    pub source_id: String,
    /// Content type.
    pub content_type: String,
    /// Text to embed.
    pub text: String,
    /// This is attempt number `attempt` (1-based).
    pub attempt: u32,
    /// Priority.
    pub priority: i32,
    /// The stored embedding already matches this text and model: the claim itself marked the job
    /// done (no lease is held on it), so it needs no provider call and no `finish`.
    pub unchanged: bool,
}

/// Proof that a set of jobs is leased to this worker; `finish` checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The worker holding the lease.
    pub owner: String,
    /// Unique per claim.
    pub token: String,
}

/// How a claimed job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Embedded: store this vector and mark done.
    Done(Vec<f32>),
    /// Stored embedding is current: mark done without writing.
    Unchanged,
    /// Failed; try again after the delay (an attempt was spent).
    Retry {
        /// Delay before the job is ready again.
        after: Duration,
        /// Why it failed.
        error: String,
    },
    /// Failed for good.
    Dead(String),
    /// Not processed (shutdown, throttling): back to ready without spending an attempt.
    Released {
        /// Delay before the job is ready again.
        after: Duration,
    },
}

/// What `finish` applied; jobs whose lease was lost are not counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FinishReport {
    /// Marked done with a new vector.
    pub stored: u64,
    /// Marked done unchanged.
    pub unchanged: u64,
    /// Scheduled for retry.
    pub retried: u64,
    /// Dead-lettered.
    pub dead: u64,
    /// Released.
    pub released: u64,
    /// Superseded by a newer pending job for the same key.
    pub superseded: u64,
    /// Rejected because the lease was lost.
    pub lost: u64,
    /// Embedded, but their write-back row no longer exists: cancelled, nothing stored.
    pub cancelled: u64,
}

/// What the lease sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RescueReport {
    /// Jobs made ready again.
    pub requeued: u64,
    /// Jobs that had used their last attempt and were dead-lettered.
    pub dead: u64,
}

/// Counts for `embq queue stats` and the queue gauges.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct QueueStats {
    /// Claimable now.
    pub ready: u64,
    /// Waiting for a retry time.
    pub scheduled: u64,
    /// Leased to a worker.
    pub running: u64,
    /// Finished.
    pub done: u64,
    /// Dead-lettered.
    pub dead: u64,
    /// Replaced by a newer enqueue.
    pub superseded: u64,
    /// Their record was deleted (PostgreSQL's `embq.forget`) or their write-back row is gone.
    pub cancelled: u64,
    /// Age of the oldest ready job.
    pub oldest_ready_age_seconds: Option<f64>,
    /// Ready jobs per priority, highest first.
    pub ready_by_priority: Vec<(i32, u64)>,
}

/// A dead-lettered job.
#[derive(Debug, Clone, Serialize)]
pub struct DeadJob {
    /// Job id.
    pub id: i64,
    /// Source type.
    pub source_type: String,
    /// Source id.
    pub source_id: String,
    /// Content type.
    pub content_type: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
}

/// Which dead jobs an operation selects.
#[derive(Debug, Clone)]
pub enum DeadSelection {
    /// These ids.
    Ids(Vec<i64>),
    /// All of them.
    All,
}

/// A worker's row in the workers table.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i64,
    /// embq version.
    pub version: String,
    /// Jobs in flight.
    pub in_flight: i64,
    /// Jobs processed since start.
    pub processed: i64,
    /// Jobs failed since start.
    pub failed: i64,
    /// What the worker is doing.
    pub state: WorkerState,
}

/// A stored embedding, for search.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StoredEmbedding {
    /// Source type.
    pub source_type: String,
    /// Source id.
    pub source_id: String,
    /// Content type.
    pub content_type: String,
    /// Model.
    pub model: String,
    /// The vector (PostgreSQL reads its `embedding` column as `real[]`).
    #[sqlx(rename = "embedding")]
    pub vector: Vec<f32>,
    /// The text it was made from, while its job is kept.
    pub text: Option<String>,
}

/// What `migrate_with` may do beyond the schema.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions {
    /// Queue again the texts of vectors from another model or at other dimensions, dropping
    /// those that no longer fit the column (`embq migrate --reembed`).
    pub reembed: bool,
}

/// What a migration did.
#[derive(Debug, Clone, Default)]
pub struct MigrateReport {
    /// The schema version now in place.
    pub version: i32,
    /// What was decided about vector storage, and why, for the operator.
    pub notes: Vec<String>,
}

/// The clock the queue's timestamps come from.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The database's clock (PostgreSQL `now()`), or the system clock for SQLite.
    #[default]
    System,
    /// A clock the tests move by hand.
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    /// A manual clock starting at `start`.
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self::Manual(Arc::new(Mutex::new(start)))
    }
    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Self::Manual(t) = self {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            *t += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
        }
    }
    /// The time to pass to SQL; `None` means "use the database's own clock".
    pub fn sql_now(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::System => None,
            Self::Manual(t) => Some(*t.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }
    /// The current time on this clock, from the process.
    pub fn now(&self) -> DateTime<Utc> {
        self.sql_now().unwrap_or_else(Utc::now)
    }
}

/// The queue store. Both implementations give the same guarantees.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Applies pending schema migrations and settles the vector storage; says what it did.
    async fn migrate_with(&self, opts: MigrateOptions) -> Result<MigrateReport, QueueError>;
    /// Applies pending schema migrations; returns the version now in place.
    async fn migrate(&self) -> Result<i32, QueueError> {
        Ok(self.migrate_with(MigrateOptions::default()).await?.version)
    }
    /// Fails unless every typed vector column fits the configured dimensions (a worker checks
    /// this at start, so it never runs a batch the database must refuse).
    async fn check_vectors(&self) -> Result<(), QueueError>;
    /// Builds the vector index (PostgreSQL with pgvector); resumes an interrupted build.
    async fn create_index(&self) -> Result<IndexOutcome, QueueError>;
    /// The `k` stored vectors of `model` nearest to `query`, of one source type if given.
    async fn search(
        &self,
        query: &[f32],
        model: &str,
        k: usize,
        source_type: Option<&str>,
    ) -> Result<Search, QueueError>;
    /// Fails unless the schema is exactly the version this binary expects.
    async fn check_schema(&self) -> Result<(), QueueError>;
    /// Cheap round trip to see whether the database answers.
    async fn ping(&self) -> Result<(), QueueError>;
    /// Adds jobs (validated first, all or none); a key with a pending job gets its text replaced.
    /// PostgreSQL writes them in one transaction, SQLite in transactions of 20,000 jobs.
    /// `progress` is called with the number of jobs written so far.
    async fn enqueue(&self, jobs: &[NewJob], progress: &Progress) -> Result<EnqueueReport, QueueError>;
    /// Leases up to `limit` ready jobs, highest priority first, then oldest; jobs whose text and
    /// model already have their vector stored are completed on the spot (`unchanged`).
    async fn claim(
        &self,
        limit: usize,
        lease: &Lease,
        duration: Duration,
        model: &str,
    ) -> Result<Vec<ClaimedJob>, QueueError>;
    /// Applies outcomes in one transaction, only to jobs still leased under `lease`.
    async fn finish(&self, lease: &Lease, model: &str, outcomes: &[(i64, Outcome)])
        -> Result<FinishReport, QueueError>;
    /// Extends the running jobs `worker` holds under one of `leases` (tokens of the batches it
    /// is still working on) and refreshes its row; a lease left out lapses and is rescued.
    async fn heartbeat(&self, worker: &WorkerInfo, leases: &[String], duration: Duration) -> Result<u64, QueueError>;
    /// Returns jobs whose lease expired to ready (or dead after their last attempt).
    async fn rescue_expired(&self, max_attempts: u32) -> Result<RescueReport, QueueError>;
    /// Counts jobs by state.
    async fn stats(&self) -> Result<QueueStats, QueueError>;
    /// True when no job is ready now or due within `within`, and none is running anywhere.
    async fn is_idle(&self, within: Duration) -> Result<bool, QueueError>;
    /// Lists dead-lettered jobs, newest first.
    async fn dead_jobs(&self, limit: i64) -> Result<Vec<DeadJob>, QueueError>;
    /// Makes dead jobs ready again with a fresh attempt budget.
    async fn retry_dead(&self, which: &DeadSelection) -> Result<u64, QueueError>;
    /// Deletes dead jobs.
    async fn purge_dead(&self, which: &DeadSelection) -> Result<u64, QueueError>;
    /// Marks the worker stopped.
    async fn worker_stopped(&self, worker: &WorkerInfo) -> Result<(), QueueError>;
    /// Lists known workers.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError>;
    /// All stored embeddings of one model, for a brute-force search.
    async fn embeddings(&self, model: &str, limit: i64) -> Result<Vec<StoredEmbedding>, QueueError>;
    /// Waits for a new-job notification; returns `None` if this store cannot notify.
    async fn listener(&self) -> Option<Box<dyn JobListener>>;
}

/// A progress callback: jobs written so far.
pub type Progress = dyn Fn(u64) + Send + Sync;

/// A callback that ignores progress.
pub fn no_progress(_: u64) {}

/// A stream of "new jobs" wake-ups.
#[async_trait]
pub trait JobListener: Send {
    /// Resolves on the next notification; an error means the listener broke.
    async fn recv(&mut self) -> Result<(), QueueError>;
}

/// Opens the store, retrying an unreachable database with back-off for its `connect_timeout`
/// (`DATABASE_CONNECT_TIMEOUT`; one-shot commands).
pub async fn connect(settings: &StoreSettings) -> Result<Arc<dyn Queue>, QueueError> {
    let deadline = std::time::Instant::now() + settings.connect_timeout;
    connect_until(settings, |_| std::time::Instant::now() < deadline).await
}

/// Opens the store, retrying an unreachable database with back-off (200 ms doubling to 10 s)
/// while `again(error)` says so; other errors (a bad URL) end at once.
pub async fn connect_until(
    settings: &StoreSettings,
    mut again: impl FnMut(&QueueError) -> bool,
) -> Result<Arc<dyn Queue>, QueueError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match connect_with_clock(settings, Clock::System).await {
            Err(e @ QueueError::Unavailable(_)) if again(&e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// Opens a store with an explicit clock (tests).
pub async fn connect_with_clock(settings: &StoreSettings, clock: Clock) -> Result<Arc<dyn Queue>, QueueError> {
    if settings.url.is_sqlite() {
        Ok(Arc::new(SqliteQueue::connect(settings.url.expose(), settings.max_connections, clock).await?))
    } else {
        Ok(Arc::new(PgQueue::connect(settings, clock).await?))
    }
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

/// Splits outcomes into the groups each store writes with one statement.
#[derive(Default)]
pub(crate) struct OutcomeGroups<'a> {
    /// Embedded: (job id, vector).
    pub done: Vec<(i64, &'a [f32])>,
    /// Stored embedding is current.
    pub unchanged: Vec<i64>,
    /// To retry: (job id, delay, error).
    pub retry: Vec<(i64, Duration, &'a str)>,
    /// Failed for good: (job id, error).
    pub dead: Vec<(i64, &'a str)>,
    /// Not processed: (job id, delay).
    pub released: Vec<(i64, Duration)>,
}

impl<'a> OutcomeGroups<'a> {
    /// Groups outcomes by kind, keeping their order within each group.
    pub(crate) fn split(outcomes: &'a [(i64, Outcome)]) -> Self {
        let mut g = Self::default();
        for (id, o) in outcomes {
            match o {
                Outcome::Done(v) => g.done.push((*id, v.as_slice())),
                Outcome::Unchanged => g.unchanged.push(*id),
                Outcome::Retry { after, error } => g.retry.push((*id, *after, error.as_str())),
                Outcome::Dead(e) => g.dead.push((*id, e.as_str())),
                Outcome::Released { after } => g.released.push((*id, *after)),
            }
        }
        g
    }
}

/// Error text stored with a job is bounded so one bad response cannot bloat the table.
pub(crate) fn clip_error(e: &str) -> String {
    const MAX: usize = 2000;
    if e.len() <= MAX {
        return e.to_string();
    }
    let mut end = MAX;
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &e[..end])
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
        let e =
            serde_json::from_str::<NewJob>(r#"{"source_type":"r","source_id":"1","text":"x","colour":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn long_errors_are_clipped_on_a_char_boundary() {
        let e = "é".repeat(3000);
        let c = clip_error(&e);
        assert!(c.len() <= 2004);
        assert!(c.ends_with('…'));
    }
}
