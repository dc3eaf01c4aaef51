//! Pure decisions: what the fleet looks like in, what to do about it out.
//!
//! Nothing here talks to Kubernetes or to a worker, reads a clock or holds a lock:
//! [`decide`] takes the observations, the thresholds ([`Limits`]) and what was done
//! before ([`Memory`]) and returns a list of [`Decision`]s with every guard already
//! applied (cooldowns, the fleet-wide cap, the disruption budget, dry-run). The
//! caller then records them with [`Memory::record`]. Time is passed in as `now`, so the
//! tables below can replay any history.

use std::collections::HashMap;
use std::fmt;
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

/// A critical condition that Kubernetes reports about a pod's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Critical {
    /// ErrImagePull / ImagePullBackOff / InvalidImageName.
    ImagePull,
    /// CrashLoopBackOff that is not an OOM kill.
    CrashLoop { restarts: i32 },
    /// The container's last termination was OOMKilled. `fresh` when the restart
    /// count moved since the previous look (a new kill, not an old one remembered).
    OomKilled { restarts: i32, fresh: bool },
}

/// What one look found about one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodObservation {
    pub name: String,
    pub ready: bool,
    pub critical: Option<Critical>,
    /// How long /health has answered "unhealthy" without a success in between
    /// (timeouts and connection errors are unknown, not failures).
    pub health_failing_for: Option<Duration>,
    /// The container's restart count moved since the previous look: the kubelet saw it fail.
    pub restarts_moved: bool,
    /// Failed / finished jobs over the window, only when enough jobs finished.
    pub error_rate: Option<f64>,
    /// p95 of processing duration over the window, only when enough jobs finished.
    pub p95_seconds: Option<f64>,
    /// The owning ReplicaSet: a replacement pod has a new name but the same owner.
    pub owner: Option<String>,
    /// The pod-template-hash label: which template (rollout step, canary) the pod runs.
    pub template: Option<String>,
}

impl PodObservation {
    pub fn healthy(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ready: true,
            critical: None,
            health_failing_for: None,
            restarts_moved: false,
            error_rate: None,
            p95_seconds: None,
            owner: None,
            template: None,
        }
    }
}

/// Who scales the worker Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleKind {
    /// An autoscaling/v2 HorizontalPodAutoscaler: the controller moves `spec.minReplicas`.
    Hpa,
    /// A KEDA ScaledObject: the controller moves `spec.minReplicaCount`.
    ScaledObject,
}

/// The autoscaler whose minimum the controller may give back (never a Deployment's replicas).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleTarget {
    pub kind: ScaleKind,
    /// The autoscaler's minimum.
    pub current: i32,
    /// The value before the controller first raised it (kept in an annotation).
    pub original: Option<i32>,
}

/// Fleet-wide capacity signals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CapacityObservation {
    pub target: Option<ScaleTarget>,
    /// Why the fleet is under pressure now, if it is.
    pub pressure: Option<Reason>,
    /// How long the pressure has lasted without a break.
    pub pressure_for: Option<Duration>,
    /// How long the fleet has been free of pressure.
    pub calm_for: Option<Duration>,
    /// The provider answered 429 or workers waited for rate-limit budget in the window.
    pub rate_limited: bool,
}

/// Everything one look at the fleet found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetObservation {
    pub pods: Vec<PodObservation>,
    /// The Deployment's rolling-update maxUnavailable, resolved to a pod count.
    pub max_unavailable: u32,
    /// Pods whose graceful restart is still running.
    pub in_flight: Vec<String>,
    pub capacity: CapacityObservation,
}

/// What the controller does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// An Event and a metric; nothing changes in the cluster.
    Report,
    /// Evict the pod through the Eviction API (PDBs apply); no drain, it is not serving.
    Evict,
    /// Evict (SIGTERM drains the worker), watch the drain, check the replacement is Ready.
    GracefulRestart,
    /// Give the autoscaler's minimum back to the value before an earlier version raised it.
    ScaleDown,
    /// Pressure is there but adding pods would not help (provider rate limit).
    HoldScale,
}

/// Why: the failure class and signal behind an action. Bounded, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ImagePull,
    CrashLoop,
    OomKilled,
    OomRepeated,
    HealthCheck,
    ErrorRate,
    SlowProcessing,
    QueueDepth,
    Saturation,
    RateLimited,
    PressureGone,
}

impl Action {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Report => "report",
            Action::Evict => "evict",
            Action::GracefulRestart => "graceful_restart",
            Action::ScaleDown => "scale_down",
            Action::HoldScale => "hold_scale",
        }
    }
}

impl Reason {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ImagePull => "image_pull",
            Reason::CrashLoop => "crash_loop",
            Reason::OomKilled => "oom_killed",
            Reason::OomRepeated => "oom_repeated",
            Reason::HealthCheck => "health_check",
            Reason::ErrorRate => "error_rate",
            Reason::SlowProcessing => "slow_processing",
            Reason::QueueDepth => "queue_depth",
            Reason::Saturation => "saturation",
            Reason::RateLimited => "rate_limited",
            Reason::PressureGone => "pressure_gone",
        }
    }

    /// The Event reason (CamelCase, as Kubernetes shows them).
    pub fn event_reason(self) -> &'static str {
        match self {
            Reason::ImagePull => "ImagePullFailure",
            Reason::CrashLoop => "CrashLoop",
            Reason::OomKilled => "OOMKilled",
            Reason::OomRepeated => "MemoryLimitTooLow",
            Reason::HealthCheck => "HealthCheckFailing",
            Reason::ErrorRate => "HighErrorRate",
            Reason::SlowProcessing => "SlowProcessing",
            Reason::QueueDepth => "QueueBacklog",
            Reason::Saturation => "WorkersSaturated",
            Reason::RateLimited => "ProviderRateLimited",
            Reason::PressureGone => "PressureGone",
        }
    }
}

/// Why a decided action was not carried out. Bounded, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guard {
    Cooldown,
    ActionCap,
    DisruptionBudget,
    /// Too few pods would stay Ready: the fleet as a whole is unwell, not this pod.
    ReadyFloor,
    /// Most judged pods show the same signal: a shared cause (provider, database), not this pod.
    SharedCause,
    /// The pod runs another template than the Ready majority (a canary, a rollout): its
    /// Deployment's rollout decides about it, not a restart.
    OtherTemplate,
    /// The pause switch is on: the controller only reports.
    Paused,
}

impl Guard {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Guard::Cooldown => "cooldown",
            Guard::ActionCap => "action_cap",
            Guard::DisruptionBudget => "disruption_budget",
            Guard::ReadyFloor => "ready_floor",
            Guard::SharedCause => "shared_cause",
            Guard::OtherTemplate => "other_template",
            Guard::Paused => "paused",
        }
    }
}

/// Whether a decision is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Act,
    /// Dry-run: log and emit a "would ..." Event only.
    DryRun,
    Suppressed(Guard),
    /// Held back by a fleet-level guard, and said so with a `RemediationSkipped` Event
    /// (once per cooldown; later looks give `Suppressed`).
    Skipped(Guard),
}

/// What an action is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Pod(String),
    Fleet,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Pod(p) => write!(f, "pod/{p}"),
            Subject::Fleet => f.write_str("fleet"),
        }
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub subject: Subject,
    pub action: Action,
    pub reason: Reason,
    pub verdict: Verdict,
    /// The new replica count (or minimum) for scale actions.
    pub scale_to: Option<i32>,
    /// What the disruption cooldown is keyed by: the owning ReplicaSet, else the pod.
    pub cooldown_key: Option<String>,
}

impl Decision {
    pub fn carried_out(&self) -> bool {
        matches!(self.verdict, Verdict::Act | Verdict::DryRun)
    }
    pub fn pod(&self) -> Option<&str> {
        match &self.subject {
            Subject::Pod(p) => Some(p),
            Subject::Fleet => None,
        }
    }
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
mod memory;
mod persist;
pub use capacity::{decide_capacity, PressureTracker};
pub use memory::Memory;
pub use persist::MEMORY_ANNOTATION;

#[cfg(test)]
mod tests;
