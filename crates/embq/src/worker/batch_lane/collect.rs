//! Polling a submitted batch and collecting its results.
//!
//! Once the provider says the batch ended, its file ids are recorded (state `collecting`), the
//! output and error files are downloaded to temporary files, and every line becomes its job's
//! outcome, stored through the online path in chunks (`Queue::finish` under the batch's lease:
//! an older job never overwrites a newer text's vector, and a job that already left the batch
//! is skipped). Jobs without a line then go back to the queue: unspent when the batch expired
//! or was cancelled, spending an attempt when it failed or dropped them. A crash anywhere here
//! repeats the collection, which skips what was already stored.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::time::Duration;

use tracing::info;

use super::failpoint::{check, Step};
use super::{Lane, LaneError};
use crate::metrics::batch_lane::BatchStateLabel;
use crate::outcome::{decide, retry_or_dead, Decision};
use crate::provider::openai_batch::OVER_ENQUEUED_LIMIT;
use crate::provider::openai_batch_lines::{parse_result_line, LineResult};
use crate::queue::{BatchState, BatchUpdate, ClaimedJob, Outcome, ProviderBatch};

/// Result lines stored per `finish` transaction.
pub(super) const STORE_CHUNK: usize = 200;
/// The longest result line read (one vector of 16,000 dimensions in base64 is ~90 kB).
const MAX_LINE_BYTES: u64 = 16 << 20;

/// Result lines read for one `finish`: each held job with its outcome.
type Chunk = Vec<(ClaimedJob, (i64, Outcome))>;

/// What a collection counted.
#[derive(Default)]
struct Tally {
    completed: i64,
    failed: i64,
    /// Tokens billed for every line of the files.
    billed: u64,
    /// Tokens billed for lines stored in this pass (the metric; a repeated pass adds no more).
    billed_now: u64,
}

impl Lane {
    /// Polls a submitted batch; an ended one is recorded and collected at once.
    pub(super) async fn poll(&self, b: ProviderBatch) -> Result<(), LaneError> {
        let Some(batch_id) = b.batch_id.clone() else {
            return self.resume_submission(b).await;
        };
        let now = self.client.get(&batch_id).await?;
        if !now.ended() {
            let u = BatchUpdate {
                provider_status: Some(now.status.clone()),
                check_in: self.ctx.cfg.batch_lane.poll_interval,
                release: true,
                ..BatchUpdate::default()
            };
            self.record(&b, u).await?;
            return Ok(());
        }
        let failure = now.failure().map(|f| self.client.secrets().message(&f));
        let u = BatchUpdate {
            state: Some(BatchState::Collecting),
            provider_status: Some(now.status.clone()),
            output_file_id: now.output_file_id.clone(),
            error_file_id: now.error_file_id.clone(),
            last_error: failure.clone(),
            ..BatchUpdate::default()
        };
        if !self.record(&b, u).await? {
            return Ok(());
        }
        info!(batch = b.id, status = %now.status, "provider batch ended; collecting");
        let b = ProviderBatch {
            state: BatchState::Collecting,
            provider_status: Some(now.status),
            output_file_id: now.output_file_id,
            error_file_id: now.error_file_id,
            last_error: failure.or(b.last_error),
            ..b
        };
        self.collect(b).await
    }

    /// Stores the results of an ended batch and returns its other jobs to the queue.
    pub(super) async fn collect(&self, b: ProviderBatch) -> Result<(), LaneError> {
        let mut files = Vec::new();
        for id in [&b.output_file_id, &b.error_file_id].into_iter().flatten() {
            files.push(self.download(id).await?);
        }
        check(Step::AfterDownload);
        let jobs = self.ctx.queue.batch_jobs(&b).await?;
        let mut held: HashMap<i64, ClaimedJob> = jobs.into_iter().map(|j| (j.id, j)).collect();
        let mut tally = Tally::default();
        let mut stored_chunks = 0;
        for file in files {
            let mut lines = BufReader::new(file);
            loop {
                let (chunk, more) = self.read_chunk(&mut lines, &mut held, &mut tally)?;
                if !chunk.is_empty() {
                    let (jobs, outcomes): (Vec<ClaimedJob>, Vec<(i64, Outcome)>) = chunk.into_iter().unzip();
                    self.finish_jobs(&b, &jobs, outcomes).await;
                    stored_chunks += 1;
                    if stored_chunks == 1 {
                        check(Step::MidStore);
                    }
                }
                if !more {
                    break;
                }
            }
        }
        self.return_the_rest(&b, held).await;
        self.all_released(&b).await?;
        let state = match b.provider_status.as_deref() {
            Some("completed") => BatchState::Collected,
            Some("expired") => BatchState::Expired,
            Some("cancelled") => BatchState::Cancelled,
            _ => BatchState::Failed,
        };
        let u = BatchUpdate {
            state: Some(state),
            completed: Some(tally.completed),
            failed: Some(tally.failed),
            billed_tokens: Some(i64::try_from(tally.billed).unwrap_or(i64::MAX)),
            // A failed batch keeps the provider's reason; a collected one forgets old step errors.
            last_error: (state == BatchState::Collected).then(String::new),
            release: true,
            ..BatchUpdate::default()
        };
        if self.record(&b, u).await? {
            let m = &self.ctx.metrics.batch_lane;
            m.billed_tokens.inc_by(tally.billed_now);
            m.ended.get_or_create(&BatchStateLabel { state: state.as_str() }).inc();
            info!(
                batch = b.id,
                state = state.as_str(),
                completed = tally.completed,
                failed = tally.failed,
                billed_tokens = tally.billed,
                "provider batch collected"
            );
        }
        Ok(())
    }

    /// Reads up to [`STORE_CHUNK`] lines of held jobs into outcomes; false once the file ends.
    fn read_chunk(
        &self,
        lines: &mut impl BufRead,
        held: &mut HashMap<i64, ClaimedJob>,
        tally: &mut Tally,
    ) -> Result<(Chunk, bool), LaneError> {
        let mut out = Vec::new();
        let mut line = String::new();
        while out.len() < STORE_CHUNK {
            line.clear();
            let n = lines.take(MAX_LINE_BYTES).read_line(&mut line).map_err(|e| LaneError::File(e.to_string()))?;
            if n == 0 {
                return Ok((out, false));
            }
            if line.trim().is_empty() {
                continue;
            }
            let (custom_id, result) =
                parse_result_line(line.trim_end(), self.dims, self.client.secrets()).map_err(LaneError::File)?;
            let tokens = match &result {
                LineResult::Embedded { tokens, .. } => tokens.unwrap_or(0),
                _ => 0,
            };
            tally.billed += tokens;
            // A job that already left the batch (stored by an earlier pass, cancelled) is skipped.
            let Some(job) = custom_id.parse::<i64>().ok().and_then(|id| held.remove(&id)) else { continue };
            let outcome = match result {
                LineResult::Embedded { vector, .. } => {
                    tally.completed += 1;
                    tally.billed_now += tokens;
                    Outcome::Done(vector)
                }
                LineResult::NotRun => Outcome::Released { after: Duration::ZERO },
                LineResult::Failed(e) => {
                    tally.failed += 1;
                    match decide(Err(e), &[job.attempt], &self.ctx.cfg.retry, &mut rand::thread_rng()) {
                        Decision::Jobs(mut o) | Decision::Park(mut o) => {
                            o.pop().unwrap_or(Outcome::Released { after: Duration::ZERO })
                        }
                        Decision::Split => Outcome::Released { after: Duration::ZERO },
                    }
                }
            };
            out.push((job.clone(), (job.id, outcome)));
        }
        Ok((out, true))
    }

    /// Jobs no line answered: unspent back to the queue when the batch expired, was cancelled
    /// or was refused for the organisation's enqueued-token limit (then due after a poll
    /// interval, not at once); else (a failed batch, a line missing) an attempt spent.
    async fn return_the_rest(&self, b: &ProviderBatch, held: HashMap<i64, ClaimedJob>) {
        let over_limit = b.provider_status.as_deref() == Some("failed")
            && b.last_error.as_deref().is_some_and(|e| e.starts_with(OVER_ENQUEUED_LIMIT));
        let unspent = over_limit || matches!(b.provider_status.as_deref(), Some("expired" | "cancelled"));
        let after = if over_limit { self.ctx.cfg.batch_lane.poll_interval } else { Duration::ZERO };
        let status = match &b.last_error {
            Some(e) => format!("{}: {e}", b.provider_status.as_deref().unwrap_or_default()),
            None => b.provider_status.clone().unwrap_or_default(),
        };
        let mut jobs: Vec<ClaimedJob> = held.into_values().collect();
        jobs.sort_by_key(|j| j.id);
        for chunk in jobs.chunks(STORE_CHUNK) {
            let outcomes = chunk
                .iter()
                .map(|j| {
                    let o = if unspent {
                        Outcome::Released { after }
                    } else {
                        let why = format!("the provider batch ended ({status}) without a result for this job");
                        retry_or_dead(why, j.attempt, &self.ctx.cfg.retry, &mut rand::thread_rng())
                    };
                    (j.id, o)
                })
                .collect();
            self.finish_jobs(b, chunk, outcomes).await;
        }
    }

    /// Downloads a file to a temporary file, rewound for reading: results files can be far
    /// larger than the input (a vector per line), so they are read back a chunk at a time. (The
    /// file is local: its reads block this task only briefly.)
    async fn download(&self, file_id: &str) -> Result<std::fs::File, LaneError> {
        let mut resp = self.client.content(file_id).await?;
        let mut f = tempfile::tempfile().map_err(|e| LaneError::File(e.to_string()))?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            LaneError::Api(crate::provider::openai_batch::BatchApiError::Transient(
                self.client.secrets().message(&e.without_url().to_string()),
            ))
        })? {
            f.write_all(&chunk).map_err(|e| LaneError::File(e.to_string()))?;
        }
        f.rewind().map_err(|e| LaneError::File(e.to_string()))?;
        Ok(f)
    }
}
