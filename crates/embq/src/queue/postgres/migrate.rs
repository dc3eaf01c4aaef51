//! The schema: migrations (one pod applies them, the others wait), the version check, and the
//! vector column and HNSW index that `embq migrate` settles from the configuration.

use sqlx::{Postgres, Transaction};

use super::column::{migrate_column, ColumnPlan};
use super::index::{create_hnsw, IndexOutcome};
use super::pgvector::VectorIndex;
use super::{PgQueue, NO_JIT_HERE};
use crate::queue::schema::{self, Installed, SchemaFit, RECORDS_COMPAT_FROM, SCHEMA_VERSION};
use crate::queue::{MigrateOptions, MigrateReport, QueueError};

/// Applies pending migrations and settles the vector column; see `Queue::migrate_with`.
pub(super) async fn migrate_with(pg: &PgQueue, opts: MigrateOptions) -> Result<MigrateReport, QueueError> {
    let mut tx = pg.begin().await?;
    // Several pods may run `embq migrate` at once; one applies, the others wait and find it done.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('embq.migrate'))").persistent(false).execute(&mut *tx).await?;
    let installed = installed(pg, &mut tx).await?;
    if let Some(report) = schema::migrate_onto_newer(installed)? {
        tx.commit().await?;
        return Ok(report);
    }
    let current = installed.map_or(0, |i| i.version);
    for (i, script) in schema::POSTGRES.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        // The column starts as real[]; its type is settled below, from the configuration.
        let sql = script.replace("__VECTOR_TYPE__", "real[]");
        sqlx::Executor::execute(&mut *tx, sql.as_str())
            .await
            .map_err(|e| QueueError::Schema(format!("migration {version} failed: {e}")))?;
        let insert = if version >= RECORDS_COMPAT_FROM {
            "INSERT INTO embq.schema_version (version, compatible_from) VALUES ($1, $2)"
        } else {
            "INSERT INTO embq.schema_version (version) VALUES ($1)"
        };
        sqlx::query(insert)
            .persistent(false)
            .bind(version)
            .bind(schema::compatible_from(version))
            .execute(&mut *tx)
            .await?;
    }
    let plan = ColumnPlan { storage: pg.vectors.storage, dims: pg.vectors.dims, reembed: opts.reembed };
    let mut notes = migrate_column(&mut tx, plan, &pg.vectors.model).await?;
    tx.commit().await?;
    *pg.layout.write().unwrap_or_else(|p| p.into_inner()) = None;
    if pg.vectors.index == VectorIndex::Hnsw {
        notes.push(index_note(&create_index(pg).await?));
    }
    Ok(MigrateReport { version: SCHEMA_VERSION, notes })
}

/// Fails unless this binary runs against the installed schema; see `Queue::check_schema`.
pub(super) async fn check_schema(pg: &PgQueue) -> Result<SchemaFit, QueueError> {
    let mut tx = pg.begin().await?;
    let v = installed(pg, &mut tx).await?;
    tx.commit().await?;
    schema::check_version(v)
}

/// Fails unless every typed vector column fits the configured dimensions.
pub(super) async fn check_vectors(pg: &PgQueue) -> Result<(), QueueError> {
    *pg.layout.write().unwrap_or_else(|p| p.into_inner()) = None;
    pg.layout().await?.check_dims(pg.vectors.dims)
}

/// Builds the HNSW index on a connection of its own (CONCURRENTLY).
pub(super) async fn create_index(pg: &PgQueue) -> Result<IndexOutcome, QueueError> {
    // CREATE INDEX CONCURRENTLY cannot run inside a transaction: a connection of its own.
    let mut conn = pg.acquire().await?;
    if !pg.persistent {
        sqlx::Executor::execute(&mut *conn, NO_JIT_HERE.trim_start_matches("SET LOCAL ")).await.ok();
    }
    create_hnsw(&mut conn).await
}

/// The installed schema version and what it keeps working; `None` before the first migration.
async fn installed(pg: &PgQueue, tx: &mut Transaction<'static, Postgres>) -> Result<Option<Installed>, QueueError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('embq.schema_version') IS NOT NULL")
        .persistent(pg.persistent)
        .fetch_one(&mut **tx)
        .await?;
    if !exists {
        return Ok(None);
    }
    let version: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM embq.schema_version")
        .persistent(pg.persistent)
        .fetch_one(&mut **tx)
        .await?;
    let Some(version) = version else { return Ok(None) };
    if version < RECORDS_COMPAT_FROM {
        return Ok(Some(Installed { version, compatible_from: version }));
    }
    // Rows from before the column count as breaking for the binaries older than themselves.
    let compatible_from: Option<i32> =
        sqlx::query_scalar("SELECT max(COALESCE(compatible_from, version)) FROM embq.schema_version")
            .persistent(pg.persistent)
            .fetch_one(&mut **tx)
            .await?;
    Ok(Some(Installed { version, compatible_from: compatible_from.unwrap_or(version) }))
}

/// What building the index did, for the operator.
fn index_note(o: &IndexOutcome) -> String {
    match o {
        IndexOutcome::Present => "the HNSW index embq.embeddings_embedding_hnsw_idx is in place".into(),
        IndexOutcome::Built { replaced_invalid, took } => format!(
            "built the HNSW index embq.embeddings_embedding_hnsw_idx in {} ms (CONCURRENTLY: writes went on){}",
            took.as_millis(),
            if *replaced_invalid { ", replacing an interrupted build" } else { "" }
        ),
    }
}
