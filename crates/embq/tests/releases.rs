//! Releases and the database's load (issue 19, items 2 and 5), against real PostgreSQL (and
//! SQLite where it applies): a binary keeps running on a newer schema whose migrations are
//! additive and refuses a breaking one; one worker at a time exports the fleet-wide queue gauges,
//! through a transaction pooler, and another takes over when it stops; `embq prune` on the
//! command line.

mod support;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use embq::queue::{Clock, SchemaFit, SCHEMA_VERSION};
use sqlx::Connection;

const BIN: &str = env!("CARGO_BIN_EXE_embq");

fn embq(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("EMBEDDING_PROVIDER", "hash")
        .env("HEALTH_PORT", "0")
        .env("METRICS_PORT", "0")
        .env("RUST_LOG", "info")
        .args(args)
        .output()
        .expect("run embq")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Records a migration from a future release, as its `embq migrate` would.
async fn record_future_migration(url: &str, version: i32, compatible_from: i32) {
    let sql = if url.starts_with("sqlite") {
        format!("INSERT INTO schema_version (version, applied_at, compatible_from) VALUES ({version}, 0, {compatible_from})")
    } else {
        format!("INSERT INTO embq.schema_version (version, compatible_from) VALUES ({version}, {compatible_from})")
    };
    if url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query(&sql).execute(&mut c).await.expect("record");
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query(&sql).execute(&mut c).await.expect("record");
    }
}

/// The store sees a newer additive schema as fit, `migrate` leaves it alone, and a breaking
/// migration after it is refused by both.
async fn newer_schema_is_judged_by_its_declaration(sqlite: bool) {
    let db = support::fresh_db(sqlite).await;
    let q = support::store(&db.url, Clock::System).await;
    assert_eq!(q.migrate().await.expect("migrate"), SCHEMA_VERSION);
    assert_eq!(q.check_schema().await.expect("fit"), SchemaFit::Exact);

    let additive = SCHEMA_VERSION + 1;
    record_future_migration(&db.url, additive, SCHEMA_VERSION).await;
    assert_eq!(q.check_schema().await.expect("fit"), SchemaFit::NewerCompatible { installed: additive });
    let report = q.migrate_with(Default::default()).await.expect("a rollback's migrate is a no-op");
    assert_eq!(report.version, additive);
    assert!(report.notes.iter().any(|n| n.contains("additive")), "{:?}", report.notes);

    record_future_migration(&db.url, additive + 1, additive + 1).await;
    let e = q.check_schema().await.expect_err("breaking").to_string();
    assert!(e.contains("breaking") && e.contains("upgrade embq"), "{e}");
    assert!(q.migrate().await.expect_err("refused").to_string().contains("breaking"));
}

#[tokio::test]
async fn postgres_judges_a_newer_schema_by_its_declaration() {
    newer_schema_is_judged_by_its_declaration(false).await;
}

#[tokio::test]
async fn sqlite_judges_a_newer_schema_by_its_declaration() {
    newer_schema_is_judged_by_its_declaration(true).await;
}

/// A rolled-back worker (this binary, one release behind the schema) drains and exits 0 where it
/// used to exit 78; after a breaking migration it exits 78 and says why.
#[tokio::test]
async fn a_worker_runs_one_additive_migration_behind_and_not_behind_a_breaking_one() {
    let url = support::pg::fresh_pg_db().await;
    assert!(embq(&url, &["migrate"]).status.success());
    record_future_migration(&url, SCHEMA_VERSION + 1, SCHEMA_VERSION - 1).await;
    let out = embq(&url, &["enqueue", "/dev/null"]);
    assert!(out.status.success(), "{}", text(&out));
    let migrate = embq(&url, &["migrate"]);
    assert!(migrate.status.success(), "{}", text(&migrate));
    assert!(text(&migrate).contains("additive"), "{}", text(&migrate));
    let worker = embq(&url, &["worker", "--drain"]);
    assert!(worker.status.success(), "{}", text(&worker));
    assert!(text(&worker).contains("the schema is newer, with additive migrations only"), "{}", text(&worker));

    record_future_migration(&url, SCHEMA_VERSION + 2, SCHEMA_VERSION + 2).await;
    for args in [&["worker", "--drain"][..], &["migrate"][..]] {
        let out = embq(&url, args);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("breaking"), "{}", text(&out));
    }
}

/// An `embq worker` process, killed on drop if the test did not stop it.
struct Proc {
    child: Child,
    id: String,
    metrics: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(url: &str, id: &str) -> Self {
        let metrics = support::free_port();
        let child = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", url)
            .env("DATABASE_POOL_MODE", "transaction")
            .env("EMBEDDING_PROVIDER", "hash")
            .env("WORKER_ID", id)
            .env("HEARTBEAT_INTERVAL", "300ms")
            .env("HEALTH_PORT", support::free_port().to_string())
            .env("METRICS_PORT", metrics.to_string())
            .env("RUST_LOG", "warn")
            .arg("worker")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker");
        Self { child, id: id.into(), metrics }
    }

    /// The value of an unlabelled sample on /metrics; `None` when it is not exported.
    async fn sample(&self, name: &str) -> Option<f64> {
        let body = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics)).await.ok()?.text().await.ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

async fn lease_holder(url: &str) -> Option<String> {
    let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT holder FROM embq.leases WHERE name = 'fleet-stats' AND expires_at > now()")
        .fetch_optional(&mut c)
        .await
        .expect("read lease")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_exports_the_fleet_gauges_and_another_takes_over() {
    let direct = support::pg::fresh_pg_db().await;
    let db = url::Url::parse(&direct).expect("URL").path().trim_start_matches('/').to_string();
    let pooled = support::pg::with_db(&support::pg::pgbouncer_admin_url(), &db);
    assert!(embq(&direct, &["migrate"]).status.success());
    // Dead jobs stay in the queue: the gauges have something fleet-wide to show.
    let mut c = sqlx::PgConnection::connect(&direct).await.expect("connect");
    sqlx::query(
        "INSERT INTO embq.jobs (source_type, source_id, text, text_sha256, state, finished_at)
         SELECT 'doc', g::text, 'x', sha256('x'), 'dead', now() FROM generate_series(1, 3) g",
    )
    .execute(&mut c)
    .await
    .expect("dead jobs");

    // Both through PgBouncer in transaction mode: no session state, so no advisory locks.
    let mut workers = vec![Proc::start(&pooled, "w-a"), Proc::start(&pooled, "w-b")];
    const DEAD: &str = "embedding_dead_letter_jobs";
    support::wait_until(Duration::from_secs(20), "one worker exports the queue gauges", || async {
        workers[0].sample(DEAD).await.is_some() != workers[1].sample(DEAD).await.is_some()
    })
    .await;
    // Over several refresh rounds (300 ms each), the lease holder and only it exports.
    let window = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < window {
        let holder = lease_holder(&direct).await;
        let exporting: Vec<&str> = {
            let mut v = Vec::new();
            for w in &workers {
                if w.sample(DEAD).await.is_some() {
                    v.push(w.id.as_str());
                }
            }
            v
        };
        assert!(exporting.len() <= 1, "two workers export at once: {exporting:?}");
        if let (Some(h), [e]) = (holder.as_deref(), exporting.as_slice()) {
            assert_eq!(h, *e, "the exporter is the lease holder");
        }
    }
    let holder = lease_holder(&direct).await.expect("the lease is held");
    let at = workers.iter().position(|w| w.id == holder).expect("a worker holds it");
    // It publishes right after taking the lease: give it that round.
    support::wait_until(Duration::from_secs(5), "the holder exports the counts", || async {
        workers[at].sample(DEAD).await == Some(3.0)
    })
    .await;
    let mut dead = workers.remove(at);
    let other = workers.pop().expect("the other worker");
    assert_eq!(other.sample(DEAD).await, None, "the other exports no sample");

    // The holder dies without releasing (SIGKILL): the other takes over once it expires.
    dead.child.kill().expect("kill the holder");
    let killed = Instant::now();
    support::wait_until(Duration::from_secs(10), "the other worker takes over", || async {
        other.sample(DEAD).await == Some(3.0)
    })
    .await;
    assert!(killed.elapsed() < Duration::from_secs(3), "a lease is 900 ms; took {:?}", killed.elapsed());
    assert_eq!(lease_holder(&direct).await.as_deref(), Some(other.id.as_str()));

    // A worker that stops (SIGTERM) gives the lease up on its way out.
    let mut other = other;
    let _ = Command::new("kill").args(["-TERM", &other.child.id().to_string()]).status();
    let status = other.child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM embq.leases").fetch_one(&mut c).await.expect("count");
    assert_eq!(rows, 0, "the lease row is deleted, not left to expire");
}

#[test]
fn prune_takes_a_duration_with_its_unit_and_deletes_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    assert!(embq(&url, &["migrate"]).status.success());
    let out = embq(&url, &["prune", "--older-than", "7"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--older-than") && text(&out).contains("no unit"), "{}", text(&out));
    let out = embq(&url, &["prune", "--older-than", "7d", "--dead", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!((v["finished"].as_u64(), v["dead"].as_u64()), (Some(0), Some(0)), "{v}");
}

/// A SQLite queue has one process: its worker exports the queue gauges without any lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_worker_exports_the_queue_gauges_itself() {
    let db = support::fresh_db(true).await;
    let cfg = support::config_at(&db.url, &[("HEARTBEAT_INTERVAL", "200ms")]);
    let queue = support::queue_with(&cfg, &[]).await;
    let metrics = std::sync::Arc::new(embq::metrics::Metrics::new("test", cfg.provider.as_str(), &cfg.model));
    let health = std::sync::Arc::new(embq::health::Health::new(cfg.worker_id.clone(), true, Duration::from_secs(30)));
    let provider = cfg.provider().expect("provider");
    let worker = embq::worker::Worker::new(cfg.clone(), queue, provider, health.clone(), metrics.clone());
    let run = tokio::spawn(async move { worker.run().await.map(|_| ()) });
    support::wait_until(Duration::from_secs(10), "the worker exports the queue gauges", || async {
        metrics.encode().lines().any(|l| l == "embedding_queue_depth 0")
    })
    .await;
    health.shutdown.cancel();
    run.await.expect("joined").expect("worker ran");
    assert!(!metrics.fleet.exporting(), "a stopped worker withdraws its samples");
}
