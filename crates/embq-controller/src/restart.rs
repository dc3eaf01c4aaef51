//! The graceful restart of one worker: fence, evict through the Eviction API (the worker
//! drains on the SIGTERM that follows), watch the drain (bounded), then wait (bounded)
//! for a replacement to become Ready. An Event marks each step.
//!
//! One restart, not two: the worker's `POST /shutdown` makes the process exit, so calling it
//! before the eviction would have the kubelet restart the container and then the eviction
//! replace the pod. The eviction alone drains (SIGTERM) and honours the PodDisruptionBudget.
//!
//! If a PodDisruptionBudget refuses the eviction (429) the worker is left alone, untouched:
//! nothing was asked of it before. A refusal is not retried here; the pod's cooldown, set
//! when the restart was decided, keeps the next attempt at least one cooldown away — no
//! retry storm against the budget.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::controller::Context;
use crate::kube_api::{self, EventTarget, EventType, Eviction};
use crate::leader::still_leading;
use crate::observe::pod_status;
use crate::worker::Drain;

/// One restart to carry out.
#[derive(Debug, Clone)]
pub struct RestartJob {
    pub pod: String,
    pub uid: Option<String>,
    pub ip: Option<IpAddr>,
    /// Why, for the Events ("/health failing for 75s").
    pub why: String,
    /// Pod names at decision time: a replacement is a Ready pod not among them.
    pub known_pods: HashSet<String>,
    /// The pod's ReplicaSet: the replacement must come from it (a scale-up's new pod or a
    /// canary's does not count).
    pub owner: Option<String>,
}

/// How a graceful restart ended (also the `kind` label of restart_outcomes_total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    ReplacementReady,
    ReplacementNotReady,
    EvictionRefused,
    Cancelled,
    /// The fence found another replica leading (or could not tell): stopped before acting.
    LeaseLost,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::ReplacementReady => "replacement_ready",
            Outcome::ReplacementNotReady => "replacement_not_ready",
            Outcome::EvictionRefused => "eviction_refused",
            Outcome::Cancelled => "cancelled",
            Outcome::LeaseLost => "lease_lost",
            Outcome::Failed => "failed",
        }
    }
}

/// Runs the whole sequence; never panics or returns an error, every ending is an [`Outcome`].
pub async fn graceful_restart(ctx: Arc<Context>, job: RestartJob) -> Outcome {
    let outcome = run(&ctx, &job).await;
    ctx.metrics.outcome(outcome.as_str());
    tracing::info!(pod = %job.pod, outcome = outcome.as_str(), "graceful restart finished");
    outcome
}

async fn run(ctx: &Context, job: &RestartJob) -> Outcome {
    let target = EventTarget::pod_named(&job.pod, job.uid.clone());
    let event = |type_, reason: &'static str, message: String| {
        let target = target.clone();
        async move { kube_api::post_event(ctx, &target, type_, reason, "GracefulRestart", &message).await }
    };

    if ctx.shutdown.is_cancelled() {
        return Outcome::Cancelled;
    }

    // 1. Evict: the kubelet sends SIGTERM, on which the worker drains (claims nothing
    // more, finishes its in-flight jobs, releases the rest) before it exits, and the
    // ReplicaSet creates the replacement. The worker's `/shutdown` is not called first:
    // it makes the process exit, the kubelet would restart the container, and the
    // eviction would then restart the worker a second time.
    if !still_leading(ctx).await {
        tracing::warn!(pod = %job.pod, "lease lost before the eviction; not evicting");
        return Outcome::LeaseLost;
    }
    match kube_api::evict(ctx, &job.pod).await {
        // Already gone (deleted since the decision): nothing of ours to follow.
        Ok(Eviction::Gone) => return Outcome::Cancelled,
        Ok(Eviction::Evicted) => {
            event(
                EventType::Normal,
                "Evicted",
                format!("evicted ({}): SIGTERM drains the worker before it exits", job.why),
            )
            .await;
        }
        Ok(Eviction::Refused(msg)) => {
            event(
                EventType::Warning,
                "EvictionRefused",
                format!(
                    "not restarting ({}): the disruption budget refuses the eviction now: {msg}; next try after the cooldown",
                    job.why
                ),
            )
            .await;
            return Outcome::EvictionRefused;
        }
        Err(e) => {
            tracing::warn!(pod = %job.pod, error = %e, "eviction failed");
            return Outcome::Failed;
        }
    }

    // 2. Watch the drain, so the Events say whether in-flight jobs finished or were cut off.
    if let Some(ip) = job.ip {
        match ctx.worker.wait_drained(ip, ctx.config.drain_timeout, ctx.config.drain_poll).await {
            Drain::Drained(d) => {
                event(EventType::Normal, "Drained", format!("in-flight jobs finished in {:.1}s", d.as_secs_f64()))
                    .await;
            }
            Drain::TimedOut => {
                event(
                    EventType::Warning,
                    "DrainTimedOut",
                    format!(
                        "in-flight jobs not seen finished within {}s: the kubelet ends the container at its grace period and unfinished jobs are retried",
                        ctx.config.drain_timeout.as_secs()
                    ),
                )
                .await;
            }
        }
    }
    if ctx.shutdown.is_cancelled() {
        return Outcome::Cancelled;
    }

    // 3. Verify: a pod that did not exist before becomes Ready in time.
    let deadline = Instant::now() + ctx.config.replacement_timeout;
    loop {
        let ready_new = match kube_api::list_pods(ctx).await {
            Ok(pods) => pods.iter().map(pod_status).find(|p| {
                p.ready
                    && !p.terminating
                    && !job.known_pods.contains(&p.name)
                    && (job.owner.is_none() || p.owner == job.owner)
            }),
            Err(e) => {
                tracing::debug!(error = %e, "listing pods while waiting for the replacement");
                None
            }
        };
        if let Some(p) = ready_new {
            event(EventType::Normal, "ReplacementReady", format!("replacement {} is Ready", p.name)).await;
            return Outcome::ReplacementReady;
        }
        if Instant::now() + ctx.config.replacement_poll > deadline || ctx.shutdown.is_cancelled() {
            event(
                EventType::Warning,
                "ReplacementNotReady",
                format!(
                    "no replacement became Ready within {}s: check the ReplicaSet and scheduling",
                    ctx.config.replacement_timeout.as_secs()
                ),
            )
            .await;
            return Outcome::ReplacementNotReady;
        }
        tokio::time::sleep(ctx.config.replacement_poll).await;
    }
}
