//! The worker: claim -> batch -> embed -> store, with heartbeats, lease rescue and drain.
//!
//! One claim loop fetches as many jobs as it has free batch slots (more while they come
//! back unchanged, as those need no slot; any changed among them wait for a slot, and are
//! released unspent on shutdown). Each batch runs as its own task; a
//! maintenance task keeps leases alive, sweeps expired ones and refreshes gauges.
//! Shutdown has two stages: the soft token (`Health::shutdown`) stops claiming, the
//! hard token cancels in-flight provider calls, whose jobs are released unspent.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::health::Health;
use crate::limiter::{Limiter, LimiterSink};
use crate::memory;
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::queue::{Queue, QueueError, SchemaFit, WorkerInfo, WorkerState};

mod batch;
pub mod batch_lane;
mod claim;
mod counters;
mod fleet_stats;
mod inflight;
mod leases;
mod maintain;
mod requests;
mod rescue;
mod store_results;

pub use counters::{Counters, RunSummary};
pub use inflight::InflightBytes;

use claim::claim_loop;
use counters::RateWindow;
use leases::LiveLeases;
use maintain::{listen, maintain, watch_pause};
use rescue::RescueGate;

/// Errors that stop the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The schema is missing or from another version.
    #[error("{0}")]
    Schema(String),
}

/// Everything a batch task needs.
struct Ctx {
    cfg: Config,
    queue: Arc<dyn Queue>,
    provider: Arc<dyn Provider>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    counters: Arc<Counters>,
    rate: RateWindow,
    hard: CancellationToken,
    slot_freed: Notify,
    /// When the last job this worker released unspent (throttled) becomes due again: a
    /// draining worker is not idle before then, since those jobs were never attempted.
    released_until: Mutex<Option<Instant>>,
    /// Leases of the batches held or running; heartbeats extend only these.
    live: Arc<LiveLeases>,
    /// What the batches held or running hold in bytes, against a share of `MEMORY_LIMIT_MB`.
    inflight_bytes: Arc<InflightBytes>,
    /// The provider's budget; `None` for providers that spend none (hash, local).
    limiter: Option<Arc<Limiter>>,
    /// Set while the provider is parked (quota exhausted).
    parked: Arc<std::sync::atomic::AtomicBool>,
    /// Log each finished batch at debug instead of info (the demo shows a progress bar instead).
    quiet_batches: bool,
}

/// A configured worker, ready to run.
pub struct Worker {
    ctx: Arc<Ctx>,
    drain_when_idle: bool,
}

impl Worker {
    /// Assembles a worker from its parts.
    pub fn new(
        cfg: Config,
        queue: Arc<dyn Queue>,
        provider: Arc<dyn Provider>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Metered providers wait for their RPM/TPM budget
        let limiter = provider.metered().then(|| {
            Arc::new(Limiter::from_config(&cfg).unwrap_or_else(|e| {
                warn!(error = %e, "fleet rate budget unavailable: budgeting per worker");
                Limiter::local(cfg.max_requests_per_minute.get(), cfg.max_tokens_per_minute.get())
                    .with_max_pause(cfg.max_provider_pause)
            }))
        });
        metrics.init_provider(provider.kind().as_str());
        let inflight_bytes = Arc::new(InflightBytes::new(
            cfg.memory_limit_bytes,
            provider.dimensions(),
            provider.caps().max_tokens_per_input,
        ));
        let ctx = Ctx {
            cfg,
            queue,
            provider,
            health,
            metrics,
            counters: Arc::new(Counters::default()),
            rate: RateWindow::default(),
            hard: CancellationToken::new(),
            slot_freed: Notify::new(),
            released_until: Mutex::new(None),
            live: Arc::default(),
            inflight_bytes,
            limiter,
            parked: Arc::default(),
            quiet_batches: false,
        };
        Self { ctx: Arc::new(ctx), drain_when_idle: false }
    }

    /// Exit once no job is ready and none is running (`embq worker --drain`).
    pub fn drain_when_idle(mut self, yes: bool) -> Self {
        self.drain_when_idle = yes;
        self
    }

    /// Logs each finished batch at debug level instead of info (`embq demo` shows progress
    /// its own way; `embq worker` keeps one info line per batch).
    pub fn quiet_batches(mut self, yes: bool) -> Self {
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            ctx.quiet_batches = yes;
        }
        self
    }

    /// Uses this limiter instead of the configured one (tests share one between workers).
    /// Ignored for providers that spend no budget.
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Self {
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            if ctx.limiter.is_some() {
                ctx.limiter = Some(limiter);
            }
        }
        self
    }

    /// Live counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.ctx.counters.clone()
    }

    /// The in-flight byte budget and what is held against it (its peak included).
    pub fn inflight_bytes(&self) -> Arc<InflightBytes> {
        self.ctx.inflight_bytes.clone()
    }

    /// The token that cancels in-flight work at once (a second signal).
    pub fn hard_cancel(&self) -> CancellationToken {
        self.ctx.hard.clone()
    }

    /// Runs until drained (soft shutdown, or idle in drain mode).
    pub async fn run(self) -> Result<RunSummary, WorkerError> {
        let ctx = self.ctx;
        let soft = ctx.health.shutdown.clone();
        if let Some(l) = &ctx.limiter {
            // Rate-limit headers of every response feed the budget.
            ctx.provider.set_signal_sink(Arc::new(LimiterSink(l.clone())));
        }
        let Some(waited_for_database) = startup(&ctx, &soft).await? else {
            return Ok(ctx.counters.summary());
        };
        info!(worker_id = %ctx.health.worker_id, provider = ctx.provider.kind().as_str(),
              model = ctx.provider.model(), "worker started");

        let stop_maintenance = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        // Read memory once before the first claim, so a worker born over its limit claims nothing.
        let mut guard = memory::Guard::new(ctx.cfg.memory_limit_bytes);
        if let Some(rss) = memory::rss_bytes() {
            ctx.health.set_memory_over(guard.update(rss));
        }
        let gate = RescueGate::new(ctx.cfg.lease_duration(), waited_for_database, Instant::now());
        let maintenance = tokio::spawn(maintain(ctx.clone(), stop_maintenance.clone(), guard, gate));
        let listener = tokio::spawn(listen(ctx.clone(), wake.clone(), stop_maintenance.clone()));
        let pause = tokio::spawn(watch_pause(ctx.clone(), stop_maintenance.clone()));

        // The batch lane runs beside the claim loop (unless processing is off) and stops with it.
        let stop_lane = CancellationToken::new();
        let on = ctx.cfg.batch_lane.enabled && ctx.cfg.enable_queue_processing;
        let lane = on.then(|| tokio::spawn(batch_lane::run(ctx.clone(), stop_lane.clone())));

        let tracker = TaskTracker::new();
        claim_loop(&ctx, &tracker, &wake, self.drain_when_idle).await;
        stop_lane.cancel();
        if let Some(lane) = lane {
            let _ = lane.await;
        }

        // Drain: no more claims; in-flight batches get until the drain timeout.
        ctx.health.set_draining();
        tracker.close();
        if !tracker.is_empty() {
            info!(in_flight = ctx.health.inflight(), timeout = ?ctx.cfg.drain_timeout, "draining in-flight batches");
        }
        if tokio::time::timeout(ctx.cfg.drain_timeout, tracker.wait()).await.is_err() {
            warn!("drain timeout reached: cancelling in-flight batches and releasing their jobs");
            ctx.hard.cancel();
            tracker.wait().await;
        }
        stop_maintenance.cancel();
        let _ = maintenance.await;
        let _ = listener.await;
        let _ = pause.await;
        let summary = ctx.counters.summary();
        if let Err(e) = ctx.queue.worker_stopped(&worker_info(&ctx, WorkerState::Stopped)).await {
            warn!(error = %e, "could not mark the worker stopped");
        }
        info!(processed = summary.processed, failed = summary.failed, dead = summary.dead, "worker stopped");
        Ok(summary)
    }
}

/// Waits for the database and checks the schema: `None` if shut down while waiting, else
/// whether it had to wait for the database.
async fn startup(ctx: &Ctx, soft: &CancellationToken) -> Result<Option<bool>, WorkerError> {
    let mut delay = Duration::from_millis(200);
    let mut waited = false;
    loop {
        match ctx.queue.check_schema().await {
            Ok(SchemaFit::Exact) => break,
            Ok(SchemaFit::NewerCompatible { installed }) => {
                info!(
                    installed,
                    built_for = crate::queue::SCHEMA_VERSION,
                    "the schema is newer, with additive migrations only: running against it"
                );
                break;
            }
            Err(QueueError::Schema(msg)) => return Err(WorkerError::Schema(msg)),
            Err(e) => {
                ctx.health.set_db_ok(false);
                ctx.metrics.error(e.kind());
                warn!(error = %e, "database not reachable yet; retrying");
                waited = true;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = soft.cancelled() => return Ok(None),
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    ctx.health.set_db_ok(true);
    ctx.health.set_schema_ok(true);
    if let Err(e) = ctx.queue.heartbeat(&worker_info(ctx, WorkerState::Running), &[], ctx.cfg.lease_duration()).await {
        warn!(error = %e, "first heartbeat failed");
    }
    ctx.health.set_started();
    Ok(Some(waited))
}

/// This worker's row in the workers table.
fn worker_info(ctx: &Ctx, state: WorkerState) -> WorkerInfo {
    let host = hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    WorkerInfo {
        id: ctx.health.worker_id.clone(),
        host,
        pid: i64::from(std::process::id()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        in_flight: ctx.health.inflight(),
        processed: ctx.counters.processed.load(Ordering::Relaxed) as i64,
        failed: ctx.counters.failed.load(Ordering::Relaxed) as i64,
        state,
    }
}
