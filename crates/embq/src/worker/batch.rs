//! One batch from claimed jobs to recorded outcomes: embed, store, count.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info_span, warn, Instrument};

use super::requests::embed_jobs;
use super::store_results::store_results;
use super::Ctx;
use crate::queue::{ClaimedJob, FinishReport, Lease, Outcome};

/// Embeds one batch and records the outcome of every job in it.
pub(super) async fn process_batch(ctx: &Ctx, lease: &Lease, jobs: Vec<ClaimedJob>) {
    let started = Instant::now();
    let provider = ctx.provider.kind().as_str();
    let span =
        info_span!("batch", provider, model = ctx.provider.model(), jobs = jobs.len(), tokens = tracing::field::Empty);
    async {
        let mut outcomes: Vec<(i64, Outcome)> = Vec::with_capacity(jobs.len());
        let todo: Vec<&ClaimedJob> = jobs.iter().collect();
        // Token-aware requests under the rate limit.
        embed_jobs(ctx, provider, &todo, &mut outcomes).await;
        hold_drain_for_releases(ctx, &outcomes);
        let report = store_results(ctx, lease, &jobs, outcomes).await;
        record(ctx, &report, jobs.len(), started.elapsed());
    }
    .instrument(span)
    .await
}

/// Pushes the drain's horizon past the latest unspent release in `outcomes`.
fn hold_drain_for_releases(ctx: &Ctx, outcomes: &[(i64, Outcome)]) {
    let latest = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Released { after } => Some(*after),
            _ => None,
        })
        .max();
    if let Some(after) = latest {
        let due = Instant::now() + after;
        let mut until = ctx.released_until.lock().unwrap_or_else(|p| p.into_inner());
        *until = Some(until.map_or(due, |u| u.max(due)));
    }
}

/// Counts jobs the claim found unchanged (and completed) as processed.
pub(super) fn record_unchanged(ctx: &Ctx, n: u64) {
    count_outcomes(ctx, &FinishReport { unchanged: n, ..FinishReport::default() });
}

/// Adds a report's outcomes to the metrics, the run's counters and the processing rate.
pub(super) fn count_outcomes(ctx: &Ctx, r: &FinishReport) {
    let m = &ctx.metrics;
    let c = &ctx.counters;
    let completed = r.stored + r.unchanged;
    m.jobs_processed.inc_by(completed);
    m.jobs_unchanged.inc_by(r.unchanged);
    m.jobs_failed.inc_by(r.retried + r.dead);
    m.jobs_retried.inc_by(r.retried);
    m.jobs_dead.inc_by(r.dead);
    m.jobs_released.inc_by(r.released);
    m.jobs_cancelled.inc_by(r.cancelled);
    m.leases_lost.inc_by(r.lost);
    c.processed.fetch_add(completed, Ordering::Relaxed);
    c.unchanged.fetch_add(r.unchanged, Ordering::Relaxed);
    c.failed.fetch_add(r.retried + r.dead, Ordering::Relaxed);
    c.dead.fetch_add(r.dead, Ordering::Relaxed);
    ctx.rate.record(completed);
}

fn record(ctx: &Ctx, r: &FinishReport, batch: usize, took: Duration) {
    count_outcomes(ctx, r);
    ctx.metrics.processing_seconds.observe(took.as_secs_f64());
    ctx.metrics.batch_size_jobs.observe(batch as f64);
    if r.lost > 0 {
        warn!(lost = r.lost, "results discarded: the lease on these jobs had been lost");
    }
    let outcome = if r.retried + r.dead + r.lost > 0 {
        "failed"
    } else if r.released > 0 {
        "released"
    } else {
        "ok"
    };
    // One line per batch, inside the batch span (provider, model, jobs, tokens); a tracing
    // level must be a constant, hence the macro and its two expansions.
    macro_rules! batch_line {
        ($level:expr) => {
            tracing::event!(
                $level,
                outcome,
                latency_ms = took.as_millis() as u64,
                stored = r.stored,
                unchanged = r.unchanged,
                retried = r.retried,
                dead = r.dead,
                released = r.released,
                cancelled = r.cancelled,
                "batch finished"
            )
        };
    }
    if ctx.quiet_batches {
        batch_line!(tracing::Level::DEBUG);
    } else {
        batch_line!(tracing::Level::INFO);
    }
}
