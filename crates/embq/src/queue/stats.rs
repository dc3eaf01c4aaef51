//! Queue statistics shared by both stores: each groups its jobs by state, due, and priority in
//! SQL, and [`fold_stats`] turns the groups into [`QueueStats`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::JobState;

/// One group of the stats query, as both stores name its columns.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(super) struct StatRow {
    /// The jobs' state.
    pub state: JobState,
    /// Whether their `run_at` has come (a ready job that is not due is scheduled).
    pub due: bool,
    /// Their priority.
    pub priority: i32,
    /// How many jobs the group holds.
    #[sqlx(rename = "n", try_from = "i64")]
    pub count: u64,
    /// Seconds since the group's earliest `run_at`.
    pub age: Option<f64>,
}

/// Folds grouped counts into [`QueueStats`].
pub(super) fn fold_stats(rows: Vec<StatRow>) -> QueueStats {
    let mut s = QueueStats::default();
    let mut by_prio = BTreeMap::new();
    for r in rows {
        match (r.state, r.due) {
            (JobState::Ready, true) => {
                s.ready += r.count;
                *by_prio.entry(r.priority).or_insert(0) += r.count;
                if let Some(age) = r.age {
                    let age = age.max(0.0);
                    s.oldest_ready_age_seconds = Some(s.oldest_ready_age_seconds.map_or(age, |a: f64| a.max(age)));
                }
            }
            (JobState::Ready, false) => s.scheduled += r.count,
            (JobState::Running, _) => s.running += r.count,
            (JobState::Done, _) => s.done += r.count,
            (JobState::Dead, _) => s.dead += r.count,
            (JobState::Superseded, _) => s.superseded += r.count,
            (JobState::Cancelled, _) => s.cancelled += r.count,
        }
    }
    s.ready_by_priority = by_prio.into_iter().rev().collect();
    s
}

/// Counts for `embq queue stats` and the queue gauges.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct QueueStats {
    /// Claimable now.
    pub ready: u64,
    /// Waiting for a retry time.
    pub scheduled: u64,
    /// Leased to a worker.
    pub running: u64,
    /// Finished.
    pub done: u64,
    /// Dead-lettered.
    pub dead: u64,
    /// Replaced by a newer enqueue.
    pub superseded: u64,
    /// Their record was deleted (PostgreSQL's `embq.forget`) or their write-back row is gone.
    pub cancelled: u64,
    /// Age of the oldest ready job.
    pub oldest_ready_age_seconds: Option<f64>,
    /// Ready jobs per priority, highest first.
    pub ready_by_priority: Vec<(i32, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: JobState, due: bool, priority: i32, count: u64, age: Option<f64>) -> StatRow {
        StatRow { state, due, priority, count, age }
    }

    #[test]
    fn groups_fold_into_counts_ages_and_priorities() {
        let s = fold_stats(vec![
            row(JobState::Ready, true, 0, 3, Some(12.5)),
            row(JobState::Ready, true, 5, 2, Some(-1.0)),
            row(JobState::Ready, false, 5, 4, Some(-30.0)),
            row(JobState::Running, true, 0, 1, None),
            row(JobState::Done, true, 0, 7, None),
            row(JobState::Done, false, 9, 1, None),
            row(JobState::Dead, true, 0, 2, None),
            row(JobState::Superseded, true, 0, 6, None),
            row(JobState::Cancelled, true, 0, 8, None),
        ]);
        assert_eq!((s.ready, s.scheduled, s.running, s.done), (5, 4, 1, 8));
        assert_eq!((s.dead, s.superseded, s.cancelled), (2, 6, 8));
        assert_eq!(s.oldest_ready_age_seconds, Some(12.5), "only due ready jobs age; never below zero");
        assert_eq!(s.ready_by_priority, vec![(5, 2), (0, 3)], "highest priority first");
        assert_eq!(fold_stats(Vec::new()), QueueStats::default());
    }
}
