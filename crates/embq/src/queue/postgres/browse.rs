//! The console's reads (see `queue/browse.rs`): listings, one job, dead-letter groups, activity.

use chrono::{DateTime, Utc};

use super::PgQueue;
use crate::queue::browse::{
    fold_activity, minute_floor, Activity, DeadGroup, DetailRow, GroupRow, JobDetail, JobFilter, JobSummary,
    MinuteCounts, SummaryRow, WorkerLeaseRow, WorkerLeases,
};
use crate::queue::QueueError;

/// The columns of a listing row.
const SUMMARY: &str = "j.id, j.source_type, j.source_id, j.content_type, j.state, j.priority, j.attempts, \
     j.last_error, j.updated_at";

/// Jobs matching `f`, newest first.
pub(super) async fn jobs(pg: &PgQueue, f: &JobFilter) -> Result<Vec<JobSummary>, QueueError> {
    // An unset filter binds NULL and matches everything; `strpos` needs no escaping of `%`/`_`.
    let sql = format!(
        "SELECT {SUMMARY} FROM embq.jobs j
          WHERE ($1::text IS NULL OR j.state = $1) AND ($2::text IS NULL OR j.source_type = $2)
            AND ($3::text IS NULL OR strpos(lower(j.source_id), lower($3)) > 0)
            AND ($4::text IS NULL OR strpos(lower(COALESCE(j.last_error, '')), lower($4)) > 0)
          ORDER BY j.id DESC LIMIT $5"
    );
    let mut tx = pg.begin().await?;
    let rows: Vec<SummaryRow<DateTime<Utc>>> = pg
        .q_as(&sql)
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.source_type.as_deref())
        .bind(f.key.as_deref())
        .bind(f.error.as_deref())
        .bind(f.clamped_limit())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(JobSummary::from).collect())
}

/// One job with its key's stored vector.
pub(super) async fn job(pg: &PgQueue, id: i64) -> Result<Option<JobDetail>, QueueError> {
    let sql = format!(
        "SELECT {SUMMARY}, j.text, j.metadata::text AS metadata, j.created_at, j.run_at, j.finished_at,
                j.lease_owner, j.lease_expires_at, e.model, e.dimensions, e.job_id AS vector_job_id
           FROM embq.jobs j LEFT JOIN embq.embeddings e ON e.source_type = j.source_type
                AND e.source_id = j.source_id AND e.content_type = j.content_type
          WHERE j.id = $1"
    );
    let mut tx = pg.begin().await?;
    let row: Option<DetailRow<DateTime<Utc>>> = pg.q_as(&sql).bind(id).fetch_optional(&mut *tx).await?;
    tx.commit().await?;
    Ok(row.map(JobDetail::from))
}

/// Dead jobs grouped by last error, largest group first.
pub(super) async fn dead_groups(pg: &PgQueue, limit: i64) -> Result<Vec<DeadGroup>, QueueError> {
    let mut tx = pg.begin().await?;
    let rows: Vec<GroupRow<DateTime<Utc>>> = pg
        .q_as(
            "SELECT COALESCE(last_error, '') AS error, count(*) AS count,
                    max(COALESCE(finished_at, updated_at)) AS newest_at
               FROM embq.jobs WHERE state = 'dead' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(DeadGroup::from).collect())
}

/// Ids of the dead jobs whose last error is exactly `error` (the empty text for none).
pub(super) async fn dead_ids(pg: &PgQueue, error: &str) -> Result<Vec<i64>, QueueError> {
    let mut tx = pg.begin().await?;
    let ids = pg
        .q_scalar("SELECT id FROM embq.jobs WHERE state = 'dead' AND COALESCE(last_error, '') = $1 ORDER BY id")
        .bind(error)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Per-minute activity for `minutes` minutes from the minute `since` falls in.
pub(super) async fn activity(pg: &PgQueue, since: DateTime<Utc>, minutes: usize) -> Result<Activity, QueueError> {
    let start = minute_floor(since);
    let mut tx = pg.begin().await?;
    let mut counts = Vec::with_capacity(3);
    for sql in [
        "SELECT date_trunc('minute', created_at), count(*) FROM embq.jobs
          WHERE created_at >= $1 AND state NOT IN ('superseded', 'cancelled') GROUP BY 1",
        "SELECT date_trunc('minute', finished_at), count(*) FROM embq.jobs
          WHERE finished_at >= $1 AND state = 'done' GROUP BY 1",
        "SELECT date_trunc('minute', finished_at), count(*) FROM embq.jobs
          WHERE finished_at >= $1 AND state = 'dead' GROUP BY 1",
    ] {
        let rows: Vec<(DateTime<Utc>, i64)> = pg.q_as(sql).bind(start).fetch_all(&mut *tx).await?;
        let c: MinuteCounts = rows.into_iter().map(|(m, n)| (m, u64::try_from(n).unwrap_or(0))).collect();
        counts.push(c);
    }
    let backlog: i64 = pg
        .q_scalar(
            "SELECT count(*) FROM embq.jobs WHERE created_at < $1 AND state NOT IN ('superseded', 'cancelled')
                AND (finished_at IS NULL OR finished_at >= $1)",
        )
        .bind(start)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(fold_activity(start, minutes, u64::try_from(backlog).unwrap_or(0), &counts[0], &counts[1], &counts[2]))
}

/// Workers with their heartbeat and leases.
pub(super) async fn worker_leases(pg: &PgQueue) -> Result<Vec<WorkerLeases>, QueueError> {
    let mut tx = pg.begin().await?;
    let rows: Vec<WorkerLeaseRow<DateTime<Utc>>> = pg
        .q_as(
            "SELECT w.id, w.host, w.state, w.last_heartbeat_at, count(j.id) AS leased_jobs,
                    min(j.lease_expires_at) AS next_expiry
               FROM embq.workers w LEFT JOIN embq.jobs j ON j.state = 'running' AND j.lease_owner = w.id
              GROUP BY w.id ORDER BY w.id",
        )
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(WorkerLeases::from).collect())
}
