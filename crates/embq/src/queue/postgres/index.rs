//! The HNSW cosine index on `embq.embeddings.embedding`: built with `CREATE INDEX CONCURRENTLY`
//! (writes go on meanwhile), outside any transaction, and resumable: an interrupted build leaves
//! an invalid index behind, which the next run drops and builds again.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use super::column::column_type;
use crate::queue::QueueError;

/// The index's name.
pub const HNSW_INDEX: &str = "embeddings_embedding_hnsw_idx";

/// What `create_hnsw` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOutcome {
    /// A valid index was already there.
    Present,
    /// Built now; `replaced_invalid` when an interrupted build was cleaned up first.
    Built {
        /// An invalid leftover was dropped first.
        replaced_invalid: bool,
        /// How long the build took.
        took: Duration,
    },
}

/// Builds the HNSW index unless a valid one exists. `conn` must not be inside a transaction.
pub async fn create_hnsw(conn: &mut PgConnection) -> Result<IndexOutcome, QueueError> {
    let column = column_type(conn, "embq", "embeddings", "embedding")
        .await?
        .ok_or_else(|| QueueError::Schema("embq.embeddings has no embedding column: run `embq migrate`".into()))?;
    let ops = column.hnsw_ops().map_err(|why| QueueError::Invalid(format!("cannot build an HNSW index: {why}")))?;
    let valid: Option<bool> = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'embq' AND c.relname = $1",
    )
    .persistent(false)
    .bind(HNSW_INDEX)
    .fetch_optional(&mut *conn)
    .await?;
    if valid == Some(true) {
        return Ok(IndexOutcome::Present);
    }
    let replaced_invalid = valid == Some(false);
    if replaced_invalid {
        let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS embq.{HNSW_INDEX}");
        sqlx::Executor::execute(&mut *conn, drop.as_str()).await?;
    }
    let started = Instant::now();
    // pgvector's operator classes live in its own schema: name the class through search_path.
    let schema: Option<String> = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'",
    )
    .persistent(false)
    .fetch_optional(&mut *conn)
    .await?;
    let ops = match schema {
        Some(s) => format!("{}.{ops}", super::pgvector::quote_ident(&s)),
        None => ops.to_string(),
    };
    let sql =
        format!("CREATE INDEX CONCURRENTLY IF NOT EXISTS {HNSW_INDEX} ON embq.embeddings USING hnsw (embedding {ops})");
    sqlx::Executor::execute(&mut *conn, sql.as_str()).await?;
    Ok(IndexOutcome::Built { replaced_invalid, took: started.elapsed() })
}
