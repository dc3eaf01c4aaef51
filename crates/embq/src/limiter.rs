//! Provider budgets: requests and tokens per minute, refilled continuously.
//!
//! Each budget is a pair of token buckets (requests, tokens) filled at `budget / 60` per
//! second up to one second's worth, starting empty: a worker never bursts a whole minute at
//! start, and from any start no interval of length `t` spends more than `burst + rate × t`
//! (proptested below). A request waits until both buckets admit it; its tokens are
//! reserved up front (counted before sending) and corrected from the response's `usage`.
//! A request larger than a bucket waits for a full bucket and leaves it in debt.
//!
//! The provider's own signals win: a 429 or `Retry-After` pauses the budget for every task
//! (and empties it), `x-ratelimit-remaining-*` caps the levels, and a remaining of zero
//! pauses until the matching `x-ratelimit-reset-*`.
//!
//! Where the buckets live is a [`Budget`]: [`LocalBudget`] in this process
//! (`RATE_LIMIT_SCOPE=worker`), or [`PgBudget`] in one PostgreSQL row shared by every
//! worker using the same API key (`RATE_LIMIT_SCOPE=fleet`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tracing::{debug, warn};

use crate::config::{Config, ProviderKind};
use crate::provider::{RateSignals, SignalSink};

/// Errors of a shared budget store.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// The database holding the fleet budget failed; the caller waits and asks again.
    #[error("rate budget store unavailable: {0}")]
    Unavailable(String),
}

/// Per-minute budgets and how much of them may be spent at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Tokens per second.
    pub tokens_per_sec: f64,
    /// Most requests a full bucket holds.
    pub request_burst: f64,
    /// Most tokens a full bucket holds.
    pub token_burst: f64,
}

impl Rates {
    /// Seconds of budget a full bucket holds: short enough that no window sees a burst.
    pub const BURST_SECONDS: f64 = 1.0;

    /// Budgets of `rpm` requests and `tpm` tokens per minute.
    pub fn per_minute(rpm: u32, tpm: u32) -> Self {
        let r = f64::from(rpm.max(1)) / 60.0;
        let t = f64::from(tpm.max(1)) / 60.0;
        Self {
            requests_per_sec: r,
            tokens_per_sec: t,
            request_burst: (r * Self::BURST_SECONDS).max(1.0),
            token_burst: (t * Self::BURST_SECONDS).max(1.0),
        }
    }
}

/// One continuously refilled bucket; time is seconds since an arbitrary origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    rate: f64,
    cap: f64,
    level: f64,
    at: f64,
}

impl Bucket {
    /// An empty bucket at time `now`.
    pub fn empty(rate: f64, cap: f64, now: f64) -> Self {
        Self { rate, cap, level: 0.0, at: now }
    }

    fn refill(&mut self, now: f64) {
        if now > self.at {
            self.level = (self.level + self.rate * (now - self.at)).min(self.cap);
            self.at = now;
        }
    }

    /// Seconds until `cost` is admitted (0 = now). More than a bucket holds needs a full bucket.
    fn wait_for(&self, cost: f64) -> f64 {
        ((cost.min(self.cap) - self.level) / self.rate).max(0.0)
    }

    /// The current level (after `refill`).
    pub fn level(&self) -> f64 {
        self.level
    }
}

/// Both buckets and the provider's pause: the whole state of one budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetState {
    requests: Bucket,
    tokens: Bucket,
    paused_until: f64,
}

impl BudgetState {
    /// Empty buckets at `now`.
    pub fn new(rates: Rates, now: f64) -> Self {
        Self {
            requests: Bucket::empty(rates.requests_per_sec, rates.request_burst, now),
            tokens: Bucket::empty(rates.tokens_per_sec, rates.token_burst, now),
            paused_until: f64::NEG_INFINITY,
        }
    }

    fn refill(&mut self, now: f64) {
        self.requests.refill(now);
        self.tokens.refill(now);
    }

    /// Takes one request and `tokens` if both buckets admit them now; else the seconds to wait.
    pub fn try_take(&mut self, now: f64, tokens: f64) -> Result<(), f64> {
        self.refill(now);
        if now < self.paused_until {
            return Err(self.paused_until - now);
        }
        let wait = self.requests.wait_for(1.0).max(self.tokens.wait_for(tokens));
        // A nanosecond is rounding, not a wait (and `now + 1e-16` may not advance `now`).
        if wait > 1e-9 {
            return Err(wait);
        }
        self.requests.level -= 1.0;
        self.tokens.level -= tokens;
        Ok(())
    }

    /// Gives back (`delta > 0`) or takes more (`delta < 0`) tokens once usage is known.
    pub fn correct(&mut self, now: f64, delta: f64) {
        self.refill(now);
        self.tokens.level = (self.tokens.level + delta).min(self.tokens.cap);
    }

    /// The provider said stop: nothing is granted for `secs`, and the buckets restart empty.
    pub fn pause(&mut self, now: f64, secs: f64) {
        self.refill(now);
        self.paused_until = self.paused_until.max(now + secs);
        self.requests.level = self.requests.level.min(0.0);
        self.tokens.level = self.tokens.level.min(0.0);
    }

    /// Caps the levels at what the provider says is left.
    pub fn clamp(&mut self, now: f64, remaining_requests: Option<f64>, remaining_tokens: Option<f64>) {
        self.refill(now);
        if let Some(r) = remaining_requests {
            self.requests.level = self.requests.level.min(r);
        }
        if let Some(t) = remaining_tokens {
            self.tokens.level = self.tokens.level.min(t);
        }
    }

    /// Requests and tokens available now.
    pub fn levels(&mut self, now: f64) -> (f64, f64) {
        self.refill(now);
        (self.requests.level, self.tokens.level)
    }
}

/// What a budget store answers to a request for budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grant {
    /// Budget taken: send the request.
    Granted,
    /// Not yet: ask again after this long.
    Wait(Duration),
}

/// Where a budget's buckets live.
#[async_trait]
pub trait Budget: Send + Sync + 'static {
    /// Takes one request and `tokens`, or says how long to wait.
    async fn try_take(&self, tokens: u64) -> Result<Grant, LimiterError>;
    /// Applies a token correction (`reserved − used`; negative takes more).
    async fn correct(&self, delta: i64) -> Result<(), LimiterError>;
    /// Pauses the budget for every task sharing it.
    async fn pause(&self, d: Duration) -> Result<(), LimiterError>;
    /// Caps the levels at the provider's remaining budgets.
    async fn clamp(&self, remaining_requests: Option<u64>, remaining_tokens: Option<u64>) -> Result<(), LimiterError>;
}

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

    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BudgetState, f64) -> T) -> T {
        let now = self.now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s, now)
    }
}

#[async_trait]
impl Budget for LocalBudget {
    async fn try_take(&self, tokens: u64) -> Result<Grant, LimiterError> {
        Ok(match self.with(|s, now| s.try_take(now, tokens as f64)) {
            Ok(()) => Grant::Granted,
            Err(wait) => Grant::Wait(Duration::from_secs_f64(wait)),
        })
    }
    async fn correct(&self, delta: i64) -> Result<(), LimiterError> {
        self.with(|s, now| s.correct(now, delta as f64));
        Ok(())
    }
    async fn pause(&self, d: Duration) -> Result<(), LimiterError> {
        self.with(|s, now| s.pause(now, d.as_secs_f64()));
        Ok(())
    }
    async fn clamp(&self, req: Option<u64>, tok: Option<u64>) -> Result<(), LimiterError> {
        self.with(|s, now| s.clamp(now, req.map(|r| r as f64), tok.map(|t| t as f64)));
        Ok(())
    }
}

/// A budget shared by every worker on one PostgreSQL database (schema v2, `embq.rate_budgets`).
///
/// If the database lacks schema v2 (the functions are missing), it says so once and budgets
/// in process instead of blocking the worker.
pub struct PgBudget {
    pool: PgPool,
    key: String,
    rates: Rates,
    fallback: LocalBudget,
    schema_missing: std::sync::atomic::AtomicBool,
}

impl PgBudget {
    /// A budget in `pool` under `key` (see [`budget_key`]).
    pub fn new(pool: PgPool, key: String, rates: Rates) -> Self {
        Self { pool, key, rates, fallback: LocalBudget::new(rates), schema_missing: Default::default() }
    }

    fn degraded(&self) -> bool {
        self.schema_missing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Maps a database error; a missing function or table switches to the in-process budget.
    fn fail(&self, e: sqlx::Error) -> LimiterError {
        let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.to_string());
        // 42883 undefined_function, 42P01 undefined_table, 3F000 invalid_schema_name.
        if matches!(code.as_deref(), Some("42883" | "42P01" | "3F000"))
            && !self.schema_missing.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(
                "the fleet rate budget needs schema version 2 (run `embq migrate`); budgeting per worker until then"
            );
        }
        LimiterError::Unavailable(e.to_string())
    }

    /// A small pool of its own (two connections, opened on first use) on `url`.
    pub fn connect(url: &str, key: String, rates: Rates) -> Result<Self, LimiterError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)
            .map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        Ok(Self::new(pool, key, rates))
    }

    /// The budget key.
    pub fn key(&self) -> &str {
        &self.key
    }

    async fn adjust(
        &self,
        delta: f64,
        pause: Option<f64>,
        req: Option<f64>,
        tok: Option<f64>,
    ) -> Result<(), LimiterError> {
        if self.degraded() {
            self.fallback.with(|s, now| {
                s.correct(now, delta);
                if let Some(p) = pause {
                    s.pause(now, p);
                }
                s.clamp(now, req, tok);
            });
            return Ok(());
        }
        let r = self.rates;
        // Unnamed statements only: this also runs through transaction-mode poolers.
        sqlx::query("SELECT embq.rate_budget_adjust($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .persistent(false)
            .bind(&self.key)
            .bind(delta)
            .bind(pause)
            .bind(req)
            .bind(tok)
            .bind(r.requests_per_sec)
            .bind(r.request_burst)
            .bind(r.tokens_per_sec)
            .bind(r.token_burst)
            .execute(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }
}

#[async_trait]
impl Budget for PgBudget {
    async fn try_take(&self, tokens: u64) -> Result<Grant, LimiterError> {
        if self.degraded() {
            return self.fallback.try_take(tokens).await;
        }
        let r = self.rates;
        let wait: f64 = sqlx::query_scalar("SELECT embq.rate_budget_take($1, $2, $3, $4, $5, $6)")
            .persistent(false)
            .bind(&self.key)
            .bind(tokens as f64)
            .bind(r.requests_per_sec)
            .bind(r.request_burst)
            .bind(r.tokens_per_sec)
            .bind(r.token_burst)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(if wait <= 0.0 { Grant::Granted } else { Grant::Wait(Duration::from_secs_f64(wait.min(3600.0))) })
    }
    async fn correct(&self, delta: i64) -> Result<(), LimiterError> {
        self.adjust(delta as f64, None, None, None).await
    }
    async fn pause(&self, d: Duration) -> Result<(), LimiterError> {
        self.adjust(0.0, Some(d.as_secs_f64()), None, None).await
    }
    async fn clamp(&self, req: Option<u64>, tok: Option<u64>) -> Result<(), LimiterError> {
        self.adjust(0.0, None, req.map(|r| r as f64), tok.map(|t| t as f64)).await
    }
}

/// The fleet budget's key: quotas belong to the API key (and OpenAI's to the model), so
/// workers share a budget exactly when they share both. Only a hash of the key is stored.
pub fn budget_key(cfg: &Config) -> String {
    let secret = match cfg.provider {
        ProviderKind::Gemini => cfg.gemini_api_key.as_ref(),
        _ => cfg.openai_api_key.as_ref(),
    };
    let mut h = Sha256::new();
    h.update(secret.map(|s| s.expose()).unwrap_or_default().as_bytes());
    h.update(b"\0");
    h.update(cfg.openai_base_url.as_deref().unwrap_or_default().as_bytes());
    let digest = hex::encode(h.finalize());
    format!("{}:{}:{}", cfg.provider.as_str(), cfg.model, &digest[..16])
}

/// How long a 429 without any hint pauses the provider.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(2);

/// The worker's handle on its budget: waits for budget, applies corrections and signals.
pub struct Limiter {
    budget: Arc<dyn Budget>,
    /// Callers in this process take turns in arrival order (tokio's mutex is fair), so a
    /// large request is not starved by small ones and only one caller polls a shared store.
    turn: tokio::sync::Mutex<()>,
}

impl Limiter {
    /// A limiter over any budget store.
    pub fn new(budget: Arc<dyn Budget>) -> Self {
        Self { budget, turn: tokio::sync::Mutex::new(()) }
    }

    /// An in-process budget of `rpm` requests and `tpm` tokens per minute.
    pub fn local(rpm: u32, tpm: u32) -> Self {
        Self::new(Arc::new(LocalBudget::new(Rates::per_minute(rpm, tpm))))
    }

    /// The configured budgets, in the configured scope.
    pub fn from_config(cfg: &Config) -> Result<Self, LimiterError> {
        let rates = Rates::per_minute(cfg.max_requests_per_minute.get(), cfg.max_tokens_per_minute.get());
        Ok(match cfg.rate_limit_scope {
            crate::config::RateLimitScope::Worker => Self::new(Arc::new(LocalBudget::new(rates))),
            crate::config::RateLimitScope::Fleet => {
                Self::new(Arc::new(PgBudget::connect(cfg.database_url.expose(), budget_key(cfg), rates)?))
            }
        })
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
                Ok(Grant::Wait(d)) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
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

    /// A 429: pause the provider for every task sharing this budget.
    pub async fn throttled(&self, retry_after: Option<Duration>) {
        let d = retry_after.unwrap_or(DEFAULT_PAUSE);
        if let Err(e) = self.budget.pause(d).await {
            warn!(error = %e, "could not record the provider's pause");
        }
    }

    /// Applies the signals of one response.
    pub async fn apply(&self, s: &RateSignals) {
        let exhausted = [(s.remaining_requests, s.reset_requests), (s.remaining_tokens, s.reset_tokens)]
            .into_iter()
            .filter_map(|(left, reset)| if left == Some(0) { reset } else { None })
            .max();
        let pause = s.retry_after.into_iter().chain(exhausted).max();
        let result = async {
            if s.remaining_requests.is_some() || s.remaining_tokens.is_some() {
                self.budget.clamp(s.remaining_requests, s.remaining_tokens).await?;
            }
            if let Some(d) = pause.filter(|d| !d.is_zero()) {
                self.budget.pause(d).await?;
            }
            Ok::<(), LimiterError>(())
        }
        .await;
        if let Err(e) = result {
            debug!(error = %e, "provider rate signals not applied");
        }
    }
}

/// The limiter as the providers' signal sink: each response's headers are applied in the
/// background (the provider call does not wait for a shared store).
pub struct LimiterSink(pub Arc<Limiter>);

impl SignalSink for LimiterSink {
    fn observe(&self, signals: &RateSignals) {
        let limiter = self.0.clone();
        let signals = signals.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { limiter.apply(&signals).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rates() -> Rates {
        // 600 RPM, 60,000 TPM: 10 requests and 1,000 tokens a second.
        Rates::per_minute(600, 60_000)
    }

    #[test]
    fn buckets_start_empty_and_refill_continuously() {
        let mut s = BudgetState::new(rates(), 0.0);
        // Nothing at start: the first 500-token request waits half a second, not a minute's burst.
        assert_eq!(s.try_take(0.0, 500.0), Err(0.5));
        assert_eq!(s.try_take(0.5, 500.0), Ok(()));
        // 0.1 s later: one request is back (10/s), but only 100 tokens.
        assert!((s.try_take(0.6, 500.0).unwrap_err() - 0.4).abs() < 1e-9);
        // Never more than one second's worth accumulates.
        assert_eq!(s.levels(100.0), (10.0, 1000.0));
    }

    #[test]
    fn both_budgets_must_admit_a_request() {
        let mut s = BudgetState::new(Rates::per_minute(60, 600_000), 0.0);
        // Tokens are plentiful after 1 s, requests allow exactly one per second.
        assert_eq!(s.try_take(1.0, 10.0), Ok(()));
        let wait = s.try_take(1.0, 10.0).unwrap_err();
        assert!((wait - 1.0).abs() < 1e-9, "{wait}");
    }

    #[test]
    fn a_request_larger_than_the_bucket_waits_for_a_full_bucket_then_owes() {
        let mut s = BudgetState::new(rates(), 0.0);
        assert_eq!(s.try_take(0.0, 3000.0), Err(1.0));
        assert_eq!(s.try_take(1.0, 3000.0), Ok(()));
        // 2,000 tokens of debt: the next 100-token request waits 2.1 s.
        assert!((s.try_take(1.0, 100.0).unwrap_err() - 2.1).abs() < 1e-9);
    }

    #[test]
    fn corrections_return_or_take_tokens() {
        let mut s = BudgetState::new(rates(), 0.0);
        assert_eq!(s.try_take(1.0, 800.0), Ok(()));
        s.correct(1.0, 600.0); // used 200 of 800 reserved
        assert_eq!(s.levels(1.0).1, 800.0);
        s.correct(1.0, -900.0); // used more than reserved
        assert_eq!(s.levels(1.0).1, -100.0);
    }

    #[test]
    fn a_pause_stops_every_grant_and_restarts_empty() {
        let mut s = BudgetState::new(rates(), 0.0);
        s.pause(5.0, 3.0);
        assert_eq!(s.try_take(5.0, 1.0), Err(3.0));
        assert_eq!(s.try_take(7.0, 1.0), Err(1.0));
        // At 8 s the pause is over and 3 s of refill have come back (capped at one second's worth).
        assert_eq!(s.try_take(8.0, 1.0), Ok(()));
        // A shorter later pause does not shorten a longer one.
        s.pause(8.0, 10.0);
        s.pause(9.0, 1.0);
        assert!((s.try_take(9.0, 1.0).unwrap_err() - 9.0).abs() < 1e-9);
    }

    #[test]
    fn remaining_headers_cap_the_levels() {
        let mut s = BudgetState::new(rates(), 0.0);
        s.clamp(10.0, Some(2.0), Some(150.0));
        assert_eq!(s.levels(10.0), (2.0, 150.0));
        assert!(s.try_take(10.0, 500.0).is_err());
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
        limiter.throttled(Some(Duration::from_secs(7))).await;
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

    #[test]
    fn budget_keys_separate_keys_and_models_and_hide_the_secret() {
        let cfg = |key: &str, model: &str| {
            let raw = crate::config::RawConfig {
                embedding_provider: Some("openai".into()),
                openai_api_key: Some(key.into()),
                embedding_model: Some(model.into()),
                ..Default::default()
            };
            raw.validate().unwrap()
        };
        let a = budget_key(&cfg("sk-one-secret", "text-embedding-3-small"));
        assert_eq!(a, budget_key(&cfg("sk-one-secret", "text-embedding-3-small")));
        assert_ne!(a, budget_key(&cfg("sk-two-secret", "text-embedding-3-small")));
        assert_ne!(a, budget_key(&cfg("sk-one-secret", "text-embedding-3-large")));
        assert!(a.starts_with("openai:text-embedding-3-small:") && !a.contains("secret"), "{a}");
    }

    proptest! {
        /// No window spends more than one burst plus its length's worth of refill, and from
        /// the start (empty buckets) no more than its length's worth at all.
        #[test]
        fn no_window_exceeds_its_budget(
            rpm in 60u32..6000,
            tpm in 1000u32..200_000,
            reqs in proptest::collection::vec((0.0f64..2.0, 1u32..3000, 0.5f64..=1.0), 1..120),
        ) {
            let rates = Rates::per_minute(rpm, tpm);
            let mut s = BudgetState::new(rates, 0.0);
            let mut now = 0.0f64;
            let mut grants: Vec<(f64, f64)> = Vec::new(); // (time, tokens actually used)
            for (gap, tokens, used_share) in reqs {
                now += gap;
                let tokens = f64::from(tokens).min(rates.token_burst); // the planner never sends more
                loop {
                    match s.try_take(now, tokens) {
                        Ok(()) => break,
                        Err(w) => now += w,
                    }
                }
                let used = (tokens * used_share).floor();
                s.correct(now, tokens - used);
                grants.push((now, used));
            }
            let eps = 1e-6;
            for i in 0..grants.len() {
                let mut req = 0.0;
                let mut tok = 0.0;
                for g in &grants[i..] {
                    req += 1.0;
                    tok += g.1;
                    let len = g.0 - grants[i].0;
                    prop_assert!(req <= rates.request_burst + rates.requests_per_sec * len + eps);
                    prop_assert!(tok <= rates.token_burst + rates.tokens_per_sec * len + eps);
                    if i == 0 {
                        prop_assert!(req <= rates.requests_per_sec * g.0 + eps, "{} requests by {}", req, g.0);
                        prop_assert!(tok <= rates.tokens_per_sec * g.0 + eps, "{} tokens by {}", tok, g.0);
                    }
                }
            }
        }
    }
}
