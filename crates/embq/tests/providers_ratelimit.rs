//! Rate limits end to end: workers drain a backlog against a mock that enforces requests
//! and tokens per minute itself. They must never be answered 429, and the token rate the
//! mock measures must stay within its budget — one worker on SQLite (worker scope) and four
//! workers sharing one API key through PostgreSQL (fleet scope).
//!
//! `budget_utilisation` (ignored) is the benchmark recorded in BENCHMARKS.md, against both of
//! the mock's limiters (token buckets, an exact rolling window):
//! `cargo test -p embq --no-default-features --test providers_ratelimit -- --ignored --nocapture budget_utilisation`

mod support;

use std::time::{Duration, Instant};

use embq::config::Config;
use support::mock_provider::{Budgets, MockProvider, ServerTokens, Window};

/// What the mock saw while a backlog drained.
#[derive(Debug)]
struct Drained {
    jobs: u64,
    requests: usize,
    throttled: usize,
    /// Requests answered anything but 200 or 429.
    other: usize,
    /// The embeddings stored, and the jobs not done, once the workers exited.
    stored: (i64, i64),
    tokens: u64,
    /// Tokens per minute between the first and the last request, the first request's
    /// tokens excluded (N events span N-1 intervals).
    tokens_per_minute: f64,
    requests_per_minute: f64,
    /// Seconds from the first request to the last.
    span: f64,
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
    let stored = stored(cfgs[0].database_url.expose()).await;
    let seen = mock.seen();
    let ok: Vec<_> = seen.iter().filter(|s| s.status == 200).collect();
    let (first, last) = (ok.first().expect("some requests").at, ok.last().expect("some requests").at);
    let span = last.duration_since(first).as_secs_f64().max(1e-9);
    let tokens: u64 = ok.iter().map(|s| s.tokens).sum();
    Drained {
        jobs,
        requests: ok.len(),
        throttled: seen.iter().filter(|s| s.status == 429).count(),
        other: seen.iter().filter(|s| s.status != 200 && s.status != 429).count(),
        stored,
        tokens,
        tokens_per_minute: (tokens - ok[0].tokens) as f64 / span * 60.0,
        requests_per_minute: (ok.len() - 1) as f64 / span * 60.0,
        span,
        wall,
    }
}

/// The embeddings stored and the jobs not done (every job must be done, with one embedding).
async fn stored(url: &str) -> (i64, i64) {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("open the SQLite store");
        sqlx::query_as("SELECT (SELECT count(*) FROM embeddings), (SELECT count(*) FROM jobs WHERE state <> 'done')")
            .fetch_one(&mut c)
            .await
            .expect("count")
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM embq.embeddings), (SELECT count(*) FROM embq.jobs WHERE state <> 'done')",
        )
        .fetch_one(&mut c)
        .await
        .expect("count")
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
    let url = support::pg::fresh_pg_db().await;
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
                ("QUEUE_POLL_INTERVAL", "50ms"),
                ("DB_MAX_CONNECTIONS", "6"),
                ("WORKER_ID", &id),
            ])
        })
        .collect();
    assert_eq!(cfgs[0].rate_limit_scope, embq::config::RateLimitScope::Fleet, "fleet is PostgreSQL's default");
    let q = embq::queue::connect(&cfgs[0].store()).await.expect("open store");
    q.migrate().await.expect("migrate");
    apply_rate_budget_migration(&url).await;
    cfgs
}

/// Schemas v2, v3 and v8 (fleet budgets) are idempotent: applied here on a bare database too.
async fn apply_rate_budget_migration(url: &str) {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    conn.execute(include_str!("../migrations/postgres/0002_rate_budgets.sql")).await.expect("rate budget schema");
    conn.execute(include_str!("../migrations/postgres/0003_rate_windows.sql")).await.expect("rate window schema");
    conn.execute(include_str!("../migrations/postgres/0008_rate_shape.sql")).await.expect("rate shape schema");
    let _ = conn.close().await;
}

/// Every job done with one embedding, no 429, nothing dropped.
fn check_complete(d: &Drained, n_jobs: usize) {
    assert_eq!(d.jobs, n_jobs as u64, "{d:?}");
    assert_eq!(d.stored, (n_jobs as i64, 0), "every job done with exactly one embedding: {d:?}");
    assert_eq!(d.other, 0, "{d:?}");
}

/// Against the mock's buckets (full at start, `burst_secs` deep): no 429, and from the first
/// request to the last no more than the buckets held plus their refill.
fn check(d: &Drained, n_jobs: usize, rpm: u32, tpm: u32) {
    eprintln!("{d:?}");
    check_complete(d, n_jobs);
    assert_eq!(d.throttled, 0, "the provider answered 429: {d:?}");
    let allowed = |per_minute: u32| f64::from(per_minute) / 60.0 * (d.span + MOCK_BURST_SECS);
    // Arrival times jitter by a few milliseconds over seconds: 1 % tolerance.
    let tokens_after_first = d.tokens_per_minute / 60.0 * d.span;
    assert!(tokens_after_first <= allowed(tpm) * 1.01, "tokens above budget: {d:?}");
    assert!((d.requests - 1) as f64 <= allowed(rpm) * 1.01, "requests above budget: {d:?}");
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
    assert!(d.throttled > 0, "{d:?}");
    // Jobs released on a 429 wait for the retry-after; the draining workers wait with them.
    check_complete(&d, 600);
}

/// Against OpenAI's shape (buckets a whole minute deep, full at start, refilled continuously,
/// tokens counted the server's own way) the refill is spent from the start: 1.2 minutes' worth
/// of requests go in about 12 s, where a budget holding every rolling minute to the per-minute
/// budget takes over a minute; and no request is answered 429 — one worker, and four sharing
/// the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_minute_bucket_is_spent_from_the_start_without_a_429() {
    let n_jobs = 1_440;
    for workers in [1usize, 4] {
        let mock = MockProvider::start(8).await;
        ServerLimiter::Minute.enforce(&mock, RPM, TPM);
        let dir = tempfile::tempdir().unwrap();
        let cfgs = if workers == 1 {
            vec![sqlite_cfg(&dir, &mock, RPM, TPM, 1)]
        } else {
            pg_cfgs(&mock, workers, RPM, TPM, 1).await
        };
        let d = drain_against(&mock, cfgs, n_jobs).await;
        eprintln!("{workers} worker(s): {d:?}");
        check_complete(&d, n_jobs);
        assert_eq!(d.throttled, 0, "{workers} worker(s): the provider answered 429: {d:?}");
        let sizes: Vec<u64> = mock.seen().iter().filter(|s| s.status == 200).map(|s| s.tokens).collect();
        let best = best_seconds(ServerLimiter::Minute, &sizes, RPM, TPM);
        assert!((11.0..13.0).contains(&best), "{best}");
        assert!(
            d.wall.as_secs_f64() < 2.0 * best,
            "{workers} worker(s): {:.1} s, best {best:.1} s",
            d.wall.as_secs_f64()
        );
    }
}

/// A server that sends no rate headers at all: the configured budgets rule, as they would
/// without any provider signal — no 429, and never more than the budget's pace (a one-second
/// bucket from empty, then budget / 60 a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rate_headers_the_configured_budget_rules() {
    let mock = MockProvider::start(8).await;
    ServerLimiter::Minute.enforce(&mock, RPM, TPM);
    mock.hide_rate_headers();
    let dir = tempfile::tempdir().unwrap();
    let d = drain_against(&mock, vec![sqlite_cfg(&dir, &mock, RPM, TPM, 1)], 200).await;
    check_complete(&d, 200);
    assert_eq!(d.throttled, 0, "{d:?}");
    // 200 requests at 20 a second, a bucket of 20 at most: the last 199 take at least 179 / 20
    // seconds (a server that said it holds a whole minute would have had them at once).
    assert!(d.span >= (199.0 - 20.0) / 20.0, "faster than the configured budget: {d:?}");
}

/// The mock's server-side limiter in a benchmark run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ServerLimiter {
    /// Token buckets, full at start, [`MOCK_BURST_SECS`] deep, refilled continuously.
    Bucket,
    /// Token buckets as OpenAI describes its limits: full at start, a whole minute deep,
    /// refilled continuously; tokens counted the server's own way (ceil(chars / 4)).
    Minute,
    /// An exact rolling one-minute window, empty at start.
    Window,
}

impl ServerLimiter {
    /// Seconds of budget the server's buckets hold.
    fn depth(self) -> f64 {
        match self {
            ServerLimiter::Minute => 60.0,
            _ => MOCK_BURST_SECS,
        }
    }

    /// Puts the mock under this limiter.
    fn enforce(self, mock: &MockProvider, rpm: u32, tpm: u32) {
        let (rpm, tpm) = (f64::from(rpm), f64::from(tpm));
        match self {
            ServerLimiter::Window => mock.enforce_window(Window { rpm, tpm }),
            _ => mock.enforce(Budgets { rpm, tpm, burst_secs: self.depth() }),
        }
        if self == ServerLimiter::Minute {
            mock.count_tokens(ServerTokens::CharsOverFour);
        }
    }

    /// The name in BENCHMARKS.md's table.
    fn name(self) -> &'static str {
        match self {
            ServerLimiter::Bucket => "bucket, 2 s",
            ServerLimiter::Minute => "bucket, full minute, chars/4",
            ServerLimiter::Window => "sliding window",
        }
    }
}

/// The best possible drain time for what the mock admitted, in seconds from the moment its
/// limiter starts: when the last request could have been admitted at the earliest.
///
/// Bucket (full at start, holding `B = depth × limit / 60`, refilled at `limit / 60` per
/// second): the last request goes once `B + rate × t` covers everything, so
/// `t = max((tokens − B_tokens) / tokens_per_s, (requests − B_requests) / requests_per_s, 0)`.
/// Window (empty at start): each minute admits at most a minute's worth, the first at once, so
/// `t = (minutes − 1) × 60 s`, where `minutes` is how many windows the requests fill, packed in
/// order (a request that does not fit in one window's remainder starts the next).
fn best_seconds(limiter: ServerLimiter, sizes: &[u64], rpm: u32, tpm: u32) -> f64 {
    let (rpm, tpm) = (f64::from(rpm), f64::from(tpm));
    match limiter {
        ServerLimiter::Bucket | ServerLimiter::Minute => {
            let depth = limiter.depth();
            let tokens: u64 = sizes.iter().sum();
            let by_tokens = (tokens as f64 - tpm / 60.0 * depth) / (tpm / 60.0);
            let by_requests = (sizes.len() as f64 - rpm / 60.0 * depth) / (rpm / 60.0);
            by_tokens.max(by_requests).max(0.0)
        }
        ServerLimiter::Window => {
            let (mut minutes, mut req, mut tok) = (1u32, 0.0, 0.0);
            for &t in sizes {
                if req + 1.0 > rpm || tok + t as f64 > tpm {
                    minutes += 1;
                    (req, tok) = (0.0, 0.0);
                }
                req += 1.0;
                tok += t as f64;
            }
            f64::from(minutes - 1) * 60.0
        }
    }
}

/// Requests, tokens and 429s the mock saw in each second of the run (EMBQ_BENCH_TRACE).
fn trace(mock: &MockProvider) {
    let seen = mock.seen();
    let Some(first) = seen.first().map(|s| s.at) else { return };
    let mut per_sec: std::collections::BTreeMap<u64, (u32, u64, u32)> = Default::default();
    for s in &seen {
        let e = per_sec.entry(s.at.duration_since(first).as_secs()).or_default();
        if s.status == 200 {
            e.0 += 1;
            e.1 += s.tokens;
        } else {
            e.2 += 1;
        }
    }
    for (sec, (n, tokens, refused)) in per_sec {
        println!("  second {sec:>3}: {n:>4} requests {tokens:>6} tokens {refused:>3} refused");
    }
}

/// BENCHMARKS.md: budget utilisation at 600 RPM / 60,000 TPM against the mock's buckets and
/// its rolling window, for one worker (worker scope, SQLite) and four (fleet scope, PostgreSQL),
/// once with the token budget binding (20 jobs a request) and once the request budget (1 a
/// request). `EMBQ_BENCH_ONLY=window` (or `bucket`, `tokens`, `fleet`, …) runs the matching ones;
/// `EMBQ_BENCH_TRACE=1` prints what the mock admitted in each second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: about nine minutes"]
async fn budget_utilisation() {
    let (rpm, tpm) = (600u32, 60_000u32);
    let only = std::env::var("EMBQ_BENCH_ONLY").unwrap_or_default();
    // Jobs of ~17 tokens. Bucket: about a minute of budget beyond the two-second burst (3,600
    // jobs at 1,000 tokens/s, or 600 requests at 10/s). Window: 1.9 minutes' worth, which the
    // window admits in two bursts a minute apart (best: just over 60 s).
    // Minute: two minutes' worth (the server counts ~17 tokens a job), the first minute's at once.
    let cases = [
        (ServerLimiter::Minute, "tokens", 20usize, 7_000usize),
        (ServerLimiter::Minute, "requests", 1, 1_200),
        (ServerLimiter::Bucket, "tokens", 20, 3_600),
        (ServerLimiter::Bucket, "requests", 1, 600),
        (ServerLimiter::Window, "tokens", 20, 6_700),
        (ServerLimiter::Window, "requests", 1, 1_140),
    ];
    let mut rows = Vec::new();
    for (limiter, binding, batch, n_jobs) in cases {
        for workers in [1usize, 4] {
            let scope = if workers == 1 { "worker" } else { "fleet" };
            let name = format!("{limiter:?}/{binding}/{workers}/{scope}").to_lowercase();
            if !only.split(',').all(|o| name.contains(o.trim())) {
                continue;
            }
            let mock = MockProvider::start(8).await;
            limiter.enforce(&mock, rpm, tpm);
            let dir = tempfile::tempdir().unwrap();
            let cfgs = if workers == 1 {
                vec![sqlite_cfg(&dir, &mock, rpm, tpm, batch)]
            } else {
                pg_cfgs(&mock, workers, rpm, tpm, batch).await
            };
            let d = drain_against(&mock, cfgs, n_jobs).await;
            let sizes: Vec<u64> = mock.seen().iter().filter(|s| s.status == 200).map(|s| s.tokens).collect();
            if std::env::var_os("EMBQ_BENCH_TRACE").is_some() {
                trace(&mock);
            }
            // The mock's budget is as it started (buckets full, window empty) when the workers
            // start: the best time counts from there, as the wall time does.
            let best = best_seconds(limiter, &sizes, rpm, tpm);
            let all = d.requests + d.throttled + d.other;
            let share_429 = d.throttled as f64 / all as f64 * 100.0;
            let utilisation = if d.wall.as_secs_f64() > 0.0 { best / d.wall.as_secs_f64() * 100.0 } else { 0.0 };
            let verdict = if utilisation >= 95.0 && share_429 < 1.0 { "meets" } else { "MISSES" };
            println!(
                "limiter={limiter:?} binding={binding} workers={workers} scope={scope} jobs={} requests={} \
                 tokens={} wall={:.1}s best={best:.1}s utilisation={utilisation:.1}% 429s={} ({share_429:.2}%) \
                 tokens/min={:.0} requests/min={:.0} stored={:?} -> {verdict} the targets",
                d.jobs,
                d.requests,
                d.tokens,
                d.wall.as_secs_f64(),
                d.throttled,
                d.tokens_per_minute,
                d.requests_per_minute,
                d.stored,
            );
            check_complete(&d, n_jobs);
            assert!(share_429 < 1.0, "{share_429:.2}% of the requests were answered 429: {d:?}");
            rows.push(format!(
                "| {} | {binding} | {workers} | {scope} | {} | {} | {} | {:.1} s | {best:.1} s | **{utilisation:.1} %** | {} ({share_429:.2} %) |",
                limiter.name(),
                d.jobs,
                d.requests,
                d.tokens,
                d.wall.as_secs_f64(),
                d.throttled,
            ));
        }
    }
    println!("\n| server limiter | binding | workers | scope | jobs | requests | tokens | wall | best | utilisation | 429s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}

#[tokio::test]
async fn fleet_budgets_are_shared_by_key_and_start_empty() {
    use embq::limiter::{Budget, Grant, PgBudget, Rates};
    let url = support::pg::fresh_pg_db().await;
    apply_rate_budget_migration(&url).await;
    // 60 RPM: one request a second, a bucket of one.
    let rates = Rates::per_minute(60, 1_000_000);
    let a = PgBudget::connect(&url, "openai:m:shared".into(), rates).unwrap();
    let b = PgBudget::connect(&url, "openai:m:shared".into(), rates).unwrap();
    let other = PgBudget::connect(&url, "openai:m:other".into(), rates).unwrap();
    // Empty at start: the first caller is told to wait about a second.
    match a.try_take(1).await.unwrap() {
        Grant::Wait(d) => assert!(d > Duration::from_millis(900) && d <= Duration::from_secs(1), "{d:?}"),
        Grant::Granted(_) => panic!("a fresh fleet budget must start empty"),
    }
    // After a pause both pods see the pause; another key is unaffected by it.
    a.pause(Duration::from_secs(30)).await.unwrap();
    match b.try_take(1).await.unwrap() {
        Grant::Wait(d) => assert!(d > Duration::from_secs(29), "{d:?}"),
        Grant::Granted(_) => panic!("the pause must hold for every pod"),
    }
    match other.try_take(1).await.unwrap() {
        Grant::Wait(d) => assert!(d <= Duration::from_secs(1), "{d:?}"),
        Grant::Granted(_) => panic!("empty at start"),
    }
}

#[tokio::test]
async fn fleet_budgets_share_what_they_learn_and_keep_a_rolling_window() {
    use embq::limiter::{Budget, Grant, PgBudget, Rates};
    use embq::provider::RateSignals;
    let url = support::pg::fresh_pg_db().await;
    apply_rate_budget_migration(&url).await;
    // 6,000 RPM and 600 TPM: ten tokens a second, 600 in any minute.
    let rates = Rates::per_minute(6000, 600);
    let a = PgBudget::connect(&url, "openai:m:shared".into(), rates).unwrap();
    let b = PgBudget::connect(&url, "openai:m:shared".into(), rates).unwrap();
    let whole = RateSignals {
        remaining_requests: Some(6000),
        reset_requests: Some(Duration::from_secs(60)),
        remaining_tokens: Some(600),
        reset_tokens: Some(Duration::from_secs(60)),
        ..RateSignals::default()
    };
    // Pod a hears that the provider has a whole minute left...
    assert!(a.report(&whole, None).await.unwrap());
    // ...and pod b spends nearly all of it at once, where its empty one-second bucket would wait.
    assert!(matches!(b.try_take(500).await.unwrap(), Grant::Granted(_)));
    assert!(matches!(b.try_take(80).await.unwrap(), Grant::Granted(_)));
    // Then the window holds the rest back until the first grant leaves it (60.5 s), though
    // the bucket would refill in nine seconds.
    match a.try_take(100).await.unwrap() {
        Grant::Wait(d) => assert!(d > Duration::from_secs(59) && d <= Duration::from_secs_f64(60.5), "{d:?}"),
        Grant::Granted(_) => panic!("the window must hold the rest of the minute back"),
    }
    // What was learnt is not learnt twice.
    assert!(!b.report(&whole, None).await.unwrap());
}
