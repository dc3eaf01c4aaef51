//! Capacity decisions: report what the autoscaler cannot fix, give back what an earlier
//! version raised. The controller adds no pods.

use std::time::Duration;

use tokio::time::Instant;

use super::{act, Action, CapacityObservation, Decision, Guard, Limits, Memory, Reason, Subject, Verdict};

/// Capacity is the autoscaler's job: the controller adds no pods (a second loop adding
/// them would fight the HPA, and while the provider throttles every added pod only adds
/// 429s). It reports lasting pressure the provider causes, and gives back minimums an
/// earlier version raised (marked by the annotation) once the pressure has been gone for
/// the calm window. It never writes a Deployment's replicas: an autoscaler missing from
/// one list (a GitOps recreate) must not make the controller scale.
pub fn decide_capacity(c: &CapacityObservation, limits: &Limits, memory: &Memory, now: Instant) -> Option<Decision> {
    let target = c.target.as_ref()?;
    let lasting = c.pressure.zip(c.pressure_for).is_some_and(|(_, d)| d >= limits.pressure_window);
    let decision = |action, reason, scale_to, cooled: bool| Decision {
        subject: Subject::Fleet,
        action,
        reason,
        verdict: if cooled { act(limits) } else { Verdict::Suppressed(Guard::Cooldown) },
        scale_to,
        cooldown_key: None,
    };

    if lasting {
        if c.rate_limited {
            let key = (Subject::Fleet, Reason::RateLimited);
            let cooled = memory.report_cooled(&key, now, limits.scale_cooldown);
            return Some(decision(Action::HoldScale, Reason::RateLimited, None, cooled));
        }
        return None;
    }

    let original = target.original?;
    if c.pressure.is_some() || c.calm_for.is_none_or(|d| d < limits.calm_window) || target.current <= original {
        return None;
    }
    // The autoscaler's own scale-down behaviour paces the pods; give the minimum back at once.
    let cooled = memory.scale_cooled(now, limits.scale_cooldown);
    Some(decision(Action::ScaleDown, Reason::PressureGone, Some(original), cooled))
}

/// Tracks how long the fleet has been under pressure, or free of it.
#[derive(Debug, Default, Clone)]
pub struct PressureTracker {
    pressured_since: Option<Instant>,
    calm_since: Option<Instant>,
}

impl PressureTracker {
    /// Feeds one look; returns (pressure_for, calm_for).
    pub fn observe(&mut self, now: Instant, pressured: bool) -> (Option<Duration>, Option<Duration>) {
        if pressured {
            self.calm_since = None;
            let since = *self.pressured_since.get_or_insert(now);
            (Some(now.duration_since(since)), None)
        } else {
            self.pressured_since = None;
            let since = *self.calm_since.get_or_insert(now);
            (None, Some(now.duration_since(since)))
        }
    }
}
