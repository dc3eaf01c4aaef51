//! The batch lane's metrics (OpenAI Batch API): batches by what happened to them, the jobs and
//! tokens they hold, and the tokens billed at batch price. Registered with the others in
//! [`crate::metrics::Metrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `state` label of the batch counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchStateLabel {
    /// collected | failed | expired | cancelled
    pub state: &'static str,
}

/// `lane` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// online | batch
    pub lane: &'static str,
}

/// How a batch ended, as counted.
pub const ENDED_STATES: &[&str] = &["collected", "failed", "expired", "cancelled"];

/// The batch lane's metrics.
#[derive(Default)]
pub struct BatchLaneMetrics {
    /// embedding_batch_lane_batches_submitted_total
    pub submitted: Counter,
    /// embedding_batch_lane_batches_ended_total{state}
    pub ended: Family<BatchStateLabel, Counter>,
    /// embedding_batch_lane_batches_in_progress
    pub in_progress: Gauge,
    /// embedding_batch_lane_jobs_in_batches
    pub jobs_in_batches: Gauge,
    /// embedding_queue_ready_jobs_by_lane{lane}
    pub ready_by_lane: Family<LaneLabel, Gauge>,
    /// embedding_batch_lane_enqueued_tokens
    pub enqueued_tokens: Gauge,
    /// embedding_batch_lane_billed_tokens_total
    pub billed_tokens: Counter,
}

impl BatchLaneMetrics {
    /// Registers every series in `r`, the labelled ones at 0.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "embedding_batch_lane_batches_submitted",
            "Provider batches created (OpenAI Batch API)",
            self.submitted.clone(),
        );
        r.register(
            "embedding_batch_lane_batches_ended",
            "Provider batches whose results were stored, by how they ended",
            self.ended.clone(),
        );
        r.register(
            "embedding_batch_lane_batches_in_progress",
            "Provider batches recorded and not yet collected",
            self.in_progress.clone(),
        );
        r.register(
            "embedding_batch_lane_jobs_in_batches",
            "Jobs inside provider batches not yet collected",
            self.jobs_in_batches.clone(),
        );
        r.register("embedding_queue_ready_jobs_by_lane", "Jobs ready to run now, by lane", self.ready_by_lane.clone());
        r.register(
            "embedding_batch_lane_enqueued_tokens",
            "Estimated tokens held by batches not yet ended at the provider (the enqueued-token limit)",
            self.enqueued_tokens.clone(),
        );
        r.register(
            "embedding_batch_lane_billed_tokens",
            "Tokens billed at batch price (usage of the stored result lines)",
            self.billed_tokens.clone(),
        );
        for state in ENDED_STATES {
            drop(self.ended.get_or_create(&BatchStateLabel { state }));
        }
        for lane in ["online", "batch"] {
            drop(self.ready_by_lane.get_or_create(&LaneLabel { lane }));
        }
    }
}
