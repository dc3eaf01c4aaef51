//! The batch lane end to end, in process: real PostgreSQL and SQLite, a real worker, the OpenAI
//! Batch API mocked on loopback (`support/mock_batch_api.rs`, which validates every request).
//! Crashes at each step are in `batch_lane_crash.rs`.

mod support;

use std::time::Duration;

use embq::config::Config;
use embq::queue::{GatherLimits, Lane, NewJob};
use sqlx::{Connection, PgConnection};
use support::mock_batch_api::{Ending, MockBatchApi, KEY};

const DIMS: usize = 8;
const WAIT: Duration = Duration::from_secs(60);

fn lane_config(url: &str, mock: &MockBatchApi, extra: &[(&str, &str)]) -> Config {
    let mut pairs: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", url),
        ("EMBEDDING_PROVIDER", "openai"),
        ("OPENAI_API_KEY", KEY),
        ("OPENAI_BASE_URL", mock.url.as_str()),
        ("EMBEDDING_DIMENSIONS", "8"),
        ("PROVIDER_TIMEOUT", "5s"),
        ("MAX_REQUESTS_PER_MINUTE", "60000"),
        ("MAX_TOKENS_PER_MINUTE", "10000000"),
        ("QUEUE_POLL_INTERVAL", "50ms"),
        ("HEARTBEAT_INTERVAL", "1s"),
        ("RETRY_BASE_DELAY", "10ms"),
        ("RETRY_MAX_DELAY", "20ms"),
        ("BATCH_LANE", "on"),
        ("BATCH_LANE_POLL_INTERVAL", "50ms"),
    ];
    pairs.extend_from_slice(extra);
    support::config(&pairs)
}

fn lane_jobs(n: usize, prefix: &str, lane: Lane) -> Vec<NewJob> {
    support::jobs_named(n, prefix).into_iter().map(|j| NewJob { lane, ..j }).collect()
}

/// (done, dead, other) jobs and (embeddings, distinct job ids among them).
async fn tally(url: &str) -> ((i64, i64, i64), (i64, i64)) {
    let r: Vec<(i64, i64, i64, i64, i64)> = support::rows(
        url,
        "SELECT (SELECT count(*) FROM embq.jobs WHERE state = 'done'),
                (SELECT count(*) FROM embq.jobs WHERE state = 'dead'),
                (SELECT count(*) FROM embq.jobs WHERE state NOT IN ('done', 'dead')),
                (SELECT count(*) FROM embq.embeddings),
                (SELECT count(DISTINCT job_id) FROM embq.embeddings)",
    )
    .await;
    let (done, dead, other, e, distinct) = r[0];
    ((done, dead, other), (e, distinct))
}

/// Provider batches by state, as `state count` pairs in state order.
async fn batch_states(url: &str) -> Vec<(String, i64)> {
    support::rows(url, "SELECT state, count(*) FROM embq.provider_batches GROUP BY 1 ORDER BY 1").await
}

/// Runs a scenario against PostgreSQL and against SQLite.
macro_rules! both_stores {
    ($scenario:ident: $pg:ident, $sqlite:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            $scenario(support::fresh_db(false).await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $scenario(support::fresh_db(true).await).await;
        }
    };
}

both_stores!(backfill: a_backfill_on_the_batch_lane_is_embedded_once_per_job_and_billed_at_batch_price_on_postgres, a_backfill_on_the_batch_lane_is_embedded_once_per_job_and_billed_at_batch_price_on_sqlite);

async fn backfill(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Complete));
    // 50 requests per file: 120 backfill jobs make three batches.
    let cfg = lane_config(&url, &mock, &[("BATCH_LANE_MAX_REQUESTS", "50")]);
    let mut jobs = lane_jobs(120, "backfill-", Lane::Batch);
    jobs.extend(lane_jobs(10, "live-", Lane::Online));
    let q = support::queue_with(&cfg, &jobs).await;
    let h = support::harness(&cfg, q.clone(), None);
    let metrics = h.metrics.clone();
    support::drain(h, WAIT).await;

    assert_eq!(mock.violations(), Vec::<String>::new(), "every request valid");
    assert_eq!(tally(&url).await, ((130, 0, 0), (130, 130)), "one embedding per job");
    assert_eq!(mock.batch_sizes(), vec![50, 50, 20], "split at BATCH_LANE_MAX_REQUESTS");
    assert_eq!(mock.uploads(), 3);
    let online = mock.online_texts();
    assert_eq!(online.len(), 10, "only the online jobs went online: {online:?}");
    assert!(online.iter().all(|t| t.contains("live-")), "{online:?}");
    assert_eq!(batch_states(&url).await, vec![("collected".to_string(), 3)]);
    let billed = support::metric(&metrics, "embedding_batch_lane_billed_tokens_total");
    assert!(billed > 0.0 && billed as u64 == mock.billed(), "billed {billed} vs the mock's {}", mock.billed());
    assert_eq!(support::metric(&metrics, "embedding_batch_lane_batches_submitted_total"), 3.0);
    assert_eq!(support::metric(&metrics, "embedding_batch_lane_batches_ended_total{state=\"collected\"}"), 3.0);
    let stats = q.lane_stats().await.expect("lane stats");
    assert_eq!(stats.billed_tokens, mock.billed());
    assert_eq!((stats.in_batches, stats.enqueued_tokens), (0, 0));

    // Enqueued again unchanged: the lane completes them without sending anything.
    q.enqueue(&lane_jobs(120, "backfill-", Lane::Batch), &embq::queue::no_progress).await.expect("enqueue");
    support::drain(support::harness(&cfg, q.clone(), None), WAIT).await;
    assert_eq!(mock.uploads(), 3, "unchanged texts are never sent");
}

both_stores!(per_line_errors: per_line_errors_retry_on_the_job_s_schedule_then_dead_letter_on_postgres, per_line_errors_retry_on_the_job_s_schedule_then_dead_letter_on_sqlite);

async fn per_line_errors(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Complete));
    mock.fail_lines(|text| text.ends_with(" 3").then_some(500));
    let cfg = lane_config(&url, &mock, &[("MAX_ATTEMPTS", "3")]);
    let q = support::queue_with(&cfg, &lane_jobs(6, "doc-", Lane::Batch)).await;
    support::drain(support::harness(&cfg, q.clone(), None), WAIT).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    assert_eq!(tally(&url).await, ((5, 1, 0), (5, 5)));
    assert_eq!(mock.created(), 3, "the failing line went in three batches: its three attempts");
    let dead = q.dead_jobs(10).await.expect("dead jobs");
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].source_id.as_str(), dead[0].attempts), ("doc-3", 3));
    let why = dead[0].last_error.clone().unwrap_or_default();
    assert!(why.contains("failed after 3 attempts") && why.contains("HTTP 500"), "{why}");
}

both_stores!(expiry: an_expired_batch_stores_what_finished_and_returns_the_rest_unspent_on_postgres, an_expired_batch_stores_what_finished_and_returns_the_rest_unspent_on_sqlite);

async fn expiry(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    let cfg = lane_config(&url, &mock, &[("MAX_ATTEMPTS", "1")]);
    let q = support::queue_with(&cfg, &lane_jobs(10, "doc-", Lane::Batch)).await;
    let h = support::harness(&cfg, q.clone(), None);
    let health = h.health.clone();
    let worker = tokio::spawn(h.worker.run());
    support::wait_until(WAIT, "the batch is submitted", || async { mock.running() == 1 }).await;
    mock.end_all(Ending::Expire(4));
    support::wait_until(WAIT, "the expired batch is collected", || async {
        batch_states(&url).await.contains(&("expired".to_string(), 1))
    })
    .await;
    // Four stored; six back in the queue with their attempt refunded (MAX_ATTEMPTS=1 would
    // otherwise dead-letter them), then sent again in a second batch.
    assert_eq!(tally(&url).await.1 .0, 4);
    support::wait_until(WAIT, "a second batch carries the rest", || async { mock.running() == 1 }).await;
    assert_eq!(mock.batch_sizes(), vec![10, 6]);
    mock.end_all(Ending::Complete);
    support::wait_until(WAIT, "every job done", || async { tally(&url).await.0 == (10, 0, 0) }).await;
    health.shutdown.cancel();
    worker.await.expect("worker task").expect("worker ran");
    assert_eq!(tally(&url).await, ((10, 0, 0), (10, 10)));
    let attempts: Vec<(i64,)> = support::rows(&url, "SELECT CAST(attempts AS bigint) FROM embq.jobs ORDER BY id").await;
    assert!(attempts.iter().all(|a| a.0 == 1), "the expiry spent no attempt: {attempts:?}");
    assert_eq!(mock.violations(), Vec::<String>::new());
}

both_stores!(newest_text: a_newer_text_enqueued_while_its_older_job_sits_in_a_batch_keeps_its_vector_on_postgres, a_newer_text_enqueued_while_its_older_job_sits_in_a_batch_keeps_its_vector_on_sqlite);

async fn newest_text(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    let cfg = lane_config(&url, &mock, &[]);
    let old = NewJob { text: "the old text".into(), ..lane_jobs(1, "k", Lane::Batch).remove(0) };
    let q = support::queue_with(&cfg, std::slice::from_ref(&old)).await;
    let h = support::harness(&cfg, q.clone(), None);
    let health = h.health.clone();
    let worker = tokio::spawn(h.worker.run());
    support::wait_until(WAIT, "the old text is in a batch", || async { mock.running() == 1 }).await;
    // The record changes: its new text goes online and is stored first.
    let new = NewJob { text: "the new text".into(), lane: Lane::Online, ..old.clone() };
    q.enqueue(&[new], &embq::queue::no_progress).await.expect("enqueue");
    let sha_new = embq::queue::text_sha256("the new text");
    let stored = || async {
        support::rows::<(Vec<u8>, i64)>(&url, "SELECT text_sha256, job_id FROM embq.embeddings").await.pop()
    };
    support::wait_until(WAIT, "the new text is embedded online", || async {
        stored().await.is_some_and(|(sha, _)| sha == sha_new)
    })
    .await;
    // Now the batch with the old text completes: its result must not replace the new vector.
    mock.end_all(Ending::Complete);
    support::wait_until(WAIT, "the batch is collected", || async {
        batch_states(&url).await == vec![("collected".to_string(), 1)]
    })
    .await;
    health.shutdown.cancel();
    worker.await.expect("worker task").expect("worker ran");
    let (sha, job_id) = stored().await.expect("one embedding");
    assert_eq!(sha, sha_new, "the newest text's vector stays");
    let newest: Vec<(i64,)> = support::rows(&url, "SELECT max(id) FROM embq.jobs").await;
    assert_eq!(job_id, newest[0].0);
    assert_eq!(mock.online_texts(), vec!["the new text".to_string()]);
}

both_stores!(lane_switch: the_lane_off_leaves_batch_jobs_to_online_workers_and_on_keeps_them_out_of_the_online_claim_on_postgres, the_lane_off_leaves_batch_jobs_to_online_workers_and_on_keeps_them_out_of_the_online_claim_on_sqlite);

async fn lane_switch(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    let on = lane_config(&url, &mock, &[]);
    let q = support::queue_with(&on, &lane_jobs(5, "b", Lane::Batch)).await;
    let lease = embq::queue::Lease { owner: "w".into(), token: "t".into() };
    let claimed = q.claim(10, &lease, Duration::from_secs(30), "text-embedding-3-small").await.expect("claim");
    assert!(claimed.is_empty(), "the lane on: the online claim takes no batch-lane job");
    // With the lane off nothing is stranded: the jobs are embedded online.
    let off = lane_config(&url, &mock, &[("BATCH_LANE", "off")]);
    let q_off = embq::queue::connect(&off.store()).await.expect("store");
    support::drain(support::harness(&off, q_off, None), WAIT).await;
    assert_eq!(tally(&url).await, ((5, 0, 0), (5, 5)));
    assert_eq!(mock.online_texts().len(), 5);
    assert_eq!(mock.created(), 0);
}

both_stores!(backlog: a_low_priority_backlog_over_the_threshold_goes_by_batch_on_postgres, a_low_priority_backlog_over_the_threshold_goes_by_batch_on_sqlite);

async fn backlog(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Complete));
    let cfg = lane_config(&url, &mock, &[("BATCH_LANE_BACKLOG", "20"), ("BATCH_LANE_MAX_PRIORITY", "0")]);
    let backlog: Vec<NewJob> =
        lane_jobs(30, "old-", Lane::Online).into_iter().map(|j| NewJob { priority: -1, ..j }).collect();
    let q = support::queue_with(&cfg, &backlog).await;
    // Moved before any worker runs: the threshold is crossed.
    assert_eq!(q.move_backlog(20, 0).await.expect("move"), 30);
    assert_eq!(q.move_backlog(20, 0).await.expect("move again"), 0);
    q.enqueue(&lane_jobs(3, "urgent-", Lane::Online), &embq::queue::no_progress).await.expect("enqueue");
    support::drain(support::harness(&cfg, q.clone(), None), WAIT).await;
    assert_eq!(tally(&url).await, ((33, 0, 0), (33, 33)));
    assert_eq!(mock.online_texts().len(), 3, "priority 0 stays online");
    assert_eq!(mock.batch_sizes(), vec![30]);
}

both_stores!(enqueued_token_limit: open_batches_never_hold_more_than_the_enqueued_token_limit_on_postgres, open_batches_never_hold_more_than_the_enqueued_token_limit_on_sqlite);

async fn enqueued_token_limit(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    // Each text is 6-7 tokens: 40 tokens hold about six jobs, so 30 jobs need several batches,
    // one open at a time.
    let cfg = lane_config(&url, &mock, &[("BATCH_LANE_MAX_ENQUEUED_TOKENS", "40")]);
    let q = support::queue_with(&cfg, &lane_jobs(30, "doc-", Lane::Batch)).await;
    let h = support::harness(&cfg, q.clone(), None);
    let health = h.health.clone();
    let worker = tokio::spawn(h.worker.run());
    loop {
        support::wait_until(WAIT, "a batch is open or all are done", || async {
            mock.running() > 0 || tally(&url).await.0 == (30, 0, 0)
        })
        .await;
        if mock.running() == 0 {
            break;
        }
        mock.end_all(Ending::Complete);
    }
    health.shutdown.cancel();
    worker.await.expect("worker task").expect("worker ran");
    assert_eq!(tally(&url).await, ((30, 0, 0), (30, 30)));
    assert_eq!(mock.max_running(), 1, "a second batch waits until the first leaves the provider's queue");
    assert!(mock.created() >= 5, "{:?}", mock.batch_sizes());
    let held: Vec<(i64,)> = support::rows(&url, "SELECT estimated_tokens FROM embq.provider_batches").await;
    assert!(held.iter().all(|t| t.0 <= 40), "{held:?}");
    assert_eq!(mock.violations(), Vec::<String>::new());
}

both_stores!(gather_limits: a_gathering_stops_at_the_byte_limit_and_leaves_the_rest_ready_on_postgres, a_gathering_stops_at_the_byte_limit_and_leaves_the_rest_ready_on_sqlite);

async fn gather_limits(db: support::Db) {
    let mock = MockBatchApi::start(DIMS).await;
    let cfg = lane_config(&db.url, &mock, &[]);
    let q = support::queue_with(&cfg, &lane_jobs(10, "doc-", Lane::Batch)).await;
    // Every line costs 100 bytes and 1 token here: 350 bytes take three.
    let size = |_: &embq::queue::ClaimedJob| (100u64, 1u64);
    let limits = |max_bytes, max_tokens| GatherLimits {
        owner: "w",
        lease: Duration::from_secs(30),
        max_requests: 50_000,
        max_bytes,
        max_tokens,
    };
    let g = q.gather_batch("s-1", "m", limits(350, 1_000), &size).await.expect("gather");
    assert_eq!(g.jobs.len(), 3);
    let b = g.batch.expect("a batch");
    assert_eq!((b.requests, b.estimated_tokens, b.state), (3, 3, embq::queue::BatchState::Uploading));
    assert_eq!(q.batch_jobs(&b).await.expect("jobs").len(), 3);
    // The enqueued-token limit counts the open batch: 5 leaves room for two more.
    let g = q.gather_batch("s-2", "m", limits(u64::MAX, 5), &size).await.expect("gather");
    assert_eq!(g.jobs.len(), 2);
    assert_eq!(q.enqueued_tokens("m").await.expect("tokens"), 5);
    let g = q.gather_batch("s-3", "m", limits(u64::MAX, 5), &size).await.expect("gather");
    assert!(g.batch.is_none() && g.jobs.is_empty(), "no room left");
    // Gatherings at once never overshoot the limit together.
    let (a, b) = tokio::join!(
        q.gather_batch("s-4", "m", limits(u64::MAX, 7), &size),
        q.gather_batch("s-5", "m", limits(u64::MAX, 7), &size)
    );
    assert_eq!(a.expect("gather").jobs.len() + b.expect("gather").jobs.len(), 2);
    assert_eq!(q.enqueued_tokens("m").await.expect("tokens"), 7);
    // What was left is ready with no attempt spent; the batches are leased to their gatherer.
    let left: Vec<(i64, i64)> = support::rows(
        &db.url,
        "SELECT count(*), COALESCE(sum(attempts), 0) FROM embq.jobs WHERE state = 'ready' AND lane = 'batch'",
    )
    .await;
    assert_eq!(left, vec![(3, 0)]);
    assert!(q.lease_batch("other", Duration::from_secs(30)).await.expect("lease").is_none());
    // Jobs in a batch are never swept as expired leases.
    assert_eq!(q.rescue_expired(5).await.expect("sweep"), Default::default());
}

both_stores!(two_workers: two_workers_never_submit_or_collect_the_same_batch_on_postgres, two_workers_never_submit_or_collect_the_same_batch_on_sqlite);

async fn two_workers(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Complete));
    let cfg = lane_config(&url, &mock, &[("BATCH_LANE_MAX_REQUESTS", "25")]);
    let q = support::queue_with(&cfg, &lane_jobs(200, "doc-", Lane::Batch)).await;
    let a = support::drain(support::harness(&cfg, q.clone(), None), WAIT);
    let b = support::drain(support::harness(&cfg, q.clone(), None), WAIT);
    tokio::join!(a, b);
    assert_eq!(tally(&url).await, ((200, 0, 0), (200, 200)));
    assert_eq!(mock.batch_sizes().iter().sum::<usize>(), 200, "each job in exactly one batch");
    assert_eq!((mock.created(), mock.uploads()), (8, 8));
    assert_eq!(batch_states(&url).await, vec![("collected".to_string(), 8)]);
    assert_eq!(mock.violations(), Vec::<String>::new());
}

both_stores!(lost_answers: an_upload_or_create_whose_answer_was_lost_is_found_not_repeated_on_postgres, an_upload_or_create_whose_answer_was_lost_is_found_not_repeated_on_sqlite);

async fn lost_answers(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Complete));
    mock.lose_next_upload_answer();
    mock.lose_next_create_answer();
    let cfg = lane_config(&url, &mock, &[]);
    let q = support::queue_with(&cfg, &lane_jobs(20, "doc-", Lane::Batch)).await;
    support::drain(support::harness(&cfg, q.clone(), None), WAIT).await;
    assert_eq!(tally(&url).await, ((20, 0, 0), (20, 20)));
    assert_eq!((mock.uploads(), mock.created()), (1, 1), "found by name and by submission_id, not repeated");
    assert_eq!(batch_states(&url).await, vec![("collected".to_string(), 1)]);
    assert_eq!(mock.violations(), Vec::<String>::new());
}

both_stores!(failed_batches: a_failed_batch_spends_an_attempt_so_a_poisonous_file_ends_dead_on_postgres, a_failed_batch_spends_an_attempt_so_a_poisonous_file_ends_dead_on_sqlite);

async fn failed_batches(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Fail));
    let cfg = lane_config(&url, &mock, &[("MAX_ATTEMPTS", "2")]);
    let q = support::queue_with(&cfg, &lane_jobs(4, "doc-", Lane::Batch)).await;
    support::drain(support::harness(&cfg, q.clone(), None), WAIT).await;
    assert_eq!(tally(&url).await, ((0, 4, 0), (0, 0)));
    // Retries come due with jitter, so the second attempts may go in one batch or several.
    let failed = batch_states(&url).await;
    assert!(failed.len() == 1 && failed[0].0 == "failed" && (2..=5).contains(&failed[0].1), "{failed:?}");
    let dead = q.dead_jobs(10).await.expect("dead jobs");
    assert!(dead.iter().all(|d| d.attempts == 2), "each job spent its two attempts: {dead:?}");
    let why = dead[0].last_error.clone().unwrap_or_default();
    assert!(why.contains("ended (failed: invalid_request: mock validation failure) without a result"), "{why}");
}

both_stores!(over_limit: a_batch_refused_for_the_enqueued_token_limit_returns_its_jobs_unspent_on_postgres, a_batch_refused_for_the_enqueued_token_limit_returns_its_jobs_unspent_on_sqlite);

async fn over_limit(db: support::Db) {
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::OverLimit));
    let cfg = lane_config(&url, &mock, &[("MAX_ATTEMPTS", "1")]);
    let q = support::queue_with(&cfg, &lane_jobs(5, "doc-", Lane::Batch)).await;
    let h = support::harness(&cfg, q.clone(), None);
    let health = h.health.clone();
    let worker = tokio::spawn(h.worker.run());
    support::wait_until(WAIT, "the refused batch is collected", || async {
        batch_states(&url).await.contains(&("failed".to_string(), 1))
    })
    .await;
    // Its jobs wait for the provider's queue to drain, their attempt refunded (MAX_ATTEMPTS=1).
    mock.auto_end(Some(Ending::Complete));
    support::wait_until(WAIT, "a later batch is collected", || async {
        batch_states(&url).await.contains(&("collected".to_string(), 1))
    })
    .await;
    health.shutdown.cancel();
    worker.await.expect("worker task").expect("worker ran");
    assert_eq!(tally(&url).await, ((5, 0, 0), (5, 5)));
    let why: Vec<(Option<String>,)> =
        support::rows(&url, "SELECT last_error FROM embq.provider_batches WHERE state = 'failed'").await;
    assert!(why.iter().all(|w| w.0.as_deref().is_some_and(|e| e.starts_with("token_limit_exceeded"))), "{why:?}");
    assert_eq!(batch_states(&url).await, vec![("collected".to_string(), 1), ("failed".to_string(), why.len() as i64)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_over_fifty_thousand_jobs_is_split_at_openai_s_file_cap() {
    let url = support::pg::fresh_pg_db().await;
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Complete));
    // The defaults: 50,000 requests per file, 3,000,000 enqueued tokens (these texts hold ~350k).
    let cfg = lane_config(&url, &mock, &[]);
    let q = support::queue_with(&cfg, &lane_jobs(50_001, "d", Lane::Batch)).await;
    support::drain(support::harness(&cfg, q.clone(), None), Duration::from_secs(300)).await;
    assert_eq!(mock.violations(), Vec::<String>::new(), "every file within the API's limits");
    assert_eq!(mock.batch_sizes(), vec![50_000, 1]);
    assert_eq!(tally(&url).await, ((50_001, 0, 0), (50_001, 50_001)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_works_through_a_transaction_pooler() {
    let direct = support::pg::fresh_pg_db().await;
    let db = url::Url::parse(&direct).expect("URL").path().trim_start_matches('/').to_string();
    let pooled = support::pg::with_db(&support::pg::pgbouncer_admin_url(), &db);
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Complete));
    support::queue_with(&lane_config(&direct, &mock, &[]), &[]).await;
    let cfg = lane_config(
        &pooled,
        &mock,
        &[("DATABASE_POOL_MODE", "transaction"), ("BATCH_LANE_MAX_REQUESTS", "40"), ("BATCH_LANE_BACKLOG", "5")],
    );
    let q = embq::queue::connect(&cfg.store()).await.expect("store through PgBouncer");
    q.enqueue(&lane_jobs(100, "doc-", Lane::Batch), &embq::queue::no_progress).await.expect("enqueue");
    support::drain(support::harness(&cfg, q.clone(), None), WAIT).await;
    assert_eq!(tally(&direct).await, ((100, 0, 0), (100, 100)));
    assert_eq!(mock.batch_sizes(), vec![40, 40, 20]);
    assert_eq!(q.lane_stats().await.expect("stats").batches_by_state, vec![("collected".to_string(), 3)]);
    assert_eq!(mock.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_stores_what_finished_and_returns_the_rest_unspent() {
    let db = support::fresh_db(false).await;
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Cancel(2)));
    let cfg = lane_config(&url, &mock, &[("MAX_ATTEMPTS", "1")]);
    let q = support::queue_with(&cfg, &lane_jobs(5, "doc-", Lane::Batch)).await;
    let h = support::harness(&cfg, q.clone(), None);
    let health = h.health.clone();
    let worker = tokio::spawn(h.worker.run());
    support::wait_until(WAIT, "the cancelled batch is collected", || async {
        batch_states(&url).await.contains(&("cancelled".to_string(), 1))
    })
    .await;
    mock.auto_end(Some(Ending::Complete));
    support::wait_until(WAIT, "the rest is collected", || async {
        batch_states(&url).await.contains(&("collected".to_string(), 1))
    })
    .await;
    health.shutdown.cancel();
    worker.await.expect("worker task").expect("worker ran");
    assert_eq!(tally(&url).await, ((5, 0, 0), (5, 5)));
    assert_eq!(mock.batch_sizes(), vec![5, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_fails_the_batch_and_spends_an_attempt() {
    let db = support::fresh_db(true).await;
    let url = db.url.clone();
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Complete));
    mock.refuse_next_upload();
    let cfg = lane_config(&url, &mock, &[("MAX_ATTEMPTS", "2")]);
    let q = support::queue_with(&cfg, &lane_jobs(3, "doc-", Lane::Batch)).await;
    support::drain(support::harness(&cfg, q.clone(), None), WAIT).await;
    assert_eq!(tally(&url).await, ((3, 0, 0), (3, 3)), "the second attempt went through");
    assert_eq!(batch_states(&url).await, vec![("collected".to_string(), 1), ("failed".to_string(), 1)]);
    let attempts: Vec<(i64,)> = support::rows(&url, "SELECT CAST(attempts AS bigint) FROM embq.jobs").await;
    assert!(attempts.iter().all(|a| a.0 == 2), "{attempts:?}");
    let why: Vec<(Option<String>,)> =
        support::rows(&url, "SELECT last_error FROM embq.provider_batches WHERE state = 'failed'").await;
    assert!(why[0].0.as_deref().is_some_and(|e| e.contains("HTTP 400")), "{why:?}");
}

#[tokio::test]
async fn the_sql_function_takes_a_lane_and_old_calls_still_work() {
    let url = support::pg::fresh_pg_db().await;
    let mock = MockBatchApi::start(DIMS).await;
    let cfg = lane_config(&url, &mock, &[]);
    let _q = support::queue_with(&cfg, &[]).await;
    let mut c = PgConnection::connect(&url).await.expect("connect");
    sqlx::query("SELECT embq.enqueue('r', '1', 'text one')").execute(&mut c).await.expect("old call");
    sqlx::query("SELECT embq.enqueue('r', '2', 'text two', p_lane => 'batch')").execute(&mut c).await.expect("lane");
    let lanes: Vec<String> =
        sqlx::query_scalar("SELECT lane FROM embq.jobs ORDER BY id").fetch_all(&mut c).await.expect("lanes");
    assert_eq!(lanes, vec!["online", "batch"]);
    let e = sqlx::query("SELECT embq.enqueue('r', '3', 'x', p_lane => 'slow')").execute(&mut c).await.unwrap_err();
    assert!(e.to_string().contains("lane must be online or batch"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_s_files_are_bounded_by_the_worker_s_memory_budget() {
    // `embq worker --drain` in a process of its own, so its memory guard reads its own RSS, not
    // this test binary's. MEMORY_LIMIT_MB=256 (the guard at 230 MiB is far above what this
    // worker needs): jobs in flight may hold 64 MiB, and a batch is in memory twice while its
    // file is written, so a file holds at most 32 MiB: ~1,100 of these 30 KB texts.
    let db = support::fresh_db(true).await;
    let mock = MockBatchApi::start(DIMS).await;
    mock.auto_end(Some(Ending::Complete));
    let cfg = lane_config(&db.url, &mock, &[("BATCH_LANE_MAX_ENQUEUED_TOKENS", "100000000")]);
    let jobs: Vec<NewJob> = support::jobs(2_400, |i| format!("{i} {}", "word ".repeat(6_000)))
        .into_iter()
        .map(|j| NewJob { lane: Lane::Batch, ..j })
        .collect();
    support::queue_with(&cfg, &jobs).await;
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("EMBEDDING_PROVIDER", "openai"),
        ("OPENAI_API_KEY", KEY),
        ("OPENAI_BASE_URL", mock.url.as_str()),
        ("EMBEDDING_DIMENSIONS", "8"),
        ("MAX_REQUESTS_PER_MINUTE", "60000"),
        ("MAX_TOKENS_PER_MINUTE", "10000000"),
        ("QUEUE_POLL_INTERVAL", "50ms"),
        ("BATCH_LANE", "on"),
        ("BATCH_LANE_POLL_INTERVAL", "50ms"),
        ("BATCH_LANE_MAX_ENQUEUED_TOKENS", "100000000"),
        ("MEMORY_LIMIT_MB", "256"),
        ("HEALTH_PORT", "0"),
        ("METRICS_PORT", "0"),
        ("RUST_LOG", "warn"),
    ];
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_embq"))
        .args(["worker", "--drain"])
        .envs(env)
        .kill_on_drop(true)
        .spawn()
        .expect("start embq worker");
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .expect("the worker drained the lane in time")
        .expect("worker status");
    assert!(status.success(), "{status}");
    assert_eq!(mock.violations(), Vec::<String>::new());
    let sizes = mock.batch_sizes();
    assert_eq!(sizes.iter().sum::<usize>(), 2_400, "{sizes:?}");
    assert!(sizes.len() >= 3 && sizes.iter().all(|&n| n <= 1_120), "files of at most 32 MiB: {sizes:?}");
    assert_eq!(tally(&db.url).await, ((2_400, 0, 0), (2_400, 2_400)));
}
