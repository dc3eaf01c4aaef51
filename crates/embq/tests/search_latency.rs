//! Search benchmark (ignored; recorded in BENCHMARKS.md): `Queue::search` (what `embq search`
//! runs) over 100,000 stored 384-dimension vectors on PostgreSQL with pgvector, three ways side by
//! side on the same data and the same 100 queries:
//!
//! - client scan: every stored vector read into this process and ranked here (what `embq search`
//!   did before pgvector was used, and still does for `real[]` and SQLite);
//! - database, exact: `embq.search` before any index exists (pgvector ranks all rows);
//! - database, HNSW: `embq.search` after `embq index create` (pgvector's defaults: m = 16,
//!   ef_construction = 64, ef_search = 40); recall@10 is measured against the exact ranking.
//!
//! Vectors come from the hash provider over texts of 8 words drawn from a 2,000-word vocabulary;
//! each query is a stored text with 3 of its 8 words replaced, so it has true near neighbours.
//! Recall counts a returned hit as found when it is one of the exact top 10, or ties the exact
//! tenth score (texts this alike tie often, and which of the tied rows is "the" tenth is arbitrary);
//! the strict, id-only figure is printed too.
//!
//! ```sh
//! source scripts/lib/pg.sh && pg_start
//! cargo test --release -p embq --no-default-features --test search_latency -- --ignored --nocapture
//! ```

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use embq::queue::{scan, IndexOutcome, NewJob, SearchMethod};
use rand::{Rng, SeedableRng};

const ROWS: usize = 100_000;
const QUERIES: usize = 100;
const K: usize = 10;

fn text(rng: &mut rand::rngs::StdRng) -> String {
    (0..8).map(|_| format!("w{}", rng.gen_range(0..2000))).collect::<Vec<_>>().join(" ")
}

fn p50(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --release"]
async fn search_latency_at_100k_vectors() {
    let url = support::pg::fresh_supabase_db().await;
    let cfg = support::config_at(
        &url,
        &[
            ("EMBEDDING_DIMENSIONS", "384"),
            ("BATCH_SIZE", "500"),
            ("MAX_CONCURRENT_JOBS", "4"),
            ("QUEUE_POLL_INTERVAL", "50ms"),
        ],
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let jobs: Vec<NewJob> = (0..ROWS)
        .map(|i| NewJob {
            source_type: "doc".into(),
            source_id: i.to_string(),
            content_type: "default".into(),
            text: text(&mut rng),
            priority: 0,
            metadata: None,
            lane: embq::queue::Lane::Online,
        })
        .collect();
    let q = support::queue_with(&cfg, &jobs).await;
    let s = support::drain(support::harness(&cfg, q.clone(), None), Duration::from_secs(600)).await;
    assert_eq!(s.processed, ROWS as u64);
    let provider = cfg.provider().unwrap();
    let texts: Vec<String> = (0..QUERIES)
        .map(|_| {
            let mut words: Vec<String> = jobs[rng.gen_range(0..ROWS)].text.split(' ').map(str::to_string).collect();
            for _ in 0..3 {
                let at = rng.gen_range(0..words.len());
                words[at] = format!("w{}", rng.gen_range(0..2000));
            }
            words.join(" ")
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let queries = provider.embed(&refs).await.unwrap().vectors;
    let model = cfg.model.clone();

    let (mut scan_ms, mut exact_ms, mut hnsw_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut exact_top = Vec::new();
    for query in &queries {
        let t = Instant::now();
        let hits = scan(q.embeddings(&model, 1_000_000).await.unwrap(), query, K);
        scan_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let db = q.search(query, &model, K, None).await.unwrap();
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(db.method, SearchMethod::Database);
        // Ties at the tenth place may differ between f32 and f64 ranking: compare by score.
        assert!((db.hits[K - 1].score - hits[K - 1].score).abs() < 1e-5);
        let ids = db.hits.iter().map(|h| h.source_id.clone()).collect::<HashSet<_>>();
        exact_top.push((ids, db.hits[K - 1].score));
    }
    let t = Instant::now();
    let built = q.create_index().await.unwrap();
    let build = t.elapsed();
    assert!(matches!(built, IndexOutcome::Built { .. }));
    let (mut found, mut strict) = (0usize, 0usize);
    for (query, (exact, tenth)) in queries.iter().zip(&exact_top) {
        let t = Instant::now();
        let db = q.search(query, &model, K, None).await.unwrap();
        hnsw_ms.push(t.elapsed().as_secs_f64() * 1e3);
        strict += db.hits.iter().filter(|h| exact.contains(&h.source_id)).count();
        found += db.hits.iter().filter(|h| exact.contains(&h.source_id) || h.score >= tenth - 1e-6).count();
    }
    let recall = found as f64 / (QUERIES * K) as f64;
    let strict = strict as f64 / (QUERIES * K) as f64;
    println!("{ROWS} vectors x 384 dims, {QUERIES} queries, k = {K}");
    println!("client scan       p50 {:>9.2} ms", p50(scan_ms.clone()));
    println!("database, exact   p50 {:>9.2} ms", p50(exact_ms));
    println!("database, HNSW    p50 {:>9.2} ms  (index built in {:.1} s)", p50(hnsw_ms.clone()), build.as_secs_f64());
    println!("HNSW recall@{K}   {recall:.3} (ties at the tenth score count; by id alone {strict:.3})");
    println!("client scan / HNSW: {:.0}x", p50(scan_ms) / p50(hnsw_ms));

    // The recall/latency trade: pgvector's hnsw.ef_search (40 by default), as a session setting
    // (`ALTER DATABASE … SET hnsw.ef_search = …` makes it every session's).
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
    for ef in [40, 100, 200] {
        sqlx::query(&format!("SET hnsw.ef_search = {ef}")).execute(&mut c).await.unwrap();
        let (mut ms, mut found) = (Vec::new(), 0usize);
        for (query, (exact, tenth)) in queries.iter().zip(&exact_top) {
            let literal = format!("[{}]", query.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","));
            let t = Instant::now();
            let hits: Vec<(String, f64)> =
                sqlx::query_as("SELECT source_id, similarity FROM embq.search($1::text::extensions.vector, $2, $3)")
                    .bind(literal)
                    .bind(K as i32)
                    .bind(&model)
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            found += hits.iter().filter(|h| exact.contains(&h.0) || h.1 >= tenth - 1e-6).count();
        }
        println!("ef_search {ef:>3}: p50 {:>6.2} ms, recall@{K} {:.3}", p50(ms), found as f64 / (QUERIES * K) as f64);
    }
}
