//! Dead-lettered jobs: listing them, making them ready again, and deleting them.

use super::{SqliteQueue, REQUEUE_STATE};
use crate::queue::rows::DeadRow;
use crate::queue::{DeadJob, DeadSelection, JobState, QueueError};

/// Lists dead-lettered jobs, newest first.
pub(super) async fn dead_jobs(db: &SqliteQueue, limit: i64) -> Result<Vec<DeadJob>, QueueError> {
    let rows: Vec<DeadRow<i64>> = sqlx::query_as(
        "SELECT id, source_type, source_id, content_type, attempts, last_error,
             COALESCE(finished_at, updated_at) AS failed_at
         FROM jobs WHERE state = 'dead' ORDER BY finished_at DESC, id DESC LIMIT ?1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(DeadJob::from).collect())
}

/// Makes dead jobs ready again, newest per key first so older ones are superseded.
pub(super) async fn retry_dead(db: &SqliteQueue, which: &DeadSelection) -> Result<u64, QueueError> {
    let now = db.now_ms();
    let clause = selection_clause(which)?;
    let mut tx = db.begin().await?;
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

/// Deletes dead jobs.
pub(super) async fn purge_dead(db: &SqliteQueue, which: &DeadSelection) -> Result<u64, QueueError> {
    let clause = selection_clause(which)?;
    let mut tx = db.begin().await?;
    let r = sqlx::query(&format!("DELETE FROM jobs WHERE state = 'dead'{clause}")).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(r.rows_affected())
}

/// The SQL condition on `id` the selection names.
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
