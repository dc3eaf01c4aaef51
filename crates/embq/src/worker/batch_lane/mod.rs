//! The batch lane: `batch`-lane jobs sent through the OpenAI Batch API at half price.
//!
//! Each round this worker (1) moves a large low-priority backlog to the lane if
//! `BATCH_LANE_BACKLOG` says so, (2) works every open batch that is due (`advance`: resume a
//! submission, poll, collect), and (3) submits new batches while the enqueued-token limit
//! leaves room. A batch is leased to one worker at a time (`Queue::lease_batch`); every step
//! is recorded before the next is taken, so after a crash any worker with the lane on picks
//! the batch up where it was (see `submit.rs` for how nothing is submitted twice).

mod collect;
mod failpoint;
mod submit;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

use super::Ctx;
use crate::metrics::batch_lane::LaneLabel;
use crate::provider::openai_batch::{BatchApiError, BatchClient};
use crate::provider::ProviderSpec;
use crate::queue::{BatchState, BatchUpdate, ProviderBatch, QueueError};
use crate::tokens::TokenCounter;

pub use failpoint::ABORT_AT_VAR;

/// Open batches worked per round at most (the rest wait for the next round).
const BATCHES_PER_ROUND: usize = 64;
/// New batches submitted per round at most.
const SUBMISSIONS_PER_ROUND: usize = 16;

/// Why a step of the lane did not complete.
#[derive(Debug, thiserror::Error)]
pub(super) enum LaneError {
    /// The queue store failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The Batch API failed.
    #[error(transparent)]
    Api(#[from] BatchApiError),
    /// A downloaded file could not be kept or read.
    #[error("batch results file: {0}")]
    File(String),
    /// Results of this many jobs could not be written; the batch stays open for another pass.
    #[error("{0} jobs of the batch still wait for their results to be written")]
    Unfinished(usize),
}

impl LaneError {
    /// A bounded label for `embedding_worker_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Queue(e) => e.kind(),
            Self::Api(BatchApiError::Refused(_)) => "invalid_request",
            Self::Api(BatchApiError::Invalid(_)) => "invalid_response",
            Self::Api(BatchApiError::Transient(_)) | Self::File(_) | Self::Unfinished(_) => "transient",
        }
    }
}

/// What the lane's steps share.
pub(super) struct Lane {
    ctx: Arc<Ctx>,
    client: BatchClient,
    counter: TokenCounter,
    model: String,
    dims: usize,
}

impl Lane {
    /// The lane of the configured OpenAI provider.
    fn new(ctx: Arc<Ctx>) -> Result<Self, String> {
        let settings = match ctx.cfg.provider_spec() {
            Ok(ProviderSpec::OpenAi(s)) => s,
            Ok(_) => return Err("the batch lane needs EMBEDDING_PROVIDER=openai".into()),
            Err(e) => return Err(e.to_string()),
        };
        let client = BatchClient::new(&settings)?;
        let counter = ctx.provider.token_counter();
        let (model, dims) = (settings.model.clone(), settings.dimensions);
        Ok(Self { ctx, client, counter, model, dims })
    }

    /// This worker's id: the owner of the batches it leases.
    fn owner(&self) -> &str {
        &self.ctx.health.worker_id
    }

    /// How long a batch lease lasts between renewals.
    fn lease(&self) -> Duration {
        self.ctx.cfg.lease_duration()
    }

    /// Records `u` on batch `b`, which this worker holds; false when its lease was lost.
    async fn record(&self, b: &ProviderBatch, u: BatchUpdate) -> Result<bool, QueueError> {
        let kept = self.ctx.queue.update_batch(b.id, self.owner(), self.lease(), &u).await?;
        if !kept {
            warn!(batch = b.id, "lost the lease on a provider batch; another worker goes on with it");
        }
        Ok(kept)
    }

    /// Gives up a step for now: the batch is due again after the poll interval.
    async fn later(&self, b: &ProviderBatch, e: &LaneError) {
        self.ctx.metrics.error(e.kind());
        warn!(batch = b.id, error = %e, "provider batch step failed; trying again later");
        let u = BatchUpdate {
            last_error: Some(e.to_string()),
            check_in: self.ctx.cfg.batch_lane.poll_interval,
            release: true,
            ..BatchUpdate::default()
        };
        if let Err(e) = self.record(b, u).await {
            warn!(batch = b.id, error = %e, "could not record the failed step");
        }
    }

    /// One step of an open batch, whatever state it is in; keeps its lease while it works.
    async fn advance(&self, b: ProviderBatch) {
        let renew = self.keep_leased(&b);
        let result = match b.state {
            BatchState::Uploading => self.resume_submission(b.clone()).await,
            BatchState::Submitted => self.poll(b.clone()).await,
            BatchState::Collecting => self.collect(b.clone()).await,
            _ => Ok(()),
        };
        drop(renew);
        if let Err(e) = result {
            self.later(&b, &e).await;
        }
    }

    /// Renews the lease on `b` every half heartbeat until the returned guard is dropped (also
    /// when a shutdown drops the step that holds it).
    fn keep_leased(&self, b: &ProviderBatch) -> DropGuard {
        let stop = CancellationToken::new();
        let (queue, owner, lease, id) = (self.ctx.queue.clone(), self.owner().to_string(), self.lease(), b.id);
        let every = self.ctx.cfg.heartbeat_interval / 2;
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = queue.update_batch(id, &owner, lease, &BatchUpdate::default()).await {
                    warn!(batch = id, error = %e, "could not renew the lease on a provider batch");
                }
            }
        });
        stop.drop_guard()
    }

    /// One round: backlog, open batches, new submissions, gauges.
    async fn round(&self) -> Result<(), LaneError> {
        let lane = &self.ctx.cfg.batch_lane;
        if let Some(backlog) = lane.backlog {
            let moved = self.ctx.queue.move_backlog(backlog, lane.max_priority).await?;
            if moved > 0 {
                info!(moved, "moved the low-priority backlog to the batch lane");
            }
        }
        for _ in 0..BATCHES_PER_ROUND {
            match self.ctx.queue.lease_batch(self.owner(), self.lease()).await? {
                Some(b) => self.advance(b).await,
                None => break,
            }
        }
        // New batches only while this worker takes on work (the texts of a batch are in memory
        // while its file is written); open batches are worked on regardless.
        let h = &self.ctx.health;
        for _ in 0..SUBMISSIONS_PER_ROUND {
            if h.draining() || h.memory_over() || !self.submit_new().await? {
                break;
            }
        }
        self.refresh_gauges().await?;
        Ok(())
    }

    async fn refresh_gauges(&self) -> Result<(), QueueError> {
        let s = self.ctx.queue.lane_stats().await?;
        let m = &self.ctx.metrics.batch_lane;
        let open: u64 = s
            .batches_by_state
            .iter()
            .filter(|(state, _)| state.parse::<BatchState>().is_ok_and(BatchState::is_open))
            .map(|(_, n)| n)
            .sum();
        m.in_progress.set(open as i64);
        m.jobs_in_batches.set(s.in_batches as i64);
        m.enqueued_tokens.set(s.enqueued_tokens as i64);
        for lane in ["online", "batch"] {
            let n = s.ready_by_lane.iter().find(|(l, _)| l == lane).map_or(0, |(_, n)| *n);
            m.ready_by_lane.get_or_create(&LaneLabel { lane }).set(n as i64);
        }
        Ok(())
    }
}

/// Runs the lane until `stop`: a round every `QUEUE_POLL_INTERVAL`. A step cut off by `stop`
/// is safe to drop: every step is recorded before the next, and resumed by whoever comes next.
pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let tick = ctx.cfg.poll_interval.min(ctx.cfg.batch_lane.poll_interval);
    let lane = match Lane::new(ctx.clone()) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "the batch lane cannot start");
            return;
        }
    };
    info!(model = %lane.model, "batch lane on (OpenAI Batch API)");
    loop {
        tokio::select! {
            r = lane.round() => if let Err(e) = r {
                ctx.metrics.error(e.kind());
                warn!(error = %e, "batch lane round failed");
            },
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => return,
        }
    }
}
