//! Provider pauses of the fleet budgets, seen and cleared from outside the workers
//! (`embq queue stats`, `embq budget resume`).
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
