//! Retention and the stats that do not grow with it: `embq prune` in short batches, the live
//! stats query, and the named leases (one worker exports the fleet gauges).

use std::time::Duration;

use super::PgQueue;
use crate::queue::stats::{fold_stats, StatRow};
use crate::queue::{Progress, PruneReport, PruneRequest, QueueError, QueueStats};

/// Finished jobs, oldest change first. The state list is spelled as in `jobs_finished_idx`'s
/// predicate so the planner can use it; `SKIP LOCKED` passes over rows another transaction holds.
const PRUNE_FINISHED: &str = "DELETE FROM embq.jobs WHERE id IN (
        SELECT id FROM embq.jobs
        WHERE state IN ('done', 'superseded', 'cancelled')
          AND updated_at < COALESCE($1::timestamptz, now()) - make_interval(secs => $2)
        ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED)";

/// Dead-lettered jobs, through `jobs_dead_idx`.
const PRUNE_DEAD: &str = "DELETE FROM embq.jobs WHERE id IN (
        SELECT id FROM embq.jobs
        WHERE state = 'dead'
          AND finished_at < COALESCE($1::timestamptz, now()) - make_interval(secs => $2)
        ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED)";

/// Deletes in batches, each statement its own transaction; see `Queue::prune`.
pub(super) async fn prune(pg: &PgQueue, req: &PruneRequest, progress: &Progress) -> Result<PruneReport, QueueError> {
    let mut report = PruneReport::default();
    let batch = i64::from(req.batch_size.max(1));
    let kinds: &[(bool, &str)] =
        if req.dead { &[(false, PRUNE_FINISHED), (true, PRUNE_DEAD)] } else { &[(false, PRUNE_FINISHED)] };
    for (dead, sql) in kinds {
        loop {
            let n = pg
                .q(sql)
                .bind(pg.now())
                .bind(req.older_than.as_secs_f64())
                .bind(batch)
                .execute(&pg.pool)
                .await?
                .rows_affected();
            report.add(*dead, n);
            progress(report.finished + report.dead);
            if n < batch as u64 {
                break;
            }
        }
    }
    Ok(report)
}

/// Counts the live states through `jobs_live_idx`; see `Queue::live_stats`.
pub(super) async fn live_stats(pg: &PgQueue) -> Result<QueueStats, QueueError> {
    let mut tx = pg.begin_without_jit().await?;
    let rows: Vec<StatRow> = pg
        .q_as(
            "SELECT state, (run_at <= COALESCE($1::timestamptz, now())) AS due, priority, count(*) AS n,
                EXTRACT(EPOCH FROM (COALESCE($1::timestamptz, now()) - min(run_at)))::float8 AS age
            FROM embq.jobs WHERE state IN ('ready', 'running', 'dead') GROUP BY 1, 2, 3",
        )
        .bind(pg.now())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(fold_stats(rows))
}

/// Takes or renews a named lease in one statement; see `Queue::hold_lease`.
pub(super) async fn hold_lease(pg: &PgQueue, name: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
    let held: Option<String> = pg
        .q_scalar(
            "INSERT INTO embq.leases AS l (name, holder, expires_at)
            VALUES ($1, $2, COALESCE($3::timestamptz, now()) + make_interval(secs => $4))
            ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                WHERE l.holder = EXCLUDED.holder OR l.expires_at <= COALESCE($3::timestamptz, now())
            RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(pg.now())
        .bind(ttl.as_secs_f64())
        .fetch_optional(&pg.pool)
        .await?;
    Ok(held.is_some())
}

/// Gives a lease up; see `Queue::release_lease`.
pub(super) async fn release_lease(pg: &PgQueue, name: &str, holder: &str) -> Result<(), QueueError> {
    pg.q("DELETE FROM embq.leases WHERE name = $1 AND holder = $2").bind(name).bind(holder).execute(&pg.pool).await?;
    Ok(())
}
