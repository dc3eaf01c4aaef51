//! The run's totals and the processing rate: counters the worker updates as batches finish.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Totals of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Jobs completed (embedded or unchanged).
    pub processed: u64,
    /// Of which unchanged (no provider call).
    pub unchanged: u64,
    /// Failed attempts (retried or dead-lettered).
    pub failed: u64,
    /// Dead-lettered jobs.
    pub dead: u64,
}

/// Live counters, readable while the worker runs (progress bars, the workers table).
#[derive(Debug, Default)]
pub struct Counters {
    /// Jobs completed.
    pub processed: AtomicU64,
    /// Jobs completed without a provider call.
    pub unchanged: AtomicU64,
    /// Failed attempts.
    pub failed: AtomicU64,
    /// Dead-lettered jobs.
    pub dead: AtomicU64,
}

impl Counters {
    pub(super) fn summary(&self) -> RunSummary {
        RunSummary {
            processed: self.processed.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
        }
    }
}

/// Completions over the last minute, for `embedding_queue_processing_rate`.
#[derive(Debug, Default)]
pub(super) struct RateWindow(Mutex<VecDeque<(Instant, u64)>>);

impl RateWindow {
    const WINDOW: Duration = Duration::from_secs(60);

    pub(super) fn record(&self, n: u64) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((Instant::now(), n));
    }

    pub(super) fn per_second(&self, uptime: Duration) -> f64 {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = Instant::now().checked_sub(Self::WINDOW);
        while let (Some(front), Some(c)) = (q.front(), cutoff) {
            if front.0 >= c {
                break;
            }
            q.pop_front();
        }
        let total: u64 = q.iter().map(|e| e.1).sum();
        let span = uptime.min(Self::WINDOW).as_secs_f64().max(1.0);
        total as f64 / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_averages_over_uptime_until_a_minute() {
        let w = RateWindow::default();
        w.record(30);
        assert!((w.per_second(Duration::from_secs(10)) - 3.0).abs() < 1e-9);
        assert!((w.per_second(Duration::from_secs(600)) - 0.5).abs() < 1e-9);
    }
}
