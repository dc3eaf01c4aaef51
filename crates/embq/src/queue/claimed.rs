//! A claimed job, the lease that proves it is this worker's, how it ends, and what
//! `finish` and the lease sweep report.

use std::time::Duration;

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Job id.
    pub id: i64,
    /// Source type.
    pub source_type: String,
    /// Source id.
    pub source_id: String,
    /// Content type.
    pub content_type: String,
    /// Text to embed.
    pub text: String,
    /// This is attempt number `attempt` (1-based).
    pub attempt: u32,
    /// Priority.
    pub priority: i32,
    /// The stored embedding already matches this text and model: the claim itself marked the job
    /// done (no lease is held on it), so it needs no provider call and no `finish`.
    pub unchanged: bool,
}

/// Proof that a set of jobs is leased to this worker; `finish` checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The worker holding the lease.
    pub owner: String,
    /// Unique per claim.
    pub token: String,
}

/// How a claimed job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Embedded: store this vector and mark done.
    Done(Vec<f32>),
    /// Stored embedding is current: mark done without writing.
    Unchanged,
    /// Failed; try again after the delay (an attempt was spent).
    Retry {
        /// Delay before the job is ready again.
        after: Duration,
        /// Why it failed.
        error: String,
    },
    /// Failed for good.
    Dead(String),
    /// Not processed (shutdown, throttling): back to ready without spending an attempt.
    Released {
        /// Delay before the job is ready again.
        after: Duration,
    },
}

/// What `finish` applied; jobs whose lease was lost are not counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FinishReport {
    /// Marked done with a new vector.
    pub stored: u64,
    /// Marked done unchanged.
    pub unchanged: u64,
    /// Scheduled for retry.
    pub retried: u64,
    /// Dead-lettered.
    pub dead: u64,
    /// Released.
    pub released: u64,
    /// Superseded by a newer pending job for the same key.
    pub superseded: u64,
    /// Rejected because the lease was lost.
    pub lost: u64,
    /// Embedded, but their write-back row no longer exists: cancelled, nothing stored.
    pub cancelled: u64,
}

/// What the lease sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RescueReport {
    /// Jobs made ready again.
    pub requeued: u64,
    /// Jobs that had used their last attempt and were dead-lettered.
    pub dead: u64,
}
