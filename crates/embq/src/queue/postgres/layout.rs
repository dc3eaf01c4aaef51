//! Where a finished batch's vectors go in PostgreSQL: `embq.embeddings`, and for the keys of a
//! write-back destination the app's own table. Read from the catalog once (checked: every name
//! exists and is quoted, every typed column fits the configured dimensions) and turned into the
//! one statement that records a batch.

use sqlx::PgConnection;

use super::column::{column_type, pgvector};
use super::pgvector::{quote_ident, ColumnType, Encoding};
use crate::queue::QueueError;

/// A destination as `embq.add_destination` registered it, checked against the catalog.
#[derive(Clone, Debug)]
pub struct Destination {
    /// Jobs of this source type...
    pub source_type: String,
    /// ...and content type go here.
    pub content_type: String,
    /// `schema.table.column`, unquoted, for messages.
    pub display: String,
    table: String,
    key: String,
    key_type: String,
    vector: String,
    vector_type: String,
    /// pgvector's `<=>`, qualified with its schema.
    distance: String,
    /// The vector column's type.
    pub column: ColumnType,
}

/// The vector storage of one database, as the statements need it.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `embq.embeddings.embedding`'s type.
    pub column: ColumnType,
    /// How a batch's vectors are sent.
    pub encoding: Encoding,
    /// Write-back destinations.
    pub destinations: Vec<Destination>,
    /// The statement that marks a batch done and stores its vectors.
    pub finish_sql: String,
    /// The element type of the vectors parameter (`real[]`, or pgvector's qualified type).
    pub cast: String,
}

#[derive(sqlx::FromRow)]
struct DestinationRow {
    source_type: String,
    content_type: String,
    table_schema: String,
    table_name: String,
    key_column: String,
    vector_column: String,
}

/// Reads the layout from the catalog.
pub async fn load(conn: &mut PgConnection) -> Result<Layout, QueueError> {
    let pgv = pgvector(conn).await?;
    let column = column_type(conn, "embq", "embeddings", "embedding")
        .await?
        .ok_or_else(|| QueueError::Schema("embq.embeddings has no embedding column: run `embq migrate`".into()))?;
    let schema = pgv.as_ref().map(|p| p.schema.clone()).unwrap_or_default();
    let encoding = match &pgv {
        Some(p) => p.encoding(column),
        None => Encoding::Flat,
    };
    let rows: Vec<DestinationRow> = sqlx::query_as(
        "SELECT source_type, content_type, table_schema, table_name, key_column, vector_column
           FROM embq.destinations ORDER BY source_type, content_type",
    )
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    let mut destinations = Vec::with_capacity(rows.len());
    for r in rows {
        let display = format!("{}.{}.{}", r.table_schema, r.table_name, r.vector_column);
        let column = column_type(conn, &r.table_schema, &r.table_name, &r.vector_column).await?.ok_or_else(|| {
            QueueError::Schema(format!(
                "destination of {}/{}: column {display} does not exist (re-register it with embq.add_destination)",
                r.source_type, r.content_type
            ))
        })?;
        if column.is_pgvector() && pgv.is_none() {
            return Err(QueueError::Schema(format!("{display} is a pgvector column but pgvector is not installed")));
        }
        let key_type: Option<String> = sqlx::query_scalar(
            "SELECT format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .persistent(false)
        .bind(&r.table_schema)
        .bind(&r.table_name)
        .bind(&r.key_column)
        .fetch_optional(&mut *conn)
        .await?;
        let key_type = key_type.ok_or_else(|| {
            QueueError::Schema(format!(
                "destination of {}/{}: key column {}.{}.{} does not exist",
                r.source_type, r.content_type, r.table_schema, r.table_name, r.key_column
            ))
        })?;
        destinations.push(Destination {
            table: format!("{}.{}", quote_ident(&r.table_schema), quote_ident(&r.table_name)),
            key: quote_ident(&r.key_column),
            key_type,
            vector: quote_ident(&r.vector_column),
            vector_type: column.sql(&schema),
            distance: format!("OPERATOR({schema}.<=>)"),
            source_type: r.source_type,
            content_type: r.content_type,
            display,
            column,
        });
    }
    let cast = match column {
        ColumnType::RealArray => "real[]".to_string(),
        t => format!("{schema}.{}", t.pg_name().unwrap_or("vector")),
    };
    let finish_sql = finish_sql(encoding, &cast, &destinations);
    Ok(Layout { column, encoding, destinations, finish_sql, cast })
}

impl Layout {
    /// Fails unless every typed column holds vectors of `dims` dimensions, naming both numbers.
    pub fn check_dims(&self, dims: usize) -> Result<(), QueueError> {
        if let Some(n) = self.column.dims().filter(|n| *n != dims) {
            return Err(QueueError::Schema(format!(
                "embq.embeddings.embedding is {} but EMBEDDING_DIMENSIONS is {dims}: run `embq migrate --reembed` to \
                 switch to {dims} dimensions (stored vectors of {n} are dropped and their texts queued again), or \
                 set EMBEDDING_DIMENSIONS={n}",
                self.column.describe()
            )));
        }
        for d in &self.destinations {
            if let Some(n) = d.column.dims().filter(|n| *n != dims) {
                return Err(QueueError::Schema(format!(
                    "{} is {} but EMBEDDING_DIMENSIONS is {dims}: alter that column to {dims} dimensions \
                     (its vectors are then re-embedded with `embq migrate --reembed`), or set EMBEDDING_DIMENSIONS={n}",
                    d.display,
                    d.column.describe()
                )));
            }
        }
        Ok(())
    }

    /// The type a search query is cast to, when PostgreSQL can rank the stored vectors itself.
    pub fn search_cast(&self) -> Option<&str> {
        self.column.is_pgvector().then_some(self.cast.as_str())
    }
}

impl Destination {
    /// `SELECT key::text, distance` of the `$3` nearest rows to `$1` (cast to this column's type).
    pub fn search_sql(&self) -> String {
        format!(
            "SELECT t.{key}::text AS source_id, (t.{vec} {op} $1::text::{ty})::float8 AS distance FROM {table} t \
             WHERE t.{vec} IS NOT NULL ORDER BY t.{vec} {op} $1::text::{ty} LIMIT $2",
            op = self.distance,
            key = self.key,
            vec = self.vector,
            ty = self.vector_type,
            table = self.table
        )
    }
}

/// Marks jobs $2 (under lease token $3) done and stores their vectors: model $4, $5 dimensions,
/// all vectors in parameter $6, the job's position picking its vector. Keys with a destination
/// ($7 source types, $8 content types) keep a NULL vector in embq.embeddings and write theirs
/// into the app's row; `missing` lists the jobs whose row no longer exists.
pub(super) fn finish_sql(encoding: Encoding, cast: &str, destinations: &[Destination]) -> String {
    let vector = encoding.element_sql("$6", cast, "d.ord", "$5");
    let (stored_vector, returning) = if destinations.is_empty() {
        (vector.clone(), "1".to_string())
    } else {
        (
            format!(
                "CASE WHEN (d.source_type, d.content_type) IN (SELECT * FROM unnest($7::text[], $8::text[])) \
                 THEN NULL ELSE {vector} END"
            ),
            "e.source_type, e.source_id, e.content_type, e.job_id".to_string(),
        )
    };
    let mut sql = format!(
        "WITH input AS (
        SELECT * FROM unnest($2::bigint[]) WITH ORDINALITY AS t(id, ord)
    ), done AS (
        UPDATE embq.jobs j
        SET state = 'done', finished_at = COALESCE($1::timestamptz, now()),
            updated_at = COALESCE($1::timestamptz, now()), last_error = NULL,
            lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
        FROM input i
        WHERE j.id = i.id AND j.state = 'running' AND j.lease_token = $3
        RETURNING j.id, j.source_type, j.source_id, j.content_type, j.text_sha256, i.ord
    ), stored AS (
        INSERT INTO embq.embeddings AS e
            (source_type, source_id, content_type, model, dimensions, embedding,
             text_sha256, job_id, updated_at)
        SELECT d.source_type, d.source_id, d.content_type, $4, $5,
               {stored_vector},
               d.text_sha256, d.id, COALESCE($1::timestamptz, now())
        FROM done d
        ON CONFLICT (source_type, source_id, content_type) DO UPDATE
        SET model = EXCLUDED.model, dimensions = EXCLUDED.dimensions,
            embedding = EXCLUDED.embedding, text_sha256 = EXCLUDED.text_sha256,
            job_id = EXCLUDED.job_id, updated_at = EXCLUDED.updated_at
        -- A slower worker finishing an older job must not overwrite newer text's vector.
        WHERE e.job_id <= EXCLUDED.job_id
        RETURNING {returning}
    )"
    );
    if destinations.is_empty() {
        sql.push_str("\n    SELECT (SELECT count(*) FROM done) AS done, (SELECT count(*) FROM stored) AS stored");
        return sql;
    }
    // Only the vectors whose bookkeeping row won the upsert reach the app's table.
    let mut written = Vec::new();
    for (k, d) in destinations.iter().enumerate() {
        let n = k + 1;
        let element = encoding.element_sql("$6", cast, "s.ord", "$5");
        sql.push_str(&format!(
            ", w{n} AS (
        UPDATE {table} t SET {vec} = ({element})::{ty}
        FROM (SELECT st.*, d.ord FROM stored st JOIN done d ON d.id = st.job_id) s
        WHERE s.source_type = $7[{n}] AND s.content_type = $8[{n}] AND t.{key} = s.source_id::{key_type}
        RETURNING s.job_id
    )",
            table = d.table,
            vec = d.vector,
            ty = d.vector_type,
            key = d.key,
            key_type = d.key_type,
        ));
        written.push(format!("SELECT job_id FROM w{n}"));
    }
    sql.push_str(&format!(
        "
    SELECT (SELECT count(*) FROM done) AS done, (SELECT count(*) FROM stored) AS stored,
           ARRAY(SELECT s.job_id FROM stored s
                  WHERE (s.source_type, s.content_type) IN (SELECT * FROM unnest($7::text[], $8::text[]))
                    AND s.job_id NOT IN ({})) AS missing",
        written.join(" UNION ALL ")
    ));
    sql
}

/// Cancels jobs whose destination row no longer exists and forgets their bookkeeping row.
pub const CANCEL_MISSING_SQL: &str = "WITH cancelled AS (
        UPDATE embq.jobs j
        SET state = 'cancelled', updated_at = COALESCE($1::timestamptz, now()),
            last_error = format('cancelled: %I.%I has no row with %I = %L; the vector was not stored',
                                d.table_schema, d.table_name, d.key_column, j.source_id)
        FROM embq.destinations d
        WHERE j.id = ANY($2) AND d.source_type = j.source_type AND d.content_type = j.content_type
        RETURNING j.id
    ), forgotten AS (
        DELETE FROM embq.embeddings WHERE job_id = ANY($2) RETURNING 1
    )
    SELECT (SELECT count(*) FROM cancelled) AS cancelled";

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(st: &str, table: &str) -> Destination {
        Destination {
            source_type: st.into(),
            content_type: "default".into(),
            display: format!("public.{table}.embedding"),
            table: format!("\"public\".{}", quote_ident(table)),
            key: "\"id\"".into(),
            key_type: "bigint".into(),
            vector: "\"embedding\"".into(),
            vector_type: "\"extensions\".vector(3)".into(),
            distance: "OPERATOR(\"extensions\".<=>)".into(),
            column: ColumnType::Vector(Some(3)),
        }
    }

    #[test]
    fn without_destinations_the_statement_stores_every_vector_in_embq() {
        let sql = finish_sql(Encoding::Flat, "real[]", &[]);
        assert!(sql.contains("($6::real[])[(d.ord - 1) * $5 + 1 : d.ord * $5]"), "{sql}");
        assert!(!sql.contains("$7"), "{sql}");
        let v = finish_sql(Encoding::Pgvector { half: false, elem_oid: 1, array_oid: 2 }, "\"x\".vector", &[]);
        assert!(v.contains("($6::\"x\".vector[])[d.ord]"), "{v}");
    }

    #[test]
    fn each_destination_writes_its_rows_with_quoted_names_and_reports_missing_ones() {
        let sql = finish_sql(Encoding::Flat, "real[]", &[dest("documents", "docs"), dest("notes", "we\"ird")]);
        assert!(sql.contains("UPDATE \"public\".\"docs\" t SET \"embedding\""), "{sql}");
        assert!(sql.contains("UPDATE \"public\".\"we\"\"ird\" t"), "{sql}");
        assert!(sql.contains("t.\"id\" = s.source_id::bigint"), "{sql}");
        assert!(sql.contains("s.source_type = $7[2]"), "{sql}");
        assert!(sql.contains("THEN NULL ELSE"), "{sql}");
        assert!(sql.contains("SELECT job_id FROM w1 UNION ALL SELECT job_id FROM w2"), "{sql}");
    }

    #[test]
    fn a_typed_column_of_other_dimensions_names_both_numbers() {
        let layout = Layout {
            column: ColumnType::Vector(Some(1536)),
            encoding: Encoding::Flat,
            destinations: vec![],
            finish_sql: String::new(),
            cast: String::new(),
        };
        let e = layout.check_dims(768).unwrap_err().to_string();
        assert!(e.contains("vector(1536)") && e.contains("EMBEDDING_DIMENSIONS is 768"), "{e}");
        assert!(layout.check_dims(1536).is_ok());
        let mut d = dest("documents", "docs");
        d.column = ColumnType::Vector(Some(1536));
        let l = Layout { column: ColumnType::RealArray, destinations: vec![d], ..layout };
        let e = l.check_dims(768).unwrap_err().to_string();
        assert!(e.contains("public.docs.embedding is vector(1536)"), "{e}");
    }
}
