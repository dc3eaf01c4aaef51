//! Dead-lettered jobs: listing them, making them ready again, and deleting them.

use chrono::{DateTime, Utc};

use super::PgQueue;
use crate::queue::rows::DeadRow;
use crate::queue::{DeadJob, DeadSelection, JobState, QueueError};

/// Lists dead-lettered jobs, newest first.
pub(super) async fn dead_jobs(pg: &PgQueue, limit: i64) -> Result<Vec<DeadJob>, QueueError> {
    let mut tx = pg.begin().await?;
    let rows: Vec<DeadRow<DateTime<Utc>>> = pg
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

/// Makes dead jobs ready again; per key only the newest one, the others are superseded.
pub(super) async fn retry_dead(pg: &PgQueue, which: &DeadSelection) -> Result<u64, QueueError> {
    let mut tx = pg.begin().await?;
    let ids = selection_ids(which);
    // Lock first: the window function below cannot be combined with FOR UPDATE.
    pg.q("SELECT id FROM embq.jobs WHERE state = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1)) FOR UPDATE")
        .bind(ids.clone())
        .execute(&mut *tx)
        .await?;
    // Per key only the newest dead job can become pending; older ones and those
    // overtaken by a pending job are superseded.
    let states: Vec<JobState> = pg
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
        .bind(pg.now())
        .fetch_all(&mut *tx)
        .await?;
    pg.q("SELECT pg_notify('embq_jobs', '')").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(states.iter().filter(|s| **s == JobState::Ready).count() as u64)
}

/// Deletes dead jobs.
pub(super) async fn purge_dead(pg: &PgQueue, which: &DeadSelection) -> Result<u64, QueueError> {
    let mut tx = pg.begin().await?;
    let r = pg
        .q("DELETE FROM embq.jobs WHERE state = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1))")
        .bind(selection_ids(which))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(r.rows_affected())
}

/// Ids of dead jobs the selection names.
fn selection_ids(which: &DeadSelection) -> Option<Vec<i64>> {
    match which {
        DeadSelection::All => None,
        DeadSelection::Ids(ids) => Some(ids.clone()),
    }
}
