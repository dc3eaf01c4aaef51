//! Dead-lettered jobs as `embq dlq` lists and selects them.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A dead-lettered job.
#[derive(Debug, Clone, Serialize)]
pub struct DeadJob {
    /// Job id.
    pub id: i64,
    /// Source type.
    pub source_type: String,
    /// Source id.
    pub source_id: String,
    /// Content type.
    pub content_type: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
}

/// Which dead jobs an operation selects.
#[derive(Debug, Clone)]
pub enum DeadSelection {
    /// These ids.
    Ids(Vec<i64>),
    /// All of them.
    All,
}
