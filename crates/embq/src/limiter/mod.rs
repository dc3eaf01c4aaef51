//! Provider budgets: requests and tokens per minute, and the [`Limiter`] every request of a
//! metered provider waits on.
//!
//! - `state.rs`: the budget math ([`Rates`], [`BudgetState`]): two token buckets that start
//!   empty and hold one second's worth, a rolling ledger of grants (`state/ledger.rs`) that
//!   never grants more than the per-minute budgets in [`Rates::WINDOW_SECONDS`], the provider's
//!   pause, and the provider's [`Shape`] as its headers show it (`state/shape.rs`).
//! - [`Budget`]: where that state lives — [`LocalBudget`] in this process
//!   (`RATE_LIMIT_SCOPE=worker`, `local.rs`) or [`PgBudget`] in PostgreSQL, shared by every
//!   worker using the same API key (`RATE_LIMIT_SCOPE=fleet`, `postgres.rs`).
//! - `pauses.rs`: the fleet's pauses seen and cleared from outside (`embq budget resume`).
//! - `ratio.rs`: how many tokens the provider bills per token this worker counts.
//!
//! A request waits until the budget admits it ([`Limiter::acquire`]: a [`Permit`]); its tokens
//! are reserved up front (counted, scaled by the billed-to-counted ratio) and settled from the
//! response's `usage` ([`Limiter::settle`]), which also ends its time in flight.
//!
//! The provider's own signals win, and teach. Every response's [`RateSignals`] come here
//! through one path, the provider's [`SignalSink`] ([`LimiterSink`]), tagged with the grant
//! they answer ([`Limiter::during`]): a 429 pauses the budget for every task (and empties it)
//! for its `Retry-After` (or [`DEFAULT_PAUSE`] without one); a remaining with its reset says
//! how much the provider holds when whole, and the buckets grow to it. Against a provider whose
//! reports show a continuously refilled bucket (OpenAI's), its remaining less what it may not
//! have counted yet *is* the budget, and the rolling ledger holds nothing back; against
//! anything else `x-ratelimit-remaining-*` caps the levels, a remaining of zero pauses until
//! the matching `x-ratelimit-reset-*`, and the ledger keeps every rolling minute within the
//! budget. A provider that sends no headers gets the configured budgets. No pause lasts longer
//! than MAX_PROVIDER_PAUSE.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, warn};

use crate::config::Config;
use crate::provider::{RateSignals, SignalSink};

mod local;
mod pauses;
mod postgres;
mod ratio;
mod state;

use ratio::TokenRatio;

pub use local::LocalBudget;
pub use pauses::{fleet_budgets, fleet_pauses, resume_fleet, FleetBudget, FleetPause};
pub use postgres::{budget_key, PgBudget};
pub use state::{Bucket, BudgetState, Rates, Shape};

/// Errors of a shared budget store.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// The database holding the fleet budget failed; the caller waits and asks again.
    #[error("rate budget store unavailable: {0}")]
    Unavailable(String),
}

/// A grant's id: the limiter knows which request a report answers, so it knows what else is
/// still in flight.
pub type GrantId = u64;

/// What a budget store answers to a request for budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grant {
    /// Budget taken: send the request.
    Granted(GrantId),
    /// Not yet: ask again after this long.
    Wait(Duration),
}

/// Where a budget's state lives.
#[async_trait]
pub trait Budget: Send + Sync + 'static {
    /// Takes one request and `tokens`, or says how long to wait.
    async fn try_take(&self, tokens: u64) -> Result<Grant, LimiterError>;
    /// The request of `grant` was answered with `signals` (applied as [`Budget::report`]
    /// does): it is no longer in flight, and `delta` tokens are given back (`reserved − used`;
    /// negative takes more). True if the budget grew.
    async fn answer(&self, grant: GrantId, delta: i64, signals: &RateSignals) -> Result<bool, LimiterError>;
    /// Pauses the budget for every task sharing it.
    async fn pause(&self, d: Duration) -> Result<(), LimiterError>;
    /// How long the provider's pause lasts from now, if one is on.
    async fn paused_for(&self) -> Result<Option<Duration>, LimiterError>;
    /// Applies one response's report (to the request of `grant`, when known): weigh the
    /// provider's shape, learn, set or cap the levels, pause. True if the budget grew.
    async fn report(&self, r: &RateSignals, grant: Option<GrantId>) -> Result<bool, LimiterError>;
    /// What the provider's reports have shown about its budget.
    async fn shape(&self) -> Result<Shape, LimiterError>;
}

/// How long a 429 without any hint pauses the provider.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(2);

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
    /// What the provider bills per token this worker counts, learnt from `usage`.
    ratio: TokenRatio,
    /// The signals of answers whose grant is not yet settled: applied with the settlement, in
    /// one call of the budget store.
    answered: std::sync::Mutex<std::collections::HashMap<GrantId, RateSignals>>,
}

/// A request's place in the budget, from [`Limiter::acquire`] to [`Limiter::settle`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Permit {
    /// The grant.
    pub grant: GrantId,
    /// Tokens as this worker counted them.
    pub counted: u64,
    /// Tokens reserved: as counted, scaled by what the provider was seen to bill.
    pub reserved: u64,
    /// How long the request waited for budget.
    pub waited: Duration,
}

/// What the provider billed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billed {
    /// Its `usage`.
    Tokens(u64),
    /// Nothing: the request was refused.
    Nothing,
    /// Unknown (no `usage`, or a 429, which already emptied the budget): the reservation stands.
    Unknown,
}

tokio::task_local! {
    /// The grant of the provider call running in this task: its answer's signals report to it.
    static CALL: GrantId;
}

impl Limiter {
    /// A limiter over any budget store.
    pub fn new(budget: Arc<dyn Budget>) -> Self {
        Self {
            budget,
            max_pause: crate::config::DEFAULT_MAX_PAUSE,
            turn: tokio::sync::Mutex::new(()),
            grew: tokio::sync::Notify::new(),
            ratio: TokenRatio::default(),
            answered: Default::default(),
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

    /// Waits until one request of `counted` tokens (as this worker counts them) is admitted.
    /// Dropping the future gives up the turn without taking budget.
    pub async fn acquire(&self, counted: u64) -> Permit {
        let started = tokio::time::Instant::now();
        let reserved = self.ratio.scale(counted);
        let _turn = self.turn.lock().await;
        let mut store_down = Duration::from_millis(100);
        loop {
            match self.budget.try_take(reserved).await {
                Ok(Grant::Granted(grant)) => return Permit { grant, counted, reserved, waited: started.elapsed() },
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

    /// Runs the provider call of `permit`: the signals its answer reports are the answer to
    /// that grant, so the budget knows what else is still in flight.
    pub async fn during<F: std::future::Future>(&self, permit: &Permit, call: F) -> F::Output {
        CALL.scope(permit.grant, call).await
    }

    /// The request of `permit` was answered and billed `billed`: it leaves the in-flight
    /// count, its reservation is corrected, and its answer's signals are applied, in one call
    /// of the budget store made in the background (the caller does not wait for a shared
    /// store); `usage` teaches how the provider counts.
    pub fn settle(self: &Arc<Self>, permit: &Permit, billed: Billed) {
        let delta = match billed {
            Billed::Tokens(used) => {
                self.ratio.learn(permit.counted, used);
                permit.reserved as i64 - used as i64
            }
            Billed::Nothing => permit.reserved as i64,
            Billed::Unknown => 0,
        };
        let signals = self.stash().remove(&permit.grant).map(|s| self.prepare(&s)).unwrap_or_default();
        let (limiter, grant) = (self.clone(), permit.grant);
        tokio::spawn(async move {
            match limiter.budget.answer(grant, delta, &signals).await {
                Ok(true) => limiter.grew.notify_waiters(),
                Ok(false) => {}
                Err(e) => debug!(error = %e, "settling a grant failed"),
            }
        });
    }

    /// The answers awaiting their settlement. A poisoned lock is taken over: a map of signals
    /// cannot be left inconsistent.
    fn stash(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<GrantId, RateSignals>> {
        self.answered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps an answer's signals for its settlement. Never more than [`MAX_STASHED`]: signals of
    /// grants never settled are dropped rather than kept forever (a report less is harmless).
    fn keep(&self, grant: GrantId, signals: RateSignals) {
        let mut stash = self.stash();
        if stash.len() >= MAX_STASHED {
            stash.clear();
        }
        stash.insert(grant, signals);
    }

    /// What the provider's reports have shown about its budget (`Unknown` when the store
    /// cannot say).
    pub async fn shape(&self) -> Shape {
        self.budget.shape().await.unwrap_or_default()
    }

    /// Applies the signals of one response (to the request of `grant`, when known): learns,
    /// sets or caps the levels, and pauses every task sharing this budget for as long as the
    /// provider asked (at most MAX_PROVIDER_PAUSE); a 429 without any hint pauses [`DEFAULT_PAUSE`].
    pub async fn apply(&self, s: &RateSignals, grant: Option<GrantId>) {
        let s = self.prepare(s);
        match self.budget.report(&s, grant).await {
            Ok(true) => self.grew.notify_waiters(),
            Ok(false) => {}
            Err(e) if s.pause().is_some() => warn!(error = %e, "could not record the provider's pause"),
            Err(e) => debug!(error = %e, "provider rate signals not applied"),
        }
    }
}

impl Limiter {
    /// A response's signals as the budget takes them: a 429 without a hint asks for
    /// [`DEFAULT_PAUSE`], and no wait is longer than MAX_PROVIDER_PAUSE (saying so).
    fn prepare(&self, s: &RateSignals) -> RateSignals {
        let mut s = *s;
        if s.throttled && s.retry_after.is_none() {
            s.retry_after = Some(DEFAULT_PAUSE);
        }
        if let Some(asked) = s.pause() {
            self.allowed(asked);
        }
        s.capped(self.max_pause)
    }
}

/// The most answers kept for their settlement at once.
const MAX_STASHED: usize = 4096;

/// The limiter as the providers' signal sink. A 429 is applied before the provider call
/// returns, so no request of this worker goes out before its pause is recorded; any other
/// answer's signals go with its settlement ([`Limiter::settle`]), or, outside a call of
/// [`Limiter::during`], are applied in the background (the call does not wait for a shared store).
pub struct LimiterSink(pub Arc<Limiter>);

#[async_trait]
impl SignalSink for LimiterSink {
    async fn observe(&self, signals: &RateSignals) {
        let grant = CALL.try_with(|g| *g).ok();
        match grant {
            _ if signals.throttled => self.0.apply(signals, grant).await,
            Some(g) => self.0.keep(g, *signals),
            None => {
                let (limiter, signals) = (self.0.clone(), *signals);
                tokio::spawn(async move { limiter.apply(&signals, None).await });
            }
        }
    }
}

#[cfg(test)]
mod tests;
