//! The fleet budgets seen from outside the workers: their levels and pauses (`embq queue
//! stats`, `embq console`), and pauses cleared (`embq budget resume`).
//!
//! A fleet budget (`RATE_LIMIT_SCOPE=fleet`) keeps its pause in its `embq.rate_budgets` row,
//! so clearing the row resumes every worker sharing it within a second (waiting workers ask
//! again at least that often). A per-worker budget lives in its process only: its pause shows
//! in that worker's `/ready` and metrics and ends by itself within MAX_PROVIDER_PAUSE.

use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use super::LimiterError;
use crate::redact;

/// A fleet budget the provider has paused.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct FleetPause {
    /// The budget key: provider, model and a hash of the API key.
    pub budget: String,
    /// Seconds until the pause ends by itself.
    pub seconds_left: f64,
}

/// A fleet budget as the workers last left it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct FleetBudget {
    /// The budget key: provider, model and a hash of the API key.
    pub budget: String,
    /// What the provider's limits were found to be: `unknown`, `bucket` or `window`.
    pub shape: String,
    /// Requests left in the bucket when a worker last took from it or settled with it.
    pub requests_left: f64,
    /// Tokens left at the same moment.
    pub tokens_left: f64,
    /// Seconds since that moment (the buckets have refilled since).
    pub updated_seconds_ago: f64,
    /// Requests granted in the last minute.
    pub requests_last_minute: f64,
    /// Tokens granted in the last minute.
    pub tokens_last_minute: f64,
    /// Grants whose provider call has not been answered yet.
    pub in_flight: i64,
    /// Seconds until the provider's pause ends, when paused.
    pub paused_seconds_left: Option<f64>,
}

/// One connection, opened for this command only.
fn pool(url: &str) -> Result<PgPool, LimiterError> {
    PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy(url)
        .map_err(|e| LimiterError::Unavailable(redact::scrub(&e.to_string(), &redact::url_secrets(url))))
}

fn unavailable(url: &str) -> impl Fn(sqlx::Error) -> LimiterError + '_ {
    move |e| LimiterError::Unavailable(redact::scrub(&e.to_string(), &redact::url_secrets(url)))
}

/// The fleet budgets paused now, longest first.
pub async fn fleet_pauses(url: &str) -> Result<Vec<FleetPause>, LimiterError> {
    sqlx::query_as::<Postgres, FleetPause>(
        "SELECT key AS budget, extract(epoch FROM paused_until - now())::float8 AS seconds_left
         FROM embq.rate_budgets WHERE paused_until > now() ORDER BY paused_until DESC",
    )
    .persistent(false)
    .fetch_all(&pool(url)?)
    .await
    .map_err(unavailable(url))
}

/// Every fleet budget with its levels, last minute, calls in flight and pause, by key.
pub async fn fleet_budgets(url: &str) -> Result<Vec<FleetBudget>, LimiterError> {
    sqlx::query_as::<Postgres, FleetBudget>(
        "SELECT b.key AS budget, b.shape, b.requests AS requests_left, b.tokens AS tokens_left,
                greatest(0, extract(epoch FROM now() - b.updated_at))::float8 AS updated_seconds_ago,
                coalesce(m.requests, 0)::float8 AS requests_last_minute,
                coalesce(m.tokens, 0)::float8 AS tokens_last_minute,
                coalesce(m.in_flight, 0) AS in_flight,
                CASE WHEN b.paused_until > now()
                     THEN extract(epoch FROM b.paused_until - now())::float8 END AS paused_seconds_left
         FROM embq.rate_budgets b
         LEFT JOIN LATERAL (
             SELECT sum(g.requests) FILTER (WHERE g.at > now() - interval '60 seconds') AS requests,
                    sum(g.tokens) FILTER (WHERE g.at > now() - interval '60 seconds') AS tokens,
                    count(*) FILTER (WHERE g.in_flight) AS in_flight
             FROM embq.rate_grants g WHERE g.key = b.key
         ) m ON true
         ORDER BY b.key",
    )
    .persistent(false)
    .fetch_all(&pool(url)?)
    .await
    .map_err(unavailable(url))
}

/// Ends the pause of every paused fleet budget (or only `budget`); returns the keys resumed.
pub async fn resume_fleet(url: &str, budget: Option<&str>) -> Result<Vec<String>, LimiterError> {
    sqlx::query_scalar::<Postgres, String>(
        "UPDATE embq.rate_budgets SET paused_until = NULL, updated_at = now()
         WHERE paused_until > now() AND ($1::text IS NULL OR key = $1) RETURNING key",
    )
    .persistent(false)
    .bind(budget)
    .fetch_all(&pool(url)?)
    .await
    .map_err(unavailable(url))
}
