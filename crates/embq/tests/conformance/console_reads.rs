//! The console's reads (`Queue::jobs`, `job`, `dead_groups`, `dead_ids`, `activity`,
//! `worker_leases`), held to one behaviour on every store by `queue_conformance.rs`.

use super::*;
use embq::queue::{JobFilter, JobState};

/// Enqueues `jobs`, claims them all under one lease and finishes them with `outcomes` in order.
async fn finish_all(s: &Store, jobs: &[NewJob], outcomes: Vec<Outcome>) -> Vec<i64> {
    s.q.enqueue(jobs, &no_progress).await.unwrap();
    let l = lease("w");
    let claimed = s.q.claim(jobs.len(), &l, LEASE, MODEL).await.unwrap();
    assert_eq!(claimed.len(), jobs.len());
    let mut ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    let done: Vec<(i64, Outcome)> = ids.iter().copied().zip(outcomes).collect();
    s.q.finish(&l, MODEL, &done).await.unwrap();
    ids
}

pub(super) async fn jobs_are_listed_by_filter_and_shown_in_full(s: Store) {
    let mut other = job("Beta-7", "second", 2);
    other.source_type = "ticket".into();
    let ids = finish_all(
        &s,
        &[job("alpha-1", "first", 0), other, job("alpha-2", "<b>third</b>", 0)],
        vec![
            Outcome::Done(vector(0.1)),
            Outcome::Dead("HTTP 500: upstream 100% busy".into()),
            Outcome::Dead("bad".into()),
        ],
    )
    .await;
    s.q.enqueue(&[job("gamma", "pending", 1)], &no_progress).await.unwrap();
    let all = s.q.jobs(&JobFilter { limit: 50, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first: {all:?}");
    let f = |state: Option<JobState>, st: Option<&str>, key: Option<&str>, error: Option<&str>| JobFilter {
        state,
        source_type: st.map(Into::into),
        key: key.map(Into::into),
        error: error.map(Into::into),
        limit: 50,
    };
    let ids_of = |v: Vec<embq::queue::JobSummary>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids_of(s.q.jobs(&f(Some(JobState::Dead), None, None, None)).await.unwrap()), vec![ids[2], ids[1]]);
    assert_eq!(ids_of(s.q.jobs(&f(None, Some("ticket"), None, None)).await.unwrap()), vec![ids[1]]);
    // Key and error match a part, ignoring case; `%` and `_` are plain characters.
    assert_eq!(ids_of(s.q.jobs(&f(None, None, Some("ALPHA"), None)).await.unwrap()), vec![ids[2], ids[0]]);
    assert_eq!(ids_of(s.q.jobs(&f(None, None, None, Some("http 500"))).await.unwrap()), vec![ids[1]]);
    assert_eq!(ids_of(s.q.jobs(&f(None, None, None, Some("100%"))).await.unwrap()), vec![ids[1]]);
    assert!(s.q.jobs(&f(None, None, None, Some("%"))).await.unwrap().len() == 1, "% is not a wildcard");
    assert!(s.q.jobs(&f(Some(JobState::Dead), None, Some("alpha-1"), None)).await.unwrap().is_empty());
    assert_eq!(s.q.jobs(&JobFilter { limit: 2, ..Default::default() }).await.unwrap().len(), 2);

    let done = s.q.job(ids[0]).await.unwrap().expect("job exists");
    assert_eq!(done.summary.state, JobState::Done);
    assert_eq!(done.text, "first");
    assert_eq!(done.summary.attempts, 1);
    assert!(done.finished_at.is_some());
    assert!(done.metadata.as_deref().is_some_and(|m| m.contains("alpha-1")), "{:?}", done.metadata);
    let v = done.vector.expect("a vector is stored");
    assert_eq!((v.model.as_str(), v.dimensions, v.from_this_job), (MODEL, 1536, true));
    let dead = s.q.job(ids[2]).await.unwrap().expect("job exists");
    assert_eq!(dead.text, "<b>third</b>");
    assert_eq!(dead.summary.last_error.as_deref(), Some("bad"));
    assert!(dead.vector.is_none());
    assert!(s.q.job(i64::MAX).await.unwrap().is_none());
}

pub(super) async fn dead_letters_group_by_error(s: Store) {
    let jobs: Vec<NewJob> = (0..5).map(|i| job(&format!("d{i}"), "t", 0)).collect();
    let a = "HTTP 400: input too long";
    let ids = finish_all(
        &s,
        &jobs,
        vec![
            Outcome::Dead(a.into()),
            Outcome::Dead("timeout".into()),
            Outcome::Dead(a.into()),
            Outcome::Dead(a.into()),
            Outcome::Done(vector(0.2)),
        ],
    )
    .await;
    let groups = s.q.dead_groups(10).await.unwrap();
    let got: Vec<(&str, u64)> = groups.iter().map(|g| (g.error.as_str(), g.count)).collect();
    assert_eq!(got, vec![(a, 3), ("timeout", 1)]);
    let group = s.q.dead_ids(a).await.unwrap();
    assert_eq!(group, vec![ids[0], ids[2], ids[3]]);
    assert!(s.q.dead_ids("HTTP 400").await.unwrap().is_empty(), "a group is its exact error");
    assert_eq!(s.q.purge_dead(&DeadSelection::Ids(group)).await.unwrap(), 3);
    let left: Vec<(String, u64)> = s.q.dead_groups(10).await.unwrap().into_iter().map(|g| (g.error, g.count)).collect();
    assert_eq!(left, vec![("timeout".to_string(), 1)]);
    assert_eq!(s.q.stats().await.unwrap().done, 1);
}

pub(super) async fn activity_counts_each_minute_and_the_backlog(s: Store) {
    let start = s.clock.now();
    s.q.enqueue(&[job("a", "1", 0), job("b", "2", 0), job("c", "3", 0)], &no_progress).await.unwrap();
    s.clock.advance(Duration::from_secs(125));
    let l = lease("w");
    let claimed = s.q.claim(2, &l, LEASE, MODEL).await.unwrap();
    s.q.finish(&l, MODEL, &[(claimed[0].id, Outcome::Done(vector(0.3))), (claimed[1].id, Outcome::Dead("x".into()))])
        .await
        .unwrap();
    let a = s.q.activity(start, 4).await.unwrap();
    assert_eq!(a.since, embq::queue::minute_floor(start));
    let got: Vec<(u64, u64, u64, u64)> = a.minutes.iter().map(|m| (m.enqueued, m.done, m.dead, m.backlog)).collect();
    assert_eq!(got, vec![(3, 0, 0, 3), (0, 0, 0, 3), (0, 1, 1, 1), (0, 0, 0, 1)]);
    // A window starting later carries the unfinished jobs in as its starting backlog.
    let later = s.q.activity(start + chrono::Duration::minutes(1), 1).await.unwrap();
    assert_eq!(later.minutes[0].backlog, 3);
}

pub(super) async fn workers_show_their_leases(s: Store) {
    s.q.enqueue(&[job("a", "1", 0), job("b", "2", 0), job("c", "3", 0)], &no_progress).await.unwrap();
    let w = worker("w1");
    let l = lease("w1");
    assert_eq!(s.q.claim(2, &l, LEASE, MODEL).await.unwrap().len(), 2);
    s.q.heartbeat(&w, std::slice::from_ref(&l.token), LEASE).await.unwrap();
    s.q.heartbeat(&worker("w2"), &[], LEASE).await.unwrap();
    let got = s.q.worker_leases().await.unwrap();
    let view: Vec<(&str, u64, bool)> =
        got.iter().map(|w| (w.id.as_str(), w.leased_jobs, w.next_expiry.is_some())).collect();
    assert_eq!(view, vec![("w1", 2, true), ("w2", 0, false)]);
    assert_eq!(got[0].last_heartbeat_at.timestamp(), s.clock.now().timestamp());
}
