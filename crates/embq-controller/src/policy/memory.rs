//! What the controller did before, as far as the guards need to know.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::{Action, Decision, Limits, Reason, Subject, Verdict};

/// How long a ReplicaSet whose crash-looping pod was evicted is remembered: longer than
/// any ReplicaSet lives in a working rollout, short enough to keep memory bounded.
const EVICTED_SET_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// What the controller did before, as far as the guards need to know.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    /// Last disruptive action per owning ReplicaSet (per pod when it has none).
    pub(super) last_disruption: HashMap<String, Instant>,
    /// Last eviction per owning ReplicaSet: a crash loop is evicted once per ReplicaSet.
    pub(super) evicted_sets: HashMap<String, Instant>,
    /// Last report per (subject, reason), so a lasting condition is reported once per cooldown.
    pub(super) last_report: HashMap<(Subject, Reason), Instant>,
    /// Disruptive actions across the fleet, oldest first, trimmed to the action window.
    pub(super) disruptions: VecDeque<Instant>,
    pub(super) last_scale: Option<Instant>,
}

impl Memory {
    /// Records the carried-out decisions (dry-run ones too, so a dry run shows the real cadence).
    pub fn record(&mut self, decisions: &[Decision], now: Instant, limits: &Limits) {
        for d in decisions.iter().filter(|d| matches!(d.verdict, Verdict::Skipped(_))) {
            self.last_report.insert((d.subject.clone(), d.reason), now);
        }
        for d in decisions.iter().filter(|d| d.carried_out()) {
            match d.action {
                Action::Report | Action::HoldScale => {
                    self.last_report.insert((d.subject.clone(), d.reason), now);
                }
                Action::Evict | Action::GracefulRestart => {
                    if let Some(key) = d.cooldown_key.clone().or_else(|| d.pod().map(str::to_owned)) {
                        if d.action == Action::Evict {
                            self.evicted_sets.insert(key.clone(), now);
                        }
                        self.last_disruption.insert(key, now);
                    }
                    self.disruptions.push_back(now);
                }
                Action::ScaleDown => self.last_scale = Some(now),
            }
        }
        self.forget_before(now, limits);
    }

    /// Drops what no guard can need any more, so memory stays bounded by the fleet.
    fn forget_before(&mut self, now: Instant, limits: &Limits) {
        let keep = limits.pod_cooldown.max(limits.scale_cooldown);
        self.last_disruption.retain(|_, t| now.duration_since(*t) < keep);
        self.evicted_sets.retain(|_, t| now.duration_since(*t) < EVICTED_SET_MEMORY);
        self.last_report.retain(|_, t| now.duration_since(*t) < keep);
        while self.disruptions.front().is_some_and(|t| now.duration_since(*t) >= limits.action_window) {
            self.disruptions.pop_front();
        }
    }

    pub(super) fn disruption_cooled(&self, pod: &str, now: Instant, cooldown: Duration) -> bool {
        self.last_disruption.get(pod).is_none_or(|t| now.duration_since(*t) >= cooldown)
    }

    pub(super) fn report_cooled(&self, key: &(Subject, Reason), now: Instant, cooldown: Duration) -> bool {
        self.last_report.get(key).is_none_or(|t| now.duration_since(*t) >= cooldown)
    }

    pub(super) fn disruptions_in_window(&self, now: Instant, window: Duration) -> usize {
        self.disruptions.iter().filter(|t| now.duration_since(**t) < window).count()
    }

    pub(super) fn scale_cooled(&self, now: Instant, cooldown: Duration) -> bool {
        self.last_scale.is_none_or(|t| now.duration_since(t) >= cooldown)
    }
}
