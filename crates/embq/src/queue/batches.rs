//! Provider batches (the OpenAI Batch API lane) as the queue records them: the row, the limits a
//! gathering respects, and the changes a worker records as a batch moves on.
//!
//! A batch's jobs stay `running` under the batch's own lease token ([`ProviderBatch::lease`])
//! with no lease expiry: the online claim and the lease sweep never touch them, and their
//! results go through `Queue::finish` with that lease, under the same guards as online results.

use std::time::Duration;

use serde::Serialize;

use super::{BatchState, ClaimedJob, Lease};

/// The lease owner of every job inside a provider batch.
pub const BATCH_LEASE_OWNER: &str = "provider-batch";

/// A provider batch as recorded in `embq.provider_batches`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProviderBatch {
    /// Row id (also each job's `provider_batch`).
    pub id: i64,
    /// Generated before anything is uploaded; in the file name and the batch's metadata.
    pub submission_id: String,
    /// Where the batch is.
    pub state: BatchState,
    /// Model of every request in it.
    pub model: String,
    /// Requests (jobs) in its file.
    pub requests: i32,
    /// Tokens its texts were estimated at (the provider's enqueued-token limit counts these).
    pub estimated_tokens: i64,
    /// The uploaded file, once recorded.
    pub input_file_id: Option<String>,
    /// The provider's batch id, once recorded.
    pub batch_id: Option<String>,
    /// The provider's last status (`validating`, `in_progress`, `completed`, `expired`, ...).
    pub provider_status: Option<String>,
    /// Results file.
    pub output_file_id: Option<String>,
    /// Per-line errors file.
    pub error_file_id: Option<String>,
    /// Why the last step failed, or why the provider failed the batch.
    pub last_error: Option<String>,
}

impl ProviderBatch {
    /// The lease its jobs are held under.
    pub fn lease(&self) -> Lease {
        lease_of(&self.submission_id)
    }

    /// The name its input file is uploaded under, which finds an orphan upload again.
    pub fn file_name(&self) -> String {
        format!("embq-{}.jsonl", self.submission_id)
    }
}

/// The lease of the jobs of submission `submission_id`.
pub fn lease_of(submission_id: &str) -> Lease {
    Lease { owner: BATCH_LEASE_OWNER.to_string(), token: format!("batch:{submission_id}") }
}

/// How much one gathering may take, and who holds the batch it records.
#[derive(Debug, Clone, Copy)]
pub struct GatherLimits<'a> {
    /// The worker that goes on to upload it (the batch is leased to it).
    pub owner: &'a str,
    /// How long that lease lasts unless renewed.
    pub lease: Duration,
    /// Most requests (jobs) in the file.
    pub max_requests: usize,
    /// Most bytes of the file.
    pub max_bytes: u64,
    /// The model's enqueued-token limit: the estimated tokens of its batches not yet ended at the
    /// provider, this one included, stay within it. Read and taken under one lock, so workers
    /// gathering at once never overshoot it together. With no batch open, the first job goes
    /// even if it alone is over (a huge text must not hold the lane up for ever).
    pub max_tokens: u64,
}

/// What one job costs in a batch file: its JSONL line's bytes and its estimated tokens.
pub type Sizer<'a> = dyn Fn(&ClaimedJob) -> (u64, u64) + Send + Sync + 'a;

/// What a gathering took.
#[derive(Debug, Clone)]
pub struct Gathered {
    /// The recorded batch, `None` when no job needed sending.
    pub batch: Option<ProviderBatch>,
    /// Its jobs, in id order.
    pub jobs: Vec<ClaimedJob>,
    /// Jobs whose vector was already current: completed without being sent.
    pub unchanged: u64,
}

/// A change to a leased batch; `None` fields keep their value.
#[derive(Debug, Clone, Default)]
pub struct BatchUpdate {
    /// New state.
    pub state: Option<BatchState>,
    /// The uploaded file.
    pub input_file_id: Option<String>,
    /// The provider's batch id.
    pub batch_id: Option<String>,
    /// The provider's status.
    pub provider_status: Option<String>,
    /// Results file.
    pub output_file_id: Option<String>,
    /// Per-line errors file.
    pub error_file_id: Option<String>,
    /// Lines stored.
    pub completed: Option<i64>,
    /// Lines failed.
    pub failed: Option<i64>,
    /// Tokens the provider billed (its `usage`).
    pub billed_tokens: Option<i64>,
    /// Why the last step failed (`Some("")` clears it).
    pub last_error: Option<String>,
    /// When the batch is next due for a worker (from now).
    pub check_in: Duration,
    /// Gives the batch's lease up (the step is over).
    pub release: bool,
}

/// Provider batches and jobs per lane, for `embq queue stats`.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct LaneStats {
    /// Ready (due) jobs per lane: `(lane, count)`.
    pub ready_by_lane: Vec<(String, u64)>,
    /// Jobs inside open provider batches.
    pub in_batches: u64,
    /// Provider batches per state: `(state, count)`.
    pub batches_by_state: Vec<(String, u64)>,
    /// Estimated tokens held by batches not yet ended at the provider.
    pub enqueued_tokens: u64,
    /// Tokens billed at batch price, all batches.
    pub billed_tokens: u64,
}
