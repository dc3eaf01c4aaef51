//! The label sets of the worker's metrics, and the fixed values each label takes.

use prometheus_client::encoding::EncodeLabelSet;

/// `type` label of `worker_memory_usage_bytes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemoryLabel {
    /// rss | heapUsed | heapTotal
    pub r#type: &'static str,
}

/// Labels of `embq_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    /// embq version.
    pub version: String,
    /// Provider name.
    pub provider: String,
    /// Model name.
    pub model: String,
}

/// `kind` label of error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// A bounded error kind.
    pub kind: &'static str,
}

/// `provider` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// Provider name.
    pub provider: &'static str,
}

/// Provider request labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// Provider name.
    pub provider: &'static str,
    /// 2xx | 4xx | 429 | 5xx | error
    pub status_class: &'static str,
}

/// Every `kind` of `embedding_worker_errors_total`: the store's and the provider's error kinds.
/// Each has a series from the start (at 0), so `rate()` and alerts see 0 rather than nothing.
pub const ERROR_KINDS: &[&str] = &[
    "database",
    "rejected",
    "schema",
    "invalid",
    "rate_limited",
    "quota_exhausted",
    "too_large",
    "transient",
    "invalid_input",
    "invalid_request",
    "invalid_response",
    "unauthorized",
];

/// Every `status_class` of `embedding_provider_requests_total`.
pub const STATUS_CLASSES: &[&str] = &["2xx", "4xx", "429", "5xx"];

/// Every `kind` of `embedding_overlong_inputs_total`.
pub const OVERLONG_KINDS: &[&str] = &["truncated", "rejected"];
