//! The fleet-wide queue gauges (depth by state, oldest ready age): counted by one worker at a
//! time, so the database answers one stats query per interval however many replicas run.
//!
//! The other workers keep the families in their exposition (HELP and TYPE, so dashboards and
//! `embq metrics names` see them) with no sample: `sum()`/`max()` over the fleet then read the
//! one exporter's values, never a stale copy from a replica that lost the lease.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::TypedMetric;

use crate::queue::QueueStats;

/// The queue gauges and whether this worker exports them.
#[derive(Debug, Clone, Default)]
pub struct FleetGauges {
    /// embedding_queue_depth
    pub queue_depth: Gauge,
    /// embedding_queue_scheduled_jobs
    pub queue_scheduled: Gauge,
    /// embedding_queue_running_jobs
    pub queue_running: Gauge,
    /// embedding_dead_letter_jobs
    pub dead_letter_jobs: Gauge,
    /// embedding_queue_oldest_ready_age_seconds
    pub oldest_ready_age_seconds: Gauge<f64, AtomicU64>,
    /// Until when this worker's counts may be exported: the end of the fleet-stats lease it
    /// holds, as measured from before it was taken, so it ends no later than the database's
    /// (a worker that stalls stops exporting before another can take over); `None` when withdrawn.
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl FleetGauges {
    /// Records fresh counts and exports them until `valid_until`.
    pub fn publish(&self, s: &QueueStats, valid_until: Instant) {
        self.queue_depth.set(s.ready as i64);
        self.queue_scheduled.set(s.scheduled as i64);
        self.queue_running.set(s.running as i64);
        self.dead_letter_jobs.set(s.dead as i64);
        self.oldest_ready_age_seconds.set(s.oldest_ready_age_seconds.unwrap_or(0.0));
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(valid_until);
    }

    /// Stops exporting: another worker holds the lease, or the counts could not be refreshed.
    pub fn withdraw(&self) {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether this worker exports the gauges now.
    pub fn exporting(&self) -> bool {
        self.valid_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| Instant::now() < t)
    }
}

/// Writes one family: always its descriptor, its sample only while exporting.
fn family(
    encoder: &mut DescriptorEncoder,
    exporting: bool,
    name: &str,
    help: &str,
    metric: &(impl EncodeMetric + TypedMetric),
) -> Result<(), std::fmt::Error> {
    // The registry appends a full stop to help texts; so does this, for identical lines.
    let m = encoder.encode_descriptor(name, &format!("{help}."), None, metric.metric_type())?;
    if exporting {
        metric.encode(m)?;
    }
    Ok(())
}

impl Collector for FleetGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let on = self.exporting();
        family(&mut encoder, on, "embedding_queue_depth", "Jobs ready to run now", &self.queue_depth)?;
        family(
            &mut encoder,
            on,
            "embedding_queue_scheduled_jobs",
            "Jobs waiting for a retry time",
            &self.queue_scheduled,
        )?;
        family(&mut encoder, on, "embedding_queue_running_jobs", "Jobs leased to any worker", &self.queue_running)?;
        family(
            &mut encoder,
            on,
            "embedding_dead_letter_jobs",
            "Jobs in the dead-letter queue",
            &self.dead_letter_jobs,
        )?;
        family(
            &mut encoder,
            on,
            "embedding_queue_oldest_ready_age_seconds",
            "How long the oldest ready job has waited",
            &self.oldest_ready_age_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn only_the_exporter_carries_samples_and_every_worker_the_families() {
        let m = Metrics::new("0.1.0", "hash", "hash-v1");
        let stats = QueueStats { ready: 7, dead: 2, oldest_ready_age_seconds: Some(3.5), ..Default::default() };
        let text = m.encode();
        assert!(text.contains("# TYPE embedding_queue_depth gauge"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("embedding_queue_depth ")), "no sample before publishing");
        let later = Instant::now() + std::time::Duration::from_secs(60);
        m.fleet.publish(&stats, later);
        let text = m.encode();
        for sample in
            ["embedding_queue_depth 7", "embedding_dead_letter_jobs 2", "embedding_queue_oldest_ready_age_seconds 3.5"]
        {
            assert!(text.lines().any(|l| l == sample), "{sample} missing from\n{text}");
        }
        m.fleet.withdraw();
        let text = m.encode();
        assert!(!text.lines().any(|l| l.starts_with("embedding_queue_depth ")), "withdrawn:\n{text}");
        assert!(m.names().contains(&"embedding_queue_oldest_ready_age_seconds".to_string()));
        m.fleet.publish(&stats, Instant::now());
        assert!(!m.fleet.exporting(), "counts whose lease has run out are not exported");
    }
}
