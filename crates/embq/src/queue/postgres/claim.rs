//! Claiming jobs: the claim statement, benchmarked (`scripts/bench/claim-finish.sql` runs it as
//! the pgbench ceiling; `bench_ceiling.rs` keeps the two in step), and its call.

use std::sync::LazyLock;
use std::time::Duration;

use super::PgQueue;
use crate::queue::rows::ClaimedRow;
use crate::queue::{ClaimedJob, Lease, QueueError};

/// Claims up to $2 ready jobs under lease ($3 owner, $4 token, $5 seconds) and completes at once
/// those whose text already has a vector from model $6. `scripts/bench/claim-finish.sql` runs
/// the same statement as the pgbench ceiling; a test keeps the two in step.
pub(super) const CLAIM_SQL: &str = "WITH picked AS (
        SELECT id FROM embq.jobs
        WHERE state = 'ready' AND run_at <= COALESCE($1::timestamptz, now())
        ORDER BY priority DESC, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ), checked AS MATERIALIZED (
        -- MATERIALIZED: inlined, the flag's two probes ran again for each of its seven uses below.
        SELECT p.id, EXISTS (SELECT 1 FROM embq.embeddings e
                WHERE e.source_type = j.source_type AND e.source_id = j.source_id
                  AND e.content_type = j.content_type AND e.model = $6
                  AND e.text_sha256 = j.text_sha256)
            -- An older job for the key still running stores its text's vector later: this one
            -- is then embedded, so the newest text's vector wins (its job id is higher).
            AND NOT EXISTS (SELECT 1 FROM embq.jobs r
                WHERE r.source_type = j.source_type AND r.source_id = j.source_id
                  AND r.content_type = j.content_type AND r.state = 'running' AND r.id < j.id) AS unchanged
        FROM picked p JOIN embq.jobs j ON j.id = p.id
    )
    -- Unchanged jobs are done right here: one row version and no second round trip.
    UPDATE embq.jobs j
    SET state = CASE WHEN c.unchanged THEN 'done' ELSE 'running' END,
        attempts = j.attempts + 1,
        lease_owner = CASE WHEN c.unchanged THEN NULL ELSE $3 END,
        lease_token = CASE WHEN c.unchanged THEN NULL ELSE $4 END,
        lease_expires_at = CASE WHEN c.unchanged THEN NULL
            ELSE COALESCE($1::timestamptz, now()) + make_interval(secs => $5) END,
        finished_at = CASE WHEN c.unchanged THEN COALESCE($1::timestamptz, now()) ELSE j.finished_at END,
        last_error = CASE WHEN c.unchanged THEN NULL ELSE j.last_error END,
        updated_at = COALESCE($1::timestamptz, now())
    FROM checked c
    WHERE j.id = c.id
    RETURNING j.id, j.source_type, j.source_id, j.content_type, j.text, j.attempts, j.priority,
        c.unchanged";

/// Where the claim picks its jobs; the lane variants below replace this line.
const PICK_ANY: &str = "WHERE state = 'ready' AND run_at";

/// The claim of an online worker while the batch lane is on: `batch`-lane jobs are left to it.
static CLAIM_ONLINE_SQL: LazyLock<String> =
    LazyLock::new(|| CLAIM_SQL.replacen(PICK_ANY, "WHERE state = 'ready' AND lane = 'online' AND run_at", 1));

/// The batch lane's gathering: the same statement (so unchanged texts are completed, not sent)
/// over `batch`-lane jobs, bound with no lease length so the lease never expires.
pub(super) static GATHER_SQL: LazyLock<String> =
    LazyLock::new(|| CLAIM_SQL.replacen(PICK_ANY, "WHERE state = 'ready' AND lane = 'batch' AND run_at", 1));

/// Leases up to `limit` ready jobs; see `Queue::claim`.
pub(super) async fn claim(
    pg: &PgQueue,
    limit: usize,
    lease: &Lease,
    duration: Duration,
    model: &str,
) -> Result<Vec<ClaimedJob>, QueueError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // An explicit transaction even for one statement: sqlx describes an unnamed statement in
    // one round trip and binds it in the next, and a transaction pooler may route those two
    // to different server connections unless a transaction pins them together.
    let mut tx = pg.begin_without_jit().await?;
    let sql = if pg.online_only { CLAIM_ONLINE_SQL.as_str() } else { CLAIM_SQL };
    let rows: Vec<ClaimedRow> = pg
        .q_as(sql)
        .bind(pg.now())
        .bind(limit as i64)
        .bind(lease.owner.clone())
        .bind(lease.token.clone())
        .bind(duration.as_secs_f64())
        .bind(model.to_string())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut jobs: Vec<ClaimedJob> = rows.into_iter().map(ClaimedJob::from).collect();
    jobs.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.id));
    Ok(jobs)
}
