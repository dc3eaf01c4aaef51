//! The states a job and a worker row can be in, and their text in the database.
//!
//! Both stores keep states as lowercase text (`jobs.state`, `workers.state`); SQL statements
//! name them as literals, Rust code through these enums.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::Database;

/// Where a job is in its lifecycle (see the module documentation of `queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed (a `run_at` in the future means scheduled).
    Ready,
    /// Leased to a worker.
    Running,
    /// Embedded, or found unchanged.
    Done,
    /// Failed for good (dead-lettered).
    Dead,
    /// Overtaken by a newer enqueue of the same key.
    Superseded,
    /// Its record was deleted, or its write-back row is gone.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 6] = [Self::Ready, Self::Running, Self::Done, Self::Dead, Self::Superseded, Self::Cancelled];

    /// The state's text in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Superseded => "superseded",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What a worker's row says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Claiming and processing jobs.
    Running,
    /// Finishing its in-flight jobs before it stops; claims nothing new.
    Draining,
    /// Gone (written at a clean shutdown).
    Stopped,
}

impl WorkerState {
    /// Every state.
    pub const ALL: [Self; 3] = [Self::Running, Self::Draining, Self::Stopped];

    /// The state's text in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }
}

/// Which way a job is embedded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Claimed by workers and embedded within seconds (the default).
    #[default]
    Online,
    /// Gathered into OpenAI Batch API submissions: half price, done within 24 hours.
    Batch,
}

impl Lane {
    /// Every lane.
    pub const ALL: [Self; 2] = [Self::Online, Self::Batch];

    /// The lane's text in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Batch => "batch",
        }
    }
}

/// Where a provider batch is (`embq.provider_batches.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    /// Recorded with its jobs; the input file is being uploaded or the batch created.
    Uploading,
    /// Created at the provider; polled until it ends.
    Submitted,
    /// Ended at the provider; its results are being stored.
    Collecting,
    /// Completed and every result stored.
    Collected,
    /// Failed at the provider; finished lines stored, the rest returned to the queue.
    Failed,
    /// Not done within the completion window; finished lines stored, the rest returned.
    Expired,
    /// Cancelled; finished lines stored, the rest returned.
    Cancelled,
}

impl BatchState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 7] = [
        Self::Uploading,
        Self::Submitted,
        Self::Collecting,
        Self::Collected,
        Self::Failed,
        Self::Expired,
        Self::Cancelled,
    ];

    /// The state's text in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploading => "uploading",
            Self::Submitted => "submitted",
            Self::Collecting => "collecting",
            Self::Collected => "collected",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// Still needs a worker: not yet ended at the provider, or its results not yet stored.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Uploading | Self::Submitted | Self::Collecting)
    }
}

/// A state text the database holds that this binary does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} state {text:?} in the database")]
pub struct UnknownState {
    /// `job`, `worker`, `lane` or `batch`.
    pub kind: &'static str,
    /// The text found.
    pub text: String,
}

/// `FromStr` (the inverse of `as_str`), `Display` (padded, for tables) and the sqlx mapping.
///
/// The sqlx traits are written out rather than derived: the derive names the PostgreSQL type
/// `text` by name, which sqlx resolves with a catalog query per connection (a named statement,
/// awkward behind a transaction pooler); delegating to `str` keeps the TEXT type's own OID.
macro_rules! text_state {
    ($ty:ident, $kind:literal) => {
        impl FromStr for $ty {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownState { kind: $kind, text: s.to_string() })
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl<DB: Database> sqlx::Type<DB> for $ty
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: Database> sqlx::Encode<'q, DB> for $ty
        where
            &'q str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(&self, buf: &mut <DB as Database>::ArgumentBuffer<'q>) -> Result<IsNull, BoxDynError> {
                <&'q str as sqlx::Encode<'q, DB>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r, DB: Database> sqlx::Decode<'r, DB> for $ty
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&'r str as sqlx::Decode<'r, DB>>::decode(value)?.parse()?)
            }
        }
    };
}

text_state!(JobState, "job");
text_state!(WorkerState, "worker");
text_state!(Lane, "lane");
text_state!(BatchState, "batch");

/// A worker's row in the workers table.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i64,
    /// embq version.
    pub version: String,
    /// Jobs in flight.
    pub in_flight: i64,
    /// Jobs processed since start.
    pub processed: i64,
    /// Jobs failed since start.
    pub failed: i64,
    /// What the worker is doing.
    pub state: WorkerState,
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, SqliteConnection};

    use super::*;

    #[test]
    fn texts_round_trip_and_unknown_ones_are_named() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
            assert_eq!(serde_json::to_value(s).ok(), Some(serde_json::json!(s.as_str())));
        }
        for s in WorkerState::ALL {
            assert_eq!(s.as_str().parse::<WorkerState>(), Ok(s));
            assert_eq!(serde_json::to_value(s).ok(), Some(serde_json::json!(s.as_str())));
        }
        let e = "paused".parse::<WorkerState>().unwrap_err();
        assert_eq!(e.to_string(), "unknown worker state \"paused\" in the database");
        assert!("Ready".parse::<JobState>().is_err(), "the database's text is lowercase");
        assert_eq!(format!("[{:<9}]", WorkerState::Stopped), "[stopped  ]");
    }

    #[tokio::test]
    async fn states_bind_and_decode_as_text_and_an_unknown_one_is_a_decode_error() {
        let mut c = SqliteConnection::connect("sqlite::memory:").await.expect("in-memory SQLite");
        let back: JobState =
            sqlx::query_scalar("SELECT ?1").bind(JobState::Superseded).fetch_one(&mut c).await.expect("round trip");
        assert_eq!(back, JobState::Superseded);
        let back: WorkerState = sqlx::query_scalar("SELECT 'draining'").fetch_one(&mut c).await.expect("decodes");
        assert_eq!(back, WorkerState::Draining);
        let e = sqlx::query_scalar::<_, JobState>("SELECT 'lost'").fetch_one(&mut c).await.unwrap_err();
        assert!(matches!(e, sqlx::Error::ColumnDecode { .. }), "{e:?}");
        assert!(e.to_string().contains("unknown job state \"lost\""), "{e}");
    }
}
