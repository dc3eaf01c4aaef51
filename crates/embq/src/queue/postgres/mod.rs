//! The PostgreSQL store (production; Supabase is PostgreSQL): [`PgQueue`], its connection pool,
//! and the [`Queue`] implementation, which hands each operation to the file named after it:
//!
//! - `enqueue.rs`: adding jobs; `claim.rs`: the claim statement; `finish.rs`: storing results,
//!   retries and releases; `maintenance.rs`: heartbeats, the expired-lease sweep, stats, workers;
//!   `dead_letters.rs`: dead jobs; `search.rs`: nearest vectors; `listen.rs`: LISTEN/NOTIFY;
//!   `migrate.rs`: schema and vector-column migrations.
//! - Vector storage: `pgvector.rs` (column types, the binary encoding of a batch), `column.rs`
//!   (the column `migrate` settles, `--reembed`, `embq.search`), `layout.rs` (write-back
//!   destinations and the statement that stores a batch), `index.rs` (HNSW).
//!
//! Every operation runs in an explicit transaction and, behind a transaction-mode
//! pooler, uses unnamed statements only: PgBouncer/Supavisor may hand each
//! transaction a different server connection, so nothing may outlive one.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, FromRow, PgConnection, Postgres, Transaction};

mod batches;
#[cfg(test)]
mod bench_ceiling;
mod browse;
mod claim;
mod column;
mod dead_letters;
mod enqueue;
mod finish;
mod index;
mod layout;
mod listen;
mod maintenance;
mod migrate;
mod pgvector;
mod retention;
mod search;

pub use index::{IndexOutcome, HNSW_INDEX};
pub use pgvector::{ColumnType, VectorIndex, VectorStorage};

use layout::Layout;

use super::search::Search;
use super::settings::{PoolMode, StoreSettings, VectorSettings};
use super::{
    BatchUpdate, ClaimedJob, Clock, DeadJob, DeadSelection, EnqueueReport, FinishReport, GatherLimits, Gathered,
    JobListener, LaneStats, Lease, MigrateOptions, MigrateReport, NewJob, Outcome, Progress, ProviderBatch,
    PruneReport, PruneRequest, Queue, QueueError, QueueStats, RescueReport, SchemaFit, Sizer, StoredEmbedding,
    WorkerInfo,
};
use crate::redact::DatabaseUrl;

/// How long a statement waits for a pooled connection before it fails as an outage.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Queue store on PostgreSQL.
pub struct PgQueue {
    pool: PgPool,
    clock: Clock,
    /// False behind a transaction pooler: statements are not kept on the server.
    persistent: bool,
    /// Where workers LISTEN; `None` behind a transaction pooler without `DATABASE_LISTEN_URL`.
    listen: Option<PgConnectOptions>,
    /// The vector storage the configuration asks for (`embq migrate`, the start-up check).
    vectors: VectorSettings,
    /// The batch lane is on: the online claim leaves `batch`-lane jobs to it.
    online_only: bool,
    /// The vector storage the catalog has, and when it was read; `migrate` forgets it.
    layout: std::sync::RwLock<Option<(std::time::Instant, Arc<Layout>)>>,
}

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;
type QueryAs<'q, T> = sqlx::query::QueryAs<'q, Postgres, T, PgArguments>;
type QueryScalar<'q, T> = sqlx::query::QueryScalar<'q, Postgres, T, PgArguments>;

/// PostgreSQL JIT-compiles any plan it estimates above `jit_above_cost` (large claims, the
/// queue-stats scan): 16 % of the server's CPU while draining an unchanged backlog went to LLVM,
/// for statements that run in milliseconds. embq's sessions turn JIT off.
const NO_JIT: &str = "SET jit = off";
/// The same, for one transaction (through a transaction pooler).
const NO_JIT_HERE: &str = "SET LOCAL jit = off";

/// How long the vector layout (column type, destinations) read from the catalog is trusted.
const LAYOUT_TTL: Duration = Duration::from_secs(30);

/// Connection options for `url`; behind a transaction pooler no statement is cached on the server.
fn options(url: &DatabaseUrl, mode: PoolMode) -> Result<PgConnectOptions, QueueError> {
    let mut opts = PgConnectOptions::from_str(&url.for_driver())
        .map_err(|e| QueueError::Invalid(format!("DATABASE_URL {}: {}", url.redacted(), url.scrub(&e.to_string()))))?
        // PgBouncer rejects unknown startup parameters; this one is optional.
        .extra_float_digits(None)
        .application_name("embq")
        .log_statements(tracing::log::LevelFilter::Trace);
    if mode == PoolMode::Transaction {
        opts = opts.statement_cache_capacity(0);
    }
    Ok(opts)
}

impl PgQueue {
    /// Connects, failing fast with a clear message when the server does not answer.
    pub async fn connect(settings: &StoreSettings, clock: Clock) -> Result<Self, QueueError> {
        let url = &settings.url;
        let opts = options(url, settings.pool_mode)?;
        // One direct connection first: its error says why (refused, auth, unknown database),
        // where a pool would only report a timeout.
        let conn = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(&opts))
            .await
            .map_err(|_| QueueError::Unavailable(format!("timed out connecting to {}", url.redacted())))?
            .map_err(|e| {
                QueueError::Unavailable(format!("cannot connect to {}: {}", url.redacted(), url.scrub(&e.to_string())))
            })?;
        let _ = conn.close().await;
        let session = settings.pool_mode == PoolMode::Session;
        let pool = PgPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if session {
                        // See NO_JIT. Through a transaction pooler a session setting would leak
                        // to other clients: there `begin_without_jit` sets it per transaction.
                        sqlx::Executor::execute(&mut *conn, NO_JIT).await?;
                    }
                    Ok(())
                })
            })
            .max_connections(settings.max_connections)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(opts.clone());
        let listen = match (&settings.listen_url, settings.pool_mode) {
            (Some(u), _) => Some(options(u, PoolMode::Session)?),
            (None, PoolMode::Session) => Some(opts),
            // LISTEN through a transaction pooler silently loses notifications: poll instead.
            (None, PoolMode::Transaction) => None,
        };
        let vectors = settings.vectors.clone();
        Ok(Self {
            pool,
            clock,
            persistent: session,
            listen,
            vectors,
            online_only: settings.batch_lane,
            layout: std::sync::RwLock::default(),
        })
    }

    /// A statement, kept prepared on the server only where that is safe (see `persistent`).
    fn q<'q>(&self, sql: &'q str) -> Query<'q> {
        sqlx::query(sql).persistent(self.persistent)
    }

    /// A statement whose rows decode as `T`.
    fn q_as<'q, T: for<'r> FromRow<'r, PgRow>>(&self, sql: &'q str) -> QueryAs<'q, T> {
        sqlx::query_as(sql).persistent(self.persistent)
    }

    /// A statement whose rows are one column of `T`.
    fn q_scalar<'q, T>(&self, sql: &'q str) -> QueryScalar<'q, T>
    where
        (T,): for<'r> FromRow<'r, PgRow>,
    {
        sqlx::query_scalar(sql).persistent(self.persistent)
    }

    /// A transaction from the pool; a pool timeout is explained (see `acquire_failed`).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, QueueError> {
        match self.pool.begin().await {
            Ok(tx) => Ok(tx),
            Err(e) => Err(self.acquire_failed(e).await),
        }
    }

    /// A pooled connection, outside any transaction.
    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Postgres>, QueueError> {
        match self.pool.acquire().await {
            Ok(c) => Ok(c),
            Err(e) => Err(self.acquire_failed(e).await),
        }
    }

    /// The pool waits out refused and failed connects until its timeout and then says only
    /// that it timed out: one direct connection finds out why.
    async fn acquire_failed(&self, e: sqlx::Error) -> QueueError {
        if !matches!(e, sqlx::Error::PoolTimedOut) {
            return e.into();
        }
        let opts = self.pool.connect_options();
        match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&opts)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                QueueError::Unavailable(format!(
                    "every one of the pool's {} connections (DB_MAX_CONNECTIONS) stayed busy for {} s",
                    self.pool.options().get_max_connections(),
                    ACQUIRE_TIMEOUT.as_secs()
                ))
            }
            Ok(Err(direct)) => direct.into(),
            Err(_) => QueueError::Unavailable("timed out connecting to the database".into()),
        }
    }

    /// A transaction for a statement whose estimate may cross `jit_above_cost` (see NO_JIT):
    /// sessions of their own have JIT off already; behind a transaction pooler the setting is
    /// made for this transaction only.
    async fn begin_without_jit(&self) -> Result<Transaction<'static, Postgres>, QueueError> {
        let mut tx = self.begin().await?;
        if !self.persistent {
            sqlx::query(NO_JIT_HERE).persistent(false).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// The test clock's time for SQL; `None` means the database's own `now()`.
    fn now(&self) -> Option<DateTime<Utc>> {
        self.clock.sql_now()
    }

    /// The vector storage as the catalog has it, read again every `LAYOUT_TTL` so running
    /// workers pick up a destination registered meanwhile.
    async fn layout(&self) -> Result<Arc<Layout>, QueueError> {
        if let Some((at, l)) = self.layout.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if at.elapsed() < LAYOUT_TTL {
                return Ok(l.clone());
            }
        }
        let mut tx = self.begin().await?;
        let layout = Arc::new(layout::load(&mut tx).await?);
        tx.commit().await?;
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), layout.clone()));
        Ok(layout)
    }
}

#[async_trait]
impl Queue for PgQueue {
    async fn migrate_with(&self, opts: MigrateOptions) -> Result<MigrateReport, QueueError> {
        migrate::migrate_with(self, opts).await
    }

    async fn check_vectors(&self) -> Result<(), QueueError> {
        migrate::check_vectors(self).await
    }

    async fn create_index(&self) -> Result<IndexOutcome, QueueError> {
        migrate::create_index(self).await
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
        let mut conn = self.acquire().await?;
        conn.ping().await?;
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

    async fn hold_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        retention::hold_lease(self, name, holder, ttl).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), QueueError> {
        retention::release_lease(self, name, holder).await
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
        listen::listener(self).await
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
