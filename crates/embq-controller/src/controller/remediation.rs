//! What one tick does: metrics and Events for every decision, evictions and scaling
//! carried out, graceful restarts spawned as tracked tasks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::kube_api::{self, EventTarget, EventType, Fleet};
use crate::metrics::{ActionLabels, SuppressedLabels};
use crate::observe::PodStatus;
use crate::policy::{Action, CapacityObservation, Decision, FleetObservation, Guard, PodObservation, Reason, Verdict};
use crate::restart::{self, RestartJob};

use super::Context;

/// Carries out the decisions: metrics and Events for all, API calls for real actions,
/// graceful restarts spawned so the tick does not wait for drains.
pub(super) async fn execute(
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
    let (type_, reason, message) = match kube_api::evict(ctx, &target.name).await {
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
