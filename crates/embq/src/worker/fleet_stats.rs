//! The fleet-wide queue gauges, counted by one worker at a time: each worker tries to take or
//! renew the `fleet-stats` lease every interval; the holder runs the stats query and exports,
//! the others withdraw their samples. A holder that stops releases the lease, one that crashes
//! lets it expire, and the next worker to try takes over.

use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::Ctx;
use crate::config::Config;
use crate::queue::FLEET_STATS_LEASE;

/// How often the gauges are refreshed: every heartbeat, at most every 10 s.
pub(super) fn interval(cfg: &Config) -> Duration {
    cfg.heartbeat_interval.min(Duration::from_secs(10))
}

/// How long the lease lasts unrenewed: three refreshes, so one slow round keeps it.
fn lease_ttl(cfg: &Config) -> Duration {
    interval(cfg) * 3
}

/// One round: renew or take the lease, then count and export, or withdraw.
pub(super) async fn refresh(ctx: &Ctx) {
    let fleet = &ctx.metrics.fleet;
    let was_exporting = fleet.exporting();
    // Measured from before the lease is asked for: it ends no later than the database's.
    let valid_until = Instant::now() + lease_ttl(&ctx.cfg);
    match ctx.queue.hold_lease(FLEET_STATS_LEASE, &ctx.cfg.worker_id, lease_ttl(&ctx.cfg)).await {
        Ok(true) => {}
        Ok(false) => {
            if was_exporting {
                info!("another worker holds the fleet-stats lease: no longer exporting the queue gauges");
            }
            fleet.withdraw();
            return;
        }
        Err(e) => {
            fleet.withdraw();
            ctx.metrics.error(e.kind());
            debug!(error = %e, "could not renew the fleet-stats lease");
            return;
        }
    }
    match ctx.queue.live_stats().await {
        Ok(s) => {
            fleet.publish(&s, valid_until);
            if !was_exporting {
                info!("holding the fleet-stats lease: this worker exports the queue gauges");
            }
        }
        Err(e) => {
            // Stale counts would read as current: export none until the next round.
            fleet.withdraw();
            ctx.metrics.error(e.kind());
            debug!(error = %e, "queue stats failed");
        }
    }
}

/// Gives the lease up on the way out, so another worker exports from its next round.
pub(super) async fn release(ctx: &Ctx) {
    ctx.metrics.fleet.withdraw();
    if let Err(e) = ctx.queue.release_lease(FLEET_STATS_LEASE, &ctx.cfg.worker_id).await {
        debug!(error = %e, "could not release the fleet-stats lease; it expires on its own");
    }
}
