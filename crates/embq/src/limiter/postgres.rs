//! [`PgBudget`]: the fleet budget (`RATE_LIMIT_SCOPE=fleet`), shared by every worker using
//! the same API key through one `embq.rate_budgets` row and its `embq.rate_grants` ledger,
//! and [`budget_key`], which names it. The arithmetic is [`super::state`]'s, done by the
//! `embq.rate_budget_*` functions under the row's lock with the database clock, one
//! statement per call (fine behind a transaction pooler).

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::state::{shape, Rates, Shape};
use super::{Budget, Grant, GrantId, LimiterError};
use crate::config::{Config, ProviderKind};
use crate::provider::RateSignals;
use crate::redact;

/// A budget shared by every worker on one PostgreSQL database (schema v3 and later). The
/// worker refuses to start on an older schema, so the functions exist: a failure is the
/// database's, never a reason to budget elsewhere.
pub struct PgBudget {
    pool: PgPool,
    key: String,
    rates: Rates,
    /// Credentials of the URL it connected with, scrubbed from every error.
    secrets: Vec<String>,
}

impl PgBudget {
    /// A budget in `pool` under `key` (see [`budget_key`]).
    pub fn new(pool: PgPool, key: String, rates: Rates) -> Self {
        Self { pool, key, rates, secrets: Vec::new() }
    }

    /// Any database error: the caller waits and asks again.
    fn fail(&self, e: sqlx::Error) -> LimiterError {
        LimiterError::Unavailable(redact::scrub(&e.to_string(), &self.secrets))
    }

    /// A small pool of its own (two connections, opened on first use) on `url`.
    pub fn connect(url: &str, key: String, rates: Rates) -> Result<Self, LimiterError> {
        let secrets = redact::url_secrets(url);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)
            .map_err(|e| LimiterError::Unavailable(redact::scrub(&e.to_string(), &secrets)))?;
        Ok(Self { secrets, ..Self::new(pool, key, rates) })
    }

    /// The budget key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// One call of `embq.rate_budget_update`: a report (shape, capacities, remaining budgets,
    /// pause) and the answer of a grant (settled, its token correction), as
    /// `BudgetState::report` and `BudgetState::settle` do. True if a learned capacity grew the budget.
    async fn update(
        &self,
        r: &RateSignals,
        grant: Option<GrantId>,
        settle: bool,
        delta: f64,
    ) -> Result<bool, LimiterError> {
        let rates = self.rates;
        let (req_capacity, tok_capacity) = rates.capacities(r);
        let (req_implied, tok_implied) = rates.implied(r);
        let exhausted = RateSignals { retry_after: None, ..*r }.pause();
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        // Unnamed statements only: this also runs through transaction-mode poolers.
        sqlx::query_scalar(
            "SELECT embq.rate_budget_update($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
             $16, $17, $18, $19, $20, $21, $22)",
        )
        .persistent(false)
        .bind(&self.key)
        .bind(grant.and_then(|g| i64::try_from(g).ok()))
        .bind(settle)
        .bind(delta)
        .bind(secs(r.retry_after.filter(|d| !d.is_zero())))
        .bind(secs(exhausted))
        .bind(r.throttled)
        .bind(r.remaining_requests.map(|v| v as f64))
        .bind(r.remaining_tokens.map(|v| v as f64))
        .bind(req_capacity)
        .bind(tok_capacity)
        .bind(req_implied)
        .bind(tok_implied)
        .bind(shape::tolerance(rates.requests_per_window))
        .bind(shape::tolerance(rates.tokens_per_window))
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
        let r = self.rates;
        let (wait, grant): (f64, Option<i64>) =
            sqlx::query_as("SELECT * FROM embq.rate_budget_grant($1, $2, $3, $4, $5, $6, $7, $8, $9)")
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
        Ok(match grant {
            Some(id) if wait <= 0.0 => Grant::Granted(u64::try_from(id).unwrap_or_default()),
            _ => Grant::Wait(Duration::from_secs_f64(wait.clamp(1e-3, 3600.0))),
        })
    }
    async fn answer(&self, grant: GrantId, delta: i64, signals: &RateSignals) -> Result<bool, LimiterError> {
        self.update(signals, Some(grant), true, delta as f64).await
    }
    async fn pause(&self, d: Duration) -> Result<(), LimiterError> {
        self.update(&RateSignals { retry_after: Some(d), ..RateSignals::default() }, None, false, 0.0).await.map(drop)
    }
    async fn paused_for(&self) -> Result<Option<Duration>, LimiterError> {
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
    async fn report(&self, r: &RateSignals, grant: Option<GrantId>) -> Result<bool, LimiterError> {
        self.update(r, grant, false, 0.0).await
    }
    async fn shape(&self) -> Result<Shape, LimiterError> {
        let shape: Option<String> = sqlx::query_scalar("SELECT shape FROM embq.rate_budgets WHERE key = $1")
            .persistent(false)
            .bind(&self.key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(shape.map_or(Shape::Unknown, |s| Shape::parse(&s)))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
