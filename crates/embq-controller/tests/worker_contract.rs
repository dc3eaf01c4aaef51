//! The controller reads what the worker exports: a real worker registry, encoded as the
//! worker serves it on `/metrics`, parsed by the controller's reader. A metric renamed on
//! either side reads as 0 here and fails the test.

use std::time::{Duration, Instant};

use embq::metrics::{Metrics, ProviderLabel};
use embq::queue::QueueStats;
use embq_controller::observe::parse_worker_metrics;

#[test]
fn every_metric_the_controller_reads_is_exported_by_the_worker() {
    let m = Metrics::new("test", "openai", "text-embedding-3-small");
    m.init_provider("openai");
    let provider = ProviderLabel { provider: "openai" };
    m.jobs_processed.inc_by(7);
    m.jobs_failed.inc_by(2);
    m.provider_rate_limited.get_or_create(&provider).inc_by(3);
    m.rate_limit_wait_seconds.get_or_create(&provider).inc_by(1.5);
    // Exported by the worker holding the fleet-stats lease (the others export no sample).
    m.fleet.publish(&QueueStats { ready: 42, ..Default::default() }, Instant::now() + Duration::from_secs(60));
    m.inflight_jobs.set(4);
    m.processing_seconds.observe(0.2);
    m.processing_seconds.observe(12.0);

    let seen = parse_worker_metrics(&m.encode());
    assert_eq!(seen.processed, 7.0, "embedding_jobs_processed_total");
    assert_eq!(seen.failed, 2.0, "embedding_jobs_failed_total");
    assert_eq!(seen.rate_limited, 3.0, "embedding_provider_rate_limited_total");
    assert_eq!(seen.rate_limit_wait_seconds, 1.5, "embedding_rate_limit_wait_seconds_total");
    assert_eq!(seen.queue_depth, Some(42.0), "embedding_queue_depth");
    assert_eq!(seen.inflight, Some(4.0), "embedding_inflight_jobs");
    // embedding_processing_duration_seconds_bucket: cumulative counts by upper bound.
    let count_at = |le: f64| seen.duration_buckets.iter().find(|(b, _)| *b == le).map(|(_, c)| *c);
    assert_eq!(count_at(0.25), Some(1.0), "{:?}", seen.duration_buckets);
    assert_eq!(count_at(30.0), Some(2.0), "{:?}", seen.duration_buckets);
    assert_eq!(count_at(f64::INFINITY), Some(2.0), "{:?}", seen.duration_buckets);
}
