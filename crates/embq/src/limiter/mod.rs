//! Provider budgets: requests and tokens per minute, and the [`Limiter`] every request of a
//! metered provider waits on.
//!
//! - `state.rs`: the budget math ([`Rates`], [`BudgetState`]): two token buckets that start
//!   empty and hold one second's worth, a rolling ledger that never grants more than the
//!   per-minute budgets in [`Rates::WINDOW_SECONDS`], and the provider's pause.
//! - [`Budget`]: where that state lives — [`LocalBudget`] in this process
//!   (`RATE_LIMIT_SCOPE=worker`, `local.rs`) or [`PgBudget`] in PostgreSQL, shared by every
//!   worker using the same API key (`RATE_LIMIT_SCOPE=fleet`, `postgres.rs`).
//! - `pauses.rs`: the fleet's pauses seen and cleared from outside (`embq budget resume`).
//!
//! A request waits until the budget admits it; its tokens are reserved up front (counted
//! before sending) and corrected from the response's `usage`.
//!
//! The provider's own signals win, and teach. Every response's [`RateSignals`] come here
//! through one path, the provider's [`SignalSink`] ([`LimiterSink`]): a 429 pauses the budget
//! for every task (and empties it) for its `Retry-After` (or [`DEFAULT_PAUSE`] without one);
//! `x-ratelimit-remaining-*` caps the levels, and a remaining of zero pauses until the
//! matching `x-ratelimit-reset-*`; a remaining with its reset says how much the provider
//! holds when whole, and the buckets grow to it. No pause lasts longer than
//! MAX_PROVIDER_PAUSE.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, warn};

use crate::config::Config;
use crate::provider::{RateSignals, SignalSink};

mod local;
mod pauses;
mod postgres;
mod state;

pub use local::LocalBudget;
pub use pauses::{fleet_pauses, resume_fleet, FleetPause};
pub use postgres::{budget_key, PgBudget};
pub use state::{Bucket, BudgetState, Rates};

/// Errors of a shared budget store.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// The database holding the fleet budget failed; the caller waits and asks again.
    #[error("rate budget store unavailable: {0}")]
    Unavailable(String),
}

/// What a budget store answers to a request for budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grant {
    /// Budget taken: send the request.
    Granted,
    /// Not yet: ask again after this long.
    Wait(Duration),
}

/// Where a budget's state lives.
#[async_trait]
pub trait Budget: Send + Sync + 'static {
    /// Takes one request and `tokens`, or says how long to wait.
    async fn try_take(&self, tokens: u64) -> Result<Grant, LimiterError>;
    /// Applies a token correction (`reserved − used`; negative takes more).
    async fn correct(&self, delta: i64) -> Result<(), LimiterError>;
    /// Pauses the budget for every task sharing it.
    async fn pause(&self, d: Duration) -> Result<(), LimiterError>;
    /// How long the provider's pause lasts from now, if one is on.
    async fn paused_for(&self) -> Result<Option<Duration>, LimiterError>;
    /// Caps the levels at the provider's remaining budgets.
    async fn clamp(&self, remaining_requests: Option<u64>, remaining_tokens: Option<u64>) -> Result<(), LimiterError>;
    /// Applies one response's report (learn, clamp, pause); true if the budget grew.
    /// By default it only clamps and pauses.
    async fn report(&self, r: &RateSignals) -> Result<bool, LimiterError> {
        if r.remaining_requests.is_some() || r.remaining_tokens.is_some() {
            self.clamp(r.remaining_requests, r.remaining_tokens).await?;
        }
        if let Some(p) = r.pause() {
            self.pause(p).await?;
        }
        Ok(false)
    }
}

/// How long a 429 without any hint pauses the provider.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(2);

/// How long a provider may pause the budget at most unless MAX_PROVIDER_PAUSE says otherwise.
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(300);

/// The longest a waiting caller sleeps before asking the budget again: a pause cleared by
/// `embq budget resume` (or a budget grown elsewhere) is noticed within this.
const RECHECK: Duration = Duration::from_secs(1);

/// The worker's handle on its budget: waits for budget, applies corrections and signals.
pub struct Limiter {
    budget: Arc<dyn Budget>,
    /// The longest pause a provider's signal may impose (MAX_PROVIDER_PAUSE).
    max_pause: Duration,
    /// Callers in this process take turns in arrival order (tokio's mutex is fair), so a
    /// large request is not starved by small ones and only one caller polls a shared store.
    turn: tokio::sync::Mutex<()>,
    /// Wakes the caller waiting for its turn when a report grew the budget.
    grew: tokio::sync::Notify,
}

impl Limiter {
    /// A limiter over any budget store.
    pub fn new(budget: Arc<dyn Budget>) -> Self {
        Self {
            budget,
            max_pause: DEFAULT_MAX_PAUSE,
            turn: tokio::sync::Mutex::new(()),
            grew: tokio::sync::Notify::new(),
        }
    }

    /// Caps every pause a provider asks for at `max`.
    pub fn with_max_pause(mut self, max: Duration) -> Self {
        self.max_pause = max;
        self
    }

    /// `asked` capped at the longest allowed pause, saying so when it was longer.
    fn allowed(&self, asked: Duration) -> Duration {
        if asked > self.max_pause {
            warn!(
                asked_secs = asked.as_secs(),
                pausing_secs = self.max_pause.as_secs(),
                "the provider asked for a pause longer than MAX_PROVIDER_PAUSE; pausing that long, then probing again"
            );
        }
        asked.min(self.max_pause)
    }

    /// How long the provider's pause lasts from now, if one is on (any worker's, for a
    /// fleet budget); `None` also when the budget store cannot say.
    pub async fn paused_for(&self) -> Option<Duration> {
        self.budget.paused_for().await.ok().flatten()
    }

    /// An in-process budget of `rpm` requests and `tpm` tokens per minute.
    pub fn local(rpm: u32, tpm: u32) -> Self {
        Self::new(Arc::new(LocalBudget::new(Rates::per_minute(rpm, tpm))))
    }

    /// The configured budgets, in the configured scope.
    pub fn from_config(cfg: &Config) -> Result<Self, LimiterError> {
        let rates = Rates::per_minute(cfg.max_requests_per_minute.get(), cfg.max_tokens_per_minute.get());
        let limiter = match cfg.rate_limit_scope {
            crate::config::RateLimitScope::Worker => Self::new(Arc::new(LocalBudget::new(rates))),
            crate::config::RateLimitScope::Fleet => {
                Self::new(Arc::new(PgBudget::connect(&cfg.database_url.for_driver(), budget_key(cfg), rates)?))
            }
        };
        Ok(limiter.with_max_pause(cfg.max_provider_pause))
    }

    /// Waits until one request of `tokens` tokens is admitted; returns how long it waited.
    /// Dropping the future gives up the turn without taking budget.
    pub async fn acquire(&self, tokens: u64) -> Duration {
        let started = tokio::time::Instant::now();
        let _turn = self.turn.lock().await;
        let mut store_down = Duration::from_millis(100);
        loop {
            match self.budget.try_take(tokens).await {
                Ok(Grant::Granted) => return started.elapsed(),
                Ok(Grant::Wait(d)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d.clamp(Duration::from_millis(1), RECHECK)) => {}
                        // The provider said it holds more than we knew: ask again now.
                        _ = self.grew.notified() => {}
                    }
                }
                Err(e) => {
                    warn!(error = %e, "rate budget unavailable; waiting");
                    tokio::time::sleep(store_down).await;
                    store_down = (store_down * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Corrects the reservation once the provider reported what it billed.
    pub async fn correct(&self, reserved: u64, used: u64) {
        if reserved != used {
            let delta = reserved as i64 - used as i64;
            if let Err(e) = self.budget.correct(delta).await {
                debug!(error = %e, "token correction lost");
            }
        }
    }

    /// Applies the signals of one response: learns, clamps, and pauses every task sharing
    /// this budget for as long as the provider asked (at most MAX_PROVIDER_PAUSE); a 429
    /// without any hint pauses [`DEFAULT_PAUSE`].
    pub async fn apply(&self, s: &RateSignals) {
        let mut s = *s;
        if s.throttled && s.retry_after.is_none() {
            s.retry_after = Some(DEFAULT_PAUSE);
        }
        if let Some(asked) = s.pause() {
            self.allowed(asked);
        }
        match self.budget.report(&s.capped(self.max_pause)).await {
            Ok(true) => self.grew.notify_waiters(),
            Ok(false) => {}
            Err(e) if s.pause().is_some() => warn!(error = %e, "could not record the provider's pause"),
            Err(e) => debug!(error = %e, "provider rate signals not applied"),
        }
    }
}

/// The limiter as the providers' signal sink. A 429 is applied before the provider call
/// returns, so no request of this worker goes out before its pause is recorded; any other
/// response's signals are applied in the background (the call does not wait for a shared store).
pub struct LimiterSink(pub Arc<Limiter>);

#[async_trait]
impl SignalSink for LimiterSink {
    async fn observe(&self, signals: &RateSignals) {
        if signals.throttled {
            self.0.apply(signals).await;
        } else {
            let (limiter, signals) = (self.0.clone(), *signals);
            tokio::spawn(async move { limiter.apply(&signals).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_provider_signal_pauses_longer_than_max_provider_pause() {
        let day = Duration::from_secs(86_400);
        let limiter = Limiter::local(6000, 6_000_000).with_max_pause(Duration::from_secs(5));
        assert_eq!(limiter.paused_for().await, None);
        limiter.apply(&RateSignals::throttle(Some(day))).await;
        assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(limiter.paused_for().await, None);
        let exhausted =
            RateSignals { remaining_requests: Some(0), reset_requests: Some(day), ..RateSignals::default() };
        limiter.apply(&exhausted).await;
        assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(5)));
        // The next request goes out when the capped pause ends, not tomorrow.
        let waited = limiter.acquire(1).await;
        assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(7), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn signals_pause_the_provider_when_a_budget_is_spent() {
        let limiter = Limiter::local(6000, 6_000_000);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let signals = RateSignals {
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_secs(20)),
            remaining_tokens: Some(5000),
            reset_tokens: Some(Duration::from_millis(10)),
            ..RateSignals::default()
        };
        limiter.apply(&signals).await;
        let waited = limiter.acquire(10).await;
        assert!(waited >= Duration::from_secs(20) && waited < Duration::from_secs(21), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_task_sharing_the_limiter() {
        let limiter = Arc::new(Limiter::local(6000, 6_000_000));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Through the sink, as a provider reports it: recorded before `observe` returns.
        LimiterSink(limiter.clone()).observe(&RateSignals::throttle(Some(Duration::from_secs(7)))).await;
        assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(7)));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move { l.acquire(1).await })
            })
            .collect();
        for t in tasks {
            let waited = t.await.unwrap();
            assert!(waited >= Duration::from_secs(7), "{waited:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_never_exceed_the_rate() {
        let limiter = Arc::new(Limiter::local(600, 60_000));
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        l.acquire(100).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // 200 requests of 100 tokens at 10 requests and 1,000 tokens a second: 20 s from empty.
        let took = start.elapsed().as_secs_f64();
        assert!((19.9..20.5).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_that_grows_the_budget_wakes_the_waiting_caller() {
        let limiter = Arc::new(Limiter::local(60, 6_000));
        // 60 RPM: the first request waits a second for an empty bucket to fill...
        let l = limiter.clone();
        let waiter = tokio::spawn(async move { l.acquire(10).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...unless the provider says it has a whole minute left.
        let signals = RateSignals {
            remaining_requests: Some(60),
            reset_requests: Some(Duration::ZERO),
            remaining_tokens: Some(6_000),
            reset_tokens: Some(Duration::ZERO),
            ..RateSignals::default()
        };
        limiter.apply(&signals).await;
        let waited = waiter.await.unwrap();
        assert!(waited < Duration::from_millis(150), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_a_hint_pauses_the_default() {
        let limiter = Limiter::local(6000, 6_000_000).with_max_pause(Duration::from_secs(60));
        limiter.apply(&RateSignals::throttle(None)).await;
        assert_eq!(limiter.paused_for().await, Some(DEFAULT_PAUSE));
        // Never longer than MAX_PROVIDER_PAUSE, even by default.
        let limiter = Limiter::local(6000, 6_000_000).with_max_pause(Duration::from_secs(1));
        limiter.apply(&RateSignals::throttle(None)).await;
        assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn ordinary_signals_reach_the_budget_in_the_background() {
        let limiter = Arc::new(Limiter::local(6000, 6_000_000));
        let spent = RateSignals {
            remaining_tokens: Some(0),
            reset_tokens: Some(Duration::from_secs(20)),
            ..RateSignals::default()
        };
        LimiterSink(limiter.clone()).observe(&spent).await;
        // Applied by a task of its own: the provider call did not wait for the budget store.
        let mut turns = 0;
        while limiter.paused_for().await.is_none() {
            assert!(turns < 100, "the signals never reached the budget");
            tokio::task::yield_now().await;
            turns += 1;
        }
        assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(20)));
    }
}
