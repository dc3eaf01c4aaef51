//! End to end: real `embq` processes against real PostgreSQL (direct and through
//! PgBouncer in transaction mode), including crashes and graceful shutdown.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_embq");

fn embq(url: &str, envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("HEALTH_PORT", "0")
        .env("METRICS_PORT", "0")
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied());
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run embq");
    assert!(
        out.status.success(),
        "embq failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_jobs(n: usize) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    for i in 0..n {
        writeln!(f, r#"{{"source_type":"doc","source_id":"{i}","text":"document {i} about topic {}"}}"#, i % 97)
            .expect("write");
    }
    f
}

async fn counts(url: &str) -> (i64, i64, i64, i64) {
    let mut c = PgConnection::connect(url).await.expect("connect");
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM embq.jobs WHERE state = 'done'),
                (SELECT count(*) FROM embq.jobs WHERE state = 'dead'),
                (SELECT count(*) FROM embq.embeddings),
                (SELECT count(*) FROM embq.jobs WHERE state IN ('ready', 'running'))",
    )
    .fetch_one(&mut c)
    .await
    .expect("counts");
    row
}

/// The vector column's type, as the catalog has it.
async fn column_type(url: &str) -> String {
    let mut c = PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
          WHERE attrelid = 'embq.embeddings'::regclass AND attname = 'embedding'",
    )
    .fetch_one(&mut c)
    .await
    .expect("column type")
}

/// Migrates with `VECTOR_TYPE=vector_type`, enqueues `n` jobs, runs three draining workers at
/// once, checks the column is `column` and returns jobs/s.
async fn three_workers_drain(
    direct: &str,
    worker_url: &str,
    pool_mode: &str,
    n: usize,
    (vector_type, column): (&str, &str),
) -> f64 {
    run_ok(embq(direct, &[("VECTOR_TYPE", vector_type)]).arg("migrate"));
    assert_eq!(column_type(direct).await, column);
    let file = write_jobs(n);
    let out = run_ok(embq(worker_url, &[("DATABASE_POOL_MODE", pool_mode)]).arg("enqueue").arg(file.path()));
    assert!(out.contains(&format!("queued {n} jobs")), "{out}");
    let started = Instant::now();
    let workers: Vec<support::Reaper> = (0..3)
        .map(|_| {
            embq(
                worker_url,
                &[
                    ("DATABASE_POOL_MODE", pool_mode),
                    ("BATCH_SIZE", "100"),
                    ("MAX_CONCURRENT_JOBS", "4"),
                    ("EMBEDDING_DIMENSIONS", "384"),
                ],
            )
            .args(["worker", "--drain"])
            .stderr(Stdio::inherit())
            .spawn()
            .map(support::Reaper)
            .expect("spawn worker")
        })
        .collect();
    for mut w in workers {
        let status = w.wait().expect("worker exits");
        assert!(status.success(), "worker failed with {status:?} (its log is above)");
    }
    let took = started.elapsed();
    let (done, dead, embeddings, pending) = counts(direct).await;
    assert_eq!((done, dead, embeddings, pending), (n as i64, 0, n as i64, 0));
    let mut c = PgConnection::connect(direct).await.unwrap();
    let rerun: i64 =
        sqlx::query_scalar("SELECT count(*) FROM embq.jobs WHERE attempts <> 1").fetch_one(&mut c).await.unwrap();
    assert_eq!(rerun, 0, "no job was processed twice");
    let rate = n as f64 / took.as_secs_f64();
    eprintln!("{pool_mode}: 3 workers drained {n} jobs in {took:?} = {rate:.0} jobs/s");
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_drain_20000_jobs_on_postgres() {
    let url = support::pg::fresh_pg_db().await;
    three_workers_drain(&url, &url, "session", 20_000, ("auto", "vector(384)")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_drain_20000_jobs_into_real_arrays() {
    let url = support::pg::fresh_pg_db().await;
    three_workers_drain(&url, &url, "session", 20_000, ("real[]", "real[]")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_drain_20000_jobs_through_pgbouncer_transaction_mode() {
    // As on Supabase behind Supavisor: pgvector in `extensions`, the non-superuser owner.
    let direct = support::pg::fresh_supabase_db().await;
    let db = url::Url::parse(&direct).unwrap().path().trim_start_matches('/').to_string();
    let mut pooled = url::Url::parse(&support::pg::with_db(&support::pg::pgbouncer_admin_url(), &db)).unwrap();
    pooled.set_username(support::pg::OWNER_ROLE).unwrap();
    three_workers_drain(&direct, pooled.as_str(), "transaction", 20_000, ("auto", "extensions.vector(384)")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_loses_nothing_and_does_nothing_twice() {
    let url = support::pg::fresh_pg_db().await;
    run_ok(embq(&url, &[]).arg("migrate"));
    let n = 600;
    run_ok(embq(&url, &[]).arg("enqueue").arg(write_jobs(n).path()));
    // A slow provider makes sure the victim is mid-batch when it dies.
    let settings = [("BATCH_SIZE", "20"), ("MAX_CONCURRENT_JOBS", "3"), ("HEARTBEAT_INTERVAL", "400ms")];
    let mut victim =
        support::Reaper(embq(&url, &settings).args(["worker", "--hash-delay-ms", "300"]).spawn().expect("spawn"));
    let mut c = PgConnection::connect(&url).await.unwrap();
    support::wait_until(Duration::from_secs(30), "the victim finishes a batch and holds others", || {
        let url = url.clone();
        async move {
            let (done, _, _, _) = counts(&url).await;
            let mut c = PgConnection::connect(&url).await.unwrap();
            let running: i64 = sqlx::query_scalar("SELECT count(*) FROM embq.jobs WHERE state = 'running'")
                .fetch_one(&mut c)
                .await
                .unwrap();
            done > 0 && running > 0
        }
    })
    .await;
    victim.kill().expect("SIGKILL");
    victim.wait().expect("reap");
    let orphaned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM embq.jobs WHERE state = 'running'").fetch_one(&mut c).await.unwrap();
    assert!(orphaned > 0, "the victim died holding jobs");
    let rescuer = embq(&url, &settings).args(["worker", "--drain"]).output().expect("rescuer");
    assert!(rescuer.status.success(), "{}", String::from_utf8_lossy(&rescuer.stderr));
    let (done, dead, embeddings, pending) = counts(&url).await;
    assert_eq!((done, dead, embeddings, pending), (n as i64, 0, n as i64, 0));
    let twice: i64 =
        sqlx::query_scalar("SELECT count(*) FROM embq.jobs WHERE attempts > 1").fetch_one(&mut c).await.unwrap();
    assert_eq!(twice, orphaned, "only the jobs the victim held were run again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_batches_and_exits_zero() {
    let url = support::pg::fresh_pg_db().await;
    run_ok(embq(&url, &[]).arg("migrate"));
    run_ok(embq(&url, &[]).arg("enqueue").arg(write_jobs(300).path()));
    // Each batch takes 2 s but the drain allows only 500 ms: in-flight jobs must be released unspent.
    let settings = [("BATCH_SIZE", "10"), ("MAX_CONCURRENT_JOBS", "2"), ("DRAIN_TIMEOUT", "500ms")];
    let mut w =
        support::Reaper(embq(&url, &settings).args(["worker", "--hash-delay-ms", "2000"]).spawn().expect("spawn"));
    let mut c = PgConnection::connect(&url).await.unwrap();
    support::wait_until(Duration::from_secs(20), "batches in flight", || {
        let url = url.clone();
        async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM embq.jobs WHERE state = 'running'")
                .fetch_one(&mut c)
                .await
                .unwrap();
            n == 20
        }
    })
    .await;
    let sent = Instant::now();
    let pid = w.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = w.wait().expect("wait");
    assert!(status.success(), "exit status {status:?}");
    assert!(sent.elapsed() < Duration::from_secs(5), "exited within the drain timeout");
    let (done, dead, _, _) = counts(&url).await;
    let (ready, running, spent): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'ready'), count(*) FILTER (WHERE state = 'running'),
                count(*) FILTER (WHERE state = 'ready' AND attempts <> 0)
         FROM embq.jobs",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(running, 0, "nothing left leased");
    assert_eq!(dead, 0);
    assert_eq!(done + ready, 300, "every job is done or ready again");
    assert_eq!(spent, 0, "released jobs kept their attempt");
    let state: String = sqlx::query_scalar("SELECT state FROM embq.workers").fetch_one(&mut c).await.unwrap();
    assert_eq!(state, "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_an_idle_worker_long_before_the_poll_interval() {
    let url = support::pg::fresh_pg_db().await;
    run_ok(embq(&url, &[]).arg("migrate"));
    let mut w =
        support::Reaper(embq(&url, &[("QUEUE_POLL_INTERVAL", "60000ms")]).arg("worker").spawn().expect("spawn"));
    // Wait until the worker registered (so it listens), then enqueue through SQL.
    support::wait_until(Duration::from_secs(20), "worker registered", || {
        let url = url.clone();
        async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM embq.workers").fetch_one(&mut c).await.unwrap();
            n == 1
        }
    })
    .await;
    // The listener connects right after registration; give it a moment by enqueueing twice if needed.
    let c = PgConnection::connect(&url).await.unwrap();
    let started = Instant::now();
    let mut i = 0;
    support::wait_until(Duration::from_secs(20), "job embedded via NOTIFY", || {
        i += 1;
        let url = url.clone();
        let id = i;
        async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            if id % 25 == 1 {
                sqlx::query("SELECT embq.enqueue('doc', $1, 'hello there')")
                    .bind(id.to_string())
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM embq.embeddings").fetch_one(&mut c).await.unwrap();
            n > 0
        }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(15), "far below the 60 s poll interval");
    let _ = Command::new("kill").args(["-TERM", &w.id().to_string()]).status();
    assert!(w.wait().unwrap().success());
    drop(c.close().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_listen_url_is_a_clear_warning_not_silent_polling() {
    let url = support::pg::fresh_pg_db().await;
    run_ok(embq(&url, &[]).arg("migrate"));
    let log = tempfile::NamedTempFile::new().unwrap();
    // Nothing listens on port 1 of loopback: the LISTEN session cannot connect, as with an
    // IPv6-only host on IPv4 pods.
    let listen = "postgres://embq:listen-secret@127.0.0.1:1/embq";
    let mut w = support::Reaper(
        embq(&url, &[("DATABASE_LISTEN_URL", listen)])
            .arg("worker")
            .stderr(Stdio::from(log.reopen().unwrap()))
            .spawn()
            .expect("spawn"),
    );
    // The pool behind the LISTEN session retries a refused connection for its 30 s acquire timeout.
    support::wait_until(Duration::from_secs(60), "LISTEN warning logged", || {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        async move { text.contains("LISTEN connection (DATABASE_LISTEN_URL) failed") }
    })
    .await;
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("WARN"), "logged as a warning: {text}");
    assert!(!text.contains("listen-secret"), "the password never reaches the log: {text}");
    let _ = Command::new("kill").args(["-TERM", &w.id().to_string()]).status();
    assert!(w.wait().unwrap().success());
}
