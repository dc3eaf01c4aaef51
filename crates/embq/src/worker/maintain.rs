//! The worker's background tasks: heartbeats, the lease sweep, the fleet gauges (`fleet_stats.rs`)
//! and the memory guard; the provider's pause; LISTEN notifications.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::fleet_stats;
use super::rescue::RescueGate;
use super::{worker_info, Ctx};
use crate::memory;
use crate::queue::WorkerState;

/// Heartbeats, lease rescue, queue gauges and the memory guard, until stopped.
pub(super) async fn maintain(ctx: Arc<Ctx>, stop: CancellationToken, mut guard: memory::Guard, mut gate: RescueGate) {
    let mut heartbeat = tokio::time::interval(ctx.cfg.heartbeat_interval);
    let mut rescue = tokio::time::interval(ctx.cfg.rescue_interval());
    let mut stats = tokio::time::interval(fleet_stats::interval(&ctx.cfg));
    let mut second = tokio::time::interval(Duration::from_secs(1));
    // Warned once that the limit is below what the idle process needs.
    let mut told_too_small = false;
    for i in [&mut heartbeat, &mut rescue, &mut stats, &mut second] {
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                fleet_stats::release(&ctx).await;
                return;
            }
            _ = heartbeat.tick() => {
                let state = if ctx.health.draining() { WorkerState::Draining } else { WorkerState::Running };
                let leases = ctx.live.tokens();
                match ctx.queue.heartbeat(&worker_info(&ctx, state), &leases, ctx.cfg.lease_duration()).await {
                    Ok(_) => {
                        ctx.health.set_db_ok(true);
                        if gate.database_ok(Instant::now()) {
                            info!(hold = ?ctx.cfg.lease_duration(),
                                  "database reachable again; expired leases are swept once their owners had a heartbeat to renew them");
                        }
                    }
                    Err(e) => {
                        gate.database_lost();
                        ctx.health.set_db_ok(false);
                        ctx.metrics.error(e.kind());
                        warn!(error = %e, "heartbeat failed");
                    }
                }
            }
            _ = rescue.tick(), if gate.may_sweep(Instant::now()) => match ctx.queue.rescue_expired(ctx.cfg.retry.max_attempts.get()).await {
                Ok(r) if r.requeued + r.dead > 0 => {
                    ctx.metrics.lease_reclaims.inc_by(r.requeued + r.dead);
                    info!(requeued = r.requeued, dead = r.dead, "reclaimed jobs whose worker stopped heartbeating");
                }
                Ok(_) => {}
                Err(e) => {
                    ctx.metrics.error(e.kind());
                    debug!(error = %e, "lease sweep failed");
                }
            },
            _ = stats.tick() => fleet_stats::refresh(&ctx).await,
            _ = second.tick() => {
                ctx.metrics.processing_rate.set(ctx.rate.per_second(ctx.health.uptime()));
                check_memory(&ctx, &mut guard, &mut told_too_small);
            }
        }
    }
}

/// Feeds the memory guard. Over the limit with nothing in flight, what is over is memory the
/// allocator kept or the process itself: free pages go back and the reading is judged again,
/// so a worker that finished a large batch claims again instead of waiting forever.
fn check_memory(ctx: &Ctx, guard: &mut memory::Guard, told_too_small: &mut bool) {
    let Some(rss) = memory::rss_bytes() else { return };
    let mut over = guard.update(rss);
    if over && ctx.health.inflight() == 0 {
        memory::return_free_pages();
        let rss = memory::rss_bytes().unwrap_or(rss);
        over = guard.judge_idle(rss);
        if over && !*told_too_small {
            *told_too_small = true;
            warn!(
                rss_mib = rss >> 20,
                limit_mib = ctx.cfg.memory_limit_bytes >> 20,
                "over 90% of MEMORY_LIMIT_MB with no job in flight: the limit is below what this worker needs \
                   when idle (a local model's weights count); claiming nothing until it is raised"
            );
        }
    }
    ctx.health.set_memory_over(over);
}

/// Shows the provider's pause (this worker's, or any worker's on a fleet budget) in `/ready`
/// and `embedding_provider_paused_seconds`, once a second; a task of its own so a slow
/// budget store never delays a heartbeat.
pub(super) async fn watch_pause(ctx: Arc<Ctx>, stop: CancellationToken) {
    let Some(limiter) = ctx.limiter.clone() else { return };
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let left = limiter.paused_for().await;
        ctx.health.set_provider_paused(left);
        ctx.metrics.provider_paused_seconds.set(left.map_or(0.0, |d| d.as_secs_f64()));
    }
}

/// Forwards LISTEN notifications to the claim loop, reconnecting when the listener breaks.
pub(super) async fn listen(ctx: Arc<Ctx>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let listener = tokio::select! {
            l = ctx.queue.listener() => l,
            _ = stop.cancelled() => return,
        };
        let Some(mut listener) = listener else {
            // No LISTEN (SQLite, or a transaction pooler): polling alone, retried rarely.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
                _ = stop.cancelled() => return,
            }
        };
        loop {
            tokio::select! {
                r = listener.recv() => match r {
                    Ok(()) => wake.notify_one(),
                    Err(e) => {
                        debug!(error = %e, "LISTEN connection lost; polling until it is back");
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
