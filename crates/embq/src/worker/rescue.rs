//! When a worker may sweep for expired leases.
//!
//! A lease expires when its owner stops heartbeating: it crashed, or it could not reach the
//! database. The sweep cannot tell which, and a rescued job has spent its attempt (at
//! `MAX_ATTEMPTS=1` it is dead-lettered). So a worker that has itself just lost the database
//! does not sweep until one lease duration after it reached the database again: every owner
//! that is still alive has heartbeated by then (a heartbeat also extends an expired lease no
//! one has rescued), and only the leases of owners that really stopped are rescued.
//!
//! An outage long enough to expire leases (1.5 heartbeats) fails at least one heartbeat of
//! every live worker, so no worker sweeps early. A worker that started while the database was
//! down counts as having lost it.

use std::time::{Duration, Instant};

/// Whether the lease sweep may run now.
#[derive(Debug, Clone)]
pub(super) struct RescueGate {
    lease: Duration,
    /// The database is unreachable from here (last heartbeat failed).
    lost: bool,
    /// No sweep before this instant.
    hold_until: Option<Instant>,
}

impl RescueGate {
    /// A gate for leases of `lease`; `after_outage` when start-up had to wait for the database.
    pub(super) fn new(lease: Duration, after_outage: bool, now: Instant) -> Self {
        Self { lease, lost: false, hold_until: after_outage.then(|| now + lease) }
    }

    /// A heartbeat failed: no sweep until the database is back and a lease has passed.
    pub(super) fn database_lost(&mut self) {
        self.lost = true;
    }

    /// A heartbeat succeeded; true if this ends an outage (the hold starts now).
    pub(super) fn database_ok(&mut self, now: Instant) -> bool {
        if !std::mem::take(&mut self.lost) {
            return false;
        }
        self.hold_until = Some(now + self.lease);
        true
    }

    /// Whether to sweep now.
    pub(super) fn may_sweep(&self, now: Instant) -> bool {
        !self.lost && self.hold_until.is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_waits_one_lease_after_the_database_returns() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(45);
        let mut g = RescueGate::new(lease, false, t0);
        assert!(g.may_sweep(t0), "a worker that never lost the database sweeps");
        g.database_lost();
        assert!(!g.may_sweep(t0 + Duration::from_secs(600)), "never while the database is unreachable");
        let back = t0 + Duration::from_secs(600);
        assert!(g.database_ok(back));
        assert!(!g.database_ok(back), "only the first success ends the outage");
        assert!(!g.may_sweep(back + Duration::from_secs(44)));
        assert!(g.may_sweep(back + lease));
    }

    #[test]
    fn a_worker_that_waited_for_the_database_at_start_holds_its_first_sweeps() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(45);
        assert!(!RescueGate::new(lease, true, t0).may_sweep(t0 + Duration::from_secs(44)));
        assert!(RescueGate::new(lease, true, t0).may_sweep(t0 + lease));
        assert!(RescueGate::new(lease, false, t0).may_sweep(t0));
    }
}
