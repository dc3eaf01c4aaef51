//! The PostgreSQL store (production; Supabase is PostgreSQL).
//!
//! Every operation runs in an explicit transaction and, behind a transaction-mode
//! pooler, uses unnamed statements only: PgBouncer/Supavisor may hand each
//! transaction a different server connection, so nothing may outlive one.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, FromRow, PgConnection, Postgres, Transaction};

mod column;
mod index;
mod layout;
mod pgvector;

pub use index::{IndexOutcome, HNSW_INDEX};
pub use pgvector::{ColumnType, VectorIndex, VectorStorage};

use column::{migrate_column, ColumnPlan};
use index::create_hnsw;
use layout::{Layout, CANCEL_MISSING_SQL};
use pgvector::{text_literal, VectorBatch};

use super::rows::{ClaimedRow, DeadRow};
use super::schema::{self, SCHEMA_VERSION};
use super::search::{scan, Search, SearchHit, SearchMethod};
use super::stats::{fold_stats, StatRow};
use super::{
    clip_error, dedupe_keys, ClaimedJob, Clock, DeadJob, DeadSelection, EnqueueReport, FinishReport, JobListener,
    JobState, Lease, MigrateOptions, MigrateReport, NewJob, Outcome, OutcomeGroups, Progress, Queue, QueueError,
    QueueStats, RescueReport, StoredEmbedding, WorkerInfo,
};
use crate::config::{Config, DatabaseUrl, PoolMode};

/// The NOTIFY channel workers LISTEN on.
pub const CHANNEL: &str = "embq_jobs";

/// Rows per INSERT when enqueueing; all chunks share one transaction.
const ENQUEUE_CHUNK: usize = 5000;

/// How long a statement waits for a pooled connection before it fails as an outage.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Queue store on PostgreSQL.
pub struct PgQueue {
    pool: PgPool,
    clock: Clock,
    /// False behind a transaction pooler: statements are not kept on the server.
    persistent: bool,
    listen: Option<PgConnectOptions>,
    /// The vector storage the configuration asks for (`embq migrate`, the start-up check).
    vectors: VectorSettings,
    /// The vector storage the catalog has, and when it was read; `migrate` forgets it.
    layout: std::sync::RwLock<Option<(std::time::Instant, Arc<Layout>)>>,
}

/// The settings that shape vector storage.
#[derive(Clone, Debug)]
struct VectorSettings {
    storage: VectorStorage,
    index: VectorIndex,
    dims: usize,
    model: String,
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

/// Claims up to $2 ready jobs under lease ($3 owner, $4 token, $5 seconds) and completes at once
/// those whose text already has a vector from model $6. `scripts/bench/claim-finish.sql` runs
/// the same statement as the pgbench ceiling; a test keeps the two in step.
const CLAIM_SQL: &str = "WITH picked AS (
        SELECT id FROM embq.jobs
        WHERE state = 'ready' AND run_at <= COALESCE($1::timestamptz, now())
        ORDER BY priority DESC, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ), checked AS MATERIALIZED (
        -- MATERIALIZED: inlined, the flag's two probes ran again for each of its seven uses below.
        SELECT p.id, EXISTS (SELECT 1 FROM embq.embeddings e
                WHERE e.source_type = j.source_type AND e.source_id = j.source_id
                  AND e.content_type = j.content_type AND e.model = $6
                  AND e.text_sha256 = j.text_sha256)
            -- An older job for the key still running stores its text's vector later: this one
            -- is then embedded, so the newest text's vector wins (its job id is higher).
            AND NOT EXISTS (SELECT 1 FROM embq.jobs r
                WHERE r.source_type = j.source_type AND r.source_id = j.source_id
                  AND r.content_type = j.content_type AND r.state = 'running' AND r.id < j.id) AS unchanged
        FROM picked p JOIN embq.jobs j ON j.id = p.id
    )
    -- Unchanged jobs are done right here: one row version and no second round trip.
    UPDATE embq.jobs j
    SET state = CASE WHEN c.unchanged THEN 'done' ELSE 'running' END,
        attempts = j.attempts + 1,
        lease_owner = CASE WHEN c.unchanged THEN NULL ELSE $3 END,
        lease_token = CASE WHEN c.unchanged THEN NULL ELSE $4 END,
        lease_expires_at = CASE WHEN c.unchanged THEN NULL
            ELSE COALESCE($1::timestamptz, now()) + make_interval(secs => $5) END,
        finished_at = CASE WHEN c.unchanged THEN COALESCE($1::timestamptz, now()) ELSE j.finished_at END,
        last_error = CASE WHEN c.unchanged THEN NULL ELSE j.last_error END,
        updated_at = COALESCE($1::timestamptz, now())
    FROM checked c
    WHERE j.id = c.id
    RETURNING j.id, j.source_type, j.source_id, j.content_type, j.text, j.attempts, j.priority,
        c.unchanged";

/// How long the vector layout (column type, destinations) read from the catalog is trusted.
const LAYOUT_TTL: Duration = Duration::from_secs(30);

/// Most stored vectors a client-side search reads (real[] columns, where PostgreSQL cannot rank them).
const SCAN_LIMIT: i64 = 1_000_000;

/// What building the index did, for the operator.
fn index_note(o: &IndexOutcome) -> String {
    match o {
        IndexOutcome::Present => "the HNSW index embq.embeddings_embedding_hnsw_idx is in place".into(),
        IndexOutcome::Built { replaced_invalid, took } => format!(
            "built the HNSW index embq.embeddings_embedding_hnsw_idx in {} ms (CONCURRENTLY: writes went on){}",
            took.as_millis(),
            if *replaced_invalid { ", replacing an interrupted build" } else { "" }
        ),
    }
}

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
    pub async fn connect(cfg: &Config, url: &DatabaseUrl, clock: Clock) -> Result<Self, QueueError> {
        let opts = options(url, cfg.pool_mode)?;
        // One direct connection first: its error says why (refused, auth, unknown database),
        // where a pool would only report a timeout.
        let conn = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(&opts))
            .await
            .map_err(|_| QueueError::Unavailable(format!("timed out connecting to {}", url.redacted())))?
            .map_err(|e| {
                QueueError::Unavailable(format!("cannot connect to {}: {}", url.redacted(), url.scrub(&e.to_string())))
            })?;
        let _ = conn.close().await;
        let session = cfg.pool_mode == PoolMode::Session;
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
            .max_connections(cfg.db_max_connections)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(opts.clone());
        let listen = match (&cfg.database_listen_url, cfg.pool_mode) {
            (Some(u), _) => Some(options(u, PoolMode::Session)?),
            (None, PoolMode::Session) => Some(opts),
            // LISTEN through a transaction pooler silently loses notifications: poll instead.
            (None, PoolMode::Transaction) => None,
        };
        let vectors = VectorSettings {
            storage: cfg.vector_type,
            index: cfg.vector_index,
            dims: cfg.dimensions,
            model: cfg.model.clone(),
        };
        Ok(Self { pool, clock, persistent: session, listen, vectors, layout: std::sync::RwLock::default() })
    }

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

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, QueueError> {
        match self.pool.begin().await {
            Ok(tx) => Ok(tx),
            Err(e) => Err(self.acquire_failed(e).await),
        }
    }

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

    async fn schema_version(&self, tx: &mut Transaction<'static, Postgres>) -> Result<Option<i32>, QueueError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('embq.schema_version') IS NOT NULL")
            .persistent(self.persistent)
            .fetch_one(&mut **tx)
            .await?;
        if !exists {
            return Ok(None);
        }
        Ok(sqlx::query_scalar("SELECT max(version) FROM embq.schema_version")
            .persistent(self.persistent)
            .fetch_one(&mut **tx)
            .await?)
    }

    /// Moves running jobs back to ready, or to superseded when a newer pending job exists.
    /// Shared by retry and release, which differ only in attempts and error.
    async fn requeue(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        lease: &Lease,
        items: &[(i64, Duration, Option<&str>)],
        refund_attempt: bool,
    ) -> Result<(u64, u64), QueueError> {
        if items.is_empty() {
            return Ok((0, 0));
        }
        let ids: Vec<i64> = items.iter().map(|i| i.0).collect();
        let delays: Vec<f64> = items.iter().map(|i| i.1.as_secs_f64()).collect();
        let errors: Vec<Option<String>> = items.iter().map(|i| i.2.map(clip_error)).collect();
        let states: Vec<JobState> = self
            .q_scalar(
                "UPDATE embq.jobs j
                SET state = CASE WHEN EXISTS (
                        SELECT 1 FROM embq.jobs p
                        WHERE p.source_type = j.source_type AND p.source_id = j.source_id
                          AND p.content_type = j.content_type AND p.state = 'ready')
                    THEN 'superseded' ELSE 'ready' END,
                    attempts = CASE WHEN $5 THEN j.attempts - 1 ELSE j.attempts END,
                    run_at = COALESCE($1::timestamptz, now()) + make_interval(secs => i.delay),
                    last_error = COALESCE(i.err, j.last_error),
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
                    updated_at = COALESCE($1::timestamptz, now())
                FROM unnest($2::bigint[], $3::float8[], $4::text[]) AS i(id, delay, err)
                WHERE j.id = i.id AND j.state = 'running' AND j.lease_token = $6
                RETURNING j.state",
            )
            .bind(self.now())
            .bind(ids)
            .bind(delays)
            .bind(errors)
            .bind(refund_attempt)
            .bind(lease.token.clone())
            .fetch_all(&mut **tx)
            .await?;
        let superseded = states.iter().filter(|s| **s == JobState::Superseded).count();
        Ok(((states.len() - superseded) as u64, superseded as u64))
    }

    /// The nearest rows of a write-back destination's own table, with the text each was embedded from.
    async fn search_destination(&self, d: &layout::Destination, query: &[f32], k: i64) -> Result<Search, QueueError> {
        let mut tx = self.begin().await?;
        let near: Vec<NearRow> = sqlx::query_as(&d.search_sql())
            .persistent(false)
            .bind(text_literal(query))
            .bind(k)
            .fetch_all(&mut *tx)
            .await?;
        let ids: Vec<&str> = near.iter().map(|n| n.source_id.as_str()).collect();
        let meta: Vec<KeyRow> = sqlx::query_as(
            "SELECT e.source_id, e.model, j.text FROM embq.embeddings e LEFT JOIN embq.jobs j ON j.id = e.job_id
              WHERE e.source_type = $1 AND e.content_type = $2 AND e.source_id = ANY($3)",
        )
        .persistent(false)
        .bind(&d.source_type)
        .bind(&d.content_type)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let hits = near
            .into_iter()
            .map(|n| {
                let m = meta.iter().find(|m| m.source_id == n.source_id);
                SearchHit {
                    source_type: d.source_type.clone(),
                    content_type: d.content_type.clone(),
                    model: m.map(|m| m.model.clone()).unwrap_or_default(),
                    text: m.and_then(|m| m.text.clone()),
                    score: 1.0 - n.distance,
                    source_id: n.source_id,
                }
            })
            .collect();
        Ok(Search { method: SearchMethod::Destination(d.display.clone()), hits })
    }

    /// Ids of dead jobs the selection names.
    fn selection_ids(which: &DeadSelection) -> Option<Vec<i64>> {
        match which {
            DeadSelection::All => None,
            DeadSelection::Ids(ids) => Some(ids.clone()),
        }
    }
}

/// What the finish statement reports.
#[derive(FromRow)]
struct FinishRow {
    /// Jobs marked done.
    done: i64,
    /// Jobs whose write-back row is gone; the column exists only with destinations.
    #[sqlx(default)]
    missing: Vec<i64>,
}

/// One of a destination's nearest rows.
#[derive(FromRow)]
struct NearRow {
    source_id: String,
    distance: f64,
}

/// What embq knows of a destination row's key: the model and text of its vector.
#[derive(FromRow)]
struct KeyRow {
    source_id: String,
    model: String,
    text: Option<String>,
}

struct PgJobListener(PgListener);

#[async_trait]
impl JobListener for PgJobListener {
    async fn recv(&mut self) -> Result<(), QueueError> {
        self.0.recv().await?;
        Ok(())
    }
}

#[async_trait]
impl Queue for PgQueue {
    async fn migrate_with(&self, opts: MigrateOptions) -> Result<MigrateReport, QueueError> {
        let mut tx = self.begin().await?;
        // Several pods may run `embq migrate` at once; one applies, the others wait and find it done.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('embq.migrate'))")
            .persistent(false)
            .execute(&mut *tx)
            .await?;
        let current = self.schema_version(&mut tx).await?.unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(schema::check_version(Some(current)).err().unwrap_or_else(|| {
                QueueError::Schema(format!("schema version {current} is newer than this binary's"))
            }));
        }
        for (i, script) in schema::POSTGRES.iter().enumerate().skip(current as usize) {
            let version = i as i32 + 1;
            // The column starts as real[]; its type is settled below, from the configuration.
            let sql = script.replace("__VECTOR_TYPE__", "real[]");
            sqlx::Executor::execute(&mut *tx, sql.as_str())
                .await
                .map_err(|e| QueueError::Schema(format!("migration {version} failed: {e}")))?;
            sqlx::query("INSERT INTO embq.schema_version (version) VALUES ($1)")
                .persistent(false)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        let plan = ColumnPlan { storage: self.vectors.storage, dims: self.vectors.dims, reembed: opts.reembed };
        let mut notes = migrate_column(&mut tx, plan, &self.vectors.model).await?;
        tx.commit().await?;
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = None;
        if self.vectors.index == VectorIndex::Hnsw {
            notes.push(index_note(&self.create_index().await?));
        }
        Ok(MigrateReport { version: SCHEMA_VERSION, notes })
    }

    async fn check_vectors(&self) -> Result<(), QueueError> {
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.layout().await?.check_dims(self.vectors.dims)
    }

    async fn create_index(&self) -> Result<IndexOutcome, QueueError> {
        // CREATE INDEX CONCURRENTLY cannot run inside a transaction: a connection of its own.
        let mut conn = self.acquire().await?;
        if !self.persistent {
            sqlx::Executor::execute(&mut *conn, NO_JIT_HERE.trim_start_matches("SET LOCAL ")).await.ok();
        }
        create_hnsw(&mut conn).await
    }

    async fn search(
        &self,
        query: &[f32],
        model: &str,
        k: usize,
        source_type: Option<&str>,
    ) -> Result<Search, QueueError> {
        let layout = self.layout().await?;
        let k = i64::try_from(k).unwrap_or(i64::MAX);
        if let Some(d) = source_type.and_then(|st| layout.destinations.iter().find(|d| d.source_type == st)) {
            return self.search_destination(d, query, k).await;
        }
        let Some(cast) = layout.search_cast() else {
            let stored = self.embeddings(model, SCAN_LIMIT).await?;
            let stored = stored.into_iter().filter(|e| source_type.is_none_or(|st| e.source_type == st));
            return Ok(Search { method: SearchMethod::ClientScan, hits: scan(stored, query, k as usize) });
        };
        let mut tx = self.begin().await?;
        let rows: Vec<SearchHit> = sqlx::query_as(&format!(
            "SELECT source_type, source_id, content_type, model, similarity AS score, text
               FROM embq.search($1::text::{cast}, $2::int, $3, $4)"
        ))
        .persistent(false)
        .bind(text_literal(query))
        .bind(k.min(i64::from(i32::MAX)) as i32)
        .bind(model)
        .bind(source_type)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Search { method: SearchMethod::Database, hits: rows })
    }

    async fn check_schema(&self) -> Result<(), QueueError> {
        let mut tx = self.begin().await?;
        let v = self.schema_version(&mut tx).await?;
        tx.commit().await?;
        schema::check_version(v)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.acquire().await?;
        conn.ping().await?;
        Ok(())
    }

    async fn enqueue(&self, jobs: &[NewJob], progress: &Progress) -> Result<EnqueueReport, QueueError> {
        for (i, j) in jobs.iter().enumerate() {
            j.validate().map_err(|e| QueueError::Invalid(format!("job {}: {e}", i + 1)))?;
        }
        let jobs = dedupe_keys(jobs);
        let mut report = EnqueueReport::default();
        let mut tx = self.begin().await?;
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let st: Vec<&str> = chunk.iter().map(|j| j.source_type.as_str()).collect();
            let si: Vec<&str> = chunk.iter().map(|j| j.source_id.as_str()).collect();
            let ct: Vec<&str> = chunk.iter().map(|j| j.content_type.as_str()).collect();
            let tx_: Vec<&str> = chunk.iter().map(|j| j.text.as_str()).collect();
            let sh: Vec<Vec<u8>> = chunk.iter().map(|j| j.text_sha256()).collect();
            let pr: Vec<i32> = chunk.iter().map(|j| j.priority).collect();
            let md: Vec<Option<String>> = chunk.iter().map(|j| j.metadata.as_ref().map(|m| m.to_string())).collect();
            let inserted: Vec<bool> = self
                .q_scalar(
                    "INSERT INTO embq.jobs AS j
                    (source_type, source_id, content_type, text, text_sha256, priority, metadata,
                     run_at, created_at, updated_at)
                 SELECT u.st, u.si, u.ct, u.tx, u.sh, u.pr, u.md::jsonb, c.n, c.n, c.n
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int[], $7::text[])
                      AS u(st, si, ct, tx, sh, pr, md),
                      (SELECT COALESCE($8::timestamptz, now()) AS n) c
                 ON CONFLICT (source_type, source_id, content_type) WHERE state = 'ready'
                 DO UPDATE SET text = EXCLUDED.text, text_sha256 = EXCLUDED.text_sha256,
                     priority = EXCLUDED.priority, metadata = EXCLUDED.metadata, attempts = 0,
                     run_at = EXCLUDED.run_at, updated_at = EXCLUDED.updated_at, last_error = NULL
                 RETURNING (xmax = 0) AS inserted",
                )
                .bind(st)
                .bind(si)
                .bind(ct)
                .bind(tx_)
                .bind(sh)
                .bind(pr)
                .bind(md)
                .bind(self.now())
                .fetch_all(&mut *tx)
                .await?;
            for new in inserted {
                if new {
                    report.inserted += 1;
                } else {
                    report.replaced += 1;
                }
            }
            progress(report.inserted + report.replaced);
        }
        // Delivered at commit; identical payloads in one transaction fold into one.
        self.q("SELECT pg_notify('embq_jobs', '')").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn claim(
        &self,
        limit: usize,
        lease: &Lease,
        duration: Duration,
        model: &str,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // An explicit transaction even for one statement: sqlx describes an unnamed statement in
        // one round trip and binds it in the next, and a transaction pooler may route those two
        // to different server connections unless a transaction pins them together.
        let mut tx = self.begin_without_jit().await?;
        let rows: Vec<ClaimedRow> = self
            .q_as(CLAIM_SQL)
            .bind(self.now())
            .bind(limit as i64)
            .bind(lease.owner.clone())
            .bind(lease.token.clone())
            .bind(duration.as_secs_f64())
            .bind(model.to_string())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut jobs: Vec<ClaimedJob> = rows.into_iter().map(ClaimedJob::from).collect();
        jobs.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.id));
        Ok(jobs)
    }

    async fn finish(
        &self,
        lease: &Lease,
        model: &str,
        outcomes: &[(i64, Outcome)],
    ) -> Result<FinishReport, QueueError> {
        let g = OutcomeGroups::split(outcomes);
        let mut report = FinishReport::default();
        let layout = if g.done.is_empty() { None } else { Some(self.layout().await?) };
        let mut tx = self.begin().await?;
        if let Some(layout) = &layout {
            let dims = g.done[0].1.len();
            if g.done.iter().any(|(_, v)| v.len() != dims) || dims == 0 {
                return Err(QueueError::Invalid("vectors of one batch must share a non-zero dimension".into()));
            }
            let ids: Vec<i64> = g.done.iter().map(|d| d.0).collect();
            let vectors = VectorBatch { vectors: &g.done, dims, encoding: layout.encoding };
            let mut q = self
                .q_as::<FinishRow>(&layout.finish_sql)
                .bind(self.now())
                .bind(ids)
                .bind(lease.token.clone())
                .bind(model.to_string())
                .bind(dims as i32)
                .bind(vectors);
            if !layout.destinations.is_empty() {
                let st: Vec<&str> = layout.destinations.iter().map(|d| d.source_type.as_str()).collect();
                let ct: Vec<&str> = layout.destinations.iter().map(|d| d.content_type.as_str()).collect();
                q = q.bind(st).bind(ct);
            }
            let row = q.fetch_one(&mut *tx).await?;
            report.stored = row.done as u64;
            if !row.missing.is_empty() {
                let cancelled: i64 =
                    self.q_scalar(CANCEL_MISSING_SQL).bind(self.now()).bind(row.missing).fetch_one(&mut *tx).await?;
                report.cancelled = cancelled as u64;
                report.stored = report.stored.saturating_sub(report.cancelled);
            }
        }
        if !g.unchanged.is_empty() {
            let r = self
                .q("UPDATE embq.jobs
                    SET state = 'done', finished_at = COALESCE($1::timestamptz, now()),
                        updated_at = COALESCE($1::timestamptz, now()), last_error = NULL,
                        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                    WHERE id = ANY($2) AND state = 'running' AND lease_token = $3")
                .bind(self.now())
                .bind(g.unchanged.clone())
                .bind(lease.token.clone())
                .execute(&mut *tx)
                .await?;
            report.unchanged = r.rows_affected();
        }
        if !g.dead.is_empty() {
            let ids: Vec<i64> = g.dead.iter().map(|d| d.0).collect();
            let errors: Vec<String> = g.dead.iter().map(|d| clip_error(d.1)).collect();
            let r = self
                .q("UPDATE embq.jobs j
                    SET state = 'dead', finished_at = COALESCE($1::timestamptz, now()),
                        updated_at = COALESCE($1::timestamptz, now()), last_error = i.err,
                        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                    FROM unnest($2::bigint[], $3::text[]) AS i(id, err)
                    WHERE j.id = i.id AND j.state = 'running' AND j.lease_token = $4")
                .bind(self.now())
                .bind(ids)
                .bind(errors)
                .bind(lease.token.clone())
                .execute(&mut *tx)
                .await?;
            report.dead = r.rows_affected();
        }
        let retry: Vec<_> = g.retry.iter().map(|(id, d, e)| (*id, *d, Some(*e))).collect();
        let (retried, sup1) = self.requeue(&mut tx, lease, &retry, false).await?;
        let released: Vec<_> = g.released.iter().map(|(id, d)| (*id, *d, None)).collect();
        let (released, sup2) = self.requeue(&mut tx, lease, &released, true).await?;
        report.retried = retried;
        report.released = released;
        report.superseded = sup1 + sup2;
        tx.commit().await?;
        let applied = report.stored
            + report.unchanged
            + report.dead
            + report.retried
            + report.released
            + report.superseded
            + report.cancelled;
        report.lost = (outcomes.len() as u64).saturating_sub(applied);
        Ok(report)
    }

    async fn heartbeat(&self, w: &WorkerInfo, leases: &[String], duration: Duration) -> Result<u64, QueueError> {
        let mut tx = self.begin().await?;
        let r = self
            .q("UPDATE embq.jobs SET lease_expires_at = COALESCE($1::timestamptz, now()) + make_interval(secs => $2)
                WHERE state = 'running' AND lease_owner = $3 AND lease_token = ANY($4::text[])")
            .bind(self.now())
            .bind(duration.as_secs_f64())
            .bind(w.id.clone())
            .bind(leases)
            .execute(&mut *tx)
            .await?;
        self.q("INSERT INTO embq.workers AS w
                    (id, host, pid, version, started_at, last_heartbeat_at, in_flight, processed, failed, state)
                VALUES ($1, $2, $3, $4, COALESCE($5::timestamptz, now()), COALESCE($5::timestamptz, now()),
                        $6, $7, $8, $9)
                ON CONFLICT (id) DO UPDATE SET last_heartbeat_at = EXCLUDED.last_heartbeat_at,
                    in_flight = EXCLUDED.in_flight, processed = EXCLUDED.processed,
                    failed = EXCLUDED.failed, state = EXCLUDED.state")
            .bind(w.id.clone())
            .bind(w.host.clone())
            .bind(w.pid)
            .bind(w.version.clone())
            .bind(self.now())
            .bind(w.in_flight)
            .bind(w.processed)
            .bind(w.failed)
            .bind(w.state)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    async fn rescue_expired(&self, max_attempts: u32) -> Result<RescueReport, QueueError> {
        let mut tx = self.begin().await?;
        let states: Vec<JobState> = self
            .q_scalar(
                "UPDATE embq.jobs j
                SET state = CASE
                        WHEN j.attempts >= $2 THEN 'dead'
                        WHEN EXISTS (SELECT 1 FROM embq.jobs p
                                     WHERE p.source_type = j.source_type AND p.source_id = j.source_id
                                       AND p.content_type = j.content_type AND p.state = 'ready')
                            THEN 'superseded'
                        ELSE 'ready' END,
                    last_error = CASE WHEN j.attempts >= $2
                        THEN 'lease expired on the last attempt: worker ' || COALESCE(j.lease_owner, '?')
                             || ' stopped heartbeating'
                        ELSE j.last_error END,
                    finished_at = CASE WHEN j.attempts >= $2 THEN COALESCE($1::timestamptz, now()) END,
                    run_at = COALESCE($1::timestamptz, now()),
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
                    updated_at = COALESCE($1::timestamptz, now())
                WHERE j.state = 'running' AND j.lease_expires_at < COALESCE($1::timestamptz, now())
                RETURNING j.state",
            )
            .bind(self.now())
            .bind(max_attempts as i32)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let dead = states.iter().filter(|s| **s == JobState::Dead).count() as u64;
        Ok(RescueReport { requeued: states.len() as u64 - dead, dead })
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut tx = self.begin_without_jit().await?;
        let rows: Vec<StatRow> = self
            .q_as(
                "SELECT state, (run_at <= COALESCE($1::timestamptz, now())) AS due, priority, count(*) AS n,
                    EXTRACT(EPOCH FROM (COALESCE($1::timestamptz, now()) - min(run_at)))::float8 AS age
                FROM embq.jobs GROUP BY 1, 2, 3",
            )
            .bind(self.now())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(fold_stats(rows))
    }

    async fn is_idle(&self, within: Duration) -> Result<bool, QueueError> {
        let mut tx = self.begin().await?;
        let idle: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM embq.jobs
                                WHERE state = 'ready'
                                  AND run_at <= COALESCE($1::timestamptz, now()) + make_interval(secs => $2))
                AND NOT EXISTS (SELECT 1 FROM embq.jobs WHERE state = 'running')",
        )
        .persistent(self.persistent)
        .bind(self.now())
        .bind(within.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(idle)
    }

    async fn dead_jobs(&self, limit: i64) -> Result<Vec<DeadJob>, QueueError> {
        let mut tx = self.begin().await?;
        let rows: Vec<DeadRow<DateTime<Utc>>> = self
            .q_as(
                "SELECT id, source_type, source_id, content_type, attempts, last_error,
                    COALESCE(finished_at, updated_at) AS failed_at
                FROM embq.jobs WHERE state = 'dead' ORDER BY finished_at DESC, id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(DeadJob::from).collect())
    }

    async fn retry_dead(&self, which: &DeadSelection) -> Result<u64, QueueError> {
        let mut tx = self.begin().await?;
        let ids = Self::selection_ids(which);
        // Lock first: the window function below cannot be combined with FOR UPDATE.
        self.q("SELECT id FROM embq.jobs WHERE state = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1)) FOR UPDATE")
            .bind(ids.clone())
            .execute(&mut *tx)
            .await?;
        // Per key only the newest dead job can become pending; older ones and those
        // overtaken by a pending job are superseded.
        let states: Vec<JobState> = self
            .q_scalar(
                "WITH sel AS (
                    SELECT id, row_number() OVER (
                        PARTITION BY source_type, source_id, content_type ORDER BY id DESC) AS rn
                    FROM embq.jobs WHERE state = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1))
                )
                UPDATE embq.jobs j
                SET state = CASE WHEN sel.rn > 1 OR EXISTS (
                        SELECT 1 FROM embq.jobs p
                        WHERE p.source_type = j.source_type AND p.source_id = j.source_id
                          AND p.content_type = j.content_type AND p.state = 'ready')
                    THEN 'superseded' ELSE 'ready' END,
                    attempts = 0, run_at = COALESCE($2::timestamptz, now()), finished_at = NULL,
                    updated_at = COALESCE($2::timestamptz, now())
                FROM sel WHERE j.id = sel.id
                RETURNING j.state",
            )
            .bind(ids)
            .bind(self.now())
            .fetch_all(&mut *tx)
            .await?;
        self.q("SELECT pg_notify('embq_jobs', '')").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(states.iter().filter(|s| **s == JobState::Ready).count() as u64)
    }

    async fn purge_dead(&self, which: &DeadSelection) -> Result<u64, QueueError> {
        let mut tx = self.begin().await?;
        let r = self
            .q("DELETE FROM embq.jobs WHERE state = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1))")
            .bind(Self::selection_ids(which))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    async fn worker_stopped(&self, w: &WorkerInfo) -> Result<(), QueueError> {
        let mut tx = self.begin().await?;
        self.q("UPDATE embq.workers SET state = 'stopped', in_flight = 0, processed = $2, failed = $3,
                    last_heartbeat_at = COALESCE($4::timestamptz, now())
                WHERE id = $1")
            .bind(w.id.clone())
            .bind(w.processed)
            .bind(w.failed)
            .bind(self.now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        let mut tx = self.begin().await?;
        let workers = self
            .q_as("SELECT id, host, pid, version, in_flight, processed, failed, state FROM embq.workers ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(workers)
    }

    async fn embeddings(&self, model: &str, limit: i64) -> Result<Vec<StoredEmbedding>, QueueError> {
        let mut tx = self.begin().await?;
        let stored: Vec<StoredEmbedding> = self
            .q_as(
                "SELECT e.source_type, e.source_id, e.content_type, e.model, e.embedding::real[], j.text
               FROM embq.embeddings e LEFT JOIN embq.jobs j ON j.id = e.job_id
              WHERE e.model = $1 AND e.embedding IS NOT NULL LIMIT $2",
            )
            .bind(model)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn listener(&self) -> Option<Box<dyn JobListener>> {
        let opts = self.listen.clone()?;
        let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(opts);
        let mut l = PgListener::connect_with(&pool).await.ok()?;
        l.listen(CHANNEL).await.ok()?;
        Some(Box::new(PgJobListener(l)))
    }
}

#[cfg(test)]
mod tests {
    use super::layout::finish_sql;
    use super::pgvector::Encoding;
    use super::CLAIM_SQL;

    /// The pgbench ceiling of `scripts/bench-drain.sh`.
    const CEILING: &str = include_str!("../../../../../scripts/bench/claim-finish.sql");

    /// Drops `--` comments and pgbench meta-commands, and collapses whitespace.
    fn normalise(sql: &str) -> String {
        let lines = sql.lines().filter(|l| !l.trim_start().starts_with('\\'));
        let code: Vec<&str> = lines.map(|l| l.split("--").next().unwrap_or_default()).collect();
        code.join(" ").split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Rewrites a statement as the ceiling runs it: the test clock off, parameters as pgbench
    /// variables or the constants the ceiling uses.
    fn as_ceiling(sql: &str, params: &[(&str, &str)]) -> String {
        let mut s = normalise(sql).replace("COALESCE($1::timestamptz, now())", "now()");
        for (from, to) in params {
            s = s.replace(from, to);
        }
        s
    }

    #[test]
    fn the_ceiling_runs_the_claim_statement_embq_runs() {
        let claim = as_ceiling(
            CLAIM_SQL,
            &[("$2", ":batch"), ("$3", "'pgbench'"), ("$4", "'tok'"), ("$5", "30"), ("$6", "'hash'")],
        )
        // The ceiling wraps the UPDATE in a CTE to collect the ids for its finish.
        .replace(") UPDATE embq.jobs j SET state", "), claimed AS ( UPDATE embq.jobs j SET state");
        assert!(normalise(CEILING).contains(&claim), "scripts/bench/claim-finish.sql drifted from CLAIM_SQL:\n{claim}");
    }

    #[test]
    fn the_ceiling_runs_the_finish_statement_embq_runs_but_for_where_vectors_come_from() {
        let finish = as_ceiling(
            &finish_sql(Encoding::Flat, "real[]", &[]),
            &[
                ("unnest($2::bigint[])", "unnest(:ids::bigint[])"),
                ("$3", "'tok'"),
                ("$4", "'hash'"),
                // The one intended difference: the ceiling reads its vectors from a table.
                ("($6::real[])[(d.ord - 1) * $5 + 1 : d.ord * $5],", "v.v,"),
                ("FROM done d ON CONFLICT", "FROM done d JOIN bench_vectors v ON v.ord = d.ord ON CONFLICT"),
                ("$5", ":dims"),
            ],
        );
        assert!(!finish.contains('$'), "every parameter is mapped: {finish}");
        assert!(
            normalise(CEILING).contains(&finish),
            "scripts/bench/claim-finish.sql drifted from the finish statement:\n{finish}"
        );
    }
}
