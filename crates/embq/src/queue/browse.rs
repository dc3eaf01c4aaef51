//! What the web console reads beyond the stats: jobs by filter, one job in full, dead letters
//! grouped by error, activity per minute and each worker's leases. Both stores implement these
//! (`postgres/browse.rs`, `sqlite/browse.rs`); `tests/console_store.rs` holds them to one behaviour.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;

use super::rows::from_millis;
use super::{JobState, WorkerState};

/// The most rows one listing returns, whatever the caller asks.
pub const MAX_LISTING: i64 = 1000;

/// Which jobs a listing shows; every filter that is set must match.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only this source type (exact).
    pub source_type: Option<String>,
    /// Source ids containing this text (case-insensitive).
    pub key: Option<String>,
    /// Last errors containing this text (case-insensitive).
    pub error: Option<String>,
    /// At most this many, newest first (clamped to 1..=[`MAX_LISTING`]).
    pub limit: i64,
}

impl JobFilter {
    /// The limit the stores apply.
    pub fn clamped_limit(&self) -> i64 {
        self.limit.clamp(1, MAX_LISTING)
    }
}

/// One row of a job listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSummary {
    /// Job id.
    pub id: i64,
    /// Source type.
    pub source_type: String,
    /// Source id.
    pub source_id: String,
    /// Content type.
    pub content_type: String,
    /// State.
    pub state: JobState,
    /// Priority.
    pub priority: i32,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The vector stored for a job's key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VectorInfo {
    /// Model that made it.
    pub model: String,
    /// Its dimensions.
    pub dimensions: u32,
    /// It was written by this job (not by an older or newer one of the same key).
    pub from_this_job: bool,
}

/// One job in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobDetail {
    /// The listing fields.
    pub summary: JobSummary,
    /// The text to embed.
    pub text: String,
    /// Metadata as JSON text.
    pub metadata: Option<String>,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// Claimable from.
    pub run_at: DateTime<Utc>,
    /// Done or dead at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Worker holding the lease while running.
    pub lease_owner: Option<String>,
    /// Lease expiry while running.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The stored vector of its key, if any.
    pub vector: Option<VectorInfo>,
}

/// Dead jobs sharing one last error (a missing error groups as the empty text).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadGroup {
    /// The error text.
    pub error: String,
    /// How many dead jobs have it.
    pub count: u64,
    /// When the newest of them died.
    pub newest_at: DateTime<Utc>,
}

/// Jobs enqueued and finished in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MinuteActivity {
    /// Jobs created (not counting those later superseded or cancelled).
    pub enqueued: u64,
    /// Jobs finished done.
    pub done: u64,
    /// Jobs dead-lettered.
    pub dead: u64,
    /// Unfinished jobs at the end of the minute.
    pub backlog: u64,
}

/// Per-minute activity from `since`, read from the jobs' own timestamps (no Prometheus needed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Activity {
    /// Start of the first minute.
    pub since: DateTime<Utc>,
    /// One entry per minute, oldest first.
    pub minutes: Vec<MinuteActivity>,
}

/// A worker with its heartbeat and the jobs it holds leases on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerLeases {
    /// Worker id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// What the worker is doing.
    pub state: WorkerState,
    /// Its last heartbeat.
    pub last_heartbeat_at: DateTime<Utc>,
    /// Running jobs leased to it.
    pub leased_jobs: u64,
    /// Earliest expiry among those leases.
    pub next_expiry: Option<DateTime<Utc>>,
}

/// A time as a store keeps it: `timestamptz` in PostgreSQL, integer milliseconds in SQLite.
pub(crate) trait StoreTime {
    /// As UTC.
    fn utc(self) -> DateTime<Utc>;
}

impl StoreTime for DateTime<Utc> {
    fn utc(self) -> DateTime<Utc> {
        self
    }
}

impl StoreTime for i64 {
    fn utc(self) -> DateTime<Utc> {
        from_millis(self)
    }
}

/// A job listing row as both stores select it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SummaryRow<At> {
    id: i64,
    source_type: String,
    source_id: String,
    content_type: String,
    state: JobState,
    priority: i32,
    attempts: i32,
    last_error: Option<String>,
    updated_at: At,
}

impl<At: StoreTime> From<SummaryRow<At>> for JobSummary {
    fn from(r: SummaryRow<At>) -> Self {
        Self {
            id: r.id,
            source_type: r.source_type,
            source_id: r.source_id,
            content_type: r.content_type,
            state: r.state,
            priority: r.priority,
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            last_error: r.last_error,
            updated_at: r.updated_at.utc(),
        }
    }
}

/// A job's remaining columns and its key's vector, as both stores select them.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DetailRow<At> {
    #[sqlx(flatten)]
    summary: SummaryRow<At>,
    text: String,
    metadata: Option<String>,
    created_at: At,
    run_at: At,
    finished_at: Option<At>,
    lease_owner: Option<String>,
    lease_expires_at: Option<At>,
    model: Option<String>,
    dimensions: Option<i32>,
    vector_job_id: Option<i64>,
}

impl<At: StoreTime> From<DetailRow<At>> for JobDetail {
    fn from(r: DetailRow<At>) -> Self {
        let id = r.summary.id;
        let vector = match (r.model, r.dimensions) {
            (Some(model), Some(d)) => Some(VectorInfo {
                model,
                dimensions: u32::try_from(d).unwrap_or(0),
                from_this_job: r.vector_job_id == Some(id),
            }),
            _ => None,
        };
        Self {
            summary: r.summary.into(),
            text: r.text,
            metadata: r.metadata,
            created_at: r.created_at.utc(),
            run_at: r.run_at.utc(),
            finished_at: r.finished_at.map(StoreTime::utc),
            lease_owner: r.lease_owner,
            lease_expires_at: r.lease_expires_at.map(StoreTime::utc),
            vector,
        }
    }
}

/// A dead-letter group as both stores select it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct GroupRow<At> {
    error: String,
    count: i64,
    newest_at: At,
}

impl<At: StoreTime> From<GroupRow<At>> for DeadGroup {
    fn from(r: GroupRow<At>) -> Self {
        Self { error: r.error, count: u64::try_from(r.count).unwrap_or(0), newest_at: r.newest_at.utc() }
    }
}

/// A worker row with its leases as both stores select it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct WorkerLeaseRow<At> {
    id: String,
    host: String,
    state: WorkerState,
    last_heartbeat_at: At,
    leased_jobs: i64,
    next_expiry: Option<At>,
}

impl<At: StoreTime> From<WorkerLeaseRow<At>> for WorkerLeases {
    fn from(r: WorkerLeaseRow<At>) -> Self {
        Self {
            id: r.id,
            host: r.host,
            state: r.state,
            last_heartbeat_at: r.last_heartbeat_at.utc(),
            leased_jobs: u64::try_from(r.leased_jobs).unwrap_or(0),
            next_expiry: r.next_expiry.map(StoreTime::utc),
        }
    }
}

/// Counts per minute as a store returns them: (minute start, how many).
pub(crate) type MinuteCounts = Vec<(DateTime<Utc>, u64)>;

/// Folds per-minute counts into `minutes` slots from `since`, the backlog carried forward from
/// `backlog_at_start`; counts outside the window are ignored.
pub(crate) fn fold_activity(
    since: DateTime<Utc>,
    minutes: usize,
    backlog_at_start: u64,
    enqueued: &MinuteCounts,
    done: &MinuteCounts,
    dead: &MinuteCounts,
) -> Activity {
    let mut slots = vec![MinuteActivity::default(); minutes];
    let slot = |at: DateTime<Utc>| -> Option<usize> {
        let m = (at - since).num_seconds().div_euclid(60);
        usize::try_from(m).ok().filter(|m| *m < minutes)
    };
    for (at, n) in enqueued {
        if let Some(i) = slot(*at) {
            slots[i].enqueued += n;
        }
    }
    for (at, n) in done {
        if let Some(i) = slot(*at) {
            slots[i].done += n;
        }
    }
    for (at, n) in dead {
        if let Some(i) = slot(*at) {
            slots[i].dead += n;
        }
    }
    let mut backlog = backlog_at_start;
    for s in &mut slots {
        backlog = (backlog + s.enqueued).saturating_sub(s.done + s.dead);
        s.backlog = backlog;
    }
    Activity { since, minutes: slots }
}

/// The start of the minute `at` falls in.
pub fn minute_floor(at: DateTime<Utc>) -> DateTime<Utc> {
    at - ChronoDuration::seconds(at.timestamp().rem_euclid(60))
        - ChronoDuration::nanoseconds(at.timestamp_subsec_nanos().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn activity_folds_into_minutes_and_carries_the_backlog() {
        let since = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("time");
        let m = |n: i64| since + ChronoDuration::minutes(n);
        let a = fold_activity(
            since,
            3,
            5,
            &vec![(m(0), 4), (m(2), 1), (m(9), 100)],
            &vec![(m(1), 6)],
            &vec![(m(1), 1), (m(-1), 7)],
        );
        let got: Vec<(u64, u64, u64, u64)> =
            a.minutes.iter().map(|s| (s.enqueued, s.done, s.dead, s.backlog)).collect();
        assert_eq!(got, vec![(4, 0, 0, 9), (0, 6, 1, 2), (1, 0, 0, 3)]);
    }

    #[test]
    fn minute_floor_drops_seconds() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 12, 3, 59).single().expect("time");
        assert_eq!(minute_floor(at), Utc.with_ymd_and_hms(2026, 1, 1, 12, 3, 0).single().expect("time"));
    }
}
