//! Provider batches in SQLite: the same operations as PostgreSQL's `batches.rs`, each in one
//! write transaction (SQLite's single writer is the lock that keeps two workers apart).

use std::time::Duration;

use super::claim::{claim_in, Pick};
use super::{ms, SqliteQueue};
use crate::queue::batch_pack::{Packed, Packer};
use crate::queue::batches::{lease_of, BatchUpdate, GatherLimits, Gathered, LaneStats, ProviderBatch, Sizer};
use crate::queue::rows::ClaimedRow;
use crate::queue::{ClaimedJob, QueueError};

/// The columns of [`ProviderBatch`].
const BATCH_COLUMNS: &str = "id, submission_id, state, model, requests, estimated_tokens, input_file_id, batch_id,
    provider_status, output_file_id, error_file_id, last_error";

fn json_ids(ids: &[i64]) -> Result<String, QueueError> {
    serde_json::to_string(ids).map_err(|e| QueueError::Invalid(e.to_string()))
}

/// Takes ready `batch`-lane jobs up to `limits` and records them as one batch.
pub(super) async fn gather(
    db: &SqliteQueue,
    submission_id: &str,
    model: &str,
    limits: GatherLimits<'_>,
    size: &Sizer<'_>,
) -> Result<Gathered, QueueError> {
    let lease = lease_of(submission_id);
    let now = db.now_ms();
    let mut tx = db.begin().await?;
    // The write lock (BEGIN IMMEDIATE) makes this the only gathering: what is held stays true.
    let held: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(estimated_tokens), 0) FROM provider_batches
         WHERE model = ?1 AND state IN ('uploading', 'submitted')",
    )
    .bind(model)
    .fetch_one(&mut *tx)
    .await?;
    let held = u64::try_from(held).unwrap_or(0);
    let mut pack = Packer::new(limits, held, size);
    while let Some(want) = pack.wants() {
        // No lease expiry: the lease sweep leaves a batch's jobs alone.
        let round = claim_in(&mut tx, Pick::Batch, want, &lease, None, now, model).await?;
        let got = round.len();
        pack.take(round);
        if got < want {
            break;
        }
    }
    let Packed { mut jobs, back, unchanged, tokens } = pack.finish();
    if !back.is_empty() {
        sqlx::query(
            "UPDATE jobs SET state = 'ready', attempts = attempts - 1, lease_owner = NULL, lease_token = NULL,
                 lease_expires_at = NULL
             WHERE state = 'running' AND lease_token = ?1 AND id IN (SELECT value FROM json_each(?2))",
        )
        .bind(&lease.token)
        .bind(json_ids(&back)?)
        .execute(&mut *tx)
        .await?;
    }
    if jobs.is_empty() {
        tx.commit().await?;
        return Ok(Gathered { batch: None, jobs, unchanged });
    }
    let sql = format!(
        "INSERT INTO provider_batches
             (submission_id, model, requests, estimated_tokens, next_check_at, created_at, updated_at,
              lease_owner, lease_expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5, ?6, ?7)
         RETURNING {BATCH_COLUMNS}"
    );
    let batch: ProviderBatch = sqlx::query_as(&sql)
        .bind(submission_id)
        .bind(model)
        .bind(jobs.len() as i64)
        .bind(tokens as i64)
        .bind(now)
        .bind(limits.owner)
        .bind(now.saturating_add(ms(limits.lease)))
        .fetch_one(&mut *tx)
        .await?;
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    sqlx::query("UPDATE jobs SET provider_batch = ?1 WHERE id IN (SELECT value FROM json_each(?2))")
        .bind(batch.id)
        .bind(json_ids(&ids)?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    jobs.sort_by_key(|j| j.id);
    Ok(Gathered { batch: Some(batch), jobs, unchanged })
}

/// Moves the backlog to the batch lane once more than `backlog` ready online jobs sit below `below`.
pub(super) async fn move_backlog(db: &SqliteQueue, backlog: u64, below: i32) -> Result<u64, QueueError> {
    let mut tx = db.begin().await?;
    let over: bool = sqlx::query_scalar(
        "SELECT count(*) > ?2 FROM (SELECT 1 FROM jobs
            WHERE state = 'ready' AND lane = 'online' AND priority < ?1 LIMIT ?2 + 1)",
    )
    .bind(below)
    .bind(i64::try_from(backlog).unwrap_or(i64::MAX - 1))
    .fetch_one(&mut *tx)
    .await?;
    let moved = if over {
        sqlx::query("UPDATE jobs SET lane = 'batch' WHERE state = 'ready' AND lane = 'online' AND priority < ?1")
            .bind(below)
            .execute(&mut *tx)
            .await?
            .rows_affected()
    } else {
        0
    };
    tx.commit().await?;
    Ok(moved)
}

/// Leases the open batch due soonest to `owner`.
pub(super) async fn lease(
    db: &SqliteQueue,
    owner: &str,
    duration: Duration,
) -> Result<Option<ProviderBatch>, QueueError> {
    let now = db.now_ms();
    let sql = format!(
        "UPDATE provider_batches SET lease_owner = ?2, lease_expires_at = ?3
         WHERE id = (SELECT id FROM provider_batches
                     WHERE state IN ('uploading', 'submitted', 'collecting') AND next_check_at <= ?1
                       AND (lease_expires_at IS NULL OR lease_expires_at < ?1)
                     ORDER BY next_check_at, id LIMIT 1)
         RETURNING {BATCH_COLUMNS}"
    );
    let mut tx = db.begin().await?;
    let b = sqlx::query_as(&sql)
        .bind(now)
        .bind(owner)
        .bind(now.saturating_add(ms(duration)))
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(b)
}

/// Records a step of a batch `owner` holds; false when the lease was lost.
pub(super) async fn update(
    db: &SqliteQueue,
    id: i64,
    owner: &str,
    lease: Duration,
    u: &BatchUpdate,
) -> Result<bool, QueueError> {
    let now = db.now_ms();
    let mut tx = db.begin().await?;
    let r = sqlx::query(
        "UPDATE provider_batches SET
             state = COALESCE(?4, state),
             input_file_id = COALESCE(?5, input_file_id),
             batch_id = COALESCE(?6, batch_id),
             provider_status = COALESCE(?7, provider_status),
             output_file_id = COALESCE(?8, output_file_id),
             error_file_id = COALESCE(?9, error_file_id),
             completed = COALESCE(?10, completed),
             failed = COALESCE(?11, failed),
             billed_tokens = COALESCE(?12, billed_tokens),
             last_error = CASE WHEN ?13 IS NULL THEN last_error ELSE NULLIF(?13, '') END,
             next_check_at = ?1 + ?14,
             submitted_at = CASE WHEN ?4 = 'submitted' THEN ?1 ELSE submitted_at END,
             finished_at = CASE WHEN ?4 IN ('collected', 'failed', 'expired', 'cancelled') THEN ?1
                                ELSE finished_at END,
             lease_owner = CASE WHEN ?15 THEN NULL ELSE lease_owner END,
             lease_expires_at = CASE WHEN ?15 THEN NULL ELSE ?1 + ?3 END,
             updated_at = ?1
         WHERE id = ?2 AND lease_owner = ?16",
    )
    .bind(now)
    .bind(id)
    .bind(ms(lease))
    .bind(u.state)
    .bind(u.input_file_id.as_deref())
    .bind(u.batch_id.as_deref())
    .bind(u.provider_status.as_deref())
    .bind(u.output_file_id.as_deref())
    .bind(u.error_file_id.as_deref())
    .bind(u.completed)
    .bind(u.failed)
    .bind(u.billed_tokens)
    .bind(u.last_error.as_deref())
    .bind(ms(u.check_in))
    .bind(u.release)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

/// The jobs a batch still holds (running under its lease).
pub(super) async fn jobs(db: &SqliteQueue, b: &ProviderBatch) -> Result<Vec<ClaimedJob>, QueueError> {
    let rows: Vec<ClaimedRow> = sqlx::query_as(
        "SELECT id, source_type, source_id, content_type, text, attempts, priority, false AS unchanged
         FROM jobs WHERE provider_batch = ?1 AND state = 'running' AND lease_token = ?2 ORDER BY id",
    )
    .bind(b.id)
    .bind(b.lease().token)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(ClaimedJob::from).collect())
}

/// Estimated tokens held by batches of `model` not yet ended at the provider.
pub(super) async fn enqueued_tokens(db: &SqliteQueue, model: &str) -> Result<u64, QueueError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(estimated_tokens), 0) FROM provider_batches
         WHERE model = ?1 AND state IN ('uploading', 'submitted')",
    )
    .bind(model)
    .fetch_one(&db.pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[derive(sqlx::FromRow)]
struct Count {
    key: String,
    n: i64,
}

/// Jobs per lane and batches per state.
pub(super) async fn stats(db: &SqliteQueue) -> Result<LaneStats, QueueError> {
    let lanes: Vec<Count> = sqlx::query_as(
        "SELECT lane AS key, count(*) AS n FROM jobs WHERE state = 'ready' AND run_at <= ?1 GROUP BY 1 ORDER BY 1",
    )
    .bind(db.now_ms())
    .fetch_all(&db.pool)
    .await?;
    let batches: Vec<Count> =
        sqlx::query_as("SELECT state AS key, count(*) AS n FROM provider_batches GROUP BY 1 ORDER BY 1")
            .fetch_all(&db.pool)
            .await?;
    let (in_batches, enqueued, billed): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE state = 'running' AND provider_batch IS NOT NULL
                   AND lease_expires_at IS NULL),
                (SELECT COALESCE(sum(estimated_tokens), 0) FROM provider_batches
                   WHERE state IN ('uploading', 'submitted')),
                (SELECT COALESCE(sum(billed_tokens), 0) FROM provider_batches)",
    )
    .fetch_one(&db.pool)
    .await?;
    let count = |v: Vec<Count>| v.into_iter().map(|c| (c.key, u64::try_from(c.n).unwrap_or(0))).collect();
    Ok(LaneStats {
        ready_by_lane: count(lanes),
        in_batches: u64::try_from(in_batches).unwrap_or(0),
        batches_by_state: count(batches),
        enqueued_tokens: u64::try_from(enqueued).unwrap_or(0),
        billed_tokens: u64::try_from(billed).unwrap_or(0),
    })
}
