//! New-job wake-ups: enqueues `NOTIFY embq_jobs`, workers `LISTEN` on a connection of their own
//! (never through a transaction pooler, which would lose them).

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPoolOptions};

use super::PgQueue;
use crate::queue::{JobListener, QueueError};

/// The NOTIFY channel workers LISTEN on.
pub const CHANNEL: &str = "embq_jobs";

/// A LISTEN connection of its own, when the configuration allows one.
pub(super) async fn listener(pg: &PgQueue) -> Option<Box<dyn JobListener>> {
    let opts = pg.listen.clone()?;
    let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(opts);
    let mut l = PgListener::connect_with(&pool).await.ok()?;
    l.listen(CHANNEL).await.ok()?;
    Some(Box::new(PgJobListener(l)))
}

/// A worker's LISTEN connection.
struct PgJobListener(PgListener);

#[async_trait]
impl JobListener for PgJobListener {
    async fn recv(&mut self) -> Result<(), QueueError> {
        self.0.recv().await?;
        Ok(())
    }
}
