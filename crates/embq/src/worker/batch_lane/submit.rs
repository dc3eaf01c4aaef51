//! Submitting a batch so that nothing is ever submitted twice.
//!
//! 1. `gather_batch` records the batch (state `uploading`, a fresh `submission_id`) and its jobs
//!    in one transaction, before anything leaves the process.
//! 2. The file, named `embq-<submission_id>.jsonl`, is uploaded; its id is recorded.
//! 3. The batch is created with `metadata.submission_id`; its id is recorded (state `submitted`).
//!
//! A batch found in `uploading` after a crash is reconciled before any upload or create: first
//! against `GET /v1/batches` (created, id not recorded: record it), then against `GET /v1/files`
//! (uploaded, id not recorded: reuse that file). Only when the provider has neither is the file
//! uploaded (again) or the batch created.

use tracing::info;

use super::failpoint::{check, Step};
use super::{Lane, LaneError};
use crate::metrics::batch_lane::BatchStateLabel;
use crate::outcome::retry_or_dead;
use crate::provider::openai_batch::{BatchApiError, BatchObject, Upload};
use crate::provider::openai_batch_lines::{request_line, MAX_FILE_BYTES};
use crate::queue::{BatchState, BatchUpdate, ClaimedJob, GatherLimits, Outcome, ProviderBatch};
use crate::tokens::OverlongInput;

/// A request line's bytes besides its text (custom_id, method, url, model, dimensions and
/// JSON punctuation), for sizing before the lines are written.
const LINE_OVERHEAD: usize = 200;

/// A job's request line in bytes, near enough to size buffers and hold budget.
fn line_estimate(j: &ClaimedJob) -> usize {
    j.text.len() + LINE_OVERHEAD
}

impl Lane {
    /// The text a job's request carries: truncated to the model's input cap unless
    /// `OVERLONG_INPUT=reject` (then the provider's refusal dead-letters the job).
    fn input<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let max = self.ctx.provider.caps().max_tokens_per_input;
        if self.ctx.cfg.overlong_input == OverlongInput::Truncate && self.counter.count(text) > max {
            return self.counter.truncate(text, max).into();
        }
        text.into()
    }

    /// A job's request line.
    fn line(&self, j: &ClaimedJob) -> Vec<u8> {
        request_line(&j.id.to_string(), &self.model, self.dims, &self.input(&j.text))
    }

    /// Gathers and submits one new batch if the enqueued-token limit leaves room and jobs are
    /// waiting; false when there was nothing (more) to submit.
    pub(super) async fn submit_new(&self) -> Result<bool, LaneError> {
        let max = self.ctx.cfg.batch_lane.max_enqueued_tokens;
        // A cheap look first; the gathering checks again under its lock.
        if self.ctx.queue.enqueued_tokens(&self.model).await? >= max {
            return Ok(false);
        }
        let submission_id = uuid::Uuid::new_v4().to_string();
        let limits = GatherLimits {
            owner: self.owner(),
            lease: self.lease(),
            max_requests: self.ctx.cfg.batch_lane.max_requests.get(),
            // The batch is in memory twice while its file is written (texts, then lines): it
            // takes its bytes from the worker's in-flight budget like an online batch.
            max_bytes: MAX_FILE_BYTES.min(self.ctx.inflight_bytes.free() / 2),
            max_tokens: max,
        };
        let size = |j: &ClaimedJob| (self.line(j).len() as u64, self.counter.count(&self.input(&j.text)) as u64);
        let g = self.ctx.queue.gather_batch(&submission_id, &self.model, limits, &size).await?;
        if g.unchanged > 0 {
            super::super::batch::record_unchanged(&self.ctx, g.unchanged);
        }
        let Some(batch) = g.batch else { return Ok(false) };
        check(Step::AfterRecord);
        info!(batch = batch.id, submission_id = %batch.submission_id, jobs = g.jobs.len(),
              tokens = batch.estimated_tokens, "provider batch recorded");
        let held = self.ctx.inflight_bytes.hold(2 * g.jobs.iter().map(|j| line_estimate(j) as u64).sum::<u64>());
        let renew = self.keep_leased(&batch);
        let result = self.upload_and_create(&batch, Some(g.jobs)).await;
        drop(renew);
        drop(held);
        if let Err(e) = result {
            self.later(&batch, &e).await;
        }
        Ok(true)
    }

    /// Goes on with a batch found in `uploading` (its worker stopped or the step failed).
    pub(super) async fn resume_submission(&self, b: ProviderBatch) -> Result<(), LaneError> {
        // Created before the crash, its id not recorded: record it, never create another.
        if let Some(found) = self.client.find_batch(&b.submission_id).await? {
            info!(batch = b.id, batch_id = %found.id, "found the provider batch of an interrupted submission");
            self.record_created(&b, &found).await?;
            return Ok(());
        }
        self.upload_and_create(&b, None).await
    }

    /// Uploads the file (unless one is recorded or found) and creates the batch. `jobs` are the
    /// batch's jobs when they are at hand (a fresh gathering); `None` reads them back.
    async fn upload_and_create(&self, b: &ProviderBatch, jobs: Option<Vec<ClaimedJob>>) -> Result<(), LaneError> {
        let fresh = jobs.is_some();
        let file_id = match &b.input_file_id {
            Some(id) => id.clone(),
            None => {
                let found = if fresh { None } else { self.client.find_file(&b.file_name()).await? };
                let id = match found {
                    // Uploaded before a crash, id not recorded: the same jobs, so the same file.
                    Some(f) => f.id,
                    None => {
                        let jobs = match jobs {
                            Some(j) => j,
                            None => self.ctx.queue.batch_jobs(b).await?,
                        };
                        if jobs.is_empty() {
                            return self.nothing_left(b).await;
                        }
                        // The texts go as soon as the file is written: one copy of the batch in memory.
                        let size = jobs.iter().map(line_estimate).sum();
                        let file = Upload::new(&b.file_name(), size, |out| {
                            jobs.iter().for_each(|j| out.extend_from_slice(&self.line(j)))
                        });
                        drop(jobs);
                        match self.client.upload(file).await {
                            Ok(f) => f.id,
                            Err(BatchApiError::Refused(m)) => return self.refused(b, &m).await,
                            Err(e) => return Err(e.into()),
                        }
                    }
                };
                check(Step::AfterUpload);
                let u = BatchUpdate { input_file_id: Some(id.clone()), ..BatchUpdate::default() };
                if !self.record(b, u).await? {
                    return Ok(());
                }
                id
            }
        };
        let created = match self.client.create(&file_id, &b.submission_id).await {
            Ok(c) => c,
            Err(BatchApiError::Refused(m)) => return self.refused(b, &m).await,
            Err(e) => return Err(e.into()),
        };
        check(Step::AfterCreate);
        self.record_created(b, &created).await?;
        self.ctx.metrics.batch_lane.submitted.inc();
        info!(batch = b.id, batch_id = %created.id, requests = b.requests, "provider batch submitted");
        Ok(())
    }

    /// Records the provider's batch: `submitted`, polled after the poll interval.
    async fn record_created(&self, b: &ProviderBatch, created: &BatchObject) -> Result<(), LaneError> {
        let u = BatchUpdate {
            state: Some(BatchState::Submitted),
            batch_id: Some(created.id.clone()),
            input_file_id: created.input_file_id.clone(),
            provider_status: Some(created.status.clone()),
            last_error: Some(String::new()),
            check_in: self.ctx.cfg.batch_lane.poll_interval,
            release: true,
            ..BatchUpdate::default()
        };
        self.record(b, u).await?;
        Ok(())
    }

    /// The provider refused the upload or the create for good: the batch fails, and each job
    /// spends an attempt (retried by its schedule, dead-lettered after its last).
    async fn refused(&self, b: &ProviderBatch, message: &str) -> Result<(), LaneError> {
        let jobs = self.ctx.queue.batch_jobs(b).await?;
        let error = format!("the batch API refused the batch: {message}");
        let outcomes = jobs
            .iter()
            .map(|j| (j.id, retry_or_dead(error.clone(), j.attempt, &self.ctx.cfg.retry, &mut rand::thread_rng())))
            .collect();
        self.finish_jobs(b, &jobs, outcomes).await;
        self.all_released(b).await?;
        let u = BatchUpdate {
            state: Some(BatchState::Failed),
            last_error: Some(error),
            release: true,
            ..BatchUpdate::default()
        };
        self.record(b, u).await?;
        self.ctx.metrics.batch_lane.ended.get_or_create(&BatchStateLabel { state: "failed" }).inc();
        Ok(())
    }

    /// Fails unless every job has left the batch. Its jobs have no lease expiry, so a batch is
    /// closed only once none is held: results that could not be written (an outage outlasting
    /// `store_results`' patience) are written by the next collection instead.
    pub(super) async fn all_released(&self, b: &ProviderBatch) -> Result<(), LaneError> {
        let left = self.ctx.queue.batch_jobs(b).await?.len();
        if left > 0 {
            return Err(LaneError::Unfinished(left));
        }
        Ok(())
    }

    /// A batch whose jobs all left before it was uploaded (cancelled by `embq.forget`).
    async fn nothing_left(&self, b: &ProviderBatch) -> Result<(), LaneError> {
        let u = BatchUpdate { state: Some(BatchState::Cancelled), release: true, ..BatchUpdate::default() };
        self.record(b, u).await?;
        Ok(())
    }

    /// Applies outcomes to a batch's jobs through the online path (`store_results`: outages
    /// waited out, refusals narrowed down) and counts them.
    pub(super) async fn finish_jobs(&self, b: &ProviderBatch, jobs: &[ClaimedJob], outcomes: Vec<(i64, Outcome)>) {
        if outcomes.is_empty() {
            return;
        }
        let report = super::super::store_results::store_results(&self.ctx, &b.lease(), jobs, outcomes).await;
        super::super::batch::count_outcomes(&self.ctx, &report);
    }
}
