//! The schema: migrations applied under SQLite's write lock, and the version check.

use sqlx::{Sqlite, Transaction};

use super::SqliteQueue;
use crate::queue::schema::{self, Installed, SchemaFit, RECORDS_COMPAT_FROM, SCHEMA_VERSION};
use crate::queue::{MigrateOptions, MigrateReport, QueueError};

/// Applies pending migrations; vectors need no settling (blobs take any dimensions).
pub(super) async fn migrate_with(db: &SqliteQueue, _opts: MigrateOptions) -> Result<MigrateReport, QueueError> {
    let mut tx = db.begin().await?;
    let installed = installed(&mut tx).await?;
    if let Some(report) = schema::migrate_onto_newer(installed)? {
        tx.commit().await?;
        return Ok(report);
    }
    let current = installed.map_or(0, |i| i.version);
    for (i, script) in schema::SQLITE.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        sqlx::Executor::execute(&mut *tx, *script)
            .await
            .map_err(|e| QueueError::Schema(format!("migration {version} failed: {e}")))?;
        let insert = if version >= RECORDS_COMPAT_FROM {
            "INSERT INTO schema_version (version, applied_at, compatible_from) VALUES (?, ?, ?)"
        } else {
            "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"
        };
        sqlx::query(insert)
            .bind(version)
            .bind(db.now_ms())
            .bind(schema::compatible_from(version))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let notes = vec!["vectors are stored as little-endian f32 blobs; search scans them in the client".into()];
    Ok(MigrateReport { version: SCHEMA_VERSION, notes })
}

/// Fails unless this binary runs against the installed schema; see `Queue::check_schema`.
pub(super) async fn check_schema(db: &SqliteQueue) -> Result<SchemaFit, QueueError> {
    let mut tx = db.pool.begin().await?;
    let v = installed(&mut tx).await?;
    tx.commit().await?;
    schema::check_version(v)
}

/// The installed schema version and what it keeps working; `None` before the first migration.
async fn installed(tx: &mut Transaction<'static, Sqlite>) -> Result<Option<Installed>, QueueError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
    )
    .fetch_one(&mut **tx)
    .await?;
    if !exists {
        return Ok(None);
    }
    let version: Option<i32> =
        sqlx::query_scalar("SELECT max(version) FROM schema_version").fetch_one(&mut **tx).await?;
    let Some(version) = version else { return Ok(None) };
    if version < RECORDS_COMPAT_FROM {
        return Ok(Some(Installed { version, compatible_from: version }));
    }
    // Rows from before the column count as breaking for the binaries older than themselves.
    let compatible_from: Option<i32> =
        sqlx::query_scalar("SELECT max(COALESCE(compatible_from, version)) FROM schema_version")
            .fetch_one(&mut **tx)
            .await?;
    Ok(Some(Installed { version, compatible_from: compatible_from.unwrap_or(version) }))
}
