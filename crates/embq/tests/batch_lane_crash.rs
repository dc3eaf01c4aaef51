//! The batch lane survives a worker crash at every step: the real `embq` binary, aborted by
//! `EMBQ_TEST_ABORT_AT` (no clean-up, as a SIGKILL) after recording a batch, after uploading
//! its file, after creating it, after downloading its results and halfway through storing
//! them; then a second worker finishes. No batch is created twice, no file uploaded twice, no
//! job lost, exactly one embedding per job. Then the same under random SIGKILLs of two workers.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::mock_batch_api::{Ending, MockBatchApi, KEY};

const BIN: &str = env!("CARGO_BIN_EXE_embq");
/// More than two store chunks (200 lines each), so `mid_store` leaves work for the next worker.
const JOBS: usize = 450;

fn embq(url: &str, mock: &str, envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env("EMBEDDING_PROVIDER", "openai")
        .env("OPENAI_API_KEY", KEY)
        .env("OPENAI_BASE_URL", mock)
        .env("EMBEDDING_DIMENSIONS", "8")
        .env("HEALTH_PORT", "0")
        .env("METRICS_PORT", "0")
        .env("QUEUE_POLL_INTERVAL", "50ms")
        // Leases (jobs' and batches') last 1.5 heartbeats: a dead worker's batch is free in 750 ms.
        .env("HEARTBEAT_INTERVAL", "500ms")
        .env("BATCH_LANE", "on")
        .env("BATCH_LANE_POLL_INTERVAL", "50ms")
        .envs(envs.iter().copied())
        .stdout(Stdio::null());
    c
}

/// Migrates and enqueues `JOBS` batch-lane jobs with the CLI (`embq enqueue --lane batch`).
fn prepare(url: &str, mock: &str) {
    prepare_n(url, mock, JOBS);
}

/// Migrates and enqueues `n` batch-lane jobs.
fn prepare_n(url: &str, mock: &str, n: usize) {
    assert!(embq(url, mock, &[]).arg("migrate").status().expect("migrate").success());
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    for i in 0..n {
        writeln!(f, r#"{{"source_type":"doc","source_id":"{i}","text":"backfill document {i}"}}"#).expect("write");
    }
    let ok = embq(url, mock, &[]).args(["enqueue", "--lane", "batch"]).arg(f.path()).status().expect("enqueue");
    assert!(ok.success());
}

/// Waits for the process to end by itself (here: its abort), failing after `timeout`.
async fn exits(child: &mut support::Reaper, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "the worker did not stop within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn crash_at_then_recover(step: &str, sqlite: bool) {
    let db = support::fresh_db(sqlite).await;
    let url = db.url.clone();
    let mock = MockBatchApi::start(8).await;
    mock.auto_end(Some(Ending::Complete));
    prepare(&url, &mock.url);
    let mut first = support::Reaper(
        embq(&url, &mock.url, &[("EMBQ_TEST_ABORT_AT", step)]).arg("worker").spawn().expect("spawn worker"),
    );
    let status = exits(&mut first, Duration::from_secs(60)).await;
    assert!(!status.success(), "{step}: the first worker aborted ({status:?})");
    let mut second = support::Reaper(embq(&url, &mock.url, &[]).args(["worker", "--drain"]).spawn().expect("spawn"));
    let status = exits(&mut second, Duration::from_secs(90)).await;
    assert!(status.success(), "{step}: the second worker drained ({status:?})");

    assert_eq!(mock.violations(), Vec::<String>::new(), "{step}: every request valid");
    assert_eq!(mock.created(), 1, "{step}: exactly one provider batch created");
    assert_eq!(mock.uploads(), 1, "{step}: the file uploaded once");
    assert!(mock.online_texts().is_empty(), "{step}: nothing went online");
    let tally: Vec<(i64, i64, i64, i64, i64)> = support::rows(
        &url,
        "SELECT (SELECT count(*) FROM embq.jobs WHERE state = 'done'),
                (SELECT count(*) FROM embq.jobs WHERE state <> 'done'),
                (SELECT count(*) FROM embq.embeddings),
                (SELECT count(DISTINCT job_id) FROM embq.embeddings),
                (SELECT count(*) FROM embq.jobs WHERE attempts <> 1)",
    )
    .await;
    let (done, other, embeddings, distinct, attempts_over_one) = tally[0];
    let n = JOBS as i64;
    assert_eq!((done, other), (n, 0), "{step}: every job done, none lost");
    assert_eq!((embeddings, distinct), (n, n), "{step}: exactly one embedding per job");
    assert_eq!(attempts_over_one, 0, "{step}: the crash spent no job attempt");
    let states: Vec<(String, i64)> =
        support::rows(&url, "SELECT state, count(*) FROM embq.provider_batches GROUP BY 1").await;
    assert_eq!(states, vec![("collected".to_string(), 1)], "{step}");

    // `embq queue stats` shows the lane.
    let out =
        embq(&url, &mock.url, &[]).args(["queue", "stats", "--json"]).stdout(Stdio::piped()).output().expect("stats");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    assert_eq!(v["lanes"]["batches_by_state"], serde_json::json!([["collected", 1]]), "{v}");
    assert_eq!(v["lanes"]["billed_tokens"].as_u64(), Some(mock.billed()), "{v}");
    let out = embq(&url, &mock.url, &[]).args(["queue", "stats"]).stdout(Stdio::piped()).output().expect("stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("provider batches: collected 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_recording_a_batch_loses_nothing_and_submits_once_on_postgres() {
    crash_at_then_recover("after_record", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_recording_a_batch_loses_nothing_and_submits_once_on_sqlite() {
    crash_at_then_recover("after_record", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_upload_reuses_the_uploaded_file_on_postgres() {
    crash_at_then_recover("after_upload", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_upload_reuses_the_uploaded_file_on_sqlite() {
    crash_at_then_recover("after_upload", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_creating_the_batch_finds_it_instead_of_creating_another_on_postgres() {
    crash_at_then_recover("after_create", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_creating_the_batch_finds_it_instead_of_creating_another_on_sqlite() {
    crash_at_then_recover("after_create", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_downloading_the_results_collects_them_again_on_postgres() {
    crash_at_then_recover("after_download", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_downloading_the_results_collects_them_again_on_sqlite() {
    crash_at_then_recover("after_download", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_halfway_through_storing_results_stores_the_rest_once_on_postgres() {
    crash_at_then_recover("mid_store", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_halfway_through_storing_results_stores_the_rest_once_on_sqlite() {
    crash_at_then_recover("mid_store", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_of_two_lane_workers_lose_nothing_and_submit_nothing_twice() {
    use rand::Rng;
    let url = support::pg::fresh_pg_db().await;
    let mock = MockBatchApi::start(8).await;
    mock.auto_end(Some(Ending::Complete));
    let n = 12_000;
    prepare_n(&url, &mock.url, n);
    let spawn = || {
        support::Reaper(
            embq(&url, &mock.url, &[("BATCH_LANE_MAX_REQUESTS", "200")]).arg("worker").spawn().expect("spawn worker"),
        )
    };
    let mut workers = vec![spawn(), spawn()];
    let mut rng = rand::thread_rng();
    let done =
        || async { support::rows::<(i64,)>(&url, "SELECT count(*) FROM embq.jobs WHERE state = 'done'").await[0].0 };
    // The chaos cadence, as in chaos.rs: a SIGKILL every 100–300 ms while work remains, 25 at most.
    let mut kills = 0;
    while kills < 25 && done().await < n as i64 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..300))).await;
        let victim = rng.gen_range(0..workers.len());
        workers[victim].kill().expect("SIGKILL");
        workers[victim].wait().expect("reap");
        workers[victim] = spawn();
        kills += 1;
    }
    drop(workers);
    eprintln!("{kills} kills; {} of {n} jobs done, {} batches created", done().await, mock.created());
    assert!(kills >= 5, "the run was long enough to kill workers ({kills})");
    let mut last = support::Reaper(embq(&url, &mock.url, &[]).args(["worker", "--drain"]).spawn().expect("spawn"));
    assert!(exits(&mut last, Duration::from_secs(120)).await.success(), "the last worker drained");

    let tally: Vec<(i64, i64, i64, i64, i64)> = support::rows(
        &url,
        "SELECT (SELECT count(*) FROM embq.jobs WHERE state = 'done'),
                (SELECT count(*) FROM embq.jobs WHERE state <> 'done'),
                (SELECT count(*) FROM embq.embeddings),
                (SELECT count(DISTINCT job_id) FROM embq.embeddings),
                (SELECT count(*) FROM embq.provider_batches WHERE state = 'collected')",
    )
    .await;
    let (done, other, embeddings, distinct, batches) = tally[0];
    let n = n as i64;
    assert_eq!((done, other, embeddings, distinct), (n, 0, n, n), "every job done once, none lost");
    assert_eq!(mock.violations(), Vec::<String>::new());
    assert_eq!(mock.created() as i64, batches, "one provider batch per recorded batch");
    assert_eq!(mock.uploads(), mock.created(), "one upload per batch");
    assert_eq!(mock.batch_sizes().iter().sum::<usize>() as i64, n, "each job in exactly one batch");
}
