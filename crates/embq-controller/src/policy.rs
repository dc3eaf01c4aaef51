//! Pure decisions: what the fleet looks like in, what to do about it out.
//!
//! Nothing here talks to Kubernetes or to a worker, reads a clock or holds a lock:
//! [`decide`] takes the observations, the thresholds ([`Limits`]) and what was done
//! before ([`Memory`]) and returns a list of [`Decision`]s with every guard already
//! applied (cooldowns, the fleet-wide cap, the disruption budget, dry-run). The
//! caller then records them with [`Memory::record`]. Time is passed in as `now`, so the
//! tables below can replay any history. The input types are in `policy/observation.rs`, the
//! output types in `policy/decision.rs`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Thresholds and guards, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub health_failure_after: Duration,
    pub error_rate_max: f64,
    pub p95_max_seconds: f64,
    pub crash_loop_restarts: i32,
    pub oom_repeat: i32,
    pub pod_cooldown: Duration,
    pub max_actions: u32,
    pub action_window: Duration,
    pub max_disrupted: u32,
    pub pressure_window: Duration,
    pub calm_window: Duration,
    pub scale_cooldown: Duration,
    pub signal_window: Duration,
    /// Share of the fleet that must stay Ready after a remediation (0.51: a majority).
    pub min_ready_share: f64,
    /// Ready pods that must stay after a remediation, whatever the share.
    pub min_ready_pods: u32,
    pub dry_run: bool,
}

/// Holds back every action but reports (the pause switch): nothing is recorded, so
/// lifting the pause brings the held actions back at once.
pub fn pause(decisions: &mut [Decision]) {
    for d in decisions.iter_mut().filter(|d| d.action != Action::Report && d.carried_out()) {
        d.verdict = Verdict::Suppressed(Guard::Paused);
    }
}

/// Decides every action for one look at the fleet, guards applied.
pub fn decide(fleet: &FleetObservation, limits: &Limits, memory: &Memory, now: Instant) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut candidates: Vec<(u8, &PodObservation, Action, Reason)> = Vec::new();

    // A crash loop on one pod while others serve may be local to that pod or its node
    // (a bad node, a corrupt emptyDir): rescheduling it can help. On several pods it is
    // the image or the config, and deleting pods only resets the kubelet's back-off.
    let crash_looping = fleet.pods.iter().filter(|p| matches!(p.critical, Some(Critical::CrashLoop { .. }))).count();
    let others_ready = fleet.pods.iter().filter(|p| p.ready).count();
    let mut signalled: Vec<(&PodObservation, u8, Reason)> = Vec::new();

    for pod in &fleet.pods {
        if fleet.in_flight.iter().any(|n| n == &pod.name) {
            continue;
        }
        match pod.critical {
            Some(Critical::ImagePull) => report(&mut out, pod, Reason::ImagePull, limits, memory, now),
            Some(Critical::OomKilled { restarts, fresh }) => {
                // A restart cannot raise a memory limit: say so, once per kill.
                if fresh {
                    let reason = if restarts >= limits.oom_repeat { Reason::OomRepeated } else { Reason::OomKilled };
                    report(&mut out, pod, reason, limits, memory, now);
                }
            }
            Some(Critical::CrashLoop { restarts }) => {
                report(&mut out, pod, Reason::CrashLoop, limits, memory, now);
                if restarts >= limits.crash_loop_restarts && crash_looping == 1 && others_ready > 0 {
                    candidates.push((0, pod, Action::Evict, Reason::CrashLoop));
                }
            }
            None => {
                if let Some((rank, reason)) = pod_signal(pod, limits) {
                    signalled.push((pod, rank, reason));
                }
            }
        }
    }

    // A signal on most of the pods that could show it has a shared cause (the provider,
    // the database, the network between the controller and the pods): restarting the
    // pods one by one would not fix it and would only take capacity away.
    for (pod, rank, reason) in signalled {
        let judged = fleet
            .pods
            .iter()
            .filter(|p| p.critical.is_none() && !fleet.in_flight.contains(&p.name))
            .filter(|p| match reason {
                Reason::ErrorRate => p.error_rate.is_some(),
                Reason::SlowProcessing => p.p95_seconds.is_some(),
                _ => true,
            })
            .count();
        let showing = fleet.pods.iter().filter(|p| pod_signal(p, limits).is_some_and(|(_, r)| r == reason)).count();
        if showing * 2 > judged {
            skip(&mut out, pod, reason, Guard::SharedCause, limits, memory, now);
            continue;
        }
        match reason {
            // Failing or slow jobs while the provider throttles us are the provider's
            // doing: a restart would not fix them, so report instead.
            Reason::ErrorRate | Reason::SlowProcessing if fleet.capacity.rate_limited => {
                report(&mut out, pod, reason, limits, memory, now)
            }
            _ => candidates.push((rank, pod, Action::GracefulRestart, reason)),
        }
    }

    // Most severe first, then by name so the order is stable between looks.
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.name.cmp(&b.1.name)));
    let mut used = memory.disruptions_in_window(now, limits.action_window);
    let allowed = limits.max_disrupted.min(fleet.max_unavailable) as usize;
    // Pods not Ready are already unavailable; restarts in flight count until they end.
    let mut disrupted = fleet.pods.iter().filter(|p| !p.ready).count()
        + fleet.in_flight.iter().filter(|n| fleet.pods.iter().any(|p| &p.name == *n && p.ready)).count();
    // Ready pods that keep serving: not counting those being restarted.
    let total = fleet.pods.len();
    let mut serving = fleet.pods.iter().filter(|p| p.ready && !fleet.in_flight.contains(&p.name)).count();
    let majority = majority_template(fleet);
    let mut acted_sets = std::collections::HashSet::new();
    for (_, pod, action, reason) in candidates {
        let (name, ready) = (pod.name.as_str(), pod.ready);
        let key = pod.owner.clone().unwrap_or_else(|| name.to_owned());
        let after = serving - usize::from(ready);
        let floor_kept =
            after >= limits.min_ready_pods as usize && after as f64 >= limits.min_ready_share * total as f64;
        let other_template = pod.template.as_ref().zip(majority).is_some_and(|(t, m)| t != m);
        let subject = Subject::Pod(name.to_owned());
        let verdict = if !memory.disruption_cooled(&key, now, limits.pod_cooldown)
            || acted_sets.contains(&key)
            || (action == Action::Evict && memory.evicted_sets.contains_key(&key))
        {
            Verdict::Suppressed(Guard::Cooldown)
        } else if other_template {
            skipped(&subject, reason, Guard::OtherTemplate, limits, memory, now)
        } else if !floor_kept {
            skipped(&subject, reason, Guard::ReadyFloor, limits, memory, now)
        } else if used >= limits.max_actions as usize {
            Verdict::Suppressed(Guard::ActionCap)
        } else if ready && disrupted >= allowed {
            Verdict::Suppressed(Guard::DisruptionBudget)
        } else {
            used += 1;
            acted_sets.insert(key.clone());
            if ready {
                disrupted += 1;
                serving -= 1;
            }
            act(limits)
        };
        out.push(Decision { subject, action, reason, verdict, scale_to: None, cooldown_key: Some(key) });
    }

    if let Some(d) = decide_capacity(&fleet.capacity, limits, memory, now) {
        out.push(d);
    }
    out
}

fn act(limits: &Limits) -> Verdict {
    if limits.dry_run {
        Verdict::DryRun
    } else {
        Verdict::Act
    }
}

/// The pod template most Ready pods run, when one has a strict plurality.
fn majority_template(fleet: &FleetObservation) -> Option<&str> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in fleet.pods.iter().filter(|p| p.ready).filter_map(|p| p.template.as_deref()) {
        *counts.entry(t).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    match ranked.as_slice() {
        [(t, n), (_, m), ..] if n > m => Some(t),
        [(t, _)] => Some(t),
        _ => None,
    }
}

/// The restart-worthy signal of a pod without a critical state, most severe first.
/// /health counts only where the kubelet agrees (not Ready, or its restart count moved):
/// a slow or unreachable /health alone is the controller's view, not the pod's state.
fn pod_signal(pod: &PodObservation, limits: &Limits) -> Option<(u8, Reason)> {
    if pod.critical.is_some() {
        None
    } else if pod.health_failing_for.is_some_and(|d| d >= limits.health_failure_after)
        && (!pod.ready || pod.restarts_moved)
    {
        Some((1, Reason::HealthCheck))
    } else if pod.error_rate.is_some_and(|r| r > limits.error_rate_max) {
        Some((2, Reason::ErrorRate))
    } else if pod.p95_seconds.is_some_and(|s| s > limits.p95_max_seconds) {
        Some((3, Reason::SlowProcessing))
    } else {
        None
    }
}

/// `Skipped` (with an Event) once per cooldown for a lasting condition, quietly `Suppressed` between.
fn skipped(subject: &Subject, reason: Reason, guard: Guard, limits: &Limits, memory: &Memory, now: Instant) -> Verdict {
    if memory.report_cooled(&(subject.clone(), reason), now, limits.pod_cooldown) {
        Verdict::Skipped(guard)
    } else {
        Verdict::Suppressed(guard)
    }
}

fn skip(
    out: &mut Vec<Decision>,
    pod: &PodObservation,
    reason: Reason,
    guard: Guard,
    limits: &Limits,
    memory: &Memory,
    now: Instant,
) {
    let subject = Subject::Pod(pod.name.clone());
    let verdict = skipped(&subject, reason, guard, limits, memory, now);
    out.push(Decision {
        subject,
        action: Action::GracefulRestart,
        reason,
        verdict,
        scale_to: None,
        cooldown_key: pod.owner.clone(),
    });
}

fn report(
    out: &mut Vec<Decision>,
    pod: &PodObservation,
    reason: Reason,
    limits: &Limits,
    memory: &Memory,
    now: Instant,
) {
    let subject = Subject::Pod(pod.name.clone());
    let verdict = if memory.report_cooled(&(subject.clone(), reason), now, limits.pod_cooldown) {
        act(limits)
    } else {
        Verdict::Suppressed(Guard::Cooldown)
    };
    out.push(Decision { subject, action: Action::Report, reason, verdict, scale_to: None, cooldown_key: None });
}

mod capacity;
mod decision;
mod memory;
mod observation;
mod persist;
pub use capacity::{decide_capacity, PressureTracker};
pub use decision::{Action, Decision, Guard, Reason, Subject, Verdict};
pub use memory::Memory;
pub use observation::{CapacityObservation, Critical, FleetObservation, PodObservation, ScaleKind, ScaleTarget};
pub use persist::MEMORY_ANNOTATION;

#[cfg(test)]
mod tests;
