//! Writes the database refuses for good (a user trigger, a typed vector column of another
//! size) end in the dead-letter queue for exactly the jobs they concern, with the database's
//! message, instead of being retried forever; their batch-mates are stored, and a draining
//! worker exits.

mod support;

use std::sync::Arc;
use std::time::Duration;

use embq::config::Config;
use embq::queue::{DeadJob, NewJob, Queue};
use embq::worker::RunSummary;
use sqlx::Connection;
use support::pg::fresh_pg_db;

/// Long enough for a slow CI machine; a worker that loops on a refusal never gets there.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Nine good jobs and one keyed `bad`, so one batch of ten holds them all.
fn ten_jobs_one_bad() -> Vec<NewJob> {
    let mut jobs = support::jobs_named(9, "good-");
    let mut bad = jobs[0].clone();
    bad.source_id = "bad".into();
    bad.text = "the text of the bad row".into();
    jobs.push(bad);
    jobs
}

/// A hash-provider worker config on `url` that puts ten jobs in one batch.
fn worker_config(url: &str, max_attempts: &str) -> Config {
    support::config_at(
        url,
        &[
            ("EMBEDDING_PROVIDER", "hash"),
            ("EMBEDDING_DIMENSIONS", "8"),
            ("BATCH_SIZE", "10"),
            ("MAX_ATTEMPTS", max_attempts),
            ("RETRY_BASE_DELAY", "10ms"),
            ("RETRY_MAX_DELAY", "20ms"),
            ("QUEUE_POLL_INTERVAL", "50ms"),
        ],
    )
}

/// What a draining run left behind.
struct Run {
    summary: RunSummary,
    dead: Vec<DeadJob>,
    /// `/health`'s database check when the worker stopped.
    database_ok_at_exit: bool,
    /// Errors counted as outages. The worker counts one with every `set_db_ok(false)`, so zero
    /// means the database flag never went down during the run.
    database_errors: f64,
    rejected_errors: f64,
    retried: f64,
}

/// Runs a draining worker over `q` and records what it did.
async fn drain(cfg: &Config, q: Arc<dyn Queue>) -> Run {
    let h = support::harness(cfg, q.clone(), None);
    let (health, metrics) = (h.health.clone(), h.metrics.clone());
    let summary = support::drain(h, DRAIN_TIMEOUT).await;
    Run {
        summary,
        dead: q.dead_jobs(100).await.expect("dead jobs"),
        database_ok_at_exit: health.report().checks.database == "ok",
        database_errors: support::metric(&metrics, "embedding_worker_errors_total{kind=\"database\"}"),
        rejected_errors: support::metric(&metrics, "embedding_worker_errors_total{kind=\"rejected\"}"),
        retried: support::metric(&metrics, "embedding_jobs_retried_total"),
    }
}

/// A fresh, migrated PostgreSQL queue holding `jobs`, with a trigger refusing the `bad` row.
async fn pg_queue_refusing_bad(jobs: &[NewJob], max_attempts: &str) -> (Config, Arc<dyn Queue>) {
    let url = fresh_pg_db().await;
    let cfg = worker_config(&url, max_attempts);
    let q = support::queue_with(&cfg, jobs).await;
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query(
        "CREATE FUNCTION public.refuse_bad_rows() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.source_id = 'bad' THEN
                 RAISE EXCEPTION 'bad rows are not welcome here';
             END IF;
             RETURN NEW;
         END $$",
    )
    .execute(&mut c)
    .await
    .expect("create trigger function");
    sqlx::query(
        "CREATE TRIGGER refuse_bad_rows BEFORE INSERT OR UPDATE ON embq.embeddings
         FOR EACH ROW EXECUTE FUNCTION public.refuse_bad_rows()",
    )
    .execute(&mut c)
    .await
    .expect("create trigger");
    let _ = c.close().await;
    (cfg, q)
}

/// A fresh, migrated SQLite queue holding `jobs`, with a trigger refusing the `bad` row.
async fn sqlite_queue_refusing_bad(
    dir: &tempfile::TempDir,
    jobs: &[NewJob],
    max_attempts: &str,
) -> (Config, Arc<dyn Queue>) {
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let cfg = worker_config(&url, max_attempts);
    let q = support::queue_with(&cfg, jobs).await;
    let mut c = sqlx::SqliteConnection::connect(&url).await.expect("connect");
    sqlx::query(
        "CREATE TRIGGER refuse_bad_rows BEFORE INSERT ON embeddings WHEN NEW.source_id = 'bad'
         BEGIN SELECT RAISE(ABORT, 'bad rows are not welcome here'); END",
    )
    .execute(&mut c)
    .await
    .expect("create trigger");
    let _ = c.close().await;
    (cfg, q)
}

/// Only `bad` is dead, with the trigger's message; its nine batch-mates are stored.
async fn assert_only_the_bad_job_is_dead(cfg: &Config, q: &Arc<dyn Queue>, run: &Run, attempts: u32) {
    assert_eq!(run.summary.processed, 9, "{:?}", run.summary);
    assert_eq!(run.summary.dead, 1, "{:?}", run.summary);
    assert_eq!(run.summary.failed, u64::from(attempts), "each attempt counts as one failure: {:?}", run.summary);
    assert_eq!(run.retried, f64::from(attempts - 1));
    let [dead] = run.dead.as_slice() else { panic!("one dead job expected: {:?}", run.dead) };
    assert_eq!(dead.source_id, "bad");
    assert_eq!(dead.attempts, attempts);
    let error = dead.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("database refused the result"), "{error}");
    assert!(error.contains("bad rows are not welcome here"), "{error}");
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.done, stats.dead, stats.running, stats.ready), (9, 1, 0, 0), "{stats:?}");
    let stored = q.embeddings(&cfg.model, 100).await.expect("embeddings");
    assert_eq!(stored.len(), 9);
    assert!(stored.iter().all(|e| e.source_id != "bad" && e.vector.len() == 8), "{stored:?}");
    assert!(run.rejected_errors >= 1.0, "refusals are counted as rejected");
    assert_eq!(run.database_errors, 0.0, "a refusal is not an outage");
    assert!(run.database_ok_at_exit, "the database flag is down after a refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_trigger_refusal_dead_letters_only_its_job() {
    let (cfg, q) = pg_queue_refusing_bad(&ten_jobs_one_bad(), "1").await;
    let run = drain(&cfg, q.clone()).await;
    assert_only_the_bad_job_is_dead(&cfg, &q, &run, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_trigger_refusal_is_retried_on_the_schedule_then_dead_lettered() {
    let (cfg, q) = pg_queue_refusing_bad(&ten_jobs_one_bad(), "3").await;
    let run = drain(&cfg, q.clone()).await;
    assert_only_the_bad_job_is_dead(&cfg, &q, &run, 3).await;
    let error = run.dead[0].last_error.as_deref().unwrap_or_default();
    assert!(error.contains("failed after 3 attempts"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_trigger_refusal_dead_letters_only_its_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, q) = sqlite_queue_refusing_bad(&dir, &ten_jobs_one_bad(), "1").await;
    let run = drain(&cfg, q.clone()).await;
    assert_only_the_bad_job_is_dead(&cfg, &q, &run, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_trigger_refusal_is_retried_on_the_schedule_then_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, q) = sqlite_queue_refusing_bad(&dir, &ten_jobs_one_bad(), "3").await;
    let run = drain(&cfg, q.clone()).await;
    assert_only_the_bad_job_is_dead(&cfg, &q, &run, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_of_the_wrong_size_for_a_typed_pgvector_column_are_dead_lettered() {
    let url = fresh_pg_db().await;
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("CREATE EXTENSION IF NOT EXISTS vector").execute(&mut c).await.expect("pgvector");
    let cfg = worker_config(&url, "1");
    let q = support::queue_with(&cfg, &support::jobs_named(10, "doc-")).await;
    sqlx::query("ALTER TABLE embq.embeddings ALTER COLUMN embedding TYPE vector(16)")
        .execute(&mut c)
        .await
        .expect("type the vector column");
    let _ = c.close().await;

    let run = drain(&cfg, q.clone()).await;

    assert_eq!((run.summary.processed, run.summary.dead), (0, 10), "{:?}", run.summary);
    assert_eq!(run.dead.len(), 10);
    for d in &run.dead {
        let error = d.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("expected 16 dimensions, not 8"), "{error}");
    }
    assert!(q.embeddings(&cfg.model, 100).await.expect("embeddings").is_empty());
    assert_eq!(run.database_errors, 0.0, "a refusal is not an outage");
    assert!(run.database_ok_at_exit, "the database flag is down after a refusal");
}
