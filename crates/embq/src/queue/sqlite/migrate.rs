//! The schema: migrations applied under SQLite's write lock, and the version check.

use sqlx::{Sqlite, Transaction};

use super::SqliteQueue;
use crate::queue::schema::{self, SCHEMA_VERSION};
use crate::queue::{MigrateOptions, MigrateReport, QueueError};

/// Applies pending migrations; vectors need no settling (blobs take any dimensions).
pub(super) async fn migrate_with(db: &SqliteQueue, _opts: MigrateOptions) -> Result<MigrateReport, QueueError> {
    let mut tx = db.begin().await?;
    let current = schema_version(&mut tx).await?.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(schema::check_version(Some(current))
            .err()
            .unwrap_or_else(|| QueueError::Schema("schema is newer than this binary".into())));
    }
    for (i, script) in schema::SQLITE.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        sqlx::Executor::execute(&mut *tx, *script)
            .await
            .map_err(|e| QueueError::Schema(format!("migration {version} failed: {e}")))?;
        sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)")
            .bind(version)
            .bind(db.now_ms())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let notes = vec!["vectors are stored as little-endian f32 blobs; search scans them in the client".into()];
    Ok(MigrateReport { version: SCHEMA_VERSION, notes })
}

/// Fails unless the schema is exactly this binary's version.
pub(super) async fn check_schema(db: &SqliteQueue) -> Result<(), QueueError> {
    let mut conn = db.pool.acquire().await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
    )
    .fetch_one(&mut *conn)
    .await?;
    let v = if exists {
        sqlx::query_scalar("SELECT max(version) FROM schema_version").fetch_one(&mut *conn).await?
    } else {
        None
    };
    schema::check_version(v)
}

/// The installed schema version; `None` before the first migration.
async fn schema_version(tx: &mut Transaction<'static, Sqlite>) -> Result<Option<i32>, QueueError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
    )
    .fetch_one(&mut **tx)
    .await?;
    if !exists {
        return Ok(None);
    }
    Ok(sqlx::query_scalar("SELECT max(version) FROM schema_version").fetch_one(&mut **tx).await?)
}
