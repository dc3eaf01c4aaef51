//! Finishing a claimed batch: vectors stored and jobs done, unchanged, dead, retried or released,
//! one job at a time inside one write transaction, all under the batch's lease.

use std::time::Duration;

use sqlx::{FromRow, Sqlite, Transaction};

use super::{ms, SqliteQueue, REQUEUE_STATE};
use crate::queue::{clip_error, FinishReport, JobState, Lease, Outcome, OutcomeGroups, QueueError};
use crate::vector;

/// Applies a batch's outcomes; see `Queue::finish`.
pub(super) async fn finish(
    db: &SqliteQueue,
    lease: &Lease,
    model: &str,
    outcomes: &[(i64, Outcome)],
) -> Result<FinishReport, QueueError> {
    let g = OutcomeGroups::split(outcomes);
    let now = db.now_ms();
    let mut report = FinishReport::default();
    let mut tx = db.begin().await?;
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
        match requeue(db, &mut tx, lease, *id, *after, Some(err), false).await? {
            Some(JobState::Superseded) => report.superseded += 1,
            Some(_) => report.retried += 1,
            None => {}
        }
    }
    for (id, after) in &g.released {
        match requeue(db, &mut tx, lease, *id, *after, None, true).await? {
            Some(JobState::Superseded) => report.superseded += 1,
            Some(_) => report.released += 1,
            None => {}
        }
    }
    tx.commit().await?;
    let applied = report.stored + report.unchanged + report.dead + report.retried + report.released + report.superseded;
    report.lost = (outcomes.len() as u64).saturating_sub(applied);
    Ok(report)
}

/// Moves a running job back to ready (or superseded); `None` when its lease was lost.
async fn requeue(
    db: &SqliteQueue,
    tx: &mut Transaction<'static, Sqlite>,
    lease: &Lease,
    id: i64,
    after: Duration,
    error: Option<&str>,
    refund: bool,
) -> Result<Option<JobState>, QueueError> {
    let now = db.now_ms();
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

/// The key and text hash of a job the finish just marked done.
#[derive(FromRow)]
struct DoneKey {
    source_type: String,
    source_id: String,
    content_type: String,
    text_sha256: Vec<u8>,
}
