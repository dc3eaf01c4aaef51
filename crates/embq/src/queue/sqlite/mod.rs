//! The SQLite store: the embedded default for one machine, same semantics as PostgreSQL.
//! [`SqliteQueue`], its pool, and the [`Queue`] implementation, which hands each operation to the
//! file named after it: `enqueue.rs`, `claim.rs`, `finish.rs`, `maintenance.rs` (heartbeats, the
//! expired-lease sweep, stats, workers), `dead_letters.rs`, `search.rs` and `migrate.rs`.
//!
//! SQLite has one writer at a time; every write runs in a `BEGIN IMMEDIATE`
//! transaction so read-then-write sequences never fail to upgrade their lock.
//! Times are integer milliseconds; vectors are little-endian f32 blobs.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

mod batches;
mod browse;
mod claim;
mod dead_letters;
mod enqueue;
mod finish;
mod maintenance;
mod migrate;
mod retention;
mod search;

use super::search::Search;
use super::{
    BatchUpdate, ClaimedJob, Clock, DeadJob, DeadSelection, EnqueueReport, FinishReport, GatherLimits, Gathered,
    IndexOutcome, JobListener, LaneStats, Lease, MigrateOptions, MigrateReport, NewJob, Outcome, Progress,
    ProviderBatch, PruneReport, PruneRequest, Queue, QueueError, QueueStats, RescueReport, SchemaFit, Sizer,
    StoredEmbedding, WorkerInfo,
};

/// Queue store in one SQLite file.
pub struct SqliteQueue {
    pool: SqlitePool,
    clock: Clock,
    /// The batch lane is on: the online claim leaves `batch`-lane jobs to it.
    online_only: bool,
}

/// A duration in whole milliseconds, the unit of SQLite's times.
fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The SQL fragment shared by retry, release, rescue and dead-letter retry: ready again, or
/// superseded by a pending job.
const REQUEUE_STATE: &str = "CASE WHEN EXISTS (SELECT 1 FROM jobs p WHERE p.source_type = jobs.source_type \
     AND p.source_id = jobs.source_id AND p.content_type = jobs.content_type AND p.state = 'ready') \
     THEN 'superseded' ELSE 'ready' END";

impl SqliteQueue {
    /// Opens (creating if needed) the database file named by a `sqlite:` URL.
    pub async fn connect(url: &str, max_connections: u32, clock: Clock) -> Result<Self, QueueError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| QueueError::Invalid(format!("DATABASE_URL {}: {e}", crate::redact::redact_url(url))))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.clamp(1, 8))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(|e| QueueError::Unavailable(format!("cannot open {}: {e}", crate::redact::redact_url(url))))?;
        Ok(Self { pool, clock, online_only: false })
    }

    /// With the batch lane on, the online claim takes only `online`-lane jobs.
    pub fn with_batch_lane(mut self, on: bool) -> Self {
        self.online_only = on;
        self
    }

    /// Now on this store's clock, in SQLite's unit (milliseconds since the epoch).
    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// A write transaction: the write lock is taken at once, so no read in it must upgrade later.
    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, QueueError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn migrate_with(&self, opts: MigrateOptions) -> Result<MigrateReport, QueueError> {
        migrate::migrate_with(self, opts).await
    }

    async fn check_vectors(&self) -> Result<(), QueueError> {
        // Blobs take any dimensions; search skips vectors of other sizes.
        Ok(())
    }

    async fn create_index(&self) -> Result<IndexOutcome, QueueError> {
        Err(QueueError::Invalid(
            "SQLite has no vector index: search scans the stored vectors (use PostgreSQL with pgvector for an index)"
                .into(),
        ))
    }

    async fn search(
        &self,
        query: &[f32],
        model: &str,
        k: usize,
        source_type: Option<&str>,
    ) -> Result<Search, QueueError> {
        search::search(self, query, model, k, source_type).await
    }

    async fn check_schema(&self) -> Result<SchemaFit, QueueError> {
        migrate::check_schema(self).await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn enqueue(&self, jobs: &[NewJob], progress: &Progress) -> Result<EnqueueReport, QueueError> {
        enqueue::enqueue(self, jobs, progress).await
    }

    async fn claim(
        &self,
        limit: usize,
        lease: &Lease,
        duration: Duration,
        model: &str,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        claim::claim(self, limit, lease, duration, model).await
    }

    async fn finish(
        &self,
        lease: &Lease,
        model: &str,
        outcomes: &[(i64, Outcome)],
    ) -> Result<FinishReport, QueueError> {
        finish::finish(self, lease, model, outcomes).await
    }

    async fn heartbeat(&self, w: &WorkerInfo, leases: &[String], duration: Duration) -> Result<u64, QueueError> {
        maintenance::heartbeat(self, w, leases, duration).await
    }

    async fn rescue_expired(&self, max_attempts: u32) -> Result<RescueReport, QueueError> {
        maintenance::rescue_expired(self, max_attempts).await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        maintenance::stats(self).await
    }

    async fn live_stats(&self) -> Result<QueueStats, QueueError> {
        retention::live_stats(self).await
    }

    async fn prune(&self, req: &PruneRequest, progress: &Progress) -> Result<PruneReport, QueueError> {
        retention::prune(self, req, progress).await
    }

    async fn is_idle(&self, within: Duration) -> Result<bool, QueueError> {
        maintenance::is_idle(self, within).await
    }

    async fn dead_jobs(&self, limit: i64) -> Result<Vec<DeadJob>, QueueError> {
        dead_letters::dead_jobs(self, limit).await
    }

    async fn retry_dead(&self, which: &DeadSelection) -> Result<u64, QueueError> {
        dead_letters::retry_dead(self, which).await
    }

    async fn purge_dead(&self, which: &DeadSelection) -> Result<u64, QueueError> {
        dead_letters::purge_dead(self, which).await
    }

    async fn worker_stopped(&self, w: &WorkerInfo) -> Result<(), QueueError> {
        maintenance::worker_stopped(self, w).await
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        maintenance::workers(self).await
    }

    async fn embeddings(&self, model: &str, limit: i64) -> Result<Vec<StoredEmbedding>, QueueError> {
        search::embeddings(self, model, limit).await
    }

    async fn jobs(&self, filter: &super::JobFilter) -> Result<Vec<super::JobSummary>, QueueError> {
        browse::jobs(self, filter).await
    }

    async fn job(&self, id: i64) -> Result<Option<super::JobDetail>, QueueError> {
        browse::job(self, id).await
    }

    async fn dead_groups(&self, limit: i64) -> Result<Vec<super::DeadGroup>, QueueError> {
        browse::dead_groups(self, limit).await
    }

    async fn dead_ids(&self, error: &str) -> Result<Vec<i64>, QueueError> {
        browse::dead_ids(self, error).await
    }

    async fn activity(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        minutes: usize,
    ) -> Result<super::Activity, QueueError> {
        browse::activity(self, since, minutes).await
    }

    async fn worker_leases(&self) -> Result<Vec<super::WorkerLeases>, QueueError> {
        browse::worker_leases(self).await
    }

    async fn listener(&self) -> Option<Box<dyn JobListener>> {
        None
    }

    async fn gather_batch(
        &self,
        submission_id: &str,
        model: &str,
        limits: GatherLimits<'_>,
        size: &Sizer<'_>,
    ) -> Result<Gathered, QueueError> {
        batches::gather(self, submission_id, model, limits, size).await
    }

    async fn move_backlog(&self, backlog: u64, below: i32) -> Result<u64, QueueError> {
        batches::move_backlog(self, backlog, below).await
    }

    async fn lease_batch(&self, owner: &str, duration: Duration) -> Result<Option<ProviderBatch>, QueueError> {
        batches::lease(self, owner, duration).await
    }

    async fn update_batch(&self, id: i64, owner: &str, lease: Duration, u: &BatchUpdate) -> Result<bool, QueueError> {
        batches::update(self, id, owner, lease, u).await
    }

    async fn batch_jobs(&self, batch: &ProviderBatch) -> Result<Vec<ClaimedJob>, QueueError> {
        batches::jobs(self, batch).await
    }

    async fn enqueued_tokens(&self, model: &str) -> Result<u64, QueueError> {
        batches::enqueued_tokens(self, model).await
    }

    async fn lane_stats(&self) -> Result<LaneStats, QueueError> {
        batches::stats(self).await
    }
}
