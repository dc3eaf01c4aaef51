//! The worker's health state, shared by the worker loop (which writes it) and the
//! health endpoints (which read it).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// A provider pause at least this long makes the worker not ready (it stops claiming);
/// the short pauses of routine 429s do not flap readiness.
pub const PAUSE_NOT_READY: Duration = Duration::from_secs(10);

/// Shared health flags.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// This worker's id.
    pub worker_id: String,
    startup_done: AtomicBool,
    draining: AtomicBool,
    db_ok: AtomicBool,
    schema_ok: AtomicBool,
    provider_parked: AtomicBool,
    /// When the provider's pause ends, in ms since `started` (0: no pause).
    paused_until_ms: AtomicU64,
    memory_over: AtomicBool,
    processing_enabled: bool,
    inflight: AtomicI64,
    last_tick_ms: AtomicU64,
    liveness_window: Duration,
    /// Cancelled to start a graceful drain.
    pub shutdown: CancellationToken,
}

/// The `/health` body.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    /// ok | stalled
    pub status: &'static str,
    /// embq version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Worker id.
    pub worker_id: String,
    /// Jobs in flight.
    pub in_flight: i64,
    /// Whether the worker claims jobs at all (ENABLE_QUEUE_PROCESSING).
    pub queue_processing: &'static str,
    /// Each check's state.
    pub checks: Checks,
}

/// Individual checks in `/health`.
#[derive(Debug, Serialize)]
pub struct Checks {
    /// started | starting
    pub startup: &'static str,
    /// ok | unavailable
    pub database: &'static str,
    /// ok | mismatch
    pub schema: &'static str,
    /// ok | paused (a Retry-After or an exhausted budget) | parked (quota exhausted)
    pub provider: &'static str,
    /// ok | over_limit
    pub memory: &'static str,
    /// running | draining
    pub lifecycle: &'static str,
    /// ok | stalled (the claim loop has not ticked recently)
    #[serde(rename = "loop")]
    pub loop_: &'static str,
}

impl Health {
    /// Fresh state; the loop counts as stalled after `liveness_window` without a tick.
    pub fn new(worker_id: String, processing_enabled: bool, liveness_window: Duration) -> Self {
        Self {
            started: Instant::now(),
            worker_id,
            startup_done: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            db_ok: AtomicBool::new(false),
            schema_ok: AtomicBool::new(false),
            provider_parked: AtomicBool::new(false),
            paused_until_ms: AtomicU64::new(0),
            memory_over: AtomicBool::new(false),
            processing_enabled,
            inflight: AtomicI64::new(0),
            last_tick_ms: AtomicU64::new(0),
            liveness_window,
            shutdown: CancellationToken::new(),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
    /// The claim loop is alive.
    pub fn tick(&self) {
        self.last_tick_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }
    /// Initialisation finished (config, schema, provider).
    pub fn set_started(&self) {
        self.tick();
        self.startup_done.store(true, Ordering::Relaxed);
    }
    /// Whether initialisation finished.
    pub fn started(&self) -> bool {
        self.startup_done.load(Ordering::Relaxed)
    }
    /// The worker is draining and claims nothing more.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    /// Whether a drain was requested.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.shutdown.is_cancelled()
    }
    /// Records whether the database answered.
    pub fn set_db_ok(&self, ok: bool) {
        self.db_ok.store(ok, Ordering::Relaxed);
    }
    /// Records whether the schema matched.
    pub fn set_schema_ok(&self, ok: bool) {
        self.schema_ok.store(ok, Ordering::Relaxed);
    }
    /// Parks or unparks the provider.
    pub fn set_provider_parked(&self, parked: bool) {
        self.provider_parked.store(parked, Ordering::Relaxed);
    }
    /// Records the provider's pause: how long it lasts from now (`None`: no pause).
    pub fn set_provider_paused(&self, left: Option<Duration>) {
        let until = left.map_or(0, |d| self.elapsed_ms().saturating_add(d.as_millis() as u64).max(1));
        self.paused_until_ms.store(until, Ordering::Relaxed);
    }
    /// How long the provider's pause lasts from now.
    pub fn provider_paused_for(&self) -> Option<Duration> {
        let until = self.paused_until_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(until.saturating_sub(self.elapsed_ms()))).filter(|d| !d.is_zero())
    }
    /// Records memory pressure.
    pub fn set_memory_over(&self, over: bool) {
        self.memory_over.store(over, Ordering::Relaxed);
    }
    /// Adjusts the in-flight job count.
    pub fn add_inflight(&self, n: i64) {
        self.inflight.fetch_add(n, Ordering::Relaxed);
    }
    /// Jobs in flight.
    pub fn inflight(&self) -> i64 {
        self.inflight.load(Ordering::Relaxed)
    }
    /// Whether RSS is above 90 % of `MEMORY_LIMIT_MB` (nothing new is taken on).
    pub fn memory_over(&self) -> bool {
        self.memory_over.load(Ordering::Relaxed)
    }

    /// Whether queue processing is enabled at all.
    pub fn processing_enabled(&self) -> bool {
        self.processing_enabled
    }

    /// Liveness: the loop ticked recently. Dependencies do not count here.
    pub fn live(&self) -> bool {
        let since = self.elapsed_ms().saturating_sub(self.last_tick_ms.load(Ordering::Relaxed));
        !self.started() || since <= self.liveness_window.as_millis() as u64
    }

    /// Why the worker is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        if !self.started() {
            r.push("starting");
        }
        if !self.db_ok.load(Ordering::Relaxed) {
            r.push("database unavailable");
        }
        if !self.schema_ok.load(Ordering::Relaxed) {
            r.push("schema not current");
        }
        if self.provider_parked.load(Ordering::Relaxed) {
            r.push("provider parked: quota exhausted");
        }
        if self.provider_paused_for().is_some_and(|d| d >= PAUSE_NOT_READY) {
            r.push(
                "provider paused (Retry-After or an exhausted rate budget; `embq budget resume` ends a fleet pause)",
            );
        }
        if self.draining() {
            r.push("draining");
        }
        if self.memory_over.load(Ordering::Relaxed) {
            r.push("memory above 90% of MEMORY_LIMIT_MB");
        }
        r
    }

    /// Whether the loop may claim: ready and processing enabled.
    pub fn can_claim(&self) -> bool {
        self.processing_enabled && self.not_ready_reasons().is_empty()
    }

    /// The `/health` body.
    pub fn report(&self) -> HealthReport {
        let flag = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
        let live = self.live();
        HealthReport {
            status: flag(live, "ok", "stalled"),
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.uptime().as_secs_f64(),
            worker_id: self.worker_id.clone(),
            in_flight: self.inflight(),
            queue_processing: flag(self.processing_enabled, "enabled", "disabled"),
            checks: Checks {
                startup: flag(self.started(), "started", "starting"),
                database: flag(self.db_ok.load(Ordering::Relaxed), "ok", "unavailable"),
                schema: flag(self.schema_ok.load(Ordering::Relaxed), "ok", "mismatch"),
                provider: if self.provider_parked.load(Ordering::Relaxed) {
                    "parked"
                } else {
                    flag(self.provider_paused_for().is_some(), "paused", "ok")
                },
                memory: flag(self.memory_over.load(Ordering::Relaxed), "over_limit", "ok"),
                lifecycle: flag(self.draining(), "draining", "running"),
                loop_: flag(live, "ok", "stalled"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_health() -> Health {
        let h = Health::new("w1".into(), true, Duration::from_secs(60));
        h.set_db_ok(true);
        h.set_schema_ok(true);
        h.set_started();
        h
    }

    #[test]
    fn readiness_lists_every_reason() {
        let h = ready_health();
        assert!(h.not_ready_reasons().is_empty());
        assert!(h.can_claim());
        h.set_db_ok(false);
        h.set_memory_over(true);
        h.set_provider_parked(true);
        assert_eq!(
            h.not_ready_reasons(),
            vec!["database unavailable", "provider parked: quota exhausted", "memory above 90% of MEMORY_LIMIT_MB"]
        );
        assert!(!h.can_claim());
        // Liveness ignores dependencies.
        assert!(h.live());
    }

    #[test]
    fn a_long_provider_pause_stops_claiming_a_short_one_does_not() {
        let h = ready_health();
        h.set_provider_paused(Some(Duration::from_secs(2)));
        assert!(h.can_claim(), "a routine 429 pause keeps the worker ready");
        assert_eq!(h.report().checks.provider, "paused");
        h.set_provider_paused(Some(Duration::from_secs(300)));
        assert!(!h.can_claim());
        assert!(h.not_ready_reasons()[0].starts_with("provider paused"), "{:?}", h.not_ready_reasons());
        assert!(h.provider_paused_for().is_some_and(|d| d > Duration::from_secs(290)));
        h.set_provider_paused(None);
        assert!(h.can_claim());
        assert_eq!(h.report().checks.provider, "ok");
    }

    #[test]
    fn disabled_processing_is_ready_but_claims_nothing() {
        let h = Health::new("w1".into(), false, Duration::from_secs(60));
        h.set_db_ok(true);
        h.set_schema_ok(true);
        h.set_started();
        assert!(h.not_ready_reasons().is_empty());
        assert!(!h.can_claim());
        assert_eq!(h.report().queue_processing, "disabled");
    }

    #[test]
    fn shutdown_request_means_draining() {
        let h = ready_health();
        h.shutdown.cancel();
        assert_eq!(h.not_ready_reasons(), vec!["draining"]);
    }
}
