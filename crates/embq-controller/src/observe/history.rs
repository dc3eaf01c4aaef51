//! Per-pod histories of scrapes over the signal window, and the signals read from them.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::worker::Health;

use super::scrape::{quantile_between, WorkerMetrics};

/// One scrape of one worker.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub metrics: WorkerMetrics,
}

/// What the controller remembers about one pod between looks.
#[derive(Debug, Default, Clone)]
pub struct PodHistory {
    samples: VecDeque<Sample>,
    health_failing_since: Option<Instant>,
    last_restarts: Option<i32>,
}

/// Signals from a pod's history over the window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowSignals {
    pub error_rate: Option<f64>,
    pub p95_seconds: Option<f64>,
    pub rate_limited: bool,
}

impl PodHistory {
    /// Records a health result; returns how long the worker has been answering "unhealthy".
    /// No answer neither starts nor ends a failure: it is not evidence either way.
    pub fn health(&mut self, now: Instant, health: Health) -> Option<Duration> {
        match health {
            Health::Ok => {
                self.health_failing_since = None;
                None
            }
            Health::Failing => Some(now.duration_since(*self.health_failing_since.get_or_insert(now))),
            Health::Unknown => self.health_failing_since.map(|since| now.duration_since(since)),
        }
    }

    /// Whether the restart count moved since the previous look (the first look counts).
    pub fn restarts_moved(&mut self, restarts: i32) -> bool {
        self.last_restarts.replace(restarts) != Some(restarts)
    }

    /// Adds a scrape and forgets samples older than the window (keeping one as baseline).
    pub fn push(&mut self, sample: Sample, window: Duration) {
        // A counter going down means the worker restarted: older samples are another process.
        if self.samples.back().is_some_and(|last| {
            sample.metrics.processed < last.metrics.processed || sample.metrics.failed < last.metrics.failed
        }) {
            self.samples.clear();
        }
        let now = sample.at;
        self.samples.push_back(sample);
        while self.samples.len() > 2 && self.samples.get(1).is_some_and(|s| now.duration_since(s.at) >= window) {
            self.samples.pop_front();
        }
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Error rate, p95 and rate limiting between the oldest sample in the window and the
    /// newest; error rate and p95 only once the samples span at least `min_span`.
    pub fn signals(&self, min_jobs: u64, min_span: Duration) -> WindowSignals {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return WindowSignals::default();
        };
        if self.samples.len() < 2 {
            return WindowSignals::default();
        }
        let (a, b) = (&first.metrics, &last.metrics);
        let covered = last.at.duration_since(first.at) >= min_span;
        let processed = b.processed - a.processed;
        let failed = b.failed - a.failed;
        let finished = processed + failed;
        // Failures explained by the provider, the database or the input say nothing about
        // this worker: only the rest count against it.
        let own = (failed - (b.outside_errors - a.outside_errors)).max(0.0);
        WindowSignals {
            error_rate: (covered && finished >= min_jobs as f64 && finished > 0.0).then(|| own / finished),
            p95_seconds: quantile_between(0.95, &a.duration_buckets, &b.duration_buckets, min_jobs).filter(|_| covered),
            rate_limited: b.rate_limited > a.rate_limited || b.rate_limit_wait_seconds > a.rate_limit_wait_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::scrape::parse_worker_metrics;

    fn sample(at: Instant, processed: f64, failed: f64) -> Sample {
        Sample { at, metrics: WorkerMetrics { processed, failed, ..Default::default() } }
    }

    #[test]
    fn history_measures_error_rate_over_the_window_and_survives_restarts() {
        let t0 = Instant::now();
        let w = Duration::from_secs(300);
        let mut h = PodHistory::default();
        h.push(sample(t0, 0.0, 0.0), w);
        assert_eq!(h.signals(10, Duration::ZERO).error_rate, None, "one sample is no window");
        h.push(sample(t0 + Duration::from_secs(60), 40.0, 60.0), w);
        assert_eq!(h.signals(10, Duration::ZERO).error_rate, Some(0.6));
        // Ten minutes later the early failures have left the window.
        for i in 2..=10u64 {
            h.push(sample(t0 + Duration::from_secs(60 * i), 40.0 + 100.0 * (i - 1) as f64, 60.0), w);
        }
        assert_eq!(h.signals(10, Duration::ZERO).error_rate, Some(0.0));
        // The worker restarted: counters fell, the history starts again.
        h.push(sample(t0 + Duration::from_secs(700), 1.0, 0.0), w);
        assert_eq!(h.signals(1, Duration::ZERO).error_rate, None);
    }

    #[test]
    fn short_bursts_and_outside_errors_are_not_worker_failures() {
        let t0 = Instant::now();
        let w = Duration::from_secs(300);
        let min_span = Duration::from_secs(240);
        let mut h = PodHistory::default();
        let with_outside = |at, failed, outside| Sample {
            at,
            metrics: WorkerMetrics { processed: 0.0, failed, outside_errors: outside, ..Default::default() },
        };
        h.push(with_outside(t0, 0.0, 0.0), w);
        h.push(with_outside(t0 + Duration::from_secs(10), 50.0, 0.0), w);
        assert_eq!(h.signals(20, min_span).error_rate, None, "10 s of samples is no 5-minute signal");
        h.push(with_outside(t0 + Duration::from_secs(250), 100.0, 90.0), w);
        assert_eq!(h.signals(20, min_span).error_rate, Some(0.1), "provider/database/input errors left out");
        let m = parse_worker_metrics(
            "embedding_worker_errors_total{kind=\"transient\"} 3\nembedding_worker_errors_total{kind=\"database\"} 2\n\
             embedding_worker_errors_total{kind=\"something_new\"} 7\n",
        );
        assert_eq!(m.outside_errors, 5.0);
    }

    #[test]
    fn health_failures_are_timed_from_the_first_failure() {
        let t0 = Instant::now();
        let mut h = PodHistory::default();
        let s = Duration::from_secs;
        assert_eq!(h.health(t0, Health::Unknown), None, "no answer starts no failure");
        assert_eq!(h.health(t0, Health::Failing), Some(Duration::ZERO));
        assert_eq!(h.health(t0 + s(30), Health::Failing), Some(s(30)));
        assert_eq!(h.health(t0 + s(35), Health::Unknown), Some(s(35)), "nor ends one");
        assert_eq!(h.health(t0 + s(40), Health::Ok), None);
        assert_eq!(h.health(t0 + s(50), Health::Failing), Some(Duration::ZERO));
    }
}
