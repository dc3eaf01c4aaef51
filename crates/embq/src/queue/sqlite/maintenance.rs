//! Keeping the queue healthy: worker heartbeats (lease extension, the workers table), the sweep
//! of expired leases, and the counts behind `embq queue stats` and the idle check.

use std::time::Duration;

use super::{ms, SqliteQueue, REQUEUE_STATE};
use crate::queue::stats::{fold_stats, StatRow};
use crate::queue::{JobState, QueueError, QueueStats, RescueReport, WorkerInfo};

/// Extends the worker's leases and refreshes its row; see `Queue::heartbeat`.
pub(super) async fn heartbeat(
    db: &SqliteQueue,
    w: &WorkerInfo,
    leases: &[String],
    duration: Duration,
) -> Result<u64, QueueError> {
    let now = db.now_ms();
    let tokens = serde_json::to_string(leases).map_err(|e| QueueError::Invalid(e.to_string()))?;
    let mut tx = db.begin().await?;
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

/// Marks the worker stopped.
pub(super) async fn worker_stopped(db: &SqliteQueue, w: &WorkerInfo) -> Result<(), QueueError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE workers SET state = 'stopped', in_flight = 0, processed = ?2, failed = ?3, last_heartbeat_at = ?4
         WHERE id = ?1",
    )
    .bind(&w.id)
    .bind(w.processed)
    .bind(w.failed)
    .bind(db.now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Lists known workers.
pub(super) async fn workers(db: &SqliteQueue) -> Result<Vec<WorkerInfo>, QueueError> {
    let workers =
        sqlx::query_as("SELECT id, host, pid, version, in_flight, processed, failed, state FROM workers ORDER BY id")
            .fetch_all(&db.pool)
            .await?;
    Ok(workers)
}

/// Returns jobs whose lease expired to ready, or dead after their last attempt.
pub(super) async fn rescue_expired(db: &SqliteQueue, max_attempts: u32) -> Result<RescueReport, QueueError> {
    let now = db.now_ms();
    let mut tx = db.begin().await?;
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

/// Counts jobs by state; see `Queue::stats`.
pub(super) async fn stats(db: &SqliteQueue) -> Result<QueueStats, QueueError> {
    let now = db.now_ms();
    let rows: Vec<StatRow> = sqlx::query_as(
        "SELECT state, run_at <= ?1 AS due, priority, count(*) AS n, (?1 - min(run_at)) / 1000.0 AS age
         FROM jobs GROUP BY 1, 2, 3",
    )
    .bind(now)
    .fetch_all(&db.pool)
    .await?;
    Ok(fold_stats(rows))
}

/// Whether no job is due within `within`, none is running and no provider batch is open; see
/// `Queue::is_idle`.
pub(super) async fn is_idle(db: &SqliteQueue, within: Duration) -> Result<bool, QueueError> {
    let idle: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE state = 'ready' AND run_at <= ?1)
            AND NOT EXISTS (SELECT 1 FROM jobs WHERE state = 'running')
            AND NOT EXISTS (SELECT 1 FROM provider_batches WHERE state IN ('uploading', 'submitted', 'collecting'))",
    )
    .bind(db.now_ms().saturating_add(ms(within)))
    .fetch_one(&db.pool)
    .await?;
    Ok(idle)
}
