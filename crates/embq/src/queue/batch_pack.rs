//! Packing claimed jobs into one provider batch under its limits: the rule both stores'
//! gatherings follow, round by round of claimed rows, inside their own transaction.

use super::batches::{GatherLimits, Sizer};
use super::ClaimedJob;

/// Rows claimed per round of a gathering (bounds memory between size checks).
const GATHER_ROUND: usize = 2_000;

/// One gathering's packing state: jobs taken, jobs to put back, and what they cost.
pub(super) struct Packer<'a, 's> {
    limits: GatherLimits<'a>,
    size: &'a Sizer<'s>,
    /// Tokens left under the model's enqueued-token limit.
    room: u64,
    /// No batch is open: the first job goes even if it alone is over the limits.
    first_always: bool,
    bytes: u64,
    tokens: u64,
    full: bool,
    jobs: Vec<ClaimedJob>,
    back: Vec<i64>,
    unchanged: u64,
}

/// What a gathering packed.
pub(super) struct Packed {
    /// The batch's jobs, in claim order.
    pub jobs: Vec<ClaimedJob>,
    /// Claimed jobs over the limits, to be put back as they were in the same transaction.
    pub back: Vec<i64>,
    /// Jobs whose vector was already current.
    pub unchanged: u64,
    /// The batch's estimated tokens.
    pub tokens: u64,
}

impl<'a, 's> Packer<'a, 's> {
    /// Starts a gathering with `held` tokens already in the model's open batches.
    pub fn new(limits: GatherLimits<'a>, held: u64, size: &'a Sizer<'s>) -> Self {
        Self {
            limits,
            size,
            room: limits.max_tokens.saturating_sub(held),
            first_always: held == 0,
            bytes: 0,
            tokens: 0,
            full: false,
            jobs: Vec::new(),
            back: Vec::new(),
            unchanged: 0,
        }
    }

    /// How many rows to claim next, or `None` when the batch is full.
    pub fn wants(&self) -> Option<usize> {
        let open = self.room > 0 && !self.full && self.jobs.len() < self.limits.max_requests;
        open.then(|| GATHER_ROUND.min(self.limits.max_requests - self.jobs.len()))
    }

    /// Takes a round of claimed jobs in order until one would cross a limit; that one and
    /// every later one go back.
    pub fn take(&mut self, round: Vec<ClaimedJob>) {
        for j in round {
            if j.unchanged {
                self.unchanged += 1;
                continue;
            }
            let (b, t) = (self.size)(&j);
            let first = self.jobs.is_empty() && self.first_always;
            if self.full || (!first && (self.bytes + b > self.limits.max_bytes || self.tokens + t > self.room)) {
                self.full = true;
                self.back.push(j.id);
                continue;
            }
            self.bytes += b;
            self.tokens += t;
            self.jobs.push(j);
        }
    }

    /// The packed batch.
    pub fn finish(self) -> Packed {
        Packed { jobs: self.jobs, back: self.back, unchanged: self.unchanged, tokens: self.tokens }
    }
}
