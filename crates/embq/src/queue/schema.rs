//! Schema migrations for both stores, embedded in the binary, and which schema versions this
//! binary can run against.
//!
//! Each migration declares the oldest binary it keeps working ([`COMPATIBLE_FROM`]): an additive
//! migration (a new table, index or defaulted column) keeps the binaries before it working, a
//! breaking one (a dropped or renamed column, a changed meaning) names its own version. `embq
//! migrate` records the declaration beside the version, so a binary older than the schema can
//! tell whether it may run (a rollback across an additive migration) or must not.

use super::QueueError;

/// The schema version this binary reads and writes.
pub const SCHEMA_VERSION: i32 = 10;

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
    include_str!("../../migrations/postgres/0010_live_stats.sql"),
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
    include_str!("../../migrations/sqlite/0010_live_stats.sql"),
];

/// Per migration (index + 1 is the version): the oldest binary schema version that still runs
/// against a database with it applied. Versions 1 to 9 predate the declaration and count as
/// breaking; 10 only adds an index and a table.
pub(super) const COMPATIBLE_FROM: &[i32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 9];

/// The first version whose row in `schema_version` records `compatible_from`.
pub(super) const RECORDS_COMPAT_FROM: i32 = 10;

/// The oldest binary schema version that runs against migration `version`.
pub(super) fn compatible_from(version: i32) -> i32 {
    usize::try_from(version - 1).ok().and_then(|i| COMPATIBLE_FROM.get(i)).copied().unwrap_or(version)
}

/// What the database records about its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Installed {
    /// The newest migration applied.
    pub version: i32,
    /// The oldest binary schema version every applied migration keeps working.
    pub compatible_from: i32,
}

/// How this binary fits the installed schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaFit {
    /// The schema is exactly this binary's.
    Exact,
    /// The schema is newer, but every newer migration is additive for this binary.
    NewerCompatible {
        /// The installed version.
        installed: i32,
    },
}

/// Compares the stored schema with ours and says what to do when this binary cannot run on it.
pub(super) fn check_version(found: Option<Installed>) -> Result<SchemaFit, QueueError> {
    let Some(found) = found else {
        return Err(QueueError::Schema(
            "the embq schema is not installed in this database: run `embq migrate` first".into(),
        ));
    };
    let v = found.version;
    if v < SCHEMA_VERSION {
        return Err(QueueError::Schema(format!(
            "the embq schema is at version {v}, this binary needs version {SCHEMA_VERSION}: run `embq migrate`"
        )));
    }
    if v == SCHEMA_VERSION {
        return Ok(SchemaFit::Exact);
    }
    if found.compatible_from <= SCHEMA_VERSION {
        return Ok(SchemaFit::NewerCompatible { installed: v });
    }
    Err(QueueError::Schema(format!(
        "the embq schema is at version {v}, and a migration since this binary's version {SCHEMA_VERSION} is \
         breaking (binaries need schema version {} or newer): upgrade embq before running it against this database",
        found.compatible_from
    )))
}

/// What `embq migrate` does when the installed schema is newer than this binary (a rollback's
/// migrate Job runs the older image): `Some(report)` with nothing to apply when every newer
/// migration keeps this binary working, an error when one does not; `None` when not newer.
pub(super) fn migrate_onto_newer(found: Option<Installed>) -> Result<Option<MigrateReport>, QueueError> {
    let current = found.map_or(0, |i| i.version);
    if current <= SCHEMA_VERSION {
        return Ok(None);
    }
    let SchemaFit::NewerCompatible { installed } = check_version(found)? else {
        return Err(QueueError::Schema(format!("schema version {current} is newer than this binary's")));
    };
    let note = format!(
        "the schema is at version {installed}, newer than this binary's {SCHEMA_VERSION}; \
         every migration since is additive, so this binary runs against it unchanged"
    );
    Ok(Some(MigrateReport { version: installed, notes: vec![note] }))
}

/// What `migrate_with` may do beyond the schema.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions {
    /// Queue again the texts of vectors from another model or at other dimensions, dropping
    /// those that no longer fit the column (`embq migrate --reembed`).
    pub reembed: bool,
}

/// What a migration did.
#[derive(Debug, Clone, Default)]
pub struct MigrateReport {
    /// The schema version now in place.
    pub version: i32,
    /// What was decided about vector storage, and why, for the operator.
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: i32, compatible_from: i32) -> Option<Installed> {
        Some(Installed { version, compatible_from })
    }

    #[test]
    fn version_mismatch_says_what_to_do() {
        assert_eq!(check_version(at(SCHEMA_VERSION, SCHEMA_VERSION - 1)).unwrap(), SchemaFit::Exact);
        assert!(check_version(None).unwrap_err().to_string().contains("run `embq migrate` first"));
        assert!(check_version(at(0, 0)).unwrap_err().to_string().contains("run `embq migrate`"));
        assert_eq!(POSTGRES.len(), SCHEMA_VERSION as usize);
        assert_eq!(SQLITE.len(), SCHEMA_VERSION as usize);
        assert_eq!(COMPATIBLE_FROM.len(), SCHEMA_VERSION as usize);
    }

    #[test]
    fn a_newer_additive_schema_runs_and_a_breaking_one_does_not() {
        let newer = SCHEMA_VERSION + 2;
        assert_eq!(check_version(at(newer, SCHEMA_VERSION)).unwrap(), SchemaFit::NewerCompatible { installed: newer });
        let e = check_version(at(newer, SCHEMA_VERSION + 1)).unwrap_err().to_string();
        assert!(e.contains("breaking") && e.contains("upgrade embq"), "{e}");
    }

    #[test]
    fn every_migration_declares_a_compatibility_no_newer_than_itself() {
        for (i, from) in COMPATIBLE_FROM.iter().enumerate() {
            let version = i as i32 + 1;
            assert!(*from <= version && *from >= 1, "migration {version} declares {from}");
            assert_eq!(compatible_from(version), *from);
        }
        assert_eq!(compatible_from(SCHEMA_VERSION + 5), SCHEMA_VERSION + 5, "unknown migrations count as breaking");
    }
}
