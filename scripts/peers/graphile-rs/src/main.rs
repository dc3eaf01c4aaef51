//! The Rust `graphile_worker` peer of scripts/bench-peers.sh.
//!
//!   embq-peer-graphile-rs enqueue DATABASE_URL N   # migrate, then add N jobs in one bulk call
//!   embq-peer-graphile-rs drain DATABASE_URL N     # one worker runs a no-op task until all N are done
//!
//! The drain exits as soon as the task has run N times and the jobs table is empty (graphile
//! deletes a job when it completes), so the caller can time the whole process. It prints one
//! line: `drained N jobs in S s (worker)`, timed from the start of `main` (the start-up of a
//! Rust binary before it is negligible).
//! Knobs (environment): GRAPHILE_CONCURRENCY (24), GRAPHILE_POOL (25), GRAPHILE_LOCAL_QUEUE
//! (500; 0 turns the local queue off), GRAPHILE_COMPLETE_BATCH_MS (0; -1 turns batching off).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graphile_worker::{
    IntoTaskHandlerResult, JobSpec, LocalQueueConfig, RawJobSpec, TaskHandler, WorkerContext, WorkerOptions,
    WorkerUtils,
};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;

const SCHEMA: &str = "graphile_worker";

/// The same shape as an embq job line: the worker parses it and does nothing else.
#[derive(Deserialize, Serialize)]
struct Noop {
    source_type: String,
    source_id: String,
    text: String,
}

/// How many times the task has run in this process.
#[derive(Clone, Debug)]
struct Ran(Arc<AtomicU64>);

impl TaskHandler for Noop {
    const IDENTIFIER: &'static str = "noop";

    async fn run(self, ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        if let Some(ran) = ctx.get_ext::<Ran>() {
            ran.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok::<(), String>(())
    }
}

fn knob(name: &str, default: i64) -> i64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v} is not an integer")),
        Err(_) => default,
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn enqueue(url: &str, n: u64) -> Res<()> {
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    let utils = WorkerUtils::new(pool, SCHEMA);
    utils.migrate().await?;
    let jobs: Vec<RawJobSpec> = (0..n)
        .map(|i| RawJobSpec {
            identifier: Noop::IDENTIFIER.to_string(),
            payload: serde_json::to_value(Noop {
                source_type: "doc".into(),
                source_id: i.to_string(),
                text: format!("receipt {i}: coffee beans, oat milk, total {}.50 paid by card", i % 97),
            })
            .expect("a payload serialises"),
            spec: JobSpec::default(),
        })
        .collect();
    utils.add_raw_jobs(&jobs).await?;
    Ok(())
}

async fn drain(url: &str, n: u64, started: Instant) -> Res<()> {
    let concurrency = knob("GRAPHILE_CONCURRENCY", 24) as usize;
    let pool_size = knob("GRAPHILE_POOL", 25) as u32;
    let local_queue = knob("GRAPHILE_LOCAL_QUEUE", 500);
    let batch_ms = knob("GRAPHILE_COMPLETE_BATCH_MS", 0);

    let pool = PgPoolOptions::new().max_connections(pool_size).connect(url).await?;
    let ran = Ran(Arc::new(AtomicU64::new(0)));
    let mut options = WorkerOptions::default()
        .pg_pool(pool.clone())
        .schema(SCHEMA)
        .concurrency(concurrency)
        .listen_os_shutdown_signals(false)
        .add_extension(ran.clone())
        .define_job::<Noop>();
    if local_queue > 0 {
        options = options.local_queue(LocalQueueConfig::default().with_size(local_queue as usize));
    }
    if batch_ms >= 0 {
        options = options.complete_job_batch_delay(Duration::from_millis(batch_ms as u64));
    }
    let worker = Arc::new(options.init().await?);
    let runner = {
        let worker = Arc::clone(&worker);
        tokio::spawn(async move { worker.run().await })
    };

    // Wait for N task runs, then for the last completions to land.
    let remaining_sql = format!("SELECT count(*) FROM {SCHEMA}._private_jobs");
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if runner.is_finished() {
            return Err("the worker stopped before the queue was drained".into());
        }
        if ran.0.load(Ordering::Relaxed) < n {
            continue;
        }
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(remaining_sql.as_str())).fetch_one(&pool).await?;
        if left == 0 {
            break;
        }
    }
    let elapsed = started.elapsed();
    worker.request_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), runner).await;
    println!("drained {n} jobs in {:.6} s (worker)", elapsed.as_secs_f64());
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: embq-peer-graphile-rs enqueue|drain DATABASE_URL N";
    let (mode, url, n) = match args.as_slice() {
        [_, mode, url, n] => (mode.as_str(), url.as_str(), n.parse::<u64>().map_err(|_| usage)?),
        _ => return Err(usage.into()),
    };
    match mode {
        "enqueue" => enqueue(url, n).await?,
        "drain" => drain(url, n, started).await?,
        _ => return Err(usage.into()),
    }
    // Don't wait for lingering pool connections to close: the work is done and verified.
    std::process::exit(0);
}
