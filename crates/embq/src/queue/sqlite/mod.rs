//! The SQLite store: the embedded default for one machine, same semantics as PostgreSQL.
//!
//! SQLite has one writer at a time; every write runs in a `BEGIN IMMEDIATE`
//! transaction so read-then-write sequences never fail to upgrade their lock.
//! Times are integer milliseconds; vectors are little-endian f32 blobs.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, Sqlite, Transaction};

use super::rows::{ClaimedRow, DeadRow};
use super::schema::{self, SCHEMA_VERSION};
use super::search::{scan, Search, SearchMethod};
use super::stats::{fold_stats, StatRow};
use super::{
    clip_error, dedupe_keys, ClaimedJob, Clock, DeadJob, DeadSelection, EnqueueReport, FinishReport, IndexOutcome,
    JobListener, JobState, Lease, MigrateOptions, MigrateReport, NewJob, Outcome, OutcomeGroups, Progress, Queue,
    QueueError, QueueStats, RescueReport, StoredEmbedding, WorkerInfo,
};
use crate::vector;

/// Queue store in one SQLite file.
pub struct SqliteQueue {
    pool: SqlitePool,
    clock: Clock,
}

/// Jobs per enqueue transaction: each holds SQLite's write lock for a fraction of a second.
const ENQUEUE_TX_JOBS: usize = 20_000;
/// Rows per INSERT statement (10 parameters each, well under SQLite's 32,766).
const ENQUEUE_ROWS: usize = 500;

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The SQL fragment shared by retry, release and rescue: ready again, or superseded by a pending job.
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
        Ok(Self { pool, clock })
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, QueueError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn schema_version(&self, tx: &mut Transaction<'static, Sqlite>) -> Result<Option<i32>, QueueError> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
        )
        .fetch_one(&mut **tx)
        .await?;
        if !exists {
            return Ok(None);
        }
        Ok(sqlx::query_scalar("SELECT max(version) FROM schema_version").fetch_one(&mut **tx).await?)
    }

    async fn requeue(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        lease: &Lease,
        id: i64,
        after: Duration,
        error: Option<&str>,
        refund: bool,
    ) -> Result<Option<JobState>, QueueError> {
        let now = self.now_ms();
        let sql = format!(
            "UPDATE jobs SET state = {REQUEUE_STATE},
                 attempts = CASE WHEN ?1 THEN attempts - 1 ELSE attempts END,
                 run_at = ?2, last_error = COALESCE(?3, last_error),
                 lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = ?4
             WHERE id = ?5 AND state = 'running' AND lease_token = ?6
             RETURNING state"
        );
        let state = sqlx::query_scalar(&sql)
            .bind(refund)
            .bind(now.saturating_add(ms(after)))
            .bind(error.map(clip_error))
            .bind(now)
            .bind(id)
            .bind(&lease.token)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(state)
    }

    fn selection_clause(which: &DeadSelection) -> Result<String, QueueError> {
        Ok(match which {
            DeadSelection::All => String::new(),
            // Ids are typed integers, so formatting them into SQL cannot inject anything.
            DeadSelection::Ids(ids) if ids.is_empty() => " AND 0".to_string(),
            DeadSelection::Ids(ids) => {
                format!(" AND id IN ({})", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
            }
        })
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn migrate_with(&self, _opts: MigrateOptions) -> Result<MigrateReport, QueueError> {
        let mut tx = self.begin().await?;
        let current = self.schema_version(&mut tx).await?.unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(schema::check_version(Some(current))
                .err()
                .unwrap_or_else(|| QueueError::Schema("schema is newer than this binary".into())));
        }
        for (i, script) in schema::SQLITE.iter().enumerate().skip(current as usize) {
            let version = i as i32 + 1;
            sqlx::Executor::execute(&mut *tx, *script)
                .await
                .map_err(|e| QueueError::Schema(format!("migration {version} failed: {e}")))?;
            sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(self.now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let notes = vec!["vectors are stored as little-endian f32 blobs; search scans them in the client".into()];
        Ok(MigrateReport { version: SCHEMA_VERSION, notes })
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
        let stored = self.embeddings(model, i64::MAX).await?;
        let stored = stored.into_iter().filter(|e| source_type.is_none_or(|st| e.source_type == st));
        Ok(Search { method: SearchMethod::ClientScan, hits: scan(stored, query, k) })
    }

    async fn check_schema(&self) -> Result<(), QueueError> {
        let mut conn = self.pool.acquire().await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
        )
        .fetch_one(&mut *conn)
        .await?;
        let v = if exists {
            sqlx::query_scalar("SELECT max(version) FROM schema_version").fetch_one(&mut *conn).await?
        } else {
            None
        };
        schema::check_version(v)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn enqueue(&self, jobs: &[NewJob], progress: &Progress) -> Result<EnqueueReport, QueueError> {
        for (i, j) in jobs.iter().enumerate() {
            j.validate().map_err(|e| QueueError::Invalid(format!("job {}: {e}", i + 1)))?;
        }
        let jobs = dedupe_keys(jobs);
        let now = self.now_ms();
        let mut report = EnqueueReport::default();
        // Bounded transactions: the write lock is released every ENQUEUE_TX_JOBS jobs, so running
        // workers wait milliseconds for it, never long enough to see "database is locked".
        for tx_jobs in jobs.chunks(ENQUEUE_TX_JOBS) {
            let mut tx = self.begin().await?;
            for rows in tx_jobs.chunks(ENQUEUE_ROWS) {
                // The write lock is held (BEGIN IMMEDIATE), so this count cannot race another enqueue.
                let keys = vec!["(?, ?, ?)"; rows.len()].join(", ");
                let sql = format!(
                    "SELECT count(*) FROM jobs WHERE state = 'ready'
                       AND (source_type, source_id, content_type) IN (VALUES {keys})"
                );
                let mut q = sqlx::query_scalar::<_, i64>(&sql);
                for j in rows {
                    q = q.bind(&j.source_type).bind(&j.source_id).bind(&j.content_type);
                }
                let pending = q.fetch_one(&mut *tx).await?.max(0) as u64;
                let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
                let sql = format!(
                    "INSERT INTO jobs (source_type, source_id, content_type, text, text_sha256, priority, metadata,
                                       run_at, created_at, updated_at)
                     VALUES {values}
                     ON CONFLICT (source_type, source_id, content_type) WHERE state = 'ready'
                     DO UPDATE SET text = excluded.text, text_sha256 = excluded.text_sha256,
                         priority = excluded.priority, metadata = excluded.metadata, attempts = 0,
                         run_at = excluded.run_at, updated_at = excluded.updated_at, last_error = NULL"
                );
                let mut q = sqlx::query(&sql);
                for j in rows {
                    q = q
                        .bind(&j.source_type)
                        .bind(&j.source_id)
                        .bind(&j.content_type)
                        .bind(&j.text)
                        .bind(j.text_sha256())
                        .bind(j.priority)
                        .bind(j.metadata.as_ref().map(|m| m.to_string()))
                        .bind(now)
                        .bind(now)
                        .bind(now);
                }
                q.execute(&mut *tx).await?;
                report.replaced += pending;
                report.inserted += rows.len() as u64 - pending;
                progress(report.inserted + report.replaced);
            }
            tx.commit().await?;
        }
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
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let rows: Vec<ClaimedRow> = sqlx::query_as(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?1, lease_token = ?2,
                 lease_expires_at = ?3, updated_at = ?4
             WHERE id IN (SELECT id FROM jobs WHERE state = 'ready' AND run_at <= ?4
                          ORDER BY priority DESC, id LIMIT ?5)
             RETURNING id, source_type, source_id, content_type, text, attempts, priority,
                 EXISTS (SELECT 1 FROM embeddings e
                         WHERE e.source_type = jobs.source_type AND e.source_id = jobs.source_id
                           AND e.content_type = jobs.content_type AND e.model = ?6
                           AND e.text_sha256 = jobs.text_sha256)
                 -- An older job for the key still running stores its text's vector later: this
                 -- one is then embedded, so the newest text's vector wins (its job id is higher).
                 AND NOT EXISTS (SELECT 1 FROM jobs r
                         WHERE r.source_type = jobs.source_type AND r.source_id = jobs.source_id
                           AND r.content_type = jobs.content_type AND r.state = 'running'
                           AND r.id < jobs.id) AS unchanged",
        )
        .bind(&lease.owner)
        .bind(&lease.token)
        .bind(now.saturating_add(ms(duration)))
        .bind(now)
        .bind(limit as i64)
        .bind(model)
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs: Vec<ClaimedJob> = rows.into_iter().map(ClaimedJob::from).collect();
        // Unchanged jobs are done right here, in the same write transaction (so nothing the
        // claim compared against can change in between): no finish round trip for them.
        let unchanged: Vec<i64> = jobs.iter().filter(|j| j.unchanged).map(|j| j.id).collect();
        if !unchanged.is_empty() {
            let ids = serde_json::to_string(&unchanged).map_err(|e| QueueError::Invalid(e.to_string()))?;
            sqlx::query(
                "UPDATE jobs SET state = 'done', finished_at = ?1, updated_at = ?1, last_error = NULL,
                     lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                 WHERE lease_token = ?2 AND state = 'running' AND id IN (SELECT value FROM json_each(?3))",
            )
            .bind(now)
            .bind(&lease.token)
            .bind(ids)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
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
        let now = self.now_ms();
        let mut report = FinishReport::default();
        let mut tx = self.begin().await?;
        for (id, v) in &g.done {
            let done: Option<DoneKey> = sqlx::query_as(
                "UPDATE jobs SET state = 'done', finished_at = ?1, updated_at = ?1, last_error = NULL,
                     lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                 WHERE id = ?2 AND state = 'running' AND lease_token = ?3
                 RETURNING source_type, source_id, content_type, text_sha256",
            )
            .bind(now)
            .bind(id)
            .bind(&lease.token)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(key) = done else { continue };
            report.stored += 1;
            sqlx::query(
                "INSERT INTO embeddings AS e (source_type, source_id, content_type, model, dimensions, embedding,
                                              text_sha256, job_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (source_type, source_id, content_type) DO UPDATE
                 SET model = excluded.model, dimensions = excluded.dimensions, embedding = excluded.embedding,
                     text_sha256 = excluded.text_sha256, job_id = excluded.job_id, updated_at = excluded.updated_at
                 WHERE e.job_id <= excluded.job_id",
            )
            .bind(key.source_type)
            .bind(key.source_id)
            .bind(key.content_type)
            .bind(model)
            .bind(v.len() as i64)
            .bind(vector::to_le_bytes(v))
            .bind(key.text_sha256)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for id in &g.unchanged {
            let r = sqlx::query(
                "UPDATE jobs SET state = 'done', finished_at = ?1, updated_at = ?1, last_error = NULL,
                     lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                 WHERE id = ?2 AND state = 'running' AND lease_token = ?3",
            )
            .bind(now)
            .bind(id)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?;
            report.unchanged += r.rows_affected();
        }
        for (id, err) in &g.dead {
            let r = sqlx::query(
                "UPDATE jobs SET state = 'dead', finished_at = ?1, updated_at = ?1, last_error = ?2,
                     lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                 WHERE id = ?3 AND state = 'running' AND lease_token = ?4",
            )
            .bind(now)
            .bind(clip_error(err))
            .bind(id)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?;
            report.dead += r.rows_affected();
        }
        for (id, after, err) in &g.retry {
            match self.requeue(&mut tx, lease, *id, *after, Some(err), false).await? {
                Some(JobState::Superseded) => report.superseded += 1,
                Some(_) => report.retried += 1,
                None => {}
            }
        }
        for (id, after) in &g.released {
            match self.requeue(&mut tx, lease, *id, *after, None, true).await? {
                Some(JobState::Superseded) => report.superseded += 1,
                Some(_) => report.released += 1,
                None => {}
            }
        }
        tx.commit().await?;
        let applied =
            report.stored + report.unchanged + report.dead + report.retried + report.released + report.superseded;
        report.lost = (outcomes.len() as u64).saturating_sub(applied);
        Ok(report)
    }

    async fn heartbeat(&self, w: &WorkerInfo, leases: &[String], duration: Duration) -> Result<u64, QueueError> {
        let now = self.now_ms();
        let tokens = serde_json::to_string(leases).map_err(|e| QueueError::Invalid(e.to_string()))?;
        let mut tx = self.begin().await?;
        let r = sqlx::query(
            "UPDATE jobs SET lease_expires_at = ?1
             WHERE state = 'running' AND lease_owner = ?2 AND lease_token IN (SELECT value FROM json_each(?3))",
        )
        .bind(now.saturating_add(ms(duration)))
        .bind(&w.id)
        .bind(tokens)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO workers (id, host, pid, version, started_at, last_heartbeat_at, in_flight, processed,
                                  failed, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (id) DO UPDATE SET last_heartbeat_at = excluded.last_heartbeat_at,
                 in_flight = excluded.in_flight, processed = excluded.processed, failed = excluded.failed,
                 state = excluded.state",
        )
        .bind(&w.id)
        .bind(&w.host)
        .bind(w.pid)
        .bind(&w.version)
        .bind(now)
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
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let sql = format!(
            "UPDATE jobs SET
                 state = CASE WHEN attempts >= ?1 THEN 'dead' ELSE {REQUEUE_STATE} END,
                 last_error = CASE WHEN attempts >= ?1
                     THEN 'lease expired on the last attempt: worker ' || COALESCE(lease_owner, '?')
                          || ' stopped heartbeating'
                     ELSE last_error END,
                 finished_at = CASE WHEN attempts >= ?1 THEN ?2 END,
                 run_at = ?2, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = ?2
             WHERE state = 'running' AND lease_expires_at < ?2
             RETURNING state"
        );
        let states: Vec<JobState> =
            sqlx::query_scalar(&sql).bind(max_attempts as i64).bind(now).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let dead = states.iter().filter(|s| **s == JobState::Dead).count() as u64;
        Ok(RescueReport { requeued: states.len() as u64 - dead, dead })
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = self.now_ms();
        let rows: Vec<StatRow> = sqlx::query_as(
            "SELECT state, run_at <= ?1 AS due, priority, count(*) AS n, (?1 - min(run_at)) / 1000.0 AS age
             FROM jobs GROUP BY 1, 2, 3",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(fold_stats(rows))
    }

    async fn is_idle(&self, within: Duration) -> Result<bool, QueueError> {
        let idle: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE state = 'ready' AND run_at <= ?1)
                AND NOT EXISTS (SELECT 1 FROM jobs WHERE state = 'running')",
        )
        .bind(self.now_ms().saturating_add(ms(within)))
        .fetch_one(&self.pool)
        .await?;
        Ok(idle)
    }

    async fn dead_jobs(&self, limit: i64) -> Result<Vec<DeadJob>, QueueError> {
        let rows: Vec<DeadRow<i64>> = sqlx::query_as(
            "SELECT id, source_type, source_id, content_type, attempts, last_error,
                 COALESCE(finished_at, updated_at) AS failed_at
             FROM jobs WHERE state = 'dead' ORDER BY finished_at DESC, id DESC LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(DeadJob::from).collect())
    }

    async fn retry_dead(&self, which: &DeadSelection) -> Result<u64, QueueError> {
        let now = self.now_ms();
        let clause = Self::selection_clause(which)?;
        let mut tx = self.begin().await?;
        // Newest dead job per key first, so the older ones find it pending and are superseded.
        let ids: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT id FROM jobs WHERE state = 'dead'{clause} ORDER BY id DESC"))
                .fetch_all(&mut *tx)
                .await?;
        let sql = format!(
            "UPDATE jobs SET state = {REQUEUE_STATE}, attempts = 0, run_at = ?1, finished_at = NULL, updated_at = ?1
             WHERE id = ?2 RETURNING state"
        );
        let mut ready = 0;
        for id in ids {
            let state: JobState = sqlx::query_scalar(&sql).bind(now).bind(id).fetch_one(&mut *tx).await?;
            if state == JobState::Ready {
                ready += 1;
            }
        }
        tx.commit().await?;
        Ok(ready)
    }

    async fn purge_dead(&self, which: &DeadSelection) -> Result<u64, QueueError> {
        let clause = Self::selection_clause(which)?;
        let mut tx = self.begin().await?;
        let r = sqlx::query(&format!("DELETE FROM jobs WHERE state = 'dead'{clause}")).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    async fn worker_stopped(&self, w: &WorkerInfo) -> Result<(), QueueError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE workers SET state = 'stopped', in_flight = 0, processed = ?2, failed = ?3, last_heartbeat_at = ?4
             WHERE id = ?1",
        )
        .bind(&w.id)
        .bind(w.processed)
        .bind(w.failed)
        .bind(self.now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        let workers = sqlx::query_as(
            "SELECT id, host, pid, version, in_flight, processed, failed, state FROM workers ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(workers)
    }

    async fn embeddings(&self, model: &str, limit: i64) -> Result<Vec<StoredEmbedding>, QueueError> {
        let rows: Vec<BlobEmbedding> = sqlx::query_as(
            "SELECT e.source_type, e.source_id, e.content_type, e.model, e.embedding, j.text
               FROM embeddings e LEFT JOIN jobs j ON j.id = e.job_id WHERE e.model = ?1 LIMIT ?2",
        )
        .bind(model)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredEmbedding::try_from).collect()
    }

    async fn listener(&self) -> Option<Box<dyn JobListener>> {
        None
    }
}

/// The key and text hash of a job the finish just marked done.
#[derive(FromRow)]
struct DoneKey {
    source_type: String,
    source_id: String,
    content_type: String,
    text_sha256: Vec<u8>,
}

/// A stored embedding as SQLite keeps it: the vector as a little-endian f32 blob.
#[derive(FromRow)]
struct BlobEmbedding {
    source_type: String,
    source_id: String,
    content_type: String,
    model: String,
    embedding: Vec<u8>,
    text: Option<String>,
}

impl TryFrom<BlobEmbedding> for StoredEmbedding {
    type Error = QueueError;

    fn try_from(r: BlobEmbedding) -> Result<Self, QueueError> {
        Ok(Self {
            vector: vector::from_le_bytes(&r.embedding)
                .map_err(|e| QueueError::Invalid(format!("stored vector is corrupt: {e}")))?,
            source_type: r.source_type,
            source_id: r.source_id,
            content_type: r.content_type,
            model: r.model,
            text: r.text,
        })
    }
}
