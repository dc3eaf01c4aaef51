//! Nearest-vector search in PostgreSQL: ranked by pgvector (`embq.search`), in a write-back
//! destination's own table, or, for `real[]` columns, scanned in the client.

use sqlx::FromRow;

use super::layout::Destination;
use super::pgvector::text_literal;
use super::PgQueue;
use crate::queue::search::{scan, Search, SearchHit, SearchMethod};
use crate::queue::{QueueError, StoredEmbedding};

/// Most stored vectors a client-side search reads (real[] columns, where PostgreSQL cannot rank them).
const SCAN_LIMIT: i64 = 1_000_000;

/// The nearest stored vectors: ranked by pgvector, in a destination's table, or scanned here.
pub(super) async fn search(
    pg: &PgQueue,
    query: &[f32],
    model: &str,
    k: usize,
    source_type: Option<&str>,
) -> Result<Search, QueueError> {
    let layout = pg.layout().await?;
    let k = i64::try_from(k).unwrap_or(i64::MAX);
    if let Some(d) = source_type.and_then(|st| layout.destinations.iter().find(|d| d.source_type == st)) {
        return search_destination(pg, d, query, k).await;
    }
    let Some(cast) = layout.search_cast() else {
        let stored = embeddings(pg, model, SCAN_LIMIT).await?;
        let stored = stored.into_iter().filter(|e| source_type.is_none_or(|st| e.source_type == st));
        return Ok(Search { method: SearchMethod::ClientScan, hits: scan(stored, query, k as usize) });
    };
    let mut tx = pg.begin().await?;
    let rows: Vec<SearchHit> = sqlx::query_as(&format!(
        "SELECT source_type, source_id, content_type, model, similarity AS score, text
           FROM embq.search($1::text::{cast}, $2::int, $3, $4)"
    ))
    .persistent(false)
    .bind(text_literal(query))
    .bind(k.min(i64::from(i32::MAX)) as i32)
    .bind(model)
    .bind(source_type)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Search { method: SearchMethod::Database, hits: rows })
}

/// The nearest rows of a write-back destination's own table, with the text each was embedded from.
async fn search_destination(pg: &PgQueue, d: &Destination, query: &[f32], k: i64) -> Result<Search, QueueError> {
    let mut tx = pg.begin().await?;
    let near: Vec<NearRow> =
        sqlx::query_as(&d.search_sql()).persistent(false).bind(text_literal(query)).bind(k).fetch_all(&mut *tx).await?;
    let ids: Vec<&str> = near.iter().map(|n| n.source_id.as_str()).collect();
    let meta: Vec<KeyRow> = sqlx::query_as(
        "SELECT e.source_id, e.model, j.text FROM embq.embeddings e LEFT JOIN embq.jobs j ON j.id = e.job_id
          WHERE e.source_type = $1 AND e.content_type = $2 AND e.source_id = ANY($3)",
    )
    .persistent(false)
    .bind(&d.source_type)
    .bind(&d.content_type)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let hits = near
        .into_iter()
        .map(|n| {
            let m = meta.iter().find(|m| m.source_id == n.source_id);
            SearchHit {
                source_type: d.source_type.clone(),
                content_type: d.content_type.clone(),
                model: m.map(|m| m.model.clone()).unwrap_or_default(),
                text: m.and_then(|m| m.text.clone()),
                score: 1.0 - n.distance,
                source_id: n.source_id,
            }
        })
        .collect();
    Ok(Search { method: SearchMethod::Destination(d.display.clone()), hits })
}

/// All stored embeddings of one model, as `real[]`.
pub(super) async fn embeddings(pg: &PgQueue, model: &str, limit: i64) -> Result<Vec<StoredEmbedding>, QueueError> {
    let mut tx = pg.begin().await?;
    let stored: Vec<StoredEmbedding> = pg
        .q_as(
            "SELECT e.source_type, e.source_id, e.content_type, e.model, e.embedding::real[], j.text
           FROM embq.embeddings e LEFT JOIN embq.jobs j ON j.id = e.job_id
          WHERE e.model = $1 AND e.embedding IS NOT NULL LIMIT $2",
        )
        .bind(model)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(stored)
}

/// One of a destination's nearest rows.
#[derive(FromRow)]
struct NearRow {
    source_id: String,
    distance: f64,
}

/// What embq knows of a destination row's key: the model and text of its vector.
#[derive(FromRow)]
struct KeyRow {
    source_id: String,
    model: String,
    text: Option<String>,
}
