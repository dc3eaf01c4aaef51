//! Enqueueing jobs: validated, de-duplicated, written in bounded transactions so running workers
//! never wait long for the write lock; a key with a pending job gets its text replaced.

use super::SqliteQueue;
use crate::queue::{dedupe_keys, EnqueueReport, NewJob, Progress, QueueError};

/// Jobs per enqueue transaction: each holds SQLite's write lock for a fraction of a second.
const ENQUEUE_TX_JOBS: usize = 20_000;
/// Rows per INSERT statement (11 parameters each, well under SQLite's 32,766).
const ENQUEUE_ROWS: usize = 500;

/// Adds jobs in transactions of `ENQUEUE_TX_JOBS`; see `Queue::enqueue`.
pub(super) async fn enqueue(
    db: &SqliteQueue,
    jobs: &[NewJob],
    progress: &Progress,
) -> Result<EnqueueReport, QueueError> {
    for (i, j) in jobs.iter().enumerate() {
        j.validate().map_err(|e| QueueError::Invalid(format!("job {}: {e}", i + 1)))?;
    }
    let jobs = dedupe_keys(jobs);
    let now = db.now_ms();
    let mut report = EnqueueReport::default();
    // Bounded transactions: the write lock is released every ENQUEUE_TX_JOBS jobs, so running
    // workers wait milliseconds for it, never long enough to see "database is locked".
    for tx_jobs in jobs.chunks(ENQUEUE_TX_JOBS) {
        let mut tx = db.begin().await?;
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
            let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
            let sql = format!(
                "INSERT INTO jobs (source_type, source_id, content_type, text, text_sha256, priority, metadata,
                                   run_at, created_at, updated_at, lane)
                 VALUES {values}
                 ON CONFLICT (source_type, source_id, content_type) WHERE state = 'ready'
                 DO UPDATE SET text = excluded.text, text_sha256 = excluded.text_sha256,
                     priority = excluded.priority, metadata = excluded.metadata, lane = excluded.lane,
                     attempts = 0,
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
                    .bind(now)
                    .bind(j.lane);
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
