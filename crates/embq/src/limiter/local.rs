//! [`LocalBudget`]: the budget of one worker (`RATE_LIMIT_SCOPE=worker`), a [`BudgetState`]
//! behind a mutex on tokio's clock (so tests with a paused clock run it without waiting).

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::state::{BudgetState, Rates, Shape};
use super::{Budget, Grant, GrantId, LimiterError};
use crate::provider::RateSignals;

/// A budget held in this process.
pub struct LocalBudget {
    origin: tokio::time::Instant,
    state: Mutex<BudgetState>,
}

impl LocalBudget {
    /// Empty buckets with these rates.
    pub fn new(rates: Rates) -> Self {
        Self { origin: tokio::time::Instant::now(), state: Mutex::new(BudgetState::new(rates, 0.0)) }
    }

    /// Runs `f` on the state at the current time. A poisoned lock is taken over: every
    /// update leaves the state consistent, so a panic elsewhere cannot have broken it.
    fn with<T>(&self, f: impl FnOnce(&mut BudgetState, f64) -> T) -> T {
        let now = self.origin.elapsed().as_secs_f64();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s, now)
    }
}

#[async_trait]
impl Budget for LocalBudget {
    async fn try_take(&self, tokens: u64) -> Result<Grant, LimiterError> {
        Ok(match self.with(|s, now| s.try_take(now, tokens as f64)) {
            Ok(id) => Grant::Granted(id),
            Err(wait) => Grant::Wait(Duration::from_secs_f64(wait)),
        })
    }
    async fn answer(&self, grant: GrantId, delta: i64, signals: &RateSignals) -> Result<bool, LimiterError> {
        Ok(self.with(|s, now| {
            let grew = !signals.is_empty() && s.report(now, signals, Some(grant));
            s.settle(now, grant, delta as f64);
            grew
        }))
    }
    async fn pause(&self, d: Duration) -> Result<(), LimiterError> {
        self.with(|s, now| s.pause(now, d.as_secs_f64()));
        Ok(())
    }
    async fn paused_for(&self) -> Result<Option<Duration>, LimiterError> {
        Ok(self.with(|s, now| s.paused_for(now)).map(Duration::from_secs_f64))
    }
    async fn report(&self, r: &RateSignals, grant: Option<GrantId>) -> Result<bool, LimiterError> {
        Ok(self.with(|s, now| s.report(now, r, grant)))
    }
    async fn shape(&self) -> Result<Shape, LimiterError> {
        Ok(self.with(|s, _| s.shape()))
    }
}
