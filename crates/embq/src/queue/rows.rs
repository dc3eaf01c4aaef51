//! Rows both stores read the same way, and their conversion to the public types.

use chrono::{DateTime, TimeZone, Utc};

use super::{ClaimedJob, DeadJob};

/// A job as the claim statement returns it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ClaimedRow {
    id: i64,
    source_type: String,
    source_id: String,
    content_type: String,
    text: String,
    attempts: i32,
    priority: i32,
    unchanged: bool,
}

impl From<ClaimedRow> for ClaimedJob {
    fn from(r: ClaimedRow) -> Self {
        Self {
            id: r.id,
            source_type: r.source_type,
            source_id: r.source_id,
            content_type: r.content_type,
            text: r.text,
            attempt: attempts(r.attempts),
            priority: r.priority,
            unchanged: r.unchanged,
        }
    }
}

/// A dead-lettered job as the dead-letter listing returns it; `At` is how the store keeps time
/// (`timestamptz` in PostgreSQL, integer milliseconds in SQLite).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DeadRow<At> {
    id: i64,
    source_type: String,
    source_id: String,
    content_type: String,
    attempts: i32,
    last_error: Option<String>,
    failed_at: At,
}

impl<At> DeadRow<At> {
    fn into_job(self, failed_at: DateTime<Utc>) -> DeadJob {
        DeadJob {
            id: self.id,
            source_type: self.source_type,
            source_id: self.source_id,
            content_type: self.content_type,
            attempts: attempts(self.attempts),
            last_error: self.last_error,
            failed_at,
        }
    }
}

impl From<DeadRow<DateTime<Utc>>> for DeadJob {
    fn from(r: DeadRow<DateTime<Utc>>) -> Self {
        let at = r.failed_at;
        r.into_job(at)
    }
}

impl From<DeadRow<i64>> for DeadJob {
    fn from(r: DeadRow<i64>) -> Self {
        let at = from_millis(r.failed_at);
        r.into_job(at)
    }
}

/// Attempts are counted up from zero; a negative count (a hand-edited row) reads as none.
fn attempts(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// A SQLite time (integer milliseconds since the epoch); out of chrono's range reads as the epoch.
pub(super) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}
