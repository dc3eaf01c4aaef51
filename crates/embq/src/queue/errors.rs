//! Store errors sorted by what the caller must do: an outage is waited out, a write the
//! database refuses for good (bad data, a constraint, a user trigger) is not retried as is.

use std::borrow::Cow;

/// Errors from the queue store, named by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database could not be reached or failed; try again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The schema is missing or from another version; an operator must act.
    #[error("{0}")]
    Schema(String),
    /// The request itself was invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The database answered and refused this write for good (a constraint, a trigger, bad
    /// data); repeating it unchanged fails the same way. Holds the database's message.
    #[error("the database refused this write: {0}")]
    Rejected(String),
}

impl QueueError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "database",
            Self::Schema(_) => "schema",
            Self::Invalid(_) => "invalid",
            Self::Rejected(_) => "rejected",
        }
    }
}

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        classify_sqlx(e)
    }
}

/// What a database error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DbFault {
    /// The database is unreachable, overloaded, shutting down or lost a race: try again later.
    Outage,
    /// The database answered and refused this statement; repeating it would fail the same way.
    Refusal,
}

/// PostgreSQL SQLSTATE classes that come and go with the server rather than with the data:
/// connection (08), transaction rollback: serialization failure, deadlock (40), insufficient
/// resources (53), operator intervention: shutdown, cancel (57), system (58), internal (XX),
/// object not in prerequisite state: lock not available (55), invalid transaction state:
/// read-only during a failover (25).
const PG_OUTAGE_CLASSES: [&str; 8] = ["08", "40", "53", "57", "58", "XX", "55", "25"];

/// Sorts a PostgreSQL SQLSTATE; everything outside the outage classes (22 data exception,
/// 23 integrity, P0 raised by PL/pgSQL, 42 …) is a refusal.
pub(crate) fn pg_fault(sqlstate: &str) -> DbFault {
    let class = sqlstate.get(..2).unwrap_or(sqlstate);
    if PG_OUTAGE_CLASSES.contains(&class) {
        DbFault::Outage
    } else {
        DbFault::Refusal
    }
}

/// Sorts a SQLite (extended) result code, as sqlx reports it: the primary code is its low byte.
/// TOOBIG (18), CONSTRAINT (19, incl. RAISE(ABORT) from a trigger, 1811), MISMATCH (20) and
/// RANGE (25) concern the data; BUSY, LOCKED, IOERR, FULL, CANTOPEN and the rest concern the
/// database file or connection.
pub(crate) fn sqlite_fault(code: &str) -> DbFault {
    match code.trim().parse::<i32>() {
        Ok(c) if matches!(c & 0xff, 18 | 19 | 20 | 25) => DbFault::Refusal,
        _ => DbFault::Outage,
    }
}

/// Sorts a database error by its code; `None` when the error is not from PostgreSQL or SQLite
/// or carries no code.
fn fault_of(e: &dyn sqlx::error::DatabaseError) -> Option<DbFault> {
    let code: Cow<'_, str> = e.code()?;
    if e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
        Some(pg_fault(&code))
    } else if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        Some(sqlite_fault(&code))
    } else {
        None
    }
}

/// Maps an sqlx error to a queue error. Only an error the database itself returned can be a
/// refusal; I/O, TLS, pool timeouts and protocol errors are outages.
pub(crate) fn classify_sqlx(e: sqlx::Error) -> QueueError {
    // sqlx errors never include connection passwords; keep only the message.
    let msg = e.to_string();
    if let Some(hint) = pooler_hint(&msg) {
        // A cached statement clash (42P05, 26000) is a deployment problem, not the data's.
        return QueueError::Unavailable(format!("{msg} ({hint})"));
    }
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref().is_some_and(is_connection_refusal) => {
            QueueError::Unavailable(format!("{msg} ({TOO_MANY_CONNECTIONS})"))
        }
        sqlx::Error::Database(db) if fault_of(db.as_ref()) == Some(DbFault::Refusal) => {
            QueueError::Rejected(db.message().to_string())
        }
        _ => QueueError::Unavailable(msg),
    }
}

/// What to do when the server refuses a new connection: the fleet asks for more than it allows.
pub(crate) const TOO_MANY_CONNECTIONS: &str = "the database refuses more connections: each worker \
    opens up to the count `embq config check` prints (DB_MAX_CONNECTIONS, plus LISTEN and the fleet \
    budget); keep replicas × that count below the server's max_connections (or the role's \
    CONNECTION LIMIT): lower DB_MAX_CONNECTIONS or the HPA's maxReplicas, or connect through a \
    pooler. Backing off";

/// SQLSTATE 53300 too_many_connections (the server's max_connections, a role's or a
/// database's CONNECTION LIMIT) and 53400 configuration_limit_exceeded.
fn is_connection_refusal(sqlstate: &str) -> bool {
    matches!(sqlstate, "53300" | "53400")
}

/// Cached statements that vanish or collide mean a transaction-mode pooler sits in front of a
/// worker configured for a direct connection: say how to fix it.
pub(crate) fn pooler_hint(msg: &str) -> Option<&'static str> {
    let statement_clash = msg.contains("prepared statement \"sqlx_s_")
        && (msg.contains("already exists") || msg.contains("does not exist"));
    statement_clash.then_some(
        "DATABASE_URL looks like a transaction-mode pooler (PgBouncer, Supavisor): set DATABASE_POOL_MODE=transaction",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_sqlstates_split_into_outages_and_refusals() {
        use DbFault::*;
        let table = [
            ("08006", Outage),  // connection failure
            ("08001", Outage),  // cannot connect now
            ("57P01", Outage),  // admin shutdown
            ("57014", Outage),  // query canceled
            ("40001", Outage),  // serialization failure
            ("40P01", Outage),  // deadlock
            ("53300", Outage),  // too many connections
            ("53100", Outage),  // disk full
            ("25006", Outage),  // read-only transaction (failover)
            ("55P03", Outage),  // lock not available
            ("58030", Outage),  // I/O error
            ("XX000", Outage),  // internal error
            ("22000", Refusal), // pgvector: expected 1536 dimensions, not 768
            ("22P02", Refusal), // invalid text representation
            ("22001", Refusal), // string too long
            ("23505", Refusal), // unique violation
            ("23514", Refusal), // check violation
            ("23502", Refusal), // not null violation
            ("23503", Refusal), // foreign key violation
            ("P0001", Refusal), // RAISE EXCEPTION in a trigger
            ("42P01", Refusal), // undefined table
        ];
        for (code, want) in table {
            assert_eq!(pg_fault(code), want, "SQLSTATE {code}");
        }
    }

    #[test]
    fn sqlite_codes_split_into_outages_and_refusals() {
        use DbFault::*;
        let table = [
            ("5", Outage),    // BUSY
            ("517", Outage),  // BUSY_SNAPSHOT
            ("6", Outage),    // LOCKED
            ("10", Outage),   // IOERR
            ("3850", Outage), // IOERR_LOCK
            ("13", Outage),   // FULL
            ("14", Outage),   // CANTOPEN
            ("8", Outage),    // READONLY
            ("1", Outage),    // generic error
            ("not a number", Outage),
            ("19", Refusal),   // CONSTRAINT
            ("2067", Refusal), // CONSTRAINT_UNIQUE
            ("1299", Refusal), // CONSTRAINT_NOTNULL
            ("275", Refusal),  // CONSTRAINT_CHECK
            ("1811", Refusal), // CONSTRAINT_TRIGGER: RAISE(ABORT, …)
            ("18", Refusal),   // TOOBIG
            ("20", Refusal),   // MISMATCH
            ("25", Refusal),   // RANGE
        ];
        for (code, want) in table {
            assert_eq!(sqlite_fault(code), want, "SQLite code {code}");
        }
    }

    #[test]
    fn errors_without_a_database_code_are_outages() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        for e in [sqlx::Error::PoolTimedOut, sqlx::Error::Io(io), sqlx::Error::Protocol("bad message".into())] {
            let q = classify_sqlx(e);
            assert!(matches!(q, QueueError::Unavailable(_)), "{q:?}");
            assert_eq!(q.kind(), "database");
        }
    }

    #[test]
    fn statement_clashes_point_at_the_pool_mode() {
        let hint = pooler_hint("error returned from database: prepared statement \"sqlx_s_2\" already exists");
        assert!(hint.is_some_and(|h| h.contains("DATABASE_POOL_MODE=transaction")));
        assert!(pooler_hint("prepared statement \"sqlx_s_9\" does not exist").is_some());
        assert!(pooler_hint("connection refused").is_none());
    }

    #[tokio::test]
    async fn a_sqlite_trigger_refusal_keeps_the_database_message() {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:").await.expect("in-memory SQLite");
        sqlx::query("CREATE TABLE t (x INTEGER NOT NULL)").execute(&mut c).await.expect("create");
        sqlx::query(
            "CREATE TRIGGER no_sevens BEFORE INSERT ON t WHEN NEW.x = 7 BEGIN SELECT RAISE(ABORT, 'no sevens'); END",
        )
        .execute(&mut c)
        .await
        .expect("trigger");
        let refused = sqlx::query("INSERT INTO t VALUES (7)").execute(&mut c).await.expect_err("trigger refuses");
        match classify_sqlx(refused) {
            QueueError::Rejected(m) => assert_eq!(m, "no sevens"),
            other => panic!("{other:?}"),
        }
        let null = sqlx::query("INSERT INTO t VALUES (NULL)").execute(&mut c).await.expect_err("NOT NULL refuses");
        assert_eq!(classify_sqlx(null).kind(), "rejected");
    }
}
