//! One conformance suite for every queue store: each scenario runs against
//! PostgreSQL (a fresh database) and SQLite (a fresh file), with a manual clock.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use embq::queue::{
    no_progress, Clock, DeadSelection, Lease, NewJob, Outcome, PruneRequest, Queue, WorkerInfo, WorkerState,
};

const MODEL: &str = "hash-v1";
const LEASE: Duration = Duration::from_secs(30);

struct Store {
    q: Arc<dyn Queue>,
    clock: Clock,
    _dir: Option<tempfile::TempDir>,
}

fn start_clock() -> Clock {
    Clock::manual(Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("valid time"))
}

/// Every store holds vectors of this many dimensions.
const DIMS: &str = "1536";

/// PostgreSQL storing vectors as `real[]`.
async fn postgres() -> Store {
    let url = support::pg::fresh_pg_db().await;
    let clock = start_clock();
    let q =
        support::store_with(&url, clock.clone(), &[("EMBEDDING_DIMENSIONS", DIMS), ("VECTOR_TYPE", "real[]")]).await;
    q.migrate().await.expect("migrate");
    Store { q, clock, _dir: None }
}

/// PostgreSQL as on Supabase: pgvector in schema `extensions`, migrated by a non-superuser
/// owner, vectors in a typed `vector(1536)` column.
async fn pgvector() -> Store {
    let url = support::pg::fresh_supabase_db().await;
    let clock = start_clock();
    let q = support::store_with(&url, clock.clone(), &[("EMBEDDING_DIMENSIONS", DIMS)]).await;
    q.migrate().await.expect("migrate");
    Store { q, clock, _dir: None }
}

async fn sqlite() -> Store {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let clock = start_clock();
    let q = support::store(&url, clock.clone()).await;
    q.migrate().await.expect("migrate");
    Store { q, clock, _dir: Some(dir) }
}

fn lease(owner: &str) -> Lease {
    Lease { owner: owner.into(), token: uuid::Uuid::new_v4().to_string() }
}

fn job(id: &str, text: &str, priority: i32) -> NewJob {
    NewJob {
        source_type: "receipt".into(),
        source_id: id.into(),
        content_type: "default".into(),
        text: text.into(),
        priority,
        metadata: Some(serde_json::json!({"k": id})),
        lane: embq::queue::Lane::Online,
    }
}

fn worker(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        host: "test".into(),
        pid: 1,
        version: "t".into(),
        in_flight: 0,
        processed: 0,
        failed: 0,
        state: WorkerState::Running,
    }
}

/// A vector of `DIMS` values that differs by `x`.
fn vector(x: f32) -> Vec<f32> {
    let mut v = vec![0.0; 1536];
    v[..3].copy_from_slice(&[x, 0.5, -0.25]);
    v
}

async fn claim_is_exclusive_under_concurrency(s: Store) {
    s.q.enqueue(&support::jobs_named(2000, "c"), &no_progress).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let q = s.q.clone();
        tasks.push(tokio::spawn(async move {
            let l = lease(&format!("w{w}"));
            let mut mine = Vec::new();
            loop {
                let got = q.claim(7, &l, LEASE, MODEL).await.expect("claim");
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|j| j.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 2000, "every job claimed exactly once in total");
    assert_eq!(unique.len(), 2000, "no job claimed twice");
    assert_eq!(s.q.stats().await.unwrap().running, 2000);
}

async fn claim_order_is_priority_then_age(s: Store) {
    s.q.enqueue(&[job("a", "a", 0), job("b", "b", 5), job("c", "c", 0)], &no_progress).await.unwrap();
    s.clock.advance(Duration::from_secs(1));
    s.q.enqueue(&[job("d", "d", 5), job("e", "e", -1)], &no_progress).await.unwrap();
    let l = lease("w");
    let mut order = Vec::new();
    for _ in 0..5 {
        let got = s.q.claim(1, &l, LEASE, MODEL).await.unwrap();
        order.push(got[0].source_id.clone());
    }
    assert_eq!(order, ["b", "d", "a", "c", "e"]);
    let l2 = lease("w2");
    s.q.enqueue(&[job("f", "f", 1), job("g", "g", 2)], &no_progress).await.unwrap();
    let batch: Vec<_> = s.q.claim(10, &l2, LEASE, MODEL).await.unwrap().into_iter().map(|j| j.source_id).collect();
    assert_eq!(batch, ["g", "f"], "a multi-job claim is returned in claim order");
}

async fn expired_lease_is_claimed_again(s: Store) {
    s.q.enqueue(&[job("1", "t", 0)], &no_progress).await.unwrap();
    let a = lease("dead-worker");
    let got = s.q.claim(5, &a, Duration::from_secs(10), MODEL).await.unwrap();
    assert_eq!(got[0].attempt, 1);
    s.clock.advance(Duration::from_secs(9));
    assert_eq!(s.q.rescue_expired(5).await.unwrap().requeued, 0, "lease still valid");
    assert!(s.q.claim(5, &lease("b"), LEASE, MODEL).await.unwrap().is_empty());
    s.clock.advance(Duration::from_secs(2));
    let r = s.q.rescue_expired(5).await.unwrap();
    assert_eq!((r.requeued, r.dead), (1, 0));
    let again = s.q.claim(5, &lease("b"), LEASE, MODEL).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2, "the crashed attempt counts");
}

async fn heartbeat_keeps_a_lease_alive(s: Store) {
    s.q.enqueue(&[job("1", "t", 0), job("2", "t", 0)], &no_progress).await.unwrap();
    let (kept, dropped) = (lease("alive"), lease("alive"));
    s.q.claim(1, &kept, Duration::from_secs(10), MODEL).await.unwrap();
    let abandoned = s.q.claim(1, &dropped, Duration::from_secs(10), MODEL).await.unwrap();
    for _ in 0..5 {
        s.clock.advance(Duration::from_secs(8));
        // Only the lease the worker still names is extended; the other lapses.
        let extended =
            s.q.heartbeat(&worker("alive"), std::slice::from_ref(&kept.token), Duration::from_secs(10)).await.unwrap();
        assert_eq!(extended, 1);
        let rescued = s.q.rescue_expired(5).await.unwrap().requeued;
        assert!(rescued <= 1);
    }
    let again = s.q.claim(5, &lease("other"), LEASE, MODEL).await.unwrap();
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), vec![abandoned[0].id], "the lapsed lease was rescued");
    let workers = s.q.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].id, "alive");
    // A heartbeat naming no lease still refreshes the worker's row.
    assert_eq!(s.q.heartbeat(&worker("alive"), &[], Duration::from_secs(10)).await.unwrap(), 0);
}

async fn stale_lease_finish_is_rejected(s: Store) {
    s.q.enqueue(&[job("1", "t", 0)], &no_progress).await.unwrap();
    let a = lease("slow");
    let ja = s.q.claim(1, &a, Duration::from_secs(10), MODEL).await.unwrap();
    s.clock.advance(Duration::from_secs(11));
    s.q.rescue_expired(5).await.unwrap();
    let b = lease("fast");
    let jb = s.q.claim(1, &b, LEASE, MODEL).await.unwrap();
    assert_eq!(ja[0].id, jb[0].id);
    let ra = s.q.finish(&a, MODEL, &[(ja[0].id, Outcome::Done(vector(1.0)))]).await.unwrap();
    assert_eq!((ra.stored, ra.lost), (0, 1), "the old lease cannot write");
    assert!(s.q.embeddings(MODEL, 10).await.unwrap().is_empty());
    let rb = s.q.finish(&b, MODEL, &[(jb[0].id, Outcome::Done(vector(2.0)))]).await.unwrap();
    assert_eq!((rb.stored, rb.lost), (1, 0));
    let stored = s.q.embeddings(MODEL, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].vector, vector(2.0));
    // A second finish with the same lease changes nothing.
    let again = s.q.finish(&b, MODEL, &[(jb[0].id, Outcome::Done(vector(3.0)))]).await.unwrap();
    assert_eq!(again.lost, 1);
    assert_eq!(s.q.embeddings(MODEL, 10).await.unwrap()[0].vector, vector(2.0));
}

async fn retry_waits_for_its_scheduled_time(s: Store) {
    s.q.enqueue(&[job("1", "t", 0)], &no_progress).await.unwrap();
    let l = lease("w");
    let j = s.q.claim(1, &l, LEASE, MODEL).await.unwrap();
    let r =
        s.q.finish(&l, MODEL, &[(j[0].id, Outcome::Retry { after: Duration::from_secs(4), error: "HTTP 503".into() })])
            .await
            .unwrap();
    assert_eq!(r.retried, 1);
    let st = s.q.stats().await.unwrap();
    assert_eq!((st.ready, st.scheduled), (0, 1));
    assert!(s.q.is_idle(Duration::ZERO).await.unwrap(), "a scheduled retry is not ready work");
    assert!(!s.q.is_idle(Duration::from_secs(10)).await.unwrap(), "but it is within a horizon");
    assert!(s.q.claim(1, &l, LEASE, MODEL).await.unwrap().is_empty());
    s.clock.advance(Duration::from_secs(3));
    assert!(s.q.claim(1, &l, LEASE, MODEL).await.unwrap().is_empty(), "not before its time");
    s.clock.advance(Duration::from_secs(2));
    let again = s.q.claim(1, &l, LEASE, MODEL).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
}

async fn dead_letter_keeps_the_error_and_can_be_retried_or_purged(s: Store) {
    s.q.enqueue(&[job("1", "t", 0), job("2", "u", 0)], &no_progress).await.unwrap();
    let l = lease("w");
    let j = s.q.claim(2, &l, LEASE, MODEL).await.unwrap();
    let r =
        s.q.finish(
            &l,
            MODEL,
            &[
                (j[0].id, Outcome::Dead("failed after 5 attempts: HTTP 500".into())),
                (j[1].id, Outcome::Dead("bad".into())),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.dead, 2);
    let dead = s.q.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().any(|d| d.last_error.as_deref() == Some("failed after 5 attempts: HTTP 500")));
    assert_eq!(s.q.stats().await.unwrap().dead, 2);
    assert_eq!(s.q.retry_dead(&DeadSelection::Ids(vec![j[0].id])).await.unwrap(), 1);
    let again = s.q.claim(5, &l, LEASE, MODEL).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 1, "a retried dead job gets a fresh attempt budget");
    assert_eq!(s.q.purge_dead(&DeadSelection::All).await.unwrap(), 1);
    assert!(s.q.dead_jobs(10).await.unwrap().is_empty());
}

async fn expired_lease_on_the_last_attempt_dead_letters(s: Store) {
    s.q.enqueue(&[job("1", "t", 0)], &no_progress).await.unwrap();
    for attempt in 1..=2 {
        let l = lease(&format!("crasher{attempt}"));
        assert_eq!(s.q.claim(1, &l, Duration::from_secs(5), MODEL).await.unwrap()[0].attempt, attempt);
        s.clock.advance(Duration::from_secs(6));
        let r = s.q.rescue_expired(2).await.unwrap();
        if attempt < 2 {
            assert_eq!(r.requeued, 1);
        } else {
            assert_eq!(r.dead, 1, "a job that keeps killing its worker stops after MAX_ATTEMPTS");
        }
    }
    let dead = s.q.dead_jobs(5).await.unwrap();
    assert!(dead[0].last_error.as_deref().unwrap_or("").contains("lease expired"), "{dead:?}");
}

async fn release_spends_no_attempt(s: Store) {
    s.q.enqueue(&[job("1", "t", 0)], &no_progress).await.unwrap();
    let l = lease("w");
    for _ in 0..3 {
        let j = s.q.claim(1, &l, LEASE, MODEL).await.unwrap();
        assert_eq!(j[0].attempt, 1);
        let r = s.q.finish(&l, MODEL, &[(j[0].id, Outcome::Released { after: Duration::ZERO })]).await.unwrap();
        assert_eq!(r.released, 1);
    }
}

async fn reenqueue_replaces_a_pending_job(s: Store) {
    let r = s.q.enqueue(&[job("1", "old text", 0)], &no_progress).await.unwrap();
    assert_eq!((r.inserted, r.replaced), (1, 0));
    let r = s.q.enqueue(&[job("1", "new text", 3)], &no_progress).await.unwrap();
    assert_eq!((r.inserted, r.replaced), (0, 1));
    let st = s.q.stats().await.unwrap();
    assert_eq!(st.ready, 1);
    let l = lease("w");
    let j = s.q.claim(5, &l, LEASE, MODEL).await.unwrap();
    assert_eq!(j.len(), 1);
    assert_eq!((j[0].text.as_str(), j[0].priority), ("new text", 3));
    // While that job runs, a new enqueue is a new job, and the older finish cannot overwrite it.
    s.q.enqueue(&[job("1", "newest text", 0)], &no_progress).await.unwrap();
    let l2 = lease("w2");
    let j2 = s.q.claim(5, &l2, LEASE, MODEL).await.unwrap();
    assert_eq!(j2[0].text, "newest text");
    s.q.finish(&l2, MODEL, &[(j2[0].id, Outcome::Done(vector(9.0)))]).await.unwrap();
    s.q.finish(&l, MODEL, &[(j[0].id, Outcome::Done(vector(1.0)))]).await.unwrap();
    assert_eq!(s.q.embeddings(MODEL, 10).await.unwrap()[0].vector, vector(9.0), "the newest text's vector wins");
    // Duplicate keys in one call keep the last text.
    let r = s.q.enqueue(&[job("2", "x", 0), job("2", "y", 0)], &no_progress).await.unwrap();
    assert_eq!(r.inserted, 1);
}

async fn requeue_behind_a_newer_pending_job_is_superseded(s: Store) {
    s.q.enqueue(&[job("1", "v1", 0)], &no_progress).await.unwrap();
    let l = lease("w");
    let j = s.q.claim(1, &l, LEASE, MODEL).await.unwrap();
    s.q.enqueue(&[job("1", "v2", 0)], &no_progress).await.unwrap();
    let r =
        s.q.finish(&l, MODEL, &[(j[0].id, Outcome::Retry { after: Duration::ZERO, error: "503".into() })])
            .await
            .unwrap();
    assert_eq!((r.retried, r.superseded), (0, 1));
    let st = s.q.stats().await.unwrap();
    assert_eq!((st.ready, st.superseded), (1, 1));
    assert_eq!(s.q.claim(5, &l, LEASE, MODEL).await.unwrap()[0].text, "v2");
}

async fn unchanged_text_needs_no_provider_call(s: Store) {
    s.q.enqueue(&[job("1", "same", 0), job("2", "other", 0)], &no_progress).await.unwrap();
    let l = lease("w");
    let j = s.q.claim(5, &l, LEASE, MODEL).await.unwrap();
    assert!(j.iter().all(|j| !j.unchanged));
    let outcomes: Vec<_> = j.iter().map(|j| (j.id, Outcome::Done(vector(1.0)))).collect();
    s.q.finish(&l, MODEL, &outcomes).await.unwrap();
    s.q.enqueue(&[job("1", "same", 0), job("2", "changed", 0)], &no_progress).await.unwrap();
    let j = s.q.claim(5, &l, LEASE, MODEL).await.unwrap();
    let flags: Vec<_> = j.iter().map(|j| (j.source_id.as_str(), j.unchanged)).collect();
    assert_eq!(flags, [("1", true), ("2", false)]);
    // The claim completed the unchanged job itself: it holds no lease and is done already.
    let st = s.q.stats().await.unwrap();
    assert_eq!((st.running, st.done), (1, 3), "{st:?}");
    let r = s.q.finish(&l, MODEL, &[(j[0].id, Outcome::Unchanged)]).await.unwrap();
    assert_eq!((r.unchanged, r.lost), (0, 1), "there is nothing left to finish");
    let r = s.q.finish(&l, MODEL, &[(j[1].id, Outcome::Done(vector(2.0)))]).await.unwrap();
    assert_eq!(r.stored, 1);
    assert_eq!(s.q.stats().await.unwrap().done, 4);
    // Another model means another embedding.
    s.q.enqueue(&[job("1", "same", 0)], &no_progress).await.unwrap();
    assert!(!s.q.claim(5, &l, LEASE, "other-model").await.unwrap()[0].unchanged);
}

async fn a_text_reverted_while_an_older_job_runs_is_embedded_again(s: Store) {
    // v1 is stored; v2 starts running; the text goes back to v1 before v2 finishes. The new
    // job's text matches the stored vector, yet it must not be completed as unchanged: v2's
    // vector lands afterwards, and v1 (the newest text) must be what stays stored.
    for older_finishes_first in [true, false] {
        let key = if older_finishes_first { "a" } else { "b" };
        s.q.enqueue(&[job(key, "v1", 0)], &no_progress).await.unwrap();
        let l = lease("w");
        let j = s.q.claim(1, &l, LEASE, MODEL).await.unwrap();
        s.q.finish(&l, MODEL, &[(j[0].id, Outcome::Done(vector(1.0)))]).await.unwrap();
        s.q.enqueue(&[job(key, "v2", 0)], &no_progress).await.unwrap();
        let (slow, fast) = (lease("slow"), lease("fast"));
        let v2 = s.q.claim(1, &slow, LEASE, MODEL).await.unwrap();
        s.q.enqueue(&[job(key, "v1", 0)], &no_progress).await.unwrap();
        let v1 = s.q.claim(1, &fast, LEASE, MODEL).await.unwrap();
        assert!(!v1[0].unchanged, "an older job for the key is still running");
        let (out_v2, out_v1) = ([(v2[0].id, Outcome::Done(vector(2.0)))], [(v1[0].id, Outcome::Done(vector(1.0)))]);
        let finish_v2 = || s.q.finish(&slow, MODEL, &out_v2);
        let finish_v1 = || s.q.finish(&fast, MODEL, &out_v1);
        if older_finishes_first {
            assert_eq!(finish_v2().await.unwrap().stored, 1);
            assert_eq!(finish_v1().await.unwrap().stored, 1);
        } else {
            assert_eq!(finish_v1().await.unwrap().stored, 1);
            // The older job completes, but its vector does not replace the newer one.
            assert_eq!(finish_v2().await.unwrap().stored, 1);
        }
        let stored = s.q.embeddings(MODEL, 100).await.unwrap();
        let e = stored.iter().find(|e| e.source_id == key).unwrap();
        assert_eq!(e.vector, vector(1.0), "older job finished first: {older_finishes_first}");
        // With nothing older running, the same text is unchanged again.
        s.q.enqueue(&[job(key, "v1", 0)], &no_progress).await.unwrap();
        assert!(s.q.claim(1, &lease("w"), LEASE, MODEL).await.unwrap()[0].unchanged);
    }
}

async fn stats_and_idle_reflect_the_queue(s: Store) {
    assert!(s.q.is_idle(Duration::ZERO).await.unwrap());
    s.q.enqueue(&[job("1", "a", 2), job("2", "b", 0), job("3", "c", 0)], &no_progress).await.unwrap();
    s.clock.advance(Duration::from_secs(7));
    let st = s.q.stats().await.unwrap();
    assert_eq!(st.ready, 3);
    assert_eq!(st.ready_by_priority, vec![(2, 1), (0, 2)]);
    let age = st.oldest_ready_age_seconds.unwrap();
    assert!((age - 7.0).abs() < 0.5, "{age}");
    assert!(!s.q.is_idle(Duration::ZERO).await.unwrap());
    let l = lease("w");
    let j = s.q.claim(3, &l, LEASE, MODEL).await.unwrap();
    assert!(!s.q.is_idle(Duration::ZERO).await.unwrap(), "running jobs are not idle");
    let outcomes: Vec<_> = j.iter().map(|j| (j.id, Outcome::Done(vector(0.1)))).collect();
    s.q.finish(&l, MODEL, &outcomes).await.unwrap();
    assert!(s.q.is_idle(Duration::ZERO).await.unwrap());
    assert_eq!(s.q.stats().await.unwrap().done, 3);
}

async fn invalid_jobs_are_refused_whole(s: Store) {
    let bad = vec![job("1", "fine", 0), job("2", "   ", 0)];
    let err = s.q.enqueue(&bad, &no_progress).await.unwrap_err();
    assert!(err.to_string().contains("job 2: text must not be empty"), "{err}");
    assert_eq!(s.q.stats().await.unwrap().ready, 0, "nothing was half-queued");
}

async fn a_batch_of_vectors_round_trips_bit_for_bit(s: Store) {
    let jobs: Vec<NewJob> = (0..7).map(|i| job(&i.to_string(), &format!("text {i}"), 0)).collect();
    s.q.enqueue(&jobs, &no_progress).await.unwrap();
    let l = lease("w");
    let claimed = s.q.claim(7, &l, LEASE, MODEL).await.unwrap();
    // Each job gets its own values, including the awkward ones, so a mix-up of rows,
    // offsets or byte order shows.
    let special = [0.0, -0.0, f32::MIN_POSITIVE, -f32::MAX, 1e-45, 3.4e38, -1.5];
    let vector = |id: i64| -> Vec<f32> {
        (0..1536).map(|d| if d < 7 { special[(d + id as usize) % 7] } else { (id as f32) * 0.001 - d as f32 }).collect()
    };
    let outcomes: Vec<_> = claimed.iter().map(|j| (j.id, Outcome::Done(vector(j.id)))).collect();
    assert_eq!(s.q.finish(&l, MODEL, &outcomes).await.unwrap().stored, 7);
    let stored = s.q.embeddings(MODEL, 10).await.unwrap();
    assert_eq!(stored.len(), 7);
    for e in stored {
        let j = claimed.iter().find(|j| j.source_id == e.source_id).unwrap();
        let want: Vec<u32> = vector(j.id).iter().map(|x| x.to_bits()).collect();
        let got: Vec<u32> = e.vector.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want, "job {}", j.id);
    }
}

async fn job_data_is_never_sql(s: Store) {
    // Every value travels as a bound parameter: hostile keys, texts and errors round-trip
    // unchanged and the tables survive.
    let evil = ["'); DROP TABLE embq.jobs; --", "x' OR '1'='1", "$1 ?1 :name \\ \" ;", "receipt\u{7f}';--"];
    let jobs: Vec<NewJob> = evil
        .iter()
        .enumerate()
        .map(|(i, e)| NewJob {
            source_type: e.to_string(),
            source_id: format!("{e}{i}"),
            content_type: e.to_string(),
            text: format!("text {e}"),
            priority: 0,
            metadata: Some(serde_json::json!({ "k": e })),
            lane: embq::queue::Lane::Online,
        })
        .collect();
    s.q.enqueue(&jobs, &no_progress).await.unwrap();
    let l = lease(evil[0]);
    let claimed = s.q.claim(10, &l, LEASE, evil[1]).await.unwrap();
    assert_eq!(claimed.len(), evil.len());
    for j in &claimed {
        let want = jobs.iter().find(|n| n.source_id == j.source_id).unwrap();
        assert_eq!((&j.source_type, &j.content_type, &j.text), (&want.source_type, &want.content_type, &want.text));
    }
    let (first, rest) = claimed.split_first().unwrap();
    let mut outcomes = vec![(first.id, Outcome::Dead(evil[0].to_string()))];
    outcomes.extend(rest.iter().map(|j| (j.id, Outcome::Done(vector(1.0)))));
    let r = s.q.finish(&l, evil[1], &outcomes).await.unwrap();
    assert_eq!((r.stored, r.dead), (3, 1));
    let dead = s.q.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some(evil[0]));
    let stored = s.q.embeddings(evil[1], 10).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|e| e.model == evil[1]));
    assert_eq!(s.q.stats().await.unwrap().done, 3);
}

async fn migrate_is_idempotent_and_checked(s: Store) {
    assert_eq!(s.q.migrate().await.unwrap(), embq::queue::SCHEMA_VERSION);
    s.q.check_schema().await.unwrap();
}

/// Finished jobs older than the retention go, in batches; live and recent ones stay; dead ones
/// only when asked; stored vectors stay.
async fn prune_deletes_old_finished_jobs_in_batches(s: Store) {
    let keys = ["a", "b", "c", "d", "e", "f"];
    s.q.enqueue(&keys.map(|k| job(k, k, 0)), &no_progress).await.unwrap();
    let l = lease("w");
    let got = s.q.claim(6, &l, LEASE, MODEL).await.unwrap();
    let id = |k: &str| got.iter().find(|j| j.source_id == k).unwrap().id;
    // A newer text for f is pending: releasing the running one supersedes it.
    s.q.enqueue(&[job("f", "f2", 0)], &no_progress).await.unwrap();
    let mut outcomes: Vec<_> = ["a", "b", "c"].map(|k| (id(k), Outcome::Done(vector(1.0)))).into();
    outcomes.push((id("d"), Outcome::Dead("bad input".into())));
    outcomes.push((id("e"), Outcome::Retry { after: Duration::from_secs(60), error: "flaky".into() }));
    outcomes.push((id("f"), Outcome::Released { after: Duration::ZERO }));
    let r = s.q.finish(&l, MODEL, &outcomes).await.unwrap();
    assert_eq!((r.stored, r.dead, r.retried, r.superseded), (3, 1, 1, 1));
    s.clock.advance(Duration::from_secs(8 * 24 * 3600));
    s.q.enqueue(&[job("g", "g", 9)], &no_progress).await.unwrap();
    let l2 = lease("w2");
    let recent = s.q.claim(1, &l2, LEASE, MODEL).await.unwrap();
    assert_eq!(recent[0].source_id, "g", "g goes first by priority: {recent:?}");
    s.q.finish(&l2, MODEL, &[(recent[0].id, Outcome::Done(vector(2.0)))]).await.unwrap();

    let week = PruneRequest { older_than: Duration::from_secs(7 * 24 * 3600), dead: false, batch_size: 2 };
    let r = s.q.prune(&week, &no_progress).await.unwrap();
    assert_eq!((r.finished, r.dead, r.batches), (4, 0, 3), "a, b, c done and f superseded, two at a time");
    let st = s.q.stats().await.unwrap();
    assert_eq!((st.done, st.superseded, st.dead), (1, 0, 1), "the recent done job and the dead one stay: {st:?}");
    assert_eq!((st.ready, st.running), (2, 0), "the retried e and the newer f stay: {st:?}");
    assert_eq!(s.q.embeddings(MODEL, 10).await.unwrap().len(), 4, "stored vectors are not pruned");
    let r = s.q.prune(&PruneRequest { dead: true, ..week }, &no_progress).await.unwrap();
    assert_eq!((r.finished, r.dead), (0, 1));
    assert_eq!(s.q.dead_jobs(10).await.unwrap().len(), 0);
}

/// The live stats agree with the full ones on every live state and skip the finished ones.
async fn live_stats_count_only_live_states(s: Store) {
    s.q.enqueue(&[job("1", "a", 3), job("2", "b", 0), job("3", "c", 0), job("4", "d", 0)], &no_progress).await.unwrap();
    let l = lease("w");
    let got = s.q.claim(3, &l, LEASE, MODEL).await.unwrap();
    s.q.finish(&l, MODEL, &[(got[0].id, Outcome::Done(vector(1.0))), (got[1].id, Outcome::Dead("no".into()))])
        .await
        .unwrap();
    s.clock.advance(Duration::from_secs(5));
    let (full, live) = (s.q.stats().await.unwrap(), s.q.live_stats().await.unwrap());
    assert_eq!(full.done, 1);
    assert_eq!((live.ready, live.running, live.dead, live.scheduled), (full.ready, full.running, full.dead, 0));
    assert_eq!((live.ready, live.running, live.dead), (1, 1, 1));
    assert_eq!(live.ready_by_priority, full.ready_by_priority);
    assert_eq!(live.oldest_ready_age_seconds, full.oldest_ready_age_seconds);
    assert_eq!((live.done, live.superseded, live.cancelled), (0, 0, 0), "finished states are not counted");
}
#[path = "conformance/console_reads.rs"]
mod console_reads;
use console_reads::*;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::postgres().await).await })*
        }
        mod pgvector {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::pgvector().await).await })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::sqlite().await).await })*
        }
    };
}

conformance!(
    claim_is_exclusive_under_concurrency,
    claim_order_is_priority_then_age,
    expired_lease_is_claimed_again,
    heartbeat_keeps_a_lease_alive,
    stale_lease_finish_is_rejected,
    retry_waits_for_its_scheduled_time,
    dead_letter_keeps_the_error_and_can_be_retried_or_purged,
    expired_lease_on_the_last_attempt_dead_letters,
    release_spends_no_attempt,
    reenqueue_replaces_a_pending_job,
    requeue_behind_a_newer_pending_job_is_superseded,
    unchanged_text_needs_no_provider_call,
    a_text_reverted_while_an_older_job_runs_is_embedded_again,
    stats_and_idle_reflect_the_queue,
    invalid_jobs_are_refused_whole,
    a_batch_of_vectors_round_trips_bit_for_bit,
    job_data_is_never_sql,
    migrate_is_idempotent_and_checked,
    prune_deletes_old_finished_jobs_in_batches,
    live_stats_count_only_live_states,
    jobs_are_listed_by_filter_and_shown_in_full,
    dead_letters_group_by_error,
    activity_counts_each_minute_and_the_backlog,
    workers_show_their_leases,
);

#[tokio::test]
async fn unmigrated_database_is_refused_with_a_clear_message() {
    let url = support::pg::fresh_pg_db().await;
    let q = support::store_with(&url, Clock::System, &[("EMBEDDING_DIMENSIONS", DIMS)]).await;
    let err = q.check_schema().await.unwrap_err();
    assert!(err.to_string().contains("run `embq migrate` first"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let q = support::store(&format!("sqlite://{}", dir.path().join("x.db").display()), Clock::System).await;
    assert!(q.check_schema().await.unwrap_err().to_string().contains("run `embq migrate` first"));
}

#[tokio::test]
async fn sql_enqueue_function_applies_the_same_rules() {
    use sqlx::Connection;
    let url = support::pg::fresh_pg_db().await;
    let q = support::store_with(&url, Clock::System, &[("EMBEDDING_DIMENSIONS", DIMS)]).await;
    q.migrate().await.unwrap();
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    let id1: i64 = sqlx::query_scalar("SELECT embq.enqueue('receipt', '42', 'first')").fetch_one(&mut c).await.unwrap();
    let id2: i64 = sqlx::query_scalar("SELECT embq.enqueue('receipt', '42', 'second', p_priority => 3)")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(id1, id2, "a pending job is replaced, not duplicated");
    // The same limits as the CLI and the library (NewJob::validate).
    let long_id = "9".repeat(513);
    let big = format!("{{\"k\": \"{}\"}}", "x".repeat(70_000));
    for (sql, want) in [
        ("SELECT embq.enqueue('receipt', '43', '  ')", "text must not be empty"),
        ("SELECT embq.enqueue('receipt', '43', E'\\t\\n ')", "text must not be empty"),
        ("SELECT embq.enqueue(E' \\n', '43', 'x')", "source_type must not be empty"),
        ("SELECT embq.enqueue('receipt', NULL, 'x')", "source_id must not be empty"),
        (&format!("SELECT embq.enqueue('receipt', '{long_id}', 'x')"), "source_id must be at most 512 bytes"),
        ("SELECT embq.enqueue('receipt', '43', 'x', p_priority => NULL)", "priority must not be NULL"),
        (&format!("SELECT embq.enqueue('receipt', '43', 'x', p_metadata => '{big}')"), "bytes of JSON; at most 65536"),
    ] {
        let err = sqlx::query(sql).execute(&mut c).await.unwrap_err();
        assert!(err.to_string().contains(want), "{sql}: {err}");
    }
    let long = NewJob { source_id: long_id.clone(), ..job("43", "x", 0) };
    assert_eq!(long.validate().unwrap_err(), "source_id must be at most 512 bytes", "the library says the same");
    let l = lease("w");
    let j = q.claim(5, &l, LEASE, MODEL).await.unwrap();
    assert_eq!((j.len(), j[0].text.as_str(), j[0].priority), (1, "second", 3));
    // The SQL function and the CLI hash the text the same way: unchanged text is recognised.
    q.finish(&l, MODEL, &[(j[0].id, Outcome::Done(vector(1.0)))]).await.unwrap();
    sqlx::query("SELECT embq.enqueue('receipt', '42', 'second')").execute(&mut c).await.unwrap();
    assert!(q.claim(5, &l, LEASE, MODEL).await.unwrap()[0].unchanged);
}

#[tokio::test]
async fn documented_trigger_enqueues_inserted_and_changed_text() {
    use sqlx::Connection;
    let url = support::pg::fresh_pg_db().await;
    let q = support::store_with(&url, Clock::System, &[("EMBEDDING_DIMENSIONS", DIMS)]).await;
    q.migrate().await.unwrap();
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    // The trigger from the README, verbatim in substance.
    sqlx::raw_sql(
        "CREATE TABLE public.receipts (id bigint PRIMARY KEY, full_text text, note text);
         CREATE OR REPLACE FUNCTION public.receipts_embed() RETURNS trigger
         LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
         BEGIN
           IF NEW.full_text IS NOT NULL AND btrim(NEW.full_text) <> ''
              AND (TG_OP = 'INSERT' OR NEW.full_text IS DISTINCT FROM OLD.full_text) THEN
             PERFORM embq.enqueue('receipt', NEW.id::text, NEW.full_text, 'full_text');
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER receipts_embed AFTER INSERT OR UPDATE OF full_text ON public.receipts
           FOR EACH ROW EXECUTE FUNCTION public.receipts_embed();
         INSERT INTO public.receipts VALUES (1, 'coffee 4.50', NULL), (2, NULL, NULL);
         UPDATE public.receipts SET note = 'unrelated' WHERE id = 1;
         UPDATE public.receipts SET full_text = 'coffee 5.00' WHERE id = 1;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let l = lease("w");
    let j = q.claim(10, &l, LEASE, MODEL).await.unwrap();
    assert_eq!(j.len(), 1, "one pending job for receipt 1, none for the empty row");
    assert_eq!(
        (j[0].source_id.as_str(), j[0].content_type.as_str(), j[0].text.as_str()),
        ("1", "full_text", "coffee 5.00")
    );
}
