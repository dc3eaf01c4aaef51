//! The console's reads (see `queue/browse.rs`): listings, one job, dead-letter groups, activity.

use chrono::{DateTime, Utc};

use super::SqliteQueue;
use crate::queue::browse::{
    fold_activity, minute_floor, Activity, DeadGroup, DetailRow, GroupRow, JobDetail, JobFilter, JobSummary,
    MinuteCounts, SummaryRow, WorkerLeaseRow, WorkerLeases,
};
use crate::queue::rows::from_millis;
use crate::queue::QueueError;

/// The columns of a listing row.
const SUMMARY: &str = "j.id, j.source_type, j.source_id, j.content_type, j.state, j.priority, j.attempts, \
     j.last_error, j.updated_at";

/// Jobs matching `f`, newest first.
pub(super) async fn jobs(db: &SqliteQueue, f: &JobFilter) -> Result<Vec<JobSummary>, QueueError> {
    // An unset filter binds NULL and matches everything; `instr` needs no escaping of `%`/`_`.
    let rows: Vec<SummaryRow<i64>> = sqlx::query_as(&format!(
        "SELECT {SUMMARY} FROM jobs j
          WHERE (?1 IS NULL OR j.state = ?1) AND (?2 IS NULL OR j.source_type = ?2)
            AND (?3 IS NULL OR instr(lower(j.source_id), lower(?3)) > 0)
            AND (?4 IS NULL OR instr(lower(COALESCE(j.last_error, '')), lower(?4)) > 0)
          ORDER BY j.id DESC LIMIT ?5"
    ))
    .bind(f.state.map(|s| s.as_str()))
    .bind(f.source_type.as_deref())
    .bind(f.key.as_deref())
    .bind(f.error.as_deref())
    .bind(f.clamped_limit())
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(JobSummary::from).collect())
}

/// One job with its key's stored vector.
pub(super) async fn job(db: &SqliteQueue, id: i64) -> Result<Option<JobDetail>, QueueError> {
    let row: Option<DetailRow<i64>> = sqlx::query_as(&format!(
        "SELECT {SUMMARY}, j.text, j.metadata, j.created_at, j.run_at, j.finished_at, j.lease_owner,
                j.lease_expires_at, e.model, e.dimensions, e.job_id AS vector_job_id
           FROM jobs j LEFT JOIN embeddings e ON e.source_type = j.source_type AND e.source_id = j.source_id
                AND e.content_type = j.content_type
          WHERE j.id = ?1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(JobDetail::from))
}

/// Dead jobs grouped by last error, largest group first.
pub(super) async fn dead_groups(db: &SqliteQueue, limit: i64) -> Result<Vec<DeadGroup>, QueueError> {
    let rows: Vec<GroupRow<i64>> = sqlx::query_as(
        "SELECT COALESCE(last_error, '') AS error, count(*) AS count,
                max(COALESCE(finished_at, updated_at)) AS newest_at
           FROM jobs WHERE state = 'dead' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(DeadGroup::from).collect())
}

/// Ids of the dead jobs whose last error is exactly `error` (the empty text for none).
pub(super) async fn dead_ids(db: &SqliteQueue, error: &str) -> Result<Vec<i64>, QueueError> {
    let ids =
        sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'dead' AND COALESCE(last_error, '') = ?1 ORDER BY id")
            .bind(error)
            .fetch_all(&db.pool)
            .await?;
    Ok(ids)
}

/// Per-minute activity for `minutes` minutes from the minute `since` falls in.
pub(super) async fn activity(db: &SqliteQueue, since: DateTime<Utc>, minutes: usize) -> Result<Activity, QueueError> {
    let start = minute_floor(since);
    let from = start.timestamp_millis();
    let counts = |sql: &'static str| async move {
        let rows: Vec<(i64, i64)> = sqlx::query_as(sql).bind(from).fetch_all(&db.pool).await?;
        Ok::<MinuteCounts, QueueError>(
            rows.into_iter().map(|(m, n)| (from_millis(m), u64::try_from(n).unwrap_or(0))).collect(),
        )
    };
    let enqueued = counts(
        "SELECT created_at / 60000 * 60000, count(*) FROM jobs
          WHERE created_at >= ?1 AND state NOT IN ('superseded', 'cancelled') GROUP BY 1",
    )
    .await?;
    let done = counts(
        "SELECT finished_at / 60000 * 60000, count(*) FROM jobs WHERE finished_at >= ?1 AND state = 'done' GROUP BY 1",
    )
    .await?;
    let dead = counts(
        "SELECT finished_at / 60000 * 60000, count(*) FROM jobs WHERE finished_at >= ?1 AND state = 'dead' GROUP BY 1",
    )
    .await?;
    let backlog: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE created_at < ?1 AND state NOT IN ('superseded', 'cancelled')
            AND (finished_at IS NULL OR finished_at >= ?1)",
    )
    .bind(from)
    .fetch_one(&db.pool)
    .await?;
    Ok(fold_activity(start, minutes, u64::try_from(backlog).unwrap_or(0), &enqueued, &done, &dead))
}

/// Workers with their heartbeat and leases.
pub(super) async fn worker_leases(db: &SqliteQueue) -> Result<Vec<WorkerLeases>, QueueError> {
    let rows: Vec<WorkerLeaseRow<i64>> = sqlx::query_as(
        "SELECT w.id, w.host, w.state, w.last_heartbeat_at,
                (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.lease_owner = w.id) AS leased_jobs,
                (SELECT min(j.lease_expires_at) FROM jobs j WHERE j.state = 'running' AND j.lease_owner = w.id)
                    AS next_expiry
           FROM workers w ORDER BY w.id",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(WorkerLeases::from).collect())
}
