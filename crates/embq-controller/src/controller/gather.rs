//! What one tick sees: every running worker scraped at once, folded with the pod
//! states into the per-pod histories and the policy's input.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::kube_api::Fleet;
use crate::metrics::KindLabels;
use crate::observe::{PodStatus, Sample, WorkerMetrics};
use crate::policy::{CapacityObservation, Critical, FleetObservation, PodObservation, Reason};
use crate::worker::Health;

use super::{Context, State};

/// Share of the signal window the samples must span before a pod is judged on them:
/// a burst right after a start, a failover or on a new pod is not a five-minute signal.
const MIN_WINDOW_COVERAGE: f64 = 0.8;

/// Health and metrics of one worker; `None` where it was not scraped.
pub(super) struct Scrape {
    name: String,
    health: Option<Health>,
    metrics: Option<WorkerMetrics>,
}

/// Scrapes every running worker at once; each scrape is bounded by the client timeout.
pub(super) async fn scrape(ctx: &Arc<Context>, statuses: &[PodStatus]) -> Vec<Scrape> {
    let mut set = JoinSet::new();
    // An OOM kill is an event the kubelet already answered with a restart: the pod runs
    // again and stays judged. Only a pod that cannot run is not scraped.
    let scrapable = |p: &&PodStatus| !matches!(p.critical, Some(Critical::ImagePull | Critical::CrashLoop { .. }));
    for p in statuses.iter().filter(|p| p.running).filter(scrapable) {
        let Some(ip) = p.ip else { continue };
        let ctx = ctx.clone();
        let name = p.name.clone();
        set.spawn(async move {
            let (health, metrics) = tokio::join!(ctx.worker.health(ip), ctx.worker.metrics(ip));
            if health != Health::Ok {
                ctx.metrics.scrape_failures.get_or_create(&KindLabels { kind: "health" }).inc();
            }
            let metrics = metrics
                .inspect_err(|e| {
                    tracing::debug!(pod = %name, error = %e, "metrics scrape failed");
                    ctx.metrics.scrape_failures.get_or_create(&KindLabels { kind: "metrics" }).inc();
                })
                .ok();
            Scrape { name, health: Some(health), metrics }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(s) = r {
            out.push(s);
        }
    }
    out
}

/// Folds one look into the per-pod histories and builds the policy's input.
pub(super) fn observe(
    ctx: &Context,
    state: &mut State,
    fleet: &Fleet,
    statuses: &[PodStatus],
    scrapes: Vec<Scrape>,
    now: Instant,
) -> FleetObservation {
    let cfg = &ctx.config;
    let window = cfg.limits.signal_window.max(cfg.limits.pressure_window);
    state.pods.retain(|name, _| statuses.iter().any(|p| &p.name == name));
    let mut scrapes: HashMap<String, Scrape> = scrapes.into_iter().map(|s| (s.name.clone(), s)).collect();

    let mut pods = Vec::with_capacity(statuses.len());
    let mut rate_limited = false;
    let mut depth: Option<f64> = None;
    let mut saturation = Vec::new();
    for p in statuses {
        let history_seen = state.pods.contains_key(&p.name);
        let history = state.pods.entry(p.name.clone()).or_default();
        let moved = history.restarts_moved(p.restarts);
        let critical = match p.critical {
            // A remembered kill (lastState) is history, not a state: judge the pod as any other.
            Some(Critical::OomKilled { restarts, .. }) if moved => Some(Critical::OomKilled { restarts, fresh: true }),
            Some(Critical::OomKilled { .. }) => None,
            other => other,
        };
        let scrape = scrapes.remove(&p.name);
        let health_failing_for = scrape
            .as_ref()
            .and_then(|s| s.health)
            // Only a started worker is judged on /health; a starting one has its startup probe.
            .and_then(|h| history.health(now, if p.started { h } else { Health::Ok }));
        if let Some(m) = scrape.and_then(|s| s.metrics) {
            if p.ready {
                depth = Some(depth.map_or(m.queue_depth.unwrap_or(0.0), |d: f64| d.max(m.queue_depth.unwrap_or(0.0))));
                if let Some(inflight) = m.inflight {
                    saturation.push(inflight / f64::from(cfg.worker_max_concurrent_jobs));
                }
            }
            history.push(Sample { at: now, metrics: m }, window);
        }
        let signals = history.signals(cfg.min_jobs_in_window, cfg.limits.signal_window.mul_f64(MIN_WINDOW_COVERAGE));
        rate_limited |= signals.rate_limited;
        pods.push(PodObservation {
            name: p.name.clone(),
            ready: p.ready,
            critical,
            health_failing_for,
            restarts_moved: moved && history_seen,
            error_rate: signals.error_rate,
            p95_seconds: signals.p95_seconds,
            owner: p.owner.clone(),
            template: p.template.clone(),
        });
    }

    // Capacity: judged only from ready workers that answered; no answer, no judgement.
    let ready = statuses.iter().filter(|p| p.ready).count();
    let (pressure, (pressure_for, calm_for)) = match depth {
        Some(depth) if ready > 0 => {
            let mean_saturation = saturation.iter().sum::<f64>() / saturation.len().max(1) as f64;
            let reason = if depth / ready as f64 > cfg.queue_depth_per_worker {
                Some(Reason::QueueDepth)
            } else if depth > 0.0 && !saturation.is_empty() && mean_saturation >= cfg.saturation_threshold {
                Some(Reason::Saturation)
            } else {
                None
            };
            (reason, state.pressure.observe(now, reason.is_some()))
        }
        _ => (None, (None, None)),
    };

    FleetObservation {
        pods,
        max_unavailable: fleet.max_unavailable(),
        in_flight: {
            let mut v: Vec<_> = state.in_flight.iter().cloned().collect();
            v.sort();
            v
        },
        capacity: CapacityObservation { target: fleet.scale_target(), pressure, pressure_for, calm_for, rate_limited },
    }
}
