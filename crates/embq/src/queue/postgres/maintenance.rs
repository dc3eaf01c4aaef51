//! Keeping the queue healthy: worker heartbeats (lease extension, the workers table), the sweep
//! of expired leases, and the counts behind `embq queue stats` and the idle check.

use std::time::Duration;

use super::PgQueue;
use crate::queue::stats::{fold_stats, StatRow};
use crate::queue::{JobState, QueueError, QueueStats, RescueReport, WorkerInfo};

/// Extends the worker's leases and refreshes its row; see `Queue::heartbeat`.
pub(super) async fn heartbeat(
    pg: &PgQueue,
    w: &WorkerInfo,
    leases: &[String],
    duration: Duration,
) -> Result<u64, QueueError> {
    let mut tx = pg.begin().await?;
    let r = pg
        .q("UPDATE embq.jobs SET lease_expires_at = COALESCE($1::timestamptz, now()) + make_interval(secs => $2)
            WHERE state = 'running' AND lease_owner = $3 AND lease_token = ANY($4::text[])")
        .bind(pg.now())
        .bind(duration.as_secs_f64())
        .bind(w.id.clone())
        .bind(leases)
        .execute(&mut *tx)
        .await?;
    pg.q("INSERT INTO embq.workers AS w
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
        .bind(pg.now())
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
pub(super) async fn worker_stopped(pg: &PgQueue, w: &WorkerInfo) -> Result<(), QueueError> {
    let mut tx = pg.begin().await?;
    pg.q("UPDATE embq.workers SET state = 'stopped', in_flight = 0, processed = $2, failed = $3,
                last_heartbeat_at = COALESCE($4::timestamptz, now())
            WHERE id = $1")
        .bind(w.id.clone())
        .bind(w.processed)
        .bind(w.failed)
        .bind(pg.now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Lists known workers.
pub(super) async fn workers(pg: &PgQueue) -> Result<Vec<WorkerInfo>, QueueError> {
    let mut tx = pg.begin().await?;
    let workers = pg
        .q_as("SELECT id, host, pid, version, in_flight, processed, failed, state FROM embq.workers ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(workers)
}

/// Returns jobs whose lease expired to ready, or dead after their last attempt.
pub(super) async fn rescue_expired(pg: &PgQueue, max_attempts: u32) -> Result<RescueReport, QueueError> {
    let mut tx = pg.begin().await?;
    let states: Vec<JobState> = pg
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
        .bind(pg.now())
        .bind(max_attempts as i32)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let dead = states.iter().filter(|s| **s == JobState::Dead).count() as u64;
    Ok(RescueReport { requeued: states.len() as u64 - dead, dead })
}

/// Counts jobs by state; see `Queue::stats`.
pub(super) async fn stats(pg: &PgQueue) -> Result<QueueStats, QueueError> {
    let mut tx = pg.begin_without_jit().await?;
    let rows: Vec<StatRow> = pg
        .q_as(
            "SELECT state, (run_at <= COALESCE($1::timestamptz, now())) AS due, priority, count(*) AS n,
                EXTRACT(EPOCH FROM (COALESCE($1::timestamptz, now()) - min(run_at)))::float8 AS age
            FROM embq.jobs GROUP BY 1, 2, 3",
        )
        .bind(pg.now())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(fold_stats(rows))
}

/// Whether no job is due within `within`, none is running and no provider batch is open; see
/// `Queue::is_idle`.
pub(super) async fn is_idle(pg: &PgQueue, within: Duration) -> Result<bool, QueueError> {
    let mut tx = pg.begin().await?;
    let idle: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM embq.jobs
                            WHERE state = 'ready'
                              AND run_at <= COALESCE($1::timestamptz, now()) + make_interval(secs => $2))
            AND NOT EXISTS (SELECT 1 FROM embq.jobs WHERE state = 'running')
            AND NOT EXISTS (SELECT 1 FROM embq.provider_batches
                            WHERE state IN ('uploading', 'submitted', 'collecting'))",
    )
    .persistent(pg.persistent)
    .bind(pg.now())
    .bind(within.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(idle)
}
