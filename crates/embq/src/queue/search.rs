//! Nearest stored vectors to a query: ranked by PostgreSQL (pgvector), or scanned here where the
//! store cannot rank them (SQLite, `real[]` columns).

use serde::Serialize;

use crate::vector::cosine;

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct SearchHit {
    /// Source type.
    pub source_type: String,
    /// Source id.
    pub source_id: String,
    /// Content type.
    pub content_type: String,
    /// The model that made the stored vector.
    pub model: String,
    /// Cosine similarity (1 = same direction).
    pub score: f64,
    /// The text the vector was made from, while its job is kept.
    pub text: Option<String>,
}

/// Who ranked the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SearchMethod {
    /// PostgreSQL, through `embq.search` (pgvector: the HNSW index when there is one).
    Database,
    /// PostgreSQL, in a write-back destination's own table (named).
    Destination(String),
    /// This process, reading every stored vector of the model.
    ClientScan,
}

/// Results, best first, and how they were found.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    /// Who ranked them.
    pub method: SearchMethod,
    /// Best first.
    pub hits: Vec<SearchHit>,
}

/// Ranks stored vectors by cosine similarity to `query`; vectors of other dimensions are skipped.
pub fn scan(stored: impl IntoIterator<Item = StoredEmbedding>, query: &[f32], k: usize) -> Vec<SearchHit> {
    let mut scored: Vec<(f32, StoredEmbedding)> =
        stored.into_iter().filter(|e| e.vector.len() == query.len()).map(|e| (cosine(query, &e.vector), e)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .take(k)
        .map(|(score, e)| SearchHit {
            source_type: e.source_type,
            source_id: e.source_id,
            content_type: e.content_type,
            model: e.model,
            score: f64::from(score),
            text: e.text,
        })
        .collect()
}

/// A stored embedding, for search.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StoredEmbedding {
    /// Source type.
    pub source_type: String,
    /// Source id.
    pub source_id: String,
    /// Content type.
    pub content_type: String,
    /// Model.
    pub model: String,
    /// The vector (PostgreSQL reads its `embedding` column as `real[]`).
    #[sqlx(rename = "embedding")]
    pub vector: Vec<f32>,
    /// The text it was made from, while its job is kept.
    pub text: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, v: Vec<f32>) -> StoredEmbedding {
        StoredEmbedding {
            source_type: "r".into(),
            source_id: id.into(),
            content_type: "default".into(),
            model: "m".into(),
            vector: v,
            text: Some(format!("text {id}")),
        }
    }

    #[test]
    fn scan_ranks_by_cosine_and_skips_other_dimensions() {
        let hits = scan(
            vec![stored("far", vec![0.0, 1.0]), stored("near", vec![1.0, 0.1]), stored("odd", vec![1.0])],
            &[1.0, 0.0],
            5,
        );
        let ids: Vec<&str> = hits.iter().map(|h| h.source_id.as_str()).collect();
        assert_eq!(ids, ["near", "far"]);
        assert_eq!(hits[0].text.as_deref(), Some("text near"));
        assert!(hits[0].score > 0.99 && hits[1].score.abs() < 1e-6);
    }
}
