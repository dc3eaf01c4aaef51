//! How PostgreSQL stores vectors: the type `embq migrate` chooses and says, the upgrade from
//! `real[]` when pgvector appears, a change of dimensions (refused at start, done by `--reembed`),
//! halfvec above 2,000 dimensions, the resumable HNSW index and search in the database.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use embq::config::Config;
use embq::queue::{Clock, IndexOutcome, MigrateOptions, Queue, SearchMethod};
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_embq");

fn cfg(url: &str, dims: &str, extra: &[(&str, &str)]) -> Config {
    let mut pairs = vec![("EMBEDDING_DIMENSIONS", dims), ("QUEUE_POLL_INTERVAL", "50ms")];
    pairs.extend_from_slice(extra);
    support::config_at(url, &pairs)
}

async fn open(cfg: &Config) -> Arc<dyn Queue> {
    embq::queue::connect(&cfg.store()).await.expect("open store")
}

async fn fill(cfg: &Config, q: &Arc<dyn Queue>, n: usize) {
    q.enqueue(&support::jobs(n, |i| format!("receipt {i}: coffee {i}.50")), &embq::queue::no_progress)
        .await
        .expect("enqueue");
    let s = support::drain(support::harness(cfg, q.clone(), None), Duration::from_secs(60)).await;
    assert_eq!(s.processed, n as u64, "{s:?}");
}

/// A database owned by a non-superuser, with pgvector installed on the server but not created.
async fn owned_db_without_pgvector() -> (String, String) {
    let admin_db = support::pg::fresh_pg_db().await;
    let db = url::Url::parse(&admin_db).unwrap().path().trim_start_matches('/').to_string();
    let mut c = PgConnection::connect(&support::pg::pg_admin_url()).await.unwrap();
    let _ = support::pg::fresh_supabase_db().await; // makes sure the owner role exists
    sqlx::raw_sql(&format!("ALTER DATABASE {db} OWNER TO {}", support::pg::OWNER_ROLE)).execute(&mut c).await.unwrap();
    let mut owner = url::Url::parse(&admin_db).unwrap();
    owner.set_username(support::pg::OWNER_ROLE).unwrap();
    (owner.to_string(), admin_db)
}

async fn column_type(url: &str) -> String {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'embq.embeddings'::regclass AND attname = 'embedding'")
        .fetch_one(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_says_which_type_it_chose_and_why() {
    let url = support::pg::fresh_supabase_db().await;
    let q = open(&cfg(&url, "8", &[])).await;
    let r = q.migrate_with(MigrateOptions::default()).await.unwrap();
    assert!(r.notes.iter().any(|n| n.contains("vector(8)") && n.contains("pgvector is available")), "{:?}", r.notes);
    assert_eq!(column_type(&url).await, "extensions.vector(8)");
    let again = q.migrate_with(MigrateOptions::default()).await.unwrap();
    assert!(again.notes.iter().any(|n| n.starts_with("vectors are stored as vector(8)")), "{:?}", again.notes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_create_pgvector_is_told_why_and_upgraded_once_it_exists() {
    let (url, admin_db) = owned_db_without_pgvector().await;
    let c = cfg(&url, "8", &[]);
    let explicit = open(&cfg(&url, "8", &[("VECTOR_TYPE", "vector")])).await;
    let e = explicit.migrate().await.unwrap_err().to_string();
    assert!(e.contains("VECTOR_TYPE=vector needs pgvector") && e.contains("embq_owner cannot create it"), "{e}");
    let q = open(&c).await;
    let r = q.migrate_with(MigrateOptions::default()).await.unwrap();
    let note = r.notes.join("\n");
    assert!(note.contains("stored as real[]") && note.contains("embq_owner cannot create it"), "{note}");
    assert!(note.contains("CREATE EXTENSION IF NOT EXISTS vector"), "says what to run: {note}");
    fill(&c, &q, 20).await;
    let before = q.embeddings(&c.model, 100).await.unwrap();
    assert_eq!(q.search(&before[0].vector, &c.model, 3, None).await.unwrap().method, SearchMethod::ClientScan);

    // The database owner's administrator creates the extension (as on Supabase, in `extensions`).
    let mut admin = PgConnection::connect(&admin_db).await.unwrap();
    sqlx::raw_sql("CREATE SCHEMA extensions; CREATE EXTENSION vector WITH SCHEMA extensions; GRANT USAGE ON SCHEMA extensions TO PUBLIC")
        .execute(&mut admin)
        .await
        .unwrap();
    let r = open(&c).await.migrate_with(MigrateOptions::default()).await.unwrap();
    let note = r.notes.join("\n");
    assert!(note.contains("now stored as vector(8)") && note.contains("was real[]"), "{note}");
    assert!(note.contains("20 rows") && note.contains("ACCESS EXCLUSIVE"), "reports the lock: {note}");
    assert_eq!(column_type(&url).await, "extensions.vector(8)");
    let q = open(&c).await;
    let mut after = q.embeddings(&c.model, 100).await.unwrap();
    let mut before = before;
    before.sort_by(|a, b| a.source_id.cmp(&b.source_id));
    after.sort_by(|a, b| a.source_id.cmp(&b.source_id));
    assert_eq!(after, before, "vectors survive the conversion bit for bit");
    let found = q.search(&before[3].vector, &c.model, 1, None).await.unwrap();
    assert_eq!(found.method, SearchMethod::Database);
    assert_eq!(found.hits[0].source_id, before[3].source_id);
    assert_eq!(found.hits[0].text, before[3].text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_dimensions_is_refused_at_start_and_done_by_reembed() {
    let url = support::pg::fresh_supabase_db().await;
    let c8 = cfg(&url, "8", &[]);
    let q = open(&c8).await;
    q.migrate().await.unwrap();
    fill(&c8, &q, 5).await;

    // A worker configured for 16 dimensions would have every batch refused: it does not start.
    let out = Command::new(BIN)
        .args(["worker", "--drain"])
        .env_clear()
        .envs([
            ("DATABASE_URL", url.as_str()),
            ("EMBEDDING_DIMENSIONS", "16"),
            ("HEALTH_PORT", &support::free_port().to_string()),
            ("METRICS_PORT", &support::free_port().to_string()),
            ("RUST_LOG", "warn"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("vector(8)") && stderr.contains("EMBEDDING_DIMENSIONS is 16"), "{stderr}");
    assert!(stderr.contains("embq migrate --reembed"), "{stderr}");

    let c16 = cfg(&url, "16", &[]);
    let q16 = open(&c16).await;
    let e = q16.migrate().await.unwrap_err().to_string();
    assert!(e.contains("5 stored vectors have other dimensions") && e.contains("--reembed"), "{e}");
    let r = q16.migrate_with(MigrateOptions { reembed: true }).await.unwrap();
    let note = r.notes.join("\n");
    assert!(note.contains("queued 5 texts") && note.contains("dropped 5"), "{note}");
    assert_eq!(column_type(&url).await, "extensions.vector(16)");
    q16.check_vectors().await.unwrap();
    let s = support::drain(support::harness(&c16, q16.clone(), None), Duration::from_secs(60)).await;
    assert_eq!(s.processed, 5);
    let stored = q16.embeddings(&c16.model, 10).await.unwrap();
    assert_eq!(stored.len(), 5);
    assert!(stored.iter().all(|e| e.vector.len() == 16));

    // A new model at the same dimensions: the same path, nothing dropped, every text embedded again.
    let other = cfg(&url, "16", &[("EMBEDDING_MODEL", "hash-v2")]);
    let q2 = open(&other).await;
    let r = q2.migrate_with(MigrateOptions { reembed: true }).await.unwrap();
    let note = r.notes.join("\n");
    assert!(note.contains("queued 5 texts for hash-v2") && note.contains("dropped 0"), "{note}");
    let s = support::drain(support::harness(&other, q2.clone(), None), Duration::from_secs(60)).await;
    assert_eq!((s.processed, s.unchanged), (5, 0), "re-embedded, not taken as unchanged");
    assert_eq!(q2.embeddings("hash-v2", 10).await.unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_two_thousand_dimensions_vectors_are_halfvec_and_indexable() {
    let url = support::pg::fresh_supabase_db().await;
    let c = cfg(&url, "3072", &[]);
    let q = open(&c).await;
    let r = q.migrate_with(MigrateOptions::default()).await.unwrap();
    assert!(r.notes.join("\n").contains("halfvec(3072)"), "{:?}", r.notes);
    fill(&c, &q, 10).await;
    let p = c.provider().unwrap();
    let want = p.embed(&["receipt 3: coffee 3.50"]).await.unwrap().vectors.remove(0);
    let got = q.embeddings(&c.model, 20).await.unwrap().into_iter().find(|e| e.source_id == "3").unwrap().vector;
    assert_eq!(got.len(), 3072);
    let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "half precision keeps each value within 1e-3: {worst}");
    assert!(matches!(q.create_index().await.unwrap(), IndexOutcome::Built { .. }));
    assert_eq!(q.search(&want, &c.model, 1, None).await.unwrap().hits[0].source_id, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_build_resumes_after_an_interruption() {
    let url = support::pg::fresh_supabase_db().await;
    let c = cfg(&url, "8", &[]);
    let q = open(&c).await;
    q.migrate().await.unwrap();
    fill(&c, &q, 50).await;
    assert!(matches!(q.create_index().await.unwrap(), IndexOutcome::Built { replaced_invalid: false, .. }));
    assert_eq!(q.create_index().await.unwrap(), IndexOutcome::Present);
    // An interrupted CREATE INDEX CONCURRENTLY leaves the index behind, marked invalid.
    let mut admin = PgConnection::connect(&url.replace(support::pg::OWNER_ROLE, "postgres")).await.unwrap();
    sqlx::query(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'embq.embeddings_embedding_hnsw_idx'::regclass",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    assert!(matches!(q.create_index().await.unwrap(), IndexOutcome::Built { replaced_invalid: true, .. }));
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'embq.embeddings_embedding_hnsw_idx'::regclass",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(valid);
    // VECTOR_INDEX=hnsw has `embq migrate` build it.
    let url2 = support::pg::fresh_supabase_db().await;
    let r = open(&cfg(&url2, "8", &[("VECTOR_INDEX", "hnsw")]))
        .await
        .migrate_with(MigrateOptions::default())
        .await
        .unwrap();
    assert!(r.notes.join("\n").contains("built the HNSW index"), "{:?}", r.notes);
    // SQLite has none, and says so.
    let dir = tempfile::tempdir().unwrap();
    let lite = support::store(&format!("sqlite://{}", dir.path().join("q.db").display()), Clock::System).await;
    assert!(lite.create_index().await.unwrap_err().to_string().contains("SQLite has no vector index"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_in_the_database_ranks_as_the_exact_scan_does() {
    let url = support::pg::fresh_supabase_db().await;
    let c = cfg(&url, "64", &[]);
    let q = open(&c).await;
    q.migrate().await.unwrap();
    fill(&c, &q, 300).await;
    let stored = q.embeddings(&c.model, 1000).await.unwrap();
    for probe in [0usize, 17, 123] {
        let query = &stored[probe].vector;
        let db = q.search(query, &c.model, 10, None).await.unwrap();
        assert_eq!(db.method, SearchMethod::Database);
        let exact = embq::queue::scan(stored.clone(), query, 10);
        // The same ranking: the probe first, then the same scores in order (near-ties between
        // texts this alike may swap places, since the database ranks in double precision).
        assert_eq!(db.hits[0].source_id, stored[probe].source_id, "probe {probe}");
        assert_eq!(db.hits.len(), exact.len());
        for (a, b) in db.hits.iter().zip(&exact) {
            assert!((a.score - b.score).abs() < 1e-5, "probe {probe}: {a:?} vs {b:?}");
        }
        assert!(db.hits[0].text.as_deref().is_some_and(|t| t.starts_with("receipt")));
    }
    // Another model's vectors are not mixed in.
    assert!(q.search(&stored[0].vector, "other-model", 10, None).await.unwrap().hits.is_empty());
}
