//! Turning raw observations into policy inputs: the pod status a kubelet reports
//! ([`pod_state`]), the Prometheus text a worker serves ([`scrape`]), and per-pod
//! histories over a window ([`history`]).

pub mod history;
pub mod pod_state;
pub mod scrape;

pub use history::{PodHistory, Sample, WindowSignals};
pub use pod_state::{pod_status, PodStatus};
pub use scrape::{parse_worker_metrics, quantile_between, WorkerMetrics, OUTSIDE_ERROR_KINDS};
