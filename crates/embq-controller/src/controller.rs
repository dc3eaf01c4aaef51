//! The shared [`Context`], one tick of the controller ([`reconcile`]), what happens when
//! a tick fails ([`error_policy`]) and the loop that runs them ([`run`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::kube_api::{self, EventTarget, EventType, Fleet};
use crate::leader::Hold;
use crate::metrics::{ActionLabels, KindLabels, Metrics, SuppressedLabels};
use crate::observe::{pod_status, PodHistory, PodStatus, Sample, WorkerMetrics};
use crate::policy::{
    self, Action, CapacityObservation, Critical, Decision, FleetObservation, Guard, Memory, PodObservation,
    PressureTracker, Reason, Verdict,
};
use crate::restart::{self, RestartJob};
use crate::worker::{Health, WorkerClient};
use crate::Error;

/// Everything a tick and its spawned restarts share.
pub struct Context {
    pub client: kube::Client,
    pub config: Config,
    pub worker: WorkerClient,
    pub metrics: Arc<Metrics>,
    pub liveness: Arc<Liveness>,
    /// Graceful restarts run as tracked tasks so a tick never waits for a drain.
    pub tasks: TaskTracker,
    /// Cancelled on shutdown: restarts stop at their next step.
    pub shutdown: CancellationToken,
    state: Mutex<State>,
}

/// What the controller remembers between ticks.
#[derive(Default)]
struct State {
    pods: HashMap<String, PodHistory>,
    memory: Memory,
    pressure: PressureTracker,
    in_flight: HashSet<String>,
    /// `memory` holds what the Lease carried (set on leading, cleared on following).
    memory_loaded: bool,
    /// The Lease renewal last seen, and when (local clock) it was first seen.
    lease_seen: Option<(String, Instant)>,
}

/// When the loop last finished a tick successfully, for the controller's own /health.
#[derive(Debug)]
pub struct Liveness {
    last: Mutex<Instant>,
    max_silence: Duration,
}

impl Liveness {
    pub fn new(max_silence: Duration) -> Self {
        Self { last: Mutex::new(Instant::now()), max_silence }
    }
    pub fn beat(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
    pub fn alive(&self) -> bool {
        self.since_success() <= self.max_silence
    }
    /// Time since the last successful tick (or since start).
    pub fn since_success(&self) -> Duration {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }
}

impl Context {
    pub fn new(client: kube::Client, config: Config, metrics: Arc<Metrics>) -> Result<Self, Error> {
        let worker = WorkerClient::new(&config)?;
        // A tick that hangs (not one that fails) is what liveness should catch.
        let max_silence = (config.interval * 6).max(Duration::from_secs(120));
        Ok(Self {
            client,
            worker,
            metrics,
            liveness: Arc::new(Liveness::new(max_silence)),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            state: Mutex::new(State::default()),
            config,
        })
    }

    /// The guards' memory as the Lease annotation carries it.
    pub fn memory_annotation(&self) -> String {
        self.state().memory.to_annotation(Instant::now(), chrono::Utc::now())
    }

    /// How long the Lease has shown the renewal `key` (local clock); zero when it changed.
    pub fn lease_unchanged_for(&self, key: Option<String>) -> Duration {
        let now = Instant::now();
        let mut state = self.state();
        match (key, &state.lease_seen) {
            (Some(k), Some((seen, since))) if *seen == k => now.duration_since(*since),
            (key, _) => {
                state.lease_seen = key.map(|k| (k, now));
                Duration::ZERO
            }
        }
    }

    /// Whether the memory was read from the Lease since this replica last started leading.
    pub fn memory_loaded(&self) -> bool {
        self.state().memory_loaded
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data: a panic elsewhere cannot leave it half-updated in a
        // way worse than the next tick repairs.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one tick did.
#[derive(Debug)]
pub enum Tick {
    /// Another replica holds the Lease: nothing was observed or done.
    Follower,
    Leader(Vec<Decision>),
}

/// One look at the fleet and the actions it calls for, bounded by the tick deadline
/// (two thirds of the Lease duration): a tick stuck on the API server must not go on
/// acting after its Lease could have passed to another replica.
pub async fn reconcile(ctx: &Arc<Context>) -> Result<Tick, Error> {
    let deadline = ctx.config.lease_duration.mul_f64(2.0 / 3.0);
    tokio::time::timeout(deadline, tick(ctx)).await.map_err(|_| Error::Deadline(deadline))?
}

async fn tick(ctx: &Arc<Context>) -> Result<Tick, Error> {
    let started = Instant::now();
    if ctx.config.leader_election {
        let held = crate::leader::hold_lease(ctx).await?;
        ctx.metrics.leader.set(i64::from(held != Hold::Follow));
        let mut state = ctx.state();
        match held {
            Hold::Follow => {
                state.memory_loaded = false;
                return Ok(Tick::Follower);
            }
            Hold::Lead { carried } => {
                if !state.memory_loaded {
                    if let Some(text) = carried {
                        state.memory = Memory::from_annotation(&text, Instant::now(), chrono::Utc::now());
                    }
                    state.memory_loaded = true;
                }
            }
        }
    } else {
        ctx.metrics.leader.set(1);
    }

    let fleet = kube_api::read_fleet(ctx).await?;
    // Failed/Succeeded pods (a kubelet eviction under node pressure leaves them) are not
    // part of the fleet: their ReplicaSet has replaced them, and a PDB does not count them.
    let statuses: Vec<PodStatus> =
        fleet.pods.iter().map(pod_status).filter(|p| !p.terminating && !p.finished).collect();
    let scrapes = scrape(ctx, &statuses).await;
    let now = Instant::now();

    let (observation, decisions) = {
        let mut state = ctx.state();
        let observation = observe(ctx, &mut state, &fleet, &statuses, scrapes, now);
        let mut decisions = policy::decide(&observation, &ctx.config.limits, &state.memory, now);
        if fleet.paused() {
            policy::pause(&mut decisions);
        }
        state.memory.record(&decisions, now, &ctx.config.limits);
        for d in &decisions {
            if d.action == Action::GracefulRestart && d.verdict == Verdict::Act {
                if let Some(p) = d.pod() {
                    state.in_flight.insert(p.to_owned());
                }
            }
        }
        (observation, decisions)
    };

    execute(ctx, &fleet, &statuses, &observation, &decisions).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    Ok(Tick::Leader(decisions))
}

/// Share of the signal window the samples must span before a pod is judged on them:
/// a burst right after a start, a failover or on a new pod is not a five-minute signal.
const MIN_WINDOW_COVERAGE: f64 = 0.8;

/// Health and metrics of one worker; `None` where it was not scraped.
struct Scrape {
    name: String,
    health: Option<Health>,
    metrics: Option<WorkerMetrics>,
}

/// Scrapes every running worker at once; each scrape is bounded by the client timeout.
async fn scrape(ctx: &Arc<Context>, statuses: &[PodStatus]) -> Vec<Scrape> {
    let mut set = JoinSet::new();
    // An OOM kill is an event the kubelet already answered with a restart: the pod runs
    // again and stays judged. Only a pod that cannot run is not scraped.
    let scrapable = |p: &&PodStatus| !matches!(p.critical, Some(Critical::ImagePull | Critical::CrashLoop { .. }));
    for p in statuses.iter().filter(|p| p.running).filter(scrapable) {
        let Some(ip) = p.ip else { continue };
        let ctx = ctx.clone();
        let name = p.name.clone();
        set.spawn(async move {
            let (health, metrics) = tokio::join!(ctx.worker.health(ip), ctx.worker.metrics(ip));
            if health != Health::Ok {
                ctx.metrics.scrape_failures.get_or_create(&KindLabels { kind: "health" }).inc();
            }
            let metrics = metrics
                .inspect_err(|e| {
                    tracing::debug!(pod = %name, error = %e, "metrics scrape failed");
                    ctx.metrics.scrape_failures.get_or_create(&KindLabels { kind: "metrics" }).inc();
                })
                .ok();
            Scrape { name, health: Some(health), metrics }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(s) = r {
            out.push(s);
        }
    }
    out
}

/// Folds one look into the per-pod histories and builds the policy's input.
fn observe(
    ctx: &Context,
    state: &mut State,
    fleet: &Fleet,
    statuses: &[PodStatus],
    scrapes: Vec<Scrape>,
    now: Instant,
) -> FleetObservation {
    let cfg = &ctx.config;
    let window = cfg.limits.signal_window.max(cfg.limits.pressure_window);
    state.pods.retain(|name, _| statuses.iter().any(|p| &p.name == name));
    let mut scrapes: HashMap<String, Scrape> = scrapes.into_iter().map(|s| (s.name.clone(), s)).collect();

    let mut pods = Vec::with_capacity(statuses.len());
    let mut rate_limited = false;
    let mut depth: Option<f64> = None;
    let mut saturation = Vec::new();
    for p in statuses {
        let history_seen = state.pods.contains_key(&p.name);
        let history = state.pods.entry(p.name.clone()).or_default();
        let moved = history.restarts_moved(p.restarts);
        let critical = match p.critical {
            // A remembered kill (lastState) is history, not a state: judge the pod as any other.
            Some(Critical::OomKilled { restarts, .. }) if moved => Some(Critical::OomKilled { restarts, fresh: true }),
            Some(Critical::OomKilled { .. }) => None,
            other => other,
        };
        let scrape = scrapes.remove(&p.name);
        let health_failing_for = scrape
            .as_ref()
            .and_then(|s| s.health)
            // Only a started worker is judged on /health; a starting one has its startup probe.
            .and_then(|h| history.health(now, if p.started { h } else { Health::Ok }));
        if let Some(m) = scrape.and_then(|s| s.metrics) {
            if p.ready {
                depth = Some(depth.map_or(m.queue_depth.unwrap_or(0.0), |d: f64| d.max(m.queue_depth.unwrap_or(0.0))));
                if let Some(inflight) = m.inflight {
                    saturation.push(inflight / f64::from(cfg.worker_max_concurrent_jobs));
                }
            }
            history.push(Sample { at: now, metrics: m }, window);
        }
        let signals = history.signals(cfg.min_jobs_in_window, cfg.limits.signal_window.mul_f64(MIN_WINDOW_COVERAGE));
        rate_limited |= signals.rate_limited;
        pods.push(PodObservation {
            name: p.name.clone(),
            ready: p.ready,
            critical,
            health_failing_for,
            restarts_moved: moved && history_seen,
            error_rate: signals.error_rate,
            p95_seconds: signals.p95_seconds,
            owner: p.owner.clone(),
            template: p.template.clone(),
        });
    }

    // Capacity: judged only from ready workers that answered; no answer, no judgement.
    let ready = statuses.iter().filter(|p| p.ready).count();
    let (pressure, (pressure_for, calm_for)) = match depth {
        Some(depth) if ready > 0 => {
            let mean_saturation = saturation.iter().sum::<f64>() / saturation.len().max(1) as f64;
            let reason = if depth / ready as f64 > cfg.queue_depth_per_worker {
                Some(Reason::QueueDepth)
            } else if depth > 0.0 && !saturation.is_empty() && mean_saturation >= cfg.saturation_threshold {
                Some(Reason::Saturation)
            } else {
                None
            };
            (reason, state.pressure.observe(now, reason.is_some()))
        }
        _ => (None, (None, None)),
    };

    FleetObservation {
        pods,
        max_unavailable: fleet.max_unavailable(),
        in_flight: {
            let mut v: Vec<_> = state.in_flight.iter().cloned().collect();
            v.sort();
            v
        },
        capacity: CapacityObservation { target: fleet.scale_target(), pressure, pressure_for, calm_for, rate_limited },
    }
}

/// Carries out the decisions: metrics and Events for all, API calls for real actions,
/// graceful restarts spawned so the tick does not wait for drains.
async fn execute(
    ctx: &Arc<Context>,
    fleet: &Fleet,
    statuses: &[PodStatus],
    observation: &FleetObservation,
    decisions: &[Decision],
) {
    let known: HashSet<String> = statuses.iter().map(|p| p.name.clone()).collect();
    for d in decisions {
        let labels = ActionLabels { action: d.action, reason: d.reason };
        let pod = d.pod().and_then(|n| fleet.pods.iter().find(|p| kube::ResourceExt::name_any(*p) == n));
        let status = d.pod().and_then(|n| statuses.iter().find(|p| p.name == n));
        let target = match pod {
            Some(p) => EventTarget::pod(p),
            None => EventTarget::deployment(&fleet.deployment),
        };
        let seen = d.pod().and_then(|n| observation.pods.iter().find(|p| p.name == n));
        let why = explain(d, status, seen, &observation.capacity, ctx);
        match d.verdict {
            Verdict::Skipped(guard) => {
                ctx.metrics.suppressed.get_or_create(&SuppressedLabels { action: d.action, guard }).inc();
                tracing::info!(subject = %d.subject, reason = d.reason.as_str(), guard = guard.as_str(), "remediation skipped");
                let message = format!("not restarting ({why}): {}", skip_why(guard, ctx));
                kube_api::post_event(
                    ctx,
                    &target,
                    EventType::Warning,
                    "RemediationSkipped",
                    d.action.as_str(),
                    &message,
                )
                .await;
            }
            Verdict::Suppressed(guard) => {
                ctx.metrics.suppressed.get_or_create(&SuppressedLabels { action: d.action, guard }).inc();
                tracing::debug!(subject = %d.subject, action = d.action.as_str(), guard = guard.as_str(), "held back");
            }
            Verdict::DryRun => {
                ctx.metrics.dry_run_actions.get_or_create(&labels).inc();
                tracing::info!(subject = %d.subject, action = d.action.as_str(), reason = d.reason.as_str(), "dry run: {why}");
                kube_api::post_event(
                    ctx,
                    &target,
                    EventType::Normal,
                    d.reason.event_reason(),
                    d.action.as_str(),
                    &format!("dry run, would {}: {why}", verb(d)),
                )
                .await;
            }
            Verdict::Act => {
                ctx.metrics.actions.get_or_create(&labels).inc();
                tracing::info!(subject = %d.subject, action = d.action.as_str(), reason = d.reason.as_str(), "{why}");
                match d.action {
                    Action::Report | Action::HoldScale => {
                        kube_api::post_event(
                            ctx,
                            &target,
                            EventType::Warning,
                            d.reason.event_reason(),
                            d.action.as_str(),
                            &why,
                        )
                        .await;
                    }
                    Action::Evict => evict_now(ctx, &target, d, &why).await,
                    Action::GracefulRestart => {
                        let job = RestartJob {
                            pod: target.name.clone(),
                            uid: target.uid.clone(),
                            ip: status.and_then(|s| s.ip),
                            why,
                            known_pods: known.clone(),
                            owner: status.and_then(|s| s.owner.clone()),
                        };
                        let task_ctx = ctx.clone();
                        ctx.tasks.spawn(async move {
                            let _done = InFlight(task_ctx.clone(), job.pod.clone());
                            restart::graceful_restart(task_ctx, job).await
                        });
                    }
                    Action::ScaleDown => scale_now(ctx, fleet, d, &why).await,
                }
            }
        }
    }
}

/// Removes a pod from the in-flight set when its restart task ends, however it ends.
struct InFlight(Arc<Context>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state().in_flight.remove(&self.1);
    }
}

async fn evict_now(ctx: &Context, target: &EventTarget, d: &Decision, why: &str) {
    if !crate::leader::still_leading(ctx).await {
        tracing::warn!(pod = %target.name, "lease lost before the eviction; not evicting");
        return;
    }
    let (type_, reason, message) = match kube_api::evict(ctx, &target.name, false).await {
        Ok(kube_api::Eviction::Evicted) => (EventType::Normal, "Evicted", format!("evicted to reschedule: {why}")),
        Ok(kube_api::Eviction::Gone) => return,
        Ok(kube_api::Eviction::Refused(msg)) => (
            EventType::Warning,
            "EvictionRefused",
            format!("disruption budget refused the eviction ({msg}); next try after the cooldown"),
        ),
        Err(e) => (EventType::Warning, "EvictionFailed", format!("eviction failed: {e}")),
    };
    kube_api::post_event(ctx, target, type_, reason, d.action.as_str(), &message).await;
}

async fn scale_now(ctx: &Context, fleet: &Fleet, d: &Decision, why: &str) {
    let (Some(target), Some(to)) = (fleet.scale_target(), d.scale_to) else {
        return;
    };
    let dep = EventTarget::deployment(&fleet.deployment);
    match kube_api::scale(ctx, fleet, &target, to).await {
        Ok(done) => {
            kube_api::post_event(
                ctx,
                &dep,
                EventType::Normal,
                "ScaledDown",
                d.action.as_str(),
                &format!("{done}: {why}"),
            )
            .await
        }
        Err(e) => {
            tracing::warn!(error = %e, "scaling failed");
            kube_api::post_event(ctx, &dep, EventType::Warning, "ScalingFailed", d.action.as_str(), &format!("{e}"))
                .await
        }
    }
}

/// Why a fleet-level guard held a restart back, for the `RemediationSkipped` Event.
fn skip_why(guard: Guard, ctx: &Context) -> String {
    let l = &ctx.config.limits;
    match guard {
        Guard::SharedCause => "most workers show the same signal: the cause is shared (provider, database, network), restarting them one by one cannot fix it".into(),
        Guard::OtherTemplate => "the pod runs another template than the Ready majority (a canary or a rollout in progress): its Deployment's rollout decides, not a restart".into(),
        Guard::ReadyFloor => format!(
            "fewer than {} Ready pods or {:.0}% of the fleet would stay Ready: the fleet as a whole is unwell, holding",
            l.min_ready_pods,
            l.min_ready_share * 100.0
        ),
        Guard::Paused => "the pause switch is on".into(),
        other => format!("held back by {}", other.as_str()),
    }
}

fn verb(d: &Decision) -> &'static str {
    match d.action {
        Action::Report => "report",
        Action::Evict => "evict the pod",
        Action::GracefulRestart => "restart the pod gracefully",
        Action::ScaleDown => "scale down",
        Action::HoldScale => "hold scaling",
    }
}

/// A sentence for the Event: what was seen and why this is the response.
fn explain(
    d: &Decision,
    pod: Option<&PodStatus>,
    seen: Option<&PodObservation>,
    capacity: &CapacityObservation,
    ctx: &Context,
) -> String {
    let cfg = &ctx.config;
    let restarts = pod.map_or(0, |p| p.restarts);
    let window = fmt_secs(cfg.limits.signal_window);
    let lasting = fmt_secs(capacity.pressure_for.or(capacity.calm_for).unwrap_or_default());
    match (d.reason, d.action) {
        (Reason::ImagePull, _) => "the image cannot be pulled; restarting would pull the same image: fix the image reference or pull secret".into(),
        (Reason::CrashLoop, Action::Evict) => format!("crash looping ({restarts} restarts) while the other workers serve: the cause may be local to this pod or node"),
        (Reason::CrashLoop, _) => format!("crash looping ({restarts} restarts); the kubelet restarts it with back-off, deleting the pod would only reset that back-off: read its logs"),
        (Reason::OomKilled, _) => format!("container OOMKilled ({restarts} restarts); the kubelet restarted it"),
        (Reason::OomRepeated, _) => format!(
            "container OOMKilled again ({restarts} restarts, memory limit {}): the limit is too low for the work; raise resources.limits.memory or lower MAX_CONCURRENT_JOBS / BATCH_SIZE — restarts cannot fix this",
            pod.and_then(|p| p.memory_limit.clone()).unwrap_or_else(|| "unset".into())
        ),
        (Reason::HealthCheck, _) => format!(
            "/health failing for {} (threshold {})",
            fmt_secs(seen.and_then(|p| p.health_failing_for).unwrap_or_default()),
            fmt_secs(cfg.limits.health_failure_after)
        ),
        (Reason::ErrorRate, action) => format!(
            "error rate {:.0}% over {window} (threshold {:.0}%){}",
            seen.and_then(|p| p.error_rate).unwrap_or_default() * 100.0,
            cfg.limits.error_rate_max * 100.0,
            if action == Action::Report { "; the provider is rate limiting, a restart cannot fix that" } else { "" }
        ),
        (Reason::SlowProcessing, action) => format!(
            "processing p95 {:.1}s over {window} (threshold {}s){}",
            seen.and_then(|p| p.p95_seconds).unwrap_or_default(),
            cfg.limits.p95_max_seconds,
            if action == Action::Report { "; the provider is rate limiting, a restart cannot fix that" } else { "" }
        ),
        (Reason::QueueDepth, _) => {
            format!("queue depth above {} per ready worker for {lasting}", cfg.queue_depth_per_worker)
        }
        (Reason::Saturation, _) => format!("workers saturated with jobs waiting for {lasting}"),
        (Reason::RateLimited, _) => "queue backlog, but the provider is rate limiting (429s, rate-limit waits): more workers would only add 429s; not scaling up".into(),
        (Reason::PressureGone, _) => format!("no capacity pressure for {lasting}: giving back the raised capacity"),
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// How long to wait after the `attempt`-th failed tick in a row: doubling from one
/// second, up to five intervals (at least 30 s). Never gives up.
pub fn backoff(attempt: u32, interval: Duration) -> Duration {
    let cap = (interval * 5).max(Duration::from_secs(30));
    Duration::from_secs(1).saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20))).min(cap)
}

/// What a failed tick leads to: counted, logged, retried after a back-off.
pub fn error_policy(err: &Error, ctx: &Context, attempt: u32) -> Duration {
    ctx.metrics.reconcile_errors.get_or_create(&KindLabels { kind: err.kind() }).inc();
    let wait = backoff(attempt, ctx.config.interval);
    tracing::warn!(error = %err, attempt, retry_in_ms = wait.as_millis() as u64, "tick failed");
    wait
}

/// Ticks until `ctx.shutdown` is cancelled, then waits (bounded) for restarts in flight
/// to reach a safe stop.
pub async fn run(ctx: Arc<Context>) {
    let mut failures = 0u32;
    loop {
        let wait = match reconcile(&ctx).await {
            Ok(_) => {
                failures = 0;
                // Only a successful tick counts: a loop that keeps failing turns /health 503.
                ctx.liveness.beat();
                ctx.config.interval
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                error_policy(&e, &ctx, failures)
            }
        };
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    ctx.tasks.close();
    let grace = ctx.config.drain_timeout + Duration::from_secs(5);
    if tokio::time::timeout(grace, ctx.tasks.wait()).await.is_err() {
        tracing::warn!("restarts still running at shutdown");
    }
    if ctx.config.leader_election {
        if let Err(e) = crate::leader::release(&ctx).await {
            tracing::warn!(error = %e, "could not release the lease; the next replica waits for it to expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_never_overflows() {
        let i = Duration::from_secs(10);
        let cases = [(1, 1), (2, 2), (3, 4), (6, 32), (7, 50), (1000, 50)];
        for (attempt, secs) in cases {
            assert_eq!(backoff(attempt, i), Duration::from_secs(secs), "attempt {attempt}");
        }
        assert_eq!(backoff(40, Duration::from_secs(1)), Duration::from_secs(30));
    }
}
