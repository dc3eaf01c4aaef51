//! Retention and the live stats on SQLite (see `postgres/retention.rs`). One process uses the
//! file, so it needs no leases: it exports the queue gauges itself.

use super::SqliteQueue;
use crate::queue::stats::{fold_stats, StatRow};
use crate::queue::{Progress, PruneReport, PruneRequest, QueueError, QueueStats};

/// Finished jobs, oldest change first, through `jobs_finished_idx`.
const PRUNE_FINISHED: &str = "DELETE FROM jobs WHERE id IN (
        SELECT id FROM jobs WHERE state IN ('done', 'superseded', 'cancelled') AND updated_at < ?1
        ORDER BY updated_at LIMIT ?2)";

/// Dead-lettered jobs, through `jobs_dead_idx`.
const PRUNE_DEAD: &str = "DELETE FROM jobs WHERE id IN (
        SELECT id FROM jobs WHERE state = 'dead' AND finished_at < ?1 ORDER BY finished_at LIMIT ?2)";

/// Deletes in batches, each its own transaction, so the write lock is held only that long
/// (enqueues and claims get it between batches); see `Queue::prune`.
pub(super) async fn prune(
    db: &SqliteQueue,
    req: &PruneRequest,
    progress: &Progress,
) -> Result<PruneReport, QueueError> {
    let cutoff = db.now_ms().saturating_sub(i64::try_from(req.older_than.as_millis()).unwrap_or(i64::MAX));
    let batch = i64::from(req.batch_size.max(1));
    let mut report = PruneReport::default();
    let kinds: &[(bool, &str)] =
        if req.dead { &[(false, PRUNE_FINISHED), (true, PRUNE_DEAD)] } else { &[(false, PRUNE_FINISHED)] };
    for (dead, sql) in kinds {
        loop {
            let n = sqlx::query(sql).bind(cutoff).bind(batch).execute(&db.pool).await?.rows_affected();
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
pub(super) async fn live_stats(db: &SqliteQueue) -> Result<QueueStats, QueueError> {
    let rows: Vec<StatRow> = sqlx::query_as(
        "SELECT state, run_at <= ?1 AS due, priority, count(*) AS n, (?1 - min(run_at)) / 1000.0 AS age
         FROM jobs WHERE state IN ('ready', 'running', 'dead') GROUP BY 1, 2, 3",
    )
    .bind(db.now_ms())
    .fetch_all(&db.pool)
    .await?;
    Ok(fold_stats(rows))
}
