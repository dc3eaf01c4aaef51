//! Claiming jobs: the claim statement, and the unchanged jobs it finds completed in the same
//! write transaction.

use std::time::Duration;

use sqlx::{Sqlite, Transaction};

use super::{ms, SqliteQueue};
use crate::queue::rows::ClaimedRow;
use crate::queue::{ClaimedJob, Lease, QueueError};

/// Which ready jobs a claim may take.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pick {
    /// Any lane (the batch lane is off).
    Any,
    /// `online`-lane jobs only (the batch lane is on).
    Online,
    /// `batch`-lane jobs, for a provider batch.
    Batch,
}

/// Leases up to `limit` ready jobs; see `Queue::claim`.
pub(super) async fn claim(
    db: &SqliteQueue,
    limit: usize,
    lease: &Lease,
    duration: Duration,
    model: &str,
) -> Result<Vec<ClaimedJob>, QueueError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let pick = if db.online_only { Pick::Online } else { Pick::Any };
    let now = db.now_ms();
    let mut tx = db.begin().await?;
    let expires = Some(now.saturating_add(ms(duration)));
    let jobs = claim_in(&mut tx, pick, limit, lease, expires, now, model).await?;
    tx.commit().await?;
    Ok(jobs)
}

/// The claim inside a write transaction: `expires` `None` leases with no expiry (a provider
/// batch's jobs, which the lease sweep must not touch).
pub(super) async fn claim_in(
    tx: &mut Transaction<'static, Sqlite>,
    pick: Pick,
    limit: usize,
    lease: &Lease,
    expires: Option<i64>,
    now: i64,
    model: &str,
) -> Result<Vec<ClaimedJob>, QueueError> {
    let lane = match pick {
        Pick::Any => "",
        Pick::Online => "AND lane = 'online'",
        Pick::Batch => "AND lane = 'batch'",
    };
    let sql = format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?1, lease_token = ?2,
             lease_expires_at = ?3, updated_at = ?4
         WHERE id IN (SELECT id FROM jobs WHERE state = 'ready' {lane} AND run_at <= ?4
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
                       AND r.id < jobs.id) AS unchanged"
    );
    let rows: Vec<ClaimedRow> = sqlx::query_as(&sql)
        .bind(&lease.owner)
        .bind(&lease.token)
        .bind(expires)
        .bind(now)
        .bind(limit as i64)
        .bind(model)
        .fetch_all(&mut **tx)
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
        .execute(&mut **tx)
        .await?;
    }
    jobs.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.id));
    Ok(jobs)
}
