//! Recording a batch's outcomes: an outage is waited out, and a write the database refuses
//! for good is narrowed down to the jobs it concerns.
//!
//! A refusal (a constraint, a user trigger, a vector of the wrong size for a typed column)
//! rolls back the whole transaction, so the batch is split in halves, each finished in its
//! own transaction under the same lease, until the refused job stands alone. That job then
//! fails like a transient provider error on its attempt: retried with backoff, dead-lettered
//! with the database's message on its last attempt. Its batch-mates are stored normally.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::Ctx;
use crate::outcome;
use crate::queue::{ClaimedJob, FinishReport, Lease, Outcome, QueueError};

/// Outcomes written in one `finish` call.
type OutcomeSet = Vec<(i64, Outcome)>;

/// Writes `outcomes` of `jobs` (the claimed jobs they belong to, for their attempt numbers).
///
/// Returns what was applied; jobs whose results could not be recorded count as `lost`, and
/// their leases lapse so another worker rescues them.
pub(super) async fn store_results(ctx: &Ctx, lease: &Lease, jobs: &[ClaimedJob], outcomes: OutcomeSet) -> FinishReport {
    let attempts: HashMap<i64, u32> = jobs.iter().map(|j| (j.id, j.attempt)).collect();
    let mut total = FinishReport::default();
    // Sets still to write, the next one last: a split pushes its second half first.
    let mut todo = vec![outcomes];
    while let Some(set) = todo.pop() {
        let refusal = match finish_with_retry(ctx, lease, &set).await {
            Finished::Applied(r) => {
                add(&mut total, &r);
                continue;
            }
            Finished::GivenUp(n) => {
                total.lost += n;
                continue;
            }
            Finished::Refused(msg) => msg,
        };
        let done = set.iter().filter(|(_, o)| matches!(o, Outcome::Done(_))).count();
        match done {
            0 => {
                // Nothing left to take out: give up as for an invalid request.
                error!(error = %refusal, jobs = set.len(), "the database refused the batch's results; the jobs will be re-claimed");
                total.lost += set.len() as u64;
            }
            1 => todo.push(fail_the_refused(ctx, &attempts, set, &refusal)),
            _ => {
                warn!(error = %refusal, jobs = set.len(), "the database refused the batch's results; splitting it");
                let (first, second) = split_done(set, done / 2);
                todo.push(second);
                todo.push(first);
            }
        }
    }
    total
}

/// Splits `set` so the first part holds `first_done` of its `Done` outcomes and every other
/// outcome, the second the remaining `Done` outcomes.
fn split_done(set: OutcomeSet, first_done: usize) -> (OutcomeSet, OutcomeSet) {
    let mut first = Vec::with_capacity(set.len());
    let mut second = Vec::with_capacity(set.len());
    let mut taken = 0;
    for (id, o) in set {
        if matches!(o, Outcome::Done(_)) {
            if taken < first_done {
                taken += 1;
                first.push((id, o));
            } else {
                second.push((id, o));
            }
        } else {
            first.push((id, o));
        }
    }
    (first, second)
}

/// Replaces the only `Done` outcome of `set` with the failure its attempt earns.
fn fail_the_refused(ctx: &Ctx, attempts: &HashMap<i64, u32>, set: OutcomeSet, refusal: &str) -> OutcomeSet {
    let mut rng = rand::thread_rng();
    set.into_iter()
        .map(|(id, o)| match o {
            Outcome::Done(_) => {
                // The claim counts attempts, so a job missing here (a bug) still retries boundedly.
                let attempt = attempts.get(&id).copied().unwrap_or(1);
                warn!(job_id = id, attempt, error = %refusal, "the database refused this job's result");
                let error = format!("database refused the result: {refusal}");
                (id, outcome::retry_or_dead(error, attempt, &ctx.cfg.retry, &mut rng))
            }
            other => (id, other),
        })
        .collect()
}

/// How one `finish` call ended.
enum Finished {
    Applied(FinishReport),
    /// The database refused the write; holds its message.
    Refused(String),
    /// Given up after the lease would have run out, a hard stop or an invalid request; holds
    /// the number of jobs whose results were dropped.
    GivenUp(u64),
}

/// Writes one set of outcomes, retrying while the database is unreachable.
///
/// An outage does not abandon a batch: the results wait for the database to come back, and if
/// the lease was lost meanwhile the finish reports them stale. Only a hard stop gives up during
/// an outage; other errors give up when the lease would have run out. A refusal returns at once:
/// the database answered, so it counts as up.
async fn finish_with_retry(ctx: &Ctx, lease: &Lease, outcomes: &[(i64, Outcome)]) -> Finished {
    let deadline = Instant::now() + ctx.cfg.lease_duration();
    let mut delay = Duration::from_millis(50);
    loop {
        let e = match ctx.queue.finish(lease, ctx.provider.model(), outcomes).await {
            Ok(r) => {
                ctx.health.set_db_ok(true);
                return Finished::Applied(r);
            }
            Err(e) => e,
        };
        ctx.metrics.error(e.kind());
        let outage = match e {
            QueueError::Rejected(msg) => {
                ctx.health.set_db_ok(true);
                return Finished::Refused(msg);
            }
            QueueError::Unavailable(_) => true,
            QueueError::Schema(_) | QueueError::Invalid(_) => false,
        };
        if outage {
            ctx.health.set_db_ok(false);
        }
        let expired = !outage && Instant::now() + delay >= deadline;
        if expired || ctx.hard.is_cancelled() || matches!(e, QueueError::Invalid(_)) {
            // Another worker redoes the batch once the lease expires; the upsert is idempotent.
            error!(error = %e, jobs = outcomes.len(), "could not record batch results; the jobs will be re-claimed");
            return Finished::GivenUp(outcomes.len() as u64);
        }
        warn!(error = %e, "recording batch results failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.hard.cancelled() => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Adds `r` to `total`, field by field.
fn add(total: &mut FinishReport, r: &FinishReport) {
    total.stored += r.stored;
    total.unchanged += r.unchanged;
    total.retried += r.retried;
    total.dead += r.dead;
    total.released += r.released;
    total.superseded += r.superseded;
    total.cancelled += r.cancelled;
    total.lost += r.lost;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(set: &[(i64, Outcome)]) -> Vec<i64> {
        set.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn a_split_keeps_every_outcome_and_sends_the_others_with_the_first_half() {
        let set = vec![
            (1, Outcome::Done(vec![1.0])),
            (2, Outcome::Dead("bad input".into())),
            (3, Outcome::Done(vec![1.0])),
            (4, Outcome::Released { after: Duration::ZERO }),
            (5, Outcome::Done(vec![1.0])),
        ];
        let (first, second) = split_done(set, 1);
        assert_eq!(ids(&first), vec![1, 2, 4]);
        assert_eq!(ids(&second), vec![3, 5]);
    }
}
