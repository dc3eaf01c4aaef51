//! Every metric the worker exports, in one place. Names are a contract (the seed's
//! names, plus operator metrics that carry their unit); labels are small fixed sets.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub mod batch_lane;
pub mod fleet;
mod labels;

pub use labels::{
    BuildLabel, KindLabel, MemoryLabel, ProviderLabel, RequestLabel, ERROR_KINDS, OVERLONG_KINDS, STATUS_CLASSES,
};

/// A gauge of floating-point values.
type GaugeF = Gauge<f64, AtomicU64>;

/// The worker's metrics.
pub struct Metrics {
    registry: Registry,
    /// worker_uptime_seconds
    pub uptime_seconds: GaugeF,
    /// worker_memory_usage_bytes{type}
    pub memory_bytes: Family<MemoryLabel, Gauge>,
    /// embedding_jobs_processed_total
    pub jobs_processed: Counter,
    /// embedding_jobs_failed_total (attempts that failed: retried or dead-lettered)
    pub jobs_failed: Counter,
    /// embedding_jobs_dead_lettered_total
    pub jobs_dead: Counter,
    /// embedding_jobs_retried_total
    pub jobs_retried: Counter,
    /// embedding_jobs_released_total
    pub jobs_released: Counter,
    /// embedding_jobs_cancelled_total
    pub jobs_cancelled: Counter,
    /// embedding_jobs_unchanged_total
    pub jobs_unchanged: Counter,
    /// embedding_lease_lost_total
    pub leases_lost: Counter,
    /// embedding_lease_reclaims_total
    pub lease_reclaims: Counter,
    /// embedding_processing_duration_seconds (one observation per batch)
    pub processing_seconds: Histogram,
    /// embedding_batch_size_jobs
    pub batch_size_jobs: Histogram,
    /// The fleet-wide queue gauges, exported by one worker at a time (`fleet.rs`).
    pub fleet: fleet::FleetGauges,
    /// embedding_queue_processing_rate
    pub processing_rate: GaugeF,
    /// embedding_inflight_jobs
    pub inflight_jobs: Gauge,
    /// embedding_worker_ready
    pub ready: Gauge,
    /// embedding_worker_errors_total{kind}
    pub errors: Family<KindLabel, Counter>,
    /// embedding_provider_requests_total{provider,status_class}
    pub provider_requests: Family<RequestLabel, Counter>,
    /// embedding_provider_tokens_total{provider}
    pub provider_tokens: Family<ProviderLabel, Counter>,
    /// embedding_provider_rate_limited_total{provider}
    pub provider_rate_limited: Family<ProviderLabel, Counter>,
    /// embedding_rate_limit_wait_seconds_total{provider}
    pub rate_limit_wait_seconds: Family<ProviderLabel, Counter<f64, AtomicU64>>,
    /// embedding_provider_request_duration_seconds
    pub provider_request_seconds: Histogram,
    /// embedding_provider_parked
    pub provider_parked: Gauge,
    /// embedding_provider_paused_seconds
    pub provider_paused_seconds: GaugeF,
    /// embedding_overlong_inputs_total{kind="truncated|rejected"}
    pub overlong_inputs: Family<KindLabel, Counter>,
    /// The batch lane's (`batch_lane.rs`).
    pub batch_lane: batch_lane::BatchLaneMetrics,
}

/// Buckets for batched API calls: 5 ms up to about 5 minutes.
fn duration_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0].into_iter()
}

impl Metrics {
    /// Registers every metric; `version`, `provider`, `model` go into `embq_build_info`.
    pub fn new(version: &str, provider: &str, model: &str) -> Self {
        let mut r = Registry::default();
        let m = Self {
            uptime_seconds: GaugeF::default(),
            memory_bytes: Family::default(),
            jobs_processed: Counter::default(),
            jobs_failed: Counter::default(),
            jobs_dead: Counter::default(),
            jobs_retried: Counter::default(),
            jobs_released: Counter::default(),
            jobs_cancelled: Counter::default(),
            jobs_unchanged: Counter::default(),
            leases_lost: Counter::default(),
            lease_reclaims: Counter::default(),
            processing_seconds: Histogram::new(duration_buckets()),
            batch_size_jobs: Histogram::new([1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2048.0]),
            fleet: Default::default(),
            processing_rate: GaugeF::default(),
            inflight_jobs: Gauge::default(),
            ready: Gauge::default(),
            errors: Family::default(),
            provider_requests: Family::default(),
            provider_tokens: Family::default(),
            provider_rate_limited: Family::default(),
            rate_limit_wait_seconds: Family::default(),
            provider_request_seconds: Histogram::new(duration_buckets()),
            provider_parked: Gauge::default(),
            provider_paused_seconds: GaugeF::default(),
            overlong_inputs: Family::default(),
            batch_lane: Default::default(),
            registry: Registry::default(),
        };
        // A gauge fixed at 1, not an OpenMetrics `info`: the Prometheus text format has no info type.
        let build: Family<BuildLabel, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabel {
                version: version.to_string(),
                provider: provider.to_string(),
                model: model.to_string(),
            })
            .set(1);
        r.register("embq_build_info", "Build and provider of this worker (always 1)", build);
        r.register("worker_uptime_seconds", "Seconds since the worker started", m.uptime_seconds.clone());
        r.register(
            "worker_memory_usage_bytes",
            "Memory: rss from the OS; heapUsed = live heap bytes; heapTotal = peak live heap bytes",
            m.memory_bytes.clone(),
        );
        r.register("embedding_jobs_processed", "Jobs completed (embedded or unchanged)", m.jobs_processed.clone());
        r.register(
            "embedding_jobs_failed",
            "Job attempts that failed (retried or dead-lettered)",
            m.jobs_failed.clone(),
        );
        r.register("embedding_jobs_dead_lettered", "Jobs moved to the dead-letter queue", m.jobs_dead.clone());
        r.register("embedding_jobs_retried", "Jobs scheduled for another attempt", m.jobs_retried.clone());
        r.register(
            "embedding_jobs_released",
            "Jobs returned to the queue without spending an attempt",
            m.jobs_released.clone(),
        );
        r.register(
            "embedding_jobs_cancelled",
            "Jobs embedded whose write-back row no longer exists: nothing stored",
            m.jobs_cancelled.clone(),
        );
        r.register(
            "embedding_jobs_unchanged",
            "Jobs completed without a provider call because text and model were unchanged",
            m.jobs_unchanged.clone(),
        );
        r.register(
            "embedding_lease_lost",
            "Job results discarded because the lease had been lost",
            m.leases_lost.clone(),
        );
        r.register(
            "embedding_lease_reclaims",
            "Jobs whose expired lease this worker reclaimed",
            m.lease_reclaims.clone(),
        );
        r.register(
            "embedding_processing_duration_seconds",
            "Time to process one batch, claim to stored",
            m.processing_seconds.clone(),
        );
        r.register("embedding_batch_size_jobs", "Jobs per processed batch", m.batch_size_jobs.clone());
        r.register_collector(Box::new(m.fleet.clone()));
        r.register(
            "embedding_queue_processing_rate",
            "Jobs completed per second by this worker over the last minute",
            m.processing_rate.clone(),
        );
        r.register("embedding_inflight_jobs", "Jobs this worker is processing", m.inflight_jobs.clone());
        r.register("embedding_worker_ready", "1 when the worker is ready to claim jobs", m.ready.clone());
        r.register("embedding_worker_errors", "Errors by kind", m.errors.clone());
        r.register("embedding_provider_requests", "Provider requests by status class", m.provider_requests.clone());
        r.register("embedding_provider_tokens", "Tokens sent to the provider", m.provider_tokens.clone());
        r.register(
            "embedding_provider_rate_limited",
            "Provider answers of 429 (throttled)",
            m.provider_rate_limited.clone(),
        );
        r.register(
            "embedding_rate_limit_wait_seconds",
            "Seconds spent waiting for rate-limit budget",
            m.rate_limit_wait_seconds.clone(),
        );
        r.register(
            "embedding_provider_request_duration_seconds",
            "Latency of one provider request",
            m.provider_request_seconds.clone(),
        );
        r.register(
            "embedding_provider_parked",
            "1 while the provider is parked (quota exhausted)",
            m.provider_parked.clone(),
        );
        r.register(
            "embedding_provider_paused_seconds",
            "Seconds left of the provider's pause (Retry-After or an exhausted rate budget; 0: none)",
            m.provider_paused_seconds.clone(),
        );
        r.register(
            "embedding_overlong_inputs",
            "Inputs longer than the model accepts, by what was done (truncated, rejected)",
            m.overlong_inputs.clone(),
        );
        m.batch_lane.register(&mut r);
        for kind in ERROR_KINDS {
            drop(m.errors.get_or_create(&KindLabel { kind }));
        }
        for kind in OVERLONG_KINDS {
            drop(m.overlong_inputs.get_or_create(&KindLabel { kind }));
        }
        Self { registry: r, ..m }
    }

    /// Gives the provider's labelled series their 0 before the first request.
    pub fn init_provider(&self, provider: &'static str) {
        for status_class in STATUS_CLASSES {
            drop(self.provider_requests.get_or_create(&RequestLabel { provider, status_class }));
        }
        let p = ProviderLabel { provider };
        drop(self.provider_tokens.get_or_create(&p));
        drop(self.provider_rate_limited.get_or_create(&p));
        drop(self.rate_limit_wait_seconds.get_or_create(&p));
    }

    /// Counts one error of a bounded kind.
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut open = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = encode(&mut open, &self.registry);
        openmetrics_to_prometheus_text(&open)
    }

    /// Every metric family name as it appears in the exposition (`embq metrics names`).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Rewrites prometheus-client's OpenMetrics output as the classic Prometheus text format:
/// OpenMetrics names a counter family without `_total` and ends with `# EOF`; the text
/// format (what `promtool check metrics` and every scraper accept) names it with the suffix.
fn openmetrics_to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open.len() + 64 * counters.len());
    for line in open.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderError;
    use crate::queue::QueueError;

    #[test]
    fn labelled_counters_read_zero_before_the_first_event() {
        let m = Metrics::new("0.1.0", "openai", "m");
        m.init_provider("openai");
        let text = m.encode();
        for sample in [
            "embedding_worker_errors_total{kind=\"database\"} 0",
            "embedding_worker_errors_total{kind=\"rejected\"} 0",
            "embedding_worker_errors_total{kind=\"rate_limited\"} 0",
            "embedding_overlong_inputs_total{kind=\"truncated\"} 0",
            "embedding_provider_requests_total{provider=\"openai\",status_class=\"5xx\"} 0",
            "embedding_provider_rate_limited_total{provider=\"openai\"} 0",
            "embedding_provider_tokens_total{provider=\"openai\"} 0",
        ] {
            assert!(text.lines().any(|l| l == sample), "{sample} missing from\n{text}");
        }
    }

    #[test]
    fn every_error_kind_the_worker_counts_is_initialised() {
        let queue = [
            QueueError::Unavailable(String::new()),
            QueueError::Schema(String::new()),
            QueueError::Invalid(String::new()),
            QueueError::Rejected(String::new()),
        ];
        let provider = [
            ProviderError::RateLimited { retry_after: None },
            ProviderError::QuotaExhausted(String::new()),
            ProviderError::TooLarge(String::new()),
            ProviderError::Transient(String::new()),
            ProviderError::InvalidInput { index: 0, message: String::new() },
            ProviderError::InvalidRequest(String::new()),
            ProviderError::InvalidResponse(String::new()),
            ProviderError::Unauthorized(String::new()),
        ];
        let kinds = queue.iter().map(QueueError::kind).chain(provider.iter().map(ProviderError::kind));
        for kind in kinds {
            assert!(ERROR_KINDS.contains(&kind), "{kind} is not in ERROR_KINDS");
        }
    }

    #[test]
    fn exposition_carries_the_seed_names() {
        let m = Metrics::new("0.1.0", "hash", "hash-v1");
        m.jobs_processed.inc_by(3);
        m.memory_bytes.get_or_create(&MemoryLabel { r#type: "rss" }).set(1);
        m.error("database");
        let text = m.encode();
        for name in [
            "worker_uptime_seconds",
            "worker_memory_usage_bytes{type=\"rss\"}",
            "embedding_jobs_processed_total 3",
            "embedding_jobs_failed_total",
            "embedding_processing_duration_seconds_bucket",
            "embedding_queue_depth",
            "embedding_queue_processing_rate",
            "embedding_worker_errors_total{kind=\"database\"} 1",
            "embq_build_info{version=\"0.1.0\",provider=\"hash\",model=\"hash-v1\"} 1",
            "# TYPE embedding_jobs_processed_total counter",
            "# HELP embedding_jobs_processed_total Jobs completed",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn names_list_counters_with_their_suffix() {
        let names = Metrics::new("v", "hash", "m").names();
        assert!(names.contains(&"embedding_jobs_processed_total".to_string()));
        assert!(names.contains(&"embq_build_info".to_string()));
        assert!(names.contains(&"worker_memory_usage_bytes".to_string()));
        assert!(names.contains(&"embedding_processing_duration_seconds".to_string()));
        assert!(!names.iter().any(|n| n.ends_with("_total_total")));
    }
}
