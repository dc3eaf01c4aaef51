//! embq-controller: the worker restart controller.
//!
//! Every tick the leader lists the worker pods, reads their Deployment and autoscaler,
//! scrapes each worker's /health and /metrics, asks the pure policy what to do and
//! carries that out through the Kubernetes API, recording an Event and a metric for
//! every action.
//!
//! - [`config`]: flags and environment variables, validated once.
//! - [`policy`]: pure decisions (observations in, actions out) with every guard.
//! - [`observe`]: pod status, Prometheus text and per-pod windows turned into policy inputs.
//! - [`worker`]: HTTP calls to a worker (/health, /metrics, drain wait).
//! - [`kube_api`]: reads and writes through the Kubernetes API (fleet, events, eviction, scaling).
//! - [`leader`]: leader election through a coordination.k8s.io Lease.
//! - [`restart`]: the graceful restart sequence (evict, watch the drain, wait for the replacement).
//! - [`controller`]: the shared [`controller::Context`], `reconcile`, `error_policy` and the run loop.
//! - [`metrics`]: the controller's own metrics; [`http`]: its /health and /metrics.

pub mod config;
pub mod controller;
pub mod http;
pub mod kube_api;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod restart;
pub mod worker;

/// Errors of one tick. None is fatal: the run loop backs off and tries again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] Box<kube::Error>),
    #[error("worker: {0}")]
    Worker(String),
    #[error("deployment {0} not found")]
    DeploymentMissing(String),
    #[error("setup: {0}")]
    Setup(String),
    #[error("tick did not finish within its deadline of {0:?}")]
    Deadline(std::time::Duration),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(Box::new(e))
    }
}

impl Error {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Worker(_) => "worker",
            Error::DeploymentMissing(_) => "deployment_missing",
            Error::Setup(_) => "setup",
            Error::Deadline(_) => "deadline",
        }
    }
}
