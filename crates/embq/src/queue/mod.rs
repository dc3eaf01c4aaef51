//! The job queue: one small trait with a PostgreSQL and a SQLite implementation
//! that behave identically (one conformance suite, `tests/queue_conformance.rs`).
//!
//! Lifecycle of a job: `ready` (run_at in the future = scheduled) -> `running`
//! (leased to one worker with a token and an expiry) -> `done` | `dead`, or back to
//! `ready` on retry, release or lease expiry. A `ready` job that was overtaken by a
//! newer enqueue of the same key ends as `superseded`; one whose record was deleted (or whose
//! write-back row is gone) ends as `cancelled`.
//!
//! Where things are: this file holds the [`Queue`] trait and `connect`; `claimed.rs` a claimed
//! job, its lease, its [`Outcome`] and the finish/rescue reports; `job.rs` a job to enqueue;
//! `state.rs` the [`JobState`]/[`WorkerState`] enums and a worker's row; `rows.rs` and
//! `stats.rs` the rows both stores decode and the stats folding; `dead.rs` dead-lettered jobs;
//! `clock.rs` where timestamps come from; `postgres/` and `sqlite/` one file per operation
//! (`claim.rs`, `finish.rs`, `enqueue.rs`, `maintenance.rs`, `dead_letters.rs`, `search.rs`,
//! `migrate.rs`, `browse.rs`); `browse.rs` here the console's read types; `batches.rs` and
//! `batch_pack.rs` the batch lane's records and packing; `schema.rs` the embedded migrations
//! and version rules; `search.rs` stored embeddings and the client-side scan; `errors.rs`
//! [`QueueError`] and how database errors are sorted.

mod batch_pack;
mod batches;
mod browse;
mod claimed;
mod clock;
mod dead;
mod errors;
mod job;
mod postgres;
mod prune;
mod rows;
mod schema;
mod search;
mod settings;
mod sqlite;
mod state;
mod stats;

pub use batches::{lease_of, BatchUpdate, GatherLimits, Gathered, LaneStats, ProviderBatch, Sizer, BATCH_LEASE_OWNER};
pub use browse::{
    minute_floor, Activity, DeadGroup, JobDetail, JobFilter, JobSummary, MinuteActivity, VectorInfo, WorkerLeases,
    MAX_LISTING,
};
pub use claimed::{ClaimedJob, FinishReport, Lease, Outcome, RescueReport};
pub use clock::Clock;
pub use dead::{DeadJob, DeadSelection};
pub use errors::QueueError;
pub(crate) use job::dedupe_keys;
pub use job::{text_sha256, EnqueueReport, NewJob, MAX_KEY_BYTES, MAX_METADATA_BYTES, MAX_TEXT_BYTES};
pub use postgres::{ColumnType, IndexOutcome, PgQueue, VectorIndex, VectorStorage, HNSW_INDEX};
pub use prune::{PruneReport, PruneRequest, PRUNE_BATCH_SIZE};
pub use schema::{MigrateOptions, MigrateReport, SchemaFit, SCHEMA_VERSION};
pub use search::{scan, Search, SearchHit, SearchMethod, StoredEmbedding};
pub use settings::{PoolMode, StoreSettings, VectorSettings};
pub use sqlite::SqliteQueue;
pub use state::{BatchState, JobState, Lane, UnknownState, WorkerInfo, WorkerState};
pub use stats::QueueStats;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

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
    /// Fails unless this binary runs against the installed schema: its own version, or a newer
    /// one whose migrations since are all additive (`schema.rs`).
    async fn check_schema(&self) -> Result<SchemaFit, QueueError>;
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
    /// Counts jobs by state, finished ones included (a scan of all history: `embq queue stats`).
    async fn stats(&self) -> Result<QueueStats, QueueError>;
    /// Counts only the live states (ready, scheduled, running, dead) through an index that holds
    /// nothing else, so its cost does not grow with finished history; `done`, `superseded` and
    /// `cancelled` are left at 0. The workers' gauges come from this.
    async fn live_stats(&self) -> Result<QueueStats, QueueError> {
        self.stats().await
    }
    /// Takes lease `name` for `holder` until `ttl` from now, or renews it, unless another holder's
    /// is unexpired; true when `holder` holds it. One statement, so it works through a
    /// transaction pooler. A store with one process (SQLite) holds every lease.
    async fn hold_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        let _ = (name, holder, ttl);
        Ok(true)
    }
    /// Gives up `holder`'s lease `name` so another may take it at once.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), QueueError> {
        let _ = (name, holder);
        Ok(())
    }
    /// Deletes finished jobs older than the request says, a batch per short transaction (rows
    /// another transaction holds are skipped, never waited for); `progress` gets rows so far.
    async fn prune(&self, req: &PruneRequest, progress: &Progress) -> Result<PruneReport, QueueError>;
    /// True when no job is ready now or due within `within`, none is running anywhere and no
    /// provider batch is open (one may still hold results to store).
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
    // The console's reads; both stores implement them, the defaults refuse (a test wrapper).

    /// Jobs matching the filter, newest first (the console's listing).
    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, QueueError> {
        let _ = filter;
        Err(no_console())
    }
    /// One job in full with its key's stored vector; `None` if there is no such job.
    async fn job(&self, id: i64) -> Result<Option<JobDetail>, QueueError> {
        let _ = id;
        Err(no_console())
    }
    /// Dead jobs grouped by last error, largest group first.
    async fn dead_groups(&self, limit: i64) -> Result<Vec<DeadGroup>, QueueError> {
        let _ = limit;
        Err(no_console())
    }
    /// Ids of the dead jobs whose last error is exactly `error` (the empty text for none).
    async fn dead_ids(&self, error: &str) -> Result<Vec<i64>, QueueError> {
        let _ = error;
        Err(no_console())
    }
    /// Jobs enqueued, done and dead per minute, and the backlog, for `minutes` minutes from `since`.
    async fn activity(&self, since: DateTime<Utc>, minutes: usize) -> Result<Activity, QueueError> {
        let _ = (since, minutes);
        Err(no_console())
    }
    /// Workers with their last heartbeat and the jobs leased to them.
    async fn worker_leases(&self) -> Result<Vec<WorkerLeases>, QueueError> {
        Err(no_console())
    }
    /// Waits for a new-job notification; returns `None` if this store cannot notify.
    async fn listener(&self) -> Option<Box<dyn JobListener>>;

    // The batch lane (OpenAI Batch API); both stores implement it. The defaults refuse, for a
    // store that would not.

    /// Takes ready `batch`-lane jobs within `limits` (each job's cost from `size`) and records
    /// them, in the same transaction, as a batch in state `uploading` under `submission_id`.
    /// Jobs whose vector is current are completed instead, as in `claim`.
    async fn gather_batch(
        &self,
        submission_id: &str,
        model: &str,
        limits: GatherLimits<'_>,
        size: &Sizer<'_>,
    ) -> Result<Gathered, QueueError> {
        let _ = (submission_id, model, limits, size);
        Err(no_batch_lane())
    }
    /// Moves every ready `online` job below priority `below` to the batch lane once more than
    /// `backlog` of them are ready; returns how many moved.
    async fn move_backlog(&self, backlog: u64, below: i32) -> Result<u64, QueueError> {
        let _ = (backlog, below);
        Err(no_batch_lane())
    }
    /// Leases the open batch due soonest to `owner` for `duration`, unless another worker holds it.
    async fn lease_batch(&self, owner: &str, duration: Duration) -> Result<Option<ProviderBatch>, QueueError> {
        let _ = (owner, duration);
        Err(no_batch_lane())
    }
    /// Records a step of batch `id`, only while `owner` holds its lease (renewed for `lease`
    /// unless the update releases it); false when the lease was lost.
    async fn update_batch(
        &self,
        id: i64,
        owner: &str,
        lease: Duration,
        update: &BatchUpdate,
    ) -> Result<bool, QueueError> {
        let _ = (id, owner, lease, update);
        Err(no_batch_lane())
    }
    /// The jobs a batch still holds (running under its lease), in id order.
    async fn batch_jobs(&self, batch: &ProviderBatch) -> Result<Vec<ClaimedJob>, QueueError> {
        let _ = batch;
        Err(no_batch_lane())
    }
    /// Estimated tokens held by batches of `model` that have not ended at the provider.
    async fn enqueued_tokens(&self, model: &str) -> Result<u64, QueueError> {
        let _ = model;
        Err(no_batch_lane())
    }
    /// Jobs per lane and provider batches per state.
    async fn lane_stats(&self) -> Result<LaneStats, QueueError> {
        Err(no_batch_lane())
    }
}

/// The lease naming the one worker that counts the queue and exports the fleet-wide gauges.
pub const FLEET_STATS_LEASE: &str = "fleet-stats";
/// The error of a store without the console's reads.
fn no_console() -> QueueError {
    QueueError::Invalid("this store cannot be browsed by the console".into())
}

/// The error of a store without the batch lane.
fn no_batch_lane() -> QueueError {
    QueueError::Invalid("this store has no batch lane".into())
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
        let db = SqliteQueue::connect(settings.url.expose(), settings.max_connections, clock).await?;
        Ok(Arc::new(db.with_batch_lane(settings.batch_lane)))
    } else {
        Ok(Arc::new(PgQueue::connect(settings, clock).await?))
    }
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

    #[test]
    fn long_errors_are_clipped_on_a_char_boundary() {
        let e = "é".repeat(3000);
        let c = clip_error(&e);
        assert!(c.len() <= 2004);
        assert!(c.ends_with('…'));
    }
}
