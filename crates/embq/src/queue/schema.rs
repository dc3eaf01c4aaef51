//! Schema migrations for both stores, embedded in the binary.

use super::QueueError;

/// The schema version this binary reads and writes.
pub const SCHEMA_VERSION: i32 = 9;

/// PostgreSQL migrations, in order; index + 1 is the version.
pub(super) const POSTGRES: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_rate_budgets.sql"),
    include_str!("../../migrations/postgres/0003_rate_windows.sql"),
    include_str!("../../migrations/postgres/0004_inline_vectors.sql"),
    include_str!("../../migrations/postgres/0005_running_key.sql"),
    include_str!("../../migrations/postgres/0006_destinations.sql"),
    include_str!("../../migrations/postgres/0007_enqueue_limits.sql"),
    include_str!("../../migrations/postgres/0008_rate_shape.sql"),
    include_str!("../../migrations/postgres/0009_batch_lane.sql"),
];

/// SQLite migrations, in order; index + 1 is the version.
pub(super) const SQLITE: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_rate_budgets.sql"),
    include_str!("../../migrations/sqlite/0003_rate_windows.sql"),
    include_str!("../../migrations/sqlite/0004_inline_vectors.sql"),
    include_str!("../../migrations/sqlite/0005_running_key.sql"),
    include_str!("../../migrations/sqlite/0006_destinations.sql"),
    include_str!("../../migrations/sqlite/0007_enqueue_limits.sql"),
    include_str!("../../migrations/sqlite/0008_rate_shape.sql"),
    include_str!("../../migrations/sqlite/0009_batch_lane.sql"),
];

/// Compares the stored version with ours and says what to do when they differ.
pub(super) fn check_version(found: Option<i32>) -> Result<(), QueueError> {
    match found {
        None => Err(QueueError::Schema(
            "the embq schema is not installed in this database: run `embq migrate` first".into(),
        )),
        Some(v) if v < SCHEMA_VERSION => Err(QueueError::Schema(format!(
            "the embq schema is at version {v}, this binary needs version {SCHEMA_VERSION}: run `embq migrate`"
        ))),
        Some(v) if v > SCHEMA_VERSION => Err(QueueError::Schema(format!(
            "the embq schema is at version {v}, newer than this binary's version {SCHEMA_VERSION}: \
             upgrade embq before running it against this database"
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_mismatch_says_what_to_do() {
        assert!(check_version(Some(SCHEMA_VERSION)).is_ok());
        assert!(check_version(None).unwrap_err().to_string().contains("run `embq migrate` first"));
        assert!(check_version(Some(SCHEMA_VERSION + 1)).unwrap_err().to_string().contains("upgrade embq"));
        assert!(check_version(Some(0)).unwrap_err().to_string().contains("run `embq migrate`"));
        assert_eq!(POSTGRES.len(), SCHEMA_VERSION as usize);
        assert_eq!(SQLITE.len(), SCHEMA_VERSION as usize);
    }
}
