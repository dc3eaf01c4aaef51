//! The read-only roles deploy/README.md has operators create for KEDA's PostgreSQL scaler and
//! the queue exporter, on a real PostgreSQL laid out as Supabase (migrations by a non-superuser
//! owner, pgvector in `extensions`, the app's own table beside embq's): each role runs the exact
//! queries its consumer runs (the ScaledObjects' `postgresql` triggers, every query of the
//! exporter's `queries.yaml`), gets the right numbers, and can neither write nor read more.

mod support;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sqlx::{Column, Connection, PgConnection, Row};
use support::deploy_roles::{
    as_user, create_role, migrated_db, role_name, seed, DUE_READY_JOBS, EXPORTER_ROLE_SQL, KEDA_ROLE_SQL,
    OLDEST_AGE_SECS,
};

const EXPORTER_QUERIES: &str = include_str!("../../../deploy/kubernetes/components/queue-exporter/queries.yaml");
const DEPLOY_README: &str = include_str!("../../../deploy/README.md");

/// SQLSTATE insufficient_privilege.
const PERMISSION_DENIED: &str = "42501";

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/kubernetes") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// The query of every `postgresql` trigger of every ScaledObject under deploy/kubernetes.
fn keda_queries() -> Vec<(String, String)> {
    let mut files = Vec::new();
    yaml_files(&kubernetes_dir(), &mut files);
    let mut queries = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if doc["kind"].as_str() != Some("ScaledObject") {
                continue;
            }
            let triggers = doc["spec"]["triggers"].as_sequence().cloned().unwrap_or_default();
            for t in triggers.iter().filter(|t| t["type"].as_str() == Some("postgresql")) {
                let query = t["metadata"]["query"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: a postgresql trigger without metadata.query", file.display()));
                queries.push((format!("{} trigger {:?}", file.display(), t["name"]), query.to_string()));
            }
        }
    }
    assert!(!queries.is_empty(), "no ScaledObject with a postgresql trigger under deploy/kubernetes");
    queries
}

/// One postgres_exporter custom query: metric names are `<query name>_<column>`.
#[derive(Deserialize)]
struct ExporterQuery {
    query: String,
    metrics: Vec<std::collections::BTreeMap<String, ExporterColumn>>,
}

#[derive(Deserialize)]
struct ExporterColumn {
    usage: String,
}

fn exporter_queries() -> std::collections::BTreeMap<String, ExporterQuery> {
    let q: std::collections::BTreeMap<String, ExporterQuery> =
        serde_yaml::from_str(EXPORTER_QUERIES).expect("queries.yaml is postgres_exporter's format");
    assert!(!q.is_empty(), "queries.yaml holds no query");
    q
}

/// The one value of a one-row, one-column answer, as KEDA's scaler reads it (a float).
async fn single_value(c: &mut PgConnection, what: &str, sql: &str) -> f64 {
    let rows = sqlx::query(sql).fetch_all(&mut *c).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(rows.len(), 1, "{what}: KEDA reads exactly one row");
    assert_eq!(rows[0].len(), 1, "{what}: KEDA reads exactly one column");
    rows[0]
        .try_get::<i64, _>(0)
        .map(|v| v as f64)
        .or_else(|_| rows[0].try_get::<f64, _>(0))
        .unwrap_or_else(|e| panic!("{what}: not a number: {e}"))
}

/// Every metric the exporter's queries export, by name, as the role reads them.
async fn exporter_samples(c: &mut PgConnection) -> std::collections::BTreeMap<String, Vec<f64>> {
    let mut samples = std::collections::BTreeMap::new();
    for (name, q) in exporter_queries() {
        let rows = sqlx::query(&q.query).fetch_all(&mut *c).await.unwrap_or_else(|e| panic!("query {name}: {e}"));
        let columns: Vec<String> =
            rows.first().map(|r| r.columns().iter().map(|c| c.name().to_string()).collect()).unwrap_or_default();
        for (column, spec) in q.metrics.iter().flat_map(|m| m.iter()) {
            if spec.usage == "LABEL" {
                continue;
            }
            assert!(
                rows.is_empty() || columns.contains(column),
                "query {name} has no column {column} (columns: {columns:?})"
            );
            // postgres_exporter turns numeric, bigint and double into floats; so does the cast.
            let values: Vec<f64> = sqlx::query_scalar(&format!("SELECT ({column})::float8 FROM ({}) AS q", q.query))
                .fetch_all(&mut *c)
                .await
                .unwrap_or_else(|e| panic!("query {name}, column {column}: {e}"));
            samples.insert(format!("{name}_{column}"), values);
        }
    }
    samples
}

async fn assert_denied(c: &mut PgConnection, role: &str, sql: &str) {
    let e = match sqlx::query(sql).execute(&mut *c).await {
        Ok(_) => panic!("{role} may run {sql}"),
        Err(e) => e,
    };
    let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some(PERMISSION_DENIED), "{role}: {sql}: expected permission denied, got {e}");
}

/// Writes of every kind, the jobs' text, and every other table of embq and of the app.
async fn assert_read_only(owner: &mut PgConnection, c: &mut PgConnection, role: &str) {
    for sql in [
        // An explicit id: without it the sequence, not the table, would refuse.
        "INSERT INTO embq.jobs (id, source_type, source_id, text, text_sha256) VALUES (-1, 'x', 'y', 'z', '\\x00')",
        "UPDATE embq.jobs SET state = 'done'",
        "UPDATE embq.jobs SET run_at = now() WHERE state = 'ready'",
        "DELETE FROM embq.jobs",
        "TRUNCATE embq.jobs",
        "SELECT embq.enqueue('x', 'y', 'z')",
        "SELECT text FROM embq.jobs",
        "SELECT * FROM embq.jobs",
        "CREATE TABLE embq.intruder (id int)",
    ] {
        assert_denied(c, role, sql).await;
    }
    let others: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
          WHERE schemaname IN ('embq', 'public') AND (schemaname, tablename) <> ('embq', 'jobs') ORDER BY 1",
    )
    .fetch_all(&mut *owner)
    .await
    .unwrap();
    assert!(others.contains(&"embq.embeddings".to_string()) && others.contains(&"public.documents".to_string()));
    for table in others {
        assert_denied(c, role, &format!("SELECT 1 FROM {table} LIMIT 1")).await;
    }
    // The catalog agrees, for privileges no statement above tried (REFERENCES, TRIGGER,
    // sequences, views): nothing but reading two columns of embq.jobs.
    let writable: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname IN ('embq', 'public') AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
            AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege($1, c.oid, 'USAGE, SELECT, UPDATE')
                     ELSE has_table_privilege($1, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                          OR has_any_column_privilege($1, c.oid, 'INSERT, UPDATE, REFERENCES')
                          OR (has_any_column_privilege($1, c.oid, 'SELECT') AND c.oid <> 'embq.jobs'::regclass)
                END
          ORDER BY 1",
    )
    .bind(role)
    .fetch_all(&mut *owner)
    .await
    .unwrap();
    assert!(writable.is_empty(), "{role} has more than read access to embq.jobs' state and run_at: {writable:?}");
    let readable: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 'embq.jobs'::regclass AND attnum > 0
            AND NOT attisdropped AND has_column_privilege($1, attrelid, attnum, 'SELECT') ORDER BY 1",
    )
    .bind(role)
    .fetch_all(&mut *owner)
    .await
    .unwrap();
    assert_eq!(readable, ["run_at", "state"], "{role} reads exactly the columns its queries need");
    // With USAGE on schema embq and PUBLIC's EXECUTE on functions, a SECURITY DEFINER function
    // there would let the role act as the owner.
    let definers: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = 'embq' AND p.prosecdef",
    )
    .fetch_all(&mut *owner)
    .await
    .unwrap();
    assert!(definers.is_empty(), "SECURITY DEFINER functions in schema embq: {definers:?}");
}

async fn job_count(owner: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM embq.jobs").fetch_one(owner).await.unwrap()
}

#[test]
fn the_deploy_readme_quotes_the_role_scripts_the_tests_run() {
    for (script, secret) in [(KEDA_ROLE_SQL, "connection="), (EXPORTER_ROLE_SQL, "data-source-name=")] {
        assert!(DEPLOY_README.contains(script.trim()), "deploy/README.md must quote:\n{script}");
        let dsn = format!("--from-literal={secret}'postgresql://{}.PROJECT:", role_name(script));
        assert!(DEPLOY_README.contains(&dsn), "deploy/README.md's Secret must log in as the role: {dsn}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_role_counts_the_due_ready_jobs_and_can_do_nothing_else() {
    let url = migrated_db().await;
    let role = create_role(&url, KEDA_ROLE_SQL).await;
    let mut owner = PgConnection::connect(&url).await.unwrap();
    let mut keda = PgConnection::connect(&as_user(&url, &role)).await.expect("the role logs in");
    let queries = keda_queries();
    for (what, sql) in &queries {
        assert_eq!(single_value(&mut keda, what, sql).await, 0.0, "{what}: an empty queue");
    }
    seed(&mut owner).await;
    for (what, sql) in &queries {
        assert_eq!(single_value(&mut keda, what, sql).await, DUE_READY_JOBS, "{what}: the due ready jobs");
    }
    assert_read_only(&mut owner, &mut keda, &role).await;
    assert_eq!(job_count(&mut owner).await, 8, "the role changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_exporter_role_reads_the_backlog_and_can_do_nothing_else() {
    let url = migrated_db().await;
    let role = create_role(&url, EXPORTER_ROLE_SQL).await;
    let mut owner = PgConnection::connect(&url).await.unwrap();
    let mut exporter = PgConnection::connect(&as_user(&url, &role)).await.expect("the role logs in");

    let empty = exporter_samples(&mut exporter).await;
    let idle = [("embq_queue_ready_jobs", 0.0), ("embq_queue_oldest_ready_age_seconds", 0.0)];
    assert_eq!(empty, idle.iter().map(|(k, v)| (k.to_string(), vec![*v])).collect(), "an empty queue");

    seed(&mut owner).await;
    let busy = exporter_samples(&mut exporter).await;
    assert_eq!(busy.keys().collect::<Vec<_>>(), ["embq_queue_oldest_ready_age_seconds", "embq_queue_ready_jobs"]);
    assert_eq!(busy["embq_queue_ready_jobs"], [DUE_READY_JOBS], "the due ready jobs");
    let age = busy["embq_queue_oldest_ready_age_seconds"][0];
    // The seed backdated the oldest due job; the bound above leaves room for a slow machine.
    assert!((OLDEST_AGE_SECS..OLDEST_AGE_SECS + 600.0).contains(&age), "oldest ready age {age}");

    assert_read_only(&mut owner, &mut exporter, &role).await;
    assert_eq!(job_count(&mut owner).await, 8, "the role changed nothing");
}
