//! What opening a store needs: its URL, how it is reached, its pool, and how vectors are stored.

use std::time::Duration;

use serde::Serialize;

use super::{VectorIndex, VectorStorage};
use crate::redact::DatabaseUrl;

/// How the PostgreSQL URL is reached, which decides what session state may be relied on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A direct connection (or a session-mode pooler): prepared statements are cached, LISTEN works.
    Session,
    /// A transaction-mode pooler (PgBouncer, Supavisor on 6543): no cached statements, no LISTEN.
    Transaction,
}

/// The settings that shape vector storage.
#[derive(Clone, Debug)]
pub struct VectorSettings {
    /// The column type `migrate` settles.
    pub storage: VectorStorage,
    /// The index `migrate` builds.
    pub index: VectorIndex,
    /// Vector size.
    pub dims: usize,
    /// The model whose vectors are stored.
    pub model: String,
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// `postgres://…` or `sqlite://…`.
    pub url: DatabaseUrl,
    /// A direct PostgreSQL connection for LISTEN, when `url` goes through a pooler.
    pub listen_url: Option<DatabaseUrl>,
    /// Session or transaction pooling.
    pub pool_mode: PoolMode,
    /// Most pooled connections.
    pub max_connections: u32,
    /// How long one-shot commands retry an unreachable database.
    pub connect_timeout: Duration,
    /// Vector column and index.
    pub vectors: VectorSettings,
    /// The batch lane is on (`BATCH_LANE=on`): the online claim takes only `online`-lane jobs.
    /// Off, `batch`-lane jobs are claimed online like any other, so none is stranded.
    pub batch_lane: bool,
}
