//! Latency benchmark (ignored; recorded in BENCHMARKS.md): the time from enqueueing one job
//! on an idle queue to its embedding being stored, with PostgreSQL and the hash provider, for
//! the two ways an idle `embq worker` process learns of new work:
//!
//! - notify: the job is enqueued by the library's `Queue::enqueue` (what `embq enqueue` and
//!   `embq.enqueue()` do), whose commit sends NOTIFY; the worker LISTENs and claims at once;
//! - poll: the job is a plain `INSERT INTO embq.jobs` with no NOTIFY; the worker finds it on
//!   its next poll (`QUEUE_POLL_INTERVAL=1s`, jittered ±10 %).
//!
//! Jobs go one at a time: enqueue, wait until stored, a random think time (notify: 10–30 ms;
//! poll: 0–1.1 s, so jobs arrive at every phase of the poll cycle), next. Two clocks:
//! - client: from just before the enqueue call until a benchmark-only trigger on
//!   `embq.embeddings` (installed in this test's database) delivers its NOTIFY, i.e. until the
//!   worker's result transaction committed;
//! - database: `embeddings.updated_at − jobs.created_at`, both transaction-start times of the
//!   database clock (excludes the enqueue's and the result's commits).
//!
//! ```sh
//! source scripts/lib/pg.sh && pg_start
//! cargo test --release -p embq --no-default-features --test latency -- --ignored --nocapture
//! ```

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_embq");

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p90, p99, max of millisecond samples.
fn summary(samples: &[f64]) -> [f64; 4] {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    [percentile(&s, 50.0), percentile(&s, 90.0), percentile(&s, 99.0), s[s.len() - 1]]
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Path {
    Notify,
    Poll,
}

struct Bench {
    url: String,
    queue: std::sync::Arc<dyn embq::queue::Queue>,
    plain: PgConnection,
    stored: PgListener,
}

impl Bench {
    /// Enqueues job `id` by `path` and waits for its embedding; returns the client-side latency.
    async fn one(&mut self, path: Path, id: &str) -> Duration {
        let text = format!("latency probe {id}: a short receipt line, coffee and a bagel");
        let started = Instant::now();
        match path {
            Path::Notify => {
                let job = embq::queue::NewJob {
                    source_type: "doc".into(),
                    source_id: id.into(),
                    content_type: "default".into(),
                    text,
                    priority: 0,
                    metadata: None,
                    lane: embq::queue::Lane::Online,
                };
                self.queue.enqueue(&[job], &embq::queue::no_progress).await.expect("enqueue");
            }
            Path::Poll => {
                sqlx::query(
                    "INSERT INTO embq.jobs (source_type, source_id, content_type, text, text_sha256)
                     VALUES ('doc', $1, 'default', $2, sha256(convert_to($2, 'UTF8')))",
                )
                .bind(id)
                .bind(&text)
                .execute(&mut self.plain)
                .await
                .expect("plain insert");
            }
        }
        let deadline = started + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.stored.recv())
                .await
                .unwrap_or_else(|_| panic!("job {id} not stored within 30 s"))
                .expect("benchmark listener");
            if n.payload() == id {
                return started.elapsed();
            }
        }
    }

    /// Database-clock latencies (ms) of the jobs whose ids start with `prefix`.
    async fn db_latencies(&self, prefix: &str) -> Vec<f64> {
        let mut c = PgConnection::connect(&self.url).await.expect("connect");
        sqlx::query_scalar(
            "SELECT (extract(epoch FROM e.updated_at - j.created_at) * 1000)::float8
               FROM embq.embeddings e JOIN embq.jobs j ON j.id = e.job_id
              WHERE e.source_id LIKE $1 || '%'",
        )
        .bind(prefix)
        .fetch_all(&mut c)
        .await
        .expect("database latencies")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: about four minutes"]
async fn enqueue_to_stored_latency() {
    let n: usize = std::env::var("EMBQ_LATENCY_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let url = support::pg::fresh_pg_db().await;
    let cfg = support::config_at(&url, &[]);
    let queue = embq::queue::connect(&cfg.store()).await.expect("open store");
    queue.migrate().await.expect("migrate");

    // Benchmark-only: every stored embedding notifies its source id when its transaction commits.
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    sqlx::Executor::execute(
        &mut admin,
        "CREATE FUNCTION bench_stored() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_notify('embq_bench_stored', NEW.source_id); RETURN NEW; END $$;
         CREATE TRIGGER bench_stored AFTER INSERT OR UPDATE ON embq.embeddings
             FOR EACH ROW EXECUTE FUNCTION bench_stored();",
    )
    .await
    .expect("benchmark trigger");
    let mut stored = PgListener::connect(&url).await.expect("listen");
    stored.listen("embq_bench_stored").await.expect("listen");

    let mut worker = support::Reaper(
        Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .env("EMBEDDING_PROVIDER", "hash")
            .env("EMBEDDING_DIMENSIONS", "384")
            .env("QUEUE_POLL_INTERVAL", "1s")
            .env("HEALTH_PORT", "0")
            .env("METRICS_PORT", "0")
            .env("RUST_LOG", "warn")
            .arg("worker")
            .spawn()
            .expect("spawn embq worker"),
    );
    // The worker is ready for the notify path once its LISTEN connection is up.
    support::wait_until(Duration::from_secs(30), "the worker LISTENs", || {
        let url = url.clone();
        async move {
            let mut c = PgConnection::connect(&url).await.expect("connect");
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%embq_jobs%'",
            )
            .fetch_one(&mut c)
            .await
            .expect("pg_stat_activity");
            n > 0
        }
    })
    .await;

    let plain = PgConnection::connect(&url).await.expect("connect");
    let mut bench = Bench { url: url.clone(), queue, plain, stored };
    // Warm-up: connections, statement caches, the first claim.
    for i in 0..20 {
        bench.one(Path::Notify, &format!("warm-{i}")).await;
    }
    let mut rows = Vec::new();
    for (path, prefix, think) in [(Path::Notify, "notify-", 10.0..30.0), (Path::Poll, "poll-", 0.0..1100.0)] {
        let mut client = Vec::with_capacity(n);
        for i in 0..n {
            // Think time between jobs (the arrival process), not a wait for a condition.
            let ms = rand::thread_rng().gen_range(think.clone());
            tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
            client.push(bench.one(path, &format!("{prefix}{i}")).await.as_secs_f64() * 1000.0);
        }
        let db = bench.db_latencies(prefix).await;
        assert_eq!(db.len(), n, "every {path:?} job stored once");
        let (c, d) = (summary(&client), summary(&db));
        println!(
            "{path:?}: client p50={:.2} p90={:.2} p99={:.2} max={:.2} ms; database p50={:.2} p90={:.2} p99={:.2} max={:.2} ms",
            c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]
        );
        rows.push((path, c, d));
    }
    println!("\n| path | clock | jobs | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    for (path, c, d) in rows {
        let path = match path {
            Path::Notify => "notify (LISTEN/NOTIFY)",
            Path::Poll => "poll (plain INSERT, 1 s poll)",
        };
        for (clock, s) in [("client", c), ("database", d)] {
            println!("| {path} | {clock} | {n} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |", s[0], s[1], s[2], s[3]);
        }
    }
    let _ = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    let status = worker.wait().expect("worker exit");
    assert!(status.success(), "worker exited with {status}");
}
