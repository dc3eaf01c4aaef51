//! The vector column of `embq.embeddings` (and of write-back destinations) as the catalog has it:
//! reading its type, converting it to the configured one at migration, the re-embed path when
//! the dimensions change, and the `embq.search` SQL function that matches it.

use std::time::Instant;

use sqlx::PgConnection;

use super::pgvector::{choose, quote_ident, ColumnType, Encoding, VectorStorage};
use crate::queue::QueueError;

/// Where pgvector lives in this database: its schema (quoted) and its types' OIDs.
#[derive(Clone, Debug)]
pub struct Pgvector {
    /// The extension's schema, quoted for SQL (`"extensions"` on Supabase).
    pub schema: String,
    vector: (u32, u32),
    halfvec: (u32, u32),
}

impl Pgvector {
    /// The wire format for a column of type `t`.
    pub fn encoding(&self, t: ColumnType) -> Encoding {
        match t {
            ColumnType::RealArray => Encoding::Flat,
            ColumnType::Vector(_) => {
                Encoding::Pgvector { half: false, elem_oid: self.vector.0, array_oid: self.vector.1 }
            }
            ColumnType::Halfvec(_) => {
                Encoding::Pgvector { half: true, elem_oid: self.halfvec.0, array_oid: self.halfvec.1 }
            }
        }
    }
}

/// pgvector's schema and type OIDs, if the extension is installed in this database.
pub async fn pgvector(conn: &mut PgConnection) -> Result<Option<Pgvector>, QueueError> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT n.nspname::text, t.typname::text, t.oid::int8, t.typarray::int8
           FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
           JOIN pg_type t ON t.typnamespace = n.oid AND t.typname IN ('vector', 'halfvec')
          WHERE e.extname = 'vector'",
    )
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    let Some(schema) = rows.first().map(|r| quote_ident(&r.0)) else { return Ok(None) };
    let oids = |name: &str| {
        rows.iter().find(|r| r.1 == name).map(|r| (r.2 as u32, r.3 as u32)).ok_or_else(|| {
            QueueError::Schema(format!("pgvector is installed but its type {name} is missing: upgrade pgvector"))
        })
    };
    Ok(Some(Pgvector { schema, vector: oids("vector")?, halfvec: oids("halfvec")? }))
}

/// The type of `schema.table.column`, or `None` if there is no such column.
pub async fn column_type(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
    column: &str,
) -> Result<Option<ColumnType>, QueueError> {
    let row: Option<(String, i32)> = sqlx::query_as(
        "SELECT t.typname::text, a.atttypmod
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid
          WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .persistent(false)
    .bind(schema)
    .bind(table)
    .bind(column)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((name, typmod)) = row else { return Ok(None) };
    let dims = usize::try_from(typmod).ok().filter(|d| *d > 0);
    match name.as_str() {
        "_float4" => Ok(Some(ColumnType::RealArray)),
        "vector" => Ok(Some(ColumnType::Vector(dims))),
        "halfvec" => Ok(Some(ColumnType::Halfvec(dims))),
        other => Err(QueueError::Schema(format!(
            "{schema}.{table}.{column} is of type {other}; embq stores vectors as vector, halfvec or real[]"
        ))),
    }
}

/// What the migration should do with the vector column.
#[derive(Clone, Copy, Debug)]
pub struct ColumnPlan {
    /// `VECTOR_TYPE`.
    pub storage: VectorStorage,
    /// `EMBEDDING_DIMENSIONS`.
    pub dims: usize,
    /// `EMBEDDING_MODEL` is read by the re-embed.
    pub reembed: bool,
}

/// Makes pgvector usable if it can be (creating it, in schema `extensions` where that exists);
/// says why not otherwise.
async fn ensure_pgvector(conn: &mut PgConnection) -> Result<Result<Pgvector, String>, QueueError> {
    if let Some(p) = pgvector(conn).await? {
        return Ok(Ok(p));
    }
    let available: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')")
            .persistent(false)
            .fetch_one(&mut *conn)
            .await?;
    if !available {
        return Ok(Err("pgvector is not installed on this PostgreSQL server".into()));
    }
    let in_extensions: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'extensions')")
            .persistent(false)
            .fetch_one(&mut *conn)
            .await?;
    let create = if in_extensions {
        "CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA extensions"
    } else {
        "CREATE EXTENSION IF NOT EXISTS vector"
    };
    // Creating an extension needs privileges the role may lack; a savepoint keeps the migration going.
    sqlx::Executor::execute(&mut *conn, "SAVEPOINT embq_vector").await?;
    if let Err(e) = sqlx::Executor::execute(&mut *conn, create).await {
        sqlx::Executor::execute(&mut *conn, "ROLLBACK TO SAVEPOINT embq_vector").await?;
        let role: String =
            sqlx::query_scalar("SELECT current_user::text").persistent(false).fetch_one(&mut *conn).await?;
        let why = e.as_database_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
        return Ok(Err(format!(
            "pgvector is installed on the server but role {role} cannot create it ({why}); \
             ask the database owner to run `{create}`"
        )));
    }
    Ok(pgvector(conn).await?.ok_or_else(|| "CREATE EXTENSION vector left no vector type".to_string()))
}

/// Gives `embq.embeddings.embedding` the configured type; returns what it did, for the operator.
pub async fn migrate_column(conn: &mut PgConnection, plan: ColumnPlan, model: &str) -> Result<Vec<String>, QueueError> {
    let mut notes = Vec::new();
    let wants_pgvector = plan.storage != VectorStorage::RealArray;
    let pgv = if wants_pgvector { ensure_pgvector(conn).await? } else { Err("VECTOR_TYPE=real[]".into()) };
    let (target, why) = choose(plan.storage, plan.dims, pgv.as_ref().map(|_| ()).map_err(String::as_str))
        .map_err(QueueError::Schema)?;
    let schema = pgv.as_ref().map(|p| p.schema.clone()).unwrap_or_default();
    if plan.reembed {
        notes.extend(reembed(conn, plan.dims, model).await?);
    }
    let current = column_type(conn, "embq", "embeddings", "embedding")
        .await?
        .ok_or_else(|| QueueError::Schema("embq.embeddings has no embedding column".into()))?;
    if current == target {
        notes.push(format!("vectors are stored as {} ({why})", target.describe()));
    } else {
        let other: i64 =
            sqlx::query_scalar("SELECT count(*) FROM embq.embeddings WHERE embedding IS NOT NULL AND dimensions <> $1")
                .persistent(false)
                .bind(plan.dims as i32)
                .fetch_one(&mut *conn)
                .await?;
        if other > 0 && target.dims().is_some() {
            return Err(QueueError::Schema(format!(
                "{other} stored vectors have other dimensions than EMBEDDING_DIMENSIONS={}, so embq.embeddings cannot \
                 become {}: run `embq migrate --reembed` to drop them and queue their texts again, or set \
                 EMBEDDING_DIMENSIONS to the stored vectors' size",
                plan.dims,
                target.describe()
            )));
        }
        // An index on the column would be rebuilt for the old operator class: drop it first.
        sqlx::Executor::execute(&mut *conn, "DROP INDEX IF EXISTS embq.embeddings_embedding_hnsw_idx").await?;
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM embq.embeddings").persistent(false).fetch_one(&mut *conn).await?;
        let started = Instant::now();
        let ty = target.sql(&schema);
        let alter = format!(
            "ALTER TABLE embq.embeddings ALTER COLUMN embedding TYPE {ty} USING embedding::{ty}, \
             ALTER COLUMN embedding SET STORAGE EXTERNAL"
        );
        sqlx::Executor::execute(&mut *conn, alter.as_str()).await.map_err(|e| {
            QueueError::Schema(format!("could not change embq.embeddings.embedding to {}: {e}", target.describe()))
        })?;
        notes.push(format!(
            "vectors are now stored as {} ({why}); was {}. Rewriting embq.embeddings ({rows} rows) held an \
             ACCESS EXCLUSIVE lock on it for {} ms: claims and result writes waited meanwhile",
            target.describe(),
            current.describe(),
            started.elapsed().as_millis()
        ));
    }
    match &pgv {
        Ok(p) if target.is_pgvector() => create_search_function(conn, target, &p.schema).await?,
        _ => {
            sqlx::Executor::execute(&mut *conn, "DROP FUNCTION IF EXISTS embq.search").await?;
            if let Err(why) = &pgv {
                if wants_pgvector {
                    notes.push(format!("no embq.search SQL function: {why}"));
                }
            }
        }
    }
    Ok(notes)
}

/// Queues again the text of every stored vector made by another model or at other dimensions,
/// and drops those that cannot stay (other dimensions).
async fn reembed(conn: &mut PgConnection, dims: usize, model: &str) -> Result<Vec<String>, QueueError> {
    let (queued, dropped, orphans): (i64, i64, i64) = sqlx::query_as(
        "WITH stale AS (
             SELECT e.source_type, e.source_id, e.content_type, e.job_id, e.dimensions <> $1 AS misfit
               FROM embq.embeddings e WHERE e.model <> $2 OR e.dimensions <> $1
         ), queued AS (
             INSERT INTO embq.jobs AS j (source_type, source_id, content_type, text, text_sha256, priority, metadata)
             SELECT o.source_type, o.source_id, o.content_type, o.text, o.text_sha256, o.priority, o.metadata
               FROM stale s JOIN embq.jobs o ON o.id = s.job_id
             ON CONFLICT (source_type, source_id, content_type) WHERE state = 'ready' DO NOTHING
             RETURNING 1
         ), dropped AS (
             DELETE FROM embq.embeddings e USING stale s
              WHERE s.misfit AND e.source_type = s.source_type AND e.source_id = s.source_id
                AND e.content_type = s.content_type
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM queued), (SELECT count(*) FROM dropped),
                (SELECT count(*) FROM stale s WHERE NOT EXISTS (SELECT 1 FROM embq.jobs o WHERE o.id = s.job_id))",
    )
    .persistent(false)
    .bind(dims as i32)
    .bind(model)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::Executor::execute(&mut *conn, "SELECT pg_notify('embq_jobs', '')").await?;
    let mut notes = vec![format!(
        "re-embed: queued {queued} texts for {model} at {dims} dimensions; dropped {dropped} stored vectors of other dimensions"
    )];
    if orphans > 0 {
        notes.push(format!(
            "re-embed: {orphans} stored vectors have no job text left to queue: enqueue them from the source"
        ));
    }
    Ok(notes)
}

/// `embq.search(query, match_count, model, source_type)`: nearest stored vectors by cosine
/// distance, through the HNSW index when there is one. SECURITY INVOKER: callers need read
/// access to embq's tables (an app exposes it through a SECURITY DEFINER wrapper of its own).
async fn create_search_function(conn: &mut PgConnection, t: ColumnType, schema: &str) -> Result<(), QueueError> {
    let arg = match t {
        ColumnType::Halfvec(_) => format!("{schema}.halfvec"),
        _ => format!("{schema}.vector"),
    };
    let sql = format!(
        "DROP FUNCTION IF EXISTS embq.search;
         CREATE FUNCTION embq.search(
             query_embedding {arg},
             match_count integer DEFAULT 10,
             p_model text DEFAULT NULL,
             p_source_type text DEFAULT NULL)
         RETURNS TABLE (source_type text, source_id text, content_type text, model text,
                        similarity double precision, text text)
         LANGUAGE sql STABLE
         SET search_path = pg_catalog, {schema}, pg_temp
         AS $fn$
             SELECT e.source_type, e.source_id, e.content_type, e.model,
                    1 - (e.embedding <=> query_embedding), j.text
               FROM embq.embeddings e LEFT JOIN embq.jobs j ON j.id = e.job_id
              WHERE e.embedding IS NOT NULL
                AND (p_model IS NULL OR e.model = p_model)
                AND (p_source_type IS NULL OR e.source_type = p_source_type)
              ORDER BY e.embedding <=> query_embedding
              LIMIT match_count
         $fn$;"
    );
    sqlx::Executor::execute(&mut *conn, sql.as_str()).await?;
    Ok(())
}
