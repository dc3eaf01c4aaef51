//! Rate limits end to end: workers drain a backlog against a mock that enforces requests
//! and tokens per minute itself. They must never be answered 429, and the token rate the
//! mock measures must stay within the budget — one worker on SQLite (worker scope) and four
//! workers sharing one API key through PostgreSQL (fleet scope).
//!
//! `budget_utilisation` (ignored) is the benchmark recorded in BENCHMARKS.md:
//! `cargo test --release -p embq --test providers_ratelimit -- --ignored --nocapture`

mod support;

use std::time::{Duration, Instant};

use embq::config::Config;
use support::mock_provider::{Budgets, MockProvider};

/// What the mock saw while a backlog drained.
#[derive(Debug)]
struct Drained {
    jobs: u64,
    requests: usize,
    throttled: usize,
    tokens: u64,
    /// Tokens per minute between the first and the last request, the first request's
    /// tokens excluded (N events span N-1 intervals).
    tokens_per_minute: f64,
    requests_per_minute: f64,
    wall: Duration,
}

fn text(i: usize) -> String {
    // About a dozen tokens each.
    format!("receipt {i}: coffee and a bagel at the corner shop, paid by card")
}

async fn drain_against(mock: &MockProvider, cfgs: Vec<Config>, n_jobs: usize) -> Drained {
    let queue = support::queue_with(&cfgs[0], &support::jobs(n_jobs, text)).await;
    let started = Instant::now();
    let runs: Vec<_> = cfgs
        .iter()
        .map(|cfg| {
            let h = support::harness(cfg, queue.clone(), None);
            tokio::spawn(async move { support::drain(h, Duration::from_secs(600)).await })
        })
        .collect();
    let mut jobs = 0;
    for r in runs {
        jobs += r.await.expect("worker task").processed;
    }
    let wall = started.elapsed();
    let seen = mock.seen();
    let ok: Vec<_> = seen.iter().filter(|s| s.status == 200).collect();
    let (first, last) = (ok.first().expect("some requests").at, ok.last().expect("some requests").at);
    let span = last.duration_since(first).as_secs_f64().max(1e-9);
    let tokens: u64 = ok.iter().map(|s| s.tokens).sum();
    Drained {
        jobs,
        requests: ok.len(),
        throttled: seen.iter().filter(|s| s.status == 429).count(),
        tokens,
        tokens_per_minute: (tokens - ok[0].tokens) as f64 / span * 60.0,
        requests_per_minute: (ok.len() - 1) as f64 / span * 60.0,
        wall,
    }
}

fn sqlite_cfg(dir: &tempfile::TempDir, mock: &MockProvider, rpm: u32, tpm: u32, batch: usize) -> Config {
    let (rpm, tpm, batch) = (rpm.to_string(), tpm.to_string(), batch.to_string());
    support::openai_config(
        dir,
        &mock.url,
        &[
            ("MAX_REQUESTS_PER_MINUTE", &rpm),
            ("MAX_TOKENS_PER_MINUTE", &tpm),
            ("BATCH_SIZE", &batch),
            ("MAX_CONCURRENT_JOBS", "4"),
            ("RATE_LIMIT_SCOPE", "worker"),
        ],
    )
}

async fn pg_cfgs(mock: &MockProvider, workers: usize, rpm: u32, tpm: u32, batch: usize) -> Vec<Config> {
    let url = fresh_pg_db().await;
    let (rpm, tpm, batch) = (rpm.to_string(), tpm.to_string(), batch.to_string());
    let cfgs: Vec<Config> = (0..workers)
        .map(|i| {
            let id = format!("w{i}");
            support::config(&[
                ("DATABASE_URL", &url),
                ("EMBEDDING_PROVIDER", "openai"),
                ("OPENAI_API_KEY", "sk-shared-key"),
                ("OPENAI_BASE_URL", &mock.url),
                ("EMBEDDING_DIMENSIONS", "8"),
                ("MAX_REQUESTS_PER_MINUTE", &rpm),
                ("MAX_TOKENS_PER_MINUTE", &tpm),
                ("BATCH_SIZE", &batch),
                ("MAX_CONCURRENT_JOBS", "3"),
                ("QUEUE_POLL_INTERVAL", "50"),
                ("DB_MAX_CONNECTIONS", "6"),
                ("WORKER_ID", &id),
            ])
        })
        .collect();
    assert_eq!(cfgs[0].rate_limit_scope, embq::config::RateLimitScope::Fleet, "fleet is PostgreSQL's default");
    let q = embq::queue::connect(&cfgs[0]).await.expect("open store");
    q.migrate().await.expect("migrate");
    apply_rate_budget_migration(&url).await;
    cfgs
}

/// A fresh PostgreSQL database on the test server.
async fn fresh_pg_db() -> String {
    use sqlx::Connection;
    let admin = std::env::var("EMBQ_TEST_DATABASE_URL")
        .expect("EMBQ_TEST_DATABASE_URL is not set: run the suite with scripts/test.sh, which starts PostgreSQL");
    let name = format!("prov_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    let _ = conn.close().await;
    let mut u = url::Url::parse(&admin).expect("URL");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

/// Schema v2 (fleet budgets) is idempotent: applied here in case the store's runner is older.
async fn apply_rate_budget_migration(url: &str) {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    conn.execute(include_str!("../migrations/postgres/0002_rate_budgets.sql")).await.expect("rate budget schema");
    let _ = conn.close().await;
}

fn check(d: &Drained, n_jobs: usize, rpm: u32, tpm: u32) {
    eprintln!("{d:?}");
    assert_eq!(d.jobs, n_jobs as u64, "{d:?}");
    assert_eq!(d.throttled, 0, "the provider answered 429: {d:?}");
    // Arrival times jitter by a few milliseconds over seconds: 1 % tolerance.
    assert!(d.tokens_per_minute <= f64::from(tpm) * 1.01, "token rate above budget: {d:?}");
    assert!(d.requests_per_minute <= f64::from(rpm) * 1.01, "request rate above budget: {d:?}");
}

// 120,000 TPM is 2,000 tokens a second: 600 jobs of ~13 tokens take about four seconds,
// twice the mock's two-second burst, so a client without a limiter would see 429s.
const RPM: u32 = 1_200;
const TPM: u32 = 120_000;
const MOCK_BURST_SECS: f64 = 2.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_drains_a_backlog_within_budget_and_without_a_429() {
    let mock = MockProvider::start(8).await;
    mock.enforce(Budgets { rpm: f64::from(RPM), tpm: f64::from(TPM), burst_secs: MOCK_BURST_SECS });
    let dir = tempfile::tempdir().unwrap();
    let d = drain_against(&mock, vec![sqlite_cfg(&dir, &mock, RPM, TPM, 20)], 600).await;
    check(&d, 600, RPM, TPM);
    assert!(d.tokens_per_minute >= f64::from(TPM) * 0.85, "budget badly used: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_sharing_a_key_stay_within_one_fleet_budget() {
    let mock = MockProvider::start(8).await;
    mock.enforce(Budgets { rpm: f64::from(RPM), tpm: f64::from(TPM), burst_secs: MOCK_BURST_SECS });
    let d = drain_against(&mock, pg_cfgs(&mock, 4, RPM, TPM, 20).await, 600).await;
    check(&d, 600, RPM, TPM);
    assert!(d.tokens_per_minute >= f64::from(TPM) * 0.8, "budget badly used: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shared_budget_four_workers_would_be_throttled() {
    // The control experiment: the same four workers with per-worker budgets overspend the key,
    // the mock says 429, and the workers back off (no job is lost or dead-lettered).
    let mock = MockProvider::start(8).await;
    mock.enforce(Budgets { rpm: f64::from(RPM), tpm: f64::from(TPM), burst_secs: MOCK_BURST_SECS });
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_cfg(&dir, &mock, RPM, TPM, 20);
    let d = drain_against(&mock, vec![cfg.clone(), cfg.clone(), cfg.clone(), cfg], 600).await;
    assert_eq!(d.jobs, 600);
    assert!(d.throttled > 0, "{d:?}");
}

/// BENCHMARKS.md: budget utilisation at 600 RPM / 60,000 TPM for one and four workers, once
/// with the token budget binding (20 jobs a request) and once the request budget (1 a request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: about four minutes"]
async fn budget_utilisation() {
    let (rpm, tpm) = (600u32, 60_000u32);
    // About a minute of work each: 3,600 jobs of 17 tokens at 1,000 tokens/s, or 600 requests at 10/s.
    for (batch, n_jobs, binding) in [(20usize, 3_600usize, "tokens"), (1, 600, "requests")] {
        for workers in [1usize, 4] {
            let mock = MockProvider::start(8).await;
            mock.enforce(Budgets { rpm: f64::from(rpm), tpm: f64::from(tpm), burst_secs: MOCK_BURST_SECS });
            let dir = tempfile::tempdir().unwrap();
            let cfgs = if workers == 1 {
                vec![sqlite_cfg(&dir, &mock, rpm, tpm, batch)]
            } else {
                pg_cfgs(&mock, workers, rpm, tpm, batch).await
            };
            let d = drain_against(&mock, cfgs, n_jobs).await;
            println!(
                "binding={binding} workers={workers} scope={} jobs={} requests={} tokens={} wall={:.1}s \
                 tokens/min={:.0} ({:.1}% of {tpm}) requests/min={:.0} ({:.1}% of {rpm}) 429s={}",
                if workers == 1 { "worker" } else { "fleet" },
                d.jobs,
                d.requests,
                d.tokens,
                d.wall.as_secs_f64(),
                d.tokens_per_minute,
                d.tokens_per_minute / f64::from(tpm) * 100.0,
                d.requests_per_minute,
                d.requests_per_minute / f64::from(rpm) * 100.0,
                d.throttled,
            );
            check(&d, n_jobs, rpm, tpm);
        }
    }
}

#[tokio::test]
async fn a_fleet_budget_without_schema_v2_falls_back_instead_of_blocking() {
    use embq::limiter::{Limiter, PgBudget, Rates};
    let url = fresh_pg_db().await;
    let budget = PgBudget::connect(&url, "openai:m:k".into(), Rates::per_minute(6000, 6_000_000)).unwrap();
    let limiter = Limiter::new(std::sync::Arc::new(budget));
    tokio::time::timeout(Duration::from_secs(10), limiter.acquire(10)).await.expect("acquire did not block");
}

#[tokio::test]
async fn fleet_budgets_are_shared_by_key_and_start_empty() {
    use embq::limiter::{Budget, Grant, PgBudget, Rates};
    let url = fresh_pg_db().await;
    apply_rate_budget_migration(&url).await;
    // 60 RPM: one request a second, a bucket of one.
    let rates = Rates::per_minute(60, 1_000_000);
    let a = PgBudget::connect(&url, "openai:m:shared".into(), rates).unwrap();
    let b = PgBudget::connect(&url, "openai:m:shared".into(), rates).unwrap();
    let other = PgBudget::connect(&url, "openai:m:other".into(), rates).unwrap();
    // Empty at start: the first caller is told to wait about a second.
    match a.try_take(1).await.unwrap() {
        Grant::Wait(d) => assert!(d > Duration::from_millis(900) && d <= Duration::from_secs(1), "{d:?}"),
        Grant::Granted => panic!("a fresh fleet budget must start empty"),
    }
    // After a pause both pods see the pause; another key is unaffected by it.
    a.pause(Duration::from_secs(30)).await.unwrap();
    match b.try_take(1).await.unwrap() {
        Grant::Wait(d) => assert!(d > Duration::from_secs(29), "{d:?}"),
        Grant::Granted => panic!("the pause must hold for every pod"),
    }
    match other.try_take(1).await.unwrap() {
        Grant::Wait(d) => assert!(d <= Duration::from_secs(1), "{d:?}"),
        Grant::Granted => panic!("empty at start"),
    }
}
