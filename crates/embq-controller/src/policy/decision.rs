//! The policy's output: a decision is an action, its reason, its subject and the
//! verdict the guards gave it. Actions, reasons and guards are bounded metric labels.

use std::fmt;

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
