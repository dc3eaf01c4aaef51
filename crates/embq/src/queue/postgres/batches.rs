//! Provider batches in PostgreSQL: gathering `batch`-lane jobs into a recorded batch (one
//! transaction), leasing open batches to one worker at a time, recording each step, and the
//! counts behind `embq queue stats`.

use std::time::Duration;

use super::claim::GATHER_SQL;
use super::PgQueue;
use crate::queue::batch_pack::{Packed, Packer};
use crate::queue::batches::{lease_of, BatchUpdate, GatherLimits, Gathered, LaneStats, ProviderBatch, Sizer};
use crate::queue::rows::ClaimedRow;
use crate::queue::{ClaimedJob, QueueError};

/// The columns of [`ProviderBatch`].
const BATCH_COLUMNS: &str = "id, submission_id, state, model, requests, estimated_tokens, input_file_id, batch_id,
    provider_status, output_file_id, error_file_id, last_error";

/// Takes ready `batch`-lane jobs up to `limits` and records them as one batch; see
/// `Queue::gather_batch`.
pub(super) async fn gather(
    pg: &PgQueue,
    submission_id: &str,
    model: &str,
    limits: GatherLimits<'_>,
    size: &Sizer<'_>,
) -> Result<Gathered, QueueError> {
    let (owner, hold) = (limits.owner, limits.lease);
    let lease = lease_of(submission_id);
    let mut tx = pg.begin_without_jit().await?;
    // One gathering per model at a time: the enqueued tokens read here stay true until commit.
    pg.q("SELECT pg_advisory_xact_lock(hashtext('embq.batch_gather:' || $1))")
        .bind(model.to_string())
        .execute(&mut *tx)
        .await?;
    let held: i64 = pg
        .q_scalar(
            "SELECT COALESCE(sum(estimated_tokens), 0)::bigint FROM embq.provider_batches
             WHERE model = $1 AND state IN ('uploading', 'submitted')",
        )
        .bind(model.to_string())
        .fetch_one(&mut *tx)
        .await?;
    let held = u64::try_from(held).unwrap_or(0);
    let mut pack = Packer::new(limits, held, size);
    while let Some(want) = pack.wants() {
        let rows: Vec<ClaimedRow> = pg
            .q_as(GATHER_SQL.as_str())
            .bind(pg.now())
            .bind(want as i64)
            .bind(lease.owner.clone())
            .bind(lease.token.clone())
            // No lease length: the lease never expires, so the sweep leaves these jobs alone.
            .bind(None::<f64>)
            .bind(model.to_string())
            .fetch_all(&mut *tx)
            .await?;
        let got = rows.len();
        let mut round: Vec<ClaimedJob> = rows.into_iter().map(ClaimedJob::from).collect();
        round.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.id));
        pack.take(round);
        if got < want {
            break;
        }
    }
    let Packed { mut jobs, back, unchanged, tokens } = pack.finish();
    if !back.is_empty() {
        // Over the limits: these go back as they were, in the same transaction (no one saw them taken).
        pg.q("UPDATE embq.jobs SET state = 'ready', attempts = attempts - 1, lease_owner = NULL,
                 lease_token = NULL, lease_expires_at = NULL
              WHERE id = ANY($1) AND state = 'running' AND lease_token = $2")
            .bind(back)
            .bind(lease.token.clone())
            .execute(&mut *tx)
            .await?;
    }
    if jobs.is_empty() {
        tx.commit().await?;
        return Ok(Gathered { batch: None, jobs, unchanged });
    }
    let sql = format!(
        "INSERT INTO embq.provider_batches
             (submission_id, model, requests, estimated_tokens, next_check_at, created_at, updated_at,
              lease_owner, lease_expires_at)
         VALUES ($1, $2, $3, $4, COALESCE($5::timestamptz, now()), COALESCE($5::timestamptz, now()),
                 COALESCE($5::timestamptz, now()), $6, COALESCE($5::timestamptz, now()) + make_interval(secs => $7))
         RETURNING {BATCH_COLUMNS}"
    );
    let batch: ProviderBatch = pg
        .q_as(&sql)
        .bind(submission_id.to_string())
        .bind(model.to_string())
        .bind(jobs.len() as i32)
        .bind(tokens as i64)
        .bind(pg.now())
        .bind(owner.to_string())
        .bind(hold.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    pg.q("UPDATE embq.jobs SET provider_batch = $1 WHERE id = ANY($2)")
        .bind(batch.id)
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    jobs.sort_by_key(|j| j.id);
    Ok(Gathered { batch: Some(batch), jobs, unchanged })
}

/// Moves the backlog to the batch lane once more than `backlog` ready online jobs sit below
/// `below`; see `Queue::move_backlog`.
pub(super) async fn move_backlog(pg: &PgQueue, backlog: u64, below: i32) -> Result<u64, QueueError> {
    let mut tx = pg.begin_without_jit().await?;
    // Counting stops one past the threshold: a huge backlog costs no full count.
    let over: bool = pg
        .q_scalar(
            "SELECT count(*) > $2 FROM (SELECT 1 FROM embq.jobs
                WHERE state = 'ready' AND lane = 'online' AND priority < $1 LIMIT $2 + 1) b",
        )
        .bind(below)
        .bind(i64::try_from(backlog).unwrap_or(i64::MAX - 1))
        .fetch_one(&mut *tx)
        .await?;
    let moved = if over {
        pg.q("UPDATE embq.jobs SET lane = 'batch' WHERE state = 'ready' AND lane = 'online' AND priority < $1")
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

/// Leases the open batch due soonest to `owner`; see `Queue::lease_batch`.
pub(super) async fn lease(pg: &PgQueue, owner: &str, duration: Duration) -> Result<Option<ProviderBatch>, QueueError> {
    let sql = format!(
        "UPDATE embq.provider_batches b
         SET lease_owner = $2, lease_expires_at = COALESCE($1::timestamptz, now()) + make_interval(secs => $3)
         WHERE b.id = (SELECT id FROM embq.provider_batches
                       WHERE state IN ('uploading', 'submitted', 'collecting')
                         AND next_check_at <= COALESCE($1::timestamptz, now())
                         AND (lease_expires_at IS NULL OR lease_expires_at < COALESCE($1::timestamptz, now()))
                       ORDER BY next_check_at, id LIMIT 1
                       FOR UPDATE SKIP LOCKED)
         RETURNING {BATCH_COLUMNS}"
    );
    let mut tx = pg.begin().await?;
    let b = pg
        .q_as(&sql)
        .bind(pg.now())
        .bind(owner.to_string())
        .bind(duration.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(b)
}

/// Records a step of a batch `owner` holds; false when the lease was lost. See
/// `Queue::update_batch`.
pub(super) async fn update(
    pg: &PgQueue,
    id: i64,
    owner: &str,
    lease: Duration,
    u: &BatchUpdate,
) -> Result<bool, QueueError> {
    let mut tx = pg.begin().await?;
    let r = pg
        .q("UPDATE embq.provider_batches SET
                state = COALESCE($4, state),
                input_file_id = COALESCE($5, input_file_id),
                batch_id = COALESCE($6, batch_id),
                provider_status = COALESCE($7, provider_status),
                output_file_id = COALESCE($8, output_file_id),
                error_file_id = COALESCE($9, error_file_id),
                completed = COALESCE($10, completed),
                failed = COALESCE($11, failed),
                billed_tokens = COALESCE($12, billed_tokens),
                last_error = CASE WHEN $13::text IS NULL THEN last_error ELSE NULLIF($13, '') END,
                next_check_at = COALESCE($1::timestamptz, now()) + make_interval(secs => $14),
                submitted_at = CASE WHEN $4 = 'submitted' THEN COALESCE($1::timestamptz, now())
                                    ELSE submitted_at END,
                finished_at = CASE WHEN $4 IN ('collected', 'failed', 'expired', 'cancelled')
                                   THEN COALESCE($1::timestamptz, now()) ELSE finished_at END,
                lease_owner = CASE WHEN $15 THEN NULL ELSE lease_owner END,
                lease_expires_at = CASE WHEN $15 THEN NULL
                                        ELSE COALESCE($1::timestamptz, now()) + make_interval(secs => $3) END,
                updated_at = COALESCE($1::timestamptz, now())
            WHERE id = $2 AND lease_owner = $16")
        .bind(pg.now())
        .bind(id)
        .bind(lease.as_secs_f64())
        .bind(u.state)
        .bind(u.input_file_id.clone())
        .bind(u.batch_id.clone())
        .bind(u.provider_status.clone())
        .bind(u.output_file_id.clone())
        .bind(u.error_file_id.clone())
        .bind(u.completed)
        .bind(u.failed)
        .bind(u.billed_tokens)
        .bind(u.last_error.clone())
        .bind(u.check_in.as_secs_f64())
        .bind(u.release)
        .bind(owner.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

/// The jobs a batch still holds (running under its lease); see `Queue::batch_jobs`.
pub(super) async fn jobs(pg: &PgQueue, b: &ProviderBatch) -> Result<Vec<ClaimedJob>, QueueError> {
    let mut tx = pg.begin().await?;
    let rows: Vec<ClaimedRow> = pg
        .q_as(
            "SELECT id, source_type, source_id, content_type, text, attempts, priority, false AS unchanged
             FROM embq.jobs WHERE provider_batch = $1 AND state = 'running' AND lease_token = $2 ORDER BY id",
        )
        .bind(b.id)
        .bind(b.lease().token)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(ClaimedJob::from).collect())
}

/// Estimated tokens held by batches of `model` not yet ended at the provider.
pub(super) async fn enqueued_tokens(pg: &PgQueue, model: &str) -> Result<u64, QueueError> {
    let mut tx = pg.begin().await?;
    let n: i64 = pg
        .q_scalar(
            "SELECT COALESCE(sum(estimated_tokens), 0)::bigint FROM embq.provider_batches
             WHERE model = $1 AND state IN ('uploading', 'submitted')",
        )
        .bind(model.to_string())
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[derive(sqlx::FromRow)]
struct Count {
    key: String,
    n: i64,
}

/// Jobs per lane and batches per state; see `Queue::lane_stats`.
pub(super) async fn stats(pg: &PgQueue) -> Result<LaneStats, QueueError> {
    let mut tx = pg.begin_without_jit().await?;
    let lanes: Vec<Count> = pg
        .q_as(
            "SELECT lane AS key, count(*) AS n FROM embq.jobs
             WHERE state = 'ready' AND run_at <= COALESCE($1::timestamptz, now()) GROUP BY 1 ORDER BY 1",
        )
        .bind(pg.now())
        .fetch_all(&mut *tx)
        .await?;
    let batches: Vec<Count> = pg
        .q_as("SELECT state AS key, count(*) AS n FROM embq.provider_batches GROUP BY 1 ORDER BY 1")
        .fetch_all(&mut *tx)
        .await?;
    let (in_batches, enqueued, billed): (i64, i64, i64) = pg
        .q_as(
            "SELECT (SELECT count(*) FROM embq.jobs WHERE state = 'running' AND provider_batch IS NOT NULL
                       AND lease_expires_at IS NULL),
                    (SELECT COALESCE(sum(estimated_tokens), 0)::bigint FROM embq.provider_batches
                       WHERE state IN ('uploading', 'submitted')),
                    (SELECT COALESCE(sum(billed_tokens), 0)::bigint FROM embq.provider_batches)",
        )
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let count = |v: Vec<Count>| v.into_iter().map(|c| (c.key, u64::try_from(c.n).unwrap_or(0))).collect();
    Ok(LaneStats {
        ready_by_lane: count(lanes),
        in_batches: u64::try_from(in_batches).unwrap_or(0),
        batches_by_state: count(batches),
        enqueued_tokens: u64::try_from(enqueued).unwrap_or(0),
        billed_tokens: u64::try_from(billed).unwrap_or(0),
    })
}
