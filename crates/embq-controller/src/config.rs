//! Command-line flags (each with an environment variable), validated once into [`Config`].
//!
//! Every problem is reported at once, each naming its flag and variable, so a bad
//! Deployment fails at start with one readable message instead of a crash loop
//! that reveals one mistake per restart.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::policy::Limits;

/// Raw flags as typed by an operator. Turned into a [`Config`] by [`Config::from_args`].
#[derive(Parser, Debug, Clone)]
#[command(name = "embq-controller", version, about = "Restarts, drains and scales embq workers by failure class")]
pub struct Args {
    /// Namespace of the workers (and of the controller's Lease and Events).
    #[arg(long, env = "NAMESPACE", default_value = "paperless-maverick")]
    pub namespace: String,
    /// Label selector of the worker pods.
    #[arg(long, env = "WORKER_SELECTOR", default_value = "app=embedding-queue-worker")]
    pub selector: String,
    /// Deployment that owns the worker pods.
    #[arg(long, env = "WORKER_DEPLOYMENT", default_value = "embedding-queue-workers")]
    pub deployment: String,
    /// Worker health port (GET /health).
    #[arg(long, env = "WORKER_HEALTH_PORT", default_value_t = 8080)]
    pub worker_health_port: u16,
    /// Worker metrics port (GET /metrics).
    #[arg(long, env = "WORKER_METRICS_PORT", default_value_t = 9091)]
    pub worker_metrics_port: u16,
    /// Worker MAX_CONCURRENT_JOBS, to judge saturation from in-flight jobs.
    #[arg(long, env = "WORKER_MAX_CONCURRENT_JOBS", default_value_t = 3)]
    pub worker_max_concurrent_jobs: u32,

    /// Time between two looks at the fleet.
    #[arg(long, env = "RECONCILE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Timeout of one scrape of a worker's /health or /metrics.
    #[arg(long, env = "SCRAPE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub scrape_timeout: Duration,

    /// How long /health must fail continuously before a graceful restart. Longer than the
    /// workers' liveness probe (4 x 15 s), so the kubelet acts first where it can.
    #[arg(long, env = "HEALTH_FAILURE_THRESHOLD", default_value = "90s", value_parser = parse_duration)]
    pub health_failure_threshold: Duration,
    /// Failed / (processed + failed) jobs over the window above which a worker is restarted.
    #[arg(long, env = "ERROR_RATE_THRESHOLD", default_value_t = 0.5)]
    pub error_rate_threshold: f64,
    /// Window for the error rate and the duration p95.
    #[arg(long, env = "SIGNAL_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub signal_window: Duration,
    /// Jobs a worker must have finished in the window before its error rate or p95 is trusted.
    #[arg(long, env = "MIN_JOBS_IN_WINDOW", default_value_t = 20)]
    pub min_jobs_in_window: u64,
    /// Processing-duration p95 (seconds) above which a worker is restarted.
    #[arg(long, env = "P95_THRESHOLD_SECONDS", default_value_t = 30.0)]
    pub p95_threshold_seconds: f64,
    /// Container restarts before a crash loop counts as persistent.
    #[arg(long, env = "CRASH_LOOP_RESTARTS", default_value_t = 3)]
    pub crash_loop_restarts: i32,
    /// Container restarts whose last cause was OOMKilled before "memory limit too low" is reported.
    #[arg(long, env = "OOM_REPEAT_THRESHOLD", default_value_t = 2)]
    pub oom_repeat_threshold: i32,

    /// Minimum time between two actions on the same pod (and two reports about it).
    #[arg(long, env = "POD_COOLDOWN", default_value = "10m", value_parser = parse_duration)]
    pub pod_cooldown: Duration,
    /// Most disruptive actions (restarts, evictions) per window across the fleet.
    #[arg(long, env = "MAX_ACTIONS_PER_WINDOW", default_value_t = 3)]
    pub max_actions: u32,
    /// Window of the fleet-wide action cap.
    #[arg(long, env = "ACTION_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub action_window: Duration,
    /// Most pods disrupted at once (also bounded by the Deployment's maxUnavailable).
    #[arg(long, env = "MAX_DISRUPTED", default_value_t = 1)]
    pub max_disrupted: u32,
    /// Share of the pods that must stay Ready after a restart, else it is skipped (0 < share <= 1).
    #[arg(long, env = "MIN_READY_SHARE", default_value_t = 0.51)]
    pub min_ready_share: f64,
    /// Ready pods that must stay after a restart, else it is skipped.
    #[arg(long, env = "MIN_READY_PODS", default_value_t = 2)]
    pub min_ready_pods: u32,
    /// How long to wait for a worker to drain after POST /shutdown (worker DRAIN_TIMEOUT is 25s).
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Poll period while waiting for a drain.
    #[arg(long, env = "DRAIN_POLL", default_value = "1s", value_parser = parse_duration)]
    pub drain_poll: Duration,
    /// How long the replacement of an evicted worker has to become Ready.
    #[arg(long, env = "REPLACEMENT_TIMEOUT", default_value = "3m", value_parser = parse_duration)]
    pub replacement_timeout: Duration,
    /// Poll period while waiting for the replacement.
    #[arg(long, env = "REPLACEMENT_POLL", default_value = "5s", value_parser = parse_duration)]
    pub replacement_poll: Duration,

    /// Ready jobs in the queue per ready worker above which the fleet is under pressure.
    #[arg(long, env = "QUEUE_DEPTH_PER_WORKER", default_value_t = 10.0)]
    pub queue_depth_per_worker: f64,
    /// Mean in-flight jobs / MAX_CONCURRENT_JOBS at or above which workers are saturated.
    #[arg(long, env = "SATURATION_THRESHOLD", default_value_t = 0.9)]
    pub saturation_threshold: f64,
    /// How long pressure must last before scaling up.
    #[arg(long, env = "PRESSURE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub pressure_window: Duration,
    /// How long the pressure must be gone before the raised minimum is lowered again.
    #[arg(long, env = "CALM_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub calm_window: Duration,
    /// Minimum time between two scaling steps.
    #[arg(long, env = "SCALE_COOLDOWN", default_value = "3m", value_parser = parse_duration)]
    pub scale_cooldown: Duration,

    /// Elect a leader through a coordination.k8s.io Lease (disable only with one replica).
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "worker-restart-controller")]
    pub lease_name: String,
    /// How long a Lease stays valid without renewal.
    #[arg(long, env = "LEASE_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease (the pod name, from the downward API).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Decide and report ("would ..." Events) but change nothing.
    #[arg(long, env = "DRY_RUN", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,
    /// Address of the controller's own /health and /metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Everything the controller needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub selector: String,
    pub deployment: String,
    pub worker_health_port: u16,
    pub worker_metrics_port: u16,
    pub interval: Duration,
    pub scrape_timeout: Duration,
    pub min_jobs_in_window: u64,
    pub worker_max_concurrent_jobs: u32,
    pub drain_timeout: Duration,
    pub drain_poll: Duration,
    pub replacement_timeout: Duration,
    pub replacement_poll: Duration,
    pub queue_depth_per_worker: f64,
    pub saturation_threshold: f64,
    pub leader_election: bool,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub identity: String,
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    /// The thresholds and guards of the pure policy.
    pub limits: Limits,
}

/// Every problem found in the flags, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Validates the flags; `hostname` is the identity fallback when POD_NAME is unset.
    pub fn from_args(a: Args, hostname: Option<String>) -> Result<Self, ConfigError> {
        let mut p = Vec::new();
        let mut need = |ok: bool, msg: &str| {
            if !ok {
                p.push(msg.to_owned());
            }
        };
        need(
            is_dns_label(&a.namespace),
            "--namespace (NAMESPACE) must be a DNS label (lower-case letters, digits, '-')",
        );
        need(
            !a.selector.trim().is_empty(),
            "--selector (WORKER_SELECTOR) must not be empty: it would select every pod",
        );
        need(is_dns_subdomain(&a.deployment), "--deployment (WORKER_DEPLOYMENT) must be a valid object name");
        need(is_dns_subdomain(&a.lease_name), "--lease-name (LEASE_NAME) must be a valid object name");
        need(a.worker_health_port != 0, "--worker-health-port (WORKER_HEALTH_PORT) must not be 0");
        need(a.worker_metrics_port != 0, "--worker-metrics-port (WORKER_METRICS_PORT) must not be 0");
        need(
            a.worker_max_concurrent_jobs > 0,
            "--worker-max-concurrent-jobs (WORKER_MAX_CONCURRENT_JOBS) must be at least 1",
        );
        for (d, name) in [
            (a.interval, "--interval (RECONCILE_INTERVAL)"),
            (a.scrape_timeout, "--scrape-timeout (SCRAPE_TIMEOUT)"),
            (a.signal_window, "--signal-window (SIGNAL_WINDOW)"),
            (a.drain_timeout, "--drain-timeout (DRAIN_TIMEOUT)"),
            (a.drain_poll, "--drain-poll (DRAIN_POLL)"),
            (a.replacement_timeout, "--replacement-timeout (REPLACEMENT_TIMEOUT)"),
            (a.replacement_poll, "--replacement-poll (REPLACEMENT_POLL)"),
            (a.action_window, "--action-window (ACTION_WINDOW)"),
            (a.lease_duration, "--lease-duration (LEASE_DURATION)"),
        ] {
            need(!d.is_zero(), &format!("{name} must be greater than zero"));
        }
        need(
            a.scrape_timeout < a.interval,
            "--scrape-timeout (SCRAPE_TIMEOUT) must be shorter than --interval (RECONCILE_INTERVAL)",
        );
        need(
            !a.leader_election || a.lease_duration >= a.interval * 2,
            "--lease-duration (LEASE_DURATION) must be at least twice --interval (RECONCILE_INTERVAL), or the leader loses its Lease between renewals",
        );
        need(
            (0.0..=1.0).contains(&a.error_rate_threshold) && a.error_rate_threshold > 0.0,
            "--error-rate-threshold (ERROR_RATE_THRESHOLD) must be in (0, 1]",
        );
        need(
            a.saturation_threshold > 0.0 && a.saturation_threshold <= 1.0,
            "--saturation-threshold (SATURATION_THRESHOLD) must be in (0, 1]",
        );
        need(
            a.p95_threshold_seconds.is_finite() && a.p95_threshold_seconds > 0.0,
            "--p95-threshold-seconds (P95_THRESHOLD_SECONDS) must be a positive number",
        );
        need(
            a.queue_depth_per_worker.is_finite() && a.queue_depth_per_worker > 0.0,
            "--queue-depth-per-worker (QUEUE_DEPTH_PER_WORKER) must be a positive number",
        );
        need(a.min_jobs_in_window > 0, "--min-jobs-in-window (MIN_JOBS_IN_WINDOW) must be at least 1");
        need(a.crash_loop_restarts > 0, "--crash-loop-restarts (CRASH_LOOP_RESTARTS) must be at least 1");
        need(a.oom_repeat_threshold > 0, "--oom-repeat-threshold (OOM_REPEAT_THRESHOLD) must be at least 1");
        need(a.max_disrupted > 0, "--max-disrupted (MAX_DISRUPTED) must be at least 1");
        need(
            a.min_ready_share > 0.0 && a.min_ready_share <= 1.0,
            "--min-ready-share (MIN_READY_SHARE) must be above 0 and at most 1",
        );

        let identity = a.identity.clone().filter(|s| !s.is_empty()).or(hostname.filter(|s| !s.is_empty()));
        need(
            !a.leader_election || identity.is_some(),
            "--identity (POD_NAME) is required for leader election (set it from the downward API)",
        );
        if !p.is_empty() {
            return Err(ConfigError(p));
        }

        Ok(Config {
            limits: Limits {
                health_failure_after: a.health_failure_threshold,
                error_rate_max: a.error_rate_threshold,
                p95_max_seconds: a.p95_threshold_seconds,
                crash_loop_restarts: a.crash_loop_restarts,
                oom_repeat: a.oom_repeat_threshold,
                pod_cooldown: a.pod_cooldown,
                max_actions: a.max_actions,
                action_window: a.action_window,
                max_disrupted: a.max_disrupted,
                min_ready_share: a.min_ready_share,
                min_ready_pods: a.min_ready_pods,
                pressure_window: a.pressure_window,
                calm_window: a.calm_window,
                scale_cooldown: a.scale_cooldown,
                signal_window: a.signal_window,
                dry_run: a.dry_run,
            },
            namespace: a.namespace,
            selector: a.selector,
            deployment: a.deployment,
            worker_health_port: a.worker_health_port,
            worker_metrics_port: a.worker_metrics_port,
            interval: a.interval,
            scrape_timeout: a.scrape_timeout,
            min_jobs_in_window: a.min_jobs_in_window,
            worker_max_concurrent_jobs: a.worker_max_concurrent_jobs,
            drain_timeout: a.drain_timeout,
            drain_poll: a.drain_poll,
            replacement_timeout: a.replacement_timeout,
            replacement_poll: a.replacement_poll,
            queue_depth_per_worker: a.queue_depth_per_worker,
            saturation_threshold: a.saturation_threshold,
            leader_election: a.leader_election,
            lease_name: a.lease_name,
            lease_duration: a.lease_duration,
            identity: identity.unwrap_or_else(|| "worker-restart-controller".to_owned()),
            listen: a.listen,
            log_format: a.log_format,
        })
    }
}

/// Parses a duration with its unit, as the worker does (see [`embq_duration`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    embq_duration::parse(s).map_err(|e| e.to_string())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["embq-controller"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn durations_parse_with_units() {
        for (input, want) in [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
        ] {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
        for bad in ["", "s", "10x", "-1s", "ten", "10"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_args(args(&[]), Some("pod-1".into())).expect("defaults should validate");
        assert_eq!(c.namespace, "paperless-maverick");
        assert_eq!(c.selector, "app=embedding-queue-worker");
        assert_eq!(c.deployment, "embedding-queue-workers");
        assert_eq!(c.identity, "pod-1");
        assert!(!c.limits.dry_run);
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_variable() {
        let err = Config::from_args(
            args(&[
                "--namespace",
                "Bad_NS",
                "--error-rate-threshold",
                "1.5",
                "--interval",
                "0s",
                "--max-disrupted",
                "0",
            ]),
            Some("p".into()),
        )
        .expect_err("invalid");
        let text = err.to_string();
        for needle in ["NAMESPACE", "ERROR_RATE_THRESHOLD", "RECONCILE_INTERVAL", "MAX_DISRUPTED"] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
    }

    #[test]
    fn dry_run_parses_and_leader_election_needs_an_identity() {
        let c = Config::from_args(args(&["--dry-run"]), Some("p".into())).expect("valid");
        assert!(c.limits.dry_run);
        let c = Config::from_args(args(&["--dry-run", "false"]), None);
        assert!(c.is_err(), "no identity for leader election");
    }
}
