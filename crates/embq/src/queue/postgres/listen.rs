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
    match subscribe(&pool).await {
        Ok(l) => Some(Box::new(PgJobListener(l))),
        Err(e) => {
            // Without this the worker silently falls back to polling; the usual cause on a managed
            // cluster is a host with only an IPv6 address (db.PROJECT.supabase.co) on IPv4 pods.
            // sqlx's error names the failure, not the URL or its password.
            tracing::warn!(
                error = %e,
                "LISTEN connection (DATABASE_LISTEN_URL) failed: polling every QUEUE_POLL_INTERVAL \
                 instead, retried every 30 s. If the host resolves only to IPv6 and the pods have \
                 IPv4 only, use the session pooler (port 5432) instead"
            );
            None
        }
    }
}

/// Opens the LISTEN session on the notification channel.
async fn subscribe(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen(CHANNEL).await?;
    Ok(l)
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
