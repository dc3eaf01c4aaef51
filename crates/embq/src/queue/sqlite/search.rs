//! Nearest-vector search in SQLite: every stored vector of the model, scanned in the client.

use sqlx::FromRow;

use super::SqliteQueue;
use crate::queue::search::{scan, Search, SearchMethod};
use crate::queue::{QueueError, StoredEmbedding};
use crate::vector;

/// The `k` stored vectors nearest to `query`, scanned here.
pub(super) async fn search(
    db: &SqliteQueue,
    query: &[f32],
    model: &str,
    k: usize,
    source_type: Option<&str>,
) -> Result<Search, QueueError> {
    let stored = embeddings(db, model, i64::MAX).await?;
    let stored = stored.into_iter().filter(|e| source_type.is_none_or(|st| e.source_type == st));
    Ok(Search { method: SearchMethod::ClientScan, hits: scan(stored, query, k) })
}

/// All stored embeddings of one model, decoded from their blobs.
pub(super) async fn embeddings(db: &SqliteQueue, model: &str, limit: i64) -> Result<Vec<StoredEmbedding>, QueueError> {
    let rows: Vec<BlobEmbedding> = sqlx::query_as(
        "SELECT e.source_type, e.source_id, e.content_type, e.model, e.embedding, j.text
           FROM embeddings e LEFT JOIN jobs j ON j.id = e.job_id WHERE e.model = ?1 LIMIT ?2",
    )
    .bind(model)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.into_iter().map(StoredEmbedding::try_from).collect()
}

/// A stored embedding as SQLite keeps it: the vector as a little-endian f32 blob.
#[derive(FromRow)]
struct BlobEmbedding {
    source_type: String,
    source_id: String,
    content_type: String,
    model: String,
    embedding: Vec<u8>,
    text: Option<String>,
}

impl TryFrom<BlobEmbedding> for StoredEmbedding {
    type Error = QueueError;

    fn try_from(r: BlobEmbedding) -> Result<Self, QueueError> {
        Ok(Self {
            vector: vector::from_le_bytes(&r.embedding)
                .map_err(|e| QueueError::Invalid(format!("stored vector is corrupt: {e}")))?,
            source_type: r.source_type,
            source_id: r.source_id,
            content_type: r.content_type,
            model: r.model,
            text: r.text,
        })
    }
}
