//! Finishing a claimed batch: vectors stored and jobs done in one statement (built per layout in
//! `layout.rs`), then unchanged, dead, retried and released jobs, all under the batch's lease.

use std::time::Duration;

use sqlx::{FromRow, Postgres, Transaction};

use super::layout::CANCEL_MISSING_SQL;
use super::pgvector::VectorBatch;
use super::PgQueue;
use crate::queue::{clip_error, FinishReport, JobState, Lease, Outcome, OutcomeGroups, QueueError};

/// Applies a batch's outcomes; see `Queue::finish`.
pub(super) async fn finish(
    pg: &PgQueue,
    lease: &Lease,
    model: &str,
    outcomes: &[(i64, Outcome)],
) -> Result<FinishReport, QueueError> {
    let g = OutcomeGroups::split(outcomes);
    let mut report = FinishReport::default();
    let layout = if g.done.is_empty() { None } else { Some(pg.layout().await?) };
    let mut tx = pg.begin().await?;
    if let Some(layout) = &layout {
        let dims = g.done[0].1.len();
        if g.done.iter().any(|(_, v)| v.len() != dims) || dims == 0 {
            return Err(QueueError::Invalid("vectors of one batch must share a non-zero dimension".into()));
        }
        let ids: Vec<i64> = g.done.iter().map(|d| d.0).collect();
        let vectors = VectorBatch { vectors: &g.done, dims, encoding: layout.encoding };
        let mut q = pg
            .q_as::<FinishRow>(&layout.finish_sql)
            .bind(pg.now())
            .bind(ids)
            .bind(lease.token.clone())
            .bind(model.to_string())
            .bind(dims as i32)
            .bind(vectors);
        if !layout.destinations.is_empty() {
            let st: Vec<&str> = layout.destinations.iter().map(|d| d.source_type.as_str()).collect();
            let ct: Vec<&str> = layout.destinations.iter().map(|d| d.content_type.as_str()).collect();
            q = q.bind(st).bind(ct);
        }
        let row = q.fetch_one(&mut *tx).await?;
        report.stored = row.done as u64;
        if !row.missing.is_empty() {
            let cancelled: i64 =
                pg.q_scalar(CANCEL_MISSING_SQL).bind(pg.now()).bind(row.missing).fetch_one(&mut *tx).await?;
            report.cancelled = cancelled as u64;
            report.stored = report.stored.saturating_sub(report.cancelled);
        }
    }
    if !g.unchanged.is_empty() {
        let r = pg
            .q("UPDATE embq.jobs
                SET state = 'done', finished_at = COALESCE($1::timestamptz, now()),
                    updated_at = COALESCE($1::timestamptz, now()), last_error = NULL,
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                WHERE id = ANY($2) AND state = 'running' AND lease_token = $3")
            .bind(pg.now())
            .bind(g.unchanged.clone())
            .bind(lease.token.clone())
            .execute(&mut *tx)
            .await?;
        report.unchanged = r.rows_affected();
    }
    if !g.dead.is_empty() {
        let ids: Vec<i64> = g.dead.iter().map(|d| d.0).collect();
        let errors: Vec<String> = g.dead.iter().map(|d| clip_error(d.1)).collect();
        let r = pg
            .q("UPDATE embq.jobs j
                SET state = 'dead', finished_at = COALESCE($1::timestamptz, now()),
                    updated_at = COALESCE($1::timestamptz, now()), last_error = i.err,
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                FROM unnest($2::bigint[], $3::text[]) AS i(id, err)
                WHERE j.id = i.id AND j.state = 'running' AND j.lease_token = $4")
            .bind(pg.now())
            .bind(ids)
            .bind(errors)
            .bind(lease.token.clone())
            .execute(&mut *tx)
            .await?;
        report.dead = r.rows_affected();
    }
    let retry: Vec<_> = g.retry.iter().map(|(id, d, e)| (*id, *d, Some(*e))).collect();
    let (retried, sup1) = requeue(pg, &mut tx, lease, &retry, false).await?;
    let released: Vec<_> = g.released.iter().map(|(id, d)| (*id, *d, None)).collect();
    let (released, sup2) = requeue(pg, &mut tx, lease, &released, true).await?;
    report.retried = retried;
    report.released = released;
    report.superseded = sup1 + sup2;
    tx.commit().await?;
    let applied = report.stored
        + report.unchanged
        + report.dead
        + report.retried
        + report.released
        + report.superseded
        + report.cancelled;
    report.lost = (outcomes.len() as u64).saturating_sub(applied);
    Ok(report)
}

/// Moves running jobs back to ready, or to superseded when a newer pending job exists.
/// Shared by retry and release, which differ only in attempts and error.
async fn requeue(
    pg: &PgQueue,
    tx: &mut Transaction<'static, Postgres>,
    lease: &Lease,
    items: &[(i64, Duration, Option<&str>)],
    refund_attempt: bool,
) -> Result<(u64, u64), QueueError> {
    if items.is_empty() {
        return Ok((0, 0));
    }
    let ids: Vec<i64> = items.iter().map(|i| i.0).collect();
    let delays: Vec<f64> = items.iter().map(|i| i.1.as_secs_f64()).collect();
    let errors: Vec<Option<String>> = items.iter().map(|i| i.2.map(clip_error)).collect();
    let states: Vec<JobState> = pg
        .q_scalar(
            "UPDATE embq.jobs j
            SET state = CASE WHEN EXISTS (
                    SELECT 1 FROM embq.jobs p
                    WHERE p.source_type = j.source_type AND p.source_id = j.source_id
                      AND p.content_type = j.content_type AND p.state = 'ready')
                THEN 'superseded' ELSE 'ready' END,
                attempts = CASE WHEN $5 THEN j.attempts - 1 ELSE j.attempts END,
                run_at = COALESCE($1::timestamptz, now()) + make_interval(secs => i.delay),
                last_error = COALESCE(i.err, j.last_error),
                lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
                updated_at = COALESCE($1::timestamptz, now())
            FROM unnest($2::bigint[], $3::float8[], $4::text[]) AS i(id, delay, err)
            WHERE j.id = i.id AND j.state = 'running' AND j.lease_token = $6
            RETURNING j.state",
        )
        .bind(pg.now())
        .bind(ids)
        .bind(delays)
        .bind(errors)
        .bind(refund_attempt)
        .bind(lease.token.clone())
        .fetch_all(&mut **tx)
        .await?;
    let superseded = states.iter().filter(|s| **s == JobState::Superseded).count();
    Ok(((states.len() - superseded) as u64, superseded as u64))
}

/// What the finish statement reports.
#[derive(FromRow)]
struct FinishRow {
    /// Jobs marked done.
    done: i64,
    /// Jobs whose write-back row is gone; the column exists only with destinations.
    #[sqlx(default)]
    missing: Vec<i64>,
}
