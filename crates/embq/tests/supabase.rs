//! The README's Supabase recipe (`examples/supabase/documents.sql`), end to end, on a database
//! laid out as Supabase's: pgvector in schema `extensions`, migrations and workers as a
//! non-superuser owner, RLS on the app's table, the `authenticated` role writing rows.

mod support;

use std::sync::Arc;
use std::time::Duration;

use embq::config::Config;
use embq::queue::{Lease, Outcome, Queue, SearchMethod};
use sqlx::{Connection, PgConnection, Row};

const RECIPE: &str = include_str!("../../../examples/supabase/documents.sql");
const README: &str = include_str!("../../../README.md");
const DIMS: &str = "1536";

struct App {
    /// The owner's URL (runs embq).
    url: String,
    cfg: Config,
    q: Arc<dyn Queue>,
}

async fn app() -> App {
    let url = support::pg::fresh_supabase_db().await;
    let cfg = support::config_at(
        &url,
        &[("EMBEDDING_DIMENSIONS", DIMS), ("QUEUE_POLL_INTERVAL", "50ms"), ("MAX_ATTEMPTS", "1")],
    );
    let q = embq::queue::connect(&cfg.store()).await.expect("open store");
    q.migrate().await.expect("migrate as the database owner");
    let mut owner = PgConnection::connect(&url).await.expect("connect as the owner");
    sqlx::raw_sql(RECIPE).execute(&mut owner).await.expect("the recipe runs as the owner");
    App { url, cfg, q }
}

/// A superuser session acting as a signed-in app user, as PostgREST does.
async fn as_user(app: &App, sub: &str) -> PgConnection {
    let mut u = url::Url::parse(&app.url).expect("URL");
    u.set_username("postgres").expect("user");
    let mut c = PgConnection::connect(u.as_str()).await.expect("connect");
    sqlx::raw_sql(&format!(
        "SET ROLE authenticated; SELECT set_config('request.jwt.claims', '{{\"sub\":\"{sub}\"}}', false);"
    ))
    .execute(&mut c)
    .await
    .expect("become an authenticated user");
    c
}

async fn drain(app: &App) -> embq::worker::RunSummary {
    support::drain(support::harness(&app.cfg, app.q.clone(), None), Duration::from_secs(60)).await
}

async fn insert(c: &mut PgConnection, title: &str, body: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO public.documents (title, body) VALUES ($1, $2) RETURNING id")
        .bind(title)
        .bind(body)
        .fetch_one(c)
        .await
        .expect("insert a document")
}

/// The vector the configured provider makes of a text.
async fn embed(cfg: &Config, text: &str) -> Vec<f32> {
    let p = cfg.provider().expect("provider");
    p.embed(&[text]).await.expect("embed").vectors.remove(0)
}

async fn stored_vector(c: &mut PgConnection, id: i64) -> Option<Vec<f32>> {
    sqlx::query_scalar("SELECT embedding::real[] FROM public.documents WHERE id = $1")
        .bind(id)
        .fetch_one(c)
        .await
        .expect("read the row")
}

async fn job_states(c: &mut PgConnection, id: i64) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT state, last_error FROM embq.jobs WHERE source_type = 'documents' AND source_id = $1 ORDER BY id",
    )
    .bind(id.to_string())
    .fetch_all(c)
    .await
    .expect("read jobs")
}

/// The README's backfill for rows that existed before the trigger.
const BACKFILL: &str = "SELECT embq.enqueue('documents', id::text, title || E'\\n\\n' || body) FROM public.documents WHERE embedding IS NULL;";

#[test]
fn the_readme_shows_the_recipe_the_tests_run() {
    assert!(README.contains(BACKFILL), "README.md must show the backfill the tests run");
    assert!(README.contains(RECIPE.trim()), "README.md's Supabase section must quote examples/supabase/documents.sql");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_by_app_users_get_their_vectors_in_their_own_table() {
    let app = app().await;
    let mut alice = as_user(&app, "alice").await;
    let a = insert(&mut alice, "Coffee", "Blue Door Coffee, flat white 4.50").await;
    let b = insert(&mut alice, "Groceries", "bread, milk, eggs").await;
    let s = drain(&app).await;
    assert_eq!((s.processed, s.dead), (2, 0));
    let mut owner = PgConnection::connect(&app.url).await.unwrap();
    for (id, text) in [(a, "Coffee\n\nBlue Door Coffee, flat white 4.50"), (b, "Groceries\n\nbread, milk, eggs")] {
        assert_eq!(stored_vector(&mut owner, id).await, Some(embed(&app.cfg, text).await), "document {id}");
    }
    // embq keeps its bookkeeping (model, text hash) but stores the vector once: in the app's row.
    let kept: Vec<(String, bool)> = sqlx::query_as(
        "SELECT source_id, embedding IS NULL FROM embq.embeddings WHERE source_type = 'documents' ORDER BY 1",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert_eq!(kept, vec![(a.to_string(), true), (b.to_string(), true)]);

    // A change of text queues the row again; a change of anything else does not.
    sqlx::query("UPDATE public.documents SET pinned = true WHERE id = $1").bind(b).execute(&mut alice).await.unwrap();
    sqlx::query("UPDATE public.documents SET body = 'bread, milk, eggs, butter' WHERE id = $1")
        .bind(a)
        .execute(&mut alice)
        .await
        .unwrap();
    let stats = app.q.stats().await.unwrap();
    assert_eq!(stats.ready, 1, "only the text change was queued: {stats:?}");
    drain(&app).await;
    assert_eq!(stored_vector(&mut owner, a).await, Some(embed(&app.cfg, "Coffee\n\nbread, milk, eggs, butter").await));

    // Re-saving the same text costs no provider call: the claim finds it unchanged.
    sqlx::query("UPDATE public.documents SET body = 'bread, milk, eggs' WHERE id = $1")
        .bind(b)
        .execute(&mut alice)
        .await
        .unwrap();
    assert_eq!(app.q.stats().await.unwrap().ready, 0, "same text: the update trigger's WHEN held it back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_users_reach_embq_only_through_the_recipes_functions() {
    let app = app().await;
    let mut alice = as_user(&app, "alice").await;
    let mut bob = as_user(&app, "bob").await;
    insert(&mut alice, "Alice's note", "secret plans").await;
    insert(&mut bob, "Bob's note", "other plans").await;
    let has_usage: bool = sqlx::query_scalar("SELECT has_schema_privilege('authenticated', 'embq', 'USAGE')")
        .fetch_one(&mut alice)
        .await
        .unwrap();
    assert!(!has_usage, "authenticated was never granted schema embq");
    let e = sqlx::query("SELECT count(*) FROM embq.jobs").execute(&mut alice).await.unwrap_err();
    assert!(e.to_string().contains("permission denied for schema embq"), "{e}");
    let e = sqlx::query("SELECT embq.enqueue('documents', '1', 'x')").execute(&mut alice).await.unwrap_err();
    assert!(e.to_string().contains("permission denied for schema embq"), "{e}");
    drain(&app).await;
    // RLS holds for the search function too: Alice finds only her own rows.
    let q = embed(&app.cfg, "Alice's note\n\nsecret plans").await;
    let hits: Vec<(String, f64)> =
        sqlx::query_as("SELECT title, similarity FROM public.match_documents($1::text::extensions.vector, 10)")
            .bind(text(&q))
            .fetch_all(&mut alice)
            .await
            .unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].0, "Alice's note");
    assert!((hits[0].1 - 1.0).abs() < 1e-5, "{hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_row_cancels_its_jobs_and_a_vanished_row_completes_its_job_clearly() {
    let app = app().await;
    let mut alice = as_user(&app, "alice").await;
    let mut owner = PgConnection::connect(&app.url).await.unwrap();
    // Deleted before a worker saw it: the pending job is cancelled, nothing is embedded.
    let gone = insert(&mut alice, "Draft", "to be deleted").await;
    sqlx::query("DELETE FROM public.documents WHERE id = $1").bind(gone).execute(&mut alice).await.unwrap();
    // Deleted after it was embedded: embq forgets its bookkeeping row.
    let kept = insert(&mut alice, "Kept", "stays a while").await;
    drain(&app).await;
    sqlx::query("DELETE FROM public.documents WHERE id = $1").bind(kept).execute(&mut alice).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM embq.embeddings WHERE source_type = 'documents'")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(
        job_states(&mut owner, gone).await,
        vec![("cancelled".into(), Some("cancelled: the record was deleted".into()))]
    );
    // A job for a row that does not exist (deleted without the trigger, or a wrong id).
    sqlx::query("SELECT embq.enqueue('documents', '999999', 'nobody home')").execute(&mut owner).await.unwrap();
    let s = drain(&app).await;
    assert_eq!((s.processed, s.dead), (0, 0), "{s:?}");
    assert_eq!(
        job_states(&mut owner, 999_999).await,
        vec![(
            "cancelled".into(),
            Some("cancelled: public.documents has no row with id = '999999'; the vector was not stored".into())
        )]
    );
    assert_eq!(app.q.stats().await.unwrap().cancelled, 2);
    // A key that does not fit the key column's type is the job's own failure: dead-lettered.
    sqlx::query("SELECT embq.enqueue('documents', 'not-a-number', 'x')").execute(&mut owner).await.unwrap();
    drain(&app).await;
    let dead = app.q.dead_jobs(5).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].last_error.as_deref().unwrap_or("").contains("not-a-number"), "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_job_never_overwrites_the_vector_of_newer_text_in_the_apps_row() {
    let app = app().await;
    let mut alice = as_user(&app, "alice").await;
    let id = insert(&mut alice, "Note", "first").await;
    let lease = |n: &str| Lease { owner: n.into(), token: uuid::Uuid::new_v4().to_string() };
    let (l1, l2) = (lease("slow"), lease("fast"));
    let model = app.cfg.model.clone();
    let old = app.q.claim(1, &l1, Duration::from_secs(30), &model).await.unwrap();
    sqlx::query("UPDATE public.documents SET body = 'second' WHERE id = $1")
        .bind(id)
        .execute(&mut alice)
        .await
        .unwrap();
    let new = app.q.claim(1, &l2, Duration::from_secs(30), &model).await.unwrap();
    let v_old = embed(&app.cfg, "Note\n\nfirst").await;
    let v_new = embed(&app.cfg, "Note\n\nsecond").await;
    app.q.finish(&l2, &model, &[(new[0].id, Outcome::Done(v_new.clone()))]).await.unwrap();
    app.q.finish(&l1, &model, &[(old[0].id, Outcome::Done(v_old))]).await.unwrap();
    let mut owner = PgConnection::connect(&app.url).await.unwrap();
    assert_eq!(stored_vector(&mut owner, id).await, Some(v_new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearest_neighbour_search_uses_the_hnsw_index_and_embq_search_finds_the_row() {
    let app = app().await;
    let mut owner = PgConnection::connect(&app.url).await.unwrap();
    // Enough rows that the planner prefers the index to a scan.
    sqlx::query(
        "INSERT INTO public.documents (user_id, title, body)
         SELECT 'alice', 'Receipt ' || g, 'merchant ' || (g % 97) || ' total ' || g FROM generate_series(1, 2000) g",
    )
    .execute(&mut owner)
    .await
    .unwrap();
    let s = drain(&app).await;
    assert_eq!(s.processed, 2000);
    sqlx::query("ANALYZE public.documents").execute(&mut owner).await.unwrap();
    let q = embed(&app.cfg, "Receipt 42\n\nmerchant 42 total 42").await;
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT d.id FROM public.documents d WHERE d.embedding IS NOT NULL
          ORDER BY d.embedding OPERATOR(extensions.<=>) $1::text::extensions.vector LIMIT 5",
    )
    .bind(text(&q))
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert!(plan.iter().any(|l| l.contains("documents_embedding_idx")), "{}", plan.join("\n"));
    let found = app.q.search(&q, &app.cfg.model, 3, Some("documents")).await.unwrap();
    assert_eq!(found.method, SearchMethod::Destination("public.documents.embedding".into()));
    assert_eq!(found.hits[0].text.as_deref(), Some("Receipt 42\n\nmerchant 42 total 42"));
    assert!((found.hits[0].score - 1.0).abs() < 1e-5, "{:?}", found.hits[0]);
    let row = sqlx::query("SELECT id FROM public.documents WHERE title = 'Receipt 42'").fetch_one(&mut owner).await;
    assert_eq!(found.hits[0].source_id, row.unwrap().get::<i64, _>(0).to_string());
}

/// pgvector's text form of a vector.
fn text(v: &[f32]) -> String {
    format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_are_checked_against_the_catalog() {
    let app = app().await;
    let mut owner = PgConnection::connect(&app.url).await.unwrap();
    let cases = [
        ("'public.nope', 'embedding'", "relation \"public.nope\" does not exist"),
        ("'public.documents', 'missing'", "has no column missing"),
        ("'public.documents', 'title'", "is of type text, not vector"),
        ("'public.documents', 'embedding', 'user_id'", "is not unique on its own"),
        ("'public.documents', 'embedding\"; DROP TABLE public.documents; --'", "has no column"),
    ];
    for (args, want) in cases {
        let e =
            sqlx::query(&format!("SELECT embq.add_destination('x', {args})")).execute(&mut owner).await.unwrap_err();
        assert!(e.to_string().contains(want), "{args}: {e}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM public.documents").fetch_one(&mut owner).await.unwrap();
    assert_eq!(n, 0, "the table is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_registered_after_vectors_were_stored_adopts_them() {
    let url = support::pg::fresh_supabase_db().await;
    let cfg = support::config_at(&url, &[("EMBEDDING_DIMENSIONS", "8"), ("QUEUE_POLL_INTERVAL", "50ms")]);
    let q = support::queue_with(&cfg, &support::jobs(3, |i| format!("note {i}"))).await;
    support::drain(support::harness(&cfg, q.clone(), None), Duration::from_secs(60)).await;
    let mut owner = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE public.notes (id bigint PRIMARY KEY, embedding extensions.vector(8));
         INSERT INTO public.notes (id) VALUES (0), (1), (2);
         SELECT embq.add_destination('doc', 'public.notes', 'embedding');",
    )
    .execute(&mut owner)
    .await
    .unwrap();
    let moved: i64 = sqlx::query_scalar("SELECT count(*) FROM public.notes WHERE embedding IS NOT NULL")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert_eq!(moved, 3, "the stored vectors moved into the app's rows");
    let embq_copy: i64 =
        sqlx::query_scalar("SELECT count(*) FROM embq.embeddings WHERE source_type = 'doc' AND embedding IS NOT NULL")
            .fetch_one(&mut owner)
            .await
            .unwrap();
    assert_eq!(embq_copy, 0, "and are kept once");
    // Unchanged text still costs nothing, and the row keeps its vector.
    q.enqueue(&support::jobs(3, |i| format!("note {i}")), &embq::queue::no_progress).await.unwrap();
    let s = support::drain(support::harness(&cfg, q.clone(), None), Duration::from_secs(60)).await;
    assert_eq!((s.processed, s.unchanged), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_queues_rows_that_predate_the_trigger() {
    let app = app().await;
    let mut owner = PgConnection::connect(&app.url).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE public.documents DISABLE TRIGGER documents_embed_insert;
         INSERT INTO public.documents (user_id, title, body) VALUES ('alice', 'Old', 'from before'), ('bob', 'Older', 'also');
         ALTER TABLE public.documents ENABLE TRIGGER documents_embed_insert;",
    )
    .execute(&mut owner)
    .await
    .unwrap();
    assert_eq!(app.q.stats().await.unwrap().ready, 0);
    sqlx::raw_sql(BACKFILL).execute(&mut owner).await.unwrap();
    assert_eq!(drain(&app).await.processed, 2);
    let missing: i64 = sqlx::query_scalar("SELECT count(*) FROM public.documents WHERE embedding IS NULL")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert_eq!(missing, 0);
    sqlx::raw_sql(BACKFILL).execute(&mut owner).await.unwrap();
    assert_eq!(app.q.stats().await.unwrap().ready, 0, "nothing left to backfill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_apps_table_refuses_dead_letters_only_that_job() {
    let app = app().await;
    let mut owner = PgConnection::connect(&app.url).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE public.documents ADD CONSTRAINT no_vector_for_drafts CHECK (title <> 'draft' OR embedding IS NULL);
         CREATE FUNCTION public.documents_guard() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.title = 'refuse me' THEN RAISE EXCEPTION 'the app refuses this row'; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER documents_guard BEFORE UPDATE OF embedding ON public.documents
           FOR EACH ROW EXECUTE FUNCTION public.documents_guard();",
    )
    .execute(&mut owner)
    .await
    .unwrap();
    let mut alice = as_user(&app, "alice").await;
    let mut ids = Vec::new();
    for title in ["ok 1", "draft", "ok 2", "refuse me", "ok 3"] {
        ids.push(insert(&mut alice, title, "some text").await);
    }
    let s = drain(&app).await; // MAX_ATTEMPTS=1: each refused job is dead at once, and the drain ends
    assert_eq!((s.processed, s.dead), (3, 2), "{s:?}");
    let dead = app.q.dead_jobs(10).await.unwrap();
    let errors: Vec<&str> = dead.iter().filter_map(|d| d.last_error.as_deref()).collect();
    assert!(errors.iter().any(|e| e.contains("no_vector_for_drafts")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("the app refuses this row")), "{errors:?}");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(stored_vector(&mut owner, *id).await.is_some(), [0, 2, 4].contains(&i), "document {id}");
    }
}
