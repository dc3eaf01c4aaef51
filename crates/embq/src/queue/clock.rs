//! The clock the queue's timestamps come from: the database's own, or one the tests move.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The clock the queue's timestamps come from.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The database's clock (PostgreSQL `now()`), or the system clock for SQLite.
    #[default]
    System,
    /// A clock the tests move by hand.
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    /// A manual clock starting at `start`.
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self::Manual(Arc::new(Mutex::new(start)))
    }
    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Self::Manual(t) = self {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            *t += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
        }
    }
    /// The time to pass to SQL; `None` means "use the database's own clock".
    pub fn sql_now(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::System => None,
            Self::Manual(t) => Some(*t.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }
    /// The current time on this clock, from the process.
    pub fn now(&self) -> DateTime<Utc> {
        self.sql_now().unwrap_or_else(Utc::now)
    }
}
