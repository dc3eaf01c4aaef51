//! embq: a crash-safe embedding job queue and worker.
//!
//! Map of the crate:
//! - [`config`]: every setting, parsed and validated once at start.
//! - [`queue`]: the `Queue` trait with its PostgreSQL and SQLite stores and migrations.
//! - [`provider`]: the `Provider` trait and the embedding providers.
//! - [`outcome`]: how a failed attempt becomes retry, release or dead letter.
//! - [`worker`]: the claim -> batch -> embed -> store loop, heartbeats, drain; and the batch
//!   lane (`worker/batch_lane/`), which sends `batch`-lane jobs through the OpenAI Batch API.
//! - [`health`], [`http`], [`metrics`] (with the batch lane's and the fleet's), [`memory`]: what probes and Prometheus see; [`listener`]:
//!   the accept loop behind their ports (timeouts, a connection cap).
//! - [`vector`]: vector encoding and validation.
//! - [`tokens`], [`batching`], [`limiter`]: token counts, request packing, RPM/TPM budgets.
//! - [`nearest`]: semantic search: a query embedded, the nearest stored vectors found.
//! - [`redact`]: credentials kept out of printed URLs and messages.
//! - [`cli`]: one module per `embq` subcommand.

pub mod batching;
pub mod cli;
pub mod config;
pub mod console;
pub mod health;
pub mod http;
pub mod limiter;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod nearest;
pub mod outcome;
pub mod provider;
pub mod queue;
pub mod redact;
pub mod tokens;
pub mod vector;
pub mod worker;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
