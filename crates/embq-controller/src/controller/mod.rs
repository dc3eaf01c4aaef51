//! The shared [`Context`], one tick of the controller ([`reconcile`]), what happens when
//! a tick fails ([`error_policy`]) and the loop that runs them ([`run`]). What a tick
//! sees is gathered in [`gather`], what it does is carried out in [`remediation`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::kube_api::{self};
use crate::leader::Hold;
use crate::metrics::{KindLabels, Metrics};
use crate::observe::{pod_status, PodHistory, PodStatus};
use crate::policy::{self, Action, Decision, Memory, PressureTracker, Verdict};
use crate::worker::WorkerClient;
use crate::Error;

mod gather;
mod remediation;

use gather::{observe, scrape};
use remediation::execute;

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
