//! The queue-exporter component with a real postgres_exporter (Debian's
//! `prometheus-postgres-exporter`, which .ci/run installs): the Deployment's environment, its
//! `queries.yaml` and the read-only role deploy/README.md creates, on a Supabase-like database,
//! scraped over loopback. Debian ships 0.11 where the Deployment pins 0.15: the custom query
//! format and the metric names are the same; the collectors differ, so the test switches off every
//! collector this binary enables by default, as the Deployment does for its own version.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use support::deploy_roles::{
    as_user, create_role, migrated_db, seed, DUE_READY_JOBS, EXPORTER_ROLE_SQL, OLDEST_AGE_SECS,
};

const DEPLOYMENT: &str = include_str!("../../../deploy/kubernetes/components/queue-exporter/deployment.yaml");
const QUERIES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes/components/queue-exporter/queries.yaml");
const QUERIES_ENV: &str = "PG_EXPORTER_EXTEND_QUERY_PATH";

fn exporter_bin() -> PathBuf {
    let bin = PathBuf::from(
        std::env::var("EMBQ_TEST_POSTGRES_EXPORTER").unwrap_or_else(|_| "/usr/bin/prometheus-postgres-exporter".into()),
    );
    assert!(
        bin.exists(),
        "{} not found: apt-get install prometheus-postgres-exporter (.ci/run does), or set EMBQ_TEST_POSTGRES_EXPORTER",
        bin.display()
    );
    bin
}

/// The literal environment the Deployment gives its exporter container.
fn deployment_env() -> Vec<(String, String)> {
    let doc: serde_yaml::Value = serde_yaml::from_str(DEPLOYMENT).expect("deployment.yaml parses");
    let containers = doc["spec"]["template"]["spec"]["containers"].as_sequence().expect("containers");
    let exporter = containers.iter().find(|c| c["name"].as_str() == Some("exporter")).expect("the exporter container");
    let env = exporter["env"].as_sequence().expect("env");
    let plain: Vec<(String, String)> =
        env.iter().filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string()))).collect();
    assert!(plain.iter().any(|(k, _)| k == QUERIES_ENV), "the Deployment no longer sets {QUERIES_ENV}");
    plain
}

/// The collectors this exporter runs unless told not to (`--collector.NAME ... (default: enabled)`).
fn default_collectors(bin: &PathBuf) -> Vec<String> {
    let out = Command::new(bin).arg("--help").output().expect("run the exporter's --help");
    let help = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    help.split("--collector.")
        .skip(1)
        .filter(|rest| rest.split(" --").next().is_some_and(|flag| flag.contains("(default: enabled)")))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The values of a metric's samples in a Prometheus text exposition.
fn samples(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

async fn scrape(port: u16) -> Option<String> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?;
    resp.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_exporter_exports_the_backlog_as_the_read_only_role() {
    let bin = exporter_bin();
    let url = migrated_db().await;
    let role = create_role(&url, EXPORTER_ROLE_SQL).await;
    let mut owner = PgConnection::connect(&url).await.expect("connect as the owner");
    seed(&mut owner).await;

    let port = support::free_port();
    let log = tempfile::NamedTempFile::new().expect("exporter log");
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        // The Secret's data-source-name, on loopback without TLS.
        .env("DATA_SOURCE_NAME", format!("{}?sslmode=disable", as_user(&url, &role)))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log file"));
    for (k, v) in deployment_env() {
        cmd.env(&k, if k == QUERIES_ENV { QUERIES.to_string() } else { v });
    }
    let collectors = default_collectors(&bin);
    for c in &collectors {
        cmd.arg(format!("--no-collector.{c}"));
    }
    let _exporter = support::Reaper(cmd.spawn().expect("start postgres_exporter"));

    support::wait_until(Duration::from_secs(30), "postgres_exporter answers on its port", || async move {
        scrape(port).await.is_some()
    })
    .await;
    let text = scrape(port).await.expect("scrape the exporter");
    let log = std::fs::read_to_string(log.path()).unwrap_or_default();

    assert_eq!(samples(&text, "pg_up"), [1.0], "the role logs in\n{log}");
    assert_eq!(samples(&text, "pg_exporter_last_scrape_error"), [0.0], "every query ran as the role\n{log}");
    assert_eq!(samples(&text, "embq_queue_ready_jobs"), [DUE_READY_JOBS], "{text}");
    let age = samples(&text, "embq_queue_oldest_ready_age_seconds");
    assert!(age.len() == 1 && (OLDEST_AGE_SECS..OLDEST_AGE_SECS + 600.0).contains(&age[0]), "oldest ready age {age:?}");
    // Nothing about the database beyond the queue: no settings, no table statistics.
    let foreign: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with("pg_") && !l.starts_with("pg_up") && !l.starts_with("pg_exporter_"))
        .filter(|l| !l.starts_with("pg_scrape_collector_"))
        .collect();
    assert!(foreign.is_empty(), "metrics beyond the queue (collectors off: {collectors:?}): {foreign:?}");
    assert!(!log.contains("permission denied"), "{log}");
}
