//! The policy's input: what one look at the fleet found, pod by pod and fleet-wide.

use std::time::Duration;

use super::Reason;

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
