//! Provider budgets: requests and tokens per minute.
//!
//! Each budget is a pair of token buckets (requests, tokens) filled at `budget / 60` per
//! second, starting empty and holding one second's worth: a worker that knows nothing about
//! the provider never bursts a whole minute at start, and from any start no interval of length
//! `t` spends more than `burst + rate × t` (proptested below). A request waits until both
//! buckets admit it; its tokens are reserved up front (counted before sending) and corrected
//! from the response's `usage`. A request larger than a bucket waits for a full bucket and
//! leaves it in debt.
//!
//! On top of the buckets, a rolling ledger of what was granted: whatever the buckets allow,
//! the requests and tokens granted in the last [`Rates::WINDOW_SECONDS`] (a minute, plus a
//! margin for the time a request takes to reach the provider) never exceed the per-minute
//! budgets. That is exactly what a provider enforcing a rolling one-minute window admits, and
//! it never overspends a provider whose buckets hold a full minute either.
//!
//! The provider's own signals win, and teach: a 429 or `Retry-After` pauses the budget for
//! every task (and empties it); `x-ratelimit-remaining-*` caps the levels, and a remaining of
//! zero pauses until the matching `x-ratelimit-reset-*`. A response carrying both a remaining
//! and a reset says how much the provider holds when whole (`remaining + rate × reset`): the
//! buckets grow to that capacity (never above the per-minute budget, never shrinking), their
//! levels by the same amount. So a provider that starts a key with a full minute available
//! gets its full minute at once after the first response — the ledger then holds the rest
//! of the minute back — and one with small buckets is followed closely without a 429.
//!
//! Where the state lives is a [`Budget`]: [`LocalBudget`] in this process
//! (`RATE_LIMIT_SCOPE=worker`), or [`PgBudget`] in PostgreSQL — one `embq.rate_budgets` row
//! and its `embq.rate_grants` ledger — shared by every worker using the same API key
//! (`RATE_LIMIT_SCOPE=fleet`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tracing::{debug, warn};

use crate::config::{Config, ProviderKind};
use crate::provider::{RateSignals, SignalSink};
use crate::redact;

mod pauses;
pub use pauses::{fleet_pauses, resume_fleet, FleetPause};

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
    /// Most requests a full bucket holds until the provider says it holds more.
    pub request_burst: f64,
    /// Most tokens a full bucket holds until the provider says it holds more.
    pub token_burst: f64,
    /// Most requests granted in any rolling window (the per-minute budget).
    pub requests_per_window: f64,
    /// Most tokens granted in any rolling window.
    pub tokens_per_window: f64,
}

impl Rates {
    /// Seconds of budget a full bucket holds at first: short enough that no window sees a burst.
    pub const BURST_SECONDS: f64 = 1.0;
    /// The rolling window of the ledger: one minute, plus half a second for the spread of the
    /// times requests take from being granted to reaching the provider.
    pub const WINDOW_SECONDS: f64 = 60.5;

    /// Budgets of `rpm` requests and `tpm` tokens per minute.
    pub fn per_minute(rpm: u32, tpm: u32) -> Self {
        let (rpm, tpm) = (f64::from(rpm.max(1)), f64::from(tpm.max(1)));
        let (r, t) = (rpm / 60.0, tpm / 60.0);
        Self {
            requests_per_sec: r,
            tokens_per_sec: t,
            request_burst: (r * Self::BURST_SECONDS).max(1.0),
            token_burst: (t * Self::BURST_SECONDS).max(1.0),
            requests_per_window: rpm,
            tokens_per_window: tpm,
        }
    }

    /// What the provider holds when whole, from a remaining and the time until it is whole
    /// again: `remaining + rate × reset`, at most the per-minute budget.
    fn capacity(remaining: Option<u64>, reset: Option<Duration>, rate: f64, limit: f64) -> Option<f64> {
        let (left, reset) = (remaining?, reset?);
        Some((left as f64 + rate * reset.as_secs_f64()).min(limit))
    }

    /// The capacities a report implies, (requests, tokens).
    fn capacities(&self, r: &RateSignals) -> (Option<f64>, Option<f64>) {
        (
            Self::capacity(r.remaining_requests, r.reset_requests, self.requests_per_sec, self.requests_per_window),
            Self::capacity(r.remaining_tokens, r.reset_tokens, self.tokens_per_sec, self.tokens_per_window),
        )
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

    /// Grows the bucket to `cap` (never shrinks it); the level grows by as much.
    fn grow(&mut self, cap: f64) -> bool {
        if cap > self.cap {
            self.level += cap - self.cap;
            self.cap = cap;
            return true;
        }
        false
    }

    /// The current level (after `refill`).
    pub fn level(&self) -> f64 {
        self.level
    }

    /// What a full bucket holds.
    pub fn cap(&self) -> f64 {
        self.cap
    }
}

/// What was granted in the last window: (time, requests, tokens), oldest first, and the sums.
#[derive(Debug, Clone, Default, PartialEq)]
struct Ledger {
    grants: VecDeque<(f64, f64, f64)>,
    requests: f64,
    tokens: f64,
}

impl Ledger {
    /// Forgets what left the window by `now`. Sums of whole numbers stay exact in f64.
    fn prune(&mut self, now: f64) {
        while let Some(&(at, r, t)) = self.grants.front() {
            if at + Rates::WINDOW_SECONDS > now {
                break;
            }
            self.grants.pop_front();
            self.requests -= r;
            self.tokens -= t;
        }
        if self.grants.is_empty() {
            (self.requests, self.tokens) = (0.0, 0.0);
        }
    }

    fn push(&mut self, at: f64, requests: f64, tokens: f64) {
        self.grants.push_back((at, requests, tokens));
        self.requests += requests;
        self.tokens += tokens;
    }

    /// Seconds from `now` until `over` of one kind (0 = requests, 1 = tokens) has left the window.
    fn wait_until_freed(&self, now: f64, over: f64, kind: usize) -> f64 {
        if over <= 0.0 {
            return 0.0;
        }
        let mut freed = 0.0;
        for &(at, r, t) in &self.grants {
            freed += if kind == 0 { r } else { t };
            if freed >= over {
                return (at + Rates::WINDOW_SECONDS - now).max(0.0);
            }
        }
        Rates::WINDOW_SECONDS
    }
}

/// Both buckets, the ledger and the provider's pause: the whole state of one budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetState {
    rates: Rates,
    requests: Bucket,
    tokens: Bucket,
    ledger: Ledger,
    paused_until: f64,
}

impl BudgetState {
    /// Empty buckets of one second's worth and an empty ledger at `now`.
    pub fn new(rates: Rates, now: f64) -> Self {
        Self {
            rates,
            requests: Bucket::empty(rates.requests_per_sec, rates.request_burst, now),
            tokens: Bucket::empty(rates.tokens_per_sec, rates.token_burst, now),
            ledger: Ledger::default(),
            paused_until: f64::NEG_INFINITY,
        }
    }

    fn refill(&mut self, now: f64) {
        self.requests.refill(now);
        self.tokens.refill(now);
        self.ledger.prune(now);
    }

    /// Takes one request and `tokens` if the buckets and the window admit them now; else the
    /// seconds to wait.
    pub fn try_take(&mut self, now: f64, tokens: f64) -> Result<(), f64> {
        self.refill(now);
        if now < self.paused_until {
            return Err(self.paused_until - now);
        }
        let r = &self.rates;
        let over_requests = self.ledger.requests + 1.0 - r.requests_per_window;
        let over_tokens = self.ledger.tokens + tokens.min(r.tokens_per_window) - r.tokens_per_window;
        let wait = self
            .requests
            .wait_for(1.0)
            .max(self.tokens.wait_for(tokens))
            .max(self.ledger.wait_until_freed(now, over_requests, 0))
            .max(self.ledger.wait_until_freed(now, over_tokens, 1));
        // A nanosecond is rounding, not a wait (and `now + 1e-16` may not advance `now`).
        if wait > 1e-9 {
            return Err(wait);
        }
        self.requests.level -= 1.0;
        self.tokens.level -= tokens;
        self.ledger.push(now, 1.0, tokens);
        Ok(())
    }

    /// Gives back (`delta > 0`) or takes more (`delta < 0`) tokens once usage is known. Tokens
    /// billed beyond the reservation count in the window from now; tokens given back stay in
    /// it until their request leaves it.
    pub fn correct(&mut self, now: f64, delta: f64) {
        self.refill(now);
        self.tokens.level = (self.tokens.level + delta).min(self.tokens.cap);
        if delta < 0.0 {
            self.ledger.push(now, 0.0, -delta);
        }
    }

    /// The provider said stop: nothing is granted for `secs`, and the buckets restart empty.
    pub fn pause(&mut self, now: f64, secs: f64) {
        self.refill(now);
        self.paused_until = self.paused_until.max(now + secs);
        self.requests.level = self.requests.level.min(0.0);
        self.tokens.level = self.tokens.level.min(0.0);
    }

    /// Caps the levels at what the provider says is left — unless the window already allows
    /// no more than that: then the provider's budget is short because of what this budget
    /// granted in the last minute, which comes back as those grants leave the window (a
    /// provider with a rolling window), not at the buckets' refill rate.
    pub fn clamp(&mut self, now: f64, remaining_requests: Option<f64>, remaining_tokens: Option<f64>) {
        self.refill(now);
        let r = &self.rates;
        let (window_requests, window_tokens) =
            (r.requests_per_window - self.ledger.requests, r.tokens_per_window - self.ledger.tokens);
        if let Some(left) = remaining_requests.filter(|&left| window_requests > left) {
            self.requests.level = self.requests.level.min(left);
        }
        if let Some(left) = remaining_tokens.filter(|&left| window_tokens > left) {
            self.tokens.level = self.tokens.level.min(left);
        }
    }

    /// The provider holds this much when whole: grows the buckets (and their levels) to it.
    /// True if either grew.
    pub fn learn(&mut self, now: f64, request_capacity: Option<f64>, token_capacity: Option<f64>) -> bool {
        self.refill(now);
        let r = request_capacity.is_some_and(|c| self.requests.grow(c.min(self.rates.requests_per_window)));
        let t = token_capacity.is_some_and(|c| self.tokens.grow(c.min(self.rates.tokens_per_window)));
        r || t
    }

    /// Applies one response's report: learns the capacities, caps the levels at what is left,
    /// pauses. True if the budget grew.
    pub fn report(&mut self, now: f64, r: &RateSignals) -> bool {
        let (req_cap, tok_cap) = self.rates.capacities(r);
        let grew = self.learn(now, req_cap, tok_cap);
        self.clamp(now, r.remaining_requests.map(|v| v as f64), r.remaining_tokens.map(|v| v as f64));
        if let Some(p) = r.pause() {
            self.pause(now, p.as_secs_f64());
        }
        grew
    }

    /// Seconds of the provider's pause left at `now`, if any.
    pub fn paused_for(&self, now: f64) -> Option<f64> {
        Some(self.paused_until - now).filter(|&left| left > 0.0)
    }

    /// Requests and tokens available now in the buckets.
    pub fn levels(&mut self, now: f64) -> (f64, f64) {
        self.refill(now);
        (self.requests.level, self.tokens.level)
    }

    /// Requests and tokens granted in the current window.
    pub fn in_window(&mut self, now: f64) -> (f64, f64) {
        self.refill(now);
        (self.ledger.requests, self.ledger.tokens)
    }

    /// What full buckets hold now (one second's worth until the provider said more).
    pub fn caps(&self) -> (f64, f64) {
        (self.requests.cap, self.tokens.cap)
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
    async fn paused_for(&self) -> Result<Option<Duration>, LimiterError> {
        Ok(self.with(|s, now| s.paused_for(now)).map(Duration::from_secs_f64))
    }
    async fn clamp(&self, req: Option<u64>, tok: Option<u64>) -> Result<(), LimiterError> {
        self.with(|s, now| s.clamp(now, req.map(|r| r as f64), tok.map(|t| t as f64)));
        Ok(())
    }
    async fn report(&self, r: &RateSignals) -> Result<bool, LimiterError> {
        Ok(self.with(|s, now| s.report(now, r)))
    }
}

/// A budget shared by every worker on one PostgreSQL database (schema v3: an
/// `embq.rate_budgets` row and its `embq.rate_grants` ledger).
///
/// If the database lacks schema v3 (the functions are missing), it says so once and budgets
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
        // 42883 undefined_function, 42P01 undefined_table, 42703 undefined_column, 3F000 invalid_schema_name.
        if matches!(code.as_deref(), Some("42883" | "42P01" | "42703" | "3F000"))
            && !self.schema_missing.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(
                "the fleet rate budget needs schema version 3 (run `embq migrate`); budgeting per worker until then"
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
            .map_err(|e| LimiterError::Unavailable(redact::scrub(&e.to_string(), &redact::url_secrets(url))))?;
        Ok(Self::new(pool, key, rates))
    }

    /// The budget key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// One call of `embq.rate_budget_adjust`: a token correction, a report (capacities,
    /// remaining budgets, pause), as [`BudgetState::correct`] and [`BudgetState::report`] do.
    /// True if a learned capacity grew the budget.
    async fn adjust(&self, delta: f64, r: &RateSignals) -> Result<bool, LimiterError> {
        if self.degraded() {
            return Ok(self.fallback.with(|s, now| {
                s.correct(now, delta);
                s.report(now, r)
            }));
        }
        let rates = self.rates;
        let (req_capacity, tok_capacity) = rates.capacities(r);
        // Unnamed statements only: this also runs through transaction-mode poolers.
        sqlx::query_scalar(
            "SELECT embq.rate_budget_adjust($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .persistent(false)
        .bind(&self.key)
        .bind(delta)
        .bind(r.pause().map(|p| p.as_secs_f64()))
        .bind(r.remaining_requests.map(|v| v as f64))
        .bind(r.remaining_tokens.map(|v| v as f64))
        .bind(req_capacity)
        .bind(tok_capacity)
        .bind(rates.requests_per_sec)
        .bind(rates.request_burst)
        .bind(rates.tokens_per_sec)
        .bind(rates.token_burst)
        .bind(rates.requests_per_window)
        .bind(rates.tokens_per_window)
        .bind(Rates::WINDOW_SECONDS)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.fail(e))
    }
}

#[async_trait]
impl Budget for PgBudget {
    async fn try_take(&self, tokens: u64) -> Result<Grant, LimiterError> {
        if self.degraded() {
            return self.fallback.try_take(tokens).await;
        }
        let r = self.rates;
        let wait: f64 = sqlx::query_scalar("SELECT embq.rate_budget_take($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .persistent(false)
            .bind(&self.key)
            .bind(tokens as f64)
            .bind(r.requests_per_sec)
            .bind(r.request_burst)
            .bind(r.tokens_per_sec)
            .bind(r.token_burst)
            .bind(r.requests_per_window)
            .bind(r.tokens_per_window)
            .bind(Rates::WINDOW_SECONDS)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(if wait <= 0.0 { Grant::Granted } else { Grant::Wait(Duration::from_secs_f64(wait.min(3600.0))) })
    }
    async fn correct(&self, delta: i64) -> Result<(), LimiterError> {
        self.adjust(delta as f64, &RateSignals::default()).await.map(drop)
    }
    async fn pause(&self, d: Duration) -> Result<(), LimiterError> {
        self.adjust(0.0, &RateSignals { retry_after: Some(d), ..RateSignals::default() }).await.map(drop)
    }
    async fn paused_for(&self) -> Result<Option<Duration>, LimiterError> {
        if self.degraded() {
            return self.fallback.paused_for().await;
        }
        let left: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM paused_until - now())::float8 FROM embq.rate_budgets
             WHERE key = $1 AND paused_until > now()",
        )
        .persistent(false)
        .bind(&self.key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(left.filter(|s| s.is_finite() && *s > 0.0).map(Duration::from_secs_f64))
    }
    async fn clamp(&self, req: Option<u64>, tok: Option<u64>) -> Result<(), LimiterError> {
        let r = RateSignals { remaining_requests: req, remaining_tokens: tok, ..RateSignals::default() };
        self.adjust(0.0, &r).await.map(drop)
    }
    async fn report(&self, r: &RateSignals) -> Result<bool, LimiterError> {
        self.adjust(0.0, r).await
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
    h.update(cfg.openai_base_url.as_ref().map(|u| u.expose()).unwrap_or_default().as_bytes());
    let digest = hex::encode(h.finalize());
    format!("{}:{}:{}", cfg.provider.as_str(), cfg.model, &digest[..16])
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

    /// A 429: pause the provider for every task sharing this budget.
    pub async fn throttled(&self, retry_after: Option<Duration>) {
        let d = self.allowed(retry_after.unwrap_or(DEFAULT_PAUSE));
        if let Err(e) = self.budget.pause(d).await {
            warn!(error = %e, "could not record the provider's pause");
        }
    }

    /// Applies the signals of one response.
    pub async fn apply(&self, s: &RateSignals) {
        if let Some(asked) = s.pause() {
            self.allowed(asked);
        }
        match self.budget.report(&s.capped(self.max_pause)).await {
            Ok(true) => self.grew.notify_waiters(),
            Ok(false) => {}
            Err(e) => debug!(error = %e, "provider rate signals not applied"),
        }
    }
}

/// The limiter as the providers' signal sink: each response's headers are applied in the
/// background (the provider call does not wait for a shared store).
pub struct LimiterSink(pub Arc<Limiter>);

impl SignalSink for LimiterSink {
    fn observe(&self, signals: &RateSignals) {
        let limiter = self.0.clone();
        let signals = *signals;
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

    #[tokio::test(start_paused = true)]
    async fn no_provider_signal_pauses_longer_than_max_provider_pause() {
        let day = Duration::from_secs(86_400);
        let limiter = Limiter::local(6000, 6_000_000).with_max_pause(Duration::from_secs(5));
        assert_eq!(limiter.paused_for().await, None);
        limiter.throttled(Some(day)).await;
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

    /// The headers of a response from a provider that held `cap` when whole and has `left`.
    fn report(left: u64, reset_secs: f64) -> RateSignals {
        RateSignals {
            remaining_requests: None,
            reset_requests: None,
            remaining_tokens: Some(left),
            reset_tokens: Some(Duration::from_secs_f64(reset_secs)),
            retry_after: None,
        }
    }

    #[test]
    fn a_report_of_a_whole_minute_frees_the_minute_and_the_window_holds_the_rest_back() {
        // 600 RPM, 60,000 TPM; the provider (a rolling window) said after the first request:
        // 599 requests and 59,500 tokens left, budget comes back in 60 s.
        let mut s = BudgetState::new(rates(), 0.0);
        assert_eq!(s.try_take(0.5, 500.0), Ok(()));
        let whole = RateSignals {
            remaining_requests: Some(599),
            reset_requests: Some(Duration::from_secs(60)),
            ..report(59_500, 60.0)
        };
        assert!(s.report(0.5, &whole));
        assert_eq!(s.caps(), (600.0, 60_000.0));
        // The buckets grew by what they learnt, on top of what they held (4 requests, 0 tokens).
        assert_eq!(s.levels(0.5), (594.0, 59_000.0));
        let (mut now, mut sent) = (0.5, 500.0);
        loop {
            match s.try_take(now, 500.0) {
                Ok(()) => sent += 500.0,
                Err(w) if w < 5.0 => now += w,
                Err(_) => break,
            }
        }
        assert_eq!(sent, 60_000.0, "the first minute's worth");
        assert!(now < 1.1, "at once: {now}");
        // The window is full: the bucket refills, but nothing more until the first grant
        // leaves the window, 60.5 s after it was made.
        let wait = s.try_take(now + 30.0, 500.0).unwrap_err();
        assert!((now + 30.0 + wait - 61.0).abs() < 1e-6, "{wait}");
        assert!(s.try_take(60.9, 500.0).is_err());
        assert_eq!(s.try_take(61.0, 500.0), Ok(()));
    }

    #[test]
    fn a_remaining_that_the_window_explains_leaves_the_buckets_alone() {
        let mut s = BudgetState::new(rates(), 0.0);
        s.report(
            0.0,
            &RateSignals {
                remaining_requests: Some(600),
                reset_requests: Some(Duration::from_secs(60)),
                ..report(60_000, 60.0)
            },
        );
        // A whole minute granted between 0.5 and 1.1 s.
        for k in 0..118 {
            assert_eq!(s.try_take(0.5 + f64::from(k) * 0.005, 500.0), Ok(()));
        }
        // At 61.0 s a rolling-window provider has dropped what arrived by 1.0 s and says
        // 30,000 tokens are left; our window (60.5 s) allows only 1,500 more yet: nothing to
        // learn, and the full bucket stays full for when the window frees.
        s.clamp(61.0, None, Some(30_000.0));
        assert_eq!(s.levels(61.0).1, 60_000.0);
        // A provider with less left than even our window allows caps the bucket.
        s.clamp(61.0, None, Some(1_000.0));
        assert_eq!(s.levels(61.0).1, 1_000.0);
    }

    #[test]
    fn learnt_capacities_never_exceed_the_budget_nor_shrink() {
        let mut s = BudgetState::new(rates(), 0.0);
        // A provider with more than the configured budget: capped at a minute's worth.
        assert!(s.report(1.0, &report(1_000_000, 60.0)));
        assert_eq!(s.caps().1, 60_000.0);
        // A later report implying less does not shrink it (levels are capped by remaining instead).
        assert!(!s.report(2.0, &report(100, 0.1)));
        assert_eq!(s.caps().1, 60_000.0);
        assert_eq!(s.levels(2.0).1, 100.0);
        // Without a reset nothing is learnt.
        let mut s = BudgetState::new(rates(), 0.0);
        assert!(!s.report(1.0, &RateSignals { remaining_tokens: Some(50_000), ..RateSignals::default() }));
        assert_eq!(s.caps(), (10.0, 1_000.0));
    }

    #[test]
    fn a_small_provider_bucket_is_followed_without_overspending_it() {
        // The provider's bucket holds 2 s (2,000 tokens) and started full; ours starts empty.
        let mut s = BudgetState::new(rates(), 0.0);
        assert_eq!(s.try_take(0.5, 500.0), Ok(()));
        // It said: 1,500 left (2,000 - 500: it had refilled to full), whole again in 0.5 s.
        assert!(s.report(0.5, &report(1_500, 0.5)));
        assert_eq!(s.caps().1, 2_000.0);
        // Grown by 1,000 only (what our empty bucket had not known), never above what is left.
        assert_eq!(s.levels(0.5).1, 1_000.0);
        let mut provider = 1_500.0f64;
        let mut at = 0.5;
        let mut now = 0.5;
        for _ in 0..200 {
            match s.try_take(now, 500.0) {
                Ok(()) => {
                    provider = (provider + 1_000.0 * (now - at)).min(2_000.0) - 500.0;
                    at = now;
                    assert!(provider >= -1e-6, "overspent the provider's bucket at {now}: {provider}");
                }
                Err(w) => now += w,
            }
        }
    }

    #[test]
    fn the_window_counts_tokens_billed_beyond_the_reservation() {
        let mut s = BudgetState::new(Rates::per_minute(600, 1_000), 0.0);
        s.report(1.0, &report(1_000, 60.0));
        assert_eq!(s.try_take(1.0, 400.0), Ok(()));
        s.correct(1.0, -300.0); // billed 700
        assert_eq!(s.in_window(1.0), (1.0, 700.0));
        assert_eq!(s.try_take(1.0, 300.0), Ok(()));
        assert!(s.try_take(1.0, 1.0).is_err());
        // Tokens given back stay in the window until their request leaves it.
        s.correct(1.0, 300.0);
        assert_eq!(s.in_window(1.0), (2.0, 1_000.0));
        assert_eq!(s.in_window(1.0 + Rates::WINDOW_SECONDS), (0.0, 0.0));
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

        /// Whatever the provider reports (here: a whole minute as soon as it is asked), no
        /// rolling window of [`Rates::WINDOW_SECONDS`] is granted more than the per-minute budgets.
        #[test]
        fn no_rolling_window_exceeds_the_per_minute_budget(
            rpm in 60u32..1200,
            tpm in 1000u32..100_000,
            reqs in proptest::collection::vec((0.0f64..3.0, 1u32..3000, 0.5f64..=1.0), 1..300),
        ) {
            let rates = Rates::per_minute(rpm, tpm);
            let mut s = BudgetState::new(rates, 0.0);
            let whole = RateSignals {
                remaining_requests: Some(u64::from(rpm)),
                reset_requests: Some(Duration::from_secs(60)),
                remaining_tokens: Some(u64::from(tpm)),
                reset_tokens: Some(Duration::from_secs(60)),
                retry_after: None,
            };
            s.report(0.0, &whole);
            let mut now = 0.0f64;
            let mut requests: Vec<f64> = Vec::new(); // grant times
            let mut spent: Vec<(f64, f64)> = Vec::new(); // (time, tokens billed)
            for (gap, tokens, used_share) in reqs {
                now += gap;
                let tokens = f64::from(tokens).min(rates.tokens_per_window);
                loop {
                    match s.try_take(now, tokens) {
                        Ok(()) => break,
                        Err(w) => now += w,
                    }
                }
                requests.push(now);
                // Billed less than reserved: the reservation still counts in the window.
                let used = (tokens * used_share).floor();
                s.correct(now, tokens - used);
                spent.push((now, tokens));
                s.report(now, &whole);
            }
            // A grant exactly one window earlier has left it (up to rounding of the times).
            let start = |end: f64| end - Rates::WINDOW_SECONDS + 1e-9;
            for (i, &(end, _)) in spent.iter().enumerate() {
                let tok: f64 = spent[..=i].iter().filter(|h| h.0 > start(end)).map(|h| h.1).sum();
                prop_assert!(tok <= rates.tokens_per_window + 1e-6, "{} tokens in the window ending {}", tok, end);
                let req = requests[..=i].iter().filter(|&&t| t > start(end)).count();
                prop_assert!(req as f64 <= rates.requests_per_window, "{} requests in the window ending {}", req, end);
            }
        }
    }
}
