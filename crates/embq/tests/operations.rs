//! The operations surface of a running worker: a real Prometheus scraping it, readiness
//! through a PostgreSQL outage, the memory guard, disabled processing, and secrets
//! kept out of every output.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_embq");

struct Worker {
    child: Child,
    health: u16,
    metrics: u16,
    log: std::path::PathBuf,
    stopped: bool,
    _dir: tempfile::TempDir,
}

impl Drop for Worker {
    /// A failed assertion must not leave the worker running.
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Worker {
    fn start(url: &str, envs: &[(&str, &str)]) -> Self {
        Self::start_with(url, envs, &[])
    }

    /// `embq worker` with extra arguments.
    fn start_with(url: &str, envs: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("worker.log");
        let (health, metrics) = (support::free_port(), support::free_port());
        let child = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", url)
            .env("HEALTH_PORT", health.to_string())
            .env("METRICS_PORT", metrics.to_string())
            .env("QUEUE_POLL_INTERVAL", "100ms")
            .env("HEARTBEAT_INTERVAL", "500ms")
            .envs(envs.iter().copied())
            .arg("worker")
            .args(args)
            .stdout(Stdio::from(std::fs::File::create(dir.path().join("stdout.log")).expect("log file")))
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .spawn()
            .expect("spawn worker");
        Self { child, health, metrics, log, stopped: false, _dir: dir }
    }

    async fn get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    }

    async fn status(&self, path: &str) -> Option<u16> {
        self.get(self.health, path).await.map(|r| r.0)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn wait_status(&self, path: &str, want: u16, timeout: Duration) {
        support::wait_until(timeout, &format!("{path} answers {want}"), || async {
            self.status(path).await == Some(want)
        })
        .await;
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(self._dir.path().join("stdout.log")).unwrap_or_default()
    }

    fn terminate(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().expect("wait");
        self.stopped = true;
        assert!(status.success(), "worker exit {status:?}\n{}", self.output());
        self.output()
    }
}

fn cli(url: &str, args: &[&str], stdin: &str) -> String {
    cli_env(url, &[], args, stdin)
}

fn cli_env(url: &str, envs: &[(&str, &str)], args: &[&str], stdin: &str) -> String {
    let mut c = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", url)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn embq");
    c.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin");
    let out = c.wait_with_output().expect("wait");
    assert!(out.status.success(), "embq {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn jsonl(n: usize, prefix: &str) -> String {
    (0..n).map(|i| format!(r#"{{"source_type":"doc","source_id":"{prefix}{i}","text":"words {i}"}}"#) + "\n").collect()
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("q.db").display())
}

async fn stats(url: &str) -> Value {
    let url = url.to_string();
    let out = tokio::task::spawn_blocking(move || cli(&url, &["queue", "stats", "--json"], "")).await.unwrap();
    serde_json::from_str(&out).expect("stats JSON")
}

async fn ready_jobs(url: &str) -> u64 {
    stats(url).await["ready"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_jobs_a_worker_processed() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    cli(&url, &["migrate"], "");
    cli(&url, &["enqueue"], &jsonl(137, "p"));
    let w = Worker::start(&url, &[]);
    support::wait_until(Duration::from_secs(30), "all jobs processed", || async { ready_jobs(&url).await == 0 }).await;

    // promtool lints a real scrape.
    let (code, scrape) = w.get(w.metrics, "/metrics").await.expect("scrape");
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    promtool.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let problems = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && problems.trim().is_empty(), "promtool check metrics: {problems}");

    // A real Prometheus server scrapes it and answers PromQL.
    let prom_dir = tempfile::tempdir().unwrap();
    let prom_port = support::free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: embq\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        w.metrics
    );
    std::fs::write(prom_dir.path().join("prometheus.yml"), config).unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", prom_dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", prom_dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package) is installed");
    let query = format!("http://127.0.0.1:{prom_port}/api/v1/query?query=embedding_jobs_processed_total");
    support::wait_until(Duration::from_secs(60), "Prometheus reports 137 processed jobs", || {
        let q = query.clone();
        async move {
            let Ok(r) = reqwest::get(&q).await else { return false };
            let Ok(v) = r.json::<Value>().await else { return false };
            v["data"]["result"][0]["value"][1].as_str() == Some("137")
        }
    })
    .await;
    let _ = prom.kill();
    let _ = prom.wait();
    w.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_postgres_outage_while_liveness_stays_up() {
    let pg = support::pg::PrivatePg::start();
    let url = pg.url();
    cli(&url, &["migrate"], "");
    let mut w = Worker::start(&url, &[]);
    w.wait_status("/ready", 200, Duration::from_secs(30)).await;

    pg.stop();
    w.wait_status("/ready", 503, Duration::from_secs(30)).await;
    let (_, body) = w.get(w.health, "/ready").await.unwrap();
    assert!(body.contains("database unavailable"), "{body}");
    assert_eq!(w.status("/health").await, Some(200), "liveness ignores the database");
    assert!(w.alive(), "the worker rides out the outage");

    pg.restart();
    w.wait_status("/ready", 200, Duration::from_secs(30)).await;
    assert!(w.alive());
    // And it works again without a restart.
    cli(&url, &["enqueue"], &jsonl(25, "after"));
    support::wait_until(Duration::from_secs(30), "jobs processed after the outage", || async {
        ready_jobs(&url).await == 0
    })
    .await;
    w.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_guard_stops_claiming_and_reports_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    cli(&url, &["migrate"], "");
    cli(&url, &["enqueue"], &jsonl(10, "m"));
    // Any process needs more than 90 % of 1 MiB (below MEMORY_LIMIT_MB's floor: a hidden
    // development setting).
    let w = Worker::start(&url, &[("EMBQ_DEV_MEMORY_LIMIT_KIB", "1024")]);
    support::wait_until(Duration::from_secs(30), "/ready reports memory pressure", || async {
        match w.get(w.health, "/ready").await {
            Some((503, body)) => body.contains("memory above 90%"),
            _ => false,
        }
    })
    .await;
    assert_eq!(w.status("/health").await, Some(200));
    // The loop keeps ticking (uptime grows) but nothing is claimed.
    support::wait_until(Duration::from_secs(30), "a few loop ticks", || async {
        let Some((_, body)) = w.get(w.health, "/health").await else { return false };
        serde_json::from_str::<Value>(&body).ok().and_then(|v| v["uptime_seconds"].as_f64()).unwrap_or(0.0) > 1.5
    })
    .await;
    assert_eq!(ready_jobs(&url).await, 10);
    w.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_processing_is_healthy_ready_and_claims_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    cli(&url, &["migrate"], "");
    cli(&url, &["enqueue"], &jsonl(10, "d"));
    let w = Worker::start(&url, &[("ENABLE_QUEUE_PROCESSING", "false")]);
    w.wait_status("/ready", 200, Duration::from_secs(30)).await;
    support::wait_until(Duration::from_secs(30), "a few loop ticks", || async {
        let Some((_, body)) = w.get(w.health, "/health").await else { return false };
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["queue_processing"] == "disabled" && v["uptime_seconds"].as_f64().unwrap_or(0.0) > 1.5
    })
    .await;
    assert_eq!(ready_jobs(&url).await, 10, "nothing was claimed");
    w.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_or_metrics() {
    let admin = support::pg::pg_admin_url();
    let db = support::pg::fresh_pg_db().await;
    // Trust authentication ignores the password, so a known fake one can travel everywhere.
    let mut u = url::Url::parse(&db).unwrap();
    u.set_password(Some("pw-SECRET-db-9431")).unwrap();
    let url = u.to_string();
    let _ = admin;
    cli(&url, &["migrate"], "");
    cli(&url, &["enqueue"], &jsonl(50, "s"));
    let w = Worker::start(
        &url,
        &[
            ("OPENAI_API_KEY", "sk-SECRET-openai-1234"),
            ("GEMINI_API_KEY", "SECRET-gemini-5678"),
            ("SHUTDOWN_TOKEN", "SECRET-shutdown-token"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "debug"),
        ],
    );
    support::wait_until(Duration::from_secs(30), "jobs processed", || async { ready_jobs(&url).await == 0 }).await;
    let (_, metrics) = w.get(w.metrics, "/metrics").await.unwrap();
    let (_, health) = w.get(w.health, "/health").await.unwrap();
    let config = cli(&url, &["config", "check", "--json"], "");
    let out = w.terminate();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("LOG_FORMAT=json line is not JSON ({e}): {line}"));
    }
    assert!(out.contains("worker started"), "{out}");
    for (what, text) in [("logs", &out), ("metrics", &metrics), ("health", &health), ("config check", &config)] {
        for secret in ["pw-SECRET-db-9431", "sk-SECRET-openai-1234", "SECRET-gemini-5678", "SECRET-shutdown-token"] {
            assert!(!text.contains(secret), "{secret} leaked into {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_postgres_is_down_waits_not_ready_then_works() {
    let pg = support::pg::PrivatePg::start();
    let url = pg.url();
    cli(&url, &["migrate"], "");
    cli(&url, &["enqueue"], &jsonl(5, "down"));
    pg.stop();
    // The one-shot timeout does not apply to a worker: it keeps trying, live but not started.
    let mut w = Worker::start(&url, &[("DATABASE_CONNECT_TIMEOUT", "100ms"), ("RUST_LOG", "warn")]);
    w.wait_status("/health", 200, Duration::from_secs(30)).await;
    assert_eq!(w.status("/startup").await, Some(503));
    assert_eq!(w.status("/ready").await, Some(503));
    support::wait_until(Duration::from_secs(30), "three attempts, well past the 100 ms timeout", || async {
        w.output().matches("database not reachable yet").count() >= 3
    })
    .await;
    assert!(w.alive(), "the worker did not exit: {}", w.output());
    pg.restart();
    w.wait_status("/ready", 200, Duration::from_secs(60)).await;
    support::wait_until(Duration::from_secs(60), "the jobs are done", || async { ready_jobs(&url).await == 0 }).await;
    w.terminate();
    // A one-shot command gives up after DATABASE_CONNECT_TIMEOUT with exit 69.
    pg.stop();
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .env_clear()
        .envs([("DATABASE_URL", url.as_str()), ("DATABASE_CONNECT_TIMEOUT", "300ms"), ("RUST_LOG", "warn")])
        .args(["queue", "stats"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("database not reachable yet"), "it retried");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sqlite_enqueue_never_locks_out_a_running_worker() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    cli(&url, &["migrate"], "");
    cli(&url, &["enqueue"], &jsonl(200, "warm"));
    let w = Worker::start(&url, &[("BATCH_SIZE", "100")]);
    w.wait_status("/ready", 200, Duration::from_secs(30)).await;
    // 60,000 jobs while the worker claims and writes: the enqueue commits every 20,000 jobs.
    let input = jsonl(60_000, "bulk");
    let url2 = url.clone();
    let out = tokio::task::spawn_blocking(move || cli(&url2, &["enqueue"], &input)).await.unwrap();
    assert!(out.contains("queued 60000 jobs"), "{out}");
    support::wait_until(Duration::from_secs(240), "the backlog drained", || async { ready_jobs(&url).await == 0 })
        .await;
    let (_, metrics) = w.get(w.metrics, "/metrics").await.expect("metrics");
    let log = w.terminate();
    assert!(!log.contains("locked"), "a worker saw the write lock: {log}");
    assert!(metrics.lines().any(|l| l == "embedding_worker_errors_total{kind=\"database\"} 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_that_expires_leases_spends_no_attempt() {
    let pg = support::pg::PrivatePg::start();
    let url = pg.url();
    cli(&url, &["migrate"], "");
    cli(&url, &["enqueue"], &jsonl(6, "outage"));
    // One attempt only: a lease rescued as if its worker had crashed would dead-letter the job.
    let envs = [("MAX_ATTEMPTS", "1"), ("BATCH_SIZE", "10"), ("RUST_LOG", "info")];
    // A holds the six jobs in a slow provider call across the outage; B only sweeps leases.
    let mut a = Worker::start_with(&url, &envs, &["--hash-delay-ms", "8000"]);
    let b_envs = [envs.as_slice(), &[("ENABLE_QUEUE_PROCESSING", "false")]].concat();
    let mut b = Worker::start(&url, &b_envs);
    support::wait_until(Duration::from_secs(30), "A holds all six jobs", || async {
        stats(&url).await["running"].as_u64() == Some(6)
    })
    .await;
    b.wait_status("/ready", 200, Duration::from_secs(30)).await;

    pg.stop();
    // A heartbeat fails after the pool's 10 s wait for a connection: by then the 750 ms
    // leases have expired (the provider call has ended too, and its result waits).
    support::wait_until(Duration::from_secs(60), "both workers missed a heartbeat", || async {
        a.output().contains("heartbeat failed") && b.output().contains("heartbeat failed")
    })
    .await;
    pg.restart();
    support::wait_until(Duration::from_secs(60), "the six jobs are done", || async {
        let s = stats(&url).await;
        s["done"].as_u64() == Some(6) || s["dead"].as_u64() > Some(0)
    })
    .await;
    let s = stats(&url).await;
    assert_eq!(
        (s["done"].as_u64(), s["dead"].as_u64()),
        (Some(6), Some(0)),
        "{s}\nA: {}\nB: {}",
        a.output(),
        b.output()
    );
    assert!(a.alive() && b.alive());
    let (a_log, b_log) = (a.terminate(), b.terminate());
    assert!(!a_log.contains("reclaimed") && !b_log.contains("reclaimed"), "no lease was rescued:\n{a_log}\n{b_log}");
    assert!(b_log.contains("database reachable again"), "{b_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_connections_gets_a_clear_warning_and_loses_nothing() {
    use sqlx::Connection;
    // A role allowed two connections: LISTEN takes one, the pool of six gets one.
    let admin_db = support::pg::fresh_pg_db().await;
    let db = url::Url::parse(&admin_db).unwrap().path().trim_start_matches('/').to_string();
    let role = format!("r_{db}");
    let mut c = sqlx::PgConnection::connect(&support::pg::pg_admin_url()).await.expect("admin");
    for ddl in [format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT 2"), format!("ALTER DATABASE {db} OWNER TO {role}")]
    {
        sqlx::query(&ddl).execute(&mut c).await.expect(&ddl);
    }
    let mut u = url::Url::parse(&admin_db).unwrap();
    u.set_username(&role).unwrap();
    let url = u.to_string();
    cli(&url, &["migrate"], "");
    cli(&url, &["enqueue"], &jsonl(300, "limited"));
    let w = Worker::start(&url, &[("RUST_LOG", "warn")]);
    // Stats through the superuser: the role has no connection to spare. A task that needs a
    // second connection can wait out the pool's 10 s acquire timeout, so the drain is slow by design
    // (about a minute on an idle 2-core machine): the deadline leaves room for a loaded one.
    support::wait_until(Duration::from_secs(300), "the backlog drained and the refusal explained", || async {
        let s = stats(&admin_db).await;
        s["done"].as_u64() == Some(300) && w.output().contains("the database refuses more connections")
    })
    .await;
    let s = stats(&admin_db).await;
    assert_eq!((s["dead"].as_u64(), s["scheduled"].as_u64()), (Some(0), Some(0)), "{s}");
    let log = w.terminate();
    let warning = log.lines().find(|l| l.contains("refuses more connections")).unwrap_or_default();
    assert!(warning.contains("DB_MAX_CONNECTIONS") && warning.contains("maxReplicas"), "{warning}");
    assert!(warning.contains("too many connections"), "the server's own words are kept: {warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_long_retry_after_is_capped_shown_and_resumable() {
    use support::mock_provider::{MockProvider, Reply};
    let mock = MockProvider::start(8).await;
    let body = serde_json::json!({"error": {"message": "Rate limit reached for requests", "type": "requests",
        "code": "rate_limit_exceeded", "param": null}});
    mock.script([Reply::Status(429, vec![("retry-after", "86400".to_string())], body.to_string())]);
    let url = support::pg::fresh_pg_db().await;
    cli_env(&url, &[("EMBEDDING_DIMENSIONS", "8")], &["migrate"], "");
    cli(&url, &["enqueue"], &jsonl(20, "pause"));
    let w = Worker::start(
        &url,
        &[
            ("EMBEDDING_PROVIDER", "openai"),
            ("OPENAI_API_KEY", "sk-test-pause"),
            ("OPENAI_BASE_URL", mock.url.as_str()),
            ("EMBEDDING_DIMENSIONS", "8"),
            ("RATE_LIMIT_SCOPE", "fleet"),
            ("MAX_REQUESTS_PER_MINUTE", "60000"),
            ("MAX_TOKENS_PER_MINUTE", "10000000"),
            ("MAX_CONCURRENT_JOBS", "1"),
            ("MAX_PROVIDER_PAUSE", "1h"),
            ("RUST_LOG", "warn"),
        ],
    );
    // The day the provider asked for is cut to MAX_PROVIDER_PAUSE, and every surface shows it.
    support::wait_until(Duration::from_secs(30), "/ready reports the pause", || async {
        matches!(w.get(w.health, "/ready").await, Some((503, b)) if b.contains("provider paused"))
    })
    .await;
    let (_, ready) = w.get(w.health, "/ready").await.unwrap();
    let left = serde_json::from_str::<Value>(&ready).unwrap()["provider_paused_seconds"].as_f64().unwrap_or(0.0);
    assert!((3000.0..=3600.0).contains(&left), "capped at an hour: {ready}");
    support::wait_until(Duration::from_secs(10), "the gauge shows the pause", || async {
        let Some((_, m)) = w.get(w.metrics, "/metrics").await else { return false };
        m.lines()
            .find_map(|l| l.strip_prefix("embedding_provider_paused_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| (3000.0..=3600.0).contains(&v))
    })
    .await;
    let s = stats(&url).await;
    let pause = &s["provider_pauses"][0];
    assert!(pause["budget"].as_str().is_some_and(|b| b.starts_with("openai:")), "{s}");
    assert!(pause["seconds_left"].as_f64().is_some_and(|v| (3000.0..=3600.0).contains(&v)), "{s}");
    assert!(!s.to_string().contains("sk-test-pause"), "the key never shows: {s}");
    assert_eq!(mock.seen().len(), 1, "nothing else was sent while paused");
    assert!(w.output().contains("longer than MAX_PROVIDER_PAUSE"), "{}", w.output());

    // `embq budget resume` ends it: the worker is ready and sends again within seconds.
    let out = cli(&url, &["budget", "resume"], "");
    assert!(out.contains("resumed openai:"), "{out}");
    w.wait_status("/ready", 200, Duration::from_secs(10)).await;
    support::wait_until(Duration::from_secs(30), "the 15 jobs not released are done", || async {
        stats(&url).await["done"].as_u64() == Some(15)
    })
    .await;
    let s = stats(&url).await;
    // The throttled batch was returned to the queue, due within the capped pause.
    assert_eq!((s["scheduled"].as_u64(), s["dead"].as_u64()), (Some(5), Some(0)), "{s}");
    assert_eq!(s["provider_pauses"], serde_json::json!([]));
    assert!(cli(&url, &["budget", "resume"], "").contains("no fleet budget is paused"));
    w.terminate();
}
