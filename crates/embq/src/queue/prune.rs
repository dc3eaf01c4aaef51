//! Retention (`embq prune`): which finished jobs are deleted, and what was.

use std::time::Duration;

use serde::Serialize;

/// Which finished jobs `Queue::prune` deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneRequest {
    /// Jobs finished (last changed) longer ago than this: done, superseded and cancelled.
    pub older_than: Duration,
    /// Also dead-lettered jobs that failed longer ago (off by default: the dead-letter queue is
    /// for an operator to inspect, retry or purge).
    pub dead: bool,
    /// Rows deleted per statement; each batch is its own short transaction.
    pub batch_size: u32,
}

/// The default rows per batch: a few milliseconds of locks at a time.
pub const PRUNE_BATCH_SIZE: u32 = 1000;

/// What `Queue::prune` deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Done, superseded and cancelled jobs deleted.
    pub finished: u64,
    /// Dead-lettered jobs deleted.
    pub dead: u64,
    /// Delete statements run.
    pub batches: u64,
}

impl PruneReport {
    /// Adds one batch that deleted `n` rows of the finished (or dead) kind.
    pub(crate) fn add(&mut self, dead: bool, n: u64) {
        self.batches += 1;
        if dead {
            self.dead += n;
        } else {
            self.finished += n;
        }
    }
}
