//! What a worker holds in flight is bounded by bytes derived from `MEMORY_LIMIT_MB`, whatever
//! the batch settings, and a draining worker over its memory guard still ends.

mod support;

use std::time::Duration;

use embq::queue::{no_progress, Clock};

const MIB: u64 = 1 << 20;

/// Drains `jobs` hash jobs at 1,536 dimensions under `MEMORY_LIMIT_MB=128` with `settings`;
/// returns the in-flight budget's limit and peak.
async fn drain_at_1536_dims(jobs: usize, settings: &[(&str, &str)]) -> (u64, u64) {
    let db = support::fresh_db(true).await;
    let mut pairs = vec![("EMBEDDING_DIMENSIONS", "1536"), ("MEMORY_LIMIT_MB", "128"), ("QUEUE_POLL_INTERVAL", "10ms")];
    pairs.extend_from_slice(settings);
    let cfg = support::config_at(&db.url, &pairs);
    let q = support::queue_with(&cfg, &support::jobs(jobs, |i| format!("receipt {i}: coffee, oat milk"))).await;
    let h = support::harness(&cfg, q.clone(), None);
    let budget = h.worker.inflight_bytes();
    let summary = support::drain(h, Duration::from_secs(120)).await;
    assert_eq!(summary.processed, jobs as u64, "{settings:?}: every job done");
    assert_eq!(q.stats().await.unwrap().ready, 0);
    assert_eq!(budget.used(), 0, "every batch gave its bytes back");
    (budget.limit(), budget.peak())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_batch_setting_holds_more_than_the_memory_budget() {
    // Batch optimisation grows batches to the hash provider's cap of 4,096 inputs: three
    // slots of those held ~12,000 jobs (~600 MiB by the budget's own reckoning) at once.
    for settings in [
        &[("ENABLE_BATCH_OPTIMIZATION", "true")][..],
        &[("BATCH_SIZE", "1000"), ("MAX_CONCURRENT_JOBS", "32")][..],
        &[("BATCH_SIZE", "5")][..],
    ] {
        let (limit, peak) = drain_at_1536_dims(6_000, settings).await;
        assert_eq!(limit, 32 * MIB, "a quarter of MEMORY_LIMIT_MB");
        assert!(peak <= limit, "{settings:?}: held {} MiB, budget {} MiB", peak / MIB, limit / MIB);
        assert!(peak > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_batches_fill_the_budget_rather_than_stopping_at_the_count() {
    // The budget binds before BATCH_SIZE × MAX_CONCURRENT_JOBS does, and is used in full.
    let (limit, peak) = drain_at_1536_dims(6_000, &[("BATCH_SIZE", "1000"), ("MAX_CONCURRENT_JOBS", "32")]).await;
    assert!(peak * 10 >= limit * 9, "held at most {} of {} MiB", peak / MIB, limit / MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_over_its_memory_guard_exits_once_the_queue_is_empty() {
    // A limit any process is over (below MEMORY_LIMIT_MB's floor, set directly): the guard
    // blocks every claim from the first reading. The queue is empty, so drain must end.
    let db = support::fresh_db(true).await;
    let mut cfg = support::config_at(&db.url, &[("QUEUE_POLL_INTERVAL", "10ms")]);
    cfg.memory_limit_bytes = 64 * 1024;
    let q = support::store(&db.url, Clock::System).await;
    q.migrate().await.unwrap();
    let h = support::harness(&cfg, q.clone(), None);
    let health = h.health.clone();
    let summary = support::drain(h, Duration::from_secs(30)).await;
    assert_eq!(summary.processed, 0);
    assert!(health.memory_over(), "the guard was over the whole time");
    // With work left it waits instead: the guard still means "claim nothing".
    q.enqueue(&support::jobs(3, |i| format!("t{i}")), &no_progress).await.unwrap();
    let h = support::harness(&cfg, q.clone(), None);
    let waited = tokio::time::timeout(Duration::from_millis(1500), h.worker.run()).await;
    assert!(waited.is_err(), "a worker that may not claim does not report a queue with work as drained");
    assert_eq!(q.stats().await.unwrap().ready, 3, "nothing claimed over the guard");
}
