//! Turning raw observations into policy inputs: the pod status a kubelet reports,
//! the Prometheus text a worker serves, and per-pod histories over a window.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

use crate::policy::Critical;
use crate::worker::Health;

/// What the pod object says, before any scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct PodStatus {
    pub name: String,
    pub ip: Option<IpAddr>,
    pub ready: bool,
    pub running: bool,
    /// Phase Failed or Succeeded: the pod will never run again.
    pub finished: bool,
    /// Every container passed its startup probe (or has none): /health is meaningful.
    pub started: bool,
    pub terminating: bool,
    pub restarts: i32,
    /// Critical condition as Kubernetes sees it; OOM `fresh` is filled in by the caller.
    pub critical: Option<Critical>,
    pub memory_limit: Option<String>,
    /// The owning ReplicaSet's name.
    pub owner: Option<String>,
    /// The pod-template-hash label.
    pub template: Option<String>,
}

const IMAGE_PULL_REASONS: [&str; 4] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];

/// Reads the parts of a Pod the policy needs. Missing fields read as "not known", never panic.
pub fn pod_status(pod: &Pod) -> PodStatus {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let ip = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok());
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let phase = status.and_then(|s| s.phase.as_deref());
    let running = phase == Some("Running");
    let finished = matches!(phase, Some("Failed" | "Succeeded"));
    let containers = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let restarts = containers.iter().map(|c| c.restart_count).max().unwrap_or(0);
    let started = !containers.is_empty() && containers.iter().all(|c| c.started.unwrap_or(c.ready));

    let waiting = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone()).unwrap_or_default()
    };
    let oom = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let now = c.state.as_ref().and_then(|s| s.terminated.as_ref());
        [last, now].into_iter().flatten().any(|t| t.reason.as_deref() == Some("OOMKilled"))
    };
    // Image pull first (nothing else can run), then OOM (the crash loop's cause), then crash loop.
    let critical = if containers.iter().any(|c| IMAGE_PULL_REASONS.contains(&waiting(c).as_str())) {
        Some(Critical::ImagePull)
    } else if let Some(c) = containers.iter().find(|c| oom(c)) {
        Some(Critical::OomKilled { restarts: c.restart_count, fresh: true })
    } else {
        containers
            .iter()
            .find(|c| waiting(c) == "CrashLoopBackOff")
            .map(|c| Critical::CrashLoop { restarts: c.restart_count })
    };
    let memory_limit = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.clone());

    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.kind == "ReplicaSet").map(|o| o.name.clone());
    let template = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).cloned();
    PodStatus {
        name,
        owner,
        template,
        ip,
        ready,
        running,
        finished,
        started,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        restarts,
        critical,
        memory_limit,
    }
}

/// The worker counters and gauges the controller reads from one scrape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerMetrics {
    pub processed: f64,
    pub failed: f64,
    /// Cumulative `(le, count)` of embedding_processing_duration_seconds, sorted by `le`.
    pub duration_buckets: Vec<(f64, f64)>,
    pub queue_depth: Option<f64>,
    pub inflight: Option<f64>,
    pub rate_limited: f64,
    pub rate_limit_wait_seconds: f64,
    /// embedding_worker_errors_total of the kinds with a cause outside the worker.
    pub outside_errors: f64,
}

/// `embedding_worker_errors_total` kinds whose cause is the provider, the database or the
/// input. A kind not listed (a new one) counts against the worker.
pub const OUTSIDE_ERROR_KINDS: &[&str] = &[
    // provider
    "rate_limited",
    "quota_exhausted",
    "transient",
    "invalid_request",
    "invalid_response",
    "unauthorized",
    // database
    "database",
    "schema",
    // input
    "rejected",
    "invalid",
    "invalid_input",
    "too_large",
];

/// Parses Prometheus text (or OpenMetrics) exposition, summing over label sets the
/// controller does not split by. Lines it cannot read are skipped, not fatal: one odd
/// metric must not blind the controller to the rest.
pub fn parse_worker_metrics(text: &str) -> WorkerMetrics {
    let mut m = WorkerMetrics::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        match name {
            "embedding_jobs_processed_total" => m.processed += value,
            "embedding_jobs_failed_total" => m.failed += value,
            "embedding_provider_rate_limited_total" => m.rate_limited += value,
            "embedding_rate_limit_wait_seconds_total" => m.rate_limit_wait_seconds += value,
            "embedding_worker_errors_total"
                if labels.iter().any(|(k, v)| k == "kind" && OUTSIDE_ERROR_KINDS.contains(&v.as_str())) =>
            {
                m.outside_errors += value
            }
            "embedding_queue_depth" => m.queue_depth = Some(m.queue_depth.map_or(value, |d: f64| d.max(value))),
            "embedding_inflight_jobs" => m.inflight = Some(m.inflight.unwrap_or(0.0) + value),
            "embedding_processing_duration_seconds_bucket" => {
                let Some(le) = labels.iter().find(|(k, _)| k == "le").and_then(|(_, v)| parse_value(v)) else {
                    continue;
                };
                match m.duration_buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += value,
                    None => m.duration_buckets.push((le, value)),
                }
            }
            _ => {}
        }
    }
    m.duration_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    m
}

/// Label pairs of one sample, in order.
type Labels = Vec<(String, String)>;

/// One sample line: `name{k="v",...} value [timestamp]`.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut val = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => val.push('\n'),
                                other => val.push(other),
                            },
                            '"' => break,
                            other => val.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), val));
                }
                other => key.push(other),
            }
        };
        rest = &body[end + 1..];
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some((name, labels, value))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// The `q` quantile of the observations between two cumulative bucket snapshots, with
/// linear interpolation inside the bucket (as Prometheus' histogram_quantile does).
/// `None` when fewer than `min_count` observations fell in between, or the buckets
/// changed shape (a restarted worker with other buckets).
pub fn quantile_between(q: f64, before: &[(f64, f64)], after: &[(f64, f64)], min_count: u64) -> Option<f64> {
    if before.len() != after.len() && !before.is_empty() {
        return None;
    }
    let mut deltas = Vec::with_capacity(after.len());
    for (i, (le, c)) in after.iter().enumerate() {
        let prev = match before.get(i) {
            Some((ple, pc)) if ple == le => *pc,
            Some(_) => return None,
            None => 0.0,
        };
        deltas.push((*le, (c - prev).max(0.0)));
    }
    let total = deltas.last().map(|(_, c)| *c)?;
    if total < min_count as f64 || total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &deltas {
        if count >= rank {
            if le.is_infinite() {
                // Above the highest finite bucket: the best known bound is that bucket's edge.
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
        }
        lower = (le, count);
    }
    None
}

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

    const EXPOSITION: &str = r#"# HELP embedding_jobs_processed Jobs embedded and stored.
# TYPE embedding_jobs_processed counter
embedding_jobs_processed_total 120
embedding_jobs_failed_total{provider="openai"} 3
embedding_jobs_failed_total{provider="gemini"} 2
embedding_worker_errors_total{kind="provider"} 4
embedding_provider_rate_limited_total{provider="openai"} 7
embedding_rate_limit_wait_seconds_total{provider="openai"} 12.5
embedding_queue_depth 42
embedding_inflight_jobs 3
embedding_processing_duration_seconds_bucket{le="0.5"} 10
embedding_processing_duration_seconds_bucket{le="1.0"} 50
embedding_processing_duration_seconds_bucket{le="+Inf"} 60
embedding_processing_duration_seconds_sum 70.5
embedding_processing_duration_seconds_count 60
odd_metric{label="with \"quotes\", and commas"} 1
not a sample line
# EOF
"#;

    #[test]
    fn worker_exposition_is_read() {
        let m = parse_worker_metrics(EXPOSITION);
        assert_eq!(m.processed, 120.0);
        assert_eq!(m.failed, 5.0);
        assert_eq!(m.rate_limited, 7.0);
        assert_eq!(m.rate_limit_wait_seconds, 12.5);
        assert_eq!(m.queue_depth, Some(42.0));
        assert_eq!(m.inflight, Some(3.0));
        assert_eq!(m.duration_buckets, vec![(0.5, 10.0), (1.0, 50.0), (f64::INFINITY, 60.0)]);
    }

    #[test]
    fn sample_lines_parse_labels_with_escapes() {
        let (name, labels, v) = parse_sample(r#"m{a="x\"y",b="1,2"} 3.5 1700000000"#).expect("parses");
        assert_eq!(name, "m");
        assert_eq!(labels, vec![("a".into(), "x\"y".into()), ("b".into(), "1,2".into())]);
        assert_eq!(v, 3.5);
        assert!(parse_sample(r#"m{a="unterminated} 1"#).is_none());
        assert!(parse_sample("m").is_none());
    }

    #[test]
    fn quantiles_come_from_bucket_deltas() {
        let b = |v: &[(f64, f64)]| v.to_vec();
        let inf = f64::INFINITY;
        type Buckets = Vec<(f64, f64)>;
        let cases: Vec<(&str, Buckets, Buckets, u64, Option<f64>)> = vec![
            ("all in the first bucket", vec![], b(&[(1.0, 100.0), (inf, 100.0)]), 1, Some(0.95)),
            (
                "delta, not lifetime: old fast jobs do not hide new slow ones",
                b(&[(1.0, 1000.0), (10.0, 1000.0), (inf, 1000.0)]),
                b(&[(1.0, 1000.0), (10.0, 1100.0), (inf, 1100.0)]),
                1,
                Some(1.0 + 9.0 * 0.95),
            ),
            ("too few jobs in the window", b(&[(1.0, 10.0), (inf, 10.0)]), b(&[(1.0, 15.0), (inf, 15.0)]), 20, None),
            ("beyond the last finite bucket", vec![], b(&[(1.0, 0.0), (5.0, 0.0), (inf, 50.0)]), 1, Some(5.0)),
            ("bucket layout changed", b(&[(1.0, 1.0), (inf, 1.0)]), b(&[(2.0, 50.0), (inf, 50.0)]), 1, None),
        ];
        for (name, before, after, min, want) in cases {
            let got = quantile_between(0.95, &before, &after, min);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{name}: {g} != {w}"),
                _ => assert_eq!(got, want, "{name}"),
            }
        }
    }

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

    fn pod_json(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("valid pod json")
    }

    #[test]
    fn pod_status_reads_kubelet_states() {
        let cases = vec![
            (
                "pulling fails",
                serde_json::json!({"metadata":{"name":"a"},"status":{"phase":"Pending","containerStatuses":[
                    {"name":"w","image":"i","imageID":"","ready":false,"restartCount":0,
                     "state":{"waiting":{"reason":"ImagePullBackOff"}}}]}}),
                Some(Critical::ImagePull),
            ),
            (
                "crash loop",
                serde_json::json!({"metadata":{"name":"a"},"status":{"phase":"Running","containerStatuses":[
                    {"name":"w","image":"i","imageID":"","ready":false,"restartCount":5,
                     "state":{"waiting":{"reason":"CrashLoopBackOff"}},
                     "lastState":{"terminated":{"exitCode":1,"reason":"Error"}}}]}}),
                Some(Critical::CrashLoop { restarts: 5 }),
            ),
            (
                "crash loop caused by OOM kills",
                serde_json::json!({"metadata":{"name":"a"},"status":{"phase":"Running","containerStatuses":[
                    {"name":"w","image":"i","imageID":"","ready":false,"restartCount":2,
                     "state":{"waiting":{"reason":"CrashLoopBackOff"}},
                     "lastState":{"terminated":{"exitCode":137,"reason":"OOMKilled"}}}]}}),
                Some(Critical::OomKilled { restarts: 2, fresh: true }),
            ),
            (
                "healthy",
                serde_json::json!({"metadata":{"name":"a"},"status":{"phase":"Running","podIP":"127.0.0.1",
                    "conditions":[{"type":"Ready","status":"True"}],
                    "containerStatuses":[{"name":"w","image":"i","imageID":"","ready":true,"restartCount":0,
                     "state":{"running":{}}}]}}),
                None,
            ),
            ("no status at all", serde_json::json!({"metadata":{"name":"a"}}), None),
        ];
        for (name, json, want) in cases {
            assert_eq!(pod_status(&pod_json(json)).critical, want, "{name}");
        }
        let healthy = pod_status(&pod_json(serde_json::json!({"metadata":{"name":"a"},
            "status":{"phase":"Running","podIP":"127.0.0.1","conditions":[{"type":"Ready","status":"True"}]}})));
        assert!(healthy.ready && healthy.running && !healthy.terminating);
        assert_eq!(healthy.ip, Some(IpAddr::from([127, 0, 0, 1])));
    }
}
