//! The worker: claim -> batch -> embed -> store, with heartbeats, lease rescue and drain.
//!
//! One claim loop fetches as many jobs as it has free batch slots (more while they come
//! back unchanged, as those need no slot; any changed among them wait for a slot, and are
//! released unspent on shutdown). Each batch runs as its own task; a
//! maintenance task keeps leases alive, sweeps expired ones and refreshes gauges.
//! Shutdown has two stages: the soft token (`Health::shutdown`) stops claiming, the
//! hard token cancels in-flight provider calls, whose jobs are released unspent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::health::Health;
use crate::limiter::{Limiter, LimiterSink};
use crate::memory;
use crate::metrics::{Metrics, ProviderLabel, RequestLabel};
use crate::outcome;
use crate::provider::{Provider, ProviderError};
use crate::queue::{ClaimedJob, FinishReport, Lease, Outcome, Queue, QueueError, WorkerInfo, WorkerState};

mod requests;
mod rescue;
mod store_results;

use requests::embed_jobs;
use rescue::RescueGate;
use store_results::store_results;

/// Errors that stop the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The schema is missing or from another version.
    #[error("{0}")]
    Schema(String),
}

/// Totals of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Jobs completed (embedded or unchanged).
    pub processed: u64,
    /// Of which unchanged (no provider call).
    pub unchanged: u64,
    /// Failed attempts (retried or dead-lettered).
    pub failed: u64,
    /// Dead-lettered jobs.
    pub dead: u64,
}

/// Live counters, readable while the worker runs (progress bars, the workers table).
#[derive(Debug, Default)]
pub struct Counters {
    /// Jobs completed.
    pub processed: AtomicU64,
    /// Jobs completed without a provider call.
    pub unchanged: AtomicU64,
    /// Failed attempts.
    pub failed: AtomicU64,
    /// Dead-lettered jobs.
    pub dead: AtomicU64,
}

impl Counters {
    fn summary(&self) -> RunSummary {
        RunSummary {
            processed: self.processed.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
        }
    }
}

/// Completions over the last minute, for `embedding_queue_processing_rate`.
#[derive(Debug, Default)]
struct RateWindow(Mutex<VecDeque<(Instant, u64)>>);

impl RateWindow {
    const WINDOW: Duration = Duration::from_secs(60);

    fn record(&self, n: u64) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((Instant::now(), n));
    }

    fn per_second(&self, uptime: Duration) -> f64 {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = Instant::now().checked_sub(Self::WINDOW);
        while let (Some(front), Some(c)) = (q.front(), cutoff) {
            if front.0 >= c {
                break;
            }
            q.pop_front();
        }
        let total: u64 = q.iter().map(|e| e.1).sum();
        let span = uptime.min(Self::WINDOW).as_secs_f64().max(1.0);
        total as f64 / span
    }
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
    // --- issue 3 ---
    /// The provider's budget; `None` for providers that spend none (hash, local).
    limiter: Option<Arc<Limiter>>,
    /// Set while the provider is parked (quota exhausted).
    parked: Arc<std::sync::atomic::AtomicBool>,
    // --- end issue 3 ---
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
        // --- issue 3: metered providers wait for their RPM/TPM budget ---
        let limiter = provider.metered().then(|| {
            Arc::new(Limiter::from_config(&cfg).unwrap_or_else(|e| {
                warn!(error = %e, "fleet rate budget unavailable: budgeting per worker");
                Limiter::local(cfg.max_requests_per_minute.get(), cfg.max_tokens_per_minute.get())
                    .with_max_pause(cfg.max_provider_pause)
            }))
        });
        // --- end issue 3 ---
        metrics.init_provider(provider.kind().as_str());
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
            limiter,
            parked: Arc::default(),
        };
        Self { ctx: Arc::new(ctx), drain_when_idle: false }
    }

    /// Exit once no job is ready and none is running (`embq worker --drain`).
    pub fn drain_when_idle(mut self, yes: bool) -> Self {
        self.drain_when_idle = yes;
        self
    }

    // --- issue 3 ---
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
    // --- end issue 3 ---

    /// Live counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.ctx.counters.clone()
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
            // Rate-limit headers of every response feed the budget (issue 3).
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

        let tracker = TaskTracker::new();
        claim_loop(&ctx, &tracker, &wake, self.drain_when_idle).await;

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
            Ok(()) => break,
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
}

/// Lease tokens of the batches this worker is still working on, counted per batch.
///
/// A batch whose results could not be recorded drops out, so its jobs' leases lapse and
/// another worker rescues them, instead of this worker's heartbeats keeping them forever.
#[derive(Debug, Default)]
struct LiveLeases(Mutex<std::collections::HashMap<String, usize>>);

impl LiveLeases {
    fn hold(self: &Arc<Self>, token: &str) -> LiveLease {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(token.to_string()).or_default() += 1;
        LiveLease { set: self.clone(), token: token.to_string() }
    }

    fn tokens(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

/// One batch's hold on its lease; released when dropped.
#[derive(Debug)]
struct LiveLease {
    set: Arc<LiveLeases>,
    token: String,
}

impl Drop for LiveLease {
    fn drop(&mut self) {
        let mut m = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.token);
            }
        }
    }
}

/// Fetches work while there are free slots; returns when told to stop or, in drain mode, when idle.
/// Batches still held (claimed, not started) when it returns are released unspent.
async fn claim_loop(ctx: &Arc<Ctx>, tracker: &TaskTracker, wake: &Notify, drain_when_idle: bool) {
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
        });
    }
}

/// Starts held batches on free slots.
fn start_held(ctx: &Arc<Ctx>, tracker: &TaskTracker, slots: &Arc<Semaphore>, held: &mut VecDeque<Held>) {
    while !held.is_empty() {
        let Ok(permit) = slots.clone().try_acquire_owned() else { return };
        let Some(Held { lease, jobs, live }) = held.pop_front() else { return };
        let ctx2 = ctx.clone();
        tracker.spawn(async move {
            let n = jobs.len() as i64;
            process_batch(&ctx2, &lease, jobs).await;
            drop(live);
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
        if !ctx.health.can_claim() || want == 0 {
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
            held.push_back(Held { lease: lease.clone(), jobs: chunk, live: ctx.live.hold(&lease.token) });
        }
        start_held(ctx, tracker, slots, held);
        let backlog = got == want;
        extra = if backlog && unchanged.len() * 2 >= got { (extra.max(batch) * 2).min(UNCHANGED_CLAIM_MAX) } else { 0 };
        // --- issue 3: ENABLE_BATCH_OPTIMIZATION grows batches toward the provider's cap while
        // claims come back full (a backlog), and returns to BATCH_SIZE when they do not.
        if ctx.cfg.enable_batch_optimization {
            batch = if backlog { (batch * 2).min(ctx.provider.max_inputs().max(1)) } else { base_batch };
        }
        // --- end issue 3 ---
        if backlog {
            // A full claim means a backlog: fetch again at once instead of waiting for the poll.
            continue;
        }
        if drain_when_idle && got == 0 && ctx.health.inflight() == 0 {
            // Retries due soon and jobs released by a throttled provider still count as work.
            match ctx.queue.is_idle(drain_horizon(ctx)).await {
                Ok(true) => {
                    info!("queue drained; exiting");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "idle check failed"),
            }
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

/// Embeds one batch and records the outcome of every job in it.
async fn process_batch(ctx: &Ctx, lease: &Lease, jobs: Vec<ClaimedJob>) {
    let started = Instant::now();
    let provider = ctx.provider.kind().as_str();
    let span =
        info_span!("batch", provider, model = ctx.provider.model(), jobs = jobs.len(), tokens = tracing::field::Empty);
    async {
        let mut outcomes: Vec<(i64, Outcome)> = Vec::with_capacity(jobs.len());
        let todo: Vec<&ClaimedJob> = jobs.iter().collect();
        // Token-aware requests under the rate limit (issue 3).
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

/// How far ahead a draining worker counts ready jobs as work: retries due within one poll
/// interval, and every job this worker released unspent.
fn drain_horizon(ctx: &Ctx) -> Duration {
    let until = *ctx.released_until.lock().unwrap_or_else(|p| p.into_inner());
    let released = until.map_or(Duration::ZERO, |u| u.saturating_duration_since(Instant::now()));
    ctx.cfg.poll_interval + released
}

fn classify_all(ctx: &Ctx, jobs: &[&ClaimedJob], err: &ProviderError, out: &mut Vec<(i64, Outcome)>) {
    let mut rng = rand::thread_rng();
    for j in jobs {
        let o = match err {
            // Only the input the provider named is bad; its batch-mates retry unharmed.
            ProviderError::InvalidInput { index, .. } if jobs.get(*index).map(|b| b.id) != Some(j.id) => {
                Outcome::Released { after: Duration::ZERO }
            }
            _ => outcome::classify(err, j.attempt, &ctx.cfg.retry, &mut rng),
        };
        out.push((j.id, o));
    }
}

fn status_class(err: &ProviderError) -> &'static str {
    match err {
        ProviderError::RateLimited { .. } => "429",
        ProviderError::Transient(_) => "5xx",
        ProviderError::InvalidResponse(_) => "2xx",
        _ => "4xx",
    }
}

fn count_request(ctx: &Ctx, provider: &'static str, status_class: &'static str) {
    ctx.metrics.provider_requests.get_or_create(&RequestLabel { provider, status_class }).inc();
    if status_class == "429" {
        ctx.metrics.provider_rate_limited.get_or_create(&ProviderLabel { provider }).inc();
    }
}

/// Counts jobs the claim found unchanged (and completed) as processed.
fn record_unchanged(ctx: &Ctx, n: u64) {
    count_outcomes(ctx, &FinishReport { unchanged: n, ..FinishReport::default() });
}

/// Adds a report's outcomes to the metrics, the run's counters and the processing rate.
fn count_outcomes(ctx: &Ctx, r: &FinishReport) {
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
    // One line per batch, inside the batch span (provider, model, jobs, tokens).
    info!(
        outcome,
        latency_ms = took.as_millis() as u64,
        stored = r.stored,
        unchanged = r.unchanged,
        retried = r.retried,
        dead = r.dead,
        released = r.released,
        cancelled = r.cancelled,
        "batch finished"
    );
}

/// Heartbeats, lease rescue, queue gauges and the memory guard, until stopped.
async fn maintain(ctx: Arc<Ctx>, stop: CancellationToken, mut guard: memory::Guard, mut gate: RescueGate) {
    let mut heartbeat = tokio::time::interval(ctx.cfg.heartbeat_interval);
    let mut rescue = tokio::time::interval(ctx.cfg.rescue_interval());
    let mut stats = tokio::time::interval(Duration::from_secs(10));
    let mut second = tokio::time::interval(Duration::from_secs(1));
    for i in [&mut heartbeat, &mut rescue, &mut stats, &mut second] {
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
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
            _ = stats.tick() => match ctx.queue.stats().await {
                Ok(s) => {
                    let m = &ctx.metrics;
                    m.queue_depth.set(s.ready as i64);
                    m.queue_scheduled.set(s.scheduled as i64);
                    m.queue_running.set(s.running as i64);
                    m.dead_letter_jobs.set(s.dead as i64);
                    m.oldest_ready_age_seconds.set(s.oldest_ready_age_seconds.unwrap_or(0.0));
                }
                Err(e) => {
                    ctx.metrics.error(e.kind());
                    debug!(error = %e, "queue stats failed");
                }
            },
            _ = second.tick() => {
                ctx.metrics.processing_rate.set(ctx.rate.per_second(ctx.health.uptime()));
                if let Some(rss) = memory::rss_bytes() {
                    let over = guard.update(rss);
                    ctx.health.set_memory_over(over);
                }
            }
        }
    }
}

/// Shows the provider's pause (this worker's, or any worker's on a fleet budget) in `/ready`
/// and `embedding_provider_paused_seconds`, once a second; a task of its own so a slow
/// budget store never delays a heartbeat.
async fn watch_pause(ctx: Arc<Ctx>, stop: CancellationToken) {
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
async fn listen(ctx: Arc<Ctx>, wake: Arc<Notify>, stop: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_averages_over_uptime_until_a_minute() {
        let w = RateWindow::default();
        w.record(30);
        assert!((w.per_second(Duration::from_secs(10)) - 3.0).abs() < 1e-9);
        assert!((w.per_second(Duration::from_secs(600)) - 0.5).abs() < 1e-9);
    }
}
