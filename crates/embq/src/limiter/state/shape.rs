//! How the provider's budget comes back, read from its own headers.
//!
//! A provider whose budget is a continuously refilled bucket (OpenAI's, whatever its depth)
//! reports, with every response, a remaining and a reset (until the bucket is whole again)
//! whose sum `remaining + rate × reset` is the bucket's capacity: the same number every time,
//! never more than the per-minute budget. A rolling window reports a reset that says when its
//! oldest grant leaves, so the same sum runs up to twice the budget right after a burst and
//! wanders with the traffic. Two reports that agree make the provider a [`Shape::Bucket`]; one sum beyond the budget, or two that disagree, make it a
//! [`Shape::Window`], for good. A report of an untouched budget (remaining ≈ whole) says
//! nothing: both shapes look alike there.

use std::time::Duration;

use super::Rates;
use crate::provider::RateSignals;

/// What the provider's reports have shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// Nothing yet (or a provider that sends no headers): the rolling ledger rules.
    #[default]
    Unknown,
    /// A continuously refilled bucket: what it says is left, minus what is in flight, is the truth.
    Bucket,
    /// Anything else: the rolling ledger rules.
    Window,
}

impl Shape {
    /// The shape's name as stored (`embq.rate_budgets.shape`).
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Unknown => "unknown",
            Shape::Bucket => "bucket",
            Shape::Window => "window",
        }
    }

    /// The shape a stored name means (`unknown` for anything else).
    pub fn parse(s: &str) -> Self {
        match s {
            "bucket" => Shape::Bucket,
            "window" => Shape::Window,
            _ => Shape::Unknown,
        }
    }
}

/// How far two capacities may differ and still agree: 5 % of the budget (a reset written in
/// whole seconds is off by up to 1/60 of it) plus two units of rounding.
pub fn tolerance(limit: f64) -> f64 {
    0.05 * limit + 2.0
}

/// The capacity one kind of a report implies, if the report says anything about the shape:
/// `remaining + rate × reset`, when the budget is not untouched.
pub(crate) fn implied(remaining: Option<u64>, reset: Option<Duration>, rate: f64, limit: f64) -> Option<f64> {
    let (left, reset) = (remaining? as f64, reset?);
    (left < limit - tolerance(limit)).then_some(left + rate * reset.as_secs_f64())
}

/// The evidence so far: the shape, and the first telling report's capacities.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Evidence {
    /// The shape the evidence shows.
    pub shape: Shape,
    /// The capacities the first telling report implied, (requests, tokens).
    pub first: Option<(Option<f64>, Option<f64>)>,
}

impl Evidence {
    /// Weighs one report.
    pub fn weigh(&mut self, rates: &Rates, r: &RateSignals) {
        if self.shape == Shape::Window {
            return;
        }
        let (req, tok) = rates.implied(r);
        if req.is_none() && tok.is_none() {
            return;
        }
        let beyond = |c: Option<f64>, limit: f64| c.is_some_and(|c| c > limit + tolerance(limit));
        if beyond(req, rates.requests_per_window) || beyond(tok, rates.tokens_per_window) {
            self.shape = Shape::Window;
            return;
        }
        let Some((first_req, first_tok)) = self.first else {
            self.first = Some((req, tok));
            return;
        };
        // (compared, disagree) for one kind.
        let agree = |a: Option<f64>, b: Option<f64>, limit: f64| match (a, b) {
            (Some(a), Some(b)) => (true, (a - b).abs() > tolerance(limit)),
            _ => (false, false),
        };
        let (req_compared, req_differ) = agree(req, first_req, rates.requests_per_window);
        let (tok_compared, tok_differ) = agree(tok, first_tok, rates.tokens_per_window);
        if req_differ || tok_differ {
            self.shape = Shape::Window;
        } else if req_compared || tok_compared {
            self.shape = Shape::Bucket;
        }
    }
}
