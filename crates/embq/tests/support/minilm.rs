//! The local model's fixtures: the independent NumPy reference vectors
//! (tests/fixtures/minilm/make_reference.py) and the model files, fetched once.

use std::path::PathBuf;

use serde::Deserialize;

/// The reference fixture: sentences with their token ids and vectors.
#[derive(Deserialize)]
pub struct Reference {
    pub sentences: Vec<Sentence>,
}

/// One reference sentence.
#[derive(Deserialize)]
pub struct Sentence {
    pub text: String,
    pub ids: Vec<u32>,
    pub vector: Vec<f32>,
}

/// Reads tests/fixtures/minilm/reference.json.
pub fn reference() -> Reference {
    serde_json::from_str(include_str!("../fixtures/minilm/reference.json")).expect("reference fixture")
}

/// MODEL_CACHE_DIR with all-MiniLM-L6-v2 in it (fetched and verified on first use).
pub fn cache_dir() -> PathBuf {
    let cache = super::config(&[]).model_cache_dir;
    embq::cli::model::fetch(&cache, false).unwrap_or_else(|e| panic!("cannot fetch the local model: {e}"));
    cache
}
