//! The claim loop: fetch as many jobs as there are free batch slots, start each batch as its
//! own task, and in drain mode stop once the whole queue is idle.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::batch::{count_outcomes, process_batch, record_unchanged};
use super::inflight::BytesHeld;
use super::leases::LiveLease;
use super::store_results::store_results;
use super::Ctx;
use crate::queue::{ClaimedJob, Lease, Outcome};

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

/// How often an idle draining worker asks whether the rest of the fleet has finished.
const DRAIN_RECHECK: Duration = Duration::from_millis(50);

/// The most jobs one claim takes beyond its batches while claims come back mostly unchanged.
/// Those jobs complete inside the claim and need no slot, so a re-enqueued backlog drains in
/// fewer, larger round trips.
const UNCHANGED_CLAIM_MAX: usize = 2_000;

/// A claimed batch waiting for a free slot.
struct Held {
    lease: Lease,
    jobs: Vec<ClaimedJob>,
    /// Keeps the lease heartbeated until the batch is recorded (or given up).
    live: LiveLease,
    /// Its share of the in-flight byte budget, given back when the batch is recorded.
    bytes: BytesHeld,
}

/// Fetches work while there are free slots; returns when told to stop or, in drain mode, when idle.
/// Batches still held (claimed, not started) when it returns are released unspent.
pub(super) async fn claim_loop(ctx: &Arc<Ctx>, tracker: &TaskTracker, wake: &Notify, drain_when_idle: bool) {
    let slots = Arc::new(Semaphore::new(ctx.cfg.max_concurrent_jobs.get()));
    let mut held: VecDeque<Held> = VecDeque::new();
    claim_into(ctx, tracker, wake, drain_when_idle, &slots, &mut held).await;
    for h in held {
        let ctx2 = ctx.clone();
        tracker.spawn(async move {
            let n = h.jobs.len() as i64;
            let outcomes = h.jobs.iter().map(|j| (j.id, Outcome::Released { after: Duration::ZERO })).collect();
            let report = store_results(&ctx2, &h.lease, &h.jobs, outcomes).await;
            count_outcomes(&ctx2, &report);
            ctx2.health.add_inflight(-n);
            drop(h.live);
            drop(h.bytes);
        });
    }
}

/// Starts held batches on free slots.
fn start_held(ctx: &Arc<Ctx>, tracker: &TaskTracker, slots: &Arc<Semaphore>, held: &mut VecDeque<Held>) {
    while !held.is_empty() {
        let Ok(permit) = slots.clone().try_acquire_owned() else { return };
        let Some(Held { lease, jobs, live, bytes }) = held.pop_front() else { return };
        let ctx2 = ctx.clone();
        tracker.spawn(async move {
            let n = jobs.len() as i64;
            process_batch(&ctx2, &lease, jobs).await;
            drop(live);
            drop(bytes);
            ctx2.health.add_inflight(-n);
            drop(permit);
            ctx2.slot_freed.notify_one();
        });
    }
}

/// The claim loop proper; leaves in `held` what it claimed but could not start.
async fn claim_into(
    ctx: &Arc<Ctx>,
    tracker: &TaskTracker,
    wake: &Notify,
    drain_when_idle: bool,
    slots: &Arc<Semaphore>,
    held: &mut VecDeque<Held>,
) {
    let soft = ctx.health.shutdown.clone();
    let base_batch = ctx.cfg.batch_size.get().min(ctx.provider.max_inputs()).max(1);
    let mut batch = base_batch;
    let mut extra = 0usize;
    let mut db_backoff = Duration::from_millis(100);
    // Liveness needs a tick even while every slot is busy or the queue is empty.
    let tick = Duration::from_secs(1).min(ctx.cfg.poll_interval);
    loop {
        ctx.health.tick();
        if soft.is_cancelled() {
            return;
        }
        start_held(ctx, tracker, slots, held);
        // A batch per free slot; extra (mostly unchanged) jobs only while no changed ones wait.
        let extra_now = if held.is_empty() { extra } else { 0 };
        let want = slots.available_permits().saturating_sub(held.len()) * batch + extra_now;
        // Never more than the in-flight byte budget has room for, whatever the counts say.
        let want = want.min(ctx.inflight_bytes.room());
        if !ctx.health.can_claim() || want == 0 {
            // A draining worker that may not claim (memory, a parked provider) still ends
            // once the queue is idle, rather than waiting for a claim it will never make.
            if drain_when_idle && ctx.health.inflight() == 0 && held.is_empty() && drained(ctx).await {
                return;
            }
            tokio::select! {
                _ = ctx.slot_freed.notified() => {}
                _ = tokio::time::sleep(tick) => {}
                _ = soft.cancelled() => return,
            }
            continue;
        }
        let lease = Lease { owner: ctx.health.worker_id.clone(), token: uuid::Uuid::new_v4().to_string() };
        let claim = || ctx.queue.claim(want, &lease, ctx.cfg.lease_duration(), ctx.provider.model());
        // While claims come back mostly unchanged, two run at once: an unchanged backlog is
        // bound by one database backend working through each claim, not by this worker.
        let results = if extra_now > 0 {
            let (a, b) = tokio::join!(claim(), claim());
            vec![a, b]
        } else {
            vec![claim().await]
        };
        let want = want * results.len();
        let mut jobs = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok(mut claimed) => jobs.append(&mut claimed),
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            None => {
                ctx.health.set_db_ok(true);
                db_backoff = Duration::from_millis(100);
            }
            Some(e) => {
                ctx.health.set_db_ok(false);
                ctx.metrics.error(e.kind());
                warn!(error = %e, "claim failed");
                // Jobs the other claim did get are still run below.
                if jobs.is_empty() {
                    tokio::select! {
                        _ = tokio::time::sleep(db_backoff) => {}
                        _ = soft.cancelled() => return,
                    }
                    db_backoff = (db_backoff * 2).min(ctx.cfg.poll_interval.max(Duration::from_secs(1)));
                    continue;
                }
            }
        }
        let got = jobs.len();
        ctx.inflight_bytes.observe_texts(jobs.iter().map(|j| j.text.len()).sum(), got);
        // Unchanged jobs were completed by the claim itself: count them, embed the rest.
        let (unchanged, jobs): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| j.unchanged);
        debug!(want, got, unchanged = unchanged.len(), "claimed");
        if !unchanged.is_empty() {
            record_unchanged(ctx, unchanged.len() as u64);
        }
        ctx.health.add_inflight(jobs.len() as i64);
        let mut jobs = jobs.into_iter();
        loop {
            let chunk: Vec<ClaimedJob> = jobs.by_ref().take(batch).collect();
            if chunk.is_empty() {
                break;
            }
            let bytes = ctx.inflight_bytes.hold(chunk.iter().map(|j| ctx.inflight_bytes.job_bytes(j.text.len())).sum());
            held.push_back(Held { lease: lease.clone(), jobs: chunk, live: ctx.live.hold(&lease.token), bytes });
        }
        start_held(ctx, tracker, slots, held);
        let backlog = got == want;
        extra = if backlog && unchanged.len() * 2 >= got { (extra.max(batch) * 2).min(UNCHANGED_CLAIM_MAX) } else { 0 };
        // ENABLE_BATCH_OPTIMIZATION grows batches toward the provider's cap while
        // claims come back full (a backlog), and returns to BATCH_SIZE when they do not.
        if ctx.cfg.enable_batch_optimization {
            batch = if backlog { (batch * 2).min(ctx.provider.max_inputs().max(1)) } else { base_batch };
        }
        if backlog {
            // A full claim means a backlog: fetch again at once instead of waiting for the poll.
            continue;
        }
        if drain_when_idle && got == 0 && ctx.health.inflight() == 0 && drained(ctx).await {
            return;
        }
        if drain_when_idle && got > 0 && ctx.health.inflight() == 0 {
            // A short claim with nothing left in flight (all unchanged): the queue may be empty
            // now, so a draining worker asks at once instead of sleeping first.
            continue;
        }
        let mut poll = jittered(ctx.cfg.poll_interval);
        if drain_when_idle && ctx.health.inflight() == 0 {
            // Jobs still running elsewhere may come back as retries; a draining worker with
            // nothing in flight re-checks soon instead of sleeping a whole poll interval.
            poll = poll.min(DRAIN_RECHECK);
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            // A freed slot starts a held batch; in drain mode it may mean the queue is empty now.
            _ = ctx.slot_freed.notified(), if drain_when_idle || got > 0 || !held.is_empty() => {}
            _ = soft.cancelled() => return,
        }
    }
}

/// Whether the fleet has nothing left to do, for a draining worker with nothing in flight.
/// Retries due soon and jobs released by a throttled provider still count as work.
async fn drained(ctx: &Ctx) -> bool {
    match ctx.queue.is_idle(drain_horizon(ctx)).await {
        Ok(true) => {
            info!("queue drained; exiting");
            true
        }
        Ok(false) => false,
        Err(e) => {
            warn!(error = %e, "idle check failed");
            false
        }
    }
}

/// How far ahead a draining worker counts ready jobs as work: retries due within one poll
/// interval, and every job this worker released unspent.
fn drain_horizon(ctx: &Ctx) -> Duration {
    let until = *ctx.released_until.lock().unwrap_or_else(|p| p.into_inner());
    let released = until.map_or(Duration::ZERO, |u| u.saturating_duration_since(Instant::now()));
    ctx.cfg.poll_interval + released
}
