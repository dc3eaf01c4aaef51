//! Chaos runs, bounded in time: workers killed at random while draining, and PostgreSQL
//! stopped and restarted under load. Nothing may be lost, duplicated or dead-lettered.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_embq");

fn embq(url: &str, envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .env("HEARTBEAT_INTERVAL", "500ms")
        .env("QUEUE_POLL_INTERVAL", "200ms")
        .env("BATCH_SIZE", "50")
        .env("MAX_CONCURRENT_JOBS", "4")
        // A job may be in flight in several killed workers; that must never dead-letter it here.
        .env("MAX_ATTEMPTS", "50")
        .envs(envs.iter().copied())
        .stdout(Stdio::null());
    c
}

fn prepare(url: &str, n: usize) {
    prepare_as(url, n, "auto");
}

/// Migrates with `VECTOR_TYPE=vector_type` and enqueues `n` jobs.
fn prepare_as(url: &str, n: usize, vector_type: &str) {
    assert!(embq(url, &[("VECTOR_TYPE", vector_type)]).arg("migrate").status().unwrap().success());
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for i in 0..n {
        writeln!(f, r#"{{"source_type":"doc","source_id":"{i}","text":"chaos document {i}"}}"#).unwrap();
    }
    assert!(embq(url, &[]).arg("enqueue").arg(f.path()).status().unwrap().success());
}

fn spawn_worker(url: &str, health: u16) -> support::Reaper {
    support::Reaper(
        embq(url, &[("HEALTH_PORT", &health.to_string()), ("METRICS_PORT", "0")])
            .arg("worker")
            .spawn()
            .expect("spawn worker"),
    )
}

async fn done_count(url: &str) -> Option<i64> {
    let mut c = PgConnection::connect(url).await.ok()?;
    sqlx::query_scalar("SELECT count(*) FROM embq.jobs WHERE state = 'done'").fetch_one(&mut c).await.ok()
}

async fn assert_exactly_once(url: &str, n: i64) {
    let mut c = PgConnection::connect(url).await.unwrap();
    let (done, dead, other, embeddings, distinct): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM embq.jobs WHERE state = 'done'),
                (SELECT count(*) FROM embq.jobs WHERE state = 'dead'),
                (SELECT count(*) FROM embq.jobs WHERE state NOT IN ('done', 'dead')),
                (SELECT count(*) FROM embq.embeddings),
                (SELECT count(DISTINCT job_id) FROM embq.embeddings)",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!((done, dead, other), (n, 0, 0), "every job done exactly once, none dead or pending");
    assert_eq!((embeddings, distinct), (n, n), "one embedding per job, none duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_while_four_workers_drain_into_pgvector_lose_nothing() {
    // As on Supabase: pgvector in `extensions`, migrated and worked by the non-superuser owner.
    sigkill_chaos(&support::pg::fresh_supabase_db().await, "auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_while_four_workers_drain_into_real_arrays_lose_nothing() {
    sigkill_chaos(&support::pg::fresh_pg_db().await, "real[]").await;
}

async fn sigkill_chaos(url: &str, vector_type: &str) {
    let url = url.to_string();
    let n = 20_000;
    prepare_as(&url, n, vector_type);
    let mut workers: Vec<support::Reaper> = (0..4).map(|_| spawn_worker(&url, 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut kills = 0;
    let mut rng = rand::thread_rng();
    loop {
        let done = done_count(&url).await.unwrap_or(0);
        if done == n as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "chaos drain did not finish: {done}/{n} done after {kills} kills");
        // The chaos cadence: one SIGKILL every 200–500 ms for the first 25 kills.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..500))).await;
        if kills < 25 {
            let victim = rng.gen_range(0..workers.len());
            workers[victim].kill().expect("SIGKILL");
            workers[victim].wait().expect("reap");
            workers[victim] = spawn_worker(&url, 0);
            kills += 1;
        }
    }
    assert!(kills >= 5, "the run was long enough to kill workers ({kills})");
    drop(workers);
    assert_exactly_once(&url, n as i64).await;
    let mut c = PgConnection::connect(&url).await.unwrap();
    let rerun: i64 =
        sqlx::query_scalar("SELECT count(*) FROM embq.jobs WHERE attempts > 1").fetch_one(&mut c).await.unwrap();
    eprintln!("{kills} workers killed; {rerun} jobs were run again after their worker died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_loses_nothing_and_no_worker_exits() {
    let pg = support::pg::PrivatePg::start();
    let url = pg.url();
    let n = 20_000;
    prepare(&url, n);
    let ports: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
    let mut workers: Vec<support::Reaper> = ports.iter().map(|p| spawn_worker(&url, *p)).collect();
    support::wait_until(Duration::from_secs(60), "a quarter of the jobs done", || async {
        done_count(&url).await.unwrap_or(0) >= (n / 4) as i64
    })
    .await;
    pg.stop();
    let ready = format!("http://127.0.0.1:{}/ready", ports[0]);
    support::wait_until(Duration::from_secs(30), "readiness reports the outage", || async {
        matches!(reqwest::get(&ready).await, Ok(r) if r.status().as_u16() == 503)
    })
    .await;
    // The outage outlasts a lease (750 ms here): batches whose results could not be written
    // must neither be abandoned to this worker's heartbeats nor written twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for w in workers.iter_mut() {
        assert!(matches!(w.try_wait(), Ok(None)), "no worker exits during the outage");
    }
    pg.restart();
    support::wait_until(Duration::from_secs(120), "all jobs done after the restart", || async {
        done_count(&url).await.unwrap_or(0) == n as i64
    })
    .await;
    for w in workers.iter_mut() {
        assert!(matches!(w.try_wait(), Ok(None)), "no worker exited");
    }
    support::wait_until(Duration::from_secs(30), "readiness recovers", || async {
        matches!(reqwest::get(&ready).await, Ok(r) if r.status().as_u16() == 200)
    })
    .await;
    drop(workers);
    assert_exactly_once(&url, n as i64).await;
}
