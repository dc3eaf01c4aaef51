//! The budget math, free of clocks and stores: [`Rates`], the two token buckets, the rolling
//! ledger of grants and the [`BudgetState`] that combines them with the provider's pause.
//! Time is seconds since an arbitrary origin, passed in by the caller, so every rule here is
//! tested (and proptested, in `state/tests.rs`) without waiting. `embq.rate_budget_*` in the
//! PostgreSQL migrations is the same arithmetic for the fleet budget.
//!
//! Each budget is a pair of token buckets (requests, tokens) filled at `budget / 60` per
//! second, starting empty and holding one second's worth: a worker that knows nothing about
//! the provider never bursts a whole minute at start, and from any start no interval of length
//! `t` spends more than `burst + rate × t`. A request waits until both buckets admit it; its
//! tokens are reserved up front and corrected from the response's `usage`. A request larger
//! than a bucket waits for a full bucket and leaves it in debt.
//!
//! On top of the buckets, a rolling ledger of what was granted: whatever the buckets allow,
//! the requests and tokens granted in the last [`Rates::WINDOW_SECONDS`] never exceed the
//! per-minute budgets — what a provider enforcing a rolling one-minute window admits.
//!
//! A response carrying both a remaining and a reset says how much the provider holds when
//! whole (`remaining + rate × reset`): the buckets grow to that capacity (never above the
//! per-minute budget, never shrinking), their levels by the same amount.
//!
//! Once the reports show a continuously refilled bucket (`state/shape.rs`; OpenAI's full-minute
//! buckets, or smaller ones), the ledger no longer holds anything back: the provider's own
//! remaining, less what is in flight (`state/ledger.rs`), sets the levels after every answer,
//! and the buckets refill as the provider's do. Anything else keeps the ledger.

use std::time::Duration;

use crate::provider::RateSignals;

mod ledger;
pub(super) mod shape;

use ledger::Ledger;
pub use shape::{Evidence, Shape};

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

    /// The capacities a report implies about the provider's shape, (requests, tokens): only
    /// where the budget was touched (see `state/shape.rs`).
    pub(super) fn implied(&self, r: &RateSignals) -> (Option<f64>, Option<f64>) {
        (
            shape::implied(r.remaining_requests, r.reset_requests, self.requests_per_sec, self.requests_per_window),
            shape::implied(r.remaining_tokens, r.reset_tokens, self.tokens_per_sec, self.tokens_per_window),
        )
    }

    /// The capacities a report implies, (requests, tokens).
    pub(super) fn capacities(&self, r: &RateSignals) -> (Option<f64>, Option<f64>) {
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

/// Both buckets, the ledger, the provider's pause and what its reports showed: the whole
/// state of one budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetState {
    rates: Rates,
    requests: Bucket,
    tokens: Bucket,
    ledger: Ledger,
    paused_until: f64,
    evidence: Evidence,
    /// The last grant's id (ids start at 1 and only grow).
    last_grant: u64,
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
            evidence: Evidence::default(),
            last_grant: 0,
        }
    }

    fn refill(&mut self, now: f64) {
        self.requests.refill(now);
        self.tokens.refill(now);
        self.ledger.prune(now);
    }

    /// Takes one request and `tokens` if the buckets (and, unless the provider is a bucket,
    /// the window) admit them now: the grant's id; else the seconds to wait.
    pub fn try_take(&mut self, now: f64, tokens: f64) -> Result<u64, f64> {
        self.refill(now);
        if now < self.paused_until {
            return Err(self.paused_until - now);
        }
        let r = &self.rates;
        let mut wait = self.requests.wait_for(1.0).max(self.tokens.wait_for(tokens));
        if self.evidence.shape != Shape::Bucket {
            let over_requests = self.ledger.requests + 1.0 - r.requests_per_window;
            let over_tokens = self.ledger.tokens + tokens.min(r.tokens_per_window) - r.tokens_per_window;
            wait = wait.max(self.ledger.wait_until_freed(now, over_requests, false)).max(self.ledger.wait_until_freed(
                now,
                over_tokens,
                true,
            ));
        }
        // A nanosecond is rounding, not a wait (and `now + 1e-16` may not advance `now`).
        if wait > 1e-9 {
            return Err(wait);
        }
        self.requests.level -= 1.0;
        self.tokens.level -= tokens;
        self.last_grant += 1;
        self.ledger.grant(now, self.last_grant, 1.0, tokens);
        Ok(self.last_grant)
    }

    /// Grant `id` was answered: it is no longer in flight, and `delta` tokens are given back
    /// (`delta > 0`) or taken (`delta < 0`) now that its usage is known.
    pub fn settle(&mut self, now: f64, id: u64, delta: f64) {
        self.refill(now);
        self.ledger.settle(id, now);
        self.correct(now, delta);
    }

    /// Gives back (`delta > 0`) or takes more (`delta < 0`) tokens once usage is known. Tokens
    /// billed beyond the reservation count in the window from now; tokens given back stay in
    /// it until their request leaves it.
    pub fn correct(&mut self, now: f64, delta: f64) {
        self.refill(now);
        self.tokens.level = (self.tokens.level + delta).min(self.tokens.cap);
        if delta < 0.0 {
            self.ledger.billed(now, -delta);
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

    /// A bucket provider's remaining is the truth, less what it may not have counted yet (see
    /// `Ledger::uncounted_by`): the levels become that, up or down.
    fn follow(&mut self, now: f64, r: &RateSignals, grant: Option<u64>) {
        self.refill(now);
        // Without a grant, nothing in the window is known to have been counted.
        let uncounted = self.ledger.uncounted_by(grant.unwrap_or(0));
        if let Some(left) = r.remaining_requests {
            self.requests.level = (left as f64 - uncounted.0).min(self.requests.cap);
        }
        if let Some(left) = r.remaining_tokens {
            self.tokens.level = (left as f64 - uncounted.1).min(self.tokens.cap);
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

    /// Applies one response's report (to the request of `grant`, when known): weighs the shape,
    /// learns the capacities, sets the levels from what is left (a bucket's remaining, less
    /// what is in flight) or caps them at it (anything else), pauses. True if the budget grew.
    pub fn report(&mut self, now: f64, r: &RateSignals, grant: Option<u64>) -> bool {
        self.evidence.weigh(&self.rates, r);
        let (req_cap, tok_cap) = self.rates.capacities(r);
        let grew = self.learn(now, req_cap, tok_cap);
        let bucket = self.evidence.shape == Shape::Bucket;
        if bucket {
            self.follow(now, r, grant);
        } else {
            self.clamp(now, r.remaining_requests.map(|v| v as f64), r.remaining_tokens.map(|v| v as f64));
        }
        // A bucket refills while it is spent: only a 429's wait pauses it. Anything else with
        // nothing left waits for its reset. A 429 says stop even when it asks for no wait: the
        // buckets restart empty all the same.
        let pause = if bucket { r.retry_after.filter(|d| !d.is_zero()) } else { r.pause() };
        if let Some(secs) = pause.map(|p| p.as_secs_f64()).or(r.throttled.then_some(0.0)) {
            self.pause(now, secs);
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

    /// Requests and tokens of the grants in flight.
    pub fn in_flight(&mut self, now: f64) -> (f64, f64) {
        self.refill(now);
        self.ledger.in_flight
    }

    /// What full buckets hold now (one second's worth until the provider said more).
    pub fn caps(&self) -> (f64, f64) {
        (self.requests.cap, self.tokens.cap)
    }

    /// What the provider's reports have shown about its budget.
    pub fn shape(&self) -> Shape {
        self.evidence.shape
    }
}

#[cfg(test)]
mod follow_tests;
#[cfg(test)]
mod tests;
