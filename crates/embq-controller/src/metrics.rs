//! The controller's own metrics, all prefixed `restart_controller_`, with small fixed labels.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::policy::{Action, Guard, Reason};

macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}
label_value!(Action, Reason, Guard);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: Action,
    pub reason: Reason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SuppressedLabels {
    pub action: Action,
    pub guard: Guard,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Every metric of the controller.
pub struct Metrics {
    registry: Registry,
    /// Actions carried out, by action and reason.
    pub actions: Family<ActionLabels, Counter>,
    /// Actions a dry run would have carried out.
    pub dry_run_actions: Family<ActionLabels, Counter>,
    /// Actions decided but held back by a guard.
    pub suppressed: Family<SuppressedLabels, Counter>,
    /// How graceful restarts ended: replacement_ready, replacement_not_ready, eviction_refused, failed.
    pub restart_outcomes: Family<KindLabels, Counter>,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
    /// Failed ticks by error kind.
    pub reconcile_errors: Family<KindLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Failed worker scrapes by endpoint (health, metrics).
    pub scrape_failures: Family<KindLabels, Counter>,
    /// Events the API refused to store.
    pub event_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("restart_controller");
        let m = Metrics {
            actions: Family::default(),
            dry_run_actions: Family::default(),
            suppressed: Family::default(),
            restart_outcomes: Family::default(),
            leader: Gauge::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            scrape_failures: Family::default(),
            event_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("actions", "Actions carried out", m.actions.clone());
        registry.register("dry_run_actions", "Actions a dry run would have carried out", m.dry_run_actions.clone());
        registry.register("suppressed", "Actions held back by a guard", m.suppressed.clone());
        registry.register("restart_outcomes", "How graceful restarts ended", m.restart_outcomes.clone());
        registry.register("leader", "1 while this replica holds the Lease", m.leader.clone());
        registry.register("reconcile_errors", "Failed ticks by error kind", m.reconcile_errors.clone());
        registry.register("reconcile_duration_seconds", "Duration of one tick", m.reconcile_duration.clone());
        registry.register("scrape_failures", "Failed worker scrapes by endpoint", m.scrape_failures.clone());
        registry.register("event_failures", "Events the API refused to store", m.event_failures.clone());
        Metrics { registry, ..m }
    }

    pub fn action(&self, action: Action, reason: Reason) {
        self.actions.get_or_create(&ActionLabels { action, reason }).inc();
    }

    pub fn outcome(&self, kind: &'static str) {
        self.restart_outcomes.get_or_create(&KindLabels { kind }).inc();
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_exposed_with_snake_case_labels() {
        let m = Metrics::new();
        m.action(Action::GracefulRestart, Reason::HealthCheck);
        let text = m.encode();
        assert!(
            text.contains(r#"restart_controller_actions_total{action="graceful_restart",reason="health_check"} 1"#),
            "{text}"
        );
        assert!(text.contains("restart_controller_leader 0"), "{text}");
    }
}
