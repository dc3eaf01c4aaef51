//! Enqueueing jobs: validated, de-duplicated, written in chunks of one transaction; a key with a
//! pending job gets its text replaced, and listening workers are woken at commit.

use super::PgQueue;
use crate::queue::{dedupe_keys, EnqueueReport, NewJob, Progress, QueueError};

/// Rows per INSERT when enqueueing; all chunks share one transaction.
const ENQUEUE_CHUNK: usize = 5000;

/// Adds jobs in one transaction; see `Queue::enqueue`.
pub(super) async fn enqueue(pg: &PgQueue, jobs: &[NewJob], progress: &Progress) -> Result<EnqueueReport, QueueError> {
    for (i, j) in jobs.iter().enumerate() {
        j.validate().map_err(|e| QueueError::Invalid(format!("job {}: {e}", i + 1)))?;
    }
    let jobs = dedupe_keys(jobs);
    let mut report = EnqueueReport::default();
    let mut tx = pg.begin().await?;
    for chunk in jobs.chunks(ENQUEUE_CHUNK) {
        let st: Vec<&str> = chunk.iter().map(|j| j.source_type.as_str()).collect();
        let si: Vec<&str> = chunk.iter().map(|j| j.source_id.as_str()).collect();
        let ct: Vec<&str> = chunk.iter().map(|j| j.content_type.as_str()).collect();
        let tx_: Vec<&str> = chunk.iter().map(|j| j.text.as_str()).collect();
        let sh: Vec<Vec<u8>> = chunk.iter().map(|j| j.text_sha256()).collect();
        let pr: Vec<i32> = chunk.iter().map(|j| j.priority).collect();
        let md: Vec<Option<String>> = chunk.iter().map(|j| j.metadata.as_ref().map(|m| m.to_string())).collect();
        let ln: Vec<&str> = chunk.iter().map(|j| j.lane.as_str()).collect();
        let inserted: Vec<bool> = pg
            .q_scalar(
                "INSERT INTO embq.jobs AS j
                (source_type, source_id, content_type, text, text_sha256, priority, metadata,
                 run_at, created_at, updated_at, lane)
             SELECT u.st, u.si, u.ct, u.tx, u.sh, u.pr, u.md::jsonb, c.n, c.n, c.n, u.ln
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int[], $7::text[],
                         $9::text[])
                  AS u(st, si, ct, tx, sh, pr, md, ln),
                  (SELECT COALESCE($8::timestamptz, now()) AS n) c
             ON CONFLICT (source_type, source_id, content_type) WHERE state = 'ready'
             DO UPDATE SET text = EXCLUDED.text, text_sha256 = EXCLUDED.text_sha256,
                 priority = EXCLUDED.priority, metadata = EXCLUDED.metadata, lane = EXCLUDED.lane, attempts = 0,
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
            .bind(pg.now())
            .bind(ln)
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
    pg.q("SELECT pg_notify('embq_jobs', '')").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(report)
}
